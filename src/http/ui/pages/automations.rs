//! Admin UI: automations. The list of flows with their counts, and a
//! flow's page: its steps with per-step figures, what its sends brought
//! (rates and money), pause and resume, and its activity.

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::http::reply::{ApiError, Body};
use crate::http::ui::{Ctx, Input, after, enc};

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "automations/list.html",
        include_str!("../templates/automations/list.html"),
    ),
    (
        "automations/show.html",
        include_str!("../templates/automations/show.html"),
    ),
];

/// Serves `/admin/automations…`.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    input: Input,
) -> Result<Response<Body>, ApiError> {
    let get = matches!(*method, Method::GET | Method::HEAD);
    match (rest, get, input) {
        ([_], true, _) => list(ctx).await,
        ([_, name], true, _) => show(ctx, name).await,
        ([_, name, "owner"], false, Input::Form(form)) => {
            let owner = form.text("owner").unwrap_or_default();
            let r = ctx
                .api(
                    Method::PUT,
                    &format!("/api/v1/owners/automation/{}", enc(name)),
                    Some(json!({ "owner": owner })),
                )
                .await;
            Ok(after(
                &format!("/admin/automations/{}", enc(name)),
                r,
                "Owner changed.",
            ))
        }
        ([_, name, action @ ("pause" | "resume")], false, Input::Form(_)) => {
            let r = ctx
                .api(
                    Method::POST,
                    &format!("/api/v1/automations/{}/{action}", enc(name)),
                    Some(json!({})),
                )
                .await;
            let done = if *action == "pause" {
                "Paused: nobody enters and pending runs wait."
            } else {
                "Resumed."
            };
            Ok(after(&format!("/admin/automations/{}", enc(name)), r, done))
        }
        _ => Err(super::not_found(rest)),
    }
}

/// `GET /admin/automations?owner=`: every flow (there are tens, not
/// millions), or those of one owner.
async fn list(ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let mut flows = ctx.get("/api/v1/automations").await?;
    let owner = ctx.param("owner").map(str::to_string);
    if let (Some(o), Some(all)) = (&owner, flows.as_array_mut()) {
        all.retain(|f| f["owner"].as_str() == Some(o.as_str()));
    }
    Ok(ctx.page(
        "automations/list.html",
        "automations",
        json!({"flows": flows, "owner": owner}),
    ))
}

async fn show(ctx: &Ctx<'_>, name: &str) -> Result<Response<Body>, ApiError> {
    let p = enc(name);
    let flow = ctx.get(&format!("/api/v1/automations/{p}")).await?;
    // A flow that has sent nothing yet has no report.
    let report = match ctx
        .get(&format!("/api/v1/reports/sends/automation/{p}"))
        .await
    {
        Ok(r) => r,
        Err(e) if e.status == StatusCode::NOT_FOUND => Value::Null,
        Err(e) => return Err(e),
    };
    let object: String =
        url::form_urlencoded::byte_serialize(format!("automation:{name}").as_bytes()).collect();
    let activity = ctx
        .get(&format!("/api/v1/activity?object={object}&limit=20"))
        .await?;
    let definition = serde_json::to_string_pretty(&flow["definition"]).unwrap_or_default();
    Ok(ctx.page(
        "automations/show.html",
        "automations",
        json!({
            "f": flow,
            "report": report,
            "activity": activity["activity"],
            "definition": definition,
        }),
    ))
}
