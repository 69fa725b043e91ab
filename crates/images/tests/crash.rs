//! Crash test: a child process (`anyboot-image stress-writer`) writes, trims
//! and zeroes an overlay, flushing after each step and reporting it; we SIGKILL
//! it at seeded random points and check that the reopened image holds every
//! reported (flushed) step, and that the one step in flight is either wholly
//! absent or, byte by byte, present.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyboot_images::lifecycle;
use anyboot_images::overlay::{CreateOptions, Overlay};
use anyboot_images::raw::RawFile;
use anyboot_images::BlockDevice;
use rand::{Rng, RngCore, SeedableRng};

const SIZE: u64 = 4 << 20;
const ROUNDS: u64 = 8;

/// Same as `stress_byte` in src/main.rs.
fn stress_byte(pat: u64, pos: u64) -> u8 {
    (pat.wrapping_mul(31).wrapping_add(pos.wrapping_mul(7)) >> 3) as u8 | 1
}

#[derive(Debug, Clone)]
struct Step {
    kind: String,
    off: u64,
    len: u64,
    pat: u64,
}

fn apply(model: &mut [u8], s: &Step) {
    let r = s.off as usize..(s.off + s.len) as usize;
    if s.kind == "write" {
        for (p, b) in r.clone().zip(model[r].iter_mut()) {
            *b = stress_byte(s.pat, p as u64);
        }
    } else {
        model[r].fill(0);
    }
}

fn read_all(path: &Path) -> Vec<u8> {
    let dev = Overlay::open(path, true).unwrap();
    let mut v = vec![0u8; dev.size() as usize];
    dev.read_at(&mut v, 0).unwrap();
    v
}

