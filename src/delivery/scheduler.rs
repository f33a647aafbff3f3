//! The scheduler task: reads due entries of the queue into a bounded
//! in-memory active set, groups each message's due recipients into jobs per
//! destination, and starts connection tasks while a destination has more
//! ready jobs than connections and the limits allow.
//!
//! - A destination is (sender, recipient domain) for MX delivery, or (sender)
//!   for a relay. Each destination has a FIFO of ready jobs (one job = one
//!   message to at most 100 of that destination's recipients).
//! - Limits: connections per recipient domain (or per relay, its own
//!   `max_connections`) and in total.
//! - The loop wakes when work is queued ([`super::Engine::notify`]), when
//!   room is freed, or every second for deferrals coming due; it ends when
//!   the engine's `Activity` is stopping, starting nothing after that.
//!
//! This file also holds the job board the connection tasks work from
//! (take, give back, drain, release), since it is the scheduler's state.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::engine::{Inner, lock, now_ms};
use super::model::QueuedMessage;
use super::outcome::{Suppressed, drop_unsent, unsendable};
use super::shaping::{GroupKey, Shaper, SlotLine, WarmRoom, WarmUse};
use crate::config::Sender;
use crate::config::shaping::Group;
use crate::store::ReadTables as _;
use crate::store::StoreError;

/// Most messages held in memory for delivery at once.
const ACTIVE_MAX: usize = 5000;
/// Least time between two scans of the due index.
const FILL_INTERVAL: Duration = Duration::from_millis(50);
/// Recipients per SMTP transaction.
const MAX_RCPTS_PER_TRANSACTION: usize = 100;
/// How long a message whose sender left the config waits before it is
/// looked at again.
const ORPHAN_WAIT_MS: i64 = 3_600_000;

/// A delivery destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct DestKey {
    /// The sender identity's id.
    pub(super) sender: String,
    /// Recipient domain; empty for a relay (which takes every domain).
    pub(super) domain: String,
}

/// One message to one destination's recipients.
#[derive(Debug)]
pub(super) struct Job {
    /// Queue id.
    pub(super) msg: u64,
    /// MAIL FROM.
    pub(super) return_path: String,
    /// (recipient index in the message, address).
    pub(super) rcpts: Vec<(usize, String)>,
    /// The warm-up allowance its recipients were counted against when it
    /// was taken (recorded with its outcome, given back if not sent).
    pub(super) warm: Option<WarmUse>,
}

/// What a connection task's destination counts against: its provider
/// group (MX delivery) with the group's limits; none for a relay.
#[derive(Debug, Clone)]
pub(super) struct Lane {
    /// The destination.
    pub(super) dest: DestKey,
    /// Its group, and the group's limits as configured when it started.
    pub(super) group: Option<(GroupKey, Group)>,
}

/// A destination's jobs and connections.
#[derive(Default)]
pub(super) struct Dest {
    /// Jobs waiting for a connection, oldest first.
    ready: VecDeque<Job>,
    /// Connection tasks started for it.
    conns: usize,
    /// Connection tasks that got a working session.
    live: usize,
}

/// A message in the active set.
pub(super) struct Active {
    /// Jobs not yet recorded; the message leaves the set with its last.
    jobs_left: usize,
    /// Recipient indexes in flight; for the status view.
    pub(super) rcpts: Vec<usize>,
    /// Every recipient's domain, by index; for the status view.
    pub(super) domain_of: Vec<String>,
    /// When the message was loaded (ms): an outcome recorded at or after
    /// this is this attempt's, even while the job is still being released.
    pub(super) loaded_at: i64,
}

/// The scheduler's state, shared with the connection tasks under a mutex.
#[derive(Default)]
pub(super) struct State {
    /// Messages loaded for delivery, by queue id.
    pub(super) active: HashMap<u64, Active>,
    /// Destinations with ready jobs or open connections.
    dests: HashMap<DestKey, Dest>,
    /// Open connections per recipient domain (MX) or relay (`relay:ID`).
    limit_conns: HashMap<String, usize>,
    /// Open connections in all.
    pub(super) total_conns: usize,
    /// Next free send slot per sender (rate limits), as an instant.
    rate_next: HashMap<String, SlotLine>,
    /// Provider groups, their back-off and warm-up use.
    pub(super) shaper: Shaper,
}

