//! The delivery engine: a scheduler task that loads due messages from the
//! queue into a bounded in-memory "active" set, grouped by destination, and
//! connection tasks that deliver them.
//!
//! - A destination is (sender, recipient domain) for MX delivery, or (sender)
//!   for a relay. Each destination has a FIFO of ready jobs (one job = one
//!   message to that destination's recipients); connection tasks are started
//!   while a destination has more jobs than connections and the limits per
//!   domain (or relay) and in total allow.
//! - A connection task resolves MX hosts, connects to the first that answers,
//!   and sends job after job over the one connection (up to
//!   `messages_per_connection`), then QUITs.
//! - After each transaction the outcome is committed (delivered, deferred
//!   with the next attempt, failed with a bounce class) before the task takes
//!   its next job. "In flight" is never stored: after a crash the stored
//!   state is still queued/deferred, so the message is sent again. The only
//!   possible duplicates are therefore transactions whose 250 arrived but
//!   whose commit did not happen: at most one per open connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::bounce;
use super::model::{BounceClass, NotSent, QueuedMessage, RcptState};
use super::mx::{Mx, MxError};
use super::smtp::{self, RcptResult, Reply, Session, Target, TlsMode};
use crate::clock::Clock;
use crate::config::{Config, Current, RelayTls, Sender};
use crate::contacts::model::{ConsentSource, ConsentState};
use crate::contacts::{self, ConsentChange, ContactUpdate};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::send::model::{Counter, SendKind, SendRef};
use crate::store::ReadTables as _;
use crate::store::{Store, StoreError, WriteTables};

/// Most messages held in memory for delivery at once.
const ACTIVE_MAX: usize = 5000;
/// Least time between two scans of the due index.
const FILL_INTERVAL: Duration = Duration::from_millis(50);
/// How long an idle connection waits for more work before it QUITs.
const LINGER: Duration = Duration::from_millis(500);
/// Recipients per SMTP transaction.
const MAX_RCPTS_PER_TRANSACTION: usize = 100;
/// A connection whose sender's rate limit would keep it idle longer than
/// this closes instead (servers drop idle sessions after a few minutes).
const MAX_RATE_WAIT: Duration = Duration::from_secs(30);

/// A delivery destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DestKey {
    sender: String,
    /// Recipient domain; empty for a relay (which takes every domain).
    domain: String,
}

/// One message to one destination's recipients.
#[derive(Debug)]
struct Job {
    msg: u64,
    return_path: String,
    rcpts: Vec<(usize, String)>,
}

#[derive(Default)]
struct Dest {
    ready: VecDeque<Job>,
    conns: usize,
    /// Connection tasks that got a working session.
    live: usize,
}

struct Active {
    jobs_left: usize,
    /// (recipient index) → in flight; for the status view.
    rcpts: Vec<usize>,
    domain_of: Vec<String>,
}

#[derive(Default)]
struct State {
    active: HashMap<u64, Active>,
    dests: HashMap<DestKey, Dest>,
    /// Open connections per recipient domain (MX) or relay (`relay:ID`).
    limit_conns: HashMap<String, usize>,
    total_conns: usize,
    /// Next free send slot per sender (rate limits), as an instant.
    rate_next: HashMap<String, tokio::time::Instant>,
    stopping: bool,
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 250 after DATA.
    Delivered(String),
    /// A temporary failure.
    Temporary(String),
    /// A permanent failure, with its class.
    Permanent(String, BounceClass),
}

/// A relay's TLS settings: sender id and the CA certificates it trusts.
type RelayTlsKey = (String, Vec<Vec<u8>>);

struct Inner {
    store: Store,
    config: Arc<Current>,
    clock: Clock,
    mx: Mx,
    mx_tls: tokio_rustls::TlsConnector,
    relay_tls: Mutex<HashMap<RelayTlsKey, tokio_rustls::TlsConnector>>,
    state: Mutex<State>,
    wake: Notify,
    new_work: Notify,
    delivered: prometheus_client::metrics::counter::Counter,
    deferred: prometheus_client::metrics::counter::Counter,
    failed: prometheus_client::metrics::counter::Counter,
    bounces: prometheus_client::metrics::family::Family<
        crate::metrics::BounceLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    connections: prometheus_client::metrics::gauge::Gauge,
}

