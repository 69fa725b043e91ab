//! A read transfer (RRQ), server side: RFC 1350 section 6 lock-step, RFC 2347
//! OACK / ACK 0, RFC 7440 windows. Sorcerer's Apprentice safe: only the first
//! ACK that moves the window forward triggers sending; duplicates and stale ACKs
//! are ignored, and retransmission happens on timeout only.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use anyboot_wire::tftp::{ErrorCode, Packet, Repr, TftpOption, DATA_HEADER_LEN};

use super::{distance, emit_error, wire_block, Event, Failure, Negotiated, Source, Transmit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// OACK sent, waiting for ACK 0.
    Oack,
    /// Sending DATA windows.
    Data,
    Finished,
}

#[derive(Debug)]
enum Control {
    Oack,
    Error {
        dst: SocketAddr,
        code: ErrorCode,
        message: &'static str,
    },
}

/// One read transfer to one peer (its transfer ID is `peer`).
#[derive(Debug)]
pub struct ReadTransfer<S> {
    peer: SocketAddr,
    source: S,
    size: u64,
    nego: Negotiated,
    phase: Phase,
    /// Absolute number of the final (short, possibly empty) block.
    last: u64,
    /// Highest block the peer acknowledged.
    acked: u64,
    /// Highest block of the current window.
    window_end: u64,
    /// Next block of the current window still to hand to the driver.
    next: u64,
    control: VecDeque<Control>,
    deadline: Option<Instant>,
    retries: u32,
    events: VecDeque<Event>,
    data_sent: u64,
}

impl<S: Source> ReadTransfer<S> {
    /// Starts a transfer of `source` to `peer`: an OACK first if negotiation
    /// granted options, else DATA 1 at once.
    pub fn new(now: Instant, peer: SocketAddr, source: S, nego: Negotiated) -> Self {
        let size = source.len();
        let last = size / u64::from(nego.blksize) + 1;
        let mut t = Self {
            peer,
            source,
            size,
            phase: Phase::Data,
            last,
            acked: 0,
            window_end: 0,
            next: 1,
            control: VecDeque::new(),
            deadline: None,
            retries: 0,
            events: VecDeque::new(),
            data_sent: 0,
            nego,
        };
        if t.nego.oack.is_empty() {
            t.queue_window(now);
        } else {
            t.phase = Phase::Oack;
            t.control.push_back(Control::Oack);
            t.deadline = Some(now + t.nego.timeout);
        }
        t
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.nego
    }

    /// DATA packets handed out so far (retransmissions included).
    pub fn data_sent(&self) -> u64 {
        self.data_sent
    }

