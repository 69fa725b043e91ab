//! Embedding anyboot: a TFTP server and an NBD server (a RAM disk) in one tokio
//! runtime of your own program, both stopped by one shutdown signal.
//!
//! `cargo run -p anyboot-tests --example embed`, then from another terminal:
//! `nbdinfo nbd://127.0.0.1:PORT/scratch` and `curl tftp://127.0.0.1:PORT/hello.txt`
//! with the ports it prints. Ctrl-C stops both.

use std::sync::Arc;

use anyboot_images::raw::RawFile;
use anyboot_nbd_server::{Config as NbdConfig, ExportConfig, Server as NbdServer};
use anyboot_tftpd::{Config as TftpConfig, Server as TftpServer};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    std::fs::write(
        root.path().join("hello.txt"),
        "hello from an embedded anyboot\n",
    )?;

    let tftp = TftpServer::bind(TftpConfig::new("127.0.0.1:0".parse()?, root.path())).await?;
    let mut nbd_config = NbdConfig::new(vec!["127.0.0.1:0".parse()?]);
    nbd_config.exports.push(ExportConfig::device(
        "scratch",
        Arc::new(RawFile::memory(64 << 20)?),
    ));
    let nbd = NbdServer::bind(nbd_config).await?;
    println!("tftp://{}/hello.txt", tftp.local_addr());
    println!(
        "nbd://{}/scratch",
        nbd.local_addr().expect("a TCP listener")
    );

    // One shutdown signal, many servers: each gets a future that resolves when
    // the watch channel flips.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tftp_task = tokio::spawn(tftp.run(stopped(stop_rx.clone())));
    let nbd_task = tokio::spawn(nbd.run(stopped(stop_rx)));

    // Stop after Ctrl-C, or at once when run as a smoke test.
    if std::env::var_os("ANYBOOT_EMBED_SMOKE").is_none() {
        tokio::signal::ctrl_c().await?;
    }
    stop_tx.send(true)?;
    tftp_task.await??;
    nbd_task.await??;
    Ok(())
}
