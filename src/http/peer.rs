//! Who a request comes from, its [`Peer`]: the address of the connection's other end, or the
//! one read from `X-Forwarded-For` when that end is a trusted proxy (`--trusted-proxies`), and
//! whether it is local.

use std::net::IpAddr;

use ::http::HeaderMap;
use ipnet::IpNet;

/// Named once: a header looked up by its text is parsed and checked on every request.
static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default)]
pub(crate) struct TrustedProxies(Vec<IpNet>);

/// Who a request comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Its address: the connection's other end's, or the one the trusted proxies forwarded
    /// for.
    pub(crate) ip: IpAddr,
    /// On this host and not behind a proxy of another host: what development mode (no key
    /// configured) lets publish.
    pub(crate) local: bool,
}

impl TrustedProxies {
    pub(crate) fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Who a request from `remote` comes from. Each proxy appends the address it got the
    /// request from, so the hops are read from the right: the peer is the rightmost hop that
    /// is not a trusted proxy (the hops left of it are whatever that peer claimed). A remote
    /// end that is not trusted is the peer, whatever it sends.
    pub(crate) fn peer(&self, remote: IpAddr, headers: &HeaderMap) -> Peer {
        let remote = remote.to_canonical();
        let mut peer = remote;
        // Whether the hops name the peer, rather than stopping at one that is no address.
        let mut known = true;
        if self.trusts(remote) {
            let hops = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .rev()
                .flat_map(|value| value.to_str().unwrap_or("").rsplit(',').map(str::trim));
            for hop in hops {
                match parse_hop(hop) {
                    Some(ip) => {
                        peer = ip;
                        if !self.trusts(ip) {
                            break;
                        }
                    }
                    // Garbage: the proxy that appended it is the last address known, and the
                    // peer is not known to be anyone in particular.
                    None => {
                        known = false;
                        break;
                    }
                }
            }
        }
        Peer { ip: peer, local: known && remote.is_loopback() && peer.is_loopback() }
    }
}

/// An address as proxies write it: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]:443` or
/// `192.0.2.1:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|addr| addr.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::HeaderValue;

    fn forwarded(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_static(value));
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let client =
            |peer: &str, hops: &[&'static str]| proxies.peer(ip(peer), &forwarded(hops)).ip;
        assert_eq!(client("10.0.0.1", &["203.0.113.9"]), ip("203.0.113.9"));
        assert_eq!(client("10.0.0.1", &["198.51.100.1, 203.0.113.9"]), ip("203.0.113.9"));
        assert_eq!(client("10.0.0.1", &["203.0.113.9, 10.0.0.2"]), ip("203.0.113.9"));
        assert_eq!(
            client("10.0.0.1", &["198.51.100.1", "203.0.113.9, 10.0.0.2"]),
            ip("203.0.113.9")
        );
        assert_eq!(client("10.0.0.1", &["10.0.0.3, 10.0.0.2"]), ip("10.0.0.3"), "all trusted");
        assert_eq!(client("10.0.0.1", &["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(client("10.0.0.1", &["198.51.100.1, garbage"]), ip("10.0.0.1"));
        assert_eq!(client("10.0.0.1", &[]), ip("10.0.0.1"));
        // An untrusted peer's claims are ignored.
        assert_eq!(client("192.0.2.7", &["127.0.0.1"]), ip("192.0.2.7"));
        assert_eq!(client("::ffff:192.0.2.7", &[]), ip("192.0.2.7"));
    }

    #[test]
    fn only_a_loopback_client_not_forwarded_from_afar_is_local() {
        let loopback =
            TrustedProxies::new(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        let local =
            |peer: &str, hops: &[&'static str]| loopback.peer(ip(peer), &forwarded(hops)).local;
        assert!(local("127.0.0.1", &[]));
        assert!(local("::1", &[]));
        assert!(local("127.0.0.1", &["127.0.0.1"]));
        assert!(!local("127.0.0.1", &["192.0.2.1"]), "a client of a proxy on this host");
        assert!(!local("127.0.0.1", &["127.0.0.1, 192.0.2.1"]));
        assert!(!local("127.0.0.1", &["192.0.2.1, 127.0.0.1"]), "through a proxy on this host");
        assert!(!local("127.0.0.1", &["unknown"]));
        assert!(!local("192.0.2.7", &[]));
        let nobody = TrustedProxies::default();
        assert!(nobody.peer(ip("127.0.0.1"), &forwarded(&["192.0.2.1"])).local, "not believed");
    }
}
