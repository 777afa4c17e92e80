//! The `natter` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use natter::config::{Config, LogFormat, Overrides, DEFAULT_TOML};
use natter::server::{self, Listeners};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "natter",
    version,
    about = "A chat server that is an MQTT broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Configuration file (TOML); keys it leaves out keep their defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// MQTT/TCP listen address, e.g. 0.0.0.0:1883.
        #[arg(long)]
        mqtt: Option<String>,
        /// MQTT over WebSocket listen address ("" disables).
        #[arg(long)]
        ws: Option<String>,
        /// HTTP listen address.
        #[arg(long)]
        http: Option<String>,
        /// Data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the embedded default configuration.
    Print,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Print,
        } => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        Command::Serve {
            config,
            mqtt,
            ws,
            http,
            data_dir,
        } => {
            let overrides = Overrides {
                mqtt,
                ws,
                http,
                data_dir,
            };
            let config = match Config::load(config.as_deref(), std::env::vars(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("natter: {e}");
                    return ExitCode::from(2);
                }
            };
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("natter: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    std::fs::create_dir_all(&config.storage.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            config.storage.data_dir.display()
        )
    })?;
    if !config.auth.allow_anonymous {
        tracing::warn!(
            "no client can log in: there are no accounts yet and anonymous access is off \
             (set NATTER_AUTH_ALLOW_ANONYMOUS=true or auth.allow_anonymous)"
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        server::run(config, listeners, shutdown).await?;
        Ok(())
    })
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
