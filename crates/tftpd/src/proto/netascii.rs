//! Netascii conversion (RFC 1350 section 1 and RFC 764): on the wire a line ends
//! in CR LF and a bare CR is sent as CR NUL.

/// Converts local text (LF line ends) to netascii.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let extra = data.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    let mut out = Vec::with_capacity(data.len() + extra);
    for &b in data {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.push(b),
        }
    }
    out
}

/// Streaming netascii -> local text, for uploads that arrive block by block
/// (a CR can end one block and its LF or NUL start the next).
#[derive(Debug, Default)]
pub struct Decoder {
    pending_cr: bool,
}

impl Decoder {
    /// Appends the decoded form of `chunk` to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            if self.pending_cr {
                self.pending_cr = false;
                match b {
                    b'\n' => {
                        out.push(b'\n');
                        continue;
                    }
                    0 => {
                        out.push(b'\r');
                        continue;
                    }
                    // A CR followed by anything else is not netascii; keep both.
                    _ => out.push(b'\r'),
                }
            }
            if b == b'\r' {
                self.pending_cr = true;
            } else {
                out.push(b);
            }
        }
    }

    /// Flushes a CR left dangling at the very end.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_across_chunk_boundaries() {
        let text = b"line one\nbare\rcr\n\nend\r";
        let wire = encode(text);
        assert_eq!(&wire[..10], b"line one\r\n");
        assert!(wire.windows(2).any(|w| w == b"\r\0"));
        for split in 0..wire.len() {
            let mut d = Decoder::default();
            let mut out = Vec::new();
            d.feed(&wire[..split], &mut out);
            d.feed(&wire[split..], &mut out);
            d.finish(&mut out);
            assert_eq!(out, text, "split at {split}");
        }
    }
}
