//! The durable lease log: an append-only file of checksummed lease records,
//! written in batches with one `fdatasync` per batch (group commit), replayed
//! and compacted at startup.
//!
//! File layout: the 8-byte magic `ABLEASE1`, then records
//!
//! ```text
//! +--------+-----------------------------------------------+---------+
//! | len u16| payload (len bytes)                           | crc32   |
//! +--------+-----------------------------------------------+---------+
//! payload: state u8 | addr [4] | expires_ms u64 | clen u8 | client | hlen u8 | hw
//! ```
//!
//! all big-endian; the CRC-32 (IEEE) covers the payload. A record cut short
//! by a crash (torn tail) fails its length or checksum: replay stops there and
//! the file is truncated to the last whole record. The last record of an
//! address wins.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::proto::leases::{Lease, LeaseState};

const MAGIC: &[u8; 8] = b"ABLEASE1";
/// Compact when the log holds this many times more records than live leases.
const COMPACT_FACTOR: usize = 4;
const COMPACT_MIN_RECORDS: usize = 10_000;

/// CRC-32 (IEEE 802.3, reflected), bitwise: records are small and few per
/// fsync, so a table buys nothing.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (!(crc & 1)).wrapping_add(1));
        }
    }
    !crc
}

fn state_code(s: LeaseState) -> u8 {
    match s {
        LeaseState::Offered => 0,
        LeaseState::Bound => 1,
        LeaseState::Released => 2,
        LeaseState::Declined => 3,
    }
}

