//! `[aoe]`: the ATA-over-Ethernet target's section.

use std::path::PathBuf;

use serde::Deserialize;

use crate::DiskModeName;

/// `[aoe]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AoeSection {
    /// Network interfaces to serve on.
    pub interfaces: Vec<String>,
    #[serde(default, rename = "target")]
    pub targets: Vec<AoeTarget>,
}

/// `[[aoe.target]]`: one shelf.slot device.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AoeTarget {
    pub shelf: u16,
    pub slot: u8,
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
