//! Shop events and segments through the real binary and HTTP: a small shop
//! built by hand, every condition kind checked against hand-picked members,
//! idempotent re-sends, out-of-order order updates, bad events rejected with
//! reasons while the rest lands, segment files checked by `check-config`,
//! API segments, the index rebuilt after a restart, and a cross-check of the
//! generator's shop against the same query in SQLite.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{Herald, run};
use serde_json::{Value, json};

/// An RFC 3339 time `days` days before now (noon UTC).
fn ago(days: i64) -> String {
    let d = chrono::Utc::now().date_naive() - chrono::Duration::days(days);
    format!("{d}T12:00:00Z")
}

const SITES: &str = r#"
[[site]]
id = "shop"
name = "Shop"
url = "https://shop.example/"
default_language = "pl"
currency = "PLN"
[[site]]
id = "outlet"
name = "Outlet"
url = "https://outlet.example/"
default_language = "de"
currency = "EUR"
"#;

/// Starts a daemon whose segments directory holds the repository's example
/// segments.
fn start() -> Herald {
    let segs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/segments");
    Herald::start_with(&format!(
        "[paths]\nsegments = \"{}\"\n{SITES}",
        segs.display()
    ))
}

fn order(id: &str, email: &str, days: i64, total: &str, items: Value, pay: &str) -> Value {
    json!({"type": "order", "id": format!("ev-{id}"), "at": ago(days), "email": email,
           "order_id": id, "items": items, "total": total, "currency": "PLN",
           "status": "paid", "payment_type": pay})
}

fn item(sku: &str, cat: &str, price: &str) -> Value {
    json!({"sku": sku, "quantity": 1, "price": price, "category": cat})
}

fn customer(email: &str, extra: Value) -> Value {
    let mut c =
        json!({"type": "customer", "id": format!("cust-{email}"), "at": ago(400), "email": email});
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    c
}

