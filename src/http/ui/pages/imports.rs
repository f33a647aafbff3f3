//! Admin UI: CSV imports.
//!
//! - `GET /admin/imports`: past imports and the upload form.
//! - `POST /admin/imports` (`multipart/form-data`, `?_csrf=` in the query):
//!   the option fields `list`, `create_list`, `create_fields`, `consent`
//!   and `resume` (an interrupted import's id), then the file field `file`.
//!   The body is parsed as it arrives (multer) and the file's bytes are
//!   handed on to `POST /api/v1/contacts/import` chunk by chunk: the file
//!   is never held in memory. Then `303` to the import's report.
//! - `GET /admin/imports/{id}[?after=LINE]`: the report, its rejected rows
//!   (paged) and, for an interrupted import, the form to resume it.
//! - `POST /admin/imports/{id}/delete`: removes the record and its rejects.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::contacts::{form, part, query};
use crate::http::reply::{ApiError, Body, BoxError, ReqBody};
use crate::http::ui::{Ctx, Input, after, body_bytes, error_page, redirect, redirect_with};

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "imports/list.html",
        include_str!("../templates/imports/list.html"),
    ),
    (
        "imports/report.html",
        include_str!("../templates/imports/report.html"),
    ),
];

/// Rejected rows per page of a report.
const REJECTS_PAGE: u32 = 100;

/// The most bytes an option field of the upload form may have.
const OPTION_LIMIT: usize = 4096;

/// Serves `/admin/imports…`.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    input: Input,
) -> Result<Response<Body>, ApiError> {
    let get = matches!(*method, Method::GET | Method::HEAD);
    match (rest, input) {
        (["imports"], _) if get => imports(ctx).await,
        (["imports"], Input::Multipart(req)) if *method == Method::POST => upload(ctx, req).await,
        (["imports"], _) if *method == Method::POST => Ok(redirect_with(
            "/admin/imports",
            "problem",
            "Choose a CSV file to upload (the form must be sent as multipart/form-data).",
        )),
        (["imports", id], _) if get => report(ctx, id).await,
        (["imports", id, "delete"], input) if *method == Method::POST => {
            form(input)?;
            let r = ctx
                .api(
                    Method::DELETE,
                    &format!("/api/v1/contacts/import/{}", crate::http::ui::enc(id)),
                    None,
                )
                .await;
            Ok(after("/admin/imports", r, "Import record deleted."))
        }
        _ => Err(super::not_found(rest)),
    }
}

/// `GET /admin/imports`.
async fn imports(ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let mut problems = Vec::new();
    let all = part(ctx, "/api/v1/contacts/import", &mut problems).await;
    let lists = part(ctx, "/api/v1/lists", &mut problems).await;
    let mut imports: Vec<Value> = all["imports"].as_array().cloned().unwrap_or_default();
    imports.reverse();
    let running = imports.iter().any(|i| i["status"] == "running");
    Ok(ctx.page(
        "imports/list.html",
        "imports",
        json!({
            "imports": imports,
            "lists": lists["lists"],
            "running": running,
            "states": ["unknown", "pending", "granted", "withdrawn", "invalid"],
            "errors": problems,
        }),
    ))
}

/// `GET /admin/imports/{id}`.
async fn report(ctx: &Ctx<'_>, id: &str) -> Result<Response<Body>, ApiError> {
    let id = crate::http::ui::enc(id);
    let rec = ctx.get(&format!("/api/v1/contacts/import/{id}")).await?;
    let after_line = ctx.param("after").unwrap_or("");
    let limit = REJECTS_PAGE.to_string();
    let q = query(&[("after", after_line), ("limit", &limit)]);
    let mut problems = Vec::new();
    let rejects = part(
        ctx,
        &format!("/api/v1/contacts/import/{id}/rejects?{q}"),
        &mut problems,
    )
    .await;
    let next = rejects["next_after"]
        .as_u64()
        .map(|n| format!("/admin/imports/{id}?after={n}#rejects"));
    Ok(ctx.page(
        "imports/report.html",
        "imports",
        json!({
            "r": rec,
            "running": rec["status"] == "running",
            "rejects": rejects["rejects"],
            "next_rejects": next,
            "paged": !after_line.is_empty(),
            "states": ["unknown", "pending", "granted", "withdrawn", "invalid"],
            "errors": problems,
        }),
    ))
}

/// A request body fed from a channel (the upload's file chunks).
struct ChannelBody(mpsc::Receiver<Result<Bytes, BoxError>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// Reads a small text field of the upload form.
async fn option_text(field: &mut multer::Field<'static>) -> Result<String, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| e.to_string())? {
        buf.extend_from_slice(&chunk);
        if buf.len() > OPTION_LIMIT {
            return Err(format!(
                "the form field `{}` is too long",
                field.name().unwrap_or("")
            ));
        }
    }
    String::from_utf8(buf).map_err(|_| "a form field is not UTF-8 text".to_string())
}

