//! Deterministic tests of the target core: frames built with the wire module, a
//! RAM "disk" that performs the core's storage requests, no sockets, no clock.

use anyboot_wire::aoe::{
    self, aflags, AtaPacket, AtaRepr, Command, ConfigPacket, ConfigRepr, Directive, ErrorCode,
    EthRepr, Mac, MaskError, MaskPacket, MaskRepr, ReservePacket, ReserveRepr, ATA_HEADER_LEN,
    ETHERTYPE_AOE, HEADER_LEN,
};
use anyboot_wire::ata::{error_bits, status, Identify};
use proptest::prelude::*;

use super::*;

const TARGET_MAC: Mac = [0x02, 0, 0, 0, 0, 0x10];
const A: Mac = [0x52, 0x54, 0, 0, 0, 0xa];
const B: Mac = [0x52, 0x54, 0, 0, 0, 0xb];
const SECTORS: u64 = 64;

fn target(shelf: u16, slot: u8) -> TargetInfo {
    TargetInfo {
        shelf,
        slot,
        sectors: SECTORS,
        read_only: false,
        config_string: Vec::new(),
        allowed_macs: Vec::new(),
        serial: format!("AB{shelf}.{slot}"),
        model: "anyboot test disk".into(),
        buffer_count: 16,
    }
}

fn core_with(targets: Vec<TargetInfo>) -> Core {
    Core::new(
        CoreConfig { targets },
        vec![
            Iface {
                mac: TARGET_MAC,
                mtu: 1500,
            },
            Iface {
                mac: TARGET_MAC,
                mtu: 9000,
            },
        ],
    )
}

fn core() -> Core {
    let mut ro = target(1, 2);
    ro.read_only = true;
    core_with(vec![target(1, 1), ro])
}

/// A request frame from `src`.
fn request(
    src: Mac,
    vlan: Option<u16>,
    shelf: u16,
    slot: u8,
    cmd: u8,
    tag: u32,
    arg: &[u8],
) -> Vec<u8> {
    request_v(src, vlan, 1, shelf, slot, cmd, tag, arg)
}

#[allow(clippy::too_many_arguments)]
fn request_v(
    src: Mac,
    vlan: Option<u16>,
    version: u8,
    shelf: u16,
    slot: u8,
    cmd: u8,
    tag: u32,
    arg: &[u8],
) -> Vec<u8> {
    let eth = EthRepr {
        dst: aoe::MAC_BROADCAST,
        src,
        vlan_tci: vlan,
        ethertype: ETHERTYPE_AOE,
    };
    let mut f = vec![0u8; eth.buffer_len() + HEADER_LEN + arg.len()];
    eth.emit(&mut f).unwrap();
    let h = aoe::Repr {
        version,
        response: false,
        error: None,
        shelf,
        slot,
        command: cmd.into(),
        tag,
    };
    let at = eth.buffer_len();
    h.emit(&mut aoe::Packet::new_unchecked(&mut f[at..]))
        .unwrap();
    f[at + HEADER_LEN..].copy_from_slice(arg);
    f
}

fn ata_arg(cmd: u8, lba: u64, count: u8, ext: bool, data: &[u8]) -> Vec<u8> {
    let mut a = AtaRepr {
        aflags: if ext { aflags::EXTENDED } else { 0 }
            | if data.is_empty() { 0 } else { aflags::WRITE },
        err_feature: 0,
        sector_count: count,
        cmd_status: cmd,
        lba: [0; 6],
    };
    a.set_lba(lba, ext);
    let mut v = vec![0u8; ATA_HEADER_LEN + data.len()];
    a.emit(&mut AtaPacket::new_unchecked(&mut v[..])).unwrap();
    v[ATA_HEADER_LEN..].copy_from_slice(data);
    v
}

