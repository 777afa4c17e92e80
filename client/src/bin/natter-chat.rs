//! natter-chat: the terminal client on natter-client.
//!
//! One command per run for scripts (`send`, `flush`, `read`, `tail`, `conversations`, `group`,
//! `mark-read`, `upload`), or, without a command, an interactive chat in plain line mode:
//! lines in on stdin, lines out on stdout. Logs go to stderr (`NATTER_CHAT_LOG`), so stdout
//! carries only what was asked for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use natter_client::{
    direct, Client, Config, Conversation, Credentials, Draft, Entry, Error, Event, Events, Format,
    Kind, Membership, Presence, Protocol, Receipt, State,
};
use tokio::sync::mpsc;

const LONG_ABOUT: &str = "\
A terminal client for natter, on the natter-client library.

Messages are written to an outbox in --data-dir before anything goes on the wire and leave it
only once the server has stored them: a message sent while the server is unreachable is kept
and sent by the next run (`natter-chat ... flush`, or any other command) with the same data
directory, exactly once. One process at a time may use a data directory.

With a COMMAND it does one thing and exits (for scripts: results on stdout, one per line;
errors and logs on stderr). Without one it is an interactive chat in plain line mode: it reads
lines from stdin and prints lines to stdout, with no cursor movement or screen drawing, so it
works in any terminal, over ssh, in a pipe, in scrollback and with screen readers. Type /help
there for its commands (/open, /dm, /list, /read, /group, /quit); a line that is not a command
is sent to the open conversation.

Every option can also be given in the environment as NATTER_CHAT_<NAME> (NATTER_CHAT_MQTT,
NATTER_CHAT_PASSWORD, NATTER_CHAT_DATA_DIR, ...), which keeps the password off the command
line. The log level is NATTER_CHAT_LOG (default `warn`; e.g. `info`, `natter_client=debug`).";

const EXIT_CODES: &str = "\
Exit status:
  0  done (also: `send` or `mark-read` could not reach the server in time; the message is
     queued in the outbox and the next run sends it)
  1  failed, refused by the server, or timed out (also: a usage error)
  2  the server refused the login, or another connection of this device took the session
     over";

