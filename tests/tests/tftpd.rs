//! End-to-end tests of `anyboot-tftpd` on loopback with real clients nobody here
//! wrote (tftp-hpa `tftp`, `atftp`, `curl`, `busybox tftp`) plus a raw UDP
//! socket for the protocol corners (RFC 1350 transfer IDs, retry limits).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyboot_tests::{bin, free_tcp_port, free_udp_port, require, run, run_ok, Daemon};

struct Fixture {
    dir: tempfile::TempDir,
    daemon: Option<Daemon>,
    port: u16,
}

impl Fixture {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }
    fn stop(mut self) {
        self.daemon.take().unwrap().stop();
    }
}

/// Deterministic pseudo-random bytes (so a mismatch is never all zeros).
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

const FILES: &[(&str, usize)] = &[
    ("empty.bin", 0),
    ("b512.bin", 512),
    ("b513.bin", 513),
    // 76 800 blocks at blksize 8: block numbers wrap past 65535.
    ("rollover.bin", 600 * 1024),
];

/// busybox refuses blksizes below 24 and needs its whole request (name and
/// options) to fit in one block, so it uses 64: 66 000 blocks wrap too.
const ROLLOVER_BB: (&str, usize) = ("rollbb.bin", 66_000 * 64 + 17);

/// Starts the daemon on a free port with `extra` flags; the root holds FILES.
fn start(extra: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for (i, (name, len)) in FILES.iter().enumerate() {
        std::fs::write(root.join(name), pattern(*len, i as u32 + 1)).unwrap();
    }
    std::fs::write(root.join(ROLLOVER_BB.0), pattern(ROLLOVER_BB.1, 99)).unwrap();
    std::fs::write(root.join("sub/hello.txt"), b"hello\nworld\n").unwrap();
    std::fs::write(dir.path().join("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
    let port = free_udp_port();
    let mut cmd = Command::new(bin("anyboot-tftpd"));
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--root")
        .arg(&root)
        .args(extra);
    let daemon = Daemon::spawn("anyboot-tftpd", &mut cmd, &dir.path().join("tftpd.log"));
    wait_for_log(&daemon, "anyboot-tftpd ready");
    Fixture {
        dir,
        daemon: Some(daemon),
        port,
    }
}

/// The daemon's log without terminal colour codes.
fn plain_log(d: &Daemon) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in d.log().chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

fn wait_for_log(d: &Daemon, needle: &str) {
    let start = Instant::now();
    while !plain_log(d).contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "`{needle}` never appeared in the log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_same(got: &Path, want: &Path, who: &str) {
    let g =
        std::fs::read(got).unwrap_or_else(|e| panic!("{who}: no output {}: {e}", got.display()));
    let w = std::fs::read(want).unwrap();
    assert!(
        g == w,
        "{who}: {} differs from {} ({} vs {} bytes)",
        got.display(),
        want.display(),
        g.len(),
        w.len()
    );
}

#[test]
fn real_clients_fetch_every_size_byte_exact() {
    let tftp = require("tftp", "tftp-hpa");
    let atftp = require("atftp", "atftp");
    let curl = require("curl", "curl");
    let busybox = require("busybox", "busybox-static");
    let f = start(&["--mtu", "0"]);
    let port = f.port.to_string();
    for (name, _) in FILES {
        let want = f.root().join(name);
        // tftp-hpa negotiates no options: lock-step 512-byte blocks.
        if *name != "rollover.bin" {
            let out = f.out(&format!("hpa-{name}"));
            run_ok(
                Command::new(&tftp)
                    .args(["127.0.0.1", &port, "-m", "binary", "-c", "get", name])
                    .arg(&out),
            );
            assert_same(&out, &want, "tftp-hpa");
        }
        // atftp with blksize 8 and windowsize 4 (RFC 7440).
        let out = f.out(&format!("atftp-{name}"));
        run_ok(
            Command::new(&atftp)
                .args([
                    "--option",
                    "blksize 8",
                    "--option",
                    "windowsize 4",
                    "--option",
                    "tsize 0",
                ])
                .args(["-g", "-r", name, "-l"])
                .arg(&out)
                .args(["127.0.0.1", &port]),
        );
        assert_same(&out, &want, "atftp blksize 8 windowsize 4");
        // curl with blksize 8 and 1468. curl 7.88 fails every empty TFTP
        // download with "getpeername() failed" (tftpd-hpa too), so the empty
        // file is fetched by the other three clients only.
        for bs in ["8", "1468"] {
            if *name == "empty.bin" {
                break;
            }
            let out = f.out(&format!("curl-{bs}-{name}"));
            run_ok(
                Command::new(&curl)
                    .args(["-sS", "--max-time", "60", "--tftp-blksize", bs])
                    .arg(format!("tftp://127.0.0.1:{port}/{name}"))
                    .arg("-o")
                    .arg(&out),
            );
            assert_same(&out, &want, &format!("curl blksize {bs}"));
        }
    }
    // busybox with blksize 64.
    for name in FILES.iter().map(|f| f.0).chain([ROLLOVER_BB.0]) {
        let want = f.root().join(name);
        let out = f.out(&format!("bb-{name}"));
        run_ok(
            Command::new(&busybox)
                .args(["tftp", "-g", "-r", name, "-l"])
                .arg(&out)
                .args(["-b", "64", "127.0.0.1", &port]),
        );
        assert_same(&out, &want, "busybox tftp -b 64");
    }
    // netascii: LF becomes CR LF on the wire, and back again in the client.
    let out = f.out("hello.txt");
    run_ok(
        Command::new(&tftp)
            .args([
                "127.0.0.1",
                &port,
                "-m",
                "netascii",
                "-c",
                "get",
                "sub/hello.txt",
            ])
            .arg(&out),
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"hello\nworld\n");
    // Windows-style name.
    let out = f.out("hello2.txt");
    run_ok(
        Command::new(&curl)
            .args([
                "-sS",
                &format!("tftp://127.0.0.1:{port}/sub%5Chello.txt"),
                "-o",
            ])
            .arg(&out),
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"hello\nworld\n");
    f.stop();
}

#[test]
fn a_storm_of_clients_shares_one_read_of_the_file() {
    let curl = require("curl", "curl");
    let f = start(&["-v"]);
    let want = f.root().join("rollover.bin");
    let children: Vec<_> = (0..30)
        .map(|i| {
            Command::new(&curl)
                .args(["-sS", "--max-time", "60", "--tftp-blksize", "1468"])
                .arg(format!("tftp://127.0.0.1:{}/rollover.bin", f.port))
                .arg("-o")
                .arg(f.out(&format!("storm-{i}")))
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, mut c) in children.into_iter().enumerate() {
        assert!(c.wait().unwrap().success(), "client {i} failed");
        assert_same(&f.out(&format!("storm-{i}")), &want, "storm client");
    }
    let loads = plain_log(f.daemon())
        .lines()
        .filter(|l| l.contains("cache load") && l.contains("rollover.bin"))
        .count();
    assert_eq!(loads, 1, "30 clients, one read of the file");
    f.stop();
}

/// Sends an RRQ from a fresh socket; returns the socket and the first reply.
fn rrq(server: SocketAddr, name: &[u8], opts: &[(&str, &str)]) -> (UdpSocket, SocketAddr, Vec<u8>) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut p = vec![0, 1];
    p.extend_from_slice(name);
    p.extend_from_slice(b"\0octet\0");
    for (k, v) in opts {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    s.send_to(&p, server).unwrap();
    let mut buf = vec![0u8; 70000];
    let (n, from) = s.recv_from(&mut buf).expect("a reply to the RRQ");
    (s, from, buf[..n].to_vec())
}

fn error_code(p: &[u8]) -> Option<u16> {
    (p.len() >= 4 && p[..2] == [0, 5]).then(|| u16::from_be_bytes([p[2], p[3]]))
}

#[test]
fn missing_files_and_escapes_are_refused() {
    let curl = require("curl", "curl");
    let tftp = require("tftp", "tftp-hpa");
    let f = start(&[]);
    let (_, _, r) = rrq(f.addr(), b"no-such-file", &[]);
    assert_eq!(error_code(&r), Some(1), "missing file: {r:?}");
    for bad in [
        &b"../secret"[..],
        b"sub/../../secret",
        b"..\\secret",
        b"/etc/passwd",
        b"escape",
        b"zero",
        b"sub",
    ] {
        let (_, _, r) = rrq(f.addr(), bad, &[]);
        assert_eq!(
            error_code(&r),
            Some(2),
            "{} must be an access violation, got {r:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // The same through real clients: curl exits 68 (not found), tftp-hpa
    // prints the error code.
    let out = run(Command::new(&curl)
        .args(["-sS", &format!("tftp://127.0.0.1:{}/no-such-file", f.port)])
        .args(["-o", "/dev/null"]));
    assert_eq!(out.status.code(), Some(68), "{out:?}");
    let out = run(Command::new(&tftp)
        .args(["127.0.0.1", &f.port.to_string(), "-c", "get", "../secret"])
        .arg(f.out("x")));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Error code 2"), "tftp-hpa said: {text}");
    // Uploads are off by default.
    std::fs::write(f.out("up.txt"), b"data").unwrap();
    let out = run(Command::new(&tftp).current_dir(f.dir.path()).args([
        "127.0.0.1",
        &f.port.to_string(),
        "-c",
        "put",
        "up.txt",
    ]));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Error code 2"), "tftp-hpa put said: {text}");
    assert!(!f.root().join("up.txt").exists());
    f.stop();
}

#[test]
fn wrong_transfer_id_gets_error_5_and_transfer_completes() {
    let f = start(&[]);
    let want = std::fs::read(f.root().join("b513.bin")).unwrap();
    let (s, tid, first) = rrq(f.addr(), b"b513.bin", &[]);
    assert_ne!(tid.port(), f.port, "transfers run on their own port");
    assert_eq!(&first[..4], &[0, 3, 0, 1]);
    // A stranger acknowledges block 1 on the transfer's port.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stranger.send_to(&[0, 4, 0, 1], tid).unwrap();
    let mut buf = [0u8; 600];
    let (n, from) = stranger.recv_from(&mut buf).unwrap();
    assert_eq!(from, tid);
    assert_eq!(error_code(&buf[..n]), Some(5), "{:?}", &buf[..n]);
    // The real client continues undisturbed.
    let mut got = first[4..].to_vec();
    s.send_to(&[0, 4, 0, 1], tid).unwrap();
    let (n, from) = s.recv_from(&mut buf).unwrap();
    assert_eq!(from, tid);
    assert_eq!(&buf[..4], &[0, 3, 0, 2]);
    got.extend_from_slice(&buf[4..n]);
    s.send_to(&[0, 4, 0, 2], tid).unwrap();
    assert_eq!(got, want);
    wait_for_log(f.daemon(), "transfer complete bytes=513");
    f.stop();
}

#[test]
fn silent_client_is_given_up_and_its_session_freed() {
    let curl = require("curl", "curl");
    let f = start(&[
        "--max-sessions",
        "1",
        "--timeout-ms",
        "200",
        "--retries",
        "2",
    ]);
    let (s, tid, first) = rrq(f.addr(), b"b513.bin", &[]);
    assert_eq!(&first[..4], &[0, 3, 0, 1]);
    // Never acknowledge: count the retransmissions until the server gives up.
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 600];
    let mut resent = 0;
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        assert_eq!(from, tid);
        assert_eq!(&buf[..4], &[0, 3, 0, 1], "{:?}", &buf[..n]);
        resent += 1;
        assert!(resent <= 10, "the server never gives up");
    }
    assert_eq!(resent, 2, "one retransmission per retry");
    wait_for_log(f.daemon(), "reason=TimedOut");
    // The only session slot is free again: a real client is served.
    let out = f.out("after.bin");
    run_ok(
        Command::new(&curl)
            .args(["-sS", "--max-time", "20"])
            .arg(format!("tftp://127.0.0.1:{}/b512.bin", f.port))
            .arg("-o")
            .arg(&out),
    );
    assert_same(&out, &f.root().join("b512.bin"), "curl after give-up");
    f.stop();
}

#[test]
fn options_are_answered_only_when_asked_and_capped() {
    let f = start(&["--max-blksize", "1024", "--max-windowsize", "8"]);
    // No options: DATA 1 at once, no OACK.
    let (_, _, r) = rrq(f.addr(), b"b513.bin", &[]);
    assert_eq!(&r[..4], &[0, 3, 0, 1]);
    // blksize capped, windowsize capped, tsize answered, unknown ignored.
    let (s, tid, r) = rrq(
        f.addr(),
        b"b513.bin",
        &[
            ("blksize", "9000"),
            ("windowsize", "64"),
            ("tsize", "0"),
            ("frobnicate", "1"),
        ],
    );
    assert_eq!(
        r,
        b"\x00\x06blksize\x001024\x00windowsize\x008\x00tsize\x00513\x00"
    );
    // Error 8 (the client refuses the OACK) ends the transfer quietly.
    s.send_to(b"\x00\x05\x00\x08no thanks\x00", tid).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 100];
    assert!(
        s.recv_from(&mut buf).is_err(),
        "no packet may follow error 8"
    );
    wait_for_log(f.daemon(), "OptionRefused");
    f.stop();
}

#[test]
fn uploads_only_into_the_upload_dir_without_overwrite() {
    let tftp = require("tftp", "tftp-hpa");
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("uploads");
    std::fs::create_dir(&up).unwrap();
    let f = start(&["--upload-dir", up.to_str().unwrap()]);
    let data = pattern(5000, 77);
    std::fs::write(dir.path().join("log.bin"), &data).unwrap();
    let put = || {
        run(Command::new(&tftp).current_dir(dir.path()).args([
            "127.0.0.1",
            &f.port.to_string(),
            "-m",
            "binary",
            "-c",
            "put",
            "log.bin",
        ]))
    };
    let out = put();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("Error"), "{text}");
    wait_for_log(f.daemon(), "upload stored");
    assert_eq!(std::fs::read(up.join("log.bin")).unwrap(), data);
    let out = put();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Error code 6"),
        "second put must not overwrite: {text}"
    );
    assert!(!f.root().join("log.bin").exists());
    f.stop();
}

