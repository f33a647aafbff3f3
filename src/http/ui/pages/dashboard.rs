//! Admin UI: the dashboard (`/admin`): what was sent and what it brought
//! today, in 7 and in 30 days (from `GET /api/v1/reports/overview`, the
//! kept hourly counters), the queue per destination domain, running
//! campaigns and active automations, alerts, and a 30-day chart.

use http::{Method, Response};
use serde_json::{Map, Value, json};

use crate::http::reply::{ApiError, Body};
use crate::http::ui::{Ctx, Input};

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[(
    "dashboard/index.html",
    include_str!("../templates/dashboard/index.html"),
)];

/// A complaint rate above this (over 7 days) raises an alert.
pub const COMPLAINT_ALERT: f64 = 0.001;

/// A bounce rate above this (over 7 days) raises an alert.
pub const BOUNCE_ALERT: f64 = 0.02;

/// The figures the dashboard sums (the overview's daily keys).
const KEYS: [&str; 9] = [
    "sent",
    "delivered",
    "bounces",
    "complaints",
    "opens_unique",
    "clicks_unique",
    "unsubscribes",
    "orders",
    "revenue",
];

/// Serves `/admin`.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    _input: Input,
) -> Result<Response<Body>, ApiError> {
    match (rest, method) {
        ([], &Method::GET | &Method::HEAD) => page(ctx).await,
        _ => Err(super::not_found(rest)),
    }
}

/// The last `n` days of the overview's daily rows summed, with the rates.
fn window(daily: &[Value], n: usize) -> Value {
    let rows = &daily[daily.len().saturating_sub(n)..];
    let mut m = Map::new();
    for k in KEYS {
        let v: f64 = rows.iter().map(|r| r[k].as_f64().unwrap_or(0.0)).sum();
        m.insert(
            k.into(),
            if k == "revenue" {
                json!((v * 100.0).round() / 100.0)
            } else {
                json!(v as u64)
            },
        );
    }
    let get = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let outcomes = get("delivered") + get("bounces");
    let rate = |x: f64| {
        if outcomes > 0.0 {
            json!(x / outcomes)
        } else {
            Value::Null
        }
    };
    let (c, b) = (rate(get("complaints")), rate(get("bounces")));
    m.insert("complaint_rate".into(), c);
    m.insert("bounce_rate".into(), b);
    Value::Object(m)
}

/// Alerts: rates over 7 days, senders without DKIM, templates that failed
/// to load.
fn alerts(week: &Value, senders: &[Value], templates: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = week["complaint_rate"].as_f64()
        && r > COMPLAINT_ALERT
    {
        out.push(format!(
            "Complaint rate over the last 7 days is {:.2}% (complaints ÷ delivered and bounced), above 0.1%.",
            r * 100.0
        ));
    }
    if let Some(r) = week["bounce_rate"].as_f64()
        && r > BOUNCE_ALERT
    {
        out.push(format!(
            "Bounce rate over the last 7 days is {:.2}% (bounces ÷ delivered and bounced), above 2%.",
            r * 100.0
        ));
    }
    for s in senders.iter().filter(|s| s["dkim"] == json!(false)) {
        out.push(format!(
            "Sender `{}` ({}) has no DKIM key: its mail is not signed.",
            s["id"].as_str().unwrap_or(""),
            s["domain"].as_str().unwrap_or("")
        ));
    }
    for t in templates.iter().filter(|t| t["status"] == "error") {
        out.push(format!(
            "Template `{}` failed to load.",
            t["name"].as_str().unwrap_or("")
        ));
    }
    out
}

/// The 30-day charts: messages, and revenue.
fn charts(daily: &[Value]) -> (Value, Value) {
    let labels: Vec<String> = daily
        .iter()
        .map(|r| {
            r["day"]
                .as_str()
                .unwrap_or("")
                .get(5..)
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let series = |k: &str, name: &str| json!({"name": name, "values": daily.iter().map(|r| r[k].clone()).collect::<Vec<_>>()});
    let mail = json!({
        "title": "Last 30 days", "kind": "lines", "labels": labels,
        "series": [series("sent", "sent"), series("delivered", "delivered"),
                   series("opens_unique", "opens"), series("clicks_unique", "clicks")],
    });
    let money = json!({
        "title": "Revenue, last 30 days", "kind": "bars", "labels": labels,
        "series": [series("revenue", "revenue")],
    });
    (mail, money)
}

async fn page(ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let overview = ctx.get("/api/v1/reports/overview?days=30").await?;
    let daily = overview["daily"].as_array().cloned().unwrap_or_default();
    let queue = ctx.get("/api/v1/queue").await?;
    let running = ctx.get("/api/v1/campaigns?status=running").await?;
    let flows = ctx.get("/api/v1/automations").await?;
    let templates = ctx.get("/api/v1/templates").await?;
    // The last DNS checks of the senders (a new run starts in the
    // background when they are old; the page never waits for DNS).
    let doctor = ctx.get("/api/v1/doctor?cached=true").await?;
    let active: Vec<Value> = flows
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|f| f["status"] == "active")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let week = window(&daily, 7);
    let senders = overview["senders"].as_array().cloned().unwrap_or_default();
    let tpl = templates["templates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let (chart, revenue_chart) = charts(&daily);
    Ok(ctx.page(
        "dashboard/index.html",
        "dashboard",
        json!({
            "windows": [
                {"label": "Today", "f": window(&daily, 1)},
                {"label": "7 days", "f": week},
                {"label": "30 days", "f": window(&daily, 30)},
            ],
            "currency": overview["currency"],
            "alerts": alerts(&week, &senders, &tpl),
            "queue": queue,
            "running": running["campaigns"],
            "automations": active,
            "chart": chart,
            "revenue_chart": revenue_chart,
            "doctor": doctor_view(&doctor),
        }),
    ))
}

/// The doctor's verdicts for the page: failures first, then warnings, then
/// what is fine.
fn doctor_view(d: &Value) -> Value {
    let mut verdicts = d["verdicts"].as_array().cloned().unwrap_or_default();
    let rank = |v: &Value| match v["status"].as_str() {
        Some("fail") => 0,
        Some("warn") => 1,
        _ => 2,
    };
    verdicts.sort_by_key(rank);
    json!({
        "checked_at": d["checked_at"],
        "error": d["error"],
        "failures": d["failures"],
        "warnings": d["warnings"],
        "verdicts": verdicts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_sum_the_last_days_and_rates_alert() {
        let day = |sent: u64, delivered: u64, bounces: u64, complaints: u64| {
            json!({"sent": sent, "delivered": delivered, "bounces": bounces,
                   "complaints": complaints, "revenue": 1.25})
        };
        let daily = vec![day(100, 100, 0, 0), day(10, 9, 1, 1)];
        let today = window(&daily, 1);
        assert_eq!(today["sent"], 10);
        let all = window(&daily, 30);
        assert_eq!(all["sent"], 110);
        assert_eq!(all["revenue"], 2.5);
        let a = alerts(&today, &[json!({"id": "s", "dkim": false})], &[]);
        assert_eq!(a.len(), 3, "{a:?}");
        assert!(alerts(&window(&daily[..1], 7), &[], &[]).is_empty());
    }
}
