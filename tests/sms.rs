//! The SMS channel through the real binary, against a fake gateway in this
//! test that speaks SMSAPI's and Twilio's HTTP APIs as they document them
//! (answers from `tests/fixtures/sms/`): campaigns arrive once each, gateway
//! errors and timeouts are retried without duplicates, `kill -9` mid-send
//! sends nobody twice, delivery reports (duplicated, reordered, forged)
//! update the state once, a STOP reply withdraws SMS consent and the next
//! campaign skips the contact, quiet hours hold.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

const CALLBACK_SECRET: &str = "sms-callback-secret-0123456789abcdef";
const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
const TWILIO_TOKEN: &str = "twilio-auth-token-0123";

/// One message a gateway took.
#[derive(Debug, Clone)]
struct Taken {
    id: String,
    to: String,
    text: String,
    idx: Option<String>,
    notify_url: Option<String>,
}

#[derive(Default)]
struct FakeState {
    /// Send requests received, in order.
    sends: usize,
    /// Answer 500 to the first this many.
    fail_first: usize,
    /// Send requests (0-based) that take `delay` before the answer.
    slow: HashSet<usize>,
    delay: Duration,
    /// Numbers (as sent) refused as invalid.
    invalid: HashSet<String>,
    taken: Vec<Taken>,
    idx_seen: HashSet<String>,
    duplicates_refused: usize,
    errors_500: usize,
}

/// A fake SMS gateway: SMSAPI's `/sms.do` and Twilio's Messages API.
struct Fake {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
}

fn fixture(name: &str) -> Value {
    let p = repo().join("tests/fixtures/sms").join(name);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("_source");
    v
}

impl Fake {
    fn start(state: FakeState) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(Mutex::new(state));
        let s2 = state.clone();
        std::thread::spawn(move || {
            for c in l.incoming().map_while(Result::ok) {
                let s = s2.clone();
                std::thread::spawn(move || serve(c, s));
            }
        });
        Fake { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn taken(&self) -> Vec<Taken> {
        self.state.lock().unwrap().taken.clone()
    }
}

fn serve(c: TcpStream, state: Arc<Mutex<FakeState>>) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let n: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; n];
        r.read_exact(&mut body).unwrap();
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let (status, answer) = answer(&state, &path, &headers, &form);
        let text = answer.to_string();
        let out = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if w.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

fn answer(
    state: &Mutex<FakeState>,
    path: &str,
    headers: &HashMap<String, String>,
    form: &HashMap<String, String>,
) -> (u16, Value) {
    let (n, delay) = {
        let mut s = state.lock().unwrap();
        s.sends += 1;
        let n = s.sends - 1;
        if n < s.fail_first {
            s.errors_500 += 1;
            return (500, json!({"error": "busy"}));
        }
        (n, s.slow.contains(&n).then_some(s.delay))
    };
    if let Some(d) = delay {
        std::thread::sleep(d);
    }
    let mut s = state.lock().unwrap();
    if path == "/sms.do" {
        assert_eq!(
            headers.get("authorization").map(String::as_str),
            Some("Bearer smsapi-token")
        );
        assert_eq!(form.get("check_idx").map(String::as_str), Some("1"));
        let idx = form["idx"].clone();
        let to = form["to"].clone();
        if s.invalid.contains(&to) {
            return (200, fixture("smsapi-error-13.json"));
        }
        if !s.idx_seen.insert(idx.clone()) {
            s.duplicates_refused += 1;
            return (200, fixture("smsapi-error-53.json"));
        }
        let id = format!("{}", 7_074_294_081_650_020_450u64 + n as u64);
        s.taken.push(Taken {
            id: id.clone(),
            to: to.clone(),
            text: form["message"].clone(),
            idx: Some(idx.clone()),
            notify_url: form.get("notify_url").cloned(),
        });
        let mut v = fixture("smsapi-send-ok.json");
        let item = &mut v["list"][0];
        item["id"] = json!(id);
        item["number"] = json!(to);
        item["submitted_number"] = json!(to);
        item["idx"] = json!(idx);
        return (200, v);
    }
    let want = format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json");
    assert_eq!(path, want);
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{TWILIO_SID}:{TWILIO_TOKEN}"));
    assert_eq!(headers.get("authorization"), Some(&format!("Basic {auth}")));
    let to = form["To"].clone();
    if s.invalid.contains(&to) {
        return (400, fixture("twilio-error-21211.json"));
    }
    let sid = format!("SM{:032x}", n);
    s.taken.push(Taken {
        id: sid.clone(),
        to: to.clone(),
        text: form["Body"].clone(),
        idx: None,
        notify_url: form.get("StatusCallback").cloned(),
    });
    let mut v = fixture("twilio-create-201.json");
    v["sid"] = json!(sid);
    v["to"] = json!(to);
    v["body"] = json!(form["Body"]);
    (201, v)
}

