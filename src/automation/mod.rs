//! Automations: event-triggered flows, exactly once per occurrence.
//!
//! A flow (`flow.rs`: a TOML file in `config/automations/` or the same
//! structure as JSON through `/api/v1/automations`) has a trigger, optional
//! conditions and steps. The way a message goes:
//!
//! 1. **Arming** (`arm.rs`): the store runs a hook at the end of every write
//!    transaction with its changes; an order, a cart, a login, a list
//!    joined, a restock… that fires a flow's trigger writes a run for the
//!    (flow, contact, occurrence) with its first step's due time, in that
//!    same transaction. A run is written once per occurrence, ever: a
//!    duplicate event, a restart or a `kill -9` cannot arm it twice, and an
//!    acknowledged event cannot lose its trigger. Date-based triggers
//!    (birthday, registration, inactivity, delivery dates) arm the next
//!    occurrence when the data arrives; a new flow arms them for every
//!    existing contact once (`backfill`).
//! 2. **Due** (`runner.rs`): one task reads the front of the due index
//!    (`auto_due_v1`, ordered by time: finding due runs does not grow with
//!    how many wait), decides each (`step.rs`: exit conditions, consent,
//!    variants, quiet hours), renders and signs on the rayon pool, and
//!    commits each message through `send::outbox::commit_batch` together
//!    with the run's next step, in one transaction. The commit checks the
//!    run again (same step, same due time), so a message is queued at most
//!    once per (flow, step, contact, occurrence).
//! 3. Everything after is the send layer's: `SendRef { Automation, flow id,
//!    slot(step, variant) }` on the queue record and in every token, so
//!    delivery, opens, clicks, unsubscribes, orders and revenue are reported
//!    per flow, step and variant like a newsletter's.

pub mod arm;
pub mod backfill;
pub mod files;
pub mod flow;
pub mod model;
pub mod ops;
pub mod runner;
pub mod segments;
pub mod step;
pub mod when;

use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use crate::activity::Activity;
use crate::clock::Clock;
use crate::delivery::Engine;
use crate::segment::Index;
use crate::snapshot::Current;
use crate::store::{Store, StoreError};
use model::{FlowRecord, FlowSet, LiveFlow, Source, flow_id, version_of};

