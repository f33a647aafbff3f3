//! Input that used to get through unchecked (issue 17, items 11, 12, 13, 15
//! and 16), each through the real binary: durations past any sane bound,
//! event times in the year 9999, a CSV record that never ends, a campaign
//! subject that cannot render, and bare CRs and control characters in API
//! messages (delivered to a real smtp-sink and read back from its dump).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::peers::{Sink, message_of};
use common::{Herald, TOKEN};
use serde_json::{Value, json};

use common::write;

/// A daemon with a marketing template `news` and a sender relaying to
/// `port` (no DKIM keys: the tests read what arrives, not signatures).
fn start(port: u16) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    write(
        &t,
        "news/template.toml",
        "sender = \"shop\"\ndefault_language = \"en\"\nkind = \"marketing\"\n[subject]\nen = \"News\"\n",
    );
    write(
        &t,
        "news/body.en.html",
        "<p>Hello {{ contact.email }}</p>\n<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>\n",
    );
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        common::config_text(
            &dir.path().join("data"),
            &format!(
                "[paths]\ntemplates = \"templates\"\n[[sender]]\nid = \"shop\"\nfrom = \"Shop <news@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n"
            ),
        ),
    )
    .unwrap();
    Herald::start_in(dir, config)
}

fn error_message(r: &common::Reply) -> String {
    r.body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Item 11: a stage delay or A/B window past ten years is refused with 422
/// naming the key (it used to wrap `as i64` and send the next stage at once).
#[test]
fn durations_past_ten_years_are_refused() {
    let h = start(common::peers::free_port());
    h.list("news");
    let base = json!({"name": "Far", "template": "news", "audience": {"lists": ["news"]}});

    let mut staged = base.clone();
    staged["stages"] = json!([{"after": "999999999999 days"}]);
    let r = h.post_json("/api/v1/campaigns", staged);
    assert_eq!(r.status, 422, "{}", r.body);
    let m = error_message(&r);
    assert!(
        m.contains("stages[0].after") && m.contains("10 years"),
        "{m}"
    );

    let mut ab = base.clone();
    ab["ab"] = json!({"variants": [{"subject": "A"}, {"subject": "B"}], "test_share": 20,
                      "metric": "opens", "window": "999999999999 days"});
    let r = h.post_json("/api/v1/campaigns", ab);
    assert_eq!(r.status, 422, "{}", r.body);
    let m = error_message(&r);
    assert!(m.contains("ab.window") && m.contains("10 years"), "{m}");

    // Just past the bound is refused too; within it is fine.
    let mut eleven = base.clone();
    eleven["stages"] = json!([{"after": "4000 days"}]);
    assert_eq!(h.post_json("/api/v1/campaigns", eleven).status, 422);
    let mut fine = base.clone();
    fine["stages"] = json!([{"after": "3000 days"}]);
    let r = h.post_json("/api/v1/campaigns", fine);
    assert_eq!(r.status, 201, "{}", r.body);

    // Editing a draft is checked the same way.
    let id = r.body["id"].as_u64().unwrap();
    let mut edit = base.clone();
    edit["stages"] = json!([{"after": "999999999999 days"}]);
    let r = h.put(
        &format!("/api/v1/campaigns/{id}"),
        "application/json",
        &edit.to_string(),
    );
    assert_eq!(r.status, 422, "{}", r.body);
}

fn order(id: &str, at: &str, placed_at: Option<&str>, total: &str) -> Value {
    let mut o = json!({"type": "order", "id": id, "at": at, "email": "ann@example.com",
        "order_id": "O-1", "items": [{"sku": "S-1", "quantity": 1, "price": total}],
        "total": total, "currency": "PLN"});
    if let Some(p) = placed_at {
        o["placed_at"] = p.into();
    }
    o
}

/// Item 12: an event time (or an order's `placed_at`) before 1970 or more
/// than a day ahead is rejected for that event alone, with the reason; the
/// order is not frozen by a far-future version, and `last_order` stays real.
#[test]
fn event_times_outside_1970_to_tomorrow_are_rejected_per_event() {
    let h = Herald::start();
    let now = chrono::Utc::now();
    let iso =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let earlier = iso(now - chrono::Duration::hours(2));
    let later = iso(now - chrono::Duration::hours(1));
    let r = h.post_json(
        "/api/v1/events",
        json!([
            order("e-1", &earlier, None, "10.00"),
            order("e-2", "9999-12-31T23:59:59Z", None, "99.00"),
            order("e-3", "1969-12-31T23:59:59Z", None, "99.00"),
            order("e-4", &earlier, Some("9999-12-31T23:59:59Z"), "99.00"),
            {"type": "login", "id": "e-5", "at": iso(now + chrono::Duration::days(3)), "email": "ann@example.com"},
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.body["results"].as_array().unwrap();
    let status: Vec<&str> = results
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        status,
        ["accepted", "rejected", "rejected", "rejected", "rejected"],
        "{}",
        r.body
    );
    let reason = |i: usize| results[i]["reason"].as_str().unwrap().to_string();
    assert!(
        reason(1).contains("`at`") && reason(1).contains("more than a day in the future"),
        "{}",
        reason(1)
    );
    assert!(
        reason(2).contains("`at`") && reason(2).contains("before 1970"),
        "{}",
        reason(2)
    );
    assert!(
        reason(3).contains("`placed_at`") && reason(3).contains("future"),
        "{}",
        reason(3)
    );
    assert!(reason(4).contains("`at`"), "{}", reason(4));

    // A later real version of the order is applied (a year-9999 one would
    // have made it look older), and the contact's figures are real.
    let r = h.post_json(
        "/api/v1/events",
        json!([order("e-6", &later, None, "20.00")]),
    );
    assert_eq!(r.body["results"][0]["status"], "accepted", "{}", r.body);
    assert!(r.body["results"][0]["note"].is_null(), "{}", r.body);
    let c = h.get("/api/v1/contacts/ann@example.com");
    assert_eq!(c.status, 200, "{}", c.body);
    let shop = &c.body["shop"];
    assert_eq!(shop["order_count"], 1, "{shop}");
    let placed = (now - chrono::Duration::hours(2)).date_naive().to_string();
    assert_eq!(shop["last_order"], placed.as_str(), "{shop}");
    assert!(!shop.to_string().contains("9999"), "{shop}");
}

/// The daemon's process id: the `herald` whose command line names `config`.
fn pid_of(config: &Path) -> u32 {
    let want = config.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == &want) && args.iter().any(|a| a == "serve") {
            return pid;
        }
    }
    panic!("no herald process with --config {want}");
}

/// `VmRSS` or `VmHWM` of `pid`, in bytes.
fn vm(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Item 13: a CSV record that never ends (an open quote followed by 300 MiB)
/// stops the import at the record's line once it passes
/// `[import] max_record_bytes`, before it is held in memory: the daemon's
/// peak memory grows by far less than the upload.
#[test]
fn an_endless_csv_record_is_refused_with_its_line_in_bounded_memory() {
    let h = Herald::start();
    let pid = pid_of(&h.config);
    let before = vm(pid, "VmRSS");

    const TOTAL: usize = 300 << 20;
    let head = b"email,note\r\nann@example.com,ok\r\nbob@example.com,\"never closed\n";
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let request = format!(
        "POST /api/v1/contacts/import?create_fields=true HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: text/csv\r\nContent-Length: {TOTAL}\r\n\r\n"
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    // The body streams from its own thread, so the answer can be read
    // while (or instead of) the rest being sent; a write fails once the
    // daemon closes the connection.
    let writer = std::thread::spawn(move || {
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        let chunk: Vec<u8> = line.iter().copied().cycle().take(64 << 10).collect();
        if w.write_all(head).is_err() {
            return 0;
        }
        let mut sent = head.len();
        while sent < TOTAL {
            let n = chunk.len().min(TOTAL - sent);
            if w.write_all(&chunk[..n]).is_err() {
                break;
            }
            sent += n;
        }
        sent
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                // The error body is small: stop once it is complete.
                let text = String::from_utf8_lossy(&answer);
                if let Some((head, body)) = text.split_once("\r\n\r\n")
                    && let Some(len) = head.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .and_then(|v| v.trim().parse::<usize>().ok())
                    })
                    && body.len() >= len
                {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let sent = writer.join().unwrap();
    let peak = vm(pid, "VmHWM");

    let answer = String::from_utf8_lossy(&answer).into_owned();
    // The import is refused, naming the line the endless record starts on
    // (the third), and the record says the same.
    if !answer.is_empty() {
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(
            answer.contains("line 3") && answer.contains("max_record_bytes"),
            "{answer}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let rec = loop {
        let r = h.get("/api/v1/contacts/import");
        let rec = r.body["imports"][0].clone();
        if rec["status"] != "running" || Instant::now() > deadline {
            break rec;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rec["status"], "interrupted", "{rec}");
    let err = rec["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("line 3") && err.contains("longer than 1048576 bytes"),
        "{rec}"
    );
    // The row before it is stored; the daemon is fine.
    assert_eq!(rec["records_committed"], 1, "{rec}");
    assert_eq!(h.get("/api/v1/contacts/ann@example.com").status, 200);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "memory: VmRSS before {} MiB, VmHWM after {} MiB; {} MiB of {} MiB sent; answer {answer:?}",
        before >> 20,
        peak >> 20,
        sent >> 20,
        TOTAL >> 20
    );
    assert!(
        growth < 200 << 20,
        "peak memory grew by {} MiB for a {} MiB upload ({} MiB sent)",
        growth >> 20,
        TOTAL >> 20,
        sent >> 20
    );
}

/// Item 15: a campaign subject that compiles but cannot render (an unknown
/// filter) is refused at create and edit with 422 naming the field, for the
/// campaign's own subject, an A/B variant's and a stage's.
#[test]
fn a_campaign_subject_that_cannot_render_is_refused() {
    let h = start(common::peers::free_port());
    h.list("news");
    let base = json!({"name": "Subj", "template": "news", "audience": {"lists": ["news"]}});

    let mut bad = base.clone();
    bad["subject"] = "Hi {{ contact.email | shout }}".into();
    let r = h.post_json("/api/v1/campaigns", bad.clone());
    assert_eq!(r.status, 422, "{}", r.body);
    let m = error_message(&r);
    assert!(m.starts_with("subject: ") && m.contains("shout"), "{m}");

    let mut ab = base.clone();
    ab["ab"] = json!({"variants": [{"subject": "Fine {{ contact.email }}"},
                                   {"subject": "{{ 1 + 'a' }}"}],
                      "test_share": 20, "metric": "opens", "window": "1h"});
    let r = h.post_json("/api/v1/campaigns", ab);
    assert_eq!(r.status, 422, "{}", r.body);
    let m = error_message(&r);
    assert!(m.contains("ab.variants[1].subject: "), "{m}");
    assert!(!m.contains("ab.variants[0]"), "{m}");

    let mut staged = base.clone();
    staged["stages"] = json!([{"after": "1 day", "subject": "{{ data.x | nope }}"}]);
    let r = h.post_json("/api/v1/campaigns", staged);
    assert_eq!(r.status, 422, "{}", r.body);
    let m = error_message(&r);
    assert!(
        m.contains("stages[0].subject: ") && m.contains("nope"),
        "{m}"
    );

    // A good subject is created; editing it to a bad one is refused.
    let mut good = base.clone();
    good["subject"] = "Hi {{ contact.email | upper }}".into();
    let r = h.post_json("/api/v1/campaigns", good);
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_u64().unwrap();
    let r = h.put(
        &format!("/api/v1/campaigns/{id}"),
        "application/json",
        &bad.to_string(),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(error_message(&r).contains("shout"), "{}", r.body);
}

fn post_message(h: &Herald, body: Value) -> common::Reply {
    h.post_json("/api/v1/messages", body)
}

/// Item 16: bodies with bare CR (and `\r.\r`, which some servers read as the
/// end of DATA) arrive with CRLF line ends, dot-stuffed like any line; NUL
/// and control characters in header values, and headers Herald owns, are
/// refused naming the header; raw messages too.
#[test]
fn bare_cr_and_control_characters_never_reach_the_wire() {
    let sink = Sink::start(&[]);
    let h = start(sink.port);

    // Refused: control characters in header values (named), Herald's and
    // the envelope's headers, a malformed unsubscribe pair, NUL anywhere.
    let msg = |extra: Value| {
        let mut m =
            json!({"sender": "shop", "to": ["ann@example.com"], "subject": "Hi", "text": "x"});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    };
    for (extra, expect) in [
        (json!({"headers": {"X-Note": "a\u{0}b"}}), "X-Note"),
        (json!({"headers": {"X-Note": "a\u{b}b"}}), "X-Note"),
        (json!({"headers": {"X-Note": "a\u{c}b"}}), "X-Note"),
        (json!({"headers": {"X-Note": "a\rb"}}), "X-Note"),
        (json!({"subject": "Hi\u{0}"}), "Subject"),
        (json!({"to_header": "ann@example.com\u{b}"}), "To"),
        (json!({"headers": {"Bcc": "eve@example.com"}}), "Bcc"),
        (json!({"headers": {"Sender": "eve@example.com"}}), "Sender"),
        (
            json!({"headers": {"Return-Path": "<eve@example.com>"}}),
            "Return-Path",
        ),
        (
            json!({"headers": {"DKIM-Signature": "v=1"}}),
            "DKIM-Signature",
        ),
        (
            json!({"headers": {"Content-Disposition": "attachment"}}),
            "Content-Disposition",
        ),
        (json!({"headers": {"X-A": "1", "x-a": "2"}}), "twice"),
        (
            json!({"headers": {"List-Unsubscribe": "https://evil.example"}}),
            "List-Unsubscribe",
        ),
        (
            json!({"headers": {"List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}}),
            "List-Unsubscribe-Post",
        ),
        (json!({"text": "a\u{0}b"}), "NUL"),
        (
            json!({"subject": null, "text": null, "raw": "From: news@shop.example\r\nSubject: x\r\n\r\nnul \u{0} here\r\n"}),
            "NUL",
        ),
        (
            json!({"subject": null, "text": null, "raw": "From: news@shop.example\r\nSubject: a\u{b}b\r\n\r\nbody\r\n"}),
            "control character",
        ),
    ] {
        let mut body = msg(extra);
        body.as_object_mut().unwrap().retain(|_, v| !v.is_null());
        let r = post_message(&h, body.clone());
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        let m = error_message(&r);
        assert!(m.contains(expect), "{body}: {m}");
    }
    // A proper unsubscribe pair is still the caller's to give.
    let r = post_message(
        &h,
        msg(
            json!({"headers": {"List-Unsubscribe": "<https://shop.example/u/1>, <mailto:u@shop.example>",
                               "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}}),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);

    // Accepted and normalised: bare CR and LF in text and HTML, raw too.
    let r = post_message(
        &h,
        json!({"sender": "shop", "to": ["bob@example.com"], "subject": "Parts",
               "text": "one\r.\rtwo\rthree\nfour\r\n", "html": "<p>a</p>\r<p>b</p>\n"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let r = post_message(
        &h,
        json!({"sender": "shop", "to": ["cat@example.com"],
               "raw": "From: news@shop.example\r\nSubject: Raw\r\n\r\nraw one\r.\rraw two\n"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);

    let files = sink.wait_files(3, Duration::from_secs(30));
    let of = |rcpt: &str| {
        files
            .iter()
            .find(|f| common::peers::rcpts_of(f).iter().any(|r| r == rcpt))
            .unwrap_or_else(|| panic!("nothing arrived for {rcpt}"))
            .clone()
    };
    for rcpt in ["bob@example.com", "cat@example.com"] {
        // smtp-sink stores the lines it read (split at CRLF, un-dot-stuffed)
        // and drops bare CRs: `one\r.\rtwo` sent as it is shows as
        // `one.two`. Normalised, the lone dot is a line of its own, which
        // was dot-stuffed in transit (so it did not end the data) and is
        // followed by the rest.
        let text = String::from_utf8_lossy(&message_of(&of(rcpt))).into_owned();
        assert!(
            !text.contains("one.two"),
            "a bare CR reached the wire: {text:?}"
        );
        let lines: Vec<&str> = text.split("\r\n").collect();
        let dot = lines
            .iter()
            .position(|l| *l == ".")
            .unwrap_or_else(|| panic!("no dot line for {rcpt}: {text:?}"));
        assert!(lines[dot - 1].ends_with("one"), "{text:?}");
        assert!(lines[dot + 1].ends_with("two"), "{text:?}");
    }
    let parts = String::from_utf8_lossy(&message_of(&of("bob@example.com"))).into_owned();
    for l in ["three", "four", "<p>a</p>", "<p>b</p>"] {
        assert!(
            parts.split("\r\n").any(|x| x == l),
            "{l} not a line: {parts:?}"
        );
    }
}
