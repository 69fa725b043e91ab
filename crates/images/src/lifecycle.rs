//! Image lifecycle operations behind the `anyboot-image` CLI: create, overlay,
//! snapshot, rollback, flatten, clone, delete, raw import/export.
//!
//! All of them work on closed images and take the locks that servers take, so
//! an image a server has open for writing is refused with [`Error::Locked`].

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::chain::{self, ImageKind};
use crate::format::ClusterState;
use crate::lock::{lock, LockKind};
use crate::overlay::{sync_parent, CreateOptions, Overlay};
use crate::raw::RawFile;
use crate::{BlockDevice, Error, Result};

/// Creates a sparse raw image of `size` bytes.
pub fn create_raw(path: &Path, size: u64) -> Result<()> {
    let raw = RawFile::create(path, size)?;
    raw.file().sync_all()?;
    sync_parent(path)
}

/// Creates an overlay at `path` on `base`, freezing the base first so nothing
/// can modify what the overlay depends on.
pub fn create_overlay(path: &Path, base: &Path, opts: CreateOptions) -> Result<()> {
    chain::freeze(base)?;
    Overlay::create(path, Some(base), opts)?;
    Ok(())
}

/// Checks a snapshot or version name: it becomes part of a file name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Unsupported(
            "names are 1-64 characters of [A-Za-z0-9._-], not starting with '.'",
        ))
    }
}

/// Where snapshot `name` of the image at `path` is kept: beside it, as
/// `<file name>@<name>`.
pub fn snapshot_path(path: &Path, name: &str) -> Result<PathBuf> {
    check_name(name)?;
    let file = path
        .file_name()
        .ok_or(Error::Unsupported("image path has no file name"))?;
    let mut s = file.to_os_string();
    s.push("@");
    s.push(name);
    Ok(path.with_file_name(s))
}

/// Freezes the current content of `path` as the read-only snapshot `name`
/// (kept beside it) and puts a new, empty overlay on top at `path`, so whoever
/// opens `path` next continues from the snapshot. Refused while `path` is open.
/// Returns the snapshot's path.
pub fn snapshot(path: &Path, name: &str) -> Result<PathBuf> {
    let snap = snapshot_path(path, name)?;
    if snap.exists() {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} already exists", snap.display()),
        )));
    }
    if chain::is_frozen(path)? {
        return Err(Error::ReadOnly);
    }
    let size = crate::chain::describe(path)?[0].size;
    let cluster_bits = match chain::kind(path)? {
        ImageKind::Overlay => Overlay::open(path, true)?.header().cluster_bits,
        ImageKind::Raw => crate::format::DEFAULT_CLUSTER_BITS,
    };
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    lock(&f, LockKind::Exclusive, path)?;
    // The lock travels with the descriptor across the rename.
    std::fs::rename(path, &snap)?;
    chain::freeze_locked(&f, &snap)?;
    sync_parent(&snap)?;
    drop(f);
    Overlay::create(
        path,
        Some(&snap),
        CreateOptions {
            size: Some(size),
            cluster_bits,
        },
    )?;
    tracing::info!(image = %path.display(), snapshot = %snap.display(), "snapshot taken");
    Ok(snap)
}

/// Throws away the overlay at `path` and replaces it with an empty overlay on
/// `to` (a frozen image in its chain; default: its direct base). Snapshots
/// above `to` stay on disk. Refused while `path` is open. Returns `to`.
pub fn rollback(path: &Path, to: Option<&Path>) -> Result<PathBuf> {
    let entries = chain::describe(path)?;
    if entries[0].kind != ImageKind::Overlay || entries.len() < 2 {
        return Err(Error::Unsupported("only an overlay can be rolled back"));
    }
    let target = match to {
        None => entries[1].path.clone(),
        Some(t) => {
            let want = std::fs::canonicalize(t)?;
            let mut found = None;
            for e in &entries[1..] {
                if std::fs::canonicalize(&e.path)? == want {
                    found = Some(e.path.clone());
                }
            }
            found.ok_or(Error::Unsupported(
                "rollback target is not in the image's chain",
            ))?
        }
    };
    if !chain::is_frozen(&target)? {
        return Err(Error::Unsupported(
            "rollback target is not a frozen snapshot",
        ));
    }
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    lock(&f, LockKind::Exclusive, path)?;
    let cluster_bits = crate::overlay::read_header(&f, path)?.cluster_bits;
    let tmp = path.with_file_name(format!(
        ".{}.rollback-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    Overlay::create(
        &tmp,
        Some(&target),
        CreateOptions {
            size: Some(entries[0].size),
            cluster_bits,
        },
    )?;
    std::fs::rename(&tmp, path)?;
    sync_parent(path)?;
    tracing::info!(image = %path.display(), to = %target.display(), "rolled back");
    Ok(target)
}

/// Copies the content of `src` into the fresh, zero-filled `dst`, skipping
/// holes, zero extents and all-zero chunks so `dst` stays sparse.
pub fn copy_content(src: &dyn BlockDevice, dst: &dyn BlockDevice) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let size = src.size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0;
    while off < size {
        let want = (size - off).min(64 * CHUNK);
        let exts = src.block_status(off, want)?;
        if exts.is_empty() {
            return Err(Error::Unsupported("block status made no progress"));
        }
        for e in exts {
            if e.state == crate::Allocation::Data {
                let mut p = off;
                while p < off + e.len {
                    let n = (off + e.len - p).min(CHUNK) as usize;
                    src.read_at(&mut buf[..n], p)?;
                    if buf[..n].iter().any(|&b| b != 0) {
                        dst.write_at(&buf[..n], p, false)?;
                    }
                    p += n as u64;
                }
            }
            off += e.len;
        }
    }
    dst.flush()
}

