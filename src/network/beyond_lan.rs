//! Beyond the LAN: which networks are ours (neighbours are on them), when
//! the DHT is of use and its discovery rounds, AutoNAT's servers and
//! verdict, and the relays a private cell listens through. Clock-free: it
//! returns [`Action`]s on Kademlia, AutoNAT and the swarm's listeners.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{autonat, identify, relay, Multiaddr, PeerId};

use super::addr::{ip_of, is_loopback, is_tcp, is_unspecified, near, strip_p2p};
use super::links::Links;
use super::protocol::KAD_PROTOCOL;
use crate::mesh::MeshView;

/// Kademlia discovery rounds (who provides the mesh topic?): soon after any
/// new connection, then backing off to `KAD_ROUND_MAX` while nothing changes.
/// A cell that joins later runs its own rounds, and its records reach the
/// rest by gossip, so a quiet mesh need not poll. Rounds run only while the
/// DHT can tell us something mDNS cannot (see [`BeyondLan::dht_useful`]): a
/// provider round costs every asked cell an answer listing every cell.
pub(crate) const KAD_ROUND_MIN: Duration = Duration::from_secs(2);
pub(crate) const KAD_ROUND_MAX: Duration = Duration::from_secs(600);
/// While rounds are this frequent, each also re-announces this cell as a
/// provider (the DHT has just changed); otherwise Kademlia republishes it.
pub(crate) const KAD_ANNOUNCE_BELOW: Duration = Duration::from_secs(60);
/// Relays a private cell keeps a reservation on, and how long it leaves a
/// relay that refused before trying it again.
pub(crate) const WANTED_RELAYS: usize = 2;
pub(crate) const RELAY_RETRY: Duration = Duration::from_secs(30);

/// AutoNAT's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reachability {
    Unknown,
    Public,
    Private,
}

impl Reachability {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "public",
            Reachability::Private => "private",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Tell Kademlia where `peer` listens.
    KadAddress {
        peer: PeerId,
        addr: Multiaddr,
    },
    /// Ask the DHT who provides the mesh topic; `announce`: say we do.
    KadRound {
        announce: bool,
    },
    AddAutonatServer(PeerId),
    RemoveAutonatServer(PeerId),
    /// Listen through `relay` at `circuit`; report the listener with
    /// [`BeyondLan::relay_listening`].
    ListenRelay {
        relay: PeerId,
        circuit: Multiaddr,
    },
    RemoveListener(ListenerId),
}

#[derive(Debug)]
pub(crate) struct BeyondLan {
    mdns_on: bool,
    /// The networks of this host's interfaces (from `if-watch`, kept current).
    nets: Vec<if_watch::IpNet>,
    /// Cells' addresses for Kademlia, held until the DHT is of use.
    kad_waiting: HashMap<PeerId, Vec<Multiaddr>>,
    /// Next Kademlia discovery round and the current backoff.
    kad_next: Instant,
    kad_backoff: Duration,
    reachability: Reachability,
    /// Peers that serve circuit relay v2 (identify lists the hop protocol).
    hop_peers: HashSet<PeerId>,
    /// Relay listeners we opened (private cells), and those accepted.
    relay_listeners: HashMap<PeerId, ListenerId>,
    relays_ok: HashSet<PeerId>,
    relay_tried: HashMap<PeerId, Instant>,
    /// Cells that see us at an address that is not one of ours: a NAT lies
    /// between us, they are outside it: our relay candidates.
    nat_peers: HashSet<PeerId>,
    /// Cells mDNS has found (on this LAN), and the connected cells beyond
    /// it (not found by mDNS, no listen address on a network of ours),
    /// which are our AutoNAT servers (a LAN neighbour can always dial us
    /// back, so its answer says nothing about NAT) and the reason to run
    /// Kademlia rounds.
    mdns_peers: HashSet<PeerId>,
    autonat_servers: HashSet<PeerId>,
}

