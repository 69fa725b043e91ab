//! DHCP benchmark: perfdhcp (Kea) four-way exchanges per second against
//! anyboot-dhcpd (durable leases: fsync'd group commit), kea-dhcp4 (memfile)
//! and dnsmasq, each started in a server network namespace and driven from a
//! client namespace through a veth pair. perfdhcp acts as a relay (`-l ADDR`),
//! so every reply is a unicast to it and no broadcast handling skews the figures.
//!
//! Before that, a lease-store comparison: durable lease writes per second of
//! our append-only log (one `fdatasync` per batch) and of redb (one
//! `Durability::Immediate` commit per batch), for a few batch sizes.
//!
//! Run with `cargo xtask bench dhcp` (release build, as root).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyboot_benches::{table, Row};
use anyboot_dhcpd::proto::leases::{Lease, LeaseState};
use anyboot_dhcpd::store::LeaseLog;
use anyboot_tests::{require, require_root, run, veth_pair, workspace_root, Daemon, Netns};
use anyhow::{bail, Context, Result};

/// Offered rates (exchanges/s); each run lasts `SECONDS`.
const RATES: &[u32] = &[1_000, 5_000, 10_000, 20_000];
const SECONDS: u32 = 5;
/// Distinct simulated clients (MAC addresses) per run; the pool has ~65k.
const CLIENTS: u32 = 50_000;
const SERVER_IP: &str = "10.9.0.1";
const RELAY_IP: &str = "10.9.0.2";

#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    rate: f64,
    sent: u64,
    acked: u64,
}

impl Outcome {
    fn drop_pct(&self) -> f64 {
        if self.sent == 0 {
            100.0
        } else {
            100.0 * (self.sent - self.acked.min(self.sent)) as f64 / self.sent as f64
        }
    }
}

/// Reads perfdhcp's report: DISCOVERs sent and ACKs received.
fn parse_perfdhcp(out: &str) -> Result<Outcome> {
    let mut o = Outcome::default();
    let mut section = "";
    for line in out.lines() {
        let line = line.trim();
        if line.contains("DISCOVER-OFFER") {
            section = "DO";
        } else if line.contains("REQUEST-ACK") {
            section = "RA";
        } else if let Some(v) = line.strip_prefix("sent packets:") {
            if section == "DO" {
                o.sent = v.trim().parse()?;
            }
        } else if let Some(v) = line.strip_prefix("received packets:") {
            if section == "RA" {
                o.acked = v.trim().parse()?;
            }
        }
    }
    if o.sent == 0 {
        bail!("perfdhcp sent nothing:\n{out}");
    }
    // perfdhcp's own rate divides by the run time including the -W wait;
    // completed exchanges over the sending period is what we compare.
    o.rate = o.acked as f64 / f64::from(SECONDS);
    Ok(o)
}

