//! From an export description to a device for one client: the shared image
//! itself, a throwaway overlay that lives as long as the attachment, or a
//! persistent per-client overlay kept across restarts.

use std::path::PathBuf;
use std::sync::Arc;

use crate::raw::RawFile;
use crate::{BlockDevice, Error, Result};

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
}

impl Attachment {
    /// Attaches `client` (a stable key such as a MAC or IQN) according to `spec`.
    pub fn open(spec: &DiskSpec, client: &str) -> Result<Self> {
        let _ = client;
        match spec.mode {
            DiskMode::Shared => {
                let raw = RawFile::open(&spec.image, spec.read_only)?;
                Ok(Self {
                    device: Arc::new(raw),
                })
            }
            DiskMode::Throwaway | DiskMode::Persistent => Err(Error::Unsupported(
                "copy-on-write overlays are not built yet",
            )),
        }
    }

    /// Wraps an already opened device (tests, RAM-backed benchmarks).
    pub fn from_device(device: Arc<dyn BlockDevice>) -> Self {
        Self { device }
    }

    /// The device to serve.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.device
    }
}
