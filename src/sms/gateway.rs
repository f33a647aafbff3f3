//! What each gateway's HTTP API looks like: the request that sends one
//! message, what its answer means, and how its delivery reports and
//! replies arrive and are checked. Pure functions over bytes; the engine
//! (`sms::engine`) does the I/O.
//!
//! - **SMSAPI** (`POST {base}/sms.do`, form, `Authorization: Bearer`):
//!   `idx` is Herald's SMS id with `check_idx=1`, so SMSAPI itself refuses a
//!   second message with the same id (error 53, taken as "already
//!   accepted"). Errors come as HTTP 200 with `{"error": N, "message"}`.
//!   Delivery reports are GETs to `notify_url` (`MsgId`, `status`, `idx`,
//!   1–5 comma-separated), replies (MO) POSTs with `sms_from`, `sms_text`;
//!   SMSAPI signs neither, so their URLs carry a key derived from the
//!   gateway's `callback_secret`, and the answer is `OK`.
//! - **Twilio** (`POST {base}/2010-04-01/Accounts/{sid}/Messages.json`,
//!   form, Basic auth): 201 with `sid`; errors `{"code", "message"}` with a
//!   4xx (429 and 5xx are retried). Status callbacks and incoming messages
//!   are form POSTs signed with `X-Twilio-Signature` (HMAC-SHA1 of the URL
//!   and the sorted parameters, keyed with the auth token); the answer to an
//!   incoming message is empty TwiML.
//! - **webhook**: Herald's own JSON (documented in README.md), signed with
//!   `X-Herald-Signature: v1=<hex HMAC-SHA256(secret, timestamp "." body)>`
//!   and `X-Herald-Timestamp`; callbacks to Herald are signed the same way
//!   with the `callback_secret`.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Full;
use ring::hmac;

use crate::config::sms::{Gateway, GatewayKind};

/// How old a signed webhook callback may be, in seconds.
const WEBHOOK_MAX_AGE: i64 = 300;

/// One message to hand to a gateway.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Herald's SMS id.
    pub id: u64,
    /// The number, E.164.
    pub to: &'a str,
    /// The text.
    pub text: &'a str,
    /// Parts, for the webhook.
    pub parts: u32,
    /// `gsm7` or `ucs2`, for the webhook.
    pub encoding: &'a str,
    /// Where the gateway reports the delivery.
    pub status_url: String,
}

/// What a gateway's answer to a send means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// It took the message.
    Accepted {
        /// Its message id (none when SMSAPI says the id was already used:
        /// an earlier attempt was taken).
        gateway_id: Option<String>,
        /// Its status word.
        status: String,
    },
    /// Try again later (5xx, 429, a temporary error code, no connection).
    Retry(String),
    /// The request went out and no answer came (a timeout, a connection
    /// lost): the gateway may have taken it. Tried again later than a
    /// retry, so that a gateway without duplicate checks (Twilio, a
    /// webhook) can report it first.
    Unclear(String),
    /// It will never take this message.
    Refused {
        /// The reason as the gateway gave it.
        reason: String,
        /// What it says about the number: unusable, or opted out.
        effect: Option<NumberEffect>,
    },
}

/// What a refusal says about the contact's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberEffect {
    /// Not a (mobile) number: SMS consent becomes `invalid`.
    Invalid,
    /// The person opted out at the provider: SMS consent becomes `withdrawn`.
    OptedOut,
}

/// Where a delivery report leaves a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// On its way (queued, sent, accepted by the operator).
    Progress,
    /// Delivered to the phone.
    Delivered,
    /// Not delivered (undelivered, expired, rejected, failed).
    Failed,
}

/// One delivery report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Herald's SMS id, when the report carries it (`idx`, the URL's `m`).
    pub sms: Option<u64>,
    /// The gateway's message id.
    pub gateway_id: Option<String>,
    /// The status word as given.
    pub status: String,
    /// What it means.
    pub outcome: Outcome,
    /// The error code or text given with a failure.
    pub error: Option<String>,
}

/// A text message someone sent to the shop's number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The sender's number as the gateway gave it.
    pub from: String,
    /// The text.
    pub text: String,
}

/// Why a callback is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// Its key or signature does not verify (403).
    #[error("{0}")]
    Forbidden(String),
    /// It is not what this gateway sends (400).
    #[error("{0}")]
    Malformed(String),
}

