//! `POST /api/v1/events`: the shop's events (customers, orders, carts,
//! products, wait-lists, logins, signups), a JSON array per request.
//!
//! Every event gets its own answer (`accepted`, `duplicate` or `rejected`
//! with the reason); one bad event never rejects the batch. The accepted ones
//! are committed to the store (and visible to segments) before the reply.

use std::sync::Arc;

use crate::http::reply::ReqBody;
use http::{Request, Response};
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::reply::{self, ApiError, Body};
use crate::shop::apply::{self, Outcome};
use crate::shop::wire;

/// The smallest body limit of this endpoint: a batch of 10,000 events of
/// about 500 bytes each fits with room to spare, whatever
/// `http.max_body_bytes` says for other endpoints.
pub const MIN_BODY_LIMIT: usize = 64 << 20;

/// `POST /api/v1/events`.
pub async fn ingest(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    // Bulk intake: refused while the store's disk is below its reserve
    // (507) or the store is unavailable (503).
    state.store.bulk_allowed()?;
    let config = state.config();
    let limit = config.http.max_body_bytes.max(MIN_BODY_LIMIT);
    let bytes = reply::read_body(req, limit).await?;
    let sites = wire::Sites::of(&config);
    let clock_now = state.clock.now();
    let parsed = tokio::task::spawn_blocking(move || wire::parse_batch(&bytes, &sites, clock_now))
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot parse the events: {e}")))?
        .map_err(|m| ApiError::new(http::StatusCode::BAD_REQUEST, "invalid_events", m))?;
    let n = parsed.len();
    let mut results: Vec<Value> = vec![Value::Null; n];
    let mut good = Vec::with_capacity(n);
    let mut labels: Vec<(&'static str, &'static str)> = Vec::with_capacity(n);
    for p in parsed {
        match p {
            Ok(e) => {
                results[e.index] = json!({"index": e.index, "type": e.kind, "id": e.id});
                good.push(e);
            }
            Err(m) => {
                labels.push(("invalid", "rejected"));
                results[m.index] = json!({
                    "index": m.index,
                    "type": m.kind,
                    "id": m.id,
                    "status": "rejected",
                    "reason": m.reason,
                });
            }
        }
    }
    let kinds: Vec<(usize, &'static str)> = good.iter().map(|e| (e.index, e.kind)).collect();
    let now = state.clock.now();
    let keys = crate::track::AttributionRules::of(&state.config());
    // Orders are attributed to the last click by hand: clicks answered
    // before this request must be applied first.
    if good.iter().any(|e| e.kind == "order") {
        state.hits.drain().await?;
    }
    let outcomes = if good.is_empty() {
        Vec::new()
    } else {
        let rules = keys.clone();
        state
            .store
            .write(move |t| apply::apply_batch(t, good, now, &rules))
            .await?
    };
    for (by, cents) in keys.take_attributed() {
        let l = crate::metrics::AttributionLabels { by };
        state.metrics.attributed_orders.get_or_create(&l).inc();
        state
            .metrics
            .attributed_revenue_cents
            .get_or_create(&l)
            .inc_by(cents.max(0) as u64);
    }
    let (mut accepted, mut duplicate) = (0u64, 0u64);
    for ((index, outcome), (_, kind)) in outcomes.into_iter().zip(&kinds) {
        let slot = &mut results[index];
        match outcome {
            Outcome::Accepted(note) => {
                accepted += 1;
                slot["status"] = "accepted".into();
                if let Some(n) = note {
                    slot["note"] = n.into();
                }
                labels.push((kind, "accepted"));
            }
            Outcome::Duplicate => {
                duplicate += 1;
                slot["status"] = "duplicate".into();
                labels.push((kind, "duplicate"));
            }
            Outcome::Rejected(reason) => {
                slot["status"] = "rejected".into();
                slot["reason"] = reason.into();
                labels.push((kind, "rejected"));
            }
        }
    }
    let rejected = n as u64 - accepted - duplicate;
    for (kind, status) in labels {
        state.metrics.event(kind, status);
    }
    reply::ok(&json!({
        "accepted": accepted,
        "duplicate": duplicate,
        "rejected": rejected,
        "results": results,
    }))
}
