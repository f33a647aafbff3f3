//! SPF (RFC 7208) for the MAIL FROM domain: the record parsed into its
//! terms, evaluated for each sending IP the way a receiver's `check_host`
//! does (first matching directive wins; `include`, `a`, `mx`, `ptr`,
//! `exists` and `redirect` each cost one of at most 10 DNS lookups, and
//! more than 2 lookups that find nothing are an error, §4.6.4), and walked
//! a second time in full to count the lookups any IP can cost.
//!
//! Written by hand rather than with mail-auth's parser: the fix the doctor
//! prints is the published record with terms added or replaced, so the
//! terms' own text is kept, and every lookup is counted per term. Macros
//! (`%{i}` …) are not expanded: a term with one is counted and reported as
//! not checked.

use std::net::IpAddr;
use std::pin::Pin;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::dns::Dns;
use super::{Status, Verdict, change_txt, publish_txt};

/// RFC 7208 §4.6.4: DNS-querying terms allowed in one evaluation.
pub const MAX_LOOKUPS: usize = 10;
/// RFC 7208 §4.6.4: lookups that may find nothing.
pub const MAX_VOID_LOOKUPS: usize = 2;
/// Where the counting walk stops (a record past this is plainly broken).
const COUNT_CAP: usize = 50;
/// Longest TXT value that still fits a 512-byte UDP answer comfortably.
const LONG_RECORD: usize = 450;

/// A directive's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    /// `+` (or none).
    Pass,
    /// `-`.
    Fail,
    /// `~`.
    SoftFail,
    /// `?`.
    Neutral,
}

/// A mechanism with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// `all`.
    All,
    /// `include:domain`.
    Include(String),
    /// `a[:domain][/v4][//v6]`.
    A {
        /// Target domain (the current one when absent).
        domain: Option<String>,
        /// IPv4 prefix length.
        v4: u8,
        /// IPv6 prefix length.
        v6: u8,
    },
    /// `mx[:domain][/v4][//v6]`.
    Mx {
        /// Target domain (the current one when absent).
        domain: Option<String>,
        /// IPv4 prefix length.
        v4: u8,
        /// IPv6 prefix length.
        v6: u8,
    },
    /// `ptr[:domain]` (discouraged, §5.5).
    Ptr(Option<String>),
    /// `ip4:net`.
    Ip4(Ipv4Net),
    /// `ip6:net`.
    Ip6(Ipv6Net),
    /// `exists:domain`.
    Exists(String),
}

impl Mechanism {
    /// Whether evaluating it asks DNS (and so counts toward the 10).
    fn looks_up(&self) -> bool {
        !matches!(self, Mechanism::All | Mechanism::Ip4(_) | Mechanism::Ip6(_))
    }
}

/// One term of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A mechanism with its qualifier.
    Directive(Qualifier, Mechanism),
    /// `redirect=domain`.
    Redirect(String),
    /// `exp=domain`, or a modifier unknown to RFC 7208 (ignored).
    OtherModifier,
}

/// A term and its text as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// As written.
    pub text: String,
    /// What it means.
    pub kind: Kind,
}

/// A parsed record: the terms that parse, and what is wrong with the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The terms after `v=spf1`, in order.
    pub terms: Vec<Term>,
    /// One message per term that does not parse (a receiver's permerror).
    pub errors: Vec<String>,
}

impl Record {
    /// The record's text: `v=spf1` and the terms.
    pub fn text(&self) -> String {
        let mut s = String::from("v=spf1");
        for t in &self.terms {
            s.push(' ');
            s.push_str(&t.text);
        }
        s
    }

    fn redirect(&self) -> Option<&str> {
        self.terms.iter().find_map(|t| match &t.kind {
            Kind::Redirect(d) => Some(d.as_str()),
            _ => None,
        })
    }

    fn has_all(&self) -> bool {
        self.terms
            .iter()
            .any(|t| matches!(t.kind, Kind::Directive(_, Mechanism::All)))
    }

    /// The record with `extra` terms (the sending IPs) put first, so that
    /// they match before any lookup is spent.
    pub fn with_leading(&self, extra: &[String]) -> Record {
        let mut out = self.clone();
        let new = extra
            .iter()
            .filter(|e| !self.terms.iter().any(|t| &t.text == *e))
            .filter_map(|e| {
                parse_term(e).ok().map(|kind| Term {
                    text: e.clone(),
                    kind,
                })
            });
        out.terms.splice(0..0, new);
        out
    }
}

/// Whether a TXT value is an SPF record (`v=spf1` alone or followed by a
/// space, case-insensitive).
pub fn is_spf(txt: &str) -> bool {
    let t = txt.trim_start();
    t.get(..6).is_some_and(|v| v.eq_ignore_ascii_case("v=spf1"))
        && t.as_bytes().get(6).is_none_or(|b| *b == b' ')
}

/// Parses an SPF record (the caller checked [`is_spf`]).
pub fn parse(txt: &str) -> Record {
    let mut rec = Record::default();
    let mut words = txt.split_ascii_whitespace();
    words.next();
    let mut seen_redirect = false;
    for w in words {
        match parse_term(w) {
            Ok(kind) => {
                if matches!(kind, Kind::Redirect(_)) {
                    if seen_redirect {
                        rec.errors.push(format!("`{w}`: a second redirect="));
                        continue;
                    }
                    seen_redirect = true;
                }
                rec.terms.push(Term {
                    text: w.to_string(),
                    kind,
                });
            }
            Err(e) => rec.errors.push(format!("`{w}`: {e}")),
        }
    }
    rec
}

