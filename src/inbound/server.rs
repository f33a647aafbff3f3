//! The inbound SMTP listener (smtp-proto's server side on tokio).
//!
//! A generic, receive-only SMTP server: it speaks the protocol (EHLO/HELO,
//! MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT, VRFY, HELP, STARTTLS, with
//! PIPELINING), enforces the limits in [`Settings`] and hands every complete
//! message to a [`Sink`]. It decides nothing about what a message means or
//! which recipients exist: the sink answers each RCPT and takes each message.
//! There is no AUTH and no relaying.
//!
//! Split by responsibility: `limits` counts connections and messages per
//! client (IPv4 address or IPv6 /64) in a bounded table; `conn` frames a
//! connection's bytes (buffered input, batched replies, deadlines, the stop
//! signal, the TLS upgrade); `reply` formats and cleans reply lines;
//! `session` is the SMTP state machine. [`serve`] accepts connections and
//! starts one session task each.
//!
//! Architecture invariant: a session never panics on what a client sends,
//! and every byte a client sends is either parsed as a command or consumed
//! as message data (refused BDAT chunks and over-size DATA are read and
//! thrown away), so a client can never smuggle commands into data or the
//! other way round.

mod conn;
mod limits;
mod reply;
mod session;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::activity::Activity;

/// What the listener allows and how it introduces itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The name in the banner (`220 <hostname> ESMTP Herald`) and the EHLO reply.
    pub hostname: String,
    /// The largest message taken, in bytes (after dot-unstuffing); advertised
    /// as `SIZE`. A larger `MAIL FROM … SIZE=` or a larger message gets
    /// `552 5.3.4`; the session goes on.
    pub max_message_bytes: usize,
    /// Recipients accepted per transaction; one more gets `452 4.5.3`.
    pub max_recipients: usize,
    /// Connections at once, in total; one more gets `421 4.7.0` and is closed.
    pub max_connections: usize,
    /// Connections at once per client (IPv4 address or IPv6 /64); one more
    /// gets `421 4.7.0` and is closed.
    pub max_connections_per_ip: usize,
    /// Transactions (MAIL FROM) per client and minute, as a token bucket that
    /// holds this many; over it, MAIL FROM gets `451 4.7.1`.
    pub max_messages_per_ip_per_minute: u32,
    /// How long a client may take to send one command line (and to read our
    /// replies); then `421 4.4.2` and the connection closes.
    pub command_timeout: Duration,
    /// How long the whole DATA phase (or one BDAT chunk) may take; then
    /// `421 4.4.2` and the connection closes.
    pub data_timeout: Duration,
    /// The TLS configuration: STARTTLS is advertised and accepted when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The sink's answer to one RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptDecision {
    /// The recipient is taken: `250 2.1.5`.
    Accept,
    /// The recipient is refused with this reply. A code outside 400–599
    /// becomes 550; a status that is not `class.subject.detail` of the
    /// code's class becomes `<class>.0.0`; the text is cut to one line of
    /// printable ASCII.
    Refuse {
        /// The reply code, e.g. 550.
        code: u16,
        /// The enhanced status code, e.g. `5.1.1`.
        status: String,
        /// The reply text.
        text: String,
    },
}

/// One transaction's envelope as the client gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The client's address.
    pub peer: SocketAddr,
    /// The name the client gave in EHLO or HELO.
    pub helo: String,
    /// The reverse path without `<>`; empty for the null sender (bounces).
    pub mail_from: String,
    /// The accepted recipients without `<>`, in order, without duplicates.
    pub rcpts: Vec<String>,
    /// Whether the transaction ran over TLS (after STARTTLS).
    pub tls: bool,
}

/// Where accepted recipients are decided and complete messages go.
pub trait Sink: Send + Sync + 'static {
    /// Called for every RCPT TO (address without <>). Cheap and synchronous.
    fn rcpt(&self, envelope_so_far: &Envelope, address: &str) -> RcptDecision;

    /// Called once the DATA is complete (dot-unstuffed bytes). `Ok(id)` →
    /// `250 2.0.0 Ok: <id>`; `Err(text)` → `451 4.3.0 <text>`. The message
    /// counts as accepted only on `Ok`; the 250 is written only after this
    /// future returns.
    fn deliver(
        &self,
        envelope: Envelope,
        data: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<String, String>> + Send;
}

