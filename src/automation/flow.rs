//! A flow as written: a TOML file `config/automations/NAME.toml`, or the
//! same structure as JSON through the API. Both become the located node
//! tree of the segment language (`segment::lang`), so every problem names
//! its line and column (or JSON path), all of them at once, and the
//! conditions inside a flow (entry conditions, variants' `when`) are
//! segment conditions parsed by the segment language itself.
//!
//! ```toml
//! description = "Cart reminder"
//! reentry = "always"              # "never", "always" or an interval ("30 days")
//! coupon_pool = "cart10"          # optional: codes for steps with coupon = true
//! [trigger]
//! type = "cart_abandoned"
//! after = "1h"
//! [conditions]                    # optional: checked when each step is due
//! field = "language"
//! eq = "pl"
//! [[steps]]
//! after = "0s"                    # from the trigger, then from the previous step
//! at = "09:00"                    # optional: the next such time (site time zone)
//! template = "abandoned_cart"
//! products = "trigger"            # or ["SKU-1", "SKU-2"], or "related"
//! exit_if = { ordered_since_trigger = true }
//! tags_add = ["cart-reminded"]
//! [[steps.variants]]
//! when = { field = "customer_type", eq = "company" }
//! template = "abandoned_cart_b2b"
//! ```

use std::collections::BTreeMap;

use serde_json::Value;

use crate::segment::lang::{self, Cond, Loc, Node, NodeV, Problem};
use crate::segment::{Catalog, builtin_kind};

/// How often a contact may enter a flow again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reentry {
    /// Once ever.
    Never,
    /// Once per occurrence.
    Always,
    /// Once per occurrence, at least this long (ms) after the last entry.
    After(i64),
}

/// What a `inactive` trigger watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// The last login.
    Login,
    /// The last counted order.
    Order,
}

/// What starts a run, and what makes its occurrence.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// An order (the `nth` counted one of the contact, if given) in one of
    /// `statuses` (any, if empty). Occurrence: the order.
    OrderPlaced {
        /// 1, 2…; `None`: any.
        nth: Option<u32>,
        /// Lower-cased statuses.
        statuses: Vec<String>,
    },
    /// An order changed to a status. Occurrence: order + status.
    OrderStatus {
        /// Lower-cased status.
        to: String,
    },
    /// Relative to an order's delivery date (local midnight). Occurrence:
    /// the order.
    DeliveryDate {
        /// Offset from the date's start, ms.
        offset: i64,
    },
    /// A cart unchanged this long, not empty, no order since. Occurrence:
    /// the cart version.
    CartAbandoned {
        /// ms.
        after: i64,
    },
    /// This long after registration (`registered_at`, or first seen).
    /// Occurrence: the contact.
    Registered {
        /// ms.
        after: i64,
        /// Only if the contact has not ordered by then.
        no_order: bool,
    },
    /// No login / order for `days`. Occurrence: the activity it follows.
    Inactive {
        /// What is watched.
        since: Since,
        /// Days.
        days: u32,
    },
    /// Each year on the `birthday` field's date, plus `offset` days.
    /// Occurrence: the year.
    Birthday {
        /// Days.
        offset: i64,
    },
    /// On a custom date field (each year if `yearly`), plus `offset` days.
    DateField {
        /// Field name.
        field: String,
        /// Days.
        offset: i64,
        /// Every year on the date, rather than once.
        yearly: bool,
    },
    /// Signed up (to `list`, if given). Occurrence: list + time.
    Signup {
        /// List name.
        list: Option<String>,
    },
    /// Confirmed a signup (double opt-in).
    Confirmed {
        /// List name.
        list: Option<String>,
    },
    /// A wait-listed product is back in stock. Occurrence: SKU + time.
    BackInStock,
    /// A pre-ordered product is available.
    PreorderAvailable,
    /// One order of at least `gte`, or the contact's counted sum crossing
    /// `crosses` (hundredths).
    OrderTotal {
        /// Hundredths.
        gte: Option<i64>,
        /// Hundredths.
        crosses: Option<i64>,
    },
    /// Became a member of a saved segment. Occurrence: the entry time.
    SegmentEntered {
        /// Segment name.
        segment: String,
    },
    /// Joined a list. Occurrence: list + time.
    ListJoined {
        /// List name.
        list: String,
    },
    /// Got a tag. Occurrence: tag + time.
    TagAdded {
        /// Tag.
        tag: String,
    },
    /// Finished another flow. Occurrence: that run.
    FlowCompleted {
        /// The flow's name.
        flow: String,
    },
}

