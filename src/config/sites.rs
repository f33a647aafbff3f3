//! `[[site]]`: the shops contacts belong to (name, URL, default language,
//! currency, time zone) and their auto-login settings.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use super::values::{Secret, duration, is_currency, is_id, is_language, secret, secret_ok};

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
    /// ISO 3166 country (e.g. "PL") a phone number written without its
    /// country code is read in.
    pub country: Option<Spanned<String>>,
    /// IANA time zone of the site's contacts (default "UTC"): automations'
    /// clock times, dates and quiet hours are local to it.
    pub time_zone: Option<Spanned<String>>,
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

/// Auto-login settings of a site.
#[derive(Clone)]
pub struct Autologin {
    /// HMAC secret shared with the shop.
    pub secret: Secret,
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
    /// Country of national phone numbers (ISO 3166 alpha-2, upper case).
    pub country: Option<String>,
    /// Time zone of the site's contacts (`time_zone`, default UTC).
    pub time_zone: chrono_tz::Tz,
    /// Auto-login, when configured.
    pub autologin: Option<Autologin>,
}

/// Validates every `[[site]]`; only the valid ones are returned.
pub(super) fn validate(c: &mut Checker<'_>, base: &Path, raw: &[RawSite]) -> Vec<Site> {
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
        let country = match &s.country {
            Some(v) if !crate::names::is_country(v.get_ref()) => {
                c.at(&k("country"), v, "not a country code such as PL or DE");
                None
            }
            v => v.as_ref().map(|v| v.get_ref().to_ascii_uppercase()),
        };
        let time_zone = match &s.time_zone {
            None => Some(chrono_tz::Tz::UTC),
            Some(v) => match v.get_ref().parse::<chrono_tz::Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => {
                    c.at(
                        &k("time_zone"),
                        v,
                        format!(
                            "`{}` is not an IANA time zone such as \"Europe/Warsaw\" or \"UTC\"",
                            v.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let autologin = match secret(
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
                    Some(v) => duration(c, &k("autologin_ttl"), v),
                };
                let window = match &s.autologin_window {
                    None => Some(Duration::from_secs(7 * 86400)),
                    Some(v) => duration(c, &k("autologin_window"), v),
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
        if let (Some(id), Some(name), Some(url), Some(time_zone)) = (id, name, url, time_zone) {
            out.push(Site {
                id,
                name,
                url,
                default_language,
                currency,
                country,
                time_zone,
                autologin,
            });
        }
    }
    out
}
