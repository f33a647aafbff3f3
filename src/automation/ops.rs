//! What the admin API and the CLI do with automations: list, status,
//! create or replace (API flows), delete, pause, resume, preview a
//! contact's path through a flow, and send a step's message to a seed
//! address. Each is one operation the HTTP handler calls.

use std::sync::Arc;

use serde_json::{Value, json};

use super::model::{FlowRecord, LiveFlow, Occurrence, Run, flow_id};
use super::runner::NewLinks;
use super::step::{self, Decision, Inputs, Loaded};
use super::{AutomationError, Automations, files, flow};
use crate::contacts::model::Contact;
use crate::segment::lang::{self, Problem};
use crate::send::model::{SendKind, SendRef, slot};
use crate::shop::format::fmt_ms;
use crate::store::ReadTables as _;
use crate::store::automation::Due;

/// A problem as one line: `path: message` (or `line:col`).
pub fn describe(p: &Problem) -> String {
    match (p.loc.position, p.loc.path.as_str()) {
        (Some((l, c)), "") => format!("{l}:{c}: {}", p.message),
        (Some((l, c)), path) => format!("{l}:{c}: `{path}`: {}", p.message),
        (None, "") => p.message.clone(),
        (None, path) => format!("`{path}`: {}", p.message),
    }
}

impl Automations {
    /// Every flow: loaded ones with their status, failed ones with their
    /// problems.
    pub async fn list(&self) -> Result<Value, AutomationError> {
        let flows = self.flows();
        let mut out = Vec::new();
        let mut live: Vec<&Arc<LiveFlow>> = flows.by_id.values().collect();
        live.sort_by(|a, b| a.flow.name.cmp(&b.flow.name));
        for f in live {
            out.push(self.status_of(f).await?);
        }
        for (name, problems) in &flows.failed {
            out.push(json!({"name": name, "status": "invalid", "problems": problems}));
        }
        Ok(Value::Array(out))
    }

    /// One flow's status: version, pending runs per step and next due,
    /// counts (entered, queued, held, skipped and exited by reason, missed,
    /// completed).
    pub async fn status(&self, name: &str) -> Result<Value, AutomationError> {
        let flows = self.flows();
        match flows.named(name) {
            Some(f) => self.status_of(f).await,
            None => match flows.failed.iter().find(|(n, _)| n == name) {
                Some((n, p)) => Ok(json!({"name": n, "status": "invalid", "problems": p})),
                None => Err(AutomationError::NotFound(name.to_string())),
            },
        }
    }

    async fn status_of(&self, f: &Arc<LiveFlow>) -> Result<Value, AutomationError> {
        let id = f.id;
        let (pending, counts) = self
            .store
            .read(move |v| Ok((v.flow_pending(id)?, v.step_counts(id)?)))
            .await?;
        let mut flow_counts = serde_json::Map::new();
        let mut steps = Vec::new();
        for (i, s) in f.flow.steps.iter().enumerate() {
            let i = i as u32;
            let p = pending.iter().find(|(st, _, _)| *st == i);
            let c: serde_json::Map<String, Value> = counts
                .iter()
                .filter(|(st, _, _)| *st == i)
                .map(|(_, n, v)| (n.clone(), json!(v)))
                .collect();
            steps.push(json!({
                "step": i,
                "template": s.message.as_ref().map(|m| m.template.clone()),
                "variants": s.variants.iter().map(|v| v.message.template.clone()).collect::<Vec<_>>(),
                "pending": p.map_or(0, |x| x.1),
                "next_due": p.map(|x| fmt_ms(x.2)),
                "counts": c,
            }));
        }
        for (st, n, v) in &counts {
            if *st == u32::MAX || *st as usize >= f.flow.steps.len() {
                let e = flow_counts.entry(n.clone()).or_insert(json!(0));
                *e = json!(e.as_u64().unwrap_or(0) + v);
            }
        }
        let total: u64 = pending.iter().map(|x| x.1).sum();
        let next = pending.iter().map(|x| x.2).min();
        Ok(json!({
            "name": f.flow.name,
            "id": f.id,
            "source": f.source,
            "status": if f.paused { "paused" } else { "active" },
            "version": format!("{:016x}", f.version),
            "description": f.flow.description,
            "trigger": f.flow.trigger.name(),
            "pending": total,
            "next_due": next.map(fmt_ms),
            "counts": flow_counts,
            "steps": steps,
            "report": format!("/api/v1/reports/sends/automation/{}", f.flow.name),
            "definition": f.flow.definition,
        }))
    }

