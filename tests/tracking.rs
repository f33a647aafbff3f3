//! Tracking, unsubscribe, signup and reports through the real binary, real
//! HTTP and a real SMTP peer (Postfix's smtp-sink): opens and clicks
//! counted once per contact for "unique", machine hits flagged apart,
//! tampered tokens and open-redirect attempts refused, RFC 8058 one-click
//! in both body encodings, the preference page, the double opt-in flow,
//! orders attributed by parameter and by window, a report checked by hand,
//! and acknowledged hits surviving `kill -9`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::Herald;
use common::peers::{Sink, rcpts_of, tokens};
use serde_json::{Value, json};

const NEWS_HTML: &str = r#"<html><body>
<p>Hello {{ contact.email }}</p>
<p><a href="https://shop.example/sale">The sale</a> and <a href="https://shop.example/new">what is new</a>.</p>
<p><a href="{{ view_in_browser_url }}">View in your browser</a> · <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"#;

const CONFIRM_HTML: &str = r#"<html><body>
<p>Please confirm: <a href="{{ data.confirm_url }}">yes</a></p>
</body></html>
"#;

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";

use common::write;

/// A daemon relaying to `sink`, with a marketing template `news`, the
/// confirmation template and a signup form; `tracking` goes into
/// `[tracking]`.
fn start(sink: &Sink, tracking: &str) -> Herald {
    start_full(sink, tracking, "", NEWS_HTML)
}

/// [`start`] with more keys for the site and another body for `news`.
fn start_full(sink: &Sink, tracking: &str, site: &str, news_html: &str) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    write(
        &t,
        "news/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\nkind = \"marketing\"\n[subject]\nen = \"News\"\n",
    );
    write(&t, "news/body.en.html", news_html);
    write(
        &t,
        "confirm/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\nkind = \"transactional\"\ntracking = false\n[subject]\nen = \"Confirm\"\n",
    );
    write(&t, "confirm/body.en.html", CONFIRM_HTML);
    let port = sink.port;
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        common::config_text_tracking(
            &dir.path().join("data"),
            tracking,
            &format!(
                "[paths]\ntemplates = \"templates\"\n\
[signup]\nlists = [\"news\"]\ntemplate = \"confirm\"\nrate_per_ip_per_hour = 3\n\
[[site]]\nid = \"shop\"\nname = \"Example Shop\"\nurl = \"https://shop.example\"\ncurrency = \"EUR\"\n{site}\n\
[[sender]]\nid = \"newsletter\"\nfrom = \"Shop <news@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n"
            ),
        ),
    )
    .unwrap();
    Herald::start_in(dir, config)
}

use common::wait_until;

use common::send_news as send;

