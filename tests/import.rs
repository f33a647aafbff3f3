//! CSV import over real HTTP: every kind of bad row, header errors, encodings,
//! duplicates, the CLI client, interruption and resume, and `kill -9` right
//! after an acknowledged import.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Herald, TOKEN, run};
use herald::contacts::import::BATCH_ROWS;
use serde_json::{Value, json};

fn reasons(r: &Value) -> Vec<(u64, String)> {
    r["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["line"].as_u64().unwrap(),
                x["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_kind_of_bad_row_is_rejected_with_its_line_and_the_rest_imported() {
    let h = Herald::start();
    h.field("age", "number");
    h.field("born", "date");
    h.field("vip", "boolean");
    let r = h.post_json(
        "/api/v1/fields",
        json!({"name": "size", "type": "choice", "choices": ["S", "M"]}),
    );
    assert_eq!(r.status, 201);
    // Erase one address so that it is suppressed.
    h.post_json("/api/v1/contacts", json!({"email": "gone@example.com"}));
    h.delete("/api/v1/contacts/gone@example.com");

    let mut csv = Vec::new();
    csv.extend_from_slice(b"email,age,born,vip,size,consent\n"); // 1
    csv.extend_from_slice(b"ok1@example.com,1,2000-01-01,yes,S,granted\n"); // 2
    csv.extend_from_slice(b"not-an-address,1,,,,\n"); // 3
    csv.extend_from_slice(b",1,,,,\n"); // 4 missing address
    csv.extend_from_slice(b"short@example.com,1\n"); // 5 column count
    csv.extend_from_slice(b"num@example.com,+48123,,,,\n"); // 6
    csv.extend_from_slice(b"date@example.com,,1999-02-30,,,\n"); // 7
    csv.extend_from_slice(b"bool@example.com,,,perhaps,,\n"); // 8
    csv.extend_from_slice(b"choice@example.com,,,,XL,\n"); // 9
    csv.extend_from_slice(b"consent@example.com,,,,,sure\n"); // 10
    csv.extend_from_slice(b"gone@example.com,,,,,\n"); // 11 suppressed
    csv.extend_from_slice(b"utf@example.com,,,,\xff\xfe,\n"); // 12 not UTF-8
    csv.extend_from_slice(b"ok2@example.com,2.5,,no,M,\n"); // 13
    let r = h.post_csv("/api/v1/contacts/import", &csv);
    assert_eq!(r.status, 200, "{r:?}");
    let got = reasons(&r.body);
    let expect: &[(u64, &str)] = &[
        (3, "invalid e-mail address `not-an-address`"),
        (4, "invalid e-mail address ``: empty"),
        (5, "has 2 columns, the header has 6"),
        (6, "field `age`: `+48123` is not a number"),
        (7, "field `born`: `1999-02-30` is not a date"),
        (8, "field `vip`: `perhaps` is not a boolean"),
        (9, "field `size`: `XL` is not one of: S, M"),
        (10, "consent `sure` is not one of"),
        (11, "the address is suppressed"),
        (12, "column `size` is not valid UTF-8"),
    ];
    assert_eq!(got.len(), expect.len(), "{got:#?}");
    for ((line, reason), (el, er)) in got.iter().zip(expect) {
        assert_eq!(line, el, "{got:#?}");
        assert!(reason.contains(er), "line {line}: `{reason}` lacks `{er}`");
    }
    assert_eq!(
        (r.body["created"].as_u64(), r.body["rejected"].as_u64()),
        (Some(2), Some(10))
    );
    assert_eq!(r.body["status"], "completed");
    let c = h.get("/api/v1/contacts/ok2@example.com").body;
    assert_eq!(c["fields"], json!({"age": 2.5, "vip": false, "size": "M"}));
    // An import claims each new address in the index first; the suppressed
    // row's claim was given back: no entry for it, no gap in the ids.
    assert_eq!(h.get("/api/v1/contacts/gone@example.com").status, 404);
    let ok1 = h.get("/api/v1/contacts/ok1@example.com").body["id"].as_u64();
    assert!(ok1.is_some());
    assert_eq!(c["id"].as_u64(), ok1.map(|id| id + 1));
    assert_eq!(
        h.get("/api/v1/contacts/ok1@example.com").body["consent"],
        "granted"
    );

    // The same rejects are stored with the import and can be paged.
    let id = r.body["id"].as_u64().unwrap();
    let p1 = h
        .get(&format!("/api/v1/contacts/import/{id}/rejects?limit=4"))
        .body;
    assert_eq!(p1["rejects"].as_array().unwrap().len(), 4);
    assert_eq!(p1["next_after"], 6);
    let p2 = h
        .get(&format!(
            "/api/v1/contacts/import/{id}/rejects?after=6&limit=100"
        ))
        .body;
    assert_eq!(p2["rejects"].as_array().unwrap().len(), 6);
    assert_eq!(p2["rejects"][0]["line"], 7);
    assert_eq!(
        h.get(&format!("/api/v1/contacts/import/{id}")).body["rejected"],
        10
    );
}

#[test]
fn bom_crlf_quotes_and_in_file_duplicates() {
    let h = Herald::start();
    h.field("name", "text");
    h.field("note", "text");
    let csv = "\u{feff}Email,Name,Note,Tags\r\n\
               a@example.com,\"Kowalski, Jan\",\"said \"\"hi\"\"\",x;y\r\n\
               b@example.com,Zoë,\"two\r\nlines\",\r\n\
               A@EXAMPLE.com,Jan K,,z\r\n\
               c@example.com,,,\r\n";
    let r = h.post_csv("/api/v1/contacts/import", csv);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["rejected"], 0, "{r:?}");
    assert_eq!(r.body["created"], 3);
    assert_eq!(r.body["updated"], 1);
    assert_eq!(r.body["merged_duplicates"], 1);
    assert_eq!(
        r.body["lines_committed"], 6,
        "a quoted newline spans two lines"
    );
    let a = h.get("/api/v1/contacts/a@example.com").body;
    assert_eq!(
        a["fields"],
        json!({"name": "Jan K", "note": "said \"hi\""}),
        "later rows win, empty cells keep values"
    );
    assert_eq!(a["tags"], json!(["x", "y", "z"]));
    assert_eq!(
        h.get("/api/v1/contacts/b@example.com").body["fields"]["note"],
        "two\r\nlines"
    );
}

#[test]
fn header_problems_refuse_the_file_before_anything_is_written() {
    let h = Herald::start();
    for (csv, needle) in [
        ("", "the file is empty"),
        ("name\nx\n", "no `email` column"),
        (
            "email,email\na@example.com,b@example.com\n",
            "column `email` appears twice",
        ),
        (
            "email,colour,size\na@example.com,red,L\n",
            "unknown columns `colour`, `size`",
        ),
        ("email,\na@example.com,\n", "column 2 has no name"),
    ] {
        let r = h.post_csv("/api/v1/contacts/import", csv);
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("invalid_csv")),
            "{csv:?}: {r:?}"
        );
        let m = r.body["error"]["message"].as_str().unwrap();
        assert!(
            m.starts_with("line 1: ") && m.contains(needle),
            "{csv:?}: {m}"
        );
    }
    assert_eq!(h.get("/api/v1/contacts").body["contacts"], json!([]));
    let r = h.post_csv(
        "/api/v1/contacts/import?create_fields=true",
        "email,colour\na@example.com,red\n",
    );
    assert_eq!(r.body["created"], 1, "{r:?}");
    assert_eq!(h.get("/api/v1/fields/colour").body["type"], "text");
    let r = h.post_csv(
        "/api/v1/contacts/import?create_fields=true",
        "email,Bad-Name\na@example.com,red\n",
    );
    assert_eq!(r.status, 422);
    let r = h.post_csv(
        "/api/v1/contacts/import?list=absent",
        "email\na@example.com\n",
    );
    assert_eq!(r.status, 404, "{r:?}");
    let r = h.post_csv(
        "/api/v1/contacts/import?list=fresh&create_list=true&consent=granted",
        "email\nn@example.com\n",
    );
    assert_eq!(r.body["created"], 1, "{r:?}");
    let n = h.get("/api/v1/contacts/n@example.com").body;
    assert_eq!(
        (n["lists"].clone(), n["consent"].clone()),
        (json!(["fresh"]), json!("granted"))
    );
    assert_eq!(
        h.post_csv("/api/v1/contacts/import?consent=sure", "email\n")
            .status,
        400
    );
    assert_eq!(
        h.post_csv("/api/v1/contacts/import?bogus=1", "email\n")
            .status,
        400
    );
}

