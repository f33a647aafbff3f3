//! Headless Chromium (Debian's `chromium`) driven through the DevTools
//! protocol over a WebSocket: the admin UI's browser tests and
//! `scripts/screenshots`. A small client of our own: launch, open a tab,
//! navigate, run JavaScript in the page, set a file input, screenshot.
//!
//! Everything a test does goes through the real browser: it fills inputs
//! and clicks buttons (`element.click()`), and Chromium sends the requests,
//! follows redirects, keeps cookies and applies the pages' CSP.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

/// The browser binary: `$HERALD_CHROMIUM`, else `chromium`.
pub fn chromium() -> String {
    std::env::var("HERALD_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// A running headless Chromium with its own profile.
pub struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium; panics with the reason when it cannot (the suite
    /// installs it: `scripts/test`).
    pub fn launch() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{}` ({e}): install Debian's chromium (scripts/test does)",
                    chromium()
                )
            });
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Some(p) = text.lines().next().and_then(|l| l.trim().parse().ok())
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Browser {
            child,
            port,
            _profile: profile,
        }
    }

    /// A new tab.
    pub fn tab(&self) -> Tab {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .put(format!(
                "http://127.0.0.1:{}/json/new?about:blank",
                self.port
            ))
            .send_empty()
            .expect("DevTools /json/new");
        let target: Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default())
                .expect("DevTools target JSON");
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("webSocketDebuggerUrl")
            .to_string();
        let (ws, _) = tungstenite::connect(ws_url.as_str()).expect("DevTools WebSocket");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        }
        let mut tab = Tab { ws, next: 0 };
        tab.call("Page.enable", json!({}));
        tab.call("Runtime.enable", json!({}));
        tab
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tab.
pub struct Tab {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Tab {
    /// Calls a DevTools method and returns its result (events that arrive
    /// meanwhile are skipped); panics on a protocol error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.ws
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .expect("DevTools send");
        loop {
            let msg = self.ws.read().expect("DevTools read");
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
            if v["method"] == "Page.javascriptDialogOpening" {
                // `confirm()` of a `data-confirm` button: a person says yes.
                self.next += 1;
                let answer = json!({"id": self.next, "method": "Page.handleJavaScriptDialog",
                    "params": {"accept": true}});
                self.ws
                    .send(Message::text(answer.to_string()))
                    .expect("DevTools send");
                continue;
            }
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("DevTools {method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates JavaScript in the page (promises awaited) and returns its
    /// value; panics when it throws.
    pub fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("JavaScript failed: {e}\n{js}");
        }
        r["result"]["value"].clone()
    }

    /// Marks the current document, so that [`Tab::wait_new_page`] can tell
    /// when another one has loaded.
    fn mark(&mut self) {
        self.eval("window.__heraldOld = true");
    }

    /// Waits until a new document (not the marked one) has loaded.
    pub fn wait_new_page(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.call(
                "Runtime.evaluate",
                json!({"expression": "document.readyState === 'complete' && !window.__heraldOld", "returnByValue": true}),
            );
            if v["result"]["value"] == true {
                return;
            }
            assert!(Instant::now() < deadline, "no new page within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&mut self, url: &str) {
        self.mark();
        self.call("Page.navigate", json!({"url": url}));
        self.wait_new_page();
    }

    /// The page's URL.
    pub fn url(&mut self) -> String {
        self.eval("location.href")
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The page's visible text.
    pub fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The page's HTML.
    pub fn html(&mut self) -> String {
        self.eval("document.documentElement.outerHTML")
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Whether an element matches `selector`.
    pub fn has(&mut self, selector: &str) -> bool {
        self.eval(&format!("!!document.querySelector({})", js_str(selector))) == true
    }

    /// Types `value` into the input matching `selector` (a select takes
    /// the option's value).
    pub fn fill(&mut self, selector: &str, value: &str) {
        let ok = self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.value = {}; \
             e.dispatchEvent(new Event('input', {{bubbles: true}})); e.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()",
            js_str(selector),
            js_str(value)
        ));
        assert_eq!(ok, true, "no element {selector} to fill");
    }

    /// Clicks the element matching `selector` and waits for the page it
    /// leads to.
    pub fn click_and_wait(&mut self, selector: &str) {
        self.mark();
        self.click(selector);
        self.wait_new_page();
    }

    /// Clicks the element matching `selector`.
    pub fn click(&mut self, selector: &str) {
        let ok = self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.click(); return true; }})()",
            js_str(selector)
        ));
        assert_eq!(ok, true, "no element {selector} to click");
    }

    /// Puts a file into the file input matching `selector`.
    pub fn set_file(&mut self, selector: &str, file: &Path) {
        let doc = self.call("DOM.getDocument", json!({"depth": 0}));
        let node = self.call(
            "DOM.querySelector",
            json!({"nodeId": doc["root"]["nodeId"], "selector": selector}),
        );
        assert_ne!(node["nodeId"], 0, "no file input {selector}");
        self.call(
            "DOM.setFileInputFiles",
            json!({"nodeId": node["nodeId"], "files": [file.display().to_string()]}),
        );
    }

    /// Saves a PNG of the whole page (`width` CSS pixels wide).
    pub fn screenshot(&mut self, path: &Path, width: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or(""))
            .expect("screenshot base64");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Turns JavaScript off (or on) for the pages that follow.
    pub fn javascript(&mut self, on: bool) {
        self.call(
            "Emulation.setScriptExecutionDisabled",
            json!({"value": !on}),
        );
    }
}

/// A JavaScript string literal.
pub fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Where screenshots go: `$HERALD_SCREENSHOTS`, or none.
pub fn screenshot_dir() -> Option<PathBuf> {
    std::env::var_os("HERALD_SCREENSHOTS").map(PathBuf::from)
}
