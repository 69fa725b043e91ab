//! Performs one transmission-phase operation on a block device and encodes
//! its reply (NBD protocol document, "Request types": structured reads with
//! `OFFSET_HOLE` for sparse ranges, `base:allocation` block status, errno
//! mapping). Blocking: the driver runs it on the blocking pool.

use anyboot_images::{Allocation, BlockDevice, Error as ImgError};
use anyboot_wire::nbd::{errno, state, Descriptor};
use bytes::{Bytes, BytesMut};

use crate::proto::reply::ReplyEncoder;
use crate::proto::transmission::{Op, OpKind};
use crate::proto::ALLOCATION_CONTEXT_ID;

/// Reads at least this long are checked for zero runs to send as holes
/// (smaller ones are not worth the extra chunks).
const SPARSE_READ_MIN: u64 = 64 * 1024;
/// Zero detection granularity: aligned blocks of this size that read as
/// zeroes become `OFFSET_HOLE` chunks.
const HOLE_BLOCK: u64 = 4096;
/// Cap on descriptors per status chunk (the document says at most 2^20).
const MAX_DESCRIPTORS: usize = 4096;

/// The NBD error value for a device error.
pub fn errno_of(e: &ImgError) -> u32 {
    match e {
        ImgError::OutOfRange { .. } => errno::EINVAL,
        ImgError::ReadOnly => errno::EPERM,
        ImgError::Unsupported(_) => errno::ENOTSUP,
        ImgError::NoSpace => errno::ENOSPC,
        ImgError::Io(io) => match io.raw_os_error() {
            Some(libc::EDQUOT) | Some(libc::EFBIG) | Some(libc::ENOSPC) => errno::ENOSPC,
            _ => errno::EIO,
        },
        _ => errno::EIO,
    }
}

/// Runs `op` on `dev`; returns the reply's buffers, to be written in order.
pub fn execute(dev: &dyn BlockDevice, op: Op, enc: ReplyEncoder) -> Vec<Bytes> {
    let (cookie, offset) = (op.cookie, op.offset);
    let done = |r: Result<(), ImgError>| match r {
        Ok(()) => vec![enc.ok(cookie, offset).freeze()],
        Err(e) => vec![error(enc, cookie, offset, &e)],
    };
    match op.kind {
        OpKind::Read { len, df } => read(dev, enc, cookie, offset, len, df),
        OpKind::Write { data, fua } => done(dev.write_at(&data, offset, fua)),
        OpKind::Flush => done(dev.flush()),
        OpKind::Trim { len, fua } => {
            done(
                dev.trim(offset, len)
                    .and_then(|()| if fua { dev.flush() } else { Ok(()) }),
            )
        }
        OpKind::WriteZeroes { len, may_trim, fua } => {
            done(dev.write_zeroes(offset, len, may_trim).and_then(|()| {
                if fua {
                    dev.flush()
                } else {
                    Ok(())
                }
            }))
        }
        // A hint only: the page cache already keeps what was read; the
        // document allows replying without doing anything.
        OpKind::Cache { .. } => vec![enc.ok(cookie, offset).freeze()],
        OpKind::BlockStatus { len, req_one } => {
            match block_status(dev, offset, len, req_one, enc.extended) {
                Ok(d) => vec![enc
                    .block_status(cookie, offset, ALLOCATION_CONTEXT_ID, d, true)
                    .freeze()],
                Err(e) => vec![error(enc, cookie, offset, &e)],
            }
        }
    }
}

fn error(enc: ReplyEncoder, cookie: u64, offset: u64, e: &ImgError) -> Bytes {
    tracing::debug!(cookie, offset, error = %e, "request failed");
    enc.error(cookie, offset, errno_of(e), &e.to_string())
        .freeze()
}

fn read(
    dev: &dyn BlockDevice,
    enc: ReplyEncoder,
    cookie: u64,
    offset: u64,
    len: u64,
    df: bool,
) -> Vec<Bytes> {
    if len == 0 {
        return vec![enc.none(cookie, offset).freeze()];
    }
    if !enc.structured {
        let mut b = enc.simple(cookie, 0, len as usize);
        return match dev.read_at(&mut b[16..], offset) {
            Ok(()) => vec![b.freeze()],
            Err(e) => vec![error(enc, cookie, offset, &e)],
        };
    }
    if df || len < SPARSE_READ_MIN {
        // One chunk, read straight into the reply buffer.
        let (mut b, start) = enc.data_chunk(cookie, offset, offset, len as usize, true);
        return match dev.read_at(&mut b[start..], offset) {
            Ok(()) => vec![b.freeze()],
            Err(e) => vec![error(enc, cookie, offset, &e)],
        };
    }
    // Larger reads: read everything (nothing is sent before the read has
    // succeeded, so an error is one error chunk), then send aligned runs of
    // zeroes as holes. Scanning memory is cheaper than asking the backend
    // (SEEK_HOLE walks the page cache on tmpfs) and finds zeroes that are
    // allocated too.
    let mut data = BytesMut::zeroed(len as usize);
    if let Err(e) = dev.read_at(&mut data, offset) {
        return vec![error(enc, cookie, offset, &e)];
    }
    let data = data.freeze();
    let segments = zero_runs(&data, offset);
    let last = segments.len() - 1;
    let mut out = Vec::with_capacity(segments.len() * 2);
    for (i, (start, n, hole)) in segments.into_iter().enumerate() {
        let at = offset + start as u64;
        if hole {
            out.push(
                enc.hole_chunk(cookie, offset, at, n as u32, i == last)
                    .freeze(),
            );
        } else {
            out.push(
                enc.data_chunk_header(cookie, offset, at, n, i == last)
                    .freeze(),
            );
            out.push(data.slice(start..start + n));
        }
    }
    out
}

