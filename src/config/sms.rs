//! `[sms]` and `[[sms_gateway]]`: the HTTP gateways text messages go
//! through (SMSAPI, Twilio, or any provider behind a signed webhook), their
//! credentials, pace and callback secrets, and what every SMS shares: quiet
//! hours, the longest message, the reply words that withdraw or give
//! consent.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use super::values::{Secret, count, duration, is_currency, is_id, secret};

/// `[sms]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSms {
    /// The gateway messages go through unless a send names one (default:
    /// the first `[[sms_gateway]]`).
    pub gateway: Option<Spanned<String>>,
    /// Local hours (the contact's site's time zone) in which no marketing
    /// SMS goes out, e.g. "21:00-08:00" (the default); "off" sends at any
    /// hour. Messages due inside are held until the end, never dropped.
    pub quiet_hours: Option<Spanned<String>>,
    /// Parts above which a preview and `check-config` warn (default 3).
    pub max_parts: Option<Spanned<i64>>,
    /// Reply words that withdraw SMS consent, per language (defaults: en
    /// STOP, UNSUBSCRIBE, END, QUIT, STOPALL, REVOKE, OPTOUT, CANCEL; pl
    /// STOP, NIE; de STOP, ABMELDEN).
    #[serde(default)]
    pub stop_words: BTreeMap<String, Vec<Spanned<String>>>,
    /// Reply words that give SMS consent back (default START, UNSTOP).
    pub start_words: Option<Vec<Spanned<String>>>,
    /// The brand a reply may name after the word (`STOP Shop`).
    pub brand: Option<Spanned<String>>,
    /// Attempts before a message counts as failed (default 8).
    pub max_attempts: Option<Spanned<i64>>,
    /// The first retry's wait (default "30s"); later ones grow from it
    /// (×2, ×4, ×10, ×20, ×60, ×120).
    pub retry_after: Option<Spanned<String>>,
}

/// `[[sms_gateway]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Id, as sends and callback URLs name it.
    pub id: Option<Spanned<String>>,
    /// `smsapi`, `twilio` or `webhook`.
    pub kind: Option<Spanned<String>>,
    /// The API's base URL (defaults: https://api.smsapi.pl,
    /// https://api.twilio.com; required for a webhook: the URL posted to).
    pub base_url: Option<Spanned<String>>,
    /// The credentials: SMSAPI's OAuth token; Twilio's `ACCOUNT_SID:AUTH_TOKEN`;
    /// the webhook's signing secret.
    pub credentials: Option<Spanned<String>>,
    /// A file holding the credentials.
    pub credentials_file: Option<Spanned<String>>,
    /// Sender name or number (`from`).
    pub from: Option<Spanned<String>>,
    /// Requests per second at most (default 10).
    pub rate_per_second: Option<Spanned<i64>>,
    /// Requests in flight at most (default 4).
    pub connections: Option<Spanned<i64>>,
    /// How long one request may take (default "15s").
    pub timeout: Option<Spanned<String>>,
    /// The secret delivery reports and replies are checked with (at least
    /// 32 characters): the key in SMSAPI's callback URLs, the webhook's
    /// callback signature. Twilio's are signed with its auth token.
    pub callback_secret: Option<Spanned<String>>,
    /// A file holding the callback secret.
    pub callback_secret_file: Option<Spanned<String>>,
    /// What one part costs, e.g. "0.16", for reports.
    pub cost_per_part: Option<Spanned<String>>,
    /// The cost's currency (default: the first site's, else EUR).
    pub currency: Option<Spanned<String>>,
}

/// Which API a gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayKind {
    /// SMSAPI (`/sms.do`).
    Smsapi,
    /// Twilio Programmable Messaging.
    Twilio,
    /// Herald's signed JSON webhook.
    Webhook,
}

impl GatewayKind {
    /// The name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayKind::Smsapi => "smsapi",
            GatewayKind::Twilio => "twilio",
            GatewayKind::Webhook => "webhook",
        }
    }
}

/// A validated `[[sms_gateway]]`.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Id.
    pub id: String,
    /// API.
    pub kind: GatewayKind,
    /// Base URL (no trailing slash) or, for a webhook, the URL.
    pub base_url: url::Url,
    /// Credentials (token; `SID:TOKEN`; signing secret).
    pub credentials: Secret,
    /// Sender name or number.
    pub from: String,
    /// Requests per second.
    pub rate_per_second: u32,
    /// Requests in flight.
    pub connections: usize,
    /// Request timeout.
    pub timeout: Duration,
    /// Callback secret (SMSAPI, webhook).
    pub callback_secret: Option<Secret>,
    /// Cost of one part, in ten-thousandths of `currency`.
    pub cost_per_part: u64,
    /// The cost's currency.
    pub currency: String,
}

