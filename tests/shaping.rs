//! Traffic shaping against real peers: dnsmasq puts several test domains
//! behind one "provider" (their MX hosts share a suffix), smtp-sink receives
//! (and, with its fault options, answers `421 4.7.0`), and the daemon's own
//! API and metrics show each provider group's state.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use common::peers::{Dns, Sink, rcpts_of};
use common::{Herald, wait_until, write};
use serde_json::{Value, json};

/// a.test, b.test and c.test behind mx.prov.test; other.test behind its own.
fn dns() -> Dns {
    let mut r: Vec<String> = ["a", "b", "c", "example"]
        .iter()
        .map(|d| format!("--mx-host={d}.test,mx.prov.test,10"))
        .collect();
    r.push("--host-record=mx.prov.test,127.0.0.1".into());
    r.push("--mx-host=other.test,mx.other.test,10".into());
    r.push("--host-record=mx.other.test,127.0.0.1".into());
    Dns::start(&r)
}

/// The group `prov` (MX `.prov.test`): one connection, `rate` messages a
/// second; a `4.7.0` reply suspends it for 3 s.
fn shaping(rate: u32) -> String {
    format!(
        r#"
[[shaping]]
name = "prov"
mx = [".prov.test"]
connections = 1
messages_per_second = {rate}

[[backoff]]
name = "throttled"
reply = ["4.7.0"]
action = "suspend"
duration = "3s"
recover_after = "1s"
"#
    )
}

/// A daemon delivering by MX through `dns` to `port`, with `shaping.toml`
/// beside its config and `sender` appended to its sender.
fn start(dns: &Dns, port: u16, shaping: &str, sender: &str) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "shaping.toml", shaping);
    let t = dir.path().join("templates");
    write(
        &t,
        "news/template.toml",
        "sender = \"shop\"\ndefault_language = \"en\"\nkind = \"marketing\"\n[subject]\nen = \"News\"\n",
    );
    write(
        &t,
        "news/body.en.html",
        "<p>Hello</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>\n",
    );
    let config = dir.path().join("herald.toml");
    let extra = format!(
        r#"
[paths]
templates = "templates"

[delivery]
nameserver = "127.0.0.1:{dns}"
smtp_port = {port}
retry_schedule = ["2s"]
connect_timeout = "2s"
command_timeout = "3s"

[[sender]]
id = "shop"
from = "Shop <news@shop.test>"
helo = "mail.shop.test"
{sender}
"#,
        dns = dns.port
    );
    std::fs::write(
        &config,
        common::config_text(&dir.path().join("data"), &extra),
    )
    .unwrap();
    Herald::start_in(dir, config)
}

fn send(h: &Herald, to: &str) -> u64 {
    h.send_text("shop", &[to], "Hi")
}

fn message(h: &Herald, id: u64) -> Value {
    h.get(&format!("/api/v1/queue/{id}")).body
}

fn all_delivered(h: &Herald, ids: &[u64], within: Duration) -> Vec<Value> {
    ids.iter()
        .map(|id| h.wait_message(*id, within, |m| m["recipients"][0]["state"] == "delivered"))
        .collect()
}

/// The group's entry in `GET /api/v1/queue`.
fn group(h: &Herald, name: &str) -> Option<Value> {
    let q = h.get("/api/v1/queue").body;
    q["shaping"]
        .as_array()?
        .iter()
        .find(|g| g["group"] == name)
        .cloned()
}

/// When each file arrived at the sink, in order.
fn arrivals(files: &[PathBuf]) -> Vec<SystemTime> {
    let mut t: Vec<SystemTime> = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().modified().unwrap())
        .collect();
    t.sort();
    t
}