/// The shop: who is who is written next to each contact.
fn shop_events() -> Vec<Value> {
    let shoes = |p: &str| json!([item("S-1", "shoes", p)]);
    let bags = |p: &str| json!([item("B-1", "Bags", p)]);
    vec![
        json!({"type": "product", "id": "p-S-1", "at": ago(500), "sku": "S-1", "name": "Runner",
               "price": "300.00", "currency": "PLN", "category": "shoes"}),
        // ann: the example segment's one member.
        customer(
            "ann@example.com",
            json!({"language": "pl", "site": "shop", "country": "pl",
            "city": "Kraków", "customer_type": "person", "group": "gold", "tags": ["vip"],
            "first_name": "Ann", "birthday": "1990-05-01"}),
        ),
        order(
            "A1",
            "ann@example.com",
            200,
            "300.00",
            shoes("300.00"),
            "blik",
        ),
        order(
            "A2",
            "ann@example.com",
            150,
            "250.00",
            bags("250.00"),
            "card",
        ),
        order(
            "A3",
            "ann@example.com",
            100,
            "400.00",
            shoes("400.00"),
            "blik",
        ),
        // bob: like ann, but wholesale.
        customer(
            "bob@example.com",
            json!({"language": "pl", "country": "PL", "city": "Warszawa",
            "wholesale": true}),
        ),
        order(
            "B1",
            "bob@example.com",
            200,
            "300.00",
            shoes("300.00"),
            "blik",
        ),
        order(
            "B2",
            "bob@example.com",
            150,
            "250.00",
            bags("250.00"),
            "card",
        ),
        order(
            "B3",
            "bob@example.com",
            100,
            "400.00",
            shoes("400.00"),
            "card",
        ),
        // cat: like ann, but ordered 10 days ago.
        customer(
            "cat@example.com",
            json!({"language": "pl", "country": "PL", "city": "Gdańsk"}),
        ),
        order(
            "C1",
            "cat@example.com",
            200,
            "300.00",
            shoes("300.00"),
            "card",
        ),
        order(
            "C2",
            "cat@example.com",
            150,
            "250.00",
            bags("250.00"),
            "card",
        ),
        order(
            "C3",
            "cat@example.com",
            10,
            "400.00",
            shoes("400.00"),
            "card",
        ),
        // dan: like ann, but a small basket (average 100).
        customer(
            "dan@example.com",
            json!({"language": "pl", "country": "PL"}),
        ),
        order(
            "D1",
            "dan@example.com",
            200,
            "100.00",
            shoes("100.00"),
            "card",
        ),
        order(
            "D2",
            "dan@example.com",
            150,
            "100.00",
            bags("100.00"),
            "card",
        ),
        order(
            "D3",
            "dan@example.com",
            100,
            "100.00",
            shoes("100.00"),
            "card",
        ),
        // eve: like ann, but her shoes were bought 400 days ago.
        customer(
            "eve@example.com",
            json!({"language": "pl", "country": "PL"}),
        ),
        order(
            "E1",
            "eve@example.com",
            400,
            "300.00",
            shoes("300.00"),
            "card",
        ),
        order(
            "E2",
            "eve@example.com",
            150,
            "250.00",
            bags("250.00"),
            "card",
        ),
        order(
            "E3",
            "eve@example.com",
            100,
            "400.00",
            bags("400.00"),
            "card",
        ),
        // fay: an English company with shoes in her cart (category from the catalogue).
        customer(
            "fay@example.com",
            json!({"language": "en", "country": "GB", "city": "London",
            "customer_type": "company"}),
        ),
        order(
            "F1",
            "fay@example.com",
            20,
            "2500.00",
            json!([item("X-9", "jackets", "2500.00")]),
            "transfer",
        ),
        json!({"type": "cart", "id": "cart-fay-1", "at": ago(3), "email": "fay@example.com",
               "items": [{"sku": "S-1", "quantity": 2, "price": "300.00"}]}),
        // gus: German, outlet site, affiliate; order G1 gets cancelled.
        customer(
            "gus@example.com",
            json!({"language": "de", "site": "outlet", "country": "DE",
            "city": "Berlin", "affiliate": true}),
        ),
        order(
            "G1",
            "gus@example.com",
            30,
            "120.00",
            bags("120.00"),
            "card",
        ),
        order("G2", "gus@example.com", 25, "80.00", bags("80.00"), "cod"),
        json!({"type": "login", "id": "login-gus", "at": ago(2), "email": "gus@example.com"}),
        // hal: signed up for the newsletter; nothing else.
        json!({"type": "signup", "id": "signup-hal", "at": ago(1), "email": "hal@example.com",
               "list": "newsletter", "ip": "192.0.2.7", "user_agent": "Mozilla/5.0"}),
        json!({"type": "waitlist", "id": "wait-hal", "at": ago(1), "email": "hal@example.com",
               "sku": "S-1", "kind": "back_in_stock"}),
    ]
}