/// Why an automation operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AutomationError {
    /// No flow by that name.
    #[error("no automation `{0}`")]
    NotFound(String),
    /// The definition has problems (each with its JSON path).
    #[error("the automation has problems: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The name is taken (by a file flow, or another API flow).
    #[error("{0}")]
    Conflict(String),
    /// A file flow cannot be changed through the API.
    #[error("automation `{0}` is a file in config/automations; edit the file and reload (SIGHUP)")]
    ReadOnly(String),
    /// The contact does not exist.
    #[error("no contact {0}")]
    NoContact(String),
    /// Nothing to render or send for that contact.
    #[error("{0}")]
    Nothing(String),
    /// Rendering or queueing failed.
    #[error("{0}")]
    Send(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The automations of a running daemon: the flows, the store hook that
/// arms them, the runner.
pub struct Automations {
    pub(crate) store: Store,
    pub(crate) config: Arc<Current>,
    pub(crate) clock: Clock,
    pub(crate) index: Arc<Index>,
    pub(crate) pool: Arc<rayon::ThreadPool>,
    pub(crate) engine: Engine,
    pub(crate) activity: Activity,
    pub(crate) flows: RwLock<Arc<FlowSet>>,
    /// Woken when a run is armed due soon, or the flows change.
    pub(crate) wake: Notify,
    /// The earliest due time armed since the runner last looked.
    pub(crate) armed: std::sync::Mutex<Option<i64>>,
}

impl Automations {
    /// The automations over a store; [`Automations::attach`] hooks them in.
    pub fn new(
        store: Store,
        config: Arc<Current>,
        clock: Clock,
        index: Arc<Index>,
        pool: Arc<rayon::ThreadPool>,
        engine: Engine,
        activity: Activity,
    ) -> Arc<Automations> {
        Arc::new(Automations {
            store,
            config,
            clock,
            index,
            pool,
            engine,
            activity,
            flows: RwLock::new(Arc::new(FlowSet::default())),
            wake: Notify::new(),
            armed: std::sync::Mutex::new(None),
        })
    }

    /// The flows now.
    pub fn flows(&self) -> Arc<FlowSet> {
        self.flows.read().map(|f| f.clone()).unwrap_or_default()
    }

    /// Installs the store hook that arms triggers (before anything writes
    /// that should fire them: at start, before the HTTP server).
    pub fn attach(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        self.store.set_hook(Arc::new(move |t, changes| {
            let Some(me) = me.upgrade() else {
                return Ok(());
            };
            let flows = me.flows();
            if flows.by_id.is_empty() {
                return Ok(());
            }
            let snap = me.config.snapshot();
            let mut cx = arm::Ctx {
                flows: &flows,
                config: &snap.config,
                now: me.clock.now().timestamp_millis(),
                earliest: None,
                backfill: false,
            };
            arm::on_changes(t, changes, &mut cx)?;
            if let Some(at) = cx.earliest {
                me.armed_at(at);
            }
            Ok(())
        }));
    }

    /// The store's lists and fields, for the conditions of `snap`'s flows.
    pub(crate) async fn catalog(
        &self,
        snap: &crate::snapshot::Snapshot,
    ) -> Result<crate::segment::Catalog, StoreError> {
        let sites = snap.config.sites.iter().map(|s| s.id.clone()).collect();
        crate::segment::Catalog::load(&self.store, sites).await
    }

    /// Notes that a run was armed due at `at`, waking the runner if that is
    /// sooner than it would look.
    pub(crate) fn armed_at(&self, at: i64) {
        if let Ok(mut a) = self.armed.lock() {
            *a = Some(a.map_or(at, |x| x.min(at)));
        }
        self.wake.notify_one();
    }

    /// Builds the flow set from the snapshot's files and the store's
    /// records (API flows, pause states), swaps it in, and starts arming
    /// date-based flows that are new for existing contacts.
    pub async fn reload(self: &Arc<Self>) -> Result<(), StoreError> {
        let snap = self.config.snapshot();
        let records: Vec<(String, FlowRecord)> = self.store.read(|v| v.flow_records()).await?;
        let sites: Vec<String> = snap.config.sites.iter().map(|s| s.id.clone()).collect();
        let mut set = FlowSet::default();
        let record_of = |name: &str| records.iter().find(|(n, _)| n == name).map(|(_, r)| r);
        for (name, f) in &snap.automations.loaded {
            let paused = record_of(name).is_some_and(|r| r.paused);
            set.by_id.insert(
                flow_id(name),
                Arc::new(LiveFlow {
                    id: flow_id(name),
                    version: version_of(&f.definition),
                    flow: (**f).clone(),
                    source: Source::File,
                    paused,
                }),
            );
        }
        for (name, e) in &snap.automations.failed {
            set.failed
                .push((name.clone(), e.iter().map(|x| x.to_string()).collect()));
        }
        for (name, r) in &records {
            let Some(def) = &r.definition else { continue };
            if snap.automations.loaded.contains_key(name) {
                continue;
            }
            let root = crate::segment::lang::from_json(def);
            match flow::parse(name, &root, &sites) {
                Ok(f) => {
                    let problems = files::check(&f, &root, &snap.config, &snap.templates);
                    if !problems.is_empty() {
                        set.failed
                            .push((name.clone(), problems.iter().map(ops::describe).collect()));
                        continue;
                    }
                    set.by_id.insert(
                        flow_id(name),
                        Arc::new(LiveFlow {
                            id: flow_id(name),
                            version: version_of(&f.definition),
                            flow: f,
                            source: Source::Api,
                            paused: r.paused,
                        }),
                    );
                }
                Err(p) => set
                    .failed
                    .push((name.clone(), p.iter().map(ops::describe).collect())),
            }
        }
        for (name, problems) in &set.failed {
            for p in problems {
                tracing::error!(automation = %name, "{p}");
            }
        }
        let set = Arc::new(set);
        if let Ok(mut f) = self.flows.write() {
            *f = set.clone();
        }
        self.wake.notify_one();
        backfill::start(self, &set, &records);
        Ok(())
    }
}
