//! Client verbs against a running cell's API, the way `serf members` works:
//! `aios-cell health`, `peers`, `sync [--level X]`, `join`, `monitor`.
//!
//! The client finds the cell the way the cell finds its own settings:
//! `--api` / `AIOS_API` when given, else the cell's `AIOS_HTTP_ADDR` or the
//! config file's `http_addr` (an unspecified IP means this host's loopback),
//! else `127.0.0.1:8000`. Its token comes from the cell's own sources.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::config::{self, ConfigError, FileConfig, DEFAULT_HTTP_PORT};
use crate::network::protocol::{escape_text, is_forbidden_char};

/// How long a client waits for a cell's answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the token can come from, for messages.
const TOKEN_SOURCES: &str = "--api-token, --api-token-file, AIOS_API_TOKEN, AIOS_API_TOKEN_FILE, \
     or api_token / api_token_file in the config file";

/// Errors talking to a cell.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the cell at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "no answer from {url} within {secs}s: is that the cell's HTTP API? (the libp2p port, \
         8001 by default, speaks no HTTP; the API is on {DEFAULT_HTTP_PORT} unless AIOS_HTTP_ADDR moves it)"
    )]
    TimedOut { url: String, secs: u64 },
    #[error("the cell answered 401: it needs a token; give it with {TOKEN_SOURCES}")]
    Unauthorized,
    #[error("the cell answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error(
        "{url} is the cell's metrics port, not its API: the API is on {DEFAULT_HTTP_PORT} unless \
         AIOS_HTTP_ADDR moves it"
    )]
    MetricsPort { url: String },
    #[error("{url} answered {status} with something that is not the cell's JSON ({detail}): is that the cell's HTTP API?")]
    NotJson { url: String, status: u16, detail: String },
    #[error("invalid API address {given:?}: expected a URL (http://127.0.0.1:8000) or host:port")]
    BadApi { given: String },
    #[error("--tag {0:?}: expected key=value or key (e.g. --tag role=desktop)")]
    BadTag(String),
    #[error("{var}={value:?} is not a host:port, so the client cannot find the cell from it; pass --api")]
    BadEnv { var: &'static str, value: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Turns what a user typed for `--api` into a base URL: a URL as given,
/// `host:port` or a bare host (port 8000) with `http://` before it.
pub fn normalize_api(given: &str) -> Result<String, ClientError> {
    let s = given.trim().trim_end_matches('/');
    let bad = || ClientError::BadApi { given: given.to_owned() };
    if s.is_empty() {
        return Err(bad());
    }
    let url = if s.contains("://") {
        s.to_owned()
    } else if s.parse::<Ipv6Addr>().is_ok() {
        format!("http://[{s}]:{DEFAULT_HTTP_PORT}")
    } else if s.starts_with('[') || s.contains(':') {
        format!("http://{s}")
    } else {
        format!("http://{s}:{DEFAULT_HTTP_PORT}")
    };
    let parsed = reqwest::Url::parse(&url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad());
    }
    Ok(url)
}

/// The API URL a client reaches for a cell bound to `addr`: an unspecified
/// IP (0.0.0.0, ::) means this host's loopback.
pub fn api_of_bind(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// What a client verb was given: its own flags (each with its variable).
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `--api` / `AIOS_API`.
    pub api: Option<String>,
    /// `--api-token` / `AIOS_API_TOKEN`.
    pub api_token: Option<String>,
    /// `--api-token-file` / `AIOS_API_TOKEN_FILE`.
    pub api_token_file: Option<PathBuf>,
    /// `--config` / `AIOS_CONFIG`.
    pub config: Option<PathBuf>,
}

