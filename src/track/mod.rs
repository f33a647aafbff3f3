//! Tracking: what recipients do with the mail. Opens and clicks (human or
//! machine, see [`machine`]), unsubscribes and list preferences, signup
//! confirmations, and the attribution of shop orders to the click that
//! brought them. Everything here runs inside one store write transaction,
//! so a hit is either wholly recorded (counters, engagement, history, last
//! click) or not at all; the HTTP handler answers after the commit.

pub mod journal;
pub mod machine;

use chrono::{DateTime, Utc};

use crate::contacts::model::{ConsentSource, ConsentState, SuppressionSource};
use crate::contacts::{ConsentChange, ContactUpdate, apply_update_by_id};
use crate::delivery::model::RcptState;
use crate::send::model::{
    CLICKED, COMPLAINED, Counter, MACHINE_CLICKED, MACHINE_OPENED, OPENED, SendKind, SendRef,
    UNSUBSCRIBED, unslot,
};
use crate::store::ReadTables as _;
use crate::store::{HistoryEvent, StoreError, WriteTables};
use crate::tokens::MessageRef;

/// The `source` a send has in the queue and in histories.
pub fn source_of(s: &SendRef) -> String {
    match s.kind {
        SendKind::Campaign => format!("campaign:{}", s.id),
        SendKind::Test => format!("campaign-test:{}", s.id),
        SendKind::Automation => format!("automation:{}", s.id),
        SendKind::Transactional => "template".to_string(),
        SendKind::Preview => "preview".to_string(),
    }
}

/// The `source` of a send in histories and notes: [`source_of`], with the
/// name of an automation or a transactional tag (`automation:cart`,
/// `transactional:order-confirmation`) where the store has it.
fn source_in(t: &WriteTables<'_>, s: &SendRef) -> Result<String, StoreError> {
    if matches!(s.kind, SendKind::Automation | SendKind::Transactional)
        && let Some(name) = t.send_name(s.kind, s.id)?
    {
        return Ok(format!("{}:{name}", s.kind.name()));
    }
    Ok(source_of(s))
}

/// An open or a click.
#[derive(Debug, Clone)]
pub enum HitKind {
    /// The pixel was fetched.
    Open,
    /// Link `link` (leading to `url`) was followed.
    Click {
        /// Link number in the send.
        link: u32,
        /// Where it led.
        url: String,
    },
}

/// One hit, as the HTTP handler saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Which message.
    pub message: MessageRef,
    /// Open or click.
    pub kind: HitKind,
    /// When (ms).
    pub at: i64,
    /// Why it looks automated from the request and recent traffic, if it does.
    pub machine: Option<String>,
    /// Clicks sooner than this after delivery (ms) are a scanner's.
    pub scanner_window_ms: i64,
}

/// What recording a hit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Whether it counted for a send (false: a test, a preview, a message
    /// Herald has no record of sending).
    pub counted: bool,
    /// Why it was flagged as a machine's, if it was.
    pub machine: Option<String>,
}

/// When the message with queue id `queue_id` was delivered (ms), if it was.
fn delivered_at(t: &WriteTables<'_>, queue_id: u64) -> Result<Option<i64>, StoreError> {
    Ok(t.finished_message(queue_id)?.and_then(|m| {
        m.recipients
            .iter()
            .find(|r| r.state == RcptState::Delivered)
            .and_then(|r| r.updated)
    }))
}

