//! Arming: from what a write transaction changed to runs waiting for
//! their first step, in the same transaction (the store hook), so a
//! trigger is never lost or seen twice: it commits with the event that
//! fired it, and an occurrence's run, once written, is never written anew.
//!
//! Also here: cancellation (an order cancels cart reminders, a new cart
//! version supersedes the old one's, a login re-arms inactivity) and
//! leaving (a contact who withdraws or becomes invalid leaves every flow).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Datelike;
use chrono_tz::Tz;

use super::flow::{Reentry, Since, Step, Trigger};
use super::model::{FlowSet, LiveFlow, Occurrence, Run, RunState, counter, occurrence_key};
use super::when;
use crate::config::Config;
use crate::contacts::model::{ConsentState, Contact, FieldValue};
use crate::shop::model::{Order, WaitKind};
use crate::store::ReadTables as _;
use crate::store::automation::{Due, RunKey};
use crate::store::{Change, StoreError, WriteTables};

const DAY_MS: i64 = 86_400_000;

/// What arming needs besides the transaction.
pub struct Ctx<'a> {
    /// The flows.
    pub flows: &'a FlowSet,
    /// The config (time zones).
    pub config: &'a Config,
    /// Now (ms).
    pub now: i64,
    /// The earliest due time armed, for waking the runner.
    pub earliest: Option<i64>,
    /// Arming for existing contacts (a new flow's scan): occurrences too
    /// late to send are left alone rather than counted as missed.
    pub backfill: bool,
}

impl Ctx<'_> {
    fn tz(&self, c: &Contact) -> Tz {
        self.config.time_zone_of(c.site.as_deref())
    }
}

/// When a step is due, counted from `from`: its delay, then its clock
/// time (`at`) in `tz`.
pub fn step_due(step: &Step, from: i64, tz: Tz) -> i64 {
    let d = from.saturating_add(step.after);
    match step.at {
        Some(m) => when::next_clock(d, m, tz),
        None => d,
    }
}

/// Arms, cancels and ends runs for the changes of one transaction.
pub fn on_changes(
    t: &mut WriteTables<'_>,
    changes: &[Change],
    cx: &mut Ctx<'_>,
) -> Result<(), StoreError> {
    if cx.flows.by_id.is_empty() {
        return Ok(());
    }
    let mut lists: HashMap<String, Option<u64>> = HashMap::new();
    for ch in changes {
        match ch {
            Change::Contact {
                contact,
                added_lists,
                added_tags,
                consent_before,
                ..
            } => on_contact(
                t,
                contact,
                added_lists,
                added_tags,
                *consent_before,
                cx,
                &mut lists,
            )?,
            Change::Stats {
                contact, scalars, ..
            } => on_activity(t, *contact, scalars.last_login, scalars.last_order, cx)?,
            Change::Order { before, order } => on_order(t, before.as_deref(), order, cx)?,
            Change::Cart { contact, after, .. } => on_cart(t, *contact, after.as_deref(), cx)?,
            Change::Restocked { sku } => on_restock(t, sku, cx)?,
            Change::Signup {
                contact,
                list,
                confirmed,
            } => on_signup(t, *contact, *list, *confirmed, cx, &mut lists)?,
            _ => {}
        }
    }
    Ok(())
}

/// Enters `contact` into `f` for an occurrence, its first step due
/// `from` + the step's delay. Nothing happens if the occurrence was
/// entered before (exactly once), the re-entry rule forbids it, or the
/// contact may not be mailed at all. Returns the run's key if it entered.
pub fn enter(
    t: &mut WriteTables<'_>,
    f: &LiveFlow,
    contact: &Contact,
    occ: Occurrence,
    trigger_at: i64,
    from: i64,
    cx: &mut Ctx<'_>,
) -> Result<Option<RunKey>, StoreError> {
    let key = (f.id, contact.id, occurrence_key(&occ.what));
    if matches!(
        contact.consent,
        ConsentState::Withdrawn | ConsentState::Invalid
    ) || t.run::<Run>(key)?.is_some()
    {
        return Ok(None);
    }
    // The last entry matters only to a flow with a re-entry rule (and is
    // recorded only for one).
    let limited = f.flow.reentry != Reentry::Always;
    if limited {
        match (f.flow.reentry, t.entered_at(f.id, contact.id)?) {
            (Reentry::Never, Some(_)) => return Ok(None),
            (Reentry::After(gap), Some(last)) if trigger_at.saturating_sub(last) < gap => {
                return Ok(None);
            }
            _ => {}
        }
    }
    let Some(first) = f.flow.steps.first() else {
        return Ok(None);
    };
    let due = step_due(first, from, cx.tz(contact));
    let max_late = f.flow.max_late.unwrap_or(cx.config.automation.max_late_ms);
    if due < cx.now.saturating_sub(max_late) {
        // Too late to send (an old event imported, a date long past):
        // nothing to arm, ever — time only moves on.
        if !cx.backfill {
            t.count_step(f.id, 0, counter::MISSED, 1)?;
        }
        return Ok(None);
    }
    let run = Run::new(&f.flow.name, occ, trigger_at, cx.now, due);
    t.put_run(key, &run, Some(Due { step: 0, at: due }))?;
    if limited {
        t.put_entered(f.id, contact.id, trigger_at)?;
    }
    t.count_step(f.id, u32::MAX, counter::ENTERED, 1)?;
    cx.earliest = Some(cx.earliest.map_or(due, |e| e.min(due)));
    Ok(Some(key))
}

