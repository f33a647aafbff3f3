//! What to do with a run whose step is due: the decision, from what was
//! read about the contact, without side effects (the runner renders and
//! commits it; the commit checks again what may have changed).

use chrono_tz::Tz;

use super::flow::{ExitIf, Message, Trigger};
use super::model::{LiveFlow, Run, RunState, counter};
use super::when;
use crate::config::AutomationConfig;
use crate::contacts::model::{ConsentState, Contact};
use crate::delivery::model::MailKind;
use crate::segment::lang::Cond;
use crate::shop::model::{Cart, Order, ShopStats};
use crate::store::automation::{Due, RunKey};

/// How long a held step waits before it is looked at again when nothing
/// says when it may go (an empty coupon pool, a paused flow, a template
/// that did not load).
pub const RETRY_HELD_MS: i64 = 5 * 60_000;

/// What the runner read about a due run.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The run's key.
    pub key: RunKey,
    /// Where it waited when read.
    pub due: Due,
    /// The run.
    pub run: Run,
    /// The contact (`None`: erased).
    pub contact: Option<Contact>,
    /// The contact's cart.
    pub cart: Option<Cart>,
    /// The contact's aggregates.
    pub stats: Option<ShopStats>,
    /// A counted order placed after the trigger.
    pub ordered_since: bool,
    /// Engagement flags of the previous step's message, if one was sent.
    pub previous: Option<u8>,
    /// The order the run is about.
    pub order: Option<Order>,
}

