//! `/api/v1/campaigns`: create, list, get, edit, delete, and the lifecycle
//! actions (`test`, `schedule`, `start`, `pause`, `resume`, `cancel`,
//! `duplicate`, `winner`), with progress.

use std::sync::Arc;

use crate::http::reply::ReqBody;
use http::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::AppState;
use super::super::reply::{self, ApiError, Body};
use crate::campaign::model::{Campaign, Counter, LeftOut, Spec, Status, WINNER, slot};
use crate::campaign::runner::total;
use crate::campaign::{self, CampaignError};
use crate::store::SendCounts as CampaignCounts;

const LIMIT: usize = 1 << 20;

impl From<CampaignError> for ApiError {
    fn from(e: CampaignError) -> Self {
        match e {
            CampaignError::NotFound(m) => ApiError::not_found(m),
            CampaignError::Invalid(m) => ApiError::invalid("invalid_campaign", m),
            CampaignError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            CampaignError::Store(s) => s.into(),
        }
    }
}

fn id_of(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::not_found(format!("`{s}` is not a campaign number")))
}

fn time(ms: Option<i64>) -> Value {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        Some(t) => Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        None => Value::Null,
    }
}

fn counts_json(counts: &CampaignCounts, slot: Option<u32>) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    // A campaign shows what it queued per part (`queued`), which is also
    // right for campaigns sent before the send layer counted `sent`.
    for c in Counter::ALL.into_iter().filter(|c| *c != Counter::Sent) {
        let v = match slot {
            Some(s) => counts.get(&(s, c as u8)).copied().unwrap_or(0),
            None => total(counts, c),
        };
        m.insert(c.name().into(), Value::from(v));
    }
    m
}

/// The campaign as the API shows it, with progress from its counters.
pub fn view(c: &Campaign, counts: &CampaignCounts, now: i64) -> Value {
    let queued = c.queued();
    let skipped: u64 = c.run.parts.iter().map(|p| p.skipped).sum();
    let render_failed: u64 = c.run.parts.iter().map(|p| p.failed).sum();
    let size: u64 = c.run.parts.iter().map(|p| p.size).sum();
    let done: u64 = c.run.parts.iter().map(|p| p.cursor).sum();
    let finals = total(counts, Counter::Delivered) + total(counts, Counter::Failed);
    let mut progress = counts_json(counts, None);
    progress.insert("audience".into(), c.run.audience.into());
    progress.insert("left_out".into(), LeftOut::view(c.run.left_out.as_ref()));
    progress.insert("queued".into(), queued.into());
    progress.insert("skipped".into(), skipped.into());
    progress.insert("render_failed".into(), render_failed.into());
    progress.insert(
        "in_queue".into(),
        queued
            .saturating_sub(finals + total(counts, Counter::Deferred))
            .into(),
    );
    progress.insert("remaining".into(), size.saturating_sub(done).into());
    // Estimated completion from the pace so far, while sending.
    let sending_since = c.run.parts.iter().filter_map(|p| p.started).min();
    let eta = match (c.status, sending_since) {
        (Status::Running, Some(since)) if done > 0 && size > done && now > since => {
            let per_ms = done as f64 / (now - since) as f64;
            let rate = per_ms * 60_000.0;
            progress.insert(
                "rate_per_minute".into(),
                json!((rate * 10.0).round() / 10.0),
            );
            Some(now.saturating_add(((size - done) as f64 / per_ms) as i64))
        }
        _ => None,
    };
    progress.insert("estimated_completion".into(), time(eta));
    let names = c.spec.variant_names();
    let parts: Vec<Value> = c
        .run
        .parts
        .iter()
        .map(|p| {
            let variant = if p.variant == WINNER {
                c.run.winner
            } else {
                Some(p.variant)
            };
            let mut v = json!({
                "stage": p.stage,
                "variant": variant,
                "name": match (p.stage, variant) {
                    (0, Some(v)) if c.spec.ab.is_some() => names.get(v as usize).cloned(),
                    _ => None,
                },
                "role": if p.variant == WINNER { "winner" } else if c.spec.ab.is_some() && p.stage == 0 { "test" } else { "audience" },
                "size": p.size, "queued": p.queued, "skipped": p.skipped,
                "render_failed": p.failed, "remaining": p.size - p.cursor.min(p.size),
                "started": time(p.started), "finished": time(p.finished),
            });
            if let (Some(var), Some(o)) = (variant, v.as_object_mut()) {
                o.insert("counts".into(), Value::Object(counts_json(counts, Some(slot(p.stage, var)))));
            }
            v
        })
        .collect();
    json!({
        "id": c.id,
        "name": c.spec.name,
        "status": c.status.as_str(),
        "phase": c.phase(),
        "created": time(Some(c.created)),
        "updated": time(Some(c.updated)),
        "spec": c.spec,
        "scheduled_for": time(c.run.scheduled_for),
        "started": time(c.run.started),
        "finished": time(c.run.finished),
        "ab": c.spec.ab.as_ref().map(|_| json!({
            "seed": c.run.seed,
            "test_ends": time(c.run.test_ends),
            "winner": c.run.winner,
            "winner_name": c.run.winner.and_then(|w| names.get(w as usize).cloned()),
            "winner_reason": c.run.winner_reason,
        })),
        "stage": c.stage(),
        "next_stage_at": time(c.run.next_stage_at),
        "note": c.run.note,
        "progress": progress,
        "parts": parts,
    })
}

