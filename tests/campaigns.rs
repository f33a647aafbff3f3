//! Newsletters through the real binary, real HTTP and a real SMTP peer
//! (Postfix's smtp-sink): the lifecycle, test sends, pause/resume, a reload,
//! an unsubscribe and `kill -9` in the middle of a send, A/B tests and
//! multi-stage campaigns. Every check of "exactly once" counts the messages
//! the sink really received, per recipient.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Herald;
use common::peers::{Sink, rcpts_of, tokens};
use serde_json::{Value, json};

const NEWS_HTML: &str = r#"<html><body>
<p>Hello {{ contact.email }}</p>
<p><a href="https://shop.example/sale">The sale</a> and <a href="https://shop.example/new">what is new</a>.</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"#;

use common::write;

/// A daemon whose sender relays to `sink`, with two marketing templates
/// (`news`, `news_b`) and a transactional one.
fn start(sink: &Sink, extra: &str) -> Herald {
    start_port(sink.port, extra)
}

fn start_port(port: u16, extra: &str) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    for (name, subject) in [
        ("news", "News of the week"),
        ("news_b", "Our picks for you"),
    ] {
        write(
            &t,
            &format!("{name}/template.toml"),
            &format!(
                "sender = \"newsletter\"\ndefault_language = \"en\"\nkind = \"marketing\"\n[subject]\nen = \"{subject}\"\n"
            ),
        );
        write(&t, &format!("{name}/body.en.html"), NEWS_HTML);
    }
    write(
        &t,
        "receipt/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\nkind = \"transactional\"\n[subject]\nen = \"Receipt\"\n",
    );
    write(&t, "receipt/body.en.html", "<p>Thanks</p>\n");
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        common::config_text(
            &dir.path().join("data"),
            &format!(
                "[paths]\ntemplates = \"templates\"\n{extra}\n[[sender]]\nid = \"newsletter\"\nfrom = \"Shop <news@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n"
            ),
        ),
    )
    .unwrap();
    Herald::start_in(dir, config)
}

fn create(h: &Herald, spec: Value) -> u64 {
    let r = h.post_json("/api/v1/campaigns", spec);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "draft");
    r.body["id"].as_u64().unwrap()
}

fn act(h: &Herald, id: u64, action: &str) -> Value {
    let r = h.post_json(&format!("/api/v1/campaigns/{id}/{action}"), json!({}));
    assert_eq!(r.status, 200, "{action}: {}", r.body);
    r.body
}

