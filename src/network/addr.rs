//! Multiaddr helpers: which addresses to dial, which are local, which are
//! on this host's networks. One copy of each, used by every component.

use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::config::DEFAULT_HTTP_PORT;

/// Whether `addr` is on one of `nets` (a neighbour on our LAN). Loopback
/// does not count: cells on one machine are not found by mDNS either.
/// Nor does IPv6 link-local: every interface has fe80::/64.
pub(crate) fn near(nets: &[if_watch::IpNet], addr: &Multiaddr) -> bool {
    let link_local = |ip: &IpAddr| match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    };
    ip_of(addr).is_some_and(|ip| {
        !ip.is_loopback()
            && !link_local(&ip)
            && nets.iter().any(|n| n.contains(&ip) && !n.addr().is_loopback())
    })
}

/// Which of a peer's addresses to dial. A remote cell's loopback address
/// (which identify and records report) would reach ourselves, so it is
/// dropped when the peer has any other. TCP is preferred: a crashed peer's
/// TCP connection closes at once, while QUIC waits for its idle timeout.
pub(crate) fn dial_addrs(addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let addrs: Vec<Multiaddr> = if addrs.iter().all(is_loopback) {
        addrs
    } else {
        addrs.into_iter().filter(|a| !is_loopback(a)).collect()
    };
    if addrs.iter().any(is_tcp) {
        addrs.into_iter().filter(is_tcp).collect()
    } else {
        addrs
    }
}

pub(crate) fn is_quic(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
}

/// A plain TCP address (also a relayed one, whose first hop is TCP).
pub(crate) fn is_tcp(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, Protocol::Tcp(_)))
        && !a.iter().any(|p| matches!(p, Protocol::Ws(_) | Protocol::Wss(_)))
}

pub(crate) fn is_relayed(a: &Multiaddr) -> bool {
    a.iter().any(|p| p == Protocol::P2pCircuit)
}

/// Which transports listen, from the listen addresses: `tcp`, `quic` (in
/// that order), relayed addresses left out (they ride on a relay's link).
pub(crate) fn transports(listen: &[Multiaddr]) -> Vec<&'static str> {
    let direct = || listen.iter().filter(|a| !is_relayed(a));
    let mut out = Vec::new();
    if direct().any(is_tcp) {
        out.push("tcp");
    }
    if direct().any(is_quic) {
        out.push("quic");
    }
    out
}

pub(crate) fn is_loopback(a: &Multiaddr) -> bool {
    ip_of(a).is_some_and(|ip| ip.is_loopback())
}

pub(crate) fn is_unspecified(a: &Multiaddr) -> bool {
    ip_of(a).is_some_and(|ip| ip.is_unspecified())
}

pub(crate) fn ip_of(a: &Multiaddr) -> Option<IpAddr> {
    a.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// The address without its trailing `/p2p/<id>` (the peer's own). A
/// circuit address keeps its relay's id (`…/p2p/<relay>/p2p-circuit`):
/// without it the address is the relay's, and a dial reaches the relay.
pub(crate) fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    while matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}

/// Turns an IP and TCP port into a multiaddr.
pub(crate) fn tcp_multiaddr(ip: IpAddr, port: u16) -> Multiaddr {
    Multiaddr::empty().with(ip_protocol(ip)).with(Protocol::Tcp(port))
}

/// The multiaddr component for an IP.
pub(crate) fn ip_protocol(ip: IpAddr) -> Protocol<'static> {
    match ip {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    }
}

/// Adds a hint when the target is the HTTP API's port, the usual mistake
/// with the seed's compose file (`AIOS_NETWORK_PEERS=host:8000`).
pub(crate) fn with_hint(msg: String, target: &str) -> String {
    let http = format!("/tcp/{DEFAULT_HTTP_PORT}");
    let http_colon = format!(":{DEFAULT_HTTP_PORT}");
    if target.ends_with(&http)
        || target.contains(&format!("{http}/"))
        || target.ends_with(&http_colon)
    {
        format!(
            "{msg} (port {DEFAULT_HTTP_PORT} is the cell's HTTP API; cells talk libp2p on port 8001: use host:8001 or leave the port out)"
        )
    } else {
        msg
    }
}

