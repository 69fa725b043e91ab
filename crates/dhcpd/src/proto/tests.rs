//! Deterministic tests of the core: a virtual clock, messages built with
//! dhcproto, every reply decoded again.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyboot_config::dhcpd::DhcpBoot;
use anyboot_config::MacAddr;
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::Decodable;
use proptest::prelude::*;

use super::*;
use crate::config::{Config, HostEntry, Subnet};

const T0: u64 = 1_800_000_000_000;
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const HOST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, d)
}

fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

fn config() -> Config {
    let mut s = Subnet::new(ip(0), 24, ip(100), ip(103));
    s.router = Some(ip(1));
    s.dns = vec![ip(2)];
    s.lease_time = 600;
    let mut relayed = Subnet::new(
        Ipv4Addr::new(10, 7, 0, 0),
        16,
        Ipv4Addr::new(10, 7, 1, 10),
        Ipv4Addr::new(10, 7, 1, 20),
    );
    relayed.router = Some(Ipv4Addr::new(10, 7, 0, 1));
    Config {
        interfaces: vec!["eth0".into()],
        subnets: vec![s, relayed],
        hosts: vec![HostEntry {
            name: "pc01".into(),
            mac: MacAddr(HOST_MAC),
            address: Some(ip(11)),
            profile: Some("office".into()),
            boot: DhcpBoot::default(),
            root_path: Some("iscsi:{server}::::iqn.2026-11.org.anyboot:desktop".into()),
            has_script: true,
        }],
        client_id_reservations: vec![(b"\x00fixed-client".to_vec(), ip(12))],
        ..Config::default()
    }
}

fn core_with(cfg: Config) -> Core {
    let ifaces = vec![Iface {
        name: "eth0".into(),
        addr: SERVER,
        prefix: 24,
    }];
    Core::new(cfg, ifaces, [], T0)
}

fn core() -> Core {
    core_with(config())
}

fn msg(t: MessageType, hw: [u8; 6]) -> v4::Message {
    let mut m = v4::Message::default();
    m.set_chaddr(&hw).set_xid(u32::from(hw[5]) + 1000);
    m.opts_mut().insert(DhcpOption::MessageType(t));
    m
}

fn with(mut m: v4::Message, o: DhcpOption) -> v4::Message {
    m.opts_mut().insert(o);
    m
}

fn ingress(port: u16) -> Ingress {
    Ingress {
        iface: 0,
        local_port: port,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    }
}

fn send(c: &mut Core, now: u64, m: &v4::Message) {
    c.handle(now, ingress(67), &encode(m));
}

/// Completes all lease writes successfully and returns every reply.
fn flush(c: &mut Core) -> Vec<(Transmit, v4::Message)> {
    while let Some(b) = c.poll_io() {
        c.complete(b.id, true);
    }
    let mut out = Vec::new();
    while let Some(t) = c.poll_transmit() {
        let m = v4::Message::decode(&mut dhcproto::Decoder::new(&t.payload)).unwrap();
        out.push((t, m));
    }
    out
}

fn one(c: &mut Core) -> (Transmit, v4::Message) {
    let mut v = flush(c);
    assert_eq!(v.len(), 1, "expected exactly one reply, got {v:?}");
    v.pop().unwrap()
}

