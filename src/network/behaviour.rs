//! The composed libp2p behaviour and how the swarm is built.

use std::time::Duration;

use libp2p::core::upgrade::Version;
use libp2p::core::Transport;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    autonat, connection_limits, dcutr, gossipsub, identify, identity::Keypair, kad, mdns, noise,
    ping, relay, tcp, yamux, StreamProtocol, Swarm,
};
use prometheus_client::registry::Registry;

use super::protocol::{
    RegisterRequest, RegisterResponse, IDENTIFY_PROTOCOL, KAD_PROTOCOL, REGISTER_PROTOCOL, TOPIC,
};
use super::NetworkError;
use crate::config::Config;

/// How long an exchange on `/aios/register/1.0.0` may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// Largest gossip message (a record is at most 4 KiB; this leaves room).
pub const MAX_GOSSIP_BYTES: usize = 16 * 1024;
/// Largest request or response on `/aios/register/1.0.0` (an own record
/// plus at most `MAX_KNOWN_RECORDS` others of at most 4 KiB each would be
/// more, but real records are ~300 bytes; this bounds what a peer can make
/// us buffer).
pub const MAX_EXCHANGE_BYTES: u64 = 512 * 1024;
/// Connection limits: a LAN mesh needs one connection per cell (two
/// briefly, after a simultaneous dial); these bound what a flood can cost.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 3;
pub const MAX_ESTABLISHED: u32 = 512;
pub const MAX_PENDING_INCOMING: u32 = 64;
pub const MAX_PENDING_OUTGOING: u32 = 128;
/// Provider records of the mesh topic live this long unless republished;
/// each cell republishes its own every `PROVIDER_REPUBLISH`.
pub const PROVIDER_TTL: Duration = Duration::from_secs(30 * 60);
pub const PROVIDER_REPUBLISH: Duration = Duration::from_secs(10 * 60);
/// Relay limits for the circuits a reachable cell serves to cells behind
/// NAT. A cell link carries a probe a second at most, and records, so no byte cap;
/// a circuit lasts a day, then the cells reconnect (hole punching usually
/// replaces it with a direct link long before).
pub const RELAY_MAX_RESERVATIONS: usize = 128;
pub const RELAY_MAX_CIRCUITS: usize = 64;
pub const RELAY_MAX_CIRCUITS_PER_PEER: usize = 8;
pub const RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Every protocol a cell speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First: the derived behaviour asks its fields in order whether to
    /// accept a connection, and a field asked before a later one denies it
    /// has already recorded it (request-response then keeps a phantom
    /// connection, and debug builds panic when the peer disconnects:
    /// rust-libp2p PR #6601).
    pub limits: connection_limits::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub register: request_response::cbor::Behaviour<RegisterRequest, RegisterResponse>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Routed discovery beyond the LAN: the cells' own DHT.
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Whether others can dial us (decides whether we need a relay).
    pub autonat: autonat::Behaviour,
    /// Circuit relay v2, served to cells behind NAT.
    pub relay: relay::Behaviour,
    /// Circuit relay v2 client: reservations on relays when we are private.
    pub relay_client: relay::client::Behaviour,
    /// Hole punching: upgrades relayed links to direct ones.
    pub dcutr: dcutr::Behaviour,
    /// Plain streams for the liveness probes (`/aios/probe/1.0.0`).
    pub stream: libp2p_stream::Behaviour,
}

/// Peer scoring that punishes invalid records and nothing else. The
/// defaults would also penalise mesh peers for delivering few messages (a
/// quiet mesh is normal here) and many cells behind one IP (NAT, Docker),
/// so those weights are zero. One invalid record scores -100, below the
/// graylist threshold (-80): the sender is ignored until it decays away
/// (about a minute).
fn peer_score_params() -> gossipsub::PeerScoreParams {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    };
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: 0.0,
        ..Default::default()
    };
    params.topics.insert(gossipsub::IdentTopic::new(TOPIC).hash(), topic);
    params
}

/// How often identify asks a connected cell again (listen addresses are
/// pushed when they change).
const IDENTIFY_INTERVAL: Duration = Duration::from_secs(3600);

/// The agent string cells announce through identify.
pub fn agent_version() -> String {
    format!("aios-cell/{}", env!("CARGO_PKG_VERSION"))
}

