//! Automation flows through the real binary and a real SMTP peer
//! (smtp-sink), one trigger family per test: signup and double opt-in,
//! back in stock and pre-orders, drips with chained flows and tags,
//! segment entry, consent, quiet hours and the frequency cap, coupons, the
//! exactly-once promise under `kill -9`, and the admin API (create,
//! replace, errors, pause, preview, test, reports, check-config, SIGHUP).
//! Events carry past `at` times instead of sleeping; the daemon's clock is
//! the real one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::flows::{at, count, events, granted, mail_to, start, status};
use common::peers::{Sink, rcpts_of, tokens};
use common::{Herald, run, wait_until, write};
use serde_json::{Value, json};

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";

/// The messages `rcpt` got whose text contains `label`.
fn labelled(sink: &Sink, rcpt: &str, label: &str) -> usize {
    mail_to(sink, rcpt)
        .iter()
        .filter(|m| m.contains(label))
        .count()
}

/// Waits until `rcpt` got `n` messages with `label`.
fn wait_mail(sink: &Sink, rcpt: &str, label: &str, n: usize) {
    wait_until(
        &format!("{n} message(s) `{label}` to {rcpt}"),
        Duration::from_secs(30),
        || labelled(sink, rcpt, label) >= n,
    );
}

/// A contact with no consent given (`unknown`).
fn unknown(h: &Herald, email: &str) {
    let r = h.post_json("/api/v1/contacts", json!({"email": email}));
    assert!(r.status == 201 || r.status == 200, "{r:?}");
    assert_eq!(
        h.get(&format!("/api/v1/contacts/{email}")).body["consent"],
        "unknown"
    );
}

fn patch(h: &Herald, email: &str, body: Value) {
    let r = h.patch_json(&format!("/api/v1/contacts/{email}"), body);
    assert!(r.status < 300, "{r:?}");
}

fn withdraw(h: &Herald, email: &str) {
    let r = h.post_json(
        &format!("/api/v1/contacts/{email}/consent"),
        json!({"state": "withdrawn", "note": "asked by phone"}),
    );
    assert!(r.status < 300, "{r:?}");
}

/// Waits until `name` has nothing pending and `step` counted `counter`
/// at least `n` times; returns the status.
fn wait_count(h: &Herald, name: &str, step: Option<usize>, counter: &str, n: u64) -> Value {
    let mut s = Value::Null;
    wait_until(
        &format!("{name}: {counter} >= {n}"),
        Duration::from_secs(30),
        || {
            s = status(h, name);
            count(&s, step, counter) >= n
        },
    );
    s
}

// ---------------------------------------------------------------------
// 1. signup and confirmed
// ---------------------------------------------------------------------

const SIGNUP_FLOW: &str = r#"
[trigger]
type = "signup"
[[steps]]
template = "tx"
data = { label = "signup-thanks" }
"#;

const CONFIRMED_FLOW: &str = r#"
[trigger]
type = "confirmed"
list = "news"
[[steps]]
template = "m"
data = { label = "welcome-confirmed" }
"#;

/// The flows daemon with a signup form (`[signup]`, list `news`, template
/// `confirm` showing the confirmation link): started, stopped, given the
/// form and restarted (the helper's config has no `[signup]`).
fn start_with_signup(sink: &Sink, flows: &[(&str, &str)]) -> Herald {
    let mut h = start(sink, flows, "");
    h.kill9();
    let t = h.dir.path().join("templates");
    write(
        &t,
        "confirm/template.toml",
        "sender = \"shop\"\ndefault_language = \"en\"\nkind = \"transactional\"\ntracking = false\n[subject]\nen = \"Confirm\"\n",
    );
    write(
        &t,
        "confirm/body.en.html",
        "<html><body><p>Please confirm: <a href=\"{{ data.confirm_url }}\">yes</a></p></body></html>\n",
    );
    let mut config = std::fs::read_to_string(&h.config).unwrap();
    config.push_str(
        "\n[signup]\nlists = [\"news\"]\ntemplate = \"confirm\"\nrate_per_ip_per_hour = 100\n",
    );
    std::fs::write(&h.config, config).unwrap();
    h.restart();
    h
}

