//! `[tracking]`: the keys that sign every public token, order attribution
//! and what counts as a machine's open or click.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use super::values::{duration, is_id, networks, secret, secret_ok};
use crate::tokens::Keys;

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

/// Validates `[tracking]`, which is required.
pub(super) fn validate(
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
    let current = match secret(
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
        Some(v) => duration(c, "tracking.attribution_window", v),
    };
    let scanner_window = match &raw.scanner_window {
        None => Some(Duration::from_secs(10)),
        Some(v) => duration(c, "tracking.scanner_window", v),
    };
    let machine_networks = networks(c, "tracking.machine_networks", &raw.machine_networks);
    Some(TrackingConfig {
        keys: Keys::new(current?.0.as_bytes(), &previous),
        attribution_param: attribution_param?,
        attribution_window: attribution_window?,
        machine_networks: machine_networks?,
        scanner_window: scanner_window?,
    })
}
