//! Test harness: starts the real `herald` binary in a temporary directory with
//! its own config and store, waits for the documented ready line
//! (`herald ready listen=ADDR …`) to learn the port, and talks HTTP to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod browser;
pub mod flows;
pub mod peers;
pub mod reports;
pub mod tls_smtp;
pub mod ui;

pub const TOKEN: &str = "test-token-0123456789abcdef0123";

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_herald")
}

/// The tracking secret of test configs (signs links in mail).
pub const TRACKING_SECRET: &str = "test-tracking-secret-0123456789abcdef";

/// A config file's text with the given storage dir and extra TOML appended.
/// No free-space reserve: a test's daemon takes imports however full the
/// machine's disk is (`tests/storage_faults.rs` tests the reserve).
/// Clicks count as a person's however soon after delivery they come
/// (`scanner_window = "1ms"`): tests click right away.
pub fn config_text(data: &Path, extra: &str) -> String {
    config_text_tracking(data, "scanner_window = \"1ms\"\n", extra)
}

/// [`config_text`] with these keys in `[tracking]` (besides the secret).
pub fn config_text_tracking(data: &Path, tracking: &str, extra: &str) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\ntrusted_proxies = [\"127.0.0.1\"]\n[storage]\npath = \"{}\"\nreserve_mb = 0\nreserve_percent = 0\n[admin]\ntoken = \"{TOKEN}\"\n[tracking]\nsecret = \"{TRACKING_SECRET}\"\n{tracking}[log]\nlevel = \"info\"\n{extra}",
        data.display()
    )
}

#[derive(Default)]
struct Log {
    lines: Vec<String>,
    ready: Option<SocketAddr>,
    closed: bool,
}

/// A running daemon.
pub struct Herald {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    child: Option<Child>,
    log: Arc<(Mutex<Log>, Condvar)>,
    pub addr: SocketAddr,
    agent: ureq::Agent,
    env: Vec<(String, String)>,
}

/// An HTTP reply: status and parsed JSON (or a JSON string of the raw body).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

