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

    /// The client's address: the last `x-forwarded-for` entry when the peer is trusted,
    /// else the peer.
    pub fn client_ip<T>(&self, request: &Request<T>) -> Option<IpAddr> {
        let peer = request.remote_addr().map(|addr| addr.ip())?;
        if !self.contains(peer) {
            return Some(peer);
        }
        let forwarded = request
            .metadata()
            .get(FORWARDED_FOR)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|last| last.trim().parse().ok());
        Some(forwarded.unwrap_or(peer))
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
