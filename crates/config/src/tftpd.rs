//! `[tftpd]`: the TFTP (and boot-tree HTTP) server's section.

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
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 69))]
}
