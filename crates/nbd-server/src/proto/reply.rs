//! Reply encoding for the transmission phase (NBD protocol document, "Simple
//! reply message", "Structured reply chunk message", "Extended reply chunk
//! message"): picks the reply form the handshake negotiated and writes headers
//! into buffers that already have room for the data, so a read lands in its
//! reply buffer without a copy.

use anyboot_wire::nbd::{
    reply_flags, BlockStatusRepr, ChunkHeaderRepr, ChunkType, Descriptor, ErrorChunkRepr,
    OffsetHoleRepr, SimpleReplyRepr,
};
use bytes::BytesMut;

/// Encodes replies in the negotiated form. Cheap to copy into workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyEncoder {
    /// Structured replies (or extended headers) were negotiated.
    pub structured: bool,
    /// Extended headers were negotiated: every reply is an extended chunk.
    pub extended: bool,
}

impl ReplyEncoder {
    fn header_len(&self) -> usize {
        ChunkHeaderRepr::header_len(self.extended)
    }

    fn chunk(
        &self,
        cookie: u64,
        req_offset: u64,
        chunk_type: ChunkType,
        done: bool,
        payload_len: usize,
    ) -> BytesMut {
        let hl = self.header_len();
        let mut b = BytesMut::zeroed(hl + payload_len);
        ChunkHeaderRepr {
            extended: self.extended,
            flags: if done { reply_flags::DONE } else { 0 },
            chunk_type,
            cookie,
            offset: req_offset,
            length: payload_len as u64,
        }
        .emit(&mut b[..hl]);
        b
    }

    /// Success without data. Simple replies are used whenever allowed (they
    /// are shorter); with extended headers it is a `NONE` chunk.
    pub fn ok(&self, cookie: u64, req_offset: u64) -> BytesMut {
        if self.extended {
            return self.chunk(cookie, req_offset, ChunkType::None, true, 0);
        }
        self.simple(cookie, 0, 0)
    }

    /// A structured read's final empty chunk (reads must never get a simple
    /// reply once structured replies are on).
    pub fn none(&self, cookie: u64, req_offset: u64) -> BytesMut {
        if self.structured {
            self.chunk(cookie, req_offset, ChunkType::None, true, 0)
        } else {
            self.simple(cookie, 0, 0)
        }
    }

    /// A final error: an `ERROR` chunk with a message, or a simple reply.
    pub fn error(&self, cookie: u64, req_offset: u64, errno: u32, message: &str) -> BytesMut {
        if !self.structured {
            return self.simple(cookie, errno, 0);
        }
        let mut message = &message[..message.len().min(256)];
        while !message.is_empty() && !message.is_char_boundary(message.len()) {
            message = &message[..message.len() - 1];
        }
        let e = ErrorChunkRepr {
            error: errno,
            message,
            offset: None,
        };
        let mut b = self.chunk(cookie, req_offset, e.chunk_type(), true, e.buffer_len());
        let hl = self.header_len();
        e.emit(&mut b[hl..]);
        b
    }

    /// A simple reply header followed by room for `data_len` bytes (a read's
    /// data starts at [`SimpleReplyRepr::LEN`]).
    pub fn simple(&self, cookie: u64, error: u32, data_len: usize) -> BytesMut {
        let mut b = BytesMut::zeroed(SimpleReplyRepr::LEN + data_len);
        SimpleReplyRepr { error, cookie }.emit(&mut b[..SimpleReplyRepr::LEN]);
        b
    }

    /// An `OFFSET_DATA` chunk with room for `len` bytes, and where that room
    /// starts.
    pub fn data_chunk(
        &self,
        cookie: u64,
        req_offset: u64,
        offset: u64,
        len: usize,
        done: bool,
    ) -> (BytesMut, usize) {
        let mut b = self.chunk(cookie, req_offset, ChunkType::OffsetData, done, 8 + len);
        let hl = self.header_len();
        b[hl..hl + 8].copy_from_slice(&offset.to_be_bytes());
        (b, hl + 8)
    }

