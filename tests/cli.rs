//! The binary as a newcomer uses it: client verbs against real cells on
//! loopback (started in-process, mDNS off), start-up errors, logs in files.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aios_cell::{Cell, Config};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_aios-cell");

/// The binary with a clean environment: no `AIOS_*`, proxies, colour or
/// log settings from the test's shell, and no platform config file.
fn bin(config_home: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("AIOS_")
            || k.to_ascii_lowercase().ends_with("_proxy")
            || k == "NO_COLOR"
            || k == "RUST_LOG"
        {
            cmd.env_remove(&*k);
        }
    }
    cmd.env("XDG_CONFIG_HOME", config_home).env("HOME", config_home).env("APPDATA", config_home);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` off the runtime's threads.
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs")).await.unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "failed: {}{}", stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

struct Node {
    cell: Cell,
    dir: tempfile::TempDir,
}

impl Node {
    fn api(&self) -> String {
        format!("http://{}", self.cell.http_addr())
    }
}

async fn start(name: &str, token: Option<&str>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::loopback(name, dir.path().join("data"));
    config.api_token = token.map(str::to_owned);
    Node { cell: Cell::start(config).await.unwrap(), dir }
}

async fn level(n: &Node) -> f64 {
    let h: Value = reqwest::get(format!("{}/health", n.api())).await.unwrap().json().await.unwrap();
    h["consciousness_level"].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_refuses_a_level_that_is_not_finite_and_non_negative() {
    let n = start("levels", None).await;
    for bad in ["NaN", "inf", "1e400", "-1"] {
        let mut cmd = bin(n.dir.path());
        cmd.args(["sync", "--api", &n.api(), "--level", bad]);
        let out = run(cmd).await;
        assert!(!out.status.success(), "--level {bad} was accepted: {}", stdout(&out));
        assert!(stderr(&out).contains("finite, non-negative"), "{bad}: {}", stderr(&out));
        assert_eq!(level(&n).await, 0.5, "--level {bad} changed the level");
    }
    let mut cmd = bin(n.dir.path());
    cmd.args(["sync", "--api", &n.api(), "--level", "0.8", "--json"]);
    assert_eq!(json(&run(cmd).await)["level"], 0.8);
    n.cell.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_verbs_take_every_token_source_the_cell_takes() {
    let n = start("tokens", Some("s3cret")).await;
    let home = n.dir.path();
    let token_file = home.join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let with_token = home.join("with-token.toml");
    std::fs::write(&with_token, "api_token = \"s3cret\"\n").unwrap();
    let with_file = home.join("with-file.toml");
    std::fs::write(
        &with_file,
        format!("api_token_file = {:?}\n", token_file.display().to_string()),
    )
    .unwrap();

    let sync = || {
        let mut cmd = bin(home);
        cmd.args(["sync", "--api", &n.api()]);
        cmd
    };
    let out = run(sync()).await;
    assert!(!out.status.success(), "no token, yet accepted");
    for source in ["--api-token-file", "AIOS_API_TOKEN_FILE", "api_token"] {
        assert!(
            stderr(&out).contains(source),
            "401 message does not name {source}: {}",
            stderr(&out)
        );
    }

    let mut cases: Vec<(&str, Command)> = Vec::new();
    let mut c = sync();
    c.args(["--api-token", "s3cret"]);
    cases.push(("--api-token", c));
    let mut c = sync();
    c.env("AIOS_API_TOKEN", "s3cret");
    cases.push(("AIOS_API_TOKEN", c));
    let mut c = sync();
    c.arg("--api-token-file").arg(&token_file);
    cases.push(("--api-token-file", c));
    let mut c = sync();
    c.env("AIOS_API_TOKEN_FILE", &token_file);
    cases.push(("AIOS_API_TOKEN_FILE", c));
    let mut c = sync();
    c.arg("--config").arg(&with_token);
    cases.push(("api_token in --config", c));
    let mut c = sync();
    c.env("AIOS_CONFIG", &with_file);
    cases.push(("api_token_file in AIOS_CONFIG", c));
    for (source, cmd) in cases {
        let out = run(cmd).await;
        assert!(out.status.success(), "{source}: {}", stderr(&out));
    }
    n.cell.shutdown().await;
}

/// Waits until `path` holds `needle`, or panics after `within`.
fn wait_for_text(path: &Path, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A cell run by the binary on loopback with mDNS off, logging to a file.
fn spawn_cell(dir: &Path, log: &Path, extra: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = bin(dir);
    cmd.envs([
        ("AIOS_MDNS", "false"),
        ("AIOS_CELL_ID", "logger"),
        ("AIOS_P2P_IP", "127.0.0.1"),
        ("AIOS_P2P_PORT", "0"),
        ("AIOS_HTTP_ADDR", "127.0.0.1:0"),
        ("AIOS_METRICS_ADDR", "127.0.0.1:0"),
    ]);
    cmd.env("AIOS_DATA_DIR", dir.join("data")).envs(extra.iter().copied());
    let file = std::fs::File::create(log).unwrap();
    cmd.stdout(file.try_clone().unwrap()).stderr(file);
    cmd.spawn().expect("the cell starts")
}

#[test]
fn a_log_written_to_a_file_has_no_escape_byte() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("cell.log");
    // A warning and info lines: both coloured on a terminal.
    let mut child = spawn_cell(dir.path(), &log, &[("AIOS_LOG", "debug,libp2p=info")]);
    let text = wait_for_text(&log, "cell started", Duration::from_secs(20));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\u{1b}'), "ANSI escape in a log file:\n{text:?}");
}

#[test]
fn an_invalid_log_filter_is_an_error_that_names_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("cell.log");
    let mut child = spawn_cell(dir.path(), &log, &[("AIOS_LOG", "aios_cell=loud")]);
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(text.contains("AIOS_LOG"), "{text}");
}

/// Runs a cell that must fail to start; returns its one error.
fn start_error(extra: &[(&str, &str)], config: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("cell.log");
    let mut env = extra.to_vec();
    let config_path = dir.path().join("aios-cell.toml");
    let config_arg = config_path.display().to_string();
    if let Some(text) = config {
        std::fs::write(&config_path, text).unwrap();
        env.push(("AIOS_CONFIG", &config_arg));
    }
    let mut child = spawn_cell(dir.path(), &log, &env);
    // Bounded: a cell that starts after all is stopped and reported.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the cell started: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "the cell started: {text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {text}");
    let start = text.find("error:").unwrap();
    text[start..].to_owned()
}

/// Each reason appears once: no `: ` separated part repeats, and nothing
/// ends with an empty reason.
fn assert_said_once(e: &str) {
    let parts: Vec<&str> = e.split(": ").map(str::trim).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!p.is_empty(), "an empty reason: {e}");
        assert!(!parts[i + 1..].contains(p), "said twice ({p}): {e}");
    }
}

#[test]
fn start_up_errors_say_one_reason_once() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = tcp.local_addr().unwrap().to_string();
    let e = start_error(&[("AIOS_HTTP_ADDR", &taken)], None);
    assert_said_once(&e);
    assert!(e.contains("AIOS_HTTP_ADDR"), "says which setting: {e}");

    let port = tcp.local_addr().unwrap().port().to_string();
    let e = start_error(&[("AIOS_P2P_PORT", &port)], None);
    assert_said_once(&e);
    assert!(e.contains("AIOS_P2P_PORT"), "says which setting: {e}");

    // QUIC's UDP port taken, the TCP one free: not an error (QUIC is
    // optional); the cell runs on TCP and says why once.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port().to_string();
    if TcpListener::bind(("127.0.0.1", udp.local_addr().unwrap().port())).is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("cell.log");
        let mut child = spawn_cell(dir.path(), &log, &[("AIOS_P2P_PORT", &port)]);
        let text = wait_for_text(&log, "cell started", Duration::from_secs(20));
        child.kill().unwrap();
        child.wait().unwrap();
        let warnings: Vec<&str> = text.lines().filter(|l| l.contains("QUIC is off")).collect();
        assert_eq!(warnings.len(), 1, "{text}");
        assert_said_once(warnings[0]);
    }

    // An address this host does not have (TEST-NET-1).
    let e = start_error(&[("AIOS_P2P_IP", "192.0.2.1")], None);
    assert_said_once(&e);
    assert!(e.contains("AIOS_P2P_IP"), "says which setting: {e}");

    let e = start_error(&[], Some("p2p_port = \"x\"\n"));
    assert_eq!(e.lines().filter(|l| l.contains('^')).count(), 1, "one caret block: {e}");
    assert_eq!(e.matches("TOML parse error").count(), 1, "{e}");
    let e = start_error(&[], Some("cel_id = \"x\"\n"));
    assert!(e.contains("did you mean `cell_id`?"), "{e}");
    let e = start_error(&[], Some("[tuning]\nheartbeat_sec = 1\n"));
    assert!(e.contains("did you mean `heartbeat_secs`?"), "{e}");

    // Bad tags and services name the variable and the entry.
    let e = start_error(&[("AIOS_TAGS", "role=desktop,gpu")], None);
    assert_said_once(&e);
    assert!(e.contains("AIOS_TAGS") && e.contains("\"gpu\""), "{e}");
    let e = start_error(&[("AIOS_SERVICES", "grafana=3000/http,vault=70000")], None);
    assert!(e.contains("AIOS_SERVICES") && e.contains("vault=70000"), "{e}");
    let e = start_error(&[("AIOS_SERVICES", "ftp=21/ftp")], None);
    assert!(e.contains("ftp=21/ftp") && e.contains("http, https or tcp"), "{e}");
    let e = start_error(&[], Some("[services]\nweb = \"0/http\"\n"));
    assert!(e.contains("[services]") && e.contains("web=0/http"), "{e}");
    // Tags that would make the record too large for other cells.
    let big: Vec<String> = (0..32).map(|i| format!("k{i}={}", "v".repeat(200))).collect();
    let e = start_error(&[("AIOS_TAGS", &big.join(","))], None);
    assert!(e.contains("4096 bytes") && e.contains("AIOS_TAGS"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_prints_the_resolved_configuration_or_the_one_problem() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin(dir.path());
    cmd.args(["config", "check"]).envs([
        ("AIOS_MDNS", "off"),
        ("AIOS_QUIC", "0"),
        ("AIOS_HTTP_ADDR", "localhost:18000"),
        ("AIOS_API_TOKEN", "s3cret"),
    ]);
    cmd.env("AIOS_DATA_DIR", dir.path());
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: toml::Table = toml::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["mdns"].as_bool(), Some(false));
    assert_eq!(shown["quic"].as_bool(), Some(false));
    assert_eq!(shown["http_addr"].as_str(), Some("127.0.0.1:18000"));
    assert!(!stdout(&out).contains("s3cret"), "the token is not shown");
    for off in ["FALSE", "no", "0"] {
        let mut cmd = bin(dir.path());
        cmd.args(["config", "check"]).env("AIOS_MDNS", off).env("AIOS_DATA_DIR", dir.path());
        let out = run(cmd).await;
        assert!(out.status.success(), "AIOS_MDNS={off}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_verbs_find_the_cell_from_its_own_settings() {
    let n = start("finder", None).await;
    let home = n.dir.path();
    // The cell's own AIOS_HTTP_ADDR, no --api.
    let mut cmd = bin(home);
    cmd.args(["health", "--json"]).env("AIOS_HTTP_ADDR", n.cell.http_addr().to_string());
    assert_eq!(json(&run(cmd).await)["cell_id"], "finder");
    // A config file's http_addr with an unspecified IP means loopback.
    let config = home.join("c.toml");
    std::fs::write(&config, format!("http_addr = \"0.0.0.0:{}\"\n", n.cell.http_addr().port()))
        .unwrap();
    let mut cmd = bin(home);
    cmd.args(["peers", "--json"]).env("AIOS_CONFIG", &config);
    assert!(json(&run(cmd).await)["peers"].is_array());
    // host:port, no scheme.
    let mut cmd = bin(home);
    cmd.args(["health", "--json", "--api", &n.cell.http_addr().to_string()]);
    assert_eq!(json(&run(cmd).await)["cell_id"], "finder");
    // The metrics port is named as such.
    let mut cmd = bin(home);
    cmd.args(["health", "--api", &n.cell.metrics_addr().to_string()]);
    let out = run(cmd).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("metrics port"), "{}", stderr(&out));
    // A daemon variable that is wrong does not concern a client verb.
    let mut cmd = bin(home);
    cmd.args(["health", "--api", &n.api()]).env("AIOS_P2P_PORT", "99999");
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));
    n.cell.shutdown().await;
}

#[test]
fn client_verbs_list_client_flags_only() {
    let dir = tempfile::tempdir().unwrap();
    for verb in ["health", "peers", "sync", "join", "monitor"] {
        let mut cmd = bin(dir.path());
        cmd.args([verb, "--help"]);
        let out = cmd.output().unwrap();
        let help = stdout(&out);
        assert!(out.status.success(), "{verb} --help: {}", stderr(&out));
        assert!(help.contains("--api-token-file"), "{verb}: {help}");
        for daemon in ["--consciousness-level", "--p2p-port", "--mdns", "--http-addr"] {
            assert!(!help.contains(daemon), "{verb} --help lists {daemon}:\n{help}");
        }
    }
    let mut cmd = bin(dir.path());
    cmd.args(["run", "--help"]);
    assert!(stdout(&cmd.output().unwrap()).contains("--p2p-port"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_level_wins_over_the_saved_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::loopback("saved", dir.path().to_path_buf());
    let cell = Cell::start(config.clone()).await.unwrap();
    cell.handle().sync(Some(0.9)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while aios_cell::state::load(dir.path()).ok().flatten().map(|s| s.level) != Some(0.9) {
        assert!(Instant::now() < deadline, "the level was not saved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cell.shutdown().await;
    // Not configured: the saved level.
    let cell = Cell::start(config.clone()).await.unwrap();
    assert_eq!(cell.handle().snapshot().local.consciousness_level, 0.9);
    cell.shutdown().await;
    // Configured: that level.
    let mut explicit = config;
    explicit.consciousness_level = 0.2;
    explicit.consciousness_level_explicit = true;
    let cell = Cell::start(explicit).await.unwrap();
    assert_eq!(cell.handle().snapshot().local.consciousness_level, 0.2);
    cell.shutdown().await;
}

async fn p2p_addr(n: &Node) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let snap = n.cell.handle().snapshot();
        if let Some(a) =
            snap.local.listen_addrs.iter().find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
        {
            return a.clone();
        }
        assert!(Instant::now() < deadline, "no TCP listen address");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_members_and_monitor_follow_a_cell() {
    let a = start("alpha", None).await;
    let b = start("beta", None).await;
    let home = a.dir.path();

    // monitor: the snapshot first, then events, then the last one at shutdown.
    let mut monitor = bin(home);
    monitor.args(["monitor", "--json", "--api", &a.api()]);
    let mut child = monitor.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    });

    let mut cmd = bin(home);
    cmd.args(["join", &p2p_addr(&b).await, "--json", "--api", &a.api()]);
    let joined = json(&run(cmd).await);
    assert_eq!(joined["peer"]["cell_id"], "beta");
    let mut cmd = bin(home);
    cmd.args(["members", "--json", "--api", &a.api()]);
    let members = json(&run(cmd).await);
    let peers = members["peers"].as_array().unwrap();
    assert!(peers.iter().any(|p| p["cell_id"] == "beta"), "{members}");
    // The table lists this cell first, marked, then the others.
    let mut cmd = bin(home);
    cmd.args(["peers", "--api", &a.api()]);
    let table = stdout(&run(cmd).await);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[1].starts_with("alpha (this cell)") && lines[1].contains("self"), "{table}");
    assert!(lines[2].starts_with("beta"), "{table}");

    a.cell.shutdown().await;
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    let text = reader.join().unwrap().unwrap();
    assert!(status.success(), "monitor: {text}");
    let events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.first().map(|e| &e["type"]), Some(&Value::from("snapshot")), "{text}");
    assert_eq!(events.last().map(|e| &e["type"]), Some(&Value::from("shutdown")), "{text}");
    let beta = b.cell.peer_id().to_base58();
    assert!(events.iter().any(|e| e["type"] == "cell_joined" && e["peer_id"] == beta), "{text}");
    b.cell.shutdown().await;
}

#[test]
fn version_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin(dir.path());
    cmd.arg("version");
    let out = cmd.output().unwrap();
    assert_eq!(stdout(&out).trim(), format!("aios-cell {}", env!("CARGO_PKG_VERSION")));
    let mut cmd = bin(dir.path());
    cmd.args(["completions", "bash"]);
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    assert!(stdout(&out).contains("members"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_non_zero_when_the_cell_is_degraded() {
    // Two cells with one identity (a cloned disk image), both knowing a hub.
    let hub = start("hub", None).await;
    let to_hub: Vec<aios_cell::config::PeerAddr> = vec![p2p_addr(&hub).await.parse().unwrap()];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start_in = |name: &str, dir: &Path| {
        let mut config = Config::loopback(name, dir.to_path_buf());
        config.peers = to_hub.clone();
        config.tuning.heartbeat_secs = 1;
        Cell::start(config)
    };
    let a = start_in("original", dir_a.path()).await.unwrap();
    let key = aios_cell::identity::KEY_FILE;
    std::fs::copy(dir_a.path().join(key), dir_b.path().join(key)).unwrap();
    let b = start_in("copy", dir_b.path()).await.unwrap();

    let health = |api: String| {
        let mut cmd = bin(hub.dir.path());
        cmd.args(["health", "--api", &api]);
        run(cmd)
    };
    let out = health(hub.api()).await;
    assert!(out.status.success(), "a healthy cell: {}{}", stdout(&out), stderr(&out));

    let deadline = Instant::now() + Duration::from_secs(20);
    let degraded = loop {
        let found = [&a, &b].into_iter().find(|c| c.handle().snapshot().degraded.is_some());
        if let Some(c) = found {
            break format!("http://{}", c.http_addr());
        }
        assert!(Instant::now() < deadline, "neither clone reported the shared identity");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = health(degraded).await;
    assert!(!out.status.success(), "health exited 0 on a degraded cell: {}", stdout(&out));
    assert!(stdout(&out).contains("degraded"), "{}", stdout(&out));
    a.shutdown().await;
    b.shutdown().await;
    hub.cell.shutdown().await;
}

/// `forget` (alias `force-leave`): a cell gone for good leaves the table;
/// a live one, or an unknown one, is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_removes_a_cell_gone_for_good_and_only_such_a_cell() {
    let a = start("keeper", None).await;
    let b = start("goner", None).await;
    let home = a.dir.path();
    let mut cmd = bin(home);
    cmd.args(["join", &p2p_addr(&b).await, "--api", &a.api()]);
    assert!(run(cmd).await.status.success());
    let goner = b.cell.peer_id().to_base58();

    let mut cmd = bin(home);
    cmd.args(["forget", &goner, "--api", &a.api()]);
    let out = run(cmd).await;
    assert!(!out.status.success(), "a live cell is not forgotten");
    assert!(stderr(&out).contains("only a failed or left cell"), "{}", stderr(&out));

    b.cell.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut cmd = bin(home);
        cmd.args(["force-leave", &goner, "--api", &a.api()]);
        let out = run(cmd).await;
        if out.status.success() {
            assert!(stdout(&out).contains("forgot"), "{}", stdout(&out));
            break;
        }
        assert!(Instant::now() < deadline, "never forgotten: {}", stderr(&out));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cmd = bin(home);
    cmd.args(["peers", "--json", "--api", &a.api()]);
    let peers = json(&run(cmd).await);
    assert!(!peers["peers"].as_array().unwrap().iter().any(|p| p["peer_id"] == goner), "{peers}");
    // Again: nothing to forget.
    let mut cmd = bin(home);
    cmd.args(["forget", &goner, "--api", &a.api()]);
    let out = run(cmd).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no such cell"), "{}", stderr(&out));
    a.cell.shutdown().await;
}

/// `id` prints the peer id, and the running cell's listen addresses when
/// the cell with that identity answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_prints_the_listen_addresses_of_the_running_cell() {
    let n = start("ident", None).await;
    let _ = p2p_addr(&n).await;
    let id = n.cell.peer_id().to_base58();
    let mut cmd = bin(n.dir.path());
    cmd.args(["id"]).env("AIOS_DATA_DIR", n.dir.path().join("data")).env("AIOS_API", n.api());
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], id);
    assert!(
        lines[1..]
            .iter()
            .any(|l| l.starts_with("/ip4/127.0.0.1/tcp/") && l.ends_with(&format!("/p2p/{id}"))),
        "{text}"
    );
    n.cell.shutdown().await;
    // No cell running: the id alone, and a word on stderr.
    let mut cmd = bin(n.dir.path());
    cmd.args(["id"]).env("AIOS_DATA_DIR", n.dir.path().join("data")).env("AIOS_API", "127.0.0.1:9");
    let out = run(cmd).await;
    assert_eq!(stdout(&out).trim(), id);
    assert!(stderr(&out).contains("no running cell"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_filter_by_tag_and_services_lists_the_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::loopback("desk", dir.path().join("data"));
    config.tags.insert("role".into(), "desktop".into());
    config.services = aios_cell::services::parse_services("web=1/http").unwrap();
    let a = Node { cell: Cell::start(config).await.unwrap(), dir };
    let b = start("lap", None).await;
    let home = a.dir.path();
    let mut cmd = bin(home);
    cmd.args(["join", &p2p_addr(&b).await, "--json", "--api", &a.api()]);
    json(&run(cmd).await);

    // Filtered on b's side: only the desktop (a) is listed.
    let mut cmd = bin(home);
    cmd.args(["peers", "--tag", "role=desktop", "--json", "--api", &b.api()]);
    let v = json(&run(cmd).await);
    let names: Vec<&str> =
        v["peers"].as_array().unwrap().iter().filter_map(|p| p["cell_id"].as_str()).collect();
    assert_eq!((names, v["count"].as_u64()), (vec!["desk"], Some(1)), "{v}");
    let mut cmd = bin(home);
    cmd.args(["peers", "--tag", "role=laptop", "--api", &a.api()]);
    let table = stdout(&run(cmd).await);
    assert!(!table.contains("desk") && !table.contains("lap "), "{table}");
    let mut cmd = bin(home);
    cmd.args(["peers", "--api", &b.api()]);
    let table = stdout(&run(cmd).await);
    assert!(table.lines().next().unwrap().ends_with("TAGS"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("desk") && l.ends_with("role=desktop")), "{table}");

    // `services`: every service of the mesh, from either cell.
    let mut cmd = bin(home);
    cmd.args(["services", "--api", &b.api()]);
    let table = stdout(&run(cmd).await);
    let web: Vec<&str> = table.lines().filter(|l| l.starts_with("web")).collect();
    assert_eq!(web.len(), 1, "{table}");
    assert!(web[0].contains("desk") && web[0].contains("127.0.0.1:1/http"), "{table}");
    assert!(web[0].ends_with("http://127.0.0.1:1/"), "{table}");
    assert_eq!(table.lines().filter(|l| l.starts_with("metrics")).count(), 2, "{table}");
    let mut cmd = bin(home);
    cmd.args(["services", "--tag", "role=desktop", "--json", "--api", &b.api()]);
    let v = json(&run(cmd).await);
    assert_eq!(v["services"]["metrics"].as_array().map(Vec::len), Some(1), "{v}");
    let mut cmd = bin(home);
    cmd.args(["peers", "--tag", "=x", "--api", &b.api()]);
    let out = run(cmd).await;
    assert!(!out.status.success() && stderr(&out).contains("--tag"), "{}", stderr(&out));
    b.cell.shutdown().await;
    a.cell.shutdown().await;
}
