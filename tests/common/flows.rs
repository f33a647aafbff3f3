//! Helpers of the automation tests: a daemon with test templates and flow
//! files relaying to smtp-sink, event times relative to now, the mail a
//! recipient got, a flow's status and counters.

use serde_json::{Value, json};

use super::peers::{Sink, rcpts_of};
use super::{Herald, write};

/// Starts a daemon relaying to `sink`, with the test templates (`m`:
/// marketing, `tx`: transactional; both show what a message is about) and
/// these flows (`config/automations/NAME.toml`).
pub fn start(sink: &Sink, flows: &[(&str, &str)], automation: &str) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    for (name, kind) in [("m", "marketing"), ("tx", "transactional")] {
        write(
            &t,
            &format!("{name}/template.toml"),
            &format!(
                "sender = \"shop\"\ndefault_language = \"en\"\nkind = \"{kind}\"\n[subject]\nen = \"{name} {{{{ data.label }}}}\"\n"
            ),
        );
        write(
            &t,
            &format!("{name}/body.en.html"),
            "<html><body><p>For {{ contact.email }}: {{ data.label }}</p>\
{% if cart %}<p>CART {% for i in cart.items %}{{ i.sku }}x{{ i.quantity }} {% endfor %}</p>{% endif %}\
{% if order %}<p>ORDER {{ order.id }}</p>{% endif %}\
{% if coupon %}<p>COUPON {{ coupon }}</p>{% endif %}\
<p>PRODUCTS {% for p in products %}{{ p.sku }} {% endfor %}</p>\
<p><a href=\"https://shop.example/\">Shop</a></p></body></html>\n",
        );
    }
    let a = dir.path().join("automations");
    std::fs::create_dir_all(&a).unwrap();
    for (name, text) in flows {
        write(&a, &format!("{name}.toml"), text);
    }
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        super::config_text(
            &dir.path().join("data"),
            &format!(
                "[paths]\ntemplates = \"templates\"\nautomations = \"automations\"\n\
[automation]\npoll = \"200ms\"\n{automation}\n\
[[site]]\nid = \"shop\"\nname = \"Example Shop\"\nurl = \"https://shop.example\"\ncurrency = \"EUR\"\n\
[[sender]]\nid = \"shop\"\nfrom = \"Shop <news@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
                sink.port
            ),
        ),
    )
    .unwrap();
    Herald::start_in(dir, config)
}

/// An RFC 3339 time `secs` seconds from now (negative: in the past).
pub fn at(secs: i64) -> String {
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("{secs} seconds"),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Posts events; every one must be accepted (or a duplicate).
pub fn events(h: &Herald, evs: Value) -> Value {
    let r = h.post_json("/api/v1/events", evs);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["rejected"], 0, "{}", r.body);
    r.body
}

/// A granted contact.
pub fn granted(h: &Herald, email: &str) {
    let r = h.post_json(
        "/api/v1/contacts",
        json!({"email": email, "consent": "granted"}),
    );
    assert!(r.status == 201 || r.status == 200, "{r:?}");
}

/// The messages smtp-sink received for `rcpt`, as text.
pub fn mail_to(sink: &Sink, rcpt: &str) -> Vec<String> {
    sink.files()
        .into_iter()
        .filter(|f| rcpts_of(f).iter().any(|r| r == rcpt))
        .map(|f| {
            String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default())
                .replace("=\r\n", "")
                .replace("=\n", "")
        })
        .collect()
}

/// A flow's status.
pub fn status(h: &Herald, name: &str) -> Value {
    let r = h.get(&format!("/api/v1/automations/{name}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

/// A counter of a flow's step (`None`: the flow-wide counters).
pub fn count(s: &Value, step: Option<usize>, name: &str) -> u64 {
    match step {
        Some(i) => s["steps"][i]["counts"][name].as_u64().unwrap_or(0),
        None => s["counts"][name].as_u64().unwrap_or(0),
    }
}
