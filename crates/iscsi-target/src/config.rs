//! Runtime configuration of the target, built in code or from the site file's
//! `[iscsi]` section (validated here: CHAP secret lengths, LUN ranges, duplicates).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyboot_config::iscsi::IscsiChap;
use anyboot_config::{ConfigError, DiskModeName, Site};
use anyboot_images::{BlockDevice, DiskMode, DiskSpec};

use crate::proto::login::{ChapCredentials, Limits};

/// Where a LUN's blocks come from.
#[derive(Debug, Clone)]
pub enum Backing {
    /// An image attached per initiator (shared, throwaway or persistent).
    Disk(DiskSpec),
    /// An already open device shared by every initiator (tests, RAM disks).
    Device(Arc<dyn BlockDevice>),
}

/// One LUN of a target.
#[derive(Debug, Clone)]
pub struct LunConfig {
    pub lun: u16,
    pub backing: Backing,
    /// Removable medium (INQUIRY RMB, eject/load, PREVENT ALLOW).
    pub removable: bool,
}

/// One target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub iqn: String,
    pub alias: Option<String>,
    /// Initiator IQNs allowed to log in and to discover it; empty: all.
    pub allow: Vec<String>,
    pub chap: Option<ChapCredentials>,
    pub luns: Vec<LunConfig>,
}

impl TargetConfig {
    /// A target without CHAP or ACL.
    pub fn new(iqn: impl Into<String>) -> Self {
        Self {
            iqn: iqn.into(),
            alias: None,
            allow: Vec::new(),
            chap: None,
            luns: Vec::new(),
        }
    }
}

/// Everything the server needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub targets: Vec<TargetConfig>,
    pub discovery_chap: Option<ChapCredentials>,
    /// Most concurrent sessions (each is one TCP connection).
    pub max_sessions: usize,
    /// CmdSN window per session.
    pub queue_depth: u32,
    /// Keepalive NOP-In interval; `None`: never ping.
    pub nop_interval: Option<Duration>,
    pub limits: Limits,
}

impl Config {
    /// A config listening on `listen` with no targets yet.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen: vec![listen],
            targets: Vec::new(),
            discovery_chap: None,
            max_sessions: 256,
            queue_depth: 64,
            nop_interval: Some(Duration::from_secs(30)),
            limits: Limits::default(),
        }
    }

    /// Builds the runtime config from the site's `[iscsi]` section.
    pub fn from_site(site: &Site) -> Result<Self, ConfigError> {
        let Some(sec) = &site.iscsi else {
            return Err(site.error("iscsi", "the site file has no [iscsi] section"));
        };
        let overlay_dir = match &sec.overlay_dir {
            Some(d) if d.is_relative() => site
                .source
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join(d),
            Some(d) => d.clone(),
            None => site.state_dir().join("overlays").join("iscsi"),
        };
        if sec.queue_depth == 0 || sec.queue_depth > 1024 {
            return Err(site.error("iscsi.queue_depth", "must be between 1 and 1024"));
        }
        if sec.max_sessions == 0 {
            return Err(site.error("iscsi.max_sessions", "must be at least 1"));
        }
        let discovery_chap = sec
            .discovery_chap
            .as_ref()
            .map(|c| chap(site, "iscsi.discovery_chap", c))
            .transpose()?;
        let mut targets = Vec::new();
        for (i, t) in sec.targets.iter().enumerate() {
            let key = format!("iscsi.target[{i}]");
            if !valid_name(&t.iqn) {
                return Err(site.error(
                    format!("{key}.iqn"),
                    "an iSCSI name starts with `iqn.`, `eui.` or `naa.` and has no spaces",
                ));
            }
            let mut luns: Vec<LunConfig> = Vec::new();
            for (j, l) in t.luns.iter().enumerate() {
                let lkey = format!("{key}.lun[{j}]");
                if l.lun >= 16384 {
                    return Err(site.error(format!("{lkey}.lun"), "LUNs go from 0 to 16383"));
                }
                if luns.iter().any(|x| x.lun == l.lun) {
                    return Err(site.error(
                        format!("{lkey}.lun"),
                        format!("LUN {} is used twice", l.lun),
                    ));
                }
                let image: PathBuf = match (&l.image, &l.path) {
                    (Some(name), None) => {
                        site.image(name).map(|im| im.path.clone()).ok_or_else(|| {
                            site.error(
                                format!("{lkey}.image"),
                                format!("no [[image]] is named `{name}`"),
                            )
                        })?
                    }
                    (None, Some(p)) => p.clone(),
                    _ => {
                        return Err(site.error(lkey, "give exactly one of `image` and `path`"));
                    }
                };
                let mode = match l.disk {
                    DiskModeName::Shared => DiskMode::Shared,
                    DiskModeName::Throwaway => DiskMode::Throwaway,
                    DiskModeName::Persistent => DiskMode::Persistent,
                };
                luns.push(LunConfig {
                    lun: l.lun,
                    removable: l.removable,
                    backing: Backing::Disk(DiskSpec {
                        image,
                        read_only: l.read_only,
                        mode,
                        overlay_dir: overlay_dir.clone(),
                    }),
                });
            }
            targets.push(TargetConfig {
                iqn: t.iqn.clone(),
                alias: t.alias.clone(),
                allow: t.allow.clone(),
                chap: t
                    .chap
                    .as_ref()
                    .map(|c| chap(site, &format!("{key}.chap"), c))
                    .transpose()?,
                luns,
            });
        }
        Ok(Self {
            listen: sec.listen.clone(),
            targets,
            discovery_chap,
            max_sessions: sec.max_sessions,
            queue_depth: sec.queue_depth,
            nop_interval: (sec.nop_interval_secs > 0)
                .then(|| Duration::from_secs(sec.nop_interval_secs)),
            limits: Limits::default(),
        })
    }
}

