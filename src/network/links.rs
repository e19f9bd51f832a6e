//! Every connection this cell holds, and the one answer to "connected?".
//! Decides which links to drop (twins from a simultaneous dial, a circuit
//! once a direct link exists, QUIC once TCP exists) and which QUIC-only
//! cells to offer a TCP link. Clock-free: `now` comes in, decisions go out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

use super::addr::{dial_addrs, ip_of, is_loopback, is_quic, is_relayed, is_tcp, strip_p2p};

/// Twin connections from a simultaneous dial are pruned only once both are
/// this old, so that each side has seen both come up; closing one earlier
/// can leave the other side with no connection for a moment (a false
/// "failed").
pub(crate) const PRUNE_AFTER: Duration = Duration::from_secs(2);
/// How often a cell linked only over QUIC is offered a TCP link.
pub(crate) const TCP_UPGRADE_RETRY: Duration = Duration::from_secs(10);

/// One connection to a peer.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) id: ConnectionId,
    /// We dialed it.
    pub(crate) dialer: bool,
    /// It runs through a circuit relay.
    pub(crate) relayed: bool,
    /// It runs over QUIC (a crashed peer is noticed only after the idle
    /// timeout, where TCP notices at once).
    pub(crate) quic: bool,
    /// The remote address (for a dialer: the one we dialed).
    pub(crate) addr: Multiaddr,
    /// When it came up.
    pub(crate) since: Instant,
}

#[derive(Debug)]
pub(crate) struct Links {
    local: PeerId,
    conns: HashMap<PeerId, Vec<Link>>,
    /// When we last dialed TCP to a cell linked only over QUIC.
    tcp_tried: HashMap<PeerId, Instant>,
}

impl Links {
    pub(crate) fn new(local: PeerId) -> Self {
        Self { local, conns: HashMap::new(), tcp_tried: HashMap::new() }
    }

    /// A connection came up. Returns whether it is the first to `peer`.
    pub(crate) fn established(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        dialer: bool,
        relayed: bool,
        addr: &Multiaddr,
        now: Instant,
    ) -> bool {
        let list = self.conns.entry(peer).or_default();
        let first = list.is_empty();
        list.push(Link {
            id,
            dialer,
            relayed,
            quic: is_quic(addr),
            addr: addr.clone(),
            since: now,
        });
        first
    }

    /// A connection closed. Returns whether it was the last to `peer`.
    pub(crate) fn closed(&mut self, peer: PeerId, id: ConnectionId) -> bool {
        if let Some(list) = self.conns.get_mut(&peer) {
            list.retain(|c| c.id != id);
            if !list.is_empty() {
                return false;
            }
        }
        self.conns.remove(&peer);
        self.tcp_tried.remove(&peer);
        true
    }

    pub(crate) fn is_connected(&self, peer: &PeerId) -> bool {
        self.conns.contains_key(peer)
    }

