//! One test per fixed bug, each named after what used to go wrong.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{Herald, TOKEN};
use serde_json::json;

/// A refused import (missing list) used to commit the fields it was asked to
/// create before noticing.
#[test]
fn a_refused_import_writes_nothing() {
    let h = Herald::start();
    let r = h.post_csv(
        "/api/v1/contacts/import?create_fields=true&list=nosuch",
        "email,shoe_size\na@example.com,42\n",
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(
        h.get("/api/v1/fields/shoe_size").status,
        404,
        "the field must not exist"
    );
    assert_eq!(h.get("/api/v1/contacts/import").body["imports"], json!([]));
}

/// Reject line numbers were off by one in CRLF files (and double-counted
/// quoted newlines).
#[test]
fn reject_line_numbers_match_the_file_with_crlf_and_quoted_newlines() {
    let h = Herald::start();
    h.field("note", "text");
    let csv = "email,note\r\nok@example.com,\"a\r\nb\"\r\nbad-1,x\r\n\r\nbad-2,\"\n\"\nok2@example.com,\r\n";
    let r = h.post_csv("/api/v1/contacts/import", csv);
    let lines: Vec<u64> = r.body["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![4, 6], "{r:?}");
}

/// `{...} junk` was accepted as valid JSON.
#[test]
fn json_with_trailing_garbage_is_refused() {
    let h = Herald::start();
    let r = h.post("/api/v1/contacts", "{\"email\": \"a@example.com\"} junk");
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("invalid_json")),
        "{r:?}"
    );
    assert_eq!(h.get("/api/v1/contacts/a@example.com").status, 404);
}

/// `/api/v1/lists/+5` used to resolve to the list with id 5.
#[test]
fn a_list_ref_with_a_sign_is_a_name_not_an_id() {
    let h = Herald::start();
    let id = h.list("first");
    assert_eq!(h.get(&format!("/api/v1/lists/+{id}")).status, 404);
    assert_eq!(h.delete(&format!("/api/v1/lists/+{id}")).status, 404);
    assert_eq!(h.get(&format!("/api/v1/lists/{id}")).status, 200);
}

/// Any method string became a metrics label, so clients could grow the
/// label set without bound.
#[test]
fn unknown_methods_share_one_metrics_label() {
    let h = Herald::start();
    for m in ["FOO1", "FOO2"] {
        let mut s = TcpStream::connect(h.addr).unwrap();
        write!(s, "{m} /api/v1/contacts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    }
    let m = h.get("/metrics").body.as_str().unwrap().to_string();
    assert!(m.contains("method=\"other\",status=\"405\"} 2"), "{m}");
    assert!(!m.contains("FOO1"), "{m}");
}

/// Resuming an import that was still running was accepted, and both uploads
/// advanced its progress.
#[test]
fn a_running_import_cannot_be_resumed() {
    let h = Herald::start();
    let mut s = TcpStream::connect(h.addr).unwrap();
    let body = "email\na@example.com\n";
    write!(
        s,
        "POST /api/v1/contacts/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: text/csv\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n",
        body.len()
    )
    .unwrap();
    let id = loop {
        if let Some(id) = h.get("/api/v1/contacts/import").body["imports"][0]["id"].as_u64() {
            break id;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let r = h.post_csv(
        &format!("/api/v1/contacts/import?resume={id}"),
        "email\na@example.com\n",
    );
    assert_eq!(r.status, 409, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is running"),
        "{r:?}"
    );
    let d = h.delete(&format!("/api/v1/contacts/import/{id}"));
    assert_eq!(d.status, 409, "a running import cannot be deleted: {d:?}");
    write!(s, "0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "the first upload still completes: {out}"
    );
}
