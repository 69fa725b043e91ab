//! The server's runtime configuration: buildable in code, or from the site
//! file's `[nbd]` section (see `anyboot_config::nbd`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyboot_config::nbd::NbdTlsMode;
use anyboot_config::{ConfigError, DiskModeName, Site};
use anyboot_images::{BlockDevice, DiskMode, DiskSpec};

use crate::proto::TlsMode;

/// Everything a [`crate::Server`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP addresses to listen on (may be empty when `unix` is set).
    pub listen: Vec<SocketAddr>,
    /// A Unix socket to listen on.
    pub unix: Option<PathBuf>,
    pub exports: Vec<ExportConfig>,
    /// Certificate and key for STARTTLS; without them TLS is refused.
    pub tls: Option<TlsFiles>,
    /// Connections served at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Request and reply bytes in flight per connection.
    pub max_inflight_bytes: u64,
    /// Threads per plain (non-TLS) connection in transmission: requests in
    /// flight at once (TLS connections use the blocking pool instead).
    pub io_threads: usize,
    /// A client must finish option haggling within this time.
    pub handshake_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Stable client names for persistent overlays, by address (from the
    /// site's `[[host]]` entries); other clients are keyed by address.
    pub host_names: HashMap<IpAddr, String>,
}

/// PEM files for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One export.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub name: String,
    pub description: Option<String>,
    pub backing: Backing,
    /// `None`: `Optional` when the server has TLS, else `Off`.
    pub tls: Option<TlsMode>,
}

/// Where an export's data lives.
#[derive(Debug, Clone)]
pub enum Backing {
    /// An image attached per the images library's rules (shared, throwaway
    /// overlay per connection, persistent overlay per client).
    Disk(DiskSpec),
    /// An already open device shared by every connection (tests, RAM disks).
    Device(Arc<dyn BlockDevice>),
}

impl ExportConfig {
    /// A shared export of a raw file.
    pub fn file(name: &str, path: &Path, read_only: bool) -> Self {
        Self {
            name: name.to_owned(),
            description: None,
            backing: Backing::Disk(DiskSpec {
                image: path.to_owned(),
                read_only,
                mode: DiskMode::Shared,
                overlay_dir: PathBuf::new(),
            }),
            tls: None,
        }
    }

    /// An export of an open device.
    pub fn device(name: &str, device: Arc<dyn BlockDevice>) -> Self {
        Self {
            name: name.to_owned(),
            description: None,
            backing: Backing::Device(device),
            tls: None,
        }
    }
}

impl Config {
    /// A configuration listening on `listen` with no exports yet.
    pub fn new(listen: Vec<SocketAddr>) -> Self {
        Self {
            listen,
            unix: None,
            exports: Vec::new(),
            tls: None,
            max_connections: 256,
            max_inflight_bytes: 64 << 20,
            io_threads: 16,
            handshake_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(2),
            host_names: HashMap::new(),
        }
    }

    /// The `[nbd]` section of a site; an absent section gives a
    /// configuration with no listeners and no exports.
    pub fn from_site(site: &Site) -> Result<Self, ConfigError> {
        let mut c = Config::new(Vec::new());
        for h in &site.hosts {
            if let Some(a) = h.address {
                c.host_names.insert(IpAddr::V4(a), h.name.clone());
            }
        }
        let Some(s) = &site.nbd else {
            return Ok(c);
        };
        let base = site.source.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.to_owned()
            }
        };
        c.listen = s.listen.clone();
        c.unix = s.unix.clone();
        c.max_connections = s.max_connections;
        c.max_inflight_bytes = s.max_inflight_bytes;
        c.io_threads = s.io_threads;
        if !(1..=256).contains(&c.io_threads) {
            return Err(site.error("nbd.io_threads", "must be between 1 and 256"));
        }
        if c.max_connections == 0 {
            return Err(site.error("nbd.max_connections", "must be at least 1"));
        }
        if c.max_inflight_bytes < (1 << 20) {
            return Err(site.error("nbd.max_inflight_bytes", "must be at least 1 MiB"));
        }
        c.tls = match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: resolve(cert),
                key: resolve(key),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(site.error("nbd.tls_key", "tls_cert needs tls_key as well"))
            }
            (None, Some(_)) => {
                return Err(site.error("nbd.tls_cert", "tls_key needs tls_cert as well"))
            }
        };
        let overlay_root = s
            .overlay_dir
            .as_deref()
            .map(resolve)
            .unwrap_or_else(|| site.state_dir().join("nbd"));
        for (i, e) in s.exports.iter().enumerate() {
            let key = format!("nbd.export[{i}]");
            let (image, img_desc) = match (&e.image, &e.path) {
                (Some(name), None) => {
                    let img = site.image(name).ok_or_else(|| {
                        site.error(format!("{key}.image"), format!("no [[image]] `{name}`"))
                    })?;
                    (img.path.clone(), img.description.clone())
                }
                (None, Some(p)) => (resolve(p), None),
                _ => {
                    return Err(site.error(key, "give exactly one of `image` and `path`"));
                }
            };
            let tls = match e.tls {
                None => None,
                Some(NbdTlsMode::Off) => Some(TlsMode::Off),
                Some(m) => {
                    if c.tls.is_none() {
                        return Err(site.error(
                            format!("{key}.tls"),
                            "TLS needs nbd.tls_cert and nbd.tls_key",
                        ));
                    }
                    Some(if m == NbdTlsMode::Required {
                        TlsMode::Required
                    } else {
                        TlsMode::Optional
                    })
                }
            };
            if e.name.len() > anyboot_wire::nbd::MAX_STRING {
                return Err(site.error(format!("{key}.name"), "longer than 4096 bytes"));
            }
            c.exports.push(ExportConfig {
                name: e.name.clone(),
                description: e.description.clone().or(img_desc),
                backing: Backing::Disk(DiskSpec {
                    image,
                    read_only: e.read_only,
                    mode: disk_mode(e.disk),
                    overlay_dir: overlay_root.join(path_safe(&e.name)),
                }),
                tls,
            });
        }
        Ok(c)
    }

    /// Checks what can be checked without opening files.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.is_empty() && self.unix.is_none() {
            return Err("nothing to listen on: give --listen or --unix".into());
        }
        if self.exports.is_empty() {
            return Err("no exports: give --export NAME=PATH or [[nbd.export]]".into());
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.exports {
            if !seen.insert(&e.name) {
                return Err(format!("export `{}` is defined twice", e.name));
            }
            if matches!(e.tls, Some(TlsMode::Optional | TlsMode::Required)) && self.tls.is_none() {
                return Err(format!(
                    "export `{}` wants TLS but no certificate is configured",
                    e.name
                ));
            }
        }
        Ok(())
    }
}

