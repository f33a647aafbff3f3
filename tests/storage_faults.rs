//! Storage faults through the real binary: the store on a small tmpfs that
//! fills up (an I/O error: `No space left on device`), the free-space
//! reserve, and a store that cannot be re-opened.
//!
//! - A full disk: writes answer 503 `storage_unavailable` with
//!   `Retry-After`, `/healthz` and `/readyz` answer 503, clicks still
//!   redirect and opens still get their pixel (counted as `hits_dropped`),
//!   an unsubscribe says to try again, a large body is read before the
//!   answer; once the tmpfs is made larger (`mount -o remount,size=…`)
//!   reads and writes work again within seconds, without a restart, with
//!   every acknowledged write present and nothing refused stored.
//! - A reserve above the free space refuses imports, event batches and
//!   campaign starts (507) but records hits and unsubscribes.
//! - Re-opening failing past `unavailable_exit_after` ends the daemon with
//!   a non-zero exit code.
//! - An answer given before the body was read reaches a client still
//!   sending it (the body is drained), and one waiting for `100 Continue`
//!   gets it at once with the connection closed.
//!
//! Mounting needs root (`scripts/test` runs as root); without it the tmpfs
//! tests say so and skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::peers::{Sink, tokens};
use common::ui::UiSession;
use common::{Herald, send_news, wait_until, write};
use serde_json::{Value, json};

const NEWS_HTML: &str = r#"<html><body>
<p>Hello {{ contact.email }}</p>
<p><a href="https://shop.example/sale">The sale</a> and <a href="https://shop.example/new">what is new</a>.</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"#;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mb` MiB on `dir`; `None` (after saying why) when
    /// this process cannot mount.
    fn mount(dir: &Path, mb: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs (needs root; scripts/test runs as root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn resize(&self, mb: u64) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={mb}m")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "remount failed");
    }

    /// Fills the filesystem, leaving about `room` bytes free.
    fn fill(&self, room: u64) {
        let free = free_bytes(&self.dir);
        let n = free.saturating_sub(room);
        let f = std::fs::File::create(self.dir.join("filler")).unwrap();
        // Written, not sparse: tmpfs counts only pages in use.
        use std::io::Write as _;
        let mut w = std::io::BufWriter::new(f);
        let chunk = vec![7u8; 1 << 16];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            if w.write_all(&chunk[..k]).is_err() {
                break;
            }
            left -= k as u64;
        }
        let _ = w.flush();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

/// Config and templates in `dir`, the store in `dir/data`, mail relayed to
/// `sink`; `storage` goes into `[storage]`.
fn setup(dir: &Path, sink: &Sink, storage: &str) -> PathBuf {
    let t = dir.join("templates");
    write(
        &t,
        "news/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\nkind = \"marketing\"\n[subject]\nen = \"News\"\n",
    );
    write(&t, "news/body.en.html", NEWS_HTML);
    let config = dir.join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\n\
[storage]\npath = \"data\"\n{storage}\n\
[admin]\ntoken = \"{}\"\n[tracking]\nsecret = \"{}\"\nscanner_window = \"1ms\"\n[log]\nlevel = \"info\"\n\
[paths]\ntemplates = \"templates\"\n\
[[site]]\nid = \"shop\"\nname = \"Example Shop\"\nurl = \"https://shop.example\"\ncurrency = \"EUR\"\n\
[[sender]]\nid = \"newsletter\"\nfrom = \"Shop <news@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
            common::TOKEN,
            common::TRACKING_SECRET,
            sink.port
        ),
    )
    .unwrap();
    config
}

fn click(h: &Herald, file: &Path, link: usize) -> common::Reply {
    let t = tokens(file, "c")[link].clone();
    h.public("GET", &format!("/c/{t}"), &[], None)
}

/// RFC 8058 one-click unsubscribe with token `u`.
fn one_click(h: &Herald, u: &str) -> common::Reply {
    h.public(
        "POST",
        &format!("/u/{u}"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"List-Unsubscribe=One-Click"),
    )
}

