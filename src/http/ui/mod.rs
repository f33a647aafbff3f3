//! The admin UI: server-rendered pages under `/admin`, for people with a
//! user name, a password and a role (`users`), not the API's token.
//!
//! Every page is HTML rendered by minijinja from templates compiled into
//! the binary (`templates/`, auto-escaped), with one stylesheet and one
//! small script (`assets/`), also compiled in. Every task works without
//! JavaScript; the script only adds an upload progress bar and live
//! refreshes. Charts are inline SVG drawn on the server ([`chart`]).
//!
//! **How a request goes.** [`serve`] sets the security headers (a strict
//! `Content-Security-Policy`, no framing, no caching), serves the assets
//! and the login page to anyone, and everything else only with a live
//! session cookie (`herald_session`: `HttpOnly`, `SameSite=Strict`,
//! `Secure` when `public_url` is https; the store keeps only the token's
//! SHA-256). A `POST` must carry the session's CSRF token (`_csrf` in the
//! form, or in the query for a file upload) and, when the browser sends
//! an `Origin`, come from this host. Pages read and change data only
//! through the admin API, in process ([`Ctx::api`]): the API's role check
//! ([`crate::http::Route::required_role`]) and activity log apply to every
//! form, whoever built it.
//!
//! **Pages** (each a bookmarkable URL; `{…}` a path part):
//! - `/admin` dashboard (`pages/dashboard.rs`)
//! - `/admin/login`, `/admin/logout`
//! - `/admin/contacts`, `/admin/contacts/{id}`, `…/{id}/{action}`,
//!   `/admin/lists`, `/admin/fields` (`pages/contacts.rs`)
//! - `/admin/imports`, `/admin/imports/{id}` (`pages/imports.rs`)
//! - `/admin/segments`, `/admin/segments/{name}` (`pages/segments.rs`)
//! - `/admin/templates`, `/admin/templates/{name}`, `…/{name}/frame`
//!   (`pages/templates.rs`)
//! - `/admin/campaigns`, `/admin/campaigns/new`, `/admin/campaigns/{id}`,
//!   `…/{id}/report`, `…/{id}/report.csv`, `…/{id}/{action}`
//!   (`pages/campaigns.rs`)
//! - `/admin/automations`, `/admin/automations/{name}` (`pages/automations.rs`)
//! - `/admin/queue`, `/admin/queue/{id}` (`pages/queue.rs`)
//! - `/admin/outbox`, `/admin/outbox/{id}`, `…/{id}/frame` (`pages/outbox.rs`,
//!   the capture outbox)
//! - `/admin/users`, `/admin/activity` (`pages/users.rs`)

pub mod chart;
pub mod pages;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use super::reply::{self, ApiError, Body, ReqBody};
use super::{Actor, AppState};
use crate::users::{self, Role, Session, User};

/// Failed logins allowed per client address, and per user name, in
/// [`LOGIN_WINDOW`].
pub const LOGIN_ATTEMPTS: u32 = 5;

/// The window failed logins are counted in.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The largest form body (a template's or segment's text fits).
const FORM_LIMIT: usize = 1024 * 1024;

const SESSION_COOKIE: &str = "herald_session";
const LOGIN_COOKIE: &str = "herald_login";

/// The policy of every admin page: nothing from elsewhere, no inline
/// script or style.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The policy of a template preview (inside a sandboxed iframe): the
/// message's own inline styles and remote images, never a script.
pub const PREVIEW_CSP: &str = "default-src 'none'; img-src http: https: data:; style-src 'unsafe-inline'; font-src http: https: data:; frame-ancestors 'self'; sandbox";

/// The UI's own state: failed logins per address and per name, and the
/// segment counts the segments page last made.
#[derive(Default)]
pub struct UiState {
    failures: Mutex<HashMap<String, (Instant, u32)>>,
    segment_counts: Mutex<HashMap<String, (Value, Value, Instant)>>,
}

/// A segment's count as the segments page last made it.
pub struct SegmentCount {
    /// Contacts in the segment.
    pub count: Value,
    /// Of them with consent `granted`.
    pub granted: Value,
    /// How long ago it was counted.
    pub age: Duration,
}

impl UiState {
    /// The last count of a segment, if any.
    pub fn segment_count(&self, name: &str) -> Option<SegmentCount> {
        let g = self.segment_counts.lock().ok()?;
        g.get(name).map(|(count, granted, at)| SegmentCount {
            count: count.clone(),
            granted: granted.clone(),
            age: at.elapsed(),
        })
    }

