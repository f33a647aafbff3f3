//! What slow and greedy clients can hold, through the real binary and real
//! sockets: a request body that trickles is cut off (408) by the body pace,
//! one client address cannot hold more than `[http] max_connections_per_ip`
//! (so `/healthz`, the API and tracking keep answering others), a
//! connection over `max_connections` is closed at once, the admin listener
//! keeps its own budget and alone serves the admin API and `/metrics`,
//! idle keep-alive connections are closed, a large upload may take long at
//! the minimum rate, `/metrics` can require a token, and the bearer scheme is
//! case-insensitive.
//!
//! Slow clients connect from 127.0.0.2 (and .3, .4): Linux routes all of
//! 127/8 to loopback, so the daemon sees them as other addresses than the
//! 127.0.0.1 the harness uses.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Herald, TOKEN, TRACKING_SECRET};

use common::write;

/// A daemon with a signup form (and its confirmation template), with
/// `http` added to `[http]`.
fn start(http: &str) -> Herald {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("templates");
    write(
        &t,
        "confirm/template.toml",
        "sender = \"newsletter\"\ndefault_language = \"en\"\nkind = \"transactional\"\ntracking = false\n[subject]\nen = \"Confirm\"\n",
    );
    write(
        &t,
        "confirm/body.en.html",
        "<html><body><p><a href=\"{{ data.confirm_url }}\">Confirm</a></p></body></html>\n",
    );
    let config = dir.path().join("herald.toml");
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\n{http}\n\
[storage]\npath = \"{data}\"\n[admin]\ntoken = \"{TOKEN}\"\n\
[tracking]\nsecret = \"{TRACKING_SECRET}\"\n[log]\nlevel = \"info\"\n\
[paths]\ntemplates = \"templates\"\n\
[signup]\nlists = [\"news\"]\ntemplate = \"confirm\"\n\
[[site]]\nid = \"shop\"\nname = \"Example Shop\"\nurl = \"https://shop.example\"\ncurrency = \"EUR\"\n\
[[sender]]\nid = \"newsletter\"\nfrom = \"Shop <news@shop.example>\"\n[sender.relay]\nhost = \"127.0.0.1\"\nport = 9\ntls = \"none\"\n",
        data = dir.path().join("data").display()
    );
    std::fs::write(&config, text).unwrap();
    Herald::start_in(dir, config)
}

/// The admin listener's address, from the ready line.
fn admin_addr(h: &Herald) -> SocketAddr {
    let log = h.log();
    let line = log
        .lines()
        .find(|l| l.contains("herald ready listen="))
        .expect("ready line");
    line.split("admin_listen=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no admin_listen= in the ready line: {line}"))
}

/// A TCP connection to `to` from the local address `from` (port picked).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
        sock.connect(to).await
    });
    let s = s
        .and_then(|s| s.into_std())
        .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"));
    s.set_nonblocking(false).unwrap();
    s
}

/// One request on a fresh connection from 127.0.0.1 (`Connection: close`):
/// status and body, or `None` when the server closed the connection
/// without an answer.
fn http(
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut s = connect_from("127.0.0.1", to);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    // A connection closed at once may refuse the write too.
    if s.write_all(req.as_bytes()).is_err() {
        return None;
    }
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{method} {path}: {e}"),
    }
    parse(&out)
}

