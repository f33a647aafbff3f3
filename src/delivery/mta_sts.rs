//! MTA-STS (RFC 8461) for outbound delivery: a destination domain can
//! publish that mail to it must go over TLS with a verified certificate, to
//! the MX hosts it lists.
//!
//! - The TXT record `_mta-sts.<domain>` (`v=STSv1; id=…;`, [`parse_txt`])
//!   says a policy exists and names its version (`id`).
//! - The policy file, `https://mta-sts.<domain>/.well-known/mta-sts.txt`
//!   ([`Policy::parse`]), says the mode (`enforce`, `testing`, `none`), the
//!   MX host patterns ([`mx_matches`]) and how long to keep it (`max_age`).
//! - [`MtaSts::policy`] finds the policy that holds for a domain: the cached
//!   one while the TXT id is unchanged, else a new fetch (no redirects,
//!   `text/plain`, at most 64 KiB, 10 s, the certificate of
//!   `mta-sts.<domain>` verified); a failed fetch keeps an unexpired cached
//!   policy (§5.1), and with none the domain is treated as having no policy.
//!   Valid policies are kept in the store (`mta_sts_v1`) so that a restart
//!   keeps applying them; the answer for a domain is remembered in memory
//!   for a few minutes (an hour when it has no TXT record), so connections
//!   to one domain do not each look it up.
//! - [`Connectors`]: TLS for policy fetches and for MX hosts under a policy,
//!   verifying against the system's CAs plus `[delivery] mta_sts_ca_file`;
//!   certificate failures under a policy are logged and counted
//!   (`herald_mta_sts_failures_total{mode}`); in `testing` mode the
//!   connection then goes on (the policy only reports).
//!
//! How a policy shapes delivery is decided in `connection.rs` (`targets`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsConnector;

use super::mx::Mx;
use crate::clock::Clock;
use crate::config::DeliveryConfig;
use crate::metrics::ModeLabels;
use crate::store::Store;

/// The longest `max_age` honoured (RFC 8461 §3.2: 31557600 s, a year).
pub const MAX_AGE_CAP: u64 = 31_557_600;
/// The largest policy file read (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Time for a whole policy fetch: DNS, connect, TLS, request, body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a domain without a `_mta-sts` TXT record is not asked again.
const NO_RECORD_RECHECK: Duration = Duration::from_secs(3600);
/// How long any other answer is reused before DNS is asked again.
const RECHECK: Duration = Duration::from_secs(300);
/// How long after a failed DNS lookup or fetch before trying again.
const FAILED_RECHECK: Duration = Duration::from_secs(60);
/// Above this many domains remembered, stale answers are dropped.
const MAX_REMEMBERED: usize = 10_000;

/// A policy's mode (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deliver only to listed MX hosts, over TLS with a verified
    /// certificate; otherwise defer.
    Enforce,
    /// Deliver as without a policy, but report (log, count) what would
    /// have failed.
    Testing,
    /// The domain has withdrawn its policy.
    None,
}

impl Mode {
    /// The mode as the policy file writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// What the policy asks for.
    pub mode: Mode,
    /// MX host patterns, lower case: a name, or `*.` and a name (one
    /// leftmost label).
    pub mx: Vec<String>,
    /// Seconds the policy may be cached (capped at [`MAX_AGE_CAP`]).
    pub max_age: u64,
}

/// Why a policy file is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A line without `key:`.
    #[error("line {0} is not a `key: value` line")]
    NotKeyValue(usize),
    /// No `version` field.
    #[error("no `version` field")]
    MissingVersion,
    /// A version other than `STSv1`.
    #[error("version `{0}` is not STSv1")]
    BadVersion(String),
    /// No `mode` field.
    #[error("no `mode` field")]
    MissingMode,
    /// A mode other than enforce, testing, none.
    #[error("mode `{0}` is none of enforce, testing, none")]
    BadMode(String),
    /// No `max_age` field.
    #[error("no `max_age` field")]
    MissingMaxAge,
    /// `max_age` not 1 to 10 digits.
    #[error("max_age `{0}` is not a number of seconds (1 to 10 digits)")]
    BadMaxAge(String),
    /// An `mx` value that is not a host name or `*.` and a host name.
    #[error("mx `{0}` on line {1} is not a host name or a `*.` wildcard")]
    BadMx(String, usize),
    /// Mode enforce or testing without any `mx`.
    #[error("mode {0} lists no `mx` host")]
    NoMx(&'static str),
}

