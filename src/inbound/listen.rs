//! The daemon's inbound listener: [`server`](super::server) speaking SMTP,
//! [`Inbound`] deciding RCPTs and taking reports.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::server::{self, RcptDecision, Sink};
use super::{Envelope, Inbound, RcptKind, RcptRefusal, Via};
use crate::metrics::OutcomeLabels;

/// The listener's sink: RCPT decisions and reports, counted.
pub struct Listener {
    inbound: Inbound,
    reports: Family<OutcomeLabels, Counter>,
    refused: Family<OutcomeLabels, Counter>,
}

impl Sink for Listener {
    fn rcpt(&self, _so_far: &server::Envelope, address: &str) -> RcptDecision {
        match self.inbound.rcpt(address) {
            Ok(_) => RcptDecision::Accept,
            Err(why) => {
                let reason = match why {
                    RcptRefusal::NotHere => "not_here",
                    RcptRefusal::Forged => "forged",
                    RcptRefusal::Expired => "expired",
                };
                self.refused
                    .get_or_create(&OutcomeLabels { outcome: reason })
                    .inc();
                RcptDecision::Refuse {
                    code: 550,
                    status: "5.1.1".into(),
                    text: why.text().into(),
                }
            }
        }
    }

    async fn deliver(&self, env: server::Envelope, data: Vec<u8>) -> Result<String, String> {
        let verp = env
            .rcpts
            .iter()
            .filter_map(|a| match self.inbound.rcpt(a) {
                Ok(RcptKind::Verp(r)) => Some(r),
                _ => None,
            })
            .collect();
        let envelope = Envelope {
            peer: Some(env.peer.ip().to_string()),
            mail_from: Some(env.mail_from),
            rcpts: env.rcpts,
            verp,
        };
        match self.inbound.receive(Via::Smtp, envelope, data).await {
            Ok(r) => {
                self.reports
                    .get_or_create(&OutcomeLabels {
                        outcome: r.verdict.as_str(),
                    })
                    .inc();
                Ok(format!("report {} ({})", r.id, r.verdict.as_str()))
            }
            Err(e) => {
                tracing::error!(error = %e, "inbound report not stored; the client will retry");
                Err("cannot store the report now, try again later".into())
            }
        }
    }
}

/// A bound inbound listener, ready to serve.
pub struct Bound {
    listener: tokio::net::TcpListener,
    settings: Arc<server::Settings>,
    /// The address it listens on.
    pub addr: SocketAddr,
}

/// Binds `[inbound] listen` and loads the STARTTLS certificate; `None`
/// when the listener is off. Errors name the key and the cause.
pub async fn bind(config: &crate::config::Config) -> anyhow::Result<Option<Bound>> {
    let c = &config.inbound;
    let Some(addr) = c.listen else {
        return Ok(None);
    };
    let tls = match &c.tls {
        Some((cert, key)) => {
            Some(server::load_tls(cert, key).context("[inbound] tls_cert / tls_key")?)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on [inbound] listen = \"{addr}\""))?;
    let hostname = c
        .hostname
        .clone()
        .or_else(|| config.senders.iter().find_map(|s| s.bounce_domain.clone()))
        .unwrap_or_else(|| "localhost".into());
    let settings = server::Settings {
        hostname,
        max_message_bytes: c.max_message_bytes,
        max_recipients: 100,
        max_connections: c.max_connections,
        max_connections_per_ip: c.max_connections_per_ip,
        max_messages_per_ip_per_minute: c.rate_per_ip_per_minute,
        command_timeout: c.command_timeout,
        data_timeout: c.data_timeout,
        tls,
    };
    Ok(Some(Bound {
        addr: listener.local_addr()?,
        listener,
        settings: Arc::new(settings),
    }))
}

impl Bound {
    /// Serves until the daemon stops.
    pub fn spawn(
        self,
        inbound: Inbound,
        metrics: &crate::metrics::Metrics,
        activity: crate::activity::Activity,
    ) -> tokio::task::JoinHandle<()> {
        let sink = Arc::new(Listener {
            inbound,
            reports: metrics.inbound_reports.clone(),
            refused: metrics.inbound_refused.clone(),
        });
        tokio::spawn(server::serve(
            self.listener,
            self.settings,
            sink,
            metrics.inbound_server.clone(),
            activity,
        ))
    }
}
