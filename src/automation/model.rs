//! What the automations keep: the running set of flows ([`FlowSet`]), a
//! run of a flow for one contact and occurrence ([`Run`], stored as JSON in
//! `auto_runs_v1`), and a flow's stored record ([`FlowRecord`]: an API
//! flow's definition, and the pause state of any flow).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::flow::{Flow, Trigger};

/// Where a flow came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `config/automations/NAME.toml`.
    File,
    /// `/api/v1/automations`.
    Api,
}

/// A flow as the daemon runs it.
#[derive(Debug, Clone)]
pub struct LiveFlow {
    /// The flow as written.
    pub flow: Flow,
    /// Its send id (the hash of its name): `SendRef { Automation, id, step }`.
    pub id: u64,
    /// A hash of its definition: changes when it is edited.
    pub version: u64,
    /// File or API.
    pub source: Source,
    /// Paused: enters nobody, holds pending runs.
    pub paused: bool,
}

/// The flows the daemon runs, indexed for the store hook.
#[derive(Debug, Default)]
pub struct FlowSet {
    /// By id.
    pub by_id: HashMap<u64, Arc<LiveFlow>>,
    /// Names of flows that failed to load, with their problems.
    pub failed: Vec<(String, Vec<String>)>,
}

impl FlowSet {
    /// The live flows with this trigger type (paused ones left out).
    pub fn with<'a>(
        &'a self,
        pick: impl Fn(&Trigger) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Arc<LiveFlow>> + 'a {
        self.by_id
            .values()
            .filter(move |f| !f.paused && pick(&f.flow.trigger))
    }

    /// A flow by name.
    pub fn named(&self, name: &str) -> Option<&Arc<LiveFlow>> {
        self.by_id
            .get(&flow_id(name))
            .filter(|f| f.flow.name == name)
    }
}

/// A flow's send id: the first 32 bits of SHA-256 of its name (like a
/// transactional tag's; a collision is refused when the flow is named).
pub fn flow_id(name: &str) -> u64 {
    crate::send::model::tag_id(name)
}

/// An occurrence's key: the first 64 bits of SHA-256 of its description.
pub fn occurrence_key(what: &str) -> u64 {
    let d = Sha256::digest(what.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// A hash of a flow's definition.
pub fn version_of(def: &serde_json::Value) -> u64 {
    occurrence_key(&def.to_string())
}

/// What a flow's record in the store says (`auto_flows_v1`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// The definition of an API flow (`None`: a file flow's record, which
    /// keeps only its pause state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<serde_json::Value>,
    /// Paused.
    #[serde(default)]
    pub paused: bool,
    /// Created (ms).
    #[serde(default)]
    pub created: i64,
    /// Last changed (ms).
    #[serde(default)]
    pub updated: i64,
    /// The versions whose scheduled occurrences were armed for every
    /// contact (a new version of a date-based flow scans once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub armed: Vec<u64>,
}

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum RunState {
    /// Waiting for its next step.
    Waiting,
    /// Every step done.
    Completed,
    /// Ended by a condition, consent, a missing flow… (the reason).
    Exited(String),
}

/// What a run is about, for checks when a step is due and for rendering.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Occurrence {
    /// Human form: `order 1001`, `cart 1733…`, `birthday 2026`.
    pub what: String,
    /// The order it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// The cart version (its `updated_at`, ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cart: Option<i64>,
    /// The restocked SKU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// The activity an inactivity run follows (last login ms, or last
    /// order day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<i64>,
}

/// One contact's run through a flow for one occurrence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The flow's name.
    pub flow: String,
    /// What started it.
    pub occurrence: Occurrence,
    /// The event's own time (ms): delays count from it.
    pub trigger_at: i64,
    /// When the run was created (ms).
    pub entered_at: i64,
    /// The next step.
    pub step: u32,
    /// When that step is due as scheduled (ms), before any hold; later
    /// steps count from it.
    pub scheduled: i64,
    /// Where it is.
    #[serde(flatten)]
    pub state: RunState,
    /// The coupon code handed to it, once taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupon: Option<String>,
    /// Steps sent: (step, slot, queue id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sent: Vec<(u32, u32, u64)>,
    /// How often its current step was held (cap, quiet hours, coupons).
    #[serde(default)]
    pub held: u32,
}

impl Run {
    /// A new run waiting for its first step, due at `due`.
    pub fn new(flow: &str, occurrence: Occurrence, trigger_at: i64, now: i64, due: i64) -> Run {
        Run {
            flow: flow.to_string(),
            occurrence,
            trigger_at,
            entered_at: now,
            step: 0,
            scheduled: due,
            state: RunState::Waiting,
            coupon: None,
            sent: Vec::new(),
            held: 0,
        }
    }
}

/// Counter names of `auto_counts_v1`.
pub mod counter {
    /// A contact entered the flow.
    pub const ENTERED: &str = "entered";
    /// A step's message was queued.
    pub const QUEUED: &str = "queued";
    /// A run finished every step.
    pub const COMPLETED: &str = "completed";
    /// A step was due longer than `max_late` ago when found.
    pub const MISSED: &str = "missed";
    /// Held by the frequency cap.
    pub const HELD_CAP: &str = "held.frequency_cap";
    /// Held by quiet hours.
    pub const HELD_QUIET: &str = "held.quiet_hours";
    /// Held: the coupon pool is empty.
    pub const HELD_COUPON: &str = "held.coupon_pool_empty";
    /// Held: the flow is paused.
    pub const HELD_PAUSED: &str = "held.paused";
}
