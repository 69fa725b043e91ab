//! `cargo xtask bench`: each benchmark starts its peers on loopback, runs the
//! same load against them and us, and prints one table with ratios.

use anyhow::{bail, Result};

use crate::{cargo, run_cmd};

const ALL: &[&str] = &["images", "nbd"];

pub fn run(names: Vec<String>) -> Result<()> {
    let names: Vec<String> = if names.is_empty() {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        names
    };
    for name in &names {
        match name.as_str() {
            "images" => run_cmd(cargo().args(["bench", "-p", "anyboot-images"]))?,
            "nbd" => {
                run_cmd(cargo().args([
                    "build",
                    "--release",
                    "-p",
                    "anyboot-nbd-server",
                    "--bins",
                ]))?;
                run_cmd(cargo().args([
                    "run",
                    "--release",
                    "-p",
                    "anyboot-benches",
                    "--bin",
                    "nbd",
                ]))?;
            }
            other => bail!("no benchmark named `{other}` (have: {})", ALL.join(", ")),
        }
    }
    Ok(())
}