fn confirm_links(sink: &Sink, email: &str) -> Vec<String> {
    let mut files: Vec<_> = sink
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

#[test]
fn signup_and_confirmation_each_send_their_welcome_once() {
    let sink = Sink::start(&[]);
    let h = start_with_signup(
        &sink,
        &[("signup_thanks", SIGNUP_FLOW), ("welcome", CONFIRMED_FLOW)],
    );
    h.list("news");
    // A signup event from the shop (pending: Herald would ask): the
    // transactional thank-you goes, once, even if the event comes again.
    let ev = json!({"type": "signup", "id": "su-1", "at": at(-5), "email": "ann@example.test", "list": "news"});
    events(&h, json!([ev.clone()]));
    wait_mail(&sink, "ann@example.test", "signup-thanks", 1);
    let r = events(&h, json!([ev]));
    assert_eq!(r["duplicate"], 1, "{r}");

    // The double opt-in: the form, the confirmation mail, the click.
    let r = h.public(
        "POST",
        "/subscribe",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("User-Agent", BROWSER),
            ("X-Forwarded-For", "198.51.100.1"),
        ],
        Some(b"email=bob%40example.test&list=news&website="),
    );
    assert_eq!(r.status, 200, "{r:?}");
    // The form's signup fires `signup` too (bob is pending: transactional).
    wait_mail(&sink, "bob@example.test", "signup-thanks", 1);
    let mut links = Vec::new();
    wait_until("the confirmation mail", Duration::from_secs(30), || {
        links = confirm_links(&sink, "bob@example.test");
        !links.is_empty()
    });
    // Nothing for `confirmed` yet: bob has not clicked.
    assert_eq!(labelled(&sink, "bob@example.test", "welcome-confirmed"), 0);
    let click = || h.public("GET", &links[0], &[("User-Agent", BROWSER)], None);
    assert_eq!(click().status, 200);
    assert_eq!(
        h.get("/api/v1/contacts/bob@example.test").body["consent"],
        "granted"
    );
    wait_mail(&sink, "bob@example.test", "welcome-confirmed", 1);
    // A second click on the same link changes nothing and sends nothing.
    assert_eq!(click().status, 200);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(labelled(&sink, "bob@example.test", "welcome-confirmed"), 1);
    assert_eq!(labelled(&sink, "bob@example.test", "signup-thanks"), 1);
    assert_eq!(labelled(&sink, "ann@example.test", "signup-thanks"), 1);
    // Ann never confirmed: no welcome.
    assert_eq!(labelled(&sink, "ann@example.test", "welcome-confirmed"), 0);
    let s = status(&h, "welcome");
    assert_eq!(count(&s, None, "entered"), 1, "{s}");
    assert_eq!(count(&s, Some(0), "queued"), 1, "{s}");
    let s = status(&h, "signup_thanks");
    assert_eq!(count(&s, None, "entered"), 2, "{s}");
    assert_eq!(count(&s, Some(0), "queued"), 2, "{s}");
}

// ---------------------------------------------------------------------
// 2. back_in_stock and preorder_available
// ---------------------------------------------------------------------

const BACK_FLOW: &str = r#"
[trigger]
type = "back_in_stock"
[[steps]]
template = "m"
data = { label = "back-in-stock" }
products = "trigger"
"#;

const PREORDER_FLOW: &str = r#"
[trigger]
type = "preorder_available"
[[steps]]
template = "tx"
data = { label = "preorder-ready" }
products = "trigger"
"#;

fn product(id: &str, sku: &str, stock: i64) -> Value {
    json!({"type": "product", "id": id, "at": at(-1), "sku": sku, "name": format!("Product {sku}"),
        "price": "99.00", "currency": "EUR", "stock": stock})
}

fn wait_entry(id: &str, email: &str, sku: &str, kind: &str) -> Value {
    json!({"type": "waitlist", "id": id, "at": at(-60), "email": email, "sku": sku, "kind": kind})
}