impl Policy {
    /// Parses a policy file (RFC 8461 §3.2): `key: value` lines ended by
    /// CRLF or LF; `version`, `mode` and `max_age` required, the first of a
    /// repeated key counts; `mx` repeats and is required unless the mode is
    /// `none`; unknown keys are ignored.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        for (i, line) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) = line.split_once(':').ok_or(PolicyError::NotKeyValue(n))?;
            let value = value.trim_matches([' ', '\t']);
            if key.is_empty() || key.contains([' ', '\t']) {
                return Err(PolicyError::NotKeyValue(n));
            }
            match key {
                "version" if version.is_none() => version = Some(value),
                "mode" if mode.is_none() => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(PolicyError::BadMode(other.to_string())),
                    });
                }
                "max_age" if max_age.is_none() => {
                    if value.is_empty()
                        || value.len() > 10
                        || !value.bytes().all(|b| b.is_ascii_digit())
                    {
                        return Err(PolicyError::BadMaxAge(value.to_string()));
                    }
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| PolicyError::BadMaxAge(value.to_string()))?;
                    max_age = Some(secs.min(MAX_AGE_CAP));
                }
                "mx" => {
                    let pattern = value.trim_end_matches('.').to_ascii_lowercase();
                    let host = pattern.strip_prefix("*.").unwrap_or(&pattern);
                    if !is_host_name(host) {
                        return Err(PolicyError::BadMx(value.to_string(), n));
                    }
                    mx.push(pattern);
                }
                _ => {}
            }
        }
        match version {
            None => return Err(PolicyError::MissingVersion),
            Some("STSv1") => {}
            Some(v) => return Err(PolicyError::BadVersion(v.to_string())),
        }
        let mode = mode.ok_or(PolicyError::MissingMode)?;
        let max_age = max_age.ok_or(PolicyError::MissingMaxAge)?;
        if mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::NoMx(mode.as_str()));
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// Whether the MX host `host` is one the policy lists (§4.1).
    pub fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }
}

/// Whether `host` matches the policy pattern `pattern` (RFC 8461 §4.1):
/// equal names, or `*.rest` and a name of one more label in front of
/// `rest`. Case and a trailing dot do not count.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => host == pattern,
    }
}

/// A host name of at least two labels: letters, digits, hyphens (and
/// underscores, seen in the wild), each label 1 to 63 characters.
fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Why a `_mta-sts` TXT record is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxtError {
    /// Not starting with `v=STSv1`.
    #[error("the record does not start with v=STSv1")]
    NotStsV1,
    /// A field without `=`.
    #[error("field `{0}` is not name=value")]
    BadField(String),
    /// No `id` field.
    #[error("no id field")]
    MissingId,
    /// An id that is not 1 to 32 letters and digits.
    #[error("id `{0}` is not 1 to 32 letters and digits")]
    BadId(String),
}

/// Parses a `_mta-sts` TXT record (RFC 8461 §3.1) and returns its id:
/// `v=STSv1` first, then `;`-separated `name=value` fields (spaces around
/// `;` allowed), `id` required; unknown fields are ignored, the first `id`
/// counts.
pub fn parse_txt(record: &str) -> Result<String, TxtError> {
    let mut fields = record.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next() != Some("v=STSv1") {
        return Err(TxtError::NotStsV1);
    }
    let mut id = None;
    for f in fields {
        if f.is_empty() {
            continue;
        }
        let (name, value) = f
            .split_once('=')
            .ok_or_else(|| TxtError::BadField(f.to_string()))?;
        if name == "id" && id.is_none() {
            if value.is_empty()
                || value.len() > 32
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(TxtError::BadId(value.to_string()));
            }
            id = Some(value.to_string());
        }
    }
    id.ok_or(TxtError::MissingId)
}

