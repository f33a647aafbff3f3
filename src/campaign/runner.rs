//! The campaign runner: a supervisor task that starts scheduled campaigns,
//! chooses A/B winners, opens stages and completes campaigns; and one worker
//! thread per sending part, which renders and signs batches on the rayon
//! pool just ahead of delivery and queues each batch in one commit together
//! with the part's cursor and the send's ledger (`send::outbox::commit_batch`).
//!
//! Errors as text: `compile`, `work` and `view_html` return `Result<_,
//! String>` on purpose. No caller tells their failures apart: a worker's
//! error pauses the campaign with the text as its note, a test send's is the
//! 422 message, and `/v/` logs it and shows the "link not valid" page.
//!
//! The worker keeps at most `window` of the campaign's messages waiting in
//! the queue (queued and not yet delivered or failed; deferred ones do not
//! count), so the queue never holds the whole audience's bodies and memory
//! stays flat whatever the audience size. Pausing or cancelling commits the
//! status first; a batch commit checks the status inside its transaction,
//! so nothing is queued after a pause is acknowledged.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::model::{Campaign, Counter, Metric, Part, StageFilter, Status, WINNER};
use super::{CampaignError, CampaignStore, CampaignWrite, audience, look, model};
use crate::activity::Activity;
use crate::clock::Clock;
use crate::contacts::model::{ConsentState, Contact};
use crate::delivery::Engine;
use crate::delivery::model::MailKind;
use crate::delivery::queue::{Signed, sign};
use crate::render::bulk::{Outcome, render_one};
use crate::render::{Compiled, Recipient, SendOptions};
use crate::segment::Index;
use crate::send::outbox::{Outbox, SmsOutbox, commit_batch, commit_sms_batch};
use crate::send::{SendKind, SendRef};
use crate::snapshot::{Current, Snapshot};
use crate::store::ReadTables as _;
use crate::store::{Store, StoreError};

/// Most messages rendered and queued per batch (one commit).
const CAMPAIGN_BATCH: usize = 100;

/// When the supervisor looks at the live campaigns again (besides being
/// woken by a change).
#[derive(Debug, Default, Clone, Copy)]
struct Next {
    /// The earliest time a live campaign has set (ms).
    at: Option<i64>,
    /// A running campaign waits for delivery outcomes.
    outcomes: bool,
}

impl Next {
    /// After a failed step at `now` (ms): look again in a second.
    fn retry(now: i64) -> Next {
        Next {
            at: Some(now + 1000),
            outcomes: false,
        }
    }

    fn at(&mut self, t: i64) {
        self.at = Some(self.at.map_or(t, |a| a.min(t)));
    }

    fn min(self, o: Next) -> Next {
        let mut n = self;
        if let Some(t) = o.at {
            n.at(t);
        }
        n.outcomes |= o.outcomes;
        n
    }

    /// What campaign `c` waits for.
    fn consider(&mut self, c: &Campaign, has_worker: bool) {
        match c.status {
            Status::Scheduled => {
                if let Some(t) = c.run.scheduled_for {
                    self.at(t);
                }
            }
            Status::Running if !has_worker => {
                if let Some(t) = c.run.test_ends.filter(|_| c.run.winner.is_none()) {
                    self.at(t);
                }
                if let Some(t) = c.run.next_stage_at {
                    self.at(t);
                }
                // Every part sent: completion waits for the outcomes.
                if c.run.parts.iter().all(|p| p.done()) {
                    self.outcomes = true;
                }
            }
            _ => {}
        }
    }
}

