//! Real peers for delivery tests: Postfix's `smtp-sink` as the receiving
//! server, dnsmasq on a loopback port as the DNS server, dkimpy as the
//! independent DKIM verifier. `scripts/test` installs them (Debian packages
//! postfix, dnsmasq-base, python3-dkim).
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port free for both TCP and UDP on 127.0.0.1 (dnsmasq needs both).
///
/// Ports come from 20000–32767, below Linux's ephemeral range (32768–60999):
/// a test that restarts a server on "its" port later must not find it taken
/// by one of the daemon's outgoing connections, which use ephemeral ports.
/// No port is handed out twice in one test process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut given = GIVEN.lock().unwrap();
    for i in 0..2000u64 {
        let port = 20000
            + ((seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(i * 7919))
                % 12768) as u16;
        if given.contains(&port) {
            continue;
        }
        let Ok(_udp) = UdpSocket::bind(("127.0.0.1", port)) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in 20000-32767");
}

fn wait_tcp(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the openssl CLI in `dir` (test keys and certificates); panics if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("openssl (Debian package openssl) must be installed");
    assert!(st.success(), "openssl {args:?} failed");
}

/// `smtp-sink` writing every transaction to its own file.
pub struct Sink {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
    counters: Arc<Mutex<String>>,
}

impl Sink {
    /// Starts a sink on a free port with extra smtp-sink options (fault
    /// injection: `-r RCPT`, `-f .`, `-B "550 …"`, `-q MAIL`, `-w 3`…).
    pub fn start(args: &[&str]) -> Sink {
        Self::start_on(free_port(), args)
    }

