//! Admin UI: templates. The list (with load problems), one template with a
//! preview per language and site in a sandboxed iframe, the frame itself
//! (the rendered HTML under its own policy), and a test send.
//!
//! - `GET /admin/templates`
//! - `GET /admin/templates/{name}?lang=&site=&contact=`
//! - `GET /admin/templates/{name}/frame?lang=&site=&contact=`
//! - `POST /admin/templates/{name}/test` (`to`, `lang`, `site`, `contact`)

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::http::reply::{ApiError, Body};
use crate::http::ui::{Ctx, Form, Input, enc, error_page, redirect_with};

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "templates/list.html",
        include_str!("../templates/templates/list.html"),
    ),
    (
        "templates/one.html",
        include_str!("../templates/templates/one.html"),
    ),
];

/// Serves `/admin/templates…`.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    input: Input,
) -> Result<Response<Body>, ApiError> {
    match (rest, method, input) {
        (["templates"], &Method::GET | &Method::HEAD, _) => list(ctx).await,
        ([_, name], &Method::GET | &Method::HEAD, _) => one(ctx, name).await,
        ([_, name, "frame"], &Method::GET | &Method::HEAD, _) => frame(ctx, name).await,
        ([_, name, "test"], &Method::POST, Input::Form(form)) => test_send(ctx, name, &form).await,
        _ => Err(super::not_found(rest)),
    }
}

/// `/api/v1/templates/{name}…` with the name encoded.
fn api_path(name: &str, tail: &str) -> String {
    format!("/api/v1/templates/{}{tail}", enc(name))
}

async fn list(ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let v = ctx.get("/api/v1/templates").await?;
    Ok(ctx.page("templates/list.html", "templates", v))
}

/// The preview's choice: language, site and contact from the query.
struct Choice {
    lang: Option<String>,
    site: Option<String>,
    contact: Option<String>,
}

impl Choice {
    fn of(ctx: &Ctx<'_>) -> Choice {
        let p = |k| ctx.param(k).map(str::to_string);
        Choice {
            lang: p("lang"),
            site: p("site"),
            contact: p("contact"),
        }
    }

    fn from_form(form: &Form) -> Choice {
        Choice {
            lang: form.text("lang"),
            site: form.text("site"),
            contact: form.text("contact"),
        }
    }

    /// `?lang=…&site=…&contact=…` (only what is set).
    fn query(&self) -> String {
        let parts: Vec<String> = [
            ("lang", &self.lang),
            ("site", &self.site),
            ("contact", &self.contact),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| format!("{k}={}", enc(v))))
        .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }

    /// The preview API's body for this choice.
    fn preview_body(&self) -> Value {
        let mut b = json!({});
        if let Some(l) = &self.lang {
            b["language"] = json!(l);
        }
        if let Some(s) = &self.site {
            b["site"] = json!(s);
        }
        if let Some(c) = &self.contact {
            b["contact"] = contact_ref(c);
        }
        b
    }
}

/// A contact reference as the API takes it: an id (digits) or an address.
fn contact_ref(c: &str) -> Value {
    match c.parse::<u64>() {
        Ok(id) => json!(id),
        Err(_) => json!(c),
    }
}

