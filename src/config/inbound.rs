//! `[inbound]`: the SMTP listener that takes bounces (DSNs) for the senders'
//! `bounce_domain`s and feedback-loop reports for `fbl_addresses`, its
//! limits, and what bounces do to a contact (the soft-bounce limit).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::values::{count, duration};
use super::{Checker, resolve};

/// `[inbound]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInbound {
    /// Where the listener listens, e.g. `"0.0.0.0:25"`. Off when absent.
    pub listen: Option<Spanned<String>>,
    /// The name in the banner and the EHLO reply (default: the first
    /// sender's `bounce_domain`, else `localhost`).
    pub hostname: Option<Spanned<String>>,
    /// PEM certificate chain for STARTTLS (with `tls_key`).
    pub tls_cert: Option<Spanned<String>>,
    /// PEM private key for STARTTLS.
    pub tls_key: Option<Spanned<String>>,
    /// The addresses registered with feedback loops; ARF reports sent to
    /// them are taken.
    #[serde(default)]
    pub fbl_addresses: Vec<Spanned<String>>,
    /// The largest message taken (default "10 MiB" as bytes: 10485760).
    pub max_message_bytes: Option<Spanned<i64>>,
    /// Open connections in all (default 200).
    pub max_connections: Option<Spanned<i64>>,
    /// Open connections from one client address or IPv6 /64 (default 20).
    pub max_connections_per_ip: Option<Spanned<i64>>,
    /// Messages per minute from one client (default 600).
    pub rate_per_ip_per_minute: Option<Spanned<i64>>,
    /// How long the listener waits for a command (default "5m").
    pub command_timeout: Option<Spanned<String>>,
    /// How long a message's data may take (default "10m").
    pub data_timeout: Option<Spanned<String>>,
    /// How long a VERP return path stays valid after its message was queued
    /// (default "30d"): a bounce to an older one is refused at RCPT.
    pub verp_max_age: Option<Spanned<String>>,
    /// How long reports are kept (default "90d", the longest).
    pub keep_reports: Option<Spanned<String>>,
    /// Soft bounces that make a contact `invalid` (default 5)…
    pub soft_bounce_limit: Option<Spanned<i64>>,
    /// …within this window, with no sign of a delivery in between (default
    /// "30d").
    pub soft_bounce_window: Option<Spanned<String>>,
}

/// The largest message the listener takes unless configured.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 10 << 20;

/// Validated `[inbound]` (defaults when the section is absent; `listen`
/// `None` then).
#[derive(Debug, Clone, PartialEq)]
pub struct InboundConfig {
    /// Listener address; `None`: no listener.
    pub listen: Option<SocketAddr>,
    /// Banner and EHLO name.
    pub hostname: Option<String>,
    /// STARTTLS certificate and key files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Feedback-loop addresses, lower case.
    pub fbl_addresses: Vec<String>,
    /// The largest message taken, in bytes.
    pub max_message_bytes: usize,
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections per client.
    pub max_connections_per_ip: usize,
    /// Messages per minute per client.
    pub rate_per_ip_per_minute: u32,
    /// Waiting for a command.
    pub command_timeout: Duration,
    /// The whole data phase.
    pub data_timeout: Duration,
    /// How long a VERP return path is honoured, in milliseconds.
    pub verp_max_age_ms: i64,
    /// How long reports are kept, in milliseconds.
    pub keep_reports_ms: i64,
    /// Soft bounces within the window that make a contact `invalid`.
    pub soft_bounce_limit: u32,
    /// The soft-bounce window, in milliseconds.
    pub soft_bounce_window_ms: i64,
}

const DAY_MS: i64 = 86_400_000;

