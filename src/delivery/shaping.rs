//! Traffic shaping at run time: the state of each provider group (per
//! source IP), its back-off and recovery, and warm-up use.
//!
//! The scheduler owns a [`Shaper`] inside its state (one mutex): it learns
//! each destination domain's group from its MX hosts (resolved once an hour
//! in the background), and counts connections, rate slots and warm-up use
//! against the group's limits (`config::shaping`). Connection tasks report
//! each reply ([`Shaper::observe`]): a reply that matches a back-off rule
//! reduces the group's rate, caps its connections or suspends it; then each
//! `recover_after` of deliveries without another match undoes one step.
//! Nothing here drops a message: what cannot go now is held in the queue
//! (`outcome::hold`), without using up a retry.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::Sender;
use crate::config::shaping::{Action, DEFAULT_GROUP, Group, Rule, Shaping};

/// The least rate factor a reduction goes down to (1/64 of the limit).
const MIN_FACTOR: f64 = 1.0 / 64.0;
/// A rule that matched again this soon after it acted does not act again:
/// the transactions in flight when a provider pushes back all hear it.
const SETTLE: Duration = Duration::from_secs(2);
/// How long a domain's group is trusted before its MX is looked up again.
const GROUP_TTL: Duration = Duration::from_secs(3600);
/// The window the "recent rate" of a group is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// What a destination's limits count against: a provider group from one
/// source address (the default group: one destination domain).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    /// The group's name.
    pub group: String,
    /// The domain, for the default group (whose limits are per domain).
    pub domain: Option<String>,
    /// The source address (`None`: the system's choice).
    pub source: Option<IpAddr>,
}

impl GroupKey {
    /// The key of `domain` in group `group` sent from `source`.
    pub fn of(group: &str, domain: &str, source: Option<IpAddr>) -> GroupKey {
        GroupKey {
            group: group.to_string(),
            domain: (group == DEFAULT_GROUP).then(|| domain.to_string()),
            source,
        }
    }
}

/// One group's state.
#[derive(Debug)]
pub(super) struct GroupState {
    /// Connection tasks counted against it.
    pub(super) conns: usize,
    /// A destination of the group wanted a connection the group's limit
    /// did not allow (at the scheduler's last round): idle connections of
    /// the group close rather than linger.
    pub(super) starved: bool,
    /// The group's send slots.
    slots: SlotLine,
    /// Rate multiplier: 1 as configured, less after a reduction.
    factor: f64,
    /// For a group without a rate: the interval its recent rate gave when
    /// it was first reduced (a reduction needs a rate to reduce).
    learned: Option<Duration>,
    /// Connection cap set by a back-off rule.
    conn_cap: Option<usize>,
    /// Suspended until (monotonic, and wall-clock ms for the views).
    suspended_until: Option<(Instant, i64)>,
    /// The rule that acted last, the reply that matched, when (ms).
    cause: Option<(String, String, i64)>,
    /// When the state last changed (back-off or recovery step).
    last_change: Instant,
    /// The acting rule's recovery step.
    recover_after: Duration,
    /// Back-off actions taken since start.
    backoffs: u64,
    /// Recipients held since start (rate, suspension, warm-up).
    pub(super) held: u64,
    /// The next free time for a job held for the rate (ms): held jobs of
    /// the group line up behind each other, across rounds.
    hold_cursor: i64,
    /// Messages started in the current rate window, and its start.
    window: (Instant, u32),
    /// Messages per second in the last full window.
    recent_rate: f64,
}

impl GroupState {
    fn new(now: Instant) -> GroupState {
        GroupState {
            conns: 0,
            starved: false,
            slots: SlotLine::default(),
            factor: 1.0,
            learned: None,
            conn_cap: None,
            suspended_until: None,
            cause: None,
            last_change: now,
            recover_after: Duration::from_secs(300),
            backoffs: 0,
            held: 0,
            hold_cursor: 0,
            window: (now, 0),
            recent_rate: 0.0,
        }
    }

    /// The least time between two messages now; `None`: unlimited.
    pub(super) fn interval(&self, g: &Group) -> Option<Duration> {
        let base = g.interval().or(self.learned)?;
        Some(base.div_f64(self.factor.max(MIN_FACTOR)))
    }

