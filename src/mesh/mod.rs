//! The mesh view: one table of every known cell, keyed by peer id, and the
//! rules for merging what the network tells us into it.
//!
//! The network node owns the table and publishes an immutable [`Snapshot`] of it
//! through a `watch` channel; HTTP and metrics read that snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

mod snapshot;

pub use snapshot::{LocalState, MeshEvent, Snapshot};

use crate::network::addr::strip_p2p;
use crate::network::protocol::{CellRecord, Service};

/// How we first learned of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FoundBy {
    /// Our mDNS heard it.
    Mdns,
    /// `POST /register` named it.
    Register,
    /// It is in the configured peers (`AIOS_NETWORK_PEERS`).
    Config,
    /// It dialed us without our discovering it (a js-libp2p peer, say).
    Inbound,
    /// Another cell told us about it (gossip or a record exchange).
    Gossip,
    /// We were connected to it before a restart (the state file).
    Rejoin,
    /// Kademlia: a provider of the mesh topic, or a peer a routing query
    /// connected us to (cells beyond the LAN).
    Kad,
}

/// What we believe about a cell's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Alive,
    /// Its connection dropped or stopped answering, without a leave notice.
    Failed,
    /// It told us it was shutting down.
    Left,
}

impl PeerState {
    pub const ALL: [PeerState; 3] = [PeerState::Alive, PeerState::Failed, PeerState::Left];

    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Alive => "alive",
            PeerState::Failed => "failed",
            PeerState::Left => "left",
        }
    }
}

/// One row of the table, as `GET /peers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerEntry {
    pub peer_id: String,
    /// Unknown until the cell's first record arrives.
    pub cell_id: Option<String>,
    pub branch: Option<String>,
    pub consciousness_level: Option<f64>,
    /// Sequence number of the newest record merged.
    pub seq: u64,
    pub addresses: Vec<String>,
    pub found_by: FoundBy,
    pub connected: bool,
    pub state: PeerState,
    /// Last ping round trip, milliseconds.
    pub rtt_ms: Option<f64>,
    /// Last time we heard from or about it, Unix milliseconds.
    pub last_seen_ms: u64,
    pub agent: Option<String>,
    /// Connected only through a circuit relay (no direct link yet).
    pub relayed: bool,
    /// Suspected: a cell's check of it went unanswered and the suspicion
    /// has not timed out nor been refuted. It still counts as alive.
    pub suspect: bool,
    /// Its tags, from its newest record (`{}` before the first, and for
    /// cells older than tags).
    pub tags: BTreeMap<String, String>,
    /// Its services and their status as it last checked them, from its
    /// newest record.
    pub services: Vec<Service>,
    /// The addresses its newest record lists, in its order (where
    /// `/services` and `/sd/prometheus` take its address from).
    #[serde(skip)]
    pub record_addrs: Vec<String>,
}

/// Why a cell cannot be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForgetError {
    #[error("no such cell is known")]
    Unknown,
    #[error("the cell is alive or connected: only a failed or left cell can be forgotten")]
    Alive,
}

/// Result of merging a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// A cell we did not know.
    New,
    /// A newer record of a known cell.
    Updated,
    /// Same or older `seq` than what we have: ignored.
    Stale,
    /// The record claims a `cell_id` bound to another live cell (this one's
    /// own included): rejected.
    Conflict,
}

/// A state change worth telling the log (and, later, event subscribers).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub peer: PeerId,
    pub from: Option<PeerState>,
    pub to: PeerState,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The table of known cells.
#[derive(Debug, Default)]
pub struct MeshView {
    peers: BTreeMap<PeerId, Row>,
    /// Which peer first announced each `cell_id`. Another peer claiming it
    /// is refused while the owner is alive; once the owner has left or
    /// failed, a new peer may take the name (a reinstalled machine).
    claims: HashMap<String, PeerId>,
}

#[derive(Debug, Clone)]
struct Row {
    /// What `/peers` shows of it, shared with the snapshots taken since it
    /// last changed (a change copies it once: [`Row::entry_mut`]).
    entry: Arc<PeerEntry>,
    addrs: BTreeSet<Multiaddr>,
    /// We have been connected to it or heard from it directly: its
    /// `cell_joined` has been announced. Rows made by discovery alone have not.
    joined: bool,
    /// When the row was made (hearsay rows are dialed only after a while).
    created: std::time::Instant,
    /// We have had a connection to it.
    ever_connected: bool,
    /// Its latest record as it signed it (what exchanges relay); `None`
    /// for a cell older than signed records.
    signed: Option<CellRecord>,
}

