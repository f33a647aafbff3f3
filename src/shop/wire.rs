//! The wire format of the shop's events (`POST /api/v1/events`) and its
//! checks: a request body becomes [`Event`]s ready for the writer, or
//! [`Malformed`] answers.
//!
//! A batch is a JSON array. Each element is parsed on its own ([`parse_batch`]),
//! so one malformed event is rejected with its reason while the rest land.
//! Every event carries `type`, `id` and `at`; (`type`, `id`) is its identity
//! (see [`super::apply`], which records it). Parsing reads nothing stored:
//! checks against the store (lists, existing fields, suppressed addresses)
//! happen when the event is applied.
//!
//! Errors here are `String`s on purpose: each one is only a reason, put into
//! [`Malformed::reason`] and shown to the shop in that event's `rejected`
//! answer (or, for [`parse_batch`]'s own `Err`, in the batch's 400 answer);
//! no caller tells them apart.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::format::fmt_ms;
use super::model::{Cart, Item, Order, WaitKind};
use super::product::{MAX_SKU_LEN, Product};
use crate::contacts::model::ConsentState;
use crate::contacts::{Email, check_code, check_tag, normalize_email};

/// `Order::placed_at` of an event that did not say (resolved when it is
/// applied: see [`super::apply`]).
pub(super) const PLACED_AT_UNSET: i64 = i64::MIN;

/// Largest number of events in one request.
pub const MAX_BATCH: usize = 50_000;

/// Longest event id.
const MAX_ID_LEN: usize = 200;

/// Event types, as named on the wire.
pub const TYPES: &[&str] = &[
    "customer", "order", "cart", "product", "waitlist", "login", "signup",
];

/// One event as parsed, ready for the writer.
#[derive(Debug, Clone)]
pub struct Event {
    /// Position in the request's array.
    pub index: usize,
    /// Type name (one of [`TYPES`]).
    pub kind: &'static str,
    /// The shop's id for the event.
    pub id: String,
    /// The event's time (ms).
    pub at: i64,
    /// What it says.
    pub body: Body,
}

/// Who an event is about.
#[derive(Debug, Clone)]
pub struct Who {
    /// The address (creates the contact if it does not exist).
    pub email: Email,
}

/// The type-specific part of an event, checked.
#[derive(Debug, Clone)]
pub enum Body {
    /// Contact attributes: field name → value (`None` clears), plus built-ins.
    Customer {
        /// Who.
        who: Who,
        /// Shop and custom fields to set or clear.
        fields: BTreeMap<String, Option<Value>>,
        /// New language (`Some(None)` clears).
        language: Option<Option<String>>,
        /// New site (`Some(None)` clears).
        site: Option<Option<String>>,
        /// New phone, E.164 (`Some(None)` clears).
        phone: Option<Option<String>>,
        /// New SMS consent (`granted` from a checkout checkbox…).
        sms_consent: Option<ConsentState>,
        /// Tags to add.
        tags: BTreeSet<String>,
    },
    /// A new or updated order.
    Order {
        /// Who placed it.
        who: Who,
        /// The order (contact id filled in by the writer).
        order: Box<Order>,
    },
    /// The current cart (empty: cleared).
    Cart {
        /// Whose.
        who: Who,
        /// Lines, currency, link.
        cart: Cart,
    },
    /// A product upsert.
    Product(Box<Product>),
    /// A wait-list entry added or removed.
    Waitlist {
        /// Who waits.
        who: Who,
        /// For which SKU.
        sku: String,
        /// Back in stock or pre-order.
        kind: WaitKind,
        /// Remove instead of add.
        remove: bool,
    },
    /// A login.
    Login {
        /// Who.
        who: Who,
    },
    /// A newsletter signup on the shop.
    Signup {
        /// Who.
        who: Who,
        /// Lists (by name) to join.
        lists: Vec<String>,
        /// `pending` (confirmation needed) or `granted` (the shop confirmed).
        consent: ConsentState,
        /// The subscriber's IP, for the consent log.
        ip: Option<String>,
        /// The subscriber's user agent.
        user_agent: Option<String>,
        /// Language to set.
        language: Option<String>,
        /// Site to set.
        site: Option<String>,
    },
}

