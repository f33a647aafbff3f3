//! Admin UI: saved segments.
//!
//! - `GET /admin/segments`: every segment, its source and live count.
//! - `GET /admin/segments/new`, `POST /admin/segments/new` (`name`,
//!   `definition`: the segment's TOML).
//! - `GET /admin/segments/{name}`: definition, problems, live count and a
//!   sample of members; for an API segment the edit form
//!   (`POST /admin/segments/{name}`: `definition`, `format`) and
//!   `POST /admin/segments/{name}/delete`. File segments are read-only.
//!
//! A refused definition comes back in its form with the user's text kept
//! and every problem shown with its line and column.

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::contacts::{form, part};
use crate::http::reply::{self, ApiError, Body};
use crate::http::ui::enc;
use crate::http::ui::{Ctx, Form, Input, after, body_bytes, error_page, redirect_with};

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "segments/list.html",
        include_str!("../templates/segments/list.html"),
    ),
    (
        "segments/segment.html",
        include_str!("../templates/segments/segment.html"),
    ),
];

/// Members shown on a segment's page.
const SAMPLE: u32 = 20;

/// What a new segment's form starts with.
const EXAMPLE: &str = "description = \"Customers who bought shoes in the last 30 days\"\nbought_category = \"shoes\"\nafter = \"30 days ago\"\n";

/// Serves `/admin/segments…`.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    input: Input,
) -> Result<Response<Body>, ApiError> {
    let get = matches!(*method, Method::GET | Method::HEAD);
    let post = *method == Method::POST;
    match rest {
        ["segments"] if get => segments(ctx).await,
        ["segments", "new"] if get => Ok(new_form(ctx, "", EXAMPLE, None)),
        ["segments", "new"] if post => create(ctx, form(input)?).await,
        ["segments", name] if get => segment(ctx, name, None).await,
        ["segments", name] if post => save(ctx, name, form(input)?).await,
        ["segments", name, "delete"] if post => {
            form(input)?;
            let r = ctx
                .api(
                    Method::DELETE,
                    &format!("/api/v1/segments/{}", enc(name)),
                    None,
                )
                .await;
            match r {
                Ok(_) => Ok(redirect_with(
                    "/admin/segments",
                    "notice",
                    &format!("Segment `{name}` deleted."),
                )),
                r => Ok(after(&format!("/admin/segments/{}", enc(name)), r, "")),
            }
        }
        _ => Err(super::not_found(rest)),
    }
}

/// How long a segment's count on the list page stays good.
const COUNT_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Time the list page may spend counting segments whose count is stale;
/// the rest show their last count (with its age) or a link to count.
const COUNT_BUDGET: std::time::Duration = std::time::Duration::from_millis(25);

/// `GET /admin/segments`: every segment with its count. A count younger
/// than [`COUNT_TTL`] comes from the UI's cache; stale ones are evaluated
/// while [`COUNT_BUDGET`] lasts (at a million contacts one evaluation takes
/// tens of milliseconds), so the page answers quickly however many
/// segments there are; a segment's own page always counts live.
async fn segments(ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let all = ctx.get("/api/v1/segments").await?;
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for s in all["segments"].as_array().into_iter().flatten() {
        let mut s = s.clone();
        let name = s["name"].as_str().unwrap_or_default().to_string();
        if s["status"] == "ok" {
            let cached = ctx.state.ui.segment_count(&name);
            let fresh = cached.as_ref().is_some_and(|c| c.age < COUNT_TTL);
            if !fresh && started.elapsed() < COUNT_BUDGET {
                match ctx
                    .get(&format!("/api/v1/segments/{}/preview?limit=0", enc(&name)))
                    .await
                {
                    Ok(p) => {
                        ctx.state.ui.set_segment_count(
                            &name,
                            p["count"].clone(),
                            p["granted"].clone(),
                        );
                        s["count"] = p["count"].clone();
                        s["granted"] = p["granted"].clone();
                        s["counted_s"] = json!(0);
                    }
                    Err(e) => s["count_error"] = json!(e.message),
                }
            } else if let Some(c) = cached {
                s["count"] = c.count;
                s["granted"] = c.granted;
                s["counted_s"] = json!(c.age.as_secs());
            } else {
                s["uncounted"] = json!(true);
            }
        }
        rows.push(s);
    }
    Ok(ctx.page("segments/list.html", "segments", json!({"segments": rows})))
}

