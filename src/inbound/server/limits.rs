//! Connection and message limits per client, in one bounded table.
//!
//! A client is an IPv4 address or an IPv6 /64 (one host usually holds a
//! whole /64, so counting single IPv6 addresses would limit nothing). Each
//! client has a count of open connections and a token bucket of messages
//! that refills evenly over a minute. Entries of clients with no open
//! connection and a full bucket say nothing and are forgotten; the table is
//! swept when it has doubled since the last sweep, and past a hard cap even
//! the partly drained buckets of gone clients are dropped, so a flood of
//! addresses cannot grow it without end. Time comes in as an argument, so
//! the arithmetic is tested without waiting.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Below this many entries the table is never swept.
const SWEEP_FROM: usize = 1024;
/// Above this many entries, gone clients are dropped even with a drained
/// bucket (their rate state is lost; the table stays bounded).
const HARD_CAP: usize = 65_536;

/// How connections from one client are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum ClientKey {
    /// An IPv4 address (also an IPv4-mapped IPv6 address).
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl ClientKey {
    /// The group `ip` belongs to.
    pub(super) fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(a) => ClientKey::V4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4),
                None => ClientKey::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// [`Limits::max_total`] connections are open.
    Total,
    /// The client has [`Limits::max_per_client`] connections open.
    PerClient,
}

impl Refusal {
    /// For the log.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "too many connections in total",
            Refusal::PerClient => "too many connections from this client",
        }
    }
}

/// The limits and the table they are counted in.
#[derive(Debug)]
pub(super) struct Limits {
    /// Connections at once, in total.
    max_total: usize,
    /// Connections at once per client.
    max_per_client: usize,
    /// Bucket size and refill per minute.
    per_minute: f64,
    /// Entry count that triggers a sweep, and the hard cap (fields so the
    /// tests can make them small).
    sweep_from: usize,
    hard_cap: usize,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    total: usize,
    clients: HashMap<ClientKey, Client>,
    /// Sweep when `clients` reaches this size.
    next_sweep: usize,
}

#[derive(Debug)]
struct Client {
    connections: usize,
    tokens: f64,
    refilled: Instant,
}

impl Client {
    /// Tokens the bucket holds at `now`.
    fn tokens_at(&self, now: Instant, per_minute: f64) -> f64 {
        let gained = now.saturating_duration_since(self.refilled).as_secs_f64() * per_minute / 60.0;
        (self.tokens + gained).min(per_minute)
    }
}

/// An open connection, counted until dropped.
#[derive(Debug)]
pub(super) struct Admission {
    limits: Arc<Limits>,
    key: ClientKey,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut t = self.limits.lock();
        t.total = t.total.saturating_sub(1);
        if let Some(c) = t.clients.get_mut(&self.key) {
            c.connections = c.connections.saturating_sub(1);
        }
    }
}

impl Limits {
    /// Limits as [`super::Settings`] gives them.
    pub(super) fn new(max_total: usize, max_per_client: usize, per_minute: u32) -> Limits {
        Limits::with_bounds(max_total, max_per_client, per_minute, SWEEP_FROM, HARD_CAP)
    }

    fn with_bounds(
        max_total: usize,
        max_per_client: usize,
        per_minute: u32,
        sweep_from: usize,
        hard_cap: usize,
    ) -> Limits {
        Limits {
            max_total,
            max_per_client,
            per_minute: f64::from(per_minute),
            sweep_from,
            hard_cap,
            table: Mutex::new(Table {
                total: 0,
                clients: HashMap::new(),
                next_sweep: sweep_from,
            }),
        }
    }

