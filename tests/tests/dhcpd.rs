//! End-to-end tests of `anyboot-dhcpd` with real DHCP clients (ISC `dhclient`,
//! busybox `udhcpc`) in network namespaces created here: a server namespace
//! with a bridge, one client namespace per client joined to it by a veth pair.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyboot_tests::{bin, require, run, veth_pair, Daemon, Netns};

/// The server's namespace with bridge `br0` (10.9.0.1/24) and client
/// namespaces attached to it.
struct Lab {
    server: Netns,
    clients: Vec<(Netns, String)>,
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl Lab {
    fn new(tag: &str, n_clients: usize) -> Lab {
        require("dhclient", "isc-dhcp-client");
        require("udhcpc", "udhcpc");
        let ip = require("ip", "iproute2");
        let server = Netns::new(&format!("{tag}s"));
        server.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        server.exec_ok(&["ip", "addr", "add", "10.9.0.1/24", "dev", "br0"]);
        server.exec_ok(&["ip", "link", "set", "br0", "up"]);
        let mut clients = Vec::new();
        for i in 0..n_clients {
            let c = Netns::new(&format!("{tag}c{i}"));
            let (a, b) = veth_pair(&server, "", &c, "");
            server.exec_ok(&["ip", "link", "set", &a, "master", "br0"]);
            clients.push((c, b));
        }
        let dir = tempfile::tempdir().unwrap();
        // One client script for both clients: log the event, then configure
        // the address so that renewals (unicast from the client's address) work.
        let script = dir.path().join("client-script");
        let ip = ip.display();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 ev=\"${{reason:-$1}}\"\n\
                 addr=\"${{new_ip_address:-$ip}}\"\n\
                 echo \"$ev $addr\" >> \"{log}.$interface\"\n\
                 case \"$ev\" in\n\
                 BOUND|RENEW|REBIND|REBOOT|bound|renew) {ip} addr flush dev \"$interface\"; {ip} addr add \"$addr/24\" dev \"$interface\";;\n\
                 deconfig|EXPIRE|RELEASE|STOP) {ip} addr flush dev \"$interface\";;\n\
                 esac\n\
                 exit 0\n",
                log = dir.path().join("events").display(),
            ),
        )
        .unwrap();
        run_ok_sh(&["chmod", "755", &script.to_string_lossy()]);
        Lab {
            server,
            clients,
            dir,
            script,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the server on `br0` with `extra` flags; waits until it listens.
    fn start_server(&self, name: &str, extra: &[&str]) -> Daemon {
        let mut cmd = self.server.command(bin("anyboot-dhcpd"));
        cmd.env("NO_COLOR", "1")
            .args(["-v", "--interface", "br0"])
            .args(extra);
        let d = Daemon::spawn(name, &mut cmd, &self.path(&format!("{name}.log")));
        wait_for(
            || d.log().contains("listening"),
            Duration::from_secs(10),
            || format!("server did not start:\n{}", d.log()),
        );
        d
    }

    /// Gives client `i`'s interface the hardware address `mac`.
    fn set_mac(&self, i: usize, mac: &str) {
        let (ns, ifname) = &self.clients[i];
        ns.exec_ok(&["ip", "link", "set", ifname, "address", mac]);
    }

    /// The client events file of client `i` (`BOUND 10.9.0.100`, ...).
    fn events(&self, i: usize) -> String {
        let p = self
            .dir
            .path()
            .join(format!("events.{}", self.clients[i].1));
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// Waits for an event line of client `i` starting with one of `kinds`
    /// after the first `skip` lines; returns its address.
    fn wait_event(&self, i: usize, kinds: &[&str], skip: usize, what: &str) -> String {
        let mut found = None;
        wait_for(
            || {
                found = self.events(i).lines().skip(skip).find_map(|l| {
                    let (k, a) = l.split_once(' ')?;
                    (kinds.contains(&k) && !a.is_empty()).then(|| a.to_owned())
                });
                found.is_some()
            },
            Duration::from_secs(30),
            || format!("{what}: client {i} events:\n{}", self.events(i)),
        );
        found.unwrap()
    }

    fn dhclient(&self, i: usize, args: &[&str]) -> Command {
        let (ns, ifname) = &self.clients[i];
        let mut c = ns.command("dhclient");
        c.args(["-v", "-sf"])
            .arg(&self.script)
            .arg("-lf")
            .arg(self.path(&format!("dhclient{i}.leases")))
            .arg("-pf")
            .arg(self.path(&format!("dhclient{i}.pid")))
            .args(args)
            .arg(ifname);
        c
    }

    fn udhcpc(&self, i: usize, args: &[&str]) -> Command {
        let (ns, ifname) = &self.clients[i];
        let mut c = ns.command("udhcpc");
        c.args(["-f", "-i", ifname, "-s"])
            .arg(&self.script)
            .args(args);
        c
    }
}

fn run_ok_sh(argv: &[&str]) {
    let out = run(Command::new(argv[0]).args(&argv[1..]));
    assert!(out.status.success(), "{argv:?} failed: {out:?}");
}

fn wait_for(mut cond: impl FnMut() -> bool, timeout: Duration, msg: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out: {}", msg());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pool_addr(a: &str) -> bool {
    a.starts_with("10.9.0.")
}

#[test]
fn dhclient_gets_renews_and_releases_then_a_second_client_gets_another_address() {
    let lab = Lab::new("dh1", 2);
    let leases = lab.path("leases.db");
    let server = lab.start_server(
        "dhcpd",
        &[
            "--pool",
            "10.9.0.100-10.9.0.110",
            "--router",
            "10.9.0.1",
            "--lease-time",
            "12",
            "--lease-db",
            &leases.to_string_lossy(),
        ],
    );
    // dhclient stays in the foreground (-d) so it renews at T1 = 6 s.
    let mut dh = Daemon::spawn(
        "dhclient",
        &mut lab.dhclient(0, &["-d", "-1"]),
        &lab.path("dhclient0.log"),
    );
    let a = lab.wait_event(0, &["BOUND"], 0, "dhclient lease");
    assert!(pool_addr(&a), "{a}");
    let n = lab.events(0).lines().count();
    let renewed = lab.wait_event(0, &["RENEW"], n, "dhclient renewal");
    assert_eq!(renewed, a, "renewal keeps the address");
    dh.stop_with(libc::SIGTERM, Duration::from_secs(5));
    // `dhclient -r` sends a RELEASE for the lease in its lease file.
    let out = run(&mut lab.dhclient(0, &["-r"]));
    assert!(out.status.success(), "dhclient -r: {out:?}");
    wait_for(
        || server.log().contains("released"),
        Duration::from_secs(10),
        || format!("no RELEASE seen by the server:\n{}", server.log()),
    );
    // The second client (udhcpc) gets a different address.
    let out = run(&mut lab.udhcpc(1, &["-q", "-n", "-t", "5", "-T", "1"]));
    assert!(out.status.success(), "udhcpc: {out:?}");
    let b = lab.wait_event(1, &["bound"], 0, "udhcpc lease");
    assert!(
        pool_addr(&b) && b != a,
        "second client got {b}, first had {a}"
    );
    server.stop();
    assert!(
        std::fs::metadata(&leases).unwrap().len() > 8,
        "leases were written"
    );
}

#[test]
fn udhcpc_renews_and_releases_on_signal_and_reservation_by_mac() {
    let lab = Lab::new("dh2", 2);
    // Client 1's MAC is reserved for 10.9.0.50.
    let reserved_mac = "52:54:00:12:34:56";
    lab.set_mac(1, reserved_mac);
    let server = lab.start_server(
        "dhcpd",
        &[
            "--pool",
            "10.9.0.100-10.9.0.110",
            "--reserve",
            &format!("{reserved_mac}=10.9.0.50"),
            "--lease-db",
            &lab.path("leases.db").to_string_lossy(),
        ],
    );
    let mut u = Daemon::spawn("udhcpc", &mut lab.udhcpc(0, &[]), &lab.path("udhcpc0.log"));
    let a = lab.wait_event(0, &["bound"], 0, "udhcpc lease");
    assert!(pool_addr(&a) && a != "10.9.0.50", "{a}");
    // SIGUSR1: renew (unicast REQUEST from the bound address).
    let n = lab.events(0).lines().count();
    // SAFETY: the pid is our child's.
    unsafe { libc::kill(u.pid() as i32, libc::SIGUSR1) };
    let renewed = lab.wait_event(0, &["renew", "bound"], n, "udhcpc renewal");
    assert_eq!(renewed, a);
    // SIGUSR2: release.
    unsafe { libc::kill(u.pid() as i32, libc::SIGUSR2) };
    wait_for(
        || server.log().contains("released"),
        Duration::from_secs(10),
        || format!("no RELEASE seen by the server:\n{}", server.log()),
    );
    u.stop_with(libc::SIGTERM, Duration::from_secs(5));
    // The reserved client gets its reservation.
    let out = run(&mut lab.udhcpc(1, &["-q", "-n", "-t", "5", "-T", "1"]));
    assert!(out.status.success(), "udhcpc: {out:?}");
    assert_eq!(
        lab.wait_event(1, &["bound"], 0, "reserved lease"),
        "10.9.0.50"
    );
    server.stop();
}

#[test]
fn an_exhausted_pool_gives_the_third_client_nothing() {
    let lab = Lab::new("dh3", 3);
    let server = lab.start_server("dhcpd", &["--pool", "10.9.0.100-10.9.0.101"]);
    let mut got = Vec::new();
    for i in 0..2 {
        let out = run(&mut lab.udhcpc(i, &["-q", "-n", "-t", "5", "-T", "1"]));
        assert!(out.status.success(), "udhcpc {i}: {out:?}");
        got.push(lab.wait_event(i, &["bound"], 0, "lease"));
    }
    got.sort();
    assert_eq!(got, vec!["10.9.0.100", "10.9.0.101"]);
    // OFFER and ACK went unicast to yiaddr at chaddr (RFC 2131 §4.1): the
    // server installed the neighbour entries the clients could not answer.
    let neigh = lab.server.exec_ok(&["ip", "neigh", "show", "dev", "br0"]);
    for a in &got {
        assert!(
            neigh.contains(a.as_str()),
            "no neighbour entry for {a}: {neigh}"
        );
    }
    // udhcpc -n exits non-zero when no lease was obtained.
    let out = run(&mut lab.udhcpc(2, &["-q", "-n", "-t", "3", "-T", "1"]));
    assert!(!out.status.success(), "third client got a lease: {out:?}");
    assert!(!lab.events(2).contains("bound"), "{}", lab.events(2));
    assert!(
        server.log().contains("no address available"),
        "{}",
        server.log()
    );
    server.stop();
}

#[test]
fn leases_survive_kill_9_of_the_server() {
    let lab = Lab::new("dh4", 2);
    let leases = lab.path("leases.db");
    let args = [
        "--pool",
        "10.9.0.100-10.9.0.100",
        "--lease-time",
        "600",
        "--lease-db",
        &leases.to_string_lossy(),
    ];
    let mut server = lab.start_server("dhcpd-a", &args);
    let mut dh = Daemon::spawn(
        "dhclient",
        &mut lab.dhclient(0, &["-d", "-1"]),
        &lab.path("dhclient0.log"),
    );
    let a = lab.wait_event(0, &["BOUND"], 0, "first lease");
    assert_eq!(a, "10.9.0.100");
    dh.stop_with(libc::SIGTERM, Duration::from_secs(5));
    // kill -9: no chance to flush anything the ACK did not already make durable.
    assert!(server
        .stop_with(libc::SIGKILL, Duration::from_secs(5))
        .is_some());
    let server = lab.start_server("dhcpd-b", &args);
    assert!(
        server.log().contains("leases=1"),
        "lease not recovered:\n{}",
        server.log()
    );
    // Another client must not get the (only) address while the lease is valid.
    let out = run(&mut lab.udhcpc(1, &["-q", "-n", "-t", "3", "-T", "1"]));
    assert!(!out.status.success(), "second client got a lease: {out:?}");
    assert!(!lab.events(1).contains("bound"), "{}", lab.events(1));
    // The first client gets its address back (INIT-REBOOT from its lease file).
    let n = lab.events(0).lines().count();
    let mut dh = Daemon::spawn(
        "dhclient-again",
        &mut lab.dhclient(0, &["-d", "-1"]),
        &lab.path("dhclient0b.log"),
    );
    let again = lab.wait_event(0, &["BOUND", "REBOOT"], n, "lease after restart");
    assert_eq!(again, a);
    dh.stop_with(libc::SIGTERM, Duration::from_secs(5));
    server.stop();
}

#[test]
fn check_config_rejects_bad_flags_naming_them() {
    let out = run(Command::new(bin("anyboot-dhcpd")).args([
        "--check-config",
        "--interface",
        "eth0",
        "--pool",
        "10.0.0.9-10.0.0.5",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pool"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[dhcpd]\ninterfaces = [\"eth0\"]\n[[dhcpd.subnet]]\nnetwork = \"10.0.0.0/24\"\npool_start = \"10.0.1.1\"\npool_end = \"10.0.1.9\"\n",
    )
    .unwrap();
    let out = run(Command::new(bin("anyboot-dhcpd"))
        .arg("--check-config")
        .arg("--config")
        .arg(&cfg));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dhcpd.subnet[0].pool_start") && err.contains(&*cfg.to_string_lossy()),
        "{err}"
    );
}

#[test]
fn two_interfaces_two_subnets_and_a_relayed_subnet_from_a_config_file() {
    require("perfdhcp", "kea-admin");
    let lab = Lab::new("dh5", 0);
    // Two links, each with its own subnet, served by one process.
    let c0 = Netns::new("dh5c0");
    let c1 = Netns::new("dh5c1");
    let (s0, i0) = veth_pair(&lab.server, "10.9.0.1/24", &c0, "");
    let (s1, i1) = veth_pair(&lab.server, "10.8.0.1/24", &c1, "");
    let cfg = lab.path("site.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dhcpd]\n\
             interfaces = [\"{s0}\", \"{s1}\"]\n\
             lease_db = \"{db}\"\n\
             [[dhcpd.subnet]]\nnetwork = \"10.9.0.0/24\"\npool_start = \"10.9.0.100\"\npool_end = \"10.9.0.110\"\n\
             [[dhcpd.subnet]]\nnetwork = \"10.8.0.0/24\"\npool_start = \"10.8.0.100\"\npool_end = \"10.8.0.110\"\n\
             [[dhcpd.subnet]]\nnetwork = \"10.20.0.0/24\"\npool_start = \"10.20.0.100\"\npool_end = \"10.20.0.200\"\n",
            db = lab.path("leases.db").display()
        ),
    )
    .unwrap();
    let mut cmd = lab.server.command(bin("anyboot-dhcpd"));
    cmd.env("NO_COLOR", "1").arg("-v").arg("--config").arg(&cfg);
    let server = Daemon::spawn("dhcpd", &mut cmd, &lab.path("dhcpd.log"));
    wait_for(
        || server.log().matches("listening").count() == 2,
        Duration::from_secs(10),
        || format!("server did not start:\n{}", server.log()),
    );
    let udhcpc = |ns: &Netns, ifname: &str| {
        let mut c = ns.command("udhcpc");
        c.args(["-f", "-q", "-n", "-t", "5", "-T", "1", "-i", ifname, "-s"])
            .arg(&lab.script);
        let out = run(&mut c);
        assert!(out.status.success(), "udhcpc on {ifname}: {out:?}");
        let ev = std::fs::read_to_string(lab.path(&format!("events.{ifname}"))).unwrap();
        ev.lines()
            .find_map(|l| l.strip_prefix("bound "))
            .unwrap_or_else(|| panic!("no lease on {ifname}: {ev}"))
            .to_owned()
    };
    let a0 = udhcpc(&c0, &i0);
    let a1 = udhcpc(&c1, &i1);
    assert!(a0.starts_with("10.9.0."), "link 0 got {a0}");
    assert!(a1.starts_with("10.8.0."), "link 1 got {a1}");
    // Client 1 also acts as a relay for 10.20.0.0/24 (perfdhcp sets giaddr);
    // the server reaches the relay through client 1.
    c1.exec_ok(&["ip", "addr", "add", "10.20.0.2/24", "dev", &i1]);
    lab.server
        .exec_ok(&["ip", "route", "add", "10.20.0.0/24", "via", &a1, "dev", &s1]);
    // perfdhcp exits 0 only if every exchange completed (3 means drops); -W
    // waits a second for the last replies.
    let out = run(c1.command("perfdhcp").args([
        "-4",
        "-r",
        "20",
        "-n",
        "20",
        "-R",
        "20",
        "-W",
        "1000000",
        "-l",
        "10.20.0.2",
        "10.8.0.1",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "perfdhcp via relay: {out:?}\n{text}");
    assert!(
        server.log().contains("addr=10.20.0."),
        "relayed clients were not served from the relay's subnet:\n{}",
        server.log()
    );
    server.stop();
}

/// Runs `f` on a thread that has entered network namespace `ns`, so the
/// sockets it creates live there (a hand-built PXE client: no packaged client
/// sends option 93/60/77 the way firmware does).
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace fd; setns affects only this thread.
        let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// A BOOTREQUEST with chaddr `mac` and `options` (code, value).
fn bootrequest(mac: [u8; 6], ciaddr: [u8; 4], options: &[(u8, &[u8])]) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&[0x12, 0x34, 0x56, mac[5]]);
    p[10] = 0x80; // broadcast flag
    p[12..16].copy_from_slice(&ciaddr);
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    for (c, v) in options {
        p.push(*c);
        p.push(v.len() as u8);
        p.extend_from_slice(v);
    }
    p.push(255);
    p
}

/// Option `code` of a reply, walking its options.
fn reply_option(p: &[u8], code: u8) -> Option<Vec<u8>> {
    let mut i = 240;
    while i + 1 < p.len() {
        match p[i] {
            0 => i += 1,
            255 => return None,
            c => {
                let len = p[i + 1] as usize;
                let v = p.get(i + 2..i + 2 + len)?;
                if c == code {
                    return Some(v.to_vec());
                }
                i += 2 + len;
            }
        }
    }
    None
}

/// Sends `req` from `local` to `dst` and returns the first reply with the
/// same xid, or `None` after `wait`.
fn exchange(
    ifname: &str,
    local: &str,
    dst: &str,
    req: Vec<u8>,
    wait: Duration,
) -> Option<(Vec<u8>, std::net::SocketAddr)> {
    let s = std::net::UdpSocket::bind(local).unwrap();
    s.set_broadcast(true).unwrap();
    // Like firmware, send out of the interface without needing an address or
    // a route.
    use std::os::fd::AsRawFd;
    // SAFETY: the name buffer outlives the call and its length is passed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_ptr() as *const libc::c_void,
            ifname.len() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_BINDTODEVICE {ifname}");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.send_to(&req, dst).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while start.elapsed() < wait {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            if n >= 240 && buf[0] == 2 && buf[4..8] == req[4..8] {
                return Some((buf[..n].to_vec(), from));
            }
        }
    }
    None
}

