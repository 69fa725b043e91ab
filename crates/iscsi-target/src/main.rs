//! `anyboot-iscsi-target`: clap glue around the `anyboot_iscsi_target` library.

use std::net::SocketAddr;

use anyboot_cli::CommonArgs;
use anyboot_images::{DiskMode, DiskSpec};
use anyboot_iscsi_target::config::valid_name;
use anyboot_iscsi_target::{Backing, Config, LunConfig, Server, TargetConfig};
use anyhow::{bail, Context};
use clap::Parser;

/// iSCSI target (RFC 7143): serves disk images as SCSI LUNs, with CHAP,
/// per-initiator ACLs and discovery. Give either a site file (--config) or the
/// standalone flags (--listen, --target, --lun); flags override the file.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    /// Portal to listen on (replaces the file's `listen`).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,

    /// Target name (IQN) the --lun flags belong to; with a config file, LUNs
    /// are added to this target (created if the file has none of that name).
    #[arg(long, value_name = "IQN")]
    target: Option<String>,

    /// A LUN of --target: N=PATH[,ro] (repeatable). Shared image, no overlay.
    #[arg(long, value_name = "N=PATH[,ro]")]
    lun: Vec<String>,

    /// CHAP user and secret required by --target (USER:SECRET).
    #[arg(long, value_name = "USER:SECRET")]
    chap: Option<String>,

    /// Mutual CHAP: what --target answers with (USER:SECRET).
    #[arg(long, value_name = "USER:SECRET", requires = "chap")]
    mutual_chap: Option<String>,

    /// Initiator IQNs allowed to use --target (repeatable; default: all).
    #[arg(long, value_name = "IQN")]
    allow: Vec<String>,

    /// Keepalive NOP-In interval in seconds (0: off).
    #[arg(long, value_name = "SECS")]
    nop_interval: Option<u64>,
}

fn split_cred(s: &str, flag: &str) -> anyhow::Result<(String, String)> {
    let (u, p) = s
        .split_once(':')
        .with_context(|| format!("{flag}: expected USER:SECRET"))?;
    if u.is_empty() || p.len() < 12 {
        bail!("{flag}: the user must not be empty and the secret must be at least 12 bytes");
    }
    Ok((u.to_owned(), p.to_owned()))
}

fn build(args: &Args) -> anyhow::Result<Config> {
    let site = args.common.load_site()?;
    let mut config = match &site {
        Some(s) if s.iscsi.is_some() => Config::from_site(s)?,
        _ => {
            let listen = args
                .listen
                .context("--listen is required without an [iscsi] section in --config")?;
            Config::new(listen)
        }
    };
    if let Some(l) = args.listen {
        config.listen = vec![l];
    }
    if let Some(n) = args.nop_interval {
        config.nop_interval = (n > 0).then(|| std::time::Duration::from_secs(n));
    }
    if let Some(iqn) = &args.target {
        if !valid_name(iqn) {
            bail!("--target {iqn}: an iSCSI name starts with iqn., eui. or naa.");
        }
        let idx = match config.targets.iter().position(|t| t.iqn == *iqn) {
            Some(i) => i,
            None => {
                config.targets.push(TargetConfig::new(iqn.clone()));
                config.targets.len() - 1
            }
        };
        let t = &mut config.targets[idx];
        for l in &args.lun {
            let (n, path, ro) = anyboot_cli::parse_image_flag(l).map_err(anyhow::Error::msg)?;
            let lun: u16 = n
                .parse()
                .ok()
                .filter(|n| *n < 16384)
                .with_context(|| format!("--lun {l}: the LUN must be a number below 16384"))?;
            if t.luns.iter().any(|x| x.lun == lun) {
                bail!("--lun {l}: LUN {lun} is given twice");
            }
            t.luns.push(LunConfig {
                lun,
                removable: false,
                backing: Backing::Disk(DiskSpec {
                    image: path,
                    read_only: ro,
                    mode: DiskMode::Shared,
                    overlay_dir: std::env::temp_dir(),
                }),
            });
        }
        if let Some(c) = &args.chap {
            let (user, secret) = split_cred(c, "--chap")?;
            let mutual = args
                .mutual_chap
                .as_deref()
                .map(|m| split_cred(m, "--mutual-chap"))
                .transpose()?;
            t.chap = Some(anyboot_iscsi_target::proto::login::ChapCredentials {
                user,
                secret,
                mutual,
            });
        }
        if !args.allow.is_empty() {
            t.allow = args.allow.clone();
        }
    } else if !args.lun.is_empty() || args.chap.is_some() || !args.allow.is_empty() {
        bail!("--lun, --chap and --allow need --target");
    }
    if config.targets.is_empty() {
        bail!("no targets: give --target IQN --lun N=PATH, or [[iscsi.target]] in --config");
    }
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    anyboot_cli::keep_io_buffers();
    let args = Args::parse();
    if args.common.check_config {
        // A site file without an [iscsi] section is valid for us too.
        let r = match args.common.load_site() {
            Err(e) => Err(e.to_string()),
            Ok(Some(s)) if s.iscsi.is_none() && args.target.is_none() => {
                Ok("no [iscsi] section".to_owned())
            }
            Ok(_) => build(&args)
                .map(|c| format!("{} target(s)", c.targets.len()))
                .map_err(|e| format!("{e:#}")),
        };
        anyboot_cli::finish_check(r);
    }
    args.common.init_logging();
    let config = build(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Handlers first: a signal during start-up is handled, not fatal.
        let shutdown = anyboot_cli::shutdown_signal();
        let server = Server::bind(config).await?;
        server.run(shutdown).await?;
        anyhow::Ok(())
    })
}
