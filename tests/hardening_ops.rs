//! Operating Herald (issue 17): a config is checked against every site a
//! template may be sent for, and the shipped example passes and renders its
//! newsletter for each site; a broken config on SIGHUP is reported once and
//! the old one keeps serving; an SMTP server that hangs up is reported as
//! such, with the step.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::peers::{Dns, Sink};
use common::{Herald, TOKEN, config_text, run};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Sites `a` (with an auto-login secret) and `b` (`b_extra` added), a
/// sender, and the templates folder `templates` next to the config.
fn two_sites(b_extra: &str) -> String {
    format!(
        r#"
[paths]
templates = "templates"

[[sender]]
id = "news"
from = "Shop <news@a.example>"

[[site]]
id = "a"
name = "Site A"
url = "https://a.example"
autologin_secret = "site-a-autologin-secret-0123456789abcdef"

[[site]]
id = "b"
name = "Site B"
url = "https://b.example"
{b_extra}
"#
    )
}

/// Writes a template folder `name` under `dir/templates` with one English
/// body and a sample.
fn template(dir: &Path, name: &str, body: &str, sample: &Value) {
    let t = dir.join("templates").join(name);
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(
        t.join("template.toml"),
        "sender = \"news\"\ndefault_language = \"en\"\n[subject]\nen = \"Hello\"\n",
    )
    .unwrap();
    std::fs::write(t.join("body.en.html"), body).unwrap();
    std::fs::write(t.join("sample.json"), sample.to_string()).unwrap();
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("herald.toml");
    std::fs::write(&config, config_text(&dir.join("data"), extra)).unwrap();
    config
}

#[test]
fn a_site_without_what_a_template_needs_is_refused_by_check_config_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    // `account` calls autologin_url, which site b cannot sign.
    template(
        dir.path(),
        "account",
        "<p><a href=\"{{ autologin_url(site.url ~ '/account') }}\">Account</a></p>",
        &json!({"contact": {"email": "ann@example.com", "site": "a"}}),
    );
    // `restock` renders for site b only with b's own sample product: the
    // sample's product is on a's address, where b's token may not go.
    let product = |site: &str| {
        json!([{"sku": "S1", "name": "Shoe", "price": "10", "currency": "EUR",
                "url": format!("https://{site}.example/p/s1")}])
    };
    template(
        dir.path(),
        "restock",
        "<p><a href=\"{{ autologin_url(products[0].url) }}\">{{ products[0].name }}</a></p>",
        &json!({"contact": {"email": "ann@example.com", "site": "a"}, "products": product("a")}),
    );
    let config = write_config(dir.path(), &two_sites(""));
    let (code, out, err) = run(&config, &["check-config"]);
    assert_eq!(code, 2, "{out}{err}");
    // Named: the template, the site and what is missing.
    let line = err
        .lines()
        .find(|l| l.contains("template `account`"))
        .unwrap_or_else(|| panic!("no line for `account`:\n{err}"));
    assert!(line.contains("templates/account/body.en.html"), "{line}");
    assert!(line.contains("for a contact of site `b`"), "{line}");
    assert!(line.contains("site `b` has no autologin_secret"), "{line}");
    assert!(!err.contains("site `a`"), "{err}");

    // With b's secret, `account` passes; `restock`'s trial render for a
    // contact of site b fails, naming template, site and problem.
    std::fs::write(
        &config,
        config_text(
            &dir.path().join("data"),
            &two_sites("autologin_secret = \"site-b-autologin-secret-0123456789abcdef\""),
        ),
    )
    .unwrap();
    let (code, out, err) = run(&config, &["check-config"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(!err.contains("template `account`"), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("template `restock`"))
        .unwrap_or_else(|| panic!("no line for `restock`:\n{err}"));
    assert!(line.contains("site `b`"), "{line}");
    assert!(line.contains("is not on the site's address"), "{line}");

    // The daemon reports the same at start and leaves the template out.
    let mut h = Herald::start_in(dir, config.clone());
    assert!(
        h.log()
            .contains("template `restock` cannot be rendered for a contact of site `b`"),
        "{}",
        h.log()
    );
    let r = h.get("/api/v1/templates");
    assert_eq!(r.status, 200, "{}", r.body);
    let listed = r.body.to_string();
    assert!(
        listed.contains("cannot be rendered for a contact of site `b`"),
        "{listed}"
    );

    // A product for site b in sample.json (`sites.b`) makes it pass.
    let t = h.dir.path().join("templates/restock/sample.json");
    std::fs::write(
        &t,
        json!({"contact": {"email": "ann@example.com", "site": "a"}, "products": product("a"),
               "sites": {"b": {"products": product("b")}}})
        .to_string(),
    )
    .unwrap();
    let (code, out, err) = run(&config, &["check-config"]);
    assert_eq!(code, 0, "{out}{err}");
    // Values for a site that is not configured are a mistake, said so.
    std::fs::write(
        &t,
        json!({"products": product("a"), "sites": {"c": {"products": product("c")}}}).to_string(),
    )
    .unwrap();
    let (code, out, err) = run(&config, &["check-config"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("`sites.c`: no [[site]] has id `c`"), "{err}");
    h.stop();
}

#[test]
fn the_example_config_passes_and_renders_its_newsletter_for_a_contact_of_each_site() {
    let example = repo().join("config/herald.toml");
    let (code, out, err) = run(&example, &["check-config"]);
    assert_eq!(code, 0, "{out}{err}");

    // The example config on a daemon of its own (free port, fresh store).
    let dir = tempfile::tempdir().unwrap();
    let config = common::example_config(dir.path());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "token = \"change-me-this-is-the-example-admin-token\"",
        &format!("token = \"{TOKEN}\""),
    );
    std::fs::write(&config, text).unwrap();
    let mut h = Herald::start_in(dir, config);
    let r = h.get("/api/v1/templates");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        !r.body.to_string().contains("cannot be rendered"),
        "{}",
        r.body
    );
    for (site, host, lang) in [
        ("shop", "https://shop.example", "en"),
        ("outlet", "https://outlet.shop.example", "pl"),
    ] {
        let email = format!("reader@{site}.test");
        let c = h.post_json(
            "/api/v1/contacts",
            json!({"email": email, "consent": "granted", "site": site, "language": lang}),
        );
        assert!(c.status == 200 || c.status == 201, "{}", c.body);
        let p = h.post_json(
            "/api/v1/templates/newsletter/preview",
            json!({"contact": email}),
        );
        assert_eq!(p.status, 200, "{site}: {}", p.body);
        let html = p.body["html"].as_str().unwrap_or_default();
        assert!(
            html.contains(&format!("{host}/account?hal=")),
            "{site}: no auto-login link on the site's address:\n{html}"
        );
    }
    h.stop();
}

