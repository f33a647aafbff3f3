//! `/api/v1/bounces` (a raw DSN), `/api/v1/inbound` (the reports taken) and
//! `/api/v1/suppressions` (the suppression list: list, add, remove).

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::contacts::model::{Suppression, SuppressionSource};
use crate::http::reply::{self, ApiError, Body, ReqBody};
use crate::http::{Actor, AppState};
use crate::inbound::{Envelope, InboundError, InboundRecord, Via};
use crate::store::ReadTables as _;

impl From<InboundError> for ApiError {
    fn from(e: InboundError) -> Self {
        match e {
            InboundError::Store(s) => s.into(),
            InboundError::Parse(m) => {
                tracing::error!(error = %m, "inbound report not parsed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
            }
        }
    }
}

/// The JSON view of an inbound report.
pub fn view(r: &InboundRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("at".into(), json!(crate::http::v1::ms_rfc3339(r.at)));
        if let Some(s) = &r.send {
            o.insert("send".into(), json!(crate::track::source_of(s)));
        }
    }
    v
}

/// `POST /api/v1/bounces` (and `POST /api/v1/complaints` with a message
/// body): a report received elsewhere, as raw RFC 5322 bytes
/// (`message/rfc822`, `message/global`; `/bounces` takes any type). It is parsed,
/// matched and applied as if the listener had taken it.
pub async fn raw_report(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let limit = state.config().inbound.max_message_bytes;
    let raw = reply::read_body(req, limit).await?;
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "empty_report",
            "the body must be the report as received (message/rfc822), not empty",
        ));
    }
    let record = state
        .inbound()
        .receive(Via::Api, Envelope::default(), raw.to_vec())
        .await?;
    state
        .metrics
        .inbound_reports
        .get_or_create(&crate::metrics::OutcomeLabels {
            outcome: record.verdict.as_str(),
        })
        .inc();
    Ok(reply::json_response(StatusCode::OK, &view(&record)))
}

/// Whether a `POST /api/v1/complaints` carries a raw report
/// (`message/rfc822`, `message/global`) rather than the JSON
/// `{"message_id"}`.
pub fn is_raw(req: &Request<ReqBody>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim().to_ascii_lowercase().starts_with("message/"))
}

/// `GET /api/v1/inbound?before=&limit=`: reports taken, newest first.
pub async fn list(
    state: &Arc<AppState>,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(&q, &["before", "limit"])?;
    let before = reply::query_u64(&q, "before")?.unwrap_or(u64::MAX);
    let limit = reply::query_u64(&q, "limit")?.unwrap_or(50).clamp(1, 500) as usize;
    let (items, total) = state
        .store
        .read(move |r| Ok((r.inbound_before(before, limit)?, r.inbound_count()?)))
        .await?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|r| r.id))
        .flatten();
    reply::ok(&json!({
        "reports": items.iter().map(view).collect::<Vec<_>>(),
        "total": total,
        "next": next,
    }))
}

/// `GET /api/v1/inbound/{id}` (`?raw=true`: the bytes kept, as
/// `message/rfc822`).
pub async fn get(
    state: &Arc<AppState>,
    id: &str,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(&q, &["raw"])?;
    let raw = reply::query_bool(&q, "raw")?;
    let Ok(n) = id.parse::<u64>() else {
        return Err(ApiError::not_found(format!("no inbound report `{id}`")));
    };
    if raw {
        return match state.store.read(move |r| r.inbound_raw(n)).await? {
            Some(b) => Ok(reply::text_response(
                StatusCode::OK,
                "message/rfc822",
                String::from_utf8_lossy(&b).into_owned(),
            )),
            None => Err(ApiError::not_found(format!("no inbound report {n}"))),
        };
    }
    match state.store.read(move |r| r.inbound(n)).await? {
        Some(r) => reply::ok(&view(&r)),
        None => Err(ApiError::not_found(format!("no inbound report {n}"))),
    }
}

/// The JSON view of a suppression entry.
fn suppression_view(hash: &[u8], s: &Suppression) -> Value {
    json!({
        "hash": hex::encode(hash),
        "address": s.address,
        "source": s.source.as_str(),
        "reason": s.reason,
        "at": s.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// `GET /api/v1/suppressions?after=&limit=&address=`: the list in hash
/// order, a page at a time (`next` is the `after` of the next page); with
/// `address`, that address's entry alone.
pub async fn suppressions(
    state: &Arc<AppState>,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(&q, &["after", "limit", "address"])?;
    if let Some(a) = reply::query_str(&q, "address") {
        let key = key_of(state, a).await?;
        let k = key.clone();
        return match state.store.read(move |r| r.suppression_entry(&k)).await? {
            Some(s) => reply::ok(
                &json!({"suppressions": [suppression_view(&key, &s)], "total": 1, "next": null}),
            ),
            None => reply::ok(&json!({"suppressions": [], "total": 0, "next": null})),
        };
    }
    let after = match reply::query_str(&q, "after") {
        None | Some("") => Vec::new(),
        Some(h) => hex::decode(h).map_err(|_| {
            ApiError::bad_request(format!("after: `{h}` is not a hash from a previous page"))
        })?,
    };
    let limit = reply::query_u64(&q, "limit")?.unwrap_or(100).clamp(1, 1000) as usize;
    let (items, total) = state
        .store
        .read(move |r| Ok((r.suppressions_after(&after, limit)?, r.suppression_count()?)))
        .await?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|(k, _)| hex::encode(k)))
        .flatten();
    reply::ok(&json!({
        "suppressions": items.iter().map(|(k, s)| suppression_view(k, s)).collect::<Vec<_>>(),
        "total": total,
        "next": next,
    }))
}

/// The salted hash of an address (normalised), or of a 64-hex-digit hash
/// given as is.
async fn key_of(state: &Arc<AppState>, address_or_hash: &str) -> Result<Vec<u8>, ApiError> {
    let s = address_or_hash.trim();
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(s.to_ascii_lowercase())
            .map_err(|_| ApiError::bad_request(format!("`{s}` is not a hash")));
    }
    let email = crate::contacts::normalize_email(s)
        .map_err(|e| ApiError::invalid("invalid_address", format!("address: `{s}`: {e}")))?;
    let salt = state.store.read(|r| r.salt()).await?;
    Ok(crate::store::suppression_key(&salt, &email.key))
}