impl Row {
    /// The entry, to change: copied first if a snapshot still shares it.
    /// (A snapshot of N cells is N pointers; a start among N cells takes
    /// ~N snapshots, which as deep copies were O(N²) per cell, a fifth of
    /// a cell's start-up CPU at 100 cells.)
    fn entry_mut(&mut self) -> &mut PeerEntry {
        Arc::make_mut(&mut self.entry)
    }

    /// Adds addresses; the row's `addresses` (as `/peers` shows them) are
    /// written again only when one is new: snapshots, taken after every
    /// burst of events, clone them instead of formatting every address.
    fn add_addrs(&mut self, addrs: impl IntoIterator<Item = Multiaddr>) {
        let mut new = false;
        for a in addrs {
            new |= self.addrs.insert(a);
        }
        if new {
            self.entry_mut().addresses = self.addrs.iter().map(|a| a.to_string()).collect();
        }
    }

    /// Alive, known only from other cells' records, never connected.
    fn is_hearsay(&self) -> bool {
        self.entry.state == PeerState::Alive
            && !self.ever_connected
            && self.entry.found_by == FoundBy::Gossip
    }

    /// The record this row holds, as an exchange passes it on.
    fn record(&self) -> Option<CellRecord> {
        if let Some(signed) = &self.signed {
            return Some(signed.clone());
        }
        let e = &self.entry;
        Some(CellRecord {
            cell_id: e.cell_id.clone()?,
            level: e.consciousness_level?,
            branch: e.branch.clone().unwrap_or_default(),
            seq: e.seq,
            at_ms: e.last_seen_ms,
            addrs: self
                .addrs
                .iter()
                .take(crate::network::protocol::MAX_ADDRS)
                .map(|a| a.to_string())
                .collect(),
            agent: e.agent.clone().unwrap_or_default(),
            leaving: e.state == PeerState::Left,
            tags: e.tags.clone(),
            services: e.services.clone(),
            envelope: None,
        })
    }
}

impl MeshView {
    /// A view in which `own_cell_id` belongs to `own_peer`.
    pub fn new(own_peer: PeerId, own_cell_id: &str) -> Self {
        let mut claims = HashMap::new();
        claims.insert(own_cell_id.to_owned(), own_peer);
        MeshView { peers: BTreeMap::new(), claims }
    }

    /// Who holds `cell_id`, if another live peer than `peer` does.
    pub fn claimed_by_other(&self, peer: PeerId, cell_id: &str) -> Option<PeerId> {
        let owner = *self.claims.get(cell_id)?;
        if owner == peer {
            return None;
        }
        match self.peers.get(&owner) {
            // The owner is gone: the name is free again.
            Some(row) if row.entry.state != PeerState::Alive => None,
            _ => Some(owner),
        }
    }

    fn row(&mut self, peer: PeerId, found: FoundBy) -> &mut Row {
        self.peers.entry(peer).or_insert_with(|| Row {
            entry: Arc::new(PeerEntry {
                peer_id: peer.to_base58(),
                cell_id: None,
                branch: None,
                consciousness_level: None,
                seq: 0,
                addresses: Vec::new(),
                found_by: found,
                connected: false,
                state: PeerState::Alive,
                rtt_ms: None,
                last_seen_ms: now_ms(),
                agent: None,
                relayed: false,
                suspect: false,
                tags: BTreeMap::new(),
                services: Vec::new(),
                record_addrs: Vec::new(),
            }),
            addrs: BTreeSet::new(),
            joined: false,
            created: std::time::Instant::now(),
            ever_connected: false,
            signed: None,
        })
    }

    fn set_state(row: &mut Row, peer: PeerId, to: PeerState) -> Option<Transition> {
        let from = row.entry.state;
        row.entry_mut().state = to;
        if to != PeerState::Alive {
            row.entry_mut().suspect = false;
        }
        (from != to).then_some(Transition { peer, from: Some(from), to })
    }

    /// Notes a peer we learned of but have not heard from (mDNS, config).
    /// Returns true when it was not in the table.
    pub fn discovered(&mut self, peer: PeerId, addrs: &[Multiaddr], found: FoundBy) -> bool {
        let known = self.peers.contains_key(&peer);
        let row = self.row(peer, found);
        row.add_addrs(addrs.iter().map(strip_p2p));
        !known
    }

