//! Login core tests with a model initiator and a seeded RNG.

use super::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

const T1: &str = "iqn.2026-11.org.anyboot:t1";
const T2: &str = "iqn.2026-11.org.anyboot:t2";
const INI: &str = "iqn.2026-11.org.example:pc1";

fn targets() -> Arc<Vec<TargetAuth>> {
    Arc::new(vec![
        TargetAuth {
            iqn: T1.into(),
            alias: Some("disk one".into()),
            allow: vec![],
            chap: None,
        },
        TargetAuth {
            iqn: T2.into(),
            alias: None,
            allow: vec![INI.into()],
            chap: Some(ChapCredentials {
                user: "alice".into(),
                secret: "alice-secret-1".into(),
                mutual: Some(("target".into(), "target-secret-2".into())),
            }),
        },
    ])
}

fn login() -> Login {
    Login::new(targets(), None, Limits::default(), 32, 7, 1000)
}

/// A Login Request with CSG/NSG/T and `keys`.
fn req(csg: u8, nsg: u8, transit: bool, keys: &[(&str, &str)]) -> Pdu {
    let mut data = Vec::new();
    for (k, v) in keys {
        iscsi::emit_text(&mut data, k, v);
    }
    let mut bhs = [0u8; BHS_LEN];
    let mut b = Bhs::new_unchecked(&mut bhs[..]);
    b.set_opcode(Opcode::LoginRequest, true);
    b.set_flags((csg << 2) | nsg | if transit { flags::TRANSIT } else { 0 });
    b.set_lun_bytes([0x80, 0, 0, 0x23, 0, 1, 0, 0]);
    b.set_itt(0x42);
    b.set_word24(500); // CmdSN
    b.set_data_segment_len(data.len());
    Pdu::new(bhs, data.into())
}