#[derive(Parser, Debug)]
#[command(name = "natter-chat", version, about = "A terminal client for natter", long_about = LONG_ABOUT, after_help = EXIT_CODES)]
struct Cli {
    /// The MQTT server.
    #[arg(long, env = "NATTER_CHAT_MQTT", value_name = "HOST:PORT")]
    mqtt: String,
    /// The HTTP API's base URL (http://host:8080): needed by --token and `upload`.
    #[arg(long, env = "NATTER_CHAT_HTTP", value_name = "URL")]
    http: Option<String>,
    /// The user id to log in as.
    #[arg(long, env = "NATTER_CHAT_USER")]
    user: String,
    /// The account password (better given as NATTER_CHAT_PASSWORD).
    #[arg(long, env = "NATTER_CHAT_PASSWORD", hide_env_values = true)]
    password: String,
    /// Where this device keeps its outbox and read positions (created if missing).
    #[arg(long, env = "NATTER_CHAT_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// This device's name: the MQTT client id is USER.DEVICE.
    #[arg(long, env = "NATTER_CHAT_DEVICE", default_value = "cli")]
    device: String,
    /// The MQTT protocol version.
    #[arg(long, env = "NATTER_CHAT_PROTOCOL", value_enum, default_value = "5")]
    protocol: ProtocolArg,
    /// The payload format (MessagePack is received over MQTT 5 only).
    #[arg(long, env = "NATTER_CHAT_FORMAT", value_enum, default_value = "json")]
    format: FormatArg,
    /// Log in over HTTP with the password and connect with an access token instead.
    #[arg(long, env = "NATTER_CHAT_TOKEN", requires = "http")]
    token: bool,
    /// How long commands that need the connection wait for it.
    #[arg(
        long,
        env = "NATTER_CHAT_CONNECT_TIMEOUT",
        value_name = "SECS",
        default_value_t = 15
    )]
    connect_timeout: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtocolArg {
    #[value(name = "5", alias = "5.0")]
    V5,
    #[value(name = "3.1.1", alias = "3")]
    V311,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    Json,
    Msgpack,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send a message; prints its seq once the server has stored it.
    ///
    /// If the server does not answer within --wait, the message stays queued in the outbox
    /// (exit status 0) and the next run with this data directory sends it.
    Send {
        /// The conversation: d.alice.bob, g.team.
        conv: String,
        /// The text (optional with --media).
        #[arg(required_unless_present = "media", allow_hyphen_values = true)]
        text: Option<String>,
        /// The seq this message replies to.
        #[arg(long, value_name = "SEQ")]
        reply_to: Option<u64>,
        /// The seq of the thread's first message.
        #[arg(long, value_name = "SEQ")]
        thread: Option<u64>,
        /// A media id from `upload` (repeatable).
        #[arg(long = "media", value_name = "ID")]
        media: Vec<String>,
        /// How long to wait for the server to store it.
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        wait: u64,
    },
    /// Connect and send what waits in the outbox; prints how many left it.
    Flush {
        /// How long to wait for the outbox to empty (then exit status 1).
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        wait: u64,
    },
    /// Print a conversation's entries after a seq, oldest first.
    Read {
        conv: String,
        /// Only entries after this seq.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
        /// At most this many entries.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// One JSON object per line (the stored envelope) instead of `#seq from: text`.
        #[arg(long)]
        json: bool,
    },
    /// Print every event (messages, receipts, presence, typing, ...) as a JSON line until
    /// Ctrl-C; exit status 2 if the client stops (login refused, session taken over).
    ///
    /// Events printed count as taken by this device: messages are acknowledged (the sender's
    /// "delivered" receipt) and this device's read position moves past them.
    Tail,
    /// List this user's conversations with unread counts.
    Conversations {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Create a group, add or remove a member.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Mark a conversation read up to a seq (queued like a message if the server is away).
    MarkRead {
        conv: String,
        seq: u64,
        /// How long to wait for the server to take it.
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        wait: u64,
    },
    /// Upload a file over the HTTP API (needs --http); prints its media id for `send --media`.
    Upload { file: PathBuf },
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Create a group owned by this user; prints its conversation id (g.ID).
    Create {
        /// The group id (a-z 0-9 _ -): the conversation is g.ID.
        id: String,
        /// A display name.
        #[arg(long)]
        name: Option<String>,
        /// Users to add as members.
        members: Vec<String>,
    },
    /// Add a member (CONV: g.team, or just team).
    Add { conv: String, user: String },
    /// Remove a member (CONV: g.team, or just team).
    Remove { conv: String, user: String },
}

/// Ends the run with exit status 2: the login was refused, or the session was taken over.
#[derive(Debug)]
struct Fatal(String);

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

fn exit_code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<Fatal>().is_some() {
        return 2;
    }
    match err.downcast_ref::<Error>() {
        Some(Error::Auth(_) | Error::TakenOver) => 2,
        _ => 1,
    }
}

fn main() {
    // Usage errors exit with 1, not clap's 2: 2 means the login was refused.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() { 1 } else { 0 };
            std::process::exit(code);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NATTER_CHAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("natter-chat: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("natter-chat: {err:#}");
            exit_code(&err)
        }
    };
    let _ = std::io::stdout().flush();
    // Not waiting for the runtime: the interactive mode's stdin reader may be blocked in a read.
    std::process::exit(code);
}

fn config(cli: &Cli) -> Config {
    let credentials = if cli.token {
        Credentials::Token {
            password: cli.password.clone(),
        }
    } else {
        Credentials::Password(cli.password.clone())
    };
    let mut config = Config::new(
        cli.mqtt.clone(),
        cli.user.clone(),
        cli.device.clone(),
        credentials,
        cli.data_dir.clone(),
    );
    config.http = cli.http.clone();
    config.protocol = match cli.protocol {
        ProtocolArg::V5 => Protocol::V5,
        ProtocolArg::V311 => Protocol::V311,
    };
    config.format = match cli.format {
        FormatArg::Json => Format::Json,
        FormatArg::Msgpack => Format::MsgPack,
    };
    config
}