/// The 1-minute load average (how contended the shared machine was).
fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// UDP datagrams the namespace's kernel dropped because a socket's receive
/// buffer was full (`RcvbufErrors` in /proc/net/snmp).
fn rcvbuf_errors(ns: &Netns) -> u64 {
    let snmp = ns.exec_ok(&["cat", "/proc/net/snmp"]);
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used so far, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of them, in clock ticks.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

fn release_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let p = target.join("release").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release -p anyboot-dhcpd` (cargo xtask bench dhcp does)",
        p.display()
    );
    p
}

struct Lab {
    server: Netns,
    client: Netns,
    server_if: String,
}

fn lab() -> Lab {
    let server = Netns::new("bdhs");
    let client = Netns::new("bdhc");
    let (a, _b) = veth_pair(
        &server,
        &format!("{SERVER_IP}/16"),
        &client,
        &format!("{RELAY_IP}/16"),
    );
    Lab {
        server,
        client,
        server_if: a,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Peer {
    Anyboot,
    Kea,
    Dnsmasq,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Anyboot => "anyboot",
            Peer::Kea => "kea",
            Peer::Dnsmasq => "dnsmasq",
        }
    }
}

fn start(lab: &Lab, peer: Peer, dir: &Path) -> Result<Daemon> {
    let log = dir.join(format!("{}.log", peer.name()));
    let ifname = &lab.server_if;
    let d = match peer {
        Peer::Anyboot => {
            let mut c = lab.server.command(release_bin("anyboot-dhcpd"));
            c.env("NO_COLOR", "1")
                .args(["--interface", ifname, "--pool", "10.9.1.0-10.9.255.254"])
                .arg("--lease-db")
                .arg(dir.join("anyboot.leases"));
            Daemon::spawn("anyboot-dhcpd", &mut c, &log)
        }
        Peer::Kea => {
            let conf = dir.join("kea.json");
            std::fs::write(
                &conf,
                format!(
                    r#"{{"Dhcp4": {{
  "interfaces-config": {{"interfaces": ["{ifname}"], "dhcp-socket-type": "udp"}},
  "lease-database": {{"type": "memfile", "persist": true, "name": "{leases}", "lfc-interval": 0}},
  "valid-lifetime": 3600,
  "subnet4": [{{"id": 1, "subnet": "10.9.0.0/16", "pools": [{{"pool": "10.9.1.0 - 10.9.255.254"}}]}}],
  "loggers": [{{"name": "kea-dhcp4", "output_options": [{{"output": "stdout"}}], "severity": "WARN"}}]
}}}}"#,
                    leases = dir.join("kea-leases4.csv").display()
                ),
            )?;
            let mut c = lab.server.command(require("kea-dhcp4", "kea-dhcp4-server"));
            c.env("KEA_PIDFILE_DIR", dir)
                .env("KEA_LOCKFILE_DIR", dir)
                .arg("-c")
                .arg(&conf);
            Daemon::spawn("kea-dhcp4", &mut c, &log)
        }
        Peer::Dnsmasq => {
            let mut c = lab.server.command(require("dnsmasq", "dnsmasq"));
            c.args([
                "-k",
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--bind-interfaces",
                "--no-ping",
                "--dhcp-authoritative",
                "--dhcp-lease-max=200000",
                "--dhcp-range=10.9.1.0,10.9.255.254,255.255.0.0,1h",
            ])
            .arg(format!("--interface={ifname}"))
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.join("dnsmasq.leases").display()
            ))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
            Daemon::spawn("dnsmasq", &mut c, &log)
        }
    };
    // Give the daemon time to bind (all three bind in well under a second).
    std::thread::sleep(Duration::from_millis(1500));
    Ok(d)
}

fn perfdhcp(lab: &Lab, rate: u32) -> Result<Outcome> {
    let out = run(lab.client.command(require("perfdhcp", "kea-admin")).args([
        "-4",
        "-r",
        &rate.to_string(),
        "-R",
        &CLIENTS.to_string(),
        "-p",
        &SECONDS.to_string(),
        // Wait half a second for replies still in flight when the run ends.
        "-W",
        "500000",
        "-l",
        RELAY_IP,
        SERVER_IP,
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_perfdhcp(&text).with_context(|| {
        format!(
            "perfdhcp ({}):\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn lease(i: u32) -> Lease {
    Lease {
        addr: std::net::Ipv4Addr::from(0x0a09_0000 + (i % 60_000)),
        client: [&[1u8][..], &i.to_be_bytes()[..], &[0, 0]].concat(),
        hw: [&i.to_be_bytes()[..], &[0, 0]].concat(),
        state: LeaseState::Bound,
        expires_ms: 1_800_000_000_000 + u64::from(i),
    }
}

/// Durable lease writes per second: (log, redb) for `total` leases written in
/// batches of `batch`.
fn store_rates(dir: &Path, batch: u32, total: u32) -> Result<(f64, f64)> {
    let leases: Vec<Lease> = (0..total).map(lease).collect();
    let (mut log, _) = LeaseLog::open(&dir.join(format!("log-{batch}")), 0)?;
    let t = std::time::Instant::now();
    for chunk in leases.chunks(batch as usize) {
        log.append(chunk)?;
    }
    let log_rate = f64::from(total) / t.elapsed().as_secs_f64();

    const TABLE: redb::TableDefinition<u32, &[u8]> = redb::TableDefinition::new("leases");
    let db = redb::Database::create(dir.join(format!("redb-{batch}")))?;
    let t = std::time::Instant::now();
    for chunk in leases.chunks(batch as usize) {
        let tx = db.begin_write()?;
        {
            let mut table = tx.open_table(TABLE)?;
            for l in chunk {
                let mut v = Vec::with_capacity(32);
                v.extend_from_slice(&l.expires_ms.to_be_bytes());
                v.extend_from_slice(&l.client);
                v.extend_from_slice(&l.hw);
                table.insert(u32::from(l.addr), v.as_slice())?;
            }
        }
        tx.commit()?;
    }
    let redb_rate = f64::from(total) / t.elapsed().as_secs_f64();
    Ok((log_rate, redb_rate))
}

fn main() -> Result<()> {
    require_root("the DHCP benchmark (network namespaces, port 67)");
    require("perfdhcp", "kea-admin");
    require("kea-dhcp4", "kea-dhcp4-server");
    require("dnsmasq", "dnsmasq");
    // Lease files live on the real disk (not tmpfs), so fsync costs what it costs.
    let base = std::env::temp_dir();
    let mut store_rows = Vec::new();
    for (batch, total) in [(1, 300), (16, 3_000), (128, 20_000)] {
        let dir = tempfile::tempdir_in(&base)?;
        let (log, redb) = store_rates(dir.path(), batch, total)?;
        store_rows.push(Row {
            workload: format!("batch of {batch} leases per commit"),
            values: vec![("append log".into(), log), ("redb".into(), redb)],
        });
    }
    print!(
        "{}",
        table(
            "Durable lease writes (fsync per commit)",
            "leases/s",
            &store_rows
        )
    );
    let lab = lab();
    println!(
        "perfdhcp {SECONDS} s per run, {CLIENTS} simulated clients, relayed; \
         lease files under {} (anyboot fsyncs every batch; kea memfile and dnsmasq do not fsync)",
        base.display()
    );
    let peers = [Peer::Anyboot, Peer::Kea, Peer::Dnsmasq];
    let mut rate_rows = Vec::new();
    let mut drop_rows = Vec::new();
    let mut cpu_rows = Vec::new();
    let mut group = Vec::new();
    for &rate in RATES {
        let mut rates = Vec::new();
        let mut drops = Vec::new();
        let mut cpus = Vec::new();
        for peer in peers {
            let dir = tempfile::tempdir_in(&base)?;
            let mut d = start(&lab, peer, dir.path())?;
            let cpu0 = cpu_seconds(d.pid());
            let (srv0, cli0) = (rcvbuf_errors(&lab.server), rcvbuf_errors(&lab.client));
            let o = perfdhcp(&lab, rate)?;
            let cpu = cpu_seconds(d.pid()) - cpu0;
            let srv_drops = rcvbuf_errors(&lab.server) - srv0;
            let cli_drops = rcvbuf_errors(&lab.client) - cli0;
            let us_per_ack = if o.acked > 0 {
                cpu * 1e6 / o.acked as f64
            } else {
                f64::NAN
            };
            println!(
                "{:>8} offered {rate:>6}/s: {:>9.1} exchanges/s, {} DISCOVERs, {} ACKs, {:.2}% lost, {cpu:.2} CPU s, {us_per_ack:.1} CPU us/ACK; socket-buffer drops: server {srv_drops}, perfdhcp {cli_drops}; load {}",
                peer.name(),
                o.rate,
                o.sent,
                o.acked,
                o.drop_pct(),
                load1()
            );
            if peer == Peer::Anyboot {
                // Group commit as the writer last reported it (every 5 s).
                let log = d.log();
                let commit = log
                    .lines()
                    .rfind(|l| l.contains("lease writer"))
                    .and_then(|l| {
                        l.split_once("lease writer")
                            .map(|(_, r)| r.trim().to_owned())
                    })
                    .unwrap_or_default();
                // kill -9, then count what a restart recovers from the log.
                d.stop_with(libc::SIGKILL, Duration::from_secs(5));
                let mut again = start(&lab, Peer::Anyboot, dir.path())?;
                let log = again.log();
                again.stop_with(libc::SIGTERM, Duration::from_secs(5));
                let recovered = log
                    .split("leases=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .unwrap_or("?")
                    .to_owned();
                group.push(format!(
                    "  offered {rate:>6}/s: {} ACKs to perfdhcp, {recovered} distinct leases recovered after kill -9; writer: {commit}",
                    o.acked
                ));
            } else {
                d.stop_with(libc::SIGTERM, Duration::from_secs(5));
            }
            rates.push((peer.name().to_owned(), o.rate));
            cpus.push((peer.name().to_owned(), us_per_ack));
            drops.push((peer.name().to_owned(), o.drop_pct()));
        }
        rate_rows.push(Row {
            workload: format!("offered {rate}/s"),
            values: rates,
        });
        drop_rows.push(Row {
            workload: format!("offered {rate}/s"),
            values: drops,
        });
        cpu_rows.push(Row {
            workload: format!("offered {rate}/s"),
            values: cpus,
        });
    }
    print!(
        "{}",
        table("DHCPv4 four-way exchanges", "exchanges/s", &rate_rows)
    );
    println!("\n## Lost exchanges (% of DISCOVERs without an ACK; lower is better)");
    for r in &drop_rows {
        print!("{:<40}", r.workload);
        for (name, v) in &r.values {
            print!(" {name}: {v:>6.2}%");
        }
        println!();
    }
    println!("\n## Server CPU time per ACK (us; lower is better; independent of how busy the machine is)");
    for r in &cpu_rows {
        print!("{:<40}", r.workload);
        let ours = r.values[0].1;
        for (name, v) in &r.values {
            print!(" {name}: {v:>8.1}");
            if name != "anyboot" {
                print!(" (peer/ours {:.2}x)", v / ours);
            }
        }
        println!();
    }
    println!("\n## anyboot durability check");
    for g in group {
        println!("{g}");
    }
    println!(
        "\n(The machine is shared with other jobs: treat the figures as indicative. \
         \"perfdhcp\" socket-buffer drops are replies the servers sent that perfdhcp \
         was too slow to read: above that point the load generator, not the server, \
         is measured.)"
    );
    Ok(())
}