fn kademlia(peer_id: libp2p::PeerId) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    cfg.set_query_timeout(Duration::from_secs(10))
        // Provider records on the 6 cells closest to the key (not 20): each
        // answer to a provider query lists every cell, so fewer copies
        // keep a lookup cheap; a cell mesh is small and its cells stable.
        .set_replication_factor(std::num::NonZeroUsize::new(6).expect("6 > 0"))
        .set_provider_record_ttl(Some(PROVIDER_TTL))
        .set_provider_publication_interval(Some(PROVIDER_REPUBLISH))
        // A provider answer lists every cell of a big mesh with its addresses.
        .set_max_packet_size(256 * 1024)
        // Cells enter the routing table only when the node adds them
        // (`feed_kad`): on one LAN the DHT finds nothing, and every entry
        // below 20 would set off a bootstrap.
        .set_kbucket_inserts(kad::BucketInserts::Manual)
        // No bootstrap on a timer: with an empty table (one LAN) it only
        // warns "No known peers" at every start and every 5 min. A cell fed
        // to the table still starts one (libp2p-kad's automatic bootstrap),
        // and the node's provider rounds do the discovery.
        .set_periodic_bootstrap_interval(None);
    let store = kad::store::MemoryStore::with_config(
        peer_id,
        kad::store::MemoryStoreConfig {
            // Every cell provides the one mesh key: keep them all, not 20.
            max_providers_per_key: MAX_ESTABLISHED as usize,
            ..Default::default()
        },
    );
    let mut kad = kad::Behaviour::with_config(peer_id, store, cfg);
    // Cells are equals: every cell answers queries, reachable from outside
    // or not (the default waits for a confirmed external address, which a
    // LAN cell never gets).
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

fn autonat_config() -> autonat::Config {
    autonat::Config {
        // Probe soon after start and retry often until sure: the answer
        // decides whether this cell needs a relay.
        boot_delay: Duration::from_secs(2),
        retry_interval: Duration::from_secs(20),
        refresh_interval: Duration::from_secs(15 * 60),
        throttle_server_period: Duration::from_secs(15),
        timeout: Duration::from_secs(10),
        // Cells live on private networks: 10/8, 192.168/16 are the norm.
        only_global_ips: false,
        // A cell on our own LAN can always dial us back, so asking it says
        // nothing about NAT. The node adds as servers only the cells
        // that mDNS has not found (they are beyond this LAN).
        use_connected: false,
        ..Default::default()
    }
}

fn relay_config() -> relay::Config {
    relay::Config {
        max_reservations: RELAY_MAX_RESERVATIONS,
        max_circuits: RELAY_MAX_CIRCUITS,
        max_circuits_per_peer: RELAY_MAX_CIRCUITS_PER_PEER,
        max_circuit_duration: RELAY_CIRCUIT_DURATION,
        // 0: no byte limit on a circuit.
        max_circuit_bytes: 0,
        ..Default::default()
    }
}

