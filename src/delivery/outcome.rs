//! Recording outcomes: what an attempt (or an admin, or an erasure) does
//! to a queued message's recipients, and the counters of the send it
//! belongs to.
//!
//! - [`Outcome`] is what happened to one recipient in one attempt;
//!   [`Outcome::of_rcpt`] reads it from the SMTP result. Only a refused
//!   RCPT, or an explicit X.1.1/X.1.2/X.1.10 code, is a hard bounce: a 5xx
//!   to MAIL FROM or to the data is about the sender or the message.
//! - [`apply_outcome`] is the pure state change (delivered; deferred with
//!   the next attempt from the [`RetryPolicy`] ±10 %; failed with a bounce
//!   class; failed as a soft bounce once the next attempt would fall past
//!   the queue lifetime). [`record_outcomes`] applies it inside a write
//!   transaction, counts it per [`SendRef`] ([`outcome_counts`]), makes a
//!   hard-bounced contact `invalid`, and finishes a message with nothing
//!   left to do. [`finish_job`] is the connection task's side: it commits
//!   that write, retrying until it does, before the job leaves the active set.
//! - The consent check at delivery ([`unsendable`], [`drop_unsent`]),
//!   erasure ([`erase_recipient`]) and the admin actions over a
//!   [`Selection`] ([`retry_now`], [`purge`]) change recipients outside an
//!   attempt and count the same way.

use std::sync::Arc;
use std::time::Duration;

use super::bounce;
use super::engine::{Inner, now_ms};
use super::model::{BounceClass, MailKind, NotSent, QueuedMessage, RcptState, Recipient};
use super::scheduler::{Job, release_jobs};
use super::shaping::WarmUse;
use super::smtp::RcptResult;
use crate::config::Config;
use crate::config::delivery::DeliveryConfig;
use crate::contacts;
use crate::contacts::model::{ConsentSource, ConsentState, SuppressionSource};
use crate::send::model::{Counter, SendKind, SendRef};
use crate::store::ReadTables;
use crate::store::{StoreError, WriteTables};

/// The wait before a retry when the schedule is empty.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 250 after DATA.
    Delivered(String),
    /// A temporary failure.
    Temporary(String),
    /// A permanent failure, with its class.
    Permanent(String, BounceClass),
}

impl Outcome {
    /// The outcome of one recipient's result in a transaction (`None`: the
    /// server's replies did not cover it). A permanent failure is classed
    /// by the command it answered ([`bounce::classify_at`]).
    pub fn of_rcpt(result: Option<&RcptResult>) -> Outcome {
        match result {
            Some(RcptResult::Delivered(r)) => Outcome::Delivered(r.text.clone()),
            Some(RcptResult::Temporary(r)) => Outcome::Temporary(r.text.clone()),
            Some(RcptResult::Permanent(r, stage)) => Outcome::Permanent(
                r.text.clone(),
                // The text starts with the code: "550 5.1.1 …".
                bounce::classify_at(r.code, r.text.get(4..).unwrap_or(""), *stage),
            ),
            None => Outcome::Temporary("no reply for this recipient".into()),
        }
    }
}

/// Retry settings for one outcome write.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Waits; the last repeats.
    pub schedule: Vec<Duration>,
    /// Give up this long after queueing.
    pub max_age_ms: i64,
}

