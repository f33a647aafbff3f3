//! The admin UI's dashboard, campaign and automation pages over real
//! HTTP, with a real SMTP peer (smtp-sink): the dashboard's figures and
//! alerts, a campaign made through the form, started and completed, its
//! report and CSV, the owner filter, duplicate, delete, viewers refused on
//! every form, escaping; an example flow's page, pause and resume.

mod common;

use std::time::Duration;

use common::peers::Sink;
use common::ui::UiSession;
use common::{Herald, wait_until, write};
use serde_json::{Value, json};

const NEWS_HTML: &str = "<html><body><p>Hello {{ contact.email }}</p>\
<p><a href=\"https://shop.example/sale\">The sale</a></p>\
<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></body></html>\n";

/// A daemon relaying to `sink` with the marketing template `news`.
fn start(sink: &Sink) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    write(
        &t,
        "news/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\nkind = \"marketing\"\n[subject]\nen = \"News of the week\"\n",
    );
    write(&t, "news/body.en.html", NEWS_HTML);
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        common::config_text(
            &dir.path().join("data"),
            &format!(
                "[paths]\ntemplates = \"templates\"\n[[sender]]\nid = \"newsletter\"\nfrom = \"Shop <news@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
                sink.port
            ),
        ),
    )
    .unwrap();
    Herald::start_in(dir, config)
}

