//! The HTTP API (axum): `GET /health`, `POST /register`,
//! `POST /sync-consciousness`, `GET /peers`, as `../shared/contract.md`
//! fixes them. Reads come from the network's snapshot; actions go to the
//! event loop as commands.

mod error;
pub mod handlers;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

pub use error::Error;

use crate::metrics::CellMetrics;
use crate::network::Handle;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub handle: Handle,
    pub started: Instant,
    pub token: Option<Arc<str>>,
    pub vault_addr: Option<String>,
    pub prometheus_addr: Option<String>,
    pub metrics: CellMetrics,
    /// Cancelled at shutdown: ends `/events` streams so the server can drain.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The API router, ready to serve (tests drive it with `oneshot`).
pub fn router(state: AppState, metrics: CellMetrics) -> Router {
    Router::new()
        .route("/health", get(handlers::health))
        .route("/peers", get(handlers::peers))
        .route("/events", get(handlers::events))
        .route("/register", post(handlers::register))
        .route("/sync-consciousness", post(handlers::sync))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // `Router::layer` wraps every route and the fallback; routes see
        // their `MatchedPath`, the fallback counts as `unmatched`.
        .layer(middleware::from_fn_with_state(metrics, crate::metrics::track_http))
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> Error {
    Error::NotFound { method: method.to_string(), path: uri.path().to_owned() }
}

async fn not_allowed(method: Method, uri: Uri) -> Error {
    Error::MethodNotAllowed { method: method.to_string(), path: uri.path().to_owned() }
}