async fn run(cli: Cli) -> Result<()> {
    let (client, events) = Client::start(config(&cli)).context("starting the client")?;
    let connect = Duration::from_secs(cli.connect_timeout);
    let result = match cli.command {
        Some(command) => one_command(&client, events, command, connect, &cli.data_dir).await,
        None => Chat::new(client.clone(), connect).run(events).await,
    };
    close(client).await;
    result
}

/// Disconnects cleanly, but never hangs the exit on it.
async fn close(client: Client) {
    let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
}

/// Prints one line on stdout and flushes it (readers may be on a pipe); false once stdout is
/// gone.
fn out(line: &str) -> bool {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|_| stdout.flush())
        .is_ok()
}

/// [`out`] where a closed stdout changes nothing (the interactive mode ends at end of input).
fn say(line: &str) {
    let _ = out(line);
}

/// Waits for the connection; a refused login ends the run with exit status 2.
async fn connected(client: &Client, timeout: Duration) -> Result<()> {
    match client.connected(timeout).await {
        Ok(()) => Ok(()),
        Err(Error::Timeout) => Err(anyhow::anyhow!(
            "could not connect to the server within {}s",
            timeout.as_secs()
        )),
        Err(e) => Err(e.into()),
    }
}

/// A group's conversation id from `g.team` or `team`.
fn group_conv(s: &str) -> String {
    if s.starts_with("g.") || s.starts_with("d.") {
        s.to_string()
    } else {
        format!("g.{s}")
    }
}

