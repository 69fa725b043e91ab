//! `cargo xtask up` with two daemons starts both, passes SIGHUP on to them,
//! and SIGTERM to xtask stops both within a couple of seconds; a daemon that
//! dies takes xtask down non-zero.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyboot_tests::{bin, free_tcp_port, free_udp_port, wait_for_tcp, Daemon};

fn process_alive(pid: i32) -> bool {
    // A zombie still answers kill(0); read its state to tell.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.split_whitespace().nth(2).is_none_or(|st| st != "Z"),
        Err(_) => false,
    }
}

fn child_pids(log: &str) -> Vec<i32> {
    log.lines()
        .filter_map(|l| l.split("(pid ").nth(1))
        .filter_map(|r| r.trim_end_matches(')').parse().ok())
        .collect()
}

#[test]
fn up_starts_two_daemons_passes_sighup_on_and_sigterm_stops_both() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tftp");
    std::fs::create_dir(&root).unwrap();
    let image = dir.path().join("disk.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let nbd_port = free_tcp_port();
    let tftp_port = free_udp_port();
    let site = dir.path().join("site.toml");
    std::fs::write(
        &site,
        format!(
            "[tftpd]\nlisten = [\"127.0.0.1:{tftp_port}\"]\nroot = \"tftp\"\n\n\
             [nbd]\nlisten = [\"127.0.0.1:{nbd_port}\"]\n\n\
             [[nbd.export]]\nname = \"disk\"\npath = \"disk.raw\"\n"
        ),
    )
    .unwrap();

    let mut up = Daemon::spawn(
        "xtask up",
        Command::new(bin("xtask"))
            .args(["up", "tftpd", "nbd", "--no-build", "--config"])
            .arg(&site),
        &dir.path().join("up.log"),
    );
    wait_for_tcp(
        SocketAddr::from(([127, 0, 0, 1], nbd_port)),
        Duration::from_secs(20),
    );
    let start = Instant::now();
    while child_pids(&up.log()).len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "xtask did not start two daemons:\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = child_pids(&up.log());
    assert!(
        pids.iter().all(|&p| process_alive(p)),
        "a daemon is not running:\n{}",
        up.log()
    );

    // SIGHUP reaches both daemons: tftpd reloads, nbd-server logs and keeps
    // running, and xtask itself stays up.
    // SAFETY: kill(2) on the PID of the xtask this test started.
    assert_eq!(
        unsafe { libc::kill(up.pid() as libc::pid_t, libc::SIGHUP) },
        0
    );
    let start = Instant::now();
    while !(up.log().contains("boot tree reloaded") && up.log().contains("SIGHUP ignored")) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "SIGHUP did not reach both daemons:\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        pids.iter().all(|&p| process_alive(p)),
        "a daemon did not survive SIGHUP:\n{}",
        up.log()
    );

    let t = Instant::now();
    let status = up
        .stop_with(libc::SIGTERM, Duration::from_secs(10))
        .expect("xtask up did not exit");
    let took = t.elapsed();
    assert!(
        status.success(),
        "xtask up exited with {status}:\n{}",
        up.log()
    );
    assert!(
        took < Duration::from_secs(3),
        "stopping took {took:?}:\n{}",
        up.log()
    );
    for p in pids {
        assert!(
            !process_alive(p),
            "daemon pid {p} survived xtask up's shutdown"
        );
    }
    let log = up.log();
    assert!(
        log.contains("[tftpd]") || log.contains("tftpd exited"),
        "no tftpd output:\n{log}"
    );
    assert!(log.contains("all daemons stopped"), "{log}");
}

#[test]
fn up_fails_when_a_daemon_dies() {
    let dir = tempfile::tempdir().unwrap();
    // The nbd export's file does not exist: the server fails at start.
    let site = dir.path().join("site.toml");
    let port = free_tcp_port();
    std::fs::write(
        &site,
        format!("[nbd]\nlisten = [\"127.0.0.1:{port}\"]\n\n[[nbd.export]]\nname = \"x\"\npath = \"missing.raw\"\n"),
    )
    .unwrap();
    let out = anyboot_tests::run(
        Command::new(bin("xtask"))
            .args(["up", "--no-build", "--config"])
            .arg(&site),
    );
    assert!(
        !out.status.success(),
        "xtask up should fail when its daemon dies"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exited"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