impl Trigger {
    /// The trigger's name in files.
    pub fn name(&self) -> &'static str {
        match self {
            Trigger::OrderPlaced { .. } => "order_placed",
            Trigger::OrderStatus { .. } => "order_status",
            Trigger::DeliveryDate { .. } => "delivery_date",
            Trigger::CartAbandoned { .. } => "cart_abandoned",
            Trigger::Registered { .. } => "registered",
            Trigger::Inactive { .. } => "inactive",
            Trigger::Birthday { .. } => "birthday",
            Trigger::DateField { .. } => "date_field",
            Trigger::Signup { .. } => "signup",
            Trigger::Confirmed { .. } => "confirmed",
            Trigger::BackInStock => "back_in_stock",
            Trigger::PreorderAvailable => "preorder_available",
            Trigger::OrderTotal { .. } => "order_total",
            Trigger::SegmentEntered { .. } => "segment_entered",
            Trigger::ListJoined { .. } => "list_joined",
            Trigger::TagAdded { .. } => "tag_added",
            Trigger::FlowCompleted { .. } => "flow_completed",
        }
    }

    /// Whether occurrences come from stored dates rather than events, so a
    /// new flow must look at every contact once to arm them.
    pub fn scheduled(&self) -> bool {
        matches!(
            self,
            Trigger::Birthday { .. }
                | Trigger::DateField { .. }
                | Trigger::Registered { .. }
                | Trigger::Inactive { .. }
                | Trigger::DeliveryDate { .. }
        )
    }
}

/// Which products a message shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Products {
    /// None but what the template does itself.
    None,
    /// These SKUs.
    Skus(Vec<String>),
    /// The cart's or order's items (or the restocked product).
    Trigger,
    /// Related products of what was bought, not bought yet.
    Related,
}

/// What a step (or one of its variants) sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// E-mail (`template = …`) or SMS (`sms = { template = … }`).
    pub channel: crate::contacts::model::Channel,
    /// The SMS gateway (`sms = { gateway = … }`; `None`: `[sms] gateway`).
    pub gateway: Option<String>,
    /// Template name.
    pub template: String,
    /// Sender id (`None`: the template's).
    pub sender: Option<String>,
    /// Subject template (`None`: the template's).
    pub subject: Option<String>,
    /// Values for `data`.
    pub data: Value,
    /// Products.
    pub products: Products,
}

impl Message {
    /// An empty message of `channel` (the parser fills it).
    fn new(channel: crate::contacts::model::Channel) -> Message {
        Message {
            channel,
            gateway: None,
            template: String::new(),
            sender: None,
            subject: None,
            data: Value::Null,
            products: Products::None,
        }
    }
}

/// A variant of a step: sent to contacts matching `when` (first match).
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// The condition, evaluated on the contact when the step is due.
    pub when: Cond,
    /// What it sends.
    pub message: Message,
}

/// Conditions that end a run when a step is due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitIf {
    /// The contact placed an order after the trigger.
    pub ordered_since_trigger: bool,
    /// The contact's cart is empty.
    pub cart_empty: bool,
    /// The contact opened the previous step's message.
    pub opened_previous: bool,
    /// The contact clicked in the previous step's message.
    pub clicked_previous: bool,
}

/// One step of a flow.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Delay from the trigger (first step) or the previous step, ms.
    pub after: i64,
    /// The next such time of day (minutes), in the contact's site zone.
    pub at: Option<u32>,
    /// The message of contacts no variant matches (`None`: they get none
    /// at this step).
    pub message: Option<Message>,
    /// Variants, first match wins.
    pub variants: Vec<Variant>,
    /// Tags added once the message is queued.
    pub tags_add: Vec<String>,
    /// Tags removed once the message is queued.
    pub tags_remove: Vec<String>,
    /// When to end the run instead.
    pub exit_if: ExitIf,
    /// Hand the message a code of the flow's coupon pool.
    pub coupon: bool,
}

