//! `[nbd]`: the NBD server's section.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::DiskModeName;

/// `[nbd]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NbdSection {
    /// TCP addresses to listen on.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Unix socket to listen on as well.
    #[serde(default)]
    pub unix: Option<PathBuf>,
    #[serde(default, rename = "export")]
    pub exports: Vec<NbdExport>,
    /// PEM certificate chain for STARTTLS (relative to the config file).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for STARTTLS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Where throwaway and persistent overlays live (default:
    /// `<site.state_dir>/nbd`), one subdirectory per export.
    #[serde(default)]
    pub overlay_dir: Option<PathBuf>,
    /// Connections served at once; more are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Request and reply bytes in flight per connection.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: u64,
    /// I/O threads per plain connection (requests served at once).
    #[serde(default = "default_io_threads")]
    pub io_threads: usize,
}

/// `[[nbd.export]]`: one export, backed by an `[[image]]` or a file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NbdExport {
    pub name: String,
    /// An `[[image]]` name ...
    #[serde(default)]
    pub image: Option<String>,
    /// ... or a file path.
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default = "shared")]
    pub disk: DiskModeName,
    #[serde(default)]
    pub description: Option<String>,
    /// `off` (plaintext only), `optional` or `required`. Default: `optional`
    /// when the section has a certificate, else `off`.
    #[serde(default)]
    pub tls: Option<NbdTlsMode>,
}

/// TLS policy of one export.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NbdTlsMode {
    Off,
    Optional,
    Required,
}

fn shared() -> DiskModeName {
    DiskModeName::Shared
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 10809))]
}

fn default_max_connections() -> usize {
    256
}

fn default_io_threads() -> usize {
    16
}

fn default_max_inflight_bytes() -> u64 {
    64 << 20
}