#[test]
fn single_port_mode_and_ipv6() {
    let curl = require("curl", "curl");
    let f = start(&["--single-port"]);
    let (s, tid, r) = rrq(f.addr(), b"b513.bin", &[]);
    assert_eq!(
        tid,
        f.addr(),
        "single-port: data comes from the listening port"
    );
    assert_eq!(&r[..4], &[0, 3, 0, 1]);
    s.send_to(&[0, 4, 0, 1], tid).unwrap();
    let mut buf = [0u8; 600];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    assert_eq!(n, 5);
    s.send_to(&[0, 4, 0, 2], tid).unwrap();
    let out = f.out("sp.bin");
    run_ok(
        Command::new(&curl)
            .args(["-sS", "--tftp-blksize", "1024"])
            .arg(format!("tftp://127.0.0.1:{}/rollover.bin", f.port))
            .arg("-o")
            .arg(&out),
    );
    assert_same(&out, &f.root().join("rollover.bin"), "curl, single-port");
    f.stop();

    // IPv6 and IPv4 listeners on the same port side by side.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("v6.bin"), pattern(3000, 6)).unwrap();
    let port = free_udp_port();
    let mut cmd = Command::new(bin("anyboot-tftpd"));
    cmd.args(["--listen", &format!("[::1]:{port}")])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--root"])
        .arg(dir.path());
    let d = Daemon::spawn("anyboot-tftpd", &mut cmd, &dir.path().join("log"));
    wait_for_log(&d, "anyboot-tftpd ready");
    let out = dir.path().join("got");
    run_ok(
        Command::new(&curl)
            .args([
                "-sS",
                "--max-time",
                "20",
                &format!("tftp://[::1]:{port}/v6.bin"),
                "-o",
            ])
            .arg(&out),
    );
    assert_same(&out, &dir.path().join("v6.bin"), "curl over IPv6");
    let out = dir.path().join("got4");
    run_ok(
        Command::new(&curl)
            .args([
                "-sS",
                "--max-time",
                "20",
                &format!("tftp://127.0.0.1:{port}/v6.bin"),
                "-o",
            ])
            .arg(&out),
    );
    assert_same(
        &out,
        &dir.path().join("v6.bin"),
        "curl over IPv4, same port",
    );
    d.stop();
}

