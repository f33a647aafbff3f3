//! `[http]`: the listeners (public and admin), the public URL, body size,
//! trusted proxies, connection and request-body limits, the metrics token.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use super::values::{duration, networks};

/// `[http]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address and port to bind, e.g. `127.0.0.1:8025`; port 0 picks a free one.
    pub listen: Option<Spanned<String>>,
    /// The public base URL recipients reach Herald at (used in links in mail).
    pub public_url: Option<Spanned<String>>,
    /// Largest JSON request body accepted, in bytes (CSV imports stream and are
    /// not limited by this).
    pub max_body_bytes: Option<Spanned<i64>>,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// A second address serving the admin API and `/metrics` alone; when
    /// set, the `listen` address answers 404 to them.
    pub admin_listen: Option<Spanned<String>>,
    /// Connections open at once on `listen` (kept below the file-descriptor
    /// limit).
    pub max_connections: Option<Spanned<i64>>,
    /// Connections open at once from one client address (an IPv6 /64);
    /// `trusted_proxies` are exempt.
    pub max_connections_per_ip: Option<Spanned<i64>>,
    /// Connections open at once on `admin_listen`.
    pub admin_max_connections: Option<Spanned<i64>>,
    /// How long a client may take to send a request's headers, and how long
    /// an idle keep-alive connection stays open.
    pub idle_timeout: Option<Spanned<String>>,
    /// Time a request body may take to arrive (its first 64 KiB).
    pub body_timeout: Option<Spanned<String>>,
    /// Bytes per second past the first 64 KiB that earn a body more time.
    pub body_min_rate: Option<Spanned<i64>>,
    /// A bearer token that opens `/metrics` (besides the admin token).
    pub metrics_token: Option<Spanned<String>>,
}

/// Validated `[http]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Public base URL, without a trailing slash.
    pub public_url: url::Url,
    /// Largest JSON body accepted.
    pub max_body_bytes: usize,
    /// Reverse proxies trusted to name the client in `X-Forwarded-For`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The admin listener (admin API and `/metrics` only there), if any.
    pub admin_listen: Option<SocketAddr>,
    /// Connection and request-body limits.
    pub limits: HttpLimits,
    /// The token that opens `/metrics`, if it is restricted.
    pub metrics_token: Option<MetricsToken>,
}

impl HttpConfig {
    /// The public URL without a trailing slash: links in mail and pages
    /// are this plus a path.
    pub fn public_base(&self) -> String {
        self.public_url.as_str().trim_end_matches('/').to_string()
    }
}

/// Connection and request-body limits of `[http]`: what a slow or greedy
/// client can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once on `listen` (the daemon lowers it to what
    /// its file-descriptor limit allows).
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 /64);
    /// peers in `trusted_proxies` are exempt.
    pub max_connections_per_ip: usize,
    /// Connections open at once on `admin_listen`.
    pub admin_max_connections: usize,
    /// Time to send a request's headers; also how long an idle keep-alive
    /// connection is kept.
    pub idle_timeout: Duration,
    /// Time a request body's first 64 KiB may take to arrive.
    pub body_timeout: Duration,
    /// Bytes per second: each of this many bytes past the first 64 KiB
    /// earns the body one more second.
    pub body_min_rate: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 4096,
            max_connections_per_ip: 128,
            admin_max_connections: 64,
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(20),
            body_min_rate: 4096,
        }
    }
}

/// The bearer token of `/metrics`; never printed (see the `Debug` impl).
#[derive(Clone, PartialEq, Eq)]
pub struct MetricsToken(pub String);

impl fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetricsToken(<redacted>)")
    }
}

/// The validated `admin_listen`, limits and `metrics_token`.
struct HttpGuards {
    admin_listen: Option<SocketAddr>,
    limits: HttpLimits,
    metrics_token: Option<MetricsToken>,
}

/// The shortest metrics token accepted.
const MIN_METRICS_TOKEN_LEN: usize = 16;

fn bounded(
    c: &mut Checker<'_>,
    key: &str,
    v: &Option<Spanned<i64>>,
    max: i64,
) -> Option<Option<usize>> {
    match v {
        None => Some(None),
        Some(n) if (1..=max).contains(n.get_ref()) => Some(Some(*n.get_ref() as usize)),
        Some(n) => {
            c.at(key, n, format!("must be between 1 and {max}"));
            None
        }
    }
}