/// Records an open or a click: campaign counters (unique per contact and
/// total, human and machine apart, per link, per hour), the engagement
/// flags segments read, the contact's history and last click by hand.
/// A hit on a contact that no longer exists (erased) records nothing.
pub fn record(t: &mut WriteTables<'_>, hit: Hit) -> Result<Recorded, StoreError> {
    let m = hit.message;
    let s = m.send;
    if matches!(s.kind, SendKind::Preview | SendKind::Test) {
        return Ok(Recorded::default());
    }
    let contact = m.contact;
    // An erased contact's old links are still answered, but nothing is
    // recorded: no counter, engagement, history or last click names it.
    if !t.contact_exists(contact)? {
        return Ok(Recorded::default());
    }
    let mut machine = hit.machine;
    let click = match &hit.kind {
        HitKind::Open => None,
        HitKind::Click { link, url } => Some((*link, url.clone())),
    };
    let mut repeat_open = false;
    // Only messages Herald really queued count: the send's ledger names
    // them (an engagement record means it did). A message without a ledger
    // entry (a template message queued before the send layer kept one)
    // keeps its history, uncounted; a campaign's, nothing.
    let engaged = t.engagement(s, contact)?.is_some();
    let sent = if engaged && click.is_none() {
        Some(None)
    } else {
        t.sent(s, contact)?.map(|(_, q)| Some(q))
    };
    match sent {
        None if s.kind == SendKind::Campaign => return Ok(Recorded::default()),
        None => {}
        Some(sent) => {
            if click.is_some()
                && machine.is_none()
                && let Some(queue_id) = sent
                && let Some(d) = delivered_at(t, queue_id)?
                && hit.at >= d
                && hit.at - d < hit.scanner_window_ms
            {
                machine = Some(format!(
                    "clicked {:.1} s after delivery",
                    (hit.at - d) as f64 / 1000.0
                ));
            }
            repeat_open = count(
                t,
                s,
                contact,
                click.as_ref().map(|c| c.0),
                machine.is_some(),
                hit.at,
            )?;
        }
    }
    if repeat_open {
        // Counted (total opens, last open time); the history keeps the
        // first open of each message.
        return Ok(Recorded {
            counted: true,
            machine,
        });
    }
    let (kind, link, url) = match click {
        None => ("open", None, None),
        Some((l, u)) => ("click", Some(l), Some(u)),
    };
    t.push_history(
        contact,
        &HistoryEvent {
            at: hit.at,
            kind: kind.into(),
            source: Some(source_in(t, &s)?),
            slot: (s.kind == SendKind::Campaign).then_some(s.variant),
            link,
            url,
            machine: machine.clone(),
            ..Default::default()
        },
    )?;
    if let Some(l) = link
        && machine.is_none()
    {
        t.set_last_click(contact, (s.kind.code(), s.id, s.variant, l, hit.at))?;
    }
    Ok(Recorded {
        counted: true,
        machine,
    })
}

/// The send counters of one hit; true for an open of a message already
/// opened (by the same kind of client).
fn count(
    t: &mut WriteTables<'_>,
    s: SendRef,
    contact: u64,
    link: Option<u32>,
    machine: bool,
    at: i64,
) -> Result<bool, StoreError> {
    let flags = match (link.is_some(), machine) {
        (false, false) => OPENED,
        // A click by hand means the message was seen: an open too.
        (true, false) => OPENED | CLICKED,
        (false, true) => MACHINE_OPENED,
        (true, true) => MACHINE_CLICKED,
    };
    let old = t.engage(s, contact, flags, at)?;
    let first = |f: u8| old & f == 0;
    let repeat = match (link, machine) {
        (None, false) => !first(OPENED),
        (None, true) => !first(MACHINE_OPENED),
        _ => false,
    };
    match (link, machine) {
        (None, false) => {
            if first(OPENED) {
                t.bump_send_at(s, Counter::UniqueOpens, 1, at)?;
            }
            t.bump_send_at(s, Counter::Opens, 1, at)?;
        }
        (None, true) => {
            if first(MACHINE_OPENED) {
                t.bump_send_at(s, Counter::MachineUniqueOpens, 1, at)?;
            }
            t.bump_send_at(s, Counter::MachineOpens, 1, at)?;
        }
        (Some(l), false) => {
            if first(OPENED) {
                t.bump_send_at(s, Counter::UniqueOpens, 1, at)?;
            }
            if first(CLICKED) {
                t.bump_send_at(s, Counter::UniqueClicks, 1, at)?;
            }
            t.bump_send_at(s, Counter::Clicks, 1, at)?;
            t.bump_link(s, l, Counter::Clicks, 1)?;
            if t.note_clicker(s, l, contact)? {
                t.bump_link(s, l, Counter::UniqueClicks, 1)?;
            }
        }
        (Some(l), true) => {
            if first(MACHINE_CLICKED) {
                t.bump_send_at(s, Counter::MachineUniqueClicks, 1, at)?;
            }
            t.bump_send_at(s, Counter::MachineClicks, 1, at)?;
            t.bump_link(s, l, Counter::MachineClicks, 1)?;
        }
    }
    Ok(repeat)
}

/// Who acted, for the consent log.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// Client IP address.
    pub ip: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
}

/// What an unsubscribe did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsubscribed {
    /// The contact is now `withdrawn`.
    Now,
    /// They already were (a repeated request changes nothing).
    Already,
    /// The contact no longer exists (erased).
    Unknown,
}