/// A worker thread sending one part.
struct Worker {
    stop: Arc<AtomicBool>,
    /// Set by the worker as its last act before it wakes the supervisor,
    /// so the supervisor never sees a finished worker as busy.
    done: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

/// The campaign service: lifecycle actions reach the runner through it.
pub struct Campaigns {
    store: Store,
    config: Arc<Current>,
    clock: Clock,
    index: Arc<Index>,
    pool: Arc<rayon::ThreadPool>,
    delivery: Engine,
    wake: tokio::sync::Notify,
    /// Campaigns changed since the supervisor last looked (by id).
    dirty: Mutex<BTreeSet<u64>>,
    /// The live campaigns (scheduled or running), kept by the supervisor
    /// so that it never reads campaigns that are done; `None` until the
    /// first look at start-up.
    live: Mutex<Option<BTreeSet<u64>>>,
    /// Delivery outcomes were recorded (the engine's notifier): a running
    /// campaign waiting for its outcomes looks again.
    outcomes: Arc<tokio::sync::Notify>,
    workers: Mutex<HashMap<u64, Worker>>,
    /// In-flight work and the daemon's stop signal: each worker holds a
    /// `campaign worker` guard; at stop, workers commit the batch in hand
    /// and end, and the supervisor ends.
    activity: Activity,
}

enum Item {
    Built(Box<Signed>),
    Sms(Box<crate::send::outbox::SmsOut>),
    Skip,
    Failed,
}

struct Batch {
    end: usize,
    items: Vec<Item>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Per-slot value of a counter.
fn count(counts: &crate::store::SendCounts, slot: u32, c: Counter) -> u64 {
    counts.get(&(slot, c as u8)).copied().unwrap_or(0)
}

/// Sum of a counter over every slot.
pub fn total(counts: &crate::store::SendCounts, c: Counter) -> u64 {
    counts
        .iter()
        .filter(|((_, k), _)| *k == c as u8)
        .map(|(_, v)| *v)
        .sum()
}

impl Campaigns {
    /// The service; call [`Campaigns::run`] to start the supervisor.
    pub fn new(
        store: Store,
        config: Arc<Current>,
        clock: Clock,
        index: Arc<Index>,
        pool: Arc<rayon::ThreadPool>,
        delivery: Engine,
        activity: Activity,
    ) -> Arc<Campaigns> {
        let outcomes = delivery.outcomes_recorded();
        Arc::new(Campaigns {
            store,
            config,
            clock,
            index,
            pool,
            delivery,
            wake: tokio::sync::Notify::new(),
            dirty: Mutex::new(BTreeSet::new()),
            live: Mutex::new(None),
            outcomes,
            workers: Mutex::new(HashMap::new()),
            activity,
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The current snapshot (config, templates, segment files).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.snapshot()
    }

    /// Now, in ms, from the daemon's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// Tells the supervisor that campaign `id` changed (created, started,
    /// paused, its worker ended…), so it looks at it now.
    pub fn wake_for(&self, id: u64) {
        lock(&self.dirty).insert(id);
        self.wake.notify_one();
    }

    /// The supervisor: runs until the daemon stops. It wakes when a
    /// campaign changes, when delivery records outcomes while a campaign
    /// waits for them, and at the next time a live campaign has set (a
    /// scheduled start, the end of an A/B window, the next stage); it never
    /// rereads campaigns that are not live.
    pub async fn run(self: Arc<Self>) {
        let stopping = self.activity.stopping();
        tokio::pin!(stopping);
        while !self.activity.is_stopping() {
            let ticked = self.tick().await;
            self.store.report_loop("campaign supervisor", &ticked);
            let next = match ticked {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "campaigns: supervisor step failed; retrying");
                    Next::retry(self.now_ms())
                }
            };
            let sleep = async {
                match next.at {
                    Some(at) => {
                        let ms = (at - self.now_ms()).clamp(0, 86_400_000) as u64;
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let outcomes = async {
                if next.outcomes {
                    self.outcomes.notified().await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = sleep => {}
                () = outcomes => {}
                () = &mut stopping => {}
            }
        }
    }

    /// Tells a campaign's worker to stop after its current batch.
    pub fn stop_worker(&self, id: u64) {
        if let Some(w) = lock(&self.workers).get(&id) {
            w.stop.store(true, Ordering::Relaxed);
        }
    }

    fn has_worker(&self, id: u64) -> bool {
        let mut w = lock(&self.workers);
        if w.get(&id)
            .is_some_and(|w| w.done.load(Ordering::Acquire) || w.handle.is_finished())
        {
            w.remove(&id);
        }
        w.contains_key(&id)
    }

    /// The live campaigns, read by id: at the first call every campaign is
    /// read once (start-up); afterwards only those known live or changed.
    async fn live_campaigns(&self) -> Result<Vec<Campaign>, CampaignError> {
        let known = lock(&self.live).clone();
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        let back = dirty.clone();
        let read = match known {
            None => {
                self.store
                    .read(|r| {
                        Ok(super::all(r)?
                            .into_iter()
                            .filter(|c| c.status.is_live())
                            .collect::<Vec<_>>())
                    })
                    .await
            }
            Some(mut ids) => {
                ids.extend(dirty);
                self.store
                    .read(move |r| {
                        let mut out = Vec::new();
                        for id in ids {
                            if let Some(c) = r.campaign(id)?
                                && c.status.is_live()
                            {
                                out.push(c);
                            }
                        }
                        Ok(out)
                    })
                    .await
            }
        };
        let all = match read {
            Ok(all) => all,
            Err(e) => {
                // Looked at again on the retry.
                lock(&self.dirty).extend(back);
                return Err(e.into());
            }
        };
        *lock(&self.live) = Some(all.iter().map(|c| c.id).collect());
        Ok(all)
    }

    /// One look at the live campaigns; says when to look again.
    async fn tick(self: &Arc<Self>) -> Result<Next, CampaignError> {
        let now = self.now_ms();
        let live = self.live_campaigns().await?;
        let mut next = Next::default();
        for c in &live {
            next.consider(c, self.has_worker(c.id));
        }
        for c in live {
            if self.activity.is_stopping() {
                break;
            }
            // One campaign's trouble never holds up the others.
            let r = match c.status {
                Status::Scheduled
                    if c.run.scheduled_for.is_some_and(|t| t <= now)
                        && self.store.bulk_allowed().is_err() =>
                {
                    // Starts once the store takes writes and has room.
                    next = next.min(Next::retry(self.now_ms()));
                    Ok(())
                }
                Status::Scheduled if c.run.scheduled_for.is_some_and(|t| t <= now) => {
                    match self.start(c.id).await {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            tracing::warn!(campaign = c.id, error = %e, "scheduled campaign could not start");
                            let msg = e.to_string();
                            super::change(self, c.id, move |c, _| {
                                c.status = Status::Paused;
                                c.run.note = Some(format!("could not start at its time: {msg}"));
                                Ok(())
                            })
                            .await
                            .map(|_| ())
                        }
                    }
                }
                Status::Running => self.advance(&c, now).await,
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(campaign = c.id, error = %e, "campaign step failed; retrying");
                next = next.min(Next::retry(self.now_ms()));
            }
        }
        Ok(next)
    }

    /// Moves a running campaign on: sends its next part, ends its A/B test,
    /// opens its next stage or completes it.
    async fn advance(self: &Arc<Self>, c: &Campaign, now: i64) -> Result<(), CampaignError> {
        if self.has_worker(c.id) {
            return Ok(());
        }
        let sendable = c
            .run
            .parts
            .iter()
            .position(|p| !p.done() && (p.variant != WINNER || c.run.winner.is_some()));
        if let Some(i) = sendable {
            self.spawn_worker(c.id, i);
            return Ok(());
        }
        let id = c.id;
        if c.run.parts.iter().any(|p| p.variant == WINNER) && c.run.winner.is_none() {
            let Some(ab) = c.spec.ab.clone() else {
                return Ok(());
            };
            match c.run.test_ends {
                None => {
                    let ends = model::after("ab.window", &ab.window, now)
                        .map_err(CampaignError::Invalid)?;
                    super::change(self, id, move |c, _| {
                        c.run.test_ends.get_or_insert(ends);
                        Ok(())
                    })
                    .await?;
                }
                Some(t) if t <= now && ab.auto => {
                    let (counts, money) = self
                        .store
                        .read(move |r| {
                            Ok((
                                r.send_counts(SendKind::Campaign, id)?,
                                r.send_money(SendKind::Campaign, id)?,
                            ))
                        })
                        .await?;
                    let (winner, reason) = pick_winner(c, ab.metric, &counts, &money);
                    super::change(self, id, move |c, _| {
                        if c.run.winner.is_none() {
                            c.run.winner = Some(winner);
                            c.run.winner_reason = Some(reason);
                        }
                        Ok(())
                    })
                    .await?;
                    tracing::info!(campaign = id, winner, "A/B test decided");
                }
                _ => {}
            }
            return Ok(());
        }
        let stage = c.stage();
        let budget_spent = c.run.budget_messages.is_some_and(|m| c.queued() >= m);
        if (stage as usize) < c.spec.stages.len() && !budget_spent {
            let spec = &c.spec.stages[stage as usize];
            match c.run.next_stage_at {
                None => {
                    let began = c
                        .run
                        .parts
                        .iter()
                        .filter(|p| p.stage == stage)
                        .filter_map(|p| p.started)
                        .min()
                        .or(c.run.started)
                        .unwrap_or(now);
                    let at = model::after(&format!("stages[{stage}].after"), &spec.after, began)
                        .map_err(CampaignError::Invalid)?;
                    super::change(self, id, move |c, _| {
                        c.run.next_stage_at = Some(at);
                        Ok(())
                    })
                    .await?;
                    self.wake_for(id);
                }
                Some(t) if t <= now => self.open_stage(c, stage + 1, spec.only).await?,
                _ => {}
            }
            return Ok(());
        }
        let counts = self
            .store
            .read(move |r| r.send_counts(SendKind::Campaign, id))
            .await?;
        if settled(c, &counts, false) >= c.queued() {
            super::change(self, id, |c, now| {
                if c.status == Status::Running {
                    c.status = Status::Completed;
                    c.run.finished = Some(now);
                }
                Ok(())
            })
            .await?;
            tracing::info!(campaign = id, "campaign completed");
        }
        Ok(())
    }

    /// Stage `stage`'s audience: the previous stage's recipients who pass
    /// the filter (consent is checked again when each message is queued).
    async fn open_stage(
        &self,
        c: &Campaign,
        stage: u32,
        only: StageFilter,
    ) -> Result<(), CampaignError> {
        let id = c.id;
        let rows = self
            .store
            .read(move |r| {
                r.round_recipients(SendRef {
                    kind: SendKind::Campaign,
                    id,
                    variant: model::slot(stage - 1, 0),
                })
            })
            .await?;
        let ids: Vec<u64> = rows
            .into_iter()
            .filter(|(_, _, f)| {
                let opened = f & crate::send::model::OPENED != 0;
                let clicked = f & crate::send::model::CLICKED != 0;
                match only {
                    StageFilter::All => true,
                    StageFilter::Opened => opened,
                    StageFilter::NotOpened => !opened,
                    StageFilter::Clicked => clicked,
                    StageFilter::NotClicked => !clicked,
                }
            })
            .map(|(c, _, _)| c)
            .collect();
        self.store
            .write(move |t| {
                let Some(mut c) = t.campaign(id)? else {
                    return Ok(());
                };
                if c.status != Status::Running || c.stage() >= stage {
                    return Ok(());
                }
                let part = c.run.parts.len() as u32;
                t.put_audience(id, part, &ids)?;
                c.run.parts.push(Part {
                    stage,
                    variant: 0,
                    size: ids.len() as u64,
                    ..Default::default()
                });
                c.run.next_stage_at = None;
                t.put_campaign(&c)?;
                Ok(())
            })
            .await?;
        tracing::info!(campaign = id, stage, "campaign stage opened");
        self.wake_for(id);
        Ok(())
    }

    /// Whether the campaign's sender (or, when the template decides, any
    /// sender) is warming up now.
    fn warming(&self, snap: &crate::snapshot::Snapshot, spec: &super::model::Spec) -> bool {
        let now_ms = self.now_ms();
        let warming = |s: &crate::config::Sender| {
            s.warmup
                .as_ref()
                .is_some_and(|w| w.active(w.period_at(now_ms)))
        };
        match &spec.sender {
            Some(id) => snap.config.sender(id).is_some_and(|s| warming(s)),
            None => snap.config.senders.iter().any(|s| warming(s)),
        }
    }

    /// Each part's audience reordered most recently engaged first: a
    /// warming-up sender's allowance goes to the contacts who open and
    /// click. On failure (the segment index unavailable) the id order stays.
    async fn engaged_first(&self, id: u64, groups: Vec<(u32, Vec<u64>)>) -> Vec<(u32, Vec<u64>)> {
        let index = self.index.clone();
        let keep = groups.clone();
        let ordered = tokio::task::spawn_blocking(move || {
            groups
                .into_iter()
                .map(|(v, ids)| index.engaged_first(&ids).map(|o| (v, o)))
                .collect::<Result<Vec<_>, String>>()
        })
        .await;
        match ordered {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                tracing::warn!(campaign = id, error = %e, "cannot order the audience by engagement; sending in id order");
                keep
            }
            Err(e) => {
                tracing::warn!(campaign = id, error = %e, "cannot order the audience by engagement; sending in id order");
                keep
            }
        }
    }

    /// Starts a draft or scheduled campaign: resolves and records the
    /// audience (the A/B split too) and sets it running.
    pub async fn start(&self, id: u64) -> Result<Campaign, CampaignError> {
        let c = super::get(self, id).await?;
        if !matches!(c.status, Status::Draft | Status::Scheduled) {
            return Err(CampaignError::Conflict(format!(
                "campaign {id} is {}; starting needs it draft or scheduled",
                c.status.as_str()
            )));
        }
        let snap = self.snapshot();
        super::check_spec(&c.spec, &snap, &self.store).await?;
        let today = self.clock.now().date_naive();
        let resolved = audience::resolve(
            &snap,
            &self.store,
            &self.index,
            &c.spec.audience,
            c.spec.channel,
            today,
        )
        .await?;
        let (ids, left_out) = (resolved.ids, resolved.left_out);
        let mut groups = Vec::new();
        let mut seed = None;
        match &c.spec.ab {
            Some(ab) => {
                let s = ab
                    .seed
                    .unwrap_or_else(|| id.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x6865_7261_6c64);
                seed = Some(s);
                let (g, rest) = audience::split(&ids, ab.variants.len(), ab.test_share, s);
                for (v, ids) in g.into_iter().enumerate() {
                    groups.push((v as u32, ids));
                }
                groups.push((WINNER, rest));
            }
            None => groups.push((0, ids.clone())),
        }
        if self.warming(&snap, &c.spec) {
            groups = self.engaged_first(id, groups).await;
        }
        let budget_messages = match (c.spec.budget, c.spec.cost_per_message) {
            (Some(b), Some(cost)) if cost > 0.0 => Some((b / cost + 1e-9).floor() as u64),
            _ => None,
        };
        let now = self.now_ms();
        let size = ids.len() as u64;
        let started = self
            .store
            .write(move |t| {
                let Some(mut c) = t.campaign(id)? else {
                    return Ok(Err(CampaignError::NotFound(format!("no campaign {id}"))));
                };
                if !matches!(c.status, Status::Draft | Status::Scheduled) {
                    return Ok(Err(CampaignError::Conflict(format!(
                        "campaign {id} is {}; starting needs it draft or scheduled",
                        c.status.as_str()
                    ))));
                }
                c.run.parts.clear();
                for (i, (variant, ids)) in groups.iter().enumerate() {
                    t.put_audience(id, i as u32, ids)?;
                    c.run.parts.push(Part {
                        stage: 0,
                        variant: *variant,
                        size: ids.len() as u64,
                        ..Default::default()
                    });
                }
                c.status = Status::Running;
                c.run.started = Some(now);
                c.run.audience = size;
                c.run.left_out = Some(left_out);
                c.run.seed = seed;
                c.run.budget_messages = budget_messages;
                c.updated = now;
                t.put_campaign(&c)?;
                Ok(Ok(c))
            })
            .await??;
        tracing::info!(
            campaign = id,
            audience = size,
            left_out = started.run.left_out.as_ref().map_or(0, |l| l.total()),
            "campaign started"
        );
        self.wake_for(id);
        Ok(started)
    }

    /// Takes a cancelled campaign's messages still waiting out of the queue.
    pub async fn purge_queue(&self, id: u64) -> Result<(), CampaignError> {
        let now = self.now_ms();
        let sel = crate::delivery::engine::Selection::Send(SendKind::Campaign, id);
        let mut after = 0;
        loop {
            let s = sel.clone();
            let (_, _, next) = self
                .store
                .write(move |t| {
                    crate::delivery::engine::purge(t, &s, after, "the campaign was cancelled", now)
                })
                .await?;
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
        // Its text messages still queued, too.
        self.store
            .write(move |t| {
                crate::sms::queue::purge_send(
                    t,
                    SendKind::Campaign,
                    id,
                    "the campaign was cancelled",
                    now,
                )
            })
            .await?;
        Ok(())
    }

    fn spawn_worker(self: &Arc<Self>, id: u64, part: usize) {
        if self.activity.is_stopping() {
            // The drain may be over: no new work once stopping.
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let svc = self.clone();
        let s2 = stop.clone();
        let d2 = done.clone();
        let guard = self.activity.guard("campaign worker");
        let handle = std::thread::Builder::new()
            .name(format!("herald-campaign-{id}"))
            .spawn(move || {
                let _guard = guard;
                let worked = svc.work(id, part, &s2);
                svc.store.report_loop("campaigns", &worked);
                if let Err(WorkError::Store(e)) = &worked
                    && (e.is_unavailable() || matches!(e, StoreError::LowSpace { .. }))
                {
                    // Not the campaign's fault: the supervisor starts a
                    // worker again from the durable cursor once the store
                    // takes writes.
                    tracing::warn!(campaign = id, error = %e, "campaign worker stopped: the store cannot take its messages now; it goes on from its cursor");
                } else if let Err(e) = worked {
                    tracing::error!(campaign = id, error = %e, "campaign paused: sending failed");
                    let now = svc.now_ms();
                    let r = svc.store.write_blocking(move |t| {
                        if let Some(mut c) = t.campaign(id)?
                            && c.status == Status::Running
                        {
                            c.status = Status::Paused;
                            c.run.note = Some(format!("paused by Herald: {e}"));
                            c.updated = now;
                            t.put_campaign(&c)?;
                        }
                        Ok(())
                    });
                    if let Ok(rx) = r {
                        let _ = rx.blocking_recv();
                    }
                }
                d2.store(true, Ordering::Release);
                svc.wake_for(id);
            });
        match handle {
            Ok(handle) => {
                lock(&self.workers).insert(id, Worker { stop, done, handle });
            }
            Err(e) => tracing::error!(campaign = id, error = %e, "cannot start a campaign worker"),
        }
    }

    /// Compiles what (stage, variant) sends, with the send's recorded links.
    fn compile(
        &self,
        snap: &Snapshot,
        c: &Campaign,
        stage: u32,
        variant: u32,
        send: SendRef,
    ) -> Result<Compiled, WorkError> {
        let l = look(&c.spec, stage, variant);
        let base = snap
            .templates
            .get(&l.template)
            .ok_or_else(|| format!("template `{}` is not loaded", l.template))?;
        let t = super::look_template(base, &l);
        let key = send.key();
        let skus = c.spec.products.clone();
        let (links, products) = self
            .store
            .read_blocking(|r| {
                let links = r.links(&key)?;
                let mut products = Vec::new();
                for s in &skus {
                    if let Some(p) = r.product(s)? {
                        products.push(p);
                    }
                }
                Ok((links, products))
            })
            .map_err(WorkError::Store)?;
        let opts = SendOptions {
            send,
            personalize: c.spec.personalize,
            tracking: c.spec.tracking,
            products,
            data: c.spec.data.clone(),
            links,
        };
        Ok(Compiled::new(Arc::new(t), &snap.config, opts)?)
    }

    /// Messages of the campaign in the queue and not final (deferred ones
    /// excluded: they wait for a retry and do not use delivery now); for
    /// SMS, not yet out of the SMS queue.
    fn outstanding(&self, id: u64) -> Result<u64, StoreError> {
        self.store.read_blocking(|r| {
            let Some(c) = r.campaign(id)? else {
                return Ok(0);
            };
            let counts = r.send_counts(SendKind::Campaign, id)?;
            Ok(c.queued().saturating_sub(settled(&c, &counts, true)))
        })
    }

    /// Sends one part, batch after batch, from its durable cursor.
    fn work(&self, id: u64, part_no: usize, stop: &AtomicBool) -> Result<(), WorkError> {
        let err = WorkError::Store;
        let activity = &self.activity;
        let Some(c) = self.store.read_blocking(|r| r.campaign(id)).map_err(err)? else {
            return Ok(());
        };
        if c.status != Status::Running {
            return Ok(());
        }
        let part = c
            .run
            .parts
            .get(part_no)
            .cloned()
            .ok_or_else(|| format!("part {part_no} is missing"))?;
        let variant = if part.variant == WINNER {
            c.run.winner.ok_or("the A/B winner is not chosen")?
        } else {
            part.variant
        };
        let slot = model::slot(part.stage, variant);
        let send = SendRef {
            kind: SendKind::Campaign,
            id,
            variant: slot,
        };
        let snap = self.snapshot();
        let compiled = self.compile(&snap, &c, part.stage, variant, send)?;
        let ids = self
            .store
            .read_blocking(|r| r.campaign_audience(id, part_no as u32))
            .map_err(err)?;
        // Small commits keep the store writer (which also records delivery
        // outcomes) responsive: 100 messages of 20 KB are a 2 MB commit;
        // 500 made delivery wait (BENCHMARKS.md, newsletters).
        let full = snap.config.rendering.batch_size.min(CAMPAIGN_BATCH);
        let batch = match c.spec.rate_per_hour {
            // About a second's worth per batch, so the pace stays even.
            Some(r) => ((r / 3600) as usize).clamp(1, full),
            None => full,
        }
        .max(1);
        let window = (snap.config.rendering.batch_size as u64 * 4).max(2000);
        let per_msg = c
            .spec
            .rate_per_hour
            .map(|r| Duration::from_secs_f64(3600.0 / r as f64));
        let start = (part.cursor as usize).min(ids.len());
        let (tx, rx) = sync_channel::<Result<Batch, WorkError>>(1);
        let sms = c.spec.channel == super::model::Channel::Sms;
        let sender = if sms {
            None
        } else {
            Some(
                compiled
                    .sender()
                    .map_err(|e| WorkError::Other(e.0))?
                    .clone(),
            )
        };
        let store = &self.store;
        let pool = &self.pool;
        let clock = &self.clock;
        let compiled_ref = &compiled;
        let ids_ref = &ids;
        let coupon_pool = c.spec.coupon_pool.as_deref();
        let stage = part.stage;
        let mut result = Ok(());
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut at = start;
                while at < ids_ref.len() {
                    if stop.load(Ordering::Relaxed) || activity.is_stopping() {
                        return;
                    }
                    let end = (at + batch).min(ids_ref.len());
                    let chunk = &ids_ref[at..end];
                    let contacts = store.read_blocking(|r| {
                        chunk
                            .iter()
                            .map(|id| r.contact(*id))
                            .collect::<Result<Vec<_>, _>>()
                    });
                    let contacts = match contacts {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(WorkError::Store(e)));
                            return;
                        }
                    };
                    let now = clock.now().timestamp_millis();
                    let codes = match coupon_pool {
                        Some(p) => match coupons_for(store, p, id, stage, &contacts, now) {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        },
                        None => vec![None; contacts.len()],
                    };
                    let items: Vec<Item> = pool.install(|| {
                        contacts
                            .into_par_iter()
                            .zip(codes)
                            .map(|(c, code)| match &sender {
                                Some(s) => build_one(compiled_ref, s, c, now, true, code),
                                None => build_sms(compiled_ref, c, now, code),
                            })
                            .collect()
                    });
                    if tx.send(Ok(Batch { end, items })).is_err() {
                        return;
                    }
                    at = end;
                }
            });
            let mut cursor = start;
            let mut next_slot = Instant::now();
            // Where the worker's time goes (logged at the end of the part):
            // waiting for rendering, for room in the delivery window, for
            // the commit.
            let (mut t_render, mut t_room, mut t_commit) =
                (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            let began = Instant::now();
            loop {
                let t = Instant::now();
                let Ok(b) = rx.recv() else { break };
                t_render += t.elapsed();
                let b = match b {
                    Ok(b) => b,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                let t = Instant::now();
                if !self.wait_for_room(id, window, stop) {
                    break;
                }
                t_room += t.elapsed();
                if per_msg.is_some() {
                    while Instant::now() < next_slot {
                        if stop.load(Ordering::Relaxed) || activity.is_stopping() {
                            break;
                        }
                        std::thread::sleep(
                            Duration::from_millis(20).min(next_slot - Instant::now()),
                        );
                    }
                }
                if stop.load(Ordering::Relaxed) || activity.is_stopping() {
                    break;
                }
                let n = b.items.len() as u32;
                let t = Instant::now();
                let committed = self.commit(&c, part_no, part.stage, variant, cursor, b, &compiled);
                t_commit += t.elapsed();
                match committed {
                    Ok(Some(end)) => cursor = end,
                    Ok(None) => break, // paused, cancelled or moved on
                    Err(e) => {
                        result = Err(WorkError::Store(e));
                        break;
                    }
                }
                if let Some(per) = per_msg {
                    next_slot = Instant::now() + per * n;
                }
                self.delivery.notify();
            }
            // Dropping the receiver ends the producer at its next send.
            drop(rx);
            tracing::info!(
                campaign = id,
                part = part_no,
                recipients = cursor - start,
                took_ms = began.elapsed().as_millis() as u64,
                waiting_for_rendering_ms = t_render.as_millis() as u64,
                waiting_for_delivery_ms = t_room.as_millis() as u64,
                committing_ms = t_commit.as_millis() as u64,
                "campaign part worker ended"
            );
        });
        result
    }

