//! Loopback tests of the listener: a real client over TCP (and TLS) against
//! [`serve`], with a sink that accepts addresses at `bounces.test` and
//! `postmaster`, and records what it is given.

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use super::*;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// How long a test waits for any one reply before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// Accepts `*@bounces.test` and `postmaster`, records deliveries; can fail
/// them, or hold them until the test lets them through.
#[derive(Default)]
struct TestSink {
    delivered: Mutex<Vec<(Envelope, Vec<u8>)>>,
    fail: AtomicBool,
    /// When set, a delivery says so on `entered` and waits for a permit.
    gate: Option<(Arc<Notify>, Arc<Semaphore>)>,
}

impl TestSink {
    fn delivered(&self) -> Vec<(Envelope, Vec<u8>)> {
        self.delivered.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

impl Sink for TestSink {
    fn rcpt(&self, _envelope: &Envelope, address: &str) -> RcptDecision {
        if address.ends_with("@bounces.test") || address.eq_ignore_ascii_case("postmaster") {
            RcptDecision::Accept
        } else {
            RcptDecision::Refuse {
                code: 550,
                status: "5.1.1".into(),
                text: "No such user here".into(),
            }
        }
    }

    async fn deliver(&self, envelope: Envelope, data: Vec<u8>) -> Result<String, String> {
        if let Some((entered, release)) = &self.gate {
            entered.notify_one();
            let _permit = release.acquire().await;
        }
        if self.fail.load(Ordering::Relaxed) {
            return Err("store unavailable".into());
        }
        let mut d = self.delivered.lock().map_err(|_| "poisoned".to_string())?;
        d.push((envelope, data));
        Ok(format!("m{}", d.len()))
    }
}

/// Settings with room for everything; tests narrow what they test.
fn settings() -> Settings {
    Settings {
        hostname: "mx.test".into(),
        max_message_bytes: 10_000,
        max_recipients: 5,
        max_connections: 20,
        max_connections_per_ip: 10,
        max_messages_per_ip_per_minute: 100,
        command_timeout: PATIENCE,
        data_timeout: PATIENCE,
        tls: None,
    }
}

/// A listener on a loopback port.
struct Server {
    addr: SocketAddr,
    sink: Arc<TestSink>,
    stats: Arc<Stats>,
    activity: Activity,
    task: JoinHandle<()>,
}

async fn start(settings: Settings, sink: TestSink) -> TestResult<Server> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let sink = Arc::new(sink);
    let stats = Arc::new(Stats::default());
    let activity = Activity::new();
    let task = tokio::spawn(serve(
        listener,
        Arc::new(settings),
        sink.clone(),
        stats.clone(),
        activity.clone(),
    ));
    Ok(Server {
        addr,
        sink,
        stats,
        activity,
        task,
    })
}

impl Server {
    /// A client that has read the banner.
    async fn connect(&self) -> TestResult<Client<TcpStream>> {
        let mut c = Client::new(TcpStream::connect(self.addr).await?);
        c.answer("220 mx.test ESMTP Herald").await?;
        Ok(c)
    }

    /// A client that has said EHLO.
    async fn hello(&self) -> TestResult<Client<TcpStream>> {
        let mut c = self.connect().await?;
        c.send("EHLO client.test\r\n").await?;
        c.answer("250 ").await?;
        Ok(c)
    }

    fn count(&self, counter: fn(&Stats) -> &AtomicU64) -> u64 {
        counter(&self.stats).load(Ordering::Relaxed)
    }
}

/// An SMTP client that reads whole (multi-line) replies.
struct Client<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(io: S) -> Client<S> {
        Client {
            io: BufReader::new(io),
        }
    }

    async fn send(&mut self, text: &str) -> TestResult {
        self.send_bytes(text.as_bytes()).await
    }

    async fn send_bytes(&mut self, bytes: &[u8]) -> TestResult {
        self.io.get_mut().write_all(bytes).await?;
        Ok(())
    }

