//! Public endpoints recipients use without logging in: unsubscribe and
//! list preferences (`/u/{token}`, RFC 8058 one-click POST included), the
//! signup form (`POST /subscribe`) and its confirmation
//! (`/confirm/{token}`), and the message as a web page (`/v/{token}`).
//!
//! Every token is HMAC-signed; a bad one gets a 404 page. Nothing changes on
//! a GET except a confirmation (which is what the link in the mail is
//! for). Every change is committed before the answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::http::reply::ReqBody;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

use super::pages::{self, Texts, attr, esc, fill, texts};
use super::reply::{self, ApiError, Body};
use super::{AppState, Client};
use crate::config::Config;
use crate::contacts::model::{ConsentState, Contact};
use crate::contacts::signup::{self, Confirmed};
use crate::metrics::OutcomeLabels;
use crate::send::{
    self,
    outbox::Context,
    signup::{SignupError, SignupForm, Subscribed},
};
use crate::store::ReadTables as _;
use crate::tokens::{SendKind, Token};
use crate::track::{self, Actor, Unsubscribed};

/// The Content-Security-Policy of `/v/` pages.
const VIEW_CSP: &str = "default-src 'none'; img-src * data:; style-src * 'unsafe-inline'; \
font-src * data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// Largest form body accepted on public endpoints.
const FORM_LIMIT: usize = 64 * 1024;

/// Signups per client address in the current hour.
#[derive(Default)]
pub struct Limiter(Mutex<(u64, HashMap<IpAddr, u32>)>);

impl Limiter {
    /// Counts a signup from `ip` in `hour`; false beyond `max`.
    pub fn allow(&self, ip: IpAddr, hour: u64, max: u32) -> bool {
        let Ok(mut g) = self.0.lock() else {
            return true;
        };
        if g.0 != hour {
            *g = (hour, HashMap::new());
        }
        let n = g.1.entry(ip).or_insert(0);
        *n += 1;
        *n <= max
    }
}

/// The site and page language of a contact.
fn site_and_lang(config: &Config, c: Option<&Contact>) -> (String, String) {
    let site = c
        .and_then(|c| c.site.as_ref())
        .and_then(|id| config.sites.iter().find(|s| &s.id == id))
        .or_else(|| config.sites.first());
    let name = site.map_or("Herald".to_string(), |s| s.name.clone());
    let lang = c
        .and_then(|c| c.language.clone())
        .or_else(|| site.and_then(|s| s.default_language.clone()))
        .unwrap_or_else(|| "en".into());
    (name, lang)
}

/// A one-paragraph page for a contact, in their language, with their
/// site's name: `pick` chooses the title and the text (`{lists}` is
/// `lists`).
fn contact_page(
    config: &Config,
    c: &Contact,
    pick: impl Fn(&Texts) -> (&'static str, &'static str),
    lists: &str,
) -> Response<Body> {
    let (site, lang) = site_and_lang(config, Some(c));
    let (t, lang) = texts(&lang);
    let (title, text) = pick(t);
    pages::page(
        StatusCode::OK,
        lang,
        &site,
        title,
        &format!("<p>{}</p>", fill(text, &site, &c.email, lists)),
    )
}

fn invalid(config: &Config) -> Response<Body> {
    let (site, lang) = site_and_lang(config, None);
    pages::invalid(&lang, &site)
}

/// A recipient's page whose answer could not be stored (`saving`) or read
/// (the store is unavailable or shutting down): an HTML page saying to try
/// again, never a JSON error and never a pretended success. Other errors
/// pass.
pub fn page_unavailable(
    saving: bool,
    config: &Config,
    r: Result<Response<Body>, ApiError>,
) -> Result<Response<Body>, ApiError> {
    match r {
        Err(e)
            if e.status == StatusCode::SERVICE_UNAVAILABLE
                || e.status == StatusCode::INSUFFICIENT_STORAGE =>
        {
            let (site, lang) = site_and_lang(config, None);
            Ok(pages::unavailable(&lang, &site, saving))
        }
        r => r,
    }
}