/// The decision for one due run.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The run is not what was read (changed since): leave it.
    Stale,
    /// End the run (reason).
    Exit(&'static str),
    /// Too late: count it missed and go on to the next step.
    Missed,
    /// Nothing to send at this step (reason): go on to the next step.
    Skip(&'static str),
    /// Not now: look again at this time (the counter says why).
    Hold(i64, &'static str),
    /// Send this message (slot variant: 0 for the step's own message, 1 + i
    /// for variant i), with this consent rule.
    Send {
        /// The slot's variant.
        variant: u32,
        /// What.
        message: Message,
        /// The consent rule.
        kind: MailKind,
    },
    /// No step left (steps were removed): the run is complete.
    Complete,
}

/// What deciding needs besides the run.
pub struct Inputs<'a> {
    /// Now (ms).
    pub now: i64,
    /// `[automation]`.
    pub config: &'a AutomationConfig,
    /// The contact's time zone.
    pub tz: Tz,
    /// Whether the contact matches a condition now (segment index).
    pub matches: &'a dyn Fn(&Cond) -> bool,
    /// A template's consent rule, if it is loaded.
    pub kind_of: &'a dyn Fn(&str) -> Option<MailKind>,
}

/// The consent rule of a loaded template (`None`: not loaded).
pub fn mail_kind(snap: &crate::snapshot::Snapshot, template: &str) -> Option<MailKind> {
    use crate::render::template::Kind;
    snap.templates.get(template).map(|t| match t.kind {
        Kind::Marketing => MailKind::Marketing,
        Kind::Transactional => MailKind::Transactional,
    })
}

/// Decides what happens to a due run of `flow` (`None`: the flow is gone).
pub fn decide(l: &Loaded, flow: Option<&LiveFlow>, x: &Inputs<'_>) -> Decision {
    if l.run.state != RunState::Waiting || l.run.step != l.due.step {
        return Decision::Stale;
    }
    let Some(f) = flow else {
        return Decision::Exit("flow_removed");
    };
    if f.paused {
        return Decision::Hold(x.now + RETRY_HELD_MS, counter::HELD_PAUSED);
    }
    let Some(step) = f.flow.steps.get(l.run.step as usize) else {
        return Decision::Complete;
    };
    let max_late = f.flow.max_late.unwrap_or(x.config.max_late_ms);
    if l.due.at < x.now.saturating_sub(max_late) {
        return Decision::Missed;
    }
    let Some(c) = &l.contact else {
        return Decision::Exit("contact_erased");
    };
    if matches!(c.consent, ConsentState::Withdrawn | ConsentState::Invalid) {
        return Decision::Exit("consent");
    }
    if let Some(reason) = trigger_ended(l, &f.flow.trigger) {
        return Decision::Exit(reason);
    }
    if let Some(reason) = exit_if(l, &step.exit_if) {
        return Decision::Exit(reason);
    }
    if let Some(cond) = &f.flow.conditions
        && !(x.matches)(cond)
    {
        return Decision::Exit("conditions");
    }
    let chosen = step
        .variants
        .iter()
        .enumerate()
        .find(|(_, v)| (x.matches)(&v.when))
        .map(|(i, v)| (i as u32 + 1, &v.message))
        .or(step.message.as_ref().map(|m| (0, m)));
    let Some((variant, message)) = chosen else {
        return Decision::Skip("no_variant");
    };
    let Some(kind) = (x.kind_of)(&message.template) else {
        return Decision::Hold(x.now + RETRY_HELD_MS, "held.template_not_loaded");
    };
    let sms = message.channel == crate::contacts::model::Channel::Sms;
    if sms && c.phone.is_none() {
        return Decision::Skip("no_phone");
    }
    if kind == MailKind::Marketing {
        if sms && c.sms_consent != ConsentState::Granted {
            return Decision::Skip("no_sms_consent");
        }
        if !sms && c.consent != ConsentState::Granted {
            return Decision::Skip("no_consent");
        }
        if let Some(q) = x.config.quiet_hours
            && let Some(until) = when::quiet_until(x.now, q, x.tz)
        {
            return Decision::Hold(until, counter::HELD_QUIET);
        }
    }
    Decision::Send {
        variant,
        message: message.clone(),
        kind,
    }
}

/// Why the trigger's own situation no longer holds, if it does not: a cart
/// reminder for a cart that changed, emptied or was ordered; inactivity
/// after the contact came back; registration follow-up after an order.
fn trigger_ended(l: &Loaded, t: &Trigger) -> Option<&'static str> {
    match t {
        Trigger::CartAbandoned { .. } => {
            if l.ordered_since {
                return Some("ordered");
            }
            if l.run.step == 0 {
                match &l.cart {
                    Some(c)
                        if !c.items.is_empty() && Some(c.updated_at) == l.run.occurrence.cart => {}
                    Some(c) if c.items.is_empty() => return Some("cart_emptied"),
                    _ => return Some("cart_changed"),
                }
            }
            None
        }
        Trigger::Inactive { .. } => {
            let s = l.stats.as_ref();
            let now = match l.run.occurrence.what.starts_with("login") {
                true => s.and_then(|s| s.last_login),
                false => s.and_then(|s| s.last_order).map(|d| d as i64),
            };
            (now != l.run.occurrence.activity).then_some("active_again")
        }
        Trigger::Registered { no_order: true, .. } => l
            .stats
            .as_ref()
            .is_some_and(|s| s.order_count > 0)
            .then_some("ordered"),
        Trigger::DeliveryDate { .. }
        | Trigger::OrderStatus { .. }
        | Trigger::OrderPlaced { .. } => {
            // An order cancelled since gets no follow-up.
            l.order
                .as_ref()
                .is_some_and(|o| !o.counted())
                .then_some("order_cancelled")
        }
        _ => None,
    }
}

