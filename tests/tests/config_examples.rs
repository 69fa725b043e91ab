//! Every example in `configs/` parses and validates, and every daemon binary's
//! `--check-config` agrees; broken configs are rejected naming the key.

use std::process::Command;

use anyboot_tests::{bin, run, workspace_root};

const DAEMONS: &[&str] = &[
    "anyboot-dhcpd",
    "anyboot-tftpd",
    "anyboot-nbd-server",
    "anyboot-iscsi-target",
    "anyboot-aoe-target",
];

fn examples() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(workspace_root().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    assert!(
        v.len() >= 6,
        "expected one example per daemon plus a full site, found {v:?}"
    );
    v
}

#[test]
fn every_example_config_passes_check_config_of_every_daemon() {
    for cfg in examples() {
        for d in DAEMONS {
            let out = run(Command::new(bin(d))
                .arg("--check-config")
                .arg("--config")
                .arg(&cfg));
            assert!(
                out.status.success(),
                "{d} --check-config {}: {}{}",
                cfg.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn check_bad(text: &str, expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    for d in DAEMONS {
        let out = run(Command::new(bin(d))
            .arg("--check-config")
            .arg("--config")
            .arg(&path));
        assert_eq!(out.status.code(), Some(1), "{d} should reject {text:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&*path.to_string_lossy()),
            "{d}: message lacks the file name: {err}"
        );
        for e in expect {
            assert!(err.contains(e), "{d}: message lacks `{e}`: {err}");
        }
    }
}

#[test]
fn check_config_names_a_typo_key() {
    check_bad(
        "[tftpd]\nroot = \"/srv/tftp\"\nlisten_addr = [\"0.0.0.0:69\"]\n",
        &["tftpd", "listen_addr"],
    );
}

#[test]
fn check_config_names_a_bad_address() {
    check_bad(
        "[nbd]\nlisten = [\"10.0.0.300:10809\"]\n",
        &["nbd.listen[0]", "invalid socket address"],
    );
}
