//! anyboot-aoe-target: an ATA over Ethernet (AoE revision 11) target on raw
//! Ethernet frames.
//!
//! [`proto`] is the sans-IO core (addressing, ATA, Query Config, MAC mask and
//! reserve lists); [`server`] drives it over AF_PACKET sockets ([`rawsock`])
//! with disk I/O on a thread pool; [`initiator`] is a small userspace AoE
//! initiator (used by tests and benchmarks) built on the wire module only.
//!
//! Embedding the target:
//!
//! ```no_run
//! use anyboot_aoe_target::{Config, Server, TargetConfig};
//!
//! # async fn demo() -> Result<(), anyboot_aoe_target::Error> {
//! let config = Config::new(
//!     vec!["eth0".into()],
//!     vec![TargetConfig::shared(1, 1, "/srv/disk.raw", false)],
//! );
//! let server = Server::bind(config).await?;
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod config;
pub mod initiator;
pub mod proto;
pub mod rawsock;
pub mod server;

pub use config::{Config, TargetConfig};
pub use server::{Error, Server};
