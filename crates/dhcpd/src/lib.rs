//! anyboot-dhcpd: a DHCPv4 server (RFC 2131/2132) with PXE, UEFI, UEFI HTTP
//! and iPXE boot logic (RFC 4578), durable leases, proxyDHCP and relays
//! (RFC 3046).
//!
//! Layout: [`proto`] is the sans-IO core (datagrams and time in, replies and
//! lease records out), [`store`] the append-only lease log with group commit,
//! [`server`] the tokio driver, [`config`] the runtime configuration.
//!
//! Embedding the server:
//!
//! ```no_run
//! use std::net::Ipv4Addr;
//! use anyboot_dhcpd::config::{Config, Subnet};
//!
//! # async fn demo() -> Result<(), anyboot_dhcpd::Error> {
//! let mut subnet = Subnet::new(
//!     Ipv4Addr::new(10, 0, 0, 0), 24,
//!     Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 199),
//! );
//! subnet.router = Some(Ipv4Addr::new(10, 0, 0, 1));
//! let config = Config {
//!     interfaces: vec!["eth0".into()],
//!     subnets: vec![subnet],
//!     lease_db: Some("/var/lib/anyboot/dhcpd.leases".into()),
//!     ..Config::default()
//! };
//! let server = anyboot_dhcpd::Server::bind(config).await?;
//! println!("listening on {:?}", server.local_addrs());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod config;
pub mod proto;
pub mod server;
pub mod store;

use std::path::PathBuf;

pub use anyboot_config::Site;
pub use config::Config;
pub use server::{ReloadError, ReloadHandle, Server};

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error("interface {name}: {source}")]
    Interface {
        name: String,
        source: std::io::Error,
    },
    #[error("lease database {}: {source}", path.display())]
    LeaseDb {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
}
