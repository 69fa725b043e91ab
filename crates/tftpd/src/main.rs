//! `anyboot-tftpd`: clap glue around the `anyboot_tftpd` library. Standalone
//! (`--listen ADDR:PORT --root DIR`) or from the site file (`--config`); flags
//! override the file. SIGHUP re-reads the site file and swaps the generated
//! boot tree (hosts, profiles, menus) without a restart.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyboot_cli::CommonArgs;
use anyboot_config::tftpd::{TftpdSection, TftpdUpload};
use anyboot_config::{ConfigError, Site};
use anyboot_tftpd::{Config, Server};
use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Signals: SIGTERM/SIGINT stop (running transfers get a grace period); \
                  SIGHUP re-reads the site file and replaces the generated per-host files \
                  (iPXE scripts, pxelinux.cfg) without a restart. Listeners, root and \
                  options need a restart."
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// UDP address to serve TFTP on (repeatable; e.g. 0.0.0.0:69, [::]:69).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Directory served.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// TCP address of an HTTP listener for the same boot tree (repeatable).
    #[arg(long, value_name = "ADDR:PORT")]
    http: Vec<SocketAddr>,
    /// Run every transfer on the listening port (NAT, containers).
    #[arg(long)]
    single_port: bool,
    /// Most concurrent transfers.
    #[arg(long, value_name = "N")]
    max_sessions: Option<usize>,
    /// Path MTU capping blksize (0: no cap).
    #[arg(long, value_name = "BYTES")]
    mtu: Option<u32>,
    /// Largest blksize granted.
    #[arg(long, value_name = "N")]
    max_blksize: Option<u16>,
    /// Largest windowsize granted.
    #[arg(long, value_name = "N")]
    max_windowsize: Option<u16>,
    /// Retransmission timeout in milliseconds (unless the client negotiates one).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Retransmissions before a transfer is abandoned.
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// Microseconds a transfer polls for the client's next packet before it
    /// sleeps, while at most half the CPUs have a transfer (0: never).
    #[arg(long, value_name = "US")]
    busy_poll_us: Option<u32>,
    /// Accept write requests into this directory.
    #[arg(long, value_name = "DIR")]
    upload_dir: Option<PathBuf>,
    /// Let uploads replace existing files.
    #[arg(long, requires = "upload_dir")]
    allow_overwrite: bool,
}

fn section(args: &Args, site: &Site) -> Result<Option<TftpdSection>, ConfigError> {
    let mut s = match (&site.tftpd, &args.root) {
        (Some(s), _) => s.clone(),
        (None, Some(root)) => TftpdSection::with_root(root.clone()),
        (None, None) => return Ok(None),
    };
    if let Some(r) = &args.root {
        s.root = r.clone();
    }
    if !args.listen.is_empty() {
        s.listen = args.listen.clone();
    }
    if !args.http.is_empty() {
        s.http_listen = args.http.clone();
    }
    s.single_port |= args.single_port;
    if let Some(v) = args.max_sessions {
        s.max_sessions = v;
    }
    if let Some(v) = args.mtu {
        s.mtu = v;
    }
    if let Some(v) = args.max_blksize {
        s.max_blksize = v;
    }
    if let Some(v) = args.max_windowsize {
        s.max_windowsize = v;
    }
    if let Some(v) = args.timeout_ms {
        s.timeout_ms = v;
    }
    if let Some(v) = args.retries {
        s.retries = v;
    }
    if let Some(v) = args.busy_poll_us {
        s.busy_poll_us = v;
    }
    if let Some(d) = &args.upload_dir {
        s.upload = Some(TftpdUpload {
            dir: d.clone(),
            overwrite: args.allow_overwrite,
            max_size: s.upload.as_ref().map(|u| u.max_size).unwrap_or(64 << 20),
        });
    }
    Ok(Some(s))
}

fn build(args: &Args) -> Result<Option<Config>, ConfigError> {
    let site = args.common.load_site()?.unwrap_or_else(|| Site {
        source: PathBuf::from("(command line)"),
        ..Site::default()
    });
    match section(args, &site)? {
        Some(s) => Config::from_section(&site, &s).map(Some),
        None => Ok(None),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.common.check_config {
        anyboot_cli::finish_check(build(&args).map(|c| match c {
            Some(c) => format!(
                "tftpd: {} TFTP listener(s), {} HTTP listener(s), root {}, {} virtual file(s)",
                c.listen.len(),
                c.http_listen.len(),
                c.root.display(),
                c.boot_tree.len()
            ),
            None => "no [tftpd] section (nothing for tftpd to do)".to_owned(),
        }));
    }
    args.common.init_logging();
    let config = build(&args)?.context(
        "nothing to serve: give --root DIR (and --listen ADDR:PORT) or a --config with a [tftpd] section",
    )?;
    // Each transfer runs in a blocking thread: room for every session (plus
    // file reads) in the blocking pool.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(config.max_sessions + 64)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let args = std::sync::Arc::new(args);
    rt.block_on(async {
        // Install the signal handlers before binding, so a SIGTERM that
        // arrives while starting up is a clean shutdown, not a kill.
        let (shutdown, hup) = anyboot_cli::shutdown_and_hangups();
        let server = Server::bind(config).await?;
        let handle = server.reload_handle();
        tokio::spawn(anyboot_cli::reload_on_hangup(hup, move || {
            reload(handle.clone(), args.clone())
        }));
        tracing::info!(tftp = ?server.local_addrs(), http = ?server.http_addrs(), "anyboot-tftpd ready");
        server.run(shutdown).await?;
        Ok(())
    })
}

/// Builds the configuration again from the same flags and site file and,
/// if that works, serves its boot tree.
async fn reload(
    handle: anyboot_tftpd::ReloadHandle,
    args: std::sync::Arc<Args>,
) -> Result<String, String> {
    // Reading the site file and generating the tree is blocking work.
    let built = tokio::task::spawn_blocking(move || build(&args))
        .await
        .map_err(|e| e.to_string())?;
    match built {
        Ok(Some(config)) => {
            let before = handle.boot_tree_len();
            handle.set_boot_tree(config.boot_tree);
            Ok(format!(
                "boot tree reloaded: {before} -> {} virtual files",
                handle.boot_tree_len()
            ))
        }
        Ok(None) => Err("the site file has no [tftpd] section any more".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}