    /// Whether the transfer has ended (check [`poll_transmit`](Self::poll_transmit)
    /// once more for a final ERROR).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    fn queue_window(&mut self, now: Instant) {
        self.next = self.acked + 1;
        self.window_end = (self.acked + u64::from(self.nego.windowsize)).min(self.last);
        self.deadline = Some(now + self.nego.timeout);
    }

    fn finish(&mut self, event: Event) {
        self.phase = Phase::Finished;
        self.deadline = None;
        self.next = self.window_end + 1;
        self.events.push_back(event);
    }

    fn fail_with_error(&mut self, code: ErrorCode, message: &'static str, why: Failure) {
        self.control.clear();
        self.control.push_back(Control::Error {
            dst: self.peer,
            code,
            message,
        });
        self.finish(Event::Failed(why));
    }

    /// Feeds one datagram received from `from`.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let parsed = Packet::new_checked(datagram).and_then(|p| Repr::parse(&p));
        if from != self.peer {
            // RFC 1350 section 4: a packet from a foreign TID gets ERROR 5 and
            // does not disturb the transfer. Never answer an ERROR (no loops).
            if !matches!(parsed, Ok(Repr::Error { .. })) {
                self.control.push_back(Control::Error {
                    dst: from,
                    code: ErrorCode::UnknownTid,
                    message: "unknown transfer ID",
                });
            }
            return;
        }
        if self.phase == Phase::Finished {
            return;
        }
        match parsed {
            Ok(Repr::Error { code, message }) => {
                self.control.clear();
                self.finish(Event::Failed(Failure::PeerError {
                    code,
                    message: String::from_utf8_lossy(message).into_owned(),
                }));
            }
            Ok(Repr::Ack { block }) => self.on_ack(now, block),
            // Anything else (a retransmitted RRQ, junk) is ignored: the
            // timers recover, and answering junk would let a spoofer kill us.
            _ => {}
        }
    }

    fn on_ack(&mut self, now: Instant, block: u16) {
        match self.phase {
            Phase::Oack => {
                if block == 0 {
                    self.phase = Phase::Data;
                    self.retries = 0;
                    self.queue_window(now);
                }
            }
            Phase::Data => {
                let d = distance(self.acked, block);
                if d == 0 || d > self.window_end - self.acked {
                    // A duplicate or stale ACK: never a second burst.
                    return;
                }
                self.acked += d;
                self.retries = 0;
                if self.acked == self.last {
                    self.finish(Event::Done { bytes: self.size });
                } else {
                    // Whole window acknowledged, or (RFC 7440 section 4) the peer
                    // saw a gap and acknowledged the last block it has: either
                    // way the next window starts after the ACKed block.
                    self.queue_window(now);
                }
            }
            Phase::Finished => {}
        }
    }

    /// The instant [`handle_timeout`](Self::handle_timeout) wants to be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Retransmits the OACK or the window, or gives up after the retry limit.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(d) = self.deadline else { return };
        if now < d {
            return;
        }
        self.retries += 1;
        if self.retries > self.nego.retries {
            self.control.clear();
            self.finish(Event::Failed(Failure::TimedOut));
            return;
        }
        match self.phase {
            Phase::Oack => {
                self.control.push_back(Control::Oack);
                self.deadline = Some(now + self.nego.timeout);
            }
            Phase::Data => self.queue_window(now),
            Phase::Finished => {}
        }
    }

    /// Writes the next datagram to send into `buf` (which must hold
    /// 4 + blksize bytes).
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(c) = self.control.pop_front() {
            return Some(match c {
                Control::Oack => {
                    let options: Vec<TftpOption<'_>> = self
                        .nego
                        .oack
                        .iter()
                        .map(|(name, value)| TftpOption { name, value })
                        .collect();
                    let r = Repr::Oack { options };
                    let len = r.buffer_len();
                    r.emit(&mut Packet::new_unchecked(&mut buf[..len]));
                    Transmit {
                        dst: self.peer,
                        len,
                    }
                }
                Control::Error { dst, code, message } => Transmit {
                    dst,
                    len: emit_error(buf, code, message),
                },
            });
        }
        if self.phase != Phase::Data || self.next > self.window_end {
            return None;
        }
        let abs = self.next;
        let blksize = u64::from(self.nego.blksize);
        let offset = (abs - 1) * blksize;
        let want = blksize.min(self.size.saturating_sub(offset)) as usize;
        let payload = &mut buf[DATA_HEADER_LEN..DATA_HEADER_LEN + want];
        match read_full(&self.source, offset, payload) {
            Ok(()) => {}
            Err(e) => {
                self.fail_with_error(
                    ErrorCode::NotDefined,
                    "read error",
                    Failure::Io(e.to_string()),
                );
                return self.poll_transmit(buf);
            }
        }
        let mut p = Packet::new_unchecked(&mut buf[..DATA_HEADER_LEN]);
        p.set_opcode(anyboot_wire::tftp::Opcode::Data);
        p.set_block(wire_block(abs));
        self.next += 1;
        self.data_sent += 1;
        Some(Transmit {
            dst: self.peer,
            len: DATA_HEADER_LEN + want,
        })
    }

    /// The next event for the driver (completion or failure).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

