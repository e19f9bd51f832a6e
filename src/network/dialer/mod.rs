//! Whom to dial, and when: the tie-break that makes one dial per pair
//! ([`DIAL_YIELD`]), redials of failed cells with backoff and give-up,
//! configured peers, cells heard of in records, and `POST /register`'s
//! dials with their replies. Clock-free: it returns [`Dial`]s for the node
//! to start and hears back how they went.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use super::addr::{dial_addrs, near, peer_of, with_hint};
use super::handle::{CommandError, RegisterOutcome};
use super::links::Links;
use super::overlay;
use crate::config::PeerAddr;
use crate::mesh::{FoundBy, MeshView};

/// How long a cell waits for a cell with a smaller peer id that found it
/// too to dial, before it dials itself (see [`Dialer::may_dial`]). Longer
/// than a handshake takes on a busy host (~2 s when 50 cells start on 2
/// cores); a cell that missed the mDNS answer learns of the other from the
/// records of the first cell it connects to, and dials then.
pub(crate) const DIAL_YIELD: Duration = Duration::from_secs(3);
/// Redial backoff for failed or configured peers.
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(500);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(2);
pub(crate) const CONFIG_RETRY_MAX: Duration = Duration::from_secs(30);
/// A failed cell is redialed for this long, then forgotten until it shows up.
pub(crate) const RETRY_GIVE_UP: Duration = Duration::from_secs(600);
/// A cell heard of only through another cell's records is looked up in the
/// DHT first; if that has not connected us within this time, its recorded
/// addresses are dialed directly.
pub(crate) const HEARSAY_DIAL_AFTER: Duration = Duration::from_secs(3);

/// A cell found by mDNS that no record has named is dialed (see
/// [`Dialer::dial_strangers`]) once it is this old and the view has held
/// still this long: while records still come in, they may name it. (One
/// second from being found, without the still view, was ~250 dials in the
/// second and third seconds of a start of 100 cells, whose records were
/// on their way.)
pub(crate) const STRANGER_AFTER: Duration = Duration::from_millis(1500);
/// A stranger dialed is not dialed again for this long.
pub(crate) const STRANGER_RETRY: Duration = Duration::from_secs(10);

/// The reply `POST /register` waits for.
pub(crate) type RegisterReply = oneshot::Sender<Result<RegisterOutcome, CommandError>>;

/// A dial for the node to start.
#[derive(Debug)]
pub(crate) struct Dial {
    /// The peer, when known (then only while disconnected and not dialing).
    pub(crate) peer: Option<PeerId>,
    /// Where; empty: wherever the swarm knows (Kademlia's addresses).
    pub(crate) addrs: Vec<Multiaddr>,
    /// Dial from a new port. Two cells that hear the same mDNS answer dial
    /// each other at once; with a reused port the kernel merges the
    /// sockets and Noise fails. Kademlia's dials keep the listen port:
    /// that is what lets NAT hole punching work.
    pub(crate) new_port: bool,
    /// Dial even while connected (a TCP link beside a QUIC one).
    pub(crate) while_connected: bool,
    /// What to remember of it; `None`: nobody waits for it.
    pub(crate) pending: Option<PendingDial>,
}

/// A dial we started and want to hear back from.
#[derive(Debug)]
pub(crate) struct PendingDial {
    pub(crate) origin: FoundBy,
    pub(crate) reply: Option<RegisterReply>,
    pub(crate) config_index: Option<usize>,
    pub(crate) addr: Option<Multiaddr>,
    /// A `/register` dial is given up at this time (its caller is told
    /// the address is unreachable, before its own timeout says less).
    pub(crate) deadline: Option<Instant>,
    /// A check of a neighbour whose connection closed: if it fails, the
    /// cell is gone (see [`Dialer::verify`]).
    pub(crate) verify: bool,
}

impl PendingDial {
    fn of(origin: FoundBy) -> Self {
        PendingDial {
            origin,
            reply: None,
            config_index: None,
            addr: None,
            deadline: None,
            verify: false,
        }
    }
}

