//! The failure detector, clock-free: which cell this one watches (its ring
//! successor), by UDP beats or by TCP probes, what an overdue beat or an
//! unanswered probe leads to (suspect, verify, fail), when a failed but
//! still connected cell is disconnected, and local health ([`health`]).
//!
//! It takes events and `now`, sees the mesh through [`Peers`], and returns
//! [`Action`]s for the node to carry out in order. The probe and beat IO
//! lives in `probe.rs` and `beat.rs`.

pub(crate) mod health;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use self::health::{Health, Verdict};
use super::links::Links;
use super::probe::{self, Outcome, Purpose};
use crate::mesh::{MeshView, PeerState};

/// A watched cell whose beats have not started this long after we
/// subscribed is probed over TCP instead (UDP does not get through).
pub(crate) const FIRST_BEAT_WAIT: Duration = Duration::from_secs(3);
/// How long a cell failed for not answering probes keeps its connections
/// (a slow cell answers again without a new handshake).
pub(crate) const SILENT_CLOSE_AFTER: Duration = Duration::from_secs(10);

/// What the failure detector needs to know of the mesh: who is connected,
/// and who is alive.
#[derive(Clone, Copy)]
pub(crate) struct Peers<'a> {
    pub(crate) links: &'a Links,
    pub(crate) mesh: &'a MeshView,
}

impl Peers<'_> {
    fn alive(&self, p: &PeerId) -> bool {
        self.links.is_connected(p) && self.mesh.state_of(p) == Some(PeerState::Alive)
    }
}

/// What the node should do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Probe `peer` over TCP, waiting `timeout` for the echo.
    Probe { peer: PeerId, purpose: Purpose, timeout: Duration },
    /// `peer` did not answer: a suspicion starts (log, count).
    Suspected { peer: PeerId, wait: Duration },
    /// Ask `to` to check `suspect` itself.
    Notify { to: PeerId, suspect: PeerId },
    /// `peer` is failed: a check went unanswered.
    Fail(PeerId),
    /// `peer` was failed for its silence and stayed silent: close its links.
    Disconnect(PeerId),
    /// Subscribe to `peer`'s beats (ending any other subscription).
    WatchBeats(PeerId),
    /// End the beat subscription.
    UnwatchBeats,
}

/// How the watched cell (the ring successor) is watched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Watch {
    /// Nobody to watch.
    Idle,
    /// TCP probes every interval (beats off, refused or not arriving).
    Probe { peer: PeerId },
    /// Subscribed to its beats, none yet: TCP probes meanwhile.
    Awaiting { peer: PeerId, since: Instant },
    /// Its beats arrive; the last at `last`, the next overdue at `due`
    /// (none while the cell is not alive: the next beat sets it again).
    Beating { peer: PeerId, last: Instant, due: Option<Instant> },
}

impl Watch {
    pub(crate) fn peer(&self) -> Option<PeerId> {
        match *self {
            Watch::Idle => None,
            Watch::Probe { peer } | Watch::Awaiting { peer, .. } | Watch::Beating { peer, .. } => {
                Some(peer)
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) probe_interval: Duration,
    pub(crate) probe_timeout: Duration,
    /// A beat task runs (UDP beats on).
    pub(crate) beats: bool,
}

#[derive(Debug)]
pub(crate) struct Liveness {
    local: PeerId,
    config: Config,
    watch: Watch,
    health: Health,
    /// Connected cells failed for their silence, and since when: probed
    /// every interval until they answer (alive again) or
    /// [`SILENT_CLOSE_AFTER`] passes (then disconnected and redialed).
    silent_since: HashMap<PeerId, Instant>,
    /// Cells whose beats do not reach us: watched by TCP probes.
    no_beats: HashSet<PeerId>,
    /// Peers that do not speak the probe protocol (another implementation):
    /// left out of the ring, and failed when a ping fails instead.
    no_probe: HashSet<PeerId>,
}

impl Liveness {
    pub(crate) fn new(local: PeerId, config: Config, tick: Duration, now: Instant) -> Self {
        Self {
            local,
            config,
            watch: Watch::Idle,
            health: Health::new(tick, now),
            silent_since: HashMap::new(),
            no_beats: HashSet::new(),
            no_probe: HashSet::new(),
        }
    }

    pub(crate) fn watch(&self) -> Watch {
        self.watch
    }

    /// Local health, 0 (healthy) to [`health::MAX_STRAIN`].
    pub(crate) fn health_score(&self) -> u32 {
        self.health.score()
    }

    /// How long a probe waits for its echo: the configured timeout,
    /// stretched by this cell's local health.
    pub(crate) fn probe_wait(&self) -> Duration {
        self.health.wait(self.config.probe_timeout)
    }

    /// When the watched cell's next beat is overdue (its last beat plus the
    /// interval plus the probe wait): it is suspected then, to the
    /// millisecond, not at the next probe round.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.watch {
            Watch::Beating { due, .. } => due,
            _ => None,
        }
    }

