//! Admin UI: campaigns. The list (by status and owner), the new-campaign
//! form, a campaign's page (status, live progress, the lifecycle actions,
//! its owner and activity) and its report (rates, money, variants, links,
//! an hourly chart, the CSV download).
//!
//! The form's field names are stable (browser tests fill them): `name`,
//! `subject`, `template`, `sender`, `lists` (repeated), `segments`
//! (repeated), `exclude_lists`, `exclude_segments`, `variant_subject`
//! (repeated: two or more make an A/B test), `ab_share`, `ab_metric`,
//! `ab_window`, `products`, `coupon_pool`, and `spec` (advanced: a JSON
//! spec the fields above are laid over). The test send's field is `to`.

use http::{Method, Response, StatusCode};
use serde_json::{Map, Value, json};

use crate::http::reply::{self, ApiError, Body};
use crate::http::ui::{Ctx, Form, Input, after, error_page, redirect_with};
use crate::users::Role;

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "campaigns/list.html",
        include_str!("../templates/campaigns/list.html"),
    ),
    (
        "campaigns/new.html",
        include_str!("../templates/campaigns/new.html"),
    ),
    (
        "campaigns/show.html",
        include_str!("../templates/campaigns/show.html"),
    ),
    (
        "campaigns/report.html",
        include_str!("../templates/campaigns/report.html"),
    ),
];

/// Campaigns per page of the list.
const PAGE: usize = 50;

/// Serves `/admin/campaigns…`.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    input: Input,
) -> Result<Response<Body>, ApiError> {
    let get = matches!(*method, Method::GET | Method::HEAD);
    match (rest, get, input) {
        ([_], true, _) => list(ctx).await,
        ([_], false, Input::Form(f)) => create(ctx, &f).await,
        ([_, "new"], true, _) => new_form(ctx, &Form::default(), None).await,
        ([_, id], true, _) => show(ctx, id).await,
        ([_, id, "report"], true, _) => report(ctx, id).await,
        ([_, id, "report.csv"], true, _) => report_csv(ctx, id).await,
        ([_, id, action], false, Input::Form(f)) => act(ctx, id, action, &f).await,
        _ => Err(super::not_found(rest)),
    }
}

/// `?k=v&…` of the pairs with a value, URL-encoded (empty when none).
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            s.append_pair(k, v);
        }
    }
    let s = s.finish();
    if s.is_empty() { s } else { format!("?{s}") }
}

/// A campaign number from the path, or a 404.
fn number(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("`{id}` is not a campaign number")))
}

async fn list(ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let (status, owner, before) = (ctx.param("status"), ctx.param("owner"), ctx.param("before"));
    let limit = PAGE.to_string();
    let q = query(&[
        ("status", status),
        ("owner", owner),
        ("before", before),
        ("limit", Some(&limit)),
    ]);
    let r = ctx.get(&format!("/api/v1/campaigns{q}")).await?;
    let next = r["next"].as_u64().map(|n| n.to_string());
    let next_url = next.as_deref().map(|n| {
        format!(
            "/admin/campaigns{}",
            query(&[("status", status), ("owner", owner), ("before", Some(n))])
        )
    });
    Ok(ctx.page(
        "campaigns/list.html",
        "campaigns",
        json!({
            "campaigns": r["campaigns"],
            "status": status,
            "owner": owner,
            "next_url": next_url,
            "statuses": ["draft", "scheduled", "running", "paused", "cancelled", "completed"],
        }),
    ))
}

/// Splits a text of names or addresses at commas, spaces and line breaks.
fn words(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The campaign spec a submitted form describes: the advanced JSON spec
/// (if any) with the form's fields laid over it.
pub fn spec_of(f: &Form) -> Result<Value, String> {
    let mut spec: Map<String, Value> = match f.text("spec") {
        None => Map::new(),
        Some(t) => match serde_json::from_str(&t) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err("advanced spec: must be a JSON object".into()),
            Err(e) => return Err(format!("advanced spec: not JSON: {e}")),
        },
    };
    for k in ["name", "template", "subject", "sender", "coupon_pool"] {
        if let Some(v) = f.text(k) {
            spec.insert(k.into(), json!(v));
        }
    }
    let mut audience = match spec.remove("audience") {
        Some(Value::Object(a)) => a,
        _ => Map::new(),
    };
    for k in ["lists", "segments", "exclude_lists", "exclude_segments"] {
        let v: Vec<String> = f.all(k).into_iter().filter(|s| !s.is_empty()).collect();
        if !v.is_empty() {
            audience.insert(k.into(), json!(v));
        }
    }
    spec.insert("audience".into(), Value::Object(audience));
    if let Some(p) = f.text("products") {
        spec.insert("products".into(), json!(words(&p)));
    }
    let variants: Vec<String> = f
        .all("variant_subject")
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    match variants.len() {
        0 => {}
        1 => return Err("A/B test: give two or more subject variants, or none".into()),
        _ => {
            let share = match f.text("ab_share") {
                None => 20.0,
                Some(s) => s
                    .parse::<f64>()
                    .map_err(|_| format!("A/B test share: `{s}` is not a number"))?,
            };
            spec.insert(
                "ab".into(),
                json!({
                    "variants": variants.iter().map(|s| json!({"subject": s})).collect::<Vec<_>>(),
                    "test_share": share,
                    "metric": f.text("ab_metric").unwrap_or_else(|| "opens".into()),
                    "window": f.text("ab_window").unwrap_or_else(|| "4h".into()),
                }),
            );
        }
    }
    Ok(Value::Object(spec))
}

