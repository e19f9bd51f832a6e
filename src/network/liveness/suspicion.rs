//! One suspicion of one cell (memberlist's `suspicion.go`, Lifeguard's
//! dynamic suspicion): it times out after `max`, or sooner as independent
//! cells confirm it, down to `min` once `k` have. A suspicion that times
//! out fails the cell; one the cell refutes (a record of it with a higher
//! incarnation, its answer to a probe, a beat) is dropped.
//!
//! Timeout after `n` confirmations beyond the first suspecter:
//! `max(min, max - (max - min) · ln(n + 1) / ln(k + 1))`; with `k` = 0 (no
//! other cell could confirm) it is `min` at once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::PeerId;

#[derive(Debug, Clone)]
pub(crate) struct Suspicion {
    /// The suspect's incarnation (the `seq` of its latest record we held)
    /// when the suspicion started: a record with a higher one refutes it.
    pub(crate) incarnation: u64,
    start: Instant,
    /// Confirmations wanted to reach `min`.
    k: u32,
    min: Duration,
    max: Duration,
    /// Cells that suspect it, the first included.
    confirmers: HashSet<PeerId>,
    /// This cell's own check went unanswered too.
    pub(crate) confirmed_here: bool,
    /// Times the timeout was put off because this cell ran late itself
    /// (see [`Suspicion::defer`]), and the time added.
    defers: u32,
    extra: Duration,
}

impl Suspicion {
    pub(crate) fn new(
        by: PeerId,
        incarnation: u64,
        k: u32,
        min: Duration,
        max: Duration,
        now: Instant,
    ) -> Self {
        let mut confirmers = HashSet::new();
        confirmers.insert(by);
        Self {
            incarnation,
            start: now,
            k,
            min,
            max,
            confirmers,
            confirmed_here: false,
            defers: 0,
            extra: Duration::ZERO,
        }
    }

    /// Another cell suspects it too. Returns whether that was news (a cell
    /// counts once).
    pub(crate) fn confirm(&mut self, by: PeerId) -> bool {
        self.confirmers.insert(by)
    }

    /// Confirmations beyond the first suspecter.
    pub(crate) fn confirmations(&self) -> u32 {
        self.confirmers.len().saturating_sub(1) as u32
    }

    /// How long after its start the suspicion times out, now.
    pub(crate) fn timeout(&self) -> Duration {
        if self.k == 0 {
            return self.min;
        }
        let n = f64::from(self.confirmations().min(self.k));
        let frac = (n + 1.0).ln() / (f64::from(self.k) + 1.0).ln();
        let span = self.max.saturating_sub(self.min).as_secs_f64();
        let t = self.max.as_secs_f64() - span * frac;
        Duration::from_secs_f64(t.max(self.min.as_secs_f64()))
    }

    /// When it times out.
    pub(crate) fn deadline(&self) -> Instant {
        self.start + self.timeout() + self.extra
    }

    /// Puts the timeout off by `by`, at most `limit` times in all; returns
    /// whether it did. A cell whose own loop runs late when a suspicion
    /// times out cannot tell a silent suspect from a refutation still on
    /// its way to it (Lifeguard: a cell in poor local health is slow to
    /// judge others).
    pub(crate) fn defer(&mut self, by: Duration, limit: u32) -> bool {
        if self.defers >= limit {
            return false;
        }
        self.defers += 1;
        self.extra += by;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn confirmations_shorten_the_timeout_from_max_to_min() {
        let t0 = Instant::now();
        let first = PeerId::random();
        // k = 3, min 0.5 s, max 4 s: (confirmations, timeout in ms)
        let table = [(0, 4000), (1, 2250), (2, 1226), (3, 500), (4, 500)];
        let mut s = Suspicion::new(first, 7, 3, MS(500), MS(4000), t0);
        for (n, want) in table {
            while s.confirmations() < n {
                assert!(s.confirm(PeerId::random()));
            }
            let got = s.timeout().as_millis();
            assert!(got.abs_diff(want) <= 1, "{n} confirmations: {got} ms, want {want}");
            assert_eq!(s.deadline(), t0 + s.timeout());
        }
    }

    #[test]
    fn a_cell_confirms_once_and_the_first_suspecter_not_at_all() {
        let first = PeerId::random();
        let mut s = Suspicion::new(first, 1, 3, MS(500), MS(4000), Instant::now());
        assert!(!s.confirm(first));
        let other = PeerId::random();
        assert!(s.confirm(other));
        assert!(!s.confirm(other));
        assert_eq!(s.confirmations(), 1);
    }

    #[test]
    fn with_nobody_to_confirm_it_times_out_at_min() {
        let s = Suspicion::new(PeerId::random(), 1, 0, MS(500), MS(4000), Instant::now());
        assert_eq!(s.timeout(), MS(500));
    }
}