fn metric(h: &Herald, line_start: &str) -> Option<f64> {
    let r = h.get("/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    r.body
        .as_str()
        .unwrap_or("")
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A contact with a 4 KB note, so that a few hundred fill a megabyte.
fn contact(i: usize) -> Value {
    json!({"email": format!("fill{i:05}@example.test"), "consent": "granted",
        "fields": {"note": "x".repeat(4000)}})
}

/// A batch with one customer event that makes contact `fill{i}`.
fn customer_event(i: usize) -> Value {
    json!([{"type": "customer", "id": format!("cust-{i}"), "at": "2026-01-01T00:00:00Z",
        "email": format!("fill{i:05}@example.test"), "first_name": "y".repeat(3000)}])
}

#[test]
fn a_full_disk_answers_503_serves_recipients_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("data"), 48) else {
        return;
    };
    let sink = Sink::start(&[]);
    let config = setup(
        dir.path(),
        &sink,
        "reserve_mb = 0\nreserve_percent = 0\ncache_mb = 8",
    );
    let h = Herald::start_in(dir, config);
    h.field("note", "text");
    h.granted_contacts(10);
    let (id, files) = send_news(&h, &sink, 10, json!({}));
    // One click and one open recorded before the fault.
    assert_eq!(click(&h, &files[0].1, 0).status, 302);
    let o = tokens(&files[0].1, "o")[0].clone();
    assert_eq!(h.public("GET", &format!("/o/{o}"), &[], None).status, 200);

    // Fill the disk until the store fails.
    fs.fill(256 << 10);
    // Contacts one by one and customer events in batches, alternately,
    // until a write fails and the store stays unavailable (a re-open may
    // succeed while the file still has free pages inside; writes then fail
    // again until it has none).
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    let mut first = None;
    for i in 0..5000 {
        let r = if i % 2 == 0 {
            h.post_json("/api/v1/contacts", contact(i))
        } else {
            h.post_json("/api/v1/events", customer_event(i))
        };
        match r.status {
            200 | 201 => {
                assert!(i % 2 == 0 || r.body["accepted"] == 1, "{}", r.body);
                acknowledged.push(i);
            }
            503 => {
                // A write whose commit failed while the store stays down
                // may or may not be stored, and says so; the others were
                // refused and must not be.
                let unknown = r.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("unknown"));
                if !unknown {
                    refused.push(i);
                }
                first.get_or_insert(r);
                if h.get("/healthz").status == 503 {
                    break;
                }
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    let r = first.expect("the full disk never failed a write");
    assert_eq!(r.body["error"]["code"], "storage_unavailable", "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the store is unavailable")
            || r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("unknown"),
        "{}",
        r.body
    );
    assert!(r.header("retry-after").is_some(), "{r:?}");

    // While the disk is full the store stays unavailable: re-opening needs
    // room to write.
    let hz = h.get("/healthz");
    assert_eq!(hz.status, 503, "{hz:?}");
    assert_eq!(hz.body["status"], "unavailable", "{}", hz.body);
    assert!(hz.body["error"].as_str().is_some(), "{}", hz.body);
    assert_eq!(h.get("/readyz").status, 503);
    let w = h.post_json("/api/v1/contacts", contact(90_000));
    assert_eq!(w.status, 503, "{}", w.body);

    // Recipients first: a click on a link never clicked before still
    // redirects, an open gets its pixel; both counted as dropped.
    let c = click(&h, &files[1].1, 1);
    assert_eq!(c.status, 302, "{c:?}");
    assert!(
        c.header("location")
            .unwrap()
            .starts_with("https://shop.example/new"),
        "{c:?}"
    );
    let o2 = tokens(&files[1].1, "o")[0].clone();
    let p = h.public("GET", &format!("/o/{o2}"), &[], None);
    assert_eq!(p.status, 200);
    assert_eq!(p.header("content-type"), Some("image/gif"));
    // An unsubscribe that cannot be stored says so, as a page.
    let u = tokens(&files[2].1, "u")[0].clone();
    let un = one_click(&h, &u);
    assert_eq!(un.status, 503, "{un:?}");
    assert!(
        un.body.as_str().unwrap().contains("try again"),
        "{}",
        un.body
    );
    assert!(metric(&h, "herald_hits_dropped_total").unwrap() >= 2.0);
    assert_eq!(
        metric(&h, "herald_store_state{state=\"unavailable\"}"),
        Some(1.0)
    );
    // A large body (30 MB, more than socket buffers hold) sent meanwhile is
    // read before the answer: the client sees the 503, not a reset
    // connection.
    let mut csv = String::from("email\n");
    for i in 0..1_200_000 {
        csv.push_str(&format!("big{i:07}@example.test\n"));
    }
    let big = h.post_csv("/api/v1/contacts/import?list=news", csv.as_bytes());
    assert_eq!(big.status, 503, "{}", big.body);

    // Room again: the store comes back by itself.
    fs.resize(256);
    wait_until("the store available again", Duration::from_secs(30), || {
        h.get("/healthz").status == 200
    });
    assert_eq!(h.get("/healthz").body["status"], "ok");
    assert_eq!(h.get("/readyz").status, 200);
    let r = h.post_json("/api/v1/contacts", contact(90_001));
    assert!(r.status < 300, "{}", r.body);
    for i in &acknowledged {
        let r = h.get(&format!("/api/v1/contacts/fill{i:05}@example.test"));
        assert_eq!(r.status, 200, "acknowledged contact {i} lost: {}", r.body);
    }
    for i in refused.iter().copied().chain([90_000]) {
        let r = h.get(&format!("/api/v1/contacts/fill{i:05}@example.test"));
        assert_eq!(r.status, 404, "refused contact {i} was stored: {}", r.body);
    }
    // The hits recorded before the fault are counted, the dropped ones not.
    let rep = h.get(&format!("/api/v1/reports/campaigns/{id}")).body;
    assert_eq!(rep["totals"]["clicks_total"], 1, "{rep}");
    assert_eq!(rep["totals"]["opens_total"], 1, "{rep}");
    assert_eq!(rep["totals"]["unsubscribes"], 0, "{rep}");
    // And the unsubscribe goes through now.
    let un = one_click(&h, &u);
    assert_eq!(un.status, 200, "{un:?}");
    assert!(metric(&h, "herald_store_reopens").unwrap() >= 1.0);
    assert!(h.log().contains("store: available again"), "{}", h.log());
}

#[test]
fn a_reserve_above_the_free_space_refuses_bulk_intake_but_records_hits() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(&[]);
    let config = setup(dir.path(), &sink, "reserve_mb = 0\nreserve_percent = 0");
    let h = Herald::start_in(dir, config.clone());
    h.granted_contacts(5);
    let (id, files) = send_news(&h, &sink, 5, json!({}));
    let r = h.post_json(
        "/api/v1/campaigns",
        json!({"name": "Second", "template": "news", "audience": {"lists": ["news"]}}),
    );
    let second = r.body["id"].as_u64().unwrap();

    // A reserve no disk here has: low on space.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("reserve_mb = 0", "reserve_mb = 1000000000"),
    )
    .unwrap();
    h.hup();
    wait_until("low_space", Duration::from_secs(10), || {
        h.get("/healthz").body["status"] == "low_space"
    });
    let hz = h.get("/healthz");
    assert_eq!(hz.status, 200, "low space still takes writes: {hz:?}");
    assert!(hz.body["reserve_bytes"].as_u64().unwrap() > hz.body["free_bytes"].as_u64().unwrap());
    assert_eq!(
        metric(&h, "herald_store_state{state=\"low_space\"}"),
        Some(1.0)
    );
    assert!(metric(&h, "herald_store_free_bytes").unwrap() > 0.0);
    // The admin UI says so on every page.
    let ui = UiSession::new(&h, "ops", "admin");
    let page = ui.get("/admin/campaigns");
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("low on space") && page.text().contains("campaign sends wait"),
        "{}",
        page.text()
    );

    // Bulk intake is refused…
    let imp = h.post_csv(
        "/api/v1/contacts/import?list=news&consent=granted",
        "email\nlate@example.test\n",
    );
    assert_eq!(imp.status, 507, "{}", imp.body);
    assert_eq!(imp.body["error"]["code"], "insufficient_storage");
    assert!(imp.header("retry-after").is_some());
    let ev = h.post_json(
        "/api/v1/events",
        json!([{"type": "customer", "id": "c-late", "at": "2026-01-01T00:00:00Z", "email": "late@example.test"}]),
    );
    assert_eq!(ev.status, 507, "{}", ev.body);
    let st = h.post_json(&format!("/api/v1/campaigns/{second}/start"), json!({}));
    assert_eq!(st.status, 507, "{}", st.body);
    assert_eq!(
        h.get(&format!("/api/v1/campaigns/{second}")).body["status"],
        "draft"
    );

    // …the writes that must not be lost go on: hits, unsubscribes.
    assert_eq!(click(&h, &files[0].1, 0).status, 302);
    let o = tokens(&files[1].1, "o")[0].clone();
    assert_eq!(h.public("GET", &format!("/o/{o}"), &[], None).status, 200);
    let u = tokens(&files[2].1, "u")[0].clone();
    let un = one_click(&h, &u);
    assert_eq!(un.status, 200, "{un:?}");
    let rep = h.get(&format!("/api/v1/reports/campaigns/{id}")).body;
    assert_eq!(rep["totals"]["clicks_total"], 1, "{rep}");
    assert_eq!(rep["totals"]["opens_total"], 1, "{rep}");
    assert_eq!(rep["totals"]["unsubscribes"], 1, "{rep}");
    assert_eq!(metric(&h, "herald_hits_dropped_total"), Some(0.0));
    assert!(h.log().contains("low on disk space"), "{}", h.log());

    // Room again (the reserve lowered): intake is taken.
    std::fs::write(&config, text).unwrap();
    h.hup();
    wait_until("ok", Duration::from_secs(10), || {
        h.get("/healthz").body["status"] == "ok"
    });
    let imp = h.post_csv(
        "/api/v1/contacts/import?list=news&consent=granted",
        "email\nlate@example.test\n",
    );
    assert!(imp.status < 300, "{}", imp.body);
}