#[test]
fn pxe_ipxe_and_proxy_answers_over_real_sockets() {
    let lab = Lab::new("dh6", 1);
    let client = &lab.clients[0].0;
    let ifname = lab.clients[0].1.clone();
    const PXE: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";
    let mac = [0x52, 0x54, 0, 0, 0, 0x61];
    // Normal mode: a BIOS PXE ROM gets undionly.kpxe, a chainloaded iPXE its
    // script (no boot loop).
    let server = lab.start_server(
        "dhcpd",
        &[
            "--pool",
            "10.9.0.100-10.9.0.110",
            "--boot-file-bios",
            "undionly.kpxe",
            "--ipxe-script",
            "boot.ipxe",
        ],
    );
    let i = ifname.clone();
    let (rom, ipxe) = in_netns(client, move || {
        let rom = bootrequest(mac, [0; 4], &[(53, &[1]), (93, &[0, 0]), (60, PXE)]);
        let ipxe = bootrequest(
            mac,
            [0; 4],
            &[(53, &[1]), (93, &[0, 0]), (60, PXE), (77, b"iPXE")],
        );
        (
            exchange(
                &i,
                "0.0.0.0:68",
                "255.255.255.255:67",
                rom,
                Duration::from_secs(5),
            ),
            exchange(
                &i,
                "0.0.0.0:68",
                "255.255.255.255:67",
                ipxe,
                Duration::from_secs(5),
            ),
        )
    });
    let (rom, _) = rom.expect("no OFFER for the PXE ROM");
    assert_eq!(
        reply_option(&rom, 67).as_deref(),
        Some(&b"undionly.kpxe"[..])
    );
    assert_eq!(reply_option(&rom, 60).as_deref(), Some(&b"PXEClient"[..]));
    assert_eq!(&rom[20..24], &[10, 9, 0, 1], "siaddr is the TFTP server");
    assert_ne!(&rom[16..20], &[0, 0, 0, 0], "an address is offered");
    let (ipxe, _) = ipxe.expect("no OFFER for iPXE");
    assert_eq!(reply_option(&ipxe, 67).as_deref(), Some(&b"boot.ipxe"[..]));
    server.stop();

    // proxyDHCP: no address, only PXE clients, and port 4011.
    let server = lab.start_server("dhcpd-proxy", &["--proxy"]);
    // The client has an address from "the other" DHCP server.
    client.exec_ok(&[
        "ip",
        "addr",
        "add",
        "10.9.0.77/24",
        "dev",
        &lab.clients[0].1,
    ]);
    let i = ifname.clone();
    let (plain, offer, ack) = in_netns(client, move || {
        let plain = bootrequest([2, 0, 0, 0, 0, 1], [0; 4], &[(53, &[1])]);
        let disc = bootrequest(mac, [0; 4], &[(53, &[1]), (93, &[0, 0]), (60, PXE)]);
        let req = bootrequest(mac, [10, 9, 0, 77], &[(53, &[3]), (93, &[0, 0]), (60, PXE)]);
        (
            exchange(
                &i,
                "0.0.0.0:68",
                "255.255.255.255:67",
                plain,
                Duration::from_secs(2),
            ),
            exchange(
                &i,
                "0.0.0.0:68",
                "255.255.255.255:67",
                disc,
                Duration::from_secs(5),
            ),
            exchange(
                &i,
                "10.9.0.77:4011",
                "10.9.0.1:4011",
                req,
                Duration::from_secs(5),
            ),
        )
    });
    assert!(plain.is_none(), "proxyDHCP answered a non-PXE client");
    let (offer, _) = offer.expect("no proxy OFFER");
    assert_eq!(&offer[16..20], &[0, 0, 0, 0], "proxy offers no address");
    assert_eq!(reply_option(&offer, 53).as_deref(), Some(&[2u8][..]));
    assert_eq!(reply_option(&offer, 60).as_deref(), Some(&b"PXEClient"[..]));
    assert_eq!(
        reply_option(&offer, 67).as_deref(),
        Some(&b"undionly.kpxe"[..])
    );
    let (ack, from) = ack.expect("no ACK on port 4011");
    assert_eq!(reply_option(&ack, 53).as_deref(), Some(&[5u8][..]));
    assert_eq!(from.port(), 4011);
    assert_eq!(
        reply_option(&ack, 67).as_deref(),
        Some(&b"undionly.kpxe"[..])
    );
    server.stop();
}

