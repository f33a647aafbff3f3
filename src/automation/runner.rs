//! The runner: one task that takes due runs off the front of the due index,
//! decides each (`step::decide`), renders and signs the messages on the
//! rayon pool, and commits the batch in one write: per run, the message
//! through `send::outbox::commit_batch` (consent and ledger checked again),
//! the tags, and the run's next step — after checking, inside that
//! transaction, that the run is still where it was read. That check is
//! what makes a step's message exactly once: a run moves past a step only
//! in the transaction that queued the step's message.
//!
//! Errors as text: a batch's failures (a template that cannot render for a
//! contact, a store read) are logged and the run is looked at again later;
//! no caller tells them apart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rayon::prelude::*;

use super::Automations;
use super::arm::{self, Ctx};
use super::flow::{Message, Products, Trigger};
use super::model::{FlowSet, LiveFlow, Occurrence, Run, RunState, counter};
use super::step::{self, Decision, Inputs, Loaded, RETRY_HELD_MS};
use crate::contacts::model::Contact;
use crate::contacts::{ContactUpdate, apply_update_by_id};
use crate::delivery::model::MailKind;
use crate::delivery::queue::{Signed, sign};
use crate::render::links::LinkRecord;
use crate::render::{Compiled, Recipient, SendOptions};
use crate::segment::Catalog;
use crate::send::model::{SendKind, SendRef, slot};
use crate::send::outbox::{Outbox, commit_batch};
use crate::shop::Product;
use crate::shop::model::{Cart, Order};
use crate::snapshot::Snapshot;
use crate::store::ReadTables as _;
use crate::store::automation::{Due, RunKey};
use crate::store::{StoreError, WriteTables};

/// Most due runs taken per batch (one commit).
pub const BATCH: usize = 200;

/// Links of the sends a batch rendered, not yet recorded.
pub(crate) type NewLinks = HashMap<SendRef, Vec<(u32, LinkRecord)>>;

/// A rendered message: its send and what goes out.
struct Ready {
    send: SendRef,
    body: ReadyBody,
}

/// A rendered e-mail (the sender identity and the signed bytes) or text
/// message (the gateway and the text).
enum ReadyBody {
    Mail(Arc<crate::config::Sender>, Signed),
    Sms(String, crate::send::outbox::SmsOut),
}

/// What a run's message needs once decided.
struct Planned {
    l: Loaded,
    decision: Decision,
    /// The message, rendered and signed (for `Send`).
    ready: Option<Ready>,
    /// Why rendering failed.
    failed: Option<String>,
}

