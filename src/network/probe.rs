//! Liveness probes on `/aios/probe/1.0.0`, SWIM's idea over libp2p streams.
//!
//! A cell does not ping every connection every second (that costs each cell
//! ~650 B/s per peer over TCP + Noise + Yamux). It watches one cell, the
//! next one in peer-id order (its ring successor): by that cell's UDP beats
//! (`beat.rs`) where they get through, else by a probe every
//! `probe_interval`. When a beat is overdue or a probe goes unanswered it
//! asks every connected cell to check that cell itself (a `suspect` notice
//! on the register protocol), and each cell fails it only when its own
//! probe goes unanswered too. See `docs/protocol.md`, "Liveness".
//!
//! The wire format is as small as a probe can be: the prober writes 8
//! random bytes on a stream it keeps open, the other side writes the same 8
//! bytes back. Streams are opened with libp2p-stream; the probes and echoes
//! run in their own tasks, and results reach the node on a channel.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, OpenStreamError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The probe protocol id.
pub const PROBE_PROTOCOL: StreamProtocol = StreamProtocol::new("/aios/probe/1.0.0");
/// Bytes in one probe (and its echo).
pub const NONCE_LEN: usize = 8;
/// An inbound probe stream with no probe for this long is closed.
const ECHO_IDLE: Duration = Duration::from_secs(30);
/// Inbound probe streams served at once (one per probing cell is normal).
const MAX_ECHO_STREAMS: usize = 1024;
/// Outbound streams kept between probes. Streams of cells that went away
/// are dropped at their next probe; past this many (churn over a long run)
/// all are dropped and reopened as needed.
const MAX_KEPT_STREAMS: usize = 1024;

/// Why a cell is probed; the node acts on the answer accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The regular probe of the ring successor.
    Watch,
    /// Checking a cell that another cell (or our own watch) suspects.
    Verify,
    /// A cell failed for its silence but still connected: is it back?
    Revive,
}

impl Purpose {
    pub const ALL: [Purpose; 3] = [Purpose::Watch, Purpose::Verify, Purpose::Revive];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Watch => "watch",
            Purpose::Verify => "verify",
            Purpose::Revive => "revive",
        }
    }
}

/// Ask the prober to probe `peer` once.
#[derive(Debug, Clone)]
pub struct ProbeRequest {
    pub peer: PeerId,
    pub timeout: Duration,
    pub purpose: Purpose,
}

/// What came of a probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The echo came back after this round trip.
    Answered(Duration),
    /// No echo within the timeout (or the stream broke).
    Silent,
    /// The peer does not speak the probe protocol.
    Unsupported,
}

impl Outcome {
    /// Every outcome's name, as `as_str` gives it (metric labels).
    pub const NAMES: [&'static str; 3] = ["answered", "silent", "unsupported"];

    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Answered(_) => "answered",
            Outcome::Silent => "silent",
            Outcome::Unsupported => "unsupported",
        }
    }
}

/// One probe's result, for the node.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub peer: PeerId,
    pub purpose: Purpose,
    pub outcome: Outcome,
}

