//! The SMTP conversation with one client: a state machine over command
//! lines parsed by smtp-proto, one line at a time.
//!
//! State is the greeting (EHLO/HELO), the transaction (MAIL, the accepted
//! RCPTs, BDAT chunks so far) and whether TLS is on. Each command line is
//! cut out by [`Conn::next_line`] and parsed alone, so a malformed line gets
//! exactly one reply and cannot spill into the next command. Message data
//! (DATA with dot-unstuffing, or BDAT chunks) is read straight from the
//! connection's buffer and is always read to its end, even when it is
//! refused, so pipelined commands after it stay in step.

use std::net::SocketAddr;
use std::sync::Arc;

use smtp_proto::request::receiver::{BdatReceiver, DataReceiver, DummyDataReceiver};
use smtp_proto::{
    EXT_8BIT_MIME, EXT_CHUNKING, EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING, EXT_SIZE,
    EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse, Error as ParseError, MailFrom, RcptTo, Request,
};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;

use super::conn::{Conn, End, Line};
use super::limits::{Admission, Limits};
use super::{Envelope, RcptDecision, Settings, Sink, Stats, reply};
use crate::activity::Activity;

/// After this many protocol errors the session is closed (`421 4.7.0`).
const MAX_ERRORS: u32 = 10;

/// The longest a session lasts (then `421 4.4.2`, as for an idle one): a
/// sender with more to say connects again.
const MAX_SESSION: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// The refusal of an address with bytes that are not UTF-8 (smtp-proto
/// replaces them with U+FFFD; the sink should see what the client sent or
/// nothing).
const NOT_UTF8: &str = "Address is not valid UTF-8";

/// What every session of one listener shares.
pub(super) struct Shared<S> {
    settings: Arc<Settings>,
    /// [`Settings::hostname`] cleaned for replies.
    pub(super) hostname: String,
    sink: Arc<S>,
    stats: Arc<Stats>,
    limits: Arc<Limits>,
    tls: Option<TlsAcceptor>,
    activity: Activity,
}

impl<S: Sink> Shared<S> {
    /// Everything a session needs, built once per listener.
    pub(super) fn new(
        settings: Arc<Settings>,
        sink: Arc<S>,
        stats: Arc<Stats>,
        limits: Arc<Limits>,
        activity: Activity,
    ) -> Shared<S> {
        Shared {
            hostname: reply::hostname(&settings.hostname),
            tls: settings.tls.clone().map(TlsAcceptor::from),
            settings,
            sink,
            stats,
            limits,
            activity,
        }
    }
}

/// A transaction from MAIL FROM to the end of its data.
struct Transaction {
    envelope: Envelope,
    /// The BDAT chunks so far; `Some` once the first BDAT arrived (then
    /// RCPT and DATA are out of sequence).
    chunks: Option<Vec<u8>>,
}

/// What the session does after a command.
enum Flow {
    /// The next command.
    Next,
    /// The TLS handshake (the 220 is not yet written).
    StartTls,
}

/// One client's session.
struct Session<S> {
    shared: Arc<Shared<S>>,
    conn: Conn,
    peer: SocketAddr,
    /// The name from EHLO/HELO; `None` until then and after STARTTLS.
    helo: Option<String>,
    tx: Option<Transaction>,
    tls: bool,
    /// Protocol errors so far.
    errors: u32,
    /// Messages the sink took, for the log.
    accepted: u64,
}

/// Talks SMTP with one admitted client until it quits, fails, times out or
/// the daemon stops.
pub(super) async fn run<S: Sink>(
    shared: Arc<Shared<S>>,
    tcp: TcpStream,
    peer: SocketAddr,
    admission: Admission,
) {
    // Counted as open until the session is over.
    let _admission = admission;
    let conn = Conn::new(
        tcp,
        shared.settings.command_timeout,
        shared.activity.clone(),
    );
    let mut session = Session {
        shared,
        conn,
        peer,
        helo: None,
        tx: None,
        tls: false,
        errors: 0,
        accepted: 0,
    };
    tracing::debug!(%peer, "inbound smtp: session start");
    let end = session.converse().await;
    session.goodbye(&end);
    tracing::debug!(%peer, end = %end, accepted = session.accepted, tls = session.tls, "inbound smtp: session end");
    session.conn.close().await;
}

