//! Who the client is, by address. Behind a proxy every request comes from
//! the proxy, so budgets, cool-downs and guard scores keyed on the peer
//! would lump every client together. `server.trusted_proxies` names the
//! proxies whose forwarding header is believed, and
//! `server.forwarded_header` which one they set (`X-Forwarded-For`, as
//! nginx does, or RFC 7239 `Forwarded`). Only that one is read, so a
//! client cannot slip in the other, which a proxy passes through
//! untouched. From a trusted peer the client is the right-most address in
//! it that is not itself a trusted proxy; from any other peer the header
//! is ignored, so a client cannot name itself someone else.

use std::net::IpAddr;
use std::str::FromStr;

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

use crate::settings::ForwardedHeader;

/// The proxies trusted to name the client, and the header they set.
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
    header: ForwardedHeader,
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self { networks: Vec::new(), header: ForwardedHeader::XForwardedFor }
    }
}

/// A trusted proxy entry that is neither an address nor a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an address or CIDR (such as 10.0.0.0/8)")]
pub struct NotANetwork(pub String);

impl TrustedProxies {
    /// Parses CIDRs (or plain addresses); the error names the bad entry.
    pub fn parse(entries: &[String], header: ForwardedHeader) -> Result<Self, NotANetwork> {
        let networks = entries
            .iter()
            .map(|entry| {
                IpNet::from_str(entry)
                    .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                    .map_err(|_| NotANetwork(entry.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { networks, header })
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.networks.iter().any(|network| network.contains(&address))
    }

    /// The client of a request from `peer` with these headers.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.networks.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let hops = forwarded_hops(headers, self.header);
        // Right to left: the nearest hops were added by our own proxies.
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(address) => {
                    client = canonical(*address);
                    if !self.trusts(client) {
                        return client;
                    }
                }
                // A hop we cannot read (obfuscated, unknown): whatever is
                // left of it is the client's word, not a proxy's.
                None => return client,
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so one client has one address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The hops of the header, left to right; `None` for one that is not an
/// address.
fn forwarded_hops(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    if header == ForwardedHeader::Forwarded {
        return headers
            .get_all("forwarded")
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, value)| node_address(value.trim()))
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|hop| node_address(hop.trim()))
        .collect()
}

/// An address out of a hop: `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:80"`,
/// `2001:db8::1`.
fn node_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches('"');
    if let Ok(address) = IpAddr::from_str(hop) {
        return Some(address);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']').and_then(|(address, _)| IpAddr::from_str(address).ok());
    }
    hop.rsplit_once(':').and_then(|(address, _)| IpAddr::from_str(address).ok())
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        map
    }

    fn address(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let none = TrustedProxies::default();
        let spoofed = headers(&[("x-forwarded-for", "9.9.9.9")]);
        assert_eq!(none.client(address("1.1.1.1"), &spoofed), address("1.1.1.1"));
        let proxies =
            TrustedProxies::parse(&["10.0.0.0/8".to_owned()], ForwardedHeader::XForwardedFor).unwrap();
        assert_eq!(proxies.client(address("1.1.1.1"), &spoofed), address("1.1.1.1"));
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let trusted = ["10.0.0.0/8".to_owned(), "127.0.0.1".to_owned()];
        let proxies = TrustedProxies::parse(&trusted, ForwardedHeader::XForwardedFor).unwrap();
        let peer = address("127.0.0.1");
        // The client put 6.6.6.6 in front; our proxies appended the rest.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 2.2.2.2, 10.1.1.1")]);
        assert_eq!(proxies.client(peer, &chain), address("2.2.2.2"));
        let split = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "3.3.3.3")]);
        assert_eq!(proxies.client(peer, &split), address("3.3.3.3"));
        // The header the proxies do not set is the client's word: ignored.
        let forwarded = headers(&[("forwarded", "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https")]);
        assert_eq!(proxies.client(peer, &forwarded), peer);
        let rfc = TrustedProxies::parse(&trusted, ForwardedHeader::Forwarded).unwrap();
        assert_eq!(rfc.client(peer, &forwarded), address("2001:db8::7"));
        assert_eq!(rfc.client(peer, &chain), peer);
        let unreadable = headers(&[("x-forwarded-for", "6.6.6.6, unknown, 10.2.2.2")]);
        assert_eq!(proxies.client(peer, &unreadable), address("10.2.2.2"));
        let all_trusted = headers(&[("x-forwarded-for", "10.3.3.3")]);
        assert_eq!(proxies.client(peer, &all_trusted), address("10.3.3.3"));
        assert_eq!(proxies.client(peer, &HeaderMap::new()), peer);
        let mapped = address("::ffff:127.0.0.1");
        assert_eq!(proxies.client(mapped, &chain), address("2.2.2.2"));
    }

    #[test]
    fn bad_entries_are_named() {
        let header = ForwardedHeader::XForwardedFor;
        assert_eq!(
            TrustedProxies::parse(&["10.0.0.0/33".to_owned()], header).unwrap_err(),
            NotANetwork("10.0.0.0/33".to_owned())
        );
        assert!(TrustedProxies::parse(&["::1".to_owned(), "fd00::/8".to_owned()], header).is_ok());
    }
}
