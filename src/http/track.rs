//! Public tracking endpoints: the open pixel (`GET /o/{token}`) and the
//! click redirect (`GET /c/{token}`). A token is HMAC-signed
//! (`tokens.rs`); a tampered or unknown one gets 404. A hit on a campaign
//! message is committed (group commit) before the answer: an acknowledged
//! hit survives a crash. The redirect goes only to the URL recorded for the
//! link number in the send's link table — never to a URL from the request.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;

use super::AppState;
use super::reply::{ApiError, Body};
use crate::campaign::model::{Counter, unslot};
use crate::store::{CLICKED, OPENED};
use crate::tokens::{MessageRef, SendKind, Token};

/// The 43-byte transparent 1×1 GIF.
pub const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

fn not_found() -> ApiError {
    ApiError::not_found("no such link")
}

/// Records an open or a click of a campaign message: engagement flags of
/// the contact in the stage, unique and total counters of the variant. A
/// click counts as an open too (the message was seen).
async fn record(state: &AppState, m: MessageRef, click: bool) -> Result<(), ApiError> {
    if m.send.kind != SendKind::Campaign {
        return Ok(()); // tests, previews, transactional: nothing to count yet
    }
    let id = m.send.id;
    let slot = m.send.variant;
    let (stage, _) = unslot(slot);
    let contact = m.contact;
    let now = state.clock.now().timestamp_millis();
    state
        .store
        .write(move |t| {
            // Only messages Herald really queued count.
            if t.campaign_sent(id, stage, contact)?.is_none() {
                return Ok(());
            }
            let old = t.engage(id, stage, contact, click, now)?;
            if old & OPENED == 0 {
                t.bump_campaign(id, slot, Counter::UniqueOpens, 1)?;
            }
            if click {
                if old & CLICKED == 0 {
                    t.bump_campaign(id, slot, Counter::UniqueClicks, 1)?;
                }
                t.bump_campaign(id, slot, Counter::Clicks, 1)?;
            } else {
                t.bump_campaign(id, slot, Counter::Opens, 1)?;
            }
            Ok(())
        })
        .await?;
    Ok(())
}

/// `GET /o/{token}`: the pixel; records an open.
pub async fn open(
    state: &Arc<AppState>,
    token: &str,
    m: &Method,
) -> Result<Response<Body>, ApiError> {
    let Some(Token::Open(msg)) = state.config().tracking.keys.verify(token) else {
        return Err(not_found());
    };
    if *m == Method::GET {
        record(state, msg, false).await?;
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
/// parameter; records a click (`HEAD` answers without recording).
pub async fn click(
    state: &Arc<AppState>,
    token: &str,
    m: &Method,
) -> Result<Response<Body>, ApiError> {
    let config = state.config();
    let Some(Token::Click(msg, n)) = config.tracking.keys.verify(token) else {
        return Err(not_found());
    };
    let key = msg.send.key();
    let link = state
        .store
        .read(move |r| r.link(&key, n))
        .await?
        .ok_or_else(not_found)?;
    let mut url = url::Url::parse(&link.url).map_err(|_| not_found())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(not_found());
    }
    if *m == Method::GET {
        record(state, msg, true).await?;
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
