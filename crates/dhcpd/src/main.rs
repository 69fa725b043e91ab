//! `anyboot-dhcpd`: clap glue around the `anyboot_dhcpd` library.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyboot_cli::CommonArgs;
use anyboot_config::MacAddr;
use anyboot_dhcpd::config::{Config, HostEntry, Subnet};
use anyhow::{anyhow, bail, Context};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Signals: SIGTERM/SIGINT stop (the lease write in flight finishes first); \
                  SIGHUP re-reads the site file and applies hosts, reservations, pools, \
                  options and boot settings without a restart, keeping every lease. \
                  Interfaces, ports, proxy mode and the lease database need a restart."
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,

    /// Interface to serve on (repeatable); replaces `[dhcpd] interfaces`.
    #[arg(long = "interface", value_name = "IF")]
    interfaces: Vec<String>,

    /// Dynamic pool `START-END` in the subnet of the first interface.
    #[arg(long, value_name = "START-END")]
    pool: Option<String>,

    /// Default router (option 3) for the `--pool` subnet.
    #[arg(long, value_name = "IP")]
    router: Option<Ipv4Addr>,

    /// DNS server (option 6) for the `--pool` subnet (repeatable).
    #[arg(long = "dns", value_name = "IP")]
    dns: Vec<Ipv4Addr>,

    /// Lease log file (default: `<state_dir>/dhcpd.leases` with a config file,
    /// in-memory leases without one).
    #[arg(long, value_name = "PATH")]
    lease_db: Option<PathBuf>,

    /// Lease time in seconds.
    #[arg(long, value_name = "SECS")]
    lease_time: Option<u32>,

    /// Fixed address for a MAC: `MAC=IP` (repeatable).
    #[arg(long = "reserve", value_name = "MAC=IP")]
    reserve: Vec<String>,

    /// Most addresses one MAC may hold at once.
    #[arg(long, value_name = "N")]
    max_leases_per_mac: Option<u32>,

    /// Packets per second accepted from one MAC.
    #[arg(long, value_name = "N")]
    rate_per_mac: Option<u32>,

    /// proxyDHCP mode: answer only PXE clients, with boot information and no
    /// address (ports 67 and 4011).
    #[arg(long)]
    proxy: bool,

    /// TFTP server (siaddr, option 66); default: this server's address.
    #[arg(long, value_name = "IP")]
    tftp_server: Option<Ipv4Addr>,

    /// HTTP base URL for iPXE scripts and UEFI HTTP boot.
    #[arg(long, value_name = "URL")]
    http_base: Option<String>,

    /// Boot file for BIOS PXE clients (default `undionly.kpxe`).
    #[arg(long, value_name = "FILE")]
    boot_file_bios: Option<String>,

    /// Boot file for x86-64 UEFI clients (default `ipxe.efi`).
    #[arg(long, value_name = "FILE")]
    boot_file_efi: Option<String>,

    /// Boot file for ARM64 UEFI clients (default `ipxe-arm64.efi`).
    #[arg(long, value_name = "FILE")]
    boot_file_arm64: Option<String>,

    /// Script for iPXE clients not in the inventory (default `boot.ipxe`).
    #[arg(long, value_name = "FILE")]
    ipxe_script: Option<String>,
}

fn parse_pool(s: &str) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| anyhow!("--pool `{s}`: expected START-END"))?;
    let a: Ipv4Addr = a.trim().parse().with_context(|| format!("--pool `{s}`"))?;
    let b: Ipv4Addr = b.trim().parse().with_context(|| format!("--pool `{s}`"))?;
    if u32::from(a) > u32::from(b) {
        bail!("--pool `{s}`: END is before START");
    }
    Ok((a, b))
}

