//! Applying parsed events ([`super::wire::Event`]) inside the store writer's
//! transaction.
//!
//! An event accepted once is answered `duplicate` ever after and changes
//! nothing: its (`type`, `id`) is recorded with its effects, and forgotten
//! again if the event is rejected. Each event is checked against the stored
//! data (lists, field types, suppressed addresses) before anything of it is
//! written. Orders and carts keep the `at` of the version they hold, so an
//! update that arrives after a newer one is accepted but not applied.
//!
//! A rejection's reason is a `String` ([`Outcome::Rejected`]), as are the
//! inner errors of `contact_id` and `shop_field`: each is only a message
//! for the shop, and no caller tells them apart. A storage failure is a
//! [`StoreError`] and aborts the whole transaction.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::format::fmt_ms;
use super::model::{StatsDelta, WaitEntry};
use super::wire::{Body, Event, PLACED_AT_UNSET, Who};
use crate::contacts::model::{ConsentSource, ConsentState, FieldDef, FieldType};
use crate::contacts::{
    ConsentChange, ContactError, ContactUpdate, apply_upsert_salted, parse_json_value,
};
use crate::store::ReadTables as _;
use crate::store::{StoreError, WriteTables};

/// The custom fields a `customer` event fills: (event key, field name, type,
/// choices). Herald defines each field the first time an event sets it.
pub const SHOP_FIELDS: &[(&str, &str, FieldType, &[&str])] = &[
    ("customer_id", "customer_id", FieldType::Text, &[]),
    ("first_name", "first_name", FieldType::Text, &[]),
    ("last_name", "last_name", FieldType::Text, &[]),
    ("birthday", "birthday", FieldType::Date, &[]),
    ("registered_at", "registered_at", FieldType::Date, &[]),
    ("country", "country", FieldType::Text, &[]),
    ("city", "city", FieldType::Text, &[]),
    (
        "customer_type",
        "customer_type",
        FieldType::Choice,
        &["person", "company"],
    ),
    ("wholesale", "wholesale", FieldType::Boolean, &[]),
    ("affiliate", "affiliate", FieldType::Boolean, &[]),
    ("group", "customer_group", FieldType::Text, &[]),
];

/// What became of one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Stored (with a remark, e.g. that a newer version was already there).
    Accepted(Option<String>),
    /// Seen before; nothing changed.
    Duplicate,
    /// Not stored, and why.
    Rejected(String),
}

/// Applies a batch in order inside one write transaction. Each event is
/// checked against the stored data before anything of it is written, so a
/// rejected event leaves no trace; `Err` is a storage failure (the whole
/// transaction is then aborted and nothing was acknowledged).
pub fn apply_batch(
    t: &mut WriteTables<'_>,
    events: Vec<Event>,
    now: DateTime<Utc>,
    keys: &crate::track::AttributionRules,
) -> Result<Vec<(usize, Outcome)>, StoreError> {
    let salt = t.salt()?;
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        if !t.record_event(e.kind, &e.id)? {
            out.push((e.index, Outcome::Duplicate));
            continue;
        }
        let outcome = apply(t, &salt, e.at, e.body, now, keys)?;
        if let Outcome::Rejected(_) = outcome {
            t.forget_event(e.kind, &e.id)?;
        }
        out.push((e.index, outcome));
    }
    Ok(out)
}

/// The contact for an event's address, created (consent `unknown`) if new.
fn contact_id(
    t: &mut WriteTables<'_>,
    salt: &[u8],
    who: &Who,
    now: DateTime<Utc>,
) -> Result<Result<u64, String>, StoreError> {
    if let Some(id) = t.contact_id_by_email(&who.email.key)? {
        return Ok(Ok(id));
    }
    match apply_upsert_salted(t, salt, &who.email, ContactUpdate::default(), true, now)? {
        Ok((_, c)) => Ok(Ok(c.id)),
        Err(e) => Ok(Err(e.to_string())),
    }
}

