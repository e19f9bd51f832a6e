//! Configuration: defaults < TOML file < environment (`AIOS_*`) < flags,
//! resolved once into a [`Config`].
//!
//! Flags and environment come through clap (`RunArgs`, each flag with its
//! `env`), so clap already puts a flag above its variable; the file fills in
//! whatever neither gave, and [`Config::default`] the rest.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// Default libp2p port (TCP and QUIC).
pub const DEFAULT_P2P_PORT: u16 = 8001;
/// A swarm key here in the data dir is used without configuration.
pub const SWARM_KEY_FILE: &str = "swarm.key";
/// Default HTTP API port; a configured peer on this port is a likely mistake.
pub const DEFAULT_HTTP_PORT: u16 = 8000;

/// Errors resolving the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML for aios-cell: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid peer {0:?}: expected a multiaddr (/ip4/…/tcp/8001) or host[:port]")]
    BadPeer(String),
    #[error("consciousness_level must be a finite, non-negative number, got {0}")]
    BadLevel(f64),
    #[error("no data directory: set AIOS_DATA_DIR or --data-dir")]
    NoDataDir,
    #[error("cannot read the API token file {path}: {source}")]
    TokenFile { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A peer to dial besides mDNS, and redial when lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    /// A full multiaddr, possibly ending in `/p2p/<peer id>`.
    Multiaddr(Multiaddr),
    /// A host name or IP and the peer's libp2p port, resolved at dial time.
    Host { host: String, port: u16 },
}

impl FromStr for PeerAddr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || ConfigError::BadPeer(s.to_owned());
        if s.starts_with('/') {
            return s.parse().map(PeerAddr::Multiaddr).map_err(|_| bad());
        }
        if s.is_empty() || s.contains('/') || s.contains(char::is_whitespace) {
            return Err(bad());
        }
        // "[v6]:port", "v6", "host:port", "host"
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest.split_once(']').ok_or_else(bad)?;
            let port = match p.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if p.is_empty() => DEFAULT_P2P_PORT,
                None => return Err(bad()),
            };
            (h.to_owned(), port)
        } else if s.parse::<IpAddr>().is_ok() {
            (s.to_owned(), DEFAULT_P2P_PORT)
        } else if let Some((h, p)) = s.rsplit_once(':') {
            (h.to_owned(), p.parse().map_err(|_| bad())?)
        } else {
            (s.to_owned(), DEFAULT_P2P_PORT)
        };
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(PeerAddr::Host { host, port })
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerAddr::Multiaddr(m) => write!(f, "{m}"),
            PeerAddr::Host { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            PeerAddr::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Timers of the mesh. Defaults suit a LAN; the file may change them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    /// A cell exchanges records (a `sync`) with one connected cell this
    /// often (anti-entropy: repairs anything gossip missed), unless the
    /// watched cell's beats showed the same view meanwhile. Not to be
    /// confused with the UDP beats (one a probe interval): the key keeps
    /// its old name for existing config files.
    pub heartbeat_secs: u64,
    /// Ping every connection this often, for its round-trip time (`rtt_ms`).
    /// Liveness does not depend on it (probes do that), except for cells
    /// that do not speak the probe protocol. A ping costs ~320 bytes a
    /// connection each way: at 60 s that was ~200 B/s per cell at 20 cells.
    pub ping_interval_ms: u64,
    /// How long a ping may take before libp2p reports it failed.
    pub ping_timeout_ms: u64,
    /// Probe the next cell in the ring (peer-id order) this often…
    pub probe_interval_ms: u64,
    /// …and suspect it when the echo takes longer than this; every cell then
    /// checks it with a probe of the same timeout, and fails it if silent.
    pub probe_timeout_ms: u64,
    /// Watch the ring successor by UDP beats (one 17-byte datagram a probe
    /// interval, sent by the watched cell) rather than TCP probes; a cell
    /// whose beats do not arrive is probed over TCP all the same.
    pub beats: bool,
    /// UDP port beats arrive on (told to the watched cell over the libp2p
    /// connection). Unset: the libp2p port + 1 (8002), or a free one when
    /// that is taken or the libp2p port is 0; 0 picks a free one.
    pub beat_port: Option<u16>,
    /// mDNS asks the LAN this often, after libp2p's first queries (0.5 s,
    /// doubling). Each query makes every cell answer to the whole LAN (~8 KB
    /// per 20 cells); a new cell's own queries are what finds it, so the
    /// periodic ones only heal long partitions.
    pub mdns_query_interval_secs: u64,
    /// How long an HTTP action waits for the swarm before answering 504.
    pub command_timeout_ms: u64,
    /// POST requests per second allowed per client IP (429 beyond).
    pub rate_limit_per_second: u64,
    /// POST requests a client may make at once before the rate applies.
    pub rate_limit_burst: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            heartbeat_secs: 30,
            ping_interval_ms: 300_000,
            ping_timeout_ms: 20_000,
            probe_interval_ms: 1000,
            probe_timeout_ms: 400,
            beats: true,
            beat_port: None,
            mdns_query_interval_secs: 900,
            command_timeout_ms: 5000,
            rate_limit_per_second: 10,
            rate_limit_burst: 20,
        }
    }
}