/// An event that could not even be parsed: its position, whatever of its
/// type and id could be read, and the reason.
#[derive(Debug, Clone)]
pub struct Malformed {
    /// Position in the array.
    pub index: usize,
    /// `type`, if readable.
    pub kind: Option<String>,
    /// `id`, if readable.
    pub id: Option<String>,
    /// Why.
    pub reason: String,
}

/// How far ahead of the clock an event's time may be: shop clocks drift, but
/// an order "placed" next year is a bug, and would make every real update
/// of it look older (the newest `at` wins).
pub const MAX_FUTURE_MS: i64 = 86_400_000;

/// Checks that an event time `ms` (written `s` under `key`) lies within
/// [1970, `now_ms` + [`MAX_FUTURE_MS`]].
fn check_time(key: &str, s: &str, ms: i64, now_ms: i64) -> Result<i64, String> {
    if ms < 0 {
        return Err(format!("`{key}` {s:?} is before 1970"));
    }
    if ms > now_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(format!(
            "`{key}` {s:?} is more than a day in the future (Herald's clock reads {})",
            fmt_ms(now_ms)
        ));
    }
    Ok(ms)
}

/// What parsing events needs from the config: the site ids, and the
/// countries their national phone numbers are read in.
#[derive(Debug, Clone, Default)]
pub struct Sites {
    /// Every `[[site]]` id.
    pub ids: Vec<String>,
    /// Phone-number countries per site.
    pub countries: crate::sms::phone::Countries,
}

impl Sites {
    /// The sites of `config`.
    pub fn of(config: &crate::config::Config) -> Sites {
        Sites {
            ids: config.sites.iter().map(|s| s.id.clone()).collect(),
            countries: crate::sms::phone::Countries::of(config),
        }
    }
}

/// Parses a request body: a JSON array of events. `Err` only when the body
/// as a whole is unusable (not an array, too many events). Event times must
/// lie between 1970 and a day after `now`.
pub fn parse_batch(
    body: &[u8],
    sites: &Sites,
    now: DateTime<Utc>,
) -> Result<Vec<Result<Event, Malformed>>, String> {
    let raw: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the body must be a JSON array of events: {e} (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    if raw.len() > MAX_BATCH {
        return Err(format!(
            "{} events in one request; send at most {MAX_BATCH}",
            raw.len()
        ));
    }
    Ok(raw
        .iter()
        .enumerate()
        .map(|(index, r)| parse_one(index, r.get(), sites, now.timestamp_millis()))
        .collect())
}

/// The keys every event has, read first (other keys are skipped).
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    at: Option<Value>,
}

