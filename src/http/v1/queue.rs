//! `/api/v1/messages` (queue a message) and `/api/v1/queue` (status,
//! one message, retry now, purge).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::http::reply::ReqBody;
use http::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::numeric_id;
use crate::delivery::engine::{self, Selection};
use crate::delivery::model::{QueuedMessage, RcptState};
use crate::delivery::queue::{self, Content, EnqueueError, NewMessage, NewRecipient, Parts};
use crate::http::AppState;
use crate::http::reply::{self, ApiError, Body};
use crate::store::ReadTables as _;

/// Body of `POST /api/v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    /// Sender identity id (a template message uses the template's).
    #[serde(default)]
    pub sender: Option<String>,
    /// Render this template for the (single) recipient, a contact, instead
    /// of giving the content.
    #[serde(default)]
    pub template: Option<String>,
    /// Template mode: what the message is reported as, per day (default:
    /// the template's name), e.g. `order-confirmation`; see
    /// `GET /api/v1/reports/sends/transactional/{tag}`.
    #[serde(default)]
    pub tag: Option<String>,
    /// Template mode: language to render in (default: the contact's).
    #[serde(default)]
    pub language: Option<String>,
    /// Template mode: `order` values.
    #[serde(default)]
    pub order: Option<Value>,
    /// Template mode: `cart` values.
    #[serde(default)]
    pub cart: Option<Value>,
    /// Template mode: `data` values.
    #[serde(default)]
    pub data: Option<Value>,
    /// Template mode: SKUs for `products`.
    #[serde(default)]
    pub products: Option<Vec<String>>,
    /// Envelope recipients.
    pub to: Vec<String>,
    /// A complete RFC 5322 message (instead of the parts below).
    #[serde(default)]
    pub raw: Option<String>,
    /// From header (default: the sender's).
    #[serde(default)]
    pub from: Option<String>,
    /// To header (default: the recipients).
    #[serde(default)]
    pub to_header: Option<String>,
    /// Reply-To header.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// Plain-text body.
    #[serde(default)]
    pub text: Option<String>,
    /// HTML body.
    #[serde(default)]
    pub html: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Message-ID to use (without brackets).
    #[serde(default)]
    pub message_id: Option<String>,
}

/// `POST /api/v1/messages`: queue a message; 202 with its queue id once it
/// is durably committed.
pub async fn submit(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let limit = state.config().http.max_body_bytes;
    let b: MessageBody = reply::read_json(req, limit).await?;
    if b.template.is_some() {
        return super::templates::send(state, b).await;
    }
    if b.tag.is_some() {
        return Err(ApiError::bad_request(
            "tag names template messages; a message given whole is not reported per tag",
        ));
    }
    let template_keys = b.language.is_some()
        || b.order.is_some()
        || b.cart.is_some()
        || b.data.is_some()
        || b.products.is_some();
    if template_keys {
        return Err(ApiError::bad_request(
            "language, order, cart, data and products go with template",
        ));
    }
    let Some(sender) = b.sender.clone() else {
        return Err(ApiError::bad_request(
            "sender is required (or give template)",
        ));
    };
    let content = match b.raw {
        Some(raw) => {
            let parts_given = b.subject.is_some()
                || b.text.is_some()
                || b.html.is_some()
                || b.from.is_some()
                || b.to_header.is_some()
                || b.reply_to.is_some()
                || !b.headers.is_empty();
            if parts_given {
                return Err(ApiError::bad_request(
                    "give either raw or subject/text/html (and from, to_header, reply_to, headers), not both",
                ));
            }
            Content::Raw(raw.into_bytes())
        }
        None => Content::Parts(Parts {
            from: b.from,
            to: b.to_header,
            reply_to: b.reply_to,
            subject: b
                .subject
                .ok_or_else(|| ApiError::bad_request("subject is required (or give raw)"))?,
            text: b.text,
            html: b.html,
            headers: b.headers.into_iter().collect(),
        }),
    };
    let config = state.config();
    let msg = NewMessage {
        sender: sender.clone(),
        recipients: b
            .to
            .into_iter()
            .map(|address| NewRecipient {
                address,
                contact: None,
            })
            .collect(),
        content,
        source: "api".into(),
        message_id: b.message_id,
        kind: None,
    };
    let now = state.clock.now().timestamp_millis();
    accepted(
        state,
        queue::enqueue(&state.store, config.sender(&sender).cloned(), msg, now).await,
    )
}