#[cfg(test)]
pub(crate) fn addrs(list: &[&str]) -> Vec<Multiaddr> {
    list.iter().map(|a| a.parse().expect("a test multiaddr")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_come_from_direct_listen_addresses() {
        let both = addrs(&["/ip4/127.0.0.1/udp/8001/quic-v1", "/ip4/127.0.0.1/tcp/8001"]);
        assert_eq!(transports(&both), ["tcp", "quic"]);
        let tcp = addrs(&["/ip4/10.0.0.2/tcp/8001", "/ip4/127.0.0.1/tcp/8001"]);
        assert_eq!(transports(&tcp), ["tcp"]);
        // A relayed address is not a QUIC or TCP listener of ours.
        let relayed = addrs(&[
            "/ip4/10.0.0.2/tcp/8001",
            "/ip4/10.0.0.9/udp/8001/quic-v1/p2p/12D3KooWPTxbx3mYppet2XA9Fs2zUCW8hqCovwKsgTFAco2GVG7G/p2p-circuit",
        ]);
        assert_eq!(transports(&relayed), ["tcp"]);
        assert!(transports(&[]).is_empty());
    }

    #[test]
    fn dial_prefers_real_tcp_addresses() {
        let got = dial_addrs(addrs(&[
            "/ip4/127.0.0.1/tcp/8001",
            "/ip4/10.0.0.2/udp/8001/quic-v1",
            "/ip4/10.0.0.2/tcp/8001",
        ]));
        assert_eq!(got, addrs(&["/ip4/10.0.0.2/tcp/8001"]));
        // Only loopback known (cells on one machine): keep it.
        let lo = addrs(&["/ip4/127.0.0.1/tcp/8001"]);
        assert_eq!(dial_addrs(lo.clone()), lo);
        // Only QUIC known: dial QUIC.
        let q = addrs(&["/ip4/10.0.0.2/udp/8001/quic-v1"]);
        assert_eq!(dial_addrs(q.clone()), q);
    }

    #[test]
    fn hint_names_the_http_port_mistake() {
        assert!(with_hint("x".into(), "/ip4/10.0.0.2/tcp/8000").contains("HTTP API"));
        assert!(with_hint("x".into(), "aios-laptop.local:8000").contains("8001"));
        assert_eq!(with_hint("x".into(), "/ip4/10.0.0.2/tcp/8001"), "x");
    }

    #[test]
    fn neighbours_are_on_our_networks_but_not_loopback_or_link_local() {
        let nets: Vec<if_watch::IpNet> = vec![
            "10.0.0.1/24".parse().expect("net"),
            "127.0.0.1/8".parse().expect("net"),
            "fe80::1/64".parse().expect("net"),
        ];
        let a = |s: &str| s.parse::<Multiaddr>().expect("addr");
        assert!(near(&nets, &a("/ip4/10.0.0.7/tcp/8001")));
        assert!(!near(&nets, &a("/ip4/10.0.1.7/tcp/8001")));
        assert!(!near(&nets, &a("/ip4/127.0.0.1/tcp/8001")));
        assert!(!near(&nets, &a("/ip6/fe80::2/tcp/8001")));
    }

    #[test]
    fn p2p_parts_are_stripped_and_found() {
        let peer = PeerId::random();
        let m: Multiaddr = format!("/ip4/10.0.0.2/tcp/8001/p2p/{peer}").parse().expect("addr");
        assert_eq!(peer_of(&m), Some(peer));
        assert_eq!(strip_p2p(&m), addrs(&["/ip4/10.0.0.2/tcp/8001"])[0]);
        let relay = "12D3KooWPTxbx3mYppet2XA9Fs2zUCW8hqCovwKsgTFAco2GVG7G";
        let target = "12D3KooWJNProFJY5g7S1AmLhb5bKAZiWvUieEgJzTVqADoWNWB7";
        let circuit: Multiaddr =
            format!("/ip4/10.0.0.9/tcp/8001/p2p/{relay}/p2p-circuit/p2p/{target}").parse().unwrap();
        assert_eq!(
            strip_p2p(&circuit).to_string(),
            format!("/ip4/10.0.0.9/tcp/8001/p2p/{relay}/p2p-circuit")
        );
        assert!(is_tcp(&m) && !is_quic(&m) && !is_loopback(&m) && !is_relayed(&m));
    }
}
