//! Option negotiation: RFC 2347 (the OACK carries only options the client asked
//! for and the server accepts), RFC 2348 blksize, RFC 2349 timeout and tsize,
//! RFC 7440 windowsize.

use std::time::Duration;

use anyboot_wire::tftp::{TftpOption, MAX_BLKSIZE, MIN_BLKSIZE};

/// What the server grants one transfer: the config's caps, narrowed by the
/// client's class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Largest blksize granted (already capped by the MTU and the class).
    pub max_blksize: u16,
    /// Largest windowsize granted.
    pub max_windowsize: u16,
    /// `false`: ignore every option, as an RFC 1350 server would.
    pub options: bool,
    /// Retransmission timeout unless the client negotiates one.
    pub timeout: Duration,
    /// Retransmissions before the transfer is abandoned.
    pub retries: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            options: true,
            timeout: Duration::from_secs(1),
            retries: 5,
        }
    }
}

/// Whether the request reads or writes (tsize means different things).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// RRQ: tsize is answered with the file's size.
    Read { size: u64 },
    /// WRQ: tsize is the client's announcement and is echoed.
    Write,
}

/// The outcome of negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    pub retries: u32,
    /// WRQ: the size the client announced.
    pub announced_size: Option<u64>,
    /// Options for the OACK, in the client's order; empty: send no OACK.
    pub oack: Vec<(&'static str, String)>,
}

impl Negotiated {
    /// RFC 1350 parameters (no options).
    pub fn plain(policy: &Policy) -> Self {
        Self {
            blksize: anyboot_wire::tftp::DEFAULT_BLKSIZE,
            windowsize: 1,
            timeout: policy.timeout,
            retries: policy.retries,
            announced_size: None,
            oack: Vec::new(),
        }
    }
}

/// Negotiates `requested` under `policy`. Invalid or unknown options are left
/// out of the OACK (RFC 2347: the server omits options it does not accept);
/// a repeated option counts once (the first).
pub fn negotiate(requested: &[TftpOption<'_>], dir: Direction, policy: &Policy) -> Negotiated {
    let mut n = Negotiated::plain(policy);
    if !policy.options {
        return n;
    }
    for opt in requested {
        let name = opt.name.to_ascii_lowercase();
        let value = opt.value.trim();
        let known: &'static str = match name.as_str() {
            "blksize" => "blksize",
            "windowsize" => "windowsize",
            "timeout" => "timeout",
            "tsize" => "tsize",
            _ => continue,
        };
        if n.oack.iter().any(|(k, _)| *k == known) {
            continue;
        }
        let Ok(v) = value.parse::<u64>() else {
            continue;
        };
        let granted = match known {
            "blksize" => {
                if v < u64::from(MIN_BLKSIZE) || v > u64::from(MAX_BLKSIZE) {
                    continue;
                }
                n.blksize = (v as u16).min(policy.max_blksize).max(MIN_BLKSIZE);
                n.blksize.to_string()
            }
            "windowsize" => {
                if v == 0 || v > 65535 {
                    continue;
                }
                n.windowsize = (v as u16).min(policy.max_windowsize).max(1);
                n.windowsize.to_string()
            }
            "timeout" => {
                // RFC 2349: 1..255 seconds; the server accepts it as is or not at all.
                if !(1..=255).contains(&v) {
                    continue;
                }
                n.timeout = Duration::from_secs(v);
                v.to_string()
            }
            _ => match dir {
                Direction::Read { size } => size.to_string(),
                Direction::Write => {
                    n.announced_size = Some(v);
                    v.to_string()
                }
            },
        };
        n.oack.push((known, granted));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<TftpOption<'a>> {
        pairs
            .iter()
            .map(|&(name, value)| TftpOption { name, value })
            .collect()
    }

    #[test]
    fn only_asked_options_are_answered_and_caps_apply() {
        let p = Policy {
            max_blksize: 1468,
            max_windowsize: 64,
            ..Policy::default()
        };
        let n = negotiate(
            &opts(&[("TSIZE", "0"), ("blksize", "65464"), ("windowsize", "100")]),
            Direction::Read { size: 1234 },
            &p,
        );
        assert_eq!(
            n.oack,
            vec![
                ("tsize", "1234".to_owned()),
                ("blksize", "1468".to_owned()),
                ("windowsize", "64".to_owned())
            ]
        );
        assert_eq!((n.blksize, n.windowsize), (1468, 64));
        let n = negotiate(&opts(&[("tsize", "0")]), Direction::Read { size: 7 }, &p);
        assert_eq!(n.oack, vec![("tsize", "7".to_owned())]);
        assert_eq!(n.blksize, 512);
    }

    #[test]
    fn invalid_unknown_and_repeated_options_are_left_out() {
        let n = negotiate(
            &opts(&[
                ("blksize", "4"),
                ("blksize", "70000"),
                ("timeout", "0"),
                ("timeout", "300"),
                ("windowsize", "0"),
                ("multicast", ""),
                ("tsize", "x"),
            ]),
            Direction::Read { size: 1 },
            &Policy::default(),
        );
        assert!(n.oack.is_empty(), "{:?}", n.oack);
        assert_eq!((n.blksize, n.windowsize), (512, 1));
        let n = negotiate(
            &opts(&[("blksize", "1024"), ("blksize", "8")]),
            Direction::Read { size: 1 },
            &Policy::default(),
        );
        assert_eq!(n.oack, vec![("blksize", "1024".to_owned())]);
    }

    #[test]
    fn refused_options_class_gets_rfc1350() {
        let p = Policy {
            options: false,
            ..Policy::default()
        };
        let n = negotiate(
            &opts(&[("blksize", "1468")]),
            Direction::Read { size: 1 },
            &p,
        );
        assert_eq!(n, Negotiated::plain(&p));
    }

    #[test]
    fn write_tsize_is_echoed_and_timeout_accepted() {
        let n = negotiate(
            &opts(&[("tsize", "999"), ("timeout", "3")]),
            Direction::Write,
            &Policy::default(),
        );
        assert_eq!(n.announced_size, Some(999));
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            n.oack,
            vec![("tsize", "999".to_owned()), ("timeout", "3".to_owned())]
        );
    }
}