    /// Connections allowed now.
    pub(super) fn conn_limit(&self, g: &Group) -> usize {
        self.conn_cap
            .map_or(g.connections, |c| c.min(g.connections))
    }

    /// Whether nothing may start for the group now; until when (ms).
    pub(super) fn suspended(&self, now: Instant) -> Option<i64> {
        self.suspended_until
            .filter(|(until, _)| *until > now)
            .map(|(_, ms)| ms)
    }

    /// Takes the group's next send slot (none without a rate) and counts
    /// the message for the recent rate.
    pub(super) fn reserve(&mut self, g: &Group, now: Instant) -> Option<(Instant, Duration)> {
        if now.duration_since(self.window.0) >= RATE_WINDOW {
            self.recent_rate = f64::from(self.window.1) / RATE_WINDOW.as_secs_f64();
            self.window = (now, 0);
        }
        self.window.1 = self.window.1.saturating_add(1);
        let step = self.interval(g)?;
        Some((self.slots.take(now, step), step))
    }

    /// Gives back a slot taken by [`GroupState::reserve`] and not used.
    pub(super) fn give_back(&mut self, taken: (Instant, Duration)) {
        self.slots.give_back(taken);
        self.window.1 = self.window.1.saturating_sub(1);
    }

    /// Whether the state carries nothing worth keeping (an idle default
    /// group's, which is per domain: dropped so they do not pile up).
    pub(super) fn idle(&self, now: Instant) -> bool {
        self.conns == 0
            && self.cause.is_none()
            && self.factor >= 1.0
            && self.conn_cap.is_none()
            && self.suspended(now).is_none()
            && self.slots.free_by(now)
    }

    /// Where the group's held jobs queue up (ms): the next free hold time,
    /// at least `from`; advances by `step` per job.
    pub(super) fn hold_slot(&mut self, from: i64, step_ms: i64) -> i64 {
        let at = self.hold_cursor.max(from);
        self.hold_cursor = at.saturating_add(step_ms);
        at
    }

    /// The state's name: normal, reduced, limited, suspended.
    pub(super) fn mode(&self, now: Instant) -> &'static str {
        if self.suspended(now).is_some() {
            "suspended"
        } else if self.factor < 1.0 {
            "reduced"
        } else if self.conn_cap.is_some() {
            "limited"
        } else {
            "normal"
        }
    }

    /// Applies `rule` (matched by `reply`); returns what it did, or `None`
    /// when the same rule acted a moment ago.
    pub(super) fn back_off(
        &mut self,
        rule: &Rule,
        reply: &str,
        g: &Group,
        now: Instant,
        now_ms: i64,
    ) -> Option<String> {
        if self.cause.as_ref().is_some_and(|(r, _, _)| r == &rule.name)
            && now.duration_since(self.last_change) < SETTLE
        {
            return None;
        }
        let did = match rule.action {
            Action::Reduce(f) => {
                if g.interval().is_none() && self.learned.is_none() {
                    // Reduce from what it was doing; at least 1/s.
                    let rate = self.recent_rate.max(1.0);
                    self.learned = Duration::try_from_secs_f64(1.0 / rate).ok();
                }
                self.factor = (self.factor * f).max(MIN_FACTOR);
                format!("rate reduced to {:.0}%", self.factor * 100.0)
            }
            Action::Connections(n) => {
                let cap = self.conn_cap.map_or(n, |c| c.min(n));
                self.conn_cap = Some(cap);
                format!("connections limited to {cap}")
            }
            Action::Suspend(d) => {
                let ms = now_ms.saturating_add(d.as_millis() as i64);
                self.suspended_until = Some((now + d, ms));
                format!("suspended for {}", humantime::format_duration(d))
            }
        };
        self.cause = Some((rule.name.clone(), reply.to_string(), now_ms));
        self.last_change = now;
        self.recover_after = rule.recover_after;
        self.backoffs += 1;
        Some(did)
    }

    /// A delivery succeeded: one recovery step if the last change is
    /// `recover_after` old. Returns what it did.
    pub(super) fn succeeded(&mut self, g: &Group, now: Instant) -> Option<String> {
        if self.mode(now) == "normal" && self.suspended_until.is_none() && self.cause.is_none() {
            return None;
        }
        if now.duration_since(self.last_change) < self.recover_after {
            return None;
        }
        self.last_change = now;
        if self.suspended_until.is_some_and(|(u, _)| u <= now) {
            self.suspended_until = None;
        }
        let mut did = Vec::new();
        if self.factor < 1.0 {
            self.factor = (self.factor * 2.0).min(1.0);
            did.push(format!("rate back to {:.0}%", self.factor * 100.0));
        }
        if let Some(c) = self.conn_cap {
            let c = c + 1;
            self.conn_cap = (c < g.connections).then_some(c);
            did.push(format!("connections back to {}", c.min(g.connections)));
        }
        if self.factor >= 1.0 && self.conn_cap.is_none() && self.suspended_until.is_none() {
            self.learned = None;
            self.cause = None;
            did.push("back to normal".into());
        }
        Some(did.join(", "))
    }

    /// The view of this state for the queue API and metrics.
    pub(super) fn view(&self, key: &GroupKey, g: &Group, now: Instant) -> GroupView {
        GroupView {
            group: key.group.clone(),
            domain: key.domain.clone(),
            source_ip: key.source.map(|s| s.to_string()),
            state: self.mode(now),
            rate_factor: self.factor,
            messages_per_second: self.interval(g).map(|d| 1.0 / d.as_secs_f64().max(1e-9)),
            connections: self.conns,
            connection_limit: self.conn_limit(g),
            suspended_until: self
                .suspended(now)
                .and_then(chrono::DateTime::from_timestamp_millis),
            rule: self.cause.as_ref().map(|c| c.0.clone()),
            reply: self.cause.as_ref().map(|c| c.1.clone()),
            since: self
                .cause
                .as_ref()
                .and_then(|c| chrono::DateTime::from_timestamp_millis(c.2)),
            backoffs: self.backoffs,
            held: self.held,
        }
    }
}

