//! The admin API over real HTTP against the real binary: auth, fields, lists,
//! contacts, consent rules, GDPR export and erasure, and bad requests.

mod common;

use common::{Herald, TOKEN};
use serde_json::json;

#[test]
fn admin_routes_need_the_bearer_token_public_ones_do_not() {
    let h = Herald::start();
    let r = h.get_noauth("/api/v1/contacts", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "unauthorized");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"herald\"")
    );
    assert_eq!(
        h.get_noauth(
            "/api/v1/contacts",
            Some("Bearer wrong-token-wrong-token-wrong")
        )
        .status,
        401
    );
    assert_eq!(
        h.get_noauth("/api/v1/contacts", Some(TOKEN)).status,
        401,
        "the Bearer prefix is required"
    );
    assert_eq!(
        h.get_noauth("/api/v1/nothing", None).status,
        401,
        "unknown API paths do not leak"
    );
    assert_eq!(
        h.get_noauth("/api/v1/contacts", Some(&format!("Bearer {TOKEN}")))
            .status,
        200
    );
    assert_eq!(h.get_noauth("/healthz", None).status, 200);
    let m = h.get_noauth("/metrics", None);
    assert_eq!(m.status, 200);
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains(
            "herald_http_requests_total{route=\"contacts\",method=\"GET\",status=\"401\"} "
        ),
        "{text}"
    );
    assert!(
        text.contains("herald_contacts{consent=\"granted\"} 0"),
        "{text}"
    );
    assert_eq!(h.get("/nowhere").status, 404);
    assert_eq!(h.delete("/api/v1/fields").status, 405);
}