/// Counters since start, for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections admitted (a session started).
    pub sessions: AtomicU64,
    /// Connections turned away at once (`421 4.7.0`: too many in total or
    /// from one client).
    pub refused_connections: AtomicU64,
    /// Successful STARTTLS handshakes.
    pub tls_sessions: AtomicU64,
    /// Messages the sink took (`250` after the data).
    pub messages_accepted: AtomicU64,
    /// Messages refused: too big (SIZE= or actual), over the rate, or the
    /// sink failed.
    pub messages_refused: AtomicU64,
    /// RCPT TO the sink refused.
    pub rcpt_refused: AtomicU64,
    /// Sessions closed because a command, the data or a TLS handshake took
    /// too long.
    pub timeouts: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why the TLS certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The certificate file has no usable PEM certificate.
    #[error("{}: {what}", path.display())]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The key file has no usable PEM private key.
    #[error("{}: {what}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it (never the key's contents).
        what: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS with certificate {} and key {}: {source}", cert.display(), key.display())]
    Tls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
}

/// Builds the STARTTLS configuration from a PEM certificate chain and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1), with the ring provider.
pub fn load_tls(cert_pem: &Path, key_pem: &Path) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ServerError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_bytes = read(cert_pem)?;
    let certs = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Certificate {
            path: cert_pem.to_path_buf(),
            what: pem_problem(&e, "certificate"),
        })?;
    if certs.is_empty() {
        return Err(ServerError::Certificate {
            path: cert_pem.to_path_buf(),
            what: "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into(),
        });
    }
    let key_bytes = read(key_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| ServerError::Key {
        path: key_pem.to_path_buf(),
        what: pem_problem(&e, "private key"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_error = |source| ServerError::Tls {
        cert: cert_pem.to_path_buf(),
        key: key_pem.to_path_buf(),
        source,
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls_error)?;
    Ok(Arc::new(config))
}

/// A PEM problem in words, without echoing the file's contents (a key file's
/// lines are secret).
fn pem_problem(e: &rustls::pki_types::pem::Error, wanted: &str) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::NoItemsFound => format!("no PEM {wanted} in the file"),
        Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
        Error::SectionTooLarge => "a PEM section is too large".into(),
        Error::Io(e) => format!("cannot read: {e}"),
        _ => format!("unreadable PEM {wanted}"),
    }
}

/// Accepts connections until `activity` stops, one session task each.
///
/// Connections over [`Settings::max_connections`] or
/// [`Settings::max_connections_per_ip`] get `421 4.7.0` and are closed at
/// once. Returns as soon as [`Activity::stopping`] fires; sessions then end
/// on their own (idle ones with `421 4.3.2`), and one that is handing a
/// message to the sink holds an `"inbound smtp"` guard until it is done.
pub async fn serve<S: Sink>(
    listener: TcpListener,
    settings: Arc<Settings>,
    sink: Arc<S>,
    stats: Arc<Stats>,
    activity: Activity,
) {
    let limits = Arc::new(limits::Limits::new(
        settings.max_connections,
        settings.max_connections_per_ip,
        settings.max_messages_per_ip_per_minute,
    ));
    let shared = Arc::new(session::Shared::new(
        settings,
        sink,
        stats.clone(),
        limits.clone(),
        activity.clone(),
    ));
    let stopping = activity.stopping();
    tokio::pin!(stopping);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stopping => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather
                // than spin on the error.
                tracing::warn!(error = %e, "inbound smtp: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match limits.admit(peer.ip(), std::time::Instant::now()) {
            Ok(admission) => {
                Stats::bump(&stats.sessions);
                tokio::spawn(session::run(shared.clone(), tcp, peer, admission));
            }
            Err(refusal) => {
                Stats::bump(&stats.refused_connections);
                tracing::debug!(%peer, reason = refusal.as_str(), "inbound smtp: connection refused");
                // A fresh socket's send buffer is empty, so this does not
                // block; if it fails the client just sees the close.
                let _ = tcp.try_write(reply::too_many_connections(&shared.hostname).as_bytes());
            }
        }
    }
}
