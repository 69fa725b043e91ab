//! The target's runtime configuration, built in code or from the site file's
//! `[aoe]` section (validated here, with errors naming file and key).

use std::path::PathBuf;
use std::time::Duration;

use anyboot_config::{ConfigError, DiskModeName, Site};
use anyboot_images::{DiskMode, DiskSpec};
use anyboot_wire::aoe::{Mac, BROADCAST_SHELF, BROADCAST_SLOT, MAX_CONFIG_STRING};

use crate::proto::MAX_MASKS;

/// One shelf.slot device.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub shelf: u16,
    pub slot: u8,
    pub disk: DiskSpec,
    pub config_string: String,
    pub allowed_macs: Vec<Mac>,
    pub buffer_count: u16,
    /// Throwaway mode: an IDENTIFY after this long without I/O from a client
    /// starts its next boot on a fresh overlay.
    pub reattach_gap: Duration,
}

/// Default [`TargetConfig::reattach_gap`]: longer than the pause between iPXE
/// handing a sanbooted disk to the OS driver, shorter than a reboot (firmware,
/// DHCP, loading a kernel).
pub const DEFAULT_REATTACH_GAP: Duration = Duration::from_secs(10);

impl TargetConfig {
    /// A shared (every client sees the same image) target backed by `path`.
    pub fn shared(shelf: u16, slot: u8, path: impl Into<PathBuf>, read_only: bool) -> Self {
        Self {
            shelf,
            slot,
            disk: DiskSpec {
                image: path.into(),
                read_only,
                mode: DiskMode::Shared,
                overlay_dir: std::env::temp_dir(),
            },
            config_string: String::new(),
            allowed_macs: Vec::new(),
            buffer_count: 64,
            reattach_gap: DEFAULT_REATTACH_GAP,
        }
    }
}

/// Everything the server needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Interfaces to answer on.
    pub interfaces: Vec<String>,
    pub targets: Vec<TargetConfig>,
    /// Threads per interface, each receiving and doing its request's disk I/O
    /// (default 2: measured best on a 2-core machine with tmpfs; raise it for
    /// slow storage, where more requests in flight pay off).
    pub io_threads: usize,
    /// Most per-client overlays per target (throwaway/persistent modes).
    pub max_clients: usize,
}

impl Config {
    pub fn new(interfaces: Vec<String>, targets: Vec<TargetConfig>) -> Self {
        Self {
            interfaces,
            targets,
            io_threads: 2,
            max_clients: 256,
        }
    }

    /// Builds the configuration from the site file's `[aoe]` section.
    pub fn from_site(site: &Site) -> Result<Self, ConfigError> {
        let Some(sec) = &site.aoe else {
            return Err(site.error("aoe", "the site file has no [aoe] section"));
        };
        let mut targets = Vec::new();
        for (i, t) in sec.targets.iter().enumerate() {
            let key = format!("aoe.target[{i}]");
            let image = match (&t.image, &t.path) {
                (Some(name), _) => {
                    site.image(name)
                        .map(|img| img.path.clone())
                        .ok_or_else(|| {
                            site.error(
                                format!("{key}.image"),
                                format!("no [[image]] is named `{name}`"),
                            )
                        })?
                }
                (None, Some(p)) => p.clone(),
                (None, None) => {
                    return Err(site.error(&key, "give `image` or `path`"));
                }
            };
            let mode = match t.disk {
                DiskModeName::Shared => DiskMode::Shared,
                DiskModeName::Throwaway => DiskMode::Throwaway,
                DiskModeName::Persistent => DiskMode::Persistent,
            };
            targets.push(TargetConfig {
                shelf: t.shelf,
                slot: t.slot,
                disk: DiskSpec {
                    image,
                    read_only: t.read_only,
                    mode,
                    overlay_dir: site
                        .state_dir()
                        .join("aoe")
                        .join(format!("{}.{}", t.shelf, t.slot)),
                },
                config_string: t.config_string.clone().unwrap_or_default(),
                allowed_macs: t.allowed_macs.iter().map(|m| m.0).collect(),
                buffer_count: t.buffer_count.unwrap_or(sec.buffer_count),
                reattach_gap: t
                    .reattach_gap
                    .map(Duration::from_secs)
                    .unwrap_or(DEFAULT_REATTACH_GAP),
            });
        }
        let c = Self {
            interfaces: sec.interfaces.clone(),
            targets,
            io_threads: sec.io_threads,
            max_clients: sec.max_clients,
        };
        c.validate()
            .map_err(|(key, problem)| site.error(key, problem))?;
        Ok(c)
    }

