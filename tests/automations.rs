//! Automations through the real binary and a real SMTP peer (smtp-sink):
//! events posted with past `at` times fire flows (no sleeping for days),
//! the right message arrives once, and neither a duplicate event, a restart
//! nor a `kill -9` repeats it.

mod common;

use std::time::Duration;

use common::peers::{Sink, rcpts_of};
use common::{Herald, wait_until, write};
use serde_json::{Value, json};

/// Starts a daemon relaying to `sink`, with the test templates (`m`:
/// marketing, `tx`: transactional; both show what a message is about) and
/// these flows (`config/automations/NAME.toml`).
pub fn start(sink: &Sink, flows: &[(&str, &str)], automation: &str) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    for (name, kind) in [("m", "marketing"), ("tx", "transactional")] {
        write(
            &t,
            &format!("{name}/template.toml"),
            &format!(
                "sender = \"shop\"\ndefault_language = \"en\"\nkind = \"{kind}\"\n[subject]\nen = \"{name} {{{{ data.label }}}}\"\n"
            ),
        );
        write(
            &t,
            &format!("{name}/body.en.html"),
            "<html><body><p>For {{ contact.email }}: {{ data.label }}</p>\
{% if cart %}<p>CART {% for i in cart.items %}{{ i.sku }}x{{ i.quantity }} {% endfor %}</p>{% endif %}\
{% if order %}<p>ORDER {{ order.id }}</p>{% endif %}\
{% if coupon %}<p>COUPON {{ coupon }}</p>{% endif %}\
<p>PRODUCTS {% for p in products %}{{ p.sku }} {% endfor %}</p>\
<p><a href=\"https://shop.example/\">Shop</a></p></body></html>\n",
        );
    }
    let a = dir.path().join("automations");
    std::fs::create_dir_all(&a).unwrap();
    for (name, text) in flows {
        write(&a, &format!("{name}.toml"), text);
    }
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        common::config_text(
            &dir.path().join("data"),
            &format!(
                "[paths]\ntemplates = \"templates\"\nautomations = \"automations\"\n\
[automation]\npoll = \"200ms\"\n{automation}\n\
[[site]]\nid = \"shop\"\nname = \"Example Shop\"\nurl = \"https://shop.example\"\ncurrency = \"EUR\"\n\
[[sender]]\nid = \"shop\"\nfrom = \"Shop <news@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
                sink.port
            ),
        ),
    )
    .unwrap();
    Herald::start_in(dir, config)
}

/// An RFC 3339 time `secs` seconds from now (negative: in the past).
pub fn at(secs: i64) -> String {
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("{secs} seconds"),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Posts events; every one must be accepted (or a duplicate).
pub fn events(h: &Herald, evs: Value) -> Value {
    let r = h.post_json("/api/v1/events", evs);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["rejected"], 0, "{}", r.body);
    r.body
}

/// A granted contact.
pub fn granted(h: &Herald, email: &str) {
    let r = h.post_json(
        "/api/v1/contacts",
        json!({"email": email, "consent": "granted"}),
    );
    assert!(r.status == 201 || r.status == 200, "{r:?}");
}

/// The messages smtp-sink received for `rcpt`, as text.
pub fn mail_to(sink: &Sink, rcpt: &str) -> Vec<String> {
    sink.files()
        .into_iter()
        .filter(|f| rcpts_of(f).iter().any(|r| r == rcpt))
        .map(|f| {
            String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default())
                .replace("=\r\n", "")
                .replace("=\n", "")
        })
        .collect()
}

/// A flow's status.
pub fn status(h: &Herald, name: &str) -> Value {
    let r = h.get(&format!("/api/v1/automations/{name}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

/// A counter of a flow's step (`None`: the flow-wide counters).
pub fn count(s: &Value, step: Option<usize>, name: &str) -> u64 {
    match step {
        Some(i) => s["steps"][i]["counts"][name].as_u64().unwrap_or(0),
        None => s["counts"][name].as_u64().unwrap_or(0),
    }
}

const CART_FLOW: &str = r#"
[trigger]
type = "cart_abandoned"
after = "1h"
[[steps]]
template = "m"
data = { label = "cart-reminder" }
products = "trigger"
"#;

fn cart(id: &str, email: &str, secs: i64, items: Value) -> Value {
    json!({"type": "cart", "id": id, "at": at(secs), "email": email, "items": items, "currency": "EUR"})
}

#[test]
fn an_abandoned_cart_is_reminded_once_and_an_order_cancels_a_pending_reminder() {
    let sink = Sink::start(&[]);
    let mut h = start(&sink, &[("cart", CART_FLOW)], "");
    granted(&h, "ann@example.test");
    granted(&h, "bob@example.test");
    // Ann left her cart two hours ago: the reminder (due an hour ago) goes.
    let ann = cart(
        "c-ann-1",
        "ann@example.test",
        -7200,
        json!([{"sku": "SHOE-42", "quantity": 2, "price": "99.00"}]),
    );
    events(&h, json!([ann.clone()]));
    wait_until("ann's reminder", Duration::from_secs(30), || {
        mail_to(&sink, "ann@example.test").len() == 1
    });
    let m = &mail_to(&sink, "ann@example.test")[0];
    assert!(m.contains("cart-reminder"), "{m}");
    assert!(m.contains("CART SHOE-42x2"), "{m}");
    assert!(m.contains("PRODUCTS SHOE-42"), "{m}");
    // Bob's cart is 30 minutes old: his reminder waits.
    events(
        &h,
        json!([cart(
            "c-bob-1",
            "bob@example.test",
            -1800,
            json!([{"sku": "HAT-1", "quantity": 1, "price": "20.00"}])
        )]),
    );
    wait_until("bob pending", Duration::from_secs(10), || {
        status(&h, "cart")["steps"][0]["pending"] == 1
    });
    // The same event again, a restart, a kill -9: nothing more for Ann.
    let r = events(&h, json!([ann]));
    assert_eq!(r["duplicate"], 1, "{r}");
    h.restart();
    h.kill9();
    h.restart();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(mail_to(&sink, "ann@example.test").len(), 1);
    // Bob orders: his reminder is cancelled.
    events(
        &h,
        json!([{"type": "order", "id": "o-bob-1", "at": at(-60), "email": "bob@example.test",
            "order_id": "B-1", "items": [{"sku": "HAT-1", "quantity": 1, "price": "20.00"}],
            "total": "20.00", "currency": "EUR"}]),
    );
    let s = status(&h, "cart");
    assert_eq!(s["steps"][0]["pending"], 0, "{s}");
    assert_eq!(count(&s, Some(0), "exited.ordered"), 1, "{s}");
    assert_eq!(count(&s, Some(0), "queued"), 1, "{s}");
    assert_eq!(count(&s, None, "entered"), 2, "{s}");
    assert!(mail_to(&sink, "bob@example.test").is_empty());
    // The send layer reports the flow's step.
    wait_until("delivered", Duration::from_secs(30), || {
        let r = h.get("/api/v1/reports/sends/automation/cart");
        r.status == 200 && r.body["totals"]["delivered"] == 1
    });
}
