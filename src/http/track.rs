//! Public tracking endpoints: the open pixel (`GET /o/{token}`) and the
//! click redirect (`GET /c/{token}`). A token is HMAC-signed
//! (`tokens.rs`); a tampered or unknown one gets 404. A hit is committed
//! (group commit) before the answer: an acknowledged hit survives a crash.
//! The redirect goes only to the URL recorded for the link number in the
//! send's link table — never to a URL from the request. Machine hits
//! (privacy proxies, link scanners: `track::machine`) are recorded and
//! flagged.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;

use super::reply::{ApiError, Body};
use super::{AppState, Client};
use crate::store::ReadTables as _;
use crate::tokens::{MessageRef, SendKind, Token};
use crate::track::{Hit, HitKind, machine};

/// The 43-byte transparent 1×1 GIF.
pub const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

fn not_found() -> ApiError {
    ApiError::not_found("no such link")
}

/// Journals a hit: answered only once it is committed. A hit the store
/// cannot take (it is unavailable) is dropped, counted and logged, and the
/// recipient still gets the pixel or the redirect: recipients first.
async fn record(state: &AppState, hit: Hit) {
    if let Err(e) = state.hits.push(&hit).await {
        state
            .store
            .health()
            .hits_dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let kind = match hit.kind {
            HitKind::Open => "open",
            HitKind::Click { .. } => "click",
        };
        tracing::warn!(error = %e, kind, contact = hit.message.contact, "tracking hit not recorded (hits_dropped)");
    }
}

fn message_key(m: &MessageRef) -> machine::MessageKey {
    (m.send.key(), m.contact)
}

/// `GET /o/{token}`: the pixel; records an open (`HEAD` does not).
pub async fn open(
    state: &Arc<AppState>,
    token: &str,
    m: &Method,
    client: &Client,
) -> Result<Response<Body>, ApiError> {
    let config = state.config();
    let Some(Token::Open(msg)) = config.tracking.keys.verify(token) else {
        return Err(not_found());
    };
    if *m == Method::GET {
        let at = state.clock.now().timestamp_millis();
        let machine = machine::from_request(
            &client.user_agent,
            client.ip,
            &config.tracking.machine_networks,
        );
        record(
            state,
            Hit {
                message: msg,
                kind: HitKind::Open,
                at,
                machine,
                scanner_window_ms: config.tracking.scanner_window.as_millis() as i64,
            },
        )
        .await;
    }
    let mut r = Response::new(Full::new(Bytes::from_static(PIXEL)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, must-revalidate, private"),
    );
    Ok(r)
}

/// `GET /c/{token}`: 302 to the recorded link with the attribution
/// parameter (and a fresh auto-login token where the link had one and the
/// message was sent within the site's `autologin_window`);
/// records a click. `HEAD` answers the same without recording (and marks
/// the message's next click as a scanner's).
pub async fn click(
    state: &Arc<AppState>,
    token: &str,
    m: &Method,
    client: &Client,
) -> Result<Response<Body>, ApiError> {
    let config = state.config();
    let Some(Token::Click(msg, n, sent)) = config.tracking.keys.verify(token) else {
        return Err(not_found());
    };
    if msg.send.kind == SendKind::Preview {
        // A preview's links lead nowhere.
        return Err(not_found());
    }
    let contact = msg.contact;
    // From memory when known (a link never changes): a click redirects
    // even while the store cannot be read.
    let link = state
        .store
        .link(msg.send.key().to_vec(), n)
        .await?
        .ok_or_else(not_found)?;
    // Auto-login only for tokens that say when the message was sent (older
    // ones go to the plain URL), and only when the contact can be read.
    let who = if link.autologin && sent.is_some() {
        match state.store.read(move |r| r.contact(contact)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, contact, "click: contact not read; redirecting without auto-login");
                None
            }
        }
    } else {
        None
    };
    let mut url = url::Url::parse(&link.url).map_err(|_| not_found())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(not_found());
    }
    let at = state.clock.now().timestamp_millis();
    if *m == Method::GET {
        let machine = machine::from_request(
            &client.user_agent,
            client.ip,
            &config.tracking.machine_networks,
        )
        .or_else(|| state.recent.click(message_key(&msg), n, at));
        record(
            state,
            Hit {
                message: msg,
                kind: HitKind::Click {
                    link: n,
                    url: link.url.clone(),
                },
                at,
                machine,
                scanner_window_ms: config.tracking.scanner_window.as_millis() as i64,
            },
        )
        .await;
        if let Some(c) = who
            && let Some(sent) = sent.and_then(|s| i64::try_from(s).ok())
            && let Ok(u) = crate::render::compile::autologin_url_for(
                &config.sites,
                &c,
                url.as_str(),
                sent,
                at / 1000,
            )
            && let Ok(parsed) = url::Url::parse(&u)
        {
            url = parsed;
        }
    } else {
        state.recent.head(message_key(&msg), at);
    }
    let param = &config.tracking.attribution_param;
    if !param.is_empty() {
        url.query_pairs_mut().append_pair(param, token);
    }
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    let loc = HeaderValue::from_str(url.as_str()).map_err(|_| not_found())?;
    r.headers_mut().insert(header::LOCATION, loc);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}
