//! TFTP throughput of anyboot-tftpd against tftpd-hpa (`in.tftpd`) and
//! dnsmasq's TFTP server, side by side on loopback, with one client for all:
//! the bounded RFC 1350/2347/2348/7440 client below (it verifies every byte).
//!
//! dnsmasq cannot serve TFTP on a port other than 69, so the whole benchmark
//! (all three servers and the clients) runs inside a network namespace it
//! creates: the binary re-executes itself there.
//!
//! Workloads: one client fetching 64 MiB at blksize 512 and 1468 (and 1468 with
//! windowsize 16: peers that do not implement RFC 7440 leave it out of their
//! OACK and the client falls back to lock-step; and 1468 lock-step with client
//! and server pinned to one CPU), and 50 concurrent clients each
//! fetching the same 16 MiB file (a PXE storm). Run by `cargo xtask bench tftp`.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyboot_benches::{all_cpus, median, own_cpu_seconds, pin_process, pin_thread, table, Row};
use anyboot_tests::{require, Daemon, Netns};
use anyhow::{bail, Context, Result};

const INNER: &str = "ANYBOOT_TFTP_BENCH_INNER";
const BIG: usize = 64 << 20;
const STORM: usize = 16 << 20;
const CLIENTS: usize = 50;
/// Runs per server of each single-client row; the median is reported.
const ROUNDS: usize = 3;

fn main() -> Result<()> {
    if std::env::var_os(INNER).is_none() {
        let ns = Netns::new("tftpbench");
        // tftpd-hpa resolves its bind address with AI_ADDRCONFIG, which
        // ignores loopback: give the namespace one non-loopback address.
        ns.exec_ok(&[
            "ip", "link", "add", "abtb0", "type", "veth", "peer", "name", "abtb1",
        ]);
        ns.exec_ok(&["ip", "addr", "add", "10.99.0.1/24", "dev", "abtb0"]);
        ns.exec_ok(&["ip", "link", "set", "abtb0", "up"]);
        ns.exec_ok(&["ip", "link", "set", "abtb1", "up"]);
        let exe = std::env::current_exe()?;
        let status = ns
            .command(&exe)
            .env(INNER, "1")
            .status()
            .context("re-running the benchmark inside its network namespace")?;
        if !status.success() {
            bail!("benchmark failed: {status}");
        }
        return Ok(());
    }
    inner()
}

/// A scratch directory removed on drop (also when the benchmark fails).
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ours() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| anyboot_tests::workspace_root().join("target"));
    let p = target.join("release/anyboot-tftpd");
    assert!(
        p.exists(),
        "{} is not built: `cargo xtask bench tftp` builds it",
        p.display()
    );
    p
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn wait_udp_ready(server: SocketAddr) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if fetch(server, "ready", 512, 1, b"ok").is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{server} never answered")
}

