//! The `natter` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use natter::chat::Role;
use natter::config::{Backend, Config, LogFormat, Overrides, DEFAULT_TOML};
use natter::server::{self, Listeners};
use natter::store::{self, Store};
use natter::{password, topics};
use tokio_util::sync::CancellationToken;

/// jemalloc instead of the system allocator: messages are allocated on the connection tasks'
/// threads and freed on the history writer's (and the reverse for what it stores), and glibc's
/// malloc takes the owning arena's lock for each such free (measured: ~8 % of the broker's CPU
/// in lock waits and wake-ups in the chat benchmark; jemalloc: about +35 % chat messages per
/// second).
/// mimalloc was as fast but held 1.2 KiB more per idle connection, over the 4 KiB budget.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Manage accounts (works while the server runs).
    User {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage group conversations (works while the server runs).
    Conv {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: ConvCommand,
    },
    /// Bring the configured database's schema up to date, without starting the server (the
    /// server does it at start too): for PostgreSQL, before new versions of natter roll out.
    Migrate {
        #[command(flatten)]
        common: Common,
    },
    /// Copy the SQLite data directory's database into an empty PostgreSQL database (stop the
    /// server first: what it writes during the copy is not copied).
    MigrateToPostgres {
        #[command(flatten)]
        common: Common,
        /// The target database: postgres://user:password@host:port/database.
        #[arg(long)]
        to: String,
    },
}