    /// Every connected peer.
    pub(crate) fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.conns.keys().copied()
    }

    /// How many peers we are connected to.
    pub(crate) fn count(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub(crate) fn of(&self, peer: &PeerId) -> &[Link] {
        self.conns.get(peer).map(Vec::as_slice).unwrap_or_default()
    }

    /// Connected only through circuits.
    pub(crate) fn relayed_only(&self, peer: &PeerId) -> bool {
        let l = self.of(peer);
        !l.is_empty() && l.iter().all(|c| c.relayed)
    }

    /// The IP of a direct link to `peer` (where its UDP beats go).
    pub(crate) fn direct_ip(&self, peer: &PeerId) -> Option<IpAddr> {
        self.of(peer).iter().filter(|c| !c.relayed).find_map(|c| ip_of(&c.addr))
    }

    /// We reach `peer` over loopback (cells on one machine).
    pub(crate) fn over_loopback(&self, peer: &PeerId) -> bool {
        self.of(peer).iter().any(|c| is_loopback(&c.addr))
    }

    /// The address of a direct link we dialed to `peer`, not loopback (a
    /// relay candidate others can reach too).
    pub(crate) fn dialed_addr(&self, peer: &PeerId) -> Option<Multiaddr> {
        self.of(peer)
            .iter()
            .find(|c| c.dialer && !c.relayed && !is_loopback(&c.addr))
            .map(|c| strip_p2p(&c.addr))
    }

    /// Links to close. A relayed link is only a stand-in: once a direct one
    /// exists (hole punching, or a dial from the other side), both cells
    /// close the circuit. Likewise QUIC once there is TCP: a crash closes
    /// TCP at once. Both sides see the same links, so they agree; the
    /// better link must be settled ([`PRUNE_AFTER`], seen by both). Twins
    /// of the same kind (a simultaneous dial): the cell with the smaller
    /// peer id keeps one (the one it dialed, else the oldest) and closes
    /// the rest, once all are settled; the other side closes none, so
    /// exactly one survives.
    pub(crate) fn to_prune(&self, now: Instant) -> Vec<ConnectionId> {
        let settled = |c: &Link| now.duration_since(c.since) >= PRUNE_AFTER;
        let mut close = Vec::new();
        for (peer, conns) in &self.conns {
            if conns.len() < 2 {
                continue;
            }
            let tcp: Vec<&Link> = conns.iter().filter(|c| !c.relayed && !c.quic).collect();
            let direct: Vec<&Link> = if tcp.is_empty() {
                conns.iter().filter(|c| !c.relayed).collect()
            } else {
                if tcp.iter().any(|c| settled(c)) {
                    close.extend(conns.iter().filter(|c| c.quic).map(|c| c.id));
                }
                tcp
            };
            if direct.iter().any(|c| settled(c)) {
                close.extend(conns.iter().filter(|c| c.relayed).map(|c| c.id));
            }
            if self.local > *peer || !conns.iter().all(settled) {
                continue;
            }
            let mut pool: Vec<&Link> =
                if direct.is_empty() { conns.iter().collect() } else { direct };
            if pool.len() < 2 {
                continue;
            }
            pool.sort_by_key(|c| c.since);
            let keep = pool.iter().find(|c| c.dialer).unwrap_or(&pool[0]).id;
            close.extend(pool.iter().filter(|c| c.id != keep).map(|c| c.id));
        }
        close
    }

    /// Cells linked to us only over QUIC (a dial that took the QUIC
    /// address, or one from the other side) get a TCP dial too, when they
    /// have a TCP address (`addrs_of`); the QUIC link is then pruned. The
    /// smaller peer id dials, at most every [`TCP_UPGRADE_RETRY`].
    pub(crate) fn tcp_upgrades(
        &mut self,
        now: Instant,
        addrs_of: impl Fn(&PeerId) -> Vec<Multiaddr>,
    ) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let quic_only: Vec<PeerId> = self
            .conns
            .iter()
            .filter(|(p, c)| self.local < **p && c.iter().all(|c| c.quic && !c.relayed))
            .map(|(p, _)| *p)
            .collect();
        let mut out = Vec::new();
        for peer in quic_only {
            if self.tcp_tried.get(&peer).is_some_and(|t| now.duration_since(*t) < TCP_UPGRADE_RETRY)
            {
                continue;
            }
            let tcp: Vec<Multiaddr> = dial_addrs(addrs_of(&peer))
                .into_iter()
                .filter(|a| is_tcp(a) && !is_relayed(a))
                .collect();
            if tcp.is_empty() {
                continue;
            }
            self.tcp_tried.insert(peer, now);
            out.push((peer, tcp));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::testing::ordered_pair;
    use std::collections::HashSet;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn cid(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    const TCP: &str = "/ip4/10.0.0.2/tcp/8001";
    const QUIC: &str = "/ip4/10.0.0.2/udp/8001/quic-v1";

    fn relay(peer: PeerId) -> String {
        format!("/ip4/10.9.0.1/tcp/8001/p2p/{}/p2p-circuit", PeerId::random())
            + &format!("/p2p/{peer}")
    }

    /// One physical connection, seen from both ends: `a_dialed` says who
    /// dialed, `age` how long ago it came up.
    struct Wire {
        a_dialed: bool,
        addr: String,
        age: Duration,
    }

    /// Both ends of the same set of connections between `a` < `b`; each
    /// side's own connection ids (they differ, as in libp2p), and which
    /// connections survive both sides' pruning.
    fn survivors(wires: &[Wire], now: Instant) -> HashSet<usize> {
        let (a, b) = ordered_pair();
        let mut la = Links::new(a);
        let mut lb = Links::new(b);
        for (i, w) in wires.iter().enumerate() {
            let addr: Multiaddr = w.addr.parse().expect("addr");
            la.established(b, cid(i), w.a_dialed, is_relayed(&addr), &addr, now - w.age);
            // The other side numbers its connections its own way.
            lb.established(a, cid(1000 + i), !w.a_dialed, is_relayed(&addr), &addr, now - w.age);
        }
        let mut closed: HashSet<usize> = la.to_prune(now).into_iter().map(index_a).collect();
        closed.extend(lb.to_prune(now).into_iter().map(|c| index_a(c) - 1000));
        (0..wires.len()).filter(|i| !closed.contains(i)).collect()
    }

    fn index_a(c: ConnectionId) -> usize {
        // ConnectionId prints as its number.
        format!("{c}").parse().expect("a connection id is a number")
    }

    #[test]
    fn both_ends_of_a_duplicate_pair_keep_the_same_connection() {
        let now = Instant::now();
        let w = |a_dialed, addr: &str, age| Wire { a_dialed, addr: addr.into(), age };
        // (wires, survivors): exactly one connection is left, whoever dialed.
        let table: Vec<(Vec<Wire>, Vec<usize>)> = vec![
            // A simultaneous dial: the smaller peer keeps the one it dialed.
            (vec![w(true, TCP, S(3)), w(false, TCP, S(3))], vec![0]),
            (vec![w(false, TCP, S(5)), w(true, TCP, S(3))], vec![1]),
            // Two inbound to the smaller peer: the oldest stays.
            (vec![w(false, TCP, S(3)), w(false, TCP, S(9))], vec![1]),
            // QUIC and TCP: TCP stays.
            (vec![w(true, QUIC, S(3)), w(false, TCP, S(3))], vec![1]),
            // Not settled yet: nothing is closed.
            (vec![w(true, TCP, S(1)), w(false, TCP, S(3))], vec![0, 1]),
        ];
        for (i, (wires, want)) in table.into_iter().enumerate() {
            let got = survivors(&wires, now);
            assert_eq!(got, want.into_iter().collect(), "row {i}");
        }
    }

    #[test]
    fn a_circuit_goes_once_a_direct_link_is_settled() {
        let now = Instant::now();
        let (a, b) = ordered_pair();
        let mut l = Links::new(b);
        let circuit: Multiaddr = relay(a).parse().expect("addr");
        let direct: Multiaddr = TCP.parse().expect("addr");
        l.established(a, cid(1), true, true, &circuit, now - S(30));
        l.established(a, cid(2), false, false, &direct, now - S(1));
        assert!(l.to_prune(now).is_empty(), "the direct link is not settled");
        assert_eq!(l.to_prune(now + S(1)), vec![cid(1)]);
        assert!(!l.relayed_only(&a));
    }

    #[test]
    fn one_answer_to_connected() {
        let now = Instant::now();
        let (a, b) = ordered_pair();
        let mut l = Links::new(a);
        let addr: Multiaddr = TCP.parse().expect("addr");
        assert!(!l.is_connected(&b));
        assert!(l.established(b, cid(1), true, false, &addr, now));
        assert!(!l.established(b, cid(2), false, false, &addr, now));
        assert!(l.is_connected(&b) && l.count() == 1);
        assert!(!l.closed(b, cid(1)));
        assert!(l.is_connected(&b));
        assert!(l.closed(b, cid(2)));
        assert!(!l.is_connected(&b) && l.is_empty());
        assert_eq!(l.direct_ip(&b), None);
    }

    #[test]
    fn quic_only_links_get_a_tcp_dial_from_the_smaller_peer_every_ten_seconds() {
        let now = Instant::now();
        let (a, b) = ordered_pair();
        let quic: Multiaddr = QUIC.parse().expect("addr");
        let known = |_: &PeerId| super::super::addr::addrs(&[QUIC, TCP]);
        let mut small = Links::new(a);
        small.established(b, cid(1), true, false, &quic, now);
        assert_eq!(small.tcp_upgrades(now, known), vec![(b, super::super::addr::addrs(&[TCP]))]);
        assert!(small.tcp_upgrades(now + S(9), known).is_empty());
        assert_eq!(small.tcp_upgrades(now + S(11), known).len(), 1);
        // No TCP address known: nothing to dial.
        let mut other = Links::new(a);
        other.established(b, cid(1), true, false, &quic, now);
        assert!(other.tcp_upgrades(now, |_| super::super::addr::addrs(&[QUIC])).is_empty());
        // The larger peer leaves it to the smaller.
        let mut large = Links::new(b);
        large.established(a, cid(1), false, false, &quic, now);
        assert!(large.tcp_upgrades(now, known).is_empty());
    }
}
