//! DMARC (RFC 7489): the record at `_dmarc.<From domain>` (or, without
//! one, at the organizational domain's), its policy, and whether the
//! domains DMARC compares with From line up: DKIM's `d=` (always the From
//! domain in Herald) and the MAIL FROM domain (the bounce domain, or the
//! return path's), relaxed or strict as `adkim=` / `aspf=` say.

use super::dns::Dns;
use super::{Verdict, change_txt, org_domain, publish_txt};

/// A parsed DMARC record: its tags in order, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `(name, value)`, names lower case.
    pub tags: Vec<(String, String)>,
}

impl Record {
    /// A tag's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The record with `name` set to `value` (added at the end when
    /// absent).
    pub fn with(&self, name: &str, value: &str) -> Record {
        let mut out = self.clone();
        match out.tags.iter_mut().find(|(k, _)| k == name) {
            Some(t) => t.1 = value.to_string(),
            None => out.tags.push((name.to_string(), value.to_string())),
        }
        out
    }

    /// The record's text.
    pub fn text(&self) -> String {
        self.tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Whether `aspf=s` (strict SPF alignment).
    pub fn strict_spf(&self) -> bool {
        self.get("aspf")
            .is_some_and(|v| v.eq_ignore_ascii_case("s"))
    }

    /// Whether `adkim=s`.
    pub fn strict_dkim(&self) -> bool {
        self.get("adkim")
            .is_some_and(|v| v.eq_ignore_ascii_case("s"))
    }
}

/// Whether a TXT value is a DMARC record (`v=DMARC1` first).
pub fn is_dmarc(txt: &str) -> bool {
    txt.split(';')
        .next()
        .and_then(|t| t.split_once('='))
        .is_some_and(|(k, v)| k.trim() == "v" && v.trim() == "DMARC1")
}

/// Parses a DMARC record and checks the tags a receiver needs: `p=`
/// present and valid, `sp=`, `adkim=`, `aspf=` and `pct=` valid when
/// present. On error, the record as parsed comes back with the reasons.
pub fn parse(txt: &str) -> Result<Record, (Record, Vec<String>)> {
    let tags: Vec<(String, String)> = txt
        .split(';')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_string()),
            None => (t.to_ascii_lowercase(), String::new()),
        })
        .collect();
    let rec = Record { tags };
    let mut errors = Vec::new();
    let policy = |v: &str| matches!(v, "none" | "quarantine" | "reject");
    match rec.get("p") {
        None => errors.push("p= (the policy) is missing".to_string()),
        Some(p) if !policy(p) => errors.push(format!("p={p} is not none, quarantine or reject")),
        Some(_) => {}
    }
    if let Some(sp) = rec.get("sp").filter(|v| !policy(v)) {
        errors.push(format!("sp={sp} is not none, quarantine or reject"));
    }
    for a in ["adkim", "aspf"] {
        if let Some(v) = rec.get(a).filter(|v| !matches!(*v, "r" | "s")) {
            errors.push(format!("{a}={v} is not r or s"));
        }
    }
    if let Some(v) = rec
        .get("pct")
        .filter(|v| v.parse::<u8>().map_or(true, |n| n > 100))
    {
        errors.push(format!("pct={v} is not a number from 0 to 100"));
    }
    if errors.is_empty() {
        Ok(rec)
    } else {
        Err((rec, errors))
    }
}

/// Whether `a` and `b` are aligned (RFC 7489 §3.1): the same name when
/// strict, the same organizational domain when relaxed.
pub fn aligned(a: &str, b: &str, strict: bool) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    if strict {
        a == b
    } else {
        org_domain(&a) == org_domain(&b)
    }
}

/// What DMARC compares, for one sender.
pub struct Identity<'a> {
    /// The sender id (for config fixes).
    pub sender: &'a str,
    /// The From domain.
    pub from: &'a str,
    /// The MAIL FROM domain.
    pub envelope: &'a str,
    /// Whether the MAIL FROM domain is a `bounce_domain` (else the
    /// return path's domain).
    pub has_bounce_domain: bool,
    /// SPF passes for every sending IP (`None`: unknown).
    pub spf_passes: Option<bool>,
    /// At least one DKIM key's record is published right.
    pub dkim_passes: bool,
    /// A mailbox for `rua=`.
    pub rua: &'a str,
}

