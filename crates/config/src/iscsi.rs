//! `[iscsi]`: the iSCSI target's section (targets, LUNs, CHAP, ACLs, limits).

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
    /// CHAP required for discovery sessions (SendTargets); none: discovery is open
    /// (but still lists only targets whose `allow` admits the initiator).
    #[serde(default)]
    pub discovery_chap: Option<IscsiChap>,
    /// Most TCP connections (= sessions, MaxConnections is 1) at once.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Commands a session may have in flight (the CmdSN window).
    #[serde(default = "default_queue_depth")]
    pub queue_depth: u32,
    /// Seconds of silence from an initiator before the target sends a NOP-In
    /// ping; a session that leaves two pings unanswered is dropped. 0: never.
    #[serde(default = "default_nop_interval")]
    pub nop_interval_secs: u64,
    /// Where throwaway and persistent per-initiator overlays live (default:
    /// `<site.state_dir>/overlays/iscsi`).
    #[serde(default)]
    pub overlay_dir: Option<PathBuf>,
}

/// CHAP credentials (RFC 7143 section 12.1.3): what the initiator must prove
/// (`user`/`secret`), and optionally what the target proves back in mutual
/// CHAP (`mutual_user`/`mutual_secret`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IscsiChap {
    pub user: String,
    pub secret: String,
    #[serde(default)]
    pub mutual_user: Option<String>,
    #[serde(default)]
    pub mutual_secret: Option<String>,
}

/// `[[iscsi.target]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IscsiTarget {
    pub iqn: String,
    /// TargetAlias sent at login.
    #[serde(default)]
    pub alias: Option<String>,
    /// Initiator names allowed to log in and to see this target in discovery;
    /// empty: every initiator.
    #[serde(default)]
    pub allow: Vec<String>,
    /// CHAP required to log in to this target; none: AuthMethod=None.
    #[serde(default)]
    pub chap: Option<IscsiChap>,
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
    /// Removable medium (RMB): START STOP UNIT can eject and load it,
    /// PREVENT ALLOW MEDIUM REMOVAL can lock it (virtual CD/USB media).
    #[serde(default)]
    pub removable: bool,
}

fn shared() -> DiskModeName {
    DiskModeName::Shared
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 3260))]
}

fn default_max_sessions() -> usize {
    256
}

fn default_queue_depth() -> u32 {
    64
}

fn default_nop_interval() -> u64 {
    30
}