    /// Creates or replaces an API flow; returns whether it was created.
    /// Pending runs go on with the new version of their step.
    pub async fn put(self: &Arc<Self>, name: &str, def: Value) -> Result<bool, AutomationError> {
        if !flow::valid_name(name) {
            return Err(AutomationError::Invalid(vec![
                "name: use 1-64 letters, digits, `-`, `_` or `.`".into(),
            ]));
        }
        let snap = self.config.snapshot();
        if snap.automations.loaded.contains_key(name) || snap.automations.failed.contains_key(name)
        {
            return Err(AutomationError::ReadOnly(name.to_string()));
        }
        let sites: Vec<String> = snap.config.sites.iter().map(|s| s.id.clone()).collect();
        let root = lang::from_json(&def);
        let f = flow::parse(name, &root, &sites)
            .map_err(|p| AutomationError::Invalid(p.iter().map(describe).collect()))?;
        let mut problems: Vec<String> = files::check(&f, &root, &snap.config, &snap.templates)
            .iter()
            .map(describe)
            .collect();
        let catalog = self.catalog(&snap).await?;
        problems.extend(flow::check_catalog(&f, &catalog));
        if !problems.is_empty() {
            return Err(AutomationError::Invalid(problems));
        }
        let now = self.clock.now().timestamp_millis();
        let (n, def) = (name.to_string(), f.definition.clone());
        let created = self
            .store
            .write(move |t| {
                if let Some(other) = t.name_send(SendKind::Automation, flow_id(&n), &n)? {
                    return Ok(Err(AutomationError::Conflict(format!(
                        "the name `{n}` cannot be used: its id is taken by automation `{other}`; choose another name"
                    ))));
                }
                let old: Option<FlowRecord> = t.flow_record(&n)?;
                let created = old.as_ref().is_none_or(|o| o.definition.is_none());
                let r = FlowRecord {
                    definition: Some(def),
                    paused: old.as_ref().is_some_and(|o| o.paused),
                    created: old.as_ref().map_or(now, |o| o.created.max(1)),
                    updated: now,
                    armed: old.map(|o| o.armed).unwrap_or_default(),
                };
                t.put_flow_record(&n, &r)?;
                Ok(Ok(created))
            })
            .await??;
        self.reload().await?;
        Ok(created)
    }

    /// Deletes an API flow. Its pending runs end when due
    /// (`exited.flow_removed`).
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<(), AutomationError> {
        let snap = self.config.snapshot();
        if snap.automations.loaded.contains_key(name) {
            return Err(AutomationError::ReadOnly(name.to_string()));
        }
        let n = name.to_string();
        let found = self
            .store
            .write(move |t| {
                let r: Option<FlowRecord> = t.flow_record(&n)?;
                if r.as_ref().is_none_or(|r| r.definition.is_none()) {
                    return Ok(false);
                }
                t.delete_flow_record(&n)
            })
            .await?;
        if !found {
            return Err(AutomationError::NotFound(name.to_string()));
        }
        self.reload().await?;
        Ok(())
    }