/// The `dmarc` and `dmarc-alignment` verdicts.
pub async fn check<D: Dns>(dns: &D, id: &Identity<'_>) -> Vec<Verdict> {
    let own = format!("_dmarc.{}", id.from);
    let org = org_domain(id.from);
    let mut names = vec![own.clone()];
    if org != id.from {
        names.push(format!("_dmarc.{org}"));
    }
    let fresh = format!("v=DMARC1; p=none; rua=mailto:{}", id.rua);
    let mut out = Vec::new();
    let mut found = None;
    for name in &names {
        let txts = match dns.txt(name).await {
            Ok(t) => t,
            Err(e) => {
                out.push(Verdict::fail("dmarc", name, format!("cannot look up: {e}")));
                return out;
            }
        };
        let recs: Vec<String> = txts.into_iter().filter(|t| is_dmarc(t)).collect();
        if !recs.is_empty() {
            found = Some((name.clone(), recs));
            break;
        }
    }
    let mut policy_record = None;
    match found {
        None => out.push(
            Verdict::fail(
                "dmarc",
                &own,
                format!(
                    "no DMARC record{}: mailbox providers require one of bulk senders",
                    if org == id.from {
                        String::new()
                    } else {
                        format!(" (nor at _dmarc.{org})")
                    }
                ),
            )
            .fix(publish_txt(&own, &fresh)),
        ),
        Some((name, recs)) if recs.len() > 1 => out.push(
            Verdict::fail(
                "dmarc",
                &name,
                format!("{} DMARC records: receivers then apply none", recs.len()),
            )
            .fix(format!(
                "replace them with one TXT at {name}: \"{}\"",
                recs.first().map_or(fresh.as_str(), |r| r.as_str())
            )),
        ),
        Some((name, recs)) => {
            let inherited = name != own;
            match parse(recs.first().map_or("", |r| r.as_str())) {
                Err((rec, errors)) => {
                    let mut fixed = Record {
                        tags: vec![("v".into(), "DMARC1".into())],
                    };
                    let p = rec
                        .get("p")
                        .filter(|p| matches!(*p, "none" | "quarantine" | "reject"))
                        .unwrap_or("none");
                    fixed.tags.push(("p".into(), p.into()));
                    for (k, v) in &rec.tags {
                        let ok = match k.as_str() {
                            "v" | "p" => false,
                            "sp" => matches!(v.as_str(), "none" | "quarantine" | "reject"),
                            "adkim" | "aspf" => matches!(v.as_str(), "r" | "s"),
                            "pct" => v.parse::<u8>().is_ok_and(|n| n <= 100),
                            _ => true,
                        };
                        if ok {
                            fixed.tags.push((k.clone(), v.clone()));
                        }
                    }
                    out.push(
                        Verdict::fail(
                            "dmarc",
                            &name,
                            format!("the record does not parse: {}", errors.join("; ")),
                        )
                        .fix(change_txt(&name, &fixed.text())),
                    );
                }
                Ok(rec) => {
                    // A subdomain without its own record gets sp= (else p=).
                    let (tag, policy) = match (inherited, rec.get("sp")) {
                        (true, Some(sp)) => ("sp", sp),
                        _ => ("p", rec.get("p").unwrap_or("none")),
                    };
                    let whose = if inherited {
                        format!(" (inherited from {name})")
                    } else {
                        String::new()
                    };
                    let pct = rec
                        .get("pct")
                        .filter(|p| *p != "100")
                        .map(|p| format!(", applied to {p}% of failing mail"))
                        .unwrap_or_default();
                    let rua = if rec.get("rua").is_none() {
                        "; no rua=, so no aggregate reports come back"
                    } else {
                        ""
                    };
                    let v = if policy == "none" {
                        Verdict::warn(
                            "dmarc",
                            &name,
                            format!(
                                "{tag}=none{whose}: monitoring only, failing mail is still delivered{rua}"
                            ),
                        )
                        .fix(change_txt(
                            &name,
                            &rec.with(tag, "quarantine").text(),
                        ) + " once the reports show your mail passing")
                    } else if !rua.is_empty() {
                        Verdict::warn("dmarc", &name, format!("{tag}={policy}{whose}{pct}{rua}"))
                            .fix(change_txt(
                                &name,
                                &rec.with("rua", &format!("mailto:{}", id.rua)).text(),
                            ))
                    } else {
                        Verdict::ok("dmarc", &name, format!("{tag}={policy}{whose}{pct}"))
                    };
                    out.push(v);
                    policy_record = Some((name, rec));
                }
            }
        }
    }
    out.push(alignment(id, policy_record.as_ref()));
    out
}

