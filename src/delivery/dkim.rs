//! DKIM: loading keys, signing outgoing messages, generating keys.
//!
//! Signing uses mail-auth's signer; Herald only decides what is signed
//! and, for RSA, does the private-key operation itself with AWS-LC
//! ([`AwsLcRsaKey`], through mail-auth's `SigningKey` trait): ring's RSA
//! signature costs about twice OpenSSL's, AWS-LC's about the same. What is
//! signed: relaxed/relaxed over [`SIGNED_HEADERS`], with From, Subject and
//! Date listed twice ("oversigned") so that a header prepended later breaks
//! the signature. Headers of the list that a message lacks are signed as
//! absent, which stops anyone from adding them afterwards.
//!
//! Signing fails with [`SignError`], which its callers tell apart from the
//! message's own faults (`delivery::queue::SignError`). Loading a key
//! ([`DkimKey::load`]) and [`keygen`] fail with a `String`: their only
//! callers (the config checker, which files the message under the key's
//! position, and `herald dkim keygen`) show it and branch on nothing.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::common::crypto::{CryptoError, Ed25519Key, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// Headers covered by every signature, in the order of the `h=` tag.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Subject",
    "Subject",
    "Date",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "Feedback-ID",
];

/// Smallest RSA key accepted (RFC 8301 requires 1024; mailbox providers want 2048).
pub const MIN_RSA_BITS: usize = 2048;

/// The two key types DKIM knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// rsa-sha256.
    Rsa,
    /// ed25519-sha256 (RFC 8463).
    Ed25519,
}

impl Algorithm {
    /// The `k=` value of the DNS record.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

/// Herald's signing settings for one key: relaxed/relaxed over
/// [`SIGNED_HEADERS`].
fn signer<T: SigningKey>(key: T, domain: &str, selector: &str) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// An RSA private key whose signatures are made by AWS-LC
/// (RSASSA-PKCS1-v1_5 with SHA-256, what `rsa-sha256` is). mail-auth
/// canonicalises and hashes; this makes the one private-key operation.
pub struct AwsLcRsaKey {
    inner: aws_lc_rs::signature::RsaKeyPair,
    rng: aws_lc_rs::rand::SystemRandom,
}

impl AwsLcRsaKey {
    /// Reads a PKCS#1 or PKCS#8 DER RSA private key.
    pub fn from_key_der(der: &PrivateKeyDer<'_>) -> Result<Self, String> {
        use aws_lc_rs::signature::RsaKeyPair;
        let inner = match der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            _ => return Err("not a PKCS#1 or PKCS#8 key".to_string()),
        }
        .map_err(|e| e.to_string())?;
        Ok(AwsLcRsaKey {
            inner,
            rng: aws_lc_rs::rand::SystemRandom::new(),
        })
    }

    /// The public key as PKCS#1 `RSAPublicKey` DER.
    pub fn public_key(&self) -> Vec<u8> {
        use aws_lc_rs::signature::KeyPair;
        self.inner.public_key().as_ref().to_vec()
    }
}

impl SigningKey for AwsLcRsaKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(512);
        input.write(&mut data);
        let mut signature = vec![0; self.inner.public_modulus_len()];
        self.inner
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &self.rng,
                &data,
                &mut signature,
            )
            .map_err(|e| mail_auth::Error::Crypto(CryptoError::Library(e.to_string())))?;
        Ok(signature)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        mail_auth::common::crypto::Algorithm::RsaSha256
    }
}

