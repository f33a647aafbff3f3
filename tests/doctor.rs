//! `herald doctor` against dnsmasq: one domain with every record right
//! (exit 0, `--json` parses) and domains with a broken SPF, DKIM, DMARC or
//! PTR record, each of which must be named with the record that fixes it.
//! The sending IPs are documentation addresses given with `--ip`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine;
use common::peers::{Dns, keygen, openssl};
use serde_json::Value;

/// The DKIM key all senders sign with (RSA 2048, from `herald dkim
/// keygen`) and a 1024-bit RSA key's record, made once per test run.
struct Keys {
    dir: tempfile::TempDir,
    /// `v=DKIM1; k=rsa; p=…` of the signing key.
    record: String,
    /// A record holding a 1024-bit key that is not the signing key.
    small_record: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let record = keygen(
            &d.join("herald.toml"),
            "shop.test",
            "s1",
            "rsa",
            &d.join("k1.pem"),
        );
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:1024",
                "-out",
                "small.pem",
            ],
        );
        openssl(
            d,
            &[
                "pkey",
                "-in",
                "small.pem",
                "-pubout",
                "-outform",
                "DER",
                "-out",
                "small.der",
            ],
        );
        let der = std::fs::read(d.join("small.der")).unwrap();
        let small_record = format!(
            "v=DKIM1; k=rsa; p={}",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        Keys {
            dir,
            record,
            small_record,
        }
    })
}

/// A TXT record for dnsmasq: the value split into strings of at most 255
/// characters (dnsmasq takes each comma-separated part as one string).
fn txt(name: &str, value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!("--txt-record={name},{}", parts.join(","))
}

/// Every record of every test domain.
fn records(k: &Keys) -> Vec<String> {
    let mut r = vec![
        // Reverse lookups outside dnsmasq's own records are NXDOMAIN.
        "--local=/in-addr.arpa/".to_string(),
        // shop.test: everything right.
        txt("bounces.shop.test", "v=spf1 ip4:203.0.113.0/24 -all"),
        txt("shop.test", "v=spf1 ip4:203.0.113.0/24 -all"),
        txt("s1._domainkey.shop.test", &k.record),
        txt(
            "_dmarc.shop.test",
            "v=DMARC1; p=reject; rua=mailto:postmaster@bounces.shop.test",
        ),
        "--host-record=mail.shop.test,203.0.113.5".into(),
        "--mx-host=bounces.shop.test,mx.shop.test,10".into(),
        "--host-record=mx.shop.test,127.0.0.1".into(),
        // spfother.test: SPF that does not name the sending IP.
        txt("spfother.test", "v=spf1 include:_spf.esp.test ~all"),
        txt("_spf.esp.test", "v=spf1 ip4:198.51.100.0/24 -all"),
        // misaligned.test: MAIL FROM at another organization.
        txt("mailer.test", "v=spf1 ip4:203.0.113.5 -all"),
        txt("s1._domainkey.misaligned.test", &k.record),
        txt(
            "_dmarc.misaligned.test",
            "v=DMARC1; p=reject; rua=mailto:d@misaligned.test",
        ),
        // strict.test: strict SPF alignment with a subdomain, no DKIM.
        txt("b.strict.test", "v=spf1 ip4:203.0.113.5 -all"),
        txt(
            "_dmarc.strict.test",
            "v=DMARC1; p=reject; aspf=s; rua=mailto:d@strict.test",
        ),
        // dkim2.test: a 1024-bit key that is not Herald's.
        txt("s1._domainkey.dkim2.test", &k.small_record),
        // dmarcnone.test: monitoring only.
        txt(
            "_dmarc.dmarcnone.test",
            "v=DMARC1; p=none; rua=mailto:d@dmarcnone.test",
        ),
        // ptr.test: .9 has no PTR, .10's PTR does not resolve back, .11's
        // PTR is another name than the EHLO name.
        "--ptr-record=10.113.0.203.in-addr.arpa,ghost.ptr.test".into(),
        "--host-record=ghost.ptr.test,203.0.113.99".into(),
        "--host-record=host11.isp.test,203.0.113.11".into(),
        // src.test: the sending address is the sender's source_ip.
        txt("src.test", "v=spf1 ip4:203.0.113.20 -all"),
        "--host-record=mail.src.test,203.0.113.20".into(),
    ];
    for d in ["shop.test", "bounces.shop.test"] {
        r.push(txt(&format!("_mta-sts.{d}"), "v=STSv1; id=20260101"));
        r.push(txt(
            &format!("_smtp._tls.{d}"),
            "v=TLSRPTv1; rua=mailto:postmaster@bounces.shop.test",
        ));
    }
    // spfmany.test: eleven includes, one lookup too many.
    let mut many = String::from("v=spf1");
    for i in 1..=11 {
        many.push_str(&format!(" include:i{i}.esp.test"));
        r.push(txt(
            &format!("i{i}.esp.test"),
            &format!("v=spf1 ip4:198.51.100.{i} -all"),
        ));
    }
    many.push_str(" -all");
    r.push(txt("spfmany.test", &many));
    r
}