    /// Notes a segment's count.
    pub fn set_segment_count(&self, name: &str, count: Value, granted: Value) {
        if let Ok(mut g) = self.segment_counts.lock() {
            if g.len() > 10_000 {
                g.clear();
            }
            g.insert(name.to_string(), (count, granted, Instant::now()));
        }
    }

    /// Counts a login attempt against every key, unless one of them is
    /// blocked already (then nothing is counted and the answer is false).
    /// The check and the count are one step under the lock, and the
    /// attempt is counted *before* the password is verified: concurrent
    /// attempts cannot all pass the check while the first verifications
    /// are still running. A successful login gives its count back
    /// ([`UiState::refund`], [`UiState::clear`]).
    fn attempt(&self, keys: &[&str]) -> bool {
        let Ok(mut g) = self.failures.lock() else {
            return true;
        };
        let blocked = |e: Option<&(Instant, u32)>| {
            e.is_some_and(|(since, n)| since.elapsed() < LOGIN_WINDOW && *n >= LOGIN_ATTEMPTS)
        };
        if keys.iter().any(|k| blocked(g.get(*k))) {
            return false;
        }
        if g.len() > 100_000 {
            g.retain(|_, (since, _)| since.elapsed() < LOGIN_WINDOW);
        }
        for k in keys {
            let e = g.entry((*k).to_string()).or_insert((Instant::now(), 0));
            if e.0.elapsed() >= LOGIN_WINDOW {
                *e = (Instant::now(), 0);
            }
            e.1 += 1;
        }
        true
    }

    /// Gives back one attempt counted against `key` (a login that
    /// succeeded is no failure).
    fn refund(&self, key: &str) {
        if let Ok(mut g) = self.failures.lock()
            && let Some(e) = g.get_mut(key)
        {
            e.1 = e.1.saturating_sub(1);
        }
    }

    fn clear(&self, key: &str) {
        if let Ok(mut g) = self.failures.lock() {
            g.remove(key);
        }
    }
}

/// A logged-in request: who, their session, and the way to the API.
pub struct Ctx<'a> {
    /// The daemon.
    pub state: &'a Arc<AppState>,
    /// The user.
    pub user: User,
    /// Their session (its CSRF token goes into every form).
    pub session: Session,
    /// The client.
    pub peer: SocketAddr,
    /// The query string's pairs.
    pub query: Vec<(String, String)>,
}

/// What a request brings besides its path.
// One per request, moved once: boxing the multipart request buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// A `GET`.
    None,
    /// A form (`application/x-www-form-urlencoded`), its CSRF token checked.
    Form(Form),
    /// A `multipart/form-data` upload (CSRF token checked from the query),
    /// its body unread.
    Multipart(Request<ReqBody>),
}