/// Maps the site's disk mode names.
pub fn disk_mode(m: DiskModeName) -> DiskMode {
    match m {
        DiskModeName::Shared => DiskMode::Shared,
        DiskModeName::Throwaway => DiskMode::Throwaway,
        DiskModeName::Persistent => DiskMode::Persistent,
    }
}

/// A string usable as one path component or overlay key: anything but
/// `[A-Za-z0-9._-]` becomes `_`, and it never starts with a dot.
pub fn path_safe(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(text: &str) -> Result<Config, ConfigError> {
        let s = Site::from_toml_str(text, Path::new("/etc/anyboot/site.toml"))?;
        Config::from_site(&s)
    }

    #[test]
    fn exports_resolve_images_modes_and_tls() {
        let c = site(
            r#"
            [site]
            state_dir = "/var/lib/ab"
            [[image]]
            name = "base"
            path = "img/base.raw"
            description = "Debian"
            [[host]]
            name = "pc1"
            mac = "52:54:00:00:00:01"
            address = "10.0.0.5"
            [nbd]
            listen = ["127.0.0.1:10809"]
            tls_cert = "tls/cert.pem"
            tls_key = "tls/key.pem"
            [[nbd.export]]
            name = "root/pc"
            image = "base"
            disk = "persistent"
            tls = "required"
            [[nbd.export]]
            name = "scratch"
            path = "/srv/scratch.raw"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.tls.as_ref().unwrap().cert,
            Path::new("/etc/anyboot/tls/cert.pem")
        );
        let Backing::Disk(spec) = &c.exports[0].backing else {
            panic!()
        };
        assert_eq!(spec.image, Path::new("/etc/anyboot/img/base.raw"));
        assert_eq!(spec.mode, DiskMode::Persistent);
        assert_eq!(spec.overlay_dir, Path::new("/var/lib/ab/nbd/root_pc"));
        assert_eq!(c.exports[0].description.as_deref(), Some("Debian"));
        assert_eq!(c.exports[0].tls, Some(TlsMode::Required));
        assert_eq!(c.exports[1].tls, None);
        assert_eq!(c.host_names[&"10.0.0.5".parse::<IpAddr>().unwrap()], "pc1");
        c.validate().unwrap();
    }

    #[test]
    fn tls_without_certificate_is_named() {
        let e = site("[nbd]\n[[nbd.export]]\nname = \"a\"\npath = \"/x\"\ntls = \"optional\"\n")
            .unwrap_err();
        assert_eq!(e.key, "nbd.export[0].tls");
        let e = site("[nbd]\ntls_cert = \"c.pem\"\n").unwrap_err();
        assert_eq!(e.key, "nbd.tls_key");
        let e = site("[nbd]\n[[nbd.export]]\nname = \"a\"\npath = \"/x\"\ntls = \"sometimes\"\n")
            .unwrap_err();
        assert!(e.key.starts_with("nbd.export"), "{e}");
    }

    #[test]
    fn path_safe_keeps_keys_inside_their_directory() {
        assert_eq!(path_safe("../etc"), "_.._etc");
        assert_eq!(path_safe("a/b"), "a_b");
        assert_eq!(path_safe(""), "_");
        assert_eq!(path_safe("fe80::1"), "fe80__1");
    }
}
