//! Schema migration: a store written by an older Herald opens with this one,
//! is migrated in place (missing tables created, the queue's address index
//! filled from the old records) and reads the same: `tests/fixtures/store-v1/` was made by commit 462f2f7 (before
//! issue 17 added `signup_requests_v1` and `queue_by_address_v1`) with
//! `tests/fixtures/make-store-v1.py`, which also saved what that binary's
//! API answered (`expected.json`). This binary must answer the same (it may
//! add keys), and the new tables must work on the old data: the address
//! index is built at open, so erasure reaches a message queued by the old
//! binary.

mod common;

use std::path::Path;

use common::Herald;
use serde_json::Value;

/// Every key of `want` is in `got` with the same value (objects may gain
/// keys; arrays must match element by element).
fn assert_subset(want: &Value, got: &Value, path: &str) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                let Some(gv) = g.get(k) else {
                    panic!("{path}.{k}: missing (expected {v})");
                };
                assert_subset(v, gv, &format!("{path}.{k}"));
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            assert_eq!(w.len(), g.len(), "{path}: lengths differ: {want} vs {got}");
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                assert_subset(a, b, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(want, got, "{path}"),
    }
}

fn start_on_fixture() -> (Herald, Value) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1");
    std::fs::copy(fixture.join("herald.redb"), data.join("herald.redb")).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap())
            .unwrap();
    // Both senders relay to a port where nothing listens: the queued
    // message stays queued.
    let dead = common::peers::free_port();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\n\
[storage]\npath = \"{}\"\n[admin]\ntoken = \"{}\"\n\
[tracking]\nsecret = \"{}\"\n[log]\nlevel = \"info\"\n\
[[site]]\nid = \"shop\"\nname = \"Example Shop\"\nurl = \"https://shop.example\"\ncurrency = \"EUR\"\n\
[[sender]]\nid = \"newsletter\"\nfrom = \"Shop <news@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {dead}\ntls = \"none\"\n\
[[sender]]\nid = \"stuck\"\nfrom = \"Shop <orders@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {dead}\ntls = \"none\"\n",
            data.display(),
            common::TOKEN,
            common::TRACKING_SECRET,
        ),
    )
    .unwrap();
    let h = Herald::start_in(dir, config);
    (h, expected)
}

fn get(h: &Herald, path: &str) -> Value {
    let r = h.get(path);
    assert_eq!(r.status, 200, "{path}: {r:?}");
    r.body
}

/// Queue record fields that a retry may change (the old binary's deferred
/// message is due again at once, so it may be in flight when read).
fn settled(mut m: Value) -> Value {
    if let Some(rs) = m["recipients"].as_array_mut() {
        for r in rs {
            let state = r["state"].as_str().unwrap_or_default();
            assert!(matches!(state, "deferred" | "in_flight"), "{r}");
            for k in [
                "attempts",
                "next_attempt",
                "reply",
                "updated",
                "host",
                "state",
            ] {
                r.as_object_mut().map(|o| o.remove(k));
            }
        }
    }
    m
}

#[test]
fn migration_of_a_store_written_by_the_previous_version_keeps_every_answer() {
    let (h, want) = start_on_fixture();
    let id = want["campaign_id"].as_u64().unwrap();
    let who = want["clicker"].as_str().unwrap().to_string();
    assert_subset(
        &want["campaign"],
        &get(&h, &format!("/api/v1/campaigns/{id}")),
        "campaign",
    );
    assert_subset(
        &want["report"],
        &get(&h, &format!("/api/v1/reports/campaigns/{id}")),
        "report",
    );
    assert_subset(
        &want["history"],
        &get(&h, &format!("/api/v1/contacts/{who}/history")),
        "history",
    );
    assert_subset(
        &want["consent"],
        &get(&h, "/api/v1/contacts/gone@example.test/consent"),
        "consent",
    );
    assert_subset(
        &want["contacts"],
        &get(&h, "/api/v1/contacts?limit=100"),
        "contacts",
    );
    let q = want["queued_id"].as_u64().unwrap();
    assert_subset(
        &settled(want["queued"].clone()),
        &settled(get(&h, &format!("/api/v1/queue/{q}"))),
        "queued",
    );
    // The new tables on old data: the export reads them, and erasure finds
    // the old binary's queued message through the index built at open.
    let export = get(&h, &format!("/api/v1/contacts/{who}/export"));
    assert_eq!(export["signup_requests"], serde_json::json!([]), "{export}");
    assert_eq!(
        export["shop"]["orders"].as_array().map(Vec::len),
        Some(1),
        "{export}"
    );
    let r = h.delete("/api/v1/contacts/c09@example.test");
    assert_eq!(r.status, 200, "{r:?}");
    let m = get(&h, &format!("/api/v1/queue/{q}"));
    let text = m.to_string();
    assert!(!text.contains("c09@example.test"), "{m}");
    assert_eq!(m["recipients"][0]["state"], "failed", "{m}");
}