/// The scheduler loop; returns once the engine's `Activity` is stopping.
pub(super) async fn run(inner: Arc<Inner>) {
    let stopping = inner.activity.stopping();
    tokio::pin!(stopping);
    let mut last_fill = tokio::time::Instant::now() - FILL_INTERVAL;
    loop {
        tokio::select! {
            biased;
            _ = &mut stopping => break,
            _ = tokio::time::sleep_until(last_fill + FILL_INTERVAL) => {}
        }
        last_fill = tokio::time::Instant::now();
        let filled = fill(&inner).await;
        inner.store.report_loop("delivery", &filled);
        let more = match filled {
            Ok(more) => more,
            // An unavailable store is logged (and reported) by the store.
            Err(e) if e.is_unavailable() => false,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the queue; retrying in a second");
                false
            }
        };
        hold(&inner).await;
        for domain in spawn_workers(&inner) {
            tokio::spawn(learn_group(inner.clone(), domain));
        }
        if more {
            // More is due than fits: wait for room.
            tokio::select! {
                biased;
                _ = &mut stopping => break,
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        } else {
            tokio::select! {
                biased;
                _ = &mut stopping => break,
                _ = inner.new_work.notified() => {}
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Loads due messages into the active set. Returns whether more were due
/// than there was room for.
async fn fill(inner: &Arc<Inner>) -> Result<bool, StoreError> {
    if inner.activity.is_stopping() {
        return Ok(false);
    }
    let (skip, room) = {
        let st = lock(&inner.state);
        let skip: HashSet<u64> = st.active.keys().copied().collect();
        let room = ACTIVE_MAX.saturating_sub(skip.len());
        (skip, room)
    };
    if room == 0 {
        return Ok(true);
    }
    let now = now_ms(&inner.clock);
    let (loaded, more, unsent) = inner
        .store
        .read(move |v| {
            let entries = v.due_entries(None, now, skip.len() + room + 1)?;
            let suppressed = Suppressed::of(v)?;
            let mut out = Vec::new();
            let mut unsent = Vec::new();
            let mut more = false;
            for (_, id) in entries {
                if skip.contains(&id) {
                    continue;
                }
                if out.len() == room {
                    more = true;
                    break;
                }
                if let Some(m) = v.queued_message(id)? {
                    let consent = |c| Ok(v.contact(c)?.map(|c| c.consent));
                    if !unsendable(&m, consent, |a| suppressed.check(v, a))?.is_empty() {
                        unsent.push(id);
                        continue;
                    }
                    out.push(m);
                }
            }
            Ok((out, more, unsent))
        })
        .await?;
    if !unsent.is_empty() {
        let n = unsent.len();
        let r = inner
            .store
            .write(move |t| {
                for id in unsent {
                    drop_unsent(t, id, now)?;
                }
                Ok(())
            })
            .await;
        match r {
            Ok(()) => {
                tracing::info!(
                    messages = n,
                    "messages not sent: the contacts were erased or no longer have consent"
                );
                // Other recipients of those messages may still be due.
                inner.new_work.notify_one();
                inner.outcomes_recorded.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not drop messages of contacts without consent")
            }
        }
    }
    if loaded.is_empty() {
        return Ok(more);
    }
    let config = inner.config.get();
    let mut orphans = Vec::new();
    {
        let mut st = lock(&inner.state);
        for m in loaded {
            if st.active.contains_key(&m.id) {
                continue;
            }
            let Some(sender) = config.sender(&m.sender) else {
                orphans.push(m.id);
                continue;
            };
            let (jobs, rcpts) = jobs_of(&m, sender, &config.tracking.keys, now);
            if jobs.is_empty() {
                continue;
            }
            st.active.insert(
                m.id,
                Active {
                    jobs_left: jobs.values().map(Vec::len).sum(),
                    rcpts,
                    domain_of: m.recipients.iter().map(|r| r.domain.clone()).collect(),
                    loaded_at: now,
                },
            );
            for (key, list) in jobs {
                st.dests.entry(key).or_default().ready.extend(list);
            }
        }
    }
    inner.jobs_added.notify_waiters();
    if !orphans.is_empty() {
        defer_orphans(inner, orphans).await;
    }
    Ok(more)
}

/// How far ahead a rate-limited group keeps jobs in memory; the rest is
/// held in the queue until about its turn, so that a slow provider never
/// fills the active set and starves the others.
const RATE_HORIZON: Duration = Duration::from_secs(60);
/// A job held for a group's rate is looked at again at the latest after
/// this long (the rate may have recovered).
const HOLD_RECHECK: Duration = Duration::from_secs(600);

/// A ready job to hold in the queue: its destination, until when (ms),
/// why, and the group it counts for.
struct Hold {
    dest: DestKey,
    job: Job,
    until: i64,
    why: String,
    group: Option<GroupKey>,
}

/// The hold pass, after each fill: ready jobs that cannot go soon are
/// written back to the queue with their next attempt at the time they can
/// (a suspended group: its end; a used-up warm-up allowance: the next
/// period; a rate-limited group's jobs beyond [`RATE_HORIZON`]: about their
/// turn) and leave the active set. Not an attempt: no retry is used up.
async fn hold(inner: &Arc<Inner>) {
    let config = inner.config.get();
    let now_ms = now_ms(&inner.clock);
    load_warm_use(inner, &config, now_ms).await;
    let holds = plan_holds(&mut lock(&inner.state), &config, now_ms);
    if holds.is_empty() {
        return;
    }
    let plan: Vec<(u64, Vec<usize>, i64, String)> = holds
        .iter()
        .map(|h| {
            let idx = h.job.rcpts.iter().map(|(i, _)| *i).collect();
            (h.job.msg, idx, h.until, h.why.clone())
        })
        .collect();
    let written = inner
        .store
        .write(move |t| {
            for (id, idx, until, why) in &plan {
                super::outcome::hold_recipients(t, *id, idx, *until, why, now_ms)?;
            }
            Ok(())
        })
        .await;
    let mut st = lock(&inner.state);
    match written {
        Ok(()) => {
            let mut jobs = Vec::with_capacity(holds.len());
            for h in holds {
                if let Some(gk) = &h.group {
                    st.shaper.state(gk).held += h.job.rcpts.len() as u64;
                }
                // A destination left with neither jobs nor connections goes.
                if st
                    .dests
                    .get(&h.dest)
                    .is_some_and(|d| d.conns == 0 && d.ready.is_empty())
                {
                    st.dests.remove(&h.dest);
                }
                tracing::debug!(msg = h.job.msg, until = h.until, why = %h.why, "held in the queue");
                jobs.push(h.job);
            }
            drop(st);
            release_jobs(inner, &jobs);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot hold jobs in the queue; they wait in memory");
            for h in holds.into_iter().rev() {
                st.dests.entry(h.dest).or_default().ready.push_front(h.job);
            }
        }
    }
}

/// Reads this period's warm-up use of each warming-up sender from the
/// store, once per period (a restart does not grant it again).
async fn load_warm_use(inner: &Arc<Inner>, config: &crate::config::Config, now_ms: i64) {
    let mut wanted = Vec::new();
    {
        let st = lock(&inner.state);
        for s in &config.senders {
            if let Some(w) = &s.warmup {
                let p = w.period_at(now_ms);
                if w.active(p) && st.shaper.warm_unloaded(&s.id, p) {
                    let mut scopes = vec![String::new()];
                    scopes.extend(w.groups.keys().cloned());
                    wanted.push((s.id.clone(), p, scopes));
                }
            }
        }
    }
    for (sender, p, scopes) in wanted {
        let (id, sc) = (sender.clone(), scopes.clone());
        let read = inner
            .store
            .read(move |v| {
                sc.iter()
                    .map(|s| Ok((s.clone(), v.warmup_used(&id, s, p)?)))
                    .collect::<Result<Vec<_>, StoreError>>()
            })
            .await;
        match read {
            Ok(used) => lock(&inner.state).shaper.warm_load(&sender, p, used),
            Err(e) => tracing::warn!(error = %e, %sender, "cannot read the warm-up use"),
        }
    }
}

/// Takes out of the ready lines the jobs to hold (see [`hold`]).
fn plan_holds(st: &mut State, config: &crate::config::Config, now_ms: i64) -> Vec<Hold> {
    let now = tokio::time::Instant::now();
    let shaping = &config.delivery.shaping;
    let State { dests, shaper, .. } = st;
    let mut holds = Vec::new();
    // Jobs kept per group so far (its line across its domains).
    let mut kept: HashMap<GroupKey, usize> = HashMap::new();
    for (key, dest) in dests.iter_mut() {
        if dest.ready.is_empty() {
            continue;
        }
        let Some(sender) = config.sender(&key.sender) else {
            continue;
        };
        if key.domain.is_empty() {
            // A relay: only a used-up warm-up allowance holds.
            if let WarmRoom::Exhausted { until, why } = shaper.warm_room(sender, "", now_ms) {
                for job in dest.ready.drain(..) {
                    let (dest, why) = (key.clone(), why.clone());
                    holds.push(Hold {
                        dest,
                        job,
                        until,
                        why,
                        group: None,
                    });
                }
            }
            continue;
        }
        let Some((gk, g)) = shaper.group_for(shaping, &key.domain, sender) else {
            continue;
        };
        let g = &g;
        let gs = shaper.state(&gk);
        let waiting = dest.ready.len();
        let mut take = |from: usize, until: &dyn Fn(usize) -> i64, why: &str| {
            for (j, job) in dest.ready.drain(from..).enumerate() {
                holds.push(Hold {
                    dest: key.clone(),
                    job,
                    until: until(j),
                    why: why.to_string(),
                    group: Some(gk.clone()),
                });
            }
        };
        if let Some(until) = gs.suspended(now) {
            let why = format!(
                "held: provider group `{}` is suspended by back-off rule `{}` until {}",
                g.name,
                gs.view(&gk, g, now).rule.unwrap_or_default(),
                chrono::DateTime::from_timestamp_millis(until)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default()
            );
            take(0, &|_| until, &why);
            continue;
        }
        let step = gs.interval(g);
        if let WarmRoom::Exhausted { until, why } = shaper.warm_room(sender, &g.name, now_ms) {
            take(0, &|_| until, &why);
            continue;
        }
        let Some(step) = step else {
            continue;
        };
        let horizon = (RATE_HORIZON.as_secs_f64() / step.as_secs_f64()).ceil() as usize;
        let seen = kept.entry(gk.clone()).or_default();
        let keep = horizon.max(1).saturating_sub(*seen).min(waiting);
        let first = *seen + keep;
        *seen += keep;
        if keep < waiting {
            let why = format!(
                "held: provider group `{}` sends at most one message every {} now; waiting for its turn",
                g.name,
                humantime::format_duration(Duration::from_millis(step.as_millis() as u64))
            );
            // The held line up behind each other (across domains and
            // rounds), each looked at again within HOLD_RECHECK: the rate
            // may recover meanwhile.
            let step_ms = i64::try_from(step.as_millis()).unwrap_or(i64::MAX).max(1);
            let from = now_ms.saturating_add(step_ms.saturating_mul(first as i64));
            let cap = now_ms.saturating_add(HOLD_RECHECK.as_millis() as i64);
            let gs = shaper.state(&gk);
            let times: Vec<i64> = (keep..waiting)
                .map(|_| gs.hold_slot(from, step_ms).min(cap))
                .collect();
            take(keep, &|j| times.get(j).copied().unwrap_or(cap), &why);
        }
    }
    holds
}

/// The jobs of message `m` from `sender`: its recipients due at `now`,
/// grouped by destination, at most [`MAX_RCPTS_PER_TRANSACTION`] per job,
/// in recipient order; and the indexes of the recipients taken. A sender
/// with a `bounce_domain` gives every recipient a job of its own, with its
/// VERP return path.
fn jobs_of(
    m: &QueuedMessage,
    sender: &Sender,
    keys: &crate::tokens::Keys,
    now: i64,
) -> (HashMap<DestKey, Vec<Job>>, Vec<usize>) {
    let per_rcpt = if sender.bounce_domain.is_some() {
        1
    } else {
        MAX_RCPTS_PER_TRANSACTION
    };
    let mut jobs: HashMap<DestKey, Vec<Job>> = HashMap::new();
    let mut rcpts = Vec::new();
    for (i, r) in m.recipients.iter().enumerate() {
        if !r.state.is_pending() || r.next_attempt.unwrap_or(m.created) > now {
            continue;
        }
        let key = DestKey {
            sender: sender.id.clone(),
            domain: if sender.relay.is_some() {
                String::new()
            } else {
                r.domain.clone()
            },
        };
        let list = jobs.entry(key).or_default();
        // RFC 5321 §4.5.3.1.8: servers need accept only 100 recipients per
        // transaction.
        if list.last().is_none_or(|j| j.rcpts.len() >= per_rcpt) {
            list.push(Job {
                msg: m.id,
                return_path: m.envelope_from(i, sender, keys),
                rcpts: Vec::new(),
                warm: None,
            });
        }
        if let Some(j) = list.last_mut() {
            j.rcpts.push((i, r.address.clone()));
        }
        rcpts.push(i);
    }
    (jobs, rcpts)
}

/// Messages whose sender left the config wait (an hour at a time) for it to
/// come back, rather than failing on a config mistake.
pub(super) async fn defer_orphans(inner: &Arc<Inner>, ids: Vec<u64>) {
    let now = now_ms(&inner.clock);
    let r = inner
        .store
        .write(move |t| {
            for id in ids {
                if let Some(mut m) = t.queued_message(id)? {
                    for r in m.recipients.iter_mut().filter(|r| r.state.is_pending()) {
                        r.next_attempt = Some(now.saturating_add(ORPHAN_WAIT_MS));
                        r.reply = Some(format!(
                            "the sender `{}` is not in the config; waiting for it to return",
                            m.sender
                        ));
                    }
                    t.put_message(&mut m, None)?;
                }
            }
            Ok(())
        })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "cannot defer messages of a removed sender");
    }
}

/// The connection limit a destination counts against.
fn limit_key(key: &DestKey) -> String {
    if key.domain.is_empty() {
        format!("relay:{}", key.sender)
    } else {
        key.domain.clone()
    }
}

/// Starts connection tasks for destinations with more ready jobs than
/// connections, as far as the limits allow; none once stopping. Returns the
/// destination domains whose provider group must be learned first (the
/// caller looks up their MX).
fn spawn_workers(inner: &Arc<Inner>) -> Vec<String> {
    let config = inner.config.get();
    let d = &config.delivery;
    let now = tokio::time::Instant::now();
    let now_ms = now_ms(&inner.clock);
    let mut st = lock(&inner.state);
    let mut resolve = Vec::new();
    // Checked under the state lock, and each task's guard is taken before
    // the lock is released: the scheduler's own guard covers the gap
    // between a stop and this check (see `Engine::run`).
    if inner.activity.is_stopping() {
        return resolve;
    }
    let keys: Vec<DestKey> = st
        .dests
        .iter()
        .filter(|(_, v)| v.ready.len() > v.conns)
        .map(|(k, _)| k.clone())
        .collect();
    let mut lanes = Vec::with_capacity(keys.len());
    for key in keys {
        let sender = config.sender(&key.sender);
        let group = match sender {
            Some(sender) if !key.domain.is_empty() => {
                if st.shaper.needs_lookup(&key.domain, now) {
                    resolve.push(key.domain.clone());
                }
                // Not started before its group is known.
                let Some(group) = st.shaper.group_for(&d.shaping, &key.domain, sender) else {
                    continue;
                };
                Some(group)
            }
            _ => None,
        };
        // A used-up warm-up allowance (of the group, or of all mail for a
        // relay): no connection; the hold pass holds its jobs.
        if let Some(sender) = sender
            && (group.is_some() || key.domain.is_empty())
        {
            let scope = group.as_ref().map_or("", |(_, g)| g.name.as_str());
            if !matches!(
                st.shaper.warm_room(sender, scope, now_ms),
                WarmRoom::Unlimited | WarmRoom::Left(..)
            ) {
                continue;
            }
        }
        let lane = Lane {
            dest: key.clone(),
            group,
        };
        let lk = limit_key(&key);
        let per_limit = match sender.and_then(|s| s.relay.as_ref()) {
            Some(r) if key.domain.is_empty() => r.max_connections,
            _ => d.max_connections_per_domain,
        };
        lanes.push((lane, lk, per_limit));
    }
    // Idle per-domain states of the default group are dropped (they would
    // pile up, one per domain ever sent to); the rest start the round
    // unstarved.
    st.shaper
        .groups
        .retain(|k, g| k.domain.is_none() || !g.idle(now));
    for g in st.shaper.groups.values_mut() {
        g.starved = false;
    }
    // Fewest connections first: a freed place of a group goes to the
    // domain that has least of it.
    lanes.sort_by_key(|(lane, _, _)| st.dests.get(&lane.dest).map_or(0, |d| d.conns));
    // One connection per destination per round, so that the domains behind
    // one provider share its connections evenly.
    let mut started = true;
    while started {
        started = false;
        for (lane, lk, per_limit) in &lanes {
            if st.total_conns >= d.max_connections {
                return resolve;
            }
            if start_one(inner, &mut st, lane, lk, *per_limit, now) {
                started = true;
            }
        }
    }
    resolve
}

/// Starts one more connection for `lane` if it has more ready jobs than
/// connections and its limits allow; marks its group starved when the
/// group's limit keeps a destination without any connection (lingering
/// connections of the group then close at once to make room).
fn start_one(
    inner: &Arc<Inner>,
    st: &mut State,
    lane: &Lane,
    lk: &str,
    per_limit: usize,
    now: tokio::time::Instant,
) -> bool {
    let wanted = st
        .dests
        .get(&lane.dest)
        .is_some_and(|d| d.ready.len() > d.conns);
    if !wanted {
        return false;
    }
    match &lane.group {
        Some((gk, g)) => {
            let gs = st.shaper.state(gk);
            if gs.suspended(now).is_some() {
                return false;
            }
            if gs.conns >= gs.conn_limit(g) {
                // Starved: a domain of the group has work and no connection
                // at all (fewer than it could use is not reason enough to
                // close another domain's: that would churn connections).
                if st.dests.get(&lane.dest).is_some_and(|d| d.conns == 0) {
                    st.shaper.state(gk).starved = true;
                }
                return false;
            }
            gs.conns += 1;
        }
        None => {
            let used = st.limit_conns.entry(lk.to_string()).or_default();
            if *used >= per_limit {
                return false;
            }
            *used += 1;
        }
    }
    if let Some(d) = st.dests.get_mut(&lane.dest) {
        d.conns += 1;
    }
    st.total_conns += 1;
    inner.connections.inc();
    spawn_connection(inner, lane.clone());
    true
}

/// Starts one connection task for `lane` (its counts are already taken).
fn spawn_connection(inner: &Arc<Inner>, lane: Lane) {
    let activity = inner.activity.guard("smtp connection");
    let inner = inner.clone();
    tokio::spawn(async move {
        // Dropped last (locals drop in reverse order): the drain hears of
        // the end only after the task let go of its store handle and its
        // connection counts.
        let _activity = activity;
        let inner = inner;
        // Released even if the task panics, so that the counters and
        // limits never drift.
        let _release = Release {
            inner: inner.clone(),
            lane: lane.clone(),
        };
        // Past the shutdown grace, a connection still stuck is abandoned
        // (its message stays queued for the next start), so that its store
        // handle goes and the store closes cleanly.
        tokio::select! {
            () = super::connection::run(&inner, &lane) => {}
            () = inner.abandon.cancelled() => {
                tracing::warn!(
                    destination = %lane.dest.domain,
                    sender = %lane.dest.sender,
                    "connection abandoned at shutdown; its message stays queued"
                );
            }
        }
    });
}

/// Learns the provider group of `domain` from its MX hosts, then wakes the
/// scheduler. A lookup that fails puts it in the default group for a
/// minute (the connection reports the failure itself).
pub(super) async fn learn_group(inner: Arc<Inner>, domain: String) {
    let config = inner.config.get();
    if config.delivery.capture.is_some() {
        // Nothing leaves the machine: no DNS either; the default group.
        let name = config.delivery.shaping.default.name.clone();
        lock(&inner.state)
            .shaper
            .learned(&domain, name, tokio::time::Instant::now());
        inner.wake.notify_one();
        return;
    }
    let found = inner.mx.hosts(&domain).await;
    let shaping = &config.delivery.shaping;
    let now = tokio::time::Instant::now();
    let (name, at) = match &found {
        Ok(hosts) => (
            shaping
                .group_of(hosts.iter().map(|h| h.name.as_str()))
                .name
                .clone(),
            now,
        ),
        Err(_) => (
            shaping.default.name.clone(),
            now.checked_sub(Duration::from_secs(3540)).unwrap_or(now),
        ),
    };
    tracing::debug!(%domain, group = %name, "provider group learned from MX");
    lock(&inner.state).shaper.learned(&domain, name, at);
    inner.wake.notify_one();
}

/// Gives a connection's place back when its task ends (or panics).
struct Release {
    inner: Arc<Inner>,
    lane: Lane,
}

impl Drop for Release {
    fn drop(&mut self) {
        release(&self.inner, &self.lane);
    }
}

fn release(inner: &Arc<Inner>, lane: &Lane) {
    let mut st = lock(&inner.state);
    let key = &lane.dest;
    match &lane.group {
        Some((gk, _)) => {
            let gs = st.shaper.state(gk);
            gs.conns = gs.conns.saturating_sub(1);
        }
        None => {
            let lk = limit_key(key);
            if let Some(n) = st.limit_conns.get_mut(&lk) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.limit_conns.remove(&lk);
                }
            }
        }
    }
    st.total_conns = st.total_conns.saturating_sub(1);
    if let Some(d) = st.dests.get_mut(key) {
        d.conns = d.conns.saturating_sub(1);
        if d.conns == 0 && d.ready.is_empty() {
            st.dests.remove(key);
        }
    }
    inner.connections.dec();
    drop(st);
    inner.wake.notify_one();
}