/// A refused definition: the API's message and each located problem.
#[derive(Debug)]
struct Refusal {
    message: String,
    problems: Vec<Value>,
}

/// Splits the API's `line L, column C: message; …` into located problems,
/// each with the line of `text` it points at.
fn locate(message: &str, text: &str) -> Vec<Value> {
    message
        .split("; line ")
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                located(part, text)
            } else {
                located(&format!("line {part}"), text)
            }
        })
        .collect()
}

fn located(part: &str, text: &str) -> Value {
    let parsed = part.strip_prefix("line ").and_then(|r| {
        let (line, r) = r.split_once(", column ")?;
        let (col, msg) = r.split_once(": ")?;
        Some((line.parse::<usize>().ok()?, col.parse::<usize>().ok()?, msg))
    });
    match parsed {
        Some((line, col, msg)) => {
            let gutter = format!("{line} | ");
            let source = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
            // The message may echo user text (a name, an unknown key), so
            // its column is not trusted: the caret stays on the line.
            let col = col.min(source.chars().count() + 1);
            let caret = format!(
                "{}^",
                " ".repeat(gutter.chars().count() + col.saturating_sub(1))
            );
            let source = format!("{gutter}{source}");
            json!({"line": line, "column": col, "message": msg, "source": source, "caret": caret})
        }
        None => json!({"message": part}),
    }
}

