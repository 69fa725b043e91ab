//! `cargo xtask bench`: each benchmark starts its peers on loopback (or in
//! namespaces it creates), runs the same load against them and us, and prints
//! one table with ratios. Everything is built in release mode first.

use anyhow::{bail, Result};

use crate::{cargo, run_cmd};

/// (name, daemon package whose binaries the bench starts, bench binary in
/// `benches/src/bin/`). `images` is a criterion bench inside its crate.
const BENCHES: &[(&str, &str, &str)] = &[
    ("images", "anyboot-images", ""),
    ("tftp", "anyboot-tftpd", "tftp"),
    ("dhcp", "anyboot-dhcpd", "dhcp"),
    ("nbd", "anyboot-nbd-server", "nbd"),
    ("iscsi", "anyboot-iscsi-target", "iscsi"),
    ("aoe", "anyboot-aoe-target", "aoe"),
];

pub fn run(names: Vec<String>) -> Result<()> {
    let chosen: Vec<&(&str, &str, &str)> = if names.is_empty() {
        BENCHES.iter().collect()
    } else {
        let mut v = Vec::new();
        for n in &names {
            match BENCHES.iter().find(|b| b.0 == n) {
                Some(b) => v.push(b),
                None => bail!(
                    "no benchmark named `{n}` (have: {})",
                    BENCHES.iter().map(|b| b.0).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        v
    };
    for (name, package, bin) in chosen {
        eprintln!("xtask: === benchmark {name} ===");
        if bin.is_empty() {
            run_cmd(cargo().args(["bench", "-p", package]))?;
            continue;
        }
        run_cmd(cargo().args(["build", "--release", "-p", package, "--bins"]))?;
        run_cmd(cargo().args(["run", "--release", "-p", "anyboot-benches", "--bin", bin]))?;
    }
    Ok(())
}
