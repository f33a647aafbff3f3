//! Inbound mail: the SMTP listener that takes delivery status notifications
//! (RFC 3464), feedback-loop reports (ARF, RFC 5965) and the replies that
//! come back to a message's VERP return path; the parser that tells a hard
//! bounce from a soft one, a complaint, an auto-reply or a delay notice; and
//! the effects each has through the send layer and the consent log.
//!
//! A report's life: the listener ([`server`]) refuses at RCPT every address
//! but a VERP return path that verifies and has not expired
//! ([`Inbound::rcpt`]) and the configured feedback-loop addresses; once the
//! data is in, [`Inbound::receive`] parses it on a blocking thread
//! ([`parse::parse`]) and commits, in one write, the report
//! ([`InboundRecord`], with the bytes kept of it) and its effects
//! ([`apply::apply`]); only then does the listener answer 250. The same
//! operation serves `POST /api/v1/bounces` and `POST /api/v1/complaints`
//! with a raw report.

pub mod apply;
pub mod listen;
pub mod parse;
pub mod server;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::send::model::SendRef;
use crate::snapshot::Current;
use crate::store::{Store, StoreError};
use crate::tokens::BounceRef;
use parse::{Finding, Format, Verdict};

/// Reports parsed at once (see [`Inbound::receive`]).
static PARSING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The most bytes of a report kept in the store (the rest is dropped; what
/// a report means is in its first part).
pub const RAW_KEPT: usize = 256 * 1024;

/// How a report came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The inbound SMTP listener.
    Smtp,
    /// `POST /api/v1/bounces` or `POST /api/v1/complaints` with a raw report.
    Api,
}

/// How a report was matched to a message or a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchedBy {
    /// The VERP address it was sent to.
    Verp,
    /// A VERP return path in the returned copy of the message.
    ReturnPath,
    /// The Message-ID of the returned copy (a send's message).
    MessageId,
    /// Only the recipient address the report names.
    Address,
}

impl MatchedBy {
    /// Whether the match rests on Herald's signature (a VERP token).
    pub fn is_signed(self) -> bool {
        matches!(self, MatchedBy::Verp | MatchedBy::ReturnPath)
    }
}

/// One report taken: what it was found to say and what it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundRecord {
    /// Id (`GET /api/v1/inbound/{id}`).
    pub id: u64,
    /// When it was taken (ms).
    pub at: i64,
    /// Listener or API.
    pub via: Via,
    /// The client's address (listener only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Envelope sender (listener only; empty for the null sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_from: Option<String>,
    /// Envelope recipients (listener only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rcpts: Vec<String>,
    /// Size in bytes as received.
    pub size: u64,
    /// What kind of message it was.
    pub format: Format,
    /// The verdict applied (the finding about the matched recipient).
    pub verdict: Verdict,
    /// Everything the parser found, per recipient.
    pub findings: Vec<Finding>,
    /// The Message-ID of the message it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_message_id: Option<String>,
    /// ARF Feedback-Type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_type: Option<String>,
    /// Its Subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// How it was matched; `None`: to nothing Herald sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_by: Option<MatchedBy>,
    /// The queued message it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<u64>,
    /// The recipient it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Their contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<u64>,
    /// The send the message belonged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<SendRef>,
    /// What it did, in words (`contact 12 invalid`, `counted for
    /// campaign:3`, `duplicate: already applied`).
    #[serde(default)]
    pub effects: Vec<String>,
}

/// What the listener knows of a report besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The client's address.
    pub peer: Option<String>,
    /// MAIL FROM.
    pub mail_from: Option<String>,
    /// RCPT TO addresses.
    pub rcpts: Vec<String>,
    /// The VERP return paths among the recipients, verified at RCPT.
    pub verp: Vec<BounceRef>,
}

/// Why a report was not taken.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The store failed; nothing was committed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The parsing thread died.
    #[error("the report could not be parsed: {0}")]
    Parse(String),
}

/// Why an RCPT is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptRefusal {
    /// Neither a bounce domain nor a feedback-loop address.
    NotHere,
    /// A VERP address whose token does not verify.
    Forged,
    /// A VERP address older than `verp_max_age`.
    Expired,
}

impl RcptRefusal {
    /// The SMTP reply text.
    pub fn text(&self) -> &'static str {
        match self {
            RcptRefusal::NotHere => "no such user here: this host takes only bounces and reports",
            RcptRefusal::Forged => "no such bounce address",
            RcptRefusal::Expired => "this bounce address has expired",
        }
    }
}

/// What an RCPT address is to the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptKind {
    /// A VERP return path that verifies.
    Verp(BounceRef),
    /// A feedback-loop address.
    Fbl,
    /// The postmaster (bare, or at a bounce domain or the listener's
    /// hostname): kept as a report like any other.
    Postmaster,
}

/// The inbound side of the daemon: the config, the store and the clock.
#[derive(Clone)]
pub struct Inbound {
    /// The current configuration snapshot.
    pub config: Arc<Current>,
    /// The store.
    pub store: Store,
    /// The clock.
    pub clock: Clock,
}

