//! The failure detector, clock-free: which cell this one watches (its ring
//! successor), by UDP beats or by TCP probes; what an overdue beat or an
//! unanswered probe leads to: a suspicion ([`suspicion`]) that every cell
//! hears of, that the suspect refutes and other cells confirm, and that
//! fails the cell only when it times out unrefuted (SWIM with Lifeguard's
//! dynamic suspicion, as memberlist does it); when a failed but still
//! connected cell is disconnected; and local health ([`health`]).
//!
//! It takes events and `now`, sees the mesh through [`Peers`], and returns
//! [`Action`]s for the node to carry out in order. The probe and beat IO
//! lives in `probe.rs` and `beat.rs`.

pub(crate) mod health;
pub(crate) mod suspicion;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use self::health::{Health, Verdict};
use self::suspicion::Suspicion;
use super::links::Links;
use super::probe::{self, Outcome, Purpose};
use crate::mesh::{MeshView, PeerState};

/// A watched cell whose beats have not started this long after we
/// subscribed is probed over TCP instead (UDP does not get through).
pub(crate) const FIRST_BEAT_WAIT: Duration = Duration::from_secs(3);
/// A cell whose beats did not come (or ended) is watched by TCP probes,
/// and asked for beats again this long after; each failure in a row
/// doubles the wait, up to [`BEATS_RETRY_MAX`]. A start under load (the
/// first beat late, a subscription timed out) does not leave a pair on
/// probes, which cost ten times the traffic, for good; a firewall that
/// drops the beats costs one more try every few minutes.
pub(crate) const BEATS_RETRY: Duration = Duration::from_secs(30);
pub(crate) const BEATS_RETRY_MAX: Duration = Duration::from_secs(480);
/// How long a cell failed for not answering probes keeps its connections
/// (a slow cell answers again without a new handshake).
pub(crate) const SILENT_CLOSE_AFTER: Duration = Duration::from_secs(10);
/// A suspicion times out after `SUSPECT_MAX` with no confirmation, and
/// after `SUSPECT_MIN` once `SUSPECT_K` other cells confirmed it (both
/// stretched by local health). Min is a little over one probe timeout: the
/// confirmations are other cells' own checks, which take that long. With
/// ~10 % loss each way, a live cell's refutation (a newer record, by
/// gossip over every path) arrives in a few hundred ms; three independent
/// checks all lost is rare (each fails ~5 % of the time).
pub(crate) const SUSPECT_MIN: Duration = Duration::from_millis(500);
pub(crate) const SUSPECT_MAX: Duration = Duration::from_secs(4);
pub(crate) const SUSPECT_K: u32 = 3;
/// A cell refutes suspicions of itself at most this often when the notice
/// names an older incarnation than its own (its refutation was lost on the
/// way to the notice's author) or none (an older implementation).
const REFUTE_GAP: Duration = Duration::from_millis(500);

/// Suspicion timeouts grow with the mesh beyond [`SIZE_STRETCH_FROM`]
/// cells as `ln N / ln 20`: 1.54× at 100 cells, 1.77× at 200.
pub(crate) const SIZE_STRETCH_FROM: usize = 20;

fn size_stretch(cells: usize) -> f64 {
    let n = cells.max(SIZE_STRETCH_FROM) as f64;
    n.ln() / (SIZE_STRETCH_FROM as f64).ln()
}

/// What the failure detector needs to know of the mesh: who is connected,
/// and who is alive.
#[derive(Clone, Copy)]
pub(crate) struct Peers<'a> {
    pub(crate) links: &'a Links,
    pub(crate) mesh: &'a MeshView,
}

impl Peers<'_> {
    /// Alive in the view and connected: a cell this one can probe.
    fn alive(&self, p: &PeerId) -> bool {
        self.links.is_connected(p) && self.member(p)
    }

    /// Alive in the view, connected or not.
    fn member(&self, p: &PeerId) -> bool {
        self.mesh.state_of(p) == Some(PeerState::Alive)
    }

    /// The incarnation of `p` we know: the `seq` of its latest record.
    fn incarnation(&self, p: &PeerId) -> u64 {
        self.mesh.seq_of(p).unwrap_or(0)
    }
}