/// What the TXT records of `_mta-sts.<domain>` say (§3.1: records not
/// starting with `v=STSv1` are ignored; anything but exactly one valid
/// record means no policy).
pub fn select_txt(records: &[String]) -> Result<String, String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| {
            r.strip_prefix("v=STSv1")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
        })
        .collect();
    match sts.as_slice() {
        [] => {
            let mut found = records.join(" | ");
            if found.len() > 200 {
                let mut cut = 200;
                while !found.is_char_boundary(cut) {
                    cut -= 1;
                }
                found.truncate(cut);
                found.push('…');
            }
            Err(format!("no v=STSv1 record (found: {found})"))
        }
        [one] => parse_txt(one).map_err(|e| format!("invalid record `{one}`: {e}")),
        more => Err(format!(
            "{} v=STSv1 records (there must be one)",
            more.len()
        )),
    }
}

/// A valid policy as cached (memory and the store's `mta_sts_v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    /// The policy.
    pub policy: Policy,
    /// The TXT record's id it was fetched under.
    pub id: String,
    /// When it was fetched (ms since the epoch).
    pub fetched_at: i64,
}

impl Cached {
    /// When it expires (ms).
    pub fn expires_at(&self) -> i64 {
        let age = i64::try_from(self.policy.max_age.min(MAX_AGE_CAP)).unwrap_or(0);
        self.fetched_at.saturating_add(age.saturating_mul(1000))
    }

    /// Whether it still holds at `now` (ms).
    pub fn is_live(&self, now: i64) -> bool {
        now < self.expires_at()
    }

    /// Past half its life: refetched even when the id has not changed
    /// (so that a policy in use does not expire between two fetches).
    fn wants_refresh(&self, now: i64) -> bool {
        now - self.fetched_at > (self.expires_at() - self.fetched_at) / 2
    }
}

/// The policy that holds for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The domain it is the policy of.
    pub domain: String,
    /// The policy (mode enforce or testing).
    pub policy: Policy,
}

impl Applied {
    /// How replies and logs name it: `MTA-STS policy of x.test (enforce)`.
    pub fn describe(&self) -> String {
        format!(
            "MTA-STS policy of {} ({})",
            self.domain,
            self.policy.mode.as_str()
        )
    }
}

/// TLS settings for MTA-STS: all verify against the same roots.
pub struct Connectors {
    /// Policy fetches (`mta-sts.<domain>`).
    pub fetch: TlsConnector,
    /// MX hosts under an `enforce` policy: a certificate that does not
    /// verify fails the handshake (and is counted).
    pub enforce: TlsConnector,
    /// MX hosts under a `testing` policy: a certificate that does not
    /// verify is logged and counted, and the handshake goes on.
    pub testing: TlsConnector,
}

/// One domain's remembered answer.
#[derive(Default)]
struct Entry {
    /// The store was read for this domain.
    loaded: bool,
    /// The last valid policy (possibly expired).
    cached: Option<Cached>,
    /// Until then the answer is reused without asking DNS.
    recheck_at: Option<tokio::time::Instant>,
}

impl Entry {
    fn applies(&self, domain: &str, now: i64) -> Option<Applied> {
        self.cached
            .as_ref()
            .filter(|c| c.is_live(now) && c.policy.mode != Mode::None)
            .map(|c| Applied {
                domain: domain.to_string(),
                policy: c.policy.clone(),
            })
    }
}

/// The MTA-STS service of the delivery engine: policy look-ups and their
/// cache, and the TLS connectors policies need.
pub struct MtaSts {
    mx: Mx,
    store: Store,
    clock: Clock,
    failures: Family<ModeLabels, Counter>,
    domains: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>,
    /// Built for one set of extra CA certificates; rebuilt when a reload
    /// changes `mta_sts_ca_file`.
    tls: Mutex<Option<BuiltFor>>,
}

