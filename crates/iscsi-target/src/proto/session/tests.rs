//! Full-feature-phase core tests: a model initiator drives the session with
//! PDUs and a virtual clock; SCSI execution is answered by the test.

use super::*;
use crate::proto::login::Params;
use proptest::prelude::*;

fn setup(params: Params) -> Session {
    Session::new(Setup {
        kind: SessionKind::Normal(0),
        params,
        exp_cmd_sn: 10,
        stat_sn: 100,
        queue_depth: 4,
        luns: vec![(0, 512)],
        read_only_luns: vec![],
        visible: vec![
            (
                "iqn.2026-11.org.anyboot:a".into(),
                "127.0.0.1:3260,1".into(),
            ),
            (
                "iqn.2026-11.org.anyboot:b".into(),
                "127.0.0.1:3260,1".into(),
            ),
        ],
        own_target: Some("iqn.2026-11.org.anyboot:a".into()),
        nop_interval: Some(Duration::from_secs(30)),
    })
}

fn params() -> Params {
    Params {
        max_send_data_segment: 1024,
        max_recv_data_segment: 8192,
        max_burst: 4096,
        first_burst: 2048,
        initial_r2t: false,
        immediate_data: true,
        max_outstanding_r2t: 2,
        ..Params::default()
    }
}

fn pdu(op: Opcode, immediate: bool, f: u8, itt: u32, data: &[u8]) -> Pdu {
    let mut bhs = [0u8; BHS_LEN];
    let mut b = Bhs::new_unchecked(&mut bhs[..]);
    b.set_opcode(op, immediate);
    b.set_flags(f);
    b.set_itt(itt);
    b.set_data_segment_len(data.len());
    Pdu::new(bhs, Bytes::copy_from_slice(data))
}

fn scsi(itt: u32, cmd_sn: u32, f: u8, edtl: u32, cdb: &[u8], data: &[u8]) -> Pdu {
    let mut p = pdu(Opcode::ScsiCommand, false, f, itt, data);
    let mut b = p.bhs_mut();
    b.set_word20(edtl);
    b.set_word24(cmd_sn);
    p.bhs[32..32 + cdb.len()].copy_from_slice(cdb);
    p
}

fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, fin: bool, data: &[u8]) -> Pdu {
    let mut p = pdu(
        Opcode::DataOut,
        false,
        if fin { flags::FINAL } else { 0 },
        itt,
        data,
    );
    let mut b = p.bhs_mut();
    b.set_word20(ttt);
    b.set_word36(data_sn);
    b.set_word40(offset);
    p
}

fn drain(s: &mut Session) -> Vec<Pdu> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

fn write10(blocks: u16) -> [u8; 10] {
    let [h, l] = blocks.to_be_bytes();
    [0x2a, 0, 0, 0, 0, 0, 0, h, l, 0]
}

#[test]
fn read_returns_data_in_with_collapsed_status_split_by_segment_and_burst() {
    let mut s = setup(params());
    let now = Instant::now();
    s.handle(
        now,
        scsi(
            1,
            10,
            flags::FINAL | flags::READ,
            6000,
            &[0x28, 0, 0, 0, 0, 0, 0, 0, 12, 0],
            &[],
        ),
    );
    assert!(drain(&mut s).is_empty());
    let req = s.poll_exec().unwrap();
    assert_eq!(req.cdb[0], 0x28);
    s.complete(req.id, Response::good(vec![7u8; 6144]));
    let out = drain(&mut s);
    // 6000 bytes allowed, segments of 1024, bursts of 4096.
    assert_eq!(out.len(), 6);
    for (i, p) in out.iter().enumerate() {
        let b = p.bhs();
        assert_eq!(b.opcode(), Opcode::DataIn);
        assert_eq!(b.word36(), i as u32, "DataSN");
        assert_eq!(b.word40(), i as u32 * 1024, "buffer offset");
        assert_eq!(b.word20(), RESERVED_TAG);
    }
    assert_eq!(out[3].bhs().flags(), flags::FINAL, "end of the first burst");
    let last = out[5].bhs();
    assert_eq!(last.flags(), flags::FINAL | flags::STATUS | flags::OVERFLOW);
    assert_eq!(last.word44(), 144, "residual overflow");
    assert_eq!(last.word24(), 100, "StatSN only on the status PDU");
    assert_eq!(last.word28(), 11, "ExpCmdSN advanced");
    assert_eq!(out[5].data.len(), 6000 - 5 * 1024);
    assert_eq!(s.tasks_in_flight(), 0);
}