fn post_events(h: &Herald, events: &[Value]) -> Value {
    let r = h.post_json("/api/v1/events", Value::Array(events.to_vec()));
    assert_eq!(r.status, 200, "{r:?}\n{}", h.log());
    r.body
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn events_build_aggregates_and_every_condition_kind_selects_the_right_contacts() {
    let h = start();
    h.list("newsletter");
    let body = post_events(&h, &shop_events());
    assert_eq!(body["rejected"], 0, "{body}");
    assert_eq!(body["duplicate"], 0);
    let n = shop_events().len() as u64;
    assert_eq!(body["accepted"], n);

    let expect: &[(&str, &[&str])] = &[
        ("polish_shoe_lovers", &["ann"]),
        ("big_cities_pl", &["ann", "bob"]),
        ("companies", &["fay"]),
        ("wholesale", &["bob"]),
        ("affiliates", &["gus"]),
        ("gold_group", &["ann"]),
        ("vip_tag", &["ann"]),
        ("outlet_site", &["gus"]),
        ("german_speakers", &["gus"]),
        ("shoes_in_cart", &["fay"]),
        ("blik_payers", &["ann", "bob"]),
        ("big_spenders", &["fay"]),
        ("high_average_basket", &["ann", "bob", "cat", "eve", "fay"]),
        ("recent_buyers", &["cat", "fay", "gus"]),
        ("lapsed_customers", &[]),
        ("frequent_buyers", &[]),
        ("cart_abandoners", &["fay"]),
        (
            "never_opened",
            &["ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal"],
        ),
        ("sleepers", &[]),
        ("engaged_with_campaign_1", &[]),
    ];
    for (seg, want) in expect {
        assert_eq!(h.segment_members(seg), names(want), "segment {seg}");
    }

    // Ad-hoc API segments for the remaining condition kinds.
    let cases: &[(Value, &[&str])] = &[
        (json!({"in_list": "newsletter"}), &["hal"]),
        (json!({"field": "consent", "eq": "pending"}), &["hal"]),
        (
            json!({"bought_sku": "S-1", "after": &ago(160)[..10], "before": &ago(90)[..10]}),
            &["ann", "bob", "dan"],
        ),
        (
            json!({"bought_category": "bags"}),
            &["ann", "bob", "cat", "dan", "eve", "gus"],
        ),
        (json!({"cart_sku": "s-1"}), &["fay"]),
        (
            json!({"field": "country", "in": ["pl", "gb"]}),
            &["ann", "bob", "cat", "dan", "eve", "fay"],
        ),
        (json!({"field": "city", "starts_with": "kra"}), &["ann"]),
        (json!({"field": "birthday", "exists": true}), &["ann"]),
        (json!({"field": "first_name", "eq": "ANN"}), &["ann"]),
        (
            json!({"field": "last_login", "after": "7 days ago"}),
            &["gus"],
        ),
        (
            json!({"field": "payment_types", "contains": ["cod", "transfer"]}),
            &["fay", "gus"],
        ),
        (json!({"field": "order_count", "eq": 1}), &["fay"]),
        // No orders: the sum of nothing is 0.
        (json!({"field": "order_sum", "lte": 80}), &["hal"]),
        (
            json!({"field": "first_order", "before": "300 days ago"}),
            &["eve"],
        ),
        (
            json!({"field": "email_domain", "eq": "example.com", }),
            &["ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal"],
        ),
        (
            json!({"any": [{"field": "language", "eq": "de"}, {"not": {"field": "language", "exists": true}}]}),
            &["gus", "hal"],
        ),
        (
            json!({"field": "wholesale", "ne": true}),
            &["ann", "cat", "dan", "eve", "fay", "gus", "hal"],
        ),
        (json!({"field": "customer_type", "eq": "person"}), &["ann"]),
        (json!({"field": "cart_value", "eq": 600}), &["fay"]),
    ];
    for (i, (def, want)) in cases.iter().enumerate() {
        let name = format!("case-{i}");
        let r = h.put(
            &format!("/api/v1/segments/{name}"),
            "application/json",
            &def.to_string(),
        );
        assert_eq!(r.status, 201, "{def}: {r:?}");
        assert_eq!(h.segment_members(&name), names(want), "{def}");
    }

    // The same through TOML, and the member list endpoint.
    let r = h.put(
        "/api/v1/segments/pl-toml",
        "application/toml",
        "description = \"Polish\"\nall = [\n  { field = \"language\", eq = \"pl\" },\n  { field = \"order_count\", gte = 3 },\n]\n",
    );
    assert_eq!(r.status, 201, "{r:?}");
    let ids = h.get("/api/v1/segments/pl-toml/contacts");
    assert_eq!(ids.status, 200);
    assert_eq!(ids.body.as_str().unwrap().lines().count(), 5);
    let granted = h.get("/api/v1/segments/pl-toml/contacts?consent=granted");
    assert_eq!(granted.body.as_str().unwrap(), "");

    // Re-sending everything changes nothing.
    let again = post_events(&h, &shop_events());
    assert_eq!(again["duplicate"], n, "{again}");
    assert_eq!(again["accepted"], 0);
    assert_eq!(h.segment_members("polish_shoe_lovers"), names(&["ann"]));
    assert_eq!(h.segment_members("high_average_basket").len(), 5);

    // Out of order: G1 is cancelled at day -5; an older "paid" update that
    // arrives afterwards is accepted but not applied.
    let cancel = |id: &str, days: i64, status: &str| {
        let mut o = order(
            "G1",
            "gus@example.com",
            30,
            "120.00",
            json!([item("B-1", "bags", "120.00")]),
            "card",
        );
        o["id"] = id.into();
        o["at"] = ago(days).into();
        o["placed_at"] = ago(30).into();
        o["status"] = status.into();
        o
    };
    let r = post_events(
        &h,
        &[
            cancel("g1-cancel", 5, "cancelled"),
            cancel("g1-stale", 6, "paid"),
        ],
    );
    assert_eq!(r["accepted"], 2, "{r}");
    assert!(
        r["results"][1]["note"].as_str().unwrap().contains("newer"),
        "{r}"
    );
    let one = h.put(
        "/api/v1/segments/gus-orders",
        "application/json",
        &json!({"all": [{"field": "order_count", "eq": 1}, {"field": "order_sum", "eq": 80}]})
            .to_string(),
    );
    assert_eq!(one.status, 201);
    assert_eq!(h.segment_members("gus-orders"), names(&["gus"]));

    // The cart emptied: fay leaves the cart segments.
    post_events(
        &h,
        &[
            json!({"type": "cart", "id": "cart-fay-2", "at": ago(1), "email": "fay@example.com", "items": []}),
        ],
    );
    assert!(h.segment_members("shoes_in_cart").is_empty());
    assert!(h.segment_members("cart_abandoners").is_empty());
    // A cart event older than the emptying arrives late: not applied.
    let late = post_events(
        &h,
        &[
            json!({"type": "cart", "id": "cart-fay-0", "at": ago(2), "email": "fay@example.com",
                  "items": [{"sku": "S-1", "quantity": 1}]}),
        ],
    );
    assert!(
        late["results"][0]["note"]
            .as_str()
            .unwrap_or("")
            .contains("newer"),
        "{late}"
    );
    assert!(h.segment_members("shoes_in_cart").is_empty());

    // An order update without `placed_at` and without categories keeps both.
    let mut shipped = order(
        "A3",
        "ann@example.com",
        50,
        "400.00",
        json!([{"sku": "S-1", "quantity": 1, "price": "400.00"}]),
        "blik",
    );
    shipped["id"] = "ev-A3-shipped".into();
    shipped["status"] = "shipped".into();
    assert_eq!(post_events(&h, &[shipped])["accepted"], 1);
    assert_eq!(h.segment_members("polish_shoe_lovers"), names(&["ann"]));

    // Tags are case-sensitive in the store: removing `VIP` keeps `vip`.
    let r = h.patch_json(
        "/api/v1/contacts/ann@example.com",
        json!({"add_tags": ["VIP"]}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = h.patch_json(
        "/api/v1/contacts/ann@example.com",
        json!({"remove_tags": ["VIP"]}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(h.segment_members("vip_tag"), names(&["ann"]));

    // A TOML segment with bare dates, through the API, works after storing.
    let toml = "any = [ { bought_sku = \"S-1\", after = 2000-01-01, before = 2999-12-31 } ]\n";
    assert_eq!(
        h.put("/api/v1/segments/bare-dates", "application/toml", toml)
            .status,
        201
    );
    assert_eq!(
        h.segment_members("bare-dates"),
        names(&["ann", "bob", "cat", "dan", "eve"])
    );

    let m = h.get_noauth("/metrics", None);
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains("herald_events_total{event_type=\"order\",status=\"duplicate\"}"),
        "{text}"
    );

    // kill -9 and a restart: the index is rebuilt from the store, same answers.
    let mut h = h;
    h.restart();
    assert_eq!(h.segment_members("polish_shoe_lovers"), names(&["ann"]));
    assert_eq!(h.segment_members("gus-orders"), names(&["gus"]));
    assert_eq!(h.segment_members("case-0"), names(&["hal"]));
    assert!(h.segment_members("shoes_in_cart").is_empty());

    // Lists and fields used by API segments cannot be deleted.
    let lists = h.get("/api/v1/lists");
    let id = lists.body["lists"][0]["id"].as_u64().unwrap();
    let del = h.delete(&format!("/api/v1/lists/{id}"));
    assert_eq!(del.status, 409, "{del:?}");
    assert!(
        del.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("case-0")
    );

    let m = h.get_noauth("/metrics", None);
    let text = m.body.as_str().unwrap();
    assert!(text.contains("herald_segment_index_contacts 8"), "{text}");

    // A contact shows what the shop's events say about them.
    let ann = h.get("/api/v1/contacts/ann@example.com");
    assert_eq!(ann.body["shop"]["order_count"], 3, "{:?}", ann.body);
    assert_eq!(ann.body["shop"]["order_sum"], "950.00");
    assert_eq!(ann.body["fields"]["city"], "Kraków");

    // A deleted field's values leave the index too: re-created with another
    // type, nobody has a value.
    h.field("shoe_size", "text");
    let r = post_events(
        &h,
        &[
            customer("ann@example.com", json!({"fields": {"shoe_size": "38"}}))
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("id".into(), "cust-ann-size".into());
                    Value::Object(o)
                })
                .unwrap(),
        ],
    );
    assert_eq!(r["accepted"], 1, "{r}");
    let sized = json!({"field": "shoe_size", "exists": true}).to_string();
    assert_eq!(
        h.put("/api/v1/segments/sized", "application/json", &sized)
            .status,
        201
    );
    assert_eq!(h.segment_members("sized"), names(&["ann"]));
    assert_eq!(h.delete("/api/v1/segments/sized").status, 200);
    assert_eq!(h.delete("/api/v1/fields/shoe_size").status, 200);
    h.field("shoe_size", "number");
    assert_eq!(
        h.put("/api/v1/segments/sized", "application/json", &sized)
            .status,
        201
    );
    assert!(h.segment_members("sized").is_empty());

    // Erasure removes the contact from every segment and their shop data.
    assert_eq!(h.delete("/api/v1/contacts/bob@example.com").status, 200);
    assert_eq!(h.segment_members("big_cities_pl"), names(&["ann"]));
    assert_eq!(h.segment_members("wholesale"), Vec::<String>::new());
    assert_eq!(h.segment_members("blik_payers"), names(&["ann"]));
    h.restart();
    assert_eq!(h.segment_members("blik_payers"), names(&["ann"]));
    // The same events sent again are duplicates still: the erased address
    // stays out (it is suppressed).
    let again = post_events(&h, &shop_events());
    assert_eq!(again["accepted"], 0, "{again}");
}

#[test]
fn bad_events_are_rejected_with_reasons_and_the_rest_lands() {
    let h = start();
    let good = customer("ok@example.com", json!({"language": "pl"}));
    let batch = json!([
        {"type": "customer", "id": "1", "at": ago(1), "email": "not-an-address"},
        {"type": "customer", "id": "2", "at": ago(1), "email": "x@example.com", "wholesale": "maybe"},
        {"type": "customer", "id": "3", "at": ago(1), "email": "x@example.com", "site": "moon"},
        {"type": "customer", "id": "4", "at": ago(1), "email": "x@example.com", "fields": {"shoe_size": 42}},
        {"type": "order", "id": "5", "at": ago(1), "email": "x@example.com", "order_id": "O", "items": [{"sku": "A", "quantity": 0, "price": "1"}], "total": "1", "currency": "PLN"},
        {"type": "order", "id": "6", "at": ago(1), "email": "x@example.com", "order_id": "O", "items": [{"sku": "A", "quantity": 1, "price": "1"}], "total": "-5", "currency": "PLN"},
        {"type": "order", "id": "7", "at": ago(1), "email": "x@example.com", "order_id": "O", "items": [{"sku": "A", "quantity": 1, "price": "1"}], "total": "1", "currency": "zloty"},
        {"type": "cart", "id": "8", "at": ago(1), "email": "x@example.com", "items": [{"sku": " ", "quantity": 1}]},
        {"type": "product", "id": "9", "at": ago(1), "sku": "P", "name": "", "price": "1", "currency": "PLN"},
        {"type": "waitlist", "id": "10", "at": ago(1), "email": "x@example.com", "sku": "P", "kind": "someday"},
        {"type": "login", "id": "11", "at": ago(1)},
        {"type": "signup", "id": "12", "at": ago(1), "email": "x@example.com", "list": "no-such-list"},
        {"type": "signup", "id": "13", "at": ago(1), "email": "x@example.com", "consent": "granted please"},
        {"type": "refund", "id": "14", "at": ago(1)},
        {"type": "login", "at": ago(1), "email": "x@example.com"},
        {"type": "login", "id": "16", "at": "last week", "email": "x@example.com"},
        "not an object",
        good,
    ]);
    let r = h.post_json("/api/v1/events", batch);
    assert_eq!(r.status, 200, "{r:?}");
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(r.body["accepted"], 1, "{}", r.body);
    assert_eq!(r.body["rejected"], 17);
    let reason = |i: usize| results[i]["reason"].as_str().unwrap_or("").to_string();
    let expect = [
        (0, "invalid e-mail address"),
        (1, "wholesale"),
        (2, "site `moon` is not configured"),
        (3, "unknown field `shoe_size`"),
        (4, "items[0]: `quantity` must be at least 1"),
        (5, "`total` must be a non-negative decimal"),
        (6, "ISO 4217"),
        (7, "items[0]: `sku`"),
        (8, "`name` must not be empty"),
        (9, "unknown variant `someday`"),
        (10, "`email` is missing"),
        (11, "no list named `no-such-list`"),
        (12, "`consent` must be"),
        (13, "unknown event type `refund`"),
        (14, "`id` is missing"),
        (15, "RFC 3339"),
        (16, "JSON object"),
    ];
    for (i, want) in expect {
        assert_eq!(results[i]["status"], "rejected", "{i}: {}", results[i]);
        assert!(
            reason(i).contains(want),
            "event {i}: {:?} lacks {want:?}",
            reason(i)
        );
    }
    assert_eq!(results[17]["status"], "accepted");
    // The rejected customer events defined no fields.
    assert_eq!(h.get("/api/v1/fields/wholesale").status, 404);
    // Nothing of the rejected events was stored.
    let c = h.get("/api/v1/contacts/x@example.com");
    assert_eq!(c.status, 404, "{c:?}");
    assert_eq!(h.get("/api/v1/contacts/ok@example.com").status, 200);
    // A body that is not an array is refused as a whole.
    let bad = h.post("/api/v1/events", "{\"type\": \"login\"}");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"]["code"], "invalid_events");
}

#[test]
fn segment_files_with_problems_are_reported_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let segs = dir.path().join("segments");
    std::fs::create_dir(&segs).unwrap();
    std::fs::write(
        segs.join("broken.toml"),
        "description = \"broken\"\nall = [\n  { field = \"order_count\", contains = 3 },\n  { field = \"order_sum\", gte = \"lots\" },\n  { field = \"last_order\", before = \"last tuesday\" },\n  { colour = \"red\" },\n]\n",
    )
    .unwrap();
    std::fs::write(segs.join("lists.toml"), "in_list = \"vips\"\n").unwrap();
    std::fs::write(segs.join("fields.toml"), "field = \"shoe_size\"\ngt = 40\n").unwrap();
    let config = dir.path().join("herald.toml");
    // A fixed port: check-config finds the daemon through http.listen.
    let port = common::peers::free_port();
    std::fs::write(
        &config,
        common::config_text(
            &dir.path().join("data"),
            "[paths]\nsegments = \"segments\"\n",
        )
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let (code, _, err) = run(&config, &["check-config"]);
    assert_eq!(code, 2, "{err}");
    for want in [
        "broken.toml:3:",
        "operator `contains` does not apply to number field `order_count`",
        "broken.toml:4:",
        "needs a number",
        "broken.toml:5:",
        "not a date",
        "broken.toml:6:",
        "unknown condition key `colour`",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // Without a daemon, names only the store knows are not checked (and said so).
    std::fs::remove_file(segs.join("broken.toml")).unwrap();
    let (code, out, err) = run(&config, &["check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lists and custom fields not checked"), "{out}");
    // With the daemon running, unknown lists and fields are errors.
    let h = Herald::start_in(dir, config.clone());
    let (code, _, err) = run(&config, &["check-config"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("lists.toml:1:") && err.contains("unknown list `vips`"),
        "{err}"
    );
    assert!(
        err.contains("fields.toml:1:") && err.contains("unknown field `shoe_size`"),
        "{err}"
    );
    h.list("vips");
    h.field("shoe_size", "number");
    let (code, out, err) = run(&config, &["check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("checked against the running daemon"), "{out}");
    // The API lists them, and a wrong type for a custom field is named.
    let l = h.get("/api/v1/segments");
    assert_eq!(l.status, 200);
    assert_eq!(l.body["segments"].as_array().unwrap().len(), 2);
    let bad = h.put(
        "/api/v1/segments/x",
        "application/json",
        &json!({"field": "shoe_size", "contains": "big"}).to_string(),
    );
    assert_eq!(bad.status, 422);
    assert!(
        bad.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not apply to number")
    );
    let file = h.put(
        "/api/v1/segments/lists",
        "application/json",
        "{\"in_list\": \"vips\"}",
    );
    assert_eq!(file.status, 409);
}

/// The generator's shop, loaded into Herald and into SQLite: the example
/// segment selects exactly the same contacts.
#[test]
fn generated_shop_matches_the_same_query_in_sqlite() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let h = start();
    let out = h.dir.path().join("events");
    let today = chrono::Utc::now().date_naive().to_string();
    let generated = Command::new(root.join("scripts/shop-gen"))
        .args(["--contacts", "1500", "--out"])
        .arg(&out)
        .args(["--now", &today, "--batch", "2000"])
        .output()
        .expect("run shop-gen");
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events-")
        })
        .collect();
    files.sort();
    for f in &files {
        let r = h.post("/api/v1/events", &std::fs::read_to_string(f).unwrap());
        assert_eq!(r.status, 200);
        assert_eq!(r.body["rejected"], 0, "{}", f.display());
    }
    let ids = h.get("/api/v1/segments/polish_shoe_lovers/contacts");
    let herald: BTreeSet<u64> = ids
        .body
        .as_str()
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let db = h.dir.path().join("shop.sqlite");
    let sql = Command::new(root.join("scripts/segment-sqlite"))
        .arg("--events")
        .arg(&out)
        .arg("--db")
        .arg(&db)
        .args([
            "--now",
            &today,
            "--load",
            "--query",
            "polish_shoes",
            "--repeat",
            "1",
            "--ids",
        ])
        .output()
        .expect("run segment-sqlite");
    assert!(
        sql.status.success(),
        "{}",
        String::from_utf8_lossy(&sql.stderr)
    );
    let text = String::from_utf8_lossy(&sql.stdout);
    let sqlite: BTreeSet<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id "))
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(herald.len() > 3, "too few members to compare: {herald:?}");
    assert_eq!(herald, sqlite);
}
