//! The SMS engine: one task that takes due messages from the store's due
//! index and hands each to its gateway, at most `connections` requests in
//! flight and `rate_per_second` started per gateway, and records every
//! answer in the store before the message is let go.
//!
//! Exactly once: a message is sent only while it is `queued` in the store,
//! and the answer is committed before anything else happens to it. The
//! only window for a second copy is a crash between the gateway's answer
//! and that commit — one request per connection — and SMSAPI closes even
//! that (`idx` + `check_idx`); a delivery report that arrives for a
//! message still queued moves it on, so it is not sent again either.
//!
//! Before a request the engine looks at the contact again: gone, no
//! longer a number, or (marketing) SMS consent not `granted`, and the
//! message fails unsent; inside the quiet hours of the contact's site, a
//! marketing message is held until they end.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use tokio::sync::{Notify, Semaphore};

use super::gateway::{self, Outgoing, Reply};
use super::model::{SmsRecord, SmsState};
use super::queue;
use crate::activity::Activity;
use crate::clock::Clock;
use crate::config::sms::Gateway;
use crate::contacts::model::{ConsentState, Contact};
use crate::send::model::Counter;
use crate::snapshot::Current;
use crate::store::{ReadTables as _, SmsTables as _, Store, StoreError};

/// Due messages read per round.
const BATCH: usize = 200;

/// The longest answer read from a gateway.
const MAX_ANSWER: usize = 64 << 10;

/// The SMS engine (cheap to clone).
#[derive(Clone)]
pub struct SmsEngine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: Arc<Current>,
    clock: Clock,
    activity: Activity,
    wake: Notify,
    /// Told after every recorded answer: campaigns waiting for their
    /// messages to leave the queue look again.
    outcomes: Arc<Notify>,
    /// Messages being sent: id → gateway.
    in_flight: Mutex<HashMap<u64, String>>,
    gateways: Mutex<HashMap<String, Arc<Lane>>>,
    tls: tokio_rustls::TlsConnector,
}

/// One gateway's limits and idle connections.
struct Lane {
    permits: Semaphore,
    /// The earliest instant the next request may start.
    next: tokio::sync::Mutex<tokio::time::Instant>,
    spacing: Duration,
    idle: Mutex<Vec<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the engine decided about a due message before sending it.
enum Plan {
    Send(SmsRecord),
    Hold(u64, i64),
    Fail(SmsRecord, String, Counter),
}

impl SmsEngine {
    /// An engine over `store` with the daemon's config.
    pub fn new(
        store: Store,
        config: Arc<Current>,
        clock: Clock,
        activity: Activity,
        outcomes: Arc<Notify>,
    ) -> Result<SmsEngine, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
            .map_err(|e| format!("cannot load CA certificates: {e}"))?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(SmsEngine {
            inner: Arc::new(Inner {
                store,
                config,
                clock,
                activity,
                wake: Notify::new(),
                outcomes,
                in_flight: Mutex::new(HashMap::new()),
                gateways: Mutex::new(HashMap::new()),
                tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            }),
        })
    }

    /// Wakes the engine: something was queued.
    pub fn notify(&self) {
        self.inner.wake.notify_one();
    }

