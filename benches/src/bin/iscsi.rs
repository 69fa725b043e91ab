//! iSCSI throughput: libiscsi's `iscsi-perf` (reads) and `qemu-img bench` (writes)
//! against anyboot-iscsi-target and tgtd (the peer), both serving the same RAM-backed (tmpfs) image, side by side
//! in one run. Run with `cargo xtask bench iscsi` (release build).
//!
//! Workloads are short (a few seconds each) because the machine is shared;
//! the numbers are indicative, the ratios are what to look at.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyboot_benches::{reaped_children_cpu_seconds, table, Row};
use anyboot_tests::{free_tcp_port, require, run, run_ok, wait_for_tcp, workspace_root, Daemon};
use anyhow::{bail, Context, Result};

const OURS: &str = "iqn.2026-11.org.anyboot:bench";
const PEER: &str = "iqn.2026-11.org.anyboot:bench-tgtd";
/// Seconds per workload and server.
const SECS: u32 = 5;
/// MiB of data at the start of the image (the rest is a hole).
const DATA_MIB: usize = 1088;
/// Runs of each write row per server, alternating; the median is reported.
const WRITE_RUNS: usize = 3;

fn release_bin(name: &str) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let p = target.join("release").join(name);
    if !p.exists() {
        bail!(
            "{} is not built: `cargo xtask bench iscsi` builds it",
            p.display()
        );
    }
    Ok(p)
}

/// One client run: IOPS, MB/s, and the client's own ceiling in IOPS (the
/// operations it completed over its own CPU seconds; both clients are
/// single-threaded, so no target can be measured above that here).
type Figures = (f64, f64, f64);

/// Runs iscsi-perf for SECS seconds; returns (IOPS, MB/s) averages.
fn perf(url: &str, args: &[&str]) -> Result<Figures> {
    let cpu0 = reaped_children_cpu_seconds();
    let out = run(Command::new("timeout")
        .args(["-s", "INT", &SECS.to_string()])
        .arg(require("iscsi-perf", "libiscsi-bin"))
        .args(args)
        .arg(url));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // Progress lines: "... iops average 28463 (111 MB/s), in_flight ...".
    let last = text
        .rsplit("iops average ")
        .next()
        .filter(|_| text.contains("iops average "))
        .with_context(|| format!("no iscsi-perf figures for {url}:\n{text}"))?;
    let iops: f64 = last.split_whitespace().next().unwrap_or("0").parse()?;
    let mbs: f64 = last
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("0")
        .parse()?;
    let cpu = reaped_children_cpu_seconds() - cpu0;
    Ok((iops, mbs, iops * f64::from(SECS) / cpu.max(1e-3)))
}