    /// Whether `peer` takes part in probing (it speaks the protocol).
    pub(crate) fn probes(&self, peer: &PeerId) -> bool {
        !self.no_probe.contains(peer)
    }

    fn probe(&self, peer: PeerId, purpose: Purpose) -> Action {
        Action::Probe { peer, purpose, timeout: self.probe_wait() }
    }

    /// The loop's regular tick: local health, and silent cells closed.
    pub(crate) fn on_tick(&mut self, now: Instant) -> (Option<Duration>, Vec<Action>) {
        let late = self.health.on_tick(now);
        let stale: Vec<PeerId> = self
            .silent_since
            .iter()
            .filter(|(_, at)| now.duration_since(**at) > SILENT_CLOSE_AFTER)
            .map(|(p, _)| *p)
            .collect();
        let mut out = Vec::new();
        for peer in stale {
            self.silent_since.remove(&peer);
            out.push(Action::Disconnect(peer));
        }
        self.health.ease(now);
        (late, out)
    }

    /// Every probe interval: pick the ring successor among the live,
    /// probe-speaking cells and watch it (probe it unless its beats come),
    /// and probe every connected cell failed for its silence (is it back?).
    pub(crate) fn probe_round(&mut self, now: Instant, peers: Peers<'_>) -> Vec<Action> {
        let members = peers.links.peers().filter(|p| self.probes(p) && peers.alive(p));
        let next = probe::successor(self.local, members);
        let mut out = Vec::new();
        if next != self.watch.peer() {
            self.watch = match next {
                None => Watch::Idle,
                Some(p) if self.config.beats && !self.no_beats.contains(&p) => {
                    out.push(Action::WatchBeats(p));
                    Watch::Awaiting { peer: p, since: now }
                }
                Some(p) => Watch::Probe { peer: p },
            };
            if self.config.beats && !matches!(self.watch, Watch::Awaiting { .. }) {
                out.push(Action::UnwatchBeats);
            }
        }
        match self.watch {
            Watch::Probe { peer } => out.push(self.probe(peer, Purpose::Watch)),
            Watch::Awaiting { peer, since } => {
                // Until its first beat comes, probe it as before.
                out.push(self.probe(peer, Purpose::Watch));
                if now.duration_since(since) > FIRST_BEAT_WAIT {
                    tracing::info!(%peer, "no UDP beats arrive from this cell (a firewall or NAT on the way?); watching it by TCP probes");
                    out.extend(self.beats_fail(peer));
                }
            }
            // Watched by its beats' deadline (`beat_overdue`).
            Watch::Beating { .. } | Watch::Idle => {}
        }
        let mut silent: Vec<PeerId> =
            self.silent_since.keys().filter(|p| peers.links.is_connected(p)).copied().collect();
        silent.sort();
        out.extend(silent.into_iter().map(|p| self.probe(p, Purpose::Revive)));
        out
    }

    /// The beat task could not take a command: watch by probes.
    pub(crate) fn beat_task_busy(&mut self) {
        if let Some(peer) = self.watch.peer() {
            self.watch = Watch::Probe { peer };
        }
    }

    /// Beats from `peer` do not come: watch it by TCP probes from now on.
    fn beats_fail(&mut self, peer: PeerId) -> Vec<Action> {
        self.no_beats.insert(peer);
        if self.watch.peer() == Some(peer) {
            self.watch = Watch::Probe { peer };
            return vec![Action::UnwatchBeats];
        }
        Vec::new()
    }

    /// A valid beat from `peer`, received at `at`. Returns whether it is
    /// from the cell we watch by beats (then its view is worth comparing).
    pub(crate) fn on_beat(&mut self, peer: PeerId, at: Instant) -> bool {
        match self.watch {
            Watch::Awaiting { peer: p, .. } | Watch::Beating { peer: p, .. } if p == peer => {
                let due = at + self.config.probe_interval + self.probe_wait();
                self.watch = Watch::Beating { peer, last: at, due: Some(due) };
                true
            }
            _ => false,
        }
    }

    /// `peer` answered our beat subscription.
    pub(crate) fn on_subscribed(&mut self, peer: PeerId, accepted: bool) -> Vec<Action> {
        if accepted {
            return Vec::new();
        }
        tracing::debug!(%peer, "no beats from this cell; watching it by TCP probes");
        self.beats_fail(peer)
    }

    /// The beat subscription to `peer` ended.
    pub(crate) fn on_beats_ended(&mut self, peer: PeerId) {
        if matches!(self.watch, Watch::Awaiting { peer: p, .. } | Watch::Beating { peer: p, .. } if p == peer)
        {
            tracing::debug!(%peer, "its beats ended; watching it by TCP probes");
            self.watch = Watch::Probe { peer };
        }
    }