fn opt(m: &v4::Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

fn file(m: &v4::Message) -> Option<String> {
    match opt(m, OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => Some(String::from_utf8(b.clone()).unwrap()),
        _ => None,
    }
}

/// DISCOVER + REQUEST (SELECTING); returns the ACKed address.
fn dora(c: &mut Core, now: u64, hw: [u8; 6]) -> Ipv4Addr {
    send(c, now, &msg(MessageType::Discover, hw));
    let (_, offer) = one(c);
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    let req = with(
        with(
            msg(MessageType::Request, hw),
            DhcpOption::ServerIdentifier(SERVER),
        ),
        DhcpOption::RequestedIpAddress(offer.yiaddr()),
    );
    send(c, now, &req);
    let (_, ack) = one(c);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    ack.yiaddr()
}

#[test]
fn discover_offer_request_ack_with_options_and_addressing() {
    let mut c = core();
    send(&mut c, T0, &msg(MessageType::Discover, mac(1)));
    let (t, offer) = one(&mut c);
    assert_eq!(offer.opcode(), v4::Opcode::BootReply);
    assert_eq!(offer.xid(), 1001);
    assert_eq!(offer.yiaddr(), ip(100));
    // Unicast to yiaddr at chaddr (RFC 2131 §4.1), broadcast if the driver
    // cannot install the ARP entry.
    assert_eq!(t.dst, SocketAddrV4::new(ip(100), 68));
    assert_eq!(t.link_hint, Some(mac(1)));
    assert_eq!(t.fallback, Some(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)));
    assert_eq!(t.from_port, 67);
    // With the broadcast flag: broadcast.
    let mut b = msg(MessageType::Discover, mac(2));
    b.set_flags(v4::Flags::default().set_broadcast());
    send(&mut c, T0, &b);
    let (t, _) = one(&mut c);
    assert_eq!(t.dst, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert_eq!(t.link_hint, None);
    assert_eq!(
        opt(&offer, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        opt(&offer, OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        opt(&offer, OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip(1)]))
    );
    assert_eq!(
        opt(&offer, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(600))
    );
    assert_eq!(
        opt(&offer, OptionCode::Renewal),
        Some(&DhcpOption::Renewal(300))
    );
    assert_eq!(
        opt(&offer, OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(525))
    );
    assert_eq!(file(&offer), None, "no boot file for a non-boot client");

    let req = with(
        with(
            msg(MessageType::Request, mac(1)),
            DhcpOption::ServerIdentifier(SERVER),
        ),
        DhcpOption::RequestedIpAddress(ip(100)),
    );
    send(&mut c, T0 + 10, &req);
    // The ACK waits for its lease to be durable.
    assert!(c.poll_transmit().is_none());
    let batch = c.poll_io().unwrap();
    assert_eq!(batch.leases.len(), 1);
    assert_eq!(batch.leases[0].addr, ip(100));
    assert_eq!(batch.leases[0].state, LeaseState::Bound);
    assert_eq!(batch.leases[0].expires_ms, T0 + 10 + 600_000);
    assert!(c.poll_transmit().is_none());
    c.complete(batch.id, true);
    let t = c.poll_transmit().unwrap();
    let ack = v4::Message::decode(&mut dhcproto::Decoder::new(&t.payload)).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip(100));
    assert_eq!(t.dst, SocketAddrV4::new(ip(100), 68));
    assert_eq!(c.stats().offers, 2);
    assert_eq!(c.stats().acks, 1);
}

#[test]
fn group_commit_batches_concurrent_acks_and_failed_writes_drop_them() {
    let mut c = core();
    let mut offers = Vec::new();
    for n in 1..=3 {
        send(&mut c, T0, &msg(MessageType::Discover, mac(n)));
        offers.push(one(&mut c).1.yiaddr());
    }
    let request = |n: u8, a: Ipv4Addr| {
        with(
            with(
                msg(MessageType::Request, mac(n)),
                DhcpOption::ServerIdentifier(SERVER),
            ),
            DhcpOption::RequestedIpAddress(a),
        )
    };
    send(&mut c, T0, &request(1, offers[0]));
    send(&mut c, T0, &request(2, offers[1]));
    let b1 = c.poll_io().unwrap();
    assert_eq!(b1.leases.len(), 2, "both leases in one batch");
    // A request arriving while batch 1 is in flight goes to the next batch.
    send(&mut c, T0, &request(3, offers[2]));
    assert!(c.poll_io().is_none(), "one batch in flight at a time");
    c.complete(b1.id, true);
    assert_eq!(
        std::iter::from_fn(|| c.poll_transmit()).count(),
        2,
        "batch 1's two ACKs leave, the third waits"
    );
    let b2 = c.poll_io().unwrap();
    assert_eq!(b2.leases.len(), 1);
    c.complete(b2.id, false);
    assert!(
        c.poll_transmit().is_none(),
        "an ACK whose lease was not written never leaves"
    );
}

#[test]
fn request_for_another_server_withdraws_our_offer() {
    let mut c = core();
    send(&mut c, T0, &msg(MessageType::Discover, mac(1)));
    let offered = one(&mut c).1.yiaddr();
    let req = with(
        with(
            msg(MessageType::Request, mac(1)),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 250)),
        ),
        DhcpOption::RequestedIpAddress(offered),
    );
    send(&mut c, T0, &req);
    assert!(flush(&mut c).is_empty());
    assert_eq!(c.stats().not_for_us, 1);
    assert!(c.leases().get(offered).is_none(), "offer withdrawn");
}

