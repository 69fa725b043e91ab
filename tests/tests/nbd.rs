//! End-to-end tests of `anyboot-nbd-server` against real NBD clients
//! (qemu-img, qemu-io, nbdinfo, nbdcopy, fio's nbd engine) over TCP and Unix
//! sockets, with TLS certificates made by certtool, plus a small hand-written
//! client that checks protocol corner cases byte for byte against the NBD
//! protocol document. Shared-mode exports only; overlay modes are in
//! `nbd_overlays.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyboot_tests::{bin, free_tcp_port, require, run, run_ok, wait_for_tcp, Daemon};

/// Every client tool runs under `timeout` so a hang fails instead of blocking.
fn tool(name: &str, package: &str) -> Command {
    let t = require(name, package);
    let mut c = Command::new("timeout");
    c.arg("120").arg(t);
    c
}

struct Srv {
    daemon: Daemon,
    port: u16,
    sock: PathBuf,
}

impl Srv {
    fn start(dir: &Path, tag: &str, args: &[&str]) -> Srv {
        let port = free_tcp_port();
        let sock = dir.join(format!("{tag}.sock"));
        let mut cmd = Command::new(bin("anyboot-nbd-server"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--unix")
            .arg(&sock)
            .arg("-v")
            .args(args);
        let daemon = Daemon::spawn(
            "anyboot-nbd-server",
            &mut cmd,
            &dir.join(format!("{tag}.log")),
        );
        wait_for_tcp(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10),
        );
        Srv { daemon, port, sock }
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.sock.display())
    }
}

/// A sparse image with data only at 1 MiB (64 KiB of 0x5a) and, if the
/// image is large enough, at 5 MiB.
fn sparse_image(path: &Path, size: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    if size >= 2 << 20 {
        f.write_all_at(&vec![0x5a; 65536], 1 << 20).unwrap();
    }
    if size > 6 << 20 {
        f.write_all_at(b"anyboot", 5 << 20).unwrap();
    }
    assert_eq!(f.metadata().unwrap().len(), size);
}

fn export_arg(name: &str, path: &Path, ro: bool) -> String {
    format!("{name}={}{}", path.display(), if ro { ",ro" } else { "" })
}

#[test]
fn qemu_img_and_qemu_io_over_tcp_and_unix() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    sparse_image(&img, 16 << 20);
    let srv = Srv::start(
        dir.path(),
        "q",
        &["--export", &export_arg("disk", &img, false)],
    );

    let info = run_ok(tool("qemu-img", "qemu-utils").args(["info", &srv.uri("disk")]));
    assert!(info.contains("16 MiB (16777216 bytes)"), "{info}");

    let io = |uri: &str, cmds: &[&str]| {
        let mut c = tool("qemu-io", "qemu-utils");
        c.args(["-f", "raw"]);
        for x in cmds {
            c.args(["-c", x]);
        }
        c.arg(uri);
        run_ok(&mut c)
    };
    let out = io(
        &srv.uri("disk"),
        &["write -P 0xab 0 1M", "read -P 0xab 0 1M"],
    );
    assert!(out.contains("read 1048576/1048576"), "{out}");
    let out = io(
        &srv.unix_uri("disk"),
        &[
            "write -P 0xcd 8M 1M",
            "read -P 0xcd 8M 1M",
            "read -P 0xab 0 1M",
        ],
    );
    assert!(
        out.contains("read 1048576/1048576 bytes at offset 8388608"),
        "{out}"
    );
    // A pattern check that must fail proves qemu-io compares at all.
    let bad = run(tool("qemu-io", "qemu-utils").args([
        "-f",
        "raw",
        "-c",
        "read -P 0x11 0 4k",
        &srv.uri("disk"),
    ]));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(text.contains("Pattern verification failed"), "{text}");

    // The writes reached the backing file.
    let data = std::fs::read(&img).unwrap();
    assert!(data[..1 << 20].iter().all(|&b| b == 0xab));
    assert!(data[8 << 20..9 << 20].iter().all(|&b| b == 0xcd));

    let copy = dir.path().join("copy.raw");
    run_ok(
        tool("qemu-img", "qemu-utils")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(srv.uri("disk"))
            .arg(&copy),
    );
    assert_eq!(std::fs::read(&copy).unwrap(), data);
    run_ok(
        tool("qemu-img", "qemu-utils")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(srv.unix_uri("disk"))
            .arg(&img),
    );
    srv.daemon.stop();
}