impl BeyondLan {
    pub(crate) fn new(mdns_on: bool, now: Instant) -> Self {
        Self {
            mdns_on,
            nets: Vec::new(),
            kad_waiting: HashMap::new(),
            kad_next: now,
            kad_backoff: KAD_ROUND_MIN,
            reachability: Reachability::Unknown,
            hop_peers: HashSet::new(),
            relay_listeners: HashMap::new(),
            relays_ok: HashSet::new(),
            relay_tried: HashMap::new(),
            nat_peers: HashSet::new(),
            mdns_peers: HashSet::new(),
            autonat_servers: HashSet::new(),
        }
    }

    pub(crate) fn nets(&self) -> &[if_watch::IpNet] {
        &self.nets
    }

    pub(crate) fn reachability(&self) -> Reachability {
        self.reachability
    }

    /// Relays that accepted our reservation.
    pub(crate) fn relays(&self) -> Vec<String> {
        let mut r: Vec<String> = self.relays_ok.iter().map(|p| p.to_base58()).collect();
        r.sort();
        r
    }

    pub(crate) fn interface_up(&mut self, net: if_watch::IpNet) {
        if !self.nets.contains(&net) {
            self.nets.push(net);
        }
    }

    pub(crate) fn interface_down(&mut self, net: &if_watch::IpNet) {
        self.nets.retain(|n| n != net);
    }

    /// Something changed that the DHT may know more about (a new cell
    /// connected, one heard of): a round soon.
    pub(crate) fn kick(&mut self, now: Instant) {
        self.kad_backoff = KAD_ROUND_MIN;
        self.kad_next = self.kad_next.min(now + KAD_ROUND_MIN);
    }

    /// Whether a discovery round can find anything: we are connected, and
    /// either mDNS is off, or a connected cell is beyond this LAN, or a cell
    /// we heard of, at no address on our networks, is still not connected.
    /// On one LAN, mDNS and the record exchange find everyone, and a round
    /// would cost every cell ~100 KB.
    pub(crate) fn dht_useful(&self, links: &Links, mesh: &MeshView) -> bool {
        let nets = &self.nets;
        !links.is_empty()
            && (!self.mdns_on
                || !self.autonat_servers.is_empty()
                || mesh.has_hearsay(|a| near(nets, a)))
    }

    /// Hands Kademlia the cells identify told us of, once the DHT is of use.
    /// Until then a cell's routing table stays empty: libp2p-kad
    /// bootstraps whenever a peer joins a table of fewer than 20, and every
    /// 5 minutes, and on one LAN such a bootstrap (a lookup per bucket,
    /// each answered with up to 20 addresses by every cell) cost each cell
    /// ~640 KB at 20 cells, for nothing mDNS and the record exchange do not
    /// already give.
    fn feed_kad(&mut self, links: &Links, mesh: &MeshView) -> Vec<Action> {
        if self.kad_waiting.is_empty() || !self.dht_useful(links, mesh) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (peer, addrs) in std::mem::take(&mut self.kad_waiting) {
            if links.is_connected(&peer) {
                out.extend(addrs.into_iter().map(|addr| Action::KadAddress { peer, addr }));
            }
        }
        out
    }

    /// Every tick: a Kademlia round when due and of use, relays when private.
    pub(crate) fn on_tick(&mut self, now: Instant, links: &Links, mesh: &MeshView) -> Vec<Action> {
        let mut out = Vec::new();
        if now >= self.kad_next && self.dht_useful(links, mesh) {
            out.extend(self.feed_kad(links, mesh));
            out.push(Action::KadRound { announce: self.kad_backoff < KAD_ANNOUNCE_BELOW });
            tracing::debug!(next_in = ?self.kad_backoff, "Kademlia discovery round");
            self.kad_next = now + self.kad_backoff;
            self.kad_backoff = (self.kad_backoff * 2).min(KAD_ROUND_MAX);
        }
        if self.reachability == Reachability::Private {
            out.extend(self.ensure_relays(now, links));
        }
        out
    }

