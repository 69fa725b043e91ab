//! The one error type of every decoder in this crate.

/// Why a buffer could not be read as a packet.
///
/// Decoders return this for truncated or malformed input; they never panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ended before the packet did.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// A field holds a value the format does not allow.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// Result alias for decoders.
pub type Result<T> = core::result::Result<T, Error>;

/// Returns `Truncated` unless `buf` holds at least `need` bytes.
pub fn check_len(buf: &[u8], need: usize) -> Result<()> {
    if buf.len() < need {
        Err(Error::Truncated {
            need,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}
