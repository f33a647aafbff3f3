//! The admin UI over real HTTP: login, sessions, CSRF, roles, security
//! headers, the activity log. (Browser tests: `tests/browser.rs`.)

mod common;

use common::Herald;
use common::ui::{UiSession, add_user, form_body};

#[test]
fn login_sessions_csrf_and_headers() {
    let h = Herald::start();
    // Without a session every page leads to the login form.
    let s0 = common::ui::UiSession::login(&h, "nobody", "whatever password");
    let failed = s0.err().expect("unknown user refused");
    assert_eq!(failed.status, 401);
    assert!(failed.text().contains("Wrong name or password"));
    let s = UiSession::new(&h, "ana", "admin");
    let dash = s.get("/admin");
    assert_eq!(dash.status, 200);
    let csp = dash.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(dash.header("x-frame-options"), Some("DENY"));
    assert!(s.cookie.starts_with("herald_session="));
    // A forged CSRF token is refused, and so is a missing one.
    let forged = s.post_raw("/admin/logout", &form_body(&[("_csrf", "forged")]));
    assert_eq!(forged.status, 403, "{}", forged.text());
    assert!(forged.text().contains("security token"));
    assert_eq!(s.post_raw("/admin/logout", "").status, 403);
    // A GET (a link, an image) does not end the session.
    let get_out = s.get("/admin/logout");
    assert_eq!(get_out.status, 303);
    assert_eq!(get_out.location(), "/admin");
    assert_eq!(s.get("/admin").status, 200, "still logged in");
    // Logout ends the session.
    let out = s.post("/admin/logout", &[]);
    assert_eq!(out.status, 303);
    let after = s.get("/admin");
    assert_eq!(after.status, 303);
    assert!(
        after.location().starts_with("/admin/login?next="),
        "{}",
        after.location()
    );
}

#[test]
fn failed_logins_are_rate_limited() {
    let h = Herald::start();
    add_user(&h, "bo", "viewer", "the right password");
    for _ in 0..5 {
        let r = UiSession::login(&h, "bo", "a wrong password")
            .err()
            .expect("refused");
        assert_eq!(r.status, 401);
    }
    // The right password is refused too while the limit holds.
    let r = UiSession::login(&h, "bo", "the right password")
        .err()
        .expect("refused");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("900"));
}

#[test]
fn users_cli_adds_lists_and_refuses_the_last_admin() {
    let h = Herald::start();
    let config = h.config.clone();
    let (code, out, err) = common::run_stdin(
        &config,
        &[
            "users",
            "add",
            "ana",
            "--role",
            "admin",
            "--api",
            &h.url(""),
        ],
        "a long enough password\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = common::run(&config, &["users", "list", "--api", &h.url("")]);
    assert_eq!(code, 0);
    assert!(out.contains("ana\tadmin"), "{out}");
    let (code, _, err) = common::run(&config, &["users", "remove", "ana", "--api", &h.url("")]);
    assert_ne!(code, 0);
    assert!(err.contains("last admin"), "{err}");
    // The activity log saw the change, made with the token.
    let a = h.get("/api/v1/activity?object=user:ana");
    assert_eq!(a.body["activity"][0]["who"], "api");
    assert_eq!(a.body["activity"][0]["action"], "POST users");
    // The password reaches only the hash.
    assert!(!h.log().contains("a long enough password"));
}