async fn one(ctx: &Ctx<'_>, name: &str) -> Result<Response<Body>, ApiError> {
    let choice = Choice::of(ctx);
    let t = match ctx.get(&api_path(name, "")).await {
        Ok(t) => t,
        // A folder that did not load: its problems, from the list.
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => {
            let all = ctx.get("/api/v1/templates").await?;
            let failed = all["templates"]
                .as_array()
                .and_then(|ts| ts.iter().find(|t| t["name"] == name).cloned())
                .ok_or(e)?;
            return Ok(ctx.page(
                "templates/one.html",
                "templates",
                json!({"t": failed, "name": name}),
            ));
        }
        Err(e) => return Err(e),
    };
    let preview = ctx
        .api(
            Method::POST,
            &api_path(name, "/preview"),
            Some(choice.preview_body()),
        )
        .await;
    let (preview, preview_error) = match preview {
        Ok(p) => (p, None),
        Err(e) if e.status == StatusCode::FORBIDDEN => return Err(e),
        Err(e) => (Value::Null, Some(e.message)),
    };
    let sites: Vec<Value> = std::iter::once(Value::Null)
        .chain(t["sites"].as_array().cloned().unwrap_or_default())
        .collect();
    let sample = serde_json::to_string_pretty(&t["sample"]).unwrap_or_default();
    Ok(ctx.page(
        "templates/one.html",
        "templates",
        json!({
            "t": t,
            "name": name,
            "sites": sites,
            "sample": if t["sample"].is_null() { Value::Null } else { json!(sample) },
            "lang": choice.lang,
            "site": choice.site,
            "contact": choice.contact,
            "queued": ctx.param("queued").filter(|q| q.bytes().all(|b| b.is_ascii_digit())),
            "preview": preview,
            "preview_error": preview_error,
            "frame": format!("/admin/templates/{}/frame{}", enc(name), choice.query()),
            "base": format!("/admin/templates/{}", enc(name)),
        }),
    ))
}

/// The rendered HTML body alone, under [`PREVIEW_CSP`] (no script, framed
/// only by this UI); the sandboxed iframe of the template page loads it.
async fn frame(ctx: &Ctx<'_>, name: &str) -> Result<Response<Body>, ApiError> {
    let choice = Choice::of(ctx);
    let r = ctx
        .api(
            Method::POST,
            &api_path(name, "/preview"),
            Some(choice.preview_body()),
        )
        .await;
    let (status, html) = match r {
        Ok(p) => (
            StatusCode::OK,
            p["html"].as_str().unwrap_or_default().to_string(),
        ),
        Err(e) if e.status == StatusCode::FORBIDDEN => return Ok(error_page(&e)),
        Err(e) => (
            e.status,
            format!(
                "<!doctype html><meta charset=\"utf-8\"><p>This preview failed: {}</p>",
                html_escape::encode_text(&e.message)
            ),
        ),
    };
    Ok(crate::http::ui::preview_frame(status, html))
}

/// The sample's `key` for `site` (its `sites.<site>` value first).
fn sample_value(sample: &Value, site: Option<&str>, key: &str) -> Option<Value> {
    site.and_then(|s| sample.get("sites")?.get(s)?.get(key))
        .or_else(|| sample.get(key))
        .filter(|v| !v.is_null())
        .cloned()
}

/// Sends the template to one contact (`to`, else `contact`) through
/// `POST /api/v1/messages`, with the sample's order, cart and data, in
/// the language chosen; back to the template page with the queue id.
async fn test_send(ctx: &Ctx<'_>, name: &str, form: &Form) -> Result<Response<Body>, ApiError> {
    let choice = Choice::from_form(form);
    let back = format!("/admin/templates/{}{}", enc(name), choice.query());
    let Some(to) = form.text("to").or_else(|| choice.contact.clone()) else {
        return Ok(redirect_with(
            &back,
            "problem",
            "Give the address (or id) of the contact to send the test to.",
        ));
    };
    let t = ctx.get(&api_path(name, "")).await?;
    let mut body = json!({"template": name, "to": [to]});
    if let Some(l) = &choice.lang {
        body["language"] = json!(l);
    }
    for key in ["order", "cart", "data"] {
        if let Some(v) = sample_value(&t["sample"], choice.site.as_deref(), key) {
            body[key] = v;
        }
    }
    match ctx.api(Method::POST, "/api/v1/messages", Some(body)).await {
        Ok(r) => Ok(redirect_with(
            &format!(
                "{back}{}queued={}",
                if back.contains('?') { '&' } else { '?' },
                r["id"]
            ),
            "notice",
            &format!(
                "Test message queued for {to}: queue id {} (Message-ID {}).",
                r["id"],
                r["message_id"].as_str().unwrap_or_default()
            ),
        )),
        Err(e) if e.status == StatusCode::FORBIDDEN => Ok(error_page(&e)),
        Err(e) => Ok(redirect_with(&back, "problem", &e.message)),
    }
}
