//! A connection task: one SMTP connection to one destination, started by
//! the scheduler, sending that destination's ready jobs one after another.
//!
//! 1. Waits for the sender's rate-limit slot before connecting (never while
//!    holding a session), then takes its first job.
//! 2. Resolves the candidate servers: the relay, or the MX hosts in
//!    preference order ([`super::mx`]); an answer that holds for the whole
//!    destination (null MX, NXDOMAIN, a DNS failure) is recorded for every
//!    waiting job. The domain's MTA-STS policy ([`super::mta_sts`]), in
//!    `enforce` mode, keeps only the MX hosts it lists (none: the
//!    destination is deferred) and requires STARTTLS with a verified
//!    certificate; in `testing` mode it only reports.
//! 3. Connects to the first server that answers, greets (EHLO, HELO
//!    fallback), STARTTLS when offered or required, AUTH to relays
//!    ([`super::smtp::Session::connect`]). If none answers, the destination
//!    is "dead" as Postfix says: its waiting jobs are deferred together,
//!    unless another connection to it has a working session.
//! 4. Job after job: re-reads the record and body, sends the recipients
//!    still pending, records the outcome ([`super::outcome::finish_job`])
//!    while it transfers the next message, whose final dot waits until
//!    that outcome is durable (see [`send_jobs`]). With a pipelining server
//!    the next ready job's envelope goes with the final dot
//!    ([`take_next`], [`smtp::Session::end`]); up to `messages_per_connection`, waiting
//!    at most [`LINGER`] for more and closing rather than idling more than
//!    [`MAX_RATE_WAIT`] for a rate slot.
//!
//! Once the engine's `Activity` is stopping, the task takes no new job: it
//! finishes and records the transaction in hand, then QUITs.

use std::sync::Arc;
use std::time::Duration;

use super::engine::{Inner, lock};
use super::model::BounceClass;
use super::mta_sts::{Applied, Mode};
use super::mx::{MxError, MxHost};
use super::outcome::{Outcome, finish_job, finish_job_journaled};
use super::scheduler::{
    DestKey, Job, Lane, defer_orphans, drain_jobs, forget_rcpts, give_back_slot, none_live,
    observe, pop_job, release_jobs, reserve_slot, set_live, should_close, starved, unpop_job,
    unreserve_warm, warm_give_back,
};
use super::smtp::{self, Reply, Session, Target, TlsMode};
use crate::config::{Config, RelayTls, Sender};
use crate::store::ReadTables as _;

/// How long an idle connection waits for more work before it QUITs.
const LINGER: Duration = Duration::from_millis(500);
/// A connection whose sender's rate limit would keep it idle longer than
/// this closes instead (servers drop idle sessions after a few minutes).
const MAX_RATE_WAIT: Duration = Duration::from_secs(30);

/// One connection task, from the rate-limit wait to QUIT.
pub(super) async fn run(inner: &Arc<Inner>, lane: &Lane) {
    let key = &lane.dest;
    let config = inner.config.get();
    let Some(sender) = config.sender(&key.sender).cloned() else {
        // The sender left the config (reload) after its jobs were queued:
        // the same wait as for messages loaded without a sender.
        let jobs = drain_jobs(inner, key);
        defer_orphans(inner, jobs.iter().map(|j| j.msg).collect()).await;
        release_jobs(inner, &jobs);
        return;
    };
    // Wait for the rate limit before connecting, not while holding a session.
    let slot = reserve_slot(inner, &sender, lane);
    if let Some(slot) = &slot
        && !sleep_unless_stopping(inner, slot.at).await
    {
        give_back_slot(inner, &sender, lane, slot);
        return;
    }
    let Some(mut first) = pop_job(inner, lane) else {
        if let Some(slot) = &slot {
            give_back_slot(inner, &sender, lane, slot);
        }
        return;
    };
    let opened = match &config.delivery.capture {
        Some(dir) => Ok(Link::Capture(dir.clone())),
        None => open(inner, &config, &sender, key).await.map(Link::Smtp),
    };
    let mut link = match opened {
        Ok(l) => l,
        Err(e) => {
            // Not sent: its warm-up count goes back.
            unreserve_warm(inner, &mut first);
            if let Unreachable::Servers(reply) = &e {
                observe(inner, lane, &[reply.text.as_str()], false);
            }
            unreachable(inner, &config, key, first, e).await;
            return;
        }
    };
    set_live(inner, key, true);
    let usable = send_jobs(inner, &config, &sender, lane, &mut link, first).await;
    set_live(inner, key, false);
    if usable && let Link::Smtp(session) = link {
        session.quit().await;
    }
}

