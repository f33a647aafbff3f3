//! `/api/v1/reports`: a campaign's report (JSON, or CSV with
//! `?format=csv`), the comparison across campaigns, the report of any send
//! (`/api/v1/reports/sends/{kind}/{id}`: a campaign, an automation, the
//! transactional messages of a tag per day), and a contact's history (also
//! at `/api/v1/contacts/{ref}/history`). The figures and their definitions
//! are in `send::report` (and `campaign::report` for campaigns).

use std::sync::Arc;

use crate::http::reply::ReqBody;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use super::super::AppState;
use super::super::reply::{self, ApiError, Body};
use crate::campaign::CampaignStore;
use crate::campaign::report;
use crate::send::SendKind;

fn id_of(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::not_found(format!("`{s}` is not a campaign number")))
}

fn csv_response(name: &str, bytes: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(http_body_util::Full::new(bytes::Bytes::from(bytes)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.csv\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

fn format_of(pairs: &[(String, String)]) -> Result<bool, ApiError> {
    match reply::query_str(pairs, "format") {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(f) => Err(ApiError::bad_request(format!(
            "format: `{f}` is not json or csv"
        ))),
    }
}

/// The currency a report names when it has no orders to go by: the one
/// every site names, if they agree (never a default).
fn currency(state: &AppState) -> Option<String> {
    let config = state.config();
    let mut all = config.sites.iter().map(|s| s.currency.clone());
    let first = all.next().flatten()?;
    all.all(|c| c.as_deref() == Some(first.as_str()))
        .then_some(first)
}

/// `GET /api/v1/reports/campaigns/{id}[?format=csv[&part=summary|links|hourly]]`.
pub async fn campaign(
    state: &Arc<AppState>,
    id: &str,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let pairs = reply::query_pairs(req.uri().query());
    reply::only_params(&pairs, &["format", "part"])?;
    let csv = format_of(&pairs)?;
    let part = reply::query_str(&pairs, "part")
        .unwrap_or("summary")
        .to_string();
    if !matches!(part.as_str(), "summary" | "links" | "hourly") {
        return Err(ApiError::bad_request(format!(
            "part: `{part}` is not summary, links or hourly"
        )));
    }
    let id = id_of(id)?;
    state.hits.drain().await?;
    let cur = currency(state);
    let rep = state
        .store
        .read(move |r| match r.campaign(id)? {
            Some(c) => Ok(Some(report::campaign(r, &c, cur.as_deref())?)),
            None => Ok(None),
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no campaign {id}")))?;
    if !csv {
        return reply::ok(&rep);
    }
    let rows_of = |key: &str| -> Vec<Map<String, Value>> {
        rep.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_object().cloned()).collect())
            .unwrap_or_default()
    };
    let bytes = match part.as_str() {
        "links" => {
            let rows = rows_of("links");
            let head = [
                "stage",
                "variant",
                "label",
                "link",
                "url",
                "clicks_unique",
                "clicks_total",
                "machine_clicks_total",
                "orders",
                "revenue",
            ];
            report::csv(&head, &rows.iter().collect::<Vec<_>>())
        }
        "hourly" => {
            let rows = rows_of("hourly");
            let head = [
                "hour",
                "delivered",
                "failed",
                "opens_unique",
                "opens_total",
                "machine_opens_total",
                "clicks_unique",
                "clicks_total",
                "machine_clicks_total",
                "unsubscribes",
                "complaints",
                "orders",
                "revenue",
            ];
            report::csv(&head, &rows.iter().collect::<Vec<_>>())
        }
        _ => {
            // One row for the whole campaign, then one per variant/stage.
            let mut rows = Vec::new();
            if let Some(t) = rep.get("totals").and_then(Value::as_object) {
                let mut r = t.clone();
                r.insert("label".into(), "total".into());
                rows.push(r);
            }
            rows.extend(rows_of("variants"));
            // A pair of columns per currency of the orders; `currency` names
            // the one `revenue` is in (empty with several: no sum).
            let currencies: Vec<String> = rep["campaign"]["currencies"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let mut extra = vec!["currency".to_string()];
            for cur in &currencies {
                extra.push(format!("orders_{cur}"));
                extra.push(format!("revenue_{cur}"));
            }
            for r in &mut rows {
                r.insert("currency".into(), rep["campaign"]["currency"].clone());
                for cur in &currencies {
                    let line = &r.get("revenue_by_currency").cloned().unwrap_or_default()[cur];
                    let orders = line["orders"].as_u64().unwrap_or(0);
                    let revenue = line["revenue"].clone();
                    r.insert(format!("orders_{cur}"), orders.into());
                    r.insert(
                        format!("revenue_{cur}"),
                        if revenue.is_null() {
                            0.0.into()
                        } else {
                            revenue
                        },
                    );
                }
            }
            let mut head = vec!["label", "stage", "variant"];
            head.extend_from_slice(report::COLUMNS);
            head.extend(extra.iter().map(String::as_str));
            report::csv(&head, &rows.iter().collect::<Vec<_>>())
        }
    };
    Ok(csv_response(&format!("campaign-{id}-{part}"), bytes))
}

/// `GET /api/v1/reports/sends/{kind}`: the sends of a kind that have a
/// report: transactional tags (with their names), automations, campaigns.
pub async fn sends(state: &Arc<AppState>, kind: &str) -> Result<Response<Body>, ApiError> {
    let k = send_kind(kind)?;
    state.hits.drain().await?;
    let rows = state
        .store
        .read(move |r| {
            Ok(match k {
                SendKind::Campaign => crate::campaign::all(r)?
                    .into_iter()
                    .map(|c| json!({"id": c.id, "name": c.spec.name}))
                    .collect(),
                _ => r
                    .send_names(k)?
                    .into_iter()
                    .map(|(id, name)| json!({"id": id, "name": name}))
                    .collect::<Vec<_>>(),
            })
        })
        .await?;
    reply::ok(&json!({ "kind": k.name(), "sends": rows }))
}

fn send_kind(kind: &str) -> Result<SendKind, ApiError> {
    SendKind::from_name(kind)
        .filter(|k| *k != SendKind::Preview)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "`{kind}` is not a kind of send (campaign, automation, transactional, test)"
            ))
        })
}

