//! DKIM over awkward bodies: every body DESIGN.md lists ("Known dependency
//! constraints") is sent both as a raw message and as a built one (text and
//! HTML fields), signed with an RSA-2048 and an Ed25519 key, delivered to a
//! real smtp-sink through MX records served by dnsmasq, and every received
//! message is verified with dkimpy. mail-auth 0.13's relaxed body
//! canonicalisation got bodies ending in whitespace-only lines wrong (a
//! `bh=` no verifier accepts); Herald signs around it.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Herald;
use common::peers::{Dns, Sink, dkim_verify, keygen, message_of};
use serde_json::{Value, json};

/// The bodies, as CRLF text, by name.
fn bodies() -> Vec<(&'static str, String)> {
    let long_words = "word ".repeat(199) + "end"; // 998 characters: the SMTP limit
    vec![
        ("trailing_space_line", "Body\r\n \r\n".to_string()),
        ("trailing_tab_line", "Body\r\n\t\r\n".to_string()),
        (
            "several_trailing_whitespace_lines",
            "Body\r\n \r\n\t\r\n  \t \r\n\r\n\t\t\r\n".to_string(),
        ),
        (
            "trailing_spaces_and_tabs_on_lines",
            "Trailing spaces   \r\nand tabs\t\t\r\n  inner  \t white   space \t \r\nlast \t"
                .to_string(),
        ),
        ("empty", String::new()),
        ("whitespace_only", " \r\n\t\r\n \t\r\n".to_string()),
        (
            "single_dots",
            ".\r\nA line that is a single dot came before this one.\r\n.\r\n..\r\n.\r\n \r\n"
                .to_string(),
        ),
        (
            "utf8",
            "Zażółć gęślą jaźń – 10 €\r\nПривет, 世界 \t\r\n  \r\n".to_string(),
        ),
        (
            "long_lines",
            format!("{long_words}\r\n{long_words}\t\r\n{long_words}\r\n \r\n"),
        ),
        // Over 64 KiB: built and signed on a blocking thread, the others
        // on the task that takes them (`queue::INLINE_BUILD_BYTES`).
        (
            "large",
            "A line of a large body, with a tab\tand trailing space \r\n".repeat(2000) + " \r\n",
        ),
    ]
}

/// A daemon delivering to `sink` through `dns`, with a sender `shop`
/// signing with an RSA-2048 and an Ed25519 key; returns it with the TXT
/// records (`selector._domainkey.domain` → value) dkimpy is given.
fn start(dns: &Dns, sink: &Sink) -> (Herald, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, "").unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let rsa = keygen(&config, "shop.test", "rsa1", "rsa", &keys.join("rsa1.pem"));
    let ed = keygen(
        &config,
        "shop.test",
        "ed1",
        "ed25519",
        &keys.join("ed1.pem"),
    );
    let extra = format!(
        r#"
[delivery]
nameserver = "127.0.0.1:{dns}"
smtp_port = {smtp}
retry_schedule = ["1s"]
connect_timeout = "2s"
command_timeout = "3s"

[[sender]]
id = "shop"
from = "Shop <news@shop.test>"
return_path = "bounces@shop.test"
helo = "mail.shop.test"

[[sender.dkim]]
selector = "rsa1"
key_file = "keys/rsa1.pem"

[[sender.dkim]]
selector = "ed1"
key_file = "keys/ed1.pem"
"#,
        dns = dns.port,
        smtp = sink.port,
    );
    std::fs::write(
        &config,
        common::config_text(&dir.path().join("data"), &extra),
    )
    .unwrap();
    (
        Herald::start_in(dir, config),
        vec![
            ("rsa1._domainkey.shop.test".into(), rsa),
            ("ed1._domainkey.shop.test".into(), ed),
        ],
    )
}

/// Queues a message; returns its queue id.
fn submit(h: &Herald, body: Value) -> u64 {
    let r = h.post_json("/api/v1/messages", body);
    assert_eq!(r.status, 202, "{}", r.body);
    r.body["id"].as_u64().unwrap()
}