fn config_arg(ccmd: u8, s: &[u8]) -> Vec<u8> {
    let r = ConfigRepr {
        buffer_count: 0,
        firmware: 0,
        sector_count: 0,
        aoe_version: 1,
        ccmd: ccmd.into(),
        config: s,
    };
    let mut v = vec![0u8; r.buffer_len()];
    r.emit(&mut v).unwrap();
    v
}

/// Runs storage requests against `disk`; returns every frame sent.
fn drain(core: &mut Core, disk: &mut [u8], request: &[u8]) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    while let Some(o) = core.poll_output() {
        match o {
            Output::Transmit(t) => sent.push(t.frame),
            Output::Identified { .. } => {}
            Output::Io(io) => {
                let mut buf = vec![0xa5u8; 10_000];
                buf[..request.len()].copy_from_slice(request);
                let r = match &io.op {
                    IoOp::Read { offset, len } => {
                        let o = *offset as usize;
                        let d = io.data_range();
                        buf[d].copy_from_slice(&disk[o..o + len]);
                        Ok(())
                    }
                    IoOp::Write { offset, data } => {
                        let o = *offset as usize;
                        disk[o..o + data.len()].copy_from_slice(&request[data.clone()]);
                        Ok(())
                    }
                    IoOp::Flush => Ok(()),
                };
                let n = io.complete(r, &mut buf);
                core.io_done(io.target);
                buf.truncate(n);
                sent.push(buf);
            }
        }
    }
    sent
}

fn send(core: &mut Core, disk: &mut [u8], iface: usize, frame: &[u8]) -> Vec<Vec<u8>> {
    core.handle(iface, frame);
    drain(core, disk, frame)
}

struct Reply {
    eth: EthRepr,
    hdr: aoe::Repr,
    arg: Vec<u8>,
}

fn parse(frame: &[u8]) -> Reply {
    assert!(
        frame.len() >= 60,
        "frame of {} bytes is not padded",
        frame.len()
    );
    let (eth, at) = EthRepr::parse(frame).unwrap();
    let p = aoe::Packet::new_checked(&frame[at..]).unwrap();
    Reply {
        eth,
        hdr: aoe::Repr::parse(&p).unwrap(),
        arg: p.arg().to_vec(),
    }
}

fn ata_reply(r: &Reply) -> AtaRepr {
    AtaRepr::parse(&AtaPacket::new_checked(&r.arg[..]).unwrap()).unwrap()
}

fn disk() -> Vec<u8> {
    (0..SECTORS as usize * 512)
        .map(|i| (i / 512) as u8 ^ (i % 251) as u8)
        .collect()
}

#[test]
fn broadcast_query_config_is_answered_by_every_target_with_its_address() {
    let mut c = core();
    let mut d = disk();
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 0xffff, 0xff, 1, 77, &config_arg(0, b"")),
    );
    assert_eq!(out.len(), 2);
    for (r, slot) in out.iter().map(|f| parse(f)).zip([1, 2]) {
        assert_eq!(r.eth.dst, A);
        assert_eq!(r.eth.src, TARGET_MAC);
        assert!(r.hdr.response);
        assert_eq!(r.hdr.error, None);
        assert_eq!((r.hdr.shelf, r.hdr.slot), (1, slot));
        assert_eq!(r.hdr.tag, 77);
        let cfg = ConfigPacket::new_checked(&r.arg[..]).unwrap();
        let q = ConfigRepr::parse(&cfg).unwrap();
        assert_eq!(q.buffer_count, 16);
        assert_eq!(q.sector_count, 2, "MTU 1500 carries 2 sectors");
        assert_eq!(q.aoe_version, 1);
    }
    // Slot wildcard on shelf 1 only; jumbo interface reports 17 sectors.
    let out = send(
        &mut c,
        &mut d,
        1,
        &request(A, None, 1, 0xff, 1, 78, &config_arg(0, b"")),
    );
    assert_eq!(out.len(), 2);
    let r = parse(&out[0]);
    let q = ConfigRepr::parse(&ConfigPacket::new_checked(&r.arg[..]).unwrap()).unwrap();
    assert_eq!(q.sector_count, 17);
}

