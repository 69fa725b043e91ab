//! End-to-end tests of per-initiator disks behind the iSCSI target: throwaway
//! and persistent copy-on-write overlays (keyed by initiator IQN) over a shared
//! base image, driven by `qemu-io` with distinct initiator names.
//!
//! These need the overlay support of `anyboot-images` (built on its own branch);
//! until that is merged, `Attachment::open` returns `Unsupported`, the target
//! refuses the login, and these tests fail. The lead runs them after the merge.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyboot_tests::{bin, free_tcp_port, require, run, run_ok, wait_for_tcp, Daemon};

const IQN: &str = "iqn.2026-11.org.anyboot:overlay";

fn start(dir: &Path, mode: &str, port: u16) -> Daemon {
    let base = dir.join("base.raw");
    if !base.exists() {
        let f = std::fs::File::create(&base).unwrap();
        f.set_len(16 << 20).unwrap();
    }
    let cfg = dir.join("site.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[site]
state_dir = "{state}"
[[image]]
name = "base"
path = "{base}"
[iscsi]
listen = ["127.0.0.1:{port}"]
[[iscsi.target]]
iqn = "{IQN}"
[[iscsi.target.lun]]
lun = 0
image = "base"
disk = "{mode}"
"#,
            state = dir.join("state").display(),
            base = base.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin("anyboot-iscsi-target"));
    cmd.arg("--config").arg(&cfg);
    let d = Daemon::spawn(
        "anyboot-iscsi-target",
        &mut cmd,
        &dir.join(format!("target-{mode}.log")),
    );
    wait_for_tcp(
        format!("127.0.0.1:{port}").parse::<SocketAddr>().unwrap(),
        Duration::from_secs(10),
    );
    d
}

/// Runs qemu-io commands as initiator `who`; returns stdout.
fn io(port: u16, who: &str, cmds: &[&str]) -> String {
    let qemu_io = require("qemu-io", "qemu-utils");
    let mut c = Command::new(qemu_io);
    c.arg("--image-opts").arg(format!(
        "driver=iscsi,transport=tcp,portal=127.0.0.1:{port},target={IQN},lun=0,initiator-name={who}"
    ));
    for x in cmds {
        c.args(["-c", x]);
    }
    run_ok(&mut c)
}

fn verified(out: &str) -> bool {
    !out.contains("Pattern verification failed") && out.contains("read ")
}

#[test]
fn throwaway_overlays_are_private_and_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let d = start(dir.path(), "throwaway", port);
    let a = "iqn.2026-11.org.example:pc-a";
    let b = "iqn.2026-11.org.example:pc-b";
    // pc-a writes and reads back its own data within one session.
    let out = io(port, a, &["write -P 0xaa 0 64k", "read -P 0xaa 0 64k"]);
    assert!(verified(&out), "{out}");
    // pc-b sees the base image, not pc-a's writes.
    assert!(verified(&io(port, b, &["read -P 0 0 64k"])));
    // A new session of pc-a starts from a fresh overlay.
    assert!(verified(&io(port, a, &["read -P 0 0 64k"])));
    d.stop();
    let base = std::fs::read(dir.path().join("base.raw")).unwrap();
    assert!(base.iter().all(|&x| x == 0), "the base image was written");
}

#[test]
fn persistent_overlays_survive_reconnects_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let d = start(dir.path(), "persistent", port);
    let a = "iqn.2026-11.org.example:pc-a";
    let b = "iqn.2026-11.org.example:pc-b";
    io(port, a, &["write -P 0x5c 1M 128k"]);
    assert!(verified(&io(port, a, &["read -P 0x5c 1M 128k"])));
    assert!(verified(&io(port, b, &["read -P 0 1M 128k"])));
    d.stop();
    // After a restart pc-a still has its data.
    let port2 = free_tcp_port();
    let d = start(dir.path(), "persistent", port2);
    assert!(verified(&io(port2, a, &["read -P 0x5c 1M 128k"])));
    d.stop();
    let base = std::fs::read(dir.path().join("base.raw")).unwrap();
    assert!(base.iter().all(|&x| x == 0), "the base image was written");
}

#[test]
fn unsupported_overlays_refuse_login_instead_of_serving_the_base() {
    // Whatever the images crate supports, a login never silently gets the
    // shared base image in place of an overlay: either the overlay works
    // (the tests above) or the login is refused with a target error.
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let d = start(dir.path(), "throwaway", port);
    let qemu_io = require("qemu-io", "qemu-utils");
    let out = run(Command::new(qemu_io).arg("--image-opts").arg(format!(
        "driver=iscsi,transport=tcp,portal=127.0.0.1:{port},target={IQN},lun=0,initiator-name=iqn.2026-11.org.example:pc-c"
    )).args(["-c", "write -P 0x77 0 4k"]));
    if !out.status.success() {
        assert!(d.log().contains("cannot attach the LUN"), "{}", d.log());
    }
    d.stop();
    let base = std::fs::read(dir.path().join("base.raw")).unwrap();
    assert!(base.iter().all(|&x| x == 0), "the base image was written");
}
