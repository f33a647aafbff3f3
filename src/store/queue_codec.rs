//! How finished messages are laid out in `queue_done_v2` (schema 7):
//! postcard, with the strings every message of a send repeats (sender,
//! return path, source, the Message-ID's domain, the receiving host) as
//! numbers of the term dictionary (`terms.rs`), a recipient's domain left
//! out when it is its address's own, and times as distances from the
//! message's creation. The queue id is the key only.
//!
//! Schema 6 kept the whole [`QueuedMessage`] as JSON (`queue_done_v1`):
//! about 690 bytes a campaign message, the largest share of what a send
//! leaves in the store; this form takes about a quarter of that
//! (BENCHMARKS.md, issue 27). Messages still in the queue stay JSON: they
//! are few and rewritten at every attempt.
//!
//! The enums ([`RcptState`], [`BounceClass`], [`NotSent`], [`MailKind`],
//! the send's kind) are stored by their variants' positions: new variants
//! go at the end (a test pins the positions).

use serde::{Deserialize, Serialize};

use super::terms::Text;
use super::{StoreError, dec, enc};
use crate::delivery::model::{
    BounceClass, MailKind, NotSent, QueuedMessage, RcptState, Recipient, ReportNote,
};
use crate::send::model::SendRef;

#[derive(Serialize, Deserialize)]
struct StoredMessage {
    sender: Text,
    return_path: Text,
    /// The Message-ID before its last `@`.
    message_local: String,
    /// The Message-ID's domain (`None`: it has no `@`).
    message_domain: Option<Text>,
    created: i64,
    size: u64,
    source: Text,
    recipients: Vec<StoredRecipient>,
    due: Option<i64>,
    /// `finished - created`.
    finished_after: Option<i64>,
    purged: Option<String>,
    send: Option<SendRef>,
    kind: Option<MailKind>,
}

#[derive(Serialize, Deserialize)]
struct StoredRecipient {
    address: String,
    /// `None`: the address's own domain, lower case.
    domain: Option<String>,
    contact: Option<u64>,
    state: RcptState,
    attempts: u32,
    next_attempt: Option<i64>,
    reply: Option<String>,
    bounce: Option<BounceClass>,
    host: Option<Text>,
    /// `updated - created`.
    updated_after: Option<i64>,
    not_sent: Option<NotSent>,
    /// The reports, as JSON (empty: none; they are rare).
    reports: Vec<u8>,
}

/// A finished message's stored bytes; `intern` gives each repeating string
/// its record form.
pub(super) fn encode_message(
    m: &QueuedMessage,
    intern: &mut impl FnMut(&str) -> Result<Text, StoreError>,
) -> Result<Vec<u8>, StoreError> {
    let (message_local, message_domain) = match m.message_id.rsplit_once('@') {
        Some((l, d)) => (l.to_string(), Some(intern(d)?)),
        None => (m.message_id.clone(), None),
    };
    let mut recipients = Vec::with_capacity(m.recipients.len());
    for r in &m.recipients {
        recipients.push(StoredRecipient {
            address: r.address.clone(),
            domain: (r.domain != crate::config::domain_of(&r.address)).then(|| r.domain.clone()),
            contact: r.contact,
            state: r.state,
            attempts: r.attempts,
            next_attempt: r.next_attempt,
            reply: r.reply.clone(),
            bounce: r.bounce,
            host: r.host.as_deref().map(&mut *intern).transpose()?,
            updated_after: r.updated.map(|u| u.wrapping_sub(m.created)),
            not_sent: r.not_sent,
            reports: if r.reports.is_empty() {
                Vec::new()
            } else {
                super::to_json(&r.reports)
            },
        });
    }
    Ok(enc(&StoredMessage {
        sender: intern(&m.sender)?,
        return_path: intern(&m.return_path)?,
        message_local,
        message_domain,
        created: m.created,
        size: m.size,
        source: intern(&m.source)?,
        recipients,
        due: m.due,
        finished_after: m.finished.map(|f| f.wrapping_sub(m.created)),
        purged: m.purged.clone(),
        send: m.send,
        kind: m.kind,
    }))
}

