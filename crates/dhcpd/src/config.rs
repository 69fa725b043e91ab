//! The DHCP server's runtime configuration: built in code or from a site file's
//! `[dhcpd]` section plus the shared inventory (hosts, profiles, `[iscsi]`,
//! `[aoe]`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyboot_config::dhcpd::{DhcpBoot, DhcpSubnet};
use anyboot_config::{ConfigError, MacAddr, Site, Transport};

/// One IPv4 subnet served by this server.
#[derive(Debug, Clone, PartialEq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
    /// First and last address of the dynamic pool (inclusive).
    pub pool_start: Ipv4Addr,
    pub pool_end: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_time: u32,
    pub boot: DhcpBoot,
}

impl Subnet {
    /// A subnet with defaults for everything but its addresses.
    pub fn new(network: Ipv4Addr, prefix: u8, pool_start: Ipv4Addr, pool_end: Ipv4Addr) -> Self {
        Self {
            network,
            prefix,
            pool_start,
            pool_end,
            router: None,
            dns: Vec::new(),
            domain: None,
            lease_time: 3600,
            boot: DhcpBoot::default(),
        }
    }

    pub fn mask(&self) -> Ipv4Addr {
        prefix_mask(self.prefix)
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let m = u32::from(self.mask());
        u32::from(a) & m == u32::from(self.network) & m
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !u32::from(self.mask()))
    }

    pub fn in_pool(&self, a: Ipv4Addr) -> bool {
        (u32::from(self.pool_start)..=u32::from(self.pool_end)).contains(&u32::from(a))
    }
}

/// The netmask of a prefix length.
pub fn prefix_mask(prefix: u8) -> Ipv4Addr {
    if prefix == 0 {
        Ipv4Addr::UNSPECIFIED
    } else {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix.min(32))))
    }
}

/// Parses `a.b.c.d/n`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}`: expected ADDRESS/PREFIX"))?;
    let a: Ipv4Addr = a.parse().map_err(|e| format!("`{s}`: {e}"))?;
    let p: u8 = p
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("`{s}`: prefix must be 0..=32"))?;
    Ok((a, p))
}

/// An inventory host as the DHCP server sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostEntry {
    pub name: String,
    pub mac: MacAddr,
    /// Reserved address.
    pub address: Option<Ipv4Addr>,
    pub profile: Option<String>,
    /// Boot overrides of the host's profile.
    pub boot: DhcpBoot,
    /// Option 17; `{server}` is replaced by the server identifier.
    pub root_path: Option<String>,
    /// Whether the boot tree has `hosts/<mac>.ipxe` for this host (it does for
    /// hosts whose profile has variants); iPXE clients without one get the
    /// generic script.
    pub has_script: bool,
}

/// Runtime configuration of one server.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Interfaces to serve on (names).
    pub interfaces: Vec<String>,
    pub subnets: Vec<Subnet>,
    /// Lease log; `None` keeps leases in memory only.
    pub lease_db: Option<PathBuf>,
    pub lease_time: u32,
    pub renew_time: Option<u32>,
    pub rebind_time: Option<u32>,
    pub offer_hold: u32,
    pub decline_hold: u32,
    pub max_leases_per_mac: u32,
    pub rate_per_mac: u32,
    pub server_id: Option<Ipv4Addr>,
    pub proxy: bool,
    pub authoritative: bool,
    pub boot: DhcpBoot,
    pub hosts: Vec<HostEntry>,
    /// Reservations by client identifier (option 61 bytes).
    pub client_id_reservations: Vec<(Vec<u8>, Ipv4Addr)>,
    /// UDP ports (67, 68 and 4011 in production; tests may move them).
    pub server_port: u16,
    pub client_port: u16,
    pub pxe_port: u16,
    /// Bound on packets held while their leases are being made durable.
    pub max_pending: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            subnets: Vec::new(),
            lease_db: None,
            lease_time: 3600,
            renew_time: None,
            rebind_time: None,
            offer_hold: 30,
            decline_hold: 600,
            max_leases_per_mac: 2,
            rate_per_mac: 20,
            server_id: None,
            proxy: false,
            authoritative: true,
            boot: DhcpBoot::default(),
            hosts: Vec::new(),
            client_id_reservations: Vec::new(),
            server_port: 67,
            client_port: 68,
            pxe_port: 4011,
            max_pending: 4096,
        }
    }
}

/// Parses `01:52:54:...` (or with `-` or no separators) as bytes.
pub fn parse_hex_bytes(s: &str) -> Result<Vec<u8>, String> {
    let clean: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
    if clean.is_empty() || clean.len() % 2 != 0 {
        return Err(format!(
            "`{s}`: expected hex bytes like 01:52:54:00:12:34:56"
        ));
    }
    (0..clean.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&clean[i..i + 2], 16).map_err(|_| format!("`{s}`: not hex")))
        .collect()
}

