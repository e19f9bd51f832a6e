//! The node's handling of the swarm's own events: listeners, connections
//! made and closed, dials that failed.

use std::time::Instant;

use libp2p::metrics::Recorder;
use libp2p::swarm::SwarmEvent;

use super::Node;
use crate::mesh::PeerState;
use crate::network::{handshake, BehaviourEvent};

impl Node {
    pub(super) fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.p2p_metrics.record(&event);
        let now = Instant::now();
        match event {
            SwarmEvent::Behaviour(e) => self.on_behaviour(e, now),
            SwarmEvent::ListenerClosed { listener_id, reason, .. }
                if self.beyond.listener_closed(listener_id) =>
            {
                tracing::debug!(?reason, "relay listener closed");
                self.publisher.coalescer.dirty();
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening (libp2p)");
                self.local.listening(address);
                self.publisher.coalescer.dirty();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.local.not_listening(&address);
                self.publisher.coalescer.dirty();
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                let (addr, dialer) = (endpoint.get_remote_address(), endpoint.is_dialer());
                tracing::debug!(peer = %peer_id, ?connection_id, %addr, dialer, "connection established");
                let (origin, reply) = self.dialer.established(connection_id, peer_id, dialer);
                if self.links.established(
                    peer_id,
                    connection_id,
                    dialer,
                    endpoint.is_relayed(),
                    addr,
                    now,
                ) {
                    // A cell we were not connected to: the DHT may know more now.
                    self.beyond.kick(now);
                }
                let dialed = dialer.then(|| crate::network::addr::strip_p2p(addr));
                let t = self.mesh.connected(peer_id, dialed.as_ref(), origin);
                self.transition(t);
                self.tasks.set_beat_ip(peer_id, self.links.direct_ip(&peer_id));
                // A new connection proves the cell is there.
                let actions = self.liveness.heard(peer_id);
                self.live(actions);
                self.publisher.coalescer.dirty();
                // Exchange records with every newly connected cell. Both sides
                // may send (a simultaneous dial): harmless, and it does not
                // depend on which twin connection survives pruning.
                if reply.is_some() || !self.membership.has_exchanged(&peer_id) {
                    self.exchange_on_link(peer_id, reply);
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, cause, .. } => {
                tracing::debug!(peer = %peer_id, ?connection_id, ?cause, "connection closed");
                let last = self.links.closed(peer_id, connection_id);
                self.tasks.set_beat_ip(peer_id, self.links.direct_ip(&peer_id));
                if last {
                    tracing::debug!(peer = %peer_id, "last connection closed");
                    self.liveness.disconnected(&peer_id);
                    self.membership.disconnected(&peer_id);
                    let actions = self.beyond.disconnected(&peer_id);
                    self.beyond_lan(actions);
                    self.mesh.disconnected(peer_id);
                    self.publisher.coalescer.dirty();
                    let ours = self.overlay.pruned.remove(&peer_id);
                    let alive = self.mesh.state_of(&peer_id) == Some(PeerState::Alive);
                    // Our last link, too: with no link left, this cell
                    // hears no notice of a crash (a joining cell's only
                    // link, not a ring neighbour, killed at a start of 30
                    // cells stayed alive at it for good).
                    let isolated = self.links.is_empty();
                    if !ours && alive && (isolated || self.neighbours().contains(&peer_id)) {
                        // A crash, or a neighbour whose view differs closing
                        // a link it does not want: a dial tells which.
                        let addrs = self.mesh.addrs_of(&peer_id);
                        let dial = self.dialer.verify(peer_id, addrs, &self.links);
                        self.start_dials(dial);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                let failure = handshake::Failure::of_dial(&error);
                let failed = self.dialer.failed(connection_id, &failure.to_string());
                let remote = peer_id
                    .map(|p| p.to_base58())
                    .or_else(|| failed.addr.map(|a| a.to_string()))
                    .unwrap_or_default();
                self.handshakes.explain(&remote, &failure);
                // Another cell at the address (it changed hands: a stale
                // address) says nothing of the cell asked for.
                let wrong = matches!(failure, handshake::Failure::WrongPeer { .. });
                let peer = peer_id.filter(|p| !wrong && !self.links.is_connected(p));
                // A verify dial (a neighbour's link closed) that fails is
                // how the mesh learns of a crash: it fails the cell and is
                // announced (refutable). So is any dial the cell's host
                // refused: nothing listens at its port, its process is gone
                // (a cell that crashed before its new neighbours linked to
                // it, which no link closing would tell of). Any other failed
                // dial of a cell the mesh says is alive (a busy host, a lost
                // packet, a handshake cut short) says less than that, and
                // failing the cell here for it would be silent, with nothing
                // for the cell to refute: the cells linked to it judge it;
                // the dialer tries again.
                let gone = failed.verify || matches!(failure, handshake::Failure::Refused);
                if let Some(peer) = peer.filter(|p| !gone && self.mesh.vouched(p)) {
                    tracing::debug!(%peer, %failure, "a dial failed; the mesh still vouches for the cell");
                } else if let Some(peer) = peer {
                    let t = self.mesh.unreachable(peer);
                    if t.is_some() {
                        tracing::info!(%peer, %failure, verify = failed.verify, "a dial of the cell failed");
                    }
                    if gone && t.is_some() {
                        // A neighbour's link closed and it does not answer,
                        // or its port refuses: tell the mesh.
                        let incarnation = self.mesh.seq_of(&peer).unwrap_or(0);
                        self.announce(peer, incarnation, true);
                    }
                    self.transition(t);
                }
            }
            SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                tracing::debug!(from = %send_back_addr, error = %error, "incoming connection failed");
                let ip = crate::network::addr::ip_of(&send_back_addr)
                    .map(|ip| ip.to_string())
                    .unwrap_or_default();
                self.handshakes.explain(&ip, &handshake::Failure::of_listen(&error));
            }
            _ => {}
        }
    }
}
