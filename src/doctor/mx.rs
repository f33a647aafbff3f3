//! The bounce domain's MX: bounces and complaints come back to
//! `b-<token>@<bounce_domain>`, so its MX must reach Herald's inbound
//! listener. A host counts as Herald's when it resolves to the listener's
//! address (when `[inbound] listen` names one), when its name is the
//! listener's hostname, or (listening on all addresses) when it resolves to
//! a sending IP given with `--ip`.

use std::net::IpAddr;

use super::dns::Dns;
use super::{Verdict, addr_type};
use crate::config::inbound::InboundConfig;

/// The parts of a `[[sender]]` the check needs.
pub struct Bounces<'a> {
    /// The sender id.
    pub id: &'a str,
    /// The From domain.
    pub domain: &'a str,
    /// MAIL FROM when there is no bounce domain.
    pub return_path: &'a str,
    /// The VERP bounce domain.
    pub bounce_domain: Option<&'a str>,
}

/// The `mx` verdict for `sender`'s bounce domain.
pub async fn check<D: Dns>(
    dns: &D,
    sender: &Bounces<'_>,
    inbound: &InboundConfig,
    hostname: &str,
    ips: &[IpAddr],
) -> Verdict {
    let Some(bounce) = sender.bounce_domain else {
        return Verdict::warn(
            "mx",
            sender.domain,
            format!(
                "no bounce_domain: bounces go to {}, which Herald does not read, so hard bounces are not suppressed",
                sender.return_path
            ),
        )
        .fix(format!(
            "set bounce_domain = \"bounces.{}\" in [[sender]] id = \"{}\" and publish MX at bounces.{}: 10 {hostname}",
            sender.domain, sender.id, sender.domain
        ));
    };
    let Some(listen) = inbound.listen else {
        return Verdict::fail(
            "mx",
            bounce,
            "bounce_domain is set but [inbound] listen is not: nothing takes the bounces",
        )
        .fix("set [inbound] listen = \"0.0.0.0:25\" (and hostname, the name the MX points at)");
    };
    let listen_ip = Some(listen.ip()).filter(|ip| !ip.is_unspecified());
    let publish = |extra: &str| format!("publish MX at {bounce}: 10 {hostname}{extra}");
    // The A record the MX host needs, when Herald knows its address.
    let host_addr = listen_ip.or_else(|| ips.first().copied());
    let host_a = match host_addr {
        Some(ip) if !dns.addrs(hostname).await.is_ok_and(|a| a.contains(&ip)) => {
            format!(", and {} at {hostname}: {ip}", addr_type(ip))
        }
        _ => String::new(),
    };
    let hosts = match dns.mx(bounce).await {
        Ok(h) => h,
        Err(e) => return Verdict::fail("mx", bounce, format!("cannot look up: {e}")),
    };
    if hosts.is_empty() {
        return Verdict::fail("mx", bounce, "no MX record: bounces to it cannot arrive")
            .fix(publish(&host_a));
    }
    if hosts.iter().any(|(_, h)| h.is_empty() || h == ".") {
        return Verdict::fail("mx", bounce, "a null MX: the domain says it takes no mail")
            .fix(format!("change MX at {bounce} to: 10 {hostname}{host_a}"));
    }
    let mut sorted = hosts.clone();
    sorted.sort();
    let mut ours = Vec::new();
    let mut others = Vec::new();
    for (pref, h) in &sorted {
        let addrs = dns.addrs(h).await.unwrap_or_default();
        let why = if listen_ip.is_some_and(|ip| addrs.contains(&ip)) {
            Some(format!(
                "resolves to the listener's address {}",
                listen.ip()
            ))
        } else if h.eq_ignore_ascii_case(hostname) && !addrs.is_empty() {
            Some("is [inbound] hostname".to_string())
        } else if listen_ip.is_none() && ips.iter().any(|ip| addrs.contains(ip)) {
            Some("resolves to the sending IP, and the listener listens on all addresses".into())
        } else {
            None
        };
        match why {
            Some(w) => ours.push((*pref, h.clone(), w)),
            None if addrs.is_empty() => others.push(format!("{h} (no address)")),
            None => others.push(h.clone()),
        }
    }
    let lowest = sorted.first().map(|(p, _)| *p).unwrap_or(0);
    match ours.first() {
        None => Verdict::fail(
            "mx",
            bounce,
            format!(
                "the MX ({}) is not Herald's listener ({listen}, hostname {hostname})",
                others.join(", ")
            ),
        )
        .fix(format!("change MX at {bounce} to: 10 {hostname}{host_a}")),
        Some((pref, h, why)) if *pref > lowest => Verdict::warn(
            "mx",
            bounce,
            format!(
                "{h} {why}, but {} comes first (preference {lowest}): bounces go there",
                others.join(", ")
            ),
        )
        .fix(format!("change MX at {bounce} to: 10 {h}")),
        Some((_, h, why)) => Verdict::ok("mx", bounce, format!("MX {h} {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::dns::Table;
    use super::*;

    fn sender(bounce: Option<&str>) -> Bounces<'_> {
        Bounces {
            id: "shop",
            domain: "shop.test",
            return_path: "news@shop.test",
            bounce_domain: bounce,
        }
    }

    fn inbound(listen: &str) -> InboundConfig {
        InboundConfig {
            listen: listen.parse().ok(),
            ..InboundConfig::default()
        }
    }

    #[tokio::test]
    async fn bounce_domain_mx_reaches_the_listener() {
        let s = sender(Some("bounces.shop.test"));
        let ip = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 5));
        let t = Table::default();
        let v = check(&t, &s, &inbound("203.0.113.5:25"), "mx.shop.test", &[]).await;
        assert_eq!(v.status, Status::Fail);
        assert_eq!(
            v.fix.as_deref(),
            Some(
                "publish MX at bounces.shop.test: 10 mx.shop.test, and A at mx.shop.test: 203.0.113.5"
            )
        );

        let t = Table::default()
            .with_mx("bounces.shop.test", 10, "mx.shop.test")
            .with_addr("mx.shop.test", "203.0.113.5");
        let v = check(&t, &s, &inbound("203.0.113.5:25"), "other.test", &[]).await;
        assert_eq!(v.status, Status::Ok);
        assert!(v.detail.contains("listener's address"));
        let v = check(&t, &s, &inbound("0.0.0.0:25"), "mx.shop.test", &[]).await;
        assert!(v.detail.contains("is [inbound] hostname"), "{}", v.detail);
        let v = check(&t, &s, &inbound("0.0.0.0:25"), "elsewhere.test", &[ip]).await;
        assert!(v.detail.contains("sending IP"), "{}", v.detail);

        let t = Table::default()
            .with_mx("bounces.shop.test", 5, "mx.esp.test")
            .with_addr("mx.esp.test", "198.51.100.1")
            .with_mx("bounces.shop.test", 10, "mx.shop.test")
            .with_addr("mx.shop.test", "203.0.113.5");
        let v = check(&t, &s, &inbound("203.0.113.5:25"), "mx.shop.test", &[]).await;
        assert_eq!(v.status, Status::Warn);
        let v = check(&t, &s, &inbound("192.0.2.1:25"), "mx.other.test", &[]).await;
        assert_eq!(v.status, Status::Fail);
        assert!(
            v.fix
                .as_deref()
                .unwrap_or_default()
                .starts_with("change MX at bounces.shop.test to: 10 mx.other.test")
        );

        let v = check(&t, &s, &InboundConfig::default(), "x.test", &[]).await;
        assert_eq!(v.status, Status::Fail);
        assert!(v.detail.contains("[inbound] listen"));
        let v = check(&t, &sender(None), &inbound("0.0.0.0:25"), "x.test", &[]).await;
        assert_eq!(v.status, Status::Warn);
    }
}