impl RetryPolicy {
    /// The policy `[delivery]` configures.
    pub fn of(d: &DeliveryConfig) -> RetryPolicy {
        RetryPolicy {
            schedule: d.retry_schedule.clone(),
            max_age_ms: i64::try_from(d.max_age.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// The scheduled wait before attempt `attempts + 1`: the schedule's
    /// entry for the attempt just made, the last entry once past the end.
    fn base_wait(&self, attempts: u32) -> Duration {
        self.schedule
            .get((attempts as usize).saturating_sub(1))
            .or(self.schedule.last())
            .copied()
            .unwrap_or(DEFAULT_WAIT)
    }

    /// The wait before attempt `attempts + 1`, with ±10 % jitter so that a
    /// burst of deferrals does not come back as one burst.
    fn wait_ms(&self, attempts: u32) -> i64 {
        let jitter: f64 = rand::random_range(0.9..1.1);
        // `as` saturates for floats: a huge configured wait stays huge.
        (self.base_wait(attempts).as_millis() as f64 * jitter) as i64
    }
}

/// What one attempt changed for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempted {
    /// Its state before (for the send's counters).
    pub before: RcptState,
    /// A hard bounce: the contact's address must become `invalid`.
    pub hard_bounce: bool,
}

/// Applies one attempt's outcome to a recipient of a message queued at
/// `created`: the pure part of [`record_outcomes`]. A recipient no longer
/// pending (delivered, failed, taken out meanwhile) is left as it is
/// (`None`).
pub fn apply_outcome(
    r: &mut Recipient,
    created: i64,
    outcome: &Outcome,
    host: Option<&str>,
    now: i64,
    policy: &RetryPolicy,
) -> Option<Attempted> {
    if !r.state.is_pending() {
        return None;
    }
    let before = r.state;
    r.attempts += 1;
    r.updated = Some(now);
    r.host = host.map(str::to_string);
    let mut hard_bounce = false;
    match outcome {
        Outcome::Delivered(reply) => {
            r.state = RcptState::Delivered;
            r.reply = Some(reply.clone());
            r.next_attempt = None;
            r.bounce = None;
        }
        Outcome::Permanent(reply, class) => {
            r.state = RcptState::Failed;
            r.reply = Some(reply.clone());
            r.next_attempt = None;
            r.bounce = Some(*class);
            hard_bounce = *class == BounceClass::Hard;
        }
        Outcome::Temporary(reply) => {
            let next = now.saturating_add(policy.wait_ms(r.attempts));
            if next > created.saturating_add(policy.max_age_ms) {
                r.state = RcptState::Failed;
                r.bounce = Some(BounceClass::Soft);
                r.next_attempt = None;
                r.reply = Some(format!(
                    "gave up after {} attempts over the queue lifetime; last: {reply}",
                    r.attempts
                ));
            } else {
                r.state = RcptState::Deferred;
                r.next_attempt = Some(next);
                r.reply = Some(reply.clone());
            }
        }
    }
    Some(Attempted {
        before,
        hard_bounce,
    })
}

/// Applies outcomes to a queued message in a write transaction: states,
/// retries, expiry, bounces (a hard bounce makes the contact `invalid`),
/// and moves a message with nothing left to do to the finished log.
pub fn record_outcomes(
    t: &mut WriteTables<'_>,
    id: u64,
    outcomes: &[(usize, Outcome)],
    host: Option<&str>,
    now: i64,
    policy: &RetryPolicy,
) -> Result<(), StoreError> {
    let Some(mut m) = t.queued_message(id)? else {
        return Ok(()); // purged meanwhile
    };
    let mut hard = Vec::new();
    for (idx, outcome) in outcomes {
        let Some(r) = m.recipients.get_mut(*idx) else {
            continue;
        };
        let Some(change) = apply_outcome(r, m.created, outcome, host, now, policy) else {
            continue;
        };
        if change.hard_bounce {
            let reply = r.reply.clone().unwrap_or_default();
            hard.push((r.address.clone(), r.contact, reply));
        }
        count_outcome(t, m.send, change.before, r.state, r.bounce, now)?;
    }
    for (address, contact, reply) in hard {
        mark_invalid(t, &address, contact, &reply, now)?;
    }
    if m.recipients.iter().any(|r| r.state.is_pending()) {
        t.put_message(&mut m, None)
    } else {
        t.finish_message(m, now)
    }
}

/// Holds recipients of message `id` in the queue until `until` (ms), with
/// `why` as their last reply: traffic shaping's "not now" (a suspended
/// provider group, a used-up warm-up allowance, a rate's turn). Not an
/// attempt: the state, the attempt count and the send's counts stay.
pub fn hold_recipients(
    t: &mut WriteTables<'_>,
    id: u64,
    rcpts: &[usize],
    until: i64,
    why: &str,
    now: i64,
) -> Result<(), StoreError> {
    let Some(mut m) = t.queued_message(id)? else {
        return Ok(()); // purged meanwhile
    };
    for &i in rcpts {
        if let Some(r) = m.recipients.get_mut(i).filter(|r| r.state.is_pending()) {
            r.next_attempt = Some(until.max(r.next_attempt.unwrap_or(i64::MIN)));
            r.reply = Some(why.to_string());
            r.updated = Some(now);
        }
    }
    t.put_message(&mut m, None)
}

/// Records the outcome of a job (durably) and releases it from the active
/// set. `outcome_of` gives the outcome of the job's `i`-th recipient.
///
/// Called by the connection task that holds the job, so the write is
/// covered by its `"smtp connection"` guard: shutdown waits for it.
pub(super) async fn finish_job(
    inner: &Arc<Inner>,
    config: &Config,
    job: Job,
    host: Option<&str>,
    outcome_of: impl Fn(usize) -> Outcome,
) {
    record_job(inner, config, job, host, outcome_of, None).await
}

/// [`finish_job`] through the outcome journal ([`super::journal`]): the
/// outcome is appended to the journal, `durable` is told once it is synced
/// there, and the store commits it without a sync of its own. Should the
/// journal fail, the store's commit is synced and `durable` told after it.
pub(super) async fn finish_job_journaled(
    inner: &Arc<Inner>,
    config: &Config,
    job: Job,
    host: Option<&str>,
    outcome_of: impl Fn(usize) -> Outcome,
    durable: tokio::sync::oneshot::Sender<()>,
) {
    record_job(inner, config, job, host, outcome_of, Some(durable)).await
}

async fn record_job(
    inner: &Arc<Inner>,
    config: &Config,
    job: Job,
    host: Option<&str>,
    outcome_of: impl Fn(usize) -> Outcome,
    durable: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let outcomes: Vec<(usize, Outcome)> = job
        .rcpts
        .iter()
        .enumerate()
        .map(|(i, (idx, _))| (*idx, outcome_of(i)))
        .collect();
    count_metrics(inner, &outcomes);
    let now = now_ms(&inner.clock);
    let policy = RetryPolicy::of(&config.delivery);
    let id = job.msg;
    let host = host.map(str::to_string);
    // Warm-up use counts once sent to a server; without a session it is
    // given back.
    let mut job = job;
    if host.is_none() {
        super::scheduler::unreserve_warm(inner, &mut job);
    } else {
        // Deferred recipients count when they go, not now.
        let deferred = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Temporary(_)))
            .count();
        super::scheduler::warm_give_back(inner, &mut job, deferred as u64);
    }
    let warm = job.warm.clone().filter(|u| u.n > 0);
    // The ticket is held until the store has committed the outcome (its
    // journal file is kept until then); `durable` is still to be told when
    // the store's synced commit must make the outcome durable.
    let (ticket, mut durable) = match durable {
        Some(tell) => {
            let entry = super::journal::Entry {
                msg: id,
                now,
                host: host.clone(),
                outcomes: outcomes.clone(),
                warm: warm.clone(),
            };
            journal_outcome(inner, &entry, tell).await
        }
        None => (None, None),
    };
    let item = super::outcome_batch::Item {
        msg: id,
        outcomes,
        host,
        now,
        policy,
        warm,
        journaled: ticket.is_some(),
    };
    // The job stays in the active set until its outcome is committed: were
    // it released after a failed write, the next fill would load the
    // message again and send a delivered recipient a second time. First
    // with the outcomes of other messages (`outcome_batch`); should that
    // batch fail, alone until it is written.
    let recorded = inner.outcome_batch.record(&inner.store, item.clone()).await
        || write_alone(inner, &item).await;
    if !recorded {
        // The store is closing; journaled, it is recorded at the next start.
        return;
    }
    if let Some(tell) = durable.take() {
        let _ = tell.send(());
    }
    inner.outcomes_recorded.notify_one();
    drop(ticket);
    release_jobs(inner, std::slice::from_ref(&job));
    for (i, o) in &item.outcomes {
        match o {
            Outcome::Delivered(r) => tracing::debug!(msg = id, rcpt = i, reply = %r, "delivered"),
            Outcome::Temporary(r) => tracing::info!(msg = id, rcpt = i, reply = %r, "deferred"),
            Outcome::Permanent(r, c) => {
                tracing::info!(msg = id, rcpt = i, class = c.as_str(), reply = %r, "failed")
            }
        }
    }
}