/// The form's values for showing it again.
fn values(f: &Form) -> Value {
    let mut m = Map::new();
    for (k, v) in &f.0 {
        if k != "_csrf"
            && !matches!(
                k.as_str(),
                "lists" | "segments" | "exclude_lists" | "exclude_segments" | "variant_subject"
            )
        {
            m.insert(k.clone(), json!(v));
        }
    }
    for k in [
        "lists",
        "segments",
        "exclude_lists",
        "exclude_segments",
        "variant_subject",
    ] {
        m.insert(k.into(), json!(f.all(k)));
    }
    Value::Object(m)
}

async fn new_form(
    ctx: &Ctx<'_>,
    f: &Form,
    problem: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let templates = ctx.get("/api/v1/templates").await?;
    let lists = ctx.get("/api/v1/lists").await?;
    let segments = ctx.get("/api/v1/segments").await?;
    let pools = ctx.get("/api/v1/coupons").await?;
    let senders = ctx.get("/api/v1/reports/overview?days=1").await?;
    let ok = |v: &Value| v["status"] == "ok";
    let mut r = ctx.page(
        "campaigns/new.html",
        "campaigns",
        json!({
            "templates": templates["templates"].as_array().map(|a| a.iter().filter(|t| ok(t)).cloned().collect::<Vec<_>>()),
            "lists": lists["lists"],
            "segments": segments["segments"].as_array().map(|a| a.iter().filter(|t| ok(t)).cloned().collect::<Vec<_>>()),
            "pools": pools["pools"],
            "senders": senders["senders"],
            "v": values(f),
            "form_problem": problem,
        }),
    );
    if problem.is_some() {
        *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(r)
}

async fn create(ctx: &Ctx<'_>, f: &Form) -> Result<Response<Body>, ApiError> {
    let spec = match spec_of(f) {
        Ok(s) => s,
        Err(e) if ctx.can(Role::Editor) => return new_form(ctx, f, Some(&e)).await,
        Err(e) => return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", e)),
    };
    match ctx.api(Method::POST, "/api/v1/campaigns", Some(spec)).await {
        Ok(c) => Ok(redirect_with(
            &format!("/admin/campaigns/{}", c["id"]),
            "notice",
            "Campaign created as a draft.",
        )),
        Err(e) if e.status == StatusCode::FORBIDDEN => Ok(error_page(&e)),
        Err(e) => new_form(ctx, f, Some(&e.message)).await,
    }
}

async fn show(ctx: &Ctx<'_>, id: &str) -> Result<Response<Body>, ApiError> {
    let n = number(id)?;
    let c = ctx.get(&format!("/api/v1/campaigns/{n}")).await?;
    let activity = ctx
        .get(&format!("/api/v1/activity?object=campaign:{n}&limit=20"))
        .await?;
    let users = if ctx.can(Role::Admin) {
        ctx.get("/api/v1/users").await?["users"].clone()
    } else {
        Value::Null
    };
    let p = &c["progress"];
    let size = p["audience"].as_u64().unwrap_or(0);
    let done = size.saturating_sub(p["remaining"].as_u64().unwrap_or(0));
    Ok(ctx.page(
        "campaigns/show.html",
        "campaigns",
        json!({
            "c": c,
            "live": c["status"] == "running",
            "done": done,
            "spec_json": serde_json::to_string_pretty(&c["spec"]).unwrap_or_default(),
            "activity": activity["activity"],
            "users": users,
        }),
    ))
}

/// A `datetime-local` value (`2026-12-03T22:10`, taken as UTC) or an RFC
/// 3339 time, as RFC 3339.
fn rfc3339(s: &str) -> String {
    let s = s.trim();
    if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
        return s.to_string();
    }
    match chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S"))
    {
        Ok(t) => t.and_utc().to_rfc3339(),
        Err(_) => s.to_string(),
    }
}

