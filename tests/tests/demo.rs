//! The README's first command, `cargo xtask up` with no config, serves the demo
//! site on loopback: real clients (nbdinfo, qemu-io, iscsi-inq, curl) use it.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyboot_tests::{bin, require, run_ok, wait_for_tcp, Daemon};

#[test]
fn demo_site_serves_nbd_iscsi_and_tftp() {
    let nbdinfo = require("nbdinfo", "libnbd-bin");
    let qemu_io = require("qemu-io", "qemu-utils");
    let iscsi_inq = require("iscsi-inq", "libiscsi-bin");
    let curl = require("curl", "curl");
    let dir = tempfile::tempdir().unwrap();
    let up = Daemon::spawn(
        "xtask up (demo)",
        Command::new(bin("xtask")).args(["up", "--no-build"]),
        &dir.path().join("up.log"),
    );
    wait_for_tcp(
        SocketAddr::from(([127, 0, 0, 1], 10809)),
        Duration::from_secs(30),
    );
    wait_for_tcp(
        SocketAddr::from(([127, 0, 0, 1], 3260)),
        Duration::from_secs(30),
    );

    let info = run_ok(Command::new(&nbdinfo).arg("nbd://127.0.0.1:10809/demo"));
    assert!(info.contains("export-size: 67108864"), "{info}");

    // The demo export is throwaway: a write is visible on its own connection ...
    let io = run_ok(Command::new(&qemu_io).args([
        "-f",
        "raw",
        "-c",
        "read -P 0xa5 1M 64k",
        "-c",
        "write -P 0x5a 0 4k",
        "-c",
        "read -P 0x5a 0 4k",
        "nbd://127.0.0.1:10809/demo",
    ]));
    assert!(!io.contains("Pattern verification failed"), "{io}");
    // ... and gone for the next one, which sees the demo disk's label again.
    let label = run_ok(Command::new(&qemu_io).args([
        "-f",
        "raw",
        "-c",
        "read -v 0 17",
        "nbd://127.0.0.1:10809/demo",
    ]));
    assert!(label.contains("anyboot.demo.dis"), "{label}");

    let inq = run_ok(
        Command::new(&iscsi_inq).arg("iscsi://127.0.0.1:3260/iqn.2026-11.org.anyboot:demo/0"),
    );
    assert!(inq.to_lowercase().contains("anyboot"), "{inq}");

    let hello = run_ok(Command::new(&curl).args([
        "-sS",
        "--max-time",
        "20",
        "tftp://127.0.0.1:6969/hello.txt",
    ]));
    assert_eq!(hello, "Hello from anyboot's TFTP server.\n");
    up.stop();
}