/// What a failed dial was.
#[derive(Debug, Default)]
pub(crate) struct Failed {
    /// The address it went to, if it was ours.
    pub(crate) addr: Option<Multiaddr>,
    /// It checked a neighbour whose connection closed: the cell is gone.
    pub(crate) verify: bool,
}

/// What the tick asks for.
#[derive(Debug)]
pub(crate) enum Step {
    Dial(Dial),
    /// Resolve a configured peer's host name, then call [`Dialer::resolved`].
    Resolve {
        index: usize,
        host: String,
        port: u16,
    },
}

/// A peer from the configuration, redialed with backoff while not connected.
#[derive(Debug)]
struct Configured {
    addr: PeerAddr,
    peer: Option<PeerId>,
    /// A resolution or dial is under way.
    dialing: bool,
    next_attempt: Instant,
    backoff: Duration,
}

#[derive(Debug)]
struct Retry {
    next: Instant,
    backoff: Duration,
    since: Instant,
}

#[derive(Debug)]
pub(crate) struct Dialer {
    local: PeerId,
    pending: HashMap<ConnectionId, PendingDial>,
    /// Cells with a smaller peer id that we found (mDNS, records) and leave
    /// to dial us until then: one connection per pair, not two.
    yield_until: HashMap<PeerId, Instant>,
    retry: HashMap<PeerId, Retry>,
    configured: Vec<Configured>,
    /// When new ring neighbours are dialed.
    settle: overlay::Settle,
    /// Strangers dialed, and when (see [`Dialer::dial_strangers`]).
    strangers: HashMap<PeerId, Instant>,
}

impl Dialer {
    pub(crate) fn new(local: PeerId, peers: &[PeerAddr], now: Instant) -> Self {
        let configured = peers
            .iter()
            .map(|addr| Configured {
                addr: addr.clone(),
                peer: None,
                dialing: false,
                next_attempt: now,
                backoff: RETRY_MIN,
            })
            .collect();
        Self {
            local,
            pending: HashMap::new(),
            yield_until: HashMap::new(),
            retry: HashMap::new(),
            configured,
            settle: overlay::Settle::new(now, overlay::Settle::jitter_of(&local)),
            strangers: HashMap::new(),
        }
    }

    /// Two cells usually find each other at the same moment (one mDNS
    /// answer heard by both, or each other's records): the one with the
    /// smaller peer id dials, the other waits [`DIAL_YIELD`] for it. Half the
    /// handshakes, no duplicate to prune; when 50 cells start together that
    /// is what keeps the host's CPU from saturating.
    ///
    /// A cell with no connection and no dial under way (joining) dials at
    /// once: the cell it found may not know it.
    pub(crate) fn may_dial(&mut self, peer: PeerId, now: Instant, links: &Links) -> bool {
        if self.local < peer || (links.is_empty() && self.pending.is_empty()) {
            return true;
        }
        now >= *self.yield_until.entry(peer).or_insert(now + DIAL_YIELD)
    }

    /// A dial of `peer` at `addrs`, unless it is us, connected, or has no
    /// address.
    pub(crate) fn dial(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        origin: FoundBy,
        links: &Links,
    ) -> Option<Dial> {
        if peer == self.local || links.is_connected(&peer) || addrs.is_empty() {
            return None;
        }
        Some(Dial {
            peer: Some(peer),
            addrs: dial_addrs(addrs),
            new_port: true,
            while_connected: false,
            pending: Some(PendingDial::of(origin)),
        })
    }

    /// A Kademlia provider: dialed at the addresses the DHT gave the swarm.
    pub(crate) fn dial_provider(&self, peer: PeerId, links: &Links) -> Option<Dial> {
        if peer == self.local || links.is_connected(&peer) {
            return None;
        }
        Some(Dial {
            peer: Some(peer),
            addrs: Vec::new(),
            new_port: false,
            while_connected: false,
            pending: Some(PendingDial::of(FoundBy::Kad)),
        })
    }