/// Takes the destination's next ready job, as the lane's group allows: none
/// once stopping (the jobs stay queued in the store and are sent after the
/// next start), while the group is suspended or over its connection limit
/// (after a back-off), or when the sender's warm-up allowance is used up;
/// at most the group's recipients per transaction (the rest goes back to
/// the head of the line), counted against the warm-up allowance.
pub(super) fn pop_job(inner: &Inner, lane: &Lane) -> Option<Job> {
    let config = inner.config.get();
    let now = tokio::time::Instant::now();
    let now_ms = now_ms(&inner.clock);
    let mut st = lock(&inner.state);
    if inner.activity.is_stopping() {
        return None;
    }
    let mut max_rcpts = MAX_RCPTS_PER_TRANSACTION;
    let mut warm = None;
    let mut group_name = "";
    if let Some((gk, g)) = &lane.group {
        let gs = st.shaper.state(gk);
        if gs.suspended(now).is_some() || gs.conns > gs.conn_limit(g) {
            return None;
        }
        max_rcpts = g.recipients_per_transaction;
        group_name = &g.name;
    }
    // MX delivery counts against its group and all mail; a relay against
    // all mail.
    if lane.group.is_some() || lane.dest.domain.is_empty() {
        let sender = config.sender(&lane.dest.sender)?;
        match st.shaper.warm_room(sender, group_name, now_ms) {
            WarmRoom::Unlimited => {}
            WarmRoom::Left(n, u) => {
                max_rcpts = max_rcpts.min(usize::try_from(n).unwrap_or(usize::MAX));
                warm = Some(u);
            }
            WarmRoom::Exhausted { .. } | WarmRoom::Unknown => return None,
        }
    }
    let State {
        dests,
        active,
        shaper,
        ..
    } = &mut *st;
    let dest = dests.get_mut(&lane.dest)?;
    let mut job = dest.ready.pop_front()?;
    if job.rcpts.len() > max_rcpts.max(1) {
        let rest = job.rcpts.split_off(max_rcpts.max(1));
        dest.ready.push_front(Job {
            msg: job.msg,
            return_path: job.return_path.clone(),
            rcpts: rest,
            warm: None,
        });
        if let Some(a) = active.get_mut(&job.msg) {
            a.jobs_left += 1;
        }
    }
    if let Some(mut u) = warm {
        u.n = job.rcpts.len() as u64;
        shaper.warm_take(&u, false);
        job.warm = Some(u);
    }
    Some(job)
}

