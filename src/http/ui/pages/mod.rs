//! The admin UI's pages, one module per area. Each module has `route`
//! (its part of the URL space, after `/admin/`) and `TEMPLATES` (its
//! templates, compiled in).

pub mod automations;
pub mod bounces;
pub mod campaigns;
pub mod contacts;
pub mod dashboard;
pub mod imports;
pub mod outbox;
pub mod queue;
pub mod segments;
pub mod templates;
pub mod users;

use http::{Method, Response};

use super::{Ctx, Input};
use crate::http::reply::{ApiError, Body};

/// Every page module's templates.
pub fn templates() -> impl Iterator<Item = (&'static str, &'static str)> {
    [
        automations::TEMPLATES,
        bounces::TEMPLATES,
        campaigns::TEMPLATES,
        contacts::TEMPLATES,
        dashboard::TEMPLATES,
        imports::TEMPLATES,
        outbox::TEMPLATES,
        queue::TEMPLATES,
        segments::TEMPLATES,
        templates::TEMPLATES,
        users::TEMPLATES,
    ]
    .into_iter()
    .flat_map(|t| t.iter().copied())
}

/// Hands a logged-in request to its page module by the path's first part.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    input: Input,
) -> Result<Response<Body>, ApiError> {
    match rest.first().copied() {
        None => dashboard::route(ctx, method, rest, input).await,
        Some("contacts" | "lists" | "fields") => contacts::route(ctx, method, rest, input).await,
        Some("imports") => imports::route(ctx, method, rest, input).await,
        Some("segments") => segments::route(ctx, method, rest, input).await,
        Some("templates") => templates::route(ctx, method, rest, input).await,
        Some("campaigns") => campaigns::route(ctx, method, rest, input).await,
        Some("automations") => automations::route(ctx, method, rest, input).await,
        Some("queue") => queue::route(ctx, method, rest, input).await,
        Some("outbox") => outbox::route(ctx, method, rest, input).await,
        Some("bounces") => bounces::route(ctx, method, rest, input).await,
        Some("users" | "activity") => users::route(ctx, method, rest, input).await,
        _ => Err(not_found(rest)),
    }
}

/// No page at this path.
pub fn not_found(rest: &[&str]) -> ApiError {
    ApiError::not_found(format!("no page /admin/{}", rest.join("/")))
}
