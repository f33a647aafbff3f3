//! Signed public tokens: the part of a tracking, unsubscribe, view-in-browser
//! or confirmation link that says which message (and which link) it is about.
//!
//! A token is `base64url(kind ‖ key id ‖ payload ‖ tag)` without padding:
//! one byte of kind, one byte naming the key, the payload as LEB128 varints,
//! and the first 16 bytes of HMAC-SHA256 over everything before it. Nothing in
//! it is secret, but nobody without the key can make one that verifies, so a
//! click token can only send a browser where Herald itself pointed it.
//!
//! Keys rotate: `[tracking] secret` signs new tokens, and `previous_secrets`
//! still verify old ones for as long as they stay listed. The key id is the
//! first byte of SHA-256 of the secret, which only narrows which keys to try.
//!
//! Identity is deterministic ([`MessageRef`] = send + contact), so re-rendering a
//! message after a restart yields byte-identical tokens and Message-ID.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac as _;
use sha2::Digest as _;

/// HMAC-SHA256 keyed once (RustCrypto `hmac`): a keyed instance holds the
/// key's inner and outer hash states, so a tag from a clone of it costs two
/// SHA-256 block compressions for a short token and no allocation.
type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes of HMAC kept in a token: 128 bits, far beyond guessing.
const TAG_LEN: usize = 16;

/// The longest token accepted, in characters: longer input is refused before
/// any decoding work.
pub const MAX_TOKEN_LEN: usize = 128;

/// One HMAC key.
#[derive(Clone)]
pub struct Key {
    id: u8,
    mac: HmacSha256,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(id {})", self.id)
    }
}

impl Key {
    /// A key from secret bytes (at least 32 are required by config validation).
    pub fn new(secret: &[u8]) -> Key {
        let digest = sha2::Sha256::digest(secret);
        Key {
            id: digest[0],
            mac: HmacSha256::new_from_slice(secret)
                .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length")),
        }
    }

    /// HMAC-SHA256 of `parts`, one after the other.
    fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// HMAC over `verp:` and the body, so a VERP tag can never stand for any
    /// other token's.
    fn bounce_tag(&self, body: &[u8]) -> [u8; 32] {
        self.tag(&[b"verp:", body])
    }
}

/// The signing key and the keys still accepted.
#[derive(Clone, Debug)]
pub struct Keys {
    current: Key,
    previous: Vec<Key>,
}

impl Keys {
    /// Keys from the current secret and older secrets still honoured.
    pub fn new(current: &[u8], previous: &[Vec<u8>]) -> Keys {
        Keys {
            current: Key::new(current),
            previous: previous.iter().map(|p| Key::new(p)).collect(),
        }
    }

    /// Signs `token` with the current key.
    pub fn sign(&self, token: &Token) -> String {
        let mut out = String::with_capacity(64);
        self.sign_into(token, &mut out);
        out
    }

    /// Appends the signed `token` to `out` (what [`Keys::sign`] returns),
    /// allocating nothing else: rendering signs some thirty per message.
    pub fn sign_into(&self, token: &Token, out: &mut String) {
        // Kind, key id, the longest payload (a click's: the send's kind
        // byte and five varints of at most ten bytes), the tag.
        let mut buf = [0u8; 2 + 1 + 5 * 10 + TAG_LEN];
        let mut body = Payload {
            buf: &mut buf,
            len: 2,
        };
        body.buf[0] = token.kind_byte();
        body.buf[1] = self.current.id;
        token.write_payload(&mut body);
        let len = body.len;
        let tag = self.current.tag(&[&buf[..len]]);
        buf[len..len + TAG_LEN].copy_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode_string(&buf[..len + TAG_LEN], out);
    }