    /// Waits until fewer than `window` of the campaign's messages are waiting
    /// for delivery, and the store can take them (available, its disk above
    /// the reserve). False if told to stop meanwhile.
    fn wait_for_room(&self, id: u64, window: u64, stop: &AtomicBool) -> bool {
        let mut said = false;
        loop {
            if stop.load(Ordering::Relaxed) || self.activity.is_stopping() {
                return false;
            }
            if let Err(e) = self.store.bulk_allowed() {
                if !said {
                    tracing::warn!(campaign = id, error = %e, "campaign waits: the store cannot take more messages now");
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
            match self.outstanding(id) {
                Ok(n) if n < window => return true,
                Ok(_) => {}
                Err(e) => tracing::warn!(campaign = id, error = %e, "reading progress failed"),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Queues one batch in one commit with the part's new cursor. `None`
    /// when the campaign is no longer running (nothing was written).
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        c: &Campaign,
        part_no: usize,
        stage: u32,
        variant: u32,
        start: usize,
        b: Batch,
        compiled: &Compiled,
    ) -> Result<Option<usize>, StoreError> {
        let id = c.id;
        let now = self.now_ms();
        let links = compiled.links().unrecorded();
        let last_link = links.last().map(|(n, _)| *n);
        let send = SendRef {
            kind: SendKind::Campaign,
            id,
            variant: model::slot(stage, variant),
        };
        let sms = (c.spec.channel == super::model::Channel::Sms).then(|| SmsOutbox {
            send,
            gateway: c
                .spec
                .sms_gateway
                .clone()
                .or_else(|| self.snapshot().config.sms.default_gateway.clone())
                .unwrap_or_default(),
            marketing: true,
            once: true,
        });
        let out = match &sms {
            Some(_) => None,
            None => Some(Outbox {
                send,
                sender: compiled.sender().map_err(|e| StoreError::Io(e.0))?.clone(),
                source: format!("campaign:{id}"),
                kind: Some(MailKind::Marketing),
                once: true,
            }),
        };
        let tags: std::collections::BTreeSet<String> = c.spec.tags_after.iter().cloned().collect();
        let end = b.end;
        let r = self.store.write_wait(move |t| {
            let Some(mut c) = t.campaign(id)? else {
                return Ok(None);
            };
            if c.status != Status::Running
                || c.run
                    .parts
                    .get(part_no)
                    .is_none_or(|p| p.cursor != start as u64)
            {
                return Ok(None);
            }
            let room = c.run.budget_messages.map(|m| m.saturating_sub(c.queued()));
            let (mut skipped, mut failed) = (0u64, 0u64);
            let mut built = Vec::with_capacity(b.items.len());
            let mut texts = Vec::new();
            for item in b.items {
                match item {
                    Item::Built(m) => built.push(*m),
                    Item::Sms(m) => texts.push(*m),
                    Item::Skip => skipped += 1,
                    Item::Failed => failed += 1,
                }
            }
            let after = |t: &mut crate::store::WriteTables<'_>, contact| {
                if !tags.is_empty() {
                    let update = crate::contacts::ContactUpdate {
                        add_tags: tags.clone(),
                        ..Default::default()
                    };
                    let when = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
                    // A tag that cannot be added never blocks the send.
                    let _ = crate::contacts::apply_update_by_id(t, contact, update, when)?;
                }
                Ok(())
            };
            let done = match (&out, &sms) {
                (Some(out), _) => commit_batch(t, out, &links, built, room, now, after)?,
                (None, Some(sms)) => commit_sms_batch(t, sms, &links, texts, room, now, after)?,
                (None, None) => return Ok(None),
            };
            let queued = done.queued.len() as u64;
            skipped += done.skipped + done.over_budget;
            let budget_hit = done.over_budget > 0;
            let Some(p) = c.run.parts.get_mut(part_no) else {
                return Ok(None);
            };
            p.queued += queued;
            p.skipped += skipped;
            p.failed += failed;
            p.cursor = end as u64;
            p.started.get_or_insert(now);
            if p.done() {
                p.finished = Some(now);
            }
            if budget_hit {
                let spent = c.queued();
                for p in c.run.parts.iter_mut() {
                    if !p.done() {
                        p.skipped += p.size - p.cursor;
                        p.cursor = p.size;
                        p.finished.get_or_insert(now);
                    }
                }
                c.run.note = Some(format!(
                    "the budget allows {spent} messages; the rest of the audience was not sent"
                ));
            }
            c.updated = now;
            t.put_campaign(&c)?;
            Ok(Some(end))
        })?;
        if r.is_some()
            && let Some(last) = last_link
        {
            compiled.links().mark_recorded(last + 1);
        }
        Ok(r)
    }

    /// The HTML of a campaign message (or a test of it) as `m`'s contact
    /// got it at `sent`, rendered again (view in browser); `None` when the campaign
    /// or contact no longer exists or never got that message. Blocking.
    pub fn view_html(
        &self,
        m: crate::tokens::MessageRef,
        sent_at: u64,
    ) -> Result<Option<String>, String> {
        let s = m.send;
        let (stage, variant) = model::unslot(s.variant);
        let (c, contact, sent) = self
            .store
            .read_blocking(|r| {
                let sent = match s.kind {
                    SendKind::Campaign => r.sent(s, m.contact)?.is_some(),
                    _ => true,
                };
                Ok((r.campaign(s.id)?, r.contact(m.contact)?, sent))
            })
            .map_err(|e| e.to_string())?;
        let (Some(c), Some(contact)) = (c, contact) else {
            return Ok(None);
        };
        if !sent {
            return Ok(None);
        }
        let snap = self.snapshot();
        let compiled = self
            .compile(&snap, &c, stage, variant, s)
            .map_err(|e| e.to_string())?;
        let r = Recipient::new(contact);
        let rendered = compiled.render_at(&r, sent_at).map_err(|e| e.0)?;
        Ok(Some(rendered.html))
    }

    /// Sends every variant (and stage) of a campaign to seed addresses,
    /// through the queue like any message, marked as a test: kept out of the
    /// campaign's counts. Returns (address, variant label, queue id).
    pub async fn test_send(
        &self,
        id: u64,
        addresses: Vec<String>,
    ) -> Result<Vec<(String, String, u64)>, CampaignError> {
        let c = super::get(self, id).await?;
        if matches!(c.status, Status::Completed | Status::Cancelled) {
            return Err(CampaignError::Conflict(format!(
                "campaign {id} is {}; it can no longer be tested",
                c.status.as_str()
            )));
        }
        if addresses.is_empty() || addresses.len() > 50 {
            return Err(CampaignError::Invalid(
                "addresses: give 1 to 50 seed addresses".into(),
            ));
        }
        let mut seeds = Vec::new();
        for a in &addresses {
            let e = crate::contacts::normalize_email(a)
                .map_err(|e| CampaignError::Invalid(format!("addresses: `{a}`: {e}")))?;
            seeds.push(e);
        }
        let snap = self.snapshot();
        super::check_spec(&c.spec, &snap, &self.store).await?;
        let names = c.spec.variant_names();
        let mut looks: Vec<(u32, u32, String)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (0, i as u32, n.clone()))
            .collect();
        for s in 0..c.spec.stages.len() {
            looks.push((s as u32 + 1, 0, format!("stage {}", s + 1)));
        }
        let keys: Vec<String> = seeds.iter().map(|e| e.key.clone()).collect();
        let known: Vec<Option<Contact>> = self
            .store
            .read(move |r| {
                keys.iter()
                    .map(|k| match r.contact_id_by_email(k)? {
                        Some(id) => r.contact(id),
                        None => Ok(None),
                    })
                    .collect()
            })
            .await?;
        let mut out = Vec::new();
        for (stage, variant, label) in looks {
            let send = SendRef {
                kind: SendKind::Test,
                id,
                variant: model::slot(stage, variant),
            };
            let compiled = self
                .compile(&snap, &c, stage, variant, send)
                .map_err(|e| match e {
                    WorkError::Store(s) => CampaignError::Store(s),
                    WorkError::Other(m) => CampaignError::Invalid(m),
                })?;
            let now = self.now_ms();
            let mut signed = Vec::new();
            for (e, contact) in seeds.iter().zip(&known) {
                let contact = match contact {
                    Some(c) => c.clone(),
                    None => {
                        let mut s = crate::render::preview::sample_contact(compiled.template())
                            .map_err(CampaignError::Invalid)?;
                        s.email = e.display.clone();
                        s.id = 0;
                        s
                    }
                };
                let sender = compiled
                    .sender()
                    .map_err(|e| CampaignError::Invalid(e.0))?
                    .clone();
                // A seed address gets the test whatever its consent: it
                // asked for it, and it is not counted as marketing mail.
                match build_one(&compiled, &sender, Some(contact), now, false, None) {
                    Item::Built(m) => signed.push(*m),
                    _ => {
                        return Err(CampaignError::Invalid(format!(
                            "variant {label}: the message for {} could not be rendered",
                            e.display
                        )));
                    }
                }
            }
            let links = compiled.links().unrecorded();
            // A seed address gets the test whatever its consent: it asked
            // for it (no consent rule), and it is not counted as marketing.
            let outbox = Outbox {
                send,
                sender: compiled
                    .sender()
                    .map_err(|e| CampaignError::Invalid(e.0))?
                    .clone(),
                source: format!("campaign-test:{id}"),
                kind: None,
                once: false,
            };
            let label2 = label.clone();
            let ids = self
                .store
                .write(move |t| {
                    let mut ids = Vec::new();
                    for m in signed {
                        let address = m.address.clone();
                        let contact = m.contact;
                        commit_batch(t, &outbox, &links, vec![m], None, now, |_, _| Ok(()))?;
                        if let Some((_, q)) = t.sent(outbox.send, contact)? {
                            ids.push((address, label2.clone(), q));
                        }
                    }
                    Ok(ids)
                })
                .await?;
            out.extend(ids);
        }
        self.delivery.notify();
        Ok(out)
    }
}

/// Renders, builds and signs one recipient's message (rayon thread).
/// A campaign's messages that need nothing more from delivery: for mail,
/// delivered or failed (and deferred, when `deferred`: waiting, not using
/// delivery now); for SMS, out of the SMS queue (the gateway took them, or
/// they failed before).
fn settled(c: &Campaign, counts: &crate::store::SendCounts, deferred: bool) -> u64 {
    if c.spec.channel == super::model::Channel::Sms {
        return total(counts, Counter::Dequeued);
    }
    let d = if deferred {
        total(counts, Counter::Deferred)
    } else {
        0
    };
    total(counts, Counter::Delivered) + total(counts, Counter::Failed) + d
}

/// Renders one contact's text message: skipped without a number or SMS
/// consent.
fn build_sms(
    compiled: &Compiled,
    contact: Option<Contact>,
    now: i64,
    coupon: Option<String>,
) -> Item {
    let Some(contact) = contact else {
        return Item::Skip;
    };
    let Some(to) = contact.phone.clone() else {
        return Item::Skip;
    };
    if contact.sms_consent != ConsentState::Granted {
        return Item::Skip;
    }
    let site = contact.site.clone();
    let id = contact.id;
    let mut r = Recipient::new(contact);
    r.coupon = coupon;
    match compiled.render_sms(&r, (now / 1000).max(0) as u64) {
        Ok(text) => Item::Sms(Box::new(crate::send::outbox::SmsOut {
            contact: id,
            to,
            text,
            site,
        })),
        Err(e) => {
            tracing::warn!(contact = id, error = %e, "a campaign SMS could not be rendered");
            Item::Failed
        }
    }
}

fn build_one(
    compiled: &Compiled,
    sender: &crate::config::Sender,
    contact: Option<Contact>,
    now: i64,
    needs_consent: bool,
    coupon: Option<String>,
) -> Item {
    let Some(contact) = contact else {
        return Item::Skip;
    };
    if needs_consent && contact.consent != ConsentState::Granted {
        return Item::Skip;
    }
    let mut r = Recipient::new(contact);
    r.coupon = coupon;
    match render_one(compiled, &r, now) {
        Outcome::Built { rendered, message } => match sign(sender, message) {
            Ok(body) => Item::Built(Box::new(Signed {
                address: rendered.email,
                contact: rendered.contact,
                message_id: rendered.message_id,
                body,
            })),
            Err(e) => {
                tracing::warn!(contact = rendered.contact, error = %e, "signing failed");
                Item::Failed
            }
        },
        Outcome::Failed { contact, error, .. } => {
            tracing::warn!(contact, error = %error, "a campaign message could not be rendered");
            Item::Failed
        }
    }
}

/// The coupon codes of a batch's granted contacts, in one write: each
/// contact's message of this campaign stage keeps its code (`coupon_for`:
/// rendering the batch again after a restart finds the same codes). An
/// empty pool is an error: the campaign pauses rather than send a message
/// without its code.
/// Why a campaign worker stopped: the store (which the supervisor waits
/// out) or something about the campaign (which pauses it).
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The campaign cannot be sent as it is.
    #[error("{0}")]
    Other(String),
}

impl From<String> for WorkError {
    fn from(e: String) -> Self {
        WorkError::Other(e)
    }
}

impl From<&str> for WorkError {
    fn from(e: &str) -> Self {
        WorkError::Other(e.to_string())
    }
}

fn coupons_for(
    store: &crate::store::Store,
    pool: &str,
    campaign: u64,
    stage: u32,
    contacts: &[Option<Contact>],
    now: i64,
) -> Result<Vec<Option<String>>, WorkError> {
    let owners: Vec<Option<String>> = contacts
        .iter()
        .map(|c| {
            c.as_ref()
                .filter(|c| c.consent == ConsentState::Granted)
                .map(|c| format!("campaign:{campaign}:stage {stage}:contact {}", c.id))
        })
        .collect();
    let p = pool.to_string();
    let codes = store
        .write_wait(move |t| {
            let mut out = Vec::with_capacity(owners.len());
            for o in owners {
                out.push(match o {
                    Some(o) => Some(t.coupon_for(&p, &o, now)?),
                    None => None,
                });
            }
            Ok(out)
        })
        .map_err(WorkError::Store)?;
    if codes.iter().any(|c| matches!(c, Some(None))) {
        return Err(WorkError::Other(format!(
            "coupon pool `{pool}` has no free codes left; upload more (POST /api/v1/coupons/{pool}) and resume"
        )));
    }
    Ok(codes.into_iter().map(Option::flatten).collect())
}

/// The A/B winner by the metric (rate per message queued; ties go to the
/// earlier variant), with the figures that decided it.
fn pick_winner(
    c: &Campaign,
    metric: Metric,
    counts: &crate::store::SendCounts,
    money: &crate::store::SendMoney,
) -> (u32, String) {
    let names = c.spec.variant_names();
    // Revenue is compared in one currency: the one most of the test's
    // orders were placed in (amounts in different currencies never add up).
    let test_slots: Vec<u32> = c
        .run
        .parts
        .iter()
        .filter(|p| p.stage == 0 && p.variant != WINNER)
        .map(|p| model::slot(0, p.variant))
        .collect();
    let mut by_cur: std::collections::BTreeMap<&str, u64> = Default::default();
    for ((s, cur), (orders, _)) in money {
        if test_slots.contains(s) {
            *by_cur.entry(cur.as_str()).or_default() += orders;
        }
    }
    let currency = (by_cur.len() > 1)
        .then(|| by_cur.iter().max_by_key(|(_, n)| **n).map(|(c, _)| *c))
        .flatten();
    let revenue_of = |slot: u32| match currency {
        Some(cur) => money
            .get(&(slot, cur.to_string()))
            .map_or(0, |(_, cents)| *cents),
        None => count(counts, slot, Counter::Revenue),
    };
    let counter = match metric {
        Metric::Opens => Counter::UniqueOpens,
        Metric::Clicks => Counter::UniqueClicks,
        Metric::Revenue => Counter::Revenue,
    };
    let mut best = (0u32, -1.0f64);
    let mut parts = Vec::new();
    for p in c
        .run
        .parts
        .iter()
        .filter(|p| p.stage == 0 && p.variant != WINNER)
    {
        let v = match metric {
            Metric::Revenue => revenue_of(model::slot(0, p.variant)),
            _ => count(counts, model::slot(0, p.variant), counter),
        };
        let rate = if p.queued == 0 {
            0.0
        } else {
            v as f64 / p.queued as f64
        };
        let name = names.get(p.variant as usize).cloned().unwrap_or_default();
        parts.push(match metric {
            Metric::Revenue => format!(
                "{name} {:.2} per message ({:.2} over {})",
                rate / 100.0,
                v as f64 / 100.0,
                p.queued
            ),
            _ => format!("{name} {:.1}% ({v}/{})", rate * 100.0, p.queued),
        });
        if rate > best.1 {
            best = (p.variant, rate);
        }
    }
    let m = match (metric, currency) {
        (Metric::Opens, _) => "unique opens".to_string(),
        (Metric::Clicks, _) => "unique clicks".to_string(),
        (Metric::Revenue, None) => "revenue".to_string(),
        (Metric::Revenue, Some(cur)) => {
            format!("revenue in {cur} (the currency of most test orders; the others left out)")
        }
    };
    (best.0, format!("{m}: {}", parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running A/B campaign of two variants, 10 test messages each.
    fn ab() -> Result<Campaign, serde_json::Error> {
        serde_json::from_value(serde_json::json!({
            "id": 1, "created": 0, "updated": 0, "status": "running",
            "spec": {"name": "N", "template": "t", "ab": {"metric": "revenue", "test_share": 20.0, "window": "1h",
                     "variants": [{"subject": "a"}, {"subject": "b"}]}},
            "run": {"parts": [
                {"stage": 0, "variant": 0, "size": 10, "cursor": 10, "queued": 10, "skipped": 0, "failed": 0},
                {"stage": 0, "variant": 1, "size": 10, "cursor": 10, "queued": 10, "skipped": 0, "failed": 0}
            ]}
        }))
    }

    #[test]
    fn revenue_is_compared_in_the_currency_of_most_test_orders() -> Result<(), serde_json::Error> {
        let c = ab()?;
        let (a, b) = (model::slot(0, 0), model::slot(0, 1));
        let mut counts = crate::store::SendCounts::new();
        // Summed across currencies, A would win: 100 EUR + 50 PLN > 120 PLN.
        counts.insert((a, Counter::Revenue as u8), 15_000);
        counts.insert((b, Counter::Revenue as u8), 12_000);
        let mut money = crate::store::SendMoney::new();
        money.insert((a, "EUR".into()), (1, 10_000));
        money.insert((a, "PLN".into()), (1, 5_000));
        money.insert((b, "PLN".into()), (2, 12_000));
        let (winner, reason) = pick_winner(&c, Metric::Revenue, &counts, &money);
        assert_eq!(winner, 1, "{reason}");
        assert!(reason.starts_with("revenue in PLN"), "{reason}");
        // One currency: as before.
        money.remove(&(a, "EUR".into()));
        counts.insert((a, Counter::Revenue as u8), 5_000);
        let (winner, reason) = pick_winner(&c, Metric::Revenue, &counts, &money);
        assert_eq!(winner, 1, "{reason}");
        assert!(reason.starts_with("revenue: "), "{reason}");
        Ok(())
    }
}
