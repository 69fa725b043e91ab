//! Glue shared by the `anyboot-*` binaries (and only by them: libraries never
//! install a subscriber or read signals).
//!
//! Every binary flattens [`CommonArgs`] into its clap parser, calls
//! [`CommonArgs::init_logging`], loads the site file with
//! [`CommonArgs::load_site`] and runs its server until [`shutdown_signal`].
//! Daemons that move large I/O buffers first call [`keep_io_buffers`].

use std::path::PathBuf;

use anyboot_config::Site;
use clap::Args;

/// Flags every daemon binary has.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Site configuration file (TOML). The daemon reads the shared inventory and
    /// its own section; command-line flags override the file.
    #[arg(short, long, value_name = "FILE", env = "ANYBOOT_CONFIG")]
    pub config: Option<PathBuf>,

    /// Validate the configuration (file and flags), print the result and exit:
    /// 0 if valid, 1 with a message naming the file, the key and the problem.
    #[arg(long)]
    pub check_config: bool,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less log output (-q: warnings and errors only, -qq: errors only).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub quiet: u8,
}

impl CommonArgs {
    /// Installs the global `tracing` subscriber: human-readable lines on stderr,
    /// level from -v/-q unless RUST_LOG is set.
    pub fn init_logging(&self) {
        let level = match (self.verbose, self.quiet) {
            (0, 0) => "info",
            (1, _) => "debug",
            (v, _) if v >= 2 => "trace",
            (_, 1) => "warn",
            _ => "error",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colours only on a terminal: journald, files and `xtask up`'s
            // prefixed pipes get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .init();
    }

    /// Loads the site file if one was given.
    pub fn load_site(&self) -> Result<Option<Site>, anyboot_config::ConfigError> {
        self.config.as_deref().map(Site::load).transpose()
    }
}

/// Ends a `--check-config` run: prints the verdict and exits 0 or 1.
pub fn finish_check(result: Result<String, impl std::fmt::Display>) -> ! {
    match result {
        Ok(summary) => {
            println!("configuration OK: {summary}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(1)
        }
    }
}

/// Installs the SIGINT, SIGTERM and SIGHUP handlers now and returns a future
/// that resolves on the first SIGINT or SIGTERM. Call it before binding, so a
/// signal that arrives while the daemon starts is handled too. A SIGHUP (which
/// would otherwise end the process: `systemctl reload`, a closed terminal) is
/// logged and ignored: for daemons that cannot reload their configuration
/// (the others use [`shutdown_and_hangups`]). Must be called inside a tokio
/// runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let (shutdown, mut hup) = shutdown_and_hangups();
    async move {
        let ignore = async {
            while hup.recv().await.is_some() {
                tracing::warn!(
                    "SIGHUP ignored: this daemon does not reload its configuration; restart it to apply changes"
                );
            }
        };
        tokio::select! {
            _ = shutdown => {}
            _ = ignore => {}
        }
    }
}

/// Installs the SIGINT, SIGTERM and SIGHUP handlers now; returns the
/// shutdown future (first SIGINT or SIGTERM) and the SIGHUPs, for
/// [`reload_on_hangup`]. Must be called inside a tokio runtime.
pub fn shutdown_and_hangups() -> (
    impl std::future::Future<Output = ()>,
    tokio::signal::unix::Signal,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    let shutdown = async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "shutting down");
    };
    (shutdown, hup)
}

/// On every SIGHUP runs `reload` (rebuild the configuration from the same
/// flags and site file, apply what can change while running) and logs what
/// it says: what was reloaded, or why nothing was (the running configuration
/// stays). Runs until the signal stream ends; spawn it.
pub async fn reload_on_hangup<F, Fut>(mut hup: tokio::signal::unix::Signal, mut reload: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    while hup.recv().await.is_some() {
        match reload().await {
            Ok(what) => tracing::info!("SIGHUP: {what}"),
            Err(e) => {
                tracing::warn!("SIGHUP: reload failed; keeping the running configuration: {e}")
            }
        }
    }
}

/// Parses `NAME=PATH[,ro]` (`--export`, `--lun`, `--target` flags).
pub fn parse_image_flag(s: &str) -> Result<(String, PathBuf, bool), String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=PATH[,ro]"))?;
    if name.is_empty() {
        return Err(format!("`{s}`: the name before `=` is empty"));
    }
    let (path, ro) = match rest.rsplit_once(',') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        Some((_, opt)) => return Err(format!("`{s}`: unknown option `{opt}` (only `ro` or `rw`)")),
        None => (rest, false),
    };
    if path.is_empty() {
        return Err(format!("`{s}`: the path after `=` is empty"));
    }
    Ok((name.to_owned(), PathBuf::from(path), ro))
}

/// Makes glibc's allocator keep freed I/O buffers for reuse instead of handing
/// them back to the kernel after every command. Call it once, first thing in
/// `main`; embedders with the same traffic should do the same.
///
/// Why: a block target allocates a buffer per large request (up to a few MiB)
/// on one thread and frees it on another after the reply is written. With
/// glibc's defaults, those frees keep trimming the arena (madvise) and the
/// next allocation faults every page in again and zeroes it: on a RAM-backed
/// LUN, iSCSI 1 MiB reads went from about 1.7k to 2.5k IOPS and 128 KiB reads
/// from about 10k to 18k when the thresholds below were set (iscsi-perf,
/// loopback). Setting either threshold alone is worse than neither: a fixed
/// mmap threshold without a high trim threshold trims constantly, and the
/// reverse sends every buffer through mmap/munmap.
///
/// The cost: memory freed after a peak stays in the process (bounded by the
/// peak, which the daemons bound by their in-flight limits).
pub fn keep_io_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// Allocations up to this size come from the heap, not from mmap:
        /// glibc's own ceiling for its dynamic threshold.
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        /// Free memory at an arena's top that is kept, not trimmed.
        const TRIM_THRESHOLD: libc::c_int = 64 << 20;
        // SAFETY: mallopt only changes allocator parameters; called before the
        // daemon's threads start, and valid at any time anyway.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_flag_forms() {
        assert_eq!(
            parse_image_flag("disk=/a/b.raw").unwrap(),
            ("disk".into(), "/a/b.raw".into(), false)
        );
        assert_eq!(
            parse_image_flag("0=/a/b.raw,ro").unwrap(),
            ("0".into(), "/a/b.raw".into(), true)
        );
        assert!(parse_image_flag("=/x").is_err());
        assert!(parse_image_flag("x=").is_err());
        assert!(parse_image_flag("x=/y,rx").is_err());
        assert!(parse_image_flag("nothing").is_err());
    }
}