impl Tuning {
    /// How often records are exchanged with one cell in turn (`heartbeat_secs`).
    pub fn exchange_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.max(100))
    }
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms.max(100))
    }
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms.max(100))
    }
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms.max(20))
    }
    pub fn mdns_query_interval(&self) -> Duration {
        Duration::from_secs(self.mdns_query_interval_secs.max(1))
    }
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms.max(100))
    }
}

/// The resolved configuration of a cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub cell_id: String,
    pub branch: String,
    pub consciousness_level: f64,
    pub http_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// IP the libp2p listeners bind (all interfaces by default).
    pub p2p_ip: IpAddr,
    pub p2p_port: u16,
    pub mdns: bool,
    pub quic: bool,
    /// Pre-shared key file (Kubo's swarm.key): only cells with the same key
    /// connect. TCP only: QUIC is off when set.
    pub swarm_key: Option<PathBuf>,
    pub peers: Vec<PeerAddr>,
    pub data_dir: PathBuf,
    pub api_token: Option<String>,
    pub vault_addr: Option<String>,
    pub prometheus_addr: Option<String>,
    pub log_format: LogFormat,
    pub tuning: Tuning,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cell_id: default_cell_id(),
            branch: "main".into(),
            consciousness_level: 0.5,
            http_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_HTTP_PORT)),
            metrics_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9091)),
            p2p_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            p2p_port: DEFAULT_P2P_PORT,
            mdns: true,
            quic: true,
            swarm_key: None,
            peers: Vec::new(),
            data_dir: default_data_dir().unwrap_or_else(|| PathBuf::from("aios-data")),
            api_token: None,
            vault_addr: None,
            prometheus_addr: None,
            log_format: LogFormat::Text,
            tuning: Tuning::default(),
        }
    }
}

/// The machine's host name, the default cell id.
pub fn default_cell_id() -> String {
    let name = gethostname::gethostname().to_string_lossy().trim().to_owned();
    if name.is_empty() {
        "aios-cell".into()
    } else {
        name
    }
}

fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("org", "aios", "aios-cell")
}

/// The platform data dir (`~/.local/share/aios-cell`, `%APPDATA%\aios\aios-cell\data`).
pub fn default_data_dir() -> Option<PathBuf> {
    project_dirs().map(|d| d.data_dir().to_path_buf())
}

/// The platform config file (`~/.config/aios-cell/aios-cell.toml`, …).
pub fn default_config_file() -> Option<PathBuf> {
    project_dirs().map(|d| d.config_dir().join("aios-cell.toml"))
}

