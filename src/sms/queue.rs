//! The SMS queue's operations inside a write transaction: queue a message,
//! record what the gateway answered, apply a delivery report, take a
//! message out unsent, hold one for quiet hours, and the consent effects of
//! replies. Every function here runs in the store writer, so each change
//! and its counters commit together.

use super::gateway::{Keyword, NumberEffect, Outcome, Reply, Report};
use super::model::{SmsRecord, SmsState};
use crate::contacts::model::{ConsentSource, ConsentState};
use crate::contacts::{ConsentChange, ContactUpdate};
use crate::send::model::Counter;
use crate::store::{ReadTables as _, SmsTables as _, StoreError, WriteTables};

/// Retry waits after the 1st, 2nd… failed attempt, as multiples of
/// `[sms] retry_after` (30 s by default: 30 s, 1 min, 2 min, 5 min, 10 min,
/// 30 min, 1 h; the last repeats).
const BACKOFF: &[i64] = &[1, 2, 4, 10, 20, 60, 120];

/// The wait before attempt `n + 1` after `n` attempts.
pub fn backoff_ms(attempts: u32, base_ms: i64) -> i64 {
    let i = (attempts.max(1) as usize - 1).min(BACKOFF.len() - 1);
    BACKOFF[i] * base_ms
}

/// The least wait after a request that got no answer from a gateway
/// without duplicate checks: time for its delivery report to come.
const UNCLEAR_WAIT_MS: i64 = 5 * 60_000;

/// What [`record_reply`] needs from the config.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Attempts before a message fails.
    pub max_attempts: u32,
    /// The first retry's wait, ms.
    pub retry_after_ms: i64,
    /// One part's cost, ten-thousandths.
    pub cost_per_part: u64,
}

/// Queues `r` (its id is assigned here) and returns the id.
pub fn queue(t: &mut WriteTables<'_>, mut r: SmsRecord) -> Result<u64, StoreError> {
    r.id = t.next_id(crate::store::Sequence::Sms)?;
    r.state = SmsState::Queued;
    t.put_sms(&r, None)?;
    Ok(r.id)
}

fn count(
    t: &mut WriteTables<'_>,
    r: &SmsRecord,
    c: Counter,
    n: i64,
    at: i64,
) -> Result<(), StoreError> {
    match r.send {
        Some(s) if s.counted() => t.bump_send_at(s, c, n, at),
        _ => Ok(()),
    }
}

/// Counts a message the gateway took: handed over, its parts and cost.
fn count_handed(
    t: &mut WriteTables<'_>,
    r: &SmsRecord,
    cost_per_part: u64,
    now: i64,
) -> Result<(), StoreError> {
    count(t, r, Counter::Handed, 1, now)?;
    count(t, r, Counter::Dequeued, 1, now)?;
    count(t, r, Counter::SmsParts, i64::from(r.parts), now)?;
    count(
        t,
        r,
        Counter::SmsCost,
        (u64::from(r.parts) * cost_per_part) as i64,
        now,
    )
}

/// Fails a queued message (never handed over): counted failed and out of
/// the queue, plus `extra` (why it was not sent).
pub fn fail_queued(
    t: &mut WriteTables<'_>,
    mut r: SmsRecord,
    reason: String,
    extra: Option<Counter>,
    now: i64,
) -> Result<(), StoreError> {
    let before = r.clone();
    r.state = SmsState::Failed;
    r.error = Some(reason);
    r.updated = now;
    t.put_sms(&r, Some(&before))?;
    count(t, &r, Counter::Failed, 1, now)?;
    count(t, &r, Counter::Dequeued, 1, now)?;
    if let Some(c) = extra {
        count(t, &r, c, 1, now)?;
    }
    Ok(())
}

/// Fails every queued text message of a send (a cancelled campaign);
/// returns how many.
pub fn purge_send(
    t: &mut WriteTables<'_>,
    kind: crate::send::SendKind,
    id: u64,
    why: &str,
    now: i64,
) -> Result<usize, StoreError> {
    let ids = t.queued_sms_of(kind.code(), id)?;
    for sms in &ids {
        if let Some(r) = t.sms(*sms)?
            && r.state == SmsState::Queued
        {
            fail_queued(t, r, why.to_string(), None, now)?;
        }
    }
    Ok(ids.len())
}

