//! Prometheus metrics (`GET /metrics`), with the prometheus-client crate.
//!
//! Counters are updated where things happen; gauges that mirror the store
//! (contacts per consent state) are read from it at scrape time, so they are
//! exact and cost nothing between scrapes.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::store::{Store, StoreError};

/// Labels of an HTTP request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route name (a fixed set, never the raw path).
    pub route: &'static str,
    /// HTTP method (`other` for non-standard ones).
    pub method: &'static str,
    /// Response status code.
    pub status: u16,
}

/// Labels of HTTP connection gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `public` (`[http] listen`) or `admin` (`[http] admin_listen`).
    pub listener: &'static str,
}

/// Labels of refused HTTP connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `public` or `admin`.
    pub listener: &'static str,
    /// `total_limit` or `per_ip_limit`.
    pub reason: &'static str,
}

/// Labels of messages taken out of the queue unsent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotSentLabels {
    /// `erased` or `no_consent`.
    pub reason: &'static str,
}

/// Labels for contacts by consent state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsentLabels {
    /// Consent state name.
    pub consent: &'static str,
}

/// Labels for the store's state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreStateLabels {
    /// ok, low_space, unavailable.
    pub state: &'static str,
}

/// Labels for import row outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// created, updated, unchanged, rejected.
    pub outcome: &'static str,
}

/// Labels for shop events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// Event type (`invalid` when unreadable).
    pub event_type: &'static str,
    /// accepted, duplicate, rejected.
    pub status: &'static str,
}

/// Labels of a tracking hit counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HitLabels {
    /// `open` or `click`.
    pub kind: &'static str,
    /// `human` or `machine`.
    pub class: &'static str,
}

/// Labels of a bounce counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BounceLabels {
    /// `hard`, `soft` or `policy`.
    pub class: &'static str,
}

/// Labels of MTA-STS failure counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    /// The policy's mode: `enforce` or `testing`.
    pub mode: &'static str,
}

/// Labels of attribution counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttributionLabels {
    /// `parameter` (the click token came back with the order) or `window`
    /// (the contact's last click within the attribution window).
    pub by: &'static str,
}

/// Labels of coupon pool gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The pool's name (pool names are checked: letters, digits, `-_.`).
    pub pool: String,
}

/// Labels of a back-off action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// Provider group.
    pub group: String,
    /// Back-off rule.
    pub rule: String,
}

/// Labels of a provider group's state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// Provider group.
    pub group: String,
    /// The destination domain (default group), or "".
    pub domain: String,
    /// The source address, or "".
    pub source_ip: String,
}