/// Where the data is, for commands that work on the store.
#[derive(Args)]
struct Common {
    /// Configuration file (TOML).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; prints a generated password unless one is given.
    Add {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// List users.
    List,
    /// Remove a user; their live connections are closed.
    Remove { name: String },
    /// Set a new password (generated and printed unless given).
    Passwd {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Make a user an admin (or take it back with --revoke).
    Admin {
        name: String,
        #[arg(long)]
        revoke: bool,
    },
}

#[derive(Subcommand)]
enum ConvCommand {
    /// Create a group; prints its conversation id (g.{id}).
    Create {
        /// The group's owner.
        #[arg(long)]
        owner: String,
        /// Group id (default: random).
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value = "")]
        name: String,
        /// Members besides the owner (repeat the flag).
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// Add a member to a group, or change their role.
    Add {
        conv: String,
        user: String,
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Remove a member from a group.
    Remove { conv: String, user: String },
    /// List groups and their members.
    List,
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
        Command::User { common, command } => run_admin(&common, |store, config| {
            user_command(store, config, command)
        }),
        Command::Conv { common, command } => {
            run_admin(&common, |store, _| conv_command(store, command))
        }
        Command::Migrate { common } => run_admin(&common, |_, config| {
            // Opening the store migrated it.
            let backend = match config.storage.backend {
                Backend::Sqlite => "SQLite",
                Backend::Postgres => "PostgreSQL",
            };
            println!("the {backend} schema is up to date");
            Ok(())
        }),
        Command::MigrateToPostgres { common, to } => migrate_to_postgres(&common, &to),
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

/// The configuration of a command that works on the store; a bad one is said (exit code 2).
fn admin_config(common: &Common) -> Result<Config, ExitCode> {
    let overrides = Overrides {
        data_dir: common.data_dir.clone(),
        ..Overrides::default()
    };
    Config::load(common.config.as_deref(), std::env::vars(), &overrides).map_err(|e| {
        eprintln!("natter: {e}");
        ExitCode::from(2)
    })
}

/// Runs an account or conversation command against the store.
fn run_admin(
    common: &Common,
    f: impl FnOnce(&dyn Store, &Config) -> anyhow::Result<()>,
) -> ExitCode {
    let config = match admin_config(common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = store::open(&config.storage)
        .context("cannot open the store")
        .and_then(|store| f(store.as_ref(), &config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Copies the SQLite database into PostgreSQL and prints what went over.
fn migrate_to_postgres(common: &Common, url: &str) -> ExitCode {
    let config = match admin_config(common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let data_dir = &config.storage.data_dir;
    let started = Instant::now();
    match store::transfer::sqlite_to_postgres(data_dir, url) {
        Ok(copied) => {
            let secs = started.elapsed().as_secs_f64();
            // The URL is not repeated: it may hold a password.
            println!(
                "migrated {} to PostgreSQL in {secs:.1} s ({:.0} rows/s): {copied}",
                data_dir.join("natter.db").display(),
                copied.total() as f64 / secs.max(0.001),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("natter: migrate-to-postgres: {e}");
            ExitCode::FAILURE
        }
    }
}

fn user_command(store: &dyn Store, config: &Config, command: UserCommand) -> anyhow::Result<()> {
    let iterations = config.auth.pbkdf2_iterations;
    let password_or_generated = |given: Option<String>| -> anyhow::Result<(String, bool)> {
        match given {
            Some(p) if p.is_empty() => bail!("the password must not be empty"),
            Some(p) => Ok((p, false)),
            None => Ok((password::generate()?, true)),
        }
    };
    match command {
        UserCommand::Add { name, password } => {
            if !topics::valid_id(&name) {
                bail!("`{name}` is not a valid user id: use 1-32 of a-z, 0-9, _ and -");
            }
            let (pw, generated) = password_or_generated(password)?;
            store.add_user(&name, &password::hash(&pw, iterations)?)?;
            if generated {
                println!("created user {name} with password: {pw}");
            } else {
                println!("created user {name}");
            }
        }
        UserCommand::List => {
            for u in store.list_users()? {
                println!("{}{}", u.id, if u.admin { " (admin)" } else { "" });
            }
        }
        UserCommand::Remove { name } => {
            if !store.remove_user(&name)? {
                bail!("no user {name}");
            }
            println!("removed user {name}");
        }
        UserCommand::Passwd { name, password } => {
            let (pw, generated) = password_or_generated(password)?;
            if !store.set_password(&name, &password::hash(&pw, iterations)?)? {
                bail!("no user {name}");
            }
            if generated {
                println!("new password for {name}: {pw}");
            } else {
                println!("password changed for {name}");
            }
        }
        UserCommand::Admin { name, revoke } => {
            if !store.set_admin(&name, !revoke)? {
                bail!("no user {name}");
            }
            println!(
                "{name} is {}an admin",
                if revoke { "no longer " } else { "" }
            );
        }
    }
    Ok(())
}

fn conv_command(store: &dyn Store, command: ConvCommand) -> anyhow::Result<()> {
    match command {
        ConvCommand::Create {
            owner,
            id,
            name,
            members,
        } => {
            let id = id.unwrap_or_else(|| natter::ids::random_hex(6));
            if !topics::valid_id(&id) {
                bail!("`{id}` is not a valid group id: use 1-32 of a-z, 0-9, _ and -");
            }
            let conv = topics::group_conv(&id);
            let mut roster = vec![(owner.as_str(), Role::Owner.as_str())];
            for m in &members {
                if !roster.iter().any(|(u, _)| u == m) {
                    roster.push((m.as_str(), Role::Member.as_str()));
                }
            }
            store
                .create_conversation(&conv, false, &name, &owner, &roster)
                .context("cannot create the group (do all members exist?)")?;
            println!("{conv}");
        }
        ConvCommand::Add { conv, user, role } => {
            let role = Role::parse(&role)
                .with_context(|| format!("`{role}` is not a role: owner, admin or member"))?;
            store
                .set_member(&conv, &user, role.as_str())
                .context("cannot add the member (do the group and user exist?)")?;
            println!("{user} is {} of {conv}", role.as_str());
        }
        ConvCommand::Remove { conv, user } => {
            if !store.remove_member(&conv, &user)? {
                bail!("{user} is not a member of {conv}");
            }
            println!("removed {user} from {conv}");
        }
        ConvCommand::List => {
            let snap = store.snapshot()?;
            for c in snap.conversations.iter().filter(|c| c.id.starts_with("g.")) {
                let mut members: Vec<String> = snap
                    .members
                    .iter()
                    .filter(|(conv, _, _)| conv == &c.id)
                    .map(|(_, u, r)| format!("{u} ({r})"))
                    .collect();
                members.sort();
                println!("{} {:?}: {}", c.id, c.name, members.join(", "));
            }
        }
    }
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    std::fs::create_dir_all(&config.storage.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            config.storage.data_dir.display()
        )
    })?;
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