async fn one_command(
    client: &Client,
    events: Events,
    command: Command,
    connect: Duration,
    data_dir: &std::path::Path,
) -> Result<()> {
    match command {
        Command::Send {
            conv,
            text,
            reply_to,
            thread,
            media,
            wait,
        } => {
            let draft = Draft {
                text,
                reply_to,
                thread,
                media,
            };
            let sending = client.send(&conv, draft)?;
            match tokio::time::timeout(Duration::from_secs(wait), sending.stored()).await {
                Ok(Ok(stored)) => {
                    out(&stored.seq.to_string());
                    Ok(())
                }
                Ok(Err(e @ (Error::Auth(_) | Error::TakenOver))) => {
                    Err(anyhow::Error::from(e).context("the message stays in the outbox"))
                }
                Ok(Err(e)) => Err(anyhow::Error::from(e).context("the message was not sent")),
                // Still in the outbox: it goes with the next run.
                Err(_) if client.outbox_len()? > 0 => {
                    eprintln!(
                        "natter-chat: no answer from the server within {wait}s; the message is \
                         queued in the outbox in {} and `natter-chat ... flush` (or any later run \
                         with this --data-dir) sends it",
                        data_dir.display()
                    );
                    Ok(())
                }
                // Out of the outbox (the server acknowledged it) but never confirmed stored.
                Err(_) => Err(anyhow::anyhow!(
                    "the server took the message but did not confirm it stored within {wait}s \
                     (refused? `natter-chat tail` shows refusals)"
                )),
            }
        }
        Command::Flush { wait } => {
            let queued = client.outbox_len()?;
            match client.flush(Duration::from_secs(wait)).await {
                Ok(()) => {
                    out(&queued.to_string());
                    Ok(())
                }
                Err(Error::Timeout) => {
                    let left = client.outbox_len()?;
                    Err(anyhow::anyhow!(
                        "{left} of {queued} message(s) still in the outbox after {wait}s \
                         (is the server reachable?)"
                    ))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Read {
            conv,
            after,
            limit,
            json,
        } => {
            connected(client, connect).await?;
            read(client, &conv, after, limit, json).await
        }
        Command::Tail => tail(events).await,
        Command::Conversations { json } => {
            connected(client, connect).await?;
            for c in client.conversations().await? {
                let line = if json {
                    serde_json::to_string(&c)?
                } else {
                    conversation_line(&c)
                };
                if !out(&line) {
                    break;
                }
            }
            Ok(())
        }
        Command::Group(group) => {
            connected(client, connect).await?;
            match group {
                GroupCommand::Create { id, name, members } => {
                    let members: Vec<&str> = members.iter().map(String::as_str).collect();
                    let id = id.strip_prefix("g.").unwrap_or(&id);
                    let conv = client
                        .create_group(Some(id), name.as_deref(), &members)
                        .await?;
                    out(&conv);
                }
                GroupCommand::Add { conv, user } => {
                    client.add_member(&group_conv(&conv), &user).await?
                }
                GroupCommand::Remove { conv, user } => {
                    client.remove_member(&group_conv(&conv), &user).await?
                }
            }
            Ok(())
        }
        Command::MarkRead { conv, seq, wait } => {
            client.mark_read(&conv, seq)?;
            match client.flush(Duration::from_secs(wait)).await {
                Ok(()) => Ok(()),
                Err(Error::Timeout) => {
                    eprintln!(
                        "natter-chat: no answer from the server within {wait}s; the read \
                         marker is queued in the outbox and the next run sends it"
                    );
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Upload { file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("{}", file.display()))?;
            let media = client.upload(bytes).await?;
            out(&media.id);
            Ok(())
        }
    }
}

/// `read`: every entry after `after`, oldest first, page by page.
async fn read(
    client: &Client,
    conv: &str,
    mut after: u64,
    limit: Option<usize>,
    json: bool,
) -> Result<()> {
    const PAGE: usize = 200;
    let mut printed = 0usize;
    loop {
        let want = match limit {
            Some(l) if printed >= l => break,
            Some(l) => (l - printed).min(PAGE),
            None => PAGE,
        };
        let page = client.page_after(conv, after, want).await?;
        for e in page.entries.iter().take(want) {
            let line = if json {
                serde_json::to_string(e)?
            } else {
                entry_line(e)
            };
            if !out(&line) {
                return Ok(());
            }
            printed += 1;
        }
        if !page.more || page.next <= after {
            break;
        }
        after = page.next;
    }
    Ok(())
}

/// `tail`: every event as a JSON line until Ctrl-C, or until the client stops.
async fn tail(mut events: Events) -> Result<()> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = &mut ctrl_c => break,
        };
        let Some(event) = event else {
            anyhow::bail!("the client stopped");
        };
        if !out(&serde_json::to_string(&event)?) {
            break;
        }
        if let Event::Stopped { error } = event {
            return Err(Fatal(format!("stopped: {error}")).into());
        }
    }
    // The last event was printed: it is taken.
    events.done();
    Ok(())
}

// ---- How entries and conversations look to a person ----------------------------------------

/// Text from others made safe for a terminal: no control characters (escape sequences could
/// rewrite the screen), and continuation lines indented.
fn clean(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => s.push_str("\n    "),
            '\t' => s.push(' '),
            c if c.is_control() => s.push('\u{FFFD}'),
            c => s.push(c),
        }
    }
    s
}

/// The first line of a text, at most `max` characters.
fn preview(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut s: String = first.chars().take(max).collect();
    if first.chars().count() > max || text.lines().nth(1).is_some() {
        s.push('…');
    }
    clean(&s)
}

