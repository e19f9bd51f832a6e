//! The IO tasks beside the node: the prober and the probe echo
//! (`probe.rs`), the beat task (`beat.rs`), name resolution for configured
//! peers, and the interface watcher. The node talks to them by message
//! only; this holds the channel ends.

use std::net::IpAddr;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use libp2p_stream::Control;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::beat::{BeatCommand, BeatEvent, BeatShared, BeatTask};
use super::handle::resolve;
use super::probe::{self, ProbeRequest, ProbeResult, Purpose};
use crate::config::Config;
use crate::metrics::ReasonLabel;

/// Probe requests and results waiting between the node and the prober.
const PROBE_CHANNEL: usize = 1024;
/// Beat commands and events waiting between the node and the beat task.
const BEAT_CHANNEL: usize = 64;

/// A configured peer's name, resolved (or why not).
pub(crate) type Resolved = (usize, Result<Vec<Multiaddr>, String>);

/// The node's ends of the tasks' channels, once they run.
pub(crate) struct Wiring {
    pub(crate) probe_results: mpsc::Receiver<ProbeResult>,
    pub(crate) beat_events: mpsc::Receiver<BeatEvent>,
    pub(crate) resolved: mpsc::Receiver<Resolved>,
    pub(crate) interfaces: Option<if_watch::tokio::IfWatcher>,
}

/// What the tasks need until [`Tasks::spawn`] starts them.
struct Parts {
    control: Control,
    probe_requests: mpsc::Receiver<ProbeRequest>,
    probe_results: mpsc::Sender<ProbeResult>,
    beat_task: Option<BeatTask>,
    wiring: Wiring,
}

pub(crate) struct Tasks {
    pub(crate) probe_interval: Duration,
    probe_tx: mpsc::Sender<ProbeRequest>,
    beat_tx: mpsc::Sender<BeatCommand>,
    beats_on: bool,
    beat_shared: BeatShared,
    /// Our view's hash, for the beats we send.
    view_tx: watch::Sender<u32>,
    resolved_tx: mpsc::Sender<Resolved>,
    parts: Option<Parts>,
}

impl Tasks {
    /// Binds the beat socket (when beats are on) and makes the channels.
    /// `configured` peers each have at most one resolution in flight, so a
    /// channel that size never refuses one (a refused one would leave the
    /// peer waiting for an answer that never comes).
    pub(crate) fn new(
        config: &Config,
        control: Control,
        configured: usize,
        beats_dropped: Family<ReasonLabel, Counter>,
    ) -> Self {
        let (probe_tx, probe_requests) = mpsc::channel(PROBE_CHANNEL);
        let (probe_results_tx, probe_results) = mpsc::channel(PROBE_CHANNEL);
        let (beat_tx, beat_commands) = mpsc::channel(BEAT_CHANNEL);
        let (beat_events_tx, beat_events) = mpsc::channel(BEAT_CHANNEL);
        let (resolved_tx, resolved) = mpsc::channel(configured.max(1));
        let (view_tx, view_rx) = watch::channel(0u32);
        let beat_shared = BeatShared::default();
        let probe_interval = config.tuning.probe_interval();
        let beat_task = if config.tuning.beats {
            bind_beat_socket(config.p2p_ip, config.p2p_port, config.tuning.beat_port).map(
                |socket| BeatTask {
                    socket,
                    control: control.clone(),
                    shared: beat_shared.clone(),
                    view: view_rx,
                    interval: probe_interval,
                    commands: beat_commands,
                    events: beat_events_tx,
                    dropped: beats_dropped,
                },
            )
        } else {
            None
        };
        Self {
            probe_interval,
            probe_tx,
            beat_tx,
            beats_on: beat_task.is_some(),
            beat_shared,
            view_tx,
            resolved_tx,
            parts: Some(Parts {
                control,
                probe_requests,
                probe_results: probe_results_tx,
                beat_task,
                wiring: Wiring { probe_results, beat_events, resolved, interfaces: None },
            }),
        }
    }

    /// UDP beats run (the socket is bound).
    pub(crate) fn beats_on(&self) -> bool {
        self.beats_on
    }

    /// Starts the tasks (once); they stop when `shutdown` fires.
    pub(crate) fn spawn(&mut self, shutdown: CancellationToken) -> Wiring {
        let Some(parts) = self.parts.take() else {
            let (_, probe_results) = mpsc::channel(1);
            let (_, beat_events) = mpsc::channel(1);
            let (_, resolved) = mpsc::channel(1);
            return Wiring { probe_results, beat_events, resolved, interfaces: None };
        };
        let Parts { control, probe_requests, probe_results, beat_task, mut wiring } = parts;
        tokio::spawn(probe::run_prober(
            control.clone(),
            probe_requests,
            probe_results,
            shutdown.clone(),
        ));
        tokio::spawn(probe::run_echo(control, shutdown.clone()));
        if let Some(task) = beat_task {
            tokio::spawn(task.run(shutdown));
        }
        wiring.interfaces = match if_watch::tokio::IfWatcher::new() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch network interfaces: every cell not found by mDNS counts as beyond the LAN");
                None
            }
        };
        wiring
    }

    /// Asks the prober to probe `peer`; false when it is busy.
    pub(crate) fn probe(&self, peer: PeerId, purpose: Purpose, timeout: Duration) -> bool {
        self.probe_tx.try_send(ProbeRequest { peer, timeout, purpose }).is_ok()
    }

    /// Tells the beat task; false when it is busy or gone.
    pub(crate) fn beat(&self, cmd: BeatCommand) -> bool {
        let ok = self.beats_on && self.beat_tx.try_send(cmd).is_ok();
        if !ok {
            tracing::debug!("beat task busy or gone; watching by TCP probes");
        }
        ok
    }

    /// The hash of our view, for the beats we send.
    pub(crate) fn set_view(&self, hash: u32) {
        self.view_tx.send_replace(hash);
    }

    /// Where beats for `peer` go: the IP of a direct connection to it.
    pub(crate) fn set_beat_ip(&self, peer: PeerId, ip: Option<IpAddr>) {
        self.beat_shared.set_ip(peer, ip);
    }

    /// Resolves a configured peer's name in a task; the answer comes back
    /// on [`Wiring::resolved`].
    pub(crate) fn resolve(&self, index: usize, host: String, port: u16) {
        let tx = self.resolved_tx.clone();
        tokio::spawn(async move {
            let addrs = resolve(&host, port).await;
            // Room is reserved for it (see `new`); an error means the node stopped.
            let _ = tx.send((index, addrs)).await;
        });
    }
}

/// The UDP socket beats arrive on (and leave from): `port` when set, else
/// the libp2p port + 1, falling back to a free port when that is taken (two
/// cells on one host). `None` (TCP probes only) when none can be bound.
fn bind_beat_socket(ip: IpAddr, p2p_port: u16, port: Option<u16>) -> Option<std::net::UdpSocket> {
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
