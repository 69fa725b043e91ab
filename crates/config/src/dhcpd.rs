//! `[dhcpd]`: the DHCPv4 server's section.

use std::net::Ipv4Addr;

use serde::Deserialize;

/// `[dhcpd]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DhcpdSection {
    /// Interfaces to serve on.
    pub interfaces: Vec<String>,
    #[serde(default, rename = "subnet")]
    pub subnets: Vec<DhcpSubnet>,
}

/// `[[dhcpd.subnet]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DhcpSubnet {
    /// `10.0.0.0/24`
    pub network: String,
    pub pool_start: Ipv4Addr,
    pub pool_end: Ipv4Addr,
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
}
