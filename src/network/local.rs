//! This cell's own record: its name, branch, level and `seq`, the listen
//! addresses it carries, and clone detection (a record under our key that
//! we did not make means another process holds our identity).

use std::time::{Duration, Instant};

use std::cell::RefCell;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};

use super::addr::is_tcp;
use super::behaviour::agent_version;
use super::protocol::{CellRecord, Service, MAX_ADDRS, MAX_RECORD_BYTES};
use crate::mesh::now_ms;

/// A cloned identity not heard of for this long is taken to be gone (a
/// clone that crashed sends no leave), and the cell is healthy again.
pub(crate) const CLONE_QUIET: Duration = Duration::from_secs(120);

/// What a record under our own key tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloneNews {
    /// Nothing new: our own record, or clone news already known.
    Nothing,
    /// Another process holds our key (a cloned disk image, usually).
    Clone,
    /// The clone shut down (its leave record): healthy again; our record
    /// must now beat its leave, which other cells hold under our key.
    CloneLeft,
}

#[derive(Debug)]
pub(crate) struct Local {
    pub(crate) peer: PeerId,
    /// The identity key: every record of ours is signed with it.
    key: Keypair,
    pub(crate) cell_id: String,
    pub(crate) branch: String,
    pub(crate) level: f64,
    pub(crate) seq: u64,
    /// `seq` when this run started: records under our key with a lower one
    /// are our own from before (a restart, a rename), not a clone's.
    start_seq: u64,
    pub(crate) listen_addrs: Vec<Multiaddr>,
    /// Tags the record carries (`AIOS_TAGS`).
    pub(crate) tags: std::collections::BTreeMap<String, String>,
    /// Services the record carries, with their last checked status.
    pub(crate) services: Vec<Service>,
    /// Why this cell is degraded (a cloned identity), shown in `/health`.
    pub(crate) degraded: Option<String>,
    /// The highest `seq` of a clone's record seen, and when.
    clone_seq: u64,
    clone_seen_at: Option<Instant>,
    /// When `seq` was made (the record's `at_ms`).
    made_ms: u64,
    /// The last record signed: signing costs ~20 µs, and a record goes into
    /// every hello, sync and answer.
    signed: RefCell<Option<CellRecord>>,
}

impl Local {
    /// `seq` starts at the clock in ms, or past the last run's.
    pub(crate) fn new(
        key: Keypair,
        cell_id: String,
        branch: String,
        level: f64,
        saved_seq: u64,
    ) -> Self {
        let seq = now_ms().max(saved_seq);
        Self {
            peer: key.public().to_peer_id(),
            key,
            cell_id,
            branch,
            level,
            seq,
            start_seq: seq,
            listen_addrs: Vec::new(),
            tags: Default::default(),
            services: Vec::new(),
            degraded: None,
            clone_seq: 0,
            clone_seen_at: None,
            made_ms: now_ms(),
            signed: RefCell::new(None),
        }
    }

    /// The next sequence number: one more than the last, and at least the
    /// clock in ms, so a restarted cell's records still beat its old ones.
    pub(crate) fn bump(&mut self) -> u64 {
        self.seq = (self.seq + 1).max(now_ms());
        self.made_ms = now_ms();
        self.seq
    }

    /// Sets the status of this cell's services by name. Returns whether
    /// any changed (the record must then be published anew).
    pub(crate) fn set_service_status(
        &mut self,
        statuses: &[(String, super::protocol::ServiceStatus)],
    ) -> bool {
        let mut changed = false;
        for s in &mut self.services {
            if let Some((_, status)) = statuses.iter().find(|(n, _)| *n == s.name) {
                changed |= s.status != *status;
                s.status = *status;
            }
        }
        changed
    }

    /// This cell's record now, signed (see [`CellRecord::signed`]). The
    /// start-up check leaves room for several addresses; a host listening
    /// on more than fit drops the last ones from its record.
    pub(crate) fn record(&self, leaving: bool) -> CellRecord {
        let mut addrs = self.record_addrs();
        loop {
            let record = self.record_with(leaving, addrs.clone());
            if addrs.is_empty() || record.to_cbor().len() <= MAX_RECORD_BYTES {
                return record;
            }
            addrs.pop();
        }
    }

