//! Response and request plumbing shared by every endpoint: the JSON error
//! shape (`{"error": {"code": …, "message": …}}`), request bodies with a
//! size limit and a pace they must keep ([`BodyPace`], 408 when they fall
//! behind), JSON with positioned parse errors, and query-string parsing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, SizeHint};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, Sleep};

use crate::contacts::ContactError;
use crate::contacts::import::ImportError;
use crate::store::StoreError;

/// The body type of every response.
pub type Body = Full<Bytes>;

/// The body type of every request a handler sees: the connection's body
/// (boxed by `http::dispatch`), or a body the admin UI hands to an API
/// handler in-process (a form turned into JSON, an uploaded file's part).
pub type ReqBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// The connection's body, shared between the handler (which reads it as a
/// [`ReqBody`]) and `http::dispatch`, which takes back what the handler
/// left unread and drains it before answering (see [`drain_unread`]).
#[derive(Clone, Default)]
pub struct Unread(Arc<std::sync::Mutex<(Option<hyper::body::Incoming>, bool)>>);

impl Unread {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<hyper::body::Incoming>, bool)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl hyper::body::Body for Unread {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut g = self.lock();
        g.1 = true;
        match g.0.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.lock().0.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.lock()
            .0
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// The connection's body as a [`ReqBody`] for the handler, and the handle
/// through which the rest is drained after it.
pub fn shared_incoming(body: hyper::body::Incoming) -> (ReqBody, Unread) {
    fn boxed_error(e: hyper::Error) -> BoxError {
        Box::new(e)
    }
    let unread = Unread(Arc::new(std::sync::Mutex::new((Some(body), false))));
    (unread.clone().map_err(boxed_error).boxed(), unread)
}

/// Most of an unread body drained before an answer (beyond it the answer
/// says `Connection: close`).
const DRAIN_MAX_BYTES: u64 = 64 << 20;

/// Reads and discards what the handler left of the request body (an early
/// error: a refused import, a wrong token), so that the client, still
/// sending, sees the answer instead of a reset connection. Held to the
/// body's pace (a client that trickles is cut off as a slow body is) and
/// at most [`DRAIN_MAX_BYTES`]; false when the body did not end within that
/// (the answer should close the connection). A body never asked for (the
/// client waits for `100 Continue`, `expects_continue`) is not: the answer
/// closes the connection instead.
pub async fn drain_unread(unread: Unread, pace: &BodyPace, expects_continue: bool) -> bool {
    let (body, polled) = {
        let mut g = unread.lock();
        (g.0.take(), g.1)
    };
    let Some(body) = body else {
        return true;
    };
    if hyper::body::Body::is_end_stream(&body) {
        return true;
    }
    if expects_continue && !polled {
        return false;
    }
    let mut body = Paced::new(body, *pace);
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                n += f.data_ref().map_or(0, |d| d.len() as u64);
                if n > DRAIN_MAX_BYTES {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// A request body made of one buffer.
pub fn full_body(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status (4xx for the caller's mistakes, 5xx for ours).
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What is wrong and where.
    pub message: String,
    /// Seconds after which trying again makes sense (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 404 for a missing resource.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422 for a well-formed request with invalid content.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// Renders the JSON error body.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut r = json_response(self.status, &body);
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"herald\""),
            );
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let retry = |status, code, message: String, secs| {
            let mut a = ApiError::new(status, code, message);
            a.retry_after = Some(secs);
            a
        };
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        match &e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "request refused: the store is unavailable");
                let m = format!("{e}; nothing of this request was stored");
                return retry(unavailable, "storage_unavailable", m, 5);
            }
            StoreError::CommitUnknown(_) => {
                tracing::warn!(error = %e, "request answered: its commit's outcome is unknown");
                return retry(unavailable, "storage_unavailable", e.to_string(), 5);
            }
            StoreError::LowSpace { .. } => {
                let status = StatusCode::INSUFFICIENT_STORAGE;
                return retry(status, "insufficient_storage", e.to_string(), 60);
            }
            StoreError::Closed => {
                return retry(unavailable, "shutting_down", e.to_string(), 5);
            }
            _ => {}
        }
        tracing::error!(error = %e, "store error while serving a request");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            "internal storage error; see the daemon's log",
        )
    }
}

impl From<ContactError> for ApiError {
    fn from(e: ContactError) -> Self {
        if let ContactError::Store(s) = e {
            return s.into();
        }
        let status = match &e {
            ContactError::NotFound(_) => StatusCode::NOT_FOUND,
            ContactError::Conflict(_)
            | ContactError::InUse(_)
            | ContactError::Suppressed { .. } => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Header { .. } => ApiError::invalid("invalid_csv", e.to_string()),
            ImportError::Contact(c) => c.into(),
            ImportError::Interrupted { .. } => ApiError::bad_request(e.to_string()),
            ImportError::Store(s) => s.into(),
            ImportError::Stopped { .. } => {
                let message = e.to_string();
                let ImportError::Stopped { store, .. } = e else {
                    return ApiError::bad_request(message);
                };
                let mut a = ApiError::from(store);
                a.message = message;
                a
            }
        }
    }
}

