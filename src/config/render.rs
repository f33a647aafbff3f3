//! `[tracking]`, `[rendering]`, `[greetings.<lang>]` and `[[site]]`: what the
//! template renderer needs besides the templates themselves.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use crate::tokens::Keys;

/// The shortest tracking or auto-login secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// `[tracking]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracking {
    /// Key that signs every public token (at least 32 characters).
    pub secret: Option<Spanned<String>>,
    /// File holding the secret.
    pub secret_file: Option<Spanned<String>>,
    /// Older secrets whose tokens still verify (rotation grace period).
    pub previous_secrets: Option<Vec<Spanned<String>>>,
    /// Query parameter added to click redirects for order attribution.
    pub attribution_param: Option<Spanned<String>>,
    /// Orders without the parameter go to the contact's last click within
    /// this time (default "7d").
    pub attribution_window: Option<Spanned<String>>,
    /// Networks whose opens and clicks are machines' (privacy proxies,
    /// scanners).
    pub machine_networks: Option<Vec<Spanned<String>>>,
    /// Clicks sooner than this after delivery are a link scanner's
    /// (default "10s").
    pub scanner_window: Option<Spanned<String>>,
}

/// `[rendering]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRendering {
    /// Threads of the rendering pool (default: every core).
    pub threads: Option<Spanned<i64>>,
    /// Recipients rendered together (default 500).
    pub batch_size: Option<Spanned<i64>>,
    /// Contact fields tried in order for the greeting's name.
    pub name_fields: Option<Vec<Spanned<String>>>,
}

/// `[greetings.<lang>]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGreeting {
    /// With a name: `{name}` is replaced by it.
    pub personal: Option<Spanned<String>>,
    /// Without a name, or when personalisation is off.
    pub neutral: Option<Spanned<String>>,
}

/// `[[site]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    /// Site id, as in contacts' `site`.
    pub id: Option<Spanned<String>>,
    /// Human name shown in mail and on the unsubscribe page.
    pub name: Option<Spanned<String>>,
    /// The shop's base URL.
    pub url: Option<Spanned<String>>,
    /// Language for contacts without one, when the template has it.
    pub default_language: Option<Spanned<String>>,
    /// Default currency for `money` when none is given.
    pub currency: Option<Spanned<String>>,
    /// Shared secret for auto-login tokens (at least 32 characters).
    pub autologin_secret: Option<Spanned<String>>,
    /// File holding the auto-login secret.
    pub autologin_secret_file: Option<Spanned<String>>,
    /// Query parameter carrying the auto-login token (default `hal`).
    pub autologin_param: Option<Spanned<String>>,
    /// How long an auto-login link works (default "7d").
    pub autologin_ttl: Option<Spanned<String>>,
    /// How long after a message was sent its links still log the contact in
    /// (default "7d"); later clicks go to the plain URL.
    pub autologin_window: Option<Spanned<String>>,
}

/// Validated `[tracking]`.
#[derive(Debug, Clone)]
pub struct TrackingConfig {
    /// Signing and verification keys.
    pub keys: Keys,
    /// Attribution query parameter.
    pub attribution_param: String,
    /// Last-click attribution window.
    pub attribution_window: Duration,
    /// Networks of machine clients.
    pub machine_networks: Vec<ipnet::IpNet>,
    /// Clicks this soon after delivery are a scanner's.
    pub scanner_window: Duration,
}

/// A greeting pair for one language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// With `{name}`.
    pub personal: String,
    /// Without.
    pub neutral: String,
}

/// Validated `[rendering]` and `[greetings]`.
#[derive(Debug, Clone)]
pub struct RenderingConfig {
    /// Rendering pool threads.
    pub threads: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Fields tried for the greeting's name.
    pub name_fields: Vec<String>,
    /// Greetings by language (built-in ones plus config).
    pub greetings: BTreeMap<String, Greeting>,
}

/// Auto-login settings of a site.
#[derive(Clone)]
pub struct Autologin {
    /// HMAC secret shared with the shop.
    pub secret: super::delivery::Secret,
    /// Query parameter name.
    pub param: String,
    /// Lifetime of a token.
    pub ttl: Duration,
    /// How long after the send a message's links still log in.
    pub window: Duration,
}

impl std::fmt::Debug for Autologin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Autologin(param {}, ttl {:?}, window {:?})",
            self.param, self.ttl, self.window
        )
    }
}

/// A validated `[[site]]`.
#[derive(Debug, Clone)]
pub struct Site {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Base URL.
    pub url: url::Url,
    /// Default language.
    pub default_language: Option<String>,
    /// Default currency.
    pub currency: Option<String>,
    /// Auto-login, when configured.
    pub autologin: Option<Autologin>,
}