/// Connectors (or why there are none) and the extra CA certificates they
/// were built with.
type BuiltFor = (Vec<Vec<u8>>, Result<Arc<Connectors>, String>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl MtaSts {
    /// The service; nothing is looked up or loaded until a domain is asked.
    pub fn new(
        mx: Mx,
        store: Store,
        clock: Clock,
        failures: Family<ModeLabels, Counter>,
    ) -> MtaSts {
        MtaSts {
            mx,
            store,
            clock,
            failures,
            domains: Mutex::new(HashMap::new()),
            tls: Mutex::new(None),
        }
    }

    /// Counts a policy failure (`herald_mta_sts_failures_total{mode}`).
    pub fn count_failure(&self, mode: Mode) {
        self.failures
            .get_or_create(&ModeLabels {
                mode: mode.as_str(),
            })
            .inc();
    }

    /// The connectors for the configured extra CAs (built once per set).
    pub fn connectors(&self, ca_certs: &[Vec<u8>]) -> Result<Arc<Connectors>, String> {
        let mut tls = lock(&self.tls);
        if let Some((certs, built)) = tls.as_ref()
            && certs.as_slice() == ca_certs
        {
            return built.clone();
        }
        let built = build_connectors(ca_certs, &self.failures).map(Arc::new);
        if let Err(e) = &built {
            tracing::warn!(error = %e, "MTA-STS: no certificate can be verified");
        }
        *tls = Some((ca_certs.to_vec(), built.clone()));
        built
    }

    /// The policy that holds for `domain` now: `None` when it has none (or
    /// mode `none`, or an expired one, or none could be fetched and none is
    /// cached).
    pub async fn policy(&self, domain: &str, d: &DeliveryConfig) -> Option<Applied> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let cell = {
            let mut domains = lock(&self.domains);
            if domains.len() >= MAX_REMEMBERED && !domains.contains_key(&domain) {
                let now = tokio::time::Instant::now();
                domains.retain(|_, e| {
                    Arc::strong_count(e) > 1
                        || e.try_lock().map_or(true, |g| {
                            g.cached.is_some() || g.recheck_at.is_some_and(|t| t > now)
                        })
                });
            }
            domains.entry(domain.clone()).or_default().clone()
        };
        // One look-up per domain at a time: the others wait and reuse it.
        let mut entry = cell.lock().await;
        if !entry.loaded {
            let key = domain.clone();
            match self.store.read(move |v| v.mta_sts(&key)).await {
                Ok(c) => entry.cached = c,
                Err(e) => {
                    tracing::warn!(domain = %domain, error = %e, "MTA-STS: cannot read the cached policy")
                }
            }
            entry.loaded = true;
        }
        let now_i = tokio::time::Instant::now();
        let now = self.clock.now().timestamp_millis();
        if entry.recheck_at.is_some_and(|t| now_i < t) {
            return entry.applies(&domain, now);
        }
        let (recheck, fresh) = self.check(&domain, d, entry.cached.as_ref(), now).await;
        entry.recheck_at = Some(now_i + recheck);
        match fresh {
            Fresh::New(c) => {
                tracing::info!(domain = %domain, id = %c.id, mode = c.policy.mode.as_str(), max_age = c.policy.max_age, mx = ?c.policy.mx, "MTA-STS policy fetched");
                let (key, stored) = (domain.clone(), c.clone());
                if let Err(e) = self
                    .store
                    .write(move |t| t.put_mta_sts(&key, &stored))
                    .await
                {
                    tracing::warn!(domain = %domain, error = %e, "MTA-STS: cannot store the policy");
                }
                entry.cached = Some(c);
            }
            Fresh::Expired => {
                let key = domain.clone();
                if let Err(e) = self.store.write(move |t| t.delete_mta_sts(&key)).await {
                    tracing::warn!(domain = %domain, error = %e, "MTA-STS: cannot drop the expired policy");
                }
                entry.cached = None;
            }
            Fresh::Same => {}
        }
        entry.applies(&domain, now)
    }

    /// Asks DNS (and HTTPS when the id changed): how long to reuse the
    /// answer, and what changed in the cache.
    async fn check(
        &self,
        domain: &str,
        d: &DeliveryConfig,
        cached: Option<&Cached>,
        now: i64,
    ) -> (Duration, Fresh) {
        let live = cached.filter(|c| c.is_live(now));
        let expired = || {
            if cached.is_some() && live.is_none() {
                Fresh::Expired
            } else {
                Fresh::Same
            }
        };
        let records = match self.mx.txt(&format!("_mta-sts.{domain}")).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(domain, error = %e, "MTA-STS: TXT lookup failed");
                return (FAILED_RECHECK, expired());
            }
        };
        if records.is_empty() {
            // §5.1: a live cached policy holds even when the record is gone.
            return (NO_RECORD_RECHECK, expired());
        }
        let id = match select_txt(&records) {
            Ok(id) => id,
            Err(e) => {
                tracing::info!(domain, error = %e, "MTA-STS: no usable _mta-sts record");
                return (RECHECK, expired());
            }
        };
        if let Some(c) = live
            && c.id == id
            && !c.wants_refresh(now)
        {
            return (RECHECK, Fresh::Same);
        }
        match self.fetch(domain, d).await {
            Ok(policy) => (
                RECHECK,
                Fresh::New(Cached {
                    policy,
                    id,
                    fetched_at: now,
                }),
            ),
            Err(e) => {
                tracing::warn!(domain, error = %e, cached = live.is_some(), "MTA-STS: cannot fetch the policy");
                (FAILED_RECHECK, expired())
            }
        }
    }

    /// Fetches and parses `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
    async fn fetch(&self, domain: &str, d: &DeliveryConfig) -> Result<Policy, String> {
        let host = format!("mta-sts.{domain}");
        let url = format!("https://{host}/.well-known/mta-sts.txt");
        let connectors = self.connectors(&d.mta_sts_ca_certs)?;
        let text = tokio::time::timeout(
            FETCH_TIMEOUT,
            self.get(&host, d.mta_sts_https_port, &connectors.fetch),
        )
        .await
        .map_err(|_| format!("{url}: no answer within {} s", FETCH_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{url}: {e}"))?;
        Policy::parse(&text).map_err(|e| format!("{url} is not a valid policy: {e}"))
    }

    /// One HTTPS GET of the policy file: its text.
    async fn get(&self, host: &str, port: u16, connector: &TlsConnector) -> Result<String, String> {
        let ips: Vec<IpAddr> = self
            .mx
            .ips(host)
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        let mut tcp = None;
        let mut last = format!("{host} has no address");
        for ip in ips {
            match tokio::net::TcpStream::connect((ip, port)).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("cannot connect to {host} ({ip} port {port}): {e}"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host} is not a valid TLS server name"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host} failed: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP with {host} failed: {e}"))?;
        let driver = Aborting(tokio::spawn(conn));
        let req = http::Request::get("/.well-known/mta-sts.txt")
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "herald")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP request failed: {e}"))?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(format!(
                "answered {status}: a redirect, which MTA-STS does not follow"
            ));
        }
        if status != http::StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        let ctype = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media = ctype.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("text/plain") {
            return Err(format!("the content type is `{ctype}`, not text/plain"));
        }
        let body = Limited::new(resp.into_body(), MAX_POLICY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!("the policy is larger than {MAX_POLICY_BYTES} bytes")
                } else {
                    format!("reading the policy failed: {e}")
                }
            })?
            .to_bytes();
        drop(driver);
        String::from_utf8(body.to_vec()).map_err(|_| "the policy is not UTF-8".to_string())
    }
}

