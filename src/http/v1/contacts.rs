//! `/api/v1/contacts`: upsert, get, list, update, consent, export, erase.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::http::reply::ReqBody;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::double_option;
use crate::contacts::model::{ConsentEvent, ConsentSource, ConsentState, Contact, FieldDef};
use crate::contacts::{
    self, ConsentChange, ContactError, ContactUpdate, UpsertOutcome, check_code, check_tag,
    normalize_email,
};
use crate::http::AppState;
use crate::http::reply::{self, ApiError, Body};
use crate::store::ReadTables as _;
use crate::store::{ContactIndex, ReadView, StoreError};

/// Body of `POST /api/v1/contacts` (create or update by address).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertBody {
    /// The address; the identity.
    pub email: String,
    /// Field values; `null` clears one.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
    /// Language code; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub language: Option<Option<String>>,
    /// Site; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub site: Option<Option<String>>,
    /// New consent state.
    #[serde(default)]
    pub consent: Option<String>,
    /// Note for the consent log.
    #[serde(default)]
    pub consent_note: Option<String>,
    /// Mobile phone (E.164, or national in the site's country); `null`
    /// clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub phone: Option<Option<String>>,
    /// New SMS consent state.
    #[serde(default)]
    pub sms_consent: Option<String>,
    /// Lists (by name) to add the contact to.
    #[serde(default)]
    pub lists: Vec<String>,
    /// Tags to add.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Body of `PATCH /api/v1/contacts/{ref}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// Field values; `null` clears one.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
    /// Language code; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub language: Option<Option<String>>,
    /// Site; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub site: Option<Option<String>>,
    /// Mobile phone; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub phone: Option<Option<String>>,
    /// Lists (by name) to add.
    #[serde(default)]
    pub add_lists: Vec<String>,
    /// Lists (by name) to leave.
    #[serde(default)]
    pub remove_lists: Vec<String>,
    /// Tags to add.
    #[serde(default)]
    pub add_tags: Vec<String>,
    /// Tags to remove.
    #[serde(default)]
    pub remove_tags: Vec<String>,
}

/// Body of `POST /api/v1/contacts/{ref}/consent`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentBody {
    /// The new state.
    pub state: String,
    /// Why (kept in the consent log).
    #[serde(default)]
    pub note: Option<String>,
    /// `email` (the default) or `sms`.
    #[serde(default)]
    pub channel: Option<String>,
}

/// A parsed `{ref}`: all digits is a contact id, anything else an address.
enum ContactRef {
    Id(u64),
    Email(contacts::Email),
}

impl ContactRef {
    fn parse(r: &str) -> Result<ContactRef, ApiError> {
        if super::all_digits(r) {
            return super::numeric_id(r)
                .map(ContactRef::Id)
                .ok_or_else(|| ApiError::not_found(format!("no contact with id {r}")));
        }
        Ok(ContactRef::Email(normalize_email(r)?))
    }

    /// The contact id it names: an id as given (the caller's own read or
    /// write reports a missing one), an address through the identity index.
    fn lookup(&self, v: &ReadView) -> Result<Option<u64>, StoreError> {
        match self {
            ContactRef::Id(id) => Ok(Some(*id)),
            ContactRef::Email(e) => v.contact_id_by_email(&e.key),
        }
    }
}