/// A flow as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// Name (the file stem or the API name).
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// What starts it.
    pub trigger: Trigger,
    /// Checked on the contact when each step is due (the run ends when it
    /// fails).
    pub conditions: Option<Cond>,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Re-entry rule.
    pub reentry: Reentry,
    /// The coupon pool of steps with `coupon = true`.
    pub coupon_pool: Option<String>,
    /// A step due longer ago than this when found is missed (ms; `None`:
    /// `[automation] max_late`).
    pub max_late: Option<i64>,
    /// The definition as JSON (what the API stores and shows).
    pub definition: Value,
}

/// Where a problem is, for callers that build their own errors.
pub type Located = Problem;

struct P<'a> {
    problems: &'a mut Vec<Problem>,
}

impl P<'_> {
    fn at(&mut self, loc: &Loc, m: impl Into<String>) {
        self.problems.push(Problem {
            loc: loc.clone(),
            message: m.into(),
        });
    }

    fn table<'n>(&mut self, n: &'n Node, what: &str) -> Option<&'n [(String, Node)]> {
        match &n.v {
            NodeV::Table(e) => Some(e),
            other => {
                let t = match other {
                    NodeV::Array(_) => "an array",
                    NodeV::Str(_) => "a string",
                    NodeV::Num(_) => "a number",
                    NodeV::Bool(_) => "a boolean",
                    _ => "a date",
                };
                self.at(&n.loc, format!("{what} must be a table, not {t}"));
                None
            }
        }
    }

    fn str(&mut self, n: &Node, key: &str) -> Option<String> {
        match &n.v {
            NodeV::Str(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            _ => {
                self.at(&n.loc, format!("`{key}` must be a non-empty string"));
                None
            }
        }
    }

    fn bool(&mut self, n: &Node, key: &str) -> Option<bool> {
        match &n.v {
            NodeV::Bool(b) => Some(*b),
            _ => {
                self.at(&n.loc, format!("`{key}` must be true or false"));
                None
            }
        }
    }

    fn int(&mut self, n: &Node, key: &str, min: i64, max: i64) -> Option<i64> {
        match &n.v {
            NodeV::Num(x) if x.fract() == 0.0 && *x >= min as f64 && *x <= max as f64 => {
                Some(*x as i64)
            }
            _ => {
                self.at(
                    &n.loc,
                    format!("`{key}` must be a whole number from {min} to {max}"),
                );
                None
            }
        }
    }

    fn money(&mut self, n: &Node, key: &str) -> Option<i64> {
        let v = match &n.v {
            NodeV::Num(x) => Some(*x),
            NodeV::Str(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match v {
            Some(x) if (0.0..1e13).contains(&x) => Some((x * 100.0).round() as i64),
            _ => {
                self.at(
                    &n.loc,
                    format!("`{key}` must be an amount such as 250 or \"249.99\""),
                );
                None
            }
        }
    }

    fn delay(&mut self, n: &Node, key: &str, signed: bool) -> Option<i64> {
        let s = match &n.v {
            NodeV::Str(s) => s.trim().to_string(),
            NodeV::Num(x) if *x == 0.0 => "0s".into(),
            _ => String::new(),
        };
        match parse_delay(&s) {
            Ok(ms) if signed || ms >= 0 => Some(ms),
            Ok(_) => {
                self.at(&n.loc, format!("`{key}` cannot be negative"));
                None
            }
            Err(e) => {
                self.at(&n.loc, format!("`{key}`: {e}"));
                None
            }
        }
    }

    fn strings(&mut self, n: &Node, key: &str) -> Vec<String> {
        match &n.v {
            NodeV::Str(s) if !s.trim().is_empty() => vec![s.trim().to_string()],
            NodeV::Array(items) => items.iter().filter_map(|i| self.str(i, key)).collect(),
            _ => {
                self.at(
                    &n.loc,
                    format!("`{key}` must be a string or a list of strings"),
                );
                Vec::new()
            }
        }
    }
}

pub use super::when::{parse_clock, parse_offset as parse_delay};

const FLOW_KEYS: &str = "description, trigger, conditions, steps, reentry, coupon_pool, max_late";
const STEP_KEYS: &str = "after, at, template, sender, subject, data, products, sms, variants, \
                         tags_add, tags_remove, exit_if, coupon";

/// Parses a flow document (the root of a TOML file or a JSON body).
/// `sites`: the config's site ids (for the segment conditions' `site`).
pub fn parse(name: &str, root: &Node, sites: &[String]) -> Result<Flow, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut p = P {
        problems: &mut problems,
    };
    let Some(entries) = p.table(root, "a flow") else {
        return Err(problems);
    };
    let kinds = |n: &str| builtin_kind(n, sites);
    let mut description = None;
    let mut trigger = None;
    let mut conditions = None;
    let mut steps = Vec::new();
    let mut reentry = Reentry::Always;
    let mut coupon_pool = None;
    let mut max_late = None;
    let mut saw_trigger = false;
    let mut saw_steps = false;
    for (k, v) in entries {
        match k.as_str() {
            "description" => description = p.str(v, k),
            "trigger" => {
                saw_trigger = true;
                trigger = parse_trigger(&mut p, v);
            }
            "conditions" => conditions = lang::parse_cond(v, &kinds, p.problems),
            "steps" => {
                saw_steps = true;
                match &v.v {
                    NodeV::Array(items) if !items.is_empty() && items.len() <= 100 => {
                        for s in items {
                            if let Some(step) = parse_step(&mut p, s, &kinds) {
                                steps.push(step);
                            }
                        }
                    }
                    _ => p.at(
                        &v.loc,
                        "`steps` must be a list of 1 to 100 steps ([[steps]] tables)",
                    ),
                }
            }
            "reentry" => {
                reentry = match &v.v {
                    NodeV::Str(s) if s == "never" => Reentry::Never,
                    NodeV::Str(s) if s == "always" => Reentry::Always,
                    NodeV::Str(s) => match parse_delay(s) {
                        Ok(ms) if ms > 0 => Reentry::After(ms),
                        _ => {
                            p.at(&v.loc, "`reentry` must be \"never\", \"always\" or an interval such as \"30 days\"");
                            Reentry::Always
                        }
                    },
                    _ => {
                        p.at(&v.loc, "`reentry` must be \"never\", \"always\" or an interval such as \"30 days\"");
                        Reentry::Always
                    }
                }
            }
            "coupon_pool" => {
                coupon_pool = p.str(v, k);
                if let Some(c) = &coupon_pool
                    && !valid_name(c)
                {
                    p.at(
                        &v.loc,
                        "`coupon_pool`: use 1-64 letters, digits, `-`, `_` or `.`",
                    );
                }
            }
            "max_late" => max_late = p.delay(v, k, false),
            other => p.at(
                &v.loc,
                format!("unknown key `{other}`; a flow has: {FLOW_KEYS}"),
            ),
        }
    }
    if !saw_trigger {
        p.at(&root.loc, "a flow needs a [trigger] table with a `type`");
    }
    if !saw_steps {
        p.at(&root.loc, "a flow needs at least one [[steps]] table");
    }
    if steps.iter().any(|s| s.coupon) && coupon_pool.is_none() {
        p.at(
            &root.loc,
            "a step has coupon = true but the flow names no `coupon_pool`",
        );
    }
    match trigger {
        Some(trigger) if problems.is_empty() => Ok(Flow {
            name: name.to_string(),
            description,
            trigger,
            conditions,
            steps,
            reentry,
            coupon_pool,
            max_late,
            definition: lang::to_json(root),
        }),
        _ => Err(problems),
    }
}

fn parse_trigger(p: &mut P<'_>, n: &Node) -> Option<Trigger> {
    let entries = p.table(n, "`trigger`")?;
    let mut keys: BTreeMap<&str, &Node> = BTreeMap::new();
    for (k, v) in entries {
        keys.insert(k.as_str(), v);
    }
    let Some(ty) = keys.remove("type") else {
        p.at(&n.loc, "`trigger` needs a `type`, such as \"order_placed\"");
        return None;
    };
    let ty_name = p.str(ty, "type")?;
    // The keys each type takes; the rest are errors.
    let (allowed, required): (&[&str], &[&str]) = match ty_name.as_str() {
        "order_placed" => (&["nth", "statuses"], &[]),
        "order_status" => (&["to"], &["to"]),
        "delivery_date" => (&["offset"], &["offset"]),
        "cart_abandoned" => (&["after"], &["after"]),
        "registered" => (&["after", "no_order"], &["after"]),
        "inactive" => (&["since", "days"], &["since", "days"]),
        "birthday" => (&["offset"], &[]),
        "date_field" => (&["field", "offset", "yearly"], &["field"]),
        "signup" | "confirmed" => (&["list"], &[]),
        "back_in_stock" | "preorder_available" => (&[], &[]),
        "order_total" => (&["gte", "lifetime_sum_crosses"], &[]),
        "segment_entered" => (&["segment"], &["segment"]),
        "list_joined" => (&["list"], &["list"]),
        "tag_added" => (&["tag"], &["tag"]),
        "flow_completed" => (&["flow"], &["flow"]),
        other => {
            p.at(
                &ty.loc,
                format!(
                    "unknown trigger `{other}`; one of: order_placed, order_status, delivery_date, \
                     cart_abandoned, registered, inactive, birthday, date_field, signup, confirmed, \
                     back_in_stock, preorder_available, order_total, segment_entered, list_joined, \
                     tag_added, flow_completed"
                ),
            );
            return None;
        }
    };
    let before = p.problems.len();
    for (k, v) in &keys {
        if !allowed.contains(k) {
            p.at(
                &v.loc,
                format!(
                    "`{k}` is not a key of the `{ty_name}` trigger{}",
                    if allowed.is_empty() {
                        " (it takes none)".to_string()
                    } else {
                        format!(" (it takes: {})", allowed.join(", "))
                    }
                ),
            );
        }
    }
    for r in required {
        if !keys.contains_key(r) {
            p.at(&n.loc, format!("the `{ty_name}` trigger needs `{r}`"));
        }
    }
    if p.problems.len() > before {
        return None;
    }
    let days = |p: &mut P<'_>, k: &str| -> Option<i64> {
        match keys.get(k) {
            None => Some(0),
            Some(v) => p.delay(v, k, true).map(|ms| ms.div_euclid(86_400_000)),
        }
    };
    let list = |p: &mut P<'_>| keys.get("list").and_then(|v| p.str(v, "list"));
    Some(match ty_name.as_str() {
        "order_placed" => Trigger::OrderPlaced {
            nth: match keys.get("nth") {
                None => None,
                Some(v) if matches!(&v.v, NodeV::Str(s) if s == "any") => None,
                Some(v) => Some(p.int(v, "nth", 1, 1000)? as u32),
            },
            statuses: keys
                .get("statuses")
                .map(|v| p.strings(v, "statuses"))
                .unwrap_or_default()
                .into_iter()
                .map(|s| s.to_lowercase())
                .collect(),
        },
        "order_status" => Trigger::OrderStatus {
            to: p.str(keys["to"], "to")?.to_lowercase(),
        },
        "delivery_date" => Trigger::DeliveryDate {
            offset: p.delay(keys["offset"], "offset", true)?,
        },
        "cart_abandoned" => Trigger::CartAbandoned {
            after: p.delay(keys["after"], "after", false)?,
        },
        "registered" => Trigger::Registered {
            after: p.delay(keys["after"], "after", false)?,
            no_order: match keys.get("no_order") {
                Some(v) => p.bool(v, "no_order")?,
                None => false,
            },
        },
        "inactive" => Trigger::Inactive {
            since: match &keys["since"].v {
                NodeV::Str(s) if s == "login" => Since::Login,
                NodeV::Str(s) if s == "order" => Since::Order,
                _ => {
                    p.at(&keys["since"].loc, "`since` must be \"login\" or \"order\"");
                    return None;
                }
            },
            days: p.int(keys["days"], "days", 1, 3660)? as u32,
        },
        "birthday" => Trigger::Birthday {
            offset: days(p, "offset")?,
        },
        "date_field" => Trigger::DateField {
            field: p.str(keys["field"], "field")?,
            offset: days(p, "offset")?,
            yearly: match keys.get("yearly") {
                Some(v) => p.bool(v, "yearly")?,
                None => false,
            },
        },
        "signup" => Trigger::Signup { list: list(p) },
        "confirmed" => Trigger::Confirmed { list: list(p) },
        "back_in_stock" => Trigger::BackInStock,
        "preorder_available" => Trigger::PreorderAvailable,
        "order_total" => {
            let gte = match keys.get("gte") {
                Some(v) => Some(p.money(v, "gte")?),
                None => None,
            };
            let crosses = match keys.get("lifetime_sum_crosses") {
                Some(v) => Some(p.money(v, "lifetime_sum_crosses")?),
                None => None,
            };
            if gte.is_some() == crosses.is_some() {
                p.at(
                    &n.loc,
                    "the `order_total` trigger needs exactly one of `gte` and `lifetime_sum_crosses`",
                );
                return None;
            }
            Trigger::OrderTotal { gte, crosses }
        }
        "segment_entered" => Trigger::SegmentEntered {
            segment: p.str(keys["segment"], "segment")?,
        },
        "list_joined" => Trigger::ListJoined {
            list: p.str(keys["list"], "list")?,
        },
        "tag_added" => Trigger::TagAdded {
            tag: p.str(keys["tag"], "tag")?,
        },
        _ => Trigger::FlowCompleted {
            flow: p.str(keys["flow"], "flow")?,
        },
    })
}

