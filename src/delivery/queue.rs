//! The one way into the queue: [`enqueue`]. The admin API's
//! `POST /api/v1/messages` uses it now; campaigns and automations will too.
//!
//! A message is built (or checked, when given raw), given a Message-ID and a
//! Date when it lacks them, DKIM-signed with every key of its sender, and
//! committed together with its recipients in one store write. Only then is
//! its id returned: accepted means durable.
//!
//! Errors: [`EnqueueError`] says whose fault a refusal is (the input's, an
//! unknown sender, signing, the store) and [`SignError`] whether a message
//! could not be signed because of itself or of a key. The checks of the
//! input (`build`, `prepare_raw` and the header and body checks) return a
//! `String`: every one of them is the input's fault, answered alike as
//! [`EnqueueError::Invalid`] with its message, so no caller needs more.

use std::collections::BTreeSet;
use std::sync::Arc;

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;

use super::dkim;
use super::model::{MailKind, QueuedMessage, Recipient};
use crate::config::Sender;
use crate::config::{domain_of, parse_mailbox};
use crate::send::model::SendRef;
use crate::store::{Sequence, Store, StoreError};

/// Most recipients one message may have.
pub const MAX_RECIPIENTS: usize = 1000;

/// A message to queue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Sender identity id (`[[sender]] id`).
    pub sender: String,
    /// Envelope recipients.
    pub recipients: Vec<NewRecipient>,
    /// The content.
    pub content: Content,
    /// Who queues it (`api`, `campaign:ID`…), kept for reports.
    pub source: String,
    /// A Message-ID to use (without brackets) when the caller derives one
    /// deterministically; otherwise one is generated.
    pub message_id: Option<String>,
    /// What kind of mail it is (template messages), for the consent check
    /// at delivery; `None` for a message given whole.
    pub kind: Option<MailKind>,
}

/// One envelope recipient.
#[derive(Debug, Clone)]
pub struct NewRecipient {
    /// The address.
    pub address: String,
    /// The contact, when the caller knows it.
    pub contact: Option<u64>,
}

/// What the message is made of.
#[derive(Debug, Clone)]
pub enum Content {
    /// A complete RFC 5322 message. It must have a From header in the
    /// sender's domain; Message-ID and Date are added when missing.
    Raw(Vec<u8>),
    /// Parts Herald assembles into a MIME message.
    Parts(Parts),
}

impl Content {
    /// About how many bytes the content holds (the parts' text summed).
    pub fn approx_len(&self) -> usize {
        match self {
            Content::Raw(b) => b.len(),
            Content::Parts(p) => {
                let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
                p.subject.len()
                    + opt(&p.from)
                    + opt(&p.to)
                    + opt(&p.reply_to)
                    + opt(&p.text)
                    + opt(&p.html)
                    + p.headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            }
        }
    }
}

/// The parts of a message Herald builds.
#[derive(Debug, Clone, Default)]
pub struct Parts {
    /// From header; default the sender's `from`.
    pub from: Option<String>,
    /// To header; default the envelope recipients.
    pub to: Option<String>,
    /// Reply-To header.
    pub reply_to: Option<String>,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub text: Option<String>,
    /// HTML body.
    pub html: Option<String>,
    /// Extra headers (List-Unsubscribe…).
    pub headers: Vec<(String, String)>,
}

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The input is wrong; nothing was stored.
    #[error("{0}")]
    Invalid(String),
    /// No sender with that id.
    #[error("no sender `{0}` in the config ([[sender]] id)")]
    UnknownSender(String),
    /// The built message could not be signed (see [`SignError`]).
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why [`sign`] (or [`wire_form`]) did not make a message ready for the
/// queue: the message's fault, or the signing key's.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The message holds a NUL byte, which no transfer encoding carries in
    /// 7bit or 8bit text: the message's fault.
    #[error("the message contains a NUL byte")]
    NulByte,
    /// A DKIM key did not sign: Herald's fault, not the message's.
    #[error(transparent)]
    Dkim(#[from] dkim::SignError),
}