impl Default for InboundConfig {
    fn default() -> InboundConfig {
        InboundConfig {
            listen: None,
            hostname: None,
            tls: None,
            fbl_addresses: Vec::new(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_connections: 200,
            max_connections_per_ip: 20,
            rate_per_ip_per_minute: 600,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            verp_max_age_ms: 30 * DAY_MS,
            keep_reports_ms: 90 * DAY_MS,
            soft_bounce_limit: 5,
            soft_bounce_window_ms: 30 * DAY_MS,
        }
    }
}

/// Validates `[inbound]`.
pub(super) fn validate(c: &mut Checker<'_>, base: &Path, raw: &RawInbound) -> InboundConfig {
    let d = InboundConfig::default();
    let listen = raw
        .listen
        .as_ref()
        .and_then(|v| match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.at(
                    "inbound.listen",
                    v,
                    format!(
                        "`{}` is not an address:port such as \"0.0.0.0:25\"",
                        v.get_ref()
                    ),
                );
                None
            }
        });
    let hostname = raw.hostname.as_ref().and_then(|v| {
        let h = v.get_ref().trim().to_ascii_lowercase();
        if super::senders::is_host_name(&h) {
            Some(h)
        } else {
            c.at(
                "inbound.hostname",
                v,
                "must be a host name such as mx.shop.example",
            );
            None
        }
    });
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            // Readable now, so `check-config` says so; `serve` parses them.
            let mut ok = true;
            for (k, v) in [("inbound.tls_cert", cert), ("inbound.tls_key", key)] {
                let path = resolve(base, v.get_ref());
                if let Err(e) = std::fs::File::open(&path) {
                    c.at(k, v, format!("cannot read {}: {e}", path.display()));
                    ok = false;
                }
            }
            ok.then(|| (resolve(base, cert.get_ref()), resolve(base, key.get_ref())))
        }
        (Some(v), None) => {
            c.at("inbound.tls_cert", v, "needs `tls_key` too");
            None
        }
        (None, Some(v)) => {
            c.at("inbound.tls_key", v, "needs `tls_cert` too");
            None
        }
    };
    let mut fbl_addresses = Vec::new();
    for (i, v) in raw.fbl_addresses.iter().enumerate() {
        match crate::names::normalize_email(v.get_ref()) {
            Ok(e) => fbl_addresses.push(e.key),
            Err(e) => c.at(&format!("inbound.fbl_addresses[{i}]"), v, e.to_string()),
        }
    }
    let window = |c: &mut Checker<'_>, key: &str, v: &Option<Spanned<String>>, default: i64| {
        v.as_ref()
            .and_then(|v| duration(c, key, v))
            .map_or(default, |d| d.as_millis() as i64)
    };
    let max_message_bytes = count(
        c,
        "inbound.max_message_bytes",
        &raw.max_message_bytes,
        1 << 30,
        d.max_message_bytes,
    );
    InboundConfig {
        listen,
        hostname,
        tls,
        fbl_addresses,
        max_message_bytes: max_message_bytes.max(1024),
        max_connections: count(
            c,
            "inbound.max_connections",
            &raw.max_connections,
            100_000,
            d.max_connections,
        ),
        max_connections_per_ip: count(
            c,
            "inbound.max_connections_per_ip",
            &raw.max_connections_per_ip,
            100_000,
            d.max_connections_per_ip,
        ),
        rate_per_ip_per_minute: count(
            c,
            "inbound.rate_per_ip_per_minute",
            &raw.rate_per_ip_per_minute,
            10_000_000,
            d.rate_per_ip_per_minute as usize,
        ) as u32,
        command_timeout: raw
            .command_timeout
            .as_ref()
            .and_then(|v| duration(c, "inbound.command_timeout", v))
            .unwrap_or(d.command_timeout),
        data_timeout: raw
            .data_timeout
            .as_ref()
            .and_then(|v| duration(c, "inbound.data_timeout", v))
            .unwrap_or(d.data_timeout),
        verp_max_age_ms: window(
            c,
            "inbound.verp_max_age",
            &raw.verp_max_age,
            d.verp_max_age_ms,
        ),
        keep_reports_ms: window(
            c,
            "inbound.keep_reports",
            &raw.keep_reports,
            d.keep_reports_ms,
        ),
        soft_bounce_limit: count(
            c,
            "inbound.soft_bounce_limit",
            &raw.soft_bounce_limit,
            1000,
            d.soft_bounce_limit as usize,
        ) as u32,
        soft_bounce_window_ms: window(
            c,
            "inbound.soft_bounce_window",
            &raw.soft_bounce_window,
            d.soft_bounce_window_ms,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_the_listener_off() {
        let d = InboundConfig::default();
        assert_eq!(d.listen, None);
        assert_eq!(d.soft_bounce_limit, 5);
        assert_eq!(d.soft_bounce_window_ms, 30 * DAY_MS);
    }
}