/// `#seq from: text`, with what else the entry carries.
fn entry_line(e: &Entry) -> String {
    let text = e.text.as_deref().map(clean);
    let mut line = match e.kind {
        Kind::Msg => {
            let mut l = format!("#{} {}: ", e.seq, e.from);
            if e.deleted {
                l.push_str("(deleted)");
            } else {
                l.push_str(text.as_deref().unwrap_or(""));
            }
            l
        }
        Kind::Edit => format!(
            "#{} {} edited #{}: {}",
            e.seq,
            e.from,
            e.target.unwrap_or(0),
            text.as_deref().unwrap_or("")
        ),
        Kind::Delete => format!("#{} {} deleted #{}", e.seq, e.from, e.target.unwrap_or(0)),
        Kind::React => format!(
            "#{} {} reacted {} to #{}",
            e.seq,
            e.from,
            clean(e.emoji.as_deref().unwrap_or("?")),
            e.target.unwrap_or(0)
        ),
        Kind::Unreact => format!(
            "#{} {} took back {} on #{}",
            e.seq,
            e.from,
            clean(e.emoji.as_deref().unwrap_or("?")),
            e.target.unwrap_or(0)
        ),
    };
    if !e.media.is_empty() && !e.deleted {
        line.push_str(&format!(" [media: {}]", clean(&e.media.join(", "))));
    }
    if let Some(re) = e.reply_to {
        line.push_str(&format!(" (reply to #{re})"));
    }
    if let Some(th) = e.thread {
        line.push_str(&format!(" (thread #{th})"));
    }
    if e.edited && !e.deleted {
        line.push_str(" (edited)");
    }
    if !e.reactions.is_empty() {
        let r: Vec<String> = e
            .reactions
            .iter()
            .map(|(emoji, n)| format!("{} {n}", clean(emoji)))
            .collect();
        line.push_str(&format!(" [{}]", r.join(", ")));
    }
    line
}

fn conversation_line(c: &Conversation) -> String {
    let mut line = format!("{:<28} {:>4} unread", c.conv, c.unread);
    if let Some(name) = c.name.as_deref().filter(|n| !n.is_empty()) {
        line.push_str(&format!("  \"{}\"", preview(name, 40)));
    }
    if let Some(last) = &c.last {
        let text = if last.deleted {
            "(deleted)".to_string()
        } else {
            preview(last.text.as_deref().unwrap_or(""), 50)
        };
        line.push_str(&format!("  — #{} {}: {}", last.seq, last.from, text));
    }
    line
}

// ---- The interactive mode ------------------------------------------------------------------

const HELP: &str = "\
Commands (anything else is sent to the open conversation; start a line with // to send one
that begins with /):
  /open CONV          open a conversation (d.alice.bob, g.team or just team): its last 20 entries
  /dm USER            open the direct conversation with USER
  /list               your conversations and their unread counts
  /read               mark the open conversation read up to the last entry shown
  /group NAME MEMBER… create a group (NAME as its id if it is one: a-z 0-9 _ -) and open it
  /help               this
  /quit               leave (waits a few seconds for queued messages to go out)
Your messages show ✓ once the server has stored them, then ✓✓ delivered and ✓✓ read.";

/// How far one of this user's messages has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mark {
    Stored,
    Delivered,
    Read,
}

/// Own messages followed per conversation, at most.
const OWN_KEPT: usize = 500;

struct Chat {
    client: Client,
    me: String,
    connect: Duration,
    current: Option<String>,
    /// The highest seq shown or seen per conversation (entries at or below it are not shown
    /// again: history and the live stream overlap).
    seen: HashMap<String, u64>,
    unread: HashMap<String, u64>,
    /// Own messages per conversation and how far each has come (receipts move them on).
    own: HashMap<String, BTreeMap<u64, Mark>>,
    /// Own messages just stored (`Sent`), whose entry follows: shown with ✓.
    stored: HashSet<(String, u64)>,
    presence: HashMap<String, String>,
    /// `None` until the first connect or disconnect.
    online: Option<bool>,
    /// Connected and still catching up: entries of other conversations are counted quietly,
    /// and the server's unread counts are fetched once caught up.
    catching_up: bool,
    /// The conversation list has been printed once.
    listed: bool,
    refresh_tx: mpsc::UnboundedSender<Result<Vec<Conversation>, Error>>,
    refresh_rx: mpsc::UnboundedReceiver<Result<Vec<Conversation>, Error>>,
}

impl Chat {
    fn new(client: Client, connect: Duration) -> Chat {
        let (refresh_tx, refresh_rx) = mpsc::unbounded_channel();
        Chat {
            me: client.user().to_string(),
            client,
            connect,
            current: None,
            seen: HashMap::new(),
            unread: HashMap::new(),
            own: HashMap::new(),
            stored: HashSet::new(),
            presence: HashMap::new(),
            online: None,
            catching_up: true,
            listed: false,
            refresh_tx,
            refresh_rx,
        }
    }