fn campaign(h: &Herald, id: u64) -> Value {
    let r = h.get(&format!("/api/v1/campaigns/{id}"));
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

/// The campaign id a redirect leads to.
fn id_of(location: &str) -> u64 {
    let rest = location
        .strip_prefix("/admin/campaigns/")
        .unwrap_or_else(|| panic!("not a campaign page: {location}"));
    rest.split('?').next().unwrap().parse().unwrap()
}

fn create(s: &UiSession, fields: &[(&str, &str)]) -> u64 {
    let r = s.post("/admin/campaigns", fields);
    assert_eq!(r.status, 303, "{}", r.text());
    id_of(r.location())
}

#[test]
fn campaigns_through_the_forms() {
    let sink = Sink::start(&[]);
    let h = start(&sink);
    h.granted_contacts(3);
    let ed = UiSession::new(&h, "eddie", "editor");
    let vi = UiSession::new(&h, "vera", "viewer");
    let ad = UiSession::new(&h, "ana", "admin");

    // The dashboard: figures, chart, no template alert.
    let d = vi.get("/admin");
    assert_eq!(d.status, 200);
    for s in [
        "Sent",
        "Delivered",
        "Complaints",
        "Revenue",
        "<svg",
        "Running campaigns",
        "Queue",
    ] {
        assert!(d.text().contains(s), "{s} missing:\n{}", d.text());
    }
    assert!(!d.text().contains("failed to load"), "{}", d.text());
    assert!(d.text().contains("has no DKIM key"), "{}", d.text());

    // The form.
    let f = ed.get("/admin/campaigns/new");
    assert_eq!(f.status, 200);
    for s in [
        "name=\"name\"",
        "name=\"subject\"",
        "name=\"template\"",
        "name=\"sender\"",
        "name=\"lists\"",
        "name=\"variant_subject\"",
        "name=\"coupon_pool\"",
        "name=\"spec\"",
        "value=\"news\"",
        "value=\"newsletter\"",
    ] {
        assert!(f.text().contains(s), "{s} missing:\n{}", f.text());
    }
    let evil = "<script>x</script>";
    let fields = [
        ("name", evil),
        ("subject", "Hello & welcome"),
        ("template", "news"),
        ("sender", "newsletter"),
        ("lists", "news"),
    ];
    assert_eq!(vi.post("/admin/campaigns", &fields).status, 403);
    let id = create(&ed, &fields);
    let c = campaign(&h, id);
    assert_eq!(c["status"], "draft");
    assert_eq!(c["name"], evil);
    assert_eq!(c["owner"], "eddie");
    assert_eq!(c["spec"]["subject"], "Hello & welcome");
    assert_eq!(c["spec"]["audience"]["lists"], json!(["news"]));

    // A bad form comes back with the API's problem and its values.
    let bad = ed.post(
        "/admin/campaigns",
        &[("name", "No audience"), ("template", "news")],
    );
    assert_eq!(bad.status, 422, "{}", bad.text());
    assert!(bad.text().contains("audience"), "{}", bad.text());
    assert!(bad.text().contains("value=\"No audience\""));

    // A/B subject variants and the advanced spec.
    let ab = create(
        &ed,
        &[
            ("name", "AB"),
            ("template", "news"),
            ("lists", "news"),
            ("variant_subject", "One"),
            ("variant_subject", "Two"),
            ("ab_share", "50"),
            ("ab_metric", "clicks"),
            ("ab_window", "2h"),
            ("spec", "{\"rate_per_hour\": 1000}"),
        ],
    );
    let c = campaign(&h, ab);
    assert_eq!(c["spec"]["ab"]["variants"][1]["subject"], "Two");
    assert_eq!(c["spec"]["ab"]["metric"], "clicks");
    assert_eq!(c["spec"]["rate_per_hour"], 1000);

    // Pages escape the name.
    for path in [
        format!("/admin/campaigns/{id}"),
        "/admin/campaigns".to_string(),
    ] {
        let p = vi.get(&path);
        assert_eq!(p.status, 200, "{path}");
        assert!(
            p.text().contains("&lt;script&gt;x&lt;&#x2f;script&gt;")
                || p.text().contains("&lt;script&gt;x&lt;/script&gt;"),
            "{}",
            p.text()
        );
        assert!(!p.text().contains(evil), "{path}");
    }

    // Owner filter.
    ad.post(&format!("/admin/campaigns/{ab}/owner"), &[("owner", "ana")]);
    assert_eq!(campaign(&h, ab)["owner"], "ana");
    let mine = vi.get("/admin/campaigns?owner=eddie");
    assert!(mine.text().contains(&format!("/admin/campaigns/{id}\"")));
    assert!(!mine.text().contains(&format!("/admin/campaigns/{ab}\"")));
    let r = h.get("/api/v1/campaigns?owner=ana");
    assert_eq!(
        r.body["campaigns"].as_array().unwrap().len(),
        1,
        "{}",
        r.body
    );
    assert_eq!(r.body["campaigns"][0]["owner"], "ana");
    let page = h.get("/api/v1/campaigns?limit=1");
    assert_eq!(page.body["next"], ab, "{}", page.body);
    let rest = h.get(&format!("/api/v1/campaigns?limit=1&before={ab}"));
    assert_eq!(rest.body["campaigns"][0]["id"], id);

    // A viewer is refused on every form.
    for action in [
        "test",
        "schedule",
        "start",
        "pause",
        "resume",
        "cancel",
        "duplicate",
        "owner",
        "delete",
        "winner",
    ] {
        let r = vi.post(
            &format!("/admin/campaigns/{id}/{action}"),
            &[
                ("to", "a@example.test"),
                ("at", "2030-01-01T10:00"),
                ("owner", "vera"),
                ("variant", "0"),
            ],
        );
        assert_eq!(r.status, 403, "{action}: {}", r.text());
    }
    assert_eq!(campaign(&h, id)["status"], "draft");

    // Schedule, then a test send, then start now.
    let r = ed.post(
        &format!("/admin/campaigns/{id}/schedule"),
        &[("at", "2099-01-01T10:00")],
    );
    assert_eq!(r.status, 303);
    assert!(r.location().contains("notice="), "{}", r.location());
    assert_eq!(campaign(&h, id)["status"], "scheduled");
    let r = ed.post(
        &format!("/admin/campaigns/{id}/test"),
        &[("to", "seed@example.test")],
    );
    assert!(r.location().contains("notice="), "{}", r.location());
    let r = ed.post(&format!("/admin/campaigns/{id}/start"), &[]);
    assert!(r.location().contains("notice="), "{}", r.location());
    wait_until("the campaign completes", Duration::from_secs(60), || {
        campaign(&h, id)["status"] == "completed"
    });
    let p = vi.get(&format!("/admin/campaigns/{id}"));
    assert!(p.text().contains("badge completed"));
    assert!(!p.text().contains("http-equiv=\"refresh\""));
    let act = h.get(&format!("/api/v1/activity?object=campaign:{id}"));
    assert!(
        act.body["activity"].as_array().unwrap().len() >= 3,
        "{}",
        act.body
    );
    assert!(p.text().contains("campaign_action start"), "{}", p.text());

    // The report, its chart and CSV.
    let rep = vi.get(&format!("/admin/campaigns/{id}/report"));
    assert_eq!(rep.status, 200);
    assert!(rep.text().contains("<svg"), "{}", rep.text());
    assert!(
        rep.text().contains("https://shop.example/sale") || rep.text().contains("No clicks yet")
    );
    let csv = vi.get(&format!("/admin/campaigns/{id}/report.csv"));
    assert_eq!(csv.status, 200);
    assert!(
        csv.header("content-type")
            .unwrap_or("")
            .starts_with("text/csv")
    );
    assert!(
        csv.header("content-disposition")
            .unwrap_or("")
            .contains("attachment")
    );
    assert!(
        csv.text().starts_with("label,stage,variant,sent"),
        "{}",
        csv.text()
    );
    assert!(csv.text().contains("total,"), "{}", csv.text());
    let links = vi.get(&format!("/admin/campaigns/{id}/report.csv?part=links"));
    assert_eq!(links.status, 200);

    // The dashboard counts it (kept hourly counters).
    wait_until("deliveries counted", Duration::from_secs(30), || {
        h.get("/api/v1/reports/overview?days=7").body["totals"]["delivered"] == 3
    });
    let o = h.get("/api/v1/reports/overview?days=7").body;
    assert_eq!(o["totals"]["sent"], 3, "{o}");
    assert_eq!(o["daily"].as_array().unwrap().len(), 7);
    assert_eq!(o["senders"][0]["dkim"], false);
    let d = vi.get("/admin");
    assert!(d.text().contains(">3<"), "{}", d.text());

    // Duplicate makes a draft of the same spec; the draft can be deleted.
    let r = ed.post(&format!("/admin/campaigns/{id}/duplicate"), &[]);
    assert_eq!(r.status, 303);
    let copy = id_of(r.location());
    assert_ne!(copy, id);
    let c = campaign(&h, copy);
    assert_eq!(c["status"], "draft");
    assert_eq!(c["spec"]["subject"], "Hello & welcome");
    // The copy is its maker's, and the log names the copy.
    let ed_name = c["owner"].as_str().unwrap_or("").to_string();
    assert!(!ed_name.is_empty(), "the duplicate has an owner: {c}");
    let log = h.get(&format!("/api/v1/activity?object=campaign:{copy}"));
    assert_eq!(
        log.body["activity"][0]["action"], "POST campaign_action duplicate",
        "{:?}",
        log.body
    );
    let r = ed.post(
        &format!("/admin/campaigns/{copy}/owner"),
        &[("owner", "vera")],
    );
    assert!(r.location().contains("notice="), "{}", r.location());
    assert_eq!(campaign(&h, copy)["owner"], "vera");
    let r = ed.post(&format!("/admin/campaigns/{copy}/delete"), &[]);
    assert_eq!(r.status, 303);
    assert!(
        r.location().starts_with("/admin/campaigns?notice="),
        "{}",
        r.location()
    );
    assert_eq!(h.get(&format!("/api/v1/campaigns/{copy}")).status, 404);
    // A refusal of the API becomes the page's problem.
    let r = ed.post(&format!("/admin/campaigns/{id}/delete"), &[]);
    assert!(r.location().contains("problem="), "{}", r.location());
}

#[test]
fn the_dashboard_alerts_when_a_template_fails_to_load() {
    let sink = Sink::start(&[]);
    let h = start(&sink);
    let vi = UiSession::new(&h, "vera", "viewer");
    assert!(!vi.get("/admin").text().contains("failed to load"));
    let t = h.dir.path().join("templates");
    write(&t, "broken/template.toml", "this is = = not toml\n");
    write(&t, "broken/body.en.html", "<p>x</p>\n");
    h.hup();
    wait_until("the reload", Duration::from_secs(30), || {
        h.get("/api/v1/templates").body["templates"]
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t["name"] == "broken"))
    });
    let d = vi.get("/admin");
    assert!(
        d.text().contains("Template `broken` failed to load."),
        "{}",
        d.text()
    );
}