enum Signer {
    Rsa(DkimSigner<AwsLcRsaKey, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// A loaded signing key for one domain and selector. `Debug` shows no secret.
pub struct DkimKey {
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// Key type.
    pub algorithm: Algorithm,
    /// RSA modulus size (0 for Ed25519).
    pub bits: usize,
    /// The file it came from.
    pub path: PathBuf,
    /// The TXT record value to publish at `selector._domainkey.domain`.
    pub dns_record: String,
    signer: Signer,
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DkimKey {
    /// Loads a PEM private key (PKCS#1 RSA, or PKCS#8 RSA or Ed25519) and
    /// checks it: RSA keys must have at least [`MIN_RSA_BITS`].
    pub fn load(path: &Path, domain: &str, selector: &str) -> Result<DkimKey, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            format!(
                "{} is not a PEM private key (PKCS#1 or PKCS#8): {e}",
                path.display()
            )
        })?;
        let (algorithm, bits, public) = match &der {
            PrivateKeyDer::Pkcs1(k) => {
                let bits = rsa_private_bits(k.secret_pkcs1_der(), false).unwrap_or(0);
                (Algorithm::Rsa, bits, None)
            }
            PrivateKeyDer::Pkcs8(k) => match rsa_private_bits(k.secret_pkcs8_der(), true) {
                Some(bits) => (Algorithm::Rsa, bits, None),
                None => {
                    let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(k.secret_pkcs8_der())
                        .map_err(|e| {
                            format!(
                                "{} holds a PKCS#8 key that is neither RSA nor Ed25519: {e}",
                                path.display()
                            )
                        })?;
                    (Algorithm::Ed25519, 0, Some(key))
                }
            },
            _ => {
                return Err(format!(
                    "{} holds an EC (SEC1) key; DKIM keys must be RSA or Ed25519",
                    path.display()
                ));
            }
        };
        let (signer, dns_record) = match (algorithm, public) {
            (Algorithm::Ed25519, Some(key)) => {
                let record = format!("v=DKIM1; k=ed25519; p={}", B64.encode(key.public_key()));
                (Signer::Ed25519(signer(key, domain, selector)), record)
            }
            _ => {
                if bits != 0 && bits < MIN_RSA_BITS {
                    return Err(format!(
                        "{} is a {bits}-bit RSA key; at least {MIN_RSA_BITS} bits are required",
                        path.display()
                    ));
                }
                let key = AwsLcRsaKey::from_key_der(&der)
                    .map_err(|e| format!("{} is not a usable RSA key: {e}", path.display()))?;
                let record = format!(
                    "v=DKIM1; k=rsa; p={}",
                    B64.encode(spki_from_pkcs1(&key.public_key()))
                );
                (Signer::Rsa(signer(key, domain, selector)), record)
            }
        };
        Ok(DkimKey {
            domain: domain.to_string(),
            selector: selector.to_string(),
            algorithm,
            bits,
            path: path.to_path_buf(),
            dns_record,
            signer,
        })
    }

    /// The `DKIM-Signature:` header (with CRLF) for `message`.
    pub fn signature_header(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let signed = without_blank_tail(message);
        let sig = match &self.signer {
            Signer::Rsa(s) => s.sign(signed),
            Signer::Ed25519(s) => s.sign(signed),
        }
        .map_err(|source| SignError {
            key: self.path.clone(),
            source,
        })?;
        let mut out = Vec::with_capacity(512);
        sig.write_header(&mut out);
        Ok(out)
    }
}