/// A reply about to be written.
struct Reply {
    code: u16,
    esc: [u8; 3],
    text: String,
    /// Whether it counts towards [`MAX_ERRORS`].
    is_error: bool,
}

/// A reply that is no protocol error (success, or a refusal of content).
fn answer(code: u16, esc: [u8; 3], text: impl Into<String>) -> Reply {
    Reply {
        code,
        esc,
        text: text.into(),
        is_error: false,
    }
}

/// A protocol error: syntax, sequence, unknown or unsupported command.
fn protocol_error(code: u16, esc: [u8; 3], text: impl Into<String>) -> Reply {
    Reply {
        is_error: true,
        ..answer(code, esc, text)
    }
}

/// The reply to a line smtp-proto could not parse.
fn parse_error(e: ParseError) -> Reply {
    match e {
        ParseError::UnknownCommand | ParseError::InvalidResponse { .. } => {
            protocol_error(500, [5, 5, 1], "Unknown command")
        }
        ParseError::InvalidSenderAddress => {
            protocol_error(501, [5, 1, 7], "Bad sender address syntax")
        }
        ParseError::InvalidRecipientAddress => {
            protocol_error(501, [5, 1, 3], "Bad recipient address syntax")
        }
        ParseError::SyntaxError { syntax } => {
            protocol_error(501, [5, 5, 2], format!("Syntax error, expected: {syntax}"))
        }
        ParseError::InvalidParameter { param } => {
            protocol_error(501, [5, 5, 4], format!("Invalid parameter {param}"))
        }
        ParseError::UnsupportedParameter { param } => protocol_error(
            555,
            [5, 5, 4],
            format!("Unsupported parameter {}", reply::clean(&param)),
        ),
        // A complete line the parser still wanted more of.
        ParseError::NeedsMoreData { .. } | ParseError::ResponseTooLong => {
            protocol_error(501, [5, 5, 2], "Syntax error")
        }
    }
}

impl<S: Sink> Session<S> {
    fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Queues a reply and counts it if it is an error.
    fn say(&mut self, r: Reply) {
        reply::push(self.conn.output(), r.code, r.esc, &r.text);
        if r.is_error {
            self.errors += 1;
        }
    }

    /// Banner, then commands until the end.
    async fn converse(&mut self) -> End {
        let banner = reply::banner(&self.shared.hostname);
        self.conn.output().extend_from_slice(banner.as_bytes());
        // However busy, a session ends after MAX_SESSION: a few clients
        // cannot hold every place by talking forever.
        let session_end = Instant::now() + MAX_SESSION;
        loop {
            let deadline = (Instant::now() + self.settings().command_timeout).min(session_end);
            let flow = match self.conn.next_line(deadline).await {
                Ok(Line::Complete(line)) => self.command(&line).await,
                Ok(Line::TooLong) => {
                    self.say(protocol_error(500, [5, 5, 2], "Line too long"));
                    Ok(Flow::Next)
                }
                Err(end) => Err(end),
            };
            let done = match flow {
                Ok(Flow::Next) => Ok(()),
                Ok(Flow::StartTls) => self.start_tls().await,
                Err(end) => Err(end),
            };
            if let Err(end) = done {
                return end;
            }
            if self.errors >= MAX_ERRORS {
                return End::TooManyErrors;
            }
        }
    }

    /// The last words before closing, by how the session ended.
    fn goodbye(&mut self, end: &End) {
        let host = self.shared.hostname.clone();
        match end {
            End::Timeout => {
                Stats::bump(&self.shared.stats.timeouts);
                self.say(answer(
                    421,
                    [4, 4, 2],
                    format!("{host} Timeout, closing connection"),
                ));
            }
            End::Stopping => self.say(answer(421, [4, 3, 2], format!("{host} Shutting down"))),
            End::TooManyErrors => self.say(answer(
                421,
                [4, 7, 0],
                format!("{host} Too many errors, closing connection"),
            )),
            End::Quit | End::Closed | End::Tls(_) | End::Io(_) => {}
        }
    }