    /// Verifies and decodes a token. Any tampering, an unknown key, trailing
    /// bytes or a malformed payload give `None`; the caller answers 404.
    pub fn verify(&self, text: &str) -> Option<Token> {
        if text.len() > MAX_TOKEN_LEN {
            return None;
        }
        let buf = URL_SAFE_NO_PAD.decode(text).ok()?;
        if buf.len() < 2 + TAG_LEN {
            return None;
        }
        let (body, tag) = buf.split_at(buf.len() - TAG_LEN);
        let id = body[1];
        let ok = std::iter::once(&self.current)
            .chain(&self.previous)
            .filter(|k| k.id == id)
            .any(|k| {
                let full = k.tag(&[body]);
                // Constant-time comparison of the truncated tag.
                subtle::ConstantTimeEq::ct_eq(&full[..TAG_LEN], tag).into()
            });
        if !ok {
            return None;
        }
        Token::read(body[0], &body[2..])
    }
}

/// Bytes of HMAC kept in a VERP return path: 80 bits. A forger must guess
/// online, one SMTP command at a time, against a listener that limits
/// every client.
const BOUNCE_TAG_LEN: usize = 10;

/// What a VERP return path `b-<token>@<bounce_domain>` names: the queued
/// message, the recipient's index in it, and the day (since the epoch) the
/// message was queued, so that old return paths can be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BounceRef {
    /// Queue id.
    pub queue_id: u64,
    /// The recipient's index in the queued message.
    pub rcpt: u32,
    /// Days since the epoch when the message was queued.
    pub day: u32,
}

impl Keys {
    /// The token of a VERP return path: lower-case hex (local parts are
    /// compared case-insensitively by some systems) of the key id, the
    /// payload as varints and an HMAC tag over a domain-separated input.
    pub fn sign_bounce(&self, r: BounceRef) -> String {
        let mut buf = Vec::with_capacity(24);
        buf.push(self.current.id);
        put_varint(&mut buf, r.queue_id);
        put_varint(&mut buf, r.rcpt as u64);
        put_varint(&mut buf, r.day as u64);
        let tag = self.current.bounce_tag(&buf);
        buf.extend_from_slice(&tag.as_ref()[..BOUNCE_TAG_LEN]);
        hex::encode(buf)
    }

    /// Verifies a VERP token (the part after `b-`); `None` when forged,
    /// signed by a key no longer listed, or malformed.
    pub fn verify_bounce(&self, token: &str) -> Option<BounceRef> {
        if token.len() > 64 {
            return None;
        }
        let buf = hex::decode(token.to_ascii_lowercase()).ok()?;
        if buf.len() < 4 + BOUNCE_TAG_LEN {
            return None;
        }
        let (body, tag) = buf.split_at(buf.len() - BOUNCE_TAG_LEN);
        let ok = std::iter::once(&self.current)
            .chain(&self.previous)
            .filter(|k| k.id == body[0])
            .any(|k| {
                let full = k.bounce_tag(body);
                subtle::ConstantTimeEq::ct_eq(&full.as_ref()[..BOUNCE_TAG_LEN], tag).into()
            });
        if !ok {
            return None;
        }
        let mut p = &body[1..];
        let queue_id = get_varint(&mut p)?;
        let rcpt = u32::try_from(get_varint(&mut p)?).ok()?;
        let day = u32::try_from(get_varint(&mut p)?).ok()?;
        p.is_empty().then_some(BounceRef {
            queue_id,
            rcpt,
            day,
        })
    }
}

pub use crate::send::model::{SendKind, SendRef};

/// One message: a send to one contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageRef {
    /// The send.
    pub send: SendRef,
    /// The contact.
    pub contact: u64,
}

/// What a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The open pixel of a message.
    Open(MessageRef),
    /// Link number `link` of a send, clicked in a message sent at the
    /// given time (seconds since the epoch; `None` in tokens made before
    /// Herald recorded it). The time bounds auto-login: a link logs the
    /// contact in only within the site's `autologin_window` of the send.
    Click(MessageRef, u32, Option<u64>),
    /// The unsubscribe page / one-click POST for a message.
    Unsubscribe(MessageRef),
    /// The preference page (which lists to stay on).
    Preferences(MessageRef),
    /// The message as a web page, with the time it was sent (as for
    /// `Click`): the page is rendered as of that time.
    View(MessageRef, Option<u64>),
    /// Double opt-in confirmation of a contact, issued at the given time
    /// (seconds since the epoch) so that old links can be refused.
    Confirm {
        /// The contact.
        contact: u64,
        /// When the confirmation mail was made.
        issued: u64,
        /// The signup request it answers (`None` in links made before
        /// requests were recorded).
        request: Option<u64>,
    },
}