/// A line of evenly spaced send slots (a group's or a sender's rate).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SlotLine {
    /// The next free slot.
    next: Option<Instant>,
}

impl SlotLine {
    /// Takes the next slot (now at the earliest); the one after is `step`
    /// later.
    pub(super) fn take(&mut self, now: Instant, step: Duration) -> Instant {
        let slot = self.next.unwrap_or(now).max(now);
        self.next = Some(slot + step);
        slot
    }

    /// Gives back a slot taken and not used, when no later one was taken
    /// since.
    pub(super) fn give_back(&mut self, (slot, step): (Instant, Duration)) {
        if self.next == Some(slot + step) {
            self.next = Some(slot);
        }
    }

    /// Whether no slot is reserved after `now`.
    fn free_by(&self, now: Instant) -> bool {
        self.next.is_none_or(|s| s <= now)
    }
}

/// A provider group's state as the API and metrics show it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    /// Group name.
    pub group: String,
    /// The destination domain (default group only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Source address, when the sender names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// normal, reduced, limited or suspended.
    pub state: &'static str,
    /// Rate multiplier (1 = as configured).
    pub rate_factor: f64,
    /// The rate in force, when limited.
    pub messages_per_second: Option<f64>,
    /// Connections open.
    pub connections: usize,
    /// Connections allowed now.
    pub connection_limit: usize,
    /// End of a suspension.
    pub suspended_until: Option<chrono::DateTime<chrono::Utc>>,
    /// The back-off rule that acted last (while not back to normal).
    pub rule: Option<String>,
    /// The reply that matched it.
    pub reply: Option<String>,
    /// When it acted.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Back-off actions since start.
    pub backoffs: u64,
    /// Recipients held (for the rate, a suspension or warm-up) since start.
    pub held: u64,
}

/// A warming-up sender's room in the current period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WarmRoom {
    /// No allowance applies.
    Unlimited,
    /// At most this many more recipients now; what they count against.
    Left(u64, WarmUse),
    /// Used up until `until` (ms); why, for the held recipients' reply.
    Exhausted { until: i64, why: String },
    /// This period's use is not loaded from the store yet.
    Unknown,
}

/// The warm-up counters a job's recipients count against.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct WarmUse {
    /// Sender id.
    pub sender: String,
    /// The period.
    pub period: u64,
    /// Scopes: "" (all mail) and/or a group name.
    pub scopes: Vec<String>,
    /// Recipients counted (set when taken).
    pub n: u64,
}