#[test]
fn an_example_flow_has_its_page() {
    let sink = Sink::start(&[]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let welcome = std::fs::read_to_string(root.join("config/automations/welcome.toml"))
        .unwrap()
        .replace("template = \"welcome\"", "template = \"m\"")
        .replace("template = \"newsletter\"", "template = \"m\"");
    let h = common::flows::start(&sink, &[("welcome", &welcome)], "");
    let ed = UiSession::new(&h, "eddie", "editor");
    let vi = UiSession::new(&h, "vera", "viewer");
    let l = vi.get("/admin/automations");
    assert_eq!(l.status, 200);
    assert!(
        l.text().contains("/admin/automations/welcome"),
        "{}",
        l.text()
    );
    assert!(l.text().contains("badge active"), "{}", l.text());
    let p = vi.get("/admin/automations/welcome");
    assert_eq!(p.status, 200, "{}", p.text());
    assert!(p.text().contains("Welcome series"), "{}", p.text());
    assert!(p.text().contains("<h2>Steps</h2>"));
    assert!(
        !p.text()
            .contains("action=\"/admin/automations/welcome/pause\"")
    );
    assert_eq!(vi.post("/admin/automations/welcome/pause", &[]).status, 403);
    assert_eq!(
        vi.post("/admin/automations/welcome/resume", &[]).status,
        403
    );
    let e = ed.get("/admin/automations/welcome");
    assert!(
        e.text()
            .contains("action=\"/admin/automations/welcome/pause\"")
    );
    let r = ed.post("/admin/automations/welcome/pause", &[]);
    assert_eq!(r.status, 303);
    assert_eq!(common::flows::status(&h, "welcome")["status"], "paused");
    let p = ed.get("/admin/automations/welcome");
    assert!(p.text().contains("badge paused"));
    assert!(p.text().contains("automation_action pause"), "{}", p.text());
    ed.post("/admin/automations/welcome/resume", &[]);
    assert_eq!(common::flows::status(&h, "welcome")["status"], "active");
    assert_eq!(vi.get("/admin/automations/nothing").status, 404);
    // A file flow has no owner until it is given one; the list filters by
    // owner.
    assert_eq!(
        vi.post("/admin/automations/welcome/owner", &[("owner", "vera")])
            .status,
        403
    );
    let r = ed.post("/admin/automations/welcome/owner", &[("owner", "vera")]);
    assert!(r.location().contains("notice="), "{}", r.location());
    assert_eq!(common::flows::status(&h, "welcome")["owner"], "vera");
    let mine = vi.get("/admin/automations?owner=vera");
    assert!(mine.text().contains("/admin/automations/welcome"));
    let theirs = vi.get("/admin/automations?owner=eddie");
    assert!(!theirs.text().contains("/admin/automations/welcome\""));
    // The dashboard lists it as active.
    assert!(
        vi.get("/admin")
            .text()
            .contains("/admin/automations/welcome")
    );
}
