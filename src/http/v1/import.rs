//! `/api/v1/contacts/import`: streaming CSV import, its records and rejects.
//!
//! The request body is pumped frame by frame into a bounded channel that a
//! blocking thread reads as `std::io::Read`, so a file of millions of rows is
//! never held in memory: the socket is read only as fast as rows are committed.
//!
//! A body that fails reaches the CSV reader as an `io::Error` holding the
//! pump's message (`String`), and comes back inside
//! `ImportError::Interrupted`'s text: the reader erases its kind. Whether it
//! was the body pace (408) is therefore told by the `timed_out` flag the
//! pump sets, not by the error.

use std::io::Read;
use std::sync::Arc;

use crate::http::reply::ReqBody;
use bytes::{Buf, Bytes};
use http::{Request, Response, header};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::contacts::ContactError;
use crate::contacts::csv_input;
use crate::contacts::import::{ImportOptions, run_import};
use crate::contacts::model::{ConsentState, ImportStatus};
use crate::http::AppState;
use crate::http::reply::{self, ApiError, Body};
use crate::metrics::OutcomeLabels;
use crate::store::ReadTables as _;

/// A blocking reader over body chunks sent from the async side.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while !self.current.has_remaining() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.remaining());
        self.current.copy_to_slice(&mut buf[..n]);
        Ok(n)
    }
}

fn options(q: &[(String, String)], max_record_bytes: u64) -> Result<ImportOptions, ApiError> {
    reply::only_params(
        q,
        &[
            "list",
            "create_list",
            "create_fields",
            "consent",
            "resume",
            "delimiter",
            "encoding",
        ],
    )?;
    let delimiter = match reply::query_str(q, "delimiter") {
        None => None,
        Some(d) => Some(csv_input::parse_delimiter(d).ok_or_else(|| {
            ApiError::bad_request(format!(
                "query parameter `delimiter`: `{d}` is not one of `,` `;` `|` `:` `tab`"
            ))
        })?),
    };
    let encoding = match reply::query_str(q, "encoding") {
        None => None,
        Some(e) => Some(csv_input::parse_encoding(e).ok_or_else(|| {
            ApiError::bad_request(format!(
                "query parameter `encoding`: `{e}` is not an encoding name (utf-8, windows-1250, iso-8859-2, windows-1252…)"
            ))
        })?),
    };
    let consent = match reply::query_str(q, "consent") {
        None => None,
        Some(s) => Some(ConsentState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!("query parameter `consent`: `{s}` is not one of: unknown, pending, granted, withdrawn, invalid"))
        })?),
    };
    Ok(ImportOptions {
        list: reply::query_str(q, "list").map(str::to_string),
        create_list: reply::query_bool(q, "create_list")?,
        create_fields: reply::query_bool(q, "create_fields")?,
        consent,
        resume: reply::query_u64(q, "resume")?,
        max_record_bytes,
        delimiter,
        encoding,
        countries: Default::default(),
    })
}

