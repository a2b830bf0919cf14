//! Who a request comes from, as far as crier can tell without credentials.

use std::net::{IpAddr, SocketAddr};

use ::http::{HeaderMap, HeaderValue};

/// Whether a request comes from a local publisher: a loopback peer and, when a proxy forwarded
/// it, a loopback client of that proxy. The last `X-Forwarded-For` hop is the one the nearest
/// proxy appended (nginx's `$proxy_add_x_forwarded_for`); the hops before it are whatever the
/// client claimed, so only the last one counts. A proxy on the same host that sets no
/// `X-Forwarded-For` makes every client look local: the nginx/ configuration sets it.
pub(crate) fn is_local_publisher(peer: SocketAddr, headers: &HeaderMap) -> bool {
    let forwarded_from_loopback = |value: &HeaderValue| {
        value
            .to_str()
            .ok()
            .and_then(|hops| hops.rsplit(',').next())
            .and_then(|hop| hop.trim().parse::<IpAddr>().ok())
            .is_some_and(|ip| ip.to_canonical().is_loopback())
    };
    peer.ip().to_canonical().is_loopback()
        && headers.get_all("x-forwarded-for").iter().next_back().is_none_or(forwarded_from_loopback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_forwarded_hop_counts() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let forwarded = |hops: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-for", HeaderValue::from_static(hops));
            headers
        };
        assert!(is_local_publisher(local, &HeaderMap::new()));
        assert!(!is_local_publisher(remote, &HeaderMap::new()));
        assert!(is_local_publisher(local, &forwarded("192.0.2.1, 127.0.0.1")));
        assert!(!is_local_publisher(local, &forwarded("127.0.0.1, 192.0.2.1")));
        assert!(!is_local_publisher(local, &forwarded("not an address")));
        assert!(is_local_publisher("[::ffff:127.0.0.1]:1".parse().unwrap(), &HeaderMap::new()));
    }
}