fn config(fake: &Fake, extra: &str) -> String {
    format!(
        r#"
[paths]
templates = "templates"
[automation]
poll = "200ms"
[[site]]
id = "shop"
name = "Shop"
url = "https://shop.example"
country = "PL"
[sms]
retry_after = "1s"
{extra}
[[sms_gateway]]
id = "smsapi"
kind = "smsapi"
base_url = "{url}"
credentials = "smsapi-token"
from = "Shop"
rate_per_second = 2000
connections = 4
timeout = "1s"
callback_secret = "{CALLBACK_SECRET}"
cost_per_part = "0.16"
currency = "PLN"
[[sms_gateway]]
id = "twilio"
kind = "twilio"
base_url = "{url}"
credentials = "{TWILIO_SID}:{TWILIO_TOKEN}"
from = "+48732100100"
rate_per_second = 2000
connections = 2
timeout = "2s"
"#,
        url = fake.url()
    )
}

/// A daemon with the fake gateway, an SMS template and `n` contacts with
/// phones (`+48500000000 + i`) and SMS consent granted, in list `all`.
fn daemon(fake: &Fake, extra: &str, n: usize) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates/promo");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(
        t.join("template.toml"),
        "default_language = \"pl\"\nkind = \"marketing\"\n",
    )
    .unwrap();
    std::fs::write(
        t.join("body.pl.sms.txt"),
        "Promocja -20% dziś: https://shop.example/sale\nOdpisz STOP, by nie dostawać SMS.\n",
    )
    .unwrap();
    let cfg = dir.path().join("herald.toml");
    std::fs::write(
        &cfg,
        config_text(&dir.path().join("data"), &config(fake, extra)),
    )
    .unwrap();
    let h = Herald::start_in(dir, cfg);
    let mut csv = String::from("email,phone,sms_consent\n");
    for i in 0..n {
        csv.push_str(&format!(
            "c{i}@example.com,500 {:03} {:03},granted\n",
            i / 1000,
            i % 1000
        ));
    }
    csv.push_str("nophone@example.com,,unknown\n");
    csv.push_str("said-no@example.com,+48 600 000 001,withdrawn\n");
    let r = h.post_csv("/api/v1/contacts/import?list=all&create_list=true", csv);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["rejected"], 0, "{}", r.body);
    h
}

