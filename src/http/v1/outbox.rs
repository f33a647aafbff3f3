//! `GET /api/v1/outbox` and `/api/v1/outbox/{id}`: the capture outbox
//! (`[delivery] capture`), for the admin UI and scripts; `herald outbox`
//! reads the same folder without the daemon.

use std::sync::Arc;

use http::Response;
use serde_json::json;

use crate::delivery::capture;
use crate::http::AppState;
use crate::http::reply::{self, ApiError, Body};

/// The newest captured messages listed at most.
const LIST_LIMIT: usize = 500;

/// Every captured message, newest first (at most [`LIST_LIMIT`]), and
/// where they are; `capture` is null when capture is off.
pub async fn list(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let Some(dir) = state.config.get().delivery.capture.clone() else {
        return reply::ok(&json!({"capture": null, "total": 0, "messages": []}));
    };
    let (total, newest) = read_folder(&dir, |d| capture::newest(d, LIST_LIMIT)).await?;
    reply::ok(&json!({
        "capture": dir.display().to_string(),
        "total": total,
        "messages": newest,
    }))
}

/// The captured message(s) of queue message `id`: envelope, header fields,
/// text and HTML parts, links.
pub async fn get(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let n: u64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("`{id}` is not a queue id")))?;
    let Some(dir) = state.config.get().delivery.capture.clone() else {
        return Err(ApiError::not_found(
            "capture is off (no `[delivery] capture`): messages are delivered, see /api/v1/queue",
        ));
    };
    let found = read_folder(&dir, move |dir| capture::show(dir, n)).await?;
    if found.is_empty() {
        return Err(ApiError::not_found(format!(
            "nothing captured for queue message {n}"
        )));
    }
    reply::ok(&json!({"id": n, "messages": found}))
}

/// Runs a reader of the capture folder on a blocking thread.
async fn read_folder<T: Send + 'static>(
    dir: &std::path::Path,
    f: impl FnOnce(&std::path::Path) -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let owned = dir.to_path_buf();
    let internal =
        |m: String| ApiError::new(http::StatusCode::INTERNAL_SERVER_ERROR, "internal", m);
    tokio::task::spawn_blocking(move || f(&owned))
        .await
        .map_err(|e| internal(format!("the outbox reader failed: {e}")))?
        .map_err(|e| {
            internal(format!(
                "cannot read the capture folder {}: {e}",
                dir.display()
            ))
        })
}