/// Where a connection task's transactions go: an SMTP session, or the
/// capture outbox ([`super::capture`]) when `[delivery] capture` is set.
enum Link {
    Smtp(Session),
    Capture(std::path::PathBuf),
}

impl Link {
    /// Whether this link is where mail goes under the config's `capture`.
    fn fits(&self, capture: Option<&std::path::PathBuf>) -> bool {
        match (self, capture) {
            (Link::Smtp(_), None) => true,
            (Link::Capture(dir), Some(now)) => dir == now,
            _ => false,
        }
    }

    /// The peer's name for the queue record.
    fn host(&self) -> String {
        match self {
            Link::Smtp(s) => s.host.clone(),
            Link::Capture(_) => "capture".to_string(),
        }
    }

    /// One transaction: `Err` when the link is no longer usable. `gate`:
    /// see [`Session::send`]; a capture waits for it before writing. With
    /// `may_follow`, a pipelining session takes the next ready job while
    /// the gate is closed ([`take_next`]) and sends its envelope with this
    /// message's final dot: that job comes back loaded, to be sent next on
    /// this link (or, on `Err`, to be recorded as this one is).
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &mut self,
        inner: &Inner,
        sender: &Sender,
        lane: &Lane,
        j: &Job,
        body: Vec<u8>,
        gate: &mut smtp::Gate,
        may_follow: bool,
    ) -> (Result<Vec<smtp::RcptResult>, Reply>, Option<(Job, Vec<u8>)>) {
        let rcpts: Vec<&str> = j.rcpts.iter().map(|(_, a)| a.as_str()).collect();
        let dir = match self {
            Link::Smtp(session) => {
                let sent = match session.transfer(&j.return_path, &rcpts, &body).await {
                    Ok(smtp::Transfer::Sent(sent)) => sent,
                    Ok(smtp::Transfer::Done(out)) => return (Ok(out), None),
                    Err(e) => return (Err(e), None),
                };
                let follow = may_follow && session.pipelines();
                let ((), next) = tokio::join!(smtp::pass(gate), async {
                    if follow {
                        take_next(inner, sender, lane).await
                    } else {
                        None
                    }
                });
                let next_rcpts: Vec<&str> = next
                    .as_ref()
                    .map(|(nj, _)| nj.rcpts.iter().map(|(_, a)| a.as_str()).collect())
                    .unwrap_or_default();
                let envelope = next
                    .as_ref()
                    .map(|(nj, _)| (nj.return_path.as_str(), next_rcpts.as_slice()));
                let result = session.end(sent, envelope).await;
                return (result, next);
            }
            Link::Capture(dir) => dir.clone(),
        };
        let sender = &sender.id;
        smtp::pass(gate).await;
        let env = super::capture::Envelope {
            queue_id: j.msg,
            sender: sender.to_string(),
            return_path: j.return_path.clone(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            captured_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let first = j.rcpts.first().map_or(0, |(i, _)| *i);
        let n = rcpts.len();
        let written =
            tokio::task::spawn_blocking(move || super::capture::write(&dir, &env, first, &body))
                .await;
        let result = match written {
            Ok(Ok(name)) => {
                let r = Reply {
                    code: 250,
                    text: format!("250 2.0.0 captured as {name}"),
                };
                Ok(vec![smtp::RcptResult::Delivered(r); n])
            }
            Ok(Err(e)) => Err(Reply {
                code: 451,
                text: format!("451 4.3.0 cannot write to the capture folder: {e}"),
            }),
            Err(e) => Err(Reply {
                code: 451,
                text: format!("451 4.3.0 capture failed: {e}"),
            }),
        };
        (result, None)
    }
}

/// Records the outcome of a destination that could not be reached for the
/// job this connection took, and for those waiting when it is the
/// destination as a whole (or no other connection to it works).
async fn unreachable(
    inner: &Arc<Inner>,
    config: &Config,
    key: &DestKey,
    first: Job,
    e: Unreachable,
) {
    match e {
        Unreachable::Destination(outcome) => {
            // The whole destination shares this answer.
            let mut jobs = drain_jobs(inner, key);
            jobs.insert(0, first);
            for j in jobs {
                finish_job(inner, config, j, None, |_| outcome.clone()).await;
            }
        }
        Unreachable::Servers(last_error) => {
            // Defer what this connection took, and everything waiting
            // unless another connection to the destination works. Even a
            // 5xx greeting or EHLO is a reason to retry later (as Postfix
            // does): it is about the connection, not the recipients.
            let mut jobs = if none_live(inner, key) {
                drain_jobs(inner, key)
            } else {
                Vec::new()
            };
            jobs.insert(0, first);
            let text = last_error.text;
            for j in jobs {
                finish_job(inner, config, j, None, |_| Outcome::Temporary(text.clone())).await;
            }
        }
    }
}

/// Why no session to a destination could be opened.
enum Unreachable {
    /// The destination as a whole: null MX, NXDOMAIN, a DNS or relay-lookup
    /// failure, no address. Every waiting job gets this outcome.
    Destination(Outcome),
    /// No server answered (or each refused the greeting, EHLO, TLS, AUTH):
    /// the last server's reply.
    Servers(Reply),
}

/// Resolves the destination's servers and opens a session with the first
/// that answers, in order.
async fn open(
    inner: &Inner,
    config: &Config,
    sender: &Sender,
    key: &DestKey,
) -> Result<Session, Unreachable> {
    let found = match targets(inner, config, sender, key).await {
        Ok(t) if t.is_empty() => Err(MxError::Temporary(format!(
            "451 4.4.4 no address to deliver to for {}",
            key.domain
        ))),
        other => other,
    };
    let targets = found.map_err(|e| {
        Unreachable::Destination(match e {
            MxError::Permanent(m) => Outcome::Permanent(m, BounceClass::Hard),
            MxError::Temporary(m) => Outcome::Temporary(m),
        })
    })?;
    let mut last_error = Reply {
        code: 0,
        text: format!("no server for {}", key.domain),
    };
    for t in &targets {
        match Session::connect(t).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                tracing::debug!(host = %t.host, addr = %t.addr, error = %e.reply.text, "cannot use this server; trying the next");
                last_error = e.reply;
            }
        }
    }
    Err(Unreachable::Servers(last_error))
}

