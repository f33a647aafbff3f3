//! `/api/v1/automations`: flows from files (`config/automations/*.toml`,
//! read-only here) and created through the API (JSON, or TOML with
//! `Content-Type: application/toml`), their status, pause and resume,
//! previews and test sends. Each handler parses, calls one
//! `automation::Automations` operation, and answers.

use std::sync::Arc;

use crate::http::reply::ReqBody;
use http::{Request, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::automation::AutomationError;
use crate::http::AppState;
use crate::http::reply::{self, ApiError, Body, json_response};
use crate::segment::lang;

impl From<AutomationError> for ApiError {
    fn from(e: AutomationError) -> ApiError {
        let m = e.to_string();
        match e {
            AutomationError::NotFound(_) | AutomationError::NoContact(_) => ApiError::not_found(m),
            AutomationError::Invalid(_) => ApiError::invalid("invalid_automation", m),
            AutomationError::Conflict(_) | AutomationError::ReadOnly(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", m)
            }
            AutomationError::Nothing(_) => ApiError::invalid("nothing_to_send", m),
            AutomationError::Send(_) => ApiError::invalid("render_failed", m),
            AutomationError::Store(e) => e.into(),
        }
    }
}

/// `GET /api/v1/automations`: every flow with its status and `owner`.
pub async fn list(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let mut flows = state.automations.list().await?;
    let owners = state.store.read(|r| r.owners_of("automation")).await?;
    if let Value::Array(a) = &mut flows {
        for f in a {
            let owner = f["name"].as_str().and_then(|n| owners.get(n)).cloned();
            f["owner"] = json!(owner);
        }
    }
    Ok(json_response(StatusCode::OK, &flows))
}

/// `GET /api/v1/automations/{name}`: the flow's status and `owner`.
pub async fn get(state: &Arc<AppState>, name: &str) -> Result<Response<Body>, ApiError> {
    let mut flow = state.automations.status(name).await?;
    let object = format!("automation:{name}");
    let owner = state.store.read(move |r| r.owner(&object)).await?;
    flow["owner"] = json!(owner);
    Ok(json_response(StatusCode::OK, &flow))
}

/// `PUT /api/v1/automations/{name}`: create or replace an API flow.
pub async fn put(
    state: &Arc<AppState>,
    name: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let is_toml = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("toml"));
    let limit = state.config().http.max_body_bytes;
    let bytes = reply::read_body(req, limit).await?;
    let text =
        std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    let def: Value = if is_toml {
        let root = lang::from_toml(text).map_err(|p| {
            ApiError::invalid(
                "invalid_automation",
                p.iter()
                    .map(crate::automation::ops::describe)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        lang::to_json(&root)
    } else {
        serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?
    };
    let created = state.automations.put(name, def).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(
        status,
        &state.automations.status(name).await?,
    ))
}

/// `DELETE /api/v1/automations/{name}`
pub async fn delete(state: &Arc<AppState>, name: &str) -> Result<Response<Body>, ApiError> {
    state.automations.delete(name).await?;
    Ok(json_response(StatusCode::OK, &json!({"deleted": name})))
}

/// `POST /api/v1/automations/{name}/pause` and `/resume`
pub async fn pause(
    state: &Arc<AppState>,
    name: &str,
    paused: bool,
) -> Result<Response<Body>, ApiError> {
    state.automations.set_paused(name, paused).await?;
    Ok(json_response(
        StatusCode::OK,
        &state.automations.status(name).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    contact: String,
    #[serde(default)]
    trigger: Value,
}

/// `POST /api/v1/automations/{name}/preview` `{"contact": "a@b", "trigger": {"order": "A-1"}}`
pub async fn preview(
    state: &Arc<AppState>,
    name: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let b: PreviewBody = reply::read_json(req, state.config().http.max_body_bytes).await?;
    let out = state
        .automations
        .preview(name, &b.contact, &b.trigger)
        .await?;
    Ok(json_response(StatusCode::OK, &out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestBody {
    contact: String,
    to: String,
    #[serde(default)]
    step: u32,
}

/// `POST /api/v1/automations/{name}/test` `{"contact": "a@b", "to": "seed@c", "step": 0}`
pub async fn test(
    state: &Arc<AppState>,
    name: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let b: TestBody = reply::read_json(req, state.config().http.max_body_bytes).await?;
    let out = state
        .automations
        .test(name, &b.contact, &b.to, b.step)
        .await?;
    Ok(json_response(StatusCode::ACCEPTED, &out))
}
