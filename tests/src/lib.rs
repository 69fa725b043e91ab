//! Harness for the end-to-end tests in `tests/tests/`: find the real binaries,
//! demand the real client tools (a missing one fails the test loudly, never
//! skips it), start daemons and stop them by PID, and create network namespaces
//! that are removed again even when a test fails.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Path of one of our binaries (`anyboot-tftpd`, ...), built by
/// `cargo build --workspace --bins` (which `cargo xtask test` runs first).
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let p = target.join("debug").join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (cargo xtask test does)",
        p.display()
    );
    p
}

/// Path of an external tool; panics naming its Debian package when missing.
pub fn require(tool: &str, package: &str) -> PathBuf {
    for dir in [
        "/usr/bin",
        "/usr/sbin",
        "/bin",
        "/sbin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("MISSING TOOL: `{tool}` (Debian package {package}) is needed by this test; `cargo xtask test` installs it")
}

/// Whether we run as root (network namespaces, raw sockets, port 67).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Panics loudly unless running as root.
pub fn require_root(what: &str) {
    assert!(
        is_root(),
        "NEEDS ROOT: {what} needs root (network namespaces / raw sockets); run the suite as root"
    );
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests that
/// start one server right after).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) {
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "nothing listens on {addr} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion, returning its output; panics if it could not
/// be started.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    out
}

/// Runs a command and panics with its output unless it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process we started; SIGTERM then SIGKILL by PID on drop. Its stderr goes to
/// a log file printed when the test fails.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    name: String,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr sent to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Self {
        let f = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Self {
            child: Some(child),
            log: log.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the exit status (up to `timeout`).
    pub fn stop_with(
        &mut self,
        signal: i32,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: the pid is our unreaped child, so it names no other process.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then asserts a clean exit within a few seconds.
    pub fn stop(mut self) {
        let st = self.stop_with(libc::SIGTERM, Duration::from_secs(5));
        match st {
            Some(s) if s.success() => {}
            other => panic!(
                "{} did not exit cleanly on SIGTERM ({other:?}); log:\n{}",
                self.name,
                self.log()
            ),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop_with(libc::SIGTERM, Duration::from_secs(3));
            if std::thread::panicking() {
                eprintln!("---- log of {} ----\n{}", self.name, self.log());
            }
        }
    }
}

/// A network namespace that exists as long as this value does.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `anyboot-<tag>-<pid>` with its loopback up.
    pub fn new(tag: &str) -> Self {
        require_root("a network namespace");
        require("ip", "iproute2");
        let name = format!("ab-{tag}-{}", std::process::id());
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `argv` inside the namespace and panics unless it succeeds.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        run_ok(self.command(argv[0]).args(&argv[1..]))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connects two namespaces with a veth pair; returns the two interface names.
/// The pair disappears with either namespace.
pub fn veth_pair(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> (String, String) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Interface names are at most 15 bytes.
    let tag = format!("{}{n}", std::process::id() % 1_000_000);
    let (ia, ib) = (format!("va{tag}"), format!("vb{tag}"));
    run_ok(Command::new("ip").args(["link", "add", &ia, "type", "veth", "peer", "name", &ib]));
    run_ok(Command::new("ip").args(["link", "set", &ia, "netns", &a.name]));
    run_ok(Command::new("ip").args(["link", "set", &ib, "netns", &b.name]));
    for (ns, i, addr) in [(a, &ia, a_addr), (b, &ib, b_addr)] {
        if !addr.is_empty() {
            ns.exec_ok(&["ip", "addr", "add", addr, "dev", i]);
        }
        ns.exec_ok(&["ip", "link", "set", i, "up"]);
    }
    (ia, ib)
}

/// Runs `f` on a thread that has entered network namespace `ns`. Sockets that
/// `f` opens stay in that namespace and keep working from any thread, so a
/// test can drive raw-socket clients inside a namespace it created.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let path = std::ffi::CString::new(format!("/run/netns/{}", ns.name)).unwrap();
            // SAFETY: opening a path we own the string of; the fd is checked.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            assert!(
                fd >= 0,
                "opening /run/netns/{}: {}",
                ns.name,
                std::io::Error::last_os_error()
            );
            // SAFETY: setns on a namespace fd only changes this thread's namespace.
            let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
            let err = std::io::Error::last_os_error();
            // SAFETY: closing the fd we opened above.
            unsafe { libc::close(fd) };
            assert_eq!(rc, 0, "entering netns {}: {err}", ns.name);
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

pub mod lab;
