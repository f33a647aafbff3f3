//! Admin UI: bounces and complaints — the reports the inbound listener (or
//! the API) took, and the suppression list.
//!
//! - `GET /admin/bounces?before=&after=`
//! - `POST /admin/bounces/suppress` (`address`, `reason`)
//! - `POST /admin/bounces/unsuppress` (`hash`, `reason`)

use http::{Method, Response};
use serde_json::json;

use crate::http::reply::{ApiError, Body};
use crate::http::ui::{Ctx, Form, Input, after, enc, redirect_with};

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[(
    "bounces/index.html",
    include_str!("../templates/bounces/index.html"),
)];

const BOUNCES: &str = "/admin/bounces";

/// Serves `/admin/bounces…`.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    input: Input,
) -> Result<Response<Body>, ApiError> {
    match (rest, method, input) {
        (["bounces"], &Method::GET | &Method::HEAD, _) => index(ctx).await,
        (["bounces", "suppress"], &Method::POST, Input::Form(f)) => suppress(ctx, &f).await,
        (["bounces", "unsuppress"], &Method::POST, Input::Form(f)) => unsuppress(ctx, &f).await,
        _ => Err(super::not_found(rest)),
    }
}

async fn index(ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let mut reports = String::from("/api/v1/inbound?limit=50");
    if let Some(b) = ctx.param("before") {
        let b: u64 = b
            .parse()
            .map_err(|_| ApiError::bad_request(format!("`{b}` is not a report number")))?;
        reports.push_str(&format!("&before={b}"));
    }
    let mut sup = String::from("/api/v1/suppressions?limit=50");
    if let Some(a) = ctx.param("after") {
        sup.push_str(&format!("&after={}", enc(a)));
    }
    let r = ctx.get(&reports).await?;
    let s = ctx.get(&sup).await?;
    Ok(ctx.page(
        "bounces/index.html",
        "bounces",
        json!({"reports": r, "suppressions": s}),
    ))
}

async fn suppress(ctx: &Ctx<'_>, form: &Form) -> Result<Response<Body>, ApiError> {
    let address = form.text("address").unwrap_or_default();
    let reason = form.text("reason").unwrap_or_default();
    let r = ctx
        .api(
            Method::POST,
            "/api/v1/suppressions",
            Some(json!({"address": address, "reason": reason})),
        )
        .await;
    Ok(after(BOUNCES, r, &format!("{address} is suppressed.")))
}

async fn unsuppress(ctx: &Ctx<'_>, form: &Form) -> Result<Response<Body>, ApiError> {
    let hash = form.text("hash").unwrap_or_default();
    let reason = form.text("reason").unwrap_or_default();
    if reason.trim().is_empty() {
        return Ok(redirect_with(
            BOUNCES,
            "problem",
            "Not removed: say why the address may be mailed again.",
        ));
    }
    let path = format!(
        "/api/v1/suppressions/{}?reason={}",
        enc(&hash),
        enc(&reason)
    );
    let r = ctx.api(Method::DELETE, &path, None).await;
    Ok(after(BOUNCES, r, "Removed from the suppression list."))
}
