//! The transmission phase core (NBD protocol document, "Transmission",
//! "Request types", "Error values", "Size constraints"): checks each request
//! header against the negotiated state and the export, and turns it into a
//! storage operation or an error reply. The driver performs the operations.

use anyboot_wire::nbd::{cmd_flags, errno, Command, RequestPacket, RequestRepr};
use bytes::{Bytes, BytesMut};

use super::handshake::Negotiated;
use super::reply::ReplyEncoder;
use super::MAX_PAYLOAD;

/// A storage operation for the driver to perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub cookie: u64,
    pub offset: u64,
    pub kind: OpKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// `df`: at most one content chunk (no holes).
    Read {
        len: u64,
        df: bool,
    },
    Write {
        data: Bytes,
        fua: bool,
    },
    Flush,
    Trim {
        len: u64,
        fua: bool,
    },
    WriteZeroes {
        len: u64,
        may_trim: bool,
        fua: bool,
    },
    Cache {
        len: u64,
    },
    BlockStatus {
        len: u64,
        req_one: bool,
    },
}

impl Op {
    /// Bytes of buffers this operation holds while in flight (for the
    /// per-connection memory bound).
    pub fn cost(&self) -> u64 {
        const OVERHEAD: u64 = 64;
        OVERHEAD
            + match &self.kind {
                OpKind::Read { len, .. } => *len,
                OpKind::Write { data, .. } => data.len() as u64,
                // A status reply holds at most a few thousand descriptors.
                OpKind::BlockStatus { .. } => 64 * 1024,
                _ => 0,
            }
    }
}

/// What the driver does with a request header.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Read `len` payload bytes and hand them to [`Transmission::write_op`].
    ReadPayload { req: RequestRepr, len: usize },
    /// Read and drop `len` payload bytes, then send `reply`.
    SkipPayload { len: u64, reply: BytesMut },
    /// Perform the operation and send its reply.
    Execute(Op),
    /// Send this reply; the request is done.
    Reply(BytesMut),
    /// Send this reply, then stop reading: the stream cannot be trusted.
    ReplyAndClose(BytesMut),
    /// `NBD_CMD_DISC`: finish in-flight requests, then close.
    Disconnect,
    /// Close at once (framing lost: nothing sensible can be replied).
    Close(&'static str),
}

/// The transmission core of one connection.
#[derive(Debug)]
pub struct Transmission {
    neg: Negotiated,
    enc: ReplyEncoder,
}

impl Transmission {
    pub fn new(neg: Negotiated) -> Self {
        Self {
            neg,
            enc: ReplyEncoder {
                structured: neg.structured,
                extended: neg.extended,
            },
        }
    }

    pub fn encoder(&self) -> ReplyEncoder {
        self.enc
    }

    /// Length of every request header on this connection.
    pub fn header_len(&self) -> usize {
        if self.neg.extended {
            RequestPacket::<&[u8]>::EXTENDED_LEN
        } else {
            RequestPacket::<&[u8]>::COMPACT_LEN
        }
    }

