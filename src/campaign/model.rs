//! What a campaign is: the spec the marketer writes (editable while draft)
//! and the run state Herald keeps while sending it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::contacts::model::Channel;

/// Where a campaign is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Being written; can be edited, tested, scheduled, started.
    Draft,
    /// Starts by itself at `run.scheduled_for`.
    Scheduled,
    /// Sending (or waiting for an A/B window, a stage, or outcomes).
    Running,
    /// Stopped by the marketer; resumes where it stopped.
    Paused,
    /// Stopped for good; nothing more is queued.
    Cancelled,
    /// Every message has a final outcome; read-only.
    Completed,
}

impl Status {
    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Scheduled => "scheduled",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Cancelled => "cancelled",
            Status::Completed => "completed",
        }
    }

    /// Parses an API name.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "draft" => Status::Draft,
            "scheduled" => Status::Scheduled,
            "running" => Status::Running,
            "paused" => Status::Paused,
            "cancelled" => Status::Cancelled,
            "completed" => Status::Completed,
            _ => return None,
        })
    }

    /// Whether the campaign still has work (or may get some).
    pub fn is_live(self) -> bool {
        matches!(self, Status::Scheduled | Status::Running | Status::Paused)
    }
}

/// Who receives a campaign: members of any of the lists or segments, minus
/// members of any exclusion; only `granted` contacts, whatever the lists say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// List names.
    #[serde(default)]
    pub lists: Vec<String>,
    /// Segment names.
    #[serde(default)]
    pub segments: Vec<String>,
    /// Lists whose members are left out.
    #[serde(default)]
    pub exclude_lists: Vec<String>,
    /// Segments whose members are left out.
    #[serde(default)]
    pub exclude_segments: Vec<String>,
}

/// What decides an A/B test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Unique opens / recipients.
    Opens,
    /// Unique clicks / recipients.
    Clicks,
    /// Attributed revenue / recipients.
    Revenue,
}

/// One A/B variant: what differs from the campaign's own settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// A label (default A, B, C…).
    #[serde(default)]
    pub name: Option<String>,
    /// Subject template instead of the template's.
    #[serde(default)]
    pub subject: Option<String>,
    /// Another template.
    #[serde(default)]
    pub template: Option<String>,
    /// Another sender identity.
    #[serde(default)]
    pub sender: Option<String>,
}

fn yes() -> bool {
    true
}

/// An A/B split test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbSpec {
    /// 2 to 5 variants.
    pub variants: Vec<VariantSpec>,
    /// Percentage of the audience in the test (split evenly between the
    /// variants); the rest gets the winner. 100: everyone is in the test.
    pub test_share: f64,
    /// What picks the winner.
    pub metric: Metric,
    /// How long after the test messages are queued the winner is chosen
    /// (humantime: "4h", "1 day").
    pub window: String,
    /// Choose and send the winner automatically (default); otherwise wait
    /// for `POST /api/v1/campaigns/{id}/winner`.
    #[serde(default = "yes")]
    pub auto: bool,
    /// Seed of the random split (default: derived from the campaign id).
    #[serde(default)]
    pub seed: Option<u64>,
}

/// Who of stage N's recipients gets stage N+1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StageFilter {
    /// Every recipient of the previous stage.
    #[default]
    All,
    /// Those who opened it.
    Opened,
    /// Those who did not open it.
    NotOpened,
    /// Those who clicked in it.
    Clicked,
    /// Those who did not click in it.
    NotClicked,
}

/// A follow-up stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// How long after the previous stage started sending (humantime:
    /// "3 days").
    pub after: String,
    /// Template (default: the campaign's).
    #[serde(default)]
    pub template: Option<String>,
    /// Subject template instead of the template's.
    #[serde(default)]
    pub subject: Option<String>,
    /// Who of the previous stage's recipients.
    #[serde(default)]
    pub only: StageFilter,
}