fn parse_term(w: &str) -> Result<Kind, String> {
    // A modifier is `name=value` with a name of letters, digits, `-`, `_`
    // and `.`, starting with a letter (§12).
    if let Some((name, value)) = w.split_once('=') {
        let is_name = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if is_name {
            return match name.to_ascii_lowercase().as_str() {
                "redirect" => Ok(Kind::Redirect(domain_spec(value)?)),
                _ => Ok(Kind::OtherModifier),
            };
        }
    }
    let (qualifier, rest) = match w.as_bytes().first() {
        Some(b'+') => (Qualifier::Pass, &w[1..]),
        Some(b'-') => (Qualifier::Fail, &w[1..]),
        Some(b'~') => (Qualifier::SoftFail, &w[1..]),
        Some(b'?') => (Qualifier::Neutral, &w[1..]),
        _ => (Qualifier::Pass, w),
    };
    let split = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, arg) = rest.split_at(split);
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" if arg.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required_domain(arg)?),
        "exists" => Mechanism::Exists(required_domain(arg)?),
        "ptr" => Mechanism::Ptr(match arg.strip_prefix(':') {
            Some(d) => Some(domain_spec(d)?),
            None if arg.is_empty() => None,
            None => return Err("ptr takes no prefix length".into()),
        }),
        "a" | "mx" => {
            let (domain, cidr) = match arg.strip_prefix(':') {
                Some(d) => {
                    let end = d.find('/').unwrap_or(d.len());
                    (Some(domain_spec(&d[..end])?), &d[end..])
                }
                None => (None, arg),
            };
            let (v4, v6) = dual_cidr(cidr)?;
            if name.eq_ignore_ascii_case("a") {
                Mechanism::A { domain, v4, v6 }
            } else {
                Mechanism::Mx { domain, v4, v6 }
            }
        }
        "ip4" => {
            let v = arg.strip_prefix(':').ok_or("ip4 needs an address")?;
            let net = match v.split_once('/') {
                Some((a, l)) => Ipv4Net::new(
                    a.parse()
                        .map_err(|_| format!("`{a}` is not an IPv4 address"))?,
                    prefix(l, 32)?,
                ),
                None => Ipv4Net::new(
                    v.parse()
                        .map_err(|_| format!("`{v}` is not an IPv4 address"))?,
                    32,
                ),
            }
            .map_err(|e| e.to_string())?;
            Mechanism::Ip4(net)
        }
        "ip6" => {
            let v = arg.strip_prefix(':').ok_or("ip6 needs an address")?;
            let net = match v.rsplit_once('/') {
                Some((a, l)) => Ipv6Net::new(
                    a.parse()
                        .map_err(|_| format!("`{a}` is not an IPv6 address"))?,
                    prefix(l, 128)?,
                ),
                None => Ipv6Net::new(
                    v.parse()
                        .map_err(|_| format!("`{v}` is not an IPv6 address"))?,
                    128,
                ),
            }
            .map_err(|e| e.to_string())?;
            Mechanism::Ip6(net)
        }
        _ => return Err("not an SPF mechanism or modifier".into()),
    };
    Ok(Kind::Directive(qualifier, mechanism))
}

fn prefix(s: &str, max: u8) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(n) if n <= max && !s.starts_with('0') || s == "0" => Ok(n.min(max)),
        _ => Err(format!("`/{s}` is not a prefix length from 0 to {max}")),
    }
}

/// `[/v4][//v6]`.
fn dual_cidr(s: &str) -> Result<(u8, u8), String> {
    if s.is_empty() {
        return Ok((32, 128));
    }
    if let Some(v6) = s.strip_prefix("//") {
        return Ok((32, prefix(v6, 128)?));
    }
    let s = s.strip_prefix('/').ok_or("expected /prefix")?;
    match s.split_once("//") {
        Some((v4, v6)) => Ok((prefix(v4, 32)?, prefix(v6, 128)?)),
        None => Ok((prefix(s, 32)?, 128)),
    }
}

fn required_domain(arg: &str) -> Result<String, String> {
    domain_spec(arg.strip_prefix(':').ok_or("needs :domain")?)
}

/// A target domain: a host name, or a macro string (kept as written).
fn domain_spec(d: &str) -> Result<String, String> {
    let d = d.trim_end_matches('.');
    let ok = !d.is_empty()
        && d.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        && (d.contains('%') || d.contains('.'));
    if ok {
        Ok(d.to_ascii_lowercase())
    } else {
        Err(format!("`{d}` is not a domain"))
    }
}

fn has_macro(d: &str) -> bool {
    d.contains('%')
}

/// A receiver's answer for one IP (§2.6), with the reason where it helps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A `+` directive matched: the term and the domain whose record has it.
    Pass(String),
    /// A `-`, `~` or `?` directive matched (or none did: `?`, neutral).
    NotPass(Qualifier, Option<String>),
    /// No SPF record.
    None,
    /// The record (or one it leads to) is broken.
    PermError(PermError),
    /// A lookup failed.
    TempError(String),
    /// A term with a macro decides it; the doctor does not expand macros.
    Unknown(String),
}

/// Why an evaluation is a permerror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermError {
    /// More than 10 DNS-querying terms.
    TooManyLookups,
    /// More than 2 lookups found nothing.
    TooManyVoidLookups,
    /// Anything else: the reason, and the top-level term that leads to it
    /// (to drop it in the fix).
    Other(String, Option<String>),
}

