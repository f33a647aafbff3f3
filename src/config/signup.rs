//! `[signup]`: the public signup form (lists it may join, the confirmation
//! template, limits, the honeypot, fields it may set, where it redirects).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::values::{duration, is_id};
use super::{Checker, ConfigError};

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
    /// Confirmation template (checked against the templates folder when
    /// the snapshot is built: see [`SignupConfig::template_problem`]).
    pub template: String,
    /// Line and column of `template` in the config file, when it is written
    /// there (unset, the default name is used).
    pub template_position: Option<(usize, usize)>,
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

impl SignupConfig {
    /// The problem to report when `template` is not a loaded transactional
    /// template (`why` says which), in the form every config problem takes:
    /// at the key's position when it is written, else as a missing key.
    ///
    /// The config does not load templates (it is a leaf); whoever loads
    /// them with it checks this and reports through here.
    pub fn template_problem(&self, file: &Path, why: String) -> ConfigError {
        let (position, message) = match self.template_position {
            Some(at) => (Some(at), why),
            None => (None, format!("missing required key ({why})")),
        };
        ConfigError {
            file: file.to_path_buf(),
            position,
            key: "signup.template".to_string(),
            message,
        }
    }
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

/// Validates `[signup]`; `Some(None)` when there is none.
pub(super) fn validate(
    c: &mut Checker<'_>,
    raw: &Option<RawSignup>,
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
    let template_position = raw.template.as_ref().map(|t| c.position(t));
    let confirm_ttl = match &raw.confirm_ttl {
        None => Some(Duration::from_secs(7 * 86400)),
        Some(v) => duration(c, "signup.confirm_ttl", v),
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
        Some(v) if is_id(v.get_ref()) => Some(v.get_ref().clone()),
        Some(v) => {
            c.at("signup.honeypot", v, "use 1-64 letters, digits, `-` or `_`");
            None
        }
    };
    let mut fields = Vec::new();
    for (i, f) in raw.fields.iter().flatten().enumerate() {
        match crate::names::check_field_name(f.get_ref()) {
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
        template_position,
        confirm_ttl: confirm_ttl?,
        rate_per_ip_per_hour: rate?,
        honeypot: honeypot?,
        fields,
        thanks_url: thanks_url?,
        confirmed_url: confirmed_url?,
    }))
}