    fn record_with(&self, leaving: bool, addrs: Vec<String>) -> CellRecord {
        let record = CellRecord {
            cell_id: self.cell_id.clone(),
            level: self.level,
            branch: self.branch.clone(),
            seq: self.seq,
            at_ms: self.made_ms,
            addrs,
            agent: agent_version(),
            leaving,
            tags: self.tags.clone(),
            services: self.services.clone(),
            envelope: None,
        };
        let mut cache = self.signed.borrow_mut();
        if let Some(signed) = cache.as_ref() {
            let mut unsigned = signed.clone();
            unsigned.envelope = None;
            if unsigned == record {
                return signed.clone();
            }
        }
        match record.clone().signed(&self.key) {
            Ok(signed) => {
                *cache = Some(signed.clone());
                signed
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign this cell's record; sending it unsigned");
                record
            }
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
    /// image, usually. On [`CloneNews::Clone`] the node publishes a record
    /// of ours newer than the clone's start, so the clone (which ignores our
    /// records from before it started) learns of us too; on
    /// [`CloneNews::CloneLeft`], one newer than the clone's leave, so the
    /// cells that hold that leave under our key see us alive again.
    pub(crate) fn check_clone(
        &mut self,
        record: &CellRecord,
        via: &str,
        now: Instant,
    ) -> CloneNews {
        if record.seq <= self.start_seq {
            // Made before this run started: our own, from before a restart
            // or a rename.
            return CloneNews::Nothing;
        }
        if record.cell_id == self.cell_id && record.seq <= self.seq {
            // One of our own records coming back: nothing new.
            return CloneNews::Nothing;
        }
        if record.seq <= self.clone_seq {
            // Clone news we had (a record passed around again).
            return CloneNews::Nothing;
        }
        self.clone_seq = record.seq;
        self.clone_seen_at = Some(now);
        if record.leaving {
            self.seq = self.seq.max(record.seq);
            if self.degraded.take().is_some() {
                tracing::info!(
                    via,
                    "the other process with this cell's identity shut down: healthy again"
                );
            }
            return CloneNews::CloneLeft;
        }
        let reason = format!(
            "another cell is using this cell's identity (peer id {}; it calls itself {:?}, seen via {via}). \
             Two machines share one identity key, usually from a cloned disk image. Fix: stop one of \
             them, delete identity.key in its data dir, and start it again to get a new identity",
            self.peer, record.cell_id
        );
        if self.degraded.as_deref() == Some(reason.as_str()) {
            return CloneNews::Nothing;
        }
        tracing::error!("{reason}");
        self.degraded = Some(reason);
        CloneNews::Clone
    }

    /// Clears a clone's degraded state once nothing was heard of it for
    /// [`CLONE_QUIET`] (it crashed, or was stopped without a leave that
    /// reached us). Returns whether it cleared.
    pub(crate) fn clone_quiet(&mut self, now: Instant) -> bool {
        let quiet = self.clone_seen_at.is_some_and(|t| now.duration_since(t) >= CLONE_QUIET);
        if quiet && self.degraded.take().is_some() {
            tracing::info!("nothing heard of the other process with this cell's identity for 2 minutes: healthy again");
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(seq: u64) -> Local {
        let mut l = Local::new(Keypair::generate_ed25519(), "c".into(), "b".into(), 0.0, 0);
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
        let ahead =
            Local::new(Keypair::generate_ed25519(), "c".into(), "b".into(), 0.0, u64::MAX / 4);
        assert_eq!(ahead.seq, u64::MAX / 4);
    }

    #[test]
    fn only_a_record_we_did_not_make_means_a_clone() {
        let now = Instant::now();
        let mut l = local(1000);
        let mut r = l.record(false);
        // Ours from before this run, or one of ours coming back.
        r.seq = 900;
        assert_eq!(l.check_clone(&r, "gossip", now), CloneNews::Nothing);
        l.bump();
        r.seq = l.seq;
        assert_eq!(l.check_clone(&r, "gossip", now), CloneNews::Nothing);
        assert!(l.degraded.is_none());
        // Another name under our key, made after we started: a clone, once.
        r.cell_id = "impostor".into();
        assert_eq!(l.check_clone(&r, "gossip", now), CloneNews::Clone);
        assert!(l.degraded.as_deref().is_some_and(|d| d.contains("impostor")));
        assert_eq!(l.check_clone(&r, "gossip", now), CloneNews::Nothing);
        // Our name, but a seq we never reached.
        let mut m = local(1000);
        let mut r = m.record(false);
        r.seq = m.seq + 10;
        assert_eq!(m.check_clone(&r, "record exchange", now), CloneNews::Clone);
    }

    #[test]
    fn the_clone_gone_makes_the_cell_healthy_again() {
        let now = Instant::now();
        let mut l = local(1000);
        let mut r = l.record(false);
        r.cell_id = "impostor".into();
        r.seq = l.seq + 5;
        assert_eq!(l.check_clone(&r, "gossip", now), CloneNews::Clone);
        // Its leave: healthy at once, and our next record beats the leave.
        r.seq += 1;
        r.leaving = true;
        assert_eq!(l.check_clone(&r, "gossip", now), CloneNews::CloneLeft);
        assert!(l.degraded.is_none());
        assert!(l.bump() > r.seq);
        // A clone's old records passed around again are not news.
        r.leaving = false;
        r.seq -= 1;
        assert_eq!(l.check_clone(&r, "record exchange", now), CloneNews::Nothing);
        assert!(l.degraded.is_none());
        // A clone that crashed: healthy again after two quiet minutes.
        let mut m = local(1000);
        let mut r = m.record(false);
        r.cell_id = "impostor".into();
        r.seq = m.seq + 5;
        m.check_clone(&r, "gossip", now);
        assert!(!m.clone_quiet(now + CLONE_QUIET - Duration::from_secs(1)));
        assert!(m.degraded.is_some());
        assert!(m.clone_quiet(now + CLONE_QUIET));
        assert!(m.degraded.is_none());
    }

    #[test]
    fn every_record_of_ours_is_signed_and_re_signed_when_it_changes() {
        let mut l = local(7);
        let a = l.record(false);
        assert_eq!(a.verified(&l.peer).map(|r| r.seq), Ok(7));
        assert_eq!(l.record(false), a, "the same record: the same signature");
        let leaving = l.record(true);
        assert!(leaving.verified(&l.peer).is_ok_and(|r| r.leaving));
        l.level = 0.25;
        let b = l.record(false);
        assert!(b.verified(&l.peer).is_ok_and(|r| r.level == 0.25));
        assert!(b.verified(&PeerId::random()).is_err(), "signed by us, nobody else");
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
