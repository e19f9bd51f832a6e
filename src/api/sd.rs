//! Every cell's services and metrics, found through any one cell:
//! `GET /services` (name → the alive cells that run it) and
//! `GET /sd/prometheus` (Prometheus's `http_sd_configs` format: a target
//! group per alive cell's metrics port, or per endpoint of one service).
//! Both read the snapshot; the cells' records say what they run.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde::Serialize;

use super::{AppState, Error};
use crate::mesh::{PeerState, Snapshot};
use crate::network::protocol::{Service, ServiceProtocol, ServiceStatus, METRICS_SERVICE};

/// An alive cell as these routes see it.
#[derive(Debug, Clone)]
pub struct CellView<'a> {
    pub cell_id: &'a str,
    pub peer_id: &'a str,
    pub branch: &'a str,
    pub tags: &'a BTreeMap<String, String>,
    pub services: &'a [Service],
    /// Where its services are reached (see [`service_address`]).
    pub address: Option<IpAddr>,
}

/// The address other machines reach a cell's services on, from the
/// addresses its record lists (in its order): the first IPv4 that is not
/// loopback, else the first IPv4 (loopback: cells on one machine), else
/// the first non-loopback IPv6, else the first address at all. Relayed
/// addresses (`/p2p-circuit`) are skipped: their IP is the relay's.
pub fn service_address<S: AsRef<str>>(addrs: &[S]) -> Option<IpAddr> {
    let ips: Vec<IpAddr> = addrs
        .iter()
        .filter_map(|a| a.as_ref().parse::<Multiaddr>().ok())
        .filter(|m| !m.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
        .filter_map(|m| match m.iter().next() {
            Some(Protocol::Ip4(ip)) => Some(IpAddr::V4(ip)),
            Some(Protocol::Ip6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        })
        .filter(|ip| !ip.is_unspecified())
        .collect();
    let v4 = |ip: &&IpAddr| ip.is_ipv4();
    ips.iter()
        .filter(v4)
        .find(|ip| !ip.is_loopback())
        .or_else(|| ips.iter().find(v4))
        .or_else(|| ips.iter().find(|ip| !ip.is_loopback()))
        .or(ips.first())
        .copied()
}

/// This cell and every alive cell with a record, sorted by `cell_id`.
pub fn alive_cells(snap: &Snapshot) -> Vec<CellView<'_>> {
    let own = CellView {
        cell_id: &snap.local.cell_id,
        peer_id: &snap.local.peer_id,
        branch: &snap.local.branch,
        tags: &snap.local.tags,
        services: &snap.local.services,
        address: service_address(&snap.local.listen_addrs),
    };
    let mut cells: Vec<CellView<'_>> = std::iter::once(own)
        .chain(snap.peers.iter().filter(|p| p.state == PeerState::Alive).filter_map(|p| {
            Some(CellView {
                cell_id: p.cell_id.as_deref()?,
                peer_id: &p.peer_id,
                branch: p.branch.as_deref().unwrap_or_default(),
                tags: &p.tags,
                services: &p.services,
                address: service_address(&p.record_addrs).or_else(|| service_address(&p.addresses)),
            })
        }))
        .collect();
    cells.sort_by(|a, b| a.cell_id.cmp(b.cell_id).then(a.peer_id.cmp(b.peer_id)));
    cells
}

/// `host:port`, with IPv6 in brackets.
pub fn host_port(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// A tag filter: `key=value` (that value), or `key` (any value).
#[derive(Debug, Clone, PartialEq)]
pub struct TagFilter {
    key: String,
    value: Option<String>,
}

impl TagFilter {
    pub fn parse(text: &str) -> Result<TagFilter, Error> {
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
            None => (text.trim(), None),
        };
        if key.is_empty() {
            return Err(Error::Unprocessable(format!(
                "tag filter {text:?}: expected key=value or key (e.g. ?tag=role=desktop)"
            )));
        }
        Ok(TagFilter { key: key.to_owned(), value })
    }

    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        match (tags.get(&self.key), &self.value) {
            (Some(v), Some(want)) => v == want,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn params(q: Params) -> Result<HashMap<String, String>, Error> {
    q.map(|Query(p)| p).map_err(|e| Error::BadRequest(format!("bad query string: {e}")))
}

fn tag_filter(p: &HashMap<String, String>) -> Result<Option<TagFilter>, Error> {
    p.get("tag").map(|t| TagFilter::parse(t)).transpose()
}

/// One endpoint of a service in `GET /services`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Endpoint {
    pub cell_id: String,
    pub peer_id: String,
    pub address: String,
    pub port: u16,
    pub protocol: ServiceProtocol,
    pub status: ServiceStatus,
    /// `http://address:port/` for `http` and `https` services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `GET /services`.
#[derive(Debug, Serialize)]
pub struct ServicesReply {
    pub services: BTreeMap<String, Vec<Endpoint>>,
}

/// Every service of every alive cell (this one included), by name.
pub fn services_of(cells: &[CellView<'_>]) -> BTreeMap<String, Vec<Endpoint>> {
    let mut out: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    for c in cells {
        let Some(ip) = c.address else { continue };
        for s in c.services {
            let url = match s.protocol {
                ServiceProtocol::Http | ServiceProtocol::Https => {
                    Some(format!("{}://{}/", s.protocol.as_str(), host_port(ip, s.port)))
                }
                ServiceProtocol::Tcp => None,
            };
            out.entry(s.name.clone()).or_default().push(Endpoint {
                cell_id: c.cell_id.to_owned(),
                peer_id: c.peer_id.to_owned(),
                address: ip.to_string(),
                port: s.port,
                protocol: s.protocol,
                status: s.status,
                url,
            });
        }
    }
    out
}

pub(super) async fn services(
    State(state): State<AppState>,
    q: Params,
) -> Result<Json<ServicesReply>, Error> {
    let p = params(q)?;
    let filter = tag_filter(&p)?;
    let snap = state.handle.snapshot();
    let cells: Vec<CellView<'_>> = alive_cells(&snap)
        .into_iter()
        .filter(|c| filter.as_ref().is_none_or(|f| f.matches(c.tags)))
        .collect();
    Ok(Json(ServicesReply { services: services_of(&cells) }))
}

/// One target group of Prometheus's HTTP service discovery.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// `tag_<key>` with every character outside `[a-zA-Z0-9_]` made `_`: a
/// valid Prometheus label name for any tag key.
pub fn tag_label(key: &str) -> String {
    let mut name = String::with_capacity(4 + key.len());
    name.push_str("tag_");
    name.extend(key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
    name
}

/// The target groups for `service` (the metrics port when `None`): one
/// per alive cell that announces it.
pub fn target_groups(cells: &[CellView<'_>], service: Option<&str>) -> Vec<TargetGroup> {
    let name = service.unwrap_or(METRICS_SERVICE);
    cells
        .iter()
        .filter_map(|c| {
            let s = c.services.iter().find(|s| s.name == name)?;
            let ip = c.address?;
            let mut labels = BTreeMap::new();
            // Tags first, so that the cell's own labels win over a tag that
            // sanitizes to the same name; of two tags that do, the first
            // key in order wins.
            for (k, v) in c.tags {
                labels.entry(tag_label(k)).or_insert_with(|| v.clone());
            }
            labels.insert("cell_id".into(), c.cell_id.to_owned());
            labels.insert("branch".into(), c.branch.to_owned());
            labels.insert("peer_id".into(), c.peer_id.to_owned());
            if service.is_some() {
                labels.insert("service".into(), name.to_owned());
            }
            Some(TargetGroup { targets: vec![host_port(ip, s.port)], labels })
        })
        .collect()
}

pub(super) async fn prometheus(
    State(state): State<AppState>,
    q: Params,
) -> Result<Json<Vec<TargetGroup>>, Error> {
    let p = params(q)?;
    let filter = tag_filter(&p)?;
    let snap = state.handle.snapshot();
    let cells: Vec<CellView<'_>> = alive_cells(&snap)
        .into_iter()
        .filter(|c| filter.as_ref().is_none_or(|f| f.matches(c.tags)))
        .collect();
    Ok(Json(target_groups(&cells, p.get("service").map(String::as_str))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_the_first_lan_ipv4_of_the_record() {
        let addr = |a: &[&str]| service_address(a).map(|ip| ip.to_string());
        assert_eq!(
            addr(&[
                "/ip4/127.0.0.1/tcp/8001",
                "/ip6/fe80::1/tcp/8001",
                "/ip4/10.0.0.2/tcp/8001",
                "/ip4/192.168.1.5/tcp/8001",
            ]),
            Some("10.0.0.2".into())
        );
        assert_eq!(addr(&["/ip6/::1/tcp/1", "/ip4/127.0.0.1/tcp/8001"]), Some("127.0.0.1".into()));
        assert_eq!(addr(&["/ip6/::1/tcp/1", "/ip6/fd00::2/tcp/1"]), Some("fd00::2".into()));
        assert_eq!(addr(&["/ip6/::1/tcp/1"]), Some("::1".into()));
        // A relayed address names the relay's IP: never the cell's.
        let relayed = "/ip4/10.9.9.9/tcp/8001/p2p/12D3KooWSVJWDfcSrPNXkrkYzCCRBDGg41a4zzPPXuAAVEyYibt5/p2p-circuit";
        assert_eq!(addr(&[relayed, "/ip4/127.0.0.1/tcp/1"]), Some("127.0.0.1".into()));
        assert_eq!(addr(&["/dns4/x.local/tcp/1", "garbage"]), None);
        assert_eq!(host_port("fd00::2".parse().unwrap(), 9091), "[fd00::2]:9091");
    }

    fn svc(name: &str, port: u16, protocol: ServiceProtocol) -> Service {
        Service { name: name.into(), port, protocol, status: ServiceStatus::Up }
    }

    #[test]
    fn target_groups_carry_the_cells_labels_and_sanitized_tags() {
        let tags = BTreeMap::from([
            ("role".to_owned(), "desktop".to_owned()),
            ("gpu.vendor".to_owned(), "amd".to_owned()),
            ("gpu-vendor".to_owned(), "nvidia".to_owned()),
        ]);
        let services = vec![
            svc(METRICS_SERVICE, 9091, ServiceProtocol::Http),
            svc("node", 9100, ServiceProtocol::Tcp),
        ];
        let cells = vec![
            CellView {
                cell_id: "desktop",
                peer_id: "12D3a",
                branch: "main",
                tags: &tags,
                services: &services,
                address: Some("10.0.0.2".parse().unwrap()),
            },
            CellView {
                cell_id: "no-address",
                peer_id: "12D3b",
                branch: "main",
                tags: &tags,
                services: &services,
                address: None,
            },
        ];
        let groups = target_groups(&cells, None);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].targets, vec!["10.0.0.2:9091"]);
        let labels: Vec<(&str, &str)> =
            groups[0].labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            labels,
            vec![
                ("branch", "main"),
                ("cell_id", "desktop"),
                ("peer_id", "12D3a"),
                ("tag_gpu_vendor", "nvidia"),
                ("tag_role", "desktop"),
            ]
        );
        let node = target_groups(&cells, Some("node"));
        assert_eq!(node[0].targets, vec!["10.0.0.2:9100"]);
        assert_eq!(node[0].labels["service"], "node");
        assert!(target_groups(&cells, Some("nope")).is_empty());
        assert_eq!(tag_label("a b/ü"), "tag_a_b__");
    }

    #[test]
    fn services_list_endpoints_with_urls_for_web_ones() {
        let tags = BTreeMap::new();
        let services = vec![
            svc("grafana", 3000, ServiceProtocol::Http),
            svc("vault", 8200, ServiceProtocol::Https),
            svc("ssh", 22, ServiceProtocol::Tcp),
        ];
        let cells = vec![CellView {
            cell_id: "a",
            peer_id: "p",
            branch: "main",
            tags: &tags,
            services: &services,
            address: Some("10.0.0.2".parse().unwrap()),
        }];
        let out = services_of(&cells);
        assert_eq!(out["grafana"][0].url.as_deref(), Some("http://10.0.0.2:3000/"));
        assert_eq!(out["vault"][0].url.as_deref(), Some("https://10.0.0.2:8200/"));
        assert_eq!(out["ssh"][0].url, None);
        let f = TagFilter::parse("role=desktop").unwrap();
        assert!(!f.matches(&tags));
        assert!(f.matches(&BTreeMap::from([("role".into(), "desktop".into())])));
        assert!(TagFilter::parse("role")
            .unwrap()
            .matches(&BTreeMap::from([("role".into(), "x".into())])));
        assert!(TagFilter::parse("=x").is_err());
    }
}
