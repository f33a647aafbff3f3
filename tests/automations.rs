//! Automations through the real binary and a real SMTP peer (smtp-sink):
//! events posted with past `at` times fire flows (no sleeping for days),
//! the right message arrives once, and neither a duplicate event, a restart
//! nor a `kill -9` repeats it.

mod common;

use std::time::Duration;

use common::flows::{at, count, events, granted, mail_to, start, status};
use common::peers::Sink;
use common::wait_until;
use serde_json::{Value, json};

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
    // Ann's history names the flow.
    let hist = h.get("/api/v1/contacts/ann@example.test/history").body;
    assert!(
        hist["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["source"] == "automation:cart"),
        "{hist}"
    );
    // The send layer reports the flow's step.
    wait_until("delivered", Duration::from_secs(30), || {
        let r = h.get("/api/v1/reports/sends/automation/cart");
        r.status == 200 && r.body["totals"]["delivered"] == 1
    });
}

/// A list an API flow joins on cannot be deleted while the flow names it.
#[test]
fn a_list_an_api_flow_names_cannot_be_deleted() {
    let sink = Sink::start(&[]);
    let h = start(&sink, &[], "");
    h.list("vip");
    let r = h.put(
        "/api/v1/automations/vip_welcome",
        "application/json",
        &json!({"trigger": {"type": "list_joined", "list": "vip"},
                "steps": [{"template": "m", "data": {"label": "vip"}}]})
        .to_string(),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let r = h.delete("/api/v1/lists/vip");
    assert_eq!(r.status, 409, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("automation `vip_welcome`"),
        "{r:?}"
    );
    assert_eq!(h.delete("/api/v1/automations/vip_welcome").status, 200);
    assert_eq!(h.delete("/api/v1/lists/vip").status, 200);
}
