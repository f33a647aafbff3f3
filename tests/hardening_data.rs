//! Issue 17, items 6-8, through the real binary, real HTTP and a real SMTP
//! peer (Postfix's smtp-sink) that is down while messages wait in the queue:
//! erasure reaches every queue record and fails waiting mail (and old links
//! record nothing afterwards), queued template mail is checked against the
//! contact's consent when delivery picks it up, and the GDPR export holds
//! everything the other endpoints show about the person.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Herald;
use common::peers::{Sink, free_port, rcpts_of, tokens};
use serde_json::{Value, json};

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";

use common::write;

fn template(dir: &Path, name: &str, kind: &str, html: &str) {
    write(
        dir,
        &format!("{name}/template.toml"),
        &format!(
            "sender = \"shop\"\ndefault_language = \"en\"\nkind = \"{kind}\"\n[subject]\nen = \"{name}\"\n"
        ),
    );
    write(dir, &format!("{name}/body.en.html"), html);
}

/// A daemon relaying to 127.0.0.1:`port` (where a sink may or may not
/// listen) with a marketing newsletter `news`, a marketing template
/// `back_in_stock` and a transactional `follow_up`.
fn start(port: u16) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    template(
        &t,
        "news",
        "marketing",
        "<html><body><p>News for {{ contact.email }}</p>\
         <p><a href=\"https://shop.example/sale\">The sale</a></p>\
         <p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></body></html>\n",
    );
    template(
        &t,
        "back_in_stock",
        "marketing",
        "<html><body><p>It is back.</p>\
         <p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></body></html>\n",
    );
    template(
        &t,
        "follow_up",
        "transactional",
        "<html><body><p>How was your order?</p></body></html>\n",
    );
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        common::config_text_tracking(
            &dir.path().join("data"),
            "scanner_window = \"1s\"\n",
            &format!(
                "[paths]\ntemplates = \"templates\"\n\
[[site]]\nid = \"shop\"\nname = \"Example Shop\"\nurl = \"https://shop.example\"\ncurrency = \"EUR\"\n\
[[sender]]\nid = \"shop\"\nfrom = \"Shop <news@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n"
            ),
        ),
    )
    .unwrap();
    Herald::start_in(dir, config)
}

use common::wait_until;

/// Queues template `name` for `email`; returns the queue id.
fn send_template(h: &Herald, name: &str, email: &str) -> u64 {
    let r = h.post_json("/api/v1/messages", json!({"template": name, "to": [email]}));
    assert_eq!(r.status, 202, "{name} to {email}: {r:?}");
    r.body["id"].as_u64().unwrap()
}

