//! AoE benchmark: the same userspace initiator against vblade (the reference
//! target) and `anyboot-aoe-target`, each serving the same tmpfs file over a
//! veth pair between two network namespaces, at MTU 1500 and 9000.
//! Sequential read/write MB/s and random 4 KiB read IOPS with several
//! requests in flight; short fixed-size runs; prints the ratios.
//!
//! Run with `cargo xtask bench aoe` (release build, root for namespaces);
//! `AOE_BENCH_MTU=1500` or `9000` runs one MTU only.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyboot_aoe_target::initiator::{Device, Initiator, InitiatorError, Op};
use anyboot_benches::{all_cpus, median, table, Row};
use anyboot_tests::{in_netns, require, require_root, veth_pair, Daemon, Netns};
use anyhow::{bail, Context, Result};

/// Image size: big enough for a few hundred milliseconds per pass.
const DISK_BYTES: usize = 64 << 20;
/// Random 4 KiB operations per run.
const RANDOM_OPS: usize = 20_000;
/// Frames in flight (both targets are asked for at most this many).
const WINDOW: usize = 32;

fn release_bin(name: &str) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| anyboot_tests::workspace_root().join("target"));
    let p = target.join("release").join(name);
    if !p.exists() {
        bail!("{} is not built: run `cargo build --release -p anyboot-aoe-target --bins` (cargo xtask bench aoe does)", p.display());
    }
    Ok(p)
}

struct Lab {
    ini: Netns,
    tgt: Netns,
    ini_if: String,
    tgt_if: String,
}

fn lab(mtu: u32) -> Lab {
    let ini = Netns::new(&format!("aoebi{mtu}"));
    let tgt = Netns::new(&format!("aoebt{mtu}"));
    let (ini_if, tgt_if) = veth_pair(&ini, "", &tgt, "");
    for (ns, i) in [(&ini, &ini_if), (&tgt, &tgt_if)] {
        ns.exec_ok(&["ip", "link", "set", i, "mtu", &mtu.to_string()]);
    }
    Lab {
        ini,
        tgt,
        ini_if,
        tgt_if,
    }
}

fn attach(ini: &mut Initiator, shelf: u16, slot: u8) -> Result<Device> {
    let start = Instant::now();
    loop {
        match ini.attach(shelf, slot, WINDOW) {
            Ok(d) => return Ok(d),
            Err(InitiatorError::Timeout { .. }) if start.elapsed() < Duration::from_secs(10) => {}
            Err(e) => return Err(e).context("attaching"),
        }
    }
}

/// CPU seconds process `pid` has used so far, summed over its threads from
/// /proc/PID/task/*/schedstat (nanoseconds; /proc/PID/stat counts 10 ms
/// ticks, too coarse for passes of 50 ms). The targets' threads live as
/// long as the target, so none is missed by having exited.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = t?.path().join("schedstat");
        // A thread that ended between listing and reading counts nothing.
        let Ok(s) = std::fs::read_to_string(&path) else {
            continue;
        };
        ns += s
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .with_context(|| format!("odd {}", path.display()))?;
    }
    Ok(ns as f64 / 1e9)
}

/// CPU seconds (user + system) the calling thread has used: the initiator
/// runs on this thread, so this is its whole cost, including the kernel's
/// work of delivering its frames to the target's socket.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// One workload's figure, and the CPU seconds each side spent on it.
#[derive(Clone, Copy)]
struct Pass {
    rate: f64,
    /// Work done: MB for the sequential passes, operations for random reads.
    work: f64,
    /// MB the pass moved.
    mb: f64,
    initiator_cpu: f64,
    target_cpu: f64,
}

impl Pass {
    /// Runs `f`, timing it and the CPU the initiator (this thread) and the
    /// target (`target_cpu()`) use meanwhile.
    fn timed(
        work: f64,
        mb: f64,
        target_cpu: &dyn Fn() -> Result<f64>,
        f: impl FnOnce() -> Result<(), InitiatorError>,
    ) -> Result<Pass> {
        let (i0, t0) = (thread_cpu_seconds(), target_cpu()?);
        let started = Instant::now();
        f()?;
        let secs = started.elapsed().as_secs_f64();
        Ok(Pass {
            rate: work / secs,
            work,
            mb,
            initiator_cpu: thread_cpu_seconds() - i0,
            target_cpu: target_cpu()? - t0,
        })
    }
}

