//! One prometheus-client registry for libp2p's own metrics and ours, served
//! on `GET /metrics` as OpenMetrics text, or as the Prometheus text format
//! 0.0.4 to a client that prefers it (`Accept`, as client_golang decides).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::mesh::{PeerState, Snapshot};
use crate::network::probe::{Outcome, Purpose};

/// OpenMetrics content type, as Prometheus asks for it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format 0.0.4, for scrapers that do not speak
/// OpenMetrics.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CellLabel {
    pub cell_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub cell_id: String,
    pub branch: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// Why gossip messages are rejected (`aios_gossip_messages_rejected_total`).
pub const REJECT_REASONS: [&str; 4] = ["invalid", "unsigned", "cell_id_taken", "forged"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistrationLabels {
    /// `hello` (the exchange with a newly connected cell, and `POST
    /// /register`'s) or `sync` (anti-entropy).
    pub kind: &'static str,
    /// `inbound` (a peer asked us) or `outbound` (we asked a peer).
    pub direction: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Why a probe was sent and what came of it (see `network::probe`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// `watch` (the ring successor), `verify` (a suspect), `revive` (a
    /// cell failed for its silence).
    pub purpose: &'static str,
    /// `answered`, `silent`, `unsupported`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

/// Our own metrics. Cloning shares the underlying counters.
#[derive(Clone, Debug)]
pub struct CellMetrics {
    pub level: Family<CellLabel, Gauge<f64, AtomicU64>>,
    pub info: Family<InfoLabels, Gauge>,
    pub peers: Family<StateLabel, Gauge>,
    pub connected_peers: Gauge,
    pub gossip_sent: Counter,
    pub gossip_received: Counter,
    /// Records of other cells learned in an exchange and passed on by gossip.
    pub records_relayed: Counter,
    pub gossip_rejected: Family<ReasonLabel, Counter>,
    /// Records refused because their author's signature does not hold.
    pub records_refused: Family<ReasonLabel, Counter>,
    pub registrations: Family<RegistrationLabels, Counter>,
    pub probes: Family<ProbeLabels, Counter>,
    pub suspects_sent: Counter,
    pub beats_received: Counter,
    /// UDP datagrams the beat task dropped, by `reason`: `length` (not a
    /// beat's size or version), `unknown_subscription`, `bad_mac`, `replayed`
    /// (a counter not above the last one).
    pub beats_dropped: Family<ReasonLabel, Counter>,
    pub view_syncs: Counter,
    /// Local health (Lifeguard's awareness, memberlist's health score):
    /// 0 healthy, up to 4; probe timeouts are stretched by (1 + score).
    pub health_score: Gauge,
    pub dropped_notifications: Counter,
    pub rejected_commands: Counter,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpRouteLabels, Histogram>,
}

impl CellMetrics {
    /// Creates our metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = CellMetrics {
            level: Family::default(),
            info: Family::default(),
            peers: Family::default(),
            connected_peers: Gauge::default(),
            gossip_sent: Counter::default(),
            gossip_received: Counter::default(),
            records_relayed: Counter::default(),
            gossip_rejected: Family::default(),
            records_refused: Family::default(),
            registrations: Family::default(),
            probes: Family::default(),
            suspects_sent: Counter::default(),
            beats_received: Counter::default(),
            beats_dropped: Family::default(),
            view_syncs: Counter::default(),
            health_score: Gauge::default(),
            dropped_notifications: Counter::default(),
            rejected_commands: Counter::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 4.0, 10))
            }),
        };
        registry.register(
            "aios_consciousness_level",
            "Consciousness level of every known cell (this one included)",
            m.level.clone(),
        );
        registry.register(
            "aios_local_health_score",
            "This cell's local health: 0 healthy, up to 4 when its own loop runs late or many cells fall silent at once (probe timeouts are stretched by 1 + score)",
            m.health_score.clone(),
        );
        registry.register("aios_cell_info", "This cell's id, branch and version", m.info.clone());
        registry.register("aios_peers", "Known cells by state", m.peers.clone());
        registry.register(
            "aios_connected_peers",
            "Cells with an open connection",
            m.connected_peers.clone(),
        );
        registry.register(
            "aios_gossip_messages_sent",
            "Records this cell published",
            m.gossip_sent.clone(),
        );
        registry.register(
            "aios_gossip_messages_received",
            "Valid records received by gossip",
            m.gossip_received.clone(),
        );
        registry.register(
            "aios_records_relayed",
            "Records of cells new to this cell, learned in a record exchange while it held others' records (two parts of the mesh meeting), passed on by gossip (aios/relay/1)",
            m.records_relayed.clone(),
        );
        registry.register(
            "aios_gossip_messages_rejected",
            "Gossip messages refused, by reason",
            m.gossip_rejected.clone(),
        );
        registry.register(
            "aios_records_refused",
            "Records refused in gossip or a record exchange because their author's signature does not hold, by reason (unsigned, forged, altered, invalid)",
            m.records_refused.clone(),
        );
        registry.register(
            "aios_registrations",
            "Record exchanges on /aios/register/1.0.0, by kind (hello, sync), direction and outcome",
            m.registrations.clone(),
        );
        registry.register(
            "aios_probes",
            "Liveness probes on /aios/probe/1.0.0, by purpose and outcome",
            m.probes.clone(),
        );
        registry.register(
            "aios_suspects_sent",
            "Cells this cell's watch probe found silent (each sent a suspect notice to every cell)",
            m.suspects_sent.clone(),
        );
        registry.register(
            "aios_beats_received",
            "Valid UDP beats received from the watched cell (its heartbeat, one per probe interval)",
            m.beats_received.clone(),
        );
        registry.register(
            "aios_beats_dropped",
            "UDP datagrams at the beat port dropped: wrong length, unknown subscription, bad MAC, replayed",
            m.beats_dropped.clone(),
        );
        registry.register(
            "aios_view_syncs",
            "Record exchanges started because the watched cell's beats showed a different view",
            m.view_syncs.clone(),
        );
        registry.register(
            "aios_dropped_notifications",
            "Notifications the node dropped rather than wait for a slow reader",
            m.dropped_notifications.clone(),
        );
        registry.register(
            "aios_rejected_commands",
            "Actions refused with 503 because the node's command queue was full",
            m.rejected_commands.clone(),
        );
        registry.register(
            "aios_http_requests",
            "HTTP requests by method, matched route and status",
            m.http_requests.clone(),
        );
        registry.register_with_unit(
            "aios_http_request_duration",
            "HTTP request latency by method and matched route",
            prometheus_client::registry::Unit::Seconds,
            m.http_duration.clone(),
        );
        // Export every known reason from the start, at 0, so dashboards
        // show 0 rather than "no data".
        for reason in crate::network::protocol::SignatureError::REASONS {
            m.records_refused.get_or_create(&ReasonLabel { reason }).inc_by(0);
        }
        for reason in REJECT_REASONS {
            m.gossip_rejected.get_or_create(&ReasonLabel { reason }).inc_by(0);
        }
        for purpose in Purpose::ALL {
            for outcome in Outcome::NAMES {
                let labels = ProbeLabels { purpose: purpose.as_str(), outcome };
                m.probes.get_or_create(&labels).inc_by(0);
            }
        }
        m
    }

    /// Brings the gauges in line with a new snapshot.
    pub fn observe(&self, snap: &Snapshot) {
        self.observe_levels(snap);
        self.observe_counts(snap);
    }

    /// The level gauge, one series per live cell (rebuilt: a cell gone
    /// loses its series).
    pub fn observe_levels(&self, snap: &Snapshot) {
        self.level.clear();
        self.level
            .get_or_create(&CellLabel { cell_id: snap.local.cell_id.clone() })
            .set(snap.local.consciousness_level);
        for p in snap.peers.iter().filter(|p| p.state == PeerState::Alive) {
            if let (Some(id), Some(level)) = (&p.cell_id, p.consciousness_level) {
                self.level.get_or_create(&CellLabel { cell_id: id.clone() }).set(level);
            }
        }
    }

    /// The gauges of cells by state and of connections.
    pub fn observe_counts(&self, snap: &Snapshot) {
        for s in PeerState::ALL {
            self.peers.get_or_create(&StateLabel { state: s.as_str() }).set(snap.count(s) as i64);
        }
        self.connected_peers.set(snap.connected() as i64);
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Axum middleware: counts requests and times them, labelled by the matched
/// route (`unmatched` for 404s, so the label set stays bounded).
pub async fn track_http(State(m): State<CellMetrics>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    // The API's routes as static labels: no allocation per request.
    let route = match req.extensions().get::<MatchedPath>().map(MatchedPath::as_str) {
        Some("/health") => "/health",
        Some("/peers") => "/peers",
        Some("/events") => "/events",
        Some("/services") => "/services",
        Some("/sd/prometheus") => "/sd/prometheus",
        Some("/register") => "/register",
        Some("/sync-consciousness") => "/sync-consciousness",
        Some("/metrics") => "/metrics",
        _ => "unmatched",
    };
    let resp = next.run(req).await;
    m.http_requests
        .get_or_create(&HttpLabels { method, route, status: resp.status().as_u16() })
        .inc();
    m.http_duration
        .get_or_create(&HttpRouteLabels { method, route })
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// The metrics server's router: `GET /metrics`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new().route("/metrics", get(serve)).with_state(registry)
}

/// Whether a client with this `Accept` header gets the text format 0.0.4
/// rather than OpenMetrics. As client_golang negotiates: the media types
/// in order of preference (`q`, the order given on a tie), and the first
/// that is `application/openmetrics-text` or `text/plain` decides. A client
/// that names neither (no header, `*/*`) gets OpenMetrics, as before.
pub fn wants_text(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let mut ranges: Vec<(f32, usize, String)> = accept
        .split(',')
        .enumerate()
        .filter_map(|(i, range)| {
            let mut parts = range.split(';');
            let media = parts.next()?.trim().to_ascii_lowercase();
            let mut q = 1.0f32;
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = v.trim().parse().unwrap_or(0.0);
                    }
                }
            }
            (q > 0.0).then_some((q, i, media))
        })
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranges
        .iter()
        .find_map(|(_, _, media)| match media.as_str() {
            "application/openmetrics-text" => Some(false),
            "text/plain" => Some(true),
            _ => None,
        })
        .unwrap_or(false)
}