    /// The connection to a neighbour closed and we did not close it: was it
    /// a crash, or did the neighbour close a link it no longer wants (its
    /// view differs)? Dial it at once: a crashed process's port refuses
    /// the dial within a round trip, and the node then fails the cell and
    /// tells the mesh; a live one answers, and the link is back.
    pub(crate) fn verify(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        links: &Links,
    ) -> Option<Dial> {
        let mut d = self.dial(peer, addrs, FoundBy::Gossip, links)?;
        if let Some(p) = d.pending.as_mut() {
            p.verify = true;
        }
        Some(d)
    }

    /// A TCP link to a cell linked only over QUIC (see `Links::tcp_upgrades`).
    pub(crate) fn dial_tcp_beside(&self, peer: PeerId, tcp: Vec<Multiaddr>) -> Dial {
        Dial { peer: Some(peer), addrs: tcp, new_port: true, while_connected: true, pending: None }
    }

    /// `POST /register`: dial `addr`, whoever answers, until `deadline`.
    pub(crate) fn register(
        &self,
        addr: Multiaddr,
        reply: RegisterReply,
        deadline: Instant,
    ) -> Dial {
        Dial {
            peer: None,
            addrs: vec![addr.clone()],
            new_port: true,
            while_connected: false,
            pending: Some(PendingDial {
                origin: FoundBy::Register,
                reply: Some(reply),
                config_index: None,
                addr: Some(addr),
                deadline: Some(deadline),
                verify: false,
            }),
        }
    }