/// Waits until the log has a line containing `what`.
fn wait_log(h: &Herald, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = h.log();
        if log.contains(what) {
            return log;
        }
        assert!(Instant::now() < deadline, "no `{what}` in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_toml_syntax_error_on_sighup_is_logged_once_with_file_and_line() {
    let mut h = Herald::start();
    let c = h.post_json(
        "/api/v1/contacts",
        json!({"email": "kept@example.com", "consent": "granted"}),
    );
    assert!(c.status == 200 || c.status == 201, "{}", c.body);
    // An unclosed array: the TOML parser's recovery then finds an error on
    // nearly every line that follows.
    let good = std::fs::read_to_string(&h.config).unwrap();
    let broken = good.replace(
        "trusted_proxies = [\"127.0.0.1\"]",
        "trusted_proxies = [\"127.0.0.1\"",
    );
    assert_ne!(broken, good);
    let line = broken
        .lines()
        .position(|l| l.starts_with("trusted_proxies"))
        .unwrap()
        + 1;
    std::fs::write(&h.config, &broken).unwrap();
    h.hup();
    let log = wait_log(&h, "reload refused");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TOML syntax error"))
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    // File and line: the error is on the line after the unclosed array's.
    let at = format!("herald.toml:{}:", line + 1);
    assert!(errors[0].contains(&at), "expected {at} in {}", errors[0]);
    assert_eq!(
        log.lines().filter(|l| l.contains("reload refused")).count(),
        1,
        "{log}"
    );
    // The old configuration keeps serving.
    assert_eq!(h.get("/healthz").status, 200);
    let r = h.get("/api/v1/contacts/kept@example.com");
    assert_eq!(r.status, 200, "{}", r.body);

    // Fixed, the next SIGHUP takes it.
    std::fs::write(&h.config, &good).unwrap();
    h.hup();
    wait_log(&h, "configuration reloaded");
    h.stop();
}

/// A daemon delivering `implicit.test` mail to the sink on `port` with the
/// first retry an hour away (one attempt in the test's time).
fn delivering_to(dns: &Dns, port: u16) -> Herald {
    delivering_to_with(dns, port, "")
}

/// [`delivering_to`] with more `[delivery]` settings.
fn delivering_to_with(dns: &Dns, port: u16, delivery: &str) -> Herald {
    let extra = format!(
        r#"
[delivery]
nameserver = "127.0.0.1:{}"
smtp_port = {port}
retry_schedule = ["1h"]
connect_timeout = "5s"
command_timeout = "5s"
{delivery}
[[sender]]
id = "shop"
from = "Shop <news@shop.test>"
"#,
        dns.port
    );
    Herald::start_with(&extra)
}

/// The queue record of message `id` once every recipient has had at least
/// `attempts` attempts.
fn after_attempts(h: &Herald, id: u64, attempts: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = h.get(&format!("/api/v1/queue/{id}"));
        assert_eq!(m.status, 200, "{}", m.body);
        let rc = &m.body["recipients"][0];
        if rc["attempts"].as_u64().unwrap_or(0) >= attempts {
            return rc.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no attempt {attempts}: {}",
            m.body
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The next message's envelope goes with a final dot (RFC 2920). When the
/// server then drops the session, that message is recorded too (deferred,
/// saying its data was not sent), not left in flight.
#[test]
fn a_message_whose_envelope_went_ahead_on_a_lost_session_is_deferred() {
    let dns = Dns::start(&["--host-record=implicit.test,127.0.0.1".into()]);
    let port = common::peers::free_port();
    let mut h = delivering_to_with(&dns, port, "max_connections_per_domain = 1\n");
    // Queued while nothing listens: each is deferred once, then all three
    // are released together to a server that hangs up at the first dot.
    let ids: Vec<u64> = (0..3)
        .map(|i| {
            let r = h.post_json(
                "/api/v1/messages",
                json!({"sender": "shop", "to": [format!("user{i}@implicit.test")],
                       "subject": "Hi", "text": "Hello\n"}),
            );
            assert_eq!(r.status, 202, "{}", r.body);
            r.body["id"].as_u64().unwrap()
        })
        .collect();
    for id in &ids {
        after_attempts(&h, *id, 1);
    }
    let sink = Sink::start_on(port, &["-q", "."]);
    let r = h.post_json("/api/v1/queue/retry", json!({"domain": "implicit.test"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let records: Vec<Value> = ids.iter().map(|id| after_attempts(&h, *id, 2)).collect();
    for rc in &records {
        assert_eq!(rc["state"], "deferred", "{rc}");
        let reply = rc["reply"].as_str().unwrap_or_default();
        assert!(
            reply.contains("the server closed the connection"),
            "{reply}"
        );
    }
    let ahead = records
        .iter()
        .filter(|rc| {
            rc["reply"]
                .as_str()
                .unwrap_or_default()
                .contains("this message was next on the connection, its data not sent")
        })
        .count();
    assert!(ahead >= 1, "no envelope went ahead: {records:?}");
    drop(sink);
    h.stop();
}

/// Sends one message and waits for its first attempt; returns the
/// recipient's record.
fn first_attempt(h: &Herald) -> Value {
    let r = h.post_json(
        "/api/v1/messages",
        json!({"sender": "shop", "to": ["alice@implicit.test"], "subject": "Hi",
               "text": "Hello\n"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["id"].as_u64().unwrap();
    after_attempts(h, id, 1)
}

#[test]
fn a_connection_the_server_closes_is_reported_as_closed_with_the_step() {
    let dns = Dns::start(&["--host-record=implicit.test,127.0.0.1".into()]);
    for (fault, step) in [
        // After the greeting, at EHLO.
        (vec!["-q", "EHLO"], "after the greeting (at EHLO)"),
        // Pipelined MAIL, RCPT, DATA: the hang-up answers DATA.
        (vec!["-q", "DATA"], "at DATA"),
        // Without pipelining, at RCPT.
        (vec!["-p", "-q", "RCPT"], "at RCPT TO"),
        // After the message data, before its reply.
        (vec!["-q", "."], "during DATA"),
    ] {
        let sink = Sink::start(&fault);
        let mut h = delivering_to(&dns, sink.port);
        let rc = first_attempt(&h);
        assert_eq!(rc["state"], "deferred", "{fault:?}: {rc}");
        let reply = rc["reply"].as_str().unwrap_or_default();
        assert!(
            reply.contains("the server closed the connection") && reply.contains(step),
            "{fault:?}: expected the closed connection {step}, got {reply:?}"
        );
        assert!(!reply.contains("Unparseable"), "{fault:?}: {reply}");
        h.stop();
    }
}
