//! Reverse DNS of a sending IP: a PTR record, a name in it that resolves
//! back to the IP ("forward-confirmed", what receivers check), and that
//! name being the EHLO name Herald gives.

use std::net::IpAddr;

use super::dns::Dns;
use super::{Verdict, addr_type};

/// The reverse-DNS name of `ip` (`5.113.0.203.in-addr.arpa`).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut s = String::with_capacity(72);
            for b in a.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// The `ptr` verdict for `ip` sending with EHLO `helo`.
pub async fn check<D: Dns>(dns: &D, ip: IpAddr, helo: &str, sender: &str) -> Verdict {
    let name = ip.to_string();
    let helo = helo.trim_end_matches('.').to_ascii_lowercase();
    let rtype = addr_type(ip);
    let helo_resolves = dns.addrs(&helo).await.is_ok_and(|a| a.contains(&ip));
    let and_a = if helo_resolves {
        String::new()
    } else {
        format!(", and publish {rtype} at {helo}: {ip}")
    };
    let names = match dns.ptr(ip).await {
        Ok(n) => n,
        Err(e) => return Verdict::fail("ptr", &name, format!("cannot look up: {e}")),
    };
    if names.is_empty() {
        return Verdict::fail(
            "ptr",
            &name,
            format!("no PTR record (reverse DNS) for {ip}: many receivers refuse such mail"),
        )
        .fix(format!(
            "set the PTR of {ip} ({}) to {helo} (at the provider of the address){and_a}",
            reverse_name(ip)
        ));
    }
    let mut confirmed = Vec::new();
    let mut unconfirmed = Vec::new();
    for n in &names {
        match dns.addrs(n).await {
            Ok(a) if a.contains(&ip) => confirmed.push(n.clone()),
            Ok(a) if a.is_empty() => unconfirmed.push(format!("{n} has no address")),
            Ok(a) => {
                let a: Vec<String> = a.iter().map(IpAddr::to_string).collect();
                unconfirmed.push(format!("{n} resolves to {}", a.join(", ")));
            }
            Err(e) => unconfirmed.push(format!("{n}: {e}")),
        }
    }
    let Some(first) = confirmed.first() else {
        let n = names.first().map_or("", |s| s.as_str());
        return Verdict::fail(
            "ptr",
            &name,
            format!(
                "the PTR of {ip} is {}, but it is not forward-confirmed: {}",
                names.join(", "),
                unconfirmed.join("; ")
            ),
        )
        .fix(format!("publish {rtype} at {n}: {ip}"));
    };
    if confirmed.contains(&helo) {
        return Verdict::ok(
            "ptr",
            &name,
            format!("{ip} -> {helo} -> {ip}, the EHLO name"),
        );
    }
    Verdict::warn(
        "ptr",
        &name,
        format!("{ip} -> {first} -> {ip}, but the EHLO name is {helo}"),
    )
    .fix(format!(
        "set helo = \"{first}\" in [[sender]] id = \"{sender}\", or set the PTR of {ip} to {helo}{and_a}"
    ))
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::super::dns::Table;
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name(IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 5))),
            "5.113.0.203.in-addr.arpa"
        );
        assert_eq!(
            reverse_name(IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 0, 0, 0, 0, 0, 1
            ))),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[tokio::test]
    async fn missing_unconfirmed_mismatched_and_good() {
        let ip = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 5));
        let t = Table::default();
        let v = check(&t, ip, "mail.shop.test", "shop").await;
        assert_eq!(v.status, Status::Fail);
        assert_eq!(
            v.fix.as_deref(),
            Some(
                "set the PTR of 203.0.113.5 (5.113.0.203.in-addr.arpa) to mail.shop.test (at the provider of the address), and publish A at mail.shop.test: 203.0.113.5"
            )
        );

        let t = Table::default()
            .with_ptr("203.0.113.5", "ghost.shop.test")
            .with_addr("ghost.shop.test", "203.0.113.99");
        let v = check(&t, ip, "mail.shop.test", "shop").await;
        assert_eq!(v.status, Status::Fail);
        assert!(
            v.detail
                .contains("ghost.shop.test resolves to 203.0.113.99")
        );
        assert_eq!(
            v.fix.as_deref(),
            Some("publish A at ghost.shop.test: 203.0.113.5")
        );

        let t = Table::default()
            .with_ptr("203.0.113.5", "host5.isp.test")
            .with_addr("host5.isp.test", "203.0.113.5");
        let v = check(&t, ip, "mail.shop.test", "shop").await;
        assert_eq!(v.status, Status::Warn);
        assert!(v.fix.as_deref().unwrap_or_default().starts_with(
            "set helo = \"host5.isp.test\" in [[sender]] id = \"shop\", or set the PTR of 203.0.113.5 to mail.shop.test"
        ));

        let t = Table::default()
            .with_ptr("203.0.113.5", "mail.shop.test")
            .with_addr("mail.shop.test", "203.0.113.5");
        let v = check(&t, ip, "Mail.Shop.Test", "shop").await;
        assert_eq!(v.status, Status::Ok, "{}", v.detail);
    }
}