const SENDERS: &str = r#"
[inbound]
listen = "127.0.0.1:2525"
hostname = "mx.shop.test"

[[sender]]
id = "shop"
from = "Shop <news@shop.test>"
bounce_domain = "bounces.shop.test"
helo = "mail.shop.test"
[[sender.dkim]]
selector = "s1"
key_file = "keys/k1.pem"

[[sender]]
id = "nospf"
from = "news@nospf.test"

[[sender]]
id = "spfip"
from = "news@spfother.test"

[[sender]]
id = "spfmany"
from = "news@spfmany.test"

[[sender]]
id = "nodkimrec"
from = "news@dkim1.test"
[[sender.dkim]]
selector = "s1"
key_file = "keys/k1.pem"

[[sender]]
id = "wrongkey"
from = "news@dkim2.test"
[[sender.dkim]]
selector = "s1"
key_file = "keys/k1.pem"

[[sender]]
id = "nodmarc"
from = "news@nodmarc.test"

[[sender]]
id = "dmarcnone"
from = "news@dmarcnone.test"

[[sender]]
id = "misaligned"
from = "news@misaligned.test"
return_path = "bounces@mailer.test"
[[sender.dkim]]
selector = "s1"
key_file = "keys/k1.pem"

[[sender]]
id = "strict"
from = "news@strict.test"
return_path = "b@b.strict.test"

[[sender]]
id = "src"
from = "news@src.test"
helo = "mail.src.test"
source_ip = "203.0.113.20"

[[sender]]
id = "ptr"
from = "news@ptr.test"
helo = "mail.ptr.test"
"#;

/// dnsmasq with [`records`] and a config naming it.
struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    _dns: Dns,
}

fn setup() -> Setup {
    let k = keys();
    let dns = Dns::start(&records(k));
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    std::fs::copy(k.dir.path().join("k1.pem"), keys_dir.join("k1.pem")).unwrap();
    let config = dir.path().join("herald.toml");
    let extra = format!(
        "[delivery]\nnameserver = \"127.0.0.1:{}\"\n{SENDERS}",
        dns.port
    );
    std::fs::write(
        &config,
        common::config_text(&dir.path().join("data"), &extra),
    )
    .unwrap();
    Setup {
        _dir: dir,
        config,
        _dns: dns,
    }
}

fn doctor(config: &Path, args: &[&str]) -> (i32, String, String) {
    common::run(config, &[&["doctor"], args].concat())
}

/// `herald doctor --json --sender ID --ip IP…`: the exit code and verdicts.
fn verdicts(config: &Path, sender: &str, ips: &[&str]) -> (i32, Vec<Value>) {
    let mut args = vec!["--json", "--sender", sender];
    for ip in ips {
        args.extend(["--ip", ip]);
    }
    let (code, out, err) = doctor(config, &args);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("--json output does not parse ({e}): {out}\n{err}"));
    (code, v.as_array().expect("an array of verdicts").clone())
}

/// The verdict of `check` at `name`.
fn find<'a>(vs: &'a [Value], check: &str, name: &str) -> &'a Value {
    vs.iter()
        .find(|v| v["check"] == check && v["name"] == name)
        .unwrap_or_else(|| panic!("no {check} verdict for {name} in {vs:#?}"))
}

/// Asserts `check` at `name` came out `status` with exactly `fix`.
fn assert_fix(vs: &[Value], check: &str, name: &str, status: &str, fix: &str) {
    let v = find(vs, check, name);
    assert_eq!(v["status"], status, "{v:#}");
    assert_eq!(v["fix"].as_str(), Some(fix), "{v:#}");
}