    async fn run(mut self, mut events: Events) -> Result<()> {
        let mut lines = stdin_lines();
        say(&format!(
            "natter-chat: {} — plain line mode; /help for commands",
            self.me
        ));
        match self.client.connected(self.connect).await {
            Ok(()) => match self.client.conversations().await {
                Ok(list) => self.show_list(&list),
                Err(e) => say(&format!("! conversations: {e}")),
            },
            Err(Error::Timeout) => {
                self.online = Some(false);
                say(&format!(
                    "* not connected after {}s (is the server up?): still trying; what you send \
                 waits in the outbox",
                    self.connect.as_secs()
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Event::Stopped { error }) => {
                        say(&format!("! stopped: {error}"));
                        return Err(Fatal(error).into());
                    }
                    Some(event) => self.event(event),
                    None => anyhow::bail!("the client stopped"),
                },
                line = lines.recv() => match line {
                    None => break,
                    Some(line) => {
                        if !self.line(line.trim()).await {
                            break;
                        }
                    }
                },
                Some(list) = self.refresh_rx.recv() => match list {
                    Ok(list) => self.refreshed(&list),
                    Err(e) => tracing::warn!("conversations: {e}"),
                },
                _ = &mut ctrl_c => break,
            }
        }
        events.done();
        self.leave().await;
        Ok(())
    }

    /// Before closing: a few seconds for what waits in the outbox.
    async fn leave(&self) {
        let queued = self.client.outbox_len().unwrap_or(0);
        if queued == 0 {
            return;
        }
        say(&format!("* sending {queued} queued message(s)…"));
        if self.client.flush(Duration::from_secs(5)).await.is_err() {
            let left = self.client.outbox_len().unwrap_or(queued);
            say(&format!(
                "* {left} message(s) stay in the outbox; the next natter-chat run with this data \
                 directory sends them"
            ));
        }
    }

    /// One line typed; false to quit.
    async fn line(&mut self, line: &str) -> bool {
        if line.is_empty() {
            return true;
        }
        if let Some(text) = line.strip_prefix("//") {
            self.send(&format!("/{text}"));
            return true;
        }
        let Some(command) = line.strip_prefix('/') else {
            self.send(line);
            return true;
        };
        let mut words = command.split_whitespace();
        let verb = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        match (verb, args.as_slice()) {
            ("quit" | "q" | "exit", _) => return false,
            ("help" | "h" | "?", _) => {
                say(HELP);
            }
            ("open" | "o", [conv]) => self.open(group_conv(conv)).await,
            ("dm", [user]) => self.open(direct(&self.me, user)).await,
            ("list" | "ls", []) => match self.client.conversations().await {
                Ok(list) => self.show_list(&list),
                Err(e) => {
                    say(&format!("! {e}"));
                }
            },
            ("read", []) => self.mark_read(),
            ("group", [name, members @ ..]) => {
                let id = is_id(name).then_some(*name);
                match self.client.create_group(id, Some(name), members).await {
                    Ok(conv) => {
                        say(&format!("* created {conv}"));
                        self.open(conv).await;
                    }
                    Err(e) => {
                        say(&format!("! {e}"));
                    }
                }
            }
            _ => {
                let usage = HELP
                    .lines()
                    .find(|l| l.trim_start().starts_with(&format!("/{verb} ")));
                match usage {
                    Some(usage) => say(&format!("! usage: {}", usage.trim())),
                    None => say(&format!("! not a command: /{command} (/help lists them)")),
                }
            }
        }
        true
    }

    fn send(&mut self, text: &str) {
        let Some(conv) = self.current.clone() else {
            say("! no conversation open: /open CONV or /dm USER first (/help)");
            return;
        };
        if let Err(e) = self.client.send(&conv, text) {
            say(&format!("! not sent: {e}"));
            return;
        }
        if !matches!(self.client.state(), State::Connected | State::Synced) {
            say("* queued: not connected; it goes out when the connection is back");
        }
    }

