//! The delivery engine's public face: [`Engine`], the handle the daemon,
//! the HTTP API and the campaign runner hold.
//!
//! The work is done in three places beside this file:
//!
//! - [`super::scheduler`]: one task that loads due messages from the queue
//!   into a bounded in-memory "active" set, groups them by destination and
//!   starts connection tasks under the connection limits.
//! - [`super::connection`]: a connection task resolves MX hosts, connects to
//!   the first that answers and sends job after job over the one connection
//!   (up to `messages_per_connection`), then QUITs.
//! - [`super::outcome`]: after each transaction the outcome is committed
//!   (delivered, deferred with the next attempt, failed with a bounce class)
//!   before the task takes its next job. "In flight" is never stored: after a
//!   crash the stored state is still queued/deferred, so the message is sent
//!   again. The only possible duplicates are therefore transactions whose 250
//!   arrived but whose commit did not happen: at most one per open connection.
//!
//! Shutdown goes through the daemon's [`Activity`]: the scheduler and every
//! connection task hold a labelled guard for their whole life, and once
//! [`Activity::stop`] is called the scheduler loads nothing more and ends,
//! and each connection finishes and records the transaction in hand, then
//! QUITs. [`Activity::drain`] waits for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::mta_sts::MtaSts;
use super::mx::Mx;
use super::scheduler::State;
use super::smtp;
use crate::activity::Activity;
use crate::clock::Clock;
use crate::metrics::{BounceLabels, Metrics, OutcomeLabels};
use crate::snapshot::Current;
use crate::store::Store;

// The queue-record operations used to live in this file; callers outside
// delivery still name them through the engine.
pub use super::outcome::{
    CHUNK, ERASED, Outcome, RetryPolicy, Selection, erase_recipient, purge, record_outcomes,
    retry_now,
};

/// A relay's TLS settings: sender id and the CA certificates it trusts.
pub(super) type RelayTlsKey = (String, Vec<Vec<u8>>);

