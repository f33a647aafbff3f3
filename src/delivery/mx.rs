//! Where mail for a domain goes: MX lookup with hickory-resolver (RFC 5321
//! §5.1): MX hosts by preference, random among equal preference; the domain
//! itself (implicit MX) only when it has no MX records; a null MX (RFC 7505)
//! and NXDOMAIN are permanent failures, anything else a reason to retry.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;

/// A resolver that asks `nameserver` (tests point it at a dnsmasq on
/// loopback), or the system's resolvers when it is `None`; also used by
/// `herald doctor`.
pub fn resolver(nameserver: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    match nameserver {
        Some(ns) => {
            let mut server = NameServerConfig::udp_and_tcp(ns.ip());
            for c in &mut server.connections {
                c.port = ns.port();
            }
            let config = ResolverConfig::from_parts(None, vec![], vec![server]);
            hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default())
                .with_options(opts)
                .build()
        }
        None => hickory_resolver::Resolver::builder_tokio()
            .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?
            .with_options(opts)
            .build(),
    }
    .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// One host to try, with its addresses.
#[derive(Debug, Clone)]
pub struct MxHost {
    /// The MX host name (or the domain, for an implicit MX).
    pub name: String,
    /// MX preference (0 for an implicit MX).
    pub preference: u16,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
}

/// Why a domain has no usable hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxError {
    /// The domain cannot receive mail: give up (hard bounce).
    Permanent(String),
    /// Try again later.
    Temporary(String),
}

/// The resolver Herald delivers with.
#[derive(Clone)]
pub struct Mx {
    resolver: TokioResolver,
}

impl Mx {
    /// The system resolver, or the given nameserver (tests point this at a
    /// dnsmasq on loopback).
    pub fn new(nameserver: Option<SocketAddr>) -> Result<Mx, String> {
        Ok(Mx {
            resolver: resolver(nameserver)?,
        })
    }

    /// The hosts to try for `domain`, in order.
    pub async fn hosts(&self, domain: &str) -> Result<Vec<MxHost>, MxError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut mx: Vec<(u16, String)> = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_nx_domain() => {
                return Err(MxError::Permanent(format!(
                    "550 5.1.2 the domain {domain} does not exist (NXDOMAIN)"
                )));
            }
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => {
                return Err(MxError::Temporary(format!(
                    "451 4.4.3 MX lookup for {domain} failed: {e}"
                )));
            }
        };
        // RFC 7505: a single MX whose exchange is the root means "no mail".
        if let [(_, exchange)] = mx.as_slice()
            && (exchange == "." || exchange.is_empty())
        {
            return Err(MxError::Permanent(format!(
                "556 5.1.10 {domain} does not accept mail (null MX)"
            )));
        }
        mx.retain(|(_, h)| h != "." && !h.is_empty());
        if mx.is_empty() {
            // Implicit MX: the domain's own addresses.
            return match self.addrs(&fqdn).await {
                Ok(addrs) if !addrs.is_empty() => Ok(vec![MxHost {
                    name: domain.to_string(),
                    preference: 0,
                    addrs,
                }]),
                Ok(_) => Err(MxError::Permanent(format!(
                    "550 5.1.2 {domain} has neither MX nor address records"
                ))),
                Err(e) => Err(e),
            };
        }
        // Preference order, random among equal preferences (RFC 5321 §5.1).
        mx.shuffle(&mut rand::rng());
        mx.sort_by_key(|(p, _)| *p);
        let mut hosts = Vec::with_capacity(mx.len());
        let mut last_error = None;
        for (preference, name) in mx {
            match self.addrs(&name).await {
                Ok(addrs) if !addrs.is_empty() => hosts.push(MxHost {
                    name: name.trim_end_matches('.').to_string(),
                    preference,
                    addrs,
                }),
                Ok(_) => {}
                Err(MxError::Permanent(m) | MxError::Temporary(m)) => last_error = Some(m),
            }
        }
        if hosts.is_empty() {
            return Err(MxError::Temporary(last_error.unwrap_or_else(|| {
                format!("451 4.4.4 no MX host of {domain} has an address")
            })));
        }
        Ok(hosts)
    }

    /// The addresses of a host name (not an MX look-up): for fetching
    /// MTA-STS policies from `mta-sts.<domain>`.
    pub async fn ips(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        self.addrs(&fqdn)
            .await
            .map_err(|(MxError::Permanent(m) | MxError::Temporary(m))| m)
    }

    /// The TXT records at `name`, each one's strings joined; empty when the
    /// name has none or does not exist. `Err` for a failed look-up.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.txt_lookup(fqdn.as_str()).await {
            Ok(lookup) => Ok(txt_strings(lookup.answers())),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(format!(
                "TXT lookup for {} failed: {e}",
                name.trim_end_matches('.')
            )),
        }
    }

    async fn addrs(&self, name: &str) -> Result<Vec<IpAddr>, MxError> {
        match self.resolver.lookup_ip(name).await {
            Ok(l) => Ok(l.iter().collect()),
            Err(e) if e.is_nx_domain() => Err(MxError::Permanent(format!(
                "550 5.1.2 {} does not exist (NXDOMAIN)",
                name.trim_end_matches('.')
            ))),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(MxError::Temporary(format!(
                "451 4.4.3 address lookup for {} failed: {e}",
                name.trim_end_matches('.')
            ))),
        }
    }
}

/// The TXT records among `answers`, each one's strings joined (as SPF,
/// DKIM, DMARC and MTA-STS read them).
pub fn txt_strings(answers: &[hickory_resolver::proto::rr::Record]) -> Vec<String> {
    answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}