/// Validated `[sms]` with its gateways.
#[derive(Debug, Clone)]
pub struct SmsConfig {
    /// Gateways, in file order.
    pub gateways: Vec<Gateway>,
    /// The default gateway's id (`None` when there is no gateway).
    pub default_gateway: Option<String>,
    /// Quiet hours as (start, end) minutes of the day; `None`: off.
    pub quiet_hours: Option<(u32, u32)>,
    /// Parts above which previews warn.
    pub max_parts: usize,
    /// Upper-case words that withdraw SMS consent, per language.
    pub stop_words: BTreeMap<String, Vec<String>>,
    /// Upper-case words that give it back.
    pub start_words: Vec<String>,
    /// Upper-case brand a reply may name after the word.
    pub brand: Option<String>,
    /// Attempts before a message fails.
    pub max_attempts: u32,
    /// The first retry's wait, in milliseconds.
    pub retry_after_ms: i64,
}

impl SmsConfig {
    /// The gateway called `id`.
    pub fn gateway(&self, id: &str) -> Option<&Gateway> {
        self.gateways.iter().find(|g| g.id == id)
    }
}

fn default_stop_words() -> BTreeMap<String, Vec<String>> {
    let w = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    BTreeMap::from([
        (
            "en".to_string(),
            w(&[
                "STOP",
                "UNSUBSCRIBE",
                "END",
                "QUIT",
                "STOPALL",
                "REVOKE",
                "OPTOUT",
                "CANCEL",
            ]),
        ),
        (
            "pl".to_string(),
            w(&["STOP", "NIE", "REZYGNUJE", "REZYGNUJĘ"]),
        ),
        ("de".to_string(), w(&["STOP", "ABMELDEN"])),
    ])
}

/// Validates `[sms]` and every `[[sms_gateway]]`.
pub(super) fn validate(
    c: &mut Checker<'_>,
    base: &Path,
    raw: &RawSms,
    gateways: &[RawGateway],
    site_currency: Option<&str>,
) -> SmsConfig {
    let mut out: Vec<Gateway> = Vec::new();
    for (i, g) in gateways.iter().enumerate() {
        if let Some(v) = gateway(c, base, i, g, &out, site_currency) {
            out.push(v);
        }
    }
    let default_gateway = match &raw.gateway {
        Some(v) if out.iter().any(|g| &g.id == v.get_ref()) => Some(v.get_ref().clone()),
        Some(v) => {
            c.at("sms.gateway", v, "no [[sms_gateway]] has this id");
            None
        }
        None => out.first().map(|g| g.id.clone()),
    };
    let quiet_hours = match &raw.quiet_hours {
        None => Some((21 * 60, 8 * 60)),
        Some(v) if v.get_ref() == "off" => None,
        Some(v) => super::automation::parse_quiet_hours(v.get_ref())
            .map_err(|e| c.at("sms.quiet_hours", v, format!("{e}, or \"off\"")))
            .ok(),
    };
    let upper = |v: &Spanned<String>| v.get_ref().trim().to_uppercase();
    let mut stop_words = default_stop_words();
    for (lang, words) in &raw.stop_words {
        stop_words.insert(lang.to_ascii_lowercase(), words.iter().map(upper).collect());
    }
    let start_words = match &raw.start_words {
        Some(w) => w.iter().map(upper).collect(),
        None => vec!["START".into(), "UNSTOP".into()],
    };
    SmsConfig {
        gateways: out,
        default_gateway,
        quiet_hours,
        max_parts: count(c, "sms.max_parts", &raw.max_parts, 10, 3),
        stop_words,
        start_words,
        brand: raw.brand.as_ref().map(upper).filter(|b| !b.is_empty()),
        max_attempts: count(c, "sms.max_attempts", &raw.max_attempts, 50, 8) as u32,
        retry_after_ms: match &raw.retry_after {
            None => Some(Duration::from_secs(30)),
            Some(v) => duration(c, "sms.retry_after", v),
        }
        .map_or(30_000, |d| d.as_millis() as i64),
    }
}

/// A cost such as "0.16" in ten-thousandths.
fn cost(s: &str) -> Option<u64> {
    let (i, f) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if i.is_empty() || !i.bytes().all(|b| b.is_ascii_digit()) || f.len() > 4 {
        return None;
    }
    if !f.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = i.parse().ok()?;
    let frac: u64 = format!("{f:0<4}").parse().ok()?;
    whole.checked_mul(10_000)?.checked_add(frac)
}