/// What the scheduler and the connection tasks share.
pub(super) struct Inner {
    /// Queue records, bodies and outcomes.
    pub(super) store: Store,
    /// Where outcomes are made durable before the store commits them; the
    /// files an earlier run left are recorded by [`Engine::run`] before the
    /// scheduler starts.
    pub(super) journal: super::journal::Journal,
    /// The running configuration (senders, limits, retry schedule); read
    /// afresh by each fill and each connection, so a reload takes effect.
    pub(super) config: Arc<Current>,
    /// Wall-clock time for due times and outcome records.
    pub(super) clock: Clock,
    /// The MX resolver (built once: its nameserver needs a restart).
    pub(super) mx: Mx,
    /// TLS for MX delivery (opportunistic or required STARTTLS).
    pub(super) mx_tls: tokio_rustls::TlsConnector,
    /// MTA-STS policies of destination domains (and their TLS settings).
    pub(super) mta_sts: MtaSts,
    /// TLS per relay, built on first use and kept while its CA set is unchanged.
    pub(super) relay_tls: Mutex<HashMap<RelayTlsKey, tokio_rustls::TlsConnector>>,
    /// The active set, the destinations' ready jobs and the connection counts.
    pub(super) state: Mutex<State>,
    /// Room freed (a message left the active set, a connection ended): the
    /// scheduler may load or start more.
    pub(super) wake: Notify,
    /// Messages were queued or made due (API, campaigns, admin retry).
    pub(super) new_work: Notify,
    /// Jobs were put in a destination's ready queue: lingering connections
    /// look for one.
    pub(super) jobs_added: Notify,
    /// The daemon's in-flight work and stop signal.
    pub(super) activity: Activity,
    /// Gathers delivery outcomes into store batches.
    pub(super) outcome_batch: super::outcome_batch::Batcher,
    /// Outcomes were recorded (one permit, for one listener: the send
    /// layer's users that wait for outcomes, such as campaign completion).
    pub(super) outcomes_recorded: Arc<Notify>,
    /// Cancelled when shutdown's grace is over: connection tasks still
    /// running end at once.
    pub(super) abandon: tokio_util::sync::CancellationToken,
    /// Recipients delivered (`herald_delivery_total{outcome="delivered"}`).
    pub(super) delivered: prometheus_client::metrics::counter::Counter,
    /// Recipients deferred.
    pub(super) deferred: prometheus_client::metrics::counter::Counter,
    /// Recipients failed.
    pub(super) failed: prometheus_client::metrics::counter::Counter,
    /// Failures by bounce class.
    pub(super) bounces: prometheus_client::metrics::family::Family<
        BounceLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Open SMTP connections.
    pub(super) connections: prometheus_client::metrics::gauge::Gauge,
    /// Back-off actions by group and rule.
    backoffs: prometheus_client::metrics::family::Family<
        crate::metrics::RuleLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl Inner {
    /// Counts a back-off action of `rule` on `group`.
    pub(super) fn backoffs(&self, group: &str, rule: &str) {
        self.backoffs
            .get_or_create(&crate::metrics::RuleLabels {
                group: group.to_string(),
                rule: rule.to_string(),
            })
            .inc();
    }
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
    /// When the attempt began (ms): a stored outcome at or after this time
    /// is the attempt's own (recorded, the job not yet released).
    pub since: i64,
}

impl Engine {
    /// Builds the engine (resolver, TLS settings). Call [`Engine::run`] to
    /// start it; it stops when `activity` does ([`Activity::stop`]).
    pub fn new(
        store: Store,
        config: Arc<Current>,
        clock: Clock,
        metrics: &Metrics,
        activity: Activity,
    ) -> Result<Engine, String> {
        let c = config.get();
        let mx = Mx::new(c.delivery.nameserver)?;
        let mx_tls = smtp::mx_connector()?;
        let mta_sts = MtaSts::new(
            mx.clone(),
            store.clone(),
            clock.clone(),
            metrics.mta_sts_failures.clone(),
        );
        let journal = super::journal::Journal::open(&c.storage.dir, store.clone())
            .map_err(|e| e.to_string())?;
        let outcome = |o: &'static str| {
            metrics
                .delivery
                .get_or_create(&OutcomeLabels { outcome: o })
                .clone()
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                store,
                journal,
                config,
                clock,
                mx,
                mx_tls,
                mta_sts,
                relay_tls: Mutex::new(HashMap::new()),
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                new_work: Notify::new(),
                jobs_added: Notify::new(),
                activity,
                outcome_batch: Default::default(),
                outcomes_recorded: Arc::new(Notify::new()),
                abandon: tokio_util::sync::CancellationToken::new(),
                delivered: outcome("delivered"),
                deferred: outcome("deferred"),
                failed: outcome("failed"),
                bounces: metrics.bounces.clone(),
                connections: metrics.smtp_connections.clone(),
                backoffs: metrics.shaping_backoffs.clone(),
            }),
        })
    }

    /// Notified (one stored permit) each time outcomes are recorded, so a
    /// waiter never misses the last one.
    pub fn outcomes_recorded(&self) -> Arc<Notify> {
        self.inner.outcomes_recorded.clone()
    }

    /// Says that outcomes were recorded outside the engine (an admin purge,
    /// an erasure), so whoever waits for outcomes looks again.
    pub fn outcomes_changed(&self) {
        self.inner.outcomes_recorded.notify_one();
    }

    /// Ends the connection tasks still running (after the shutdown grace):
    /// their messages stay queued and are tried again at the next start.
    pub fn abandon(&self) {
        self.inner.abandon.cancel();
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
                    since: a.loaded_at,
                });
            }
        }
        out
    }

    /// Every provider group's state (those with traffic since start), for
    /// the queue API and metrics.
    pub fn shaping(&self) -> Vec<super::shaping::GroupView> {
        let config = self.inner.config.get();
        let shaping = &config.delivery.shaping;
        let now = tokio::time::Instant::now();
        let st = lock(&self.inner.state);
        let mut out: Vec<_> = st
            .shaper
            .groups
            .iter()
            .map(|(k, s)| s.view(k, shaping.group(&k.group).unwrap_or(&shaping.default), now))
            // The default group's state is per domain: only those with
            // something to show (every domain would be too many).
            .filter(|v| v.domain.is_none() || v.state != "normal" || v.connections > 0)
            .collect();
        out.sort_by(|a, b| {
            (&a.group, &a.domain, &a.source_ip).cmp(&(&b.group, &b.domain, &b.source_ip))
        });
        out
    }

    /// A warming-up sender's use of its current period; `None` when it has
    /// no warm-up in force.
    pub fn warmup(&self, sender: &str) -> Option<super::shaping::WarmStatus> {
        let config = self.inner.config.get();
        let s = config.sender(sender)?;
        let now = now_ms(&self.inner.clock);
        lock(&self.inner.state).shaper.warm_status(s, now)
    }

    /// Open SMTP connections.
    pub fn connections(&self) -> usize {
        lock(&self.inner.state).total_conns
    }

    /// The scheduler loop; ends once the engine's [`Activity`] is stopping.
    ///
    /// The loop holds a `"delivery scheduler"` guard from the moment this is
    /// called (not first polled), so a drain that starts after the stop also
    /// waits for connections the scheduler may start in its last round.
    pub fn run(self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let guard = self.inner.activity.guard("delivery scheduler");
        let inner = self.inner;
        async move {
            super::outcome::replay_journal(&inner).await;
            tokio::spawn(super::index::run(inner.clone()));
            super::scheduler::run(inner).await;
            drop(guard);
        }
    }
}

/// Locks a mutex, also one a panicked task held: the engine's state stays
/// usable (every counter is released by a drop guard, so it is consistent).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Now, in milliseconds since the epoch (the queue's time unit).
pub(super) fn now_ms(clock: &Clock) -> i64 {
    clock.now().timestamp_millis()
}