/// Finished message `id` from its stored bytes; `name` resolves term
/// numbers.
pub(super) fn decode_message(
    id: u64,
    b: &[u8],
    name: &impl Fn(u32) -> Result<String, StoreError>,
) -> Result<QueuedMessage, StoreError> {
    let s: StoredMessage = dec("queue_done", b)?;
    let mut recipients = Vec::with_capacity(s.recipients.len());
    for r in s.recipients {
        let reports: Vec<ReportNote> = if r.reports.is_empty() {
            Vec::new()
        } else {
            super::from_json("queue_done", &r.reports)?
        };
        recipients.push(Recipient {
            domain: r
                .domain
                .unwrap_or_else(|| crate::config::domain_of(&r.address)),
            address: r.address,
            contact: r.contact,
            state: r.state,
            attempts: r.attempts,
            next_attempt: r.next_attempt,
            reply: r.reply,
            bounce: r.bounce,
            host: r.host.map(|t| t.resolve(name)).transpose()?,
            updated: r.updated_after.map(|u| s.created.wrapping_add(u)),
            not_sent: r.not_sent,
            reports,
        });
    }
    let message_id = match s.message_domain {
        Some(d) => format!("{}@{}", s.message_local, d.resolve(name)?),
        None => s.message_local,
    };
    Ok(QueuedMessage {
        id,
        sender: s.sender.resolve(name)?,
        return_path: s.return_path.resolve(name)?,
        message_id,
        created: s.created,
        size: s.size,
        source: s.source.resolve(name)?,
        recipients,
        due: s.due,
        finished: s.finished_after.map(|f| s.created.wrapping_add(f)),
        purged: s.purged,
        send: s.send,
        kind: s.kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::parse::Verdict;
    use crate::send::model::SendKind;
    use std::collections::HashMap;

    /// The dictionary of a test: numbers given in order.
    #[derive(Default)]
    struct Dict(HashMap<String, u32>, Vec<String>);

    impl Dict {
        fn intern(&mut self, s: &str) -> Result<Text, StoreError> {
            if let Some(n) = self.0.get(s) {
                return Ok(Text::Term(*n));
            }
            let n = self.1.len() as u32;
            self.0.insert(s.to_string(), n);
            self.1.push(s.to_string());
            Ok(Text::Term(n))
        }

        fn name(&self, n: u32) -> Result<String, StoreError> {
            self.1.get(n as usize).cloned().ok_or(StoreError::Corrupt {
                table: "terms",
                message: format!("no term {n}"),
            })
        }
    }

    fn message() -> QueuedMessage {
        let mut delivered = Recipient::queued("Ann.Smith@Example.org".into(), Some(1_234_567));
        delivered.state = RcptState::Delivered;
        delivered.attempts = 1;
        delivered.reply = Some("250 2.0.0 Ok: queued as 4XyZ12abc".into());
        delivered.host = Some("mx1.example.org".into());
        delivered.updated = Some(1_764_900_001_234);
        let mut failed = Recipient::queued("bob@other.example".into(), None);
        failed.domain = "relay.example".into();
        failed.state = RcptState::Failed;
        failed.bounce = Some(BounceClass::Soft);
        failed.not_sent = Some(NotSent::Suppressed);
        failed.next_attempt = Some(1_764_900_100_000);
        failed.reports = vec![ReportNote {
            id: 7,
            verdict: Verdict::Complaint,
            at: 1_764_900_200_000,
        }];
        QueuedMessage {
            id: 42,
            sender: "news".into(),
            return_path: "bounces@shop.example".into(),
            message_id: "c12.0.1234567@shop.example".into(),
            created: 1_764_900_000_000,
            size: 20_480,
            source: "campaign:12".into(),
            recipients: vec![delivered, failed],
            due: None,
            finished: Some(1_764_900_002_000),
            purged: Some("admin".into()),
            send: Some(SendRef {
                kind: SendKind::Campaign,
                id: 12,
                variant: 3,
            }),
            kind: Some(MailKind::Marketing),
        }
    }

    /// What goes in comes back, field by field, and a campaign message's
    /// record takes well under a third of its JSON.
    #[test]
    fn finished_messages_come_back_as_they_went_in() -> Result<(), StoreError> {
        let mut d = Dict::default();
        let m = message();
        let b = encode_message(&m, &mut |s| d.intern(s))?;
        let back = decode_message(42, &b, &|n| d.name(n))?;
        assert_eq!(super::super::to_json(&back), super::super::to_json(&m));
        let mut plain = message();
        plain.recipients.truncate(1);
        plain.purged = None;
        let b = encode_message(&plain, &mut |s| d.intern(s))?;
        let json = super::super::to_json(&plain);
        assert!(b.len() * 3 < json.len(), "{} vs {}", b.len(), json.len());
        let mut no_at = message();
        no_at.message_id = "local-only".into();
        let b = encode_message(&no_at, &mut |s| d.intern(s))?;
        assert_eq!(
            decode_message(42, &b, &|n| d.name(n))?.message_id,
            "local-only"
        );
        Ok(())
    }

    /// The enums are stored by position: these are part of the format.
    #[test]
    fn enum_positions_are_pinned() {
        let pos = |b: Vec<u8>| b.first().copied();
        assert_eq!(pos(enc(&RcptState::Queued)), Some(0));
        assert_eq!(pos(enc(&RcptState::Failed)), Some(3));
        assert_eq!(pos(enc(&BounceClass::Policy)), Some(2));
        assert_eq!(pos(enc(&NotSent::Suppressed)), Some(2));
        assert_eq!(pos(enc(&MailKind::Confirmation)), Some(2));
        assert_eq!(pos(enc(&SendKind::Campaign)), Some(0));
    }

    /// A record cut short is reported as damage, not a panic.
    #[test]
    fn damage_is_an_error() {
        let mut d = Dict::default();
        let b = encode_message(&message(), &mut |s| d.intern(s)).unwrap_or_default();
        let r = decode_message(42, &b[..b.len() / 2], &|n| d.name(n));
        assert!(matches!(r, Err(StoreError::Corrupt { .. })));
    }
}