/// `message` without the lines at the end of its body that hold only spaces
/// and tabs (and without the empty lines after them): the part mail-auth is
/// given to sign. The message sent is unchanged.
///
/// Relaxed body canonicalisation (RFC 6376 §3.4.4) strips white space at
/// the end of lines and then ignores empty lines at the end of the body, so
/// cutting these lines off leaves the canonical body, and so the body hash,
/// unchanged. It is needed because mail-auth 0.13.x (`CanonicalState::
/// write_relaxed`) keeps the line breaks of trailing whitespace-only lines:
/// a body ending `Body\r\n \r\n` got a `bh=` no verifier agrees with
/// (fixed upstream in mail-auth 0.15.0, which Herald cannot use yet: see
/// DESIGN.md, "Known dependency constraints"). What is left (content, at
/// most one line end after it, perhaps trailing white space on the last
/// content line) mail-auth canonicalises correctly; the unit tests check
/// that against a plain implementation of §3.4.4 for every short body.
fn without_blank_tail(message: &[u8]) -> &[u8] {
    let Some(body_start) = memchr::memmem::find(message, b"\r\n\r\n").map(|i| i + 4) else {
        return message;
    };
    let body = message.get(body_start..).unwrap_or_default();
    let Some(last) = body
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    else {
        // Only white space and line breaks: the canonical body is empty.
        return message.get(..body_start).unwrap_or(message);
    };
    let tail = body.get(last + 1..).unwrap_or_default();
    // Keep the last content line's own line end (and the white space before
    // it, which mail-auth strips correctly).
    let keep = tail
        .iter()
        .position(|&b| b == b'\n')
        .map_or(tail.len(), |i| i + 1);
    message
        .get(..body_start + last + 1 + keep)
        .unwrap_or(message)
}

/// Why a key did not sign a message. Keys are checked when the config
/// loads, and Herald builds or checks every message before it is signed,
/// so this is a failure on Herald's side (or mail-auth's), not something
/// the message's author can fix; signing again will not help either.
#[derive(Debug, thiserror::Error)]
#[error("DKIM signing with {} failed: {source}", key.display())]
pub struct SignError {
    /// The key file, to name in the message.
    pub key: PathBuf,
    /// mail-auth's reason.
    pub source: mail_auth::Error,
}

/// Signs `message` with every key and returns the signed message (signature
/// headers first, each computed over the unsigned message).
pub fn sign(keys: &[std::sync::Arc<DkimKey>], message: Vec<u8>) -> Result<Vec<u8>, SignError> {
    if keys.is_empty() {
        return Ok(message);
    }
    let mut headers = Vec::with_capacity(600 * keys.len());
    for k in keys {
        headers.extend_from_slice(&k.signature_header(&message)?);
    }
    headers.extend_from_slice(&message);
    Ok(headers)
}

/// What `herald dkim keygen` produced.
pub struct Generated {
    /// Where the private key was written.
    pub path: PathBuf,
    /// DNS name of the TXT record.
    pub record_name: String,
    /// TXT record value.
    pub record_value: String,
}

/// Generates a key, writes it as PEM (mode 0600, refusing to overwrite) and
/// returns the DNS record to publish.
pub fn keygen(
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    out: &Path,
) -> Result<Generated, String> {
    check_dns_label("selector", selector)?;
    for label in domain.split('.') {
        check_dns_label("domain", label)?;
    }
    let (pem, record_value) = match algorithm {
        Algorithm::Rsa => {
            let pair = mail_auth::dkim::generate::DkimKeyPair::generate_rsa(MIN_RSA_BITS)
                .map_err(|e| format!("RSA key generation failed: {e}"))?;
            (
                pem("RSA PRIVATE KEY", pair.private_key()),
                format!(
                    "v=DKIM1; k=rsa; p={}",
                    B64.encode(spki_from_pkcs1(pair.public_key()))
                ),
            )
        }
        Algorithm::Ed25519 => {
            let pair = mail_auth::dkim::generate::DkimKeyPair::generate_ed25519()
                .map_err(|e| format!("Ed25519 key generation failed: {e}"))?;
            (
                pem("PRIVATE KEY", pair.private_key()),
                format!("v=DKIM1; k=ed25519; p={}", B64.encode(pair.public_key())),
            )
        }
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!(
            "{} already exists; refusing to overwrite a key (remove it or choose --out)",
            out.display()
        ),
        _ => format!("cannot create {}: {e}", out.display()),
    })?;
    // Owner only, whatever the umask; `give_to_group` opens it to the
    // service's group once the file is that group's.
    let mode = {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::Permissions::from_mode(0o600)
    };
    f.set_permissions(mode)
        .and_then(|()| f.write_all(pem.as_bytes()))
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    // Check that what was written loads back as a signing key.
    DkimKey::load(out, domain, selector)?;
    Ok(Generated {
        path: out.to_path_buf(),
        record_name: format!("{selector}._domainkey.{domain}"),
        record_value,
    })
}