/// Ends a waiting run (`reason` is counted as `exited.REASON` on its step).
pub fn exit(
    t: &mut WriteTables<'_>,
    key: RunKey,
    mut run: Run,
    reason: &str,
) -> Result<(), StoreError> {
    t.count_step(key.0, run.step, &format!("exited.{reason}"), 1)?;
    run.state = RunState::Exited(reason.to_string());
    t.put_run(key, &run, None)
}

/// Ends the contact's waiting runs of `f` that `pick` selects.
fn exit_where(
    t: &mut WriteTables<'_>,
    f: &LiveFlow,
    contact: u64,
    reason: &str,
    pick: impl Fn(&Run, Due) -> bool,
) -> Result<(), StoreError> {
    for key in t.runs_in_flow(f.id, contact)? {
        let Some(due) = t.run_due(key)? else { continue };
        let Some(run) = t.run::<Run>(key)? else {
            continue;
        };
        if pick(&run, due) {
            exit(t, key, run, reason)?;
        }
    }
    Ok(())
}

/// Moves a waiting run's first step to a new base time (a changed date).
fn reschedule(
    t: &mut WriteTables<'_>,
    f: &LiveFlow,
    key: RunKey,
    from: i64,
    tz: Tz,
    cx: &mut Ctx<'_>,
) -> Result<(), StoreError> {
    let Some(due) = t.run_due(key)? else {
        return Ok(());
    };
    let Some(mut run) = t.run::<Run>(key)? else {
        return Ok(());
    };
    let Some(first) = f.flow.steps.first() else {
        return Ok(());
    };
    let at = step_due(first, from, tz);
    if due.step != 0 || run.step != 0 || run.scheduled == at {
        return Ok(());
    }
    run.scheduled = at;
    run.trigger_at = from;
    t.put_run(key, &run, Some(Due { step: 0, at }))?;
    cx.earliest = Some(cx.earliest.map_or(at, |e| e.min(at)));
    Ok(())
}

/// Flows to arm, and the contact they are armed for.
type Armable = (Vec<Arc<LiveFlow>>, Contact);

/// The live flows whose trigger `pick` selects, and the contact, when
/// there are any such flows and the contact exists.
fn flows_and_contact(
    t: &WriteTables<'_>,
    cx: &Ctx<'_>,
    contact: u64,
    pick: impl Fn(&Trigger) -> bool,
) -> Result<Option<Armable>, StoreError> {
    let flows: Vec<Arc<LiveFlow>> = cx.flows.with(pick).cloned().collect();
    if flows.is_empty() {
        return Ok(None);
    }
    Ok(t.contact(contact)?.map(|c| (flows, c)))
}

fn list_id(
    t: &WriteTables<'_>,
    name: &str,
    cache: &mut HashMap<String, Option<u64>>,
) -> Result<Option<u64>, StoreError> {
    if let Some(id) = cache.get(name) {
        return Ok(*id);
    }
    let id = t.list_id_by_name(name)?;
    cache.insert(name.to_string(), id);
    Ok(id)
}