/// The keys a config file may hold; all optional.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FileConfig {
    pub cell_id: Option<String>,
    pub branch: Option<String>,
    pub consciousness_level: Option<f64>,
    pub http_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub p2p_ip: Option<IpAddr>,
    pub p2p_port: Option<u16>,
    pub mdns: Option<bool>,
    pub quic: Option<bool>,
    pub swarm_key: Option<PathBuf>,
    pub peers: Option<Vec<String>>,
    pub data_dir: Option<PathBuf>,
    pub api_token: Option<String>,
    pub api_token_file: Option<PathBuf>,
    pub vault_addr: Option<String>,
    pub prometheus_addr: Option<String>,
    pub log_format: Option<LogFormat>,
    pub tuning: Option<Tuning>,
    /// Keys we do not know, reported as warnings.
    #[serde(flatten, skip_serializing)]
    pub unknown: toml::Table,
}

impl FileConfig {
    /// Parses a config file's text. Unknown keys are kept in `unknown`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), source: Box::new(e) })
    }
}

/// Flags (each with its environment variable) shared by `run` and `id`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Config file (TOML) [default: the platform config dir's aios-cell.toml]
    #[arg(long, env = "AIOS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// The cell's human name [default: host name]
    #[arg(long, env = "AIOS_CELL_ID", global = true)]
    pub cell_id: Option<String>,
    /// Branch this cell runs [default: main]
    #[arg(long, env = "AIOS_BRANCH", global = true)]
    pub branch: Option<String>,
    /// Starting consciousness level [default: 0.5]
    #[arg(long, env = "AIOS_CONSCIOUSNESS_LEVEL", global = true)]
    pub consciousness_level: Option<f64>,
    /// HTTP API bind address [default: 0.0.0.0:8000]
    #[arg(long, env = "AIOS_HTTP_ADDR", global = true)]
    pub http_addr: Option<SocketAddr>,
    /// Metrics bind address [default: 0.0.0.0:9091]
    #[arg(long, env = "AIOS_METRICS_ADDR", global = true)]
    pub metrics_addr: Option<SocketAddr>,
    /// IP the libp2p listeners bind [default: 0.0.0.0]
    #[arg(long, env = "AIOS_P2P_IP", global = true)]
    pub p2p_ip: Option<IpAddr>,
    /// libp2p port, TCP and QUIC; 0 picks a free one [default: 8001]
    #[arg(long, env = "AIOS_P2P_PORT", global = true)]
    pub p2p_port: Option<u16>,
    /// mDNS discovery on the LAN [default: true]
    #[arg(long, env = "AIOS_MDNS", global = true)]
    pub mdns: Option<bool>,
    /// QUIC transport beside TCP [default: true]
    #[arg(long, env = "AIOS_QUIC", global = true)]
    pub quic: Option<bool>,
    /// Pre-shared swarm key file (Kubo's swarm.key format); turns QUIC off
    #[arg(long, env = "AIOS_SWARM_KEY", global = true)]
    pub swarm_key: Option<PathBuf>,
    /// Comma-separated peers to dial: multiaddrs or host[:port] (libp2p port, 8001 if left out)
    #[arg(long, env = "AIOS_NETWORK_PEERS", value_delimiter = ',', global = true)]
    pub peers: Option<Vec<String>>,
    /// State folder (identity key) [default: the platform data dir]
    #[arg(long, env = "AIOS_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// When set, mutating routes need `Authorization: Bearer <token>`
    #[arg(long, env = "AIOS_API_TOKEN", hide_env_values = true, global = true)]
    pub api_token: Option<String>,
    /// Read the API token from this file (e.g. one a Vault agent writes)
    #[arg(long, env = "AIOS_API_TOKEN_FILE", global = true)]
    pub api_token_file: Option<PathBuf>,
    /// Vault address (shown in /health)
    #[arg(long, env = "AIOS_VAULT_ADDR", global = true)]
    pub vault_addr: Option<String>,
    /// Prometheus address (shown in /health)
    #[arg(long, env = "AIOS_PROMETHEUS_ADDR", global = true)]
    pub prometheus_addr: Option<String>,
    /// Log format [default: text]
    #[arg(long, env = "AIOS_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Resolves flags/env over the config file over defaults. Returns the
    /// config and warnings to log (unknown keys in the file).
    pub fn resolve(args: &RunArgs) -> Result<(Config, Vec<String>), ConfigError> {
        let (file, path) = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                (FileConfig::parse(&text, path)?, Some(path.clone()))
            }
            None => match default_config_file() {
                Some(path) if path.exists() => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                    (FileConfig::parse(&text, &path)?, Some(path))
                }
                _ => (FileConfig::default(), None),
            },
        };
        let warnings = file
            .unknown
            .keys()
            .map(|k| {
                format!(
                    "unknown key `{k}` in config file {} (ignored; see config/aios-cell.toml for the known keys)",
                    path.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
                )
            })
            .collect();
        Ok((Self::layer(args.clone(), file)?, warnings))
    }

    /// Layers flags/env (`args`) over `file` over the defaults.
    pub fn layer(args: RunArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let d = Config::default();
        let peers_raw = args.peers.or(file.peers).unwrap_or_default();
        let peers = peers_raw
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<PeerAddr>, _>>()?;
        let level =
            args.consciousness_level.or(file.consciousness_level).unwrap_or(d.consciousness_level);
        if !(level.is_finite() && level >= 0.0) {
            return Err(ConfigError::BadLevel(level));
        }
        let cell_id = args.cell_id.or(file.cell_id).unwrap_or(d.cell_id);
        crate::network::protocol::validate_cell_id(&cell_id)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let branch = args.branch.or(file.branch).unwrap_or(d.branch);
        crate::network::protocol::validate_branch(&branch)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let api_token = match args.api_token.or(file.api_token).filter(|t| !t.is_empty()) {
            Some(t) => Some(t),
            None => match args.api_token_file.or(file.api_token_file) {
                Some(path) => {
                    let t = std::fs::read_to_string(&path)
                        .map_err(|source| ConfigError::TokenFile { path: path.clone(), source })?;
                    let t = t.trim().to_owned();
                    if t.is_empty() {
                        return Err(ConfigError::Invalid(format!(
                            "the API token file {} is empty",
                            path.display()
                        )));
                    }
                    Some(t)
                }
                None => None,
            },
        };
        let data_dir = match args.data_dir.or(file.data_dir) {
            Some(p) => p,
            None => default_data_dir().ok_or(ConfigError::NoDataDir)?,
        };
        Ok(Config {
            cell_id,
            branch,
            consciousness_level: level,
            http_addr: args.http_addr.or(file.http_addr).unwrap_or(d.http_addr),
            metrics_addr: args.metrics_addr.or(file.metrics_addr).unwrap_or(d.metrics_addr),
            p2p_ip: args.p2p_ip.or(file.p2p_ip).unwrap_or(d.p2p_ip),
            p2p_port: args.p2p_port.or(file.p2p_port).unwrap_or(d.p2p_port),
            mdns: args.mdns.or(file.mdns).unwrap_or(d.mdns),
            quic: args.quic.or(file.quic).unwrap_or(d.quic),
            // Like Kubo: a swarm.key in the data dir makes the mesh private.
            swarm_key: args
                .swarm_key
                .or(file.swarm_key)
                .or_else(|| Some(data_dir.join(SWARM_KEY_FILE)).filter(|p| p.exists())),
            peers,
            api_token,
            vault_addr: args.vault_addr.or(file.vault_addr),
            prometheus_addr: args.prometheus_addr.or(file.prometheus_addr),
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            data_dir,
            tuning: file.tuning.unwrap_or(d.tuning),
        })
    }

    /// A config for tests and embedding: everything on loopback, ports
    /// picked by the OS, mDNS off, state in `data_dir`.
    pub fn loopback(cell_id: &str, data_dir: PathBuf) -> Config {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Config {
            cell_id: cell_id.into(),
            http_addr: SocketAddr::new(lo, 0),
            metrics_addr: SocketAddr::new(lo, 0),
            p2p_ip: lo,
            p2p_port: 0,
            mdns: false,
            data_dir,
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_as_multiaddr_or_host_port() {
        assert_eq!(
            "aios-laptop.local:8000".parse::<PeerAddr>().unwrap(),
            PeerAddr::Host { host: "aios-laptop.local".into(), port: 8000 }
        );
        assert_eq!(
            "10.0.0.2".parse::<PeerAddr>().unwrap(),
            PeerAddr::Host { host: "10.0.0.2".into(), port: 8001 }
        );
        assert_eq!(
            "[fe80::1]:9".parse::<PeerAddr>().unwrap(),
            PeerAddr::Host { host: "fe80::1".into(), port: 9 }
        );
        assert_eq!(
            "fe80::1".parse::<PeerAddr>().unwrap(),
            PeerAddr::Host { host: "fe80::1".into(), port: 8001 }
        );
        assert!(matches!(
            "/ip4/10.0.0.2/tcp/8001".parse::<PeerAddr>().unwrap(),
            PeerAddr::Multiaddr(_)
        ));
        for bad in ["", "host:", "host:70000", "/not/a/multiaddr", "a b", "host:0", "[::1"] {
            assert!(bad.parse::<PeerAddr>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn flags_beat_file_beats_defaults() {
        let file = FileConfig::parse(
            "cell_id = \"from-file\"\nbranch = \"dev\"\np2p_port = 9001\nmystery = 1\n[tuning]\nheartbeat_secs = 5\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(file.unknown.keys().collect::<Vec<_>>(), vec!["mystery"]);
        let args = RunArgs {
            cell_id: Some("from-flag".into()),
            data_dir: Some("/tmp/x".into()),
            ..RunArgs::default()
        };
        let c = Config::layer(args, file).unwrap();
        assert_eq!(c.cell_id, "from-flag");
        assert_eq!(c.branch, "dev");
        assert_eq!(c.p2p_port, 9001);
        assert_eq!(c.tuning.heartbeat_secs, 5);
        assert_eq!(c.tuning.ping_interval_ms, Tuning::default().ping_interval_ms);
        assert_eq!(c.http_addr, Config::default().http_addr);
        assert!(c.mdns);
    }

    #[test]
    fn the_token_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let args = RunArgs {
            api_token_file: Some(path.clone()),
            data_dir: Some("/tmp/x".into()),
            ..RunArgs::default()
        };
        let c = Config::layer(args.clone(), FileConfig::default()).unwrap();
        assert_eq!(c.api_token.as_deref(), Some("s3cret"));
        std::fs::write(&path, "  \n").unwrap();
        assert!(Config::layer(args.clone(), FileConfig::default()).is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            Config::layer(args, FileConfig::default()),
            Err(ConfigError::TokenFile { .. })
        ));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let args = RunArgs {
            consciousness_level: Some(f64::NAN),
            data_dir: Some("/tmp/x".into()),
            ..RunArgs::default()
        };
        assert!(matches!(
            Config::layer(args, FileConfig::default()),
            Err(ConfigError::BadLevel(_))
        ));
        let args = RunArgs {
            peers: Some(vec!["bad peer".into()]),
            data_dir: Some("/tmp/x".into()),
            ..RunArgs::default()
        };
        assert!(matches!(Config::layer(args, FileConfig::default()), Err(ConfigError::BadPeer(_))));
        assert!(FileConfig::parse("p2p_port = \"x\"", Path::new("x.toml")).is_err());
    }
}