#[test]
fn nbdinfo_lists_exports_from_the_site_config_and_maps_holes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("base.raw");
    sparse_image(&img, 8 << 20);
    let port = free_tcp_port();
    let cfg = dir.path().join("site.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[[image]]
name = "base"
path = "base.raw"
description = "the base image"

[nbd]
listen = ["127.0.0.1:{port}"]
unix = "nbd.sock"

[[nbd.export]]
name = "base-ro"
image = "base"
read_only = true

[[nbd.export]]
name = "rw"
path = "base.raw"
description = "writable copy"
"#
        ),
    )
    .unwrap();
    let check = run(Command::new(bin("anyboot-nbd-server"))
        .arg("--check-config")
        .arg("--config")
        .arg(&cfg));
    assert!(check.status.success(), "{check:?}");
    let mut daemon = Daemon::spawn(
        "anyboot-nbd-server",
        Command::new(bin("anyboot-nbd-server"))
            .arg("--config")
            .arg(&cfg),
        &dir.path().join("srv.log"),
    );
    wait_for_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    );

    let list =
        run_ok(tool("nbdinfo", "libnbd-bin").args(["--list", &format!("nbd://127.0.0.1:{port}")]));
    assert!(list.contains("export=\"base-ro\""), "{list}");
    assert!(list.contains("description: the base image"), "{list}");
    assert!(list.contains("export=\"rw\""), "{list}");
    assert!(list.contains("description: writable copy"), "{list}");

    let sock = dir.path().join("nbd.sock");
    let info = run_ok(
        tool("nbdinfo", "libnbd-bin").arg(format!("nbd+unix:///base-ro?socket={}", sock.display())),
    );
    assert!(info.contains("is_read_only: true"), "{info}");
    assert!(info.contains("can_multi_conn: true"), "{info}");
    assert!(info.contains("block_size_maximum: 33554432"), "{info}");

    // base:allocation: hole, 64 KiB data at 1 MiB, hole, data at 5 MiB, hole.
    let map = run_ok(
        tool("nbdinfo", "libnbd-bin").args(["--map", &format!("nbd://127.0.0.1:{port}/base-ro")]),
    );
    let rows: Vec<(u64, u64, String)> = map
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[3..].join(" "),
            )
        })
        .collect();
    assert_eq!(rows[0], (0, 1 << 20, "hole,zero".to_string()), "{map}");
    assert_eq!(rows[1].0, 1 << 20, "{map}");
    assert_eq!(rows[1].2, "data", "{map}");
    assert!(
        rows.iter().any(|r| r.2 == "hole,zero" && r.0 > 1 << 20),
        "{map}"
    );
    assert_eq!(rows.iter().map(|r| r.1).sum::<u64>(), 8 << 20, "{map}");
    let _ = daemon.stop_with(libc::SIGINT, Duration::from_secs(5));
}

#[test]
fn nbdcopy_both_ways_matches() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(12 << 20)
        .unwrap();
    // A source with data, zeroes and holes, from a seeded generator.
    let src = dir.path().join("src.raw");
    let mut data = vec![0u8; 12 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, chunk) in data.chunks_mut(4096).enumerate() {
        if i % 5 == 3 {
            continue;
        }
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    std::fs::write(&src, &data).unwrap();
    let srv = Srv::start(
        dir.path(),
        "c",
        &["--export", &export_arg("disk", &img, false)],
    );
    run_ok(tool("nbdcopy", "libnbd-bin").arg(&src).arg(srv.uri("disk")));
    assert!(
        std::fs::read(&img).unwrap() == data,
        "export differs after nbdcopy in"
    );
    let back = dir.path().join("back.raw");
    run_ok(
        tool("nbdcopy", "libnbd-bin")
            .arg(srv.unix_uri("disk"))
            .arg(&back),
    );
    assert!(std::fs::read(&back).unwrap() == data, "copy out differs");
    srv.daemon.stop();
}

#[test]
fn fio_nbd_engine_verifies_crc32c() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let srv = Srv::start(
        dir.path(),
        "f",
        &["--export", &export_arg("disk", &img, false)],
    );
    let out = run_ok(tool("fio", "fio").current_dir(dir.path()).args([
        "--name=nbdjob",
        "--ioengine=nbd",
        &format!("--uri={}", srv.uri("disk")),
        "--rw=randwrite",
        "--bs=4k",
        "--size=8M",
        "--iodepth=32",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        // No verify state file in the working directory.
        "--verify_state_save=0",
    ]));
    assert!(out.contains("err= 0"), "{out}");
    // The verify pass read everything back (and found no bad block).
    assert!(out.contains("READ: bw="), "{out}");
    assert!(
        !out.contains("verify:"),
        "fio reported verify errors: {out}"
    );
    srv.daemon.stop();
}

