//! Settings of the public endpoints: client addresses behind a proxy
//! (`[http] trusted_proxies`), connection and body limits, the admin
//! listener and the metrics token (`[http]`), machine-hit hints and
//! attribution (`[tracking]`), and the public signup form (`[signup]`).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::Checker;

/// `[signup]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignup {
    /// Lists a visitor may subscribe to through `POST /subscribe`.
    pub lists: Option<Vec<Spanned<String>>>,
    /// Transactional template of the confirmation mail.
    pub template: Option<Spanned<String>>,
    /// How long a confirmation link works.
    pub confirm_ttl: Option<Spanned<String>>,
    /// Signups accepted per client IP address per hour.
    pub rate_per_ip_per_hour: Option<Spanned<i64>>,
    /// Name of the hidden form field that only robots fill in.
    pub honeypot: Option<Spanned<String>>,
    /// Custom fields the form may set.
    pub fields: Option<Vec<Spanned<String>>>,
    /// Where to send the browser after a signup (default: Herald's page).
    pub thanks_url: Option<Spanned<String>>,
    /// Where to send the browser after a confirmation (default: Herald's page).
    pub confirmed_url: Option<Spanned<String>>,
}

/// Validated `[signup]`.
#[derive(Debug, Clone)]
pub struct SignupConfig {
    /// Lists open to signup (names).
    pub lists: Vec<String>,
    /// Confirmation template.
    pub template: String,
    /// Lifetime of a confirmation link.
    pub confirm_ttl: Duration,
    /// Signups per IP per hour.
    pub rate_per_ip_per_hour: u32,
    /// Honeypot field name.
    pub honeypot: String,
    /// Custom fields the form may set.
    pub fields: Vec<String>,
    /// Redirect after signup.
    pub thanks_url: Option<url::Url>,
    /// Redirect after confirmation.
    pub confirmed_url: Option<url::Url>,
}

/// CIDR networks (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
pub(super) fn networks(
    c: &mut Checker<'_>,
    key: &str,
    raw: &Option<Vec<Spanned<String>>>,
) -> Option<Vec<IpNet>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (i, v) in raw.iter().flatten().enumerate() {
        let s = v.get_ref().trim();
        let parsed = s
            .parse::<IpNet>()
            .ok()
            .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from));
        match parsed {
            Some(n) => out.push(n.trunc()),
            None => {
                c.at(
                    &format!("{key}[{i}]"),
                    v,
                    format!("`{s}` is not an IP address or network such as 10.0.0.0/8"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn url_of(c: &mut Checker<'_>, key: &str, v: &Option<Spanned<String>>) -> Option<Option<url::Url>> {
    match v {
        None => Some(None),
        Some(v) => match url::Url::parse(v.get_ref()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(Some(u)),
            _ => {
                c.at(key, v, "must be an http:// or https:// URL");
                None
            }
        },
    }
}

pub(super) fn validate_signup(
    c: &mut Checker<'_>,
    raw: &Option<RawSignup>,
    templates: Option<&crate::render::Templates>,
) -> Option<Option<SignupConfig>> {
    let Some(raw) = raw else {
        return Some(None);
    };
    let mut ok = true;
    let lists: Vec<String> = raw
        .lists
        .iter()
        .flatten()
        .map(|l| l.get_ref().trim().to_string())
        .collect();
    if lists.is_empty() || lists.iter().any(|l| l.is_empty()) {
        c.missing(
            "signup.lists",
            "the lists visitors may subscribe to, e.g. lists = [\"newsletter\"]",
        );
        ok = false;
    }
    let template = raw
        .template
        .as_ref()
        .map_or("confirm_subscription".to_string(), |t| t.get_ref().clone());
    if let Some(ts) = templates {
        match ts.get(&template) {
            Some(t) if t.kind == crate::render::template::Kind::Transactional => {}
            found => {
                let why = if found.is_some() {
                    format!("template `{template}` must be kind = \"transactional\"")
                } else {
                    format!("no template `{template}` in the templates folder")
                };
                match &raw.template {
                    Some(v) => c.at("signup.template", v, why),
                    None => c.missing("signup.template", &why),
                }
                ok = false;
            }
        }
    }
    let confirm_ttl = match &raw.confirm_ttl {
        None => Some(Duration::from_secs(7 * 86400)),
        Some(v) => super::delivery::duration(c, "signup.confirm_ttl", v),
    };
    let rate = match &raw.rate_per_ip_per_hour {
        None => Some(5),
        Some(v) if (1..=100_000).contains(v.get_ref()) => Some(*v.get_ref() as u32),
        Some(v) => {
            c.at(
                "signup.rate_per_ip_per_hour",
                v,
                "must be between 1 and 100000",
            );
            None
        }
    };
    let honeypot = match &raw.honeypot {
        None => Some("website".to_string()),
        Some(v) if super::render::is_id(v.get_ref()) => Some(v.get_ref().clone()),
        Some(v) => {
            c.at("signup.honeypot", v, "use 1-64 letters, digits, `-` or `_`");
            None
        }
    };
    let mut fields = Vec::new();
    for (i, f) in raw.fields.iter().flatten().enumerate() {
        match crate::contacts::check_field_name(f.get_ref()) {
            Ok(()) => fields.push(f.get_ref().clone()),
            Err(e) => {
                c.at(&format!("signup.fields[{i}]"), f, e.to_string());
                ok = false;
            }
        }
    }
    let thanks_url = url_of(c, "signup.thanks_url", &raw.thanks_url);
    let confirmed_url = url_of(c, "signup.confirmed_url", &raw.confirmed_url);
    if !ok {
        return None;
    }
    Some(Some(SignupConfig {
        lists,
        template,
        confirm_ttl: confirm_ttl?,
        rate_per_ip_per_hour: rate?,
        honeypot: honeypot?,
        fields,
        thanks_url: thanks_url?,
        confirmed_url: confirmed_url?,
    }))
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

/// The validated `[http]` keys of this module.
pub(super) struct HttpGuards {
    pub admin_listen: Option<SocketAddr>,
    pub limits: HttpLimits,
    pub metrics_token: Option<MetricsToken>,
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
        Some(v) => match super::delivery::duration(c, key, v) {
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
pub(super) fn validate_http(
    c: &mut Checker<'_>,
    raw: &super::RawHttp,
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
