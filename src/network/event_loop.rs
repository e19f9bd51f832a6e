//! The event loop: the one task that owns the swarm. It turns swarm events
//! into changes of the mesh view, runs commands from handles, publishes
//! snapshots, and on shutdown tells every connected cell it is leaving.
//!
//! It never awaits anything but the swarm, its command channel and its
//! timers: replies go through oneshots and snapshots through `watch`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash};
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{autonat, dcutr, identify, kad, mdns, ping, relay, Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::beat::{self, BeatCommand, BeatEvent, BeatShared, BeatTask};
use super::behaviour::{agent_version, Behaviour, BehaviourEvent};
use super::handle::{resolve, Command, CommandError, Handle, RegisterOutcome, SyncOutcome};
use super::probe::{self, Outcome, ProbeRequest, ProbeResult, Purpose};
use super::protocol::{
    CellRecord, DigestEntry, KnownCell, RegisterRequest, RegisterResponse, RequestKind,
    KAD_PROTOCOL, MAX_KNOWN_RECORDS, MESH_KEY, TOPIC,
};
use super::NetworkError;
use libp2p_stream::Control;

use crate::config::{Config, PeerAddr, DEFAULT_HTTP_PORT};
use crate::mesh::{
    now_ms, FoundBy, LocalState, Merge, MeshEvent, MeshView, PeerState, Snapshot, Transition,
};
use crate::metrics::{CellMetrics, ProbeLabels, ReasonLabel, RegistrationLabels};
use crate::state::{RememberedPeer, State, MAX_REMEMBERED};

/// Mesh events buffered for `GET /events` subscribers; a subscriber that
/// falls this far behind is dropped rather than slow the loop.
pub const EVENT_BUFFER: usize = 256;
/// Commands waiting for the loop. HTTP handlers fail fast with 503 when it
/// is full rather than queue without bound.
pub(crate) const COMMAND_CHANNEL: usize = 256;
/// Probe requests and results waiting between the loop and the prober.
const PROBE_CHANNEL: usize = 1024;
/// Beat commands and events waiting between the loop and the beat task.
const BEAT_CHANNEL: usize = 64;
/// A watched cell whose beats have not started this long after we
/// subscribed is probed over TCP instead (UDP does not get through).
const FIRST_BEAT_WAIT: Duration = Duration::from_secs(3);
/// A view that differs from the watched cell's for this long (gossip in
/// flight settles sooner) is repaired by a `sync`…
const VIEW_SETTLE: Duration = Duration::from_secs(2);
/// …at most this often per cell.
const VIEW_SYNC_GAP: Duration = Duration::from_secs(10);
/// How often the loop reconciles: redials, prunes duplicate connections,
/// publishes RTT changes.
const TICK: Duration = Duration::from_millis(500);
/// How long shutdown waits for cells to acknowledge the leave notice.
const LEAVE_WAIT: Duration = Duration::from_millis(1000);
/// Redial backoff for failed or configured peers.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(2);
const CONFIG_RETRY_MAX: Duration = Duration::from_secs(30);
/// Twin connections from a simultaneous dial are pruned only once both are
/// this old, so that each side has seen both come up; closing one earlier
/// can leave the other side with no connection for a moment (a false
/// "failed").
const PRUNE_AFTER: Duration = Duration::from_secs(2);
/// Swarm events are folded into one snapshot (what `/health`, `/peers` and
/// the metrics read) at most this long after the first: building one costs
/// O(cells), and when 50 cells start together each sees thousands of events.
/// Changes that make a mesh event (`GET /events`: joined, failed, left, a
/// level) are published at once.
const SNAPSHOT_COALESCE: Duration = Duration::from_millis(20);
/// How long a cell waits for a cell with a smaller peer id that found it
/// too to dial, before it dials itself (see `may_dial`). Longer than a
/// handshake takes on a busy host (~2 s when 50 cells start on 2 cores); a
/// cell that missed the mDNS answer learns of the other from the records of
/// the first cell it connects to, and dials then.
const DIAL_YIELD: Duration = Duration::from_secs(3);
/// A tick this much later than due means this cell's loop is starved.
const LATE_TICK: Duration = Duration::from_millis(250);
/// The most probe timeouts are stretched: (1 + 4) × `probe_timeout`.
const MAX_LOCAL_STRAIN: u32 = 4;
/// Local health recovers one step per this long without strain.
const STRAIN_EASE: Duration = Duration::from_secs(2);
/// How long a cell failed for not answering probes keeps its connections
/// (a slow cell answers again without a new handshake).
const SILENT_CLOSE_AFTER: Duration = Duration::from_secs(10);
/// A failed cell is redialed for this long, then forgotten until it shows up.
const RETRY_GIVE_UP: Duration = Duration::from_secs(600);
/// Kademlia discovery rounds (who provides the mesh topic?): soon after any
/// new connection, then backing off to `KAD_ROUND_MAX` while nothing changes.
/// A cell that joins later runs its own rounds, and its records reach the
/// rest by gossip, so a quiet mesh need not poll. Rounds run only while the
/// DHT can tell us something mDNS cannot (see `dht_useful`): a provider
/// round costs every asked cell an answer listing every cell.
const KAD_ROUND_MIN: Duration = Duration::from_secs(2);
const KAD_ROUND_MAX: Duration = Duration::from_secs(600);
/// While rounds are this frequent, each also re-announces this cell as a
/// provider (the DHT has just changed); otherwise Kademlia republishes it.
const KAD_ANNOUNCE_BELOW: Duration = Duration::from_secs(60);
/// A cell heard of only through another cell's records is looked up in the
/// DHT first; if that has not connected us within this time, its recorded
/// addresses are dialed directly.
const HEARSAY_DIAL_AFTER: Duration = Duration::from_secs(3);
/// Relays a private cell keeps a reservation on, and how long it leaves a
/// relay that refused before trying it again.
const WANTED_RELAYS: usize = 2;
const RELAY_RETRY: Duration = Duration::from_secs(30);
/// How often a cell linked only over QUIC is offered a TCP link.
const TCP_UPGRADE_RETRY: Duration = Duration::from_secs(10);

/// How the watched cell (our ring successor) is watched.
#[derive(Debug, Clone, Copy, PartialEq)]
enum WatchMode {
    /// TCP probes every interval (beats off, refused or not arriving).
    Probe,
    /// Subscribed to its beats, none yet: TCP probes meanwhile.
    Awaiting { since: Instant },
    /// Its beats arrive; the last one at `last`.
    Beating { last: Instant },
}

/// One connection to a peer.
struct Conn {
    id: ConnectionId,
    /// We dialed it.
    dialer: bool,
    /// It runs through a circuit relay.
    relayed: bool,
    /// It runs over QUIC (a crashed peer is noticed only after the idle
    /// timeout, where TCP notices at once).
    quic: bool,
    /// The remote address (for a dialer: the one we dialed).
    addr: Multiaddr,
}

/// A dial we started and want to hear back from.
struct PendingDial {
    origin: FoundBy,
    reply: Option<oneshot::Sender<Result<RegisterOutcome, CommandError>>>,
    config_index: Option<usize>,
    addr: Option<Multiaddr>,
}

/// A peer from the configuration, redialed with backoff while not connected.
struct Configured {
    addr: PeerAddr,
    peer: Option<PeerId>,
    dialing: bool,
    next_attempt: Instant,
    backoff: Duration,
}

struct Retry {
    next: Instant,
    backoff: Duration,
    since: Instant,
}

/// This cell's own record state.
struct Local {
    cell_id: String,
    branch: String,
    level: f64,
    seq: u64,
    /// `seq` when this run started: records under our key with a lower one
    /// are our own from before (a restart, a rename), not a clone's.
    start_seq: u64,
}

impl Local {
    /// The next sequence number: one more than the last, and at least the
    /// clock in ms, so a restarted cell's records still beat its old ones.
    fn bump(&mut self) -> u64 {
        self.seq = (self.seq + 1).max(now_ms());
        self.seq
    }
}

/// Owns the swarm; run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    handle: Handle,
    snapshot_tx: watch::Sender<Arc<Snapshot>>,
    /// Latest state for the saver task (never waits).
    state_tx: watch::Sender<Option<State>>,
    /// Cells from the last run, dialed once at start.
    rejoin: Vec<(PeerId, Vec<Multiaddr>)>,
    events: broadcast::Sender<MeshEvent>,
    /// (connected, alive, degraded) at the last snapshot, to notice status changes.
    last_counts: (usize, usize, bool),
    mesh: MeshView,
    /// Why this cell is degraded (a cloned identity), shown in `/health`.
    degraded: Option<String>,
    local: Local,
    local_peer: PeerId,
    listen_addrs: Vec<Multiaddr>,
    topic: IdentTopic,
    topic_hash: TopicHash,
    metrics: CellMetrics,
    p2p_metrics: libp2p::metrics::Metrics,
    pending_dials: HashMap<ConnectionId, PendingDial>,
    pending_hello:
        HashMap<OutboundRequestId, oneshot::Sender<Result<RegisterOutcome, CommandError>>>,
    pending_leave: HashMap<OutboundRequestId, PeerId>,
    conns: HashMap<PeerId, Vec<Conn>>,
    /// When each connection came up (to tell a pruned simultaneous-dial
    /// twin from a cell that went away).
    conn_started: HashMap<ConnectionId, Instant>,
    /// Connected peers we have exchanged records with since they connected.
    exchanged: std::collections::HashSet<PeerId>,
    /// Peers with a hello in flight (ours), so the tick does not resend.
    hello_in_flight: HashMap<OutboundRequestId, PeerId>,

    retry: HashMap<PeerId, Retry>,
    configured: Vec<Configured>,
    heartbeat: Duration,
    /// Liveness probes (see `probe.rs`): requests to the prober task and
    /// its results; the tasks' ends until `run` spawns them.
    probe_tx: mpsc::Sender<ProbeRequest>,
    probe_rx: mpsc::Receiver<ProbeResult>,
    prober_parts: Option<(mpsc::Receiver<ProbeRequest>, mpsc::Sender<ProbeResult>, Control)>,
    probe_interval: Duration,
    probe_timeout: Duration,
    /// The ring successor we watch, and how.
    watching: Option<PeerId>,
    watch_mode: WatchMode,
    /// UDP beats (see `beat.rs`): commands to the beat task and its
    /// events; the task until `run` spawns it (`None`: beats off).
    beat_tx: mpsc::Sender<BeatCommand>,
    beat_rx: mpsc::Receiver<BeatEvent>,
    beat_task: Option<BeatTask>,
    beat_shared: BeatShared,
    /// Our view's hash, for the beats we send.
    view_tx: watch::Sender<u32>,
    /// When the watched cell's next beat is overdue (its last beat plus the
    /// interval plus the probe wait): it is suspected then, to the
    /// millisecond, not at the next probe round.
    beat_deadline: Option<tokio::time::Instant>,
    /// Cells whose beats do not reach us: watched by TCP probes.
    no_beats: std::collections::HashSet<PeerId>,
    /// Since when the watched cell's view differs from ours, when it last
    /// agreed, and when a difference last made us sync.
    view_differs_since: Option<Instant>,
    view_agreed_at: Option<Instant>,
    view_synced_at: HashMap<PeerId, Instant>,
    /// Connected cells failed for their silence, and since when: probed
    /// every interval until they answer (alive again) or
    /// [`SILENT_CLOSE_AFTER`] passes (then disconnected and redialed).
    silent_since: HashMap<PeerId, Instant>,
    /// Cells whose probes went unanswered lately (local-health check).
    recent_silent: Vec<(PeerId, Instant)>,
    /// Peers that do not speak the probe protocol (another implementation):
    /// left out of the ring, and failed when a ping fails instead.
    no_probe: std::collections::HashSet<PeerId>,
    /// `suspect` notices in flight (their answers carry nothing we need).
    pending_suspect: std::collections::HashSet<OutboundRequestId>,
    /// Local health (Lifeguard's idea, as in Serf's memberlist): 0 when
    /// this cell keeps time, up to [`MAX_LOCAL_STRAIN`] when its own loop
    /// runs late or many cells fall silent at once. Probes wait
    /// `probe_timeout × (1 + strain)`: a starved cell, or one on a
    /// saturated host, does not call its neighbours dead for its own delay.
    strain: u32,
    /// When `strain` last rose or eased.
    strain_at: Instant,
    last_tick: Instant,
    /// A pre-shared key is set: failed handshakes are most likely a key
    /// mismatch, and are explained once per remote address.
    private: bool,
    handshake_warned: std::collections::HashSet<String>,
    /// The peer of the last anti-entropy exchange (round-robin cursor).
    last_exchange: Option<PeerId>,
    /// Cells' addresses for Kademlia, held until the DHT is of use.
    kad_waiting: HashMap<PeerId, Vec<Multiaddr>>,
    /// Next Kademlia discovery round and the current backoff.
    kad_next: Instant,
    kad_backoff: Duration,
    /// AutoNAT's verdict: `unknown`, `public`, `private`.
    reachability: &'static str,
    /// Peers that serve circuit relay v2 (identify lists the hop protocol).
    hop_peers: std::collections::HashSet<PeerId>,
    /// Relay listeners we opened (private cells), and those accepted.
    relay_listeners: HashMap<PeerId, ListenerId>,
    relays_ok: std::collections::HashSet<PeerId>,
    relay_tried: HashMap<PeerId, Instant>,
    /// When we last dialed TCP to a cell linked only over QUIC.
    tcp_tried: HashMap<PeerId, Instant>,
    /// Cells that see us at an address that is not one of ours: a NAT lies
    /// between us, they are outside it: our relay candidates.
    nat_peers: std::collections::HashSet<PeerId>,
    /// Cells mDNS has found (on this LAN), and the connected cells beyond
    /// it (not found by mDNS, no listen address on a network of ours),
    /// which are our AutoNAT servers (a LAN neighbour can always dial us
    /// back, so its answer says nothing about NAT) and the reason to run
    /// Kademlia rounds.
    mdns_peers: std::collections::HashSet<PeerId>,
    autonat_servers: std::collections::HashSet<PeerId>,
    /// When the pending snapshot is published (see [`SNAPSHOT_COALESCE`]).
    snapshot_due: Option<tokio::time::Instant>,
    /// A mesh event went out: publish the snapshot now, not coalesced.
    urgent: bool,
    /// The networks of this host's interfaces (from `if-watch`, kept current).
    local_nets: Vec<if_watch::IpNet>,
    /// Cells with a smaller peer id that we found (mDNS, records) and leave
    /// to dial us until then: one connection per pair, not two.
    yield_until: HashMap<PeerId, Instant>,
    /// mDNS is enabled.
    mdns_on: bool,
    dirty: bool,
    soft_dirty: bool,
}

