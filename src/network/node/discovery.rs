//! The node's routing of behaviour events: gossip, identify, ping, mDNS,
//! Kademlia, AutoNAT, relays and hole punching, and interface changes. The
//! decisions are in `beyond_lan.rs`, `dialer/`, `gossip.rs` and
//! `liveness/`; this carries them out on the swarm.

use std::time::Instant;

use libp2p::gossipsub;
use libp2p::{identify, mdns, ping, Multiaddr, PeerId};

use super::Node;
use crate::mesh::FoundBy;
use crate::network::beyond_lan;
use crate::network::gossip::{self, Incoming};
use crate::network::BehaviourEvent;
use libp2p::metrics::Recorder;

/// How many times a cell publishes its record as cells first subscribe to
/// the record topic: the first subscriber may not have a gossip mesh yet.
const ANNOUNCE_ON_JOIN: u8 = 2;

impl Node {
    pub(super) fn on_behaviour(&mut self, event: BehaviourEvent, now: Instant) {
        match event {
            BehaviourEvent::Gossipsub(e) => {
                self.p2p_metrics.record(&e);
                self.on_gossip(e);
            }
            BehaviourEvent::Register(e) => self.on_register(e),
            BehaviourEvent::Identify(e) => {
                self.p2p_metrics.record(&e);
                if let identify::Event::Received { peer_id, info, .. } = e {
                    if info.protocol_version != crate::network::protocol::IDENTIFY_PROTOCOL {
                        tracing::debug!(peer = %peer_id, version = info.protocol_version, "peer speaks another identify protocol");
                    }
                    self.mesh.identified(peer_id, &info.agent_version, &info.listen_addrs);
                    let actions = self.beyond.on_identified(
                        peer_id,
                        &info,
                        &self.local.listen_addrs,
                        &self.links,
                        &self.mesh,
                    );
                    self.beyond_lan(actions);
                    self.publisher.coalescer.soft();
                }
            }
            BehaviourEvent::Ping(e) => {
                self.p2p_metrics.record(&e);
                self.on_ping(e);
            }
            BehaviourEvent::Mdns(e) => self.on_mdns(e, now),
            BehaviourEvent::Kad(e) => {
                self.p2p_metrics.record(&e);
                self.on_kad(e);
            }
            BehaviourEvent::Autonat(libp2p::autonat::Event::StatusChanged { old, new }) => {
                let actions = self.beyond.on_autonat(&new, now, &self.links);
                tracing::info!(
                    ?old,
                    ?new,
                    "AutoNAT: reachability is {}",
                    self.beyond.reachability().as_str()
                );
                self.beyond_lan(actions);
                self.publisher.coalescer.dirty();
            }
            BehaviourEvent::Autonat(_) => {}
            BehaviourEvent::Relay(e) => {
                self.p2p_metrics.record(&e);
                tracing::debug!(event = ?e, "relay (serving)");
            }
            BehaviourEvent::RelayClient(libp2p::relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "reachable through a relay");
                }
                self.beyond.relay_accepted(relay_peer_id);
                self.publisher.coalescer.dirty();
            }
            BehaviourEvent::RelayClient(other) => tracing::debug!(event = ?other, "relay client"),
            BehaviourEvent::Dcutr(e) => {
                self.p2p_metrics.record(&e);
                match e.result {
                    Ok(_) => {
                        tracing::info!(peer = %e.remote_peer_id, "hole punching: direct link made")
                    }
                    Err(err) => {
                        tracing::info!(peer = %e.remote_peer_id, error = %err, "hole punching failed; staying relayed")
                    }
                }
            }
            BehaviourEvent::Limits(never) => match never {},
            BehaviourEvent::Stream(()) => {}
        }
    }

    pub(super) fn on_interface(&mut self, change: std::io::Result<if_watch::IfEvent>) {
        match change {
            Ok(if_watch::IfEvent::Up(net)) => {
                tracing::debug!(%net, "interface address up");
                self.beyond.interface_up(net);
            }
            Ok(if_watch::IfEvent::Down(net)) => {
                tracing::debug!(%net, "interface address down");
                self.beyond.interface_down(&net);
            }
            Err(e) => tracing::debug!(error = %e, "interface watch"),
        }
    }

    /// Carries out what the beyond-the-LAN component asks.
    pub(super) fn beyond_lan(&mut self, actions: Vec<beyond_lan::Action>) {
        use beyond_lan::Action as A;
        for a in actions {
            match a {
                A::KadAddress { peer, addr } => {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
                A::KadRound { announce } => {
                    let key = libp2p::kad::RecordKey::new(&crate::network::protocol::MESH_KEY);
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    if announce {
                        if let Err(e) = kad.start_providing(key.clone()) {
                            tracing::warn!(error = %e, "cannot announce this cell in the DHT");
                        }
                    }
                    kad.get_providers(key);
                }
                A::AddAutonatServer(p) => self.swarm.behaviour_mut().autonat.add_server(p, None),
                A::RemoveAutonatServer(p) => self.swarm.behaviour_mut().autonat.remove_server(&p),
                A::ListenRelay { relay, circuit } => match self.swarm.listen_on(circuit.clone()) {
                    Ok(id) => {
                        tracing::info!(%relay, addr = %circuit, "private: asking a cell to relay for us");
                        self.beyond.relay_listening(relay, id);
                    }
                    Err(e) => tracing::warn!(%relay, error = %e, "cannot listen through relay"),
                },
                A::RemoveListener(id) => {
                    self.swarm.remove_listener(id);
                }
            }
        }
    }

    pub(super) fn on_kad(&mut self, e: libp2p::kad::Event) {
        use libp2p::kad::{Event, GetProvidersOk, QueryResult};
        match e {
            Event::OutboundQueryProgressed {
                result:
                    QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { providers, .. })),
                ..
            } => {
                for peer in providers {
                    if let Some(dial) = self.dialer.dial_provider(peer, &self.links) {
                        tracing::debug!(%peer, "Kademlia: a cell provides the mesh topic");
                        self.start_dials(Some(dial));
                    }
                }
            }
            Event::RoutingUpdated { peer, is_new_peer: true, .. } => {
                tracing::debug!(%peer, "Kademlia: added to the routing table");
            }
            Event::OutboundQueryProgressed { result, .. } => {
                tracing::trace!(?result, "Kademlia query progressed");
            }
            _ => {}
        }
    }

    pub(super) fn on_mdns(&mut self, e: mdns::Event, now: Instant) {
        let mdns::Event::Discovered(list) = e else { return };
        let mut by_peer: std::collections::HashMap<PeerId, Vec<Multiaddr>> = Default::default();
        for (peer, addr) in list {
            by_peer.entry(peer).or_default().push(addr);
        }
        for (peer, addrs) in by_peer {
            if peer == self.local.peer {
                continue;
            }
            tracing::debug!(%peer, ?addrs, "mDNS discovered");
            let actions = self.beyond.on_mdns(peer);
            self.beyond_lan(actions);
            if self.mesh.discovered(peer, &addrs, FoundBy::Mdns) {
                self.publisher.coalescer.dirty();
            }
            // Rediscovery of a failed cell: try it now.
            self.dialer.forget_retry(&peer);
            // A cell's mDNS answer holds its QUIC and TCP addresses as
            // separate records, which can arrive in separate events. Dialing
            // on the QUIC one alone costs a QUIC (TLS) handshake, then a TCP
            // one to replace it (a third of a cell's start-up CPU at 20
            // cells): wait for the TCP record, which comes at once (the tick
            // dials whatever is known otherwise).
            let known = self.mesh.addrs_of(&peer);
            let neighbours = self.neighbours();
            if known.iter().any(crate::network::addr::is_tcp)
                && neighbours.contains(&peer)
                && !self.links.is_connected(&peer)
                && self.dialer.neighbours_due(now, &self.links, &neighbours, self.deaf(now), true)
                && self.dialer.may_dial(peer, now, &self.links)
            {
                let dial = self.dialer.dial(peer, known, FoundBy::Mdns, &self.links);
                self.start_dials(dial);
            }
        }
        // Answers heard: this cell knows the mesh now, and stops answering
        // unless it is one of the cells that answer for it.
        self.mdns_duty(now);
    }

    /// Pings measure round trips (`rtt_ms`); probes judge liveness, except
    /// for cells that do not speak the probe protocol, which a failed ping
    /// fails.
    pub(super) fn on_ping(&mut self, e: ping::Event) {
        match e.result {
            Ok(rtt) => {
                let t = self.mesh.rtt(e.peer, rtt);
                if t.is_some() {
                    let actions = self.liveness.heard(e.peer);
                    self.live(actions);
                }
                self.transition(t);
                self.publisher.coalescer.soft();
            }
            Err(ping::Failure::Unsupported) => {}
            Err(failure) if self.liveness.ping_failed(&e.peer) => {
                tracing::debug!(peer = %e.peer, %failure, "ping failed; failing the cell");
                let t = self.mesh.unreachable(e.peer);
                self.transition(t);
            }
            Err(failure) => tracing::debug!(peer = %e.peer, %failure, "ping failed"),
        }
    }

    pub(super) fn on_gossip(&mut self, e: gossipsub::Event) {
        if let gossipsub::Event::Subscribed { topic, .. } = &e {
            // A cell's record reaches the mesh by gossip only once some
            // cell listens: announce it to the first ones that do (records
            // otherwise spread by exchanges, a hop per exchange).
            if *topic == self.topic_hash && self.overlay.announced < ANNOUNCE_ON_JOIN {
                self.overlay.announced += 1;
                self.publish_own("joining: the first cells subscribed");
            }
            return;
        }
        let gossipsub::Event::Message { propagation_source, message_id, message } = e else {
            return;
        };
        if message.topic == self.overlay.relay_hash {
            let verdict = self.on_relayed(&message.data);
            self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                &message_id,
                &propagation_source,
                verdict,
            );
            return;
        }
        if message.topic == self.overlay.notice_hash {
            let verdict = match message.source {
                Some(source) => self.on_notice_gossip(source, &message.data),
                None => {
                    self.reject("unsigned");
                    gossipsub::MessageAcceptance::Reject
                }
            };
            self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                &message_id,
                &propagation_source,
                verdict,
            );
            return;
        }
        let verdict = match gossip::classify(self.local.peer, message.source, &message.data) {
            Incoming::Record(source, record) => {
                // gossipsub checked that `source` signed the message; a
                // record that also carries an envelope must hold to it,
                // unless we hold that version already (merged as stale
                // either way; the check is an Ed25519 verification).
                let held = self.mesh.holds(&source, record.seq, true);
                let record = match record.envelope {
                    Some(_) if !held => record.verified(&source),
                    _ => Ok(record),
                };
                match record {
                    Ok(record) => {
                        self.metrics.gossip_received.inc();
                        gossip::verdict(self.merge_record(source, &record, FoundBy::Gossip, true))
                    }
                    Err(e) => {
                        self.refused(source, source, &e);
                        self.reject("forged");
                        gossipsub::MessageAcceptance::Reject
                    }
                }
            }
            Incoming::OwnKey(record) => {
                // Signed with our key: ours from before, or a clone's.
                let record = match record.envelope {
                    Some(_) => record.verified(&self.local.peer).unwrap_or(record),
                    None => record,
                };
                self.check_clone(&record, "gossip");
                gossipsub::MessageAcceptance::Ignore
            }
            Incoming::Unsigned => {
                self.reject("unsigned");
                gossipsub::MessageAcceptance::Reject
            }
            Incoming::Invalid(source, err) => {
                tracing::debug!(%source, %err, "rejected gossip message");
                self.reject("invalid");
                gossipsub::MessageAcceptance::Reject
            }
        };
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
            &message_id,
            &propagation_source,
            verdict,
        );
    }
}