fn seconds(
    c: &mut Checker<'_>,
    key: &str,
    v: &Option<Spanned<String>>,
) -> Option<Option<Duration>> {
    match v {
        None => Some(None),
        Some(v) => match duration(c, key, v) {
            Some(d) if d < Duration::from_secs(1) || d > Duration::from_secs(3600) => {
                c.at(key, v, "must be between 1s and 1h");
                None
            }
            d => d.map(Some),
        },
    }
}

/// Validates `admin_listen`, the connection and body limits and
/// `metrics_token` of `[http]`; `listen` is the validated `http.listen`.
fn validate_guards(
    c: &mut Checker<'_>,
    raw: &RawHttp,
    listen: Option<SocketAddr>,
) -> Option<HttpGuards> {
    let d = HttpLimits::default();
    let admin_listen = match &raw.admin_listen {
        None => Some(None),
        Some(v) => match v.get_ref().parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 && Some(a) == listen => {
                c.at(
                    "http.admin_listen",
                    v,
                    "must differ from http.listen: the admin API would be public",
                );
                None
            }
            Ok(a) => Some(Some(a)),
            Err(_) => {
                c.at(
                    "http.admin_listen",
                    v,
                    format!(
                        "`{}` is not an address:port such as 127.0.0.1:8026",
                        v.get_ref()
                    ),
                );
                None
            }
        },
    };
    let max = bounded(c, "http.max_connections", &raw.max_connections, 1_000_000);
    let per_ip = bounded(
        c,
        "http.max_connections_per_ip",
        &raw.max_connections_per_ip,
        1_000_000,
    );
    let admin_max = bounded(
        c,
        "http.admin_max_connections",
        &raw.admin_max_connections,
        100_000,
    );
    let idle = seconds(c, "http.idle_timeout", &raw.idle_timeout);
    let body = seconds(c, "http.body_timeout", &raw.body_timeout);
    let rate = bounded(c, "http.body_min_rate", &raw.body_min_rate, 1 << 30);
    let metrics_token = match &raw.metrics_token {
        None => Some(None),
        Some(v) => {
            let t = v.get_ref();
            if t.chars().count() < MIN_METRICS_TOKEN_LEN {
                c.at(
                    "http.metrics_token",
                    v,
                    format!("must be at least {MIN_METRICS_TOKEN_LEN} characters long"),
                );
                None
            } else if t.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                c.at(
                    "http.metrics_token",
                    v,
                    "must not contain spaces or control characters",
                );
                None
            } else {
                Some(Some(MetricsToken(t.clone())))
            }
        }
    };
    let limits = HttpLimits {
        max_connections: max?.unwrap_or(d.max_connections),
        max_connections_per_ip: per_ip?.unwrap_or(d.max_connections_per_ip),
        admin_max_connections: admin_max?.unwrap_or(d.admin_max_connections),
        idle_timeout: idle?.unwrap_or(d.idle_timeout),
        body_timeout: body?.unwrap_or(d.body_timeout),
        body_min_rate: rate?.map_or(d.body_min_rate, |r| r as u64),
    };
    Some(HttpGuards {
        admin_listen: admin_listen?,
        limits,
        metrics_token: metrics_token?,
    })
}

/// `listen`, `public_url` and `max_body_bytes` as validated; checked before
/// every other section, so their problems are reported first.
pub(super) struct Addresses {
    listen: Option<SocketAddr>,
    public_url: Option<url::Url>,
    max_body_bytes: Option<usize>,
}

/// Validates `listen`, `public_url` and `max_body_bytes`.
pub(super) fn validate_addresses(c: &mut Checker<'_>, raw: &RawHttp) -> Addresses {
    let listen = c
        .required(
            "http.listen",
            &raw.listen,
            "e.g. listen = \"127.0.0.1:8025\"",
        )
        .and_then(|v| match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.at(
                    "http.listen",
                    v,
                    format!(
                        "`{}` is not an address:port such as 127.0.0.1:8025",
                        v.get_ref()
                    ),
                );
                None
            }
        });
    let public_url = c
        .required(
            "http.public_url",
            &raw.public_url,
            "e.g. public_url = \"https://mail.example.com\"",
        )
        .and_then(|v| match url::Url::parse(v.get_ref()) {
            Ok(u)
                if (u.scheme() == "http" || u.scheme() == "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none() =>
            {
                Some(u)
            }
            Ok(_) => {
                c.at(
                    "http.public_url",
                    v,
                    "must be an http:// or https:// URL with a host and no query or fragment",
                );
                None
            }
            Err(e) => {
                c.at(
                    "http.public_url",
                    v,
                    format!("`{}` is not a URL: {e}", v.get_ref()),
                );
                None
            }
        });
    let max_body_bytes = match &raw.max_body_bytes {
        None => Some(1 << 20),
        Some(v) if (1024..=1 << 30).contains(v.get_ref()) => Some(*v.get_ref() as usize),
        Some(v) => {
            c.at(
                "http.max_body_bytes",
                v,
                "must be between 1024 and 1073741824 bytes",
            );
            None
        }
    };

    Addresses {
        listen,
        public_url,
        max_body_bytes,
    }
}