/// Sends `first` and then the destination's next jobs over `session`.
/// Each outcome is recorded while the next message is transferred, and
/// that message's final dot waits until the outcome is durable (in the
/// outcome journal, [`super::journal`]; [`Session::send`]): at most one
/// message per connection is accepted by the server and not yet durably
/// recorded, the bound a `kill -9` can send twice, as when each outcome was
/// awaited before the next job. Returns whether the session is still usable
/// (worth a QUIT), once every outcome it recorded is committed to the
/// store (the connection's shutdown guard covers those commits).
async fn send_jobs(
    inner: &Arc<Inner>,
    config: &Arc<Config>,
    sender: &Sender,
    lane: &Lane,
    session: &mut Link,
    first: Job,
) -> bool {
    let mut records = Vec::new();
    let usable = send_loop(inner, config, sender, lane, session, first, &mut records).await;
    for r in records {
        log_failed_record(r.await);
    }
    usable
}

/// Logs a record task that panicked.
fn log_failed_record(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "recording a delivery outcome failed");
    }
}

/// Drops the record tasks that have ended (logging a panicked one), so a
/// long-lived connection keeps only those still committing.
fn reap(records: &mut Vec<tokio::task::JoinHandle<()>>) {
    use futures_util::FutureExt;
    records.retain_mut(
        |r| match r.is_finished().then(|| r.now_or_never()).flatten() {
            Some(result) => {
                log_failed_record(result);
                false
            }
            None => true,
        },
    );
}