/// Runs probes as the node asks, one at a time per peer, many peers
/// at once, keeping one outbound stream per peer between probes. Ends when
/// `shutdown` fires or either channel closes.
pub async fn run_prober(
    control: Control,
    mut requests: mpsc::Receiver<ProbeRequest>,
    results: mpsc::Sender<ProbeResult>,
    shutdown: CancellationToken,
) {
    let mut streams: HashMap<PeerId, Stream> = HashMap::new();
    let mut busy: HashSet<PeerId> = HashSet::new();
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            req = requests.recv() => {
                let Some(req) = req else { break };
                // One probe per peer at a time: a second request while one
                // is out would be answered by the same echo.
                if !busy.insert(req.peer) {
                    continue;
                }
                let stream = streams.remove(&req.peer);
                in_flight.push(probe_once(control.clone(), req, stream));
            }
            Some((result, stream)) = in_flight.next(), if !in_flight.is_empty() => {
                let result: ProbeResult = result;
                busy.remove(&result.peer);
                if let Some(s) = stream {
                    if streams.len() >= MAX_KEPT_STREAMS {
                        streams.clear();
                    }
                    streams.insert(result.peer, s);
                } else {
                    streams.remove(&result.peer);
                }
                if results.send(result).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// One probe: reuse `stream` or open one, write a nonce, wait for its echo.
/// Returns the stream when it can be used again.
async fn probe_once(
    mut control: Control,
    req: ProbeRequest,
    stream: Option<Stream>,
) -> (ProbeResult, Option<Stream>) {
    let started = Instant::now();
    let nonce: [u8; NONCE_LEN] = rand::random();
    let attempt = async {
        // A kept stream the other side has since closed (it closes streams
        // idle for `ECHO_IDLE`; a cell probed only now and then finds its
        // stream gone) fails at once: that says nothing of the cell, so
        // the probe goes again on a new stream.
        if let Some(mut kept) = stream {
            match exchange(&mut kept, &nonce).await {
                Ok(()) => return Ok(kept),
                Err(e) => {
                    tracing::trace!(peer = %req.peer, error = %e, "kept probe stream closed; opening another")
                }
            }
        }
        let mut fresh = control.open_stream(req.peer, PROBE_PROTOCOL).await?;
        exchange(&mut fresh, &nonce).await?;
        Ok::<_, OpenStreamError>(fresh)
    };
    let (outcome, stream) = match tokio::time::timeout(req.timeout, attempt).await {
        Ok(Ok(s)) => (Outcome::Answered(started.elapsed()), Some(s)),
        Ok(Err(OpenStreamError::UnsupportedProtocol(_))) => (Outcome::Unsupported, None),
        Ok(Err(e)) => {
            tracing::trace!(peer = %req.peer, error = %e, "probe stream failed");
            (Outcome::Silent, None)
        }
        Err(_) => (Outcome::Silent, None),
    };
    (ProbeResult { peer: req.peer, purpose: req.purpose, outcome }, stream)
}

/// Writes `nonce` on `stream` and reads until its echo comes back (an echo
/// of an earlier probe that timed out is skipped over).
async fn exchange(stream: &mut Stream, nonce: &[u8; NONCE_LEN]) -> std::io::Result<()> {
    stream.write_all(nonce).await?;
    stream.flush().await?;
    let mut echo = [0u8; NONCE_LEN];
    loop {
        stream.read_exact(&mut echo).await?;
        if echo == *nonce {
            return Ok(());
        }
    }
}

/// Answers probes: echoes every 8 bytes on each inbound probe stream, and
/// closes a stream that stays idle for [`ECHO_IDLE`]. Ends on `shutdown`.
pub async fn run_echo(mut control: Control, shutdown: CancellationToken) {
    let mut incoming = match control.accept(PROBE_PROTOCOL) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the probe protocol");
            return;
        }
    };
    let mut echoes = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                if echoes.len() >= MAX_ECHO_STREAMS {
                    tracing::debug!(%peer, "too many probe streams; refusing one");
                    continue;
                }
                echoes.push(echo(peer, stream));
            }
            Some(()) = echoes.next(), if !echoes.is_empty() => {}
        }
    }
}

async fn echo(peer: PeerId, mut stream: Stream) {
    let mut buf = [0u8; NONCE_LEN];
    loop {
        match tokio::time::timeout(ECHO_IDLE, stream.read_exact(&mut buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break,
        }
        if stream.write_all(&buf).await.is_err() || stream.flush().await.is_err() {
            break;
        }
    }
    let _ = stream.close().await;
    tracing::trace!(%peer, "probe stream closed");
}

/// The cell this one watches: the first of `members` after `own` in peer-id
/// order, wrapping around (a ring). `None` when there is nobody to watch.
pub fn successor(own: PeerId, members: impl IntoIterator<Item = PeerId>) -> Option<PeerId> {
    let mut after: Option<PeerId> = None;
    let mut smallest: Option<PeerId> = None;
    for p in members {
        if p == own {
            continue;
        }
        if smallest.is_none_or(|s| p < s) {
            smallest = Some(p);
        }
        if p > own && after.is_none_or(|a| p < a) {
            after = Some(p);
        }
    }
    after.or(smallest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cell_watches_the_next_in_the_ring_and_every_cell_is_watched() {
        let mut ids: Vec<PeerId> = (0..7).map(|_| PeerId::random()).collect();
        ids.sort();
        for (i, own) in ids.iter().enumerate() {
            let next = ids[(i + 1) % ids.len()];
            assert_eq!(successor(*own, ids.iter().copied()), Some(next));
        }
        // Everyone is someone's successor: nobody goes unwatched.
        let watched: HashSet<PeerId> =
            ids.iter().filter_map(|o| successor(*o, ids.iter().copied())).collect();
        assert_eq!(watched.len(), ids.len());
        assert_eq!(successor(ids[0], [ids[0]]), None);
        assert_eq!(successor(ids[3], [ids[1]]), Some(ids[1]));
    }

    #[test]
    fn every_outcome_has_its_metric_label() {
        let all = [Outcome::Answered(Duration::ZERO), Outcome::Silent, Outcome::Unsupported];
        assert_eq!(all.map(|o| o.as_str()), Outcome::NAMES);
    }
}