impl Inbound {
    /// Decides an RCPT: a VERP address of a configured bounce domain whose
    /// token verifies and is younger than `verp_max_age`, or a
    /// feedback-loop address.
    pub fn rcpt(&self, address: &str) -> Result<RcptKind, RcptRefusal> {
        let config = self.config.get();
        let lower = address.trim().to_ascii_lowercase();
        // RFC 5321 §4.5.1: postmaster is always taken (kept as a report).
        if lower == "postmaster" {
            return Ok(RcptKind::Postmaster);
        }
        let Some((local, domain)) = lower.rsplit_once('@') else {
            return Err(RcptRefusal::NotHere);
        };
        let ours = |d: &str| {
            config
                .senders
                .iter()
                .any(|s| s.bounce_domain.as_deref() == Some(d))
                || config.inbound.hostname.as_deref() == Some(d)
        };
        if local == "postmaster" && ours(domain) {
            return Ok(RcptKind::Postmaster);
        }
        if config.inbound.fbl_addresses.contains(&lower) {
            return Ok(RcptKind::Fbl);
        }
        if !config
            .senders
            .iter()
            .any(|s| s.bounce_domain.as_deref() == Some(domain))
        {
            return Err(RcptRefusal::NotHere);
        }
        let r = verp_token(local)
            .and_then(|t| config.tracking.keys.verify_bounce(t))
            .ok_or(RcptRefusal::Forged)?;
        let age = self.clock.now().timestamp_millis() - r.day as i64 * 86_400_000;
        if age > config.inbound.verp_max_age_ms + 86_400_000 {
            return Err(RcptRefusal::Expired);
        }
        Ok(RcptKind::Verp(r))
    }

    /// Takes a report: parses it (on a blocking thread), then commits the
    /// record and its effects in one write. Returns the record.
    pub async fn receive(
        &self,
        via: Via,
        envelope: Envelope,
        raw: Vec<u8>,
    ) -> Result<InboundRecord, InboundError> {
        // At most two reports are parsed at once, whatever the number of
        // sessions: the rest of the daemon keeps its cores.
        let permit = PARSING
            .acquire()
            .await
            .map_err(|e| InboundError::Parse(e.to_string()))?;
        // Shared with the parsing thread: if it dies, the bytes are still
        // here to be kept.
        let raw = Arc::new(raw);
        let bytes = raw.clone();
        let parsed = tokio::task::spawn_blocking(move || parse::parse(&bytes)).await;
        drop(permit);
        // A parser that failed must not make the sender retry for days: the
        // report is kept as unknown.
        let report = parsed.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the report parser failed; kept as unknown");
            parse::Report {
                format: Format::Unknown,
                findings: vec![Finding {
                    recipient: None,
                    verdict: Verdict::Unknown,
                    status: None,
                    diagnostic: None,
                }],
                original_message_id: None,
                original_return_paths: Vec::new(),
                feedback_type: None,
                subject: None,
                from: None,
            }
        });
        let settings = apply::Settings::of(&self.config.get());
        let now = self.clock.now().timestamp_millis();
        let record = self
            .store
            .write(move |t| apply::apply(t, &settings, via, &envelope, &report, &raw, now))
            .await?;
        Ok(record)
    }
}

/// The token of a VERP local part `b-<token>`.
pub fn verp_token(local: &str) -> Option<&str> {
    local
        .strip_prefix("b-")
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RCPT decisions: a VERP address that verifies and is young enough,
    /// the feedback-loop address and the postmaster are taken; a forged,
    /// an expired or a stranger's address is refused, each for its reason.
    #[test]
    fn rcpts_are_taken_only_for_what_herald_sent_or_registered()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("herald.toml");
        std::fs::write(
            &file,
            "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://localhost\"\n[storage]\npath = \"data\"\n[admin]\ntoken = \"0123456789abcdef0123456789abcdef\"\n[tracking]\nsecret = \"0123456789abcdef0123456789abcdef\"\n[inbound]\nlisten = \"127.0.0.1:0\"\nfbl_addresses = [\"FBL@shop.example\"]\n[[sender]]\nid = \"s\"\nfrom = \"news@shop.example\"\nbounce_domain = \"bounces.shop.example\"\n",
        )?;
        let snap = crate::snapshot::Snapshot::load(&file).map_err(|e| e.to_string())?;
        let keys = snap.config.tracking.keys.clone();
        let inbound = Inbound {
            config: Arc::new(Current::new(snap)),
            store: Store::open(&dir.path().join("data"))?,
            clock: Clock::system(),
        };
        let today = (inbound.clock.now().timestamp_millis() / 86_400_000) as u32;
        let r = BounceRef {
            queue_id: 7,
            rcpt: 0,
            day: today,
        };
        let verp = format!("b-{}@Bounces.Shop.Example", keys.sign_bounce(r));
        assert_eq!(inbound.rcpt(&verp), Ok(RcptKind::Verp(r)));
        assert_eq!(inbound.rcpt("fbl@shop.example"), Ok(RcptKind::Fbl));
        assert_eq!(inbound.rcpt("postmaster"), Ok(RcptKind::Postmaster));
        assert_eq!(
            inbound.rcpt("postmaster@bounces.shop.example"),
            Ok(RcptKind::Postmaster)
        );
        assert_eq!(inbound.rcpt("info@shop.example"), Err(RcptRefusal::NotHere));
        assert_eq!(
            inbound.rcpt("b-00ff@bounces.shop.example"),
            Err(RcptRefusal::Forged)
        );
        let old = BounceRef {
            day: today - 40,
            ..r
        };
        let old = format!("b-{}@bounces.shop.example", keys.sign_bounce(old));
        assert_eq!(inbound.rcpt(&old), Err(RcptRefusal::Expired));
        // The same token 40 days on has expired too.
        inbound.clock.advance(chrono::Duration::days(40));
        assert_eq!(inbound.rcpt(&verp), Err(RcptRefusal::Expired));
        Ok(())
    }

    #[test]
    fn verp_local_parts_carry_hex_tokens() {
        assert_eq!(verp_token("b-00ff"), Some("00ff"));
        assert_eq!(verp_token("b-"), None);
        assert_eq!(verp_token("b-xyz"), None);
        assert_eq!(verp_token("bounce"), None);
    }
}