#[test]
fn fields_have_immutable_names_and_types_and_validate_values() {
    let h = Herald::start();
    for (name, t) in [
        ("first_name", "text"),
        ("age", "number"),
        ("birthday", "date"),
        ("vip", "boolean"),
    ] {
        h.field(name, t);
    }
    let r = h.post_json(
        "/api/v1/fields",
        json!({"name": "size", "type": "choice", "choices": ["S", "M"]}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    for (body, code) in [
        (json!({"name": "Bad", "type": "text"}), "invalid"),
        (json!({"name": "bad2", "type": "text"}), "invalid"),
        (json!({"name": "email", "type": "text"}), "invalid"),
        (json!({"name": "x", "type": "float"}), "invalid"),
        (json!({"name": "y", "type": "choice"}), "invalid"),
    ] {
        let r = h.post_json("/api/v1/fields", body.clone());
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some(code)),
            "{body} {r:?}"
        );
    }
    assert_eq!(
        h.post_json("/api/v1/fields", json!({"name": "age", "type": "text"}))
            .status,
        409
    );
    assert_eq!(
        h.patch_json("/api/v1/fields/age", json!({"type": "text"}))
            .status,
        409
    );
    assert_eq!(
        h.patch_json("/api/v1/fields/age", json!({"name": "years"}))
            .status,
        409
    );
    let r = h.patch_json(
        "/api/v1/fields/size",
        json!({"choices": ["S", "M", "L"], "label": "Size"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["choices"], json!(["S", "M", "L"]));

    let r = h.post_json(
        "/api/v1/contacts",
        json!({"email": "a@example.com", "fields": {"age": "+48123"}}),
    );
    assert_eq!(r.status, 422);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`+48123` is not a number"),
        "{r:?}"
    );
    for (f, v) in [
        ("birthday", json!("31.12.1990")),
        ("vip", json!("maybe")),
        ("size", json!("XL")),
        ("nope", json!("1")),
    ] {
        let r = h.post_json(
            "/api/v1/contacts",
            json!({"email": "a@example.com", "fields": {f: v}}),
        );
        assert_eq!(r.status, 422, "{f}: {r:?}");
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(f),
            "{r:?}"
        );
    }
    let r = h.post_json(
        "/api/v1/contacts",
        json!({"email": "a@example.com", "fields": {"age": 33, "birthday": "1990-12-31", "vip": true, "size": "L", "first_name": "Ann"}}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        r.body["contact"]["fields"],
        json!({"age": 33, "birthday": "1990-12-31", "vip": true, "size": "L", "first_name": "Ann"})
    );

    let r = h.delete("/api/v1/fields/age");
    assert_eq!(r.body["values_removed"], 1, "{r:?}");
    let c = h.get("/api/v1/contacts/a@example.com");
    assert!(c.body["fields"].get("age").is_none(), "{c:?}");
    assert_eq!(
        h.get("/api/v1/fields").body["fields"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn contacts_are_one_per_address_and_upserts_update() {
    let h = Herald::start();
    h.field("first_name", "text");
    h.list("news");
    h.list("vip");
    let r = h.post_json("/api/v1/contacts", json!({"email": "  Ann.Lee@Example.COM ", "fields": {"first_name": "Ann"}, "lists": ["news"], "tags": ["a"], "language": "pl", "site": "shop1"}));
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["contact"]["id"].as_u64().unwrap();
    assert_eq!(r.body["contact"]["email"], "Ann.Lee@example.com");
    let r = h.post_json(
        "/api/v1/contacts",
        json!({"email": "ann.lee@EXAMPLE.com", "fields": {"first_name": "Anna"}, "lists": ["vip"]}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["outcome"], "updated");
    assert_eq!(r.body["contact"]["id"], id);
    assert_eq!(r.body["contact"]["lists"], json!(["news", "vip"]));
    let r = h.post_json("/api/v1/contacts", json!({"email": "ann.lee@example.com"}));
    assert_eq!(r.body["outcome"], "unchanged");

    assert_eq!(
        h.get(&format!("/api/v1/contacts/{id}")).body["fields"]["first_name"],
        "Anna"
    );
    assert_eq!(
        h.get("/api/v1/contacts/ANN.LEE%40example.com").body["id"],
        id
    );
    assert_eq!(
        h.get("/api/v1/contacts?email=ann.lee@example.com").body["id"],
        id
    );
    assert_eq!(h.get("/api/v1/contacts/999").status, 404);
    assert_eq!(h.get("/api/v1/contacts/nobody@example.com").status, 404);

    let r = h.patch_json(
        &format!("/api/v1/contacts/{id}"),
        json!({"fields": {"first_name": null}, "remove_lists": ["news"], "add_tags": ["b"], "remove_tags": ["a"], "language": null}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let c = &r.body["contact"];
    assert_eq!(
        (
            c["fields"].clone(),
            c["lists"].clone(),
            c["tags"].clone(),
            c["language"].clone()
        ),
        (json!({}), json!(["vip"]), json!(["b"]), json!(null))
    );
    assert_eq!(
        h.patch_json(
            &format!("/api/v1/contacts/{id}"),
            json!({"add_lists": ["missing"]})
        )
        .status,
        404
    );
    assert_eq!(
        h.patch_json(
            &format!("/api/v1/contacts/{id}"),
            json!({"email": "x@example.com"})
        )
        .status,
        400
    );

    for bad in ["plain", "a@b", "a@@example.com", ""] {
        let r = h.post_json("/api/v1/contacts", json!({"email": bad}));
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("invalid_email")),
            "{bad}: {r:?}"
        );
    }
}

#[test]
fn listing_pages_and_filters_by_list_tag_and_consent() {
    let h = Herald::start();
    h.list("news");
    for i in 0..25 {
        let mut body = json!({"email": format!("c{i}@example.com")});
        if i % 2 == 0 {
            body["lists"] = json!(["news"]);
        }
        if i % 3 == 0 {
            body["tags"] = json!(["three"]);
        }
        if i % 5 == 0 {
            body["consent"] = json!("granted");
        }
        assert_eq!(h.post_json("/api/v1/contacts", body).status, 201);
    }
    let mut seen = 0;
    let mut after = 0;
    loop {
        let r = h.get(&format!("/api/v1/contacts?limit=10&after={after}"));
        let page = r.body["contacts"].as_array().unwrap();
        seen += page.len();
        match r.body["next_after"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seen, 25);
    let count = |q: &str| {
        h.get(&format!("/api/v1/contacts?limit=1000&{q}")).body["contacts"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count("list=news"), 13);
    assert_eq!(count("tag=three"), 9);
    assert_eq!(count("consent=granted"), 5);
    assert_eq!(count("list=news&consent=granted"), 3);
    assert_eq!(count("list=news&tag=three&consent=granted"), 1);
    assert_eq!(h.get("/api/v1/contacts?consent=maybe").status, 422);
    assert_eq!(h.get("/api/v1/contacts?list=none").status, 404);
    assert_eq!(h.get("/api/v1/contacts?limit=x").status, 400);
    assert_eq!(h.get("/api/v1/contacts?colour=red").status, 400);
    let lists = h.get("/api/v1/lists").body;
    assert_eq!(lists["lists"][0]["member_count"], 13);
}

#[test]
fn lists_are_unique_renamable_and_deletable() {
    let h = Herald::start();
    let id = h.list("Newsletter");
    assert_eq!(
        h.post_json("/api/v1/lists", json!({"name": "newsletter"}))
            .status,
        409
    );
    assert_eq!(
        h.post_json("/api/v1/lists", json!({"name": ""})).status,
        422
    );
    assert_eq!(h.get("/api/v1/lists/newsletter").body["id"], id);
    assert_eq!(
        h.get(&format!("/api/v1/lists/{id}")).body["name"],
        "Newsletter"
    );
    h.post_json(
        "/api/v1/contacts",
        json!({"email": "m@example.com", "lists": ["newsletter"]}),
    );
    let r = h.patch_json(
        &format!("/api/v1/lists/{id}"),
        json!({"name": "Weekly", "description": "every Monday"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        h.get("/api/v1/contacts/m@example.com").body["lists"],
        json!(["Weekly"])
    );
    let r = h.delete("/api/v1/lists/weekly");
    assert_eq!(
        (r.status, r.body["members_removed"].as_u64()),
        (200, Some(1)),
        "{r:?}"
    );
    assert_eq!(
        h.get("/api/v1/contacts/m@example.com").body["lists"],
        json!([])
    );
    assert_eq!(h.get("/api/v1/lists/weekly").status, 404);
}

#[test]
fn withdrawn_stays_withdrawn_and_every_change_is_logged() {
    let h = Herald::start();
    let r = h.post_json("/api/v1/contacts", json!({"email": "w@example.com", "consent": "granted", "consent_note": "signed up at the till"}));
    assert_eq!(r.status, 201);
    let r = h.post_json(
        "/api/v1/contacts/w@example.com/consent",
        json!({"state": "withdrawn", "note": "phoned us"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    for attempt in [
        h.post_json(
            "/api/v1/contacts/w@example.com/consent",
            json!({"state": "granted"}),
        ),
        h.post_json(
            "/api/v1/contacts/w@example.com/consent",
            json!({"state": "pending"}),
        ),
        h.post_json(
            "/api/v1/contacts",
            json!({"email": "w@example.com", "consent": "granted"}),
        ),
    ] {
        assert_eq!(attempt.status, 422, "{attempt:?}");
        assert_eq!(attempt.body["error"]["code"], "consent_refused");
        assert!(
            attempt.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("only their own new confirmation")
        );
    }
    let r = h.post_csv(
        "/api/v1/contacts/import",
        "email,consent\nw@example.com,granted\n",
    );
    assert_eq!(r.body["rejected"], 1, "{r:?}");
    assert!(
        r.body["rejects"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("withdrew consent"),
        "{r:?}"
    );
    let log = h.get("/api/v1/contacts/w@example.com/consent").body;
    assert_eq!(log["consent"], "withdrawn");
    let entries = log["log"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{log}");
    assert_eq!(
        (
            entries[0]["from"].as_str(),
            entries[0]["to"].as_str(),
            entries[0]["source"].as_str()
        ),
        (Some("unknown"), Some("granted"), Some("api"))
    );
    assert_eq!(entries[0]["note"], "signed up at the till");
    assert_eq!(
        (entries[1]["to"].as_str(), entries[1]["note"].as_str()),
        (Some("withdrawn"), Some("phoned us"))
    );
    assert!(entries[1]["at"].as_str().unwrap().starts_with("20"));
    // Invalid, too, cannot be undone by the API.
    h.post_json("/api/v1/contacts", json!({"email": "i@example.com"}));
    assert_eq!(
        h.post_json(
            "/api/v1/contacts/i@example.com/consent",
            json!({"state": "invalid"})
        )
        .status,
        200
    );
    assert_eq!(
        h.post_json(
            "/api/v1/contacts/i@example.com/consent",
            json!({"state": "granted"})
        )
        .status,
        422
    );
}

#[test]
fn export_then_erase_keeps_only_a_suppression() {
    let h = Herald::start();
    h.field("city", "text");
    h.post_json("/api/v1/contacts", json!({"email": "Erase.Me@example.com", "fields": {"city": "Kraków"}, "consent": "granted"}));
    let r = h.get("/api/v1/contacts/erase.me@example.com/export");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-disposition")
            .unwrap()
            .contains("attachment")
    );
    assert_eq!(r.body["contact"]["fields"]["city"], "Kraków");
    assert_eq!(r.body["consent_log"].as_array().unwrap().len(), 1);

    let r = h.delete("/api/v1/contacts/erase.me@example.com");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(h.get("/api/v1/contacts/erase.me@example.com").status, 404);
    let r = h.post_json("/api/v1/contacts", json!({"email": "ERASE.ME@example.com"}));
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (409, Some("suppressed")),
        "{r:?}"
    );
    let r = h.post_csv(
        "/api/v1/contacts/import",
        "email\nerase.me@EXAMPLE.com\nother@example.com\n",
    );
    assert_eq!(
        (r.body["created"].as_u64(), r.body["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{r:?}"
    );
    assert_eq!(r.body["rejects"][0]["line"], 2);
    assert!(
        r.body["rejects"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("suppressed"),
        "{r:?}"
    );
    let metrics = h.get("/metrics").body.as_str().unwrap().to_string();
    assert!(
        metrics.contains("herald_contacts{consent=\"unknown\"} 1"),
        "{metrics}"
    );
}

#[test]
fn bad_request_bodies_get_clear_errors() {
    let h = Herald::start();
    let r = h.post("/api/v1/contacts", "{\"email\": ");
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("invalid_json")),
        "{r:?}"
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1 column"),
        "{r:?}"
    );
    let r = h.post(
        "/api/v1/contacts",
        "{\"email\": \"a@example.com\", \"colour\": 1}",
    );
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"),
        "{r:?}"
    );
    let r = h.post("/api/v1/contacts", "{\"email\": 5}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("`email`: invalid type"),
        "{r:?}"
    );
    let r = h.post(
        "/api/v1/contacts",
        "{\"email\": \"a@example.com\", \"tags\": [1]}",
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("`tags[0]`: invalid type"),
        "{r:?}"
    );
    let r = h.post("/api/v1/contacts", "");
    assert_eq!(r.status, 400);
    let r = h.post("/api/v1/contacts", "[]");
    assert_eq!(r.status, 400);
    assert_eq!(h.get("/healthz").status, 200, "still serving");
}

#[test]
fn bodies_over_the_configured_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    let text = common::config_text(&dir.path().join("data"), "")
        .replace("[storage]", "max_body_bytes = 2048\n[storage]");
    std::fs::write(&config, text).unwrap();
    let h = Herald::start_in(dir, config);
    let big = format!(
        "{{\"email\": \"a@example.com\", \"fields\": {{\"x\": \"{}\"}}}}",
        "y".repeat(4000)
    );
    let r = h.post("/api/v1/contacts", &big);
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{r:?}"
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2048 bytes")
    );
}