    /// Decides what to do with one request header (`header_len` bytes).
    pub fn on_header(&self, hdr: &[u8]) -> Action {
        let Ok(p) = RequestPacket::new_checked(hdr) else {
            return Action::Close("bad request magic");
        };
        let Ok(r) = RequestRepr::parse(&p) else {
            return Action::Close("malformed request");
        };
        if r.extended != self.neg.extended {
            return Action::Close("request header form does not match negotiation");
        }
        let has_payload_flag = r.flags & cmd_flags::PAYLOAD_LEN != 0;
        let payload = if r.extended {
            if has_payload_flag {
                r.length
            } else {
                0
            }
        } else if r.command == Command::Write {
            r.length
        } else {
            0
        };
        let err = |e: u32, msg: &str| self.enc.error(r.cookie, r.offset, e, msg);
        if payload > u64::from(MAX_PAYLOAD) {
            // Beyond the advertised maximum the document allows a hard
            // disconnect; we say why first.
            return Action::ReplyAndClose(err(errno::EINVAL, "payload exceeds 32 MiB"));
        }
        let fail = |e: u32, msg: &str| {
            let reply = err(e, msg);
            if payload > 0 {
                Action::SkipPayload {
                    len: payload,
                    reply,
                }
            } else {
                Action::Reply(reply)
            }
        };

        let mut allowed = cmd_flags::FUA;
        match r.command {
            Command::Read if self.neg.structured => allowed |= cmd_flags::DF,
            Command::Write if r.extended => allowed |= cmd_flags::PAYLOAD_LEN,
            Command::WriteZeroes => allowed |= cmd_flags::NO_HOLE | cmd_flags::FAST_ZERO,
            Command::BlockStatus => allowed |= cmd_flags::REQ_ONE,
            _ => {}
        }
        if r.flags & !allowed != 0 {
            return fail(errno::EINVAL, "command flag not valid for this command");
        }
        let facts = &self.neg.facts;
        let in_range = |len: u64| r.offset.checked_add(len).is_some_and(|e| e <= facts.size);
        let fua = r.flags & cmd_flags::FUA != 0;
        let op = |kind| {
            Action::Execute(Op {
                cookie: r.cookie,
                offset: r.offset,
                kind,
            })
        };
        match r.command {
            Command::Read => {
                if r.length > u64::from(MAX_PAYLOAD) {
                    // Structured replies may reject a large read with
                    // EOVERFLOW; simple replies cannot carry it at all.
                    let e = if self.neg.structured {
                        errno::EOVERFLOW
                    } else {
                        errno::EINVAL
                    };
                    return fail(e, "read longer than 32 MiB");
                }
                if !in_range(r.length) {
                    return fail(errno::EINVAL, "read beyond the end of the export");
                }
                op(OpKind::Read {
                    len: r.length,
                    df: r.flags & cmd_flags::DF != 0,
                })
            }
            Command::Write => {
                if r.extended && !has_payload_flag {
                    return fail(errno::EINVAL, "extended write without PAYLOAD_LEN");
                }
                if facts.read_only {
                    return fail(errno::EPERM, "export is read-only");
                }
                if !in_range(payload) {
                    return fail(errno::ENOSPC, "write beyond the end of the export");
                }
                if payload == 0 {
                    return Action::Reply(self.enc.ok(r.cookie, r.offset));
                }
                Action::ReadPayload {
                    req: r,
                    len: payload as usize,
                }
            }
            _ if payload > 0 => fail(errno::EINVAL, "this command takes no payload"),
            Command::Disc => Action::Disconnect,
            Command::Flush => op(OpKind::Flush),
            Command::Trim => {
                if facts.read_only {
                    return fail(errno::EPERM, "export is read-only");
                }
                if !in_range(r.length) {
                    return fail(errno::EINVAL, "trim beyond the end of the export");
                }
                op(OpKind::Trim { len: r.length, fua })
            }
            Command::WriteZeroes => {
                if facts.read_only {
                    return fail(errno::EPERM, "export is read-only");
                }
                if !in_range(r.length) {
                    return fail(errno::ENOSPC, "write zeroes beyond the end of the export");
                }
                let no_hole = r.flags & cmd_flags::NO_HOLE != 0;
                if r.flags & cmd_flags::FAST_ZERO != 0 && !facts.can_fast_zero {
                    return fail(errno::ENOTSUP, "zeroing is not faster than writing here");
                }
                op(OpKind::WriteZeroes {
                    len: r.length,
                    may_trim: !no_hole,
                    fua,
                })
            }
            Command::Cache => {
                if !in_range(r.length) {
                    return fail(errno::EINVAL, "cache beyond the end of the export");
                }
                op(OpKind::Cache { len: r.length })
            }
            Command::BlockStatus => {
                if !self.neg.allocation {
                    return fail(errno::EINVAL, "no metadata context was selected");
                }
                if r.length == 0 || !in_range(r.length) {
                    return fail(errno::EINVAL, "block status range outside the export");
                }
                op(OpKind::BlockStatus {
                    len: r.length,
                    req_one: r.flags & cmd_flags::REQ_ONE != 0,
                })
            }
            Command::Resize | Command::Unknown(_) => fail(errno::EINVAL, "unknown command"),
        }
    }