/// Whether an uploaded file looks like CSV by its name and type; why not.
fn check_csv(file_name: &str, content_type: Option<&str>) -> Result<(), String> {
    if file_name.trim().is_empty() {
        return Err("Choose a CSV file to upload.".into());
    }
    let ext = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase());
    let ok_ext = matches!(ext.as_deref(), Some("csv" | "txt" | "tsv"));
    let ok_type = content_type.is_some_and(|t| {
        t.starts_with("text/csv")
            || t.starts_with("text/plain")
            || t.starts_with("application/csv")
            || t.starts_with("application/vnd.ms-excel")
    });
    if ok_ext || (ext.is_none() && ok_type) {
        return Ok(());
    }
    Err(format!(
        "`{file_name}` is not a CSV file: export the sheet as CSV (comma-separated, UTF-8) with an `email` column first."
    ))
}

/// The upload form's options as the import API's query.
fn api_query(opts: &[(String, String)]) -> String {
    let get = |k: &str| {
        opts.iter()
            .find(|(n, _)| n == k)
            .map_or("", |(_, v)| v.trim())
    };
    let flag = |k: &str| if get(k).is_empty() { "" } else { "true" };
    query(&[
        ("list", get("list")),
        ("create_list", flag("create_list")),
        ("create_fields", flag("create_fields")),
        ("consent", get("consent")),
        ("resume", get("resume")),
    ])
}

/// `POST /admin/imports`: streams the file to the import API.
async fn upload(ctx: &Ctx<'_>, req: Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(ct)
        .map_err(|e| ApiError::bad_request(format!("a bad upload: {e}")))?;
    let mut mp = multer::Multipart::new(req.into_body().into_data_stream(), boundary);
    let mut opts: Vec<(String, String)> = Vec::new();
    let back = |opts: &[(String, String)]| match opts.iter().find(|(k, _)| k == "resume") {
        Some((_, id)) if !id.trim().is_empty() => {
            format!("/admin/imports/{}", crate::http::ui::enc(id.trim()))
        }
        _ => "/admin/imports".to_string(),
    };
    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Ok(redirect_with(
                    &back(&opts),
                    "problem",
                    "Choose a CSV file to upload.",
                ));
            }
            Err(e) => {
                return Ok(redirect_with(
                    &back(&opts),
                    "problem",
                    &format!("The upload could not be read: {e}"),
                ));
            }
        };
        let name = field.name().unwrap_or("").to_string();
        if name != "file" {
            match option_text(&mut field).await {
                Ok(v) => opts.push((name, v)),
                Err(m) => return Ok(redirect_with(&back(&opts), "problem", &m)),
            }
            continue;
        }
        let file_name = field.file_name().unwrap_or("").to_string();
        let content_type = field.content_type().map(|m| m.to_string());
        if let Err(m) = check_csv(&file_name, content_type.as_deref()) {
            return Ok(redirect_with(&back(&opts), "problem", &m));
        }
        return send_file(ctx, field, &opts, &back(&opts)).await;
    }
}

/// Hands the file field's bytes to the import API as they arrive.
async fn send_file(
    ctx: &Ctx<'_>,
    mut field: multer::Field<'static>,
    opts: &[(String, String)],
    back: &str,
) -> Result<Response<Body>, ApiError> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(8);
    let pump = tokio::spawn(async move {
        loop {
            let item = match field.chunk().await {
                Ok(Some(b)) => Ok(b),
                Ok(None) => break,
                Err(e) => Err(BoxError::from(format!("the upload was cut off: {e}"))),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    let path = format!("/api/v1/contacts/import?{}", api_query(opts));
    let answer = ctx
        .api_response(Method::POST, &path, "text/csv", ChannelBody(rx).boxed())
        .await;
    pump.abort();
    let r = match answer {
        Ok(r) => r,
        Err(e) if e.status == http::StatusCode::FORBIDDEN => return Ok(error_page(&e)),
        Err(e) => {
            return Ok(redirect_with(
                back,
                "problem",
                &format!("The file was not imported: {}", e.message),
            ));
        }
    };
    let v: Value = serde_json::from_slice(&body_bytes(r.into_body()).await).unwrap_or_default();
    match v["id"].as_u64() {
        Some(id) => Ok(redirect(&format!("/admin/imports/{id}"))),
        None => Ok(redirect_with(
            back,
            "problem",
            "The import API gave no import id.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_csv_files_are_sent_on() {
        assert!(check_csv("people.csv", Some("application/octet-stream")).is_ok());
        assert!(check_csv("people.CSV", None).is_ok());
        assert!(check_csv("people", Some("text/csv")).is_ok());
        assert!(check_csv("", Some("text/csv")).is_err());
        assert!(check_csv("people.xlsx", Some("application/vnd.openxmlformats")).is_err());
    }

    #[test]
    fn options_become_the_api_query() {
        let o = |k: &str, v: &str| (k.to_string(), v.to_string());
        let q = api_query(&[o("list", "a b"), o("create_list", "on"), o("consent", "")]);
        assert_eq!(q, "list=a+b&create_list=true");
    }
}