    /// Pauses (enters nobody, holds pending runs) or resumes a flow, file
    /// or API.
    pub async fn set_paused(
        self: &Arc<Self>,
        name: &str,
        paused: bool,
    ) -> Result<(), AutomationError> {
        if self.flows().named(name).is_none() {
            return Err(AutomationError::NotFound(name.to_string()));
        }
        let now = self.clock.now().timestamp_millis();
        let n = name.to_string();
        self.store
            .write(move |t| {
                let mut r: FlowRecord = t.flow_record(&n)?.unwrap_or_default();
                r.paused = paused;
                r.updated = now;
                if r.created == 0 {
                    r.created = now;
                }
                t.put_flow_record(&n, &r)
            })
            .await?;
        self.reload().await?;
        if !paused {
            // Runs held while paused go at once.
            self.release_held(flow_id(name)).await?;
        }
        Ok(())
    }

    /// After new codes in `pool`: the runs of the flows that draw on it,
    /// held for want of a code, are looked at now.
    pub async fn release_coupon_holds(&self, pool: &str) -> Result<(), AutomationError> {
        let ids: Vec<u64> = self
            .flows()
            .by_id
            .values()
            .filter(|f| f.flow.coupon_pool.as_deref() == Some(pool))
            .map(|f| f.id)
            .collect();
        for id in ids {
            self.release_held(id).await?;
        }
        Ok(())
    }

    /// Moves a flow's held runs (held within the retry interval) to now.
    async fn release_held(&self, id: u64) -> Result<(), AutomationError> {
        let now = self.clock.now().timestamp_millis();
        self.store
            .write(move |t| {
                for (key, due) in t.flow_waiting(id, now.saturating_add(step::RETRY_HELD_MS))? {
                    if due.at > now
                        && let Some(run) = t.run::<Run>(key)?
                        && run.held > 0
                    {
                        let at = run.scheduled.max(now);
                        t.put_run(key, &run, Some(Due { step: due.step, at }))?;
                    }
                }
                Ok(())
            })
            .await?;
        self.wake.notify_one();
        Ok(())
    }

    /// What `contact` would get from `name` now, step by step: the
    /// decision and, for a message, the variant and the rendered message
    /// (links lead nowhere). `trigger` may name the order, cart or SKU the
    /// occurrence is about.
    pub async fn preview(
        self: &Arc<Self>,
        name: &str,
        contact: &str,
        trigger: &Value,
    ) -> Result<Value, AutomationError> {
        let f = self.live(name)?;
        let c = self.find_contact(contact).await?;
        let mut steps = Vec::new();
        for i in 0..f.flow.steps.len() as u32 {
            let l = self.loaded_for(&f, &c, trigger, i).await?;
            let (decision, rendered) = self.render_step(&f, &l, SendKind::Preview, None).await?;
            let mut v = json!({"step": i, "decision": decision_name(&decision)});
            if let Some((variant, r)) = rendered {
                v["variant"] = json!(variant);
                v["message"] = r;
            }
            steps.push(v);
        }
        Ok(json!({"automation": f.flow.name, "contact": c.email, "steps": steps}))
    }

    /// Sends step `step`'s message for `contact` to a seed address (a
    /// test: not counted, no consent rule). Returns the queue id.
    pub async fn test(
        self: &Arc<Self>,
        name: &str,
        contact: &str,
        to: &str,
        step_no: u32,
    ) -> Result<Value, AutomationError> {
        let f = self.live(name)?;
        if step_no as usize >= f.flow.steps.len() {
            return Err(AutomationError::Nothing(format!(
                "automation `{name}` has {} step(s); there is no step {step_no}",
                f.flow.steps.len()
            )));
        }
        let seed = crate::contacts::normalize_email(to)
            .map_err(|e| AutomationError::Invalid(vec![format!("to: {e}")]))?;
        let c = self.find_contact(contact).await?;
        let l = self.loaded_for(&f, &c, &Value::Null, step_no).await?;
        let (decision, rendered) = self
            .render_step(&f, &l, SendKind::Test, Some(seed.display.clone()))
            .await?;
        let Some((variant, r)) = rendered else {
            return Err(AutomationError::Nothing(format!(
                "step {step_no} sends nothing to this contact now ({})",
                decision_name(&decision)
            )));
        };
        Ok(
            json!({"automation": name, "step": step_no, "variant": variant, "to": seed.display, "queue_id": r["queue_id"]}),
        )
    }