/// A submitted form's fields, in order.
#[derive(Debug, Default, Clone)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    /// The first value of a field.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    /// The first value of a field, trimmed; `None` when empty.
    pub fn text(&self, k: &str) -> Option<String> {
        self.get(k)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    /// Every value of a field (checkboxes, multiple selects).
    pub fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Ctx<'_> {
    /// Whether the user has at least `role`.
    pub fn can(&self, role: Role) -> bool {
        self.user.role >= role
    }

    /// A query parameter, trimmed; `None` when absent or empty.
    pub fn param(&self, k: &str) -> Option<&str> {
        reply::query_str(&self.query, k)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// Calls the admin API in process as this user and returns its answer
    /// (status and headers included). The role check and the activity log
    /// are the API's.
    pub async fn api_response(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: &str,
        body: ReqBody,
    ) -> Result<Response<Body>, ApiError> {
        let uri: http::Uri = path_and_query
            .parse()
            .map_err(|e| ApiError::bad_request(format!("bad path {path_and_query}: {e}")))?;
        let route = super::route(uri.path());
        // A body of known length says so, as a client's would: handlers
        // whose body is optional (previews) look at `Content-Length`.
        let length = hyper::body::Body::size_hint(&body).exact();
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if let Some(n) = length {
            req.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        req.extensions_mut()
            .insert(reply::BodyPace::of(&self.state.config().http.limits));
        let actor = Actor {
            name: self.user.name.clone(),
            role: self.user.role,
        };
        let response = super::call_as(self.state, &route, self.peer, actor, req).await?;
        Ok(response)
    }

    /// Calls the admin API with a JSON body (or none) and returns the JSON
    /// answer; an API error comes back as the error.
    pub async fn api(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let r = self
            .api_response(
                method,
                path_and_query,
                "application/json",
                reply::full_body(bytes),
            )
            .await?;
        let bytes = body_bytes(r.into_body()).await;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the API answered something not JSON: {e}")))
    }

    /// A `GET` of the API.
    pub async fn get(&self, path_and_query: &str) -> Result<Value, ApiError> {
        self.api(Method::GET, path_and_query, None).await
    }

    /// The banner every page shows while the store is low on space or
    /// unavailable (`/healthz` says the same).
    fn storage_warning(&self) -> Option<String> {
        use crate::store::health::StoreState;
        let h = self.state.store.health();
        match h.state() {
            StoreState::Ok => None,
            StoreState::LowSpace => {
                let (free, reserve) = h.space();
                Some(format!(
                    "The store's disk is low on space ({} MiB free, {} MiB kept in reserve): imports, event batches and campaign sends wait until there is room.",
                    free >> 20,
                    reserve >> 20
                ))
            }
            StoreState::Unavailable => Some(format!(
                "The store is unavailable ({}); Herald is re-opening it. Changes are refused until then.",
                h.reason()
            )),
        }
    }

    /// Renders a page: `template` with `data`, inside the layout (which
    /// sees `user`, `role`, `csrf`, `nav` and the query's `notice` and
    /// `problem`).
    pub fn page(&self, template: &str, nav: &str, data: Value) -> Response<Body> {
        let mut data = data;
        if let Value::Object(m) = &mut data {
            m.insert("user".into(), json!(self.user.name));
            m.insert("role".into(), json!(self.user.role.as_str()));
            m.insert("can_edit".into(), json!(self.can(Role::Editor)));
            m.insert("can_admin".into(), json!(self.can(Role::Admin)));
            m.insert("csrf".into(), json!(self.session.csrf));
            m.insert("nav".into(), json!(nav));
            m.insert("notice".into(), json!(self.param("notice")));
            m.insert("problem".into(), json!(self.param("problem")));
            m.insert("storage_warning".into(), json!(self.storage_warning()));
            let capture = self.state.config.get().delivery.capture.is_some();
            m.insert("capture_mode".into(), json!(capture));
        }
        render(StatusCode::OK, template, &data)
    }
}

/// A message's HTML alone, for a sandboxed iframe of a page: under
/// [`PREVIEW_CSP`] (no script), framed only by this UI.
pub fn preview_frame(status: StatusCode, html: String) -> Response<Body> {
    let mut resp = reply::text_response(status, "text/html; charset=utf-8", html);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PREVIEW_CSP),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    );
    resp
}

/// Reads a whole response body (in-process answers are in memory).
pub async fn body_bytes(body: Body) -> Bytes {
    http_body_util::BodyExt::collect(body)
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}

/// A path segment or query value, percent-encoded (everything but the
/// unreserved characters): what pages put into the API paths they call, so
/// a name with `/`, `?`, `#`, `&` or `+` stays one segment.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `303 See Other` to `to` (a path of this UI).
pub fn redirect(to: &str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `303` to `to` with a message the next page shows (`notice`, or
/// `problem` for an error).
pub fn redirect_with(to: &str, key: &str, message: &str) -> Response<Body> {
    let sep = if to.contains('?') { '&' } else { '?' };
    let m: String = url::form_urlencoded::byte_serialize(message.as_bytes()).collect();
    redirect(&format!("{to}{sep}{key}={m}"))
}

/// After a form: back to `to` with the API's error as the problem, or
/// with `done` as the notice.
pub fn after<T>(to: &str, r: Result<T, ApiError>, done: &str) -> Response<Body> {
    match r {
        Ok(_) => redirect_with(to, "notice", done),
        Err(e) if e.status == StatusCode::FORBIDDEN => error_page(&e),
        Err(e) => redirect_with(to, "problem", &e.message),
    }
}

/// The template environment: every template of `templates/`, compiled in.
fn env() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut e = minijinja::Environment::new();
        e.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        e.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for (name, text) in templates() {
            if let Err(err) = e.add_template(name, text) {
                tracing::error!(template = name, error = %err, "admin UI template does not compile");
            }
        }
        e.add_filter("num", filters::num);
        e.add_filter("pct", filters::pct);
        e.add_filter("money", filters::money);
        e.add_filter("when", filters::when);
        e.add_function("svg", filters::svg);
        e
    })
}