/// The contact `{ref}` names (id or address), or 404.
pub async fn load(state: &AppState, r: &str) -> Result<Contact, ApiError> {
    let parsed = ContactRef::parse(r)?;
    state
        .store
        .read(move |v| match parsed.lookup(v)? {
            Some(id) => v.contact(id),
            None => Ok(None),
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no contact `{r}`")))
}

/// Resolves `{ref}` to the id of an existing contact.
async fn resolve(state: &AppState, r: &str) -> Result<u64, ApiError> {
    let parsed = ContactRef::parse(r)?;
    state
        .store
        .read(move |v| parsed.lookup(v))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no contact `{r}`")))
}

/// The JSON view of a contact.
pub fn view(c: &Contact, list_names: &HashMap<u64, String>) -> Value {
    let fields: serde_json::Map<String, Value> = c
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    let lists: Vec<&str> = c
        .lists
        .iter()
        .filter_map(|l| list_names.get(l).map(String::as_str))
        .collect();
    json!({
        "id": c.id,
        "email": c.email,
        "consent": c.consent,
        "phone": c.phone,
        "sms_consent": c.sms_consent,
        "language": c.language,
        "site": c.site,
        "fields": fields,
        "lists": lists,
        "tags": c.tags,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    })
}

pub fn log_view(log: &[ConsentEvent]) -> Vec<Value> {
    log.iter().map(ConsentEvent::to_json).collect()
}

async fn list_names(state: &AppState) -> Result<HashMap<u64, String>, ApiError> {
    Ok(state
        .store
        .read(|r| r.lists())
        .await?
        .into_iter()
        .map(|l| (l.id, l.name))
        .collect())
}

/// Turns wire values into a checked [`ContactUpdate`]; list names and field
/// names are resolved against the store.
async fn build_update(
    state: &AppState,
    fields: BTreeMap<String, Value>,
    language: Option<Option<String>>,
    site: Option<Option<String>>,
    phone: Option<Option<String>>,
    lists: (Vec<String>, Vec<String>),
    tags: (Vec<String>, Vec<String>),
) -> Result<ContactUpdate, ApiError> {
    let (defs, all_lists) = state.store.read(|r| Ok((r.fields()?, r.lists()?))).await?;
    let defs: HashMap<String, FieldDef> = defs.into_iter().map(|f| (f.name.clone(), f)).collect();
    let by_name: HashMap<String, u64> = all_lists
        .into_iter()
        .map(|l| (l.name.to_lowercase(), l.id))
        .collect();
    let mut u = ContactUpdate::default();
    for (name, v) in fields {
        let def = defs
            .get(&name)
            .ok_or_else(|| ApiError::from(ContactError::UnknownField(name.clone())))?;
        let value = match v {
            Value::Null => None,
            v => Some(contacts::parse_json_value(def, &v)?),
        };
        u.fields.insert(name, value);
    }
    let code =
        |what: &str, v: Option<Option<String>>| -> Result<Option<Option<String>>, ApiError> {
            Ok(match v {
                Some(Some(s)) => Some(Some(check_code(what, &s)?)),
                other => other,
            })
        };
    u.language = code("language", language)?;
    u.site = code("site", site)?;
    u.phone = match phone {
        Some(Some(raw)) => {
            let config = state.config();
            let country = config.phone_country(u.site.clone().flatten().as_deref());
            Some(Some(crate::sms::phone::normalize(&raw, country).map_err(
                |e| ApiError::invalid("invalid_value", format!("phone: {e}")),
            )?))
        }
        other => other,
    };
    let list_id = |n: &String| {
        by_name
            .get(&n.to_lowercase())
            .copied()
            .ok_or_else(|| ApiError::from(ContactError::NotFound(format!("no list named `{n}`"))))
    };
    u.add_lists = lists.0.iter().map(list_id).collect::<Result<_, _>>()?;
    u.remove_lists = lists.1.iter().map(list_id).collect::<Result<_, _>>()?;
    u.add_tags = tags
        .0
        .iter()
        .map(|t| check_tag(t))
        .collect::<Result<_, _>>()?;
    u.remove_tags = tags
        .1
        .iter()
        .map(|t| check_tag(t))
        .collect::<Result<_, _>>()?;
    Ok(u)
}

fn parse_state(s: &str) -> Result<ConsentState, ApiError> {
    ConsentState::parse(s).ok_or_else(|| {
        ApiError::invalid(
            "invalid_value",
            format!("consent `{s}` is not one of: unknown, pending, granted, withdrawn, invalid"),
        )
    })
}

/// `POST /api/v1/contacts`: create or update by address. 201 when created.
pub async fn upsert(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let limit = state.config().http.max_body_bytes;
    let body: UpsertBody = reply::read_json(req, limit).await?;
    let email = normalize_email(&body.email)?;
    let mut update = build_update(
        state,
        body.fields,
        body.language,
        body.site,
        body.phone,
        (body.lists, vec![]),
        (body.tags, vec![]),
    )
    .await?;
    if let Some(s) = &body.consent {
        update.consent = Some(ConsentChange {
            to: parse_state(s)?,
            source: ConsentSource::Api,
            ip: None,
            user_agent: None,
            note: body.consent_note.clone(),
        });
    }
    if let Some(s) = &body.sms_consent {
        update.sms_consent = Some(ConsentChange {
            to: parse_state(s)?,
            source: ConsentSource::Api,
            ip: None,
            user_agent: None,
            note: body.consent_note.clone(),
        });
    }
    let now = state.clock.now();
    let (outcome, c) = state
        .store
        .write(move |t| contacts::apply_upsert(t, &email, update, true, now))
        .await??;
    let status = if outcome == UpsertOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let names = list_names(state).await?;
    Ok(reply::json_response(
        status,
        &json!({"outcome": outcome_name(outcome), "contact": view(&c, &names)}),
    ))
}

fn outcome_name(o: UpsertOutcome) -> &'static str {
    match o {
        UpsertOutcome::Created => "created",
        UpsertOutcome::Updated => "updated",
        UpsertOutcome::Unchanged => "unchanged",
    }
}

/// `GET /api/v1/contacts/{ref}`: one read transaction for lookup, contact and
/// list names.
pub async fn get(state: &Arc<AppState>, r: &str) -> Result<Response<Body>, ApiError> {
    let parsed = ContactRef::parse(r)?;
    let found = state
        .store
        .read(move |v| {
            let id = parsed.lookup(v)?;
            let Some(c) = id.map(|id| v.contact(id)).transpose()?.flatten() else {
                return Ok(None);
            };
            let names: HashMap<u64, String> =
                v.lists()?.into_iter().map(|l| (l.id, l.name)).collect();
            let mut out = view(&c, &names);
            // What the shop's events say about them (aggregates, cart).
            if let Some(s) = v.stats(c.id)? {
                out["shop"] = crate::shop::format::stats_json(&s);
            }
            if let Some(cart) = v.cart(c.id)?.filter(|c| !c.items.is_empty()) {
                out["shop"]["cart"] = serde_json::json!({
                    "items": cart.items.iter().map(|i| serde_json::json!({
                        "sku": i.sku, "quantity": i.quantity, "category": i.category,
                    })).collect::<Vec<_>>(),
                    "value": crate::shop::format::money_text(cart.value()),
                    "updated_at": crate::shop::format::fmt_ms(cart.updated_at),
                });
            }
            Ok(Some(out))
        })
        .await?;
    reply::ok(&found.ok_or_else(|| ApiError::not_found(format!("no contact `{r}`")))?)
}

/// `PATCH /api/v1/contacts/{ref}`
pub async fn update(
    state: &Arc<AppState>,
    r: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let id = resolve(state, r).await?;
    let limit = state.config().http.max_body_bytes;
    let body: UpdateBody = reply::read_json(req, limit).await?;
    let update = build_update(
        state,
        body.fields,
        body.language,
        body.site,
        body.phone,
        (body.add_lists, body.remove_lists),
        (body.add_tags, body.remove_tags),
    )
    .await?;
    let now = state.clock.now();
    let (outcome, c) = state
        .store
        .write(move |t| contacts::apply_update_by_id(t, id, update, now))
        .await??;
    let names = list_names(state).await?;
    reply::ok(&json!({"outcome": outcome_name(outcome), "contact": view(&c, &names)}))
}

/// `POST /api/v1/contacts/{ref}/consent`
pub async fn change_consent(
    state: &Arc<AppState>,
    r: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let id = resolve(state, r).await?;
    let limit = state.config().http.max_body_bytes;
    let body: ConsentBody = reply::read_json(req, limit).await?;
    let change = ConsentChange {
        to: parse_state(&body.state)?,
        source: ConsentSource::Api,
        ip: None,
        user_agent: None,
        note: body.note,
    };
    let update = match body.channel.as_deref().unwrap_or("email") {
        "email" => ContactUpdate {
            consent: Some(change),
            ..Default::default()
        },
        "sms" => ContactUpdate {
            sms_consent: Some(change),
            ..Default::default()
        },
        other => {
            return Err(ApiError::invalid(
                "invalid_value",
                format!("channel `{other}` is not one of: email, sms"),
            ));
        }
    };
    let now = state.clock.now();
    let (_, c) = state
        .store
        .write(move |t| contacts::apply_update_by_id(t, id, update, now))
        .await??;
    let log = state.store.read(move |v| v.consent_log(id)).await?;
    reply::ok(
        &json!({"id": c.id, "consent": c.consent, "sms_consent": c.sms_consent, "log": log_view(&log)}),
    )
}

/// `GET /api/v1/contacts/{ref}/consent`
pub async fn consent_log(state: &Arc<AppState>, r: &str) -> Result<Response<Body>, ApiError> {
    let id = resolve(state, r).await?;
    let (c, log) = state
        .store
        .read(move |v| Ok((v.contact(id)?, v.consent_log(id)?)))
        .await?;
    let c = c.ok_or_else(|| ApiError::not_found(format!("no contact with id {id}")))?;
    reply::ok(
        &json!({"id": c.id, "consent": c.consent, "sms_consent": c.sms_consent, "log": log_view(&log)}),
    )
}

/// `GET /api/v1/contacts/{ref}/export`: everything Herald holds about one
/// person (GDPR right of access), as one JSON download: the shape is in
/// README.md ("Export and erasure"). One read transaction, after the hit
/// journal is applied, so every answered open and click is in it.
pub async fn export(state: &Arc<AppState>, r: &str) -> Result<Response<Body>, ApiError> {
    let id = resolve(state, r).await?;
    state.hits.drain().await?;
    let now = state.clock.now();
    let doc = state
        .store
        .read(move |v| export_doc(v, id, now))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no contact with id {id}")))?;
    let mut resp = reply::json_response(StatusCode::OK, &doc);
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"contact-{id}.json\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// An instant (ms) in RFC 3339 with milliseconds, or null.
fn ms_json(ms: Option<i64>) -> Value {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        Some(t) => json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        None => Value::Null,
    }
}

/// The send a stored click reference names (`campaign:ID`…).
fn send_name(kind: u8, id: u64, slot: u32) -> Option<String> {
    crate::tokens::SendKind::from_code(kind).map(|k| {
        crate::track::source_of(&crate::tokens::SendRef {
            kind: k,
            id,
            variant: slot,
        })
    })
}

fn items_json(items: &[crate::shop::model::Item]) -> Vec<Value> {
    use crate::shop::format::money_text;
    items
        .iter()
        .map(|i| {
            json!({
                "sku": i.sku, "quantity": i.quantity, "price": money_text(i.price),
                "category": i.category, "name": i.name,
            })
        })
        .collect()
}

/// The GDPR export of contact `id` (`None`: no such contact). Every table
/// that holds something about the person is read here; a new table that
/// does belongs here too (and in `contacts::erase`).
fn export_doc(
    v: &ReadView,
    id: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Value>, StoreError> {
    use crate::shop::format::{fmt_ms, money_text, stats_json};
    let Some(c) = v.contact(id)? else {
        return Ok(None);
    };
    let names: HashMap<u64, String> = v.lists()?.into_iter().map(|l| (l.id, l.name)).collect();
    let stats = v.stats(id)?;
    let mut orders = Vec::new();
    for oid in stats.iter().flat_map(|s| &s.orders) {
        let Some(o) = v.order(oid)?.filter(|o| o.contact == id) else {
            continue;
        };
        let attributed = v.order_attribution(oid)?.map(|a| {
            json!({
                "send": send_name(a.kind, a.id, a.slot),
                "slot": a.slot, "link": a.link, "by": a.by,
            })
        });
        orders.push(json!({
            "order_id": o.order_id,
            "placed_at": fmt_ms(o.placed_at),
            "updated_at": fmt_ms(o.updated_at),
            "status": o.status,
            "total": money_text(o.total),
            "currency": o.currency,
            "payment_type": o.payment_type,
            "delivery_date": o.delivery_date,
            "items": items_json(&o.items),
            "attribution_parameter": o.attribution,
            "attributed_to": attributed,
        }));
    }
    let cart = v.cart(id)?.map(|cart| {
        json!({
            "items": items_json(&cart.items),
            "value": money_text(cart.value()),
            "currency": cart.currency,
            "url": cart.url,
            "updated_at": fmt_ms(cart.updated_at),
        })
    });
    let waitlists: Vec<Value> = v
        .waitlists_of(id)?
        .into_iter()
        .map(|(sku, w)| json!({"sku": sku, "kind": w.kind, "since": fmt_ms(w.since)}))
        .collect();
    let history: Vec<Value> = v
        .history(id, u64::MAX, usize::MAX)?
        .into_iter()
        .map(|(seq, e)| super::reports::history_json(seq, &e))
        .collect();
    let mut campaigns = Vec::new();
    for camp in crate::campaign::all(v)? {
        for stage in 0..=camp.stage() {
            let send = crate::send::SendRef {
                kind: crate::send::SendKind::Campaign,
                id: camp.id,
                variant: crate::send::model::slot(stage, 0),
            };
            let Some((slot, queue_id)) = v.sent(send, id)? else {
                continue;
            };
            let variant = crate::send::model::unslot(slot).1;
            let (flags, open, click) = v.engagement(send, id)?.unwrap_or_default();
            let flag = |f: u8| flags & f != 0;
            campaigns.push(json!({
                "campaign": camp.id,
                "name": camp.spec.name,
                "stage": stage,
                "variant": variant,
                "message": queue_id,
                "opened": flag(crate::send::model::OPENED),
                "clicked": flag(crate::send::model::CLICKED),
                "opened_by_machine": flag(crate::send::model::MACHINE_OPENED),
                "clicked_by_machine": flag(crate::send::model::MACHINE_CLICKED),
                "unsubscribed": flag(crate::send::model::UNSUBSCRIBED),
                "complained": flag(crate::send::model::COMPLAINED),
                "last_open": ms_json((open > 0).then_some(open)),
                "last_click": ms_json((click > 0).then_some(click)),
            }));
        }
    }
    // Automation runs (the automation's JSON: flow, occurrence, state,
    // steps sent, coupon).
    let mut automations = Vec::new();
    for key in v.runs_of(id)? {
        if let Some(run) = v.run::<Value>(key)? {
            automations.push(run);
        }
    }
    let last_click = v.last_click(id)?.map(|(kind, send, slot, link, at)| {
        json!({"send": send_name(kind, send, slot), "slot": slot, "link": link, "at": ms_json(Some(at))})
    });
    let address = c.email.to_lowercase();
    let key = crate::store::suppression_key(&v.salt()?, &address);
    let messages: Vec<Value> = v
        .messages_to(&key)?
        .into_iter()
        .map(|mut m| {
            // Only this person's part of a message to several recipients.
            m.recipients
                .retain(|r| r.address.to_lowercase() == address || r.contact == Some(id));
            super::queue::message_view(&m, &[])
        })
        .collect();
    let signups: Vec<Value> = v
        .signup_requests_of(id)?
        .into_iter()
        .map(|(n, r)| {
            json!({
                "request": n,
                "at": ms_json(Some(r.at)),
                "list": names.get(&r.list),
                "ip": r.ip,
                "user_agent": r.user_agent,
            })
        })
        .collect();
    Ok(Some(json!({
        "format": "herald-contact-export-1",
        "signup_requests": signups,
        "exported_at": now,
        "contact": view(&c, &names),
        "consent_log": log_view(&v.consent_log(id)?),
        "shop": {
            "aggregates": stats.as_ref().map(stats_json),
            "payment_types": stats.as_ref().map(|s| s.payment_types.clone()).unwrap_or_default(),
            "logins": stats.as_ref().map_or(0, |s| s.logins),
            "last_login": stats.as_ref().and_then(|s| s.last_login).map(fmt_ms),
            "orders": orders,
            "cart": cart,
            "waitlists": waitlists,
        },
        "history": history,
        "campaigns": campaigns,
        "automations": automations,
        "last_click": last_click,
        "messages": messages,
    })))
}

/// `DELETE /api/v1/contacts/{ref}`: GDPR erasure. The data and consent log are
/// removed; a salted hash of the address is kept so it cannot be re-imported.
pub async fn erase(state: &Arc<AppState>, r: &str) -> Result<Response<Body>, ApiError> {
    let id = resolve(state, r).await?;
    let now = state.clock.now();
    let c = state
        .store
        .write(move |t| contacts::erase(t, id, now))
        .await??;
    // The person's pending messages failed unsent: final outcomes.
    state.delivery.outcomes_changed();
    tracing::info!(
        contact = c.id,
        "contact erased on request; address suppressed"
    );
    reply::ok(&json!({"erased": c.id, "suppressed": true}))
}

/// The most contacts one page returns.
const MAX_PAGE: usize = 1000;

/// The most candidates one page looks at: a sparse filter returns a short
/// page with a cursor, not a timeout.
const MAX_SCAN: usize = 100_000;

/// What a contact listing keeps of the candidates it walks.
struct Filter {
    list: Option<u64>,
    tag: Option<String>,
    consent: Option<ConsentState>,
    prefix: Option<String>,
}

impl Filter {
    fn keep(&self, c: &Contact) -> bool {
        self.list.is_none_or(|l| c.lists.contains(&l))
            && self.tag.as_ref().is_none_or(|t| c.tags.contains(t))
            && self.consent.is_none_or(|s| c.consent == s)
            && self
                .prefix
                .as_ref()
                .is_none_or(|p| c.email.to_lowercase().starts_with(p.as_str()))
    }
}

/// Walks candidates (each with the cursor that resumes after it) and keeps
/// up to `limit` contacts that pass `filter`; the cursor to go on from when
/// there may be more.
fn collect_page(
    v: &ReadView,
    candidates: impl Iterator<Item = Result<(Value, u64), StoreError>>,
    filter: &Filter,
    limit: usize,
) -> Result<(Vec<Contact>, Option<Value>), StoreError> {
    let mut out = Vec::new();
    for (scanned, item) in candidates.enumerate() {
        let (cursor, id) = item?;
        if let Some(c) = v.contact(id)?
            && filter.keep(&c)
        {
            out.push(c);
            if out.len() == limit {
                return Ok((out, Some(cursor)));
            }
        }
        if scanned + 1 >= MAX_SCAN {
            return Ok((out, Some(cursor)));
        }
    }
    Ok((out, None))
}

/// The ids of one contact index after `after`, read in chunks.
fn index_ids<'a>(
    v: &'a ReadView,
    index: ContactIndex,
    mut after: u64,
) -> impl Iterator<Item = Result<(Value, u64), StoreError>> + 'a {
    let mut buf = Vec::new().into_iter();
    let mut done = false;
    std::iter::from_fn(move || {
        loop {
            if let Some(id) = buf.next() {
                after = id;
                return Some(Ok((json!(id), id)));
            }
            if done {
                return None;
            }
            match v.contact_ids(&index, after, 1000) {
                Ok(ids) => {
                    done = ids.len() < 1000;
                    buf = ids.into_iter();
                }
                Err(e) => return Some(Err(e)),
            }
        }
    })
}

