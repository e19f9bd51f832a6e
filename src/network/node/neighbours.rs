//! The node's side of the overlay (`overlay.rs`): which links to keep and
//! prune, when mDNS runs, and membership notices on gossip.

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use libp2p::gossipsub::{self, IdentTopic, TopicHash};
use libp2p::PeerId;

use super::Node;
use crate::network::liveness::Peers;
use crate::network::overlay;
use crate::network::protocol::Notice;

/// What the node keeps for the overlay (see `overlay.rs`).
pub(super) struct OverlayState {
    pub(super) notice_topic: IdentTopic,
    pub(super) notice_hash: TopicHash,
    /// Records learned in exchanges are passed on here (see `RELAY_TOPIC`).
    pub(super) relay_topic: IdentTopic,
    pub(super) relay_hash: TopicHash,
    /// Cells whose record was relayed (by us or to us) and when: gossipsub
    /// drops a second relay of a cell for a minute (`gossip::message_id`),
    /// and warns when we publish one; we do not try.
    pub(super) relayed: std::collections::HashMap<PeerId, Instant>,
    /// Cells whose links we closed as no neighbours: their closing is no
    /// news.
    pub(super) pruned: HashSet<PeerId>,
    /// How old a link to a cell that is no neighbour must be to be closed.
    pub(super) prune_backoff: overlay::PruneBackoff,
    /// mDNS as configured (`None`: off), to start it again when this cell
    /// becomes one of the cells that answer for the mesh.
    pub(super) mdns: Option<libp2p::mdns::Config>,
    /// When this cell's turn to start mDNS comes.
    pub(super) mdns_from: Instant,
    /// How often this cell published its record as cells first subscribed.
    pub(super) announced: u8,
}

impl Node {
    /// The cells this one keeps links to (see `overlay.rs`).
    pub(super) fn neighbours(&self) -> BTreeSet<PeerId> {
        let keep = overlay::RING_KEEPS_FAILED.as_millis() as u64;
        overlay::neighbours(self.local.peer, &self.mesh.ring(crate::mesh::now_ms(), keep))
    }

    /// Dials the `neighbours` not linked yet, when the dialer says such
    /// dials are due (see `overlay::Settle`).
    pub(super) fn dial_neighbours(&mut self, now: Instant, neighbours: &BTreeSet<PeerId>) {
        let deaf = self.deaf(now);
        let dials = self.dialer.dial_known(
            now,
            &self.mesh,
            &self.links,
            self.beyond.nets(),
            neighbours,
            deaf,
        );
        if deaf && !dials.is_empty() {
            tracing::debug!(dials = dials.len(), "in no gossip mesh: dialing neighbours at once");
        }
        self.start_dials(dials);
    }

    /// Whether this cell is linked but in nobody's gossip mesh for the
    /// mesh topic (see [`overlay::DEAF_AFTER`]): its links' cells pruned it
    /// (a cell with more than gossipsub's `mesh_n_high` mesh peers prunes
    /// some, and they may not graft it again for a minute), and it hears
    /// their gossip only late, by IHAVE or syncs.
    pub(super) fn deaf(&self, now: Instant) -> bool {
        let in_mesh =
            self.swarm.behaviour().gossipsub.mesh_peers(&self.topic_hash).next().is_some();
        !in_mesh
            && self.links.peers().any(|p| {
                self.links.of(&p).iter().any(|l| now.duration_since(l.since) >= overlay::DEAF_AFTER)
            })
    }