#[test]
fn init_reboot_renew_rebind() {
    let mut c = core();
    let a = dora(&mut c, T0, mac(1));
    // INIT-REBOOT for the known lease: ACK.
    let reboot = with(
        msg(MessageType::Request, mac(1)),
        DhcpOption::RequestedIpAddress(a),
    );
    send(&mut c, T0 + 1000, &reboot);
    assert_eq!(one(&mut c).1.opts().msg_type(), Some(MessageType::Ack));
    // INIT-REBOOT on the wrong network: NAK, broadcast.
    let wrong = with(
        msg(MessageType::Request, mac(1)),
        DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 1, 5)),
    );
    send(&mut c, T0 + 1000, &wrong);
    let (t, nak) = one(&mut c);
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(t.dst, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    // Another client asking for that address: NAK.
    let thief = with(
        msg(MessageType::Request, mac(2)),
        DhcpOption::RequestedIpAddress(a),
    );
    send(&mut c, T0 + 1000, &thief);
    assert_eq!(one(&mut c).1.opts().msg_type(), Some(MessageType::Nak));
    // RENEWING: unicast from ciaddr, answered unicast, lease extended.
    let mut renew = msg(MessageType::Request, mac(1));
    renew.set_ciaddr(a);
    send(&mut c, T0 + 300_000, &renew);
    let (t, ack) = one(&mut c);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.ciaddr(), a);
    assert_eq!(t.dst, SocketAddrV4::new(a, 68));
    assert_eq!(
        c.leases().get(a).unwrap().expires_ms,
        T0 + 300_000 + 600_000
    );
    // REBINDING with the broadcast flag still goes to ciaddr (RFC 2131 §4.1).
    let mut rebind = msg(MessageType::Request, mac(1));
    rebind
        .set_ciaddr(a)
        .set_flags(v4::Flags::default().set_broadcast());
    send(&mut c, T0 + 500_000, &rebind);
    assert_eq!(one(&mut c).0.dst, SocketAddrV4::new(a, 68));
}

#[test]
fn reservations_by_mac_and_client_id_are_kept_for_their_owners() {
    let mut c = core();
    assert_eq!(dora(&mut c, T0, HOST_MAC), ip(11));
    let cid = with(
        msg(MessageType::Discover, mac(9)),
        DhcpOption::ClientIdentifier(b"\x00fixed-client".to_vec()),
    );
    send(&mut c, T0, &cid);
    assert_eq!(one(&mut c).1.yiaddr(), ip(12));
    // Somebody else asking for a reserved address gets a pool address instead.
    let other = with(
        msg(MessageType::Discover, mac(3)),
        DhcpOption::RequestedIpAddress(ip(11)),
    );
    send(&mut c, T0, &other);
    let got = one(&mut c).1.yiaddr();
    assert!(
        (100..=103).contains(&got.octets()[3]),
        "{got} is a pool address"
    );
    // And an INIT-REBOOT for it is refused.
    let steal = with(
        msg(MessageType::Request, mac(3)),
        DhcpOption::RequestedIpAddress(ip(12)),
    );
    send(&mut c, T0, &steal);
    assert_eq!(one(&mut c).1.opts().msg_type(), Some(MessageType::Nak));
}

#[test]
fn pool_exhaustion_means_no_offer_and_expired_leases_are_reclaimed() {
    let mut c = core();
    let got: Vec<Ipv4Addr> = (1..=4).map(|n| dora(&mut c, T0, mac(n))).collect();
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, vec![ip(100), ip(101), ip(102), ip(103)]);
    send(&mut c, T0, &msg(MessageType::Discover, mac(5)));
    assert!(flush(&mut c).is_empty(), "no offer from an exhausted pool");
    assert_eq!(c.stats().pool_exhausted, 1);
    // A REQUEST for a taken address is NAKed.
    let req = with(
        msg(MessageType::Request, mac(5)),
        DhcpOption::RequestedIpAddress(got[0]),
    );
    send(&mut c, T0, &req);
    assert_eq!(one(&mut c).1.opts().msg_type(), Some(MessageType::Nak));
    // After the leases expire the pool is usable again.
    let later = T0 + 601_000;
    c.handle_timeout(later);
    assert!(ip(100) <= dora(&mut c, later, mac(5)));
    // The expired client comes back and is not given a leased address.
    send(&mut c, later, &msg(MessageType::Discover, mac(1)));
    let (_, o) = one(&mut c);
    assert_ne!(
        Some(o.yiaddr()),
        c.leases()
            .iter()
            .find(|l| l.hw == mac(5) && l.state == LeaseState::Bound)
            .map(|l| l.addr)
    );
}

