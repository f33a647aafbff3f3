//! `[[sender]]`: the identities Herald sends as (From, envelope sender,
//! EHLO name, rate limits, DKIM keys, an optional relay).
//!
//! DKIM keys are loaded and checked here, at config time, so that
//! `check-config` reports an unreadable, wrong-type or short key with the
//! position of its `key_file`. The key type comes from `delivery::dkim`, a
//! leaf file that names nothing else of the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::values::{Secret, count, secret};
use super::{Checker, resolve};
use crate::delivery::dkim::DkimKey;

/// `[[sender]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSender {
    /// Name used by the API, campaigns and automations.
    pub id: Option<Spanned<String>>,
    /// Default From header, e.g. `"Shop <news@shop.example>"`; its domain is
    /// the sender's domain and the DKIM `d=`.
    pub from: Option<Spanned<String>>,
    /// Envelope sender (MAIL FROM), where bounces go. Default: the From address.
    pub return_path: Option<Spanned<String>>,
    /// A domain whose mail Herald's inbound listener takes: with it, every
    /// message's envelope sender is `b-<token>@<bounce_domain>` (VERP), the
    /// token naming the queued message and the recipient.
    pub bounce_domain: Option<Spanned<String>>,
    /// Name sent in EHLO (default: the sender's domain).
    pub helo: Option<Spanned<String>>,
    /// Refuse to deliver without TLS.
    pub require_tls: Option<Spanned<bool>>,
    /// At most this many messages per second from this sender.
    pub rate_per_second: Option<Spanned<f64>>,
    /// At most this many messages per hour from this sender.
    pub rate_per_hour: Option<Spanned<f64>>,
    /// Mailbox for `List-Unsubscribe: <mailto:…>` next to the HTTPS link.
    pub unsubscribe_mailto: Option<Spanned<String>>,
    /// DKIM keys; each adds a signature.
    #[serde(default)]
    pub dkim: Vec<RawDkim>,
    /// Send everything through this smarthost instead of MX delivery.
    pub relay: Option<RawRelay>,
    /// The local address MX connections are made from (default: the
    /// system's choice). Shaping limits count per source address.
    pub source_ip: Option<Spanned<String>>,
    /// A day-by-day allowance for a new sender.
    pub warmup: Option<super::warmup::RawWarmup>,
}

/// `[[sender.dkim]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDkim {
    /// `s=`.
    pub selector: Option<Spanned<String>>,
    /// PEM private key (written by `herald dkim keygen`).
    pub key_file: Option<Spanned<String>>,
}

/// `[sender.relay]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    /// Host name or address.
    pub host: Option<Spanned<String>>,
    /// Port (default 587 for starttls, 465 for implicit, 25 for none).
    pub port: Option<Spanned<i64>>,
    /// `starttls` (default), `implicit` or `none`.
    pub tls: Option<Spanned<String>>,
    /// AUTH user name.
    pub username: Option<Spanned<String>>,
    /// AUTH password (prefer `password_file`).
    pub password: Option<Spanned<String>>,
    /// File holding the AUTH password.
    pub password_file: Option<Spanned<String>>,
    /// PEM file of CA certificates to trust for this relay instead of the
    /// system's (for a private CA or a self-signed relay).
    pub ca_file: Option<Spanned<String>>,
    /// Connections to the relay at once (default 10).
    pub max_connections: Option<Spanned<i64>>,
}

/// TLS to a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTls {
    /// STARTTLS, required.
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plain text (only for a relay on the same host or network).
    None,
}

impl RelayTls {
    /// As `check-config` prints it.
    pub fn describe(self) -> &'static str {
        match self {
            RelayTls::StartTls => "STARTTLS required",
            RelayTls::Implicit => "TLS from the first byte",
            RelayTls::None => "no TLS",
        }
    }
}

/// Validated `[sender.relay]`.
#[derive(Debug, Clone)]
pub struct Relay {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS mode.
    pub tls: RelayTls,
    /// AUTH user and password.
    pub auth: Option<(String, Secret)>,
    /// Extra trust anchors (DER certificates) from `ca_file`.
    pub ca_certs: Vec<Vec<u8>>,
    /// Connection limit.
    pub max_connections: usize,
}