fn apply(
    t: &mut WriteTables<'_>,
    salt: &[u8],
    at: i64,
    body: Body,
    now: DateTime<Utc>,
    keys: &crate::track::AttributionRules,
) -> Result<Outcome, StoreError> {
    macro_rules! contact {
        ($who:expr) => {
            match contact_id(t, salt, $who, now)? {
                Ok(id) => id,
                Err(reason) => return Ok(Outcome::Rejected(reason)),
            }
        };
    }
    match body {
        Body::Customer {
            who,
            fields,
            language,
            site,
            phone,
            sms_consent,
            tags,
        } => {
            let mut update = ContactUpdate {
                language,
                site,
                phone,
                sms_consent: sms_consent.map(|to| ConsentChange {
                    to,
                    source: ConsentSource::Api,
                    ip: None,
                    user_agent: None,
                    note: Some("customer event from the shop".into()),
                }),
                add_tags: tags,
                ..Default::default()
            };
            // Every value is checked before any new field definition is
            // written, so a rejected event leaves nothing behind.
            let mut new_defs = Vec::new();
            for (name, v) in fields {
                let def = match shop_field(t, &name, now)? {
                    Ok(Some((d, new))) => {
                        if new {
                            new_defs.push(d.clone());
                        }
                        d
                    }
                    Ok(None) => {
                        return Ok(Outcome::Rejected(
                            ContactError::UnknownField(name).to_string(),
                        ));
                    }
                    Err(reason) => return Ok(Outcome::Rejected(reason)),
                };
                let value = match v {
                    None => None,
                    Some(v) => match parse_json_value(&def, &normalise_shop_value(&name, v)) {
                        Ok(x) => Some(x),
                        Err(e) => return Ok(Outcome::Rejected(e.to_string())),
                    },
                };
                update.fields.insert(name, value);
            }
            for d in &new_defs {
                t.put_field(d)?;
            }
            // A shop that sends its checkbox with every customer update must
            // not have the rest refused once the person said STOP: the SMS
            // consent it may not change is left out, with a remark.
            let mut remark = None;
            if let Some(ch) = &update.sms_consent
                && let Some(id) = t.contact_id_by_email(&who.email.key)?
                && let Some(c) = t.contact(id)?
                && crate::contacts::check_transition(c.sms_consent, ch.to, ch.source).is_err()
            {
                remark = Some(format!(
                    "sms_consent left {}: only the person's own START reply gives it back",
                    c.sms_consent
                ));
                update.sms_consent = None;
            }
            match apply_upsert_salted(t, salt, &who.email, update, true, now)? {
                Ok(_) => Ok(Outcome::Accepted(remark)),
                Err(e) => Ok(Outcome::Rejected(e.to_string())),
            }
        }
        Body::Order { who, mut order } => {
            let contact = contact!(&who);
            order.contact = contact;
            let before = t.order(&order.order_id)?;
            if let Some(b) = &before
                && b.updated_at > order.updated_at
            {
                return Ok(Outcome::Accepted(Some(format!(
                    "not applied: the stored version of order {} is newer ({})",
                    order.order_id,
                    fmt_ms(b.updated_at)
                ))));
            }
            if order.placed_at == PLACED_AT_UNSET {
                order.placed_at = before.as_ref().map_or(order.updated_at, |b| b.placed_at);
            }
            for item in &mut order.items {
                if item.category.is_some() {
                    continue;
                }
                // An update that leaves the category out keeps the stored one.
                item.category = before
                    .as_ref()
                    .and_then(|b| b.items.iter().find(|x| x.sku == item.sku))
                    .and_then(|x| x.category.clone());
                if item.category.is_none()
                    && let Some(p) = t.product(&item.sku)?
                {
                    item.category = p.category;
                }
            }
            match &before {
                None => crate::track::attribute_order(t, &order, keys)?,
                Some(b) => crate::track::reattribute_order(t, b, &order)?,
            }
            t.put_order(&order, before.as_ref())?;
            match &before {
                None => {
                    let mut s = t.stats(contact)?.unwrap_or_default();
                    let delta = s.add_order(&order);
                    t.put_stats(contact, &s, delta)?;
                }
                Some(b) => {
                    recompute(t, contact, Some(&order.order_id))?;
                    if b.contact != contact {
                        recompute(t, b.contact, None)?;
                    }
                }
            }
            Ok(Outcome::Accepted(None))
        }
        Body::Cart { who, mut cart } => {
            let contact = contact!(&who);
            let before = t.cart(contact)?;
            if let Some(b) = &before
                && b.updated_at > cart.updated_at
            {
                return Ok(Outcome::Accepted(Some(format!(
                    "not applied: the stored cart is newer ({})",
                    fmt_ms(b.updated_at)
                ))));
            }
            for item in &mut cart.items {
                if item.category.is_none()
                    && let Some(p) = t.product(&item.sku)?
                {
                    item.category = p.category;
                }
            }
            // An emptied cart is kept (without items) so that its time
            // still orders later events: a delayed older cart stays out.
            t.put_cart(contact, cart, before)?;
            Ok(Outcome::Accepted(None))
        }
        Body::Product(p) => {
            t.put_product(&p)?;
            Ok(Outcome::Accepted(None))
        }
        Body::Waitlist {
            who,
            sku,
            kind,
            remove,
        } => {
            let contact = contact!(&who);
            if remove {
                t.delete_wait(&sku, contact)?;
            } else {
                t.put_wait(&sku, contact, &WaitEntry { kind, since: at })?;
            }
            Ok(Outcome::Accepted(None))
        }
        Body::Login { who } => {
            let contact = contact!(&who);
            let mut s = t.stats(contact)?.unwrap_or_default();
            s.last_login = Some(s.last_login.map_or(at, |l| l.max(at)));
            s.logins = s.logins.saturating_add(1);
            t.put_stats(contact, &s, StatsDelta::default())?;
            Ok(Outcome::Accepted(None))
        }
        Body::Signup {
            who,
            lists,
            consent,
            ip,
            user_agent,
            language,
            site,
        } => {
            let mut update = ContactUpdate {
                language: language.map(Some),
                site: site.map(Some),
                ..Default::default()
            };
            for name in &lists {
                match t.list_id_by_name(name)? {
                    Some(id) => {
                        update.add_lists.insert(id);
                    }
                    None => {
                        return Ok(Outcome::Rejected(format!(
                            "no list named `{name}` (create it with POST /api/v1/lists)"
                        )));
                    }
                }
            }
            let current = match t.contact_id_by_email(&who.email.key)? {
                Some(id) => t.contact(id)?.map(|c| c.consent),
                None => None,
            };
            // A signup never lowers consent that is already granted, and
            // never touches a contact who withdrew or is invalid: only their
            // own confirmation click brings them back (a `granted` claim is
            // refused by the consent rule, with its reason).
            let mut note = None;
            let gone = matches!(
                current,
                Some(ConsentState::Withdrawn | ConsentState::Invalid)
            );
            if gone && consent == ConsentState::Pending {
                note = Some(
                    "the contact withdrew consent or is invalid; consent left as it is \
                     (only their own confirmation can restore it)"
                        .to_string(),
                );
            } else if current != Some(ConsentState::Granted) {
                update.consent = Some(ConsentChange {
                    to: consent,
                    source: if consent == ConsentState::Granted {
                        ConsentSource::Api
                    } else {
                        ConsentSource::Form
                    },
                    ip,
                    user_agent,
                    note: Some("signup event from the shop".into()),
                });
            } else if consent == ConsentState::Pending {
                note = Some("consent already granted; left as it is".to_string());
            }
            let joined: Vec<u64> = update.add_lists.iter().copied().collect();
            match apply_upsert_salted(t, salt, &who.email, update, true, now)? {
                Ok((_, c)) => {
                    let confirmed = c.consent == ConsentState::Granted;
                    if joined.is_empty() {
                        t.note_signup(c.id, None, confirmed);
                    }
                    for l in joined {
                        t.note_signup(c.id, Some(l), confirmed);
                    }
                    Ok(Outcome::Accepted(note))
                }
                Err(e) => Ok(Outcome::Rejected(e.to_string())),
            }
        }
    }
}

