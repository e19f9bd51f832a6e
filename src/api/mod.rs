//! The HTTP API (axum), as `../shared/contract.md` fixes it:
//! `GET /health`, `GET /peers`, `GET /events` (Server-Sent Events),
//! `POST /register`, `POST /sync-consciousness` and `DELETE /peers/{id}`,
//! and every cell's services: `GET /services`, `GET /sd/prometheus`
//! (docs/api.md has every field). Reads come from the network's snapshot; actions go to the
//! network node as commands.

mod error;
pub mod handlers;
pub mod sd;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};

pub use error::Error;

use crate::metrics::CellMetrics;
use crate::network::Handle;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest a request may take (`/events` streams are exempt). Actions time
/// out sooner (`command_timeout_ms`, 504); this bounds everything else.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Per-client limit on POST routes (they dial and publish); reads come from
/// a snapshot and are not limited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second per client IP.
    pub per_second: u64,
    /// Requests a client may make at once before the rate applies.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { per_second: 10, burst: 20 }
    }
}

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub handle: Handle,
    pub started: Instant,
    pub token: Option<Arc<str>>,
    pub vault_addr: Option<String>,
    pub prometheus_addr: Option<String>,
    pub metrics: CellMetrics,
    pub rate_limit: RateLimit,
    /// Cancelled at shutdown: ends `/events` streams so the server can drain.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Rate-limit key: the client's IP, or one shared bucket when the request
/// did not come through a socket (router tests).
#[derive(Debug, Clone, Copy)]
struct ClientIp;

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract<T>(&self, req: &axum::http::Request<T>) -> Result<IpAddr, GovernorError> {
        Ok(req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
    }
}

fn too_many(e: GovernorError) -> Response {
    let (status, wait, msg) = match e {
        GovernorError::TooManyRequests { wait_time, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            wait_time.max(1),
            format!("too many requests from this client; retry in {}s", wait_time.max(1)),
        ),
        other => (StatusCode::INTERNAL_SERVER_ERROR, 1, format!("rate limiter: {other}")),
    };
    let mut resp = (status, Json(serde_json::json!({ "error": msg }))).into_response();
    if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Bounds an action by [`REQUEST_TIMEOUT`].
async fn timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": "the request took too long" })),
        )
            .into_response(),
    }
}

/// The API router, ready to serve (tests drive it with `oneshot`). Serve it
/// with `into_make_service_with_connect_info::<SocketAddr>()` so the rate
/// limit is per client.
pub fn router(state: AppState, metrics: CellMetrics) -> Router {
    let limit = state.rate_limit;
    let governor = GovernorConfigBuilder::default()
        .key_extractor(ClientIp)
        .per_millisecond((1000 / limit.per_second.max(1)).max(1))
        .burst_size(limit.burst.max(1))
        .methods(vec![Method::POST])
        .finish()
        .map(Arc::new);
    // Forget idle clients now and then so the table stays small.
    if let Some(g) = &governor {
        let limiter = Arc::clone(g.limiter());
        let stop = state.shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => limiter.retain_recent(),
                }
            }
        });
    }
    // Actions (POST) dial and publish: they get the rate limit and the
    // request timeout. Reads answer from a snapshot at once, so they skip
    // both (a timer per request was a fifth of `/health`'s cost).
    let actions = Router::new()
        .route("/register", post(handlers::register))
        .route("/sync-consciousness", post(handlers::sync))
        .route("/peers/{peer_id}", delete(handlers::forget))
        .route_layer(middleware::from_fn(timeout));
    let actions = match governor {
        Some(g) => actions.route_layer(GovernorLayer::new(g).error_handler(too_many)),
        None => actions,
    };
    let router = Router::new()
        .route("/health", get(handlers::health))
        .route("/peers", get(handlers::peers))
        .route("/events", get(handlers::events))
        .route("/services", get(sd::services))
        .route("/sd/prometheus", get(sd::prometheus))
        .merge(actions)
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    // `Router::layer` wraps every route and the fallback; routes see their
    // `MatchedPath`, the fallback counts as `unmatched`.
    router
        .layer(middleware::from_fn_with_state(metrics, crate::metrics::track_http))
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> Error {
    Error::NotFound { method: method.to_string(), path: uri.path().to_owned() }
}

async fn not_allowed(method: Method, uri: Uri) -> Error {
    Error::MethodNotAllowed { method: method.to_string(), path: uri.path().to_owned() }
}