/// Three domains behind one provider share its limits: one connection for
/// all three at any moment, and their messages together at no more than
/// its rate; a domain of another provider is not held back by them.
#[test]
fn domains_behind_one_provider_share_its_connection_and_rate_limits() {
    let dns = dns();
    let sink = Sink::start(&[]);
    let h = start(&dns, sink.port, &shaping(5), "");
    let mut ids = Vec::new();
    for i in 0..8 {
        for d in ["a", "b", "c"] {
            ids.push(send(&h, &format!("u{i}@{d}.test")));
        }
    }
    let others: Vec<u64> = (0..8)
        .map(|i| send(&h, &format!("o{i}@other.test")))
        .collect();
    // The other provider's mail is not held behind the rate-limited one.
    all_delivered(&h, &others, Duration::from_secs(20));
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.files().len() < 32 {
        if let Some(g) = group(&h, "prov") {
            most = most.max(g["connections"].as_u64().unwrap());
            assert_eq!(g["state"], "normal", "{g}");
        }
        assert!(
            Instant::now() < deadline,
            "only {} arrived",
            sink.files().len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(most, 1, "one connection for the whole provider");
    let delivered = all_delivered(&h, &ids, Duration::from_secs(10));
    assert!(
        delivered
            .iter()
            .all(|m| m["recipients"][0]["host"] == "mx.prov.test"),
        "{delivered:?}"
    );
    let prov: Vec<PathBuf> = sink
        .files()
        .into_iter()
        .filter(|f| rcpts_of(f).iter().any(|r| !r.ends_with("@other.test")))
        .collect();
    assert_eq!(prov.len(), 24);
    // 5 a second across the three domains: any 6 in a row span at least a
    // second (less a little for the clock's resolution).
    let t = arrivals(&prov);
    for w in t.windows(6) {
        let span = w[5].duration_since(w[0]).unwrap();
        assert!(
            span >= Duration::from_millis(900),
            "6 messages within {span:?}"
        );
    }
}

/// A `421 4.7.0` reply suspends the provider group: nothing more is tried
/// while it lasts (the other messages are held in the queue, no attempt
/// used), the API and metrics say why; then everything is delivered once,
/// none lost, none twice.
#[test]
fn a_throttling_reply_suspends_the_group_and_everything_is_delivered_after() {
    let dns = dns();
    let faulty = Sink::start(&["-r", "RCPT", "-b", "421 4.7.0 Try again later"]);
    let port = faulty.port;
    let h = start(&dns, port, &shaping(50), "");
    let ids: Vec<u64> = (0..6)
        .map(|i| send(&h, &format!("u{i}@{}.test", ["a", "b", "c"][i % 3])))
        .collect();
    let mut g = Value::Null;
    wait_until("the group suspended", Duration::from_secs(20), || {
        g = group(&h, "prov").unwrap_or_default();
        g["state"] == "suspended"
    });
    assert_eq!(g["rule"], "throttled", "{g}");
    assert!(g["reply"].as_str().unwrap().contains("421 4.7.0"), "{g}");
    assert!(g["suspended_until"].is_string(), "{g}");
    let metrics = h
        .get("/metrics")
        .body
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        metrics.contains("herald_shaping_backoffs_total{group=\"prov\",rule=\"throttled\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_shaping_state{group=\"prov\",domain=\"\",source_ip=\"\"} 3"),
        "{metrics}"
    );
    // The server recovers while the group is suspended.
    drop(faulty);
    let sink = Sink::start_on(port, &[]);
    // Meanwhile the others wait in the queue, held, not attempted.
    wait_until("the rest held", Duration::from_secs(5), || {
        ids.iter().any(|id| {
            let m = message(&h, *id);
            m["recipients"][0]["reply"]
                .as_str()
                .is_some_and(|r| r.contains("suspended by back-off rule `throttled`"))
        })
    });
    let delivered = all_delivered(&h, &ids, Duration::from_secs(30));
    let attempts: u64 = delivered
        .iter()
        .map(|m| m["recipients"][0]["attempts"].as_u64().unwrap())
        .sum();
    // One transaction heard the 421 (two at most, pipelined); the held
    // ones used no retry.
    assert!(
        (6..=8).contains(&attempts),
        "{attempts} attempts: {delivered:?}"
    );
    let files = sink.wait_files(6, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.files().len(), 6, "{files:?}");
    let mut got: Vec<String> = sink.files().iter().flat_map(|f| rcpts_of(f)).collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 6);
    // Deliveries after the suspension took the group back to normal.
    wait_until("recovered", Duration::from_secs(10), || {
        send(&h, "late@a.test");
        std::thread::sleep(Duration::from_millis(300));
        group(&h, "prov").is_some_and(|g| g["state"] == "normal")
    });
}