#[test]
fn write_with_immediate_unsolicited_and_r2t_data() {
    let mut s = setup(params());
    let now = Instant::now();
    // 8 KiB write: 512 immediate, unsolicited up to FirstBurstLength 2048.
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    s.handle(
        now,
        scsi(5, 10, flags::WRITE, 8192, &write10(16), &data[..512]),
    );
    assert!(
        drain(&mut s).is_empty(),
        "no R2T before the unsolicited burst ends"
    );
    s.handle(
        now,
        data_out(5, RESERVED_TAG, 0, 512, false, &data[512..1536]),
    );
    s.handle(
        now,
        data_out(5, RESERVED_TAG, 1, 1536, true, &data[1536..2048]),
    );
    let r2ts = drain(&mut s);
    assert_eq!(r2ts.len(), 2, "MaxOutstandingR2T = 2");
    let (a, b) = (r2ts[0].bhs(), r2ts[1].bhs());
    assert_eq!(a.opcode(), Opcode::ReadyToTransfer);
    assert_eq!((a.word36(), a.word40(), a.word44()), (0, 2048, 4096));
    assert_eq!((b.word36(), b.word40(), b.word44()), (1, 6144, 2048));
    let (ta, tb) = (a.word20(), b.word20());
    assert_ne!(ta, tb);
    // Answer the second R2T first (sequences may interleave), in two PDUs.
    s.handle(now, data_out(5, tb, 0, 6144, false, &data[6144..7168]));
    s.handle(now, data_out(5, tb, 1, 7168, true, &data[7168..]));
    assert!(s.poll_exec().is_none());
    for (i, off) in (2048..6144).step_by(1024).enumerate() {
        s.handle(
            now,
            data_out(
                5,
                ta,
                i as u32,
                off,
                off == 5120,
                &data[off as usize..off as usize + 1024],
            ),
        );
    }
    let req = s.poll_exec().expect("all data in");
    assert_eq!(req.data, data);
    s.complete(req.id, Response::good(Vec::new()));
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    let b = out[0].bhs();
    assert_eq!(b.opcode(), Opcode::ScsiResponse);
    assert_eq!(b.specific2(), [0, status::GOOD]);
    assert_eq!(b.flags(), flags::FINAL);
}

#[test]
fn ipxe_style_write_without_unsolicited_data() {
    let p = Params {
        initial_r2t: true,
        immediate_data: false,
        max_outstanding_r2t: 1,
        ..params()
    };
    let mut s = setup(p);
    let now = Instant::now();
    s.handle(
        now,
        scsi(9, 10, flags::FINAL | flags::WRITE, 1024, &write10(2), &[]),
    );
    let r2t = drain(&mut s);
    assert_eq!(r2t.len(), 1);
    assert_eq!((r2t[0].bhs().word40(), r2t[0].bhs().word44()), (0, 1024));
    s.handle(
        now,
        data_out(9, r2t[0].bhs().word20(), 0, 0, true, &[1u8; 1024]),
    );
    assert_eq!(s.poll_exec().unwrap().data.len(), 1024);
    // Immediate data when ImmediateData=No is refused with a Reject.
    s.handle(
        now,
        scsi(
            10,
            11,
            flags::FINAL | flags::WRITE,
            512,
            &write10(1),
            &[0u8; 512],
        ),
    );
    let out = drain(&mut s);
    assert_eq!(out[0].bhs().opcode(), Opcode::Reject);
    assert_eq!(out[0].bhs().specific2()[0], 0x09);
}