/// What the node should do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Probe `peer` over TCP, waiting `timeout` for the echo.
    Probe { peer: PeerId, purpose: Purpose, timeout: Duration },
    /// `peer` did not answer this cell: a suspicion starts here (log, count).
    Suspected { peer: PeerId, wait: Duration },
    /// Tell `to` that `suspect` (at `incarnation`) is suspected here: it
    /// checks for itself and confirms, or, if it is the suspect, refutes.
    Notify { to: PeerId, suspect: PeerId, incarnation: u64 },
    /// Tell the whole mesh, by gossip, that `suspect` (at `incarnation`)
    /// is suspected here: every cell starts (or confirms) its suspicion,
    /// those linked to it check it, and the suspect refutes. With
    /// `failed`: this cell checked it and failed it; a live suspect that
    /// hears it refutes, which revives it wherever it was failed.
    Announce { suspect: PeerId, incarnation: u64, failed: bool },
    /// Show `peer` as suspected (`on`) or not in `/peers`.
    Mark { peer: PeerId, on: bool },
    /// `peer` is failed: its suspicion timed out unrefuted.
    Fail(PeerId),
    /// This cell is suspected: publish a record with a higher `seq` (its
    /// incarnation), which every cell takes as the refutation.
    Refute,
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
    /// Cells whose beats do not reach us: watched by TCP probes until the
    /// first instant, when beats are asked for again; the second is the
    /// wait that gave it (doubled at the next failure).
    no_beats: HashMap<PeerId, (Instant, Duration)>,
    /// Peers that do not speak the probe protocol (another implementation):
    /// left out of the ring, and failed when a ping fails instead.
    no_probe: HashSet<PeerId>,
    /// Cells suspected now.
    suspicions: HashMap<PeerId, Suspicion>,
    /// When this cell last refuted a suspicion of itself.
    refuted_at: Option<Instant>,
}

impl Liveness {
    pub(crate) fn new(local: PeerId, config: Config, tick: Duration, now: Instant) -> Self {
        Self {
            local,
            config,
            watch: Watch::Idle,
            health: Health::new(tick, now),
            silent_since: HashMap::new(),
            no_beats: HashMap::new(),
            no_probe: HashSet::new(),
            suspicions: HashMap::new(),
            refuted_at: None,
        }
    }

