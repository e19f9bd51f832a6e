//! The node's side of the record exchanges (`/aios/register/1.0.0`):
//! sending hello and sync, answering requests, merging what comes back, and
//! the leave notices at shutdown. What is in flight and what to answer a
//! `sync` are decided in `membership.rs`.

use std::time::Instant;

use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::PeerId;

use super::Node;
use crate::mesh::{FoundBy, Merge};
use crate::metrics::{ReasonLabel, RegistrationLabels};
use crate::network::dialer::RegisterReply;
use crate::network::gossip;
use crate::network::liveness::{self, Peers};
use crate::network::membership::{self, Request};
use crate::network::protocol::{
    CellRecord, KnownCell, RecordError, RegisterRequest, RegisterResponse, RelayError, RequestKind,
    SignatureError, MAX_KNOWN_RECORDS,
};
use crate::network::{BehaviourEvent, CommandError, RegisterOutcome};
use futures::StreamExt;
use libp2p::gossipsub;

/// How long a cell's relay is remembered: as long as gossipsub keeps
/// message ids, which drops a second relay of the same cell.
const RELAY_MEMORY: std::time::Duration = crate::network::gossip::SEEN_FOR;

/// Why an exchange's records were refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExchangeError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

/// How long shutdown waits for cells to acknowledge the leave notice.
const LEAVE_WAIT: std::time::Duration = std::time::Duration::from_millis(1000);

impl Node {
    pub(super) fn send_hello(&mut self, peer: PeerId, reply: Option<RegisterReply>) {
        let req = RegisterRequest {
            known: membership::known_records(&self.mesh, peer),
            ..RegisterRequest::new(RequestKind::Hello, self.local.record(false))
        };
        let id = self.swarm.behaviour_mut().register.send_request(&peer, req);
        self.membership.sent(id, Request::Hello { peer, reply });
    }

    /// The record exchange on a new link. A cell that holds a view sends
    /// its digest (`sync`): the answer brings only what it lacks, and the
    /// other side asks back for what it lacks (at 100 cells ~6 KB instead
    /// of ~80 KB each way, up to four times per link). A cell that holds
    /// none, and `POST /register` (whose caller is told what came back),
    /// say `hello`.
    pub(super) fn exchange_on_link(&mut self, peer: PeerId, reply: Option<RegisterReply>) {
        if reply.is_none() && self.mesh.has_members() {
            self.send_sync(peer);
        } else {
            self.send_hello(peer, reply);
        }
    }

    /// Anti-entropy: our record and the digest of every record we hold; the
    /// answer brings only what is newer or missing here.
    pub(super) fn send_sync(&mut self, peer: PeerId) {
        let req = RegisterRequest {
            digest: membership::digest(&self.mesh),
            ..RegisterRequest::new(RequestKind::Sync, self.local.record(false))
        };
        let id = self.swarm.behaviour_mut().register.send_request(&peer, req);
        self.membership.sent(id, Request::Sync { peer });
    }

    /// Merges the records in an exchange. Returns how many third-party
    /// records came with it.
    pub(super) fn merge_exchange(
        &mut self,
        peer: PeerId,
        record: &CellRecord,
        known: &[KnownCell],
    ) -> Result<usize, ExchangeError> {
        record.validate()?;
        // The sender's own record comes over its authenticated connection;
        // a signed one must still hold (cells older than signatures send none).
        let own = match record.envelope {
            Some(_) => record.verified(&peer).inspect_err(|e| self.refused(peer, peer, e))?,
            None => record.clone(),
        };
        // What this exchange brings is relayed only when it may join two
        // parts of the mesh: we held others' records already. (A joining
        // cell learns all of its first link's part, which has them: relayed
        // back, they were ~100 floods at a start of 100 cells, for nothing.)
        let bridging = self.mesh.digest().any(|(p, _)| p != peer);
        if self.merge_record(peer, &own, FoundBy::Inbound, true) == Merge::New && bridging {
            self.relay(peer, &own);
        }
        let mut n = 0;
        for k in known.iter().take(MAX_KNOWN_RECORDS) {
            let Ok(p) = k.peer_id.parse::<PeerId>() else { continue };
            if p == peer || k.record.validate().is_err() {
                continue;
            }
            // Not newer than what we hold: merging would ignore it, so its
            // signature is not worth checking (a hello at 200 cells carries
            // 200 records, most of them known already).
            if p != self.local.peer && self.mesh.seq_of(&p).is_some_and(|s| k.record.seq <= s) {
                continue;
            }
            // A record relayed by another cell counts only as its author
            // signed it: a relay cannot forge a cell's level, branch or
            // leave, nor a clone of us.
            let signed = match k.record.verified(&p) {
                Ok(r) => r,
                Err(e) => {
                    self.refused(peer, p, &e);
                    continue;
                }
            };
            if p == self.local.peer {
                self.check_clone(&signed, "record exchange");
                continue;
            }
            n += 1;
            if self.merge_record(p, &signed, FoundBy::Gossip, false) == Merge::New && bridging {
                self.relay(p, &signed);
            }
        }
        // Cells we just heard of are dialed now, not at the next tick: a
        // cell that started after the others sent mDNS only a query, which
        // tells nobody of it; its records are how the rest learn of it.
        if n > 0 {
            let neighbours = self.neighbours();
            self.dial_neighbours(Instant::now(), &neighbours);
        }
        Ok(n)
    }