/// [`send_jobs`]'s loop; the tasks recording its outcomes go to `records`.
async fn send_loop(
    inner: &Arc<Inner>,
    config: &Arc<Config>,
    sender: &Sender,
    lane: &Lane,
    session: &mut Link,
    first: Job,
    records: &mut Vec<tokio::task::JoinHandle<()>>,
) -> bool {
    let key = &lane.dest;
    let per_connection = lane
        .group
        .as_ref()
        .map_or(config.delivery.messages_per_connection, |(_, g)| {
            g.messages_per_connection
        });
    let host = session.host();
    let mut job = Some(first);
    // The next job, loaded, whose envelope went with the last final dot.
    let mut ahead: Option<(Job, Vec<u8>)> = None;
    let mut sent = 0usize;
    // The previous message's outcome, being recorded.
    let mut recording: smtp::Gate = None;
    loop {
        let (j, body) = match ahead.take() {
            // Its envelope is with the server already: it goes on this link.
            Some(loaded) => loaded,
            None => {
                let Some(j) = job.take() else { break };
                if !session.fits(inner.config.get().delivery.capture.as_ref()) {
                    // A reload switched capture on or off: this link no
                    // longer fits; the job goes back for a connection that does.
                    unpop_job(inner, key, j);
                    break;
                }
                match load(inner, j).await {
                    Loaded::Ready(j, body) => (j, body),
                    Loaded::Nothing => {
                        job = wait_for_job(inner, lane).await;
                        continue;
                    }
                    Loaded::Failed(j, text) => {
                        smtp::pass(&mut recording).await;
                        finish_job(inner, config, j, None, |_| Outcome::Temporary(text.clone()))
                            .await;
                        return true;
                    }
                }
            }
        };
        let may_follow = sent + 1 < per_connection && !should_close(inner, lane);
        let (result, next) = session
            .send(inner, sender, lane, &j, body, &mut recording, may_follow)
            .await;
        // A send that ended before its data did not wait.
        smtp::pass(&mut recording).await;
        sent += 1;
        match result {
            Ok(results) => {
                let (failed, delivered) = replies_of(&results);
                observe(inner, lane, &failed, delivered);
                reap(records);
                let (gate, task) = record(inner, config, j, &host, results);
                records.push(task);
                recording = Some(gate);
            }
            Err(reply) => {
                observe(inner, lane, &[reply.text.as_str()], false);
                let text = format!("{host}: {}", reply.text);
                finish_job(inner, config, j, Some(&host), |_| {
                    Outcome::Temporary(text.clone())
                })
                .await;
                if let Some((nj, _)) = next {
                    // Its envelope went ahead on the lost session.
                    let text = format!(
                        "{text}; this message was next on the connection, its data not sent"
                    );
                    finish_job(inner, config, nj, Some(&host), |_| {
                        Outcome::Temporary(text.clone())
                    })
                    .await;
                }
                return false;
            }
        }
        if next.is_some() {
            ahead = next;
            continue;
        }
        if sent >= per_connection || should_close(inner, lane) {
            break;
        }
        let Some(j) = wait_for_job(inner, lane).await else {
            break;
        };
        match reserve_slot(inner, sender, lane) {
            Some(slot)
                if slot
                    .at
                    .saturating_duration_since(tokio::time::Instant::now())
                    > MAX_RATE_WAIT =>
            {
                // A long wait: close rather than idle; the next connection
                // takes the slot back and waits for it before connecting.
                give_back_slot(inner, sender, lane, &slot);
                unpop_job(inner, key, j);
                break;
            }
            Some(slot) => {
                if !sleep_unless_stopping(inner, slot.at).await {
                    // Not started: it stays queued for the next start.
                    give_back_slot(inner, sender, lane, &slot);
                    unpop_job(inner, key, j);
                    break;
                }
                job = Some(j);
            }
            None => job = Some(j),
        }
    }
    smtp::pass(&mut recording).await;
    true
}