    /// The table; a panic elsewhere while it was held cannot leave it
    /// inconsistent (every update is a few integer steps), so a poisoned
    /// lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a new connection from `ip`, or says why it is refused.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admission, Refusal> {
        let key = ClientKey::of(ip);
        let mut t = self.lock();
        if t.total >= self.max_total {
            return Err(Refusal::Total);
        }
        if t.clients.get(&key).map_or(0, |c| c.connections) >= self.max_per_client {
            return Err(Refusal::PerClient);
        }
        if t.clients.len() >= t.next_sweep {
            self.sweep(&mut t, now);
        }
        let client = t.clients.entry(key).or_insert(Client {
            connections: 0,
            tokens: self.per_minute,
            refilled: now,
        });
        client.connections += 1;
        t.total += 1;
        Ok(Admission {
            limits: self.clone(),
            key,
        })
    }

    /// Takes one message token for the client `ip`; false when its bucket
    /// is empty.
    pub(super) fn take_message(&self, ip: IpAddr, now: Instant) -> bool {
        let mut t = self.lock();
        let client = t.clients.entry(ClientKey::of(ip)).or_insert(Client {
            connections: 0,
            tokens: self.per_minute,
            refilled: now,
        });
        client.tokens = client.tokens_at(now, self.per_minute);
        client.refilled = now;
        if client.tokens >= 1.0 {
            client.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets clients that have no connection and a full bucket; over the
    /// hard cap, every client without a connection.
    fn sweep(&self, t: &mut Table, now: Instant) {
        let per_minute = self.per_minute;
        t.clients
            .retain(|_, c| c.connections > 0 || c.tokens_at(now, per_minute) < per_minute);
        if t.clients.len() >= self.hard_cap {
            t.clients.retain(|_, c| c.connections > 0);
        }
        // Next sweep when the table has doubled, but never later than the cap.
        let len = t.clients.len();
        t.next_sweep = (len * 2)
            .max(self.sweep_from)
            .min(self.hard_cap.max(len + 1));
    }

    /// Entries in the table (for the tests).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.lock().clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_ipv4_as_ipv4() -> Result<(), std::net::AddrParseError> {
        let key = |s: &str| s.parse::<IpAddr>().map(ClientKey::of);
        assert_eq!(key("2001:db8:1:2::1")?, key("2001:db8:1:2:ffff::9")?);
        assert_ne!(key("2001:db8:1:2::1")?, key("2001:db8:1:3::1")?);
        assert_eq!(key("::ffff:192.0.2.7")?, ClientKey::of(v4(7)));
        Ok(())
    }

    #[test]
    fn connections_are_limited_in_total_and_per_client_and_released_on_drop() {
        let limits = Arc::new(Limits::new(3, 2, 10));
        let now = Instant::now();
        let a1 = limits.admit(v4(1), now);
        let a2 = limits.admit(v4(1), now);
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(limits.admit(v4(1), now).err(), Some(Refusal::PerClient));
        let b1 = limits.admit(v4(2), now);
        assert!(b1.is_ok());
        assert_eq!(limits.admit(v4(3), now).err(), Some(Refusal::Total));
        drop(a1);
        assert!(
            limits.admit(v4(1), now).is_ok(),
            "a closed connection frees its place"
        );
        drop((a2, b1));
    }

    #[test]
    fn the_message_bucket_holds_a_minute_and_refills_evenly() {
        let limits = Limits::new(10, 10, 6);
        let t0 = Instant::now();
        for _ in 0..6 {
            assert!(limits.take_message(v4(1), t0));
        }
        assert!(
            !limits.take_message(v4(1), t0),
            "the seventh in the same minute is refused"
        );
        assert!(
            limits.take_message(v4(2), t0),
            "another client has its own bucket"
        );
        // 6 per minute: one token every 10 s (a refused try costs nothing).
        assert!(!limits.take_message(v4(1), t0 + Duration::from_secs(9)));
        assert!(limits.take_message(v4(1), t0 + Duration::from_secs(10)));
        assert!(!limits.take_message(v4(1), t0 + Duration::from_secs(19)));
        assert!(limits.take_message(v4(1), t0 + Duration::from_secs(25)));
        assert!(!limits.take_message(v4(1), t0 + Duration::from_secs(25)));
        // Never more than a full bucket, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..6 {
            assert!(limits.take_message(v4(1), later));
        }
        assert!(!limits.take_message(v4(1), later));
    }

    #[test]
    fn the_table_forgets_idle_clients_and_stays_under_its_cap() {
        let limits = Arc::new(Limits::with_bounds(1000, 10, 60, 8, 32));
        let t0 = Instant::now();
        // Clients that came, sent a message and left: their buckets are not
        // full for a second, so the first sweeps keep them.
        for i in 0..100u8 {
            let admission = limits.admit(v4(i), t0);
            assert!(admission.is_ok());
            assert!(limits.take_message(v4(i), t0));
        }
        assert!(
            limits.entries() <= 32 + 1,
            "the hard cap holds: {}",
            limits.entries()
        );
        // A minute later every bucket is full again and a sweep drops them all
        // except the one connection still open.
        let open = limits.admit(v4(200), t0);
        assert!(open.is_ok());
        // New clients at `later` trigger sweeps; after one, the table holds
        // the open connection and at most the 8 entries before the next.
        let later = t0 + Duration::from_secs(61);
        for i in 100..140u8 {
            drop(limits.admit(v4(i), later));
        }
        assert!(
            limits.entries() <= 9,
            "idle clients were forgotten: {}",
            limits.entries()
        );
        drop(open);
    }
}
