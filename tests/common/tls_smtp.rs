//! A small SMTP server with STARTTLS, implicit TLS and AUTH PLAIN, for the
//! paths smtp-sink cannot serve (it speaks neither TLS nor AUTH). Its
//! certificate is made with the openssl CLI; it records what it received,
//! whether the session was encrypted and who authenticated.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One received transaction.
#[derive(Debug, Clone)]
pub struct Received {
    pub tls: bool,
    pub auth: Option<String>,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Offers STARTTLS; no AUTH.
    StartTls,
    /// Offers STARTTLS and requires AUTH PLAIN after it.
    StartTlsAuth,
    /// TLS from the first byte, AUTH required.
    ImplicitAuth,
}

pub struct TlsSmtp {
    pub port: u16,
    /// The CA certificate that signed the server's certificate.
    pub cert: PathBuf,
    pub received: Arc<Mutex<Vec<Received>>>,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

/// A private CA and a server certificate it signed for `localhost` and
/// `mx.tls.test`: (CA certificate, server certificate, server key).
fn make_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    super::peers::test_ca_and_cert(dir, &["localhost", "mx.tls.test"])
}

impl TlsSmtp {
    pub fn start(mode: Mode, user: &str, pass: &str) -> TlsSmtp {
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = make_cert(dir.path());
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
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        let secret = format!("\0{user}\0{pass}");
        rt.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                let acceptor = acceptor.clone();
                let rec = rec.clone();
                let secret = secret.clone();
                tokio::spawn(async move {
                    if mode == Mode::ImplicitAuth {
                        if let Ok(tls) = acceptor.accept(sock).await {
                            let _ = session(tls, true, mode, &secret, rec).await;
                        }
                        return;
                    }
                    if let Some(sock) = plain_until_starttls(sock, rec.clone()).await
                        && let Ok(tls) = acceptor.accept(sock).await
                    {
                        let _ = session(tls, true, mode, &secret, rec).await;
                    }
                });
            }
        });
        TlsSmtp {
            port,
            cert: ca,
            received,
            _dir: dir,
            _rt: rt,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The plain-text part: greeting, EHLO offering STARTTLS; returns the socket
/// once STARTTLS was accepted.
async fn plain_until_starttls(
    sock: tokio::net::TcpStream,
    _rec: Arc<Mutex<Vec<Received>>>,
) -> Option<tokio::net::TcpStream> {
    let mut r = BufReader::new(sock);
    r.get_mut()
        .write_all(b"220 tls-test ESMTP\r\n")
        .await
        .ok()?;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let cmd = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if cmd.starts_with("EHLO") {
            b"250-tls-test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
        } else if cmd == "STARTTLS" {
            r.get_mut()
                .write_all(b"220 2.0.0 go ahead\r\n")
                .await
                .ok()?;
            return Some(r.into_inner());
        } else if cmd == "QUIT" {
            let _ = r.get_mut().write_all(b"221 bye\r\n").await;
            return None;
        } else {
            b"530 5.7.0 Must issue a STARTTLS command first\r\n"
        };
        r.get_mut().write_all(reply).await.ok()?;
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    sock: S,
    tls: bool,
    mode: Mode,
    secret: &str,
    rec: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(sock);
    if mode == Mode::ImplicitAuth {
        r.get_mut().write_all(b"220 tls-test ESMTP\r\n").await?;
    }
    let need_auth = mode != Mode::StartTls;
    let mut authed: Option<String> = None;
    let mut rcpts = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            if need_auth {
                "250-tls-test\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n".into()
            } else {
                "250-tls-test\r\n250 PIPELINING\r\n".into()
            }
        } else if let Some(arg) = upper.strip_prefix("AUTH PLAIN") {
            let arg = cmd[cmd.len() - arg.len()..].trim().to_string();
            let arg = if arg.is_empty() {
                r.get_mut().write_all(b"334 \r\n").await?;
                line.clear();
                r.read_line(&mut line).await?;
                line.trim().to_string()
            } else {
                arg
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(arg)
                .unwrap_or_default();
            if decoded == secret.as_bytes() {
                authed = Some(secret.split('\0').nth(1).unwrap_or("").to_string());
                "235 2.7.0 Authentication successful\r\n".into()
            } else {
                "535 5.7.8 Authentication credentials invalid\r\n".into()
            }
        } else if upper.starts_with("MAIL FROM") {
            if need_auth && authed.is_none() {
                "530 5.7.0 Authentication required\r\n".into()
            } else {
                rcpts.clear();
                "250 2.1.0 Ok\r\n".into()
            }
        } else if upper.starts_with("RCPT TO:") {
            rcpts.push(cmd[8..].trim().trim_matches(['<', '>']).to_string());
            "250 2.1.5 Ok\r\n".into()
        } else if upper == "DATA" {
            r.get_mut().write_all(b"354 go on\r\n").await?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l).await? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                let l = if l.starts_with(b"..") {
                    &l[1..]
                } else {
                    &l[..]
                };
                data.extend_from_slice(l);
            }
            rec.lock().unwrap().push(Received {
                tls,
                auth: authed.clone(),
                rcpts: std::mem::take(&mut rcpts),
                data,
            });
            "250 2.0.0 Ok: queued\r\n".into()
        } else if upper == "QUIT" {
            r.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            "250 2.0.0 Ok\r\n".into()
        } else {
            "502 5.5.2 Error: command not recognized\r\n".into()
        };
        r.get_mut().write_all(reply.as_bytes()).await?;
    }
}