/// The next job, loaded, if one is ready now, its rate slot (if any) is
/// due now and the engine is not stopping: its envelope can go with this
/// message's final dot. Otherwise nothing is taken.
async fn take_next(inner: &Inner, sender: &Sender, lane: &Lane) -> Option<(Job, Vec<u8>)> {
    if inner.activity.is_stopping() || starved(inner, lane) {
        return None;
    }
    let j = pop_job(inner, lane)?;
    if let Some(slot) = reserve_slot(inner, sender, lane)
        && slot.at > tokio::time::Instant::now() + Duration::from_millis(1)
    {
        give_back_slot(inner, sender, lane, &slot);
        unpop_job(inner, &lane.dest, j);
        return None;
    }
    match load(inner, j).await {
        Loaded::Ready(j, body) => Some((j, body)),
        Loaded::Nothing => None,
        // The ordinary path reads it again and records the failure.
        Loaded::Failed(j, _) => {
            unpop_job(inner, &lane.dest, j);
            None
        }
    }
}

/// Records a transaction's outcome on a task of its own, so that the
/// connection can transfer its next message meanwhile; the returned gate
/// is ready once the outcome is durable, the task ends once the store has
/// committed it.
fn record(
    inner: &Arc<Inner>,
    config: &Arc<Config>,
    j: Job,
    host: &str,
    results: Vec<smtp::RcptResult>,
) -> (smtp::Pending, tokio::task::JoinHandle<()>) {
    let (inner, config, host) = (inner.clone(), config.clone(), host.to_string());
    let (durable, is_durable) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        finish_job_journaled(
            &inner,
            &config,
            j,
            Some(&host),
            |i| Outcome::of_rcpt(results.get(i)),
            durable,
        )
        .await;
    });
    // A task that ended without saying so (the store closed, or a panic,
    // which `send_jobs` logs) opens the gate too.
    let gate = Box::pin(async move {
        let _ = is_durable.await;
    });
    (gate, task)
}

/// A job ready to send, or why not.
enum Loaded {
    /// The job (its recipients still pending) and the message body.
    Ready(Job, Vec<u8>),
    /// The message was purged or erased meanwhile, or none of the job's
    /// recipients is pending any more: nothing to send or record (the job
    /// is released).
    Nothing,
    /// The store could not be read: the job is deferred with this reply.
    Failed(Job, String),
}

/// Re-reads the job's message and body just before sending: recipients
/// taken out since the message was loaded (erased, purged, no consent) are
/// not sent.
async fn load(inner: &Inner, mut j: Job) -> Loaded {
    let id = j.msg;
    let read = inner
        .store
        .read(move |v| Ok((v.message_body(id)?, v.queued_message(id)?)))
        .await;
    match read {
        Ok((Some(body), Some(m))) => {
            let gone: Vec<(usize, String)> = j
                .rcpts
                .iter()
                .filter(|(i, _)| !m.recipients.get(*i).is_some_and(|r| r.state.is_pending()))
                .cloned()
                .collect();
            if !gone.is_empty() {
                j.rcpts.retain(|r| !gone.contains(r));
                forget_rcpts(inner, j.msg, &gone);
                // Not sent: their warm-up count goes back.
                warm_give_back(inner, &mut j, gone.len() as u64);
            }
            if j.rcpts.is_empty() {
                release_jobs(inner, std::slice::from_ref(&j));
                return Loaded::Nothing;
            }
            Loaded::Ready(j, body)
        }
        Ok(_) => {
            unreserve_warm(inner, &mut j);
            release_jobs(inner, std::slice::from_ref(&j));
            Loaded::Nothing
        }
        Err(e) => {
            tracing::error!(error = %e, msg = j.msg, "cannot read a queued message");
            Loaded::Failed(j, format!("local error reading the message: {e}"))
        }
    }
}