/// A validated sender identity.
#[derive(Debug, Clone)]
pub struct Sender {
    /// Identity name.
    pub id: String,
    /// From header value.
    pub from: String,
    /// The From address alone.
    pub from_address: String,
    /// The From domain (lower case): DKIM `d=`.
    pub domain: String,
    /// MAIL FROM address (when there is no `bounce_domain`).
    pub return_path: String,
    /// VERP bounce domain (lower case): MAIL FROM is then
    /// `b-<token>@<bounce_domain>` per recipient.
    pub bounce_domain: Option<String>,
    /// EHLO name.
    pub helo: String,
    /// Deliver only over TLS.
    pub require_tls: bool,
    /// Messages per second limit.
    pub rate_per_second: Option<f64>,
    /// Messages per hour limit.
    pub rate_per_hour: Option<f64>,
    /// Address for mailto unsubscribes, when configured.
    pub unsubscribe_mailto: Option<String>,
    /// Signing keys.
    pub dkim: Vec<Arc<DkimKey>>,
    /// Smarthost, if any.
    pub relay: Option<Relay>,
    /// Local address of MX connections.
    pub source_ip: Option<std::net::IpAddr>,
    /// Warm-up allowances.
    pub warmup: Option<super::warmup::Warmup>,
}

/// Whether `s` is a host name: labels of letters, digits and hyphens.
pub fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Splits `"Name <a@b>"` or `"a@b"` into the address, checking it.
pub fn parse_mailbox(v: &str) -> Result<String, String> {
    let v = v.trim();
    let addr = match (v.rfind('<'), v.ends_with('>')) {
        (Some(i), true) => &v[i + 1..v.len() - 1],
        (None, false) => v,
        _ => return Err(format!("`{v}` is not an address or \"Name <address>\"")),
    };
    if v.contains(['\r', '\n']) {
        return Err("must not contain line breaks".into());
    }
    crate::names::normalize_email(addr)
        .map(|e| e.display)
        .map_err(|e| e.to_string())
}

/// The domain of an address, lower case.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Validates every `[[sender]]`; only the valid ones are returned.
pub(super) fn validate(c: &mut Checker<'_>, base: &Path, raw: &[RawSender]) -> Vec<Arc<Sender>> {
    let mut out = Vec::new();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for (i, s) in raw.iter().enumerate() {
        let k = |name: &str| format!("sender[{i}].{name}");
        let id = c
            .required(&k("id"), &s.id, "a name such as id = \"shop\"")
            .and_then(|v| {
                let ok = !v.get_ref().is_empty()
                    && v.get_ref().len() <= 64
                    && v.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !ok {
                    c.at(&k("id"), v, "use 1-64 letters, digits, `-` or `_`");
                    return None;
                }
                if let Some(prev) = ids.insert(v.get_ref().clone(), i) {
                    c.at(&k("id"), v, format!("sender[{prev}] already has this id"));
                    return None;
                }
                Some(v.get_ref().clone())
            });
        let from = c
            .required(
                &k("from"),
                &s.from,
                "e.g. from = \"Shop <news@shop.example>\"",
            )
            .and_then(|v| match parse_mailbox(v.get_ref()) {
                Ok(a) => Some((v.get_ref().trim().to_string(), a)),
                Err(e) => {
                    c.at(&k("from"), v, e);
                    None
                }
            });
        let domain = from.as_ref().map(|(_, a)| domain_of(a));
        let return_path = match &s.return_path {
            None => from.as_ref().map(|(_, a)| a.clone()),
            Some(v) => match crate::names::normalize_email(v.get_ref()) {
                Ok(e) => Some(e.display),
                Err(e) => {
                    c.at(&k("return_path"), v, e.to_string());
                    None
                }
            },
        };
        let bounce_domain = s.bounce_domain.as_ref().and_then(|v| {
            let d = v.get_ref().trim().trim_end_matches('.').to_ascii_lowercase();
            if is_host_name(&d) && d.contains('.') {
                Some(d)
            } else {
                c.at(
                    &k("bounce_domain"),
                    v,
                    "must be a domain name such as bounces.shop.example (its MX pointing at this host's [inbound] listener)",
                );
                None
            }
        });
        let helo = match &s.helo {
            None => domain.clone(),
            Some(v) => {
                let h = v.get_ref().trim();
                if h.is_empty()
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    c.at(
                        &k("helo"),
                        v,
                        "must be a host name such as mail.shop.example",
                    );
                    None
                } else {
                    Some(h.to_string())
                }
            }
        };
        let rate = |c: &mut Checker<'_>, key: &str, v: &Option<Spanned<f64>>, min: f64| match v {
            None => None,
            Some(r) if (min..=1e6).contains(r.get_ref()) => Some(*r.get_ref()),
            Some(r) => {
                c.at(key, r, format!("must be a number from {min} to 1000000"));
                None
            }
        };
        let rate_per_second = rate(c, &k("rate_per_second"), &s.rate_per_second, 0.001);
        let rate_per_hour = rate(c, &k("rate_per_hour"), &s.rate_per_hour, 1.0);
        let mut dkim = Vec::new();
        let mut selectors = BTreeSet::new();
        for (j, d) in s.dkim.iter().enumerate() {
            let dk = |name: &str| format!("sender[{i}].dkim[{j}].{name}");
            let sel = c.required(&dk("selector"), &d.selector, "e.g. selector = \"s2026\"");
            let file = c.required(
                &dk("key_file"),
                &d.key_file,
                "the PEM file from `herald dkim keygen`",
            );
            if let (Some(sel), Some(file), Some(domain)) = (sel, file, &domain) {
                if !selectors.insert(sel.get_ref().clone()) {
                    c.at(
                        &dk("selector"),
                        sel,
                        "this sender already has a key with this selector",
                    );
                    continue;
                }
                let path = resolve(base, file.get_ref());
                match DkimKey::load(&path, domain, sel.get_ref()) {
                    Ok(key) => dkim.push(Arc::new(key)),
                    Err(e) => c.at(&dk("key_file"), file, e),
                }
            }
        }
        let relay = s.relay.as_ref().and_then(|r| validate_relay(c, base, i, r));
        let unsubscribe_mailto = s.unsubscribe_mailto.as_ref().and_then(|v| {
            match crate::names::normalize_email(v.get_ref()) {
                Ok(e) => Some(e.display),
                Err(e) => {
                    c.at(&k("unsubscribe_mailto"), v, e.to_string());
                    None
                }
            }
        });
        let source_ip = s
            .source_ip
            .as_ref()
            .and_then(|v| match v.get_ref().parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    c.at(&k("source_ip"), v, "not an IP address of this host");
                    None
                }
            });
        let warmup = s
            .warmup
            .as_ref()
            .and_then(|w| super::warmup::validate(c, &k("warmup"), w));
        if let (Some(id), Some((from, from_address)), Some(domain), Some(return_path), Some(helo)) =
            (id, from, domain, return_path, helo)
        {
            out.push(Arc::new(Sender {
                id,
                from,
                from_address,
                domain,
                return_path,
                bounce_domain,
                helo,
                require_tls: s.require_tls.as_ref().is_some_and(|v| *v.get_ref()),
                rate_per_second,
                rate_per_hour,
                unsubscribe_mailto,
                dkim,
                relay,
                source_ip,
                warmup,
            }));
        }
    }
    out
}

