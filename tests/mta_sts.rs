//! MTA-STS (RFC 8461) for outbound delivery, with real peers: dnsmasq
//! serves the `_mta-sts` TXT records, MX and address records; a local HTTPS
//! server (tokio-rustls, a certificate from a test CA made with openssl)
//! serves the policy files; smtp-sink or the STARTTLS test server
//! (`common::tls_smtp`) receives the mail. `[delivery] mta_sts_https_port`
//! points the policy fetches at the local server and `mta_sts_ca_file`
//! makes the test CAs trusted.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::peers::{Dns, Sink, free_port, rcpts_of, test_ca_and_cert};
use common::tls_smtp::{Mode, TlsSmtp};
use common::{Herald, run};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the policy server answers for one host: status, content type, body.
#[derive(Clone)]
struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

fn policy(mode: &str, mx: &[&str]) -> Answer {
    let mut body = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        body.push_str(&format!("mx: {m}\r\n"));
    }
    body.push_str("max_age: 86400\r\n");
    Answer {
        status: "200 OK",
        content_type: "text/plain; charset=utf-8",
        body,
    }
}

/// An HTTPS server on 127.0.0.1 answering `GET /.well-known/mta-sts.txt`
/// per Host header; it records each request's host.
struct PolicyServer {
    port: u16,
    /// The CA that signed its certificate.
    ca: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    rt: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl PolicyServer {
    fn start(answers: HashMap<String, Answer>) -> PolicyServer {
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let mut names: Vec<&str> = answers.keys().map(String::as_str).collect();
        names.sort();
        let (ca, cert, key) = test_ca_and_cert(dir.path(), &names);
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let port = free_port();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let answers = Arc::new(answers);
        rt.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                let (acceptor, seen, answers) = (acceptor.clone(), seen.clone(), answers.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let host = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("host").then(|| v.trim().to_string())
                        })
                        .unwrap_or_default();
                    let host = host.split(':').next().unwrap_or("").to_string();
                    let path_ok = head.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1");
                    seen.lock().unwrap().push(host.clone());
                    let a = match answers.get(&host) {
                        Some(a) if path_ok => a.clone(),
                        _ => Answer {
                            status: "404 Not Found",
                            content_type: "text/plain",
                            body: String::new(),
                        },
                    };
                    let location = if a.status.starts_with('3') {
                        "Location: https://elsewhere.test/policy\r\n"
                    } else {
                        ""
                    };
                    let resp = format!(
                        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{location}Connection: close\r\n\r\n{}",
                        a.status,
                        a.content_type,
                        a.body.len(),
                        a.body
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        PolicyServer {
            port,
            ca,
            requests,
            rt: Some(rt),
            _dir: dir,
        }
    }

    /// How many requests asked for `host`'s policy.
    fn requests_for(&self, host: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|h| *h == host)
            .count()
    }

