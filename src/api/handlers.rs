//! Route handlers and the strict JSON body reader they share.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::ExtensionRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::{AppState, Error, MAX_BODY_BYTES};
use crate::mesh::{PeerEntry, PeerState};
use crate::network::protocol::validate_level;
use crate::network::{RegisterTarget, SyncOutcome};

/// Reads a JSON body: 413 when too large, 415 for a non-JSON content type,
/// 400 for malformed JSON, 422 for wrong types, missing or unknown fields.
/// `None` when the body is empty and `allow_empty`.
fn parse_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    allow_empty: bool,
) -> Result<Option<T>, Error> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge(MAX_BODY_BYTES)
        } else {
            Error::BadRequest(format!("cannot read request body: {}", r.body_text()))
        }
    })?;
    parse_json(headers.get(header::CONTENT_TYPE), &body, allow_empty)
}

/// Parses a JSON body given its content type (checked only when present).
fn parse_json<T: DeserializeOwned>(
    content_type: Option<&axum::http::HeaderValue>,
    body: &[u8],
    allow_empty: bool,
) -> Result<Option<T>, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if allow_empty {
            Ok(None)
        } else {
            Err(Error::BadRequest("request body is empty; expected a JSON object".into()))
        };
    }
    if let Some(ct) = content_type {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !(essence == "application/json" || essence.ends_with("+json")) {
            return Err(Error::UnsupportedMediaType);
        }
    }
    // Every body is a JSON object (serde would also take an array).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::Unprocessable("the request body must be a JSON object".into()));
    }
    serde_json::from_slice::<T>(body).map(Some).map_err(|e| {
        let text = String::from_utf8_lossy(body);
        match e.classify() {
            serde_json::error::Category::Data => {
                Error::Unprocessable(format!("invalid request: {e}"))
            }
            // A number out of f64's range, or Python's `json.dumps(float("nan"))`:
            // not a finite number, which is the client's value, not its syntax.
            _ if e.to_string().contains("number out of range")
                || text.contains("NaN")
                || text.contains("Infinity") =>
            {
                Error::Unprocessable(
                    "level must be a finite, non-negative number (NaN, Infinity and numbers \
                     beyond f64 are not)"
                        .into(),
                )
            }
            _ => Error::BadRequest(format!("malformed JSON: {e}")),
        }
    })
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Error> {
    let Some(token) = &state.token else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(Error::Unauthorized)
    }
}

/// `GET /health`.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub cell_id: String,
    pub peer_id: String,
    pub branch: String,
    pub consciousness_level: f64,
    /// Connected cells.
    pub peers: usize,
    pub peers_alive: usize,
    pub peers_failed: usize,
    pub peers_left: usize,
    pub network_level: f64,
    pub version: &'static str,
    pub uptime_seconds: u64,
    pub listen_addrs: Vec<String>,
    /// Transports that listen: `tcp`, and `quic` unless it is off or its
    /// listener could not start.
    pub transports: Vec<&'static str>,
    /// AutoNAT's verdict: `unknown`, `public` or `private`.
    pub reachability: &'static str,
    /// Relays this cell is reachable through (peer ids), when private.
    pub relays: Vec<String>,
    pub vault_addr: Option<String>,
    pub prometheus_addr: Option<String>,
    /// This cell's tags (`AIOS_TAGS`), `{}` when none.
    pub tags: std::collections::BTreeMap<String, String>,
    /// This cell's services (the metrics port first) and their status.
    pub services: Vec<crate::network::protocol::Service>,
}

