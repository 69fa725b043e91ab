//! The `anyboot-image` CLI end to end: create, overlay, snapshot, info,
//! flatten, rollback, clone, delete refusals, qcow2 export/import checked with
//! qemu-img (qemu-utils), versioned images.

use std::path::Path;
use std::process::{Command, Output};

use anyboot_images::overlay::Overlay;
use anyboot_images::raw::RawFile;
use anyboot_images::{chain, BlockDevice, Error};

fn cli(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_anyboot-image"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "anyboot-image {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = cli(dir, args);
    assert!(out.status.success(), "anyboot-image {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = cli(dir, args);
    assert!(
        !out.status.success(),
        "anyboot-image {args:?} should have failed"
    );
    String::from_utf8(out.stderr).unwrap()
}

fn content(path: &Path) -> Vec<u8> {
    let dev = chain::open_image(path, true).unwrap();
    let mut v = vec![0u8; dev.size() as usize];
    dev.read_at(&mut v, 0).unwrap();
    v
}

fn write(path: &Path, off: u64, data: &[u8]) {
    let dev = Overlay::open(path, false).unwrap();
    dev.write_at(data, off, false).unwrap();
    dev.flush().unwrap();
}

fn qemu_img(args: &[&str], dir: &Path) -> Output {
    Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("qemu-img is required (Debian package qemu-utils)")
}

#[test]
fn lifecycle_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["create", "base.raw", "--size", "4M"]);
    {
        let raw = RawFile::open(&d.join("base.raw"), false).unwrap();
        raw.write_at(&[0x11; 1 << 20], 1 << 20, false).unwrap();
        raw.flush().unwrap();
    }
    ok(d, &["overlay", "base.raw", "vm.ovl"]);
    assert!(chain::is_frozen(&d.join("base.raw")).unwrap());
    assert!(matches!(
        RawFile::open(&d.join("base.raw"), false),
        Err(Error::ReadOnly)
    ));

    write(&d.join("vm.ovl"), 0, &[0xaa; 100_000]);
    let at_s1 = content(&d.join("vm.ovl"));
    let snap = ok(d, &["snapshot", "vm.ovl", "s1"]);
    assert!(snap.trim().ends_with("vm.ovl@s1"));
    assert_eq!(
        content(&d.join("vm.ovl")),
        at_s1,
        "snapshot changes nothing visible"
    );
    write(&d.join("vm.ovl"), 50_000, &[0xbb; 2_000_000]);
    let after = content(&d.join("vm.ovl"));
    assert_ne!(after, at_s1);

    let info = ok(d, &["info", "vm.ovl"]);
    let lines: Vec<&str> = info.lines().collect();
    assert_eq!(lines.len(), 3, "{info}");
    assert!(lines[0].starts_with("vm.ovl: overlay"));
    assert!(lines[1].starts_with("  vm.ovl@s1: overlay") && lines[1].contains("frozen"));
    assert!(lines[2].starts_with("    base.raw: raw") && lines[2].contains("frozen"));

    ok(d, &["flatten", "vm.ovl", "flat.raw"]);
    assert_eq!(std::fs::read(d.join("flat.raw")).unwrap(), after);
    assert_eq!(
        chain::kind(&d.join("flat.raw")).unwrap(),
        chain::ImageKind::Raw
    );

    ok(d, &["rollback", "vm.ovl", "--to", "s1"]);
    assert_eq!(content(&d.join("vm.ovl")), at_s1);

    ok(d, &["clone", "vm.ovl", "clone.ovl"]);
    assert_eq!(content(&d.join("clone.ovl")), at_s1);
    write(&d.join("clone.ovl"), 0, &[0xcc; 10]);
    assert_eq!(content(&d.join("vm.ovl")), at_s1, "clones are independent");

    // Deleting what others depend on, or what is open, is refused.
    let e = fails(d, &["delete", "base.raw"]);
    assert!(e.contains("is the base of"), "{e}");
    let e = fails(d, &["delete", "vm.ovl@s1"]);
    assert!(e.contains("clone.ovl") && e.contains("vm.ovl"), "{e}");
    {
        let _open = Overlay::open(&d.join("clone.ovl"), false).unwrap();
        let e = fails(d, &["delete", "clone.ovl"]);
        assert!(e.contains("in use"), "{e}");
        let info = ok(d, &["info", "clone.ovl"]);
        assert!(
            info.contains("open by 1 writer(s) and 0 reader(s)"),
            "{info}"
        );
        // Its base is held (shared) by the open overlay's chain.
        assert!(
            info.contains("open by 0 writer(s) and 1 reader(s)"),
            "{info}"
        );
    }
    ok(d, &["delete", "clone.ovl"]);
    assert!(!d.join("clone.ovl").exists());
    // An overlay in another directory is found with --search.
    std::fs::create_dir(d.join("hosts")).unwrap();
    ok(d, &["overlay", "vm.ovl@s1", "hosts/h1.overlay"]);
    ok(d, &["delete", "vm.ovl", "--search", "hosts"]);
    let e = fails(d, &["delete", "vm.ovl@s1", "--search", "hosts"]);
    assert!(e.contains("h1.overlay"), "{e}");

    // qcow2 round trip, checked by qemu-img itself.
    ok(
        d,
        &[
            "export",
            "hosts/h1.overlay",
            "out.qcow2",
            "--format",
            "qcow2",
        ],
    );
    ok(d, &["export", "hosts/h1.overlay", "out.raw"]);
    assert_eq!(std::fs::read(d.join("out.raw")).unwrap(), at_s1);
    let cmp = qemu_img(
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            "out.raw",
            "out.qcow2",
        ],
        d,
    );
    assert!(cmp.status.success(), "qemu-img compare: {cmp:?}");
    let info = qemu_img(&["info", "out.qcow2"], d);
    assert!(String::from_utf8_lossy(&info.stdout).contains("file format: qcow2"));
    ok(d, &["import", "out.qcow2", "back.raw", "--format", "qcow2"]);
    assert_eq!(std::fs::read(d.join("back.raw")).unwrap(), at_s1);

    // Versioned image workflow.
    ok(d, &["version", "init", "debian", "back.raw"]);
    let draft = ok(d, &["version", "draft", "debian"]);
    write(&d.join(draft.trim()), 0, &[0xdd; 512]);
    assert_eq!(ok(d, &["version", "promote", "debian"]).trim(), "v0002");
    let list = ok(d, &["version", "list", "debian"]);
    assert_eq!(list, "  v0001\n* v0002\n");
    ok(d, &["version", "set", "debian", "v0001"]);
    assert_eq!(ok(d, &["info", "debian"]), "* v0001\n  v0002\n");
    fails(d, &["version", "set", "debian", "../etc"]);
    fails(d, &["snapshot", "hosts/h1.overlay", "../evil"]);
}