fn gateway(
    c: &mut Checker<'_>,
    base: &Path,
    i: usize,
    g: &RawGateway,
    before: &[Gateway],
    site_currency: Option<&str>,
) -> Option<Gateway> {
    let k = |name: &str| format!("sms_gateway[{i}].{name}");
    let id = c
        .required(&k("id"), &g.id, "e.g. id = \"smsapi\"")
        .and_then(|v| {
            if !is_id(v.get_ref()) {
                c.at(&k("id"), v, "use 1-64 letters, digits, `-` or `_`");
                None
            } else if before.iter().any(|o| &o.id == v.get_ref()) {
                c.at(&k("id"), v, "another [[sms_gateway]] already has this id");
                None
            } else {
                Some(v.get_ref().clone())
            }
        });
    let kind = c
        .required(&k("kind"), &g.kind, "smsapi, twilio or webhook")
        .and_then(|v| match v.get_ref().as_str() {
            "smsapi" => Some(GatewayKind::Smsapi),
            "twilio" => Some(GatewayKind::Twilio),
            "webhook" => Some(GatewayKind::Webhook),
            other => {
                c.at(
                    &k("kind"),
                    v,
                    format!("`{other}` is not one of: smsapi, twilio, webhook"),
                );
                None
            }
        });
    let base_url = match (kind, &g.base_url) {
        (_, Some(v)) => match url::Url::parse(v.get_ref()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            _ => {
                c.at(&k("base_url"), v, "must be an http:// or https:// URL");
                None
            }
        },
        (Some(GatewayKind::Smsapi), None) => url::Url::parse("https://api.smsapi.pl").ok(),
        (Some(GatewayKind::Twilio), None) => url::Url::parse("https://api.twilio.com").ok(),
        (Some(GatewayKind::Webhook), None) => {
            c.missing(&k("base_url"), "the URL messages are posted to");
            None
        }
        (None, None) => None,
    };
    let credentials = match secret(
        c,
        base,
        (&k("credentials"), &g.credentials),
        (&k("credentials_file"), &g.credentials_file),
    ) {
        Some(Some(s)) => Some(s),
        Some(None) => {
            c.missing(
                &k("credentials_file"),
                "a file with the token (SMSAPI), ACCOUNT_SID:AUTH_TOKEN (Twilio) or the signing secret (webhook)",
            );
            None
        }
        None => None,
    };
    if let (Some(GatewayKind::Twilio), Some(s)) = (kind, &credentials)
        && !s.0.contains(':')
    {
        let at = g.credentials.as_ref().or(g.credentials_file.as_ref());
        if let Some(at) = at {
            c.at(
                &k("credentials"),
                at,
                "Twilio's credentials are ACCOUNT_SID:AUTH_TOKEN",
            );
        }
    }
    let callback_secret = match secret(
        c,
        base,
        (&k("callback_secret"), &g.callback_secret),
        (&k("callback_secret_file"), &g.callback_secret_file),
    ) {
        Some(Some(s)) if s.0.chars().count() < super::values::MIN_SECRET_LEN => {
            let at = g
                .callback_secret
                .as_ref()
                .or(g.callback_secret_file.as_ref());
            if let Some(at) = at {
                c.at(
                    &k("callback_secret"),
                    at,
                    "must be at least 32 characters (e.g. `openssl rand -hex 32`)",
                );
            }
            None
        }
        Some(s) => s,
        None => None,
    };
    if callback_secret.is_none() && matches!(kind, Some(GatewayKind::Smsapi | GatewayKind::Webhook))
    {
        c.missing(
            &k("callback_secret"),
            "delivery reports and replies are checked with it; `openssl rand -hex 32`",
        );
    }
    let from = c
        .required(
            &k("from"),
            &g.from,
            "the sender name or number, e.g. from = \"Shop\"",
        )
        .map(|v| v.get_ref().clone());
    let rate_per_second = count(c, &k("rate_per_second"), &g.rate_per_second, 10_000, 10) as u32;
    let connections = count(c, &k("connections"), &g.connections, 256, 4);
    let timeout = match &g.timeout {
        None => Some(Duration::from_secs(15)),
        Some(v) => duration(c, &k("timeout"), v),
    };
    let cost_per_part = match &g.cost_per_part {
        None => Some(0),
        Some(v) => cost(v.get_ref()).or_else(|| {
            c.at(
                &k("cost_per_part"),
                v,
                "a decimal with at most 4 places, e.g. \"0.16\"",
            );
            None
        }),
    };
    let currency = match &g.currency {
        Some(v) if !is_currency(v.get_ref()) => {
            c.at(&k("currency"), v, "not a currency code such as EUR or PLN");
            None
        }
        Some(v) => Some(v.get_ref().clone()),
        None => Some(site_currency.unwrap_or("EUR").to_string()),
    };
    Some(Gateway {
        id: id?,
        kind: kind?,
        base_url: base_url?,
        credentials: credentials?,
        from: from?,
        rate_per_second,
        connections,
        timeout: timeout?,
        callback_secret,
        cost_per_part: cost_per_part?,
        currency: currency?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_parse() {
        assert_eq!(cost("0.16"), Some(1600));
        assert_eq!(cost("2"), Some(20_000));
        assert_eq!(cost("0.16505"), None);
        assert_eq!(cost("-1"), None);
    }
}