fn keys(p: &Pdu) -> Vec<(String, String)> {
    iscsi::parse_text(&p.data)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn get(p: &Pdu, k: &str) -> Option<String> {
    keys(p).into_iter().find(|(x, _)| x == k).map(|(_, v)| v)
}

fn status_of(p: &Pdu) -> [u8; 2] {
    let w = p.bhs().word36().to_be_bytes();
    [w[0], w[1]]
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

#[test]
fn no_auth_login_with_ipxe_parameters() {
    let mut l = login();
    let mut r = rng();
    let step = l.handle(
        &req(
            0,
            1,
            true,
            &[
                ("InitiatorName", INI),
                ("TargetName", T1),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
            ],
        ),
        &mut r,
    );
    let Step::Continue(p) = step else {
        panic!("{step:?}")
    };
    assert_eq!(get(&p, "AuthMethod").as_deref(), Some("None"));
    assert_eq!(get(&p, "TargetPortalGroupTag").as_deref(), Some("1"));
    assert_eq!(get(&p, "TargetAlias").as_deref(), Some("disk one"));
    assert_eq!(p.bhs().flags(), flags::TRANSIT | 1);
    assert_eq!(p.bhs().word24(), 1000, "first StatSN");
    assert_eq!(p.bhs().word28(), 500, "ExpCmdSN = the login CmdSN");
    assert_eq!(p.bhs().word32(), 531, "MaxCmdSN = ExpCmdSN + depth - 1");
    assert_eq!(p.bhs().itt(), 0x42);
    // What iPXE sends in the operational stage.
    let step = l.handle(
        &req(
            1,
            3,
            true,
            &[
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("InitialR2T", "Yes"),
                ("ImmediateData", "No"),
                ("MaxRecvDataSegmentLength", "8192"),
                ("MaxBurstLength", "262144"),
                ("FirstBurstLength", "65536"),
                ("MaxConnections", "1"),
                ("ErrorRecoveryLevel", "0"),
                ("DefaultTime2Wait", "0"),
                ("DefaultTime2Retain", "0"),
                ("MaxOutstandingR2T", "1"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
            ],
        ),
        &mut r,
    );
    let Step::Done(p, est) = step else {
        panic!("{step:?}")
    };
    assert_eq!(get(&p, "InitialR2T").as_deref(), Some("Yes"));
    assert_eq!(get(&p, "ImmediateData").as_deref(), Some("No"));
    assert_eq!(
        get(&p, "MaxRecvDataSegmentLength").as_deref(),
        Some("262144")
    );
    assert_eq!(
        get(&p, "DefaultTime2Wait").as_deref(),
        Some("2"),
        "result function Max"
    );
    assert_eq!(p.bhs().flags(), flags::TRANSIT | (1 << 2) | 3);
    assert_eq!(
        &p.bhs().lun_bytes()[6..8],
        &7u16.to_be_bytes(),
        "TSIH in the final response"
    );
    let pa = est.params;
    assert!(pa.initial_r2t && !pa.immediate_data && !pa.header_digest);
    assert_eq!(
        (pa.max_send_data_segment, pa.max_recv_data_segment),
        (8192, 262_144)
    );
    assert_eq!(
        (pa.max_burst, pa.first_burst, pa.max_outstanding_r2t),
        (262_144, 65_536, 1)
    );
    assert_eq!(est.kind, SessionKind::Normal(0));
    assert_eq!(est.stat_sn, 1002);
    assert_eq!(est.isid, [0x80, 0, 0, 0x23, 0, 1]);
}

#[test]
fn operational_defaults_ranges_and_unknown_keys() {
    let mut l = login();
    let mut r = rng();
    let step = l.handle(
        &req(
            1,
            3,
            true,
            &[
                ("InitiatorName", INI),
                ("TargetName", T1),
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "MD5,None"),
                ("MaxBurstLength", "99999999"),
                ("FirstBurstLength", "4096"),
                ("MaxOutstandingR2T", "64"),
                ("X-com.example.Key", "1"),
                ("ErrorRecoveryLevel", "2"),
            ],
        ),
        &mut r,
    );
    let Step::Done(p, est) = step else {
        panic!("{step:?}")
    };
    assert_eq!(get(&p, "HeaderDigest").as_deref(), Some("CRC32C"));
    assert_eq!(get(&p, "DataDigest").as_deref(), Some("None"));
    assert_eq!(
        get(&p, "MaxBurstLength").as_deref(),
        Some("Reject"),
        "out of range"
    );
    assert_eq!(get(&p, "FirstBurstLength").as_deref(), Some("4096"));
    assert_eq!(get(&p, "MaxOutstandingR2T").as_deref(), Some("8"));
    assert_eq!(
        get(&p, "X-com.example.Key").as_deref(),
        Some("NotUnderstood")
    );
    assert_eq!(get(&p, "ErrorRecoveryLevel").as_deref(), Some("0"));
    assert!(est.params.header_digest && !est.params.data_digest);
    // Keys not offered keep the RFC 7143 section 13 defaults.
    assert!(est.params.initial_r2t && est.params.immediate_data);
    assert_eq!(est.params.max_send_data_segment, 8192);
}

/// Runs a CHAP login with `alg_list`; returns the last response.
fn chap_login(alg_list: &str, secret: &str, mutual: Option<&[u8]>) -> (Step, Option<Algorithm>) {
    let mut l = login();
    let mut r = rng();
    let Step::Continue(p) = l.handle(
        &req(
            0,
            1,
            true,
            &[
                ("InitiatorName", INI),
                ("TargetName", T2),
                ("AuthMethod", "None,CHAP"),
            ],
        ),
        &mut r,
    ) else {
        panic!()
    };
    assert_eq!(get(&p, "AuthMethod").as_deref(), Some("CHAP"));
    assert_eq!(
        p.bhs().flags() & flags::TRANSIT,
        0,
        "no transit before authentication"
    );
    let Step::Continue(p) = l.handle(&req(0, 1, false, &[("CHAP_A", alg_list)]), &mut r) else {
        panic!()
    };
    let alg = Algorithm::from_number(&get(&p, "CHAP_A").unwrap()).unwrap();
    let id = chap::decode_id(&get(&p, "CHAP_I").unwrap()).unwrap();
    let c = chap::decode_binary(&get(&p, "CHAP_C").unwrap()).unwrap();
    assert_eq!(c.len(), alg.challenge_len());
    let resp = chap::encode_hex(&alg.response(id, secret.as_bytes(), &c));
    let mut k = vec![("CHAP_N", "alice".to_owned()), ("CHAP_R", resp)];
    if let Some(mc) = mutual {
        k.push(("CHAP_I", "9".to_owned()));
        k.push(("CHAP_C", chap::encode_hex(mc)));
    }
    let kk: Vec<(&str, &str)> = k.iter().map(|(a, b)| (*a, b.as_str())).collect();
    (l.handle(&req(0, 1, true, &kk), &mut r), Some(alg))
}

#[test]
fn chap_md5_for_ipxe_and_sha256_when_offered() {
    let (step, alg) = chap_login("5", "alice-secret-1", None);
    assert_eq!(alg, Some(Algorithm::Md5));
    let Step::Continue(p) = step else {
        panic!("{step:?}")
    };
    assert_eq!(p.bhs().flags(), flags::TRANSIT | 1);
    let (step, alg) = chap_login("5,7", "alice-secret-1", None);
    assert_eq!(alg, Some(Algorithm::Sha256));
    assert!(matches!(step, Step::Continue(_)));
}

#[test]
fn mutual_chap_answers_with_the_target_secret() {
    let mc = [0x33u8; 16];
    let (step, _) = chap_login("5", "alice-secret-1", Some(&mc));
    let Step::Continue(p) = step else {
        panic!("{step:?}")
    };
    assert_eq!(get(&p, "CHAP_N").as_deref(), Some("target"));
    let want = Algorithm::Md5.response(9, b"target-secret-2", &mc);
    assert_eq!(
        chap::decode_binary(&get(&p, "CHAP_R").unwrap()).unwrap(),
        want
    );
}

#[test]
fn wrong_secret_unknown_target_acl_and_missing_keys_fail() {
    let (step, _) = chap_login("5", "wrong-secret", None);
    let Step::Fail(p) = step else {
        panic!("{step:?}")
    };
    assert_eq!(status_of(&p), status::AUTH_FAILED);
    let mut r = rng();
    // Unknown target.
    let Step::Fail(p) = login().handle(
        &req(
            0,
            1,
            true,
            &[("InitiatorName", INI), ("TargetName", "iqn.x:none")],
        ),
        &mut r,
    ) else {
        panic!()
    };
    assert_eq!(status_of(&p), status::NOT_FOUND);
    // Not on the ACL.
    let Step::Fail(p) = login().handle(
        &req(
            0,
            1,
            true,
            &[
                ("InitiatorName", "iqn.2026-11.org.example:other"),
                ("TargetName", T2),
            ],
        ),
        &mut r,
    ) else {
        panic!()
    };
    assert_eq!(status_of(&p), status::FORBIDDEN);
    // No InitiatorName.
    let Step::Fail(p) = login().handle(&req(0, 1, true, &[("TargetName", T1)]), &mut r) else {
        panic!()
    };
    assert_eq!(status_of(&p), status::MISSING_PARAMETER);
    // Skipping the security stage when CHAP is required.
    let Step::Fail(p) = login().handle(
        &req(1, 3, true, &[("InitiatorName", INI), ("TargetName", T2)]),
        &mut r,
    ) else {
        panic!()
    };
    assert_eq!(status_of(&p), status::AUTH_FAILED);
    // CHAP required but only None offered.
    let Step::Fail(p) = login().handle(
        &req(
            0,
            1,
            true,
            &[
                ("InitiatorName", INI),
                ("TargetName", T2),
                ("AuthMethod", "None"),
            ],
        ),
        &mut r,
    ) else {
        panic!()
    };
    assert_eq!(status_of(&p), status::AUTH_FAILED);
}

#[test]
fn reflected_mutual_challenge_is_refused() {
    let mut l = login();
    let mut r = rng();
    let _ = l.handle(
        &req(
            0,
            1,
            false,
            &[
                ("InitiatorName", INI),
                ("TargetName", T2),
                ("AuthMethod", "CHAP"),
            ],
        ),
        &mut r,
    );
    let Step::Continue(p) = l.handle(&req(0, 1, false, &[("CHAP_A", "5")]), &mut r) else {
        panic!()
    };
    let id = chap::decode_id(&get(&p, "CHAP_I").unwrap()).unwrap();
    let c_hex = get(&p, "CHAP_C").unwrap();
    let c = chap::decode_binary(&c_hex).unwrap();
    let resp = chap::encode_hex(&Algorithm::Md5.response(id, b"alice-secret-1", &c));
    let step = l.handle(
        &req(
            0,
            1,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &resp),
                ("CHAP_I", "1"),
                ("CHAP_C", &c_hex),
            ],
        ),
        &mut r,
    );
    assert!(matches!(step, Step::Fail(_)), "{step:?}");
}