    /// Stops serving (the port is closed).
    fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// dnsmasq with, per domain: MX `mx.<domain>` at 127.0.0.1, `mta-sts.<domain>`
/// at 127.0.0.1 and, unless `no_txt` lists it, `_mta-sts.<domain>` with id 1
/// (unquoted: without a shell, dnsmasq would keep the quotes).
fn dns(domains: &[&str], no_txt: &[&str], extra: &[String]) -> Dns {
    let mut records = Vec::new();
    for d in domains {
        records.push(format!("--mx-host={d},mx.{d},10"));
        records.push(format!("--host-record=mx.{d},127.0.0.1"));
        records.push(format!("--host-record=mta-sts.{d},127.0.0.1"));
        if !no_txt.contains(d) {
            records.push(format!("--txt-record=_mta-sts.{d},v=STSv1; id=1"));
        }
    }
    records.extend(extra.iter().cloned());
    Dns::start(&records)
}

/// A daemon delivering to port `smtp_port`, fetching policies from
/// `https_port`, trusting the CA certificates in `ca`.
fn start(dns: &Dns, smtp_port: u16, https_port: u16, ca: &Path, extra: &str) -> Herald {
    Herald::start_with(&format!(
        r#"
[delivery]
nameserver = "127.0.0.1:{}"
smtp_port = {smtp_port}
retry_schedule = ["1s"]
connect_timeout = "2s"
command_timeout = "3s"
mta_sts_https_port = {https_port}
mta_sts_ca_file = "{}"
{extra}

[[sender]]
id = "shop"
from = "Shop <news@shop.test>"
"#,
        dns.port,
        ca.display()
    ))
}

fn send(h: &Herald, to: &[&str]) -> u64 {
    h.send_text("shop", to, "Policy")
}

fn rcpt(m: &Value, i: usize) -> &Value {
    &m["recipients"][i]
}

fn attempted(m: &Value, i: usize) -> bool {
    rcpt(m, i)["attempts"].as_u64().unwrap_or(0) >= 1
}

fn metric(h: &Herald, line_start: &str) -> f64 {
    let text = h.get("/metrics").body.as_str().unwrap().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// With smtp-sink (no STARTTLS) as every MX:
/// - other.test (enforce, policy lists mx.elsewhere.test): deferred with
///   a reply naming the policy, nothing sent;
/// - plain.test (enforce, lists its MX) whose server offers no STARTTLS:
///   deferred;
/// - testing.test (testing, lists another host): delivered, counted;
/// - none.test (no TXT record): delivered, no fetch;
/// - redirect.test (TXT record, the policy URL answers a redirect): not
///   followed, delivered as without a policy; so are html.test (policy
///   served as text/html) and big.test (policy over 64 KiB).
///
/// Then the policy server goes away and the daemon restarts: the policies
/// cached in the store still hold.
#[test]
fn enforce_refuses_unlisted_mx_and_plain_text_testing_only_reports() {
    let domains = [
        "other.test",
        "plain.test",
        "testing.test",
        "none.test",
        "redirect.test",
        "html.test",
        "big.test",
    ];
    let dns = dns(&domains, &["none.test"], &[]);
    let mut answers = HashMap::new();
    answers.insert(
        "mta-sts.other.test".to_string(),
        policy("enforce", &["mx.elsewhere.test", "*.backup.test"]),
    );
    answers.insert(
        "mta-sts.plain.test".to_string(),
        policy("enforce", &["mx.plain.test"]),
    );
    answers.insert(
        "mta-sts.testing.test".to_string(),
        policy("testing", &["mx.elsewhere.test"]),
    );
    answers.insert(
        "mta-sts.none.test".to_string(),
        policy("enforce", &["mx.elsewhere.test"]),
    );
    answers.insert(
        "mta-sts.redirect.test".to_string(),
        Answer {
            status: "301 Moved Permanently",
            content_type: "text/html",
            body: "<a href=\"https://elsewhere.test/policy\">moved</a>".into(),
        },
    );
    answers.insert(
        "mta-sts.html.test".to_string(),
        Answer {
            content_type: "text/html",
            ..policy("enforce", &["mx.elsewhere.test"])
        },
    );
    let mut big = policy("enforce", &["mx.elsewhere.test"]);
    big.body
        .push_str(&format!("x_padding: {}\r\n", "x".repeat(70_000)));
    answers.insert("mta-sts.big.test".to_string(), big);
    let mut server = PolicyServer::start(answers);
    let sink = Sink::start(&[]);
    let mut h = start(&dns, sink.port, server.port, &server.ca, "");
    let id = send(
        &h,
        &[
            "a@other.test",
            "b@plain.test",
            "c@testing.test",
            "d@none.test",
            "e@redirect.test",
            "f@html.test",
            "g@big.test",
        ],
    );
    let m = h.wait_message(id, Duration::from_secs(30), |m| {
        attempted(m, 0) && attempted(m, 1) && (2..7).all(|i| rcpt(m, i)["state"] == "delivered")
    });
    assert_eq!(rcpt(&m, 0)["state"], "deferred", "{m}");
    assert_eq!(
        rcpt(&m, 0)["reply"],
        "451 4.7.5 MTA-STS policy of other.test (enforce) lists none of its MX hosts: mx.other.test",
        "{m}"
    );
    assert_eq!(rcpt(&m, 1)["state"], "deferred", "{m}");
    let reply = rcpt(&m, 1)["reply"].as_str().unwrap();
    assert!(
        reply.contains("does not offer STARTTLS")
            && reply.contains("MTA-STS policy of plain.test (enforce)"),
        "{m}"
    );
    // Only the three without an applicable enforce policy reached the sink.
    let files = sink.wait_files(5, Duration::from_secs(5));
    let mut got: Vec<String> = files.iter().flat_map(|f| rcpts_of(f)).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "c@testing.test",
            "d@none.test",
            "e@redirect.test",
            "f@html.test",
            "g@big.test"
        ]
    );
    // No TXT record: no fetch. Each other policy fetched once, however
    // many connections and retries.
    assert_eq!(server.requests_for("mta-sts.none.test"), 0);
    h.wait_message(id, Duration::from_secs(20), |m| {
        rcpt(m, 0)["attempts"].as_u64().unwrap_or(0) >= 2
    });
    for d in ["other", "plain", "testing", "redirect", "html", "big"] {
        assert_eq!(server.requests_for(&format!("mta-sts.{d}.test")), 1, "{d}");
    }
    let log = h.log();
    for why in [
        "answered 301 Moved Permanently: a redirect, which MTA-STS does not follow",
        "the content type is `text/html`, not text/plain",
        "the policy is larger than 65536 bytes",
    ] {
        assert!(log.contains(why), "{why}: {log}");
    }
    assert!(
        metric(&h, "herald_mta_sts_failures_total{mode=\"enforce\"}") >= 2.0,
        "{log}"
    );
    assert!(metric(&h, "herald_mta_sts_failures_total{mode=\"testing\"}") >= 1.0);

