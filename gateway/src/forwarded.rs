//! `X-Forwarded-For` and `X-Forwarded-Proto` towards the upstream, and the
//! real client's address for the access log.
//!
//! A client's own `X-Forwarded-For` is believed only when it connects from
//! one of `[server] trusted_proxies`: then the header is extended with the
//! peer's address, and the client is the first address, from the right,
//! that is not a trusted proxy. From anyone else the header is replaced by
//! the peer's address, so a client cannot make the upstream (or the log)
//! believe it is someone else.

use std::net::IpAddr;

use ipnet::IpNet;

/// What goes upstream for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The `X-Forwarded-For` value.
    pub for_header: String,
    /// The client, as far as the trusted proxies tell.
    pub client: IpAddr,
    /// The `X-Forwarded-Proto` value.
    pub proto: &'static str,
}

/// `ip` as text; an IPv4 address without the formatting machinery (every
/// request's `X-Forwarded-For` holds the peer's address: `to_string` cost
/// about 1,000 instructions a request).
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// Whether `ip` is one of `proxies` (whose forwarding headers are believed).
pub fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// The forwarding headers for a request from `peer` that carried `xff` and
/// `xfp`, over TLS or not.
pub fn forwarded(
    peer: IpAddr,
    xff: Option<&[u8]>,
    xfp: Option<&[u8]>,
    tls: bool,
    proxies: &[IpNet],
) -> Forwarded {
    let own_proto = if tls { "https" } else { "http" };
    if !trusted(peer, proxies) {
        return Forwarded {
            for_header: ip_text(peer),
            client: peer,
            proto: own_proto,
        };
    }
    let listed = xff
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let for_header = match listed {
        Some(v) => format!("{v}, {peer}"),
        None => ip_text(peer),
    };
    // From the right: the peer, then each hop the trusted proxies added.
    let mut client = peer;
    if let Some(v) = listed {
        for hop in v.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(ip, proxies) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
    let proto = match xfp.map(<[u8]>::trim_ascii) {
        Some(v) if v.eq_ignore_ascii_case(b"https") => "https",
        Some(v) if v.eq_ignore_ascii_case(b"http") => "http",
        _ => own_proto,
    };
    Forwarded {
        for_header,
        client,
        proto,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ip_text_writes_what_display_writes() {
        let mut rng = fastrand::Rng::with_seed(3);
        let fixed = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "1.20.3.199",
            "::1",
            "fe80::1:2",
        ];
        let random = (0..10_000).map(|_| IpAddr::from(rng.u32(..).to_be_bytes()));
        for addr in fixed.iter().map(|a| ip(a)).chain(random) {
            assert_eq!(ip_text(addr), addr.to_string());
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_cannot_claim_another_address() {
        let f = forwarded(
            ip("203.0.113.9"),
            Some(b"1.2.3.4"),
            Some(b"https"),
            false,
            &[],
        );
        assert_eq!(f.for_header, "203.0.113.9");
        assert_eq!(f.client, ip("203.0.113.9"));
        assert_eq!(f.proto, "http");
        let f = forwarded(ip("::1"), None, None, true, &[]);
        assert_eq!((f.for_header.as_str(), f.proto), ("::1", "https"));
    }

    #[test]
    fn a_trusted_proxy_chain_is_extended_and_read_from_the_right() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let f = forwarded(
            ip("10.0.0.2"),
            Some(b"198.51.100.7, 10.1.1.1"),
            Some(b"HTTPS"),
            false,
            &proxies,
        );
        assert_eq!(f.for_header, "198.51.100.7, 10.1.1.1, 10.0.0.2");
        assert_eq!(f.client, ip("198.51.100.7"));
        assert_eq!(f.proto, "https");
        // A spoofed entry left of a real client is ignored for the client.
        let f = forwarded(
            ip("10.0.0.2"),
            Some(b"6.6.6.6, 198.51.100.7"),
            None,
            false,
            &proxies,
        );
        assert_eq!(f.client, ip("198.51.100.7"));
        assert_eq!(f.proto, "http");
        // Garbage stops the walk at the last good address.
        let f = forwarded(
            ip("10.0.0.2"),
            Some(b"junk"),
            Some(b"gopher"),
            false,
            &proxies,
        );
        assert_eq!(f.client, ip("10.0.0.2"));
        assert_eq!(f.proto, "http");
        assert_eq!(f.for_header, "junk, 10.0.0.2");
    }
}
