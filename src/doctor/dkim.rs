//! DKIM (RFC 6376 §3.6.1): for each key of a sender, the TXT record at
//! `selector._domainkey.domain` must hold that key, as `herald dkim keygen`
//! printed it (the same value as `DkimKey::dns_record`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::dns::Dns;
use super::{Verdict, change_txt, publish_txt};
use crate::config::Sender;
use crate::delivery::dkim::{Algorithm, DkimKey, MIN_RSA_BITS, rsa_public_bits};

/// The tags of a DKIM key record, in order: names lower case, values
/// trimmed, white space removed from `p=` (a key may be folded).
pub fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|t| {
            let (k, v) = t.split_once('=')?;
            let k = k.trim().to_ascii_lowercase();
            let v = if k == "p" {
                v.chars().filter(|c| !c.is_whitespace()).collect()
            } else {
                v.trim().to_string()
            };
            Some((k, v))
        })
        .collect()
}

fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Whether a TXT value looks like a DKIM key record (`v=DKIM1` first, or
/// a `p=` tag without a `v=`).
fn is_key_record(txt: &str) -> bool {
    let t = tags(txt);
    match t.first() {
        Some((k, v)) if k == "v" => v == "DKIM1",
        _ => tag(&t, "p").is_some(),
    }
}

/// What a published record says about `key`.
#[derive(Debug, PartialEq, Eq)]
pub enum Comparison {
    /// The record holds the key.
    Matches,
    /// `t=y`: verifiers may treat failures as if unsigned.
    Testing,
    /// Something else; the words say what.
    Differs(String),
}

/// Compares a published record with the key Herald signs with.
pub fn compare(published: &str, key: &DkimKey) -> Comparison {
    let ours = tags(&key.dns_record);
    let theirs = tags(published);
    let want_p = tag(&ours, "p").unwrap_or_default();
    if let Some(v) = tag(&theirs, "v").filter(|v| *v != "DKIM1") {
        return Comparison::Differs(format!("v={v} is not DKIM1"));
    }
    let k = tag(&theirs, "k").unwrap_or("rsa");
    if !k.eq_ignore_ascii_case(key.algorithm.as_str()) {
        return Comparison::Differs(format!(
            "the record says k={k}, the key in {} is {}",
            key.path.display(),
            key.algorithm.as_str()
        ));
    }
    match tag(&theirs, "p") {
        None => return Comparison::Differs("the record has no p= (public key)".into()),
        Some("") => return Comparison::Differs("p= is empty: the key is revoked".into()),
        Some(p) if p != want_p => {
            let size = match (
                key.algorithm,
                B64.decode(p).ok().and_then(|d| rsa_public_bits(&d)),
            ) {
                (Algorithm::Rsa, Some(bits)) if bits < MIN_RSA_BITS => format!(
                    " (it publishes a {bits}-bit RSA key; at least {MIN_RSA_BITS} bits are needed)"
                ),
                (Algorithm::Rsa, Some(bits)) => {
                    format!(" (it publishes another {bits}-bit RSA key)")
                }
                _ => String::new(),
            };
            return Comparison::Differs(format!(
                "the published key is not the one in {}{size}",
                key.path.display()
            ));
        }
        Some(_) => {}
    }
    if tag(&theirs, "t").is_some_and(|t| t.split(':').any(|f| f.trim() == "y")) {
        return Comparison::Testing;
    }
    Comparison::Matches
}

fn describe(key: &DkimKey) -> String {
    match key.algorithm {
        Algorithm::Rsa => format!("rsa {}-bit", key.bits),
        Algorithm::Ed25519 => "ed25519".into(),
    }
}

/// One verdict per DKIM key of `sender` (one failing verdict when it has
/// none).
pub async fn check<D: Dns>(dns: &D, sender: &Sender) -> Vec<Verdict> {
    if sender.dkim.is_empty() {
        let sel = "s1";
        return vec![
            Verdict::fail(
                "dkim",
                &sender.domain,
                "no DKIM key is configured: mail goes out unsigned, and DMARC rests on SPF alone",
            )
            .fix(format!(
                "run herald dkim keygen --domain {d} --selector {sel}, add [[sender.dkim]] selector = \"{sel}\" with its key_file to [[sender]] id = \"{id}\", and publish the TXT record it prints",
                d = sender.domain,
                id = sender.id
            )),
        ];
    }
    let mut out = Vec::new();
    for key in &sender.dkim {
        let name = format!("{}._domainkey.{}", key.selector, key.domain);
        let txts = match dns.txt(&name).await {
            Ok(t) => t,
            Err(e) => {
                out.push(Verdict::fail("dkim", &name, format!("cannot look up: {e}")));
                continue;
            }
        };
        let records: Vec<&String> = txts.iter().filter(|t| is_key_record(t)).collect();
        let v = match records.as_slice() {
            [] => Verdict::fail(
                "dkim",
                &name,
                format!(
                    "no DKIM record for selector {} ({} key in {})",
                    key.selector,
                    describe(key),
                    key.path.display()
                ),
            )
            .fix(publish_txt(&name, &key.dns_record)),
            [one] => match compare(one, key) {
                Comparison::Matches => Verdict::ok(
                    "dkim",
                    &name,
                    format!("{} key matches {}", describe(key), key.path.display()),
                ),
                Comparison::Testing => Verdict::warn(
                    "dkim",
                    &name,
                    "the key matches, but t=y (testing) lets verifiers ignore failures",
                )
                .fix(change_txt(&name, &key.dns_record)),
                Comparison::Differs(why) => {
                    Verdict::fail("dkim", &name, why).fix(change_txt(&name, &key.dns_record))
                }
            },
            many => Verdict::fail(
                "dkim",
                &name,
                format!("{} DKIM records: verifiers take one at random", many.len()),
            )
            .fix(format!(
                "replace them with one TXT at {name}: \"{}\"",
                key.dns_record
            )),
        };
        out.push(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::dkim::keygen;

    #[test]
    fn tags_are_trimmed_and_keys_unfolded() {
        let t = tags(" v=DKIM1 ; k = rsa; p=MIIB Ijan\tBgk ; t=y:s");
        assert_eq!(tag(&t, "v"), Some("DKIM1"));
        assert_eq!(tag(&t, "k"), Some("rsa"));
        assert_eq!(tag(&t, "p"), Some("MIIBIjanBgk"));
        assert_eq!(tag(&t, "t"), Some("y:s"));
        assert!(is_key_record("v=DKIM1; p="));
        assert!(is_key_record("k=rsa; p=abc"));
        assert!(!is_key_record("v=spf1 -all"));
        assert!(!is_key_record("v=DKIM2; p=abc"));
    }

    #[test]
    fn published_records_against_the_key() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let a = dir.path().join("a.pem");
        let b = dir.path().join("b.pem");
        let ga = keygen("shop.test", "s1", Algorithm::Rsa, &a)?;
        let gb = keygen("shop.test", "s1", Algorithm::Rsa, &b)?;
        let key = DkimKey::load(&a, "shop.test", "s1")?;
        assert_eq!(compare(&ga.record_value, &key), Comparison::Matches);
        // Folded into strings with spaces, as some DNS consoles show it.
        let folded = ga.record_value.replacen("p=", "p= ", 1);
        assert_eq!(compare(&folded, &key), Comparison::Matches);
        assert!(matches!(compare(&gb.record_value, &key),
            Comparison::Differs(w) if w.contains("another 2048-bit RSA key")));
        assert!(matches!(compare("v=DKIM1; k=rsa; p=", &key),
            Comparison::Differs(w) if w.contains("revoked")));
        assert!(matches!(compare("v=DKIM1; k=ed25519; p=abc", &key),
            Comparison::Differs(w) if w.contains("k=ed25519")));
        assert_eq!(
            compare(&format!("{}; t=y", ga.record_value), &key),
            Comparison::Testing
        );
        Ok(())
    }
}