/// The scheduler's shaping state.
#[derive(Default)]
pub(super) struct Shaper {
    /// Group states, by key.
    pub(super) groups: HashMap<GroupKey, GroupState>,
    /// Destination domain → its group's name, and when that was learned.
    domains: HashMap<String, (String, Instant)>,
    /// Domains whose MX lookup is under way.
    resolving: HashSet<String>,
    /// Warm-up use: (sender, scope, period) → recipients.
    warm: HashMap<(String, String, u64), u64>,
    /// (sender, period) whose use was read from the store.
    warm_loaded: HashSet<(String, u64)>,
}

impl Shaper {
    /// Whether the MX of `domain` should be (re)looked up for its group:
    /// unknown or older than an hour, and no lookup under way (the caller
    /// starts it).
    pub(super) fn needs_lookup(&mut self, domain: &str, now: Instant) -> bool {
        let stale = self
            .domains
            .get(domain)
            .is_none_or(|(_, at)| now.duration_since(*at) >= GROUP_TTL);
        stale && self.resolving.insert(domain.to_string())
    }

    /// The provider group destination `domain` of `sender` counts against,
    /// with the group's limits, once the domain's group is known.
    pub(super) fn group_for(
        &self,
        shaping: &Shaping,
        domain: &str,
        sender: &Sender,
    ) -> Option<(GroupKey, Group)> {
        let name = self.known_group(domain)?;
        let g = shaping.group(name).unwrap_or(&shaping.default);
        Some((GroupKey::of(&g.name, domain, sender.source_ip), g.clone()))
    }

    /// The group of `domain`, when known (no lookup is started).
    pub(super) fn known_group(&self, domain: &str) -> Option<&str> {
        self.domains.get(domain).map(|(g, _)| g.as_str())
    }

    /// Records the group of `domain` (its MX lookup is done).
    pub(super) fn learned(&mut self, domain: &str, group: String, now: Instant) {
        self.resolving.remove(domain);
        self.domains.insert(domain.to_string(), (group, now));
    }

    /// The state of `key`, made on first use.
    pub(super) fn state(&mut self, key: &GroupKey) -> &mut GroupState {
        self.groups
            .entry(key.clone())
            .or_insert_with(|| GroupState::new(Instant::now()))
    }

    /// Whether `sender`'s use in `period` must still be read from the store.
    pub(super) fn warm_unloaded(&self, sender: &str, period: u64) -> bool {
        !self.warm_loaded.contains(&(sender.to_string(), period))
    }

    /// Records `sender`'s use in `period` as read from the store (added to
    /// what was taken meanwhile).
    pub(super) fn warm_load(&mut self, sender: &str, period: u64, used: Vec<(String, u64)>) {
        if !self.warm_loaded.insert((sender.to_string(), period)) {
            return;
        }
        for (scope, n) in used {
            *self
                .warm
                .entry((sender.to_string(), scope, period))
                .or_default() += n;
        }
        // This sender's earlier periods are over (periods are per sender).
        self.warm
            .retain(|(s, _, p), _| s != sender || *p + 1 >= period);
        self.warm_loaded
            .retain(|(s, p)| s != sender || *p + 1 >= period);
    }

    /// `sender`'s room for `group` at `now_ms`.
    pub(super) fn warm_room(&self, sender: &Sender, group: &str, now_ms: i64) -> WarmRoom {
        let Some(w) = &sender.warmup else {
            return WarmRoom::Unlimited;
        };
        let p = w.period_at(now_ms);
        if !w.active(p) {
            return WarmRoom::Unlimited;
        }
        if self.warm_unloaded(&sender.id, p) {
            return WarmRoom::Unknown;
        }
        let mut room: Option<u64> = None;
        let mut scopes = Vec::new();
        // A relay has no provider group: only the allowance of all mail.
        for (i, scope) in ["", group].into_iter().enumerate() {
            if i == 1 && scope.is_empty() {
                continue;
            }
            let allowance = w.allowance((!scope.is_empty()).then_some(scope), p);
            let Some(allowance) = allowance else {
                continue;
            };
            let used = self
                .warm
                .get(&(sender.id.clone(), scope.to_string(), p))
                .copied()
                .unwrap_or(0);
            if used >= allowance {
                let until = w.period_end(p);
                let what = if scope.is_empty() {
                    "all mail".to_string()
                } else {
                    format!("provider group `{scope}`")
                };
                let at = chrono::DateTime::from_timestamp_millis(until)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                return WarmRoom::Exhausted {
                    until,
                    why: format!(
                        "held for warm-up: sender `{}` has sent its allowance of {allowance} ({what}) for warm-up period {p}; carries on at {at}",
                        sender.id
                    ),
                };
            }
            room = Some(room.map_or(allowance - used, |r: u64| r.min(allowance - used)));
            scopes.push(scope.to_string());
        }
        match room {
            None => WarmRoom::Unlimited,
            Some(r) => WarmRoom::Left(
                r,
                WarmUse {
                    sender: sender.id.clone(),
                    period: p,
                    scopes,
                    n: 0,
                },
            ),
        }
    }

