//! Admin UI: the capture outbox (`[delivery] capture`): the messages
//! written instead of sent, newest first; one message with its envelope,
//! header fields, links, text part and HTML (in a sandboxed frame).
//!
//! - `GET /admin/outbox`
//! - `GET /admin/outbox/{id}` (the queue id)
//! - `GET /admin/outbox/{id}/frame?part=N` (the HTML part alone)

use http::{Method, Response, StatusCode};

use crate::http::reply::{ApiError, Body};
use crate::http::ui::{Ctx, Input, enc, preview_frame};

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "outbox/list.html",
        include_str!("../templates/outbox/list.html"),
    ),
    (
        "outbox/message.html",
        include_str!("../templates/outbox/message.html"),
    ),
];

/// Serves `/admin/outbox…`.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    _input: Input,
) -> Result<Response<Body>, ApiError> {
    match (rest, method) {
        (["outbox"], &Method::GET | &Method::HEAD) => {
            let v = ctx.get("/api/v1/outbox").await?;
            Ok(ctx.page("outbox/list.html", "outbox", v))
        }
        ([_, id], &Method::GET | &Method::HEAD) => {
            let mut v = ctx.get(&format!("/api/v1/outbox/{}", enc(id))).await?;
            let n = v["messages"].as_array().map_or(0, Vec::len);
            v["frames"] = (0..n)
                .map(|i| format!("/admin/outbox/{}/frame?part={i}", enc(id)))
                .collect();
            Ok(ctx.page("outbox/message.html", "outbox", v))
        }
        ([_, id, "frame"], &Method::GET | &Method::HEAD) => frame(ctx, id).await,
        _ => Err(super::not_found(rest)),
    }
}

/// A captured message's HTML part alone ([`preview_frame`]).
async fn frame(ctx: &Ctx<'_>, id: &str) -> Result<Response<Body>, ApiError> {
    let v = ctx.get(&format!("/api/v1/outbox/{}", enc(id))).await?;
    let part: usize = ctx.param("part").and_then(|p| p.parse().ok()).unwrap_or(0);
    let html = v["messages"][part]["html"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            "<!doctype html><meta charset=\"utf-8\"><p>This message has no HTML part.</p>".into()
        });
    Ok(preview_frame(
        StatusCode::OK,
        untracked(&html, &ctx.state.config.get().http.public_base()),
    ))
}

/// `html` with its open pixel and tracked links made inert: looking at a
/// captured message in the admin UI must not count as the recipient
/// opening or clicking it (the links are listed beside the frame).
fn untracked(html: &str, public: &str) -> String {
    html.replace(&format!("{public}/o/"), "data:,")
        .replace(&format!("href=\"{public}/c/"), "href=\"#tracked-")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pixel_and_tracked_links_are_inert() {
        let html = r#"<a href="http://h/c/abc">x</a><a href="https://shop/p">y</a><img src="http://h/o/tok">"#;
        assert_eq!(
            super::untracked(html, "http://h"),
            r##"<a href="#tracked-abc">x</a><a href="https://shop/p">y</a><img src="data:,tok">"##
        );
    }
}