fn behaviour(
    key: &Keypair,
    config: &Config,
    relay_client: relay::client::Behaviour,
) -> Result<Behaviour, NetworkError> {
    let peer_id = key.public().to_peer_id();
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        // We decode and check every record before gossipsub forwards it, and
        // tell it which were bad so its peer scoring can punish the sender.
        .validate_messages()
        // Let messages "from us" that we did not publish reach the event
        // loop: another cell signing with our key means a cloned identity.
        .allow_self_origin(true)
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .message_id_fn(crate::network::gossip::message_id)
        .duplicate_cache_time(crate::network::gossip::SEEN_FOR)
        .heartbeat_initial_delay(Duration::from_millis(500))
        .build()
        .map_err(|e| NetworkError::Behaviour(e.to_string()))?;
    let mut gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
    )
    .map_err(|e| NetworkError::Behaviour(e.to_string()))?;
    gossipsub
        .with_peer_score(peer_score_params(), gossipsub::PeerScoreThresholds::default())
        .map_err(|e| NetworkError::Behaviour(format!("gossipsub peer scoring: {e}")))?;
    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_EXCHANGE_BYTES)
        .set_response_size_maximum(MAX_EXCHANGE_BYTES);
    let register = request_response::cbor::Behaviour::with_codec(
        codec,
        [(StreamProtocol::new(REGISTER_PROTOCOL), ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(64),
    );
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
            .with_max_established(Some(MAX_ESTABLISHED))
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
            .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING)),
    );
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
            .with_agent_version(agent_version())
            // New listen addresses are pushed when they change, so the
            // periodic re-identify (libp2p's default: every 5 min, ~1.7 KB
            // each way per connection) can be rare.
            .with_push_listen_addr_updates(true)
            .with_interval(IDENTIFY_INTERVAL),
    );
    let ping = ping::Behaviour::new(
        ping::Config::new()
            .with_interval(config.tuning.ping_interval())
            .with_timeout(config.tuning.ping_timeout()),
    );
    // mDNS is optional: without it the cell runs on configured peers. Here
    // only the interface watcher can fail; libp2p-mdns binds UDP 5353 and
    // joins the multicast group later, per interface, and a failure there
    // is logged by libp2p-mdns itself ("failed to create `InterfaceState`")
    // while the cell goes on without mDNS on that interface.
    let mdns = if config.mdns {
        let mdns_config = mdns::Config {
            query_interval: config.tuning.mdns_query_interval(),
            ..mdns::Config::default()
        };
        match mdns::tokio::Behaviour::new(mdns_config, peer_id) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(
                    "mDNS is off, running on configured peers only: cannot watch the network interfaces: {e}"
                );
                None
            }
        }
    } else {
        None
    };
    Ok(Behaviour {
        gossipsub,
        register,
        identify,
        ping,
        mdns: mdns.into(),
        limits,
        kad: kademlia(peer_id),
        autonat: autonat::Behaviour::new(peer_id, autonat_config()),
        relay: relay::Behaviour::new(peer_id, relay_config()),
        relay_client,
        dcutr: dcutr::Behaviour::new(peer_id),
        stream: libp2p_stream::Behaviour::new(),
    })
}

/// The builder wants behaviour errors boxed.
fn boxed(
    b: Result<Behaviour, NetworkError>,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    b.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
}

/// Builds the swarm: TCP (Noise, Yamux), QUIC v1 and the circuit relay
/// client transport, bandwidth metrics in `registry`. With a pre-shared key,
/// TCP only, every connection wrapped in libp2p's pnet before Noise (relayed
/// connections run inside a pnet connection to the relay).
pub fn build_swarm(
    key: Keypair,
    config: &Config,
    psk: Option<PreSharedKey>,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>, NetworkError> {
    let config = config.clone();
    // Cells keep a connection to every other cell for as long as both run;
    // only gossipsub's mesh peers would keep a connection alive on their own,
    // so the idle timeout is set out of the way. Duplicate connections are
    // pruned by the node instead.
    let idle = Duration::from_secs(365 * 24 * 3600);
    let tcp_config = tcp::Config::default().nodelay(true);
    let transport_err = |e: &dyn std::fmt::Display| NetworkError::Transport(e.to_string());
    let behaviour_err = |e: &dyn std::fmt::Display| NetworkError::Behaviour(e.to_string());
    // The same tail for every transport choice (the builder's type differs
    // with each, so a function cannot take it).
    macro_rules! finish {
        ($builder:expr) => {
            $builder
                .with_relay_client(noise::Config::new, yamux::Config::default)
                .map_err(|e| transport_err(&e))?
                .with_bandwidth_metrics(registry)
                .with_behaviour(|key, relay| boxed(behaviour(key, &config, relay)))
                .map_err(|e| behaviour_err(&e))?
                .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
                .build()
        };
    }
    let builder = libp2p::SwarmBuilder::with_existing_identity(key).with_tokio();
    let swarm = if let Some(psk) = psk {
        finish!(builder
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    tcp::tokio::Transport::new(tcp_config)
                        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                        .upgrade(Version::V1Lazy)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default()),
                )
            })
            .map_err(|e| transport_err(&e))?)
    } else {
        let builder = builder
            .with_tcp(tcp_config, noise::Config::new, yamux::Config::default)
            .map_err(|e| transport_err(&e))?;
        if config.quic {
            finish!(builder.with_quic_config(|mut c| {
                // A crashed process sends nothing over UDP: notice it
                // after 3 s of silence instead of the 10 s default.
                c.max_idle_timeout = 3_000;
                c.keep_alive_interval = Duration::from_secs(1);
                c
            }))
        } else {
            finish!(builder)
        }
    };
    Ok(swarm)
}