    /// Whether `peer` is suspected now.
    pub(crate) fn is_suspected(&self, peer: &PeerId) -> bool {
        self.suspicions.contains_key(peer)
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

    /// The next moment something is due: the watched cell's next beat is
    /// overdue (its last beat plus the interval plus the probe wait: it is
    /// suspected then, to the millisecond, not at the next probe round), or
    /// a suspicion times out. Call [`Liveness::on_deadline`] then.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let beat = match self.watch {
            Watch::Beating { due, .. } => due,
            _ => None,
        };
        let suspicion = self.suspicions.values().map(Suspicion::deadline).min();
        match (beat, suspicion) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What is due at `now` (see [`Liveness::deadline`]).
    pub(crate) fn on_deadline(&mut self, now: Instant, peers: Peers<'_>) -> Vec<Action> {
        let mut out = self.beat_overdue(now, peers);
        let mut expired: Vec<PeerId> =
            self.suspicions.iter().filter(|(_, s)| s.deadline() <= now).map(|(p, _)| *p).collect();
        expired.sort();
        for peer in expired {
            let Some(mut s) = self.suspicions.remove(&peer) else { continue };
            if !peers.member(&peer) {
                continue;
            }
            // This cell runs late (its ticks, or many silent at once): the
            // suspect's refutation may be queued behind its own delay. It
            // waits longer, a step per point of strain, before failing a
            // cell. (A 200-cell start on two cores: suspicions that timed
            // out at starved cells failed live cells ~40 times a second, and
            // each failure's announcements and refutations were more load.)
            let strain = self.health.score();
            if strain > 0 && s.defer(SUSPECT_MIN * (1 + strain), health::MAX_STRAIN) {
                tracing::debug!(%peer, strain, "suspicion timed out while this cell runs late; waiting longer");
                self.suspicions.insert(peer, s);
                continue;
            }
            tracing::debug!(%peer, confirmations = s.confirmations(), "suspicion timed out unrefuted; failing the cell");
            self.silent_since.insert(peer, now);
            out.push(Action::Fail(peer));
            // Say so: a live cell that never heard of its suspicion (or
            // whose refutation never reached this cell) hears it and
            // refutes, and its newer record revives it wherever it was
            // failed (by gossip, or by the next sync).
            out.push(Action::Announce { suspect: peer, incarnation: s.incarnation, failed: false });
        }
        out
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
        // Watched by probes, and its time to try beats again has come.
        let retry = matches!(self.watch, Watch::Probe { peer } if self.beats_wanted(&peer, now));
        if next != self.watch.peer() || retry {
            self.watch = match next {
                None => Watch::Idle,
                Some(p) if self.beats_wanted(&p, now) => {
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
                    if self.no_beats.contains_key(&peer) {
                        tracing::debug!(%peer, "still no UDP beats from this cell; watching it by TCP probes");
                    } else {
                        tracing::info!(%peer, "no UDP beats arrive from this cell (a firewall or NAT on the way, or a busy host?); watching it by TCP probes, and asking again later");
                    }
                    out.extend(self.beats_fail(peer, now));
                }
            }
            // Watched by its beats' deadline (`beat_overdue`).
            Watch::Beating { .. } | Watch::Idle => {}
        }
        let mut silent: Vec<PeerId> =
            self.silent_since.keys().filter(|p| peers.links.is_connected(p)).copied().collect();
        silent.sort();
        out.extend(silent.into_iter().map(|p| self.probe(p, Purpose::Revive)));
        // A suspect is checked again every interval while the suspicion
        // runs: a probe lost to one TCP retransmission does not decide.
        let mut suspects: Vec<PeerId> =
            self.suspicions.keys().filter(|p| peers.alive(p)).copied().collect();
        suspects.sort();
        out.extend(suspects.into_iter().map(|p| self.probe(p, Purpose::Verify)));
        out
    }

    /// The beat task could not take a command: watch by probes.
    pub(crate) fn beat_task_busy(&mut self) {
        if let Some(peer) = self.watch.peer() {
            self.watch = Watch::Probe { peer };
        }
    }

    /// Whether `peer` is to be watched by its beats (not by probes) now.
    fn beats_wanted(&self, peer: &PeerId, now: Instant) -> bool {
        self.config.beats && self.no_beats.get(peer).is_none_or(|(retry, _)| now >= *retry)
    }

    /// Beats from `peer` do not come: watch it by TCP probes, and ask for
    /// its beats again later ([`BEATS_RETRY`], doubled each time in a row).
    fn beats_fail(&mut self, peer: PeerId, now: Instant) -> Vec<Action> {
        let wait = match self.no_beats.get(&peer) {
            Some((_, w)) => (*w * 2).min(BEATS_RETRY_MAX),
            None => BEATS_RETRY,
        };
        self.no_beats.insert(peer, (now + wait, wait));
        if self.watch.peer() == Some(peer) {
            self.watch = Watch::Probe { peer };
            return vec![Action::UnwatchBeats];
        }
        Vec::new()
    }