fn parse_step(
    p: &mut P<'_>,
    n: &Node,
    kinds: &dyn Fn(&str) -> Option<crate::segment::Kind>,
) -> Option<Step> {
    let entries = p.table(n, "a step")?;
    let before = p.problems.len();
    let mut step = Step {
        after: 0,
        at: None,
        message: None,
        variants: Vec::new(),
        tags_add: Vec::new(),
        tags_remove: Vec::new(),
        exit_if: ExitIf::default(),
        coupon: false,
    };
    let mut message_keys = Vec::new();
    for (k, v) in entries {
        match k.as_str() {
            "after" => step.after = p.delay(v, k, false).unwrap_or(0),
            "at" => match &v.v {
                NodeV::Str(s) => match parse_clock(s) {
                    Ok(m) => step.at = Some(m),
                    Err(e) => p.at(&v.loc, format!("`at`: {e}")),
                },
                _ => p.at(&v.loc, "`at` must be a time such as \"09:00\""),
            },
            "template" | "sender" | "subject" | "data" | "products" | "sms" => {
                message_keys.push((k.clone(), v.clone()));
            }
            "variants" => match &v.v {
                NodeV::Array(items) => {
                    for item in items {
                        if let Some(var) = parse_variant(p, item, kinds) {
                            step.variants.push(var);
                        }
                    }
                }
                _ => p.at(
                    &v.loc,
                    "`variants` must be a list of [[steps.variants]] tables",
                ),
            },
            "tags_add" => step.tags_add = p.strings(v, k),
            "tags_remove" => step.tags_remove = p.strings(v, k),
            "exit_if" => {
                if let Some(e) = p.table(v, "`exit_if`") {
                    for (ek, ev) in e {
                        let b = p.bool(ev, ek).unwrap_or(false);
                        match ek.as_str() {
                            "ordered_since_trigger" => step.exit_if.ordered_since_trigger = b,
                            "cart_empty" => step.exit_if.cart_empty = b,
                            "opened_previous" => step.exit_if.opened_previous = b,
                            "clicked_previous" => step.exit_if.clicked_previous = b,
                            other => p.at(
                                &ev.loc,
                                format!(
                                    "unknown exit condition `{other}`; one of: ordered_since_trigger, \
                                     cart_empty, opened_previous, clicked_previous"
                                ),
                            ),
                        }
                    }
                }
            }
            "coupon" => step.coupon = p.bool(v, k).unwrap_or(false),
            other => p.at(
                &v.loc,
                format!("unknown key `{other}`; a step has: {STEP_KEYS}"),
            ),
        }
    }
    if !message_keys.is_empty() {
        step.message = parse_message(p, &n.loc, &message_keys);
    }
    if step.message.is_none() && step.variants.is_empty() && p.problems.len() == before {
        p.at(&n.loc, "a step needs a `template`, an `sms` or `variants`");
    }
    (p.problems.len() == before).then_some(step)
}