fn subnet_from(
    i: usize,
    s: &DhcpSubnet,
    site: &Site,
    lease_time: u32,
    dns: &[Ipv4Addr],
    domain: &Option<String>,
) -> Result<Subnet, ConfigError> {
    let key = format!("dhcpd.subnet[{i}]");
    let (network, prefix) =
        parse_cidr(&s.network).map_err(|p| site.error(format!("{key}.network"), p))?;
    let sub = Subnet {
        network,
        prefix,
        pool_start: s.pool_start,
        pool_end: s.pool_end,
        router: s.router,
        dns: s.dns.clone().unwrap_or_else(|| dns.to_vec()),
        domain: s.domain.clone().or_else(|| domain.clone()),
        lease_time: s.lease_time.unwrap_or(lease_time),
        boot: s.boot.clone().unwrap_or_default(),
    };
    for (k, a) in [("pool_start", s.pool_start), ("pool_end", s.pool_end)] {
        if !sub.contains(a) {
            return Err(site.error(
                format!("{key}.{k}"),
                format!("{a} is outside {}", s.network),
            ));
        }
    }
    if u32::from(s.pool_start) > u32::from(s.pool_end) {
        return Err(site.error(format!("{key}.pool_end"), "pool_end is before pool_start"));
    }
    if let Some(r) = s.router {
        if !sub.contains(r) {
            return Err(site.error(
                format!("{key}.router"),
                format!("{r} is outside {}", s.network),
            ));
        }
    }
    Ok(sub)
}

impl Config {
    /// Builds the runtime configuration from a site file. Without a `[dhcpd]`
    /// section the result has no interfaces (the binary then needs flags).
    pub fn from_site(site: &Site) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        let Some(d) = &site.dhcpd else {
            cfg.hosts = hosts_from(site, &[])?;
            return Ok(cfg);
        };
        cfg.interfaces = d.interfaces.clone();
        for (i, s) in d.subnets.iter().enumerate() {
            cfg.subnets
                .push(subnet_from(i, s, site, d.lease_time, &d.dns, &d.domain)?);
        }
        for (i, a) in cfg.subnets.iter().enumerate() {
            for (j, b) in cfg.subnets.iter().enumerate().skip(i + 1) {
                if a.contains(b.network) || b.contains(a.network) {
                    return Err(site.error(
                        format!("dhcpd.subnet[{j}].network"),
                        format!("overlaps dhcpd.subnet[{i}]"),
                    ));
                }
            }
        }
        cfg.lease_db = Some(match &d.lease_db {
            Some(p) if p.is_relative() => site
                .source
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join(p),
            Some(p) => p.clone(),
            None => site.state_dir().join("dhcpd.leases"),
        });
        if d.lease_time < 10 {
            return Err(site.error("dhcpd.lease_time", "must be at least 10 seconds"));
        }
        cfg.lease_time = d.lease_time;
        cfg.renew_time = d.renew_time;
        cfg.rebind_time = d.rebind_time;
        if let (Some(t1), Some(t2)) = (d.renew_time, d.rebind_time) {
            if t1 > t2 || t2 > d.lease_time {
                return Err(site.error(
                    "dhcpd.rebind_time",
                    "need renew_time <= rebind_time <= lease_time",
                ));
            }
        }
        cfg.offer_hold = d.offer_hold.max(1);
        cfg.decline_hold = d.decline_hold;
        if d.max_leases_per_mac == 0 {
            return Err(site.error("dhcpd.max_leases_per_mac", "must be at least 1"));
        }
        cfg.max_leases_per_mac = d.max_leases_per_mac;
        if d.rate_per_mac == 0 {
            return Err(site.error("dhcpd.rate_per_mac", "must be at least 1"));
        }
        cfg.rate_per_mac = d.rate_per_mac;
        cfg.server_id = d.server_id;
        cfg.proxy = d.proxy;
        cfg.authoritative = d.authoritative;
        check_boot(site, "dhcpd.boot", &d.boot)?;
        cfg.boot = d.boot.clone();
        for (i, p) in d.profiles.iter().enumerate() {
            if site.profile(&p.name).is_none() {
                return Err(site.error(
                    format!("dhcpd.profile[{i}].name"),
                    format!("no [[profile]] is named `{}`", p.name),
                ));
            }
            check_boot(site, &format!("dhcpd.profile[{i}].boot"), &p.boot)?;
        }
        for (i, r) in d.reservations.iter().enumerate() {
            let id = parse_hex_bytes(&r.client_id)
                .map_err(|p| site.error(format!("dhcpd.reservation[{i}].client_id"), p))?;
            cfg.client_id_reservations.push((id, r.address));
        }
        cfg.hosts = hosts_from(site, &d.profiles)?;
        Ok(cfg)
    }

    /// T1 for a lease of `lease` seconds.
    pub fn t1(&self, lease: u32) -> u32 {
        self.renew_time.unwrap_or(lease / 2).min(lease)
    }

    /// T2 for a lease of `lease` seconds.
    pub fn t2(&self, lease: u32) -> u32 {
        self.rebind_time
            .unwrap_or((lease as u64 * 7 / 8) as u32)
            .min(lease)
    }

    pub fn host_by_mac(&self, mac: &[u8]) -> Option<&HostEntry> {
        self.hosts.iter().find(|h| h.mac.0[..] == *mac)
    }
}