#[test]
fn write_residuals_and_short_data_out() {
    let mut s = setup(params());
    let now = Instant::now();
    // The CDB wants 2 blocks, the initiator sends one: one block is written
    // (the CDB is cut down) and the overflow is reported.
    s.handle(
        now,
        scsi(
            1,
            10,
            flags::FINAL | flags::WRITE,
            512,
            &write10(2),
            &[3u8; 512],
        ),
    );
    let req = s.poll_exec().unwrap();
    assert_eq!(&req.cdb[7..9], &[0, 1]);
    s.complete(req.id, Response::good(Vec::new()));
    let out = drain(&mut s);
    assert_eq!(out[0].bhs().flags(), flags::FINAL | flags::OVERFLOW);
    assert_eq!(out[0].bhs().word44(), 512);
    // WRITE SAME with two blocks of Data-Out is refused outright.
    s.handle(
        now,
        scsi(
            2,
            11,
            flags::FINAL | flags::WRITE,
            1024,
            &[0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            &[0u8; 1024],
        ),
    );
    assert!(s.poll_exec().is_none());
    let out = drain(&mut s);
    assert_eq!(out[0].bhs().specific2(), [0, status::CHECK_CONDITION]);
    assert_eq!(out[0].bhs().flags(), flags::FINAL | flags::UNDERFLOW);
    // A wrong DataSN ends the task with ABORTED COMMAND, not the connection.
    s.handle(now, scsi(3, 12, flags::WRITE, 1024, &write10(2), &[]));
    s.handle(now, data_out(3, RESERVED_TAG, 5, 0, true, &[0u8; 1024]));
    let out = drain(&mut s);
    assert_eq!(out[0].bhs().opcode(), Opcode::Reject);
    assert_eq!(out[1].bhs().opcode(), Opcode::ScsiResponse);
    let sense = &out[1].data[2..];
    assert_eq!((sense[2] & 0xf, sense[12]), (0x0b, 0x4b));
    assert_eq!(s.poll_event(), None);
}

#[test]
fn cmd_sn_window_drops_out_of_window_commands_and_bounds_tasks() {
    let mut s = setup(params());
    let now = Instant::now();
    // Window is [10, 13] with depth 4.
    s.handle(
        now,
        scsi(
            1,
            14,
            flags::FINAL | flags::READ,
            512,
            &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            &[],
        ),
    );
    s.handle(
        now,
        scsi(
            2,
            9,
            flags::FINAL | flags::READ,
            512,
            &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            &[],
        ),
    );
    assert!(s.poll_exec().is_none() && drain(&mut s).is_empty());
    for i in 0..4 {
        s.handle(
            now,
            scsi(10 + i, 10 + i, flags::FINAL, 0, &[0, 0, 0, 0, 0, 0], &[]),
        );
    }
    let reqs: Vec<_> = std::iter::from_fn(|| s.poll_exec()).collect();
    assert_eq!(reqs.len(), 4);
    // Answers come back in any order; MaxCmdSN reopens as tasks finish.
    s.complete(reqs[2].id, Response::good(Vec::new()));
    let out = drain(&mut s);
    assert_eq!(out[0].bhs().itt(), 12);
    assert_eq!(out[0].bhs().word28(), 14);
    assert_eq!(out[0].bhs().word32(), 14, "one slot free again");
}

#[test]
fn nop_ping_both_ways_and_dead_peer() {
    let mut s = setup(params());
    let t0 = Instant::now();
    let mut ping = pdu(Opcode::NopOut, true, flags::FINAL, 77, b"hello");
    ping.bhs_mut().set_word20(RESERVED_TAG);
    ping.bhs_mut().set_word24(10);
    s.handle(t0, ping);
    let out = drain(&mut s);
    assert_eq!(out[0].bhs().opcode(), Opcode::NopIn);
    assert_eq!(out[0].bhs().itt(), 77);
    assert_eq!(&out[0].data[..], b"hello");
    assert_eq!(out[0].bhs().word24(), 100);
    // Keepalive: after 30 s of silence the target pings.
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    s.handle_timeout(t0 + Duration::from_secs(30));
    let out = drain(&mut s);
    let b = out[0].bhs();
    assert_eq!((b.opcode(), b.itt()), (Opcode::NopIn, RESERVED_TAG));
    assert_eq!(
        b.word24(),
        101,
        "StatSN not advanced by an unsolicited NOP-In"
    );
    let ttt = b.word20();
    // The answer clears the ping.
    let mut pong = pdu(Opcode::NopOut, true, flags::FINAL, RESERVED_TAG, &[]);
    pong.bhs_mut().set_word20(ttt);
    s.handle(t0 + Duration::from_secs(31), pong);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(61)));
    // A ping left unanswered by a peer that used to answer closes the session.
    s.handle_timeout(t0 + Duration::from_secs(61));
    let _ = drain(&mut s);
    s.handle_timeout(t0 + Duration::from_secs(91));
    assert_eq!(s.poll_event(), Some(Event::Close));
}