    /// mDNS found `peer`: a LAN neighbour, no AutoNAT server.
    pub(crate) fn on_mdns(&mut self, peer: PeerId) -> Vec<Action> {
        self.mdns_peers.insert(peer);
        if self.autonat_servers.remove(&peer) {
            return vec![Action::RemoveAutonatServer(peer)];
        }
        Vec::new()
    }

    /// Identify told us of `peer`: its relay service, whether it sees us
    /// through a NAT, whether it is beyond this LAN, and its addresses for
    /// Kademlia (libp2p's kad learns only the address we dialed, none for
    /// inbound peers).
    pub(crate) fn on_identified(
        &mut self,
        peer: PeerId,
        info: &identify::Info,
        ours: &[Multiaddr],
        links: &Links,
        mesh: &MeshView,
    ) -> Vec<Action> {
        let speaks = |name: &str| info.protocols.iter().any(|p| p.as_ref() == name);
        if speaks(relay::HOP_PROTOCOL_NAME.as_ref()) {
            self.hop_peers.insert(peer);
        }
        // Does it see us through a NAT? Our own listen addresses carry every
        // interface IP we have.
        let ours = |ip: IpAddr| ours.iter().any(|a| ip_of(a) == Some(ip));
        if let Some(ip) = ip_of(&info.observed_addr) {
            if !ip.is_loopback() && !ours(ip) && self.nat_peers.insert(peer) {
                tracing::info!(%peer, observed = %info.observed_addr, "a cell sees us through a NAT");
            }
        }
        let mut out = Vec::new();
        // A cell beyond this LAN: an AutoNAT server, and a reason for
        // Kademlia rounds. Neighbours mDNS missed (a burst of answers at
        // start can overflow socket buffers) are recognised by their
        // addresses.
        // A cell reached over loopback is on this very machine: asking it
        // whether we are reachable would always say "public".
        let beyond = !self.mdns_peers.contains(&peer)
            && !links.over_loopback(&peer)
            && !info.listen_addrs.iter().any(|a| near(&self.nets, a));
        if beyond && links.is_connected(&peer) && self.autonat_servers.insert(peer) {
            tracing::debug!(%peer, "a cell beyond this LAN: AutoNAT server");
            out.push(Action::AddAutonatServer(peer));
        }
        if !speaks(KAD_PROTOCOL) {
            return out;
        }
        // A remote's loopback address reaches ourselves, unless we reach the
        // remote over loopback too (cells on one machine).
        let local_link = links.over_loopback(&peer);
        let usable: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .filter(|a| (local_link || !is_loopback(a)) && !is_unspecified(a))
            .map(strip_p2p)
            .collect();
        // TCP when the cell has it, as for every dial (a crash closes a TCP
        // connection at once; QUIC waits for its idle timeout).
        let tcp = usable.iter().any(is_tcp);
        let addrs: Vec<Multiaddr> = usable.into_iter().filter(|a| !tcp || is_tcp(a)).collect();
        self.kad_waiting.insert(peer, addrs);
        out.extend(self.feed_kad(links, mesh));
        out
    }

    /// AutoNAT's verdict changed.
    pub(crate) fn on_autonat(
        &mut self,
        status: &autonat::NatStatus,
        now: Instant,
        links: &Links,
    ) -> Vec<Action> {
        self.reachability = match status {
            autonat::NatStatus::Public(_) => Reachability::Public,
            autonat::NatStatus::Private => Reachability::Private,
            autonat::NatStatus::Unknown => Reachability::Unknown,
        };
        if self.reachability == Reachability::Private {
            return self.ensure_relays(now, links);
        }
        // Reachable: no need for relays any more.
        self.relays_ok.clear();
        self.relay_listeners
            .drain()
            .map(|(relay, listener)| {
                tracing::info!(%relay, "dropping relay reservation (reachable now)");
                Action::RemoveListener(listener)
            })
            .collect()
    }

