//! What the SMS queue keeps: one record per text message, its state and
//! what the gateway said.

use serde::{Deserialize, Serialize};

use super::encoding::Encoding;
use crate::send::SendRef;

/// Where a text message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsState {
    /// Waiting for its due time (first attempt, a retry, or the end of
    /// quiet hours).
    Queued,
    /// The gateway took it; its delivery report has not come.
    Sent,
    /// The gateway reports it delivered to the phone (final).
    Delivered,
    /// It failed: refused by the gateway, undeliverable, out of attempts,
    /// or not sent because consent or the number went away (final).
    Failed,
}

impl SmsState {
    /// Whether nothing changes it any more.
    pub fn is_final(self) -> bool {
        matches!(self, SmsState::Delivered | SmsState::Failed)
    }

    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SmsState::Queued => "queued",
            SmsState::Sent => "sent",
            SmsState::Delivered => "delivered",
            SmsState::Failed => "failed",
        }
    }
}

/// One text message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmsRecord {
    /// SMS id (also the `idx` SMSAPI checks for duplicates).
    pub id: u64,
    /// The send it belongs to (counters, ledger, click tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<SendRef>,
    /// The contact.
    pub contact: u64,
    /// The number, E.164.
    pub to: String,
    /// The text as sent.
    pub text: String,
    /// GSM-7 or UCS-2.
    pub encoding: Encoding,
    /// Parts billed.
    pub parts: u32,
    /// The gateway's id.
    pub gateway: String,
    /// Marketing (SMS consent `granted` needed, quiet hours apply) or
    /// transactional.
    pub marketing: bool,
    /// The contact's site (quiet hours are local to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Where it is.
    pub state: SmsState,
    /// Requests made to the gateway.
    pub attempts: u32,
    /// When it is due (while queued), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<i64>,
    /// The gateway's message id, once it took the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    /// The gateway's last status word (`QUEUE`, `sent`, `DELIVERED`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The last error or refusal, as the gateway gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Queued at, ms.
    pub created: i64,
    /// Last change, ms.
    pub updated: i64,
    /// When the gateway took it, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<i64>,
}

impl SmsRecord {
    /// The record as the API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |t: Option<i64>| {
            t.and_then(chrono::DateTime::from_timestamp_millis)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        serde_json::json!({
            "id": self.id,
            "send": self.send.map(|s| serde_json::json!({
                "kind": s.kind.name(), "id": s.id, "slot": s.variant,
            })),
            "contact": self.contact,
            "to": self.to,
            "text": self.text,
            "encoding": self.encoding.label(),
            "parts": self.parts,
            "gateway": self.gateway,
            "marketing": self.marketing,
            "state": self.state.as_str(),
            "attempts": self.attempts,
            "due": ms(self.due),
            "gateway_id": self.gateway_id,
            "status": self.status,
            "error": self.error,
            "created": ms(Some(self.created)),
            "updated": ms(Some(self.updated)),
            "sent_at": ms(self.sent_at),
        })
    }
}