impl Token {
    fn kind_byte(&self) -> u8 {
        match self {
            Token::Open(_) => b'o',
            Token::Click(_, _, None) => b'c',
            Token::Click(_, _, Some(_)) => b'k',
            Token::Unsubscribe(_) => b'u',
            Token::Preferences(_) => b'p',
            Token::View(_, None) => b'v',
            Token::View(_, Some(_)) => b'w',
            Token::Confirm { request: None, .. } => b'f',
            Token::Confirm {
                request: Some(_), ..
            } => b'g',
        }
    }

    fn write_payload(&self, out: &mut impl PushByte) {
        let msg = |m: &MessageRef, out: &mut dyn PushByte| {
            out.push(m.send.kind.code());
            put_varint(out, m.send.id);
            put_varint(out, m.send.variant as u64);
            put_varint(out, m.contact);
        };
        match self {
            Token::Open(m)
            | Token::Unsubscribe(m)
            | Token::Preferences(m)
            | Token::View(m, None) => msg(m, out),
            Token::View(m, Some(sent)) => {
                msg(m, out);
                put_varint(out, *sent);
            }
            Token::Click(m, link, sent) => {
                msg(m, out);
                put_varint(out, *link as u64);
                if let Some(sent) = sent {
                    put_varint(out, *sent);
                }
            }
            Token::Confirm {
                contact,
                issued,
                request,
            } => {
                put_varint(out, *contact);
                put_varint(out, *issued);
                if let Some(r) = request {
                    put_varint(out, *r);
                }
            }
        }
    }

    fn read(kind: u8, mut p: &[u8]) -> Option<Token> {
        let p = &mut p;
        let msg = |p: &mut &[u8]| -> Option<MessageRef> {
            let (&k, rest) = p.split_first()?;
            *p = rest;
            let kind = SendKind::from_code(k)?;
            let id = get_varint(p)?;
            let variant = u32::try_from(get_varint(p)?).ok()?;
            let contact = get_varint(p)?;
            Some(MessageRef {
                send: SendRef { kind, id, variant },
                contact,
            })
        };
        let t = match kind {
            b'o' => Token::Open(msg(p)?),
            b'u' => Token::Unsubscribe(msg(p)?),
            b'p' => Token::Preferences(msg(p)?),
            b'v' => Token::View(msg(p)?, None),
            b'w' => {
                let m = msg(p)?;
                Token::View(m, Some(get_varint(p)?))
            }
            b'c' => {
                let m = msg(p)?;
                Token::Click(m, u32::try_from(get_varint(p)?).ok()?, None)
            }
            b'k' => {
                let m = msg(p)?;
                let link = u32::try_from(get_varint(p)?).ok()?;
                Token::Click(m, link, Some(get_varint(p)?))
            }
            b'f' => Token::Confirm {
                contact: get_varint(p)?,
                issued: get_varint(p)?,
                request: None,
            },
            b'g' => Token::Confirm {
                contact: get_varint(p)?,
                issued: get_varint(p)?,
                request: Some(get_varint(p)?),
            },
            _ => return None,
        };
        p.is_empty().then_some(t)
    }
}

/// Where varints are written: a `Vec`, or the fixed buffer of
/// [`Keys::sign_into`].
trait PushByte {
    fn push(&mut self, b: u8);
}

impl PushByte for Vec<u8> {
    fn push(&mut self, b: u8) {
        Vec::push(self, b);
    }
}

/// A token being written into a stack buffer sized for the longest payload.
struct Payload<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl PushByte for Payload<'_> {
    fn push(&mut self, b: u8) {
        // The buffer leaves room for the longest payload and the tag after
        // it (see `sign_into`), so no byte of a payload is ever dropped.
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }
}

