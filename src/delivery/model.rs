//! What the queue stores: messages, their recipients and delivery outcomes.
//! Timestamps are milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

use crate::send::model::{SendKind, SendRef};

/// The state of one recipient of a queued message. "In flight" is not stored:
/// it exists only in the running scheduler, so a crash returns the recipient
/// to its stored state (queued or deferred) and it is attempted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RcptState {
    /// Not attempted yet.
    Queued,
    /// A temporary failure; `next_attempt` says when it is tried again.
    Deferred,
    /// The receiving server took it (250 after DATA).
    Delivered,
    /// Given up: a permanent failure, expired, or purged.
    Failed,
}

impl RcptState {
    /// The name shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RcptState::Queued => "queued",
            RcptState::Deferred => "deferred",
            RcptState::Delivered => "delivered",
            RcptState::Failed => "failed",
        }
    }

    /// Still to be delivered.
    pub fn is_pending(self) -> bool {
        matches!(self, RcptState::Queued | RcptState::Deferred)
    }
}

/// Why a delivery failed for good (RFC 3463 status classes, simplified).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceClass {
    /// The address does not exist (unknown user or domain, null MX): the
    /// contact is marked `invalid`.
    Hard,
    /// A condition of the mailbox or of the message (full, too large,
    /// temporary failures until the message expired).
    Soft,
    /// Refused by policy: spam filtering, blocking, authentication (SPF,
    /// DKIM, DMARC). Says something about the sender, not the address.
    Policy,
}

impl BounceClass {
    /// The name shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceClass::Hard => "hard",
            BounceClass::Soft => "soft",
            BounceClass::Policy => "policy",
        }
    }
}

/// Why a recipient was taken out of the queue without an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotSent {
    /// The contact was erased (GDPR) while the message waited.
    Erased,
    /// The contact's consent no longer allows this kind of mail (see
    /// [`MailKind::allows`]).
    NoConsent,
    /// The address is on the suppression list (a bounce, a complaint, an
    /// admin's entry).
    Suppressed,
}

impl NotSent {
    /// The name shown by the API and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NotSent::Erased => "erased",
            NotSent::NoConsent => "no_consent",
            NotSent::Suppressed => "suppressed",
        }
    }

    /// The reply text kept in the queue record.
    pub fn reply(self) -> &'static str {
        match self {
            NotSent::Erased => "not sent: the contact was erased",
            NotSent::NoConsent => "not sent: the contact's consent no longer allows it",
            NotSent::Suppressed => "not sent: the address is on the suppression list",
        }
    }
}

/// What a queued message is, for the consent check delivery makes when it
/// picks the message up (the contact may have withdrawn since).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailKind {
    /// Newsletters, automations, marketing templates: `granted` only.
    Marketing,
    /// A transactional template (order follow-up…): never to a contact
    /// that withdrew or whose address is `invalid`.
    Transactional,
    /// The double opt-in mail answering the person's own signup: sent
    /// whatever the stored state (a withdrawn contact re-subscribing gets
    /// it; its link is the only way back to `granted`).
    Confirmation,
}

impl MailKind {
    /// Whether a message of this kind may (still) go to a contact in `state`.
    pub fn allows(self, state: crate::contacts::model::ConsentState) -> bool {
        use crate::contacts::model::ConsentState::*;
        match self {
            MailKind::Marketing => state == Granted,
            MailKind::Transactional => !matches!(state, Withdrawn | Invalid),
            MailKind::Confirmation => true,
        }
    }

    /// The name shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::Marketing => "marketing",
            MailKind::Transactional => "transactional",
            MailKind::Confirmation => "confirmation",
        }
    }
}

/// One envelope recipient.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    /// The address, as given.
    pub address: String,
    /// Its domain, lower case: the delivery destination.
    pub domain: String,
    /// The contact it belongs to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<u64>,
    /// Current state.
    pub state: RcptState,
    /// Attempts made.
    #[serde(default)]
    pub attempts: u32,
    /// When it is due (queued: now; deferred: the retry time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<i64>,
    /// The last reply from the remote server, or the local error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// For failed recipients: the bounce class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce: Option<BounceClass>,
    /// The host that gave the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When the state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<i64>,
    /// For a recipient failed without an attempt: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_sent: Option<NotSent>,
    /// Reports that came back about this recipient after the attempt (a
    /// DSN, a complaint, an auto-reply, a delay notice), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<ReportNote>,
}

/// A report about a recipient, as its queue record shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportNote {
    /// The inbound report's id (`GET /api/v1/inbound/{id}`).
    pub id: u64,
    /// What it said.
    pub verdict: crate::inbound::parse::Verdict,
    /// When it came (ms).
    pub at: i64,
}

impl Recipient {
    /// A recipient not attempted yet.
    pub fn queued(address: String, contact: Option<u64>) -> Recipient {
        Recipient {
            domain: crate::config::domain_of(&address),
            address,
            contact,
            state: RcptState::Queued,
            attempts: 0,
            next_attempt: None,
            reply: None,
            bounce: None,
            host: None,
            updated: None,
            not_sent: None,
            reports: Vec::new(),
        }
    }
}

