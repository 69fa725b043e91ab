//! anyboot-nbd-server: an NBD server per the NBD protocol document
//! (`doc/proto.md` of the NetworkBlockDevice project, with the
//! `EXTENDED_HEADERS` extension): fixed newstyle handshake, STARTTLS,
//! structured and extended replies, `base:allocation` block status, serving
//! devices from `anyboot-images` (shared images, throwaway or persistent
//! overlays).
//!
//! Layout: [`proto`] holds the sans-IO cores (handshake and transmission),
//! [`exec`] performs one request on a block device, [`server`] is the tokio
//! driver and [`config`] the runtime configuration.
//!
//! Embedding it:
//!
//! ```no_run
//! use std::sync::Arc;
//! use anyboot_nbd_server::{Config, ExportConfig, Server};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = Config::new(vec!["127.0.0.1:0".parse()?]);
//! config.exports.push(ExportConfig::file("root", "/srv/root.raw".as_ref(), true));
//! let ram = anyboot_images::raw::RawFile::memory(64 << 20)?;
//! config.exports.push(ExportConfig::device("scratch", Arc::new(ram)));
//! let server = Server::bind(config).await?;
//! println!("serving on {:?}", server.local_addr());
//! server.run(async { tokio::signal::ctrl_c().await.unwrap() }).await?;
//! # Ok(()) }
//! ```

pub mod config;
mod copy_gate;
pub mod exec;
pub mod proto;
pub mod server;
pub mod threaded;

pub use config::{Config, ExportConfig};
pub use server::{Error, Server};