    /// Passes on by gossip the record of a cell this cell first heard of in
    /// an exchange (see
    /// [`RELAY_TOPIC`](crate::network::protocol::RELAY_TOPIC)): what one link
    /// brings reaches every cell this one reaches, not one exchange hop at a
    /// time. Only cells new
    /// here: a known cell's newer records are its own to publish (relaying
    /// every version of every record, at 100 cells, tripled the CPU of a
    /// start). Records that came by gossip are not relayed (gossipsub
    /// spreads them already), nor unsigned ones (the receivers would refuse
    /// them). A cell that holds the record already does not pass the relay
    /// on (see [`Node::on_relayed`]).
    fn relay(&mut self, author: PeerId, record: &CellRecord) {
        let now = Instant::now();
        if record.envelope.is_none() || self.relayed_lately(author, now) {
            return;
        }
        let data = KnownCell { peer_id: author.to_base58(), record: record.clone() }.to_cbor();
        let topic = self.overlay.relay_topic.clone();
        match self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
            Ok(_) => {
                self.metrics.records_relayed.inc();
            }
            // Duplicate: another cell relayed it to us first.
            Err(
                gossipsub::PublishError::Duplicate
                | gossipsub::PublishError::NoPeersSubscribedToTopic,
            ) => {}
            Err(e) => tracing::debug!(%author, error = %e, "relaying a record failed"),
        }
    }

    /// Whether `author`'s record was relayed, by us or to us, within
    /// [`RELAY_MEMORY`] (notes it as relayed now otherwise).
    fn relayed_lately(&mut self, author: PeerId, now: Instant) -> bool {
        let relayed = &mut self.overlay.relayed;
        if relayed.len() > 4096 {
            relayed.retain(|_, at| now.saturating_duration_since(*at) < RELAY_MEMORY);
        }
        let lately = relayed
            .get(&author)
            .is_some_and(|at| now.saturating_duration_since(*at) < RELAY_MEMORY);
        if !lately {
            relayed.insert(author, now);
        }
        lately
    }

    /// A record relayed by gossip (see
    /// [`RELAY_TOPIC`](crate::network::protocol::RELAY_TOPIC)): merged if its
    /// author signed it as sent; the verdict tells gossipsub whether to
    /// pass it on (only news is).
    pub(super) fn on_relayed(&mut self, data: &[u8]) -> gossipsub::MessageAcceptance {
        let decoded = KnownCell::relay_unverified(data);
        if let Ok((author, _)) = &decoded {
            self.relayed_lately(*author, Instant::now());
        }
        // A version held already is passed over unchecked: its signature
        // is checked once, by whichever way it came first (in a 200-cell
        // start, Ed25519 checks were a fifth of a cell's CPU).
        let decoded = decoded.and_then(|(author, record)| {
            if author != self.local.peer && self.mesh.holds(&author, record.seq, false) {
                return Ok(None);
            }
            KnownCell::relay_verified(author, record).map(|r| Some((author, r)))
        });
        match decoded {
            Ok(None) => gossipsub::MessageAcceptance::Ignore,
            Ok(Some((author, record))) if author == self.local.peer => {
                self.check_clone(&record, "relayed gossip");
                gossipsub::MessageAcceptance::Accept
            }
            Ok(Some((author, record))) => {
                self.metrics.gossip_received.inc();
                match self.merge_record(author, &record, FoundBy::Gossip, false) {
                    // Known here: the cells around us most likely know it
                    // too; passing it on would flood the mesh for nothing.
                    Merge::Stale => gossipsub::MessageAcceptance::Ignore,
                    merge => gossip::verdict(merge),
                }
            }
            Err(RelayError::Signature { author, error }) => {
                self.metrics
                    .records_refused
                    .get_or_create(&ReasonLabel { reason: error.reason() })
                    .inc();
                tracing::debug!(%author, %error, "refused a relayed record");
                self.reject("forged");
                gossipsub::MessageAcceptance::Reject
            }
            Err(e) => {
                tracing::debug!(error = %e, "refused a relayed record");
                self.reject("invalid");
                gossipsub::MessageAcceptance::Reject
            }
        }
    }

    /// A record of `author` from `sender` failed its signature check:
    /// counted, and logged once per sender.
    pub(super) fn refused(&mut self, sender: PeerId, author: PeerId, e: &SignatureError) {
        self.metrics.records_refused.get_or_create(&ReasonLabel { reason: e.reason() }).inc();
        if self.refusal_warned.len() > 1024 {
            self.refusal_warned.clear();
        }
        if self.refusal_warned.insert(sender) {
            tracing::warn!(%sender, %author, error = %e, "refused a record its author did not sign as sent (further ones from this sender are only counted)");
        }
    }

    pub(super) fn count_exchange(&self, kind: &'static str, direction: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.metrics
            .registrations
            .get_or_create(&RegistrationLabels { kind, direction, outcome })
            .inc();
    }

    pub(super) fn on_register(
        &mut self,
        e: request_response::Event<RegisterRequest, RegisterResponse>,
    ) {
        use request_response::{Event, Message};
        match e {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                self.on_request(peer, request, channel)
            }
            Event::Message {
                peer, message: Message::Response { request_id, response }, ..
            } => {
                let (kind, reply) = match self.membership.settled(request_id) {
                    Some(Request::Hello { reply, .. }) => ("hello", reply),
                    Some(Request::Sync { .. }) => ("sync", None),
                    Some(Request::Suspect { to, suspect }) => {
                        // The suspect answered, or another cell reached it.
                        if to == suspect || response.alive == Some(true) {
                            let actions = self.liveness.heard(suspect);
                            self.live(actions);
                        }
                        return;
                    }
                    // A leave's answer carries nothing we need.
                    Some(Request::Leave { .. }) | None => return,
                };
                if self.links.is_connected(&peer) {
                    self.membership.exchanged(peer);
                }
                let result = self.merge_exchange(peer, &response.record, &response.known);
                self.count_exchange(kind, "outbound", result.is_ok());
                if let Some(reply) = reply {
                    let out = result.map(|known_cells| RegisterOutcome {
                        peer_id: peer.to_base58(),
                        cell_id: response.record.cell_id.clone(),
                        branch: response.record.branch.clone(),
                        consciousness_level: response.record.level,
                        addresses: response.record.addrs.clone(),
                        agent: response.record.agent.clone(),
                        known_cells,
                    });
                    let _ = reply.send(out.map_err(|e| {
                        CommandError::Unreachable(format!(
                            "peer {peer} sent an invalid record: {e}"
                        ))
                    }));
                }
            }
            Event::OutboundFailure { peer, request_id, error, .. } => {
                let reply = match self.membership.settled(request_id) {
                    Some(Request::Hello { reply, .. }) => reply,
                    Some(Request::Sync { .. }) => None,
                    Some(Request::Leave { .. } | Request::Suspect { .. }) | None => return,
                };
                // The tick sends another hello while the peer stays connected,
                // unless it does not speak the protocol at all.
                if matches!(error, request_response::OutboundFailure::UnsupportedProtocols) {
                    self.membership.exchanged(peer);
                }
                match reply {
                    Some(reply) => {
                        self.count_exchange("hello", "outbound", false);
                        let _ = reply.send(Err(CommandError::Unreachable(format!(
                            "peer {peer} connected but did not register: {error}"
                        ))));
                    }
                    None => tracing::debug!(%peer, %error, "record exchange failed"),
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound record exchange failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// The second half of a `hello` or `sync` from `peer`: merge what it
    /// sent, and answer with our record and `known` (chosen before merging).
    pub(super) fn merge_and_answer(
        &mut self,
        peer: PeerId,
        request: &RegisterRequest,
        known: Vec<KnownCell>,
        channel: ResponseChannel<RegisterResponse>,
    ) {
        let ok = self.merge_exchange(peer, &request.record, &request.known);
        match &ok {
            Ok(_) => self.membership.exchanged(peer),
            Err(e) => tracing::debug!(%peer, error = %e, "refused a registration"),
        }
        let kind = if request.kind == RequestKind::Sync { "sync" } else { "hello" };
        self.count_exchange(kind, "inbound", ok.is_ok());
        self.respond(channel, known);
    }

    /// Answers a request with our record and `known`.
    pub(super) fn respond(
        &mut self,
        channel: ResponseChannel<RegisterResponse>,
        known: Vec<KnownCell>,
    ) {
        let resp = RegisterResponse { record: self.local.record(false), known, alive: None };
        let _ = self.swarm.behaviour_mut().register.send_response(channel, resp);
    }

    pub(super) fn on_request(
        &mut self,
        peer: PeerId,
        request: RegisterRequest,
        channel: ResponseChannel<RegisterResponse>,
    ) {
        match request.kind {
            RequestKind::Hello => {
                // What we held before this request: if our record of the
                // requester is not one it made, it learns of its clone.
                let known = membership::known_records(&self.mesh, peer);
                self.merge_and_answer(peer, &request, known, channel);
            }
            RequestKind::Sync => {
                let local = (self.local.peer, self.local.seq);
                let (known, lacking) =
                    membership::answer_sync(&self.mesh, local, peer, &request.digest);
                self.merge_and_answer(peer, &request, known, channel);
                // The requester holds something we lack (a newer record, or
                // one under our own key: a clone): ask it back, so that one
                // exchange repairs both views.
                if lacking && self.membership.sync_due(peer, Instant::now()) {
                    self.send_sync(peer);
                }
            }
            RequestKind::Leave => {
                let record = match request.record.envelope {
                    // The leave it signed (it says `leaving` itself).
                    Some(_) => request
                        .record
                        .verified(&peer)
                        .inspect_err(|e| self.refused(peer, peer, e))
                        .ok(),
                    // An older cell: its word over its own connection.
                    None => Some(CellRecord { leaving: true, ..request.record }),
                };
                if let Some(record) = record.filter(|r| r.validate().is_ok() && r.leaving) {
                    self.merge_record(peer, &record, FoundBy::Inbound, true);
                }
                self.respond(channel, Vec::new());
            }
            RequestKind::Suspect => {
                match request.suspect.as_deref().and_then(|s| s.parse::<PeerId>().ok()) {
                    Some(suspect) => {
                        let actions = self.liveness.on_notice(
                            peer,
                            suspect,
                            request.incarnation,
                            self.local.seq,
                            Instant::now(),
                            Peers { links: &self.links, mesh: &self.mesh },
                        );
                        let checks = actions.iter().any(|a| {
                            matches!(a, liveness::Action::Probe { peer, .. } if *peer == suspect)
                        });
                        self.live(actions);
                        if checks {
                            // Answered with the probe's outcome.
                            self.held_notices
                                .entry(suspect)
                                .or_default()
                                .push((Instant::now(), channel));
                            return;
                        }
                    }
                    None => tracing::debug!(%peer, "a suspect notice without a valid peer id"),
                }
                self.respond(channel, Vec::new());
            }
        }
    }

    // ---- shutdown -------------------------------------------------------

    /// Answers the notices about `suspect` held for our probe of it.
    pub(super) fn answer_notices(&mut self, suspect: PeerId, alive: bool) {
        for (_, channel) in self.held_notices.remove(&suspect).unwrap_or_default() {
            let resp = RegisterResponse {
                record: self.local.record(false),
                known: Vec::new(),
                alive: Some(alive),
            };
            let _ = self.swarm.behaviour_mut().register.send_response(channel, resp);
        }
    }

    /// Tells every connected cell we are leaving and waits (briefly) for
    /// their acknowledgements, so they mark us left before our connections
    /// drop.
    pub(super) async fn leave(mut self) {
        self.local.bump();
        let record = self.local.record(true);
        let _ = self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), record.to_cbor());
        let peers: Vec<PeerId> = self.links.peers().collect();
        for peer in &peers {
            let req = RegisterRequest::new(RequestKind::Leave, record.clone());
            let id = self.swarm.behaviour_mut().register.send_request(peer, req);
            self.membership.sent(id, Request::Leave { peer: *peer });
        }
        tracing::info!(cells = peers.len(), "leaving the mesh");
        let deadline = tokio::time::sleep(LEAVE_WAIT);
        tokio::pin!(deadline);
        while !self.membership.leaves_pending().is_empty() {
            tokio::select! {
                _ = &mut deadline => {
                    let unacknowledged: Vec<String> =
                        self.membership.leaves_pending().iter().map(|p| p.to_base58()).collect();
                    tracing::warn!(?unacknowledged, "some cells did not acknowledge the leave");
                    break;
                }
                event = self.swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(BehaviourEvent::Register(e)) = event {
                        self.on_register(e);
                    }
                }
            }
        }
        for reply in self.membership.drain_replies() {
            let _ = reply.send(Err(CommandError::Stopped));
        }
    }
}