#[test]
fn flushed_writes_survive_sigkill() {
    let seed: u64 = 0x5eed_c0de;
    eprintln!("crash test seed {seed:#x}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let mut model = vec![0u8; SIZE as usize];
    rng.fill_bytes(&mut model[..SIZE as usize / 2]);
    let raw = RawFile::create(&base, SIZE).unwrap();
    raw.write_at(&model, 0, false).unwrap();
    drop(raw);
    let top = dir.path().join("top.ovl");
    lifecycle::create_overlay(&top, &base, CreateOptions::default()).unwrap();

    let mut total_confirmed = 0;
    for round in 0..ROUNDS {
        let kill_after = rng.gen_range(1..30u64);
        let mut child = Command::new(env!("CARGO_BIN_EXE_anyboot-image"))
            .arg("stress-writer")
            .arg(&top)
            .args(["--seed", &(seed ^ round).to_string(), "--count", "100000"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut pending: Option<Step> = None;
        let mut confirmed = 0u64;
        let mut killed = false;
        for line in lines.by_ref() {
            let line = line.unwrap();
            let f: Vec<&str> = line.split(' ').collect();
            match f[0] {
                "B" => {
                    pending = Some(Step {
                        kind: f[2].to_owned(),
                        off: f[3].parse().unwrap(),
                        len: f[4].parse().unwrap(),
                        pat: f[5].parse().unwrap(),
                    });
                }
                "F" => {
                    apply(&mut model, &pending.take().expect("F without B"));
                    confirmed += 1;
                }
                other => panic!("unexpected output {other:?}"),
            }
            if confirmed == kill_after && !killed {
                // Land somewhere inside the next step: its write, its copy-up,
                // its data sync or its map update.
                std::thread::sleep(Duration::from_micros(rng.gen_range(0..3000)));
                child.kill().unwrap();
                killed = true;
                // Keep reading: steps reported before death count too.
            }
        }
        let status = child.wait().unwrap();
        assert!(
            killed && !status.success(),
            "round {round}: child ended by itself: {status}"
        );
        total_confirmed += confirmed;

        let got = read_all(&top);
        let mut with_pending = model.clone();
        if let Some(p) = &pending {
            apply(&mut with_pending, p);
        }
        for (i, ((g, a), b)) in got.iter().zip(&model).zip(&with_pending).enumerate() {
            assert!(
                g == a || g == b,
                "round {round}: byte {i} is {g:#x}, expected {a:#x} (flushed) or {b:#x} (step in flight {pending:?}); {confirmed} steps were flushed"
            );
        }
        // Whatever the step in flight left behind is the new truth.
        model = got;
    }
    assert!(total_confirmed >= ROUNDS);
    // The image is still a valid, writable overlay afterwards.
    let dev = Overlay::open(&top, false).unwrap();
    dev.write_at(&[9; 4096], 0, true).unwrap();
}

/// Several threads write 4 KiB slots they own (interleaved, so they share
/// clusters and race to allocate them) while another thread flushes; SIGKILL
/// at seeded points. Every write that completed before a flush *started*, and
/// that flush ended, must be in the reopened image (or a later write of the
/// same slot); no sector may hold anything else.
#[test]
fn flushed_writes_of_concurrent_writers_survive_sigkill() {
    use std::collections::HashMap;
    const THREADS: u64 = 4;
    const SLOT: u64 = 4096;
    const ROUNDS: u64 = 5;
    let size: u64 = 2 << 20;
    let seed: u64 = 0xc0ffee;
    eprintln!("threaded crash test seed {seed:#x}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let mut model = vec![0u8; size as usize];
    rng.fill_bytes(&mut model);
    let raw = RawFile::create(&base, size).unwrap();
    raw.write_at(&model, 0, false).unwrap();
    drop(raw);
    let top = dir.path().join("top.ovl");
    lifecycle::create_overlay(&top, &base, CreateOptions::default()).unwrap();
    let slots = (size / SLOT) as usize;

    let mut total_confirmed = 0;
    for round in 0..ROUNDS {
        let kill_after = rng.gen_range(2..12u64);
        let mut child = Command::new(env!("CARGO_BIN_EXE_anyboot-image"))
            .arg("stress-writer")
            .arg(&top)
            .args(["--seed", &(seed ^ round).to_string(), "--count", "1000000"])
            .args(["--threads", &THREADS.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Per slot, the patterns written to it, in order (one owner thread).
        let mut hist: Vec<Vec<u64>> = vec![Vec::new(); slots];
        let mut started: HashMap<(u64, u64), (usize, usize)> = HashMap::new();
        let mut completed: Vec<(u64, u64)> = Vec::new();
        let mut flush_starts: HashMap<u64, usize> = HashMap::new();
        let (mut confirmed, mut ends, mut killed) = (0usize, 0u64, false);
        for line in lines {
            let line = line.unwrap();
            let f: Vec<u64> = line[2..].split(' ').map(|x| x.parse().unwrap()).collect();
            match &line[..1] {
                "B" => {
                    let slot = f[2] as usize;
                    hist[slot].push(f[3]);
                    started.insert((f[0], f[1]), (slot, hist[slot].len() - 1));
                }
                "D" => completed.push((f[0], f[1])),
                "S" => {
                    flush_starts.insert(f[0], completed.len());
                }
                "E" => {
                    confirmed = confirmed.max(flush_starts[&f[0]]);
                    ends += 1;
                }
                other => panic!("unexpected output {other:?}"),
            }
            if ends == kill_after && !killed {
                std::thread::sleep(Duration::from_micros(rng.gen_range(0..3000)));
                child.kill().unwrap();
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        assert!(killed && !status.success(), "round {round}: {status}");
        total_confirmed += confirmed;

        // The newest confirmed write of each slot is its floor.
        let mut floor: Vec<Option<usize>> = vec![None; slots];
        for w in &completed[..confirmed] {
            let (slot, idx) = started[w];
            floor[slot] = Some(floor[slot].map_or(idx, |f: usize| f.max(idx)));
        }
        let got = read_all(&top);
        for slot in 0..slots {
            let off = slot as u64 * SLOT;
            let pattern =
                |pat: u64| -> Vec<u8> { (off..off + SLOT).map(|p| stress_byte(pat, p)).collect() };
            let mut candidates: Vec<Vec<u8>> = Vec::new();
            let from = match floor[slot] {
                Some(i) => i,
                None => {
                    candidates.push(model[off as usize..(off + SLOT) as usize].to_vec());
                    0
                }
            };
            candidates.extend(hist[slot][from..].iter().map(|&p| pattern(p)));
            for sector in 0..(SLOT / 512) as usize {
                let r = sector * 512..(sector + 1) * 512;
                let g = &got[off as usize + r.start..off as usize + r.end];
                assert!(
                    candidates.iter().any(|c| &c[r.clone()] == g),
                    "round {round}: slot {slot} sector {sector} holds neither its last \
                     flushed write nor a later one (floor {:?} of {} writes)",
                    floor[slot],
                    hist[slot].len()
                );
            }
        }
        model = got;
    }
    assert!(total_confirmed > 0);
}
