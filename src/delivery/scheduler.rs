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
use crate::config::Sender;
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
    rate_next: HashMap<String, tokio::time::Instant>,
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
        let more = match fill(&inner).await {
            Ok(more) => more,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the queue; retrying in a second");
                false
            }
        };
        spawn_workers(&inner);
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
/// connections, as far as the limits allow; none once stopping.
fn spawn_workers(inner: &Arc<Inner>) {
    let config = inner.config.get();
    let d = &config.delivery;
    let mut st = lock(&inner.state);
    // Checked under the state lock, and each task's guard is taken before
    // the lock is released: the scheduler's own guard covers the gap
    // between a stop and this check (see `Engine::run`).
    if inner.activity.is_stopping() {
        return;
    }
    let keys: Vec<DestKey> = st
        .dests
        .iter()
        .filter(|(_, v)| v.ready.len() > v.conns)
        .map(|(k, _)| k.clone())
        .collect();
    for key in keys {
        let lk = limit_key(&key);
        let per_limit = if key.domain.is_empty() {
            config
                .sender(&key.sender)
                .and_then(|s| s.relay.as_ref())
                .map_or(d.max_connections_per_domain, |r| r.max_connections)
        } else {
            d.max_connections_per_domain
        };
        loop {
            if st.total_conns >= d.max_connections {
                return;
            }
            let used = st.limit_conns.get(&lk).copied().unwrap_or(0);
            let Some(dest) = st.dests.get_mut(&key) else {
                break;
            };
            if used >= per_limit || dest.ready.len() <= dest.conns {
                break;
            }
            dest.conns += 1;
            *st.limit_conns.entry(lk.clone()).or_default() += 1;
            st.total_conns += 1;
            inner.connections.inc();
            let activity = inner.activity.guard("smtp connection");
            let inner = inner.clone();
            let key = key.clone();
            tokio::spawn(async move {
                // Dropped last (locals drop in reverse order): the drain
                // hears of the end only after the task let go of its store
                // handle and its connection counts.
                let _activity = activity;
                let inner = inner;
                // Released even if the task panics, so that the counters
                // and limits never drift.
                let _release = Release {
                    inner: inner.clone(),
                    key: key.clone(),
                };
                // Past the shutdown grace, a connection still stuck is
                // abandoned (its message stays queued for the next start),
                // so that its store handle goes and the store closes cleanly.
                tokio::select! {
                    () = super::connection::run(&inner, &key) => {}
                    () = inner.abandon.cancelled() => {
                        tracing::warn!(
                            destination = %key.domain,
                            sender = %key.sender,
                            "connection abandoned at shutdown; its message stays queued"
                        );
                    }
                }
            });
        }
    }
}

/// Gives a connection's place back when its task ends (or panics).
struct Release {
    inner: Arc<Inner>,
    key: DestKey,
}

impl Drop for Release {
    fn drop(&mut self) {
        release(&self.inner, &self.key);
    }
}

fn release(inner: &Arc<Inner>, key: &DestKey) {
    let mut st = lock(&inner.state);
    let lk = limit_key(key);
    if let Some(n) = st.limit_conns.get_mut(&lk) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            st.limit_conns.remove(&lk);
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

/// Takes the destination's next ready job; none once stopping (the jobs
/// stay queued in the store and are sent after the next start).
pub(super) fn pop_job(inner: &Inner, key: &DestKey) -> Option<Job> {
    let mut st = lock(&inner.state);
    if inner.activity.is_stopping() {
        return None;
    }
    st.dests.get_mut(key).and_then(|d| d.ready.pop_front())
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

/// Puts a job back at the head of its destination's queue.
pub(super) fn unpop_job(inner: &Inner, key: &DestKey, job: Job) {
    lock(&inner.state)
        .dests
        .entry(key.clone())
        .or_default()
        .ready
        .push_front(job);
    inner.jobs_added.notify_waiters();
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

/// Reserves the sender's next send slot under its rate limits and returns
/// when it is (`None`: no limit).
pub(super) fn reserve_slot(inner: &Inner, sender: &Sender) -> Option<tokio::time::Instant> {
    let step = rate_step(sender)?;
    let mut st = lock(&inner.state);
    let now = tokio::time::Instant::now();
    let slot = st
        .rate_next
        .get(&sender.id)
        .copied()
        .unwrap_or(now)
        .max(now);
    st.rate_next.insert(sender.id.clone(), slot + step);
    Some(slot)
}

/// The least time between two messages of `sender` (the stricter of its
/// limits per second and per hour); `None` without a limit.
fn rate_step(sender: &Sender) -> Option<Duration> {
    let mut interval = 0f64;
    if let Some(r) = sender.rate_per_second {
        interval = interval.max(1.0 / r);
    }
    if let Some(r) = sender.rate_per_hour {
        interval = interval.max(3600.0 / r);
    }
    Duration::try_from_secs_f64(interval)
        .ok()
        .filter(|d| !d.is_zero())
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