    async fn open(&mut self, conv: String) {
        let history = self.client.history(&conv, None, 20).await;
        let (entries, shown) = match history {
            Ok(entries) => (entries, true),
            Err(e @ Error::Refused { .. }) => {
                say(&format!("! {conv}: {e}"));
                return;
            }
            Err(e) => {
                say(&format!(
                    "! {conv}: no history ({e}); new messages show as they come"
                ));
                (Vec::new(), false)
            }
        };
        let unread = self.unread.get(&conv).copied().unwrap_or(0);
        let mut header = format!("── {conv}");
        if unread > 0 {
            header.push_str(&format!(" ({unread} unread; /read marks them read)"));
        }
        say(&format!("{header} ──"));
        for e in entries.iter().rev() {
            self.note_own(e);
            say(&entry_line(e));
        }
        if entries.is_empty() && shown {
            say("(no messages yet)");
        }
        if let Some(max) = entries.iter().map(|e| e.seq).max() {
            let seen = self.seen.entry(conv.clone()).or_default();
            *seen = (*seen).max(max);
        }
        self.current = Some(conv);
    }

    fn mark_read(&mut self) {
        let Some(conv) = self.current.clone() else {
            say("! no conversation open");
            return;
        };
        let Some(seq) = self.seen.get(&conv).copied().filter(|s| *s > 0) else {
            say("* nothing to mark read");
            return;
        };
        match self.client.mark_read(&conv, seq) {
            Ok(()) => {
                self.unread.insert(conv, 0);
                say(&format!("* marked read up to #{seq}"));
            }
            Err(e) => {
                say(&format!("! {e}"));
            }
        }
    }

    fn show_list(&mut self, list: &[Conversation]) {
        self.listed = true;
        if list.is_empty() {
            say("* no conversations yet: /dm USER or /group NAME MEMBER… to start one");
        }
        for c in list {
            self.unread.insert(c.conv.clone(), c.unread);
            say(&conversation_line(c));
        }
    }

    /// The server's unread counts after catching up: print what changed.
    fn refreshed(&mut self, list: &[Conversation]) {
        if !self.listed {
            return self.show_list(list);
        }
        for c in list {
            let before = self.unread.insert(c.conv.clone(), c.unread);
            if Some(&c.conv) != self.current.as_ref() && c.unread > 0 && before != Some(c.unread) {
                say(&format!("* {}: {} unread", c.conv, c.unread));
            }
        }
    }