/// The Message-ID (without brackets) of a received message.
fn message_id(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg);
    text.split("\r\n")
        .find_map(|l| {
            l.get(..11)
                .filter(|n| n.eq_ignore_ascii_case("message-id:"))
                .map(|_| l[11..].trim().trim_matches(['<', '>']).to_string())
        })
        .unwrap_or_default()
}

#[test]
fn awkward_bodies_raw_and_built_verify_with_dkimpy_for_rsa_and_ed25519() {
    let dns = Dns::start(&[
        "--mx-host=example.test,mx.example.test,10".into(),
        "--host-record=mx.example.test,127.0.0.1".into(),
    ]);
    let sink = Sink::start(&[]);
    let (h, records) = start(&dns, &sink);
    let records: Vec<(&str, &str)> = records
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();

    // Message-ID → (what was sent, the raw body when sent raw).
    let mut sent: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut ids = Vec::new();
    for (name, body) in bodies() {
        let raw_id = format!("{}-raw@shop.test", name.replace('_', "-"));
        let raw = format!(
            "From: Shop <news@shop.test>\r\nTo: alice@example.test\r\nSubject: raw {name}\r\n\
             Message-ID: <{raw_id}>\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\
             \r\n{body}"
        );
        ids.push(submit(
            &h,
            json!({"sender": "shop", "to": ["alice@example.test"], "raw": raw}),
        ));
        sent.insert(raw_id, Some(body.clone()));

        let built_id = format!("{}-built@shop.test", name.replace('_', "-"));
        ids.push(submit(
            &h,
            json!({
                "sender": "shop",
                "to": ["alice@example.test"],
                "subject": format!("built {name}"),
                "message_id": built_id,
                "text": body,
                "html": format!("<p>{}</p>{body}", name),
                "headers": {
                    "List-Unsubscribe": "<https://shop.test/u/abc>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"
                }
            }),
        ));
        sent.insert(built_id, None);
    }

    // Every message is delivered.
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let r = h.get(&format!("/api/v1/queue/{id}"));
            assert_eq!(r.status, 200, "{}", r.body);
            if !r.body["finished"].is_null() {
                assert_eq!(r.body["recipients"][0]["state"], "delivered", "{}", r.body);
                break;
            }
            assert!(Instant::now() < deadline, "not delivered: {}", r.body);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let files = sink.wait_files(ids.len(), Duration::from_secs(10));
    assert_eq!(files.len(), ids.len());
    let mut failed = Vec::new();
    for file in &files {
        let msg = message_of(file);
        let mid = message_id(&msg);
        let Some(raw_body) = sent.remove(&mid) else {
            panic!("unexpected message {mid:?} in {}", file.display());
        };
        if let Some(body) = raw_body {
            // The raw body arrived as sent, whitespace-only lines included
            // (a message always ends with a line end in SMTP; smtp-sink's
            // dump adds one more).
            let mut want = body.into_bytes();
            if !want.is_empty() && !want.ends_with(b"\r\n") {
                want.extend_from_slice(b"\r\n");
            }
            let got = msg.strip_suffix(b"\r\n").unwrap_or(&msg);
            assert!(
                got.ends_with(&want) && got[..got.len() - want.len()].ends_with(b"\r\n\r\n"),
                "{mid}: body changed in transit: ends {:?}",
                String::from_utf8_lossy(&got[got.len().saturating_sub(want.len() + 8)..])
            );
        }
        let verdict = dkim_verify(&msg, &records);
        if verdict != [true, true] {
            failed.push(format!("{mid}: RSA, Ed25519 = {verdict:?}"));
        }
    }
    assert!(sent.is_empty(), "not received: {:?}", sent.keys());
    assert!(
        failed.is_empty(),
        "dkimpy rejected signatures:\n{}",
        failed.join("\n")
    );
}
