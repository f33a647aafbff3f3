//! The daemon as an admin meets it: config validation, start-up, the store's
//! lock and schema version, SIGHUP reload, SIGTERM shutdown.

mod common;

use std::path::Path;

use common::{Herald, TOKEN, config_text, run};

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("herald.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/herald.toml");
    let (code, out, err) = run(&example, &["check-config"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": OK"), "{out}");
}

#[test]
fn each_kind_of_config_error_is_reported_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        // (config text, expected position, expected text)
        (
            "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://x.test\"\nport = 5\n",
            ":4:1: `http.port`",
            "unknown field `port`",
        ),
        (
            "[http]\nlisten = 8025\n",
            ":2:10: `http.listen`",
            "invalid type",
        ),
        (
            "[http]\nlisten = \"localhost\"\n",
            ":2:10: `http.listen`",
            "is not an address:port",
        ),
        (
            "[http]\npublic_url = \"ftp://x.test\"\n",
            ":2:14: `http.public_url`",
            "http:// or https://",
        ),
        (
            "[admin]\ntoken = \"short\"\n",
            ":2:9: `admin.token`",
            "at least 24 characters",
        ),
        (
            "[admin]\ntoken_file = \"missing.token\"\n",
            ":2:14: `admin.token_file`",
            "cannot read",
        ),
        (
            "[admin]\ntoken = \"0123456789abcdef0123456789\"\nsession_ttl = \"1m\"\n",
            ":3:15: `admin.session_ttl`",
            "between 5 minutes and 30 days",
        ),
        (
            "[log]\nformat = \"xml\"\n",
            ":2:10: `log.format`",
            "not one of: text, json",
        ),
        (
            "[paths]\nsegments = \"nowhere\"\n",
            ":2:12: `paths.segments`",
            "is not a directory",
        ),
        (
            "[unknown_section]\nx = 1\n",
            ":1:2: `unknown_section`",
            "unknown field `unknown_section`",
        ),
        (
            "[[site]]\nid = \"shop\"\nname = \"Shop\"\nurl = \"https://shop.example\"\ntime_zone = \"Europe/Warszawa\"\n",
            ":5:13: `site[0].time_zone`",
            "`Europe/Warszawa` is not an IANA time zone",
        ),
        (
            "[automation]\nquiet_hours = \"21:00-25:00\"\n",
            ":2:15: `automation.quiet_hours`",
            "`25:00` is not a time of day",
        ),
        (
            "[automation]\nquiet_hours = \"08:00-08:00\"\n",
            ":2:15: `automation.quiet_hours`",
            "the span would be empty",
        ),
        (
            "[automation]\nmax_late = \"30s\"\n",
            ":2:12: `automation.max_late`",
            "between 1 minute and 90 days",
        ),
        (
            "[automation]\nquiet = true\n",
            ":2:1: `automation.quiet`",
            "unknown field `quiet`",
        ),
        ("[http\n", ":1:", "TOML syntax error"),
        ("", ": `storage.path`", "missing required key"),
    ];
    for (text, position, message) in cases {
        let p = write_config(dir.path(), text);
        let (code, out, err) = run(&p, &["check-config"]);
        assert_eq!(code, 2, "accepted:\n{text}\n{out}");
        let expected = format!("{}{position}", p.display());
        assert!(
            err.contains(&expected),
            "config:\n{text}\nexpected `{expected}` in:\n{err}"
        );
        assert!(
            err.contains(message),
            "config:\n{text}\nexpected `{message}` in:\n{err}"
        );
    }
}

#[test]
fn all_problems_come_at_once_and_serve_refuses_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(
        dir.path(),
        "[http]\nlisten = \"nope\"\npublic_url = 1\nextra = true\n[storage]\npath = \"data\"\n[admin]\ntoken = \"x\"\n",
    );
    let (code, _, err) = run(&p, &["check-config"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("5 configuration problems"), "{err}");
    assert!(
        err.contains("`tracking.secret`: missing required key"),
        "{err}"
    );
    let (code, _, err2) = run(&p, &["serve"]);
    assert_eq!(code, 2, "{err2}");
    assert!(err2.contains("`http.extra`"), "{err2}");
    assert!(
        !dir.path().join("data").exists(),
        "serve must not create the store with a bad config"
    );
}