    /// A connection to `peer` is up: it is alive.
    pub fn connected(
        &mut self,
        peer: PeerId,
        addr: Option<&Multiaddr>,
        found: FoundBy,
    ) -> Option<Transition> {
        let row = self.row(peer, found);
        if !row.ever_connected && row.entry.found_by == FoundBy::Gossip {
            // Only heard of through the mesh until now (its records): what
            // made the first connection is how it was found.
            row.entry_mut().found_by = found;
        }
        row.ever_connected = true;
        row.entry_mut().connected = true;
        row.entry_mut().last_seen_ms = now_ms();
        if let Some(a) = addr {
            row.add_addrs([strip_p2p(a)]);
        }
        if !row.joined {
            row.joined = true;
            row.entry_mut().state = PeerState::Alive;
            return Some(Transition { peer, from: None, to: PeerState::Alive });
        }
        if row.entry.state == PeerState::Left {
            // A late connection from a cell that is shutting down must not
            // revive it; a restarted cell proves itself with a newer record
            // in the record exchange that follows.
            return None;
        }
        Self::set_state(row, peer, PeerState::Alive)
    }

    /// The last connection to `peer` closed. That alone says nothing of
    /// its state: cells hold links to a few neighbours only, and close the
    /// others; the failure detector decides (a crash is checked by a dial).
    pub fn disconnected(&mut self, peer: PeerId) {
        if let Some(row) = self.peers.get_mut(&peer) {
            row.entry_mut().connected = false;
        }
    }

    /// `peer` stopped answering (ping failed, dial failed): failed, unless it left.
    pub fn unreachable(&mut self, peer: PeerId) -> Option<Transition> {
        let row = self.peers.get_mut(&peer)?;
        if row.entry.state == PeerState::Left {
            return None;
        }
        Self::set_state(row, peer, PeerState::Failed)
    }

    /// Marks `peer` suspected or not (an alive cell only). Returns whether
    /// that changed.
    pub fn set_suspect(&mut self, peer: PeerId, on: bool) -> bool {
        let Some(row) = self.peers.get_mut(&peer) else { return false };
        let on = on && row.entry.state == PeerState::Alive;
        let changed = row.entry.suspect != on;
        row.entry_mut().suspect = on;
        changed
    }

    /// A ping or probe answered. A connected cell counted failed for its silence
    /// is alive again (unless it left).
    pub fn rtt(&mut self, peer: PeerId, rtt: Duration) -> Option<Transition> {
        let row = self.peers.get_mut(&peer)?;
        row.entry_mut().rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
        row.entry_mut().last_seen_ms = now_ms();
        if row.entry.connected && row.entry.state == PeerState::Failed {
            return Self::set_state(row, peer, PeerState::Alive);
        }
        None
    }

    /// Identify told us the peer's agent and listen addresses.
    pub fn identified(&mut self, peer: PeerId, agent: &str, addrs: &[Multiaddr]) {
        if let Some(row) = self.peers.get_mut(&peer) {
            row.entry_mut().agent = Some(agent.to_owned());
            row.add_addrs(addrs.iter().map(strip_p2p));
        }
    }

    /// Whether [`MeshView::merge`] would find a record of `peer` at `seq`
    /// stale: we hold that version or a newer one, or (`direct` false) the
    /// cell speaks to us itself. Such a record need not have its signature
    /// checked.
    pub fn holds(&self, peer: &PeerId, seq: u64, direct: bool) -> bool {
        self.peers.get(peer).is_some_and(|r| seq <= r.entry.seq || (!direct && r.entry.connected))
    }