#[test]
fn wrong_shelf_or_slot_gets_no_answer() {
    let mut c = core();
    let mut d = disk();
    assert!(send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 2, 1, 1, 1, &config_arg(0, b""))
    )
    .is_empty());
    assert!(send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 9, 0, 1, &ata_arg(0xec, 0, 1, false, &[]))
    )
    .is_empty());
}

#[test]
fn unknown_command_and_version_get_error_replies() {
    let mut c = core();
    let mut d = disk();
    let out = send(&mut c, &mut d, 0, &request(A, None, 1, 1, 9, 5, &[]));
    let r = parse(&out[0]);
    assert_eq!(r.hdr.error, Some(ErrorCode::UnrecognizedCommand));
    assert_eq!(r.hdr.command, Command::Unknown(9));
    assert_eq!(r.hdr.tag, 5);
    let out = send(
        &mut c,
        &mut d,
        0,
        &request_v(A, None, 2, 1, 1, 1, 6, &config_arg(0, b"")),
    );
    assert_eq!(
        parse(&out[0]).hdr.error,
        Some(ErrorCode::UnsupportedVersion)
    );
    // Responses are never answered.
    let mut f = request(A, None, 1, 1, 1, 7, &config_arg(0, b""));
    f[14] |= 0x08;
    assert!(send(&mut c, &mut d, 0, &f).is_empty());
    // Truncated ATA argument: bad argument.
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 1, 0, 8, &[0x40, 0, 1]),
    );
    assert_eq!(parse(&out[0]).hdr.error, Some(ErrorCode::BadArgument));
}

#[test]
fn reads_and_writes_lba28_and_lba48() {
    let mut c = core();
    let mut d = disk();
    let orig = d.clone();
    // LBA28 READ SECTORS of 2 sectors at 10.
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 1, 0, 1, &ata_arg(0x20, 10, 2, false, &[])),
    );
    let r = parse(&out[0]);
    let a = ata_reply(&r);
    assert_eq!(a.cmd_status, status::DRDY);
    assert_eq!(&r.arg[ATA_HEADER_LEN..], &orig[10 * 512..12 * 512]);
    // LBA48 WRITE SECTORS EXT at 62.
    let data: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 1, 0, 2, &ata_arg(0x34, 62, 2, true, &data)),
    );
    let r = parse(&out[0]);
    assert_eq!(ata_reply(&r).cmd_status, status::DRDY);
    assert_eq!(r.hdr.tag, 2);
    assert_eq!(&d[62 * 512..], &data[..]);
    assert_eq!(&d[..62 * 512], &orig[..62 * 512]);
    // READ DMA EXT reads it back on the jumbo interface, 17 sectors at once.
    let out = send(
        &mut c,
        &mut d,
        1,
        &request(A, None, 1, 1, 0, 3, &ata_arg(0x25, 47, 17, true, &[])),
    );
    let r = parse(&out[0]);
    assert_eq!(ata_reply(&r).cmd_status, status::DRDY);
    assert_eq!(&r.arg[ATA_HEADER_LEN..], &d[47 * 512..64 * 512]);
}

