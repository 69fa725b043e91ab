//! Attachments: throwaway and persistent overlays, locks between servers,
//! client-key sanitizing, versioned images (promote without disturbing
//! running clients), read-only and frozen-base refusals.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyboot_images::attach::{persistent_path, sanitize_key};
use anyboot_images::raw::RawFile;
use anyboot_images::versions::VersionedImage;
use anyboot_images::{Attachment, BlockDevice, DiskMode, DiskSpec, Error};

const SIZE: u64 = 1 << 20;

fn make_base(dir: &Path, fill: u8) -> PathBuf {
    let p = dir.join(format!("base-{fill}.raw"));
    let raw = RawFile::create(&p, SIZE).unwrap();
    raw.write_at(&vec![fill; SIZE as usize], 0, false).unwrap();
    raw.flush().unwrap();
    p
}

fn spec(image: &Path, mode: DiskMode, overlay_dir: &Path) -> DiskSpec {
    DiskSpec {
        image: image.to_owned(),
        read_only: false,
        mode,
        overlay_dir: overlay_dir.to_owned(),
    }
}

fn byte_at(dev: &dyn BlockDevice, off: u64) -> u8 {
    let mut b = [0u8; 1];
    dev.read_at(&mut b, off).unwrap();
    b[0]
}

#[test]
fn throwaway_overlays_are_private_and_deleted_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_base(dir.path(), 0x11);
    let ovd = dir.path().join("overlays");
    let s = spec(&base, DiskMode::Throwaway, &ovd);
    let a1 = Attachment::open(&s, "52:54:00:aa:bb:cc").unwrap();
    let a2 = Attachment::open(&s, "52:54:00:aa:bb:cc").unwrap();
    let p1 = a1.overlay_path().unwrap().to_owned();
    assert!(p1.starts_with(&ovd) && p1.exists());
    assert_ne!(Some(p1.as_path()), a2.overlay_path());
    a1.device().write_at(&[0x22; 4096], 8192, false).unwrap();
    a1.device().trim(65536, 65536).unwrap();
    assert_eq!(byte_at(a1.device().as_ref(), 8192), 0x22);
    assert_eq!(byte_at(a1.device().as_ref(), 70000), 0);
    // The other attachment and the base see none of it.
    assert_eq!(byte_at(a2.device().as_ref(), 8192), 0x11);
    assert_eq!(byte_at(a2.device().as_ref(), 70000), 0x11);
    drop(a1);
    assert!(!p1.exists(), "throwaway overlay survived its attachment");
    let a3 = Attachment::open(&s, "52:54:00:aa:bb:cc").unwrap();
    assert_eq!(
        byte_at(a3.device().as_ref(), 8192),
        0x11,
        "a new boot is clean"
    );
    drop((a2, a3));
    assert_eq!(std::fs::read_dir(&ovd).unwrap().count(), 0);
    // The base is now frozen: a writable shared open is refused, even as root.
    let shared = spec(&base, DiskMode::Shared, &ovd);
    assert!(matches!(
        Attachment::open(&shared, "x"),
        Err(Error::ReadOnly)
    ));
    let ro = DiskSpec {
        read_only: true,
        ..shared
    };
    let a = Attachment::open(&ro, "x").unwrap();
    assert!(matches!(
        a.device().write_at(&[1], 0, false),
        Err(Error::ReadOnly)
    ));
    assert!(std::fs::read(&base).unwrap().iter().all(|&b| b == 0x11));
}

#[test]
fn a_base_being_written_in_shared_mode_cannot_get_overlays() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_base(dir.path(), 0x11);
    let ovd = dir.path().join("overlays");
    let shared = spec(&base, DiskMode::Shared, &ovd);
    let w1 = Attachment::open(&shared, "a").unwrap();
    let w2 = Attachment::open(&shared, "b").unwrap();
    let ro = Attachment::open(
        &DiskSpec {
            read_only: true,
            ..shared.clone()
        },
        "c",
    )
    .unwrap();
    let thr = spec(&base, DiskMode::Throwaway, &ovd);
    assert!(matches!(Attachment::open(&thr, "h"), Err(Error::Locked(_))));
    drop((w1, w2));
    // Read-only users do not keep the base from being frozen.
    let t = Attachment::open(&thr, "h").unwrap();
    assert_eq!(byte_at(t.device().as_ref(), 0), 0x11);
    assert_eq!(byte_at(ro.device().as_ref(), 0), 0x11);
}

#[test]
fn stale_throwaways_of_dead_servers_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_base(dir.path(), 0x11);
    let ovd = dir.path().join("overlays");
    std::fs::create_dir(&ovd).unwrap();
    // pid 999999999 is above Linux's pid_max: that server is surely gone.
    let stale = ovd.join("host-0123456789abcdef.999999999.0.throwaway");
    std::fs::write(&stale, b"left over").unwrap();
    let other = ovd.join("unrelated.txt");
    std::fs::write(&other, b"keep").unwrap();
    let _a = Attachment::open(&spec(&base, DiskMode::Throwaway, &ovd), "host").unwrap();
    assert!(!stale.exists());
    assert!(other.exists());
}