/// A callback request as the HTTP layer read it.
#[derive(Debug, Clone)]
pub struct Callback<'a> {
    /// The method.
    pub method: &'a Method,
    /// The public URL it was sent to (`public_url` + path and query).
    pub url: &'a str,
    /// The query pairs.
    pub query: &'a [(String, String)],
    /// Headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
    /// Now, in seconds since the epoch.
    pub now_secs: i64,
}

/// Which callback a URL is for: each has its own key, so the status URL
/// SMSAPI sees with every message cannot post replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Delivery reports.
    Status,
    /// Incoming messages.
    Inbound,
}

/// The key SMSAPI's callback URLs carry: 32 hex characters of an HMAC of
/// the gateway's id and the purpose under its callback secret.
pub fn callback_key(g: &Gateway, purpose: Purpose) -> String {
    let secret = g.callback_secret.as_ref().map_or("", |s| s.0.as_str());
    let k = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let what = match purpose {
        Purpose::Status => "status",
        Purpose::Inbound => "inbound",
    };
    let tag = hmac::sign(&k, format!("herald-sms-{what}:{}", g.id).as_bytes());
    hex::encode(&tag.as_ref()[..16])
}

/// The URL a gateway reports message `id`'s delivery to.
pub fn status_url(g: &Gateway, public: &str, id: u64) -> String {
    match g.kind {
        GatewayKind::Smsapi => format!(
            "{public}/sms/{}/status?m={id}&key={}",
            g.id,
            callback_key(g, Purpose::Status)
        ),
        GatewayKind::Twilio | GatewayKind::Webhook => {
            format!("{public}/sms/{}/status?m={id}", g.id)
        }
    }
}

/// The URL a gateway posts incoming messages to (set it in the provider's
/// panel).
pub fn inbound_url(g: &Gateway, public: &str) -> String {
    match g.kind {
        GatewayKind::Smsapi => format!(
            "{public}/sms/{}/inbound?key={}",
            g.id,
            callback_key(g, Purpose::Inbound)
        ),
        _ => format!("{public}/sms/{}/inbound", g.id),
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn join(base: &url::Url, path: &str) -> String {
    format!("{}{path}", base.as_str().trim_end_matches('/'))
}

/// Hex HMAC-SHA256 of `timestamp "." body` under `secret`.
pub fn webhook_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1={}", hex::encode(ctx.sign().as_ref()))
}

/// Twilio's account SID and auth token from `SID:TOKEN`.
fn twilio_credentials(g: &Gateway) -> (&str, &str) {
    g.credentials.0.split_once(':').unwrap_or(("", ""))
}

/// The HTTP request that hands `m` to gateway `g`.
pub fn request(
    g: &Gateway,
    m: &Outgoing<'_>,
    now_secs: i64,
) -> Result<Request<Full<Bytes>>, String> {
    let id = m.id.to_string();
    let (body, builder) = match g.kind {
        GatewayKind::Smsapi => {
            let to = m.to.trim_start_matches('+');
            let body = form(&[
                ("format", "json"),
                ("encoding", "utf-8"),
                ("to", to),
                ("from", &g.from),
                ("message", m.text),
                ("idx", &id),
                ("check_idx", "1"),
                ("notify_url", &m.status_url),
            ]);
            let b = Request::post(join(&g.base_url, "/sms.do"))
                .header(
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", g.credentials.0),
                )
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                );
            (body.into_bytes(), b)
        }
        GatewayKind::Twilio => {
            let (sid, token) = twilio_credentials(g);
            let body = form(&[
                ("To", m.to),
                ("From", &g.from),
                ("Body", m.text),
                ("StatusCallback", &m.status_url),
            ]);
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}"));
            let b = Request::post(join(
                &g.base_url,
                &format!("/2010-04-01/Accounts/{sid}/Messages.json"),
            ))
            .header(http::header::AUTHORIZATION, format!("Basic {auth}"))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
            (body.into_bytes(), b)
        }
        GatewayKind::Webhook => {
            let body = serde_json::to_vec(&serde_json::json!({
                "id": id,
                "to": m.to,
                "from": g.from,
                "text": m.text,
                "encoding": m.encoding,
                "parts": m.parts,
                "status_url": m.status_url,
            }))
            .map_err(|e| e.to_string())?;
            let sig = webhook_signature(&g.credentials.0, now_secs, &body);
            let b = Request::post(g.base_url.as_str())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("x-herald-timestamp", now_secs.to_string())
                .header("x-herald-signature", sig);
            (body, b)
        }
    };
    builder
        .header(http::header::USER_AGENT, "herald")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))
}