/// A handle to the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A recipient in flight, for the status view.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// Queue id.
    pub msg: u64,
    /// Recipient index.
    pub rcpt: usize,
    /// Its domain.
    pub domain: String,
}

impl Engine {
    /// Builds the engine (resolver, TLS settings). Call [`Engine::run`] to start it.
    pub fn new(
        store: Store,
        config: Arc<Current>,
        clock: Clock,
        metrics: &Metrics,
    ) -> Result<Engine, String> {
        let c = config.get();
        let mx = Mx::new(c.delivery.nameserver)?;
        let mx_tls = smtp::mx_connector()?;
        let outcome = |o: &'static str| {
            metrics
                .delivery
                .get_or_create(&OutcomeLabels { outcome: o })
                .clone()
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                store,
                config,
                clock,
                mx,
                mx_tls,
                relay_tls: Mutex::new(HashMap::new()),
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                new_work: Notify::new(),
                delivered: outcome("delivered"),
                deferred: outcome("deferred"),
                failed: outcome("failed"),
                bounces: metrics.bounces.clone(),
                connections: metrics.smtp_connections.clone(),
            }),
        })
    }

    /// Tells the scheduler that messages were queued or made due.
    pub fn notify(&self) {
        self.inner.new_work.notify_one();
    }

    /// Recipients being delivered right now.
    pub fn in_flight(&self) -> Vec<InFlight> {
        let st = lock(&self.inner.state);
        let mut out = Vec::new();
        for (id, a) in &st.active {
            for &r in &a.rcpts {
                out.push(InFlight {
                    msg: *id,
                    rcpt: r,
                    domain: a.domain_of.get(r).cloned().unwrap_or_default(),
                });
            }
        }
        out
    }

    /// Open SMTP connections.
    pub fn connections(&self) -> usize {
        lock(&self.inner.state).total_conns
    }

    /// The scheduler loop; returns after [`Engine::stop`].
    pub async fn run(self) {
        let inner = self.inner.clone();
        let mut last_fill = tokio::time::Instant::now() - FILL_INTERVAL;
        loop {
            if lock(&inner.state).stopping {
                break;
            }
            let since = last_fill.elapsed();
            if since < FILL_INTERVAL {
                tokio::time::sleep(FILL_INTERVAL - since).await;
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
                    _ = inner.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            } else {
                tokio::select! {
                    _ = inner.new_work.notified() => {}
                    _ = inner.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// Stops starting new transactions and waits (up to `grace`) for those
    /// under way to finish and be recorded.
    pub async fn stop(&self, grace: Duration) {
        {
            let mut st = lock(&self.inner.state);
            st.stopping = true;
            for d in st.dests.values_mut() {
                d.ready.clear();
            }
        }
        self.inner.wake.notify_waiters();
        self.inner.new_work.notify_one();
        let deadline = tokio::time::Instant::now() + grace;
        while lock(&self.inner.state).total_conns > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn now_ms(clock: &Clock) -> i64 {
    clock.now().timestamp_millis()
}

/// Loads due messages into the active set. Returns whether more were due
/// than there was room for.
async fn fill(inner: &Arc<Inner>) -> Result<bool, StoreError> {
    let (skip, room) = {
        let st = lock(&inner.state);
        if st.stopping {
            return Ok(false);
        }
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
                    if !unsendable(&m, |c| Ok(v.contact(c)?.map(|c| c.consent)))?.is_empty() {
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
                // RFC 5321 §4.5.3.1.8: servers need accept only 100
                // recipients per transaction.
                if list
                    .last()
                    .is_none_or(|j| j.rcpts.len() >= MAX_RCPTS_PER_TRANSACTION)
                {
                    list.push(Job {
                        msg: m.id,
                        return_path: m.return_path.clone(),
                        rcpts: Vec::new(),
                    });
                }
                if let Some(j) = list.last_mut() {
                    j.rcpts.push((i, r.address.clone()));
                }
                rcpts.push(i);
            }
            if jobs.is_empty() {
                continue;
            }
            st.active.insert(
                m.id,
                Active {
                    jobs_left: jobs.values().map(Vec::len).sum(),
                    rcpts,
                    domain_of: m.recipients.iter().map(|r| r.domain.clone()).collect(),
                },
            );
            for (key, list) in jobs {
                st.dests.entry(key).or_default().ready.extend(list);
            }
        }
    }
    if !orphans.is_empty() {
        defer_orphans(inner, orphans).await;
    }
    Ok(more)
}

/// Messages whose sender left the config wait (an hour at a time) for it to
/// come back, rather than failing on a config mistake.
async fn defer_orphans(inner: &Arc<Inner>, ids: Vec<u64>) {
    let now = now_ms(&inner.clock);
    let r = inner
        .store
        .write(move |t| {
            for id in ids {
                if let Some(mut m) = t.queued_message(id)? {
                    for r in m.recipients.iter_mut().filter(|r| r.state.is_pending()) {
                        r.next_attempt = Some(now.saturating_add(3_600_000));
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

fn spawn_workers(inner: &Arc<Inner>) {
    let config = inner.config.get();
    let d = &config.delivery;
    let mut st = lock(&inner.state);
    if st.stopping {
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
            let inner2 = inner.clone();
            let key2 = key.clone();
            tokio::spawn(async move {
                // Released even if the task panics, so that the counters
                // and limits never drift.
                let _guard = Release {
                    inner: inner2.clone(),
                    key: key2.clone(),
                };
                connection(&inner2, &key2).await;
            });
        }
    }
}

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

fn pop_job(inner: &Inner, key: &DestKey) -> Option<Job> {
    let mut st = lock(&inner.state);
    if st.stopping {
        return None;
    }
    st.dests.get_mut(key).and_then(|d| d.ready.pop_front())
}

/// Takes every ready job of a destination (when it cannot be reached).
fn drain_jobs(inner: &Inner, key: &DestKey) -> Vec<Job> {
    let mut st = lock(&inner.state);
    st.dests
        .get_mut(key)
        .map(|d| d.ready.drain(..).collect())
        .unwrap_or_default()
}

/// Whether no connection task of the destination has a working session:
/// then the destination is unreachable as a whole.
fn none_live(inner: &Inner, key: &DestKey) -> bool {
    lock(&inner.state)
        .dests
        .get(key)
        .is_none_or(|d| d.live == 0)
}

fn set_live(inner: &Inner, key: &DestKey, up: bool) {
    if let Some(d) = lock(&inner.state).dests.get_mut(key) {
        if up {
            d.live += 1;
        } else {
            d.live = d.live.saturating_sub(1);
        }
    }
}

/// Puts a job back at the head of its destination's queue.
fn unpop_job(inner: &Inner, key: &DestKey, job: Job) {
    lock(&inner.state)
        .dests
        .entry(key.clone())
        .or_default()
        .ready
        .push_front(job);
}

async fn wait_for_job(inner: &Inner, key: &DestKey) -> Option<Job> {
    let deadline = tokio::time::Instant::now() + LINGER;
    loop {
        if let Some(j) = pop_job(inner, key) {
            return Some(j);
        }
        if lock(&inner.state).stopping || tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reserves the sender's next send slot under its rate limits and returns
/// when it is (`None`: no limit).
fn reserve_slot(inner: &Inner, sender: &Sender) -> Option<tokio::time::Instant> {
    let mut interval = 0f64;
    if let Some(r) = sender.rate_per_second {
        interval = interval.max(1.0 / r);
    }
    if let Some(r) = sender.rate_per_hour {
        interval = interval.max(3600.0 / r);
    }
    let step = Duration::try_from_secs_f64(interval)
        .ok()
        .filter(|d| !d.is_zero())?;
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

/// The candidate servers of a destination.
async fn targets(
    inner: &Inner,
    config: &Config,
    sender: &Sender,
    key: &DestKey,
) -> Result<Vec<Target>, MxError> {
    let d = &config.delivery;
    if let Some(relay) = &sender.relay {
        let connector = {
            let mut cache = lock(&inner.relay_tls);
            // Keyed by the CA certificates too, so that a reload with a new
            // ca_file takes effect.
            let cache_key = (sender.id.clone(), relay.ca_certs.clone());
            match cache.get(&cache_key) {
                Some(c) => c.clone(),
                None => {
                    let c = smtp::relay_connector(&relay.ca_certs).map_err(MxError::Temporary)?;
                    cache.insert(cache_key, c.clone());
                    c
                }
            }
        };
        let addrs = tokio::net::lookup_host((relay.host.as_str(), relay.port))
            .await
            .map_err(|e| {
                MxError::Temporary(format!("cannot resolve the relay {}: {e}", relay.host))
            })?;
        let tls = match relay.tls {
            RelayTls::StartTls => TlsMode::Required,
            RelayTls::Implicit => TlsMode::Implicit,
            RelayTls::None => TlsMode::Off,
        };
        return Ok(addrs
            .map(|addr| Target {
                addr,
                host: relay.host.clone(),
                helo: sender.helo.clone(),
                tls,
                auth: relay.auth.clone(),
                connector: connector.clone(),
                connect_timeout: d.connect_timeout,
                command_timeout: d.command_timeout,
            })
            .collect());
    }
    let hosts = inner.mx.hosts(&key.domain).await?;
    let tls = if sender.require_tls || d.require_tls_domains.contains(&key.domain) {
        TlsMode::Required
    } else {
        TlsMode::Opportunistic
    };
    Ok(hosts
        .into_iter()
        .flat_map(|h| {
            let name = h.name.clone();
            h.addrs.into_iter().map(move |ip| (name.clone(), ip))
        })
        .map(|(host, ip)| Target {
            addr: std::net::SocketAddr::new(ip, d.smtp_port),
            host,
            helo: sender.helo.clone(),
            tls,
            auth: None,
            connector: inner.mx_tls.clone(),
            connect_timeout: d.connect_timeout,
            command_timeout: d.command_timeout,
        })
        .collect())
}

/// One connection task.
async fn connection(inner: &Arc<Inner>, key: &DestKey) {
    let config = inner.config.get();
    let Some(sender) = config.sender(&key.sender).cloned() else {
        // The sender left the config (reload) after its jobs were queued:
        // the same wait as for messages loaded without a sender.
        let jobs = drain_jobs(inner, key);
        defer_orphans(inner, jobs.iter().map(|j| j.msg).collect()).await;
        release_jobs(inner, &jobs);
        return;
    };
    // Wait for the rate limit before connecting, not while holding a session.
    if let Some(at) = reserve_slot(inner, &sender) {
        tokio::time::sleep_until(at).await;
    }
    let Some(first) = pop_job(inner, key) else {
        return;
    };
    let found = match targets(inner, &config, &sender, key).await {
        Ok(t) if t.is_empty() => Err(MxError::Temporary(format!(
            "451 4.4.4 no address to deliver to for {}",
            key.domain
        ))),
        other => other,
    };
    let targets = match found {
        Ok(t) => t,
        Err(e) => {
            // The whole destination shares this answer.
            let mut jobs = drain_jobs(inner, key);
            jobs.insert(0, first);
            let outcome = match e {
                MxError::Permanent(m) => Outcome::Permanent(m, BounceClass::Hard),
                MxError::Temporary(m) => Outcome::Temporary(m),
            };
            for j in jobs {
                finish_job(inner, &config, j, None, |_| outcome.clone()).await;
            }
            return;
        }
    };
    let mut session = None;
    let mut last_error = Reply {
        code: 0,
        text: format!("no server for {}", key.domain),
    };
    for t in &targets {
        match Session::connect(t).await {
            Ok(s) => {
                session = Some(s);
                break;
            }
            Err(e) => {
                tracing::debug!(host = %t.host, addr = %t.addr, error = %e.reply.text, "cannot use this server; trying the next");
                last_error = e.reply;
            }
        }
    }
    let Some(mut session) = session else {
        // Unreachable: defer what this connection took, and everything
        // waiting unless another connection to the destination works.
        let mut jobs = if none_live(inner, key) {
            drain_jobs(inner, key)
        } else {
            Vec::new()
        };
        jobs.insert(0, first);
        // Even a 5xx greeting or EHLO is a reason to retry later (as
        // Postfix does): it is about the connection, not the recipients.
        let text = last_error.text.clone();
        for j in jobs {
            finish_job(inner, &config, j, None, |_| {
                Outcome::Temporary(text.clone())
            })
            .await;
        }
        return;
    };
    set_live(inner, key, true);
    let host = session.host.clone();
    let mut job = Some(first);
    let mut sent = 0usize;
    let mut usable = true;
    while let Some(mut j) = job.take() {
        let body = {
            let id = j.msg;
            inner
                .store
                .read(move |v| Ok((v.message_body(id)?, v.queued_message(id)?)))
                .await
        };
        let body = match body {
            Ok((Some(b), Some(m))) => {
                // Recipients taken out since the message was loaded (erased,
                // purged) are not sent.
                let gone: Vec<(usize, String)> = j
                    .rcpts
                    .iter()
                    .filter(|(i, _)| !m.recipients.get(*i).is_some_and(|r| r.state.is_pending()))
                    .cloned()
                    .collect();
                if !gone.is_empty() {
                    j.rcpts.retain(|r| !gone.contains(r));
                    let mut st = lock(&inner.state);
                    if let Some(a) = st.active.get_mut(&j.msg) {
                        a.rcpts.retain(|r| !gone.iter().any(|(i, _)| i == r));
                    }
                }
                if j.rcpts.is_empty() {
                    release_jobs(inner, std::slice::from_ref(&j));
                    job = wait_for_job(inner, key).await;
                    continue;
                }
                b
            }
            Ok(_) => {
                // Purged or erased meanwhile: nothing to record.
                release_jobs(inner, std::slice::from_ref(&j));
                job = wait_for_job(inner, key).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, msg = j.msg, "cannot read a queued message");
                let text = format!("local error reading the message: {e}");
                finish_job(inner, &config, j, None, |_| {
                    Outcome::Temporary(text.clone())
                })
                .await;
                break;
            }
        };
        let rcpts: Vec<&str> = j.rcpts.iter().map(|(_, a)| a.as_str()).collect();
        let result = session.send(&j.return_path, &rcpts, &body).await;
        sent += 1;
        match result {
            Ok(results) => {
                finish_job(inner, &config, j, Some(&host), |i| match results.get(i) {
                    Some(RcptResult::Delivered(r)) => Outcome::Delivered(r.text.clone()),
                    Some(RcptResult::Temporary(r)) => Outcome::Temporary(r.text.clone()),
                    Some(RcptResult::Permanent(r, stage)) => Outcome::Permanent(
                        r.text.clone(),
                        bounce::classify_at(r.code, r.text.get(4..).unwrap_or(""), *stage),
                    ),
                    None => Outcome::Temporary("no reply for this recipient".into()),
                })
                .await;
            }
            Err(reply) => {
                let text = format!("{host}: {}", reply.text);
                finish_job(inner, &config, j, Some(&host), |_| {
                    Outcome::Temporary(text.clone())
                })
                .await;
                usable = false;
                break;
            }
        }
        if sent >= config.delivery.messages_per_connection {
            break;
        }
        let Some(j) = wait_for_job(inner, key).await else {
            break;
        };
        match reserve_slot(inner, &sender) {
            Some(at)
                if at.saturating_duration_since(tokio::time::Instant::now()) > MAX_RATE_WAIT =>
            {
                // A long wait: close rather than idle; the next connection
                // waits for its slot before connecting.
                unpop_job(inner, key, j);
                break;
            }
            Some(at) => {
                tokio::time::sleep_until(at).await;
                job = Some(j);
            }
            None => job = Some(j),
        }
    }
    set_live(inner, key, false);
    if usable {
        session.quit().await;
    }
}

/// Records the outcome of a job (durably) and releases it from the active set.
async fn finish_job(
    inner: &Arc<Inner>,
    config: &Config,
    job: Job,
    host: Option<&str>,
    outcome_of: impl Fn(usize) -> Outcome,
) {
    let outcomes: Vec<(usize, Outcome)> = job
        .rcpts
        .iter()
        .enumerate()
        .map(|(i, (idx, _))| (*idx, outcome_of(i)))
        .collect();
    for (_, o) in &outcomes {
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
    let now = now_ms(&inner.clock);
    let policy = RetryPolicy {
        schedule: config.delivery.retry_schedule.clone(),
        max_age_ms: i64::try_from(config.delivery.max_age.as_millis()).unwrap_or(i64::MAX),
    };
    let id = job.msg;
    let host = host.map(str::to_string);
    // The job stays in the active set until its outcome is committed: were
    // it released after a failed write, the next fill would load the
    // message again and send a delivered recipient a second time.
    let mut backoff = Duration::from_millis(100);
    loop {
        let (outcomes2, policy2, host2) = (outcomes.clone(), policy.clone(), host.clone());
        let written = inner
            .store
            .write(move |t| record_outcomes(t, id, &outcomes2, host2.as_deref(), now, &policy2))
            .await;
        match written {
            Ok(()) => break,
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::error!(error = %e, msg = id, "cannot record a delivery outcome; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    release_jobs(inner, std::slice::from_ref(&job));
    for (i, o) in &outcomes {
        match o {
            Outcome::Delivered(r) => tracing::debug!(msg = id, rcpt = i, reply = %r, "delivered"),
            Outcome::Temporary(r) => tracing::info!(msg = id, rcpt = i, reply = %r, "deferred"),
            Outcome::Permanent(r, c) => {
                tracing::info!(msg = id, rcpt = i, class = c.as_str(), reply = %r, "failed")
            }
        }
    }
}

/// Takes finished jobs out of the active set; a message leaves it with its
/// last job.
fn release_jobs(inner: &Inner, jobs: &[Job]) {
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

/// Retry settings for one outcome write.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Waits; the last repeats.
    pub schedule: Vec<Duration>,
    /// Give up this long after queueing.
    pub max_age_ms: i64,
}

impl RetryPolicy {
    /// The wait before attempt `attempts + 1`, with ±10 % jitter so that a
    /// burst of deferrals does not come back as one burst.
    fn wait_ms(&self, attempts: u32) -> i64 {
        let base = self
            .schedule
            .get((attempts as usize).saturating_sub(1))
            .or(self.schedule.last())
            .copied()
            .unwrap_or(Duration::from_secs(300));
        let jitter: f64 = rand::random_range(0.9..1.1);
        // `as` saturates for floats: a huge configured wait stays huge.
        (base.as_millis() as f64 * jitter) as i64
    }
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
        if !r.state.is_pending() {
            continue;
        }
        let before = r.state;
        r.attempts += 1;
        r.updated = Some(now);
        r.host = host.map(str::to_string);
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
                if *class == BounceClass::Hard {
                    hard.push((r.address.clone(), r.contact, reply.clone()));
                }
            }
            Outcome::Temporary(reply) => {
                let next = now.saturating_add(policy.wait_ms(r.attempts));
                if next > m.created.saturating_add(policy.max_age_ms) {
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
        count_outcome(t, m.send, before, r.state, r.bounce, now)?;
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

/// The pending recipients of `m` that its kind of mail may no longer reach
/// ([`QueuedMessage::rule`], [`super::model::MailKind::allows`]): contacts
/// erased, or whose consent changed since the message was queued
/// (unsubscribed, bounced). `consent` gives a contact's state, `None` for
/// a contact that no longer exists. Checked when the scheduler loads a
/// message, so every attempt (also after a deferral) checks again.
fn unsendable(
    m: &QueuedMessage,
    consent: impl Fn(u64) -> Result<Option<ConsentState>, StoreError>,
) -> Result<Vec<(usize, NotSent)>, StoreError> {
    let Some(kind) = m.rule() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, r) in m.recipients.iter().enumerate() {
        if !r.state.is_pending() {
            continue;
        }
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
fn drop_unsent(t: &mut WriteTables<'_>, id: u64, now: i64) -> Result<(), StoreError> {
    let Some(mut m) = t.queued_message(id)? else {
        return Ok(());
    };
    let drop = unsendable(&m, |c| Ok(t.contact(c)?.map(|c| c.consent)))?;
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
    if let Some(s) = m.send {
        t.count_not_sent(s, why == NotSent::Erased)?;
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
    let Some(s) = send else { return Ok(()) };
    for (counter, delta, hourly) in outcome_counts(before, after, bounce) {
        if hourly {
            t.bump_send_at(s, counter, delta, now)?;
        } else {
            t.bump_send(s, counter, delta)?;
        }
    }
    Ok(())
}

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
    if t.contact(id)?
        .is_some_and(|c| c.consent == ConsentState::Invalid)
    {
        return Ok(());
    }
    let update = ContactUpdate {
        consent: Some(ConsentChange {
            to: ConsentState::Invalid,
            source: ConsentSource::Bounce,
            ip: None,
            user_agent: None,
            note: Some(format!("hard bounce: {reply}")),
        }),
        ..Default::default()
    };
    let when = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
    if let Err(e) = contacts::apply_update_by_id(t, id, update, when)? {
        tracing::debug!(contact = id, error = %e, "hard bounce not applied to the contact");
    }
    Ok(())
}

/// Which queued messages an admin action applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    /// One message.
    Id(u64),
    /// Every message with a recipient in this domain.
    Domain(String),
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
        Selection::Domain(_) | Selection::Send(..) => {
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
        Selection::Id(_) | Selection::Send(..) => true,
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
}
