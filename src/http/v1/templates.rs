//! `/api/v1/templates`: the template folders as loaded (with their problems)
//! and previews rendered for a contact or the template's sample data.

use std::sync::Arc;

use crate::http::reply::ReqBody;
use http::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::ConfigError;
use crate::delivery::model::MailKind;
use crate::http::AppState;
use crate::http::reply::{self, ApiError, Body};
use crate::render::Template;
use crate::render::preview::{self, PreviewInput};
use crate::send::outbox::OutboxError;
use crate::shop::Product;
use crate::store::ReadTables as _;

fn problem(e: &ConfigError) -> Value {
    json!({
        "file": e.file.display().to_string(),
        "line": e.position.map(|p| p.0),
        "column": e.position.map(|p| p.1),
        "key": if e.key.is_empty() { Value::Null } else { json!(e.key) },
        "message": e.message,
    })
}

/// The names of the defined custom fields.
async fn defined_fields(state: &AppState) -> Result<Vec<String>, ApiError> {
    Ok(state
        .store
        .read(|v| v.fields())
        .await?
        .into_iter()
        .map(|f| f.name)
        .collect())
}

/// Problems only the store can reveal: `contact.X` where X is neither a
/// contact attribute nor one of the `defined` fields.
fn field_problems(t: &Template, defined: &[String]) -> Vec<Value> {
    t.contact_attrs
        .iter()
        .filter(|a| !crate::render::template::CONTACT_BUILTINS.contains(&a.as_str()))
        .filter(|a| !defined.contains(a))
        .map(|a| {
            json!({
                "file": t.dir.display().to_string(),
                "line": null, "column": null, "key": null,
                "message": format!("`contact.{a}` is not a defined field (create it with POST /api/v1/fields, or fix the name); it renders empty"),
            })
        })
        .collect()
}

fn template_view(t: &Template, defined: &[String]) -> Value {
    let sites: std::collections::BTreeSet<String> = t
        .variants
        .keys()
        .map(|(s, _)| s.clone())
        .filter(|s| !s.is_empty())
        .collect();
    let warnings = field_problems(t, defined);
    json!({
        "name": t.name,
        "status": "ok",
        "description": t.description,
        "kind": t.kind.as_str(),
        "sender": t.sender,
        "default_language": t.default_language,
        "languages": t.languages(),
        "sms_languages": t.sms.keys().map(|(_, l)| l.as_str()).collect::<std::collections::BTreeSet<_>>(),
        "sms_transliterate": t.sms_transliterate,
        "sites": sites,
        "tracking": t.tracking,
        "derived_text": t.variants.values().filter(|v| v.text_derived).map(|v| format!("{}/{}", v.site.as_deref().unwrap_or("-"), v.language)).collect::<Vec<_>>(),
        "has_sample": t.sample.is_some(),
        "problems": warnings,
    })
}

/// `GET /api/v1/templates`: every template folder, loaded or not.
pub async fn list(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let snap = state.snapshot();
    let defined = defined_fields(state).await?;
    let mut out: Vec<Value> = snap
        .templates
        .loaded
        .values()
        .map(|t| template_view(t, &defined))
        .collect();
    for (name, errors) in &snap.templates.failed {
        out.push(json!({
            "name": name,
            "status": "error",
            "problems": errors.iter().map(problem).collect::<Vec<_>>(),
        }));
    }
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    reply::ok(&json!({ "directory": snap.templates.dir.display().to_string(), "templates": out }))
}

fn find(state: &AppState, name: &str) -> Result<Arc<Template>, ApiError> {
    let snap = state.snapshot();
    if let Some(t) = snap.templates.get(name) {
        return Ok(t.clone());
    }
    if let Some(errors) = snap.templates.failed.get(name) {
        let first = errors.first().map(|e| e.to_string()).unwrap_or_default();
        return Err(ApiError::invalid(
            "template_not_loaded",
            format!(
                "template `{name}` did not load ({} problem(s)): {first}",
                errors.len()
            ),
        ));
    }
    Err(ApiError::not_found(format!("no template `{name}`")))
}

/// `GET /api/v1/templates/{name}`: the template and its sample data
/// (`sample.json`, or null).
pub async fn get(state: &Arc<AppState>, name: &str) -> Result<Response<Body>, ApiError> {
    let t = find(state, name)?;
    let mut view = template_view(&t, &defined_fields(state).await?);
    view["sample"] = t.sample.clone().unwrap_or(Value::Null);
    reply::ok(&view)
}

/// A contact reference in a body: id or address.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContactRefBody {
    /// Contact id.
    Id(u64),
    /// Address.
    Email(String),
}

impl ContactRefBody {
    /// As a path-style `{ref}`.
    pub fn as_ref_string(&self) -> String {
        match self {
            ContactRefBody::Id(i) => i.to_string(),
            ContactRefBody::Email(e) => e.clone(),
        }
    }
}

