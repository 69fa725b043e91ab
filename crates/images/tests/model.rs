//! Property test: an overlay chain (raw base with random content -> frozen
//! overlay -> writable overlay) and a plain `Vec<u8>` model get the same random
//! sequence of writes, trims, write-zeroes, flushes, reads, block-status
//! queries, reopens, snapshots and rollbacks; every read must agree.

use std::path::{Path, PathBuf};

use anyboot_images::chain;
use anyboot_images::lifecycle;
use anyboot_images::overlay::{CreateOptions, Overlay};
use anyboot_images::raw::RawFile;
use anyboot_images::{Allocation, BlockDevice, Error};
use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};

/// Base size: not a multiple of any cluster size, so the last cluster is partial.
const BASE_SIZE: u64 = 37 * 4096 + 1000;
/// The overlays are larger than the base: the tail reads as zeroes.
const SIZE: u64 = BASE_SIZE + 5000;

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u64,
        len: u64,
        pat: u8,
        fua: bool,
    },
    Trim {
        off: u64,
        len: u64,
    },
    Zero {
        off: u64,
        len: u64,
        may_trim: bool,
    },
    Read {
        off: u64,
        len: u64,
    },
    Status {
        off: u64,
        len: u64,
    },
    OutOfRange {
        off: u64,
        len: u64,
    },
    Flush,
    Reopen,
    Snapshot,
    Rollback {
        pick: usize,
    },
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..SIZE, 0u64..3 * 8192, any::<bool>()).prop_map(|(off, len, align)| {
        let (off, len) = if align {
            (off & !511, (len + 511) & !511)
        } else {
            (off, len)
        };
        (off, len.min(SIZE - off))
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (range(), any::<u8>(), prop::bool::weighted(0.1))
            .prop_map(|((off, len), pat, fua)| Op::Write { off, len, pat, fua }),
        2 => range().prop_map(|(off, len)| Op::Trim { off, len }),
        2 => (range(), any::<bool>()).prop_map(|((off, len), may_trim)| Op::Zero { off, len, may_trim }),
        4 => range().prop_map(|(off, len)| Op::Read { off, len }),
        1 => range().prop_map(|(off, len)| Op::Status { off, len }),
        1 => (0..SIZE + 10, 1u64..10_000).prop_map(|(off, len)| Op::OutOfRange {
            off: off.max(SIZE - len.min(SIZE) + 1),
            len
        }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => Just(Op::Snapshot),
        1 => any::<usize>().prop_map(|pick| Op::Rollback { pick }),
    ]
}

fn pattern(pat: u8, off: u64, len: u64) -> Vec<u8> {
    (off..off + len)
        .map(|p| pat.wrapping_add((p / 7) as u8))
        .collect()
}

/// Builds raw base (random content with a hole) -> mid overlay (8 KiB
/// clusters, random writes and a zeroed range, frozen) -> top overlay
/// (4 KiB clusters). Returns the top's path and the model of its content.
fn build_chain(dir: &Path, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let base = dir.join("base.raw");
    let raw = RawFile::create(&base, BASE_SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    rng.fill_bytes(&mut model[..BASE_SIZE as usize]);
    // Leave a hole in the base.
    model[20_000..50_000].fill(0);
    raw.write_at(&model[..20_000], 0, false).unwrap();
    raw.write_at(&model[50_000..BASE_SIZE as usize], 50_000, false)
        .unwrap();
    drop(raw);

    let mid = dir.join("mid.ovl");
    lifecycle::create_overlay(
        &mid,
        &base,
        CreateOptions {
            size: Some(SIZE),
            cluster_bits: 13,
        },
    )
    .unwrap();
    let dev = Overlay::open(&mid, false).unwrap();
    for _ in 0..10 {
        let off = rng.gen_range(0..SIZE);
        let len = rng.gen_range(0..20_000).min(SIZE - off);
        let data = pattern(rng.gen(), off, len);
        dev.write_at(&data, off, false).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    dev.write_zeroes(8192, 3 * 8192, true).unwrap();
    model[8192..4 * 8192].fill(0);
    drop(dev);

    let top = dir.join("top.ovl");
    lifecycle::create_overlay(
        &top,
        &mid,
        CreateOptions {
            size: None,
            cluster_bits: 12,
        },
    )
    .unwrap();
    assert!(chain::is_frozen(&mid).unwrap() && chain::is_frozen(&base).unwrap());
    (top, model)
}

fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut v = vec![0u8; dev.size() as usize];
    dev.read_at(&mut v, 0).unwrap();
    v
}

fn run(seed: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (top, mut model) = build_chain(dir.path(), seed);
    let base_before = std::fs::read(dir.path().join("base.raw")).unwrap();
    let mut dev = Some(Overlay::open(&top, false).unwrap());
    let mut snaps: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    prop_assert_eq!(read_all(dev.as_ref().unwrap()), model.clone());

    for (i, op) in ops.into_iter().enumerate() {
        let d = dev.as_ref().unwrap();
        match op {
            Op::Write { off, len, pat, fua } => {
                let data = pattern(pat, off, len);
                d.write_at(&data, off, fua).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            Op::Trim { off, len } => {
                d.trim(off, len).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            Op::Zero { off, len, may_trim } => {
                d.write_zeroes(off, len, may_trim).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            Op::Read { off, len } => {
                let mut buf = vec![0xa5u8; len as usize];
                d.read_at(&mut buf, off).unwrap();
                prop_assert_eq!(
                    &buf[..],
                    &model[off as usize..(off + len) as usize],
                    "op {} read {}+{}",
                    i,
                    off,
                    len
                );
            }
            Op::Status { off, len } => {
                let exts = d.block_status(off, len).unwrap();
                prop_assert_eq!(exts.iter().map(|e| e.len).sum::<u64>(), len);
                let mut p = off as usize;
                for e in exts {
                    prop_assert!(e.len > 0);
                    if e.state != Allocation::Data {
                        prop_assert!(
                            model[p..p + e.len as usize].iter().all(|&b| b == 0),
                            "{:?} extent at {} holds data",
                            e.state,
                            p
                        );
                    }
                    p += e.len as usize;
                }
            }
            Op::OutOfRange { off, len } => {
                let mut buf = vec![0u8; len as usize];
                let r = matches!(d.read_at(&mut buf, off), Err(Error::OutOfRange { .. }));
                let w = matches!(d.write_at(&buf, off, false), Err(Error::OutOfRange { .. }));
                let t = matches!(d.trim(off, len), Err(Error::OutOfRange { .. }));
                prop_assert!(
                    r && w && t,
                    "out of range {}+{}: {} {} {}",
                    off,
                    len,
                    r,
                    w,
                    t
                );
            }
            Op::Flush => d.flush().unwrap(),
            Op::Reopen => {
                drop(dev.take());
                dev = Some(Overlay::open(&top, false).unwrap());
            }
            Op::Snapshot => {
                drop(dev.take());
                let snap = lifecycle::snapshot(&top, &format!("s{i}")).unwrap();
                // The frozen snapshot refuses writable opens, even for root.
                let refused = matches!(Overlay::open(&snap, false), Err(Error::ReadOnly));
                prop_assert!(refused);
                snaps.push((snap, model.clone()));
                dev = Some(Overlay::open(&top, false).unwrap());
            }
            Op::Rollback { pick } => {
                if snaps.is_empty() {
                    continue;
                }
                let idx = pick % snaps.len();
                drop(dev.take());
                lifecycle::rollback(&top, Some(&snaps[idx].0)).unwrap();
                model = snaps[idx].1.clone();
                // Later snapshots are no longer in the chain.
                snaps.truncate(idx + 1);
                dev = Some(Overlay::open(&top, false).unwrap());
            }
        }
    }
    let d = dev.take().unwrap();
    prop_assert_eq!(read_all(&d), model.clone());
    drop(d);
    // A clean close and reopen keeps everything; the base never changed.
    let d = Overlay::open(&top, true).unwrap();
    prop_assert_eq!(read_all(&d), model);
    prop_assert_eq!(
        std::fs::read(dir.path().join("base.raw")).unwrap(),
        base_before
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn overlay_chain_matches_model(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..80)) {
        run(seed, ops)?;
    }
}

/// The memory overlay used by benchmarks obeys the same model (no files).
#[test]
fn memory_overlay_matches_model_seeded() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let size = 1u64 << 20;
    let base = RawFile::memory(size).unwrap();
    let mut model = vec![0u8; size as usize];
    rng.fill_bytes(&mut model);
    base.write_at(&model, 0, false).unwrap();
    let ov = Overlay::memory(Some(std::sync::Arc::new(base)), CreateOptions::default()).unwrap();
    for _ in 0..2000 {
        let off = rng.gen_range(0..size);
        let len = rng.gen_range(0..200_000).min(size - off);
        match rng.gen_range(0..4) {
            0 => {
                let data = pattern(rng.gen(), off, len);
                ov.write_at(&data, off, false).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            1 => {
                ov.trim(off, len).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            _ => {
                let mut buf = vec![0u8; len as usize];
                ov.read_at(&mut buf, off).unwrap();
                assert_eq!(buf, &model[off as usize..(off + len) as usize]);
            }
        }
    }
    assert_eq!(read_all(&ov), model);
}

/// Threads write, zero and read their own 512-byte slots, interleaved so
/// every cluster is shared by all threads, while another thread flushes: no
/// lost or torn writes (the allocation lock), every read matches the thread's
/// own model, and the final content matches after a reopen.
#[test]
fn concurrent_writers_on_shared_clusters_match_model() {
    const THREADS: u64 = 4;
    const SLOTS: u64 = 2048; // 1 MiB of 512-byte slots
    let dir = tempfile::tempdir().unwrap();
    let base_path = dir.path().join("base.raw");
    let mut base_content = vec![0u8; (SLOTS * 512) as usize];
    rand::rngs::SmallRng::seed_from_u64(11).fill_bytes(&mut base_content);
    let raw = RawFile::create(&base_path, SLOTS * 512).unwrap();
    raw.write_at(&base_content, 0, false).unwrap();
    drop(raw);
    let top = dir.path().join("top.ovl");
    let opts = CreateOptions {
        size: None,
        cluster_bits: 12,
    };
    lifecycle::create_overlay(&top, &base_path, opts).unwrap();
    let dev = std::sync::Arc::new(Overlay::open(&top, false).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = {
        let (dev, stop) = (dev.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                dev.flush().unwrap();
            }
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let dev = dev.clone();
            let mut model = base_content.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(100 + t);
                for _ in 0..1500 {
                    let slot = rng.gen_range(0..SLOTS / THREADS) * THREADS + t;
                    let off = slot * 512;
                    let r = off as usize..off as usize + 512;
                    match rng.gen_range(0..4) {
                        0 => {
                            dev.write_zeroes(off, 512, false).unwrap();
                            model[r].fill(0);
                        }
                        1 => {
                            let mut buf = [0u8; 512];
                            dev.read_at(&mut buf, off).unwrap();
                            assert_eq!(&buf[..], &model[r], "thread {t} slot {slot}");
                        }
                        _ => {
                            let data = pattern(rng.gen(), off, 512);
                            dev.write_at(&data, off, false).unwrap();
                            model[r].copy_from_slice(&data);
                        }
                    }
                }
                model
            })
        })
        .collect();
    let models: Vec<Vec<u8>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flusher.join().unwrap();
    let mut expect = base_content.clone();
    for slot in 0..SLOTS {
        let r = (slot * 512) as usize..(slot * 512 + 512) as usize;
        expect[r.clone()].copy_from_slice(&models[(slot % THREADS) as usize][r]);
    }
    assert_eq!(read_all(dev.as_ref()), expect);
    dev.flush().unwrap();
    drop(dev);
    assert_eq!(read_all(&Overlay::open(&top, true).unwrap()), expect);
}
