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
}

fn shared() -> DiskModeName {
    DiskModeName::Shared
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 10809))]
}