fn parse_one(index: usize, text: &str, sites: &Sites, now_ms: i64) -> Result<Event, Malformed> {
    let env: Envelope = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            return Err(Malformed {
                index,
                kind: None,
                id: None,
                reason: format!("an event must be a JSON object: {e}"),
            });
        }
    };
    let kind_s = env
        .kind
        .as_ref()
        .and_then(Value::as_str)
        .map(str::to_string);
    let id_s = env.id.as_ref().and_then(Value::as_str).map(str::to_string);
    let fail = |reason: String| Malformed {
        index,
        kind: kind_s.clone(),
        id: id_s.clone(),
        reason,
    };
    let kind = match env.kind {
        None => return Err(fail("`type` is missing".into())),
        Some(Value::String(s)) => match TYPES.iter().find(|t| **t == s) {
            Some(t) => *t,
            None => {
                return Err(fail(format!(
                    "unknown event type `{s}`; known: {}",
                    TYPES.join(", ")
                )));
            }
        },
        Some(v) => return Err(fail(format!("`type` must be a string, not {v}"))),
    };
    let id = match env.id {
        None => {
            return Err(fail(
                "`id` is missing (it makes re-sending harmless)".into(),
            ));
        }
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_ID_LEN => s,
        Some(Value::Number(n)) => n.to_string(),
        Some(v) => {
            return Err(fail(format!(
                "`id` must be a non-empty string of at most {MAX_ID_LEN} bytes, not {v}"
            )));
        }
    };
    let at = match env.at {
        None => return Err(fail("`at` is missing (an RFC 3339 timestamp)".into())),
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(&s) {
            Ok(t) => check_time("at", &s, t.with_timezone(&Utc).timestamp_millis(), now_ms)
                .map_err(&fail)?,
            Err(e) => {
                return Err(fail(format!(
                    "`at` {s:?} is not an RFC 3339 timestamp such as \"2026-11-24T10:00:00Z\": {e}"
                )));
            }
        },
        Some(v) => return Err(fail(format!("`at` must be a string, not {v}"))),
    };
    let body = parse_body(kind, text, at, now_ms, sites).map_err(fail)?;
    Ok(Event {
        index,
        kind,
        id,
        at,
        body,
    })
}

/// Deserializes an event's whole text into its type's wire struct (which
/// accepts the envelope keys and refuses unknown ones, naming them).
fn typed<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| {
        let m = e.to_string();
        // serde_json appends " at line L column C" of the event's own text,
        // which means nothing to the sender of a batch.
        match m.rfind(" at line ") {
            Some(i) => m[..i].to_string(),
            None => m,
        }
    })
}

fn email_of(v: Option<Value>) -> Result<Who, String> {
    match v {
        Some(Value::String(s)) => normalize_email(&s)
            .map(|email| Who { email })
            .map_err(|e| e.to_string()),
        Some(v) => Err(format!("`email` must be a string, not {v}")),
        None => Err("`email` is missing: it names the customer".into()),
    }
}

/// For `#[serde(default, deserialize_with = "present")]`: absent is `None`,
/// `null` is `Some(Value::Null)` (which clears a value).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn who(m: &mut Map<String, Value>) -> Result<Who, String> {
    email_of(m.remove("email"))
}

/// Deserializes what is left of an event into `T`, naming unknown keys.
fn rest<T: serde::de::DeserializeOwned>(m: Map<String, Value>) -> Result<T, String> {
    serde_json::from_value(Value::Object(m)).map_err(|e| e.to_string())
}

