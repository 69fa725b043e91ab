//! anyboot-tftpd: a TFTP server (RFC 1350 with the option RFCs 2347, 2348, 2349
//! and windowsize, RFC 7440) and an HTTP listener for the same boot tree: files
//! under a root plus virtual per-host files generated from the inventory.
//!
//! Each transfer on its own socket runs in a thread of tokio's blocking pool:
//! embedders should size it (`max_blocking_threads`) above `max_sessions`.
//!
//! Embedding it:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use anyboot_tftpd::{Config, Server};
//! let mut config = Config::new("127.0.0.1:0".parse()?, "/srv/tftp");
//! config.http_listen = vec!["127.0.0.1:0".parse()?];
//! let server = Server::bind(config).await?;
//! println!("tftp on {}, http on {:?}", server.local_addr(), server.http_addrs());
//! server.run(async { tokio::signal::ctrl_c().await.unwrap() }).await?;
//! # Ok(()) }
//! ```

mod busy_poll;
pub mod cache;
pub mod config;
mod http;
pub mod paths;
pub mod proto;
pub mod server;

pub use anyboot_config::Site;
pub use config::Config;
pub use server::{Error, ReloadHandle, Server};
