//! From an export description to a device for one client: the shared image
//! itself, a throwaway overlay that lives as long as the attachment, or a
//! persistent per-client overlay kept across restarts.

//!
//! The image may be a raw file, an overlay, or a versioned image directory
//! (see [`crate::versions`]), resolved to its current version at attach time.
//! Bases of throwaway and persistent overlays are frozen on first use
//! (`chain::freeze`), so nothing can modify what the overlays depend on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest, Sha256};

use crate::chain::{self, ImageKind};
use crate::overlay::{CreateOptions, Overlay};
use crate::raw::RawFile;
use crate::{versions, BlockDevice, Error, Result};

/// How clients of one export see its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskMode {
    /// Every client reads and writes the image itself.
    #[default]
    Shared,
    /// Each attachment gets a fresh copy-on-write overlay on the (read-only)
    /// image, discarded when the attachment ends: every boot is a clean system.
    Throwaway,
    /// Each client (by its key: host name, MAC, initiator IQN) gets its own
    /// overlay, kept across reconnects and server restarts.
    Persistent,
}

/// What a target needs to know to attach a client to an image.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// The base image (raw file, or an overlay made by this crate).
    pub image: PathBuf,
    /// Refuse writes (only meaningful in [`DiskMode::Shared`]).
    pub read_only: bool,
    pub mode: DiskMode,
    /// Where per-client overlays are kept (throwaway and persistent modes).
    pub overlay_dir: PathBuf,
}

/// A client's device. Dropping it ends the attachment (a throwaway overlay is
/// deleted then).
#[derive(Debug)]
pub struct Attachment {
    device: Arc<dyn BlockDevice>,
    /// The throwaway overlay file to delete when the attachment ends.
    throwaway: Option<PathBuf>,
    /// The file the client's writes go to (overlay), for logs and tools.
    overlay: Option<PathBuf>,
}

/// Suffix of throwaway overlay files.
const THROWAWAY_EXT: &str = "throwaway";
/// Suffix of persistent overlay files.
const PERSISTENT_EXT: &str = "overlay";

static THROWAWAY_SEQ: AtomicU64 = AtomicU64::new(0);

/// Persistent overlays open in this process, by path.
static PERSISTENT: Mutex<BTreeMap<PathBuf, Weak<dyn BlockDevice>>> = Mutex::new(BTreeMap::new());

impl Attachment {
    /// Attaches `client` (a stable key such as a MAC or IQN) according to `spec`.
    ///
    /// - Shared: the image itself (raw or overlay; writable unless
    ///   `read_only`; a writable overlay is exclusive, [`Error::Locked`]; a
    ///   writable raw image can be shared, but can then not be frozen as a
    ///   base until the last writer is gone, [`Error::Locked`]).
    /// - Throwaway: a fresh overlay `overlay_dir/<key>.<pid>.<n>.throwaway`
    ///   on the image, never synced, deleted when the attachment is dropped.
    /// - Persistent: `overlay_dir/<key>.overlay`, created on first use and
    ///   reused afterwards (on the base it was created on). Attachments of one
    ///   key in one process share one device; another process that has it
    ///   open makes this fail with [`Error::Locked`].
    ///
    /// `client` comes from the network: it is only used through
    /// [`sanitize_key`], so it can never name a file outside `overlay_dir`.
    pub fn open(spec: &DiskSpec, client: &str) -> Result<Self> {
        let image = versions::resolve(&spec.image)?;
        match spec.mode {
            DiskMode::Shared => {
                let device: Arc<dyn BlockDevice> = match chain::kind(&image)? {
                    ImageKind::Raw => {
                        let raw = RawFile::open(&image, spec.read_only)?;
                        // Writers take a *shared* lock: several connections of
                        // one export may share a writable raw image, as a disk
                        // would be shared, while freezing it (to put an overlay
                        // on it) or snapshotting it needs the exclusive lock and
                        // is refused meanwhile. Read-only opens take none, so
                        // they never keep an image from being frozen.
                        if !spec.read_only {
                            crate::lock::lock(raw.file(), crate::lock::LockKind::Shared, &image)?;
                        }
                        Arc::new(raw)
                    }
                    ImageKind::Overlay => Arc::new(Overlay::open(&image, spec.read_only)?),
                };
                Ok(Self {
                    device,
                    throwaway: None,
                    overlay: None,
                })
            }
            DiskMode::Throwaway => {
                std::fs::create_dir_all(&spec.overlay_dir)?;
                remove_stale_throwaways(&spec.overlay_dir);
                chain::freeze(&image)?;
                let name = format!(
                    "{}.{}.{}.{THROWAWAY_EXT}",
                    sanitize_key(client),
                    std::process::id(),
                    THROWAWAY_SEQ.fetch_add(1, Ordering::Relaxed)
                );
                let path = spec.overlay_dir.join(name);
                let ov = Overlay::create_volatile(&path, Some(&image), CreateOptions::default())?;
                tracing::debug!(client, overlay = %path.display(), "throwaway overlay attached");
                Ok(Self {
                    device: Arc::new(ov),
                    throwaway: Some(path.clone()),
                    overlay: Some(path),
                })
            }
            DiskMode::Persistent => {
                std::fs::create_dir_all(&spec.overlay_dir)?;
                let path = persistent_path(&spec.overlay_dir, client);
                // One device per persistent overlay and process: a second
                // attachment of the same key (a rebooted client whose old
                // connection is not torn down yet, or another target in the
                // same process) shares it, which is safe because one
                // `Overlay` serialises its own allocations. Another process
                // gets `Locked` from the file lock.
                let mut open = PERSISTENT.lock().unwrap_or_else(|p| p.into_inner());
                open.retain(|_, w| w.strong_count() > 0);
                if let Some(dev) = open.get(&path).and_then(Weak::upgrade) {
                    check_persistent_base(&path, &spec.image, &image)?;
                    tracing::debug!(client, overlay = %path.display(), "persistent overlay shared");
                    return Ok(Self {
                        device: dev,
                        throwaway: None,
                        overlay: Some(path),
                    });
                }
                let ov = match Overlay::open(&path, false) {
                    Ok(ov) => {
                        check_persistent_base(&path, &spec.image, &image)?;
                        ov
                    }
                    Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                        chain::freeze(&image)?;
                        match Overlay::create(&path, Some(&image), CreateOptions::default()) {
                            Ok(ov) => ov,
                            // Another server created it meanwhile: it holds it.
                            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                                Overlay::open(&path, false)?
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Err(e) => return Err(e),
                };
                let dev: Arc<dyn BlockDevice> = Arc::new(ov);
                open.insert(path.clone(), Arc::downgrade(&dev));
                tracing::debug!(client, overlay = %path.display(), "persistent overlay attached");
                Ok(Self {
                    device: dev,
                    throwaway: None,
                    overlay: Some(path),
                })
            }
        }
    }

    /// Wraps an already opened device (tests, RAM-backed benchmarks).
    pub fn from_device(device: Arc<dyn BlockDevice>) -> Self {
        Self {
            device,
            throwaway: None,
            overlay: None,
        }
    }

    /// The device to serve.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.device
    }