/// Every template: the layout's and each page module's.
fn templates() -> impl Iterator<Item = (&'static str, &'static str)> {
    [
        ("base.html", include_str!("templates/base.html")),
        ("login.html", include_str!("templates/login.html")),
        ("error.html", include_str!("templates/error.html")),
        ("macros.html", include_str!("templates/macros.html")),
    ]
    .into_iter()
    .chain(pages::templates())
}

/// Renders `template` with `data` as a whole response.
pub fn render(status: StatusCode, template: &str, data: &Value) -> Response<Body> {
    let html = env()
        .get_template(template)
        .and_then(|t| t.render(data))
        .unwrap_or_else(|e| {
            tracing::error!(template, error = %e, "admin UI page failed to render");
            format!(
                "<!doctype html><title>Error</title><p>This page failed to render: {}</p>",
                html_escape::encode_text(&e.to_string())
            )
        });
    reply::text_response(status, "text/html; charset=utf-8", html)
}

/// An error as a page (the status is the error's).
pub fn error_page(e: &ApiError) -> Response<Body> {
    render(
        e.status,
        "error.html",
        &json!({"status": e.status.as_u16(), "code": e.code, "message": e.message}),
    )
}

/// Filters and functions the templates use.
mod filters {
    use minijinja::value::Value;

    /// 1234567 → "1,234,567".
    pub fn num(v: Value) -> String {
        let n = i128::try_from(v.clone()).unwrap_or(0);
        let s = n.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 { format!("-{out}") } else { out }
    }

    /// 0.01234 → "1.23%".
    pub fn pct(v: Value) -> String {
        let f = f64::try_from(v).unwrap_or(0.0);
        format!("{:.2}%", f * 100.0)
    }

    /// 1234.5 → "1,234.50".
    pub fn money(v: Value) -> String {
        let f = f64::try_from(v).unwrap_or(0.0);
        let cents = (f * 100.0).round() as i128;
        let sign = if cents < 0 { "-" } else { "" };
        let (whole, frac) = (cents.abs() / 100, cents.abs() % 100);
        format!("{sign}{}.{frac:02}", num(Value::from(whole)))
    }

    /// An RFC 3339 time → "2026-12-03 22:10 UTC" (empty for none).
    pub fn when(v: Value) -> String {
        let Some(s) = v.as_str() else {
            return String::new();
        };
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| {
                t.with_timezone(&chrono::Utc)
                    .format("%Y-%m-%d %H:%M UTC")
                    .to_string()
            })
            .unwrap_or_else(|_| s.to_string())
    }

    /// `svg(chart)`: an inline SVG chart (see `ui::chart`), marked safe.
    pub fn svg(v: Value) -> Value {
        let spec: serde_json::Value = serde_json::to_value(&v).unwrap_or_default();
        Value::from_safe_string(super::chart::render(&spec))
    }
}

fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn set_cookie(r: &mut Response<Body>, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn secure(state: &AppState) -> &'static str {
    if state.config().http.public_url.scheme() == "https" {
        "; Secure"
    } else {
        ""
    }
}

fn headers(r: &mut Response<Body>, csp: &'static str) {
    let h = r.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(csp));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// Serves one request under `/admin` (and `/`, which leads there).
pub async fn serve(
    state: &Arc<AppState>,
    peer: SocketAddr,
    req: Request<ReqBody>,
) -> Response<Body> {
    let mut r = serve_inner(state, peer, req)
        .await
        .unwrap_or_else(|e| error_page(&e));
    headers(&mut r, CSP);
    r
}

