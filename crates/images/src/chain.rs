//! Opening an image of any kind (raw or overlay, chains of any depth), freezing
//! images that others build on, and describing a chain.
//!
//! Protection of bases: an image that an overlay or snapshot depends on is
//! *frozen*: its write permission bits are cleared (`chmod a-w`) and, for an
//! overlay, its header carries the frozen flag. Every writable open in this
//! crate checks both (root ignores permission bits, so the check is ours), and
//! bases are only ever opened read-only, under a shared lock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::{Header, MAGIC};
use crate::lock::{lock, LockKind};
use crate::overlay::{read_header, read_up_to, write_header, Overlay};
use crate::raw::RawFile;
use crate::{BlockDevice, Error, Result};

/// Longest chain we follow; deeper is almost certainly a loop.
pub const MAX_DEPTH: usize = 64;

/// What an image file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Raw,
    Overlay,
}

/// Tells raw files from overlays by the magic.
pub fn kind(path: &Path) -> Result<ImageKind> {
    let f = File::open(path)?;
    let mut m = [0u8; 8];
    let n = read_up_to(&f, &mut m)?;
    Ok(if n == 8 && m == MAGIC {
        ImageKind::Overlay
    } else {
        ImageKind::Raw
    })
}

/// Opens any image. Read-only opens take a shared lock, writable ones an
/// exclusive lock; frozen images are never opened writable ([`Error::ReadOnly`]).
pub fn open_image(path: &Path, read_only: bool) -> Result<Arc<dyn BlockDevice>> {
    open_depth(path, read_only, 0)
}

pub(crate) fn open_depth(
    path: &Path,
    read_only: bool,
    depth: usize,
) -> Result<Arc<dyn BlockDevice>> {
    if depth > MAX_DEPTH {
        return Err(Error::Format {
            path: path.to_owned(),
            problem: format!("chain deeper than {MAX_DEPTH} images (a loop?)"),
        });
    }
    match kind(path)? {
        ImageKind::Overlay => Ok(Arc::new(Overlay::open_depth(path, read_only, depth)?)),
        ImageKind::Raw => {
            let raw = RawFile::open(path, read_only)?;
            let kind = if read_only {
                LockKind::Shared
            } else {
                LockKind::Exclusive
            };
            lock(raw.file(), kind, path)?;
            Ok(Arc::new(raw))
        }
    }
}

/// Whether the file's permission bits forbid writing (our freeze marker).
pub fn mode_is_frozen(path: &Path) -> Result<bool> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o222 == 0)
}

/// Whether `path` is frozen (permission bits, or an overlay's header flag).
pub fn is_frozen(path: &Path) -> Result<bool> {
    if mode_is_frozen(path)? {
        return Ok(true);
    }
    if kind(path)? == ImageKind::Overlay {
        let f = File::open(path)?;
        return Ok(read_header(&f, path)?.frozen());
    }
    Ok(false)
}

/// Freezes `path` so it can serve as a base: no writer may hold it (an
/// exclusive lock must be available unless it is frozen already), then the
/// header flag (overlays) and `chmod a-w`.
pub fn freeze(path: &Path) -> Result<()> {
    if is_frozen(path)? {
        // Make both markers agree (e.g. a raw image chmod-ed by hand).
        return set_mode_frozen(path);
    }
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    lock(&f, LockKind::Exclusive, path)?;
    freeze_locked(&f, path)
}

/// Freezes an image whose exclusive lock the caller holds through `f`.
pub(crate) fn freeze_locked(f: &File, path: &Path) -> Result<()> {
    if kind(path)? == ImageKind::Overlay {
        let mut h = read_header(f, path)?;
        if !h.frozen() {
            h.flags |= crate::format::FLAG_FROZEN;
            write_header(f, &h)?;
        }
    } else {
        f.sync_all()?;
    }
    set_mode_frozen(path)
}

fn set_mode_frozen(path: &Path) -> Result<()> {
    let mut p = std::fs::metadata(path)?.permissions();
    p.set_mode(p.mode() & !0o222);
    std::fs::set_permissions(path, p)?;
    Ok(())
}

/// One image in a chain, top first.
#[derive(Debug, Clone)]
pub struct ChainEntry {
    pub path: PathBuf,
    pub kind: ImageKind,
    /// Virtual size in bytes.
    pub size: u64,
    pub frozen: bool,
    /// Cluster size (overlays).
    pub cluster_size: Option<u64>,
    /// Bytes the file occupies on disk.
    pub disk_usage: u64,
    /// Who has it open (servers, tools, overlays using it as base).
    pub users: crate::lock::Users,
}

/// Describes the chain starting at `path` without opening it as a device.
pub fn describe(path: &Path) -> Result<Vec<ChainEntry>> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<ChainEntry> = Vec::new();
    let mut cur = Some(path.to_owned());
    while let Some(p) = cur.take() {
        if out.len() > MAX_DEPTH {
            return Err(Error::Format {
                path: path.to_owned(),
                problem: "chain too deep (a loop?)".into(),
            });
        }
        let meta = std::fs::metadata(&p)?;
        let k = kind(&p)?;
        let (size, cluster_size, header): (u64, Option<u64>, Option<Header>) = match k {
            ImageKind::Raw => (meta.len(), None, None),
            ImageKind::Overlay => {
                let h = read_header(&File::open(&p)?, &p)?;
                (h.size, Some(h.cluster_size()), Some(h))
            }
        };
        out.push(ChainEntry {
            path: p.clone(),
            kind: k,
            size,
            frozen: is_frozen(&p)?,
            cluster_size,
            disk_usage: meta.blocks() * 512,
            users: crate::lock::users(&p)?,
        });
        cur = header.and_then(|h| h.resolved_base(&p));
    }
    Ok(out)
}

/// The direct base of the overlay at `path` (resolved), if it has one.
pub fn base_of(path: &Path) -> Result<Option<PathBuf>> {
    if kind(path)? != ImageKind::Overlay {
        return Ok(None);
    }
    Ok(read_header(&File::open(path)?, path)?.resolved_base(path))
}