/// Body of `POST /api/v1/suppressions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    /// The address to suppress.
    address: String,
    /// Why (kept with the entry).
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/suppressions` `{"address", "reason"}`: suppresses an
/// address by hand (201; 200 with the entry that was there already).
pub async fn add_suppression(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let b: AddBody = reply::read_json(req, 16 * 1024).await?;
    let email = crate::contacts::normalize_email(&b.address).map_err(|e| {
        ApiError::invalid("invalid_address", format!("address: `{}`: {e}", b.address))
    })?;
    let reason = b
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "added by an admin".into());
    let entry = Suppression {
        at: state.clock.now(),
        reason,
        source: SuppressionSource::Manual,
        address: Some(email.key.clone()),
    };
    let (key, existing) = state
        .store
        .write(move |t| {
            let key = crate::store::suppression_key(&t.salt()?, &email.key);
            if let Some(old) = t.suppression(&key)? {
                return Ok((key, Some(old)));
            }
            t.put_suppression(&key, &entry)?;
            Ok((key, None))
        })
        .await?;
    let object = format!("suppression:{}", &hex::encode(&key)[..16]);
    match existing {
        Some(old) => reply::ok(&suppression_view(&key, &old)),
        None => {
            let s = state
                .store
                .read({
                    let k = key.clone();
                    move |r| r.suppression_entry(&k)
                })
                .await?;
            let body = s.map_or(Value::Null, |s| suppression_view(&key, &s));
            Ok(crate::http::created(
                reply::json_response(StatusCode::CREATED, &body),
                object,
            ))
        }
    }
}

/// Body of `DELETE /api/v1/suppressions/{address or hash}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    /// Why it is removed: required, kept in the activity log.
    reason: String,
}

/// `DELETE /api/v1/suppressions/{address or hash}` with `{"reason"}` (or
/// `?reason=`): removes an entry. The activity log entry — who, and why —
/// is written in the same transaction as the removal.
pub async fn remove_suppression(
    state: &Arc<AppState>,
    which: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    let who = req
        .extensions()
        .get::<Actor>()
        .map_or_else(|| "api".to_string(), |a| a.name.clone());
    let reason = match reply::query_str(&q, "reason") {
        Some(r) => r.to_string(),
        None => {
            let body = reply::read_body(req, 16 * 1024).await?;
            if body.iter().all(u8::is_ascii_whitespace) {
                String::new()
            } else {
                let b: RemoveBody = serde_json::from_slice(&body).map_err(|e| {
                    ApiError::bad_request(format!("body: {e} (expected {{\"reason\": \"…\"}})"))
                })?;
                b.reason
            }
        }
    };
    if reason.trim().is_empty() {
        return Err(ApiError::invalid(
            "reason_required",
            "say why the address may be mailed again: {\"reason\": \"…\"} or ?reason=",
        ));
    }
    let key = key_of(state, which).await?;
    let now = state.clock.now().timestamp_millis();
    let object = format!("suppression:{}", &hex::encode(&key)[..16]);
    let k = key.clone();
    let o = object.clone();
    let removed = state
        .store
        .write(move |t| {
            // An erasure's hash stays: the person asked never to be added
            // again, and no admin may undo that.
            if let Some(s) = t.suppression(&k)?
                && s.source == SuppressionSource::Erasure
            {
                return Ok(Err(s));
            }
            let old = t.delete_suppression(&k)?;
            if old.is_some() {
                t.append_activity(&crate::users::Activity {
                    at: now,
                    who,
                    action: "DELETE suppression".into(),
                    object: Some(o),
                    status: 200,
                    note: Some(reason.trim().to_string()),
                })?;
            }
            Ok(Ok(old))
        })
        .await?;
    match removed {
        Ok(Some(s)) => reply::ok(&json!({"removed": suppression_view(&key, &s)})),
        Ok(None) => Err(ApiError::not_found(format!(
            "`{which}` is not on the suppression list"
        ))),
        Err(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "erasure",
            "this entry is an erased person's: it stays on the list (they asked never to be added again)",
        )),
    }
}