/// A CA and a server certificate for 127.0.0.1/localhost, made by certtool.
fn make_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let certtool = require("certtool", "gnutls-bin");
    std::fs::write(
        dir.join("ca.info"),
        "cn = anyboot test CA\nca\ncert_signing_key\nexpiration_days = 2\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("server.info"),
        "organization = anyboot\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n",
    )
    .unwrap();
    let gen = |args: &[&str], out: &str| {
        let o = run(Command::new(&certtool).current_dir(dir).args(args));
        assert!(o.status.success(), "certtool {args:?}: {o:?}");
        std::fs::write(dir.join(out), &o.stdout).unwrap();
    };
    // RSA: GnuTLS's SEC1 encoding of ECDSA keys sometimes carries a leading
    // zero byte that ring refuses.
    gen(
        &["--generate-privkey", "--key-type=rsa", "--bits=2048"],
        "ca-key.pem",
    );
    gen(
        &[
            "--generate-self-signed",
            "--load-privkey",
            "ca-key.pem",
            "--template",
            "ca.info",
        ],
        "ca-cert.pem",
    );
    gen(
        &["--generate-privkey", "--key-type=rsa", "--bits=2048"],
        "server-key.pem",
    );
    gen(
        &[
            "--generate-certificate",
            "--load-ca-certificate",
            "ca-cert.pem",
            "--load-ca-privkey",
            "ca-key.pem",
            "--load-privkey",
            "server-key.pem",
            "--template",
            "server.info",
        ],
        "server-cert.pem",
    );
    // libnbd and qemu read `ca-cert.pem` from a directory of their own.
    let client = dir.join("client");
    std::fs::create_dir(&client).unwrap();
    std::fs::copy(dir.join("ca-cert.pem"), client.join("ca-cert.pem")).unwrap();
    (
        dir.join("server-cert.pem"),
        dir.join("server-key.pem"),
        client,
    )
}

