//! Admin UI: the delivery queue. Depth per destination domain, one
//! domain's messages, one message; retry and purge (the admin role).
//!
//! - `GET /admin/queue` (`?domain=` leads to the domain's page)
//! - `GET /admin/queue/domains/{domain}?after=`
//! - `GET /admin/queue/{id}`
//! - `POST /admin/queue/retry` (`id` or `domain`)
//! - `POST /admin/queue/purge` (`id` or `domain`, `reason`, `confirm`)

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::http::reply::{ApiError, Body};
use crate::http::ui::{Ctx, Form, Input, after, enc, error_page, redirect, redirect_with};
use crate::users::Role;

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "queue/status.html",
        include_str!("../templates/queue/status.html"),
    ),
    (
        "queue/domain.html",
        include_str!("../templates/queue/domain.html"),
    ),
    (
        "queue/message.html",
        include_str!("../templates/queue/message.html"),
    ),
];

/// Serves `/admin/queue…`.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    input: Input,
) -> Result<Response<Body>, ApiError> {
    match (rest, method, input) {
        (["queue"], &Method::GET | &Method::HEAD, _) => status(ctx).await,
        ([_, "domains", d], &Method::GET | &Method::HEAD, _) => domain(ctx, d).await,
        ([_, "retry"], &Method::POST, Input::Form(f)) => retry(ctx, &f).await,
        ([_, "purge"], &Method::POST, Input::Form(f)) => purge(ctx, &f).await,
        ([_, id], &Method::GET | &Method::HEAD, _) => message(ctx, id).await,
        _ => Err(super::not_found(rest)),
    }
}

async fn status(ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    if let Some(id) = ctx.param("id") {
        return Ok(redirect(&format!("/admin/queue/{}", enc(id))));
    }
    if let Some(d) = ctx.param("domain") {
        return Ok(redirect(&format!("/admin/queue/domains/{}", enc(d))));
    }
    let v = ctx.get("/api/v1/queue").await?;
    Ok(ctx.page("queue/status.html", "queue", v))
}

async fn domain(ctx: &Ctx<'_>, d: &str) -> Result<Response<Body>, ApiError> {
    let after = match ctx.param("after") {
        Some(a) => format!(
            "?after={}",
            a.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("`{a}` is not a queue id")))?
        ),
        None => String::new(),
    };
    let v = ctx
        .get(&format!("/api/v1/queue/domains/{}{after}", enc(d)))
        .await?;
    let mut v = v;
    v["base"] = json!(format!("/admin/queue/domains/{}", enc(d)));
    Ok(ctx.page("queue/domain.html", "queue", v))
}

async fn message(ctx: &Ctx<'_>, id: &str) -> Result<Response<Body>, ApiError> {
    let v = ctx.get(&format!("/api/v1/queue/{}", enc(id))).await?;
    let pending = v["recipients"].as_array().is_some_and(|rs| {
        rs.iter()
            .any(|r| matches!(r["state"].as_str(), Some("queued" | "deferred")))
    });
    let mut v = v;
    v["pending"] = json!(pending);
    Ok(ctx.page("queue/message.html", "queue", v))
}

/// The form's selection (`id` or `domain`) as the API's body, and the
/// page to go back to.
fn selection(form: &Form) -> Result<(Value, String), String> {
    match (form.text("id"), form.text("domain")) {
        (Some(id), None) => {
            let n: u64 = id
                .parse()
                .map_err(|_| format!("`{id}` is not a queue id"))?;
            Ok((json!({"id": n}), format!("/admin/queue/{n}")))
        }
        (None, Some(d)) => Ok((
            json!({"domain": d}),
            format!("/admin/queue/domains/{}", enc(&d)),
        )),
        _ => Err("Give a queue id or a domain (one of them).".into()),
    }
}

/// The queue's changes need the admin role: a lesser user's POST is
/// refused before anything else (the API would refuse it too).
fn admin_only(ctx: &Ctx<'_>) -> Option<Response<Body>> {
    (!ctx.can(Role::Admin)).then(|| {
        error_page(&ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "retrying and purging the queue needs the admin role; `{}` is {}",
                ctx.user.name, ctx.user.role
            ),
        ))
    })
}

async fn retry(ctx: &Ctx<'_>, form: &Form) -> Result<Response<Body>, ApiError> {
    if let Some(r) = admin_only(ctx) {
        return Ok(r);
    }
    let (body, back) = match selection(form) {
        Ok(s) => s,
        Err(m) => return Ok(redirect_with("/admin/queue", "problem", &m)),
    };
    let r = ctx
        .api(Method::POST, "/api/v1/queue/retry", Some(body))
        .await;
    let n = r
        .as_ref()
        .map(|v| v["messages"].clone())
        .unwrap_or_default();
    Ok(after(
        &back,
        r,
        &format!("Retry now: {n} message(s) due again."),
    ))
}

async fn purge(ctx: &Ctx<'_>, form: &Form) -> Result<Response<Body>, ApiError> {
    if let Some(r) = admin_only(ctx) {
        return Ok(r);
    }
    let (mut body, back) = match selection(form) {
        Ok(s) => s,
        Err(m) => return Ok(redirect_with("/admin/queue", "problem", &m)),
    };
    // A domain's purge is confirmed by typing the domain; a message's by
    // ticking the box.
    let confirmed = match (form.text("domain"), form.text("confirm")) {
        (Some(d), Some(c)) => c.eq_ignore_ascii_case(&d),
        (None, Some(c)) => c == "yes",
        _ => false,
    };
    if !confirmed {
        return Ok(redirect_with(
            &back,
            "problem",
            "Not purged: confirm it (tick the box, or type the domain).",
        ));
    }
    let reason = form
        .text("reason")
        .unwrap_or_else(|| format!("purged by {} in the admin UI", ctx.user.name));
    body["reason"] = json!(reason);
    let r = ctx
        .api(Method::POST, "/api/v1/queue/purge", Some(body))
        .await;
    let done = match &r {
        Ok(v) => format!(
            "Purged: {} message(s), {} recipient(s).",
            v["messages"], v["recipients"]
        ),
        Err(_) => String::new(),
    };
    Ok(after(&back, r, &done))
}
