//! The `aios-cell` binary: parses flags, sets up logging, runs a cell until
//! Ctrl-C / SIGTERM (or Windows' console close), or runs a client verb.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use aios_cell::client::{self, Client, Target};
use aios_cell::config::{self, Config, LogFormat, RunArgs};
use aios_cell::Cell;
use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "aios-cell",
    version,
    about = "A zero-config LAN mesh agent: every machine an equal cell",
    after_help = "With no verb, or only flags, it runs a cell: `aios-cell --p2p-port 18001` is \
                  `aios-cell run --p2p-port 18001`."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The flags of the verbs that talk to a running cell.
#[derive(clap::Args, Debug, Clone)]
struct ClientArgs {
    /// The cell's API: a URL or host:port [default: the cell's own AIOS_HTTP_ADDR or config
    /// file's http_addr, else 127.0.0.1:8000]
    #[arg(long, env = "AIOS_API")]
    api: Option<String>,
    /// Token for a cell that requires one
    #[arg(long, env = "AIOS_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Read the token from this file
    #[arg(long, env = "AIOS_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// The cell's config file, for its http_addr and token [default: the platform config file]
    #[arg(long, env = "AIOS_CONFIG")]
    config: Option<PathBuf>,
    /// Print the cell's JSON instead of text
    #[arg(long)]
    json: bool,
}

impl ClientArgs {
    fn client(&self) -> anyhow::Result<Client> {
        let target = Target {
            api: self.api.clone(),
            api_token: self.api_token.clone(),
            api_token_file: self.api_token_file.clone(),
            config: self.config.clone(),
        };
        let (api, token) = target.resolve(|k| std::env::var(k).ok())?;
        Ok(Client::new(&api, token)?)
    }
}