/// Form fields of a body: `application/x-www-form-urlencoded`,
/// `multipart/form-data` or a JSON object of strings.
fn form_fields(content_type: &str, body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let ct = content_type.to_ascii_lowercase();
    if ct.starts_with("multipart/form-data") {
        let boundary = content_type
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
            .map(|(_, v)| v.trim().trim_matches('"').to_string())
            .ok_or_else(|| ApiError::bad_request("multipart/form-data without a boundary"))?;
        return multipart(body, &boundary);
    }
    if ct.starts_with("application/json") {
        let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not a JSON object: {e}")))?;
        return Ok(v
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect());
    }
    if ct.is_empty()
        || ct.starts_with("application/x-www-form-urlencoded")
        || ct.starts_with("text/plain")
    {
        return Ok(url::form_urlencoded::parse(body).into_owned().collect());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("expected a form (urlencoded or multipart), not `{content_type}`"),
    ))
}

/// The text fields of a `multipart/form-data` body (RFC 7578).
fn multipart(body: &[u8], boundary: &str) -> Result<Vec<(String, String)>, ApiError> {
    let bad = |m: &str| ApiError::bad_request(format!("malformed multipart body: {m}"));
    if boundary.is_empty() || boundary.len() > 200 {
        return Err(bad("bad boundary"));
    }
    let text = String::from_utf8_lossy(body);
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut parts = text.split(delim.as_str());
    parts.next(); // preamble
    for part in parts {
        if part.starts_with("--") {
            break; // closing delimiter
        }
        let part = part
            .strip_prefix("\r\n")
            .or_else(|| part.strip_prefix('\n'))
            .unwrap_or(part);
        let (head, value) = part
            .split_once("\r\n\r\n")
            .or_else(|| part.split_once("\n\n"))
            .ok_or_else(|| bad("a part has no blank line after its headers"))?;
        let name = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .and_then(|l| {
                l.split(';')
                    .filter_map(|p| p.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("name"))
                    .map(|(_, v)| v.trim().trim_matches('"').to_string())
            })
            .ok_or_else(|| bad("a part has no Content-Disposition name"))?;
        let value = value
            .strip_suffix("\r\n")
            .or_else(|| value.strip_suffix('\n'))
            .unwrap_or(value);
        out.push((name, value.to_string()));
    }
    Ok(out)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn content_type(req: &Request<ReqBody>) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn actor(c: &Client) -> Actor {
    Actor {
        ip: c.ip.map(|i| i.to_string()),
        user_agent: (!c.user_agent.is_empty()).then(|| c.user_agent.clone()),
    }
}

/// `GET /u/{token}`: the unsubscribe page with the list choice. Changes
/// nothing.
pub async fn unsubscribe_page(
    state: &Arc<AppState>,
    token: &str,
) -> Result<Response<Body>, ApiError> {
    let config = state.config();
    let m = match config.tracking.keys.verify(token) {
        // A preview's links lead nowhere: they name a real contact, but no
        // message was sent to them.
        Some(Token::Unsubscribe(m)) | Some(Token::Preferences(m))
            if m.send.kind != SendKind::Preview =>
        {
            m
        }
        _ => return Ok(invalid(&config)),
    };
    let id = m.contact;
    let (contact, lists) = state
        .store
        .read(move |r| {
            let Some(c) = r.contact(id)? else {
                return Ok((None, Vec::new()));
            };
            let mut lists = Vec::new();
            for l in &c.lists {
                if let Some(list) = r.list(*l)? {
                    lists.push((list.id, list.name));
                }
            }
            Ok((Some(c), lists))
        })
        .await?;
    let Some(c) = contact else {
        return Ok(invalid(&config));
    };
    if c.consent == ConsentState::Withdrawn {
        return Ok(unsubscribed(&config, &c));
    }
    let (site, lang) = site_and_lang(&config, Some(&c));
    let (t, lang) = texts(&lang);
    let mut body = format!(
        "<p>{}</p><form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
<button type=\"submit\">{}</button></form>",
        fill(t.unsubscribe_question, &site, &c.email, ""),
        esc(t.unsubscribe_button)
    );
    if !lists.is_empty() {
        body.push_str(&format!(
            "<h2>{}</h2><p>{}</p><form method=\"post\"><input type=\"hidden\" name=\"action\" value=\"preferences\">",
            esc(t.preferences_title),
            esc(t.preferences_text)
        ));
        for (id, name) in &lists {
            body.push_str(&format!(
                "<label><input type=\"checkbox\" name=\"keep\" value=\"{}\" checked> {}</label>",
                attr(&id.to_string()),
                esc(name)
            ));
        }
        body.push_str(&format!(
            "<button type=\"submit\">{}</button></form>",
            esc(t.preferences_button)
        ));
    }
    Ok(pages::page(
        StatusCode::OK,
        lang,
        &site,
        t.unsubscribe_title,
        &body,
    ))
}

/// `POST /u/{token}`: RFC 8058 one-click unsubscribe (body
/// `List-Unsubscribe=One-Click`, urlencoded or multipart: 200, no redirect,
/// idempotent), or the preference form (`action=preferences`, `keep=ID`…).
pub async fn unsubscribe_post(
    state: &Arc<AppState>,
    token: &str,
    client: &Client,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let config = state.config();
    let m = match config.tracking.keys.verify(token) {
        // A preview's links lead nowhere: they name a real contact, but no
        // message was sent to them.
        Some(Token::Unsubscribe(m)) | Some(Token::Preferences(m))
            if m.send.kind != SendKind::Preview =>
        {
            m
        }
        _ => return Ok(invalid(&config)),
    };
    let ct = content_type(&req);
    let body = reply::read_any_body(req, FORM_LIMIT).await?;
    let fields = form_fields(&ct, &body)?;
    let now = state.clock.now();
    let id = m.contact;
    if field(&fields, "action") == Some("preferences") {
        let keep: Vec<u64> = fields
            .iter()
            .filter(|(k, _)| k == "keep")
            .filter_map(|(_, v)| v.trim().parse().ok())
            .collect();
        let (left, contact) = state
            .store
            .write(move |t| {
                let leave: Vec<u64> = match t.contact(id)? {
                    Some(c) => c
                        .lists
                        .iter()
                        .copied()
                        .filter(|l| !keep.contains(l))
                        .collect(),
                    None => Vec::new(),
                };
                let left = track::leave_lists(t, m, leave, now)?;
                Ok((left, t.contact(id)?))
            })
            .await?;
        let Some(c) = contact else {
            return Ok(invalid(&config));
        };
        if !left.is_empty() {
            state
                .metrics
                .unsubscribes
                .get_or_create(&OutcomeLabels {
                    outcome: "preferences",
                })
                .inc();
        }
        let changed = !left.is_empty();
        return Ok(contact_page(
            &config,
            &c,
            |t| {
                let text = if changed {
                    t.saved_text
                } else {
                    t.unchanged_text
                };
                (t.saved_title, text)
            },
            &left.join(", "),
        ));
    }
    if field(&fields, "List-Unsubscribe") != Some("One-Click") {
        return Err(ApiError::bad_request(
            "the body must be List-Unsubscribe=One-Click (RFC 8058), or action=preferences",
        ));
    }
    let who = actor(client);
    let via = if fields.len() == 1 {
        "one_click"
    } else {
        "page"
    };
    let (done, contact) = state
        .store
        .write(move |t| {
            let done = track::unsubscribe(t, m, &who, via, now)?;
            Ok((done, t.contact(id)?))
        })
        .await?;
    let Some(c) = contact else {
        return Ok(invalid(&config));
    };
    if done == Unsubscribed::Now {
        state
            .metrics
            .unsubscribes
            .get_or_create(&OutcomeLabels { outcome: via })
            .inc();
    }
    Ok(unsubscribed(&config, &c))
}

/// The "you are unsubscribed" page.
fn unsubscribed(config: &Config, c: &Contact) -> Response<Body> {
    contact_page(
        config,
        c,
        |t| (t.unsubscribed_title, t.unsubscribed_text),
        "",
    )
}

/// `GET /confirm/{token}` (and `POST`, the button of the page shown to
/// link checkers): the contact becomes `granted`, with IP and user agent
/// in the consent log. A `HEAD`, or a `GET` from a known link scanner, only
/// shows the page with the button.
pub async fn confirm(
    state: &Arc<AppState>,
    token: &str,
    client: &Client,
    act: bool,
) -> Result<Response<Body>, ApiError> {
    let config = state.config();
    let Some(Token::Confirm {
        contact,
        issued,
        request,
    }) = config.tracking.keys.verify(token)
    else {
        return Ok(invalid(&config));
    };
    let now = state.clock.now();
    let ttl = config
        .signup
        .as_ref()
        .map_or(7 * 86400, |s| s.confirm_ttl.as_secs());
    if (now.timestamp().max(0) as u64).saturating_sub(issued) > ttl {
        return Ok(invalid(&config));
    }
    let scanner = crate::track::machine::from_request(
        &client.user_agent,
        client.ip,
        &config.tracking.machine_networks,
    )
    .is_some();
    if !act || scanner {
        let c = state.store.read(move |r| r.contact(contact)).await?;
        let Some(c) = c else {
            return Ok(invalid(&config));
        };
        let (site, lang) = site_and_lang(&config, Some(&c));
        let (t, lang) = texts(&lang);
        let body = format!(
            "<p>{}</p><form method=\"post\"><button type=\"submit\">{}</button></form>",
            fill(t.confirm_question, &site, &c.email, ""),
            esc(t.confirm_button)
        );
        return Ok(pages::page(
            StatusCode::OK,
            lang,
            &site,
            t.confirm_title,
            &body,
        ));
    }
    let who = actor(client);
    let done = state
        .store
        .write(move |t| {
            let click = signup::Click {
                contact,
                issued,
                request,
                ip: who.ip,
                user_agent: who.user_agent,
            };
            signup::confirm(t, click, now)
        })
        .await?;
    let c = match done {
        Confirmed::Now(c) => {
            state.metrics.confirmations.inc();
            c
        }
        Confirmed::Already(c) => c,
        Confirmed::Refused => return Ok(invalid(&config)),
    };
    if let Some(u) = config
        .signup
        .as_ref()
        .and_then(|s| s.confirmed_url.as_ref())
    {
        return Ok(pages::see_other(u));
    }
    Ok(contact_page(
        &config,
        &c,
        |t| (t.confirmed_title, t.confirmed_text),
        "",
    ))
}

/// `GET /v/{token}`: the message as a web page, rendered again for the
/// contact from the campaign's template (links and pixel as in the mail).
pub async fn view(state: &Arc<AppState>, token: &str) -> Result<Response<Body>, ApiError> {
    let config = state.config();
    let Some(Token::View(m, sent)) = config.tracking.keys.verify(token) else {
        return Ok(invalid(&config));
    };
    if !matches!(m.send.kind, SendKind::Campaign | SendKind::Test) {
        return Ok(invalid(&config));
    }
    let campaigns = state.campaigns.clone();
    // A page made before send times were recorded renders as of the epoch:
    // its auto-login links have long expired.
    let sent = sent.unwrap_or(0);
    let html = tokio::task::spawn_blocking(move || campaigns.view_html(m, sent))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let html = match html {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(invalid(&config)),
        Err(e) => {
            tracing::warn!(error = %e, "view in browser: the message could not be rendered");
            return Ok(invalid(&config));
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(html)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // A mail's HTML, shown on Herald's own origin: no scripts, no forms,
    // no framing; images, styles and fonts as mail clients load them.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(VIEW_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(r)
}

/// The answer to a signup: JSON for API clients, otherwise the page (or
/// the configured redirect).
fn signup_answer(
    config: &Config,
    json_client: bool,
    status: &str,
    email: &str,
    lang: &str,
) -> Response<Body> {
    if json_client {
        return reply::json_response(StatusCode::ACCEPTED, &json!({"status": status}));
    }
    if let Some(u) = config.signup.as_ref().and_then(|s| s.thanks_url.as_ref()) {
        return pages::see_other(u);
    }
    let (site, _) = site_and_lang(config, None);
    let (t, lang) = texts(lang);
    pages::page(
        StatusCode::OK,
        lang,
        &site,
        t.signup_title,
        &format!("<p>{}</p>", fill(t.signup_text, &site, email, "")),
    )
}

/// `POST /subscribe`: the public signup form. Fields: `email` (required),
/// `list` (one of `[signup] lists`, default the first), `language`,
/// `site`, the custom fields `[signup] fields` allows, and the honeypot
/// (must stay empty). Here: the body, the honeypot, the per-IP rate limit,
/// metrics and the answer; the signup itself (the contact becomes
/// `pending` unless known, and gets the confirmation mail) is
/// [`send::signup::subscribe`].
pub async fn subscribe(
    state: &Arc<AppState>,
    client: &Client,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let snapshot = state.snapshot();
    let config = snapshot.config.clone();
    let Some(sc) = config.signup.as_ref() else {
        return Err(signup_error(SignupError::Disabled));
    };
    let ct = content_type(&req);
    let json_client = ct.to_ascii_lowercase().starts_with("application/json");
    let body = reply::read_any_body(req, FORM_LIMIT).await?;
    let fields = form_fields(&ct, &body)?;
    let count = |o: &'static str| {
        state
            .metrics
            .signups
            .get_or_create(&OutcomeLabels { outcome: o })
            .inc()
    };
    let text = |name: &str| field(&fields, name).map(str::to_string);
    let (list, language, site) = (text("list"), text("language"), text("site"));
    let page_lang = language.clone().unwrap_or_else(|| "en".into());
    let email = text("email").unwrap_or_default().trim().to_string();
    if field(&fields, &sc.honeypot).is_some_and(|v| !v.trim().is_empty()) {
        // A robot: answer as if it worked, change nothing.
        count("honeypot");
        return Ok(signup_answer(
            &config,
            json_client,
            "pending",
            &email,
            &page_lang,
        ));
    }
    let now = state.clock.now();
    let ip = client.ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if !state
        .signup_limits
        .allow(ip, (now.timestamp() / 3600) as u64, sc.rate_per_ip_per_hour)
    {
        count("rate_limited");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many signups from this address; try again later",
        ));
    }
    let who = actor(client);
    let form = SignupForm {
        email,
        list,
        language,
        site,
        fields,
        ip: who.ip,
        user_agent: who.user_agent,
    };
    let cx = Context {
        store: &state.store,
        snapshot: &snapshot,
        cache: &state.compiled,
        now: now.timestamp_millis(),
    };
    // The answer is the same for every address: new, pending, granted,
    // withdrawn, invalid or erased.
    let done = match send::signup::subscribe(cx, form).await {
        Ok(done) => done,
        Err(e) => {
            if matches!(e, SignupError::Invalid(_)) {
                count("rejected");
            }
            return Err(signup_error(e));
        }
    };
    match &done {
        Subscribed::Mailed { .. } => {
            state.delivery.notify();
            count("pending");
        }
        Subscribed::Suppressed { .. } => {
            count("suppressed");
        }
    }
    Ok(signup_answer(
        &config,
        json_client,
        "pending",
        done.email(),
        &page_lang,
    ))
}