    /// The client's overlay file (throwaway and persistent modes).
    pub fn overlay_path(&self) -> Option<&Path> {
        self.overlay.as_deref()
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some(p) = &self.throwaway {
            // The device may still be referenced elsewhere; unlinking an open
            // file is fine, its blocks go when the last reference closes.
            if let Err(e) = std::fs::remove_file(p) {
                tracing::warn!(overlay = %p.display(), error = %e, "throwaway overlay not removed");
            }
        }
    }
}

/// Turns a client key from the network (MAC, IQN, export name: any bytes)
/// into a safe file name stem: up to 48 characters of `[A-Za-z0-9_-]` (others
/// become `_`), then `-` and 16 hex digits of the key's SHA-256, so distinct
/// keys never share a file and no key can contain `/`, `..` or a leading dot.
pub fn sanitize_key(key: &str) -> String {
    let readable: String = key
        .chars()
        .take(48)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = Sha256::digest(key.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{readable}-{hash}")
}

/// Where the persistent overlay of `client` lives.
pub fn persistent_path(overlay_dir: &Path, client: &str) -> PathBuf {
    overlay_dir.join(format!("{}.{PERSISTENT_EXT}", sanitize_key(client)))
}

/// A persistent overlay must sit on the image the spec names (or, for a
/// versioned image, on one of its versions): a host moved to another image
/// must not silently see its old disk.
fn check_persistent_base(overlay: &Path, spec_image: &Path, resolved: &Path) -> Result<()> {
    let Some(base) = chain::base_of(overlay)? else {
        return Err(Error::Format {
            path: overlay.to_owned(),
            problem: "persistent overlay has no base".into(),
        });
    };
    let base = std::fs::canonicalize(base)?;
    let ok = if spec_image.is_dir() {
        base.parent() == Some(std::fs::canonicalize(spec_image)?.as_path())
    } else {
        base == std::fs::canonicalize(resolved)?
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Format {
            path: overlay.to_owned(),
            problem: format!(
                "persistent overlay belongs to base {}, not {}",
                base.display(),
                spec_image.display()
            ),
        })
    }
}

/// Deletes throwaway overlays left behind by a server that died (its pid is
/// gone and nobody holds a lock on the file). Best effort.
fn remove_stale_throwaways(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(&format!(".{THROWAWAY_EXT}")) else {
            continue;
        };
        let mut parts = stem.rsplit('.');
        let (Some(_seq), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = pid == me
            || unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        let held = crate::lock::users(&e.path())
            .map(|u| u.any())
            .unwrap_or(true);
        if !alive && !held {
            tracing::info!(overlay = %e.path().display(), "removing stale throwaway overlay");
            let _ = std::fs::remove_file(e.path());
        }
    }
}