async fn serve_inner(
    state: &Arc<AppState>,
    peer: SocketAddr,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    if path == "/" {
        return Ok(redirect("/admin"));
    }
    let rest: Vec<String> = path
        .trim_start_matches("/admin")
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(super::percent_decode)
        .collect();
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (rest.as_slice(), &method) {
        (["assets", name], &Method::GET | &Method::HEAD) => return Ok(asset(name)),
        (["login"], &Method::GET | &Method::HEAD) => return Ok(login_page(state, &req, None)),
        (["login"], &Method::POST) => return login(state, peer, req).await,
        _ => {}
    }
    let now = state.clock.now().timestamp_millis();
    let token = cookie(req.headers(), SESSION_COOKIE);
    let found = match &token {
        Some(t) => users::session(&state.store, t, now).await?,
        None => None,
    };
    let Some((session, user)) = found else {
        if method == Method::GET {
            let next: String = url::form_urlencoded::byte_serialize(
                req.uri()
                    .path_and_query()
                    .map_or("/admin", |p| p.as_str())
                    .as_bytes(),
            )
            .collect();
            return Ok(redirect(&format!("/admin/login?next={next}")));
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "log in first: your session has ended",
        ));
    };
    let query = reply::query_pairs(req.uri().query());
    let input = if method == Method::GET || method == Method::HEAD {
        Input::None
    } else {
        check_origin(&req, &state.config().http.public_url)?;
        let multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"));
        if multipart {
            check_csrf(&session, reply::query_str(&query, "_csrf"))?;
            Input::Multipart(req)
        } else {
            let bytes = reply::read_any_body(req, FORM_LIMIT).await?;
            let form = Form(
                url::form_urlencoded::parse(&bytes)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            );
            check_csrf(&session, form.get("_csrf"))?;
            Input::Form(form)
        }
    };
    if rest.as_slice() == ["logout"] {
        // Only the layout's form (a POST, its CSRF token checked above)
        // ends a session: a link or an image cannot.
        if method != Method::POST {
            return Ok(redirect("/admin"));
        }
        if let Some(t) = &token {
            users::logout(&state.store, t).await?;
        }
        let mut r = redirect_with("/admin/login", "notice", "You are logged out.");
        set_cookie(
            &mut r,
            &format!(
                "{SESSION_COOKIE}=; Path=/admin; Max-Age=0; HttpOnly; SameSite=Strict{}",
                secure(state)
            ),
        );
        return Ok(r);
    }
    let ctx = Ctx {
        state,
        user,
        session,
        peer,
        query,
    };
    pages::route(&ctx, &method, &rest, input).await
}

/// A `POST` whose `Origin` names another site is refused (on top of the
/// CSRF token and `SameSite=Strict`). This host is the request's `Host`,
/// or `public_url`'s (behind a proxy that rewrites `Host`).
fn check_origin(req: &Request<ReqBody>, public: &url::Url) -> Result<(), ApiError> {
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
    let public_host = match (public.host_str(), public.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    };
    if origin == "null" || (origin_host != host && origin_host != public_host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_origin",
            format!("a form from `{origin}` cannot change anything here"),
        ));
    }
    Ok(())
}

fn check_csrf(session: &Session, given: Option<&str>) -> Result<(), ApiError> {
    match given {
        Some(t) if super::same(t, &session.csrf) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_csrf",
            "this form's security token is missing or wrong: reload the page and try again",
        )),
    }
}

