//! `[admin]`: the admin API's bearer token, inline or in a file, and how
//! long an admin UI login lasts.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use super::values::secret;

/// The shortest admin token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 24;

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// The bearer token the admin API requires.
    pub token: Option<Spanned<String>>,
    /// A file whose (trimmed) content is the token; keeps the secret out of the
    /// config file. Exactly one of `token` and `token_file` must be set.
    pub token_file: Option<Spanned<String>>,
    /// How long an admin UI login lasts (default 12h; 5 minutes to 30 days).
    pub session_ttl: Option<Spanned<String>>,
}

/// How long an admin UI login lasts unless `[admin] session_ttl` says.
pub const DEFAULT_SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Validated `[admin]`.
#[derive(Clone)]
pub struct AdminConfig {
    /// The bearer token; never printed (see the `Debug` impl).
    pub token: String,
    /// How long an admin UI login lasts.
    pub session_ttl: std::time::Duration,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &"<redacted>")
            .field("session_ttl", &self.session_ttl)
            .finish()
    }
}

/// Validates `[admin]`: exactly one of `token` and `token_file`.
pub(super) fn validate(c: &mut Checker<'_>, base: &Path, raw: &RawAdmin) -> Option<AdminConfig> {
    let token = match secret(
        c,
        base,
        ("admin.token", &raw.token),
        ("admin.token_file", &raw.token_file),
    ) {
        None => None,
        Some(None) => {
            c.missing(
                "admin.token",
                "or admin.token_file: the admin API's bearer token",
            );
            None
        }
        Some(Some(t)) => {
            let at = raw.token.as_ref().or(raw.token_file.as_ref());
            at.and_then(|at| {
                if raw.token.is_some() {
                    check_token(c, "admin.token", at, t.0.clone())
                } else {
                    check_token(c, "admin.token_file", at, t.0.trim().to_string())
                }
            })
        }
    };

    let session_ttl = match &raw.session_ttl {
        None => DEFAULT_SESSION_TTL,
        Some(v) => match super::values::duration(c, "admin.session_ttl", v) {
            Some(d) if (300..=30 * 86400).contains(&d.as_secs()) => d,
            Some(_) => {
                c.at(
                    "admin.session_ttl",
                    v,
                    "must be between 5 minutes and 30 days",
                );
                DEFAULT_SESSION_TTL
            }
            None => DEFAULT_SESSION_TTL,
        },
    };
    Some(AdminConfig {
        token: token?,
        session_ttl,
    })
}

fn check_token(
    c: &mut Checker<'_>,
    key: &str,
    at: &Spanned<String>,
    token: String,
) -> Option<String> {
    if token.chars().count() < MIN_TOKEN_LEN {
        c.at(
            key,
            at,
            format!("the admin token must be at least {MIN_TOKEN_LEN} characters long"),
        );
        return None;
    }
    if token
        .chars()
        .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        c.at(
            key,
            at,
            "the admin token must not contain spaces or control characters",
        );
        return None;
    }
    Some(token)
}
