//! Admin UI: imports pages.

use http::{Method, Response};

use crate::http::reply::{ApiError, Body};
use crate::http::ui::{Ctx, Input};

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[];

/// Serves `/admin/imports…`.
pub async fn route(
    _ctx: &Ctx<'_>,
    _method: &Method,
    rest: &[&str],
    _input: Input,
) -> Result<Response<Body>, ApiError> {
    Err(super::not_found(rest))
}