fn asset(name: &str) -> Response<Body> {
    let (ct, body): (&str, &'static [u8]) = match name {
        "style.css" => (
            "text/css; charset=utf-8",
            include_bytes!("assets/style.css"),
        ),
        "app.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("assets/app.js"),
        ),
        _ => return error_page(&ApiError::not_found(format!("no asset `{name}`"))),
    };
    let mut r = Response::new(Body::new(Bytes::from_static(body)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

/// Where to go after logging in: a path of this UI, never elsewhere.
fn next_path(q: &[(String, String)]) -> String {
    match reply::query_str(q, "next") {
        Some(n) if n.starts_with("/admin") && !n.contains("//") && !n.contains('\\') => {
            n.to_string()
        }
        _ => "/admin".to_string(),
    }
}

fn login_page(state: &AppState, req: &Request<ReqBody>, problem: Option<&str>) -> Response<Body> {
    let q = reply::query_pairs(req.uri().query());
    let nonce = users::new_token();
    let mut r = render(
        if problem.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        },
        "login.html",
        &json!({
            "nonce": nonce,
            "next": next_path(&q),
            "problem": problem,
            "notice": reply::query_str(&q, "notice"),
        }),
    );
    set_cookie(
        &mut r,
        &format!(
            "{LOGIN_COOKIE}={nonce}; Path=/admin/login; HttpOnly; SameSite=Strict{}",
            secure(state)
        ),
    );
    r
}

async fn login(
    state: &Arc<AppState>,
    peer: SocketAddr,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let client = super::Client::of(peer, req.headers(), &state.config().http.trusted_proxies);
    let ip = client.ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let nonce = cookie(req.headers(), LOGIN_COOKIE);
    let q = reply::query_pairs(req.uri().query());
    let (parts, body) = req.into_parts();
    let bytes = reply::read_any_body(Request::from_parts(parts.clone(), body), 64 * 1024).await?;
    let form = Form(
        url::form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    );
    let again = |problem: &str, status: StatusCode| {
        let req = Request::from_parts(parts.clone(), reply::full_body(Bytes::new()));
        let mut r = login_page(state, &req, Some(problem));
        *r.status_mut() = status;
        r
    };
    match (&nonce, form.get("_login")) {
        (Some(a), Some(b)) if super::same(a, b) => {}
        _ => {
            return Ok(again(
                "The login form expired: please try again.",
                StatusCode::FORBIDDEN,
            ));
        }
    }
    let name = form.text("name").unwrap_or_default().to_lowercase();
    // A name no user can have is counted against the address only (and
    // does not grow the table with arbitrary keys).
    let name_key = if users::check_name(&name).is_ok() {
        format!("user:{name}")
    } else {
        String::new()
    };
    let ip_key = format!("ip:{ip}");
    let ui = &state.ui;
    let keys: Vec<&str> = [ip_key.as_str(), name_key.as_str()]
        .into_iter()
        .filter(|k| !k.is_empty())
        .collect();
    if !ui.attempt(&keys) {
        tracing::warn!(%ip, "admin UI: login refused, too many failed attempts");
        let mut r = again(
            "Too many failed logins: wait 15 minutes and try again.",
            StatusCode::TOO_MANY_REQUESTS,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("900"));
        return Ok(r);
    }
    let password = form.get("password").unwrap_or_default().to_string();
    let now = state.clock.now().timestamp_millis();
    let ttl_d = state.config().admin.session_ttl;
    let ttl = ttl_d.as_millis() as i64;
    match users::login(&state.store, &name, password, now, ttl).await {
        Ok(Some((token, _session, user))) => {
            ui.clear(&name_key);
            ui.refund(&ip_key);
            tracing::info!(user = %user.name, %ip, "admin UI: logged in");
            let mut r = redirect(&next_path(&q));
            set_cookie(
                &mut r,
                &format!(
                    "{SESSION_COOKIE}={token}; Path=/admin; Max-Age={}; HttpOnly; SameSite=Strict{}",
                    ttl_d.as_secs(),
                    secure(state)
                ),
            );
            Ok(r)
        }
        Ok(None) => {
            // Already counted by `attempt`.
            tracing::info!(%ip, "admin UI: failed login");
            Ok(again("Wrong name or password.", StatusCode::UNAUTHORIZED))
        }
        Err(e) => Err(ApiError::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_inside_the_admin_ui() {
        let q = |v: &str| vec![("next".to_string(), v.to_string())];
        assert_eq!(next_path(&q("/admin/contacts?q=a")), "/admin/contacts?q=a");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/admin//evil",
            "/\\evil",
            "/api/v1/users",
        ] {
            assert_eq!(next_path(&q(bad)), "/admin", "{bad}");
        }
    }

    #[test]
    fn every_template_compiles() {
        for (name, _) in templates() {
            assert!(env().get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn numbers_read_well() {
        use minijinja::value::Value;
        assert_eq!(filters::num(Value::from(1234567)), "1,234,567");
        assert_eq!(filters::num(Value::from(-12)), "-12");
        assert_eq!(filters::pct(Value::from(0.01234)), "1.23%");
        assert_eq!(filters::money(Value::from(1234.5)), "1,234.50");
        assert_eq!(filters::money(Value::from(1.999)), "2.00");
        assert_eq!(filters::money(Value::from(-0.5)), "-0.50");
    }

    #[test]
    fn failed_logins_block_after_the_limit() {
        let ui = UiState::default();
        for _ in 0..LOGIN_ATTEMPTS {
            assert!(ui.attempt(&["ip:1", "user:a"]));
        }
        assert!(!ui.attempt(&["ip:1", "user:b"]));
        assert!(!ui.attempt(&["ip:2", "user:a"]));
        // A refused attempt counts nothing: user:b is still free.
        assert!(ui.attempt(&["ip:3", "user:b"]));
        ui.clear("ip:1");
        ui.clear("user:a");
        assert!(ui.attempt(&["ip:1", "user:a"]));
    }

    #[test]
    fn attempts_in_flight_count_before_their_outcome() {
        // Ten logins sent at once from one address: only the first
        // LOGIN_ATTEMPTS may reach the (slow) password check, whatever
        // their outcome turns out to be.
        let ui = UiState::default();
        let admitted = (0..10)
            .filter(|i| ui.attempt(&["ip:9", &format!("user:{i}")]))
            .count();
        assert_eq!(admitted, LOGIN_ATTEMPTS as usize);
        // A success gives its attempt back.
        ui.refund("ip:9");
        assert!(ui.attempt(&["ip:9", "user:x"]));
        assert!(!ui.attempt(&["ip:9", "user:y"]));
    }
}