async fn act(ctx: &Ctx<'_>, id: &str, action: &str, f: &Form) -> Result<Response<Body>, ApiError> {
    let n = number(id)?;
    let back = format!("/admin/campaigns/{n}");
    let api = format!("/api/v1/campaigns/{n}/{action}");
    let r = match action {
        "test" => {
            let to = words(f.get("to").unwrap_or(""));
            let r = ctx
                .api(Method::POST, &api, Some(json!({"addresses": to})))
                .await;
            return Ok(after(&back, r, "Test messages queued."));
        }
        "schedule" => {
            let at = rfc3339(f.get("at").unwrap_or(""));
            ctx.api(Method::POST, &api, Some(json!({"at": at}))).await
        }
        "start" | "pause" | "resume" | "cancel" => {
            ctx.api(Method::POST, &api, Some(json!({}))).await
        }
        "winner" => {
            let v: u32 = f.text("variant").and_then(|v| v.parse().ok()).unwrap_or(0);
            ctx.api(Method::POST, &api, Some(json!({"variant": v})))
                .await
        }
        "duplicate" => {
            return Ok(match ctx.api(Method::POST, &api, Some(json!({}))).await {
                Ok(c) => redirect_with(
                    &format!("/admin/campaigns/{}", c["id"]),
                    "notice",
                    &format!("A copy of campaign {n}, as a draft."),
                ),
                Err(e) => after::<()>(&back, Err(e), ""),
            });
        }
        "owner" => {
            let owner = f.text("owner").unwrap_or_default();
            let r = ctx
                .api(
                    Method::PUT,
                    &format!("/api/v1/owners/campaign/{n}"),
                    Some(json!({"owner": owner})),
                )
                .await;
            return Ok(after(
                &back,
                r,
                &format!("The campaign now belongs to {owner}."),
            ));
        }
        "delete" => {
            let r = ctx
                .api(Method::DELETE, &format!("/api/v1/campaigns/{n}"), None)
                .await;
            return Ok(match r {
                Ok(_) => redirect_with(
                    "/admin/campaigns",
                    "notice",
                    &format!("Campaign {n} deleted."),
                ),
                Err(e) => after::<()>(&back, Err(e), ""),
            });
        }
        _ => {
            return Err(ApiError::not_found(format!(
                "no campaign action `{action}`"
            )));
        }
    };
    Ok(after(&back, r, &format!("Done: {action}.")))
}

/// The hourly chart: deliveries, opens and clicks.
fn hourly_chart(hours: &[Value]) -> Value {
    let labels: Vec<String> = hours
        .iter()
        .map(|h| {
            h["hour"]
                .as_str()
                .and_then(|t| t.get(5..16))
                .unwrap_or("")
                .replace('T', " ")
        })
        .collect();
    let series = |k: &str, name: &str| json!({"name": name, "values": hours.iter().map(|h| h[k].as_u64().unwrap_or(0)).collect::<Vec<_>>()});
    json!({
        "title": "Per hour", "kind": "lines", "labels": labels,
        "series": [series("delivered", "delivered"), series("opens_unique", "opens"), series("clicks_unique", "clicks")],
    })
}

async fn report(ctx: &Ctx<'_>, id: &str) -> Result<Response<Body>, ApiError> {
    let n = number(id)?;
    let r = ctx.get(&format!("/api/v1/reports/campaigns/{n}")).await?;
    let hours = r["hourly"].as_array().cloned().unwrap_or_default();
    Ok(ctx.page(
        "campaigns/report.html",
        "campaigns",
        json!({"r": r, "id": n, "chart": hourly_chart(&hours)}),
    ))
}

async fn report_csv(ctx: &Ctx<'_>, id: &str) -> Result<Response<Body>, ApiError> {
    let n = number(id)?;
    let part = match ctx.param("part") {
        Some(p @ ("summary" | "links" | "hourly")) => p,
        Some(p) => {
            return Err(ApiError::bad_request(format!(
                "part: `{p}` is not summary, links or hourly"
            )));
        }
        None => "summary",
    };
    ctx.api_response(
        Method::GET,
        &format!("/api/v1/reports/campaigns/{n}?format=csv&part={}", part),
        "text/plain",
        reply::full_body(String::new()),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_form_makes_a_spec() {
        let made = spec_of(&form(&[
            ("name", "June"),
            ("template", "news"),
            ("lists", "a"),
            ("lists", "b"),
            ("variant_subject", "One"),
            ("variant_subject", "Two"),
            ("variant_subject", ""),
            ("products", "SKU1, SKU2"),
            (
                "spec",
                r#"{"rate_per_hour": 100, "audience": {"segments": ["vip"]}}"#,
            ),
        ]));
        let Ok(s) = made else {
            panic!("the form made no spec: {made:?}");
        };
        assert_eq!(s["audience"]["lists"], json!(["a", "b"]));
        assert_eq!(s["audience"]["segments"], json!(["vip"]));
        assert_eq!(s["ab"]["variants"][1]["subject"], "Two");
        assert_eq!(s["products"], json!(["SKU1", "SKU2"]));
        assert_eq!(s["rate_per_hour"], 100);
        assert!(spec_of(&form(&[("variant_subject", "only one")])).is_err());
        assert!(spec_of(&form(&[("spec", "[1]")])).is_err());
        assert_eq!(rfc3339("2026-12-03T22:10"), "2026-12-03T22:10:00+00:00");
    }
}