/// `dmarc-alignment`: DMARC passes when DKIM or SPF passes *aligned*.
fn alignment(id: &Identity<'_>, record: Option<&(String, Record)>) -> Verdict {
    let strict_spf = record.is_some_and(|(_, r)| r.strict_spf());
    let strict_dkim = record.is_some_and(|(_, r)| r.strict_dkim());
    let mode = |s: bool| if s { "strict" } else { "relaxed" };
    // Herald signs with d= the From domain: aligned in either mode.
    let dkim_ok = id.dkim_passes && aligned(id.from, id.from, strict_dkim);
    let spf_domain_ok = aligned(id.envelope, id.from, strict_spf);
    let spf_ok = spf_domain_ok && id.spf_passes != Some(false);
    let dkim_words = if dkim_ok {
        format!("DKIM d={} aligns", id.from)
    } else {
        "no DKIM signature passes (see dkim)".to_string()
    };
    let spf_words = match (spf_domain_ok, id.spf_passes) {
        (true, Some(true)) => format!(
            "SPF passes for MAIL FROM {} ({} alignment)",
            id.envelope,
            mode(strict_spf)
        ),
        (true, None) => format!(
            "MAIL FROM {} aligns ({}; SPF not evaluated without --ip)",
            id.envelope,
            mode(strict_spf)
        ),
        (true, Some(false)) => format!(
            "MAIL FROM {} aligns but SPF does not pass (see spf)",
            id.envelope
        ),
        (false, _) => format!(
            "MAIL FROM {} does not align with From {} ({} alignment)",
            id.envelope,
            id.from,
            mode(strict_spf)
        ),
    };
    let detail = format!("{dkim_words}; {spf_words}");
    let spf_fix = || {
        if !spf_domain_ok && strict_spf && aligned(id.envelope, id.from, false) {
            let (name, rec) = record
                .map(|(n, r)| (n.as_str(), r.clone()))
                .unwrap_or_default();
            change_txt(name, &rec.with("aspf", "r").text())
        } else if !spf_domain_ok {
            let suggestion = format!("bounces.{}", id.from);
            format!(
                "set bounce_domain = \"{suggestion}\" in [[sender]] id = \"{}\" (a name under {} aligns), with its MX at Herald's inbound listener{}",
                id.sender,
                org_domain(id.from),
                if id.has_bounce_domain {
                    ""
                } else {
                    " (or a return_path at the From domain)"
                }
            )
        } else {
            "fix the spf check above".into()
        }
    };
    match (dkim_ok, spf_ok) {
        (true, true) => Verdict::ok("dmarc-alignment", id.from, detail),
        (true, false) => Verdict::warn(
            "dmarc-alignment",
            id.from,
            format!("{detail}: DMARC rests on DKIM alone"),
        )
        .fix(spf_fix()),
        (false, true) => Verdict::warn(
            "dmarc-alignment",
            id.from,
            format!("{detail}: DMARC rests on SPF alone, which forwarding breaks"),
        )
        .fix("fix the dkim check above"),
        (false, false) => {
            Verdict::fail("dmarc-alignment", id.from, format!("{detail}: DMARC fails")).fix(
                if spf_domain_ok {
                    "fix the dkim or the spf check above".to_string()
                } else {
                    format!("fix the dkim check above, or {}", spf_fix())
                },
            )
        }
    }
}

