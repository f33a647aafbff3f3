//! The renderer through the library: escaping, language and site fallback,
//! greetings, the signed URLs in a message, load errors with positions, and
//! the bulk renderer's failure counting and back-pressure. (Everything here
//! is public API; `tests/templates.rs` drives the same through the binary.)
use std::path::Path;
use std::sync::Arc;

use herald::contacts::model::{ConsentState, Contact, FieldValue};
use herald::render::{Compiled, Recipient, SendOptions, Templates, bulk};
use herald::snapshot::Snapshot;
use herald::tokens::{SendKind, SendRef, Token};

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A config with two sites and the given template files, loaded.
fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, Snapshot) {
    let dir = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        write(&dir.path().join("templates"), rel, text);
    }
    let cfg = format!(
        r#"[http]
listen = "127.0.0.1:0"
public_url = "https://mail.example/"
[storage]
path = "data"
[admin]
token = "0123456789abcdef0123456789abcdef"
[tracking]
secret = "0123456789abcdef0123456789abcdef"
[paths]
templates = "{}"
[[sender]]
id = "news"
from = "Shop <news@shop.example>"
[[site]]
id = "a"
name = "Shop A"
url = "https://a.example"
default_language = "pl"
currency = "PLN"
autologin_secret = "autologin-secret-0123456789abcdef"
[[site]]
id = "b"
name = "Shop B"
url = "https://b.example"
"#,
        dir.path().join("templates").display()
    );
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, &cfg).unwrap();
    let snap = Snapshot::load(&path).unwrap_or_else(|e| panic!("{e}"));
    (dir, snap)
}

fn contact(id: u64, lang: Option<&str>, site: Option<&str>, first_name: &str) -> Contact {
    let now = chrono::Utc::now();
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "first_name".to_string(),
        FieldValue::Text(first_name.into()),
    );
    Contact {
        id,
        email: format!("c{id}@example.com"),
        consent: ConsentState::Granted,
        phone: None,
        sms_consent: ConsentState::Unknown,
        language: lang.map(String::from),
        site: site.map(String::from),
        fields,
        lists: Default::default(),
        tags: Default::default(),
        created_at: now,
        updated_at: now,
    }
}

fn send() -> SendOptions {
    SendOptions {
        send: SendRef {
            kind: SendKind::Campaign,
            id: 7,
            variant: 0,
        },
        personalize: true,
        tracking: true,
        products: Vec::new(),
        data: serde_json::Value::Null,
        links: Vec::new(),
    }
}

const META: &str = "sender = \"news\"\ndefault_language = \"en\"\n[subject]\nen = \"Hi {{ contact.first_name }}\"\n";
const META3: &str = "sender = \"news\"\ndefault_language = \"en\"\n[subject]\nen = \"Hi {{ contact.first_name }}\"\npl = \"Cześć {{ contact.first_name }}\"\nde = \"Hallo\"\n";

#[test]
fn coupon_renders_and_the_occurrence_names_the_message() {
    let (_d, snap) = setup(&[
        ("t/template.toml", META),
        (
            "t/body.en.html",
            "<html><body><p>{% if coupon %}CODE={{ coupon }}{% else %}NOCODE{% endif %}</p></body></html>",
        ),
    ]);
    let t = snap.templates.get("t").unwrap().clone();
    let c = Compiled::new(t, &snap.config, send()).unwrap();
    let plain = Recipient::new(contact(5, Some("en"), Some("a"), "Ann"));
    let r = c.render(&plain).unwrap();
    assert!(r.html.contains("NOCODE"), "{}", r.html);
    assert_eq!(r.message_id, "c7.0.5@shop.example");
    let mut with = plain.clone();
    with.coupon = Some("W<1>".into());
    with.occurrence = Some(3);
    let r = c.render(&with).unwrap();
    assert!(r.html.contains("CODE=W&lt;1&gt;"), "{}", r.html);
    assert_eq!(r.message_id, "c7.0.5.0000000000000003@shop.example");
    assert_eq!(c.render(&with).unwrap().message_id, r.message_id);
}

#[test]
fn a_contact_named_script_stays_inert() {
    let (_d, snap) = setup(&[
        ("t/template.toml", META),
        (
            "t/body.en.html",
            "<html><body><p>{{ greeting }}</p><p title=\"{{ contact.first_name }}\">{{ contact.first_name }}</p></body></html>",
        ),
    ]);
    let t = snap.templates.get("t").unwrap().clone();
    let c = Compiled::new(t, &snap.config, send()).unwrap();
    let evil = "<script>alert(\"x\")</script>";
    let r = c
        .render(&Recipient::new(contact(1, Some("en"), None, evil)))
        .unwrap();
    assert!(!r.html.contains("<script>"), "{}", r.html);
    assert!(
        r.html
            .contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"),
        "{}",
        r.html
    );
    // Text and subject are not HTML: they carry the name as written.
    assert_eq!(r.subject, format!("Hi {evil}"));
    assert!(r.text.contains(evil), "{}", r.text);
}