#[test]
fn release_frees_and_decline_withholds() {
    let mut c = core();
    let a = dora(&mut c, T0, mac(1));
    let mut rel = with(
        msg(MessageType::Release, mac(1)),
        DhcpOption::ServerIdentifier(SERVER),
    );
    rel.set_ciaddr(a);
    // A RELEASE from someone else is ignored.
    let mut fake = rel.clone();
    fake.set_chaddr(&mac(2));
    send(&mut c, T0, &fake);
    assert_eq!(c.leases().get(a).unwrap().state, LeaseState::Bound);
    send(&mut c, T0, &rel);
    assert!(flush(&mut c).is_empty(), "no reply to RELEASE");
    assert_eq!(c.leases().get(a).unwrap().state, LeaseState::Released);
    assert_eq!(c.stats().releases, 1);
    // The released address is the first choice for the next new client
    // among used ones, but a never-used address comes first.
    let b = dora(&mut c, T0, mac(2));
    assert_ne!(b, a);
    // DECLINE: the address is withheld for decline_hold.
    let dec = with(
        with(
            msg(MessageType::Decline, mac(2)),
            DhcpOption::ServerIdentifier(SERVER),
        ),
        DhcpOption::RequestedIpAddress(b),
    );
    send(&mut c, T0, &dec);
    assert_eq!(c.stats().declines, 1);
    let batch = c.poll_io().unwrap();
    assert_eq!(batch.leases[0].state, LeaseState::Declined);
    c.complete(batch.id, true);
    let mut offered = Vec::new();
    for n in 3..=6 {
        send(&mut c, T0 + 1, &msg(MessageType::Discover, mac(n)));
        offered.extend(flush(&mut c).into_iter().map(|(_, m)| m.yiaddr()));
    }
    assert!(!offered.contains(&b), "declined {b} offered: {offered:?}");
    // After decline_hold (600 s) it is usable again.
    let later = T0 + 601_000;
    c.handle_timeout(later);
    let mut again = Vec::new();
    for n in 7..=10 {
        send(&mut c, later, &msg(MessageType::Discover, mac(n)));
        again.extend(flush(&mut c).into_iter().map(|(_, m)| m.yiaddr()));
    }
    assert!(again.contains(&b), "{b} not reclaimed: {again:?}");
}

#[test]
fn decline_cycles_from_one_mac_cannot_empty_the_pool() {
    let mut c = core();
    let mut declined = 0;
    for round in 0..4u64 {
        let now = T0 + round * 1000;
        send(&mut c, now, &msg(MessageType::Discover, mac(1)));
        let Some((_, offer)) = flush(&mut c).pop() else {
            continue;
        };
        let req = with(
            with(
                msg(MessageType::Request, mac(1)),
                DhcpOption::ServerIdentifier(SERVER),
            ),
            DhcpOption::RequestedIpAddress(offer.yiaddr()),
        );
        send(&mut c, now, &req);
        let _ = flush(&mut c);
        let dec = with(
            with(
                msg(MessageType::Decline, mac(1)),
                DhcpOption::ServerIdentifier(SERVER),
            ),
            DhcpOption::RequestedIpAddress(offer.yiaddr()),
        );
        send(&mut c, now, &dec);
        let _ = flush(&mut c);
        declined += 1;
    }
    assert_eq!(
        declined, 2,
        "max_leases_per_mac (2) bounds the declines too"
    );
    assert_eq!(c.stats().declines, 2);
    // Two of the four pool addresses remain for everybody else.
    assert!(ip(100) <= dora(&mut c, T0 + 5000, mac(2)));
    assert!(ip(100) <= dora(&mut c, T0 + 5000, mac(3)));
}

#[test]
fn a_new_binding_supersedes_the_clients_old_address() {
    let mut c = core();
    let a = dora(&mut c, T0, mac(1));
    // The client asks for (and may have) another free address.
    let other = if a == ip(103) { ip(102) } else { ip(103) };
    let req = with(
        msg(MessageType::Request, mac(1)),
        DhcpOption::RequestedIpAddress(other),
    );
    send(&mut c, T0, &req);
    assert_eq!(one(&mut c).1.yiaddr(), other);
    assert_eq!(c.leases().get(a).unwrap().state, LeaseState::Released);
    assert_eq!(c.leases().active_for_hw(&mac(1), T0, None), 1);
}

#[test]
fn relayed_requests_use_the_relay_subnet_and_echo_option_82() {
    let mut c = core();
    let relay = Ipv4Addr::new(10, 7, 0, 1);
    let mut m = msg(MessageType::Discover, mac(1));
    m.set_giaddr(relay).set_hops(1);
    let mut bytes = encode(&m);
    let agent = [
        1u8, 3, b'p', b'1', b'7', 2, 4, 0xde, 0xad, 0xbe, 0xef, 0x99, 0,
    ];
    anyboot_wire::dhcp::append_option(&mut bytes, 82, &agent).unwrap();
    c.handle(
        T0,
        Ingress {
            iface: 0,
            local_port: 67,
            src: SocketAddrV4::new(relay, 67),
        },
        &bytes,
    );
    let t = c.poll_transmit().unwrap();
    assert_eq!(t.dst, SocketAddrV4::new(relay, 67));
    let p = anyboot_wire::dhcp::Packet::new_checked(&t.payload[..]).unwrap();
    assert_eq!(p.option(82), Some(&agent[..]), "option 82 echoed verbatim");
    assert_eq!(p.giaddr(), relay.octets());
    let offer = v4::Message::decode(&mut dhcproto::Decoder::new(&t.payload)).unwrap();
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 7, 1, 10));
    // A relayed NAK asks the relay to broadcast.
    let mut bad = with(
        msg(MessageType::Request, mac(2)),
        DhcpOption::RequestedIpAddress(ip(100)),
    );
    bad.set_giaddr(relay);
    send(&mut c, T0, &bad);
    let (t, nak) = one(&mut c);
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    assert!(nak.flags().broadcast());
    assert_eq!(t.dst, SocketAddrV4::new(relay, 67));
    // A relay from a network we do not serve is dropped.
    let mut stray = msg(MessageType::Discover, mac(3));
    stray.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
    send(&mut c, T0, &stray);
    assert!(flush(&mut c).is_empty());
    assert_eq!(c.stats().no_subnet, 1);
}

