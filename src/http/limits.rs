//! What a client can hold: connections open at once, in total per listener
//! and per client address, kept below the process's file-descriptor limit.
//!
//! Every accepted connection takes a [`Slot`] from its listener's [`Gate`]
//! before hyper sees it; a connection over a cap is closed at once (it does
//! not queue), so slow or greedy clients can never starve the descriptors
//! `/healthz`, tracking, the admin API, the store and delivery need. The
//! request-body pace is in [`super::reply::BodyPace`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{ListenerLabels, RefusedLabels};

/// Descriptors kept back from HTTP for everything else: the store, logs,
/// DNS, and (on top of this) outgoing SMTP connections.
const FD_RESERVE: u64 = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a daemon serving
/// many connections wants all it may have). Returns the soft limit in
/// force afterwards, or why it could not be read.
pub fn raise_fd_limit() -> Result<u64, std::io::Error> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                "cannot raise the open-file limit to the hard limit"
            );
        }
    }
    Ok(lim.rlim_cur)
}

/// The soft `RLIMIT_NOFILE` now in force (`None` if unreadable).
pub fn fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

/// How many HTTP connections (all listeners together) a process with
/// `nofile` descriptors can hold while keeping room for `smtp_connections`
/// outgoing ones and [`FD_RESERVE`] more; at least a quarter of `nofile`
/// is kept back whatever the rest says, and at least 8 are left to HTTP.
pub fn connection_budget(nofile: u64, smtp_connections: usize) -> usize {
    let reserve = (FD_RESERVE + smtp_connections as u64).max(nofile / 4);
    let budget = nofile.saturating_sub(reserve).max(8);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// The key a client address is counted under: an IPv4 address, or the
/// /64 of an IPv6 one (one subscriber's network; its hosts are free to
/// pick any address in it).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds its maximum.
    Total,
    /// The client address holds its maximum.
    PerIp,
}

impl Refused {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Total => "total_limit",
            Refused::PerIp => "per_ip_limit",
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    warned: Option<Instant>,
}

/// The open connections of one listener.
pub struct Gate {
    name: &'static str,
    open: Mutex<Open>,
    gauge: Gauge,
    refused: Family<RefusedLabels, Counter>,
}

/// A connection's place in its [`Gate`]; freed when dropped.
pub struct Slot {
    gate: Arc<Gate>,
    key: Option<IpAddr>,
}

impl Gate {
    /// A gate for the listener called `name` (`public`, `admin`), counting
    /// open connections and refusals in these metrics.
    pub fn new(
        name: &'static str,
        open: &Family<ListenerLabels, Gauge>,
        refused: Family<RefusedLabels, Counter>,
    ) -> Arc<Gate> {
        Arc::new(Gate {
            name,
            open: Mutex::new(Open::default()),
            gauge: open
                .get_or_create(&ListenerLabels { listener: name })
                .clone(),
            refused,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // The counts stay consistent under a poisoned lock: every update is
        // one statement.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip` if the listener holds fewer than
    /// `max_total` and the address (unless `per_ip` is `None`: exempt or no
    /// per-address cap) fewer than its cap.
    pub fn admit(
        self: &Arc<Gate>,
        ip: IpAddr,
        max_total: usize,
        per_ip: Option<usize>,
    ) -> Result<Slot, Refused> {
        let mut open = self.lock();
        let refused = if open.total >= max_total {
            Some(Refused::Total)
        } else {
            per_ip.and_then(|cap| {
                let n = open.per_ip.get(&client_key(ip)).copied().unwrap_or(0);
                (n >= cap).then_some(Refused::PerIp)
            })
        };
        if let Some(r) = refused {
            let warn = r == Refused::Total
                && open
                    .warned
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(60));
            if warn {
                open.warned = Some(Instant::now());
            }
            drop(open);
            self.refused
                .get_or_create(&RefusedLabels {
                    listener: self.name,
                    reason: r.label(),
                })
                .inc();
            if warn {
                tracing::warn!(
                    listener = self.name,
                    max = max_total,
                    "http: connection limit reached; new connections are closed at once (see [http] max_connections)"
                );
            } else {
                tracing::debug!(listener = self.name, %ip, reason = r.label(), "connection refused");
            }
            return Err(r);
        }
        open.total += 1;
        let key = per_ip.map(|_| client_key(ip));
        if let Some(k) = key {
            *open.per_ip.entry(k).or_insert(0) += 1;
        }
        drop(open);
        self.gauge.inc();
        Ok(Slot {
            gate: self.clone(),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.gate.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(k) = self.key
            && let Some(n) = open.per_ip.get_mut(&k)
        {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&k);
            }
        }
        drop(open);
        self.gate.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn gate() -> Arc<Gate> {
        Gate::new("test", &Family::default(), Family::default())
    }

    #[test]
    fn caps_per_address_and_in_total_and_frees_on_drop() -> TestResult {
        let g = gate();
        let a: IpAddr = "192.0.2.1".parse()?;
        let b: IpAddr = "192.0.2.2".parse()?;
        let s1 = g.admit(a, 3, Some(2)).map_err(|r| format!("{r:?}"))?;
        let _s2 = g.admit(a, 3, Some(2)).map_err(|r| format!("{r:?}"))?;
        assert_eq!(g.admit(a, 3, Some(2)).err(), Some(Refused::PerIp));
        let _s3 = g.admit(b, 3, Some(2)).map_err(|r| format!("{r:?}"))?;
        // Full: even an exempt peer is refused.
        assert_eq!(g.admit(b, 3, None).err(), Some(Refused::Total));
        drop(s1);
        assert_eq!(g.open(), 2);
        let _s4 = g.admit(a, 3, Some(2)).map_err(|r| format!("{r:?}"))?;
        assert_eq!(g.admit(a, 4, Some(2)).err(), Some(Refused::PerIp));
        // An exempt peer (a trusted proxy) is not counted per address.
        let _s5 = g.admit(a, 4, None).map_err(|r| format!("{r:?}"))?;
        assert_eq!(g.open(), 4);
        Ok(())
    }

    #[test]
    fn ipv6_clients_count_per_64() -> TestResult {
        let g = gate();
        let x: IpAddr = "2001:db8:1:2::1".parse()?;
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse()?;
        let z: IpAddr = "2001:db8:1:3::1".parse()?;
        let _a = g.admit(x, 10, Some(1)).map_err(|r| format!("{r:?}"))?;
        assert_eq!(g.admit(y, 10, Some(1)).err(), Some(Refused::PerIp));
        assert!(g.admit(z, 10, Some(1)).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse()?;
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>()?);
        Ok(())
    }

    #[test]
    fn the_budget_stays_below_the_descriptor_limit() {
        assert_eq!(connection_budget(1024, 100), 1024 - 256);
        assert_eq!(connection_budget(1 << 20, 100), (1 << 20) - (1 << 18));
        assert_eq!(connection_budget(256, 100), 28);
        assert_eq!(connection_budget(64, 100), 8);
        for n in [256u64, 1024, 4096, 65536] {
            assert!((connection_budget(n, 100) as u64) < n);
        }
    }
}
