//! One client connection's bytes: what was received and not yet used, the
//! replies not yet written, and the waits in between.
//!
//! Replies are collected and written only when the session needs more input
//! (or flushes on purpose), which is what PIPELINING asks of a server
//! (RFC 2920): a client that sends a group of commands gets the group's
//! replies in one write. Every wait for input ends at a deadline or when the
//! daemon stops; every write ends at the write deadline, so a client that
//! stops reading cannot hold a session forever. The stream is plain TCP
//! until STARTTLS swaps in the TLS stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use memchr::memchr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::server::TlsStream;

use crate::activity::Activity;

/// The longest command line taken, CRLF included (RFC 5321 asks for 512 at
/// least; extensions add parameters, so as much as smtp-proto allows).
pub(super) const MAX_LINE: usize = smtp_proto::request::receiver::MAX_LINE_LENGTH;

/// How much is read at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Why a connection's conversation ended.
#[derive(Debug)]
pub(super) enum End {
    /// The client closed the connection.
    Closed,
    /// The client sent QUIT (already answered).
    Quit,
    /// A command, the data or a write took too long.
    Timeout,
    /// The daemon is stopping.
    Stopping,
    /// The client made too many errors.
    TooManyErrors,
    /// The TLS handshake failed.
    Tls(io::Error),
    /// Reading or writing failed.
    Io(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("client closed the connection"),
            End::Quit => f.write_str("quit"),
            End::Timeout => f.write_str("timeout"),
            End::Stopping => f.write_str("shutting down"),
            End::TooManyErrors => f.write_str("too many errors"),
            End::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            End::Io(e) => write!(f, "connection failed: {e}"),
        }
    }
}

/// What [`Conn::next_line`] found.
#[derive(Debug)]
pub(super) enum Line {
    /// A complete line, with its line ending.
    Complete(Vec<u8>),
    /// A line longer than [`MAX_LINE`]: what came of it is dropped, and so is
    /// the rest of it up to its line ending when it arrives.
    TooLong,
}

/// The transport: plain TCP, or TLS after STARTTLS.
pub(super) enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Between the two (only while the handshake runs).
    Gone,
}

/// A connection: transport, received bytes, pending replies.
pub(super) struct Conn {
    io: Io,
    /// Received bytes; those before `used` are consumed.
    input: Vec<u8>,
    used: usize,
    /// Dropping the rest of a too long line until its line ending.
    skipping_line: bool,
    /// Replies not yet written.
    output: Vec<u8>,
    /// How long one write may take.
    write_timeout: Duration,
    activity: Activity,
}

impl Conn {
    /// A plain TCP connection.
    pub(super) fn new(tcp: TcpStream, write_timeout: Duration, activity: Activity) -> Conn {
        Conn {
            io: Io::Plain(tcp),
            input: Vec::with_capacity(READ_CHUNK),
            used: 0,
            skipping_line: false,
            output: Vec::new(),
            write_timeout,
            activity,
        }
    }

    /// Where replies are collected.
    pub(super) fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    /// Received bytes not yet consumed.
    pub(super) fn pending(&self) -> &[u8] {
        self.input.get(self.used..).unwrap_or_default()
    }

    /// Marks `n` pending bytes as consumed.
    pub(super) fn consume(&mut self, n: usize) {
        self.used = self.used.saturating_add(n).min(self.input.len());
    }

    /// Drops everything received and not yet used (after STARTTLS, RFC 3207:
    /// nothing sent before the handshake may count after it).
    pub(super) fn discard_input(&mut self) {
        self.input.clear();
        self.used = 0;
        self.skipping_line = false;
    }

    /// Takes the plain TCP stream out for the TLS handshake.
    pub(super) fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(&mut self.io, Io::Gone) {
            Io::Plain(tcp) => Some(tcp),
            other => {
                self.io = other;
                None
            }
        }
    }

    /// Puts the TLS stream in after the handshake.
    pub(super) fn set_tls(&mut self, tls: TlsStream<TcpStream>) {
        self.io = Io::Tls(Box::new(tls));
    }

    /// Writes the pending replies.
    pub(super) async fn flush(&mut self) -> Result<(), End> {
        if self.output.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.write_timeout;
        let written = timeout_at(deadline, async {
            self.io.write_all(&self.output).await?;
            self.io.flush().await
        })
        .await;
        self.output.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::Timeout),
        }
    }

    /// Writes the pending replies, then waits for more input until
    /// `deadline` or the stop signal.
    pub(super) async fn fill(&mut self, deadline: Instant) -> Result<(), End> {
        self.flush().await?;
        if self.used > 0 {
            self.input.drain(..self.used);
            self.used = 0;
        }
        self.input.reserve(READ_CHUNK);
        let stopping = self.activity.stopping();
        tokio::select! {
            biased;
            () = stopping => Err(End::Stopping),
            () = tokio::time::sleep_until(deadline) => Err(End::Timeout),
            read = self.io.read_buf(&mut self.input) => match read {
                Ok(0) => Err(End::Closed),
                Ok(_) => Ok(()),
                Err(e) => Err(End::Io(e)),
            },
        }
    }

    /// The next command line, waiting for it until `deadline`.
    pub(super) async fn next_line(&mut self, deadline: Instant) -> Result<Line, End> {
        loop {
            let (newline, len) = {
                let pending = self.pending();
                (memchr(b'\n', pending), pending.len())
            };
            if self.skipping_line {
                match newline {
                    Some(at) => {
                        self.consume(at + 1);
                        self.skipping_line = false;
                        continue;
                    }
                    None => self.consume(len),
                }
            } else {
                match newline {
                    Some(at) if at < MAX_LINE => {
                        let line = self.pending().get(..=at).unwrap_or_default().to_vec();
                        self.consume(at + 1);
                        return Ok(Line::Complete(line));
                    }
                    Some(at) => {
                        self.consume(at + 1);
                        return Ok(Line::TooLong);
                    }
                    None if len >= MAX_LINE => {
                        self.consume(len);
                        self.skipping_line = true;
                        return Ok(Line::TooLong);
                    }
                    None => {}
                }
            }
            self.fill(deadline).await?;
        }
    }

    /// Best-effort end: writes what is pending and closes (TLS with
    /// close_notify), within the write timeout.
    pub(super) async fn close(mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(self.write_timeout, self.io.shutdown()).await;
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Io::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Io::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
}