impl Automations {
    /// The runner loop: until the daemon stops.
    pub async fn run(self: Arc<Self>) {
        let stopping = self.activity.stopping();
        tokio::pin!(stopping);
        loop {
            if self.activity.is_stopping() {
                break;
            }
            let now = self.clock.now().timestamp_millis();
            if let Ok(mut a) = self.armed.lock() {
                *a = None;
            }
            let due = self.store.read(move |v| v.due_runs(now, BATCH)).await;
            self.store.report_loop("automations", &due);
            let due = match due {
                Ok(d) => d,
                Err(e) => {
                    if !e.is_unavailable() {
                        tracing::error!(error = %e, "automations: cannot read due runs");
                    }
                    Vec::new()
                }
            };
            if !due.is_empty() {
                let guard = self.activity.guard("automation batch");
                if let Err(e) = self.batch(due).await {
                    tracing::error!(error = %e, "automations: a batch failed; its runs are looked at again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                drop(guard);
                continue;
            }
            let tick = self.config.get().automation.tick_ms.max(100);
            let next = self.store.read(|v| v.next_due()).await.ok().flatten();
            let armed = self.armed.lock().ok().and_then(|a| *a);
            let wake_at = [next, armed, Some(now + tick)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + tick);
            let wait = Duration::from_millis(wake_at.saturating_sub(now).clamp(0, tick) as u64);
            if wait.is_zero() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = &mut stopping => break,
            }
        }
    }

    /// One batch of due runs: read, decide, render, commit.
    async fn batch(self: &Arc<Self>, due: Vec<(i64, RunKey)>) -> Result<(), String> {
        let snap = self.config.snapshot();
        let flows = self.flows();
        let now = self.clock.now().timestamp_millis();
        let (loaded, orphans) = self
            .store
            .read(move |v| {
                let mut out = Vec::with_capacity(due.len());
                let mut orphans = Vec::new();
                for (at, key) in due {
                    match load(v, key)? {
                        Some(l) if l.due.at == at => out.push(l),
                        _ => orphans.push((at, key)),
                    }
                }
                Ok((out, orphans))
            })
            .await
            .map_err(|e| e.to_string())?;
        if !orphans.is_empty() {
            // A due entry without a run waiting there would be read again
            // and again: take it out (it cannot happen while `put_run` is
            // the only writer of the index; this keeps the runner from
            // spinning if it ever does).
            tracing::warn!(
                entries = orphans.len(),
                "automations: due entries without a waiting run removed"
            );
            self.store
                .write(move |t| {
                    for (at, key) in orphans {
                        t.drop_orphan_due(at, key)?;
                    }
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        let catalog = self.catalog(&snap).await.map_err(|e| e.to_string())?;
        let me = self.clone();
        let snap2 = snap.clone();
        let flows2 = flows.clone();
        let plans = tokio::task::spawn_blocking(move || {
            me.decide_all(&snap2, &flows2, &catalog, loaded, now)
        })
        .await
        .map_err(|e| e.to_string())?;
        let plans = self.reserve_coupons(&flows, plans, now).await?;
        let (me, snap2, flows2) = (self.clone(), snap.clone(), flows.clone());
        let (plans, links) = tokio::task::spawn_blocking(move || {
            let mut plans = plans;
            let links = me.render(&snap2, &flows2, &mut plans, now);
            (plans, links)
        })
        .await
        .map_err(|e| e.to_string())?;
        let me = self.clone();
        let (queued, earliest) = self
            .store
            .write(move |t| me.commit(t, &snap, &flows, plans, &links, now))
            .await
            .map_err(|e| e.to_string())?;
        if queued > 0 {
            self.engine.notify();
        }
        if let Some(at) = earliest {
            self.armed_at(at);
        }
        Ok(())
    }

    /// Decides every loaded run (blocking: conditions read the segment
    /// index).
    fn decide_all(
        &self,
        snap: &Arc<Snapshot>,
        flows: &FlowSet,
        catalog: &Catalog,
        loaded: Vec<Loaded>,
        now: i64,
    ) -> Vec<Planned> {
        let today = chrono::DateTime::from_timestamp_millis(now)
            .unwrap_or_default()
            .date_naive();
        let kind_of = |name: &str| step::mail_kind(snap, name);
        let known = self.conditions_of(flows, catalog, today, &loaded);
        let mut plans = Vec::with_capacity(loaded.len());
        for l in loaded {
            let flow = flows.by_id.get(&l.key.0).map(|f| &**f);
            let tz = snap
                .config
                .time_zone_of(l.contact.as_ref().and_then(|c| c.site.as_deref()));
            let id = l.key.1;
            let matches =
                |c: &crate::segment::lang::Cond| match known.get(&(c as *const _ as usize, id)) {
                    Some(m) => *m,
                    None => self
                        .index
                        .test(c, catalog, today, &[id])
                        .is_ok_and(|v| v.first().copied().unwrap_or(false)),
                };
            let decision = step::decide(
                &l,
                flow,
                &Inputs {
                    now,
                    config: &snap.config.automation,
                    tz,
                    matches: &matches,
                    kind_of: &kind_of,
                },
            );
            plans.push(Planned {
                l,
                decision,
                ready: None,
                failed: None,
            });
        }
        plans
    }

    /// Every condition the batch's flows may test (their `conditions`, the
    /// variants' `when`), each evaluated once for all of the batch's
    /// contacts in that flow: (condition's address, contact) → matches.
    fn conditions_of(
        &self,
        flows: &FlowSet,
        catalog: &Catalog,
        today: chrono::NaiveDate,
        loaded: &[Loaded],
    ) -> HashMap<(usize, u64), bool> {
        let mut ids: HashMap<u64, Vec<u64>> = HashMap::new();
        for l in loaded {
            ids.entry(l.key.0).or_default().push(l.key.1);
        }
        let mut out = HashMap::new();
        for (flow, ids) in ids {
            let Some(f) = flows.by_id.get(&flow) else {
                continue;
            };
            let conds = f.flow.conditions.iter().chain(
                f.flow
                    .steps
                    .iter()
                    .flat_map(|s| s.variants.iter().map(|v| &v.when)),
            );
            for c in conds {
                let Ok(matched) = self.index.test(c, catalog, today, &ids) else {
                    continue;
                };
                for (id, m) in ids.iter().zip(matched) {
                    out.insert((c as *const _ as usize, *id), m);
                }
            }
        }
        out
    }

    /// Hands a coupon code to every run about to send a step with
    /// `coupon = true` that has none yet, in one write, before rendering:
    /// the code is the run's from then on (a crash before the message is
    /// queued renders the same code again). A run whose pool is empty is
    /// held (counted), never sent without its code.
    async fn reserve_coupons(
        &self,
        flows: &Arc<FlowSet>,
        mut plans: Vec<Planned>,
        now: i64,
    ) -> Result<Vec<Planned>, String> {
        let wants: Vec<(usize, RunKey, Due, String)> = plans
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let Decision::Send { .. } = p.decision else {
                    return None;
                };
                let f = flows.by_id.get(&p.l.key.0)?;
                let step = f.flow.steps.get(p.l.run.step as usize)?;
                let pool = f.flow.coupon_pool.clone()?;
                (step.coupon && p.l.run.coupon.is_none()).then_some((i, p.l.key, p.l.due, pool))
            })
            .collect();
        if wants.is_empty() {
            return Ok(plans);
        }
        let given = self
            .store
            .write(move |t| {
                let mut out = Vec::new();
                for (i, key, due, pool) in wants {
                    let Some(mut run) = t.run::<Run>(key)? else {
                        continue;
                    };
                    if t.run_due(key)? != Some(due) || run.state != RunState::Waiting {
                        continue;
                    }
                    let owner = format!(
                        "automation:{}:step {}:contact {}:{:016x}",
                        run.flow, run.step, key.1, key.2
                    );
                    match t.take_coupon(&pool, &owner, now)? {
                        Some(code) => {
                            run.coupon = Some(code.clone());
                            t.put_run(key, &run, Some(due))?;
                            out.push((i, Some(code)));
                        }
                        None => {
                            hold(t, key, run, now + RETRY_HELD_MS, counter::HELD_COUPON)?;
                            out.push((i, None));
                        }
                    }
                }
                Ok(out)
            })
            .await
            .map_err(|e| e.to_string())?;
        for (i, code) in given {
            match code {
                Some(c) => plans[i].l.run.coupon = Some(c),
                None => plans[i].decision = Decision::Stale,
            }
        }
        Ok(plans)
    }

    /// Renders and signs the `Send` decisions, grouped by send (one
    /// compiled template each), on the rayon pool.
    fn render(
        &self,
        snap: &Arc<Snapshot>,
        flows: &FlowSet,
        plans: &mut [Planned],
        now: i64,
    ) -> NewLinks {
        let mut new_links = NewLinks::new();
        // Products are read once per batch, whatever the recipients share.
        let products = ProductCache::new(&self.store);
        let products = |sku: &str| products.get(sku);
        let mut groups: HashMap<(u64, u32), Vec<usize>> = HashMap::new();
        for (i, p) in plans.iter().enumerate() {
            if let Decision::Send { variant, .. } = &p.decision {
                groups
                    .entry((p.l.key.0, slot(p.l.run.step, *variant)))
                    .or_default()
                    .push(i);
            }
        }
        for ((flow_id, slot_no), idx) in groups {
            let Some(f) = flows.by_id.get(&flow_id) else {
                continue;
            };
            let Decision::Send { message, .. } = &plans[idx[0]].decision else {
                continue;
            };
            let send = SendRef {
                kind: SendKind::Automation,
                id: flow_id,
                variant: slot_no,
            };
            let compiled = match self.compile(snap, f, message, send) {
                Ok(c) => c,
                Err(e) => {
                    for i in idx {
                        plans[i].failed = Some(e.clone());
                    }
                    continue;
                }
            };
            // A message is decided only for a contact that exists.
            let recipients: Vec<(usize, Recipient)> = idx
                .iter()
                .filter_map(|&i| {
                    let l = &plans[i].l;
                    Some((
                        i,
                        self.recipient(l, l.contact.as_ref()?, message, &products),
                    ))
                })
                .collect();
            let (c, sender) = (&compiled.0, &compiled.1);
            let gateway = message
                .gateway
                .clone()
                .or_else(|| snap.config.sms.default_gateway.clone())
                .unwrap_or_default();
            let out: Vec<(usize, Result<ReadyBody, String>)> = self.pool.install(|| {
                recipients
                    .into_par_iter()
                    .map(|(i, r)| {
                        let body = match sender {
                            Some(s) => render_and_sign(c, s, &r, now)
                                .map(|signed| ReadyBody::Mail(s.clone(), signed)),
                            None => {
                                render_sms(c, &r, now).map(|m| ReadyBody::Sms(gateway.clone(), m))
                            }
                        };
                        (i, body)
                    })
                    .collect()
            });
            for (i, r) in out {
                match r {
                    Ok(body) => plans[i].ready = Some(Ready { send, body }),
                    Err(e) => plans[i].failed = Some(e),
                }
            }
            new_links.insert(send, c.links().unrecorded());
        }
        new_links
    }

    /// The compiled template of one send: the message's template with its
    /// sender and subject, the flow's products, data and recorded links.
    pub(crate) fn compile(
        &self,
        snap: &Arc<Snapshot>,
        f: &LiveFlow,
        m: &Message,
        send: SendRef,
    ) -> Result<(Arc<Compiled>, Option<Arc<crate::config::Sender>>), String> {
        let base = snap
            .templates
            .get(&m.template)
            .ok_or_else(|| format!("template `{}` is not loaded", m.template))?;
        let t = Arc::new(crate::render::template::overridden(
            base,
            m.sender.as_deref(),
            m.subject.as_deref(),
        ));
        // An SMS goes through a gateway, not a sender.
        let sender = match m.channel {
            crate::contacts::model::Channel::Sms => None,
            crate::contacts::model::Channel::Email => Some(
                snap.config
                    .sender(&t.sender)
                    .cloned()
                    .ok_or_else(|| format!("no [[sender]] `{}`", t.sender))?,
            ),
        };
        let key = send.key();
        let (links, products) = self
            .store
            .read_blocking(|v| {
                let links = v.links(&key)?;
                let mut products = Vec::new();
                if let Products::Skus(skus) = &m.products {
                    for s in skus {
                        if let Some(p) = v.product(s)? {
                            products.push(p);
                        }
                    }
                }
                Ok((links, products))
            })
            .map_err(|e| e.to_string())?;
        let _ = f;
        let c = Compiled::new(
            t,
            &snap.config,
            SendOptions {
                send,
                personalize: true,
                tracking: true,
                products,
                data: m.data.clone(),
                links,
            },
        )?;
        Ok((Arc::new(c), sender))
    }

    /// The recipient of a run's message: contact, cart, order, products of
    /// the trigger or related ones, the coupon, the occurrence.
    pub(crate) fn recipient(
        &self,
        l: &Loaded,
        c: &Contact,
        m: &Message,
        catalogue: &dyn Fn(&str) -> Option<Product>,
    ) -> Recipient {
        let mut r = Recipient::new(c.clone());
        r.cart = l
            .cart
            .as_ref()
            .filter(|c| !c.items.is_empty())
            .map(|c| cart_json(c, catalogue));
        r.order = l.order.as_ref().map(|o| order_json(o, catalogue));
        r.products = match &m.products {
            Products::Trigger => Some(trigger_products(l, catalogue)),
            Products::Related => Some(related_products(l, catalogue)),
            _ => None,
        };
        if let Some(sku) = &l.run.occurrence.sku
            && r.products.is_none()
        {
            r.products = catalogue(sku).map(|p| vec![p]);
        }
        r.coupon = l.run.coupon.clone();
        r.occurrence = Some(l.key.2);
        r
    }

    /// Commits a batch's decisions (the writer thread). Returns how many
    /// messages were queued and the earliest next due time set.
    fn commit(
        &self,
        t: &mut WriteTables<'_>,
        snap: &Arc<Snapshot>,
        flows: &Arc<FlowSet>,
        plans: Vec<Planned>,
        links: &NewLinks,
        now: i64,
    ) -> Result<(usize, Option<i64>), StoreError> {
        let mut queued = 0;
        let mut cx = Ctx {
            flows,
            config: &snap.config,
            now,
            earliest: None,
            backfill: false,
        };
        for p in plans {
            let key = p.l.key;
            // The run must be where it was read: same step, same due time.
            let Some(run) = t.run::<Run>(key)? else {
                continue;
            };
            if t.run_due(key)? != Some(p.l.due) || run.state != RunState::Waiting {
                continue;
            }
            let flow = flows.by_id.get(&key.0).cloned();
            let tz = snap
                .config
                .time_zone_of(p.l.contact.as_ref().and_then(|c| c.site.as_deref()));
            match p.decision {
                // Waiting in the index but not as its record says: end it
                // rather than read it again on every pass.
                Decision::Stale => arm::exit(t, key, run, "inconsistent")?,
                Decision::Exit(reason) => {
                    let ended = run.clone();
                    arm::exit(t, key, run, reason)?;
                    if let Some(f) = &flow {
                        arm::arm_next_year(t, f, key.1, &ended, &mut cx)?;
                    }
                }
                Decision::Hold(until, why) => hold(t, key, run, until, why)?,
                Decision::Missed => {
                    t.count_step(key.0, run.step, counter::MISSED, 1)?;
                    advance(t, key, run, flow.as_deref(), tz, &mut cx)?;
                }
                Decision::Skip(reason) => {
                    t.count_step(key.0, run.step, &format!("skipped.{reason}"), 1)?;
                    advance(t, key, run, flow.as_deref(), tz, &mut cx)?;
                }
                Decision::Complete => {
                    t.count_step(key.0, run.step, "skipped.step_removed", 1)?;
                    advance(t, key, run, flow.as_deref(), tz, &mut cx)?;
                }
                Decision::Send { kind, .. } => {
                    let Some(f) = flow else { continue };
                    let Some(ready) = p.ready else {
                        let why = p.failed.unwrap_or_else(|| "not rendered".into());
                        tracing::warn!(automation = %f.flow.name, contact = key.1, error = %why, "automation message not rendered; held");
                        hold(t, key, run, now + RETRY_HELD_MS, "held.render_failed")?;
                        continue;
                    };
                    let new = links.get(&ready.send).map(Vec::as_slice).unwrap_or(&[]);
                    if send_one(t, snap, &f, key, run, (ready, new), kind, tz, now, &mut cx)? {
                        queued += 1;
                    }
                }
            }
        }
        Ok((queued, cx.earliest))
    }
}

/// Reads what deciding a due run needs.
fn load(v: &crate::store::ReadView, key: RunKey) -> Result<Option<Loaded>, StoreError> {
    let Some(due) = v.run_due(key)? else {
        return Ok(None);
    };
    let Some(run) = v.run::<Run>(key)? else {
        return Ok(None);
    };
    let contact = v.contact(key.1)?;
    let cart = v.cart(key.1)?;
    let stats = v.stats(key.1)?;
    let order = match &run.occurrence.order {
        Some(id) => v.order(id)?,
        None => None,
    };
    let mut ordered_since = false;
    if let Some(s) = &stats
        && s.last_order
            .is_some_and(|d| d as i64 >= run.trigger_at.div_euclid(86_400_000))
    {
        for o in v.orders_of(key.1, &s.orders)? {
            if o.counted()
                && o.placed_at > run.trigger_at
                && Some(&o.order_id) != run.occurrence.order.as_ref()
            {
                ordered_since = true;
                break;
            }
        }
    }
    let previous = match run.sent.last() {
        Some((_, slot_no, _)) => v
            .engagement(
                SendRef {
                    kind: SendKind::Automation,
                    id: key.0,
                    variant: *slot_no,
                },
                key.1,
            )?
            .map(|e| e.0),
        None => None,
    };
    Ok(Some(Loaded {
        key,
        due,
        run,
        contact,
        cart,
        stats,
        ordered_since,
        previous,
        order,
    }))
}

/// Holds a run's step until `until`, counted under `why`.
fn hold(
    t: &mut WriteTables<'_>,
    key: RunKey,
    mut run: Run,
    until: i64,
    why: &str,
) -> Result<(), StoreError> {
    t.count_step(key.0, run.step, why, 1)?;
    run.held = run.held.saturating_add(1);
    let step = run.step;
    t.put_run(key, &run, Some(Due { step, at: until }))
}

/// Moves a run to its next step (due from the step just done as
/// scheduled), or completes it: counted, and the flows that follow it
/// (`flow_completed`) entered.
fn advance(
    t: &mut WriteTables<'_>,
    key: RunKey,
    mut run: Run,
    flow: Option<&LiveFlow>,
    tz: chrono_tz::Tz,
    cx: &mut Ctx<'_>,
) -> Result<(), StoreError> {
    let next = run.step + 1;
    run.held = 0;
    if let Some(step) = flow.and_then(|f| f.flow.steps.get(next as usize)) {
        let at = arm::step_due(step, run.scheduled, tz);
        run.step = next;
        run.scheduled = at;
        t.put_run(key, &run, Some(Due { step: next, at }))?;
        cx.earliest = Some(cx.earliest.map_or(at, |e| e.min(at)));
        return Ok(());
    }
    run.state = RunState::Completed;
    t.count_step(key.0, u32::MAX, counter::COMPLETED, 1)?;
    let name = run.flow.clone();
    let what = format!("after {name} {:016x}", key.2);
    t.put_run(key, &run, None)?;
    if let Some(f) = flow {
        arm::arm_next_year(t, f, key.1, &run, cx)?;
    }
    let followers: Vec<Arc<LiveFlow>> = cx
        .flows
        .with(|tr| matches!(tr, Trigger::FlowCompleted { flow } if *flow == name))
        .cloned()
        .collect();
    if followers.is_empty() {
        return Ok(());
    }
    let Some(c) = t.contact(key.1)? else {
        return Ok(());
    };
    for f in followers {
        let occ = Occurrence {
            what: what.clone(),
            ..Default::default()
        };
        arm::enter(t, &f, &c, occ, cx.now, cx.now, cx)?;
    }
    Ok(())
}

/// Queues one run's message (consent and the frequency cap checked in this
/// transaction), applies the step's tags and moves the run on. Returns
/// whether a message was queued.
#[allow(clippy::too_many_arguments)]
fn send_one(
    t: &mut WriteTables<'_>,
    snap: &Arc<Snapshot>,
    f: &LiveFlow,
    key: RunKey,
    mut run: Run,
    (ready, links): (Ready, &[(u32, LinkRecord)]),
    kind: MailKind,
    tz: chrono_tz::Tz,
    now: i64,
    cx: &mut Ctx<'_>,
) -> Result<bool, StoreError> {
    let cfg = &snap.config.automation;
    if kind == MailKind::Marketing
        && let Some(cap) = cfg.max_marketing_per_contact
    {
        let (n, oldest) = t.marketing_since(key.1, now.saturating_sub(cfg.frequency_window_ms))?;
        if n >= cap {
            let until = oldest.map_or(now + RETRY_HELD_MS, |o| o + cfg.frequency_window_ms + 1);
            hold(t, key, run, until, counter::HELD_CAP)?;
            return Ok(false);
        }
    }
    if let Some(other) = t.name_send(SendKind::Automation, f.id, &f.flow.name)? {
        tracing::error!(automation = %f.flow.name, other = %other, "the flow's id is taken by another; rename it");
        arm::exit(t, key, run, "id_taken")?;
        return Ok(false);
    }
    let Ready { send, body } = ready;
    // Links already recorded by an earlier message of the batch are
    // recorded again with the same URLs, which `put_links` accepts.
    let done = match body {
        ReadyBody::Mail(sender, signed) => {
            let out = Outbox {
                send,
                sender,
                source: format!("automation:{}", f.flow.name),
                kind: Some(kind),
                once: false,
            };
            commit_batch(t, &out, links, vec![signed], None, now, |_, _| Ok(()))?
        }
        ReadyBody::Sms(gateway, m) => {
            let out = crate::send::outbox::SmsOutbox {
                send,
                gateway,
                marketing: kind == MailKind::Marketing,
                once: false,
            };
            crate::send::outbox::commit_sms_batch(
                t,
                &out,
                links,
                vec![m],
                None,
                now,
                |_, _| Ok(()),
            )?
        }
    };
    let Some(&contact) = done.queued.first() else {
        arm::exit(t, key, run, "consent")?;
        return Ok(false);
    };
    let qid = t.sent(send, contact)?.map(|(_, q)| q).unwrap_or(0);
    t.count_step(key.0, run.step, counter::QUEUED, 1)?;
    let step = f.flow.steps.get(run.step as usize);
    if let Some(s) = step
        && (!s.tags_add.is_empty() || !s.tags_remove.is_empty())
    {
        let update = ContactUpdate {
            add_tags: s.tags_add.iter().cloned().collect(),
            remove_tags: s.tags_remove.iter().cloned().collect(),
            ..Default::default()
        };
        let when = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
        let _ = apply_update_by_id(t, contact, update, when)?;
    }
    run.sent.push((run.step, send.variant, qid));
    if step.is_some_and(|s| s.coupon) {
        // The code went into this message: a later step gets its own.
        run.coupon = None;
    }
    advance(t, key, run, Some(f), tz, cx)?;
    Ok(true)
}

fn money(c: i64) -> String {
    crate::shop::format::money_text(c)
}

fn item_json(
    i: &crate::shop::model::Item,
    catalogue: &dyn Fn(&str) -> Option<Product>,
) -> serde_json::Value {
    let p = catalogue(&i.sku);
    serde_json::json!({
        "sku": i.sku,
        "name": i.name.clone().or_else(|| p.as_ref().map(|p| p.name.clone())).unwrap_or_else(|| i.sku.clone()),
        "quantity": i.quantity,
        "price": money(i.price),
        "unit_price": money(i.price),
        "category": i.category,
        "image_url": p.as_ref().and_then(|p| p.image_url.clone()),
        "url": p.as_ref().and_then(|p| p.url.clone()),
    })
}

fn cart_json(c: &Cart, catalogue: &dyn Fn(&str) -> Option<Product>) -> serde_json::Value {
    serde_json::json!({
        "currency": c.currency,
        "total": money(c.value()),
        "url": c.url,
        "items": c.items.iter().map(|i| item_json(i, catalogue)).collect::<Vec<_>>(),
    })
}

fn order_json(o: &Order, catalogue: &dyn Fn(&str) -> Option<Product>) -> serde_json::Value {
    serde_json::json!({
        "id": o.order_id,
        "currency": o.currency,
        "total": money(o.total),
        "status": o.status,
        "placed_at": crate::shop::format::fmt_ms(o.placed_at),
        "delivery_date": o.delivery_date.map(|d| d.to_string()),
        "payment_type": o.payment_type,
        "items": o.items.iter().map(|i| item_json(i, catalogue)).collect::<Vec<_>>(),
    })
}

/// The products of the trigger: the cart's or the order's items (as in the
/// catalogue when they are there), or the restocked product.
fn trigger_products(l: &Loaded, catalogue: &dyn Fn(&str) -> Option<Product>) -> Vec<Product> {
    let items: Vec<&crate::shop::model::Item> = match (&l.order, &l.cart, &l.run.occurrence.sku) {
        (_, _, Some(sku)) => return catalogue(sku).into_iter().collect(),
        (Some(o), _, _) => o.items.iter().collect(),
        (None, Some(c), _) => c.items.iter().collect(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .map(|i| {
            catalogue(&i.sku).unwrap_or_else(|| Product {
                sku: i.sku.clone(),
                name: i.name.clone().unwrap_or_else(|| i.sku.clone()),
                price: money(i.price),
                currency: String::new(),
                image_url: None,
                url: None,
                stock: None,
                category: i.category.clone(),
                related: Vec::new(),
            })
        })
        .collect()
}

/// Related products of what the contact bought (the order's items first,
/// then everything bought), that they have not bought, at most 8.
fn related_products(l: &Loaded, catalogue: &dyn Fn(&str) -> Option<Product>) -> Vec<Product> {
    let bought: std::collections::BTreeSet<String> = l
        .stats
        .as_ref()
        .map(|s| s.skus.keys().cloned().collect())
        .unwrap_or_default();
    let mut from: Vec<String> = l
        .order
        .as_ref()
        .map(|o| o.items.iter().map(|i| i.sku.clone()).collect())
        .unwrap_or_default();
    from.extend(bought.iter().cloned());
    let mut out: Vec<Product> = Vec::new();
    for sku in from {
        let Some(p) = catalogue(&sku) else { continue };
        for r in p.related {
            if out.len() >= 8 {
                return out;
            }
            if bought.contains(&r) || out.iter().any(|x| x.sku == r) {
                continue;
            }
            if let Some(rp) = catalogue(&r) {
                out.push(rp);
            }
        }
    }
    out
}

/// Renders one recipient's text message (a rayon thread).
fn render_sms(
    c: &Compiled,
    r: &Recipient,
    now: i64,
) -> Result<crate::send::outbox::SmsOut, String> {
    let to = r
        .contact
        .phone
        .clone()
        .ok_or("the contact has no phone number")?;
    let text = c
        .render_sms(r, (now / 1000).max(0) as u64)
        .map_err(|e| e.0)?;
    Ok(crate::send::outbox::SmsOut {
        contact: r.contact.id,
        to,
        text,
        site: r.contact.site.clone(),
    })
}

/// Renders, builds and signs one recipient's message (a rayon thread).
pub(crate) fn render_and_sign(
    c: &Compiled,
    sender: &crate::config::Sender,
    r: &Recipient,
    now: i64,
) -> Result<Signed, String> {
    match crate::render::bulk::render_one(c, r, now) {
        crate::render::bulk::Outcome::Built { rendered, message } => sign(sender, message)
            .map(|body| Signed {
                address: rendered.email,
                contact: rendered.contact,
                message_id: rendered.message_id,
                body,
            })
            .map_err(|e| e.to_string()),
        crate::render::bulk::Outcome::Failed { error, .. } => Err(error),
    }
}

/// Catalogue products by SKU, each read from the store once (a batch's
/// recipients share most of theirs).
pub(crate) struct ProductCache<'a> {
    store: &'a crate::store::Store,
    seen: std::sync::Mutex<HashMap<String, Option<Product>>>,
}

impl<'a> ProductCache<'a> {
    /// An empty cache over `store`.
    pub(crate) fn new(store: &'a crate::store::Store) -> Self {
        ProductCache {
            store,
            seen: Default::default(),
        }
    }

    /// The product, from the cache or the store.
    pub(crate) fn get(&self, sku: &str) -> Option<Product> {
        if let Ok(m) = self.seen.lock()
            && let Some(p) = m.get(sku)
        {
            return p.clone();
        }
        let p = self.store.read_blocking(|v| v.product(sku)).ok().flatten();
        if let Ok(mut m) = self.seen.lock() {
            m.insert(sku.to_string(), p.clone());
        }
        p
    }
}