/// The reply to a submission: 202 with the queue id, or why it was refused.
pub fn accepted(
    state: &AppState,
    r: Result<(u64, String), EnqueueError>,
) -> Result<Response<Body>, ApiError> {
    match r {
        Ok((id, message_id)) => {
            state.delivery.notify();
            Ok(reply::json_response(
                StatusCode::ACCEPTED,
                &json!({"id": id, "message_id": message_id}),
            ))
        }
        Err(e) => Err(enqueue_error(e)),
    }
}

/// The API error for a refused submission.
pub fn enqueue_error(e: EnqueueError) -> ApiError {
    match e {
        EnqueueError::Invalid(m) => ApiError::invalid("invalid_message", m),
        e @ EnqueueError::UnknownSender(_) => ApiError::invalid("unknown_sender", e.to_string()),
        // Answered as invalid input, as it always was, although only a NUL
        // byte (refused earlier, by the checks) would be the message's
        // fault and a DKIM failure is the server's.
        EnqueueError::Sign(e) => ApiError::invalid("invalid_message", e.to_string()),
        EnqueueError::Store(e) => e.into(),
    }
}

fn time(ms: Option<i64>) -> Value {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        Some(t) => json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        None => Value::Null,
    }
}

/// The JSON view of a message; `in_flight` marks recipients being sent now.
pub fn message_view(m: &QueuedMessage, in_flight: &[usize]) -> Value {
    let rcpts: Vec<Value> = m
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let state = if r.state.is_pending() && in_flight.contains(&i) {
                "in_flight"
            } else {
                r.state.as_str()
            };
            json!({
                "address": r.address,
                "domain": r.domain,
                "contact": r.contact,
                "state": state,
                "attempts": r.attempts,
                "next_attempt": time(r.next_attempt.filter(|_| r.state == RcptState::Deferred)),
                "reply": r.reply,
                "bounce": r.bounce.map(|b| b.as_str()),
                "host": r.host,
                "updated": time(r.updated),
                "not_sent": r.not_sent.map(|n| n.as_str()),
                "reports": r.reports.iter().map(|n| json!({
                    "id": n.id,
                    "verdict": n.verdict.as_str(),
                    "at": time(Some(n.at)),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "id": m.id,
        "sender": m.sender,
        "return_path": m.return_path,
        "message_id": m.message_id,
        "created": time(Some(m.created)),
        "size": m.size,
        "source": m.source,
        "finished": time(m.finished),
        "purged": m.purged,
        "kind": m.rule().map(|k| k.as_str()),
        "recipients": rcpts,
    })
}

#[derive(Default)]
struct DomainCounts {
    queued: u64,
    deferred: u64,
    in_flight: u64,
    next_attempt: Option<i64>,
    last_error: Option<String>,
}

/// `GET /api/v1/queue`: counts per state and per destination domain, the
/// oldest message and the next attempts.
pub async fn status(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let in_flight = state.delivery.in_flight();
    let connections = state.delivery.connections();
    let flying: std::collections::HashSet<(u64, usize)> =
        in_flight.iter().map(|f| (f.msg, f.rcpt)).collect();
    let view = state
        .store
        .read(move |v| {
            let mut domains: BTreeMap<String, DomainCounts> = BTreeMap::new();
            let (mut messages, mut queued, mut deferred, mut flying_n) = (0u64, 0u64, 0u64, 0u64);
            let mut oldest: Option<(i64, u64)> = None;
            let mut next: Vec<(i64, u64, String)> = Vec::new();
            v.for_each_queued(|m| {
                messages += 1;
                if oldest.is_none_or(|(c, _)| m.created < c) {
                    oldest = Some((m.created, m.id));
                }
                for (i, r) in m.recipients.iter().enumerate() {
                    if !r.state.is_pending() {
                        continue;
                    }
                    let d = domains.entry(r.domain.clone()).or_default();
                    if flying.contains(&(m.id, i)) {
                        flying_n += 1;
                        d.in_flight += 1;
                    } else if r.state == RcptState::Deferred {
                        deferred += 1;
                        d.deferred += 1;
                        let at = r.next_attempt.unwrap_or(m.created);
                        if d.next_attempt.is_none_or(|n| at < n) {
                            d.next_attempt = Some(at);
                            d.last_error = r.reply.clone();
                        }
                        next.push((at, m.id, r.domain.clone()));
                        if next.len() > 40 {
                            next.sort();
                            next.truncate(10);
                        }
                    } else {
                        queued += 1;
                        d.queued += 1;
                    }
                }
            })?;
            next.sort();
            next.truncate(10);
            let summary = v.queue_summary()?;
            let oldest = match oldest {
                Some((_, id)) => v.queued_message(id)?,
                None => None,
            };
            Ok(json!({
                "messages": messages,
                "recipients": {"queued": queued, "in_flight": flying_n, "deferred": deferred},
                "delivered_total": summary.delivered,
                "failed_total": summary.failed,
                // Of failed_total: taken out of the queue without an attempt.
                "not_sent": {
                    "erased": summary.not_sent_erased,
                    "no_consent": summary.not_sent_no_consent,
                    "suppressed": summary.not_sent_suppressed,
                },
                "domains": domains.into_iter().map(|(name, d)| json!({
                    "domain": name,
                    "queued": d.queued,
                    "in_flight": d.in_flight,
                    "deferred": d.deferred,
                    "next_attempt": time(d.next_attempt),
                    "last_error": d.last_error,
                })).collect::<Vec<_>>(),
                "oldest": oldest.map(|m| json!({"id": m.id, "created": time(Some(m.created)), "message_id": m.message_id})),
                "next_attempts": next.into_iter().map(|(at, id, domain)| json!({"id": id, "domain": domain, "at": time(Some(at))})).collect::<Vec<_>>(),
            }))
        })
        .await?;
    let mut view = view;
    view["connections"] = json!(connections);
    // Each provider group's shaping state: rate, connections, back-off and
    // why, what it holds.
    view["shaping"] = json!(state.delivery.shaping());
    reply::ok(&view)
}

/// `GET /api/v1/queue/{id}`: one message, queued or finished.
pub async fn get(state: &Arc<AppState>, r: &str) -> Result<Response<Body>, ApiError> {
    let id =
        numeric_id(r).ok_or_else(|| ApiError::not_found(format!("`{r}` is not a queue id")))?;
    // The record first, then what is in flight: a job stays in flight until
    // just after its outcome commits, so read in the other order a finished
    // attempt (already counted in the record) could still show as in flight.
    let m = state.store.read(move |v| v.message(id)).await?;
    let in_flight: Vec<usize> = state
        .delivery
        .in_flight()
        .into_iter()
        .filter(|f| f.msg == id)
        // An attempt whose outcome is already in the record (committed, the
        // job not yet released) is not in flight any more.
        .filter(|f| {
            m.as_ref()
                .and_then(|m| m.recipients.get(f.rcpt))
                .is_none_or(|r| r.updated.is_none_or(|u| u < f.since))
        })
        .map(|f| f.rcpt)
        .collect();
    match m {
        Some(m) => reply::ok(&message_view(&m, &in_flight)),
        None => Err(ApiError::not_found(format!("no message {id} in the queue"))),
    }
}

/// Body of `POST /api/v1/queue/retry` and `/purge`: one message or a domain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectBody {
    /// A queue id.
    #[serde(default)]
    pub id: Option<u64>,
    /// A destination domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// Why (required for purge; kept in the record).
    #[serde(default)]
    pub reason: Option<String>,
    /// Every message (retry only).
    #[serde(default)]
    pub all: bool,
}

fn selection(b: &SelectBody) -> Result<Selection, ApiError> {
    match (&b.id, &b.domain) {
        (None, None) if b.all => Ok(Selection::All),
        (Some(_), Some(_)) | (None, None) => Err(ApiError::bad_request(
            "give exactly one of id (a queue id) and domain (or, to retry, all: true)",
        )),
        _ if b.all => Err(ApiError::bad_request(
            "all: true selects every message: give no id or domain with it",
        )),
        (Some(id), None) => Ok(Selection::Id(*id)),
        (None, Some(d)) => Ok(Selection::Domain(
            d.trim().trim_end_matches('.').to_ascii_lowercase(),
        )),
    }
}

/// `POST /api/v1/queue/retry`: deferred recipients become due now.
pub async fn retry(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let b: SelectBody = reply::read_json(req, 64 * 1024).await?;
    if b.reason.is_some() {
        return Err(ApiError::bad_request("reason is for purge, not retry"));
    }
    let sel = selection(&b)?;
    let now = state.clock.now().timestamp_millis();
    let mut n = 0;
    let mut after = 0;
    loop {
        let sel2 = sel.clone();
        let (changed, next) = state
            .store
            .write(move |t| engine::retry_now(t, &sel2, after, now))
            .await?;
        n += changed;
        match next {
            Some(a) => after = a,
            None => break,
        }
    }
    if let (Selection::Id(id), 0) = (&sel, n) {
        let id = *id;
        let exists = state
            .store
            .read(move |v| v.queued_message(id))
            .await?
            .is_some();
        if !exists {
            return Err(ApiError::not_found(format!("no message {id} in the queue")));
        }
    }
    state.delivery.notify();
    reply::ok(&json!({"messages": n}))
}

/// `POST /api/v1/queue/purge`: pending recipients fail with the reason given.
pub async fn purge(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let b: SelectBody = reply::read_json(req, 64 * 1024).await?;
    if b.all {
        return Err(ApiError::bad_request(
            "purge takes an id or a domain, never all: true",
        ));
    }
    let sel = selection(&b)?;
    let reason = match b.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() && r.len() <= 500 => r.to_string(),
        _ => {
            return Err(ApiError::bad_request(
                "reason is required (1-500 characters): why these messages are dropped",
            ));
        }
    };
    let now = state.clock.now().timestamp_millis();
    let (mut messages, mut recipients, mut after) = (0, 0, 0);
    loop {
        let (sel2, reason2) = (sel.clone(), reason.clone());
        let (m, r, next) = state
            .store
            .write(move |t| engine::purge(t, &sel2, after, &reason2, now))
            .await?;
        messages += m;
        recipients += r;
        match next {
            Some(a) => after = a,
            None => break,
        }
    }
    if let (Selection::Id(id), 0) = (&sel, messages) {
        return Err(ApiError::not_found(format!(
            "no message {id} with pending recipients in the queue"
        )));
    }
    // Purged recipients are final outcomes: a send waiting for its
    // outcomes (a campaign's completion) looks again.
    state.delivery.outcomes_changed();
    tracing::info!(messages, recipients, "queue purged by the admin");
    reply::ok(&json!({"messages": messages, "recipients": recipients}))
}

/// Queue records read for one page of [`domain`] at most: a page ends
/// early (with `next`) rather than walk a long queue.
const DOMAIN_SCAN: usize = 5000;

/// `GET /api/v1/queue/domains/{domain}?after=&limit=`: the messages in the
/// queue with a pending recipient at `domain`, in queue id order, a page
/// at a time (`next` is the `after` of the next page; a page may hold
/// fewer than `limit` when the queue is long).
pub async fn domain(
    state: &Arc<AppState>,
    domain: &str,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(&q, &["after", "limit"])?;
    let after = reply::query_u64(&q, "after")?.unwrap_or(0);
    let limit = reply::query_u64(&q, "limit")?.unwrap_or(50).clamp(1, 500) as usize;
    let name = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let d = name.clone();
    let (found, next) = state
        .store
        .read(move |v| {
            let mut found = Vec::new();
            let mut cursor = after;
            let mut scanned = 0;
            loop {
                let chunk = v.queued_after(cursor, 500)?;
                let Some(last) = chunk.last().map(|m| m.id) else {
                    return Ok((found, None));
                };
                for m in chunk {
                    scanned += 1;
                    cursor = m.id;
                    let here = m
                        .recipients
                        .iter()
                        .any(|r| r.domain == d && r.state.is_pending());
                    if here {
                        found.push(m);
                        if found.len() >= limit {
                            return Ok((found, Some(cursor)));
                        }
                    }
                }
                if scanned >= DOMAIN_SCAN {
                    return Ok((found, Some(last)));
                }
            }
        })
        .await?;
    let flying: Vec<(u64, usize)> = state
        .delivery
        .in_flight()
        .into_iter()
        .map(|f| (f.msg, f.rcpt))
        .collect();
    let messages: Vec<Value> = found
        .iter()
        .map(|m| {
            let mine: Vec<usize> = flying
                .iter()
                .filter(|(id, _)| *id == m.id)
                .map(|(_, i)| *i)
                .collect();
            message_view(m, &mine)
        })
        .collect();
    reply::ok(&json!({"domain": name, "messages": messages, "next": next}))
}