/// Writes one message's outcomes as a job of its own, retrying (with a
/// growing pause) until it is committed; `false` if the store closed first.
async fn write_alone(inner: &Inner, item: &super::outcome_batch::Item) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        let i = item.clone();
        let written = inner
            .store
            .write(move |t| {
                if i.journaled {
                    t.sync_later();
                }
                i.write(t)
            })
            .await;
        match written {
            Ok(()) => {
                if backoff > Duration::from_millis(100) {
                    inner
                        .store
                        .report_loop("delivery outcomes", &Ok::<(), String>(()));
                }
                return true;
            }
            Err(StoreError::Closed) => return false,
            Err(e) => {
                inner
                    .store
                    .report_loop("delivery outcomes", &Err::<(), _>(&e));
                tracing::error!(error = %e, msg = item.msg, "cannot record a delivery outcome; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Appends `entry` to the outcome journal and tells `tell` once it is
/// durable there. On a journal error `tell` comes back: the store's commit
/// is then synced, and `tell` told after it.
async fn journal_outcome(
    inner: &Inner,
    entry: &super::journal::Entry,
    tell: tokio::sync::oneshot::Sender<()>,
) -> (
    Option<super::journal::Ticket>,
    Option<tokio::sync::oneshot::Sender<()>>,
) {
    match inner.journal.append(entry).await {
        Ok(t) => {
            let _ = tell.send(());
            (Some(t), None)
        }
        Err(e) => {
            tracing::debug!(error = %e, msg = entry.msg, "outcome not journaled; the store syncs it");
            (None, Some(tell))
        }
    }
}

/// Counts outcomes in the delivery metrics.
fn count_metrics(inner: &Inner, outcomes: &[(usize, Outcome)]) {
    for (_, o) in outcomes {
        match o {
            Outcome::Delivered(_) => inner.delivered.inc(),
            Outcome::Temporary(_) => inner.deferred.inc(),
            Outcome::Permanent(_, class) => {
                inner
                    .bounces
                    .get_or_create(&crate::metrics::BounceLabels {
                        class: class.as_str(),
                    })
                    .inc();
                inner.failed.inc()
            }
        };
    }
}

pub(super) fn add_warm_use(
    t: &mut WriteTables<'_>,
    warm: Option<&WarmUse>,
) -> Result<(), StoreError> {
    if let Some(u) = warm {
        for scope in &u.scopes {
            t.add_warmup_used(&u.sender, scope, u.period, u.n)?;
        }
    }
    Ok(())
}

/// Records the outcomes of the journal's files left over from earlier runs
/// ([`super::journal::Journal::left_over`], [`super::journal::read`]) that
/// the store does not hold, with a synced commit, and deletes the files. Runs before the scheduler loads
/// the queue. A recipient holds an entry's outcome when it is no longer
/// pending or was updated at or after the entry's time (its outcome
/// records set `updated` to that time); so an entry the store already
/// holds is not applied twice (a deferral would count a second attempt).
/// On failure the files are kept for the next start.
pub(super) async fn replay_journal(inner: &Arc<Inner>) {
    // File I/O: off the async runtime.
    let me = inner.clone();
    let found = tokio::task::spawn_blocking(move || {
        let files = me.journal.left_over()?;
        let entries = super::journal::read(&files)?;
        Ok::<_, super::journal::JournalError>((files, entries))
    })
    .await;
    let (files, entries) = match found {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the outcome journal; its outcomes are not recorded");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the outcome journal failed");
            return;
        }
    };
    if entries.is_empty() {
        // None left, or files without a whole entry (a crash right after
        // a file was started): nothing worth a word.
        remove_files(files).await;
        return;
    }
    let policy = RetryPolicy::of(&inner.config.get().delivery);
    let total = entries.len();
    let mut applied = 0usize;
    for chunk in entries.chunks(CHUNK) {
        let (chunk, policy) = (chunk.to_vec(), policy.clone());
        match inner
            .store
            .write(move |t| {
                let mut n = 0;
                for e in &chunk {
                    n += usize::from(replay_entry(t, e, &policy)?);
                }
                Ok(n)
            })
            .await
        {
            Ok(n) => applied += n,
            Err(e) => {
                tracing::error!(error = %e, "cannot record the outcome journal's outcomes; its files are kept");
                return;
            }
        }
    }
    tracing::info!(
        entries = total,
        recorded = applied,
        "outcome journal: outcomes of the last run recorded"
    );
    remove_files(files).await;
}

/// Deletes journal files on a blocking thread.
async fn remove_files(files: Vec<std::path::PathBuf>) {
    if files.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || super::journal::remove(&files)).await;
}

/// Applies one journal entry's outcomes that `t` does not hold; true when
/// some were.
fn replay_entry(
    t: &mut WriteTables<'_>,
    e: &super::journal::Entry,
    policy: &RetryPolicy,
) -> Result<bool, StoreError> {
    let Some(m) = t.queued_message(e.msg)? else {
        return Ok(false); // finished (or purged)
    };
    let fresh: Vec<(usize, Outcome)> = e
        .outcomes
        .iter()
        .filter(|(i, _)| {
            m.recipients
                .get(*i)
                .is_some_and(|r| r.state.is_pending() && r.updated.is_none_or(|u| u < e.now))
        })
        .cloned()
        .collect();
    if fresh.is_empty() {
        return Ok(false);
    }
    record_outcomes(t, e.msg, &fresh, e.host.as_deref(), e.now, policy)?;
    add_warm_use(t, e.warm.as_ref())?;
    Ok(true)
}

