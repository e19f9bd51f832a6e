//! This cell's own record: its name, branch, level and `seq`, the listen
//! addresses it carries, and clone detection (a record under our key that
//! we did not make means another process holds our identity).

use libp2p::{Multiaddr, PeerId};

use super::addr::is_tcp;
use super::behaviour::agent_version;
use super::protocol::{CellRecord, MAX_ADDRS};
use crate::mesh::now_ms;

#[derive(Debug)]
pub(crate) struct Local {
    pub(crate) peer: PeerId,
    pub(crate) cell_id: String,
    pub(crate) branch: String,
    pub(crate) level: f64,
    pub(crate) seq: u64,
    /// `seq` when this run started: records under our key with a lower one
    /// are our own from before (a restart, a rename), not a clone's.
    start_seq: u64,
    pub(crate) listen_addrs: Vec<Multiaddr>,
    /// Why this cell is degraded (a cloned identity), shown in `/health`.
    pub(crate) degraded: Option<String>,
}

impl Local {
    /// `seq` starts at the clock in ms, or past the last run's.
    pub(crate) fn new(
        peer: PeerId,
        cell_id: String,
        branch: String,
        level: f64,
        saved_seq: u64,
    ) -> Self {
        let seq = now_ms().max(saved_seq);
        Self {
            peer,
            cell_id,
            branch,
            level,
            seq,
            start_seq: seq,
            listen_addrs: Vec::new(),
            degraded: None,
        }
    }

    /// The next sequence number: one more than the last, and at least the
    /// clock in ms, so a restarted cell's records still beat its old ones.
    pub(crate) fn bump(&mut self) -> u64 {
        self.seq = (self.seq + 1).max(now_ms());
        self.seq
    }

    pub(crate) fn record(&self, leaving: bool) -> CellRecord {
        CellRecord {
            cell_id: self.cell_id.clone(),
            level: self.level,
            branch: self.branch.clone(),
            seq: self.seq,
            at_ms: now_ms(),
            addrs: self.record_addrs(),
            agent: agent_version(),
            leaving,
        }
    }

    /// The listen addresses a record carries: TCP first, at most half of
    /// what a record may hold (a host with many interfaces has more).
    fn record_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<&Multiaddr> = self.listen_addrs.iter().collect();
        addrs.sort_by_key(|a| !is_tcp(a));
        addrs.iter().take(MAX_ADDRS / 2).map(|a| a.to_string()).collect()
    }

    pub(crate) fn listening(&mut self, addr: Multiaddr) {
        if !self.listen_addrs.contains(&addr) {
            self.listen_addrs.push(addr);
        }
    }

    pub(crate) fn not_listening(&mut self, addr: &Multiaddr) {
        self.listen_addrs.retain(|a| a != addr);
    }

    /// A record under our own peer id reached us (`via` says how). If we
    /// did not make it, another process holds our key: a cloned machine
    /// image, usually. Returns true when that is news (the node then
    /// publishes a record of ours newer than the clone's start, so the
    /// clone, which ignores our records from before it started, learns of
    /// us too).
    pub(crate) fn check_clone(&mut self, record: &CellRecord, via: &str) -> bool {
        if record.seq <= self.start_seq {
            // Made before this run started: our own, from before a restart
            // or a rename.
            return false;
        }
        if record.cell_id == self.cell_id && record.seq <= self.seq {
            // One of our own records coming back: nothing new.
            return false;
        }
        let reason = format!(
            "another cell is using this cell's identity (peer id {}; it calls itself {:?}, seen via {via}). \
             Two machines share one identity key, usually from a cloned disk image. Fix: stop one of \
             them, delete identity.key in its data dir, and start it again to get a new identity",
            self.peer, record.cell_id
        );
        if self.degraded.as_deref() == Some(reason.as_str()) {
            return false;
        }
        tracing::error!("{reason}");
        self.degraded = Some(reason);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(seq: u64) -> Local {
        let mut l = Local::new(PeerId::random(), "c".into(), "b".into(), 0.0, 0);
        l.seq = seq;
        l.start_seq = seq;
        l
    }

    #[test]
    fn seq_grows_and_is_at_least_the_clock() {
        let mut l = local(5);
        let a = l.bump();
        let b = l.bump();
        assert!(a >= now_ms() - 1000 && b > a);
        l.seq = u64::MAX / 2;
        assert_eq!(l.bump(), u64::MAX / 2 + 1);
        // A saved seq ahead of the clock is kept.
        let ahead = Local::new(PeerId::random(), "c".into(), "b".into(), 0.0, u64::MAX / 4);
        assert_eq!(ahead.seq, u64::MAX / 4);
    }

    #[test]
    fn only_a_record_we_did_not_make_means_a_clone() {
        let mut l = local(1000);
        let mut r = l.record(false);
        // Ours from before this run, or one of ours coming back.
        r.seq = 900;
        assert!(!l.check_clone(&r, "gossip"));
        l.bump();
        r.seq = l.seq;
        assert!(!l.check_clone(&r, "gossip"));
        assert!(l.degraded.is_none());
        // Another name under our key, made after we started: a clone, once.
        r.cell_id = "impostor".into();
        assert!(l.check_clone(&r, "gossip"));
        assert!(l.degraded.as_deref().is_some_and(|d| d.contains("impostor")));
        assert!(!l.check_clone(&r, "gossip"));
        // Our name, but a seq we never reached.
        let mut m = local(1000);
        let mut r = m.record(false);
        r.seq = m.seq + 10;
        assert!(m.check_clone(&r, "record exchange"));
    }

    #[test]
    fn records_carry_tcp_addresses_first() {
        let mut l = local(1);
        l.listening("/ip4/10.0.0.2/udp/8001/quic-v1".parse().expect("addr"));
        l.listening("/ip4/10.0.0.2/tcp/8001".parse().expect("addr"));
        l.listening("/ip4/10.0.0.2/tcp/8001".parse().expect("addr"));
        assert_eq!(
            l.record(false).addrs,
            vec!["/ip4/10.0.0.2/tcp/8001", "/ip4/10.0.0.2/udp/8001/quic-v1"]
        );
    }
}