impl Target {
    /// The base URL and token, from the flags, then the cell's own
    /// `AIOS_HTTP_ADDR` (read from `env`), then the config file.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(String, Option<String>), ClientError> {
        let file = config::load_file(self.config.as_deref())?.map(|(f, _)| f).unwrap_or_default();
        let api = match &self.api {
            Some(a) => normalize_api(a)?,
            None => match env("AIOS_HTTP_ADDR").filter(|v| !v.trim().is_empty()) {
                Some(v) => api_of_bind(
                    config::parse_socket_addr(&v)
                        .map_err(|_| ClientError::BadEnv { var: "AIOS_HTTP_ADDR", value: v })?,
                ),
                None => match file.http_addr {
                    Some(a) => api_of_bind(a),
                    None => format!("http://127.0.0.1:{DEFAULT_HTTP_PORT}"),
                },
            },
        };
        let token = config::resolve_token(
            self.api_token.clone(),
            self.api_token_file.clone(),
            &FileConfig {
                api_token: file.api_token,
                api_token_file: file.api_token_file,
                ..FileConfig::default()
            },
        )?;
        Ok((api, token))
    }
}

/// A small client for one cell's API.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `base` is a URL or `host:port` (see [`normalize_api`]).
    pub fn new(base: &str, token: Option<String>) -> Result<Client, ClientError> {
        let base = normalize_api(base)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ClientError::Unreachable { url: base.clone(), reason: e.to_string() })?;
        Ok(Client { base, token, http })
    }

    /// The base URL this client calls.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<Value, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.timeout(CLIENT_TIMEOUT).send().await.map_err(|e| self.failed(e, url))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.failed(e, url))?;
        let body: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => return Err(self.not_json(url, status.as_u16(), &text).await),
        };
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized);
        }
        if !status.is_success() {
            let message =
                escape_text(body.get("error").and_then(Value::as_str).unwrap_or("")).into_owned();
            return Err(ClientError::Status { status: status.as_u16(), message });
        }
        Ok(body)
    }

    fn failed(&self, e: reqwest::Error, url: &str) -> ClientError {
        if e.is_timeout() {
            ClientError::TimedOut { url: url.into(), secs: CLIENT_TIMEOUT.as_secs() }
        } else if e.is_connect() {
            // reqwest's chain repeats the URL; the innermost cause says why.
            let mut cause: &dyn std::error::Error = &e;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            let reason = format!(
                "{cause} (is the cell running, and is its API there? see AIOS_HTTP_ADDR / --api)"
            );
            ClientError::Unreachable { url: url.into(), reason }
        } else {
            ClientError::Unreachable { url: url.into(), reason: error_chain(&e) }
        }
    }

    /// Says what answered instead of the API: the metrics port (its
    /// `/metrics` is Prometheus text), or something else.
    async fn not_json(&self, url: &str, status: u16, text: &str) -> ClientError {
        let metrics = format!("{}/metrics", self.base);
        if let Ok(resp) = self.http.get(&metrics).timeout(Duration::from_secs(3)).send().await {
            if let Ok(body) = resp.text().await {
                if body.contains("# TYPE aios_") || body.contains("# HELP aios_") {
                    return ClientError::MetricsPort { url: self.base.clone() };
                }
            }
        }
        let detail: String = text.trim().chars().take(60).collect();
        let detail = if detail.is_empty() { "an empty body".into() } else { format!("{detail:?}") };
        ClientError::NotJson { url: url.into(), status, detail }
    }

    pub async fn health(&self) -> Result<Value, ClientError> {
        let url = format!("{}/health", self.base);
        self.send(self.http.get(&url), &url).await
    }

    pub async fn peers(&self) -> Result<Value, ClientError> {
        let url = format!("{}/peers", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// `GET /services`, filtered by tag on the cell's side.
    pub async fn services(&self, tag: Option<&TagFilter>) -> Result<Value, ClientError> {
        let url = format!("{}/services", self.base);
        let req = match tag {
            Some(t) => self.http.get(&url).query(&[("tag", t.to_string())]),
            None => self.http.get(&url),
        };
        self.send(req, &url).await
    }

    pub async fn sync(&self, level: Option<f64>) -> Result<Value, ClientError> {
        let url = format!("{}/sync-consciousness", self.base);
        let req = match level {
            Some(l) => self.http.post(&url).json(&serde_json::json!({ "level": l })),
            None => self.http.post(&url),
        };
        self.send(req, &url).await
    }

    /// `POST /register` for `address`: a multiaddr, or `host[:port]` of the
    /// peer's libp2p port.
    /// Forgets a cell gone for good: `DELETE /peers/{peer_id}`.
    pub async fn forget(&self, peer_id: &str) -> Result<Value, ClientError> {
        let url = format!("{}/peers/{peer_id}", self.base);
        self.send(self.http.delete(&url), &url).await
    }

    pub async fn join(&self, address: &str) -> Result<Value, ClientError> {
        let url = format!("{}/register", self.base);
        let body = match address.parse::<config::PeerAddr>()? {
            config::PeerAddr::Multiaddr(m) => {
                // The route wants a host as well: the multiaddr's, if it has one.
                let host = m
                    .iter()
                    .find_map(|p| match p {
                        libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.to_string()),
                        libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.to_string()),
                        libp2p::multiaddr::Protocol::Dns(h)
                        | libp2p::multiaddr::Protocol::Dns4(h)
                        | libp2p::multiaddr::Protocol::Dns6(h) => Some(h.to_string()),
                        _ => None,
                    })
                    .unwrap_or_else(|| "127.0.0.1".into());
                serde_json::json!({ "cell_id": host, "ip": host, "port": DEFAULT_HTTP_PORT,
                                    "multiaddr": m.to_string() })
            }
            config::PeerAddr::Host { host, port } => serde_json::json!({
                "cell_id": host, "ip": host, "port": DEFAULT_HTTP_PORT, "p2p_port": port
            }),
        };
        self.send(self.http.post(&url).json(&body), &url).await
    }

    /// Follows `GET /events`, calling `each(event, data)` for every event
    /// until the cell ends the stream.
    pub async fn monitor(&self, mut each: impl FnMut(&str, &str)) -> Result<(), ClientError> {
        let url = format!("{}/events", self.base);
        let mut resp = self.http.get(&url).send().await.map_err(|e| self.failed(e, &url))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            return Err(self.not_json(&url, status, &text).await);
        }
        let mut buf = String::new();
        let (mut event, mut data) = (String::new(), String::new());
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.failed(e, &url))? {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find('\n') {
                let line: String = buf.drain(..=end).collect();
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    if !data.is_empty() {
                        each(if event.is_empty() { "message" } else { &event }, &data);
                    }
                    event.clear();
                    data.clear();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
        }
        Ok(())
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

/// A field as text for the terminal: whatever the cell sent, control and
/// bidi-override characters come out escaped (`\u{1b}`), so a hostile name
/// cannot clear the screen, forge lines or reorder the text around it.
fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => escape_text(s).into_owned(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => escape_text(&other.to_string()).into_owned(),
    }
}

