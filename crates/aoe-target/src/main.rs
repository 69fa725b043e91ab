//! `anyboot-aoe-target`: clap glue around the `anyboot_aoe_target` library.

use anyboot_aoe_target::{Config, Server, TargetConfig};
use anyboot_cli::CommonArgs;
use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(version, about = "ATA over Ethernet (AoE r11) target")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    /// Network interface to serve on (repeatable; replaces `[aoe] interfaces`).
    #[arg(long = "interface", short = 'i', value_name = "IF")]
    interfaces: Vec<String>,

    /// A target: SHELF.SLOT=PATH[,ro] (repeatable; replaces a configured
    /// target with the same address).
    #[arg(long = "target", short = 't', value_name = "SHELF.SLOT=PATH[,ro]", value_parser = parse_target)]
    targets: Vec<TargetConfig>,

    /// Buffer Count of flag-given targets (requests kept in flight).
    #[arg(long, value_name = "N")]
    buffer_count: Option<u16>,

    /// Threads doing disk I/O.
    #[arg(long, value_name = "N")]
    io_threads: Option<usize>,
}

fn parse_target(s: &str) -> Result<TargetConfig, String> {
    let (name, path, ro) = anyboot_cli::parse_image_flag(s)?;
    let (shelf, slot) = name
        .split_once('.')
        .ok_or_else(|| format!("`{s}`: expected SHELF.SLOT=PATH[,ro]"))?;
    let shelf: u16 = shelf
        .parse()
        .map_err(|_| format!("`{s}`: shelf `{shelf}` is not a number 0-65534"))?;
    let slot: u8 = slot
        .parse()
        .map_err(|_| format!("`{s}`: slot `{slot}` is not a number 0-254"))?;
    Ok(TargetConfig::shared(shelf, slot, path, ro))
}

fn build(args: &Args) -> anyhow::Result<Option<Config>> {
    let site = args.common.load_site()?;
    let mut config = match &site {
        Some(site) if site.aoe.is_some() => Config::from_site(site)?,
        _ => Config::new(Vec::new(), Vec::new()),
    };
    if site.is_some()
        && site.as_ref().is_some_and(|s| s.aoe.is_none())
        && args.interfaces.is_empty()
        && args.targets.is_empty()
    {
        // A site file without an [aoe] section: nothing for us to serve.
        return Ok(None);
    }
    if !args.interfaces.is_empty() {
        config.interfaces = args.interfaces.clone();
    }
    for t in &args.targets {
        let mut t = t.clone();
        if let Some(n) = args.buffer_count {
            t.buffer_count = n;
        }
        config
            .targets
            .retain(|o| !(o.shelf == t.shelf && o.slot == t.slot));
        config.targets.push(t);
    }
    if let Some(n) = args.io_threads {
        config.io_threads = n;
    }
    let origin = args
        .common
        .config
        .as_ref()
        .map_or("command line".to_owned(), |p| p.display().to_string());
    config
        .validate()
        .map_err(|(key, problem)| anyhow::anyhow!("{origin}: key `{key}`: {problem}"))?;
    if config.targets.is_empty() {
        anyhow::bail!("{origin}: no targets: give --target SHELF.SLOT=PATH or [[aoe.target]]");
    }
    Ok(Some(config))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.common.check_config {
        anyboot_cli::finish_check(build(&args).map(|c| match c {
            Some(c) => format!(
                "{} target(s) on {}",
                c.targets.len(),
                c.interfaces.join(", ")
            ),
            None => "no [aoe] section".to_owned(),
        }));
    }
    args.common.init_logging();
    let config =
        build(&args)?.context("the site file has no [aoe] section and no flags were given")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Handlers first: a signal during start-up is handled, not fatal.
        let shutdown = anyboot_cli::shutdown_signal();
        let server = Server::bind(config).await?;
        server.run(shutdown).await
    })?;
    Ok(())
}
