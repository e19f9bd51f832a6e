//! The cell's ed25519 identity: created once in the data dir and reused, so
//! the peer id survives restarts.

use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;

/// File name of the identity key inside the data dir.
pub const KEY_FILE: &str = "identity.key";

/// Errors loading or creating the identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot create data dir {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot read identity key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write identity key {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("identity key {path} is corrupt ({reason}); move it aside to make a new identity (the peer id will change)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot read swarm key {path}: {source}")]
    ReadSwarmKey { path: PathBuf, source: std::io::Error },
    #[error("swarm key {path} is not a Kubo-style swarm.key (/key/swarm/psk/1.0.0/, /base16/, 64 hex digits): {reason}")]
    BadSwarmKey { path: PathBuf, reason: String },
    #[error("{path} exists already; remove it first to make a new key")]
    Exists { path: PathBuf },
}

/// Reads a pre-shared swarm key in Kubo's `swarm.key` format.
pub fn load_swarm_key(path: &Path) -> Result<PreSharedKey, IdentityError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| IdentityError::ReadSwarmKey { path: path.to_owned(), source })?;
    text.trim()
        .parse::<PreSharedKey>()
        .map_err(|e| IdentityError::BadSwarmKey { path: path.to_owned(), reason: e.to_string() })
}

/// Writes a new random swarm key (owner-only) and returns its fingerprint.
/// Refuses to overwrite an existing file.
pub fn generate_swarm_key(path: &Path) -> Result<String, IdentityError> {
    if path.exists() {
        return Err(IdentityError::Exists { path: path.to_owned() });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|source| IdentityError::CreateDir { path: dir.to_owned(), source })?;
    }
    let key = PreSharedKey::new(rand::random());
    let fingerprint = key.fingerprint().to_string();
    write_private(path, key.to_key_file().as_bytes())
        .map_err(|source| IdentityError::Write { path: path.to_owned(), source })?;
    Ok(fingerprint)
}

/// Loads the keypair from `data_dir/identity.key`, or creates one there.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| IdentityError::Corrupt { path, reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .map_err(|source| IdentityError::CreateDir { path: data_dir.to_owned(), source })?;
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| IdentityError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            write_private(&path, &bytes).map_err(|source| IdentityError::Write { path, source })?;
            tracing::info!(peer_id = %key.public().to_peer_id(), "created a new identity");
            Ok(key)
        }
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename) and, on
/// Unix, readable by the owner only. A crash leaves the old file or the new
/// one, never half of one.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable (best effort; not possible on Windows).
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn swarm_keys_round_trip_and_are_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.key");
        let fp = generate_swarm_key(&path).unwrap();
        let key = load_swarm_key(&path).unwrap();
        assert_eq!(key.fingerprint().to_string(), fp);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"));
        assert!(matches!(generate_swarm_key(&path), Err(IdentityError::Exists { .. })));
        std::fs::write(&path, "/key/swarm/psk/1.0.0/\n/base16/\nzz\n").unwrap();
        assert!(matches!(load_swarm_key(&path), Err(IdentityError::BadSwarmKey { .. })));
    }

    #[test]
    fn corrupt_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