#[test]
fn initiators_that_never_answer_pings_are_not_cut_off() {
    let mut s = setup(params());
    let t0 = Instant::now();
    s.handle_timeout(t0);
    s.handle_timeout(t0 + Duration::from_secs(30));
    assert_eq!(drain(&mut s)[0].bhs().opcode(), Opcode::NopIn);
    s.handle_timeout(t0 + Duration::from_secs(60));
    s.handle_timeout(t0 + Duration::from_secs(600));
    assert_eq!(s.poll_event(), None, "iPXE ignores NOP-In pings");
    // Once it talks again, pinging resumes after the interval.
    s.handle(
        t0 + Duration::from_secs(700),
        scsi(1, 10, flags::FINAL, 0, &[0, 0, 0, 0, 0, 0], &[]),
    );
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(730)));
}

#[test]
fn task_management_abort_and_lun_reset() {
    let mut s = setup(params());
    let now = Instant::now();
    s.handle(now, scsi(1, 10, flags::WRITE, 4096, &write10(8), &[]));
    let mut tmf = pdu(Opcode::TaskMgmtRequest, true, flags::FINAL | 1, 50, &[]);
    tmf.bhs_mut().set_word20(1);
    tmf.bhs_mut().set_word24(11);
    tmf.bhs_mut().set_word32(10);
    s.handle(now, tmf);
    let out = drain(&mut s);
    assert_eq!(out[0].bhs().opcode(), Opcode::TaskMgmtResponse);
    assert_eq!(out[0].bhs().specific2()[0], 0, "function complete");
    assert_eq!(s.tasks_in_flight(), 0);
    // Late Data-Out for the aborted task is dropped silently.
    s.handle(now, data_out(1, RESERVED_TAG, 0, 0, true, &[0u8; 512]));
    assert!(drain(&mut s).is_empty());
    // ABORT TASK for a tag that was answered long ago.
    let mut tmf = pdu(Opcode::TaskMgmtRequest, true, flags::FINAL | 1, 51, &[]);
    tmf.bhs_mut().set_word20(999);
    tmf.bhs_mut().set_word32(3);
    s.handle(now, tmf);
    assert_eq!(
        drain(&mut s)[0].bhs().specific2()[0],
        1,
        "task does not exist"
    );
    // LUN RESET of an unknown LUN, then of LUN 0.
    let mut tmf = pdu(Opcode::TaskMgmtRequest, true, flags::FINAL | 5, 52, &[]);
    tmf.bhs_mut().set_lun(9);
    s.handle(now, tmf);
    assert_eq!(drain(&mut s)[0].bhs().specific2()[0], 2);
    let tmf = pdu(Opcode::TaskMgmtRequest, true, flags::FINAL | 5, 53, &[]);
    s.handle(now, tmf);
    assert_eq!(drain(&mut s)[0].bhs().specific2()[0], 0);
    assert_eq!(s.poll_event(), Some(Event::LunReset(0)));
}

#[test]
fn text_send_targets_and_logout() {
    let mut s = setup(params());
    let now = Instant::now();
    let mut t = Vec::new();
    iscsi::emit_text(&mut t, "SendTargets", "");
    let mut p = pdu(Opcode::TextRequest, false, flags::FINAL, 3, &t);
    p.bhs_mut().set_word20(RESERVED_TAG);
    p.bhs_mut().set_word24(10);
    s.handle(now, p);
    let out = drain(&mut s);
    let kv = iscsi::parse_text(&out[0].data).unwrap();
    assert_eq!(
        kv,
        vec![
            ("TargetName", "iqn.2026-11.org.anyboot:a"),
            ("TargetAddress", "127.0.0.1:3260,1")
        ]
    );
    let mut lo = pdu(Opcode::LogoutRequest, true, flags::FINAL, 4, &[]);
    lo.bhs_mut().set_word24(11);
    s.handle(now, lo);
    let out = drain(&mut s);
    assert_eq!(out[0].bhs().opcode(), Opcode::LogoutResponse);
    assert_eq!(out[0].bhs().specific2()[0], 0);
    assert_eq!(s.poll_event(), Some(Event::Close));
}

