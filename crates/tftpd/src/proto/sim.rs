//! Deterministic simulation of read transfers: a model client (RFC 1350/7440
//! behaviour, re-ACKing duplicates like the naive clients that trigger the
//! Sorcerer's Apprentice bug) and a network with seeded loss, duplication and
//! reordering, on a virtual clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyboot_wire::tftp::{Packet, Repr, TftpOption};
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{distance, negotiate, Direction, Event, Policy, ReadTransfer};

#[derive(Debug, Clone, Copy)]
struct Net {
    loss: f64,
    dup: f64,
    /// Extra random delay (reordering) up to this many microseconds.
    jitter_us: u64,
}

struct Client {
    blksize: usize,
    windowsize: u16,
    received: u64,
    in_window: u16,
    data: Vec<u8>,
    done: bool,
    gap_acked: bool,
    started: bool,
    deadline: Instant,
}

const CLIENT_TIMEOUT: Duration = Duration::from_millis(1500);

impl Client {
    fn on_packet(&mut self, now: Instant, p: &[u8], out: &mut Vec<Vec<u8>>) {
        let Ok(r) = Packet::new_checked(p).and_then(|p| Repr::parse(&p)) else {
            panic!("server sent junk {p:?}")
        };
        match r {
            Repr::Oack { options } => {
                if !self.started {
                    for o in options {
                        match o.name {
                            "blksize" => self.blksize = o.value.parse().unwrap(),
                            "windowsize" => self.windowsize = o.value.parse().unwrap(),
                            _ => {}
                        }
                    }
                    out.push(Repr::Ack { block: 0 }.to_vec());
                    self.deadline = now + CLIENT_TIMEOUT;
                }
            }
            Repr::Data { block, data } => {
                self.started = true;
                let d = distance(self.received, block);
                if d == 1 && !self.done {
                    assert!(data.len() <= self.blksize);
                    self.data.extend_from_slice(data);
                    self.received += 1;
                    self.in_window += 1;
                    self.gap_acked = false;
                    self.deadline = now + CLIENT_TIMEOUT;
                    if data.len() < self.blksize {
                        self.done = true;
                        out.push(Repr::Ack { block }.to_vec());
                    } else if self.in_window >= self.windowsize {
                        self.in_window = 0;
                        out.push(Repr::Ack { block }.to_vec());
                    }
                } else if d == 0 && self.received > 0 {
                    // Naive client: re-ACK a duplicate (the Apprentice trigger).
                    out.push(
                        Repr::Ack {
                            block: self.received as u16,
                        }
                        .to_vec(),
                    );
                } else if d > 1 && d < 32768 && !self.gap_acked && !self.done {
                    self.gap_acked = true;
                    self.in_window = 0;
                    out.push(
                        Repr::Ack {
                            block: self.received as u16,
                        }
                        .to_vec(),
                    );
                }
            }
            other => panic!("server sent {other:?}"),
        }
    }
}

/// A datagram on the simulated wire: (delivery time, sequence, to the server?, bytes).
type InFlight = (Instant, u64, bool, Vec<u8>);

struct Outcome {
    data: Vec<u8>,
    event: Option<Event>,
    data_sent: u64,
}