    /// Just the header of an `OFFSET_DATA` chunk (chunk header and offset)
    /// for `len` bytes of data sent separately after it.
    pub fn data_chunk_header(
        &self,
        cookie: u64,
        req_offset: u64,
        offset: u64,
        len: usize,
        done: bool,
    ) -> BytesMut {
        let hl = self.header_len();
        let mut b = BytesMut::zeroed(hl + 8);
        ChunkHeaderRepr {
            extended: self.extended,
            flags: if done { reply_flags::DONE } else { 0 },
            chunk_type: ChunkType::OffsetData,
            cookie,
            offset: req_offset,
            length: 8 + len as u64,
        }
        .emit(&mut b[..hl]);
        b[hl..].copy_from_slice(&offset.to_be_bytes());
        b
    }

    /// An `OFFSET_HOLE` chunk.
    pub fn hole_chunk(
        &self,
        cookie: u64,
        req_offset: u64,
        offset: u64,
        len: u32,
        done: bool,
    ) -> BytesMut {
        let mut b = self.chunk(
            cookie,
            req_offset,
            ChunkType::OffsetHole,
            done,
            OffsetHoleRepr::LEN,
        );
        let hl = self.header_len();
        OffsetHoleRepr { offset, len }.emit(&mut b[hl..]);
        b
    }

    /// A `BLOCK_STATUS` (or `BLOCK_STATUS_EXT`) chunk for one context.
    pub fn block_status(
        &self,
        cookie: u64,
        req_offset: u64,
        context_id: u32,
        descriptors: Vec<Descriptor>,
        done: bool,
    ) -> BytesMut {
        let r = BlockStatusRepr {
            extended: self.extended,
            context_id,
            descriptors,
        };
        let ty = if self.extended {
            ChunkType::BlockStatusExt
        } else {
            ChunkType::BlockStatus
        };
        let mut b = self.chunk(cookie, req_offset, ty, done, r.buffer_len());
        let hl = self.header_len();
        r.emit(&mut b[hl..]);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyboot_wire::nbd::errno;

    #[test]
    fn error_forms_follow_negotiation() {
        let simple = ReplyEncoder {
            structured: false,
            extended: false,
        };
        let b = simple.error(5, 0, errno::EPERM, "read-only");
        assert_eq!(
            SimpleReplyRepr::parse(&b).unwrap(),
            SimpleReplyRepr {
                error: 1,
                cookie: 5
            }
        );
        assert_eq!(b.len(), 16);

        let ext = ReplyEncoder {
            structured: true,
            extended: true,
        };
        let b = ext.error(5, 4096, errno::EINVAL, "out of range");
        let h = ChunkHeaderRepr::parse(&b).unwrap();
        assert_eq!(h.chunk_type, ChunkType::Error);
        assert_eq!(h.offset, 4096);
        assert_eq!(h.flags, reply_flags::DONE);
        let e = ErrorChunkRepr::parse(&b[32..], false).unwrap();
        assert_eq!((e.error, e.message), (22, "out of range"));
        // Even a plain success is a chunk with extended headers.
        let ok = ext.ok(9, 0);
        assert_eq!(ok.len(), 32);
        assert_eq!(
            ChunkHeaderRepr::parse(&ok).unwrap().chunk_type,
            ChunkType::None
        );
    }

    #[test]
    fn data_chunk_leaves_room_after_offset() {
        let enc = ReplyEncoder {
            structured: true,
            extended: false,
        };
        let (b, at) = enc.data_chunk(1, 512, 1024, 100, true);
        assert_eq!(at, 28);
        assert_eq!(b.len(), 128);
        let h = ChunkHeaderRepr::parse(&b).unwrap();
        assert_eq!(h.length, 108);
        assert_eq!(h.chunk_type, ChunkType::OffsetData);
    }
}
