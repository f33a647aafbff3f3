//! Telling machine hits from people's: mail-privacy proxies that fetch
//! every image (Apple Mail Privacy Protection, Google's and Yahoo's image
//! proxies) and link scanners that follow every link before the recipient
//! sees the message (security gateways, Safe Links, preview bots).
//!
//! The signals, cheapest first: the user agent; the client's network
//! (`[tracking] machine_networks`); for clicks, a `HEAD` probe of the same
//! message shortly before, a click within `scanner_window` of delivery,
//! and several links of one message clicked within a couple of seconds.
//! Machine hits are recorded and counted apart; they never make a contact
//! "opened" or "clicked" for segments, and never attribute an order.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use ipnet::IpNet;

/// User-agent fragments of image proxies (matched case-insensitively).
const PROXY_AGENTS: &[(&str, &str)] = &[
    ("googleimageproxy", "Google image proxy"),
    ("ggpht.com", "Google image proxy"),
    ("yahoomailproxy", "Yahoo mail proxy"),
    ("yahoo! slurp", "Yahoo mail proxy"),
    ("outlook-ios", "Outlook image proxy"),
];

/// User-agent fragments of link scanners, security gateways and bots.
const SCANNER_AGENTS: &[&str] = &[
    "bot",
    "crawler",
    "spider",
    "scanner",
    "preview",
    "barracuda",
    "mimecast",
    "proofpoint",
    "urldefense",
    "safelinks",
    "ms-office",
    "microsoft office",
    "symantec",
    "messagelabs",
    "trend micro",
    "sophos",
    "fortinet",
    "fortiguard",
    "forcepoint",
    "ironport",
    "cisco",
    "zscaler",
    "appriver",
    "checkpoint",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "curl/",
    "wget",
    "go-http-client",
    "okhttp",
    "java/",
    "apache-httpclient",
    "libwww",
    "httpclient",
    "headlesschrome",
    "phantomjs",
    "slackbot",
    "facebookexternalhit",
];

/// Why a hit looks automated, from the request alone (user agent and
/// network); `None` when it looks like a person.
pub fn from_request(user_agent: &str, ip: Option<IpAddr>, networks: &[IpNet]) -> Option<String> {
    let ua = user_agent.trim();
    if ua.is_empty() {
        return Some("no user agent".into());
    }
    // Apple's Mail Privacy Protection fetches images with this bare agent.
    if ua == "Mozilla/5.0" {
        return Some("Apple Mail Privacy Protection".into());
    }
    let lower = ua.to_ascii_lowercase();
    if let Some((_, why)) = PROXY_AGENTS.iter().find(|(f, _)| lower.contains(f)) {
        return Some((*why).into());
    }
    if let Some(f) = SCANNER_AGENTS.iter().find(|f| lower.contains(*f)) {
        return Some(format!("automated client ({f})"));
    }
    if let Some(ip) = ip
        && let Some(n) = networks.iter().find(|n| n.contains(&ip))
    {
        return Some(format!("machine network {n}"));
    }
    None
}

/// A message, as the recent-hit memory keys it: send key and contact.
pub type MessageKey = ([u8; 13], u64);

/// Most messages remembered; beyond it the memory starts over (it only
/// serves heuristics over a few seconds).
const MAX_REMEMBERED: usize = 100_000;

/// A `HEAD` of a click link this long before a `GET` of the same message
/// marks the `GET` as a scanner's.
pub const HEAD_PROBE_MS: i64 = 60_000;

/// Two different links of one message clicked within this time: the second
/// (and later) come from a scanner following every link.
pub const BURST_MS: i64 = 2_000;

#[derive(Default)]
struct Inner {
    heads: HashMap<MessageKey, i64>,
    clicks: HashMap<MessageKey, (i64, u32)>,
}

/// The last few seconds of click traffic, in memory.
#[derive(Default)]
pub struct Recent(Mutex<Inner>);

impl Recent {
    /// Notes a `HEAD` request of a click link.
    pub fn head(&self, m: MessageKey, at: i64) {
        if let Ok(mut g) = self.0.lock() {
            if g.heads.len() >= MAX_REMEMBERED {
                g.heads.clear();
            }
            g.heads.insert(m, at);
        }
    }

    /// Notes a click and says why it looks automated from the message's
    /// recent traffic, if it does.
    pub fn click(&self, m: MessageKey, link: u32, at: i64) -> Option<String> {
        let Ok(mut g) = self.0.lock() else {
            return None;
        };
        let mut why = None;
        if let Some(h) = g.heads.get(&m)
            && at - *h <= HEAD_PROBE_MS
        {
            why = Some("the link was probed with HEAD first".to_string());
        }
        if g.clicks.len() >= MAX_REMEMBERED {
            g.clicks.clear();
        }
        if let Some((prev_at, prev_link)) = g.clicks.insert(m, (at, link))
            && prev_link != link
            && at - prev_at <= BURST_MS
            && why.is_none()
        {
            why = Some("several links clicked at once".to_string());
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_and_networks() {
        let nets: Vec<IpNet> = vec!["17.0.0.0/8".parse().ok()]
            .into_iter()
            .flatten()
            .collect();
        let person = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15";
        assert_eq!(from_request(person, "192.0.2.1".parse().ok(), &nets), None);
        assert!(from_request("Mozilla/5.0", None, &nets).is_some());
        assert!(from_request("", None, &nets).is_some());
        assert!(
            from_request("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)", None, &nets)
                .is_some_and(|w| w.contains("Google"))
        );
        assert!(from_request("python-requests/2.31", None, &nets).is_some());
        assert!(from_request(person, "17.58.1.2".parse().ok(), &nets).is_some());
    }

    #[test]
    fn heads_and_bursts() {
        let r = Recent::default();
        let m = ([1; 13], 7);
        assert_eq!(r.click(m, 0, 1_000), None);
        assert!(r.click(m, 1, 1_500).is_some()); // another link at once
        assert_eq!(r.click(m, 2, 9_000), None); // later, by hand
        let n = ([2; 13], 7);
        r.head(n, 10_000);
        assert!(r.click(n, 0, 10_400).is_some());
    }
}