/// Recomputes a contact's aggregates from their stored orders (`with`: an
/// order id that is theirs now, perhaps not yet in their list).
fn recompute(
    t: &mut WriteTables<'_>,
    contact: u64,
    with: Option<&String>,
) -> Result<(), StoreError> {
    let old = t.stats(contact)?.unwrap_or_default();
    let mut ids: Vec<String> = old.orders.clone();
    if let Some(id) = with
        && !ids.contains(id)
    {
        ids.push(id.clone());
    }
    let orders = t.orders_of(contact, &ids)?;
    let mut s = old.clone();
    s.recompute(&orders);
    let delta = StatsDelta::between(&old, &s);
    t.put_stats(contact, &s, delta)
}

/// Country codes are kept upper-case.
fn normalise_shop_value(field: &str, v: Value) -> Value {
    match (field, v) {
        ("country", Value::String(s)) => Value::String(s.trim().to_uppercase()),
        (_, v) => v,
    }
}

/// The definition of `name`, and whether it is a shop field that does not
/// exist yet (the caller writes it once the event passed its checks).
/// `Err`: it exists with another type than the shop's.
fn shop_field(
    t: &mut WriteTables<'_>,
    name: &str,
    now: DateTime<Utc>,
) -> Result<Result<Option<(FieldDef, bool)>, String>, StoreError> {
    let shop = SHOP_FIELDS.iter().find(|f| f.1 == name);
    if let Some(def) = t.field_cached(name)? {
        if let Some((_, _, ty, _)) = shop
            && def.field_type != *ty
        {
            return Ok(Err(format!(
                "field `{name}` is defined as {}, but customer events fill it with {} values; \
                 rename the existing field",
                def.field_type.as_str(),
                ty.as_str()
            )));
        }
        return Ok(Ok(Some((def.clone(), false))));
    }
    let Some((_, _, ty, choices)) = shop else {
        return Ok(Ok(None));
    };
    let def = FieldDef {
        name: name.to_string(),
        field_type: *ty,
        choices: choices.iter().map(|c| c.to_string()).collect(),
        label: None,
        created_at: now,
    };
    Ok(Ok(Some((def, true))))
}