/// What a check changed in a domain's cached policy.
enum Fresh {
    /// Nothing.
    Same,
    /// A new policy was fetched.
    New(Cached),
    /// The cached policy expired and nothing replaced it.
    Expired,
}

/// Aborts the HTTP connection task when dropped.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Builds the three connectors over the system's roots and `extra`.
fn build_connectors(
    extra: &[Vec<u8>],
    failures: &Family<ModeLabels, Counter>,
) -> Result<Connectors, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = extra.iter().map(|c| CertificateDer::from(c.clone()));
    let base: Arc<dyn ServerCertVerifier> = Arc::new(
        rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider.clone())
            .map_err(|e| format!("cannot load CA certificates: {e}"))?,
    );
    let make = |verifier: Arc<dyn ServerCertVerifier>| -> Result<TlsConnector, String> {
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    };
    let reported = |mode: Mode| -> Arc<dyn ServerCertVerifier> {
        Arc::new(Reported {
            inner: base.clone(),
            mode,
            failures: failures
                .get_or_create(&ModeLabels {
                    mode: mode.as_str(),
                })
                .clone(),
        })
    };
    Ok(Connectors {
        fetch: make(base.clone())?,
        enforce: make(reported(Mode::Enforce))?,
        testing: make(reported(Mode::Testing))?,
    })
}