    /// Merges a record authored by `peer`. A newer `seq` wins; the same or an
    /// older one is ignored. `direct` says the author itself sent it (gossip
    /// source or request-response peer) rather than a third party.
    pub fn merge(
        &mut self,
        peer: PeerId,
        record: &CellRecord,
        found: FoundBy,
        direct: bool,
    ) -> (Merge, Option<Transition>) {
        if self.claimed_by_other(peer, &record.cell_id).is_some() {
            return (Merge::Conflict, None);
        }
        let known = self.peers.contains_key(&peer);
        // The same or an older record; or a third party's word about a
        // cell that speaks to us itself (its own records win).
        if self.holds(&peer, record.seq, direct) {
            return (Merge::Stale, None);
        }
        self.claims.retain(|_, owner| *owner != peer);
        self.claims.insert(record.cell_id.clone(), peer);
        let row = self.row(peer, found);
        let entry = row.entry_mut();
        entry.cell_id = Some(record.cell_id.clone());
        entry.branch = Some(record.branch.clone());
        entry.consciousness_level = Some(record.level);
        entry.seq = record.seq;
        entry.tags.clone_from(&record.tags);
        entry.services.clone_from(&record.services);
        entry.record_addrs.clone_from(&record.addrs);
        // An unsigned record (an older cell) replaces the signed one too:
        // relaying the older signed one would spread stale news.
        row.signed = record.envelope.is_some().then(|| record.clone());
        row.add_addrs(record.addrs.iter().filter_map(|a| a.parse().ok()).map(|a| strip_p2p(&a)));
        if direct && !record.agent.is_empty() {
            row.entry_mut().agent = Some(record.agent.clone());
        }
        row.entry_mut().last_seen_ms = now_ms();
        // A record signed by its author (checked before it gets here) is
        // the author's word wherever it comes from: a newer one says the
        // cell was there after what we knew (a refutation that missed us
        // by gossip, repaired by a sync), as SWIM's alive message with a
        // higher incarnation does. An unsigned one (an older cell) counts
        // only from the cell itself.
        let authored = direct || record.envelope.is_some();
        let to = if record.leaving && authored {
            PeerState::Left
        } else if authored || row.entry.connected {
            PeerState::Alive
        } else {
            // A third party's unsigned news of a cell we are not connected
            // to does not prove it is alive now; keep what we believed (new
            // rows start alive and get dialed, which settles it).
            row.entry.state
        };
        let merge = if known { Merge::Updated } else { Merge::New };
        if !row.joined {
            row.joined = true;
            row.entry_mut().state = to;
            return (merge, Some(Transition { peer, from: None, to }));
        }
        (merge, Self::set_state(row, peer, to))
    }

