//! Client verbs against a running cell's API, the way `serf members` works:
//! `aios-cell health`, `aios-cell peers`, `aios-cell sync [--level X]`.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

/// Errors talking to a cell.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the cell at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the cell answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the cell's answer is not JSON: {0}")]
    Body(String),
}

/// A small client for one cell's API.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Unreachable { url: base.into(), reason: e.to_string() })?;
        Ok(Client { base: base.trim_end_matches('/').to_owned(), token, http })
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<Value, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Unreachable { url: url.into(), reason: error_chain(&e) })?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| ClientError::Body(e.to_string()))?;
        if !status.is_success() {
            let message = body.get("error").and_then(Value::as_str).unwrap_or("").to_owned();
            return Err(ClientError::Status { status: status.as_u16(), message });
        }
        Ok(body)
    }

    pub async fn health(&self) -> Result<Value, ClientError> {
        let url = format!("{}/health", self.base);
        self.send(self.http.get(&url), &url).await
    }

    pub async fn peers(&self) -> Result<Value, ClientError> {
        let url = format!("{}/peers", self.base);
        self.send(self.http.get(&url), &url).await
    }

    pub async fn sync(&self, level: Option<f64>) -> Result<Value, ClientError> {
        let url = format!("{}/sync-consciousness", self.base);
        let req = match level {
            Some(l) => self.http.post(&url).json(&serde_json::json!({ "level": l })),
            None => self.http.post(&url),
        };
        self.send(req, &url).await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// `aios-cell health` as a readable block.
pub fn format_health(v: &Value) -> String {
    let mut out = String::new();
    for key in [
        "status",
        "reason",
        "cell_id",
        "peer_id",
        "branch",
        "consciousness_level",
        "network_level",
        "peers",
        "peers_alive",
        "peers_failed",
        "peers_left",
        "version",
        "uptime_seconds",
    ] {
        if v.get(key).is_some_and(|x| !x.is_null()) {
            let _ = writeln!(out, "{key:<20} {}", text(v, key));
        }
    }
    out
}

/// `aios-cell peers` as a table, like `serf members`.
pub fn format_peers(v: &Value) -> String {
    let mut rows = vec![[
        "CELL".to_string(),
        "STATE".into(),
        "LEVEL".into(),
        "BRANCH".into(),
        "RTT".into(),
        "FOUND".into(),
        "PEER ID".into(),
        "ADDRESS".into(),
    ]];
    for p in v.get("peers").and_then(Value::as_array).into_iter().flatten() {
        let rtt = p
            .get("rtt_ms")
            .and_then(Value::as_f64)
            .map(|ms| format!("{ms:.1}ms"))
            .unwrap_or_else(|| "-".into());
        let addr = p
            .get("addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_owned();
        let mut state = text(p, "state");
        if p.get("connected").and_then(Value::as_bool) == Some(true) {
            state.push('*');
        }
        rows.push([
            text(p, "cell_id"),
            state,
            text(p, "consciousness_level"),
            text(p, "branch"),
            rtt,
            text(p, "found_by"),
            text(p, "peer_id"),
            addr,
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if rows.len() == 1 {
        out.push_str("(no other cells known)\n");
    } else {
        out.push_str("(* = connected)\n");
    }
    out
}

/// `aios-cell sync` result.
pub fn format_sync(v: &Value) -> String {
    format!(
        "level {} (was {}), network level {}, sent to {} cell(s)\n",
        text(v, "new_level"),
        text(v, "old_level"),
        text(v, "network_level"),
        text(v, "reached")
    )
}