/// A verifier that logs and counts certificates that do not verify for an
/// MX host under a policy; in `testing` mode it then accepts them.
#[derive(Debug)]
struct Reported {
    inner: Arc<dyn ServerCertVerifier>,
    mode: Mode,
    failures: Counter,
}

impl ServerCertVerifier for Reported {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.failures.inc();
                let host = server_name.to_str();
                if self.mode == Mode::Testing {
                    tracing::warn!(host = %host, error = %e, "MTA-STS (testing): the MX certificate does not verify; delivering anyway");
                    Ok(ServerCertVerified::assertion())
                } else {
                    tracing::warn!(host = %host, error = %e, "MTA-STS (enforce): the MX certificate does not verify");
                    Err(e)
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_parses_with_crlf_or_lf() {
        let want = Policy {
            mode: Mode::Enforce,
            mx: vec!["mail.example.com".into(), "*.example.net".into()],
            max_age: 86400,
        };
        let lf = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 86400\n";
        assert_eq!(Policy::parse(lf), Ok(want.clone()));
        assert_eq!(Policy::parse(&lf.replace('\n', "\r\n")), Ok(want.clone()));
        // No final line end, extra spaces after the colon, an unknown key,
        // upper-case host names.
        let loose = "version:STSv1\r\nmode:   enforce\r\nmx: MAIL.example.com.\r\nfoo_bar: whatever it is\r\nmx: *.example.net\r\nmax_age: 86400";
        assert_eq!(Policy::parse(loose), Ok(want));
    }

    #[test]
    fn the_first_of_a_repeated_key_counts_and_none_needs_no_mx() -> Result<(), PolicyError> {
        let p = Policy::parse(
            "version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmax_age: 5\nmax_age: 9\n",
        )?;
        assert_eq!((p.mode, p.max_age), (Mode::Testing, 5));
        let none = Policy::parse("version: STSv1\nmode: none\nmax_age: 60\n")?;
        assert_eq!(none.mode, Mode::None);
        assert!(none.mx.is_empty());
        Ok(())
    }

    #[test]
    fn max_age_is_capped_at_a_year() -> Result<(), PolicyError> {
        let p =
            Policy::parse("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 9999999999\n")?;
        assert_eq!(p.max_age, MAX_AGE_CAP);
        Ok(())
    }

    #[test]
    fn bad_policies_name_what_is_wrong() {
        let cases: &[(&str, PolicyError)] = &[
            (
                "mode: enforce\nmx: a.example\nmax_age: 1\n",
                PolicyError::MissingVersion,
            ),
            (
                "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
                PolicyError::BadVersion("STSv2".into()),
            ),
            (
                "version: STSv1\nmx: a.example\nmax_age: 1\n",
                PolicyError::MissingMode,
            ),
            (
                "version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n",
                PolicyError::BadMode("Enforce".into()),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\n",
                PolicyError::MissingMaxAge,
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1d\n",
                PolicyError::BadMaxAge("1d".into()),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n",
                PolicyError::BadMaxAge("12345678901".into()),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: mail example\nmax_age: 1\n",
                PolicyError::BadMx("mail example".into(), 3),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n",
                PolicyError::BadMx("*.*.example".into(), 3),
            ),
            (
                "version: STSv1\nmode: testing\nmax_age: 1\n",
                PolicyError::NoMx("testing"),
            ),
            (
                "version: STSv1\nmode enforce\nmx: a.example\nmax_age: 1\n",
                PolicyError::NotKeyValue(2),
            ),
            ("<html>Moved</html>\n", PolicyError::NotKeyValue(1)),
        ];
        for (text, err) in cases {
            assert_eq!(Policy::parse(text).as_ref(), Err(err), "{text:?}");
        }
        assert_eq!(
            PolicyError::BadMx("x y".into(), 3).to_string(),
            "mx `x y` on line 3 is not a host name or a `*.` wildcard"
        );
    }

    #[test]
    fn mx_patterns_match_names_and_one_wildcard_label() -> Result<(), PolicyError> {
        assert!(mx_matches("mail.example.com", "mail.example.com"));
        assert!(mx_matches("mail.example.com", "MAIL.Example.com."));
        assert!(!mx_matches("mail.example.com", "mail2.example.com"));
        assert!(mx_matches("*.example.net", "mx1.example.net"));
        assert!(!mx_matches("*.example.net", "example.net"));
        assert!(!mx_matches("*.example.net", "a.b.example.net"));
        assert!(!mx_matches("*.example.net", "mx1.example.net.evil"));
        assert!(!mx_matches("*.example.net", ".example.net"));
        let p = Policy::parse(
            "version: STSv1\nmode: enforce\nmx: mx.x.test\nmx: *.backup.test\nmax_age: 60\n",
        )?;
        assert!(p.allows("mx.x.test"));
        assert!(p.allows("b1.backup.test"));
        assert!(!p.allows("other.x.test"));
        Ok(())
    }

    #[test]
    fn txt_records_give_the_id() {
        assert_eq!(
            parse_txt("v=STSv1; id=20160831085700Z;"),
            Ok("20160831085700Z".into())
        );
        assert_eq!(parse_txt("v=STSv1;id=1"), Ok("1".into()));
        assert_eq!(
            parse_txt("v=STSv1 ; ext=x ; id=abc ; id=def"),
            Ok("abc".into())
        );
        assert_eq!(parse_txt("v=STSv1;"), Err(TxtError::MissingId));
        assert_eq!(parse_txt("v=STSv2; id=1"), Err(TxtError::NotStsV1));
        assert_eq!(
            parse_txt("v=STSv1; id=a-b"),
            Err(TxtError::BadId("a-b".into()))
        );
        assert_eq!(
            parse_txt(&format!("v=STSv1; id={}", "a".repeat(33))),
            Err(TxtError::BadId("a".repeat(33)))
        );
        assert_eq!(
            parse_txt("v=STSv1; junk"),
            Err(TxtError::BadField("junk".into()))
        );
    }

    #[test]
    fn exactly_one_sts_record_is_needed() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            select_txt(&r(&["some other text", "v=STSv1; id=7"])),
            Ok("7".into())
        );
        assert!(select_txt(&r(&["v=STSv1; id=7", "v=STSv1; id=8"])).is_err());
        assert!(select_txt(&r(&["v=spf1 -all"])).is_err());
        assert!(select_txt(&r(&["v=STSv10; id=1"])).is_err());
        assert!(select_txt(&r(&["v=STSv1; id=!"])).is_err());
    }

    #[test]
    fn a_cached_policy_lives_max_age_and_is_refreshed_past_half() -> Result<(), serde_json::Error> {
        let c = Cached {
            policy: Policy {
                mode: Mode::Enforce,
                mx: vec!["a.example".into()],
                max_age: 100,
            },
            id: "1".into(),
            fetched_at: 1_000_000,
        };
        assert_eq!(c.expires_at(), 1_100_000);
        assert!(c.is_live(1_099_999));
        assert!(!c.is_live(1_100_000));
        assert!(!c.wants_refresh(1_040_000));
        assert!(c.wants_refresh(1_060_000));
        let json = serde_json::to_string(&c)?;
        assert_eq!(serde_json::from_str::<Cached>(&json)?, c);
        assert!(json.contains("\"mode\":\"enforce\""), "{json}");
        Ok(())
    }
}