#[test]
fn sigterm_with_a_transfer_in_flight_exits_cleanly() {
    let f = start(&["--timeout-ms", "500", "--retries", "20"]);
    let (_s, _tid, first) = rrq(f.addr(), b"b513.bin", &[]);
    assert_eq!(&first[..4], &[0, 3, 0, 1]);
    // The client never acknowledges: the transfer would last ~10 s; shutdown
    // must end it within the grace period and exit 0 (Daemon::stop asserts).
    f.stop();
}

const SITE: &str = r#"
[[image]]
name = "desktop"
path = "desktop.raw"

[[profile]]
name = "classroom"
image = "desktop"
transport = "iscsi"
default_variant = "desktop"
menu_timeout = 3

[[profile.variant]]
name = "desktop"
label = "Desktop"
kernel = "linux/vmlinuz"
initrd = ["linux/initrd.img"]
cmdline = "console=ttyS0"

[[profile.variant]]
name = "disk"
label = "Boot the iSCSI disk"
sanboot = true

[[host]]
name = "pc01"
mac = "52:54:00:00:00:01"
address = "10.0.0.11"
profile = "classroom"

[iscsi]
listen = ["127.0.0.1:3260"]
[[iscsi.target]]
iqn = "iqn.2026-11.org.anyboot:desktop"
[[iscsi.target.lun]]
lun = 0
image = "desktop"
"#;