    /// A valid beat from `peer`, received at `at`. Returns whether it is
    /// from the cell we watch by beats (then its view is worth comparing).
    /// (A beat also ends a suspicion of it: check [`Liveness::is_suspected`]
    /// before, and unmark it.)
    pub(crate) fn on_beat(&mut self, peer: PeerId, at: Instant) -> bool {
        match self.watch {
            Watch::Awaiting { peer: p, .. } | Watch::Beating { peer: p, .. } if p == peer => {
                let due = at + self.config.probe_interval + self.probe_wait();
                self.watch = Watch::Beating { peer, last: at, due: Some(due) };
                // They come: the next failure waits the shortest again.
                self.no_beats.remove(&peer);
                // A beat is the cell's own word that it is there.
                self.suspicions.remove(&peer);
                true
            }
            _ => false,
        }
    }

    /// `peer` answered our beat subscription.
    pub(crate) fn on_subscribed(
        &mut self,
        peer: PeerId,
        accepted: bool,
        now: Instant,
    ) -> Vec<Action> {
        if accepted {
            return Vec::new();
        }
        tracing::debug!(%peer, "no beats from this cell; watching it by TCP probes");
        self.beats_fail(peer, now)
    }

    /// The beat subscription to `peer` ended.
    pub(crate) fn on_beats_ended(&mut self, peer: PeerId, now: Instant) {
        if matches!(self.watch, Watch::Awaiting { peer: p, .. } | Watch::Beating { peer: p, .. } if p == peer)
        {
            tracing::debug!(%peer, "its beats ended; watching it by TCP probes");
            self.beats_fail(peer, now);
        }
    }