    /// One command line.
    async fn command(&mut self, line: &[u8]) -> Result<Flow, End> {
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request.into_owned(),
            Err(e) => {
                self.say(parse_error(e));
                return Ok(Flow::Next);
            }
        };
        match request {
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => return self.data().await.map(|()| Flow::Next),
            Request::Bdat {
                chunk_size,
                is_last,
            } => {
                return self.bdat(chunk_size, is_last).await.map(|()| Flow::Next);
            }
            Request::Rset => {
                self.tx = None;
                self.say(answer(250, [2, 0, 0], "Ok"));
            }
            Request::Noop { .. } => self.say(answer(250, [2, 0, 0], "Ok")),
            Request::Quit => {
                self.say(answer(221, [2, 0, 0], "Bye"));
                return Err(End::Quit);
            }
            Request::Vrfy { .. } => self.say(answer(
                252,
                [2, 5, 0],
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Request::Help { .. } => self.say(answer(
                214,
                [2, 0, 0],
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
            )),
            Request::StartTls => {
                if self.shared.tls.is_none() {
                    self.say(protocol_error(502, [5, 5, 1], "STARTTLS not available"));
                } else if self.tls {
                    self.say(protocol_error(503, [5, 5, 1], "TLS already active"));
                } else {
                    return Ok(Flow::StartTls);
                }
            }
            Request::Lhlo { .. }
            | Request::Auth { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                self.say(protocol_error(502, [5, 5, 1], "Command not implemented"));
            }
        }
        Ok(Flow::Next)
    }

    /// EHLO or HELO: a fresh start, with the capabilities for EHLO.
    fn hello(&mut self, host: String, extended: bool) {
        self.helo = Some(host);
        self.tx = None;
        if !extended {
            let line = format!("250 {}\r\n", self.shared.hostname);
            self.conn.output().extend_from_slice(line.as_bytes());
            return;
        }
        let mut ehlo = EhloResponse::new(self.shared.hostname.as_str());
        ehlo.capabilities = EXT_PIPELINING
            | EXT_8BIT_MIME
            | EXT_ENHANCED_STATUS_CODES
            | EXT_SIZE
            | EXT_SMTP_UTF8
            | EXT_CHUNKING;
        if self.shared.tls.is_some() && !self.tls {
            ehlo.capabilities |= EXT_START_TLS;
        }
        ehlo.size = self.settings().max_message_bytes;
        // Writing into a Vec cannot fail.
        let _ = ehlo.write(self.conn.output());
    }

    /// MAIL FROM: a new transaction, if the size and the rate allow.
    fn mail(&mut self, from: MailFrom<String>) {
        let Some(helo) = self.helo.clone() else {
            return self.say(protocol_error(503, [5, 5, 1], "Send EHLO or HELO first"));
        };
        if self.tx.is_some() {
            return self.say(protocol_error(503, [5, 5, 1], "Nested MAIL command"));
        }
        if from.address.contains(char::REPLACEMENT_CHARACTER) {
            return self.say(protocol_error(501, [5, 1, 7], NOT_UTF8));
        }
        let max = self.settings().max_message_bytes;
        if from.size > max {
            Stats::bump(&self.shared.stats.messages_refused);
            return self.say(answer(
                552,
                [5, 3, 4],
                format!("Message size exceeds the limit of {max} bytes"),
            ));
        }
        if !self
            .shared
            .limits
            .take_message(self.peer.ip(), std::time::Instant::now())
        {
            Stats::bump(&self.shared.stats.messages_refused);
            return self.say(answer(
                451,
                [4, 7, 1],
                "Too many messages from your address, try again later",
            ));
        }
        self.tx = Some(Transaction {
            envelope: Envelope {
                peer: self.peer,
                helo,
                mail_from: from.address,
                rcpts: Vec::new(),
                tls: self.tls,
            },
            chunks: None,
        });
        self.say(answer(250, [2, 1, 0], "Ok"));
    }

    /// RCPT TO: the sink decides, within the recipient limit.
    fn rcpt(&mut self, to: RcptTo<String>) {
        let max = self.settings().max_recipients;
        // smtp-proto gives `<Postmaster>` (which RFC 5321 says must be
        // accepted without a domain) as an empty address, like `<>`.
        let address = if to.address.is_empty() {
            "postmaster".to_string()
        } else {
            to.address
        };
        let reply = match self.tx.as_mut() {
            None => protocol_error(503, [5, 5, 1], "Send MAIL first"),
            Some(tx) if tx.chunks.is_some() => protocol_error(503, [5, 5, 1], "RCPT after BDAT"),
            Some(_) if address.contains(char::REPLACEMENT_CHARACTER) => {
                protocol_error(501, [5, 1, 3], NOT_UTF8)
            }
            Some(tx)
                if tx
                    .envelope
                    .rcpts
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(&address)) =>
            {
                answer(250, [2, 1, 5], "Ok")
            }
            Some(tx) if tx.envelope.rcpts.len() >= max => {
                answer(452, [4, 5, 3], "Too many recipients")
            }
            Some(tx) => match self.shared.sink.rcpt(&tx.envelope, &address) {
                RcptDecision::Accept => {
                    tx.envelope.rcpts.push(address);
                    answer(250, [2, 1, 5], "Ok")
                }
                refusal => {
                    Stats::bump(&self.shared.stats.rcpt_refused);
                    let (code, esc, text) = reply::refusal(&refusal);
                    answer(code, esc, text)
                }
            },
        };
        self.say(reply);
    }