#[test]
fn bounds_are_ata_errors_and_never_reach_storage() {
    let mut c = core();
    let mut d = disk();
    let cases: [(Vec<u8>, u8); 5] = [
        // Past the end.
        (ata_arg(0x24, SECTORS - 1, 2, true, &[]), error_bits::IDNF),
        (
            ata_arg(0x24, u64::from(u32::MAX) << 16, 1, true, &[]),
            error_bits::IDNF,
        ),
        // More sectors than a 1500-byte frame carries.
        (ata_arg(0x20, 0, 3, false, &[]), error_bits::ABRT),
        // Zero sectors of an EXT command.
        (ata_arg(0x24, 0, 0, true, &[]), error_bits::ABRT),
        // Unknown opcode.
        (ata_arg(0x99, 0, 1, false, &[]), error_bits::ABRT),
    ];
    for (arg, err) in cases {
        c.handle(0, &request(A, None, 1, 1, 0, 9, &arg));
        let Some(Output::Transmit(t)) = c.poll_output() else {
            panic!("expected a direct error reply")
        };
        assert!(c.poll_output().is_none());
        let a = ata_reply(&parse(&t.frame));
        assert_eq!(a.cmd_status, status::DRDY | status::ERR);
        assert_eq!(a.err_feature, err);
    }
    // A write to the read-only target is aborted.
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 2, 0, 1, &ata_arg(0x30, 0, 1, false, &[1; 512])),
    );
    let a = ata_reply(&parse(&out[0]));
    assert_eq!(
        (a.cmd_status, a.err_feature),
        (status::DRDY | status::ERR, error_bits::ABRT)
    );
    // A write frame announcing more data than it carries: bad argument.
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 1, 0, 1, &ata_arg(0x30, 0, 2, false, &[1; 512])),
    );
    assert_eq!(parse(&out[0]).hdr.error, Some(ErrorCode::BadArgument));
    assert_eq!(d, disk());
    let n = c.counters();
    assert_eq!((n.ata_errors, n.aoe_errors, n.masked), (6, 1, 0));
}

#[test]
fn storage_failures_become_ata_errors() {
    let mut c = core();
    c.handle(
        0,
        &request(A, None, 1, 1, 0, 4, &ata_arg(0x24, 0, 1, true, &[])),
    );
    let Some(Output::Io(io)) = c.poll_output() else {
        panic!()
    };
    let mut buf = vec![0u8; io.reply_len()];
    let n = io.complete(Err(IoFailure::Media), &mut buf);
    let a = ata_reply(&parse(&buf[..n]));
    assert_eq!(
        (a.cmd_status, a.err_feature),
        (status::DRDY | status::ERR, error_bits::UNC)
    );
    assert_eq!(n, 60);
}

#[test]
fn requests_beyond_the_buffer_count_are_dropped_until_one_completes() {
    let mut c = core();
    let read = request(A, None, 1, 1, 0, 1, &ata_arg(0x24, 0, 1, true, &[]));
    let mut pending = Vec::new();
    for _ in 0..20 {
        c.handle(0, &read);
        while let Some(o) = c.poll_output() {
            match o {
                Output::Io(io) => pending.push(io),
                Output::Transmit(_) => panic!("no direct reply expected"),
                Output::Identified { .. } => panic!("no IDENTIFY was sent"),
            }
        }
    }
    assert_eq!(pending.len(), 16);
    assert_eq!(c.inflight(0), 16);
    c.io_done(0);
    c.handle(0, &read);
    assert!(matches!(c.poll_output(), Some(Output::Io(_))));
}

#[test]
fn identify_describes_the_disk() {
    let mut c = core();
    let mut d = disk();
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 1, 0, 1, &ata_arg(0xec, 0, 1, false, &[])),
    );
    let r = parse(&out[0]);
    assert_eq!(ata_reply(&r).cmd_status, status::DRDY);
    let id = Identify::parse(&r.arg[ATA_HEADER_LEN..]).unwrap();
    assert_eq!(id.sectors, SECTORS);
    assert!(id.lba48);
    assert_eq!(id.model, "anyboot test disk");
    assert_eq!(id.serial, "AB1.1");
    assert!(id.write_cache);
}

#[test]
fn identify_tells_the_driver_which_client_attached_which_target() {
    let mut c = core();
    c.handle(
        0,
        &request(B, None, 1, 2, 0, 1, &ata_arg(0xec, 0, 1, false, &[])),
    );
    let mut identified = Vec::new();
    while let Some(o) = c.poll_output() {
        if let Output::Identified { target, client } = o {
            identified.push((target, client));
        }
    }
    assert_eq!(identified, vec![(1, B)]);
    // A read is I/O, not an attach.
    c.handle(
        0,
        &request(B, None, 1, 2, 0, 1, &ata_arg(0x24, 0, 1, true, &[])),
    );
    while let Some(o) = c.poll_output() {
        assert!(!matches!(o, Output::Identified { .. }), "{o:?}");
    }
}