pub(super) async fn health(State(state): State<AppState>) -> Json<Health> {
    let snap = state.handle.snapshot();
    Json(Health {
        status: if snap.degraded.is_some() { "degraded" } else { "healthy" },
        reason: snap.degraded.clone(),
        cell_id: snap.local.cell_id.clone(),
        peer_id: snap.local.peer_id.clone(),
        branch: snap.local.branch.clone(),
        consciousness_level: snap.local.consciousness_level,
        peers: snap.connected(),
        peers_alive: snap.count(PeerState::Alive),
        peers_failed: snap.count(PeerState::Failed),
        peers_left: snap.count(PeerState::Left),
        network_level: snap.network_level(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
        listen_addrs: snap.local.listen_addrs.clone(),
        transports: snap.local.transports.clone(),
        reachability: snap.local.reachability,
        relays: snap.local.relays.clone(),
        vault_addr: state.vault_addr.clone(),
        prometheus_addr: state.prometheus_addr.clone(),
        tags: snap.local.tags.clone(),
        services: snap.local.services.clone(),
    })
}

/// `GET /peers`.
#[derive(Debug, Serialize)]
pub struct Peers {
    pub cell_id: String,
    pub peer_id: String,
    pub count: usize,
    pub peers: Vec<Arc<PeerEntry>>,
}

pub(super) async fn peers(State(state): State<AppState>) -> Json<Peers> {
    let snap = state.handle.snapshot();
    Json(Peers {
        cell_id: snap.local.cell_id.clone(),
        peer_id: snap.local.peer_id.clone(),
        count: snap.peers.len(),
        peers: snap.peers.clone(),
    })
}

/// `DELETE /peers/{peer_id}`: forget a cell that is gone for good (Serf's
/// `force-leave`). Needs the token when the cell has one.
pub(super) async fn forget(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(peer_id): axum::extract::Path<String>,
) -> Result<Json<Value>, Error> {
    authorize(&state, &headers)?;
    let peer: libp2p::PeerId = peer_id
        .parse()
        .map_err(|_| Error::Unprocessable(format!("{peer_id:?} is not a peer id")))?;
    match state.handle.forget(peer).await? {
        Ok(()) => Ok(Json(json!({ "status": "forgotten", "peer_id": peer_id }))),
        Err(crate::mesh::ForgetError::Unknown) => Err(Error::NotFound {
            method: "DELETE".into(),
            path: format!("/peers/{peer_id} (no such cell is known)"),
        }),
        Err(e @ crate::mesh::ForgetError::Alive) => Err(Error::Conflict(e.to_string())),
    }
}

/// `POST /register` body, as the seed's discovery script sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    pub cell_id: String,
    /// IP or host name of the cell to dial.
    pub ip: String,
    /// The cell's HTTP port (informational: cells talk libp2p elsewhere).
    pub port: u16,
    /// Where its libp2p listens, if not `/ip4/<ip>/tcp/<p2p_port>`.
    #[serde(default)]
    pub multiaddr: Option<String>,
    /// Its libp2p port, 8001 when left out.
    #[serde(default)]
    pub p2p_port: Option<u16>,
}

fn valid_host(h: &str) -> bool {
    h.parse::<IpAddr>().is_ok()
        || (!h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }))
}

pub(super) async fn register(
    State(state): State<AppState>,
    caller: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, Error> {
    authorize(&state, &headers)?;
    let Some(b) = parse_body::<RegisterBody>(&headers, body, false)? else {
        return Err(Error::BadRequest("request body is empty".into()));
    };
    let target = check_register(&b)?;
    let snap = state.handle.snapshot();
    if is_own_address(&target, &snap.local.listen_addrs) {
        // Registering the cell with itself: nothing to dial.
        return Ok(Json(json!({
            "status": "self",
            "registered_cell_id": b.cell_id,
            "peer": { "peer_id": snap.local.peer_id, "cell_id": snap.local.cell_id },
        })));
    }
    // With a token, `authorize` has checked it: the caller may name anyone.
    let caller = caller.ok().map(|ConnectInfo(addr)| addr.ip());
    let own_ips: Vec<IpAddr> = snap
        .local
        .listen_addrs
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter_map(|m| ip_and_port(&m).map(|(ip, _)| ip))
        .collect();
    may_dial(&target, caller, state.token.is_some(), &own_ips)?;
    let out = state.handle.register(target).await?;
    if out.cell_id != b.cell_id {
        tracing::info!(
            asked = b.cell_id,
            answered = out.cell_id,
            "registered cell reports another cell_id"
        );
    }
    Ok(Json(json!({
        "status": "registered",
        "registered_cell_id": b.cell_id,
        "peer": out,
    })))
}

/// Validates a `POST /register` body and says where to dial.
pub fn check_register(b: &RegisterBody) -> Result<RegisterTarget, Error> {
    crate::network::protocol::validate_cell_id(&b.cell_id)
        .map_err(|e| Error::Unprocessable(e.to_string()))?;
    if b.port == 0 || b.p2p_port == Some(0) {
        return Err(Error::Unprocessable("ports must be 1-65535".into()));
    }
    let ip = b.ip.trim();
    if !valid_host(ip) {
        return Err(Error::Unprocessable(format!(
            "ip must be an IP address or host name, got {:?}",
            b.ip
        )));
    }
    let target = match &b.multiaddr {
        Some(m) => RegisterTarget::Multiaddr(
            m.parse()
                .map_err(|e| Error::Unprocessable(format!("multiaddr {m:?} is invalid: {e}")))?,
        ),
        None => RegisterTarget::Host {
            host: ip.to_owned(),
            port: b.p2p_port.unwrap_or(crate::config::DEFAULT_P2P_PORT),
        },
    };
    Ok(target)
}

/// The IP of a dial target given literally (`ip` or the multiaddr's first
/// component), when the target can only reach that IP: no host name, no
/// relay circuit.
fn literal_ip(target: &RegisterTarget) -> Option<IpAddr> {
    match target {
        RegisterTarget::Host { host, .. } => {
            host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
        }
        RegisterTarget::Multiaddr(m) => {
            if m.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
                return None;
            }
            match m.iter().next()? {
                Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
                Protocol::Ip6(ip) => Some(IpAddr::V6(ip).to_canonical()),
                _ => None,
            }
        }
    }
}

