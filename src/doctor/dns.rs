//! The four kinds of DNS question `herald doctor` asks, behind a small
//! trait so that the checks can be unit-tested against a table of records
//! and run for real against hickory-resolver.
//!
//! A name that does not exist (NXDOMAIN) and a name without records of the
//! type asked are both an empty answer: no check needs to tell them apart.
//! Anything else (a timeout, SERVFAIL, REFUSED) is a [`DnsError`], which a
//! check reports as "could not look up", never as "missing".

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;

/// A lookup that got no answer, yes or no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DnsError(pub String);

/// What the checks ask of DNS. Names are given without the final dot and
/// answered in lower case, without the final dot.
pub(crate) trait Dns {
    /// The TXT records at `name`, each record's strings joined (RFC 7208
    /// §3.3, RFC 6376 §3.6.2.2).
    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError>;
    /// The A and AAAA addresses of `name`.
    async fn addrs(&self, name: &str) -> Result<Vec<IpAddr>, DnsError>;
    /// The MX records of `name`: (preference, exchange).
    async fn mx(&self, name: &str) -> Result<Vec<(u16, String)>, DnsError>;
    /// The PTR names of `ip`.
    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError>;
}

/// [`Dns`] over hickory-resolver (the resolver delivery uses, built from
/// `[delivery] nameserver`).
pub struct Hickory(pub TokioResolver);

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

fn host(name: &hickory_resolver::proto::rr::Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// NXDOMAIN and "no records" as an empty answer, other errors as
/// [`DnsError`] naming the question.
fn empty_or<T>(e: NetError, what: &str, name: &str) -> Result<Vec<T>, DnsError> {
    if e.is_nx_domain() || e.is_no_records_found() {
        Ok(Vec::new())
    } else {
        Err(DnsError(format!("{what} lookup for {name} failed: {e}")))
    }
}

impl Dns for Hickory {
    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        match self.0.txt_lookup(fqdn(name)).await {
            Ok(l) => Ok(crate::delivery::mx::txt_strings(l.answers())),
            Err(e) => empty_or(e, "TXT", name),
        }
    }

    async fn addrs(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        // A and AAAA asked separately: `lookup_ip`'s default strategy stops
        // at the A records, and forward confirmation of an IPv6 PTR needs
        // the AAAA ones.
        let mut out: Vec<IpAddr> = match self.0.ipv4_lookup(fqdn(name)).await {
            Ok(l) => l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect(),
            Err(e) => empty_or(e, "A", name)?,
        };
        match self.0.ipv6_lookup(fqdn(name)).await {
            Ok(l) => out.extend(l.answers().iter().filter_map(|r| match &r.data {
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Err(e) => out.extend(empty_or::<IpAddr>(e, "AAAA", name)?),
        }
        Ok(out)
    }

    async fn mx(&self, name: &str) -> Result<Vec<(u16, String)>, DnsError> {
        match self.0.mx_lookup(fqdn(name)).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(m) => Some((m.preference, host(&m.exchange))),
                    _ => None,
                })
                .collect()),
            Err(e) => empty_or(e, "MX", name),
        }
    }

    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        match self.0.reverse_lookup(ip).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(p) => Some(host(&p.0)),
                    _ => None,
                })
                .collect()),
            Err(e) => empty_or(e, "PTR", &ip.to_string()),
        }
    }
}

/// A table of records standing in for DNS in unit tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Table {
    pub txt: std::collections::HashMap<String, Vec<String>>,
    pub addrs: std::collections::HashMap<String, Vec<IpAddr>>,
    pub mx: std::collections::HashMap<String, Vec<(u16, String)>>,
    pub ptr: std::collections::HashMap<IpAddr, Vec<String>>,
    /// Names whose lookups fail (SERVFAIL).
    pub broken: Vec<String>,
    /// Every question asked, for counting.
    pub asked: std::sync::Mutex<Vec<String>>,
}

#[cfg(test)]
impl Table {
    pub fn with_txt(mut self, name: &str, value: &str) -> Table {
        self.txt
            .entry(name.to_string())
            .or_default()
            .push(value.to_string());
        self
    }

    pub fn with_addr(mut self, name: &str, ip: &str) -> Table {
        let ip = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        self.addrs.entry(name.to_string()).or_default().push(ip);
        self
    }

    pub fn with_mx(mut self, name: &str, pref: u16, host: &str) -> Table {
        self.mx
            .entry(name.to_string())
            .or_default()
            .push((pref, host.to_string()));
        self
    }

    pub fn with_ptr(mut self, ip: &str, name: &str) -> Table {
        let ip = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        self.ptr.entry(ip).or_default().push(name.to_string());
        self
    }

    fn ask(&self, q: String) -> Result<(), DnsError> {
        let broken = self.broken.iter().any(|b| q.ends_with(&format!(" {b}")));
        if let Ok(mut a) = self.asked.lock() {
            a.push(q.clone());
        }
        if broken {
            Err(DnsError(format!("{q}: SERVFAIL")))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
impl Dns for Table {
    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        self.ask(format!("TXT {name}"))?;
        Ok(self.txt.get(name).cloned().unwrap_or_default())
    }
    async fn addrs(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        self.ask(format!("A {name}"))?;
        Ok(self.addrs.get(name).cloned().unwrap_or_default())
    }
    async fn mx(&self, name: &str) -> Result<Vec<(u16, String)>, DnsError> {
        self.ask(format!("MX {name}"))?;
        Ok(self.mx.get(name).cloned().unwrap_or_default())
    }
    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        self.ask(format!("PTR {ip}"))?;
        Ok(self.ptr.get(&ip).cloned().unwrap_or_default())
    }
}
