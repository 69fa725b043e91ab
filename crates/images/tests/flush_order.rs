//! Power-loss ordering, checked on the real syscalls: `strace` records what
//! `anyboot-image stress-writer` does to an overlay, and we check the rules of
//! the crash-consistency argument (docs/images.md) on the trace:
//! - a map write never follows a data write (or hole punch) that has not
//!   been `fdatasync`ed yet: the map never points at data a power loss
//!   could take away;
//! - when a step is reported flushed, no data or map write is unsynced.
//!
//! `kill -9` (tests/crash.rs) keeps the page cache; this covers what it cannot.

use std::process::Command;

use anyboot_images::lifecycle;
use anyboot_images::overlay::{CreateOptions, Overlay};
use anyboot_images::raw::RawFile;
use anyboot_images::BlockDevice;

const STEPS: usize = 150;

/// `(offset, length)` of a pwrite64 or fallocate line, from its last args.
fn offset_len(call: &str, line: &str) -> (u64, u64) {
    let args = &line[..line.rfind(") = ").expect("completed call")];
    let mut it = args.rsplit(", ");
    let a: u64 = it.next().unwrap().trim().parse().unwrap();
    let b: u64 = it.next().unwrap().trim().parse().unwrap();
    match call {
        // pwrite64(fd, buf, count, offset)
        "pwrite64" => (a, b),
        // fallocate(fd, mode, offset, len)
        _ => (b, a),
    }
}

fn fd_of(line: &str, call: &str) -> Option<i64> {
    let rest = &line[line.find(&format!("{call}("))? + call.len() + 1..];
    rest.split([',', ')']).next()?.trim().parse().ok()
}

#[test]
fn map_writes_follow_synced_data_and_flushes_leave_nothing_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let raw = RawFile::create(&base, 2 << 20).unwrap();
    raw.write_at(&vec![0x42; 1 << 20], 0, false).unwrap();
    drop(raw);
    let top = dir.path().join("top.ovl");
    lifecycle::create_overlay(&top, &base, CreateOptions::default()).unwrap();
    let header = Overlay::open(&top, true).unwrap().header().clone();
    let (map_start, data_start) = (header.map_offset, header.data_offset);

    let trace = dir.path().join("trace");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-s", "16", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=openat,pwrite64,fallocate,fdatasync,fsync,write",
        ])
        .arg(env!("CARGO_BIN_EXE_anyboot-image"))
        .arg("stress-writer")
        .arg(&top)
        .args(["--seed", "3", "--count", &STEPS.to_string()])
        .output()
        .expect("strace is required (Debian package strace)");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&trace).unwrap();

    let top_name = format!("{}\"", top.display());
    let mut ovl_fd: Option<i64> = None;
    let (mut data_unsynced, mut map_unsynced) = (false, false);
    let (mut map_writes, mut data_writes, mut reported) = (0, 0, 0);
    for line in text.lines() {
        if line.contains("openat(") && line.contains(&top_name) && line.contains("O_RDWR") {
            ovl_fd = line.rsplit(" = ").next().unwrap().trim().parse().ok();
            continue;
        }
        if line.contains("write(1, \"F ") {
            reported += 1;
            assert!(
                !data_unsynced && !map_unsynced,
                "step reported flushed with unsynced writes: {line}"
            );
            continue;
        }
        let Some(fd) = ovl_fd else { continue };
        for call in ["pwrite64", "fallocate"] {
            if fd_of(line, call) == Some(fd) {
                let (off, len) = offset_len(call, line);
                if off >= data_start {
                    data_unsynced = true;
                    data_writes += 1;
                } else if off >= map_start {
                    assert!(off + len <= data_start, "{line}");
                    assert!(
                        !data_unsynced,
                        "map written before the data it points at was synced: {line}"
                    );
                    map_unsynced = true;
                    map_writes += 1;
                } else {
                    panic!("header written by a plain writer: {line}");
                }
            }
        }
        if fd_of(line, "fdatasync") == Some(fd) || fd_of(line, "fsync") == Some(fd) {
            data_unsynced = false;
            map_unsynced = false;
        }
    }
    assert!(ovl_fd.is_some(), "overlay open not found in trace:\n{text}");
    assert_eq!(reported, STEPS);
    assert!(
        data_writes > STEPS / 2 && map_writes > 10,
        "{data_writes} {map_writes}"
    );
}
