//! The whole site file and its loading: parse, validate cross references,
//! resolve relative paths.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::aoe::AoeSection;
use crate::dhcpd::DhcpdSection;
use crate::iscsi::IscsiSection;
use crate::nbd::NbdSection;
use crate::tftpd::TftpdSection;
use crate::{ConfigError, Host, Image, Profile};

/// `[site]`: settings every daemon shares.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// Free-text name of the site, shown in logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Where daemons keep state: leases, per-host overlays, snapshots.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

/// A parsed and validated site configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Site {
    #[serde(default)]
    pub site: SiteSection,
    #[serde(default, rename = "image")]
    pub images: Vec<Image>,
    #[serde(default, rename = "profile")]
    pub profiles: Vec<Profile>,
    #[serde(default, rename = "host")]
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub tftpd: Option<TftpdSection>,
    #[serde(default)]
    pub dhcpd: Option<DhcpdSection>,
    #[serde(default)]
    pub nbd: Option<NbdSection>,
    #[serde(default)]
    pub iscsi: Option<IscsiSection>,
    #[serde(default)]
    pub aoe: Option<AoeSection>,
    /// The file this was read from (not a key of the file).
    #[serde(skip)]
    pub source: PathBuf,
}

impl Site {
    /// Reads, parses and validates a site file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "", format!("cannot read: {e}")))?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates `text` as if read from `path` (relative paths in it
    /// are resolved against `path`'s directory).
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut site: Site = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            ConfigError::new(path, key, e.into_inner().to_string().trim_end().to_owned())
        })?;
        site.source = path.to_owned();
        site.validate()?;
        site.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(site)
    }

    /// An error about `key` in this site's file.
    pub fn error(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.source, key, problem)
    }

    pub fn image(&self, name: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.name == name)
    }

    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    pub fn host_by_mac(&self, mac: &crate::MacAddr) -> Option<&Host> {
        self.hosts.iter().find(|h| h.mac == *mac)
    }

    /// The site's state directory (default `/var/lib/anyboot`).
    pub fn state_dir(&self) -> PathBuf {
        self.site
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/anyboot"))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        unique(
            self,
            self.images.iter().map(|i| i.name.as_str()),
            "image",
            "name",
        )?;
        unique(
            self,
            self.profiles.iter().map(|p| p.name.as_str()),
            "profile",
            "name",
        )?;
        unique(
            self,
            self.hosts.iter().map(|h| h.name.as_str()),
            "host",
            "name",
        )?;
        let macs: Vec<String> = self.hosts.iter().map(|h| h.mac.to_string()).collect();
        unique(self, macs.iter().map(String::as_str), "host", "mac")?;
        let addrs: Vec<String> = self
            .hosts
            .iter()
            .filter_map(|h| h.address)
            .map(|a| a.to_string())
            .collect();
        unique(self, addrs.iter().map(String::as_str), "host", "address")?;

        for (i, p) in self.profiles.iter().enumerate() {
            if let Some(img) = &p.image {
                if self.image(img).is_none() {
                    return Err(self.error(
                        format!("profile[{i}].image"),
                        format!("no [[image]] is named `{img}`"),
                    ));
                }
            }
            unique(
                self,
                p.variants.iter().map(|v| v.name.as_str()),
                &format!("profile[{i}].variant"),
                "name",
            )?;
            if let Some(d) = &p.default_variant {
                if !p.variants.iter().any(|v| &v.name == d) {
                    return Err(self.error(
                        format!("profile[{i}].default_variant"),
                        format!("profile `{}` has no variant named `{d}`", p.name),
                    ));
                }
            }
            for (j, v) in p.variants.iter().enumerate() {
                if v.sanboot == v.kernel.is_some() {
                    return Err(self.error(
                        format!("profile[{i}].variant[{j}]"),
                        "a variant needs either `kernel` or `sanboot = true` (not both)",
                    ));
                }
                if let Some(img) = &v.image {
                    if self.image(img).is_none() {
                        return Err(self.error(
                            format!("profile[{i}].variant[{j}].image"),
                            format!("no [[image]] is named `{img}`"),
                        ));
                    }
                }
            }
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if let Some(p) = &h.profile {
                let Some(profile) = self.profile(p) else {
                    return Err(self.error(
                        format!("host[{i}].profile"),
                        format!("no [[profile]] is named `{p}`"),
                    ));
                };
                if let Some(v) = &h.variant {
                    if !profile.variants.iter().any(|x| &x.name == v) {
                        return Err(self.error(
                            format!("host[{i}].variant"),
                            format!("profile `{p}` has no variant named `{v}`"),
                        ));
                    }
                }
            } else if h.variant.is_some() {
                return Err(self.error(format!("host[{i}].variant"), "a variant needs a `profile`"));
            }
        }
        if let Some(nbd) = &self.nbd {
            unique(
                self,
                nbd.exports.iter().map(|e| e.name.as_str()),
                "nbd.export",
                "name",
            )?;
            for (i, e) in nbd.exports.iter().enumerate() {
                self.check_backing(
                    &format!("nbd.export[{i}]"),
                    e.image.as_deref(),
                    e.path.is_some(),
                )?;
            }
        }
        if let Some(iscsi) = &self.iscsi {
            unique(
                self,
                iscsi.targets.iter().map(|t| t.iqn.as_str()),
                "iscsi.target",
                "iqn",
            )?;
            for (i, t) in iscsi.targets.iter().enumerate() {
                for (j, l) in t.luns.iter().enumerate() {
                    self.check_backing(
                        &format!("iscsi.target[{i}].lun[{j}]"),
                        l.image.as_deref(),
                        l.path.is_some(),
                    )?;
                }
            }
        }
        if let Some(aoe) = &self.aoe {
            for (i, t) in aoe.targets.iter().enumerate() {
                self.check_backing(
                    &format!("aoe.target[{i}]"),
                    t.image.as_deref(),
                    t.path.is_some(),
                )?;
                if t.shelf == 0xffff || t.slot == 0xff {
                    return Err(self.error(
                        format!("aoe.target[{i}]"),
                        "shelf 65535 and slot 255 are the broadcast addresses",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Exactly one of `image` and `path` must be given, and the image must exist.
    fn check_backing(
        &self,
        key: &str,
        image: Option<&str>,
        has_path: bool,
    ) -> Result<(), ConfigError> {
        match (image, has_path) {
            (Some(_), true) | (None, false) => Err(self.error(
                key,
                "give exactly one of `image` (an [[image]] name) and `path`",
            )),
            (Some(img), false) if self.image(img).is_none() => Err(self.error(
                format!("{key}.image"),
                format!("no [[image]] is named `{img}`"),
            )),
            _ => Ok(()),
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(d) = self.site.state_dir.as_mut() {
            fix(d);
        }
        for i in &mut self.images {
            fix(&mut i.path);
        }
        if let Some(t) = self.tftpd.as_mut() {
            fix(&mut t.root);
        }
        if let Some(n) = self.nbd.as_mut() {
            if let Some(u) = n.unix.as_mut() {
                fix(u);
            }
            n.exports
                .iter_mut()
                .filter_map(|e| e.path.as_mut())
                .for_each(fix);
        }
        if let Some(s) = self.iscsi.as_mut() {
            s.targets
                .iter_mut()
                .flat_map(|t| t.luns.iter_mut())
                .filter_map(|l| l.path.as_mut())
                .for_each(fix);
        }
        if let Some(a) = self.aoe.as_mut() {
            a.targets
                .iter_mut()
                .filter_map(|t| t.path.as_mut())
                .for_each(fix);
        }
    }
}

fn unique<'a>(
    site: &Site,
    names: impl Iterator<Item = &'a str>,
    table: &str,
    field: &str,
) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        if !seen.insert(n) {
            return Err(site.error(
                format!("{table}[{i}].{field}"),
                format!("`{n}` is used twice"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Site, ConfigError> {
        Site::from_toml_str(text, Path::new("/etc/anyboot/site.toml"))
    }

    #[test]
    fn typo_key_is_named_with_its_path() {
        let e = load("[tftpd]\nroot = \"x\"\nlisen = [\"127.0.0.1:69\"]\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("/etc/anyboot/site.toml: key `tftpd"),
            "{msg}"
        );
        assert!(msg.contains("unknown field `lisen`"), "{msg}");
    }

    #[test]
    fn bad_address_is_named_with_its_path() {
        let e = load("[tftpd]\nroot = \"x\"\nlisten = [\"127.0.0.300:69\"]\n").unwrap_err();
        assert_eq!(e.key, "tftpd.listen[0]", "{e}");
        assert!(e.problem.contains("invalid socket address"), "{e}");
    }

    #[test]
    fn dangling_profile_reference_is_an_error() {
        let e = load("[[host]]\nname = \"pc1\"\nmac = \"52:54:00:00:00:01\"\nprofile = \"nope\"\n")
            .unwrap_err();
        assert_eq!(e.key, "host[0].profile");
        assert!(e.problem.contains("`nope`"));
    }

    #[test]
    fn duplicate_macs_are_an_error() {
        let e = load(
            "[[host]]\nname = \"a\"\nmac = \"52:54:00:00:00:01\"\n\
             [[host]]\nname = \"b\"\nmac = \"52:54:00:00:00:01\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "host[1].mac");
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let s = load("[[image]]\nname = \"base\"\npath = \"img/base.raw\"\n").unwrap();
        assert_eq!(s.images[0].path, Path::new("/etc/anyboot/img/base.raw"));
    }
}