    /// Counts `u.n` recipients taken (or, with `give_back`, returned).
    pub(super) fn warm_take(&mut self, u: &WarmUse, give_back: bool) {
        for s in &u.scopes {
            let e = self
                .warm
                .entry((u.sender.clone(), s.clone(), u.period))
                .or_default();
            *e = if give_back {
                e.saturating_sub(u.n)
            } else {
                e.saturating_add(u.n)
            };
        }
    }

    /// The warm-up state of `sender` now (for the campaign status): period,
    /// use and allowance of all its mail, when limited.
    pub(super) fn warm_status(&self, sender: &Sender, now_ms: i64) -> Option<WarmStatus> {
        let w = sender.warmup.as_ref()?;
        let p = w.period_at(now_ms);
        if !w.active(p) {
            return None;
        }
        let used = |scope: &str| {
            self.warm
                .get(&(sender.id.clone(), scope.to_string(), p))
                .copied()
                .unwrap_or(0)
        };
        Some(WarmStatus {
            period: p,
            used: used(""),
            allowance: w.allowance(None, p),
            groups: w
                .groups
                .keys()
                .filter_map(|g| w.allowance(Some(g), p).map(|a| (g.clone(), (used(g), a))))
                .collect(),
            period_ends: chrono::DateTime::from_timestamp_millis(w.period_end(p)),
        })
    }
}

/// A warming-up sender's use of its current period.
#[derive(Debug, Clone, Serialize)]
pub struct WarmStatus {
    /// The period (0 = the first).
    pub period: u64,
    /// Recipients sent in it, all mail.
    pub used: u64,
    /// Its allowance for all mail, when set.
    pub allowance: Option<u64>,
    /// Per provider group: (used, allowance).
    pub groups: std::collections::BTreeMap<String, (u64, u64)>,
    /// When the period ends (the allowance starts afresh).
    pub period_ends: Option<chrono::DateTime<chrono::Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(conns: usize, per_second: Option<f64>) -> Group {
        Group {
            name: "g".into(),
            mx: vec![".g.test".into()],
            connections: conns,
            messages_per_second: per_second,
            messages_per_hour: None,
            messages_per_connection: 100,
            recipients_per_transaction: 100,
        }
    }

    fn rule(action: Action) -> Rule {
        Rule {
            name: "r".into(),
            reply: vec!["421".into()],
            groups: vec![],
            action,
            recover_after: Duration::from_secs(60),
        }
    }

    /// A reduction halves the rate, a repeat within the settle time does
    /// nothing, and recovery doubles it back step by step.
    #[test]
    fn back_off_and_recover_step_by_step() {
        let g = group(4, Some(10.0));
        let t0 = Instant::now();
        let mut s = GroupState::new(t0);
        assert_eq!(s.interval(&g), Some(Duration::from_millis(100)));
        let r = rule(Action::Reduce(0.5));
        assert!(s.back_off(&r, "421 slow down", &g, t0, 0).is_some());
        assert!(
            s.back_off(&r, "421 slow down", &g, t0 + Duration::from_secs(1), 0)
                .is_none()
        );
        assert!(
            s.back_off(&r, "421 slow down", &g, t0 + Duration::from_secs(3), 0)
                .is_some()
        );
        assert_eq!(s.mode(t0), "reduced");
        assert_eq!(s.interval(&g), Some(Duration::from_millis(400)));
        // Too early to recover; then one step per recover_after.
        assert!(s.succeeded(&g, t0 + Duration::from_secs(30)).is_none());
        let t1 = t0 + Duration::from_secs(64);
        assert!(s.succeeded(&g, t1).is_some());
        assert_eq!(s.interval(&g), Some(Duration::from_millis(200)));
        assert!(s.succeeded(&g, t1 + Duration::from_secs(1)).is_none());
        assert!(s.succeeded(&g, t1 + Duration::from_secs(61)).is_some());
        assert_eq!(s.mode(t1 + Duration::from_secs(61)), "normal");
        assert_eq!(s.interval(&g), Some(Duration::from_millis(100)));
        assert!(s.cause.is_none());
    }