fn parse(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// What a connection shows now: still open (nothing to read yet), or
/// closed, with whatever the server sent before closing.
#[derive(Debug)]
enum Seen {
    Open,
    Closed(Vec<u8>),
}

/// Slow clients: connections that sent a request head and part of its body.
struct Slow {
    conns: Vec<(TcpStream, Vec<u8>, bool)>,
}

impl Slow {
    /// `n` connections from `from` to `to`, each with `head` and the first
    /// bytes of a body sent.
    fn open(n: usize, from: &str, to: SocketAddr, head: &str) -> Slow {
        let conns = (0..n)
            .map(|_| {
                let mut s = connect_from(from, to);
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                // A connection closed at once may refuse this: that shows below.
                let _ = s.write_all(head.as_bytes());
                (s, Vec::new(), false)
            })
            .collect();
        Slow { conns }
    }

    /// Reads what is there on every connection; returns their states.
    fn poll(&mut self) -> Vec<Seen> {
        self.conns
            .iter_mut()
            .map(|(s, got, closed)| {
                let mut buf = [0u8; 4096];
                while !*closed {
                    match s.read(&mut buf) {
                        Ok(0) => *closed = true,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            break;
                        }
                        Err(_) => *closed = true,
                    }
                }
                if *closed {
                    Seen::Closed(got.clone())
                } else {
                    Seen::Open
                }
            })
            .collect()
    }

    /// Sends one more byte of body on every connection still open.
    fn trickle(&mut self) {
        for (s, _, closed) in &mut self.conns {
            if !*closed {
                let _ = s.write_all(b"x");
            }
        }
    }

    /// Polls until `done` holds for the states seen, for at most `within`
    /// (trickling a byte about every second meanwhile when `trickle`).
    fn until(
        &mut self,
        what: &str,
        within: Duration,
        trickle: bool,
        done: impl Fn(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let deadline = Instant::now() + within;
        let mut last = Instant::now();
        loop {
            let seen = self.poll();
            if done(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}: {seen:?}"
            );
            if trickle && last.elapsed() >= Duration::from_secs(1) {
                self.trickle();
                last = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn open_count(seen: &[Seen]) -> usize {
    seen.iter().filter(|s| matches!(s, Seen::Open)).count()
}

/// A signup whose body announces 200 bytes and sends 6.
const SLOW_SIGNUP: &str = "POST /subscribe HTTP/1.1\r\nHost: herald\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\nemail=";

/// 20 connections trickling a signup body from one address: only
/// `max_connections_per_ip` of them are held (the rest are closed at once,
/// without an answer), so the daemon's total cap is never reached and
/// `/healthz`, the API and the tracking routes keep answering; each held
/// one is cut off with 408 `body_timeout` once the body pace is behind,
/// and the address can connect again afterwards.
#[test]
fn trickling_bodies_are_cut_off_and_one_address_cannot_crowd_out_others() {
    let h = start(
        "max_connections = 12\nmax_connections_per_ip = 8\nbody_timeout = \"12s\"\nbody_min_rate = 1000",
    );
    let mut slow = Slow::open(20, "127.0.0.2", h.addr, SLOW_SIGNUP);
    // The 12 over the per-address cap are closed at once, unanswered.
    let seen = slow.until(
        "connections over the per-IP cap closed",
        Duration::from_secs(30),
        false,
        |s| s.len() - open_count(s) >= 12,
    );
    assert_eq!(open_count(&seen), 8, "{seen:?}");
    for s in &seen {
        if let Seen::Closed(got) = s {
            assert!(
                got.is_empty(),
                "refused without an answer: {}",
                String::from_utf8_lossy(got)
            );
        }
    }
    // While 8 hang (12 would fill the daemon), others are served.
    assert_eq!(http(h.addr, "GET", "/healthz", &[]).map(|r| r.0), Some(200));
    let lists = http(
        h.addr,
        "GET",
        "/api/v1/lists",
        &[("Authorization", &bearer(TOKEN))],
    );
    assert_eq!(lists.as_ref().map(|r| r.0), Some(200), "{lists:?}");
    // The tracking routes answer (an unknown token: 404 from the handler).
    let pixel = http(h.addr, "GET", "/o/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &[]);
    assert_eq!(pixel.map(|r| r.0), Some(404));
    let click = http(h.addr, "GET", "/c/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &[]);
    assert!(click.is_some_and(|r| r.0 < 500));
    // Still hanging: the checks above did not wait for them.
    assert_eq!(open_count(&slow.poll()), 8);

    // A byte a second is far below the pace: each is cut off with 408.
    let seen = slow.until(
        "trickling bodies cut off",
        Duration::from_secs(90),
        true,
        |s| open_count(s) == 0,
    );
    let answered: Vec<String> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Closed(got) if !got.is_empty() => Some(String::from_utf8_lossy(got).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(answered.len(), 8, "{seen:?}");
    for a in &answered {
        let (status, body) = parse(a.as_bytes()).expect("an HTTP answer");
        assert_eq!(status, 408, "{a}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["error"]["code"], "body_timeout", "{a}");
        let m = v["error"]["message"].as_str().unwrap_or("");
        assert!(m.contains("body_timeout") && m.contains("12 s"), "{m}");
    }
    // Their slots are free again.
    let mut again = Slow::open(
        1,
        "127.0.0.2",
        h.addr,
        "GET /healthz HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n",
    );
    let seen = again.until(
        "a new connection from the address answered",
        Duration::from_secs(30),
        false,
        |s| open_count(s) == 0,
    );
    match &seen[0] {
        Seen::Closed(got) => assert_eq!(parse(got).map(|r| r.0), Some(200), "{seen:?}"),
        Seen::Open => unreachable!(),
    }
    let m = http(h.addr, "GET", "/metrics", &[]).expect("metrics").1;
    assert!(
        m.contains(
            "herald_http_connections_refused_total{listener=\"public\",reason=\"per_ip_limit\"} 12"
        ),
        "{m}"
    );
}

/// With `admin_listen` set, the public listener full (8 slow signups from
/// two addresses): a new public connection is closed at once, while the
/// admin listener, with its own budget, serves the API and `/metrics`.
#[test]
fn the_admin_listener_answers_while_the_public_one_is_full() {
    let h = start(
        "admin_listen = \"127.0.0.1:0\"\nmax_connections = 8\nmax_connections_per_ip = 4\nbody_timeout = \"60s\"",
    );
    let admin = admin_addr(&h);
    let mut a = Slow::open(4, "127.0.0.2", h.addr, SLOW_SIGNUP);
    let mut b = Slow::open(4, "127.0.0.3", h.addr, SLOW_SIGNUP);
    // Both addresses are held in full (the cap is per address).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(open_count(&a.poll()), 4);
    assert_eq!(open_count(&b.poll()), 4);
    // Full: another address's connection is closed at once, unanswered.
    let mut c = Slow::open(2, "127.0.0.4", h.addr, SLOW_SIGNUP);
    let seen = c.until(
        "connections over the total cap closed",
        Duration::from_secs(30),
        false,
        |s| open_count(s) == 0,
    );
    assert!(
        seen.iter()
            .all(|s| matches!(s, Seen::Closed(g) if g.is_empty())),
        "{seen:?}"
    );
    assert_eq!(http(h.addr, "GET", "/healthz", &[]), None);

    // The admin listener has its own budget.
    let auth = bearer(TOKEN);
    let lists = http(admin, "GET", "/api/v1/lists", &[("Authorization", &auth)]);
    assert_eq!(lists.as_ref().map(|r| r.0), Some(200), "{lists:?}");
    let created = {
        let mut s = connect_from("127.0.0.1", admin);
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = r#"{"name":"vip"}"#;
        write!(
            s,
            "POST /api/v1/lists HTTP/1.1\r\nHost: herald\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        parse(&out)
    };
    assert_eq!(created.map(|r| r.0), Some(201));
    assert_eq!(http(admin, "GET", "/healthz", &[]).map(|r| r.0), Some(200));
    let m = http(admin, "GET", "/metrics", &[]).expect("metrics");
    assert_eq!(m.0, 200);
    assert!(
        m.1.contains(
            "herald_http_connections_refused_total{listener=\"public\",reason=\"total_limit\"}"
        ),
        "{}",
        m.1
    );
    assert!(
        m.1.contains("herald_http_connections{listener=\"public\"} 8"),
        "{}",
        m.1
    );
    // The slow ones are still held.
    assert_eq!(open_count(&a.poll()) + open_count(&b.poll()), 8);
}

/// With `admin_listen` set, the admin API and `/metrics` exist only there:
/// the public listener answers 404 to them (whatever the token) and keeps
/// serving the public routes.
#[test]
fn admin_routes_are_served_only_on_the_admin_listener() {
    let h = start("admin_listen = \"127.0.0.1:0\"");
    let admin = admin_addr(&h);
    let auth = bearer(TOKEN);
    let public_api = http(h.addr, "GET", "/api/v1/lists", &[("Authorization", &auth)]);
    assert_eq!(public_api.map(|r| r.0), Some(404));
    assert_eq!(
        http(h.addr, "GET", "/api/v1/nothing", &[]).map(|r| r.0),
        Some(404)
    );
    assert_eq!(
        http(h.addr, "GET", "/metrics", &[("Authorization", &auth)]).map(|r| r.0),
        Some(404)
    );
    assert_eq!(http(h.addr, "GET", "/healthz", &[]).map(|r| r.0), Some(200));
    let signup = http(h.addr, "GET", "/subscribe", &[]);
    assert_eq!(
        signup.map(|r| r.0),
        Some(405),
        "the public signup route is served"
    );

    let lists = http(admin, "GET", "/api/v1/lists", &[("Authorization", &auth)]);
    assert_eq!(lists.map(|r| r.0), Some(200));
    assert_eq!(
        http(admin, "GET", "/api/v1/lists", &[]).map(|r| r.0),
        Some(401)
    );
    let m = http(admin, "GET", "/metrics", &[]).expect("metrics");
    assert_eq!(m.0, 200);
    assert!(m.1.contains("herald_http_requests_total"), "{}", m.1);
    // The admin UI too: only on the admin listener.
    for path in ["/admin", "/admin/login", "/admin/assets/style.css", "/"] {
        assert_eq!(
            http(h.addr, "GET", path, &[]).map(|r| r.0),
            Some(404),
            "{path}"
        );
    }
    let login = http(admin, "GET", "/admin/login", &[]).expect("login page");
    assert_eq!(login.0, 200);
    assert!(login.1.contains("name=\"password\""), "{}", login.1);
}

/// `[http] metrics_token`: `/metrics` needs it or the admin token (any
/// case of `Bearer`); the metrics token does not open the admin API. The
/// admin API takes `bearer` and `BEARER` too (RFC 7235: the scheme is
/// case-insensitive).
#[test]
fn metrics_token_guards_metrics_and_the_bearer_scheme_is_case_insensitive() {
    const METRICS: &str = "metrics-token-0123456789";
    let h = start(&format!("metrics_token = \"{METRICS}\""));
    let get = |path: &str, auth: Option<String>| {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        http(h.addr, "GET", path, &headers).map(|r| r.0)
    };
    assert_eq!(get("/metrics", None), Some(401));
    assert_eq!(
        get("/metrics", Some(bearer("metrics-token-wrong-000000"))),
        Some(401)
    );
    assert_eq!(get("/metrics", Some(bearer(METRICS))), Some(200));
    assert_eq!(
        get("/metrics", Some(format!("bearer {METRICS}"))),
        Some(200)
    );
    assert_eq!(get("/metrics", Some(bearer(TOKEN))), Some(200));
    assert_eq!(get("/api/v1/lists", Some(bearer(METRICS))), Some(401));
    assert_eq!(get("/healthz", None), Some(200));

    for scheme in ["Bearer", "bearer", "BEARER"] {
        assert_eq!(
            get("/api/v1/lists", Some(format!("{scheme} {TOKEN}"))),
            Some(200),
            "{scheme}"
        );
    }
    assert_eq!(
        get("/api/v1/lists", Some(format!("Basic {TOKEN}"))),
        Some(401)
    );
    // Through the harness's client too.
    let r = h.get_noauth("/api/v1/lists", Some(&format!("bearer {TOKEN}")));
    assert_eq!(r.status, 200, "{r:?}");
}

/// An idle keep-alive connection is closed after `idle_timeout`: it does
/// not hold a descriptor for ever.
#[test]
fn idle_keep_alive_connections_are_closed() {
    let h = start("idle_timeout = \"2s\"");
    let mut s = connect_from("127.0.0.1", h.addr);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n")
        .unwrap();
    // The answer, then nothing until the daemon closes the idle connection.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(e) => panic!(
                "no close within 60 s: {e}; got {}",
                String::from_utf8_lossy(&out)
            ),
        }
    };
    assert!(closed);
    assert_eq!(
        parse(&out).map(|r| r.0),
        Some(200),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(!String::from_utf8_lossy(&out).contains("connection: close"));
}

/// A CSV import larger than what `body_timeout` allows at once may take
/// longer, as long as it keeps arriving faster than `body_min_rate`; one
/// that trickles is cut off with 408, saying how to resume.
#[test]
fn large_uploads_keep_going_at_the_minimum_rate_and_trickles_are_cut_off() {
    let h = start("body_timeout = \"2s\"\nbody_min_rate = 10000");
    let mut csv = String::from("email\n");
    for i in 0..8000 {
        csv.push_str(&format!("paced{i:05}@example.test\n"));
    }
    let mut s = connect_from("127.0.0.1", h.addr);
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST /api/v1/contacts/import HTTP/1.1\r\nHost: herald\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
        csv.len()
    )
    .unwrap();
    // Ten pieces 400 ms apart: about 4 s in all, twice body_timeout, at
    // some 45 kB/s.
    let piece = csv.len().div_ceil(10);
    for chunk in csv.as_bytes().chunks(piece) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let (status, body) = parse(&out).expect("an answer");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["created"], 8000, "{v}");

    let mut slow = Slow::open(
        1,
        "127.0.0.1",
        h.addr,
        &format!(
            "POST /api/v1/contacts/import HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: text/csv\r\nContent-Length: 100000\r\n\r\nemail\nslow@example.test\n"
        ),
    );
    let seen = slow.until(
        "a trickling import cut off",
        Duration::from_secs(60),
        true,
        |s| open_count(s) == 0,
    );
    let Seen::Closed(got) = &seen[0] else {
        unreachable!()
    };
    let (status, body) = parse(got).expect("an answer");
    assert_eq!(status, 408, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "body_timeout", "{v}");
    let m = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        m.contains("resume with ?resume=") && m.contains("body_min_rate"),
        "{m}"
    );
}
