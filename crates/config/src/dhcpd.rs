//! `[dhcpd]`: the DHCPv4 server's section (leases, subnets, PXE/iPXE boot
//! settings, per-profile overrides, reservations by client identifier).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[dhcpd]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DhcpdSection {
    /// Interfaces to serve on.
    pub interfaces: Vec<String>,
    #[serde(default, rename = "subnet")]
    pub subnets: Vec<DhcpSubnet>,
    /// Lease database file (default `<state_dir>/dhcpd.leases`).
    #[serde(default)]
    pub lease_db: Option<PathBuf>,
    /// Lease time in seconds handed to clients (option 51).
    #[serde(default = "default_lease_time")]
    pub lease_time: u32,
    /// T1 (option 58); default half the lease time.
    #[serde(default)]
    pub renew_time: Option<u32>,
    /// T2 (option 59); default 7/8 of the lease time.
    #[serde(default)]
    pub rebind_time: Option<u32>,
    /// How long an offered address stays reserved for the client, seconds.
    #[serde(default = "default_offer_hold")]
    pub offer_hold: u32,
    /// How long an address declined by a client (RFC 2131 §3.1.5) stays unused.
    #[serde(default = "default_decline_hold")]
    pub decline_hold: u32,
    /// Most addresses (leases plus outstanding offers) one hardware address may
    /// hold at once, whatever client identifiers it sends.
    #[serde(default = "default_max_leases_per_mac")]
    pub max_leases_per_mac: u32,
    /// Packets per second accepted from one hardware address (token bucket,
    /// burst of the same size); more are dropped and counted.
    #[serde(default = "default_rate_per_mac")]
    pub rate_per_mac: u32,
    /// Override the server identifier (default: the address of the interface the
    /// request came in on).
    #[serde(default)]
    pub server_id: Option<Ipv4Addr>,
    /// Default DNS servers (option 6).
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Default domain name (option 15).
    #[serde(default)]
    pub domain: Option<String>,
    /// Answer only PXE/HTTP boot clients with boot information and no address
    /// (for networks that already run a DHCP server); also listens on 4011.
    #[serde(default)]
    pub proxy: bool,
    /// NAK requests for addresses this server does not know on its networks.
    #[serde(default = "yes")]
    pub authoritative: bool,
    /// Network-boot settings shared by every subnet.
    #[serde(default)]
    pub boot: DhcpBoot,
    /// Per-profile boot overrides (`name` is a `[[profile]]`).
    #[serde(default, rename = "profile")]
    pub profiles: Vec<DhcpProfile>,
    /// Reservations by client identifier (reservations by MAC come from `[[host]]`).
    #[serde(default, rename = "reservation")]
    pub reservations: Vec<DhcpReservation>,
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
    /// DNS servers for this subnet (default: `[dhcpd] dns`).
    #[serde(default)]
    pub dns: Option<Vec<Ipv4Addr>>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub lease_time: Option<u32>,
    /// Boot overrides for this subnet.
    #[serde(default)]
    pub boot: Option<DhcpBoot>,
}

/// `[dhcpd.boot]` (and the `boot` table of a subnet): what network-boot clients get.
/// Every key is optional; the most specific setting wins (profile, subnet, section,
/// built-in default).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DhcpBoot {
    /// TFTP server (siaddr and option 66); default: the server identifier.
    #[serde(default)]
    pub tftp_server: Option<Ipv4Addr>,
    /// `http://host[:port][/dir]`: when set, iPXE scripts and UEFI HTTP boot
    /// files are given as URLs below it.
    #[serde(default)]
    pub http_base: Option<String>,
    /// Boot file for BIOS PXE (option 93 = 0); default `undionly.kpxe`.
    #[serde(default)]
    pub bios: Option<String>,
    /// Boot file for x86-64 UEFI (7, 9) and UEFI HTTP (16); default `ipxe.efi`.
    #[serde(default)]
    pub efi_x64: Option<String>,
    /// Boot file for 32-bit x86 UEFI (6, 15); default `ipxe-i386.efi`.
    #[serde(default)]
    pub efi_ia32: Option<String>,
    /// Boot file for ARM64 UEFI (11, 19); default `ipxe-arm64.efi`.
    #[serde(default)]
    pub efi_arm64: Option<String>,
    /// Script for an iPXE client that is not in the inventory; default `boot.ipxe`
    /// (inventory hosts get `hosts/<aa-bb-cc-dd-ee-ff>.ipxe`).
    #[serde(default)]
    pub unknown_host_script: Option<String>,
}

/// `[[dhcpd.profile]]`: boot overrides for the hosts of one `[[profile]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DhcpProfile {
    pub name: String,
    #[serde(default)]
    pub boot: DhcpBoot,
    /// Explicit root path (option 17); default: derived from the profile's
    /// transport and the `[iscsi]`/`[aoe]` targets serving its image.
    #[serde(default)]
    pub root_path: Option<String>,
}

/// `[[dhcpd.reservation]]`: a fixed address for a client identifier (option 61).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DhcpReservation {
    /// Hex bytes, `01:52:54:00:12:34:56` (separators `:` or `-` optional).
    pub client_id: String,
    pub address: Ipv4Addr,
}

fn default_lease_time() -> u32 {
    3600
}
fn default_offer_hold() -> u32 {
    30
}
fn default_decline_hold() -> u32 {
    600
}
fn default_max_leases_per_mac() -> u32 {
    2
}
fn default_rate_per_mac() -> u32 {
    20
}
fn yes() -> bool {
    true
}