/// The target's IP and TCP or UDP port, when literal.
fn ip_and_port(m: &Multiaddr) -> Option<(IpAddr, u16)> {
    let mut it = m.iter();
    let ip = match it.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip).to_canonical(),
        _ => return None,
    };
    match it.next()? {
        Protocol::Tcp(p) | Protocol::Udp(p) => Some((ip, p)),
        _ => None,
    }
}

/// True when `target` is one of this cell's own listen addresses (same IP
/// and port): registering the cell with itself, which needs no dial.
pub fn is_own_address(target: &RegisterTarget, listen_addrs: &[String]) -> bool {
    let wanted = match target {
        RegisterTarget::Host { host, port } => match host.parse::<IpAddr>() {
            Ok(ip) => (ip.to_canonical(), *port),
            Err(_) => return false,
        },
        RegisterTarget::Multiaddr(m) => {
            if m.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
                return false;
            }
            match ip_and_port(m) {
                Some(w) => w,
                None => return false,
            }
        }
    };
    listen_addrs
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter_map(|m| ip_and_port(&m))
        .any(|own| own == wanted)
}

/// Whether a `/register` from `caller` may dial `target` (issue 17: the
/// API is no port scanner). With the token, or from loopback (this
/// machine's own user, as `aios-cell join`; also a client that reached the
/// cell at one of its own addresses, `own_ips`), any target; otherwise
/// only the caller's own IP, given literally: the caller registering
/// itself, as the seed's discovery script does. A request that came through
/// no socket (`caller` unknown) counts as another machine's.
pub fn may_dial(
    target: &RegisterTarget,
    caller: Option<IpAddr>,
    authenticated: bool,
    own_ips: &[IpAddr],
) -> Result<(), Error> {
    let caller = caller.map(|ip| ip.to_canonical());
    let this_machine = caller.is_some_and(|ip| ip.is_loopback() || own_ips.contains(&ip));
    if authenticated || this_machine {
        return Ok(());
    }
    if caller.is_some() && literal_ip(target) == caller {
        return Ok(());
    }
    let from = caller.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
    Err(Error::Forbidden(format!(
        "without the API token, a request from another machine may only register the machine it \
         comes from (this request came from {from}; give that IP as `ip`, or a multiaddr that \
         starts with it). To register another cell, send `Authorization: Bearer <token>` (set \
         AIOS_API_TOKEN on this cell), or send the request from that cell's machine, or from \
         this cell's machine (loopback, e.g. `aios-cell join`)"
    )))
}

/// Parses and validates a `POST /register` body as the route does (used by
/// the fuzz targets): JSON errors, then field checks.
pub fn parse_register(body: &[u8]) -> Result<RegisterTarget, Error> {
    match parse_json::<RegisterBody>(None, body, false)? {
        Some(b) => check_register(&b),
        None => Err(Error::BadRequest("request body is empty".into())),
    }
}

/// Parses and validates a `POST /sync-consciousness` body as the route
/// does: the level to set, if any.
pub fn parse_sync(body: &[u8]) -> Result<Option<f64>, Error> {
    let body = parse_json::<SyncBody>(None, body, true)?;
    match body.and_then(|b| b.level) {
        Some(l) => Ok(Some(validate_level(l).map_err(|e| Error::Unprocessable(e.to_string()))?)),
        None => Ok(None),
    }
}

/// `POST /sync-consciousness` body (optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncBody {
    #[serde(default)]
    pub level: Option<f64>,
    /// Free-form context, logged.
    #[serde(default)]
    pub context: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Serialize)]
pub struct SyncReply {
    pub status: &'static str,
    pub cell_id: String,
    /// The cell's level now (what the seed's extension shows).
    pub level: f64,
    #[serde(flatten)]
    pub outcome: SyncOutcome,
}

pub(super) async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SyncReply>, Error> {
    authorize(&state, &headers)?;
    let body = parse_body::<SyncBody>(&headers, body, true)?;
    let level = match body.as_ref().and_then(|b| b.level) {
        Some(l) => Some(validate_level(l).map_err(|e| Error::Unprocessable(e.to_string()))?),
        None => None,
    };
    if let Some(ctx) = body.as_ref().and_then(|b| b.context.as_ref()) {
        let context = Value::Object(ctx.clone()).to_string();
        tracing::info!(context, "sync context");
    }
    let outcome = state.handle.sync(level).await?;
    Ok(Json(SyncReply {
        status: "synced",
        cell_id: state.handle.snapshot().local.cell_id.clone(),
        level: outcome.new_level,
        outcome,
    }))
}