/// Body of `POST /api/v1/templates/{name}/preview`; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewBody {
    /// Render for this contact (id or address); default: the sample contact.
    pub contact: Option<ContactRefBody>,
    /// Language to render in.
    pub language: Option<String>,
    /// Site to render for.
    pub site: Option<String>,
    /// SKUs of featured products (from the catalogue).
    pub products: Option<Vec<String>>,
    /// Cart, order and data values (default: the sample's).
    pub cart: Option<Value>,
    /// The order.
    pub order: Option<Value>,
    /// `data` values.
    pub data: Option<Value>,
    /// Personal greeting (default true).
    pub personalize: Option<bool>,
    /// Rewrite links as a send would (default false: links stay readable).
    pub tracking: Option<bool>,
    /// Include the complete MIME message (default false).
    pub mime: Option<bool>,
    /// `email` (default) or `sms`: the text message, its encoding and parts.
    pub channel: Option<String>,
}

/// Looks up SKUs in the catalogue; unknown ones are a 422 naming them.
pub async fn products_by_sku(
    state: &AppState,
    skus: Vec<String>,
) -> Result<Vec<Product>, ApiError> {
    let found = state
        .store
        .read(move |v| {
            skus.iter()
                .map(|s| v.product(s).map(|p| (s.clone(), p)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let missing: Vec<&str> = found
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(s, _)| s.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::invalid(
            "unknown_product",
            format!(
                "no product with SKU {} in the catalogue",
                missing.join(", ")
            ),
        ));
    }
    Ok(found.into_iter().filter_map(|(_, p)| p).collect())
}

/// The SMS half of the preview endpoint: the text, its encoding, units,
/// parts and warnings.
async fn sms_preview(
    t: Arc<crate::render::template::Template>,
    name: &str,
    input: PreviewInput,
    mut warnings: Vec<Value>,
    config: Arc<crate::config::Config>,
    now: i64,
) -> Result<Response<Body>, ApiError> {
    let result = tokio::task::spawn_blocking(move || {
        preview::render_sms(t, &config, preview::preview_send(), input, now)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let p = result.map_err(|e| ApiError::invalid("render_failed", e))?;
    warnings.extend(p.warnings.into_iter().map(Value::String));
    reply::ok(&json!({
        "template": name,
        "channel": "sms",
        "text": p.text,
        "encoding": p.analysis.encoding.label(),
        "characters": p.analysis.characters,
        "units": p.analysis.units,
        "parts": p.analysis.parts,
        "per_part": p.analysis.per_part,
        "warnings": warnings,
    }))
}

/// `POST /api/v1/templates/{name}/preview`: subject, HTML and text rendered
/// for a contact or the sample data.
pub async fn preview(
    state: &Arc<AppState>,
    name: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let t = find(state, name)?;
    let limit = state.config().http.max_body_bytes;
    let has_body = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v != "0")
        || req.headers().contains_key(http::header::TRANSFER_ENCODING);
    let b: PreviewBody = if has_body {
        reply::read_json(req, limit).await?
    } else {
        PreviewBody::default()
    };
    if let Some(l) = &b.language
        && !crate::config::is_language(l)
    {
        return Err(ApiError::invalid(
            "invalid_language",
            format!("`{l}` is not a language code such as en or pt-BR"),
        ));
    }
    let contact = match &b.contact {
        Some(r) => Some(super::contacts::load(state, &r.as_ref_string()).await?),
        None => None,
    };
    let products = match b.products {
        Some(skus) => Some(products_by_sku(state, skus).await?),
        None => None,
    };
    let warnings = field_problems(&t, &defined_fields(state).await?);
    let config = state.config();
    let input = PreviewInput {
        contact,
        language: b.language,
        site: b.site,
        products,
        cart: b.cart,
        order: b.order,
        data: b.data,
        coupon: None,
        personalize: b.personalize.unwrap_or(true),
        tracking: b.tracking.unwrap_or(false),
    };
    let now = state.clock.now().timestamp_millis();
    match b.channel.as_deref() {
        None | Some("email") => {}
        Some("sms") => return sms_preview(t, name, input, warnings, config, now).await,
        Some(other) => {
            return Err(ApiError::invalid(
                "invalid_value",
                format!("channel `{other}` is not one of: email, sms"),
            ));
        }
    }
    let want_mime = b.mime.unwrap_or(false);
    let result = tokio::task::spawn_blocking(move || {
        preview::render(t, &config, preview::preview_send(), input, now)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let p = result.map_err(|e| ApiError::invalid("render_failed", e))?;
    let r = &p.rendered;
    let mut out = json!({
        "template": name,
        "language": r.language,
        "site": r.site,
        "subject": r.subject,
        "preheader": r.preheader,
        "html": r.html,
        "text": r.text,
        "message_id": r.message_id,
        "warnings": warnings,
    });
    if want_mime {
        out["mime"] = json!(String::from_utf8_lossy(&p.mime));
    }
    reply::ok(&out)
}

/// `POST /api/v1/messages` with `template`: renders the template for one
/// contact and queues it. Marketing templates reach only `granted` contacts;
/// transactional ones no contact that withdrew or whose address is
/// `invalid` ([`MailKind::allows`], checked again at delivery).
pub async fn send(
    state: &Arc<AppState>,
    b: super::queue::MessageBody,
) -> Result<Response<Body>, ApiError> {
    use crate::contacts::model::ConsentState;
    let name = b.template.clone().unwrap_or_default();
    let given_content = b.raw.is_some()
        || b.subject.is_some()
        || b.text.is_some()
        || b.html.is_some()
        || b.from.is_some()
        || b.to_header.is_some()
        || !b.headers.is_empty()
        || b.message_id.is_some();
    if given_content {
        return Err(ApiError::bad_request(
            "a template message takes to, language, order, cart, data and products; the template gives the content",
        ));
    }
    let t = find(state, &name)?;
    if let Some(s) = &b.sender
        && s != &t.sender
    {
        return Err(ApiError::invalid(
            "unknown_sender",
            format!(
                "template `{name}` sends as `{}`, not `{s}` (leave sender out)",
                t.sender
            ),
        ));
    }
    let [to] = b.to.as_slice() else {
        return Err(ApiError::bad_request(
            "a template message goes to exactly one contact: to = [\"address\"]",
        ));
    };
    let contact = super::contacts::load(state, to).await?;
    // Through the API a template is what its `kind` says (the signup's
    // confirmation exception is for the signup form's own mail).
    let kind = template_kind(&t);
    match contact.consent {
        ConsentState::Invalid => {
            return Err(ApiError::invalid(
                "invalid_address",
                format!("{} is marked invalid (it bounced)", contact.email),
            ));
        }
        c if !kind.allows(c) => {
            let needs = match kind {
                MailKind::Marketing => "marketing mail goes only to `granted` contacts",
                _ => "no mail goes to a contact that withdrew",
            };
            return Err(ApiError::invalid(
                "no_consent",
                format!(
                    "`{name}` is {} mail and {} has consent `{}`: {needs}",
                    t.kind.as_str(),
                    contact.email,
                    c.as_str()
                ),
            ));
        }
        _ => {}
    }
    if let Some(l) = &b.language
        && !crate::config::is_language(l)
    {
        return Err(ApiError::invalid(
            "invalid_language",
            format!("`{l}` is not a language code such as en or pt-BR"),
        ));
    }
    let products = match b.products {
        Some(skus) => Some(products_by_sku(state, skus).await?),
        None => None,
    };
    let mut contact = contact;
    if let Some(l) = b.language {
        contact.language = Some(l);
    }
    let recipient = crate::render::Recipient {
        contact: Arc::new(contact),
        cart: b.cart,
        order: b.order,
        data: b.data,
        products,
        coupon: None,
        occurrence: None,
    };
    let r = render_and_queue_as(state, &t, recipient, b.tag.as_deref(), kind).await?;
    super::queue::accepted(state, Ok(r))
}

/// The kind of mail a template's `kind` makes it.
fn template_kind(t: &Template) -> MailKind {
    match t.kind {
        crate::render::template::Kind::Marketing => MailKind::Marketing,
        crate::render::template::Kind::Transactional => MailKind::Transactional,
    }
}

/// Renders a template for one recipient and queues it as a message of the
/// transactional send of `tag` (default: the template's name), with the
/// kind of mail given: delivery checks the contact's consent against it
/// when it picks the message up. Returns the queue id and Message-ID.
async fn render_and_queue_as(
    state: &Arc<AppState>,
    t: &Arc<Template>,
    recipient: crate::render::Recipient,
    tag: Option<&str>,
    kind: MailKind,
) -> Result<(u64, String), ApiError> {
    use crate::send::outbox::{Context, queue_template};
    let snapshot = state.snapshot();
    let cx = Context {
        store: &state.store,
        snapshot: &snapshot,
        cache: &state.compiled,
        now: state.clock.now().timestamp_millis(),
    };
    let r = queue_template(cx, t, recipient, tag, kind)
        .await
        .map_err(outbox_error)?;
    state.delivery.notify();
    Ok(r)
}

/// The answer to a template message that was not queued: what the client
/// can fix is 422, the rest 500.
pub fn outbox_error(e: OutboxError) -> ApiError {
    match e {
        OutboxError::Render(m) => ApiError::invalid("render_failed", m),
        e @ (OutboxError::InvalidTag(_) | OutboxError::TagTaken(..)) => {
            ApiError::invalid("invalid_tag", e.to_string())
        }
        e @ OutboxError::UnknownSender(_) => ApiError::invalid("unknown_sender", e.to_string()),
        e @ OutboxError::NoConsent(_) => ApiError::invalid("no_consent", e.to_string()),
        OutboxError::Store(e) => e.into(),
        e @ (OutboxError::Sign(_) | OutboxError::Internal(_)) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        }
    }
}