#[test]
fn one_mac_cannot_exhaust_the_pool_or_flood() {
    let mut c = core();
    // New client identifiers from the same hardware address: at most
    // max_leases_per_mac (2) addresses.
    let mut got = Vec::new();
    for n in 0..4u8 {
        let d = with(
            msg(MessageType::Discover, mac(1)),
            DhcpOption::ClientIdentifier(vec![0, n]),
        );
        send(&mut c, T0 + u64::from(n) * 1000, &d);
        got.extend(flush(&mut c).into_iter().map(|(_, m)| m.yiaddr()));
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(c.stats().per_mac_limit, 2);
    // A burst of 100 packets in the same millisecond: only the bucket's worth
    // (20) is processed.
    let mut c = core();
    for _ in 0..100 {
        send(&mut c, T0, &msg(MessageType::Discover, mac(7)));
    }
    assert_eq!(c.stats().rate_limited, 80);
    assert_eq!(flush(&mut c).len(), 20);
    // Other clients are still served.
    assert_eq!(dora(&mut c, T0, mac(8)).octets()[0], 10);
}

#[test]
fn hostile_input_is_dropped_and_counted() {
    let mut c = core();
    let good = encode(&msg(MessageType::Discover, mac(1)));
    c.handle(T0, ingress(67), &good[..100]);
    let mut bad_len = good.clone();
    let end = anyboot_wire::dhcp::end_offset(&bad_len).unwrap();
    bad_len.truncate(end);
    bad_len.extend_from_slice(&[12, 200, b'x']);
    c.handle(T0, ingress(67), &bad_len);
    let mut reply_op = good.clone();
    reply_op[0] = 2;
    c.handle(T0, ingress(67), &reply_op);
    let mut hlen = good.clone();
    hlen[2] = 200;
    c.handle(T0, ingress(67), &hlen);
    let mut bootp = good.clone();
    bootp.truncate(240);
    bootp.push(255);
    c.handle(T0, ingress(67), &bootp);
    assert!(flush(&mut c).is_empty());
    let s = c.stats();
    assert_eq!(s.malformed, 3);
    assert_eq!(s.not_request, 1);
    assert_eq!(s.bootp_ignored, 1);
    assert_eq!(s.dropped(), 5);
}

fn pxe_discover(hw: [u8; 6], arch: u16, vendor: &[u8]) -> v4::Message {
    let mut m = with(
        msg(MessageType::Discover, hw),
        DhcpOption::ClientSystemArchitecture(v4::Architecture::from(arch)),
    );
    m.opts_mut()
        .insert(DhcpOption::ClassIdentifier(vendor.to_vec()));
    m
}

#[test]
fn pxe_boot_files_per_architecture() {
    let mut c = core();
    let uuid: Vec<u8> = std::iter::once(0).chain(1..=16).collect();
    let bios = with(
        pxe_discover(mac(1), 0, b"PXEClient:Arch:00000:UNDI:002001"),
        DhcpOption::ClientMachineIdentifier(uuid.clone()),
    );
    send(&mut c, T0, &bios);
    let (_, o) = one(&mut c);
    assert_eq!(file(&o).as_deref(), Some("undionly.kpxe"));
    // dhcproto keeps the NUL that terminates the `file` field.
    assert_eq!(o.fname_str().unwrap().unwrap(), "undionly.kpxe\0");
    assert_eq!(o.siaddr(), SERVER);
    assert_eq!(
        opt(&o, OptionCode::TFTPServerName),
        Some(&DhcpOption::TFTPServerName(b"10.0.0.1".to_vec()))
    );
    assert_eq!(
        opt(&o, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(
        opt(&o, OptionCode::VendorExtensions),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );
    assert_eq!(
        opt(&o, OptionCode::ClientMachineIdentifier),
        Some(&DhcpOption::ClientMachineIdentifier(uuid))
    );
    for (n, arch, want) in [
        (2u8, 7u16, "ipxe.efi"),
        (3, 9, "ipxe.efi"),
        (4, 11, "ipxe-arm64.efi"),
    ] {
        send(
            &mut c,
            T0,
            &pxe_discover(mac(n), arch, b"PXEClient:Arch:00007:UNDI:003016"),
        );
        assert_eq!(file(&one(&mut c).1).as_deref(), Some(want), "arch {arch}");
    }
}

#[test]
fn uefi_http_boot_gets_a_url_and_httpclient() {
    let mut cfg = config();
    cfg.boot.http_base = Some("http://10.0.0.1:8080/boot/".into());
    cfg.subnets[0].boot.efi_x64 = Some("snp.efi".into());
    let mut c = core_with(cfg);
    send(
        &mut c,
        T0,
        &pxe_discover(mac(1), 16, b"HTTPClient:Arch:00016:UNDI:003001"),
    );
    let (_, o) = one(&mut c);
    assert_eq!(
        file(&o).as_deref(),
        Some("http://10.0.0.1:8080/boot/snp.efi"),
        "subnet override of the file, section's base URL"
    );
    assert_eq!(
        opt(&o, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    // Without an HTTP base URL an HTTP client gets no boot file at all.
    let mut c = core();
    send(
        &mut c,
        T0,
        &pxe_discover(mac(1), 16, b"HTTPClient:Arch:00016:UNDI:003001"),
    );
    assert_eq!(file(&one(&mut c).1), None);
}

#[test]
fn ipxe_gets_its_script_not_the_binary_again() {
    let mut c = core();
    let by_user_class = with(
        pxe_discover(HOST_MAC, 7, b"PXEClient:Arch:00007:UNDI:003016"),
        DhcpOption::UserClass(b"iPXE".to_vec()),
    );
    send(&mut c, T0, &by_user_class);
    let (_, o) = one(&mut c);
    assert_eq!(file(&o).as_deref(), Some("hosts/52-54-00-00-00-01.ipxe"));
    assert_eq!(o.siaddr(), SERVER);
    // The per-host script does the sanboot (with CHAP); a root path would make
    // iPXE hook the disk first, without credentials.
    assert_eq!(opt(&o, OptionCode::RootPath), None);
    // Option 175 alone also marks iPXE; an unknown host gets the generic script.
    let mut m = pxe_discover(mac(3), 0, b"PXEClient:Arch:00000:UNDI:002001");
    m.opts_mut()
        .insert(DhcpOption::Unknown(v4::UnknownOption::new(
            OptionCode::Unknown(175),
            vec![19, 1, 1],
        )));
    send(&mut c, T0, &m);
    assert_eq!(file(&one(&mut c).1).as_deref(), Some("boot.ipxe"));
    // A host whose profile has no boot menu has no per-host script either.
    let mut cfg = config();
    cfg.hosts[0].has_script = false;
    let mut c2 = core_with(cfg);
    send(&mut c2, T0, &by_user_class);
    let (_, o) = one(&mut c2);
    assert_eq!(file(&o).as_deref(), Some("boot.ipxe"));
    // ... and then the root path is how iPXE finds the host's disk.
    assert_eq!(
        opt(&o, OptionCode::RootPath),
        Some(&DhcpOption::RootPath(
            "iscsi:10.0.0.1::::iqn.2026-11.org.anyboot:desktop".into()
        ))
    );
    // With an HTTP base URL the script is fetched over HTTP.
    let mut cfg = config();
    cfg.boot.http_base = Some("http://10.0.0.1:8080".into());
    let mut c = core_with(cfg);
    send(&mut c, T0, &by_user_class);
    assert_eq!(
        file(&one(&mut c).1).as_deref(),
        Some("http://10.0.0.1:8080/hosts/52-54-00-00-00-01.ipxe")
    );
}

#[test]
fn proxy_dhcp_answers_only_pxe_clients_without_an_address() {
    let mut cfg = config();
    cfg.proxy = true;
    let mut c = core_with(cfg);
    send(&mut c, T0, &msg(MessageType::Discover, mac(1)));
    assert!(
        flush(&mut c).is_empty(),
        "plain clients are left to the real server"
    );
    send(
        &mut c,
        T0,
        &pxe_discover(mac(2), 0, b"PXEClient:Arch:00000:UNDI:002001"),
    );
    let (t, o) = one(&mut c);
    assert_eq!(o.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(o.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(opt(&o, OptionCode::AddressLeaseTime), None);
    assert_eq!(file(&o).as_deref(), Some("undionly.kpxe"));
    assert_eq!(
        opt(&o, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(t.dst, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert!(c.leases().is_empty());
    // The boot-server request on port 4011 is answered unicast to its source.
    let mut r = pxe_discover(mac(2), 0, b"PXEClient:Arch:00000:UNDI:002001");
    r.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    r.set_ciaddr(ip(57));
    let src = SocketAddrV4::new(ip(57), 4011);
    c.handle(
        T0,
        Ingress {
            iface: 0,
            local_port: 4011,
            src,
        },
        &encode(&r),
    );
    let (t, a) = one(&mut c);
    assert_eq!(a.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(t.dst, src);
    assert_eq!(t.from_port, 4011);
    assert_eq!(file(&a).as_deref(), Some("undionly.kpxe"));
}

#[test]
fn inform_gets_configuration_without_a_lease() {
    let mut c = core();
    let mut m = msg(MessageType::Inform, mac(1));
    m.set_ciaddr(ip(50));
    send(&mut c, T0, &m);
    let (t, a) = one(&mut c);
    assert_eq!(a.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(a.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(opt(&a, OptionCode::AddressLeaseTime), None);
    assert!(opt(&a, OptionCode::Router).is_some());
    assert_eq!(t.dst, SocketAddrV4::new(ip(50), 68));
    assert!(c.leases().is_empty());
}

#[test]
fn recovered_leases_survive_a_restart() {
    let mut c = core();
    let a = dora(&mut c, T0, mac(1));
    let recovered: Vec<Lease> = c.leases().iter().cloned().collect();
    let mut c = Core::new(config(), c.ifaces().to_vec(), recovered, T0 + 5000);
    // The owner's INIT-REBOOT is ACKed with the same address.
    let reboot = with(
        msg(MessageType::Request, mac(1)),
        DhcpOption::RequestedIpAddress(a),
    );
    send(&mut c, T0 + 5000, &reboot);
    let (_, ack) = one(&mut c);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), a);
    // Nobody else gets it.
    for n in 2..=4 {
        assert_ne!(dora(&mut c, T0 + 5000, mac(n)), a);
    }
    send(&mut c, T0 + 5000, &msg(MessageType::Discover, mac(9)));
    assert!(flush(&mut c).is_empty());
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        port in prop_oneof![Just(67u16), Just(4011u16)],
        proxy in any::<bool>(),
    ) {
        let mut cfg = config();
        cfg.proxy = proxy;
        let mut c = core_with(cfg);
        c.handle(T0, ingress(port), &bytes);
        let _ = flush(&mut c);
        prop_assert_eq!(c.stats().received, 1);
    }

    #[test]
    fn mutated_requests_never_panic(flips in proptest::collection::vec((240usize..400, any::<u8>()), 1..8)) {
        let mut c = core();
        let m = with(
            pxe_discover(mac(1), 7, b"PXEClient:Arch:00007:UNDI:003016"),
            DhcpOption::RequestedIpAddress(ip(101)),
        );
        let mut bytes = encode(&m);
        bytes.resize(400, 0);
        for (i, v) in flips {
            bytes[i] = v;
        }
        c.handle(T0, ingress(67), &bytes);
        let _ = flush(&mut c);
    }
}

/// One step of the model run: what client `who` does, and what the network
/// does to the replies.
#[derive(Debug, Clone)]
enum Step {
    Discover(u8),
    /// REQUEST (SELECTING) the last address offered to the client.
    Select(u8),
    /// RENEWING: unicast REQUEST for the bound address.
    Renew(u8),
    /// INIT-REBOOT for the bound address.
    Reboot(u8),
    Release(u8),
    /// Time passes (seconds).
    Wait(u16),
    /// kill -9: a new core from what reached the disk.
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..6).prop_map(Step::Discover),
        4 => (0u8..6).prop_map(Step::Select),
        2 => (0u8..6).prop_map(Step::Renew),
        2 => (0u8..6).prop_map(Step::Reboot),
        1 => (0u8..6).prop_map(Step::Release),
        2 => (1u16..400).prop_map(Step::Wait),
        1 => Just(Step::Crash),
    ]
}

/// What a client believes: its last offer and its acknowledged lease.
#[derive(Debug, Clone, Default)]
struct ClientView {
    offer: Option<Ipv4Addr>,
    bound: Option<(Ipv4Addr, u64)>,
    /// When the client last sent a REQUEST: a lease runs from then
    /// (RFC 2131 §4.4.1), however late the ACK arrives.
    sent_ms: u64,
    /// Whether a REQUEST is outstanding (a real client ignores ACKs it is not
    /// waiting for: after a RELEASE it is in INIT).
    awaiting: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Six clients, a four-address pool, replies lost or duplicated, lease
    /// writes that complete late or never (crash): no two clients ever hold
    /// an acknowledged, unexpired lease on the same address, and the server
    /// agrees with every client that holds one.
    #[test]
    fn model_clients_never_share_an_address(
        steps in proptest::collection::vec((step(), any::<bool>(), any::<bool>(), any::<bool>()), 1..80)
    ) {
        let mut now = T0;
        let mut core = core();
        let mut disk: Vec<Lease> = Vec::new();
        let mut views = vec![ClientView::default(); 6];
        for (s, lose, dup, late) in steps {
            let m = match &s {
                Step::Discover(n) => Some((*n, msg(MessageType::Discover, mac(*n)))),
                Step::Select(n) => views[*n as usize].offer.map(|a| (*n, with(
                    with(msg(MessageType::Request, mac(*n)), DhcpOption::ServerIdentifier(SERVER)),
                    DhcpOption::RequestedIpAddress(a),
                ))),
                Step::Renew(n) => views[*n as usize].bound.map(|(a, _)| {
                    let mut r = msg(MessageType::Request, mac(*n));
                    r.set_ciaddr(a);
                    (*n, r)
                }),
                Step::Reboot(n) => views[*n as usize].bound.map(|(a, _)| (*n, with(
                    msg(MessageType::Request, mac(*n)),
                    DhcpOption::RequestedIpAddress(a),
                ))),
                Step::Release(n) => views[*n as usize].bound.map(|(a, _)| {
                    let mut r = with(msg(MessageType::Release, mac(*n)), DhcpOption::ServerIdentifier(SERVER));
                    r.set_ciaddr(a);
                    (*n, r)
                }),
                Step::Wait(secs) => {
                    now += u64::from(*secs) * 1000;
                    core.handle_timeout(now);
                    None
                }
                Step::Crash => {
                    // Held ACKs and unwritten records die with the process.
                    let mut last = std::collections::HashMap::new();
                    for l in &disk {
                        last.insert(l.addr, l.clone());
                    }
                    core = Core::new(config(), core.ifaces().to_vec(), last.into_values(), now);
                    None
                }
            };
            if let Some((n, m)) = m {
                let v = &mut views[n as usize];
                match s {
                    Step::Release(_) => {
                        v.bound = None;
                        v.awaiting = false;
                    }
                    // A client only DISCOVERs in INIT, without a lease.
                    Step::Discover(_) => {
                        v.bound = None;
                        v.awaiting = false;
                    }
                    _ => {
                        v.sent_ms = now;
                        v.awaiting = true;
                    }
                }
                core.handle(now, ingress(67), &encode(&m));
                if dup {
                    core.handle(now, ingress(67), &encode(&m));
                }
            }
            // Lease writes: sometimes only after the next step ("late").
            if !late {
                while let Some(b) = core.poll_io() {
                    disk.extend(b.leases.iter().cloned());
                    core.complete(b.id, true);
                }
            }
            while let Some(t) = core.poll_transmit() {
                if lose {
                    continue;
                }
                let r = v4::Message::decode(&mut dhcproto::Decoder::new(&t.payload)).unwrap();
                let n = r.chaddr()[5] as usize;
                let v = &mut views[n];
                match r.opts().msg_type() {
                    Some(MessageType::Offer) => v.offer = Some(r.yiaddr()),
                    Some(MessageType::Ack) if v.awaiting => {
                        v.awaiting = false;
                        let lt = match r.opts().get(OptionCode::AddressLeaseTime) {
                            Some(DhcpOption::AddressLeaseTime(s)) => u64::from(*s),
                            _ => 0,
                        };
                        v.bound = Some((r.yiaddr(), v.sent_ms + lt * 1000));
                    }
                    Some(MessageType::Nak) if v.awaiting => {
                        v.awaiting = false;
                        v.bound = None;
                    }
                    _ => {}
                }
            }
            // The invariant.
            let live: Vec<(usize, Ipv4Addr)> = views
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.bound.filter(|(_, e)| *e > now).map(|(a, _)| (i, a)))
                .collect();
            for (i, a) in &live {
                for (j, b) in &live {
                    prop_assert!(i == j || a != b, "clients {i} and {j} both hold {a}");
                }
                let l = core.leases().get(*a);
                prop_assert!(
                    l.is_some_and(|l| l.hw == mac(*i as u8) && l.state == LeaseState::Bound),
                    "client {i} holds {a} but the server has {l:?}"
                );
            }
        }
    }
}

#[test]
fn reconfigure_applies_new_hosts_and_keeps_leases() {
    let mut c = core();
    let pooled = dora(&mut c, T0, mac(3));
    assert!((100..=103).contains(&pooled.octets()[3]), "{pooled}");
    // A new host reserved at .20 (outside the pool), and mac(3)'s own lease
    // untouched by the reload.
    let mut cfg = config();
    cfg.hosts.push(HostEntry {
        name: "pc02".into(),
        mac: MacAddr(mac(7)),
        address: Some(ip(20)),
        profile: None,
        boot: DhcpBoot::default(),
        root_path: None,
        has_script: true,
    });
    c.reconfigure(cfg).unwrap();
    assert_eq!(dora(&mut c, T0 + 1000, mac(7)), ip(20));
    assert!(c.leases().iter().any(|l| l.addr == pooled));
    assert_eq!(
        dora(&mut c, T0 + 2000, mac(3)),
        pooled,
        "its lease survived the reload"
    );
    // Socket and lease-log settings need a restart; nothing changes then.
    let mut moved = config();
    moved.interfaces = vec!["eth1".into()];
    assert_eq!(c.reconfigure(moved), Err(NeedsRestart("interfaces")));
    assert_eq!(c.config().hosts.len(), 2);
    let mut proxy = config();
    proxy.proxy = true;
    assert_eq!(c.reconfigure(proxy), Err(NeedsRestart("proxy")));
}