/// What the marketer writes; editable while the campaign is a draft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Name.
    pub name: String,
    /// Who receives it.
    #[serde(default)]
    pub audience: Audience,
    /// Template folder name.
    pub template: String,
    /// `email` (the default) or `sms`: an SMS campaign sends each
    /// template's `body.<lang>.sms.txt` to contacts with a phone and SMS
    /// consent `granted`.
    #[serde(default, skip_serializing_if = "Channel::is_email")]
    pub channel: Channel,
    /// The `[[sms_gateway]]` an SMS campaign goes through (default:
    /// `[sms] gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms_gateway: Option<String>,
    /// Sender identity (default: the template's).
    #[serde(default)]
    pub sender: Option<String>,
    /// Subject template instead of the template's.
    #[serde(default)]
    pub subject: Option<String>,
    /// Personal greeting with the contact's name.
    #[serde(default = "yes")]
    pub personalize: bool,
    /// Click and open tracking.
    #[serde(default = "yes")]
    pub tracking: bool,
    /// SKUs for the template's `products`.
    #[serde(default)]
    pub products: Vec<String>,
    /// Values for the template's `data`.
    #[serde(default)]
    pub data: serde_json::Value,
    /// Cost of one message (for reports and the budget).
    #[serde(default)]
    pub cost_per_message: Option<f64>,
    /// Most the campaign may cost: sending stops when the next message
    /// would exceed it.
    #[serde(default)]
    pub budget: Option<f64>,
    /// Tags added to each recipient when their message is queued.
    #[serde(default)]
    pub tags_after: Vec<String>,
    /// At most this many messages queued per hour (default: as fast as
    /// delivery takes them).
    #[serde(default)]
    pub rate_per_hour: Option<u64>,
    /// An A/B test.
    #[serde(default)]
    pub ab: Option<AbSpec>,
    /// Follow-up stages.
    #[serde(default)]
    pub stages: Vec<StageSpec>,
    /// A coupon pool: each message gets its own code as `{{ coupon }}`; the
    /// campaign pauses (with a note) rather than send one without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon_pool: Option<String>,
}

/// Most A/B variants.
pub const MAX_VARIANTS: usize = 5;
/// Most follow-up stages.
pub const MAX_STAGES: usize = 10;

/// Longest duration a campaign takes (A/B window, stage delay): ten years.
/// Anything longer is a typo, and would overflow millisecond arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses a humantime duration with the key's name in the error; more than
/// [`MAX_DURATION`] is refused.
pub fn duration(key: &str, v: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(v)
        .map_err(|e| format!("{key}: `{v}` is not a duration such as \"4h\" or \"3 days\": {e}"))?;
    if d.is_zero() {
        return Err(format!("{key}: must be longer than zero"));
    }
    if d > MAX_DURATION {
        return Err(format!(
            "{key}: `{v}` is longer than the most allowed, 10 years"
        ));
    }
    Ok(d)
}

/// `from` (ms) plus the duration `v` of `key` (see [`duration`]), with
/// checked arithmetic: a sum that does not fit is an error, never a wrap.
pub fn after(key: &str, v: &str, from: i64) -> Result<i64, String> {
    let d = duration(key, v)?;
    i64::try_from(d.as_millis())
        .ok()
        .and_then(|ms| from.checked_add(ms))
        .ok_or_else(|| format!("{key}: `{v}` after {from} ms is past the end of time"))
}