/// Checks, builds, signs and durably queues a message; returns its queue id.
pub async fn enqueue(
    store: &Store,
    sender: Option<Arc<Sender>>,
    msg: NewMessage,
    now: i64,
) -> Result<(u64, String), EnqueueError> {
    let sender = sender.ok_or_else(|| EnqueueError::UnknownSender(msg.sender.clone()))?;
    let recipients = check_recipients(&msg.recipients)?;
    let message_id = match &msg.message_id {
        Some(id) => check_message_id(id)?,
        None => new_message_id(&sender.domain, now),
    };
    let source = msg.source.clone();
    let kind = msg.kind;
    let content = msg.content;
    let rcpts: Vec<String> = recipients.iter().map(|r| r.address.clone()).collect();
    let (body, message_id) = if content.approx_len() <= INLINE_BUILD_BYTES {
        // A panic in the builder or signer is answered as on the blocking
        // thread (its JoinError), not by dropping the connection.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            build_and_sign(&sender, &rcpts, content, message_id, now)
        }))
        .map_err(|_| EnqueueError::Invalid("building the message failed: it panicked".into()))??
    } else {
        let sender = sender.clone();
        tokio::task::spawn_blocking(move || {
            build_and_sign(&sender, &rcpts, content, message_id, now)
        })
        .await
        .map_err(|e| EnqueueError::Invalid(format!("building the message failed: {e}")))??
    };
    let sender_id = sender.id.clone();
    let return_path = sender.return_path.clone();
    let mid = message_id.clone();
    let id = store
        .write(move |t| {
            let id = t.next_id(Sequence::Message)?;
            let mut recipients = recipients;
            link_contacts(t, &mut recipients)?;
            let mut m = QueuedMessage {
                id,
                sender: sender_id,
                return_path,
                message_id: mid,
                created: now,
                size: body.len() as u64,
                source,
                recipients,
                due: None,
                finished: None,
                purged: None,
                send: None,
                kind,
            };
            t.put_message(&mut m, Some(&body))?;
            Ok(id)
        })
        .await?;
    Ok((id, message_id))
}

/// Content up to this size is built and signed on the task that takes it;
/// larger content on a blocking thread. A message of 20 KB takes ~0.35 ms
/// of CPU (the RSA-2048 signature most of it): less than the hop to a
/// blocking thread and back costs on a busy two-core machine (0.8 ms of
/// wall time for the same work, measured under the pipeline benchmark),
/// and the canonicalization and hashing of a larger body grow with it.
const INLINE_BUILD_BYTES: usize = 64 * 1024;

/// Builds the message and signs it with every key of its sender.
fn build_and_sign(
    sender: &Sender,
    rcpts: &[String],
    content: Content,
    message_id: String,
    now: i64,
) -> Result<(Vec<u8>, String), EnqueueError> {
    let (bytes, mid) =
        build(sender, rcpts, content, message_id, now).map_err(EnqueueError::Invalid)?;
    Ok((sign(sender, bytes)?, mid))
}

/// Names the contact of each recipient given without one whose address is
/// a contact's, in the queuing transaction (an erasure cannot come between):
/// the message is then in the contact's history, and goes with an erasure.
fn link_contacts(
    t: &mut crate::store::WriteTables<'_>,
    recipients: &mut [Recipient],
) -> Result<(), StoreError> {
    use crate::store::ReadTables as _;
    for r in recipients.iter_mut().filter(|r| r.contact.is_none()) {
        if let Ok(e) = crate::contacts::normalize_email(&r.address) {
            r.contact = t.contact_id_by_email(&e.key)?;
        }
    }
    Ok(())
}

/// A built, signed message for one contact, ready to be queued inside a
/// write transaction (campaigns queue a batch of these in one commit).
#[derive(Debug)]
pub struct Signed {
    /// Envelope recipient.
    pub address: String,
    /// The contact.
    pub contact: u64,
    /// Message-ID (without brackets).
    pub message_id: String,
    /// The signed bytes.
    pub body: Vec<u8>,
}

