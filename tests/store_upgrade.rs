//! Schema migration: a store written by an older Herald opens with this one,
//! is migrated in place and reads the same.
//!
//! - `tests/fixtures/store-v1/` was made by commit 462f2f7 (before issue 17
//!   added `signup_requests_v1` and `queue_by_address_v1`) with the first
//!   version of `tests/fixtures/make-store.py`.
//! - `tests/fixtures/store-v2/` was made by commit a470bb9 (the last before
//!   the send layer moved the `campaign_*` counter, engagement, link and
//!   ledger tables to send-keyed `send_*` tables, schema 1 → 2) with
//!   `tests/fixtures/make-store.py`.
//! - `tests/fixtures/store-v3/` was made by commit 01868cd (schema 2, the
//!   last before issue 25 added `send_money_v1`, attributed orders by
//!   currency) with `tests/fixtures/make-store.py`.
//! - `tests/fixtures/store-v4/` was made by commit 3973176 (schema 3, the
//!   last before the SMS channel's tables and the built-in `phone`) with
//!   `tests/fixtures/make-store.py` (which since also sends two customer
//!   events with phones).
//! - `tests/fixtures/store-v5/` was made by commit 0cbfaf8 (schema 4, the
//!   last with contacts in JSON; its daemon saved `segment-index.bin` when
//!   it stopped) with `tests/fixtures/make-store.py`.
//! - `tests/fixtures/store-v6/` was made by commit e68a04d (schema 5, the
//!   last with the shop's strings in every order and aggregate) with
//!   `tests/fixtures/make-store.py` (which since also sends a catalogue,
//!   orders with categories, names, payment types, a delivery date, a
//!   cancelled order, an update and a login, and saves two contacts' shop
//!   export).
//! - `tests/fixtures/store-v7/` was made by commit 89854ea (schema 6, the
//!   last with finished messages as JSON) with `tests/fixtures/make-store.py`
//!   (which since also saves every finished message's record).
//!
//! - `tests/fixtures/store-v8/` was made by commit 98ca599 (schema 7, the
//!   last whose write transactions opened every table at once; the schema
//!   is unchanged since, so it opens without a migration) with
//!   `tests/fixtures/make-store.py`.
//!
//! Each script also saved what that binary's API answered (`expected.json`).
//! This binary must answer the same (it may add keys), and the new tables
//! must work on the old data: the address index is built at open, so
//! erasure reaches a message queued by the old binary; the migrated send
//! tables keep counting. A crash in the middle of the migration (the
//! process aborted as by `kill -9`, through a fault-injection variable)
//! leaves a store the next start migrates again.

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

fn start_on_fixture(name: &str) -> (Herald, Value) {
    start_on_fixture_env(name, Vec::new())
}

fn start_on_fixture_env(name: &str, env: Vec<(String, String)>) -> (Herald, Value) {
    let (dir, config, expected) = fixture(name);
    (Herald::start_in_env(dir, config, env), expected)
}

/// A temporary directory with a copy of fixture `name` and a config for it.
fn fixture(name: &str) -> (tempfile::TempDir, std::path::PathBuf, Value) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::copy(fixture.join("herald.redb"), data.join("herald.redb")).unwrap();
    // The segment index the fixture's binary saved when it stopped, if it
    // did (store-v5 on).
    let saved = fixture.join("segment-index.bin");
    if saved.exists() {
        std::fs::copy(&saved, data.join("segment-index.bin")).unwrap();
    }
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
    (dir, config, expected)
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
    let (h, want) = start_on_fixture("store-v1");
    same_answers(&h, &want);
}

