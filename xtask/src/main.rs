//! `cargo xtask`: the developer's and operator's front door to the workspace.
//!
//! - `up [DAEMON...] [--config FILE]`: start daemons together (the embedded demo
//!   site when no config is given), prefix their logs, stop all on Ctrl-C/SIGTERM.
//! - `test`: install missing Debian packages the tests need, then run every test.
//! - `e2e`: only the network-boot lab.
//! - `bench [NAME...]`: benchmarks against peer daemons, side by side.

mod bench;
mod demo;
mod packages;
mod up;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Run, test and benchmark anyboot")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start daemons together in the foreground; Ctrl-C or SIGTERM stops them all.
    ///
    /// Without --config this serves the embedded demo site on loopback (no root
    /// needed): a demo disk over NBD (127.0.0.1:10809) and iSCSI (127.0.0.1:3260)
    /// and a TFTP root (127.0.0.1:6969), and prints how to try each.
    Up {
        /// Daemons to start (dhcpd, tftpd, nbd, iscsi, aoe); default: every daemon
        /// that has a section in the config.
        daemons: Vec<String>,
        /// Site configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Build and run release binaries (faster I/O).
        #[arg(long)]
        release: bool,
        /// Use the binaries already built instead of running `cargo build` first.
        #[arg(long)]
        no_build: bool,
    },
    /// Run the whole test suite. As root, missing Debian packages the tests need
    /// are installed first (and named); otherwise missing ones are an error.
    Test {
        /// Do not install packages, only check for them.
        #[arg(long)]
        no_install: bool,
    },
    /// Run only the network-boot lab (QEMU + iPXE booting through our daemons).
    E2e,
    /// Run benchmarks against peer daemons and print side-by-side tables.
    Bench {
        /// Which benchmarks (images, tftp, nbd, iscsi, aoe, dhcp); default: all.
        names: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Up {
            daemons,
            config,
            release,
            no_build,
        } => up::run(daemons, config, release, !no_build),
        Cmd::Test { no_install } => test(no_install),
        Cmd::E2e => e2e(),
        Cmd::Bench { names } => bench::run(names),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_owned()
}

/// Runs a command in the workspace root, failing with its exit status.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: $ {shown}");
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn test(no_install: bool) -> Result<()> {
    packages::ensure(packages::TEST, !no_install)?;
    // The end-to-end tests drive the real binaries: build them first.
    run_cmd(cargo().args(["build", "--workspace", "--bins"]))?;
    run_cmd(cargo().args(["test", "--workspace", "--no-fail-fast"]))?;
    Ok(())
}

fn e2e() -> Result<()> {
    packages::ensure(packages::TEST, true)?;
    run_cmd(cargo().args(["build", "--workspace", "--bins"]))?;
    run_cmd(cargo().args([
        "test",
        "-p",
        "anyboot-tests",
        "--test",
        "lab",
        "--",
        "--test-threads=1",
    ]))
}