    /// The deadline passed: suspect the watched cell, as an unanswered probe
    /// would, and give it another interval before suspecting again.
    pub(crate) fn beat_overdue(&mut self, now: Instant, peers: Peers<'_>) -> Vec<Action> {
        let Watch::Beating { peer, last, due: Some(due) } = self.watch else { return Vec::new() };
        if now < due {
            return Vec::new();
        }
        if !peers.alive(&peer) {
            // Failed or gone: the next probe round picks another cell.
            self.watch = Watch::Beating { peer, last, due: None };
            return Vec::new();
        }
        let due = now + self.config.probe_interval + self.probe_wait();
        self.watch = Watch::Beating { peer, last, due: Some(due) };
        self.suspect(peer, peers)
    }

    /// A probe's outcome.
    pub(crate) fn on_probe(
        &mut self,
        peer: PeerId,
        purpose: Purpose,
        outcome: &Outcome,
        now: Instant,
        peers: Peers<'_>,
    ) -> Vec<Action> {
        match outcome {
            Outcome::Answered(_) => {
                let mut out = Vec::new();
                // It answers probes but its beats stopped: UDP no longer
                // gets through. Probe it instead of suspecting it again.
                if let Watch::Beating { peer: p, last, .. } = self.watch {
                    let bound = self.config.probe_interval + self.probe_wait();
                    if p == peer && now.duration_since(last) > bound {
                        tracing::info!(%peer, "its UDP beats stopped but it answers probes; watching it by TCP probes");
                        out = self.beats_fail(peer);
                    }
                }
                self.silent_since.remove(&peer);
                out
            }
            Outcome::Unsupported => {
                tracing::debug!(%peer, "does not speak the probe protocol; pings judge it");
                self.no_probe.insert(peer);
                Vec::new()
            }
            Outcome::Silent if !peers.alive(&peer) => Vec::new(),
            Outcome::Silent => match purpose {
                Purpose::Watch => self.suspect(peer, peers),
                Purpose::Verify => self.verified_silent(peer, now, peers),
                Purpose::Revive => Vec::new(),
            },
        }
    }

    /// Our watch of `peer` went unanswered: ask every connected cell to
    /// check it, and check it again ourselves, together with every other
    /// cell we are connected to (if they are all silent, it is this cell
    /// that is cut off, and it should see all of them failed).
    fn suspect(&mut self, peer: PeerId, peers: Peers<'_>) -> Vec<Action> {
        let mut others: Vec<PeerId> = peers.links.peers().filter(|p| *p != peer).collect();
        others.sort();
        let mut out = vec![Action::Suspected { peer, wait: self.probe_wait() }];
        out.extend(others.iter().map(|o| Action::Notify { to: *o, suspect: peer }));
        out.push(self.probe(peer, Purpose::Verify));
        for other in others {
            if self.probes(&other) && peers.mesh.state_of(&other) == Some(PeerState::Alive) {
                out.push(self.probe(other, Purpose::Verify));
            }
        }
        out
    }

    /// A check of a suspected cell went unanswered: it is failed, unless
    /// many cells went silent at once (then this cell is the likelier
    /// culprit: it waits longer and checks again, up to its most patient).
    fn verified_silent(&mut self, peer: PeerId, now: Instant, peers: Peers<'_>) -> Vec<Action> {
        match self.health.on_silent(peer, peers.links.count(), now) {
            Verdict::Stretch => {
                tracing::debug!(
                    strain = self.health.score(),
                    "many cells silent at once: checking again, more patiently"
                );
                vec![self.probe(peer, Purpose::Verify)]
            }
            Verdict::Silent => {
                tracing::debug!(%peer, "no probe answer; failing the cell");
                self.silent_since.insert(peer, now);
                vec![Action::Fail(peer)]
            }
        }
    }

    /// Another cell asks us to check `suspect`.
    pub(crate) fn on_notice(
        &mut self,
        from: PeerId,
        suspect: PeerId,
        peers: Peers<'_>,
    ) -> Vec<Action> {
        if suspect == self.local {
            tracing::debug!(by = %from, "another cell suspects this one; its probes will settle it");
            return Vec::new();
        }
        if self.probes(&suspect) && peers.alive(&suspect) {
            tracing::debug!(%suspect, by = %from, "checking a suspected cell");
            return vec![self.probe(suspect, Purpose::Verify)];
        }
        Vec::new()
    }

    /// `peer` proved it is there (a new connection, a ping or probe that
    /// brought it back): it is no longer silent.
    pub(crate) fn heard(&mut self, peer: PeerId) {
        self.silent_since.remove(&peer);
    }

    /// A ping to `peer` failed. Cells that do not speak the probe protocol
    /// are judged by ping: returns whether to fail it.
    pub(crate) fn ping_failed(&self, peer: &PeerId) -> bool {
        self.no_probe.contains(peer)
    }

    /// The last connection to `peer` closed: forget what its links taught.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        self.silent_since.remove(peer);
        self.no_probe.remove(peer);
        self.no_beats.remove(peer);
    }
}

#[cfg(test)]
mod tests;
