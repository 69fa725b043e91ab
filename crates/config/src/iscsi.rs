//! `[iscsi]`: the iSCSI target's section.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::DiskModeName;

/// `[iscsi]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IscsiSection {
    /// TCP portals to listen on.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    #[serde(default, rename = "target")]
    pub targets: Vec<IscsiTarget>,
}

/// `[[iscsi.target]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IscsiTarget {
    pub iqn: String,
    #[serde(default, rename = "lun")]
    pub luns: Vec<IscsiLun>,
}

/// `[[iscsi.target.lun]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IscsiLun {
    pub lun: u16,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default = "shared")]
    pub disk: DiskModeName,
}

fn shared() -> DiskModeName {
    DiskModeName::Shared
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 3260))]
}
