//! `herald doctor`: reads the DNS of every sender's domains and says, check
//! by check, whether receivers will find what they look for, and if not,
//! the exact record to publish or change.
//!
//! One file per family of checks, each a pure part (parsing a record,
//! evaluating it) with unit tests and an async part that asks DNS through
//! [`dns::Dns`]: `spf` (present, covers the sending IP, at most 10 DNS
//! lookups), `dkim` (each selector's TXT holds the configured key), `dmarc`
//! (present, policy, alignment of the DKIM and MAIL FROM domains with From),
//! `ptr` (reverse DNS of the sending IP, forward-confirmed, the EHLO name),
//! `mx` (the bounce domain's MX reaches Herald's inbound listener),
//! `mta_sts` (the MTA-STS and TLS-RPT TXT records). The doctor only reads:
//! it changes nothing and sends nothing.
//!
//! Organizational domains (for DMARC's relaxed alignment and its fallback
//! to the organization's record) are approximated by [`org_domain`]: the
//! last two labels, or three under a short list of two-label public
//! suffixes (`co.uk`, `com.au`…). It does not read the Public Suffix List.

mod dkim;
mod dmarc;
mod dns;
mod mta_sts;
mod mx;
mod ptr;
mod spf;

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use crate::config::{Config, Sender};
use dns::Dns;
pub use dns::{DnsError, Hickory};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As receivers want it.
    Ok,
    /// Works, but weaker than it should be, or could not be checked.
    Warn,
    /// Receivers will reject or distrust mail: fix it.
    Fail,
}

/// One check's result for one sender.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The `[[sender]]` id.
    pub sender: String,
    /// The sender's From domain (what the output is grouped by).
    pub domain: String,
    /// Which check: `spf`, `spf-lookups`, `dkim`, `dmarc`,
    /// `dmarc-alignment`, `ptr`, `mx`, `mta-sts`, `tls-rpt`.
    pub check: &'static str,
    /// The DNS name (or IP address) the check looked at.
    pub name: String,
    /// The outcome.
    pub status: Status,
    /// What was found, in words.
    pub detail: String,
    /// What to publish or change, exactly, when something should change.
    pub fix: Option<String>,
}

impl Verdict {
    fn new(check: &'static str, name: &str, status: Status, detail: impl Into<String>) -> Verdict {
        Verdict {
            sender: String::new(),
            domain: String::new(),
            check,
            name: name.to_string(),
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    fn ok(check: &'static str, name: &str, detail: impl Into<String>) -> Verdict {
        Verdict::new(check, name, Status::Ok, detail)
    }

    fn warn(check: &'static str, name: &str, detail: impl Into<String>) -> Verdict {
        Verdict::new(check, name, Status::Warn, detail)
    }

    fn fail(check: &'static str, name: &str, detail: impl Into<String>) -> Verdict {
        Verdict::new(check, name, Status::Fail, detail)
    }

    fn fix(mut self, fix: impl Into<String>) -> Verdict {
        self.fix = Some(fix.into());
        self
    }
}

/// `publish TXT at NAME: "VALUE"`.
fn publish_txt(name: &str, value: &str) -> String {
    format!("publish TXT at {name}: \"{value}\"")
}

/// `change TXT at NAME to: "VALUE"`.
fn change_txt(name: &str, value: &str) -> String {
    format!("change TXT at {name} to: \"{value}\"")
}

/// `A` for an IPv4 address, `AAAA` for IPv6.
fn addr_type(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "A" } else { "AAAA" }
}

/// Two-label public suffixes under which organizations register a third
/// label. A short list, not the Public Suffix List: enough for the common
/// country domains; anything else counts as a one-label suffix.
const TWO_LABEL_SUFFIXES: &[&str] = &[
    "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "ltd.uk", "plc.uk", "com.au", "net.au",
    "org.au", "edu.au", "gov.au", "co.nz", "org.nz", "net.nz", "co.jp", "ne.jp", "or.jp", "ac.jp",
    "co.za", "org.za", "com.br", "net.br", "org.br", "com.mx", "com.ar", "com.cn", "net.cn",
    "org.cn", "com.tw", "com.hk", "com.sg", "co.in", "net.in", "org.in", "co.kr", "or.kr", "co.il",
    "com.tr", "com.ua", "co.id", "com.my", "com.ph", "com.vn", "co.th",
];

/// The organizational domain of `domain` (RFC 7489 §3.2), approximated:
/// the last two labels, or the last three when the last two are one of
/// [`TWO_LABEL_SUFFIXES`].
pub fn org_domain(domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = d.split('.').collect();
    let keep = match labels.len() {
        0..=2 => return d,
        n => {
            let last_two = labels[n - 2..].join(".");
            if TWO_LABEL_SUFFIXES.contains(&last_two.as_str()) {
                3
            } else {
                2
            }
        }
    };
    labels[labels.len().saturating_sub(keep)..].join(".")
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The addresses Herald sends from (`--ip`); empty: each sender's
    /// `source_ip`, and without one the checks that need it warn.
    pub ips: Vec<IpAddr>,
    /// Only this `[[sender]]` (`--sender`).
    pub sender: Option<String>,
}

/// Why the doctor could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// `--sender` names no sender.
    #[error("no [[sender]] has id `{0}` (configured: {1})")]
    NoSuchSender(String, String),
    /// The config has no sender.
    #[error("the configuration has no [[sender]]: nothing to check")]
    NoSenders,
    /// The resolver could not be built.
    #[error("{0}")]
    Resolver(String),
}