/// Seq read, seq write, random 4 KiB reads.
fn measure(
    ini: &mut Initiator,
    dev: &Device,
    target_cpu: &dyn Fn() -> Result<f64>,
) -> Result<[Pass; 3]> {
    let mut buf = vec![0u8; DISK_BYTES];
    let mut ops = Vec::new();
    Initiator::split(dev, 0, DISK_BYTES, false, 0, &mut ops);
    // Warm-up pass (page cache, ARP-free paths, target threads).
    ini.run(dev, &ops, &mut buf)?;
    let mb = DISK_BYTES as f64 / 1e6;
    let read = Pass::timed(mb, mb, target_cpu, || ini.run(dev, &ops, &mut buf))?;

    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let mut wops = Vec::new();
    Initiator::split(dev, 0, DISK_BYTES, true, 0, &mut wops);
    let write = Pass::timed(mb, mb, target_cpu, || ini.run(dev, &wops, &mut buf))?;

    // Random 4 KiB reads: a fixed pseudo-random sequence (xorshift), each
    // split into as many frames as the MTU needs.
    let blocks = (DISK_BYTES / 4096) as u64;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rops: Vec<Op> = Vec::new();
    let mut small = vec![0u8; RANDOM_OPS * 4096];
    for i in 0..RANDOM_OPS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Initiator::split(dev, (x % blocks) * 8, 4096, false, i * 4096, &mut rops);
    }
    let random_mb = (RANDOM_OPS * 4096) as f64 / 1e6;
    let random = Pass::timed(RANDOM_OPS as f64, random_mb, target_cpu, || {
        ini.run(dev, &rops, &mut small)
    })?;
    Ok([read, write, random])
}

type Figures = [Pass; 3];

fn run_one(lab: &Lab, image: &Path, ours: bool, logdir: &Path) -> Result<Figures> {
    let mut d = if ours {
        let mut cmd = lab.tgt.command(release_bin("anyboot-aoe-target")?);
        cmd.args([
            "-q",
            "--interface",
            &lab.tgt_if,
            "--buffer-count",
            "64",
            "--target",
        ])
        .arg(format!("1.1={}", image.display()));
        Daemon::spawn("anyboot-aoe-target", &mut cmd, &logdir.join("ours.log"))
    } else {
        let mut cmd = lab.tgt.command(require("vblade", "vblade"));
        cmd.args(["-b", "64", "1", "1", &lab.tgt_if]).arg(image);
        Daemon::spawn("vblade", &mut cmd, &logdir.join("vblade.log"))
    };
    let mut ini = in_netns(&lab.ini, || Initiator::open(&lab.ini_if))?;
    let dev = attach(&mut ini, 1, 1)?;
    eprintln!(
        "  {}: {} sectors/frame, window {}",
        if ours { "anyboot" } else { "vblade" },
        dev.max_sectors,
        dev.window
    );
    // `ip netns exec` execs the target, so the daemon's PID is the target's.
    let pid = d.pid();
    let r = measure(&mut ini, &dev, &|| cpu_seconds(pid));
    d.stop_with(libc::SIGTERM, Duration::from_secs(5));
    if let Ok(p) = &r {
        eprintln!(
            "    seq read {:.1} MB/s, seq write {:.1} MB/s, random 4 KiB read {:.0} IOPS; \
             retransmits {}, initiator socket drops {}",
            p[0].rate,
            p[1].rate,
            p[2].rate,
            ini.retransmits,
            ini.take_socket_drops().unwrap_or(0)
        );
    }
    r
}

/// Alternating runs per target and MTU. Five, not three: on this nested VM
/// single passes of either target stall for a few hundred milliseconds now
/// and then with no frame lost and nothing retransmitted (the per-run lines
/// show it), and with three runs two such stalls in one row made its median.
const REPS: usize = 5;

/// The median rate of pass `k`.
fn median_rate(runs: &[Figures], k: usize) -> f64 {
    median(runs.iter().map(|r| r[k].rate).collect())
}

/// The best rate of pass `k`: the machine's stalls only ever slow a pass
/// down, so the best run is the one least disturbed.
fn best_rate(runs: &[Figures], k: usize) -> f64 {
    runs.iter().map(|r| r[k].rate).fold(0.0, f64::max)
}

/// MB moved per target CPU second over all passes, median of the runs.
fn mb_per_target_cpu(runs: &[Figures]) -> f64 {
    median(
        runs.iter()
            .map(|r| {
                let mb: f64 = r.iter().map(|p| p.mb).sum();
                mb / r.iter().map(|p| p.target_cpu).sum::<f64>().max(0.01)
            })
            .collect(),
    )
}