#[test]
fn persistent_overlays_persist_and_are_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_base(dir.path(), 0x11);
    let ovd = dir.path().join("overlays");
    let s = spec(&base, DiskMode::Persistent, &ovd);
    let key = "iqn.2025-01.org.example:host1";
    let a = Attachment::open(&s, key).unwrap();
    assert_eq!(a.overlay_path(), Some(persistent_path(&ovd, key).as_path()));
    a.device().write_at(&[0x33; 512], 4096, false).unwrap();
    a.device().flush().unwrap();
    // A second attachment in this process (a reconnect while the old
    // connection lingers) shares the device; a second *process* is refused
    // below.
    let again = Attachment::open(&s, key).unwrap();
    assert!(std::sync::Arc::ptr_eq(a.device(), again.device()));
    again.device().write_at(&[0x34; 512], 8192, false).unwrap();
    assert_eq!(byte_at(a.device().as_ref(), 8192), 0x34);
    drop(again);
    // A second, independent open of the file (what another server would do).
    assert!(matches!(
        anyboot_images::overlay::Overlay::open(&persistent_path(&ovd, key), false),
        Err(Error::Locked(_))
    ));
    // Another host has its own overlay.
    let b = Attachment::open(&s, "iqn.2025-01.org.example:host2").unwrap();
    assert_eq!(byte_at(b.device().as_ref(), 4096), 0x11);
    drop((a, b));
    let a = Attachment::open(&s, key).unwrap();
    assert_eq!(
        byte_at(a.device().as_ref(), 4096),
        0x33,
        "kept across reattach"
    );
    drop(a);

    // Another process holding it: the stress writer keeps it open for writing.
    let path = persistent_path(&ovd, key);
    let mut child = Command::new(env!("CARGO_BIN_EXE_anyboot-image"))
        .args([
            "stress-writer",
            path.to_str().unwrap(),
            "--seed",
            "1",
            "--count",
            "100000000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("B 0 "), "child said {line:?}");
    let r = Attachment::open(&s, key);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(matches!(r, Err(Error::Locked(_))), "got {r:?}");
    // With the other process gone (killed, lock released) it opens again.
    Attachment::open(&s, key).unwrap();

    // A persistent overlay made on another base is not silently reused.
    let other = make_base(dir.path(), 0x44);
    let moved = spec(&other, DiskMode::Persistent, &ovd);
    assert!(matches!(
        Attachment::open(&moved, key),
        Err(Error::Format { .. })
    ));
}

#[test]
fn client_keys_cannot_escape_the_overlay_dir() {
    let dir = tempfile::tempdir().unwrap();
    let ovd = dir.path().join("overlays");
    let long = "x".repeat(300);
    let keys = [
        "../../etc/passwd",
        "..",
        ".",
        "",
        "/abs/path",
        "a/b",
        "a:b",
        "a_b",
        "nul\0byte",
        "ünïcødé",
        long.as_str(),
        "52:54:00:12:34:56",
    ];
    let mut seen = std::collections::HashSet::new();
    for k in keys {
        let p = persistent_path(&ovd, k);
        assert_eq!(p.parent(), Some(ovd.as_path()), "{k:?} -> {}", p.display());
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(
            !name.starts_with('.') && !name.contains('/') && name.len() < 100,
            "{name}"
        );
        assert!(seen.insert(name.to_owned()), "{k:?} collides");
        let stem = sanitize_key(k);
        assert!(stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
    // And for real: the overlay lands inside the directory.
    let base = make_base(dir.path(), 0x11);
    let a = Attachment::open(&spec(&base, DiskMode::Persistent, &ovd), "../../escape").unwrap();
    assert!(a.overlay_path().unwrap().starts_with(&ovd));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn promoting_a_version_leaves_running_clients_alone() {
    let dir = tempfile::tempdir().unwrap();
    let v1_src = make_base(dir.path(), 0xa1);
    let img = dir.path().join("debian");
    let v = VersionedImage::init(&img, &v1_src).unwrap();
    let ovd = dir.path().join("overlays");
    let s = spec(&img, DiskMode::Throwaway, &ovd);
    let p = spec(&img, DiskMode::Persistent, &ovd);

    // A machine booted on v0001 (throwaway) and one with a persistent disk.
    let old = Attachment::open(&s, "old-client").unwrap();
    let pers = Attachment::open(&p, "pers-client").unwrap();
    pers.device().write_at(&[0x99; 512], 0, true).unwrap();
    drop(pers);

    // Prepare v0002 in a draft and put it into service.
    let draft = v.start_draft().unwrap();
    {
        let d = Attachment::open(&spec(&draft, DiskMode::Shared, &ovd), "admin").unwrap();
        d.device().write_at(&vec![0xb2; 65536], 0, false).unwrap();
        d.device().flush().unwrap();
    }
    assert_eq!(v.promote().unwrap(), "v0002");
    assert_eq!(v.current_name().unwrap(), "v0002");

    let new = Attachment::open(&s, "new-client").unwrap();
    assert_eq!(
        byte_at(new.device().as_ref(), 100),
        0xb2,
        "new boots get v0002"
    );
    assert_eq!(
        byte_at(old.device().as_ref(), 100),
        0xa1,
        "running client keeps v0001"
    );
    // The persistent disk stays on the version it was made from.
    let pers = Attachment::open(&p, "pers-client").unwrap();
    assert_eq!(byte_at(pers.device().as_ref(), 0), 0x99);
    assert_eq!(byte_at(pers.device().as_ref(), 1000), 0xa1);

    // Rolling the promotion back affects new boots only.
    v.set_current("v0001").unwrap();
    let back = Attachment::open(&s, "after-rollback").unwrap();
    assert_eq!(byte_at(back.device().as_ref(), 100), 0xa1);
    assert_eq!(byte_at(new.device().as_ref(), 100), 0xb2);
    assert!(v.set_current("v0009").is_err());
    assert_eq!(
        v.versions()
            .unwrap()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["v0001", "v0002"]
    );
}