/// `iqn.`, `eui.` or `naa.` names of printable characters (RFC 7143 section 4.2.7).
pub fn valid_name(n: &str) -> bool {
    let lower = n.to_ascii_lowercase();
    (lower.starts_with("iqn.") || lower.starts_with("eui.") || lower.starts_with("naa."))
        && n.len() <= 223
        && n.bytes().all(|b| b.is_ascii_graphic())
}

fn chap(site: &Site, key: &str, c: &IscsiChap) -> Result<ChapCredentials, ConfigError> {
    // RFC 7143 section 12.1.3 asks for secrets of at least 96 bits; 16 bytes
    // is the most some initiators (open-iscsi) accept.
    let check = |k: &str, s: &str| {
        if s.len() < 12 || s.len() > 255 {
            Err(site.error(
                format!("{key}.{k}"),
                "CHAP secrets must be 12 to 255 bytes long",
            ))
        } else {
            Ok(())
        }
    };
    check("secret", &c.secret)?;
    if c.user.is_empty() {
        return Err(site.error(format!("{key}.user"), "must not be empty"));
    }
    let mutual = match (&c.mutual_user, &c.mutual_secret) {
        (Some(u), Some(s)) => {
            check("mutual_secret", s)?;
            if s == &c.secret {
                return Err(site.error(
                    format!("{key}.mutual_secret"),
                    "must differ from `secret` (RFC 7143 section 12.1.3)",
                ));
            }
            Some((u.clone(), s.clone()))
        }
        (None, None) => None,
        _ => {
            return Err(site.error(
                key,
                "give both `mutual_user` and `mutual_secret`, or neither",
            ));
        }
    };
    Ok(ChapCredentials {
        user: c.user.clone(),
        secret: c.secret.clone(),
        mutual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let site = Site::from_toml_str(text, "/etc/anyboot/site.toml".as_ref())?;
        Config::from_site(&site)
    }

    #[test]
    fn full_section_parses() {
        let c = load(
            r#"
            [[image]]
            name = "base"
            path = "img/base.raw"
            [iscsi]
            listen = ["127.0.0.1:3260"]
            queue_depth = 32
            [iscsi.discovery_chap]
            user = "disc"
            secret = "discoverysecret"
            [[iscsi.target]]
            iqn = "iqn.2026-11.org.anyboot:a"
            allow = ["iqn.2026-11.org.example:pc1"]
            [iscsi.target.chap]
            user = "u"
            secret = "0123456789ab"
            mutual_user = "t"
            mutual_secret = "ba9876543210"
            [[iscsi.target.lun]]
            lun = 0
            image = "base"
            disk = "persistent"
            [[iscsi.target.lun]]
            lun = 1
            path = "/tmp/x.raw"
            read_only = true
            "#,
        )
        .unwrap();
        assert_eq!(c.queue_depth, 32);
        assert_eq!(c.targets[0].luns.len(), 2);
        let Backing::Disk(spec) = &c.targets[0].luns[0].backing else {
            panic!()
        };
        assert_eq!(spec.image, PathBuf::from("/etc/anyboot/img/base.raw"));
        assert_eq!(spec.mode, DiskMode::Persistent);
        assert_eq!(
            spec.overlay_dir,
            PathBuf::from("/var/lib/anyboot/overlays/iscsi")
        );
        assert!(c.targets[0].chap.as_ref().unwrap().mutual.is_some());
        assert_eq!(c.discovery_chap.unwrap().user, "disc");
    }

    #[test]
    fn short_secret_and_duplicate_lun_are_named() {
        let e = load(
            "[iscsi]\n[[iscsi.target]]\niqn = \"iqn.2026-11.x:y\"\n[iscsi.target.chap]\nuser = \"u\"\nsecret = \"short\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "iscsi.target[0].chap.secret");
        let e = load(
            "[iscsi]\n[[iscsi.target]]\niqn = \"iqn.2026-11.x:y\"\n[[iscsi.target.lun]]\nlun = 0\npath = \"/a\"\n[[iscsi.target.lun]]\nlun = 0\npath = \"/b\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "iscsi.target[0].lun[1].lun");
        let e = load("[iscsi]\n[[iscsi.target]]\niqn = \"bad name\"\n").unwrap_err();
        assert_eq!(e.key, "iscsi.target[0].iqn");
    }
}