#[test]
fn boot_tree_over_tftp_and_http_with_range() {
    let curl = require("curl", "curl");
    let tftp = require("tftp", "tftp-hpa");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tftp");
    std::fs::create_dir_all(root.join("linux")).unwrap();
    std::fs::create_dir_all(root.join("pxelinux.cfg")).unwrap();
    let kernel = pattern(300_000, 42);
    std::fs::write(root.join("linux/vmlinuz"), &kernel).unwrap();
    // A real file takes precedence over the generated one.
    std::fs::write(root.join("pxelinux.cfg/default"), b"DEFAULT real\n").unwrap();
    let port = free_udp_port();
    let http = free_tcp_port();
    let site = dir.path().join("site.toml");
    std::fs::write(
        &site,
        format!(
            "{SITE}\n[tftpd]\nroot = \"tftp\"\nlisten = [\"127.0.0.1:{port}\"]\n\
             http_listen = [\"127.0.0.1:{http}\"]\n\
             [[tftpd.class]]\nname = \"shim\"\nfilename = 'shim.*\\.efi$'\nmax_blksize = 512\nmax_windowsize = 1\n\
             [[tftpd.remap]]\npattern = '^/+'\nreplace = ''\n\
             [[tftpd.remap]]\npattern = 'private'\ndeny = true\n"
        ),
    )
    .unwrap();
    let out = run_ok(
        Command::new(bin("anyboot-tftpd"))
            .arg("--check-config")
            .arg("--config")
            .arg(&site),
    );
    assert!(out.contains("virtual file"), "{out}");
    let mut cmd = Command::new(bin("anyboot-tftpd"));
    cmd.arg("--config").arg(&site);
    let d = Daemon::spawn("anyboot-tftpd", &mut cmd, &dir.path().join("log"));
    wait_for_log(&d, "anyboot-tftpd ready");

    // The per-host iPXE script over TFTP (the name dhcpd hands out).
    let script = dir.path().join("script");
    run_ok(
        Command::new(&tftp)
            .args([
                "127.0.0.1",
                &port.to_string(),
                "-c",
                "get",
                "hosts/52-54-00-00-00-01.ipxe",
            ])
            .arg(&script),
    );
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.starts_with("#!ipxe\n"), "{text}");
    assert!(
        text.contains("choose --default desktop --timeout 3000"),
        "{text}"
    );
    assert!(
        text.contains("kernel /linux/vmlinuz console=ttyS0\ninitrd /linux/initrd.img\n"),
        "{text}"
    );
    assert!(
        text.contains("sanboot iscsi:${next-server}::::iqn.2026-11.org.anyboot:desktop"),
        "{text}"
    );
    // pxelinux: by MAC and by hex IP; the real default wins.
    for name in ["pxelinux.cfg/01-52-54-00-00-00-01", "pxelinux.cfg/0A00000B"] {
        let body =
            run_ok(Command::new(&curl).args(["-sS", &format!("tftp://127.0.0.1:{port}/{name}")]));
        assert!(
            body.contains("DEFAULT desktop") && body.contains("KERNEL linux/vmlinuz"),
            "{name}: {body}"
        );
    }
    let body = run_ok(Command::new(&curl).args([
        "-sS",
        &format!("tftp://127.0.0.1:{port}/pxelinux.cfg/default"),
    ]));
    assert_eq!(body, "DEFAULT real\n");

    // Remap rules: a leading slash is stripped, `private` names are refused.
    std::fs::write(root.join("private.txt"), b"no").unwrap();
    let (_, _, r) = rrq(
        SocketAddr::from(([127, 0, 0, 1], port)),
        b"/linux/vmlinuz",
        &[],
    );
    assert_eq!(&r[..4], &[0, 3, 0, 1]);
    assert_eq!(&r[4..], &kernel[..512]);
    let (_, _, r) = rrq(
        SocketAddr::from(([127, 0, 0, 1], port)),
        b"private.txt",
        &[],
    );
    assert_eq!(error_code(&r), Some(2));

    // A client class (by file name) caps the options shim may get.
    std::fs::write(root.join("shimx64.efi"), pattern(2000, 5)).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (_, _, r) = rrq(
        addr,
        b"shimx64.efi",
        &[("blksize", "1468"), ("windowsize", "8")],
    );
    assert_eq!(r, b"\x00\x06blksize\x00512\x00windowsize\x001\x00");
    let (_, _, r) = rrq(
        addr,
        b"linux/vmlinuz",
        &[("blksize", "1468"), ("windowsize", "8")],
    );
    assert_eq!(r, b"\x00\x06blksize\x001468\x00windowsize\x008\x00");

    // HTTP: the same script, the kernel whole and by range, HEAD, errors.
    let base = format!("http://127.0.0.1:{http}");
    let body = run_ok(Command::new(&curl).args([
        "-sS",
        "--fail",
        &format!("{base}/hosts/52-54-00-00-00-01.ipxe"),
    ]));
    assert_eq!(body, text);
    let boot = run_ok(Command::new(&curl).args(["-sS", "--fail", &format!("{base}/boot.ipxe")]));
    assert!(boot.contains("chain hosts/${mac:hexhyp}.ipxe"), "{boot}");
    let whole = dir.path().join("whole");
    run_ok(
        Command::new(&curl)
            .args(["-sS", "--fail", &format!("{base}/linux/vmlinuz"), "-o"])
            .arg(&whole),
    );
    assert_eq!(std::fs::read(&whole).unwrap(), kernel);
    let part = dir.path().join("part");
    let code = run_ok(
        Command::new(&curl)
            .args([
                "-sS",
                "-r",
                "1000-1999",
                "-w",
                "%{http_code}",
                &format!("{base}/linux/vmlinuz"),
                "-o",
            ])
            .arg(&part),
    );
    assert_eq!(code, "206");
    assert_eq!(std::fs::read(&part).unwrap(), &kernel[1000..2000]);
    let head = run_ok(Command::new(&curl).args(["-sS", "-I", &format!("{base}/linux/vmlinuz")]));
    assert!(head.contains("Content-Length: 300000"), "{head}");
    assert!(head.contains("Accept-Ranges: bytes"), "{head}");
    let code = |path: &str, extra: &[&str]| {
        run_ok(
            Command::new(&curl)
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(extra)
                .arg(format!("{base}{path}")),
        )
    };
    assert_eq!(code("/linux/vmlinuz", &["-r", "400000-"]), "416");
    assert_eq!(code("/nope", &[]), "404");
    assert_eq!(code("/linux/../../site.toml", &["--path-as-is"]), "403");
    assert_eq!(code("/%2e%2e/site.toml", &["--path-as-is"]), "403");
    d.stop();
}

