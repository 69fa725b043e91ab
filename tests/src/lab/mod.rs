//! The network-boot lab: a network namespace with a bridge, the boot servers
//! on the bridge address, one tap per VM, and QEMU booting from the network
//! with Debian's iPXE ROM (PXE spec 2.1 boot chain: DHCP -> TFTP -> iPXE
//! script -> kernel or `sanboot`). Guests report on their serial port; the
//! tests read the serial log.
//!
//! The servers are a backend of the lab, chosen with `ANYBOOT_LAB_SERVERS`:
//! `anyboot` (default) runs our daemons from one site file, `peers` runs
//! Debian's dnsmasq (DHCP + TFTP), nbd-server, tgtd and vblade with the same
//! inventory, which proves the lab itself independently of our daemons.
//!
//! Everything the lab creates (namespace, bridge, taps, processes, files) is
//! removed when the values are dropped, also while a failing test unwinds.

pub mod assets;
pub mod cpio;
pub mod peers;
pub mod site;
pub mod vm;

use std::fs::File;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{bin, require, require_root, run, run_ok, Daemon, Netns};

pub use site::{Disk, LabSite, Mode, SanTarget, Transport};
pub use vm::{NicModel, Vm};

/// The servers' address on the lab bridge.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The lab network (`SERVER_IP` and the guests).
pub const PREFIX_LEN: u8 = 24;
/// The bridge inside the lab namespace (names are per namespace, so fixed).
pub const BRIDGE: &str = "br0";

/// Which programs serve the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Servers {
    /// Our daemons (`anyboot-dhcpd`, `anyboot-tftpd`, ...) from one site file.
    Anyboot,
    /// Debian's peers: dnsmasq, nbd-server, tgtd, vblade.
    Peers,
}

impl Servers {
    /// From `ANYBOOT_LAB_SERVERS` (`anyboot`, the default, or `peers`); any
    /// other value is a mistake and fails loudly.
    pub fn from_env() -> Self {
        match std::env::var("ANYBOOT_LAB_SERVERS").as_deref() {
            Err(_) | Ok("") | Ok("anyboot") => Servers::Anyboot,
            Ok("peers") => Servers::Peers,
            Ok(other) => panic!("ANYBOOT_LAB_SERVERS={other:?}: expected `anyboot` or `peers`"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Servers::Anyboot => "anyboot",
            Servers::Peers => "peers",
        }
    }
}

/// How QEMU runs the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// A guest timeout for this accelerator: `base` is the bound for a KVM
    /// guest (one that passed the probe); TCG gets twice as long.
    pub fn timeout(self, base: Duration) -> Duration {
        match self {
            Accel::Kvm => base,
            Accel::Tcg => base * 2,
        }
    }
}

/// The accelerator for this run, probed once: KVM is used only when a trivial
/// guest (a boot sector printing to COM1) reports within 3 s under `-accel kvm`;
/// a nested software hypervisor can take many seconds for that, and TCG is
/// then faster. `ANYBOOT_LAB_ACCEL=kvm|tcg` skips the probe. The choice is
/// printed, loudly.
pub fn accel() -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| {
        let (accel, why) = match std::env::var("ANYBOOT_LAB_ACCEL").as_deref() {
            Ok("kvm") => (Accel::Kvm, "forced by ANYBOOT_LAB_ACCEL".to_owned()),
            Ok("tcg") => (Accel::Tcg, "forced by ANYBOOT_LAB_ACCEL".to_owned()),
            Ok(other) if !other.is_empty() => {
                panic!("ANYBOOT_LAB_ACCEL={other:?}: expected `kvm` or `tcg`")
            }
            _ => probe_kvm(),
        };
        // Straight to the stderr handle: the test harness captures `eprintln!`,
        // and which accelerator ran must show in every log, passing or not.
        let _ = writeln!(
            std::io::stderr(),
            "==== LAB: QEMU accelerator {} ({why}) ====",
            accel.name().to_uppercase()
        );
        accel
    })
}

