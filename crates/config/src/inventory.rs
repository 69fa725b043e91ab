//! The shared inventory: base images, boot profiles and hosts. One source of
//! truth for DHCP (boot files, root paths), TFTP/HTTP (per-host menus and
//! scripts) and the block targets (which disk a host gets).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::MacAddr;

/// `[[image]]`: a base disk image that profiles boot from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Name that profiles and exports refer to.
    pub name: String,
    /// The image file (relative paths are relative to the config file).
    pub path: PathBuf,
    /// Free text shown in export listings.
    #[serde(default)]
    pub description: Option<String>,
}

/// How a host's disk relates to its profile's base image.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiskModeName {
    /// A fresh copy-on-write overlay at every boot, discarded afterwards.
    #[default]
    Throwaway,
    /// One overlay per host, kept across reboots.
    Persistent,
    /// The base image itself, shared (read-only unless the export says otherwise).
    Shared,
}

/// Which block protocol a profile's disk is attached with.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Nbd,
    Iscsi,
    Aoe,
}

/// `[[profile.variant]]`: one entry of a host's boot menu.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Short identifier (menu key, iPXE label).
    pub name: String,
    /// Text shown in the menu.
    #[serde(default)]
    pub label: Option<String>,
    /// Kernel path inside the boot tree (Linux boot) ...
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Vec<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
    /// ... or boot the profile's disk directly (iPXE `sanboot`).
    #[serde(default)]
    pub sanboot: bool,
    /// Overrides the profile's image for this variant.
    #[serde(default)]
    pub image: Option<String>,
}

/// `[[profile]]`: how a class of hosts boots and which disk it gets.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    /// Base image (an `[[image]]` name) of the root disk, if the profile has one.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub disk: DiskModeName,
    /// Protocol the disk is reached with.
    #[serde(default)]
    pub transport: Option<Transport>,
    /// Boot menu entries; a single entry boots without a menu.
    #[serde(default, rename = "variant")]
    pub variants: Vec<Variant>,
    /// Name of the variant booted when the menu times out (default: the first).
    #[serde(default)]
    pub default_variant: Option<String>,
    /// Seconds the menu waits before booting the default (0: no menu).
    #[serde(default = "default_menu_timeout")]
    pub menu_timeout: u32,
}

fn default_menu_timeout() -> u32 {
    5
}

/// `[[host]]`: one machine of the site.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: String,
    pub mac: MacAddr,
    /// Reserved IPv4 address (handed out by dhcpd).
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// A `[[profile]]` name.
    #[serde(default)]
    pub profile: Option<String>,
    /// Overrides the profile's default variant for this host.
    #[serde(default)]
    pub variant: Option<String>,
}