fn on_contact(
    t: &mut WriteTables<'_>,
    c: &Arc<Contact>,
    added_lists: &[u64],
    added_tags: &[String],
    consent_before: Option<ConsentState>,
    cx: &mut Ctx<'_>,
    lists: &mut HashMap<String, Option<u64>>,
) -> Result<(), StoreError> {
    let gone = matches!(c.consent, ConsentState::Withdrawn | ConsentState::Invalid);
    if gone {
        if consent_before != Some(c.consent) {
            leave_all(t, c.id)?;
        }
        return Ok(());
    }
    let flows: Vec<Arc<LiveFlow>> = cx.flows.with(|_| true).cloned().collect();
    for f in &flows {
        match &f.flow.trigger {
            Trigger::ListJoined { list } => {
                let Some(id) = list_id(t, list, lists)? else {
                    continue;
                };
                if added_lists.contains(&id) {
                    let occ = Occurrence {
                        what: format!("list {id} {}", cx.now),
                        ..Default::default()
                    };
                    enter(t, f, c, occ, cx.now, cx.now, cx)?;
                }
            }
            Trigger::TagAdded { tag } if added_tags.iter().any(|x| x == tag) => {
                let occ = Occurrence {
                    what: format!("tag {tag} {}", cx.now),
                    ..Default::default()
                };
                enter(t, f, c, occ, cx.now, cx.now, cx)?;
            }
            Trigger::Registered { .. } | Trigger::Birthday { .. } | Trigger::DateField { .. } => {
                arm_dated(t, f, c, cx)?
            }
            _ => {}
        }
    }
    Ok(())
}

/// A date field's value.
fn date_of(c: &Contact, field: &str) -> Option<chrono::NaiveDate> {
    match c.fields.get(field) {
        Some(FieldValue::Date(d)) => Some(*d),
        _ => None,
    }
}

/// Arms (or moves) the next occurrence of a date-based trigger for one
/// contact: registration, birthday, a date field.
pub fn arm_dated(
    t: &mut WriteTables<'_>,
    f: &LiveFlow,
    c: &Contact,
    cx: &mut Ctx<'_>,
) -> Result<(), StoreError> {
    let now = cx.now;
    arm_dated_after(t, f, c, now, cx)
}

/// After a yearly occurrence's run (birthday, yearly date field) is done,
/// arms the next year's: nothing else would, when the contact's data does
/// not change.
pub fn arm_next_year(
    t: &mut WriteTables<'_>,
    f: &LiveFlow,
    contact: u64,
    run: &Run,
    cx: &mut Ctx<'_>,
) -> Result<(), StoreError> {
    if !matches!(
        f.flow.trigger,
        Trigger::Birthday { .. } | Trigger::DateField { yearly: true, .. }
    ) {
        return Ok(());
    }
    let Some(c) = t.contact(contact)? else {
        return Ok(());
    };
    // The first occurrence on or after the day after this one's.
    let after = run.trigger_at.saturating_add(DAY_MS).max(cx.now);
    arm_dated_after(t, f, &c, after, cx)
}

/// [`arm_dated`] for the first yearly occurrence on or after the local day
/// of `after`.
fn arm_dated_after(
    t: &mut WriteTables<'_>,
    f: &LiveFlow,
    c: &Contact,
    after: i64,
    cx: &mut Ctx<'_>,
) -> Result<(), StoreError> {
    let tz = cx.tz(c);
    let (what, from) = match &f.flow.trigger {
        Trigger::Registered { after, .. } => {
            let base = match date_of(c, "registered_at") {
                Some(d) => when::local_midnight(d, tz),
                None => c.created_at.timestamp_millis(),
            };
            ("registered".to_string(), base.saturating_add(*after))
        }
        Trigger::Birthday { offset } => {
            let Some(d) = date_of(c, "birthday") else {
                return Ok(());
            };
            let (year, due) = when::yearly_occurrence(d.month(), d.day(), *offset, after, tz);
            (format!("birthday {year}"), due)
        }
        Trigger::DateField {
            field,
            offset,
            yearly,
        } => {
            let d = date_of(c, field);
            if !*yearly {
                // A date changed or cleared: the run for the date the
                // contact no longer has ends before it is sent.
                let what = d.map(|d| format!("{field} {d}"));
                exit_where(t, f, c.id, "date_changed", |r, due| {
                    due.step == 0 && Some(&r.occurrence.what) != what.as_ref()
                })?;
            }
            let Some(d) = d else {
                return Ok(());
            };
            if *yearly {
                let (year, due) = when::yearly_occurrence(d.month(), d.day(), *offset, after, tz);
                (format!("{field} {year}"), due)
            } else {
                (
                    format!("{field} {d}"),
                    when::day_instant(d, offset.saturating_mul(DAY_MS), tz),
                )
            }
        }
        _ => return Ok(()),
    };
    let key = (f.id, c.id, occurrence_key(&what));
    if t.run::<Run>(key)?.is_some() {
        return reschedule(t, f, key, from, tz, cx);
    }
    let occ = Occurrence {
        what,
        ..Default::default()
    };
    enter(t, f, c, occ, from, from, cx).map(|_| ())
}