/// `GET /api/v1/reports/sends/{kind}/{id}[?format=csv]`: the report of one
/// send. A campaign's is its campaign report (as
/// `/api/v1/reports/campaigns/{id}`); a transactional tag's (`id` is the
/// tag's name, e.g. `order-confirmation`) has a row per day; an
/// automation's a row per step.
pub async fn send(
    state: &Arc<AppState>,
    kind: &str,
    id: &str,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let k = send_kind(kind)?;
    if k == SendKind::Campaign {
        return campaign(state, id, req).await;
    }
    let pairs = reply::query_pairs(req.uri().query());
    reply::only_params(&pairs, &["format"])?;
    let csv = format_of(&pairs)?;
    // A tag and an automation are named (their id is the name's hash); an
    // automation may also be given by its number.
    let (num, name) = match (k, id.parse::<u64>()) {
        (SendKind::Transactional, _) | (SendKind::Automation, Err(_)) => {
            (crate::send::model::tag_id(id), id.to_string())
        }
        (_, Ok(n)) => (n, id.to_string()),
        (_, Err(_)) => {
            return Err(ApiError::not_found(format!("`{id}` is not a send number")));
        }
    };
    state.hits.drain().await?;
    let cur = currency(state);
    // An automation that has sent nothing yet has a report of zeros.
    let live_flow = k == SendKind::Automation && state.automations.flows().by_id.contains_key(&num);
    let rep = state
        .store
        .read(move |r| {
            let known = live_flow
                || r.send_names(k)?
                    .iter()
                    .any(|(i, n)| *i == num && *n == name)
                || !r.send_counts(k, num)?.is_empty();
            if !known {
                return Ok(None);
            }
            crate::send::report::send(r, k, num, &name, cur.as_deref()).map(Some)
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no {} send `{id}`", k.name())))?;
    if !csv {
        return reply::ok(&rep);
    }
    let rows_key = if k == SendKind::Transactional {
        "days"
    } else {
        "slots"
    };
    let mut rows: Vec<Map<String, Value>> = Vec::new();
    if let Some(t) = rep.get("totals").and_then(Value::as_object) {
        let mut r = t.clone();
        r.insert("day".into(), "total".into());
        r.insert("label".into(), "total".into());
        rows.push(r);
    }
    rows.extend(
        rep.get(rows_key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_object().cloned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    let mut head = if k == SendKind::Transactional {
        vec!["day"]
    } else {
        vec!["label", "round", "variant"]
    };
    head.extend_from_slice(report::COLUMNS);
    Ok(csv_response(
        &format!("{}-{id}", k.name()),
        report::csv(&head, &rows.iter().collect::<Vec<_>>()),
    ))
}

/// `GET /api/v1/reports/campaigns[?ids=1,2&status=completed&format=csv]`:
/// every campaign's totals, rates and money side by side.
pub async fn campaigns(
    state: &Arc<AppState>,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let pairs = reply::query_pairs(req.uri().query());
    reply::only_params(&pairs, &["format", "ids", "status"])?;
    let csv = format_of(&pairs)?;
    let ids: Option<Vec<u64>> = match reply::query_str(&pairs, "ids") {
        None => None,
        Some(s) => Some(
            s.split(',')
                .map(|x| {
                    x.trim().parse().map_err(|_| {
                        ApiError::bad_request(format!("ids: `{x}` is not a campaign number"))
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let status = reply::query_str(&pairs, "status").map(str::to_string);
    state.hits.drain().await?;
    let rows = state
        .store
        .read(move |r| {
            let mut out = Vec::new();
            for c in crate::campaign::all(r)? {
                if ids.as_ref().is_some_and(|i| !i.contains(&c.id)) {
                    continue;
                }
                if status.as_deref().is_some_and(|s| s != c.status.as_str()) {
                    continue;
                }
                let counts = r.send_counts(SendKind::Campaign, c.id)?;
                let money = r.send_money(SendKind::Campaign, c.id)?;
                out.push(report::summary(&c, &counts, &money));
            }
            Ok(out)
        })
        .await?;
    if csv {
        let maps: Vec<&Map<String, Value>> = rows.iter().filter_map(Value::as_object).collect();
        let mut head = vec!["id", "name", "status", "started"];
        head.extend_from_slice(report::COLUMNS);
        return Ok(csv_response("campaigns", report::csv(&head, &maps)));
    }
    reply::ok(&json!({ "campaigns": rows }))
}

/// `GET /api/v1/contacts/{ref}/history[?before=SEQ&limit=N]`: everything
/// sent to the contact and everything they did, newest first; with the
/// consent log.
pub async fn contact(
    state: &Arc<AppState>,
    r: &str,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let pairs = reply::query_pairs(req.uri().query());
    reply::only_params(&pairs, &["before", "limit"])?;
    let before = reply::query_u64(&pairs, "before")?.unwrap_or(u64::MAX);
    let limit = reply::query_u64(&pairs, "limit")?
        .unwrap_or(100)
        .clamp(1, 1000) as usize;
    let c = super::contacts::load(state, r).await?;
    state.hits.drain().await?;
    let id = c.id;
    let (events, log) = state
        .store
        .read(move |v| Ok((v.history(id, before, limit)?, v.consent_log(id)?)))
        .await?;
    let next = if events.len() == limit {
        events.last().map(|(s, _)| *s)
    } else {
        None
    };
    let events: Vec<Value> = events
        .into_iter()
        .map(|(seq, e)| history_json(seq, &e))
        .collect();
    let body = json!({
        "contact": {"id": c.id, "email": c.email, "consent": c.consent.as_str()},
        "events": events,
        "next_before": next,
        "consent_log": super::contacts::log_view(&log),
    });
    Ok(reply::json_response(StatusCode::OK, &body))
}

/// One entry of a contact's history as the API shows it (also in the GDPR
/// export): the stored event with its sequence number, `at` in RFC 3339 and
/// `amount` in currency units.
pub fn history_json(seq: u64, e: &crate::store::HistoryEvent) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("seq".into(), seq.into());
        let at = chrono::DateTime::from_timestamp_millis(e.at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        o.insert("at".into(), json!(at));
        if let Some(a) = e.amount {
            o.insert("amount".into(), json!(a as f64 / 100.0));
        }
    }
    v
}

/// Body of `POST /api/v1/complaints`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ComplaintBody {
    /// The Message-ID of the message complained about (from the feedback
    /// report's copy of it).
    message_id: String,
    /// Kept in the consent log.
    #[serde(default)]
    note: Option<String>,
}

/// `POST /api/v1/complaints` `{"message_id": "<…>"}`: a spam complaint from a
/// feedback loop about a campaign message. The contact is withdrawn and the
/// campaign counts it (once per contact).
pub async fn complaint(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let b: ComplaintBody = reply::read_json(req, state.config().http.max_body_bytes).await?;
    let Some(m) = crate::track::send_message(&b.message_id) else {
        return Err(ApiError::invalid(
            "not_a_campaign_message",
            format!(
                "message_id: `{}` is not the Message-ID of a Herald campaign message (c<campaign>.<slot>.<contact>@domain)",
                b.message_id
            ),
        ));
    };
    let now = state.clock.now();
    let note = b.note;
    let known = state
        .store
        .write(move |t| crate::track::complaint(t, m, note, now))
        .await?;
    if !known {
        return Err(ApiError::not_found(format!(
            "no campaign message {} was sent",
            b.message_id
        )));
    }
    reply::ok(&json!({"campaign": m.send.id, "contact": m.contact, "status": "recorded"}))
}

/// The counters the overview sums per day, with their names in the API.
const OVERVIEW_COUNTERS: [(crate::send::model::Counter, &str); 9] = {
    use crate::send::model::Counter as C;
    [
        (C::Sent, "sent"),
        (C::Delivered, "delivered"),
        (C::Failed, "bounces"),
        (C::Complaints, "complaints"),
        (C::UniqueOpens, "opens_unique"),
        (C::UniqueClicks, "clicks_unique"),
        (C::Unsubscribes, "unsubscribes"),
        (C::Orders, "orders"),
        (C::Revenue, "revenue"),
    ]
};

/// One day's (or a window's) figures from summed counters.
fn overview_figures(get: impl Fn(u8) -> u64) -> Map<String, Value> {
    let mut m = Map::new();
    for (c, name) in OVERVIEW_COUNTERS {
        let v = get(c as u8);
        let v = if name == "revenue" {
            crate::send::report::money(v as f64)
        } else {
            v.into()
        };
        m.insert(name.into(), v);
    }
    m
}

/// `GET /api/v1/reports/overview[?days=N]`: every campaign, automation
/// and transactional send together, per UTC day for the last `N` days
/// (1–90, default 30; the last day is today, so far), from the hourly
/// counters (never a contact). `bounces` are failed final outcomes;
/// `opens_unique`/`clicks_unique` are contacts who opened/clicked by hand,
/// counted in the hour of their first open/click. Rates over the window:
/// `complaint_rate` = complaints ÷ (delivered + bounces), `bounce_rate` =
/// bounces ÷ (delivered + bounces). With the configured senders and
/// whether each signs with DKIM.
pub async fn overview(
    state: &Arc<AppState>,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let pairs = reply::query_pairs(req.uri().query());
    reply::only_params(&pairs, &["days"])?;
    let days = reply::query_u64(&pairs, "days")?.unwrap_or(30);
    if !(1..=90).contains(&days) {
        return Err(ApiError::bad_request(format!(
            "days: {days} is not between 1 and 90"
        )));
    }
    state.hits.drain().await?;
    let now = state.clock.now().timestamp_millis();
    let today = crate::store::hour_of(now) / 24;
    let first = today.saturating_sub(days as u32 - 1);
    let (from, to) = (first * 24, today * 24 + 23);
    let kinds = [
        SendKind::Campaign,
        SendKind::Automation,
        SendKind::Transactional,
    ];
    let hours = state
        .store
        .read(move |r| r.hourly_window(&kinds, from, to))
        .await?;
    let mut per_day: std::collections::BTreeMap<(u32, u8), u64> = Default::default();
    for ((h, c), v) in &hours {
        *per_day.entry((h / 24, *c)).or_insert(0) += v;
    }
    let rows: Vec<Value> = (first..=today)
        .map(|d| {
            let mut m = overview_figures(|c| per_day.get(&(d, c)).copied().unwrap_or(0));
            let day = crate::send::report::time(Some(i64::from(d) * 86_400_000));
            m.insert(
                "day".into(),
                json!(day.as_str().map(|t| t[..10].to_string())),
            );
            Value::Object(m)
        })
        .collect();
    let sum = |c: u8| -> u64 {
        per_day
            .iter()
            .filter(|((_, k), _)| *k == c)
            .map(|(_, v)| *v)
            .sum()
    };
    use crate::send::model::Counter;
    let mut totals = overview_figures(sum);
    let outcomes = sum(Counter::Delivered as u8) + sum(Counter::Failed as u8);
    totals.insert(
        "complaint_rate".into(),
        crate::send::report::rate(sum(Counter::Complaints as u8), outcomes),
    );
    totals.insert(
        "bounce_rate".into(),
        crate::send::report::rate(sum(Counter::Failed as u8), outcomes),
    );
    let senders: Vec<Value> = state
        .config()
        .senders
        .iter()
        .map(|s| json!({"id": s.id, "domain": s.domain, "dkim": !s.dkim.is_empty()}))
        .collect();
    reply::ok(&json!({
        "days": days,
        "from": crate::send::report::time(Some(i64::from(first) * 86_400_000)),
        "currency": currency(state),
        "totals": totals,
        "daily": rows,
        "senders": senders,
    }))
}