/// The answer to a signup that was not taken.
fn signup_error(e: SignupError) -> ApiError {
    match e {
        e @ SignupError::Disabled => ApiError::not_found(e.to_string()),
        SignupError::Invalid(m) => ApiError::invalid("invalid_signup", m),
        e @ SignupError::TemplateNotLoaded(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "template_not_loaded",
            e.to_string(),
        ),
        SignupError::Confirmation(e) => super::v1::templates::outbox_error(e),
        SignupError::Store(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_in_both_encodings() -> Result<(), String> {
        let f = form_fields(
            "application/x-www-form-urlencoded",
            b"List-Unsubscribe=One-Click",
        )
        .map_err(|e| e.message)?;
        assert_eq!(field(&f, "List-Unsubscribe"), Some("One-Click"));
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n";
        let f = form_fields("multipart/form-data; boundary=XyZ", body.as_bytes())
            .map_err(|e| e.message)?;
        assert_eq!(field(&f, "List-Unsubscribe"), Some("One-Click"));
        assert!(form_fields("multipart/form-data", body.as_bytes()).is_err());
        assert!(form_fields("image/png", b"x").is_err());
        Ok(())
    }

    #[test]
    fn limiter_counts_per_hour() {
        let l = Limiter::default();
        let ip = IpAddr::from([192, 0, 2, 1]);
        assert!(l.allow(ip, 1, 2));
        assert!(l.allow(ip, 1, 2));
        assert!(!l.allow(ip, 1, 2));
        assert!(l.allow(ip, 2, 2));
    }
}