/// Validates `trusted_proxies`.
pub(super) fn trusted_proxies(c: &mut Checker<'_>, raw: &RawHttp) -> Option<Vec<IpNet>> {
    networks(c, "http.trusted_proxies", &raw.trusted_proxies)
}

/// Validates the rest of `[http]` and puts it together with what
/// [`validate_addresses`] and [`trusted_proxies`] found.
pub(super) fn validate(
    c: &mut Checker<'_>,
    raw: &RawHttp,
    addresses: Addresses,
    trusted_proxies: Option<Vec<IpNet>>,
) -> Option<HttpConfig> {
    let guards = validate_guards(c, raw, addresses.listen);
    Some(HttpConfig {
        listen: addresses.listen?,
        public_url: addresses.public_url?,
        max_body_bytes: addresses.max_body_bytes?,
        trusted_proxies: trusted_proxies?,
        admin_listen: guards.as_ref()?.admin_listen,
        limits: guards.as_ref()?.limits,
        metrics_token: guards?.metrics_token,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn load(http: &str) -> Result<Config, String> {
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:8025\"\npublic_url = \"http://localhost\"\n{http}\n[storage]\npath = \"data\"\n[admin]\ntoken = \"{TOKEN}\"\n[tracking]\nsecret = \"{TOKEN}\"\n"
        );
        Config::from_str(Path::new("/nonexistent-herald-test/herald.toml"), &text).map_err(|e| {
            e.0.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn limits_default_and_parse() -> Result<(), String> {
        let c = load("")?;
        assert_eq!(c.http.limits, HttpLimits::default());
        assert_eq!(c.http.admin_listen, None);
        assert!(c.http.metrics_token.is_none());
        let c = load(
            "admin_listen = \"127.0.0.1:8026\"\nmax_connections = 500\nmax_connections_per_ip = 20\nadmin_max_connections = 8\nidle_timeout = \"10s\"\nbody_timeout = \"15s\"\nbody_min_rate = 2048\nmetrics_token = \"metrics-0123456789abcdef\"",
        )?;
        assert_eq!(
            c.http.admin_listen,
            Some(
                "127.0.0.1:8026"
                    .parse()
                    .map_err(|e: std::net::AddrParseError| e.to_string())?
            )
        );
        assert_eq!(
            c.http.limits,
            HttpLimits {
                max_connections: 500,
                max_connections_per_ip: 20,
                admin_max_connections: 8,
                idle_timeout: Duration::from_secs(10),
                body_timeout: Duration::from_secs(15),
                body_min_rate: 2048,
            }
        );
        let t = c.http.metrics_token.as_ref().map(|t| t.0.as_str());
        assert_eq!(t, Some("metrics-0123456789abcdef"));
        assert!(!format!("{:?}", c.http).contains("metrics-0123456789abcdef"));
        Ok(())
    }

    #[test]
    fn bad_limits_are_reported_each_with_its_key() {
        let all = load(
            "admin_listen = \"127.0.0.1:8025\"\nmax_connections = 0\nmax_connections_per_ip = -1\nidle_timeout = \"100ms\"\nbody_timeout = \"2h\"\nbody_min_rate = 0\nmetrics_token = \"short\"\nadmin_max_connections = 1000000",
        )
        .unwrap_err();
        for needle in [
            "`http.admin_listen`: must differ from http.listen",
            "`http.max_connections`: must be between 1 and",
            "`http.max_connections_per_ip`: must be between 1 and",
            "`http.admin_max_connections`: must be between 1 and",
            "`http.idle_timeout`: must be between 1s and 1h",
            "`http.body_timeout`: must be between 1s and 1h",
            "`http.body_min_rate`: must be between 1 and",
            "`http.metrics_token`: must be at least 16 characters",
        ] {
            assert!(all.contains(needle), "{needle} in:\n{all}");
        }
    }
}