    /// A private cell listens through up to [`WANTED_RELAYS`] relays: cells
    /// that serve relay v2, that see us through a NAT (they are outside it)
    /// and that we reached by a direct dial (so others can reach them too).
    fn ensure_relays(&mut self, now: Instant, links: &Links) -> Vec<Action> {
        let mut candidates: Vec<(PeerId, Multiaddr)> = Vec::new();
        for peer in self.hop_peers.intersection(&self.nat_peers) {
            if self.relay_listeners.contains_key(peer)
                || self.relay_tried.get(peer).is_some_and(|t| now.duration_since(*t) < RELAY_RETRY)
            {
                continue;
            }
            if let Some(addr) = links.dialed_addr(peer) {
                candidates.push((*peer, addr));
            }
        }
        candidates.sort();
        let room = WANTED_RELAYS.saturating_sub(self.relay_listeners.len());
        let mut out = Vec::new();
        for (relay, addr) in candidates.into_iter().take(room) {
            self.relay_tried.insert(relay, now);
            let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            out.push(Action::ListenRelay { relay, circuit });
        }
        out
    }

    /// The swarm listens through `relay` under `listener`.
    pub(crate) fn relay_listening(&mut self, relay: PeerId, listener: ListenerId) {
        self.relay_listeners.insert(relay, listener);
    }

    /// A relay accepted our reservation.
    pub(crate) fn relay_accepted(&mut self, relay: PeerId) {
        self.relays_ok.insert(relay);
    }

    /// A listener closed: if it was a relay's, that relay is gone. Returns
    /// whether it was.
    pub(crate) fn listener_closed(&mut self, listener: ListenerId) -> bool {
        let gone: Vec<PeerId> =
            self.relay_listeners.iter().filter(|(_, l)| **l == listener).map(|(p, _)| *p).collect();
        for p in &gone {
            tracing::info!(relay = %p, "relay listener closed");
            self.relay_listeners.remove(p);
            self.relays_ok.remove(p);
        }
        !gone.is_empty()
    }