    // The policies survive a restart: with the policy server gone, the
    // cached enforce policy of other.test still defers its mail.
    server.stop();
    h.restart();
    let id = send(&h, &["x@other.test", "y@none.test"]);
    let m = h.wait_message(id, Duration::from_secs(30), |m| {
        attempted(m, 0) && rcpt(m, 1)["state"] == "delivered"
    });
    assert_eq!(rcpt(&m, 0)["state"], "deferred", "{m}");
    assert!(
        rcpt(&m, 0)["reply"]
            .as_str()
            .unwrap()
            .starts_with("451 4.7.5 MTA-STS policy of other.test (enforce)"),
        "{m}"
    );
    let files = sink.wait_files(6, Duration::from_secs(5));
    assert!(
        !files
            .iter()
            .flat_map(|f| rcpts_of(f))
            .any(|r| r.ends_with("@other.test"))
    );
}

/// With the STARTTLS test server (certificate for `mx.tls.test` from its
/// own CA) as every MX:
/// - good.test (enforce, MX mx.tls.test listed): delivered over TLS;
/// - bad.test (enforce, `*.bad.test` listed, MX mx.bad.test, for which
///   the certificate is not valid): deferred;
/// - lax.test (testing, the same certificate problem): delivered anyway.
#[test]
fn enforce_requires_a_verified_certificate_testing_only_reports() {
    let tls = TlsSmtp::start(Mode::StartTls, "", "");
    let dns = dns(
        &["bad.test", "lax.test"],
        &[],
        &[
            "--mx-host=good.test,mx.tls.test,10".into(),
            "--host-record=mx.tls.test,127.0.0.1".into(),
            "--host-record=mta-sts.good.test,127.0.0.1".into(),
            "--txt-record=_mta-sts.good.test,v=STSv1; id=20260101".into(),
        ],
    );
    let mut answers = HashMap::new();
    answers.insert(
        "mta-sts.good.test".to_string(),
        policy("enforce", &["mx.tls.test"]),
    );
    answers.insert(
        "mta-sts.bad.test".to_string(),
        policy("enforce", &["*.bad.test"]),
    );
    answers.insert(
        "mta-sts.lax.test".to_string(),
        policy("testing", &["mx.lax.test"]),
    );
    let server = PolicyServer::start(answers);
    // Both test CAs: the policy server's and the SMTP server's.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("cas.pem");
    let mut pem = std::fs::read(&server.ca).unwrap();
    pem.extend(std::fs::read(&tls.cert).unwrap());
    std::fs::write(&ca, pem).unwrap();
    let h = start(&dns, tls.port, server.port, &ca, "");
    let id = send(&h, &["a@good.test", "b@bad.test", "c@lax.test"]);
    let m = h.wait_message(id, Duration::from_secs(30), |m| {
        rcpt(m, 0)["state"] == "delivered" && attempted(m, 1) && rcpt(m, 2)["state"] == "delivered"
    });
    assert_eq!(rcpt(&m, 0)["host"], "mx.tls.test", "{m}");
    assert_eq!(rcpt(&m, 1)["state"], "deferred", "{m}");
    let reply = rcpt(&m, 1)["reply"].as_str().unwrap();
    assert!(
        reply.contains("TLS with mx.bad.test failed")
            && reply.contains("certificate")
            && reply.contains("MTA-STS policy of bad.test (enforce)"),
        "{m}"
    );
    let got = tls.received();
    let mut rcpts: Vec<String> = got.iter().flat_map(|r| r.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["a@good.test", "c@lax.test"]);
    assert!(got.iter().all(|r| r.tls));
    let log = h.log();
    assert!(log.contains("MTA-STS (testing)"), "{log}");
    assert!(metric(&h, "herald_mta_sts_failures_total{mode=\"enforce\"}") >= 1.0);
    assert!(metric(&h, "herald_mta_sts_failures_total{mode=\"testing\"}") >= 1.0);
}