    /// Starts a sink on `port`.
    pub fn start_on(port: u16, args: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("tempdir");
        // smtp-sink drops to `nobody` before writing its files.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod");
        let template = format!("{}/%M.", dir.path().display());
        let mut child = Command::new("smtp-sink")
            .args(["-u", "nobody", "-c", "-d", &template])
            .args(args)
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "smtp-sink (Debian package postfix) must be installed; scripts/test installs it",
            );
        let counters = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().expect("stdout");
        let c = counters.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = c.lock().unwrap();
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
                if s.len() > 1 << 16 {
                    let cut = s.len() - 4096;
                    let keep = s.split_off(cut);
                    *s = keep;
                }
            }
        });
        wait_tcp(port);
        Sink {
            port,
            dir,
            child,
            counters,
        }
    }

    fn counter(&self, name: &str) -> u64 {
        let s = self.counters.lock().unwrap();
        s.rsplit('\r')
            .find_map(|rec| {
                rec.split_whitespace().find_map(|kv| {
                    kv.strip_prefix(&format!("{name}="))
                        .and_then(|v| v.parse().ok())
                })
            })
            .unwrap_or(0)
    }

    /// Completed SMTP sessions (connections that ended).
    pub fn sessions(&self) -> u64 {
        self.counter("sess")
    }

    /// Messages received.
    pub fn received(&self) -> u64 {
        self.counter("mesg")
    }

    /// The dump files: one per transaction.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Waits until `n` transactions were written, and returns their files.
    pub fn wait_files(&self, n: usize, within: Duration) -> Vec<PathBuf> {
        let deadline = Instant::now() + within;
        loop {
            let f = self.files();
            if f.len() >= n {
                // Give a file being written a moment to be complete.
                std::thread::sleep(Duration::from_millis(100));
                return self.files();
            }
            assert!(
                Instant::now() < deadline,
                "the sink got {} transactions, expected {n}",
                f.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the sink (the port becomes free).
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The envelope recipients recorded in a sink file.
pub fn rcpts_of(file: &Path) -> Vec<String> {
    let text = String::from_utf8_lossy(&std::fs::read(file).unwrap_or_default()).into_owned();
    text.lines()
        .filter_map(|l| l.strip_prefix("X-Rcpt-Args: <"))
        .map(|l| l.trim_end_matches('>').to_string())
        .collect()
}

/// The message in a sink file: everything from the first of our headers
/// (smtp-sink puts its envelope records and a Received line first).
pub fn message_of(file: &Path) -> Vec<u8> {
    let raw = std::fs::read(file).unwrap_or_default();
    let starts = [b"DKIM-Signature:".as_slice(), b"Message-ID:", b"From:"];
    let pos = starts
        .iter()
        .filter_map(|s| raw.windows(s.len()).position(|w| w == *s))
        .min()
        .unwrap_or(0);
    // The dump uses LF line ends; SMTP (and DKIM) use CRLF.
    let mut out = Vec::with_capacity(raw.len() - pos + 1024);
    let mut prev = 0u8;
    for &b in &raw[pos..] {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// dnsmasq answering for `.test` on a loopback port, with these options
/// (`--mx-host=…`, `--host-record=…`); every other `.test` name is NXDOMAIN.
pub struct Dns {
    pub port: u16,
    child: Child,
}

impl Dns {
    /// Starts dnsmasq on a free port. A port taken between the probe and
    /// dnsmasq's bind makes dnsmasq exit at once: then it is started again
    /// on another port (a few times), and a failure names what dnsmasq said.
    pub fn start(records: &[String]) -> Dns {
        let mut said = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("dnsmasq")
                .args([
                    "--no-daemon",
                    &format!("--port={port}"),
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--local=/test/",
                    "--user=root",
                    "--pid-file=",
                ])
                .args(records)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect(
                    "dnsmasq (Debian package dnsmasq-base) must be installed; scripts/test installs it",
                );
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Dns { port, child };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    said = format!("dnsmasq on port {port} exited ({status}): {err}");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    said = format!("dnsmasq did not listen on port {port} within 20 s");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no dnsmasq: {said}");
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `herald dkim keygen` and returns the TXT record value it printed.
pub fn keygen(config: &Path, domain: &str, selector: &str, alg: &str, out: &Path) -> String {
    let (code, stdout, stderr) = super::run(
        config,
        &[
            "dkim",
            "keygen",
            "--domain",
            domain,
            "--selector",
            selector,
            "--algorithm",
            alg,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "keygen failed: {stderr}");
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("value: "))
        .expect("keygen prints the record value")
        .to_string()
}

/// Verifies every DKIM signature of `message` with dkimpy, which is given the
/// records as if from DNS (`selector._domainkey.domain` → record). Returns
/// one result per signature, in header order.
pub fn dkim_verify(message: &[u8], records: &[(&str, &str)]) -> Vec<bool> {
    const SCRIPT: &str = r#"
import sys, json, dkim
recs = json.loads(sys.argv[1])
msg = sys.stdin.buffer.read()
def dnsfunc(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    return recs.get(n.rstrip('.'), '').encode()
n = msg.count(b"\nDKIM-Signature:") + (1 if msg.startswith(b"DKIM-Signature:") else 0)
def check(i):
    try:
        return bool(dkim.DKIM(msg).verify(idx=i, dnsfunc=dnsfunc))
    except dkim.ValidationError:
        return False
print(json.dumps([check(i) for i in range(n)]))
"#;
    let map: serde_json::Map<String, serde_json::Value> = records
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT, &serde_json::Value::Object(map).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 with python3-dkim");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dkimpy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dkimpy output")
}

/// Parses a message with Python's `email` package (policy `default`): an
/// independent MIME parser. Returns `{type, defects, headers, parts}` where
/// headers are decoded (RFC 2047) and parts are the leaf parts with their
/// decoded `content` and `text` (content with decimal character references
/// resolved).
pub fn py_email(message: &[u8]) -> serde_json::Value {
    const SCRIPT: &str = r#"
import sys, json, email, re
from email import policy
msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)
defects = [repr(d) for d in msg.defects]
parts = []
for part in msg.walk():
    defects += [repr(d) for d in part.defects]
    if part.is_multipart():
        continue
    parts.append({"type": part.get_content_type(), "charset": part.get_content_charset(),
                  "cte": part.get("Content-Transfer-Encoding"), "content": part.get_content(),
                  # Herald sends HTML as 7bit with non-ASCII characters as
                  # decimal references: the text a reader sees.
                  "text": re.sub(r"&#([0-9]+);", lambda m: chr(int(m.group(1))), part.get_content())})
headers = {}
for k, v in msg.items():
    headers.setdefault(k.lower(), str(v))
    defects += [repr(d) for d in getattr(v, "defects", [])]
print(json.dumps({"type": msg.get_content_type(), "defects": defects,
                  "headers": headers, "parts": parts}))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python email failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python output")
}

/// Every `/x/TOKEN` link of kind `x` in a sink file.
pub fn tokens(file: &Path, kind: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned();
    let text = text.replace("=\n", "").replace("=\r\n", "");
    let pat = format!("/{kind}/");
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find(&pat) {
        let t: String = rest[i + pat.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if t.len() > 20 {
            out.push(t);
        }
        rest = &rest[i + pat.len()..];
    }
    out
}

/// A test CA and a server certificate it signed for `names`: (CA
/// certificate, certificate, key).
pub fn test_ca_and_cert(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| openssl(dir, args);
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Herald Test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={}", names[0]),
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\n",
            sans.join(",")
        ),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}
