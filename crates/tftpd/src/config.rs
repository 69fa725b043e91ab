//! The runtime configuration of the TFTP/HTTP server: validated from the site
//! file's `[tftpd]` section (regexes compiled, CIDRs parsed, the boot tree
//! generated) or built in code.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyboot_boot_tree::BootTree;
use anyboot_config::tftpd::TftpdSection;
use anyboot_config::{ConfigError, Site};
use anyboot_wire::tftp::{MAX_BLKSIZE, MIN_BLKSIZE};
use regex::Regex;

use crate::proto::Policy;

/// Where write requests go.
#[derive(Debug, Clone)]
pub struct Upload {
    pub dir: PathBuf,
    pub overwrite: bool,
    pub max_size: u64,
}

/// A filename rewriting rule (tftpd-hpa map file style).
#[derive(Debug, Clone)]
pub struct RemapRule {
    pub pattern: Regex,
    /// Replacement with `$1`/`${name}` group references.
    pub replace: String,
    /// Stop after this rule matched.
    pub stop: bool,
    /// Refuse matching names.
    pub deny: bool,
}

/// An address prefix (`10.0.0.0/24`, `fd00::/64`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A class of clients with its own option caps.
#[derive(Debug, Clone)]
pub struct ClientClass {
    pub name: String,
    /// Empty: any client.
    pub clients: Vec<Cidr>,
    /// `None`: any name.
    pub filename: Option<Regex>,
    pub max_blksize: Option<u16>,
    pub max_windowsize: Option<u16>,
    pub options: bool,
}

impl ClientClass {
    fn matches(&self, client: IpAddr, filename: &str) -> bool {
        (self.clients.is_empty() || self.clients.iter().any(|c| c.contains(client)))
            && self.filename.as_ref().is_none_or(|r| r.is_match(filename))
    }
}

/// Everything the server needs; build it with [`Config::new`] and adjust the
/// fields, or from a site file with [`Config::from_site`].
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP listeners.
    pub listen: Vec<SocketAddr>,
    /// The served directory.
    pub root: PathBuf,
    /// HTTP listeners for the same tree.
    pub http_listen: Vec<SocketAddr>,
    /// All transfers on the listening port.
    pub single_port: bool,
    pub max_sessions: usize,
    /// Path MTU (0: no cap on blksize from it).
    pub mtu: u32,
    pub max_blksize: u16,
    pub max_windowsize: u16,
    pub timeout: Duration,
    pub retries: u32,
    pub cache_bytes: u64,
    pub cache_max_file: u64,
    pub upload: Option<Upload>,
    pub remap: Vec<RemapRule>,
    pub classes: Vec<ClientClass>,
    /// Virtual files (generated from the inventory) served from the start;
    /// [`crate::ReloadHandle`] replaces them while running.
    pub boot_tree: Arc<BootTree>,
    pub http_max_connections: usize,
    pub shutdown_grace: Duration,
    /// Longest a transfer thread polls its socket for the next packet before
    /// sleeping, while at most half the CPUs have a transfer (zero: never).
    pub busy_poll: Duration,
}

impl Config {
    /// Defaults, serving `root` on `listen`.
    pub fn new(listen: SocketAddr, root: impl Into<PathBuf>) -> Self {
        let s = TftpdSection::with_root(root.into());
        Self {
            listen: vec![listen],
            root: s.root,
            http_listen: Vec::new(),
            single_port: s.single_port,
            max_sessions: s.max_sessions,
            mtu: s.mtu,
            max_blksize: s.max_blksize,
            max_windowsize: s.max_windowsize,
            timeout: Duration::from_millis(s.timeout_ms),
            retries: s.retries,
            cache_bytes: s.cache_bytes,
            cache_max_file: s.cache_max_file,
            upload: None,
            remap: Vec::new(),
            classes: Vec::new(),
            boot_tree: Arc::new(BootTree::empty()),
            http_max_connections: s.http_max_connections,
            shutdown_grace: Duration::from_millis(s.shutdown_grace_ms),
            busy_poll: Duration::from_micros(s.busy_poll_us.into()),
        }
    }

    /// The site's `[tftpd]` section, validated.
    pub fn from_site(site: &Site) -> Result<Self, ConfigError> {
        let section = site
            .tftpd
            .as_ref()
            .ok_or_else(|| site.error("tftpd", "the site has no [tftpd] section"))?;
        Self::from_section(site, section)
    }

