//! Heartbeats over UDP ("beats"): how a cell watches its ring successor
//! without a TCP exchange every second.
//!
//! A probe over TCP + Noise + Yamux costs three segments (~274 bytes on the
//! wire) and each cell takes part in two a second: ~550 B/s per cell for
//! liveness alone. A beat is one 17-byte UDP datagram (59 bytes on an
//! Ethernet link), sent once a second by the watched cell to its watcher.
//!
//! - The watcher subscribes over the authenticated libp2p connection, on
//!   `/aios/beat/1.0.0`: it sends its UDP port, a subscription id and a
//!   16-byte key, and the other cell answers with one status byte. The
//!   subscription lasts as long as that stream stays open.
//! - The watched cell sends a beat every `interval` to the watcher's IP (the
//!   address of their direct connection) and port. A beat carries the
//!   subscription id, a counter, a hash of the sender's view (which records
//!   it holds, at which `seq`) and a SipHash-2-4 MAC under the key, so a
//!   third party on the LAN can neither forge nor replay one.
//! - The watcher suspects the cell when no beat came for `interval` plus
//!   the probe timeout, and compares view hashes: a difference that lasts is
//!   repaired by a `sync` (anti-entropy without a periodic exchange).
//!
//! Where UDP does not get through (a firewall, a NAT, a relayed link, an
//! older cell without the protocol), the watcher falls back to TCP probes
//! (see `probe.rs`). See `docs/protocol.md`, "Liveness".

use std::collections::HashMap;
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, OpenStreamError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use siphasher::sip::SipHasher24;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::ReasonLabel;

/// The subscription protocol id.
pub const BEAT_PROTOCOL: StreamProtocol = StreamProtocol::new("/aios/beat/1.0.0");
/// First byte of a beat and of a subscription: the format's version.
const VERSION: u8 = 1;
/// Bytes in a beat: version, subscription id, counter, view hash, MAC.
pub const BEAT_LEN: usize = 1 + 4 + 4 + 4 + 4;
/// Bytes in a subscription: version, UDP port, subscription id, key.
const SUBSCRIBE_LEN: usize = 1 + 2 + 4 + 16;
/// The answer to a subscription: beats will come, or they cannot (no
/// direct connection to send them along, or too many subscribers).
const ACCEPTED: u8 = 1;
const REFUSED: u8 = 0;
/// Subscriptions a cell serves at once (its ring predecessor, normally one;
/// a few more while the ring changes).
const MAX_SERVED: usize = 64;
/// How long a subscription waits for the node to know the
/// subscriber's address (the stream can come before the connection event).
const ADDR_WAIT: Duration = Duration::from_secs(2);
/// How long the subscription handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the beat task tells the node.
#[derive(Debug, Clone, PartialEq)]
pub enum BeatEvent {
    /// A valid beat from `peer`, received at `at`, with its view hash.
    Beat { peer: PeerId, at: Instant, view: u32 },
    /// `peer` answered our subscription: beats will come (`true`), or it
    /// cannot send them or does not speak the protocol (`false`).
    Subscribed { peer: PeerId, accepted: bool },
    /// The subscription to `peer` ended (its stream closed or broke).
    Ended { peer: PeerId },
}

/// What the node asks of the beat task.
#[derive(Debug, Clone)]
pub enum BeatCommand {
    /// Subscribe to `peer`'s beats (ending any other subscription).
    Watch(PeerId),
    /// End the subscription, if any.
    Unwatch,
}

/// Where each connected cell's beats go (the IP of its direct connection),
/// kept current by the node; a subscription waits on it for its
/// subscriber's address (the stream can come before the connection event).
#[derive(Debug, Clone)]
pub struct BeatShared {
    ips: Arc<watch::Sender<HashMap<PeerId, IpAddr>>>,
}

impl Default for BeatShared {
    fn default() -> Self {
        Self { ips: Arc::new(watch::channel(HashMap::new()).0) }
    }
}

impl BeatShared {
    pub fn set_ip(&self, peer: PeerId, ip: Option<IpAddr>) {
        self.ips.send_if_modified(|ips| match ip {
            Some(ip) => ips.insert(peer, ip) != Some(ip),
            None => ips.remove(&peer).is_some(),
        });
    }

    /// `peer`'s IP, waiting up to `within` for the node to learn it.
    async fn wait_ip(&self, peer: &PeerId, within: Duration) -> Option<IpAddr> {
        let mut rx = self.ips.subscribe();
        let known = tokio::time::timeout(within, rx.wait_for(|ips| ips.contains_key(peer))).await;
        let ip = known.ok()?.ok()?.get(peer).copied();
        ip
    }
}

