//! One SMTP client session over mail-send: connect, greeting, EHLO (HELO for
//! servers without ESMTP), STARTTLS (opportunistic or required) or implicit
//! TLS, AUTH for relays, then any number of transactions, pipelined when the
//! server offers PIPELINING (RFC 2920).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use mail_send::smtp::AssertReply;
use mail_send::{Credentials, SmtpClient};
use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{EXT_PIPELINING, EXT_START_TLS, EhloResponse, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;

/// The DATA payload of a CRLF message (without its final line end): a dot
/// doubled at the start of every line (RFC 5321 §4.5.2) and the
/// terminating `CRLF.CRLF`, in one buffer written at once. (mail-send's
/// `write_message` tests every byte and writes piecewise; this finds line
/// starts with memchr, several times faster on a 20 KB newsletter.)
pub fn dot_stuffed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut last = 0;
    if body.first() == Some(&b'.') {
        out.push(b'.');
    }
    for i in memchr::memmem::find_iter(body, b"\n.") {
        out.extend_from_slice(&body[last..=i]);
        out.push(b'.');
        last = i + 1;
    }
    out.extend_from_slice(&body[last..]);
    out.extend_from_slice(b"\r\n.\r\n");
    out
}

use crate::config::Secret;

/// The end of a message's data after its last line end (RFC 5321 §4.1.1.4).
const DOT: &[u8] = b".\r\n";

/// An outcome being recorded: ready once it is durable.
pub type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What a message's final dot waits for: the previous message's outcome
/// being made durable ([`Session::send`]). `None`: nothing to wait for.
pub type Gate = Option<Pending>;

/// Waits for `gate` to open and empties it.
pub async fn pass(gate: &mut Gate) {
    if let Some(g) = gate.take() {
        g.await;
    }
}

/// The stream under a session: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How TLS is used on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// STARTTLS when offered, plain text otherwise (and after a failed
    /// handshake): MX delivery's default, like Postfix's `may`.
    Opportunistic,
    /// STARTTLS must be offered and succeed. For MX hosts the certificate is
    /// not checked (Postfix's `encrypt` level: protection from passive
    /// eavesdropping; MX certificates rarely match their names) unless an
    /// MTA-STS policy in `enforce` mode gave the target a verifying
    /// connector; relays are always verified.
    Required,
    /// TLS from the first byte (port 465 relays).
    Implicit,
    /// Never.
    Off,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// Host name: TLS server name and what logs and replies show.
    pub host: String,
    /// EHLO name.
    pub helo: String,
    /// TLS use.
    pub tls: TlsMode,
    /// AUTH credentials (relays).
    pub auth: Option<(String, Secret)>,
    /// TLS client configuration.
    pub connector: TlsConnector,
    /// Timeout for connecting and the greeting.
    pub connect_timeout: Duration,
    /// Timeout for each command and the data transfer.
    pub command_timeout: Duration,
    /// Local address to connect from (`[[sender]] source_ip`).
    pub source: Option<std::net::IpAddr>,
    /// What requires TLS here, added to a TLS failure's reply (`MTA-STS
    /// policy of x.test (enforce)`).
    pub tls_required_by: Option<String>,
}

/// A reply or a local failure, as text for the queue record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The SMTP code (0 for a local failure: connection, timeout, TLS).
    pub code: u16,
    /// The code, enhanced status code and text, e.g. `550 5.1.1 user unknown`.
    pub text: String,
}

impl Reply {
    fn from_response(r: &Response<String>) -> Reply {
        let msg = r.message.replace(['\r', '\n'], " ");
        let text = if r.esc[0] != 0 {
            format!(
                "{} {}.{}.{} {}",
                r.code,
                r.esc[0],
                r.esc[1],
                r.esc[2],
                msg.trim()
            )
        } else {
            format!("{} {}", r.code, msg.trim())
        };
        Reply { code: r.code, text }
    }

    fn local(text: impl Into<String>) -> Reply {
        Reply {
            code: 0,
            text: text.into(),
        }
    }

    /// 2xx.
    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 5xx: retrying will not help.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
}

fn describe(e: &mail_send::Error) -> Reply {
    match e {
        mail_send::Error::UnexpectedReply(r) | mail_send::Error::AuthenticationFailed(r) => {
            Reply::from_response(r)
        }
        mail_send::Error::Timeout => Reply::local("timed out waiting for the server"),
        other => Reply::local(other.to_string()),
    }
}

/// A stream that notices the server closing the connection: mail-send
/// reports an end of stream as "Unparseable SMTP reply", which hides what
/// happened. Shared by the plain and the TLS stream of one connection.
struct Watched<S> {
    inner: S,
    closed: Arc<AtomicBool>,
}