    /// The next reply, all its lines joined with `\n`.
    async fn reply(&mut self) -> TestResult<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(PATIENCE, self.io.read_line(&mut line)).await??;
            if n == 0 {
                return Err(format!("connection closed after {lines:?}").into());
            }
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Ok(lines.join("\n"));
            }
        }
    }

    /// The next reply, whose last line must start with `start`.
    async fn answer(&mut self, start: &str) -> TestResult<String> {
        let reply = self.reply().await?;
        let last = reply.lines().last().unwrap_or_default();
        if !last.starts_with(start) {
            return Err(format!("expected {start:?}, got {reply:?}").into());
        }
        Ok(reply)
    }

    /// One reply per start, in order.
    async fn answers(&mut self, starts: &[&str]) -> TestResult {
        for start in starts {
            self.answer(start).await?;
        }
        Ok(())
    }

    /// Whether the server closed the connection (reads nothing more).
    async fn closed(&mut self) -> TestResult<bool> {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(PATIENCE, self.io.read_to_end(&mut rest)).await;
        Ok(matches!(read, Ok(Ok(0))))
    }
}

/// Waits (a bounded while) until `check` holds.
async fn eventually(check: impl Fn() -> bool) -> bool {
    for _ in 0..500 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

#[tokio::test]
async fn a_pipelined_session_delivers_to_the_accepted_recipients() -> TestResult {
    let server = start(settings(), TestSink::default()).await?;
    let mut c = server.connect().await?;
    c.send("EHLO client.test\r\n").await?;
    let ehlo = c.reply().await?;
    for capability in [
        "PIPELINING",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SIZE 10000",
        "SMTPUTF8",
        "CHUNKING",
    ] {
        assert!(ehlo.contains(capability), "{capability} in {ehlo:?}");
    }
    assert!(ehlo.starts_with("250-mx.test"), "{ehlo:?}");
    assert!(
        !ehlo.contains("STARTTLS"),
        "no STARTTLS without TLS: {ehlo:?}"
    );
    // One write, the way a pipelining MTA sends a bounce (null sender).
    c.send(concat!(
        "MAIL FROM:<>\r\n",
        "RCPT TO:<b+1@bounces.test>\r\n",
        "RCPT TO:<someone@elsewhere.test>\r\n",
        "RCPT TO:<postmaster>\r\n",
        "DATA\r\n",
    ))
    .await?;
    c.answers(&[
        "250 2.1.0",
        "250 2.1.5",
        "550 5.1.1 No such user here",
        "250 2.1.5",
        "354 ",
    ])
    .await?;
    // The end of the data, the next transaction and its data in one write.
    c.send(concat!(
        "Subject: bounce\r\n\r\nbody\r\n.\r\n",
        "MAIL FROM:<fbl@isp.test> SIZE=100 BODY=8BITMIME\r\n",
        "RCPT TO:<fbl@bounces.test>\r\n",
        "DATA\r\n",
    ))
    .await?;
    c.answers(&["250 2.0.0 Ok: m1", "250 2.1.0", "250 2.1.5", "354 "])
        .await?;
    c.send("report\r\n.\r\nQUIT\r\n").await?;
    c.answers(&["250 2.0.0 Ok: m2", "221 2.0.0"]).await?;
    assert!(c.closed().await?);

    let delivered = server.sink.delivered();
    let [(first, first_data), (second, second_data)] = delivered.as_slice() else {
        return Err(format!("two messages expected, got {}", delivered.len()).into());
    };
    assert_eq!(first.mail_from, "");
    assert_eq!(first.rcpts, ["b+1@bounces.test", "postmaster"]);
    assert_eq!(first.helo, "client.test");
    assert!(!first.tls);
    assert!(first.peer.ip().is_loopback());
    assert_eq!(first_data, b"Subject: bounce\r\n\r\nbody\r\n");
    assert_eq!(second.mail_from, "fbl@isp.test");
    assert_eq!(second_data, b"report\r\n");
    assert_eq!(server.count(|s| &s.messages_accepted), 2);
    assert_eq!(server.count(|s| &s.rcpt_refused), 1);
    assert_eq!(server.count(|s| &s.sessions), 1);
    Ok(())
}

#[tokio::test]
async fn dots_are_unstuffed_and_only_crlf_dot_crlf_ends_the_data() -> TestResult {
    let server = start(settings(), TestSink::default()).await?;
    let mut c = server.hello().await?;
    let message =
        b"..first line starts with a dot\r\nmid\r\n...two\r\nbare\n.\nnot the end\r\n.\r\n";
    c.send("MAIL FROM:<>\r\nRCPT TO:<a@bounces.test>\r\nDATA\r\n")
        .await?;
    c.answers(&["250", "250", "354"]).await?;
    c.send_bytes(message).await?;
    c.answer("250 2.0.0 Ok: m1").await?;
    // An empty message: the end marker right after 354.
    c.send("MAIL FROM:<>\r\nRCPT TO:<a@bounces.test>\r\nDATA\r\n")
        .await?;
    c.answers(&["250", "250", "354"]).await?;
    c.send(".\r\n").await?;
    c.answer("250 2.0.0 Ok: m2").await?;

    let delivered = server.sink.delivered();
    let data: Vec<&[u8]> = delivered.iter().map(|(_, d)| d.as_slice()).collect();
    assert_eq!(
        data,
        [
            b".first line starts with a dot\r\nmid\r\n..two\r\nbare\n.\nnot the end\r\n".as_slice(),
            b"".as_slice(),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn commands_out_of_sequence_get_503_and_data_without_recipients_554() -> TestResult {
    let server = start(settings(), TestSink::default()).await?;
    let mut c = server.connect().await?;
    c.send("MAIL FROM:<a@b.test>\r\nEHLO client.test\r\nRCPT TO:<a@bounces.test>\r\nDATA\r\n")
        .await?;
    c.answers(&["503 5.5.1", "250 ", "503 5.5.1", "503 5.5.1"])
        .await?;
    c.send("MAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<nobody@elsewhere.test>\r\nDATA\r\n")
        .await?;
    c.answers(&["250 2.1.0", "503 5.5.1", "550 5.1.1", "554 5.5.1"])
        .await?;
    // RSET ends the transaction; the session goes on.
    c.send("RSET\r\nRCPT TO:<a@bounces.test>\r\nNOOP\r\n")
        .await?;
    c.answers(&["250 2.0.0", "503 5.5.1", "250 2.0.0"]).await?;
    assert!(server.sink.delivered().is_empty());
    Ok(())
}

#[tokio::test]
async fn messages_over_the_size_limit_are_refused_and_the_session_goes_on() -> TestResult {
    let server = start(
        Settings {
            max_message_bytes: 1000,
            ..settings()
        },
        TestSink::default(),
    )
    .await?;
    let mut c = server.hello().await?;
    c.send("MAIL FROM:<> SIZE=1001\r\n").await?;
    c.answer("552 5.3.4").await?;
    c.send("MAIL FROM:<> SIZE=500\r\nRCPT TO:<a@bounces.test>\r\nDATA\r\n")
        .await?;
    c.answers(&["250", "250", "354"]).await?;
    let line = format!("{}\r\n", "x".repeat(98));
    c.send(&line.repeat(50)).await?;
    c.send(".\r\nNOOP\r\n").await?;
    c.answers(&["552 5.3.4", "250 2.0.0"]).await?;
    // Exactly at the limit is fine.
    c.send("MAIL FROM:<>\r\nRCPT TO:<a@bounces.test>\r\nDATA\r\n")
        .await?;
    c.answers(&["250", "250", "354"]).await?;
    c.send(&format!("{}.\r\n", line.repeat(10))).await?;
    c.answer("250 2.0.0 Ok: m1").await?;
    assert_eq!(server.count(|s| &s.messages_refused), 2);
    Ok(())
}

#[tokio::test]
async fn recipients_past_the_limit_get_452_and_duplicates_count_once() -> TestResult {
    let server = start(
        Settings {
            max_recipients: 2,
            ..settings()
        },
        TestSink::default(),
    )
    .await?;
    let mut c = server.hello().await?;
    c.send(concat!(
        "MAIL FROM:<>\r\n",
        "RCPT TO:<a@bounces.test>\r\n",
        "RCPT TO:<A@bounces.test>\r\n",
        "RCPT TO:<b@bounces.test>\r\n",
        "RCPT TO:<c@bounces.test>\r\n",
        "DATA\r\n",
    ))
    .await?;
    c.answers(&[
        "250",
        "250 2.1.5",
        "250 2.1.5",
        "250 2.1.5",
        "452 4.5.3",
        "354",
    ])
    .await?;
    c.send("x\r\n.\r\n").await?;
    c.answer("250 2.0.0").await?;
    let delivered = server.sink.delivered();
    assert_eq!(
        delivered.first().map(|(e, _)| e.rcpts.clone()),
        Some(vec!["a@bounces.test".into(), "b@bounces.test".into()])
    );
    Ok(())
}

#[tokio::test]
async fn connections_are_limited_per_client_and_in_total() -> TestResult {
    let server = start(
        Settings {
            max_connections_per_ip: 2,
            ..settings()
        },
        TestSink::default(),
    )
    .await?;
    let mut first = server.connect().await?;
    let _second = server.connect().await?;
    let mut third = Client::new(TcpStream::connect(server.addr).await?);
    third.answer("421 4.7.0").await?;
    assert!(third.closed().await?);
    assert_eq!(server.count(|s| &s.refused_connections), 1);
    // A closed connection frees its place (once its session has ended).
    first.send("QUIT\r\n").await?;
    first.answer("221").await?;
    let mut admitted = false;
    for _ in 0..100 {
        let mut c = Client::new(TcpStream::connect(server.addr).await?);
        if c.answer("220").await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "a place came free after QUIT");

    let server = start(
        Settings {
            max_connections: 1,
            ..settings()
        },
        TestSink::default(),
    )
    .await?;
    let _only = server.connect().await?;
    let mut second = Client::new(TcpStream::connect(server.addr).await?);
    second.answer("421 4.7.0").await?;
    Ok(())
}

#[tokio::test]
async fn a_client_over_the_message_rate_gets_451_at_mail_from() -> TestResult {
    let server = start(
        Settings {
            max_messages_per_ip_per_minute: 2,
            ..settings()
        },
        TestSink::default(),
    )
    .await?;
    let mut c = server.hello().await?;
    c.send("MAIL FROM:<>\r\nRSET\r\nMAIL FROM:<>\r\nRSET\r\nMAIL FROM:<>\r\n")
        .await?;
    c.answers(&["250 2.1.0", "250", "250 2.1.0", "250", "451 4.7.1"])
        .await?;
    // The bucket is per client, not per connection.
    let mut other = server.hello().await?;
    other.send("MAIL FROM:<>\r\n").await?;
    other.answer("451 4.7.1").await?;
    assert_eq!(server.count(|s| &s.messages_refused), 2);
    Ok(())
}

#[tokio::test]
async fn a_silent_client_times_out_with_421() -> TestResult {
    let quick = Duration::from_millis(100);
    let server = start(
        Settings {
            command_timeout: quick,
            ..settings()
        },
        TestSink::default(),
    )
    .await?;
    let mut c = server.connect().await?;
    c.answer("421 4.4.2").await?;
    assert!(c.closed().await?);
    // Also in the middle of a line: the line must be complete in time.
    let mut c = server.connect().await?;
    c.send("NOOP").await?;
    c.answer("421 4.4.2").await?;

    let server = start(
        Settings {
            data_timeout: quick,
            ..settings()
        },
        TestSink::default(),
    )
    .await?;
    let mut c = server.hello().await?;
    c.send("MAIL FROM:<>\r\nRCPT TO:<a@bounces.test>\r\nDATA\r\n")
        .await?;
    c.answers(&["250", "250", "354"]).await?;
    c.send("Subject: never finished\r\n").await?;
    c.answer("421 4.4.2").await?;
    assert!(c.closed().await?);
    assert!(server.sink.delivered().is_empty());
    assert!(eventually(|| server.count(|s| &s.timeouts) == 1).await);
    Ok(())
}

#[tokio::test]
async fn syntax_errors_get_5xx_and_too_many_close_the_session() -> TestResult {
    let server = start(settings(), TestSink::default()).await?;
    let mut c = server.hello().await?;
    c.send("FOO bar\r\nMAIL FROM:nobracket@x.test\r\nHELP\r\nVRFY someone\r\nAUTH PLAIN AAAA\r\n")
        .await?;
    c.answers(&["500 5.5.1", "501 5.", "214 2.0.0", "252 2.5.0", "502 5.5.1"])
        .await?;
    // A line longer than the limit gets one 500 5.5.2; the next line is fine.
    c.send(&format!("NOOP {}\r\nNOOP\r\n", "y".repeat(10_000)))
        .await?;
    c.answers(&["500 5.5.2", "250 2.0.0"]).await?;
    // Bytes that are no text at all.
    c.send_bytes(b"\x00\xff\xfe\r\n").await?;
    c.answer("500 5.5.1").await?;
    // Five errors so far; five more and the server gives up.
    c.send(&"BAD\r\n".repeat(5)).await?;
    c.answers(&["500"; 5]).await?;
    c.answer("421 4.7.0").await?;
    assert!(c.closed().await?);
    Ok(())
}

#[tokio::test]
async fn utf8_addresses_pass_and_bytes_that_are_not_utf8_are_refused() -> TestResult {
    let server = start(settings(), TestSink::default()).await?;
    let mut c = server.hello().await?;
    c.send_bytes(b"MAIL FROM:<\xff@x.test>\r\nMAIL FROM:<j\xc3\xb6rg@x.test> SMTPUTF8\r\n")
        .await?;
    c.answers(&["501 5.1.7", "250 2.1.0"]).await?;
    c.send_bytes(b"RCPT TO:<\xfe@bounces.test>\r\nRCPT TO:<b\xc3\xa4r@bounces.test>\r\nDATA\r\n")
        .await?;
    c.answers(&["501 5.1.3", "250 2.1.5", "354"]).await?;
    c.send("x\r\n.\r\n").await?;
    c.answer("250 2.0.0").await?;
    let delivered = server.sink.delivered();
    let Some((envelope, _)) = delivered.first() else {
        return Err("nothing delivered".into());
    };
    assert_eq!(envelope.mail_from, "jörg@x.test");
    assert_eq!(envelope.rcpts, ["bär@bounces.test"]);
    Ok(())
}

#[tokio::test]
async fn a_sink_error_is_a_451_and_the_message_is_not_counted() -> TestResult {
    let sink = TestSink {
        fail: AtomicBool::new(true),
        ..TestSink::default()
    };
    let server = start(settings(), sink).await?;
    let mut c = server.hello().await?;
    c.send("MAIL FROM:<>\r\nRCPT TO:<a@bounces.test>\r\nDATA\r\n")
        .await?;
    c.answers(&["250", "250", "354"]).await?;
    c.send("x\r\n.\r\n").await?;
    c.answer("451 4.3.0 store unavailable").await?;
    // The transaction is over; a new one may start.
    c.send("MAIL FROM:<>\r\n").await?;
    c.answer("250 2.1.0").await?;
    assert_eq!(server.count(|s| &s.messages_accepted), 0);
    assert_eq!(server.count(|s| &s.messages_refused), 1);
    Ok(())
}

#[tokio::test]
async fn bdat_chunks_make_a_message_and_refused_chunks_are_skipped() -> TestResult {
    let server = start(
        Settings {
            max_message_bytes: 100,
            ..settings()
        },
        TestSink::default(),
    )
    .await?;
    let mut c = server.hello().await?;
    // A chunk without a transaction is read and dropped, never taken for
    // commands.
    c.send("BDAT 6\r\nQUIT\r\nNOOP\r\n").await?;
    c.answers(&["503 5.5.1", "250 2.0.0"]).await?;
    c.send("MAIL FROM:<>\r\nRCPT TO:<a@bounces.test>\r\nBDAT 5\r\nhelloBDAT 8 LAST\r\n world\r\n")
        .await?;
    c.answers(&["250", "250", "250 2.0.0", "250 2.0.0 Ok: m1"])
        .await?;
    // Over the size: 552, and the chunk already pipelined behind it is
    // dropped with a 503.
    let big = "z".repeat(101);
    c.send(&format!(
        "MAIL FROM:<>\r\nRCPT TO:<a@bounces.test>\r\nBDAT 101\r\n{big}BDAT 3 LAST\r\nabcNOOP\r\n"
    ))
    .await?;
    c.answers(&["250", "250", "552 5.3.4", "503 5.5.1", "250 2.0.0"])
        .await?;
    // DATA after BDAT is out of sequence.
    c.send("MAIL FROM:<>\r\nRCPT TO:<a@bounces.test>\r\nBDAT 1\r\nxDATA\r\nBDAT 0 LAST\r\n")
        .await?;
    c.answers(&["250", "250", "250", "503 5.5.1", "250 2.0.0 Ok: m2"])
        .await?;

    let delivered = server.sink.delivered();
    let data: Vec<&[u8]> = delivered.iter().map(|(_, d)| d.as_slice()).collect();
    assert_eq!(data, [b"hello world\r\n".as_slice(), b"x".as_slice()]);
    Ok(())
}

#[tokio::test]
async fn stopping_closes_idle_sessions_and_waits_for_a_delivery() -> TestResult {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Semaphore::new(0));
    let sink = TestSink {
        gate: Some((entered.clone(), release.clone())),
        ..TestSink::default()
    };
    let server = start(settings(), sink).await?;
    let mut idle = server.hello().await?;
    let mut busy = server.hello().await?;
    busy.send("MAIL FROM:<>\r\nRCPT TO:<a@bounces.test>\r\nDATA\r\n")
        .await?;
    busy.answers(&["250", "250", "354"]).await?;
    busy.send("x\r\n.\r\n").await?;
    tokio::time::timeout(PATIENCE, entered.notified()).await?;

    server.activity.stop();
    idle.answer("421 4.3.2").await?;
    assert!(idle.closed().await?);
    tokio::time::timeout(PATIENCE, server.task).await??;
    // The delivery in flight holds the daemon until it is done.
    assert_eq!(server.activity.held().get("inbound smtp"), Some(&1));
    release.add_permits(1);
    busy.answer("250 2.0.0 Ok: m1").await?;
    busy.answer("421 4.3.2").await?;
    assert!(server.activity.drain(PATIENCE).await.is_empty());
    assert_eq!(server.sink.delivered().len(), 1);
    Ok(())
}

/// A self-signed certificate and its key, made by openssl in `dir`.
fn self_signed(dir: &Path) -> TestResult<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", "/CN=localhost", "-days", "1"])
        .output()?;
    if !out.status.success() {
        return Err(format!("openssl failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok((cert, key))
}

/// Trusts exactly one certificate (the test's self-signed one, which has
/// no subjectAltName and so would fail a name check).
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the test certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client that trusts only the certificate in `cert_pem`.
fn tls_connector(cert_pem: &Path) -> TestResult<tokio_rustls::TlsConnector> {
    let cert = CertificateDer::from_pem_file(cert_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { cert, provider }))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[tokio::test]
async fn starttls_upgrades_resets_the_session_and_is_refused_twice() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (cert, key) = self_signed(dir.path())?;
    let server = start(
        Settings {
            tls: Some(load_tls(&cert, &key)?),
            ..settings()
        },
        TestSink::default(),
    )
    .await?;
    let mut c = server.connect().await?;
    c.send("EHLO client.test\r\n").await?;
    let ehlo = c.answer("250 ").await?;
    assert!(ehlo.contains("STARTTLS"), "{ehlo:?}");
    // A transaction begun in the clear does not survive the upgrade, and a
    // command pipelined behind STARTTLS is dropped (RFC 3207), not run
    // after the handshake as if it had come encrypted.
    c.send("MAIL FROM:<>\r\nSTARTTLS\r\nRSET\r\n").await?;
    c.answers(&["250 2.1.0", "220 2.0.0"]).await?;
    let tls = tls_connector(&cert)?
        .connect(ServerName::try_from("localhost")?, c.io.into_inner())
        .await?;
    let mut c = Client::new(tls);
    c.send("MAIL FROM:<>\r\nEHLO client.test\r\n").await?;
    c.answer("503 5.5.1").await?;
    let ehlo = c.answer("250 ").await?;
    assert!(!ehlo.contains("STARTTLS"), "no STARTTLS over TLS: {ehlo:?}");
    c.send("STARTTLS\r\nMAIL FROM:<>\r\nRCPT TO:<a@bounces.test>\r\nDATA\r\n")
        .await?;
    c.answers(&["503 5.5.1", "250 2.1.0", "250 2.1.5", "354"])
        .await?;
    c.send("secret\r\n.\r\nQUIT\r\n").await?;
    c.answers(&["250 2.0.0 Ok: m1", "221"]).await?;

    let delivered = server.sink.delivered();
    assert_eq!(delivered.len(), 1);
    assert!(delivered.iter().all(|(e, _)| e.tls));
    assert_eq!(server.count(|s| &s.tls_sessions), 1);
    Ok(())
}

#[tokio::test]
async fn python_smtplib_delivers_through_starttls() -> TestResult {
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        eprintln!("skipped: no {}", python.display());
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (cert, key) = self_signed(dir.path())?;
    let server = start(
        Settings {
            tls: Some(load_tls(&cert, &key)?),
            ..settings()
        },
        TestSink::default(),
    )
    .await?;
    let script = format!(
        r#"
import smtplib, ssl
s = smtplib.SMTP("127.0.0.1", {port}, local_hostname="py.test", timeout=10)
s.starttls(context=ssl._create_unverified_context())
refused = s.sendmail("", ["a@bounces.test", "nobody@elsewhere.test"], b"Subject: hi\r\n\r\n.dot\r\n")
assert list(refused) == ["nobody@elsewhere.test"], refused
s.quit()
"#,
        port = server.addr.port()
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .output()
    })
    .await??;
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let delivered = server.sink.delivered();
    let [(envelope, data)] = delivered.as_slice() else {
        return Err(format!("one message expected, got {}", delivered.len()).into());
    };
    assert!(envelope.tls);
    assert_eq!(envelope.helo, "py.test");
    assert_eq!(envelope.rcpts, ["a@bounces.test"]);
    assert_eq!(data, b"Subject: hi\r\n\r\n.dot\r\n");
    Ok(())
}

#[test]
fn load_tls_names_the_file_and_the_problem() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (cert, key) = self_signed(dir.path())?;
    assert!(load_tls(&cert, &key).is_ok());

    let missing = dir.path().join("missing.pem");
    let Err(e) = load_tls(&missing, &key) else {
        return Err("a missing certificate file loaded".into());
    };
    assert!(matches!(e, ServerError::Read { .. }), "{e}");
    assert!(e.to_string().contains("missing.pem"), "{e}");

    // The certificate given as the key: a PEM file with no key in it.
    let Err(e) = load_tls(&cert, &cert) else {
        return Err("a key file without a key loaded".into());
    };
    assert!(matches!(e, ServerError::Key { .. }), "{e}");
    assert!(
        e.to_string().contains("cert.pem") && e.to_string().contains("no PEM private key"),
        "{e}"
    );

    // The key given as the certificate.
    let Err(e) = load_tls(&key, &key) else {
        return Err("a certificate file without a certificate loaded".into());
    };
    assert!(
        e.to_string().contains("key.pem") && e.to_string().contains("no PEM certificate"),
        "{e}"
    );
    Ok(())
}

/// A small deterministic random source for the garbage test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[tokio::test]
async fn garbage_and_mangled_commands_get_one_reply_each_and_never_kill_a_session() -> TestResult {
    const SEEDS: &[&[u8]] = &[
        b"EHLO client.test",
        b"HELO client.test",
        b"MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME",
        b"MAIL FROM:<> RET=FULL ENVID=x SMTPUTF8",
        b"RCPT TO:<a@bounces.test> NOTIFY=NEVER ORCPT=rfc822;a@b.test",
        b"RCPT TO:<\"quoted local\"@bounces.test>",
        b"RCPT TO:<@route.test:a@bounces.test>",
        b"RSET",
        b"NOOP x",
        b"VRFY x",
        b"HELP me",
        b"AUTH PLAIN =",
        b"EXPN list",
        b"ETRN x",
    ];
    let server = start(settings(), TestSink::default()).await?;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..30 {
        let mut c = server.connect().await?;
        for _ in 0..40 {
            let mut line = match rng.below(3) {
                // Pure noise.
                0 => (0..rng.below(80))
                    .map(|_| rng.next() as u8)
                    .collect::<Vec<u8>>(),
                // A command with a few bytes changed, or cut short.
                _ => {
                    let mut l = SEEDS[rng.below(SEEDS.len())].to_vec();
                    for _ in 0..rng.below(4) {
                        let at = rng.below(l.len());
                        if let Some(b) = l.get_mut(at) {
                            *b = rng.next() as u8;
                        }
                    }
                    l.truncate(rng.below(l.len() + 8).min(l.len()));
                    l
                }
            };
            // One line each, so every line must get exactly one reply.
            line.retain(|&b| b != b'\n');
            line.extend_from_slice(b"\r\n");
            c.send_bytes(&line).await?;
            let reply = c
                .reply()
                .await
                .map_err(|e| format!("after {line:?}: {e}"))?;
            let code = reply.lines().last().unwrap_or_default();
            assert!(
                code.len() >= 3 && code.as_bytes().iter().take(3).all(u8::is_ascii_digit),
                "{reply:?}"
            );
            if code.starts_with("421") || code.starts_with("221") {
                break;
            }
            assert!(
                !code.starts_with("354"),
                "no DATA without a recipient: {line:?}"
            );
        }
    }
    // The listener is still there and well.
    let mut c = server.hello().await?;
    c.send("NOOP\r\n").await?;
    c.answer("250").await?;
    Ok(())
}
