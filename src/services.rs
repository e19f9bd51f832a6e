//! Tags and services a cell announces in its record, and the checker that
//! watches its own services.
//!
//! `AIOS_TAGS=role=desktop,gpu=true` and `AIOS_SERVICES=grafana=3000/http,
//! node=9100` (or `[tags]` / `[services]` in the config file) are parsed and
//! bounded here at start; the record carries them (docs/protocol.md). The
//! metrics port is always a service, named `metrics`. Every
//! `[tuning] service_check_interval_ms` the checker connects to each
//! service on this machine (a `GET /` for `http`) and tells the node only
//! when a status changed; the node then publishes its record with a new
//! `seq`, so every cell sees the change.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::network::protocol::{
    validate_service, validate_tag, CellRecord, Service, ServiceProtocol, ServiceStatus,
    MAX_RECORD_BYTES, MAX_SERVICES, MAX_TAGS, METRICS_SERVICE,
};
use crate::network::Handle;

/// A service as configured: what the record announces, less its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub port: u16,
    pub protocol: ServiceProtocol,
}

impl std::fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.as_str())
    }
}

/// Listen addresses the start-up size check keeps room for.
pub const ADDRESS_ROOM: usize = 8;
/// The longest ordinary listen address, as the size check counts it.
const LONGEST_ADDR: &str = "/ip6/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/udp/65535/quic-v1";

/// Parses `key=value,key=value` (`AIOS_TAGS`). Blank entries are skipped;
/// an entry without `=`, or a tag out of bounds, is an error naming it.
pub fn parse_tags(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut tags = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let named = |why: String| format!("tag {:?}: {why}", escape(entry));
        let (key, value) =
            entry.split_once('=').ok_or_else(|| named("expected key=value".into()))?;
        let (key, value) = (key.trim(), value.trim());
        validate_tag(key, value).map_err(|e| named(e.to_string()))?;
        if tags.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(named(format!("the key {key:?} is given twice")));
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(format!("{} tags, at most {MAX_TAGS}", tags.len()));
    }
    Ok(tags)
}

/// Parses `port[/protocol]` for the service `name` (protocol `tcp` when
/// left out).
pub fn parse_service(name: &str, value: &str) -> Result<ServiceSpec, String> {
    let named = |why: String| format!("service {:?}: {why}", escape(&format!("{name}={value}")));
    let (port, protocol) = match value.trim().split_once('/') {
        Some((p, proto)) => (p, proto.parse::<ServiceProtocol>().map_err(named)?),
        None => (value.trim(), ServiceProtocol::Tcp),
    };
    let port: u16 = port
        .trim()
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| named(format!("the port must be 1-65535, got {:?}", escape(port))))?;
    let name = name.trim();
    validate_service(name, port).map_err(|e| named(e.to_string()))?;
    if name == METRICS_SERVICE {
        return Err(named(format!(
            "the name {METRICS_SERVICE:?} is taken by the cell's own metrics port"
        )));
    }
    Ok(ServiceSpec { name: name.to_owned(), port, protocol })
}

/// Parses `name=port[/protocol],…` (`AIOS_SERVICES`).
pub fn parse_services(text: &str) -> Result<Vec<ServiceSpec>, String> {
    let specs = text
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((name, value)) => parse_service(name, value),
            None => Err(format!("service {:?}: expected name=port[/protocol]", escape(entry))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_services(&specs)?;
    Ok(specs)
}

/// No name twice, and room for the metrics service.
pub fn check_services(specs: &[ServiceSpec]) -> Result<(), String> {
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.name == s.name) {
            return Err(format!("service {:?} is given twice", escape(&s.name)));
        }
    }
    if specs.len() + 1 > MAX_SERVICES {
        return Err(format!(
            "{} services, at most {} (the metrics port is one more)",
            specs.len(),
            MAX_SERVICES - 1
        ));
    }
    Ok(())
}