/// The recipient of `m` withdraws consent (one-click or the page): at once,
/// with IP and user agent in the consent log; counted once for the
/// campaign the message belonged to.
pub fn unsubscribe(
    t: &mut WriteTables<'_>,
    m: MessageRef,
    who: &Actor,
    via: &str,
    now: DateTime<Utc>,
) -> Result<Unsubscribed, StoreError> {
    let Some(c) = t.contact(m.contact)? else {
        return Ok(Unsubscribed::Unknown);
    };
    if m.send.kind == SendKind::Preview {
        // A preview was never sent to the contact it shows.
        return Ok(Unsubscribed::Unknown);
    }
    let at = now.timestamp_millis();
    let s = m.send;
    if s.counted() && t.sent(s, m.contact)?.is_some() {
        let old = t.engage(s, m.contact, UNSUBSCRIBED, at)?;
        if old & UNSUBSCRIBED == 0 {
            t.bump_send_at(s, Counter::Unsubscribes, 1, at)?;
        }
    }
    if c.consent == ConsentState::Withdrawn {
        return Ok(Unsubscribed::Already);
    }
    let update = ContactUpdate {
        consent: Some(ConsentChange {
            to: ConsentState::Withdrawn,
            source: ConsentSource::Link,
            ip: who.ip.clone(),
            user_agent: who.user_agent.clone(),
            note: Some(format!("unsubscribed ({via}) from {}", source_in(t, &s)?)),
        }),
        ..Default::default()
    };
    if let Err(e) = apply_update_by_id(t, m.contact, update, now)? {
        // Withdrawing is allowed from every state; this cannot happen short
        // of a bug, and must not be silent.
        tracing::error!(contact = m.contact, error = %e, "unsubscribe refused");
        return Ok(Unsubscribed::Unknown);
    }
    t.push_history(
        m.contact,
        &HistoryEvent {
            at,
            kind: "unsubscribe".into(),
            source: Some(source_in(t, &s)?),
            slot: (s.kind == SendKind::Campaign).then_some(s.variant),
            note: Some(via.to_string()),
            ..Default::default()
        },
    )?;
    Ok(Unsubscribed::Now)
}

/// The recipient of `m` leaves some lists (the preference page) and stays
/// subscribed otherwise. Returns the names of the lists left.
pub fn leave_lists(
    t: &mut WriteTables<'_>,
    m: MessageRef,
    leave: Vec<u64>,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let Some(c) = t.contact(m.contact)? else {
        return Ok(Vec::new());
    };
    if m.send.kind == SendKind::Preview {
        return Ok(Vec::new());
    }
    let leave: std::collections::BTreeSet<u64> =
        leave.into_iter().filter(|l| c.lists.contains(l)).collect();
    if leave.is_empty() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for l in &leave {
        if let Some(list) = t.list(*l)? {
            names.push(list.name);
        }
    }
    let update = ContactUpdate {
        remove_lists: leave,
        ..Default::default()
    };
    if apply_update_by_id(t, m.contact, update, now)?.is_err() {
        return Ok(Vec::new());
    }
    t.push_history(
        m.contact,
        &HistoryEvent {
            at: now.timestamp_millis(),
            kind: "preferences".into(),
            source: Some(source_in(t, &m.send)?),
            note: Some(format!("left {}", names.join(", "))),
            ..Default::default()
        },
    )?;
    Ok(names)
}

/// How much later than the order's time (by the shop's clock) a click may
/// be and still count as the one before it: shops send times in whole
/// seconds, and their clocks differ from ours.
const CLOCK_SKEW_MS: i64 = 60_000;

/// The send and link an order was attributed to (kept in
/// `order_attribution_v1`, decided when the order was first stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributed {
    /// Send kind code (see `send::model::SendKind`).
    pub kind: u8,
    /// The send's id.
    pub id: u64,
    /// The send's slot.
    pub slot: u32,
    /// Link number clicked.
    pub link: u32,
    /// `parameter` (the click token came back with the order) or `window`
    /// (the contact's last click by hand within the attribution window).
    pub by: &'static str,
}

impl Attributed {
    /// The send credited.
    pub fn send(&self) -> Option<SendRef> {
        Some(SendRef {
            kind: SendKind::from_code(self.kind)?,
            id: self.id,
            variant: self.slot,
        })
    }
}

/// Whether orders can be credited to a send: everything a contact really
/// got (not tests or previews). A transactional message's slot names its
/// day; one without (a template message sent before the send layer, slot
/// 0) is not credited, as it was not then.
fn attributable(kind: SendKind, slot: u32) -> bool {
    match kind {
        SendKind::Campaign | SendKind::Automation => true,
        SendKind::Transactional => unslot(slot).0 > 0,
        SendKind::Test | SendKind::Preview => false,
    }
}