    /// A live flow by name.
    fn live(&self, name: &str) -> Result<Arc<LiveFlow>, AutomationError> {
        self.flows()
            .named(name)
            .cloned()
            .ok_or_else(|| AutomationError::NotFound(name.to_string()))
    }

    async fn find_contact(&self, contact: &str) -> Result<Contact, AutomationError> {
        let key = contact.trim().to_lowercase();
        let c = self
            .store
            .read(move |v| match key.parse::<u64>() {
                Ok(id) => v.contact(id),
                Err(_) => match v.contact_id_by_email(&key)? {
                    Some(id) => v.contact(id),
                    None => Ok(None),
                },
            })
            .await?;
        c.ok_or_else(|| AutomationError::NoContact(contact.to_string()))
    }

    /// What the runner would read for `c` at step `i` of `f`, with an
    /// occurrence made from `trigger` (`order`, `cart`, `sku`) or the
    /// contact's latest cart and order.
    async fn loaded_for(
        &self,
        f: &LiveFlow,
        c: &Contact,
        trigger: &Value,
        i: u32,
    ) -> Result<Loaded, AutomationError> {
        let id = c.id;
        let order_id = trigger["order"].as_str().map(str::to_string);
        let (cart, stats, order) = self
            .store
            .read(move |v| {
                let stats = v.stats(id)?;
                let order = match order_id {
                    Some(o) => v.order(&o)?,
                    None => match stats.as_ref().and_then(|s| s.orders.last()) {
                        Some(o) => v.order(o)?,
                        None => None,
                    },
                };
                Ok((v.cart(id)?, stats, order))
            })
            .await?;
        let now = self.clock.now().timestamp_millis();
        let occ = Occurrence {
            what: "preview".into(),
            order: order.as_ref().map(|o| o.order_id.clone()),
            cart: cart.as_ref().map(|c| c.updated_at),
            sku: trigger["sku"].as_str().map(str::to_string),
            activity: None,
        };
        Ok(Loaded {
            key: (f.id, c.id, 0),
            due: Due { step: i, at: now },
            run: Run {
                step: i,
                coupon: trigger["coupon"].as_str().map(str::to_string),
                ..Run::new(&f.flow.name, occ, now, now, now)
            },
            contact: Some(c.clone()),
            cart,
            stats,
            ordered_since: false,
            previous: None,
            order,
        })
    }

