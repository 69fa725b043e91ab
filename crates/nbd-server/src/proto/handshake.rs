//! The fixed-newstyle handshake (NBD protocol document, "Fixed newstyle
//! negotiation", "Option types", "TLS support" SELECTIVETLS mode): a state
//! machine fed with received bytes; replies are pulled with `poll_transmit`.

use std::sync::Arc;

use anyboot_wire::nbd::{
    client_flags, handshake_flags, transmission_flags as tf, ExportNameReplyRepr, GreetingRepr,
    InfoRepr, InfoRequestRepr, InfoType, MetaContextRequestRepr, OptionCode, OptionPacket,
    OptionReplyRepr, OptionRepr, ReplyType,
};
use bytes::{Buf, BytesMut};

use super::{DeviceFacts, ExportInfo, TlsMode, ALLOCATION_CONTEXT_ID, MAX_PAYLOAD};

/// Option data longer than this is not buffered: it is skipped and answered
/// with `NBD_REP_ERR_TOO_BIG`. The largest legitimate option (INFO or
/// SET_META_CONTEXT with a 4096-byte name and a few queries) fits easily.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;

/// After this many options a client is deemed to be wasting our time and the
/// connection is closed (the document allows a hard disconnect for denial of
/// service).
pub const MAX_OPTIONS: u32 = 1024;

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Read more bytes into the buffer, then call `handle` again.
    NeedMore,
    /// Progress was made: send pending output and call `handle` again.
    Continue,
    /// Send pending output, run the TLS server handshake, then call
    /// [`Handshake::tls_started`] and continue on the TLS stream.
    StartTls,
    /// Attach the client to export number `export`, then call
    /// [`Handshake::opened`].
    Open { export: usize },
    /// Send pending output, then close the connection.
    Close(&'static str),
    /// Send pending output; the transmission phase starts with
    /// [`Handshake::negotiated`].
    Done,
}

/// What the handshake agreed on, for the transmission core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub export: usize,
    pub structured: bool,
    pub extended: bool,
    /// `base:allocation` was selected for this export.
    pub allocation: bool,
    pub flags: u16,
    pub facts: DeviceFacts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ClientFlags,
    Options,
    /// Skipping `remaining` bytes of an oversized option.
    Discard {
        option: OptionCode,
        remaining: u64,
    },
    /// Waiting for the driver to open a device.
    Opening {
        export: usize,
        go: Option<GoRequest>,
    },
    Done,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GoRequest {
    name_info: bool,
    description_info: bool,
}

/// The server side of one connection's handshake.
#[derive(Debug)]
pub struct Handshake {
    exports: Arc<Vec<ExportInfo>>,
    tls_available: bool,
    tls_active: bool,
    state: State,
    no_zeroes: bool,
    structured: bool,
    extended: bool,
    /// Export name the last SET_META_CONTEXT was for, and whether it selected
    /// `base:allocation`.
    meta: Option<(String, bool)>,
    options: u32,
    shutting_down: bool,
    out: Vec<u8>,
    result: Option<Negotiated>,
}

impl Handshake {
    /// Starts a handshake; the greeting is queued at once.
    pub fn new(exports: Arc<Vec<ExportInfo>>, tls_available: bool) -> Self {
        let mut out = vec![0u8; GreetingRepr::LEN];
        GreetingRepr {
            handshake_flags: handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES,
        }
        .emit(&mut out);
        Self {
            exports,
            tls_available,
            tls_active: false,
            state: State::ClientFlags,
            no_zeroes: false,
            structured: false,
            extended: false,
            meta: None,
            options: 0,
            shutting_down: false,
            out,
            result: None,
        }
    }