/// SIGHUP re-reads the site file: a host added to the inventory gets its
/// script and a changed profile shows at once, without a restart; a site file
/// that no longer loads is refused and the running tree stays.
#[test]
fn sighup_reloads_the_boot_tree_from_the_site_file() {
    let curl = require("curl", "curl");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tftp")).unwrap();
    let port = free_udp_port();
    let site = dir.path().join("site.toml");
    let tftpd = format!("[tftpd]\nroot = \"tftp\"\nlisten = [\"127.0.0.1:{port}\"]\n");
    std::fs::write(&site, format!("{SITE}\n{tftpd}")).unwrap();
    let mut cmd = Command::new(bin("anyboot-tftpd"));
    cmd.arg("--config").arg(&site);
    let d = Daemon::spawn("anyboot-tftpd", &mut cmd, &dir.path().join("log"));
    wait_for_log(&d, "anyboot-tftpd ready");
    let fetch = |name: &str| {
        let out = run(Command::new(&curl).args([
            "-sS",
            "--max-time",
            "10",
            &format!("tftp://127.0.0.1:{port}/hosts/{name}.ipxe"),
        ]));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let hup = || {
        // SAFETY: kill(2) on the PID of the daemon this test started.
        let r = unsafe { libc::kill(d.pid() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(r, 0, "SIGHUP to the daemon");
    };
    let pc01 = "52-54-00-00-00-01";
    let pc02 = "52-54-00-00-00-02";
    let before = fetch(pc01).expect("pc01's script before the reload");
    assert!(before.contains("--timeout 3000"), "{before}");
    assert_eq!(fetch(pc02), None, "pc02 is not in the inventory yet");

    // A new host and a longer menu timeout for the profile.
    let changed = SITE.replace("menu_timeout = 3", "menu_timeout = 7");
    assert_ne!(changed, SITE);
    std::fs::write(
        &site,
        format!(
            "{changed}\n[[host]]\nname = \"pc02\"\nmac = \"52:54:00:00:00:02\"\n\
             address = \"10.0.0.12\"\nprofile = \"classroom\"\n{tftpd}"
        ),
    )
    .unwrap();
    hup();
    wait_for_log(&d, "boot tree reloaded");
    let after = fetch(pc01).expect("pc01's script after the reload");
    assert!(after.contains("--timeout 7000"), "{after}");
    let new = fetch(pc02).expect("pc02's script after the reload");
    assert!(new.starts_with("#!ipxe\n"), "{new}");

    // A broken file: the reload is refused and named, the tree stays.
    std::fs::write(&site, "this is [not toml").unwrap();
    hup();
    wait_for_log(&d, "reload failed");
    assert!(plain_log(&d).contains("site.toml"), "{}", plain_log(&d));
    let kept = fetch(pc02).expect("pc02's script after a failed reload");
    assert_eq!(kept, new);
    d.stop();
}
