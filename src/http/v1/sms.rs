//! `/api/v1/sms`: the SMS queue, newest first, and one text message with
//! its state, attempts and what the gateway said.

use std::sync::Arc;

use http::{Request, Response};
use serde_json::json;

use super::super::AppState;
use super::super::reply::{self, ApiError, Body, ReqBody};
use crate::store::SmsTables as _;

/// `GET /api/v1/sms?before=&limit=`
pub async fn list(
    state: &Arc<AppState>,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(&q, &["before", "limit"])?;
    let before = reply::query_u64(&q, "before")?.unwrap_or(u64::MAX);
    let limit = reply::query_u64(&q, "limit")?.unwrap_or(100).clamp(1, 1000) as usize;
    let page = state.store.read(move |r| r.sms_page(before, limit)).await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|r| r.id))
        .flatten();
    reply::ok(&json!({
        "sms": page.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
        "next_before": next,
    }))
}

/// `GET /api/v1/sms/{id}`
pub async fn get(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let n =
        super::numeric_id(id).ok_or_else(|| ApiError::not_found(format!("no SMS with id {id}")))?;
    let r = state.store.read(move |v| v.sms(n)).await?;
    let r = r.ok_or_else(|| ApiError::not_found(format!("no SMS with id {id}")))?;
    reply::ok(&r.to_json())
}
