//! The admin UI's contacts, lists and fields, imports and segments pages
//! over real HTTP: search and filters, one contact's page and forms,
//! export and erasure, lists and fields, a CSV import through the upload
//! form (report, rejects, resume), segments with located errors, roles
//! and escaping.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::ui::UiSession;
use common::{Herald, TOKEN};
use serde_json::json;

fn upsert(h: &Herald, body: serde_json::Value) -> u64 {
    let r = h.post_json("/api/v1/contacts", body);
    assert!(r.status < 300, "{r:?}");
    r.body["contact"]["id"].as_u64().unwrap()
}

/// Three contacts in lists `news` and `vip`, a tag, consent states and a
/// segment of the `vip` list.
fn people(h: &Herald) -> (u64, u64, u64) {
    h.list("news");
    h.list("vip");
    h.field("city", "text");
    let ana = upsert(
        h,
        json!({"email": "ana@example.com", "lists": ["news"], "tags": ["gold"],
               "consent": "granted", "fields": {"city": "Kraków"}}),
    );
    let andrew = upsert(
        h,
        json!({"email": "andrew@example.com", "lists": ["vip"], "consent": "pending"}),
    );
    let bob = upsert(h, json!({"email": "bob@example.com", "lists": ["news"]}));
    let r = h.put(
        "/api/v1/segments/vips",
        "application/json",
        r#"{"in_list": "vip"}"#,
    );
    assert!(r.status < 300, "{r:?}");
    (ana, andrew, bob)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn contact_search_by_prefix_and_each_filter() {
    let h = Herald::start();
    people(&h);
    let v = UiSession::new(&h, "vera", "viewer");
    let page = |q: &str| {
        let r = v.get(&format!("/admin/contacts{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        r.text().to_string()
    };
    let all = page("");
    assert!(all.contains("3 contacts match"), "{all}");
    let t = page("?q=AN");
    assert!(t.contains("ana@example.com") && t.contains("andrew@example.com"));
    assert!(!t.contains("bob@example.com"));
    let t = page("?list=news");
    assert!(t.contains("ana@example.com") && t.contains("bob@example.com"));
    assert!(!t.contains("andrew@example.com"));
    assert!(t.contains("2 contacts match"), "the list's kept count");
    let t = page("?tag=gold");
    assert!(t.contains("ana@example.com") && !t.contains("bob@example.com"));
    let t = page("?consent=pending");
    assert!(t.contains("andrew@example.com") && !t.contains("ana@example.com"));
    assert!(t.contains("1 contact match"));
    let t = page("?segment=vips");
    assert!(t.contains("andrew@example.com") && !t.contains("bob@example.com"));
    let t = page("?q=a&list=news");
    assert!(t.contains("ana@example.com") && !t.contains("bob@example.com"));
    assert!(!t.contains("andrew@example.com"));
    // An unknown list is a message, not a failure.
    let t = page("?list=nope");
    assert!(t.contains("no list named `nope`"), "{t}");

    // Paged by the API's cursor: by address for a prefix, by id otherwise.
    let mut csv = String::from("email\n");
    for i in 0..55 {
        csv.push_str(&format!("p{i:02}@example.org\n"));
    }
    assert_eq!(
        h.post_csv("/api/v1/contacts/import", csv.as_bytes()).status,
        200
    );
    for (q, first, last) in [
        ("?q=p", "p00@example.org", "p54@example.org"),
        ("", "ana@example.com", "p54@example.org"),
    ] {
        let t = page(q);
        assert!(t.contains(first) && !t.contains(last), "{q}");
        let at = t.find("Next page").expect("a next page link");
        let href = &t[t[..at].rfind("href=\"").unwrap() + 6..at];
        let href = href[..href.find('"').unwrap()]
            .replace("&amp;", "&")
            .replace("&#x2f;", "/");
        let t2 = page(href.trim_start_matches("/admin/contacts"));
        assert!(t2.contains(last) && !t2.contains(first), "{href}");
    }
}

#[test]
fn the_contact_page_and_its_forms() {
    let h = Herald::start();
    let (ana, andrew, _) = people(&h);
    let r = h.post_json(
        "/api/v1/events",
        json!([{"type": "order", "id": "o-1", "at": "2026-11-20T10:00:00Z",
                "email": "ana@example.com", "order_id": "A-1",
                "items": [{"sku": "X", "quantity": 1, "price": "120.50"}],
                "total": "120.50", "currency": "EUR"}]),
    );
    assert_eq!(r.body["accepted"], 1, "{r:?}");
    let v = UiSession::new(&h, "vera", "viewer");
    let t = v.get(&format!("/admin/contacts/{ana}")).text().to_string();
    assert!(t.contains("ana@example.com") && t.contains("Kraków"), "{t}");
    assert!(t.contains("news") && t.contains("gold"));
    assert!(t.contains("consent-log") && t.contains("granted"));
    assert!(
        t.contains("A-1") && t.contains("120.50"),
        "order in history: {t}"
    );
    assert!(
        !t.contains("Erase this contact"),
        "no change forms for a viewer"
    );

    let e = UiSession::new(&h, "ed", "editor");
    let page = e.get(&format!("/admin/contacts/{ana}")).text().to_string();
    assert!(page.contains("Erase this contact"));
    // Consent: withdrawn, then the refusal to grant again.
    let base = format!("/admin/contacts/{ana}");
    let r = e.post(
        &format!("{base}/consent"),
        &[("state", "withdrawn"), ("note", "asked by phone")],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(r.location().contains("notice="));
    let c = h.get(&format!("/api/v1/contacts/{ana}")).body;
    assert_eq!(c["consent"], "withdrawn");
    let t = e.get(&base).text().to_string();
    assert!(t.contains("asked by phone"), "the consent log");
    let r = e.post(&format!("{base}/consent"), &[("state", "granted")]);
    assert_eq!(r.status, 303);
    assert!(r.location().contains("problem="), "{}", r.location());
    let t = e.get(r.location()).text().to_string();
    assert!(t.contains("class=\"problem\""), "{t}");
    assert_eq!(
        h.get(&format!("/api/v1/contacts/{ana}")).body["consent"],
        "withdrawn"
    );
    // Fields.
    let r = e.post(&format!("{base}/fields"), &[("field.city", "Gdańsk")]);
    assert_eq!(r.status, 303, "{}", r.text());
    let c = h.get(&format!("/api/v1/contacts/{ana}")).body;
    assert_eq!(c["fields"]["city"], "Gdańsk");
    let r = e.post(&format!("{base}/fields"), &[("field.nope", "x")]);
    assert!(r.location().contains("problem="));
    // Lists and tags.
    e.post(
        &format!("{base}/lists"),
        &[("add_list", "vip"), ("add_tag", "new")],
    );
    e.post(&format!("{base}/lists"), &[("remove_list", "news")]);
    e.post(&format!("{base}/lists"), &[("remove_tag", "gold")]);
    let c = h.get(&format!("/api/v1/contacts/{ana}")).body;
    assert_eq!(c["lists"], json!(["vip"]), "{c}");
    assert_eq!(c["tags"], json!(["new"]), "{c}");
    // Export: the API's JSON as a download.
    let r = v.get(&format!("{base}/export"));
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-disposition")
            .unwrap()
            .contains("attachment")
    );
    let doc: serde_json::Value = serde_json::from_str(r.text()).unwrap();
    assert_eq!(doc["contact"]["email"], "ana@example.com");
    // Erase: the wrong address first, then the right one.
    let r = e.post(&format!("{base}/erase"), &[("confirm", "bob@example.com")]);
    assert!(r.location().contains("problem="), "{}", r.location());
    assert_eq!(h.get(&format!("/api/v1/contacts/{ana}")).status, 200);
    let r = e.post(&format!("{base}/erase"), &[("confirm", "ANA@example.com")]);
    assert_eq!(r.status, 303);
    assert!(r.location().starts_with("/admin/contacts?notice="));
    assert_eq!(h.get(&format!("/api/v1/contacts/{ana}")).status, 404);

    // A viewer is refused on every contact form.
    let vb = format!("/admin/contacts/{andrew}");
    for (path, fields) in [
        (format!("{vb}/consent"), vec![("state", "withdrawn")]),
        (format!("{vb}/fields"), vec![("field.city", "x")]),
        (format!("{vb}/lists"), vec![("add_tag", "x")]),
        (
            format!("{vb}/erase"),
            vec![("confirm", "andrew@example.com")],
        ),
    ] {
        let r = v.post(&path, &fields);
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }
    assert_eq!(h.get(&format!("/api/v1/contacts/{andrew}")).status, 200);
}

#[test]
fn lists_and_fields_create_rename_delete_and_refusals() {
    let h = Herald::start();
    people(&h);
    let e = UiSession::new(&h, "ed", "editor");
    let v = UiSession::new(&h, "vera", "viewer");
    let r = e.post(
        "/admin/lists",
        &[("name", "<script>x</script>"), ("description", "a & b")],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let t = v.get("/admin/lists").text().to_string();
    assert!(t.contains("&lt;script&gt;x&lt;"));
    assert!(!t.contains("<script>x</script>"));
    let t = v.get("/admin/fields").text().to_string();
    assert!(t.contains("&lt;script&gt;") && t.contains("city"));
    let id = h.get("/api/v1/lists/%3Cscript%3Ex%3C%2Fscript%3E").body["id"]
        .as_u64()
        .unwrap();
    let r = e.post(
        &format!("/admin/lists/{id}/rename"),
        &[("name", "promo"), ("description", "")],
    );
    assert!(r.location().contains("notice="), "{}", r.location());
    assert_eq!(h.get(&format!("/api/v1/lists/{id}")).body["name"], "promo");
    // `vip` is named by the segment `vips`: refused.
    let vip = h.get("/api/v1/lists/vip").body["id"].as_u64().unwrap();
    let r = e.post(&format!("/admin/lists/{vip}/delete"), &[]);
    assert!(r.location().contains("problem="), "{}", r.location());
    let t = e.get(r.location()).text().to_string();
    assert!(t.contains("segment `vips`"), "{t}");
    let r = e.post(&format!("/admin/lists/{id}/delete"), &[]);
    assert!(r.location().contains("notice="));
    assert_eq!(h.get(&format!("/api/v1/lists/{id}")).status, 404);

    // Fields.
    let r = e.post(
        "/admin/fields",
        &[("name", "size"), ("type", "choice"), ("choices", "S, M, L")],
    );
    assert!(
        r.location().starts_with("/admin/fields?notice="),
        "{}",
        r.location()
    );
    let r = e.post(
        "/admin/fields/size/edit",
        &[("label", "Shirt size"), ("choices", "S, M, L, XL")],
    );
    assert!(r.location().contains("notice="), "{}", r.location());
    let f = h.get("/api/v1/fields/size").body;
    assert_eq!(f["label"], "Shirt size");
    assert_eq!(f["choices"], json!(["S", "M", "L", "XL"]));
    let r = e.post("/admin/fields", &[("name", "Bad Name"), ("type", "text")]);
    assert!(r.location().contains("problem="));
    assert_eq!(
        h.put(
            "/api/v1/segments/sized",
            "application/json",
            r#"{"field": "size", "eq": "M"}"#
        )
        .status,
        201
    );
    let r = e.post("/admin/fields/size/delete", &[]);
    assert!(r.location().contains("problem="), "{}", r.location());
    assert_eq!(h.delete("/api/v1/segments/sized").status, 200);
    let r = e.post("/admin/fields/size/delete", &[]);
    assert!(r.location().contains("notice="), "{}", r.location());
    assert_eq!(h.get("/api/v1/fields/size").status, 404);

    // A viewer sees no forms and is refused on each.
    assert!(!v.get("/admin/lists").text().contains("Create list"));
    for (path, fields) in [
        ("/admin/lists".to_string(), vec![("name", "x")]),
        (format!("/admin/lists/{vip}/rename"), vec![("name", "y")]),
        (format!("/admin/lists/{vip}/delete"), vec![]),
        (
            "/admin/fields".to_string(),
            vec![("name", "x"), ("type", "text")],
        ),
        ("/admin/fields/city/edit".to_string(), vec![("label", "x")]),
        ("/admin/fields/city/delete".to_string(), vec![]),
    ] {
        assert_eq!(v.post(&path, &fields).status, 403, "{path}");
    }
}

/// Starts a chunked upload to the import API, sends `body`, and keeps the
/// request open.
fn partial_upload(h: &Herald, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(h.addr).unwrap();
    write!(
        s,
        "POST /api/v1/contacts/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n",
        body.len()
    )
    .unwrap();
    s.flush().unwrap();
    s
}

#[test]
fn a_csv_import_through_the_upload_form_and_a_resume() {
    let h = Herald::start();
    let e = UiSession::new(&h, "ed", "editor");
    let v = UiSession::new(&h, "vera", "viewer");
    let form = e.get("/admin/imports").text().to_string();
    assert!(form.contains("enctype=\"multipart/form-data\""));
    assert!(form.contains(&format!("action=\"/admin/imports?_csrf={}\"", e.csrf)));
    assert!(form.contains("name=\"file\"") && form.contains("name=\"list\""));
    assert!(form.contains("<progress id=\"upload-progress\" hidden>"));
    assert!(form.find("name=\"list\"").unwrap() < form.find("name=\"file\"").unwrap());

    let csv = "email,city\nana@example.com,Kraków\nnot-an-address,Gdańsk\nbob@example.com,Poznań\nana@example.com,Łódź\n";
    let r = e.post_file(
        "/admin/imports",
        &[
            ("list", "<script>x</script>"),
            ("create_list", "true"),
            ("create_fields", "true"),
            ("consent", "granted"),
        ],
        "file",
        "people.csv",
        csv.as_bytes(),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let to = r.location().to_string();
    assert!(to.starts_with("/admin/imports/"), "{to}");
    let t = v.get(&to).text().to_string();
    assert!(t.contains("completed"), "{t}");
    assert!(t.contains("<span class=\"label\">Created</span><span class=\"value\">2</span>"));
    assert!(t.contains("<span class=\"label\">Rejected</span><span class=\"value\">1</span>"));
    assert!(
        t.contains("<span class=\"label\">Merged duplicates</span><span class=\"value\">1</span>")
    );
    assert!(
        t.contains("<td class=\"num\">3</td>"),
        "the rejected line: {t}"
    );
    assert!(t.contains("not-an-address"), "the reason: {t}");
    assert!(t.contains("&lt;script&gt;x&lt;") && !t.contains("<script>x"));
    assert!(!t.contains("http-equiv=\"refresh\""));
    // The activity log names the import it started.
    let import_id = to.trim_start_matches("/admin/imports/");
    let act = h.get(&format!("/api/v1/activity?object=import:{import_id}"));
    assert_eq!(act.body["activity"][0]["who"], "ed", "{:?}", act.body);
    assert_eq!(act.body["activity"][0]["action"], "POST contacts_import");
    let c = h.get("/api/v1/contacts/bob@example.com").body;
    assert_eq!(c["consent"], "granted");
    assert_eq!(c["fields"]["city"], "Poznań");
    let list = v.get("/admin/imports").text().to_string();
    assert!(list.contains(&format!("href=\"{to}\"")));

    // Bad uploads come back as a problem.
    for (name, body, says) in [
        ("people.xlsx", "PK\u{3}\u{4}", "is not a CSV file"),
        ("", "", "Choose a CSV file"),
        ("people.csv", "name,city\nx,y\n", "email"),
    ] {
        let r = e.post_file("/admin/imports", &[], "file", name, body.as_bytes());
        assert_eq!(r.status, 303, "{name}");
        assert!(
            r.location().starts_with("/admin/imports?problem="),
            "{name}"
        );
        let t = e.get(r.location()).text().to_string();
        assert!(t.contains(says), "{name}: {t}");
    }
    // A viewer may not import.
    let r = v.post_file(
        "/admin/imports",
        &[],
        "file",
        "p.csv",
        b"email\nz@example.com\n",
    );
    assert_eq!(r.status, 403);
    assert_eq!(h.get("/api/v1/contacts/z@example.com").status, 404);

    // An interrupted upload: the report refreshes while it runs, then
    // offers to resume; the same file through the form finishes it.
    let rows = herald::contacts::import::BATCH_ROWS + 500;
    let full: String = std::iter::once("email\n".to_string())
        .chain((0..rows).map(|i| format!("u{i}@example.net\n")))
        .collect();
    let cut = &full[..full.len() - 2000];
    let s = partial_upload(&h, cut);
    let mut id = 0;
    wait_for("a committed batch", || {
        let r = h.get("/api/v1/contacts/import").body;
        let last = r["imports"].as_array().unwrap().last().cloned().unwrap();
        id = last["id"].as_u64().unwrap();
        last["status"] == "running" && last["records_committed"].as_u64().unwrap() > 0
    });
    let t = v.get(&format!("/admin/imports/{id}")).text().to_string();
    assert!(t.contains("http-equiv=\"refresh\""), "{t}");
    drop(s);
    wait_for("the interrupted status", || {
        h.get(&format!("/api/v1/contacts/import/{id}")).body["status"] == "interrupted"
    });
    let t = e.get(&format!("/admin/imports/{id}")).text().to_string();
    assert!(t.contains("Resume import"), "{t}");
    assert!(t.contains(&format!("name=\"resume\" value=\"{id}\"")));
    let r = e.post_file(
        "/admin/imports",
        &[("resume", &id.to_string())],
        "file",
        "people.csv",
        full.as_bytes(),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.location(), format!("/admin/imports/{id}"));
    let rec = h.get(&format!("/api/v1/contacts/import/{id}")).body;
    assert_eq!(rec["status"], "completed", "{rec}");
    assert_eq!(rec["records_committed"], rows as u64);
    assert_eq!(rec["updated"], 0, "nothing applied twice: {rec}");
    // Resuming a completed import is refused, on its own page.
    let r = e.post_file(
        "/admin/imports",
        &[("resume", &id.to_string())],
        "file",
        "people.csv",
        full.as_bytes(),
    );
    assert!(
        r.location()
            .starts_with(&format!("/admin/imports/{id}?problem=")),
        "{}",
        r.location()
    );
    // Deleting the record: refused for a viewer, done for an editor.
    assert_eq!(
        v.post(&format!("/admin/imports/{id}/delete"), &[]).status,
        403
    );
    let r = e.post(&format!("/admin/imports/{id}/delete"), &[]);
    assert!(r.location().contains("notice="));
    assert_eq!(h.get(&format!("/api/v1/contacts/import/{id}")).status, 404);
}

/// A daemon with a marketing template `news` (campaigns can be drafted;
/// nothing is sent).
fn start_with_template() -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    common::write(
        &t,
        "news/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\nkind = \"marketing\"\n[subject]\nen = \"News\"\n",
    );
    common::write(
        &t,
        "news/body.en.html",
        "<html><body><p>Hi</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></body></html>\n",
    );
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        common::config_text(
            &dir.path().join("data"),
            "[paths]\ntemplates = \"templates\"\n[[sender]]\nid = \"newsletter\"\nfrom = \"Shop <news@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = 9\ntls = \"none\"\n",
        ),
    )
    .unwrap();
    Herald::start_in(dir, config)
}

#[test]
fn segments_create_with_a_located_error_count_and_delete() {
    let h = start_with_template();
    people(&h);
    let e = UiSession::new(&h, "ed", "editor");
    let v = UiSession::new(&h, "vera", "viewer");
    let t = v.get("/admin/segments").text().to_string();
    assert!(t.contains("vips") && t.contains("API"), "{t}");
    assert!(
        t.contains("href=\"/admin/contacts?segment=vips\">1</a>"),
        "{t}"
    );
    assert_eq!(e.get("/admin/segments/new").status, 200);

    // A syntax error: shown at its line and column, the text kept.
    let bad = "description = \"News <b>readers</b>\"\nin_list = [\"news\" \"vip\"]\n";
    let r = e.post(
        "/admin/segments/new",
        &[("name", "readers"), ("definition", bad), ("format", "toml")],
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let t = r.text();
    assert!(t.contains("line 2, column"), "{t}");
    assert!(t.contains("2 | in_list = [&quot;news&quot;"), "{t}");
    assert!(
        t.contains("description = &quot;News &lt;b&gt;readers&lt;"),
        "the text is kept, escaped: {t}"
    );
    assert!(t.contains("aria-invalid=\"true\""));
    assert_eq!(h.get("/api/v1/segments/readers").status, 404);
    // An unknown field: also located.
    let r = e.post(
        "/admin/segments/new",
        &[
            ("name", "readers"),
            (
                "definition",
                "description = \"x\"\nfield = \"nope\"\neq = 1\n",
            ),
        ],
    );
    assert_eq!(r.status, 422);
    assert!(r.text().contains("nope"), "{}", r.text());
    // Fixed.
    let good = "description = \"News readers\"\nin_list = [\"news\"]\n";
    let r = e.post(
        "/admin/segments/new",
        &[
            ("name", "readers"),
            ("definition", good),
            ("format", "toml"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(r.location().starts_with("/admin/segments/readers?notice="));
    let t = v.get("/admin/segments/readers").text().to_string();
    assert!(
        t.contains("Contacts now</span><span class=\"value\">2</span>"),
        "{t}"
    );
    assert!(t.contains("ana@example.com") && t.contains("bob@example.com"));
    // The same name again is refused.
    let r = e.post(
        "/admin/segments/new",
        &[("name", "readers"), ("definition", good)],
    );
    assert_eq!(r.status, 422);
    assert!(r.text().contains("exists already"));
    // Edit: a bad change keeps the text; a good one saves.
    let r = e.post(
        "/admin/segments/readers",
        &[("definition", "in_list = 3\n"), ("format", "toml")],
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("in_list = 3"));
    let r = e.post(
        "/admin/segments/readers",
        &[("definition", "in_list = [\"vip\"]\n"), ("format", "toml")],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let t = v.get("/admin/segments/readers").text().to_string();
    assert!(
        t.contains("Contacts now</span><span class=\"value\">1</span>"),
        "{t}"
    );
    // The edit form shows the stored definition as TOML.
    let t = e.get("/admin/segments/readers").text().to_string();
    assert!(t.contains("in_list = [&quot;vip&quot;]"), "{t}");
    // A viewer is refused on every segment form.
    for (path, fields) in [
        (
            "/admin/segments/new",
            vec![("name", "x"), ("definition", good)],
        ),
        ("/admin/segments/readers", vec![("definition", good)]),
        ("/admin/segments/readers/delete", vec![]),
    ] {
        assert_eq!(v.post(path, &fields).status, 403, "{path}");
    }
    // A campaign's audience names it: the delete is refused, with why.
    let r = h.post_json(
        "/api/v1/campaigns",
        json!({"name": "Autumn", "template": "news", "audience": {"segments": ["readers"]}}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let camp = r.body["id"].as_u64().unwrap();
    let r = e.post("/admin/segments/readers/delete", &[]);
    assert!(r.location().contains("problem="), "{}", r.location());
    let t = e.get(r.location()).text().to_string();
    assert!(t.contains("used by campaign"), "{t}");
    assert_eq!(h.delete(&format!("/api/v1/campaigns/{camp}")).status, 200);
    // Delete.
    let r = e.post("/admin/segments/readers/delete", &[]);
    assert!(
        r.location().starts_with("/admin/segments?notice="),
        "{}",
        r.location()
    );
    assert_eq!(h.get("/api/v1/segments/readers").status, 404);
}