impl EventLoop {
    /// Starts listening and returns the loop and a handle to it.
    pub fn new(
        mut swarm: Swarm<Behaviour>,
        config: &Config,
        metrics: CellMetrics,
        p2p_metrics: libp2p::metrics::Metrics,
        restored: Option<State>,
        state_tx: watch::Sender<Option<State>>,
    ) -> Result<(EventLoop, Handle), NetworkError> {
        let ip = match config.p2p_ip {
            std::net::IpAddr::V4(v4) => Protocol::Ip4(v4),
            std::net::IpAddr::V6(v6) => Protocol::Ip6(v6),
        };
        let tcp = Multiaddr::empty().with(ip.clone()).with(Protocol::Tcp(config.p2p_port));
        swarm
            .listen_on(tcp.clone())
            .map_err(|e| NetworkError::Listen { addr: tcp.to_string(), reason: e.to_string() })?;
        if config.quic {
            let quic = Multiaddr::empty()
                .with(ip)
                .with(Protocol::Udp(config.p2p_port))
                .with(Protocol::QuicV1);
            swarm.listen_on(quic.clone()).map_err(|e| NetworkError::Listen {
                addr: quic.to_string(),
                reason: e.to_string(),
            })?;
        }
        let topic = IdentTopic::new(TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| NetworkError::Subscribe(e.to_string()))?;
        let local_peer = *swarm.local_peer_id();
        let mut local = Local {
            cell_id: config.cell_id.clone(),
            branch: config.branch.clone(),
            level: config.consciousness_level,
            seq: now_ms(),
            start_seq: 0,
        };
        let mut rejoin = Vec::new();
        if let Some(s) = restored {
            // The level is the cell's own runtime state and survives; the
            // branch comes from the configuration, which may have changed.
            tracing::info!(
                level = s.level,
                peers = s.peers.len(),
                "restored state from the last run"
            );
            local.level = s.level;
            local.seq = local.seq.max(s.seq);
            rejoin = s.peers.iter().filter_map(RememberedPeer::parsed).collect();
        }
        local.start_seq = local.seq;
        let (tx, commands) = mpsc::channel(COMMAND_CHANNEL);
        let first = Arc::new(Snapshot {
            local: LocalState {
                cell_id: local.cell_id.clone(),
                peer_id: local_peer.to_base58(),
                branch: local.branch.clone(),
                consciousness_level: local.level,
                seq: local.seq,
                listen_addrs: Vec::new(),
                reachability: "unknown",
                relays: Vec::new(),
            },
            peers: Vec::new(),
            degraded: None,
        });
        metrics.observe(&first);
        metrics
            .info
            .get_or_create(&crate::metrics::InfoLabels {
                cell_id: local.cell_id.clone(),
                branch: local.branch.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        let (snapshot_tx, snapshot_rx) = watch::channel(first);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let handle = Handle::new(
            tx,
            snapshot_rx,
            events.clone(),
            config.tuning.command_timeout(),
            metrics.rejected_commands.clone(),
        );
        let now = Instant::now();
        let configured = config
            .peers
            .iter()
            .map(|addr| Configured {
                addr: addr.clone(),
                peer: None,
                dialing: false,
                next_attempt: now,
                backoff: RETRY_MIN,
            })
            .collect();
        let topic_hash = topic.hash();
        let control = swarm.behaviour().stream.new_control();
        let (probe_tx, probe_requests) = mpsc::channel(PROBE_CHANNEL);
        let (probe_results, probe_rx) = mpsc::channel(PROBE_CHANNEL);
        let (beat_tx, beat_commands) = mpsc::channel(BEAT_CHANNEL);
        let (beat_events, beat_rx) = mpsc::channel(BEAT_CHANNEL);
        let (view_tx, view_rx) = watch::channel(0u32);
        let beat_shared = BeatShared::default();
        let beat_task = if config.tuning.beats {
            bind_beat_socket(config.p2p_ip, config.p2p_port, config.tuning.beat_port).map(
                |socket| BeatTask {
                    socket,
                    control: control.clone(),
                    shared: beat_shared.clone(),
                    view: view_rx,
                    interval: config.tuning.probe_interval(),
                    commands: beat_commands,
                    events: beat_events,
                },
            )
        } else {
            None
        };
        Ok((
            EventLoop {
                swarm,
                commands,
                handle: handle.clone(),
                snapshot_tx,
                state_tx,
                rejoin,
                events,
                last_counts: (0, 0, false),
                mesh: MeshView::new(local_peer, &config.cell_id),
                degraded: None,
                local,
                local_peer,
                listen_addrs: Vec::new(),
                topic,
                topic_hash,
                metrics,
                p2p_metrics,
                pending_dials: HashMap::new(),
                pending_hello: HashMap::new(),
                pending_leave: HashMap::new(),
                conns: HashMap::new(),
                conn_started: HashMap::new(),
                exchanged: Default::default(),
                hello_in_flight: HashMap::new(),

                retry: HashMap::new(),
                configured,
                heartbeat: config.tuning.heartbeat(),
                probe_tx,
                probe_rx,
                prober_parts: Some((probe_requests, probe_results, control)),
                probe_interval: config.tuning.probe_interval(),
                probe_timeout: config.tuning.probe_timeout(),
                watching: None,
                watch_mode: WatchMode::Probe,
                beat_tx,
                beat_rx,
                beat_task,
                beat_shared,
                view_tx,
                no_beats: Default::default(),
                beat_deadline: None,
                view_differs_since: None,
                view_agreed_at: None,
                view_synced_at: HashMap::new(),
                silent_since: HashMap::new(),
                recent_silent: Vec::new(),
                no_probe: Default::default(),
                pending_suspect: Default::default(),
                strain: 0,
                strain_at: now,
                last_tick: now,
                private: config.swarm_key.is_some(),
                handshake_warned: Default::default(),
                last_exchange: None,
                kad_next: now,
                kad_backoff: KAD_ROUND_MIN,
                kad_waiting: HashMap::new(),
                reachability: "unknown",
                hop_peers: Default::default(),
                relay_listeners: HashMap::new(),
                relays_ok: Default::default(),
                relay_tried: HashMap::new(),
                tcp_tried: HashMap::new(),
                nat_peers: Default::default(),
                mdns_peers: Default::default(),
                autonat_servers: Default::default(),
                local_nets: Vec::new(),
                snapshot_due: None,
                urgent: false,
                yield_until: HashMap::new(),
                mdns_on: config.mdns,
                dirty: true,
                soft_dirty: false,
            },
            handle,
        ))
    }

    /// Runs until `shutdown` fires, then announces leaving and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let mut probe_tick = tokio::time::interval(self.probe_interval);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let probes = shutdown.child_token();
        if let Some((requests, results, control)) = self.prober_parts.take() {
            tokio::spawn(probe::run_prober(control.clone(), requests, results, probes.clone()));
            tokio::spawn(probe::run_echo(control, probes.clone()));
        }
        if let Some(task) = self.beat_task.take() {
            tokio::spawn(task.run(probes.clone()));
        }
        for (peer, addrs) in std::mem::take(&mut self.rejoin) {
            self.dial_peer(peer, addrs, FoundBy::Rejoin);
        }
        let mut interfaces = match if_watch::tokio::IfWatcher::new() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch network interfaces: every cell not found by mDNS counts as beyond the LAN");
                None
            }
        };
        loop {
            let due = self.snapshot_due;
            let beat_due = self.beat_deadline;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(change) = next_interface_change(&mut interfaces) => self.on_interface(change),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(cmd) = self.commands.recv() => {
                    self.on_command(cmd);
                    // What a caller changed is visible at once.
                    if self.dirty {
                        self.publish_snapshot();
                    }
                }
                _ = sleep_until(due) => self.publish_snapshot(),
                _ = tick.tick() => self.on_tick(),
                _ = probe_tick.tick() => self.probe_round(),
                Some(result) = self.probe_rx.recv() => self.on_probe(result),
                Some(event) = self.beat_rx.recv() => self.on_beat(event),
                _ = sleep_until(beat_due) => self.beat_overdue(),
                // The heartbeat is anti-entropy only: one record exchange,
                // unless the watched cell's beats showed that our views
                // agree (they compare every second; a difference is synced
                // as it shows, see `on_beat`). Records go on gossip only
                // when they change: republishing every cell's record each
                // 30 s cost each cell ~7 KB/s at 20 cells (gossipsub's mesh
                // copies and IHAVE rounds).
                _ = heartbeat.tick() => {
                    let agreed = self.view_agreed_at.is_some_and(|t| t.elapsed() < self.heartbeat);
                    if !agreed {
                        self.exchange_with_next();
                    }
                }
            }
            // Swarm events come in bursts (a cell joining brings its
            // connection, identify, subscriptions, records): one snapshot
            // for the burst, not one per event.
            if self.dirty && self.urgent {
                self.publish_snapshot();
            } else if self.dirty && self.snapshot_due.is_none() {
                self.snapshot_due = Some(tokio::time::Instant::now() + SNAPSHOT_COALESCE);
            }
        }
        self.leave().await;
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
                    self.emit(MeshEvent::LevelChanged {
                        peer_id: self.local_peer.to_base58(),
                        cell_id: Some(self.local.cell_id.clone()),
                        level: self.local.level,
                        old_level: Some(old),
                        is_self: true,
                    });
                }
                let reached = self.publish_own("sync");
                self.dirty = true;
                self.publish_snapshot();
                let snap = self.snapshot_tx.borrow().clone();
                let _ = reply.send(SyncOutcome {
                    old_level: old,
                    new_level: self.local.level,
                    network_level: snap.network_level(),
                    reached,
                    seq: self.local.seq,
                });
            }
            Command::Register { addr, reply } => {
                let opts =
                    DialOpts::unknown_peer_id().address(addr.clone()).allocate_new_port().build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(
                            id,
                            PendingDial {
                                origin: FoundBy::Register,
                                reply: Some(reply),
                                config_index: None,
                                addr: Some(addr),
                            },
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(CommandError::Unreachable(format!(
                            "cannot dial {addr}: {e}"
                        ))));
                    }
                }
            }
            Command::DialConfigured { index, addrs } => {
                let Some(c) = self.configured.get_mut(index) else { return };
                if addrs.is_empty() {
                    c.dialing = false;
                    return;
                }
                let addr = addrs[0].clone();
                let opts = match c.peer.or_else(|| peer_of(&addr)) {
                    Some(p) => DialOpts::peer_id(p)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .allocate_new_port()
                        .build(),
                    None => DialOpts::unknown_peer_id()
                        .address(addr.clone())
                        .allocate_new_port()
                        .build(),
                };
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(
                            id,
                            PendingDial {
                                origin: FoundBy::Config,
                                reply: None,
                                config_index: Some(index),
                                addr: Some(addr),
                            },
                        );
                    }
                    Err(e) => {
                        tracing::debug!(peer = %c.addr, error = %e, "not dialing configured peer");
                        c.dialing = false;
                    }
                }
            }
        }
    }

    // ---- own record -----------------------------------------------------

    fn own_record(&self, leaving: bool) -> CellRecord {
        CellRecord {
            cell_id: self.local.cell_id.clone(),
            level: self.local.level,
            branch: self.local.branch.clone(),
            seq: self.local.seq,
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
        addrs.sort_by_key(|a| !a.iter().any(|p| matches!(p, Protocol::Tcp(_))));
        addrs.iter().take(super::protocol::MAX_ADDRS / 2).map(|a| a.to_string()).collect()
    }

    /// Publishes this cell's record with a new `seq`; returns how many cells
    /// it was sent to.
    fn publish_own(&mut self, why: &str) -> usize {
        self.local.bump();
        let data = self.own_record(false).to_cbor();
        let reached = self.topic_peers();
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

    fn topic_peers(&self) -> usize {
        self.swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&self.topic_hash))
            .count()
    }

    /// Every live record we hold, for an exchange with `peer`. The peer's
    /// own record is included on purpose: if it is not one the peer made,
    /// someone else holds its key (see `check_clone`).
    fn known_for(&self, _peer: PeerId) -> Vec<KnownCell> {
        self.mesh
            .alive_records()
            .take(MAX_KNOWN_RECORDS)
            .map(|(p, record)| KnownCell { peer_id: p.to_base58(), record })
            .collect()
    }

    /// Anti-entropy: exchange records with one connected cell per heartbeat,
    /// in turn. Repairs whatever gossip missed, and shows each cell the
    /// record others hold for it.
    fn exchange_with_next(&mut self) {
        let mut peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        if peers.is_empty() {
            return;
        }
        peers.sort();
        let next = peers.iter().find(|p| Some(**p) > self.last_exchange).or(peers.first()).copied();
        if let Some(peer) = next {
            self.last_exchange = Some(peer);
            self.send_sync(peer);
        }
    }

    // ---- snapshot -------------------------------------------------------

    /// The mesh's entries, each marked relayed when its only links are
    /// circuits.
    fn peer_entries(&self) -> Vec<crate::mesh::PeerEntry> {
        let mut entries = self.mesh.entries();
        for e in &mut entries {
            if let Ok(p) = e.peer_id.parse::<PeerId>() {
                e.relayed = self
                    .conns
                    .get(&p)
                    .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c.relayed));
            }
        }
        entries
    }

    fn publish_snapshot(&mut self) {
        self.snapshot_due = None;
        self.dirty = false;
        self.soft_dirty = false;
        let snap = Snapshot {
            local: LocalState {
                cell_id: self.local.cell_id.clone(),
                peer_id: self.local_peer.to_base58(),
                branch: self.local.branch.clone(),
                consciousness_level: self.local.level,
                seq: self.local.seq,
                listen_addrs: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
                reachability: self.reachability,
                relays: self.relays_ok.iter().map(|p| p.to_base58()).collect(),
            },
            peers: self.peer_entries(),
            degraded: self.degraded.clone(),
        };
        self.metrics.observe(&snap);
        let counts = (snap.connected(), snap.count(PeerState::Alive), snap.degraded.is_some());
        if counts != self.last_counts {
            self.last_counts = counts;
            self.emit(MeshEvent::Status {
                status: if snap.degraded.is_some() { "degraded" } else { "healthy" },
                reason: snap.degraded.clone(),
                peers: counts.0,
                peers_alive: counts.1,
            });
        }
        let peers = snap
            .peers
            .iter()
            .filter(|e| e.connected && !e.addresses.is_empty())
            .take(MAX_REMEMBERED)
            .map(|e| RememberedPeer { peer_id: e.peer_id.clone(), addrs: e.addresses.clone() })
            .collect();
        self.state_tx.send_replace(Some(State {
            level: self.local.level,
            branch: self.local.branch.clone(),
            seq: self.local.seq,
            peers,
        }));
        self.snapshot_tx.send_replace(Arc::new(snap));
        // (The status event above is in this snapshot already.)
        self.urgent = false;
    }

    fn log_transition(&self, t: &Transition) {
        let cell = self.mesh.get(&t.peer).and_then(|e| e.cell_id.clone()).unwrap_or_default();
        match (t.from, t.to) {
            (None, _) => tracing::info!(peer = %t.peer, cell, "cell joined"),
            (_, PeerState::Alive) => tracing::info!(peer = %t.peer, cell, "cell is back"),
            (_, PeerState::Failed) => tracing::warn!(peer = %t.peer, cell, "cell failed"),
            (_, PeerState::Left) => tracing::info!(peer = %t.peer, cell, "cell left"),
        }
    }

    /// Sends a mesh event to `/events` subscribers; never waits.
    fn emit(&mut self, event: MeshEvent) {
        // An error only means nobody is subscribed.
        let _ = self.events.send(event);
        // What `/events` says, `/peers` says too, at once.
        self.urgent = true;
    }

    fn transition(&mut self, t: Option<Transition>) {
        if let Some(t) = t {
            self.log_transition(&t);
            let cell = self.mesh.get(&t.peer).and_then(|e| e.cell_id.clone());
            self.emit(MeshEvent::from_transition(&t, cell));
            self.dirty = true;
            if t.to == PeerState::Alive {
                self.retry.remove(&t.peer);
            }
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
        if merge == Merge::Conflict {
            let owner = self.mesh.claimed_by_other(peer, &record.cell_id);
            tracing::warn!(
                %peer,
                cell_id = record.cell_id,
                owner = ?owner.map(|o| o.to_base58()),
                "refused a record: its cell_id belongs to another live cell (two machines with one name? set AIOS_CELL_ID)"
            );
            self.metrics
                .gossip_rejected
                .get_or_create(&ReasonLabel { reason: "cell_id_taken" })
                .inc();
            return merge;
        }
        if merge == Merge::Stale {
            return merge;
        }
        if merge == Merge::New && !direct && !self.swarm.is_connected(&peer) {
            // A cell we had not heard of: let the DHT find it soon.
            self.kad_backoff = KAD_ROUND_MIN;
            self.kad_next = self.kad_next.min(Instant::now() + KAD_ROUND_MIN);
        }
        self.dirty = true;
        if old_level != Some(record.level) {
            self.emit(MeshEvent::LevelChanged {
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

    /// In a private mesh, says once per remote why a connection failed: the
    /// other side most likely has a different swarm key, or none.
    fn explain_handshake_failure(&mut self, remote: &str, error: &str) {
        let handshake = error.contains("andshake") || error.contains("negotiat");
        if remote.is_empty() || error.contains("Connection refused") || !(self.private || handshake)
        {
            return;
        }
        if self.handshake_warned.len() > 1024 {
            self.handshake_warned.clear();
        }
        if !self.handshake_warned.insert(remote.to_owned()) {
            return;
        }
        if self.private {
            tracing::warn!(
                remote,
                error,
                "a connection failed in the handshake: this is a private mesh, and the other cell \
                 probably has a different swarm key or none (compare the key fingerprints in the start logs)"
            );
        } else {
            tracing::warn!(
                remote,
                error,
                "a connection failed in the handshake: the other side may be a cell in a private mesh \
                 (it has a swarm key and this cell has none), or not a cell at all"
            );
        }
    }

    /// A record under our own peer id that we did not make means another
    /// process holds our key: a cloned machine image, usually.
    fn check_clone(&mut self, record: &CellRecord, via: &str) {
        if record.seq <= self.local.start_seq {
            // Made before this run started: our own, from before a restart
            // or a rename.
            return;
        }
        if record.cell_id == self.local.cell_id && record.seq <= self.local.seq {
            // One of our own records coming back: nothing new.
            return;
        }
        let reason = format!(
            "another cell is using this cell's identity (peer id {}; it calls itself {:?}, seen via {via}). \
             Two machines share one identity key, usually from a cloned disk image. Fix: stop one of \
             them, delete identity.key in its data dir, and start it again to get a new identity",
            self.local_peer, record.cell_id
        );
        if self.degraded.as_deref() != Some(reason.as_str()) {
            tracing::error!("{reason}");
            self.degraded = Some(reason);
            self.dirty = true;
            // A record of ours newer than the clone's start: the clone
            // (which ignores our records from before it started) learns of
            // us too.
            self.publish_own("a clone of this cell");
        }
    }

    // ---- dialing --------------------------------------------------------

    /// Two cells usually find each other at the same moment (one mDNS
    /// answer heard by both, or each other's records): the one with the
    /// smaller peer id dials, the other waits [`DIAL_YIELD`] for it. Half the
    /// handshakes, no duplicate to prune; when 50 cells start together that
    /// is what keeps the host's CPU from saturating.
    fn may_dial(&mut self, peer: PeerId, now: Instant) -> bool {
        if self.local_peer < peer {
            return true;
        }
        now >= *self.yield_until.entry(peer).or_insert(now + DIAL_YIELD)
    }

    fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, origin: FoundBy) {
        if peer == self.local_peer || self.swarm.is_connected(&peer) || addrs.is_empty() {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(dial_addrs(addrs))
            .condition(PeerCondition::DisconnectedAndNotDialing)
            // Two cells that hear the same mDNS answer dial each other at once;
            // with a reused port the kernel merges the sockets and Noise fails.
            .allocate_new_port()
            .build();
        let id = opts.connection_id();
        if self.swarm.dial(opts).is_ok() {
            self.pending_dials
                .insert(id, PendingDial { origin, reply: None, config_index: None, addr: None });
        }
    }

    /// Cells we believe alive (from mDNS or another cell's records) but are
    /// not connected to: dial them (those `may_dial` lets us).
    fn dial_known(&mut self, now: Instant) {
        let nets = &self.local_nets;
        let candidates: Vec<_> =
            self.mesh.unconnected_alive(HEARSAY_DIAL_AFTER, |a| near(nets, a)).collect();
        for (peer, addrs) in candidates {
            if !self.may_dial(peer, now) {
                continue;
            }
            let origin = self.mesh.get(&peer).map(|e| e.found_by).unwrap_or(FoundBy::Gossip);
            self.dial_peer(peer, addrs, origin);
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Our own loop ran late: the host is busy, so replies are too.
        let late = now.duration_since(self.last_tick).saturating_sub(TICK);
        self.last_tick = now;
        if late > LATE_TICK {
            self.strain = (self.strain + 1).min(MAX_LOCAL_STRAIN);
            self.strain_at = now;
            tracing::debug!(
                ?late,
                strain = self.strain,
                "this cell runs late: waiting longer for probes"
            );
        }
        self.dial_known(now);
        // Failed cells: redial with backoff for a while (heals partitions).
        let failed: Vec<PeerId> = self.mesh.failed().collect();
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
            let addrs = self.mesh.addrs_of(&peer);
            let origin = self.mesh.get(&peer).map(|e| e.found_by).unwrap_or(FoundBy::Gossip);
            self.dial_peer(peer, addrs, origin);
        }
        // Configured peers.
        for index in 0..self.configured.len() {
            let c = &mut self.configured[index];
            let connected = c.peer.is_some_and(|p| self.swarm.is_connected(&p));
            if connected || c.dialing || now < c.next_attempt {
                continue;
            }
            c.dialing = true;
            c.next_attempt = now + c.backoff;
            c.backoff = (c.backoff * 2).min(CONFIG_RETRY_MAX);
            match &c.addr {
                PeerAddr::Multiaddr(m) => {
                    let m = m.clone();
                    self.on_command(Command::DialConfigured { index, addrs: vec![m] });
                }
                PeerAddr::Host { host, port } => {
                    let (host, port, handle) = (host.clone(), *port, self.handle.clone());
                    tokio::spawn(async move {
                        let addrs = match resolve(&host, port).await {
                            Ok(a) => a,
                            Err(e) => {
                                tracing::warn!(peer = %host, error = %e, "configured peer does not resolve");
                                Vec::new()
                            }
                        };
                        handle.send(Command::DialConfigured { index, addrs });
                    });
                }
            }
        }
        self.close_silent_peers(now);
        if self.strain > 0 && now.duration_since(self.strain_at) > STRAIN_EASE {
            self.strain -= 1;
            self.strain_at = now;
        }
        self.prefer_tcp(now);
        if now >= self.kad_next && self.dht_useful() {
            self.feed_kad();
            self.kad_round();
            self.kad_next = now + self.kad_backoff;
            self.kad_backoff = (self.kad_backoff * 2).min(KAD_ROUND_MAX);
        }
        if self.reachability == "private" {
            self.ensure_relays(now);
        }
        self.retry_hellos();
        self.prune_duplicates();
        if self.soft_dirty {
            self.dirty = true;
        }
    }

    /// A cell linked to us only over QUIC (a dial that took the QUIC address,
    /// or one from the other side) gets a TCP dial too, when it has a TCP
    /// address; the QUIC link is then pruned. The smaller peer id dials, at
    /// most every [`TCP_UPGRADE_RETRY`].
    fn prefer_tcp(&mut self, now: Instant) {
        let quic_only: Vec<PeerId> = self
            .conns
            .iter()
            .filter(|(p, c)| self.local_peer < **p && c.iter().all(|c| c.quic && !c.relayed))
            .map(|(p, _)| *p)
            .collect();
        for peer in quic_only {
            if self.tcp_tried.get(&peer).is_some_and(|t| now.duration_since(*t) < TCP_UPGRADE_RETRY)
            {
                continue;
            }
            let tcp: Vec<Multiaddr> = dial_addrs(self.mesh.addrs_of(&peer))
                .into_iter()
                .filter(|a| is_tcp(a) && !a.iter().any(|p| p == Protocol::P2pCircuit))
                .collect();
            if tcp.is_empty() {
                continue;
            }
            self.tcp_tried.insert(peer, now);
            tracing::debug!(%peer, "linked over QUIC only; dialing TCP too");
            let opts = DialOpts::peer_id(peer)
                .addresses(tcp)
                .condition(PeerCondition::NotDialing)
                .allocate_new_port()
                .build();
            let _ = self.swarm.dial(opts);
        }
    }

    /// Connected cells failed for their silence that have not answered a
    /// probe for [`SILENT_CLOSE_AFTER`] are disconnected (and then redialed
    /// with backoff). Until then their connections stay open: a cell that
    /// was only slow (a busy host, a burst of handshakes when many cells
    /// start together) answers the next probe and is alive again without a
    /// new handshake, so a slow moment does not become a storm of redials.
    fn close_silent_peers(&mut self, now: Instant) {
        let stale: Vec<PeerId> = self
            .silent_since
            .iter()
            .filter(|(_, at)| now.duration_since(**at) > SILENT_CLOSE_AFTER)
            .map(|(p, _)| *p)
            .collect();
        for peer in stale {
            tracing::debug!(%peer, "still no probe answer; closing its connections");
            self.silent_since.remove(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// How long a probe waits for its echo: the configured timeout,
    /// stretched by this cell's local health.
    fn probe_wait(&self) -> Duration {
        self.probe_timeout * (1 + self.strain)
    }

    fn probe(&mut self, peer: PeerId, purpose: Purpose) {
        let req = ProbeRequest { peer, timeout: self.probe_wait(), purpose };
        if self.probe_tx.try_send(req).is_err() {
            tracing::debug!(%peer, ?purpose, "prober busy; probe skipped");
        }
    }

    /// Every probe interval: probe the ring successor, and every connected
    /// cell failed for its silence (is it back?).
    fn probe_round(&mut self) {
        let members: Vec<PeerId> = self
            .conns
            .keys()
            .filter(|p| {
                !self.no_probe.contains(p) && self.mesh.state_of(p) == Some(PeerState::Alive)
            })
            .copied()
            .collect();
        let next = probe::successor(self.local_peer, members);
        let now = Instant::now();
        self.view_tx.send_replace(self.view_hash());
        if next != self.watching {
            tracing::debug!(peer = ?next.map(|p| p.to_base58()), "watching the next cell in the ring");
            self.watching = next;
            self.view_differs_since = None;
            self.view_agreed_at = None;
            self.beat_deadline = None;
            self.watch_mode = match next {
                Some(p) if self.beats_on() && !self.no_beats.contains(&p) => {
                    self.beat_command(BeatCommand::Watch(p));
                    WatchMode::Awaiting { since: now }
                }
                _ => {
                    if self.beats_on() {
                        self.beat_command(BeatCommand::Unwatch);
                    }
                    WatchMode::Probe
                }
            };
        }
        if let Some(peer) = next {
            match self.watch_mode {
                WatchMode::Probe => self.probe(peer, Purpose::Watch),
                WatchMode::Awaiting { since } => {
                    // Until its first beat comes, probe it as before.
                    self.probe(peer, Purpose::Watch);
                    if now.duration_since(since) > FIRST_BEAT_WAIT {
                        tracing::info!(%peer, "no UDP beats arrive from this cell (a firewall or NAT on the way?); watching it by TCP probes");
                        self.beats_fail(peer);
                    }
                }
                // Watched by its beats' deadline (`beat_overdue`).
                WatchMode::Beating { .. } => {}
            }
        }
        let silent: Vec<PeerId> =
            self.silent_since.keys().filter(|p| self.conns.contains_key(p)).copied().collect();
        for peer in silent {
            self.probe(peer, Purpose::Revive);
        }
    }

    fn beats_on(&self) -> bool {
        !self.beat_tx.is_closed()
    }

    fn beat_command(&mut self, cmd: BeatCommand) {
        if self.beat_tx.try_send(cmd).is_err() {
            tracing::debug!("beat task busy or gone; watching by TCP probes");
            self.watch_mode = WatchMode::Probe;
            self.beat_deadline = None;
        }
    }

    /// Beats from `peer` do not come: watch it by TCP probes from now on.
    fn beats_fail(&mut self, peer: PeerId) {
        self.no_beats.insert(peer);
        if self.watching == Some(peer) {
            self.watch_mode = WatchMode::Probe;
            self.beat_deadline = None;
            self.beat_command(BeatCommand::Unwatch);
        }
    }

    /// The hash of our view (every record we hold at its `seq`, ours
    /// included) that beats carry.
    fn view_hash(&self) -> u32 {
        beat::view_hash(
            self.mesh.digest().chain(std::iter::once((self.local_peer, self.local.seq))),
        )
    }

    /// The watched cell's beat is overdue: suspect it, as an unanswered
    /// probe would, and give it another interval before suspecting again.
    fn beat_overdue(&mut self) {
        let now = tokio::time::Instant::now();
        self.beat_deadline = Some(now + self.probe_interval + self.probe_wait());
        match (self.watching, self.watch_mode) {
            (Some(peer), WatchMode::Beating { .. })
                if self.conns.contains_key(&peer)
                    && self.mesh.state_of(&peer) == Some(PeerState::Alive) =>
            {
                self.suspect(peer);
            }
            _ => self.beat_deadline = None,
        }
    }

    fn on_beat(&mut self, event: BeatEvent) {
        match event {
            BeatEvent::Beat { peer, at, view } => {
                if self.watching != Some(peer) || self.watch_mode == WatchMode::Probe {
                    return;
                }
                self.metrics.beats_received.inc();
                self.watch_mode = WatchMode::Beating { last: at };
                self.beat_deadline = Some(
                    tokio::time::Instant::from_std(at) + self.probe_interval + self.probe_wait(),
                );
                if view == self.view_hash() {
                    self.view_differs_since = None;
                    self.view_agreed_at = Some(at);
                    return;
                }
                let since = *self.view_differs_since.get_or_insert(at);
                if at.duration_since(since) >= VIEW_SETTLE && self.sync_if_due(peer, at) {
                    tracing::debug!(%peer, "its view differs from ours; synced");
                    self.metrics.view_syncs.inc();
                }
            }
            BeatEvent::Subscribed { peer, accepted } => {
                if !accepted {
                    tracing::debug!(%peer, "no beats from this cell; watching it by TCP probes");
                    self.beats_fail(peer);
                }
            }
            BeatEvent::Ended { peer } => {
                if self.watching == Some(peer) && self.watch_mode != WatchMode::Probe {
                    tracing::debug!(%peer, "its beats ended; watching it by TCP probes");
                    self.watch_mode = WatchMode::Probe;
                    self.beat_deadline = None;
                }
            }
        }
    }

    /// Where beats for `peer` go: the IP of a direct connection to it.
    fn update_beat_ip(&self, peer: PeerId) {
        let ip = self
            .conns
            .get(&peer)
            .and_then(|c| c.iter().filter(|c| !c.relayed).find_map(|c| ip_of(&c.addr)));
        self.beat_shared.set_ip(peer, ip);
    }

    fn on_probe(&mut self, r: ProbeResult) {
        let labels = ProbeLabels { purpose: r.purpose.as_str(), outcome: r.outcome.as_str() };
        self.metrics.probes.get_or_create(&labels).inc();
        match r.outcome {
            Outcome::Answered(rtt) => {
                // It answers probes but its beats stopped: UDP no longer
                // gets through. Probe it instead of suspecting it again.
                if let WatchMode::Beating { last } = self.watch_mode {
                    if self.watching == Some(r.peer)
                        && last.elapsed() > self.probe_interval + self.probe_wait()
                    {
                        tracing::info!(peer = %r.peer, "its UDP beats stopped but it answers probes; watching it by TCP probes");
                        self.beats_fail(r.peer);
                    }
                }
                self.silent_since.remove(&r.peer);
                let t = self.mesh.rtt(r.peer, rtt);
                if t.is_some() {
                    tracing::debug!(peer = %r.peer, ?rtt, "a silent cell answers again");
                }
                self.transition(t);
                self.soft_dirty = true;
            }
            Outcome::Unsupported => {
                tracing::debug!(peer = %r.peer, "does not speak the probe protocol; pings judge it");
                self.no_probe.insert(r.peer);
            }
            Outcome::Silent => {
                let alive = self.conns.contains_key(&r.peer)
                    && self.mesh.state_of(&r.peer) == Some(PeerState::Alive);
                if !alive {
                    return;
                }
                match r.purpose {
                    Purpose::Watch => self.suspect(r.peer),
                    Purpose::Verify => self.verified_silent(r.peer),
                    Purpose::Revive => {}
                }
            }
        }
    }

    /// Our watch probe of `peer` went unanswered: ask every connected cell
    /// to check it, and check it again ourselves, together with every other
    /// cell we are connected to (if they are all silent, it is this cell
    /// that is cut off, and it should see all of them failed).
    fn suspect(&mut self, peer: PeerId) {
        tracing::debug!(%peer, wait = ?self.probe_wait(), "probe unanswered; asking every cell to check");
        self.metrics.suspects_sent.inc();
        let record = self.own_record(false);
        let others: Vec<PeerId> = self.conns.keys().filter(|p| **p != peer).copied().collect();
        for other in &others {
            let req = RegisterRequest {
                suspect: Some(peer.to_base58()),
                ..RegisterRequest::new(RequestKind::Suspect, record.clone())
            };
            let id = self.swarm.behaviour_mut().register.send_request(other, req);
            self.pending_suspect.insert(id);
        }
        self.probe(peer, Purpose::Verify);
        for other in others {
            if !self.no_probe.contains(&other)
                && self.mesh.state_of(&other) == Some(PeerState::Alive)
            {
                self.probe(other, Purpose::Verify);
            }
        }
    }

    /// A check of a suspected cell went unanswered: it is failed, unless
    /// many cells went silent at once (then this cell is the likelier
    /// culprit: it waits longer and checks again, up to its most patient).
    fn verified_silent(&mut self, peer: PeerId) {
        let now = Instant::now();
        self.recent_silent.retain(|(p, at)| *p != peer && now.duration_since(*at) < STRAIN_EASE);
        self.recent_silent.push((peer, now));
        let silent = self.recent_silent.len();
        if silent >= 3 && silent * 4 >= self.conns.len() && self.strain < MAX_LOCAL_STRAIN {
            self.strain += 1;
            self.strain_at = now;
            tracing::debug!(
                silent,
                strain = self.strain,
                "many cells silent at once: checking again, more patiently"
            );
            self.probe(peer, Purpose::Verify);
            return;
        }
        tracing::debug!(%peer, "no probe answer; failing the cell");
        self.silent_since.insert(peer, now);
        let t = self.mesh.unreachable(peer);
        self.transition(t);
    }

    /// Connected cells we have not exchanged records with yet (the hello
    /// went out on a connection that was then closed): try again.
    fn retry_hellos(&mut self) {
        let in_flight: std::collections::HashSet<PeerId> =
            self.hello_in_flight.values().copied().collect();
        let missing: Vec<PeerId> = self
            .conns
            .keys()
            .filter(|p| !self.exchanged.contains(p) && !in_flight.contains(p))
            .copied()
            .collect();
        for peer in missing {
            self.send_hello(peer, None);
        }
    }

    /// Simultaneous dials leave two connections between a pair. The cell with
    /// the smaller peer id keeps one (the one it dialed, else the oldest) and
    /// closes the rest; both sides agree, so exactly one survives.
    fn prune_duplicates(&mut self) {
        let now = Instant::now();
        let settled = |c: &ConnectionId| {
            self.conn_started.get(c).is_some_and(|at| now.duration_since(*at) >= PRUNE_AFTER)
        };
        let mut close = Vec::new();
        for (peer, conns) in &self.conns {
            if conns.len() < 2 {
                continue;
            }
            // A relayed link is only a stand-in: once a direct one exists
            // (hole punching, or a dial from the other side), both cells
            // close the circuit. Likewise QUIC once there is TCP: a crash
            // closes TCP at once. Both sides see the same links, so they
            // agree; the better link must be settled (seen by both).
            let tcp: Vec<&Conn> = conns.iter().filter(|c| !c.relayed && !c.quic).collect();
            let direct: Vec<&Conn> = if tcp.is_empty() {
                conns.iter().filter(|c| !c.relayed).collect()
            } else {
                if tcp.iter().any(|c| settled(&c.id)) {
                    close.extend(conns.iter().filter(|c| c.quic).map(|c| c.id));
                }
                tcp
            };
            if direct.iter().any(|c| settled(&c.id)) {
                close.extend(conns.iter().filter(|c| c.relayed).map(|c| c.id));
            }
            // Twins of the same kind (a simultaneous dial): the smaller peer
            // id keeps one, once all are settled.
            if self.local_peer > *peer || !conns.iter().all(|c| settled(&c.id)) {
                continue;
            }
            let pool = if direct.is_empty() { conns.iter().collect() } else { direct };
            if pool.len() < 2 {
                continue;
            }
            let keep = pool.iter().find(|c| c.dialer).unwrap_or(&pool[0]).id;
            close.extend(pool.iter().filter(|c| c.id != keep).map(|c| c.id));
        }
        for c in close {
            self.swarm.close_connection(c);
        }
    }

    // ---- swarm events ---------------------------------------------------

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.p2p_metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => {
                self.p2p_metrics.record(&e);
                self.on_gossip(e);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Register(e)) => self.on_register(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => {
                self.p2p_metrics.record(&e);
                if let identify::Event::Received { peer_id, info, .. } = e {
                    if info.protocol_version != super::protocol::IDENTIFY_PROTOCOL {
                        tracing::debug!(peer = %peer_id, version = info.protocol_version, "peer speaks another identify protocol");
                    }
                    self.mesh.identified(peer_id, &info.agent_version, &info.listen_addrs);
                    self.on_identified(peer_id, &info);
                    self.soft_dirty = true;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => {
                self.p2p_metrics.record(&e);
                self.on_ping(e);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(e)) => self.on_mdns(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => {
                self.p2p_metrics.record(&e);
                self.on_kad(e);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(e)) => self.on_autonat(e),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => {
                self.p2p_metrics.record(&e);
                tracing::debug!(event = ?e, "relay (serving)");
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(e)) => self.on_relay_client(e),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => {
                self.p2p_metrics.record(&e);
                self.on_dcutr(e);
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                let gone: Vec<PeerId> = self
                    .relay_listeners
                    .iter()
                    .filter(|(_, l)| **l == listener_id)
                    .map(|(p, _)| *p)
                    .collect();
                for p in gone {
                    tracing::info!(relay = %p, ?reason, "relay listener closed");
                    self.relay_listeners.remove(&p);
                    self.relays_ok.remove(&p);
                    self.dirty = true;
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening (libp2p)");
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                }
                self.dirty = true;
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
                self.dirty = true;
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                tracing::debug!(peer = %peer_id, ?connection_id, addr = %endpoint.get_remote_address(), dialer = endpoint.is_dialer(), "connection established");
                let pending = self.pending_dials.remove(&connection_id);
                // Our own dials are in `pending_dials`; another dialer is a
                // Kademlia query reaching a cell it was told about.
                let origin = pending
                    .as_ref()
                    .map(|p| p.origin)
                    .unwrap_or(if endpoint.is_dialer() { FoundBy::Kad } else { FoundBy::Inbound });
                if !self.conns.contains_key(&peer_id) {
                    // A cell we were not connected to: the DHT may know more now.
                    self.kad_backoff = KAD_ROUND_MIN;
                    self.kad_next = self.kad_next.min(Instant::now() + KAD_ROUND_MIN);
                }
                let addr = endpoint.is_dialer().then(|| strip_p2p(endpoint.get_remote_address()));
                let t = self.mesh.connected(peer_id, addr.as_ref(), origin);
                self.transition(t);
                self.conns.entry(peer_id).or_default().push(Conn {
                    id: connection_id,
                    dialer: endpoint.is_dialer(),
                    relayed: endpoint.is_relayed(),
                    quic: is_quic(endpoint.get_remote_address()),
                    addr: endpoint.get_remote_address().clone(),
                });
                self.update_beat_ip(peer_id);
                // A new connection proves the cell is there.
                self.silent_since.remove(&peer_id);
                self.yield_until.remove(&peer_id);
                self.dirty = true;
                let mut reply = None;
                if let Some(p) = pending {
                    if let Some(i) = p.config_index {
                        if let Some(c) = self.configured.get_mut(i) {
                            c.peer = Some(peer_id);
                            c.dialing = false;
                            c.backoff = RETRY_MIN;
                            tracing::info!(peer = %c.addr, %peer_id, "connected to configured peer");
                        }
                    }
                    reply = p.reply;
                }
                self.conn_started.insert(connection_id, Instant::now());
                // Exchange records with every newly connected cell. Both sides
                // may send (a simultaneous dial): harmless, and it does not
                // depend on which twin connection survives pruning.
                if reply.is_some() || !self.exchanged.contains(&peer_id) {
                    self.send_hello(peer_id, reply);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id, connection_id, num_established, cause, ..
            } => {
                tracing::debug!(peer = %peer_id, ?connection_id, ?cause, "connection closed");
                if let Some(c) = self.conns.get_mut(&peer_id) {
                    c.retain(|c| c.id != connection_id);
                    if c.is_empty() {
                        self.conns.remove(&peer_id);
                    }
                }
                self.conn_started.remove(&connection_id);
                self.update_beat_ip(peer_id);
                if num_established == 0 {
                    self.nat_peers.remove(&peer_id);
                    self.tcp_tried.remove(&peer_id);
                    if self.autonat_servers.remove(&peer_id) {
                        self.swarm.behaviour_mut().autonat.remove_server(&peer_id);
                    }
                    self.silent_since.remove(&peer_id);
                    self.no_probe.remove(&peer_id);
                    self.exchanged.remove(&peer_id);
                    self.kad_waiting.remove(&peer_id);
                    self.no_beats.remove(&peer_id);
                    self.view_synced_at.remove(&peer_id);
                    tracing::debug!(peer = %peer_id, cause = ?cause, "last connection closed");
                    let t = self.mesh.disconnected(peer_id);
                    self.transition(t);
                    self.dirty = true;
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                let reason = error.to_string();
                let pending = self.pending_dials.remove(&connection_id);
                let remote = peer_id
                    .map(|p| p.to_base58())
                    .or_else(|| {
                        pending.as_ref().and_then(|p| p.addr.as_ref()).map(|a| a.to_string())
                    })
                    .unwrap_or_default();
                self.explain_handshake_failure(&remote, &reason);
                if let Some(p) = pending {
                    if let Some(reply) = p.reply {
                        let target = p.addr.map(|a| a.to_string()).unwrap_or_default();
                        let _ = reply.send(Err(CommandError::Unreachable(with_hint(
                            format!("cannot reach a cell at {target}: {reason}"),
                            &target,
                        ))));
                    }
                    if let Some(i) = p.config_index {
                        if let Some(c) = self.configured.get_mut(i) {
                            c.dialing = false;
                            let msg = with_hint(
                                format!("cannot reach configured peer {}: {reason}", c.addr),
                                &c.addr.to_string(),
                            );
                            tracing::warn!(retry_in = ?c.backoff, "{msg}");
                        }
                    }
                }
                if let Some(peer) = peer_id {
                    if !self.swarm.is_connected(&peer) {
                        let t = self.mesh.unreachable(peer);
                        self.transition(t);
                    }
                }
            }
            SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                tracing::debug!(from = %send_back_addr, error = %error, "incoming connection failed");
                let ip = send_back_addr.iter().next().map(|p| p.to_string()).unwrap_or_default();
                self.explain_handshake_failure(&ip, &error.to_string());
            }
            _ => {}
        }
    }

    fn on_mdns(&mut self, e: mdns::Event) {
        match e {
            mdns::Event::Discovered(list) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in list {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    if peer == self.local_peer {
                        continue;
                    }
                    tracing::debug!(%peer, ?addrs, "mDNS discovered");
                    self.mdns_peers.insert(peer);
                    if self.autonat_servers.remove(&peer) {
                        self.swarm.behaviour_mut().autonat.remove_server(&peer);
                    }
                    if self.mesh.discovered(peer, &addrs, FoundBy::Mdns) {
                        self.dirty = true;
                    }
                    // Rediscovery of a failed cell: try it now.
                    self.retry.remove(&peer);
                    // A cell's mDNS answer holds its QUIC and TCP addresses
                    // as separate records, which can arrive in separate
                    // events. Dialing on the QUIC one alone costs a QUIC (TLS)
                    // handshake, then a TCP one to replace it (a third of a
                    // cell's start-up CPU at 20 cells): wait for the TCP
                    // record, which comes at once (the tick dials whatever
                    // is known otherwise).
                    let known = self.mesh.addrs_of(&peer);
                    if !known.iter().any(is_tcp) {
                        continue;
                    }
                    if self.may_dial(peer, Instant::now()) {
                        self.dial_peer(peer, known, FoundBy::Mdns);
                    }
                }
            }
            mdns::Event::Expired(list) => {
                for (peer, addr) in list {
                    tracing::debug!(%peer, %addr, "mDNS record expired");
                }
            }
        }
    }

    // ---- beyond the LAN: Kademlia, AutoNAT, relay, hole punching ---------

    /// Feeds a cell's listen addresses to Kademlia (libp2p's kad learns only
    /// the address we dialed, none for inbound peers) and notes relays.
    fn on_identified(&mut self, peer: PeerId, info: &identify::Info) {
        let speaks = |name: &str| info.protocols.iter().any(|p| p.as_ref() == name);
        if speaks(relay::HOP_PROTOCOL_NAME.as_ref()) {
            self.hop_peers.insert(peer);
        }
        // Does it see us through a NAT? Our own listen addresses carry every
        // interface IP we have.
        let ours = |ip: std::net::IpAddr| self.listen_addrs.iter().any(|a| ip_of(a) == Some(ip));
        if let Some(ip) = ip_of(&info.observed_addr) {
            if !ip.is_loopback() && !ours(ip) && self.nat_peers.insert(peer) {
                tracing::info!(%peer, observed = %info.observed_addr, "a cell sees us through a NAT");
            }
        }
        // A cell beyond this LAN: an AutoNAT server, and a reason for
        // Kademlia rounds. Neighbours mDNS missed (a burst of answers at
        // start can overflow socket buffers) are recognised by their
        // addresses.
        let beyond = !self.mdns_peers.contains(&peer)
            && !info.listen_addrs.iter().any(|a| near(&self.local_nets, a));
        if beyond && self.swarm.is_connected(&peer) && self.autonat_servers.insert(peer) {
            tracing::debug!(%peer, "a cell beyond this LAN: AutoNAT server");
            self.swarm.behaviour_mut().autonat.add_server(peer, None);
        }
        if !speaks(KAD_PROTOCOL) {
            return;
        }
        // A remote's loopback address reaches ourselves, unless we reach the
        // remote over loopback too (cells on one machine).
        let local_link =
            self.conns.get(&peer).is_some_and(|c| c.iter().any(|c| is_loopback(&c.addr)));
        let usable: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .filter(|a| (local_link || !is_loopback(a)) && !is_unspecified(a))
            .map(strip_p2p)
            .collect();
        // TCP when the cell has it, as for every dial (a crash closes a TCP
        // connection at once; QUIC waits for its idle timeout).
        let tcp = usable.iter().any(is_tcp);
        let addrs: Vec<Multiaddr> = usable.into_iter().filter(|a| !tcp || is_tcp(a)).collect();
        self.kad_waiting.insert(peer, addrs);
        self.feed_kad();
    }

    /// Hands Kademlia the cells identify told us of, once the DHT is of use
    /// (see `dht_useful`). Until then a cell's routing table stays empty:
    /// libp2p-kad bootstraps whenever a peer joins a table of fewer than 20,
    /// and every 5 minutes, and on one LAN such a bootstrap (a lookup per
    /// bucket, each answered with up to 20 addresses by every cell) cost
    /// each cell ~640 KB at 20 cells, for nothing mDNS and the record
    /// exchange do not already give.
    fn feed_kad(&mut self) {
        if self.kad_waiting.is_empty() || !self.dht_useful() {
            return;
        }
        for (peer, addrs) in std::mem::take(&mut self.kad_waiting) {
            if !self.swarm.is_connected(&peer) {
                continue;
            }
            for addr in addrs {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
        }
    }

    /// Whether a discovery round can find anything: we are connected, and
    /// either mDNS is off, or a connected cell is beyond this LAN, or a cell
    /// we heard of, at no address on our networks, is still not connected.
    /// On one LAN, mDNS and the record exchange find everyone, and a round
    /// would cost every cell ~100 KB.
    fn dht_useful(&self) -> bool {
        let nets = &self.local_nets;
        !self.conns.is_empty()
            && (!self.mdns_on
                || !self.autonat_servers.is_empty()
                || self.mesh.has_hearsay(|a| near(nets, a)))
    }

    fn on_interface(&mut self, change: std::io::Result<if_watch::IfEvent>) {
        match change {
            Ok(if_watch::IfEvent::Up(net)) => {
                tracing::debug!(%net, "interface address up");
                if !self.local_nets.contains(&net) {
                    self.local_nets.push(net);
                }
            }
            Ok(if_watch::IfEvent::Down(net)) => {
                tracing::debug!(%net, "interface address down");
                self.local_nets.retain(|n| *n != net);
            }
            Err(e) => tracing::debug!(error = %e, "interface watch"),
        }
    }

    /// Asks the DHT who provides the mesh topic (every cell does), and
    /// while the mesh is changing, announces this cell as one.
    fn kad_round(&mut self) {
        let key = kad::RecordKey::new(&MESH_KEY);
        let kad = &mut self.swarm.behaviour_mut().kad;
        if self.kad_backoff < KAD_ANNOUNCE_BELOW {
            if let Err(e) = kad.start_providing(key.clone()) {
                tracing::warn!(error = %e, "cannot announce this cell in the DHT");
            }
        }
        kad.get_providers(key);
        tracing::debug!(next_in = ?self.kad_backoff, "Kademlia discovery round");
    }

    fn on_kad(&mut self, e: kad::Event) {
        match e {
            kad::Event::OutboundQueryProgressed {
                result:
                    kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                        providers,
                        ..
                    })),
                ..
            } => {
                for peer in providers {
                    if peer == self.local_peer || self.swarm.is_connected(&peer) {
                        continue;
                    }
                    tracing::debug!(%peer, "Kademlia: a cell provides the mesh topic");
                    // No addresses here: Kademlia hands the swarm the ones it
                    // learned in the query. No new port either: a dial from
                    // the listen port is what lets NAT hole punching work.
                    let opts = DialOpts::peer_id(peer)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    let id = opts.connection_id();
                    if self.swarm.dial(opts).is_ok() {
                        self.pending_dials.insert(
                            id,
                            PendingDial {
                                origin: FoundBy::Kad,
                                reply: None,
                                config_index: None,
                                addr: None,
                            },
                        );
                    }
                }
            }
            kad::Event::RoutingUpdated { peer, is_new_peer: true, .. } => {
                tracing::debug!(%peer, "Kademlia: added to the routing table");
            }
            kad::Event::OutboundQueryProgressed { result, .. } => {
                tracing::trace!(?result, "Kademlia query progressed");
            }
            _ => {}
        }
    }

    fn on_autonat(&mut self, e: autonat::Event) {
        if let autonat::Event::StatusChanged { old, new } = e {
            self.reachability = match new {
                autonat::NatStatus::Public(_) => "public",
                autonat::NatStatus::Private => "private",
                autonat::NatStatus::Unknown => "unknown",
            };
            tracing::info!(?old, ?new, "AutoNAT: reachability is {}", self.reachability);
            if self.reachability != "private" {
                // Reachable: no need for relays any more.
                for (relay, listener) in self.relay_listeners.drain() {
                    tracing::info!(%relay, "dropping relay reservation (reachable now)");
                    self.swarm.remove_listener(listener);
                }
                self.relays_ok.clear();
            } else {
                self.ensure_relays(Instant::now());
            }
            self.dirty = true;
        }
    }

    /// A private cell listens through up to [`WANTED_RELAYS`] relays: cells
    /// that serve relay v2, that see us through a NAT (they are outside it)
    /// and that we reached by a direct dial (so others can reach them too).
    fn ensure_relays(&mut self, now: Instant) {
        if self.relay_listeners.len() >= WANTED_RELAYS {
            return;
        }
        let mut candidates: Vec<(PeerId, Multiaddr)> = Vec::new();
        for peer in self.hop_peers.intersection(&self.nat_peers) {
            if self.relay_listeners.contains_key(peer)
                || self.relay_tried.get(peer).is_some_and(|t| now.duration_since(*t) < RELAY_RETRY)
            {
                continue;
            }
            let direct = self
                .conns
                .get(peer)
                .and_then(|c| c.iter().find(|c| c.dialer && !c.relayed && !is_loopback(&c.addr)));
            if let Some(c) = direct {
                candidates.push((*peer, strip_p2p(&c.addr)));
            }
        }
        candidates.sort();
        for (relay, addr) in candidates {
            if self.relay_listeners.len() >= WANTED_RELAYS {
                break;
            }
            self.relay_tried.insert(relay, now);
            let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    tracing::info!(%relay, addr = %circuit, "private: asking a cell to relay for us");
                    self.relay_listeners.insert(relay, id);
                }
                Err(e) => tracing::warn!(%relay, error = %e, "cannot listen through relay"),
            }
        }
    }

    fn on_relay_client(&mut self, e: relay::client::Event) {
        match e {
            relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal, .. } => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "reachable through a relay");
                }
                self.relays_ok.insert(relay_peer_id);
                self.dirty = true;
            }
            other => tracing::debug!(event = ?other, "relay client"),
        }
    }

    fn on_dcutr(&mut self, e: dcutr::Event) {
        match e.result {
            Ok(_) => tracing::info!(peer = %e.remote_peer_id, "hole punching: direct link made"),
            Err(err) => {
                tracing::info!(peer = %e.remote_peer_id, error = %err, "hole punching failed; staying relayed")
            }
        }
    }

    /// Pings measure round trips (`rtt_ms`); probes judge liveness, except
    /// for cells that do not speak the probe protocol, which a failed ping
    /// fails.
    fn on_ping(&mut self, e: ping::Event) {
        match e.result {
            Ok(rtt) => {
                let t = self.mesh.rtt(e.peer, rtt);
                if t.is_some() {
                    self.silent_since.remove(&e.peer);
                }
                self.transition(t);
                self.soft_dirty = true;
            }
            Err(ping::Failure::Unsupported) => {}
            Err(failure) if self.no_probe.contains(&e.peer) => {
                tracing::debug!(peer = %e.peer, %failure, "ping failed; failing the cell");
                let t = self.mesh.unreachable(e.peer);
                self.transition(t);
            }
            Err(failure) => tracing::debug!(peer = %e.peer, %failure, "ping failed"),
        }
    }

    fn on_gossip(&mut self, e: gossipsub::Event) {
        match e {
            gossipsub::Event::Message { propagation_source, message_id, message } => {
                let verdict = match (message.source, CellRecord::from_cbor(&message.data)) {
                    (Some(source), Ok(record)) if source != self.local_peer => {
                        self.metrics.gossip_received.inc();
                        match self.merge_record(source, &record, FoundBy::Gossip, true) {
                            Merge::Conflict => MessageAcceptance::Reject,
                            _ => MessageAcceptance::Accept,
                        }
                    }
                    (Some(_), Ok(record)) => {
                        // Signed with our key but not published by us.
                        self.check_clone(&record, "gossip");
                        MessageAcceptance::Ignore
                    }
                    (None, _) => {
                        self.metrics
                            .gossip_rejected
                            .get_or_create(&ReasonLabel { reason: "unsigned" })
                            .inc();
                        MessageAcceptance::Reject
                    }
                    (Some(source), Err(err)) => {
                        tracing::debug!(%source, %err, "rejected gossip message");
                        self.metrics
                            .gossip_rejected
                            .get_or_create(&ReasonLabel { reason: "invalid" })
                            .inc();
                        MessageAcceptance::Reject
                    }
                };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    verdict,
                );
            }
            gossipsub::Event::Subscribed { peer_id, topic } if topic == self.topic_hash => {
                tracing::debug!(peer = %peer_id, "peer subscribed to the mesh topic");
            }
            _ => {}
        }
    }

    // ---- request-response ----------------------------------------------

    fn send_hello(
        &mut self,
        peer: PeerId,
        reply: Option<oneshot::Sender<Result<RegisterOutcome, CommandError>>>,
    ) {
        let req = RegisterRequest {
            known: self.known_for(peer),
            ..RegisterRequest::new(RequestKind::Hello, self.own_record(false))
        };
        let id = self.swarm.behaviour_mut().register.send_request(&peer, req);
        self.hello_in_flight.insert(id, peer);
        if let Some(reply) = reply {
            self.pending_hello.insert(id, reply);
        }
    }

    /// Anti-entropy: our record and the digest of every record we hold; the
    /// answer brings only what is newer or missing here.
    fn send_sync(&mut self, peer: PeerId) {
        // Our own record is not in the digest: the answer always brings
        // back the peer's record of us, as a `hello` does (clone detection).
        let digest: Vec<DigestEntry> = self
            .mesh
            .digest()
            .take(MAX_KNOWN_RECORDS)
            .map(|(p, seq)| DigestEntry { peer_id: p.to_base58(), seq })
            .collect();
        let req = RegisterRequest {
            digest,
            ..RegisterRequest::new(RequestKind::Sync, self.own_record(false))
        };
        let id = self.swarm.behaviour_mut().register.send_request(&peer, req);
        self.hello_in_flight.insert(id, peer);
    }

    /// Merges the records in an exchange. Returns how many third-party
    /// records came with it.
    fn merge_exchange(
        &mut self,
        peer: PeerId,
        record: &CellRecord,
        known: &[KnownCell],
    ) -> Result<usize, String> {
        record.validate().map_err(|e| e.to_string())?;
        self.merge_record(peer, record, FoundBy::Inbound, true);
        let mut n = 0;
        for k in known.iter().take(MAX_KNOWN_RECORDS) {
            let Ok(p) = k.peer_id.parse::<PeerId>() else { continue };
            if p == self.local_peer {
                self.check_clone(&k.record, "record exchange");
                continue;
            }
            if p == peer || k.record.validate().is_err() {
                continue;
            }
            n += 1;
            self.merge_record(p, &k.record, FoundBy::Gossip, false);
        }
        // Cells we just heard of are dialed now, not at the next tick: a
        // cell that started after the others sent mDNS only a query, which
        // tells nobody of it; its records are how the rest learn of it.
        if n > 0 {
            self.dial_known(Instant::now());
        }
        Ok(n)
    }

    fn count_registration(&self, direction: &'static str, ok: bool) {
        self.metrics
            .registrations
            .get_or_create(&RegistrationLabels {
                direction,
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    fn on_register(&mut self, e: request_response::Event<RegisterRequest, RegisterResponse>) {
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_request(peer, request, channel)
                }
                request_response::Message::Response { request_id, response } => {
                    if self.pending_leave.remove(&request_id).is_some()
                        || self.pending_suspect.remove(&request_id)
                    {
                        return;
                    }
                    self.hello_in_flight.remove(&request_id);
                    if self.swarm.is_connected(&peer) {
                        self.exchanged.insert(peer);
                    }
                    let result = self.merge_exchange(peer, &response.record, &response.known);
                    self.count_registration("outbound", result.is_ok());
                    if let Some(reply) = self.pending_hello.remove(&request_id) {
                        let out = match result {
                            Ok(known_cells) => Ok(RegisterOutcome {
                                peer_id: peer.to_base58(),
                                cell_id: response.record.cell_id.clone(),
                                branch: response.record.branch.clone(),
                                consciousness_level: response.record.level,
                                addresses: response.record.addrs.clone(),
                                agent: response.record.agent.clone(),
                                known_cells,
                            }),
                            Err(e) => Err(CommandError::Unreachable(format!(
                                "peer {peer} sent an invalid record: {e}"
                            ))),
                        };
                        let _ = reply.send(out);
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                self.pending_leave.remove(&request_id);
                if self.pending_suspect.remove(&request_id) {
                    return;
                }
                // The tick sends another hello while the peer stays connected,
                // unless it does not speak the protocol at all.
                self.hello_in_flight.remove(&request_id);
                if matches!(error, request_response::OutboundFailure::UnsupportedProtocols) {
                    self.exchanged.insert(peer);
                }
                if let Some(reply) = self.pending_hello.remove(&request_id) {
                    self.count_registration("outbound", false);
                    let _ = reply.send(Err(CommandError::Unreachable(format!(
                        "peer {peer} connected but did not register: {error}"
                    ))));
                } else {
                    tracing::debug!(%peer, %error, "record exchange failed");
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound record exchange failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// The second half of a `hello` or `sync` from `peer`: merge what it
    /// sent, and answer with our record and `known` (chosen before merging).
    fn merge_and_answer(
        &mut self,
        peer: PeerId,
        request: &RegisterRequest,
        known: Vec<KnownCell>,
        channel: ResponseChannel<RegisterResponse>,
    ) {
        let ok = self.merge_exchange(peer, &request.record, &request.known);
        match &ok {
            Ok(_) => {
                self.exchanged.insert(peer);
            }
            Err(e) => tracing::debug!(%peer, error = %e, "refused a registration"),
        }
        self.count_registration("inbound", ok.is_ok());
        self.respond(channel, known);
    }

    /// Answers a request with our record and `known`.
    fn respond(&mut self, channel: ResponseChannel<RegisterResponse>, known: Vec<KnownCell>) {
        let resp = RegisterResponse { record: self.own_record(false), known };
        let _ = self.swarm.behaviour_mut().register.send_response(channel, resp);
    }

    /// Sends `peer` a `sync`, unless one went to it less than
    /// [`VIEW_SYNC_GAP`] ago. Returns whether it did.
    fn sync_if_due(&mut self, peer: PeerId, now: Instant) -> bool {
        let due =
            self.view_synced_at.get(&peer).is_none_or(|t| now.duration_since(*t) >= VIEW_SYNC_GAP);
        if due {
            self.view_synced_at.insert(peer, now);
            self.send_sync(peer);
        }
        due
    }

    fn on_request(
        &mut self,
        peer: PeerId,
        request: RegisterRequest,
        channel: ResponseChannel<RegisterResponse>,
    ) {
        match request.kind {
            RequestKind::Hello => {
                // What we held before this request: if our record of the
                // requester is not one it made, it learns of its clone.
                let known = self.known_for(peer);
                self.merge_and_answer(peer, &request, known, channel);
            }
            RequestKind::Sync => {
                let held: HashMap<PeerId, u64> = request
                    .digest
                    .iter()
                    .take(MAX_KNOWN_RECORDS)
                    .filter_map(|d| Some((d.peer_id.parse::<PeerId>().ok()?, d.seq)))
                    .filter(|(p, _)| *p != peer)
                    .collect();
                // What we held before this request that is newer than the
                // digest or missing from it; our record of the requester
                // always goes back (it spots a clone of itself in it).
                let known: Vec<KnownCell> = self
                    .mesh
                    .newer_than(&held)
                    .take(MAX_KNOWN_RECORDS)
                    .map(|(p, record)| KnownCell { peer_id: p.to_base58(), record })
                    .collect();
                // The requester holds something we lack (a newer record, or
                // one under our own key: a clone): ask it back, so that one
                // exchange repairs both views.
                let lacking = held.iter().any(|(p, seq)| {
                    let ours = if *p == self.local_peer {
                        Some(self.local.seq)
                    } else {
                        self.mesh.seq_of(p)
                    };
                    ours.is_none_or(|s| *seq > s)
                });
                self.merge_and_answer(peer, &request, known, channel);
                if lacking {
                    self.sync_if_due(peer, Instant::now());
                }
            }
            RequestKind::Leave => {
                let mut record = request.record;
                record.leaving = true;
                if record.validate().is_ok() {
                    self.merge_record(peer, &record, FoundBy::Inbound, true);
                }
                self.respond(channel, Vec::new());
            }
            RequestKind::Suspect => {
                let suspect = request.suspect.as_deref().and_then(|s| s.parse::<PeerId>().ok());
                match suspect {
                    Some(p) if p == self.local_peer => {
                        tracing::debug!(by = %peer, "another cell suspects this one; its probes will settle it");
                    }
                    Some(p)
                        if self.conns.contains_key(&p)
                            && !self.no_probe.contains(&p)
                            && self.mesh.state_of(&p) == Some(PeerState::Alive) =>
                    {
                        tracing::debug!(suspect = %p, by = %peer, "checking a suspected cell");
                        self.probe(p, Purpose::Verify);
                    }
                    Some(_) => {}
                    None => tracing::debug!(%peer, "a suspect notice without a valid peer id"),
                }
                self.respond(channel, Vec::new());
            }
        }
    }

    // ---- shutdown -------------------------------------------------------

    /// Tells every connected cell we are leaving and waits (briefly) for
    /// their acknowledgements, so they mark us left before our connections
    /// drop.
    async fn leave(mut self) {
        self.local.bump();
        let record = self.own_record(true);
        let _ = self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), record.to_cbor());
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in &peers {
            let req = RegisterRequest::new(RequestKind::Leave, record.clone());
            let id = self.swarm.behaviour_mut().register.send_request(peer, req);
            self.pending_leave.insert(id, *peer);
        }
        tracing::info!(cells = peers.len(), "leaving the mesh");
        let deadline = tokio::time::sleep(LEAVE_WAIT);
        tokio::pin!(deadline);
        while !self.pending_leave.is_empty() {
            tokio::select! {
                _ = &mut deadline => {
                    tracing::warn!(unacknowledged = self.pending_leave.len(), "some cells did not acknowledge the leave");
                    break;
                }
                event = self.swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(BehaviourEvent::Register(e)) = event {
                        self.on_register(e);
                    }
                }
            }
        }
        for reply in self.pending_hello.drain().map(|(_, r)| r) {
            let _ = reply.send(Err(CommandError::Stopped));
        }
    }
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

/// Whether `addr` is on one of `nets` (a neighbour on our LAN). Loopback
/// does not count: cells on one machine are not found by mDNS either.
/// Nor does IPv6 link-local: every interface has fe80::/64.
fn near(nets: &[if_watch::IpNet], addr: &Multiaddr) -> bool {
    let link_local = |ip: &std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        std::net::IpAddr::V4(_) => false,
    };
    ip_of(addr).is_some_and(|ip| {
        !ip.is_loopback()
            && !link_local(&ip)
            && nets.iter().any(|n| n.contains(&ip) && !n.addr().is_loopback())
    })
}

/// Which of a peer's addresses to dial. A remote cell's loopback address
/// (which identify and records report) would reach ourselves, so it is
/// dropped when the peer has any other. TCP is preferred: a crashed peer's
/// TCP connection closes at once, while QUIC waits for its idle timeout.
fn dial_addrs(addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let is_loopback = |a: &Multiaddr| {
        a.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_loopback(),
            Protocol::Ip6(ip) => ip.is_loopback(),
            _ => false,
        })
    };
    let addrs: Vec<Multiaddr> = if addrs.iter().all(is_loopback) {
        addrs
    } else {
        addrs.into_iter().filter(|a| !is_loopback(a)).collect()
    };
    if addrs.iter().any(is_tcp) {
        addrs.into_iter().filter(is_tcp).collect()
    } else {
        addrs
    }
}

/// The UDP socket beats arrive on (and leave from): `port` when set, else
/// the libp2p port + 1, falling back to a free port when that is taken (two
/// cells on one host). `None` (TCP probes only) when none can be bound.
fn bind_beat_socket(
    ip: std::net::IpAddr,
    p2p_port: u16,
    port: Option<u16>,
) -> Option<std::net::UdpSocket> {
    let bind = |port: u16| {
        std::net::UdpSocket::bind((ip, port)).and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        })
    };
    let bound = match port {
        Some(port) => bind(port),
        None if p2p_port == 0 || p2p_port == u16::MAX => bind(0),
        None => bind(p2p_port + 1).or_else(|e| {
            tracing::info!(port = p2p_port + 1, error = %e, "beat port taken; using a free one");
            bind(0)
        }),
    };
    match bound {
        Ok(s) => {
            if let Ok(a) = s.local_addr() {
                tracing::info!(addr = %a, "UDP beats on");
            }
            Some(s)
        }
        Err(e) => {
            tracing::warn!(%ip, ?port, error = %e, "cannot bind the UDP beat socket; watching cells by TCP probes");
            None
        }
    }
}