/// The id of group `name` on this machine.
pub fn group_id(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("bad group name `{name}`"))?;
    // SAFETY: getgrnam reads a NUL-terminated name; the record it returns
    // is read at once, before any other call could overwrite it.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(format!("no group `{name}` on this machine (--group)"));
    }
    // SAFETY: non-null, points at libc's static group record.
    Ok(unsafe { (*gr).gr_gid })
}

/// A group's name, or its number.
pub fn group_name(gid: u32) -> String {
    // SAFETY: getgrgid returns libc's static record or null; read at once.
    let gr = unsafe { libc::getgrgid(gid) };
    if gr.is_null() {
        return gid.to_string();
    }
    // SAFETY: gr_name is a NUL-terminated string in that record.
    unsafe { std::ffi::CStr::from_ptr((*gr).gr_name) }
        .to_string_lossy()
        .into_owned()
}

/// Gives the file at `path` to group `gid` (owner unchanged), then opens it
/// to the group with `mode` (in that order: never readable by a group it
/// was not meant for), so the service's user reads it through its group.
pub fn give_to_group(path: &Path, gid: u32, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    std::os::unix::fs::chown(path, None, Some(gid))
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(|e| {
            format!(
                "cannot give {} to group {gid}: {e} (run as root, or as a member of that group)",
                path.display()
            )
        })
}

/// The record split into quoted strings of at most 255 characters, as a
/// zone file (and most DNS consoles) need for 2048-bit keys.
pub fn zone_line(g: &Generated) -> String {
    let chunks: Vec<String> = g
        .record_value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{}. IN TXT ( {} )", g.record_name, chunks.join(" "))
}

fn check_dns_label(what: &str, label: &str) -> Result<(), String> {
    let ok = !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the {what} `{label}` is not a valid DNS label (letters, digits, `-`, `_`; 1-63 characters)"
        ))
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// --- minimal DER, only what key checks need ---------------------------------

/// Splits one DER TLV off `b`: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, b.get(header..end)?, b.get(end..)?))
}

/// Modulus size of an RSA private key (PKCS#1, or PKCS#8 wrapping PKCS#1);
/// `None` if it is not an RSA key.
fn rsa_private_bits(der: &[u8], pkcs8: bool) -> Option<usize> {
    const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let (_, seq, _) = tlv(der).filter(|t| t.0 == 0x30)?;
    let inner = if pkcs8 {
        let (_, _, rest) = tlv(seq)?; // version
        let (_, algid, rest) = tlv(rest).filter(|t| t.0 == 0x30)?;
        let (_, oid, _) = tlv(algid).filter(|t| t.0 == 0x06)?;
        if oid != RSA_OID {
            return None;
        }
        let (_, octets, _) = tlv(rest).filter(|t| t.0 == 0x04)?;
        let (_, s, _) = tlv(octets).filter(|t| t.0 == 0x30)?;
        s
    } else {
        seq
    };
    let (_, _, rest) = tlv(inner)?; // version
    let (_, n, _) = tlv(rest).filter(|t| t.0 == 0x02)?;
    let Some(i) = n.iter().position(|&b| b != 0) else {
        return Some(0);
    };
    let n = n.get(i..)?;
    let first = *n.first()?;
    Some((n.len() - 1) * 8 + (8 - first.leading_zeros() as usize))
}