    /// The write operation for a header that asked for its payload.
    pub fn write_op(&self, req: &RequestRepr, data: Bytes) -> Op {
        Op {
            cookie: req.cookie,
            offset: req.offset,
            kind: OpKind::Write {
                data,
                fua: req.flags & cmd_flags::FUA != 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::DeviceFacts;
    use anyboot_wire::nbd::{
        transmission_flags as tf, ChunkHeaderRepr, ChunkType, ErrorChunkRepr, SimpleReplyRepr,
    };
    use proptest::prelude::*;

    fn neg(structured: bool, extended: bool, read_only: bool) -> Negotiated {
        Negotiated {
            export: 0,
            structured: structured || extended,
            extended,
            allocation: structured || extended,
            flags: tf::HAS_FLAGS,
            facts: DeviceFacts {
                size: 1 << 20,
                read_only,
                block_size: 512,
                can_fast_zero: false,
                shared_device: true,
            },
        }
    }

    fn req(extended: bool, command: Command, flags: u16, offset: u64, length: u64) -> Vec<u8> {
        let r = RequestRepr {
            extended,
            flags,
            command,
            cookie: 42,
            offset,
            length,
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut b);
        b
    }

    fn simple_error(a: &Action) -> u32 {
        match a {
            Action::Reply(b) | Action::SkipPayload { reply: b, .. } => {
                SimpleReplyRepr::parse(b).unwrap().error
            }
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    fn chunk_error(a: &Action, ext: bool) -> u32 {
        let b = match a {
            Action::Reply(b) | Action::SkipPayload { reply: b, .. } | Action::ReplyAndClose(b) => b,
            other => panic!("expected an error reply, got {other:?}"),
        };
        let h = ChunkHeaderRepr::parse(b).unwrap();
        assert_eq!(h.chunk_type, ChunkType::Error);
        assert_eq!(h.cookie, 42);
        let hl = ChunkHeaderRepr::header_len(ext);
        ErrorChunkRepr::parse(&b[hl..], false).unwrap().error
    }

    #[test]
    fn ranges_and_read_only_get_the_documented_errno() {
        let t = Transmission::new(neg(false, false, false));
        let a = t.on_header(&req(false, Command::Read, 0, (1 << 20) - 512, 1024));
        assert_eq!(simple_error(&a), errno::EINVAL);
        let a = t.on_header(&req(false, Command::Write, 0, 1 << 20, 512));
        assert_eq!(simple_error(&a), errno::ENOSPC);
        assert!(matches!(a, Action::SkipPayload { len: 512, .. }));
        let a = t.on_header(&req(false, Command::Trim, 0, u64::MAX, 2));
        assert_eq!(simple_error(&a), errno::EINVAL);

        let ro = Transmission::new(neg(true, false, true));
        let a = ro.on_header(&req(false, Command::Write, cmd_flags::FUA, 0, 4096));
        assert_eq!(chunk_error(&a, false), errno::EPERM);
        assert!(matches!(a, Action::SkipPayload { len: 4096, .. }));
        let a = ro.on_header(&req(false, Command::WriteZeroes, 0, 0, 4096));
        assert_eq!(chunk_error(&a, false), errno::EPERM);
        let a = ro.on_header(&req(false, Command::Trim, 0, 0, 4096));
        assert_eq!(chunk_error(&a, false), errno::EPERM);
    }

    #[test]
    fn oversize_requests() {
        let t = Transmission::new(neg(true, false, false));
        let a = t.on_header(&req(false, Command::Read, 0, 0, (1 << 25) + 1));
        assert_eq!(chunk_error(&a, false), errno::EOVERFLOW);
        let a = t.on_header(&req(false, Command::Write, 0, 0, 1 << 26));
        assert!(matches!(a, Action::ReplyAndClose(_)));
        // A trim bigger than the maximum payload is fine if in range.
        let t = Transmission::new(Negotiated {
            facts: DeviceFacts {
                size: 1 << 30,
                ..neg(true, false, false).facts
            },
            ..neg(true, false, false)
        });
        assert!(matches!(
            t.on_header(&req(false, Command::Trim, 0, 0, 1 << 29)),
            Action::Execute(_)
        ));
    }

    #[test]
    fn flags_are_checked_per_command() {
        let t = Transmission::new(neg(false, false, false));
        // DF without structured replies, REQ_ONE on a read: EINVAL.
        let a = t.on_header(&req(false, Command::Read, cmd_flags::DF, 0, 512));
        assert_eq!(simple_error(&a), errno::EINVAL);
        let a = t.on_header(&req(false, Command::Read, cmd_flags::REQ_ONE, 0, 512));
        assert_eq!(simple_error(&a), errno::EINVAL);
        // Block status without a context: EINVAL.
        let a = t.on_header(&req(false, Command::BlockStatus, 0, 0, 512));
        assert_eq!(simple_error(&a), errno::EINVAL);
        // FAST_ZERO on a device that cannot zero fast: ENOTSUP.
        let a = t.on_header(&req(
            false,
            Command::WriteZeroes,
            cmd_flags::FAST_ZERO,
            0,
            512,
        ));
        assert_eq!(simple_error(&a), errno::ENOTSUP);
        let a = t.on_header(&req(
            false,
            Command::WriteZeroes,
            cmd_flags::NO_HOLE | cmd_flags::FUA,
            0,
            512,
        ));
        assert_eq!(
            a,
            Action::Execute(Op {
                cookie: 42,
                offset: 0,
                kind: OpKind::WriteZeroes {
                    len: 512,
                    may_trim: false,
                    fua: true
                }
            })
        );
        let a = t.on_header(&req(false, Command::Unknown(99), 0, 0, 0));
        assert_eq!(simple_error(&a), errno::EINVAL);
        assert_eq!(
            t.on_header(&req(false, Command::Disc, 0, 0, 0)),
            Action::Disconnect
        );
    }

    #[test]
    fn extended_requests_carry_payload_only_with_the_flag() {
        let t = Transmission::new(neg(true, true, false));
        assert_eq!(t.header_len(), 32);
        let a = t.on_header(&req(
            true,
            Command::Write,
            cmd_flags::PAYLOAD_LEN,
            512,
            4096,
        ));
        assert!(matches!(a, Action::ReadPayload { len: 4096, .. }));
        let a = t.on_header(&req(true, Command::Write, 0, 512, 4096));
        assert_eq!(chunk_error(&a, true), errno::EINVAL);
        // A payload on a command without one is consumed, then refused.
        let a = t.on_header(&req(true, Command::Flush, cmd_flags::PAYLOAD_LEN, 0, 16));
        assert!(matches!(a, Action::SkipPayload { len: 16, .. }));
        // A 64-bit effect length past the end is EINVAL, not a disconnect.
        let a = t.on_header(&req(true, Command::BlockStatus, 0, 0, 5 << 32));
        assert_eq!(chunk_error(&a, true), errno::EINVAL);
        // A compact header on an extended connection loses framing.
        assert!(matches!(
            t.on_header(&req(false, Command::Read, 0, 0, 512)),
            Action::Close(_)
        ));
    }

    #[test]
    fn bad_magic_closes() {
        let t = Transmission::new(neg(false, false, false));
        let mut b = req(false, Command::Read, 0, 0, 512);
        b[0] ^= 0xff;
        assert!(matches!(t.on_header(&b), Action::Close(_)));
    }

    proptest! {
        #[test]
        fn any_header_gets_a_decision_and_never_an_out_of_range_op(
            b in proptest::collection::vec(any::<u8>(), 32),
            fix_magic in any::<bool>(), ext in any::<bool>(), structured in any::<bool>(), ro in any::<bool>()
        ) {
            let mut b = b;
            if fix_magic {
                let m: u32 = if ext { 0x21e41c71 } else { 0x25609513 };
                b[..4].copy_from_slice(&m.to_be_bytes());
            }
            let t = Transmission::new(neg(structured, ext, ro));
            let a = t.on_header(&b[..t.header_len()]);
            if let Action::Execute(op) = &a {
                let len = match &op.kind {
                    OpKind::Read { len, .. } | OpKind::Trim { len, .. } | OpKind::WriteZeroes { len, .. }
                    | OpKind::Cache { len } | OpKind::BlockStatus { len, .. } => *len,
                    OpKind::Write { data, .. } => data.len() as u64,
                    OpKind::Flush => 0,
                };
                prop_assert!(op.offset.checked_add(len).is_some_and(|e| e <= 1 << 20));
                if ro {
                    let writes = matches!(op.kind, OpKind::Write { .. } | OpKind::Trim { .. } | OpKind::WriteZeroes { .. });
                    prop_assert!(!writes);
                }
            }
            if let Action::ReadPayload { len, .. } = a {
                prop_assert!(len <= MAX_PAYLOAD as usize);
                prop_assert!(!ro);
            }
        }
    }
}