/// One beat, as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub sub: u32,
    pub counter: u32,
    pub view: u32,
}

impl Beat {
    /// The datagram, MAC'd under `key`.
    pub fn encode(&self, key: &[u8; 16]) -> [u8; BEAT_LEN] {
        let mut out = [0u8; BEAT_LEN];
        out[0] = VERSION;
        out[1..5].copy_from_slice(&self.sub.to_be_bytes());
        out[5..9].copy_from_slice(&self.counter.to_be_bytes());
        out[9..13].copy_from_slice(&self.view.to_be_bytes());
        let mac = mac(key, &out[..13]);
        out[13..].copy_from_slice(&mac.to_be_bytes());
        out
    }

    /// The subscription id of a datagram that looks like a beat (the key
    /// to check it with depends on it).
    pub fn sub_of(buf: &[u8]) -> Option<u32> {
        if buf.len() != BEAT_LEN || buf[0] != VERSION {
            return None;
        }
        Some(u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]))
    }

    /// Decodes a datagram whose MAC checks out under `key`.
    pub fn decode(buf: &[u8], key: &[u8; 16]) -> Option<Beat> {
        let sub = Self::sub_of(buf)?;
        let got = u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]);
        if got != mac(key, &buf[..13]) {
            return None;
        }
        Some(Beat {
            sub,
            counter: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]),
            view: u32::from_be_bytes([buf[9], buf[10], buf[11], buf[12]]),
        })
    }
}

/// SipHash-2-4 (a MAC for short messages) under `key`, cut to 32 bits:
/// forging one beat takes ~2³¹ tries, and a forger must win once a second.
fn mac(key: &[u8; 16], data: &[u8]) -> u32 {
    let mut h = SipHasher24::new_with_key(key);
    h.write(data);
    let x = h.finish();
    (x ^ (x >> 32)) as u32
}

/// An order-independent hash of a view: every `(peer, seq)` a cell holds,
/// its own included. Two cells that hold the same records at the same
/// `seq` have the same hash; SipHash with a fixed key, so every build and
/// platform agrees.
pub fn view_hash(entries: impl IntoIterator<Item = (PeerId, u64)>) -> u32 {
    let mut acc = 0u64;
    for (peer, seq) in entries {
        let mut h = SipHasher24::new_with_keys(0x6169_6f73, 0x7669_6577);
        h.write(&peer.to_bytes());
        h.write(&seq.to_be_bytes());
        acc ^= h.finish();
    }
    (acc ^ (acc >> 32)) as u32
}

/// A subscription we serve: beats go to `to` under `key`.
struct Served {
    peer: PeerId,
    to: SocketAddr,
    key: [u8; 16],
    counter: u32,
}

/// Our subscription: beats from `peer` under `key`.
struct Watching {
    peer: PeerId,
    sub: u32,
    key: [u8; 16],
    last_counter: Option<u32>,
    stop: CancellationToken,
}

enum Internal {
    Serve { id: u64, sub: u32, served: Served },
    Unserve { id: u64 },
}

/// The beat task, with what it needs; the node builds it with the
/// swarm and spawns [`BeatTask::run`] once the runtime runs.
pub struct BeatTask {
    /// Bound and non-blocking (see `tasks.rs`'s `bind_beat_socket`).
    pub socket: std::net::UdpSocket,
    pub control: Control,
    pub shared: BeatShared,
    /// Our view's hash, as the node last computed it.
    pub view: watch::Receiver<u32>,
    /// Beats are sent this often (the probe interval).
    pub interval: Duration,
    pub commands: mpsc::Receiver<BeatCommand>,
    pub events: mpsc::Sender<BeatEvent>,
    /// `aios_beats_dropped_total{reason}`: datagrams dropped unread.
    pub dropped: Family<ReasonLabel, Counter>,
}

/// Why a datagram at the beat port was dropped (the metric's `reason`).
pub(crate) const DROP_REASONS: [&str; 4] =
    ["length", "unknown_subscription", "bad_mac", "replayed"];

