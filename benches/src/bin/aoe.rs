//! AoE benchmark: the same userspace initiator against vblade (the reference
//! target) and `anyboot-aoe-target`, each serving the same tmpfs file over a
//! veth pair between two network namespaces, at MTU 1500 and 9000.
//! Sequential read/write MB/s and random 4 KiB read IOPS with several
//! requests in flight; short fixed-size runs; prints the ratios.
//!
//! Run with `cargo xtask bench aoe` (release build, root for namespaces).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyboot_aoe_target::initiator::{Device, Initiator, InitiatorError, Op};
use anyboot_benches::{median, table, Row};
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

/// Bytes all of `measure`'s passes move.
fn bytes_moved() -> f64 {
    (3 * DISK_BYTES + RANDOM_OPS * 4096) as f64
}

/// CPU seconds (user + system) process `pid` has used so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// (seq read MB/s, seq write MB/s, random 4 KiB read IOPS)
fn measure(ini: &mut Initiator, dev: &Device) -> Result<(f64, f64, f64)> {
    let mut buf = vec![0u8; DISK_BYTES];
    let mut ops = Vec::new();
    Initiator::split(dev, 0, DISK_BYTES, false, 0, &mut ops);
    // Warm-up pass (page cache, ARP-free paths, target threads).
    ini.run(dev, &ops, &mut buf)?;
    let t = Instant::now();
    ini.run(dev, &ops, &mut buf)?;
    let read = DISK_BYTES as f64 / t.elapsed().as_secs_f64() / 1e6;

    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let mut wops = Vec::new();
    Initiator::split(dev, 0, DISK_BYTES, true, 0, &mut wops);
    let t = Instant::now();
    ini.run(dev, &wops, &mut buf)?;
    let write = DISK_BYTES as f64 / t.elapsed().as_secs_f64() / 1e6;

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
    let t = Instant::now();
    ini.run(dev, &rops, &mut small)?;
    let iops = RANDOM_OPS as f64 / t.elapsed().as_secs_f64();
    Ok((read, write, iops))
}

/// (seq read MB/s, seq write MB/s, random IOPS, MB moved per target CPU second)
type Figures = (f64, f64, f64, f64);

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
    let cpu0 = cpu_seconds(d.pid())?;
    let r = measure(&mut ini, &dev);
    let cpu = cpu_seconds(d.pid())? - cpu0;
    d.stop_with(libc::SIGTERM, Duration::from_secs(5));
    let (a, b, c) = r?;
    Ok((a, b, c, bytes_moved() / 1e6 / cpu.max(0.01)))
}

/// Alternating runs per target and MTU.
const REPS: usize = 3;

fn medians(runs: &[Figures]) -> Figures {
    (
        median(runs.iter().map(|r| r.0).collect()),
        median(runs.iter().map(|r| r.1).collect()),
        median(runs.iter().map(|r| r.2).collect()),
        median(runs.iter().map(|r| r.3).collect()),
    )
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
    for mtu in [1500u32, 9000] {
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
        let ours = medians(&o);
        let peer = medians(&p);
        for (name, a, b) in [
            ("seq read MB/s", ours.0, peer.0),
            ("seq write MB/s", ours.1, peer.1),
            ("random 4 KiB read IOPS", ours.2, peer.2),
            ("MB moved per target CPU second", ours.3, peer.3),
        ] {
            rows.push(Row {
                workload: format!("MTU {mtu} {name}"),
                values: vec![("anyboot".into(), a), ("vblade".into(), b)],
            });
        }
    }
    println!(
        "{}",
        table(
            &format!(
                "AoE over veth, {} MiB tmpfs image, {WINDOW} frames in flight, median of {REPS} alternating runs (shared machine: noisy)",
                DISK_BYTES >> 20
            ),
            "MB/s or IOPS",
            &rows
        )
    );
    Ok(())
}