#[test]
fn a_domain_with_every_record_right_passes_every_check() {
    let s = setup();
    let (code, out, err) = doctor(&s.config, &["--sender", "shop", "--ip", "203.0.113.5"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("shop.test (sender shop)\n"), "{out}");
    assert!(
        !out.contains("  FAIL ") && !out.contains("  warn ") && !out.contains("fix:"),
        "{out}"
    );
    assert!(out.ends_with("0 failures, 0 warnings\n"), "{out}");
    assert!(
        out.contains("  ok    dkim             s1._domainkey.shop.test: rsa 2048-bit key matches")
    );
    assert!(out.contains(
        "  ok    ptr              203.0.113.5: 203.0.113.5 -> mail.shop.test -> 203.0.113.5, the EHLO name"
    ));
    assert!(out.contains(
        "  ok    mx               bounces.shop.test: MX mx.shop.test resolves to the listener's address 127.0.0.1"
    ));

    let (code, vs) = verdicts(&s.config, "shop", &["203.0.113.5"]);
    assert_eq!(code, 0);
    let mut checks: Vec<&str> = vs.iter().filter_map(|v| v["check"].as_str()).collect();
    checks.dedup();
    assert_eq!(
        checks,
        [
            "spf",
            "spf-lookups",
            "dkim",
            "dmarc",
            "dmarc-alignment",
            "ptr",
            "mx",
            "mta-sts",
            "tls-rpt",
            "mta-sts",
            "tls-rpt"
        ]
    );
    for v in &vs {
        assert_eq!(v["status"], "ok", "{v:#}");
        assert_eq!(v["sender"], "shop");
        assert_eq!(v["domain"], "shop.test");
        assert!(v["fix"].is_null());
    }

    // Without --ip the IP checks warn, and nothing fails.
    let (code, vs) = verdicts(&s.config, "shop", &[]);
    assert_eq!(code, 0);
    assert_eq!(find(&vs, "spf", "bounces.shop.test")["status"], "warn");
    assert_eq!(find(&vs, "ptr", "mail.shop.test")["status"], "warn");
}

#[test]
fn broken_spf_is_named_with_the_record_to_publish() {
    let s = setup();
    let ip = "203.0.113.5";

    let (code, vs) = verdicts(&s.config, "nospf", &[ip]);
    assert_eq!(code, 1);
    assert_fix(
        &vs,
        "spf",
        "nospf.test",
        "fail",
        "publish TXT at nospf.test: \"v=spf1 ip4:203.0.113.5 -all\"",
    );

    let (code, vs) = verdicts(&s.config, "spfip", &[ip]);
    assert_eq!(code, 1);
    assert_fix(
        &vs,
        "spf",
        "spfother.test",
        "fail",
        "change TXT at spfother.test to: \"v=spf1 ip4:203.0.113.5 include:_spf.esp.test ~all\"",
    );
    let v = find(&vs, "spf", "spfother.test");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("203.0.113.5 is not covered: softfail by ~all"),
        "{v:#}"
    );
    assert_eq!(find(&vs, "spf-lookups", "spfother.test")["status"], "ok");

    let (code, vs) = verdicts(&s.config, "spfmany", &[ip]);
    assert_eq!(code, 1);
    let flat: Vec<String> = (1..=11).map(|i| format!("ip4:198.51.100.{i}")).collect();
    let fix = format!(
        "change TXT at spfmany.test to: \"v=spf1 ip4:203.0.113.5 {} -all\"",
        flat.join(" ")
    );
    assert_fix(&vs, "spf-lookups", "spfmany.test", "fail", &fix);
    assert_fix(&vs, "spf", "spfmany.test", "fail", &fix);
    let v = find(&vs, "spf-lookups", "spfmany.test");
    assert!(
        v["detail"].as_str().unwrap().starts_with("11 DNS lookups"),
        "{v:#}"
    );

    // The text shows the fix under the failing line.
    let (_, out, _) = doctor(&s.config, &["--sender", "nospf", "--ip", ip]);
    assert!(
        out.contains(
            "  FAIL  spf              nospf.test: no SPF record (v=spf1)\n        fix: publish TXT at nospf.test: \"v=spf1 ip4:203.0.113.5 -all\"\n"
        ),
        "{out}"
    );
}