#[test]
fn language_falls_back_from_contact_to_site_to_template() {
    let (_d, snap) = setup(&[
        ("t/template.toml", META3),
        (
            "t/body.en.html",
            "<html><body>EN {{ greeting }}</body></html>",
        ),
        (
            "t/body.pl.html",
            "<html><body>PL {{ greeting }}</body></html>",
        ),
        ("t/sites/b/body.de.html", "<html><body>B-DE</body></html>"),
        (
            "t/sites/b/template.toml",
            "[subject]\nde = \"B {{ site.name }}\"\n",
        ),
    ]);
    let t = snap.templates.get("t").unwrap().clone();
    let c = Compiled::new(t, &snap.config, send()).unwrap();
    let r = |lang: Option<&str>, site: Option<&str>| {
        c.render(&Recipient::new(contact(1, lang, site, "Ann")))
            .unwrap()
    };
    // The contact's own language.
    assert!(
        r(Some("pl"), Some("b"))
            .html
            .contains("PL Dzień dobry, Ann,")
    );
    // No German body for site a: its default language (pl).
    let x = r(Some("de"), Some("a"));
    assert!(x.html.contains("PL "), "{}", x.html);
    assert_eq!(x.language, "pl");
    // Site b has its own German body and subject.
    let x = r(Some("de"), Some("b"));
    assert!(x.html.contains("B-DE"), "{}", x.html);
    assert_eq!(x.subject, "B Shop B");
    assert_eq!(x.site.as_deref(), Some("b"));
    // No language and a site without a default: the template's.
    let x = r(None, Some("b"));
    assert!(x.html.contains("EN Hello Ann,"), "{}", x.html);
    // Unknown language, no site: the first site (a) is the default → pl.
    assert!(r(Some("fr"), None).html.contains("PL "));
}

#[test]
fn neutral_greeting_without_name_or_personalisation() {
    let (_d, snap) = setup(&[
        ("t/template.toml", META),
        ("t/body.en.html", "<html><body>{{ greeting }}</body></html>"),
    ]);
    let t = snap.templates.get("t").unwrap().clone();
    let c = Compiled::new(t.clone(), &snap.config, send()).unwrap();
    let r = c
        .render(&Recipient::new(contact(1, Some("en"), Some("b"), "  ")))
        .unwrap();
    assert!(r.html.contains("Hello,"), "{}", r.html);
    let mut o = send();
    o.personalize = false;
    let c = Compiled::new(t, &snap.config, o).unwrap();
    let r = c
        .render(&Recipient::new(contact(1, Some("en"), Some("b"), "Ann")))
        .unwrap();
    assert!(
        r.html.contains("Hello,") && !r.html.contains("Ann"),
        "{}",
        r.html
    );
}

#[test]
fn urls_in_context_carry_signed_tokens_for_this_message() {
    let (_d, snap) = setup(&[
        ("t/template.toml", META),
        (
            "t/body.en.html",
            "<html><body><a href=\"https://a.example/x\">x</a> U={{ unsubscribe_url }} V={{ view_in_browser_url }} L={{ autologin_url('https://a.example/account') }}</body></html>",
        ),
    ]);
    let t = snap.templates.get("t").unwrap().clone();
    let c = Compiled::new(t, &snap.config, send()).unwrap();
    let r = c
        .render(&Recipient::new(contact(42, Some("en"), Some("a"), "Ann")))
        .unwrap();
    let keys = &snap.config.tracking.keys;
    let after = |p: &str| -> String {
        r.html
            .split(p)
            .nth(1)
            .unwrap()
            .split([' ', '<', '"'])
            .next()
            .unwrap()
            .to_string()
    };
    let m = herald::tokens::MessageRef {
        send: send().send,
        contact: 42,
    };
    assert_eq!(
        keys.verify(&after("U=https://mail.example/u/")),
        Some(Token::Unsubscribe(m))
    );
    // View and click tokens also carry the send time (auto-login window).
    assert!(matches!(
        keys.verify(&after("V=https://mail.example/v/")),
        Some(Token::View(x, Some(_))) if x == m
    ));
    assert!(matches!(
        keys.verify(&after("https://mail.example/c/")),
        Some(Token::Click(x, 0, Some(_))) if x == m
    ));
    assert_eq!(
        keys.verify(&after("https://mail.example/o/")),
        Some(Token::Open(m))
    );
    let login = html_escape::decode_html_entities(&after("L=")).into_owned();
    assert!(
        login.starts_with("https://a.example/account?hal=ey"),
        "{login}"
    );
    // Auto-login to another host is refused: the token would leak.
    let (_d2, snap2) = setup(&[
        ("t/template.toml", META),
        (
            "t/body.en.html",
            "<html><body>{{ autologin_url('https://evil.example/') }}</body></html>",
        ),
    ]);
    let t = snap2.templates.get("t").unwrap().clone();
    let c = Compiled::new(t, &snap2.config, send()).unwrap();
    let e = c
        .render(&Recipient::new(contact(1, Some("en"), Some("a"), "A")))
        .unwrap_err();
    assert!(e.0.contains("not on the site's address"), "{}", e.0);
    assert_eq!(r.message_id, "c7.0.42@shop.example");
}

