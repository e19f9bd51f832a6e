//! Configuration: defaults < TOML file < environment (`AIOS_*`) < flags,
//! resolved once into a [`Config`].
//!
//! Flags and environment come through clap (`RunArgs`, each flag with its
//! `env`), so clap already puts a flag above its variable; the file fills in
//! whatever neither gave, and [`Config::default`] the rest.

use std::collections::BTreeMap;
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

/// A key the config file should not have, and what it may have meant.
#[derive(Debug, thiserror::Error)]
#[error(
    "config file {path}: unknown key `{key}`{}{}",
    section.as_deref().map(|s| format!(" in [{s}]")).unwrap_or_default(),
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => format!(" (the keys there: {})", known.join(", ")),
    }
)]
pub struct UnknownKey {
    pub path: PathBuf,
    pub key: String,
    pub section: Option<String>,
    pub suggestion: Option<String>,
    pub known: Vec<String>,
}

/// Errors resolving the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML for aios-cell: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    /// Boxed: the largest variant by far, and every `Result` carries its size.
    #[error("{0}")]
    UnknownKey(Box<UnknownKey>),
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
    /// Check this cell's own services (the metrics port and `services`)
    /// this often; a change of status is published with the record.
    pub service_check_interval_ms: u64,
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
            service_check_interval_ms: 5000,
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
    pub fn service_check_interval(&self) -> Duration {
        Duration::from_millis(self.service_check_interval_ms.max(100))
    }
}

/// The resolved configuration of a cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub cell_id: String,
    pub branch: String,
    pub consciousness_level: f64,
    /// The level was set (flag, environment or file), not the default: it
    /// then wins over the level saved by the last run.
    pub consciousness_level_explicit: bool,
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
    /// Free `key = value` tags the record carries (`AIOS_TAGS`).
    pub tags: BTreeMap<String, String>,
    /// Services on this machine the record announces (`AIOS_SERVICES`);
    /// the metrics port is one more, always.
    pub services: Vec<crate::services::ServiceSpec>,
    pub tuning: Tuning,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cell_id: default_cell_id(),
            branch: "main".into(),
            consciousness_level: 0.5,
            consciousness_level_explicit: false,
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
            tags: BTreeMap::new(),
            services: Vec::new(),
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

/// The keys a config file may hold; all optional. A key it does not know
/// is an error with a suggestion, in `[tuning]` as at the top.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub cell_id: Option<String>,
    pub branch: Option<String>,
    pub consciousness_level: Option<f64>,
    #[serde(default, deserialize_with = "de_socket_addr")]
    pub http_addr: Option<SocketAddr>,
    #[serde(default, deserialize_with = "de_socket_addr")]
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
    /// `[tags]`: `role = "desktop"`; numbers and booleans are taken as text.
    pub tags: Option<BTreeMap<String, toml::Value>>,
    /// `[services]`: `grafana = "3000/http"`, or a bare port (`node = 9100`,
    /// protocol `tcp`).
    pub services: Option<BTreeMap<String, toml::Value>>,
    pub tuning: Option<Tuning>,
}

fn de_socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_socket_addr(&s).map(Some).map_err(serde::de::Error::custom)
}

/// The keys a serialisable struct has (its fields, `None` ones included).
fn keys_of<T: Serialize>(value: &T) -> Vec<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// The known key closest to `key`, if it is close enough to be a typo.
fn closest(key: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::jaro(key, k), k))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.clone())
}

fn check_keys(
    table: &toml::Table,
    known: &[String],
    section: Option<&str>,
    path: &Path,
) -> Result<(), ConfigError> {
    for key in table.keys() {
        if !known.contains(key) {
            return Err(ConfigError::UnknownKey(Box::new(UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
                section: section.map(str::to_owned),
                suggestion: closest(key, known),
                known: known.to_vec(),
            })));
        }
    }
    Ok(())
}

impl FileConfig {
    /// Parses a config file's text. An unknown key anywhere is an error
    /// that names the closest known key; a wrong type is an error with the
    /// line and a caret.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse_err = |e| ConfigError::Parse { path: path.to_owned(), source: Box::new(e) };
        let table: toml::Table = toml::from_str(text).map_err(parse_err)?;
        let mut known = keys_of(&FileConfig::default());
        known.sort();
        check_keys(&table, &known, None, path)?;
        if let Some(toml::Value::Table(t)) = table.get("tuning") {
            let mut known = keys_of(&Tuning::default());
            known.sort();
            check_keys(t, &known, Some("tuning"), path)?;
        }
        toml::from_str(text).map_err(parse_err)
    }
}

