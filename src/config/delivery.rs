//! `[delivery]`: how Herald delivers mail (DNS, connection limits,
//! timeouts, retries, domains that require TLS, MTA-STS).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::shaping::Shaping;
use super::values::{count, duration};
use super::{Checker, resolve};

/// `[delivery]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// DNS server for MX lookups, `ip:port` (default: the system resolver).
    pub nameserver: Option<Spanned<String>>,
    /// Port of remote SMTP servers (default 25).
    pub smtp_port: Option<Spanned<i64>>,
    /// Connections open at once, in total (default 100).
    pub max_connections: Option<Spanned<i64>>,
    /// Connections open at once to one destination domain (default 10).
    pub max_connections_per_domain: Option<Spanned<i64>>,
    /// Messages sent over one connection before it is closed (default 1000).
    pub messages_per_connection: Option<Spanned<i64>>,
    /// Timeout for connecting and the greeting (default "30s").
    pub connect_timeout: Option<Spanned<String>>,
    /// Timeout for each SMTP command and the data transfer (default "5m").
    pub command_timeout: Option<Spanned<String>>,
    /// Waits between attempts after a temporary failure; the last repeats.
    pub retry_schedule: Option<Spanned<Vec<Spanned<String>>>>,
    /// Give up on a message this long after it was queued (default "5d").
    pub max_age: Option<Spanned<String>>,
    /// Destination domains that must be reached over TLS.
    pub require_tls_domains: Option<Vec<Spanned<String>>>,
    /// The traffic-shaping file (default: `shaping.toml` beside the config
    /// when it exists, else the built-in copy of the shipped one).
    pub shaping: Option<Spanned<String>>,
    /// MTA-STS (RFC 8461): `"enforce-policies"` (default) or `"off"`.
    pub mta_sts: Option<Spanned<String>>,
    /// HTTPS port policies are fetched from (default 443; tests change it).
    pub mta_sts_https_port: Option<Spanned<i64>>,
    /// PEM file of extra CA certificates trusted for policy fetches and for
    /// MX certificates under a policy (a private CA, tests).
    pub mta_sts_ca_file: Option<Spanned<String>>,
    /// Capture outbox: a folder every finished message is written to
    /// instead of being delivered (nothing leaves the machine).
    pub capture: Option<Spanned<String>>,
}

/// Validated `[delivery]`.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Nameserver for MX lookups; `None` is the system resolver.
    pub nameserver: Option<SocketAddr>,
    /// Port of remote SMTP servers.
    pub smtp_port: u16,
    /// Total connection limit.
    pub max_connections: usize,
    /// Per-destination-domain connection limit.
    pub max_connections_per_domain: usize,
    /// Messages per connection.
    pub messages_per_connection: usize,
    /// Connect + greeting timeout.
    pub connect_timeout: Duration,
    /// Per-command timeout.
    pub command_timeout: Duration,
    /// Retry waits; the last one repeats.
    pub retry_schedule: Vec<Duration>,
    /// Give up after this long.
    pub max_age: Duration,
    /// Domains (lower case) that require TLS.
    pub require_tls_domains: BTreeSet<String>,
    /// Provider groups and back-off rules.
    pub shaping: Arc<Shaping>,
    /// Whether MTA-STS policies are looked up and applied (`"off"`: not).
    pub mta_sts: bool,
    /// HTTPS port of `mta-sts.<domain>`.
    pub mta_sts_https_port: u16,
    /// Extra trust anchors (DER certificates) from `mta_sts_ca_file`, added
    /// to the system's for policy fetches and MX certificates under a policy.
    pub mta_sts_ca_certs: Vec<Vec<u8>>,
    /// The capture outbox ([`crate::delivery::capture`]): when set, no
    /// message is delivered; each is written here instead.
    pub capture: Option<std::path::PathBuf>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            nameserver: None,
            smtp_port: 25,
            max_connections: 100,
            max_connections_per_domain: 10,
            messages_per_connection: 1000,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            retry_schedule: default_schedule(),
            max_age: Duration::from_secs(5 * 86400),
            require_tls_domains: BTreeSet::new(),
            shaping: Arc::new(Shaping::built_in(10, 1000)),
            mta_sts: true,
            mta_sts_https_port: 443,
            mta_sts_ca_certs: Vec::new(),
            capture: None,
        }
    }
}

/// Minutes, then hours: 5m, 10m, 20m, 40m, 1h20m, 2h40m, then every 4h
/// (Postfix starts at 5 minutes and doubles up to 4000 s; RFC 5321 §4.5.4.1
/// asks for at least 30 minutes between later attempts and 4-5 days in total).
pub fn default_schedule() -> Vec<Duration> {
    [5, 10, 20, 40, 80, 160, 240]
        .iter()
        .map(|m| Duration::from_secs(m * 60))
        .collect()
}