fn check_boot(site: &Site, key: &str, b: &DhcpBoot) -> Result<(), ConfigError> {
    if let Some(u) = &b.http_base {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(site.error(
                format!("{key}.http_base"),
                format!("`{u}` is not an http:// or https:// URL"),
            ));
        }
    }
    Ok(())
}

/// Inventory hosts with their profile's boot overrides and derived root path.
fn hosts_from(
    site: &Site,
    overrides: &[anyboot_config::dhcpd::DhcpProfile],
) -> Result<Vec<HostEntry>, ConfigError> {
    let mut out = Vec::new();
    for h in &site.hosts {
        let ov = h
            .profile
            .as_ref()
            .and_then(|p| overrides.iter().find(|o| &o.name == p));
        let root_path = match ov.and_then(|o| o.root_path.clone()) {
            Some(r) => Some(r),
            None => derive_root_path(site, h),
        };
        out.push(HostEntry {
            name: h.name.clone(),
            mac: h.mac,
            address: h.address,
            profile: h.profile.clone(),
            boot: ov.map(|o| o.boot.clone()).unwrap_or_default(),
            root_path,
            has_script: h
                .profile
                .as_deref()
                .and_then(|p| site.profile(p))
                .is_some_and(|p| !p.variants.is_empty()),
        });
    }
    Ok(out)
}

