//! `[tftpd]`: the TFTP (and boot-tree HTTP) server's section.
//!
//! File types only; the daemon turns them into validated runtime types
//! (regexes compiled, CIDRs parsed) and names the key when that fails.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[tftpd]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TftpdSection {
    /// UDP addresses to listen on.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Directory served (relative paths are relative to the config file).
    pub root: PathBuf,
    /// TCP addresses of the HTTP listener for the same boot tree (none: off).
    #[serde(default)]
    pub http_listen: Vec<SocketAddr>,
    /// Run every transfer on the listening port (for NAT and containers)
    /// instead of one ephemeral port per transfer.
    #[serde(default)]
    pub single_port: bool,
    /// Most concurrent TFTP transfers; further requests are dropped (the
    /// client retries).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Path MTU: caps blksize at MTU - IP - UDP - TFTP headers. 0: no cap.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Largest blksize granted (8..=65464).
    #[serde(default = "default_max_blksize")]
    pub max_blksize: u16,
    /// Largest windowsize granted (RFC 7440; 1..=65535).
    #[serde(default = "default_max_windowsize")]
    pub max_windowsize: u16,
    /// Retransmission timeout in milliseconds when the client asks for none.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retransmissions of one packet before the transfer is abandoned.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Bytes of file contents kept in memory and shared between transfers.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// Files larger than this are read per transfer instead of cached.
    #[serde(default = "default_cache_max_file")]
    pub cache_max_file: u64,
    /// Serve the virtual per-host files generated from the inventory.
    #[serde(default = "yes")]
    pub boot_tree: bool,
    /// Address iPXE scripts put in `sanboot iscsi:` URLs (default: iPXE's
    /// `${next-server}`, the TFTP server it booted from).
    #[serde(default)]
    pub san_server: Option<String>,
    /// Most concurrent HTTP connections.
    #[serde(default = "default_http_max_connections")]
    pub http_max_connections: usize,
    /// Milliseconds in-flight transfers get to finish on shutdown.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Microseconds a transfer polls for the client's next packet before it
    /// sleeps, while at most half the CPUs have a transfer to serve (an idle
    /// CPU is slow to wake; like Linux's `SO_BUSY_POLL`). 0: never; at most
    /// 1000.
    #[serde(default = "default_busy_poll_us")]
    pub busy_poll_us: u32,
    /// Write requests: refused unless this table is present.
    #[serde(default)]
    pub upload: Option<TftpdUpload>,
    /// Filename rewriting rules, applied in order (like tftpd-hpa's map file).
    #[serde(default)]
    pub remap: Vec<TftpdRemap>,
    /// Per-client-class option caps; the first matching class applies.
    #[serde(default, rename = "class")]
    pub classes: Vec<TftpdClass>,
}

/// `[tftpd.upload]`: where write requests may go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TftpdUpload {
    /// Directory uploads are written into (relative to the config file).
    pub dir: PathBuf,
    /// Replace existing files.
    #[serde(default)]
    pub overwrite: bool,
    /// Largest accepted upload in bytes.
    #[serde(default = "default_max_upload")]
    pub max_size: u64,
}

/// `[[tftpd.remap]]`: rewrite a requested name.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TftpdRemap {
    /// Regular expression matched against the name (after `\` -> `/`).
    pub pattern: String,
    /// Replacement (`$1`, `${name}` refer to groups).
    #[serde(default)]
    pub replace: String,
    /// Stop processing rules after this one matched.
    #[serde(default)]
    pub stop: bool,
    /// Refuse names that match (access violation).
    #[serde(default)]
    pub deny: bool,
}

/// `[[tftpd.class]]`: a class of clients with its own option caps (some
/// firmware asks for a blksize it cannot handle).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TftpdClass {
    pub name: String,
    /// Client addresses or CIDRs (`10.0.0.0/24`, `fd00::/64`); empty: any.
    #[serde(default)]
    pub clients: Vec<String>,
    /// Regular expression on the requested name; absent: any.
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub max_blksize: Option<u16>,
    #[serde(default)]
    pub max_windowsize: Option<u16>,
    /// `false`: ignore every option (plain RFC 1350 transfer).
    #[serde(default = "yes")]
    pub options: bool,
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 69))]
}
fn default_max_sessions() -> usize {
    512
}
fn default_mtu() -> u32 {
    1500
}
fn default_max_blksize() -> u16 {
    65464
}
fn default_max_windowsize() -> u16 {
    64
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_retries() -> u32 {
    5
}
fn default_cache_bytes() -> u64 {
    1 << 30
}
fn default_cache_max_file() -> u64 {
    512 << 20
}
fn default_http_max_connections() -> usize {
    256
}
fn default_shutdown_grace_ms() -> u64 {
    2000
}
fn default_busy_poll_us() -> u32 {
    50
}
fn default_max_upload() -> u64 {
    64 << 20
}
fn yes() -> bool {
    true
}

impl TftpdSection {
    /// A section with every default and the given root (for building in code).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self {
            listen: default_listen(),
            root: root.into(),
            http_listen: Vec::new(),
            single_port: false,
            max_sessions: default_max_sessions(),
            mtu: default_mtu(),
            max_blksize: default_max_blksize(),
            max_windowsize: default_max_windowsize(),
            timeout_ms: default_timeout_ms(),
            retries: default_retries(),
            cache_bytes: default_cache_bytes(),
            cache_max_file: default_cache_max_file(),
            boot_tree: true,
            san_server: None,
            http_max_connections: default_http_max_connections(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            busy_poll_us: default_busy_poll_us(),
            upload: None,
            remap: Vec::new(),
            classes: Vec::new(),
        }
    }
}