#[test]
fn flush_and_check_power_mode() {
    let mut c = core();
    c.handle(
        0,
        &request(A, None, 1, 1, 0, 1, &ata_arg(0xea, 0, 0, true, &[])),
    );
    let Some(Output::Io(io)) = c.poll_output() else {
        panic!()
    };
    assert_eq!(io.op, IoOp::Flush);
    let mut d = disk();
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 1, 0, 2, &ata_arg(0xe5, 0, 0, false, &[])),
    );
    let a = ata_reply(&parse(&out[0]));
    assert_eq!((a.cmd_status, a.sector_count), (status::DRDY, 0xff));
}

#[test]
fn config_string_sub_commands() {
    let mut c = core();
    let mut d = disk();
    let q = |c: &mut Core, d: &mut Vec<u8>, ccmd: u8, s: &[u8]| {
        send(c, d, 0, &request(A, None, 1, 1, 1, 1, &config_arg(ccmd, s)))
    };
    let cfg_of = |f: &Vec<u8>| {
        let r = parse(f);
        let s = ConfigRepr::parse(&ConfigPacket::new_checked(&r.arg[..]).unwrap())
            .unwrap()
            .config
            .to_vec();
        (r.hdr.error, s)
    };
    // Test exact / prefix on the empty string.
    assert!(q(&mut c, &mut d, 1, b"x").is_empty());
    // Set if empty.
    let out = q(&mut c, &mut d, 3, b"host=pc1");
    assert_eq!(cfg_of(&out[0]), (None, b"host=pc1".to_vec()));
    // Set again: config string present, the old string stays.
    let out = q(&mut c, &mut d, 3, b"host=pc2");
    assert_eq!(
        cfg_of(&out[0]),
        (Some(ErrorCode::ConfigStringPresent), b"host=pc1".to_vec())
    );
    assert_eq!(c.config_string(0), b"host=pc1");
    assert_eq!(q(&mut c, &mut d, 1, b"host=pc1").len(), 1);
    assert!(q(&mut c, &mut d, 1, b"host=pc").is_empty());
    assert_eq!(q(&mut c, &mut d, 2, b"host=pc").len(), 1);
    assert!(q(&mut c, &mut d, 2, b"host=pc9").is_empty());
    // Force set.
    let out = q(&mut c, &mut d, 4, b"other");
    assert_eq!(cfg_of(&out[0]), (None, b"other".to_vec()));
    let out = q(&mut c, &mut d, 0, b"");
    assert_eq!(cfg_of(&out[0]), (None, b"other".to_vec()));
    // Unknown sub-command.
    let out = q(&mut c, &mut d, 9, b"");
    assert_eq!(parse(&out[0]).hdr.error, Some(ErrorCode::BadArgument));
    // The other target's string is separate.
    assert!(c.config_string(1).is_empty());
}

fn mask_arg(mcmd: u8, dirs: &[(u8, Mac)]) -> Vec<u8> {
    let r = MaskRepr {
        mcmd: mcmd.into(),
        merror: MaskError::None,
        dir_count: dirs.len() as u8,
    };
    let mut v = vec![0u8; r.buffer_len()];
    r.emit(&mut v).unwrap();
    let mut p = MaskPacket::new_unchecked(&mut v[..]);
    for (i, (d, m)) in dirs.iter().enumerate() {
        p.set_directive(
            i,
            Directive {
                dcmd: (*d).into(),
                mac: *m,
            },
        )
        .unwrap();
    }
    v
}

fn mask_reply(f: &[u8]) -> (MaskError, Vec<Mac>) {
    let r = parse(f);
    let p = MaskPacket::new_checked(&r.arg[..]).unwrap();
    let m = MaskRepr::parse(&p).unwrap();
    (
        m.merror,
        (0..usize::from(m.dir_count))
            .map(|i| p.directive(i).unwrap().mac)
            .collect(),
    )
}

