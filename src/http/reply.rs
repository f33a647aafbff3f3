//! Response and request plumbing shared by every endpoint: the JSON error
//! shape (`{"error": {"code": …, "message": …}}`), JSON bodies with a size
//! limit and positioned parse errors, and query-string parsing.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::contacts::ContactError;
use crate::contacts::import::ImportError;
use crate::store::StoreError;

/// The body type of every response.
pub type Body = Full<Bytes>;

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status (4xx for the caller's mistakes, 5xx for ours).
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What is wrong and where.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
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
pub async fn read_body(req: http::Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
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
/// `limit` bytes (413 beyond).
pub async fn read_any_body(req: http::Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the request body is larger than {limit} bytes"),
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })?;
    Ok(body.to_bytes())
}

/// Reads a JSON body of at most `limit` bytes into `T`, with errors that name
/// the JSON path, line and column of the problem. (curl -d sends
/// application/x-www-form-urlencoded; the body must parse as JSON anyway, so
/// only types that are clearly something else are refused.)
pub async fn read_json<T: DeserializeOwned>(
    req: http::Request<Incoming>,
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