    /// The author and `seq` of every record held (a `sync` digest).
    pub fn digest(&self) -> impl Iterator<Item = (PeerId, u64)> + '_ {
        self.peers.iter().filter(|(_, r)| r.entry.cell_id.is_some()).map(|(p, r)| (*p, r.entry.seq))
    }

    /// The `seq` of the record held for `peer`, as `digest` lists it.
    pub fn seq_of(&self, peer: &PeerId) -> Option<u64> {
        self.peers.get(peer).filter(|r| r.entry.cell_id.is_some()).map(|r| r.entry.seq)
    }

    /// The records for alive peers that are newer than what `held` says
    /// the asker holds, or that it lacks (the answer to a `sync`).
    pub fn newer_than<'a>(
        &'a self,
        held: &'a HashMap<PeerId, u64>,
    ) -> impl Iterator<Item = (PeerId, CellRecord)> + 'a {
        self.alive_records().filter(|(p, r)| held.get(p).is_none_or(|seq| r.seq > *seq))
    }

    /// Records for the peers we believe alive, as their authors signed
    /// them, for a record exchange (a record relayed unsigned is refused, so
    /// cells older than signed records are left out).
    pub fn alive_records(&self) -> impl Iterator<Item = (PeerId, CellRecord)> + '_ {
        self.peers.iter().filter_map(|(peer, row)| {
            (row.entry.state == PeerState::Alive).then(|| Some((*peer, row.signed.clone()?)))?
        })
    }

    /// Forgets a cell that is gone for good (Serf's `force-leave`): its row
    /// and the name it held. Only a failed or left cell, not connected, is
    /// forgotten; a record of it that comes later makes it known again.
    pub fn forget(&mut self, peer: &PeerId) -> Result<(), ForgetError> {
        let row = self.peers.get(peer).ok_or(ForgetError::Unknown)?;
        if row.entry.state == PeerState::Alive || row.entry.connected {
            return Err(ForgetError::Alive);
        }
        self.peers.remove(peer);
        self.claims.retain(|_, owner| owner != peer);
        Ok(())
    }

    /// Forgets failed and left cells, not connected, not heard of since
    /// `before_ms` (Unix ms). Returns them.
    pub fn reap(&mut self, before_ms: u64) -> Vec<PeerId> {
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, r)| {
                r.entry.state != PeerState::Alive
                    && !r.entry.connected
                    && r.entry.last_seen_ms < before_ms
            })
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.peers.remove(p);
            self.claims.retain(|_, owner| owner != p);
        }
        gone
    }

    /// The record held for `peer`, whatever its state: `leaving` when it
    /// left (an exchange shows a cell what the mesh believes of it).
    pub fn record_of(&self, peer: &PeerId) -> Option<CellRecord> {
        self.peers.get(peer).and_then(Row::record)
    }

    /// Peers believed alive but not connected: candidates to dial.
    /// Cells known only from records (`FoundBy::Gossip`, never connected)
    /// are left out until `hearsay_after` has passed, giving routed
    /// discovery (Kademlia) the first try, unless `near` says one of their
    /// addresses is on a network of ours (a neighbour mDNS missed: no DHT
    /// can do better than a dial).
    pub fn unconnected_alive<'a>(
        &'a self,
        hearsay_after: std::time::Duration,
        near: impl Fn(&Multiaddr) -> bool + 'a,
    ) -> impl Iterator<Item = (PeerId, Vec<Multiaddr>)> + 'a {
        self.peers
            .iter()
            .filter(move |(_, row)| {
                row.entry.state == PeerState::Alive
                    && !row.entry.connected
                    && !row.addrs.is_empty()
                    && (!row.is_hearsay()
                        || row.created.elapsed() >= hearsay_after
                        || row.addrs.iter().any(&near))
            })
            .map(|(p, row)| (*p, row.addrs.iter().cloned().collect()))
    }

    /// Cells found (by mDNS) at least `after` before `now` that we have
    /// neither linked to nor heard a record of: none of the cells our links
    /// reach knows them, so they are in another part of the mesh (cells
    /// that started together and found only each other). With addresses.
    pub fn strangers(
        &self,
        now: std::time::Instant,
        after: std::time::Duration,
    ) -> impl Iterator<Item = (PeerId, Vec<Multiaddr>)> + '_ {
        self.peers
            .iter()
            .filter(move |(_, row)| {
                row.entry.state == PeerState::Alive
                    && !row.joined
                    && !row.entry.connected
                    && !row.addrs.is_empty()
                    && now.saturating_duration_since(row.created) >= after
            })
            .map(|(p, row)| (*p, row.addrs.iter().cloned().collect()))
    }

    /// Whether some alive cell is known only from records (never connected)
    /// and has no address that `near` accepts: a cell beyond what mDNS and
    /// our connections found, which the DHT may find.
    pub fn has_hearsay(&self, near: impl Fn(&Multiaddr) -> bool) -> bool {
        self.peers.values().any(|r| r.is_hearsay() && !r.addrs.iter().any(&near))
    }

    /// The cells alive in this view (this one excluded): the ring the
    /// overlay is drawn on.
    pub fn members(&self) -> BTreeSet<PeerId> {
        self.peers
            .iter()
            .filter(|(_, r)| r.entry.state == PeerState::Alive)
            .map(|(p, _)| *p)
            .collect()
    }

    /// The cells the overlay's ring is drawn on: those alive, and those
    /// failed but heard of within `recent_ms` before `now_ms` (a cell
    /// failed for a moment keeps its place, so that its neighbours' links
    /// do not all move and move back).
    pub fn ring(&self, now_ms: u64, recent_ms: u64) -> BTreeSet<PeerId> {
        self.peers
            .iter()
            .filter(|(_, r)| {
                r.entry.state == PeerState::Alive
                    || (r.entry.state == PeerState::Failed
                        && now_ms.saturating_sub(r.entry.last_seen_ms) < recent_ms)
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether any other cell is alive in this view.
    pub fn has_members(&self) -> bool {
        self.peers.values().any(|r| r.entry.state == PeerState::Alive)
    }

    /// Peers marked failed and not connected: candidates to redial.
    pub fn failed(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers
            .iter()
            .filter(|(_, r)| r.entry.state == PeerState::Failed && !r.entry.connected)
            .map(|(p, _)| *p)
    }

    /// Addresses we know for `peer`.
    pub fn addrs_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers.get(peer).map(|r| r.addrs.iter().cloned().collect()).unwrap_or_default()
    }

    pub fn get(&self, peer: &PeerId) -> Option<&PeerEntry> {
        self.peers.get(peer).map(|r| &*r.entry)
    }

    /// Whether the mesh vouches for `peer`: alive here, and known from its
    /// record (its own, or relayed), not only from an mDNS answer. A dial
    /// of such a cell that fails here says less than that: the cells
    /// linked to it are its judges.
    pub fn vouched(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|r| r.entry.state == PeerState::Alive && r.entry.cell_id.is_some())
    }

    pub fn state_of(&self, peer: &PeerId) -> Option<PeerState> {
        self.peers.get(peer).map(|r| r.entry.state)
    }

    /// Rows as `GET /peers` shows them, sorted by peer id; `relayed` says
    /// whether a cell is linked through relays only.
    pub fn entries(&self, relayed: impl Fn(&PeerId) -> bool) -> Vec<Arc<PeerEntry>> {
        self.peers
            .iter()
            .map(|(p, r)| {
                let relayed = relayed(p);
                if relayed == r.entry.relayed {
                    Arc::clone(&r.entry)
                } else {
                    Arc::new(PeerEntry { relayed, ..(*r.entry).clone() })
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
