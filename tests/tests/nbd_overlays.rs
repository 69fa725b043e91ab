//! End-to-end tests of `anyboot-nbd-server` exports in the images library's
//! overlay modes: a throwaway overlay per connection, and a persistent
//! overlay per client kept across server restarts.
//!
//! These need the copy-on-write overlays of the `images` branch: until it is
//! merged, `Attachment::open` answers `Unsupported` for these modes and these
//! tests fail (the server refuses the export with NBD_REP_ERR_UNKNOWN). Run
//! them with `cargo test -p anyboot-tests --test nbd_overlays` after merging.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyboot_tests::{bin, free_tcp_port, require, run_ok, wait_for_tcp, Daemon};

fn tool(name: &str, package: &str) -> Command {
    let t = require(name, package);
    let mut c = Command::new("timeout");
    c.arg("120").arg(t);
    c
}

fn start(dir: &Path, tag: &str, mode: &str, base: &Path) -> (Daemon, u16, PathBuf) {
    let port = free_tcp_port();
    let sock = dir.join(format!("{tag}.sock"));
    let daemon = Daemon::spawn(
        "anyboot-nbd-server",
        Command::new(bin("anyboot-nbd-server"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--unix")
            .arg(&sock)
            .args(["--disk", mode, "--overlay-dir"])
            .arg(dir.join("overlays"))
            .arg("--export")
            .arg(format!("disk={}", base.display()))
            .arg("-v"),
        &dir.join(format!("{tag}.log")),
    );
    wait_for_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    );
    (daemon, port, sock)
}

/// An 8 MiB base image: 0x5a in its first MiB, zeroes after.
fn base_image(path: &Path) -> Vec<u8> {
    let mut data = vec![0u8; 8 << 20];
    data[..1 << 20].fill(0x5a);
    std::fs::write(path, &data).unwrap();
    data
}

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = tool("qemu-io", "qemu-utils");
    c.args(["-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(uri);
    run_ok(&mut c)
}

/// Opens an NBD connection and enters transmission on `disk` with simple
/// replies (compact headers), written from the protocol document.
fn raw_client(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut d = 4u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"disk");
    d.extend_from_slice(&0u16.to_be_bytes());
    let mut o = b"IHAVEOPT".to_vec();
    o.extend_from_slice(&7u32.to_be_bytes());
    o.extend_from_slice(&(d.len() as u32).to_be_bytes());
    o.extend_from_slice(&d);
    s.write_all(&o).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).unwrap();
        assert_eq!(
            ty & 0x8000_0000,
            0,
            "GO failed: {}",
            String::from_utf8_lossy(&p)
        );
        if ty == 1 {
            return s;
        }
    }
}

fn raw_request(
    s: &mut TcpStream,
    ty: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&ty.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(payload);
    s.write_all(&b).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(&h[0..4], &0x6744_6698u32.to_be_bytes());
    assert_eq!(&h[4..8], &[0, 0, 0, 0], "request failed");
    let mut data = vec![0u8; if ty == 0 { len as usize } else { 0 }];
    s.read_exact(&mut data).unwrap();
    data
}

#[test]
fn throwaway_overlays_are_private_to_each_connection() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let original = base_image(&base);
    let (daemon, port, sock) = start(dir.path(), "t", "throwaway", &base);
    let uri = format!("nbd://127.0.0.1:{port}/disk");

    // Each connection has its own overlay: no multi-conn.
    let info = run_ok(tool("nbdinfo", "libnbd-bin").arg(&uri));
    assert!(info.contains("can_multi_conn: false"), "{info}");

    // Client A keeps its connection open with a write in its overlay ...
    let mut a = raw_client(port);
    raw_request(&mut a, 1, 1, 0, 4096, &[0xaa; 4096]);
    assert_eq!(raw_request(&mut a, 0, 2, 0, 4096, &[]), vec![0xaa; 4096]);
    // ... which client B, at the same time, does not see; B's own write
    // is visible to B only.
    let out = qemu_io(
        &uri,
        &[
            "read -P 0x5a 0 4k",
            "write -P 0xbb 2M 64k",
            "read -P 0xbb 2M 64k",
        ],
    );
    assert!(out.contains("read 65536/65536"), "{out}");
    assert_eq!(raw_request(&mut a, 0, 3, 2 << 20, 4096, &[]), vec![0; 4096]);
    assert_eq!(raw_request(&mut a, 0, 4, 0, 4096, &[]), vec![0xaa; 4096]);
    drop(a);
    // A new connection (over the Unix socket this time) starts clean.
    let out = qemu_io(
        &format!("nbd+unix:///disk?socket={}", sock.display()),
        &["read -P 0x5a 0 1M", "read -P 0 2M 64k"],
    );
    assert!(out.contains("read 1048576/1048576"), "{out}");
    daemon.stop();
    assert!(
        std::fs::read(&base).unwrap() == original,
        "base image was modified"
    );
}

#[test]
fn persistent_overlay_survives_restart_per_client() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let original = base_image(&base);
    let (daemon, port, _) = start(dir.path(), "p1", "persistent", &base);
    let out = qemu_io(
        &format!("nbd://127.0.0.1:{port}/disk"),
        &["write -P 0x77 4M 1M", "read -P 0x77 4M 1M"],
    );
    assert!(out.contains("read 1048576/1048576"), "{out}");
    daemon.stop();

    // After a restart the same client (keyed by its address) finds its data.
    let (daemon, port, sock) = start(dir.path(), "p2", "persistent", &base);
    let out = qemu_io(
        &format!("nbd://127.0.0.1:{port}/disk"),
        &["read -P 0x77 4M 1M", "read -P 0x5a 0 1M"],
    );
    assert!(
        out.contains("read 1048576/1048576 bytes at offset 4194304"),
        "{out}"
    );
    // Another client (the local Unix socket has its own key) sees the base.
    let out = qemu_io(
        &format!("nbd+unix:///disk?socket={}", sock.display()),
        &["read -P 0 4M 1M"],
    );
    assert!(out.contains("read 1048576/1048576"), "{out}");
    daemon.stop();
    assert!(
        std::fs::read(&base).unwrap() == original,
        "base image was modified"
    );
}