#[test]
fn tls_required_and_optional_exports() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, client) = make_pki(dir.path());
    let img = dir.path().join("disk.raw");
    sparse_image(&img, 4 << 20);
    let port = free_tcp_port();
    let cfg = dir.path().join("site.toml");
    std::fs::write(
        &cfg,
        format!(
            "[nbd]\nlisten = [\"127.0.0.1:{port}\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             [[nbd.export]]\nname = \"secret\"\npath = \"disk.raw\"\ntls = \"required\"\n\
             [[nbd.export]]\nname = \"either\"\npath = \"disk.raw\"\nread_only = true\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::spawn(
        "anyboot-nbd-server",
        Command::new(bin("anyboot-nbd-server"))
            .arg("--config")
            .arg(&cfg),
        &dir.path().join("srv.log"),
    );
    wait_for_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    );
    let tls_uri = |e: &str| {
        format!(
            "nbds://localhost:{port}/{e}?tls-certificates={}",
            client.display()
        )
    };

    // Without TLS: the required export is refused and hidden from the list.
    let plain = run(tool("nbdinfo", "libnbd-bin").arg(format!("nbd://localhost:{port}/secret")));
    assert!(
        !plain.status.success(),
        "plaintext access to a TLS-only export worked"
    );
    let list =
        run_ok(tool("nbdinfo", "libnbd-bin").args(["--list", &format!("nbd://localhost:{port}")]));
    assert!(
        list.contains("export=\"either\"") && !list.contains("export=\"secret\""),
        "{list}"
    );
    let ok = run_ok(tool("nbdinfo", "libnbd-bin").arg(format!("nbd://localhost:{port}/either")));
    assert!(ok.contains("without TLS"), "{ok}");

    // With TLS: nbdinfo and qemu (x509 credentials) both get through.
    let info = run_ok(tool("nbdinfo", "libnbd-bin").arg(tls_uri("secret")));
    assert!(info.contains("with TLS"), "{info}");
    assert!(info.contains("export-size: 4194304"), "{info}");
    let out = run_ok(
        tool("qemu-io", "qemu-utils")
            .arg("--object")
            .arg(format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=client",
                client.display()
            ))
            .args([
                "--image-opts",
                "-c",
                "write -P 0x42 64k 64k",
                "-c",
                "read -P 0x42 64k 64k",
            ])
            .arg(format!(
                "driver=nbd,host=localhost,port={port},export=secret,tls-creds=tls0"
            )),
    );
    assert!(out.contains("read 65536/65536"), "{out}");
    // A client that trusts another CA fails the TLS handshake.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, _, stranger) = make_pki(&other);
    let bad = run(tool("nbdinfo", "libnbd-bin").arg(format!(
        "nbds://localhost:{port}/secret?tls-certificates={}",
        stranger.display()
    )));
    assert!(!bad.status.success(), "TLS without the CA worked");
    // Pipelined, multi-connection copies over TLS, both ways.
    let src = dir.path().join("src.raw");
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    run_ok(
        tool("nbdcopy", "libnbd-bin")
            .arg(&src)
            .arg(tls_uri("secret")),
    );
    let back = dir.path().join("back.raw");
    run_ok(
        tool("nbdcopy", "libnbd-bin")
            .arg(tls_uri("secret"))
            .arg(&back),
    );
    assert!(
        std::fs::read(&back).unwrap() == data,
        "TLS round trip differs"
    );
    daemon.stop();
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    sparse_image(&img, 4 << 20);
    let before = std::fs::read(&img).unwrap();
    let srv = Srv::start(
        dir.path(),
        "ro",
        &["--export", &export_arg("ro", &img, true)],
    );
    // qemu sees NBD_FLAG_READ_ONLY and will not open the export for writing
    // (the raw-client test checks the server's own EPERM replies).
    let out = run(tool("qemu-io", "qemu-utils").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x77 0 4k",
        &srv.uri("ro"),
    ]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Permission denied"), "{text}");
    let out = run_ok(tool("qemu-io", "qemu-utils").args([
        "-r",
        "-f",
        "raw",
        "-c",
        "read -P 0x5a 1M 64k",
        &srv.uri("ro"),
    ]));
    assert!(out.contains("read 65536/65536"), "{out}");
    let info = run_ok(tool("nbdinfo", "libnbd-bin").arg(srv.uri("ro")));
    assert!(
        info.contains("is_read_only: true") && info.contains("can_trim: false"),
        "{info}"
    );
    assert_eq!(std::fs::read(&img).unwrap(), before);
    srv.daemon.stop();
}

#[test]
fn data_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let args = ["--export".to_string(), export_arg("disk", &img, false)];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let srv = Srv::start(dir.path(), "p1", &args);
    run_ok(tool("qemu-io", "qemu-utils").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x3c 1M 512k",
        &srv.uri("disk"),
    ]));
    srv.daemon.stop();
    let srv = Srv::start(dir.path(), "p2", &args);
    let out = run_ok(tool("qemu-io", "qemu-utils").args([
        "-f",
        "raw",
        "-c",
        "read -P 0x3c 1M 512k",
        &srv.uri("disk"),
    ]));
    assert!(out.contains("read 524288/524288"), "{out}");
    srv.daemon.stop();
}

/// A deliberately small NBD client written from the protocol document, to
/// send what well-behaved clients never send.
struct Raw {
    s: TcpStream,
}

const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";