fn report(h: &Herald, id: u64) -> Value {
    let r = h.get(&format!("/api/v1/reports/campaigns/{id}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

fn contact(h: &Herald, email: &str) -> Value {
    let r = h.get(&format!("/api/v1/contacts/{email}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

fn order(h: &Herald, id: &str, email: &str, total: &str, status: &str, attribution: Option<&str>) {
    let mut e = json!({"type": "order", "id": format!("ev-{id}-{status}"), "at": chrono_now(),
        "email": email, "order_id": id, "status": status,
        "items": [{"sku": "X", "quantity": 1, "price": total}], "total": total, "currency": "EUR"});
    if let Some(a) = attribution {
        e["attribution"] = a.into();
    }
    let r = h.post_json("/api/v1/events", json!([e]));
    assert_eq!(r.body["accepted"], 1, "{}", r.body);
}

fn chrono_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    // RFC 3339 from the epoch milliseconds, without a date library.
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", secs / 1000),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Opens, clicks (human and machine), tampered tokens, redirects,
/// unsubscribes in both encodings, preferences, attribution by parameter
/// and by window, and the report checked by hand.
#[test]
fn opens_clicks_unsubscribes_orders_and_the_report() {
    let sink = Sink::start(&[]);
    let h = start(
        &sink,
        "scanner_window = \"1s\"\nmachine_networks = [\"17.0.0.0/8\"]\n",
    );
    h.granted_contacts(10);
    h.list("deals");
    let news = h.get("/api/v1/lists/news").body["id"].as_u64().unwrap();
    let r = h.patch_json(
        "/api/v1/contacts/c0001@example.test",
        json!({"add_lists": ["deals"]}),
    );
    assert!(r.status < 300, "{r:?}");
    let (id, files) = send(
        &h,
        &sink,
        10,
        json!({"cost_per_message": 0.01, "budget": 1.0}),
    );
    assert_eq!(files.len(), 10);
    let file = |i: usize| files[i].1.clone();
    // Clicks within a second of delivery are a scanner's: wait it out.
    std::thread::sleep(Duration::from_millis(1200));
    let ua = |v: &'static str| ("User-Agent", v);
    let open = |i: usize, headers: &[(&str, &str)]| {
        let t = tokens(&file(i), "o");
        assert_eq!(t.len(), 1, "one pixel");
        let r = h.public("GET", &format!("/o/{}", t[0]), headers, None);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("image/gif"));
        assert!(
            r.header("cache-control")
                .is_some_and(|v| v.contains("no-store"))
        );
    };
    let click = |i: usize, link: usize, method: &str, headers: &[(&str, &str)]| -> String {
        let t = tokens(&file(i), "c");
        let r = h.public(method, &format!("/c/{}", t[link]), headers, None);
        assert_eq!(r.status, 302, "{r:?}");
        r.header("location").unwrap().to_string()
    };
    // Human opens: c0 twice, c1 once. Machine: c2 (Google's image proxy),
    // c3 (from Apple's network, behind our proxy).
    open(0, &[ua(BROWSER)]);
    open(0, &[ua(BROWSER)]);
    open(1, &[ua(BROWSER)]);
    open(
        2,
        &[ua(
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        )],
    );
    open(3, &[ua(BROWSER), ("X-Forwarded-For", "17.58.1.2")]);
    // A HEAD of the pixel records nothing.
    let t = tokens(&file(9), "o");
    assert_eq!(
        h.public("HEAD", &format!("/o/{}", t[0]), &[], None).status,
        200
    );
    // Clicks: c0 link 0 twice, c1 link 1; c4 is probed with HEAD first (a
    // scanner); c5 clicks both links at once (the second is a scanner's).
    let loc = click(0, 0, "GET", &[ua(BROWSER)]);
    assert!(loc.starts_with("https://shop.example/sale?hrl="), "{loc}");
    let hrl0 = loc.split("hrl=").nth(1).unwrap().to_string();
    click(0, 0, "GET", &[ua(BROWSER)]);
    let loc1 = click(1, 1, "GET", &[ua(BROWSER)]);
    assert!(loc1.starts_with("https://shop.example/new?hrl="), "{loc1}");
    let head = click(4, 0, "HEAD", &[ua(BROWSER)]);
    assert!(head.starts_with("https://shop.example/sale"), "{head}");
    click(4, 0, "GET", &[ua(BROWSER)]);
    click(5, 0, "GET", &[ua(BROWSER)]);
    click(5, 1, "GET", &[ua(BROWSER)]);

    // Tampered and unknown tokens, and open-redirect attempts: 404, and a
    // query on a good token changes nothing.
    let good = tokens(&file(0), "c")[0].clone();
    let mut bad = good.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    for path in [
        format!("/c/{bad}"),
        format!("/c/{good}x"),
        "/c/https:%2F%2Fevil.example".to_string(),
        "/c/%2F%2Fevil.example".to_string(),
        "/c//evil.example".to_string(),
        "/c/https%3A%2F%2Fevil.example%2F".to_string(),
        format!("/o/{bad}"),
        format!("/u/{bad}"),
        format!("/v/{bad}"),
        // A click token is not an open token.
        format!("/o/{good}"),
    ] {
        let r = h.public("GET", &path, &[], None);
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(r.header("location").is_none(), "{path}");
    }
    let r = h.public(
        "GET",
        &format!("/c/{good}?url=https://evil.example/&next=//evil.example"),
        &[ua(BROWSER)],
        None,
    );
    assert_eq!(r.status, 302);
    let to = r.header("location").unwrap();
    assert!(to.starts_with("https://shop.example/sale?hrl="), "{to}");
    assert!(!to.contains("evil"), "{to}");

    // View in browser: the message as a page.
    let v = tokens(&file(0), "v");
    let r = h.public("GET", &format!("/v/{}", v[0]), &[], None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert!(
        r.body
            .as_str()
            .unwrap()
            .contains("Hello c0000@example.test"),
        "{r:?}"
    );

    // Unsubscribe: the page changes nothing.
    let u6 = tokens(&file(6), "u")[0].clone();
    let r = h.public("GET", &format!("/u/{u6}"), &[], None);
    assert_eq!(r.status, 200);
    let page = r.body.as_str().unwrap().to_string();
    assert!(
        page.contains("Example Shop") && page.contains("c0006@example.test"),
        "{page}"
    );
    assert!(
        page.contains("List-Unsubscribe") && page.contains("One-Click"),
        "{page}"
    );
    assert_eq!(contact(&h, "c0006@example.test")["consent"], "granted");
    // RFC 8058 one-click, urlencoded: 200, no redirect, no cookie; at once
    // withdrawn, with IP and user agent in the consent log. Twice: once.
    for _ in 0..2 {
        let r = h.public(
            "POST",
            &format!("/u/{u6}"),
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("User-Agent", "ExampleMail/1.0"),
                ("X-Forwarded-For", "203.0.113.9"),
            ],
            Some(b"List-Unsubscribe=One-Click"),
        );
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.header("location").is_none() && r.header("set-cookie").is_none());
    }
    assert_eq!(contact(&h, "c0006@example.test")["consent"], "withdrawn");
    let log = h.get("/api/v1/contacts/c0006@example.test/consent").body;
    let last = log["log"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["to"], "withdrawn", "{log}");
    assert_eq!(last["ip"], "203.0.113.9", "{log}");
    assert_eq!(last["user_agent"], "ExampleMail/1.0", "{log}");
    // Multipart.
    let u7 = tokens(&file(7), "u")[0].clone();
    let body = "--b0undary\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b0undary--\r\n";
    let r = h.public(
        "POST",
        &format!("/u/{u7}"),
        &[("Content-Type", "multipart/form-data; boundary=b0undary")],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(contact(&h, "c0007@example.test")["consent"], "withdrawn");
    // A POST without the one-click body changes nothing.
    let u8_ = tokens(&file(8), "u")[0].clone();
    let r = h.public(
        "POST",
        &format!("/u/{u8_}"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"something=else"),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(contact(&h, "c0008@example.test")["consent"], "granted");
    // Preferences: c1 keeps `news`, leaves `deals`, stays granted.
    let u1 = tokens(&file(1), "u")[0].clone();
    let page = h.public("GET", &format!("/u/{u1}"), &[], None).body;
    assert!(page.as_str().unwrap().contains("deals"), "{page}");
    let r = h.public(
        "POST",
        &format!("/u/{u1}"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(format!("action=preferences&keep={news}").as_bytes()),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let c1 = contact(&h, "c0001@example.test");
    assert_eq!(c1["consent"], "granted");
    assert_eq!(c1["lists"], json!(["news"]), "{c1}");

    // A spam complaint (feedback loop) about c9's message: withdrawn,
    // counted once; a made-up Message-ID is refused.
    let text = std::fs::read_to_string(file(9)).unwrap();
    let mid = text
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .unwrap()
        .to_string();
    for _ in 0..2 {
        let r = h.post_json("/api/v1/complaints", json!({"message_id": mid}));
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(contact(&h, "c0009@example.test")["consent"], "withdrawn");
    let r = h.post_json(
        "/api/v1/complaints",
        json!({"message_id": "<c1.0.999999@shop.example>"}),
    );
    assert_eq!(r.status, 404, "{r:?}");
    let r = h.post_json(
        "/api/v1/complaints",
        json!({"message_id": "<hello@example.test>"}),
    );
    assert_eq!(r.status, 422, "{r:?}");

    // Orders: c0 brings the click token (parameter); c1 and c5 come back
    // without it within the window of their last click by hand (window);
    // c2 only had a machine open (not attributed). Then c1's is cancelled.
    order(
        &h,
        "o-0",
        "c0000@example.test",
        "100.00",
        "placed",
        Some(&hrl0),
    );
    order(&h, "o-1", "c0001@example.test", "50.00", "placed", None);
    order(&h, "o-2", "c0002@example.test", "70.00", "placed", None);
    order(&h, "o-5", "c0005@example.test", "30.00", "placed", None);
    let before = report(&h, id);
    assert_eq!(before["totals"]["orders"], 3, "{before}");
    assert_eq!(before["totals"]["revenue"], 180.0, "{before}");
    order(&h, "o-1", "c0001@example.test", "50.00", "cancelled", None);

    // The report, by hand.
    let r = report(&h, id);
    let t = &r["totals"];
    let expect = [
        ("sent", json!(10)),
        ("delivered", json!(10)),
        ("failed", json!(0)),
        ("opens_unique", json!(3)), // c0, c1 (pixel), c5 (a click is an open)
        ("opens_total", json!(3)),
        ("machine_opens_unique", json!(2)),
        ("machine_opens_total", json!(2)),
        ("clicks_unique", json!(3)),         // c0, c1, c5
        ("clicks_total", json!(5)),          // c0 three times
        ("machine_clicks_unique", json!(2)), // c4, c5
        ("machine_clicks_total", json!(2)),
        ("unsubscribes", json!(2)),
        ("complaints", json!(1)),
        ("orders", json!(2)),
        ("revenue", json!(130.0)),
        ("open_rate", json!(0.3)),
        ("ctr", json!(0.3)),
        ("ctor", json!(1.0)),
        ("unsubscribe_rate", json!(0.2)),
        ("cost", json!(0.1)),
        ("budget_used", json!(0.1)),
        ("revenue_per_recipient", json!(13.0)),
        ("roi", json!(1299.0)),
    ];
    for (k, v) in expect {
        assert_eq!(
            t[k],
            v,
            "totals.{k}: {}",
            serde_json::to_string_pretty(&r).unwrap()
        );
    }
    let variants = r["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 1);
    assert_eq!(variants[0]["clicks_total"], 5);
    let link = |url: &str| {
        r["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["url"] == url)
            .cloned()
            .unwrap_or_else(|| panic!("no link {url}: {r}"))
    };
    let sale = link("https://shop.example/sale");
    assert_eq!(
        (
            &sale["clicks_total"],
            &sale["clicks_unique"],
            &sale["machine_clicks_total"],
            &sale["orders"],
            &sale["revenue"]
        ),
        (&json!(4), &json!(2), &json!(1), &json!(2), &json!(130.0)),
        "{sale}"
    );
    let new = link("https://shop.example/new");
    assert_eq!(
        (
            &new["clicks_total"],
            &new["machine_clicks_total"],
            &new["orders"]
        ),
        (&json!(1), &json!(1), &json!(0)),
        "{new}"
    );
    let hours = r["hourly"].as_array().unwrap();
    let sum = |k: &str| {
        hours
            .iter()
            .map(|h| h[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert_eq!(
        (sum("delivered"), sum("opens_total"), sum("clicks_total")),
        (10, 3, 5),
        "{hours:?}"
    );

    // CSV, and the comparison across campaigns.
    let r = h.get(&format!("/api/v1/reports/campaigns/{id}?format=csv"));
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/csv"))
    );
    let csv = r.body.as_str().unwrap().to_string();
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let total: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |k: &str| total[head.iter().position(|h| *h == k).unwrap()];
    assert_eq!(
        (col("label"), col("opens_unique"), col("roi")),
        ("total", "3", "1299.0"),
        "{csv}"
    );
    let r = h.get("/api/v1/reports/campaigns?status=completed");
    assert_eq!(r.body["campaigns"][0]["open_rate"], 0.3, "{}", r.body);

    // The contact's history: the message, its first open, the clicks, the order.
    let hist = h.get("/api/v1/contacts/c0000@example.test/history").body;
    let kinds: Vec<&str> = hist["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in ["message", "open", "click", "order"] {
        assert!(kinds.contains(&k), "{k} missing: {hist}");
    }
    // The first open of a message is in the history; repeats are counted.
    assert_eq!(kinds.iter().filter(|k| **k == "open").count(), 1, "{hist}");
    let ord = hist["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "order")
        .unwrap();
    assert_eq!(ord["note"], "attributed by parameter", "{hist}");
    let hist2 = h.get("/api/v1/contacts/c0002@example.test/history").body;
    let machine = hist2["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "open")
        .unwrap();
    assert!(
        machine["machine"].as_str().unwrap().contains("Google"),
        "{hist2}"
    );

    // /metrics.
    let m = h
        .get_noauth("/metrics", None)
        .body
        .as_str()
        .unwrap()
        .to_string();
    for line in [
        "herald_tracking_hits_total{kind=\"open\",class=\"human\"} 3",
        "herald_tracking_hits_total{kind=\"open\",class=\"machine\"} 2",
        "herald_tracking_hits_total{kind=\"click\",class=\"human\"} 5",
        "herald_tracking_hits_total{kind=\"click\",class=\"machine\"} 2",
        "herald_unsubscribes_total{outcome=\"one_click\"} 2",
        "herald_attributed_orders_total{by=\"parameter\"} 1",
        "herald_attributed_orders_total{by=\"window\"} 2",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }

    // After the cancellation (o-1) and a lowered total (o-5: 30 → 20),
    // every series adds up to the totals: hours, variants, links; every
    // hour has every figure (zeros as zeros), in JSON and CSV.
    order(&h, "o-5", "c0005@example.test", "20.00", "shipped", None);
    let r = report(&h, id);
    assert_eq!(
        (&r["totals"]["orders"], &r["totals"]["revenue"]),
        (&json!(2), &json!(120.0)),
        "{r}"
    );
    let hours = r["hourly"].as_array().unwrap();
    let orders: u64 = hours.iter().map(|h| h["orders"].as_u64().unwrap()).sum();
    let revenue: f64 = hours.iter().map(|h| h["revenue"].as_f64().unwrap()).sum();
    assert_eq!((orders, revenue), (2, 120.0), "{hours:?}");
    for hour in hours {
        for k in [
            "delivered",
            "failed",
            "complaints",
            "unsubscribes",
            "orders",
            "revenue",
        ] {
            assert!(hour[k].is_number(), "{k} in {hour}");
        }
    }
    assert_eq!(r["variants"][0]["revenue"], 120.0, "{r}");
    let links: f64 = r["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["revenue"].as_f64().unwrap())
        .sum();
    assert_eq!(links, 120.0, "{r}");
    let csv = h.get(&format!(
        "/api/v1/reports/campaigns/{id}?format=csv&part=hourly"
    ));
    let csv = csv.body.as_str().unwrap().to_string();
    for line in csv.lines().skip(1) {
        assert!(
            !line.contains(",,") && !line.ends_with(','),
            "an empty cell: {csv}"
        );
    }
    assert_eq!(
        r["campaign"]["currency"], "EUR",
        "the orders' currency: {r}"
    );

    // An order in another currency: one line per currency, never a sum of
    // both (the single-currency figures are null, in JSON and the UI).
    let mut e = json!({"type": "order", "id": "ev-o-9", "at": chrono_now(),
        "email": "c0005@example.test", "order_id": "o-9", "status": "placed",
        "items": [{"sku": "X", "quantity": 1, "price": "99.00"}], "total": "99.00", "currency": "PLN"});
    e["attribution"] = hrl0.clone().into();
    let res = h.post_json("/api/v1/events", json!([e]));
    assert_eq!(res.body["accepted"], 1, "{}", res.body);
    let r = report(&h, id);
    assert_eq!(r["campaign"]["currencies"], json!(["EUR", "PLN"]), "{r}");
    assert!(r["campaign"]["currency"].is_null(), "{r}");
    assert!(r["totals"]["revenue"].is_null(), "{r}");
    assert_eq!(
        r["totals"]["revenue_by_currency"],
        json!({"EUR": {"orders": 2, "revenue": 120.0}, "PLN": {"orders": 1, "revenue": 99.0}}),
        "{r}"
    );
    assert_eq!(r["totals"]["orders"], 3, "{r}");
    // The comparison across campaigns says the same.
    let list = h.get("/api/v1/reports/campaigns").body;
    let row = &list["campaigns"][0];
    assert!(
        row["revenue"].is_null() && row["currency"].is_null(),
        "{row}"
    );
    assert_eq!(row["revenue_by_currency"]["PLN"]["revenue"], 99.0, "{row}");
    let csv = h.get(&format!("/api/v1/reports/campaigns/{id}?format=csv"));
    let csv = csv.body.as_str().unwrap().to_string();
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let total: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |k: &str| total[head.iter().position(|h| *h == k).unwrap()];
    assert_eq!(
        (col("revenue_EUR"), col("orders_PLN"), col("revenue_PLN")),
        ("120.0", "1", "99.0"),
        "{csv}"
    );
}

/// The public signup form and double opt-in: pending until the recipient's
/// own click; honeypot and rate limit; a withdrawn contact comes back only
/// through their confirmation.
#[test]
fn signup_and_confirmation() {
    let sink = Sink::start(&[]);
    let h = start(&sink, "");
    let form = |fields: &str, ip: &str| {
        h.public(
            "POST",
            "/subscribe",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("User-Agent", BROWSER),
                ("X-Forwarded-For", ip),
            ],
            Some(fields.as_bytes()),
        )
    };
    let r = form(
        "email=New.Person%40Example.test&list=news&language=pl&website=",
        "198.51.100.1",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.as_str().unwrap().contains("New.Person@example.test"),
        "{r:?}"
    );
    assert_eq!(contact(&h, "new.person@example.test")["consent"], "pending");
    let files = sink.wait_files(1, Duration::from_secs(30));
    let mut confirm = tokens(&files[0], "confirm");
    confirm.dedup(); // the text and the HTML part
    assert_eq!(confirm.len(), 1, "{:?}", std::fs::read_to_string(&files[0]));
    let path = format!("/confirm/{}", confirm[0]);
    // A HEAD, a link scanner and a tampered token change nothing.
    assert_eq!(h.public("HEAD", &path, &[], None).status, 200);
    let r = h.public(
        "GET",
        &path,
        &[("User-Agent", "python-requests/2.31")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(contact(&h, "new.person@example.test")["consent"], "pending");
    assert_eq!(h.public("GET", &format!("{path}x"), &[], None).status, 404);
    // The recipient's click.
    let r = h.public(
        "GET",
        &path,
        &[("User-Agent", BROWSER), ("X-Forwarded-For", "198.51.100.7")],
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.as_str().unwrap().contains("Dzi"),
        "Polish page: {r:?}"
    );
    assert_eq!(contact(&h, "new.person@example.test")["consent"], "granted");
    let log = h
        .get("/api/v1/contacts/new.person@example.test/consent")
        .body;
    let entries = log["log"].as_array().unwrap();
    let last = entries.last().unwrap();
    assert_eq!(
        (&last["to"], &last["source"], &last["ip"]),
        (&json!("granted"), &json!("link"), &json!("198.51.100.7")),
        "{log}"
    );
    assert_eq!(last["user_agent"], BROWSER);
    let pend = entries.iter().find(|e| e["to"] == "pending").unwrap();
    assert_eq!(pend["ip"], "198.51.100.1", "{log}");

    // Honeypot: looks fine, does nothing.
    let r = form(
        "email=bot%40example.test&website=http%3A%2F%2Fspam",
        "198.51.100.2",
    );
    assert_eq!(r.status, 200);
    assert_eq!(h.get("/api/v1/contacts/bot@example.test").status, 404);
    // Bad input: named.
    let r = form("email=not-an-address", "198.51.100.3");
    assert_eq!(r.status, 422, "{r:?}");
    let r = form("email=x%40example.test&list=secret", "198.51.100.3");
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret")
    );
    // Rate limit: three per address per hour.
    let mut last = 0;
    for i in 0..4 {
        last = form(&format!("email=r{i}%40example.test"), "198.51.100.4").status;
    }
    assert_eq!(last, 429);

    // Withdrawn, then signs up again: stays withdrawn until confirmed.
    let r = h.post_json(
        "/api/v1/contacts/new.person@example.test/consent",
        json!({"state": "withdrawn", "note": "asked by phone"}),
    );
    assert!(r.status < 300, "{r:?}");
    let r = form("email=new.person%40example.test", "198.51.100.5");
    assert_eq!(r.status, 200);
    assert_eq!(
        contact(&h, "new.person@example.test")["consent"],
        "withdrawn"
    );
    sink.wait_files(2 + 3, Duration::from_secs(30));
    // The new mail's link (the first one was used, and works only once).
    let mut newest = None;
    wait_until(
        "the second confirmation mail",
        Duration::from_secs(30),
        || {
            newest = confirm_links(&sink, "New.Person@example.test")
                .into_iter()
                .find(|l| *l != path);
            newest.is_some()
        },
    );
    let newest = newest.unwrap();
    let r = h.public("GET", &newest, &[("User-Agent", BROWSER)], None);
    assert_eq!(r.status, 200);
    assert_eq!(contact(&h, "new.person@example.test")["consent"], "granted");
}

/// Every acknowledged hit is committed before the answer: opens and an
/// unsubscribe answered just before `kill -9` are all there after the
/// restart. Clicks right after delivery are flagged as a scanner's.
#[test]
fn acknowledged_hits_survive_kill9_and_fast_clicks_are_scanners() {
    let sink = Sink::start(&[]);
    let mut h = start(&sink, "scanner_window = \"1h\"\n");
    h.granted_contacts(30);
    let (id, files) = send(&h, &sink, 30, json!({}));
    for (_, f) in &files {
        let t = tokens(f, "o");
        let r = h.public(
            "GET",
            &format!("/o/{}", t[0]),
            &[("User-Agent", BROWSER)],
            None,
        );
        assert_eq!(r.status, 200);
    }
    let u = tokens(&files[3].1, "u")[0].clone();
    let r = h.public(
        "POST",
        &format!("/u/{u}"),
        &[],
        Some(b"List-Unsubscribe=One-Click"),
    );
    assert_eq!(r.status, 200);
    let c = tokens(&files[4].1, "c")[0].clone();
    assert_eq!(
        h.public("GET", &format!("/c/{c}"), &[("User-Agent", BROWSER)], None)
            .status,
        302
    );
    h.kill9();
    h.restart();
    let r = report(&h, id);
    assert_eq!(r["totals"]["opens_total"], 30, "{r}");
    assert_eq!(r["totals"]["opens_unique"], 30, "{r}");
    assert_eq!(r["totals"]["unsubscribes"], 1, "{r}");
    assert_eq!(contact(&h, &files[3].0)["consent"], "withdrawn");
    // Within the hour after delivery: a scanner's click, not a person's.
    assert_eq!(r["totals"]["machine_clicks_total"], 1, "{r}");
    assert_eq!(r["totals"]["clicks_total"], 0, "{r}");
    let hist = h
        .get(&format!("/api/v1/contacts/{}/history", files[4].0))
        .body;
    let click = hist["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "click")
        .unwrap();
    assert!(
        click["machine"]
            .as_str()
            .unwrap()
            .contains("after delivery"),
        "{hist}"
    );
}

/// Posts the signup form for `email` from a browser at `ip`.
fn signup(h: &Herald, email: &str, ip: &str) -> common::Reply {
    h.public(
        "POST",
        "/subscribe",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("User-Agent", BROWSER),
            ("X-Forwarded-For", ip),
        ],
        Some(format!("email={}&list=news", email.replace('@', "%40")).as_bytes()),
    )
}

/// The confirmation links mailed to `email` so far, oldest first.
fn confirm_links(sink: &Sink, email: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> = sink
        .files()
        .into_iter()
        .filter(|f| rcpts_of(f).iter().any(|r| r.eq_ignore_ascii_case(email)))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|f| tokens(f, "confirm").pop())
        .map(|t| format!("/confirm/{t}"))
        .collect()
}

fn click_confirm(h: &Herald, path: &str) -> common::Reply {
    h.public("GET", path, &[("User-Agent", BROWSER)], None)
}

fn withdraw(h: &Herald, email: &str) {
    let r = h.post_json(
        &format!("/api/v1/contacts/{email}/consent"),
        json!({"state": "withdrawn", "note": "asked by phone"}),
    );
    assert!(r.status < 300, "{r:?}");
}

/// Regression (issue 17, item 1): a withdrawn contact used to come back
/// without the person: the public form (or a `signup` event) moved them to
/// `pending`, after which the API, an import or a second event granted
/// them. Now nothing but their own click on a confirmation link mailed
/// after the withdrawal grants them again.
#[test]
fn withdrawn_consent_comes_back_only_through_the_persons_own_click() {
    let sink = Sink::start(&[]);
    let h = start(&sink, "");
    let who = "gone@example.test";
    let r = h.post_json(
        "/api/v1/contacts",
        json!({"email": who, "consent": "granted"}),
    );
    assert!(r.status < 300, "{r:?}");
    withdraw(&h, who);
    // A stranger signs the address up: it stays withdrawn.
    assert_eq!(signup(&h, who, "203.0.113.9").status, 200);
    assert_eq!(contact(&h, who)["consent"], "withdrawn");
    // The API, an import and shop events cannot grant (or make pending).
    for state in ["granted", "pending"] {
        let r = h.post_json("/api/v1/contacts", json!({"email": who, "consent": state}));
        assert_eq!(r.status, 422, "{state}: {r:?}");
        let r = h.post_json(
            &format!("/api/v1/contacts/{who}/consent"),
            json!({"state": state}),
        );
        assert_eq!(r.status, 422, "{state}: {r:?}");
    }
    let r = h.post_csv(
        "/api/v1/contacts/import",
        format!("email,consent\n{who},granted\n"),
    );
    assert!(r.status < 300, "{r:?}");
    assert_eq!(r.body["rejects"].as_array().map(Vec::len), Some(1), "{r:?}");
    let ev = |id: &str, consent: Option<&str>| {
        let mut e =
            json!({"type": "signup", "id": id, "at": chrono_now(), "email": who, "list": "news"});
        if let Some(c) = consent {
            e["consent"] = c.into();
        }
        e
    };
    let r = h.post_json(
        "/api/v1/events",
        json!([ev("s-1", None), ev("s-2", Some("granted")), ev("s-3", None)]),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(contact(&h, who)["consent"], "withdrawn", "{}", r.body);
    let log = h.get(&format!("/api/v1/contacts/{who}/consent")).body;
    let last = log["log"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["to"], "withdrawn", "{log}");
    // The person's own click on the mail sent after the withdrawal.
    sink.wait_files(1, Duration::from_secs(30));
    let links = confirm_links(&sink, who);
    assert_eq!(links.len(), 1, "one confirmation mail");
    assert_eq!(click_confirm(&h, &links[0]).status, 200);
    let c = contact(&h, who);
    assert_eq!(c["consent"], "granted");
    assert_eq!(c["lists"], json!(["news"]), "{c}");
}

/// Regression (issue 17, item 2): an old confirmation link used to grant
/// again after the contact withdrew. A link works once, and never for a
/// signup made before the contact's withdrawal.
#[test]
fn a_confirmation_link_grants_once_and_never_after_a_withdrawal() {
    let sink = Sink::start(&[]);
    let h = start(&sink, "");
    let who = "once@example.test";
    assert_eq!(signup(&h, who, "198.51.100.20").status, 200);
    sink.wait_files(1, Duration::from_secs(30));
    let link = confirm_links(&sink, who).remove(0);
    assert_eq!(click_confirm(&h, &link).status, 200);
    assert_eq!(contact(&h, who)["consent"], "granted");
    // A second click while still granted is harmless.
    assert_eq!(click_confirm(&h, &link).status, 200);
    withdraw(&h, who);
    let r = click_confirm(&h, &link);
    assert_eq!(r.status, 404, "a used link: {r:?}");
    assert_eq!(contact(&h, who)["consent"], "withdrawn");

    // A link mailed before the withdrawal, never clicked, is dead too.
    let who = "before@example.test";
    assert_eq!(signup(&h, who, "198.51.100.21").status, 200);
    sink.wait_files(2, Duration::from_secs(30));
    let link = confirm_links(&sink, who).remove(0);
    let r = h.post_json(
        "/api/v1/contacts",
        json!({"email": who, "consent": "withdrawn"}),
    );
    assert!(r.status < 300, "{r:?}");
    assert_eq!(click_confirm(&h, &link).status, 404);
    assert_eq!(contact(&h, who)["consent"], "withdrawn");
}

/// Regression (issue 17, item 3): `/subscribe` answered differently for
/// granted, other and erased addresses (telling strangers who is on the
/// list), and added a granted contact to another list without asking.
#[test]
fn the_signup_form_answers_the_same_for_every_address_and_changes_nothing_unconfirmed() {
    let sink = Sink::start(&[]);
    let h = start(&sink, "");
    h.list("other");
    for (who, consent) in [
        ("granted@example.test", "granted"),
        ("pending@example.test", "pending"),
        ("withdrawn@example.test", "withdrawn"),
        ("erased@example.test", "granted"),
    ] {
        let r = h.post_json(
            "/api/v1/contacts",
            json!({"email": who, "consent": consent, "lists": ["other"]}),
        );
        assert!(r.status < 300, "{r:?}");
    }
    assert_eq!(h.delete("/api/v1/contacts/erased@example.test").status, 200);
    let n = std::cell::Cell::new(0u8);
    let answer = |who: &str, json: bool| {
        n.set(n.get() + 1);
        let ip = format!("192.0.2.{}", n.get());
        let (ct, body) = if json {
            (
                "application/json",
                json!({"email": who, "list": "news"}).to_string(),
            )
        } else {
            (
                "application/x-www-form-urlencoded",
                format!("email={}&list=news", who.replace('@', "%40")),
            )
        };
        let r = h.public(
            "POST",
            "/subscribe",
            &[
                ("Content-Type", ct),
                ("User-Agent", BROWSER),
                ("X-Forwarded-For", ip.as_str()),
            ],
            Some(body.as_bytes()),
        );
        (r.status, r.body.to_string().replace(who, "ADDRESS"))
    };
    for json in [false, true] {
        let new = answer(
            if json {
                "new2@example.test"
            } else {
                "new1@example.test"
            },
            json,
        );
        for who in [
            "granted@example.test",
            "pending@example.test",
            "withdrawn@example.test",
            "erased@example.test",
        ] {
            assert_eq!(answer(who, json), new, "{who} (json: {json})");
        }
    }
    // Nothing changed for the existing contacts before their click.
    let g = contact(&h, "granted@example.test");
    assert_eq!(g["lists"], json!(["other"]), "{g}");
    assert_eq!(g["consent"], "granted");
    assert_eq!(
        contact(&h, "pending@example.test")["lists"],
        json!(["other"])
    );
    assert_eq!(h.get("/api/v1/contacts/erased@example.test").status, 404);
    // The granted contact joins the new list with their own click.
    sink.wait_files(7, Duration::from_secs(30));
    let links = confirm_links(&sink, "granted@example.test");
    assert!(!links.is_empty());
    assert_eq!(click_confirm(&h, &links[0]).status, 200);
    let g = contact(&h, "granted@example.test");
    let mut lists: Vec<String> = serde_json::from_value(g["lists"].clone()).unwrap();
    lists.sort();
    assert_eq!(lists, ["news", "other"], "{g}");
    // Nothing was mailed to the erased address.
    assert!(confirm_links(&sink, "erased@example.test").is_empty());
}

const AUTOLOGIN_SITE: &str =
    "autologin_secret = \"autologin-secret-0123456789abcdef\"\nautologin_window = \"1h\"";

const ACCOUNT_HTML: &str = r#"<html><body>
<p><a href="{{ autologin_url('https://shop.example/account') }}">Your account</a></p>
<p><a href="{{ view_in_browser_url }}">View in your browser</a> · <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"#;

/// The claims of an auto-login JWT.
fn jwt_claims(jwt: &str) -> Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1).expect("a JWT");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&raw).expect("JSON claims")
}

/// The `hal` value of a URL, if any.
fn hal_of(url: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == "hal")
        .map(|(_, v)| v.into_owned())
}

/// Regression (issue 17, item 5): every click on an auto-login link
/// minted a fresh 7-day login token however old the mail was, so a
/// forwarded or years-old newsletter (or its `/v/` page) gave account
/// access. Auto-login now expires `autologin_window` after the send; later
/// clicks go to the plain URL, and the token written into the text part
/// expires with the window too.
#[test]
fn auto_login_expires_with_the_message() {
    let sink = Sink::start(&[]);
    let h = start_full(&sink, "", AUTOLOGIN_SITE, ACCOUNT_HTML);
    h.granted_contacts(1);
    let (_, files) = send(&h, &sink, 1, json!({}));
    let file = &files[0].1;
    let click = format!("/c/{}", tokens(file, "c")[0]);
    let go = |path: &str| {
        let r = h.public("GET", path, &[("User-Agent", BROWSER)], None);
        assert_eq!(r.status, 302, "{r:?}");
        r.header("location").unwrap_or_default().to_string()
    };
    // Within the window: logged in, and the token ends with the window.
    let to = go(&click);
    assert!(to.starts_with("https://shop.example/account"), "{to}");
    let claims = jwt_claims(&hal_of(&to).expect("an auto-login token"));
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!(ttl <= 3600, "a token past the 1h window: {claims}");
    // The untracked token in the text part expires with the window as well.
    let text = String::from_utf8_lossy(&common::peers::message_of(file)).into_owned();
    let unfolded = text.replace("=\r\n", "").replace("=3D", "=");
    let jwt = unfolded
        .split("hal=")
        .nth(1)
        .and_then(|s| {
            s.split(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
                .next()
        })
        .expect("the text part's auto-login URL");
    let c = jwt_claims(jwt);
    assert!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap() <= 3600,
        "{c}"
    );
    // The window ends (config reloaded with a 1-second window, then 2 s).
    let config = std::fs::read_to_string(&h.config).unwrap();
    std::fs::write(
        &h.config,
        config.replace("autologin_window = \"1h\"", "autologin_window = \"1s\""),
    )
    .unwrap();
    h.hup();
    std::thread::sleep(Duration::from_secs(3));
    let to = go(&click);
    assert_eq!(hal_of(&to), None, "no login after the window: {to}");
    assert!(to.starts_with("https://shop.example/account"), "{to}");
    // The message's web page gives no fresh login either.
    let view = format!("/v/{}", tokens(file, "v")[0]);
    let page = h.public("GET", &view, &[("User-Agent", BROWSER)], None);
    assert_eq!(page.status, 200, "{page:?}");
    let html = page.body.as_str().unwrap_or_default().to_string();
    let in_page: Vec<&str> = html
        .split("/c/")
        .skip(1)
        .filter_map(|s| s.split(['"', '\'', '<']).next())
        .collect();
    assert!(!in_page.is_empty(), "{html}");
    for t in in_page {
        assert_eq!(hal_of(&go(&format!("/c/{t}"))), None);
    }
    // Issue 17, small item: the page is locked down.
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{page:?}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
}

/// Regression (issue 17, item 9): the `/u/` link of an admin preview with
/// tracking opened the real contact's unsubscribe page, and a POST
/// withdrew them. A preview's links lead nowhere.
#[test]
fn preview_links_do_nothing() {
    let sink = Sink::start(&[]);
    let h = start(&sink, "");
    h.granted_contacts(1);
    let r = h.post_json(
        "/api/v1/templates/news/preview",
        json!({"contact": "c0000@example.test", "tracking": true}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let html = r.body["html"].as_str().unwrap().to_string();
    let token = |kind: &str| {
        html.split(&format!("/{kind}/"))
            .nth(1)
            .and_then(|s| s.split(['"', '\'', '<']).next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no /{kind}/ link in {html}"))
    };
    let u = format!("/u/{}", token("u"));
    assert_eq!(
        h.public("GET", &u, &[("User-Agent", BROWSER)], None).status,
        404
    );
    let r = h.public(
        "POST",
        &u,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"List-Unsubscribe=One-Click"),
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(contact(&h, "c0000@example.test")["consent"], "granted");
    let r = h.public(
        "GET",
        &format!("/c/{}", token("c")),
        &[("User-Agent", BROWSER)],
        None,
    );
    assert_eq!(r.status, 404, "{r:?}");
    let history = h.get("/api/v1/contacts/c0000@example.test/history").body;
    assert_eq!(history["events"], json!([]), "{history}");
}
