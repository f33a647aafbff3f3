//! The admin UI in a real browser: headless Chromium (Debian's package)
//! driven through the DevTools protocol (`common::browser`), against the
//! real daemon relaying to a real SMTP peer (smtp-sink).
//!
//! `scripts/screenshots` runs `screenshots_of_the_main_pages` (ignored in
//! the suite) with `HERALD_SCREENSHOTS=DIR`.

mod common;

use std::time::Duration;

use common::browser::{Browser, Tab};
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
    let _ = Duration::ZERO;
}