/// Sleeps until `at`; `false` if the engine started stopping first. A
/// slot less than a millisecond away is taken at once: the timer's tick is
/// a millisecond, and the slots still advance one step per message, so a
/// fast rate keeps its average.
async fn sleep_unless_stopping(inner: &Inner, at: tokio::time::Instant) -> bool {
    if at <= tokio::time::Instant::now() + Duration::from_millis(1) {
        return !inner.activity.is_stopping();
    }
    tokio::select! {
        biased;
        _ = inner.activity.stopping() => false,
        _ = tokio::time::sleep_until(at) => true,
    }
}

/// The failure replies of a transaction's recipients (for the back-off
/// rules), and whether any was delivered.
fn replies_of(results: &[smtp::RcptResult]) -> (Vec<&str>, bool) {
    let mut failed = Vec::new();
    let mut delivered = false;
    for r in results {
        match r {
            smtp::RcptResult::Delivered(_) => delivered = true,
            smtp::RcptResult::Temporary(r) | smtp::RcptResult::Permanent(r, _) => {
                if !failed.contains(&r.text.as_str()) {
                    failed.push(r.text.as_str());
                }
            }
        }
    }
    (failed, delivered)
}

/// Waits up to [`LINGER`] for another ready job of the destination; `None`
/// when none came or the engine is stopping.
async fn wait_for_job(inner: &Inner, lane: &Lane) -> Option<Job> {
    let deadline = tokio::time::Instant::now() + LINGER;
    let stopping = inner.activity.stopping();
    tokio::pin!(stopping);
    loop {
        // Registered before the look, so jobs added in between still wake us.
        let added = inner.jobs_added.notified();
        tokio::pin!(added);
        added.as_mut().enable();
        if let Some(j) = pop_job(inner, lane) {
            return Some(j);
        }
        // Another domain of the provider waits for this connection's place.
        if starved(inner, lane) {
            return None;
        }
        tokio::select! {
            biased;
            _ = &mut stopping => return None,
            _ = tokio::time::sleep_until(deadline) => return None,
            _ = &mut added => {}
        }
    }
}