/// Takes every ready job of a destination (when it cannot be reached);
/// none once stopping: waiting jobs are left queued, not deferred.
pub(super) fn drain_jobs(inner: &Inner, key: &DestKey) -> Vec<Job> {
    let mut st = lock(&inner.state);
    if inner.activity.is_stopping() {
        return Vec::new();
    }
    st.dests
        .get_mut(key)
        .map(|d| d.ready.drain(..).collect())
        .unwrap_or_default()
}

/// Puts a job back at the head of its destination's queue (not sent: its
/// warm-up count is given back).
pub(super) fn unpop_job(inner: &Inner, key: &DestKey, mut job: Job) {
    let mut st = lock(&inner.state);
    if let Some(u) = job.warm.take() {
        st.shaper.warm_take(&u, true);
    }
    st.dests
        .entry(key.clone())
        .or_default()
        .ready
        .push_front(job);
    drop(st);
    inner.jobs_added.notify_waiters();
}

/// Gives back `n` of a job's warm-up count (recipients not sent after all).
pub(super) fn warm_give_back(inner: &Inner, job: &mut Job, n: u64) {
    let Some(u) = job.warm.as_mut() else {
        return;
    };
    let n = n.min(u.n);
    let back = WarmUse { n, ..u.clone() };
    u.n -= n;
    lock(&inner.state).shaper.warm_take(&back, true);
}