/// SMSAPI error codes worth another try (server side, rate limits).
/// Authorisation and account problems (101 bad token, 102 bad login, 103
/// no credit, 105 IP not allowed, 110 service off) are retried too: they
/// are fixed on the account, not in the message.
const SMSAPI_TEMPORARY: &[i64] = &[8, 52, 101, 102, 103, 105, 110, 200, 201, 202, 203, 666, 999];

/// What gateway `g`'s answer (`status`, `body`) to a send means.
pub fn reply(g: &Gateway, status: StatusCode, body: &[u8]) -> Reply {
    // 401/403: the credentials, fixed on the account: tried again.
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
    {
        return Reply::Retry(format!("{status}: {}", snippet(body)));
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    match g.kind {
        GatewayKind::Smsapi => smsapi_reply(status, json, body),
        GatewayKind::Twilio => twilio_reply(status, json, body),
        GatewayKind::Webhook => {
            if status.is_success() {
                let gid = json.as_ref().and_then(|j| match &j["id"] {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                });
                Reply::Accepted {
                    gateway_id: gid,
                    status: "accepted".into(),
                }
            } else {
                Reply::Refused {
                    reason: format!("{status}: {}", snippet(body)),
                    effect: None,
                }
            }
        }
    }
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s.to_string()
    }
}

fn smsapi_reply(status: StatusCode, json: Option<serde_json::Value>, body: &[u8]) -> Reply {
    let Some(j) = json else {
        return Reply::Retry(format!("{status}: not JSON: {}", snippet(body)));
    };
    if let Some(code) = j.get("error").and_then(serde_json::Value::as_i64) {
        let message = j["message"].as_str().unwrap_or("").to_string();
        let reason = format!("SMSAPI error {code}: {message}");
        return match code {
            // The idx was used: an earlier attempt was taken.
            53 => Reply::Accepted {
                gateway_id: None,
                status: "QUEUE".into(),
            },
            c if SMSAPI_TEMPORARY.contains(&c) => Reply::Retry(reason),
            13 | 33 => Reply::Refused {
                reason,
                effect: Some(NumberEffect::Invalid),
            },
            57 => Reply::Refused {
                reason,
                effect: Some(NumberEffect::OptedOut),
            },
            _ => Reply::Refused {
                reason,
                effect: None,
            },
        };
    }
    let first = &j["list"][0];
    match first["id"].as_str() {
        Some(id) if status.is_success() => Reply::Accepted {
            gateway_id: Some(id.to_string()),
            status: first["status"].as_str().unwrap_or("QUEUE").to_string(),
        },
        _ => Reply::Retry(format!("{status}: unexpected answer: {}", snippet(body))),
    }
}

fn twilio_reply(status: StatusCode, json: Option<serde_json::Value>, body: &[u8]) -> Reply {
    if status.is_success() {
        return match json.as_ref().and_then(|j| j["sid"].as_str()) {
            Some(sid) => Reply::Accepted {
                gateway_id: Some(sid.to_string()),
                status: json
                    .as_ref()
                    .and_then(|j| j["status"].as_str())
                    .unwrap_or("queued")
                    .to_string(),
            },
            None => Reply::Retry(format!("{status}: no sid in {}", snippet(body))),
        };
    }
    let code = json.as_ref().and_then(|j| j["code"].as_i64());
    let message = json
        .as_ref()
        .and_then(|j| j["message"].as_str().or(j["title"].as_str()))
        .map_or_else(|| snippet(body), str::to_string);
    let reason = match code {
        Some(c) => format!("Twilio error {c}: {message}"),
        None => format!("{status}: {message}"),
    };
    let effect = match code {
        Some(21211 | 21614 | 21217) => Some(NumberEffect::Invalid),
        Some(21610) => Some(NumberEffect::OptedOut),
        _ => None,
    };
    Reply::Refused { reason, effect }
}