#[test]
fn wait_listed_contacts_hear_of_a_restock_once_per_restock() {
    let sink = Sink::start(&[]);
    let h = start(
        &sink,
        &[("back", BACK_FLOW), ("preorder", PREORDER_FLOW)],
        "",
    );
    for who in ["ann", "bob", "cat"] {
        granted(&h, &format!("{who}@example.test"));
    }
    events(
        &h,
        json!([
            product("p-1", "SHOE-42", 0),
            product("p-2", "HAT-1", 0),
            wait_entry("w-1", "ann@example.test", "SHOE-42", "back_in_stock"),
            wait_entry("w-2", "bob@example.test", "SHOE-42", "preorder"),
            wait_entry("w-3", "cat@example.test", "HAT-1", "back_in_stock"),
        ]),
    );
    // SHOE-42 goes from 0 to 5: Ann (waiting) and Bob (pre-ordered) hear.
    events(&h, json!([product("p-3", "SHOE-42", 5)]));
    wait_mail(&sink, "ann@example.test", "back-in-stock", 1);
    wait_mail(&sink, "bob@example.test", "preorder-ready", 1);
    let m = &mail_to(&sink, "ann@example.test")[0];
    assert!(m.contains("PRODUCTS SHOE-42"), "{m}");
    let m = &mail_to(&sink, "bob@example.test")[0];
    assert!(m.contains("PRODUCTS SHOE-42"), "{m}");
    // More stock (5 to 7) is no restock; the event again is a duplicate.
    events(&h, json!([product("p-4", "SHOE-42", 7)]));
    let r = events(&h, json!([product("p-3", "SHOE-42", 5)]));
    assert_eq!(r["duplicate"], 1, "{r}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(mail_to(&sink, "ann@example.test").len(), 1);
    assert_eq!(mail_to(&sink, "bob@example.test").len(), 1);
    // Cat waits for something else.
    assert!(mail_to(&sink, "cat@example.test").is_empty());
    // Sold out, then restocked through the products API: a new occurrence.
    events(&h, json!([product("p-5", "SHOE-42", 0)]));
    let r = h.post_json(
        "/api/v1/products",
        json!({"sku": "SHOE-42", "name": "Product SHOE-42", "price": "99.00", "currency": "EUR", "stock": 2}),
    );
    assert!(r.status < 300, "{r:?}");
    wait_mail(&sink, "ann@example.test", "back-in-stock", 2);
    wait_mail(&sink, "bob@example.test", "preorder-ready", 2);
    // HAT-1 restocked: Cat now.
    events(&h, json!([product("p-6", "HAT-1", 1)]));
    wait_mail(&sink, "cat@example.test", "back-in-stock", 1);
    assert!(mail_to(&sink, "cat@example.test")[0].contains("PRODUCTS HAT-1"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(mail_to(&sink, "ann@example.test").len(), 2);
    assert_eq!(mail_to(&sink, "bob@example.test").len(), 2);
    let s = status(&h, "back");
    assert_eq!(count(&s, None, "entered"), 3, "{s}");
    assert_eq!(count(&s, Some(0), "queued"), 3, "{s}");
    let s = status(&h, "preorder");
    assert_eq!(count(&s, Some(0), "queued"), 2, "{s}");
}

// ---------------------------------------------------------------------
// 3. list_joined drip, flow_completed, tag_added
// ---------------------------------------------------------------------

const DRIP_FLOW: &str = r#"
[trigger]
type = "list_joined"
list = "news"
[[steps]]
template = "m"
data = { label = "drip-1" }
[[steps]]
after = "2 days"
template = "m"
data = { label = "drip-2" }
[[steps]]
after = "3 days"
template = "m"
data = { label = "drip-3" }
"#;

const FIRST_FLOW: &str = r#"
[trigger]
type = "list_joined"
list = "vip"
[[steps]]
template = "m"
data = { label = "first-flow" }
tags_add = ["welcomed"]
"#;

const NEXT_FLOW: &str = r#"
[trigger]
type = "flow_completed"
flow = "first"
[[steps]]
template = "m"
data = { label = "next-flow" }
"#;

const TAGGED_FLOW: &str = r#"
[trigger]
type = "tag_added"
tag = "welcomed"
[[steps]]
template = "tx"
data = { label = "tagged-flow" }
"#;

#[test]
fn a_drip_waits_between_steps_and_flows_chain_by_completion_and_tags() {
    let sink = Sink::start(&[]);
    let h = start(
        &sink,
        &[
            ("drip", DRIP_FLOW),
            ("first", FIRST_FLOW),
            ("next", NEXT_FLOW),
            ("tagged", TAGGED_FLOW),
        ],
        "",
    );
    h.list("news");
    h.list("vip");
    granted(&h, "ann@example.test");
    patch(&h, "ann@example.test", json!({"add_lists": ["news"]}));
    wait_mail(&sink, "ann@example.test", "drip-1", 1);
    let s = wait_count(&h, "drip", Some(0), "queued", 1);
    assert_eq!(s["steps"][1]["pending"], 1, "{s}");
    assert_eq!(s["steps"][2]["pending"], 0, "{s}");
    // Step 2 is due two days after step 1.
    let next = s["steps"][1]["next_due"].as_str().unwrap().to_string();
    assert!(next > at(86_400 + 23 * 3600), "{s}");
    assert!(next < at(2 * 86_400 + 3600), "{s}");
    assert_eq!(count(&s, None, "completed"), 0, "{s}");

    // `first` sends and tags; its completion starts `next`, its tag
    // starts `tagged`.
    patch(&h, "ann@example.test", json!({"add_lists": ["vip"]}));
    wait_mail(&sink, "ann@example.test", "first-flow", 1);
    wait_mail(&sink, "ann@example.test", "next-flow", 1);
    wait_mail(&sink, "ann@example.test", "tagged-flow", 1);
    let c = h.get("/api/v1/contacts/ann@example.test").body;
    assert!(c["tags"].to_string().contains("welcomed"), "{c}");
    let s = status(&h, "first");
    assert_eq!(count(&s, None, "completed"), 1, "{s}");
    let s = wait_count(&h, "next", None, "completed", 1);
    assert_eq!(count(&s, None, "entered"), 1, "{s}");
    wait_count(&h, "tagged", None, "completed", 1);
    std::thread::sleep(Duration::from_secs(1));
    for label in ["drip-1", "first-flow", "next-flow", "tagged-flow"] {
        assert_eq!(labelled(&sink, "ann@example.test", label), 1, "{label}");
    }
    assert_eq!(labelled(&sink, "ann@example.test", "drip-2"), 0);
    // A tag added again (already there) is no new trigger.
    patch(&h, "ann@example.test", json!({"add_tags": ["welcomed"]}));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(labelled(&sink, "ann@example.test", "tagged-flow"), 1);
}

// ---------------------------------------------------------------------
// 4. segment_entered
// ---------------------------------------------------------------------

const VIP_FLOW: &str = r#"
[trigger]
type = "segment_entered"
segment = "vips"
[[steps]]
template = "m"
data = { label = "vip-entered" }
"#;

#[test]
fn a_contact_entering_a_segment_after_the_baseline_enters_the_flow_once() {
    let sink = Sink::start(&[]);
    let h = start(&sink, &[("vip", VIP_FLOW)], "segment_check = \"1s\"");
    granted(&h, "ann@example.test");
    granted(&h, "bob@example.test");
    // Ann is a member before the flow's first check: the baseline, no mail.
    patch(&h, "ann@example.test", json!({"add_tags": ["vip"]}));
    let r = h.put(
        "/api/v1/segments/vips",
        "application/json",
        &json!({"field": "tags", "contains": "vip"}).to_string(),
    );
    assert_eq!(r.status, 201, "{r:?}");
    // The baseline check is not observable through the API: give the
    // 1-second checker a few rounds.
    std::thread::sleep(Duration::from_secs(4));
    patch(&h, "bob@example.test", json!({"add_tags": ["vip"]}));
    wait_mail(&sink, "bob@example.test", "vip-entered", 1);
    // Later checks find Bob still a member: no second entry.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(mail_to(&sink, "bob@example.test").len(), 1);
    assert!(mail_to(&sink, "ann@example.test").is_empty());
    let s = status(&h, "vip");
    assert_eq!(count(&s, None, "entered"), 1, "{s}");
    assert_eq!(count(&s, Some(0), "queued"), 1, "{s}");
    // Leaving and coming back is a new entry (`reentry` is "always").
    patch(&h, "bob@example.test", json!({"remove_tags": ["vip"]}));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(mail_to(&sink, "bob@example.test").len(), 1);
    patch(&h, "bob@example.test", json!({"add_tags": ["vip"]}));
    wait_mail(&sink, "bob@example.test", "vip-entered", 2);
    assert!(mail_to(&sink, "ann@example.test").is_empty());
}

// ---------------------------------------------------------------------
// 5. consent
// ---------------------------------------------------------------------

const CONSENT_DRIP: &str = r#"
[trigger]
type = "list_joined"
list = "news"
[[steps]]
template = "m"
data = { label = "c-drip-1" }
[[steps]]
after = "1 day"
template = "m"
data = { label = "c-drip-2" }
"#;

const CONSENT_TX: &str = r#"
[trigger]
type = "list_joined"
list = "news"
[[steps]]
template = "tx"
data = { label = "c-tx-now" }
[[steps]]
after = "1 day"
template = "tx"
data = { label = "c-tx-later" }
"#;

const CONSENT_LATER: &str = r#"
[trigger]
type = "list_joined"
list = "more"
[[steps]]
template = "tx"
data = { label = "c-more" }
"#;

#[test]
fn withdrawn_contacts_leave_every_flow_and_unknown_ones_get_only_transactional_steps() {
    let sink = Sink::start(&[]);
    let h = start(
        &sink,
        &[
            ("cdrip", CONSENT_DRIP),
            ("ctx", CONSENT_TX),
            ("cmore", CONSENT_LATER),
        ],
        "",
    );
    h.list("news");
    h.list("more");
    granted(&h, "ann@example.test");
    granted(&h, "bob@example.test");
    unknown(&h, "uma@example.test");
    for who in ["ann", "bob", "uma"] {
        patch(
            &h,
            &format!("{who}@example.test"),
            json!({"add_lists": ["news"]}),
        );
    }
    wait_mail(&sink, "ann@example.test", "c-drip-1", 1);
    wait_mail(&sink, "bob@example.test", "c-drip-1", 1);
    wait_mail(&sink, "ann@example.test", "c-tx-now", 1);
    wait_mail(&sink, "bob@example.test", "c-tx-now", 1);
    // Uma (unknown) gets the transactional step, not the marketing one.
    wait_mail(&sink, "uma@example.test", "c-tx-now", 1);
    let s = wait_count(&h, "cdrip", Some(0), "skipped.no_consent", 1);
    assert_eq!(count(&s, Some(0), "queued"), 2, "{s}");
    assert_eq!(labelled(&sink, "uma@example.test", "c-drip-1"), 0);
    assert_eq!(s["steps"][1]["pending"], 3, "{s}");
    let s = wait_count(&h, "ctx", Some(0), "queued", 3);
    assert_eq!(s["steps"][1]["pending"], 3, "{s}");

    // Ann withdraws through the API, Bob through the one-click link of his
    // mail: both leave every flow at once.
    withdraw(&h, "ann@example.test");
    let bob_mail = sink
        .files()
        .into_iter()
        .find(|f| {
            rcpts_of(f).iter().any(|r| r == "bob@example.test")
                && std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .contains("c-drip-1")
        })
        .unwrap();
    let u = tokens(&bob_mail, "u");
    assert!(!u.is_empty(), "no /u/ link in bob's mail");
    let r = h.public(
        "POST",
        &format!("/u/{}", u[0]),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"List-Unsubscribe=One-Click"),
    );
    assert!(r.status < 300, "{r:?}");
    assert_eq!(
        h.get("/api/v1/contacts/bob@example.test").body["consent"],
        "withdrawn"
    );
    let s = status(&h, "cdrip");
    assert_eq!(count(&s, Some(1), "exited.consent"), 2, "{s}");
    assert_eq!(s["steps"][1]["pending"], 1, "uma's run waits: {s}");
    let s = status(&h, "ctx");
    assert_eq!(count(&s, Some(1), "exited.consent"), 2, "{s}");
    assert_eq!(s["steps"][1]["pending"], 1, "{s}");
    // Nothing new reaches them, transactional or not.
    for who in ["ann", "bob", "uma"] {
        patch(
            &h,
            &format!("{who}@example.test"),
            json!({"add_lists": ["more"]}),
        );
    }
    wait_mail(&sink, "uma@example.test", "c-more", 1);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(labelled(&sink, "ann@example.test", "c-more"), 0);
    assert_eq!(labelled(&sink, "bob@example.test", "c-more"), 0);
    assert_eq!(mail_to(&sink, "ann@example.test").len(), 2);
    assert_eq!(mail_to(&sink, "bob@example.test").len(), 2);
    let s = status(&h, "cmore");
    assert_eq!(count(&s, None, "entered"), 1, "{s}");
}

// ---------------------------------------------------------------------
// 6. quiet hours and the frequency cap
// ---------------------------------------------------------------------

fn utc_hour() -> u32 {
    let out = std::process::Command::new("date")
        .args(["-u", "+%H"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

const QUIET_M: &str = r#"
[trigger]
type = "list_joined"
list = "news"
[[steps]]
template = "m"
data = { label = "quiet-m" }
"#;

const QUIET_TX: &str = r#"
[trigger]
type = "list_joined"
list = "news"
[[steps]]
template = "tx"
data = { label = "quiet-tx" }
"#;

#[test]
fn quiet_hours_hold_marketing_steps_until_the_window_ends() {
    // A window from the last full hour to two hours from now (UTC; the
    // test site's time zone is UTC).
    let h0 = utc_hour();
    let (start_h, end_h) = ((h0 + 23) % 24, (h0 + 2) % 24);
    let sink = Sink::start(&[]);
    let h = start(
        &sink,
        &[("quiet_m", QUIET_M), ("quiet_tx", QUIET_TX)],
        &format!("quiet_hours = \"{start_h:02}:00-{end_h:02}:00\""),
    );
    h.list("news");
    granted(&h, "ann@example.test");
    patch(&h, "ann@example.test", json!({"add_lists": ["news"]}));
    // The transactional message goes; the marketing one is held.
    wait_mail(&sink, "ann@example.test", "quiet-tx", 1);
    let s = wait_count(&h, "quiet_m", Some(0), "held.quiet_hours", 1);
    assert_eq!(s["steps"][0]["pending"], 1, "{s}");
    let next = s["steps"][0]["next_due"].as_str().unwrap();
    assert!(
        next.ends_with(&format!("T{end_h:02}:00:00Z")),
        "held until the window's end: {s}"
    );
    assert!(next > at(0).as_str(), "{s}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(labelled(&sink, "ann@example.test", "quiet-m"), 0);
    assert_eq!(count(&status(&h, "quiet_m"), Some(0), "queued"), 0);
}

const CAP_A: &str = r#"
[trigger]
type = "list_joined"
list = "news"
[[steps]]
template = "m"
data = { label = "cap-a" }
"#;

const CAP_B: &str = r#"
[trigger]
type = "list_joined"
list = "more"
[[steps]]
template = "m"
data = { label = "cap-b" }
"#;

const CAP_TX: &str = r#"
[trigger]
type = "list_joined"
list = "more"
[[steps]]
template = "tx"
data = { label = "cap-tx" }
"#;

#[test]
fn the_frequency_cap_holds_a_second_marketing_message_but_not_a_transactional_one() {
    let sink = Sink::start(&[]);
    let h = start(
        &sink,
        &[("cap_a", CAP_A), ("cap_b", CAP_B), ("cap_tx", CAP_TX)],
        "max_marketing_per_contact = 1",
    );
    h.list("news");
    h.list("more");
    granted(&h, "ann@example.test");
    patch(&h, "ann@example.test", json!({"add_lists": ["news"]}));
    wait_mail(&sink, "ann@example.test", "cap-a", 1);
    patch(&h, "ann@example.test", json!({"add_lists": ["more"]}));
    wait_mail(&sink, "ann@example.test", "cap-tx", 1);
    let s = wait_count(&h, "cap_b", Some(0), "held.frequency_cap", 1);
    assert_eq!(s["steps"][0]["pending"], 1, "{s}");
    // Held until the first message leaves the 7-day window.
    let next = s["steps"][0]["next_due"].as_str().unwrap();
    assert!(next > at(6 * 86_400).as_str(), "{s}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(labelled(&sink, "ann@example.test", "cap-b"), 0);
    // Both marketing flows due in the same batch: still one message.
    granted(&h, "bob@example.test");
    patch(
        &h,
        "bob@example.test",
        json!({"add_lists": ["news", "more"]}),
    );
    wait_mail(&sink, "bob@example.test", "cap-tx", 1);
    wait_until("bob's held step", Duration::from_secs(30), || {
        count(&status(&h, "cap_a"), Some(0), "held.frequency_cap")
            + count(&status(&h, "cap_b"), Some(0), "held.frequency_cap")
            >= 2
    });
    std::thread::sleep(Duration::from_secs(1));
    let bob_marketing =
        labelled(&sink, "bob@example.test", "cap-a") + labelled(&sink, "bob@example.test", "cap-b");
    assert_eq!(bob_marketing, 1);
}

// ---------------------------------------------------------------------
// 7. coupons
// ---------------------------------------------------------------------

const COUPON_FLOW: &str = r#"
coupon_pool = "welcome10"
[trigger]
type = "cart_abandoned"
after = "1h"
[[steps]]
template = "m"
data = { label = "coupon-mail" }
coupon = true
"#;

fn coupon_of(m: &str) -> Option<String> {
    m.split("COUPON ").nth(1).map(|r| {
        r.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect()
    })
}

/// Every coupon mail the sink got: recipient → codes.
fn coupons(sink: &Sink, who: &[String]) -> BTreeMap<String, Vec<Option<String>>> {
    who.iter()
        .map(|w| {
            (
                w.clone(),
                mail_to(sink, w)
                    .iter()
                    .filter(|m| m.contains("coupon-mail"))
                    .map(|m| coupon_of(m))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn a_coupon_flow_hands_each_message_its_own_code_and_holds_when_the_pool_is_empty() {
    let sink = Sink::start(&[]);
    let h = start(&sink, &[("coupon", COUPON_FLOW)], "");
    h.granted_contacts(5);
    let who: Vec<String> = (0..5).map(|i| format!("c{i:04}@example.test")).collect();
    let r = h.post_json(
        "/api/v1/coupons/welcome10",
        json!({"codes": ["CODE-A1", "CODE-B2", "CODE-C3"]}),
    );
    assert!(r.status < 300, "{r:?}");
    // Five carts abandoned two hours ago, in one batch.
    let carts: Vec<Value> = who
        .iter()
        .enumerate()
        .map(|(i, w)| {
            json!({"type": "cart", "id": format!("cart-{i}"), "at": at(-7200), "email": w,
                "items": [{"sku": "SHOE-42", "quantity": 1, "price": "99.00"}], "currency": "EUR"})
        })
        .collect();
    events(&h, Value::Array(carts));
    wait_until("three coupon mails", Duration::from_secs(30), || {
        coupons(&sink, &who).values().map(Vec::len).sum::<usize>() >= 3
    });
    let s = wait_count(&h, "coupon", Some(0), "held.coupon_pool_empty", 2);
    assert_eq!(s["steps"][0]["pending"], 2, "{s}");
    assert_eq!(count(&s, Some(0), "queued"), 3, "{s}");
    std::thread::sleep(Duration::from_secs(1));
    let got = coupons(&sink, &who);
    let codes: Vec<String> = got.values().flatten().map(|c| c.clone().unwrap()).collect();
    assert_eq!(codes.len(), 3, "{got:?}");
    let distinct: BTreeSet<&String> = codes.iter().collect();
    assert_eq!(
        distinct,
        ["CODE-A1", "CODE-B2", "CODE-C3"]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .iter()
            .collect(),
        "{got:?}"
    );
    assert!(got.values().all(|v| v.len() <= 1), "{got:?}");
    // No message without its code.
    for w in &who {
        for m in mail_to(&sink, w) {
            assert!(coupon_of(&m).is_some_and(|c| !c.is_empty()), "{m}");
        }
    }
    // More codes: the runs held for want of one go at once.
    let r = h.post_json(
        "/api/v1/coupons/welcome10",
        json!({"codes": ["CODE-D4", "CODE-E5"]}),
    );
    assert!(r.status < 300, "{r:?}");
    wait_until("five coupon mails", Duration::from_secs(30), || {
        coupons(&sink, &who).values().map(Vec::len).sum::<usize>() >= 5
    });
    std::thread::sleep(Duration::from_secs(1));
    let got = coupons(&sink, &who);
    assert!(got.values().all(|v| v.len() == 1), "{got:?}");
    let distinct: BTreeSet<String> = got.values().flatten().map(|c| c.clone().unwrap()).collect();
    assert_eq!(distinct.len(), 5, "{got:?}");
    let s = status(&h, "coupon");
    assert_eq!(count(&s, Some(0), "queued"), 5, "{s}");
    assert_eq!(s["pending"], 0, "{s}");
}

// ---------------------------------------------------------------------
// 8. exactly once under kill -9
// ---------------------------------------------------------------------

const CART_FLOW: &str = r#"
[trigger]
type = "cart_abandoned"
after = "1h"
[[steps]]
template = "m"
data = { label = "cart-reminder" }
products = "trigger"
"#;

#[test]
fn two_hundred_reminders_are_sent_exactly_once_across_a_kill9() {
    let sink = Sink::start(&[]);
    let mut h = start(&sink, &[("cart", CART_FLOW)], "");
    let n = 200;
    h.granted_contacts(n);
    let carts: Vec<Value> = (0..n)
        .map(|i| {
            json!({"type": "cart", "id": format!("cart-{i}"), "at": at(-7200),
                "email": format!("c{i:04}@example.test"),
                "items": [{"sku": "SHOE-42", "quantity": 1, "price": "99.00"}], "currency": "EUR"})
        })
        .collect();
    let r = events(&h, Value::Array(carts.clone()));
    assert_eq!(r["accepted"], n, "{r}");
    // Killed at once: the runner is deciding, rendering or committing the
    // batch the events armed (they committed with their runs).
    h.kill9();
    let at_first_kill = sink.files().len();
    h.restart();
    // Killed again while the messages go out.
    wait_until("the first messages", Duration::from_secs(60), || {
        sink.files().len() > at_first_kill
    });
    h.kill9();
    let at_second_kill = sink.files().len();
    h.restart();
    // The same events again after the restarts change nothing.
    let r = events(&h, Value::Array(carts));
    assert_eq!(r["duplicate"], n, "{r}");
    wait_until("every reminder", Duration::from_secs(90), || {
        let s = status(&h, "cart");
        count(&s, Some(0), "queued") >= n as u64 && s["pending"] == 0
    });
    wait_until("every message delivered", Duration::from_secs(90), || {
        let r = h.get("/api/v1/reports/sends/automation/cart");
        r.status == 200 && r.body["totals"]["delivered"] == n
    });
    std::thread::sleep(Duration::from_secs(1));
    // Recipient → the Message-IDs of what smtp-sink got for them.
    let mut per: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in sink.files() {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .unwrap_or("")
            .to_string();
        for r in rcpts_of(&f) {
            per.entry(r).or_default().push(id.clone());
        }
    }
    assert_eq!(per.len(), n, "{} of {n} got theirs", per.len());
    // The automation queued exactly one message per contact: one
    // Message-ID each, none queued twice, none lost.
    let queued_twice: Vec<_> = per
        .iter()
        .filter(|(_, ids)| ids.iter().collect::<BTreeSet<_>>().len() != 1)
        .collect();
    assert!(
        queued_twice.is_empty(),
        "more than one message for: {queued_twice:?}"
    );
    // SMTP itself is at least once: a transaction in flight at a kill
    // (250 received, its outcome not yet committed) is delivered again
    // after the restart — the same message, at most one per open relay
    // connection (10) per kill, as tests/delivery.rs bounds it.
    let redelivered: usize = per.values().map(|ids| ids.len() - 1).sum();
    assert!(redelivered <= 2 * 10, "{redelivered} copies: {per:?}");
    let s = status(&h, "cart");
    assert_eq!(count(&s, Some(0), "queued"), n as u64, "{s}");
    assert_eq!(count(&s, None, "entered"), n as u64, "{s}");
    eprintln!(
        "{at_first_kill} and {at_second_kill} of {n} had arrived at the kills; \
         {redelivered} in-flight message(s) delivered again"
    );
}

// ---------------------------------------------------------------------
// 9. the API, check-config, SIGHUP
// ---------------------------------------------------------------------

const FILE_FLOW: &str = r#"
[trigger]
type = "list_joined"
list = "vip"
[[steps]]
template = "m"
data = { label = "file-1" }
[[steps]]
after = "6s"
template = "m"
data = { label = "file-2" }
"#;

#[test]
fn the_automations_api_check_config_and_reload() {
    let sink = Sink::start(&[]);
    let h = start(&sink, &[("filed", FILE_FLOW)], "");
    h.list("news");
    h.list("vip");
    granted(&h, "ann@example.test");
    let def = json!({
        "description": "API drip",
        "trigger": {"type": "list_joined", "list": "news"},
        "steps": [{"template": "m", "data": {"label": "api-1"}}],
    });
    let put = |d: &Value| {
        h.put(
            "/api/v1/automations/api_flow",
            "application/json",
            &d.to_string(),
        )
    };
    let r = put(&def);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["source"], "api", "{r:?}");
    // Replaced: two steps now, the second 5 seconds after the first.
    let mut def2 = def.clone();
    def2["steps"] = json!([
        {"template": "m", "data": {"label": "api-1"}},
        {"after": "5s", "template": "tx", "data": {"label": "api-2"}},
    ]);
    let r = put(&def2);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["steps"].as_array().unwrap().len(), 2, "{r:?}");
    // Problems, each named by its JSON path.
    let bad = json!({
        "trigger": {"type": "list_joined"},
        "steps": [{"template": "m"}, {"after": "soon", "template": "nope"}],
    });
    let r = put(&bad);
    assert_eq!(r.status, 422, "{r:?}");
    let msg = r.body["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("`trigger`") && msg.contains("needs `list`"),
        "{msg}"
    );
    assert!(
        msg.contains("steps[1].after") || msg.contains("steps.1.after"),
        "{msg}"
    );
    let r = put(
        &json!({"trigger": {"type": "list_joined", "list": "news"}, "steps": [{"template": "nope"}]}),
    );
    assert_eq!(r.status, 422, "{r:?}");
    let msg = r.body["error"]["message"].as_str().unwrap().to_string();
    assert!(
        (msg.contains("steps[0].template") || msg.contains("steps.0.template"))
            && msg.contains("nope"),
        "{msg}"
    );
    // The file flow is read-only here.
    let r = h.put(
        "/api/v1/automations/filed",
        "application/json",
        &def.to_string(),
    );
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(h.delete("/api/v1/automations/filed").status, 409);

    // Preview and test.
    let r = h.post_json(
        "/api/v1/automations/api_flow/preview",
        json!({"contact": "ann@example.test"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let step0 = &r.body["steps"][0];
    assert_eq!(step0["decision"], "send", "{r:?}");
    assert_eq!(step0["variant"], 0, "{r:?}");
    assert_eq!(step0["message"]["subject"], "m api-1", "{r:?}");
    assert_eq!(
        r.body["steps"][1]["message"]["subject"], "tx api-2",
        "{r:?}"
    );
    let r = h.post_json(
        "/api/v1/automations/api_flow/test",
        json!({"contact": "ann@example.test", "to": "seed@example.test", "step": 1}),
    );
    assert_eq!(r.status, 202, "{r:?}");
    wait_mail(&sink, "seed@example.test", "api-2", 1);
    assert!(mail_to(&sink, "ann@example.test").is_empty());

    // Pause holds a due step; resume releases it.
    patch(&h, "ann@example.test", json!({"add_lists": ["news"]}));
    wait_mail(&sink, "ann@example.test", "api-1", 1);
    let r = h.post_json("/api/v1/automations/api_flow/pause", json!({}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["status"], "paused", "{r:?}");
    let s = wait_count(&h, "api_flow", Some(1), "held.paused", 1);
    assert_eq!(s["steps"][1]["pending"], 1, "{s}");
    assert_eq!(labelled(&sink, "ann@example.test", "api-2"), 0);
    let r = h.post_json("/api/v1/automations/api_flow/resume", json!({}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["status"], "active", "{r:?}");
    wait_mail(&sink, "ann@example.test", "api-2", 1);
    wait_count(&h, "api_flow", None, "completed", 1);
    // The report: one row per step, delivered.
    let mut rep = Value::Null;
    wait_until("per-step report rows", Duration::from_secs(30), || {
        rep = h.get("/api/v1/reports/sends/automation/api_flow").body;
        rep["totals"]["delivered"] == 2
    });
    let slots = rep["slots"].as_array().unwrap();
    let labels: Vec<&str> = slots.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["step 0", "step 1"], "{rep}");
    assert!(slots.iter().all(|r| r["delivered"] == 1), "{rep}");
    // Deleted.
    assert_eq!(h.delete("/api/v1/automations/api_flow").status, 200);
    assert_eq!(h.get("/api/v1/automations/api_flow").status, 404);

    // SIGHUP: the file flow's second step removed while a run waits for
    // it (paused, so it waits however slow this machine is).
    patch(&h, "ann@example.test", json!({"add_lists": ["vip"]}));
    wait_mail(&sink, "ann@example.test", "file-1", 1);
    assert_eq!(
        h.post_json("/api/v1/automations/filed/pause", json!({}))
            .status,
        200
    );
    let flows_dir = h.dir.path().join("automations");
    let one_step = FILE_FLOW.split("[[steps]]\nafter").next().unwrap();
    std::fs::write(flows_dir.join("filed.toml"), one_step).unwrap();
    h.hup();
    wait_until("the reload", Duration::from_secs(30), || {
        status(&h, "filed")["steps"].as_array().unwrap().len() == 1
    });
    assert_eq!(
        h.post_json("/api/v1/automations/filed/resume", json!({}))
            .status,
        200
    );
    let s = wait_count(&h, "filed", None, "skipped.step_removed", 1);
    assert_eq!(s["pending"], 0, "{s}");
    assert_eq!(count(&s, None, "completed"), 1, "{s}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(labelled(&sink, "ann@example.test", "file-2"), 0);

    // check-config names a broken flow file's line and column.
    std::fs::write(
        flows_dir.join("broken.toml"),
        "[trigger]\ntype = \"list_joined\"\nlist = \"vip\"\n[[steps]]\nafter = \"soon\"\ntemplate = \"m\"\n",
    )
    .unwrap();
    let (code, out, err) = run(&h.config, &["check-config"]);
    assert_eq!(code, 2, "{out}{err}");
    let file = flows_dir.join("broken.toml");
    assert!(err.contains(&format!("{}:5:9", file.display())), "{err}");
    assert!(err.contains("soon"), "{err}");
}