/// Gives back the warm-up count of a job that was not sent (its connection
/// never had a session).
pub(super) fn unreserve_warm(inner: &Inner, job: &mut Job) {
    if let Some(u) = job.warm.take() {
        lock(&inner.state).shaper.warm_take(&u, true);
    }
}

/// Whether no connection task of the destination has a working session:
/// then the destination is unreachable as a whole.
pub(super) fn none_live(inner: &Inner, key: &DestKey) -> bool {
    lock(&inner.state)
        .dests
        .get(key)
        .is_none_or(|d| d.live == 0)
}

/// Counts a connection task's working session in (`up`) or out.
pub(super) fn set_live(inner: &Inner, key: &DestKey, up: bool) {
    if let Some(d) = lock(&inner.state).dests.get_mut(key) {
        if up {
            d.live += 1;
        } else {
            d.live = d.live.saturating_sub(1);
        }
    }
}

/// A reserved send slot: when, and what it took from the sender's and the
/// group's lines (to give back if it goes unused).
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    /// When the message may go.
    pub(super) at: tokio::time::Instant,
    group: Option<(tokio::time::Instant, Duration)>,
    sender: Option<(tokio::time::Instant, Duration)>,
}

/// Reserves the next send slot under the sender's rate limits and the
/// lane's group's (the later of the two); `None`: no limit.
pub(super) fn reserve_slot(inner: &Inner, sender: &Sender, lane: &Lane) -> Option<Slot> {
    let mut st = lock(&inner.state);
    let now = tokio::time::Instant::now();
    let group = lane
        .group
        .as_ref()
        .and_then(|(gk, g)| st.shaper.state(gk).reserve(g, now));
    let own = rate_step(sender).map(|step| {
        let line = st.rate_next.entry(sender.id.clone()).or_default();
        (line.take(now, step), step)
    });
    let at = match (group, own) {
        (Some(a), Some(b)) => a.0.max(b.0),
        (Some(a), None) | (None, Some(a)) => a.0,
        (None, None) => return None,
    };
    Some(Slot {
        at,
        group,
        sender: own,
    })
}