/// `POST /api/v1/contacts/import?list=&create_list=&create_fields=&consent=&resume=&delimiter=&encoding=`
/// with a `text/csv` body.
pub async fn start(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    let config = state.config();
    let mut opts = options(&q, config.import.max_record_bytes)?;
    opts.countries = crate::sms::phone::Countries::of(&config);
    // Bulk intake: refused while the store's disk is below its reserve
    // (507) or the store is unavailable (503); a running import checks
    // again before each batch and stops (resumable) when it must.
    state.store.bulk_allowed()?;
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !(ct.starts_with("text/csv")
            || ct.starts_with("application/csv")
            || ct.starts_with("text/plain"))
        {
            return Err(ApiError::new(
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected Content-Type: text/csv, got `{ct}`"),
            ));
        }
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(16);
    // Held to the body pace: a large file may take as long as it keeps
    // arriving at `[http] body_min_rate`; time spent committing rows is not
    // counted against the client.
    let mut body = reply::paced_body(req);
    let timed_out = Arc::new(std::sync::OnceLock::<reply::BodyTimeout>::new());
    let pump_timed_out = timed_out.clone();
    let pump = tokio::spawn(async move {
        loop {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && tx.send(Ok(data)).await.is_err()
                    {
                        break;
                    }
                }
                Some(Err(e)) => {
                    if let Some(t) = e.downcast_ref::<reply::BodyTimeout>() {
                        let _ = pump_timed_out.set(*t);
                    }
                    let _ = tx.send(Err(format!("the upload was cut off: {e}"))).await;
                    break;
                }
            }
        }
    });
    let store = state.store.clone();
    let clock = state.clock.clone();
    // Shutdown waits for the import's batches in flight (an import cut off
    // by the grace is marked `interrupted` at the next start).
    let guard = state.activity.guard("import");
    let result = tokio::task::spawn_blocking(move || {
        let _guard = guard;
        let reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        run_import(&store, reader, &opts, || clock.now())
    })
    .await
    .map_err(|e| {
        ApiError::new(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("import task failed: {e}"),
        )
    })?;
    pump.abort();
    let report = result.map_err(|e| {
        if timed_out.get().is_some() {
            // 408 (the connection is then closed); the message says how
            // to resume.
            ApiError::new(
                http::StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                e.to_string(),
            )
        } else {
            ApiError::from(e)
        }
    })?;
    let r = &report.record;
    for (outcome, n) in [
        ("created", r.created),
        ("updated", r.updated),
        ("unchanged", r.unchanged),
        ("rejected", r.rejected),
    ] {
        state
            .metrics
            .import_rows
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(n);
    }
    tracing::info!(
        import = r.id,
        created = r.created,
        updated = r.updated,
        unchanged = r.unchanged,
        merged = r.merged_duplicates,
        rejected = r.rejected,
        "import completed"
    );
    let object = format!("import:{}", report.record.id);
    Ok(crate::http::created(reply::ok(&report)?, object))
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("no import `{id}`")))
}

/// `GET /api/v1/contacts/import`
pub async fn list(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let imports = state.store.read(|r| r.imports()).await?;
    reply::ok(&json!({"imports": imports}))
}

/// `GET /api/v1/contacts/import/{id}`
pub async fn get(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let n = parse_id(id)?;
    let rec = state.store.read(move |r| r.import(n)).await?;
    reply::ok(&rec.ok_or_else(|| ApiError::not_found(format!("no import {n}")))?)
}

/// `DELETE /api/v1/contacts/import/{id}`: removes an import's record and its
/// stored rejects. Reject reasons quote cell values, which may be personal
/// data; this is how they are cleared once the file has been fixed.
pub async fn delete(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let n = parse_id(id)?;
    let removed = state
        .store
        .write(move |t| {
            match t.import(n)? {
                None => return Ok(Err(ContactError::NotFound(format!("no import {n}")))),
                Some(r) if r.status == ImportStatus::Running => {
                    return Ok(Err(ContactError::Conflict(format!(
                        "import {n} is running; delete it once it has ended"
                    ))));
                }
                Some(_) => {}
            }
            Ok(Ok(t.delete_import(n)?))
        })
        .await??;
    reply::ok(&json!({"deleted": n, "rejects_removed": removed}))
}

/// `GET /api/v1/contacts/import/{id}/rejects?after=LINE&limit=N`
pub async fn rejects(
    state: &Arc<AppState>,
    id: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let n = parse_id(id)?;
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(&q, &["after", "limit"])?;
    let after = reply::query_u64(&q, "after")?.unwrap_or(0);
    let limit = reply::query_u64(&q, "limit")?
        .unwrap_or(1000)
        .clamp(1, 10_000) as usize;
    let (rec, rows) = state
        .store
        .read(move |r| Ok((r.import(n)?, r.import_rejects(n, after, limit)?)))
        .await?;
    if rec.is_none() {
        return Err(ApiError::not_found(format!("no import {n}")));
    }
    let next = if rows.len() == limit {
        rows.last().map(|r| r.0)
    } else {
        None
    };
    let rows: Vec<_> = rows
        .into_iter()
        .map(|(line, reason)| json!({"line": line, "reason": reason}))
        .collect();
    reply::ok(&json!({"rejects": rows, "next_after": next}))
}