    /// Decides and renders one step for a preview or a test; a test is
    /// queued to `seed`.
    async fn render_step(
        self: &Arc<Self>,
        f: &Arc<LiveFlow>,
        l: &Loaded,
        kind: SendKind,
        seed: Option<String>,
    ) -> Result<(Decision, Option<(u32, Value)>), AutomationError> {
        let snap = self.config.snapshot();
        let catalog = self.catalog(&snap).await?;
        let (me, f2, l2, snap2) = (self.clone(), f.clone(), l.clone(), snap.clone());
        let now = self.clock.now().timestamp_millis();
        let out = tokio::task::spawn_blocking(move || {
            let today = chrono::DateTime::from_timestamp_millis(now)
                .unwrap_or_default()
                .date_naive();
            let id = l2.key.1;
            let matches = |c: &lang::Cond| {
                me.index
                    .test(c, &catalog, today, &[id])
                    .is_ok_and(|v| v.first().copied().unwrap_or(false))
            };
            let kind_of = |name: &str| step::mail_kind(&snap2, name);
            let tz = snap2
                .config
                .time_zone_of(l2.contact.as_ref().and_then(|c| c.site.as_deref()));
            // A preview or test ignores quiet hours and timing: it shows the
            // message the step would send.
            let mut cfg = snap2.config.automation.clone();
            cfg.quiet_hours = None;
            cfg.max_late_ms = i64::MAX / 4;
            let decision = step::decide(
                &l2,
                Some(&f2),
                &Inputs {
                    now,
                    config: &cfg,
                    tz,
                    matches: &matches,
                    kind_of: &kind_of,
                },
            );
            let Decision::Send {
                variant, message, ..
            } = &decision
            else {
                return Ok((decision, None));
            };
            let send = SendRef {
                kind,
                id: f2.id,
                variant: slot(l2.run.step, *variant),
            };
            let (compiled, sender) = me.compile(&snap2, &f2, message, send)?;
            let c = l2.contact.as_ref().ok_or("no contact")?;
            let products = super::runner::ProductCache::new(&me.store);
            let mut r = me.recipient(&l2, c, message, &|sku: &str| products.get(sku));
            // An SMS step is previewed (never test-sent: seeds are e-mail
            // addresses) with its text, encoding and parts.
            let Some(sender) = sender else {
                let text = compiled
                    .render_sms(&r, (now / 1000).max(0) as u64)
                    .map_err(|e| e.0)?;
                let a = crate::sms::encoding::analyze(&text);
                let view = json!({
                    "sms": text,
                    "encoding": a.encoding.label(),
                    "parts": a.parts,
                    "template": message.template,
                });
                return Ok((
                    decision.clone(),
                    Some((*variant, view, None, None, NewLinks::new())),
                ));
            };
            if let Some(s) = &seed {
                let mut c = (*r.contact).clone();
                c.email = s.clone();
                r.contact = Arc::new(c);
            }
            let rendered = compiled.render(&r).map_err(|e| e.0)?;
            let mime = compiled.build(&rendered, now).map_err(|e| e.0)?;
            let view = json!({
                "subject": rendered.subject,
                "html": rendered.html,
                "text": rendered.text,
                "template": message.template,
            });
            let mut links = NewLinks::new();
            links.insert(send, compiled.links().unrecorded());
            let signed = match seed {
                Some(_) => Some(crate::delivery::queue::Signed {
                    address: rendered.email.clone(),
                    contact: rendered.contact,
                    message_id: rendered.message_id.clone(),
                    body: crate::delivery::queue::sign(&sender, mime).map_err(|e| e.to_string())?,
                }),
                None => None,
            };
            Ok::<_, String>((
                decision.clone(),
                Some((*variant, view, signed, Some(sender), links)),
            ))
        })
        .await
        .map_err(|e| AutomationError::Send(e.to_string()))?
        .map_err(AutomationError::Send)?;
        let (decision, rest) = out;
        let Some((variant, mut view, signed, sender, links)) = rest else {
            return Ok((decision, None));
        };
        if let (Some(m), Some(sender)) = (signed, sender) {
            let send = *links
                .keys()
                .next()
                .ok_or_else(|| AutomationError::Send("no send".into()))?;
            let new = links.get(&send).cloned().unwrap_or_default();
            let out = crate::send::outbox::Outbox {
                send,
                sender,
                source: format!("automation-test:{}", f.flow.name),
                kind: None,
                once: false,
            };
            let contact = m.contact;
            let qid = self
                .store
                .write(move |t| {
                    crate::send::outbox::commit_batch(
                        t,
                        &out,
                        &new,
                        vec![m],
                        None,
                        now,
                        |_, _| Ok(()),
                    )?;
                    Ok(t.sent(send, contact)?.map(|(_, q)| q))
                })
                .await?;
            self.engine.notify();
            view["queue_id"] = json!(qid);
        }
        Ok((decision, Some((variant, view))))
    }
}

/// A decision in words, for previews.
fn decision_name(d: &Decision) -> String {
    match d {
        Decision::Stale => "stale".into(),
        Decision::Exit(r) => format!("exit: {r}"),
        Decision::Missed => "missed".into(),
        Decision::Skip(r) => format!("skip: {r}"),
        Decision::Hold(_, why) => why.to_string(),
        Decision::Send { .. } => "send".into(),
        Decision::Complete => "complete".into(),
    }
}
