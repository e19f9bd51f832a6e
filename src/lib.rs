//! aios-cell: every machine on a LAN an equal cell of one mesh.
//!
//! - [`config`]: defaults < TOML file < `AIOS_*` environment < flags, one [`Config`].
//! - [`identity`]: the persistent ed25519 key, so the peer id survives restarts.
//! - [`network`]: the libp2p swarm, owned by one task (the network node)
//!   that routes each event to a clock-free component: links, dialer,
//!   liveness (ring watch by UDP beats and TCP probes, suspicion, local
//!   health), membership exchanges, the own record and gossip, beyond the
//!   LAN (Kademlia, AutoNAT, relays, hole punching); reached through a
//!   cloneable [`Handle`]. Protocols: mDNS, gossipsub, request-response
//!   (`/aios/register/1.0.0`), identify, ping, probes (`/aios/probe/1.0.0`),
//!   beats (`/aios/beat/1.0.0`), Kademlia (`/aios/kad/1.0.0`), AutoNAT,
//!   circuit relay v2, DCUtR.
//! - [`mesh`]: the table of known cells and how updates merge into it.
//! - [`api`]: the HTTP API (axum) the seed's clients call.
//! - [`metrics`]: one prometheus-client registry, served on `/metrics`.
//! - [`client`]: the `health`, `peers` and `sync` verbs against a running cell.
//! - [`services`]: the tags and services a cell announces, and the checker
//!   of its own services.
//! - [`state`]: crash-safe state (level, last peers) in the data dir.
//!
//! [`Cell::start`] runs a whole cell on already-resolved config; the binary
//! only parses flags, sets up logging and waits for a signal.

pub mod api;
pub mod client;
pub mod config;
pub mod identity;
pub mod mesh;
pub mod metrics;
pub mod network;
pub mod services;
pub mod state;
pub mod trim;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use libp2p::PeerId;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;

pub use network::Handle;

/// How long [`Cell::shutdown`] lets in-flight HTTP requests finish.
const HTTP_DRAIN: Duration = Duration::from_secs(2);

/// Errors starting a cell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error("cannot bind the {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
}

/// A running cell: its swarm, HTTP API and metrics server.
pub struct Cell {
    peer_id: PeerId,
    http_addr: SocketAddr,
    metrics_addr: SocketAddr,
    handle: Handle,
    app: axum::Router,
    shutdown: CancellationToken,
    network: JoinHandle<()>,
    servers: Vec<JoinHandle<()>>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { what, addr, source })
}