/// The first string of the array `key`, escaped, or `-`.
fn first_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map_or_else(|| "-".to_owned(), |s| escape_text(s).into_owned())
}

/// JSON for the terminal (`--json`): serde_json escapes C0 controls itself;
/// DEL, C1 controls and bidi overrides (only ever inside strings) become
/// `\uXXXX` escapes too, so the output is the same JSON, inert on a terminal.
pub fn json_for_terminal(v: &Value, pretty: bool) -> String {
    let raw = if pretty { format!("{v:#}") } else { v.to_string() };
    json_text_for_terminal(&raw)
}

/// [`json_for_terminal`] for JSON text as received (`monitor --json`):
/// forbidden characters are written as `\uXXXX`, except the white space
/// between tokens (valid JSON holds no raw control character in a string,
/// and the others only inside strings).
pub fn json_text_for_terminal(raw: &str) -> String {
    let bad = |c: char| is_forbidden_char(c) && !matches!(c, '\n' | '\r' | '\t');
    if !raw.chars().any(bad) {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for c in raw.chars() {
        if bad(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
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

/// `--tag key=value` (that value) or `--tag key` (any value).
#[derive(Debug, Clone, PartialEq)]
pub struct TagFilter {
    key: String,
    value: Option<String>,
}

impl TagFilter {
    pub fn parse(text: &str) -> Result<TagFilter, ClientError> {
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
            None => (text.trim(), None),
        };
        if key.is_empty() {
            return Err(ClientError::BadTag(text.to_owned()));
        }
        Ok(TagFilter { key: key.to_owned(), value })
    }

    /// Whether a `/peers` row or `/health` (their `tags` object) matches.
    pub fn matches(&self, row: &Value) -> bool {
        match (row.get("tags").and_then(|t| t.get(&self.key)), &self.value) {
            (Some(Value::String(v)), Some(want)) => v == want,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// Keeps the `/peers` rows that match (and sets `count`).
    pub fn retain_peers(&self, peers: &mut Value) {
        if let Some(rows) = peers.get_mut("peers").and_then(Value::as_array_mut) {
            rows.retain(|r| self.matches(r));
            let n = rows.len();
            peers["count"] = n.into();
        }
    }
}

impl std::fmt::Display for TagFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.key),
            None => write!(f, "{}", self.key),
        }
    }
}

/// A row's tags as `k=v,k=v`, escaped, or `-`.
fn tags_text(v: &Value) -> String {
    let tags: Vec<String> = v
        .get("tags")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            escape_text(&format!("{k}={v}")).into_owned()
        })
        .collect();
    if tags.is_empty() {
        "-".into()
    } else {
        tags.join(",")
    }
}