/// Fails message `id` unsent if it is still queued and due at `due` (what
/// the engine read): a report or another write since wins.
pub fn fail_if_unchanged(
    t: &mut WriteTables<'_>,
    id: u64,
    due: Option<i64>,
    reason: String,
    extra: Counter,
    now: i64,
) -> Result<(), StoreError> {
    match t.sms(id)? {
        Some(r) if r.state == SmsState::Queued && r.due == due => {
            fail_queued(t, r, reason, Some(extra), now)
        }
        _ => Ok(()),
    }
}

/// Moves a queued message's due time to `until` (quiet hours): no attempt
/// is counted.
pub fn hold(t: &mut WriteTables<'_>, id: u64, until: i64, now: i64) -> Result<(), StoreError> {
    if let Some(mut r) = t.sms(id)?
        && r.state == SmsState::Queued
    {
        let before = r.clone();
        r.due = Some(until);
        r.updated = now;
        r.status = Some("held for quiet hours".into());
        t.put_sms(&r, Some(&before))?;
    }
    Ok(())
}

/// What the gateway answered to one attempt at message `id`.
pub fn record_reply(
    t: &mut WriteTables<'_>,
    id: u64,
    reply: &Reply,
    policy: Policy,
    now: i64,
) -> Result<(), StoreError> {
    let Policy {
        max_attempts,
        retry_after_ms,
        cost_per_part,
    } = policy;
    let Some(mut r) = t.sms(id)? else {
        return Ok(());
    };
    // A delivery report may have come first (the gateway is fast, or this
    // is a repeat after a crash): it already moved the message on.
    if r.state != SmsState::Queued {
        return Ok(());
    }
    let before = r.clone();
    r.attempts += 1;
    r.updated = now;
    match reply {
        Reply::Accepted { gateway_id, status } => {
            r.state = SmsState::Sent;
            r.due = None;
            r.gateway_id = gateway_id.clone().or(r.gateway_id);
            r.status = Some(status.clone());
            r.error = None;
            r.sent_at = Some(now);
            t.put_sms(&r, Some(&before))?;
            count_handed(t, &r, cost_per_part, now)
        }
        Reply::Retry(why) if r.attempts < max_attempts => {
            r.due = Some(now + backoff_ms(r.attempts, retry_after_ms));
            r.error = Some(why.clone());
            t.put_sms(&r, Some(&before))
        }
        Reply::Unclear(why) if r.attempts < max_attempts => {
            let wait = (backoff_ms(r.attempts, retry_after_ms) * 10).max(UNCLEAR_WAIT_MS);
            r.due = Some(now + wait);
            r.error = Some(format!(
                "{why} (the gateway may have taken it: waiting for its report)"
            ));
            t.put_sms(&r, Some(&before))
        }
        Reply::Retry(why) | Reply::Unclear(why) => {
            let reason = format!("gave up after {} attempts: {why}", r.attempts);
            t.put_sms(&r, Some(&before))?;
            fail_queued(t, r, reason, None, now)
        }
        Reply::Refused { reason, effect } => {
            let (contact, to) = (r.contact, r.to.clone());
            t.put_sms(&r, Some(&before))?;
            fail_queued(t, r, reason.clone(), None, now)?;
            if let Some(e) = effect {
                number_effect(t, contact, &to, *e, reason, now)?;
            }
            Ok(())
        }
    }
}