/// Rewrites prometheus-client's OpenMetrics text as the text format 0.0.4
/// (prometheus-client encodes OpenMetrics only). The samples are the same;
/// what differs is the metadata: a counter's `# HELP`/`# TYPE` name its
/// samples' `_total` name, an info family is a gauge named `_info`,
/// `unknown` is `untyped`, and `# UNIT`, exemplars and `# EOF` go.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // Written after its TYPE, which may rename the family.
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" => (name.to_owned(), "gauge"),
                "gaugehistogram" | "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            if let Some((_, text)) = help.take() {
                let text = text.replace("\\\"", "\"");
                let _ = writeln_str(&mut out, &format!("# HELP {name} {text}"));
            }
            let _ = writeln_str(&mut out, &format!("# TYPE {name} {kind}"));
            continue;
        }
        let _ = writeln_str(&mut out, without_exemplar(line));
    }
    out
}

/// A sample line without its exemplar (` # {labels} value`): the first
/// ` # ` outside a quoted label value.
fn without_exemplar(line: &str) -> &str {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted && line[i..].starts_with(" # ") => return &line[..i],
            _ => {}
        }
    }
    line
}

fn writeln_str(out: &mut String, line: &str) -> std::fmt::Result {
    out.push_str(line);
    out.push('\n');
    Ok(())
}