/// Runs every check for the configured senders with the resolver delivery
/// uses (`[delivery] nameserver`, else the system's).
pub async fn run(config: &Config, options: &Options) -> Result<Vec<Verdict>, DoctorError> {
    let resolver =
        crate::delivery::mx::resolver(config.delivery.nameserver).map_err(DoctorError::Resolver)?;
    examine(&Hickory(resolver), config, options).await
}

/// [`run`] with any [`Dns`].
pub(crate) async fn examine<D: Dns>(
    dns: &D,
    config: &Config,
    options: &Options,
) -> Result<Vec<Verdict>, DoctorError> {
    if config.senders.is_empty() {
        return Err(DoctorError::NoSenders);
    }
    let senders: Vec<&Sender> = config
        .senders
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| options.sender.as_ref().is_none_or(|id| &s.id == id))
        .collect();
    if let (Some(id), true) = (&options.sender, senders.is_empty()) {
        let ids: Vec<&str> = config.senders.iter().map(|s| s.id.as_str()).collect();
        return Err(DoctorError::NoSuchSender(id.clone(), ids.join(", ")));
    }
    let mut out = Vec::new();
    for s in senders {
        let mut found = sender_checks(dns, config, s, options).await;
        for v in &mut found {
            v.sender.clone_from(&s.id);
            v.domain.clone_from(&s.domain);
        }
        out.extend(found);
    }
    Ok(out)
}

/// The address reports (DMARC `rua`, TLS-RPT) are best sent to: the
/// postmaster at the bounce domain, which Herald's inbound listener keeps,
/// or a `dmarc-reports@` mailbox at the From domain.
fn report_mailbox(s: &Sender) -> String {
    match &s.bounce_domain {
        Some(b) => format!("postmaster@{b}"),
        None => format!("dmarc-reports@{}", s.domain),
    }
}

async fn sender_checks<D: Dns>(
    dns: &D,
    config: &Config,
    s: &Sender,
    options: &Options,
) -> Vec<Verdict> {
    // `--ip` wins: behind NAT, `source_ip` is not the address receivers
    // see; through a relay, the relay's address is, which Herald does not
    // know.
    let ips = if options.ips.is_empty() {
        s.source_ip
            .filter(|_| s.relay.is_none())
            .into_iter()
            .collect()
    } else {
        options.ips.clone()
    };
    let envelope = s
        .bounce_domain
        .clone()
        .unwrap_or_else(|| crate::config::domain_of(&s.return_path));
    let mut out = Vec::new();

    let spf = spf::check(dns, &envelope, &ips).await;
    let spf_passes = spf.passes;
    out.extend(spf.verdicts);

    let dkim = dkim::check(dns, s).await;
    let dkim_passes = dkim.iter().any(|v| v.status == Status::Ok);
    out.extend(dkim);

    out.extend(
        dmarc::check(
            dns,
            &dmarc::Identity {
                sender: &s.id,
                from: &s.domain,
                envelope: &envelope,
                has_bounce_domain: s.bounce_domain.is_some(),
                spf_passes,
                dkim_passes,
                rua: &report_mailbox(s),
            },
        )
        .await,
    );

    if ips.is_empty() {
        out.push(
            Verdict::warn(
                "ptr",
                &s.helo,
                "no sending IP known: reverse DNS and the EHLO name are not checked",
            )
            .fix("set source_ip in the [[sender]], or run herald doctor --ip ADDRESS with the address Herald sends from"),
        );
    }
    for &ip in &ips {
        out.push(ptr::check(dns, ip, &s.helo, &s.id).await);
    }

    let bounces = mx::Bounces {
        id: &s.id,
        domain: &s.domain,
        return_path: &s.return_path,
        bounce_domain: s.bounce_domain.as_deref(),
    };
    out.push(
        mx::check(
            dns,
            &bounces,
            &config.inbound,
            &inbound_hostname(config),
            &ips,
        )
        .await,
    );

    let mut domains = vec![s.domain.clone()];
    if let Some(b) = s.bounce_domain.as_ref().filter(|b| **b != s.domain) {
        domains.push(b.clone());
    }
    for d in &domains {
        out.extend(mta_sts::check(dns, d, &report_mailbox(s)).await);
    }
    out
}