#[test]
fn discovery_sessions_refuse_scsi_and_unknown_opcodes_are_rejected() {
    let mut st = setup(params());
    st.s.kind = SessionKind::Discovery;
    let now = Instant::now();
    st.handle(now, scsi(1, 10, flags::FINAL, 0, &[0, 0, 0, 0, 0, 0], &[]));
    assert_eq!(drain(&mut st)[0].bhs().opcode(), Opcode::Reject);
    st.handle(now, pdu(Opcode::Unknown(0x1c), false, 0, 1, &[]));
    let out = drain(&mut st);
    assert_eq!(out[0].bhs().specific2()[0], 0x05);
    assert_eq!(&out[0].data[..1], &[0x1c]);
}

proptest! {
    /// Arbitrary PDU sequences never panic and never queue more tasks than
    /// twice the window.
    #[test]
    fn arbitrary_pdus_never_panic(pdus in proptest::collection::vec((proptest::collection::vec(any::<u8>(), BHS_LEN), proptest::collection::vec(any::<u8>(), 0..600)), 1..30)) {
        let mut s = setup(params());
        let now = Instant::now();
        for (bhs, data) in pdus {
            let mut b = [0u8; BHS_LEN];
            b.copy_from_slice(&bhs);
            s.handle(now, Pdu::new(b, data.into()));
            while let Some(r) = s.poll_exec() {
                s.complete(r.id, Response::good(vec![0u8; 100]));
            }
            let _ = drain(&mut s);
            prop_assert!(s.tasks_in_flight() <= 8);
        }
    }
}

#[test]
fn reads_wait_for_the_read_budget() {
    let mut s = Session::new(Setup {
        queue_depth: 64,
        ..setup(params()).s
    });
    let now = Instant::now();
    // Eleven 8 MiB reads: eight fit in the 64 MiB budget, three wait.
    for i in 0..11u32 {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x88;
        cdb[10..14].copy_from_slice(&16384u32.to_be_bytes());
        s.handle(
            now,
            scsi(i, 10 + i, flags::FINAL | flags::READ, 8 << 20, &cdb, &[]),
        );
    }
    let first: Vec<_> = std::iter::from_fn(|| s.poll_exec()).collect();
    assert_eq!(first.len(), 8);
    s.complete(first[0].id, Response::good(vec![0u8; 8 << 20]));
    let more: Vec<_> = std::iter::from_fn(|| s.poll_exec()).collect();
    assert_eq!(more.len(), 1, "one finished, one more starts");
    // Aborting everything releases the budget and drops the waiting ones.
    let tmf = pdu(Opcode::TaskMgmtRequest, true, flags::FINAL | 2, 99, &[]);
    s.handle(now, tmf);
    assert_eq!(s.tasks_in_flight(), 0);
    assert!(s.poll_exec().is_none());
}

#[test]
fn long_send_targets_answer_continues_over_several_pdus() {
    let mut setup_ = setup(Params {
        max_send_data_segment: 512,
        ..params()
    })
    .s;
    setup_.kind = SessionKind::Discovery;
    setup_.visible = (0..40)
        .map(|i| {
            (
                format!("iqn.2026-11.org.anyboot:host{i:03}"),
                "10.0.0.1:3260,1".to_owned(),
            )
        })
        .collect();
    let mut s = Session::new(setup_);
    let now = Instant::now();
    let mut t = Vec::new();
    iscsi::emit_text(&mut t, "SendTargets", "All");
    let mut req = pdu(Opcode::TextRequest, false, flags::FINAL, 3, &t);
    req.bhs_mut().set_word20(RESERVED_TAG);
    req.bhs_mut().set_word24(10);
    s.handle(now, req);
    let mut all = Vec::new();
    let mut sn = 11;
    loop {
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        let b = out[0].bhs();
        assert!(out[0].data.len() <= 512);
        all.extend_from_slice(&out[0].data);
        if b.flags() & flags::FINAL != 0 {
            assert_eq!(b.word20(), RESERVED_TAG);
            break;
        }
        assert_eq!(b.flags(), flags::CONTINUE);
        let mut next = pdu(Opcode::TextRequest, false, flags::FINAL, 3, &[]);
        next.bhs_mut().set_word20(b.word20());
        next.bhs_mut().set_word24(sn);
        sn += 1;
        s.handle(now, next);
    }
    let kv = iscsi::parse_text(&all).unwrap();
    assert_eq!(kv.len(), 80);
    assert_eq!(kv[78], ("TargetName", "iqn.2026-11.org.anyboot:host039"));
}