/// The pending recipients of `m` that its kind of mail may no longer reach
/// ([`QueuedMessage::rule`], [`super::model::MailKind::allows`]): contacts
/// erased, or whose consent changed since the message was queued
/// (unsubscribed, bounced). `consent` gives a contact's state, `None` for
/// a contact that no longer exists. Checked when the scheduler loads a
/// message, so every attempt (also after a deferral) checks again.
pub(super) fn unsendable(
    m: &QueuedMessage,
    consent: impl Fn(u64) -> Result<Option<ConsentState>, StoreError>,
    suppressed: impl Fn(&str) -> Result<bool, StoreError>,
) -> Result<Vec<(usize, NotSent)>, StoreError> {
    let kind = m.rule();
    let mut out = Vec::new();
    for (i, r) in m.recipients.iter().enumerate() {
        if !r.state.is_pending() {
            continue;
        }
        // The suppression list stops every kind of mail but the answer to
        // the person's own signup.
        if kind != Some(MailKind::Confirmation) && suppressed(&r.address)? {
            out.push((i, NotSent::Suppressed));
            continue;
        }
        let Some(kind) = kind else { continue };
        let Some(id) = r.contact else { continue };
        match consent(id)? {
            None => out.push((i, NotSent::Erased)),
            Some(s) if !kind.allows(s) => out.push((i, NotSent::NoConsent)),
            Some(_) => {}
        }
    }
    Ok(out)
}

/// Fails, unsent, the recipients of a queued message its kind of mail may
/// no longer reach (checked again inside this transaction): counted as
/// failed and, for its send, as `not_sent_no_consent` or
/// `not_sent_erased`. A message left with nothing to send is finished (its
/// body deleted).
pub(super) fn drop_unsent(t: &mut WriteTables<'_>, id: u64, now: i64) -> Result<(), StoreError> {
    let Some(mut m) = t.queued_message(id)? else {
        return Ok(());
    };
    let suppressed = Suppressed::of(&*t)?;
    let drop = unsendable(
        &m,
        |c| Ok(t.contact(c)?.map(|c| c.consent)),
        |a| suppressed.check(&*t, a),
    )?;
    if drop.is_empty() {
        return Ok(());
    }
    for (idx, why) in drop {
        not_sent(t, &mut m, idx, why, now)?;
    }
    if m.recipients.iter().any(|r| r.state.is_pending()) {
        t.put_message(&mut m, None)
    } else {
        t.finish_message(m, now)
    }
}

/// The suppression check of [`unsendable`]: free when the list is empty.
pub(super) struct Suppressed {
    /// The installation's salt; `None` when nothing is suppressed.
    salt: Option<Vec<u8>>,
}

impl Suppressed {
    /// Reads whether anything is suppressed (and the salt) once.
    pub(super) fn of(r: &impl ReadTables) -> Result<Suppressed, StoreError> {
        Ok(Suppressed {
            salt: if r.any_suppression()? {
                Some(r.salt()?)
            } else {
                None
            },
        })
    }

    /// Whether `address` may not be mailed.
    pub(super) fn check(&self, r: &impl ReadTables, address: &str) -> Result<bool, StoreError> {
        match &self.salt {
            Some(salt) => r.address_suppressed(salt, address),
            None => Ok(false),
        }
    }
}

/// Fails recipient `idx` of `m` unsent for `why`, counted for its send.
fn not_sent(
    t: &mut WriteTables<'_>,
    m: &mut QueuedMessage,
    idx: usize,
    why: NotSent,
    now: i64,
) -> Result<bool, StoreError> {
    let Some(before) = m.not_sent(idx, why, now) else {
        return Ok(false);
    };
    count_outcome(t, m.send, before, RcptState::Failed, None, now)?;
    if let Some(s) = m.send.filter(SendRef::counted) {
        let counter = match why {
            NotSent::Erased => Counter::Erased,
            NotSent::NoConsent => Counter::Unsent,
            NotSent::Suppressed => Counter::NotSentSuppressed,
        };
        t.count_not_sent(s, counter)?;
    }
    Ok(true)
}

/// Erasure in the queue: every record of a message to the address whose
/// salted hash is `key` (see `store::suppression_key`), queued or
/// finished, loses the address (and the reply and host that may name it);
/// recipients still pending fail unsent as `erased`, and a message left with
/// nothing to send is finished, its body deleted. Runs in the erasure's
/// transaction; returns how many recipients were taken out unsent.
pub fn erase_recipient(t: &mut WriteTables<'_>, key: &[u8], now: i64) -> Result<usize, StoreError> {
    // The messages not yet in the address index are indexed first: the
    // lookup then reads the index alone, and so does the next erasure
    // (several in a row would each read every record above the mark).
    t.index_recent_addresses(u64::MAX)?;
    let salt = t.salt()?;
    let mut unsent = 0;
    for id in t.message_ids_to(key)? {
        let (mut m, queued) = match t.queued_message(id)? {
            Some(m) => (m, true),
            None => match t.finished_message(id)? {
                Some(m) => (m, false),
                None => continue,
            },
        };
        for idx in 0..m.recipients.len() {
            let address = m.recipients[idx].address.to_lowercase();
            if crate::store::suppression_key(&salt, &address) != key {
                continue;
            }
            if not_sent(t, &mut m, idx, NotSent::Erased, now)? {
                unsent += 1;
            }
            let r = &mut m.recipients[idx];
            r.address = ERASED.to_string();
            r.domain = String::new();
            r.contact = None;
            r.host = None;
            r.reply = r.not_sent.map(|n| n.reply().to_string());
        }
        if !queued {
            t.put_finished_message(&m)?;
        } else if m.recipients.iter().any(|r| r.state.is_pending()) {
            t.put_message(&mut m, None)?;
        } else {
            t.finish_message(m, now)?;
        }
    }
    t.unindex_address(key)?;
    Ok(unsent)
}