/// Gives back a slot that was not used (the connection closed, or found no
/// job), so that it is not lost to the rate.
pub(super) fn give_back_slot(inner: &Inner, sender: &Sender, lane: &Lane, slot: &Slot) {
    let mut st = lock(&inner.state);
    if let (Some((gk, _)), Some(taken)) = (&lane.group, slot.group) {
        st.shaper.state(gk).give_back(taken);
    }
    if let (Some(taken), Some(line)) = (slot.sender, st.rate_next.get_mut(&sender.id)) {
        line.give_back(taken);
    }
}

/// What a connection heard from a server of its lane's group: a reply that
/// matches a back-off rule acts on the group; a delivery may take one
/// recovery step.
pub(super) fn observe(inner: &Inner, lane: &Lane, replies: &[&str], delivered: bool) {
    let Some((gk, g)) = &lane.group else {
        return;
    };
    let config = inner.config.get();
    let now = tokio::time::Instant::now();
    let now_ms = now_ms(&inner.clock);
    let mut st = lock(&inner.state);
    let gs = st.shaper.state(gk);
    for reply in replies {
        if let Some(rule) = config.delivery.shaping.rule_for(&g.name, reply)
            && let Some(did) = gs.back_off(rule, reply, g, now, now_ms)
        {
            inner.backoffs(&g.name, &rule.name);
            tracing::warn!(group = %g.name, domain = %lane.dest.domain, rule = %rule.name, %reply, "back-off: {did}");
        }
    }
    if delivered && let Some(did) = gs.succeeded(g, now) {
        tracing::info!(group = %g.name, domain = %lane.dest.domain, "recovery: {did}");
    }
}