    /// Bytes to send now.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    /// The agreed parameters, once `handle` returned [`Step::Done`].
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.result
    }

    /// The server is stopping: further options are refused with
    /// `NBD_REP_ERR_SHUTDOWN`.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// TLS is up: negotiation state from before STARTTLS is forgotten.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.structured = false;
        self.extended = false;
        self.meta = None;
    }

    /// Consumes what it can of `buf`.
    pub fn handle(&mut self, buf: &mut BytesMut) -> Step {
        match self.state {
            State::Closed => Step::Close("closed"),
            State::Done => Step::Done,
            State::Opening { .. } => Step::NeedMore,
            State::ClientFlags => {
                if buf.len() < 4 {
                    return Step::NeedMore;
                }
                let flags = buf.get_u32();
                let known = client_flags::C_FIXED_NEWSTYLE | client_flags::C_NO_ZEROES;
                if flags & !known != 0 {
                    return self.close("client set unknown flags");
                }
                if flags & client_flags::C_FIXED_NEWSTYLE == 0 {
                    // Only fixed newstyle is served: without it no option
                    // can be answered with an error, so refuse up front.
                    return self.close("client does not speak fixed newstyle");
                }
                self.no_zeroes = flags & client_flags::C_NO_ZEROES != 0;
                self.state = State::Options;
                Step::Continue
            }
            State::Discard { option, remaining } => {
                let n = remaining.min(buf.len() as u64) as usize;
                buf.advance(n);
                let remaining = remaining - n as u64;
                if remaining > 0 {
                    self.state = State::Discard { option, remaining };
                    return Step::NeedMore;
                }
                self.state = State::Options;
                if option == OptionCode::ExportName {
                    return self.close("oversized NBD_OPT_EXPORT_NAME");
                }
                self.reply_err(option, ReplyType::ErrTooBig, "option data too long");
                Step::Continue
            }
            State::Options => {
                let Ok(p) = OptionPacket::new_checked(&buf[..]) else {
                    if buf.len() < OptionPacket::<&[u8]>::HEADER_LEN {
                        return Step::NeedMore;
                    }
                    return self.close("option without IHAVEOPT magic");
                };
                let Ok(opt) = OptionRepr::parse(&p) else {
                    return self.close("malformed option header");
                };
                self.options += 1;
                if self.options > MAX_OPTIONS {
                    return self.close("too many options");
                }
                if opt.length > MAX_OPTION_LEN {
                    buf.advance(OptionPacket::<&[u8]>::HEADER_LEN);
                    self.state = State::Discard {
                        option: opt.option,
                        remaining: u64::from(opt.length),
                    };
                    return Step::Continue;
                }
                let total = OptionPacket::<&[u8]>::HEADER_LEN + opt.length as usize;
                if buf.len() < total {
                    self.options -= 1;
                    return Step::NeedMore;
                }
                let mut msg = buf.split_to(total);
                msg.advance(OptionPacket::<&[u8]>::HEADER_LEN);
                self.option(opt.option, &msg)
            }
        }
    }

    /// The driver's answer to [`Step::Open`]: the device's facts, or why it
    /// could not be opened.
    pub fn opened(&mut self, result: Result<DeviceFacts, String>) -> Step {
        let State::Opening { export, go } = self.state else {
            return self.close("opened() without an Open step");
        };
        let facts = match result {
            Ok(f) => f,
            Err(msg) => {
                return match go {
                    Some(_) => {
                        self.state = State::Options;
                        self.reply_err(OptionCode::Go, ReplyType::ErrUnknown, &msg);
                        Step::Continue
                    }
                    // EXPORT_NAME cannot fail politely.
                    None => self.close("export could not be opened"),
                };
            }
        };
        let flags = self.transmission_flags(&facts);
        match go {
            Some(g) => {
                let e = &self.exports[export].clone();
                self.send_infos(OptionCode::Go, e, &facts, flags, g);
                self.reply(OptionCode::Go, ReplyType::Ack, &[]);
            }
            None => {
                let r = ExportNameReplyRepr {
                    size: facts.size,
                    flags,
                    zeroes: !self.no_zeroes,
                };
                let at = self.out.len();
                self.out.resize(at + r.buffer_len(), 0);
                r.emit(&mut self.out[at..]);
            }
        }
        let name = &self.exports[export].name;
        let allocation = matches!(&self.meta, Some((n, true)) if n == name);
        self.result = Some(Negotiated {
            export,
            structured: self.structured || self.extended,
            extended: self.extended,
            allocation: allocation && (self.structured || self.extended),
            flags,
            facts,
        });
        self.state = State::Done;
        Step::Done
    }

    fn close(&mut self, why: &'static str) -> Step {
        self.state = State::Closed;
        Step::Close(why)
    }

    fn transmission_flags(&self, f: &DeviceFacts) -> u16 {
        let mut flags = tf::HAS_FLAGS | tf::SEND_FLUSH | tf::SEND_FUA | tf::SEND_CACHE;
        if f.read_only {
            flags |= tf::READ_ONLY;
        } else {
            flags |= tf::SEND_TRIM | tf::SEND_WRITE_ZEROES | tf::SEND_FAST_ZERO;
        }
        if self.structured || self.extended {
            flags |= tf::SEND_DF;
        }
        if f.shared_device {
            flags |= tf::CAN_MULTI_CONN;
        }
        flags
    }

    fn reply(&mut self, option: OptionCode, reply_type: ReplyType, data: &[u8]) {
        let at = self.out.len();
        self.out.resize(at + OptionReplyRepr::LEN, 0);
        OptionReplyRepr {
            option,
            reply_type,
            length: data.len() as u32,
        }
        .emit(&mut self.out[at..]);
        self.out.extend_from_slice(data);
    }

    fn reply_err(&mut self, option: OptionCode, reply_type: ReplyType, msg: &str) {
        self.reply(option, reply_type, msg.as_bytes());
    }

    /// Finds an export by name; the empty name is the default export (the
    /// one named "" if configured, else the first).
    fn find(&self, name: &str) -> Option<usize> {
        self.exports
            .iter()
            .position(|e| e.name == name)
            .or_else(|| (name.is_empty() && !self.exports.is_empty()).then_some(0))
    }

    /// TLS policy for an export: `None` if the client may use it now, else
    /// the error to answer with.
    fn tls_refusal(&self, e: &ExportInfo) -> Option<ReplyType> {
        match (e.tls, self.tls_active) {
            (TlsMode::Required, false) => Some(ReplyType::ErrTlsReqd),
            (TlsMode::Off, true) => Some(ReplyType::ErrPolicy),
            _ => None,
        }
    }

    fn visible(&self, e: &ExportInfo) -> bool {
        self.tls_refusal(e).is_none()
    }

    fn send_infos(
        &mut self,
        option: OptionCode,
        e: &ExportInfo,
        facts: &DeviceFacts,
        flags: u16,
        g: GoRequest,
    ) {
        let mut infos = vec![
            InfoRepr::Export {
                size: facts.size,
                flags,
            },
            // Sent unasked: these are the default constraints (except the
            // preferred size), so a client that ignores them is still right.
            InfoRepr::BlockSize {
                min: 1,
                preferred: facts.block_size.clamp(512, 65536).max(4096),
                max: MAX_PAYLOAD,
            },
        ];
        if g.name_info {
            infos.push(InfoRepr::Name(&e.name));
        }
        if let (true, Some(d)) = (g.description_info, e.description.as_deref()) {
            infos.push(InfoRepr::Description(d));
        }
        for i in &infos {
            let mut data = vec![0u8; i.buffer_len()];
            i.emit(&mut data);
            self.reply(option, ReplyType::Info, &data);
        }
    }

    fn option(&mut self, option: OptionCode, data: &[u8]) -> Step {
        if self.shutting_down && option != OptionCode::Abort {
            if option == OptionCode::ExportName {
                return self.close("shutting down");
            }
            self.reply_err(option, ReplyType::ErrShutdown, "server is shutting down");
            return Step::Continue;
        }
        match option {
            OptionCode::ExportName => self.export_name(data),
            OptionCode::Abort => {
                self.reply(option, ReplyType::Ack, &[]);
                self.close("client aborted")
            }
            OptionCode::List => {
                if !data.is_empty() {
                    self.reply_err(option, ReplyType::ErrInvalid, "LIST takes no data");
                    return Step::Continue;
                }
                let exports = self.exports.clone();
                let visible: Vec<_> = exports.iter().filter(|e| self.visible(e)).collect();
                for e in visible {
                    let mut d = Vec::with_capacity(4 + e.name.len());
                    d.extend_from_slice(&(e.name.len() as u32).to_be_bytes());
                    d.extend_from_slice(e.name.as_bytes());
                    if let Some(desc) = &e.description {
                        d.extend_from_slice(desc.as_bytes());
                    }
                    self.reply(option, ReplyType::Server, &d);
                }
                self.reply(option, ReplyType::Ack, &[]);
                Step::Continue
            }
            OptionCode::StartTls => {
                if !data.is_empty() {
                    self.reply_err(option, ReplyType::ErrInvalid, "STARTTLS takes no data");
                } else if !self.tls_available {
                    self.reply_err(option, ReplyType::ErrPolicy, "TLS is not configured");
                } else if self.tls_active {
                    self.reply_err(option, ReplyType::ErrInvalid, "TLS is already active");
                } else {
                    self.reply(option, ReplyType::Ack, &[]);
                    return Step::StartTls;
                }
                Step::Continue
            }
            OptionCode::Info | OptionCode::Go => self.info_or_go(option, data),
            OptionCode::StructuredReply => {
                if !data.is_empty() {
                    self.reply_err(option, ReplyType::ErrInvalid, "option takes no data");
                } else if self.extended {
                    self.reply_err(
                        option,
                        ReplyType::ErrExtHeaderReqd,
                        "extended headers already negotiated",
                    );
                } else {
                    self.structured = true;
                    self.reply(option, ReplyType::Ack, &[]);
                }
                Step::Continue
            }
            OptionCode::ExtendedHeaders => {
                if !data.is_empty() {
                    self.reply_err(option, ReplyType::ErrInvalid, "option takes no data");
                } else {
                    self.extended = true;
                    self.reply(option, ReplyType::Ack, &[]);
                }
                Step::Continue
            }
            OptionCode::ListMetaContext | OptionCode::SetMetaContext => {
                self.meta_context(option, data)
            }
            OptionCode::PeekExport | OptionCode::Unknown(_) => {
                self.reply_err(option, ReplyType::ErrUnsup, "option not supported");
                Step::Continue
            }
        }
    }

    fn export_name(&mut self, data: &[u8]) -> Step {
        if self.extended {
            return self.close("EXPORT_NAME after extended headers");
        }
        let Ok(name) = std::str::from_utf8(data) else {
            return self.close("export name is not UTF-8");
        };
        let Some(i) = self.find(name) else {
            return self.close("unknown export");
        };
        if self.tls_refusal(&self.exports[i]).is_some() {
            return self.close("export not available with this TLS state");
        }
        self.state = State::Opening {
            export: i,
            go: None,
        };
        Step::Open { export: i }
    }

    fn info_or_go(&mut self, option: OptionCode, data: &[u8]) -> Step {
        let req = match InfoRequestRepr::parse(data) {
            Ok(r) => r,
            Err(_) => {
                self.reply_err(option, ReplyType::ErrInvalid, "malformed INFO/GO request");
                return Step::Continue;
            }
        };
        let Some(i) = self.find(req.name) else {
            self.reply_err(option, ReplyType::ErrUnknown, "no such export");
            return Step::Continue;
        };
        let e = self.exports[i].clone();
        if let Some(err) = self.tls_refusal(&e) {
            let msg = if err == ReplyType::ErrTlsReqd {
                "this export requires TLS"
            } else {
                "this export is not served over TLS"
            };
            self.reply_err(option, err, msg);
            return Step::Continue;
        }
        let g = GoRequest {
            name_info: req.requests.contains(&InfoType::Name),
            description_info: req.requests.contains(&InfoType::Description),
        };
        if option == OptionCode::Info {
            let facts = DeviceFacts::from(&e);
            let flags = self.transmission_flags(&facts);
            self.send_infos(option, &e, &facts, flags, g);
            self.reply(option, ReplyType::Ack, &[]);
            return Step::Continue;
        }
        self.state = State::Opening {
            export: i,
            go: Some(g),
        };
        Step::Open { export: i }
    }

    fn meta_context(&mut self, option: OptionCode, data: &[u8]) -> Step {
        let set = option == OptionCode::SetMetaContext;
        if set {
            // A SET replaces the selection even when it fails.
            self.meta = None;
        }
        if !(self.structured || self.extended) {
            self.reply_err(
                option,
                ReplyType::ErrInvalid,
                "negotiate structured replies first",
            );
            return Step::Continue;
        }
        let req = match MetaContextRequestRepr::parse(data) {
            Ok(r) => r,
            Err(_) => {
                self.reply_err(
                    option,
                    ReplyType::ErrInvalid,
                    "malformed meta context request",
                );
                return Step::Continue;
            }
        };
        let Some(i) = self.find(req.name) else {
            self.reply_err(option, ReplyType::ErrUnknown, "no such export");
            return Step::Continue;
        };
        if let Some(err) = self.tls_refusal(&self.exports[i].clone()) {
            self.reply_err(option, err, "export not available with this TLS state");
            return Step::Continue;
        }
        let allocation = if set {
            req.queries.contains(&"base:allocation")
        } else {
            req.queries.is_empty()
                || req
                    .queries
                    .iter()
                    .any(|q| *q == "base:" || *q == "base:allocation")
        };
        if allocation {
            let id = if set { ALLOCATION_CONTEXT_ID } else { 0 };
            let mut d = id.to_be_bytes().to_vec();
            d.extend_from_slice(b"base:allocation");
            self.reply(option, ReplyType::MetaContext, &d);
        }
        if set {
            self.meta = Some((self.exports[i].name.clone(), allocation));
        }
        self.reply(option, ReplyType::Ack, &[]);
        Step::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyboot_wire::nbd::{OptionPacket, OptionReplyRepr};

    fn exports() -> Arc<Vec<ExportInfo>> {
        let e = |name: &str, tls| ExportInfo {
            name: name.into(),
            description: Some(format!("{name} disk")),
            size: 1 << 20,
            read_only: false,
            tls,
            shared_device: true,
            block_size: 512,
            can_fast_zero: true,
        };
        Arc::new(vec![
            e("disk", TlsMode::Optional),
            e("secret", TlsMode::Required),
            e("plain", TlsMode::Off),
        ])
    }

    fn opt(code: OptionCode, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        OptionRepr {
            option: code,
            length: data.len() as u32,
        }
        .emit(&mut OptionPacket::new_unchecked(&mut b[..]));
        b.extend_from_slice(data);
        b
    }

    fn go_data(name: &str, infos: &[InfoType]) -> Vec<u8> {
        let r = InfoRequestRepr {
            name,
            requests: infos.to_vec(),
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut b);
        b
    }

    fn meta_data(name: &str, q: &[&str]) -> Vec<u8> {
        let r = MetaContextRequestRepr {
            name,
            queries: q.to_vec(),
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut b);
        b
    }

    /// Splits server output into option replies (type, data).
    fn replies(out: &[u8]) -> Vec<(ReplyType, Vec<u8>)> {
        let mut v = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let r = OptionReplyRepr::parse(&out[at..]).unwrap();
            let d = out[at + 20..at + 20 + r.length as usize].to_vec();
            v.push((r.reply_type, d));
            at += 20 + r.length as usize;
        }
        v
    }

    /// A handshake past the client flags, with the greeting consumed.
    fn started(tls: bool) -> Handshake {
        let mut h = Handshake::new(exports(), tls);
        let g = h.poll_transmit().unwrap();
        assert_eq!(GreetingRepr::parse(&g).unwrap().handshake_flags, 3);
        let mut b = BytesMut::from(&3u32.to_be_bytes()[..]);
        assert_eq!(h.handle(&mut b), Step::Continue);
        h
    }

    fn feed(h: &mut Handshake, bytes: &[u8]) -> (Vec<Step>, Vec<u8>) {
        let mut b = BytesMut::from(bytes);
        let mut steps = Vec::new();
        loop {
            let s = h.handle(&mut b);
            steps.push(s.clone());
            if s != Step::Continue {
                break;
            }
        }
        (steps, h.poll_transmit().unwrap_or_default())
    }

    #[test]
    fn non_fixed_newstyle_client_is_refused() {
        let mut h = Handshake::new(exports(), false);
        let _ = h.poll_transmit();
        let mut b = BytesMut::from(&0u32.to_be_bytes()[..]);
        assert!(matches!(h.handle(&mut b), Step::Close(_)));
        let mut h = Handshake::new(exports(), false);
        let mut b = BytesMut::from(&0x80u32.to_be_bytes()[..]);
        assert!(matches!(h.handle(&mut b), Step::Close(_)));
    }

    #[test]
    fn unknown_option_gets_unsup_and_session_continues() {
        let mut h = started(false);
        let mut bytes = opt(OptionCode::Unknown(77), b"junk");
        bytes.extend(opt(OptionCode::List, &[]));
        let (steps, out) = feed(&mut h, &bytes);
        assert_eq!(steps.last(), Some(&Step::NeedMore));
        let r = replies(&out);
        assert_eq!(r[0].0, ReplyType::ErrUnsup);
        // LIST without TLS shows the exports that work without TLS.
        let names: Vec<_> = r[1..r.len() - 1]
            .iter()
            .map(|(t, d)| {
                assert_eq!(*t, ReplyType::Server);
                let n = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
                String::from_utf8(d[4..4 + n].to_vec()).unwrap()
            })
            .collect();
        assert_eq!(names, ["disk", "plain"]);
        assert_eq!(r.last().unwrap().0, ReplyType::Ack);
    }

    #[test]
    fn oversized_option_is_skipped_and_refused() {
        let mut h = started(false);
        let mut hdr = vec![0u8; 16];
        OptionRepr {
            option: OptionCode::Info,
            length: MAX_OPTION_LEN + 10,
        }
        .emit(&mut OptionPacket::new_unchecked(&mut hdr[..]));
        let (steps, _) = feed(&mut h, &hdr);
        assert_eq!(steps.last(), Some(&Step::NeedMore));
        let junk = vec![0u8; MAX_OPTION_LEN as usize + 10];
        let mut bytes = junk.clone();
        bytes.extend(opt(OptionCode::Abort, &[]));
        let (steps, out) = feed(&mut h, &bytes);
        assert!(matches!(steps.last(), Some(Step::Close(_))));
        let r = replies(&out);
        assert_eq!(r[0].0, ReplyType::ErrTooBig);
        assert_eq!(r[1].0, ReplyType::Ack);
    }

    #[test]
    fn go_opens_and_reports_info_then_done() {
        let mut h = started(false);
        let mut bytes = opt(OptionCode::StructuredReply, &[]);
        bytes.extend(opt(
            OptionCode::SetMetaContext,
            &meta_data("disk", &["base:allocation", "qemu:dirty-bitmap:x"]),
        ));
        bytes.extend(opt(
            OptionCode::Go,
            &go_data("disk", &[InfoType::Name, InfoType::Description]),
        ));
        let (steps, out) = feed(&mut h, &bytes);
        assert_eq!(steps.last(), Some(&Step::Open { export: 0 }));
        let r = replies(&out);
        assert_eq!(r[0].0, ReplyType::Ack);
        assert_eq!(r[1].0, ReplyType::MetaContext);
        assert_eq!(&r[1].1[4..], b"base:allocation");
        assert_eq!(r[2].0, ReplyType::Ack);
        let facts = DeviceFacts {
            size: 4096,
            read_only: true,
            block_size: 512,
            can_fast_zero: false,
            shared_device: false,
        };
        assert_eq!(h.opened(Ok(facts)), Step::Done);
        let r = replies(&h.poll_transmit().unwrap());
        let infos: Vec<_> = r[..r.len() - 1]
            .iter()
            .map(|(t, d)| {
                assert_eq!(*t, ReplyType::Info);
                info_str(InfoRepr::parse(d).unwrap())
            })
            .collect();
        let flags = tf::HAS_FLAGS
            | tf::READ_ONLY
            | tf::SEND_FLUSH
            | tf::SEND_FUA
            | tf::SEND_CACHE
            | tf::SEND_DF;
        assert!(infos.contains(&format!("export {} {flags}", 4096)));
        assert!(infos.contains(&"name disk".to_string()));
        assert!(infos.contains(&"description disk disk".to_string()));
        assert_eq!(r.last().unwrap().0, ReplyType::Ack);
        let n = h.negotiated().unwrap();
        assert!(n.structured && n.allocation && !n.extended);
        assert_eq!(n.flags & tf::CAN_MULTI_CONN, 0);
    }

    fn info_str(i: InfoRepr<'_>) -> String {
        match i {
            InfoRepr::Export { size, flags } => format!("export {size} {flags}"),
            InfoRepr::Name(n) => format!("name {n}"),
            InfoRepr::Description(d) => format!("description {d}"),
            InfoRepr::BlockSize {
                min,
                preferred,
                max,
            } => {
                format!("block {min} {preferred} {max}")
            }
        }
    }

    #[test]
    fn meta_context_for_another_export_does_not_enable_block_status() {
        let mut h = started(false);
        let mut bytes = opt(OptionCode::ExtendedHeaders, &[]);
        bytes.extend(opt(
            OptionCode::SetMetaContext,
            &meta_data("plain", &["base:allocation"]),
        ));
        bytes.extend(opt(OptionCode::Go, &go_data("disk", &[])));
        let (steps, _) = feed(&mut h, &bytes);
        assert_eq!(steps.last(), Some(&Step::Open { export: 0 }));
        let facts = DeviceFacts::from(&exports()[0]);
        assert_eq!(h.opened(Ok(facts)), Step::Done);
        let n = h.negotiated().unwrap();
        assert!(n.extended && n.structured && !n.allocation);
        assert_ne!(n.flags & tf::CAN_MULTI_CONN, 0);
    }

    #[test]
    fn tls_required_export_needs_starttls_and_starttls_resets_state() {
        let mut h = started(true);
        let mut bytes = opt(OptionCode::StructuredReply, &[]);
        bytes.extend(opt(OptionCode::Go, &go_data("secret", &[])));
        bytes.extend(opt(OptionCode::StartTls, &[]));
        let (steps, out) = feed(&mut h, &bytes);
        assert_eq!(steps.last(), Some(&Step::StartTls));
        let r = replies(&out);
        assert_eq!(r[1].0, ReplyType::ErrTlsReqd);
        assert_eq!(r[2].0, ReplyType::Ack);
        h.tls_started();
        // A second STARTTLS is invalid; the plain-only export is refused.
        let mut bytes = opt(OptionCode::StartTls, &[]);
        bytes.extend(opt(OptionCode::Go, &go_data("plain", &[])));
        bytes.extend(opt(OptionCode::Go, &go_data("secret", &[])));
        let (steps, out) = feed(&mut h, &bytes);
        assert_eq!(steps.last(), Some(&Step::Open { export: 1 }));
        let r = replies(&out);
        assert_eq!(r[0].0, ReplyType::ErrInvalid);
        assert_eq!(r[1].0, ReplyType::ErrPolicy);
        assert_eq!(h.opened(Ok(DeviceFacts::from(&exports()[1]))), Step::Done);
        // Structured replies were negotiated before STARTTLS: forgotten.
        assert!(!h.negotiated().unwrap().structured);
    }

    #[test]
    fn starttls_without_certificates_is_policy() {
        let mut h = started(false);
        let (_, out) = feed(&mut h, &opt(OptionCode::StartTls, &[]));
        assert_eq!(replies(&out)[0].0, ReplyType::ErrPolicy);
    }

    #[test]
    fn export_name_ends_with_size_and_flags_without_zeroes() {
        let mut h = started(false);
        let (steps, _) = feed(&mut h, &opt(OptionCode::ExportName, b""));
        assert_eq!(steps.last(), Some(&Step::Open { export: 0 }));
        assert_eq!(h.opened(Ok(DeviceFacts::from(&exports()[0]))), Step::Done);
        let out = h.poll_transmit().unwrap();
        assert_eq!(out.len(), 10);
        let r = ExportNameReplyRepr::parse(&out, false).unwrap();
        assert_eq!(r.size, 1 << 20);
        // Unknown export on EXPORT_NAME: nothing to answer, close.
        let mut h = started(false);
        let (steps, _) = feed(&mut h, &opt(OptionCode::ExportName, b"nope"));
        assert!(matches!(steps.last(), Some(Step::Close(_))));
    }

    #[test]
    fn failed_open_on_go_is_an_error_reply_and_negotiation_goes_on() {
        let mut h = started(false);
        let (steps, _) = feed(&mut h, &opt(OptionCode::Go, &go_data("disk", &[])));
        assert_eq!(steps.last(), Some(&Step::Open { export: 0 }));
        assert_eq!(h.opened(Err("locked".into())), Step::Continue);
        let r = replies(&h.poll_transmit().unwrap());
        assert_eq!(r[0].0, ReplyType::ErrUnknown);
        let (steps, out) = feed(&mut h, &opt(OptionCode::Info, &go_data("nope", &[])));
        assert_eq!(steps.last(), Some(&Step::NeedMore));
        assert_eq!(replies(&out)[0].0, ReplyType::ErrUnknown);
    }

    #[test]
    fn shutdown_refuses_further_options() {
        let mut h = started(false);
        h.shutdown();
        let (_, out) = feed(&mut h, &opt(OptionCode::List, &[]));
        assert_eq!(replies(&out)[0].0, ReplyType::ErrShutdown);
    }
}