    /// The deadline passed: suspect the watched cell, as an unanswered probe
    /// would, and give it another interval before suspecting again.
    fn beat_overdue(&mut self, now: Instant, peers: Peers<'_>) -> Vec<Action> {
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
        self.suspect(peer, now, peers)
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
                        out = self.beats_fail(peer, now);
                    }
                }
                out.extend(self.heard(peer));
                out
            }
            Outcome::Unsupported => {
                tracing::debug!(%peer, "does not speak the probe protocol; pings judge it");
                self.no_probe.insert(peer);
                Vec::new()
            }
            Outcome::Silent if !peers.alive(&peer) => Vec::new(),
            Outcome::Silent => match purpose {
                Purpose::Watch => self.suspect(peer, now, peers),
                Purpose::Verify => self.verified_silent(peer, now, peers),
                Purpose::Revive => Vec::new(),
            },
        }
    }

    /// Starts a suspicion of `peer` here, first suspected `by` (this cell
    /// or another).
    fn start(
        &mut self,
        peer: PeerId,
        by: PeerId,
        now: Instant,
        peers: Peers<'_>,
    ) -> &mut Suspicion {
        // The cells that could confirm: every cell alive here but the
        // suspect (suspicions and confirmations travel by gossip).
        let others = peers.mesh.members().len().saturating_sub(1);
        let k = SUSPECT_K.min(others as u32);
        // Local health stretches the wait, and so does the mesh's size
        // (as memberlist's `suspicionTimeout` grows with log N): a
        // refutation crosses more gossip hops, on hosts that carry more.
        let stretch = f64::from(1 + self.health.score()) * size_stretch(others + 1);
        let incarnation = peers.incarnation(&peer);
        self.suspicions.entry(peer).or_insert_with(|| {
            let (min, max) = (SUSPECT_MIN.mul_f64(stretch), SUSPECT_MAX.mul_f64(stretch));
            Suspicion::new(by, incarnation, k, min, max, now)
        })
    }

    /// A suspicion of `peer` told to the whole mesh by gossip, and to every
    /// connected cell, the suspect included, by a notice (their answers are
    /// indirect probes; the suspect refutes).
    fn notify_all(&self, peer: PeerId, peers: Peers<'_>) -> Vec<Action> {
        let incarnation = self.suspicions.get(&peer).map_or(0, |s| s.incarnation);
        let mut to: Vec<PeerId> = peers.links.peers().collect();
        to.sort();
        let mut out = vec![Action::Announce { suspect: peer, incarnation, failed: false }];
        out.extend(to.into_iter().map(|to| Action::Notify { to, suspect: peer, incarnation }));
        out
    }

    /// The watched `peer` went silent (a beat overdue, a watch probe
    /// unanswered): suspect it, tell every connected cell (each checks for
    /// itself and confirms; the suspect refutes), check it again, and check
    /// every other cell too (if they are all silent, it is this cell that is
    /// cut off, and it should see all of them failed).
    fn suspect(&mut self, peer: PeerId, now: Instant, peers: Peers<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        let (local, wait) = (self.local, self.probe_wait());
        let fresh = !self.suspicions.contains_key(&peer);
        let s = self.start(peer, local, now, peers);
        let news = fresh || s.confirm(local);
        s.confirmed_here = true;
        if news {
            out.push(Action::Suspected { peer, wait });
        }
        if fresh {
            out.push(Action::Mark { peer, on: true });
        }
        // A cell that runs late itself (strain) may be the one that is
        // slow: it keeps its suspicion to itself, checks again, and waits
        // longer, rather than have the mesh act on doubtful evidence (on a
        // saturated host, announced false suspicions, their confirmations
        // and refutations are the load that starves the next probe).
        if news && self.health.score() == 0 {
            out.extend(self.notify_all(peer, peers));
        }
        out.push(self.probe(peer, Purpose::Verify));
        let mut others: Vec<PeerId> = peers.links.peers().filter(|p| *p != peer).collect();
        others.sort();
        for other in others {
            if self.probes(&other) && !self.suspicions.contains_key(&other) && peers.alive(&other) {
                out.push(self.probe(other, Purpose::Verify));
            }
        }
        out
    }

    /// A check of `peer` went unanswered. Many cells silent at once make
    /// this cell the likelier culprit: it waits longer and checks again. A
    /// suspect this cell had not confirmed yet: confirm it, and say so to
    /// every cell (confirmations shorten everyone's timeout). A cell not
    /// suspected (this cell checking whether it is cut off): suspect it
    /// here only; its own answer or a timeout settles it.
    fn verified_silent(&mut self, peer: PeerId, now: Instant, peers: Peers<'_>) -> Vec<Action> {
        if self.health.on_silent(peer, peers.links.count(), now) == Verdict::Stretch {
            tracing::debug!(
                strain = self.health.score(),
                "many cells silent at once: checking again, more patiently"
            );
            return vec![self.probe(peer, Purpose::Verify)];
        }
        let local = self.local;
        if let Some(s) = self.suspicions.get_mut(&peer) {
            if s.confirmed_here {
                return Vec::new();
            }
            s.confirmed_here = true;
            s.confirm(local);
            if self.health.score() > 0 {
                return Vec::new();
            }
            tracing::debug!(%peer, confirmations = s.confirmations(), "no answer here either: confirming the suspicion");
            return self.notify_all(peer, peers);
        }
        if self.health.score() > 0 {
            // Checking whether this cell is cut off, while it runs late:
            // its own delay is the likelier cause.
            return Vec::new();
        }
        tracing::debug!(%peer, "no probe answer; suspecting the cell here");
        self.start(peer, local, now, peers).confirmed_here = true;
        vec![Action::Mark { peer, on: true }]
    }

    /// `from` suspects `suspect` (at `incarnation`, when it says), by a
    /// notice or by gossip. This cell, suspected, refutes; otherwise it
    /// counts the confirmation and, when linked to the suspect, checks it
    /// (the node answers a notice with the result: an indirect probe).
    /// `own_seq` is this cell's incarnation.
    pub(crate) fn on_notice(
        &mut self,
        from: PeerId,
        suspect: PeerId,
        incarnation: Option<u64>,
        own_seq: u64,
        now: Instant,
        peers: Peers<'_>,
    ) -> Vec<Action> {
        if suspect == self.local {
            // A notice naming an older incarnation comes from a cell that
            // missed the refutation; one naming none, from an older cell.
            // Both are answered at most once per gap.
            let stale = incarnation.is_none_or(|i| i < own_seq);
            let recent = self.refuted_at.is_some_and(|t| now.duration_since(t) < REFUTE_GAP);
            if stale && recent {
                return Vec::new();
            }
            tracing::debug!(by = %from, "another cell suspects this one: refuting");
            return self.refute(now);
        }
        if !self.probes(&suspect) || !peers.member(&suspect) {
            return Vec::new();
        }
        if incarnation.is_some_and(|i| i < peers.incarnation(&suspect)) {
            // We hold a newer record of it than the suspecter did: refuted.
            return Vec::new();
        }
        let mut out = Vec::new();
        match self.suspicions.get_mut(&suspect) {
            Some(s) => {
                s.confirm(from);
            }
            None => {
                tracing::debug!(%suspect, by = %from, "checking a suspected cell");
                self.start(suspect, from, now, peers);
                out.push(Action::Mark { peer: suspect, on: true });
            }
        }
        if peers.alive(&suspect) {
            out.push(self.probe(suspect, Purpose::Verify));
        }
        out
    }

    /// Another cell says it failed this one. Wherever that took hold, only
    /// a newer record revives this cell: refute (at most once per
    /// [`REFUTE_GAP`]), whatever incarnation the notice names.
    pub(crate) fn failed_here(&mut self, from: PeerId, now: Instant) -> Vec<Action> {
        if self.refuted_at.is_some_and(|t| now.duration_since(t) < REFUTE_GAP) {
            return Vec::new();
        }
        tracing::debug!(by = %from, "another cell failed this one: refuting");
        self.refute(now)
    }

    /// Refutes a suspicion of this cell. Being suspected says this cell
    /// may be the slow one (Lifeguard; memberlist's `refute` raises its
    /// awareness): its local health drops a step, at most one per
    /// [`health::STRAIN_EASE`], so that while it stays suspected it waits
    /// longer before suspecting others (on a saturated host, the false
    /// suspicions of a cell that runs late start the next ones).
    fn refute(&mut self, now: Instant) -> Vec<Action> {
        if self.refuted_at.is_none_or(|t| now.duration_since(t) >= health::STRAIN_EASE) {
            self.health.on_suspected(now);
        }
        self.refuted_at = Some(now);
        vec![Action::Refute]
    }

    /// `peer` proved it is there (its answer to a probe or a notice, a new
    /// connection, a ping that brought it back, another cell's answered
    /// check): no longer silent or suspected.
    pub(crate) fn heard(&mut self, peer: PeerId) -> Vec<Action> {
        self.silent_since.remove(&peer);
        if self.suspicions.remove(&peer).is_some() {
            tracing::debug!(%peer, "the suspect answered");
            return vec![Action::Mark { peer, on: false }];
        }
        Vec::new()
    }

    /// A record of `peer` at `seq` arrived: a suspicion of an older
    /// incarnation is refuted.
    pub(crate) fn refuted(&mut self, peer: PeerId, seq: u64) -> Vec<Action> {
        match self.suspicions.get(&peer) {
            Some(s) if seq > s.incarnation => {
                tracing::debug!(%peer, seq, "suspicion refuted by a newer record");
                self.suspicions.remove(&peer);
                vec![Action::Mark { peer, on: false }]
            }
            _ => Vec::new(),
        }
    }

    /// A ping to `peer` failed. Cells that do not speak the probe protocol
    /// are judged by ping: returns whether to fail it.
    pub(crate) fn ping_failed(&self, peer: &PeerId) -> bool {
        self.no_probe.contains(peer)
    }

    /// The last connection to `peer` closed: forget what its links taught.
    /// A suspicion of it runs on (cells are linked to a few neighbours;
    /// the suspicion ends refuted or timed out, as anywhere in the mesh).
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        self.silent_since.remove(peer);
        self.no_probe.remove(peer);
        self.no_beats.remove(peer);
    }
}

#[cfg(test)]
mod tests;