/// A JSON response with the given status.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// 200 with a JSON body.
pub fn ok<T: Serialize>(body: &T) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, body))
}

/// A plain-text response.
pub fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Reads a whole request body of at most `limit` bytes (413 beyond).
/// Multipart bodies are refused: every endpoint takes one document.
pub async fn read_body(req: http::Request<ReqBody>, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if ct.starts_with("multipart/") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected one document, not `{ct}`"),
            ));
        }
    }
    read_any_body(req, limit).await
}

/// Reads a whole request body of any type (forms, multipart) of at most
/// `limit` bytes (413 beyond), at the request's [`BodyPace`] (408 when it
/// falls behind).
pub async fn read_any_body(req: http::Request<ReqBody>, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = paced_body(req);
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e.downcast_ref::<BodyTimeout>() {
            Some(t) => t.to_api_error(),
            None => ApiError::bad_request(format!("cannot read the request body: {e}")),
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the request body is larger than {limit} bytes"),
                ));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// The pace a request body must keep (`[http] body_timeout` and
/// `body_min_rate`): its first [`BodyPace::FREE_BYTES`] within `timeout`,
/// and every `min_rate` bytes after them earn one more second. A small
/// body (a form, a JSON document) so has a short total deadline, while a
/// large one (a CSV import, an event batch) may take as long as it keeps
/// arriving at the minimum rate. Only time spent waiting for the client
/// counts, not time the server spends before asking for more (an import
/// reads the socket only as fast as rows are committed).
///
/// `http::dispatch` puts the configured pace into each request's
/// extensions; body readers take it from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    /// Time allowed for the first [`BodyPace::FREE_BYTES`].
    pub timeout: Duration,
    /// Bytes per second past the first [`BodyPace::FREE_BYTES`] (at least 1).
    pub min_rate: u64,
}

impl Default for BodyPace {
    fn default() -> Self {
        let l = crate::config::HttpLimits::default();
        BodyPace {
            timeout: l.body_timeout,
            min_rate: l.body_min_rate,
        }
    }
}

impl BodyPace {
    /// The bytes a body may send within `timeout` before the rate counts.
    pub const FREE_BYTES: u64 = 64 * 1024;

    /// The pace of `[http]`'s limits.
    pub fn of(limits: &crate::config::HttpLimits) -> BodyPace {
        BodyPace {
            timeout: limits.body_timeout,
            min_rate: limits.body_min_rate.max(1),
        }
    }

    /// Time a body may have spent waiting for the client once `received`
    /// bytes of it have arrived.
    pub fn allowed(&self, received: u64) -> Duration {
        let extra = received.saturating_sub(Self::FREE_BYTES);
        let earned = Duration::from_millis(extra.saturating_mul(1000) / self.min_rate.max(1));
        self.timeout.saturating_add(earned)
    }
}

/// A request body that fell behind its [`BodyPace`].
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout {
    /// The pace it was held to.
    pub pace: BodyPace,
    /// Bytes that had arrived.
    pub received: u64,
}

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body arrived too slowly ({} bytes received): a body may take {} s for its first {} bytes plus 1 s per {} bytes after them ([http] body_timeout, body_min_rate)",
            self.received,
            self.pace.timeout.as_secs(),
            BodyPace::FREE_BYTES,
            self.pace.min_rate
        )
    }
}

impl std::error::Error for BodyTimeout {}

impl BodyTimeout {
    /// 408 naming the limit.
    pub fn to_api_error(self) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            self.to_string(),
        )
    }
}

/// A request body held to a [`BodyPace`]: it ends with a [`BodyTimeout`]
/// error when the client makes it wait longer than the pace allows.
pub struct Paced<B> {
    inner: B,
    pace: BodyPace,
    received: u64,
    /// Time spent waiting for the client so far (closed waits).
    waited: Duration,
    /// The wait under way: when it began and its deadline.
    wait: Option<(Instant, Pin<Box<Sleep>>)>,
    timed_out: bool,
}

impl<B> Paced<B> {
    /// Holds `inner` to `pace`.
    pub fn new(inner: B, pace: BodyPace) -> Paced<B> {
        Paced {
            inner,
            pace,
            received: 0,
            waited: Duration::ZERO,
            wait: None,
            timed_out: false,
        }
    }
}

/// The body of `req`, held to the pace in its extensions (the default pace
/// when none was set).
pub fn paced_body(req: http::Request<ReqBody>) -> Paced<ReqBody> {
    let pace = req
        .extensions()
        .get::<BodyPace>()
        .copied()
        .unwrap_or_default();
    Paced::new(req.into_body(), pace)
}