    /// Follows this user's messages for receipts.
    fn note_own(&mut self, e: &Entry) {
        if e.from != self.me || e.kind != Kind::Msg {
            return;
        }
        let own = self.own.entry(e.conv.clone()).or_default();
        own.entry(e.seq).or_insert(Mark::Stored);
        while own.len() > OWN_KEPT {
            own.pop_first();
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                // The first connection needs no news: the conversation list shows it.
                if self.online == Some(false) {
                    say("* connected");
                }
                self.online = Some(true);
                self.catching_up = true;
            }
            Event::Disconnected { reason } => {
                if self.online != Some(false) {
                    say(&format!("* disconnected ({reason}); reconnecting…"));
                }
                self.online = Some(false);
            }
            Event::Synced => {
                self.catching_up = false;
                let client = self.client.clone();
                let tx = self.refresh_tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(client.conversations().await);
                });
            }
            Event::Entry(e) => self.entry(e),
            Event::Sent { conv, seq, .. } => {
                if Some(&conv) == self.current.as_ref() {
                    self.stored.insert((conv, seq));
                } else {
                    say(&format!("✓ stored in {conv} as #{seq}"));
                }
            }
            Event::Receipt(r) => self.receipt(r),
            Event::Presence(p) => self.presence(p),
            Event::Typing { conv, user } => {
                if Some(&conv) == self.current.as_ref() && user != self.me {
                    say(&format!("* {user} is typing…"));
                }
            }
            Event::Membership(m) => self.membership(m),
            Event::Refused(err) => {
                let mut line = format!("! refused ({}): {}", err.error, clean(&err.message));
                if !err.topic.is_empty() {
                    line.push_str(&format!(" [{}]", clean(&err.topic)));
                }
                say(&line);
            }
            Event::HistoryStartsAt { conv, first } => say(&format!(
                "* {conv}: history before #{first} was removed by retention"
            )),
            // Handled by the loop.
            Event::Stopped { .. } => {}
        };
    }

    fn entry(&mut self, e: Entry) {
        let seen = self.seen.entry(e.conv.clone()).or_default();
        if e.seq <= *seen {
            return;
        }
        *seen = e.seq;
        self.note_own(&e);
        if Some(&e.conv) == self.current.as_ref() {
            let mut line = entry_line(&e);
            if self.stored.remove(&(e.conv.clone(), e.seq)) {
                line.push_str(" ✓");
            }
            say(&line);
            return;
        }
        if e.from == self.me || e.kind != Kind::Msg || self.catching_up {
            // Caught-up counts come from the server once synced.
            return;
        }
        let unread = self.unread.entry(e.conv.clone()).or_default();
        *unread += 1;
        let text = if e.text.is_none() && !e.media.is_empty() {
            "[media]".to_string()
        } else {
            preview(e.text.as_deref().unwrap_or(""), 60)
        };
        say(&format!(
            "* [{}] {}: {} ({} unread)",
            e.conv, e.from, text, unread
        ));
    }

    fn receipt(&mut self, r: Receipt) {
        if r.user == self.me {
            // Read on another device of this user.
            if r.kind == "read" && self.seen.get(&r.conv).is_some_and(|s| r.seq >= *s) {
                self.unread.insert(r.conv, 0);
            }
            return;
        }
        let mark = match r.kind.as_str() {
            "delivered" => Mark::Delivered,
            "read" => Mark::Read,
            _ => return,
        };
        let Some(own) = self.own.get_mut(&r.conv) else {
            return;
        };
        let mut moved = Vec::new();
        for (seq, m) in own.range_mut(..=r.seq) {
            if *m < mark {
                *m = mark;
                moved.push(format!("#{seq}"));
            }
        }
        // Read is as far as a message goes.
        own.retain(|_, m| *m != Mark::Read);
        if moved.is_empty() {
            return;
        }
        let what = match mark {
            Mark::Read => format!("✓✓ read by {}", r.user),
            _ => format!("✓✓ delivered to {}", r.user),
        };
        let place = if Some(&r.conv) == self.current.as_ref() {
            String::new()
        } else {
            format!(" in {}", r.conv)
        };
        say(&format!("  {what}{place}: {}", moved.join(" ")));
    }

    fn presence(&mut self, p: Presence) {
        if p.user == self.me {
            return;
        }
        let before = self.presence.insert(p.user.clone(), p.status.clone());
        // The first status of a user (the retained one, at connect) is not news.
        if before.is_some_and(|b| b != p.status) {
            say(&format!("* {} is {}", p.user, p.status));
        }
    }

    fn membership(&mut self, m: Membership) {
        let by =
            m.by.as_deref()
                .map(|b| format!(" (by {b})"))
                .unwrap_or_default();
        let user = m.user.as_deref().unwrap_or("?");
        let who = if user == self.me { "you" } else { user };
        let line = match m.kind.as_str() {
            "member_added" => format!("* {who} joined {}{by}", m.conv),
            "member_removed" => format!("* {who} left {}{by}", m.conv),
            "role_changed" => format!(
                "* {who} {} now {} in {}{by}",
                if who == "you" { "are" } else { "is" },
                m.role.as_deref().unwrap_or("?"),
                m.conv
            ),
            "conversation_updated" => {
                let mut l = format!("* {} updated{by}", m.conv);
                if let Some(name) = &m.name {
                    l.push_str(&format!(": name \"{}\"", clean(name)));
                }
                if let Some(topic) = &m.topic {
                    l.push_str(&format!(", topic \"{}\"", clean(topic)));
                }
                l
            }
            other => format!("* {}: {other}{by}", m.conv),
        };
        say(&line);
    }
}

/// A user or group id: 1-32 of a-z 0-9 _ -.
fn is_id(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Lines from stdin, read on a thread of their own (a blocking read never holds the runtime);
/// the channel closes at end of input.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).to_string();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}