/// Whether another destination of `lane`'s group waits for a connection
/// the group's limit does not allow.
pub(super) fn starved(inner: &Inner, lane: &Lane) -> bool {
    let Some((gk, _)) = &lane.group else {
        return false;
    };
    lock(&inner.state)
        .shaper
        .groups
        .get(gk)
        .is_some_and(|g| g.starved)
}

/// Whether a connection of `lane` should stop after its transaction: its
/// group was suspended or capped below its connections meanwhile.
pub(super) fn should_close(inner: &Inner, lane: &Lane) -> bool {
    let Some((gk, g)) = &lane.group else {
        return false;
    };
    let now = tokio::time::Instant::now();
    let mut st = lock(&inner.state);
    let gs = st.shaper.state(gk);
    gs.suspended(now).is_some() || gs.conns > gs.conn_limit(g)
}

/// The least time between two messages of `sender` (the stricter of its
/// limits per second and per hour); `None` without a limit.
fn rate_step(sender: &Sender) -> Option<Duration> {
    crate::config::shaping::interval(sender.rate_per_second, sender.rate_per_hour)
}

/// Takes finished jobs out of the active set; a message leaves it with its
/// last job.
pub(super) fn release_jobs(inner: &Inner, jobs: &[Job]) {
    let mut st = lock(&inner.state);
    for job in jobs {
        let id = job.msg;
        if let Some(a) = st.active.get_mut(&id) {
            a.jobs_left = a.jobs_left.saturating_sub(1);
            a.rcpts.retain(|r| !job.rcpts.iter().any(|(i, _)| i == r));
            if a.jobs_left == 0 {
                st.active.remove(&id);
                // Room in the active set: let the scheduler load more.
                inner.wake.notify_one();
            }
        }
    }
}

