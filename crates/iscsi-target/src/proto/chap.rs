//! CHAP for iSCSI login (RFC 7143 section 12.1.3, RFC 1994; SHA-256 algorithm number 7 per
//! RFC 7143's IANA registry update): challenge, response check, mutual response,
//! and the hex/base64 encodings of section 6.1.

use md5::Md5;
use sha2::{Digest, Sha256};

/// CHAP_A algorithm numbers we implement, in our order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// 5: MD5 (RFC 1994); what iPXE and most initiators use.
    Md5,
    /// 7: SHA-256 (RFC 7143 section 12.1.3 with the IANA CHAP algorithm 7).
    Sha256,
}

impl Algorithm {
    pub fn number(self) -> u8 {
        match self {
            Algorithm::Md5 => 5,
            Algorithm::Sha256 => 7,
        }
    }

    pub fn from_number(n: &str) -> Option<Self> {
        match n.trim() {
            "5" => Some(Algorithm::Md5),
            "7" => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    /// Challenge length: as long as the digest.
    pub fn challenge_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha256 => 32,
        }
    }

    /// H(id || secret || challenge).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        match self {
            Algorithm::Md5 => {
                let mut h = Md5::new();
                h.update([id]);
                h.update(secret);
                h.update(challenge);
                h.finalize().to_vec()
            }
            Algorithm::Sha256 => {
                let mut h = Sha256::new();
                h.update([id]);
                h.update(secret);
                h.update(challenge);
                h.finalize().to_vec()
            }
        }
    }
}

/// Picks from the initiator's CHAP_A list: SHA-256 if offered, else MD5.
pub fn choose(offered: &str) -> Option<Algorithm> {
    let algs: Vec<Algorithm> = offered
        .split(',')
        .filter_map(Algorithm::from_number)
        .collect();
    if algs.contains(&Algorithm::Sha256) {
        Some(Algorithm::Sha256)
    } else if algs.contains(&Algorithm::Md5) {
        Some(Algorithm::Md5)
    } else {
        None
    }
}

/// Decodes a binary value: `0x`/`0X` hex or `0b`/`0B` base64 (RFC 7143 section 6.1).
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    let v = v.trim();
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        let h = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_owned()
        };
        return hex::decode(h).ok();
    }
    if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        return base64_decode(b);
    }
    None
}

/// Encodes as `0x` hex.
pub fn encode_hex(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Parses CHAP_I: a decimal number 0..=255 (hex `0x..` tolerated).
pub fn decode_id(v: &str) -> Option<u8> {
    let v = v.trim();
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        return u8::from_str_radix(h, 16).ok();
    }
    v.parse().ok()
}

/// Constant-time comparison of two responses.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_response_matches_rfc_1994_construction() {
        // md5(0x01 || "secret" || 16 zero bytes), computed independently with
        // `printf '\x01secret\0...' | md5sum`.
        let r = Algorithm::Md5.response(1, b"secret", &[0u8; 16]);
        assert_eq!(hex::encode(&r), "7570c653cdf4755ccffcaa80f29268d1");
        assert_eq!(
            Algorithm::Sha256.response(1, b"secret", &[0u8; 32]).len(),
            32
        );
    }

    #[test]
    fn algorithm_choice_prefers_sha256() {
        assert_eq!(choose("5"), Some(Algorithm::Md5));
        assert_eq!(choose("5,7"), Some(Algorithm::Sha256));
        assert_eq!(choose("7,5"), Some(Algorithm::Sha256));
        assert_eq!(choose("6,128"), None);
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(decode_binary("0x0a0B"), Some(vec![0x0a, 0x0b]));
        assert_eq!(decode_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(decode_binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(decode_binary("zz"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_id("17"), Some(17));
        assert_eq!(decode_id("256"), None);
        assert!(equal(b"ab", b"ab") && !equal(b"ab", b"ac") && !equal(b"a", b"ab"));
    }
}
