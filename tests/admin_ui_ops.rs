//! The admin UI's operations pages over real HTTP: templates (list, page
//! with its sandboxed preview, the frame's own policy, a test send that
//! reaches a real SMTP peer), the delivery queue (status, a domain, a
//! message, retry and purge for admins only), users (admin only; the last
//! admin kept) and the activity log.

mod common;

use std::time::Duration;

use common::Herald;
use common::peers::{Dns, Sink, message_of};
use common::ui::UiSession;
use serde_json::json;

const PASSWORD: &str = "a long enough password";

/// A page's text, with the `/` minijinja escapes (`&#x2f;`) as a browser
/// reads it.
fn page(r: &common::Reply) -> String {
    r.text().replace("&#x2f;", "/")
}

/// A daemon with one template, `ops` (transactional, en and pl, a
/// `<script>` in its body and in its sample data), one that does not load
/// (`broken`), a sender, and mail
/// for `example.test` going to `sink` (`defer.test` to a closed port).
fn daemon(dns: &Dns, sink: &Sink) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    common::write(
        &t,
        "ops/template.toml",
        "description = \"Ops <b>test</b>\"\nsender = \"newsletter\"\ndefault_language = \"en\"\nkind = \"transactional\"\n[subject]\nen = \"Hello {{ data.name }}\"\npl = \"Cześć {{ data.name }}\"\n",
    );
    common::write(
        &t,
        "ops/body.en.html",
        "<!DOCTYPE html><html><body><p style=\"color:#c00\">Hello {{ data.name }}, in English.</p><script>document.title='ran'</script></body></html>",
    );
    common::write(
        &t,
        "ops/body.pl.html",
        "<!DOCTYPE html><html><body><p>Cześć {{ data.name }}, po polsku.</p></body></html>",
    );
    common::write(
        &t,
        "ops/sample.json",
        r#"{"contact": {"email": "sample@example.com", "language": "en"}, "data": {"name": "<script>x</script>"}}"#,
    );
    common::write(&t, "broken/template.toml", "default_language = \"en\"\n");
    let config = dir.path().join("herald.toml");
    let extra = format!(
        "[paths]\ntemplates = \"templates\"\n[delivery]\nnameserver = \"127.0.0.1:{}\"\nsmtp_port = {}\n[[sender]]\nid = \"newsletter\"\nfrom = \"Example Shop <news@shop.example>\"\n",
        dns.port, sink.port
    );
    std::fs::write(
        &config,
        common::config_text(&dir.path().join("data"), &extra),
    )
    .unwrap();
    Herald::start_in(dir, config)
}

fn peers() -> (Dns, Sink) {
    let dns = Dns::start(&[
        "--mx-host=example.test,mx.example.test,10".into(),
        "--host-record=mx.example.test,127.0.0.1".into(),
        "--mx-host=defer.test,mx.defer.test,10".into(),
        "--host-record=mx.defer.test,127.0.0.2".into(),
    ]);
    (dns, Sink::start(&[]))
}