#[test]
fn the_cli_client_streams_a_file_to_the_daemon() {
    let h = Herald::start();
    let file = h.dir.path().join("people.csv");
    std::fs::write(
        &file,
        "email,consent\np1@example.com,granted\np2@example.com,\nbad,\n",
    )
    .unwrap();
    let api = format!("http://{}", h.addr);
    let (code, out, err) = run(
        &h.config,
        &[
            "contacts",
            "import",
            file.to_str().unwrap(),
            "--list",
            "Customers",
            "--create-list",
            "--api",
            &api,
        ],
    );
    // A rejected row: exit 1, the row printed with its line and text.
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("2 created"), "{out}");
    assert!(
        out.contains("1 rejected (read as UTF-8, delimiter ,)"),
        "{out}"
    );
    assert!(
        err.contains(&format!(
            "{}:4: invalid e-mail address `bad`: no @\n      bad,\n",
            file.display()
        )),
        "{err}"
    );
    assert!(err.contains("1 row of"), "{err}");
    assert_eq!(
        h.get("/api/v1/contacts?list=Customers").body["contacts"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (code, _, err) = run(
        &h.config,
        &[
            "contacts",
            "import",
            file.to_str().unwrap(),
            "--list",
            "nope",
            "--api",
            &api,
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("no list named `nope`"), "{err}");
    assert!(err.contains("import with --create-list"), "{err}");
    let (code, _, err) = run(
        &h.config,
        &[
            "contacts",
            "import",
            file.to_str().unwrap(),
            "--consent",
            "yes",
            "--api",
            &api,
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("--consent: `yes` is not one of"), "{err}");
    let (code, out, err) = run(
        &h.config,
        &[
            "contacts",
            "import",
            file.to_str().unwrap(),
            "--allow-rejects",
            "--api",
            &api,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// Runs `herald contacts import` on `bytes` (written to a file) with `args`.
fn import_cli(h: &Herald, name: &str, bytes: &[u8], args: &[&str]) -> (i32, String, String) {
    let file = h.dir.path().join(name);
    std::fs::write(&file, bytes).unwrap();
    let api = format!("http://{}", h.addr);
    let mut all = vec!["contacts", "import", file.to_str().unwrap(), "--api", &api];
    all.extend_from_slice(args);
    run(&h.config, &all)
}

#[test]
fn csv_as_excel_writes_it_semicolons_windows_1250_bom_and_open_quotes() {
    let h = Herald::start();
    h.field("first_name", "text");
    let name = |email: &str| {
        h.get(&format!("/api/v1/contacts/{email}")).body["fields"]["first_name"].clone()
    };
    // Polish Excel: `;`, Windows-1250, CRLF ("Łucja", "Żaneta").
    let pl = b"email;first_name\r\nlucja@example.pl;\xa3ucja\r\nzaneta@example.pl;\xafaneta\r\n";
    let (code, out, err) = import_cli(&h, "pl.csv", pl, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 created, 0 updated, 0 unchanged, 0 duplicates merged, 0 rejected (read as windows-1250 (the file is not UTF-8"), "{out}");
    assert!(out.contains("delimiter ;"), "{out}");
    assert_eq!(name("lucja@example.pl"), "Łucja");
    assert_eq!(name("zaneta@example.pl"), "Żaneta");

    // UTF-8 with a BOM, tab-separated, quoted header.
    let tab = "\u{feff}\"email\"\t\"first_name\"\njurgen@example.de\tJürgen\n";
    let (code, out, err) = import_cli(&h, "de.tsv", tab.as_bytes(), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("delimiter tab"), "{out}");
    assert_eq!(name("jurgen@example.de"), "Jürgen");

    // A named delimiter that does not fit: the error says what it read.
    let (code, _, err) = import_cli(&h, "pl2.csv", pl, &["--delimiter", ","]);
    assert_eq!(code, 1);
    assert!(err.contains("no `email` column (read with the delimiter `,`, the header's columns are: `email;first_name`); the header has `;` in it: is the file separated by `;`? (--delimiter)"), "{err}");

    // An unclosed quote: the row where it opens is rejected with its line,
    // nothing after it is taken silently.
    let open =
        b"email,first_name\nx1@example.com,One\nx2@example.com,\"Unclosed\nx3@example.com,Fine\n";
    let (code, out, err) = import_cli(&h, "open.csv", open, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("1 created"), "{out}");
    assert!(out.contains("1 rejected"), "{out}");
    assert!(err.contains(":3: the quote opened on line 3 is never closed: lines 3–4 were read as one field, so this row and the 1 line(s) after it are not imported"), "{err}");
    assert_eq!(h.get("/api/v1/contacts/x2@example.com").status, 404);
    // A quote closed further on by another: the row that swallowed a
    // record is reported, the rows after it are imported.
    let swallow = b"email,first_name\ny1@example.com,\"Open\ny2@example.com,Lost\ny3@example.com,\"Closed\"\ny4@example.com,Four\n";
    let (code, out, err) = import_cli(&h, "swallow.csv", swallow, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(":2: a quoted field runs over 3 lines and holds what looks like another record (`y2@example.com,Lost`): is a quote left open?"), "{err}");
    assert_eq!(h.get("/api/v1/contacts/y4@example.com").status, 200);
}

fn rows(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| format!("user{i}@example.com,{i}\n"))
        .collect()
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a chunked upload, sends `body`, and returns the open socket without
/// finishing the request.
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
fn an_interrupted_upload_keeps_whole_batches_and_resumes_after_them() {
    let h = Herald::start();
    h.field("n", "number");
    let header = "email,n\n";
    // Two batches and a bit whole, then half a row: the upload is cut mid-row.
    let whole = 2 * BATCH_ROWS + BATCH_ROWS / 5;
    let first = format!("{header}{}user{whole}@exam", rows(0, whole));
    let s = partial_upload(&h, &first);
    let rec = wait_for("two committed batches", || {
        let r = h.get("/api/v1/contacts/import");
        let rec = r.body["imports"].get(0).cloned()?;
        (rec["records_committed"].as_u64()? >= 2 * BATCH_ROWS as u64).then_some(rec)
    });
    let id = rec["id"].as_u64().unwrap();
    drop(s); // the client goes away mid-file
    let rec = wait_for("interrupted status", || {
        let r = h.get(&format!("/api/v1/contacts/import/{id}")).body;
        (r["status"] == "interrupted").then_some(r)
    });
    // Every whole row read before the cut is committed and counted; the cut
    // row is not applied.
    assert_eq!(rec["records_committed"], whole, "{rec}");
    assert_eq!(rec["lines_committed"], whole + 1, "{rec}");
    assert!(rec["error"].as_str().unwrap().contains("cut off"), "{rec}");
    assert_eq!(
        h.get(&format!("/api/v1/contacts/user{}@example.com", whole - 1))
            .status,
        200
    );
    assert_eq!(
        h.get(&format!("/api/v1/contacts/user{whole}@example.com"))
            .status,
        404
    );
    let tail = h
        .get(&format!("/api/v1/contacts?limit=1000&after={}", whole - 10))
        .body;
    assert_eq!(tail["contacts"].as_array().unwrap().len(), 10);

    // Resuming with the whole file skips the committed records.
    let total = whole + BATCH_ROWS;
    let full = format!("{header}{}", rows(0, total));
    let r = h.post_csv(&format!("/api/v1/contacts/import?resume={id}"), &full);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["id"], id);
    assert_eq!(r.body["status"], "completed");
    assert_eq!(r.body["records_committed"], total);
    assert_eq!(r.body["created"], total);
    assert_eq!(r.body["updated"], 0, "nothing was applied twice");
    let r = h.post_csv(&format!("/api/v1/contacts/import?resume={id}"), &full);
    assert_eq!(r.status, 409, "a completed import cannot be resumed: {r:?}");
}

#[test]
fn kill_9_after_an_acknowledged_import_loses_nothing() {
    let mut h = Herald::start();
    h.field("n", "number");
    let csv = format!("email,n\n{}", rows(0, 20_000));
    let r = h.post_csv(
        "/api/v1/contacts/import?list=all&create_list=true&consent=granted",
        &csv,
    );
    assert_eq!(r.body["created"], 20_000, "{r:?}");
    h.kill9();
    h.restart();
    let metrics = h.get("/metrics").body.as_str().unwrap().to_string();
    assert!(
        metrics.contains("herald_contacts{consent=\"granted\"} 20000"),
        "{metrics}"
    );
    assert_eq!(h.get("/api/v1/lists/all").body["member_count"], 20_000);
    for i in [0, 7_777, 19_999] {
        let c = h.get(&format!("/api/v1/contacts/user{i}@example.com")).body;
        assert_eq!(c["fields"]["n"], i, "{c}");
    }
}

#[test]
fn kill_9_during_an_import_leaves_it_interrupted_and_resumable() {
    let mut h = Herald::start();
    let n = BATCH_ROWS + BATCH_ROWS / 2;
    let first = format!(
        "email\n{}",
        (0..n)
            .map(|i| format!("k{i}@example.com\n"))
            .collect::<String>()
    );
    let mut s = partial_upload(&h, &first);
    let id = wait_for("one committed batch", || {
        let rec = h.get("/api/v1/contacts/import").body["imports"]
            .get(0)
            .cloned()?;
        (rec["records_committed"].as_u64()? >= BATCH_ROWS as u64)
            .then(|| rec["id"].as_u64().unwrap())
    });
    // An import's batches before its last commit without an fsync
    // (`WriteTables::sync_later`) until the writer idles, a moment after;
    // a kill in that moment would roll the batch back with its progress
    // (consistent, but not what this test is about). An acknowledged write
    // is synced, and with it every commit before it.
    h.field("synced", "text");
    h.kill9();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    h.restart();
    let rec = h.get(&format!("/api/v1/contacts/import/{id}")).body;
    assert_eq!(
        (rec["status"].as_str(), rec["records_committed"].as_u64()),
        (Some("interrupted"), Some(BATCH_ROWS as u64)),
        "{rec}"
    );
    assert!(
        h.log().contains("resume them with ?resume=ID"),
        "{}",
        h.log()
    );
    let all = format!(
        "email\n{}",
        (0..2 * BATCH_ROWS)
            .map(|i| format!("k{i}@example.com\n"))
            .collect::<String>()
    );
    let r = h.post_csv(&format!("/api/v1/contacts/import?resume={id}"), &all);
    let total = 2 * BATCH_ROWS as u64;
    assert_eq!(
        (
            r.body["created"].as_u64(),
            r.body["records_committed"].as_u64()
        ),
        (Some(total), Some(total)),
        "{r:?}"
    );
}
