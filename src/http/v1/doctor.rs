//! `GET /api/v1/doctor`: `herald doctor`'s verdicts on the senders' DNS
//! (SPF, DKIM, DMARC, PTR, the bounce domain's MX, MTA-STS, TLS-RPT), for
//! the admin UI's dashboard and monitoring. A run reads DNS (seconds when a
//! resolver is slow), so the last one is kept: `?cached=true` answers with
//! it at once (starting a new run in the background when it is older than
//! ten minutes); without it the checks run now.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::{Request, Response};
use serde::Serialize;
use serde_json::json;

use crate::doctor::{Options, Status, Verdict};
use crate::http::reply::{self, ApiError, Body};
use crate::http::{AppState, ReqBody};

/// How long a run's verdicts are fresh for the dashboard.
const FRESH: Duration = Duration::from_secs(600);
/// A run that takes longer is cut short (a resolver that does not answer).
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// One run's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    /// When the run ended.
    pub checked_at: DateTime<Utc>,
    /// Its verdicts (none when it could not run).
    pub verdicts: Vec<Verdict>,
    /// Why it could not run.
    pub error: Option<String>,
    /// Verdicts that failed.
    pub failures: usize,
    /// Verdicts that warn.
    pub warnings: usize,
}

/// The last run, and whether one is under way.
#[derive(Default)]
pub struct Cache {
    last: std::sync::Mutex<Option<Checked>>,
    running: AtomicBool,
    /// One run at a time: each holds a blocking thread while it lasts.
    one: tokio::sync::Mutex<()>,
}

/// Clears the "running" flag however the background run ends.
struct Running(Arc<AppState>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.doctor.running.store(false, Ordering::Release);
    }
}

impl Cache {
    fn last(&self) -> Option<Checked> {
        self.last.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// Runs the checks on the current config and keeps the result.
async fn check(state: &Arc<AppState>) -> Checked {
    let _one = state.doctor.one.lock().await;
    let config = state.snapshot().config.clone();
    // The checks' future is not `Send` (its DNS trait): it runs on a
    // blocking thread, driven by this runtime's handle.
    let handle = tokio::runtime::Handle::current();
    let run = tokio::task::spawn_blocking(move || {
        handle.block_on(async {
            tokio::time::timeout(RUN_LIMIT, crate::doctor::run(&config, &Options::default())).await
        })
    })
    .await;
    let (verdicts, error) = match run {
        Ok(Ok(Ok(v))) => (v, None),
        Ok(Ok(Err(e))) => (Vec::new(), Some(e.to_string())),
        Err(e) => (Vec::new(), Some(format!("the DNS checks failed: {e}"))),
        Ok(Err(_)) => (
            Vec::new(),
            Some(format!(
                "the DNS checks took longer than {} s: is [delivery] nameserver answering?",
                RUN_LIMIT.as_secs()
            )),
        ),
    };
    let count = |s: Status| verdicts.iter().filter(|v| v.status == s).count();
    let checked = Checked {
        checked_at: state.clock.now(),
        failures: count(Status::Fail),
        warnings: count(Status::Warn),
        verdicts,
        error,
    };
    if let Ok(mut g) = state.doctor.last.lock() {
        *g = Some(checked.clone());
    }
    checked
}

/// `GET /api/v1/doctor[?cached=true]`.
pub async fn get(
    state: &Arc<AppState>,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let cached = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "cached=true"));
    if !cached {
        return reply::ok(&check(state).await);
    }
    let last = state.doctor.last();
    let stale = last.as_ref().is_none_or(|c| {
        (state.clock.now() - c.checked_at)
            .to_std()
            .unwrap_or_default()
            > FRESH
    });
    if stale && !state.doctor.running.swap(true, Ordering::AcqRel) {
        let state = state.clone();
        tokio::spawn(async move {
            let running = Running(state);
            check(&running.0).await;
        });
    }
    match last {
        Some(c) => reply::ok(&c),
        None => reply::ok(&json!({"checked_at": null, "verdicts": [], "running": true})),
    }
}