/// Splits `data` (read at export offset `offset`) into `(start, len,
/// is_hole)` runs, holes being whole `HOLE_BLOCK`-aligned blocks of zeroes.
fn zero_runs(data: &[u8], offset: u64) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    let mut push = |start: usize, n: usize, hole: bool| match runs.last_mut() {
        Some(last) if last.2 == hole => last.1 += n,
        _ => runs.push((start, n, hole)),
    };
    let mut pos = 0usize;
    // A leading partial block is data.
    let head = ((HOLE_BLOCK - offset % HOLE_BLOCK) % HOLE_BLOCK) as usize;
    if head > 0 {
        let n = head.min(data.len());
        push(0, n, false);
        pos = n;
    }
    while pos < data.len() {
        let n = (data.len() - pos).min(HOLE_BLOCK as usize);
        let block = &data[pos..pos + n];
        let zero = n == HOLE_BLOCK as usize && is_zero(block);
        push(pos, n, zero);
        pos += n;
    }
    runs
}

/// Whether a block is all zero; ORs 64-byte lanes so it vectorises, and
/// stops at the first non-zero lane (data usually fails in the first one).
fn is_zero(block: &[u8]) -> bool {
    block
        .chunks(64)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

fn block_status(
    dev: &dyn BlockDevice,
    offset: u64,
    len: u64,
    req_one: bool,
    extended: bool,
) -> Result<Vec<Descriptor>, ImgError> {
    let extents = dev.block_status(offset, len)?;
    let mut out: Vec<Descriptor> = Vec::new();
    for e in extents {
        if e.len == 0 {
            continue;
        }
        let status = match e.state {
            Allocation::Data => 0,
            Allocation::Zero => state::ZERO,
            Allocation::Hole => state::HOLE | state::ZERO,
        } as u64;
        match out.last_mut() {
            Some(d) if d.status == status => d.len += e.len,
            _ => out.push(Descriptor { len: e.len, status }),
        }
        if out.len() >= MAX_DESCRIPTORS {
            break;
        }
    }
    if out.is_empty() {
        // Status 0 ("allocated, contents unknown") is always safe.
        out.push(Descriptor { len, status: 0 });
    }
    if req_one {
        out.truncate(1);
    }
    if !extended {
        // Compact descriptors have 32-bit lengths; requests are 32-bit too,
        // so only a merged run can overflow: clamp it.
        for d in &mut out {
            d.len = d.len.min(u64::from(u32::MAX) & !511);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyboot_images::raw::RawFile;
    use anyboot_wire::nbd::{
        parse_offset_data, BlockStatusRepr, ChunkHeaderRepr, ChunkType, OffsetHoleRepr,
        SimpleReplyRepr,
    };
    use bytes::Bytes;

    const ENC: ReplyEncoder = ReplyEncoder {
        structured: true,
        extended: false,
    };

    fn dev() -> RawFile {
        let d = RawFile::memory(4 << 20).unwrap();
        d.write_at(&[0xab; 8192], 1 << 20, false).unwrap();
        d
    }

    /// Reassembles a structured read: returns the bytes and the hole count.
    fn reassemble(frames: &[Bytes], offset: u64, len: usize) -> (Vec<u8>, usize) {
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let h = ChunkHeaderRepr::parse(&wire[at..]).unwrap();
            let end = at + 20 + h.length as usize;
            chunks.push((h, wire[at + 20..end].to_vec()));
            at = end;
        }
        let mut out = vec![0x55u8; len];
        let mut holes = 0;
        let n = chunks.len();
        for (i, (h, p)) in chunks.iter().enumerate() {
            assert_eq!(h.flags & 1 == 1, i == n - 1, "DONE only on the last");
            let p = &p[..];
            match h.chunk_type {
                ChunkType::OffsetData => {
                    let (at, data) = parse_offset_data(p).unwrap();
                    let s = (at - offset) as usize;
                    out[s..s + data.len()].copy_from_slice(data);
                }
                ChunkType::OffsetHole => {
                    let hole = OffsetHoleRepr::parse(p).unwrap();
                    let s = (hole.offset - offset) as usize;
                    out[s..s + hole.len as usize].fill(0);
                    holes += 1;
                }
                other => panic!("unexpected chunk {other:?}"),
            }
        }
        (out, holes)
    }

    #[test]
    fn sparse_read_sends_holes_unless_df() {
        let d = dev();
        let op = |df| Op {
            cookie: 1,
            offset: 0,
            kind: OpKind::Read { len: 2 << 20, df },
        };
        let frames = execute(&d, op(false), ENC);
        let (data, holes) = reassemble(&frames, 0, 2 << 20);
        assert!(holes >= 2, "expected holes around the data, got {holes}");
        assert!(data[..1 << 20].iter().all(|&b| b == 0));
        assert!(data[1 << 20..(1 << 20) + 8192].iter().all(|&b| b == 0xab));
        let frames = execute(&d, op(true), ENC);
        assert_eq!(frames.len(), 1, "DF: a single chunk");
        let (data2, holes) = reassemble(&frames, 0, 2 << 20);
        assert_eq!(holes, 0);
        assert_eq!(data, data2);
    }

    #[test]
    fn zero_runs_are_aligned_blocks() {
        let mut d = vec![0u8; 5 * 4096 + 100];
        d[2 * 4096 + 7] = 1;
        // Read at offset 100: the first 3996 bytes are a partial block.
        let runs = zero_runs(&d, 100);
        assert_eq!(runs[0], (0, 3996, false));
        assert_eq!(runs[1], (3996, 4096, true));
        assert_eq!(runs[2], (3996 + 4096, 4096, false));
        assert_eq!(runs[3], (3996 + 8192, 8192, true));
        assert_eq!(runs.iter().map(|r| r.1).sum::<usize>(), d.len());
        assert!(!runs.last().unwrap().2 || runs.last().unwrap().1 % 4096 == 0);
    }

    #[test]
    fn simple_read_and_write_round_trip() {
        let d = dev();
        let enc = ReplyEncoder {
            structured: false,
            extended: false,
        };
        let w = Op {
            cookie: 7,
            offset: 4096,
            kind: OpKind::Write {
                data: Bytes::from(vec![9u8; 512]),
                fua: true,
            },
        };
        let r = execute(&d, w, enc);
        assert_eq!(SimpleReplyRepr::parse(&r[0]).unwrap().error, 0);
        let rd = Op {
            cookie: 8,
            offset: 4096,
            kind: OpKind::Read {
                len: 512,
                df: false,
            },
        };
        let r = execute(&d, rd, enc);
        assert_eq!(r[0].len(), 16 + 512);
        assert!(r[0][16..].iter().all(|&b| b == 9));
    }

    #[test]
    fn block_status_reports_hole_and_data() {
        let d = dev();
        let op = Op {
            cookie: 3,
            offset: 0,
            kind: OpKind::BlockStatus {
                len: 2 << 20,
                req_one: false,
            },
        };
        let f = execute(&d, op.clone(), ENC);
        let h = ChunkHeaderRepr::parse(&f[0]).unwrap();
        assert_eq!(h.chunk_type, ChunkType::BlockStatus);
        let bs = BlockStatusRepr::parse(&f[0][20..], false).unwrap();
        assert_eq!(bs.context_id, ALLOCATION_CONTEXT_ID);
        assert_eq!(bs.descriptors[0].status, 3);
        assert_eq!(bs.descriptors[0].len, 1 << 20);
        assert_eq!(bs.descriptors[1].status, 0);
        assert_eq!(bs.descriptors.iter().map(|d| d.len).sum::<u64>(), 2 << 20);
        let one = Op {
            kind: OpKind::BlockStatus {
                len: 2 << 20,
                req_one: true,
            },
            ..op
        };
        let f = execute(&d, one, ENC);
        assert_eq!(
            BlockStatusRepr::parse(&f[0][20..], false)
                .unwrap()
                .descriptors
                .len(),
            1
        );
    }

    #[test]
    fn device_errors_map_to_errno() {
        assert_eq!(errno_of(&ImgError::ReadOnly), errno::EPERM);
        assert_eq!(errno_of(&ImgError::NoSpace), errno::ENOSPC);
        assert_eq!(
            errno_of(&ImgError::OutOfRange {
                offset: 0,
                len: 1,
                size: 0
            }),
            errno::EINVAL
        );
        assert_eq!(
            errno_of(&ImgError::Io(std::io::Error::from_raw_os_error(libc::EIO))),
            errno::EIO
        );
    }
}