#[test]
fn a_store_that_cannot_be_reopened_ends_the_daemon_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("data"), 24) else {
        return;
    };
    let sink = Sink::start(&[]);
    let config = setup(
        dir.path(),
        &sink,
        "reserve_mb = 0\nreserve_percent = 0\ncache_mb = 8\nunavailable_exit_after = \"3s\"",
    );
    let mut h = Herald::start_in(dir, config);
    h.field("note", "text");
    fs.fill(256 << 10);
    let data = fs.dir.clone();
    // The file goes away (the daemon writes on through its descriptor):
    // once a write fails, nothing can re-open it — and a re-open must
    // never start a new, empty store in its place.
    std::fs::rename(data.join("herald.redb"), data.join("moved.redb")).unwrap();
    let mut moved = false;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    for i in 0..20_000 {
        if !h.running() {
            break;
        }
        // The daemon may exit under this request.
        let Ok(r) = agent
            .post(h.url("/api/v1/contacts"))
            .header("Authorization", format!("Bearer {}", common::TOKEN))
            .header("Content-Type", "application/json")
            .send(contact(i).to_string())
        else {
            break;
        };
        if r.status() == 503 && !moved {
            // Room again: only the missing file keeps the store from
            // re-opening.
            fs.resize(64);
            moved = true;
        }
        if moved {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(moved, "the full disk never failed a write");
    let code = h.wait_exit(Duration::from_secs(60));
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
    assert!(
        !data.join("herald.redb").exists(),
        "a new store was created in place of the missing one"
    );
    assert!(h.log().contains("could not be re-opened"), "{}", h.log());
}

/// An answer given before the body was read (a wrong token here) still
/// reaches a client that is sending a large body, and the connection stays
/// usable; a client waiting for `100 Continue` gets the answer at once and
/// the connection is closed instead of its body being asked for.
#[test]
fn an_early_answer_reaches_a_client_still_sending() {
    use std::io::{BufRead, BufReader, Read, Write};
    let h = Herald::start();
    let body = vec![b'x'; 20 << 20];
    let mut s = std::net::TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /api/v1/contacts/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-0123456789abcdef\r\nContent-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The whole body goes out (a reset would fail this write).
    s.write_all(&body).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut rest = vec![0u8; len];
    r.read_exact(&mut rest).unwrap();
    // Kept alive: the next request on the same connection is answered.
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut next = String::new();
    r.read_line(&mut next).unwrap();
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");

    // Expect: 100-continue, body never sent: answered at once, closed.
    let mut s = std::net::TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /api/v1/contacts/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-0123456789abcdef\r\nContent-Type: text/csv\r\nContent-Length: 10485760\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}
