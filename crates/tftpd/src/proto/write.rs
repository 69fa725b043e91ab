//! A write transfer (WRQ), server side: RFC 1350 section 6 (ACK 0 or, with
//! options, an OACK in its place per RFC 2347), RFC 7440 windows (ACK at the end
//! of each window, or the last in-order block on a gap), then a dally period in
//! which a retransmitted final DATA is acknowledged again.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use anyboot_wire::tftp::{ErrorCode, Packet, Repr, TftpOption};

use super::netascii::Decoder;
use super::{distance, emit_error, wire_block, Event, Failure, Negotiated, Transmit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Receiving,
    /// Complete; still acknowledging a repeated final block until the timer.
    Dally,
    Finished,
}

#[derive(Debug)]
enum Control {
    Oack,
    Ack(u16),
    Error {
        dst: SocketAddr,
        code: ErrorCode,
        message: &'static str,
    },
}

/// One write transfer from one peer.
#[derive(Debug)]
pub struct WriteTransfer {
    peer: SocketAddr,
    nego: Negotiated,
    netascii: Option<Decoder>,
    max_size: u64,
    phase: Phase,
    /// Whether nothing has arrived yet (so a timeout resends the OACK).
    started: bool,
    received: u64,
    bytes: u64,
    since_ack: u16,
    gap_acked: bool,
    control: VecDeque<Control>,
    deadline: Option<Instant>,
    retries: u32,
    events: VecDeque<Event>,
}

impl WriteTransfer {
    /// Starts receiving from `peer`: answers the WRQ with an OACK (options
    /// granted) or ACK 0. `netascii` decodes CR LF / CR NUL on the way in.
    pub fn new(
        now: Instant,
        peer: SocketAddr,
        nego: Negotiated,
        netascii: bool,
        max_size: u64,
    ) -> Self {
        let mut t = Self {
            peer,
            netascii: netascii.then(Decoder::default),
            max_size,
            phase: Phase::Receiving,
            started: false,
            received: 0,
            bytes: 0,
            since_ack: 0,
            gap_acked: false,
            control: VecDeque::new(),
            deadline: Some(now + nego.timeout),
            retries: 0,
            events: VecDeque::new(),
            nego,
        };
        t.control.push_back(t.first_reply());
        t
    }

    fn first_reply(&self) -> Control {
        if self.nego.oack.is_empty() {
            Control::Ack(0)
        } else {
            Control::Oack
        }
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    fn fail(&mut self, code: ErrorCode, message: &'static str, why: Failure) {
        self.control.clear();
        self.control.push_back(Control::Error {
            dst: self.peer,
            code,
            message,
        });
        self.phase = Phase::Finished;
        self.deadline = None;
        self.events.push_back(Event::Failed(why));
    }

    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let parsed = Packet::new_checked(datagram).and_then(|p| Repr::parse(&p));
        if from != self.peer {
            if !matches!(parsed, Ok(Repr::Error { .. })) {
                self.control.push_back(Control::Error {
                    dst: from,
                    code: ErrorCode::UnknownTid,
                    message: "unknown transfer ID",
                });
            }
            return;
        }
        match (self.phase, parsed) {
            (Phase::Finished, _) => {}
            (_, Ok(Repr::Error { code, message })) => {
                if self.phase == Phase::Receiving {
                    self.phase = Phase::Finished;
                    self.deadline = None;
                    self.events.push_back(Event::Failed(Failure::PeerError {
                        code,
                        message: String::from_utf8_lossy(message).into_owned(),
                    }));
                } else {
                    self.phase = Phase::Finished;
                    self.deadline = None;
                }
            }
            (Phase::Dally, Ok(Repr::Data { block, .. })) if distance(self.received, block) == 0 => {
                self.control.push_back(Control::Ack(block));
            }
            (Phase::Receiving, Ok(Repr::Data { block, data })) => self.on_data(now, block, data),
            _ => {}
        }
    }