    /// Runs until the daemon stops; requests in flight finish and are
    /// recorded (each holds an `sms request` guard).
    pub async fn run(self) {
        let guard = self.inner.activity.guard("sms engine");
        let stopping = self.inner.activity.stopping();
        tokio::pin!(stopping);
        loop {
            if self.inner.activity.is_stopping() {
                break;
            }
            let wait = match self.round().await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "SMS queue: reading due messages failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = &mut stopping => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        drop(guard);
    }

    /// Starts every due message not in flight; how long to wait for the next.
    async fn round(&self) -> Result<Duration, StoreError> {
        let now = self.inner.clock.now().timestamp_millis();
        let (busy, mut per_gateway) = {
            let f = lock(&self.inner.in_flight);
            let mut per: HashMap<String, usize> = HashMap::new();
            for g in f.values() {
                *per.entry(g.clone()).or_default() += 1;
            }
            (f.keys().copied().collect::<HashSet<u64>>(), per)
        };
        let any_busy = !busy.is_empty();
        // Records are read only for as many messages as the gateways can
        // take now (the due index's front holds those in flight too).
        let snap = self.inner.config.snapshot();
        let capacity: usize = snap
            .config
            .sms
            .gateways
            .iter()
            .map(|g| g.connections * 2)
            .sum::<usize>()
            .max(1);
        let room = capacity.saturating_sub(busy.len()).clamp(1, BATCH);
        let due = self
            .inner
            .store
            .read(move |r| {
                let mut out = Vec::new();
                for (_, id) in r.due_sms(now, room + busy.len())? {
                    if busy.contains(&id) {
                        continue;
                    }
                    if let Some(rec) = r.sms(id)? {
                        let c = r.contact(rec.contact)?;
                        out.push((rec, c));
                    }
                }
                Ok((out, r.next_sms_due()?))
            })
            .await?;
        let (due, next) = due;
        let mut plans = Vec::new();
        for (rec, c) in due {
            plans.push(plan(&snap.config, rec, c, now));
        }
        let mut settle = Vec::new();
        let mut started = 0;
        for p in plans {
            match p {
                // Only what its gateway can take soon: a message is looked
                // at again right before its request, but a long backlog in
                // flight would only wait.
                Plan::Send(rec) => {
                    let room = snap
                        .config
                        .sms
                        .gateway(&rec.gateway)
                        .map_or(1, |g| g.connections * 2);
                    let n = per_gateway.entry(rec.gateway.clone()).or_default();
                    if *n < room {
                        *n += 1;
                        started += 1;
                        self.start(rec);
                    }
                }
                other => settle.push(other),
            }
        }
        if !settle.is_empty() {
            self.inner
                .store
                .write(move |t| {
                    for p in settle {
                        match p {
                            Plan::Hold(id, until) => queue::hold(t, id, until, now)?,
                            Plan::Fail(rec, why, c) => {
                                queue::fail_if_unchanged(t, rec.id, rec.due, why, c, now)?
                            }
                            Plan::Send(_) => {}
                        }
                    }
                    Ok(())
                })
                .await?;
            self.inner.outcomes.notify_one();
            return Ok(Duration::ZERO);
        }
        // Messages in flight stay in the due index until answered, and each
        // answer wakes the engine: with nothing new started, wait.
        let wait = match next {
            _ if started == 0 && any_busy => 1000,
            Some(n) => (n - now).clamp(10, 1000),
            None => 1000,
        };
        Ok(Duration::from_millis(wait as u64))
    }

    fn lane(&self, g: &Gateway) -> Arc<Lane> {
        let mut m = lock(&self.inner.gateways);
        let spacing = Duration::from_secs_f64(1.0 / f64::from(g.rate_per_second.max(1)));
        let fresh = || {
            Arc::new(Lane {
                permits: Semaphore::new(g.connections),
                next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
                spacing,
                idle: Mutex::new(Vec::new()),
            })
        };
        let lane = m.entry(g.id.clone()).or_insert_with(fresh);
        // A reload that changed the limits starts a new lane.
        if lane.spacing != spacing || lane.permits.available_permits() > g.connections {
            *lane = fresh();
        }
        lane.clone()
    }

    /// Sends one message on its own task and records the answer.
    fn start(&self, rec: SmsRecord) {
        lock(&self.inner.in_flight).insert(rec.id, rec.gateway.clone());
        let me = self.clone();
        let guard = self.inner.activity.guard("sms request");
        tokio::spawn(async move {
            let id = rec.id;
            me.send(rec).await;
            lock(&me.inner.in_flight).remove(&id);
            drop(guard);
            me.notify();
        });
    }

    async fn send(&self, rec: SmsRecord) {
        let snap = self.inner.config.snapshot();
        let sms = &snap.config.sms;
        let Some(g) = sms.gateway(&rec.gateway).cloned() else {
            // A config mistake (a gateway renamed or removed): tried again
            // until fixed or out of attempts.
            let reply = Reply::Retry(format!(
                "no [[sms_gateway]] `{}` is configured",
                rec.gateway
            ));
            self.record(rec.id, reply, policy(sms, 0)).await;
            return;
        };
        // Capture mode keeps text messages too: written, never sent.
        if let Some(dir) = snap.config.delivery.capture.clone() {
            let r = rec.clone();
            let reply = tokio::task::spawn_blocking(move || capture(&dir, &r))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            let reply = match reply {
                Ok(name) => Reply::Accepted {
                    gateway_id: Some(name),
                    status: "captured".into(),
                },
                Err(e) => Reply::Retry(format!("cannot write the captured SMS: {e}")),
            };
            self.record(rec.id, reply, policy(sms, g.cost_per_part))
                .await;
            return;
        }
        let lane = self.lane(&g);
        let Ok(_permit) = lane.permits.acquire().await else {
            return;
        };
        {
            let mut next = lane.next.lock().await;
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + lane.spacing;
            drop(next);
            tokio::time::sleep_until(at).await;
        }
        // Stopping: the message stays queued for the next start.
        if self.inner.activity.is_stopping() {
            return;
        }
        // The contact again, right before the request: a STOP, an erasure
        // or the quiet hours may have come while it waited for its turn.
        let Some(rec) = self.recheck(rec, &snap.config).await else {
            return;
        };
        let public = snap.config.http.public_base();
        let enc = match rec.encoding {
            super::encoding::Encoding::Gsm7 => "gsm7",
            super::encoding::Encoding::Ucs2 => "ucs2",
        };
        let out = Outgoing {
            id: rec.id,
            to: &rec.to,
            text: &rec.text,
            parts: rec.parts,
            encoding: enc,
            status_url: gateway::status_url(&g, &public, rec.id),
        };
        let now_secs = self.inner.clock.now().timestamp();
        let reply = match gateway::request(&g, &out, now_secs) {
            Ok(req) => match tokio::time::timeout(g.timeout, self.exchange(&g, &lane, req)).await {
                Ok(Ok((status, body))) => gateway::reply(&g, status, &body),
                Ok(Err((false, e))) => Reply::Retry(e),
                Ok(Err((true, e))) => unclear(&g, e),
                Err(_) => unclear(&g, format!("no answer within {:?}", g.timeout)),
            },
            Err(e) => Reply::Refused {
                reason: e,
                effect: None,
            },
        };
        match &reply {
            Reply::Accepted { .. } => {}
            Reply::Retry(why) | Reply::Unclear(why) => {
                tracing::warn!(sms = rec.id, gateway = %g.id, error = %why, "SMS not taken; it will be tried again")
            }
            Reply::Refused { reason, .. } => {
                tracing::warn!(sms = rec.id, gateway = %g.id, error = %reason, "SMS refused by the gateway")
            }
        }
        self.record(rec.id, reply, policy(sms, g.cost_per_part))
            .await;
    }

    /// The message again with its contact, planned anew; `None` (settled
    /// here) unless it is still to be sent now.
    async fn recheck(&self, rec: SmsRecord, config: &crate::config::Config) -> Option<SmsRecord> {
        let id = rec.id;
        let read = self
            .inner
            .store
            .read(move |r| {
                let Some(rec) = r.sms(id)? else {
                    return Ok(None);
                };
                let c = r.contact(rec.contact)?;
                Ok(Some((rec, c)))
            })
            .await;
        let (rec, c) = match read {
            Ok(Some(x)) => x,
            Ok(None) => return None,
            // The store is unavailable: the message stays queued.
            Err(_) => return None,
        };
        let now = self.inner.clock.now().timestamp_millis();
        let settle = match plan(config, rec, c, now) {
            Plan::Send(rec) => return Some(rec),
            other => other,
        };
        let done = self
            .inner
            .store
            .write(move |t| match settle {
                Plan::Hold(id, until) => queue::hold(t, id, until, now),
                Plan::Fail(rec, why, c) => {
                    queue::fail_if_unchanged(t, rec.id, rec.due, why, c, now)
                }
                Plan::Send(_) => Ok(()),
            })
            .await;
        if let Err(e) = done {
            tracing::warn!(sms = id, error = %e, "settling an SMS failed; it is looked at again");
        }
        self.inner.outcomes.notify_one();
        None
    }

    /// Commits an answer, trying again until the store takes it: the
    /// message stays in flight (never sent twice) meanwhile.
    async fn record(&self, id: u64, reply: Reply, policy: queue::Policy) {
        loop {
            let now = self.inner.clock.now().timestamp_millis();
            let r = reply.clone();
            let done = self
                .inner
                .store
                .write(move |t| queue::record_reply(t, id, &r, policy, now))
                .await;
            match done {
                Ok(()) => {
                    self.inner.outcomes.notify_one();
                    return;
                }
                Err(e) => {
                    tracing::warn!(sms = id, error = %e, "recording an SMS answer failed; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// One HTTP exchange on an idle connection of the lane or a new one.
    async fn exchange(
        &self,
        g: &Gateway,
        lane: &Lane,
        req: http::Request<Full<Bytes>>,
    ) -> Result<(http::StatusCode, Bytes), (bool, String)> {
        let idle = lock(&lane.idle).pop();
        // (false, …): nothing was sent; (true, …): the request may be there.
        let mut conn = match idle {
            Some(c) if c.is_ready() => c,
            _ => self.connect(g).await.map_err(|e| (false, e))?,
        };
        let (mut parts, body) = req.into_parts();
        // An HTTP/1 connection takes the path; the host goes in its header.
        let uri = parts.uri.clone();
        if let Some(h) = uri.authority() {
            parts.headers.insert(
                http::header::HOST,
                h.as_str()
                    .parse()
                    .map_err(|_| (false, "bad host".to_string()))?,
            );
        }
        parts.uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|_| (false, "bad path".to_string()))?;
        let resp = conn
            .send_request(http::Request::from_parts(parts, body))
            .await
            .map_err(|e| (true, format!("HTTP request to {} failed: {e}", g.base_url)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| (true, format!("reading the answer failed: {e}")))?
            .to_bytes();
        lock(&lane.idle).push(conn);
        Ok((status, body))
    }

    async fn connect(
        &self,
        g: &Gateway,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let host = g.base_url.host_str().ok_or("the gateway URL has no host")?;
        let port = g.base_url.port_or_known_default().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if g.base_url.scheme() == "https" {
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|_| format!("{host} is not a valid TLS server name"))?;
            let tls = self
                .inner
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host} failed: {e}"))?;
            handshake(hyper_util::rt::TokioIo::new(tls)).await
        } else {
            handshake(hyper_util::rt::TokioIo::new(tcp)).await
        }
    }
}

async fn handshake<T>(io: T) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// Writes a text message to `dir/sms/S<id>.json` (synced) instead of
/// sending it; the name is the message's, so a repeat writes it again in
/// place. Returns the name.
fn capture(dir: &std::path::Path, r: &SmsRecord) -> Result<String, String> {
    use std::io::Write as _;
    let folder = dir.join("sms");
    std::fs::create_dir_all(&folder).map_err(|e| e.to_string())?;
    let name = format!("S{}.json", r.id);
    let tmp = folder.join(format!(".{name}.tmp"));
    let body = serde_json::to_vec_pretty(&r.to_json()).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
    f.write_all(&body).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, folder.join(&name)).map_err(|e| e.to_string())?;
    std::fs::File::open(&folder)
        .and_then(|d| d.sync_all())
        .map_err(|e| e.to_string())?;
    Ok(name)
}

/// A request that went out and got no answer: SMSAPI refuses a repeated
/// `idx`, so it is an ordinary retry there; any other gateway may send a
/// second copy, so it waits for the gateway's report first.
fn unclear(g: &Gateway, why: String) -> Reply {
    match g.kind {
        crate::config::sms::GatewayKind::Smsapi => Reply::Retry(why),
        _ => Reply::Unclear(why),
    }
}

fn policy(sms: &crate::config::sms::SmsConfig, cost_per_part: u64) -> queue::Policy {
    queue::Policy {
        max_attempts: sms.max_attempts,
        retry_after_ms: sms.retry_after_ms,
        cost_per_part,
    }
}

/// What to do with a due message: send it, hold it for quiet hours, or
/// fail it unsent (contact gone, number gone or changed, no consent).
fn plan(config: &crate::config::Config, rec: SmsRecord, c: Option<Contact>, now: i64) -> Plan {
    if rec.state != SmsState::Queued {
        return Plan::Hold(rec.id, now);
    }
    let Some(c) = c else {
        return Plan::Fail(
            rec,
            "not sent: the contact was erased".into(),
            Counter::Erased,
        );
    };
    if c.phone.as_deref() != Some(rec.to.as_str()) {
        return Plan::Fail(
            rec,
            "not sent: the contact's phone number changed or was removed".into(),
            Counter::Unsent,
        );
    }
    if rec.marketing {
        if c.sms_consent != ConsentState::Granted {
            let why = format!("not sent: SMS consent is {}", c.sms_consent);
            return Plan::Fail(rec, why, Counter::Unsent);
        }
        if let Some(q) = config.sms.quiet_hours {
            let tz = config.time_zone_of(rec.site.as_deref().or(c.site.as_deref()));
            if let Some(until) = crate::automation::when::quiet_until(now, q, tz) {
                return Plan::Hold(rec.id, until);
            }
        }
    }
    Plan::Send(rec)
}