fn parse_variant(
    p: &mut P<'_>,
    n: &Node,
    kinds: &dyn Fn(&str) -> Option<crate::segment::Kind>,
) -> Option<Variant> {
    let entries = p.table(n, "a variant")?;
    let mut when = None;
    let mut message_keys = Vec::new();
    for (k, v) in entries {
        match k.as_str() {
            "when" => when = lang::parse_cond(v, kinds, p.problems),
            "template" | "sender" | "subject" | "data" | "products" | "sms" => {
                message_keys.push((k.clone(), v.clone()));
            }
            other => p.at(
                &v.loc,
                format!(
                    "unknown key `{other}`; a variant has: when, template, sender, subject, data, products, sms"
                ),
            ),
        }
    }
    let Some(when) = when else {
        p.at(&n.loc, "a variant needs `when`, a condition on the contact");
        return None;
    };
    let message = parse_message(p, &n.loc, &message_keys)?;
    Some(Variant { when, message })
}

fn parse_message(p: &mut P<'_>, at: &Loc, keys: &[(String, Node)]) -> Option<Message> {
    if let Some((_, sms)) = keys.iter().find(|(k, _)| k == "sms") {
        if let Some((k, v)) = keys
            .iter()
            .find(|(k, _)| k == "template" || k == "sender" || k == "subject")
        {
            p.at(
                &v.loc,
                format!("`{k}` is an e-mail's; a message with `sms` gives its template inside it: sms = {{ template = \"…\" }}"),
            );
            return None;
        }
        return parse_sms(p, sms, keys);
    }
    let mut m = Message::new(crate::contacts::model::Channel::Email);
    for (k, v) in keys {
        match k.as_str() {
            "template" => m.template = p.str(v, k)?,
            "sender" => m.sender = p.str(v, k),
            "subject" => m.subject = p.str(v, k),
            _ => data_or_products(p, k, v, &mut m),
        }
    }
    if m.template.is_empty() {
        p.at(at, "a message needs a `template`");
        return None;
    }
    Some(m)
}