/// What an erased recipient's address reads in the queue records.
pub const ERASED: &str = "(erased)";

/// The counter changes of a recipient's move from `before` to `after`:
/// (counter, delta, whether it goes into the hourly series). Final
/// outcomes count once; `deferred` counts the recipients waiting for a
/// retry now.
fn outcome_counts(
    before: RcptState,
    after: RcptState,
    bounce: Option<BounceClass>,
) -> Vec<(Counter, i64, bool)> {
    let mut out = Vec::new();
    if before == after {
        return out;
    }
    if before == RcptState::Deferred {
        out.push((Counter::Deferred, -1, false));
    }
    match after {
        RcptState::Deferred => out.push((Counter::Deferred, 1, false)),
        RcptState::Delivered => out.push((Counter::Delivered, 1, true)),
        RcptState::Failed => {
            out.push((Counter::Failed, 1, true));
            match bounce {
                Some(BounceClass::Hard) => out.push((Counter::Hard, 1, false)),
                Some(BounceClass::Soft) => out.push((Counter::Soft, 1, false)),
                Some(BounceClass::Policy) => out.push((Counter::Policy, 1, false)),
                None => {}
            }
        }
        RcptState::Queued => {}
    }
    out
}

/// Counts a recipient's move from `before` to `after` for the send its
/// message belongs to (if any).
fn count_outcome(
    t: &mut WriteTables<'_>,
    send: Option<SendRef>,
    before: RcptState,
    after: RcptState,
    bounce: Option<BounceClass>,
    now: i64,
) -> Result<(), StoreError> {
    // Tests and previews are not counted.
    let Some(s) = send.filter(SendRef::counted) else {
        return Ok(());
    };
    for (counter, delta, hourly) in outcome_counts(before, after, bounce) {
        if hourly {
            t.bump_send_at(s, counter, delta, now)?;
        } else {
            t.bump_send(s, counter, delta)?;
        }
    }
    Ok(())
}

/// Makes the contact behind a hard-bounced address `invalid` (source
/// `bounce`, the reply in the consent log's note) and suppresses the
/// address; found by id or else by address; an address that is nobody's
/// contact is left alone.
fn mark_invalid(
    t: &mut WriteTables<'_>,
    address: &str,
    contact: Option<u64>,
    reply: &str,
    now: i64,
) -> Result<(), StoreError> {
    let id = match contact {
        Some(id) => Some(id),
        None => match contacts::normalize_email(address) {
            Ok(e) => t.contact_id_by_email(&e.key)?,
            Err(_) => None,
        },
    };
    let Some(id) = id else { return Ok(()) };
    let note = format!("hard bounce: {reply}");
    // The same as a hard bounce reported later by DSN (`inbound::apply`).
    contacts::suppress(t, address, SuppressionSource::Bounce, note.clone(), now)?;
    contacts::set_consent(
        t,
        id,
        ConsentState::Invalid,
        ConsentSource::Bounce,
        note,
        now,
    )?;
    Ok(())
}

/// Which queued messages an admin action applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    /// One message.
    Id(u64),
    /// Every message with a recipient in this domain.
    Domain(String),
    /// Every message (a retry of the whole queue, as `postqueue -f`).
    All,
    /// Every message of a send (kind and id, any slot): cancelling a
    /// campaign purges its queued messages.
    Send(SendKind, u64),
}

/// Messages per write transaction when an action walks the whole queue, so
/// that a queue of any size is handled in bounded memory.
pub const CHUNK: usize = 1000;

fn select(
    t: &WriteTables<'_>,
    sel: &Selection,
    after: u64,
) -> Result<(Vec<QueuedMessage>, Option<u64>), StoreError> {
    match sel {
        Selection::Id(id) => Ok((t.queued_message(*id)?.into_iter().collect(), None)),
        Selection::Domain(_) | Selection::Send(..) | Selection::All => {
            let mut msgs = t.queued_messages_after(after, CHUNK)?;
            let next = (msgs.len() == CHUNK)
                .then(|| msgs.last().map(|m| m.id))
                .flatten();
            if let Selection::Send(kind, id) = sel {
                msgs.retain(|m| m.send.is_some_and(|s| s.kind == *kind && s.id == *id));
            }
            Ok((msgs, next))
        }
    }
}

fn matches_domain(sel: &Selection, domain: &str) -> bool {
    match sel {
        Selection::Id(_) | Selection::Send(..) | Selection::All => true,
        Selection::Domain(d) => d == domain,
    }
}

/// Makes deferred recipients due now, for one chunk of the selection
/// starting after queue id `after`. Returns the messages changed and where
/// the next chunk starts (`None` when done).
pub fn retry_now(
    t: &mut WriteTables<'_>,
    sel: &Selection,
    after: u64,
    now: i64,
) -> Result<(usize, Option<u64>), StoreError> {
    let (msgs, next) = select(t, sel, after)?;
    let mut n = 0;
    for mut m in msgs {
        let mut changed = false;
        for r in m.recipients.iter_mut() {
            if r.state == RcptState::Deferred && matches_domain(sel, &r.domain) {
                r.next_attempt = Some(now);
                changed = true;
            }
        }
        if changed {
            t.put_message(&mut m, None)?;
            n += 1;
        }
    }
    Ok((n, next))
}