impl Spec {
    /// Checks what can be checked without the config or the store.
    pub fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.name.trim().is_empty() {
            p.push("name: must not be empty".to_string());
        }
        if self.template.trim().is_empty() {
            p.push("template: must not be empty".to_string());
        }
        if let Some(pool) = &self.coupon_pool
            && !crate::coupons::valid_pool_name(pool)
        {
            p.push("coupon_pool: use 1-64 letters, digits, `-`, `_` or `.`".to_string());
        }
        if self.audience.lists.is_empty() && self.audience.segments.is_empty() {
            p.push("audience: give at least one list or segment".to_string());
        }
        for (k, v) in [
            ("cost_per_message", self.cost_per_message),
            ("budget", self.budget),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                p.push(format!("{k}: must be a number of at least 0"));
            }
        }
        if self.budget.is_some() && self.cost_per_message.is_none_or(|c| c <= 0.0) {
            p.push("budget: needs a cost_per_message above 0".to_string());
        }
        if self.rate_per_hour == Some(0) {
            p.push("rate_per_hour: must be at least 1".to_string());
        }
        if !(self.data.is_null() || self.data.is_object()) {
            p.push("data: must be an object".to_string());
        }
        for t in &self.tags_after {
            if t.trim().is_empty() || t.len() > 100 {
                p.push(format!("tags_after: `{t}` is not a tag (1-100 characters)"));
            }
        }
        if let Some(ab) = &self.ab {
            let n = ab.variants.len();
            if !(2..=MAX_VARIANTS).contains(&n) {
                p.push(format!(
                    "ab.variants: {n} variants; give 2 to {MAX_VARIANTS}"
                ));
            }
            for (i, v) in ab.variants.iter().enumerate() {
                if v.subject.is_none() && v.template.is_none() && v.sender.is_none() {
                    p.push(format!(
                        "ab.variants[{i}]: give a subject, template or sender that differs"
                    ));
                }
            }
            if !(ab.test_share > 0.0 && ab.test_share <= 100.0) {
                p.push("ab.test_share: a percentage above 0 and at most 100".to_string());
            }
            if let Err(e) = duration("ab.window", &ab.window) {
                p.push(e);
            }
            if !self.stages.is_empty() {
                p.push("stages: a campaign with an A/B test has no follow-up stages".to_string());
            }
        }
        if self.stages.len() > MAX_STAGES {
            p.push(format!("stages: at most {MAX_STAGES}"));
        }
        for (i, s) in self.stages.iter().enumerate() {
            if let Err(e) = duration(&format!("stages[{i}].after"), &s.after) {
                p.push(e);
            }
        }
        p
    }

    /// The variant names (A, B, … unless named).
    pub fn variant_names(&self) -> Vec<String> {
        match &self.ab {
            None => vec![String::new()],
            Some(ab) => ab
                .variants
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.name
                        .clone()
                        .unwrap_or_else(|| char::from(b'A' + i as u8).to_string())
                })
                .collect(),
        }
    }
}

/// Variant number of a part whose recipients get the A/B winner (not yet
/// chosen when the part is created).
pub const WINNER: u32 = u32::MAX;

/// One slice of the audience, sent with one variant in one stage: the unit
/// whose progress is durable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// Stage (0: the campaign itself).
    pub stage: u32,
    /// Variant index, or [`WINNER`] for the A/B remainder.
    pub variant: u32,
    /// Recipients in the snapshot.
    pub size: u64,
    /// Recipients before this position are done (queued or skipped).
    pub cursor: u64,
    /// Messages queued.
    pub queued: u64,
    /// Recipients skipped (no longer granted, erased, already sent).
    pub skipped: u64,
    /// Recipients whose message could not be rendered.
    pub failed: u64,
    /// When its first batch was queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<i64>,
    /// When its last batch was queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<i64>,
}

impl Part {
    /// Whether every recipient of the part is done.
    pub fn done(&self) -> bool {
        self.cursor >= self.size
    }
}

/// What Herald keeps while running a campaign.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Members of its lists and segments left out of the audience when it
    /// was resolved, and why (none for a campaign started before Herald
    /// counted them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_out: Option<LeftOut>,
    /// When it should start by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<i64>,
    /// When it started (audience snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<i64>,
    /// When it completed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<i64>,
    /// Contacts in the audience snapshot.
    #[serde(default)]
    pub audience: u64,
    /// The parts, in sending order.
    #[serde(default)]
    pub parts: Vec<Part>,
    /// When the A/B test window ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_ends: Option<i64>,
    /// The A/B winner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<u32>,
    /// Why it won (the metric per variant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner_reason: Option<String>,
    /// The seed the A/B split used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// When the next stage is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_stage_at: Option<i64>,
    /// Why sending stopped early (budget) or failed (template gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Messages the budget allows (cost per message × this ≤ budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_messages: Option<u64>,
}

