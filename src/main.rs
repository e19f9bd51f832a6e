//! The `aios-cell` binary: parses flags, sets up logging, runs a cell until
//! Ctrl-C / SIGTERM (or Windows' console close), or runs a client verb.

use std::process::ExitCode;

use aios_cell::client::{self, Client};
use aios_cell::config::{Config, LogFormat, RunArgs};
use aios_cell::Cell;
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "aios-cell",
    version,
    about = "A zero-config LAN mesh agent: every machine an equal cell"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Debug, Clone)]
struct ClientArgs {
    /// The cell's API
    #[arg(long, env = "AIOS_API", default_value = "http://127.0.0.1:8000")]
    api: String,
    /// Print the cell's JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a cell (the default)
    Run,
    /// Print this machine's peer id (creating the identity if needed)
    Id,
    /// Write a new pre-shared swarm key (Kubo's swarm.key format) for a private mesh
    Keygen {
        /// Where to write it [default: swarm.key in the data dir, which cells use automatically]
        path: Option<std::path::PathBuf>,
    },
    /// Show a running cell's health
    Health(ClientArgs),
    /// List the cells a running cell knows
    Peers(ClientArgs),
    /// Broadcast a running cell's state, optionally setting its level first
    Sync {
        #[command(flatten)]
        client: ClientArgs,
        /// New consciousness level (finite, non-negative)
        #[arg(long)]
        level: Option<f64>,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
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

async fn run(args: &RunArgs) -> anyhow::Result<()> {
    let (config, warnings) = Config::resolve(args).context("configuration")?;
    init_tracing(config.log_format);
    for w in warnings {
        tracing::warn!("{w}");
    }
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
    Ok(())
}

async fn client_verb(cmd: Cmd, token: Option<String>) -> anyhow::Result<()> {
    let (args, fut): (ClientArgs, _) = match cmd {
        Cmd::Health(a) => (a.clone(), 0),
        Cmd::Peers(a) => (a.clone(), 1),
        Cmd::Sync { client, level } => {
            let c = Client::new(&client.api, token)?;
            let v = c.sync(level).await?;
            print!("{}", if client.json { format!("{v:#}\n") } else { client::format_sync(&v) });
            return Ok(());
        }
        Cmd::Run | Cmd::Id | Cmd::Keygen { .. } => unreachable!("handled by main"),
    };
    let c = Client::new(&args.api, token)?;
    let v = if fut == 0 { c.health().await? } else { c.peers().await? };
    let out = if args.json {
        format!("{v:#}\n")
    } else if fut == 0 {
        client::format_health(&v)
    } else {
        client::format_peers(&v)
    };
    print!("{out}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            None | Some(Cmd::Run) => run(&cli.run).await,
            Some(Cmd::Id) => {
                let (config, _) = Config::resolve(&cli.run).context("configuration")?;
                let key = aios_cell::identity::load_or_create(&config.data_dir)?;
                println!("{}", key.public().to_peer_id());
                Ok(())
            }
            Some(Cmd::Keygen { path }) => {
                let path = match path {
                    Some(p) => p,
                    None => {
                        let (config, _) = Config::resolve(&cli.run).context("configuration")?;
                        config.data_dir.join(aios_cell::config::SWARM_KEY_FILE)
                    }
                };
                let fingerprint = aios_cell::identity::generate_swarm_key(&path)?;
                println!("wrote {} (fingerprint {fingerprint})", path.display());
                println!("copy it to every cell's data dir, or point AIOS_SWARM_KEY at it");
                Ok(())
            }
            Some(cmd) => client_verb(cmd, cli.run.api_token.clone()).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