/// The name the inbound listener gives in its banner, as
/// `inbound::listen` picks it: `[inbound] hostname`, else the first
/// sender's bounce domain, else `localhost`.
fn inbound_hostname(config: &Config) -> String {
    config
        .inbound
        .hostname
        .clone()
        .or_else(|| config.senders.iter().find_map(|s| s.bounce_domain.clone()))
        .unwrap_or_else(|| "localhost".into())
}

/// The verdicts as text: one block per sender, one line per check, the fix
/// under it, and a summary line.
pub fn render_text(verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    let mut current: Option<(&str, &str)> = None;
    for v in verdicts {
        if current != Some((v.sender.as_str(), v.domain.as_str())) {
            if current.is_some() {
                out.push('\n');
            }
            let _ = writeln!(out, "{} (sender {})", v.domain, v.sender);
            current = Some((&v.sender, &v.domain));
        }
        let status = match v.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        let _ = writeln!(
            out,
            "  {status:<5} {:<16} {}: {}",
            v.check, v.name, v.detail
        );
        if let Some(fix) = &v.fix {
            let _ = writeln!(out, "        fix: {fix}");
        }
    }
    let fails = verdicts.iter().filter(|v| v.status == Status::Fail).count();
    let warns = verdicts.iter().filter(|v| v.status == Status::Warn).count();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let _ = writeln!(
        out,
        "\n{}: {}, {}",
        plural(verdicts.len(), "check"),
        plural(fails, "failure"),
        plural(warns, "warning")
    );
    out
}

/// The exit status: 1 when any check failed, else 0.
pub fn exit_code(verdicts: &[Verdict]) -> u8 {
    u8::from(verdicts.iter().any(|v| v.status == Status::Fail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organizational_domains() {
        for (d, org) in [
            ("shop.test", "shop.test"),
            ("bounces.shop.test", "shop.test"),
            ("a.b.shop.example", "shop.example"),
            ("mail.shop.co.uk", "shop.co.uk"),
            ("shop.co.uk", "shop.co.uk"),
            ("Shop.Test.", "shop.test"),
            ("localhost", "localhost"),
        ] {
            assert_eq!(org_domain(d), org, "{d}");
        }
    }

    #[test]
    fn text_groups_by_sender_and_shows_fixes() {
        let mut a = Verdict::ok("spf", "shop.test", "passes");
        a.sender = "shop".into();
        a.domain = "shop.test".into();
        let mut b = Verdict::fail("dkim", "s1._domainkey.shop.test", "missing")
            .fix(publish_txt("s1._domainkey.shop.test", "v=DKIM1; p=x"));
        b.sender = "shop".into();
        b.domain = "shop.test".into();
        let text = render_text(&[a, b.clone()]);
        assert!(text.starts_with("shop.test (sender shop)\n  ok    spf "));
        assert!(text.contains(
            "  FAIL  dkim             s1._domainkey.shop.test: missing\n        fix: publish TXT at s1._domainkey.shop.test: \"v=DKIM1; p=x\"\n"
        ));
        assert!(text.ends_with("2 checks: 1 failure, 0 warnings\n"));
        assert_eq!(exit_code(&[b]), 1);
        assert_eq!(exit_code(&[]), 0);
    }
}
