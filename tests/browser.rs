//! The admin UI in a real browser: headless Chromium (Debian's package)
//! driven through the DevTools protocol (`common::browser`), against the
//! real daemon relaying to a real SMTP peer (smtp-sink).
//!
//! `scripts/screenshots` runs `screenshots_of_the_main_pages` (ignored in
//! the suite) with `HERALD_SCREENSHOTS=DIR`.

mod common;

use std::time::Duration;

use common::browser::{Browser, Tab, screenshot_dir};
use common::peers::Sink;
use common::ui::add_user;
use common::{Herald, flows};

const PASSWORD: &str = "a long enough password";

/// Logs `name` in through the login form (the tab ends on the dashboard).
fn login(tab: &mut Tab, h: &Herald, name: &str) {
    tab.goto(&h.url("/admin"));
    assert!(tab.url().contains("/admin/login"), "{}", tab.url());
    tab.fill("input[name=name]", name);
    tab.fill("input[name=password]", PASSWORD);
    tab.click_and_wait("form button[type=submit]");
    assert!(tab.url().ends_with("/admin"), "{}", tab.url());
    assert!(tab.text().contains("Dashboard"));
}

fn logout(tab: &mut Tab) {
    tab.click_and_wait("form.logout button");
    assert!(tab.url().contains("/admin/login"), "{}", tab.url());
}

#[test]
fn log_in_and_out_and_a_forged_csrf_token_is_refused() {
    let sink = Sink::start(&[]);
    let h = flows::start(&sink, &[], "");
    add_user(&h, "ana", "admin", PASSWORD);
    let browser = Browser::launch();
    let mut tab = browser.tab();
    // A wrong password is refused on the form.
    tab.goto(&h.url("/admin/login"));
    tab.fill("input[name=name]", "ana");
    tab.fill("input[name=password]", "not the password");
    tab.click_and_wait("form button[type=submit]");
    assert!(tab.text().contains("Wrong name or password"));
    login(&mut tab, &h, "ana");
    // The session cookie is not readable by scripts (HttpOnly).
    assert_eq!(tab.eval("document.cookie"), "");
    // A form whose CSRF token was tampered with is refused.
    tab.eval("document.querySelector('form.logout input[name=_csrf]').value = 'forged'");
    tab.click_and_wait("form.logout button");
    assert!(tab.text().contains("security token"), "{}", tab.text());
    // The session still works; logging out ends it.
    tab.goto(&h.url("/admin"));
    logout(&mut tab);
    tab.goto(&h.url("/admin/campaigns"));
    assert!(tab.url().contains("/admin/login?next="), "{}", tab.url());
    drop(sink);
}

/// Saves a screenshot of the tab's page as `NAME.png` when
/// `HERALD_SCREENSHOTS` names a directory (`scripts/screenshots`).
fn shot(tab: &mut Tab, name: &str) {
    if let Some(dir) = screenshot_dir() {
        tab.screenshot(&dir.join(format!("{name}.png")), 1280);
    }
}

/// Opens `path`, checks it is a page of the UI (not an error), and
/// screenshots it.
fn visit(tab: &mut Tab, h: &Herald, path: &str, name: &str, expect: &str) {
    tab.goto(&h.url(path));
    let text = tab.text();
    assert!(text.contains(expect), "{path}: no `{expect}` in\n{text}");
    assert!(
        !tab.has("p.problem[data-code]"),
        "{path} is an error page:\n{text}"
    );
    shot(tab, name);
}

