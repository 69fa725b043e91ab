//! AoE targets in throwaway and persistent disk modes: every client MAC gets
//! its own copy-on-write overlay of the base image (anyboot-images'
//! `Attachment::open(spec, client_mac)`).
//!
//! These need the images branch's overlays: before it is merged,
//! `Attachment::open` returns `Unsupported` for these modes and the target
//! answers every data command with an ATA error, so these tests fail until then.

use std::path::Path;
use std::time::{Duration, Instant};

use anyboot_aoe_target::initiator::{Device, Initiator, InitiatorError};
use anyboot_tests::{bin, in_netns, require_root, veth_pair, Daemon, Netns};

const SECTORS: usize = 2048;

struct Lab {
    ini: Netns,
    tgt: Netns,
    ini_if: String,
    other_if: String,
    tgt_if: String,
}

fn lab(tag: &str) -> Lab {
    require_root("AoE over veth pairs");
    let ini = Netns::new(&format!("{tag}i"));
    let tgt = Netns::new(&format!("{tag}t"));
    let (ini_if, tgt_if) = veth_pair(&ini, "", &tgt, "");
    // A second host with its own MAC on the same link.
    let other_if = format!("{}o", &ini_if[..ini_if.len().min(13)]);
    ini.exec_ok(&[
        "ip", "link", "add", "link", &ini_if, "name", &other_if, "type", "macvlan", "mode",
        "bridge",
    ]);
    ini.exec_ok(&["ip", "link", "set", &other_if, "up"]);
    Lab {
        ini,
        tgt,
        ini_if,
        other_if,
        tgt_if,
    }
}

fn site(dir: &Path, tgt_if: &str) -> std::path::PathBuf {
    let base = dir.join("base.raw");
    std::fs::write(&base, vec![0x11u8; SECTORS * 512]).unwrap();
    let cfg = dir.join("site.toml");
    std::fs::write(
        &cfg,
        format!(
            "[site]\nstate_dir = \"{state}\"\n\
             [[image]]\nname = \"base\"\npath = \"{base}\"\n\
             [aoe]\ninterfaces = [\"{tgt_if}\"]\n\
             [[aoe.target]]\nshelf = 2\nslot = 1\nimage = \"base\"\ndisk = \"throwaway\"\n\
             [[aoe.target]]\nshelf = 2\nslot = 2\nimage = \"base\"\ndisk = \"persistent\"\n",
            state = dir.join("state").display(),
            base = base.display(),
        ),
    )
    .unwrap();
    cfg
}

fn start(lab: &Lab, cfg: &Path, log: &Path) -> Daemon {
    let mut cmd = lab.tgt.command(bin("anyboot-aoe-target"));
    cmd.arg("-v").arg("--config").arg(cfg);
    Daemon::spawn("anyboot-aoe-target", &mut cmd, log)
}

fn attach(ini: &mut Initiator, slot: u8) -> Device {
    let start = Instant::now();
    loop {
        match ini.attach(2, slot, 8) {
            Ok(d) => return d,
            Err(InitiatorError::Timeout { .. }) if start.elapsed() < Duration::from_secs(10) => {}
            Err(e) => panic!("attaching 2.{slot}: {e}"),
        }
    }
}

fn read_sector(ini: &mut Initiator, dev: &Device, lba: u64) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    ini.read(dev, lba, &mut b).unwrap();
    b
}

#[test]
fn each_client_mac_gets_its_own_overlay() {
    let lab = lab("aoeov");
    let dir = tempfile::tempdir().unwrap();
    let cfg = site(dir.path(), &lab.tgt_if);
    let target = start(&lab, &cfg, &dir.path().join("t1.log"));
    let mut a = in_netns(&lab.ini, || Initiator::open(&lab.ini_if)).unwrap();
    let mut b = in_netns(&lab.ini, || Initiator::open(&lab.other_if)).unwrap();
    for slot in [1u8, 2] {
        let da = attach(&mut a, slot);
        let db = attach(&mut b, slot);
        a.write(&da, 5, &[0xaa; 512]).unwrap();
        b.write(&db, 5, &[0xbb; 512]).unwrap();
        assert_eq!(read_sector(&mut a, &da, 5), vec![0xaa; 512]);
        assert_eq!(read_sector(&mut b, &db, 5), vec![0xbb; 512]);
        assert_eq!(read_sector(&mut a, &da, 6), vec![0x11; 512]);
    }
    target.stop();
    assert!(
        std::fs::read(dir.path().join("base.raw"))
            .unwrap()
            .iter()
            .all(|b| *b == 0x11),
        "the base image was written"
    );
    // After a restart the throwaway overlay is gone, the persistent one kept.
    let target = start(&lab, &cfg, &dir.path().join("t2.log"));
    let d1 = attach(&mut a, 1);
    let d2 = attach(&mut a, 2);
    assert_eq!(read_sector(&mut a, &d1, 5), vec![0x11; 512]);
    assert_eq!(read_sector(&mut a, &d2, 5), vec![0xaa; 512]);
    target.stop();
}

#[test]
fn a_throwaway_client_that_reattaches_after_a_pause_starts_clean() {
    let lab = lab("aoegap");
    let dir = tempfile::tempdir().unwrap();
    let cfg = site(dir.path(), &lab.tgt_if);
    // A one-second reattach gap on the throwaway target (2.1) keeps the test short.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "disk = \"throwaway\"\n",
        "disk = \"throwaway\"\nreattach_gap = 1\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let target = start(&lab, &cfg, &dir.path().join("t.log"));
    let mut a = in_netns(&lab.ini, || Initiator::open(&lab.ini_if)).unwrap();
    for slot in [1u8, 2] {
        let d = attach(&mut a, slot);
        a.write(&d, 7, &[0xcc; 512]).unwrap();
    }
    // Identifying again at once (iPXE handing the disk to the OS) keeps the overlay.
    let d1 = attach(&mut a, 1);
    assert_eq!(read_sector(&mut a, &d1, 7), vec![0xcc; 512]);
    // After a pause longer than the gap, identifying is a new boot: throwaway
    // starts clean, persistent keeps its data.
    std::thread::sleep(Duration::from_millis(1500));
    let d1 = attach(&mut a, 1);
    let d2 = attach(&mut a, 2);
    assert_eq!(read_sector(&mut a, &d1, 7), vec![0x11; 512]);
    assert_eq!(read_sector(&mut a, &d2, 7), vec![0xcc; 512]);
    assert!(
        target.log().contains("re-attached after a pause"),
        "{}",
        target.log()
    );
    target.stop();
}