impl Cell {
    /// Starts a cell: loads (or makes) its identity, binds the HTTP and
    /// metrics ports, starts listening on libp2p, and spawns the tasks.
    pub async fn start(mut config: Config) -> Result<Cell, Error> {
        let key = identity::load_or_create(&config.data_dir)?;
        let psk = match &config.swarm_key {
            Some(path) => {
                let psk = identity::load_swarm_key(path)?;
                tracing::info!(
                    fingerprint = %psk.fingerprint(),
                    "private mesh: only cells with this swarm key can connect; QUIC is off (pnet works over TCP only)"
                );
                config.quic = false;
                Some(psk)
            }
            None => None,
        };
        let peer_id = key.public().to_peer_id();
        let http = bind("HTTP API", config.http_addr).await?;
        let metrics_listener = bind("metrics server", config.metrics_addr).await?;
        let http_addr = http.local_addr().map_err(|source| Error::Bind {
            what: "HTTP API",
            addr: config.http_addr,
            source,
        })?;
        let metrics_addr = metrics_listener.local_addr().map_err(|source| Error::Bind {
            what: "metrics server",
            addr: config.metrics_addr,
            source,
        })?;
        // The record announces the metrics port actually bound (port 0 in tests).
        config.metrics_addr = metrics_addr;

        let mut registry = Registry::default();
        let cell_metrics = metrics::CellMetrics::register(&mut registry);
        let swarm = network::behaviour::build_swarm(key.clone(), &config, psk, &mut registry)?;
        let p2p_metrics = libp2p::metrics::Metrics::new(&mut registry);
        let mut restored = state::load(&config.data_dir).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the state file; starting from the configuration");
            None
        });
        // A level set in the configuration wins over the one saved by the
        // last run (which wins only over the default).
        if let Some(s) = restored.as_mut().filter(|_| config.consciousness_level_explicit) {
            if s.level != config.consciousness_level {
                tracing::info!(
                    level = config.consciousness_level,
                    saved = s.level,
                    "starting at the configured consciousness level, not the one saved by the last run"
                );
                s.level = config.consciousness_level;
            }
        }
        let (state_tx, state_rx) = tokio::sync::watch::channel(None);
        let (node, handle) = network::Node::new(
            swarm,
            key,
            &config,
            cell_metrics.clone(),
            p2p_metrics,
            restored,
            state_tx,
        )?;
        let registry = Arc::new(registry);

        let shutdown = CancellationToken::new();
        let network = tokio::spawn(node.run(shutdown.clone()));

        let state = api::AppState {
            handle: handle.clone(),
            started: Instant::now(),
            token: config.api_token.as_deref().map(Arc::from),
            vault_addr: config.vault_addr.clone(),
            prometheus_addr: config.prometheus_addr.clone(),
            metrics: cell_metrics.clone(),
            rate_limit: api::RateLimit {
                per_second: config.tuning.rate_limit_per_second,
                burst: config.tuning.rate_limit_burst,
            },
            shutdown: shutdown.clone(),
        };
        let app = api::router(state, cell_metrics);
        let api_app = app.clone();
        let metrics_app = metrics::router(registry);
        let mut servers =
            vec![tokio::spawn(state::saver(config.data_dir.clone(), state_rx, shutdown.clone()))];
        servers.push(tokio::spawn(trim::run(shutdown.clone())));
        servers.push(tokio::spawn(services::run(
            handle.clone(),
            services::targets(&config),
            config.tuning.service_check_interval(),
            shutdown.clone(),
        )));
        for (what, listener, app) in
            [("HTTP API", http, app), ("metrics", metrics_listener, metrics_app)]
        {
            let token = shutdown.clone();
            servers.push(tokio::spawn(async move {
                // Connect info gives the rate limiter each client's IP.
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { token.cancelled().await });
                if let Err(e) = served.await {
                    tracing::error!(what, error = %e, "server stopped");
                }
            }));
        }
        tracing::info!(%peer_id, cell_id = config.cell_id, %http_addr, %metrics_addr, "cell started");
        Ok(Cell {
            peer_id,
            http_addr,
            metrics_addr,
            handle,
            app: api_app,
            shutdown,
            network,
            servers,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Where the HTTP API listens (the real port when 0 was asked for).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The API router on this cell's state, for driving it without a socket
    /// (`tower::ServiceExt::oneshot`).
    pub fn api_router(&self) -> axum::Router {
        self.app.clone()
    }

    /// A token that stops the cell when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Shuts down cleanly: tells the mesh it is leaving, stops accepting,
    /// lets in-flight requests finish, and returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Err(e) = self.network.await {
            tracing::error!(error = %e, "network task ended badly");
        }
        for s in self.servers {
            if tokio::time::timeout(HTTP_DRAIN, s).await.is_err() {
                tracing::warn!("HTTP requests still running at shutdown were cut off");
            }
        }
        tracing::info!("cell stopped");
    }

    /// Stops the cell abruptly, as a crash would: no leave notice.
    pub fn kill(self) {
        self.network.abort();
        for s in self.servers {
            s.abort();
        }
    }

    /// Waits until the shutdown token is cancelled, then shuts down cleanly.
    pub async fn run_until_cancelled(self) {
        self.shutdown.cancelled().await;
        self.shutdown().await;
    }
}