/// The candidate servers of a destination.
async fn targets(
    inner: &Inner,
    config: &Config,
    sender: &Sender,
    key: &DestKey,
) -> Result<Vec<Target>, MxError> {
    let d = &config.delivery;
    if let Some(relay) = &sender.relay {
        let connector = {
            let mut cache = lock(&inner.relay_tls);
            // Keyed by the CA certificates too, so that a reload with a new
            // ca_file takes effect.
            let cache_key = (sender.id.clone(), relay.ca_certs.clone());
            match cache.get(&cache_key) {
                Some(c) => c.clone(),
                None => {
                    let c = smtp::relay_connector(&relay.ca_certs).map_err(MxError::Temporary)?;
                    cache.insert(cache_key, c.clone());
                    c
                }
            }
        };
        let addrs = tokio::net::lookup_host((relay.host.as_str(), relay.port))
            .await
            .map_err(|e| {
                MxError::Temporary(format!("cannot resolve the relay {}: {e}", relay.host))
            })?;
        let tls = match relay.tls {
            RelayTls::StartTls => TlsMode::Required,
            RelayTls::Implicit => TlsMode::Implicit,
            RelayTls::None => TlsMode::Off,
        };
        return Ok(addrs
            .map(|addr| Target {
                addr,
                host: relay.host.clone(),
                helo: sender.helo.clone(),
                tls,
                auth: relay.auth.clone(),
                connector: connector.clone(),
                connect_timeout: d.connect_timeout,
                command_timeout: d.command_timeout,
                source: None,
                tls_required_by: None,
            })
            .collect());
    }
    let mut hosts = inner.mx.hosts(&key.domain).await?;
    let mut tls = if sender.require_tls || d.require_tls_domains.contains(&key.domain) {
        TlsMode::Required
    } else {
        TlsMode::Opportunistic
    };
    let mut connector = inner.mx_tls.clone();
    let mut tls_required_by = None;
    if d.mta_sts
        && let Some(policy) = inner.mta_sts.policy(&key.domain, d).await
    {
        let sts = apply_mta_sts(inner, d, &policy, &mut hosts)?;
        if let Some(c) = sts.connector {
            connector = c;
        }
        if sts.enforce {
            tls = TlsMode::Required;
            tls_required_by = Some(policy.describe());
        }
    }
    Ok(hosts
        .into_iter()
        .flat_map(|h| {
            let name = h.name.clone();
            h.addrs.into_iter().map(move |ip| (name.clone(), ip))
        })
        .map(|(host, ip)| Target {
            addr: std::net::SocketAddr::new(ip, d.smtp_port),
            host,
            helo: sender.helo.clone(),
            tls,
            auth: None,
            connector: connector.clone(),
            connect_timeout: d.connect_timeout,
            command_timeout: d.command_timeout,
            source: sender.source_ip,
            tls_required_by: tls_required_by.clone(),
        })
        // A source address reaches only servers of its own family.
        .filter(|t| {
            sender
                .source_ip
                .is_none_or(|s| s.is_ipv4() == t.addr.is_ipv4())
        })
        .collect())
}

/// What an MTA-STS policy changes for a destination's MX targets.
struct StsUse {
    /// `enforce`: STARTTLS required, the certificate verified.
    enforce: bool,
    /// The connector to use instead of the unverifying one.
    connector: Option<tokio_rustls::TlsConnector>,
}

/// Applies `policy` to the MX `hosts` (RFC 8461 §5): in `enforce` mode
/// only the hosts it lists stay (none listed: the destination is deferred)
/// and their certificates must verify; in `testing` mode nothing changes,
/// but a host list the policy would refuse and certificates that do not
/// verify are logged and counted.
fn apply_mta_sts(
    inner: &Inner,
    d: &crate::config::DeliveryConfig,
    policy: &Applied,
    hosts: &mut Vec<MxHost>,
) -> Result<StsUse, MxError> {
    let listed = hosts.iter().any(|h| policy.policy.allows(&h.name));
    let names = || {
        hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let connectors = inner.mta_sts.connectors(&d.mta_sts_ca_certs);
    match policy.policy.mode {
        Mode::Enforce => {
            if !listed {
                inner.mta_sts.count_failure(Mode::Enforce);
                let text = format!(
                    "451 4.7.5 {} lists none of its MX hosts: {}",
                    policy.describe(),
                    names()
                );
                tracing::warn!(domain = %policy.domain, mx = ?policy.policy.mx, "{text}");
                return Err(MxError::Temporary(text));
            }
            hosts.retain(|h| policy.policy.allows(&h.name));
            let connectors = connectors.map_err(|e| {
                MxError::Temporary(format!(
                    "451 4.7.5 {} requires verified certificates, but none can be verified: {e}",
                    policy.describe()
                ))
            })?;
            Ok(StsUse {
                enforce: true,
                connector: Some(connectors.enforce.clone()),
            })
        }
        Mode::Testing | Mode::None => {
            if !listed {
                inner.mta_sts.count_failure(Mode::Testing);
                tracing::warn!(domain = %policy.domain, mx = ?policy.policy.mx, hosts = %names(), "{} lists none of the MX hosts; delivering anyway", policy.describe());
            }
            Ok(StsUse {
                enforce: false,
                connector: connectors.ok().map(|c| c.testing.clone()),
            })
        }
    }
}