/// A contact who withdrew or became invalid leaves every flow.
fn leave_all(t: &mut WriteTables<'_>, contact: u64) -> Result<(), StoreError> {
    for key in t.runs_of(contact)? {
        if t.run_due(key)?.is_none() {
            continue;
        }
        if let Some(run) = t.run::<Run>(key)? {
            exit(t, key, run, "consent")?;
        }
    }
    Ok(())
}

fn on_activity(
    t: &mut WriteTables<'_>,
    contact: u64,
    last_login: Option<i64>,
    last_order: Option<i32>,
    cx: &mut Ctx<'_>,
) -> Result<(), StoreError> {
    let flows: Vec<Arc<LiveFlow>> = cx
        .flows
        .with(|tr| matches!(tr, Trigger::Inactive { .. }))
        .cloned()
        .collect();
    // Most changes of the aggregates (every order, every login) leave the
    // watched activity where it was: its run exists, and nothing is read
    // beyond it; the contact is read only for a new occurrence.
    let mut c: Option<Contact> = None;
    for f in &flows {
        let Some((occ, _, _)) = inactive_occurrence(f, last_login, last_order) else {
            continue;
        };
        if t.run::<Run>((f.id, contact, occurrence_key(&occ.what)))?
            .is_some()
        {
            continue;
        }
        if c.is_none() {
            c = t.contact(contact)?;
        }
        let Some(c) = &c else { return Ok(()) };
        arm_inactive(t, f, c, last_login, last_order, cx)?;
    }
    Ok(())
}

/// The occurrence an inactivity flow follows (the latest login or order
/// day), when it starts counting, and when its first step counts from.
fn inactive_occurrence(
    f: &LiveFlow,
    last_login: Option<i64>,
    last_order: Option<i32>,
) -> Option<(Occurrence, i64, i64)> {
    let Trigger::Inactive { since, days } = f.flow.trigger else {
        return None;
    };
    let (activity, what, at) = match since {
        Since::Login => {
            let l = last_login?;
            (l, format!("login {l}"), l)
        }
        Since::Order => {
            let d = last_order?;
            (d as i64, format!("order day {d}"), d as i64 * DAY_MS)
        }
    };
    let occ = Occurrence {
        what,
        activity: Some(activity),
        ..Default::default()
    };
    Some((occ, at, at.saturating_add(days as i64 * DAY_MS)))
}

/// Arms an inactivity run after the contact's latest login or order, and
/// ends the runs that followed an older one (the contact came back).
pub fn arm_inactive(
    t: &mut WriteTables<'_>,
    f: &LiveFlow,
    c: &Contact,
    last_login: Option<i64>,
    last_order: Option<i32>,
    cx: &mut Ctx<'_>,
) -> Result<(), StoreError> {
    let Some((occ, at, from)) = inactive_occurrence(f, last_login, last_order) else {
        return Ok(());
    };
    if t.run::<Run>((f.id, c.id, occurrence_key(&occ.what)))?
        .is_some()
    {
        return Ok(());
    }
    let activity = occ.activity.unwrap_or(0);
    exit_where(t, f, c.id, "active_again", |r, _| {
        r.occurrence.activity.is_some_and(|a| a < activity)
    })?;
    enter(t, f, c, occ, at, from, cx).map(|_| ())
}