fn escape(s: &str) -> String {
    crate::network::protocol::escape_text(s).into_owned()
}

/// What the cell's record announces: its tags, and its services with the
/// metrics port first, every status unknown until the first check.
pub fn announced(config: &Config) -> (BTreeMap<String, String>, Vec<Service>) {
    let services = std::iter::once(ServiceSpec {
        name: METRICS_SERVICE.into(),
        port: config.metrics_addr.port(),
        protocol: ServiceProtocol::Http,
    })
    .chain(config.services.iter().cloned())
    .map(|s| Service {
        name: s.name,
        port: s.port,
        protocol: s.protocol,
        status: ServiceStatus::Unknown,
    })
    .collect();
    (config.tags.clone(), services)
}

/// The size of the largest record a cell with these settings could sign:
/// the longest values of every field it does not choose (`seq`, time, a
/// metrics port of five digits) and [`ADDRESS_ROOM`] listen addresses of
/// the longest ordinary form.
pub fn worst_case_record_bytes(
    cell_id: &str,
    branch: &str,
    tags: &BTreeMap<String, String>,
    services: &[ServiceSpec],
) -> usize {
    let key = libp2p::identity::Keypair::generate_ed25519();
    let services = std::iter::once((METRICS_SERVICE, u16::MAX, ServiceProtocol::Https))
        .chain(services.iter().map(|s| (s.name.as_str(), s.port, s.protocol)))
        .map(|(name, port, protocol)| Service {
            name: name.to_owned(),
            port,
            protocol,
            status: ServiceStatus::Unknown,
        })
        .collect();
    let record = CellRecord {
        cell_id: cell_id.to_owned(),
        level: f64::MAX,
        branch: branch.to_owned(),
        seq: u64::MAX,
        at_ms: u64::MAX,
        addrs: vec![LONGEST_ADDR.to_owned(); ADDRESS_ROOM],
        agent: crate::network::behaviour::agent_version(),
        leaving: true,
        tags: tags.clone(),
        services,
        envelope: None,
    };
    match record.clone().signed(&key) {
        Ok(signed) => signed.to_cbor().len(),
        // Signing with a fresh ed25519 key does not fail; count the
        // payload twice (the fields and the envelope's copy) if it did.
        Err(_) => 2 * record.to_cbor().len() + 256,
    }
}

/// Refuses settings whose record could exceed [`MAX_RECORD_BYTES`]
/// (other cells would refuse it), saying what to shorten.
pub fn check_record_size(
    cell_id: &str,
    branch: &str,
    tags: &BTreeMap<String, String>,
    services: &[ServiceSpec],
) -> Result<(), String> {
    let bytes = worst_case_record_bytes(cell_id, branch, tags, services);
    if bytes > MAX_RECORD_BYTES {
        return Err(format!(
            "the cell's record could reach {bytes} bytes with these tags and services, and \
             records are at most {MAX_RECORD_BYTES} bytes (the signature carries a second \
             copy of every field, and {ADDRESS_ROOM} listen addresses need room): shorten or \
             drop tags (AIOS_TAGS / [tags]) or services (AIOS_SERVICES / [services])"
        ));
    }
    Ok(())
}

/// Where the checker looks for one service: this machine.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    pub protocol: ServiceProtocol,
}

/// The services to check: the metrics port where it is bound (loopback
/// when bound to every interface), and every configured service on
/// 127.0.0.1.
pub fn targets(config: &Config) -> Vec<Target> {
    let metrics_ip = match config.metrics_addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::iter::once(Target {
        name: METRICS_SERVICE.into(),
        addr: SocketAddr::new(metrics_ip, config.metrics_addr.port()),
        protocol: ServiceProtocol::Http,
    })
    .chain(config.services.iter().map(|s| Target {
        name: s.name.clone(),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), s.port),
        protocol: s.protocol,
    }))
    .collect()
}