    /// `/register` dials past their deadline: their callers are told the
    /// address is unreachable; returns the dials for the node to abort.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<ConnectionId> {
        let gone: Vec<ConnectionId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| now >= d))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            let Some(p) = self.pending.remove(id) else { continue };
            let target = p.addr.map(|a| a.to_string()).unwrap_or_default();
            if let Some(reply) = p.reply {
                let _ = reply.send(Err(CommandError::DialTimeout(with_hint(
                    format!(
                        "{target} is unreachable (timed out): nothing answered there; is a cell \
                         running, and is its libp2p port open in the firewall?"
                    ),
                    &target,
                ))));
            }
        }
        gone
    }

    /// The origin recorded for a cell the mesh knows.
    fn origin(mesh: &MeshView, peer: &PeerId) -> FoundBy {
        mesh.get(peer).map(|e| e.found_by).unwrap_or(FoundBy::Gossip)
    }

    /// Neighbours (see `overlay`) we believe alive (from mDNS or another
    /// cell's records) but are not connected to: dial them (those
    /// [`Dialer::may_dial`] lets us).
    pub(crate) fn dial_known(
        &mut self,
        now: Instant,
        mesh: &MeshView,
        links: &Links,
        nets: &[if_watch::IpNet],
        neighbours: &BTreeSet<PeerId>,
        deaf: bool,
    ) -> Vec<Dial> {
        let candidates: Vec<_> = mesh
            .unconnected_alive(HEARSAY_DIAL_AFTER, |a| near(nets, a))
            .filter(|(p, _)| neighbours.contains(p))
            .collect();
        if !self.neighbours_due(now, links, neighbours, deaf, !candidates.is_empty()) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (peer, addrs) in candidates {
            if out.len() < overlay::NEIGHBOUR_DIALS_AT_ONCE && self.may_dial(peer, now, links) {
                out.extend(self.dial(peer, addrs, Self::origin(mesh, &peer), links));
            }
        }
        out
    }

    /// Cells found by mDNS that none of the cells our links reach has
    /// heard of ([`MeshView::strangers`]) are dialed once the view holds
    /// still ([`STRANGER_AFTER`] plus the cell's share of
    /// [`overlay::NEIGHBOURS_JITTER`]), ring neighbours or not, and whichever
    /// peer id is smaller: they are in
    /// another part of the mesh (cells that started together and found only
    /// each other), and one link joins the two parts (its record exchange
    /// is relayed to both). A cell with no link leaves this to its joining
    /// dial.
    pub(crate) fn dial_strangers(
        &mut self,
        now: Instant,
        mesh: &MeshView,
        links: &Links,
    ) -> Vec<Dial> {
        self.strangers.retain(|_, at| now.saturating_duration_since(*at) < STRANGER_RETRY);
        if links.is_empty() {
            return Vec::new();
        }
        // Dialing them sooner (3 s after they were found, the view still
        // growing) was ~600 more connections at a start of 100 cells, and
        // the load raised ~200 false suspicions.
        // Plus the cell's own share of the jitter: the cells of one part
        // found the same cells of another (the ones answering mDNS); the
        // first to dial joins the parts, and the others learn the strangers'
        // records before their turn. (Without it, a cell answering mDNS
        // held 31 links at the convergence of 100 cells.)
        if self.settle.still_for(now) < STRANGER_AFTER + self.settle.jitter() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (peer, addrs) in mesh.strangers(now, STRANGER_AFTER) {
            if out.len() >= overlay::NEIGHBOUR_DIALS_AT_ONCE {
                break;
            }
            if self.strangers.contains_key(&peer) {
                continue;
            }
            if let Some(dial) = self.dial(peer, addrs, FoundBy::Mdns, links) {
                self.strangers.insert(peer, now);
                out.push(dial);
            }
        }
        out
    }

    /// Whether dials of new neighbours go out now (see `overlay::Settle`):
    /// a cell with no link and no dial under way (joining) dials at once.
    pub(crate) fn neighbours_due(
        &mut self,
        now: Instant,
        links: &Links,
        neighbours: &BTreeSet<PeerId>,
        deaf: bool,
        wanted: bool,
    ) -> bool {
        self.settle.due(neighbours, links.count() + self.pending.len(), deaf, wanted, now)
    }

    /// Every tick: failed cells that would be our neighbours redialed with
    /// backoff for a while (heals partitions: each failed cell is tried by
    /// its few neighbours, not by every cell), and configured peers not
    /// connected.
    pub(crate) fn on_tick(&mut self, now: Instant, mesh: &MeshView, links: &Links) -> Vec<Step> {
        let mut out = Vec::new();
        let members = mesh.members();
        let failed: Vec<PeerId> = mesh
            .failed()
            .filter(|p| {
                let mut with = members.clone();
                with.insert(*p);
                overlay::neighbours(self.local, &with).contains(p)
            })
            .collect();
        for peer in failed {
            let r = self.retry.entry(peer).or_insert(Retry {
                next: now,
                backoff: RETRY_MIN,
                since: now,
            });
            if now < r.next || now.duration_since(r.since) > RETRY_GIVE_UP {
                continue;
            }
            r.next = now + r.backoff;
            r.backoff = (r.backoff * 2).min(RETRY_MAX);
            let dial = self.dial(peer, mesh.addrs_of(&peer), Self::origin(mesh, &peer), links);
            out.extend(dial.map(Step::Dial));
        }
        for index in 0..self.configured.len() {
            let c = &mut self.configured[index];
            let connected = c.peer.is_some_and(|p| links.is_connected(&p));
            if connected || c.dialing || now < c.next_attempt {
                continue;
            }
            c.dialing = true;
            c.next_attempt = now + c.backoff;
            c.backoff = (c.backoff * 2).min(CONFIG_RETRY_MAX);
            match &c.addr {
                PeerAddr::Multiaddr(m) => {
                    let m = m.clone();
                    out.extend(self.resolved(index, Ok(vec![m])).map(Step::Dial));
                }
                PeerAddr::Host { host, port } => {
                    out.push(Step::Resolve { index, host: host.clone(), port: *port })
                }
            }
        }
        out
    }

    /// A configured peer's addresses (resolved, or why not): dial them.
    pub(crate) fn resolved(
        &mut self,
        index: usize,
        addrs: Result<Vec<Multiaddr>, String>,
    ) -> Option<Dial> {
        let c = self.configured.get_mut(index)?;
        let addrs = match addrs {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                c.dialing = false;
                return None;
            }
            Err(e) => {
                tracing::warn!(peer = %c.addr, error = %e, "configured peer does not resolve");
                c.dialing = false;
                return None;
            }
        };
        let addr = addrs[0].clone();
        let pending = PendingDial {
            origin: FoundBy::Config,
            reply: None,
            config_index: Some(index),
            addr: Some(addr.clone()),
            deadline: None,
            verify: false,
        };
        // Without a peer id the node dials the first address, whoever answers.
        Some(Dial {
            peer: c.peer.or_else(|| peer_of(&addr)),
            addrs,
            new_port: true,
            while_connected: false,
            pending: Some(pending),
        })
    }

    /// The peer ids of configured peers we have reached.
    pub(crate) fn configured_peers(&self) -> HashSet<PeerId> {
        self.configured.iter().filter_map(|c| c.peer).collect()
    }

    /// The swarm took a dial: remember it under its connection id.
    pub(crate) fn started(&mut self, id: ConnectionId, pending: PendingDial) {
        self.pending.insert(id, pending);
    }

    /// The swarm refused a dial at once (already dialing, say).
    pub(crate) fn not_started(&mut self, pending: PendingDial, error: &str) {
        if let Some(reply) = pending.reply {
            let target = pending.addr.map(|a| a.to_string()).unwrap_or_default();
            let _ = reply
                .send(Err(CommandError::Unreachable(format!("cannot dial {target}: {error}"))));
        }
        if let Some(c) = pending.config_index.and_then(|i| self.configured.get_mut(i)) {
            tracing::debug!(peer = %c.addr, error, "not dialing configured peer");
            c.dialing = false;
        }
    }

    /// A connection to `peer` came up. Returns how it was found (ours, or
    /// another dialer's: a Kademlia query reaching a cell it was told
    /// about) and the reply waiting for it.
    pub(crate) fn established(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        dialer: bool,
    ) -> (FoundBy, Option<RegisterReply>) {
        self.yield_until.remove(&peer);
        let Some(p) = self.pending.remove(&id) else {
            return (if dialer { FoundBy::Kad } else { FoundBy::Inbound }, None);
        };
        if let Some(c) = p.config_index.and_then(|i| self.configured.get_mut(i)) {
            c.peer = Some(peer);
            c.dialing = false;
            c.backoff = RETRY_MIN;
            tracing::info!(peer = %c.addr, %peer, "connected to configured peer");
        }
        (p.origin, p.reply)
    }

    /// A dial failed: answer whoever waits, and explain a configured peer.
    pub(crate) fn failed(&mut self, id: ConnectionId, reason: &str) -> Failed {
        let Some(p) = self.pending.remove(&id) else { return Failed::default() };
        let target = p.addr.as_ref().map(|a| a.to_string()).unwrap_or_default();
        if let Some(reply) = p.reply {
            let _ = reply.send(Err(CommandError::Unreachable(with_hint(
                format!("cannot reach a cell at {target}: {reason}"),
                &target,
            ))));
        }
        if let Some(c) = p.config_index.and_then(|i| self.configured.get_mut(i)) {
            c.dialing = false;
            let msg = with_hint(
                format!("cannot reach configured peer {}: {reason}", c.addr),
                &c.addr.to_string(),
            );
            tracing::warn!(retry_in = ?c.backoff, "{msg}");
        }
        Failed { addr: p.addr, verify: p.verify }
    }

    /// `peer` is alive again, or was found anew: redial it at once when
    /// it fails next, not after the backoff it had.
    pub(crate) fn forget_retry(&mut self, peer: &PeerId) {
        self.retry.remove(peer);
    }
}

#[cfg(test)]
mod tests;
