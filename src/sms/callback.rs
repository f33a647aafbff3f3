//! What gateways send back, as two operations: delivery reports
//! ([`status`]) and text messages to the shop's number ([`incoming`]: STOP
//! and START replies). Each checks the gateway's key or signature, then
//! commits its effect in one write before the gateway gets its answer.

use super::gateway::{self, Callback, CallbackError, Keyword};
use super::queue::{self, Applied};
use crate::config::Config;
use crate::store::{Store, StoreError};

/// Why a callback was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CallbackFailure {
    /// No such gateway (404).
    #[error("no [[sms_gateway]] `{0}` is configured")]
    UnknownGateway(String),
    /// Bad key or signature (403), or not this gateway's shape (400).
    #[error(transparent)]
    Refused(#[from] CallbackError),
    /// The store failed (503: the gateway tries again).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a callback did, for the log and the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The answer's content type.
    pub content_type: &'static str,
    /// The answer's body.
    pub body: &'static str,
    /// Reports applied (status) or contacts changed (incoming).
    pub changed: usize,
    /// Reports about messages Herald does not know (logged).
    pub unknown: usize,
}

/// Gateway `id`, once the callback's key or signature for `purpose`
/// verifies.
fn checked<'a>(
    config: &'a Config,
    id: &str,
    purpose: gateway::Purpose,
    c: &Callback<'_>,
) -> Result<&'a crate::config::sms::Gateway, CallbackFailure> {
    let g = config
        .sms
        .gateway(id)
        .ok_or_else(|| CallbackFailure::UnknownGateway(id.to_string()))?;
    gateway::verify(g, purpose, c)?;
    Ok(g)
}

/// Applies a gateway's delivery reports.
pub async fn status(
    store: &Store,
    config: &Config,
    gateway_id: &str,
    c: &Callback<'_>,
    now: i64,
) -> Result<Taken, CallbackFailure> {
    let g = checked(config, gateway_id, gateway::Purpose::Status, c)?;
    let reports = gateway::reports(g, c)?;
    let (gid, cost) = (g.id.clone(), g.cost_per_part);
    let applied = store
        .write(move |t| {
            let mut out = Vec::new();
            for r in &reports {
                out.push(queue::apply_report(t, &gid, r, cost, now)?);
            }
            Ok(out)
        })
        .await?;
    let (content_type, body) = gateway::acknowledgement(g);
    Ok(Taken {
        content_type,
        body,
        changed: applied.iter().filter(|a| **a == Applied::Changed).count(),
        unknown: applied.iter().filter(|a| **a == Applied::Unknown).count(),
    })
}

/// Takes a text message to the shop's number: a STOP word withdraws the
/// SMS consent of every contact with that number, START gives it back
/// (the person's own request from their own phone); anything else is
/// only logged.
pub async fn incoming(
    store: &Store,
    config: &Config,
    gateway_id: &str,
    c: &Callback<'_>,
    now: i64,
) -> Result<Taken, CallbackFailure> {
    let g = checked(config, gateway_id, gateway::Purpose::Inbound, c)?;
    let m = gateway::incoming(g, c)?;
    let (content_type, body) = gateway::acknowledgement(g);
    let mut taken = Taken {
        content_type,
        body,
        changed: 0,
        unknown: 0,
    };
    let Some(k) = gateway::keyword(&m.text, &config.sms) else {
        return Ok(taken);
    };
    // SMSAPI gives the number without `+`.
    let raw = if m.from.starts_with('+') {
        m.from.clone()
    } else {
        format!("+{}", m.from.trim())
    };
    let Ok(phone) = super::phone::normalize(&raw, None) else {
        taken.unknown = 1;
        return Ok(taken);
    };
    let word = m.text.trim().chars().take(40).collect::<String>();
    let note = format!(
        "{} reply `{word}` from {} through {}",
        match k {
            Keyword::Stop => "STOP",
            Keyword::Start => "START",
        },
        super::phone::masked(&phone),
        g.id
    );
    taken.changed = store
        .write(move |t| queue::apply_keyword(t, &phone, k, note, now))
        .await?;
    Ok(taken)
}