/// The checker's decision: the statuses to send to the node when `found`
/// differs from what it was last told (`told`), or nothing.
pub fn to_tell(
    told: &[(String, ServiceStatus)],
    found: &[(String, ServiceStatus)],
) -> Option<Vec<(String, ServiceStatus)>> {
    (told != found).then(|| found.to_vec())
}

/// Checks one service: a TCP connect within `timeout`; for `http`, also
/// `GET /` answered by any HTTP status line. `https` is checked by the
/// connect alone (no TLS here).
pub async fn check(
    addr: SocketAddr,
    protocol: ServiceProtocol,
    timeout: Duration,
) -> ServiceStatus {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        if protocol != ServiceProtocol::Http {
            return Ok::<bool, std::io::Error>(true);
        }
        let request = format!(
            "GET / HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: {}\r\nConnection: close\r\n\r\n",
            crate::network::behaviour::agent_version()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).await?;
        Ok(&head == b"HTTP/")
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(true)) => ServiceStatus::Up,
        _ => ServiceStatus::Down,
    }
}

/// Checks every target at once, in their order.
pub async fn check_all(targets: &[Target], timeout: Duration) -> Vec<(String, ServiceStatus)> {
    let checks = targets.iter().map(|t| async move {
        let status = check(t.addr, t.protocol, timeout).await;
        (t.name.clone(), status)
    });
    futures::future::join_all(checks).await
}