/// Whether initiator and target costs fit the budget of the 3x target, and
/// which side alone already exceeds it.
fn verdict(initiator: f64, target: f64, budget: f64) -> &'static str {
    match (initiator > budget, target > budget) {
        (true, true) => ": out of reach even if either side cost nothing",
        (true, false) => ": out of reach even for a target costing nothing",
        (false, true) => ": out of reach for this target even with an initiator costing nothing",
        _ if initiator + target > budget => ": out of reach at these costs",
        _ => ": within the budget",
    }
}

/// The lowest CPU seconds per unit of work pass `k` cost `side` in `runs`:
/// the most favourable figure, so a budget it exceeds is not understated.
fn lowest_cost(runs: &[&Figures], k: usize, side: fn(&Pass) -> f64) -> f64 {
    runs.iter()
        .map(|r| side(&r[k]) / r[k].work)
        .fold(f64::INFINITY, f64::min)
}

fn main() -> Result<()> {
    require_root("the AoE benchmark (network namespaces, raw sockets)");
    // tmpfs, so the disk is not what we measure.
    let dir = tempfile::Builder::new()
        .prefix("aoe-bench")
        .tempdir_in("/dev/shm")?;
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; DISK_BYTES])?;
    let mut rows = Vec::new();
    let mut budgets = Vec::new();
    let cpus = all_cpus().len() as f64;
    // AOE_BENCH_MTU=9000 (or 1500) runs one MTU only.
    let only: Option<u32> = std::env::var("AOE_BENCH_MTU")
        .ok()
        .and_then(|v| v.parse().ok());
    for mtu in [1500u32, 9000]
        .into_iter()
        .filter(|m| only.is_none_or(|o| o == *m))
    {
        eprintln!("MTU {mtu}:");
        let lab = lab(mtu);
        // Alternate the two targets and keep the median of each figure: the
        // machine is shared, so single runs swing widely.
        let mut o = Vec::new();
        let mut p = Vec::new();
        for _ in 0..REPS {
            o.push(run_one(&lab, &image, true, dir.path())?);
            p.push(run_one(&lab, &image, false, dir.path())?);
        }
        let names = ["seq read MB/s", "seq write MB/s", "random 4 KiB read IOPS"];
        let units = ["MB", "MB", "op"];
        let all: Vec<&Figures> = o.iter().chain(&p).collect();
        let ours: Vec<&Figures> = o.iter().collect();
        let peers: Vec<&Figures> = p.iter().collect();
        for (k, name) in names.into_iter().enumerate() {
            let (a, b) = (median_rate(&o, k), median_rate(&p, k));
            rows.push(Row {
                workload: format!("MTU {mtu} {name}"),
                values: vec![("anyboot".into(), a), ("vblade".into(), b)],
            });
            rows.push(Row {
                workload: format!("MTU {mtu} {name}, best run"),
                values: vec![
                    ("anyboot".into(), best_rate(&o, k)),
                    ("vblade".into(), best_rate(&p, k)),
                ],
            });
            // Both programs share this machine's CPUs: 3x vblade's rate
            // needs the initiator and the target together to cost at most
            // CPUs / (3 x rate) per unit of work.
            let budget = cpus / (3.0 * b);
            let ini = lowest_cost(&all, k, |p| p.initiator_cpu);
            let tgt = lowest_cost(&ours, k, |p| p.target_cpu);
            let peer_tgt = lowest_cost(&peers, k, |p| p.target_cpu);
            let us = |x: f64| x * 1e6;
            budgets.push(format!(
                "MTU {mtu} {name}: 3x vblade = {:.0} needs <= {:.2} CPU-us per {} for initiator + target on {cpus} CPUs; \
                 lowest measured: initiator {:.2} + anyboot {:.2} = {:.2} (vblade {:.2}){}",
                3.0 * b,
                us(budget),
                units[k],
                us(ini),
                us(tgt),
                us(ini + tgt),
                us(peer_tgt),
                verdict(ini, tgt, budget)
            ));
        }
        rows.push(Row {
            workload: format!("MTU {mtu} MB moved per target CPU second"),
            values: vec![
                ("anyboot".into(), mb_per_target_cpu(&o)),
                ("vblade".into(), mb_per_target_cpu(&p)),
            ],
        });
    }
    println!(
        "{}",
        table(
            &format!(
                "AoE over veth, {} MiB tmpfs image, {WINDOW} frames in flight, median (and best) of {REPS} alternating runs (shared machine: noisy)",
                DISK_BYTES >> 20
            ),
            "MB/s or IOPS",
            &rows
        )
    );
    println!(
        "CPU budget of the 3x target (initiator and target run on the same CPUs; \
         costs are CPU seconds per unit from /proc and the initiator thread's clock, \
         the lowest of all runs):"
    );
    for b in budgets {
        println!("  {b}");
    }
    Ok(())
}
