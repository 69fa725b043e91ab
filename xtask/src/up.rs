//! `cargo xtask up`: one process per daemon, logs prefixed with the daemon's
//! name, all stopped together on Ctrl-C/SIGTERM; non-zero exit if one dies.
//! SIGHUP is passed on to every daemon (tftpd reloads its boot tree).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyboot_config::Site;
use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::{cargo, demo, run_cmd, workspace_root};

/// Whether a site has a daemon's section.
type HasSection = fn(&Site) -> bool;

/// (name on the command line, package/binary, whether the site has its section)
const DAEMONS: &[(&str, &str, HasSection)] = &[
    ("dhcpd", "anyboot-dhcpd", |s| s.dhcpd.is_some()),
    ("tftpd", "anyboot-tftpd", |s| s.tftpd.is_some()),
    ("nbd", "anyboot-nbd-server", |s| s.nbd.is_some()),
    ("iscsi", "anyboot-iscsi-target", |s| s.iscsi.is_some()),
    ("aoe", "anyboot-aoe-target", |s| s.aoe.is_some()),
];

/// How long daemons get to finish after SIGTERM before they are killed.
const GRACE: Duration = Duration::from_secs(5);

pub fn run(names: Vec<String>, config: Option<PathBuf>, release: bool, build: bool) -> Result<()> {
    let is_demo = config.is_none();
    let site_path = match config {
        Some(p) => p,
        None => demo::prepare(&workspace_root().join("target/anyboot-demo"))?,
    };
    let site_path = std::fs::canonicalize(&site_path)
        .with_context(|| format!("config file {}", site_path.display()))?;
    let site = Site::load(&site_path)?;

    let chosen: Vec<(&str, &str)> = if names.is_empty() {
        DAEMONS
            .iter()
            .filter(|d| (d.2)(&site))
            .map(|d| (d.0, d.1))
            .collect()
    } else {
        let mut v = Vec::new();
        for n in &names {
            let Some(d) = DAEMONS.iter().find(|d| d.0 == n || d.1 == n) else {
                bail!("unknown daemon `{n}` (have: dhcpd, tftpd, nbd, iscsi, aoe)");
            };
            if !(d.2)(&site) {
                bail!("{}: has no section for `{n}`", site_path.display());
            }
            v.push((d.0, d.1));
        }
        v
    };
    if chosen.is_empty() {
        bail!(
            "{}: no daemon section ([dhcpd], [tftpd], [nbd], [iscsi], [aoe])",
            site_path.display()
        );
    }

    let mut cmd = cargo();
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    for (_, pkg) in &chosen {
        cmd.args(["-p", pkg]);
    }
    if build {
        run_cmd(&mut cmd)?;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin_dir = target.join(if release { "release" } else { "debug" });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(supervise(chosen, bin_dir, site_path, is_demo))
}

async fn supervise(
    chosen: Vec<(&str, &str)>,
    bin_dir: PathBuf,
    site_path: PathBuf,
    is_demo: bool,
) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Passed on to every daemon: tftpd reloads its boot tree, the others log
    // and ignore it. Without a handler it would end xtask and its daemons.
    let mut hup = signal(SignalKind::hangup())?;
    let mut children: Vec<(String, Child)> = Vec::new();
    for (name, bin) in &chosen {
        let mut child = Command::new(bin_dir.join(bin))
            .arg("--config")
            .arg(&site_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        tokio::spawn(prefix(
            name.to_string(),
            child.stdout.take().expect("piped"),
        ));
        tokio::spawn(prefix(
            name.to_string(),
            child.stderr.take().expect("piped"),
        ));
        eprintln!("xtask: started {bin} (pid {})", child.id().unwrap_or(0));
        children.push((name.to_string(), child));
    }
    if is_demo {
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!("\n{}\n", demo::TRY);
    }

    // Wait for a signal or for any child to exit on its own.
    let died = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = hup.recv() => {
                eprintln!("xtask: SIGHUP: passing it on to the daemons");
                signal_all(&children, libc::SIGHUP);
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let mut dead = None;
                for (name, c) in &mut children {
                    if let Some(status) = c.try_wait()? {
                        dead = Some((name.clone(), status));
                        break;
                    }
                }
                if dead.is_some() {
                    break dead;
                }
            }
        }
    };
    stop_all(&mut children).await;
    match died {
        None => {
            eprintln!("xtask: all daemons stopped");
            Ok(())
        }
        Some((name, status)) => bail!("{name} exited ({status}); stopped the others"),
    }
}

/// Sends `sig` to every daemon still running.
fn signal_all(children: &[(String, Child)], sig: libc::c_int) {
    for (_, c) in children {
        if let Some(pid) = c.id() {
            // SAFETY: `pid` is our own child, still unreaped (try_wait saw it
            // running or it has not been waited on), so it cannot be recycled.
            unsafe { libc::kill(pid as libc::pid_t, sig) };
        }
    }
}

async fn stop_all(children: &mut [(String, Child)]) {
    signal_all(children, libc::SIGTERM);
    for (name, c) in children.iter_mut() {
        match tokio::time::timeout(GRACE, c.wait()).await {
            Ok(Ok(status)) => eprintln!("xtask: {name} exited: {status}"),
            _ => {
                eprintln!("xtask: {name} did not stop within {GRACE:?}; killing it");
                let _ = c.kill().await;
            }
        }
    }
}

async fn prefix(name: String, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[{name:>5}] {line}");
    }
}