fn parse_body(kind: &str, text: &str, at: i64, now_ms: i64, sites: &Sites) -> Result<Body, String> {
    // The frequent kinds are read straight into their wire structs; the
    // others go through a map.
    let mut m: Map<String, Value> = match kind {
        "customer" | "order" | "cart" | "login" => Map::new(),
        _ => {
            let mut m: Map<String, Value> =
                serde_json::from_str(text).map_err(|e| e.to_string())?;
            m.remove("type");
            m.remove("id");
            m.remove("at");
            m
        }
    };
    match kind {
        "customer" => {
            let c: CustomerWire = typed(text)?;
            let who = email_of(c.email)?;
            let mut fields = BTreeMap::new();
            for (name, v) in [
                ("customer_id", c.customer_id),
                ("first_name", c.first_name),
                ("last_name", c.last_name),
                ("birthday", c.birthday),
                ("registered_at", c.registered_at),
                ("country", c.country),
                ("city", c.city),
                ("customer_type", c.customer_type),
                ("wholesale", c.wholesale),
                ("affiliate", c.affiliate),
                ("customer_group", c.group),
            ] {
                if let Some(v) = v {
                    fields.insert(name.to_string(), (!v.is_null()).then_some(v));
                }
            }
            let mut codes = Map::new();
            for (k, v) in [("language", c.language), ("site", c.site)] {
                if let Some(v) = v {
                    codes.insert(k.to_string(), v);
                }
            }
            let language = take_code(&mut codes, "language")?;
            let site = take_code(&mut codes, "site")?;
            if let Some(Some(s)) = &site {
                check_site(s, sites)?;
            }
            let phone = match c.phone {
                None => None,
                Some(Value::Null) => Some(None),
                Some(Value::String(raw)) if raw.trim().is_empty() => Some(None),
                Some(Value::String(raw)) => {
                    let country = sites.countries.of_site(site.clone().flatten().as_deref());
                    Some(Some(
                        crate::sms::phone::normalize(&raw, country)
                            .map_err(|e| format!("phone: {e}"))?,
                    ))
                }
                Some(v) => return Err(format!("`phone` must be a string, not {v}")),
            };
            let sms_consent = match c.sms_consent {
                None => None,
                Some(s) => Some(ConsentState::parse(&s).ok_or_else(|| {
                    format!("sms_consent `{s}` is not one of: unknown, pending, granted, withdrawn, invalid")
                })?),
            };
            for (k, v) in c.fields {
                if fields.contains_key(&k) {
                    return Err(format!(
                        "field `{k}` is given twice (as a customer key and in `fields`)"
                    ));
                }
                fields.insert(k, (!v.is_null()).then_some(v));
            }
            let tags = c
                .tags
                .iter()
                .map(|t| check_tag(t).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            Ok(Body::Customer {
                who,
                fields,
                language,
                site,
                phone,
                sms_consent,
                tags,
            })
        }
        "order" => {
            let mut o: OrderWire = typed(text)?;
            let who = email_of(o.email.take())?;
            let order = o.check(at, now_ms)?;
            Ok(Body::Order {
                who,
                order: Box::new(order),
            })
        }
        "cart" => {
            let c: CartWire = typed(text)?;
            let who = email_of(c.email)?;
            let items = c
                .items
                .into_iter()
                .enumerate()
                .map(|(i, it)| it.check(i, false))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(cur) = &c.currency {
                check_currency(cur)?;
            }
            if let Some(u) = &c.url {
                check_url("url", u)?;
            }
            Ok(Body::Cart {
                who,
                cart: Cart {
                    items,
                    currency: c.currency,
                    url: c.url,
                    updated_at: at,
                },
            })
        }
        "product" => {
            let p: Product = rest(m)?;
            p.check()?;
            Ok(Body::Product(Box::new(p)))
        }
        "waitlist" => {
            let who = who(&mut m)?;
            let w: WaitWire = rest(m)?;
            check_sku("sku", &w.sku)?;
            Ok(Body::Waitlist {
                who,
                sku: w.sku,
                kind: w.kind.unwrap_or(WaitKind::BackInStock),
                remove: w.remove,
            })
        }
        "login" => {
            let l: LoginWire = typed(text)?;
            Ok(Body::Login {
                who: email_of(l.email)?,
            })
        }
        "signup" => {
            let who = who(&mut m)?;
            let s: SignupWire = rest(m)?;
            let consent = match s.consent.as_deref() {
                None | Some("pending") => ConsentState::Pending,
                Some("granted") => ConsentState::Granted,
                Some(x) => {
                    return Err(format!(
                        "`consent` must be \"pending\" (Herald asks for confirmation) or \
                         \"granted\" (the shop confirmed the address), not {x:?}"
                    ));
                }
            };
            let mut lists = s.lists;
            lists.extend(s.list);
            let language = s
                .language
                .map(|l| check_code("language", &l).map_err(|e| e.to_string()))
                .transpose()?;
            let site = s
                .site
                .map(|l| check_code("site", &l).map_err(|e| e.to_string()))
                .transpose()?;
            if let Some(s) = &site {
                check_site(s, sites)?;
            }
            Ok(Body::Signup {
                who,
                lists,
                consent,
                ip: s.ip,
                user_agent: s.user_agent,
                language,
                site,
            })
        }
        other => Err(format!("unknown event type `{other}`")),
    }
}

fn take_code(m: &mut Map<String, Value>, key: &str) -> Result<Option<Option<String>>, String> {
    match m.remove(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => check_code(key, &s)
            .map(|c| Some(Some(c)))
            .map_err(|e| e.to_string()),
        Some(v) => Err(format!("`{key}` must be a string, not {v}")),
    }
}

fn check_site(s: &str, sites: &Sites) -> Result<(), String> {
    if sites.ids.is_empty() || sites.ids.iter().any(|x| x == s) {
        Ok(())
    } else {
        Err(format!(
            "site `{s}` is not configured (known: {})",
            sites.ids.join(", ")
        ))
    }
}

fn check_sku(key: &str, s: &str) -> Result<(), String> {
    if s.trim().is_empty() || s.len() > MAX_SKU_LEN || s.trim() != s {
        return Err(format!(
            "`{key}` must be 1-{MAX_SKU_LEN} characters without surrounding spaces, not {s:?}"
        ));
    }
    Ok(())
}

fn check_currency(c: &str) -> Result<(), String> {
    if crate::config::is_currency(c) {
        Ok(())
    } else {
        Err(format!(
            "`currency` must be an ISO 4217 code such as \"PLN\", not {c:?}"
        ))
    }
}

fn check_url(key: &str, u: &str) -> Result<(), String> {
    match url::Url::parse(u) {
        Ok(x) if x.scheme() == "http" || x.scheme() == "https" => Ok(()),
        _ => Err(format!("`{key}` must be an http(s) URL, not {u:?}")),
    }
}

/// A money amount in hundredths, from a decimal string (`"1299.50"`) or a
/// JSON number. At most four decimals (rounded to two).
pub fn parse_money(key: &str, v: &Value) -> Result<i64, String> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        other => return Err(format!("`{key}` must be a decimal amount, not {other}")),
    };
    let bad =
        || format!("`{key}` must be a non-negative decimal amount such as \"19.99\", not {s:?}");
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    if int.is_empty()
        || int.len() > 15
        || frac.len() > 4
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let int: i64 = int.parse().map_err(|_| bad())?;
    let mut f = format!("{frac:0<4}");
    f.truncate(4);
    let f: i64 = f.parse().map_err(|_| bad())?;
    Ok(int * 100 + (f + 50) / 100)
}