async fn serve(State(registry): State<Arc<Registry>>, headers: axum::http::HeaderMap) -> Response {
    let mut body = String::with_capacity(16 * 1024);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) if wants_text(accept) => {
            ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], to_text_format(&body)).into_response()
        }
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_clients_preference() {
        // Prometheus 2.x and 3.x scrape headers.
        assert!(!wants_text(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_text(Some(
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )));
        // A scraper of the text format only (older Prometheus, Telegraf, Datadog).
        assert!(wants_text(Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")));
        assert!(wants_text(Some("text/plain")));
        assert!(wants_text(Some(
            "application/openmetrics-text;q=0.2, text/plain;version=0.0.4;q=0.5"
        )));
        // Refused by q=0.
        assert!(wants_text(Some("application/openmetrics-text;q=0, text/plain")));
        // Neither named: OpenMetrics, as before.
        for accept in [None, Some("*/*"), Some("application/json"), Some("")] {
            assert!(!wants_text(accept), "{accept:?}");
        }
    }

    #[test]
    fn openmetrics_becomes_the_text_format() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{m=\"GET\"} 3\n\
                  # HELP a_lat_seconds Latency.\n# TYPE a_lat_seconds histogram\n# UNIT a_lat_seconds seconds\n\
                  a_lat_seconds_sum 0.5\na_lat_seconds_count 2\n\
                  a_lat_seconds_bucket{le=\"+Inf\"} 2 # {trace=\"x\"} 0.3 1\n\
                  # HELP a_build Build.\n# TYPE a_build info\na_build_info{v=\"1\"} 1\n\
                  # HELP a_level Level.\n# TYPE a_level gauge\na_level{c=\"x # \\\" # y\"} 0.5\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{m=\"GET\"} 3\n\
             # HELP a_lat_seconds Latency.\n# TYPE a_lat_seconds histogram\n\
             a_lat_seconds_sum 0.5\na_lat_seconds_count 2\na_lat_seconds_bucket{le=\"+Inf\"} 2\n\
             # HELP a_build_info Build.\n# TYPE a_build_info gauge\na_build_info{v=\"1\"} 1\n\
             # HELP a_level Level.\n# TYPE a_level gauge\na_level{c=\"x # \\\" # y\"} 0.5\n"
        );
    }
}