/// The contacts whose address starts with `prefix`, in address order,
/// after the address key `after`, read in chunks.
fn prefix_ids<'a>(
    v: &'a ReadView,
    prefix: String,
    mut after: Option<String>,
) -> impl Iterator<Item = Result<(Value, u64), StoreError>> + 'a {
    let mut buf = Vec::new().into_iter();
    let mut done = false;
    std::iter::from_fn(move || {
        loop {
            if let Some((key, id)) = buf.next() {
                after = Some(key);
                return Some(Ok((json!(after), id)));
            }
            if done {
                return None;
            }
            match v.contact_ids_by_prefix(&prefix, after.as_deref(), 1000) {
                Ok(ids) => {
                    done = ids.len() < 1000;
                    buf = ids.into_iter();
                }
                Err(e) => return Some(Err(e)),
            }
        }
    })
}

/// A numeric `after` cursor (0 when absent).
fn after_id(after: Option<&str>) -> Result<u64, ApiError> {
    after.map_or(Ok(0), |a| {
        a.parse()
            .map_err(|_| ApiError::bad_request(format!("`after` {a:?} is not a contact id")))
    })
}

/// How many contacts match, when a kept counter says so without a scan:
/// every contact (the consent counts' sum), a list's members, a consent
/// state's contacts.
fn kept_total(v: &ReadView, f: &Filter) -> Result<Option<u64>, StoreError> {
    if f.tag.is_some() || f.prefix.is_some() {
        return Ok(None);
    }
    let counts = v.consent_counts()?;
    Ok(match (f.list, f.consent) {
        (Some(l), None) => v.list(l)?.map(|l| l.member_count),
        (None, Some(s)) => counts.iter().find(|(c, _)| *c == s).map(|(_, n)| *n),
        (None, None) => Some(counts.iter().map(|(_, n)| n).sum()),
        (Some(_), Some(_)) => None,
    })
}