/// `aios-cell services` as a table: one line per service of each cell.
pub fn format_services(v: &Value) -> String {
    let mut rows = vec![[
        "SERVICE".to_string(),
        "CELL".into(),
        "STATUS".into(),
        "ENDPOINT".into(),
        "URL".into(),
    ]];
    for (name, endpoints) in v.get("services").and_then(Value::as_object).into_iter().flatten() {
        for e in endpoints.as_array().into_iter().flatten() {
            let address = text(e, "address");
            let endpoint = if address.contains(':') {
                format!("[{address}]:{}/{}", text(e, "port"), text(e, "protocol"))
            } else {
                format!("{address}:{}/{}", text(e, "port"), text(e, "protocol"))
            };
            rows.push([
                escape_text(name).into_owned(),
                text(e, "cell_id"),
                text(e, "status"),
                endpoint,
                text(e, "url"),
            ]);
        }
    }
    if rows.len() == 1 {
        return "(no services known)\n".into();
    }
    let mut widths = [0usize; 5];
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
    out
}

/// `aios-cell peers` as a table, like `serf members`.
/// `aios-cell peers` as a table: this cell first (from `/health`, when it
/// answered), marked, then every cell it knows.
pub fn format_peers(v: &Value, this: Option<&Value>) -> String {
    let mut rows = vec![[
        "CELL".to_string(),
        "STATE".into(),
        "LEVEL".into(),
        "BRANCH".into(),
        "RTT".into(),
        "FOUND".into(),
        "PEER ID".into(),
        "ADDRESS".into(),
        "TAGS".into(),
    ]];
    if let Some(h) = this {
        let addr = first_of(h, "listen_addrs");
        rows.push([
            format!("{} (this cell)", text(h, "cell_id")),
            "self".into(),
            text(h, "consciousness_level"),
            text(h, "branch"),
            "-".into(),
            "-".into(),
            text(h, "peer_id"),
            addr,
            tags_text(h),
        ]);
    }
    for p in v.get("peers").and_then(Value::as_array).into_iter().flatten() {
        let rtt = p
            .get("rtt_ms")
            .and_then(Value::as_f64)
            .map(|ms| format!("{ms:.1}ms"))
            .unwrap_or_else(|| "-".into());
        let addr = first_of(p, "addresses");
        let mut state = text(p, "state");
        if p.get("suspect").and_then(Value::as_bool) == Some(true) {
            state = "suspect".into();
        }
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
            tags_text(p),
        ]);
    }
    let mut widths = [0usize; 9];
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
    let others = rows.len() - 1 - usize::from(this.is_some());
    if others == 0 {
        out.push_str("(no other cells known)\n");
    } else {
        out.push_str(
            "(* = connected; suspect = a check of it went unanswered, still counted alive)\n",
        );
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

/// `aios-cell join` result.
pub fn format_join(v: &Value) -> String {
    let peer = v.get("peer").unwrap_or(&Value::Null);
    format!("registered {} ({})\n", text(peer, "cell_id"), text(peer, "peer_id"))
}

/// One `/events` event as a line, like `serf monitor`.
pub fn format_event(event: &str, data: &str) -> String {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let who = |v: &Value| {
        let cell = text(v, "cell_id");
        let peer = text(v, "peer_id");
        if cell == "-" {
            peer
        } else {
            format!("{cell} ({peer})")
        }
    };
    match event {
        "snapshot" => {
            let n = v.get("peers").and_then(Value::as_array).map_or(0, Vec::len);
            format!(
                "snapshot: {} and {n} known cell(s)",
                who(v.get("local").unwrap_or(&Value::Null))
            )
        }
        "status" => format!(
            "status: {}{}, {} cell(s) alive",
            text(&v, "status"),
            v.get("reason")
                .and_then(Value::as_str)
                .map(|r| format!(" ({})", escape_text(r)))
                .unwrap_or_default(),
            text(&v, "peers_alive")
        ),
        "level_changed" => {
            format!("level_changed: {} {} -> {}", who(&v), text(&v, "old_level"), text(&v, "level"))
        }
        "shutdown" => format!("shutdown: {} is stopping", who(&v)),
        "services_changed" => {
            let services: Vec<String> = v
                .get("services")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|s| format!("{} {}", text(s, "name"), text(s, "status")))
                .collect();
            format!("services_changed: {} {}", who(&v), services.join(", "))
        }
        _ => format!("{}: {}", escape_text(event), who(&v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOSTILE: &str = "evil\u{0}\u{1b}[2J\r\nid\u{7}\u{9b}\u{7f}\u{202e}gnp.exe";

    fn inert(out: &str) {
        for c in out.chars() {
            assert!(c == '\n' || !is_forbidden_char(c), "{c:?} printed raw in {out:?}");
        }
    }

    #[test]
    fn hostile_names_are_printed_escaped() {
        let health = json!({
            "status": "degraded", "reason": HOSTILE, "cell_id": HOSTILE, "peer_id": "12D3",
            "branch": HOSTILE, "consciousness_level": 0.5, "listen_addrs": [HOSTILE],
        });
        let out = format_health(&health);
        inert(&out);
        assert!(
            out.contains("evil\\u{0}\\u{1b}[2J\\u{d}\\u{a}id\\u{7}\\u{9b}\\u{7f}\\u{202e}gnp.exe"),
            "{out}"
        );
        assert_eq!(out.lines().count(), 6, "a name added lines: {out}");
        let peers = json!({ "peers": [{
            "cell_id": HOSTILE, "branch": HOSTILE, "state": "alive", "consciousness_level": 1,
            "found_by": HOSTILE, "peer_id": HOSTILE, "addresses": [HOSTILE], "connected": true,
        }]});
        let out = format_peers(&peers, Some(&health));
        inert(&out);
        assert_eq!(out.lines().count(), 4, "a name added lines: {out}");
        assert!(out.contains("\\u{202e}"), "{out}");
        for (event, data) in [
            ("joined", json!({ "cell_id": HOSTILE, "peer_id": HOSTILE })),
            ("status", json!({ "status": HOSTILE, "reason": HOSTILE, "peers_alive": 1 })),
            ("level_changed", json!({ "cell_id": HOSTILE, "old_level": HOSTILE, "level": 1 })),
            ("snapshot", json!({ "local": { "cell_id": HOSTILE }, "peers": [] })),
            (HOSTILE, json!({ "cell_id": HOSTILE })),
        ] {
            let out = format_event(event, &data.to_string());
            inert(&out);
            assert!(!out.contains('\n'), "{out}");
        }
        let join = json!({ "peer": { "cell_id": HOSTILE, "peer_id": HOSTILE } });
        inert(&format_join(&join));
        inert(&format_sync(&json!({ "new_level": HOSTILE })));
    }

    #[test]
    fn json_output_stays_json_and_inert() {
        let v = json!({ "cell_id": HOSTILE, "peers": [{ "branch": "büro-Δ-노트" }] });
        for pretty in [true, false] {
            let out = json_for_terminal(&v, pretty);
            inert(&out);
            let back: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(back, v);
        }
        let raw = v.to_string();
        let out = json_text_for_terminal(&raw);
        inert(&out);
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), v);
        // Ordinary names pass unchanged.
        assert!(json_for_terminal(&json!({"c": "büro-Δ-노트"}), false).contains("büro-Δ-노트"));
    }
}