/// Reads the config file at `path`, or the platform's if there is one.
/// Returns the file and where it was.
pub fn load_file(path: Option<&Path>) -> Result<Option<(FileConfig, PathBuf)>, ConfigError> {
    let path = match path {
        Some(p) => p.to_owned(),
        None => match default_config_file() {
            Some(p) if p.exists() => p,
            _ => return Ok(None),
        },
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    Ok(Some((FileConfig::parse(&text, &path)?, path)))
}

/// A bind or API address: `ip:port`, or `host:port` resolved now
/// (`localhost:8000`; IPv4 first).
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let bad = || format!("{s:?} is not ip:port or host:port (e.g. 127.0.0.1:8000)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> =
        s.to_socket_addrs().map_err(|e| format!("cannot resolve {host:?}: {e}"))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

/// A consciousness level: a finite, non-negative number.
pub fn parse_level(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{s:?} is not a finite, non-negative number"))
    }
}

/// The API token from its sources, first that is set: `token` (flag or
/// `AIOS_API_TOKEN`), `token_file` (flag or `AIOS_API_TOKEN_FILE`), then the
/// file's `api_token` and `api_token_file`. The cell and its client verbs
/// use the same rule.
pub fn resolve_token(
    token: Option<String>,
    token_file: Option<PathBuf>,
    file: &FileConfig,
) -> Result<Option<String>, ConfigError> {
    let read = |path: PathBuf| -> Result<String, ConfigError> {
        let t = std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::TokenFile { path: path.clone(), source })?;
        let t = t.trim().to_owned();
        if t.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "the API token file {} is empty",
                path.display()
            )));
        }
        Ok(t)
    };
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    if let Some(p) = token_file {
        return read(p).map(Some);
    }
    if let Some(t) = file.api_token.clone().filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    file.api_token_file.clone().map(read).transpose()
}