/// Where the identity lives: the data dir, from the flag or the config file.
#[derive(clap::Args, Debug, Clone)]
struct StateArgs {
    /// Config file (TOML) [default: the platform config dir's aios-cell.toml]
    #[arg(long, env = "AIOS_CONFIG")]
    config: Option<PathBuf>,
    /// State folder (identity key) [default: the platform data dir]
    #[arg(long, env = "AIOS_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl StateArgs {
    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        let file = config::load_file(self.config.as_deref())?;
        match file.and_then(|(f, _)| f.data_dir) {
            Some(d) => Ok(d),
            None => config::default_data_dir()
                .context("no data directory: set AIOS_DATA_DIR or --data-dir"),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a cell (the default)
    Run(RunArgs),
    /// Print this machine's peer id (creating the identity if needed), and the running
    /// cell's listen addresses when it answers
    Id(StateArgs),
    /// Write a new pre-shared swarm key (Kubo's swarm.key format) for a private mesh
    Keygen {
        /// Where to write it [default: swarm.key in the data dir, which cells use automatically]
        path: Option<PathBuf>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Check the configuration (file, environment, flags) and print it as resolved
    Config {
        #[command(subcommand)]
        what: ConfigCmd,
    },
    /// Show a running cell's health (exits 1 when it is not healthy)
    Health(ClientArgs),
    /// List the cells a running cell knows
    #[command(visible_alias = "members")]
    Peers {
        /// Only cells with this tag: key=value, or key for any value (e.g. role=desktop)
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List every service of the mesh: name, the cells that run it, their address and status
    Services {
        /// Only cells with this tag: key=value, or key for any value
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Broadcast a running cell's state, optionally setting its level first
    Sync {
        /// New consciousness level (finite, non-negative)
        #[arg(long, value_parser = config::parse_level, allow_negative_numbers = true)]
        level: Option<f64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a running cell dial and register another cell
    Join {
        /// The other cell's libp2p address: a multiaddr or host[:port] (8001 if left out)
        address: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a running cell forget a cell that is gone for good (a failed or left one)
    #[command(visible_alias = "force-leave", alias = "leave")]
    Forget {
        /// The gone cell's peer id (see `aios-cell peers`)
        peer_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow a running cell's events (joins, failures, leaves, level changes)
    #[command(visible_alias = "events")]
    Monitor(ClientArgs),
    /// Print this binary's version
    Version,
    /// Print a shell completion script (e.g. `aios-cell completions bash > /etc/bash_completion.d/aios-cell`)
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Resolve the configuration as `run` would, say what is wrong or print it (TOML)
    Check(RunArgs),
}

/// Colour only on a terminal, and not when `NO_COLOR` is set (no-color.org).
fn use_colour(stream_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stream_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The log filter: `AIOS_LOG`, else `RUST_LOG`, else `info`. A filter that
/// does not parse is an error that names its variable.
fn log_filter() -> anyhow::Result<tracing_subscriber::EnvFilter> {
    for var in ["AIOS_LOG", "RUST_LOG"] {
        if let Some(v) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
            return tracing_subscriber::EnvFilter::builder().parse(&v).with_context(|| {
                format!("{var}={v:?} is not a log filter (e.g. `info`, `debug`, `info,aios_cell=debug`)")
            });
        }
    }
    Ok(tracing_subscriber::EnvFilter::new("info"))
}

fn init_tracing(format: LogFormat) -> anyhow::Result<()> {
    let filter = log_filter()?;
    let ansi = use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// Resolves on Ctrl-C, SIGTERM, or a Windows console close/shutdown.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let other = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(windows)]
    let other = async {
        use tokio::signal::windows::{ctrl_break, ctrl_close, ctrl_shutdown};
        match (ctrl_close(), ctrl_shutdown(), ctrl_break()) {
            (Ok(mut c), Ok(mut s), Ok(mut b)) => {
                tokio::select! { _ = c.recv() => {}, _ = s.recv() => {}, _ = b.recv() => {} }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(any(unix, windows)))]
    let other = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = other => {} }
}

async fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::resolve(args).context("configuration")?;
    init_tracing(config.log_format)?;
    if config.api_token.is_none() && !config.http_addr.ip().is_loopback() {
        tracing::warn!(addr = %config.http_addr, "the HTTP API is open to the network without a token; set AIOS_API_TOKEN to protect changes");
    }
    let cell = Cell::start(config).await.context("starting the cell")?;
    let token: CancellationToken = cell.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
    cell.run_until_cancelled().await;
    Ok(ExitCode::SUCCESS)
}

fn print_json(v: &serde_json::Value) {
    println!("{}", client::json_for_terminal(v, true));
}

/// A client verb's answer: the cell's JSON, or `text` of it.
fn show(json: bool, v: &serde_json::Value, text: fn(&serde_json::Value) -> String) {
    if json {
        print_json(v);
    } else {
        print!("{}", text(v));
    }
}

async fn client_verb(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Health(a) => {
            let v = a.client()?.health().await?;
            show(a.json, &v, client::format_health);
            // Docker's HEALTHCHECK and scripts see a degraded cell.
            let healthy = v.get("status").and_then(|s| s.as_str()) == Some("healthy");
            Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Peers { tag, client: a } => {
            let c = a.client()?;
            let filter = tag.as_deref().map(client::TagFilter::parse).transpose()?;
            let mut v = c.peers().await?;
            if let Some(f) = &filter {
                f.retain_peers(&mut v);
            }
            if a.json {
                print_json(&v);
            } else {
                // This cell's own row comes from /health.
                let this =
                    c.health().await.ok().filter(|h| filter.as_ref().is_none_or(|f| f.matches(h)));
                print!("{}", client::format_peers(&v, this.as_ref()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Services { tag, client: a } => {
            let filter = tag.as_deref().map(client::TagFilter::parse).transpose()?;
            let v = a.client()?.services(filter.as_ref()).await?;
            show(a.json, &v, client::format_services);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sync { client: a, level } => {
            let v = a.client()?.sync(level).await?;
            show(a.json, &v, client::format_sync);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Join { address, client: a } => {
            let v = a.client()?.join(&address).await?;
            show(a.json, &v, client::format_join);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Forget { peer_id, client: a } => {
            let v = a.client()?.forget(&peer_id).await?;
            if a.json {
                print_json(&v);
            } else {
                println!("forgot {peer_id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Monitor(a) => {
            let c = a.client()?;
            let json = a.json;
            c.monitor(|event, data| {
                if json {
                    println!("{}", client::json_text_for_terminal(data));
                } else {
                    println!("{}", client::format_event(event, data));
                }
            })
            .await?;
            eprintln!("the cell closed the event stream");
            Ok(ExitCode::SUCCESS)
        }
        other => anyhow::bail!("{other:?} is not a client verb"),
    }
}

/// `aios-cell` alone, or with only flags, means `aios-cell run …`.
fn with_default_verb(mut argv: Vec<OsString>) -> Vec<OsString> {
    let insert = match argv.get(1).and_then(|a| a.to_str()) {
        None => argv.len() == 1,
        Some("-h" | "--help" | "-V" | "--version") => false,
        Some(a) => a.starts_with('-'),
    };
    if insert {
        argv.insert(1, "run".into());
    }
    argv
}

/// What to do about a port or address the cell could not take, naming the
/// setting that chose it.
fn bind_hint(setting: &str, addr: std::net::SocketAddr, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match io_kind(e) {
        ErrorKind::AddrInUse => format!(
            "another program (another cell?) has port {}: set {setting} to another port, or 0 for a free one",
            addr.port()
        ),
        ErrorKind::AddrNotAvailable => format!(
            "this host has no address {}: set {setting} to one of its addresses, or 0.0.0.0 for all",
            addr.ip()
        ),
        ErrorKind::PermissionDenied => {
            format!("port {} needs privileges: set {setting} to a port above 1023", addr.port())
        }
        _ => format!("check {setting}"),
    }
}

/// The kind of the first I/O error in `e`'s chain that says more than
/// "other" (libp2p wraps the OS's error in its own).
fn io_kind(e: &std::io::Error) -> std::io::ErrorKind {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() != std::io::ErrorKind::Other {
                return io.kind();
            }
            if let Some(inner) = io.get_ref() {
                cur = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        cur = err.source();
    }
    // libp2p's transport combinators (`Either`) do not expose their
    // source; their text is the OS error's, which names its code.
    let text = e.to_string();
    text.rsplit_once("(os error ")
        .and_then(|(_, code)| code.trim_end_matches(')').parse::<i32>().ok())
        .map(|code| std::io::Error::from_raw_os_error(code).kind())
        .unwrap_or(e.kind())
}

/// The hint for a start-up error, if it is one that a setting can fix.
fn hint(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use aios_cell::network::NetworkError;
    use libp2p::multiaddr::Protocol;
    match e.downcast_ref::<aios_cell::Error>()? {
        aios_cell::Error::Bind { what, addr, source } => {
            let setting = if what.contains("metrics") {
                "AIOS_METRICS_ADDR (--metrics-addr)"
            } else {
                "AIOS_HTTP_ADDR (--http-addr)"
            };
            Some(bind_hint(setting, *addr, source))
        }
        aios_cell::Error::Network(NetworkError::Listen { addr, reason }) => {
            let mut ip = None;
            let mut port = None;
            for p in addr.iter() {
                match p {
                    Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
                    Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
                    Protocol::Tcp(p) | Protocol::Udp(p) => port = Some(p),
                    _ => {}
                }
            }
            let sock = std::net::SocketAddr::new(ip?, port?);
            let setting = if io_kind(reason) == std::io::ErrorKind::AddrNotAvailable {
                "AIOS_P2P_IP (--p2p-ip)"
            } else {
                "AIOS_P2P_PORT (--p2p-port)"
            };
            Some(bind_hint(setting, sock, reason))
        }
        _ => None,
    }
}

/// An error and its causes, each said once: a cause already in the text
/// before it (thiserror messages often include their source) is skipped.
/// A start-up error a setting can fix ends with what to do.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let hint = e.chain().find_map(hint);
    for cause in e.chain() {
        let msg = cause.to_string();
        if msg.is_empty() || out.contains(msg.trim()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    if let Some(h) = hint {
        out.push_str("; ");
        out.push_str(&h);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(with_default_verb(std::env::args_os().collect()));
    match cli.command {
        Cmd::Version => {
            println!("aios-cell {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "aios-cell",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Cmd::Run(args) => run(&args).await,
            Cmd::Id(state) => {
                let key = aios_cell::identity::load_or_create(&state.data_dir()?)?;
                let id = key.public().to_peer_id();
                println!("{id}");
                // The running cell with this identity, found as the client
                // verbs find it, tells where it listens.
                let target = Target {
                    api: std::env::var("AIOS_API").ok(),
                    api_token: None,
                    api_token_file: None,
                    config: state.config.clone(),
                };
                let health = match target.resolve(|k| std::env::var(k).ok()) {
                    Ok((api, _)) => match Client::new(&api, None) {
                        Ok(c) => c.health().await.ok(),
                        Err(_) => None,
                    },
                    Err(_) => None,
                };
                match health.filter(|h| h["peer_id"] == id.to_base58()) {
                    Some(h) => {
                        let addrs = h["listen_addrs"].as_array().cloned().unwrap_or_default();
                        for a in addrs.iter().filter_map(|a| a.as_str()) {
                            println!("{a}/p2p/{id}");
                        }
                    }
                    None => eprintln!(
                        "(no running cell with this identity answered: no listen addresses)"
                    ),
                }
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Keygen { path, state } => {
                let path = match path {
                    Some(p) => p,
                    None => state.data_dir()?.join(config::SWARM_KEY_FILE),
                };
                let fingerprint = aios_cell::identity::generate_swarm_key(&path)?;
                println!("wrote {} (fingerprint {fingerprint})", path.display());
                println!("copy it to every cell's data dir, or point AIOS_SWARM_KEY at it");
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Config { what: ConfigCmd::Check(args) } => {
                let config = Config::resolve(&args).context("configuration")?;
                print!("{}", toml::to_string(&config.to_file_config())?);
                Ok(ExitCode::SUCCESS)
            }
            cmd => client_verb(cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None));
        assert!(!use_colour(true, Some("1".into())));
        assert!(use_colour(true, Some("".into())), "an empty NO_COLOR does not count");
    }

    #[test]
    fn flags_alone_mean_run() {
        let args = |v: &[&str]| -> Vec<String> {
            with_default_verb(v.iter().map(OsString::from).collect())
                .into_iter()
                .map(|a| a.into_string().unwrap_or_default())
                .collect()
        };
        assert_eq!(args(&["aios-cell"]), ["aios-cell", "run"]);
        assert_eq!(args(&["aios-cell", "--mdns", "off"]), ["aios-cell", "run", "--mdns", "off"]);
        assert_eq!(args(&["aios-cell", "--help"]), ["aios-cell", "--help"]);
        assert_eq!(args(&["aios-cell", "peers"]), ["aios-cell", "peers"]);
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