/// Declares a wire struct that also accepts the envelope keys (`type`,
/// `id`, `at`: already read) and `email`, and refuses unknown keys.
macro_rules! wire {
    ($name:ident { $($body:tt)* }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            #[serde(rename = "type", default)]
            _type: Option<serde::de::IgnoredAny>,
            #[serde(rename = "id", default)]
            _id: Option<serde::de::IgnoredAny>,
            #[serde(rename = "at", default)]
            _at: Option<serde::de::IgnoredAny>,
            #[serde(default)]
            email: Option<Value>,
            $($body)*
        }
    };
}

wire!(CustomerWire {
    #[serde(default, deserialize_with = "present")]
    customer_id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    first_name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    last_name: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    phone: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    birthday: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    registered_at: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    country: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    city: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    customer_type: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    wholesale: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    affiliate: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    group: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    language: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    site: Option<Value>,
    /// SMS consent state.
    #[serde(default)]
    sms_consent: Option<String>,
    /// Other custom fields by name.
    #[serde(default)]
    fields: BTreeMap<String, Value>,
    /// Tags to add.
    #[serde(default)]
    tags: Vec<String>,
});

wire!(LoginWire {});

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemWire {
    sku: String,
    quantity: u32,
    #[serde(default)]
    price: Option<Value>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl ItemWire {
    fn check(self, i: usize, price_required: bool) -> Result<Item, String> {
        let at = |m: String| format!("items[{i}]: {m}");
        check_sku("sku", &self.sku).map_err(at)?;
        if self.quantity == 0 {
            return Err(at("`quantity` must be at least 1".into()));
        }
        let price = match &self.price {
            Some(v) => parse_money("price", v).map_err(at)?,
            None if price_required => return Err(at("`price` is missing".into())),
            None => 0,
        };
        let category = match self.category {
            Some(c) if c.trim().is_empty() => {
                return Err(at("`category` must not be empty".into()));
            }
            c => c.map(|c| c.trim().to_string()),
        };
        Ok(Item {
            sku: self.sku,
            quantity: self.quantity,
            price,
            category,
            name: self.name,
        })
    }
}

wire!(OrderWire {
    order_id: Value,
    #[serde(default)]
    placed_at: Option<String>,
    items: Vec<ItemWire>,
    total: Value,
    currency: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    payment_type: Option<String>,
    #[serde(default)]
    delivery_date: Option<String>,
    #[serde(default)]
    attribution: Option<String>,
});

impl OrderWire {
    fn check(self, at: i64, now_ms: i64) -> Result<Order, String> {
        let order_id = match self.order_id {
            Value::String(s) if !s.trim().is_empty() && s.len() <= MAX_ID_LEN => s,
            Value::Number(n) => n.to_string(),
            v => {
                return Err(format!(
                    "`order_id` must be a non-empty string of at most {MAX_ID_LEN} bytes, not {v}"
                ));
            }
        };
        // Without `placed_at`: the event's time for a new order; an update
        // keeps the stored order's (see `super::apply`), marked here by
        // `PLACED_AT_UNSET`.
        let placed_at = match &self.placed_at {
            None => PLACED_AT_UNSET,
            Some(s) => check_time(
                "placed_at",
                s,
                DateTime::parse_from_rfc3339(s)
                    .map_err(|e| format!("`placed_at` {s:?} is not an RFC 3339 timestamp: {e}"))?
                    .timestamp_millis(),
                now_ms,
            )?,
        };
        if self.items.is_empty() {
            return Err("`items` must list at least one item".into());
        }
        let items = self
            .items
            .into_iter()
            .enumerate()
            .map(|(i, it)| it.check(i, true))
            .collect::<Result<Vec<_>, _>>()?;
        let total = parse_money("total", &self.total)?;
        check_currency(&self.currency)?;
        let delivery_date = self
            .delivery_date
            .map(|d| {
                NaiveDate::parse_from_str(&d, "%Y-%m-%d")
                    .map_err(|_| format!("`delivery_date` {d:?} is not a date YYYY-MM-DD"))
            })
            .transpose()?;
        let lower = |k: &str, v: Option<String>| -> Result<Option<String>, String> {
            match v {
                Some(s) if s.trim().is_empty() || s.len() > 64 => {
                    Err(format!("`{k}` must be 1-64 characters"))
                }
                v => Ok(v.map(|s| s.trim().to_lowercase())),
            }
        };
        Ok(Order {
            order_id,
            contact: 0,
            placed_at,
            updated_at: at,
            items,
            total,
            currency: self.currency,
            status: lower("status", self.status)?.unwrap_or_else(|| "placed".into()),
            payment_type: lower("payment_type", self.payment_type)?,
            delivery_date,
            attribution: self.attribution,
        })
    }
}

wire!(CartWire {
    items: Vec<ItemWire>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    url: Option<String>,
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitWire {
    sku: String,
    #[serde(default)]
    kind: Option<WaitKind>,
    #[serde(default)]
    remove: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupWire {
    #[serde(default)]
    list: Option<String>,
    #[serde(default)]
    lists: Vec<String>,
    #[serde(default)]
    consent: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    site: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_parses_to_hundredths() {
        let ok = |v: Value| parse_money("total", &v);
        assert_eq!(ok(Value::from("1299.50")), Ok(129_950));
        assert_eq!(ok(Value::from("7")), Ok(700));
        assert_eq!(ok(serde_json::json!(19.99)), Ok(1999));
        assert_eq!(ok(Value::from("0.125")), Ok(13));
        assert!(ok(Value::from("-1")).is_err());
        assert!(ok(Value::from("1,5")).is_err());
        assert!(ok(Value::from("")).is_err());
        assert!(ok(Value::Bool(true)).is_err());
    }

    #[test]
    fn one_bad_event_does_not_spoil_the_batch() -> Result<(), String> {
        let body = br#"[
            {"type":"login","id":"1","at":"2026-11-24T10:00:00Z","email":"a@example.com"},
            {"type":"login","id":"2","at":"yesterday","email":"a@example.com"},
            {"type":"teleport","id":"3","at":"2026-11-24T10:00:00Z"},
            {"type":"order","id":"4","at":"2026-11-24T10:00:00Z","email":"a@example.com",
             "order_id":"A1","items":[],"total":"1","currency":"PLN"},
            {"type":"cart","id":"5","at":"2026-11-24T10:00:00Z","email":"a@example.com","items":[],"colour":"red"},
            42
        ]"#;
        let parsed = parse_batch(body, &Sites::default(), Utc::now())?;
        assert!(parsed[0].is_ok());
        let reasons: Vec<String> = parsed[1..]
            .iter()
            .map(|r| {
                r.as_ref()
                    .err()
                    .map(|m| m.reason.clone())
                    .unwrap_or_default()
            })
            .collect();
        assert!(reasons[0].contains("RFC 3339"), "{reasons:?}");
        assert!(reasons[1].contains("unknown event type `teleport`"));
        assert!(reasons[2].contains("at least one item"));
        assert!(reasons[3].contains("unknown field `colour`"));
        assert!(reasons[4].contains("JSON object"));
        assert!(parse_batch(b"{}", &Sites::default(), Utc::now()).is_err());
        Ok(())
    }

    /// Event times outside [1970, now + 1 day] are refused, per event, with
    /// the reason; `placed_at` too.
    #[test]
    fn event_times_are_bounded() -> Result<(), String> {
        let now = DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .map_err(|e| e.to_string())?
            .with_timezone(&Utc);
        let order = |id: &str, at: &str, placed: &str| {
            format!(
                r#"{{"type":"order","id":"{id}","at":"{at}","email":"a@example.com","order_id":"A{id}",
                   "placed_at":"{placed}","items":[{{"sku":"S","quantity":1,"price":"1"}}],"total":"1","currency":"PLN"}}"#
            )
        };
        let body = format!(
            "[{},{},{},{},{}]",
            order("1", "2026-11-25T11:59:00Z", "2026-11-24T10:00:00Z"),
            order("2", "9999-12-31T23:59:59Z", "2026-11-24T10:00:00Z"),
            order("3", "1969-12-31T23:59:59Z", "2026-11-24T10:00:00Z"),
            order("4", "2026-11-24T10:00:00Z", "2027-01-01T00:00:00Z"),
            order("5", "2026-11-24T10:00:00Z", "1900-01-01T00:00:00Z"),
        );
        let parsed = parse_batch(body.as_bytes(), &Sites::default(), now)?;
        assert!(parsed[0].is_ok(), "{:?}", parsed[0]);
        let reason = |i: usize| {
            parsed[i]
                .as_ref()
                .err()
                .map(|m| m.reason.clone())
                .unwrap_or_default()
        };
        assert!(
            reason(1).contains("`at`") && reason(1).contains("future"),
            "{}",
            reason(1)
        );
        assert!(
            reason(2).contains("`at`") && reason(2).contains("1970"),
            "{}",
            reason(2)
        );
        assert!(reason(3).contains("`placed_at`") && reason(3).contains("future"));
        assert!(reason(4).contains("`placed_at`") && reason(4).contains("1970"));
        Ok(())
    }
}