    /// Closes links to cells that are no neighbours once they are
    /// [`overlay::PRUNE_AFTER`] old (longer for a cell whose link we closed
    /// before, see [`overlay::PruneBackoff`]): a join, a `/register`, a check, a
    /// neighbour before the view changed; sooner above
    /// [`overlay::LINKS_BOUND`], see [`overlay::links_to_close`]). Configured
    /// peers, relays, cells that do not speak our probes (another
    /// implementation), and cells with an exchange under way keep theirs.
    pub(super) fn prune_non_neighbours(&mut self, now: Instant, neighbours: &BTreeSet<PeerId>) {
        for p in neighbours {
            self.overlay.prune_backoff.neighbour(p);
        }
        let configured = self.dialer.configured_peers();
        let relays: HashSet<String> = self.beyond.relays().into_iter().collect();
        let links: Vec<(PeerId, std::time::Duration, Option<std::time::Duration>)> = self
            .links
            .peers()
            .map(|p| {
                let links = self.links.of(&p);
                let age =
                    links.iter().map(|l| now.duration_since(l.since)).min().unwrap_or_default();
                let prunable = !neighbours.contains(&p)
                    && !configured.contains(&p)
                    && self.liveness.probes(&p)
                    && !self.membership.busy_with(&p)
                    && !relays.contains(&p.to_base58())
                    && links.iter().all(|l| !l.relayed);
                (p, age, prunable.then(|| self.overlay.prune_backoff.after(&p, now)))
            })
            .collect();
        let stale = overlay::links_to_close(&links);
        for peer in stale {
            tracing::debug!(%peer, "closing the link to a cell that is no neighbour");
            self.overlay.pruned.insert(peer);
            self.overlay.prune_backoff.closed(peer, now);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// mDNS runs until this cell knows another cell (one answer is
    /// enough: it learns the rest from that cell's records), then only on
    /// the few cells that answer for the mesh ([`overlay::RESPONDERS`]):
    /// a query costs a few answers, not one per cell, and the others stop
    /// asking.
    pub(super) fn mdns_duty(&mut self, now: Instant) {
        let Some(config) = self.overlay.mdns.clone() else { return };
        let members = self.mesh.members();
        let responder = overlay::is_responder(self.local.peer, &members);
        let want =
            overlay::mdns_wanted(now, self.overlay.mdns_from, !members.is_empty(), responder);
        let on = self.swarm.behaviour().mdns.is_enabled();
        if want == on {
            return;
        }
        if !want {
            tracing::debug!("found the mesh: mDNS off (other cells answer for it)");
            self.swarm.behaviour_mut().mdns = None.into();
            return;
        }
        match libp2p::mdns::tokio::Behaviour::new(config, self.local.peer) {
            Ok(mut m) => {
                use libp2p::core::transport::ListenerId;
                use libp2p::swarm::{FromSwarm, NetworkBehaviour, NewListenAddr};
                for addr in self.swarm.listeners() {
                    let listener_id = ListenerId::next();
                    m.on_swarm_event(FromSwarm::NewListenAddr(NewListenAddr { listener_id, addr }));
                }
                tracing::debug!("mDNS on: this cell answers for the mesh");
                self.swarm.behaviour_mut().mdns = Some(m).into();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start mDNS again; running without it");
                self.overlay.mdns = None;
            }
        }
    }

    /// When mDNS is to start (its turn, see [`overlay::MDNS_SPREAD`]),
    /// while it is off and this cell knows no other.
    pub(super) fn mdns_due(&self) -> Option<Instant> {
        let waiting = self.overlay.mdns.is_some()
            && !self.swarm.behaviour().mdns.is_enabled()
            && !self.mesh.has_members();
        waiting.then_some(self.overlay.mdns_from)
    }

    /// Publishes a membership notice on gossip.
    pub(super) fn announce(&mut self, suspect: PeerId, incarnation: u64, failed: bool) {
        let notice = Notice { suspect: suspect.to_base58(), incarnation, failed };
        let topic = self.overlay.notice_topic.clone();
        match self.swarm.behaviour_mut().gossipsub.publish(topic, notice.to_cbor()) {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!(error = %e, "publishing a notice failed"),
        }
    }

    /// A membership notice from `source`, by gossip.
    pub(super) fn on_notice_gossip(
        &mut self,
        source: PeerId,
        data: &[u8],
    ) -> gossipsub::MessageAcceptance {
        let (notice, suspect) = match Notice::from_cbor(data) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(%source, error = %e, "rejected a notice");
                self.reject("invalid");
                return gossipsub::MessageAcceptance::Reject;
            }
        };
        if source == self.local.peer {
            return gossipsub::MessageAcceptance::Ignore;
        }
        let now = Instant::now();
        let held = self.mesh.seq_of(&suspect).unwrap_or(0);
        let gone = notice.failed
            && suspect != self.local.peer
            && !self.links.is_connected(&suspect)
            && notice.incarnation >= held;
        if notice.failed && suspect == self.local.peer {
            let actions = self.liveness.failed_here(source, now);
            self.live(actions);
        } else if gone {
            // Its neighbour's dial was refused after its link closed; a
            // live cell refutes with a newer record.
            let actions = self.liveness.heard(suspect);
            self.live(actions);
            let t = self.mesh.unreachable(suspect);
            if t.is_some() {
                tracing::info!(%suspect, by = %source, "a neighbour of the cell says it is gone");
            }
            self.transition(t);
        } else {
            let actions = self.liveness.on_notice(
                source,
                suspect,
                Some(notice.incarnation),
                self.local.seq,
                now,
                Peers { links: &self.links, mesh: &self.mesh },
            );
            self.live(actions);
        }
        gossipsub::MessageAcceptance::Accept
    }
}