/// Signs a built message with every DKIM key of the sender (CPU work: call
/// from a blocking or rayon thread). The message is put in its wire form
/// first (see [`wire_form`]).
pub fn sign(sender: &Sender, message: Vec<u8>) -> Result<Vec<u8>, SignError> {
    Ok(dkim::sign(&sender.dkim, wire_form(message)?)?)
}

/// Bare CR and bare LF become CRLF (RFC 5322 §2.3), anywhere in `bytes`.
/// A lone CR would otherwise reach the wire as it is: peers disagree on
/// whether it ends a line, so `\r.\r` could end the DATA early for one of
/// them (smuggling), and dot-stuffing and the DKIM body hash would differ.
pub fn crlf_line_ends(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 50);
    // Copies the runs between line-end bytes whole (memchr), not byte by byte.
    let mut last = 0;
    for i in memchr::memchr2_iter(b'\r', b'\n', bytes) {
        if i < last {
            // The LF of a CRLF, copied with its CR.
            continue;
        }
        out.extend_from_slice(&bytes[last..i]);
        out.extend_from_slice(b"\r\n");
        last = if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            i + 2
        } else {
            i + 1
        };
    }
    out.extend_from_slice(&bytes[last..]);
    out
}

/// Whether every CR in `bytes` is followed by LF and every LF preceded by CR.
fn crlf_only(bytes: &[u8]) -> bool {
    memchr::memchr2_iter(b'\r', b'\n', bytes).all(|i| match bytes[i] {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        _ => i > 0 && bytes[i - 1] == b'\r',
    })
}

/// The form every queued message takes before it is signed: no NUL byte
/// (refused: no transfer encoding carries it in 7bit or 8bit text), and CRLF
/// line ends only (bare CR and LF normalised). Returns the message unchanged
/// when it already is so.
pub fn wire_form(message: Vec<u8>) -> Result<Vec<u8>, SignError> {
    if memchr::memchr(0, &message).is_some() {
        return Err(SignError::NulByte);
    }
    if crlf_only(&message) {
        Ok(message)
    } else {
        Ok(crlf_line_ends(&message))
    }
}

/// Queues a signed message inside a write transaction; returns its queue id.
/// The caller (the send layer) commits it together with whatever records
/// the message as sent. `send` is the send its outcomes count for, `kind`
/// the consent rule delivery checks.
pub fn queue_signed(
    t: &mut crate::store::WriteTables<'_>,
    sender: &Sender,
    m: &Signed,
    source: &str,
    send: Option<SendRef>,
    kind: Option<MailKind>,
    now: i64,
) -> Result<u64, StoreError> {
    let id = t.next_id(Sequence::Message)?;
    let mut q = QueuedMessage {
        id,
        sender: sender.id.clone(),
        return_path: sender.return_path.clone(),
        message_id: m.message_id.clone(),
        created: now,
        size: m.body.len() as u64,
        source: source.to_string(),
        recipients: vec![Recipient::queued(m.address.clone(), Some(m.contact))],
        due: None,
        finished: None,
        purged: None,
        send,
        kind,
    };
    t.put_message(&mut q, Some(&m.body))?;
    Ok(id)
}

fn check_recipients(list: &[NewRecipient]) -> Result<Vec<Recipient>, EnqueueError> {
    if list.is_empty() {
        return Err(EnqueueError::Invalid(
            "a message needs at least one recipient".into(),
        ));
    }
    if list.len() > MAX_RECIPIENTS {
        return Err(EnqueueError::Invalid(format!(
            "{} recipients; at most {MAX_RECIPIENTS} per message",
            list.len()
        )));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let e = crate::contacts::normalize_email(&r.address)
            .map_err(|e| EnqueueError::Invalid(format!("recipient {i} (`{}`): {e}", r.address)))?;
        if !seen.insert(e.key.clone()) {
            continue;
        }
        out.push(Recipient::queued(e.display, r.contact));
    }
    Ok(out)
}