fn read_full<S: Source>(src: &S, mut offset: u64, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = src.read_at(offset, buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank during the transfer",
            ));
        }
        offset += n as u64;
        buf = &mut buf[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::proto::{negotiate, Direction, Policy};

    fn peer() -> SocketAddr {
        "192.0.2.7:2000".parse().unwrap()
    }

    fn drain<S: Source>(t: &mut ReadTransfer<S>) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; 70000];
        let mut out = Vec::new();
        while let Some(tx) = t.poll_transmit(&mut buf) {
            out.push((tx.dst, buf[..tx.len].to_vec()));
        }
        out
    }

    fn ack(b: u16) -> Vec<u8> {
        Repr::Ack { block: b }.to_vec()
    }

    fn data_blocks(pkts: &[(SocketAddr, Vec<u8>)]) -> Vec<(u16, usize)> {
        pkts.iter()
            .map(|(_, p)| {
                assert_eq!(&p[..2], b"\x00\x03", "{p:?}");
                (u16::from_be_bytes([p[2], p[3]]), p.len() - 4)
            })
            .collect()
    }

    fn plain(file: &[u8]) -> (Instant, ReadTransfer<Bytes>) {
        let now = Instant::now();
        let n = Negotiated::plain(&Policy::default());
        (
            now,
            ReadTransfer::new(now, peer(), Bytes::copy_from_slice(file), n),
        )
    }

    #[test]
    fn lock_step_513_bytes_and_duplicate_acks_send_nothing() {
        let (now, mut t) = plain(&[7u8; 513]);
        assert_eq!(data_blocks(&drain(&mut t)), vec![(1, 512)]);
        t.handle(now, peer(), &ack(1));
        assert_eq!(data_blocks(&drain(&mut t)), vec![(2, 1)]);
        // The Sorcerer's Apprentice: a duplicate ACK 1 must not resend block 2.
        t.handle(now, peer(), &ack(1));
        assert!(drain(&mut t).is_empty());
        t.handle(now, peer(), &ack(2));
        assert!(t.is_finished());
        assert_eq!(t.poll_event(), Some(Event::Done { bytes: 513 }));
        assert_eq!(t.data_sent(), 2);
    }

    #[test]
    fn empty_and_exact_block_files_end_with_a_short_block() {
        let (now, mut t) = plain(b"");
        assert_eq!(data_blocks(&drain(&mut t)), vec![(1, 0)]);
        t.handle(now, peer(), &ack(1));
        assert_eq!(t.poll_event(), Some(Event::Done { bytes: 0 }));

        let (now, mut t) = plain(&[1u8; 512]);
        assert_eq!(data_blocks(&drain(&mut t)), vec![(1, 512)]);
        t.handle(now, peer(), &ack(1));
        assert_eq!(data_blocks(&drain(&mut t)), vec![(2, 0)]);
        t.handle(now, peer(), &ack(2));
        assert!(t.is_finished());
    }

    #[test]
    fn oack_then_ack0_then_window_of_four() {
        let now = Instant::now();
        let opts = [
            TftpOption {
                name: "blksize",
                value: "8",
            },
            TftpOption {
                name: "windowsize",
                value: "4",
            },
            TftpOption {
                name: "tsize",
                value: "0",
            },
        ];
        let n = negotiate(&opts, Direction::Read { size: 50 }, &Policy::default());
        let mut t = ReadTransfer::new(now, peer(), Bytes::from(vec![9u8; 50]), n);
        let out = drain(&mut t);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].1,
            b"\x00\x06blksize\x008\x00windowsize\x004\x00tsize\x0050\x00"
        );
        // Data does not start before ACK 0; a stray ACK 1 is ignored.
        t.handle(now, peer(), &ack(1));
        assert!(drain(&mut t).is_empty());
        t.handle(now, peer(), &ack(0));
        assert_eq!(
            data_blocks(&drain(&mut t)),
            vec![(1, 8), (2, 8), (3, 8), (4, 8)]
        );
        // Partial ACK (the client saw a gap after 2): resend from 3.
        t.handle(now, peer(), &ack(2));
        assert_eq!(
            data_blocks(&drain(&mut t)),
            vec![(3, 8), (4, 8), (5, 8), (6, 8)]
        );
        t.handle(now, peer(), &ack(6));
        assert_eq!(data_blocks(&drain(&mut t)), vec![(7, 2)]);
        t.handle(now, peer(), &ack(7));
        assert_eq!(t.poll_event(), Some(Event::Done { bytes: 50 }));
    }

    #[test]
    fn error_8_after_oack_aborts_silently() {
        let now = Instant::now();
        let opts = [TftpOption {
            name: "blksize",
            value: "1024",
        }];
        let n = negotiate(&opts, Direction::Read { size: 5 }, &Policy::default());
        let mut t = ReadTransfer::new(now, peer(), Bytes::from_static(b"hello"), n);
        let _ = drain(&mut t);
        let refuse = Repr::Error {
            code: ErrorCode::OptionRefused,
            message: b"no",
        }
        .to_vec();
        t.handle(now, peer(), &refuse);
        assert!(t.is_finished());
        assert!(drain(&mut t).is_empty());
        assert!(matches!(
            t.poll_event(),
            Some(Event::Failed(Failure::PeerError {
                code: ErrorCode::OptionRefused,
                ..
            }))
        ));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn wrong_tid_gets_error_5_and_transfer_continues() {
        let (now, mut t) = plain(&[3u8; 600]);
        let _ = drain(&mut t);
        let intruder: SocketAddr = "192.0.2.7:2001".parse().unwrap();
        t.handle(now, intruder, &ack(1));
        let out = drain(&mut t);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, intruder);
        assert_eq!(&out[0].1[..4], b"\x00\x05\x00\x05");
        // An ERROR from a stranger is not answered.
        t.handle(
            now,
            intruder,
            &Repr::Error {
                code: ErrorCode::NotDefined,
                message: b"",
            }
            .to_vec(),
        );
        assert!(drain(&mut t).is_empty());
        t.handle(now, peer(), &ack(1));
        assert_eq!(data_blocks(&drain(&mut t)), vec![(2, 88)]);
        t.handle(now, peer(), &ack(2));
        assert_eq!(t.poll_event(), Some(Event::Done { bytes: 600 }));
    }

    #[test]
    fn retransmits_on_timeout_then_gives_up() {
        let (t0, mut t) = plain(&[1u8; 100]);
        let _ = drain(&mut t);
        let mut now = t0;
        let mut resent = 0;
        for _ in 0..10 {
            let Some(d) = t.poll_timeout() else { break };
            assert_eq!(d, now + Duration::from_secs(1));
            now = d;
            t.handle_timeout(now);
            resent += data_blocks(&drain(&mut t)).len();
        }
        assert_eq!(resent, 5, "one retransmission per retry");
        assert!(t.is_finished());
        assert_eq!(t.poll_event(), Some(Event::Failed(Failure::TimedOut)));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        let now = Instant::now();
        let mut n = Negotiated::plain(&Policy::default());
        n.blksize = 8;
        let size = 65537 * 8 + 3;
        let mut t = ReadTransfer::new(now, peer(), Bytes::from(vec![0u8; size]), n);
        let mut buf = vec![0u8; 100];
        for abs in 1u64..=65538 {
            let tx = t.poll_transmit(&mut buf).unwrap();
            assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), abs as u16);
            assert!(t.poll_transmit(&mut buf).is_none());
            let _ = tx;
            t.handle(now, peer(), &ack(abs as u16));
        }
        assert_eq!(t.poll_event(), Some(Event::Done { bytes: size as u64 }));
    }
}
