//! Checks of values that several sections share: secrets given inline or in
//! a file, durations, counts, networks, ids, language and currency codes.

use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::{Checker, resolve};

/// The shortest tracking or auto-login secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// Longest duration any setting takes (timeouts, waits, max_age, windows).
const MAX_DURATION: Duration = Duration::from_secs(90 * 86400);

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a secret given either inline (`key`) or in a file (`key_file`, first
/// line ending trimmed). `None`: a problem was reported; `Some(None)`: neither
/// was set.
pub(super) fn secret(
    c: &mut Checker<'_>,
    base: &Path,
    inline: (&str, &Option<Spanned<String>>),
    file: (&str, &Option<Spanned<String>>),
) -> Option<Option<Secret>> {
    match (inline.1, file.1) {
        (Some(_), Some(f)) => {
            c.at(
                file.0,
                f,
                format!("set either {} or {}, not both", inline.0, file.0),
            );
            None
        }
        (Some(v), None) => Some(Some(Secret(v.get_ref().clone()))),
        (None, Some(f)) => {
            let p = resolve(base, f.get_ref());
            match std::fs::read_to_string(&p) {
                Ok(s) => Some(Some(Secret(s.trim_end_matches(['\r', '\n']).to_string()))),
                Err(e) => {
                    c.at(file.0, f, format!("cannot read {}: {e}", p.display()));
                    None
                }
            }
        }
        (None, None) => Some(None),
    }
}

/// Whether a tracking or auto-login secret is long enough (reported if not).
pub(super) fn secret_ok(c: &mut Checker<'_>, key: &str, at: &Spanned<String>, s: &str) -> bool {
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

/// A duration such as "30s" or "5d", longer than zero and at most 90 days.
pub(super) fn duration(c: &mut Checker<'_>, key: &str, v: &Spanned<String>) -> Option<Duration> {
    match humantime::parse_duration(v.get_ref()) {
        Ok(d) if d > MAX_DURATION => {
            c.at(key, v, "must be at most 90 days");
            None
        }
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => {
            c.at(key, v, "must be longer than zero");
            None
        }
        Err(e) => {
            c.at(
                key,
                v,
                format!(
                    "`{}` is not a duration such as \"30s\", \"5m\", \"4h\", \"5d\": {e}",
                    v.get_ref()
                ),
            );
            None
        }
    }
}

/// A count from 1 to `max`; `default` when unset or (reported) out of range.
pub(super) fn count(
    c: &mut Checker<'_>,
    key: &str,
    v: &Option<Spanned<i64>>,
    max: i64,
    default: usize,
) -> usize {
    match v {
        None => default,
        Some(n) if (1..=max).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            c.at(key, n, format!("must be between 1 and {max}"));
            default
        }
    }
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

/// An id or parameter name: 1 to 64 letters, digits, `-` or `_`.
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

/// A three-letter upper-case currency code.
pub fn is_currency(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
}