fn put_varint(out: &mut (impl PushByte + ?Sized), mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn get_varint(p: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = p.split_first()?;
        *p = rest;
        v |= ((b & 0x7f) as u64).checked_shl(7 * i)?;
        if b & 0x80 == 0 {
            // Refuse non-minimal encodings: one token, one spelling.
            if i > 0 && b == 0 {
                return None;
            }
            return Some(v);
        }
    }
    None
}

/// An auto-login token for a shop: an HS256 JSON Web Token, so that any shop
/// can verify it with a stock JWT library or a few lines of HMAC code (the
/// README shows both). Claims: `sub` (e-mail), `hid` (Herald contact id),
/// `aud` (site id), `iat` and `exp` (seconds since the epoch).
pub fn autologin_jwt(
    secret: &[u8],
    email: &str,
    contact: u64,
    site: &str,
    iat: i64,
    exp: i64,
) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "sub": email,
        "hid": contact,
        "aud": site,
        "iat": iat,
        "exp": exp,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let mut mac = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::hmac as ring_hmac;

    #[test]
    fn token_tags_are_rings_hmac_for_every_length() {
        // Tokens in mail already sent were signed with ring's HMAC.
        for key_len in [0, 1, 32, 63, 64, 65, 100] {
            let secret: Vec<u8> = (0..key_len).map(|i| (i * 7 + 1) as u8).collect();
            let fast = Key::new(&secret);
            let ring_key = ring_hmac::Key::new(ring_hmac::HMAC_SHA256, &secret);
            for len in 0..300 {
                let msg: Vec<u8> = (0..len).map(|i| (i * 31 + key_len) as u8).collect();
                assert_eq!(
                    fast.tag(&[&msg])[..],
                    ring_hmac::sign(&ring_key, &msg).as_ref()[..],
                    "key {key_len} bytes, message {len} bytes"
                );
                // And VERP return paths' tags, over `verp:` and the body.
                assert_eq!(
                    fast.bounce_tag(&msg)[..],
                    ring_hmac::sign(&ring_key, &[&b"verp:"[..], &msg].concat()).as_ref()[..],
                    "VERP: key {key_len} bytes, message {len} bytes"
                );
            }
        }
    }

    fn m(contact: u64) -> MessageRef {
        MessageRef {
            send: SendRef {
                kind: SendKind::Campaign,
                id: 42,
                variant: 1,
            },
            contact,
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let keys = Keys::new(b"0123456789abcdef0123456789abcdef", &[]);
        for t in [
            Token::Open(m(7)),
            Token::Click(m(u64::MAX), 3, None),
            Token::Click(m(u64::MAX), 3, Some(1_800_000_000)),
            // The longest payload there is.
            Token::Click(
                MessageRef {
                    send: SendRef {
                        kind: SendKind::Campaign,
                        id: u64::MAX,
                        variant: u32::MAX,
                    },
                    contact: u64::MAX,
                },
                u32::MAX,
                Some(u64::MAX),
            ),
            Token::Unsubscribe(m(0)),
            Token::Preferences(m(1 << 40)),
            Token::View(m(9), None),
            Token::View(m(9), Some(1_800_000_000)),
            Token::Confirm {
                contact: 5,
                issued: 1_700_000_000,
                request: None,
            },
            Token::Confirm {
                contact: 5,
                issued: 1_700_000_000,
                request: Some(77),
            },
        ] {
            let s = keys.sign(&t);
            assert!(s.len() <= MAX_TOKEN_LEN, "{s}");
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(keys.verify(&s), Some(t));
        }
    }

    #[test]
    fn tampering_of_any_byte_is_refused() -> Result<(), base64::DecodeError> {
        let keys = Keys::new(b"0123456789abcdef0123456789abcdef", &[]);
        let s = keys.sign(&Token::Click(m(7), 3, Some(1_800_000_000)));
        let raw = URL_SAFE_NO_PAD.decode(&s)?;
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut t = raw.clone();
                t[i] ^= 1 << bit;
                assert_eq!(keys.verify(&URL_SAFE_NO_PAD.encode(&t)), None, "{i}/{bit}");
            }
        }
        // Truncated, extended, empty, not base64, too long.
        assert_eq!(keys.verify(&s[..s.len() - 1]), None);
        assert_eq!(keys.verify(&format!("{s}A")), None);
        assert_eq!(keys.verify(""), None);
        assert_eq!(keys.verify("!!!!"), None);
        assert_eq!(keys.verify(&"A".repeat(500)), None);
        Ok(())
    }

    #[test]
    fn another_key_cannot_sign_and_rotation_keeps_old_tokens_valid() {
        let old = Keys::new(b"old-secret-old-secret-old-secret", &[]);
        let other = Keys::new(b"other-secret-other-secret-other!", &[]);
        let t = Token::Open(m(1));
        let s = old.sign(&t);
        assert_eq!(other.verify(&s), None);
        let rotated = Keys::new(
            b"new-secret-new-secret-new-secret",
            &[b"old-secret-old-secret-old-secret".to_vec()],
        );
        assert_eq!(rotated.verify(&s), Some(t));
        // New tokens are signed with the new key, which the old set refuses.
        assert_eq!(old.verify(&rotated.sign(&t)), None);
        // Once the old secret is dropped, its tokens stop working.
        let later = Keys::new(b"new-secret-new-secret-new-secret", &[]);
        assert_eq!(later.verify(&s), None);
    }

    #[test]
    fn tokens_are_deterministic() {
        let keys = Keys::new(b"0123456789abcdef0123456789abcdef", &[]);
        let t = |link| Token::Click(m(7), link, Some(1_800_000_000));
        assert_eq!(keys.sign(&t(3)), keys.sign(&t(3)));
        assert_ne!(keys.sign(&t(3)), keys.sign(&t(4)));
    }

    #[test]
    fn non_minimal_varints_are_refused() {
        let mut p: &[u8] = &[0x81, 0x00];
        assert_eq!(get_varint(&mut p), None);
        let mut p: &[u8] = &[0x80, 0x01];
        assert_eq!(get_varint(&mut p), Some(128));
    }

    #[test]
    fn autologin_jwt_verifies_with_plain_hmac() -> Result<(), Box<dyn std::error::Error>> {
        let t = autologin_jwt(b"shop-secret", "ann@example.com", 7, "shop1", 10, 20);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let key = ring_hmac::Key::new(ring_hmac::HMAC_SHA256, b"shop-secret");
        let sig = URL_SAFE_NO_PAD.decode(parts[2])?;
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert!(ring_hmac::verify(&key, signed.as_bytes(), &sig).is_ok());
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
        assert_eq!(claims["sub"], "ann@example.com");
        assert_eq!(claims["exp"], 20);
        Ok(())
    }

    #[test]
    fn verp_tokens_verify_and_refuse_forgeries() {
        let keys = Keys::new(b"0123456789abcdef0123456789abcdef", &[]);
        let r = BounceRef {
            queue_id: 123_456,
            rcpt: 2,
            day: 20_600,
        };
        let t = keys.sign_bounce(r);
        assert!(t.len() <= 40, "{t}");
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(keys.verify_bounce(&t), Some(r));
        assert_eq!(keys.verify_bounce(&t.to_ascii_uppercase()), Some(r));
        // One changed digit, another key, a truncation: refused.
        let mut forged = t.clone().into_bytes();
        forged[4] = if forged[4] == b'0' { b'1' } else { b'0' };
        assert_eq!(keys.verify_bounce(&String::from_utf8_lossy(&forged)), None);
        let other = Keys::new(b"fedcba9876543210fedcba9876543210", &[]);
        assert_eq!(other.verify_bounce(&t), None);
        assert_eq!(keys.verify_bounce(&t[..t.len() - 2]), None);
        assert_eq!(keys.verify_bounce("zz"), None);
        // A rotated-out key still verifies while listed.
        let rotated = Keys::new(
            b"fedcba9876543210fedcba9876543210",
            &[b"0123456789abcdef0123456789abcdef".to_vec()],
        );
        assert_eq!(rotated.verify_bounce(&t), Some(r));
    }
}