fn run(seed: u64, file: &[u8], options: &[(&str, &str)], net: Net) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let peer: SocketAddr = "192.0.2.1:1069".parse().unwrap();
    let opts: Vec<TftpOption> = options
        .iter()
        .map(|&(name, value)| TftpOption { name, value })
        .collect();
    let nego = negotiate(
        &opts,
        Direction::Read {
            size: file.len() as u64,
        },
        &Policy::default(),
    );
    let mut server = ReadTransfer::new(t0, peer, Bytes::copy_from_slice(file), nego);
    let mut client = Client {
        blksize: 512,
        windowsize: 1,
        received: 0,
        in_window: 0,
        data: Vec::new(),
        done: false,
        gap_acked: false,
        started: false,
        deadline: t0 + CLIENT_TIMEOUT,
    };
    // (delivery time, sequence, to_server, bytes)
    let mut wire: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut send = |wire: &mut BinaryHeap<_>,
                    now: Instant,
                    to_server: bool,
                    p: Vec<u8>,
                    rng: &mut SmallRng| {
        if rng.gen_bool(net.loss) {
            return;
        }
        let copies = if rng.gen_bool(net.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = Duration::from_micros(500 + rng.gen_range(0..=net.jitter_us));
            seq += 1;
            wire.push(Reverse((now + delay, seq, to_server, p.clone())));
        }
    };
    let mut buf = vec![0u8; 70000];
    let mut event = None;
    let mut now = t0;
    for _ in 0..5_000_000 {
        while let Some(tx) = server.poll_transmit(&mut buf) {
            assert_eq!(tx.dst, peer);
            send(&mut wire, now, false, buf[..tx.len].to_vec(), &mut rng);
        }
        if let Some(e) = server.poll_event() {
            event = Some(e);
        }
        if server.is_finished() && wire.is_empty() {
            break;
        }
        let next_wire = wire.peek().map(|Reverse(w)| w.0);
        let mut next = client.deadline;
        for t in [next_wire, server.poll_timeout()].into_iter().flatten() {
            next = next.min(t);
        }
        now = next.max(now);
        if next_wire == Some(now) {
            let Reverse((_, _, to_server, p)) = wire.pop().unwrap();
            if to_server {
                server.handle(now, peer, &p);
            } else {
                let mut out = Vec::new();
                client.on_packet(now, &p, &mut out);
                for p in out {
                    send(&mut wire, now, true, p, &mut rng);
                }
            }
        } else if server.poll_timeout() == Some(now) {
            server.handle_timeout(now);
        } else {
            // Client timer: re-ACK what it has (or ACK 0 after an OACK).
            client.deadline = now + CLIENT_TIMEOUT;
            if !server.is_finished() {
                let b = client.received as u16;
                if client.started || client.received > 0 || b == 0 {
                    send(
                        &mut wire,
                        now,
                        true,
                        Repr::Ack { block: b }.to_vec(),
                        &mut rng,
                    );
                }
            }
        }
    }
    Outcome {
        data: client.data,
        event,
        data_sent: server.data_sent(),
    }
}