/// Built-in greetings; `[greetings.<lang>]` overrides or adds.
const BUILTIN_GREETINGS: &[(&str, &str, &str)] = &[
    ("en", "Hello {name},", "Hello,"),
    ("pl", "Dzień dobry, {name},", "Dzień dobry,"),
    ("de", "Hallo {name},", "Guten Tag,"),
    ("fr", "Bonjour {name},", "Bonjour,"),
    ("es", "Hola, {name}:", "Hola:"),
    ("it", "Ciao {name},", "Buongiorno,"),
    ("cs", "Dobrý den, {name},", "Dobrý den,"),
    ("uk", "Вітаємо, {name}!", "Вітаємо!"),
];

pub(super) fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A language code: `en`, `pl`, `pt-BR` (letters and `-`, 2 to 16 long).
pub fn is_language(s: &str) -> bool {
    (2..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
}

fn secret_ok(c: &mut Checker<'_>, key: &str, at: &Spanned<String>, s: &str) -> bool {
    if s.chars().count() < MIN_SECRET_LEN {
        c.at(
            key,
            at,
            format!("must be at least {MIN_SECRET_LEN} characters (e.g. `openssl rand -hex 32`)"),
        );
        return false;
    }
    true
}

pub(super) fn validate_tracking(
    c: &mut Checker<'_>,
    base: &Path,
    raw: &Option<RawTracking>,
) -> Option<TrackingConfig> {
    let Some(raw) = raw else {
        c.missing(
            "tracking.secret",
            "or tracking.secret_file: the key that signs links in mail, e.g. from `openssl rand -hex 32`",
        );
        return None;
    };
    let at = raw.secret.as_ref().or(raw.secret_file.as_ref());
    let current = match super::secret(
        c,
        base,
        ("tracking.secret", &raw.secret),
        ("tracking.secret_file", &raw.secret_file),
    ) {
        Some(Some(s)) => {
            let key = if raw.secret.is_some() {
                "tracking.secret"
            } else {
                "tracking.secret_file"
            };
            at.filter(|at| secret_ok(c, key, at, &s.0)).map(|_| s)
        }
        Some(None) => {
            c.missing("tracking.secret", "or tracking.secret_file");
            None
        }
        None => None,
    };
    let mut previous = Vec::new();
    for (i, p) in raw.previous_secrets.iter().flatten().enumerate() {
        if secret_ok(
            c,
            &format!("tracking.previous_secrets[{i}]"),
            p,
            p.get_ref(),
        ) {
            previous.push(p.get_ref().as_bytes().to_vec());
        }
    }
    let attribution_param = match &raw.attribution_param {
        None => Some("hrl".to_string()),
        Some(v) if is_id(v.get_ref()) => Some(v.get_ref().clone()),
        Some(v) => {
            c.at(
                "tracking.attribution_param",
                v,
                "use 1-64 letters, digits, `-` or `_`",
            );
            None
        }
    };
    let attribution_window = match &raw.attribution_window {
        None => Some(Duration::from_secs(7 * 86400)),
        Some(v) => super::delivery::duration(c, "tracking.attribution_window", v),
    };
    let scanner_window = match &raw.scanner_window {
        None => Some(Duration::from_secs(10)),
        Some(v) => super::delivery::duration(c, "tracking.scanner_window", v),
    };
    let machine_networks =
        super::public::networks(c, "tracking.machine_networks", &raw.machine_networks);
    Some(TrackingConfig {
        keys: Keys::new(current?.0.as_bytes(), &previous),
        attribution_param: attribution_param?,
        attribution_window: attribution_window?,
        machine_networks: machine_networks?,
        scanner_window: scanner_window?,
    })
}

pub(super) fn validate_rendering(
    c: &mut Checker<'_>,
    raw: &RawRendering,
    greetings: &BTreeMap<String, RawGreeting>,
) -> RenderingConfig {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match &raw.threads {
        None => cores,
        Some(v) if *v.get_ref() == 0 => cores,
        Some(v) if (1..=1024).contains(v.get_ref()) => *v.get_ref() as usize,
        Some(v) => {
            c.at(
                "rendering.threads",
                v,
                "must be between 0 (every core) and 1024",
            );
            cores
        }
    };
    let batch_size = match &raw.batch_size {
        None => 500,
        Some(v) if (1..=100_000).contains(v.get_ref()) => *v.get_ref() as usize,
        Some(v) => {
            c.at("rendering.batch_size", v, "must be between 1 and 100000");
            500
        }
    };
    let mut name_fields = Vec::new();
    match &raw.name_fields {
        None => name_fields = vec!["greeting_name".into(), "first_name".into()],
        Some(v) => {
            for (i, f) in v.iter().enumerate() {
                match crate::contacts::check_field_name(f.get_ref()) {
                    Ok(()) => name_fields.push(f.get_ref().clone()),
                    Err(e) => c.at(&format!("rendering.name_fields[{i}]"), f, e.to_string()),
                }
            }
        }
    }
    let mut out: BTreeMap<String, Greeting> = BUILTIN_GREETINGS
        .iter()
        .map(|(l, p, n)| {
            (
                l.to_string(),
                Greeting {
                    personal: p.to_string(),
                    neutral: n.to_string(),
                },
            )
        })
        .collect();
    for (lang, g) in greetings {
        let key = |k: &str| format!("greetings.{lang}.{k}");
        if !is_language(lang) {
            if let Some(at) = g.personal.as_ref().or(g.neutral.as_ref()) {
                c.at(
                    &key("personal"),
                    at,
                    format!("`{lang}` is not a language code such as en or pt-BR"),
                );
            }
            continue;
        }
        let base = out.get(lang).cloned();
        let personal = match (&g.personal, &base) {
            (Some(p), _) if !p.get_ref().contains("{name}") => {
                c.at(&key("personal"), p, "must contain {name}");
                continue;
            }
            (Some(p), _) => p.get_ref().clone(),
            (None, Some(b)) => b.personal.clone(),
            (None, None) => {
                c.missing(&key("personal"), "a greeting with {name} for this language");
                continue;
            }
        };
        let neutral = match (&g.neutral, &base) {
            (Some(n), _) => n.get_ref().clone(),
            (None, Some(b)) => b.neutral.clone(),
            (None, None) => {
                c.missing(
                    &key("neutral"),
                    "a greeting without a name for this language",
                );
                continue;
            }
        };
        out.insert(lang.clone(), Greeting { personal, neutral });
    }
    RenderingConfig {
        threads,
        batch_size,
        name_fields,
        greetings: out,
    }
}

pub(super) fn validate_sites(c: &mut Checker<'_>, base: &Path, raw: &[RawSite]) -> Vec<Site> {
    let mut out: Vec<Site> = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let k = |name: &str| format!("site[{i}].{name}");
        let id = c
            .required(
                &k("id"),
                &s.id,
                "the site id contacts carry, e.g. id = \"shop\"",
            )
            .and_then(|v| {
                if !is_id(v.get_ref()) {
                    c.at(&k("id"), v, "use 1-64 letters, digits, `-` or `_`");
                    return None;
                }
                if out.iter().any(|o| &o.id == v.get_ref()) {
                    c.at(&k("id"), v, "another [[site]] already has this id");
                    return None;
                }
                Some(v.get_ref().clone())
            });
        let name = c
            .required(&k("name"), &s.name, "e.g. name = \"Example Shop\"")
            .map(|v| v.get_ref().clone());
        let url = c
            .required(&k("url"), &s.url, "e.g. url = \"https://shop.example\"")
            .and_then(|v| match url::Url::parse(v.get_ref()) {
                Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
                    Some(u)
                }
                _ => {
                    c.at(&k("url"), v, "must be an http:// or https:// URL");
                    None
                }
            });
        let default_language = match &s.default_language {
            Some(v) if !is_language(v.get_ref()) => {
                c.at(
                    &k("default_language"),
                    v,
                    "not a language code such as en or pt-BR",
                );
                None
            }
            v => v.as_ref().map(|v| v.get_ref().to_ascii_lowercase()),
        };
        let currency = match &s.currency {
            Some(v) if !is_currency(v.get_ref()) => {
                c.at(&k("currency"), v, "not a currency code such as EUR or PLN");
                None
            }
            v => v.as_ref().map(|v| v.get_ref().clone()),
        };
        let autologin = match super::secret(
            c,
            base,
            (&k("autologin_secret"), &s.autologin_secret),
            (&k("autologin_secret_file"), &s.autologin_secret_file),
        ) {
            Some(Some(secret)) => {
                let at = s
                    .autologin_secret
                    .as_ref()
                    .or(s.autologin_secret_file.as_ref());
                let ok = at.is_some_and(|at| secret_ok(c, &k("autologin_secret"), at, &secret.0));
                let param = match &s.autologin_param {
                    None => Some("hal".to_string()),
                    Some(v) if is_id(v.get_ref()) => Some(v.get_ref().clone()),
                    Some(v) => {
                        c.at(&k("autologin_param"), v, "use letters, digits, `-` or `_`");
                        None
                    }
                };
                let ttl = match &s.autologin_ttl {
                    None => Some(Duration::from_secs(7 * 86400)),
                    Some(v) => super::delivery::duration(c, &k("autologin_ttl"), v),
                };
                let window = match &s.autologin_window {
                    None => Some(Duration::from_secs(7 * 86400)),
                    Some(v) => super::delivery::duration(c, &k("autologin_window"), v),
                };
                match (ok, param, ttl, window) {
                    (true, Some(param), Some(ttl), Some(window)) => Some(Autologin {
                        secret,
                        param,
                        ttl,
                        window,
                    }),
                    _ => None,
                }
            }
            _ => {
                for (key, v) in [
                    ("autologin_param", &s.autologin_param),
                    ("autologin_ttl", &s.autologin_ttl),
                    ("autologin_window", &s.autologin_window),
                ] {
                    if let Some(v) = v {
                        c.at(
                            &k(key),
                            v,
                            "set autologin_secret or autologin_secret_file too",
                        );
                    }
                }
                None
            }
        };
        if let (Some(id), Some(name), Some(url)) = (id, name, url) {
            out.push(Site {
                id,
                name,
                url,
                default_language,
                currency,
                autologin,
            });
        }
    }
    out
}

/// A three-letter upper-case currency code.
pub fn is_currency(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
}