    /// DATA: 354, the message to its end, then the sink.
    async fn data(&mut self) -> Result<(), End> {
        let refusal = match &self.tx {
            None => Some(protocol_error(503, [5, 5, 1], "Send MAIL first")),
            Some(tx) if tx.chunks.is_some() => {
                Some(protocol_error(503, [5, 5, 1], "DATA after BDAT"))
            }
            Some(tx) if tx.envelope.rcpts.is_empty() => {
                Some(answer(554, [5, 5, 1], "No valid recipients"))
            }
            Some(_) => None,
        };
        if let Some(refusal) = refusal {
            self.say(refusal);
            return Ok(());
        }
        self.conn
            .output()
            .extend_from_slice(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n");
        let deadline = Instant::now() + self.settings().data_timeout;
        match self.receive_data(deadline).await? {
            Some(data) => self.deliver(data).await,
            None => {
                self.tx = None;
                self.too_big();
                Ok(())
            }
        }
    }

    /// The refusal of a message over the size limit.
    fn too_big(&mut self) {
        Stats::bump(&self.shared.stats.messages_refused);
        let max = self.settings().max_message_bytes;
        self.say(answer(
            552,
            [5, 3, 4],
            format!("Message size exceeds the limit of {max} bytes"),
        ));
    }

    /// Reads DATA up to CRLF.CRLF, dot-unstuffed; `None` when it was over
    /// the size limit (the rest was read and dropped).
    async fn receive_data(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, End> {
        let max = self.settings().max_message_bytes;
        let mut receiver = DataReceiver::new();
        let mut data = Vec::new();
        // The DATA line's CRLF ends the line before the message's first one;
        // fed in, it lets the receiver see a dot at the very start (stuffed,
        // or the end of an empty message). Taken off again below.
        const PRIMER: &[u8] = b"\r\n";
        receiver.ingest(&mut PRIMER.iter(), &mut data);
        let mut discard: Option<DummyDataReceiver> = None;
        loop {
            let pending = self.conn.pending();
            let mut bytes = pending.iter();
            let done = match discard.as_mut() {
                Some(d) => d.ingest(&mut bytes),
                None => receiver.ingest(&mut bytes, &mut data),
            };
            let used = pending.len() - bytes.len();
            self.conn.consume(used);
            if discard.is_none() && data.len() > max.saturating_add(PRIMER.len()) {
                discard = Some(DummyDataReceiver::new_data(&receiver));
                data = Vec::new();
            }
            if done {
                break;
            }
            self.conn.fill(deadline).await?;
        }
        if discard.is_some() {
            return Ok(None);
        }
        data.drain(..PRIMER.len().min(data.len()));
        Ok(Some(data))
    }

    /// BDAT: one chunk (RFC 3030). The chunk is always read, also when it
    /// is refused.
    async fn bdat(&mut self, size: usize, is_last: bool) -> Result<(), End> {
        let deadline = Instant::now() + self.settings().data_timeout;
        let max = self.settings().max_message_bytes;
        let refusal = match &self.tx {
            None => Some(Err(protocol_error(503, [5, 5, 1], "Send MAIL first"))),
            Some(tx) if tx.envelope.rcpts.is_empty() => {
                Some(Err(answer(554, [5, 5, 1], "No valid recipients")))
            }
            Some(tx) => {
                let so_far = tx.chunks.as_ref().map_or(0, Vec::len);
                (so_far.saturating_add(size) > max).then_some(Ok(()))
            }
        };
        match refusal {
            None => {}
            Some(Err(refusal)) => {
                self.read_chunk(size, deadline, None).await?;
                self.say(refusal);
                return Ok(());
            }
            Some(Ok(())) => {
                // Over the size: the transaction is over (the client must
                // not send more chunks; any already pipelined get 503).
                self.read_chunk(size, deadline, None).await?;
                self.tx = None;
                self.too_big();
                return Ok(());
            }
        }
        let mut chunks = self
            .tx
            .as_mut()
            .and_then(|tx| tx.chunks.take())
            .unwrap_or_default();
        self.read_chunk(size, deadline, Some(&mut chunks)).await?;
        if is_last {
            return self.deliver(chunks).await;
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.chunks = Some(chunks);
        }
        self.say(answer(250, [2, 0, 0], format!("{size} octets received")));
        Ok(())
    }

    /// Reads `size` bytes of a BDAT chunk into `keep`, or drops them.
    async fn read_chunk(
        &mut self,
        size: usize,
        deadline: Instant,
        mut keep: Option<&mut Vec<u8>>,
    ) -> Result<(), End> {
        let mut receiver = BdatReceiver::new(size, false);
        let mut discard = DummyDataReceiver::new_bdat(size);
        loop {
            let pending = self.conn.pending();
            let mut bytes = pending.iter();
            let done = match keep.as_deref_mut() {
                Some(buf) => receiver.ingest(&mut bytes, buf),
                None => discard.ingest(&mut bytes),
            };
            let used = pending.len() - bytes.len();
            self.conn.consume(used);
            if done {
                return Ok(());
            }
            self.conn.fill(deadline).await?;
        }
    }

    /// Hands the complete message to the sink and writes its answer, under
    /// an activity guard so a stopping daemon waits for both.
    async fn deliver(&mut self, data: Vec<u8>) -> Result<(), End> {
        let Some(tx) = self.tx.take() else {
            self.say(protocol_error(503, [5, 5, 1], "Send MAIL first"));
            return Ok(());
        };
        let _guard = self.shared.activity.guard("inbound smtp");
        let reply = match self.shared.sink.deliver(tx.envelope, data).await {
            Ok(id) => {
                Stats::bump(&self.shared.stats.messages_accepted);
                self.accepted += 1;
                answer(250, [2, 0, 0], format!("Ok: {}", reply::clean(&id)))
            }
            Err(text) => {
                Stats::bump(&self.shared.stats.messages_refused);
                answer(451, [4, 3, 0], reply::clean(&text))
            }
        };
        self.say(reply);
        self.conn.flush().await
    }

    /// STARTTLS: 220, the handshake, and a fresh start (RFC 3207): what the
    /// client sent after the command is dropped, EHLO is needed again.
    async fn start_tls(&mut self) -> Result<(), End> {
        let Some(acceptor) = self.shared.tls.clone() else {
            return Ok(());
        };
        self.say(answer(220, [2, 0, 0], "Ready to start TLS"));
        self.conn.flush().await?;
        self.conn.discard_input();
        let Some(tcp) = self.conn.take_plain() else {
            return Err(End::Closed);
        };
        let deadline = Instant::now() + self.settings().command_timeout;
        match timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => self.conn.set_tls(tls),
            Ok(Err(e)) => return Err(End::Tls(e)),
            Err(_) => return Err(End::Timeout),
        }
        self.tls = true;
        self.helo = None;
        self.tx = None;
        Stats::bump(&self.shared.stats.tls_sessions);
        Ok(())
    }
}