    /// The last connection to `peer` closed.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) -> Vec<Action> {
        self.nat_peers.remove(peer);
        self.kad_waiting.remove(peer);
        if self.autonat_servers.remove(peer) {
            return vec![Action::RemoveAutonatServer(*peer)];
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::swarm::ConnectionId;
    use libp2p::StreamProtocol;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn info(listen: &[&str], observed: &str, protocols: &[StreamProtocol]) -> identify::Info {
        identify::Info {
            public_key: libp2p::identity::Keypair::generate_ed25519().public(),
            protocol_version: "/aios/1.0.0".into(),
            agent_version: "aios-cell/test".into(),
            listen_addrs: listen.iter().map(|a| a.parse().expect("addr")).collect(),
            protocols: protocols.to_vec(),
            observed_addr: observed.parse().expect("addr"),
            signed_peer_record: None,
        }
    }

    fn connected(me: PeerId, peer: PeerId, addr: &str, now: Instant) -> Links {
        let mut l = Links::new(me);
        let a: Multiaddr = addr.parse().expect("addr");
        l.established(peer, ConnectionId::new_unchecked(1), true, false, &a, now);
        l
    }

    #[test]
    fn on_one_lan_the_dht_stays_idle_and_a_cell_beyond_it_wakes_it() {
        let t0 = Instant::now();
        let (me, far) = (PeerId::random(), PeerId::random());
        let mesh = MeshView::new(me, "me");
        let mut b = BeyondLan::new(true, t0);
        b.interface_up("10.0.0.1/24".parse().expect("net"));
        let links = connected(me, far, "/ip4/192.168.7.2/tcp/8001", t0);
        assert!(!b.dht_useful(&links, &mesh));
        // A neighbour on our network: not beyond, no server, no rounds.
        let near = info(
            &["/ip4/10.0.0.7/tcp/8001"],
            "/ip4/10.0.0.1/tcp/5000",
            &[StreamProtocol::new(KAD_PROTOCOL)],
        );
        let a = b.on_identified(far, &near, &[], &links, &mesh);
        assert!(a.is_empty(), "{a:?}");
        assert!(b.on_tick(t0, &links, &mesh).is_empty());
        // A cell at an address on no network of ours: an AutoNAT server,
        // its addresses go to Kademlia, and rounds start, backing off.
        let far_info = info(
            &["/ip4/192.168.7.2/tcp/8001"],
            "/ip4/10.0.0.1/tcp/5000",
            &[StreamProtocol::new(KAD_PROTOCOL)],
        );
        let mut b = BeyondLan::new(true, t0);
        b.interface_up("10.0.0.1/24".parse().expect("net"));
        let a = b.on_identified(far, &far_info, &[], &links, &mesh);
        assert_eq!(a[0], Action::AddAutonatServer(far));
        assert!(matches!(a[1], Action::KadAddress { peer, .. } if peer == far));
        let rounds: Vec<u64> = (0..=40)
            .filter(|s| {
                b.on_tick(t0 + S(*s), &links, &mesh)
                    .iter()
                    .any(|x| matches!(x, Action::KadRound { .. }))
            })
            .collect();
        assert_eq!(rounds, vec![0, 2, 6, 14, 30]);
        // A new connection kicks the backoff back to 2 s.
        b.kick(t0 + S(31));
        assert!(b.on_tick(t0 + S(32), &links, &mesh).is_empty());
        assert_eq!(b.on_tick(t0 + S(33), &links, &mesh), vec![Action::KadRound { announce: true }]);
        // mDNS finding it later makes it a neighbour again.
        assert_eq!(b.on_mdns(far), vec![Action::RemoveAutonatServer(far)]);
    }

    #[test]
    fn a_cell_on_this_machine_is_no_autonat_server() {
        let t0 = Instant::now();
        let (me, other) = (PeerId::random(), PeerId::random());
        let mesh = MeshView::new(me, "me");
        let mut b = BeyondLan::new(false, t0);
        let links = connected(me, other, "/ip4/127.0.0.1/tcp/8001", t0);
        let i = info(&["/ip4/127.0.0.1/tcp/8001"], "/ip4/127.0.0.1/tcp/5000", &[]);
        assert!(b.on_identified(other, &i, &[], &links, &mesh).is_empty());
        assert_eq!(b.reachability(), Reachability::Unknown);
    }

    #[test]
    fn a_private_cell_asks_relays_that_see_it_through_a_nat() {
        let t0 = Instant::now();
        let (me, relay) = (PeerId::random(), PeerId::random());
        let mesh = MeshView::new(me, "me");
        let mut b = BeyondLan::new(true, t0);
        let links = connected(me, relay, "/ip4/203.0.113.5/tcp/8001", t0);
        let hop = relay::HOP_PROTOCOL_NAME;
        let i = info(&["/ip4/203.0.113.5/tcp/8001"], "/ip4/198.51.100.9/tcp/4000", &[hop]);
        let ours: Vec<Multiaddr> = vec!["/ip4/10.0.0.1/tcp/8001".parse().expect("addr")];
        b.on_identified(relay, &i, &ours, &links, &mesh);
        let a = b.on_autonat(&autonat::NatStatus::Private, t0, &links);
        let want: Multiaddr =
            format!("/ip4/203.0.113.5/tcp/8001/p2p/{relay}/p2p-circuit").parse().expect("addr");
        assert_eq!(a, vec![Action::ListenRelay { relay, circuit: want }]);
        assert_eq!(b.reachability().as_str(), "private");
        // Not asked again within 30 s.
        assert!(b
            .on_tick(t0 + S(10), &links, &mesh)
            .iter()
            .all(|x| !matches!(x, Action::ListenRelay { .. })));
        let l = ListenerId::next();
        b.relay_listening(relay, l);
        b.relay_accepted(relay);
        assert_eq!(b.relays(), vec![relay.to_base58()]);
        // Public now: the reservation goes.
        let a = b.on_autonat(&autonat::NatStatus::Public(ours[0].clone()), t0 + S(20), &links);
        assert_eq!(a, vec![Action::RemoveListener(l)]);
        assert!(b.relays().is_empty());
    }
}
