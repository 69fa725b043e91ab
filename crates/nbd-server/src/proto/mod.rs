//! Sans-IO NBD cores (NBD protocol document, "Handshake" and "Transmission"):
//! state machines over bytes that decide every reply; the driver in
//! `server.rs` only moves bytes, opens devices and runs storage I/O.

pub mod handshake;
pub mod reply;
pub mod transmission;

/// Whether an export is served over TLS (NBD "SELECTIVETLS" mode per export).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Served only without TLS (clients such as iPXE cannot do TLS).
    #[default]
    Off,
    /// Served with or without TLS, at the client's choice.
    Optional,
    /// Served only after `NBD_OPT_STARTTLS`.
    Required,
}

/// What the handshake knows about an export before a client attaches to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: Option<String>,
    /// Size of the base image (overlays have the same size).
    pub size: u64,
    pub read_only: bool,
    pub tls: TlsMode,
    /// Every connection shares one device, so flush and FUA on one
    /// connection cover writes made on all (`NBD_FLAG_CAN_MULTI_CONN`).
    pub shared_device: bool,
    pub block_size: u32,
    pub can_fast_zero: bool,
}

/// What the driver learnt by opening a client's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceFacts {
    pub size: u64,
    pub read_only: bool,
    pub block_size: u32,
    pub can_fast_zero: bool,
    pub shared_device: bool,
}

impl From<&ExportInfo> for DeviceFacts {
    fn from(e: &ExportInfo) -> Self {
        Self {
            size: e.size,
            read_only: e.read_only,
            block_size: e.block_size,
            can_fast_zero: e.can_fast_zero,
            shared_device: e.shared_device,
        }
    }
}

/// The largest request payload we accept and the largest read we serve in
/// one request (the document's default maximum payload, 2^25).
pub const MAX_PAYLOAD: u32 = 1 << 25;

/// Metadata context id of `base:allocation` (transient; clients must not
/// cache it).
pub const ALLOCATION_CONTEXT_ID: u32 = 1;