#[test]
fn load_errors_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let tdir = dir.path().join("templates");
    write(&tdir, "bad/template.toml", META);
    write(
        &tdir,
        "bad/body.en.html",
        "<p>\n  {{ contact.first_name }\n</p>",
    );
    write(&tdir, "unknown/template.toml", META);
    write(&tdir, "unknown/body.en.html", "<p>\n{{ greting }}</p>");
    write(
        &tdir,
        "nosubject/template.toml",
        "sender = \"news\"\ndefault_language = \"en\"\n",
    );
    write(&tdir, "nosubject/body.en.html", "<p>x</p>");
    write(
        &tdir,
        "nosender/template.toml",
        "sender = \"nobody\"\ndefault_language = \"en\"\nsubjekt = 1\n[subject]\nen = \"x\"\n",
    );
    write(&tdir, "nosender/body.en.html", "<p>x</p>");
    let senders = vec![Arc::new(herald::config::Sender {
        id: "news".into(),
        from: "n@shop.example".into(),
        from_address: "n@shop.example".into(),
        domain: "shop.example".into(),
        return_path: "n@shop.example".into(),
        bounce_domain: None,
        helo: "shop.example".into(),
        require_tls: false,
        rate_per_second: None,
        rate_per_hour: None,
        unsubscribe_mailto: None,
        dkim: vec![],
        relay: None,
        source_ip: None,
        warmup: None,
    })];
    let greetings = [(
        "en".to_string(),
        herald::config::Greeting {
            personal: "Hi {name}".into(),
            neutral: "Hi".into(),
        },
    )]
    .into_iter()
    .collect();
    let t = Templates::load(&tdir, &senders, &[], &greetings);
    assert!(t.loaded.is_empty(), "{:?}", t.loaded.keys());
    let all: Vec<String> = t.errors().map(|e| e.to_string()).collect();
    let all = all.join("\n");
    assert!(
        all.contains("bad/body.en.html:2:") && all.contains("template syntax"),
        "{all}"
    );
    assert!(
        all.contains("unknown/body.en.html:2:4: unknown variable `greting`"),
        "{all}"
    );
    assert!(
        all.contains("`subject.en`: ") && all.contains("has no subject"),
        "{all}"
    );
    assert!(
        all.contains("nosender/template.toml:1:10: `sender`: no [[sender]] has id `nobody`"),
        "{all}"
    );
    assert!(
        all.contains("nosender/template.toml:3:1: `subjekt`: unknown field"),
        "{all}"
    );
}

#[test]
fn bulk_reports_failed_recipients_and_never_runs_more_than_three_batches_ahead() {
    use std::ops::ControlFlow;
    use std::sync::atomic::{AtomicU64, Ordering};
    // Site b has no auto-login secret: its contacts fail to render.
    let (_d, snap) = setup(&[
        ("t/template.toml", META),
        (
            "t/body.en.html",
            "<html><body>{{ autologin_url('https://a.example/x') }}</body></html>",
        ),
    ]);
    let t = snap.templates.get("t").unwrap().clone();
    let c = Compiled::new(t, &snap.config, send()).unwrap();
    let pool = bulk::pool(2).unwrap();
    let pulled = AtomicU64::new(0);
    let input = (0..1000u64).map(|i| {
        pulled.fetch_add(1, Ordering::SeqCst);
        Recipient::new(contact(
            i,
            Some("en"),
            Some(if i % 4 == 0 { "b" } else { "a" }),
            "A",
        ))
    });
    let mut seen = 0u64;
    let mut failed = Vec::new();
    let totals = bulk::run(
        &c,
        &pool,
        50,
        input,
        || 0,
        |batch| {
            // The renderer may be at most one batch in the channel and one
            // being rendered ahead of the one handed over.
            seen += batch.len() as u64;
            assert!(pulled.load(Ordering::SeqCst) <= seen + 100, "ran ahead");
            for o in &batch {
                if let bulk::Outcome::Failed { contact, error, .. } = o {
                    failed.push(*contact);
                    assert!(error.contains("no autologin_secret"), "{error}");
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
            ControlFlow::Continue(())
        },
    );
    assert_eq!(totals.built, 750);
    assert_eq!(totals.failed, 250);
    assert_eq!(totals.batches, 20);
    assert!(failed.iter().all(|id| id % 4 == 0) && failed.len() == 250);

    // Breaking stops the run after that batch.
    let n = bulk::run(
        &c,
        &pool,
        50,
        (0..1000u64).map(|i| Recipient::new(contact(i, Some("en"), Some("a"), "A"))),
        || 0,
        |_| ControlFlow::Break(()),
    );
    assert_eq!(n.batches, 1);
}