#[test]
fn broken_dkim_is_named_with_the_record_to_publish() {
    let s = setup();
    let k = keys();
    let (code, vs) = verdicts(&s.config, "nodkimrec", &["203.0.113.5"]);
    assert_eq!(code, 1);
    assert_fix(
        &vs,
        "dkim",
        "s1._domainkey.dkim1.test",
        "fail",
        &format!("publish TXT at s1._domainkey.dkim1.test: \"{}\"", k.record),
    );

    let (code, vs) = verdicts(&s.config, "wrongkey", &["203.0.113.5"]);
    assert_eq!(code, 1);
    assert_fix(
        &vs,
        "dkim",
        "s1._domainkey.dkim2.test",
        "fail",
        &format!(
            "change TXT at s1._domainkey.dkim2.test to: \"{}\"",
            k.record
        ),
    );
    let v = find(&vs, "dkim", "s1._domainkey.dkim2.test");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("it publishes a 1024-bit RSA key; at least 2048 bits are needed"),
        "{v:#}"
    );

    // A sender without keys is told how to make one.
    let (_, vs) = verdicts(&s.config, "nodmarc", &["203.0.113.5"]);
    let v = find(&vs, "dkim", "nodmarc.test");
    assert_eq!(v["status"], "fail");
    assert!(
        v["fix"]
            .as_str()
            .unwrap()
            .starts_with("run herald dkim keygen --domain nodmarc.test --selector s1")
    );
}

#[test]
fn broken_dmarc_is_named_with_the_record_to_publish() {
    let s = setup();
    let ip = "203.0.113.5";
    let (code, vs) = verdicts(&s.config, "nodmarc", &[ip]);
    assert_eq!(code, 1);
    assert_fix(
        &vs,
        "dmarc",
        "_dmarc.nodmarc.test",
        "fail",
        "publish TXT at _dmarc.nodmarc.test: \"v=DMARC1; p=none; rua=mailto:dmarc-reports@nodmarc.test\"",
    );

    let (_, vs) = verdicts(&s.config, "dmarcnone", &[ip]);
    assert_fix(
        &vs,
        "dmarc",
        "_dmarc.dmarcnone.test",
        "warn",
        "change TXT at _dmarc.dmarcnone.test to: \"v=DMARC1; p=quarantine; rua=mailto:d@dmarcnone.test\" once the reports show your mail passing",
    );

    // MAIL FROM at another organization: DMARC rests on DKIM alone.
    let (_, vs) = verdicts(&s.config, "misaligned", &[ip]);
    assert_eq!(
        find(&vs, "dkim", "s1._domainkey.misaligned.test")["status"],
        "ok"
    );
    assert_eq!(find(&vs, "spf", "mailer.test")["status"], "ok");
    assert_fix(
        &vs,
        "dmarc-alignment",
        "misaligned.test",
        "warn",
        "set bounce_domain = \"bounces.misaligned.test\" in [[sender]] id = \"misaligned\" (a name under misaligned.test aligns), with its MX at Herald's inbound listener (or a return_path at the From domain)",
    );

    // Strict SPF alignment and no DKIM: DMARC fails; relaxing aspf fixes it.
    let (code, vs) = verdicts(&s.config, "strict", &[ip]);
    assert_eq!(code, 1);
    assert_eq!(find(&vs, "dmarc", "_dmarc.strict.test")["status"], "ok");
    assert_fix(
        &vs,
        "dmarc-alignment",
        "strict.test",
        "fail",
        "fix the dkim check above, or change TXT at _dmarc.strict.test to: \"v=DMARC1; p=reject; aspf=r; rua=mailto:d@strict.test\"",
    );
}

#[test]
fn broken_reverse_dns_is_named_with_its_fix() {
    let s = setup();
    let (code, vs) = verdicts(
        &s.config,
        "ptr",
        &["203.0.113.9", "203.0.113.10", "203.0.113.11"],
    );
    assert_eq!(code, 1);
    assert_fix(
        &vs,
        "ptr",
        "203.0.113.9",
        "fail",
        "set the PTR of 203.0.113.9 (9.113.0.203.in-addr.arpa) to mail.ptr.test (at the provider of the address), and publish A at mail.ptr.test: 203.0.113.9",
    );
    assert_fix(
        &vs,
        "ptr",
        "203.0.113.10",
        "fail",
        "publish A at ghost.ptr.test: 203.0.113.10",
    );
    let v = find(&vs, "ptr", "203.0.113.10");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("not forward-confirmed: ghost.ptr.test resolves to 203.0.113.99"),
        "{v:#}"
    );
    assert_fix(
        &vs,
        "ptr",
        "203.0.113.11",
        "warn",
        "set helo = \"host11.isp.test\" in [[sender]] id = \"ptr\", or set the PTR of 203.0.113.11 to mail.ptr.test, and publish A at mail.ptr.test: 203.0.113.11",
    );
}