/// The error type of request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> hyper::body::Body for Paced<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some((since, _)) = this.wait.take() {
                    this.waited = this.waited.saturating_add(since.elapsed());
                }
                if let Some(Ok(f)) = &frame
                    && let Some(d) = f.data_ref()
                {
                    this.received = this.received.saturating_add(d.len() as u64);
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let (pace, received, waited) = (this.pace, this.received, this.waited);
                let (_, sleep) = this.wait.get_or_insert_with(|| {
                    let now = Instant::now();
                    let left = pace.allowed(received).saturating_sub(waited);
                    (now, Box::pin(tokio::time::sleep_until(now + left)))
                });
                if sleep.as_mut().poll(cx).is_ready() {
                    this.timed_out = true;
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout { pace, received }))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a JSON body of at most `limit` bytes into `T`, with errors that name
/// the JSON path, line and column of the problem. (curl -d sends
/// application/x-www-form-urlencoded; the body must parse as JSON anyway, so
/// only types that are clearly something else are refused.)
pub async fn read_json<T: DeserializeOwned>(
    req: http::Request<ReqBody>,
    limit: usize,
) -> Result<T, ApiError> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE)
        && ct.to_str().unwrap_or("").starts_with("text/csv")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json, got `text/csv`",
        ));
    }
    let bytes = read_body(req, limit).await?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; a JSON object is expected",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let code = if inner.is_syntax() || inner.is_eof() {
            "invalid_json"
        } else {
            "invalid_body"
        };
        let at = if path == "." || code == "invalid_json" {
            String::new()
        } else {
            format!("`{path}`: ")
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, format!("{at}{inner}"))
    })?;
    // Trailing bytes after the value (`{...} junk`) are an error too.
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("{e} (after the JSON value)"),
        )
    })?;
    Ok(value)
}

/// Parses a query string into key/value pairs (percent-decoded).
pub fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Reads a boolean query parameter (`true`/`false`/`1`/`0`).
pub fn query_bool(pairs: &[(String, String)], key: &str) -> Result<bool, ApiError> {
    match pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
    {
        None => Ok(false),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!(
            "query parameter `{key}`: `{v}` is not true or false"
        ))),
    }
}

/// Reads a numeric query parameter.
pub fn query_u64(pairs: &[(String, String)], key: &str) -> Result<Option<u64>, ApiError> {
    match pairs.iter().find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, v)) => v.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "query parameter `{key}`: `{v}` is not a whole number"
            ))
        }),
    }
}

/// Reads a string query parameter.
pub fn query_str<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Rejects query parameters the endpoint does not know, naming them.
pub fn only_params(pairs: &[(String, String)], known: &[&str]) -> Result<(), ApiError> {
    for (k, _) in pairs {
        if !known.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter `{k}` (known: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body fed from a channel; pending while nothing is sent.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl hyper::body::Body for Fed {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Runs `f` on a current-thread runtime; an error if it takes 30 s.
    fn run<T>(f: impl Future<Output = T>) -> Result<T, Box<dyn std::error::Error>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        // The timer is created inside the runtime (it needs its reactor).
        let r = rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), f).await });
        Ok(r.map_err(|_| "the body neither ended nor timed out")?)
    }

    #[test]
    fn the_allowance_grows_with_bytes_past_the_free_ones() {
        let p = BodyPace {
            timeout: Duration::from_secs(20),
            min_rate: 1000,
        };
        assert_eq!(p.allowed(0), Duration::from_secs(20));
        assert_eq!(p.allowed(BodyPace::FREE_BYTES), Duration::from_secs(20));
        assert_eq!(
            p.allowed(BodyPace::FREE_BYTES + 1500),
            Duration::from_millis(21_500)
        );
        assert_eq!(
            p.allowed(u64::MAX),
            Duration::from_secs(20) + Duration::from_millis(u64::MAX / 1000)
        );
    }

    #[test]
    fn a_body_that_stops_arriving_ends_with_a_timeout_naming_the_limit() -> TestResult {
        let pace = BodyPace {
            timeout: Duration::from_millis(100),
            min_rate: 1000,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let r = run(async move {
            tx.send(Bytes::from_static(b"email=")).await?;
            let r = Paced::new(Fed(rx), pace).collect().await;
            drop(tx);
            Ok::<_, Box<dyn std::error::Error>>(r)
        })??;
        let Err(err) = r else {
            return Err("the body ended without a timeout".into());
        };
        let t = err
            .downcast_ref::<BodyTimeout>()
            .ok_or("the error is not a BodyTimeout")?;
        assert_eq!(t.received, 6);
        let e = t.to_api_error();
        assert_eq!(e.status, StatusCode::REQUEST_TIMEOUT);
        assert!(
            e.message.contains("body_timeout, body_min_rate"),
            "{}",
            e.message
        );
        Ok(())
    }

    #[test]
    fn time_the_server_takes_between_reads_is_not_the_clients() -> TestResult {
        let pace = BodyPace {
            timeout: Duration::from_millis(100),
            min_rate: 1,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let got = run(async move {
            for _ in 0..4 {
                tx.send(Bytes::from_static(b"row\n")).await?;
            }
            drop(tx);
            let mut body = Paced::new(Fed(rx), pace);
            let mut n = 0;
            while let Some(f) = body.frame().await {
                n += f?.into_data().map_or(0, |d| d.len());
                // Committing rows: slower than the pace, but not waiting.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(n)
        })?;
        assert_eq!(got.map_err(|e| e.to_string())?, 16);
        Ok(())
    }
}