impl Raw {
    fn connect(port: u16, client_flags: u32) -> Raw {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], IHAVEOPT);
        assert_eq!(
            u16::from_be_bytes([g[16], g[17]]) & 3,
            3,
            "FIXED_NEWSTYLE|NO_ZEROES"
        );
        s.write_all(&client_flags.to_be_bytes()).unwrap();
        Raw { s }
    }

    fn send_option(&mut self, code: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_vec();
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    /// Replies to one option, up to the final ACK or error.
    fn replies(&mut self) -> Vec<(u32, Vec<u8>)> {
        let mut v = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.s.read_exact(&mut h).unwrap();
            assert_eq!(&h[0..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
            let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            let mut d = vec![0u8; len];
            self.s.read_exact(&mut d).unwrap();
            v.push((ty, d));
            if ty == 1 || ty & 0x8000_0000 != 0 {
                return v;
            }
        }
    }

    fn go(&mut self, name: &str) -> Vec<(u32, Vec<u8>)> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        self.send_option(7, &d);
        self.replies()
    }

    fn request(&mut self, flags: u16, ty: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&ty.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
    }

    /// One reply: a structured chunk as (flags, type, cookie, payload), or a
    /// simple reply (allowed for anything but reads) folded into the same
    /// shape: DONE, type NONE or ERROR, the error value as payload.
    fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        let mut m = [0u8; 4];
        self.s.read_exact(&mut m).unwrap();
        if m == 0x6744_6698u32.to_be_bytes() {
            let mut h = [0u8; 12];
            self.s.read_exact(&mut h).unwrap();
            let err = u32::from_be_bytes(h[0..4].try_into().unwrap());
            let cookie = u64::from_be_bytes(h[4..12].try_into().unwrap());
            let ty = if err == 0 { 0 } else { 0x8001 };
            let mut p = err.to_be_bytes().to_vec();
            p.extend_from_slice(&[0, 0]);
            return (1, ty, cookie, p);
        }
        assert_eq!(m, 0x668e_33efu32.to_be_bytes(), "reply magic");
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize;
        let mut p = vec![0u8; len];
        self.s.read_exact(&mut p).unwrap();
        (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[2], h[3]]),
            u64::from_be_bytes(h[4..12].try_into().unwrap()),
            p,
        )
    }

    fn request_ext(
        &mut self,
        flags: u16,
        ty: u16,
        cookie: u64,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) {
        let mut b = 0x21e4_1c71u32.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&ty.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
    }

    /// One extended reply chunk: (flags, type, cookie, offset, payload).
    fn chunk_ext(&mut self) -> (u16, u16, u64, u64, Vec<u8>) {
        let mut h = [0u8; 32];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(
            &h[0..4],
            &0x6e8a_278cu32.to_be_bytes(),
            "extended reply magic"
        );
        let len = u64::from_be_bytes(h[24..32].try_into().unwrap()) as usize;
        let mut p = vec![0u8; len];
        self.s.read_exact(&mut p).unwrap();
        (
            u16::from_be_bytes([h[4], h[5]]),
            u16::from_be_bytes([h[6], h[7]]),
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
            u64::from_be_bytes(h[16..24].try_into().unwrap()),
            p,
        )
    }

    fn error_of(chunk: &(u16, u16, u64, Vec<u8>)) -> u32 {
        assert_eq!(
            chunk.1, 0x8001,
            "expected an ERROR chunk, got type {}",
            chunk.1
        );
        assert_eq!(chunk.0 & 1, 1, "error chunk ends the reply");
        u32::from_be_bytes(chunk.3[0..4].try_into().unwrap())
    }

    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn protocol_errors_and_pipelining_with_a_raw_client() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    sparse_image(&img, 1 << 20);
    let ro = dir.path().join("ro.raw");
    sparse_image(&ro, 1 << 20);
    let srv = Srv::start(
        dir.path(),
        "raw",
        &[
            "--export",
            &export_arg("disk", &img, false),
            "--export",
            &export_arg("ro", &ro, true),
        ],
    );

    // Old-style (non-fixed) newstyle clients are refused cleanly.
    let mut c = Raw::connect(srv.port, 0);
    assert!(c.closed(), "server kept a non-fixed-newstyle client");

    let mut c = Raw::connect(srv.port, 3);
    // Unknown option: NBD_REP_ERR_UNSUP, and the session goes on.
    c.send_option(99, b"whatever");
    assert_eq!(c.replies()[0].0, 0x8000_0001);
    // INFO on an unknown export: NBD_REP_ERR_UNKNOWN.
    let mut d = 4u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"nope");
    d.extend_from_slice(&0u16.to_be_bytes());
    c.send_option(6, &d);
    assert_eq!(c.replies()[0].0, 0x8000_0006);
    c.send_option(8, &[]);
    assert_eq!(c.replies(), vec![(1, vec![])]);
    let r = c.go("disk");
    assert_eq!(r.last().unwrap().0, 1);
    let export = r
        .iter()
        .find(|(t, d)| *t == 3 && d[0..2] == [0, 0])
        .expect("NBD_INFO_EXPORT");
    assert_eq!(
        u64::from_be_bytes(export.1[2..10].try_into().unwrap()),
        1 << 20
    );

    // Pipelined reads, all sent before any reply is read.
    for i in 0..32u64 {
        c.request(0, 0, 1000 + i, i * 4096, 4096, &[]);
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 32 {
        let ch = c.chunk();
        assert!(ch.1 == 1 || ch.1 == 0, "data or none chunk");
        if ch.0 & 1 == 1 {
            assert!(seen.insert(ch.2), "cookie {} answered twice", ch.2);
        }
    }
    assert_eq!(seen, (1000..1032).collect());

    // Out of range read: EINVAL; unknown command: EINVAL; bad flag: EINVAL.
    c.request(0, 0, 1, (1 << 20) - 512, 1024, &[]);
    assert_eq!(Raw::error_of(&c.chunk()), 22);
    c.request(0, 99, 2, 0, 0, &[]);
    assert_eq!(Raw::error_of(&c.chunk()), 22);
    c.request(1 << 3, 0, 3, 0, 512, &[]);
    assert_eq!(Raw::error_of(&c.chunk()), 22);
    // Block status without a selected context: EINVAL.
    c.request(0, 7, 4, 0, 4096, &[]);
    assert_eq!(Raw::error_of(&c.chunk()), 22);
    // A write past the end: its payload is consumed, then ENOSPC.
    c.request(0, 1, 5, 1 << 20, 512, &[0xee; 512]);
    assert_eq!(Raw::error_of(&c.chunk()), 28);
    // The connection still works after all that.
    c.request(0, 1, 6, 0, 512, &[0xee; 512]);
    let ch = c.chunk();
    assert_eq!((ch.1, ch.2), (0, 6));
    // A header with a bad magic loses framing: the server hangs up.
    c.s.write_all(&[0xde; 28]).unwrap();
    assert!(
        c.closed(),
        "server kept a connection with a bad request magic"
    );

    // Read-only export: EPERM for writes, trims and zeroing.
    let mut c = Raw::connect(srv.port, 3);
    c.send_option(8, &[]);
    let _ = c.replies();
    assert_eq!(c.go("ro").last().unwrap().0, 1);
    c.request(0, 1, 7, 0, 512, &[1; 512]);
    assert_eq!(Raw::error_of(&c.chunk()), 1);
    c.request(0, 4, 8, 0, 512, &[]);
    assert_eq!(Raw::error_of(&c.chunk()), 1);
    c.request(0, 6, 9, 0, 512, &[]);
    assert_eq!(Raw::error_of(&c.chunk()), 1);
    // An oversized write (64 MiB) is refused, then the connection closes.
    c.request(0, 1, 10, 0, 64 << 20, &[]);
    assert_eq!(Raw::error_of(&c.chunk()), 22);
    assert!(c.closed());
    // NBD_CMD_DISC is answered by closing.
    let mut c = Raw::connect(srv.port, 3);
    assert_eq!(c.go("disk").last().unwrap().0, 1);
    c.request(0, 2, 11, 0, 0, &[]);
    assert!(c.closed());

    assert_eq!(&std::fs::read(&img).unwrap()[..512], &[0xee; 512]);
    assert!(std::fs::read(&ro).unwrap()[..512].iter().all(|&b| b == 0));
    // Shutdown with a client in transmission: clean exit, client closed.
    let mut idle = Raw::connect(srv.port, 3);
    assert_eq!(idle.go("disk").last().unwrap().0, 1);
    srv.daemon.stop();
    assert!(idle.closed(), "client still connected after shutdown");
}

