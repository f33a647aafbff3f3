//! `/api/v1/coupons`: coupon pools. `POST /api/v1/coupons/{pool}` adds codes
//! (JSON `{"codes": [...], "low_water": N}` or a `text/csv` file, one code
//! per line, `?low_water=N`); `GET` shows a pool's status or every pool's.

use std::sync::Arc;

use crate::http::reply::ReqBody;
use http::{Request, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::json;

use crate::coupons::{self, CouponError};
use crate::http::AppState;
use crate::http::reply::{self, ApiError, Body};
use crate::store::ReadTables as _;

/// The body limit of an upload (at least; `[http] max_body_bytes` when it
/// is larger): room for [`coupons::MAX_CODES_PER_REQUEST`] codes of the
/// longest length, quoted.
pub const MIN_BODY_LIMIT: usize = 16 << 20;

/// Body of `POST /api/v1/coupons/{pool}` as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadBody {
    /// The codes, in the order they are to be handed out.
    pub codes: Vec<String>,
    /// The pool's new low-water mark.
    #[serde(default)]
    pub low_water: Option<u64>,
}

impl From<CouponError> for ApiError {
    fn from(e: CouponError) -> Self {
        ApiError::invalid(e.code(), e.to_string())
    }
}

fn is_csv(req: &Request<ReqBody>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start().to_ascii_lowercase();
            ct.starts_with("text/csv")
                || ct.starts_with("application/csv")
                || ct.starts_with("text/plain")
        })
}

/// `POST /api/v1/coupons/{pool}[?low_water=N]`
pub async fn upload(
    state: &Arc<AppState>,
    pool: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    coupons::check_pool_name(pool)?;
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(&q, &["low_water"])?;
    let query_low = reply::query_u64(&q, "low_water")?;
    let limit = state.config().http.max_body_bytes.max(MIN_BODY_LIMIT);
    let (codes, low_water) = if is_csv(&req) {
        let bytes = reply::read_body(req, limit).await?;
        // Up to 100,000 codes: parsed off the runtime's threads.
        let codes = tokio::task::spawn_blocking(move || coupons::codes_from_csv(&bytes))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("parse task failed: {e}"),
                )
            })??;
        (codes, query_low)
    } else {
        let body: UploadBody = reply::read_json(req, limit).await?;
        if query_low.is_some() && body.low_water.is_some() {
            return Err(ApiError::bad_request(
                "`low_water` is given both in the query and in the body; give it once",
            ));
        }
        let codes = body.codes;
        let codes = tokio::task::spawn_blocking(move || {
            coupons::check_codes(&codes)?;
            Ok::<_, CouponError>(codes)
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("check task failed: {e}"),
            )
        })??;
        (codes, body.low_water.or(query_low))
    };
    let now = state.clock.now().timestamp_millis();
    let name = pool.to_string();
    let (added, status) = state
        .store
        .write(move |w| {
            let added = w.add_coupons(&name, &codes, low_water, now)?;
            Ok((added, w.coupon_pool(&name)?))
        })
        .await?;
    if added.added > 0 {
        // Steps held for want of a code go now.
        state.automations.release_coupon_holds(pool).await?;
    }
    reply::ok(&json!({
        "pool": pool,
        "added": added.added,
        "duplicates": added.duplicates,
        "status": status,
    }))
}

/// `GET /api/v1/coupons/{pool}`
pub async fn get(state: &Arc<AppState>, pool: &str) -> Result<Response<Body>, ApiError> {
    let name = pool.to_string();
    let status = if coupons::valid_pool_name(pool) {
        state.store.read(move |r| r.coupon_pool(&name)).await?
    } else {
        None
    };
    match status {
        Some(s) => reply::ok(&s),
        None => Err(ApiError::not_found(format!("no coupon pool `{pool}`"))),
    }
}

/// `GET /api/v1/coupons`
pub async fn list(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let pools = state.store.read(|r| r.coupon_pools()).await?;
    reply::ok(&json!({ "pools": pools }))
}