#[test]
fn migration_to_the_sms_channel_moves_international_phones_and_keeps_every_answer() {
    let (h, mut want) = start_on_fixture("store-v4");
    for c in want["contacts"]["contacts"].as_array_mut().unwrap() {
        if c["email"] == "c01@example.test" {
            c["fields"].as_object_mut().unwrap().remove("phone");
        }
    }
    same_answers(&h, &want);
    // "+48 500 100 200" became the built-in phone (and left the field);
    // "500100201" (no country code: the store cannot know which country)
    // stays in the custom field, untouched.
    let c1 = get(&h, "/api/v1/contacts/c01@example.test");
    assert_eq!(c1["phone"], "+48500100200", "{c1}");
    assert!(c1["fields"].get("phone").is_none(), "{c1}");
    assert_eq!(c1["sms_consent"], "unknown");
    let c2 = get(&h, "/api/v1/contacts/c02@example.test");
    assert_eq!(c2["phone"], Value::Null, "{c2}");
    assert_eq!(c2["fields"]["phone"], "500100201", "{c2}");
    // The phone index works on the migrated contact: SMS consent can be
    // granted, and a new phone set by an event.
    let r = h.post_json(
        "/api/v1/contacts/c01@example.test/consent",
        serde_json::json!({"state": "granted", "channel": "sms"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["sms_consent"], "granted");
    let r = h.post_json(
        "/api/v1/events",
        serde_json::json!([{"type": "customer", "id": "ev-c-9", "at": "2026-12-01T10:00:00Z",
            "email": "c02@example.test", "phone": "+48 500 100 201"}]),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        get(&h, "/api/v1/contacts/c02@example.test")["phone"],
        "+48500100201"
    );
    // The old queue and campaign still answer as they did.
    let id = want["campaign_id"].as_u64().unwrap();
    assert_eq!(
        get(&h, &format!("/api/v1/campaigns/{id}"))["status"],
        "completed"
    );
}

#[test]
fn migration_to_orders_by_currency_fills_the_lines_and_counting_goes_on() {
    let (h, want) = start_on_fixture("store-v3");
    same_answers(&h, &want);
    let id = want["campaign_id"].as_u64().unwrap();
    let r = get(&h, &format!("/api/v1/reports/campaigns/{id}"));
    assert_eq!(
        r["totals"]["revenue_by_currency"],
        serde_json::json!({"EUR": {"orders": 1, "revenue": 49.9}}),
        "{r}"
    );
    assert_eq!(r["campaign"]["currencies"], serde_json::json!(["EUR"]));
    // The migrated line moves with the order: refunded, it is taken back.
    let email = want["history"]["contact"]["email"].as_str().unwrap();
    let refund = serde_json::json!([{"type": "order", "id": "ev-o-1-refund",
        "at": want["report"]["campaign"]["finished"], "email": email, "order_id": "o-1",
        "status": "refunded", "items": [{"sku": "X", "quantity": 1, "price": "49.90"}],
        "total": "49.90", "currency": "EUR"}]);
    let res = h.post_json("/api/v1/events", refund);
    assert_eq!(res.body["accepted"], 1, "{}", res.body);
    let r = get(&h, &format!("/api/v1/reports/campaigns/{id}"));
    assert_eq!(r["totals"]["orders"], 0, "{r}");
    assert_eq!(
        r["totals"]["revenue_by_currency"],
        serde_json::json!({}),
        "{r}"
    );
    let hours = r["hourly"].as_array().unwrap();
    assert_eq!(
        hours
            .iter()
            .map(|h| h["orders"].as_u64().unwrap())
            .sum::<u64>(),
        0,
        "{hours:?}"
    );
}

#[test]
fn migration_to_send_keyed_tables_keeps_every_answer_and_counting_goes_on() {
    let (h, want) = start_on_fixture("store-v2");
    assert!(
        h.log().contains("migrated the store to schema 2"),
        "{}",
        h.log()
    );
    let id = want["campaign_id"].as_u64().unwrap();
    // The campaign's report is its send's report.
    assert_subset(
        &want["report"],
        &get(&h, &format!("/api/v1/reports/sends/campaign/{id}")),
        "sends report",
    );
    let r = want["receipt_id"].as_u64().unwrap();
    assert_subset(
        &want["receipt"],
        &get(&h, &format!("/api/v1/queue/{r}")),
        "receipt",
    );
    same_answers(&h, &want);
}

#[test]
fn migration_to_compact_contacts_keeps_every_answer_and_ignores_the_old_saved_index() {
    let (h, want) = start_on_fixture("store-v5");
    same_answers(&h, &want);
    let log = h.log();
    assert!(log.contains("migrated the store to schema 5"), "{log}");
    // The index the old binary saved (for schema 4, in an older file
    // format) is not used: built anew.
    assert!(log.contains("saved segment index not used"), "{log}");
    assert!(log.contains("from=\"store\""), "{log}");
    // Migrated contacts are read, changed and found by segments.
    let r = h.patch_json(
        "/api/v1/contacts/c01@example.test",
        serde_json::json!({"language": "pl", "add_tags": ["moved"]}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let c = get(&h, "/api/v1/contacts/c01@example.test");
    assert_eq!(c["language"], "pl", "{c}");
    assert_eq!(c["tags"], serde_json::json!(["moved"]), "{c}");
    assert_eq!(c["phone"], "+48500100200", "{c}");
    let seg = serde_json::json!({"field": "tags", "contains": "moved"}).to_string();
    assert_eq!(
        h.put("/api/v1/segments/moved", "application/json", &seg)
            .status,
        201
    );
    let r = get(&h, "/api/v1/segments/moved/preview");
    assert_eq!(r["count"], 1, "{r}");

    // The migrated order is found by the shop's id: an update replaces it
    // (still one order, the new total), a new id adds one.
    let buyer = (0..10)
        .map(|n| format!("c{n:02}@example.test"))
        .find(|e| get(&h, &format!("/api/v1/contacts/{e}"))["shop"]["order_count"] == 1)
        .expect("the fixture's buyer");
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    // Posts an order event; the buyer's (order count, order sum) after it.
    let order = |id: &str, ev: &str, total: &str| {
        let r = h.post_json(
            "/api/v1/events",
            serde_json::json!([{"type": "order", "id": ev, "at": now,
                "email": buyer, "order_id": id, "total": total, "currency": "EUR",
                "items": [{"sku": "X", "quantity": 1, "price": total}]}]),
        );
        assert_eq!(r.body["accepted"], 1, "{r:?}");
        let shop = get(&h, &format!("/api/v1/contacts/{buyer}"))["shop"].clone();
        (shop["order_count"].clone(), shop["order_sum"].clone())
    };
    assert_eq!(
        order("o-1", "ev-o-1-update", "59.90"),
        (1.into(), "59.90".into())
    );
    assert_eq!(order("o-2", "ev-o-2", "10.00"), (2.into(), "69.90".into()));
}

#[test]
fn migration_to_the_term_dictionary_keeps_every_order_and_aggregate() {
    let (mut h, want) = start_on_fixture("store-v6");
    same_answers(&h, &want);
    assert!(
        h.log().contains("migrated the store to schema 6"),
        "{}",
        h.log()
    );
    let shop =
        |h: &Herald, e: &str| get(h, &format!("/api/v1/contacts/{e}/export"))["shop"].clone();
    for e in ["c03@example.test", "c04@example.test"] {
        assert_subset(&want["shop"][e], &shop(&h, e), e);
    }
    // Segments read the migrated aggregates (the index is built anew: the
    // saved one is for schema 5).
    let count = |h: &Herald, name: &str, seg: Value| {
        let r = h.put(
            &format!("/api/v1/segments/{name}"),
            "application/json",
            &seg.to_string(),
        );
        assert!(r.status == 201 || r.status == 200, "{r:?}");
        get(h, &format!("/api/v1/segments/{name}/preview"))["count"].clone()
    };
    let boots = serde_json::json!({"bought_category": "boots", "after": "365 days ago"});
    assert_eq!(count(&h, "boots", boots.clone()), 1);
    let blik = serde_json::json!({"field": "payment_types", "contains": "blik"});
    assert_eq!(count(&h, "blik", blik), 1);
    // New orders use the migrated terms and add new ones.
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    // An event the old binary accepted is still a duplicate (its id is
    // kept as a hash now).
    let r = h.post_json(
        "/api/v1/events",
        serde_json::json!([{"type": "login", "id": "ev-l-1", "at": now,
            "email": "c04@example.test"}]),
    );
    assert_eq!(r.body["duplicate"], 1, "{r:?}");
    let r = h.post_json(
        "/api/v1/events",
        serde_json::json!([{"type": "order", "id": "ev-o-s4", "at": now,
            "email": "c04@example.test", "order_id": "s-4", "total": "260.00",
            "currency": "PLN", "payment_type": "card",
            "items": [{"sku": "BOOT-1", "quantity": 1, "price": "199.00"},
                      {"sku": "SCARF-2", "quantity": 1, "price": "61.00",
                       "category": "scarves", "name": "Silk Scarf"}]}]),
    );
    assert_eq!(r.body["accepted"], 1, "{r:?}");
    let s = shop(&h, "c04@example.test");
    assert_eq!(s["aggregates"]["order_count"], 1, "{s}");
    assert_eq!(s["payment_types"], serde_json::json!(["card"]), "{s}");
    let o = &s["orders"][1];
    assert_eq!(o["items"][0]["category"], "boots", "{s}");
    assert_eq!(o["items"][1]["name"], "Silk Scarf", "{s}");
    assert_eq!(count(&h, "boots", boots), 2);
    let scarves = serde_json::json!({"bought_category": "scarves", "after": "1 day ago"});
    assert_eq!(count(&h, "scarves", scarves), 1);
    // After a restart (the index saved at the stop) the same answers.
    h.stop_and_start();
    assert_eq!(
        get(&h, "/api/v1/segments/scarves/preview")["count"],
        1,
        "{}",
        h.log()
    );
    assert_eq!(
        shop(&h, "c04@example.test")["orders"][1]["items"][1]["sku"],
        "SCARF-2"
    );
}

#[test]
fn migration_to_compact_finished_messages_keeps_every_record() {
    let (mut h, want) = start_on_fixture("store-v7");
    assert!(
        h.log().contains("migrated the store to schema 7"),
        "{}",
        h.log()
    );
    let finished = want["finished"].as_object().expect("finished messages");
    assert!(finished.len() >= 10, "{}", finished.len());
    for (id, m) in finished {
        assert_eq!(get(&h, &format!("/api/v1/queue/{id}")), *m, "message {id}");
    }
    // same_answers erases c09: its finished messages are scrubbed (rewritten
    // in the new form by this binary), and its queued one finishes.
    same_answers(&h, &want);
    let check = |h: &Herald| {
        for (id, m) in finished {
            let got = get(h, &format!("/api/v1/queue/{id}"));
            if m.to_string().contains("c09@example.test") {
                assert!(!got.to_string().contains("c09@example.test"), "{got}");
                assert_eq!(got["recipients"][0]["address"], "(erased)", "{got}");
                assert_eq!(got["message_id"], m["message_id"], "{got}");
            } else {
                assert_eq!(got, *m, "message {id}");
            }
        }
    };
    check(&h);
    let q = want["queued_id"].as_u64().expect("queued id");
    let m = get(&h, &format!("/api/v1/queue/{q}"));
    assert!(!m["finished"].is_null(), "{m}");
    // The consent log was re-encoded too.
    assert_subset(
        &want["consent"],
        &get(&h, "/api/v1/contacts/gone@example.test/consent"),
        "consent",
    );
    h.stop_and_start();
    check(&h);
    assert_eq!(get(&h, &format!("/api/v1/queue/{q}")), m);
}

/// A store of the current schema written by the previous version (whose
/// write transactions opened every table) opens as it is, with no
/// migration, answers what that version answered, and takes writes that
/// its tables, now opened one by one, keep across a restart.
#[test]
fn a_store_of_this_schema_written_by_the_previous_version_needs_no_migration() {
    let (mut h, want) = start_on_fixture("store-v8");
    assert!(!h.log().contains("migrated the store"), "{}", h.log());
    let finished = want["finished"].as_object().expect("finished messages");
    assert!(finished.len() >= 10, "{}", finished.len());
    for (id, m) in finished {
        if !m.to_string().contains("c09@example.test") {
            assert_eq!(get(&h, &format!("/api/v1/queue/{id}")), *m, "message {id}");
        }
    }
    // Reads and writes (an erasure among them) on the old file.
    same_answers(&h, &want);
    let r = h.post_json(
        "/api/v1/contacts",
        serde_json::json!({"email": "new@example.test", "consent": "granted"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    h.stop_and_start();
    assert!(!h.log().contains("migrated the store"), "{}", h.log());
    let c = get(&h, "/api/v1/contacts/new@example.test");
    assert_eq!(c["consent"], "granted", "{c}");
    assert_subset(
        &want["campaign"],
        &get(&h, &format!("/api/v1/campaigns/{}", want["campaign_id"])),
        "campaign after a restart",
    );
}

#[test]
fn a_crash_in_the_middle_of_the_migration_leaves_a_store_the_next_start_migrates() {
    let (dir, config, want) = fixture("store-v2");
    // The old store has a few dozen rows to migrate; abort after 10 of them,
    // inside the migration's transaction (as `kill -9` would).
    let out = std::process::Command::new(common::bin())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("HERALD_FAULT_MIGRATION_ABORT_AFTER", "10")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("fault injection: aborting the migration"),
        "{log}"
    );
    assert!(!log.contains("herald ready"), "{log}");
    let h = Herald::start_in(dir, config);
    assert!(
        h.log().contains("upgrading the store schema"),
        "{}",
        h.log()
    );
    same_answers(&h, &want);
}

/// What every fixture's binary answered, this one answers too.
fn same_answers(h: &Herald, want: &Value) {
    let id = want["campaign_id"].as_u64().unwrap();
    let who = want["clicker"].as_str().unwrap().to_string();
    assert_subset(
        &want["campaign"],
        &get(h, &format!("/api/v1/campaigns/{id}")),
        "campaign",
    );
    assert_subset(
        &want["report"],
        &get(h, &format!("/api/v1/reports/campaigns/{id}")),
        "report",
    );
    assert_subset(
        &want["history"],
        &get(h, &format!("/api/v1/contacts/{who}/history")),
        "history",
    );
    assert_subset(
        &want["consent"],
        &get(h, "/api/v1/contacts/gone@example.test/consent"),
        "consent",
    );
    assert_subset(
        &want["contacts"],
        &get(h, "/api/v1/contacts?limit=100"),
        "contacts",
    );
    let q = want["queued_id"].as_u64().unwrap();
    assert_subset(
        &settled(want["queued"].clone()),
        &settled(get(h, &format!("/api/v1/queue/{q}"))),
        "queued",
    );
    // The new tables on old data: the export reads them, and erasure finds
    // the old binary's queued message through the index built at open.
    let export = get(h, &format!("/api/v1/contacts/{who}/export"));
    assert_eq!(export["signup_requests"], serde_json::json!([]), "{export}");
    // Every order the old binary's history showed (one up to store-v7; the
    // fixture script sends two more since).
    let orders = want["history"]["events"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["kind"] == "order").count());
    assert!(orders >= Some(1), "{}", want["history"]);
    assert_eq!(
        export["shop"]["orders"].as_array().map(Vec::len),
        orders,
        "{export}"
    );
    let r = h.delete("/api/v1/contacts/c09@example.test");
    assert_eq!(r.status, 200, "{r:?}");
    let m = get(h, &format!("/api/v1/queue/{q}"));
    let text = m.to_string();
    assert!(!text.contains("c09@example.test"), "{m}");
    assert_eq!(m["recipients"][0]["state"], "failed", "{m}");
}

/// Automations keep their runs in tables an older store does not have: they
/// are created at open, and an event for a contact the old binary stored
/// fires a flow and queues its message.
#[test]
fn automations_run_on_a_store_written_by_an_older_version() {
    let (dir, config, want) = fixture("store-v2");
    common::write(
        &dir.path().join("templates"),
        "thanks/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\nkind = \"transactional\"\n[subject]\nen = \"Thanks\"\n",
    );
    common::write(
        &dir.path().join("templates"),
        "thanks/body.en.html",
        "<html><body><p>Thanks for order {{ order.id }}</p></body></html>\n",
    );
    common::write(
        &dir.path().join("automations"),
        "thanks.toml",
        "[trigger]\ntype = \"order_placed\"\n[[steps]]\ntemplate = \"thanks\"\n",
    );
    let h = Herald::start_in(dir, config);
    let who = want["clicker"].as_str().unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let r = h.post_json(
        "/api/v1/events",
        serde_json::json!([{"type": "order", "id": "after-upgrade", "at": now, "email": who,
            "order_id": "U-1", "items": [{"sku": "X", "quantity": 1, "price": "5.00"}],
            "total": "5.00", "currency": "EUR"}]),
    );
    assert_eq!(r.body["accepted"], 1, "{r:?}");
    common::wait_until(
        "the flow's message queued",
        std::time::Duration::from_secs(20),
        || {
            let s = get(&h, "/api/v1/automations/thanks");
            s["steps"][0]["counts"]["queued"] == 1 && s["counts"]["entered"] == 1
        },
    );
}

/// Users, sessions, the activity log and owners live in tables an older
/// store does not have: they are created at open; campaigns the old binary
/// made have no owner until one is given, and the admin UI works on them.
#[test]
fn the_admin_ui_works_on_a_store_written_by_an_older_version() {
    let (h, want) = start_on_fixture("store-v2");
    let owner = get(&h, "/api/v1/owners/campaign/1");
    assert_eq!(owner["owner"], serde_json::Value::Null, "{owner}");
    assert_eq!(
        get(&h, "/api/v1/activity")["activity"],
        serde_json::json!([])
    );
    let s = common::ui::UiSession::new(&h, "ana", "admin");
    assert_eq!(s.get("/admin").status, 200);
    let r = h.put(
        "/api/v1/owners/campaign/1",
        "application/json",
        r#"{"owner": "ana"}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(get(&h, "/api/v1/owners/campaign/1")["owner"], "ana");
    let log = get(&h, "/api/v1/activity?object=campaign:1");
    assert_eq!(log["activity"][0]["action"], "PUT owner", "{log}");
    same_answers(&h, &want);
}

/// The inbound tables are created at open; a DSN about a message the old
/// binary sent is matched by its Message-ID and applied to its old queue
/// record (which had no `reports`), and the suppression list, empty in the
/// old store, lists the address.
#[test]
fn bounces_apply_to_messages_an_older_version_sent() {
    let (h, _) = start_on_fixture("store-v2");
    assert_eq!(get(&h, "/api/v1/suppressions")["total"], 0);
    assert_eq!(get(&h, "/api/v1/inbound")["total"], 0);
    let m = get(&h, "/api/v1/queue/1");
    let rcpt = m["recipients"][0]["address"].as_str().unwrap().to_string();
    let mid = m["message_id"].as_str().unwrap().to_string();
    assert_eq!(m["recipients"][0]["state"], "delivered", "{m}");
    let dsn = common::reports::dsn(&rcpt, "failed", "5.1.1", "550 5.1.1 user unknown", &mid);
    let r = h.post_typed("/api/v1/bounces", "message/rfc822", &dsn);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["matched_by"], "message_id", "{}", r.body);
    let m = get(&h, "/api/v1/queue/1");
    assert_eq!(m["recipients"][0]["state"], "failed", "{m}");
    assert_eq!(m["recipients"][0]["reports"][0]["verdict"], "hard", "{m}");
    let c = get(&h, &format!("/api/v1/contacts/{rcpt}"));
    assert_eq!(c["consent"], "invalid", "{c}");
    let s = get(&h, "/api/v1/suppressions");
    assert_eq!(s["suppressions"][0]["address"], rcpt.as_str(), "{s}");
    assert_eq!(s["suppressions"][0]["source"], "bounce", "{s}");
}