#[test]
fn mac_mask_list_is_edited_and_enforced() {
    let mut c = core();
    let mut d = disk();
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 1, 2, 1, &mask_arg(1, &[(1, A)])),
    );
    assert_eq!(mask_reply(&out[0]), (MaskError::None, vec![A]));
    // B is now ignored on every command, A still served.
    for (cmd, arg) in [
        (0u8, ata_arg(0xec, 0, 1, false, &[])),
        (1, config_arg(0, b"")),
        (2, mask_arg(0, &[])),
    ] {
        assert!(send(&mut c, &mut d, 0, &request(B, None, 1, 1, cmd, 1, &arg)).is_empty());
        assert_eq!(
            send(&mut c, &mut d, 0, &request(A, None, 1, 1, cmd, 1, &arg)).len(),
            1
        );
    }
    // The other target has its own (empty) list.
    assert_eq!(
        send(
            &mut c,
            &mut d,
            0,
            &request(B, None, 1, 2, 1, 1, &config_arg(0, b""))
        )
        .len(),
        1
    );
    // A bad directive stops the edit where it is.
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 1, 2, 1, &mask_arg(1, &[(1, B), (7, B), (2, A)])),
    );
    assert_eq!(mask_reply(&out[0]), (MaskError::BadDirective, vec![A, B]));
    // Delete both: open to everyone again.
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 1, 2, 1, &mask_arg(1, &[(2, A), (2, B)])),
    );
    assert_eq!(mask_reply(&out[0]), (MaskError::None, vec![]));
    assert_eq!(
        send(
            &mut c,
            &mut d,
            0,
            &request(B, None, 1, 1, 1, 1, &config_arg(0, b""))
        )
        .len(),
        1
    );
    // The list is bounded.
    let many: Vec<(u8, Mac)> = (0..=MAX_MASKS as u8)
        .map(|i| (1, [2, 0, 0, 0, 1, i]))
        .collect();
    let mut with_a = vec![(1, A)];
    with_a.extend(many);
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 1, 2, 1, &mask_arg(1, &with_a)),
    );
    let (e, list) = mask_reply(&out[0]);
    assert_eq!((e, list.len()), (MaskError::ListFull, MAX_MASKS));
}

fn reserve_arg(rcmd: u8, macs: &[Mac]) -> Vec<u8> {
    let r = ReserveRepr {
        rcmd: rcmd.into(),
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

fn reserve_reply(f: &[u8]) -> (Option<ErrorCode>, Vec<Mac>) {
    let r = parse(f);
    let p = ReservePacket::new_checked(&r.arg[..]).unwrap();
    let n = ReserveRepr::parse(&p).unwrap().nmacs;
    (
        r.hdr.error,
        (0..usize::from(n)).map(|i| p.mac(i).unwrap()).collect(),
    )
}

#[test]
fn reserve_release_is_enforced() {
    let mut c = core();
    let mut d = disk();
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, None, 1, 1, 3, 1, &reserve_arg(1, &[A])),
    );
    assert_eq!(reserve_reply(&out[0]), (None, vec![A]));
    // B's ATA commands get "target reserved"; A's work.
    let read = ata_arg(0x24, 0, 1, true, &[]);
    let out = send(&mut c, &mut d, 0, &request(B, None, 1, 1, 0, 1, &read));
    assert_eq!(parse(&out[0]).hdr.error, Some(ErrorCode::TargetReserved));
    let out = send(&mut c, &mut d, 0, &request(A, None, 1, 1, 0, 1, &read));
    assert_eq!(parse(&out[0]).hdr.error, None);
    // B cannot take it over with Set, and Read shows the holder.
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(B, None, 1, 1, 3, 1, &reserve_arg(1, &[B])),
    );
    assert_eq!(
        reserve_reply(&out[0]),
        (Some(ErrorCode::TargetReserved), vec![A])
    );
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(B, None, 1, 1, 3, 1, &reserve_arg(0, &[])),
    );
    assert_eq!(reserve_reply(&out[0]), (None, vec![A]));
    // Force set by B works; then A is locked out.
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(B, None, 1, 1, 3, 1, &reserve_arg(2, &[B])),
    );
    assert_eq!(reserve_reply(&out[0]), (None, vec![B]));
    let out = send(&mut c, &mut d, 0, &request(A, None, 1, 1, 0, 1, &read));
    assert_eq!(parse(&out[0]).hdr.error, Some(ErrorCode::TargetReserved));
    // B releases (set to empty); A works again.
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(B, None, 1, 1, 3, 1, &reserve_arg(1, &[])),
    );
    assert_eq!(reserve_reply(&out[0]), (None, vec![]));
    let out = send(&mut c, &mut d, 0, &request(A, None, 1, 1, 0, 1, &read));
    assert_eq!(parse(&out[0]).hdr.error, None);
    assert!(c.reserve_list(0).is_empty());
    assert_eq!(c.counters().reserved, 3);
}