    /// Checks what serde cannot: returns the offending key and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.interfaces.is_empty() {
            return Err((
                "aoe.interfaces".into(),
                "name at least one interface".into(),
            ));
        }
        for (i, n) in self.interfaces.iter().enumerate() {
            if n.is_empty() || n.len() >= 16 {
                return Err((
                    format!("aoe.interfaces[{i}]"),
                    format!("`{n}` is not an interface name"),
                ));
            }
        }
        if self.io_threads == 0 || self.io_threads > 256 {
            return Err(("aoe.io_threads".into(), "must be between 1 and 256".into()));
        }
        if self.max_clients == 0 {
            return Err(("aoe.max_clients".into(), "must be at least 1".into()));
        }
        for (i, t) in self.targets.iter().enumerate() {
            let key = format!("aoe.target[{i}]");
            if t.shelf == BROADCAST_SHELF || t.slot == BROADCAST_SLOT {
                return Err((
                    key,
                    "shelf 65535 and slot 255 are the broadcast addresses".into(),
                ));
            }
            if self.targets[..i]
                .iter()
                .any(|o| o.shelf == t.shelf && o.slot == t.slot)
            {
                return Err((
                    key,
                    format!("shelf.slot {}.{} is used twice", t.shelf, t.slot),
                ));
            }
            if t.config_string.len() > MAX_CONFIG_STRING {
                return Err((
                    format!("{key}.config_string"),
                    "longer than 1024 bytes".into(),
                ));
            }
            if t.allowed_macs.len() > MAX_MASKS {
                return Err((
                    format!("{key}.allowed_macs"),
                    format!("at most {MAX_MASKS} entries"),
                ));
            }
            if t.buffer_count == 0 {
                return Err((format!("{key}.buffer_count"), "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let site = Site::from_toml_str(text, Path::new("/etc/anyboot/site.toml"))?;
        Config::from_site(&site)
    }

    #[test]
    fn site_section_becomes_targets() {
        let c = load(
            "[site]\nstate_dir = \"/var/lib/ab\"\n\
             [[image]]\nname = \"base\"\npath = \"img/base.raw\"\n\
             [aoe]\ninterfaces = [\"eth0\", \"eth1\"]\nbuffer_count = 32\n\
             [[aoe.target]]\nshelf = 1\nslot = 1\nimage = \"base\"\ndisk = \"throwaway\"\n\
             config_string = \"x\"\nallowed_macs = [\"52:54:00:00:00:01\"]\n\
             [[aoe.target]]\nshelf = 1\nslot = 2\npath = \"/srv/d.raw\"\nread_only = true\nbuffer_count = 4\n",
        )
        .unwrap();
        assert_eq!(c.interfaces, ["eth0", "eth1"]);
        assert_eq!(c.io_threads, 2);
        let t = &c.targets[0];
        assert_eq!(t.disk.image, Path::new("/etc/anyboot/img/base.raw"));
        assert_eq!(t.disk.mode, DiskMode::Throwaway);
        assert_eq!(t.disk.overlay_dir, Path::new("/var/lib/ab/aoe/1.1"));
        assert_eq!((t.buffer_count, t.config_string.as_str()), (32, "x"));
        assert_eq!(t.allowed_macs, vec![[0x52, 0x54, 0, 0, 0, 1]]);
        let t = &c.targets[1];
        assert_eq!(t.disk.mode, DiskMode::Shared);
        assert!(t.disk.read_only);
        assert_eq!(t.buffer_count, 4);
    }

    #[test]
    fn problems_name_their_key() {
        let base = "[aoe]\ninterfaces = [\"eth0\"]\n";
        let e = load(&format!(
            "{base}[[aoe.target]]\nshelf = 2\nslot = 3\npath = \"/a\"\n\
             [[aoe.target]]\nshelf = 2\nslot = 3\npath = \"/b\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "aoe.target[1]");
        let long = "y".repeat(1025);
        let e = load(&format!(
            "{base}[[aoe.target]]\nshelf = 2\nslot = 3\npath = \"/a\"\nconfig_string = \"{long}\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "aoe.target[0].config_string");
        let e = load("[aoe]\ninterfaces = []\n").unwrap_err();
        assert_eq!(e.key, "aoe.interfaces");
        let e = load(&format!("{base}io_threads = 0\n")).unwrap_err();
        assert_eq!(e.key, "aoe.io_threads");
        let e = load("[tftpd]\nroot = \"/x\"\n").unwrap_err();
        assert_eq!(e.key, "aoe");
    }
}