/// The parameters of a form body.
fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Checks a callback's key (SMSAPI) or signature (Twilio, webhook).
pub fn verify(g: &Gateway, purpose: Purpose, c: &Callback<'_>) -> Result<(), CallbackError> {
    use subtle::ConstantTimeEq as _;
    match g.kind {
        GatewayKind::Smsapi => {
            let given = param(c.query, "key").unwrap_or("");
            if bool::from(given.as_bytes().ct_eq(callback_key(g, purpose).as_bytes())) {
                Ok(())
            } else {
                Err(CallbackError::Forbidden(
                    "the callback's key does not match this gateway's callback_secret".into(),
                ))
            }
        }
        GatewayKind::Twilio => {
            let given = c
                .headers
                .get("x-twilio-signature")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| CallbackError::Forbidden("no X-Twilio-Signature".into()))?;
            let params = if c.method == Method::POST {
                form_pairs(c.body)
            } else {
                Vec::new()
            };
            let (_, token) = twilio_credentials(g);
            let ok = twilio_url_variants(c.url).iter().any(|u| {
                let want = twilio_signature(token, u, &params);
                bool::from(want.as_bytes().ct_eq(given.as_bytes()))
            });
            if ok {
                Ok(())
            } else {
                Err(CallbackError::Forbidden(
                    "X-Twilio-Signature does not verify with the auth token".into(),
                ))
            }
        }
        GatewayKind::Webhook => {
            let secret = g.callback_secret.as_ref().map_or("", |s| s.0.as_str());
            let header = |n: &str| c.headers.get(n).and_then(|v| v.to_str().ok());
            let ts: i64 = header("x-herald-timestamp")
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| CallbackError::Forbidden("no X-Herald-Timestamp".into()))?;
            if (c.now_secs - ts).abs() > WEBHOOK_MAX_AGE {
                return Err(CallbackError::Forbidden(
                    "X-Herald-Timestamp is more than 5 minutes from now".into(),
                ));
            }
            let given = header("x-herald-signature")
                .ok_or_else(|| CallbackError::Forbidden("no X-Herald-Signature".into()))?;
            let want = webhook_signature(secret, ts, c.body);
            if bool::from(want.as_bytes().ct_eq(given.as_bytes())) {
                Ok(())
            } else {
                Err(CallbackError::Forbidden(
                    "X-Herald-Signature does not verify with the callback_secret".into(),
                ))
            }
        }
    }
}

/// Twilio's signature: base64 HMAC-SHA1 of the URL followed by every
/// parameter's name and value, sorted by name.
pub fn twilio_signature(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, token.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&k, data.as_bytes()).as_ref())
}

/// The URL with and without its default port, as Twilio's own validators
/// try both.
fn twilio_url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    if let Ok(mut u) = url::Url::parse(url) {
        if u.port().is_some() {
            let _ = u.set_port(None);
            out.push(u.to_string());
        } else if let Some(p) = u.port_or_known_default() {
            // `Url` drops a default port it is given, so splice it in.
            let host = u.host_str().unwrap_or("").to_string();
            out.push(url.replacen(&host, &format!("{host}:{p}"), 1));
        }
    }
    out
}

fn smsapi_outcome(code: &str) -> Outcome {
    match code {
        "404" => Outcome::Delivered,
        "402" | "405" | "406" | "407" | "412" => Outcome::Failed,
        _ => Outcome::Progress,
    }
}

fn twilio_outcome(status: &str) -> Outcome {
    match status {
        "delivered" | "read" => Outcome::Delivered,
        "undelivered" | "failed" | "canceled" => Outcome::Failed,
        _ => Outcome::Progress,
    }
}