impl<S> Watched<S> {
    fn new(inner: S, closed: &Arc<AtomicBool>) -> Watched<S> {
        Watched {
            inner,
            closed: closed.clone(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() == before && buf.remaining() > 0 {
            me.closed.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether an I/O error means the server went away.
fn is_closed_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

/// Describes a failure at `step` (e.g. "at RCPT TO"): a connection the
/// server closed says so and where, anything else as [`describe`].
fn describe_at(e: &mail_send::Error, closed: &AtomicBool, step: &str) -> Reply {
    let gone = match e {
        mail_send::Error::UnparseableReply => closed.load(Ordering::Relaxed),
        mail_send::Error::Io(io) => is_closed_io(io),
        _ => false,
    };
    if gone {
        Reply::local(format!("the server closed the connection {step}"))
    } else {
        describe(e)
    }
}

/// Which command a permanent failure answered: only a refused RCPT says
/// something about the recipient's address; MAIL FROM, DATA and the end of
/// the data speak about the sender or the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// RCPT TO.
    Rcpt,
    /// MAIL FROM, DATA or the end of the data.
    Message,
}

/// The outcome for one recipient of a transaction.
#[derive(Debug, Clone)]
pub enum RcptResult {
    /// 250 after DATA.
    Delivered(Reply),
    /// Try again later.
    Temporary(Reply),
    /// Give up.
    Permanent(Reply, Stage),
}

fn result_of(r: &Reply, stage: Stage) -> RcptResult {
    if r.is_permanent() {
        RcptResult::Permanent(r.clone(), stage)
    } else {
        RcptResult::Temporary(r.clone())
    }
}

/// A connected, greeted (and possibly encrypted, authenticated) session.
pub struct Session {
    client: SmtpClient<Box<dyn Io>>,
    pipelining: bool,
    /// Whether the session is encrypted.
    pub tls: bool,
    /// The host name of the server.
    pub host: String,
    /// A previous transaction failed half-way; RSET before the next.
    dirty: bool,
    /// Set when the server closed the connection (an empty read).
    closed: Arc<AtomicBool>,
    /// The next message's envelope, sent with the last final dot, and its
    /// replies (or why they did not all come).
    ahead: Option<Ahead>,
}

/// An envelope sent ahead ([`Session::end`]).
struct Ahead {
    from: String,
    rcpts: Vec<String>,
    replies: Result<Vec<Response<String>>, Reply>,
    /// The server refused the message whose final dot it followed.
    after_refusal: bool,
}

/// What [`Session::transfer`] did.
pub enum Transfer {
    /// The transaction is over without its data (MAIL refused, no recipient
    /// accepted, DATA refused): each recipient's result.
    Done(Vec<RcptResult>),
    /// The data is written; [`Session::end`] sends the final dot.
    Sent(DataSent),
}

/// A transaction whose data is written, its final dot still to send.
pub struct DataSent {
    rcpt_replies: Vec<Reply>,
}

/// The step named when the server hangs up after the message data.
const DURING_DATA: &str = "during DATA (the message data was sent, no reply came)";

/// Why a pipelined group did not get all its replies.
enum GroupFailure {
    /// The command timeout passed.
    TimedOut,
    /// The server hung up, or a read or write failed: where.
    Failed(Reply),
}

impl GroupFailure {
    fn reply(self) -> Reply {
        match self {
            GroupFailure::TimedOut => Reply::local("timed out waiting for the server"),
            GroupFailure::Failed(r) => r,
        }
    }
}

/// MAIL FROM and one RCPT TO per recipient.
fn envelope_commands(from: &str, rcpts: &[&str]) -> (String, Vec<String>) {
    let mail = format!("MAIL FROM:<{from}>\r\n");
    (
        mail,
        rcpts.iter().map(|r| format!("RCPT TO:<{r}>\r\n")).collect(),
    )
}

/// An envelope's pipelined group: MAIL, the RCPTs, DATA.
fn pipelined_envelope<'a>(mail: &'a str, rcpt_cmds: &'a [String]) -> Vec<(&'a [u8], &'a str)> {
    let mut cmds: Vec<(&[u8], &str)> = Vec::with_capacity(rcpt_cmds.len() + 2);
    cmds.push((mail.as_bytes(), "at MAIL FROM"));
    cmds.extend(rcpt_cmds.iter().map(|c| (c.as_bytes(), "at RCPT TO")));
    cmds.push((b"DATA\r\n", "at DATA"));
    cmds
}

/// The replies to a pipelined envelope: MAIL's, each RCPT's, DATA's.
fn envelope_replies(
    replies: &[Response<String>],
    rcpts: usize,
) -> Result<(Reply, Vec<Reply>, Option<Reply>), Reply> {
    if replies.len() != rcpts + 2 {
        return Err(Reply::local("the server sent fewer replies than commands"));
    }
    let mut it = replies.iter().map(Reply::from_response);
    let mail = it.next().unwrap_or_else(|| Reply::local("no reply"));
    let rr: Vec<Reply> = it.by_ref().take(rcpts).collect();
    let data = it.next().unwrap_or_else(|| Reply::local("no reply"));
    Ok((mail, rr, Some(data)))
}

/// Why a connection could not be set up: the reply or local error, and
/// whether trying the same host again later could help.
#[derive(Debug, Clone)]
pub struct ConnectError {
    /// What happened.
    pub reply: Reply,
}

impl Session {
    /// Connects and greets; for opportunistic TLS a failed handshake is
    /// retried once without TLS (the way Postfix falls back).
    pub async fn connect(t: &Target) -> Result<Session, ConnectError> {
        match Self::connect_once(t, t.tls).await {
            Err(e) if t.tls == TlsMode::Opportunistic && e.reply.text.starts_with("TLS") => {
                tracing::info!(host = %t.host, error = %e.reply.text, "STARTTLS failed; retrying without TLS");
                Self::connect_once(t, TlsMode::Off).await
            }
            Err(mut e) if e.reply.text.starts_with("TLS") => {
                if let Some(why) = &t.tls_required_by {
                    e.reply.text = format!("{} (required by the {why})", e.reply.text);
                }
                Err(e)
            }
            other => other,
        }
    }

    async fn connect_once(t: &Target, mode: TlsMode) -> Result<Session, ConnectError> {
        let err = |reply: Reply| ConnectError { reply };
        let closed = Arc::new(AtomicBool::new(false));
        let connected = match t.source {
            Some(ip) => SmtpClient::connect_using(ip, t.addr, t.connect_timeout).await,
            None => SmtpClient::connect(t.addr, t.connect_timeout).await,
        };
        let mut client = connected.map_err(|e| {
            err(Reply::local(format!(
                "cannot connect to {} ({}): {}",
                t.host,
                t.addr,
                describe(&e).text
            )))
        })?;
        client.timeout = t.command_timeout;
        // SMTP is request/response: without TCP_NODELAY the small write that
        // ends the data ("\r\n.\r\n") waits for the ACK of the message's last
        // segment, which the receiver delays (40 ms on Linux): Nagle's
        // algorithm would cap each connection at ~25 messages per second.
        if let Err(e) = client.stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        if mode == TlsMode::Implicit {
            let tls = client.into_tls(&t.connector, &t.host).await.map_err(|e| {
                err(Reply::local(format!(
                    "TLS with {} failed: {}",
                    t.host,
                    describe(&e).text
                )))
            })?;
            let mut tls = SmtpClient {
                stream: Watched::new(tls.stream, &closed),
                timeout: tls.timeout,
            };
            let caps = greet(&mut tls, t, &closed).await.map_err(err)?;
            let mut s = Session::new(Box::new(tls.stream), t, caps.as_ref(), true, closed);
            s.auth(t, caps.as_ref()).await.map_err(err)?;
            return Ok(s);
        }
        let mut client = SmtpClient {
            stream: Watched::new(client.stream, &closed),
            timeout: client.timeout,
        };
        let caps = greet(&mut client, t, &closed).await.map_err(err)?;
        let offers_tls = caps
            .as_ref()
            .is_some_and(|c| c.capabilities & EXT_START_TLS != 0);
        let want_tls = match mode {
            TlsMode::Required => {
                if !offers_tls {
                    return Err(err(Reply::local(format!(
                        "TLS is required but {} does not offer STARTTLS",
                        t.host
                    ))));
                }
                true
            }
            TlsMode::Opportunistic => offers_tls,
            _ => false,
        };
        if !want_tls {
            let mut s = Session::new(Box::new(client.stream), t, caps.as_ref(), false, closed);
            s.auth(t, caps.as_ref()).await.map_err(err)?;
            return Ok(s);
        }
        let tls_failed = |e: &mail_send::Error, step: &str| {
            err(Reply::local(format!(
                "TLS with {} failed: {}",
                t.host,
                describe_at(e, &closed, step).text
            )))
        };
        // STARTTLS on the watched stream, then the handshake on the bare one.
        client
            .cmd(b"STARTTLS\r\n")
            .await
            .and_then(|r| r.assert_positive_completion())
            .map_err(|e| tls_failed(&e, "at STARTTLS"))?;
        let plain = SmtpClient {
            stream: client.stream.inner,
            timeout: client.timeout,
        };
        let tls = plain
            .into_tls(&t.connector, &t.host)
            .await
            .map_err(|e| tls_failed(&e, "during the TLS handshake"))?;
        let mut tls = SmtpClient {
            stream: Watched::new(tls.stream, &closed),
            timeout: tls.timeout,
        };
        let caps = tls.ehlo(&t.helo).await.map_err(|e| {
            err(Reply::local(format!(
                "TLS with {} failed after the handshake: {}",
                t.host,
                describe_at(&e, &closed, "after STARTTLS (at EHLO)").text
            )))
        })?;
        let mut s = Session::new(Box::new(tls.stream), t, Some(&caps), true, closed);
        s.auth(t, Some(&caps)).await.map_err(err)?;
        Ok(s)
    }

    fn new(
        stream: Box<dyn Io>,
        t: &Target,
        caps: Option<&EhloResponse<String>>,
        tls: bool,
        closed: Arc<AtomicBool>,
    ) -> Session {
        Session {
            client: SmtpClient {
                stream,
                timeout: t.command_timeout,
            },
            pipelining: caps.is_some_and(|c| c.capabilities & EXT_PIPELINING != 0),
            tls,
            host: t.host.clone(),
            dirty: false,
            closed,
            ahead: None,
        }
    }

    async fn auth(&mut self, t: &Target, caps: Option<&EhloResponse<String>>) -> Result<(), Reply> {
        let Some((user, Secret(pass))) = &t.auth else {
            return Ok(());
        };
        let Some(caps) = caps else {
            return Err(Reply::local(format!(
                "{} does not speak ESMTP, so it cannot AUTH",
                t.host
            )));
        };
        let creds = Credentials::Plain {
            username: user.clone(),
            secret: pass.clone(),
        };
        self.client
            .authenticate(&creds, caps)
            .await
            .map(|_| ())
            .map_err(|e| {
                let r = describe_at(&e, &self.closed, "at AUTH");
                Reply {
                    code: r.code,
                    text: format!("AUTH at {} failed: {}", t.host, r.text),
                }
            })
    }

    /// Sends one message to `rcpts`. `Err` means the connection is no longer
    /// usable; every recipient not yet delivered is then to be retried.
    ///
    /// `gate` (the previous message's outcome being recorded) is awaited
    /// after the message data is written and before its final dot: the
    /// transfer overlaps the record, and the server accepts this message
    /// only once the previous one's outcome is durable. A send that ends
    /// before its data leaves `gate` to the caller. ([`Session::transfer`]
    /// and [`Session::end`] are its two halves, for a caller that sends the
    /// next message's envelope with this one's final dot.)
    pub async fn send(
        &mut self,
        from: &str,
        rcpts: &[&str],
        message: &[u8],
        gate: &mut Gate,
    ) -> Result<Vec<RcptResult>, Reply> {
        match self.transfer(from, rcpts, message).await? {
            Transfer::Done(out) => Ok(out),
            Transfer::Sent(sent) => {
                pass(gate).await;
                self.end(sent, None).await
            }
        }
    }

    /// Whether the server takes pipelined commands (RFC 2920).
    pub fn pipelines(&self) -> bool {
        self.pipelining
    }

    /// The first half of a transaction: the envelope (MAIL, RCPT, DATA;
    /// already answered when it went ahead with the previous message's
    /// final dot) and the message data, all but its final dot.
    pub async fn transfer(
        &mut self,
        from: &str,
        rcpts: &[&str],
        message: &[u8],
    ) -> Result<Transfer, Reply> {
        let (mail_reply, rcpt_replies, data_reply) = self.envelope(from, rcpts).await?;
        let all = |r: &Reply| -> Vec<RcptResult> {
            rcpts.iter().map(|_| result_of(r, Stage::Message)).collect()
        };
        if !mail_reply.is_ok() {
            if data_reply.as_ref().is_some_and(|d| d.code == 354) {
                // A pipelining server that still said 354: end the empty data.
                self.cmd(".\r\n", "at the end of an empty DATA").await?;
            }
            return Ok(Transfer::Done(all(&mail_reply)));
        }
        let accepted = rcpt_replies.iter().filter(|r| r.is_ok()).count();
        let data_reply = match data_reply {
            Some(d) if d.code == 354 && accepted > 0 => d,
            Some(d) if d.code == 354 => {
                self.cmd(".\r\n", "at the end of an empty DATA").await?;
                d
            }
            Some(d) => d,
            None => Reply::local("no recipient was accepted"),
        };
        if accepted == 0 || data_reply.code != 354 {
            let out = rcpt_replies
                .iter()
                .map(|r| {
                    if r.is_ok() {
                        result_of(&data_reply, Stage::Message)
                    } else {
                        result_of(r, Stage::Rcpt)
                    }
                })
                .collect();
            return Ok(Transfer::Done(out));
        }
        // The terminating CRLF.CRLF supplies the message's last line end.
        let body = message.strip_suffix(b"\r\n").unwrap_or(message);
        let data = dot_stuffed(body);
        let text = &data[..data.len().saturating_sub(DOT.len())];
        let timeout = self.client.timeout;
        tokio::time::timeout(timeout, async {
            use tokio::io::AsyncWriteExt as _;
            self.client.stream.write_all(text).await?;
            self.client.stream.flush().await
        })
        .await
        .map_err(|_| Reply::local("timed out sending the message data"))?
        .map_err(|e| {
            let e = mail_send::Error::Io(e);
            describe_at(&e, &self.closed, "during DATA (sending the message data)")
        })?;
        Ok(Transfer::Sent(DataSent { rcpt_replies }))
    }

    /// The replies to MAIL, each RCPT and DATA (none to DATA when sent one
    /// by one and no recipient was accepted).
    async fn envelope(
        &mut self,
        from: &str,
        rcpts: &[&str],
    ) -> Result<(Reply, Vec<Reply>, Option<Reply>), Reply> {
        if let Some(ahead) = self.ahead.take() {
            if ahead.from != from || ahead.rcpts.iter().ne(rcpts.iter()) {
                // Never: the connection task sends what it sent ahead. The
                // server may be in its DATA phase: the session must end.
                return Err(Reply::local(
                    "the envelope sent ahead is not this message's",
                ));
            }
            self.dirty = true;
            let (mail, rr, data) = envelope_replies(&ahead.replies?, rcpts.len())?;
            if ahead.after_refusal && !mail.is_ok() {
                // Sent before the server refused the previous message: a
                // server that took that badly may not have started a new
                // transaction (without an envelope ahead, Herald sends RSET
                // first). Not this message's fault: it waits for a new
                // session, and this one ends.
                return Err(Reply::local(format!(
                    "MAIL FROM refused right after the previous message was refused: {}",
                    mail.text
                )));
            }
            return Ok((mail, rr, data));
        }
        if self.dirty {
            self.client
                .rset()
                .await
                .map_err(|e| describe_at(&e, &self.closed, "at RSET"))?;
            self.dirty = false;
        }
        self.dirty = true;
        let (mail, rcpt_cmds) = envelope_commands(from, rcpts);
        if self.pipelining {
            let cmds = pipelined_envelope(&mail, &rcpt_cmds);
            let replies = self.pipelined(&cmds).await?;
            envelope_replies(&replies, rcpts.len())
        } else {
            let mail = self.cmd(&mail, "at MAIL FROM").await?;
            if !mail.is_ok() {
                return Ok((mail, Vec::new(), None));
            }
            let mut rr = Vec::with_capacity(rcpts.len());
            for c in &rcpt_cmds {
                rr.push(self.cmd(c, "at RCPT TO").await?);
            }
            let data = if rr.iter().any(Reply::is_ok) {
                Some(self.cmd("DATA\r\n", "at DATA").await?)
            } else {
                None
            };
            Ok((mail, rr, data))
        }
    }

    /// The second half of a transaction: the final dot and its reply. With
    /// `next` (a pipelining server), the next message's envelope goes in the
    /// same group (RFC 2920 §3.1: the message data may open a group, MAIL
    /// and RCPT go anywhere in it, DATA ends it), one round trip fewer per
    /// message; its replies are kept for that message's [`Session::transfer`].
    pub async fn end(
        &mut self,
        sent: DataSent,
        next: Option<(&str, &[&str])>,
    ) -> Result<Vec<RcptResult>, Reply> {
        let next = next.filter(|_| self.pipelining);
        let (mail, rcpt_cmds) =
            next.map_or_else(Default::default, |(f, r)| envelope_commands(f, r));
        let mut cmds: Vec<(&[u8], &str)> = vec![(DOT, DURING_DATA)];
        if next.is_some() {
            cmds.extend(pipelined_envelope(&mail, &rcpt_cmds));
        }
        let (replies, failed) = self.pipelined_partial(&cmds).await;
        let mut replies = replies.into_iter();
        let Some(final_reply) = replies.next() else {
            return Err(match failed {
                Some(GroupFailure::TimedOut) => {
                    Reply::local("timed out waiting for the reply to the message data")
                }
                Some(GroupFailure::Failed(r)) => r,
                None => Reply::local("no reply to the message data"),
            });
        };
        let final_reply = Reply::from_response(&final_reply);
        if let Some((from, rcpts)) = next {
            self.ahead = Some(Ahead {
                from: from.to_string(),
                rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
                replies: match failed {
                    None => Ok(replies.collect()),
                    Some(e) => Err(e.reply()),
                },
                after_refusal: !final_reply.is_ok(),
            });
        }
        if final_reply.is_ok() {
            self.dirty = false;
        }
        Ok(sent
            .rcpt_replies
            .iter()
            .map(|r| {
                if !r.is_ok() {
                    result_of(r, Stage::Rcpt)
                } else if final_reply.is_ok() {
                    RcptResult::Delivered(final_reply.clone())
                } else {
                    result_of(&final_reply, Stage::Message)
                }
            })
            .collect())
    }

    /// Sends one command and reads its reply; `step` says where a failure
    /// happened ("at MAIL FROM").
    async fn cmd(&mut self, c: &str, step: &str) -> Result<Reply, Reply> {
        self.client
            .cmd(c.as_bytes())
            .await
            .map(|r| Reply::from_response(&r))
            .map_err(|e| describe_at(&e, &self.closed, step))
    }

    /// Sends pipelined commands (each with the step it is, for errors) in
    /// one write and reads a reply to each. Unlike mail-send's `cmds`, a
    /// connection closed half-way is reported at the command whose reply
    /// is missing.
    async fn pipelined(&mut self, cmds: &[(&[u8], &str)]) -> Result<Vec<Response<String>>, Reply> {
        match self.pipelined_partial(cmds).await {
            (replies, None) => Ok(replies),
            (_, Some(e)) => Err(e.reply()),
        }
    }

    /// [`Session::pipelined`], keeping the replies that came before a
    /// failure, and why the rest did not come.
    async fn pipelined_partial(
        &mut self,
        cmds: &[(&[u8], &str)],
    ) -> (Vec<Response<String>>, Option<GroupFailure>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let closed_at = |got: usize| {
            let step = cmds.get(got).map_or("", |(_, s)| *s);
            Reply::local(format!("the server closed the connection {step}"))
        };
        let mut replies = Vec::with_capacity(cmds.len());
        let io = async {
            let mut out = Vec::with_capacity(cmds.iter().map(|(c, _)| c.len()).sum());
            for (c, _) in cmds {
                out.extend_from_slice(c);
            }
            let stream = &mut self.client.stream;
            if let Err(e) = async {
                stream.write_all(&out).await?;
                stream.flush().await
            }
            .await
            {
                return Err(if is_closed_io(&e) {
                    closed_at(0)
                } else {
                    Reply::local(e.to_string())
                });
            }
            let mut buf = vec![0u8; 1024];
            let mut parser = ResponseReceiver::default();
            while replies.len() < cmds.len() {
                let n = match stream.read(&mut buf).await {
                    Ok(0) => return Err(closed_at(replies.len())),
                    Ok(n) => n,
                    Err(e) if is_closed_io(&e) => return Err(closed_at(replies.len())),
                    Err(e) => return Err(Reply::local(e.to_string())),
                };
                let mut it = buf[..n].iter();
                while replies.len() < cmds.len() {
                    match parser.parse(&mut it) {
                        Ok(r) => {
                            replies.push(r);
                            parser.reset();
                        }
                        Err(smtp_proto::Error::NeedsMoreData { .. }) => break,
                        Err(_) => {
                            return Err(Reply::local(format!(
                                "unparseable SMTP reply {}",
                                cmds.get(replies.len()).map_or("", |(_, s)| *s)
                            )));
                        }
                    }
                }
            }
            Ok(())
        };
        let failed = match tokio::time::timeout(self.client.timeout, io).await {
            Err(_) => Some(GroupFailure::TimedOut),
            Ok(Err(e)) => Some(GroupFailure::Failed(e)),
            Ok(Ok(())) => None,
        };
        (replies, failed)
    }

    /// Ends the session politely (only by closing it while an envelope sent
    /// ahead may have opened a DATA phase: the server drops that message).
    pub async fn quit(mut self) {
        if self.ahead.is_some() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.cmd(b"QUIT\r\n")).await;
    }
}

/// Reads the greeting and says EHLO (HELO when EHLO is refused). Returns the
/// EHLO capabilities, or `None` after HELO.
async fn greet<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    t: &Target,
    closed: &AtomicBool,
) -> Result<Option<EhloResponse<String>>, Reply> {
    let greeting = tokio::time::timeout(t.connect_timeout, client.read())
        .await
        .map_err(|_| Reply::local(format!("{} sent no greeting", t.host)))?
        .map_err(|e| describe_at(&e, closed, "before its greeting"))?;
    if greeting.code != 220 {
        return Err(Reply::from_response(&greeting));
    }
    match client.ehlo(&t.helo).await {
        Ok(caps) => Ok(Some(caps)),
        Err(mail_send::Error::UnexpectedReply(r)) if (500..600).contains(&r.code) => {
            client
                .cmd(format!("HELO {}\r\n", t.helo).as_bytes())
                .await
                .map_err(|e| describe_at(&e, closed, "after the greeting (at HELO)"))?
                .assert_positive_completion()
                .map_err(|e| describe(&e))?;
            Ok(None)
        }
        Err(e) => Err(describe_at(&e, closed, "after the greeting (at EHLO)")),
    }
}

/// TLS for MX delivery: encryption without certificate checks, as is usual
/// between MTAs (RFC 7435 opportunistic security; most MX certificates do not
/// match their names).
pub fn mx_connector() -> Result<TlsConnector, String> {
    mail_send::smtp::tls::build_tls_connector(true)
}

/// TLS for a relay: certificates checked against the system's roots, or only
/// against `ca_certs` when the config names a CA file.
pub fn relay_connector(ca_certs: &[Vec<u8>]) -> Result<TlsConnector, String> {
    if ca_certs.is_empty() {
        return mail_send::smtp::tls::build_tls_connector(false);
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in ca_certs {
        roots
            .add(rustls::pki_types::CertificateDer::from(c.clone()))
            .map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::{
        Gate, RcptResult, Session, Stage, Target, TlsMode, Transfer, dot_stuffed, relay_connector,
    };
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

    /// A minimal SMTP server for one session: PIPELINING, every command
    /// accepted but `RCPT TO:<bad@test>`; what it receives is appended to
    /// `seen`.
    async fn serve_one(listener: tokio::net::TcpListener, seen: Arc<Mutex<Vec<u8>>>) {
        serve_with(listener, seen, Arc::default()).await
    }

    /// [`serve_one`]; for each final dot, `pipelined` gets whether more of
    /// the client's input had come with it (in the same read).
    async fn serve_with(
        listener: tokio::net::TcpListener,
        seen: Arc<Mutex<Vec<u8>>>,
        pipelined: Arc<Mutex<Vec<bool>>>,
    ) {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let _ = w.write_all(b"220 test ESMTP\r\n").await;
        let mut in_data = false;
        let (mut refuse, mut confused) = (false, false);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            locked(&seen).extend_from_slice(&line);
            let reply: &[u8] = if in_data {
                if line != b".\r\n" {
                    refuse |= line.starts_with(b"refuse me");
                    continue;
                }
                in_data = false;
                locked(&pipelined).push(!r.buffer().is_empty());
                if std::mem::take(&mut refuse) {
                    // A server that takes a refusal badly: its next MAIL fails.
                    confused = true;
                    b"554 5.7.1 refused\r\n"
                } else {
                    b"250 2.0.0 queued\r\n"
                }
            } else if line.starts_with(b"MAIL") && std::mem::take(&mut confused) {
                b"503 5.5.1 nested MAIL command\r\n"
            } else if line.starts_with(b"RCPT TO:<bad@test>") {
                b"550 5.1.1 no such user\r\n"
            } else if line.starts_with(b"EHLO") {
                b"250-test\r\n250 PIPELINING\r\n"
            } else if line.starts_with(b"DATA") {
                in_data = true;
                b"354 go on\r\n"
            } else if line.starts_with(b"QUIT") {
                b"221 bye\r\n"
            } else {
                b"250 2.1.0 ok\r\n"
            };
            let _ = w.write_all(reply).await;
        }
    }

    /// The final dot of a message waits for its gate (the previous
    /// message's outcome being recorded): the data is on the server before,
    /// the end of the data only after the gate opens.
    #[tokio::test]
    async fn the_final_dot_waits_for_the_gate() -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let server = tokio::spawn(serve_one(listener, seen.clone()));
        let mut session = Session::connect(&target(addr)?)
            .await
            .map_err(|e| e.reply.text)?;
        let (open, opened) = tokio::sync::oneshot::channel::<()>();
        let mut gate: Gate = Some(Box::pin(async move {
            let _ = opened.await;
        }));
        let message = b"Subject: t\r\n\r\nthe body line\r\n";
        let check = async {
            let has = |s: &Mutex<Vec<u8>>, needle: &[u8]| {
                memchr::memmem::find(&locked(s), needle).is_some()
            };
            while !has(&seen, b"the body line\r\n") {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Time for a client that does not wait to send its dot.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let ended_early = has(&seen, b"\r\n.\r\n");
            let _ = open.send(());
            ended_early
        };
        let (sent, ended_early) = tokio::join!(
            session.send("a@client.test", &["b@test"], message, &mut gate),
            check
        );
        assert!(!ended_early, "the data ended before the gate opened");
        assert!(gate.is_none(), "the gate was not taken");
        let results = sent.map_err(|r| r.text)?;
        assert!(matches!(results.as_slice(), [RcptResult::Delivered(_)]));
        assert!(memchr::memmem::find(&locked(&seen), b"the body line\r\n.\r\n").is_some());
        session.quit().await;
        server.await?;
        Ok(())
    }

    /// The next message's envelope goes with a final dot (one round trip
    /// fewer per message); its replies, a refused recipient too, answer
    /// that message's transfer.
    #[tokio::test]
    async fn the_next_envelope_goes_with_the_final_dot() -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let pipelined = Arc::new(Mutex::new(Vec::new()));
        let server = tokio::spawn(serve_with(listener, seen.clone(), pipelined.clone()));
        let mut session = Session::connect(&target(addr)?)
            .await
            .map_err(|e| e.reply.text)?;
        let message = b"Subject: t\r\n\r\nbody\r\n";
        let mut last = Vec::new();
        let envelopes: [(&str, &[&str]); 3] = [
            ("a1@client.test", &["b@test"]),
            ("a2@client.test", &["bad@test", "c@test"]),
            ("a3@client.test", &["bad@test"]),
        ];
        for (i, (from, rcpts)) in envelopes.iter().enumerate() {
            let sent = match session
                .transfer(from, rcpts, message)
                .await
                .map_err(|r| r.text)?
            {
                Transfer::Sent(sent) => sent,
                Transfer::Done(out) => {
                    last = out;
                    continue;
                }
            };
            let next = envelopes.get(i + 1).map(|(f, r)| (*f, *r));
            last = session.end(sent, next).await.map_err(|r| r.text)?;
            match i {
                0 => assert!(matches!(last.as_slice(), [RcptResult::Delivered(_)])),
                _ => assert!(
                    matches!(
                        last.as_slice(),
                        [
                            RcptResult::Permanent(_, Stage::Rcpt),
                            RcptResult::Delivered(_)
                        ]
                    ),
                    "{:?}",
                    last.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>()
                ),
            }
        }
        // The third message's one recipient was refused in its envelope.
        assert!(matches!(
            last.as_slice(),
            [RcptResult::Permanent(_, Stage::Rcpt)]
        ));
        session.quit().await;
        server.await?;
        let all = String::from_utf8_lossy(&locked(&seen)).into_owned();
        assert!(
            all.contains("body\r\n.\r\nMAIL FROM:<a2@client.test>\r\nRCPT TO:<bad@test>"),
            "{all}"
        );
        // Both ends of data that had a next envelope came with it in one read.
        let flags = locked(&pipelined).clone();
        assert_eq!(flags.get(..2), Some(&[true, true][..]), "{flags:?}");
        Ok(())
    }

    /// An envelope that went ahead with the final dot of a message the
    /// server refused, and whose MAIL the server then refused too, ends the
    /// session (the message waits for another) rather than failing the
    /// message on a reply that may be about the server's state.
    #[tokio::test]
    async fn a_refusal_after_a_refused_message_ends_the_session()
    -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(serve_one(listener, Arc::default()));
        let mut session = Session::connect(&target(addr)?)
            .await
            .map_err(|e| e.reply.text)?;
        let Transfer::Sent(sent) = session
            .transfer(
                "a@client.test",
                &["b@test"],
                b"Subject: t\r\n\r\nrefuse me\r\n",
            )
            .await
            .map_err(|r| r.text)?
        else {
            return Err("no data phase".into());
        };
        let next: &[&str] = &["c@test"];
        let first = session
            .end(sent, Some(("a@client.test", next)))
            .await
            .map_err(|r| r.text)?;
        assert!(matches!(
            first.as_slice(),
            [RcptResult::Permanent(_, Stage::Message)]
        ));
        let second = session
            .transfer("a@client.test", next, b"Subject: t\r\n\r\nok\r\n")
            .await;
        let Err(reply) = second else {
            return Err("the second message was not sent back for a new session".into());
        };
        assert!(reply.text.contains("503"), "{}", reply.text);
        assert!(!reply.is_permanent(), "{}", reply.text);
        drop(session);
        server.await?;
        Ok(())
    }

    /// A client target for a test server on `addr`.
    fn target(addr: std::net::SocketAddr) -> Result<Target, Box<dyn std::error::Error>> {
        Ok(Target {
            addr,
            host: "test".into(),
            helo: "client.test".into(),
            tls: TlsMode::Off,
            auth: None,
            connector: relay_connector(&[])?,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            source: None,
            tls_required_by: None,
        })
    }

    /// What a test server saw (a panic elsewhere does not hide it).
    fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[test]
    fn dots_at_line_starts_are_doubled() {
        assert_eq!(
            dot_stuffed(b"a\r\n.b\r\n..\r\nc."),
            b"a\r\n..b\r\n...\r\nc.\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b".x"), b"..x\r\n.\r\n");
        assert_eq!(dot_stuffed(b""), b"\r\n.\r\n");
    }
}