fn file(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

#[test]
fn duplicated_packets_never_cause_duplicate_data() {
    let f = file(20 * 512 + 7, 1);
    let o = run(
        7,
        &f,
        &[],
        Net {
            loss: 0.0,
            dup: 0.5,
            jitter_us: 0,
        },
    );
    assert_eq!(o.data, f);
    assert_eq!(
        o.event,
        Some(Event::Done {
            bytes: f.len() as u64
        })
    );
    assert_eq!(
        o.data_sent, 21,
        "each block exactly once despite duplicate ACKs"
    );
}

#[test]
fn lossy_reordering_network_delivers_exact_bytes() {
    let cases: &[(&[(&str, &str)], usize)] = &[
        (&[], 5000),
        (&[("blksize", "8"), ("tsize", "0")], 3001),
        (&[("blksize", "64"), ("windowsize", "4")], 10_000),
        (&[("blksize", "512"), ("windowsize", "16")], 40_000),
        (&[("windowsize", "64"), ("blksize", "1468")], 200_000),
    ];
    for (i, (opts, len)) in cases.iter().enumerate() {
        for seed in 0..4u64 {
            let f = file(*len, seed + 100);
            let o = run(
                seed * 31 + i as u64,
                &f,
                opts,
                Net {
                    loss: 0.05,
                    dup: 0.05,
                    jitter_us: 3000,
                },
            );
            assert_eq!(
                o.event,
                Some(Event::Done {
                    bytes: f.len() as u64
                }),
                "case {i} seed {seed}"
            );
            assert!(o.data == f, "case {i} seed {seed}: bytes differ");
        }
    }
}

#[test]
fn rollover_under_loss() {
    // 65535 blocks of 8 bytes and then some: block numbers wrap to 0.
    let f = file(66_000 * 8 + 5, 9);
    let o = run(
        3,
        &f,
        &[("blksize", "8"), ("windowsize", "8")],
        Net {
            loss: 0.01,
            dup: 0.01,
            jitter_us: 100,
        },
    );
    assert_eq!(
        o.event,
        Some(Event::Done {
            bytes: f.len() as u64
        })
    );
    assert!(o.data == f);
}

/// Uploads `file` through a lossy network to a [`WriteTransfer`] with a model
/// client that sends windows of `ws` blocks and restarts after the ACKed block;
/// returns the bytes the server delivered and its final event.
fn run_write(
    seed: u64,
    file: &[u8],
    blksize: usize,
    ws: u16,
    net: Net,
) -> (Vec<u8>, Option<Event>) {
    use super::{Negotiated, WriteTransfer};
    let mut rng = SmallRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let peer: SocketAddr = "192.0.2.1:1069".parse().unwrap();
    let mut nego = Negotiated::plain(&Policy::default());
    nego.blksize = blksize as u16;
    nego.windowsize = ws;
    nego.oack = vec![
        ("blksize", blksize.to_string()),
        ("windowsize", ws.to_string()),
    ];
    let mut server = WriteTransfer::new(t0, peer, nego, false, u64::MAX);
    let last = (file.len() / blksize + 1) as u64;
    let block = |abs: u64| {
        let start = ((abs - 1) as usize * blksize).min(file.len());
        let end = (start + blksize).min(file.len());
        Repr::Data {
            block: abs as u16,
            data: &file[start..end],
        }
        .to_vec()
    };
    let mut acked: u64 = 0;
    let mut started = false;
    let mut client_deadline = t0 + CLIENT_TIMEOUT;
    let mut wire: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut send = |wire: &mut BinaryHeap<Reverse<InFlight>>,
                    now: Instant,
                    to_server: bool,
                    p: Vec<u8>,
                    rng: &mut SmallRng| {
        if rng.gen_bool(net.loss) {
            return;
        }
        let copies = if rng.gen_bool(net.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = Duration::from_micros(500 + rng.gen_range(0..=net.jitter_us));
            seq += 1;
            wire.push(Reverse((now + delay, seq, to_server, p.clone())));
        }
    };
    let mut buf = vec![0u8; 70000];
    let mut got = Vec::new();
    let mut event = None;
    let mut now = t0;
    for _ in 0..5_000_000 {
        while let Some(tx) = server.poll_transmit(&mut buf) {
            send(&mut wire, now, false, buf[..tx.len].to_vec(), &mut rng);
        }
        while let Some(e) = server.poll_event() {
            match e {
                Event::Data(d) => got.extend(d),
                e => event = Some(e),
            }
        }
        if server.is_finished() && wire.is_empty() {
            break;
        }
        let next_wire = wire.peek().map(|Reverse(w)| w.0);
        let mut next = client_deadline;
        for t in [next_wire, server.poll_timeout()].into_iter().flatten() {
            next = next.min(t);
        }
        now = next.max(now);
        let mut window = false;
        if next_wire == Some(now) {
            let Reverse((_, _, to_server, p)) = wire.pop().unwrap();
            if to_server {
                server.handle(now, peer, &p);
            } else {
                match Repr::parse(&Packet::new_checked(&p[..]).unwrap()).unwrap() {
                    Repr::Oack { .. } if !started => {
                        started = true;
                        window = true;
                    }
                    Repr::Ack { block } => {
                        let d = distance(acked, block);
                        if d >= 1 && acked + d <= last.min(acked + u64::from(ws)) {
                            acked += d;
                            window = acked < last;
                        }
                    }
                    _ => {}
                }
            }
        } else if server.poll_timeout() == Some(now) {
            server.handle_timeout(now);
        } else {
            client_deadline = now + CLIENT_TIMEOUT;
            window = started && acked < last;
        }
        if window {
            client_deadline = now + CLIENT_TIMEOUT;
            for abs in acked + 1..=last.min(acked + u64::from(ws)) {
                send(&mut wire, now, true, block(abs), &mut rng);
            }
        }
    }
    (got, event)
}

#[test]
fn uploads_survive_loss_duplication_and_reordering() {
    for (i, &(blksize, ws, len)) in [
        (512usize, 1u16, 5000usize),
        (64, 4, 20_000),
        (8, 16, 70_000 * 8 + 3),
    ]
    .iter()
    .enumerate()
    {
        // The rollover case is long: one seed is enough for it.
        let seeds = if len > 100_000 { 1 } else { 3 };
        for seed in 0..seeds {
            let f = file(len, seed + 7);
            let (got, ev) = run_write(
                seed * 13 + i as u64,
                &f,
                blksize,
                ws,
                Net {
                    loss: 0.03,
                    dup: 0.03,
                    jitter_us: 2000,
                },
            );
            assert_eq!(
                ev,
                Some(Event::Done {
                    bytes: f.len() as u64
                }),
                "case {i} seed {seed}"
            );
            assert!(got == f, "case {i} seed {seed}: bytes differ");
        }
    }
}