impl BeatTask {
    /// Serves subscriptions (sends beats every `interval`), holds ours
    /// (checks the beats that come), and reports to the node. Ends on
    /// `shutdown` or when the node's channels close.
    pub async fn run(self, shutdown: CancellationToken) {
        let BeatTask { socket, mut control, shared, view, interval, mut commands, events, dropped } =
            self;
        // Every reason shows, 0 until something is dropped.
        let drops =
            DROP_REASONS.map(|reason| dropped.get_or_create(&ReasonLabel { reason }).clone());
        let [drop_length, drop_unknown, drop_mac, drop_replayed] = drops;
        let socket = match UdpSocket::from_std(socket) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot use the beat socket; watching by TCP probes");
                return;
            }
        };
        let port = match socket.local_addr() {
            Ok(a) => a.port(),
            Err(e) => {
                tracing::warn!(error = %e, "beat socket has no address; liveness falls back to TCP probes");
                return;
            }
        };
        let mut incoming = match control.accept(BEAT_PROTOCOL) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve the beat protocol");
                return;
            }
        };
        let (internal_tx, mut internal) = mpsc::channel::<Internal>(MAX_SERVED);
        let mut served: HashMap<u64, (u32, Served)> = HashMap::new();
        let mut next_id = 0u64;
        let mut watching: Option<Watching> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { break };
                    if let Some(w) = watching.take() {
                        w.stop.cancel();
                    }
                    if let BeatCommand::Watch(peer) = cmd {
                        let w = Watching {
                            peer,
                            sub: rand::random(),
                            key: rand::random(),
                            last_counter: None,
                            stop: shutdown.child_token(),
                        };
                        tokio::spawn(subscribe(
                            control.clone(), peer, port, w.sub, w.key, w.stop.clone(), events.clone(),
                        ));
                        watching = Some(w);
                    }
                }
                next = incoming.next() => {
                    let Some((peer, stream)) = next else { break };
                    next_id += 1;
                    let full = served.len() >= MAX_SERVED;
                    tokio::spawn(serve(
                        next_id, peer, stream, full, shared.clone(), internal_tx.clone(), shutdown.clone(),
                    ));
                }
                Some(msg) = internal.recv() => match msg {
                    Internal::Serve { id, sub, served: s } => {
                        tracing::debug!(peer = %s.peer, to = %s.to, "sending beats");
                        served.insert(id, (sub, s));
                    }
                    Internal::Unserve { id } => {
                        if let Some((_, s)) = served.remove(&id) {
                            tracing::debug!(peer = %s.peer, "no longer sending beats");
                        }
                    }
                },
                _ = tick.tick() => {
                    let v = *view.borrow();
                    for (sub, s) in served.values_mut() {
                        s.counter = s.counter.wrapping_add(1);
                        let beat = Beat { sub: *sub, counter: s.counter, view: v }.encode(&s.key);
                        if let Err(e) = socket.send_to(&beat, s.to).await {
                            tracing::trace!(peer = %s.peer, error = %e, "beat not sent");
                        }
                    }
                }
                r = socket.recv_from(&mut buf) => {
                    let Ok((n, _from)) = r else { continue };
                    let at = Instant::now();
                    let data = &buf[..n];
                    let Some(sub) = Beat::sub_of(data) else {
                        drop_length.inc();
                        continue;
                    };
                    let Some(w) = watching.as_mut().filter(|w| w.sub == sub) else {
                        drop_unknown.inc();
                        continue;
                    };
                    let Some(beat) = Beat::decode(data, &w.key) else {
                        drop_mac.inc();
                        tracing::trace!(peer = %w.peer, "a beat with a bad MAC; dropped");
                        continue;
                    };
                    // Counters only go up: a replayed beat says nothing.
                    if w.last_counter.is_some_and(|c| beat.counter <= c) {
                        drop_replayed.inc();
                        continue;
                    }
                    w.last_counter = Some(beat.counter);
                    let ev = BeatEvent::Beat { peer: w.peer, at, view: beat.view };
                    if events.try_send(ev).is_err() {
                        tracing::trace!("node busy; a beat not reported");
                    }
                }
            }
        }
        if let Some(w) = watching.take() {
            w.stop.cancel();
        }
    }
}

/// Our side of a subscription: open the stream, send it, read the answer,
/// then hold the stream open until `stop` (or until the other side ends it).
async fn subscribe(
    mut control: Control,
    peer: PeerId,
    port: u16,
    sub: u32,
    key: [u8; 16],
    stop: CancellationToken,
    events: mpsc::Sender<BeatEvent>,
) {
    let handshake = async {
        let mut stream = control.open_stream(peer, BEAT_PROTOCOL).await?;
        let mut msg = [0u8; SUBSCRIBE_LEN];
        msg[0] = VERSION;
        msg[1..3].copy_from_slice(&port.to_be_bytes());
        msg[3..7].copy_from_slice(&sub.to_be_bytes());
        msg[7..].copy_from_slice(&key);
        stream.write_all(&msg).await?;
        stream.flush().await?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await?;
        Ok::<_, OpenStreamError>((stream, answer[0] == ACCEPTED))
    };
    let result = tokio::select! {
        _ = stop.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => r,
    };
    let mut stream = match result {
        Ok(Ok((stream, true))) => {
            let _ = events.send(BeatEvent::Subscribed { peer, accepted: true }).await;
            stream
        }
        Ok(Ok((_, false))) => {
            let _ = events.send(BeatEvent::Subscribed { peer, accepted: false }).await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "no beat subscription");
            let _ = events.send(BeatEvent::Subscribed { peer, accepted: false }).await;
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "beat subscription timed out");
            let _ = events.send(BeatEvent::Subscribed { peer, accepted: false }).await;
            return;
        }
    };
    // Nothing more comes on the stream; a read ends when the other side
    // closes it (or the connection goes).
    let mut byte = [0u8; 1];
    tokio::select! {
        _ = stop.cancelled() => {
            let _ = stream.close().await;
        }
        _ = stream.read(&mut byte) => {
            let _ = events.send(BeatEvent::Ended { peer }).await;
        }
    }
}

