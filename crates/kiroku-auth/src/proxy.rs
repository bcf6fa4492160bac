//! Who the client is when a gateway forwards its call: the connection's address, unless
//! the connection comes from a trusted proxy (a Kiroku gateway), whose `x-forwarded-for`
//! then names the client. Sign-in throttles per address and audit entries use it.

use std::net::IpAddr;

use tonic::Request;

/// The header a gateway sets (overwriting whatever the client sent).
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// Addresses and networks whose `x-forwarded-for` is believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub const ENV: &'static str = "KIROKU_TRUSTED_PROXIES";
    /// Loopback only: gateways on the same host (`kiroku up`).
    pub const DEFAULT: &'static str = "127.0.0.0/8,::1/128";

    /// A comma-separated list of addresses and CIDR networks ("10.0.0.0/8, ::1"); an
    /// empty list trusts nobody.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (address, bits) = match item.split_once('/') {
                Some((address, bits)) => (address, Some(bits)),
                None => (item, None),
            };
            let address: IpAddr = address
                .parse()
                .map_err(|_| format!("trusted proxy {item:?} is not an address or network"))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(bits) => bits
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("trusted proxy {item:?}: prefix must be 0..={max}"))?,
                None => max,
            };
            nets.push((address, bits));
        }
        Ok(Self(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|(net, bits)| match (net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
                u32::from(*net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*bits)).unwrap_or(0);
                u128::from(*net) & mask == u128::from(ip) & mask
            }
            _ => false,
        })
    }

    /// The client's address: the peer, unless the peer is trusted; then the
    /// `x-forwarded-for` entries are read from the right (each proxy appends the address
    /// it saw) and the first one that is not itself a trusted proxy is the client. An
    /// entry that is not an address stops the walk at the last address believed, so a
    /// client cannot choose its address by sending the header itself.
    pub fn client_address(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let mut client = peer;
        if !self.contains(peer) {
            return client;
        }
        for entry in forwarded_for.unwrap_or_default().rsplit(',') {
            let Ok(address) = entry.trim().parse::<IpAddr>() else {
                break;
            };
            client = address;
            if !self.contains(address) {
                break;
            }
        }
        client
    }

    /// [`TrustedProxies::client_address`] of a gRPC request.
    pub fn client_ip<T>(&self, request: &Request<T>) -> Option<IpAddr> {
        let peer = request.remote_addr().map(|addr| addr.ip())?;
        let forwarded = request
            .metadata()
            .get(FORWARDED_FOR)
            .and_then(|value| value.to_str().ok());
        Some(self.client_address(peer, forwarded))
    }
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self::parse(Self::DEFAULT).unwrap_or(Self(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_first_untrusted_address_from_the_right() {
        let ingress = TrustedProxies::parse("10.0.0.0/8").expect("list");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // Straight from the internet: the header is the client's own claim, ignored.
        assert_eq!(
            ingress.client_address(ip("203.0.113.9"), Some("198.51.100.1")),
            ip("203.0.113.9")
        );
        // Through the ingress: the address it appended.
        assert_eq!(
            ingress.client_address(ip("10.0.0.5"), Some("203.0.113.9")),
            ip("203.0.113.9")
        );
        // A forged entry before the real one is not believed.
        assert_eq!(
            ingress.client_address(ip("10.0.0.5"), Some("198.51.100.1, 203.0.113.9")),
            ip("203.0.113.9")
        );
        // Two proxies deep.
        assert_eq!(
            ingress.client_address(ip("10.0.0.5"), Some("203.0.113.9, 10.0.0.7")),
            ip("203.0.113.9")
        );
        // No header, or garbage: the last address believed.
        assert_eq!(ingress.client_address(ip("10.0.0.5"), None), ip("10.0.0.5"));
        assert_eq!(
            ingress.client_address(ip("10.0.0.5"), Some("203.0.113.9, junk")),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn networks_match_by_prefix() {
        let trusted = TrustedProxies::parse("10.1.0.0/16, 192.0.2.7, fd00::/8").expect("list");
        for yes in ["10.1.200.3", "192.0.2.7", "fd12::1"] {
            assert!(trusted.contains(yes.parse().expect("ip")), "{yes}");
        }
        for no in ["10.2.0.1", "192.0.2.8", "fe80::1", "127.0.0.1"] {
            assert!(!trusted.contains(no.parse().expect("ip")), "{no}");
        }
        assert!(TrustedProxies::parse("").expect("empty").0.is_empty());
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("gateway").is_err());
        assert!(TrustedProxies::default().contains("127.0.0.1".parse().expect("ip")));
        assert!(
            TrustedProxies::parse("0.0.0.0/0")
                .expect("all")
                .contains("8.8.8.8".parse().expect("ip"))
        );
    }
}