/// The delivery reports a (verified) status callback carries.
pub fn reports(g: &Gateway, c: &Callback<'_>) -> Result<Vec<Report>, CallbackError> {
    let url_id = param(c.query, "m").and_then(|m| m.parse::<u64>().ok());
    let bad = |m: &str| CallbackError::Malformed(m.to_string());
    match g.kind {
        GatewayKind::Smsapi => {
            // GET with the reports in the query (POST form also taken).
            let mut pairs = c.query.to_vec();
            if c.method == Method::POST {
                pairs.extend(form_pairs(c.body));
            }
            let split = |k: &str| -> Vec<String> {
                param(&pairs, k)
                    .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
                    .unwrap_or_default()
            };
            let ids = split("MsgId");
            let statuses = split("status");
            let idxs = split("idx");
            if ids.is_empty() || ids.len() != statuses.len() {
                return Err(bad(
                    "an SMSAPI report needs MsgId and status, as many of each",
                ));
            }
            Ok(ids
                .iter()
                .zip(&statuses)
                .enumerate()
                .map(|(i, (id, st))| Report {
                    sms: idxs
                        .get(i)
                        .and_then(|x| x.parse().ok())
                        .or(if ids.len() == 1 { url_id } else { None }),
                    gateway_id: Some(id.clone()),
                    status: st.clone(),
                    outcome: smsapi_outcome(st),
                    error: (smsapi_outcome(st) == Outcome::Failed).then(|| format!("status {st}")),
                })
                .collect())
        }
        GatewayKind::Twilio => {
            let p = form_pairs(c.body);
            let sid = param(&p, "MessageSid").or(param(&p, "SmsSid"));
            let status = param(&p, "MessageStatus")
                .or(param(&p, "SmsStatus"))
                .ok_or_else(|| bad("a Twilio status callback needs MessageStatus"))?;
            Ok(vec![Report {
                sms: url_id,
                gateway_id: sid.map(str::to_string),
                status: status.to_string(),
                outcome: twilio_outcome(status),
                error: param(&p, "ErrorCode").map(|e| format!("Twilio error {e}")),
            }])
        }
        GatewayKind::Webhook => {
            let j: serde_json::Value = serde_json::from_slice(c.body)
                .map_err(|e| bad(&format!("the body is not JSON: {e}")))?;
            let status = j["status"]
                .as_str()
                .ok_or_else(|| bad("a webhook report needs `status`"))?;
            let outcome = match status {
                "delivered" => Outcome::Delivered,
                "failed" | "undelivered" | "expired" | "rejected" => Outcome::Failed,
                "sent" | "queued" | "accepted" => Outcome::Progress,
                other => {
                    return Err(bad(&format!(
                        "status `{other}` is not one of: queued, accepted, sent, delivered, failed, undelivered, expired, rejected"
                    )));
                }
            };
            let sms = match &j["id"] {
                serde_json::Value::String(s) => s.parse().ok(),
                serde_json::Value::Number(n) => n.as_u64(),
                _ => None,
            }
            .or(url_id);
            Ok(vec![Report {
                sms,
                gateway_id: j["gateway_id"].as_str().map(str::to_string),
                status: status.to_string(),
                outcome,
                error: j["error"].as_str().map(str::to_string),
            }])
        }
    }
}

/// The message a (verified) incoming-message callback carries.
pub fn incoming(g: &Gateway, c: &Callback<'_>) -> Result<Incoming, CallbackError> {
    let bad = |m: &str| CallbackError::Malformed(m.to_string());
    let (from, text) = match g.kind {
        GatewayKind::Smsapi => {
            let mut p = c.query.to_vec();
            p.extend(form_pairs(c.body));
            (
                param(&p, "sms_from").map(str::to_string),
                param(&p, "sms_text").map(str::to_string),
            )
        }
        GatewayKind::Twilio => {
            let p = form_pairs(c.body);
            (
                param(&p, "From").map(str::to_string),
                param(&p, "Body").map(str::to_string),
            )
        }
        GatewayKind::Webhook => {
            let j: serde_json::Value = serde_json::from_slice(c.body)
                .map_err(|e| bad(&format!("the body is not JSON: {e}")))?;
            (
                j["from"].as_str().map(str::to_string),
                j["text"].as_str().map(str::to_string),
            )
        }
    };
    match (from, text) {
        (Some(from), Some(text)) => Ok(Incoming { from, text }),
        _ => Err(bad(match g.kind {
            GatewayKind::Smsapi => "an SMSAPI message needs sms_from and sms_text",
            GatewayKind::Twilio => "a Twilio message needs From and Body",
            GatewayKind::Webhook => "a webhook message needs `from` and `text`",
        })),
    }
}

/// The answer a gateway expects to a callback: (content type, body).
pub fn acknowledgement(g: &Gateway) -> (&'static str, &'static str) {
    match g.kind {
        GatewayKind::Smsapi => ("text/plain", "OK"),
        GatewayKind::Twilio => (
            "text/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>",
        ),
        GatewayKind::Webhook => ("application/json", "{\"ok\":true}"),
    }
}

