//! The send layer seen from outside: a template message sent through the
//! API with a `tag` is delivered by a real SMTP peer (smtp-sink), opened,
//! clicked and brings an order, and all of it is reported for the tag, per
//! day (`GET /api/v1/reports/sends/transactional/{tag}`), and shown in the
//! contact's history; a campaign's send report is its campaign report.

mod common;

use std::time::Duration;

use common::peers::{Sink, tokens};
use common::{Herald, wait_until, write};
use serde_json::{Value, json};

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";

fn start(sink: &Sink) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    write(
        &t,
        "receipt/template.toml",
        "sender = \"shop\"\ndefault_language = \"en\"\nkind = \"transactional\"\n[subject]\nen = \"Your order\"\n",
    );
    write(
        &t,
        "receipt/body.en.html",
        "<html><body><p>Thanks {{ contact.email }}</p><p><a href=\"https://shop.example/orders\">Your orders</a></p></body></html>\n",
    );
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        common::config_text_tracking(
            &dir.path().join("data"),
            // Clicks at once after delivery count as a person's here.
            "scanner_window = \"1ms\"\n",
            &format!(
                "[paths]\ntemplates = \"templates\"\n\
[[site]]\nid = \"shop\"\nname = \"Example Shop\"\nurl = \"https://shop.example\"\ncurrency = \"EUR\"\n\
[[sender]]\nid = \"shop\"\nfrom = \"Shop <orders@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
                sink.port
            ),
        ),
    )
    .unwrap();
    Herald::start_in(dir, config)
}

fn today() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn now_rfc3339() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn send_report(h: &Herald, tag: &str) -> Value {
    let r = h.get(&format!("/api/v1/reports/sends/transactional/{tag}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

#[test]
fn tagged_template_messages_are_reported_per_tag_and_day_with_their_revenue() {
    let sink = Sink::start(&[]);
    let h = start(&sink);
    for email in ["ann@example.test", "bob@example.test"] {
        let r = h.post_json(
            "/api/v1/contacts",
            json!({"email": email, "consent": "granted"}),
        );
        assert_eq!(r.status, 201, "{r:?}");
    }
    // Two tagged messages and one with the default tag (the template name).
    for (to, tag) in [
        ("ann@example.test", Some("order-confirmation")),
        ("bob@example.test", Some("order-confirmation")),
        ("ann@example.test", None),
    ] {
        let mut body = json!({"template": "receipt", "to": [to]});
        if let Some(t) = tag {
            body["tag"] = t.into();
        }
        let r = h.post_json("/api/v1/messages", body);
        assert_eq!(r.status, 202, "{r:?}");
    }
    let files = sink.wait_files(3, Duration::from_secs(60));
    // Bob got one message: open it and click by hand, buy with its click
    // token.
    let opened = files
        .iter()
        .find(|f| common::peers::rcpts_of(f) == ["bob@example.test"])
        .unwrap();
    let open = &tokens(opened, "o")[0];
    let click = &tokens(opened, "c")[0];
    let ua = [("User-Agent", BROWSER)];
    let r = h.public("GET", &format!("/o/{open}"), &ua, None);
    assert_eq!(r.status, 200, "{r:?}");
    let r = h.public("GET", &format!("/c/{click}"), &ua, None);
    assert_eq!(r.status, 302, "{r:?}");
    let order = json!({"type": "order", "id": "ev-1", "at": now_rfc3339(),
        "email": "bob@example.test", "order_id": "o-1",
        "items": [{"sku": "X", "quantity": 1, "price": "25.00"}],
        "total": "25.00", "currency": "EUR", "attribution": click});
    let r = h.post_json("/api/v1/events", json!([order]));
    assert_eq!(r.body["accepted"], 1, "{}", r.body);

    wait_until("delivered", Duration::from_secs(30), || {
        send_report(&h, "order-confirmation")["totals"]["delivered"] == 2
    });
    let rep = send_report(&h, "order-confirmation");
    assert_eq!(rep["send"]["name"], "order-confirmation", "{rep}");
    let t = &rep["totals"];
    assert_eq!(t["sent"], 2, "{rep}");
    assert_eq!(t["opens_unique"], 1, "{rep}");
    assert_eq!(t["clicks_unique"], 1, "{rep}");
    assert_eq!(t["orders"], 1, "{rep}");
    assert_eq!(t["revenue"], 25.0, "{rep}");
    let days = rep["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{rep}");
    assert_eq!(days[0]["day"], today(), "{rep}");
    assert_eq!(days[0]["orders"], 1, "{rep}");
    assert_eq!(
        rep["links"][0]["url"], "https://shop.example/orders",
        "{rep}"
    );
    assert_eq!(rep["links"][0]["orders"], 1, "{rep}");

    // The untagged message is reported under its template's name.
    wait_until("delivered", Duration::from_secs(30), || {
        send_report(&h, "receipt")["totals"]["delivered"] == 1
    });
    let sends = h.get("/api/v1/reports/sends/transactional").body;
    let mut names: Vec<&str> = sends["sends"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["order-confirmation", "receipt"], "{sends}");

    // CSV: a total row and a row per day.
    let csv = h.get("/api/v1/reports/sends/transactional/order-confirmation?format=csv");
    assert_eq!(csv.status, 200);
    let text = csv.body.as_str().unwrap_or_default().to_string();
    assert!(text.starts_with("day,sent,delivered"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");

    // The contact's history shows the order credited to the message.
    let hist = h.get("/api/v1/contacts/bob@example.test/history").body;
    let order = hist["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "order")
        .cloned()
        .unwrap();
    assert_eq!(order["note"], "attributed by parameter", "{hist}");
    assert_eq!(
        order["source"], "transactional:order-confirmation",
        "{hist}"
    );

    // Unknown tags, bad tags and kinds answer clearly.
    assert_eq!(
        h.get("/api/v1/reports/sends/transactional/nothing-sent")
            .status,
        404
    );
    assert_eq!(h.get("/api/v1/reports/sends/newsletter/1").status, 404);
    let r = h.post_json(
        "/api/v1/messages",
        json!({"template": "receipt", "to": ["ann@example.test"], "tag": "no spaces"}),
    );
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.body["error"]["code"], "invalid_tag", "{r:?}");
    let r = h.post_json(
        "/api/v1/messages",
        json!({"sender": "shop", "to": ["ann@example.test"], "subject": "x", "text": "y", "tag": "t"}),
    );
    assert_eq!(r.status, 400, "{r:?}");
}