fn inner() -> Result<()> {
    require("in.tftpd", "tftpd-hpa");
    require("dnsmasq", "dnsmasq");
    let dir =
        TempDir(std::env::temp_dir().join(format!("anyboot-tftp-bench-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(dir.path());
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root)?;
    // World-readable files: tftpd-hpa refuses others.
    let big = pattern(BIG, 1);
    let storm = pattern(STORM, 2);
    std::fs::write(root.join("big.bin"), &big)?;
    std::fs::write(root.join("storm.bin"), &storm)?;
    std::fs::write(root.join("ready"), b"ok")?;
    let log = |n: &str| dir.path().join(format!("{n}.log"));

    let mut servers: Vec<(String, SocketAddr, Daemon)> = Vec::new();
    let a: SocketAddr = "127.0.0.1:6969".parse()?;
    servers.push((
        "anyboot".into(),
        a,
        Daemon::spawn(
            "anyboot-tftpd",
            Command::new(ours())
                .args(["-q", "--listen", &a.to_string(), "--root"])
                .arg(&root)
                .args(["--max-sessions", "1000"]),
            &log("anyboot"),
        ),
    ));
    let h: SocketAddr = "127.0.0.1:6970".parse()?;
    servers.push((
        "tftpd-hpa".into(),
        h,
        Daemon::spawn(
            "in.tftpd",
            Command::new("in.tftpd")
                .args(["-L", "-u", "root", "-a", &h.to_string(), "-s"])
                .arg(&root),
            &log("hpa"),
        ),
    ));
    let d: SocketAddr = "127.0.0.1:69".parse()?;
    servers.push((
        "dnsmasq".into(),
        d,
        Daemon::spawn(
            "dnsmasq",
            Command::new("dnsmasq")
                .args([
                    "-d",
                    "--port=0",
                    "--conf-file=/dev/null",
                    "--user=root",
                    "--group=root",
                    "--interface=lo",
                    "--bind-interfaces",
                    "--enable-tftp",
                    "--tftp-max=1000",
                    "--quiet-tftp",
                ])
                .arg(format!(
                    "--pid-file={}",
                    dir.path().join("dnsmasq.pid").display()
                ))
                .arg(format!("--tftp-root={}", root.display())),
            &log("dnsmasq"),
        ),
    ));
    for (name, addr, _) in &servers {
        wait_udp_ready(*addr).with_context(|| format!("{name} did not start"))?;
    }

    // TFTP_BENCH_ROWS=single or =storm runs only those rows (default: all).
    let only = std::env::var("TFTP_BENCH_ROWS").unwrap_or_default();
    let (single_rows, storm_rows) = match only.as_str() {
        "single" => (true, false),
        "storm" => (false, true),
        _ => (true, true),
    };
    let mut rows = Vec::new();
    // Client recoveries (timeouts, gap ACKs) per server, to show loss honestly.
    let mut recovered = vec![0u32; servers.len()];
    // Single-client rows: lock-step TFTP is bound by wake-up latency, and on
    // this shared VM a wake-up on the other CPU costs about four times the
    // server's work per block, so where the scheduler happens to place client
    // and server decides a single run. Each row is the median of ROUNDS runs
    // per server, in an order that rotates every round. The `one CPU` row pins
    // client and server to CPU 0: it measures each server's own cost per
    // block, without cross-CPU wake-ups.
    let single = [
        (512u16, 1u16, false),
        (1468, 1, false),
        (1468, 16, false),
        (1468, 1, true),
    ];
    for (bs, ws, one_cpu) in single.into_iter().filter(|_| single_rows) {
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
        let mut labels: Vec<String> = servers.iter().map(|s| s.0.clone()).collect();
        for round in 0..ROUNDS {
            for k in 0..servers.len() {
                let i = (k + round) % servers.len();
                let (name, addr, d) = &servers[i];
                if one_cpu {
                    pin_process(d.pid(), &[0]).context("pinning the server")?;
                    pin_thread(0, &[0]).context("pinning the client")?;
                }
                let t = Instant::now();
                let r = fetch(*addr, "big.bin", bs, ws, &big);
                let secs = t.elapsed().as_secs_f64();
                if one_cpu {
                    pin_process(d.pid(), &all_cpus()).context("unpinning the server")?;
                    pin_thread(0, &all_cpus()).context("unpinning the client")?;
                }
                let (granted, rec) =
                    r.with_context(|| format!("{name}: 64 MiB at blksize {bs}"))?;
                recovered[i] += rec;
                runs[i].push(BIG as f64 / secs / 1e6);
                if ws > 1 {
                    labels[i] = format!("{name}[w{granted}]");
                }
            }
        }
        let values = labels
            .into_iter()
            .zip(runs)
            .map(|(l, r)| (l, median(r)))
            .collect();
        let w = if ws > 1 {
            format!(" windowsize {ws}")
        } else {
            String::new()
        };
        let cpu = if one_cpu {
            ", client and server on one CPU"
        } else {
            ""
        };
        rows.push(Row {
            workload: format!("1 client, 64 MiB, blksize {bs}{w}{cpu}"),
            values,
        });
    }
    // Server CPU per storm row: with many clients the machine's two cores are
    // shared by the server and 50 client threads, so what the server spends
    // decides what is left for the clients.
    let mut storm_cpu: Vec<String> = Vec::new();
    let blocks = (CLIENTS * STORM.div_ceil(1468)) as f64;
    for ws in [1u16, 16].into_iter().filter(|_| storm_rows) {
        let mut values = Vec::new();
        // Per server: (CPU-us per block of the server, of the 50 clients).
        let mut costs = Vec::new();
        for (i, (name, addr, d)) in servers.iter().enumerate() {
            let cpu0 = cpu_seconds(d.pid());
            let clients0 = own_cpu_seconds();
            let (results, secs) = storm_run(*addr, ws, &storm);
            let server_cpu = cpu_seconds(d.pid()) - cpu0;
            let clients_cpu = own_cpu_seconds() - clients0;
            storm_cpu.push(format!(
                "{name}, {CLIENTS} clients windowsize {ws}: server CPU {server_cpu:.2} s, \
                 clients {clients_cpu:.2} s, in {secs:.2} s"
            ));
            costs.push((server_cpu / blocks * 1e6, clients_cpu / blocks * 1e6));
            let mut granted = 0;
            for r in results {
                let (g, rec) = r.with_context(|| format!("{name}: {CLIENTS} clients"))?;
                granted = g;
                recovered[i] += rec;
            }
            let label = if ws > 1 {
                format!("{name}[w{granted}]")
            } else {
                name.clone()
            };
            values.push((label, (CLIENTS * STORM) as f64 / secs / 1e6));
        }
        let w = if ws > 1 {
            format!(" windowsize {ws}")
        } else {
            String::new()
        };
        if ws == 1 {
            // The floor: what a server doing nothing but one `recvfrom` and
            // one `sendto` per block reaches with the same clients.
            let floor = Floor::start(storm.clone())?;
            let (results, secs) = storm_run(floor.addr, 1, &storm);
            for r in results {
                r.context("floor server: 50 clients")?;
            }
            let floor_mbps = (CLIENTS * STORM) as f64 / secs / 1e6;
            storm_cpu.push(lock_step_budget(&values, &costs, blocks, floor_mbps));
            values.push(("floor".to_owned(), floor_mbps));
        }
        rows.push(Row {
            workload: format!("{CLIENTS} clients x 16 MiB, blksize 1468{w} (sum)"),
            values,
        });
    }
    println!(
        "{}",
        table(
            "TFTP read throughput on loopback (release build)",
            "MB/s",
            &rows
        )
    );
    println!(
        "[wN] = windowsize the server granted (1: not supported, lock-step).\n\
         Single-client rows: median of {ROUNDS} runs per server, alternating.\n\
         Shared 2-core machine: absolute figures are noisy; compare the ratios of one run."
    );
    for line in &storm_cpu {
        println!("{line}");
    }
    for ((name, _, d), r) in servers.iter().zip(&recovered) {
        let cpu = cpu_seconds(d.pid());
        // tftpd-hpa's per-transfer children are reaped without accounting.
        let cpu = if cpu >= 0.05 {
            format!("{cpu:.1} s")
        } else {
            "not measurable".to_owned()
        };
        println!(
            "{name}: server CPU over all rows {cpu}; client recoveries (timeouts + gap ACKs): {r}"
        );
    }
    // Dropping a Daemon stops it (SIGTERM by PID).
    drop(servers);
    Ok(())
}

/// The storm: CLIENTS threads each fetching `storm.bin` (blksize 1468,
/// windowsize `ws`) from `addr` at once; their results and the seconds
/// until the last one finished.
fn storm_run(addr: SocketAddr, ws: u16, expect: &[u8]) -> (Vec<Result<(u16, u32)>>, f64) {
    let t = Instant::now();
    let results = std::thread::scope(|s| {
        let hs: Vec<_> = (0..CLIENTS)
            .map(|_| s.spawn(|| fetch(addr, "storm.bin", 1468, ws, expect)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (results, t.elapsed().as_secs_f64())
}

/// What the "2x tftpd-hpa with 50 clients" asks of the CPU in the
/// lock-step row: servers and clients share this machine's CPUs, so twice
/// tftpd-hpa's rate needs clients and server together under CPUs / (2 x
/// blocks per second) per block. `values` are (server, MB/s) with anyboot
/// first and tftpd-hpa second; `costs` are CPU-us per block (server, clients).
fn lock_step_budget(
    values: &[(String, f64)],
    costs: &[(f64, f64)],
    blocks: f64,
    floor_mbps: f64,
) -> String {
    let cpus = all_cpus().len() as f64;
    let hpa_mbps = values[1].1;
    let hpa_blocks_per_s = blocks * hpa_mbps * 1e6 / (CLIENTS * STORM) as f64;
    let budget = cpus / (2.0 * hpa_blocks_per_s) * 1e6;
    // The cheapest the clients were in any server's run: the most favourable.
    let clients = costs.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
    let ours = costs[0].0;
    let verdict = if clients > budget {
        "out of reach even for a server costing nothing"
    } else if clients + ours > budget {
        "out of reach at these costs"
    } else {
        "within the budget"
    };
    // tftpd-hpa serves each transfer in a child it forks; their CPU is not
    // accounted to it while the bench reads /proc, so it shows as ~0.
    let shown = |c: Option<&(f64, f64)>| match c {
        Some((server, _)) if *server >= 0.5 => format!("{server:.1}"),
        _ => "not measurable".to_owned(),
    };
    format!(
        "lock-step storm: 2x tftpd-hpa = {:.1} MB/s needs <= {budget:.1} CPU-us per block for \
         clients + server on {cpus} CPUs; measured: clients {clients:.1} (lowest of the three runs) \
         + anyboot {ours:.1} (tftpd-hpa {}, dnsmasq {}): {verdict}; the floor server (one \
         recvfrom + one sendto per block, nothing else) reached {floor_mbps:.1} MB/s = {:.2}x \
         tftpd-hpa",
        2.0 * hpa_mbps,
        shown(costs.get(1)),
        shown(costs.get(2)),
        floor_mbps / hpa_mbps,
    )
}

/// The floor of a lock-step TFTP server, in this process: per transfer a
/// thread that answers each ACK with the next block from memory, one
/// `recvfrom` and one `sendto` per block, with no file, no option parsing
/// beyond the OACK and no logging. No real server does less per block, so
/// its rate with the same clients shows what those clients leave room for
/// (it is not a strict bound: it shares the bench's process and noise). It
/// grants blksize 1468 (all the storm asks for); transfers end on their last
/// ACK or after 5 timeouts of 1 s.
struct Floor {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    listener: Option<std::thread::JoinHandle<()>>,
}

impl Floor {
    fn start(data: Vec<u8>) -> Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let data = Arc::new(data);
        let stop2 = stop.clone();
        let listener = std::thread::spawn(move || {
            let mut buf = [0u8; 600];
            let mut transfers = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    if n >= 2 && buf[..2] == [0, 1] {
                        let data = data.clone();
                        transfers.push(std::thread::spawn(move || floor_transfer(peer, &data)));
                    }
                }
            }
            for t in transfers {
                let _ = t.join();
            }
        });
        Ok(Self {
            addr,
            stop,
            listener: Some(listener),
        })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
    }
}

/// One floor transfer: OACK blksize 1468, then DATA n+1 for each ACK n.
fn floor_transfer(peer: SocketAddr, data: &[u8]) {
    const BS: usize = 1468;
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
        return;
    };
    if s.set_read_timeout(Some(Duration::from_secs(1))).is_err() {
        return;
    }
    let blocks = data.len() / BS + 1;
    let mut out = Vec::with_capacity(BS + 4);
    let mut ack = [0u8; 16];
    // Block 0 is the OACK.
    let mut block = 0usize;
    let mut timeouts = 0;
    loop {
        out.clear();
        if block == 0 {
            out.extend_from_slice(b"\0\x06blksize\x001468\0");
        } else {
            let start = (block - 1) * BS;
            out.extend_from_slice(&[0, 3]);
            out.extend_from_slice(&(block as u16).to_be_bytes());
            out.extend_from_slice(&data[start..(start + BS).min(data.len())]);
        }
        let _ = s.send_to(&out, peer);
        loop {
            match s.recv_from(&mut ack) {
                Ok((4, from)) if from == peer && ack[..2] == [0, 4] => {
                    if u16::from_be_bytes([ack[2], ack[3]]) == block as u16 {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    timeouts += 1;
                    if timeouts > 5 {
                        return;
                    }
                    // Retransmit.
                    let _ = s.send_to(&out, peer);
                }
            }
        }
        if block == blocks {
            return;
        }
        block += 1;
    }
}

/// CPU time of a process and its reaped children (tftpd-hpa forks one per
/// transfer), from /proc/PID/stat, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the `(comm)`: utime is field 14, cstime field 17 (1-based).
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // rest[0] is field 3 (state), so field n is rest[n - 3].
    let ticks: f64 = (14..=17)
        .map(|n| f.get(n - 3).copied().unwrap_or(0.0))
        .sum();
    ticks / 100.0
}

/// Fetches `name` and checks it equals `expect`; returns the windowsize used and
/// how often the client had to recover (timeouts and gap ACKs).
/// Bounded: 20 consecutive timeouts of 300 ms end it with an error.
fn fetch(
    server: SocketAddr,
    name: &str,
    blksize: u16,
    windowsize: u16,
    expect: &[u8],
) -> Result<(u16, u32)> {
    let s = UdpSocket::bind(if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })?;
    s.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(name.as_bytes());
    rrq.extend_from_slice(b"\0octet\0");
    let mut opt = |k: &str, v: String| {
        rrq.extend_from_slice(k.as_bytes());
        rrq.push(0);
        rrq.extend_from_slice(v.as_bytes());
        rrq.push(0);
    };
    if blksize != 512 {
        opt("blksize", blksize.to_string());
    }
    if windowsize > 1 {
        opt("windowsize", windowsize.to_string());
    }
    s.send_to(&rrq, server)?;
    let mut tid: Option<SocketAddr> = None;
    let (mut bs, mut ws) = (512usize, 1u16);
    let mut received: u64 = 0;
    let mut in_window = 0u16;
    let mut last_ack: Option<[u8; 4]> = None;
    let mut gap_acked = false;
    let mut timeouts = 0;
    let mut recoveries = 0u32;
    let mut buf = vec![0u8; 65536];
    let mut offset = 0usize;
    loop {
        let (n, from) = match s.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                timeouts += 1;
                recoveries += 1;
                if timeouts > 20 {
                    bail!("timed out after {received} blocks");
                }
                match (tid, last_ack) {
                    (Some(t), Some(a)) => s.send_to(&a, t)?,
                    _ => s.send_to(&rrq, server)?,
                };
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if tid.is_some_and(|t| t != from) || n < 4 {
            continue;
        }
        tid = Some(from);
        timeouts = 0;
        let p = &buf[..n];
        let op = u16::from_be_bytes([p[0], p[1]]);
        let block = u16::from_be_bytes([p[2], p[3]]);
        match op {
            6 if received == 0 => {
                let strs: Vec<&[u8]> = p[2..].split(|&b| b == 0).collect();
                for kv in strs.chunks(2) {
                    if kv.len() == 2 {
                        let v: usize = std::str::from_utf8(kv[1])?.parse().unwrap_or(0);
                        match std::str::from_utf8(kv[0])?.to_ascii_lowercase().as_str() {
                            "blksize" => bs = v,
                            "windowsize" => ws = v as u16,
                            _ => {}
                        }
                    }
                }
                let a = [0, 4, 0, 0];
                s.send_to(&a, from)?;
                last_ack = Some(a);
            }
            3 => {
                let d = block.wrapping_sub(received as u16);
                if d == 1 {
                    let data = &p[4..];
                    if offset + data.len() > expect.len()
                        || expect[offset..offset + data.len()] != *data
                    {
                        bail!("wrong bytes at offset {offset}");
                    }
                    offset += data.len();
                    received += 1;
                    in_window += 1;
                    gap_acked = false;
                    let done = data.len() < bs;
                    if done || in_window >= ws {
                        in_window = 0;
                        let a = [0, 4, p[2], p[3]];
                        s.send_to(&a, from)?;
                        last_ack = Some(a);
                    }
                    if done {
                        if offset != expect.len() {
                            bail!("short file: {offset} of {} bytes", expect.len());
                        }
                        return Ok((ws, recoveries));
                    }
                } else if d != 0 && d < 32768 && !gap_acked {
                    recoveries += 1;
                    gap_acked = true;
                    in_window = 0;
                    let b = (received as u16).to_be_bytes();
                    let a = [0, 4, b[0], b[1]];
                    s.send_to(&a, from)?;
                    last_ack = Some(a);
                }
            }
            5 => bail!("server error {block}: {}", String::from_utf8_lossy(&p[4..])),
            _ => {}
        }
    }
}