#[test]
fn templates_pages_preview_sandboxed_and_test_send() {
    let (dns, sink) = peers();
    let h = daemon(&dns, &sink);
    let ed = UiSession::new(&h, "ed", "editor");
    let vi = UiSession::new(&h, "vi", "viewer");
    let r = h.post_json(
        "/api/v1/contacts",
        json!({"email": "ann@example.test", "consent": "pending", "language": "pl"}),
    );
    assert!(r.status < 300, "{}", r.body);

    // The list: every template with its languages and problems.
    let list = vi.get("/admin/templates");
    assert_eq!(list.status, 200, "{}", page(&list));
    let html = page(&list);
    assert!(html.contains("href=\"/admin/templates/ops\""), "{html}");
    assert!(html.contains("?lang=pl"), "{html}");
    assert!(html.contains("Ops &lt;b&gt;test&lt;/b&gt;"), "{html}");
    assert!(html.contains("badge failed\">error"), "{html}");
    // A folder that did not load: its page lists its problems.
    let broken = vi.get("/admin/templates/broken");
    assert_eq!(broken.status, 200, "{}", page(&broken));
    assert!(page(&broken).contains("sender"), "{}", page(&broken));
    assert_eq!(vi.get("/admin/templates/nothing").status, 404);

    // One template: the preview in a sandboxed iframe, subject and text
    // beside it; the sample's <script> comes back escaped.
    let pg = vi.get("/admin/templates/ops?lang=en");
    assert_eq!(pg.status, 200, "{}", page(&pg));
    let html = page(&pg);
    let iframe = html
        .split("<iframe")
        .nth(1)
        .and_then(|s| s.split('>').next())
        .expect("an iframe");
    assert!(iframe.contains(" sandbox "), "{iframe}");
    assert!(
        !iframe.contains("allow-scripts") && !iframe.contains("allow-same-origin"),
        "{iframe}"
    );
    assert!(
        iframe.contains("src=\"/admin/templates/ops/frame?lang=en\""),
        "{iframe}"
    );
    assert!(!html.contains("<script>x"), "{html}");
    assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"), "{html}");
    assert!(html.contains("in English."), "the text part: {html}");
    // A viewer gets no test-send form.
    assert!(!html.contains("/admin/templates/ops/test"), "{html}");
    let pl = vi.get("/admin/templates/ops?lang=pl");
    assert!(page(&pl).contains("po polsku."), "{}", page(&pl));

    // The frame: the HTML alone, under the preview policy (no script).
    let frame = vi.get("/admin/templates/ops/frame?lang=en");
    assert_eq!(frame.status, 200, "{}", page(&frame));
    let csp = frame.header("content-security-policy").unwrap_or("");
    assert!(!csp.contains("script-src"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("sandbox"), "{csp}");
    assert!(csp.contains("frame-ancestors 'self'"), "{csp}");
    assert!(csp.contains("style-src 'unsafe-inline'"), "{csp}");
    assert_eq!(frame.header("x-frame-options"), Some("SAMEORIGIN"));
    assert!(page(&frame).contains("style=\"color:#c00\""));
    assert!(page(&frame).contains("&lt;script&gt;x"), "{}", page(&frame));
    // The template's own script is in the body, inert under that policy.
    assert!(page(&frame).contains("<script>document.title"));
    // Every other page stays unframeable.
    assert_eq!(pg.header("x-frame-options"), Some("DENY"));
    // A preview for a real contact.
    let c = vi.get("/admin/templates/ops/frame?contact=ann%40example.test");
    assert_eq!(c.status, 200, "{}", page(&c));
    assert!(page(&c).contains("po polsku."), "{}", page(&c));
    let missing = vi.get("/admin/templates/ops?contact=nobody%40example.test");
    assert_eq!(missing.status, 200);
    assert!(page(&missing).contains("nobody@example.test"));

    // The test send: refused for a viewer, queued for an editor, and it
    // reaches the SMTP peer.
    let fields = [
        ("to", "ann@example.test"),
        ("lang", "en"),
        ("site", ""),
        ("contact", ""),
    ];
    assert_eq!(vi.post("/admin/templates/ops/test", &fields).status, 403);
    let sent = ed.post("/admin/templates/ops/test", &fields);
    assert_eq!(sent.status, 303, "{}", page(&sent));
    let to = sent.location().to_string();
    assert!(to.contains("notice=Test+message+queued"), "{to}");
    let id: u64 = to
        .split("queued=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .and_then(|s| s.parse().ok())
        .expect("the queue id in the redirect");
    let back = ed.get(&to);
    assert!(
        page(&back).contains(&format!("href=\"/admin/queue/{id}\"")),
        "{}",
        page(&back)
    );
    let files = sink.wait_files(1, Duration::from_secs(20));
    let mail = String::from_utf8_lossy(&message_of(&files[0])).to_string();
    assert!(mail.contains("in English."), "{mail}");
    // A test a person sends from the UI is in the activity log (messages
    // sent with the token are not: they are the shop's feed).
    let log = h.get("/api/v1/activity");
    assert!(
        log.body["activity"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["action"] == "POST messages")),
        "{:?}",
        log.body
    );
    // An unknown recipient: the API's refusal, shown on the page.
    let bad = ed.post(
        "/admin/templates/ops/test",
        &[("to", "nobody@example.test")],
    );
    assert_eq!(bad.status, 303);
    assert!(bad.location().contains("problem="), "{}", bad.location());
    // The message's page.
    common::wait_until(
        "the test message delivered",
        Duration::from_secs(20),
        || h.get(&format!("/api/v1/queue/{id}")).body["recipients"][0]["state"] == "delivered",
    );
    let m = vi.get(&format!("/admin/queue/{id}"));
    assert_eq!(m.status, 200);
    assert!(page(&m).contains("ann@example.test") && page(&m).contains("delivered"));
}

#[test]
fn queue_pages_retry_and_purge_are_for_admins() {
    let (dns, sink) = peers();
    let h = daemon(&dns, &sink);
    let root = UiSession::new(&h, "root", "admin");
    let ed = UiSession::new(&h, "ed", "editor");
    let vi = UiSession::new(&h, "vi", "viewer");
    let queue = |to: &str| {
        let r = h.post_json(
            "/api/v1/messages",
            json!({"sender": "newsletter", "to": [to], "subject": "<script>s</script>", "text": "hi"}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        r.body["id"].as_u64().unwrap()
    };
    let a = queue("bob@defer.test");
    let b = queue("cy@defer.test");
    for id in [a, b] {
        common::wait_until("deferred", Duration::from_secs(30), || {
            h.get(&format!("/api/v1/queue/{id}")).body["recipients"][0]["state"] == "deferred"
        });
    }

    let status = vi.get("/admin/queue");
    assert_eq!(status.status, 200, "{}", page(&status));
    let html = page(&status);
    assert!(
        html.contains("href=\"/admin/queue/domains/defer.test\""),
        "{html}"
    );
    assert!(
        !html.contains("/admin/queue/purge"),
        "a viewer gets no forms"
    );
    assert!(page(&root.get("/admin/queue")).contains("/admin/queue/retry"));
    let go = vi.get("/admin/queue?domain=defer.test");
    assert_eq!(go.status, 303);
    assert_eq!(go.location(), "/admin/queue/domains/defer.test");

    // The domain's messages, through the new read endpoint.
    let api = h.get("/api/v1/queue/domains/defer.test?limit=1");
    assert_eq!(api.status, 200, "{}", api.body);
    assert_eq!(api.body["messages"][0]["id"], a);
    assert_eq!(api.body["next"], a);
    let dom = vi.get("/admin/queue/domains/defer.test");
    assert_eq!(dom.status, 200, "{}", page(&dom));
    assert!(page(&dom).contains("bob@defer.test") && page(&dom).contains("cy@defer.test"));
    assert!(page(&dom).contains(&format!("href=\"/admin/queue/{a}\"")));
    let none = vi.get("/admin/queue/domains/example.test");
    assert!(
        page(&none).contains("No message waiting"),
        "{}",
        page(&none)
    );

    let msg = vi.get(&format!("/admin/queue/{a}"));
    assert_eq!(msg.status, 200);
    assert!(page(&msg).contains("bob@defer.test") && page(&msg).contains("deferred"));
    assert_eq!(vi.get("/admin/queue/999999").status, 404);

    // Retry and purge: 403 for an editor and a viewer.
    let id = a.to_string();
    for s in [&ed, &vi] {
        assert_eq!(s.post("/admin/queue/retry", &[("id", &id)]).status, 403);
        let p = s.post(
            "/admin/queue/purge",
            &[("id", &id), ("confirm", "yes"), ("reason", "x")],
        );
        assert_eq!(p.status, 403, "{}", page(&p));
        let p = s.post(
            "/admin/queue/purge",
            &[("domain", "defer.test"), ("confirm", "defer.test")],
        );
        assert_eq!(p.status, 403);
    }
    // An admin retries.
    let r = root.post("/admin/queue/retry", &[("id", &id)]);
    assert_eq!(r.status, 303);
    assert!(
        r.location()
            .starts_with(&format!("/admin/queue/{a}?notice=")),
        "{}",
        r.location()
    );
    let r = root.post("/admin/queue/retry", &[("domain", "defer.test")]);
    assert!(r.location().contains("notice="), "{}", r.location());
    // Purge needs its confirmation.
    let r = root.post("/admin/queue/purge", &[("id", &id)]);
    assert!(r.location().contains("problem="), "{}", r.location());
    let r = root.post(
        "/admin/queue/purge",
        &[("domain", "defer.test"), ("confirm", "other.test")],
    );
    assert!(r.location().contains("problem="), "{}", r.location());
    assert!(h.get(&format!("/api/v1/queue/{a}")).body["finished"].is_null());
    let r = root.post(
        "/admin/queue/purge",
        &[("id", &id), ("confirm", "yes"), ("reason", "bad address")],
    );
    assert_eq!(r.status, 303);
    assert!(r.location().contains("notice=Purged"), "{}", r.location());
    let m = h.get(&format!("/api/v1/queue/{a}"));
    assert_eq!(m.body["recipients"][0]["state"], "failed", "{}", m.body);
    let r = root.post(
        "/admin/queue/purge",
        &[("domain", "defer.test"), ("confirm", "defer.test")],
    );
    assert!(r.location().contains("notice=Purged"), "{}", r.location());
    let m = h.get(&format!("/api/v1/queue/{b}"));
    assert_eq!(m.body["recipients"][0]["state"], "failed", "{}", m.body);

    // The activity log has the admin's retries and purges.
    let act = vi.get("/admin/activity");
    assert_eq!(act.status, 200);
    let html = page(&act);
    assert!(
        html.contains("POST queue_purge") && html.contains("POST queue_retry"),
        "{html}"
    );
    assert!(html.contains("<td>root</td>"), "{html}");
}

#[test]
fn users_are_managed_by_admins_and_the_activity_log_shows_it() {
    let h = Herald::start();
    let root = UiSession::new(&h, "root", "admin");
    let ed = UiSession::new(&h, "ed", "editor");
    let vi = UiSession::new(&h, "vi", "viewer");

    // Only admins see and open the users page.
    assert!(page(&root.get("/admin")).contains("href=\"/admin/users\""));
    assert!(!page(&vi.get("/admin")).contains("href=\"/admin/users\""));
    for s in [&ed, &vi] {
        assert_eq!(s.get("/admin/users").status, 403);
        let add = s.post(
            "/admin/users",
            &[
                ("name", "sneak"),
                ("role", "admin"),
                ("password", PASSWORD),
                ("password2", PASSWORD),
            ],
        );
        assert_eq!(add.status, 403);
        assert_eq!(
            s.post("/admin/users/vi/role", &[("role", "admin")]).status,
            403
        );
    }
    assert_eq!(h.get("/api/v1/users/sneak").status, 404);
    let pg = root.get("/admin/users");
    assert_eq!(pg.status, 200);
    assert!(page(&pg).contains("id=\"user-ed\""), "{}", page(&pg));

    // Add: the passwords must agree.
    let r = root.post(
        "/admin/users",
        &[
            ("name", "newbie"),
            ("role", "viewer"),
            ("password", PASSWORD),
            ("password2", "something else entirely"),
        ],
    );
    assert!(r.location().contains("problem="), "{}", r.location());
    assert_eq!(h.get("/api/v1/users/newbie").status, 404);
    let r = root.post(
        "/admin/users",
        &[
            ("name", "newbie"),
            ("role", "viewer"),
            ("password", PASSWORD),
            ("password2", PASSWORD),
        ],
    );
    assert_eq!(r.status, 303);
    assert!(r.location().contains("notice="), "{}", r.location());
    assert_eq!(h.get("/api/v1/users/newbie").body["role"], "viewer");
    // The API's refusal (a short password) comes back as the problem.
    let r = root.post(
        "/admin/users",
        &[
            ("name", "shorty"),
            ("role", "viewer"),
            ("password", "x"),
            ("password2", "x"),
        ],
    );
    assert!(r.location().contains("problem="), "{}", r.location());

    // Role, password, removal.
    let r = root.post("/admin/users/newbie/role", &[("role", "editor")]);
    assert!(r.location().contains("notice="), "{}", r.location());
    assert_eq!(h.get("/api/v1/users/newbie").body["role"], "editor");
    let fresh = "another long enough password";
    let r = root.post(
        "/admin/users/newbie/password",
        &[("password", fresh), ("password2", fresh)],
    );
    assert!(r.location().contains("notice="), "{}", r.location());
    assert!(UiSession::login(&h, "newbie", fresh).is_ok());
    assert!(UiSession::login(&h, "newbie", PASSWORD).is_err());
    let r = root.post("/admin/users/newbie/delete", &[]);
    assert!(r.location().contains("problem="), "unconfirmed");
    let r = root.post("/admin/users/newbie/delete", &[("confirm", "yes")]);
    assert!(r.location().contains("notice="), "{}", r.location());
    assert_eq!(h.get("/api/v1/users/newbie").status, 404);

    // The last admin stays an admin.
    let r = root.post("/admin/users/root/role", &[("role", "viewer")]);
    assert!(r.location().contains("problem="), "{}", r.location());
    let shown = root.get(r.location());
    assert!(
        page(&shown).contains("class=\"problem\""),
        "{}",
        page(&shown)
    );
    let r = root.post("/admin/users/root/delete", &[("confirm", "yes")]);
    assert!(r.location().contains("problem="), "{}", r.location());
    assert_eq!(h.get("/api/v1/users/root").body["role"], "admin");

    // The activity log: who did what, objects linked, filtered by object.
    let act = vi.get("/admin/activity");
    assert_eq!(act.status, 200);
    let html = page(&act);
    assert!(html.contains("<td>root</td>"), "{html}");
    assert!(html.contains("DELETE user"), "{html}");
    assert!(
        html.contains("<a href=\"/admin/users#user-newbie\">user:newbie</a>"),
        "{html}"
    );
    let only = vi.get("/admin/activity?object=user%3Anewbie");
    assert_eq!(only.status, 200);
    let html = page(&only);
    assert!(
        html.contains("PATCH user") && html.contains("POST users"),
        "{html}"
    );
    assert!(!html.contains("user:ed<"), "{html}");
    // Paged by `before`: 50 more entries make a second page.
    for i in 0..50 {
        let role = if i % 2 == 0 { "editor" } else { "viewer" };
        let r = h.patch_json("/api/v1/users/vi", json!({"role": role}));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let first = root.get("/admin/activity");
    let older = page(&first)
        .split("href=\"/admin/activity?before=")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("an Older link")
        .to_string();
    let second = root.get(&format!("/admin/activity?before={older}"));
    assert_eq!(second.status, 200);
    assert!(page(&second).contains("POST users"), "{}", page(&second));
    assert!(page(&second).contains(">Newest</a>"));
    assert_eq!(root.get("/admin/activity?before=x").status, 400);
}
