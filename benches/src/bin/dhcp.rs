//! DHCP benchmark: perfdhcp (Kea) four-way exchanges per second against
//! anyboot-dhcpd (durable leases: fsync'd group commit), kea-dhcp4 (memfile)
//! and dnsmasq, each started in a server network namespace and driven from a
//! client namespace through a veth pair. perfdhcp acts as a relay (`-l ADDR`),
//! so every reply is a unicast to it and no broadcast handling skews the figures.
//!
//! Run with `cargo xtask bench dhcp` (release build, as root).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyboot_benches::{table, Row};
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

/// Reads perfdhcp's report: the achieved rate, DISCOVERs sent and ACKs received.
fn parse_perfdhcp(out: &str) -> Result<Outcome> {
    let mut o = Outcome::default();
    let mut section = "";
    for line in out.lines() {
        let line = line.trim();
        if let Some(r) = line.strip_prefix("Rate:") {
            o.rate = r
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .context("perfdhcp Rate line")?;
        } else if line.contains("DISCOVER-OFFER") {
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
    Ok(o)
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

fn main() -> Result<()> {
    require_root("the DHCP benchmark (network namespaces, port 67)");
    require("perfdhcp", "kea-admin");
    require("kea-dhcp4", "kea-dhcp4-server");
    require("dnsmasq", "dnsmasq");
    let lab = lab();
    // Lease files live on the real disk (not tmpfs), so fsync costs what it costs.
    let base = std::env::temp_dir();
    println!(
        "perfdhcp {SECONDS} s per run, {CLIENTS} simulated clients, relayed; \
         lease files under {} (anyboot fsyncs every batch; kea memfile and dnsmasq do not fsync)",
        base.display()
    );
    let peers = [Peer::Anyboot, Peer::Kea, Peer::Dnsmasq];
    let mut rate_rows = Vec::new();
    let mut drop_rows = Vec::new();
    let mut group = Vec::new();
    for &rate in RATES {
        let mut rates = Vec::new();
        let mut drops = Vec::new();
        for peer in peers {
            let dir = tempfile::tempdir_in(&base)?;
            let mut d = start(&lab, peer, dir.path())?;
            let o = perfdhcp(&lab, rate)?;
            println!(
                "{:>8} offered {rate:>6}/s: {:>9.1} exchanges/s, {} DISCOVERs, {} ACKs, {:.2}% lost",
                peer.name(),
                o.rate,
                o.sent,
                o.acked,
                o.drop_pct()
            );
            if peer == Peer::Anyboot {
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
                    "  offered {rate:>6}/s: {} ACKs to perfdhcp, {recovered} distinct leases recovered after kill -9",
                    o.acked
                ));
            } else {
                d.stop_with(libc::SIGTERM, Duration::from_secs(5));
            }
            rates.push((peer.name().to_owned(), o.rate));
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
    println!("\n## anyboot durability check");
    for g in group {
        println!("{g}");
    }
    println!("\n(The machine is shared with other jobs: treat the figures as indicative.)");
    Ok(())
}
