//! The inbound SMTP listener (smtp-proto's server side on tokio).
//! TEMPORARY stand-in with the agreed API; replaced by the listener branch.

use std::sync::Arc;

/// Settings.
pub struct Settings {
    /// Hostname.
    pub hostname: String,
    /// Max bytes.
    pub max_message_bytes: usize,
    /// Max rcpts.
    pub max_recipients: usize,
    /// Max conns.
    pub max_connections: usize,
    /// Per IP.
    pub max_connections_per_ip: usize,
    /// Rate.
    pub max_messages_per_ip_per_minute: u32,
    /// Command timeout.
    pub command_timeout: std::time::Duration,
    /// Data timeout.
    pub data_timeout: std::time::Duration,
    /// TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Decision.
pub enum RcptDecision {
    /// Accept.
    Accept,
    /// Refuse.
    Refuse {
        /// Code.
        code: u16,
        /// Status.
        status: String,
        /// Text.
        text: String,
    },
}

/// Envelope.
pub struct Envelope {
    /// Peer.
    pub peer: std::net::SocketAddr,
    /// Helo.
    pub helo: String,
    /// From.
    pub mail_from: String,
    /// Rcpts.
    pub rcpts: Vec<String>,
    /// TLS.
    pub tls: bool,
}

/// Sink.
pub trait Sink: Send + Sync + 'static {
    /// Rcpt.
    fn rcpt(&self, envelope_so_far: &Envelope, address: &str) -> RcptDecision;
    /// Deliver.
    fn deliver(
        &self,
        envelope: Envelope,
        data: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<String, String>> + Send;
}

/// Stats.
#[derive(Default)]
pub struct Stats {}

/// Error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Tls.
    #[error("{0}")]
    Tls(String),
}

/// Load.
pub fn load_tls(
    _cert_pem: &std::path::Path,
    _key_pem: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    Err(ServerError::Tls("stub".into()))
}

/// Serve.
pub async fn serve<S: Sink>(
    _listener: tokio::net::TcpListener,
    _settings: Arc<Settings>,
    _sink: Arc<S>,
    _stats: Arc<Stats>,
    _activity: crate::activity::Activity,
) {
}