/// What a refusal says about a number, applied to the contact's SMS
/// consent (if the contact still has that number).
fn number_effect(
    t: &mut WriteTables<'_>,
    contact: u64,
    to: &str,
    effect: NumberEffect,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    let Some(c) = t.contact(contact)? else {
        return Ok(());
    };
    if c.phone.as_deref() != Some(to) {
        return Ok(());
    }
    let (state, source) = match effect {
        NumberEffect::Invalid => (ConsentState::Invalid, ConsentSource::Bounce),
        NumberEffect::OptedOut => (ConsentState::Withdrawn, ConsentSource::Reply),
    };
    let update = ContactUpdate {
        sms_consent: Some(ConsentChange {
            to: state,
            source,
            ip: None,
            user_agent: None,
            note: Some(format!("the SMS gateway: {reason}")),
        }),
        ..Default::default()
    };
    let when = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
    // A refused change (already withdrawn…) changes nothing.
    let _ = crate::contacts::apply_update_by_id(t, contact, update, when)?;
    Ok(())
}

/// What applying a delivery report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The message moved on.
    Changed,
    /// Nothing to change: a repeat, or older than what is known.
    Unchanged,
    /// No such message of this gateway.
    Unknown,
}

/// Applies one delivery report from gateway `gateway`: idempotent, and
/// never moves a message back (a late `sent` after `delivered` is
/// ignored).
pub fn apply_report(
    t: &mut WriteTables<'_>,
    gateway: &str,
    rep: &Report,
    cost_per_part: u64,
    now: i64,
) -> Result<Applied, StoreError> {
    let by_gid = match &rep.gateway_id {
        Some(g) => t.sms_by_gateway_id(gateway, g)?,
        None => None,
    };
    let Some(id) = by_gid.or(rep.sms) else {
        return Ok(Applied::Unknown);
    };
    let Some(mut r) = t.sms(id)? else {
        return Ok(Applied::Unknown);
    };
    let same_gid = match (&r.gateway_id, &rep.gateway_id) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    if r.gateway != gateway || !same_gid {
        return Ok(Applied::Unknown);
    }
    if r.state.is_final() {
        return Ok(Applied::Unchanged);
    }
    let before = r.clone();
    r.updated = now;
    r.status = Some(rep.status.clone());
    if r.gateway_id.is_none() {
        r.gateway_id = rep.gateway_id.clone();
    }
    // A report about a message still queued: the gateway took it but the
    // answer was never recorded (a crash, a timeout). It counts as handed
    // over now, and is not sent again.
    let was_queued = r.state == SmsState::Queued;
    if was_queued {
        r.due = None;
        r.sent_at = Some(now);
        r.state = SmsState::Sent;
    }
    match rep.outcome {
        Outcome::Progress => {}
        Outcome::Delivered => r.state = SmsState::Delivered,
        Outcome::Failed => {
            r.state = SmsState::Failed;
            r.error = rep.error.clone().or(Some(format!("status {}", rep.status)));
        }
    }
    if r == before {
        return Ok(Applied::Unchanged);
    }
    t.put_sms(&r, Some(&before))?;
    if was_queued {
        count_handed(t, &r, cost_per_part, now)?;
    }
    match rep.outcome {
        Outcome::Progress => {}
        Outcome::Delivered => count(t, &r, Counter::Delivered, 1, now)?,
        Outcome::Failed => count(t, &r, Counter::Failed, 1, now)?,
    }
    Ok(Applied::Changed)
}

/// Applies a STOP or START reply from `phone` (E.164) to every contact
/// with that number; returns how many changed.
pub fn apply_keyword(
    t: &mut WriteTables<'_>,
    phone: &str,
    keyword: Keyword,
    note: String,
    now: i64,
) -> Result<usize, StoreError> {
    let to = match keyword {
        Keyword::Stop => ConsentState::Withdrawn,
        Keyword::Start => ConsentState::Granted,
    };
    let when = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
    let mut changed = 0;
    for id in t.contacts_by_phone(phone)? {
        let update = ContactUpdate {
            sms_consent: Some(ConsentChange {
                to,
                source: ConsentSource::Reply,
                ip: None,
                user_agent: None,
                note: Some(note.clone()),
            }),
            ..Default::default()
        };
        if let Ok((o, _)) = crate::contacts::apply_update_by_id(t, id, update, when)?
            && o != crate::contacts::UpsertOutcome::Unchanged
        {
            changed += 1;
        }
    }
    Ok(changed)
}