fn campaign(h: &Herald, id: u64) -> Value {
    let r = h.get(&format!("/api/v1/campaigns/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn wait_for(
    h: &Herald,
    id: u64,
    what: &str,
    within: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let c = campaign(h, id);
        if ok(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "campaign {id}: waited for {what}; now {}\n{}",
            serde_json::to_string_pretty(&c).unwrap(),
            h.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn completed(h: &Herald, id: u64, within: Duration) -> Value {
    wait_for(h, id, "completed", within, |c| c["status"] == "completed")
}

/// Recipients the sink received mail for, with how many copies, and the
/// subject of each file (only this campaign's mail: its Message-IDs carry
/// the send).
/// (recipient, subject, sink file) of every message received.
type Files = Vec<(String, String, PathBuf)>;

fn received(sink: &Sink) -> (BTreeMap<String, usize>, Files) {
    let mut counts = BTreeMap::new();
    let mut files = Vec::new();
    for f in sink.files() {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_string();
        for r in rcpts_of(&f) {
            *counts.entry(r.clone()).or_insert(0) += 1;
            files.push((r, subject.clone(), f.clone()));
        }
    }
    (counts, files)
}

fn spec(name: &str) -> Value {
    json!({"name": name, "template": "news", "audience": {"lists": ["news"]}})
}

fn settle(sink: &Sink, n: usize) {
    sink.wait_files(n, Duration::from_secs(60));
    // Nothing more arrives.
    std::thread::sleep(Duration::from_millis(500));
}

/// Create, check, edit, test-send, start, complete; read-only afterwards;
/// duplicate; the audience takes only granted contacts minus exclusions.
#[test]
fn lifecycle_reaches_every_granted_contact_exactly_once() {
    let sink = Sink::start(&[]);
    let h = start(&sink, "");
    h.granted_contacts(60);
    // Not granted: never mailed, whatever the list says.
    for (email, consent) in [
        ("pend@example.test", "pending"),
        ("gone@example.test", "withdrawn"),
        ("unk@example.test", "unknown"),
    ] {
        let r = h.post_json(
            "/api/v1/contacts",
            json!({"email": email, "consent": consent, "lists": ["news"]}),
        );
        assert!(r.status < 300, "{}", r.body);
    }
    // Excluded by a list.
    h.list("vip");
    for i in [3, 4] {
        let r = h.patch_json(
            &format!("/api/v1/contacts/c{i:04}@example.test"),
            json!({"add_lists": ["vip"]}),
        );
        assert!(r.status < 300, "{}", r.body);
    }

    // Problems are named, all at once.
    let r = h.post_json("/api/v1/campaigns", json!({"name": "", "template": "nope", "audience": {"lists": ["nolist"], "segments": ["noseg"]}, "ab": {"variants": [{"subject": "x"}], "test_share": 120, "metric": "opens", "window": "soon"}}));
    assert_eq!(r.status, 422, "{}", r.body);
    let msg = r.body["error"]["message"].as_str().unwrap().to_string();
    for part in [
        "name: must not be empty",
        "ab.variants: 1 variants",
        "ab.test_share",
        "ab.window",
        "template `nope` does not exist",
        "no list `nolist`",
        "no segment `noseg`",
    ] {
        assert!(msg.contains(part), "`{part}` not in: {msg}");
    }
    let r = h.post_json(
        "/api/v1/campaigns",
        json!({"name": "x", "template": "receipt", "audience": {"lists": ["news"]}}),
    );
    assert_eq!(r.status, 422);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("transactional")
    );
    let r = h.post_json(
        "/api/v1/campaigns",
        json!({"name": "x", "template": "news", "audience": {"lists": ["news"]}, "colour": "red"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    let id = create(&h, spec("November news"));
    let r = h.put(
        &format!("/api/v1/campaigns/{id}"),
        "application/json",
        &json!({"name": "November news", "template": "news", "subject": "November: {{ contact.email }}",
                "audience": {"lists": ["news"], "exclude_lists": ["vip"]}, "tags_after": ["got-november"],
                "cost_per_message": 0.01}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        h.get("/api/v1/campaigns?status=draft").body["campaigns"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        h.get("/api/v1/campaigns?status=running").body["campaigns"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        h.get(&format!("/api/v1/campaigns?number={id}")).body["campaigns"][0]["id"],
        id
    );
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(
        h.get(&format!("/api/v1/campaigns?from={today}&to={today}"))
            .body["campaigns"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        h.get("/api/v1/campaigns?to=2020-01-01").body["campaigns"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // A test send: real delivery, not counted, and the campaign stays a draft.
    let r = h.post_json(
        &format!("/api/v1/campaigns/{id}/test"),
        json!({"addresses": ["seed@example.test", "c0001@example.test"]}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    settle(&sink, 2);
    let (counts, files) = received(&sink);
    assert_eq!(counts.get("seed@example.test"), Some(&1));
    assert!(
        files
            .iter()
            .any(|(r, s, _)| r == "c0001@example.test" && s == "November: c0001@example.test"),
        "{files:?}"
    );
    let c = campaign(&h, id);
    assert_eq!(c["status"], "draft");
    assert_eq!(c["progress"]["queued"], 0);
    assert_eq!(c["progress"]["delivered"], 0);
    let before = sink.files().len();

    let c = act(&h, id, "start");
    assert_eq!(c["status"], "running");
    assert_eq!(c["progress"]["audience"], 58, "60 granted minus 2 excluded");
    let r = h.put(
        &format!("/api/v1/campaigns/{id}"),
        "application/json",
        &spec("again").to_string(),
    );
    assert_eq!(r.status, 409, "no edits once started: {}", r.body);
    let c = completed(&h, id, Duration::from_secs(60));
    assert_eq!(c["progress"]["queued"], 58);
    assert_eq!(c["progress"]["delivered"], 58);
    assert_eq!(c["progress"]["failed"], 0);
    assert_eq!(c["progress"]["in_queue"], 0);
    assert!(c["finished"].is_string());
    settle(&sink, before + 58);
    let (counts, _) = received(&sink);
    for i in 0..60 {
        let a = format!("c{i:04}@example.test");
        let want = match i {
            3 | 4 => 0,
            1 => 2, // the test copy too
            _ => 1,
        };
        assert_eq!(counts.get(&a).copied().unwrap_or(0), want, "{a}");
    }
    for a in ["pend@example.test", "gone@example.test", "unk@example.test"] {
        assert!(!counts.contains_key(a), "{a} must get nothing");
    }
    // Tags after sending.
    let tags = &h.get("/api/v1/contacts/c0000@example.test").body["tags"];
    assert!(tags.to_string().contains("got-november"), "{tags}");
    assert!(
        !h.get("/api/v1/contacts/c0003@example.test").body["tags"]
            .to_string()
            .contains("got-november")
    );

    // Completed is read-only; duplicate makes a new draft.
    for a in ["start", "pause", "resume", "cancel"] {
        let r = h.post_json(&format!("/api/v1/campaigns/{id}/{a}"), json!({}));
        assert_eq!(r.status, 409, "{a}: {}", r.body);
    }
    assert_eq!(h.delete(&format!("/api/v1/campaigns/{id}")).status, 409);
    let r = h.post_json(&format!("/api/v1/campaigns/{id}/duplicate"), json!({}));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "draft");
    assert_eq!(r.body["name"], "November news (copy)");
    let copy = r.body["id"].as_u64().unwrap();
    assert!(copy > id);
    assert_eq!(h.delete(&format!("/api/v1/campaigns/{copy}")).status, 200);

    // The CLI reads the same API.
    let api = format!("http://{}", h.addr);
    let (code, out, err) = common::run(
        &h.config,
        &["campaign", "--api", &api, "status", &id.to_string()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("completed") && out.contains("delivered 58"),
        "{out}"
    );
    let (code, out, err) = common::run(
        &h.config,
        &["campaign", "--api", &api, "list", "--status", "completed"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("November news"), "{out}");
}

/// CLI create from a TOML file, start, pause mid-send, resume, reload the
/// config mid-send, unsubscribe a contact mid-send, SIGTERM and start again
/// mid-send: nobody twice, nobody skipped but the one who left.
#[test]
fn pause_resume_reload_and_unsubscribe_mid_send() {
    let sink = Sink::start(&[]);
    let mut h = start(&sink, "");
    let ids = h.granted_contacts(150);
    let spec_file = h.dir.path().join("spring.toml");
    std::fs::write(
        &spec_file,
        "name = \"Spring\"\ntemplate = \"news\"\nrate_per_hour = 72000\n[audience]\nlists = [\"news\"]\n",
    )
    .unwrap();
    let api = format!("http://{}", h.addr);
    let (code, out, err) = common::run(
        &h.config,
        &[
            "campaign",
            "--api",
            &api,
            "create",
            spec_file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("draft"), "{out}");
    let id = h.get("/api/v1/campaigns").body["campaigns"][0]["id"]
        .as_u64()
        .unwrap();
    let (code, _, err) = common::run(
        &h.config,
        &["campaign", "--api", &api, "start", &id.to_string()],
    );
    assert_eq!(code, 0, "{err}");

    // 20 per second: pause after a few batches.
    wait_for(&h, id, "some queued", Duration::from_secs(30), |c| {
        c["progress"]["queued"].as_u64().unwrap() >= 20
    });
    let (code, out, err) = common::run(
        &h.config,
        &["campaign", "--api", &api, "pause", &id.to_string()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("paused"), "{out}");
    let at_pause = campaign(&h, id)["progress"]["queued"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let c = campaign(&h, id);
    assert_eq!(c["status"], "paused");
    assert_eq!(
        c["progress"]["queued"].as_u64().unwrap(),
        at_pause,
        "nothing queued after the pause"
    );
    assert!(at_pause < 150);

    // The last contact unsubscribes while the campaign waits.
    let last = ids[149];
    let r = h.post_json(
        &format!("/api/v1/contacts/{last}/consent"),
        json!({"state": "withdrawn"}),
    );
    assert!(r.status < 300, "{}", r.body);

    act(&h, id, "resume");
    wait_for(&h, id, "more queued", Duration::from_secs(30), |c| {
        c["progress"]["queued"].as_u64().unwrap() >= at_pause + 20
    });
    h.hup();
    wait_for(&h, id, "more queued", Duration::from_secs(30), |c| {
        c["progress"]["queued"].as_u64().unwrap() >= at_pause + 40
    });
    assert!(h.log().contains("configuration reloaded"), "{}", h.log());
    // A clean stop in the middle, and a start: it goes on where it was.
    assert_eq!(h.stop(), Some(0));
    let mid = sink.files().len();
    h.restart();
    let c = completed(&h, id, Duration::from_secs(60));
    assert!(mid < 149, "the stop came too late to test anything ({mid})");
    assert_eq!(c["progress"]["queued"], 149);
    assert_eq!(c["progress"]["skipped"], 1);
    settle(&sink, 149);
    let (counts, _) = received(&sink);
    assert_eq!(counts.len(), 149);
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "duplicates after pause/resume/reload: {dups:?}"
    );
    assert!(
        !counts.contains_key("c0149@example.test"),
        "the unsubscribed contact got mail"
    );
}

/// `kill -9` in the middle of a send, then a restart: every contact gets
/// the newsletter; duplicates are only messages that were on the wire at
/// the kill (reported), at most one per open connection.
#[test]
fn kill_9_mid_send_resumes_without_skipping() {
    let sink = Sink::start(&[]);
    let mut h = start(&sink, "");
    h.granted_contacts(400);
    let id = create(
        &h,
        json!({"name": "Crash", "template": "news", "audience": {"lists": ["news"]}, "rate_per_hour": 360000}),
    );
    act(&h, id, "start");
    wait_for(&h, id, "some delivered", Duration::from_secs(30), |c| {
        c["progress"]["delivered"].as_u64().unwrap() >= 50
    });
    h.kill9();
    let before = sink.files().len();
    assert!(
        before < 400,
        "the kill came too late to test anything ({before})"
    );
    h.restart();
    let c = completed(&h, id, Duration::from_secs(120));
    assert_eq!(c["progress"]["queued"], 400, "{c}");
    settle(&sink, 400);
    let (counts, _) = received(&sink);
    assert_eq!(counts.len(), 400, "every contact got it");
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "kill -9 mid-send: {} contacts got a second copy (in flight at the kill): {dups:?}",
        dups.len()
    );
    // Delivery uses at most 20 connections to the relay (the default), one
    // transaction in flight on each.
    assert!(dups.len() <= 20, "{dups:?}");
    assert!(counts.values().all(|n| *n <= 2));
}

/// A cancelled campaign sends nothing more and cannot be restarted.
#[test]
fn cancel_stops_sending() {
    let sink = Sink::start(&[]);
    let h = start(&sink, "");
    h.granted_contacts(100);
    let id = create(
        &h,
        json!({"name": "Oops", "template": "news", "audience": {"lists": ["news"]}, "rate_per_hour": 36000}),
    );
    act(&h, id, "start");
    wait_for(&h, id, "some queued", Duration::from_secs(30), |c| {
        c["progress"]["queued"].as_u64().unwrap() >= 5
    });
    let c = act(&h, id, "cancel");
    assert_eq!(c["status"], "cancelled");
    let queued = campaign(&h, id)["progress"]["queued"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let c = campaign(&h, id);
    assert_eq!(c["progress"]["queued"].as_u64().unwrap(), queued);
    assert!(queued < 100);
    let r = h.post_json(&format!("/api/v1/campaigns/{id}/start"), json!({}));
    assert_eq!(r.status, 409);
    std::thread::sleep(Duration::from_millis(500));
    assert!(sink.files().len() as u64 <= queued);
}

/// A scheduled campaign starts by itself at its time.
#[test]
fn scheduled_campaign_starts_at_its_time() {
    let sink = Sink::start(&[]);
    let h = start(&sink, "");
    h.granted_contacts(5);
    let id = create(&h, spec("Later"));
    let at = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let r = h.post_json(
        &format!("/api/v1/campaigns/{id}/schedule"),
        json!({"at": at}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "scheduled");
    assert_eq!(campaign(&h, id)["progress"]["queued"], 0);
    completed(&h, id, Duration::from_secs(30));
    settle(&sink, 5);
}

/// A/B: a seeded split of the test share, the winner chosen from recorded
/// clicks when the window ends, and the rest sent only the winner.
#[test]
fn ab_test_sends_the_winner_to_the_rest() {
    let sink = Sink::start(&[]);
    let h = start(&sink, "");
    h.granted_contacts(100);
    let ab = |seed: u64, auto: bool| {
        json!({"name": "AB", "template": "news", "audience": {"lists": ["news"]},
               "ab": {"variants": [{"subject": "Subject A"}, {"name": "Bee", "subject": "Subject B", "template": "news_b"}],
                      "test_share": 40, "metric": "clicks", "window": "3s", "seed": seed, "auto": auto}})
    };
    let id = create(&h, ab(7, true));
    let c = act(&h, id, "start");
    let parts = c["parts"].as_array().unwrap();
    let sizes: Vec<u64> = parts.iter().map(|p| p["size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, vec![20, 20, 60], "{c}");
    assert_eq!(c["ab"]["seed"], 7);
    settle(&sink, 40);
    let (_, files) = received(&sink);
    let with = |s: &str| {
        files
            .iter()
            .filter(|(_, subj, _)| subj == s)
            .cloned()
            .collect::<Vec<_>>()
    };
    let (a, b) = (with("Subject A"), with("Subject B"));
    assert_eq!((a.len(), b.len()), (20, 20));
    // Clicks: 6 B recipients click (one twice), 2 A recipients click.
    let click = |f: &Path| {
        let t = tokens(f, "c");
        assert!(!t.is_empty(), "no tracked link in {}", f.display());
        let r = h.get_noauth(&format!("/c/{}", t[0]), None);
        assert_eq!(r.status, 302, "{r:?}");
        let loc = r.header("location").unwrap().to_string();
        assert!(loc.starts_with("https://shop.example/sale?hrl="), "{loc}");
        loc.split("hrl=").nth(1).unwrap().to_string()
    };
    let mut hrl = String::new();
    for (_, _, f) in b.iter().take(6) {
        hrl = click(f);
    }
    // The shop brings the attribution value back with an order.
    let r = h.post_json(
        "/api/v1/events",
        json!([{"type": "order", "id": "o-ab-1", "at": "2026-11-20T10:00:00Z", "email": b[5].0,
                "order_id": "ab-1", "items": [{"sku": "X", "quantity": 1, "price": "120.50"}],
                "total": "120.50", "currency": "EUR", "attribution": hrl},
               {"type": "order", "id": "o-ab-2", "at": "2026-11-20T10:00:00Z", "email": b[4].0,
                "order_id": "ab-2", "items": [{"sku": "X", "quantity": 1, "price": "9"}],
                "total": "9", "currency": "EUR", "attribution": "forged"}]),
    );
    assert_eq!(r.body["accepted"], 2, "{}", r.body);
    click(&b[0].2);
    for (_, _, f) in a.iter().take(2) {
        click(f);
    }
    // A HEAD is not a click; a forged token goes nowhere.
    let t = tokens(&a[5].2, "c")[0].clone();
    let r = h.get_noauth(&format!("/c/{t}x"), None);
    assert_eq!(r.status, 404);
    let c = wait_for(&h, id, "the winner", Duration::from_secs(30), |c| {
        c["ab"]["winner"].is_number()
    });
    assert_eq!(c["ab"]["winner"], 1, "{c}");
    assert_eq!(c["ab"]["winner_name"], "Bee");
    let reason = c["ab"]["winner_reason"].as_str().unwrap();
    assert!(
        reason.contains("Bee 30.0% (6/20)") && reason.contains("A 10.0% (2/20)"),
        "{reason}"
    );
    let c = completed(&h, id, Duration::from_secs(60));
    let p = &c["parts"];
    assert_eq!(p[0]["counts"]["unique_clicks"], 2);
    assert_eq!(p[1]["counts"]["unique_clicks"], 6);
    assert_eq!(p[1]["counts"]["clicks"], 7);
    assert_eq!(p[1]["counts"]["revenue_cents"], 12050);
    assert_eq!(p[1]["counts"]["orders"], 1);
    assert_eq!(c["progress"]["orders"], 1);
    assert_eq!(p[2]["role"], "winner");
    assert_eq!(p[2]["variant"], 1);
    settle(&sink, 100);
    let (counts, files) = received(&sink);
    assert_eq!(counts.len(), 100);
    assert!(counts.values().all(|n| *n == 1), "exactly once");
    assert_eq!(
        files.iter().filter(|(_, s, _)| s == "Subject B").count(),
        80,
        "the rest got the winner"
    );
    let test_a: BTreeSet<String> = a.iter().map(|(r, _, _)| r.clone()).collect();

    // The same seed splits the same way; with auto off the winner waits
    // for a hand.
    let id2 = create(&h, ab(7, false));
    act(&h, id2, "start");
    let before = sink.files().len();
    settle(&sink, before + 40);
    let (_, files) = received(&sink);
    let later: BTreeSet<String> = files
        .iter()
        .filter(|(_, s, f)| s == "Subject A" && !a.iter().any(|(_, _, g)| g == f))
        .map(|(r, _, _)| r.clone())
        .collect();
    assert_eq!(later, test_a, "same seed, same split");
    std::thread::sleep(Duration::from_secs(4));
    let c = campaign(&h, id2);
    assert!(c["ab"]["winner"].is_null(), "{c}");
    assert_eq!(c["progress"]["queued"], 40);
    let r = h.post_json(
        &format!("/api/v1/campaigns/{id2}/winner"),
        json!({"variant": 5}),
    );
    assert_eq!(r.status, 409);
    let r = h.post_json(
        &format!("/api/v1/campaigns/{id2}/winner"),
        json!({"variant": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let c = completed(&h, id2, Duration::from_secs(60));
    assert_eq!(c["ab"]["winner_reason"], "chosen by hand");
    assert_eq!(c["progress"]["queued"], 100);
}

/// Stage 2 goes, after its delay, only to stage 1's recipients who did not
/// open it.
#[test]
fn second_stage_reaches_only_those_who_did_not_open() {
    let sink = Sink::start(&[]);
    let h = start(&sink, "");
    h.granted_contacts(20);
    let id = create(
        &h,
        json!({"name": "Reminder", "template": "news", "audience": {"lists": ["news"]},
               "stages": [{"after": "3s", "only": "not_opened", "subject": "Did you see this?"}]}),
    );
    act(&h, id, "start");
    settle(&sink, 20);
    let (_, files) = received(&sink);
    let mut openers = BTreeSet::new();
    for (r, _, f) in files.iter().take(5) {
        let t = tokens(f, "o");
        assert_eq!(t.len(), 1, "one pixel");
        let reply = h.get_noauth(&format!("/o/{}", t[0]), None);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("image/gif"));
        assert_eq!(
            reply
                .header("cache-control")
                .map(|v| v.contains("no-store")),
            Some(true)
        );
        // A second open counts once for "unique".
        h.get_noauth(&format!("/o/{}", t[0]), None);
        openers.insert(r.clone());
    }
    let c = wait_for(&h, id, "stage 2 sent", Duration::from_secs(60), |c| {
        c["stage"] == 1 && c["status"] == "completed"
    });
    assert_eq!(c["parts"][0]["counts"]["unique_opens"], 5);
    assert_eq!(c["parts"][0]["counts"]["opens"], 10);
    assert_eq!(c["parts"][1]["size"], 15);
    settle(&sink, 35);
    let (_, files) = received(&sink);
    let second: BTreeSet<String> = files
        .iter()
        .filter(|(_, s, _)| s == "Did you see this?")
        .map(|(r, _, _)| r.clone())
        .collect();
    assert_eq!(second.len(), 15);
    assert!(second.is_disjoint(&openers));

    // Segments see who was sent, opened and clicked, also after a restart
    // (the index is rebuilt from the ledger).
    let count = |h: &Herald, def: Value| {
        let r = h.put(
            "/api/v1/segments/behaviour",
            "application/json",
            &def.to_string(),
        );
        assert!(r.status < 300, "{r:?}");
        let r = h.get("/api/v1/segments/behaviour/preview");
        assert_eq!(r.status, 200, "{r:?}");
        r.body["count"].as_u64().unwrap()
    };
    let mut h = h;
    for round in 0..2 {
        assert_eq!(count(&h, json!({"opened": id})), 5, "round {round}");
        assert_eq!(count(&h, json!({"not_opened": id})), 15, "round {round}");
        assert_eq!(count(&h, json!({"clicked": id})), 0, "round {round}");
        assert_eq!(
            count(&h, json!({"field": "last_open", "after": "2 days ago"})),
            5
        );
        h.restart();
    }
}

/// A contact who unsubscribes while their campaign message waits in the
/// queue (here: deferred, the server was down) is not sent it.
#[test]
fn queued_message_of_a_contact_who_left_is_not_sent() {
    let port = common::peers::free_port();
    let h = start_port(port, "[delivery]\nretry_schedule = [\"1h\"]\n");
    let ids = h.granted_contacts(5);
    let id = create(&h, spec("Waiting"));
    act(&h, id, "start");
    wait_for(&h, id, "all deferred", Duration::from_secs(30), |c| {
        c["progress"]["deferred"] == 5
    });
    let r = h.post_json(
        &format!("/api/v1/contacts/{}/consent", ids[2]),
        json!({"state": "withdrawn"}),
    );
    assert!(r.status < 300, "{}", r.body);
    let sink = Sink::start_on(port, &[]);
    let r = h.post_json("/api/v1/queue/retry", json!({"domain": "example.test"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let c = completed(&h, id, Duration::from_secs(30));
    assert_eq!(c["progress"]["delivered"], 4);
    assert_eq!(c["progress"]["not_sent_no_consent"], 1);
    assert_eq!(c["progress"]["failed"], 1);
    assert_eq!(c["progress"]["deferred"], 0);
    settle(&sink, 4);
    let (counts, _) = received(&sink);
    assert_eq!(counts.len(), 4);
    assert!(!counts.contains_key("c0002@example.test"));
}

/// A budget stops the campaign at the messages it pays for; the record
/// says why.
#[test]
fn budget_stops_sending() {
    let sink = Sink::start(&[]);
    let h = start(&sink, "");
    h.granted_contacts(30);
    let id = create(
        &h,
        json!({"name": "Cheap", "template": "news", "audience": {"lists": ["news"]},
               "cost_per_message": 0.25, "budget": 2.0}),
    );
    act(&h, id, "start");
    let c = completed(&h, id, Duration::from_secs(30));
    assert_eq!(c["progress"]["queued"], 8, "{c}");
    assert_eq!(c["progress"]["skipped"], 22);
    assert_eq!(c["progress"]["remaining"], 0);
    assert!(c["note"].as_str().unwrap().contains("budget"), "{c}");
    settle(&sink, 8);
    assert_eq!(received(&sink).0.len(), 8);
}

/// A campaign with a coupon pool gives every message its own code; when the
/// pool runs dry it pauses (saying why) rather than send one without, and
/// after more codes and a resume every recipient has a distinct code — the
/// contacts who got one before the pause keep it.
#[test]
fn a_campaign_coupon_pool_gives_each_message_its_own_code_and_pauses_when_dry() {
    let sink = Sink::start(&[]);
    let h = start(&sink, "");
    let t = h.dir.path().join("templates");
    write(
        &t,
        "gift/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\nkind = \"marketing\"\n[subject]\nen = \"A gift\"\n",
    );
    write(
        &t,
        "gift/body.en.html",
        "<html><body><p>CODE {{ coupon }}</p></body></html>\n",
    );
    h.hup();
    common::wait_until("the template loaded", Duration::from_secs(10), || {
        h.get("/api/v1/templates/gift").status == 200
    });
    h.granted_contacts(5);
    let r = h.post_json("/api/v1/coupons/gift", json!({"codes": ["G1", "G2", "G3"]}));
    assert_eq!(r.status, 200, "{r:?}");
    let id = create(
        &h,
        json!({"name": "Gift", "template": "gift", "audience": {"lists": ["news"]}, "coupon_pool": "gift"}),
    );
    act(&h, id, "start");
    let c = wait_for(&h, id, "paused", Duration::from_secs(30), |c| {
        c["status"] == "paused"
    });
    assert!(
        c["note"]
            .as_str()
            .unwrap_or("")
            .contains("coupon pool `gift`"),
        "{c}"
    );
    assert!(sink.files().is_empty(), "nothing is sent without its code");
    let r = h.post_json("/api/v1/coupons/gift", json!({"codes": ["G4", "G5", "G6"]}));
    assert_eq!(r.status, 200, "{r:?}");
    act(&h, id, "resume");
    completed(&h, id, Duration::from_secs(60));
    let codes: BTreeSet<String> = sink
        .files()
        .iter()
        .map(|f| {
            let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
            let at = text.find("CODE ").unwrap() + 5;
            text[at..at + 2].to_string()
        })
        .collect();
    assert_eq!(sink.files().len(), 5);
    assert_eq!(codes.len(), 5, "{codes:?}");
    assert!(
        !codes.contains("G6"),
        "the first three kept theirs: {codes:?}"
    );
    let pool = h.get("/api/v1/coupons/gift").body;
    assert_eq!(pool["given"], 5, "{pool}");
}
