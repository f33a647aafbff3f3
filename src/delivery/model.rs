//! What the queue stores: messages, their recipients and delivery outcomes.
//! Timestamps are milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

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
}

impl Recipient {
    /// A recipient not attempted yet.
    pub fn queued(address: String, contact: Option<u64>) -> Recipient {
        Recipient {
            domain: crate::config::delivery::domain_of(&address),
            address,
            contact,
            state: RcptState::Queued,
            attempts: 0,
            next_attempt: None,
            reply: None,
            bounce: None,
            host: None,
            updated: None,
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
    /// The campaign message this is, so outcomes count for the campaign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<crate::campaign::model::CampaignRef>,
}

impl QueuedMessage {
    /// The earliest time a pending recipient is due, if any is pending.
    pub fn next_due(&self) -> Option<i64> {
        self.recipients
            .iter()
            .filter(|r| r.state.is_pending())
            .map(|r| r.next_attempt.unwrap_or(self.created))
            .min()
    }
}