/// Writes the content of the whole chain at `path` into a new standalone raw
/// image `out` (sparse). Also the raw export.
pub fn flatten(path: &Path, out: &Path) -> Result<()> {
    let src = chain::open_image(path, true)?;
    let dst = RawFile::create(out, src.size())?;
    let r = copy_content(src.as_ref(), &dst).and_then(|()| sync_parent(out));
    if r.is_err() {
        let _ = std::fs::remove_file(out);
    }
    r
}

/// Imports a raw file (any regular file or block device) as a new sparse raw
/// image.
pub fn import_raw(src: &Path, out: &Path) -> Result<()> {
    let s = RawFile::open(src, true)?;
    let dst = RawFile::create(out, s.size())?;
    let r = copy_content(&s, &dst).and_then(|()| sync_parent(out));
    if r.is_err() {
        let _ = std::fs::remove_file(out);
    }
    r
}

/// Makes `dst` an independent copy of `src`'s current content that shares
/// `src`'s frozen ancestors: a raw source is copied (sparse); an overlay
/// becomes a new overlay on the same base holding a copy of its clusters.
pub fn clone_image(src: &Path, dst: &Path) -> Result<()> {
    match chain::kind(src)? {
        ImageKind::Raw => import_raw(src, dst),
        ImageKind::Overlay => {
            let s = Overlay::open(src, true)?;
            let base = chain::base_of(src)?;
            let d = Overlay::create(
                dst,
                base.as_deref(),
                CreateOptions {
                    size: Some(s.header().size),
                    cluster_bits: s.header().cluster_bits,
                },
            )?;
            let cs = s.header().cluster_size();
            let mut buf = vec![0u8; cs as usize];
            let r = (|| {
                for ci in 0..s.header().clusters() {
                    let off = ci * cs;
                    let n = cs.min(s.header().size - off) as usize;
                    match s.cluster_state(ci) {
                        ClusterState::Data => {
                            s.read_at(&mut buf[..n], off)?;
                            d.write_at(&buf[..n], off, false)?;
                        }
                        ClusterState::Zero => d.write_zeroes(off, n as u64, true)?,
                        ClusterState::Unallocated => {}
                    }
                }
                d.flush()
            })();
            drop(d);
            if r.is_err() {
                let _ = std::fs::remove_file(dst);
            }
            r
        }
    }
}

/// Images (overlays, or symlinks such as a versioned image's `current`) in the
/// directory of `path` and in `search` that depend on `path`.
pub fn dependents(path: &Path, search: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let target = std::fs::canonicalize(path)?;
    let mut dirs: Vec<PathBuf> = vec![target.parent().unwrap_or(Path::new("/")).to_owned()];
    dirs.extend(search.iter().cloned());
    let mut out = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            let ft = std::fs::symlink_metadata(&p)?.file_type();
            if ft.is_symlink() {
                if std::fs::canonicalize(&p).ok().as_deref() == Some(target.as_path()) {
                    out.push(p);
                }
                continue;
            }
            if !ft.is_file() || std::fs::canonicalize(&p)? == target {
                continue;
            }
            // Files we cannot parse are not overlays of ours: not dependents.
            if let Ok(Some(base)) = chain::base_of(&p) {
                if std::fs::canonicalize(&base).ok().as_deref() == Some(target.as_path()) {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Deletes an image, refusing while any process holds it open
/// ([`Error::Locked`]) or while another image in its directory or in `search`
/// depends on it.
pub fn delete(path: &Path, search: &[PathBuf]) -> Result<()> {
    let deps = dependents(path, search)?;
    if !deps.is_empty() {
        return Err(Error::Io(std::io::Error::other(format!(
            "{} is the base of {}",
            path.display(),
            deps.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))));
    }
    // Hold an exclusive lock across the unlink so nobody opens it meanwhile.
    let f = File::open(path)?;
    lock(&f, LockKind::Exclusive, path)?;
    std::fs::remove_file(path)?;
    sync_parent(path)
}

/// Opens `path` as a device (any kind); a convenience for tools.
pub fn open(path: &Path, read_only: bool) -> Result<Arc<dyn BlockDevice>> {
    chain::open_image(path, read_only)
}
