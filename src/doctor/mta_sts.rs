//! A domain's own MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) records: what
//! tells other servers to deliver to it over verified TLS, and where to
//! report when they cannot. Only the TXT records are read; the MTA-STS
//! policy file (`https://mta-sts.<domain>/.well-known/mta-sts.txt`) is not
//! fetched. Missing records are warnings: mail flows without them.

use super::dns::Dns;
use super::{Verdict, change_txt, publish_txt};

/// Whether `id` is a valid MTA-STS policy id: 1 to 32 letters and digits.
pub fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `(name, value)` pairs of a `;`-separated record, trimmed.
fn fields(txt: &str) -> Vec<(String, String)> {
    txt.split(';')
        .filter_map(|f| {
            let (k, v) = f.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn starts_with_version(txt: &str, version: &str) -> bool {
    fields(txt)
        .first()
        .is_some_and(|(k, v)| k == "v" && v == version)
}

/// What is wrong with an MTA-STS TXT record, if anything.
pub fn sts_problem(txt: &str) -> Option<String> {
    match fields(txt).iter().find(|(k, _)| k == "id") {
        None => Some("no id=".into()),
        Some((_, id)) if !valid_id(id) => Some(format!("id={id} is not 1-32 letters and digits")),
        Some(_) => None,
    }
}

/// What is wrong with a TLS-RPT TXT record, if anything.
pub fn tlsrpt_problem(txt: &str) -> Option<String> {
    match fields(txt).iter().find(|(k, _)| k == "rua") {
        None => Some("no rua= (where reports go)".into()),
        Some((_, rua))
            if !rua
                .split(',')
                .all(|u| u.trim().starts_with("mailto:") || u.trim().starts_with("https:")) =>
        {
            Some(format!("rua={rua} is not a list of mailto: or https: URIs"))
        }
        Some(_) => None,
    }
}

/// The `mta-sts` and `tls-rpt` verdicts for `domain`; `rua` is the mailbox
/// to suggest for TLS reports.
pub async fn check<D: Dns>(dns: &D, domain: &str, rua: &str) -> Vec<Verdict> {
    let id = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let sts_value = format!("v=STSv1; id={id}");
    let rpt_value = format!("v=TLSRPTv1; rua=mailto:{rua}");
    let policy = format!("https://mta-sts.{domain}/.well-known/mta-sts.txt");
    let sts = one(
        dns,
        "mta-sts",
        &format!("_mta-sts.{domain}"),
        "STSv1",
        &sts_value,
        sts_problem,
        &format!("no MTA-STS record: senders may deliver to {domain} without verified TLS (it also needs the policy at {policy})"),
        &format!(" (the policy at {policy} is not fetched)"),
    )
    .await;
    let rpt = one(
        dns,
        "tls-rpt",
        &format!("_smtp._tls.{domain}"),
        "TLSRPTv1",
        &rpt_value,
        tlsrpt_problem,
        "no TLS-RPT record: nobody reports TLS failures delivering to this domain",
        "",
    )
    .await;
    vec![sts, rpt]
}

#[allow(clippy::too_many_arguments)]
async fn one<D: Dns>(
    dns: &D,
    check: &'static str,
    name: &str,
    version: &str,
    fresh: &str,
    problem: fn(&str) -> Option<String>,
    missing: &str,
    ok_note: &str,
) -> Verdict {
    let txts = match dns.txt(name).await {
        Ok(t) => t,
        Err(e) => return Verdict::warn(check, name, format!("cannot look up: {e}")),
    };
    let recs: Vec<&String> = txts
        .iter()
        .filter(|t| starts_with_version(t, version))
        .collect();
    match recs.as_slice() {
        [] => Verdict::warn(check, name, missing).fix(publish_txt(name, fresh)),
        [one] => match problem(one) {
            None => Verdict::ok(check, name, format!("\"{one}\"{ok_note}")),
            Some(p) => {
                Verdict::warn(check, name, format!("\"{one}\": {p}")).fix(change_txt(name, fresh))
            }
        },
        many => Verdict::warn(
            check,
            name,
            format!(
                "{} v={version} records: senders ignore them all",
                many.len()
            ),
        )
        .fix(format!("replace them with one TXT at {name}: \"{fresh}\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::dns::Table;
    use super::*;

    #[test]
    fn records() {
        assert!(valid_id("20260101T0"));
        assert!(!valid_id(""));
        assert!(!valid_id("a-b"));
        assert_eq!(sts_problem("v=STSv1; id=abc"), None);
        assert!(sts_problem("v=STSv1;").is_some());
        assert_eq!(
            tlsrpt_problem("v=TLSRPTv1; rua=mailto:a@b.test,https://r.test/x"),
            None
        );
        assert!(tlsrpt_problem("v=TLSRPTv1; rua=a@b.test").is_some());
    }

    #[tokio::test]
    async fn missing_is_a_warning_with_the_record() {
        let t =
            Table::default().with_txt("_smtp._tls.shop.test", "v=TLSRPTv1; rua=mailto:t@shop.test");
        let v = check(&t, "shop.test", "postmaster@bounces.shop.test").await;
        assert_eq!(v[0].status, Status::Warn);
        assert!(
            v[0].fix
                .as_deref()
                .unwrap_or_default()
                .starts_with("publish TXT at _mta-sts.shop.test: \"v=STSv1; id=")
        );
        assert_eq!(v[1].status, Status::Ok);
    }
}
