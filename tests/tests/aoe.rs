//! End-to-end AoE tests over veth pairs between network namespaces: our
//! userspace initiator first proves itself against vblade (the reference
//! target), then drives `anyboot-aoe-target`, including its error paths, while
//! tshark captures the exchange and Wireshark's AoE dissector must decode every
//! frame of ours without malformed-packet or expert warnings.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyboot_aoe_target::initiator::{Device, Initiator, InitiatorError};
use anyboot_tests::{bin, in_netns, require, require_root, run, run_ok, veth_pair, Daemon, Netns};
use anyboot_wire::aoe::{
    aflags, AtaRepr, Command as AoeCommand, ConfigCommand, Directive, DirectiveCommand, ErrorCode,
    Mac, MaskPacket, MaskRepr, ReservePacket, ReserveRepr, MAC_BROADCAST,
};
use anyboot_wire::aoe::{MaskCommand, MaskError, ReserveCommand};
use anyboot_wire::ata::{error_bits, status};

const DISK_SECTORS: u64 = 8192; // 4 MiB
const WAIT: Duration = Duration::from_millis(400);

/// A deterministic disk image of `DISK_SECTORS` sectors.
fn make_image(path: &Path) -> Vec<u8> {
    let data: Vec<u8> = (0..DISK_SECTORS as usize * 512)
        .map(|i| ((i / 512) as u8).wrapping_mul(31) ^ (i % 253) as u8)
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

/// Two namespaces joined by a veth pair with `mtu`: (initiator side, target side).
struct Lab {
    ini: Netns,
    tgt: Netns,
    ini_if: String,
    tgt_if: String,
    dir: tempfile::TempDir,
}

fn lab(tag: &str, mtu: u32) -> Lab {
    require_root("AoE over veth pairs");
    let ini = Netns::new(&format!("{tag}i"));
    let tgt = Netns::new(&format!("{tag}t"));
    let (ini_if, tgt_if) = veth_pair(&ini, "", &tgt, "");
    for (ns, i) in [(&ini, &ini_if), (&tgt, &tgt_if)] {
        ns.exec_ok(&["ip", "link", "set", i, "mtu", &mtu.to_string()]);
    }
    Lab {
        ini,
        tgt,
        ini_if,
        tgt_if,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Lab {
    fn initiator(&self, ifname: &str) -> Initiator {
        in_netns(&self.ini, || Initiator::open(ifname)).expect("opening the initiator socket")
    }

    fn vblade(&self, image: &Path) -> Daemon {
        let vblade = require("vblade", "vblade");
        let mut cmd = self.tgt.command(vblade);
        cmd.args(["1", "1", &self.tgt_if]).arg(image);
        Daemon::spawn("vblade", &mut cmd, &self.dir.path().join("vblade.log"))
    }

    fn ours(&self, extra: &[&str]) -> Daemon {
        let mut cmd = self.tgt.command(bin("anyboot-aoe-target"));
        cmd.args(["-v", "--interface", &self.tgt_if]).args(extra);
        Daemon::spawn(
            "anyboot-aoe-target",
            &mut cmd,
            &self.dir.path().join("target.log"),
        )
    }
}

/// Attaches to `shelf.slot`, retrying while the target starts up.
fn attach(ini: &mut Initiator, shelf: u16, slot: u8, window: usize) -> Device {
    let start = Instant::now();
    loop {
        match ini.attach(shelf, slot, window) {
            Ok(d) => return d,
            Err(InitiatorError::Timeout { .. }) if start.elapsed() < Duration::from_secs(10) => {}
            Err(e) => panic!("attaching {shelf}.{slot}: {e}"),
        }
    }
}

/// The workload both targets must pass: read everything, write patterns at
/// the start, middle and end (more frames than the window), read them back.
fn read_write_workload(ini: &mut Initiator, dev: &Device, image: &mut [u8]) {
    assert_eq!(dev.sectors, DISK_SECTORS);
    let mut buf = vec![0u8; image.len()];
    ini.read(dev, 0, &mut buf).unwrap();
    assert!(buf == image, "whole-disk read differs from the image");
    for (lba, n, seed) in [
        (0u64, 64usize, 1u8),
        (4000, 37, 2),
        (DISK_SECTORS - 40, 40, 3),
    ] {
        let data: Vec<u8> = (0..n * 512)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect();
        ini.write(dev, lba, &data).unwrap();
        image[lba as usize * 512..lba as usize * 512 + data.len()].copy_from_slice(&data);
    }
    ini.read(dev, 0, &mut buf).unwrap();
    assert!(buf == image, "read after write differs");
}

fn ata(cmd: u8, lba: u64, count: u8, ext: bool) -> AtaRepr {
    let mut a = AtaRepr {
        aflags: if ext { aflags::EXTENDED } else { 0 },
        err_feature: 0,
        sector_count: count,
        cmd_status: cmd,
        lba: [0; 6],
    };
    a.set_lba(lba, ext);
    a
}

#[test]
fn initiator_reads_and_writes_a_vblade_disk() {
    let lab = lab("aoev", 1500);
    let image_path = lab.dir.path().join("disk.raw");
    let mut image = make_image(&image_path);
    let _vblade = lab.vblade(&image_path);
    let mut ini = lab.initiator(&lab.ini_if);
    let dev = attach(&mut ini, 1, 1, 16);
    let id = ini.identify(dev.mac, 1, 1).unwrap();
    assert_eq!(id.sectors, DISK_SECTORS);
    read_write_workload(&mut ini, &dev, &mut image);
    // Out-of-range read: vblade answers with an ATA error too.
    let r = ini.ata(dev.mac, 1, 1, ata(0x24, DISK_SECTORS, 1, true), &[]);
    let (h, _) = r.unwrap();
    assert_ne!(
        h.cmd_status & status::ERR,
        0,
        "vblade accepted an LBA past the end"
    );
    drop(_vblade);
    assert!(
        std::fs::read(&image_path).unwrap() == image,
        "vblade's file lacks our writes"
    );
}

/// Starts tshark capturing on the initiator's interface; returns it once it
/// reports that it captures.
fn tshark(lab: &Lab, file: &Path) -> Daemon {
    let tshark = require("tshark", "tshark");
    let log = lab.dir.path().join("tshark.log");
    let mut cmd = lab.ini.command(&tshark);
    cmd.args([
        "-i",
        &lab.ini_if,
        "-B",
        "64",
        "-f",
        "ether proto 0x88a2",
        "-w",
    ])
    .arg(file);
    let d = Daemon::spawn("tshark", &mut cmd, &log);
    let start = Instant::now();
    while !d.log().contains("Capturing on") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "tshark did not start: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // "Capturing on" can come well before the capture is live (a CI run
    // once lost all but the last 29 frames): send broadcast Query Config
    // frames, which nothing answers yet, until one is in the file (dumpcap
    // flushes it about every 100 ms).
    let mut probe = lab.initiator(&lab.ini_if);
    let start = Instant::now();
    loop {
        let _ = probe.discover(0xffff, 0xff, Duration::from_millis(50));
        let seen = Command::new(&tshark)
            .arg("-r")
            .arg(file)
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        if seen {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "tshark captured none of our probes: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d
}

/// Decodes the capture and checks every frame sent by `target_mac`.
fn check_capture(file: &Path, target_mac: Mac, min_frames: usize) {
    let tshark = require("tshark", "tshark");
    let mac = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        target_mac[0], target_mac[1], target_mac[2], target_mac[3], target_mac[4], target_mac[5]
    );
    let filter = format!("eth.src == {mac}");
    let all = run_ok(
        Command::new(&tshark)
            .arg("-r")
            .arg(file)
            .args(["-Y", &filter]),
    );
    let ours = all.lines().count();
    let aoe = run_ok(
        Command::new(&tshark)
            .arg("-r")
            .arg(file)
            .args(["-Y", &format!("{filter} && aoe")]),
    );
    assert!(
        ours >= min_frames,
        "only {ours} frames from the target captured"
    );
    let short = run_ok(
        Command::new(&tshark)
            .arg("-r")
            .arg(file)
            .args(["-Y", &format!("{filter} && frame.len < 60")]),
    );
    assert!(
        short.is_empty(),
        "frames shorter than the Ethernet minimum:\n{short}"
    );
    assert_eq!(
        aoe.lines().count(),
        ours,
        "frames not dissected as AoE:\n{all}"
    );
    let detail = run_ok(
        Command::new(&tshark)
            .arg("-r")
            .arg(file)
            .args(["-V", "-Y", &filter]),
    );
    for bad in ["Malformed", "Expert Info", "[Unreassembled", "Exception"] {
        assert!(
            !detail.contains(bad),
            "Wireshark flags a frame of ours with `{bad}`:\n{}",
            detail
                .lines()
                .filter(|l| l.contains(bad))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The dissector saw responses with the fields we set.
    assert!(
        detail.contains("ATA over Ethernet"),
        "no AoE decode in:\n{detail}"
    );
    // Every ATA response of ours is matched by the dissector to its request
    // (same tag, same shelf.slot).
    let ata = format!("{filter} && aoe.cmd == 0 && aoe.response == 1");
    let responses = run_ok(Command::new(&tshark).arg("-r").arg(file).args(["-Y", &ata]));
    let matched = run_ok(
        Command::new(&tshark)
            .arg("-r")
            .arg(file)
            .args(["-Y", &format!("{ata} && aoe.response_to")]),
    );
    assert!(responses.lines().count() >= min_frames / 2);
    assert_eq!(
        matched.lines().count(),
        responses.lines().count(),
        "responses not matched to requests"
    );
}

#[test]
fn initiator_reads_and_writes_our_target_and_wireshark_decodes_every_frame() {
    let lab = lab("aoeo", 1500);
    let image_path = lab.dir.path().join("disk.raw");
    let mut image = make_image(&image_path);
    let pcap = lab.dir.path().join("aoe.pcapng");
    let cap = tshark(&lab, &pcap);
    let target = lab.ours(&[
        "--target",
        &format!("1.1={}", image_path.display()),
        "--target",
        &format!("1.2={},ro", image_path.display()),
    ]);
    let mut ini = lab.initiator(&lab.ini_if);
    let dev = attach(&mut ini, 1, 1, 16);
    assert_eq!(dev.max_sectors, 2, "MTU 1500 carries two sectors");
    let id = ini.identify(dev.mac, 1, 1).unwrap();
    assert_eq!(id.sectors, DISK_SECTORS);
    assert!(id.lba48);
    assert_eq!(id.model, "anyboot AoE target");
    assert_eq!(id.serial, "anyboot-1.1");
    read_write_workload(&mut ini, &dev, &mut image);

    // Both targets answer a broadcast Query Config.
    let found = ini.discover(0xffff, 0xff, WAIT).unwrap();
    assert_eq!(
        found.iter().map(|f| (f.shelf, f.slot)).collect::<Vec<_>>(),
        vec![(1, 1), (1, 2)]
    );

    // FLUSH CACHE EXT and CHECK POWER MODE.
    let (h, _) = ini.ata(dev.mac, 1, 1, ata(0xea, 0, 0, true), &[]).unwrap();
    assert_eq!(h.cmd_status, status::DRDY);
    let (h, _) = ini.ata(dev.mac, 1, 1, ata(0xe5, 0, 0, false), &[]).unwrap();
    assert_eq!((h.cmd_status, h.sector_count), (status::DRDY, 0xff));

    // Out-of-range LBA (LBA28 and LBA48): ATA error, IDNF.
    for a in [
        ata(0x20, DISK_SECTORS - 1, 2, false),
        ata(0x24, 1 << 40, 1, true),
    ] {
        let (h, _) = ini.ata(dev.mac, 1, 1, a, &[]).unwrap();
        assert_eq!(
            (h.cmd_status, h.err_feature),
            (status::DRDY | status::ERR, error_bits::IDNF)
        );
    }
    // Unknown ATA opcode: aborted. Write to the read-only target: aborted.
    let (h, _) = ini.ata(dev.mac, 1, 1, ata(0x99, 0, 0, false), &[]).unwrap();
    assert_eq!(h.err_feature, error_bits::ABRT);
    let mut w = ata(0x34, 0, 1, true);
    w.aflags |= aflags::WRITE;
    let (h, _) = ini.ata(dev.mac, 1, 2, w, &[0x55; 512]).unwrap();
    assert_eq!(
        (h.cmd_status, h.err_feature),
        (status::DRDY | status::ERR, error_bits::ABRT)
    );

    // Bad shelf/slot: no answer at all.
    assert!(ini
        .exchange(MAC_BROADCAST, 7, 7, AoeCommand::QueryConfig, &[0; 8], WAIT)
        .unwrap()
        .is_empty());
    // Unknown AoE command: error reply 1, tag echoed.
    let r = ini
        .exchange_one(dev.mac, 1, 1, AoeCommand::Unknown(9), &[0; 8], WAIT)
        .unwrap()
        .expect("an error reply");
    assert_eq!(r.header.error, Some(ErrorCode::UnrecognizedCommand));
    assert!(r.header.response);

    config_strings(&mut ini, &dev);
    mac_mask(&lab, &mut ini, &dev);
    reserve(&lab, &mut ini, &dev);

    target.stop();
    let mut cap = cap;
    cap.stop_with(libc::SIGINT, Duration::from_secs(10))
        .expect("tshark exits on SIGINT");
    assert!(
        std::fs::read(&image_path).unwrap() == image,
        "the image lacks our writes"
    );
    check_capture(&pcap, dev.mac, 8000);
}

fn config_strings(ini: &mut Initiator, dev: &Device) {
    let q = |ini: &mut Initiator, c, s: &[u8]| ini.query_config(dev.mac, 1, 1, c, s, WAIT).unwrap();
    assert!(q(ini, ConfigCommand::TestExact, b"x").is_empty());
    let r = q(ini, ConfigCommand::SetIfEmpty, b"owner=pc1");
    assert_eq!(
        (r[0].0.header.error, r[0].1.config.as_slice()),
        (None, &b"owner=pc1"[..])
    );
    let r = q(ini, ConfigCommand::SetIfEmpty, b"owner=pc2");
    assert_eq!(r[0].0.header.error, Some(ErrorCode::ConfigStringPresent));
    assert_eq!(r[0].1.config, b"owner=pc1");
    assert_eq!(q(ini, ConfigCommand::TestExact, b"owner=pc1").len(), 1);
    assert_eq!(q(ini, ConfigCommand::TestPrefix, b"owner=").len(), 1);
    assert!(q(ini, ConfigCommand::TestPrefix, b"owner=pc2").is_empty());
    let r = q(ini, ConfigCommand::ForceSet, b"owner=pc3");
    assert_eq!(r[0].1.config, b"owner=pc3");
    assert_eq!(q(ini, ConfigCommand::Read, b"")[0].1.config, b"owner=pc3");
}

fn mask_arg(mcmd: MaskCommand, dirs: &[(DirectiveCommand, Mac)]) -> Vec<u8> {
    let r = MaskRepr {
        mcmd,
        merror: MaskError::None,
        dir_count: dirs.len() as u8,
    };
    let mut v = vec![0u8; r.buffer_len()];
    r.emit(&mut v).unwrap();
    let mut p = MaskPacket::new_unchecked(&mut v[..]);
    for (i, (dcmd, mac)) in dirs.iter().enumerate() {
        p.set_directive(
            i,
            Directive {
                dcmd: *dcmd,
                mac: *mac,
            },
        )
        .unwrap();
    }
    v
}

/// A second initiator on its own veth pair into the target namespace? The
/// target serves one interface here, so the "other host" is a macvlan on the
/// initiator side with its own MAC.
fn other_host(lab: &Lab) -> Initiator {
    let name = format!("{}o", &lab.ini_if[..lab.ini_if.len().min(13)]);
    if run(lab.ini.command("ip").args(["link", "show", &name]))
        .status
        .success()
    {
        return lab.initiator(&name);
    }
    lab.ini.exec_ok(&[
        "ip",
        "link",
        "add",
        "link",
        &lab.ini_if,
        "name",
        &name,
        "type",
        "macvlan",
        "mode",
        "bridge",
    ]);
    lab.ini.exec_ok(&["ip", "link", "set", &name, "up"]);
    lab.initiator(&name)
}

fn mac_mask(lab: &Lab, ini: &mut Initiator, dev: &Device) {
    let mut other = other_host(lab);
    let me = ini.mac();
    let config_read = [0u8; 8];
    assert!(other
        .exchange_one(dev.mac, 1, 1, AoeCommand::QueryConfig, &config_read, WAIT)
        .unwrap()
        .is_some());
    let r = ini
        .exchange_one(
            dev.mac,
            1,
            1,
            AoeCommand::MacMask,
            &mask_arg(MaskCommand::Edit, &[(DirectiveCommand::Add, me)]),
            WAIT,
        )
        .unwrap()
        .expect("mask edit answered");
    let p = MaskPacket::new_checked(&r.arg[..]).unwrap();
    assert_eq!(MaskRepr::parse(&p).unwrap().merror, MaskError::None);
    assert_eq!(p.directive(0).map(|d| d.mac), Some(me));
    // The other host is now ignored on every command, we are still served.
    assert!(other
        .exchange_one(dev.mac, 1, 1, AoeCommand::QueryConfig, &config_read, WAIT)
        .unwrap()
        .is_none());
    let mut buf = vec![0u8; 1024];
    let mut odev = dev.clone();
    odev.window = 1;
    other.max_tries = 2;
    other.timeout = Duration::from_millis(150);
    assert!(matches!(
        other.read(&odev, 0, &mut buf),
        Err(InitiatorError::Timeout { .. })
    ));
    ini.read(dev, 0, &mut buf).unwrap();
    // A bad directive is reported.
    let r = ini
        .exchange_one(
            dev.mac,
            1,
            1,
            AoeCommand::MacMask,
            &mask_arg(MaskCommand::Edit, &[(DirectiveCommand::Unknown(9), me)]),
            WAIT,
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        MaskRepr::parse(&MaskPacket::new_checked(&r.arg[..]).unwrap())
            .unwrap()
            .merror,
        MaskError::BadDirective
    );
    // Remove ourselves: open to all again.
    ini.exchange_one(
        dev.mac,
        1,
        1,
        AoeCommand::MacMask,
        &mask_arg(MaskCommand::Edit, &[(DirectiveCommand::Delete, me)]),
        WAIT,
    )
    .unwrap()
    .unwrap();
    assert!(other
        .exchange_one(dev.mac, 1, 1, AoeCommand::QueryConfig, &config_read, WAIT)
        .unwrap()
        .is_some());
}

fn reserve_arg(rcmd: ReserveCommand, macs: &[Mac]) -> Vec<u8> {
    let r = ReserveRepr {
        rcmd,
        nmacs: macs.len() as u8,
    };
    let mut v = vec![0u8; r.buffer_len()];
    r.emit(&mut v).unwrap();
    let mut p = ReservePacket::new_unchecked(&mut v[..]);
    for (i, m) in macs.iter().enumerate() {
        p.set_mac(i, *m).unwrap();
    }
    v
}

fn reserve(lab: &Lab, ini: &mut Initiator, dev: &Device) {
    let mut other = other_host(lab);
    let me = ini.mac();
    let r = ini
        .exchange_one(
            dev.mac,
            1,
            1,
            AoeCommand::Reserve,
            &reserve_arg(ReserveCommand::Set, &[me]),
            WAIT,
        )
        .unwrap()
        .unwrap();
    assert_eq!(r.header.error, None);
    // The other host's ATA commands are refused with "target reserved".
    match other.ata(dev.mac, 1, 1, ata(0x24, 0, 1, true), &[]) {
        Err(InitiatorError::Aoe(ErrorCode::TargetReserved)) => {}
        other => panic!("expected `target reserved`, got {other:?}"),
    }
    // It cannot take the reservation, but can read the list.
    let r = other
        .exchange_one(
            dev.mac,
            1,
            1,
            AoeCommand::Reserve,
            &reserve_arg(ReserveCommand::Set, &[other.mac()]),
            WAIT,
        )
        .unwrap()
        .unwrap();
    assert_eq!(r.header.error, Some(ErrorCode::TargetReserved));
    let r = other
        .exchange_one(
            dev.mac,
            1,
            1,
            AoeCommand::Reserve,
            &reserve_arg(ReserveCommand::Read, &[]),
            WAIT,
        )
        .unwrap()
        .unwrap();
    let p = ReservePacket::new_checked(&r.arg[..]).unwrap();
    assert_eq!(p.mac(0), Some(me));
    let mut buf = vec![0u8; 4096];
    ini.read(dev, 8, &mut buf).unwrap();
    // Release; the other host reads again.
    let r = ini
        .exchange_one(
            dev.mac,
            1,
            1,
            AoeCommand::Reserve,
            &reserve_arg(ReserveCommand::Set, &[]),
            WAIT,
        )
        .unwrap()
        .unwrap();
    assert_eq!(r.header.error, None);
    let (h, data) = other
        .ata(dev.mac, 1, 1, ata(0x24, 0, 1, true), &[])
        .unwrap();
    assert_eq!((h.cmd_status, data.len()), (status::DRDY, 512));
}

/// Runs an aoetools program inside the initiator namespace.
fn aoetool(lab: &Lab, tool: &str, args: &[&str]) -> String {
    let path = require(tool, "aoetools");
    let out = run(lab.ini.command("timeout").arg("10").arg(path).args(args));
    assert!(out.status.success(), "{tool} {args:?} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn aoetools_clients_talk_to_our_target() {
    let lab = lab("aoet", 1500);
    let image_path = lab.dir.path().join("disk.raw");
    make_image(&image_path);
    let target = lab.ours(&["--target", &format!("4.2={}", image_path.display())]);
    let i = lab.ini_if.as_str();
    // aoeping: Query Config, then IDENTIFY with the fields decoded.
    let start = Instant::now();
    let out = loop {
        let out = run(lab
            .ini
            .command(require("aoeping", "aoetools"))
            .args(["-I", "-s", "1", "4", "2", i]));
        if out.status.success() || start.elapsed() > Duration::from_secs(10) {
            break out;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "aoeping failed: {out:?}");
    assert!(text.contains("serial_number: anyboot-4.2"), "{text}");
    assert!(text.contains("model: anyboot AoE target"), "{text}");
    assert!(text.contains("firmware_rev: 0100"), "{text}");
    // aoecfg: every config string sub-command.
    let cfg = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["-t", "1", "4", "2", i]);
        aoetool(&lab, "aoecfg", &a)
    };
    assert_eq!(cfg(&["-c", "read"]).trim(), "");
    assert_eq!(cfg(&["-c", "set", "-s", "pc7"]).trim(), "pc7");
    assert_eq!(
        cfg(&["-c", "set", "-s", "pc8"]).trim(),
        "*badcfg*",
        "set over a string must fail"
    );
    assert_eq!(cfg(&["-c", "test", "-s", "pc7"]).trim(), "pc7");
    assert_eq!(
        cfg(&["-c", "test", "-s", "pc"]).trim(),
        "",
        "inexact test must get no answer"
    );
    assert_eq!(cfg(&["-c", "prefix", "-s", "pc"]).trim(), "pc7");
    assert_eq!(cfg(&["-c", "fset", "-s", "pc9"]).trim(), "pc9");
    // Broadcast discovery lists the target with its string.
    let all = aoetool(&lab, "aoecfg", &["-t", "1", i]);
    assert!(all.contains("4.2\tpc9"), "{all}");
    target.stop();
}

#[test]
fn jumbo_frames_carry_more_sectors_and_vlan_tags_are_honoured() {
    let lab = lab("aoej", 9000);
    let image_path = lab.dir.path().join("disk.raw");
    let mut image = make_image(&image_path);
    // A second link at MTU 1500 between the same namespaces: the target
    // serves both interfaces, each with its own sectors-per-frame limit.
    let (ini2, tgt2) = veth_pair(&lab.ini, "", &lab.tgt, "");
    let target = lab.ours(&[
        "--interface",
        &tgt2,
        "--target",
        &format!("3.4={}", image_path.display()),
    ]);

    let mut ini = lab.initiator(&lab.ini_if);
    let dev = attach(&mut ini, 3, 4, 32);
    assert_eq!(dev.max_sectors, 17, "a 9000-byte MTU carries 17 sectors");
    read_write_workload(&mut ini, &dev, &mut image);

    // An initiator that tags its frames with VLAN 5 (this kernel has no 8021q
    // module for a VLAN interface) and accepts only answers tagged VLAN 5.
    let mut tagged = in_netns(&lab.ini, || Initiator::open_vlan(&lab.ini_if, 5)).unwrap();
    let vdev = attach(&mut tagged, 3, 4, 32);
    assert_eq!(vdev.mac, dev.mac);
    let mut buf = vec![0u8; image.len()];
    tagged.read(&vdev, 0, &mut buf).unwrap();
    assert!(buf == image, "read over the VLAN differs");

    let mut small = lab.initiator(&ini2);
    let sdev = attach(&mut small, 3, 4, 32);
    assert_eq!(sdev.max_sectors, 2, "the 1500-byte link carries 2 sectors");
    assert_ne!(sdev.mac, dev.mac, "answers come from the second interface");
    small.read(&sdev, 0, &mut buf).unwrap();
    assert!(buf == image, "read over the second interface differs");
    // Jumbo requests on the small link are refused, not truncated.
    let (h, _) = small
        .ata(sdev.mac, 3, 4, ata(0x24, 0, 17, true), &[])
        .unwrap();
    assert_eq!(
        (h.cmd_status, h.err_feature),
        (status::DRDY | status::ERR, error_bits::ABRT)
    );
    target.stop();
}

#[test]
fn without_cap_net_raw_the_target_says_so() {
    require_root("dropping capabilities");
    let setpriv = require("setpriv", "util-linux");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.raw");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let out = run(Command::new(setpriv)
        .args(["--inh-caps=-all", "--bounding-set=-net_raw", "--"])
        .arg(bin("anyboot-aoe-target"))
        .args(["--interface", "lo", "--target"])
        .arg(format!("1.1={}", img.display())));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAP_NET_RAW"), "unclear error: {err}");
}

#[test]
fn check_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("aoe.toml");
    std::fs::write(
        &cfg,
        "[aoe]\ninterfaces = [\"eth0\"]\n[[aoe.target]]\nshelf = 1\nslot = 1\npath = \"/x\"\n\
         [[aoe.target]]\nshelf = 1\nslot = 1\npath = \"/y\"\n",
    )
    .unwrap();
    let out = run(Command::new(bin("anyboot-aoe-target"))
        .arg("--check-config")
        .arg("--config")
        .arg(&cfg));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("aoe.target[1]") && err.contains("used twice"),
        "{err}"
    );
    assert!(err.contains(&*cfg.to_string_lossy()), "{err}");
    let out = run(Command::new(bin("anyboot-aoe-target")).args([
        "--check-config",
        "--interface",
        "eth0",
        "--target",
        "1.300=/x",
    ]));
    assert_eq!(out.status.code(), Some(2), "clap rejects slot 300");
}

#[test]
fn sigterm_during_transfers_exits_cleanly() {
    let lab = lab("aoes", 1500);
    let image_path = lab.dir.path().join("disk.raw");
    make_image(&image_path);
    let target = lab.ours(&["--target", &format!("5.5={}", image_path.display())]);
    let mut ini = lab.initiator(&lab.ini_if);
    let dev = attach(&mut ini, 5, 5, 32);
    ini.timeout = Duration::from_millis(100);
    ini.max_tries = 3;
    let (tx, rx) = std::sync::mpsc::channel();
    let load = std::thread::spawn(move || {
        let mut buf = vec![0u8; DISK_SECTORS as usize * 512];
        // Bounded: at most 50 passes, and it ends at the first timeout.
        for pass in 0..50 {
            if pass == 1 {
                tx.send(()).unwrap();
            }
            if let Err(e) = ini.read(&dev, 0, &mut buf) {
                return Some(e);
            }
        }
        None
    });
    // Stop while reads are in flight (after the first full pass).
    rx.recv().unwrap();
    target.stop();
    match load.join().unwrap() {
        Some(InitiatorError::Timeout { .. }) | None => {}
        Some(e) => panic!("unexpected initiator error after the target stopped: {e}"),
    }
}