fn probe_kvm() -> (Accel, String) {
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "no /dev/kvm".to_owned());
    }
    let qemu = require("qemu-system-x86_64", "qemu-system-x86");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("probe.img");
    let marker = "ANYBOOT-KVM-PROBE";
    assets::write_san_disk(&disk, marker, 1 << 20);
    let log = dir.path().join("serial.log");
    let child = Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-nographic",
            "-monitor",
            "none",
            "-m",
            "64",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", disk.display()))
        .args(["-net", "none"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting qemu-system-x86_64 for the KVM probe");
    let mut child = vm::KillOnDrop(child);
    let start = Instant::now();
    let limit = Duration::from_secs(3);
    while start.elapsed() < limit {
        if std::fs::read(&log).is_ok_and(|b| contains(&b, marker.as_bytes())) {
            return (
                Accel::Kvm,
                format!("KVM probe booted in {:.1} s", start.elapsed().as_secs_f64()),
            );
        }
        if let Ok(Some(st)) = child.0.try_wait() {
            return (Accel::Tcg, format!("KVM probe: qemu exited with {st}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (
        Accel::Tcg,
        "KVM probe: a boot sector did not report within 3 s (nested software hypervisor?)"
            .to_owned(),
    )
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Where downloaded and built lab assets are cached between runs (kernel,
/// initramfs, the static NBD attach tool): `<target dir>/lab-cache`.
pub fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    let d = target.join("lab-cache");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `f` on a thread that has entered network namespace `ns` (`setns` is
/// per thread), so sockets it opens live in the lab.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: fd is an open namespace file; setns only changes this thread.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    })
}

/// A running lab: namespace, bridge, router advertisements, servers.
#[derive(Debug)]
pub struct Lab {
    pub servers: Servers,
    pub accel: Accel,
    pub site: LabSite,
    /// Scratch directory: TFTP root, disks, logs, server configs.
    pub dir: tempfile::TempDir,
    daemons: Vec<Server>,
    ra: Option<RaSender>,
    taps: std::sync::Mutex<u32>,
    /// Peers only: (image, base, copy) rewritten before each boot (throwaway
    /// emulation for tgtd and vblade).
    peer_fresh: std::sync::Mutex<Vec<(String, PathBuf, PathBuf)>>,
    /// Declared last: dropped after the daemons and the taps' users.
    pub ns: Netns,
    started: Instant,
    /// One lab at a time in this process, whatever the test runner's thread
    /// count: two TCG guests on two cores would only make each other time out.
    /// Dropped last, after the namespace is gone.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_LAB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Lab {
    /// Builds the network, fills the boot tree and starts the servers of
    /// `ANYBOOT_LAB_SERVERS` for `site`.
    pub fn start(tag: &str, site: LabSite) -> Self {
        Self::start_with(tag, site, Servers::from_env())
    }

    pub fn start_with(tag: &str, site: LabSite, servers: Servers) -> Self {
        require_root("the network-boot lab");
        require("qemu-system-x86_64", "qemu-system-x86");
        // A lab that panicked poisons the lock; its cleanup ran in Drop.
        let one_at_a_time = ONE_LAB_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let accel = accel();
        let started = Instant::now();
        let ns = Netns::new(tag);
        for argv in [
            // A fixed MAC: otherwise the bridge takes its lowest port's MAC
            // when a tap joins, and raw-socket servers (AoE) that read the
            // address at start would answer from a stale one.
            vec![
                "ip",
                "link",
                "add",
                BRIDGE,
                "address",
                "02:77:00:00:00:01",
                "type",
                "bridge",
                "stp_state",
                "0",
            ],
            vec![
                "ip",
                "addr",
                "add",
                &format!("{SERVER_IP}/{PREFIX_LEN}"),
                "dev",
                BRIDGE,
            ],
            // A fixed link-local address, usable at once, for the RAs.
            vec![
                "ip",
                "-6",
                "addr",
                "add",
                "fe80::1/64",
                "dev",
                BRIDGE,
                "nodad",
            ],
            vec!["ip", "link", "set", BRIDGE, "up"],
        ] {
            ns.exec_ok(&argv);
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("anyboot-lab-{tag}-"))
            .tempdir()
            .unwrap();
        let ra = RaSender::start(&ns.name);
        let mut lab = Lab {
            servers,
            accel,
            site,
            dir,
            daemons: Vec::new(),
            ra: Some(ra),
            taps: std::sync::Mutex::new(0),
            peer_fresh: std::sync::Mutex::new(Vec::new()),
            ns,
            started,
            _one_at_a_time: one_at_a_time,
        };
        std::fs::create_dir_all(lab.tftp_root()).unwrap();
        lab.site.populate_boot_tree(&lab.tftp_root());
        match servers {
            Servers::Anyboot => lab.start_anyboot(),
            Servers::Peers => {
                let d = peers::start(&lab);
                lab.daemons = d;
            }
        }
        lab.wait_servers();
        eprintln!(
            "LAB {tag}: servers={} accel={} up in {:.1} s",
            servers.name(),
            accel.name(),
            lab.started.elapsed().as_secs_f64()
        );
        lab
    }

    /// The TFTP root (real files; per-host scripts come from the servers).
    pub fn tftp_root(&self) -> PathBuf {
        self.dir.path().join("tftp")
    }

    /// A file under the lab's scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_anyboot(&mut self) {
        let toml = site::site_toml(&self.site, self.dir.path(), &self.tftp_root());
        std::fs::create_dir_all(self.path("state")).unwrap();
        let cfg = self.path("site.toml");
        std::fs::write(&cfg, &toml).unwrap();
        eprintln!("LAB site file {}:\n{toml}", cfg.display());
        let mut daemons = vec!["anyboot-dhcpd", "anyboot-tftpd"];
        if !self.site.nbd.is_empty() {
            daemons.push("anyboot-nbd-server");
        }
        if !self.site.iscsi.is_empty() {
            daemons.push("anyboot-iscsi-target");
        }
        if !self.site.aoe.is_empty() {
            daemons.push("anyboot-aoe-target");
        }
        for name in daemons {
            let exe = bin(name);
            // A bad site file fails here, naming key and problem.
            run_ok(
                Command::new(&exe)
                    .arg("--config")
                    .arg(&cfg)
                    .arg("--check-config"),
            );
            let mut cmd = self.ns.command(&exe);
            cmd.arg("--config").arg(&cfg).env("RUST_LOG", "info");
            let log = self.path(&format!("{name}.log"));
            self.daemons.push(Server::spawn(name, &mut cmd, &log));
        }
    }

    /// Waits for the servers' ports, whichever backend runs them.
    fn wait_servers(&self) {
        self.wait_listening("udp", 67);
        self.wait_listening("udp", 69);
        if !self.site.nbd.is_empty() {
            self.wait_listening("tcp", site::NBD_PORT);
        }
        if !self.site.iscsi.is_empty() {
            self.wait_listening("tcp", site::ISCSI_PORT);
        }
        self.check_daemons_alive();
    }

    /// Panics with the logs if a server has exited.
    pub fn check_daemons_alive(&self) {
        for d in &self.daemons {
            assert!(
                vm::is_alive(d.pid()),
                "{} exited early; log:\n{}",
                d.name,
                d.log()
            );
        }
    }

    /// Waits until something in the lab listens on `proto` (`tcp`/`udp`) `port`.
    pub fn wait_listening(&self, proto: &str, port: u16) {
        let start = Instant::now();
        let flag = if proto == "tcp" { "-Hltn" } else { "-Hlun" };
        loop {
            let out = run(self.ns.command("ss").arg(flag));
            let text = String::from_utf8_lossy(&out.stdout);
            if text.lines().any(|l| {
                l.split_whitespace()
                    .any(|f| f.ends_with(&format!(":{port}")))
            }) {
                return;
            }
            if let Some(d) = self.daemons.iter().find(|d| !vm::is_alive(d.pid())) {
                panic!(
                    "{} exited before {proto} port {port} was listening; daemon logs:\n{}",
                    d.name,
                    self.daemon_logs()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "nothing listens on {proto} port {port} in the lab after 15 s; daemon logs:\n{}",
                self.daemon_logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// All server logs, for failure messages.
    pub fn daemon_logs(&self) -> String {
        let mut s = String::new();
        for d in &self.daemons {
            s.push_str(&format!("---- {} ----\n{}\n", d.name, d.log()));
        }
        s
    }

    /// A new tap device on the bridge for one VM (`tapN`).
    pub fn new_tap(&self) -> String {
        let mut n = self.taps.lock().unwrap();
        let name = format!("tap{n}");
        *n += 1;
        self.ns
            .exec_ok(&["ip", "tuntap", "add", "dev", &name, "mode", "tap"]);
        self.ns
            .exec_ok(&["ip", "link", "set", &name, "master", BRIDGE]);
        self.ns.exec_ok(&["ip", "link", "set", &name, "up"]);
        name
    }

    /// Asks the lab's DHCP server for a lease the way a BIOS PXE ROM does
    /// (vendor class `PXEClient:Arch:00000`, option 93 = 0, no user class
    /// `iPXE`), with busybox udhcpc on a veth with MAC `mac` joined to the
    /// bridge. Returns the variables udhcpc hands its script (`ip`,
    /// `siaddr`, `boot_file` from the header, `bootfile` from option 67, ...).
    pub fn pxe_dhcp_probe(&self, mac: [u8; 6]) -> std::collections::BTreeMap<String, String> {
        let busybox = require("busybox", "busybox-static");
        let mac_s = site::mac_string(mac, ":");
        self.ns.exec_ok(&[
            "ip", "link", "add", "probe0", "address", &mac_s, "type", "veth", "peer", "name",
            "probe0b",
        ]);
        self.ns
            .exec_ok(&["ip", "link", "set", "probe0b", "master", BRIDGE, "up"]);
        self.ns.exec_ok(&["ip", "link", "set", "probe0", "up"]);
        let env = self.path("probe.env");
        let script = self.path("probe.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh
[ \"$1\" = bound ] && env > {}\nexit 0\n",
                env.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out = run(self
            .ns
            .command(&busybox)
            .args([
                "udhcpc", "-i", "probe0", "-f", "-q", "-n", "-t", "5", "-T", "1",
            ])
            .args(["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"])
            .args(["-O", "66", "-O", "67", "-s"])
            .arg(&script));
        let _ = run(self.ns.command("ip").args(["link", "del", "probe0"]));
        let text = std::fs::read_to_string(&env).unwrap_or_else(|_| {
            panic!(
                "udhcpc got no lease as a PXE client:\n{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.daemon_logs()
            )
        });
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Fetches `name` from the lab's TFTP server with busybox tftp.
    pub fn tftp_get(&self, name: &str) -> Vec<u8> {
        let busybox = require("busybox", "busybox-static");
        let out = self.path("tftp-get.out");
        let _ = std::fs::remove_file(&out);
        run_ok(
            self.ns
                .command(busybox)
                .args(["tftp", "-g", "-b", "1432", "-r", name, "-l"])
                .arg(&out)
                .arg(SERVER_IP.to_string()),
        );
        std::fs::read(&out).unwrap()
    }

    /// Boots the inventory host `host` from the network in a new VM.
    pub fn boot(&self, host: &str) -> Vm<'_> {
        let h = self
            .site
            .host(host)
            .unwrap_or_else(|| panic!("no host {host} in the lab site"));
        let image = self.site.profile(&h.profile).and_then(|p| p.image.clone());
        for (img, base, copy) in self.peer_fresh.lock().unwrap().iter() {
            if Some(img) == image.as_ref() {
                std::fs::copy(base, copy).unwrap();
            }
        }
        Vm::start(self, host, h.mac, NicModel::E1000)
    }

    /// Boots `host` with UEFI firmware (OVMF) and its own PXE client.
    pub fn boot_uefi(&self, host: &str) -> Vm<'_> {
        let h = self
            .site
            .host(host)
            .unwrap_or_else(|| panic!("no host {host} in the lab site"));
        Vm::start(self, host, h.mac, NicModel::UefiVirtio)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(ra) = self.ra.take() {
            ra.stop();
        }
        // Servers first (by PID, SIGTERM), then the namespace with its bridge
        // and taps (field order).
        let panicking = std::thread::panicking();
        for mut d in self.daemons.drain(..) {
            if panicking {
                eprintln!("---- log of {} ----\n{}", d.name, d.log());
            }
            d.stop();
        }
        // Whatever still runs inside the lab namespace was started by the
        // lab (forked server children): stop it by PID.
        let out = run(Command::new("ip").args(["netns", "pids", &self.ns.name]));
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            kill_pid(pid);
        }
        let n = *self.taps.lock().unwrap();
        for i in 0..n {
            let _ = run(self
                .ns
                .command("ip")
                .args(["link", "del", &format!("tap{i}")]));
        }
        if panicking {
            eprintln!(
                "LAB scratch directory kept for inspection: {}",
                self.dir.path().display()
            );
            self.dir.disable_cleanup(true);
        }
    }
}

/// One server process of the lab (ours or a peer), stopped by PID.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    kind: ServerKind,
}

#[derive(Debug)]
enum ServerKind {
    /// Stays in the foreground as our child.
    Child(Daemon),
    /// Daemonized itself; its PID comes from its pid file.
    Forked { pid: u32, log: PathBuf },
}

impl Server {
    /// Starts `cmd` (usually `ip netns exec <lab> <program> ...`, which execs
    /// the program under the same PID) with its output in `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Self {
        Server {
            name: name.to_owned(),
            kind: ServerKind::Child(Daemon::spawn(name, cmd, log)),
        }
    }

    /// Runs `cmd`, a server that forks into the background and writes its PID
    /// to `pidfile` (nbd-server only serves one client without forking).
    pub fn spawn_forking(name: &str, cmd: &mut Command, log: &Path, pidfile: &Path) -> Self {
        let f = File::create(log).unwrap();
        let st = cmd
            .stdin(std::process::Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .status()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        assert!(
            st.success(),
            "{name} failed to start ({st}): {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        let start = Instant::now();
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                break pid;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{name} wrote no pid file"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Server {
            name: name.to_owned(),
            kind: ServerKind::Forked {
                pid,
                log: log.to_owned(),
            },
        }
    }

    pub fn pid(&self) -> u32 {
        match &self.kind {
            ServerKind::Child(d) => d.pid(),
            ServerKind::Forked { pid, .. } => *pid,
        }
    }

    pub fn log(&self) -> String {
        match &self.kind {
            ServerKind::Child(d) => d.log(),
            ServerKind::Forked { log, .. } => std::fs::read_to_string(log).unwrap_or_default(),
        }
    }

    /// SIGTERM by PID, then SIGKILL after a grace period.
    fn stop(&mut self) {
        match &mut self.kind {
            ServerKind::Child(d) => {
                d.stop_with(libc::SIGTERM, Duration::from_secs(3));
            }
            ServerKind::Forked { pid, .. } => kill_pid(*pid),
        }
    }
}

/// SIGTERM, up to 3 s for the exit, then SIGKILL: for processes we started
/// that are not our children.
fn kill_pid(pid: u32) {
    // SAFETY: kill has no memory preconditions; pid names a process we started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    while vm::is_alive(pid) && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if vm::is_alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// A thread in the lab namespace that multicasts an ICMPv6 Router
/// Advertisement (RFC 4861 section 4.2: no prefixes, router lifetime 0, M and
/// O flags clear) twice a second, so iPXE finishes IPv6 configuration at once
/// instead of waiting ~13 s for a router that never comes.
#[derive(Debug)]
struct RaSender {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl RaSender {
    fn start(ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = in_netns(ns, move || {
            // SAFETY: plain socket calls on a descriptor we own.
            unsafe {
                let fd = libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6);
                assert!(
                    fd >= 0,
                    "ICMPv6 raw socket: {}",
                    std::io::Error::last_os_error()
                );
                let name = std::ffi::CString::new(BRIDGE).unwrap();
                let idx = libc::if_nametoindex(name.as_ptr()) as libc::c_int;
                let hops: libc::c_int = 255;
                for (opt, val) in [
                    (libc::IPV6_MULTICAST_IF, idx),
                    (libc::IPV6_MULTICAST_HOPS, hops),
                ] {
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_IPV6,
                        opt,
                        &val as *const _ as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
                // type 134, code 0, checksum (the kernel fills it in), cur hop
                // limit 64, flags 0, router lifetime 0, reachable 0, retrans 0.
                let ra: [u8; 16] = [134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                let mut dst: libc::sockaddr_in6 = std::mem::zeroed();
                dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                dst.sin6_addr.s6_addr = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                dst.sin6_scope_id = idx as u32;
                while !s2.load(Ordering::Relaxed) {
                    // Fails (ENETDOWN) until a tap brings the bridge up: retry.
                    libc::sendto(
                        fd,
                        ra.as_ptr() as *const libc::c_void,
                        ra.len(),
                        0,
                        &dst as *const _ as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
                libc::close(fd);
            }
        });
        RaSender { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Prints a scenario's wall time in a greppable line (`LAB TIMING ...`), for
/// the report; never asserted on.
pub fn report_timing(scenario: &str, lab: &Lab, started: Instant) {
    eprintln!(
        "LAB TIMING scenario={scenario} servers={} accel={} seconds={:.1}",
        lab.servers.name(),
        lab.accel.name(),
        started.elapsed().as_secs_f64()
    );
}