/// One evaluation (or one full walk) of a domain's SPF tree.
struct Walk<'a, D> {
    dns: &'a D,
    lookups: usize,
    voids: usize,
    /// Domains on the current include/redirect path (loop detection).
    path: Vec<String>,
    /// Counting walk: the networks `+` directives name (for the flattened
    /// record), the terms kept as written (macros, `exists`), problems met.
    nets: Vec<IpNet>,
    kept: Vec<String>,
    problems: Vec<String>,
    /// Remarks that are not errors (a `ptr` mechanism).
    notes: Vec<String>,
    /// The `all` term that ends the top-level chain, as written.
    final_all: Option<String>,
}

type Boxed<'f, T> = Pin<Box<dyn Future<Output = T> + 'f>>;

/// What a domain's TXT records hold, SPF-wise.
enum Fetched {
    One(Record),
    Missing,
    Broken(String),
    Failed(String),
}

impl<'a, D: Dns> Walk<'a, D> {
    fn new(dns: &'a D) -> Walk<'a, D> {
        Walk {
            dns,
            lookups: 0,
            voids: 0,
            path: Vec::new(),
            nets: Vec::new(),
            kept: Vec::new(),
            problems: Vec::new(),
            notes: Vec::new(),
            final_all: None,
        }
    }

    async fn fetch(&self, domain: &str) -> Fetched {
        let txts = match self.dns.txt(domain).await {
            Ok(t) => t,
            Err(e) => return Fetched::Failed(e.0),
        };
        let spf: Vec<&String> = txts.iter().filter(|t| is_spf(t)).collect();
        match spf.as_slice() {
            [] => Fetched::Missing,
            [one] => {
                let rec = parse(one);
                if rec.errors.is_empty() {
                    Fetched::One(rec)
                } else {
                    Fetched::Broken(format!(
                        "the SPF record of {domain} does not parse: {}",
                        rec.errors.join("; ")
                    ))
                }
            }
            many => Fetched::Broken(format!("{domain} has {} SPF records", many.len())),
        }
    }

    /// Counts one DNS-querying term; `Err` once past the limit.
    fn count(&mut self) -> Result<(), Outcome> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            Err(Outcome::PermError(PermError::TooManyLookups))
        } else {
            Ok(())
        }
    }

    /// Counts a lookup that found nothing; `Err` once past the limit.
    fn void(&mut self, found: usize) -> Result<(), Outcome> {
        if found == 0 {
            self.voids += 1;
            if self.voids > MAX_VOID_LOOKUPS {
                return Err(Outcome::PermError(PermError::TooManyVoidLookups));
            }
        }
        Ok(())
    }

    /// `check_host(ip, domain)` (§4), stopping at the first match.
    fn eval(&mut self, ip: IpAddr, domain: String) -> Boxed<'_, Outcome> {
        Box::pin(async move {
            if self.path.contains(&domain) {
                return Outcome::PermError(PermError::Other(
                    format!("{domain} includes itself (a loop)"),
                    None,
                ));
            }
            let rec = match self.fetch(&domain).await {
                Fetched::One(r) => r,
                Fetched::Missing => return Outcome::None,
                Fetched::Broken(e) => return Outcome::PermError(PermError::Other(e, None)),
                Fetched::Failed(e) => return Outcome::TempError(e),
            };
            self.path.push(domain.clone());
            let out = self.eval_record(ip, &domain, &rec).await;
            self.path.pop();
            out
        })
    }

    async fn eval_record(&mut self, ip: IpAddr, domain: &str, rec: &Record) -> Outcome {
        for term in &rec.terms {
            let Kind::Directive(q, m) = &term.kind else {
                continue;
            };
            let matched = match self.matches(ip, domain, m).await {
                Ok(b) => b,
                Err(Outcome::PermError(PermError::Other(e, None))) => {
                    // Name the top-level term that leads to the error.
                    let t = (self.path.len() == 1).then(|| term.text.clone());
                    return Outcome::PermError(PermError::Other(e, t));
                }
                Err(o) => return o,
            };
            if matched {
                let at = format!("{} in the record of {domain}", term.text);
                return match q {
                    Qualifier::Pass => Outcome::Pass(at),
                    other => Outcome::NotPass(*other, Some(at)),
                };
            }
        }
        if let (Some(target), false) = (rec.redirect(), rec.has_all()) {
            if let Err(o) = self.count() {
                return o;
            }
            if has_macro(target) {
                return Outcome::Unknown(format!("redirect={target} uses a macro"));
            }
            return match self.eval(ip, target.to_string()).await {
                Outcome::None => Outcome::PermError(PermError::Other(
                    format!("redirect={target}: {target} has no SPF record"),
                    None,
                )),
                other => other,
            };
        }
        Outcome::NotPass(Qualifier::Neutral, None)
    }

    /// Whether mechanism `m` of `domain`'s record matches `ip`.
    async fn matches(&mut self, ip: IpAddr, domain: &str, m: &Mechanism) -> Result<bool, Outcome> {
        if m.looks_up() {
            self.count()?;
        }
        let target = |d: &Option<String>| d.clone().unwrap_or_else(|| domain.to_string());
        let unknown = |d: &str| Err(Outcome::Unknown(format!("`{d}` uses a macro")));
        match m {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(n) => Ok(matches!(ip, IpAddr::V4(a) if n.contains(&a))),
            Mechanism::Ip6(n) => Ok(matches!(ip, IpAddr::V6(a) if n.contains(&a))),
            Mechanism::Include(d) => {
                if has_macro(d) {
                    return unknown(d);
                }
                match self.eval(ip, d.clone()).await {
                    Outcome::Pass(_) => Ok(true),
                    Outcome::NotPass(..) => Ok(false),
                    Outcome::None => Err(Outcome::PermError(PermError::Other(
                        format!("include:{d}: {d} has no SPF record"),
                        None,
                    ))),
                    other => Err(other),
                }
            }
            Mechanism::A { domain: d, v4, v6 } => {
                let t = target(d);
                if has_macro(&t) {
                    return unknown(&t);
                }
                let addrs = self.addrs(&t).await?;
                Ok(addrs.iter().any(|a| in_net(*a, *v4, *v6, ip)))
            }
            Mechanism::Mx { domain: d, v4, v6 } => {
                let t = target(d);
                if has_macro(&t) {
                    return unknown(&t);
                }
                let hosts = self.dns.mx(&t).await.map_err(|e| Outcome::TempError(e.0))?;
                self.void(hosts.len())?;
                if hosts.len() > 10 {
                    return Err(Outcome::PermError(PermError::Other(
                        format!("mx:{t} has {} MX records (at most 10)", hosts.len()),
                        None,
                    )));
                }
                for (_, h) in hosts {
                    let addrs = self
                        .dns
                        .addrs(&h)
                        .await
                        .map_err(|e| Outcome::TempError(e.0))?;
                    if addrs.iter().any(|a| in_net(*a, *v4, *v6, ip)) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(d) => {
                let t = target(d);
                if has_macro(&t) {
                    return unknown(&t);
                }
                let names = self
                    .dns
                    .ptr(ip)
                    .await
                    .map_err(|e| Outcome::TempError(e.0))?;
                self.void(names.len())?;
                for n in names.iter().take(10) {
                    if (n == &t || n.ends_with(&format!(".{t}")))
                        && self.dns.addrs(n).await.is_ok_and(|a| a.contains(&ip))
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Exists(d) => {
                if has_macro(d) {
                    return unknown(d);
                }
                Ok(!self.addrs(d).await?.is_empty())
            }
        }
    }

    async fn addrs(&mut self, name: &str) -> Result<Vec<IpAddr>, Outcome> {
        let a = self
            .dns
            .addrs(name)
            .await
            .map_err(|e| Outcome::TempError(e.0))?;
        self.void(a.len())?;
        Ok(a)
    }

    /// Walks every branch (no IP, no early stop) to count the lookups and
    /// collect what a flattened record needs. `effective`: this record's
    /// `all` ends the top-level evaluation (the top record, or a redirect
    /// from it).
    fn walk(&mut self, domain: String, effective: bool) -> Boxed<'_, ()> {
        Box::pin(async move {
            if self.path.contains(&domain) || self.lookups > COUNT_CAP {
                return;
            }
            let rec = match self.fetch(&domain).await {
                Fetched::One(r) => r,
                Fetched::Missing => {
                    if !self.path.is_empty() {
                        self.problems.push(format!("{domain} has no SPF record"));
                    }
                    return;
                }
                Fetched::Broken(e) | Fetched::Failed(e) => {
                    self.problems.push(e);
                    return;
                }
            };
            self.path.push(domain.clone());
            for term in &rec.terms {
                let Kind::Directive(q, m) = &term.kind else {
                    continue;
                };
                if m.looks_up() {
                    self.lookups += 1;
                }
                let pass = *q == Qualifier::Pass;
                let target = |d: &Option<String>| d.clone().unwrap_or_else(|| domain.clone());
                match m {
                    Mechanism::All => {
                        if effective {
                            self.final_all = Some(term.text.clone());
                        }
                    }
                    Mechanism::Ip4(n) if pass => self.add_net(IpNet::V4(*n)),
                    Mechanism::Ip6(n) if pass => self.add_net(IpNet::V6(*n)),
                    Mechanism::Ip4(_) | Mechanism::Ip6(_) => self.keep(&term.text),
                    Mechanism::Include(d) if !has_macro(d) => {
                        self.walk(d.clone(), false).await;
                    }
                    Mechanism::A { domain: d, v4, v6 } if !has_macro(&target(d)) => {
                        if let Ok(addrs) = self.dns.addrs(&target(d)).await {
                            for a in addrs.into_iter().filter(|_| pass) {
                                self.add_net(net_of(a, *v4, *v6));
                            }
                        }
                    }
                    Mechanism::Mx { domain: d, v4, v6 } if !has_macro(&target(d)) => {
                        let hosts = self.dns.mx(&target(d)).await.unwrap_or_default();
                        for (_, h) in hosts.iter().take(10) {
                            if let Ok(addrs) = self.dns.addrs(h).await {
                                for a in addrs.into_iter().filter(|_| pass) {
                                    self.add_net(net_of(a, *v4, *v6));
                                }
                            }
                        }
                    }
                    Mechanism::Ptr(_) => {
                        self.keep(&term.text);
                        self.notes.push(format!(
                            "`{}` in the record of {domain}: the ptr mechanism is slow and \
                             discouraged (RFC 7208 §5.5); list the addresses instead",
                            term.text
                        ));
                    }
                    // Macros and `exists` cannot be flattened: kept as written.
                    _ => self.keep(&term.text),
                }
            }
            if let (Some(target), false) = (rec.redirect(), rec.has_all()) {
                self.lookups += 1;
                if !has_macro(target) {
                    self.walk(target.to_string(), effective).await;
                }
            }
            self.path.pop();
        })
    }

    fn add_net(&mut self, n: IpNet) {
        if !self.nets.contains(&n) {
            self.nets.push(n);
        }
    }

    fn keep(&mut self, t: &str) {
        if !self.kept.iter().any(|k| k == t) {
            self.kept.push(t.to_string());
        }
    }
}

fn in_net(a: IpAddr, v4: u8, v6: u8, ip: IpAddr) -> bool {
    net_of(a, v4, v6).contains(&ip)
}

fn net_of(a: IpAddr, v4: u8, v6: u8) -> IpNet {
    match a {
        IpAddr::V4(a) => {
            Ipv4Net::new(a, v4.min(32)).map_or(IpNet::V4(a.into()), |n| n.trunc().into())
        }
        IpAddr::V6(a) => {
            Ipv6Net::new(a, v6.min(128)).map_or(IpNet::V6(a.into()), |n| n.trunc().into())
        }
    }
}

/// The term that names `ip` alone.
pub fn ip_term(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("ip4:{a}"),
        IpAddr::V6(a) => format!("ip6:{a}"),
    }
}

fn net_term(n: &IpNet) -> String {
    match n {
        IpNet::V4(n) if n.prefix_len() == 32 => format!("ip4:{}", n.addr()),
        IpNet::V4(n) => format!("ip4:{n}"),
        IpNet::V6(n) if n.prefix_len() == 128 => format!("ip6:{}", n.addr()),
        IpNet::V6(n) => format!("ip6:{n}"),
    }
}

/// The SPF verdicts and whether every sending IP passes (`None`: not
/// known, no IP given or the record is missing or broken).
pub struct SpfCheck {
    /// `spf` and, when the record parses, `spf-lookups`.
    pub verdicts: Vec<Verdict>,
    /// Whether SPF passes for every IP given.
    pub passes: Option<bool>,
}

/// Checks the SPF record of `domain` (the MAIL FROM domain) for `ips`.
pub async fn check<D: Dns>(dns: &D, domain: &str, ips: &[IpAddr]) -> SpfCheck {
    let fresh = || {
        let terms: Vec<String> = if ips.is_empty() {
            vec!["ip4:SENDING-IP".into()]
        } else {
            ips.iter().map(|ip| ip_term(*ip)).collect()
        };
        format!("v=spf1 {} -all", terms.join(" "))
    };
    let txts = match dns.txt(domain).await {
        Ok(t) => t,
        Err(e) => {
            return SpfCheck {
                verdicts: vec![Verdict::fail("spf", domain, format!("cannot look up: {e}"))],
                passes: None,
            };
        }
    };
    let spf: Vec<&String> = txts.iter().filter(|t| is_spf(t)).collect();
    let record = match spf.as_slice() {
        [] => {
            let mut v = Verdict::fail("spf", domain, "no SPF record (v=spf1)")
                .fix(publish_txt(domain, &fresh()));
            if ips.is_empty() {
                v.detail
                    .push_str("; pass --ip to get the record with Herald's address in it");
            }
            return SpfCheck {
                verdicts: vec![v],
                passes: Some(false),
            };
        }
        [one] => parse(one),
        many => {
            // Receivers take several SPF records as a permerror: merge
            // them into one (every directive but `all`, one `all` last).
            let mut merged = Record::default();
            let mut all = None;
            for r in many.iter().map(|t| parse(t)) {
                for t in r.terms {
                    match t.kind {
                        Kind::Directive(_, Mechanism::All) => all = all.or(Some(t)),
                        _ if merged.terms.iter().any(|m| m.text == t.text) => {}
                        _ => merged.terms.push(t),
                    }
                }
            }
            merged.terms.extend(all);
            let v = Verdict::fail(
                "spf",
                domain,
                format!(
                    "{} SPF records: receivers treat that as an error (permerror)",
                    many.len()
                ),
            )
            .fix(format!(
                "replace them with one TXT at {domain}: \"{}\"",
                merged.text()
            ));
            return SpfCheck {
                verdicts: vec![v],
                passes: Some(false),
            };
        }
    };
    if !record.errors.is_empty() {
        let mut fixed = record.clone();
        let missing: Vec<String> = ips
            .iter()
            .map(|ip| ip_term(*ip))
            .filter(|t| !fixed.terms.iter().any(|x| &x.text == t))
            .collect();
        fixed = fixed.with_leading(&missing);
        let v = Verdict::fail(
            "spf",
            domain,
            format!(
                "the record \"{}\" does not parse (receivers: permerror): {}",
                spf.first().map_or("", |s| s.as_str()),
                record.errors.join("; ")
            ),
        )
        .fix(change_txt(domain, &fixed.text()));
        return SpfCheck {
            verdicts: vec![v],
            passes: Some(false),
        };
    }

    // The full walk: lookups any IP can cost, and the flattened record.
    let mut walk = Walk::new(dns);
    walk.walk(domain.to_string(), true).await;
    let total = walk.lookups;
    let flattened = {
        let mut terms: Vec<String> = ips
            .iter()
            .map(|ip| IpNet::from(*ip))
            .filter(|n| !walk.nets.iter().any(|w| w.contains(n)))
            .map(|n| net_term(&n))
            .collect();
        terms.extend(walk.nets.iter().map(net_term));
        terms.extend(walk.kept.iter().cloned());
        terms.extend(walk.final_all.iter().cloned());
        format!("v=spf1 {}", terms.join(" "))
    };
    let long_note = |r: &str| {
        if r.len() > LONG_RECORD {
            " (long: publish it as several quoted strings of at most 255 characters)"
        } else {
            ""
        }
    };

    let mut verdicts = Vec::new();
    let mut passes = None;
    if ips.is_empty() {
        let mut v = Verdict::warn(
            "spf",
            domain,
            format!(
                "\"{}\" is published; no sending IP given, so whether it covers Herald is not checked",
                record.text()
            ),
        )
        .fix("set source_ip in the [[sender]], or run herald doctor --ip ADDRESS with the address Herald sends from");
        if !walk.problems.is_empty() {
            v = Verdict::fail("spf", domain, walk.problems.join("; "));
        }
        verdicts.push(v);
    } else {
        let (mut verdict, pass) = ip_verdict(
            dns,
            domain,
            ips,
            &record,
            total,
            &flattened,
            long_note(&flattened),
        )
        .await;
        if verdict.status == Status::Ok && !walk.problems.is_empty() {
            // Another address would meet these.
            verdict.status = Status::Warn;
            verdict.detail = format!("{}; but {}", verdict.detail, walk.problems.join("; "));
        }
        verdicts.push(verdict);
        passes = Some(pass);
    }

    let lookups = if total > MAX_LOOKUPS {
        Verdict::fail(
            "spf-lookups",
            domain,
            format!(
                "{}{total} DNS lookups: more than {MAX_LOOKUPS} is a permerror at receivers; flatten the includes to the addresses they name today (and redo it when a provider changes them)",
                if total > COUNT_CAP { "more than " } else { "" }
            ),
        )
        .fix(change_txt(domain, &flattened) + long_note(&flattened))
    } else {
        Verdict::ok(
            "spf-lookups",
            domain,
            format!("{total} of {MAX_LOOKUPS} DNS lookups"),
        )
    };
    let lookups = match walk.notes.is_empty() {
        true => lookups,
        false => Verdict {
            status: lookups.status.max(Status::Warn),
            detail: format!("{}; {}", lookups.detail, walk.notes.join("; ")),
            ..lookups
        },
    };
    verdicts.push(lookups);
    SpfCheck { verdicts, passes }
}

/// The `spf` verdict when sending IPs are known: each evaluated as a
/// receiver would; the fix adds the ones not covered (or drops the term
/// that breaks the record, or flattens it). Also says whether all pass.
async fn ip_verdict<D: Dns>(
    dns: &D,
    domain: &str,
    ips: &[IpAddr],
    record: &Record,
    total: usize,
    flattened: &str,
    long_note: &str,
) -> (Verdict, bool) {
    let mut covered = Vec::new();
    let mut uncovered = Vec::new();
    let mut broken = None;
    let mut unknown = Vec::new();
    for &ip in ips {
        let mut w = Walk::new(dns);
        match w.eval(ip, domain.to_string()).await {
            Outcome::Pass(at) => covered.push(format!("{ip} passes ({at})")),
            Outcome::NotPass(q, at) => {
                let why = match (q, at) {
                    (Qualifier::Neutral, None) => "no term matches (neutral)".to_string(),
                    (q, Some(at)) => format!("{} by {at}", qualifier_result(q)),
                    (q, None) => qualifier_result(q).to_string(),
                };
                uncovered.push((ip, format!("{ip} is not covered: {why}")));
            }
            Outcome::None => uncovered.push((ip, format!("{ip}: no SPF record"))),
            Outcome::PermError(p) => broken = broken.or(Some(Ok(p))),
            Outcome::TempError(e) => broken = broken.or(Some(Err(e))),
            Outcome::Unknown(e) => unknown.push(format!("{ip}: not checked, {e}")),
        }
    }
    let missing: Vec<String> = uncovered.iter().map(|(ip, _)| ip_term(*ip)).collect();
    match broken {
        Some(Err(e)) => {
            return (
                Verdict::fail("spf", domain, format!("cannot evaluate: {e}")),
                false,
            );
        }
        Some(Ok(PermError::TooManyLookups)) => {
            let v = Verdict::fail(
                "spf",
                domain,
                format!(
                    "permerror: evaluating it takes more than {MAX_LOOKUPS} DNS lookups ({total} counted)"
                ),
            )
            .fix(change_txt(domain, flattened) + long_note);
            return (v, false);
        }
        Some(Ok(PermError::TooManyVoidLookups)) => {
            let v = Verdict::fail(
                "spf",
                domain,
                format!(
                    "permerror: more than {MAX_VOID_LOOKUPS} of its lookups find nothing (RFC 7208 §4.6.4)"
                ),
            )
            .fix(change_txt(domain, flattened) + long_note);
            return (v, false);
        }
        Some(Ok(PermError::Other(e, term))) => {
            let mut fixed = record.clone();
            if let Some(t) = &term {
                fixed.terms.retain(|x| &x.text != t);
            }
            let v = Verdict::fail("spf", domain, format!("permerror: {e}"))
                .fix(change_txt(domain, &fixed.with_leading(&missing).text()));
            return (v, false);
        }
        None => {}
    }
    if !uncovered.is_empty() {
        let details: Vec<&str> = uncovered.iter().map(|(_, d)| d.as_str()).collect();
        let v = Verdict::fail("spf", domain, details.join("; "))
            .fix(change_txt(domain, &record.with_leading(&missing).text()));
        return (v, false);
    }
    if !unknown.is_empty() {
        return (Verdict::warn("spf", domain, unknown.join("; ")), false);
    }
    let plus_all = |k: &Kind| matches!(k, Kind::Directive(Qualifier::Pass, Mechanism::All));
    if record.terms.iter().any(|t| plus_all(&t.kind)) {
        let mut fixed = record.clone();
        for t in fixed.terms.iter_mut().filter(|t| plus_all(&t.kind)) {
            t.text = "-all".into();
            t.kind = Kind::Directive(Qualifier::Fail, Mechanism::All);
        }
        let v = Verdict::warn(
            "spf",
            domain,
            format!(
                "{}; but `+all` lets any host on the internet pass",
                covered.join("; ")
            ),
        )
        .fix(change_txt(domain, &fixed.text()));
        return (v, true);
    }
    (Verdict::ok("spf", domain, covered.join("; ")), true)
}

fn qualifier_result(q: Qualifier) -> &'static str {
    match q {
        Qualifier::Pass => "pass",
        Qualifier::Fail => "fail",
        Qualifier::SoftFail => "softfail",
        Qualifier::Neutral => "neutral",
    }
}

