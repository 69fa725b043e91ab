//! anyboot-iscsi-target: an iSCSI target (RFC 7143) serving block images with CHAP,
//! ACLs, discovery and an SBC-3 command set.
//!
//! Layout: [`proto`] is the sans-IO core (framing, login, full feature phase,
//! SCSI emulation), [`server`] the tokio driver, [`config`] the runtime
//! configuration (from code or the site file).
//!
//! Embedding it:
//!
//! ```no_run
//! use std::sync::Arc;
//! use anyboot_iscsi_target::{Backing, Config, LunConfig, Server, TargetConfig};
//! use anyboot_images::raw::RawFile;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = Config::new("127.0.0.1:0".parse()?);
//! let mut target = TargetConfig::new("iqn.2026-11.org.anyboot:demo");
//! target.luns.push(LunConfig {
//!     lun: 0,
//!     removable: false,
//!     backing: Backing::Device(Arc::new(RawFile::memory(64 << 20)?)),
//! });
//! config.targets.push(target);
//! let server = Server::bind(config).await?;
//! println!("listening on {}", server.local_addr());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod proto;
pub mod server;

pub use config::{Backing, Config, LunConfig, TargetConfig};
pub use server::Server;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot open {what}: {source}")]
    Image {
        what: String,
        source: anyboot_images::Error,
    },
}
