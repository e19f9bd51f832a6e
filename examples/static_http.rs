//! A static-response axum server: the denominator of the benchmark's
//! `/health` throughput ratio (`bench/run.py`). It answers `GET /health`
//! with a constant JSON body of about the cell's size, on the same runtime
//! and HTTP stack as the cell, so the ratio isolates what the cell's own
//! handler costs.
//!
//! Usage: `cargo run --release --example static_http -- 127.0.0.1:8080`

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    let body = json!({
        "status": "healthy", "cell_id": "static", "peer_id": "12D3KooWStaticStaticStaticStaticStaticStaticStaticSta",
        "branch": "main", "consciousness_level": 0.5, "peers": 19, "peers_alive": 19,
        "peers_failed": 0, "peers_left": 0, "network_level": 0.5, "version": "0.0.0",
        "uptime_seconds": 1, "listen_addrs": ["/ip4/10.0.0.1/tcp/8001", "/ip4/10.0.0.1/udp/8001/quic-v1"],
        "vault_addr": null, "prometheus_addr": null
    });
    let app = Router::new().route("/health", get(move || std::future::ready(Json(body.clone()))));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("static_http listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
