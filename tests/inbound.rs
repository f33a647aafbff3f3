//! Inbound bounces and complaints through the real binary: a campaign goes
//! to smtp-sink with VERP return paths, then DSNs, an ARF complaint and an
//! auto-reply come back to the inbound listener from Python's smtplib (one
//! over STARTTLS); contacts, reports, queue records, histories and the
//! suppression list follow. Forged and stranger RCPTs get 550; `kill -9`
//! right after the 250 loses nothing.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::peers::{Sink, openssl};
use common::reports::{arf, dsn, vacation};
use common::{Herald, wait_until, write};
use serde_json::{Value, json};

const BOUNCE_DOMAIN: &str = "bounces.shop.test";
use common::reports::FBL;

/// A daemon whose sender relays to `sink` with a bounce domain, an inbound
/// listener on `port` (STARTTLS with a fresh self-signed certificate) and a
/// marketing template `news`.
fn start(sink: &Sink, extra: &str) -> (Herald, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = dir.path().join("templates");
    write(
        &t,
        "news/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\nkind = \"marketing\"\n[subject]\nen = \"News\"\n",
    );
    write(
        &t,
        "news/body.en.html",
        "<p>Hello {{ contact.email }}</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>\n",
    );
    openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-subj",
            "/CN=mx.shop.test",
            "-days",
            "2",
        ],
    );
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        common::config_text(
            &dir.path().join("data"),
            &format!(
                "[paths]\ntemplates = \"templates\"\n[inbound]\nlisten = \"127.0.0.1:0\"\nhostname = \"mx.shop.test\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\nfbl_addresses = [\"{FBL}\"]\n{extra}\n[[sender]]\nid = \"newsletter\"\nfrom = \"Shop <news@shop.test>\"\nbounce_domain = \"{BOUNCE_DOMAIN}\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
                sink.port
            ),
        ),
    )
    .expect("write config");
    let h = Herald::start_in(dir, config);
    // The listener takes port 0; the ready line says which it got.
    let log = h.log();
    let port = log
        .split("inbound_listen=127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no inbound_listen in the ready line:\n{log}"));
    (h, port)
}

/// What the listener answered one message.
#[derive(Debug)]
struct Sent {
    tls: bool,
    rcpt: Value,
    data: Option<u64>,
}

/// Sends `message` to the listener with Python's smtplib.
fn smtp(port: u16, from: &str, rcpts: &[&str], message: &str, starttls: bool) -> Sent {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_send.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .arg(from)
        .arg(rcpts.join(","));
    if starttls {
        cmd.arg("--starttls");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 runs the SMTP client");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(message.as_bytes()).expect("write message");
    }
    let out = child.wait_with_output().expect("python3 ran");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("smtp_send.py printed no JSON ({e}): {out:?}"));
    assert!(v.get("error").is_none(), "SMTP client failed: {v}");
    Sent {
        tls: v["tls"].as_bool().unwrap_or(false),
        rcpt: v["rcpt"].clone(),
        data: v["data"][0].as_u64(),
    }
}

/// (recipient, MAIL FROM, Message-ID) of every message the sink got.
fn sent_messages(sink: &Sink) -> Vec<(String, String, String)> {
    sink.files()
        .iter()
        .map(|f| {
            let text = String::from_utf8_lossy(&std::fs::read(f).unwrap_or_default()).into_owned();
            let field = |prefix: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .map(|v| {
                        v.trim()
                            .trim_start_matches('<')
                            .trim_end_matches('>')
                            .to_string()
                    })
                    .unwrap_or_default()
            };
            let from = field("X-Mail-Args: ");
            let from = from
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches('>');
            (
                field("X-Rcpt-Args: "),
                from.to_string(),
                field("Message-ID: "),
            )
        })
        .collect()
}