fn check_message_id(id: &str) -> Result<String, EnqueueError> {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>');
    let ok = id.contains('@')
        && id.len() <= 250
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"' | b'\\' | b','));
    if ok {
        Ok(id.to_string())
    } else {
        Err(EnqueueError::Invalid(format!(
            "`{id}` is not a Message-ID (local@domain, printable ASCII, no brackets inside)"
        )))
    }
}

/// A new unique Message-ID in the sender's domain.
pub fn new_message_id(domain: &str, now: i64) -> String {
    let r: u64 = rand::random();
    format!("{now:x}.{r:016x}@{domain}")
}

/// Refuses line breaks and other control characters (all below U+0020 but
/// TAB, and DEL) in the value of header `name`: written as given, they
/// would reach the wire raw.
fn check_header_text(name: &str, value: &str) -> Result<(), String> {
    if value.contains(['\r', '\n']) {
        return Err(format!("header {name} must not contain line breaks"));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(format!(
            "header {name} must not contain control characters (U+{:04X})",
            c as u32
        ));
    }
    Ok(())
}

/// Headers `headers` may not set: those the fields set (From, To, Subject,
/// Reply-To), those Herald writes itself (Date, Message-ID, MIME and
/// transfer encoding, DKIM-Signature), and those that belong to the
/// envelope, the receiving servers or another identity (Bcc would leak the
/// blind copies, Sender and Return-Path misstate who sends, Received and
/// authentication results are the receivers').
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "dkim-signature",
    "reply-to",
    "bcc",
    "sender",
    "return-path",
    "received",
    "authentication-results",
    "arc-seal",
    "arc-message-signature",
    "arc-authentication-results",
    "delivered-to",
];

fn header_ok(name: &str, value: &str) -> Result<(), String> {
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if !name_ok {
        return Err(format!("`{name}` is not a header name"));
    }
    check_header_text(name, value)?;
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("content-") {
        return Err(format!(
            "header {name} is Herald's to set (or its own field's), not headers'"
        ));
    }
    Ok(())
}

