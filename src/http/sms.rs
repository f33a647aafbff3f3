//! `/sms/{gateway}/status` and `/sms/{gateway}/inbound`: the gateways'
//! delivery reports and the text messages people send to the shop's
//! number. Public (gateways call them), checked by the gateway's key or
//! signature (`sms::gateway::verify`).

use std::sync::Arc;

use http::{Request, Response, StatusCode};

use super::AppState;
use super::reply::{self, ApiError, Body, ReqBody};
use crate::sms::callback::{self, CallbackFailure};
use crate::sms::gateway::{Callback, CallbackError};

/// The largest callback body read.
const MAX_CALLBACK: usize = 64 << 10;

/// Which callback.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Delivery reports.
    Status,
    /// Incoming messages.
    Inbound,
}

/// Handles one callback of gateway `gateway`.
pub async fn handle(
    state: &Arc<AppState>,
    gateway: &str,
    kind: Kind,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let config = state.config();
    let method = req.method().clone();
    let headers = req.headers().clone();
    let path_q = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let query = reply::query_pairs(req.uri().query());
    let body = reply::read_body(req, MAX_CALLBACK).await?;
    let url = format!("{}{path_q}", config.http.public_base());
    let now = state.clock.now();
    let c = Callback {
        method: &method,
        url: &url,
        query: &query,
        headers: &headers,
        body: &body,
        now_secs: now.timestamp(),
    };
    let ms = now.timestamp_millis();
    let taken = match kind {
        Kind::Status => callback::status(&state.store, &config, gateway, &c, ms).await,
        Kind::Inbound => callback::incoming(&state.store, &config, gateway, &c, ms).await,
    };
    match taken {
        Ok(t) => {
            if t.unknown > 0 {
                tracing::warn!(
                    gateway,
                    unknown = t.unknown,
                    "SMS callback about messages Herald does not know"
                );
            }
            // Campaigns waiting for their messages to leave the queue look
            // again (a report may have moved one on).
            if matches!(kind, Kind::Status) && t.changed > 0 {
                state.delivery.outcomes_recorded().notify_one();
            }
            if matches!(kind, Kind::Inbound) && t.changed > 0 {
                tracing::info!(
                    gateway,
                    contacts = t.changed,
                    "SMS consent changed by a reply"
                );
            }
            Ok(reply::text_response(
                StatusCode::OK,
                t.content_type,
                t.body.to_string(),
            ))
        }
        Err(CallbackFailure::UnknownGateway(g)) => {
            Err(ApiError::not_found(format!("no [[sms_gateway]] `{g}`")))
        }
        Err(CallbackFailure::Refused(CallbackError::Forbidden(m))) => {
            tracing::warn!(gateway, error = %m, "SMS callback refused");
            Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", m))
        }
        Err(CallbackFailure::Refused(CallbackError::Malformed(m))) => Err(ApiError::bad_request(m)),
        Err(CallbackFailure::Store(e)) => Err(e.into()),
    }
}