fn is_quic(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
}

/// A plain TCP address (also a relayed one, whose first hop is TCP).
fn is_tcp(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, Protocol::Tcp(_)))
        && !a.iter().any(|p| matches!(p, Protocol::Ws(_) | Protocol::Wss(_)))
}

fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

fn ip_of(a: &Multiaddr) -> Option<std::net::IpAddr> {
    a.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

fn is_unspecified(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect()
}

/// Adds a hint when the target is the HTTP API's port, the usual mistake
/// with the seed's compose file (`AIOS_NETWORK_PEERS=host:8000`).
fn with_hint(msg: String, target: &str) -> String {
    let http = format!("/tcp/{DEFAULT_HTTP_PORT}");
    let http_colon = format!(":{DEFAULT_HTTP_PORT}");
    if target.ends_with(&http)
        || target.contains(&format!("{http}/"))
        || target.ends_with(&http_colon)
    {
        format!(
            "{msg} (port {DEFAULT_HTTP_PORT} is the cell's HTTP API; cells talk libp2p on port 8001: use host:8001 or leave the port out)"
        )
    } else {
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn dial_prefers_real_tcp_addresses() {
        let got = dial_addrs(addrs(&[
            "/ip4/127.0.0.1/tcp/8001",
            "/ip4/10.0.0.2/udp/8001/quic-v1",
            "/ip4/10.0.0.2/tcp/8001",
        ]));
        assert_eq!(got, addrs(&["/ip4/10.0.0.2/tcp/8001"]));
        // Only loopback known (cells on one machine): keep it.
        let lo = addrs(&["/ip4/127.0.0.1/tcp/8001"]);
        assert_eq!(dial_addrs(lo.clone()), lo);
        // Only QUIC known: dial QUIC.
        let q = addrs(&["/ip4/10.0.0.2/udp/8001/quic-v1"]);
        assert_eq!(dial_addrs(q.clone()), q);
    }

    #[test]
    fn hint_names_the_http_port_mistake() {
        assert!(with_hint("x".into(), "/ip4/10.0.0.2/tcp/8000").contains("HTTP API"));
        assert!(with_hint("x".into(), "aios-laptop.local:8000").contains("8001"));
        assert_eq!(with_hint("x".into(), "/ip4/10.0.0.2/tcp/8001"), "x");
    }

    #[test]
    fn seq_grows_and_is_at_least_the_clock() {
        let mut l =
            Local { cell_id: "c".into(), branch: "b".into(), level: 0.0, seq: 5, start_seq: 5 };
        let a = l.bump();
        let b = l.bump();
        assert!(a >= now_ms() - 1000 && b > a);
        l.seq = u64::MAX / 2;
        assert_eq!(l.bump(), u64::MAX / 2 + 1);
    }
}