/// Tags and services from the flag or variable (which replaces the file's
/// table), else the file. A bad entry stops the cell, named.
fn tags_and_services(
    tags: Option<String>,
    services: Option<String>,
    file: &FileConfig,
) -> Result<(BTreeMap<String, String>, Vec<crate::services::ServiceSpec>), ConfigError> {
    use crate::services::{check_services, parse_service, parse_tags};
    let tags = match (tags, &file.tags) {
        (Some(t), _) => {
            parse_tags(&t).map_err(|e| ConfigError::Invalid(format!("AIOS_TAGS / --tags: {e}")))?
        }
        (None, Some(table)) => {
            let bad = |e: String| ConfigError::Invalid(format!("[tags] in the config file: {e}"));
            let mut tags = BTreeMap::new();
            for (k, v) in table {
                let v = scalar_text(v).ok_or_else(|| {
                    bad(format!("the value of {k:?} must be text, a number or a boolean"))
                })?;
                crate::network::protocol::validate_tag(k, &v)
                    .map_err(|e| bad(format!("tag {k:?}: {e}")))?;
                tags.insert(k.clone(), v);
            }
            if tags.len() > crate::network::protocol::MAX_TAGS {
                return Err(bad(format!(
                    "{} tags, at most {}",
                    tags.len(),
                    crate::network::protocol::MAX_TAGS
                )));
            }
            tags
        }
        (None, None) => BTreeMap::new(),
    };
    let services = match (services, &file.services) {
        (Some(s), _) => crate::services::parse_services(&s)
            .map_err(|e| ConfigError::Invalid(format!("AIOS_SERVICES / --services: {e}")))?,
        (None, Some(table)) => {
            let bad =
                |e: String| ConfigError::Invalid(format!("[services] in the config file: {e}"));
            let specs = table
                .iter()
                .map(|(name, v)| {
                    let value = match v {
                        toml::Value::Integer(p) => p.to_string(),
                        toml::Value::String(s) => s.clone(),
                        _ => {
                            return Err(format!(
                                "service {name:?}: expected a port (9100) or \"port/protocol\" (\"3000/http\")"
                            ))
                        }
                    };
                    parse_service(name, &value)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad)?;
            check_services(&specs).map_err(bad)?;
            specs
        }
        (None, None) => Vec::new(),
    };
    Ok((tags, services))
}

/// A TOML scalar as text (`gpu = true` is the tag `gpu=true`).
fn scalar_text(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Flags (each with its environment variable) shared by `run` and `id`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Config file (TOML) [default: the platform config dir's aios-cell.toml]
    #[arg(long, env = "AIOS_CONFIG")]
    pub config: Option<PathBuf>,
    /// The cell's human name [default: host name]
    #[arg(long, env = "AIOS_CELL_ID")]
    pub cell_id: Option<String>,
    /// Branch this cell runs [default: main]
    #[arg(long, env = "AIOS_BRANCH")]
    pub branch: Option<String>,
    /// Starting consciousness level [default: 0.5]
    #[arg(long, env = "AIOS_CONSCIOUSNESS_LEVEL", value_parser = parse_level)]
    pub consciousness_level: Option<f64>,
    /// HTTP API bind address, ip:port or host:port [default: 0.0.0.0:8000]
    #[arg(long, env = "AIOS_HTTP_ADDR", value_parser = parse_socket_addr)]
    pub http_addr: Option<SocketAddr>,
    /// Metrics bind address, ip:port or host:port [default: 0.0.0.0:9091]
    #[arg(long, env = "AIOS_METRICS_ADDR", value_parser = parse_socket_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// IP the libp2p listeners bind [default: 0.0.0.0]
    #[arg(long, env = "AIOS_P2P_IP")]
    pub p2p_ip: Option<IpAddr>,
    /// libp2p port, TCP and QUIC; 0 picks a free one [default: 8001]
    #[arg(long, env = "AIOS_P2P_PORT")]
    pub p2p_port: Option<u16>,
    /// mDNS discovery on the LAN: true/false, on/off, yes/no, 1/0 [default: true]
    #[arg(long, env = "AIOS_MDNS", value_parser = clap::builder::BoolishValueParser::new())]
    pub mdns: Option<bool>,
    /// QUIC transport beside TCP: true/false, on/off, yes/no, 1/0 [default: true]
    #[arg(long, env = "AIOS_QUIC", value_parser = clap::builder::BoolishValueParser::new())]
    pub quic: Option<bool>,
    /// Tags this cell announces: key=value,… (e.g. role=desktop,gpu=true)
    #[arg(long, env = "AIOS_TAGS")]
    pub tags: Option<String>,
    /// Services on this machine to announce and check: name=port[/http|https|tcp],… (tcp if left out)
    #[arg(long, env = "AIOS_SERVICES")]
    pub services: Option<String>,
    /// Pre-shared swarm key file (Kubo's swarm.key format); turns QUIC off
    #[arg(long, env = "AIOS_SWARM_KEY")]
    pub swarm_key: Option<PathBuf>,
    /// Comma-separated peers to dial: multiaddrs or host[:port] (libp2p port, 8001 if left out)
    #[arg(long, env = "AIOS_NETWORK_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// State folder (identity key) [default: the platform data dir]
    #[arg(long, env = "AIOS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When set, mutating routes need `Authorization: Bearer <token>`
    #[arg(long, env = "AIOS_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Read the API token from this file (e.g. one a Vault agent writes)
    #[arg(long, env = "AIOS_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Vault address (shown in /health)
    #[arg(long, env = "AIOS_VAULT_ADDR")]
    pub vault_addr: Option<String>,
    /// Prometheus address (shown in /health)
    #[arg(long, env = "AIOS_PROMETHEUS_ADDR")]
    pub prometheus_addr: Option<String>,
    /// Log format [default: text]
    #[arg(long, env = "AIOS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Resolves flags/env over the config file over defaults.
    pub fn resolve(args: &RunArgs) -> Result<Config, ConfigError> {
        let file = load_file(args.config.as_deref())?.map(|(f, _)| f).unwrap_or_default();
        Self::layer(args.clone(), file)
    }

    /// Layers flags/env (`args`) over `file` over the defaults.
    pub fn layer(args: RunArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let d = Config::default();
        let api_token = resolve_token(args.api_token, args.api_token_file, &file)?;
        let (tags, services) = tags_and_services(args.tags, args.services, &file)?;
        let peers_raw = args.peers.or(file.peers).unwrap_or_default();
        let peers = peers_raw
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<PeerAddr>, _>>()?;
        let explicit = args.consciousness_level.or(file.consciousness_level);
        let level = explicit.unwrap_or(d.consciousness_level);
        if !(level.is_finite() && level >= 0.0) {
            return Err(ConfigError::BadLevel(level));
        }
        let cell_id = args.cell_id.or(file.cell_id).unwrap_or(d.cell_id);
        crate::network::protocol::validate_cell_id(&cell_id)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let branch = args.branch.or(file.branch).unwrap_or(d.branch);
        crate::network::protocol::validate_branch(&branch)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        crate::services::check_record_size(&cell_id, &branch, &tags, &services)
            .map_err(ConfigError::Invalid)?;
        let data_dir = match args.data_dir.or(file.data_dir) {
            Some(p) => p,
            None => default_data_dir().ok_or(ConfigError::NoDataDir)?,
        };
        Ok(Config {
            cell_id,
            branch,
            consciousness_level: level,
            consciousness_level_explicit: explicit.is_some(),
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
            tags,
            services,
            tuning: file.tuning.unwrap_or(d.tuning),
        })
    }

    /// The resolved configuration as a config file (`aios-cell config
    /// check`); the token itself is not shown.
    pub fn to_file_config(&self) -> FileConfig {
        FileConfig {
            cell_id: Some(self.cell_id.clone()),
            branch: Some(self.branch.clone()),
            consciousness_level: Some(self.consciousness_level),
            http_addr: Some(self.http_addr),
            metrics_addr: Some(self.metrics_addr),
            p2p_ip: Some(self.p2p_ip),
            p2p_port: Some(self.p2p_port),
            mdns: Some(self.mdns),
            quic: Some(self.quic),
            swarm_key: self.swarm_key.clone(),
            peers: Some(self.peers.iter().map(ToString::to_string).collect()),
            data_dir: Some(self.data_dir.clone()),
            api_token: self.api_token.as_ref().map(|_| "(set, not shown)".into()),
            api_token_file: None,
            vault_addr: self.vault_addr.clone(),
            prometheus_addr: self.prometheus_addr.clone(),
            log_format: Some(self.log_format),
            tags: Some(
                self.tags
                    .iter()
                    .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                    .collect(),
            ),
            services: Some(
                self.services
                    .iter()
                    .map(|s| (s.name.clone(), toml::Value::String(s.to_string())))
                    .collect(),
            ),
            tuning: Some(self.tuning.clone()),
        }
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
mod tests;