#[test]
fn vlan_tag_is_kept_in_replies_and_short_replies_are_padded() {
    let mut c = core();
    let mut d = disk();
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(
            A,
            Some(0x0005),
            1,
            1,
            0,
            1,
            &ata_arg(0xe5, 0, 0, false, &[]),
        ),
    );
    assert_eq!(out[0].len(), 60);
    assert_eq!(parse(&out[0]).eth.vlan_tci, Some(5));
    let out = send(
        &mut c,
        &mut d,
        0,
        &request(A, Some(0x0005), 1, 1, 0, 1, &ata_arg(0x24, 3, 2, true, &[])),
    );
    let r = parse(&out[0]);
    assert_eq!(r.eth.vlan_tci, Some(5));
    assert_eq!(out[0].len(), 18 + HEADER_LEN + ATA_HEADER_LEN + 1024);
    assert_eq!(&r.arg[ATA_HEADER_LEN..], &disk()[3 * 512..5 * 512]);
}

#[test]
fn frames_for_other_hosts_or_from_group_addresses_are_dropped() {
    let mut c = core();
    let mut f = request(A, None, 1, 1, 1, 1, &config_arg(0, b""));
    f[0..6].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
    c.handle(0, &f);
    assert!(c.poll_output().is_none());
    let f = request([1, 0, 0x5e, 0, 0, 1], None, 1, 1, 1, 1, &config_arg(0, b""));
    c.handle(0, &f);
    assert!(c.poll_output().is_none());
}

proptest! {
    #[test]
    fn arbitrary_frames_never_panic_or_reach_outside_the_disk(
        body in proptest::collection::vec(any::<u8>(), 0..1200),
        cmd in 0u8..5, shelf in prop_oneof![Just(1u16), Just(0xffff), any::<u16>()],
        slot in prop_oneof![Just(1u8), Just(2), Just(0xff)], iface in 0usize..3,
    ) {
        let mut c = core();
        let f = request(A, None, shelf, slot, cmd, 1, &body);
        c.handle(iface, &f);
        c.handle(iface, &body);
        while let Some(o) = c.poll_output() {
            match o {
                Output::Transmit(t) => prop_assert!(t.frame.len() >= 60 && t.frame.len() <= 9018),
                Output::Identified { target, .. } => prop_assert!(target < 2),
                Output::Io(io) => {
                    let size = SECTORS * 512;
                    match io.op {
                        IoOp::Read { offset, len } => prop_assert!(offset + len as u64 <= size),
                        IoOp::Write { offset, ref data } => {
                            prop_assert!(offset + data.len() as u64 <= size);
                            prop_assert!(data.end <= f.len());
                            prop_assert!(io.target == 0, "never writes the read-only target");
                        }
                        IoOp::Flush => {}
                    }
                }
            }
        }
    }
}