async fn show(
    state: &Arc<AppState>,
    c: Campaign,
    status: StatusCode,
) -> Result<Response<Body>, ApiError> {
    let id = c.id;
    let object = format!("campaign:{id}");
    let (counts, owner) = state
        .store
        .read(move |r| {
            Ok((
                r.send_counts(crate::send::SendKind::Campaign, id)?,
                r.owner(&object)?,
            ))
        })
        .await?;
    let now = state.clock.now().timestamp_millis();
    let mut v = view(&c, &counts, now);
    v["owner"] = json!(owner);
    // A warming-up sender's allowance: a campaign larger than it carries on
    // in the next period, and this says how far today's has gone.
    let sender = c.spec.sender.clone().or_else(|| {
        let snap = state.snapshot();
        snap.templates
            .get(&c.spec.template)
            .map(|t| t.sender.clone())
    });
    if let Some(w) = sender.and_then(|s| state.delivery.warmup(&s)) {
        v["warmup"] = json!(w);
    }
    Ok(reply::json_response(status, &v))
}

fn parse_day(s: &str, key: &str) -> Result<i64, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc().timestamp_millis())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{key}` {s:?} is not a date (YYYY-MM-DD or RFC 3339)"
            ))
        })
}

/// `GET /api/v1/campaigns[?status=&owner=&number=&from=&to=&before=&limit=]`:
/// campaigns, newest first; `from`/`to` filter by creation date (to is
/// inclusive of its day), `owner` by the user who owns them. With `limit`
/// a page at a time: `next` is the `before` (a campaign id) of the next.
pub async fn list(
    state: &Arc<AppState>,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(
        &q,
        &["status", "owner", "number", "from", "to", "before", "limit"],
    )?;
    let owner = reply::query_str(&q, "owner").map(str::to_string);
    let before = reply::query_u64(&q, "before")?;
    let limit = reply::query_u64(&q, "limit")?.map(|l| l.clamp(1, 500) as usize);
    let status = match reply::query_str(&q, "status") {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`status` {s:?} is not one of draft, scheduled, running, paused, cancelled, completed"
            ))
        })?),
    };
    let number = reply::query_u64(&q, "number")?;
    let from = reply::query_str(&q, "from")
        .map(|s| parse_day(s, "from"))
        .transpose()?;
    let to = match reply::query_str(&q, "to") {
        Some(s) if s.len() == 10 => Some(parse_day(s, "to")? + 86_400_000 - 1),
        Some(s) => Some(parse_day(s, "to")?),
        None => None,
    };
    let (all, owners) = state
        .store
        .read(|r| Ok((crate::campaign::all(r)?, r.owners_of("campaign")?)))
        .await?;
    let now = state.clock.now().timestamp_millis();
    let mut out = Vec::new();
    let mut next = None;
    for c in all.into_iter().rev() {
        let owned_by = owners.get(&c.id.to_string());
        if status.is_some_and(|s| s != c.status)
            || number.is_some_and(|n| n != c.id)
            || from.is_some_and(|f| c.created < f)
            || to.is_some_and(|t| c.created > t)
            || before.is_some_and(|b| c.id >= b)
            || owner.as_ref().is_some_and(|o| owned_by != Some(o))
        {
            continue;
        }
        if limit.is_some_and(|l| out.len() >= l) {
            next = out.last().and_then(|v: &Value| v["id"].as_u64());
            break;
        }
        let id = c.id;
        let counts = state
            .store
            .read(move |r| r.send_counts(crate::send::SendKind::Campaign, id))
            .await?;
        let v = view(&c, &counts, now);
        out.push(json!({
            "id": c.id, "name": c.spec.name, "status": c.status.as_str(),
            "phase": c.phase(), "created": v["created"], "template": c.spec.template,
            "scheduled_for": v["scheduled_for"],
            "started": v["started"], "finished": v["finished"], "progress": v["progress"],
            "owner": owned_by,
        }));
    }
    reply::ok(&json!({ "campaigns": out, "next": next }))
}

/// `POST /api/v1/campaigns`: a new draft.
pub async fn create(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let spec: Spec = reply::read_json(req, LIMIT).await?;
    let c = campaign::create(&state.campaigns, spec).await?;
    let object = format!("campaign:{}", c.id);
    Ok(crate::http::created(
        show(state, c, StatusCode::CREATED).await?,
        object,
    ))
}

/// `GET /api/v1/campaigns/{id}`.
pub async fn get(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let id = id_of(id)?;
    state.hits.drain().await?;
    let c = campaign::get(&state.campaigns, id).await?;
    show(state, c, StatusCode::OK).await
}

/// `PUT /api/v1/campaigns/{id}`: replaces a draft's spec.
pub async fn edit(
    state: &Arc<AppState>,
    id: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let id = id_of(id)?;
    let spec: Spec = reply::read_json(req, LIMIT).await?;
    let c = campaign::edit(&state.campaigns, id, spec).await?;
    show(state, c, StatusCode::OK).await
}

/// `DELETE /api/v1/campaigns/{id}` (drafts only).
pub async fn delete(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let id = id_of(id)?;
    campaign::delete(&state.campaigns, id).await?;
    reply::ok(&json!({ "deleted": id }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestBody {
    addresses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WinnerBody {
    variant: u32,
}

/// `POST /api/v1/campaigns/{id}/{action}`.
pub async fn action(
    state: &Arc<AppState>,
    id: &str,
    action: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let id = id_of(id)?;
    let svc = &state.campaigns;
    let c = match action {
        "test" => {
            let b: TestBody = reply::read_json(req, LIMIT).await?;
            let sent = svc.test_send(id, b.addresses).await?;
            let list: Vec<Value> = sent
                .into_iter()
                .map(|(a, v, q)| json!({ "address": a, "variant": v, "queue_id": q }))
                .collect();
            return Ok(reply::json_response(
                StatusCode::ACCEPTED,
                &json!({ "test_messages": list }),
            ));
        }
        "schedule" => {
            let b: ScheduleBody = reply::read_json(req, LIMIT).await?;
            let at = chrono::DateTime::parse_from_rfc3339(&b.at)
                .map_err(|e| {
                    ApiError::bad_request(format!("`at` {:?} is not an RFC 3339 time: {e}", b.at))
                })?
                .timestamp_millis();
            campaign::schedule(svc, id, at).await?
        }
        "start" => {
            // Bulk intake: refused while the store's disk is below its
            // reserve (507) or the store is unavailable (503).
            state.store.bulk_allowed()?;
            campaign::start(svc, id).await?
        }
        "pause" => campaign::pause(svc, id).await?,
        "resume" => {
            state.store.bulk_allowed()?;
            campaign::resume(svc, id).await?
        }
        "cancel" => campaign::cancel(svc, id).await?,
        "duplicate" => {
            let c = campaign::duplicate(svc, id).await?;
            let object = format!("campaign:{}", c.id);
            return Ok(crate::http::created(
                show(state, c, StatusCode::CREATED).await?,
                object,
            ));
        }
        "winner" => {
            let b: WinnerBody = reply::read_json(req, LIMIT).await?;
            campaign::choose_winner(svc, id, b.variant).await?
        }
        other => {
            return Err(ApiError::not_found(format!(
                "no campaign action `{other}` (test, schedule, start, pause, resume, cancel, duplicate, winner)"
            )));
        }
    };
    show(state, c, StatusCode::OK).await
}
