//! Local health, Lifeguard's "awareness" (memberlist's `awareness.go`): how
//! much this cell should distrust its own judgement. 0 when it keeps time;
//! up to [`MAX_STRAIN`] when its own loop runs late or many cells fall silent
//! at once. Probes wait `probe_timeout × (1 + strain)`, so a starved cell, or
//! one on a saturated host, does not call its neighbours dead for its own
//! delay.

use std::time::{Duration, Instant};

use libp2p::PeerId;

/// The most probe timeouts are stretched: (1 + 4) × `probe_timeout`.
pub(crate) const MAX_STRAIN: u32 = 4;
/// Local health recovers one step per this long without strain.
pub(crate) const STRAIN_EASE: Duration = Duration::from_secs(2);
/// A tick this much later than due means this cell's loop is starved.
pub(crate) const LATE_TICK: Duration = Duration::from_millis(250);

/// What a check that went unanswered means, given the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Many cells went silent at once: this cell is the likelier culprit.
    /// It waits longer (strain rose) and checks again.
    Stretch,
    /// The cell is silent.
    Silent,
}

#[derive(Debug)]
pub(crate) struct Health {
    strain: u32,
    /// When `strain` last rose or eased.
    changed_at: Instant,
    /// The tick cadence, and when the last tick ran.
    tick: Duration,
    last_tick: Instant,
    /// Cells whose checks went unanswered lately.
    recent_silent: Vec<(PeerId, Instant)>,
}

impl Health {
    pub(crate) fn new(tick: Duration, now: Instant) -> Self {
        Self { strain: 0, changed_at: now, tick, last_tick: now, recent_silent: Vec::new() }
    }

    /// The current score: 0 (healthy) to [`MAX_STRAIN`].
    pub(crate) fn score(&self) -> u32 {
        self.strain
    }

    /// How long a probe waits, stretched by the score.
    pub(crate) fn wait(&self, base: Duration) -> Duration {
        base * (1 + self.strain)
    }

    /// A tick ran at `now`. If it ran late (this cell's loop is starved, so
    /// replies are late too), strain rises a step; returns how late. A
    /// tick on time lets strain ease a step per [`STRAIN_EASE`] (call
    /// [`Health::ease`] after the tick's other work).
    pub(crate) fn on_tick(&mut self, now: Instant) -> Option<Duration> {
        let late = now.duration_since(self.last_tick).saturating_sub(self.tick);
        self.last_tick = now;
        if late > LATE_TICK {
            self.raise(now);
            return Some(late);
        }
        None
    }

    /// One step back towards health per [`STRAIN_EASE`] without strain.
    pub(crate) fn ease(&mut self, now: Instant) {
        if self.strain > 0 && now.duration_since(self.changed_at) > STRAIN_EASE {
            self.strain -= 1;
            self.changed_at = now;
        }
    }

    /// A check of `peer` went unanswered while `connected` cells are
    /// connected. Three or more silent in [`STRAIN_EASE`], a quarter of
    /// the connected cells or more, and the most patient step not yet
    /// reached: stretch and check again.
    pub(crate) fn on_silent(&mut self, peer: PeerId, connected: usize, now: Instant) -> Verdict {
        self.recent_silent.retain(|(p, at)| *p != peer && now.duration_since(*at) < STRAIN_EASE);
        self.recent_silent.push((peer, now));
        let silent = self.recent_silent.len();
        if silent >= 3 && silent * 4 >= connected && self.strain < MAX_STRAIN {
            self.raise(now);
            return Verdict::Stretch;
        }
        Verdict::Silent
    }

    /// Another cell suspects this one (it refutes): this cell may be the
    /// slow one. A step up.
    pub(crate) fn on_suspected(&mut self, now: Instant) {
        self.raise(now);
    }