/// What attribution needs: the keys that verify click tokens, the window
/// for last-click attribution, and (for `/metrics`) what was attributed in
/// the transaction.
#[derive(Clone)]
pub struct AttributionRules {
    /// Token keys.
    pub keys: crate::tokens::Keys,
    /// Last-click window (ms).
    pub window_ms: i64,
    attributed: std::sync::Arc<std::sync::Mutex<Vec<(&'static str, i64)>>>,
}

impl AttributionRules {
    /// The rules of a config snapshot.
    pub fn of(config: &crate::config::Config) -> AttributionRules {
        AttributionRules {
            keys: config.tracking.keys.clone(),
            window_ms: config.tracking.attribution_window.as_millis() as i64,
            attributed: Default::default(),
        }
    }

    /// (how, revenue in hundredths) of every order attributed so far.
    pub fn take_attributed(&self) -> Vec<(&'static str, i64)> {
        self.attributed
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default()
    }
}

/// What one version of an attributed order adds to its send's figures: one
/// order and its total, in its currency, in the hour it was placed; nothing
/// when it does not count (cancelled, refunded, failed).
#[derive(Debug, PartialEq, Eq)]
struct Contribution<'a> {
    cents: i64,
    currency: &'a str,
    placed_at: i64,
}

fn contribution(o: &crate::shop::model::Order) -> Option<Contribution<'_>> {
    o.counted().then(|| Contribution {
        cents: o.total.max(0),
        currency: &o.currency,
        placed_at: o.placed_at,
    })
}

/// Adds (`sign` 1) or takes back (`sign` -1) a version's contribution: the
/// send's slot (also by currency), link and hour. Taken back at the hour and
/// in the currency it was added with, every series moves as the totals do.
fn count_order(
    t: &mut WriteTables<'_>,
    a: &Attributed,
    c: &Contribution<'_>,
    sign: i64,
) -> Result<(), StoreError> {
    let Some(s) = a.send().filter(SendRef::counted) else {
        return Ok(());
    };
    t.bump_send_at(s, Counter::Orders, sign, c.placed_at)?;
    t.bump_link(s, a.link, Counter::Orders, sign)?;
    if c.cents != 0 {
        t.bump_send_at(s, Counter::Revenue, sign * c.cents, c.placed_at)?;
        t.bump_link(s, a.link, Counter::Revenue, sign * c.cents)?;
    }
    t.bump_money(s, c.currency, sign, sign * c.cents)
}

/// Decides which click brought a new order: the click token the shop
/// passed back (`attribution`), else the contact's last click by hand within
/// the window before the order. Counts it for the campaign (variant, link,
/// hour) and puts the order in the contact's history. Orders that do not
/// count (cancelled…) and forged tokens are not attributed.
pub fn attribute_order(
    t: &mut WriteTables<'_>,
    order: &crate::shop::model::Order,
    rules: &AttributionRules,
) -> Result<(), StoreError> {
    let mut found = None;
    if order.counted() {
        if let Some(v) = order.attribution.as_deref()
            && let Some(crate::tokens::Token::Click(m, n, _)) = rules.keys.verify(v.trim())
            && attributable(m.send.kind, m.send.variant)
        {
            found = Some(Attributed {
                kind: m.send.kind.code(),
                id: m.send.id,
                slot: m.send.variant,
                link: n,
                by: "parameter",
            });
        } else if let Some((kind, id, slot, link, at)) = t.last_click(order.contact)?
            && order.placed_at >= at - CLOCK_SKEW_MS
            && order.placed_at - at <= rules.window_ms
            && SendKind::from_code(kind).is_some_and(|k| attributable(k, slot))
        {
            found = Some(Attributed {
                kind,
                id,
                slot,
                link,
                by: "window",
            });
        }
    }
    if let Some(a) = &found {
        t.put_order_attribution(&order.order_id, a)?;
        // Found only for an order that counts.
        if let Some(c) = contribution(order) {
            count_order(t, a, &c, 1)?;
        }
        if let Ok(mut g) = rules.attributed.lock() {
            g.push((a.by, order.total.max(0)));
        }
    }
    let send = found.as_ref().and_then(|a| {
        SendKind::from_code(a.kind).map(|k| SendRef {
            kind: k,
            id: a.id,
            variant: a.slot,
        })
    });
    let source = match send {
        Some(s) => Some(source_in(t, &s)?),
        None => None,
    };
    t.push_history(
        order.contact,
        &HistoryEvent {
            at: order.placed_at,
            kind: "order".into(),
            source,
            slot: found.as_ref().map(|a| a.slot),
            link: found.as_ref().map(|a| a.link),
            order: Some(order.order_id.clone()),
            amount: Some(order.total),
            currency: Some(order.currency.clone()),
            note: found.as_ref().map(|a| format!("attributed by {}", a.by)),
            ..Default::default()
        },
    )?;
    Ok(())
}