fn validate_relay(c: &mut Checker<'_>, base: &Path, i: usize, r: &RawRelay) -> Option<Relay> {
    let k = |name: &str| format!("sender[{i}].relay.{name}");
    let host = c
        .required(&k("host"), &r.host, "the relay's host name")
        .map(|v| v.get_ref().trim().to_string());
    let tls = match &r.tls {
        None => Some(RelayTls::StartTls),
        Some(v) => match v.get_ref().as_str() {
            "starttls" => Some(RelayTls::StartTls),
            "implicit" => Some(RelayTls::Implicit),
            "none" => Some(RelayTls::None),
            other => {
                c.at(
                    &k("tls"),
                    v,
                    format!("`{other}` is not one of: starttls, implicit, none"),
                );
                None
            }
        },
    };
    let default_port = match tls {
        Some(RelayTls::Implicit) => 465,
        Some(RelayTls::None) => 25,
        _ => 587,
    };
    let port = count(c, &k("port"), &r.port, 65535, default_port) as u16;
    let password = secret(
        c,
        base,
        (&k("password"), &r.password),
        (&k("password_file"), &r.password_file),
    )
    .flatten();
    let auth = match (&r.username, password) {
        (Some(u), Some(p)) => Some((u.get_ref().clone(), p)),
        (None, None) => None,
        (Some(u), None) => {
            if r.password.is_none() && r.password_file.is_none() {
                c.at(
                    &k("username"),
                    u,
                    "a username needs password or password_file",
                );
            }
            None
        }
        (None, Some(_)) => {
            c.missing(
                &k("username"),
                "password is set, so the AUTH username is needed",
            );
            None
        }
    };
    if let Some(u) = r
        .username
        .as_ref()
        .filter(|_| auth.is_some() && tls == Some(RelayTls::None))
    {
        c.at(
            &k("username"),
            u,
            "AUTH over a plain-text connection would expose the password; use tls = \"starttls\" or \"implicit\"",
        );
    }
    let mut ca_certs = Vec::new();
    if let Some(f) = &r.ca_file {
        let p = resolve(base, f.get_ref());
        match load_certs(&p) {
            Ok(certs) => ca_certs = certs,
            Err(e) => c.at(&k("ca_file"), f, e),
        }
    }
    let max_connections = count(c, &k("max_connections"), &r.max_connections, 1000, 10);
    Some(Relay {
        host: host?,
        port,
        tls: tls?,
        auth,
        ca_certs,
        max_connections,
    })
}

/// The PEM certificates in `p`, as DER (a relay's or MTA-STS's CA file).
pub(super) fn load_certs(p: &PathBuf) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let data = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&data)
        .map(|c| c.map(|c| c.to_vec()))
        .collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(format!("{} holds no PEM certificate", p.display())),
        Err(e) => Err(format!(
            "{} is not a PEM certificate file: {e}",
            p.display()
        )),
    }
}