/// Every metric Herald exports.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests served.
    pub http_requests: Family<RequestLabels, Counter>,
    /// HTTP connections open now, per listener.
    pub http_connections: Family<ListenerLabels, Gauge>,
    /// HTTP connections closed at accept because a limit was reached.
    pub http_connections_refused: Family<RefusedLabels, Counter>,
    /// Contacts per consent state (refreshed at scrape time).
    contacts: Family<ConsentLabels, Gauge>,
    /// Recipients failed without an attempt, by reason (refreshed at scrape
    /// time from the queue's lifetime totals).
    queue_not_sent: Family<NotSentLabels, Gauge>,
    /// Import rows by outcome.
    pub import_rows: Family<OutcomeLabels, Counter>,
    /// Store write transactions committed.
    store_commits: Gauge,
    /// Store write jobs committed.
    store_jobs: Gauge,
    /// Store commits that synced the file.
    store_syncs: Gauge,
    /// Seconds the store writer spent in commits.
    store_commit_seconds: Gauge<f64, AtomicU64>,
    /// Seconds the store writer waited for the segment index.
    store_handoff_seconds: Gauge<f64, AtomicU64>,
    /// 1 for the store's state now, 0 for the others.
    store_state: Family<StoreStateLabels, Gauge>,
    /// Free bytes of the store's filesystem.
    store_free_bytes: Gauge,
    /// Bytes kept free (the reserve).
    store_reserve_bytes: Gauge,
    /// Times the store was re-opened after an I/O error.
    store_reopens: Gauge,
    /// Tracking hits answered (redirect, pixel) but not recorded (the
    /// store's health counts them; brought up to date at scrape time).
    hits_dropped: Counter,
    /// Delivery attempts per recipient, by result (delivered, deferred, failed).
    pub delivery: Family<OutcomeLabels, Counter>,
    /// SMTP client connections open now.
    pub smtp_connections: Gauge,
    /// Shop events by type and outcome.
    pub events: Family<EventLabels, Counter>,
    /// Segment evaluations.
    pub segment_evaluations: Counter,
    /// Permanent delivery failures by bounce class.
    pub bounces: Family<BounceLabels, Counter>,
    /// MTA-STS policy failures (MX not listed, certificate not verified),
    /// by the policy's mode.
    pub mta_sts_failures: Family<ModeLabels, Counter>,
    /// Opens and clicks recorded, by kind and human/machine.
    pub tracking_hits: Family<HitLabels, Counter>,
    /// Contacts who unsubscribed (one-click or the page), by way.
    pub unsubscribes: Family<OutcomeLabels, Counter>,
    /// Signup form submissions, by outcome.
    pub signups: Family<OutcomeLabels, Counter>,
    /// Subscriptions confirmed.
    pub confirmations: Counter,
    /// Orders attributed to a click.
    pub attributed_orders: Family<AttributionLabels, Counter>,
    /// Revenue attributed to clicks, in hundredths.
    pub attributed_revenue_cents: Family<AttributionLabels, Counter>,
    /// Heap held by the segment index (set at scrape time).
    pub segment_index_bytes: Gauge,
    /// Contacts in the segment index (set at scrape time).
    pub segment_index_contacts: Gauge,
    /// Free codes per coupon pool (refreshed at scrape time).
    coupons_free: Family<PoolLabels, Gauge>,
    /// 1 for a coupon pool at or below its low-water mark (refreshed at
    /// scrape time).
    coupon_pool_low: Family<PoolLabels, Gauge>,
    /// Automation runs waiting for a step (refreshed at scrape time).
    automation_pending: Gauge,
    /// Inbound reports taken (listener and API), by verdict.
    pub inbound_reports: Family<OutcomeLabels, Counter>,
    /// Inbound RCPTs refused, by reason (not_here, forged, expired).
    pub inbound_refused: Family<OutcomeLabels, Counter>,
    /// The inbound listener's own counters (read at scrape time).
    pub inbound_server: std::sync::Arc<crate::inbound::server::Stats>,
    /// Those counters as exported.
    inbound_smtp: Family<OutcomeLabels, Gauge>,
    /// Back-off actions by provider group and rule.
    pub shaping_backoffs: Family<RuleLabels, Counter>,
    /// Provider group state: 0 normal, 1 reduced, 2 limited, 3 suspended
    /// (set at scrape time).
    shaping_state: Family<GroupLabels, Gauge>,
    /// Provider group rate factor in percent (set at scrape time).
    shaping_rate_percent: Family<GroupLabels, Gauge>,
    /// Provider group connections open (set at scrape time).
    shaping_connections: Family<GroupLabels, Gauge>,
    /// Recipients held by shaping since start (set at scrape time).
    shaping_held: Family<GroupLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Builds the registry.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("herald");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by route, method and status",
            http_requests.clone(),
        );
        let http_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "http_connections",
            "HTTP connections open now, by listener (public, admin)",
            http_connections.clone(),
        );
        let http_connections_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed at once because a limit was reached, by listener and reason (total_limit, per_ip_limit)",
            http_connections_refused.clone(),
        );
        let contacts = Family::<ConsentLabels, Gauge>::default();
        registry.register(
            "contacts",
            "Contacts in the store, by consent state",
            contacts.clone(),
        );
        let queue_not_sent = Family::<NotSentLabels, Gauge>::default();
        registry.register(
            "queue_not_sent",
            "Recipients taken out of the queue without an attempt (also counted as failed), by reason: erased (the contact was erased), no_consent (consent no longer allows that kind of mail), suppressed (the address is on the suppression list)",
            queue_not_sent.clone(),
        );
        let import_rows = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "import_rows",
            "CSV import rows, by outcome",
            import_rows.clone(),
        );
        let store_commits = Gauge::default();
        registry.register(
            "store_commits",
            "Store write transactions committed since start",
            store_commits.clone(),
        );
        let store_jobs = Gauge::default();
        registry.register(
            "store_jobs",
            "Store write jobs committed since start (grouped into commits)",
            store_jobs.clone(),
        );
        let store_syncs = Gauge::default();
        registry.register(
            "store_syncs",
            "Store commits that synced the file since start (the others were import batches whose sync waited for a later commit)",
            store_syncs.clone(),
        );
        let store_commit_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "store_commit_seconds",
            "Seconds the store writer spent committing (writing and syncing pages) since start",
            store_commit_seconds.clone(),
        );
        let store_handoff_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "store_handoff_seconds",
            "Seconds the store writer waited, after a commit, for the segment index to take the changes of earlier commits, since start",
            store_handoff_seconds.clone(),
        );
        let store_state = Family::<StoreStateLabels, Gauge>::default();
        registry.register(
            "store_state",
            "The store's state: 1 for the current one of ok (reads and writes work), low_space (below the free-space reserve: bulk intake refused), unavailable (being re-opened after an I/O error)",
            store_state.clone(),
        );
        let store_free_bytes = Gauge::default();
        registry.register(
            "store_free_bytes",
            "Free bytes of the store's filesystem",
            store_free_bytes.clone(),
        );
        let store_reserve_bytes = Gauge::default();
        registry.register(
            "store_reserve_bytes",
            "Free bytes the store keeps in reserve ([storage] reserve_mb, reserve_percent)",
            store_reserve_bytes.clone(),
        );
        let store_reopens = Gauge::default();
        registry.register(
            "store_reopens",
            "Times the store was re-opened after an I/O error since start",
            store_reopens.clone(),
        );
        let hits_dropped = Counter::default();
        registry.register(
            "hits_dropped",
            "Tracking hits (opens, clicks) answered while the store could not record them",
            hits_dropped.clone(),
        );
        let delivery = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts per recipient, by result: delivered, deferred, failed",
            delivery.clone(),
        );
        let smtp_connections = Gauge::default();
        registry.register(
            "smtp_connections",
            "Outgoing SMTP connections open now",
            smtp_connections.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Shop events received, by type and status (accepted, duplicate, rejected)",
            events.clone(),
        );
        let segment_evaluations = Counter::default();
        registry.register(
            "segment_evaluations",
            "Segment evaluations",
            segment_evaluations.clone(),
        );
        let segment_index_bytes = Gauge::default();
        registry.register(
            "segment_index_bytes",
            "Estimated heap memory of the segment index",
            segment_index_bytes.clone(),
        );
        let segment_index_contacts = Gauge::default();
        registry.register(
            "segment_index_contacts",
            "Contacts in the segment index",
            segment_index_contacts.clone(),
        );
        let inbound_reports = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "inbound_reports",
            "Inbound reports taken (listener and API), by verdict: hard, soft, policy, complaint, auto_reply, delay, unknown",
            inbound_reports.clone(),
        );
        let inbound_refused = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "inbound_refused_rcpts",
            "Inbound RCPTs refused with 550, by reason: not_here (neither a bounce domain nor a feedback-loop address), forged (VERP token does not verify), expired",
            inbound_refused.clone(),
        );
        let inbound_smtp = Family::<OutcomeLabels, Gauge>::default();
        registry.register(
            "inbound_smtp",
            "The inbound SMTP listener since start, by event: sessions, refused_connections (421 at once: a connection limit), tls_sessions, messages_accepted, messages_refused (too big, over the rate, not stored), rcpt_refused, timeouts",
            inbound_smtp.clone(),
        );
        let shaping_backoffs = Family::<RuleLabels, Counter>::default();
        registry.register(
            "shaping_backoffs",
            "Back-off actions taken on a provider group, by group and rule (shaping.toml [[backoff]])",
            shaping_backoffs.clone(),
        );
        let shaping_state = Family::<GroupLabels, Gauge>::default();
        registry.register(
            "shaping_state",
            "Provider group state: 0 normal, 1 reduced (rate), 2 limited (connections), 3 suspended",
            shaping_state.clone(),
        );
        let shaping_rate_percent = Family::<GroupLabels, Gauge>::default();
        registry.register(
            "shaping_rate_percent",
            "Provider group rate in force, percent of its configured (or measured) rate",
            shaping_rate_percent.clone(),
        );
        let shaping_connections = Family::<GroupLabels, Gauge>::default();
        registry.register(
            "shaping_connections",
            "SMTP connections open per provider group",
            shaping_connections.clone(),
        );
        let shaping_held = Family::<GroupLabels, Gauge>::default();
        registry.register(
            "shaping_held_recipients",
            "Recipients held in the queue by shaping since start (rate, suspension, warm-up)",
            shaping_held.clone(),
        );
        let bounces = Family::<BounceLabels, Counter>::default();
        registry.register(
            "bounces",
            "Permanent delivery failures per recipient, by class: hard, soft, policy",
            bounces.clone(),
        );
        let mta_sts_failures = Family::<ModeLabels, Counter>::default();
        registry.register(
            "mta_sts_failures",
            "MTA-STS policy failures by the policy's mode (enforce: delivery deferred; testing: only reported): no MX host listed by the policy, or an MX certificate that does not verify",
            mta_sts_failures.clone(),
        );
        let tracking_hits = Family::<HitLabels, Counter>::default();
        registry.register(
            "tracking_hits",
            "Opens and clicks of sent messages recorded, by kind and class (human, machine)",
            tracking_hits.clone(),
        );
        let unsubscribes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "unsubscribes",
            "Unsubscribes by way: one_click, page, preferences",
            unsubscribes.clone(),
        );
        let signups = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "signups",
            "Signup form submissions, by outcome: pending, already, honeypot, rate_limited, rejected",
            signups.clone(),
        );
        let confirmations = Counter::default();
        registry.register(
            "confirmations",
            "Subscriptions confirmed through the confirmation link",
            confirmations.clone(),
        );
        let attributed_orders = Family::<AttributionLabels, Counter>::default();
        registry.register(
            "attributed_orders",
            "Orders attributed to a click, by how: parameter, window",
            attributed_orders.clone(),
        );
        let attributed_revenue_cents = Family::<AttributionLabels, Counter>::default();
        registry.register(
            "attributed_revenue_cents",
            "Revenue of attributed orders, in hundredths of the currency unit",
            attributed_revenue_cents.clone(),
        );
        let coupons_free = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "coupons_free",
            "Coupon codes not yet handed out, by pool",
            coupons_free.clone(),
        );
        let coupon_pool_low = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "coupon_pool_low",
            "1 when a coupon pool has at most its low_water free codes, else 0",
            coupon_pool_low.clone(),
        );
        let automation_pending = Gauge::default();
        registry.register(
            "automation_pending_runs",
            "Automation runs waiting for their next step (every flow)",
            automation_pending.clone(),
        );
        Metrics {
            automation_pending,
            inbound_reports,
            inbound_refused,
            inbound_server: Default::default(),
            inbound_smtp,
            shaping_backoffs,
            shaping_state,
            shaping_rate_percent,
            shaping_connections,
            shaping_held,
            coupons_free,
            coupon_pool_low,
            bounces,
            mta_sts_failures,
            tracking_hits,
            unsubscribes,
            signups,
            confirmations,
            attributed_orders,
            attributed_revenue_cents,
            registry,
            events,
            segment_evaluations,
            segment_index_bytes,
            segment_index_contacts,
            delivery,
            smtp_connections,
            http_requests,
            http_connections,
            http_connections_refused,
            contacts,
            queue_not_sent,
            import_rows,
            store_commits,
            store_jobs,
            store_syncs,
            store_commit_seconds,
            store_handoff_seconds,
            store_state,
            store_free_bytes,
            store_reserve_bytes,
            store_reopens,
            hits_dropped,
        }
    }

    /// Counts one shop event.
    pub fn event(&self, event_type: &'static str, status: &'static str) {
        self.events
            .get_or_create(&EventLabels { event_type, status })
            .inc();
    }

    /// Sets the provider groups' gauges (before [`Metrics::render`]).
    pub fn set_shaping(&self, groups: &[crate::delivery::shaping::GroupView]) {
        for g in groups {
            let labels = GroupLabels {
                group: g.group.clone(),
                domain: g.domain.clone().unwrap_or_default(),
                source_ip: g.source_ip.clone().unwrap_or_default(),
            };
            let state = match g.state {
                "reduced" => 1,
                "limited" => 2,
                "suspended" => 3,
                _ => 0,
            };
            self.shaping_state.get_or_create(&labels).set(state);
            self.shaping_rate_percent
                .get_or_create(&labels)
                .set((g.rate_factor * 100.0).round() as i64);
            self.shaping_connections
                .get_or_create(&labels)
                .set(g.connections as i64);
            self.shaping_held
                .get_or_create(&labels)
                .set(i64::try_from(g.held).unwrap_or(i64::MAX));
        }
    }

    /// Refreshes the store-backed gauges and renders the text exposition format.
    pub async fn render(&self, store: &Store) -> Result<String, StoreError> {
        self.set_store_health(store);
        // Figures read from the store keep their last values while it
        // cannot be read: the store's own state is what to look at then.
        if let Err(e) = self.read_figures(store).await {
            if !e.is_unavailable() {
                return Err(e);
            }
            tracing::debug!(error = %e, "metrics: store figures not refreshed");
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| StoreError::Io(format!("cannot encode metrics: {e}")))?;
        Ok(out)
    }

    fn set_store_health(&self, store: &Store) {
        let h = store.health();
        let now = h.state();
        for s in crate::store::health::StoreState::ALL {
            self.store_state
                .get_or_create(&StoreStateLabels { state: s.name() })
                .set(i64::from(s == now));
        }
        let (free, reserve) = h.space();
        self.store_free_bytes
            .set(i64::try_from(free).unwrap_or(i64::MAX));
        self.store_reserve_bytes
            .set(i64::try_from(reserve).unwrap_or(i64::MAX));
        self.store_reopens
            .set(i64::try_from(h.reopens.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        let dropped = h.hits_dropped.load(Ordering::Relaxed);
        self.hits_dropped
            .inc_by(dropped.saturating_sub(self.hits_dropped.get()));
        self.store_commits
            .set(store.stats.commits.load(Ordering::Relaxed) as i64);
        self.store_jobs
            .set(store.stats.jobs.load(Ordering::Relaxed) as i64);
        self.store_syncs
            .set(store.stats.syncs.load(Ordering::Relaxed) as i64);
        let secs = |v: &AtomicU64| v.load(Ordering::Relaxed) as f64 / 1e6;
        self.store_commit_seconds
            .set(secs(&store.stats.commit_micros));
        self.store_handoff_seconds
            .set(secs(&store.stats.handoff_micros));
    }

    async fn read_figures(&self, store: &Store) -> Result<(), StoreError> {
        let counts = store.read(|r| r.consent_counts()).await?;
        for (state, n) in counts {
            self.contacts
                .get_or_create(&ConsentLabels {
                    consent: state.as_str(),
                })
                .set(n as i64);
        }
        let st = &self.inbound_server;
        for (event, n) in [
            ("sessions", &st.sessions),
            ("refused_connections", &st.refused_connections),
            ("tls_sessions", &st.tls_sessions),
            ("messages_accepted", &st.messages_accepted),
            ("messages_refused", &st.messages_refused),
            ("rcpt_refused", &st.rcpt_refused),
            ("timeouts", &st.timeouts),
        ] {
            let n = n.load(std::sync::atomic::Ordering::Relaxed);
            self.inbound_smtp
                .get_or_create(&OutcomeLabels { outcome: event })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let q = store.read(|r| r.queue_summary()).await?;
        for (reason, n) in [
            ("erased", q.not_sent_erased),
            ("no_consent", q.not_sent_no_consent),
            ("suppressed", q.not_sent_suppressed),
        ] {
            self.queue_not_sent
                .get_or_create(&NotSentLabels { reason })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let pools = store.read(|r| r.coupon_pools()).await?;
        for p in pools {
            let labels = PoolLabels { pool: p.name };
            self.coupons_free
                .get_or_create(&labels)
                .set(i64::try_from(p.free).unwrap_or(i64::MAX));
            self.coupon_pool_low
                .get_or_create(&labels)
                .set(i64::from(p.low));
        }
        let pending = store.read(|r| r.pending_runs()).await?;
        self.automation_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        Ok(())
    }
}