/// Runs `qemu-img bench` (QEMU's libiscsi block driver); returns (IOPS, MB/s).
fn qemu_bench(url: &str, write: bool, count: u32, size: u32, depth: u32) -> Result<Figures> {
    let cpu0 = reaped_children_cpu_seconds();
    let mut cmd = Command::new(require("qemu-img", "qemu-utils"));
    cmd.args([
        "bench",
        "-f",
        "raw",
        "-c",
        &count.to_string(),
        "-d",
        &depth.to_string(),
    ])
    .args(["-s", &size.to_string(), "-S", &size.to_string()]);
    if write {
        cmd.arg("-w");
    }
    let out = run_ok(cmd.arg(url));
    // "Run completed in 1.234 seconds."
    let secs: f64 = out
        .split("Run completed in ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .with_context(|| format!("no qemu-img bench result for {url}:\n{out}"))?
        .parse()?;
    let iops = count as f64 / secs;
    let cpu = reaped_children_cpu_seconds() - cpu0;
    Ok((
        iops,
        iops * size as f64 / 1e6,
        f64::from(count) / cpu.max(1e-3),
    ))
}

fn start_ours(img: &Path, dir: &Path) -> Result<(Daemon, SocketAddr)> {
    let port = free_tcp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut cmd = Command::new(release_bin("anyboot-iscsi-target")?);
    cmd.args([
        "-q",
        "--listen",
        &addr.to_string(),
        "--target",
        OURS,
        "--lun",
    ])
    .arg(format!("0={}", img.display()));
    let d = Daemon::spawn("anyboot-iscsi-target", &mut cmd, &dir.join("ours.log"));
    wait_for_tcp(addr, Duration::from_secs(10));
    Ok((d, addr))
}

fn start_tgtd(img: &Path, dir: &Path) -> Result<(Daemon, SocketAddr, String)> {
    let tgtd = require("tgtd", "tgt");
    let tgtadm = require("tgtadm", "tgt");
    let port = free_tcp_port();
    // The management channel number: tgtd refuses large values.
    let cport = (5000 + std::process::id() % 1000).to_string();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut cmd = Command::new(tgtd);
    cmd.args(["-f", "-C", &cport, "--iscsi", &format!("portal={addr}")]);
    let d = Daemon::spawn("tgtd", &mut cmd, &dir.join("tgtd.log"));
    wait_for_tcp(addr, Duration::from_secs(10));
    let adm = |args: &[&str]| {
        run_ok(
            Command::new(&tgtadm)
                .args(["-C", &cport, "--lld", "iscsi"])
                .args(args),
        )
    };
    adm(&["--mode", "target", "--op", "new", "--tid", "1", "-T", PEER]);
    adm(&[
        "--mode",
        "logicalunit",
        "--op",
        "new",
        "--tid",
        "1",
        "--lun",
        "1",
        "-b",
        &img.display().to_string(),
    ]);
    adm(&[
        "--mode", "target", "--op", "bind", "--tid", "1", "-I", "ALL",
    ]);
    Ok((d, addr, cport))
}

fn main() -> Result<()> {
    require("timeout", "coreutils");
    // RAM-backed image on tmpfs, shared by both servers: DATA_MIB of data
    // written, the rest (to 16 GiB) a hole so sequential runs never reach the end.
    // The data covers every byte the write rows write (1 GiB at most): a write
    // into a tmpfs hole allocates and zeroes a page, and whichever server ran
    // first would pay that for both.
    let dir = ShmDir::new()?;
    let img = dir.path().join("bench.img");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&img)?;
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for _ in 0..DATA_MIB {
            f.write_all(&chunk)?;
        }
        f.set_len(16 << 30)?;
    }
    let (mut ours, our_addr) = start_ours(&img, dir.path())?;
    let (mut peer, peer_addr, cport) = start_tgtd(&img, dir.path())?;
    let our_url = format!("iscsi://{our_addr}/{OURS}/0");
    let peer_url = format!("iscsi://{peer_addr}/{PEER}/1");

    let workloads: &[(&str, &[&str])] = &[
        (
            "4 KiB random read, 32 in flight",
            &["-m", "32", "-b", "8", "-r"],
        ),
        (
            "4 KiB random read, 128 in flight",
            &["-m", "128", "-b", "8", "-r"],
        ),
        (
            "128 KiB sequential read, 16 in flight",
            &["-m", "16", "-b", "256"],
        ),
        (
            "1 MiB sequential read, 8 in flight",
            &["-m", "8", "-b", "2048"],
        ),
    ];
    let mut iops_rows = Vec::new();
    let mut mbs_rows = Vec::new();
    let mut results = Vec::new();
    for (name, args) in workloads {
        let o = perf(&our_url, args)?;
        let p = perf(&peer_url, args)?;
        results.push((name.to_string(), o, p, o.2.max(p.2)));
    }
    // Writes through QEMU's iSCSI driver (iscsi-perf only reads).
    for (name, count, size, depth) in [
        (
            "4 KiB sequential write, 32 in flight (qemu-img bench)",
            40_000u32,
            4096u32,
            32u32,
        ),
        (
            "128 KiB sequential write, 16 in flight (qemu-img bench)",
            8_000,
            128 << 10,
            16,
        ),
    ] {
        // A fixed count finishes in about a second: alternate the servers and
        // take each one's median, so a burst of noise hits one run, not a row.
        let (mut o, mut p) = (Vec::new(), Vec::new());
        for _ in 0..WRITE_RUNS {
            o.push(qemu_bench(&our_url, true, count, size, depth)?);
            p.push(qemu_bench(&peer_url, true, count, size, depth)?);
        }
        // The most favourable ceiling of all runs, so it is not understated.
        let ceiling = o.iter().chain(&p).map(|r| r.2).fold(0.0, f64::max);
        results.push((name.to_string(), median(o), median(p), ceiling));
    }
    let mut ceilings = Vec::new();
    for (name, o, p, ceiling) in results {
        eprintln!("{name}: anyboot {o:?}, tgtd {p:?}");
        ceilings.push(format!(
            "{name}: client ceiling {ceiling:.0} IOPS, 2x tgtd = {:.0} ({})",
            2.0 * p.0,
            if 2.0 * p.0 > ceiling {
                "above what this client can drive here"
            } else {
                "within the client's reach"
            }
        ));
        iops_rows.push(Row {
            workload: name.to_string(),
            values: vec![("anyboot".into(), o.0), ("tgtd".into(), p.0)],
        });
        mbs_rows.push(Row {
            workload: name.to_string(),
            values: vec![("anyboot".into(), o.1), ("tgtd".into(), p.1)],
        });
    }
    print!(
        "{}",
        table(
            "iSCSI, RAM-backed LUN (tmpfs), loopback: iscsi-perf reads, qemu-img bench writes",
            "IOPS",
            &iops_rows
        )
    );
    print!(
        "{}",
        table(
            "iSCSI, RAM-backed LUN (tmpfs), loopback: iscsi-perf reads, qemu-img bench writes",
            "MB/s",
            &mbs_rows
        )
    );
    println!(
        "\nClient ceiling = operations / the client's own CPU seconds (iscsi-perf and \
         qemu-img bench are single-threaded; best of all runs of the row):"
    );
    for c in ceilings {
        println!("  {c}");
    }
    println!(
        "\n{SECS} s per run on a shared 2-core machine (other agents build and test \
         meanwhile): expect noise of tens of percent between runs."
    );
    // tgtd only exits once its targets are gone.
    let _ = run(Command::new(require("tgtadm", "tgt")).args([
        "-C", &cport, "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid",
        "1",
    ]));
    peer.stop_with(libc_sigterm(), Duration::from_secs(3));
    ours.stop_with(libc_sigterm(), Duration::from_secs(5));
    Ok(())
}

/// The run with the median IOPS.
fn median(mut runs: Vec<Figures>) -> Figures {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs[runs.len() / 2]
}

/// A directory on tmpfs, removed on drop.
struct ShmDir(PathBuf);

impl ShmDir {
    fn new() -> Result<Self> {
        let p = PathBuf::from(format!(
            "/dev/shm/anyboot-bench-iscsi-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SIGTERM's number on Linux (the benches crate has no libc dependency).
fn libc_sigterm() -> i32 {
    15
}