/// What a reply's words ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    /// Stop marketing SMS.
    Stop,
    /// Start them again.
    Start,
}

/// Whether `text` is a stop or start reply: its first word is one of the
/// words (any language), alone or followed only by the brand.
pub fn keyword(text: &str, sms: &crate::config::sms::SmsConfig) -> Option<Keyword> {
    let upper = text.trim().to_uppercase();
    let clean: String = upper
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    let mut words = clean.split_whitespace();
    let first = words.next()?;
    let rest: Vec<&str> = words.collect();
    let rest_ok = rest.is_empty()
        || sms
            .brand
            .as_deref()
            .is_some_and(|b| rest.join(" ") == b.split_whitespace().collect::<Vec<_>>().join(" "));
    if !rest_ok {
        return None;
    }
    if sms.stop_words.values().flatten().any(|w| w == first) {
        Some(Keyword::Stop)
    } else if sms.start_words.iter().any(|w| w == first) {
        Some(Keyword::Start)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn gw(kind: GatewayKind) -> Gateway {
        Gateway {
            id: "gw".into(),
            kind,
            base_url: url::Url::parse("http://127.0.0.1:9/")
                .unwrap_or_else(|_| unreachable!("a valid URL")),
            credentials: Secret(match kind {
                GatewayKind::Twilio => "AC123:12345".into(),
                _ => "token".into(),
            }),
            from: "Shop".into(),
            rate_per_second: 10,
            connections: 1,
            timeout: std::time::Duration::from_secs(1),
            callback_secret: Some(Secret("c".repeat(32))),
            cost_per_part: 0,
            currency: "PLN".into(),
        }
    }

    /// The vectors of Twilio's own SDK tests (twilio-python
    /// tests/unit/test_request_validator.py).
    #[test]
    fn twilio_signatures_match_the_sdk_vectors() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            twilio_signature("12345", url, &params),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_eq!(
            twilio_signature(
                "12345",
                "https://mycompany.com:443/myapp.php?foo=1&bar=2",
                &params
            ),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        );
        // Either form of the URL verifies.
        assert!(
            twilio_url_variants(url)
                .contains(&"https://mycompany.com:443/myapp.php?foo=1&bar=2".to_string())
        );
    }

    #[test]
    fn smsapi_answers_mean_what_its_codes_say() {
        let g = gw(GatewayKind::Smsapi);
        let ok = br#"{"count":1,"list":[{"id":"7074294081650020450","points":0.165,"number":"48327201200","date_sent":1712570310,"submitted_number":"327201200","status":"QUEUE","error":null,"idx":"5","parts":1}]}"#;
        assert_eq!(
            reply(&g, StatusCode::OK, ok),
            Reply::Accepted {
                gateway_id: Some("7074294081650020450".into()),
                status: "QUEUE".into()
            }
        );
        let dup = br#"{"error":53,"message":"Not unique idx parameter"}"#;
        assert!(matches!(
            reply(&g, StatusCode::OK, dup),
            Reply::Accepted {
                gateway_id: None,
                ..
            }
        ));
        let invalid = br#"{"error":13,"message":"No correct phone numbers","invalid_numbers":[{"number":"48100200300","submitted_number":"100200300","message":"Invalid phone number"}]}"#;
        assert!(matches!(
            reply(&g, StatusCode::OK, invalid),
            Reply::Refused {
                effect: Some(NumberEffect::Invalid),
                ..
            }
        ));
        let busy = br#"{"error":202,"message":"Too many simultaneous requests"}"#;
        assert!(matches!(reply(&g, StatusCode::OK, busy), Reply::Retry(_)));
        assert!(matches!(
            reply(&g, StatusCode::BAD_GATEWAY, b""),
            Reply::Retry(_)
        ));
        // An account problem is fixed on the account: tried again.
        let auth = br#"{"error":101,"message":"Invalid authorization"}"#;
        assert!(matches!(reply(&g, StatusCode::OK, auth), Reply::Retry(_)));
        let sender = br#"{"error":14,"message":"Invalid sender name."}"#;
        assert!(matches!(
            reply(&g, StatusCode::OK, sender),
            Reply::Refused { effect: None, .. }
        ));
    }

    #[test]
    fn twilio_answers_and_keywords() {
        let g = gw(GatewayKind::Twilio);
        let ok = br#"{"sid":"SMaaaa","status":"queued","num_segments":"1","price":null,"error_code":null}"#;
        assert_eq!(
            reply(&g, StatusCode::CREATED, ok),
            Reply::Accepted {
                gateway_id: Some("SMaaaa".into()),
                status: "queued".into()
            }
        );
        let stop = br#"{"code":21610,"message":"Attempt to send to unsubscribed recipient","more_info":"https://www.twilio.com/docs/errors/21610","status":400}"#;
        assert!(matches!(
            reply(&g, StatusCode::BAD_REQUEST, stop),
            Reply::Refused {
                effect: Some(NumberEffect::OptedOut),
                ..
            }
        ));
        assert!(matches!(
            reply(&g, StatusCode::TOO_MANY_REQUESTS, b"{}"),
            Reply::Retry(_)
        ));
        let sms = crate::config::sms::SmsConfig {
            gateways: Vec::new(),
            default_gateway: None,
            quiet_hours: None,
            max_parts: 3,
            stop_words: [(
                "pl".to_string(),
                vec!["STOP".to_string(), "NIE".to_string()],
            )]
            .into(),
            start_words: vec!["START".into()],
            brand: Some("SHOP".into()),
            max_attempts: 8,
            retry_after_ms: 30_000,
        };
        for (text, want) in [
            ("STOP", Some(Keyword::Stop)),
            (" stop. ", Some(Keyword::Stop)),
            ("Nie", Some(Keyword::Stop)),
            ("STOP Shop", Some(Keyword::Stop)),
            ("STOP sending me these", None),
            ("start", Some(Keyword::Start)),
            ("Thanks!", None),
            ("", None),
        ] {
            assert_eq!(keyword(text, &sms), want, "{text:?}");
        }
    }

    #[test]
    fn callbacks_are_parsed_per_gateway() -> Result<(), CallbackError> {
        let headers = HeaderMap::new();
        let g = gw(GatewayKind::Smsapi);
        let q: Vec<(String, String)> = [
            ("m", "5"),
            ("key", callback_key(&g, Purpose::Status).as_str()),
            ("MsgId", "111,222"),
            ("status", "404,405"),
            ("idx", "5,6"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = Callback {
            method: &Method::GET,
            url: "https://h/sms/gw/status",
            query: &q,
            headers: &headers,
            body: b"",
            now_secs: 0,
        };
        verify(&g, Purpose::Status, &c)?;
        assert!(
            verify(&g, Purpose::Inbound, &c).is_err(),
            "the status key posts no replies"
        );
        let r = reports(&g, &c)?;
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].sms, r[0].outcome), (Some(5), Outcome::Delivered));
        assert_eq!((r[1].sms, r[1].outcome), (Some(6), Outcome::Failed));
        let wrong: Vec<(String, String)> = vec![("key".into(), "x".into())];
        assert!(
            verify(
                &g,
                Purpose::Status,
                &Callback {
                    query: &wrong,
                    ..c.clone()
                }
            )
            .is_err()
        );

        let g = gw(GatewayKind::Webhook);
        let body = br#"{"id":"9","status":"delivered"}"#;
        let mut h = HeaderMap::new();
        let sig = webhook_signature(&"c".repeat(32), 1000, body);
        h.insert("x-herald-timestamp", http::HeaderValue::from_static("1000"));
        h.insert(
            "x-herald-signature",
            http::HeaderValue::from_str(&sig)
                .map_err(|e| CallbackError::Malformed(e.to_string()))?,
        );
        let c = Callback {
            method: &Method::POST,
            url: "https://h/sms/gw/status",
            query: &[],
            headers: &h,
            body,
            now_secs: 1100,
        };
        verify(&g, Purpose::Status, &c)?;
        assert_eq!(reports(&g, &c)?[0].sms, Some(9));
        assert!(
            verify(
                &g,
                Purpose::Status,
                &Callback {
                    now_secs: 2000,
                    ..c.clone()
                }
            )
            .is_err()
        );
        assert!(verify(&g, Purpose::Status, &Callback { body: b"{}", ..c }).is_err());
        Ok(())
    }
}
