//! The segment index across restarts, through the real binary: a clean stop
//! saves it beside the store and the next start reads it instead of
//! building it from the store; a file made stale by a `kill -9` after more
//! commits, or damaged, is detected and the index built from the store,
//! never served wrong. While the index builds, only segments wait: the API,
//! tracking and delivery answer at once.

mod common;

use std::time::Duration;

use common::peers::Sink;
use common::{Herald, run, wait_until};
use serde_json::{Value, json};

fn customer(n: u32, country: &str) -> Value {
    json!({"type": "customer", "id": format!("c-{n}-{country}"), "at": "2026-01-01T00:00:00Z",
           "email": format!("p{n}@example.com"), "country": country})
}

fn post_events(h: &Herald, events: Vec<Value>) {
    let r = h.post_json("/api/v1/events", Value::Array(events));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["rejected"], 0, "{}", r.body);
}

/// Members of the API segment `poles`.
fn poles(h: &Herald) -> Vec<String> {
    h.segment_members("poles")
}

/// The source the last start's index came from, from the daemon's log.
fn built_from(h: &Herald) -> String {
    wait_until("the segment index", Duration::from_secs(60), || {
        h.log().contains("segment index built")
    });
    let log = h.log();
    let line = log
        .lines()
        .rfind(|l| l.contains("segment index built"))
        .unwrap();
    line.split("from=").nth(1).unwrap().trim_matches('"').into()
}

#[test]
fn a_clean_stop_saves_the_index_and_a_stale_or_damaged_file_is_rebuilt() {
    let mut h = Herald::start();
    let seg = json!({"field": "country", "eq": "PL"}).to_string();
    assert_eq!(
        h.put("/api/v1/segments/poles", "application/json", &seg)
            .status,
        201
    );
    post_events(
        &h,
        (1..=30)
            .map(|n| customer(n, if n % 3 == 0 { "PL" } else { "DE" }))
            .collect(),
    );
    let mut want: Vec<String> = (1..=30)
        .filter(|n| n % 3 == 0)
        .map(|n| format!("p{n}"))
        .collect();
    want.sort();
    assert_eq!(poles(&h), want);
    let file = h.dir.path().join("data/segment-index.bin");

    // A clean stop saves it; the next start reads it, same answers.
    h.stop_and_start();
    assert!(file.exists());
    assert_eq!(built_from(&h), "saved file", "{}", h.log());
    assert_eq!(poles(&h), want);

    // Changes after the start land on what was read.
    post_events(
        &h,
        vec![
            customer(31, "PL"),
            customer(3, "DE")
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("id".into(), "c-3-moved".into());
                    Value::Object(o)
                })
                .unwrap(),
        ],
    );
    let mut moved: Vec<String> = want.iter().filter(|n| *n != "p3").cloned().collect();
    moved.push("p31".into());
    moved.sort();
    assert_eq!(poles(&h), moved);

    // kill -9 after those commits: the saved file is stale, and is not used.
    h.restart();
    assert_eq!(built_from(&h), "store", "{}", h.log());
    assert!(h.log().contains("is stale"), "{}", h.log());
    assert_eq!(poles(&h), moved);

    // `herald store stats` and `compact` want the daemon stopped; compacting
    // changes no data, so the saved index still matches.
    let (code, _, err) = run(&h.config, &["store", "stats"]);
    assert_eq!(code, 1);
    assert!(err.contains("stop the daemon first"), "{err}");
    assert_eq!(h.stop(), Some(0));
    let (code, out, err) = run(&h.config, &["store", "stats", "--scan"]);
    assert_eq!(code, 0, "{err}");
    let contacts = out.lines().find(|l| l.starts_with("contacts_v2 "));
    let entries = contacts.and_then(|l| l.split_whitespace().nth(1));
    assert_eq!(entries, Some("31"), "{out}");
    let (code, out, err) = run(&h.config, &["store", "compact"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("compacted "), "{out}");
    h.start_again();
    assert_eq!(built_from(&h), "saved file", "{}", h.log());
    assert_eq!(poles(&h), moved);

    // A damaged file is refused and the index built from the store.
    assert_eq!(h.stop(), Some(0));
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&file, &bytes).unwrap();
    h.start_again();
    assert_eq!(built_from(&h), "store", "{}", h.log());
    assert!(h.log().contains("damaged"), "{}", h.log());
    assert_eq!(poles(&h), moved);
}

#[test]
fn only_segments_wait_for_the_index_build() {
    let sink = Sink::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    let text = common::config_text(&dir.path().join("data"), &common::relay_sender(sink.port));
    std::fs::write(&config, text).unwrap();
    // The build is held back far longer than anything below takes.
    let h = Herald::start_in_env(
        dir,
        config,
        vec![("HERALD_FAULT_INDEX_BUILD_DELAY_MS".into(), "20000".into())],
    );
    let building = |h: &Herald| !h.log().contains("segment index built");
    assert!(building(&h));
    // The admin API reads and writes.
    let r = h.post_json("/api/v1/contacts", json!({"email": "ann@example.com"}));
    assert!(r.status == 200 || r.status == 201, "{r:?}");
    assert_eq!(h.get("/api/v1/contacts/ann@example.com").status, 200);
    // Tracking answers (a forged open token still gets its pixel).
    let pixel = h.get_noauth("/o/not-a-real-token", None);
    assert!(pixel.status < 500, "{pixel:?}");
    // Delivery: a message is accepted and reaches the SMTP peer.
    let id = h.send_text("shop", &["bob@example.net"], "Not waiting");
    h.wait_message(id, Duration::from_secs(30), |m| {
        m["recipients"][0]["state"] == "delivered"
    });
    assert_eq!(sink.received(), 1);
    assert!(
        building(&h),
        "the build finished early; the test shows nothing:\n{}",
        h.log()
    );
    // A segment answer waits for the build, then is right.
    let seg = json!({"field": "consent", "eq": "unknown"}).to_string();
    let put = h.put("/api/v1/segments/everyone", "application/json", &seg);
    assert_eq!(put.status, 201, "{put:?}");
    let r = h.get("/api/v1/segments/everyone/preview");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["count"], 1, "{}", r.body);
    assert!(!building(&h));
}