fn exit_if(l: &Loaded, e: &ExitIf) -> Option<&'static str> {
    use crate::send::model::{CLICKED, OPENED};
    if e.ordered_since_trigger && l.ordered_since {
        return Some("ordered_since_trigger");
    }
    if e.cart_empty && l.cart.as_ref().is_none_or(|c| c.items.is_empty()) {
        return Some("cart_empty");
    }
    if e.opened_previous && l.previous.is_some_and(|f| f & (OPENED | CLICKED) != 0) {
        return Some("opened_previous");
    }
    if e.clicked_previous && l.previous.is_some_and(|f| f & CLICKED != 0) {
        return Some("clicked_previous");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::automation::flow::{self, Products, Reentry, Step};
    use crate::automation::model::{Occurrence, Source};
    use crate::shop::model::Item;

    fn live(trigger: Trigger, exit: ExitIf) -> LiveFlow {
        let message = Message {
            channel: crate::contacts::model::Channel::Email,
            gateway: None,
            template: "t".into(),
            sender: None,
            subject: None,
            data: serde_json::Value::Null,
            products: Products::None,
        };
        LiveFlow {
            flow: flow::Flow {
                name: "f".into(),
                description: None,
                trigger,
                conditions: None,
                steps: vec![Step {
                    after: 0,
                    at: None,
                    message: Some(message),
                    variants: Vec::new(),
                    tags_add: Vec::new(),
                    tags_remove: Vec::new(),
                    exit_if: exit,
                    coupon: false,
                }],
                reentry: Reentry::Always,
                coupon_pool: None,
                max_late: None,
                definition: serde_json::Value::Null,
            },
            id: 1,
            version: 1,
            source: Source::Api,
            paused: false,
        }
    }

    fn loaded(consent: ConsentState, due: i64) -> Loaded {
        Loaded {
            key: (1, 7, 9),
            due: Due { step: 0, at: due },
            run: Run::new(
                "f",
                Occurrence {
                    what: "cart 100".into(),
                    cart: Some(100),
                    ..Default::default()
                },
                100,
                100,
                due,
            ),
            contact: Some(Contact {
                id: 7,
                email: "a@example.com".into(),
                consent,
                phone: None,
                sms_consent: ConsentState::Unknown,
                language: None,
                site: None,
                fields: Default::default(),
                lists: Default::default(),
                tags: Default::default(),
                created_at: Default::default(),
                updated_at: Default::default(),
            }),
            cart: Some(Cart {
                items: vec![Item {
                    sku: "S".into(),
                    quantity: 1,
                    price: 100,
                    category: None,
                    name: None,
                }],
                currency: None,
                url: None,
                updated_at: 100,
            }),
            stats: None,
            ordered_since: false,
            previous: None,
            order: None,
        }
    }

    fn decide_with(l: &Loaded, f: &LiveFlow, quiet: Option<(u32, u32)>, now: i64) -> Decision {
        let config = AutomationConfig {
            quiet_hours: quiet,
            ..Default::default()
        };
        let yes = |_: &Cond| true;
        let kind = |_: &str| Some(MailKind::Marketing);
        decide(
            l,
            Some(f),
            &Inputs {
                now,
                config: &config,
                tz: Tz::UTC,
                matches: &yes,
                kind_of: &kind,
            },
        )
    }

    #[test]
    fn a_cart_reminder_goes_only_while_the_cart_waits() {
        let f = live(Trigger::CartAbandoned { after: 10 }, ExitIf::default());
        let l = loaded(ConsentState::Granted, 1_000);
        assert!(matches!(
            decide_with(&l, &f, None, 1_000),
            Decision::Send { variant: 0, .. }
        ));
        let mut ordered = l.clone();
        ordered.ordered_since = true;
        assert_eq!(
            decide_with(&ordered, &f, None, 1_000),
            Decision::Exit("ordered")
        );
        let mut changed = l.clone();
        if let Some(c) = changed.cart.as_mut() {
            c.updated_at = 200;
        }
        assert_eq!(
            decide_with(&changed, &f, None, 1_000),
            Decision::Exit("cart_changed")
        );
        let pending = loaded(ConsentState::Pending, 1_000);
        assert_eq!(
            decide_with(&pending, &f, None, 1_000),
            Decision::Skip("no_consent")
        );
        let gone = loaded(ConsentState::Withdrawn, 1_000);
        assert_eq!(
            decide_with(&gone, &f, None, 1_000),
            Decision::Exit("consent")
        );
    }

    #[test]
    fn late_steps_are_missed_and_quiet_hours_hold() {
        let f = live(Trigger::CartAbandoned { after: 10 }, ExitIf::default());
        let day = 86_400_000;
        let l = loaded(ConsentState::Granted, 1_000);
        assert_eq!(decide_with(&l, &f, None, 1_000 + day + 1), Decision::Missed);
        // 22:00 UTC is inside 21:00-08:00: held until 08:00.
        let at = 22 * 3_600_000;
        let l = loaded(ConsentState::Granted, at);
        assert_eq!(
            decide_with(&l, &f, Some((21 * 60, 8 * 60)), at),
            Decision::Hold(day + 8 * 3_600_000, counter::HELD_QUIET)
        );
    }
}