    fn on_data(&mut self, now: Instant, block: u16, data: &[u8]) {
        let d = distance(self.received, block);
        let blksize = usize::from(self.nego.blksize);
        if d == 1 {
            if data.len() > blksize {
                return self.fail(
                    ErrorCode::IllegalOperation,
                    "block larger than blksize",
                    Failure::Protocol("oversized DATA"),
                );
            }
            self.started = true;
            self.bytes += data.len() as u64;
            if self.bytes > self.max_size {
                return self.fail(
                    ErrorCode::DiskFull,
                    "upload exceeds the size limit",
                    Failure::TooLarge,
                );
            }
            self.received += 1;
            self.retries = 0;
            self.gap_acked = false;
            let mut out = Vec::with_capacity(data.len());
            match &mut self.netascii {
                Some(dec) => dec.feed(data, &mut out),
                None => out.extend_from_slice(data),
            }
            if data.len() < blksize {
                if let Some(dec) = &mut self.netascii {
                    dec.finish(&mut out);
                }
                if !out.is_empty() {
                    self.events.push_back(Event::Data(out));
                }
                self.control
                    .push_back(Control::Ack(wire_block(self.received)));
                self.events.push_back(Event::Done { bytes: self.bytes });
                self.phase = Phase::Dally;
                self.deadline = Some(now + self.nego.timeout);
                return;
            }
            if !out.is_empty() {
                self.events.push_back(Event::Data(out));
            }
            self.since_ack += 1;
            if self.since_ack >= self.nego.windowsize {
                self.since_ack = 0;
                self.control
                    .push_back(Control::Ack(wire_block(self.received)));
            }
            self.deadline = Some(now + self.nego.timeout);
        } else if d == 0 && self.started {
            // Our ACK was probably lost: acknowledge the last block again.
            self.control.push_back(Control::Ack(block));
        } else if d > 1 && d < 32768 && !self.gap_acked {
            // RFC 7440: a gap in the window; ACK the last in-order block once.
            self.gap_acked = true;
            self.since_ack = 0;
            self.control
                .push_back(Control::Ack(wire_block(self.received)));
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(d) = self.deadline else { return };
        if now < d {
            return;
        }
        if self.phase == Phase::Dally {
            self.phase = Phase::Finished;
            self.deadline = None;
            return;
        }
        self.retries += 1;
        if self.retries > self.nego.retries {
            self.control.clear();
            self.phase = Phase::Finished;
            self.deadline = None;
            self.events.push_back(Event::Failed(Failure::TimedOut));
            return;
        }
        let c = if self.started {
            Control::Ack(wire_block(self.received))
        } else {
            self.first_reply()
        };
        self.since_ack = 0;
        self.control.push_back(c);
        self.deadline = Some(now + self.nego.timeout);
    }

    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let c = self.control.pop_front()?;
        let (dst, r) = match c {
            Control::Ack(block) => (self.peer, Repr::Ack { block }),
            Control::Oack => (
                self.peer,
                Repr::Oack {
                    options: self
                        .nego
                        .oack
                        .iter()
                        .map(|(name, value)| TftpOption { name, value })
                        .collect(),
                },
            ),
            Control::Error { dst, code, message } => {
                return Some(Transmit {
                    dst,
                    len: emit_error(buf, code, message),
                })
            }
        };
        let len = r.buffer_len();
        r.emit(&mut Packet::new_unchecked(&mut buf[..len]));
        Some(Transmit { dst, len })
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Policy;

    fn peer() -> SocketAddr {
        "192.0.2.9:3000".parse().unwrap()
    }

    fn drain(t: &mut WriteTransfer) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; 600];
        let mut out = Vec::new();
        while let Some(tx) = t.poll_transmit(&mut buf) {
            out.push(buf[..tx.len].to_vec());
        }
        out
    }

    fn data(b: u16, d: &[u8]) -> Vec<u8> {
        Repr::Data { block: b, data: d }.to_vec()
    }

    #[test]
    fn lock_step_upload_with_duplicate_and_limit() {
        let now = Instant::now();
        let n = Negotiated::plain(&Policy::default());
        let mut t = WriteTransfer::new(now, peer(), n.clone(), false, 1000);
        assert_eq!(drain(&mut t), vec![b"\x00\x04\x00\x00".to_vec()]);
        t.handle(now, peer(), &data(1, &[1u8; 512]));
        assert_eq!(drain(&mut t), vec![b"\x00\x04\x00\x01".to_vec()]);
        t.handle(now, peer(), &data(1, &[1u8; 512]));
        assert_eq!(drain(&mut t), vec![b"\x00\x04\x00\x01".to_vec()]);
        t.handle(now, peer(), &data(2, b"xy"));
        assert_eq!(drain(&mut t), vec![b"\x00\x04\x00\x02".to_vec()]);
        assert_eq!(t.poll_event(), Some(Event::Data(vec![1u8; 512])));
        assert_eq!(t.poll_event(), Some(Event::Data(b"xy".to_vec())));
        assert_eq!(t.poll_event(), Some(Event::Done { bytes: 514 }));
        // Dally: a repeated final block is acknowledged again, then the end.
        t.handle(now, peer(), &data(2, b"xy"));
        assert_eq!(drain(&mut t), vec![b"\x00\x04\x00\x02".to_vec()]);
        t.handle_timeout(t.poll_timeout().unwrap());
        assert!(t.is_finished());

        let mut t = WriteTransfer::new(now, peer(), n, false, 600);
        let _ = drain(&mut t);
        t.handle(now, peer(), &data(1, &[0u8; 512]));
        t.handle(now, peer(), &data(2, &[0u8; 512]));
        let out = drain(&mut t);
        assert_eq!(&out.last().unwrap()[..4], b"\x00\x05\x00\x03");
        assert!(t.is_finished());
    }

    #[test]
    fn netascii_upload_is_decoded() {
        let now = Instant::now();
        let mut n = Negotiated::plain(&Policy::default());
        n.blksize = 8;
        let mut t = WriteTransfer::new(now, peer(), n, true, 1000);
        t.handle(now, peer(), &data(1, b"abcdefg\r"));
        t.handle(now, peer(), &data(2, b"\nz"));
        let mut got = Vec::new();
        while let Some(e) = t.poll_event() {
            if let Event::Data(d) = e {
                got.extend(d);
            }
        }
        assert_eq!(got, b"abcdefg\nz");
    }
}