#[test]
fn extended_headers_with_a_raw_client() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    sparse_image(&img, 8 << 20);
    let srv = Srv::start(
        dir.path(),
        "ext",
        &["--export", &export_arg("disk", &img, false)],
    );
    let mut c = Raw::connect(srv.port, 3);
    c.send_option(11, &[]);
    assert_eq!(c.replies(), vec![(1, vec![])]);
    // Structured replies after extended headers: NBD_REP_ERR_EXT_HEADER_REQD.
    c.send_option(8, &[]);
    assert_eq!(c.replies()[0].0, 0x8000_000a);
    let mut q = 4u32.to_be_bytes().to_vec();
    q.extend_from_slice(b"disk");
    q.extend_from_slice(&1u32.to_be_bytes());
    q.extend_from_slice(&15u32.to_be_bytes());
    q.extend_from_slice(b"base:allocation");
    c.send_option(10, &q);
    let r = c.replies();
    assert_eq!(r[0].0, 4, "NBD_REP_META_CONTEXT");
    let ctx = u32::from_be_bytes(r[0].1[0..4].try_into().unwrap());
    assert_eq!(&r[0].1[4..], b"base:allocation");
    assert_eq!(c.go("disk").last().unwrap().0, 1);

    // A write carries its payload with NBD_CMD_FLAG_PAYLOAD_LEN.
    c.request_ext(1 << 5 | 1, 1, 1, 4 << 20, 4096, &[0x66; 4096]);
    let (flags, ty, cookie, offset, _) = c.chunk_ext();
    assert_eq!((flags & 1, ty, cookie, offset), (1, 0, 1, 4 << 20));
    // A read comes back as OFFSET_DATA; the header echoes the offset.
    c.request_ext(0, 0, 2, 4 << 20, 4096, &[]);
    let (_, ty, _, offset, p) = c.chunk_ext();
    assert_eq!((ty, offset), (1, 4 << 20));
    assert_eq!(u64::from_be_bytes(p[0..8].try_into().unwrap()), 4 << 20);
    assert!(p[8..].iter().all(|&b| b == 0x66));
    // Block status over the whole export in one 64-bit request.
    c.request_ext(0, 7, 3, 0, 8 << 20, &[]);
    let (flags, ty, _, _, p) = c.chunk_ext();
    assert_eq!((flags & 1, ty), (1, 6), "BLOCK_STATUS_EXT, final");
    assert_eq!(u32::from_be_bytes(p[0..4].try_into().unwrap()), ctx);
    let n = u32::from_be_bytes(p[4..8].try_into().unwrap()) as usize;
    assert_eq!(p.len(), 8 + 16 * n);
    let descs: Vec<(u64, u64)> = p[8..]
        .chunks(16)
        .map(|d| {
            (
                u64::from_be_bytes(d[0..8].try_into().unwrap()),
                u64::from_be_bytes(d[8..16].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(descs[0], (1 << 20, 3), "hole,zero first: {descs:?}");
    assert_eq!(descs.iter().map(|d| d.0).sum::<u64>(), 8 << 20);
    assert!(descs.iter().filter(|d| d.1 == 0).count() >= 2, "{descs:?}");
    // A write without PAYLOAD_LEN carries no payload and is refused.
    c.request_ext(0, 1, 4, 0, 4096, &[]);
    let (_, ty, cookie, _, p) = c.chunk_ext();
    assert_eq!((ty, cookie), (0x8001, 4));
    assert_eq!(u32::from_be_bytes(p[0..4].try_into().unwrap()), 22);
    // A 64-bit trim length past the end: EINVAL, connection kept.
    c.request_ext(0, 4, 5, 0, 1 << 40, &[]);
    let (_, ty, _, _, p) = c.chunk_ext();
    assert_eq!(ty, 0x8001);
    assert_eq!(u32::from_be_bytes(p[0..4].try_into().unwrap()), 22);
    c.request_ext(0, 3, 6, 0, 0, &[]);
    let (flags, ty, cookie, _, _) = c.chunk_ext();
    assert_eq!(
        (flags & 1, ty, cookie),
        (1, 0, 6),
        "flush answered with NONE"
    );
    srv.daemon.stop();
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[nbd]\n[[nbd.export]]\nname = \"a\"\npath = \"/x\"\ntls = \"required\"\n",
    )
    .unwrap();
    let out = run(Command::new(bin("anyboot-nbd-server"))
        .arg("--check-config")
        .arg("--config")
        .arg(&cfg));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nbd.export[0].tls") && err.contains("bad.toml"),
        "{err}"
    );
}

/// SIGHUP (`systemctl reload`, a closed terminal) must not end a daemon that
/// cannot reload: it is logged, the export keeps serving, and SIGTERM still
/// stops it cleanly. The iSCSI and AoE binaries share this handler
/// (`anyboot_cli::shutdown_signal`); dhcpd and tftpd reload instead.
#[test]
fn sighup_is_logged_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    sparse_image(&img, 4 << 20);
    let srv = Srv::start(
        dir.path(),
        "hup",
        &["--export", &export_arg("d", &img, true)],
    );
    // SAFETY: kill(2) on the PID of the daemon this test started.
    let r = unsafe { libc::kill(srv.daemon.pid() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(r, 0);
    let start = std::time::Instant::now();
    while !srv.daemon.log().contains("SIGHUP ignored") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no SIGHUP line in the log:\n{}",
            srv.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let size = run_ok(tool("nbdinfo", "libnbd-bin").args(["--size", &srv.uri("d")]));
    assert_eq!(size.trim(), (4u64 << 20).to_string());
    srv.daemon.stop();
}