fn campaign(h: &Herald, name: &str, gateway: &str) -> u64 {
    let r = h.post_json(
        "/api/v1/campaigns",
        json!({"name": name, "template": "promo", "channel": "sms", "sms_gateway": gateway,
               "audience": {"lists": ["all"]}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_u64().unwrap();
    let r = h.post_json(&format!("/api/v1/campaigns/{id}/start"), json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    id
}

fn completed(h: &Herald, id: u64, within: Duration) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let c = h.get(&format!("/api/v1/campaigns/{id}")).body;
        if c["status"] == "completed" {
            return c;
        }
        if std::time::Instant::now() > deadline {
            let sms = h.get("/api/v1/sms?limit=5").body;
            let report = h.get(&format!("/api/v1/reports/campaigns/{id}")).body;
            panic!(
                "the SMS campaign did not complete:\n{c}\n{sms}\n{report}\n{}",
                h.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each number (as the gateway got it) taken at most once; the numbers.
fn once_each(taken: &[Taken]) -> HashSet<String> {
    let mut seen = HashSet::new();
    for t in taken {
        assert!(seen.insert(t.to.clone()), "{} got two messages", t.to);
    }
    seen
}

fn twilio_signature(url: &str, params: &[(&str, &str)]) -> String {
    let mut p: Vec<_> = params.to_vec();
    p.sort();
    let mut data = url.to_string();
    for (k, v) in p {
        data.push_str(k);
        data.push_str(v);
    }
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        TWILIO_TOKEN.as_bytes(),
    );
    base64::engine::general_purpose::STANDARD
        .encode(ring::hmac::sign(&key, data.as_bytes()).as_ref())
}

/// The path and query of a callback URL Herald gave the gateway.
fn local(url: &str) -> String {
    url.trim_start_matches("http://127.0.0.1").to_string()
}

#[test]
fn a_campaign_of_500_sms_arrives_once_each_through_errors_timeouts_and_reports() {
    let mut slow = HashSet::new();
    for n in [40, 90, 150, 260, 333] {
        slow.insert(n);
    }
    let fake = Fake::start(FakeState {
        fail_first: 10,
        slow,
        delay: Duration::from_millis(1500),
        ..Default::default()
    });
    let h = daemon(&fake, "quiet_hours = \"off\"", 500);
    let id = campaign(&h, "Promo", "smsapi");
    let c = completed(&h, id, Duration::from_secs(120));
    let taken = fake.taken();
    let numbers = once_each(&taken);
    assert_eq!(numbers.len(), 500);
    assert!(
        numbers.contains("48500000007"),
        "national numbers in the site's country"
    );
    assert!(!numbers.contains("48600000001"), "withdrawn SMS consent");
    let s = fake.state.lock().unwrap();
    assert_eq!(s.errors_500, 10);
    // Every slow answer came after Herald's timeout: its retry hit the
    // same idx, which SMSAPI refuses (53) and Herald takes as sent.
    assert_eq!(s.duplicates_refused, 5);
    drop(s);
    let left = &c["progress"]["left_out"];
    assert_eq!(
        (
            left["no_phone"].as_u64(),
            left["consent_withdrawn"].as_u64()
        ),
        (Some(1), Some(1)),
        "{c}"
    );
    // The text: UCS-2 (Polish letters), the link a Herald click link.
    let text = &taken[0].text;
    assert!(
        text.starts_with("Promocja -20% dziś: http://127.0.0.1/c/"),
        "{text}"
    );
    let sms = h.get("/api/v1/sms?limit=1").body["sms"][0].clone();
    assert_eq!(
        (sms["encoding"].as_str(), sms["parts"].as_u64()),
        (Some("UCS-2"), Some(2)),
        "{sms}"
    );

    // Delivery reports, as SMSAPI sends them: GET to notify_url with
    // MsgId, status and idx; repeated, reordered, and one forged.
    let report = |t: &Taken, status: &str| {
        let u = local(t.notify_url.as_ref().unwrap());
        h.public(
            "GET",
            &format!(
                "{u}&MsgId={}&status={status}&idx={}",
                t.id,
                t.idx.as_ref().unwrap()
            ),
            &[],
            None,
        )
    };
    let (a, b) = (&taken[0], &taken[1]);
    for _ in 0..2 {
        let r = report(a, "404");
        assert_eq!((r.status, r.body.as_str()), (200, Some("OK")));
    }
    assert_eq!(report(a, "403").status, 200, "a late SENT after DELIVERED");
    assert_eq!(report(b, "405").status, 200);
    let forged = h.public(
        "GET",
        &format!(
            "/sms/smsapi/status?key=wrong&MsgId={}&status=404&idx={}",
            b.id,
            b.idx.as_ref().unwrap()
        ),
        &[],
        None,
    );
    assert_eq!(forged.status, 403);
    let one = |t: &Taken| {
        h.get(&format!("/api/v1/sms/{}", t.idx.as_ref().unwrap()))
            .body
    };
    assert_eq!(one(a)["state"], "delivered");
    assert_eq!(one(b)["state"], "failed");
    let report_json = h.get(&format!("/api/v1/reports/campaigns/{id}")).body;
    let totals = &report_json["totals"];
    assert_eq!(totals["sms_handed"], 500, "{report_json}");
    assert_eq!(totals["delivered"], 1, "{report_json}");
    assert_eq!(totals["failed"], 1, "{report_json}");
    assert_eq!(totals["sms_parts"], 1000, "{report_json}");

    // A click on the SMS link is tracked and redirected.
    let token = text
        .split("/c/")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let r = h.public(
        "GET",
        &format!("/c/{token}"),
        &[("User-Agent", "Mozilla/5.0 (Linux; Android 14)")],
        None,
    );
    assert_eq!(r.status, 302);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("https://shop.example/sale"),
        "{:?}",
        r.header("location")
    );

    // STOP from c7's phone withdraws SMS consent; the next campaign skips them.
    // The reply URL's key is its own (check-config prints the URL); the
    // status URL's key, which SMSAPI sees with every message, posts none.
    let status_key = a
        .notify_url
        .as_ref()
        .unwrap()
        .split("key=")
        .nth(1)
        .unwrap()
        .to_string();
    let forged = h.public(
        "POST",
        &format!("/sms/smsapi/inbound?key={status_key}"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"sms_from=48500000008&sms_text=START"),
    );
    assert_eq!(forged.status, 403);
    let (_, out, _) = run(&h.config, &["check-config"]);
    let key = out
        .split("/sms/smsapi/inbound?key=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let r = h.public(
        "POST",
        &format!("/sms/smsapi/inbound?key={key}"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"sms_from=48500000007&sms_to=48732100100&sms_text=STOP&sms_date=1733356800&username=shop&MsgId=1"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let log = h.get("/api/v1/contacts/c7@example.com/consent").body;
    assert_eq!(log["sms_consent"], "withdrawn", "{log}");
    let last = log["log"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["channel"].as_str(), last["source"].as_str()),
        (Some("sms"), Some("reply")),
        "{last}"
    );
    assert_eq!(log["consent"], "unknown", "e-mail consent is its own");
    let before = fake.taken().len();
    let id2 = campaign(&h, "Promo 2", "smsapi");
    let c2 = completed(&h, id2, Duration::from_secs(60));
    let second: Vec<Taken> = fake.taken()[before..].to_vec();
    assert_eq!(once_each(&second).len(), 499);
    assert!(second.iter().all(|t| t.to != "48500000007"));
    assert_eq!(c2["progress"]["left_out"]["consent_withdrawn"], 2, "{c2}");
}

#[test]
fn twilio_reports_are_checked_by_signature_and_refusals_mark_the_number() {
    let fake = Fake::start(FakeState {
        invalid: ["+48500000003".to_string()].into(),
        ..Default::default()
    });
    let h = daemon(&fake, "quiet_hours = \"off\"", 6);
    let id = campaign(&h, "Twilio", "twilio");
    completed(&h, id, Duration::from_secs(60));
    let taken = fake.taken();
    assert_eq!(once_each(&taken).len(), 5);
    let c3 = h.get("/api/v1/contacts/c3@example.com").body;
    assert_eq!(c3["sms_consent"], "invalid", "Twilio 21211: {c3}");
    let t = &taken[0];
    let cb = t.notify_url.clone().unwrap();
    let params = [
        ("MessageSid", t.id.as_str()),
        ("SmsSid", t.id.as_str()),
        ("AccountSid", TWILIO_SID),
        ("MessageStatus", "delivered"),
        ("To", t.to.as_str()),
        ("From", "+48732100100"),
        ("ApiVersion", "2010-04-01"),
    ];
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let sig = twilio_signature(&cb, &params);
    let post = |sig: &str, body: &str| {
        h.public(
            "POST",
            &local(&cb),
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Twilio-Signature", sig),
            ],
            Some(body.as_bytes()),
        )
    };
    assert_eq!(post("bm90IHRoZSBzaWduYXR1cmU=", &body).status, 403);
    let r = post(&sig, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.as_str().unwrap().contains("<Response"));
    assert_eq!(post(&sig, &body).status, 200, "a repeat");
    let report = h.get(&format!("/api/v1/reports/campaigns/{id}")).body;
    assert_eq!(report["totals"]["delivered"], 1, "{report}");
    assert_eq!(report["totals"]["sms_handed"], 5, "{report}");
    // Twilio forwards STOP replies too (signed the same way).
    let stop = [
        ("From", t.to.as_str()),
        ("To", "+48732100100"),
        ("Body", "Stop"),
        ("MessageSid", "SMx"),
        ("AccountSid", TWILIO_SID),
    ];
    let inbound = cb.split("/status").next().unwrap().to_string() + "/inbound";
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(stop)
        .finish();
    let r = h.public(
        "POST",
        &local(&inbound),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Twilio-Signature", &twilio_signature(&inbound, &stop)),
        ],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let who = h.get("/api/v1/contacts?limit=100").body;
    let withdrawn: Vec<&Value> = who["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["sms_consent"] == "withdrawn")
        .collect();
    assert_eq!(withdrawn.len(), 2, "said-no and the one who replied: {who}");
}

#[test]
fn kill_9_in_the_middle_of_a_campaign_sends_nobody_twice() {
    let fake = Fake::start(FakeState::default());
    let mut h = daemon(&fake, "quiet_hours = \"off\"", 500);
    // Slow enough to kill in the middle: 100 requests a second.
    let text = std::fs::read_to_string(&h.config).unwrap().replace(
        "rate_per_second = 2000\nconnections = 4",
        "rate_per_second = 100\nconnections = 4",
    );
    std::fs::write(&h.config, text).unwrap();
    h.hup();
    std::thread::sleep(Duration::from_millis(500));
    let id = campaign(&h, "Crash", "smsapi");
    wait_until("a third is sent", Duration::from_secs(60), || {
        fake.taken().len() >= 150
    });
    h.kill9();
    let at_kill = fake.taken().len();
    assert!(at_kill < 500, "the campaign was not interrupted");
    h.restart();
    completed(&h, id, Duration::from_secs(120));
    let numbers = once_each(&fake.taken());
    assert_eq!(numbers.len(), 500);
    let refused = fake.state.lock().unwrap().duplicates_refused;
    assert!(
        refused <= 4,
        "at most one request per connection repeated: {refused}"
    );
}

#[test]
fn quiet_hours_hold_marketing_sms_until_they_end() {
    let fake = Fake::start(FakeState::default());
    // Quiet from an hour ago to two hours ahead, in the site's zone (UTC).
    let now = chrono::Utc::now();
    let from = (now - chrono::Duration::hours(1)).format("%H:00");
    let to = (now + chrono::Duration::hours(2)).format("%H:00");
    let h = daemon(&fake, &format!("quiet_hours = \"{from}-{to}\""), 5);
    let id = campaign(&h, "Night", "smsapi");
    wait_until("all five are queued", Duration::from_secs(30), || {
        h.get(&format!("/api/v1/campaigns/{id}")).body["progress"]["queued"] == 5
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(fake.taken().is_empty(), "nothing leaves in quiet hours");
    let list = h.get("/api/v1/sms").body;
    for s in list["sms"].as_array().unwrap() {
        assert_eq!(s["state"], "queued", "{s}");
        assert_eq!(s["status"], "held for quiet hours", "{s}");
        let due = chrono::DateTime::parse_from_rfc3339(s["due"].as_str().unwrap()).unwrap();
        assert!(
            due > now + chrono::Duration::minutes(30),
            "held until the end: {s}"
        );
    }
    // Erasure blanks a held message and fails it; a cancel fails the rest.
    assert_eq!(h.delete("/api/v1/contacts/c1@example.com").status, 200);
    let all = h.get("/api/v1/sms").body["sms"].as_array().unwrap().clone();
    let erased: Vec<&Value> = all.iter().filter(|s| s["to"] == "").collect();
    assert_eq!(erased.len(), 1, "{all:?}");
    assert_eq!(
        (erased[0]["state"].as_str(), erased[0]["text"].as_str()),
        (Some("failed"), Some(""))
    );
    let r = h.post_json(&format!("/api/v1/campaigns/{id}/cancel"), json!({}));
    assert_eq!(r.status, 200, "{r:?}");
    wait_until(
        "the cancel fails the held SMS",
        Duration::from_secs(10),
        || {
            h.get("/api/v1/sms").body["sms"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["state"] == "failed")
        },
    );
    assert!(fake.taken().is_empty());
}

#[test]
fn an_automation_step_sends_an_sms_to_contacts_with_sms_consent() {
    let fake = Fake::start(FakeState::default());
    let h = daemon(&fake, "quiet_hours = \"off\"", 3);
    h.list("vip");
    let r = h.put(
        "/api/v1/automations/vip_sms",
        "application/json",
        &json!({"trigger": {"type": "list_joined", "list": "vip"},
                "steps": [{"sms": {"template": "promo", "gateway": "smsapi"}}]})
        .to_string(),
    );
    assert_eq!(r.status, 201, "{r:?}");
    // An e-mail key beside `sms` is refused with the reason.
    let bad = h.put(
        "/api/v1/automations/bad_sms",
        "application/json",
        &json!({"trigger": {"type": "list_joined", "list": "vip"},
                "steps": [{"sms": {"template": "promo"}, "subject": "x"}]})
        .to_string(),
    );
    assert_eq!(bad.status, 422, "{bad:?}");
    assert!(bad.body.to_string().contains("sms = {"), "{bad:?}");
    for who in [
        "c0@example.com",
        "c2@example.com",
        "said-no@example.com",
        "nophone@example.com",
    ] {
        let r = h.patch_json(
            &format!("/api/v1/contacts/{who}"),
            json!({"add_lists": ["vip"]}),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    wait_until("two SMS reach the gateway", Duration::from_secs(30), || {
        fake.taken().len() >= 2
    });
    std::thread::sleep(Duration::from_millis(800));
    let taken = fake.taken();
    let to: HashSet<String> = once_each(&taken);
    assert_eq!(
        to,
        ["48500000000".to_string(), "48500000002".to_string()].into()
    );
    assert!(taken[0].text.contains("/c/"), "{}", taken[0].text);
    let status = h.get("/api/v1/automations/vip_sms").body;
    let text = status.to_string();
    assert!(text.contains("no_sms_consent"), "{status}");
    assert!(text.contains("no_phone"), "{status}");
}

#[test]
fn the_webhook_gateway_signs_its_requests_and_takes_signed_reports() {
    // The webhook: Herald posts signed JSON; this test's server checks the
    // signature with the credentials and answers with its id.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let g2 = got.clone();
    std::thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            let g = g2.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut w = c;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut headers = HashMap::new();
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        if h.trim_end().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.trim_end().split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let n: usize = headers["content-length"].parse().unwrap();
                    let mut body = vec![0; n];
                    r.read_exact(&mut body).unwrap();
                    let ts = &headers["x-herald-timestamp"];
                    let key =
                        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"webhook-signing-secret");
                    let mut data = ts.as_bytes().to_vec();
                    data.push(b'.');
                    data.extend(&body);
                    let want =
                        format!("v1={}", hex::encode(ring::hmac::sign(&key, &data).as_ref()));
                    assert_eq!(headers["x-herald-signature"], want);
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    g.lock().unwrap().push(v);
                    let a = r#"{"id":"prov-1"}"#;
                    let out = format!(
                        "HTTP/1.1 202 Accepted\r\nContent-Length: {}\r\n\r\n{a}",
                        a.len()
                    );
                    w.write_all(out.as_bytes()).unwrap();
                }
            });
        }
    });
    let fake = Fake::start(FakeState::default());
    let extra = format!(
        "quiet_hours = \"off\"\ngateway = \"hook\"\n[[sms_gateway]]\nid = \"hook\"\nkind = \"webhook\"\nbase_url = \"http://{addr}/send\"\ncredentials = \"webhook-signing-secret\"\nfrom = \"Shop\"\ncallback_secret = \"{CALLBACK_SECRET}\"\n"
    );
    let h = daemon(&fake, &extra, 2);
    let id = campaign(&h, "Hook", "hook");
    completed(&h, id, Duration::from_secs(30));
    let sent = got.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let m = &sent[0];
    assert_eq!(
        (
            m["from"].as_str(),
            m["encoding"].as_str(),
            m["parts"].as_u64()
        ),
        (Some("Shop"), Some("ucs2"), Some(2))
    );
    // Its report, signed with the callback secret.
    let body = json!({"id": m["id"], "status": "delivered"}).to_string();
    let ts = chrono::Utc::now().timestamp().to_string();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, CALLBACK_SECRET.as_bytes());
    let mut data = ts.as_bytes().to_vec();
    data.push(b'.');
    data.extend(body.as_bytes());
    let sig = format!("v1={}", hex::encode(ring::hmac::sign(&key, &data).as_ref()));
    let url = local(m["status_url"].as_str().unwrap());
    let post = |sig: &str| {
        h.public(
            "POST",
            &url,
            &[
                ("Content-Type", "application/json"),
                ("X-Herald-Timestamp", &ts),
                ("X-Herald-Signature", sig),
            ],
            Some(body.as_bytes()),
        )
    };
    assert_eq!(post("v1=00").status, 403);
    assert_eq!(post(&sig).status, 200);
    let one = h
        .get(&format!("/api/v1/sms/{}", m["id"].as_str().unwrap()))
        .body;
    assert_eq!(
        (one["state"].as_str(), one["gateway_id"].as_str()),
        (Some("delivered"), Some("prov-1")),
        "{one}"
    );
}

#[test]
fn bad_phone_numbers_are_rejected_with_the_reason() {
    let fake = Fake::start(FakeState::default());
    let h = daemon(&fake, "", 0);
    let r = h.post_csv(
        "/api/v1/contacts/import",
        "email,phone\nok@example.com,+48 500 100 200\nbad@example.com,12\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["rejected"], 1, "{r:?}");
    assert!(
        r.body
            .to_string()
            .contains("phone: `12` is not a valid phone number"),
        "{r:?}"
    );
    let r = h.post_json(
        "/api/v1/contacts",
        json!({"email": "x@example.com", "phone": "call me"}),
    );
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("phone:"),
        "{r:?}"
    );
    let r = h.post_json(
        "/api/v1/contacts",
        json!({"email": "y@example.com", "sms_consent": "granted"}),
    );
    assert_eq!(r.status, 422, "SMS consent without a number: {r:?}");
    let r = h.post_json(
        "/api/v1/events",
        json!([{"type": "customer", "id": "e1", "at": "2026-12-01T10:00:00Z", "email": "z@example.com", "phone": "0"},
               {"type": "customer", "id": "e2", "at": "2026-12-01T10:00:00Z", "email": "w@example.com", "phone": "600 100 200", "sms_consent": "granted"}]),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let text = r.body.to_string();
    assert!(text.contains("phone:"), "{text}");
    let w = h.get("/api/v1/contacts/w@example.com").body;
    assert_eq!(
        (w["phone"].as_str(), w["sms_consent"].as_str()),
        (Some("+48600100200"), Some("granted")),
        "{w}"
    );
    // A withdrawn SMS consent does not come back by the API or an import.
    let r = h.post_json(
        "/api/v1/contacts/w@example.com/consent",
        json!({"state": "withdrawn", "channel": "sms"}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = h.post_json(
        "/api/v1/contacts/w@example.com/consent",
        json!({"state": "granted", "channel": "sms"}),
    );
    assert_eq!(r.status, 422, "{r:?}");
    let r = h.post_csv(
        "/api/v1/contacts/import",
        "email,sms_consent\nw@example.com,granted\n",
    );
    assert_eq!(r.body["rejected"], 1, "{r:?}");
    // A shop resending its checkbox: the rest of the update goes in.
    let r = h.post_json(
        "/api/v1/events",
        json!([{"type": "customer", "id": "e3", "at": "2026-12-01T11:00:00Z", "email": "w@example.com",
                "sms_consent": "granted", "tags": ["vip"]}]),
    );
    assert!(
        r.body.to_string().contains("sms_consent left withdrawn"),
        "{r:?}"
    );
    let w = h.get("/api/v1/contacts/w@example.com").body;
    assert_eq!(
        (w["sms_consent"].as_str(), w["tags"][0].as_str()),
        (Some("withdrawn"), Some("vip")),
        "{w}"
    );
    // SMS consent was for a number: a new one starts at unknown.
    let r = h.post_json(
        "/api/v1/contacts",
        json!({"email": "v@example.com", "phone": "600100300", "sms_consent": "granted"}),
    );
    assert_eq!(r.body["contact"]["sms_consent"], "granted", "{r:?}");
    let r = h.patch_json(
        "/api/v1/contacts/v@example.com",
        json!({"phone": "600100301"}),
    );
    assert_eq!(r.body["contact"]["sms_consent"], "unknown", "{r:?}");
}

#[test]
fn capture_mode_keeps_sms_in_the_capture_folder_and_calls_no_gateway() {
    let fake = Fake::start(FakeState::default());
    let h = daemon(
        &fake,
        "quiet_hours = \"off\"\n[delivery]\ncapture = \"outbox\"",
        3,
    );
    let id = campaign(&h, "Captured", "smsapi");
    completed(&h, id, Duration::from_secs(30));
    assert!(
        fake.taken().is_empty(),
        "no gateway is called in capture mode"
    );
    let dir = h.dir.path().join("outbox/sms");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["S1.json", "S2.json", "S3.json"]);
    let one: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("S1.json")).unwrap()).unwrap();
    assert!(
        one["text"].as_str().unwrap().starts_with("Promocja"),
        "{one}"
    );
    let sms = h.get("/api/v1/sms/1").body;
    assert_eq!(
        (sms["state"].as_str(), sms["status"].as_str()),
        (Some("sent"), Some("captured")),
        "{sms}"
    );
    let (_, out, _) = run(&h.config, &["check-config"]);
    assert!(out.contains("CAPTURE MODE keeps SMS too"), "{out}");
    assert!(out.contains("/sms/smsapi/inbound?key="), "{out}");
}

#[test]
fn an_unanswered_twilio_request_waits_for_its_report_instead_of_a_second_copy() {
    // The first request reaches the fake, which takes the message but
    // answers after Herald's 2 s timeout.
    let fake = Fake::start(FakeState {
        slow: [0].into(),
        delay: Duration::from_millis(3000),
        ..Default::default()
    });
    let h = daemon(&fake, "quiet_hours = \"off\"", 3);
    let id = campaign(&h, "Unclear", "twilio");
    wait_until("three taken", Duration::from_secs(30), || {
        fake.taken().len() == 3
    });
    let first = fake
        .taken()
        .into_iter()
        .find(|t| t.id == format!("SM{:032x}", 0))
        .unwrap();
    let sms_id: u64 = first
        .notify_url
        .as_ref()
        .unwrap()
        .split("m=")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    wait_until("the timeout is recorded", Duration::from_secs(10), || {
        h.get(&format!("/api/v1/sms/{sms_id}")).body["attempts"] == 1
    });
    let rec = h.get(&format!("/api/v1/sms/{sms_id}")).body;
    assert_eq!(rec["state"], "queued", "{rec}");
    let due = chrono::DateTime::parse_from_rfc3339(rec["due"].as_str().unwrap()).unwrap();
    assert!(
        due > chrono::Utc::now() + chrono::Duration::minutes(4),
        "waits for the report: {rec}"
    );
    // Twilio's report comes: the message is sent, and never sent again.
    let cb = first.notify_url.clone().unwrap();
    let params = [
        ("MessageSid", first.id.as_str()),
        ("MessageStatus", "sent"),
        ("AccountSid", TWILIO_SID),
    ];
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let r = h.public(
        "POST",
        &local(&cb),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Twilio-Signature", &twilio_signature(&cb, &params)),
        ],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{r:?}");
    completed(&h, id, Duration::from_secs(30));
    assert_eq!(once_each(&fake.taken()).len(), 3);
    let rec = h.get(&format!("/api/v1/sms/{sms_id}")).body;
    assert_eq!(
        (rec["state"].as_str(), rec["gateway_id"].as_str()),
        (Some("sent"), Some(first.id.as_str())),
        "{rec}"
    );
}