/// Modulus size of the RSA public key in a DKIM `p=` value (a
/// SubjectPublicKeyInfo, or a bare PKCS#1 RSAPublicKey, which some signers
/// publish); `None` if it is neither. `herald doctor` uses it to name the
/// size of a published key that is not Herald's.
pub fn rsa_public_bits(der: &[u8]) -> Option<usize> {
    let (_, seq, _) = tlv(der).filter(|t| t.0 == 0x30)?;
    let (tag, first, rest) = tlv(seq)?;
    let n = if tag == 0x30 {
        // SubjectPublicKeyInfo: AlgorithmIdentifier, then a BIT STRING
        // holding the RSAPublicKey.
        let (_, bits, _) = tlv(rest).filter(|t| t.0 == 0x03)?;
        let (_, rsa, _) = tlv(bits.get(1..)?).filter(|t| t.0 == 0x30)?;
        let (_, n, _) = tlv(rsa).filter(|t| t.0 == 0x02)?;
        n
    } else if tag == 0x02 {
        first
    } else {
        return None;
    };
    let Some(i) = n.iter().position(|&b| b != 0) else {
        return Some(0);
    };
    let n = n.get(i..)?;
    let first = *n.first()?;
    Some((n.len() - 1) * 8 + (8 - first.leading_zeros() as usize))
}

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
}