/// Fails the pending recipients of one chunk of the selection with `reason`.
/// Returns (messages, recipients) purged and where the next chunk starts.
pub fn purge(
    t: &mut WriteTables<'_>,
    sel: &Selection,
    after: u64,
    reason: &str,
    now: i64,
) -> Result<(usize, usize, Option<u64>), StoreError> {
    let (msgs, next) = select(t, sel, after)?;
    let (mut n, mut rcpts) = (0, 0);
    for mut m in msgs {
        let mut changed = false;
        for r in m.recipients.iter_mut() {
            if r.state.is_pending() && matches_domain(sel, &r.domain) {
                count_outcome(t, m.send, r.state, RcptState::Failed, None, now)?;
                r.state = RcptState::Failed;
                r.next_attempt = None;
                r.updated = Some(now);
                r.reply = Some(format!("purged by the admin: {reason}"));
                changed = true;
                rcpts += 1;
            }
        }
        if !changed {
            continue;
        }
        n += 1;
        m.purged = Some(reason.to_string());
        if m.recipients.iter().any(|r| r.state.is_pending()) {
            t.put_message(&mut m, None)?;
        } else {
            t.finish_message(m, now)?;
        }
    }
    Ok((n, rcpts, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::smtp::{Reply, Stage};

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    /// Waits of 10 min, then 1 h (repeating); give up 4 h after queueing.
    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: vec![Duration::from_secs(600), Duration::from_secs(3600)],
            max_age_ms: 4 * HOUR,
        }
    }

    fn rcpt(state: RcptState) -> Recipient {
        let mut r = Recipient::queued("ann@example.com".into(), Some(7));
        r.state = state;
        r
    }

    fn reply(code: u16, text: &str) -> Reply {
        Reply {
            code,
            text: text.into(),
        }
    }

    /// Asserts `ms` is the wait `base_ms` with its ±10 % jitter.
    fn assert_jittered(ms: i64, base_ms: i64) {
        assert!(
            ms >= base_ms * 9 / 10 && ms <= base_ms * 11 / 10,
            "{ms} ms is not {base_ms} ms ±10 %"
        );
    }

    #[test]
    fn outcomes_count_once_and_deferrals_while_they_wait() {
        use RcptState::*;
        assert_eq!(
            outcome_counts(Queued, Delivered, None),
            vec![(Counter::Delivered, 1, true)]
        );
        assert_eq!(
            outcome_counts(Queued, Deferred, None),
            vec![(Counter::Deferred, 1, false)]
        );
        assert_eq!(
            outcome_counts(Deferred, Failed, Some(BounceClass::Hard)),
            vec![
                (Counter::Deferred, -1, false),
                (Counter::Failed, 1, true),
                (Counter::Hard, 1, false)
            ]
        );
        assert!(outcome_counts(Deferred, Deferred, None).is_empty());
    }

    #[test]
    fn each_attempt_waits_its_entry_of_the_schedule_and_the_last_repeats() {
        let p = RetryPolicy {
            schedule: [60, 300, 1800].map(Duration::from_secs).to_vec(),
            max_age_ms: i64::MAX,
        };
        let base = |attempts| p.base_wait(attempts).as_secs();
        assert_eq!(base(0), 60, "no attempt yet: the first wait");
        assert_eq!(base(1), 60);
        assert_eq!(base(2), 300);
        assert_eq!(base(3), 1800);
        assert_eq!(base(4), 1800);
        assert_eq!(base(50), 1800);
        let empty = RetryPolicy {
            schedule: Vec::new(),
            max_age_ms: i64::MAX,
        };
        assert_eq!(empty.base_wait(3), DEFAULT_WAIT);
    }

    #[test]
    fn waits_are_jittered_by_at_most_ten_percent_both_ways() {
        let p = policy();
        let draws: Vec<i64> = (0..2000).map(|_| p.wait_ms(2)).collect();
        for &ms in &draws {
            assert_jittered(ms, HOUR);
        }
        // Spread on both sides of the schedule, not pinned to one end.
        assert!(draws.iter().any(|&ms| ms < HOUR - HOUR / 20));
        assert!(draws.iter().any(|&ms| ms > HOUR + HOUR / 20));
        // A huge configured wait saturates rather than wrapping negative.
        let huge = RetryPolicy {
            schedule: vec![Duration::MAX],
            max_age_ms: i64::MAX,
        };
        assert!(huge.wait_ms(1) > 0);
    }

    #[test]
    fn a_temporary_failure_defers_until_the_next_attempt_of_the_schedule() {
        let mut r = rcpt(RcptState::Queued);
        let out = Outcome::Temporary("451 4.7.1 greylisted".into());
        let change = apply_outcome(&mut r, 0, &out, Some("mx.example.com"), 1000, &policy());
        assert_eq!(
            change,
            Some(Attempted {
                before: RcptState::Queued,
                hard_bounce: false
            })
        );
        assert_eq!(r.state, RcptState::Deferred);
        assert_eq!(r.attempts, 1);
        assert_jittered(r.next_attempt.unwrap_or_default() - 1000, 10 * MIN);
        assert_eq!(r.reply.as_deref(), Some("451 4.7.1 greylisted"));
        assert_eq!(r.bounce, None);
        assert_eq!(r.host.as_deref(), Some("mx.example.com"));
        assert_eq!(r.updated, Some(1000));

        // The second deferral waits the second entry.
        let change = apply_outcome(&mut r, 0, &out, None, HOUR, &policy());
        assert_eq!(change.map(|c| c.before), Some(RcptState::Deferred));
        assert_eq!(r.state, RcptState::Deferred);
        assert_eq!(r.attempts, 2);
        assert_jittered(r.next_attempt.unwrap_or_default() - HOUR, HOUR);
        assert_eq!(r.host, None, "the host of this attempt, none");
    }

    #[test]
    fn a_next_attempt_past_the_queue_lifetime_gives_up_as_a_soft_bounce() {
        let mut r = rcpt(RcptState::Deferred);
        r.attempts = 4;
        // Queued at 1 h, lifetime 4 h: a retry ≥ 54 min after 4 h 30 min
        // would fall past 5 h.
        let out = Outcome::Temporary("421 4.4.2 timeout".into());
        let change = apply_outcome(&mut r, HOUR, &out, None, 4 * HOUR + 30 * MIN, &policy());
        assert_eq!(
            change,
            Some(Attempted {
                before: RcptState::Deferred,
                hard_bounce: false
            })
        );
        assert_eq!(r.state, RcptState::Failed);
        assert_eq!(r.bounce, Some(BounceClass::Soft));
        assert_eq!(r.next_attempt, None);
        assert_eq!(
            r.reply.as_deref(),
            Some("gave up after 5 attempts over the queue lifetime; last: 421 4.4.2 timeout")
        );
        // Well within the lifetime, the same failure defers.
        let mut r = rcpt(RcptState::Deferred);
        apply_outcome(&mut r, HOUR, &out, None, 2 * HOUR, &policy());
        assert_eq!(r.state, RcptState::Deferred);
    }

    #[test]
    fn a_250_after_data_delivers_and_clears_the_retry() {
        let mut r = rcpt(RcptState::Deferred);
        r.next_attempt = Some(5);
        r.reply = Some("451 try later".into());
        let out = Outcome::of_rcpt(Some(&RcptResult::Delivered(reply(
            250,
            "250 2.0.0 Ok: queued",
        ))));
        let change = apply_outcome(&mut r, 0, &out, Some("mx"), 10, &policy());
        assert_eq!(change.map(|c| c.before), Some(RcptState::Deferred));
        assert_eq!(r.state, RcptState::Delivered);
        assert_eq!(r.reply.as_deref(), Some("250 2.0.0 Ok: queued"));
        assert_eq!(r.next_attempt, None);
        assert_eq!(r.bounce, None);
        assert_eq!(r.attempts, 1);
        // Counted: one delivered, one fewer waiting.
        assert_eq!(
            outcome_counts(RcptState::Deferred, r.state, r.bounce),
            vec![
                (Counter::Deferred, -1, false),
                (Counter::Delivered, 1, true)
            ]
        );
    }

    #[test]
    fn a_recipient_no_longer_pending_is_left_alone() {
        for state in [RcptState::Delivered, RcptState::Failed] {
            let mut r = rcpt(state);
            let out = Outcome::Permanent("550 5.1.1 unknown".into(), BounceClass::Hard);
            assert_eq!(apply_outcome(&mut r, 0, &out, None, 10, &policy()), None);
            assert_eq!(r.state, state);
            assert_eq!(r.attempts, 0);
            assert_eq!(r.bounce, None);
        }
    }

    #[test]
    fn a_server_that_said_nothing_for_a_recipient_defers_it() {
        let mut r = rcpt(RcptState::Queued);
        let out = Outcome::of_rcpt(None);
        apply_outcome(&mut r, 0, &out, None, 0, &policy());
        assert_eq!(r.state, RcptState::Deferred);
        assert_eq!(r.reply.as_deref(), Some("no reply for this recipient"));
        let out = Outcome::of_rcpt(Some(&RcptResult::Temporary(reply(
            452,
            "452 4.5.3 too many",
        ))));
        let mut r = rcpt(RcptState::Queued);
        apply_outcome(&mut r, 0, &out, None, 0, &policy());
        assert_eq!(r.state, RcptState::Deferred);
    }

    /// Only a refused RCPT, or a reply whose enhanced code names the
    /// mailbox or domain (X.1.1, X.1.2, X.1.10), is a hard bounce (and makes
    /// the contact `invalid`); a 5xx to MAIL FROM or the data is about the
    /// sender or the message.
    #[test]
    fn only_a_refused_rcpt_or_an_address_code_is_a_hard_bounce() {
        use BounceClass::*;
        use Stage::*;
        let cases = [
            // RCPT TO.
            (550, "550 5.1.1 <ann@example.com>: user unknown", Rcpt, Hard),
            (550, "550 no such place", Rcpt, Hard),
            (550, "550 5.7.1 rejected as spam", Rcpt, Policy),
            (552, "552 5.2.2 mailbox full", Rcpt, Soft),
            // MAIL FROM, DATA, the end of the data.
            (550, "550 5.7.1 sender rejected by policy", Message, Policy),
            (550, "550 Message content rejected", Message, Soft),
            (550, "550 user unknown", Message, Soft),
            (550, "550 5.1.3 bad address syntax", Message, Soft),
            (554, "554 5.1.1 user unknown", Message, Hard),
            (550, "550 5.1.2 bad destination domain", Message, Hard),
            (556, "556 5.1.10 null MX", Message, Hard),
        ];
        for (code, text, stage, class) in cases {
            let result = RcptResult::Permanent(reply(code, text), stage);
            let out = Outcome::of_rcpt(Some(&result));
            let mut r = rcpt(RcptState::Queued);
            let change = apply_outcome(&mut r, 0, &out, Some("mx"), 10, &policy());
            let what = format!("{text} at {stage:?}");
            assert_eq!(r.state, RcptState::Failed, "{what}");
            assert_eq!(r.bounce, Some(class), "{what}");
            assert_eq!(r.reply.as_deref(), Some(text), "{what}");
            assert_eq!(r.next_attempt, None, "{what}");
            assert_eq!(change.map(|c| c.hard_bounce), Some(class == Hard), "{what}");
        }
    }

    /// A journal entry is applied once: again (the store already holds it,
    /// as after a stop before its file was deleted) it changes nothing, so a
    /// deferral does not count a second attempt; a delivery finishes the
    /// message once.
    #[test]
    fn a_journal_entry_the_store_holds_is_not_applied_again()
    -> Result<(), Box<dyn std::error::Error>> {
        use super::super::journal::Entry;
        let dir = tempfile::tempdir()?;
        let store = crate::store::Store::open(dir.path())?;
        store.write_wait(|t| {
            for id in [1, 2] {
                let rcpt = Recipient::queued(format!("u{id}@example.com"), None);
                let mut m = QueuedMessage::sample(id, vec![rcpt], None);
                t.put_message(&mut m, Some(b"body"))?;
            }
            Ok(())
        })?;
        let entry = |msg, now, o: Outcome| Entry {
            msg,
            now,
            host: Some("mx".into()),
            outcomes: vec![(0, o)],
            warm: None,
        };
        let deferred = entry(1, 1000, Outcome::Temporary("451 later".into()));
        let delivered = entry(2, 1000, Outcome::Delivered("250 ok".into()));
        let later = entry(1, 2000, Outcome::Delivered("250 ok".into()));
        let applied = store.write_wait(move |t| {
            let p = policy();
            let mut applied = Vec::new();
            for e in [&deferred, &delivered, &deferred, &delivered, &later, &later] {
                applied.push(replay_entry(t, e, &p)?);
            }
            Ok(applied)
        })?;
        // Each applied once; the later attempt of message 1 is new.
        assert_eq!(applied, [true, true, false, false, true, false]);
        let (one, two) = store.read_blocking(|v| Ok((v.message(1)?, v.message(2)?)))?;
        let one = one.ok_or("message 1")?;
        assert_eq!(one.recipients[0].state, RcptState::Delivered);
        assert_eq!(one.recipients[0].attempts, 2, "one deferral, one delivery");
        assert_eq!(two.ok_or("message 2")?.recipients[0].attempts, 1);
        store.close();
        Ok(())
    }

    /// The store side: states, the send's counters, the contact made
    /// `invalid` by a hard bounce only, and a finished message leaving the
    /// queue with its body.
    #[test]
    fn record_outcomes_commits_states_counts_and_invalid_contacts()
    -> Result<(), Box<dyn std::error::Error>> {
        use crate::store::Store;
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let addresses = [
            "a@example.com",
            "b@example.com",
            "c@example.com",
            "d@example.com",
        ];
        let send = SendRef {
            kind: SendKind::Transactional,
            id: 5,
            variant: 0,
        };
        store.write_wait(move |t| {
            let when = chrono::DateTime::from_timestamp_millis(0).unwrap_or_default();
            let mut ids = Vec::new();
            for a in addresses {
                let email =
                    contacts::normalize_email(a).map_err(|e| StoreError::Io(e.to_string()))?;
                match contacts::apply_upsert(
                    t,
                    &email,
                    contacts::ContactUpdate::default(),
                    true,
                    when,
                )? {
                    Ok((_, c)) => ids.push(c.id),
                    Err(e) => return Err(StoreError::Io(e.to_string())),
                }
            }
            let recipients = addresses
                .iter()
                .zip(&ids)
                .map(|(a, id)| Recipient::queued(a.to_string(), Some(*id)))
                .collect();
            let others = vec![Recipient::queued("e@example.com".into(), None)];
            for (id, recipients) in [(1, recipients), (2, others)] {
                let mut m = QueuedMessage::sample(id, recipients, Some(send));
                t.put_message(&mut m, Some(b"body"))?;
            }
            Ok(())
        })?;
        let outcomes = vec![
            (0, Outcome::Delivered("250 ok".into())),
            (
                1,
                Outcome::Permanent("550 5.1.1 user unknown".into(), BounceClass::Hard),
            ),
            (
                2,
                Outcome::Permanent("550 content rejected".into(), BounceClass::Soft),
            ),
            (
                3,
                Outcome::Permanent("550 5.7.1 spam".into(), BounceClass::Policy),
            ),
        ];
        let p = policy();
        store.write_wait(move |t| {
            record_outcomes(t, 1, &outcomes, Some("mx"), 1000, &p)?;
            let p = policy();
            let temp = [(0, Outcome::Temporary("451 later".into()))];
            record_outcomes(t, 2, &temp, Some("mx"), 1000, &p)
        })?;
        let (still_queued, finished, body, queued, consents, counts) =
            store.read_blocking(|v| {
                let mut consents = Vec::new();
                for a in addresses {
                    let c = match v.contact_id_by_email(a)? {
                        Some(id) => v.contact(id)?.map(|c| c.consent),
                        None => None,
                    };
                    consents.push(c);
                }
                Ok((
                    v.queued_message(1)?,
                    v.message(1)?,
                    v.message_body(1)?,
                    v.queued_message(2)?,
                    consents,
                    v.send_counts(SendKind::Transactional, 5)?,
                ))
            })?;
        assert!(still_queued.is_none(), "message 1 left the queue");
        let finished = finished.ok_or("message 1 is not finished")?;
        assert_eq!(finished.finished, Some(1000));
        let states: Vec<_> = finished
            .recipients
            .iter()
            .map(|r| (r.state, r.bounce))
            .collect();
        assert_eq!(
            states,
            vec![
                (RcptState::Delivered, None),
                (RcptState::Failed, Some(BounceClass::Hard)),
                (RcptState::Failed, Some(BounceClass::Soft)),
                (RcptState::Failed, Some(BounceClass::Policy)),
            ]
        );
        assert_eq!(body, None, "a finished message's body is deleted");
        assert_eq!(consents[1], Some(ConsentState::Invalid), "hard bounce");
        for i in [0, 2, 3] {
            assert_ne!(consents[i], Some(ConsentState::Invalid), "{}", addresses[i]);
        }
        let queued = queued.ok_or("message 2 left the queue")?;
        assert_eq!(queued.recipients[0].state, RcptState::Deferred);
        assert_eq!(queued.due, queued.recipients[0].next_attempt);
        let count = |c: Counter| counts.get(&(0, c as u8)).copied().unwrap_or(0);
        assert_eq!(count(Counter::Delivered), 1);
        assert_eq!(count(Counter::Failed), 3);
        assert_eq!(count(Counter::Hard), 1);
        assert_eq!(count(Counter::Soft), 1);
        assert_eq!(count(Counter::Policy), 1);
        assert_eq!(count(Counter::Deferred), 1);
        // The hard-bounced address, and only it, is suppressed.
        let listed = store.read_blocking(|v| v.suppressions_after(&[], 10))?;
        let listed: Vec<_> = listed
            .iter()
            .map(|(_, s)| (s.address.as_deref(), s.source))
            .collect();
        assert_eq!(
            listed,
            [(
                Some("b@example.com"),
                crate::contacts::model::SuppressionSource::Bounce
            )]
        );
        store.close();
        Ok(())
    }
}