/// Takes recipients out of a job's message in the status view (they were
/// taken out of the queue while the job waited).
pub(super) fn forget_rcpts(inner: &Inner, msg: u64, gone: &[(usize, String)]) {
    let mut st = lock(&inner.state);
    if let Some(a) = st.active.get_mut(&msg) {
        a.rcpts.retain(|r| !gone.iter().any(|(i, _)| i == r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Relay, RelayTls};
    use crate::delivery::model::{RcptState, Recipient};

    fn sender(relay: bool) -> Sender {
        Sender {
            id: "shop".into(),
            from: "Shop <news@shop.example>".into(),
            from_address: "news@shop.example".into(),
            domain: "shop.example".into(),
            return_path: "bounce@shop.example".into(),
            bounce_domain: None,
            helo: "mail.shop.example".into(),
            require_tls: false,
            rate_per_second: None,
            rate_per_hour: None,
            unsubscribe_mailto: None,
            dkim: Vec::new(),
            relay: relay.then(|| Relay {
                host: "relay.example".into(),
                port: 587,
                tls: RelayTls::StartTls,
                auth: None,
                ca_certs: Vec::new(),
                max_connections: 4,
            }),
            source_ip: None,
            warmup: None,
        }
    }

    fn message(recipients: Vec<Recipient>) -> QueuedMessage {
        QueuedMessage {
            id: 3,
            sender: "shop".into(),
            return_path: "bounce@shop.example".into(),
            message_id: "3@shop.example".into(),
            created: 100,
            size: 1,
            source: "api".into(),
            recipients,
            due: None,
            finished: None,
            purged: None,
            send: None,
            kind: None,
        }
    }

    fn keys() -> crate::tokens::Keys {
        crate::tokens::Keys::new(b"0123456789abcdef0123456789abcdef", &[])
    }

    fn key(domain: &str) -> DestKey {
        DestKey {
            sender: "shop".into(),
            domain: domain.into(),
        }
    }

    /// Jobs per recipient domain (one destination for a relay), at most 100
    /// recipients each, only recipients pending and due.
    #[test]
    fn due_recipients_become_jobs_per_destination_of_at_most_100() {
        let mut rs: Vec<Recipient> = (0..150)
            .map(|i| Recipient::queued(format!("u{i}@a.example"), None))
            .collect();
        rs.push(Recipient::queued("x@b.example".into(), None));
        let mut later = Recipient::queued("later@b.example".into(), None);
        later.state = RcptState::Deferred;
        later.next_attempt = Some(1000);
        rs.push(later);
        let mut done = Recipient::queued("done@b.example".into(), None);
        done.state = RcptState::Delivered;
        rs.push(done);
        let m = message(rs);

        let (jobs, taken) = jobs_of(&m, &sender(false), &keys(), 500);
        assert_eq!(taken, (0..151).collect::<Vec<_>>());
        let a = &jobs[&key("a.example")];
        assert_eq!(
            a.iter().map(|j| j.rcpts.len()).collect::<Vec<_>>(),
            [100, 50]
        );
        assert_eq!(a[1].rcpts[0], (100, "u100@a.example".to_string()));
        assert!(
            a.iter()
                .all(|j| j.msg == 3 && j.return_path == "bounce@shop.example")
        );
        let b = &jobs[&key("b.example")];
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].rcpts, [(150, "x@b.example".to_string())]);

        // Once the deferred one is due, it goes too.
        let (jobs, _) = jobs_of(&m, &sender(false), &keys(), 1000);
        assert_eq!(jobs[&key("b.example")][0].rcpts.len(), 2);

        // A relay takes every domain: one destination.
        let (jobs, _) = jobs_of(&m, &sender(true), &keys(), 500);
        assert_eq!(jobs.keys().collect::<Vec<_>>(), [&key("")]);
        assert_eq!(limit_key(&key("")), "relay:shop");
        assert_eq!(limit_key(&key("a.example")), "a.example");
    }

    /// With a bounce domain every recipient is a transaction of its own,
    /// its MAIL FROM the VERP address naming the message and the recipient.
    #[test]
    fn a_bounce_domain_gives_each_recipient_its_verp_return_path() {
        let rs = (0..3)
            .map(|i| Recipient::queued(format!("u{i}@a.example"), None))
            .collect();
        let m = message(rs);
        let mut s = sender(false);
        s.bounce_domain = Some("bounces.shop.example".into());
        let (jobs, taken) = jobs_of(&m, &s, &keys(), 500);
        assert_eq!(taken, [0, 1, 2]);
        let a = &jobs[&key("a.example")];
        assert_eq!(a.len(), 3);
        for (i, j) in a.iter().enumerate() {
            assert_eq!(j.rcpts, [(i, format!("u{i}@a.example"))]);
            let token = j
                .return_path
                .strip_prefix("b-")
                .and_then(|r| r.strip_suffix("@bounces.shop.example"));
            let verified = token.and_then(|t| keys().verify_bounce(t));
            assert_eq!(
                verified,
                Some(crate::tokens::BounceRef {
                    queue_id: 3,
                    rcpt: i as u32,
                    day: 0
                }),
                "{}",
                j.return_path
            );
        }
    }

    #[test]
    fn the_rate_step_is_the_stricter_limit() {
        let mut s = sender(false);
        assert_eq!(rate_step(&s), None);
        s.rate_per_second = Some(10.0);
        assert_eq!(rate_step(&s), Some(Duration::from_millis(100)));
        s.rate_per_hour = Some(360.0);
        assert_eq!(rate_step(&s), Some(Duration::from_secs(10)));
    }
}