/// The new-segment form, with a refusal when there was one.
fn new_form(ctx: &Ctx<'_>, name: &str, text: &str, refusal: Option<Refusal>) -> Response<Body> {
    let mut r = ctx.page(
        "segments/segment.html",
        "segments",
        json!({
            "new": true,
            "name": name,
            "definition": text,
            "format": "toml",
            "editable": true,
            "refusal": refusal.as_ref().map(|r| json!({"message": r.message, "problems": r.problems})),
        }),
    );
    if refusal.is_some() {
        *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    r
}

/// `PUT /api/v1/segments/{name}` with the form's text; the refusal when
/// the API refuses it for its content (a role refusal is an error).
async fn put(ctx: &Ctx<'_>, name: &str, f: &Form) -> Result<Result<(), Refusal>, ApiError> {
    let text = f
        .get("definition")
        .unwrap_or_default()
        .replace("\r\n", "\n");
    let ct = if f.get("format") == Some("json") {
        "application/json"
    } else {
        "application/toml"
    };
    let r = ctx
        .api_response(
            Method::PUT,
            &format!("/api/v1/segments/{}", enc(name)),
            ct,
            reply::full_body(text.clone()),
        )
        .await;
    match r {
        Ok(r) => {
            body_bytes(r.into_body()).await;
            Ok(Ok(()))
        }
        Err(e) if e.status == StatusCode::FORBIDDEN => Err(e),
        Err(e) => Ok(Err(Refusal {
            problems: locate(&e.message, &text),
            message: e.message,
        })),
    }
}

/// `POST /admin/segments/new`.
async fn create(ctx: &Ctx<'_>, f: Form) -> Result<Response<Body>, ApiError> {
    let name = f.text("name").unwrap_or_default();
    let text = f.get("definition").unwrap_or_default().to_string();
    if ctx
        .get(&format!("/api/v1/segments/{}", enc(&name)))
        .await
        .is_ok()
    {
        let refusal = Refusal {
            message: format!("a segment named `{name}` exists already: choose another name"),
            problems: vec![],
        };
        return Ok(new_form(ctx, &name, &text, Some(refusal)));
    }
    match put(ctx, &name, &f).await {
        Err(e) => Ok(error_page(&e)),
        Ok(Err(refusal)) => Ok(new_form(ctx, &name, &text, Some(refusal))),
        Ok(Ok(())) => Ok(redirect_with(
            &format!("/admin/segments/{}", enc(&name)),
            "notice",
            "Segment saved.",
        )),
    }
}

/// `POST /admin/segments/{name}`: replaces an API segment's definition.
async fn save(ctx: &Ctx<'_>, name: &str, f: Form) -> Result<Response<Body>, ApiError> {
    match put(ctx, name, &f).await {
        Err(e) => Ok(error_page(&e)),
        Ok(Err(refusal)) => {
            let text = f.get("definition").unwrap_or_default().to_string();
            let format = f.get("format").unwrap_or("toml").to_string();
            segment(ctx, name, Some((text, format, refusal))).await
        }
        Ok(Ok(())) => Ok(redirect_with(
            &format!("/admin/segments/{}", enc(name)),
            "notice",
            "Segment saved.",
        )),
    }
}

/// A stored (JSON) definition as the TOML a file would hold; JSON when it
/// has no TOML form.
fn editable_text(definition: &Value) -> (String, &'static str) {
    match toml::to_string(definition) {
        Ok(t) => (t, "toml"),
        Err(_) => (
            serde_json::to_string_pretty(definition).unwrap_or_default(),
            "json",
        ),
    }
}

/// `GET /admin/segments/{name}` (and the edit form again after a refusal:
/// `edited` is the user's text, its format and the refusal).
async fn segment(
    ctx: &Ctx<'_>,
    name: &str,
    edited: Option<(String, String, Refusal)>,
) -> Result<Response<Body>, ApiError> {
    let s = ctx.get(&format!("/api/v1/segments/{}", enc(name))).await?;
    let mut problems = Vec::new();
    let preview = if s["status"] == "ok" {
        part(
            ctx,
            &format!("/api/v1/segments/{}/preview?limit={SAMPLE}", enc(name)),
            &mut problems,
        )
        .await
    } else {
        Value::Null
    };
    let api = s["source"] == "api";
    let refused = edited.is_some();
    let (text, format, refusal) = match edited {
        Some((t, f, r)) => (t, f, Some(r)),
        None if api => {
            let (t, f) = editable_text(&s["definition"]);
            (t, f.to_string(), None)
        }
        None => (
            s["definition_toml"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            "toml".to_string(),
            None,
        ),
    };
    let mut r = ctx.page(
        "segments/segment.html",
        "segments",
        json!({
            "new": false,
            "name": name,
            "s": s,
            "editable": api,
            "definition": text,
            "format": format,
            "preview": preview,
            "refusal": refusal.map(|r| json!({"message": r.message, "problems": r.problems})),
            "errors": problems,
        }),
    );
    if refused {
        *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_located_in_the_text() {
        let text = "a = 1\nfield = \"x\"\n  bogus = 2\n";
        let p = locate("line 3, column 3: unknown key `bogus`", text);
        assert_eq!(p[0]["line"], 3);
        assert_eq!(p[0]["column"], 3);
        assert_eq!(p[0]["source"], "3 |   bogus = 2");
        assert_eq!(p[0]["caret"], "      ^");
        let p = locate("line 1, column 1: a; line 2, column 4: b", text);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1]["message"], "b");
        assert_eq!(
            locate("`field`: unknown", text)[0]["message"],
            "`field`: unknown"
        );
    }

    #[test]
    fn a_column_from_the_message_cannot_blow_up_the_caret() {
        // The API echoes user text (a segment's name, an unknown key), so
        // the message may carry any "line L, column C" a user typed.
        let msg = "segment name `x; line 1, column 1000000000000000: y` must be a-z";
        let p = locate(msg, "a = 1\n");
        assert_eq!(p.len(), 2);
        assert!(p[1]["caret"].as_str().unwrap_or_default().len() < 100);
    }
}
