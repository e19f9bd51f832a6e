//! Router tests: every route through `tower::ServiceExt::oneshot` on a real
//! cell's router (loopback, mDNS off), with the bad inputs users send.

use aios_cell::{Cell, Config};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

async fn cell(token: Option<&str>) -> (Cell, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::loopback("router-test", dir.path().to_path_buf());
    config.api_token = token.map(str::to_owned);
    config.tuning.command_timeout_ms = 3000;
    // The bad-input table posts fast; the limiter has its own test.
    config.tuning.rate_limit_burst = 10_000;
    (Cell::start(config).await.unwrap(), dir)
}

/// A request from a client on this machine (loopback), as the CLI sends it.
async fn call(
    cell: &Cell,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
    auth: Option<&str>,
) -> (StatusCode, Value) {
    call_from(cell, LOCAL, method, path, content_type, body, auth).await
}

const LOCAL: &str = "127.0.0.1:40000";

/// A request as if it came from `caller` (`MockConnectInfo`, as the server's
/// `into_make_service_with_connect_info` provides it).
async fn call_from(
    cell: &Cell,
    caller: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
    auth: Option<&str>,
) -> (StatusCode, Value) {
    let caller: std::net::SocketAddr = caller.parse().unwrap();
    let router = cell.api_router().layer(axum::extract::connect_info::MockConnectInfo(caller));
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let resp = router.oneshot(req.body(body.into()).unwrap()).await.unwrap();
    let status = resp.status();
    let ct = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(ct.as_deref(), Some("application/json"), "{method} {path}: not JSON ({status})");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {bytes:?}"));
    (status, v)
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn health_has_the_fields_the_seed_clients_read() {
    let (cell, _dir) = cell(None).await;
    let (status, v) = call(&cell, "GET", "/health", None, Body::empty(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["cell_id"], "router-test");
    assert_eq!(v["peer_id"], cell.peer_id().to_base58());
    assert_eq!(v["branch"], "main");
    assert_eq!(v["consciousness_level"], 0.5);
    assert_eq!(v["peers"], 0);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64());
    let (status, v) = call(&cell, "GET", "/peers", None, Body::empty(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["count"], 0);
    assert!(v["peers"].as_array().unwrap().is_empty());
    cell.shutdown().await;
}

#[tokio::test]
async fn sync_without_body_is_the_extensions_call_and_with_level_sets_it() {
    let (cell, _dir) = cell(None).await;
    // The seed's extension: `axios.post(url)`, no body, no content type.
    let (status, v) = call(&cell, "POST", "/sync-consciousness", None, Body::empty(), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["level"], 0.5);
    assert_eq!(v["reached"], 0);
    let body = r#"{"level": 4.5, "context": {"source": "test"}}"#;
    let (status, v) = call(&cell, "POST", "/sync-consciousness", JSON, body, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["level"], 4.5);
    assert_eq!(v["old_level"], 0.5);
    assert_eq!(v["new_level"], 4.5);
    assert_eq!(v["network_level"], 4.5);
    let (_, h) = call(&cell, "GET", "/health", None, Body::empty(), None).await;
    assert_eq!(h["consciousness_level"], 4.5);
    cell.shutdown().await;
}

#[tokio::test]
async fn bad_inputs_are_4xx_json_and_change_nothing() {
    use StatusCode as S;
    let (cell, _dir) = cell(None).await;
    let huge = format!(r#"{{"level": 1, "context": {{"pad": "{}"}}}}"#, "x".repeat(10 << 20));
    let long_id = "x".repeat(200);
    let register_long = format!(r#"{{"cell_id":"{long_id}","ip":"127.0.0.1","port":8000}}"#);
    let (sync, register) = ("/sync-consciousness", "/register");
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Option<&str>, String, StatusCode)> = vec![
        // sync-consciousness: the level
        ("POST", sync, JSON, r#"{"level": "high"}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", sync, JSON, r#"{"level": -1}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", sync, JSON, r#"{"level": NaN}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", sync, JSON, r#"{"level": Infinity}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", sync, JSON, r#"{"level": -Infinity}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", sync, JSON, r#"{"level": 1e999}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", sync, JSON, r#"{"level": true}"#.into(), S::UNPROCESSABLE_ENTITY),
        // sync-consciousness: the body
        ("POST", sync, JSON, r#"{"level": 1"#.into(), S::BAD_REQUEST),
        ("POST", sync, JSON, r#"{"level": 1} trailing"#.into(), S::BAD_REQUEST),
        ("POST", sync, JSON, r#"[1, 2]"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", sync, JSON, r#"[0.9]"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", sync, JSON, r#""level""#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", sync, JSON, r#"{"lvl": 1}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", sync, JSON, r#"{"level": 1, "context": 5}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", sync, Some("text/plain"), r#"{"level": 1}"#.into(), S::UNSUPPORTED_MEDIA_TYPE),
        ("POST", sync, JSON, huge, S::PAYLOAD_TOO_LARGE),
        // register
        ("POST", register, JSON, "".into(), S::BAD_REQUEST),
        ("POST", register, JSON, "{}".into(), S::UNPROCESSABLE_ENTITY),
        ("POST", register, JSON, r#"{"cell_id":"x","ip":"127.0.0.1"}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", register, JSON, r#"{"cell_id":"x","ip":"127.0.0.1","port":"80"}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", register, JSON, r#"{"cell_id":"x","ip":"127.0.0.1","port":0}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", register, JSON, r#"{"cell_id":"x","ip":"127.0.0.1","port":70000}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", register, JSON, r#"{"cell_id":"x","ip":"not a host!","port":8000}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", register, JSON, r#"{"cell_id":"","ip":"127.0.0.1","port":8000}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", register, JSON, register_long, S::UNPROCESSABLE_ENTITY),
        ("POST", register, JSON, r#"{"cell_id":"x","ip":"127.0.0.1","port":8000,"multiaddr":"garbage"}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", register, JSON, r#"{"cell_id":"x","ip":"127.0.0.1","port":8000,"extra":1}"#.into(), S::UNPROCESSABLE_ENTITY),
        ("POST", register, JSON, r#"{"cell_id":"x","ip":"127.0.0.1","port":8000"#.into(), S::BAD_REQUEST),
        ("POST", register, JSON, r#"["desktop","127.0.0.1",28080,null,28001]"#.into(), S::UNPROCESSABLE_ENTITY),
        // routes and methods
        ("GET", "/nope", None, "".into(), S::NOT_FOUND),
        ("DELETE", "/health", None, "".into(), S::METHOD_NOT_ALLOWED),
        ("GET", register, None, "".into(), S::METHOD_NOT_ALLOWED),
    ];
    for (method, path, ct, body, want) in cases {
        let short: String = body.chars().take(60).collect();
        let (status, v) = call(&cell, method, path, ct, body, None).await;
        assert_eq!(status, want, "{method} {path} {short:?} -> {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("no error field: {v}"));
        assert!(!msg.is_empty());
    }
    let (status, h) = call(&cell, "GET", "/health", None, Body::empty(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["consciousness_level"], 0.5, "a refused request changed the level");
    cell.shutdown().await;
}

#[tokio::test]
async fn unreachable_peer_is_502_with_a_reason() {
    let (cell, _dir) = cell(None).await;
    // Nothing listens on the discard port of loopback.
    let body = r#"{"cell_id":"ghost","ip":"127.0.0.1","port":8000,"p2p_port":9}"#;
    let (status, v) = call(&cell, "POST", "/register", JSON, body, None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    assert!(v["error"].as_str().unwrap().contains("127.0.0.1"), "{v}");
    let (status, _) = call(&cell, "GET", "/health", None, Body::empty(), None).await;
    assert_eq!(status, StatusCode::OK);
    cell.shutdown().await;
}

#[tokio::test]
async fn with_a_token_changes_need_it_and_reads_stay_open() {
    let (cell, _dir) = cell(Some("s3cret")).await;
    let body = r#"{"level": 2}"#;
    for auth in [None, Some("Bearer wrong"), Some("s3cret"), Some("Basic s3cret")] {
        let (status, v) = call(&cell, "POST", "/sync-consciousness", JSON, body, auth).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}: {v}");
    }
    let (status, h) = call(&cell, "GET", "/health", None, Body::empty(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["consciousness_level"], 0.5);
    let (status, v) =
        call(&cell, "POST", "/sync-consciousness", JSON, body, Some("Bearer s3cret")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["level"], 2.0);
    // The scheme name is case-insensitive (RFC 9110).
    let (status, _) =
        call(&cell, "POST", "/sync-consciousness", JSON, body, Some("bearer s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    cell.shutdown().await;
}

#[tokio::test]
async fn metrics_are_openmetrics_with_route_labels() {
    let (cell, _dir) = cell(None).await;
    let http = reqwest::Client::new();
    let api = format!("http://{}", cell.http_addr());
    assert!(http.get(format!("{api}/health")).send().await.unwrap().status().is_success());
    assert_eq!(http.get(format!("{api}/x/1")).send().await.unwrap().status(), 404);
    let resp = http.get(format!("http://{}/metrics", cell.metrics_addr())).send().await.unwrap();
    assert!(resp.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    for needle in [
        r#"aios_consciousness_level{cell_id="router-test"} 0.5"#,
        r#"aios_cell_info{cell_id="router-test",branch="main""#,
        r#"aios_http_requests_total{method="GET",route="/health",status="200"} 1"#,
        r#"aios_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        "aios_http_request_duration_seconds_bucket",
        r#"aios_peers{state="alive"} 0"#,
        "libp2p_swarm_",
        "# EOF",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    cell.shutdown().await;
}

#[tokio::test]
async fn a_client_that_posts_too_fast_gets_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::loopback("limited", dir.path().to_path_buf());
    config.tuning.rate_limit_per_second = 1;
    config.tuning.rate_limit_burst = 3;
    let cell = Cell::start(config).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{}/sync-consciousness", cell.http_addr());
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = http.post(&url).send().await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry >= 1);
            let v: Value = r.json().await.unwrap();
            assert!(v["error"].as_str().unwrap().contains("too many requests"), "{v}");
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    // Reads are not limited.
    let h = http.get(format!("http://{}/health", cell.http_addr())).send().await.unwrap();
    assert_eq!(h.status(), 200);
    cell.shutdown().await;
}

#[tokio::test]
async fn names_with_control_characters_are_422_and_nothing_is_dialed() {
    let (cell, _dir) = cell(None).await;
    // Nothing listens on port 9 of loopback: a dial would be a 502.
    for name in [
        "evil\u{0}nul",
        "evil\u{1b}[2Jesc",
        "evil\r\nid: forged",
        "evil\u{7}\u{7f}\u{9b}",
        "lap\u{202e}pot",
        "evil\u{0}\u{1b}[2J\r\nid\u{7}",
    ] {
        let body = serde_json::json!({ "cell_id": name, "ip": "127.0.0.1", "port": 8000,
                                       "p2p_port": 9 })
        .to_string();
        let (status, v) = call(&cell, "POST", "/register", JSON, body, None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name:?}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains("cell_id") && msg.contains("U+"), "{msg}");
        assert!(!msg.chars().any(char::is_control), "the error echoes the character: {msg:?}");
    }
    let (_, p) = call(&cell, "GET", "/peers", None, Body::empty(), None).await;
    assert_eq!(p["count"], 0, "{p}");
    let (_, h) = call(&cell, "GET", "/health", None, Body::empty(), None).await;
    assert_eq!(h["cell_id"], "router-test");
    assert_eq!(h["consciousness_level"], 0.5);
    cell.shutdown().await;
}

/// A loopback port where nothing listens (bound, then closed).
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn dialed(status: StatusCode, v: &Value) -> bool {
    matches!(status, StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT)
        && v["error"].as_str().is_some_and(|e| e.contains("unreachable") || e.contains("reach"))
}

#[tokio::test]
async fn register_from_another_machine_without_token_dials_only_the_caller() {
    let (cell, _dir) = cell(None).await;
    let port = dead_port();
    let third = serde_json::json!({ "cell_id": "x", "ip": "127.0.0.1", "port": 8000,
                                    "p2p_port": port })
    .to_string();
    let third_ma = serde_json::json!({ "cell_id": "x", "ip": "192.0.2.7", "port": 8000,
        "multiaddr": format!("/ip4/127.0.0.1/tcp/{port}") })
    .to_string();
    // A caller on the LAN naming a third party: refused, nothing dialed.
    for body in [&third, &third_ma] {
        let (status, v) =
            call_from(&cell, "192.0.2.7:5555", "POST", "/register", JSON, body.clone(), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains("192.0.2.7") && msg.contains("token"), "{msg}");
        assert!(msg.contains("from that cell's machine"), "{msg}");
    }
    // The same from loopback (`aios-cell join`): dialed.
    let (status, v) = call(&cell, "POST", "/register", JSON, third.clone(), None).await;
    assert!(dialed(status, &v), "{status} {v}");
    // A caller registering itself (its own IP) is dialed. 0.0.0.0 stands in for a
    // non-loopback caller here: libp2p refuses to dial it, so no packet leaves.
    let own = serde_json::json!({ "cell_id": "me", "ip": "0.0.0.0", "port": 8000,
                                  "p2p_port": port })
    .to_string();
    let (status, v) = call_from(&cell, "0.0.0.0:5555", "POST", "/register", JSON, own, None).await;
    assert!(dialed(status, &v), "{status} {v}");
    assert!(v["error"].as_str().unwrap().contains("0.0.0.0"), "{v}");
    // Registering the cell with itself: a no-op, no dial.
    let (_, h) = call(&cell, "GET", "/health", None, Body::empty(), None).await;
    let own_addr = h["listen_addrs"][0].as_str().unwrap().to_owned();
    let me = serde_json::json!({ "cell_id": "me", "ip": "127.0.0.1", "port": 8000,
                                 "multiaddr": own_addr })
    .to_string();
    let (status, v) = call_from(&cell, "192.0.2.7:5555", "POST", "/register", JSON, me, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "self");
    let (_, p) = call(&cell, "GET", "/peers", None, Body::empty(), None).await;
    assert_eq!(p["count"], 0, "{p}");
    cell.shutdown().await;
}

#[tokio::test]
async fn register_with_the_token_may_name_a_third_party_from_anywhere() {
    let (cell, _dir) = cell(Some("s3cret")).await;
    let body = serde_json::json!({ "cell_id": "x", "ip": "127.0.0.1", "port": 8000,
                                   "p2p_port": dead_port() })
    .to_string();
    let (status, v) =
        call_from(&cell, "192.0.2.7:5555", "POST", "/register", JSON, body.clone(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    let (status, v) =
        call_from(&cell, "192.0.2.7:5555", "POST", "/register", JSON, body, Some("Bearer s3cret"))
            .await;
    assert!(dialed(status, &v), "{status} {v}");
    cell.shutdown().await;
}

/// A GET on the real HTTP port: status, content type, JSON body.
async fn get_json(url: &str) -> (u16, String, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let ct = r.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
    (status, ct, r.json().await.unwrap())
}

#[tokio::test]
async fn services_and_prometheus_sd_list_this_cell_with_its_tags() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::loopback("sd-test", dir.path().to_path_buf());
    config.tags = [("role", "desktop"), ("gpu.vendor", "amd")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    config.services = aios_cell::services::parse_services("web=1/http,ssh=2").unwrap();
    let cell = Cell::start(config).await.unwrap();
    let api = format!("http://{}", cell.http_addr());
    let metrics_port = cell.metrics_addr().port();
    let peer_id = cell.peer_id().to_base58();

    // /health shows this cell's tags and services, the metrics port first.
    let (_, _, health) = get_json(&format!("{api}/health")).await;
    assert_eq!(health["tags"], serde_json::json!({"role": "desktop", "gpu.vendor": "amd"}));
    assert_eq!(health["services"][0]["name"], "metrics");
    assert_eq!(health["services"][0]["port"], metrics_port);
    assert_eq!(health["services"][0]["protocol"], "http");
    assert_eq!(
        health["services"][1],
        serde_json::json!({"name": "web", "port": 1, "protocol": "http", "status": health["services"][1]["status"]})
    );
    assert_eq!(health["services"][2]["protocol"], "tcp");
    for s in health["services"].as_array().unwrap() {
        assert!(["up", "down", "unknown"].contains(&s["status"].as_str().unwrap()), "{s}");
    }

    // /services: name -> cells, with address, port, status and a URL for web ones.
    // A cell lists its own services once it knows its listen addresses (a
    // moment after start; on a loaded machine it can be later than /health).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (status, ct, v) = loop {
        let got = get_json(&format!("{api}/services")).await;
        if !got.2["services"]["web"][0].is_null() || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let web = &v["services"]["web"][0];
    assert_eq!(web["cell_id"], "sd-test");
    assert_eq!(web["peer_id"], peer_id.as_str());
    assert_eq!(web["address"], "127.0.0.1");
    assert_eq!(web["port"], 1);
    assert_eq!(web["url"], "http://127.0.0.1:1/");
    assert!(v["services"]["ssh"][0].get("url").is_none(), "{v}");
    assert_eq!(v["services"]["metrics"][0]["port"], metrics_port);
    let (_, _, none) = get_json(&format!("{api}/services?tag=role=laptop")).await;
    assert_eq!(none, serde_json::json!({"services": {}}));
    let (_, _, some) = get_json(&format!("{api}/services?tag=role=desktop")).await;
    assert_eq!(some["services"]["web"][0]["cell_id"], "sd-test");

    // Prometheus HTTP SD: this cell's metrics port with its labels.
    let (status, ct, v) = get_json(&format!("{api}/sd/prometheus")).await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    assert_eq!(
        v,
        serde_json::json!([{
            "targets": [format!("127.0.0.1:{metrics_port}")],
            "labels": {
                "cell_id": "sd-test", "branch": "main", "peer_id": peer_id,
                "tag_role": "desktop", "tag_gpu_vendor": "amd",
            },
        }])
    );
    let (_, _, v) = get_json(&format!("{api}/sd/prometheus?service=ssh")).await;
    assert_eq!(v[0]["targets"], serde_json::json!(["127.0.0.1:2"]));
    assert_eq!(v[0]["labels"]["service"], "ssh");
    let (status, _, v) = get_json(&format!("{api}/sd/prometheus?service=nope")).await;
    assert_eq!((status, v), (200, serde_json::json!([])));
    let (status, _, v) = get_json(&format!("{api}/sd/prometheus?tag==x")).await;
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("tag filter"), "{v}");
    cell.shutdown().await;
}

#[tokio::test]
async fn metrics_come_as_the_text_format_to_a_client_that_prefers_it() {
    let (cell, _dir) = cell(None).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/metrics", cell.metrics_addr());
    let get = |accept: Option<&'static str>| {
        let mut req = http.get(&url);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        async move {
            let r = req.send().await.unwrap();
            let ct = r.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
            (ct, r.text().await.unwrap())
        }
    };
    let (ct, text) = get(Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    assert!(text.contains("# TYPE aios_gossip_messages_sent_total counter\n"), "{text}");
    assert!(text.contains(r#"aios_consciousness_level{cell_id="router-test"} 0.5"#), "{text}");
    // Prometheus's own header prefers OpenMetrics; no header gets it too.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for accept in [Some(prometheus), None] {
        let (ct, text) = get(accept).await;
        assert!(ct.starts_with("application/openmetrics-text"), "{accept:?}: {ct}");
        assert!(text.ends_with("# EOF\n"), "{accept:?}");
    }
    cell.shutdown().await;
}