/// How often `/events` sends a keep-alive comment.
const SSE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// `GET /events`: a snapshot, then every mesh event, as Server-Sent Events.
/// A client that falls behind the event buffer is dropped (it reconnects
/// and gets a fresh snapshot); it never slows the cell.
pub(super) async fn events(
    State(state): State<AppState>,
) -> axum::response::sse::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    use tokio::sync::broadcast::error::RecvError;

    // Subscribe first, so nothing between the snapshot and the stream is lost.
    let rx = state.handle.subscribe();
    let snap = state.handle.snapshot();
    let first = json!({ "type": "snapshot", "local": snap.local, "peers": snap.peers });
    let first = Event::default().event("snapshot").data(first.to_string());
    let dropped = state.metrics.dropped_notifications.clone();
    let rest = futures::stream::unfold(rx, move |mut rx| {
        let dropped = dropped.clone();
        async move {
            match rx.recv().await {
                Ok(ev) => {
                    let data = serde_json::to_string(&ev).unwrap_or_else(|_| "{}".into());
                    Some((Event::default().event(ev.name()).data(data), rx))
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::info!(missed = n, "dropping a slow /events client");
                    dropped.inc();
                    None
                }
                Err(RecvError::Closed) => None,
            }
        }
    });
    // When the cell stops, a last `shutdown` event says so (a client then
    // knows the stream's end is not a network failure).
    let shutdown = state.shutdown.clone();
    let local =
        json!({ "type": "shutdown", "peer_id": snap.local.peer_id, "cell_id": snap.local.cell_id });
    let last = futures::stream::once(async move {
        shutdown.is_cancelled().then(|| Event::default().event("shutdown").data(local.to_string()))
    })
    .filter_map(std::future::ready);
    let stream = futures::stream::once(async move { first })
        .chain(rest)
        .take_until(state.shutdown.clone().cancelled_owned())
        .chain(last)
        .map(Ok);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> RegisterTarget {
        RegisterTarget::Host { host: h.into(), port: 8001 }
    }

    fn ma(m: &str) -> RegisterTarget {
        RegisterTarget::Multiaddr(m.parse().unwrap())
    }

    #[test]
    fn a_remote_caller_without_token_may_register_only_itself() {
        let caller: IpAddr = "192.168.1.20".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.168.1.20".parse().unwrap();
        for c in [caller, mapped] {
            assert!(may_dial(&host("192.168.1.20"), Some(c), false, &[]).is_ok());
            assert!(may_dial(&ma("/ip4/192.168.1.20/tcp/8001"), Some(c), false, &[]).is_ok());
            assert!(
                may_dial(&ma("/ip4/192.168.1.20/udp/8001/quic-v1"), Some(c), false, &[]).is_ok()
            );
        }
        for other in [
            host("192.168.1.21"),
            host("127.0.0.1"),
            host("printer.local"),
            ma("/ip4/192.168.1.21/tcp/22"),
            ma("/dns4/example.com/tcp/8001"),
            ma("/ip4/192.168.1.20/tcp/1/p2p/12D3KooWSVJWDfcSrPNXkrkYzCCRBDGg41a4zzPPXuAAVEyYibt5/p2p-circuit"),
        ] {
            let e = may_dial(&other, Some(caller), false, &[]).unwrap_err();
            assert_eq!(e.status(), StatusCode::FORBIDDEN);
            let msg = e.to_string();
            assert!(msg.contains("192.168.1.20") && msg.contains("token"), "{msg}");
            // The token, or loopback, lifts the limit.
            assert!(may_dial(&other, Some(caller), true, &[]).is_ok());
            assert!(may_dial(&other, Some("127.0.0.1".parse().unwrap()), false, &[]).is_ok());
            assert!(may_dial(&other, Some("::1".parse().unwrap()), false, &[]).is_ok());
            // A client on this machine that used one of its LAN addresses.
            assert!(may_dial(&other, Some(caller), false, &[caller]).is_ok());
        }
        // No socket: not trusted.
        assert!(may_dial(&host("192.168.1.20"), None, false, &[]).is_err());
    }

    #[test]
    fn own_listen_addresses_are_recognised() {
        let own = vec![
            "/ip4/192.168.1.5/tcp/8001".to_owned(),
            "/ip4/127.0.0.1/udp/8001/quic-v1".to_owned(),
        ];
        assert!(is_own_address(&host("192.168.1.5"), &own));
        assert!(is_own_address(&ma("/ip4/127.0.0.1/udp/8001/quic-v1"), &own));
        assert!(!is_own_address(
            &RegisterTarget::Host { host: "192.168.1.5".into(), port: 22 },
            &own
        ));
        assert!(!is_own_address(&host("192.168.1.6"), &own));
        assert!(!is_own_address(&host("localhost"), &own));
    }
}