fn encode(l: &Lease, out: &mut Vec<u8>) {
    let client = &l.client[..l.client.len().min(255)];
    let hw = &l.hw[..l.hw.len().min(255)];
    let len = 1 + 4 + 8 + 1 + client.len() + 1 + hw.len();
    let start = out.len();
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.push(state_code(l.state));
    out.extend_from_slice(&l.addr.octets());
    out.extend_from_slice(&l.expires_ms.to_be_bytes());
    out.push(client.len() as u8);
    out.extend_from_slice(client);
    out.push(hw.len() as u8);
    out.extend_from_slice(hw);
    let crc = crc32(&out[start + 2..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Decodes one record at the front of `buf`: `(lease, bytes used)`, or `None`
/// for a torn or corrupt record.
fn decode(buf: &[u8]) -> Option<(Lease, usize)> {
    let len = u16::from_be_bytes([*buf.first()?, *buf.get(1)?]) as usize;
    let payload = buf.get(2..2 + len)?;
    let crc = buf.get(2 + len..2 + len + 4)?;
    if crc32(payload) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return None;
    }
    let state = match *payload.first()? {
        0 => LeaseState::Offered,
        1 => LeaseState::Bound,
        2 => LeaseState::Released,
        3 => LeaseState::Declined,
        _ => return None,
    };
    let a = payload.get(1..5)?;
    let addr = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
    let mut e = [0u8; 8];
    e.copy_from_slice(payload.get(5..13)?);
    let clen = *payload.get(13)? as usize;
    let client = payload.get(14..14 + clen)?.to_vec();
    let hlen = *payload.get(14 + clen)? as usize;
    let hw = payload.get(15 + clen..15 + clen + hlen)?.to_vec();
    if 15 + clen + hlen != len {
        return None;
    }
    Some((
        Lease {
            addr,
            client,
            hw,
            state,
            expires_ms: u64::from_be_bytes(e),
        },
        2 + len + 4,
    ))
}

/// The open lease log.
#[derive(Debug)]
pub struct LeaseLog {
    path: PathBuf,
    file: File,
    /// The latest record of every address (what a compaction writes).
    live: HashMap<Ipv4Addr, Lease>,
    records: usize,
    fsyncs: u64,
}

impl LeaseLog {
    /// Opens (or creates) the log at `path`, replays it and compacts it.
    /// Returns the log and the recovered leases.
    pub fn open(path: &Path, now_ms: u64) -> io::Result<(LeaseLog, Vec<Lease>)> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let mut live = HashMap::new();
        match File::open(path) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                if buf.len() >= MAGIC.len() {
                    if &buf[..MAGIC.len()] != MAGIC {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{} is not an anyboot lease log", path.display()),
                        ));
                    }
                    let mut pos = MAGIC.len();
                    while let Some((l, used)) = decode(&buf[pos..]) {
                        live.insert(l.addr, l);
                        pos += used;
                    }
                    if pos != buf.len() {
                        tracing::warn!(
                            path = %path.display(),
                            dropped_bytes = buf.len() - pos,
                            "lease log ends in a torn or corrupt record; ignoring the tail"
                        );
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Offers are never written; declines past their hold are forgotten.
        live.retain(|_, l: &mut Lease| match l.state {
            LeaseState::Offered => false,
            LeaseState::Declined => l.active(now_ms),
            _ => true,
        });
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut log = LeaseLog {
            path: path.to_owned(),
            file,
            live,
            records: 0,
            fsyncs: 0,
        };
        log.compact()?;
        let leases = log.live.values().cloned().collect();
        Ok((log, leases))
    }

    /// Appends `leases` and makes them durable with one `fdatasync`.
    pub fn append(&mut self, leases: &[Lease]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(leases.len() * 48);
        for l in leases {
            encode(l, &mut buf);
            self.live.insert(l.addr, l.clone());
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.fsyncs += 1;
        self.records += leases.len();
        if self.records > COMPACT_MIN_RECORDS.max(COMPACT_FACTOR * self.live.len()) {
            self.compact()?;
        }
        Ok(())
    }

    /// How many fsyncs `append` has done (for the group-commit statistics).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs
    }

    /// Rewrites the log with one record per address: write a temporary file,
    /// fsync it, rename it over the log, fsync the directory.
    fn compact(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("compact");
        let mut buf = MAGIC.to_vec();
        for l in self.live.values() {
            encode(l, &mut buf);
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.records = self.live.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(d: u8, state: LeaseState, exp: u64) -> Lease {
        Lease {
            addr: Ipv4Addr::new(10, 0, 0, d),
            client: vec![1, 2, 3, d],
            hw: vec![2, 0, 0, 0, 0, d],
            state,
            expires_ms: exp,
        }
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn append_replay_last_record_wins_and_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/leases");
        let (mut log, rec) = LeaseLog::open(&path, 0).unwrap();
        assert!(rec.is_empty());
        log.append(&[
            lease(1, LeaseState::Bound, 5000),
            lease(2, LeaseState::Bound, 5000),
        ])
        .unwrap();
        log.append(&[
            lease(1, LeaseState::Released, 100),
            lease(3, LeaseState::Declined, 50),
        ])
        .unwrap();
        assert_eq!(log.fsyncs(), 2);
        drop(log);
        // A crash in the middle of a record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let mut torn = Vec::new();
        encode(&lease(9, LeaseState::Bound, 9999), &mut torn);
        f.write_all(&torn[..torn.len() - 3]).unwrap();
        drop(f);
        let (mut log, mut rec) = LeaseLog::open(&path, 60).unwrap();
        rec.sort_by_key(|l| l.addr);
        assert_eq!(
            rec,
            vec![
                lease(1, LeaseState::Released, 100),
                lease(2, LeaseState::Bound, 5000)
            ],
            "decline past its hold dropped, torn record ignored"
        );
        // The compacted file takes appends again.
        log.append(&[lease(4, LeaseState::Bound, 7000)]).unwrap();
        drop(log);
        let (_, rec) = LeaseLog::open(&path, 60).unwrap();
        assert_eq!(rec.len(), 3);
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases");
        std::fs::write(&path, b"not a lease log at all").unwrap();
        assert!(LeaseLog::open(&path, 0).is_err());
    }

    proptest::proptest! {
        #[test]
        fn records_round_trip(
            addr in proptest::prelude::any::<u32>(),
            client in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..255),
            hw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16),
            state in 0u8..4,
            exp in proptest::prelude::any::<u64>(),
        ) {
            let l = Lease {
                addr: Ipv4Addr::from(addr),
                client,
                hw,
                state: [LeaseState::Offered, LeaseState::Bound, LeaseState::Released, LeaseState::Declined][state as usize],
                expires_ms: exp,
            };
            let mut buf = Vec::new();
            encode(&l, &mut buf);
            proptest::prop_assert_eq!(decode(&buf), Some((l, buf.len())));
            // Any truncation is detected, never misread.
            for cut in 0..buf.len() {
                proptest::prop_assert_eq!(decode(&buf[..cut]), None);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder() {
        use proptest::prelude::*;
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..200))| {
            let _ = decode(&bytes);
        });
        let mut buf = Vec::new();
        let l = lease(7, LeaseState::Bound, 123);
        encode(&l, &mut buf);
        assert_eq!(decode(&buf), Some((l, buf.len())));
    }
}