/// A warm-up schedule spreads a campaign over its periods (seconds here,
/// days in production): at most the allowance per period, the rest carried
/// on to the next, the campaign's status showing the use; nothing lost.
#[test]
fn a_warm_up_schedule_spreads_a_campaign_over_its_periods() {
    let dns = dns();
    let sink = Sink::start(&[]);
    let start_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let warmup = format!(
        "[sender.warmup]\nstart = \"{}\"\nperiod = \"4s\"\ndaily = [4, 4]\ngroups = {{ prov = [2, 3] }}\n",
        start_at.to_rfc3339()
    );
    let h = start(&dns, sink.port, &shaping(50), &warmup);
    h.granted_contacts(9);
    let r = h.post_json(
        "/api/v1/campaigns",
        json!({"name": "Warm", "template": "news", "audience": {"lists": ["news"]}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_u64().unwrap();
    // Start inside period 0.
    while chrono::Utc::now() < start_at + chrono::Duration::milliseconds(200) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = h.post_json(&format!("/api/v1/campaigns/{id}/start"), json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until("period 0's allowance used", Duration::from_secs(10), || {
        let c = h.get(&format!("/api/v1/campaigns/{id}")).body;
        c["warmup"]["groups"]["prov"][0] == 2
    });
    let c = h.get(&format!("/api/v1/campaigns/{id}")).body;
    assert_eq!(c["warmup"]["period"], 0, "{c}");
    assert_eq!(c["warmup"]["groups"]["prov"][1], 2, "{c}");
    assert!(c["warmup"]["period_ends"].is_string(), "{c}");
    let files = sink.wait_files(9, Duration::from_secs(40));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.files().len(), 9, "{files:?}");
    // Per period: at most its allowance (2, then 3, then no limit).
    let start: SystemTime = start_at.into();
    let mut per = [0usize; 4];
    for t in arrivals(&files) {
        let p = (t.duration_since(start).unwrap().as_millis() / 4000) as usize;
        per[p.min(3)] += 1;
    }
    assert!(per[0] <= 2 && per[1] <= 3, "per period {per:?}");
    assert_eq!(per.iter().sum::<usize>(), 9);
    assert!(per[2] + per[3] >= 4, "per period {per:?}");
    let c = h.get(&format!("/api/v1/campaigns/{id}")).body;
    assert_eq!(c["parts"][0]["counts"]["delivered"], 9, "{c}");
}

/// Mistakes in the shaping file and in a warm-up are named with the file,
/// line and key by `check-config`, and the daemon does not start on them.
#[test]
fn check_config_names_mistakes_in_the_shaping_file_and_warm_up() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "shaping.toml",
        "[[shaping]]\nname = \"prov\"\nmx = [\".prov.test\"]\nconnections = 0\n\n[[backoff]]\nname = \"x\"\nreply = [\"421\"]\naction = \"slower\"\n",
    );
    let config = dir.path().join("herald.toml");
    let extra = "[[sender]]\nid = \"shop\"\nfrom = \"Shop <news@shop.test>\"\n[sender.warmup]\nstart = \"2026-12-01\"\ngroups = { nope = [10] }\n";
    std::fs::write(
        &config,
        common::config_text(&dir.path().join("data"), extra),
    )
    .unwrap();
    let (code, out, err) = common::run(&config, &["check-config"]);
    assert_ne!(code, 0, "{out}");
    let shaping = dir.path().join("shaping.toml");
    let all = format!("{out}{err}");
    assert!(
        all.contains(&format!("{}:4:15", shaping.display()))
            && all.contains("shaping[0].connections")
            && all.contains("must be between 1"),
        "{all}"
    );
    assert!(
        all.contains("backoff[0].action") && all.contains("`slower`"),
        "{all}"
    );
    assert!(
        all.contains("sender[0].warmup.groups.nope")
            && all.contains("no provider group named `nope`"),
        "{all}"
    );
}

/// A warming-up sender's campaign goes to the most recently engaged
/// contacts first: with an allowance of 2, the two who opened the last
/// newsletter get it now, the others later.
#[test]
fn a_warming_sender_sends_to_the_engaged_first() {
    let dns = dns();
    let sink = Sink::start(&[]);
    let warmup = format!(
        "[sender.warmup]\nstart = \"{}\"\nperiod = \"1h\"\ndaily = [2]\n\n[[sender]]\nid = \"plain\"\nfrom = \"Shop <hello@shop.test>\"\n",
        chrono::Utc::now().to_rfc3339()
    );
    let h = start(&dns, sink.port, &shaping(50), &warmup);
    h.granted_contacts(8);
    let campaign = |name: &str, sender: &str| {
        let r = h.post_json(
            "/api/v1/campaigns",
            json!({"name": name, "template": "news", "sender": sender, "audience": {"lists": ["news"]}}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.body["id"].as_u64().unwrap();
        let r = h.post_json(&format!("/api/v1/campaigns/{id}/start"), json!({}));
        assert_eq!(r.status, 200, "{}", r.body);
    };
    // A first newsletter from a sender that is not warming: everyone.
    campaign("First", "plain");
    let first = sink.wait_files(8, Duration::from_secs(30));
    // The last two contacts (by id) open it.
    let openers = ["c0006@example.test", "c0007@example.test"];
    for f in &first {
        if openers.iter().any(|o| rcpts_of(f).iter().any(|r| r == o)) {
            let t = common::peers::tokens(f, "o");
            assert_eq!(t.len(), 1, "one pixel");
            assert_eq!(h.get_noauth(&format!("/o/{}", t[0]), None).status, 200);
        }
    }
    wait_until(
        "the opens known to segments",
        Duration::from_secs(20),
        || {
            let r = h.put(
                "/api/v1/segments/opened",
                "application/json",
                &json!({"field": "last_open", "after": "2 days ago"}).to_string(),
            );
            assert!(r.status < 300, "{r:?}");
            h.get("/api/v1/segments/opened/preview").body["count"] == 2
        },
    );
    // The warming sender's allowance of 2 goes to them.
    campaign("Second", "shop");
    let all = sink.wait_files(10, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.files().len(), 10, "only the allowance went out");
    let mut second: Vec<String> = all
        .iter()
        .filter(|f| !first.contains(f))
        .flat_map(|f| rcpts_of(f))
        .collect();
    second.sort();
    assert_eq!(second, openers);
}
