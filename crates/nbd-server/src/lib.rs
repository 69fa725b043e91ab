//! anyboot-nbd-server: NBD server per the NBD protocol document.
//!
//! Skeleton: binds its listeners and runs until shutdown; the protocol core is
//! built in its own issue.

use std::future::Future;

pub use anyboot_config::Site;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    _private: (),
}

impl Server {
    /// Runs until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        shutdown.await;
        Ok(())
    }
}