fn contact(h: &Herald, email: &str) -> Value {
    let r = h.get(&format!("/api/v1/contacts/{email}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// Imports granted contacts into list `news` and sends campaign `name` to
/// them; returns its id once completed.
fn campaign(h: &Herald, name: &str) -> u64 {
    let r = h.post_json(
        "/api/v1/campaigns",
        json!({"name": name, "template": "news", "audience": {"lists": ["news"]}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_u64().expect("id");
    let r = h.post_json(&format!("/api/v1/campaigns/{id}/start"), json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until("the campaign completes", Duration::from_secs(60), || {
        h.get(&format!("/api/v1/campaigns/{id}")).body["status"] == "completed"
    });
    id
}

fn import(h: &Herald, emails: &[&str]) {
    h.list("news");
    let csv = format!("email\n{}\n", emails.join("\n"));
    let r = h.post_csv(
        "/api/v1/contacts/import?list=news&consent=granted",
        csv.as_bytes(),
    );
    assert!(r.status < 300, "{}", r.body);
}

#[test]
fn bounces_complaints_and_auto_replies_change_contacts_and_reports() {
    let sink = Sink::start(&[]);
    let (h, port) = start(&sink, "soft_bounce_limit = 2");
    let people = [
        "hard@example.test",
        "soft@example.test",
        "angry@example.test",
        "away@example.test",
        "fine@example.test",
    ];
    import(&h, &people);
    let first = campaign(&h, "First");
    let sent = sent_messages(&sink);
    assert_eq!(sent.len(), 5, "{sent:?}");
    let of = |who: &str| {
        sent.iter()
            .find(|(r, _, _)| r == who)
            .cloned()
            .unwrap_or_else(|| panic!("no message to {who}: {sent:?}"))
    };
    // Every envelope sender is a VERP address of the bounce domain, and no
    // two are the same.
    let froms: std::collections::BTreeSet<&str> = sent.iter().map(|(_, f, _)| f.as_str()).collect();
    assert_eq!(froms.len(), 5);
    assert!(
        froms
            .iter()
            .all(|f| f.starts_with("b-") && f.ends_with(&format!("@{BOUNCE_DOMAIN}"))),
        "{froms:?}"
    );

    // A hard bounce over STARTTLS, to the hard contact's VERP address.
    let (rcpt, verp, mid) = of("hard@example.test");
    let s = smtp(
        port,
        "",
        &[&verp],
        &dsn(
            &rcpt,
            "failed",
            "5.1.1",
            "550 5.1.1 <hard@example.test>: Recipient address rejected: User unknown",
            &mid,
        ),
        true,
    );
    assert!(s.tls, "{s:?}");
    assert_eq!(s.data, Some(250), "{s:?}");
    assert_eq!(contact(&h, "hard@example.test")["consent"], "invalid");

    // An auto-reply to the away contact's VERP address: recorded, not a bounce.
    let (_, verp, _) = of("away@example.test");
    let s = smtp(port, "", &[&verp], &vacation("away@example.test"), false);
    assert_eq!(s.data, Some(250), "{s:?}");
    assert_eq!(contact(&h, "away@example.test")["consent"], "granted");

    // A complaint to the feedback-loop address that quotes only the
    // Message-ID (anyone could write one): recorded, not applied.
    let (rcpt, verp, mid) = of("angry@example.test");
    let forged = arf(&rcpt, &mid, "someone@else.test");
    let s = smtp(port, "x@fbl.receiver.test", &[FBL], &forged, false);
    assert_eq!(s.data, Some(250), "{s:?}");
    assert_eq!(contact(&h, "angry@example.test")["consent"], "granted");
    // The real one quotes the VERP envelope sender (Original-Mail-From).
    let s = smtp(
        port,
        "feedback@fbl.receiver.test",
        &[FBL],
        &arf(&rcpt, &mid, &verp),
        false,
    );
    assert_eq!(s.data, Some(250), "{s:?}");
    assert_eq!(contact(&h, "angry@example.test")["consent"], "withdrawn");

    // One soft bounce: counted, the contact stays.
    let (rcpt, verp, mid) = of("soft@example.test");
    let soft = dsn(&rcpt, "failed", "5.2.2", "552 5.2.2 Mailbox full", &mid);
    assert_eq!(smtp(port, "", &[&verp], &soft, false).data, Some(250));
    assert_eq!(contact(&h, "soft@example.test")["consent"], "granted");
    // The same report again (a retrying sender): recorded, applied once.
    assert_eq!(smtp(port, "", &[&verp], &soft, false).data, Some(250));

    // A stranger's RCPT and a forged VERP address get 550.
    let s = smtp(
        port,
        "",
        &["someone@shop.test"],
        "Subject: x\r\n\r\nx\r\n",
        false,
    );
    assert_eq!(s.rcpt["someone@shop.test"][0], 550, "{s:?}");
    assert_eq!(s.data, None);
    // The postmaster is always taken (RFC 5321 §4.5.1), and changes nothing.
    let pm = format!("postmaster@{BOUNCE_DOMAIN}");
    let s = smtp(
        port,
        "x@elsewhere.test",
        &[&pm],
        "Subject: hello\r\n\r\nhi\r\n",
        false,
    );
    assert_eq!(s.data, Some(250), "{s:?}");
    let forged = format!("b-{}@{BOUNCE_DOMAIN}", "0".repeat(36));
    let s = smtp(port, "", &[&forged], "Subject: x\r\n\r\nx\r\n", false);
    assert_eq!(s.rcpt[forged.as_str()][0], 550, "{s:?}");
    let (_, verp, _) = of("fine@example.test");
    let tampered = verp.replacen("b-", "b-1", 1);
    let s = smtp(port, "", &[&tampered], "Subject: x\r\n\r\nx\r\n", false);
    assert_eq!(s.rcpt[tampered.as_str()][0], 550, "{s:?}");

    // The report counts them, by class; auto-replies apart.
    let r = h.get(&format!("/api/v1/reports/campaigns/{first}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let totals = &r.body["totals"];
    assert_eq!(totals["bounces_hard"], 1, "{totals}");
    assert_eq!(totals["bounces_soft"], 1, "{totals}");
    assert_eq!(totals["bounces_late"], 2, "{totals}");
    assert_eq!(totals["complaints"], 1, "{totals}");
    assert_eq!(totals["auto_replies"], 1, "{totals}");
    assert_eq!(totals["delivered"], 3, "{totals}");
    assert_eq!(totals["failed"], 2, "{totals}");

    // A second campaign: the bounced and the complainer are not mailed, the
    // soft one is, and its second soft bounce makes it invalid.
    let before = sink.files().len();
    campaign(&h, "Second");
    let now: Vec<_> = sent_messages(&sink);
    assert_eq!(now.len(), before + 3, "{now:?}");
    let (rcpt, verp, mid) = now
        .iter()
        .filter(|m| !sent.contains(m))
        .find(|(r, _, _)| r == "soft@example.test")
        .cloned()
        .expect("the soft contact got the second campaign");
    let soft = dsn(
        &rcpt,
        "failed",
        "4.2.2",
        "452 4.2.2 Quota exceeded (mailbox full)",
        &mid,
    );
    assert_eq!(smtp(port, "", &[&verp], &soft, false).data, Some(250));
    assert_eq!(contact(&h, "soft@example.test")["consent"], "invalid");

    // The suppression list has the hard bounce, the complaint and the soft
    // limit, with their addresses and sources.
    let r = h.get("/api/v1/suppressions");
    assert_eq!(r.status, 200, "{}", r.body);
    let mut by: Vec<(String, String)> = r.body["suppressions"]
        .as_array()
        .expect("list")
        .iter()
        .map(|s| {
            (
                s["address"].as_str().unwrap_or("").to_string(),
                s["source"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    by.sort();
    assert_eq!(
        by,
        [
            ("angry@example.test".to_string(), "complaint".to_string()),
            ("hard@example.test".to_string(), "bounce".to_string()),
            ("soft@example.test".to_string(), "soft_bounces".to_string()),
        ]
    );

    // The queue record of the hard-bounced message shows the report; the
    // contact's history and consent log say why.
    let hard = contact(&h, "hard@example.test");
    let id = hard["id"].as_u64().expect("id");
    let hist = h.get(&format!("/api/v1/contacts/{id}/history"));
    let text = hist.body.to_string();
    assert!(
        text.contains("\"bounce\"") && text.contains("5.1.1"),
        "{text}"
    );
    let reports = h.get("/api/v1/inbound?limit=100");
    let list = reports.body["reports"].as_array().expect("reports").clone();
    assert_eq!(list.len(), 8, "{}", reports.body);
    assert!(
        list.iter()
            .any(|r| r["effects"].to_string().contains("not applied")),
        "the complaint naming only a Message-ID is not applied: {}",
        reports.body
    );
    let away = list
        .iter()
        .find(|r| r["verdict"] == "auto_reply")
        .expect("the auto-reply is listed");
    assert!(
        away["effects"].to_string().contains("not a bounce"),
        "{away}"
    );
    let hard_report = list
        .iter()
        .find(|r| r["recipient"] == "hard@example.test")
        .expect("the hard bounce is listed");
    assert_eq!(hard_report["verdict"], "hard");
    assert_eq!(hard_report["matched_by"], "verp");
    let q = h.get(&format!("/api/v1/queue/{}", hard_report["message"]));
    assert_eq!(q.status, 200, "{}", q.body);
    let rc = &q.body["recipients"][0];
    assert_eq!(rc["state"], "failed", "{}", q.body);
    assert_eq!(rc["bounce"], "hard", "{}", q.body);
    assert_eq!(rc["reports"][0]["verdict"], "hard", "{}", q.body);
    assert!(
        list.iter()
            .any(|r| r["effects"].to_string().contains("duplicate")),
        "the second copy of the soft bounce is marked duplicate: {}",
        reports.body
    );
}

#[test]
fn kill_9_right_after_the_250_loses_nothing() {
    let sink = Sink::start(&[]);
    let (mut h, port) = start(&sink, "");
    import(&h, &["gone@example.test"]);
    campaign(&h, "One");
    let (rcpt, verp, mid) = sent_messages(&sink).pop().expect("one message");
    let s = smtp(
        port,
        "",
        &[&verp],
        &dsn(&rcpt, "failed", "5.1.1", "550 5.1.1 No such user", &mid),
        false,
    );
    assert_eq!(s.data, Some(250));
    h.kill9();
    h.restart();
    assert_eq!(contact(&h, "gone@example.test")["consent"], "invalid");
    let r = h.get("/api/v1/inbound");
    assert_eq!(r.body["total"], 1, "{}", r.body);
    assert_eq!(r.body["reports"][0]["verdict"], "hard");
}

#[test]
fn reports_received_elsewhere_and_the_suppression_list_through_the_api() {
    let sink = Sink::start(&[]);
    let (h, _) = start(&sink, "");
    import(&h, &["api@example.test", "keep@example.test"]);
    campaign(&h, "Api");
    let sent = sent_messages(&sink);
    let (rcpt, _, mid) = sent
        .iter()
        .find(|(r, _, _)| r == "api@example.test")
        .cloned()
        .expect("sent");
    // A raw DSN without its VERP address: matched by the Message-ID.
    let r = h.put(
        "/api/v1/bounces",
        "message/rfc822",
        &dsn(&rcpt, "failed", "5.1.1", "550 5.1.1 unknown user", &mid),
    );
    assert_eq!(r.status, 405, "PUT is not the method: {}", r.body);
    let raw = dsn(&rcpt, "failed", "5.1.1", "550 5.1.1 unknown user", &mid);
    let r = h.post_typed("/api/v1/bounces", "message/rfc822", &raw);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["verdict"], "hard", "{}", r.body);
    assert_eq!(r.body["matched_by"], "message_id", "{}", r.body);
    assert_eq!(contact(&h, "api@example.test")["consent"], "invalid");
    // An ARF through /api/v1/complaints.
    let (rcpt, _, mid) = sent
        .iter()
        .find(|(r, _, _)| r == "keep@example.test")
        .cloned()
        .expect("sent");
    // Through the API (the token is the proof), the Message-ID is enough.
    let arf = arf(&rcpt, &mid, "bounce@shop.test");
    let r = h.post_typed("/api/v1/complaints", "message/rfc822", &arf);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(contact(&h, "keep@example.test")["consent"], "withdrawn");

    // Manual suppression: add, list, refuse removal without a reason,
    // remove with one (logged with who and why).
    let r = h.post_json(
        "/api/v1/suppressions",
        json!({"address": "Nope@Example.test", "reason": "asked by phone"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["source"], "manual");
    let r = h.get("/api/v1/suppressions?address=nope@example.test");
    assert_eq!(
        r.body["suppressions"][0]["reason"], "asked by phone",
        "{}",
        r.body
    );
    let r = h.get("/api/v1/suppressions?limit=2");
    assert_eq!(r.body["total"], 3, "{}", r.body);
    let next = r.body["next"].as_str().expect("a next page").to_string();
    let r = h.get(&format!("/api/v1/suppressions?limit=2&after={next}"));
    assert_eq!(
        r.body["suppressions"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.body
    );
    let r = h.delete("/api/v1/suppressions/nope@example.test");
    assert_eq!(r.status, 422, "{}", r.body);
    let r = h.delete("/api/v1/suppressions/nope@example.test?reason=wrong%20address%20typed");
    assert_eq!(r.status, 200, "{}", r.body);
    let log = h.get("/api/v1/activity");
    let text = log.body.to_string();
    assert!(
        text.contains("DELETE suppression") && text.contains("wrong address typed"),
        "{text}"
    );
    let r = h.delete("/api/v1/suppressions/nope@example.test?reason=again");
    assert_eq!(r.status, 404, "{}", r.body);
    // Erasing the bounced contact: its reports keep what they said, not who
    // it was; its suppression entry becomes a bare hash that stays.
    let id = contact(&h, "api@example.test")["id"].as_u64().expect("id");
    let r = h.delete(&format!("/api/v1/contacts/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let reports = h.get("/api/v1/inbound").body.to_string();
    assert!(!reports.contains("api@example.test"), "{reports}");
    let list = h.get("/api/v1/suppressions?limit=100").body;
    let erased = list["suppressions"]
        .as_array()
        .expect("list")
        .iter()
        .find(|s| s["source"] == "erasure")
        .cloned()
        .expect("an erasure entry");
    assert_eq!(erased["address"], Value::Null, "{erased}");
    let hash = erased["hash"].as_str().expect("hash");
    let r = h.delete(&format!("/api/v1/suppressions/{hash}?reason=oops"));
    assert_eq!(r.status, 409, "{}", r.body);
    // Mail to a suppressed address is not sent, whatever its kind.
    let r = h.post_json(
        "/api/v1/suppressions",
        json!({"address": "later@example.test"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = h.post_json(
        "/api/v1/messages",
        json!({"sender": "newsletter", "to": ["later@example.test"], "subject": "Receipt", "text": "Thanks"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["id"].as_u64().expect("queue id");
    wait_until(
        "the message is taken out unsent",
        Duration::from_secs(30),
        || h.get(&format!("/api/v1/queue/{id}")).body["recipients"][0]["not_sent"] == "suppressed",
    );
    // A suppressed address cannot come back as a new contact.
    let r = h.post_json(
        "/api/v1/suppressions",
        json!({"address": "blocked@example.test"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = h.post_json("/api/v1/contacts", json!({"email": "blocked@example.test"}));
    assert_eq!(r.status, 409, "{}", r.body);
}

#[test]
fn a_listener_that_would_take_nothing_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        common::config_text(
            &dir.path().join("data"),
            "[inbound]\nlisten = \"127.0.0.1:0\"\nsoft_bounce_limit = 0\ntls_cert = \"nope.pem\"\ntls_key = \"nope.key\"\n",
        ),
    )
    .expect("write");
    let (code, _, err) = common::run(&config, &["check-config"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("inbound.listen") && err.contains("bounce_domain"),
        "{err}"
    );
    assert!(err.contains("inbound.soft_bounce_limit"), "{err}");
    assert!(
        err.contains("inbound.tls_cert") && err.contains("nope.pem"),
        "{err}"
    );
}

/// The admin UI's Bounces page lists reports and the suppression list; an
/// editor suppresses and (with a reason) removes an address, a viewer only
/// reads.
#[test]
fn the_bounces_page_shows_reports_and_manages_the_suppression_list() {
    let sink = Sink::start(&[]);
    let (h, port) = start(&sink, "");
    import(&h, &["page@example.test"]);
    campaign(&h, "Page");
    let (rcpt, verp, mid) = sent_messages(&sink).pop().expect("one message");
    let dsn = dsn(&rcpt, "failed", "5.1.1", "550 5.1.1 user unknown", &mid);
    assert_eq!(smtp(port, "", &[&verp], &dsn, false).data, Some(250));

    let ed = common::ui::UiSession::new(&h, "ed", "editor");
    let page = ed.get("/admin/bounces");
    assert_eq!(page.status, 200, "{:?}", page.body);
    let text = page.text().replace("&#x2f;", "/");
    assert!(
        text.contains("page@example.test") && text.contains("hard"),
        "{text}"
    );
    assert!(text.contains("5.1.1"), "{text}");
    let r = ed.post(
        "/admin/bounces/suppress",
        &[
            ("address", "phone@example.test"),
            ("reason", "asked by phone"),
        ],
    );
    assert_eq!(r.status, 303, "{:?}", r.body);
    let text = ed.get("/admin/bounces").text().to_string();
    assert!(
        text.contains("phone@example.test") && text.contains("asked by phone"),
        "{text}"
    );
    let hash = h
        .get("/api/v1/suppressions?address=phone@example.test")
        .body["suppressions"][0]["hash"]
        .as_str()
        .expect("hash")
        .to_string();
    let r = ed.post(
        "/admin/bounces/unsuppress",
        &[("hash", &hash), ("reason", "")],
    );
    assert!(r.location().contains("problem"), "{r:?}");
    let r = ed.post(
        "/admin/bounces/unsuppress",
        &[("hash", &hash), ("reason", "typed by mistake")],
    );
    assert!(r.location().contains("notice"), "{r:?}");
    assert_eq!(
        h.get("/api/v1/suppressions?address=phone@example.test")
            .body["total"],
        0
    );
    let log = ed.get("/admin/activity").text().to_string();
    assert!(
        log.contains("typed by mistake") && log.contains("ed"),
        "{log}"
    );

    let viewer = common::ui::UiSession::new(&h, "vi", "viewer");
    let text = viewer.get("/admin/bounces").text().to_string();
    assert!(text.contains("page@example.test"), "{text}");
    assert!(
        !text.contains("/admin/bounces/unsuppress"),
        "a viewer gets no remove form"
    );
    let r = viewer.post("/admin/bounces/suppress", &[("address", "x@example.test")]);
    assert!(r.status == 403 || r.location().contains("problem"), "{r:?}");
}