/// A reply with its body as text (`body` is a JSON string), whatever it is.
pub fn text_reply(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut resp = resp.expect("HTTP request failed");
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .unwrap_or_default();
    Reply {
        status,
        body: Value::String(text),
        headers,
    }
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Herald {
    /// Starts a daemon with a fresh data dir.
    pub fn start() -> Herald {
        Self::start_with("")
    }

    /// Starts a daemon with extra config appended.
    pub fn start_with(extra: &str) -> Herald {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("herald.toml");
        std::fs::write(&config, config_text(&dir.path().join("data"), extra))
            .expect("write config");
        Self::start_in(dir, config)
    }

    /// Starts a daemon on an existing directory and config.
    pub fn start_in(dir: tempfile::TempDir, config: PathBuf) -> Herald {
        Self::start_in_env(dir, config, Vec::new())
    }

    /// Starts a daemon with extra environment variables.
    pub fn start_in_env(
        dir: tempfile::TempDir,
        config: PathBuf,
        env: Vec<(String, String)>,
    ) -> Herald {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .max_redirects(0)
            .build()
            .into();
        let mut h = Herald {
            dir,
            config,
            child: None,
            log: Arc::new((Mutex::new(Log::default()), Condvar::new())),
            addr: "127.0.0.1:1".parse().unwrap(),
            agent,
            env,
        };
        h.spawn();
        h
    }

    fn spawn(&mut self) {
        self.log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let mut child = Command::new(bin())
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let (m, cv) = &*log;
                let mut l = m.lock().unwrap();
                if let Some(rest) = line.split("herald ready listen=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("");
                    l.ready = addr.parse().ok();
                }
                l.lines.push(line);
                cv.notify_all();
            }
            let (m, cv) = &*log;
            m.lock().unwrap().closed = true;
            cv.notify_all();
        });
        self.child = Some(child);
        let (m, cv) = &*self.log;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut l = m.lock().unwrap();
        while l.ready.is_none() && !l.closed && Instant::now() < deadline {
            l = cv.wait_timeout(l, Duration::from_millis(100)).unwrap().0;
        }
        match l.ready {
            Some(a) => self.addr = a,
            None => panic!("herald did not become ready:\n{}", l.lines.join("\n")),
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().lines.join("\n")
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("herald did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the daemon to exit on its own; its exit code (`None`
    /// for a signal), or a failed test after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut c = self.child.take().expect("herald is running");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("herald did not exit within {within:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the daemon's process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGHUP.
    pub fn hup(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg("-HUP")
                .arg(c.id().to_string())
                .status();
        }
    }

    /// SIGTERM, then starts the daemon again on the same directory.
    pub fn stop_and_start(&mut self) {
        assert_eq!(self.stop(), Some(0), "{}", self.log());
        self.spawn();
    }

    /// Starts the daemon again after [`Herald::stop`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Starts the daemon again on the same directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn finish(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut r = text_reply(resp);
        if let Value::String(text) = &r.body
            && let Ok(v) = serde_json::from_str(text)
        {
            r.body = v;
        }
        r
    }

    fn auth(&self) -> String {
        format!("Bearer {TOKEN}")
    }

    pub fn get(&self, path: &str) -> Reply {
        Self::finish(
            self.agent
                .get(self.url(path))
                .header("Authorization", self.auth())
                .call(),
        )
    }

    pub fn get_noauth(&self, path: &str, auth: Option<&str>) -> Reply {
        let mut r = self.agent.get(self.url(path));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        Self::finish(r.call())
    }

    pub fn delete(&self, path: &str) -> Reply {
        Self::finish(
            self.agent
                .delete(self.url(path))
                .header("Authorization", self.auth())
                .call(),
        )
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        Self::finish(
            self.agent
                .post(self.url(path))
                .header("Authorization", self.auth())
                .header("Content-Type", "application/json")
                .send(body),
        )
    }

    /// `POST path` with a body of `content_type` (a raw report, a CSV…).
    pub fn post_typed(&self, path: &str, content_type: &str, body: &str) -> Reply {
        Self::finish(
            self.agent
                .post(self.url(path))
                .header("Authorization", self.auth())
                .header("Content-Type", content_type)
                .send(body),
        )
    }

    pub fn put(&self, path: &str, content_type: &str, body: &str) -> Reply {
        Self::finish(
            self.agent
                .put(self.url(path))
                .header("Authorization", self.auth())
                .header("Content-Type", content_type)
                .send(body),
        )
    }

    pub fn post_json(&self, path: &str, body: Value) -> Reply {
        self.post(path, &body.to_string())
    }

    pub fn patch_json(&self, path: &str, body: Value) -> Reply {
        Self::finish(
            self.agent
                .patch(self.url(path))
                .header("Authorization", self.auth())
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        )
    }

    pub fn post_csv(&self, path: &str, body: impl AsRef<[u8]>) -> Reply {
        Self::finish(
            self.agent
                .post(self.url(path))
                .header("Authorization", self.auth())
                .header("Content-Type", "text/csv")
                .send(body.as_ref()),
        )
    }

    /// A request without the admin token: `method` (GET, HEAD, POST) with
    /// extra headers and an optional body (as is).
    pub fn public(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        let url = self.url(path);
        macro_rules! with_headers {
            ($r:expr) => {{
                let mut r = $r;
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r
            }};
        }
        match method {
            "GET" => Self::finish(with_headers!(self.agent.get(url)).call()),
            "HEAD" => Self::finish(with_headers!(self.agent.head(url)).call()),
            "POST" => Self::finish(with_headers!(self.agent.post(url)).send(body.unwrap_or(b""))),
            m => panic!("method {m} not supported by the harness"),
        }
    }

    /// Queues a plain-text message from `sender` (`POST /api/v1/messages`),
    /// asserting it is accepted; returns its queue id.
    pub fn send_text(&self, sender: &str, to: &[&str], subject: &str) -> u64 {
        let r = self.post_json(
            "/api/v1/messages",
            serde_json::json!({"sender": sender, "to": to, "subject": subject, "text": "Hello\n"}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        r.body["id"].as_u64().unwrap()
    }

    /// Polls queued message `id` (`GET /api/v1/queue/{id}`) until `done`
    /// holds; fails with its last state and the daemon's log after `within`.
    pub fn wait_message(
        &self,
        id: u64,
        within: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let r = self.get(&format!("/api/v1/queue/{id}"));
            assert_eq!(r.status, 200, "{}", r.body);
            if done(&r.body) {
                return r.body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out; last state {}\n{}",
                r.body,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Members of a segment (its preview, up to 1,000), as e-mail local
    /// parts, sorted; asserts that the count says as many.
    pub fn segment_members(&self, segment: &str) -> Vec<String> {
        let r = self.get(&format!("/api/v1/segments/{segment}/preview?limit=1000"));
        assert_eq!(r.status, 200, "{segment}: {r:?}");
        let emails = r.body["contacts"].as_array().unwrap().iter();
        let mut v: Vec<String> = emails
            .filter_map(|c| c["email"].as_str()?.split('@').next().map(String::from))
            .collect();
        v.sort();
        assert_eq!(r.body["count"].as_u64().unwrap() as usize, v.len());
        v
    }

    /// Creates a field, asserting success.
    pub fn field(&self, name: &str, t: &str) {
        let r = self.post_json(
            "/api/v1/fields",
            serde_json::json!({"name": name, "type": t}),
        );
        assert_eq!(r.status, 201, "{r:?}");
    }

    /// Creates a list, asserting success; returns its id.
    pub fn list(&self, name: &str) -> u64 {
        let r = self.post_json("/api/v1/lists", serde_json::json!({"name": name}));
        assert_eq!(r.status, 201, "{r:?}");
        r.body["id"].as_u64().unwrap()
    }

    /// Creates list `news` and imports `n` granted contacts
    /// c0000@example.test… into it; returns their ids.
    pub fn granted_contacts(&self, n: usize) -> Vec<u64> {
        self.list("news");
        let mut csv = String::from("email\n");
        for i in 0..n {
            csv.push_str(&format!("c{i:04}@example.test\n"));
        }
        let r = self.post_csv(
            "/api/v1/contacts/import?list=news&consent=granted",
            csv.as_bytes(),
        );
        assert!(r.status < 300, "{}", r.body);
        (0..n)
            .map(|i| {
                let r = self.get(&format!("/api/v1/contacts/c{i:04}@example.test"));
                r.body["id"].as_u64().unwrap()
            })
            .collect()
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `herald --config PATH ARGS…` and returns (exit code, stdout, stderr).
pub fn run(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run herald");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary with `--config config` and `args`, `stdin` on its input.
pub fn run_stdin(config: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write as _;
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run herald");
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("wait for herald");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` to `dir/rel`, creating the folders.
pub fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Polls `ok` every 100 ms until it holds; fails the test after `within`.
pub fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "waited for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a campaign of template `news` to list `news` (`extra` keys added
/// to its spec) and waits until `sink` has `n` messages and the campaign is
/// completed; returns (id, recipient → message file), sorted.
pub fn send_news(
    h: &Herald,
    sink: &peers::Sink,
    n: usize,
    extra: Value,
) -> (u64, Vec<(String, PathBuf)>) {
    let mut spec =
        serde_json::json!({"name": "Sale", "template": "news", "audience": {"lists": ["news"]}});
    if let (Some(o), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    let r = h.post_json("/api/v1/campaigns", spec);
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_u64().unwrap();
    let r = h.post_json(
        &format!("/api/v1/campaigns/{id}/start"),
        serde_json::json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    sink.wait_files(n, Duration::from_secs(60));
    wait_until("completed", Duration::from_secs(60), || {
        h.get(&format!("/api/v1/campaigns/{id}")).body["status"] == "completed"
    });
    let mut files: Vec<(String, PathBuf)> = sink
        .files()
        .into_iter()
        .flat_map(|f| peers::rcpts_of(&f).into_iter().map(move |r| (r, f.clone())))
        .collect();
    files.sort();
    (id, files)
}

/// `[[sender]] shop` relaying to `port` on loopback without TLS, for a
/// config's extra text.
pub fn relay_sender(port: u16) -> String {
    format!(
        "[[sender]]\nid = \"shop\"\nfrom = \"Shop <news@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n"
    )
}

/// The secrets of `config/herald.toml` (refused with capture off).
pub const EXAMPLE_SECRETS: [&str; 4] = [
    "change-me-this-is-the-example-admin-token",
    "example-tracking-secret-change-me-0123456789",
    "example-autologin-secret-change-me-0123456789",
    "example-outlet-autologin-secret-change-me-0123",
];

/// The repository's root (the example config, templates, README).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `config/herald.toml` as shipped, written to `dir/herald.toml` for a
/// daemon of its own: a free port, the store in `dir/data`, the capture
/// outbox in `dir/outbox` and the repository's templates, segments and
/// automations; everything else (secrets included) as in the example.
pub fn example_config(dir: &Path) -> PathBuf {
    let example = repo().join("config/herald.toml");
    let text = std::fs::read_to_string(&example)
        .expect("config/herald.toml")
        .replace("listen = \"127.0.0.1:8025\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "path = \"../data\"",
            &format!("path = \"{}\"", dir.join("data").display()),
        )
        .replace(
            "capture = \"../outbox\"",
            &format!("capture = \"{}\"", dir.join("outbox").display()),
        )
        .replace(
            "templates = \"../templates\"",
            &format!("templates = \"{}\"", repo().join("templates").display()),
        );
    let text = ["segments", "automations"].iter().fold(text, |t, what| {
        t.replace(
            &format!("{what} = \"{what}\""),
            &format!(
                "{what} = \"{}\"",
                repo().join("config").join(what).display()
            ),
        )
    });
    let config = dir.join("herald.toml");
    std::fs::write(&config, text).expect("write the example config");
    config
}
