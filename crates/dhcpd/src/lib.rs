//! anyboot-dhcpd: DHCPv4 server with PXE/UEFI/iPXE boot logic (RFC 2131, 2132, 4578).

pub mod config;
pub mod proto;

pub use anyboot_config::Site;
pub use config::Config;