/// Checks the extra headers together: each once (names compare without
/// case), and the unsubscribe pair as RFC 2369 and RFC 8058 define it.
fn check_headers(headers: &[(String, String)]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (name, value) in headers {
        header_ok(name, value)?;
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(format!("header {name} is given twice"));
        }
    }
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.trim())
    };
    let lu = get("list-unsubscribe");
    if let Some(v) = lu {
        let uris: Vec<&str> = v.split(',').map(str::trim).collect();
        let ok = uris.iter().all(|u| {
            u.strip_prefix('<')
                .and_then(|u| u.strip_suffix('>'))
                .is_some_and(|u| {
                    (u.starts_with("https://")
                        || u.starts_with("http://")
                        || u.starts_with("mailto:"))
                        && !u.contains(['<', '>', ' '])
                })
        });
        if !ok {
            return Err(format!(
                "header List-Unsubscribe: `{v}` is not a list of <https://…> or <mailto:…> URIs"
            ));
        }
    }
    if let Some(v) = get("list-unsubscribe-post") {
        if v != "List-Unsubscribe=One-Click" {
            return Err(format!(
                "header List-Unsubscribe-Post: must be `List-Unsubscribe=One-Click`, not `{v}`"
            ));
        }
        if !lu.is_some_and(|l| l.contains("<https://")) {
            return Err(
                "header List-Unsubscribe-Post needs a List-Unsubscribe with an https URI (RFC 8058)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Refuses a NUL byte in a body part.
fn check_body(part: &str, body: &str) -> Result<(), String> {
    if body.contains('\0') {
        return Err(format!("{part} must not contain NUL characters"));
    }
    Ok(())
}

/// A body with CRLF line ends only (bare CR and bare LF normalised).
fn crlf_body(body: String) -> String {
    if crlf_only(body.as_bytes()) {
        return body;
    }
    // Only ASCII CR and LF bytes are replaced or added: still UTF-8.
    String::from_utf8(crlf_line_ends(body.as_bytes())).unwrap_or(body)
}

pub fn mailbox_parts(v: &str) -> (Option<String>, String) {
    let v = v.trim();
    match v.rfind('<') {
        Some(i) if v.ends_with('>') => {
            let name = v[..i].trim().trim_matches('"').trim();
            let addr = v[i + 1..v.len() - 1].to_string();
            ((!name.is_empty()).then(|| name.to_string()), addr)
        }
        _ => (None, v.to_string()),
    }
}

fn check_from_domain(sender: &Sender, from: &str) -> Result<(), String> {
    let addr = parse_mailbox(from).map_err(|e| format!("From: {e}"))?;
    if domain_of(&addr) != sender.domain {
        return Err(format!(
            "From `{addr}` is not in the sender `{}`'s domain {} (DKIM d= would not align)",
            sender.id, sender.domain
        ));
    }
    Ok(())
}

/// Builds the message bytes (CRLF line ends) and returns them with the
/// Message-ID they carry.
fn build(
    sender: &Sender,
    rcpts: &[String],
    content: Content,
    message_id: String,
    now: i64,
) -> Result<(Vec<u8>, String), String> {
    match content {
        Content::Parts(p) => {
            let from = p.from.clone().unwrap_or_else(|| sender.from.clone());
            check_header_text("From", &from)?;
            check_from_domain(sender, &from)?;
            if p.subject.contains(['\r', '\n']) {
                return Err("subject must not contain line breaks".into());
            }
            check_header_text("Subject", &p.subject)?;
            if p.text.is_none() && p.html.is_none() {
                return Err("give text, html or both".into());
            }
            check_headers(&p.headers)?;
            let (fname, faddr) = mailbox_parts(&from);
            let mut b = MessageBuilder::new()
                .from(Address::new_address(fname, faddr))
                .subject(p.subject)
                .message_id(message_id.clone())
                .date(mail_builder::headers::date::Date::new(now / 1000));
            b = match &p.to {
                Some(to) => {
                    if to.contains(['\r', '\n']) {
                        return Err("to must not contain line breaks".into());
                    }
                    check_header_text("To", to)?;
                    b.header("To", Raw::new(to.clone()))
                }
                None => b.to(Address::new_list(
                    rcpts
                        .iter()
                        .map(|r| Address::new_address(None::<String>, r.clone()))
                        .collect(),
                )),
            };
            if let Some(rt) = &p.reply_to {
                check_header_text("Reply-To", rt)?;
                parse_mailbox(rt).map_err(|e| format!("reply_to: {e}"))?;
                let (n, a) = mailbox_parts(rt);
                b = b.reply_to(Address::new_address(n, a));
            }
            for (name, value) in &p.headers {
                b = b.header(name.clone(), Raw::new(value.clone()));
            }
            if let Some(t) = p.text {
                check_body("text", &t)?;
                b = b.text_body(crlf_body(t));
            }
            if let Some(h) = p.html {
                check_body("html", &h)?;
                b = b.html_body(crlf_body(h));
            }
            let bytes = b
                .write_to_vec()
                .map_err(|e| format!("cannot build the message: {e}"))?;
            Ok((bytes, message_id))
        }
        Content::Raw(raw) => prepare_raw(sender, raw, message_id, now),
    }
}

/// Normalises line ends to CRLF and adds Message-ID and Date when missing.
fn prepare_raw(
    sender: &Sender,
    raw: Vec<u8>,
    message_id: String,
    now: i64,
) -> Result<(Vec<u8>, String), String> {
    // Bare LF and bare CR both become CRLF (RFC 5322 §2.3): a lone CR would
    // otherwise be dot-stuffed differently in transit and break the DKIM
    // body hash. NUL has no place in a message at all.
    if memchr::memchr(0, &raw).is_some() {
        return Err("the raw message contains a NUL byte".into());
    }
    let crlf = crlf_line_ends(&raw);
    let split = crlf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the raw message has no empty line between its header and body")?;
    let head = std::str::from_utf8(&crlf[..split + 2])
        .map_err(|_| "the raw message's header is not UTF-8/ASCII")?;
    let mut from = None;
    let mut existing_id = None;
    let mut has_date = false;
    let mut current: Option<(String, String)> = None;
    let mut headers = Vec::new();
    for (n, line) in head.split("\r\n").enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(format!(
                "header line {} contains a control character (U+{:04X}): `{}`",
                n + 1,
                c as u32,
                line.escape_debug()
            ));
        }
        if line.starts_with([' ', '\t']) {
            match current.as_mut() {
                Some((_, v)) => v.push_str(line),
                None => return Err("the raw message starts with a continuation line".into()),
            }
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {} has no colon: `{line}`", n + 1))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("header line {} has a bad name: `{name}`", n + 1));
        }
        if let Some(h) = current.take() {
            headers.push(h);
        }
        current = Some((name.to_string(), value.trim().to_string()));
    }
    headers.extend(current);
    for (name, value) in &headers {
        match name.to_ascii_lowercase().as_str() {
            "from" if from.is_some() => return Err("the raw message has two From headers".into()),
            "from" => from = Some(value.clone()),
            "message-id" if existing_id.is_some() => {
                return Err("the raw message has two Message-ID headers".into());
            }
            "message-id" => {
                let id = value.trim_matches(['<', '>', ' ']);
                if id.is_empty() {
                    return Err("the raw message's Message-ID header is empty".into());
                }
                existing_id = Some(check_message_id(id).map_err(|e| e.to_string())?);
            }
            "date" if has_date => return Err("the raw message has two Date headers".into()),
            "date" => has_date = true,
            _ => {}
        }
    }
    let from = from.ok_or("the raw message has no From header")?;
    check_from_domain(sender, &from)?;
    let mut out = Vec::with_capacity(crlf.len() + 128);
    let message_id = match existing_id {
        Some(id) => id,
        None => {
            out.extend_from_slice(format!("Message-ID: <{message_id}>\r\n").as_bytes());
            message_id
        }
    };
    if !has_date {
        let date = chrono::DateTime::from_timestamp_millis(now)
            .unwrap_or_default()
            .to_rfc2822();
        out.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    out.extend_from_slice(&crlf);
    Ok((out, message_id))
}

#[cfg(test)]
mod tests {
    use super::{Content, Parts, crlf_line_ends};

    #[test]
    fn content_size_counts_raw_bytes_and_every_part() {
        assert_eq!(Content::Raw(vec![b'x'; 70_000]).approx_len(), 70_000);
        let parts = Parts {
            from: Some("a".into()),
            to: Some("bb".into()),
            reply_to: None,
            subject: "ccc".into(),
            text: Some("d".repeat(40_000)),
            html: Some("e".repeat(30_000)),
            headers: vec![("X-F".into(), "gg".into())],
        };
        assert_eq!(Content::Parts(parts).approx_len(), 1 + 2 + 3 + 70_000 + 5);
    }

    /// The byte-by-byte definition: CRLF stays, a bare CR or LF becomes CRLF.
    fn reference(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                }
                b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
                _ => out.push(b),
            }
            i += 1;
        }
        out
    }

    #[test]
    fn line_ends_become_crlf_as_byte_by_byte_for_every_short_input() {
        // Every string of up to 8 bytes over {a, CR, LF}.
        let alphabet = [b'a', b'\r', b'\n'];
        for len in 0..=8u32 {
            for n in 0..3usize.pow(len) {
                let mut k = n;
                let input: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = alphabet[k % 3];
                        k /= 3;
                        b
                    })
                    .collect();
                assert_eq!(crlf_line_ends(&input), reference(&input), "{input:?}");
            }
        }
        let long = b"line one\nline two\r\nthree\rfour\n\n".repeat(100);
        assert_eq!(crlf_line_ends(&long), reference(&long));
    }
}
