//! Coupon pools through the admin API: codes uploaded as JSON and as CSV
//! (header, blank lines, duplicates), the pool's status and its gauges in
//! `/metrics`, bad input refused with its place named, and the pool kept
//! across a `kill -9` of the daemon (an upload is answered after its commit).

mod common;

use common::Herald;
use serde_json::{Value, json};

fn metrics(h: &Herald) -> String {
    let m = h.get("/metrics");
    assert_eq!(m.status, 200, "{:?}", m.body);
    m.body.as_str().unwrap_or_default().to_string()
}

#[test]
fn pools_take_json_and_csv_show_status_and_metrics_and_survive_a_restart() {
    let mut h = Herald::start();

    // Unknown pools: 404; no pools yet.
    let r = h.get("/api/v1/coupons/summer");
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "not_found");
    assert_eq!(h.get("/api/v1/coupons").body, json!({"pools": []}));

    // JSON upload with a low-water mark.
    let r = h.post_json(
        "/api/v1/coupons/summer",
        json!({"codes": ["S-1", "S-2", "S-3"], "low_water": 2}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"pool": "summer", "added": 3, "duplicates": 0, "status": {
            "name": "summer", "low_water": 2, "added": 3, "given": 0, "free": 3, "low": false}})
    );

    // CSV upload: a header, a blank line, a duplicate of the JSON upload,
    // one repeated in the file, extra columns, CRLF; low_water kept.
    let csv = "code,note\r\nS-4,new\r\n\r\nS-2,again\r\nS-5\r\nS-4\r\n\"S-6\",quoted\r\n";
    let r = h.post_csv("/api/v1/coupons/summer", csv);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["added"], 3);
    assert_eq!(r.body["duplicates"], 2);
    assert_eq!(r.body["status"]["free"], 6);
    assert_eq!(r.body["status"]["low_water"], 2);

    // CSV into a new pool, low_water from the query: low at once.
    let r = h.post_csv("/api/v1/coupons/winter.vip?low_water=5", "W1\nW2\n");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"]["low"], true);
    assert_eq!(r.body["status"]["low_water"], 5);

    let r = h.get("/api/v1/coupons/summer");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({"name": "summer", "low_water": 2, "added": 6, "given": 0, "free": 6, "low": false})
    );
    let names: Vec<Value> = h.get("/api/v1/coupons").body["pools"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("summer"), json!("winter.vip")]);

    let m = metrics(&h);
    for line in [
        "herald_coupons_free{pool=\"summer\"} 6",
        "herald_coupon_pool_low{pool=\"summer\"} 0",
        "herald_coupons_free{pool=\"winter.vip\"} 2",
        "herald_coupon_pool_low{pool=\"winter.vip\"} 1",
    ] {
        assert!(m.contains(line), "{line} missing from:\n{m}");
    }

    // Bad input: 422 naming the JSON path or the CSV line; nothing stored.
    let bad = [
        (
            h.post_json(
                "/api/v1/coupons/summer",
                json!({"codes": ["OK", "has space"]}),
            ),
            "invalid_code",
            "`codes[1]`",
        ),
        (
            h.post_json("/api/v1/coupons/summer", json!({"codes": ["OK", ""]})),
            "invalid_code",
            "`codes[1]`",
        ),
        (
            h.post_json(
                "/api/v1/coupons/summer",
                json!({"codes": ["x".repeat(129)]}),
            ),
            "invalid_code",
            "`codes[0]`",
        ),
        (
            h.post_csv("/api/v1/coupons/summer", "code\nOK-1\n\nOK 2\n"),
            "invalid_code",
            "line 4",
        ),
        (
            h.post_csv("/api/v1/coupons/summer", "OK-1\n\"OK\n2\",x\n"),
            "invalid_code",
            "line 2",
        ),
        (
            h.post_json("/api/v1/coupons/bad%20name", json!({"codes": ["A"]})),
            "invalid_pool_name",
            "bad name",
        ),
    ];
    for (r, code, place) in bad {
        assert_eq!(r.status, 422, "{:?}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{:?}", r.body);
        let msg = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(place), "{place} not named in {msg}");
    }
    let many: Vec<String> = (0..100_001).map(|i| format!("M{i}")).collect();
    let r = h.post_json("/api/v1/coupons/summer", json!({ "codes": many }));
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "too_many_codes");
    // Malformed JSON is a 400 naming the path, as everywhere in the API.
    let r = h.post_json("/api/v1/coupons/summer", json!({"codes": ["A", 7]}));
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("codes[1]"),
        "{:?}",
        r.body
    );
    let r = h.post_json("/api/v1/coupons/summer?colour=red", json!({"codes": []}));
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(h.get("/api/v1/coupons/summer").body["added"], 6);
    assert_eq!(h.get("/api/v1/coupons/bad%20name").status, 404);

    // The pool survives a kill -9: every upload was answered after its commit.
    h.restart();
    let r = h.get("/api/v1/coupons/summer");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["free"], 6);
    assert_eq!(r.body["low_water"], 2);
    assert!(metrics(&h).contains("herald_coupon_pool_low{pool=\"winter.vip\"} 1"));
    // Uploading the same codes again after the restart adds nothing.
    let r = h.post_csv("/api/v1/coupons/summer", "S-1\nS-6\nS-7\n");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (r.body["added"].clone(), r.body["duplicates"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(r.body["status"]["free"], 7);
}
