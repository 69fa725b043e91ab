//! `[aoe]`: the ATA-over-Ethernet target's section.

use std::path::PathBuf;

use serde::Deserialize;

use crate::{DiskModeName, MacAddr};

/// `[aoe]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AoeSection {
    /// Network interfaces to serve on (every target answers on all of them).
    pub interfaces: Vec<String>,
    /// Default Buffer Count of each target: storage requests it keeps in
    /// flight (reported by Query Config; more are dropped and retransmitted).
    #[serde(default = "default_buffer_count")]
    pub buffer_count: u16,
    /// Threads doing disk I/O off the packet loop.
    #[serde(default = "default_io_threads")]
    pub io_threads: usize,
    /// Most clients with their own overlay per target (throwaway/persistent).
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
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
    /// Initial Query Config string (at most 1024 bytes; initiators may change it).
    #[serde(default)]
    pub config_string: Option<String>,
    /// Initial MAC mask list: when not empty, only these hosts are answered.
    #[serde(default)]
    pub allowed_macs: Vec<MacAddr>,
    /// Overrides `[aoe] buffer_count` for this target.
    #[serde(default)]
    pub buffer_count: Option<u16>,
    /// Throwaway targets: seconds without I/O after which a client's ATA
    /// IDENTIFY counts as a new boot and gets a fresh overlay (default 10).
    #[serde(default)]
    pub reattach_gap: Option<u64>,
}

fn shared() -> DiskModeName {
    DiskModeName::Shared
}

fn default_buffer_count() -> u16 {
    64
}

fn default_io_threads() -> usize {
    2
}

fn default_max_clients() -> usize {
    256
}