#[test]
fn the_sending_address_defaults_to_source_ip() {
    let s = setup();
    let (_, vs) = verdicts(&s.config, "src", &[]);
    assert_eq!(find(&vs, "spf", "src.test")["status"], "ok");
    let v = find(&vs, "ptr", "203.0.113.20");
    assert_eq!(v["status"], "ok", "{v:#}");
    // --ip wins over it.
    let (_, vs) = verdicts(&s.config, "src", &["203.0.113.5"]);
    assert_eq!(find(&vs, "spf", "src.test")["status"], "fail");
    assert_eq!(find(&vs, "ptr", "203.0.113.5")["status"], "warn");
}

#[test]
fn every_sender_is_checked_and_usage_errors_exit_2() {
    let s = setup();
    let (code, out, err) = doctor(&s.config, &["--ip", "203.0.113.5"]);
    assert_eq!(code, 1, "{err}");
    for header in [
        "shop.test (sender shop)\n",
        "nospf.test (sender nospf)\n",
        "ptr.test (sender ptr)\n",
    ] {
        assert!(out.contains(header), "{out}");
    }
    let (code, _, err) = doctor(&s.config, &["--sender", "nosuch"]);
    assert_eq!(code, 2);
    assert!(err.contains("no [[sender]] has id `nosuch`"), "{err}");
    let (code, _, err) = doctor(&s.config, &["--ip", "not-an-ip"]);
    assert_eq!(code, 2, "{err}");

    // A config error is reported as by every command.
    let bad = s.config.with_file_name("bad.toml");
    std::fs::write(&bad, "[[sender]]\nid = \"x\"\n").unwrap();
    let (code, _, err) = doctor(&bad, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("configuration problem"), "{err}");
}

/// The daemon serves the same verdicts (`GET /api/v1/doctor`), and the
/// admin UI's dashboard shows them from the kept run, failures first.
#[test]
fn the_daemon_serves_the_same_verdicts_and_the_dashboard_shows_them() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    let from = s.config.parent().unwrap();
    std::fs::copy(from.join("keys/k1.pem"), dir.path().join("keys/k1.pem")).unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::copy(&s.config, &config).unwrap();
    let h = common::Herald::start_in(dir, config.clone());
    let (_, out, _) = doctor(&config, &["--json"]);
    let cli: Vec<Value> = serde_json::from_str(&out).unwrap();
    let api = h.get("/api/v1/doctor");
    assert_eq!(api.status, 200, "{}", api.body);
    let served = api.body["verdicts"].as_array().unwrap();
    assert_eq!(served.len(), cli.len(), "{served:#?}\n{cli:#?}");
    // The MTA-STS fix proposes an id made of the time of the run.
    let same = |v: &Value| {
        let text = v.to_string();
        match text.find("id=") {
            Some(i) => {
                let digits = text[i + 3..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .count();
                format!("{}id=N{}", &text[..i], &text[i + 3 + digits..])
            }
            None => text,
        }
    };
    for (a, b) in served.iter().zip(&cli) {
        assert_eq!(same(a), same(b), "the daemon and the CLI differ");
    }
    let fails: Vec<&Value> = cli.iter().filter(|v| v["status"] == "fail").collect();
    assert!(!fails.is_empty());
    assert_eq!(api.body["failures"], fails.len());
    assert!(api.body["checked_at"].is_string());
    // The dashboard reads the kept run (no DNS while the page is served).
    let ui = common::ui::UiSession::new(&h, "ann", "viewer");
    let page = ui.get("/admin");
    assert_eq!(page.status, 200);
    let text = page.text();
    let at = text
        .find("<h2>Sender DNS</h2>")
        .expect("a Sender DNS section");
    let section = &text[at..];
    assert!(
        section.contains(&format!("{} to fix", fails.len())),
        "{section}"
    );
    // Failures come first: the first row is a failure.
    let first_row = section.split("<tr class=\"status-").nth(1).unwrap();
    assert!(first_row.starts_with("fail"), "{first_row}");
    assert!(section.contains(fails[0]["name"].as_str().unwrap()));
}