/// `sms = { template = "…", gateway = "…" }`, with the step's `data` and
/// `products` beside it.
fn parse_sms(p: &mut P<'_>, sms: &Node, keys: &[(String, Node)]) -> Option<Message> {
    let entries = p.table(sms, "`sms`")?;
    let mut m = Message::new(crate::contacts::model::Channel::Sms);
    for (k, v) in entries {
        match k.as_str() {
            "template" => m.template = p.str(v, k)?,
            "gateway" => m.gateway = p.str(v, k),
            other => p.at(
                &v.loc,
                format!("unknown key `{other}`; `sms` has: template, gateway"),
            ),
        }
    }
    if m.template.is_empty() {
        p.at(&sms.loc, "`sms` needs a `template`");
        return None;
    }
    for (k, v) in keys.iter().filter(|(k, _)| k == "data" || k == "products") {
        data_or_products(p, k, v, &mut m);
    }
    Some(m)
}

/// A message's `data` (a table) or `products` ("trigger", "related" or
/// SKUs), whatever its channel.
fn data_or_products(p: &mut P<'_>, k: &str, v: &Node, m: &mut Message) {
    if k == "data" {
        if p.table(v, "`data`").is_some() {
            m.data = lang::to_json(v);
        }
        return;
    }
    m.products = match &v.v {
        NodeV::Str(s) if s == "trigger" => Products::Trigger,
        NodeV::Str(s) if s == "related" => Products::Related,
        NodeV::Array(_) => Products::Skus(p.strings(v, k)),
        _ => {
            p.at(
                &v.loc,
                "`products` must be \"trigger\", \"related\" or a list of SKUs",
            );
            Products::None
        }
    };
}

