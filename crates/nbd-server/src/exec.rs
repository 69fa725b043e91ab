//! Performs one transmission-phase operation on a block device and encodes
//! its reply (NBD protocol document, "Request types": structured reads with
//! `OFFSET_HOLE` for sparse ranges, `base:allocation` block status, errno
//! mapping). Blocking: the driver runs it on the blocking pool.

use anyboot_images::{Allocation, BlockDevice, Error as ImgError, Extent};
use anyboot_wire::nbd::{errno, state, Descriptor};
use bytes::BytesMut;

use crate::proto::reply::ReplyEncoder;
use crate::proto::transmission::{Op, OpKind};
use crate::proto::ALLOCATION_CONTEXT_ID;

/// Reads at least this long are checked for holes (smaller ones are not
/// worth a SEEK_DATA round).
const SPARSE_READ_MIN: u64 = 64 * 1024;
/// Zero runs shorter than this are sent as data rather than as a hole chunk.
const MIN_HOLE: u64 = 4096;
/// Cap on extents looked at per read (the rest is sent as data).
const MAX_READ_EXTENTS: usize = 256;
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

/// Runs `op` on `dev`; returns the reply frames in order.
pub fn execute(dev: &dyn BlockDevice, op: Op, enc: ReplyEncoder) -> Vec<BytesMut> {
    let (cookie, offset) = (op.cookie, op.offset);
    let done = |r: Result<(), ImgError>| match r {
        Ok(()) => vec![enc.ok(cookie, offset)],
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
        OpKind::Cache { .. } => vec![enc.ok(cookie, offset)],
        OpKind::BlockStatus { len, req_one } => {
            match block_status(dev, offset, len, req_one, enc.extended) {
                Ok(d) => vec![enc.block_status(cookie, offset, ALLOCATION_CONTEXT_ID, d, true)],
                Err(e) => vec![error(enc, cookie, offset, &e)],
            }
        }
    }
}

fn error(enc: ReplyEncoder, cookie: u64, offset: u64, e: &ImgError) -> BytesMut {
    tracing::debug!(cookie, offset, error = %e, "request failed");
    enc.error(cookie, offset, errno_of(e), &e.to_string())
}

fn read(
    dev: &dyn BlockDevice,
    enc: ReplyEncoder,
    cookie: u64,
    offset: u64,
    len: u64,
    df: bool,
) -> Vec<BytesMut> {
    if len == 0 {
        return vec![enc.none(cookie, offset)];
    }
    if !enc.structured {
        let mut b = enc.simple(cookie, 0, len as usize);
        return match dev.read_at(&mut b[16..], offset) {
            Ok(()) => vec![b],
            Err(e) => vec![error(enc, cookie, offset, &e)],
        };
    }
    let segments = if df || len < SPARSE_READ_MIN {
        vec![(offset, len, false)]
    } else {
        read_segments(dev, offset, len)
    };
    let last = segments.len() - 1;
    let mut out = Vec::with_capacity(segments.len());
    for (i, (at, n, hole)) in segments.into_iter().enumerate() {
        if hole {
            out.push(enc.hole_chunk(cookie, offset, at, n as u32, i == last));
            continue;
        }
        let (mut b, start) = enc.data_chunk(cookie, offset, at, n as usize, i == last);
        if let Err(e) = dev.read_at(&mut b[start..], at) {
            // Nothing has been sent yet: one error chunk replaces it all.
            return vec![error(enc, cookie, offset, &e)];
        }
        out.push(b);
    }
    out
}

/// Splits a read into data and hole runs: `(offset, len, is_hole)`.
fn read_segments(dev: &dyn BlockDevice, offset: u64, len: u64) -> Vec<(u64, u64, bool)> {
    let end = offset + len;
    let mut segs: Vec<(u64, u64, bool)> = Vec::new();
    let mut push = |at: u64, n: u64, hole: bool| match segs.last_mut() {
        Some(last) if last.2 == hole => last.1 += n,
        _ => segs.push((at, n, hole)),
    };
    let mut pos = offset;
    let mut looked = 0;
    while pos < end && looked < MAX_READ_EXTENTS {
        let Ok(extents) = dev.block_status(pos, end - pos) else {
            break;
        };
        if extents.is_empty() {
            break;
        }
        for Extent { len: n, state } in extents {
            let n = n.min(end - pos);
            if n == 0 {
                continue;
            }
            let zero = matches!(state, Allocation::Hole | Allocation::Zero);
            push(pos, n, zero && n >= MIN_HOLE);
            pos += n;
            looked += 1;
        }
    }
    if pos < end {
        push(pos, end - pos, false);
    }
    segs
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
    fn reassemble(frames: &[BytesMut], offset: u64, len: usize) -> (Vec<u8>, usize) {
        let mut out = vec![0x55u8; len];
        let mut holes = 0;
        for (i, f) in frames.iter().enumerate() {
            let h = ChunkHeaderRepr::parse(f).unwrap();
            assert_eq!(
                h.flags & 1 == 1,
                i == frames.len() - 1,
                "DONE only on the last"
            );
            let p = &f[20..];
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
        assert_eq!(frames.len(), 1);
        let (data2, holes) = reassemble(&frames, 0, 2 << 20);
        assert_eq!(holes, 0);
        assert_eq!(data, data2);
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