#[test]
fn the_store_is_locked_by_one_daemon_and_check_config_never_opens_it() {
    let mut h = Herald::start();
    let (code, out, err) = run(&h.config, &["check-config"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(&h.config, &["serve"]);
    assert_ne!(code, 0);
    assert!(err.contains("in use by another herald process"), "{err}");
    assert_eq!(h.stop(), Some(0));
    assert!(h.log().contains("herald stopped"), "{}", h.log());
}

#[test]
fn a_store_from_a_newer_or_foreign_schema_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = write_config(dir.path(), &config_text(&data, ""));
    {
        let store = herald::store::Store::open(&data).unwrap();
        store.close();
    }
    {
        let db = redb::Database::create(data.join("herald.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(herald::store::tables::META).unwrap();
            meta.insert("schema_version", 99u64.to_be_bytes().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let (code, _, err) = run(&config, &["serve"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "schema version 99, newer than this herald understands ({})",
            herald::store::tables::SCHEMA_VERSION
        )),
        "{err}"
    );

    std::fs::remove_file(data.join("herald.redb")).unwrap();
    {
        let db = redb::Database::create(data.join("herald.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("someone_elses");
            txn.open_table(def).unwrap().insert("k", 1).unwrap();
        }
        txn.commit().unwrap();
    }
    let (code, _, err) = run(&config, &["serve"]);
    assert_ne!(code, 0);
    assert!(err.contains("is not a Herald store"), "{err}");

    std::fs::write(
        data.join("herald.redb"),
        b"this is not a database at all, just text",
    )
    .unwrap();
    let (code, _, err) = run(&config, &["serve"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot open the store"), "{err}");
}

#[test]
fn sighup_reloads_references_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("segments")).unwrap();
    let config = write_config(
        dir.path(),
        &config_text(
            &dir.path().join("data"),
            "[paths]\nsegments = \"segments\"\n",
        ),
    );
    let h = Herald::start_in(dir, config.clone());
    h.list("vip");
    std::fs::write(
        h.dir.path().join("segments/vips.toml"),
        "name = \"VIPs\"\nlists = [\"vip\"]\n",
    )
    .unwrap();
    h.hup();
    wait_for_log(&h, "configuration reloaded", 1);
    let r = h.delete("/api/v1/lists/vip");
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.body["error"]["code"], "in_use");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vips.toml"),
        "{r:?}"
    );

    // A broken config is refused on reload; the daemon keeps serving.
    std::fs::write(&config, "[http]\nlisten = 5\n").unwrap();
    h.hup();
    wait_for_log(&h, "reload refused", 1);
    assert!(h.log().contains("`http.listen`"), "{}", h.log());
    assert_eq!(h.get("/healthz").status, 200);
    assert_eq!(
        h.get("/api/v1/lists").status,
        200,
        "the old token must still work"
    );
}

/// Waits until `needle` has been logged at least `times` times.
fn wait_for_log(h: &Herald, needle: &str, times: usize) {
    for _ in 0..400 {
        if h.log().matches(needle).count() >= times {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("`{needle}` was not logged {times} time(s):\n{}", h.log());
}

#[test]
fn a_sighup_right_after_ready_reloads_instead_of_killing() {
    let h = Herald::start();
    h.hup();
    wait_for_log(&h, "configuration reloaded", 1);
    assert_eq!(h.get("/healthz").status, 200);
}

#[test]
fn token_file_works_and_the_token_is_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let text = config_text(&dir.path().join("data"), "").replace(
        &format!("token = \"{TOKEN}\""),
        "token_file = \"admin.token\"",
    );
    let config = write_config(dir.path(), &text);
    let mut h = Herald::start_in(dir, config);
    assert_eq!(h.get("/api/v1/fields").status, 200);
    h.stop();
    assert!(!h.log().contains(TOKEN));
}

#[test]
fn systemd_is_told_ready_after_the_store_and_listener_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let config = write_config(dir.path(), &config_text(&dir.path().join("data"), ""));
    let env = vec![(
        "NOTIFY_SOCKET".to_string(),
        socket_path.display().to_string(),
    )];
    let mut h = Herald::start_in_env(dir, config, env);
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 from herald");
    let states = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(states(&buf[..n]), ["READY=1"]);
    // Ready means ready: the store answers and the port is bound.
    assert_eq!(h.get("/healthz").status, 200);
    assert!(h.dir.path().join("data/herald.redb").exists());
    assert_eq!(h.stop(), Some(0));
    let n = socket.recv(&mut buf).expect("STOPPING=1 from herald");
    assert_eq!(states(&buf[..n]), ["STOPPING=1"]);
}