/// The other side: read a subscription, answer it, and keep sending beats
/// (through the beat task) until the stream closes.
async fn serve(
    id: u64,
    peer: PeerId,
    mut stream: Stream,
    full: bool,
    shared: BeatShared,
    internal: mpsc::Sender<Internal>,
    shutdown: CancellationToken,
) {
    let mut msg = [0u8; SUBSCRIBE_LEN];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut msg)).await {
        Ok(Ok(())) if msg[0] == VERSION => {}
        _ => {
            let _ = stream.close().await;
            return;
        }
    }
    let port = u16::from_be_bytes([msg[1], msg[2]]);
    let sub = u32::from_be_bytes([msg[3], msg[4], msg[5], msg[6]]);
    let mut key = [0u8; 16];
    key.copy_from_slice(&msg[7..]);
    let ip = if full || port == 0 { None } else { shared.wait_ip(&peer, ADDR_WAIT).await };
    let Some(ip) = ip else {
        tracing::debug!(%peer, full, "cannot send beats; the cell will probe instead");
        let _ = stream.write_all(&[REFUSED]).await;
        let _ = stream.close().await;
        return;
    };
    let served = Served { peer, to: SocketAddr::new(ip, port), key, counter: 0 };
    if internal.send(Internal::Serve { id, sub, served }).await.is_err() {
        return;
    }
    if stream.write_all(&[ACCEPTED]).await.is_ok() && stream.flush().await.is_ok() {
        let mut byte = [0u8; 1];
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = stream.read(&mut byte) => {}
        }
    }
    let _ = internal.send(Internal::Unserve { id }).await;
    let _ = stream.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_survives_its_trip_and_nothing_else_does() {
        let key: [u8; 16] = rand::random();
        let beat = Beat { sub: 7, counter: 42, view: 0xdead_beef };
        let wire = beat.encode(&key);
        assert_eq!(wire.len(), BEAT_LEN);
        assert_eq!(Beat::sub_of(&wire), Some(7));
        assert_eq!(Beat::decode(&wire, &key), Some(beat));
        // Another key, a flipped bit anywhere, a short or long datagram.
        assert_eq!(Beat::decode(&wire, &rand::random()), None);
        for i in 0..BEAT_LEN {
            let mut bad = wire;
            bad[i] ^= 0x10;
            assert_eq!(Beat::decode(&bad, &key), None, "bit flipped in byte {i}");
        }
        assert_eq!(Beat::decode(&wire[..BEAT_LEN - 1], &key), None);
        let mut long = wire.to_vec();
        long.push(0);
        assert_eq!(Beat::decode(&long, &key), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscription_waits_for_its_subscribers_address_and_no_longer() {
        let shared = BeatShared::default();
        let (known, late, never) = (PeerId::random(), PeerId::random(), PeerId::random());
        let ip: IpAddr = "10.0.0.2".parse().expect("ip");
        shared.set_ip(known, Some(ip));
        assert_eq!(shared.wait_ip(&known, ADDR_WAIT).await, Some(ip));
        let setter = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            setter.set_ip(late, Some(ip));
        });
        assert_eq!(shared.wait_ip(&late, ADDR_WAIT).await, Some(ip));
        assert_eq!(shared.wait_ip(&never, ADDR_WAIT).await, None);
        shared.set_ip(known, None);
        assert_eq!(shared.wait_ip(&known, Duration::from_millis(10)).await, None);
    }

    #[test]
    fn the_view_hash_ignores_order_and_sees_any_change() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let one = view_hash([(a, 1), (b, 2), (c, 3)]);
        assert_eq!(one, view_hash([(c, 3), (a, 1), (b, 2)]));
        assert_ne!(one, view_hash([(a, 1), (b, 2), (c, 4)]));
        assert_ne!(one, view_hash([(a, 1), (b, 2)]));
        assert_ne!(one, view_hash([(a, 1), (b, 3), (c, 2)]));
    }
}