/// SIGHUP re-reads the site file: a host added to the inventory gets its
/// reserved address without a restart, a lease given before the reload is
/// kept, and a file that cannot be applied (broken, or a change that needs a
/// restart) is refused with its reason while the server keeps serving.
#[test]
fn sighup_reloads_hosts_and_keeps_leases() {
    let lab = Lab::new("dh7", 2);
    let reserved_mac = "52:54:00:12:34:57";
    lab.set_mac(1, reserved_mac);
    let site = lab.path("site.toml");
    let dhcpd = format!(
        "[dhcpd]\ninterfaces = [\"br0\"]\nlease_db = \"{db}\"\n\
         [[dhcpd.subnet]]\nnetwork = \"10.9.0.0/24\"\npool_start = \"10.9.0.100\"\npool_end = \"10.9.0.110\"\n",
        db = lab.path("leases.db").display()
    );
    std::fs::write(&site, &dhcpd).unwrap();
    let mut cmd = lab.server.command(bin("anyboot-dhcpd"));
    cmd.env("NO_COLOR", "1")
        .arg("-v")
        .arg("--config")
        .arg(&site);
    let server = Daemon::spawn("dhcpd", &mut cmd, &lab.path("dhcpd.log"));
    wait_for(
        || server.log().contains("listening"),
        Duration::from_secs(10),
        || format!("server did not start:\n{}", server.log()),
    );
    let once = |i: usize| {
        let skip = lab.events(i).lines().count();
        let out = run(&mut lab.udhcpc(i, &["-q", "-n", "-t", "5", "-T", "1"]));
        assert!(out.status.success(), "udhcpc {i}: {out:?}");
        lab.wait_event(i, &["bound"], skip, "udhcpc lease")
    };
    let hup = || {
        // SAFETY: kill(2) on the PID of the daemon this test started.
        assert_eq!(
            unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGHUP) },
            0
        );
    };
    let a0 = once(0);
    assert!(pool_addr(&a0), "{a0}");

    // The host enters the inventory with a reservation.
    std::fs::write(
        &site,
        format!(
            "{dhcpd}\n[[host]]\nname = \"pc07\"\nmac = \"{reserved_mac}\"\naddress = \"10.9.0.50\"\n"
        ),
    )
    .unwrap();
    hup();
    wait_for(
        || server.log().contains("configuration reloaded"),
        Duration::from_secs(10),
        || format!("no reload:\n{}", server.log()),
    );
    assert_eq!(once(1), "10.9.0.50");
    assert_eq!(once(0), a0, "client 0's lease survived the reload");

    // A change that needs a restart is refused and named; so is a broken file.
    std::fs::write(&site, dhcpd.replace("leases.db", "other.db")).unwrap();
    hup();
    wait_for(
        || server.log().contains("`lease_db` changed"),
        Duration::from_secs(10),
        || format!("no refusal:\n{}", server.log()),
    );
    std::fs::write(&site, "[dhcpd\n").unwrap();
    hup();
    wait_for(
        || server.log().matches("reload failed").count() >= 2,
        Duration::from_secs(10),
        || format!("broken file not reported:\n{}", server.log()),
    );
    // Still serving with the reloaded hosts.
    assert_eq!(once(1), "10.9.0.50");
    server.stop();
}