#[test]
fn continued_text_and_discovery_session() {
    let mut l = login();
    let mut r = rng();
    let mut first = req(0, 1, false, &[("InitiatorName", INI)]);
    first.bhs_mut().set_flags(flags::CONTINUE);
    let Step::Continue(p) = l.handle(&first, &mut r) else {
        panic!()
    };
    assert!(p.data.is_empty(), "C bit: empty acknowledgement");
    let step = l.handle(
        &req(
            0,
            3,
            true,
            &[("SessionType", "Discovery"), ("AuthMethod", "None")],
        ),
        &mut r,
    );
    let Step::Done(_, est) = step else {
        panic!("{step:?}")
    };
    assert_eq!(est.kind, SessionKind::Discovery);
    assert_eq!(est.initiator, INI);
}

#[test]
fn version_and_tsih_checks() {
    let mut r = rng();
    let mut p = req(0, 1, true, &[("InitiatorName", INI), ("TargetName", T1)]);
    p.bhs_mut().set_specific2([0, 1]);
    let Step::Fail(resp) = login().handle(&p, &mut r) else {
        panic!()
    };
    assert_eq!(status_of(&resp), status::UNSUPPORTED_VERSION);
    let mut p = req(0, 1, true, &[("InitiatorName", INI), ("TargetName", T1)]);
    p.bhs_mut().set_lun_bytes([0x80, 0, 0, 0x23, 0, 1, 0, 9]);
    let Step::Fail(resp) = login().handle(&p, &mut r) else {
        panic!()
    };
    assert_eq!(status_of(&resp), status::NO_SESSION);
}

proptest! {
    #[test]
    fn arbitrary_login_pdus_never_panic(bhs in proptest::collection::vec(any::<u8>(), BHS_LEN), data in proptest::collection::vec(any::<u8>(), 0..300), n in 1usize..4) {
        let mut l = login();
        let mut r = rng();
        let mut b = [0u8; BHS_LEN];
        b.copy_from_slice(&bhs);
        for _ in 0..n {
            let p = Pdu::new(b, data.clone().into());
            if !matches!(l.handle(&p, &mut r), Step::Continue(_)) {
                break;
            }
        }
    }
}