fn queue_record(h: &Herald, id: u64) -> Value {
    let r = h.get(&format!("/api/v1/queue/{id}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

fn rcpt_state(h: &Herald, id: u64) -> String {
    queue_record(h, id)["recipients"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until every message in `ids` was tried once and deferred (the
/// relay is down).
fn wait_deferred(h: &Herald, ids: &[u64]) {
    for &id in ids {
        wait_until(
            &format!("message {id} deferred"),
            Duration::from_secs(30),
            || rcpt_state(h, id) == "deferred",
        );
    }
}

/// Makes every deferred message due now.
fn retry_all(h: &Herald) {
    let r = h.post_json("/api/v1/queue/retry", json!({"domain": "example.test"}));
    assert_eq!(r.status, 200, "{r:?}");
}

fn contact_id(h: &Herald, email: &str) -> u64 {
    let r = h.get(&format!("/api/v1/contacts/{email}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body["id"].as_u64().unwrap()
}

/// Starts campaign `news` to list `news`, waits for `n` files in the sink
/// and for completion; returns the campaign id.
fn campaign(h: &Herald, sink: &Sink, n: usize) -> u64 {
    common::send_news(h, sink, n, json!({})).0
}

/// The sink file of the message to `email`.
fn file_to(sink: &Sink, email: &str) -> std::path::PathBuf {
    sink.files()
        .into_iter()
        .find(|f| rcpts_of(f).iter().any(|r| r == email))
        .unwrap_or_else(|| panic!("no message to {email} in the sink"))
}

fn open_and_click(h: &Herald, file: &Path) {
    let o = tokens(file, "o");
    let r = h.public(
        "GET",
        &format!("/o/{}", o[0]),
        &[("User-Agent", BROWSER)],
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let c = tokens(file, "c");
    let r = h.public(
        "GET",
        &format!("/c/{}", c[0]),
        &[("User-Agent", BROWSER)],
        None,
    );
    assert_eq!(r.status, 302, "{r:?}");
}

fn metric(h: &Herald, line_start: &str) -> Option<f64> {
    let r = h.public("GET", "/metrics", &[], None);
    let text = r.body.as_str().unwrap_or_default().to_string();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Item 6: after `DELETE /api/v1/contacts/{ref}` no queue record shows the
/// address (finished or waiting), mail waiting for the contact is never
/// delivered (failed as `erased`, counted in the queue status and
/// `/metrics`), and the erased contact's old links still answer but record
/// nothing (campaign counters stay as they were).
#[test]
fn erasure_reaches_the_queue_and_old_links_record_nothing() {
    let port = free_port();
    let sink = Sink::start_on(port, &[]);
    let h = start(port);
    h.granted_contacts(2);
    let (gone, stay) = ("c0000@example.test", "c0001@example.test");
    let gone_id = contact_id(&h, gone);
    let id = campaign(&h, &sink, 2);
    let gone_file = file_to(&sink, gone);
    let stay_file = file_to(&sink, stay);
    // The finished campaign message to the contact to be erased.
    let hist = h.get(&format!("/api/v1/contacts/{gone_id}/history"));
    let done_id = hist.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "message")
        .and_then(|e| e["message"].as_u64())
        .expect("the campaign message in the history");
    assert!(queue_record(&h, done_id).to_string().contains(gone));
    // Clicks within a second of delivery are a scanner's: wait it out.
    std::thread::sleep(Duration::from_millis(1200));
    open_and_click(&h, &stay_file);

    // The relay goes down; mail to both waits in the queue.
    // (The stopped sink's files stay: its directory is kept.)
    let _first_files = sink.stop();
    let q_gone = send_template(&h, "follow_up", gone);
    let q_stay = send_template(&h, "follow_up", stay);
    wait_deferred(&h, &[q_gone, q_stay]);
    assert!(queue_record(&h, q_gone).to_string().contains(gone));

    let r = h.delete(&format!("/api/v1/contacts/{gone}"));
    assert_eq!(r.status, 200, "{r:?}");

    // Every queue record lost the address.
    for q in [done_id, q_gone] {
        let rec = queue_record(&h, q);
        assert!(!rec.to_string().contains("c0000"), "{rec}");
        assert_eq!(rec["recipients"][0]["address"], "(erased)", "{rec}");
        assert!(rec["recipients"][0]["contact"].is_null(), "{rec}");
    }
    let rec = queue_record(&h, done_id);
    assert_eq!(rec["recipients"][0]["state"], "delivered", "{rec}");
    let rec = queue_record(&h, q_gone);
    assert_eq!(rec["recipients"][0]["state"], "failed", "{rec}");
    assert_eq!(rec["recipients"][0]["not_sent"], "erased", "{rec}");
    assert!(
        rec["recipients"][0]["reply"]
            .as_str()
            .is_some_and(|r| r.contains("erased")),
        "{rec}"
    );
    assert!(rec["finished"].is_string(), "{rec}");

    // The erased contact's old links: answered, not recorded.
    open_and_click(&h, &gone_file);

    // The relay comes back: only the other contact's message arrives.
    let sink = Sink::start_on(port, &[]);
    retry_all(&h);
    wait_until(
        "delivery to the contact kept",
        Duration::from_secs(30),
        || rcpt_state(&h, q_stay) == "delivered",
    );
    std::thread::sleep(Duration::from_millis(500));
    let files = sink.files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(rcpts_of(&files[0]), vec![stay.to_string()]);
    assert_eq!(rcpt_state(&h, q_gone), "failed");

    let status = h.get("/api/v1/queue").body;
    assert_eq!(status["not_sent"]["erased"], 1, "{status}");
    assert_eq!(
        metric(&h, "herald_queue_not_sent{reason=\"erased\"}"),
        Some(1.0)
    );

    // Only the kept contact's open and click count for the campaign.
    let rep = h.get(&format!("/api/v1/reports/campaigns/{id}")).body;
    let totals = if rep["totals"].is_object() {
        rep["totals"].clone()
    } else {
        rep.clone()
    };
    let text = totals.to_string();
    for (k, want) in [
        ("opens_unique", 1),
        ("opens_total", 1),
        ("clicks_unique", 1),
        ("clicks_total", 1),
    ] {
        let got = find_key(&totals, k);
        assert_eq!(got, Some(json!(want)), "{k} in {text}");
    }
}

/// The first value under `key` anywhere in `v`.
fn find_key(v: &Value, key: &str) -> Option<Value> {
    match v {
        Value::Object(m) => m
            .get(key)
            .cloned()
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// Item 7: a marketing template message waiting in the queue is not
/// delivered once the contact withdrew, nor a transactional one to a
/// contact that withdrew or became `invalid`; the queue records say why and
/// the queue status counts them. Mail to contacts whose consent did not
/// change goes out.
#[test]
fn queued_template_mail_is_checked_against_consent_at_delivery() {
    let port = free_port();
    let h = start(port);
    h.granted_contacts(5);
    let e = |i: usize| format!("c{i:04}@example.test");
    let withdrawn_marketing = send_template(&h, "back_in_stock", &e(0));
    let withdrawn_transactional = send_template(&h, "follow_up", &e(1));
    let invalid_transactional = send_template(&h, "follow_up", &e(2));
    let kept_marketing = send_template(&h, "back_in_stock", &e(3));
    let kept_transactional = send_template(&h, "follow_up", &e(4));
    let all = [
        withdrawn_marketing,
        withdrawn_transactional,
        invalid_transactional,
        kept_marketing,
        kept_transactional,
    ];
    wait_deferred(&h, &all);
    assert_eq!(queue_record(&h, withdrawn_marketing)["kind"], "marketing");
    assert_eq!(
        queue_record(&h, withdrawn_transactional)["kind"],
        "transactional"
    );
    for (i, state) in [(0, "withdrawn"), (1, "withdrawn"), (2, "invalid")] {
        let r = h.post_json(
            &format!("/api/v1/contacts/{}/consent", e(i)),
            json!({"state": state}),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    // New template mail to them is refused at once.
    for (i, name) in [(0, "back_in_stock"), (1, "follow_up"), (2, "follow_up")] {
        let r = h.post_json("/api/v1/messages", json!({"template": name, "to": [e(i)]}));
        assert_eq!(r.status, 422, "{name} to {}: {r:?}", e(i));
    }

    let sink = Sink::start_on(port, &[]);
    retry_all(&h);
    for id in [kept_marketing, kept_transactional] {
        wait_until(&format!("{id} delivered"), Duration::from_secs(30), || {
            rcpt_state(&h, id) == "delivered"
        });
    }
    for id in [
        withdrawn_marketing,
        withdrawn_transactional,
        invalid_transactional,
    ] {
        wait_until(&format!("{id} failed"), Duration::from_secs(30), || {
            rcpt_state(&h, id) == "failed"
        });
        let rec = queue_record(&h, id);
        assert_eq!(rec["recipients"][0]["not_sent"], "no_consent", "{rec}");
        assert!(
            rec["recipients"][0]["reply"]
                .as_str()
                .is_some_and(|r| r.contains("consent")),
            "{rec}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut got: Vec<String> = sink.files().iter().flat_map(|f| rcpts_of(f)).collect();
    got.sort();
    assert_eq!(got, vec![e(3), e(4)]);
    let status = h.get("/api/v1/queue").body;
    assert_eq!(status["not_sent"]["no_consent"], 3, "{status}");
    assert_eq!(
        metric(&h, "herald_queue_not_sent{reason=\"no_consent\"}"),
        Some(3.0)
    );
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Item 8: the export holds the contact, consent log, lists, tags, shop
/// data (orders with their attribution, cart, payment types, logins,
/// wait-lists), the history, campaign engagement and the queue records of
/// messages to them — and says what the other endpoints say.
#[test]
fn the_export_holds_everything_the_other_endpoints_show() {
    let sink = Sink::start(&[]);
    let h = start(sink.port);
    h.granted_contacts(1);
    let p = "c0000@example.test";
    let r = h.patch_json(
        &format!("/api/v1/contacts/{p}"),
        json!({"add_tags": ["vip"]}),
    );
    assert!(r.status < 300, "{r:?}");
    let at = now_rfc3339();
    let events = json!([
        {"type": "customer", "id": "cust-1", "at": at, "email": p, "language": "en"},
        {"type": "order", "id": "ev-o1", "at": at, "email": p, "order_id": "O-1",
         "items": [{"sku": "S-1", "quantity": 2, "price": "10.00", "category": "shoes"}],
         "total": "20.00", "currency": "EUR", "status": "paid", "payment_type": "card"},
        {"type": "cart", "id": "cart-1", "at": at, "email": p,
         "items": [{"sku": "B-1", "quantity": 1, "price": "5.00"}]},
        {"type": "login", "id": "login-1", "at": at, "email": p},
        {"type": "waitlist", "id": "wait-1", "at": at, "email": p, "sku": "W-1",
         "kind": "back_in_stock"},
    ]);
    let r = h.post_json("/api/v1/events", events);
    assert_eq!(r.body["accepted"], 5, "{}", r.body);

    let id = campaign(&h, &sink, 1);
    let file = file_to(&sink, p);
    std::thread::sleep(Duration::from_millis(1200));
    let o = tokens(&file, "o");
    assert_eq!(
        h.public(
            "GET",
            &format!("/o/{}", o[0]),
            &[("User-Agent", BROWSER)],
            None
        )
        .status,
        200
    );
    let c = tokens(&file, "c");
    let r = h.public(
        "GET",
        &format!("/c/{}", c[0]),
        &[("User-Agent", BROWSER)],
        None,
    );
    assert_eq!(r.status, 302, "{r:?}");
    let loc = r.header("location").unwrap().to_string();
    let hrl = loc
        .split("hrl=")
        .nth(1)
        .expect("attribution parameter")
        .to_string();
    // An order that came through the click.
    let r = h.post_json(
        "/api/v1/events",
        json!([{"type": "order", "id": "ev-o2", "at": now_rfc3339(), "email": p,
                "order_id": "O-2", "items": [{"sku": "S-2", "quantity": 1, "price": "30.00"}],
                "total": "30.00", "currency": "EUR", "status": "paid",
                "payment_type": "transfer", "attribution": hrl}]),
    );
    assert_eq!(r.body["accepted"], 1, "{}", r.body);

    let r = h.get(&format!("/api/v1/contacts/{p}/export"));
    assert_eq!(r.status, 200, "{r:?}");
    let x = r.body;
    let contact = h.get(&format!("/api/v1/contacts/{p}")).body;
    let history = h
        .get(&format!("/api/v1/contacts/{p}/history?limit=1000"))
        .body;
    let report = h.get(&format!("/api/v1/reports/campaigns/{id}")).body;

    // The contact as GET shows it (its shop summary is exported apart).
    let mut plain = contact.clone();
    plain.as_object_mut().unwrap().remove("shop");
    assert_eq!(x["contact"], plain);
    assert_eq!(x["contact"]["lists"], json!(["news"]));
    assert_eq!(x["contact"]["tags"], json!(["vip"]));
    assert_eq!(x["consent_log"], history["consent_log"]);
    assert!(!x["consent_log"].as_array().unwrap().is_empty());

    // Shop data.
    let mut agg = contact["shop"].clone();
    let cart = agg.as_object_mut().unwrap().remove("cart");
    assert_eq!(x["shop"]["aggregates"], agg);
    assert_eq!(x["shop"]["payment_types"], json!(["card", "transfer"]));
    assert_eq!(x["shop"]["logins"], 1);
    assert_eq!(x["shop"]["last_login"], agg["last_login"]);
    assert_eq!(x["shop"]["cart"]["items"][0]["sku"], "B-1");
    assert_eq!(
        x["shop"]["cart"]["value"],
        cart.as_ref()
            .map(|c| c["value"].clone())
            .unwrap_or_default()
    );
    assert_eq!(
        x["shop"]["waitlists"],
        json!([{"sku": "W-1", "kind": "back_in_stock", "since": x["shop"]["waitlists"][0]["since"]}])
    );
    let orders = x["shop"]["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 2, "{}", x["shop"]);
    assert_eq!(orders.len() as u64, agg["order_count"].as_u64().unwrap());
    let o1 = orders.iter().find(|o| o["order_id"] == "O-1").unwrap();
    assert_eq!(o1["items"][0]["sku"], "S-1");
    assert_eq!(o1["items"][0]["quantity"], 2);
    assert!(o1["attributed_to"].is_null(), "{o1}");
    let o2 = orders.iter().find(|o| o["order_id"] == "O-2").unwrap();
    assert_eq!(
        o2["attributed_to"]["send"],
        format!("campaign:{id}"),
        "{o2}"
    );
    assert_eq!(o2["attributed_to"]["by"], "parameter");
    assert_eq!(find_key(&report, "orders"), Some(json!(1)), "{report}");

    // History: what the history endpoint shows, entry for entry.
    assert_eq!(x["history"], history["events"]);
    let kinds: Vec<&str> = x["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for k in ["message", "open", "click", "order"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }

    // Campaign engagement, as the report counts it.
    let camp = &x["campaigns"][0];
    assert_eq!(camp["campaign"], id);
    assert_eq!(camp["name"], "Sale");
    assert_eq!(camp["opened"], true, "{camp}");
    assert_eq!(camp["clicked"], true, "{camp}");
    assert!(camp["last_click"].is_string(), "{camp}");
    assert_eq!(find_key(&report, "opens_unique"), Some(json!(1)));
    assert_eq!(find_key(&report, "clicks_unique"), Some(json!(1)));
    assert_eq!(x["last_click"]["send"], format!("campaign:{id}"));

    // The queue record of the message sent, as GET /api/v1/queue/{id} shows it.
    let msgs = x["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["id"], camp["message"]);
    let q = queue_record(&h, msgs[0]["id"].as_u64().unwrap());
    assert_eq!(msgs[0], q);
    assert_eq!(q["recipients"][0]["address"], p);
    assert_eq!(q["recipients"][0]["state"], "delivered");
    assert_eq!(x["format"], "herald-contact-export-1");
}