/// `iscsi:<server>:<proto>:<port>:<lun>:<iqn>` (RFC 4173) or `aoe:e<shelf>.<slot>`
/// for a host whose profile boots from a disk served by this site's `[iscsi]`
/// or `[aoe]` section: the target whose LUN serves the image the host boots.
fn derive_root_path(site: &Site, h: &anyboot_config::Host) -> Option<String> {
    let profile = site.profile(h.profile.as_deref()?)?;
    let variant_image = h
        .variant
        .as_ref()
        .or(profile.default_variant.as_ref())
        .and_then(|v| profile.variants.iter().find(|x| &x.name == v))
        .and_then(|v| v.image.clone());
    let image = variant_image.or_else(|| profile.image.clone())?;
    match profile.transport? {
        Transport::Iscsi => {
            let iscsi = site.iscsi.as_ref()?;
            let (target, lun) = iscsi.targets.iter().find_map(|t| {
                t.luns
                    .iter()
                    .find(|l| l.image.as_deref() == Some(image.as_str()))
                    .map(|l| (t, l.lun))
            })?;
            let listen = iscsi.listen.first()?;
            let server = if listen.ip().is_unspecified() {
                "{server}".to_owned()
            } else {
                listen.ip().to_string()
            };
            let port = if listen.port() == 3260 {
                String::new()
            } else {
                listen.port().to_string()
            };
            let lun = if lun == 0 {
                String::new()
            } else {
                lun.to_string()
            };
            Some(format!("iscsi:{server}::{port}:{lun}:{}", target.iqn))
        }
        Transport::Aoe => {
            let t = site
                .aoe
                .as_ref()?
                .targets
                .iter()
                .find(|t| t.image.as_deref() == Some(image.as_str()))?;
            Some(format!("aoe:e{}.{}", t.shelf, t.slot))
        }
        Transport::Nbd => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn site(text: &str) -> Site {
        Site::from_toml_str(text, Path::new("/etc/anyboot/site.toml")).unwrap()
    }

    #[test]
    fn example_site_derives_iscsi_root_path_and_lease_db() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/site.toml"),
        )
        .unwrap();
        let s = site(&text);
        let c = Config::from_site(&s).unwrap();
        assert_eq!(c.interfaces, vec!["eth0"]);
        assert_eq!(c.subnets[0].prefix, 24);
        assert_eq!(
            c.lease_db.as_deref(),
            Some(Path::new("/var/lib/anyboot/dhcpd.leases"))
        );
        let office = c.hosts.iter().find(|h| h.name == "office01").unwrap();
        assert_eq!(
            office.root_path.as_deref(),
            Some("iscsi:{server}::::iqn.2026-11.org.anyboot:desktop")
        );
        let pc = c.hosts.iter().find(|h| h.name == "pc01").unwrap();
        assert_eq!(pc.root_path, None, "nbd profiles get no root path");
        assert!(pc.has_script && office.has_script);
    }

    #[test]
    fn example_dhcpd_config_has_two_subnets_and_a_client_id_reservation() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/dhcpd.toml");
        let c = Config::from_site(&Site::load(&path).unwrap()).unwrap();
        assert_eq!(c.subnets.len(), 2);
        assert_eq!(c.subnets[1].lease_time, 7200);
        assert_eq!(c.subnets[0].dns, vec![Ipv4Addr::new(10, 0, 0, 1)]);
        assert_eq!(c.subnets[1].boot.efi_x64.as_deref(), Some("snponly.efi"));
        assert_eq!(
            c.client_id_reservations,
            vec![(
                vec![1, 0x52, 0x54, 0, 0xaa, 0xbb, 0xcc],
                Ipv4Addr::new(10, 0, 0, 50)
            )]
        );
    }

    #[test]
    fn aoe_root_path_and_profile_overrides() {
        let s = site(
            r#"
            [[image]]
            name = "img"
            path = "/x.raw"
            [[profile]]
            name = "p"
            image = "img"
            transport = "aoe"
            [[host]]
            name = "h"
            mac = "52:54:00:00:00:09"
            profile = "p"
            [aoe]
            interfaces = ["eth0"]
            [[aoe.target]]
            shelf = 3
            slot = 4
            image = "img"
            [dhcpd]
            interfaces = ["eth0"]
            [[dhcpd.profile]]
            name = "p"
            boot = { bios = "custom.kpxe" }
            [[dhcpd.subnet]]
            network = "10.1.0.0/16"
            pool_start = "10.1.1.0"
            pool_end = "10.1.1.255"
            "#,
        );
        let c = Config::from_site(&s).unwrap();
        assert_eq!(c.hosts[0].root_path.as_deref(), Some("aoe:e3.4"));
        assert_eq!(c.hosts[0].boot.bios.as_deref(), Some("custom.kpxe"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let base =
            "[dhcpd]\ninterfaces = [\"eth0\"]\n[[dhcpd.subnet]]\nnetwork = \"10.0.0.0/24\"\n";
        let e = Config::from_site(&site(&format!(
            "{base}pool_start = \"10.0.1.1\"\npool_end = \"10.0.0.9\"\n"
        )))
        .unwrap_err();
        assert_eq!(e.key, "dhcpd.subnet[0].pool_start");
        let e = Config::from_site(&site(&format!(
            "{base}pool_start = \"10.0.0.10\"\npool_end = \"10.0.0.9\"\n"
        )))
        .unwrap_err();
        assert_eq!(e.key, "dhcpd.subnet[0].pool_end");
        let e = Config::from_site(&site(
            "[dhcpd]\ninterfaces = [\"eth0\"]\n[[dhcpd.subnet]]\nnetwork = \"10.0.0.0/33\"\npool_start = \"10.0.0.10\"\npool_end = \"10.0.0.20\"\n",
        ))
        .unwrap_err();
        assert_eq!(e.key, "dhcpd.subnet[0].network");
        let e = Config::from_site(&site("[dhcpd]\ninterfaces = []\n[[dhcpd.reservation]]\nclient_id = \"zz\"\naddress = \"10.0.0.1\"\n")).unwrap_err();
        assert_eq!(e.key, "dhcpd.reservation[0].client_id");
        let e = Config::from_site(&site(
            "[dhcpd]\ninterfaces = []\n[dhcpd.boot]\nhttp_base = \"ftp://x\"\n",
        ))
        .unwrap_err();
        assert_eq!(e.key, "dhcpd.boot.http_base");
    }

    #[test]
    fn masks_and_membership() {
        let s = Subnet::new(
            Ipv4Addr::new(10, 0, 0, 0),
            24,
            Ipv4Addr::new(10, 0, 0, 100),
            Ipv4Addr::new(10, 0, 0, 199),
        );
        assert_eq!(s.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 0, 0, 255));
        assert!(s.contains(Ipv4Addr::new(10, 0, 0, 7)));
        assert!(!s.contains(Ipv4Addr::new(10, 0, 1, 7)));
        assert!(s.in_pool(Ipv4Addr::new(10, 0, 0, 150)));
        assert_eq!(prefix_mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(prefix_mask(32), Ipv4Addr::BROADCAST);
        assert_eq!(parse_hex_bytes("01:aa-BB").unwrap(), vec![1, 0xaa, 0xbb]);
    }
}