#[cfg(test)]
mod tests {
    use super::super::dns::Table;
    use super::*;

    /// The sending address of the tests (a documentation address).
    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 5));

    #[test]
    fn parses_terms_and_keeps_their_text() {
        let r = parse(
            "v=spf1 +a mx:mail.shop.test/24//64 ip4:203.0.113.0/24 ip6:2001:db8::/32 include:_spf.x.test ~all exp=explain.shop.test",
        );
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let kinds: Vec<&Kind> = r.terms.iter().map(|t| &t.kind).collect();
        assert_eq!(
            kinds[0],
            &Kind::Directive(
                Qualifier::Pass,
                Mechanism::A {
                    domain: None,
                    v4: 32,
                    v6: 128
                }
            )
        );
        assert_eq!(
            kinds[1],
            &Kind::Directive(
                Qualifier::Pass,
                Mechanism::Mx {
                    domain: Some("mail.shop.test".into()),
                    v4: 24,
                    v6: 64
                }
            )
        );
        assert!(matches!(kinds[2], Kind::Directive(_, Mechanism::Ip4(n)) if n.prefix_len() == 24));
        assert!(matches!(kinds[3], Kind::Directive(_, Mechanism::Ip6(n)) if n.prefix_len() == 32));
        assert_eq!(
            kinds[4],
            &Kind::Directive(Qualifier::Pass, Mechanism::Include("_spf.x.test".into()))
        );
        assert_eq!(
            kinds[5],
            &Kind::Directive(Qualifier::SoftFail, Mechanism::All)
        );
        assert_eq!(kinds[6], &Kind::OtherModifier);
        assert_eq!(
            r.text(),
            "v=spf1 +a mx:mail.shop.test/24//64 ip4:203.0.113.0/24 ip6:2001:db8::/32 include:_spf.x.test ~all exp=explain.shop.test"
        );
    }

    #[test]
    fn bad_terms_are_errors_and_the_rest_is_kept() {
        let r = parse(
            "v=spf1 ip4:203.0.113.300 include: foo:bar ip4:1.2.3.4/33 a/99 redirect=a.test redirect=b.test ip4:1.2.3.4 -all",
        );
        assert_eq!(r.errors.len(), 6, "{:?}", r.errors);
        assert_eq!(r.text(), "v=spf1 redirect=a.test ip4:1.2.3.4 -all");
        assert!(is_spf("v=spf1 -all"));
        assert!(is_spf("V=SPF1"));
        assert!(!is_spf("v=spf10 -all"));
        assert!(!is_spf("v=DMARC1; p=none"));
    }

    #[test]
    fn terms_are_added_before_everything_else() {
        let r = parse("v=spf1 include:x.test ~all");
        assert_eq!(
            r.with_leading(&["ip4:203.0.113.5".into()]).text(),
            "v=spf1 ip4:203.0.113.5 include:x.test ~all"
        );
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
    }

    async fn eval(t: &Table, ip: IpAddr, d: &str) -> (Outcome, usize) {
        let mut w = Walk::new(t);
        let o = w.eval(ip, d.to_string()).await;
        (o, w.lookups)
    }

    #[tokio::test]
    async fn evaluation_follows_includes_a_mx_and_redirect() {
        let t = Table::default()
            .with_txt(
                "shop.test",
                "v=spf1 a mx include:_spf.esp.test redirect=_spf.shop.test",
            )
            .with_addr("shop.test", "203.0.113.1")
            .with_mx("shop.test", 10, "mx.shop.test")
            .with_addr("mx.shop.test", "203.0.113.2")
            .with_txt("_spf.esp.test", "v=spf1 ip4:198.51.100.0/24 -all")
            .with_txt("_spf.shop.test", "v=spf1 ip6:2001:db8::/48 ~all");
        assert!(
            matches!(eval(&t, v4(203, 0, 113, 1), "shop.test").await.0, Outcome::Pass(at) if at.starts_with("a in"))
        );
        assert!(
            matches!(eval(&t, v4(203, 0, 113, 2), "shop.test").await.0, Outcome::Pass(at) if at.starts_with("mx in"))
        );
        let (o, n) = eval(&t, v4(198, 51, 100, 7), "shop.test").await;
        assert!(matches!(o, Outcome::Pass(at) if at.contains("_spf.esp.test")));
        assert_eq!(n, 3);
        assert!(matches!(
            eval(
                &t,
                IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5)),
                "shop.test"
            )
            .await
            .0,
            Outcome::Pass(_)
        ));
        let (o, n) = eval(&t, v4(192, 0, 2, 9), "shop.test").await;
        assert_eq!(
            o,
            Outcome::NotPass(
                Qualifier::SoftFail,
                Some("~all in the record of _spf.shop.test".into())
            )
        );
        assert_eq!(n, 4);
        assert_eq!(
            eval(&t, v4(192, 0, 2, 9), "none.test").await.0,
            Outcome::None
        );
    }

    #[tokio::test]
    async fn eleven_lookups_are_a_permerror_but_an_early_match_is_not() {
        let mut t = Table::default().with_txt(
            "shop.test",
            "v=spf1 ip4:203.0.113.5 include:a1.test include:a2.test include:a3.test include:a4.test include:a5.test include:a6.test -all",
        );
        for i in 1..=6 {
            t = t.with_txt(&format!("a{i}.test"), &format!("v=spf1 a:h{i}.test -all"));
        }
        // 12 lookups in all, but 203.0.113.5 matches before the first.
        assert!(matches!(
            eval(&t, v4(203, 0, 113, 5), "shop.test").await.0,
            Outcome::Pass(_)
        ));
        let (o, _) = eval(&t, v4(192, 0, 2, 1), "shop.test").await;
        // The a: targets find nothing: the third void lookup comes first.
        assert_eq!(o, Outcome::PermError(PermError::TooManyVoidLookups));
        for i in 1..=6 {
            t = t.with_addr(&format!("h{i}.test"), &format!("198.51.100.{i}"));
        }
        let (o, n) = eval(&t, v4(192, 0, 2, 1), "shop.test").await;
        assert_eq!(o, Outcome::PermError(PermError::TooManyLookups));
        assert_eq!(n, 11);
        let mut w = Walk::new(&t);
        w.walk("shop.test".into(), true).await;
        assert_eq!(w.lookups, 12);
        assert_eq!(w.final_all.as_deref(), Some("-all"));
        assert_eq!(w.nets.len(), 7);
    }

    #[tokio::test]
    async fn loops_missing_includes_and_macros() {
        let t = Table::default()
            .with_txt("loop.test", "v=spf1 include:loop.test -all")
            .with_txt("gone.test", "v=spf1 include:nothing.test -all")
            .with_txt("macro.test", "v=spf1 exists:%{i}.bl.test -all");
        assert!(
            matches!(eval(&t, v4(192, 0, 2, 1), "loop.test").await.0, Outcome::PermError(PermError::Other(e, Some(t))) if e.contains("loop") && t == "include:loop.test")
        );
        assert!(
            matches!(eval(&t, v4(192, 0, 2, 1), "gone.test").await.0, Outcome::PermError(PermError::Other(e, _)) if e.contains("nothing.test has no SPF record"))
        );
        assert!(matches!(
            eval(&t, v4(192, 0, 2, 1), "macro.test").await.0,
            Outcome::Unknown(_)
        ));
    }

    #[tokio::test]
    async fn verdicts_name_the_record_to_publish() {
        let ips = [IP];
        let t = Table::default();
        let c = check(&t, "shop.test", &ips).await;
        assert_eq!(c.verdicts[0].status, Status::Fail);
        assert_eq!(
            c.verdicts[0].fix.as_deref(),
            Some("publish TXT at shop.test: \"v=spf1 ip4:203.0.113.5 -all\"")
        );

        let t = Table::default()
            .with_txt("shop.test", "v=spf1 include:esp.test ~all")
            .with_txt("esp.test", "v=spf1 ip4:198.51.100.0/24 -all");
        let c = check(&t, "shop.test", &ips).await;
        assert_eq!(c.passes, Some(false));
        assert!(
            c.verdicts[0]
                .detail
                .contains("203.0.113.5 is not covered: softfail by ~all"),
            "{}",
            c.verdicts[0].detail
        );
        assert_eq!(
            c.verdicts[0].fix.as_deref(),
            Some("change TXT at shop.test to: \"v=spf1 ip4:203.0.113.5 include:esp.test ~all\"")
        );
        assert_eq!(c.verdicts[1].status, Status::Ok);
        assert_eq!(c.verdicts[1].detail, "1 of 10 DNS lookups");

        let t = Table::default()
            .with_txt("shop.test", "v=spf1 ip4:203.0.113.5 -all")
            .with_txt("shop.test", "v=spf1 include:esp.test ~all");
        let c = check(&t, "shop.test", &ips).await;
        assert_eq!(
            c.verdicts[0].fix.as_deref(),
            Some(
                "replace them with one TXT at shop.test: \"v=spf1 ip4:203.0.113.5 include:esp.test -all\""
            )
        );
    }

    #[tokio::test]
    async fn too_many_lookups_are_fixed_by_flattening() {
        let mut rec = String::from("v=spf1");
        let mut t = Table::default();
        for i in 1..=11 {
            rec.push_str(&format!(" include:e{i}.test"));
            t = t.with_txt(
                &format!("e{i}.test"),
                &format!("v=spf1 ip4:198.51.100.{i} -all"),
            );
        }
        rec.push_str(" -all");
        let t = t.with_txt("shop.test", &rec);
        let c = check(&t, "shop.test", &[IP]).await;
        assert_eq!(c.verdicts[0].status, Status::Fail);
        assert!(
            c.verdicts[0].detail.contains("more than 10 DNS lookups"),
            "{}",
            c.verdicts[0].detail
        );
        let lookups = &c.verdicts[1];
        assert_eq!(lookups.check, "spf-lookups");
        assert_eq!(lookups.status, Status::Fail);
        let fix = lookups.fix.as_deref().unwrap_or_default();
        assert!(fix.starts_with("change TXT at shop.test to: \"v=spf1 ip4:203.0.113.5 ip4:198.51.100.1 ip4:198.51.100.2 "), "{fix}");
        assert!(fix.ends_with(" ip4:198.51.100.11 -all\""), "{fix}");
    }
}