/// Members of a campaign's lists and segments left out of its audience when
/// it was resolved, each counted once, under the first reason that applies
/// in this order: an exclusion (the marketer's choice), consent other than
/// `granted`, the suppression list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOut {
    /// In a list of `exclude_lists`.
    #[serde(default)]
    pub excluded_list: u64,
    /// In a segment of `exclude_segments`.
    #[serde(default)]
    pub excluded_segment: u64,
    /// Consent `unknown` (imported or created by a shop event without it).
    #[serde(default)]
    pub consent_unknown: u64,
    /// Consent `pending` (double opt-in not confirmed).
    #[serde(default)]
    pub consent_pending: u64,
    /// Consent `withdrawn`.
    #[serde(default)]
    pub consent_withdrawn: u64,
    /// Consent `invalid` (a hard bounce).
    #[serde(default)]
    pub consent_invalid: u64,
    /// `granted`, but the address is on the suppression list.
    #[serde(default)]
    pub suppressed: u64,
    /// An SMS campaign's member without a phone number (their consent is
    /// SMS consent, counted under the `consent_*` reasons).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub no_phone: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LeftOut {
    /// As the API shows it: every reason and the total; null for a campaign
    /// started before Herald counted them.
    pub fn view(l: Option<&LeftOut>) -> serde_json::Value {
        match l {
            None => serde_json::Value::Null,
            Some(l) => {
                let mut v = serde_json::to_value(l).unwrap_or_default();
                v["total"] = l.total().into();
                v
            }
        }
    }

    /// Everyone left out.
    pub fn total(&self) -> u64 {
        self.excluded_list
            + self.excluded_segment
            + self.consent_unknown
            + self.consent_pending
            + self.consent_withdrawn
            + self.consent_invalid
            + self.suppressed
            + self.no_phone
    }
}

/// A campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    /// Sequential number.
    pub id: u64,
    /// When it was created.
    pub created: i64,
    /// When it last changed.
    pub updated: i64,
    /// Status.
    pub status: Status,
    /// What it sends.
    pub spec: Spec,
    /// How far it is.
    #[serde(default)]
    pub run: Run,
}

impl Campaign {
    /// Messages queued over every part.
    pub fn queued(&self) -> u64 {
        self.run.parts.iter().map(|p| p.queued).sum()
    }

    /// The stage being sent (the highest with a part).
    pub fn stage(&self) -> u32 {
        self.run.parts.iter().map(|p| p.stage).max().unwrap_or(0)
    }

    /// What it is doing now, in words (for status displays).
    pub fn phase(&self) -> &'static str {
        match self.status {
            Status::Draft => "draft",
            Status::Scheduled => "waiting for its start time",
            Status::Paused => "paused",
            Status::Cancelled => "cancelled",
            Status::Completed => "completed",
            Status::Running => {
                if self
                    .run
                    .parts
                    .iter()
                    .any(|p| !p.done() && p.variant != WINNER)
                {
                    "sending"
                } else if self
                    .run
                    .parts
                    .iter()
                    .any(|p| p.variant == WINNER && !p.done())
                {
                    if self.run.winner.is_some() {
                        "sending the winner"
                    } else if self.spec.ab.as_ref().is_some_and(|a| !a.auto) {
                        "A/B test: waiting for the test window or a chosen winner"
                    } else {
                        "A/B test: waiting for the test window"
                    }
                } else if self.run.next_stage_at.is_some() {
                    "waiting for the next stage"
                } else {
                    "waiting for delivery outcomes"
                }
            }
        }
    }
}

pub use crate::send::model::{Counter, slot, unslot};