/// A flow, pool or tag name: 1-64 letters, digits, `-`, `_` or `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The lists and custom fields a flow names: (name, where) pairs for
/// refusing to delete them while it does.
pub fn references(f: &Flow) -> (Vec<String>, Vec<String>) {
    let (mut lists, mut fields) = (Vec::new(), Vec::new());
    match &f.trigger {
        Trigger::ListJoined { list } => lists.push(list.clone()),
        Trigger::Signup { list: Some(l) } | Trigger::Confirmed { list: Some(l) } => {
            lists.push(l.clone())
        }
        Trigger::DateField { field, .. } => fields.push(field.clone()),
        _ => {}
    }
    let mut conds: Vec<&Cond> = f.conditions.iter().collect();
    for s in &f.steps {
        conds.extend(s.variants.iter().map(|v| &v.when));
    }
    for c in conds {
        let (mut l, mut fl) = (Vec::new(), Vec::new());
        lang::references(c, &mut l, &mut fl);
        lists.extend(l.into_iter().map(|(n, _)| n));
        fields.extend(fl.into_iter().map(|(n, _)| n));
    }
    (lists, fields)
}

/// Names a flow uses that the store must know: lists (and custom fields in
/// its conditions), checked against the catalog.
pub fn check_catalog(f: &Flow, catalog: &Catalog) -> Vec<String> {
    let mut out = Vec::new();
    let mut lists: Vec<String> = Vec::new();
    match &f.trigger {
        Trigger::ListJoined { list } => lists.push(list.clone()),
        Trigger::Signup { list: Some(l) } | Trigger::Confirmed { list: Some(l) } => {
            lists.push(l.clone())
        }
        _ => {}
    }
    for l in lists {
        if !catalog.lists.contains_key(&l.to_lowercase()) {
            out.push(format!("trigger: no list named `{l}`"));
        }
    }
    let mut conds: Vec<&Cond> = f.conditions.iter().collect();
    for s in &f.steps {
        conds.extend(s.variants.iter().map(|v| &v.when));
    }
    for c in conds {
        for p in catalog.check(c) {
            out.push(p.message);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(text: &str) -> Result<Flow, Vec<Problem>> {
        let root = lang::from_toml(text)?;
        parse("f", &root, &["shop".into()])
    }

    #[test]
    fn a_cart_flow_parses() {
        let f = flow(
            r#"
reentry = "7 days"
[trigger]
type = "cart_abandoned"
after = "1h"
[[steps]]
template = "abandoned_cart"
products = "trigger"
exit_if = { ordered_since_trigger = true }
[[steps.variants]]
when = { field = "language", eq = "pl" }
template = "abandoned_cart"
subject = "Koszyk"
[[steps]]
after = "1 day"
at = "09:30"
template = "abandoned_cart"
"#,
        )
        .map_err(|p| format!("{p:?}"))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.trigger, Trigger::CartAbandoned { after: 3_600_000 });
        assert_eq!(f.reentry, Reentry::After(7 * 86_400_000));
        assert_eq!(f.steps.len(), 2);
        assert_eq!(f.steps[1].at, Some(9 * 60 + 30));
        assert_eq!(f.steps[0].variants.len(), 1);
        assert!(f.steps[0].exit_if.ordered_since_trigger);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let Err(problems) = flow(
            r#"
colour = "red"
[trigger]
type = "birthday"
after = "1h"
[[steps]]
after = "soon"
at = "25:00"
"#,
        ) else {
            panic!("accepted");
        };
        let lines: Vec<_> = problems
            .iter()
            .map(|p| (p.loc.position.map(|x| x.0), p.message.clone()))
            .collect();
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == Some(2) && m.contains("colour")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == Some(5) && m.contains("after")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == Some(7) && m.contains("soon")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == Some(8) && m.contains("25:00")),
            "{lines:?}"
        );
    }

    #[test]
    fn delays_and_clocks() {
        assert_eq!(parse_delay("-2 days"), Ok(-2 * 86_400_000));
        assert_eq!(parse_delay("+3 days"), Ok(3 * 86_400_000));
        assert_eq!(parse_delay("0"), Ok(0));
        assert!(parse_delay("11 years").is_err());
        assert_eq!(parse_clock("09:00"), Ok(540));
        assert!(parse_clock("9").is_err());
        assert!(parse_clock("24:00").is_err());
    }
}