/// Wraps a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo: the form DKIM's
/// `p=` carries for RSA and verifiers expect.
fn spki_from_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    const ALGID: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bitstring = vec![0x03];
    der_len(pkcs1.len() + 1, &mut bitstring);
    bitstring.push(0);
    bitstring.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    der_len(ALGID.len() + bitstring.len(), &mut out);
    out.extend_from_slice(ALGID);
    out.extend_from_slice(&bitstring);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_sign_and_oversign() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        for alg in [Algorithm::Rsa, Algorithm::Ed25519] {
            let path = dir.path().join(format!("{}.pem", alg.as_str()));
            let g = keygen("shop.example", "s1", alg, &path)?;
            assert!(g.record_value.starts_with("v=DKIM1; k="));
            let again = keygen("shop.example", "s1", alg, &path);
            assert!(again.is_err_and(|e| e.contains("already exists")));
            let key = DkimKey::load(&path, "shop.example", "s1")?;
            assert_eq!(key.algorithm, alg);
            assert_eq!(key.dns_record, g.record_value);
            if alg == Algorithm::Rsa {
                assert_eq!(key.bits, 2048);
                let p = g
                    .record_value
                    .rsplit_once("p=")
                    .map(|x| x.1)
                    .unwrap_or_default();
                let spki = B64.decode(p).map_err(|e| e.to_string())?;
                assert_eq!(rsa_public_bits(&spki), Some(2048));
                assert_eq!(rsa_public_bits(b"\x30\x03\x01\x01\x00"), None);
            }
            let msg = b"From: a@shop.example\r\nTo: b@x.test\r\nSubject: hi\r\n\r\nbody\r\n";
            let h = String::from_utf8(key.signature_header(msg).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            assert!(h.starts_with("DKIM-Signature: v=1; a="));
            assert!(h.contains("c=relaxed/relaxed"));
            let unfolded: String = h.split_whitespace().collect();
            let h_tag = unfolded
                .split(';')
                .find_map(|t| t.strip_prefix("h="))
                .unwrap_or_default();
            // From, Subject and Date are listed twice: oversigned.
            for name in ["From", "Subject", "Date"] {
                assert_eq!(
                    h_tag.split(':').filter(|h| *h == name).count(),
                    2,
                    "{h_tag}"
                );
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).map_err(|e| e.to_string())?;
                assert_eq!(mode.permissions().mode() & 0o777, 0o600);
            }
        }
        Ok(())
    }

    /// RFC 6376 §3.4.4 (relaxed body canonicalisation) as written, over a
    /// CRLF body as the receiver sees it (a last line without a line end
    /// gets one in transit).
    fn relaxed_reference(body: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(body);
        let mut lines: Vec<String> = text
            .split("\r\n")
            .map(|line| {
                // White space runs become one space; at the end of a line, none.
                let mut out = String::new();
                let mut space = false;
                for c in line.chars() {
                    if c == ' ' || c == '\t' {
                        space = true;
                    } else {
                        if space {
                            out.push(' ');
                        }
                        out.push(c);
                        space = false;
                    }
                }
                out
            })
            .collect();
        if text.is_empty() || text.ends_with("\r\n") {
            lines.pop();
        }
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
            .iter()
            .flat_map(|l| [l.as_str(), "\r\n"])
            .collect::<String>()
            .into_bytes()
    }

    const HEAD: &[u8] = b"From: a@shop.example\r\nTo: b@x.test\r\nSubject: hi\r\n\r\n";

    /// What mail-auth hashes for the body of `message` once Herald has cut
    /// its blank tail off.
    fn mail_auth_canonical(message: &[u8]) -> Vec<u8> {
        use mail_auth::common::headers::Writable;
        let signed = without_blank_tail(message);
        let mut out = Vec::new();
        Canonicalization::Relaxed
            .canonical_body(signed.get(HEAD.len()..).unwrap_or_default(), 0)
            .write(&mut out);
        out
    }

    /// Every body of up to 8 pieces from {`a`, space, tab, CRLF}: whatever
    /// its white space and blank lines, what mail-auth is given to sign
    /// canonicalises to the RFC's relaxed body. (Without the cut, a body
    /// ending in a whitespace-only line fails here.)
    #[test]
    fn signed_bodies_canonicalise_as_rfc_6376_says() {
        const PIECES: [&[u8]; 4] = [b"a", b" ", b"\t", b"\r\n"];
        let mut checked = 0;
        for len in 0..=8u32 {
            for index in 0..PIECES.len().pow(len) {
                let mut message = HEAD.to_vec();
                let mut n = index;
                for _ in 0..len {
                    message.extend_from_slice(PIECES[n % PIECES.len()]);
                    n /= PIECES.len();
                }
                let body = &message[HEAD.len()..];
                assert_eq!(
                    String::from_utf8_lossy(&mail_auth_canonical(&message)),
                    String::from_utf8_lossy(&relaxed_reference(body)),
                    "body {:?}",
                    String::from_utf8_lossy(body)
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 87_381);
    }

    /// The `bh=` of real signatures over bodies ending in whitespace-only
    /// lines is the hash of the RFC's canonical body.
    #[test]
    fn body_hash_ignores_trailing_whitespace_only_lines() -> Result<(), String> {
        use sha2::Digest;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("ed.pem");
        keygen("shop.example", "s1", Algorithm::Ed25519, &path)?;
        let key = DkimKey::load(&path, "shop.example", "s1")?;
        for body in [
            "Body\r\n \r\n",
            "Body\r\n\t\r\n",
            "Body\r\n \r\n\t\r\n  \t \r\n\r\n",
            "Body \t\r\nline\t\t \r\n \r\n",
            " \r\n\t\r\n",
            "",
            "Body\r\n \t",
            "a  b\t\tc \r\n.\r\n \r\n",
        ] {
            let message = [HEAD, body.as_bytes()].concat();
            let header =
                String::from_utf8(key.signature_header(&message).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            let unfolded: String = header.split_whitespace().collect();
            let bh = unfolded
                .split(';')
                .find_map(|t| t.strip_prefix("bh="))
                .unwrap_or_default()
                .to_string();
            let want = B64.encode(sha2::Sha256::digest(relaxed_reference(body.as_bytes())));
            assert_eq!(bh, want, "body {body:?}");
        }
        Ok(())
    }

    #[test]
    fn bad_labels_are_refused() {
        let dir = std::env::temp_dir().join("never-written.pem");
        assert!(keygen("shop.example", "bad selector", Algorithm::Ed25519, &dir).is_err());
        assert!(keygen("shop..example", "s", Algorithm::Ed25519, &dir).is_err());
    }
}