    #[test]
    fn connection_cap_and_suspension() {
        let g = group(4, None);
        let t0 = Instant::now();
        let mut s = GroupState::new(t0);
        assert!(
            s.back_off(&rule(Action::Connections(1)), "421 too many", &g, t0, 0)
                .is_some()
        );
        assert_eq!((s.conn_limit(&g), s.mode(t0)), (1, "limited"));
        let t1 = t0 + Duration::from_secs(61);
        s.succeeded(&g, t1);
        assert_eq!(s.conn_limit(&g), 2);
        let mut s = GroupState::new(t0);
        let susp = rule(Action::Suspend(Duration::from_secs(600)));
        s.back_off(&susp, "421 blocked", &g, t0, 1_000);
        assert_eq!(s.suspended(t0 + Duration::from_secs(1)), Some(601_000));
        assert_eq!(s.mode(t0), "suspended");
        assert_eq!(s.suspended(t0 + Duration::from_secs(601)), None);
        s.succeeded(&g, t0 + Duration::from_secs(700));
        assert_eq!(s.mode(t0 + Duration::from_secs(700)), "normal");
    }

    /// A group without a rate gets one from what it was doing.
    #[test]
    fn reducing_an_unlimited_group_starts_from_its_recent_rate() {
        let g = group(4, None);
        let t0 = Instant::now();
        let mut s = GroupState::new(t0);
        for i in 0..200 {
            assert!(s.reserve(&g, t0 + Duration::from_millis(i * 50)).is_none());
        }
        s.reserve(&g, t0 + Duration::from_secs(11));
        assert_eq!(s.interval(&g), None);
        s.back_off(
            &rule(Action::Reduce(0.5)),
            "421",
            &g,
            t0 + Duration::from_secs(11),
            0,
        );
        // 200 in the 10 s window: 20/s, halved: 10/s.
        assert_eq!(s.interval(&g), Some(Duration::from_millis(100)));
    }

    #[test]
    fn warm_up_room_counts_all_mail_and_the_group() {
        let mut sender = crate::config::Sender {
            id: "s".into(),
            from: String::new(),
            from_address: String::new(),
            domain: String::new(),
            return_path: String::new(),
            bounce_domain: None,
            helo: String::new(),
            require_tls: false,
            rate_per_second: None,
            rate_per_hour: None,
            unsubscribe_mailto: None,
            dkim: vec![],
            relay: None,
            source_ip: None,
            warmup: None,
        };
        let mut sh = Shaper::default();
        assert_eq!(sh.warm_room(&sender, "wp", 0), WarmRoom::Unlimited);
        sender.warmup = Some(crate::config::warmup::Warmup {
            start_ms: 0,
            period_ms: 1000,
            overall: vec![10],
            groups: [("wp".to_string(), vec![3])].into(),
        });
        assert_eq!(sh.warm_room(&sender, "wp", 0), WarmRoom::Unknown);
        sh.warm_load("s", 0, vec![("wp".into(), 2)]);
        let WarmRoom::Left(1, mut u) = sh.warm_room(&sender, "wp", 0) else {
            panic!("{:?}", sh.warm_room(&sender, "wp", 0));
        };
        assert_eq!(u.scopes, ["", "wp"]);
        u.n = 1;
        sh.warm_take(&u, false);
        assert!(matches!(
            sh.warm_room(&sender, "wp", 10),
            WarmRoom::Exhausted { until: 1000, .. }
        ));
        assert!(matches!(
            sh.warm_room(&sender, "google", 10),
            WarmRoom::Left(9, _)
        ));
        // The next period is past the schedule: no limit.
        assert_eq!(sh.warm_room(&sender, "wp", 1000), WarmRoom::Unlimited);
    }
}