impl Default for Record {
    fn default() -> Record {
        Record {
            tags: vec![("v".into(), "DMARC1".into()), ("p".into(), "none".into())],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::dns::Table;
    use super::*;

    #[test]
    fn parses_and_rebuilds_records() {
        let Ok(r) = parse("v=DMARC1; p=none; rua=mailto:d@shop.test; aspf=s") else {
            panic!("a good record does not parse");
        };
        assert_eq!(r.get("p"), Some("none"));
        assert!(r.strict_spf());
        assert!(!r.strict_dkim());
        assert_eq!(
            r.with("p", "quarantine").text(),
            "v=DMARC1; p=quarantine; rua=mailto:d@shop.test; aspf=s"
        );
        assert_eq!(
            r.with("pct", "50").text(),
            "v=DMARC1; p=none; rua=mailto:d@shop.test; aspf=s; pct=50"
        );
        let (_, errs) = parse("v=DMARC1; p=maybe; aspf=x; pct=200").unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        let (_, errs) = parse("v=DMARC1; rua=mailto:x@y.test").unwrap_err();
        assert!(errs[0].contains("p= (the policy) is missing"));
        assert!(is_dmarc("v=DMARC1;p=reject"));
        assert!(!is_dmarc("v=spf1 -all"));
    }

    #[test]
    fn alignment_relaxed_and_strict() {
        assert!(aligned("bounces.shop.test", "shop.test", false));
        assert!(!aligned("bounces.shop.test", "shop.test", true));
        assert!(aligned("shop.test", "SHOP.test", true));
        assert!(!aligned("bounces.mailer.test", "shop.test", false));
        assert!(aligned("b.shop.co.uk", "news.shop.co.uk", false));
        assert!(!aligned("a.co.uk", "b.co.uk", false));
    }

    fn id<'a>(envelope: &'a str, spf: Option<bool>, dkim: bool) -> Identity<'a> {
        Identity {
            sender: "shop",
            from: "shop.test",
            envelope,
            has_bounce_domain: true,
            spf_passes: spf,
            dkim_passes: dkim,
            rua: "postmaster@bounces.shop.test",
        }
    }

    #[tokio::test]
    async fn verdicts_and_fixes() {
        let t = Table::default();
        let v = check(&t, &id("bounces.shop.test", Some(true), true)).await;
        assert_eq!(v[0].status, Status::Fail);
        assert_eq!(
            v[0].fix.as_deref(),
            Some(
                "publish TXT at _dmarc.shop.test: \"v=DMARC1; p=none; rua=mailto:postmaster@bounces.shop.test\""
            )
        );
        assert_eq!(v[1].status, Status::Ok, "{}", v[1].detail);

        let t = Table::default().with_txt(
            "_dmarc.shop.test",
            "v=DMARC1; p=none; rua=mailto:d@shop.test",
        );
        let v = check(&t, &id("bounces.shop.test", Some(true), true)).await;
        assert_eq!(v[0].status, Status::Warn);
        assert!(v[0].fix.as_deref().unwrap_or_default().starts_with(
            "change TXT at _dmarc.shop.test to: \"v=DMARC1; p=quarantine; rua=mailto:d@shop.test\""
        ));

        // Strict SPF alignment with a bounce subdomain: relax it.
        let t = Table::default().with_txt(
            "_dmarc.shop.test",
            "v=DMARC1; p=reject; rua=mailto:d@shop.test; aspf=s",
        );
        let v = check(&t, &id("bounces.shop.test", Some(true), false)).await;
        assert_eq!(v[0].status, Status::Ok);
        assert_eq!(v[1].status, Status::Fail);
        assert!(v[1].fix.as_deref().unwrap_or_default().contains(
            "change TXT at _dmarc.shop.test to: \"v=DMARC1; p=reject; rua=mailto:d@shop.test; aspf=r\""
        ), "{:?}", v[1].fix);

        // Inherited from the organizational domain, with sp=.
        let t = Table::default().with_txt(
            "_dmarc.shop.test",
            "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@shop.test",
        );
        let mut i = id("bounces.mailer.test", Some(true), true);
        i.from = "news.shop.test";
        let v = check(&t, &i).await;
        assert_eq!(v[0].name, "_dmarc.shop.test");
        assert!(
            v[0].detail.starts_with("sp=quarantine (inherited"),
            "{}",
            v[0].detail
        );
        assert_eq!(v[1].status, Status::Warn);
        assert!(
            v[1].fix
                .as_deref()
                .unwrap_or_default()
                .contains("bounce_domain = \"bounces.news.shop.test\"")
        );

        let t = Table::default().with_txt("_dmarc.shop.test", "v=DMARC1; p=block; aspf=r");
        let v = check(&t, &id("shop.test", None, true)).await;
        assert_eq!(v[0].status, Status::Fail);
        assert_eq!(
            v[0].fix.as_deref(),
            Some("change TXT at _dmarc.shop.test to: \"v=DMARC1; p=none; aspf=r\"")
        );
    }
}