fn on_order(
    t: &mut WriteTables<'_>,
    before: Option<&Order>,
    o: &Order,
    cx: &mut Ctx<'_>,
) -> Result<(), StoreError> {
    let Some((flows, c)) = flows_and_contact(t, cx, o.contact, |tr| {
        matches!(
            tr,
            Trigger::CartAbandoned { .. }
                | Trigger::OrderPlaced { .. }
                | Trigger::OrderStatus { .. }
                | Trigger::DeliveryDate { .. }
                | Trigger::OrderTotal { .. }
        )
    })?
    else {
        return Ok(());
    };
    let new_counted = o.counted() && before.is_none_or(|b| !b.counted());
    // The contact's counted orders placed before this one, read once for
    // every flow that needs them (`nth`, `lifetime_sum_crosses`).
    let mut earlier: Option<Vec<Order>> = None;
    for f in &flows {
        match &f.flow.trigger {
            Trigger::CartAbandoned { .. } if new_counted => {
                // An order cancels the reminders of carts changed before it.
                exit_where(t, f, c.id, "ordered", |r, _| {
                    r.occurrence
                        .cart
                        .is_some_and(|v| v <= o.placed_at.max(o.updated_at))
                })?;
            }
            Trigger::OrderPlaced { nth, statuses } => {
                let fires = if statuses.is_empty() {
                    new_counted
                } else {
                    statuses.contains(&o.status)
                        && before.is_none_or(|b| !statuses.contains(&b.status))
                };
                if !fires {
                    continue;
                }
                if let Some(n) = nth
                    && counted_before(t, o, &mut earlier)?.len() as u32 + 1 != *n
                {
                    continue;
                }
                // A status filter fires when the order reaches the status
                // (the update's time), which may be days after placement.
                let when = if statuses.is_empty() {
                    o.placed_at
                } else {
                    o.updated_at
                };
                let occ = order_occ(format!("order {}", o.order_id), o);
                enter(t, f, &c, occ, when, when, cx)?;
            }
            Trigger::OrderStatus { to }
                if o.status == *to && before.is_none_or(|b| b.status != *to) =>
            {
                let occ = order_occ(format!("order {} {to}", o.order_id), o);
                enter(t, f, &c, occ, o.updated_at, o.updated_at, cx)?;
            }
            Trigger::DeliveryDate { .. } => arm_delivery(t, f, &c, o, cx)?,
            Trigger::OrderTotal { gte, crosses } if new_counted => {
                if let Some(min) = gte
                    && o.total >= *min
                {
                    let occ = order_occ(format!("order {}", o.order_id), o);
                    enter(t, f, &c, occ, o.placed_at, o.placed_at, cx)?;
                }
                if let Some(line) = crosses {
                    let before_sum = counted_before(t, o, &mut earlier)?
                        .iter()
                        .map(|x| x.total)
                        .fold(0i64, i64::saturating_add);
                    if before_sum < *line && before_sum.saturating_add(o.total) >= *line {
                        let occ = order_occ(format!("crossed {line}"), o);
                        enter(t, f, &c, occ, o.placed_at, o.placed_at, cx)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn order_occ(what: String, o: &Order) -> Occurrence {
    Occurrence {
        what,
        order: Some(o.order_id.clone()),
        ..Default::default()
    }
}

/// Arms (or moves) the run relative to an order's delivery date.
pub fn arm_delivery(
    t: &mut WriteTables<'_>,
    f: &LiveFlow,
    c: &Contact,
    o: &Order,
    cx: &mut Ctx<'_>,
) -> Result<(), StoreError> {
    let Trigger::DeliveryDate { offset } = f.flow.trigger else {
        return Ok(());
    };
    let what = format!("delivery {}", o.order_id);
    let key = (f.id, c.id, occurrence_key(&what));
    if !o.counted() {
        if let (Some(_), Some(run)) = (t.run_due(key)?, t.run::<Run>(key)?) {
            exit(t, key, run, "order_cancelled")?;
        }
        return Ok(());
    }
    let Some(d) = o.delivery_date else {
        return Ok(());
    };
    let tz = cx.tz(c);
    let from = when::day_instant(d, offset, tz);
    if t.run::<Run>(key)?.is_some() {
        return reschedule(t, f, key, from, tz, cx);
    }
    let occ = order_occ(what, o);
    enter(t, f, c, occ, from, from, cx).map(|_| ())
}

/// The contact's counted orders placed before `o` (by placement time,
/// then id), read on first use.
fn counted_before<'a>(
    t: &WriteTables<'_>,
    o: &Order,
    cache: &'a mut Option<Vec<Order>>,
) -> Result<&'a [Order], StoreError> {
    if cache.is_none() {
        let ids = t.stats(o.contact)?.map(|s| s.orders).unwrap_or_default();
        let mut orders = t.orders_of(o.contact, &ids)?;
        orders.retain(|x| {
            x.counted() && (x.placed_at, x.order_id.as_str()) < (o.placed_at, o.order_id.as_str())
        });
        *cache = Some(orders);
    }
    Ok(cache.as_deref().unwrap_or_default())
}

fn on_cart(
    t: &mut WriteTables<'_>,
    contact: u64,
    after: Option<&crate::shop::model::Cart>,
    cx: &mut Ctx<'_>,
) -> Result<(), StoreError> {
    let Some((flows, c)) = flows_and_contact(t, cx, contact, |tr| {
        matches!(tr, Trigger::CartAbandoned { .. })
    })?
    else {
        return Ok(());
    };
    for f in &flows {
        let Trigger::CartAbandoned { after: wait } = f.flow.trigger else {
            continue;
        };
        let version = after.map(|a| a.updated_at);
        // A newer cart (or an emptied one) supersedes the reminders of an
        // older version that have not started.
        exit_where(t, f, c.id, "cart_changed", |r, due| {
            due.step == 0 && r.occurrence.cart.is_some_and(|v| Some(v) != version)
        })?;
        let Some(cart) = after else { continue };
        let occ = Occurrence {
            what: format!("cart {}", cart.updated_at),
            cart: Some(cart.updated_at),
            ..Default::default()
        };
        let from = cart.updated_at.saturating_add(wait);
        enter(t, f, &c, occ, cart.updated_at, from, cx)?;
    }
    Ok(())
}

fn on_restock(t: &mut WriteTables<'_>, sku: &str, cx: &mut Ctx<'_>) -> Result<(), StoreError> {
    let flows: Vec<Arc<LiveFlow>> = cx
        .flows
        .with(|tr| matches!(tr, Trigger::BackInStock | Trigger::PreorderAvailable))
        .cloned()
        .collect();
    if flows.is_empty() {
        return Ok(());
    }
    for (contact, entry) in t.waiters(sku)? {
        let Some(c) = t.contact(contact)? else {
            continue;
        };
        for f in &flows {
            let wants = match f.flow.trigger {
                Trigger::BackInStock => entry.kind == WaitKind::BackInStock,
                _ => entry.kind == WaitKind::Preorder,
            };
            if wants {
                let occ = Occurrence {
                    what: format!("restock {sku} {}", cx.now),
                    sku: Some(sku.to_string()),
                    ..Default::default()
                };
                enter(t, f, &c, occ, cx.now, cx.now, cx)?;
            }
        }
    }
    Ok(())
}

fn on_signup(
    t: &mut WriteTables<'_>,
    contact: u64,
    list: Option<u64>,
    confirmed: bool,
    cx: &mut Ctx<'_>,
    lists: &mut HashMap<String, Option<u64>>,
) -> Result<(), StoreError> {
    let flows: Vec<Arc<LiveFlow>> = cx
        .flows
        .with(|tr| match tr {
            Trigger::Signup { .. } => !confirmed,
            Trigger::Confirmed { .. } => confirmed,
            _ => false,
        })
        .cloned()
        .collect();
    if flows.is_empty() {
        return Ok(());
    }
    let Some(c) = t.contact(contact)? else {
        return Ok(());
    };
    for f in &flows {
        let want = match &f.flow.trigger {
            Trigger::Signup { list: l } | Trigger::Confirmed { list: l } => l.clone(),
            _ => None,
        };
        if let Some(name) = want
            && list_id(t, &name, lists)? != list.filter(|l| *l != 0).or(Some(u64::MAX))
        {
            continue;
        }
        let occ = Occurrence {
            what: format!(
                "{} {} {}",
                if confirmed { "confirmed" } else { "signup" },
                list.unwrap_or(0),
                cx.now
            ),
            ..Default::default()
        };
        enter(t, f, &c, occ, cx.now, cx.now, cx)?;
    }
    Ok(())
}

/// Arms what a date-based flow would have armed for one contact had it
/// existed when their data arrived (a new flow, or a new version of one,
/// looks at every contact once).
pub fn arm_existing(
    t: &mut WriteTables<'_>,
    f: &LiveFlow,
    contact: u64,
    cx: &mut Ctx<'_>,
) -> Result<(), StoreError> {
    let Some(c) = t.contact(contact)? else {
        return Ok(());
    };
    match &f.flow.trigger {
        Trigger::Registered { .. } | Trigger::Birthday { .. } | Trigger::DateField { .. } => {
            arm_dated(t, f, &c, cx)
        }
        Trigger::Inactive { .. } => {
            let s = t.stats(contact)?.unwrap_or_default();
            arm_inactive(t, f, &c, s.last_login, s.last_order, cx)
        }
        Trigger::DeliveryDate { .. } => {
            let ids = t.stats(contact)?.map(|s| s.orders).unwrap_or_default();
            for o in t.orders_of(contact, &ids)? {
                if o.delivery_date.is_some() {
                    arm_delivery(t, f, &c, &o, cx)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
