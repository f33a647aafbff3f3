//! Templates through the real binary: the example templates rendered offline
//! against golden files and parsed by Python's `email` package; check-config
//! errors with positions; the templates and products API with previews; a
//! template message delivered through the queue to smtp-sink, tracked and
//! DKIM-signed.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::peers::{Dns, Sink, dkim_verify, keygen, message_of, py_email};
use common::{Herald, run};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example_config() -> PathBuf {
    repo().join("config/herald.toml")
}

/// Replaces what legitimately changes between runs or configs (signed
/// tokens, auto-login JWTs) with placeholders.
fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        // The earliest of "hal=" and a Herald link "/{u,v,o,c}/".
        let next = ["hal=", "/u/", "/v/", "/o/", "/c/"]
            .iter()
            .filter_map(|m| rest.find(m).map(|i| (i, *m)))
            .min();
        let Some((i, m)) = next else { break };
        out.push_str(&rest[..i + m.len()]);
        rest = &rest[i + m.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        if end >= 16 {
            out.push_str("TOKEN");
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// Every (template, site, language) the golden files cover.
const CASES: &[(&str, Option<&str>, &str)] = &[
    ("newsletter", None, "en"),
    ("newsletter", None, "pl"),
    ("abandoned_cart", None, "en"),
    ("abandoned_cart", None, "pl"),
    ("birthday", None, "en"),
    ("birthday", None, "pl"),
    ("birthday", Some("outlet"), "pl"),
    ("back_in_stock", None, "en"),
    ("back_in_stock", None, "pl"),
    ("review_request", None, "en"),
    ("review_request", None, "pl"),
    ("confirm_subscription", None, "en"),
    ("confirm_subscription", None, "pl"),
    ("welcome", None, "en"),
    ("welcome", None, "pl"),
    ("order_followup", None, "en"),
    ("order_followup", None, "pl"),
    ("delivery_check", None, "en"),
    ("delivery_check", None, "pl"),
    ("win_back", None, "en"),
    ("win_back", None, "pl"),
    ("related_products", None, "en"),
    ("related_products", None, "pl"),
];

fn render_json(config: &Path, name: &str, site: Option<&str>, lang: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "templates",
        "render",
        name,
        "--language",
        lang,
        "--format",
        "json",
    ];
    if let Some(s) = site {
        args.extend(["--site", s]);
    }
    args.extend(extra);
    let (code, out, err) = run(config, &args);
    assert_eq!(code, 0, "{name} {lang}: {err}");
    serde_json::from_str(&out).unwrap()
}

/// The example templates render to their golden files (regenerate with
/// `UPDATE_GOLDEN=1 cargo test --test templates`), and each built message
/// parses cleanly with Python's `email` package, whose decoded parts are
/// exactly what was rendered.
#[test]
fn example_templates_match_golden_files_and_parse_as_mime() {
    let golden = repo().join("tests/golden/templates");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for (name, site, lang) in CASES {
        let r = render_json(&example_config(), name, *site, lang, &[]);
        assert_eq!(r["language"], *lang, "{name}");
        let base = match site {
            Some(s) => format!("{name}.{s}.{lang}"),
            None => format!("{name}.{lang}"),
        };
        for (ext, key) in [("subject", "subject"), ("html", "html"), ("txt", "text")] {
            let got = normalize(r[key].as_str().unwrap());
            let file = golden.join(format!("{base}.{ext}"));
            if update {
                std::fs::create_dir_all(&golden).unwrap();
                std::fs::write(&file, &got).unwrap();
            } else {
                let want = std::fs::read_to_string(&file).unwrap_or_else(|e| {
                    panic!("{}: {e} (run with UPDATE_GOLDEN=1)", file.display())
                });
                if want != got {
                    mismatches.push(format!(
                        "{}:\n--- want\n{want}\n--- got\n{got}",
                        file.display()
                    ));
                }
            }
        }

        // The MIME message, parsed independently.
        let mime = r["mime"].as_str().unwrap();
        let p = py_email(mime.as_bytes());
        assert_eq!(p["defects"], json!([]), "{base}: {p}");
        assert_eq!(p["type"], "multipart/alternative", "{base}");
        let parts = p["parts"].as_array().unwrap();
        assert_eq!(parts.len(), 2, "{base}: {p}");
        let nl = |s: &str| s.replace("\r\n", "\n");
        assert_eq!(parts[0]["type"], "text/plain");
        assert_eq!(parts[1]["type"], "text/html");
        for part in parts {
            assert_eq!(part["charset"], "utf-8", "{base}");
        }
        assert_eq!(
            nl(parts[0]["content"].as_str().unwrap()),
            nl(r["text"].as_str().unwrap()),
            "{base}"
        );
        assert_eq!(
            nl(parts[1]["text"].as_str().unwrap()),
            nl(r["html"].as_str().unwrap()),
            "{base}"
        );
        // The HTML part travels as 7bit ASCII, the text part as needed.
        assert_eq!(parts[1]["cte"], "7bit", "{base}");
        assert!(parts[1]["content"].as_str().unwrap().is_ascii(), "{base}");
        let h = &p["headers"];
        assert_eq!(h["subject"], r["subject"], "{base}");
        assert_eq!(h["from"], "Example Shop <news@shop.example>", "{base}");
        assert!(
            h["message-id"]
                .as_str()
                .unwrap()
                .ends_with("@shop.example>"),
            "{base}"
        );
        assert!(h["date"].is_string(), "{base}");
        assert!(h["feedback-id"].as_str().unwrap().contains(name), "{base}");
        let marketing = !matches!(
            *name,
            "confirm_subscription" | "order_followup" | "delivery_check"
        );
        assert_eq!(h["list-unsubscribe"].is_string(), marketing, "{base}: {h}");
        if marketing {
            assert!(
                h["list-unsubscribe"]
                    .as_str()
                    .unwrap()
                    .starts_with("<http://127.0.0.1:8025/u/"),
                "{h}"
            );
            assert_eq!(h["list-unsubscribe-post"], "List-Unsubscribe=One-Click");
            assert_eq!(h["list-id"], "<newsletter.shop.example>");
        }
        // No raw line in the message is longer than RFC 5322's 998.
        assert!(mime.lines().all(|l| l.len() <= 998), "{base}");
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
}

/// Polish subjects and names survive encoding; the derived text part keeps
/// the loop, prices are in the reader's format; the outlet site's override
/// and the preheader are used.
#[test]
fn example_templates_render_the_right_content() {
    let c = example_config();
    let r = render_json(&c, "abandoned_cart", None, "pl", &[]);
    assert_eq!(r["subject"], "W koszyku czeka na Ciebie 2 produkty");
    let text = r["text"].as_str().unwrap();
    assert!(text.contains("Dzień dobry, Jan,"), "{text}");
    assert!(
        text.contains("349,90\u{a0}zł") && text.contains("409,80\u{a0}zł"),
        "{text}"
    );
    // The item name with `<3 pary>` is escaped in HTML, plain in text.
    assert!(text.contains("Skarpety merino <3 pary>"), "{text}");
    let html = r["html"].as_str().unwrap();
    assert!(html.contains("Skarpety merino &lt;3 pary&gt;"), "{html}");
    // CSS from <style> is inlined; the media query stays in a <style>.
    assert!(
        html.contains("style=\"") && html.contains("@media"),
        "{html}"
    );
    let en = render_json(&c, "abandoned_cart", None, "en", &[]);
    assert!(en["text"].as_str().unwrap().contains("PLN\u{a0}349.90"));
    assert_eq!(en["subject"], "You left 2 items in your cart");

    let outlet = render_json(&c, "birthday", Some("outlet"), "pl", &[]);
    assert_eq!(outlet["subject"], "Urodzinowy rabat w Example Outlet");
    assert_eq!(outlet["site"], "outlet");
    assert!(outlet["text"].as_str().unwrap().contains("HB-7K2Q"));
    // The outlet has no English body: the template's own is used.
    let outlet_en = render_json(&c, "birthday", Some("outlet"), "en", &[]);
    assert_eq!(outlet_en["site"], Value::Null);
    assert_eq!(outlet_en["subject"], "Happy birthday, Ola! A gift inside");

    let n = render_json(&c, "newsletter", None, "pl", &["--tracking"]);
    assert_eq!(
        n["preheader"],
        "3 propozycji dla Ciebie i darmowa dostawa w tym tygodniu"
    );
    let html = n["html"].as_str().unwrap();
    // MJML compiled; preheader hidden first in the body; links tracked; pixel.
    assert!(html.contains("display:none"), "{html}");
    assert!(html.contains("http://127.0.0.1:8025/c/"), "{html}");
    assert!(html.contains("http://127.0.0.1:8025/o/"), "{html}");
    assert!(
        !html.contains("href=\"https://shop.example/p/shoe-42\""),
        "{html}"
    );
    // Herald's own links are not tracked.
    assert!(html.contains("href=\"http://127.0.0.1:8025/u/"), "{html}");
    // Personalisation off: the neutral greeting.
    let neutral = render_json(&c, "newsletter", None, "en", &["--no-personalize"]);
    assert!(
        neutral["text"].as_str().unwrap().contains("Hello,\n"),
        "{}",
        neutral["text"]
    );
}

use common::write;

/// The config used by daemon tests: the example templates plus whatever the
/// test adds, a `newsletter` sender and the example's two sites.
fn daemon_config(dir: &Path, extra: &str) -> PathBuf {
    let templates = dir.join("templates");
    for e in walk(&repo().join("templates")) {
        let rel = e.strip_prefix(repo().join("templates")).unwrap();
        write(
            &templates,
            rel.to_str().unwrap(),
            &std::fs::read_to_string(&e).unwrap(),
        );
    }
    let config = dir.join("herald.toml");
    let text = common::config_text(
        &dir.join("data"),
        &format!(
            r#"
[paths]
templates = "templates"
{extra}
[[site]]
id = "shop"
name = "Example Shop"
url = "https://shop.example"
default_language = "en"
currency = "USD"
autologin_secret = "test-autologin-secret-for-the-template-tests-0123"
[[site]]
id = "outlet"
name = "Example Outlet"
url = "https://outlet.shop.example"
default_language = "pl"
currency = "PLN"
autologin_secret = "test-outlet-autologin-secret-for-the-tests-0123"
"#
        ),
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

const SENDER: &str =
    "[[sender]]\nid = \"newsletter\"\nfrom = \"Example Shop <news@shop.example>\"\n";

#[test]
fn check_config_reports_every_template_problem_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = daemon_config(dir.path(), SENDER);
    let t = dir.path().join("templates");
    write(
        &t,
        "broken/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\n[subject]\nen = \"Hi {{ contact.first_name\"\n",
    );
    write(
        &t,
        "broken/body.en.html",
        "<p>\n  {% for p in products %}{{ p.name }}\n</p>",
    );
    write(
        &t,
        "typo/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\nlanguage = \"x\"\n[subject]\nen = \"x\"\n",
    );
    write(&t, "typo/body.en.html", "<p>{{ greting }}</p>");
    write(
        &t,
        "nosender/template.toml",
        "sender = \"promo\"\ndefault_language = \"pl\"\n[subject]\npl = \"x\"\n",
    );
    write(&t, "nosender/body.en.html", "<p>x</p>");
    write(&t, "nosender/sites/nowhere/body.pl.html", "<p>x</p>");
    let (code, out, err) = run(&config, &["check-config"]);
    assert_eq!(code, 2, "{out}{err}");
    for want in [
        "broken/template.toml [subject.en]:1:",
        "broken/body.en.html:2:",
        "typo/template.toml:3:1: `language`: unknown field",
        "typo/body.en.html:1:7: unknown variable `greting`",
        "nosender/template.toml:1:10: `sender`: no [[sender]] has id `promo`",
        "no [[site]] has id `nowhere`",
        "nosender/template.toml:2:20: `default_language`: there is no body.pl.html",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // The good example templates are not blamed.
    assert!(!err.contains("newsletter/"), "{err}");
}

#[test]
fn templates_api_lists_previews_and_refuses_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let config = daemon_config(dir.path(), SENDER);
    let tdir = dir.path().join("templates");
    write(&tdir, "broken/template.toml", "default_language = \"en\"\n");
    let h = Herald::start_in(dir, config);
    assert!(h.log().contains("template not loaded"), "{}", h.log());

    let r = h.get("/api/v1/templates");
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.body["templates"].as_array().unwrap();
    assert_eq!(list.len(), 13, "{}", r.body);
    let broken = list.iter().find(|t| t["name"] == "broken").unwrap();
    assert_eq!(broken["status"], "error");
    assert!(
        broken["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("sender"),
        "{broken}"
    );
    let news = list.iter().find(|t| t["name"] == "newsletter").unwrap();
    assert_eq!(news["status"], "ok");
    assert_eq!(news["languages"], json!(["en", "pl"]));
    // `contact.first_name` is used but no such field exists yet: a warning.
    let bday = h.get("/api/v1/templates/birthday");
    assert!(
        bday.body["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("contact.first_name"),
        "{}",
        bday.body
    );
    h.field("first_name", "text");
    assert_eq!(
        h.get("/api/v1/templates/birthday").body["problems"],
        json!([])
    );

    // Preview with the sample data.
    let p = h.post_json("/api/v1/templates/birthday/preview", json!({}));
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.body["language"], "pl");
    assert!(p.body["html"].as_str().unwrap().contains("HB-7K2Q"));

    // Preview for a real contact named <script>: inert in HTML.
    let c = h.post_json(
        "/api/v1/contacts",
        json!({"email": "eve@example.com", "fields": {"first_name": "<script>alert(1)</script>"}, "language": "de", "site": "outlet", "consent": "granted"}),
    );
    assert!(c.status == 200 || c.status == 201, "{}", c.body);
    let p = h.post_json(
        "/api/v1/templates/birthday/preview",
        json!({"contact": "eve@example.com", "data": {"discount_code": "X1", "discount_percent": 5, "valid_until": "2027-01-01"}, "mime": true}),
    );
    assert_eq!(p.status, 200, "{}", p.body);
    // German is not there: the outlet's default language (pl), the outlet's body.
    assert_eq!(p.body["language"], "pl");
    assert_eq!(p.body["site"], "outlet");
    let html = p.body["html"].as_str().unwrap();
    assert!(
        !html.contains("<script>") && html.contains("&lt;script&gt;"),
        "{html}"
    );
    assert!(
        p.body["text"]
            .as_str()
            .unwrap()
            .contains("Dzień dobry, <script>alert(1)</script>,")
    );
    let mime = py_email(p.body["mime"].as_str().unwrap().as_bytes());
    assert_eq!(mime["defects"], json!([]));
    assert_eq!(mime["headers"]["to"], "eve@example.com");

    // Featured products from the catalogue, prices in the reader's format.
    let r = h.post_json(
        "/api/v1/products",
        json!([{"sku": "A-1", "name": "Żółta kurtka", "price": "1299.5", "currency": "PLN", "url": "https://shop.example/p/a-1", "image_url": "https://shop.example/i/a-1.jpg"},
               {"sku": "B-2", "name": "Cap", "price": "10", "currency": "EUR"}]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let p = h.post_json(
        "/api/v1/templates/newsletter/preview",
        json!({"products": ["A-1", "B-2"], "language": "pl"}),
    );
    assert_eq!(p.status, 200, "{}", p.body);
    let text = p.body["text"].as_str().unwrap();
    assert!(
        text.contains("Żółta kurtka")
            && text.contains("1\u{a0}299,50\u{a0}zł")
            && text.contains("10,00\u{a0}€"),
        "{text}"
    );
    assert_eq!(h.get("/api/v1/products/A-1").body["name"], "Żółta kurtka");
    assert_eq!(h.get("/api/v1/products").body["total"], 2);

    // Refusals, each naming what is wrong.
    let bad = [
        (
            "/api/v1/templates/nope/preview",
            json!({}),
            404,
            "not_found",
        ),
        (
            "/api/v1/templates/broken/preview",
            json!({}),
            422,
            "template_not_loaded",
        ),
        (
            "/api/v1/templates/newsletter/preview",
            json!({"products": ["NOPE"]}),
            422,
            "unknown_product",
        ),
        (
            "/api/v1/templates/newsletter/preview",
            json!({"contact": "ghost@example.com"}),
            404,
            "not_found",
        ),
        (
            "/api/v1/templates/newsletter/preview",
            json!({"language": "x y"}),
            422,
            "invalid_language",
        ),
        (
            "/api/v1/templates/newsletter/preview",
            json!({"colour": "red"}),
            400,
            "invalid_body",
        ),
        (
            "/api/v1/products",
            json!({"sku": "X", "name": "n", "price": "ten", "currency": "EUR"}),
            422,
            "invalid_product",
        ),
        (
            "/api/v1/products",
            json!({"sku": "X", "name": "n", "price": "1", "currency": "euro"}),
            422,
            "invalid_product",
        ),
        (
            "/api/v1/products",
            json!({"sku": "X", "name": "n", "price": "1", "currency": "EUR", "url": "javascript:alert(1)"}),
            422,
            "invalid_product",
        ),
    ];
    for (path, body, status, code) in bad {
        let r = h.post_json(path, body.clone());
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{path} {body}: {}", r.body);
    }

    // SIGHUP reloads templates: the fixed one loads, a changed subject shows.
    write(
        &tdir,
        "broken/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\n[subject]\nen = \"Fixed {{ site.name }}\"\n",
    );
    write(&tdir, "broken/body.en.html", "<p>{{ greeting }}</p>");
    h.hup();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let p = h.post_json("/api/v1/templates/broken/preview", json!({}));
        if p.status == 200 {
            assert_eq!(p.body["subject"], "Fixed Example Shop", "{}", p.body);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not reloaded: {}",
            p.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A template message through the queue to a real SMTP server: rendered for
/// the contact, links tracked and recorded, the pixel added, List-Unsubscribe
/// signed by DKIM; marketing mail only to granted contacts.
#[test]
fn template_message_is_delivered_tracked_and_signed() {
    let dns = Dns::start(&[
        "--mx-host=example.test,mx.example.test,10".into(),
        "--host-record=mx.example.test,127.0.0.1".into(),
    ]);
    let sink = Sink::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let record = keygen(
        &dir.path().join("herald.toml"),
        "shop.example",
        "ed1",
        "ed25519",
        &dir.path().join("ed1.pem"),
    );
    let config = daemon_config(
        dir.path(),
        &format!(
            "[delivery]\nnameserver = \"127.0.0.1:{}\"\nsmtp_port = {}\n{SENDER}unsubscribe_mailto = \"unsubscribe@shop.example\"\n[[sender.dkim]]\nselector = \"ed1\"\nkey_file = \"ed1.pem\"\n",
            dns.port, sink.port
        ),
    );
    let data = dir.path().join("data");
    let mut h = Herald::start_in(dir, config);
    h.field("first_name", "text");
    for (email, consent) in [
        ("ann@example.test", "granted"),
        ("bob@example.test", "pending"),
    ] {
        let r = h.post_json("/api/v1/contacts", json!({"email": email, "consent": consent, "language": "pl", "site": "shop", "fields": {"first_name": "Anna"}}));
        assert!(r.status < 300, "{}", r.body);
    }
    h.post_json("/api/v1/products", json!({"sku": "SHOE-42", "name": "Buty", "price": "349.9", "currency": "PLN", "url": "https://shop.example/p/shoe-42?ref=mail&x=%2F", "stock": 2}));

    // Marketing mail needs consent.
    let r = h.post_json(
        "/api/v1/messages",
        json!({"template": "back_in_stock", "to": ["bob@example.test"], "products": ["SHOE-42"]}),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "no_consent");
    // Transactional mail does not.
    let r = h.post_json("/api/v1/messages", json!({"template": "confirm_subscription", "to": ["bob@example.test"], "data": {"confirm_url": "http://127.0.0.1/confirm/x"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    let r = h.post_json(
        "/api/v1/messages",
        json!({"template": "back_in_stock", "to": ["ann@example.test"], "products": ["SHOE-42"]}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    // Content fields do not go with a template.
    let r = h.post_json(
        "/api/v1/messages",
        json!({"template": "back_in_stock", "to": ["ann@example.test"], "subject": "x"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    let files = sink.wait_files(2, Duration::from_secs(20));
    assert_eq!(files.len(), 2);
    let msgs: Vec<Vec<u8>> = files.iter().map(|f| message_of(f)).collect();
    let has_lu = |m: &Vec<u8>| String::from_utf8_lossy(m).contains("\r\nList-Unsubscribe: ");
    let promo = msgs
        .iter()
        .find(|m| has_lu(m))
        .expect("the marketing message");
    let confirm = msgs.iter().find(|m| !has_lu(m)).expect("the confirmation");
    assert_eq!(
        dkim_verify(promo, &[("ed1._domainkey.shop.example", &record)]),
        [true]
    );
    let p = py_email(promo);
    assert_eq!(p["defects"], json!([]));
    assert_eq!(p["headers"]["subject"], "Buty znów jest dostępny");
    let lu = p["headers"]["list-unsubscribe"].as_str().unwrap();
    assert!(
        lu.starts_with("<http://127.0.0.1/u/")
            && lu.contains("<mailto:unsubscribe@shop.example?subject=unsubscribe%20"),
        "{lu}"
    );
    let signed: String = String::from_utf8_lossy(promo)
        .split("DKIM-Signature")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(
        signed.contains("List-Unsubscribe:List-Unsubscribe-Post")
            || signed.contains("List-Unsubscribe-Post"),
        "{signed}"
    );
    let html = p["parts"][1]["text"].as_str().unwrap();
    assert!(html.contains("Dzień dobry, Anna,"), "{html}");
    assert!(html.contains("349,90\u{a0}zł"), "{html}");
    assert!(html.contains("Zostało tylko 2 szt."), "{html}");
    assert!(html.contains("src=\"http://127.0.0.1/o/"), "{html}");
    assert!(
        !html.contains("href=\"https://shop.example"),
        "every shop link is tracked: {html}"
    );
    let clicks: Vec<&str> = html
        .split("href=\"http://127.0.0.1/c/")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    assert_eq!(clicks.len(), 2, "{html}");
    // The confirmation mail is transactional and untracked.
    let c = py_email(confirm);
    assert!(!c["parts"][1]["content"].as_str().unwrap().contains("/o/"));
    assert_eq!(
        c["headers"]["subject"],
        "Potwierdź zapis do newslettera Example Shop"
    );

    // The links a click may go to were recorded before the message was queued.
    h.stop();
    let store = herald::store::Store::open(&data).unwrap();
    // The template's transactional send of today (its tag defaults to the
    // template's name), as the click tokens name it.
    let keys = herald::tokens::Keys::new(common::TRACKING_SECRET.as_bytes(), &[]);
    let send = match keys.verify(clicks[0]) {
        Some(herald::tokens::Token::Click(m, _, _)) => m.send,
        other => panic!("{other:?}"),
    };
    assert_eq!(send.kind, herald::send::SendKind::Transactional);
    assert_eq!(send.id, herald::send::model::tag_id("back_in_stock"));
    let links = store.read_blocking(move |v| v.links(&send.key())).unwrap();
    let urls: Vec<(String, bool)> = links
        .iter()
        .map(|(_, l)| (l.url.clone(), l.autologin))
        .collect();
    assert_eq!(
        urls,
        [
            (
                "https://shop.example/p/shoe-42?ref=mail&x=%2F".to_string(),
                false
            ),
            (
                "https://shop.example/p/shoe-42?ref=mail&x=%2F".to_string(),
                true
            ),
        ],
        "{links:?}"
    );
    for t in clicks {
        match keys.verify(t) {
            Some(herald::tokens::Token::Click(m, n, _)) => {
                assert_eq!(m.send, send);
                assert!((n as usize) < links.len());
            }
            other => panic!("{other:?}"),
        }
    }
    store.close();
}

/// The README's auto-login verification snippet accepts the tokens Herald
/// puts in links, and refuses tampered ones and other sites'.
#[test]
fn readme_autologin_snippet_verifies_herald_tokens() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let snippet = readme
        .split("<!-- autologin-snippet -->\n```python\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the README's autologin snippet");
    let r = render_json(&example_config(), "newsletter", None, "en", &[]);
    let html = r["html"].as_str().unwrap();
    let token = html
        .split("hal=")
        .nth(1)
        .and_then(|s| s.split(['"', '&', '<']).next())
        .expect("an auto-login link in the newsletter");
    let secret = "example-autologin-secret-change-me-0123456789";
    let verify = |token: &str, secret: &str, site: &str| -> String {
        let out = std::process::Command::new("/usr/bin/python3")
            .args(["-c", snippet, token, secret, site])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(verify(token, secret, "shop"), "ann@example.com");
    assert_eq!(verify(token, secret, "outlet"), "None");
    assert_eq!(verify(token, "another-secret", "shop"), "None");
    let mut forged = token.to_string();
    let mid = forged.find('.').unwrap() + 3;
    let c = if &forged[mid..mid + 1] == "A" {
        "B"
    } else {
        "A"
    };
    forged.replace_range(mid..mid + 1, c);
    assert_eq!(verify(&forged, secret, "shop"), "None");
}