/// Checks the services every `period` until `shutdown`, telling the node
/// when a status changed.
pub async fn run(
    handle: Handle,
    targets: Vec<Target>,
    period: Duration,
    shutdown: CancellationToken,
) {
    let timeout = period.min(Duration::from_secs(1));
    let mut told: Vec<(String, ServiceStatus)> =
        targets.iter().map(|t| (t.name.clone(), ServiceStatus::Unknown)).collect();
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let found = tokio::select! {
            _ = shutdown.cancelled() => return,
            found = check_all(&targets, timeout) => found,
        };
        let Some(statuses) = to_tell(&told, &found) else { continue };
        for ((name, new), (_, old)) in statuses.iter().zip(&told) {
            if new != old {
                tracing::info!(
                    service = name,
                    from = old.as_str(),
                    to = new.as_str(),
                    "service status changed"
                );
            }
        }
        match handle.service_status(statuses) {
            Ok(()) => told = found,
            // Busy: the next round sends again. Stopped: the cell is ending.
            Err(crate::network::CommandError::Stopped) => return,
            Err(e) => tracing::debug!(error = %e, "cannot tell the node about services yet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_and_bad_ones_are_named() {
        let tags = parse_tags(" role=desktop, gpu=true,,note=a=b ").unwrap();
        assert_eq!(tags["role"], "desktop");
        assert_eq!(tags["gpu"], "true");
        assert_eq!(tags["note"], "a=b");
        assert_eq!(parse_tags("").unwrap().len(), 0);
        for (bad, named) in [
            ("role=desktop,gpu", "\"gpu\""),
            ("=x", "\"=x\""),
            ("a=1,a=2", "\"a=2\""),
            ("k\u{1b}[2J=1", "U+001B"),
        ] {
            let e = parse_tags(bad).unwrap_err();
            assert!(e.contains(named), "{bad:?}: {e}");
        }
        let long = format!("k={}", "v".repeat(257));
        assert!(parse_tags(&long).unwrap_err().contains("256"));
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(parse_tags(&many.join(",")).unwrap_err().contains("33 tags"));
    }

    #[test]
    fn services_parse_and_bad_ones_are_named() {
        let s = parse_services("grafana=3000/http, node=9100,vault=8200/HTTPS").unwrap();
        assert_eq!(
            s,
            vec![
                ServiceSpec { name: "grafana".into(), port: 3000, protocol: ServiceProtocol::Http },
                ServiceSpec { name: "node".into(), port: 9100, protocol: ServiceProtocol::Tcp },
                ServiceSpec { name: "vault".into(), port: 8200, protocol: ServiceProtocol::Https },
            ]
        );
        for (bad, named) in [
            ("grafana", "\"grafana\""),
            ("grafana=0", "1-65535"),
            ("grafana=70000", "\"70000\""),
            ("grafana=x", "\"x\""),
            ("grafana=3000/ftp", "ftp"),
            ("metrics=9100", "metrics"),
            ("a=1,a=2", "twice"),
            ("=1", "service name"),
        ] {
            let e = parse_services(bad).unwrap_err();
            assert!(e.contains(named), "{bad:?}: {e}");
        }
        let many: Vec<String> = (0..16).map(|i| format!("s{i}={}", i + 1)).collect();
        assert!(parse_services(&many.join(",")).unwrap_err().contains("at most 15"));
    }

    #[test]
    fn a_record_that_could_outgrow_its_bound_is_refused_at_start() {
        let none = BTreeMap::new();
        assert!(check_record_size("c", "main", &none, &[]).is_ok());
        // Every bound at its limit cannot fit: the size check names the cure.
        let huge: BTreeMap<String, String> =
            (0..32).map(|i| (format!("{i:0>64}"), "v".repeat(256))).collect();
        let e = check_record_size("c", "main", &huge, &[]).unwrap_err();
        assert!(e.contains("AIOS_TAGS") && e.contains("4096"), "{e}");
        // Ordinary use fits: 32 short tags and 15 services on a cell named as usual.
        let tags: BTreeMap<String, String> =
            (0..32).map(|i| (format!("tag{i}"), format!("value{i}"))).collect();
        let services: Vec<ServiceSpec> = (0..15)
            .map(|i| ServiceSpec {
                name: format!("service-{i}"),
                port: 10000 + i,
                protocol: ServiceProtocol::Http,
            })
            .collect();
        // (3973 bytes; with a 128-character cell_id and branch it would not fit.)
        let bytes = worst_case_record_bytes("desktop", "main", &tags, &services);
        assert!(bytes <= MAX_RECORD_BYTES, "{bytes}");
    }

    #[test]
    fn the_checker_tells_the_node_only_of_changes() {
        let s = |v: &[(&str, ServiceStatus)]| -> Vec<(String, ServiceStatus)> {
            v.iter().map(|(n, st)| ((*n).to_owned(), *st)).collect()
        };
        use ServiceStatus::{Down, Unknown, Up};
        let told = s(&[("metrics", Unknown), ("web", Unknown)]);
        let first = s(&[("metrics", Up), ("web", Down)]);
        assert_eq!(to_tell(&told, &first), Some(first.clone()));
        assert_eq!(to_tell(&first, &first), None);
        let web_up = s(&[("metrics", Up), ("web", Up)]);
        assert_eq!(to_tell(&first, &web_up), Some(web_up.clone()));
    }

    #[tokio::test]
    async fn a_service_is_up_while_it_listens_and_down_after() {
        let t = Duration::from_secs(2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(check(addr, ServiceProtocol::Tcp, t).await, ServiceStatus::Up);
        let _ = listener.accept().await.unwrap();
        // An HTTP service answers with a status line; any status is up.
        let http = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.0 404 Not Found\r\n\r\n").await.unwrap();
            listener
        });
        assert_eq!(check(addr, ServiceProtocol::Http, t).await, ServiceStatus::Up);
        let listener = http.await.unwrap();
        // Something that is not HTTP: down for `http`.
        let silent = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"SSH-2.0-OpenSSH\r\n").await.unwrap();
            listener
        });
        assert_eq!(check(addr, ServiceProtocol::Http, t).await, ServiceStatus::Down);
        drop(silent.await.unwrap());
        assert_eq!(check(addr, ServiceProtocol::Tcp, t).await, ServiceStatus::Down);
    }
}