/// Builds the runtime configuration: the file (if any), then the flags.
/// `discover` resolves an interface's address (not done by --check-config).
fn build(
    args: &Args,
    discover: impl Fn(&str) -> anyhow::Result<(Ipv4Addr, u8)>,
) -> anyhow::Result<Config> {
    let site = args.common.load_site()?;
    let mut cfg = match &site {
        Some(site) => Config::from_site(site)?,
        None => Config::default(),
    };
    if !args.interfaces.is_empty() {
        cfg.interfaces = args.interfaces.clone();
    }
    if let Some(p) = &args.lease_db {
        cfg.lease_db = Some(p.clone());
    }
    if let Some(t) = args.lease_time {
        if t < 10 {
            bail!("--lease-time: must be at least 10 seconds");
        }
        cfg.lease_time = t;
        for s in &mut cfg.subnets {
            s.lease_time = t;
        }
    }
    if let Some(n) = args.max_leases_per_mac {
        cfg.max_leases_per_mac = n.max(1);
    }
    if let Some(n) = args.rate_per_mac {
        cfg.rate_per_mac = n.max(1);
    }
    cfg.proxy |= args.proxy;
    let b = &mut cfg.boot;
    b.tftp_server = args.tftp_server.or(b.tftp_server);
    b.http_base = args.http_base.clone().or(b.http_base.take());
    b.bios = args.boot_file_bios.clone().or(b.bios.take());
    b.efi_x64 = args.boot_file_efi.clone().or(b.efi_x64.take());
    b.efi_arm64 = args.boot_file_arm64.clone().or(b.efi_arm64.take());
    b.unknown_host_script = args.ipxe_script.clone().or(b.unknown_host_script.take());
    if let Some(u) = &b.http_base {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            bail!("--http-base `{u}`: not an http:// or https:// URL");
        }
    }
    if let Some(pool) = &args.pool {
        let (start, end) = parse_pool(pool)?;
        let first = cfg
            .interfaces
            .first()
            .ok_or_else(|| anyhow!("--pool needs an --interface"))?
            .clone();
        let (addr, prefix) = discover(&first)?;
        let mask = u32::from(anyboot_dhcpd::config::prefix_mask(prefix));
        let mut s = Subnet::new(Ipv4Addr::from(u32::from(addr) & mask), prefix, start, end);
        if !s.contains(start) || !s.contains(end) {
            bail!(
                "--pool `{pool}` is outside {first}'s subnet {}/{prefix}",
                s.network
            );
        }
        s.router = args.router;
        s.dns = args.dns.clone();
        s.lease_time = cfg.lease_time;
        cfg.subnets.retain(|x| !x.contains(start));
        cfg.subnets.push(s);
    } else if args.router.is_some() || !args.dns.is_empty() {
        bail!("--router and --dns apply to the --pool subnet; give --pool too");
    }
    for r in &args.reserve {
        let (mac, ip) = r
            .split_once('=')
            .ok_or_else(|| anyhow!("--reserve `{r}`: expected MAC=IP"))?;
        let mac: MacAddr = mac.parse().map_err(|e| anyhow!("--reserve `{r}`: {e}"))?;
        let ip: Ipv4Addr = ip.parse().with_context(|| format!("--reserve `{r}`"))?;
        match cfg.hosts.iter_mut().find(|h| h.mac == mac) {
            Some(h) => h.address = Some(ip),
            None => cfg.hosts.push(HostEntry {
                name: format!("reserved-{}", mac.to_string().replace(':', "")),
                mac,
                address: Some(ip),
                profile: None,
                boot: Default::default(),
                root_path: None,
                has_script: false,
            }),
        }
    }
    Ok(cfg)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.common.check_config {
        // Interfaces may not exist on the checking machine: assume the
        // smallest subnet holding the pool so the flags are still validated.
        let r = build(&args, |_| {
            let (start, end) = parse_pool(args.pool.as_deref().unwrap_or("0.0.0.0-0.0.0.0"))?;
            let prefix = (u32::from(start) ^ u32::from(end)).leading_zeros().min(30) as u8;
            Ok((start, prefix))
        })
        .map(|c| {
            if c.interfaces.is_empty() {
                "no [dhcpd] section or --interface: nothing to serve".to_owned()
            } else {
                format!(
                    "{} interface(s), {} subnet(s), {} host(s){}",
                    c.interfaces.len(),
                    c.subnets.len(),
                    c.hosts.len(),
                    if c.proxy { ", proxyDHCP" } else { "" }
                )
            }
        });
        anyboot_cli::finish_check(r.map_err(|e| format!("{e:#}")));
    }
    args.common.init_logging();
    let cfg = build(&args, discover_interface)?;
    if cfg.interfaces.is_empty() {
        bail!("nothing to serve: give --interface (and --pool) or a config with [dhcpd]");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Handlers first: a signal during start-up is handled, not fatal.
        let (shutdown, hup) = anyboot_cli::shutdown_and_hangups();
        let server = anyboot_dhcpd::Server::bind(cfg).await?;
        let handle = server.reload_handle();
        let args = std::sync::Arc::new(args);
        tokio::spawn(anyboot_cli::reload_on_hangup(hup, move || {
            reload(handle.clone(), args.clone())
        }));
        server.run(shutdown).await
    })?;
    Ok(())
}

fn discover_interface(name: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    anyboot_dhcpd::server::interface_ipv4(name).map_err(|e| anyhow!("--interface {name}: {e}"))
}

/// Builds the configuration again from the same flags and site file and
/// hands it to the running server.
async fn reload(
    handle: anyboot_dhcpd::ReloadHandle,
    args: std::sync::Arc<Args>,
) -> Result<String, String> {
    // Reading the site file is blocking work.
    let cfg = tokio::task::spawn_blocking(move || build(&args, discover_interface))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{e:#}"))?;
    let hosts = cfg.hosts.len();
    let subnets = cfg.subnets.len();
    handle.reload(cfg).await.map_err(|e| e.to_string())?;
    Ok(format!(
        "configuration reloaded: {subnets} subnet(s), {hosts} host(s); leases kept"
    ))
}
