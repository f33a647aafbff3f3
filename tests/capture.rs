//! The capture outbox (`[delivery] capture`) on the example config: a
//! campaign, a template message and a signup confirmation are written to
//! the folder, signed with the key `dkim keygen --sender` added (dkimpy
//! verifies them from the files), counted as delivered; `herald outbox`
//! lists and shows them, the API and the admin UI too. With capture off,
//! the example's secrets are refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::peers::dkim_verify;
use common::ui::UiSession;
use common::{Herald, TOKEN, run, wait_until};
use serde_json::{Value, json};

/// The example config in `dir` with the test token (the other example
/// secrets stay: capture mode accepts them).
fn example(dir: &Path) -> PathBuf {
    let config = common::example_config(dir);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "token = \"change-me-this-is-the-example-admin-token\"",
        &format!("token = \"{TOKEN}\""),
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn outbox(config: &Path) -> Vec<Value> {
    let (code, out, err) = run(config, &["outbox", "list", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_campaign_a_template_message_and_a_confirmation_land_in_the_outbox_signed() {
    let dir = tempfile::tempdir().unwrap();
    let config = example(dir.path());
    let (code, out, err) = run(
        &config,
        &[
            "dkim",
            "keygen",
            "--domain",
            "shop.example",
            "--selector",
            "s1",
            "--sender",
            "newsletter",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let record = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("value: "))
        .unwrap()
        .to_string();
    let (code, out, err) = run(&config, &["check-config"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("CAPTURE MODE: no mail leaves this machine"),
        "{out}"
    );
    assert!(
        out.contains("dkim s1._domainkey.shop.example: rsa 2048-bit key"),
        "{out}"
    );

    let mut h = Herald::start_in(dir, config.clone());
    assert!(h.log().contains("CAPTURE MODE"), "{}", h.log());
    let outbox_dir = h.dir.path().join("outbox");
    assert!(
        h.log()
            .contains(&format!("capture={}", outbox_dir.display())),
        "{}",
        h.log()
    );
    h.list("newsletter");
    let r = h.post_json(
        "/api/v1/contacts",
        json!({"email": "ann@example.com", "lists": ["newsletter"], "consent": "granted", "fields": {}}),
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.body);

    // A template message, a newsletter, a double opt-in confirmation.
    let r = h.post_json(
        "/api/v1/messages",
        json!({"template": "welcome", "to": ["ann@example.com"]}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let message = r.body["id"].as_u64().unwrap();
    // Members of the list the campaign leaves out, each for its reason.
    h.list("staff");
    for (email, consent, lists) in [
        ("unknown@example.com", "unknown", vec!["newsletter"]),
        ("pending@example.com", "pending", vec!["newsletter"]),
        ("staff@example.com", "granted", vec!["newsletter", "staff"]),
        ("blocked@example.com", "granted", vec!["newsletter"]),
    ] {
        let r = h.post_json(
            "/api/v1/contacts",
            json!({"email": email, "lists": lists, "consent": consent}),
        );
        assert!(r.status == 200 || r.status == 201, "{}", r.body);
    }
    let r = h.post_json(
        "/api/v1/suppressions",
        json!({"address": "blocked@example.com", "reason": "asked by phone"}),
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    let r = h.post_json(
        "/api/v1/campaigns",
        json!({"name": "November", "template": "newsletter",
               "audience": {"lists": ["newsletter"], "exclude_lists": ["staff"]}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let campaign = r.body["id"].as_u64().unwrap();
    let r = h.post_json(&format!("/api/v1/campaigns/{campaign}/start"), json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let p = h.get(&format!("/api/v1/campaigns/{campaign}")).body["progress"].clone();
    assert_eq!(p["audience"], 1, "{p}");
    assert_eq!(
        p["left_out"],
        json!({"excluded_list": 1, "excluded_segment": 0, "consent_unknown": 1,
               "consent_pending": 1, "consent_withdrawn": 0, "consent_invalid": 0,
               "suppressed": 1, "total": 4}),
        "{p}"
    );
    let api = h.url("");
    let (code, out, err) = run(
        &config,
        &["campaign", "status", &campaign.to_string(), "--api", &api],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("audience 1 (left out 4: in an excluded list 1, consent unknown 1, consent pending 1, suppressed 1)"),
        "{out}"
    );
    let r = h.public(
        "POST",
        "/subscribe",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"email=bob%40example.com&website="),
    );
    assert_eq!(r.status, 200, "{r:?}");

    let mut all = Vec::new();
    wait_until(
        "three messages in the outbox",
        Duration::from_secs(60),
        || {
            all = outbox(&config);
            let to = |a: &str| all.iter().any(|m| m["envelope"]["recipients"][0] == a);
            all.iter().any(|m| m["envelope"]["queue_id"] == message)
                && all
                    .iter()
                    .filter(|m| m["envelope"]["recipients"][0] == "ann@example.com")
                    .count()
                    >= 2
                && to("bob@example.com")
        },
    );
    // Every file is exactly what would have gone out: signed, verifiable.
    for m in &all {
        let file = outbox_dir.join("new").join(m["name"].as_str().unwrap());
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(
            dkim_verify(&bytes, &[("s1._domainkey.shop.example", &record)]),
            [true],
            "{}",
            file.display()
        );
    }
    let subjects: Vec<&str> = all.iter().filter_map(|m| m["subject"].as_str()).collect();
    assert!(
        subjects.contains(&"Welcome to Example Shop"),
        "{subjects:?}"
    );

    // The queue counts them delivered, to the capture.
    let q = h.get(&format!("/api/v1/queue/{message}"));
    assert_eq!(q.body["recipients"][0]["state"], "delivered", "{}", q.body);
    assert_eq!(q.body["recipients"][0]["host"], "capture", "{}", q.body);
    // A message sent through the raw API to a contact's address is in the
    // contact's history.
    let r = h.post_json(
        "/api/v1/messages",
        json!({"sender": "newsletter", "to": ["Ann@Example.com"], "subject": "Raw", "text": "Hi"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let raw = r.body["id"].as_u64().unwrap();
    wait_until(
        "the raw message in ann's history",
        Duration::from_secs(30),
        || {
            let hist = h.get("/api/v1/contacts/ann@example.com/history").body;
            hist["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["kind"] == "message" && e["message"] == raw)
            })
        },
    );
    wait_until("the campaign completes", Duration::from_secs(30), || {
        h.get(&format!("/api/v1/campaigns/{campaign}")).body["status"] == "completed"
    });
    let c = h.get(&format!("/api/v1/campaigns/{campaign}"));
    assert_eq!(c.body["progress"]["delivered"], 1, "{}", c.body);

    // The confirmation's link is in `outbox show`, and it works.
    let bob = all
        .iter()
        .find(|m| m["envelope"]["recipients"][0] == "bob@example.com")
        .and_then(|m| m["envelope"]["queue_id"].as_u64())
        .unwrap();
    let (code, out, err) = run(&config, &["outbox", "show", &bob.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("RCPT TO:<bob@example.com>"), "{out}");
    let confirm = out
        .lines()
        .filter_map(|l| l.trim().split_once("] ").map(|(_, u)| u.to_string()))
        .find(|u| u.contains("/confirm/"))
        .unwrap_or_else(|| panic!("no confirmation link in:\n{out}"));
    let path = confirm
        .split_once("://")
        .map(|(_, r)| &r[r.find('/').unwrap()..])
        .unwrap();
    let r = h.public("GET", path, &[], None);
    assert_eq!(r.status, 200, "{r:?}");
    let (code, _, err) = run(&config, &["outbox", "show", "999999"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing captured as number 999999"), "{err}");

    // The API and the admin UI show the same.
    let r = h.get(&format!("/api/v1/outbox/{message}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["messages"][0]["subject"], "Welcome to Example Shop");
    let ui = UiSession::new(&h, "olga", "viewer");
    let page = ui.get("/admin/outbox");
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("Welcome to Example Shop"),
        "{}",
        page.text()
    );
    assert!(
        page.text()
            .contains("Capture mode: no mail leaves this machine")
    );
    let page = ui.get(&format!("/admin/outbox/{message}"));
    assert_eq!(page.status, 200);
    assert!(page.text().contains("MAIL FROM"), "{}", page.text());
    let frame = ui.get(&format!("/admin/outbox/{message}/frame?part=0"));
    assert_eq!(frame.status, 200);
    assert!(
        frame
            .header("content-security-policy")
            .is_some_and(|c| c.contains("sandbox")),
        "{frame:?}"
    );
    h.stop();
}

#[test]
fn with_capture_off_the_example_secrets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::example_config(dir.path());
    let text = std::fs::read_to_string(&config).unwrap();
    let capture_line = text
        .lines()
        .find(|l| l.starts_with("capture = "))
        .unwrap()
        .to_string();
    std::fs::write(&config, text.replace(&capture_line, "")).unwrap();
    let (code, out, err) = run(&config, &["check-config"]);
    assert_eq!(code, 2, "{out}{err}");
    for key in [
        "`admin.token`",
        "`tracking.secret`",
        "`site[0].autologin_secret`",
        "`site[1].autologin_secret`",
    ] {
        assert!(
            err.contains(&format!("{key}: the example's public value")),
            "{key}: {err}"
        );
    }
    // The daemon refuses the same config at start.
    let out = std::process::Command::new(common::bin())
        .args(["--config", config.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`admin.token`: the example's public value")
    );
    // New secrets: it loads, and the outbox commands say capture is off.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = common::EXAMPLE_SECRETS
        .iter()
        .enumerate()
        .fold(text, |t, (i, s)| {
            t.replace(s, &format!("a-new-secret-{i}-0123456789abcdef0123456789"))
        });
    std::fs::write(&config, text).unwrap();
    let (code, out, err) = run(&config, &["check-config"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("delivery    REAL"), "{out}");
    let (code, _, err) = run(&config, &["outbox", "list"]);
    assert_eq!(code, 2);
    assert!(err.contains("capture is off"), "{err}");
}

/// `dkim keygen` as root writes a key the service's user reads through the
/// config folder's group: `check-config` run as that user (nobody, group
/// nogroup) loads it. The folder is closed to others, so only the group
/// grant can make it readable.
#[test]
fn a_key_made_by_root_is_read_by_the_service_user_through_its_group() {
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("SKIPPED: needs root (to act as the service user)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = example(dir.path());
    let sh = |cmd: &str| {
        let ok = std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .unwrap();
        assert!(ok.success(), "{cmd}");
    };
    sh(&format!(
        "chmod 0750 {0} && chgrp nogroup {0} && chmod 0640 {1} && chgrp nogroup {1}",
        dir.path().display(),
        config.display()
    ));
    let (code, out, err) = run(
        &config,
        &[
            "dkim",
            "keygen",
            "--domain",
            "shop.example",
            "--selector",
            "s9",
            "--sender",
            "newsletter",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("(mode 0640, group nogroup)"), "{out}");
    assert!(
        out.contains("key_file = \"dkim/s9.shop.example.rsa.pem\""),
        "{out}"
    );
    let key = dir.path().join("dkim/s9.shop.example.rsa.pem");
    let meta = std::fs::metadata(&key).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    // Its folder is the group's too (whatever the umask made it).
    let folder = std::fs::metadata(dir.path().join("dkim")).unwrap();
    assert_eq!(folder.permissions().mode() & 0o777, 0o750);
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            common::bin(),
        ])
        .args(["--config", config.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("dkim s9._domainkey.shop.example: rsa 2048-bit key"),
        "{text}"
    );
}