/// A message in the queue (or, once every recipient is done, in the log of
/// finished messages). The body is stored separately.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Queue id.
    pub id: u64,
    /// Sender identity id.
    pub sender: String,
    /// MAIL FROM.
    pub return_path: String,
    /// The Message-ID header's value (without angle brackets); the same on
    /// every attempt.
    pub message_id: String,
    /// When it was accepted.
    pub created: i64,
    /// Size of the stored (signed) message in bytes.
    pub size: u64,
    /// Who queued it: `api`, `campaign:ID`, `automation:NAME`…
    pub source: String,
    /// Recipients and their states.
    pub recipients: Vec<Recipient>,
    /// The key this message has in the due index, if any recipient is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<i64>,
    /// When every recipient was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<i64>,
    /// Why it was purged, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<String>,
    /// The send this message belongs to (campaign, automation,
    /// transactional tag, test), so its outcomes count for the send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<SendRef>,
    /// What kind of mail it is, for the consent check at delivery; `None`
    /// for a message the API was given whole (no contact to check), and in
    /// records written before the field existed (see [`QueuedMessage::rule`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MailKind>,
}

impl QueuedMessage {
    /// For tests: an API message `id` to `recipients`, created at 0, with
    /// a four-byte body size.
    #[cfg(test)]
    pub fn sample(id: u64, recipients: Vec<Recipient>, send: Option<SendRef>) -> QueuedMessage {
        QueuedMessage {
            id,
            sender: "s".into(),
            return_path: "r@example.org".into(),
            message_id: format!("{id}@example.org"),
            created: 0,
            size: 4,
            source: "api".into(),
            recipients,
            due: None,
            finished: None,
            purged: None,
            send,
            kind: None,
        }
    }

    /// The consent rule delivery applies: the stored kind, or for records
    /// written before it was stored, marketing for a campaign message and
    /// transactional for a template message.
    pub fn rule(&self) -> Option<MailKind> {
        self.kind.or_else(|| {
            if self.send.is_some_and(|s| s.kind == SendKind::Campaign) {
                Some(MailKind::Marketing)
            } else if self.source.starts_with("template:") {
                Some(MailKind::Transactional)
            } else {
                None
            }
        })
    }

    /// Fails recipient `idx` (pending) without an attempt, for `why`.
    /// Returns its state before, or `None` if it was not pending.
    pub fn not_sent(&mut self, idx: usize, why: NotSent, now: i64) -> Option<RcptState> {
        let r = self.recipients.get_mut(idx)?;
        if !r.state.is_pending() {
            return None;
        }
        let before = r.state;
        r.state = RcptState::Failed;
        r.next_attempt = None;
        r.updated = Some(now);
        r.reply = Some(why.reply().to_string());
        r.not_sent = Some(why);
        Some(before)
    }

    /// The envelope sender (MAIL FROM) for recipient `idx`: the VERP
    /// address `b-<token>@<bounce_domain>` when `sender` has a bounce
    /// domain (the token names this message, the recipient and the day it
    /// was queued), else the stored return path.
    pub fn envelope_from(
        &self,
        idx: usize,
        sender: &crate::config::Sender,
        keys: &crate::tokens::Keys,
    ) -> String {
        match &sender.bounce_domain {
            Some(domain) => {
                let r = crate::tokens::BounceRef {
                    queue_id: self.id,
                    rcpt: u32::try_from(idx).unwrap_or(u32::MAX),
                    day: u32::try_from(self.created.max(0) / 86_400_000).unwrap_or(u32::MAX),
                };
                format!("b-{}@{domain}", keys.sign_bounce(r))
            }
            None => self.return_path.clone(),
        }
    }

    /// The earliest time a pending recipient is due, if any is pending.
    pub fn next_due(&self) -> Option<i64> {
        self.recipients
            .iter()
            .filter(|r| r.state.is_pending())
            .map(|r| r.next_attempt.unwrap_or(self.created))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contacts::model::ConsentState::*;

    fn record(extra: &str) -> Result<QueuedMessage, serde_json::Error> {
        serde_json::from_str(&format!(
            r#"{{"id": 1, "sender": "s", "return_path": "r@x.example", "message_id": "m@x.example",
                "created": 0, "size": 1,
                "recipients": [{{"address": "a@x.example", "domain": "x.example", "contact": 7,
                                 "state": "queued"}}]{extra}}}"#
        ))
    }

    /// Records written before `kind` (and `not_sent`) existed still load,
    /// and get the rule their source implies.
    #[test]
    fn old_queue_records_keep_working() -> Result<(), serde_json::Error> {
        let m = record(r#", "source": "template:back_in_stock""#)?;
        assert_eq!(m.kind, None);
        assert_eq!(m.recipients[0].not_sent, None);
        assert_eq!(m.rule(), Some(MailKind::Transactional));
        let m = record(
            r#", "source": "campaign:3", "send": {"kind": "campaign", "id": 3, "slot": 0}"#,
        )?;
        assert_eq!(m.rule(), Some(MailKind::Marketing));
        let m = record(r#", "source": "api""#)?;
        assert_eq!(m.rule(), None);
        let m = record(r#", "source": "template:x", "kind": "marketing""#)?;
        assert_eq!(m.rule(), Some(MailKind::Marketing));
        Ok(())
    }

    #[test]
    fn each_kind_of_mail_reaches_only_the_states_it_may() {
        let all = [Unknown, Pending, Granted, Withdrawn, Invalid];
        let reached = |k: MailKind| all.into_iter().filter(|s| k.allows(*s)).collect::<Vec<_>>();
        assert_eq!(reached(MailKind::Marketing), vec![Granted]);
        assert_eq!(
            reached(MailKind::Transactional),
            vec![Unknown, Pending, Granted]
        );
        assert_eq!(reached(MailKind::Confirmation), all.to_vec());
    }
}
