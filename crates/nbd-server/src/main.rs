//! `anyboot-nbd-server`: clap glue around the `anyboot_nbd_server` library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyboot_cli::CommonArgs;
use anyboot_images::DiskMode;
use anyboot_nbd_server::config::{Backing, TlsFiles};
use anyboot_nbd_server::proto::TlsMode;
use anyboot_nbd_server::{Config, ExportConfig, Server};
use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DiskArg {
    Shared,
    Throwaway,
    Persistent,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TlsArg {
    Off,
    Optional,
    Required,
}

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    /// TCP address to listen on (repeatable); replaces the config file's list.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,

    /// Export a raw image (repeatable): NAME=PATH, optionally ",ro".
    #[arg(long, value_name = "NAME=PATH[,ro]", value_parser = anyboot_cli::parse_image_flag)]
    export: Vec<(String, PathBuf, bool)>,

    /// Unix socket to listen on as well.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,

    /// How --export images are attached.
    #[arg(long, value_enum, default_value = "shared")]
    disk: DiskArg,

    /// Where --export overlays live (throwaway and persistent modes).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/anyboot/nbd")]
    overlay_dir: PathBuf,

    /// PEM certificate chain for STARTTLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key for STARTTLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// TLS policy of --export exports (default: optional with a certificate).
    #[arg(long, value_enum)]
    tls: Option<TlsArg>,

    /// Connections served at once.
    #[arg(long)]
    max_connections: Option<usize>,
}

fn build(args: &Args) -> anyhow::Result<Config> {
    let site = args.common.load_site()?;
    let mut c = match &site {
        Some(s) => Config::from_site(s)?,
        None => Config::new(Vec::new()),
    };
    if !args.listen.is_empty() {
        c.listen = args.listen.clone();
    }
    if let Some(u) = &args.unix {
        c.unix = Some(u.clone());
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        c.tls = Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    if let Some(n) = args.max_connections {
        if n == 0 {
            bail!("--max-connections must be at least 1");
        }
        c.max_connections = n;
    }
    let tls = args.tls.map(|t| match t {
        TlsArg::Off => TlsMode::Off,
        TlsArg::Optional => TlsMode::Optional,
        TlsArg::Required => TlsMode::Required,
    });
    for (name, path, ro) in &args.export {
        let mut e = ExportConfig::file(name, path, *ro);
        if let Backing::Disk(spec) = &mut e.backing {
            spec.mode = match args.disk {
                DiskArg::Shared => DiskMode::Shared,
                DiskArg::Throwaway => DiskMode::Throwaway,
                DiskArg::Persistent => DiskMode::Persistent,
            };
            spec.overlay_dir = args
                .overlay_dir
                .join(anyboot_nbd_server::config::path_safe(name));
        }
        e.tls = tls;
        // A flag overrides a file export of the same name.
        c.exports.retain(|x| &x.name != name);
        c.exports.push(e);
    }
    Ok(c)
}

fn main() -> anyhow::Result<()> {
    anyboot_cli::keep_io_buffers();
    let args = Args::parse();
    if args.common.check_config {
        let r = build(&args).and_then(|c| {
            if c.exports.is_empty() && args.export.is_empty() {
                // A site without an [nbd] section is valid: nothing to serve.
                return Ok("no NBD exports configured".to_owned());
            }
            c.validate().map_err(anyhow::Error::msg)?;
            Ok(format!(
                "{} export(s), {} TCP listener(s){}",
                c.exports.len(),
                c.listen.len(),
                if c.unix.is_some() {
                    " + unix socket"
                } else {
                    ""
                }
            ))
        });
        anyboot_cli::finish_check(r.map_err(|e| format!("{e:#}")));
    }
    args.common.init_logging();
    let config = build(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        // Handlers first: a signal during start-up is handled, not fatal.
        let shutdown = anyboot_cli::shutdown_signal();
        let server = Server::bind(config).await?;
        server.run(shutdown).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    // Connections abandoned after the grace period die with the runtime.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}
