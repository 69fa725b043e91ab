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
