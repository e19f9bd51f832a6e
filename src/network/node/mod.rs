//! The node: the one task that owns the swarm, its channels and timers. It
//! reads the clock once per event, hands the event to the component whose
//! concern it is, and carries out the actions that come back, in order:
//!
//! - [`Links`]: connections, "connected?", which links to prune;
//! - [`Dialer`]: whom to dial and when, configured peers, `/register`;
//! - [`Liveness`]: the ring watch, suspicion, local health;
//! - [`Membership`]: hello, sync, leave and suspect exchanges;
//! - [`Local`] and [`gossip`]: this cell's record, incoming records;
//! - [`BeyondLan`]: Kademlia, AutoNAT, relays;
//! - [`Publisher`]: snapshots, status events, the state to save.
//!
//! It never awaits anything but the swarm, its channels and its timers:
//! replies go through oneshots and snapshots through `watch`.

mod discovery;
mod exchange;
mod neighbours;
mod swarm;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, TopicHash};
use libp2p::request_response::{OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::mesh::{
    FoundBy, LocalState, Merge, MeshEvent, MeshView, PeerState, Snapshot, Transition,
};
use crate::metrics::{CellMetrics, ProbeLabels, ReasonLabel};
use crate::network::beyond_lan::BeyondLan;
use crate::network::dialer::{Dial, Dialer, Step};
use crate::network::handle::{Command, Handle, SyncOutcome};
use crate::network::links::Links;
use crate::network::liveness::{self, Liveness, Peers};
use crate::network::local::{CloneNews, Local};
use crate::network::membership::{Membership, Request};
use crate::network::protocol::{
    CellRecord, RegisterRequest, RegisterResponse, RequestKind, NOTICE_TOPIC, RELAY_TOPIC, TOPIC,
};
use crate::network::publisher::Publisher;
use crate::network::tasks::{Tasks, Wiring};
use crate::network::{handshake, Behaviour, NetworkError};
use crate::state::{RememberedPeer, State};

/// Mesh events buffered for `GET /events` subscribers; a subscriber that
/// falls this far behind is dropped rather than slow the loop.
pub const EVENT_BUFFER: usize = 256;
/// Commands waiting for the loop. HTTP handlers fail fast with 503 when it
/// is full rather than queue without bound.
pub(crate) const COMMAND_CHANNEL: usize = 256;
/// How often the loop reconciles: redials, prunes duplicate connections,
/// publishes RTT changes.
pub(crate) const TICK: Duration = Duration::from_millis(500);
/// Failed and left cells are forgotten this long after they were last
/// heard of (Serf's reconnect timeout and tombstones: 24 h).
const FORGET_AFTER_MS: u64 = 24 * 3600 * 1000;

/// Owns the swarm; run it with [`Node::run`].
pub struct Node {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    topic: IdentTopic,
    topic_hash: TopicHash,
    mesh: MeshView,
    local: Local,
    links: Links,
    dialer: Dialer,
    liveness: Liveness,
    membership: Membership<OutboundRequestId>,
    beyond: BeyondLan,
    publisher: Publisher,
    tasks: Tasks,
    handshakes: handshake::Explainer,
    metrics: CellMetrics,
    p2p_metrics: libp2p::metrics::Metrics,
    /// How often records are exchanged with one cell in turn (anti-entropy).
    exchange_every: Duration,
    /// Cells from the last run, dialed once at start.
    rejoin: Vec<(PeerId, Vec<Multiaddr>)>,
    /// How long a `/register` dial may take: a second less than a command.
    register_wait: Duration,
    /// Senders of records whose signatures failed, warned about once.
    refusal_warned: std::collections::HashSet<PeerId>,
    /// `suspect` notices waiting for our probe of their suspect (answered
    /// with its outcome: an indirect probe), and when each came.
    held_notices: HashMap<PeerId, Vec<(Instant, ResponseChannel<RegisterResponse>)>>,
    /// The overlay's side of the node: notices, pruned links, mDNS duty.
    overlay: neighbours::OverlayState,
}

impl Node {
    /// Starts listening and returns the node and a handle to it.
    pub fn new(
        mut swarm: Swarm<Behaviour>,
        key: libp2p::identity::Keypair,
        config: &Config,
        metrics: CellMetrics,
        p2p_metrics: libp2p::metrics::Metrics,
        restored: Option<State>,
        state_tx: watch::Sender<Option<State>>,
    ) -> Result<(Node, Handle), NetworkError> {
        crate::network::listen(&mut swarm, config)?;
        let topic = IdentTopic::new(TOPIC);
        swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
        let notice_topic = IdentTopic::new(NOTICE_TOPIC);
        swarm.behaviour_mut().gossipsub.subscribe(&notice_topic)?;
        let relay_topic = IdentTopic::new(RELAY_TOPIC);
        swarm.behaviour_mut().gossipsub.subscribe(&relay_topic)?;
        let local_peer = *swarm.local_peer_id();
        let (mut level, mut saved_seq, mut rejoin) = (config.consciousness_level, 0, Vec::new());
        if let Some(s) = restored {
            // The level is the cell's own runtime state and survives; the
            // branch comes from the configuration, which may have changed.
            tracing::info!(
                level = s.level,
                peers = s.peers.len(),
                "restored state from the last run"
            );
            level = s.level;
            saved_seq = s.seq;
            rejoin = s.peers.iter().filter_map(RememberedPeer::parsed).collect();
        }
        let mut local =
            Local::new(key, config.cell_id.clone(), config.branch.clone(), level, saved_seq);
        (local.tags, local.services) = crate::services::announced(config);
        metrics
            .info
            .get_or_create(&crate::metrics::InfoLabels {
                cell_id: local.cell_id.clone(),
                branch: local.branch.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        let (tx, commands) = mpsc::channel(COMMAND_CHANNEL);
        let first = Snapshot {
            local: local_state(&local, "unknown", Vec::new()),
            peers: Vec::new(),
            degraded: None,
        };
        metrics.observe(&first);
        let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(first));
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let handle = Handle::new(
            tx,
            snapshot_rx,
            events.clone(),
            config.tuning.command_timeout(),
            metrics.rejected_commands.clone(),
        );
        let now = Instant::now();
        let control = swarm.behaviour().stream.new_control();
        let tasks = Tasks::new(config, control, config.peers.len(), metrics.beats_dropped.clone());
        let live_config = liveness::Config {
            probe_interval: config.tuning.probe_interval(),
            probe_timeout: config.tuning.probe_timeout(),
            beats: tasks.beats_on(),
        };
        // mDNS starts at its turn (see `overlay::MDNS_SPREAD`); the
        // behaviour built with the swarm has not run yet.
        swarm.behaviour_mut().mdns = None.into();
        let node = Node {
            commands,
            topic_hash: topic.hash(),
            topic,
            mesh: MeshView::new(local_peer, &config.cell_id),
            local,
            links: Links::new(local_peer),
            dialer: Dialer::new(local_peer, &config.peers, now),
            liveness: Liveness::new(local_peer, live_config, TICK, now),
            membership: Membership::new(),
            beyond: BeyondLan::new(config.mdns, now),
            publisher: Publisher::new(snapshot_tx, state_tx, events, metrics.clone()),
            tasks,
            handshakes: handshake::Explainer::new(config.swarm_key.is_some()),
            metrics,
            p2p_metrics,
            exchange_every: config.tuning.exchange_interval(),
            rejoin,
            held_notices: HashMap::new(),
            overlay: neighbours::OverlayState {
                notice_hash: notice_topic.hash(),
                notice_topic,
                relay_hash: relay_topic.hash(),
                relay_topic,
                relayed: HashMap::new(),
                pruned: HashSet::new(),
                prune_backoff: Default::default(),
                announced: 0,
                mdns_from: now
                    + crate::network::overlay::MDNS_SPREAD.mul_f64(rand::random::<f64>()),
                mdns: config.mdns.then(|| libp2p::mdns::Config {
                    query_interval: config.tuning.mdns_query_interval(),
                    ..libp2p::mdns::Config::default()
                }),
            },
            refusal_warned: Default::default(),
            register_wait: config
                .tuning
                .command_timeout()
                .saturating_sub(Duration::from_secs(1))
                .max(Duration::from_secs(1)),
            swarm,
        };
        Ok((node, handle))
    }

    /// Runs until `shutdown` fires, then announces leaving and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = interval(TICK);
        let mut exchange = interval(self.exchange_every);
        exchange.tick().await;
        let mut probe_tick = interval(self.liveness_interval());
        let Wiring { mut probe_results, mut beat_events, mut resolved, mut interfaces } =
            self.tasks.spawn(shutdown.child_token());
        for (peer, addrs) in std::mem::take(&mut self.rejoin) {
            let dial = self.dialer.dial(peer, addrs, FoundBy::Rejoin, &self.links);
            self.start_dials(dial);
        }
        loop {
            let due = self.publisher.coalescer.due().map(tokio::time::Instant::from_std);
            let beat_due = self.liveness.deadline().map(tokio::time::Instant::from_std);
            let mdns_due = self.mdns_due().map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(change) = next_interface_change(&mut interfaces) => self.on_interface(change),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(cmd) = self.commands.recv() => {
                    self.on_command(cmd);
                    // What a caller changed is visible at once.
                    if self.publisher.coalescer.is_dirty() {
                        self.publish();
                    }
                }
                _ = sleep_until(due) => self.publish(),
                _ = sleep_until(mdns_due) => self.mdns_duty(Instant::now()),
                _ = tick.tick() => self.on_tick(Instant::now()),
                _ = probe_tick.tick() => self.probe_round(Instant::now()),
                Some(result) = probe_results.recv() => self.on_probe(result),
                Some(event) = beat_events.recv() => self.on_beat(event),
                _ = sleep_until(beat_due) => {
                    let actions = self.liveness.on_deadline(Instant::now(), Peers { links: &self.links, mesh: &self.mesh });
                    self.live(actions);
                }
                Some((index, addrs)) = resolved.recv() => {
                    let dial = self.dialer.resolved(index, addrs);
                    self.start_dials(dial);
                }
                // Anti-entropy only: one record exchange, unless the watched
                // cell's beats showed that our views agree (they compare every
                // second; a difference is synced as it shows, see `on_beat`).
                // Records go on gossip only when they change: republishing
                // every cell's record each 30 s cost each cell ~7 KB/s at 20
                // cells (gossipsub's mesh copies and IHAVE rounds).
                _ = exchange.tick() => {
                    if !self.membership.agreed_within(Instant::now(), self.exchange_every) {
                        if let Some(peer) = self.membership.next_exchange(self.links.peers()) {
                            self.send_sync(peer);
                        }
                    }
                }
            }
            // Swarm events come in bursts (a cell joining brings its
            // connection, identify, subscriptions, records): one snapshot
            // for the burst, not one per event.
            if self.publisher.coalescer.after_event(Instant::now()) {
                self.publish();
            }
        }
        self.leave().await;
    }

    fn liveness_interval(&self) -> Duration {
        self.tasks.probe_interval
    }

    // ---- commands -------------------------------------------------------

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::SetLevel { level, reply } => {
                let old = self.local.level;
                if let Some(l) = level {
                    self.local.level = l;
                }
                if self.local.level != old {
                    self.publisher.emit(MeshEvent::LevelChanged {
                        peer_id: self.local.peer.to_base58(),
                        cell_id: Some(self.local.cell_id.clone()),
                        level: self.local.level,
                        old_level: Some(old),
                        is_self: true,
                    });
                }
                let reached = self.publish_own("sync");
                self.publish();
                let _ = reply.send(SyncOutcome {
                    old_level: old,
                    new_level: self.local.level,
                    network_level: self.publisher.latest().network_level(),
                    reached,
                    seq: self.local.seq,
                });
            }
            Command::Forget { peer, reply } => {
                let done = self.mesh.forget(&peer);
                if done.is_ok() {
                    tracing::info!(%peer, "forgot a cell gone for good");
                    self.dialer.forget_retry(&peer);
                    self.publisher.coalescer.dirty();
                }
                let _ = reply.send(done);
            }
            Command::ServiceStatus { statuses } => {
                if self.local.set_service_status(&statuses) {
                    self.publish_own("a service's status changed");
                    self.publisher.coalescer.dirty();
                }
            }
            Command::Register { addr, reply } => {
                // Answered before the caller's own timeout, naming the address.
                let deadline = Instant::now() + self.register_wait;
                let dial = self.dialer.register(addr, reply, deadline);
                self.start_dials(Some(dial));
            }
        }
    }

    // ---- dials ----------------------------------------------------------

    /// Starts dials, noting each the swarm took.
    fn start_dials(&mut self, dials: impl IntoIterator<Item = Dial>) {
        for d in dials {
            let opts = match d.peer {
                Some(p) => {
                    let condition = if d.while_connected {
                        PeerCondition::NotDialing
                    } else {
                        PeerCondition::DisconnectedAndNotDialing
                    };
                    let o = DialOpts::peer_id(p).addresses(d.addrs).condition(condition);
                    if d.new_port {
                        o.allocate_new_port().build()
                    } else {
                        o.build()
                    }
                }
                None => {
                    let Some(addr) = d.addrs.into_iter().next() else { continue };
                    DialOpts::unknown_peer_id().address(addr).allocate_new_port().build()
                }
            };
            let id = opts.connection_id();
            match (self.swarm.dial(opts), d.pending) {
                (Ok(()), Some(p)) => self.dialer.started(id, p),
                (Err(e), Some(p)) => self.dialer.not_started(p, &e.to_string()),
                (_, None) => {}
            }
        }
    }

    fn on_tick(&mut self, now: Instant) {
        // Notices whose asker has given up on the answer (the probe never
        // came back: the prober was busy).
        let limit = crate::network::behaviour::REQUEST_TIMEOUT;
        self.held_notices.retain(|_, held| {
            held.retain(|(at, _)| now.duration_since(*at) < limit);
            !held.is_empty()
        });
        for id in self.dialer.expired(now) {
            self.swarm.close_connection(id);
        }
        if self.local.clone_quiet(now) {
            self.publisher.coalescer.dirty();
        }
        // Failed and left cells not heard of for a day are forgotten (as
        // Serf reaps them), so the table does not grow without bound.
        let reaped = self.mesh.reap(crate::mesh::now_ms().saturating_sub(FORGET_AFTER_MS));
        if !reaped.is_empty() {
            tracing::info!(cells = reaped.len(), "forgot cells gone for a day");
            self.publisher.coalescer.dirty();
        }
        let (late, actions) = self.liveness.on_tick(now);
        if let Some(late) = late {
            tracing::debug!(
                ?late,
                strain = self.liveness.health_score(),
                "this cell runs late: waiting longer for probes"
            );
        }
        self.metrics.health_score.set(self.liveness.health_score().into());
        let neighbours = self.neighbours();
        self.dial_neighbours(now, &neighbours);
        let dials = self.dialer.dial_strangers(now, &self.mesh, &self.links);
        self.start_dials(dials);
        for step in self.dialer.on_tick(now, &self.mesh, &self.links) {
            match step {
                Step::Dial(d) => self.start_dials(Some(d)),
                Step::Resolve { index, host, port } => self.tasks.resolve(index, host, port),
            }
        }
        self.live(actions);
        let upgrades = self.links.tcp_upgrades(now, |p| self.mesh.addrs_of(p));
        for (peer, tcp) in upgrades {
            tracing::debug!(%peer, "linked over QUIC only; dialing TCP too");
            let dial = self.dialer.dial_tcp_beside(peer, tcp);
            self.start_dials(Some(dial));
        }
        let actions = self.beyond.on_tick(now, &self.links, &self.mesh);
        self.beyond_lan(actions);
        for peer in self.membership.needs_hello(self.links.peers()) {
            self.exchange_on_link(peer, None);
        }
        for c in self.links.to_prune(now) {
            self.swarm.close_connection(c);
        }
        self.prune_non_neighbours(now, &neighbours);
        self.mdns_duty(now);
        self.publisher.coalescer.tick();
    }

    // ---- liveness -------------------------------------------------------

    fn probe_round(&mut self, now: Instant) {
        self.tasks.set_view(self.view_hash());
        let before = self.liveness.watch().peer();
        let actions =
            self.liveness.probe_round(now, Peers { links: &self.links, mesh: &self.mesh });
        let after = self.liveness.watch().peer();
        if before != after {
            tracing::debug!(peer = ?after.map(|p| p.to_base58()), "watching the next cell in the ring");
            self.membership.watch_changed();
        }
        self.live(actions);
    }

    /// Carries out the failure detector's actions, in order.
    fn live(&mut self, actions: Vec<liveness::Action>) {
        use liveness::Action as A;
        for a in actions {
            match a {
                A::Probe { peer, purpose, timeout } => {
                    if !self.tasks.probe(peer, purpose, timeout) {
                        tracing::debug!(%peer, ?purpose, "prober busy; probe skipped");
                    }
                }
                A::Suspected { peer, wait } => {
                    tracing::debug!(%peer, ?wait, "suspecting a silent cell; telling every cell");
                    self.metrics.suspects_sent.inc();
                }
                A::Notify { to, suspect, incarnation } => {
                    let req = RegisterRequest {
                        suspect: Some(suspect.to_base58()),
                        incarnation: Some(incarnation),
                        ..RegisterRequest::new(RequestKind::Suspect, self.local.record(false))
                    };
                    let id = self.swarm.behaviour_mut().register.send_request(&to, req);
                    self.membership.sent(id, Request::Suspect { to, suspect });
                }
                A::Announce { suspect, incarnation, failed } => {
                    self.announce(suspect, incarnation, failed);
                }
                A::Mark { peer, on } => {
                    if self.mesh.set_suspect(peer, on) {
                        self.publisher.coalescer.dirty();
                    }
                }
                A::Fail(peer) => {
                    let t = self.mesh.unreachable(peer);
                    if t.is_some() {
                        tracing::info!(%peer, "a suspicion of the cell timed out unrefuted");
                    }
                    self.transition(t);
                }
                A::Refute => {
                    self.publish_own("refuting a suspicion of this cell");
                    self.publisher.coalescer.dirty();
                }
                A::Disconnect(peer) => {
                    tracing::debug!(%peer, "still no probe answer; closing its connections");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
                A::WatchBeats(peer) => {
                    if !self.tasks.beat(crate::network::beat::BeatCommand::Watch(peer)) {
                        self.liveness.beat_task_busy();
                    }
                }
                A::UnwatchBeats => {
                    if !self.tasks.beat(crate::network::beat::BeatCommand::Unwatch) {
                        self.liveness.beat_task_busy();
                    }
                }
            }
        }
    }

    fn on_probe(&mut self, r: crate::network::probe::ProbeResult) {
        let labels = ProbeLabels { purpose: r.purpose.as_str(), outcome: r.outcome.as_str() };
        self.metrics.probes.get_or_create(&labels).inc();
        let now = Instant::now();
        let actions = self.liveness.on_probe(
            r.peer,
            r.purpose,
            &r.outcome,
            now,
            Peers { links: &self.links, mesh: &self.mesh },
        );
        self.live(actions);
        if r.purpose == crate::network::probe::Purpose::Verify {
            let answered = matches!(r.outcome, crate::network::probe::Outcome::Answered(_));
            self.answer_notices(r.peer, answered);
        }
        if let crate::network::probe::Outcome::Answered(rtt) = r.outcome {
            let t = self.mesh.rtt(r.peer, rtt);
            if t.is_some() {
                tracing::debug!(peer = %r.peer, ?rtt, "a silent cell answers again");
            }
            self.transition(t);
            self.publisher.coalescer.soft();
        }
    }

    fn on_beat(&mut self, event: crate::network::beat::BeatEvent) {
        use crate::network::beat::BeatEvent;
        match event {
            BeatEvent::Beat { peer, at, view } => {
                let suspected = self.liveness.is_suspected(&peer);
                if !self.liveness.on_beat(peer, at) {
                    return;
                }
                if suspected {
                    self.live(vec![liveness::Action::Mark { peer, on: false }]);
                }
                self.metrics.beats_received.inc();
                if self.membership.on_view(peer, view, self.view_hash(), at) {
                    tracing::debug!(%peer, "its view differs from ours; synced");
                    self.metrics.view_syncs.inc();
                    self.send_sync(peer);
                }
            }
            BeatEvent::Subscribed { peer, accepted } => {
                let actions = self.liveness.on_subscribed(peer, accepted, Instant::now());
                self.live(actions);
            }
            BeatEvent::Ended { peer } => self.liveness.on_beats_ended(peer, Instant::now()),
        }
    }

    /// The hash of our view (every record we hold at its `seq`, ours
    /// included) that beats carry.
    fn view_hash(&self) -> u32 {
        crate::network::beat::view_hash(
            self.mesh.digest().chain(std::iter::once((self.local.peer, self.local.seq))),
        )
    }

    // ---- the mesh view --------------------------------------------------

    fn transition(&mut self, t: Option<Transition>) {
        let Some(t) = t else { return };
        let cell = self.mesh.get(&t.peer).and_then(|e| e.cell_id.clone()).filter(|c| !c.is_empty());
        // A cell whose record has not come yet (it connected first) has no
        // name to log.
        let name = cell.as_deref().unwrap_or("(no record yet)");
        match (t.from, t.to) {
            (None, _) => tracing::info!(peer = %t.peer, cell = name, "cell joined"),
            (_, PeerState::Alive) => tracing::info!(peer = %t.peer, cell = name, "cell is back"),
            (_, PeerState::Failed) => tracing::warn!(peer = %t.peer, cell = name, "cell failed"),
            (_, PeerState::Left) => tracing::info!(peer = %t.peer, cell = name, "cell left"),
        }
        self.publisher.emit(MeshEvent::from_transition(&t, cell));
        self.publisher.coalescer.dirty();
        if t.to == PeerState::Alive {
            self.dialer.forget_retry(&t.peer);
        }
    }

    /// Merges a record into the mesh view, emitting the level change and
    /// state transition it causes.
    fn merge_record(
        &mut self,
        peer: PeerId,
        record: &CellRecord,
        found: FoundBy,
        direct: bool,
    ) -> Merge {
        let old_level = self.mesh.get(&peer).and_then(|e| e.consciousness_level);
        let (merge, t) = self.mesh.merge(peer, record, found, direct);
        match merge {
            Merge::Conflict => {
                let owner = self.mesh.claimed_by_other(peer, &record.cell_id);
                tracing::warn!(
                    %peer,
                    cell_id = record.cell_id,
                    owner = ?owner.map(|o| o.to_base58()),
                    "refused a record: its cell_id belongs to another live cell (two machines with one name? set AIOS_CELL_ID)"
                );
                self.reject("cell_id_taken");
                return merge;
            }
            Merge::Stale => return merge,
            _ if self.liveness.is_suspected(&peer) => {
                let actions = self.liveness.refuted(peer, record.seq);
                self.live(actions);
            }
            Merge::New if !direct && !self.links.is_connected(&peer) => {
                // A cell we had not heard of: let the DHT find it soon.
                self.beyond.kick(Instant::now());
            }
            _ => {}
        }
        self.publisher.coalescer.dirty();
        if old_level != Some(record.level) {
            self.publisher.emit(MeshEvent::LevelChanged {
                peer_id: peer.to_base58(),
                cell_id: Some(record.cell_id.clone()),
                level: record.level,
                old_level,
                is_self: false,
            });
        }
        self.transition(t);
        merge
    }

    fn reject(&self, reason: &'static str) {
        self.metrics.gossip_rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A record under our key that we may not have made (see `Local::check_clone`).
    fn check_clone(&mut self, record: &CellRecord, via: &str) {
        match self.local.check_clone(record, via, Instant::now()) {
            CloneNews::Nothing => {}
            CloneNews::Clone => {
                self.publisher.coalescer.dirty();
                self.publish_own("a clone of this cell");
            }
            CloneNews::CloneLeft => {
                self.publisher.coalescer.dirty();
                self.publish_own("the clone of this cell left");
            }
        }
    }

    /// Publishes this cell's record with a new `seq`; returns how many cells
    /// it was sent to.
    fn publish_own(&mut self, why: &str) -> usize {
        self.local.bump();
        let data = self.local.record(false).to_cbor();
        let topic = &self.topic_hash;
        let reached = self
            .swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .filter(|(_, t)| t.contains(&topic))
            .count();
        match self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), data) {
            Ok(_) => {
                self.metrics.gossip_sent.inc();
                tracing::debug!(why, seq = self.local.seq, reached, "published record");
                reached
            }
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => 0,
            Err(e) => {
                tracing::warn!(why, error = %e, "publishing record failed");
                0
            }
        }
    }

    fn publish(&mut self) {
        let peers = self.mesh.entries(|p| self.links.relayed_only(p));
        let snap = Snapshot {
            local: local_state(
                &self.local,
                self.beyond.reachability().as_str(),
                self.beyond.relays(),
            ),
            peers,
            degraded: self.local.degraded.clone(),
        };
        self.publisher.publish(snap);
    }
}

fn local_state(local: &Local, reachability: &'static str, relays: Vec<String>) -> LocalState {
    LocalState {
        cell_id: local.cell_id.clone(),
        peer_id: local.peer.to_base58(),
        branch: local.branch.clone(),
        consciousness_level: local.level,
        seq: local.seq,
        listen_addrs: local.listen_addrs.iter().map(|a| a.to_string()).collect(),
        transports: super::addr::transports(&local.listen_addrs),
        reachability,
        relays,
        tags: local.tags.clone(),
        services: local.services.clone(),
    }
}

fn interval(every: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(every);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// Sleeps until `due`, or forever without one.
async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next interface change, or never without a watcher.
async fn next_interface_change(
    w: &mut Option<if_watch::tokio::IfWatcher>,
) -> Option<std::io::Result<if_watch::IfEvent>> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