    fn raise(&mut self, now: Instant) {
        self.strain = (self.strain + 1).min(MAX_STRAIN);
        self.changed_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(500);
    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// Ticks every `TICK`, late by `late` each, and eases after each.
    fn tick(h: &mut Health, now: &mut Instant, late: Duration) -> Option<Duration> {
        *now += TICK + late;
        let r = h.on_tick(*now);
        h.ease(*now);
        r
    }

    #[test]
    fn late_ticks_step_up_to_five_times_the_wait_and_no_further() {
        let mut now = Instant::now();
        let mut h = Health::new(TICK, now);
        let base = MS(400);
        // (lateness, score after, wait after)
        let table = [
            (MS(0), 0, MS(400)),
            (MS(250), 0, MS(400)), // exactly the bound: on time
            (MS(251), 1, MS(800)),
            (MS(600), 2, MS(1200)),
            (MS(600), 3, MS(1600)),
            (MS(600), 4, MS(2000)),
            (MS(600), 4, MS(2000)), // capped at 5×
        ];
        for (i, (late, score, wait)) in table.into_iter().enumerate() {
            let was_late = tick(&mut h, &mut now, late).is_some();
            assert_eq!(was_late, late > LATE_TICK, "row {i}");
            assert_eq!(h.score(), score, "row {i}");
            assert_eq!(h.wait(base), wait, "row {i}");
        }
    }

    #[test]
    fn it_eases_one_step_per_two_seconds() {
        let mut now = Instant::now();
        let mut h = Health::new(TICK, now);
        for _ in 0..4 {
            tick(&mut h, &mut now, MS(1000));
        }
        assert_eq!(h.score(), 4);
        // On-time ticks: no easing within 2 s of the last step...
        let start = now;
        let mut steps = Vec::new();
        while h.score() > 0 {
            tick(&mut h, &mut now, MS(0));
            steps.push((now.duration_since(start), h.score()));
        }
        // ...then one step per 2 s (and a tick): 4 → 0 in 4 steps.
        let eased: Vec<_> = steps.windows(2).filter(|w| w[0].1 != w[1].1).map(|w| w[1]).collect();
        assert_eq!(eased.len(), 4);
        for pair in eased.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(gap > STRAIN_EASE && gap <= STRAIN_EASE + TICK, "gap {gap:?}");
        }
    }

    #[test]
    fn many_cells_silent_at_once_stretch_instead_of_failing() {
        let now = Instant::now();
        let mut h = Health::new(TICK, now);
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        // 8 connected: the first two silences are the cells' own.
        assert_eq!(h.on_silent(peers[0], 8, now), Verdict::Silent);
        assert_eq!(h.on_silent(peers[1], 8, now + MS(100)), Verdict::Silent);
        // The third within 2 s, a quarter or more: this cell is suspect.
        assert_eq!(h.on_silent(peers[2], 8, now + MS(200)), Verdict::Stretch);
        assert_eq!(h.score(), 1);
        // The same cell twice counts once.
        assert_eq!(h.on_silent(peers[2], 8, now + MS(300)), Verdict::Stretch);
        assert_eq!(h.score(), 2);
        // Among many connected cells, three silent is their own doing.
        let mut big = Health::new(TICK, now);
        for (i, p) in peers.iter().take(3).enumerate() {
            assert_eq!(big.on_silent(*p, 40, now + MS(i as u64)), Verdict::Silent);
        }
        // Silences spread over more than 2 s do not add up.
        let mut slow = Health::new(TICK, now);
        for (i, p) in peers.iter().enumerate() {
            let at = now + Duration::from_secs(3 * i as u64);
            assert_eq!(slow.on_silent(*p, 4, at), Verdict::Silent);
        }
    }

    #[test]
    fn at_its_most_patient_a_silent_cell_is_silent() {
        let now = Instant::now();
        let mut h = Health::new(TICK, now);
        let peers: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
        let verdicts: Vec<Verdict> =
            peers.iter().map(|p| h.on_silent(*p, 4, now + MS(10))).collect();
        let stretched = verdicts.iter().filter(|v| **v == Verdict::Stretch).count();
        assert_eq!(stretched as u32, MAX_STRAIN);
        assert_eq!(verdicts.last(), Some(&Verdict::Silent));
    }
}
