//! Admin UI: the dashboard.

use http::{Method, Response};
use serde_json::json;

use crate::http::reply::{ApiError, Body};
use crate::http::ui::{Ctx, Input};

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[(
    "dashboard.html",
    include_str!("../templates/dashboard.html"),
)];

/// Serves `/admin`.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    _input: Input,
) -> Result<Response<Body>, ApiError> {
    match (rest, method) {
        ([], &Method::GET | &Method::HEAD) => {
            Ok(ctx.page("dashboard.html", "dashboard", json!({})))
        }
        _ => Err(super::not_found(rest)),
    }
}