/// Keeps an attributed order's counts true when the shop updates it: the
/// stored version's contribution is taken back where it was counted (the
/// hour it was placed, its currency) and the new version's added where it
/// belongs. A cancellation or refund takes it out, a reinstatement puts it
/// back, a changed total, currency or placing time moves it; totals, variants, links and
/// hours move together.
pub fn reattribute_order(
    t: &mut WriteTables<'_>,
    before: &crate::shop::model::Order,
    after: &crate::shop::model::Order,
) -> Result<(), StoreError> {
    let Some(a) = t.order_attribution(&before.order_id)? else {
        return Ok(());
    };
    let (was, now) = (contribution(before), contribution(after));
    if was == now {
        return Ok(());
    }
    if let Some(c) = &was {
        count_order(t, &a, c, -1)?;
    }
    if let Some(c) = &now {
        count_order(t, &a, c, 1)?;
    }
    Ok(())
}

/// The message a Message-ID names, as Herald makes them:
/// `{letter}{send id}.{slot}.{contact}@…` for campaigns, automations and
/// tests, with a random `.{hex}` after the contact for transactional
/// messages (see `render::Compiled::render`).
pub fn send_message(message_id: &str) -> Option<MessageRef> {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let (local, _) = id.split_once('@')?;
    let mut chars = local.chars();
    let letter = chars.next()?;
    let kind = [
        SendKind::Campaign,
        SendKind::Automation,
        SendKind::Transactional,
    ]
    .into_iter()
    .find(|k| k.letter() == letter)?;
    let mut parts = chars.as_str().split('.');
    let send = parts.next()?.parse().ok()?;
    let slot = parts.next()?.parse().ok()?;
    let contact = parts.next()?.parse().ok()?;
    let random = parts.next();
    if parts.next().is_some()
        || (kind == SendKind::Transactional)
            != random.is_some_and(|r| u64::from_str_radix(r, 16).is_ok())
    {
        return None;
    }
    Some(MessageRef {
        send: SendRef {
            kind,
            id: send,
            variant: slot,
        },
        contact,
    })
}

/// A spam complaint about a message (from a feedback loop): the contact is
/// `withdrawn` (source `complaint`), its address suppressed, and its send
/// counts it once. `false` when Herald has no record of sending that message.
pub fn complaint(
    t: &mut WriteTables<'_>,
    m: MessageRef,
    note: Option<String>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let s = m.send;
    if !s.counted() || t.sent(s, m.contact)?.is_none() {
        return Ok(false);
    }
    let at = now.timestamp_millis();
    let old = t.engage(s, m.contact, COMPLAINED, at)?;
    if old & COMPLAINED == 0 {
        t.bump_send_at(s, Counter::Complaints, 1, at)?;
    }
    if let Some(c) = t.contact(m.contact)? {
        crate::contacts::suppress(
            t,
            &c.email,
            SuppressionSource::Complaint,
            "spam complaint".into(),
            at,
        )?;
        let note = note.unwrap_or_else(|| format!("spam complaint about {}", source_of(&s)));
        if crate::contacts::set_consent(
            t,
            m.contact,
            ConsentState::Withdrawn,
            ConsentSource::Complaint,
            note,
            at,
        )? {
            t.push_history(
                m.contact,
                &HistoryEvent {
                    at,
                    kind: "complaint".into(),
                    source: Some(source_in(t, &s)?),
                    slot: Some(s.variant),
                    ..Default::default()
                },
            )?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_name_send_messages() {
        let m = send_message("<c12.65537.99@shop.example>");
        assert_eq!(
            m.map(|m| (m.send.id, m.send.variant, m.contact)),
            Some((12, 65537, 99))
        );
        let m = send_message("m7.1310720000.3.00ff00ff00ff00ff@shop.example");
        assert_eq!(
            m.map(|m| (m.send.kind, m.send.id, m.send.variant, m.contact)),
            Some((SendKind::Transactional, 7, 1_310_720_000, 3))
        );
        assert!(send_message("m1.2.3@shop.example").is_none());
        assert!(send_message("c1.2.3.ff@shop.example").is_none());
        assert!(send_message("t1.2.3@shop.example").is_none());
        assert!(send_message("c1.2@shop.example").is_none());
        assert!(send_message("nonsense").is_none());
    }
}