/// `GET /api/v1/contacts?prefix=&list=&tag=&consent=&segment=&after=&limit=`
///
/// Walks one index and filters by the others: a segment's members (from the
/// segment index), addresses starting with `prefix` (the address index, in
/// address order: `after` and `next_after` are then an address), a list's
/// members, a tag's, a consent state's, or every contact (by id). `total`
/// is the number of matches when a kept counter gives it (null otherwise).
pub async fn list(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(
        &q,
        &[
            "list", "tag", "consent", "after", "limit", "email", "prefix", "segment",
        ],
    )?;
    if let Some(e) = reply::query_str(&q, "email") {
        return get(state, e).await;
    }
    let limit = reply::query_u64(&q, "limit")?
        .unwrap_or(100)
        .clamp(1, MAX_PAGE as u64) as usize;
    let after = reply::query_str(&q, "after").map(str::to_string);
    let consent = reply::query_str(&q, "consent")
        .map(parse_state)
        .transpose()?;
    let list = match reply::query_str(&q, "list") {
        None => None,
        Some(n) => {
            let n2 = n.to_string();
            Some(
                state
                    .store
                    .read(move |v| v.list_id_by_name(&n2))
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("no list named `{n}`")))?,
            )
        }
    };
    let filter = Filter {
        list,
        tag: reply::query_str(&q, "tag").map(str::to_string),
        consent,
        prefix: reply::query_str(&q, "prefix").map(str::to_lowercase),
    };
    let segment = match reply::query_str(&q, "segment") {
        Some(name) => Some(super::segments::evaluate(state, name).await?),
        None => None,
    };
    // An id, except when walking addresses by prefix.
    let by_address = segment.is_none() && filter.prefix.is_some();
    let from = if by_address {
        0
    } else {
        after_id(after.as_deref())?
    };
    let (page, next, total) = state
        .store
        .read(move |v| {
            if let Some(e) = segment {
                let only = filter.list.is_none()
                    && filter.tag.is_none()
                    && filter.consent.is_none()
                    && filter.prefix.is_none();
                let ids = e
                    .members
                    .iter()
                    .filter(|id| *id > from)
                    .map(|id| Ok((json!(id), id)));
                let (page, next) = collect_page(v, ids, &filter, limit)?;
                return Ok((page, next, only.then_some(e.count)));
            }
            let total = kept_total(v, &filter)?;
            let (page, next) = if let Some(p) = filter.prefix.clone() {
                collect_page(v, prefix_ids(v, p, after), &filter, limit)?
            } else {
                let index = match (&filter.list, &filter.tag, &filter.consent) {
                    (Some(l), _, _) => ContactIndex::List(*l),
                    (None, Some(t), _) => ContactIndex::Tag(t.clone()),
                    (None, None, Some(c)) => ContactIndex::Consent(*c),
                    _ => ContactIndex::All,
                };
                collect_page(v, index_ids(v, index, from), &filter, limit)?
            };
            Ok((page, next, total))
        })
        .await?;
    let names = list_names(state).await?;
    let contacts: Vec<Value> = page.iter().map(|c| view(c, &names)).collect();
    reply::ok(&json!({"contacts": contacts, "next_after": next, "total": total}))
}