/// Validates `[delivery]`. Problems are recorded in `c`; the returned value
/// then carries defaults for the bad keys (the caller discards it).
pub(super) fn validate(c: &mut Checker<'_>, base: &Path, raw: &RawDelivery) -> DeliveryConfig {
    let mut d = DeliveryConfig::default();
    if let Some(ns) = &raw.nameserver {
        match ns.get_ref().parse::<SocketAddr>() {
            Ok(a) => d.nameserver = Some(a),
            Err(_) => match ns.get_ref().parse::<std::net::IpAddr>() {
                Ok(ip) => d.nameserver = Some(SocketAddr::new(ip, 53)),
                Err(_) => c.at(
                    "delivery.nameserver",
                    ns,
                    format!("`{}` is not an IP address or ip:port", ns.get_ref()),
                ),
            },
        }
    }
    d.smtp_port = count(c, "delivery.smtp_port", &raw.smtp_port, 65535, 25) as u16;
    d.max_connections = count(
        c,
        "delivery.max_connections",
        &raw.max_connections,
        10_000,
        100,
    );
    d.max_connections_per_domain = count(
        c,
        "delivery.max_connections_per_domain",
        &raw.max_connections_per_domain,
        1000,
        10,
    );
    d.messages_per_connection = count(
        c,
        "delivery.messages_per_connection",
        &raw.messages_per_connection,
        1_000_000,
        1000,
    );
    if let Some(v) = &raw.connect_timeout {
        d.connect_timeout = duration(c, "delivery.connect_timeout", v).unwrap_or(d.connect_timeout);
    }
    if let Some(v) = &raw.command_timeout {
        d.command_timeout = duration(c, "delivery.command_timeout", v).unwrap_or(d.command_timeout);
    }
    if let Some(v) = &raw.max_age {
        d.max_age = duration(c, "delivery.max_age", v).unwrap_or(d.max_age);
    }
    if let Some(list) = &raw.retry_schedule {
        if list.get_ref().is_empty() {
            c.at(
                "delivery.retry_schedule",
                list,
                "must name at least one wait",
            );
        }
        let mut waits = Vec::new();
        for (i, v) in list.get_ref().iter().enumerate() {
            if let Some(w) = duration(c, &format!("delivery.retry_schedule[{i}]"), v) {
                waits.push(w);
            }
        }
        if !waits.is_empty() {
            d.retry_schedule = waits;
        }
    }
    for v in raw.require_tls_domains.iter().flatten() {
        let dom = v
            .get_ref()
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if dom.is_empty() || dom.contains(char::is_whitespace) || dom.contains('@') {
            c.at("delivery.require_tls_domains", v, "not a domain name");
        } else {
            d.require_tls_domains.insert(dom);
        }
    }
    d.shaping = Arc::new(shaping(c, base, raw, &d));
    if let Some(v) = &raw.mta_sts {
        match v.get_ref().as_str() {
            "enforce-policies" => d.mta_sts = true,
            "off" => d.mta_sts = false,
            other => c.at(
                "delivery.mta_sts",
                v,
                format!("`{other}` is neither \"enforce-policies\" nor \"off\""),
            ),
        }
    }
    d.mta_sts_https_port = count(
        c,
        "delivery.mta_sts_https_port",
        &raw.mta_sts_https_port,
        65535,
        443,
    ) as u16;
    if let Some(f) = &raw.mta_sts_ca_file {
        match super::senders::load_certs(&resolve(base, f.get_ref())) {
            Ok(certs) => d.mta_sts_ca_certs = certs,
            Err(e) => c.at("delivery.mta_sts_ca_file", f, e),
        }
    }
    if let Some(p) = &raw.capture {
        if p.get_ref().trim().is_empty() {
            c.at(
                "delivery.capture",
                p,
                "an empty path; leave the key out for real delivery",
            );
        } else {
            d.capture = Some(resolve(base, p.get_ref()));
        }
    }
    d
}

/// Reads the shaping file: the one `[delivery] shaping` names (it must
/// exist), else `shaping.toml` beside the config, else the built-in copy.
fn shaping(c: &mut Checker<'_>, base: &Path, raw: &RawDelivery, d: &DeliveryConfig) -> Shaping {
    let (conns, per_conn) = (d.max_connections_per_domain, d.messages_per_connection);
    let path = match &raw.shaping {
        Some(p) => resolve(base, p.get_ref()),
        None => {
            let beside = base.join("shaping.toml");
            if !beside.exists() {
                return Shaping::built_in(conns, per_conn);
            }
            beside
        }
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => super::shaping::parse(&path, &text, conns, per_conn, c.errors)
            .unwrap_or_else(|| Shaping::built_in(conns, per_conn)),
        Err(e) => {
            match &raw.shaping {
                Some(p) => c.at(
                    "delivery.shaping",
                    p,
                    format!("cannot read {}: {e}", path.display()),
                ),
                None => c.errors.push(super::ConfigError {
                    file: path.clone(),
                    position: None,
                    key: String::new(),
                    message: format!("cannot read the shaping file: {e}"),
                }),
            }
            Shaping::built_in(conns, per_conn)
        }
    }
}