/// Reloads the tab until its text contains `what`.
fn wait_for_text(tab: &mut Tab, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if tab.text().contains(what) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{what}` within 60 s:\n{}",
            tab.text()
        );
        std::thread::sleep(Duration::from_millis(300));
        let url = tab.url();
        tab.goto(&url);
    }
}

const FLOW: &str = "[trigger]\ntype = \"order_placed\"\n[[steps]]\ntemplate = \"tx\"\n";

/// The issue's browser walk: an editor logs in, imports a CSV and watches
/// it finish, creates a campaign, test-sends it (smtp-sink receives it),
/// starts it, sees it complete and opens its report with the chart; every
/// main page opens; a viewer is refused a change. With
/// `HERALD_SCREENSHOTS=DIR` it saves a PNG of each page.
#[test]
fn an_editor_imports_creates_tests_starts_and_reads_a_campaign() {
    let sink = Sink::start(&[]);
    let h = flows::start(&sink, &[("thanks", FLOW)], "");
    add_user(&h, "ed", "editor", PASSWORD);
    add_user(&h, "vi", "viewer", PASSWORD);
    add_user(&h, "ad", "admin", PASSWORD);
    let r = h.put(
        "/api/v1/segments/shoe_buyers",
        "application/json",
        r#"{"bought_category":"shoes","after":"30 days ago"}"#,
    );
    assert_eq!(r.status, 201, "{r:?}");
    let browser = Browser::launch();
    let mut tab = browser.tab();
    login(&mut tab, &h, "ed");

    // Import a CSV through the upload form (the script's XHR upload with
    // its progress bar), and land on the finished import's report.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("people.csv");
    std::fs::write(
        &csv,
        "email,first_name\nann@example.com,Ann\nbob@example.com,Bob\ncy@example.com,Cy\nnot-an-address,Dee\n",
    )
    .unwrap();
    tab.goto(&h.url("/admin/imports"));
    assert!(tab.has("progress#upload-progress"));
    tab.fill("input[name=list]", "buyers");
    tab.click("input[name=create_list]");
    tab.click("input[name=create_fields]");
    tab.fill("select[name=consent]", "granted");
    tab.set_file("input[name=file]", &csv);
    tab.click_and_wait("form.upload button[type=submit]");
    assert!(tab.url().contains("/admin/imports/"), "{}", tab.url());
    wait_for_text(&mut tab, "completed");
    let report = tab.text();
    assert!(
        report.contains("not-an-address") || report.contains("line 5"),
        "{report}"
    );
    shot(&mut tab, "import-report");

    // A campaign from the form.
    tab.goto(&h.url("/admin/campaigns/new"));
    tab.fill("input[name=name]", "November news");
    tab.fill("input[name=subject]", "Hello {{ contact.first_name }}");
    tab.fill("select[name=template]", "m");
    tab.click("input[name=lists][value=buyers]");
    shot(&mut tab, "campaign-new");
    tab.click_and_wait("form.stack button[type=submit]");
    let campaign = tab.url().split('?').next().unwrap_or("").to_string();
    assert!(campaign.contains("/admin/campaigns/"), "{campaign}");
    assert!(tab.text().contains("November news"));

    // Test-send it: the message reaches smtp-sink.
    tab.fill("input[name=to]", "seed@example.com");
    tab.click_and_wait("form[action$=\"/test\"] button[type=submit]");
    assert!(tab.has("p.notice"), "{}", tab.text());
    let files = sink.wait_files(1, Duration::from_secs(30));
    assert_eq!(common::peers::rcpts_of(&files[0]), ["seed@example.com"]);

    // Start it (the button asks for a confirmation: the test says yes) and
    // watch it complete: three more messages arrive.
    tab.click_and_wait("form[action$=\"/start\"] button[type=submit]");
    wait_for_text(&mut tab, "completed");
    sink.wait_files(4, Duration::from_secs(30));
    shot(&mut tab, "campaign");

    // Its report, with the hourly chart drawn as SVG.
    tab.goto(&format!("{campaign}/report"));
    assert!(tab.has("svg.chart"), "{}", tab.html());
    assert!(tab.text().contains("Delivered") || tab.text().contains("delivered"));
    shot(&mut tab, "campaign-report");

    // Every main page opens (and is screenshotted); a bounce report
    // received elsewhere gives the Bounces page a row.
    let dsn = common::reports::dsn(
        "ann@example.com",
        "failed",
        "5.2.2",
        "552 5.2.2 Mailbox full",
        "x@shop.example",
    );
    let r = h.post_typed("/api/v1/bounces", "message/rfc822", &dsn);
    assert_eq!(r.status, 200, "{}", r.body);
    let ann = h.get("/api/v1/contacts/ann@example.com").body["id"].to_string();
    for (path, name, expect) in [
        ("/admin", "dashboard", "Dashboard"),
        ("/admin/contacts", "contacts", "ann@example.com"),
        (
            &format!("/admin/contacts/{ann}"),
            "contact",
            "ann@example.com",
        ),
        ("/admin/imports", "imports", "completed"),
        ("/admin/lists", "lists-and-fields", "buyers"),
        ("/admin/segments", "segments", "shoe_buyers"),
        ("/admin/segments/shoe_buyers", "segment", "shoe_buyers"),
        ("/admin/templates", "templates", "tx"),
        ("/admin/templates/m", "template", "m"),
        ("/admin/campaigns", "campaigns", "November news"),
        ("/admin/automations", "automations", "thanks"),
        ("/admin/automations/thanks", "automation", "thanks"),
        ("/admin/queue", "queue", "Queue"),
        ("/admin/activity", "activity", "ed"),
        ("/admin/bounces", "bounces", "ann@example.com"),
    ] {
        visit(&mut tab, &h, path, name, expect);
    }
    // The template preview renders inside its sandboxed frame.
    tab.goto(&h.url("/admin/templates/m"));
    assert_eq!(
        tab.eval("document.querySelector('iframe.preview').getAttribute('sandbox')"),
        ""
    );
    logout(&mut tab);

    // A viewer reads the campaign but is refused a change.
    login(&mut tab, &h, "vi");
    tab.goto(&campaign);
    assert!(
        !tab.has("form[action$=\"/duplicate\"]"),
        "a viewer sees no change buttons"
    );
    let status = tab.eval(
        "fetch(location.pathname + '/duplicate', {method: 'POST', body: new URLSearchParams({_csrf: \
         document.querySelector('input[name=_csrf]').value})}).then(r => r.status)",
    );
    assert_eq!(status, 403);
    logout(&mut tab);

    // The admin's own pages.
    login(&mut tab, &h, "ad");
    visit(&mut tab, &h, "/admin/users", "users", "vi");
    let activity = h.get("/api/v1/activity?object=campaign:1");
    let who: Vec<&str> = activity.body["activity"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["who"].as_str())
        .collect();
    assert!(who.iter().all(|w| *w == "ed"), "{activity:?}");
    assert_eq!(h.get("/api/v1/owners/campaign/1").body["owner"], "ed");
}

/// Every core task works with JavaScript off: with the page's scripts
/// disabled, the upload form posts the file itself (no progress script)
/// and lands on the report, a campaign is created and started from plain
/// forms (no confirmation dialog) and completes.
#[test]
fn with_javascript_off_the_forms_still_work() {
    let sink = Sink::start(&[]);
    let h = flows::start(&sink, &[], "");
    add_user(&h, "ed", "editor", PASSWORD);
    let browser = Browser::launch();
    let mut tab = browser.tab();
    tab.javascript(false);
    login(&mut tab, &h, "ed");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, "email\nann@example.com\nbob@example.com\n").unwrap();
    tab.goto(&h.url("/admin/imports"));
    tab.fill("input[name=list]", "buyers");
    tab.click("input[name=create_list]");
    tab.fill("select[name=consent]", "granted");
    tab.set_file("input[name=file]", &csv);
    tab.click_and_wait("form.upload button[type=submit]");
    assert!(tab.url().contains("/admin/imports/"), "{}", tab.url());
    wait_for_text(&mut tab, "completed");
    // The page's script did not run: the progress bar was never shown.
    tab.goto(&h.url("/admin/campaigns/new"));
    tab.fill("input[name=name]", "No script");
    tab.fill("select[name=template]", "m");
    tab.click("input[name=lists][value=buyers]");
    tab.click_and_wait("form.stack button[type=submit]");
    assert!(tab.text().contains("No script"), "{}", tab.text());
    tab.click_and_wait("form[action$=\"/start\"] button[type=submit]");
    wait_for_text(&mut tab, "completed");
    sink.wait_files(2, Duration::from_secs(30));
}
