//! Crash-safe state in the data dir: this cell's level, branch and `seq`,
//! and the cells it was last connected to (for a fast rejoin).
//!
//! The network node publishes the state to a `watch` channel and never waits;
//! a saver task writes it, at most once per [`SAVE_EVERY`], by
//! write-then-rename, so a `kill -9` at any moment leaves the old file or the
//! new one. A corrupt file is reported and set aside, never fatal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// File name inside the data dir.
pub const STATE_FILE: &str = "state.json";
/// The saver writes at most this often.
pub const SAVE_EVERY: Duration = Duration::from_millis(500);
/// At most this many peers are remembered.
pub const MAX_REMEMBERED: usize = 64;

/// What survives a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub level: f64,
    pub branch: String,
    pub seq: u64,
    #[serde(default)]
    pub peers: Vec<RememberedPeer>,
}

/// A cell we were connected to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RememberedPeer {
    pub peer_id: String,
    pub addrs: Vec<String>,
}

impl RememberedPeer {
    /// The peer id and addresses, when they parse.
    pub fn parsed(&self) -> Option<(PeerId, Vec<Multiaddr>)> {
        let id = self.peer_id.parse().ok()?;
        let addrs: Vec<Multiaddr> = self.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        (!addrs.is_empty()).then_some((id, addrs))
    }
}

/// Errors loading the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

/// Loads the state. A missing file is `None`; a corrupt one is renamed to
/// `state.json.corrupt` with a warning and also gives `None`.
pub fn load(data_dir: &Path) -> Result<Option<State>, StateError> {
    let path = data_dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    let valid = serde_json::from_slice::<State>(&bytes)
        .ok()
        .filter(|s| s.level.is_finite() && s.level >= 0.0 && s.branch.chars().count() <= 128);
    match valid {
        Some(s) => Ok(Some(s)),
        None => {
            let aside = data_dir.join(format!("{STATE_FILE}.corrupt"));
            match std::fs::rename(&path, &aside) {
                Ok(()) => tracing::warn!(
                    file = %path.display(),
                    moved_to = %aside.display(),
                    "the state file is corrupt; set it aside and starting from the configuration"
                ),
                Err(e) => tracing::warn!(
                    file = %path.display(),
                    error = %e,
                    "the state file is corrupt and could not be moved aside; starting from the configuration"
                ),
            }
            Ok(None)
        }
    }
}

/// Writes the state atomically (temp file, fsync, rename).
pub fn save(data_dir: &Path, state: &State) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    crate::identity::write_private(&data_dir.join(STATE_FILE), &bytes)
}

/// Writes every new state published on `rx` until `shutdown`, then writes
/// the last one once more.
pub async fn saver(
    data_dir: PathBuf,
    mut rx: watch::Receiver<Option<State>>,
    shutdown: CancellationToken,
) {
    let mut last: Option<State> = None;
    loop {
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            changed = rx.changed() => changed.is_err(),
        };
        let current = rx.borrow_and_update().clone();
        if current.is_some() && current != last {
            let dir = data_dir.clone();
            let to_write = current.clone();
            let result = tokio::task::spawn_blocking(move || match to_write {
                Some(s) => save(&dir, &s),
                None => Ok(()),
            })
            .await;
            match result {
                Ok(Ok(())) => last = current,
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the state file"),
                Err(e) => tracing::warn!(error = %e, "state saver task failed"),
            }
        }
        if stop {
            return;
        }
        tokio::time::sleep(SAVE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            level: 2.5,
            branch: "dev".into(),
            seq: 42,
            peers: vec![RememberedPeer {
                peer_id: PeerId::random().to_base58(),
                addrs: vec!["/ip4/10.0.0.2/tcp/8001".into()],
            }],
        }
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let s = state();
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s.clone()));
        assert!(s.peers[0].parsed().is_some());
    }

    #[test]
    fn corrupt_state_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        for garbage in
            [&b"{\"level\": 1"[..], b"\x00\xff", br#"{"level": -1, "branch": "x", "seq": 1}"#]
        {
            std::fs::write(dir.path().join(STATE_FILE), garbage).unwrap();
            assert_eq!(load(dir.path()).unwrap(), None);
            assert!(dir.path().join("state.json.corrupt").exists());
            assert!(!dir.path().join(STATE_FILE).exists());
        }
    }
}