    /// `section` (perhaps changed by command-line flags) in the context of
    /// `site` (its inventory feeds the boot tree; relative paths resolve
    /// against its file).
    pub fn from_section(site: &Site, s: &TftpdSection) -> Result<Self, ConfigError> {
        let err = |k: &str, p: String| site.error(format!("tftpd.{k}"), p);
        if !(MIN_BLKSIZE..=MAX_BLKSIZE).contains(&s.max_blksize) {
            return Err(err(
                "max_blksize",
                format!("must be {MIN_BLKSIZE}..={MAX_BLKSIZE}"),
            ));
        }
        if s.max_windowsize == 0 {
            return Err(err("max_windowsize", "must be at least 1".into()));
        }
        if s.mtu != 0 && s.mtu < 576 {
            return Err(err("mtu", "must be 0 (no cap) or at least 576".into()));
        }
        if s.listen.is_empty() {
            return Err(err("listen", "give at least one address".into()));
        }
        if s.max_sessions == 0 {
            return Err(err("max_sessions", "must be at least 1".into()));
        }
        if s.busy_poll_us > 1000 {
            return Err(err(
                "busy_poll_us",
                "must be 0..=1000 (spinning longer only burns the CPU)".into(),
            ));
        }
        if s.timeout_ms == 0 {
            return Err(err("timeout_ms", "must be at least 1".into()));
        }
        let base = site.source.parent().map(Path::to_owned).unwrap_or_default();
        let fix = |p: &Path| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.to_owned()
            }
        };
        let mut remap = Vec::new();
        for (i, r) in s.remap.iter().enumerate() {
            let pattern = Regex::new(&r.pattern)
                .map_err(|e| err(&format!("remap[{i}].pattern"), e.to_string()))?;
            remap.push(RemapRule {
                pattern,
                replace: r.replace.clone(),
                stop: r.stop,
                deny: r.deny,
            });
        }
        let mut classes = Vec::new();
        for (i, c) in s.classes.iter().enumerate() {
            let mut clients = Vec::new();
            for (j, a) in c.clients.iter().enumerate() {
                clients
                    .push(Cidr::parse(a).map_err(|e| err(&format!("class[{i}].clients[{j}]"), e))?);
            }
            let filename = c
                .filename
                .as_deref()
                .map(Regex::new)
                .transpose()
                .map_err(|e| err(&format!("class[{i}].filename"), e.to_string()))?;
            if c.max_blksize
                .is_some_and(|b| !(MIN_BLKSIZE..=MAX_BLKSIZE).contains(&b))
            {
                return Err(err(
                    &format!("class[{i}].max_blksize"),
                    format!("must be {MIN_BLKSIZE}..={MAX_BLKSIZE}"),
                ));
            }
            if c.max_windowsize == Some(0) {
                return Err(err(
                    &format!("class[{i}].max_windowsize"),
                    "must be at least 1".into(),
                ));
            }
            classes.push(ClientClass {
                name: c.name.clone(),
                clients,
                filename,
                max_blksize: c.max_blksize,
                max_windowsize: c.max_windowsize,
                options: c.options,
            });
        }
        let boot_tree = if s.boot_tree {
            BootTree::from_site(
                site,
                &anyboot_boot_tree::Options {
                    san_server: s.san_server.clone(),
                },
            )?
        } else {
            BootTree::empty()
        };
        Ok(Self {
            listen: s.listen.clone(),
            root: fix(&s.root),
            http_listen: s.http_listen.clone(),
            single_port: s.single_port,
            max_sessions: s.max_sessions,
            mtu: s.mtu,
            max_blksize: s.max_blksize,
            max_windowsize: s.max_windowsize,
            timeout: Duration::from_millis(s.timeout_ms),
            retries: s.retries,
            cache_bytes: s.cache_bytes,
            cache_max_file: s.cache_max_file,
            upload: s.upload.as_ref().map(|u| Upload {
                dir: fix(&u.dir),
                overwrite: u.overwrite,
                max_size: u.max_size,
            }),
            remap,
            classes,
            boot_tree: Arc::new(boot_tree),
            http_max_connections: s.http_max_connections.max(1),
            shutdown_grace: Duration::from_millis(s.shutdown_grace_ms),
            busy_poll: Duration::from_micros(s.busy_poll_us.into()),
        })
    }

    /// The class that applies to `client` asking for `filename`, if any.
    pub fn class_for(&self, client: IpAddr, filename: &str) -> Option<&ClientClass> {
        self.classes.iter().find(|c| c.matches(client, filename))
    }

    /// The negotiation policy for one request.
    pub fn policy(&self, client: IpAddr, filename: &str) -> Policy {
        let mut max_blksize = self.max_blksize;
        if self.mtu != 0 {
            let ip_header = if client.is_ipv4()
                || matches!(client, IpAddr::V6(a) if a.to_ipv4_mapped().is_some())
            {
                20
            } else {
                40
            };
            let cap = self.mtu.saturating_sub(ip_header + 8 + 4);
            max_blksize = max_blksize.min(cap.min(u32::from(MAX_BLKSIZE)) as u16);
        }
        let mut p = Policy {
            max_blksize,
            max_windowsize: self.max_windowsize,
            options: true,
            timeout: self.timeout,
            retries: self.retries,
        };
        if let Some(c) = self.class_for(client, filename) {
            if let Some(b) = c.max_blksize {
                p.max_blksize = p.max_blksize.min(b);
            }
            if let Some(w) = c.max_windowsize {
                p.max_windowsize = p.max_windowsize.min(w);
            }
            p.options = c.options;
        }
        p.max_blksize = p.max_blksize.max(MIN_BLKSIZE);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(text: &str) -> Result<Config, ConfigError> {
        let site = Site::from_toml_str(text, "/etc/anyboot/site.toml".as_ref())?;
        Config::from_site(&site)
    }

    #[test]
    fn cidrs_match_v4_v6_and_mapped() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        let c = Cidr::parse("fd00::/8").unwrap();
        assert!(c.contains("fd12::1".parse().unwrap()));
        assert!(!c.contains("10.1.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn classes_and_mtu_shape_the_policy() {
        let c = site(
            r#"
            [tftpd]
            root = "tftp"
            mtu = 1500
            max_windowsize = 32
            [[tftpd.class]]
            name = "shim"
            filename = '(^|/)shim.*\.efi$'
            max_blksize = 512
            max_windowsize = 1
            [[tftpd.class]]
            name = "old-firmware"
            clients = ["10.0.9.0/24"]
            options = false
            "#,
        )
        .unwrap();
        assert_eq!(c.root, Path::new("/etc/anyboot/tftp"));
        let any: IpAddr = "10.0.0.5".parse().unwrap();
        let p = c.policy(any, "pxelinux.0");
        assert_eq!(
            (p.max_blksize, p.max_windowsize, p.options),
            (1468, 32, true)
        );
        let p = c.policy("fd00::5".parse().unwrap(), "x");
        assert_eq!(p.max_blksize, 1448);
        let p = c.policy(any, "EFI/boot/shimx64.efi");
        assert_eq!((p.max_blksize, p.max_windowsize), (512, 1));
        assert!(!c.policy("10.0.9.77".parse().unwrap(), "x").options);
    }

    #[test]
    fn bad_regex_and_cidr_name_their_key() {
        let e = site("[tftpd]\nroot = \"t\"\n[[tftpd.remap]]\npattern = \"(\"\n").unwrap_err();
        assert_eq!(e.key, "tftpd.remap[0].pattern");
        let e = site(
            "[tftpd]\nroot = \"t\"\n[[tftpd.class]]\nname = \"x\"\nclients = [\"10.0.0.0/40\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "tftpd.class[0].clients[0]");
        let e = site("[tftpd]\nroot = \"t\"\nmax_blksize = 4\n").unwrap_err();
        assert_eq!(e.key, "tftpd.max_blksize");
    }

    #[test]
    fn busy_poll_defaults_to_50_us_and_is_bounded() {
        let c = site("[tftpd]\nroot = \"t\"\n").unwrap();
        assert_eq!(c.busy_poll, Duration::from_micros(50));
        let c = site("[tftpd]\nroot = \"t\"\nbusy_poll_us = 0\n").unwrap();
        assert!(c.busy_poll.is_zero());
        let e = site("[tftpd]\nroot = \"t\"\nbusy_poll_us = 5000\n").unwrap_err();
        assert_eq!(e.key, "tftpd.busy_poll_us");
    }
}
