//! Versioned images: a directory holding frozen versions `v0001`, `v0002`, ...
//! (each a raw image or an overlay on the previous one), a `current` symlink
//! naming the version in service, and at most one writable `draft.ovl` being
//! prepared on top of the current version.
//!
//! ```text
//! debian/
//!   v0001        raw, frozen
//!   v0002        overlay on v0001, frozen
//!   draft.ovl    overlay on v0002, being adapted and tested
//!   current  ->  v0002
//! ```
//!
//! The symlink is resolved when a client *attaches* ([`resolve`]), and the
//! attachment keeps its files open, so promoting a new version (an atomic
//! rename of a new symlink over `current`) only affects attachments made
//! afterwards: running clients keep the version they booted until they
//! reboot. Old versions are frozen and never change under them.

use std::path::{Path, PathBuf};

use crate::chain;
use crate::lock::{lock, LockKind};
use crate::overlay::{sync_parent, CreateOptions, Overlay};
use crate::{Error, Result};

/// Name of the symlink to the version in service.
pub const CURRENT: &str = "current";
/// Name of the writable draft overlay.
pub const DRAFT: &str = "draft.ovl";

/// A directory of image versions.
#[derive(Debug, Clone)]
pub struct VersionedImage {
    dir: PathBuf,
}

fn version_name(n: u32) -> String {
    format!("v{n:04}")
}

fn parse_version(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('v')?;
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl VersionedImage {
    /// Whether `dir` is a versioned image (has a `current` link).
    pub fn is_versioned(dir: &Path) -> bool {
        dir.is_dir() && std::fs::symlink_metadata(dir.join(CURRENT)).is_ok()
    }

    /// Creates a versioned image in the new directory `dir` whose first version
    /// is a sparse raw copy of the content of `from` (raw, or an overlay chain).
    pub fn init(dir: &Path, from: &Path) -> Result<Self> {
        std::fs::create_dir(dir)?;
        let v = version_name(1);
        let path = dir.join(&v);
        crate::lifecycle::flatten(from, &path)?;
        chain::freeze(&path)?;
        let me = Self {
            dir: dir.to_owned(),
        };
        me.point_current(&v)?;
        Ok(me)
    }

    /// Opens an existing versioned image.
    pub fn open(dir: &Path) -> Result<Self> {
        if !Self::is_versioned(dir) {
            return Err(Error::Format {
                path: dir.to_owned(),
                problem: "not a versioned image (no `current` link)".into(),
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All versions, oldest first: (name, path).
    pub fn versions(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = parse_version(&name) {
                out.push((n, name, e.path()));
            }
        }
        out.sort();
        Ok(out.into_iter().map(|(_, n, p)| (n, p)).collect())
    }

    /// Name of the version in service.
    pub fn current_name(&self) -> Result<String> {
        let link = std::fs::read_link(self.dir.join(CURRENT))?;
        let name = link
            .to_str()
            .filter(|n| parse_version(n).is_some())
            .ok_or_else(|| Error::Format {
                path: self.dir.join(CURRENT),
                problem: "does not name a version of this image".into(),
            })?;
        Ok(name.to_owned())
    }

    /// Path of the version in service.
    pub fn current(&self) -> Result<PathBuf> {
        Ok(self.dir.join(self.current_name()?))
    }

    pub fn draft_path(&self) -> PathBuf {
        self.dir.join(DRAFT)
    }

    /// Starts a draft: a writable overlay on the current version, to adapt
    /// and test (e.g. served in shared mode to one test machine).
    pub fn start_draft(&self) -> Result<PathBuf> {
        let draft = self.draft_path();
        Overlay::create(&draft, Some(&self.current()?), CreateOptions::default())?;
        Ok(draft)
    }

    /// Puts the draft into service as the next version: it is frozen, renamed
    /// `vNNNN` and `current` is switched to it atomically. Refused while the
    /// draft is open. Returns the new version's name.
    pub fn promote(&self) -> Result<String> {
        let draft = self.draft_path();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&draft)?;
        lock(&f, LockKind::Exclusive, &draft)?;
        let next = self
            .versions()?
            .last()
            .and_then(|(n, _)| parse_version(n))
            .unwrap_or(0)
            + 1;
        let name = version_name(next);
        let path = self.dir.join(&name);
        std::fs::rename(&draft, &path)?;
        chain::freeze_locked(&f, &path)?;
        sync_parent(&path)?;
        self.point_current(&name)?;
        tracing::info!(image = %self.dir.display(), version = %name, "promoted");
        Ok(name)
    }

    /// Puts an existing version back into service (rollback of a promotion).
    pub fn set_current(&self, name: &str) -> Result<()> {
        if parse_version(name).is_none() || !self.dir.join(name).is_file() {
            return Err(Error::Unsupported("no such version"));
        }
        self.point_current(name)
    }

    /// Atomically repoints `current`: a new symlink renamed over the old one.
    fn point_current(&self, name: &str) -> Result<()> {
        let tmp = self.dir.join(format!(".current.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(name, &tmp)?;
        std::fs::rename(&tmp, self.dir.join(CURRENT))?;
        sync_parent(&self.dir.join(CURRENT))
    }
}

/// The image file to attach for `path`: the current version of a versioned
/// image directory, or `path` itself.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        VersionedImage::open(path)?.current()
    } else {
        Ok(path.to_owned())
    }
}