/// `mta_sts = "off"` ignores policies; bad values are reported with their
/// place by `check-config`.
#[test]
fn mta_sts_can_be_turned_off_and_its_keys_are_checked() {
    let dns = dns(&["other.test"], &[], &[]);
    let mut answers = HashMap::new();
    answers.insert(
        "mta-sts.other.test".to_string(),
        policy("enforce", &["mx.elsewhere.test"]),
    );
    let server = PolicyServer::start(answers);
    let sink = Sink::start(&[]);
    let h = start(
        &dns,
        sink.port,
        server.port,
        &server.ca,
        "mta_sts = \"off\"",
    );
    let id = send(&h, &["a@other.test"]);
    let m = h.wait_message(id, Duration::from_secs(20), |m| {
        rcpt(m, 0)["state"] == "delivered"
    });
    assert_eq!(rcpt(&m, 0)["host"], "mx.other.test", "{m}");
    assert_eq!(server.requests_for("mta-sts.other.test"), 0);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        common::config_text(
            &dir.path().join("data"),
            "[delivery]\nmta_sts = \"always\"\nmta_sts_https_port = 0\nmta_sts_ca_file = \"missing.pem\"\n",
        ),
    )
    .unwrap();
    let (code, out, err) = run(&config, &["check-config"]);
    let all = format!("{out}{err}");
    assert_ne!(code, 0, "{all}");
    assert!(
        all.contains("`delivery.mta_sts`: `always` is neither \"enforce-policies\" nor \"off\""),
        "{all}"
    );
    assert!(
        all.contains("`delivery.mta_sts_https_port`: must be between 1 and 65535"),
        "{all}"
    );
    assert!(
        all.contains("`delivery.mta_sts_ca_file`: cannot read") && all.contains("missing.pem"),
        "{all}"
    );
}
