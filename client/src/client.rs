//! The app's handle: sends go to the outbox and return a [`Sending`] that resolves when the
//! server has stored the message; requests go out over the live connection; [`Events`] yields
//! what happened, and acknowledges each message only once the app has taken it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::random_id;
use crate::codec::Outgoing;
use crate::config::{Config, Credentials};
use crate::http::{Access, Api, Link, Media};
use crate::local::{LocalStore, Topic};
use crate::model::{Draft, Entry, Event, Stored};
use crate::session::{self, Command, Waiters};
use crate::Error;

/// Where the connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Connecting,
    /// Connected, catching up.
    Connected,
    /// Connected and caught up: what arrives is live.
    Synced,
    /// Stopped for good: refused credentials, a takeover, or closed by the app.
    Stopped(Error),
}

/// What the session and the handle share.
pub(crate) struct Shared {
    pub config: Config,
    pub local: LocalStore,
    pub waiters: Waiters,
    pub api: Option<Api>,
    /// The current access token (token logins, and media with either login).
    pub access: tokio::sync::Mutex<Option<Access>>,
}

impl Shared {
    /// A usable access token: the current one, else one from the stored refresh token, else
    /// a fresh login with the password.
    pub async fn access_token(&self) -> Result<String, Error> {
        let api = self
            .api
            .as_ref()
            .ok_or_else(|| Error::Config("this needs the HTTP API's URL".into()))?;
        let mut access = self.access.lock().await;
        if let Some(a) = access.as_ref().filter(|a| a.fresh()) {
            return Ok(a.token.clone());
        }
        let refreshed = match self.local.setting("refresh_token")? {
            Some(refresh) => api.refresh(&refresh).await.ok(),
            None => None,
        };
        let tokens = match refreshed {
            Some(t) => t,
            None => {
                let password = match &self.config.credentials {
                    Credentials::Password(p) | Credentials::Token { password: p } => p,
                };
                api.login(&self.config.user, password, &self.config.device)
                    .await?
            }
        };
        self.local
            .set_setting("refresh_token", Some(&tokens.refresh_token))?;
        let token = tokens.access_token.clone();
        *access = Some(Access::from(&tokens));
        Ok(token)
    }

    /// Forgets the tokens after the server refused them.
    pub async fn forget_tokens(&self) -> Result<(), Error> {
        *self.access.lock().await = None;
        self.local.set_setting("refresh_token", None)
    }
}

/// A conversation in the `conversations` reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Conversation {
    pub conv: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub unread: u64,
    #[serde(default)]
    pub last: Option<Entry>,
}

/// One page of a conversation after a `seq`.
#[derive(Debug, Clone)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub more: bool,
    /// Ask again from here when `more`.
    pub next: u64,
}

/// A message on its way. It is in the outbox already: dropping this handle loses nothing.
pub struct Sending {
    pub conv: String,
    pub cid: String,
    stored: oneshot::Receiver<Result<Stored, Error>>,
}

impl Sending {
    /// Waits until the server has stored the message (its `seq`), or refused it.
    pub async fn stored(self) -> Result<Stored, Error> {
        self.stored.await.unwrap_or(Err(Error::Closed))
    }
}

/// What happened, in order. Each live message is acknowledged to the server (which makes the
/// sender's "delivered" receipt) only when the app asks for the next event: the handler of the
/// previous one has returned. The cursor the client resumes from moves at the same time.
///
/// Keep taking events: the server has at most a window of unacknowledged messages in flight
/// to a client (64 with natter's defaults), and replies, own copies and sync pages queue behind
/// them. A handler that awaits [`Sending::stored`] or a request while dozens of events wait
/// untaken waits for itself; spawn such work instead.
pub struct Events {
    rx: mpsc::UnboundedReceiver<(Event, Option<u64>)>,
    /// Weak: the session stops once the app has dropped every [`Client`] handle.
    commands: mpsc::WeakUnboundedSender<Command>,
    taken: Option<u64>,
}

impl Events {
    /// The next event; `None` once the client is closed or stopped.
    pub async fn next(&mut self) -> Option<Event> {
        self.done();
        let (event, taken) = self.rx.recv().await?;
        self.taken = taken;
        Some(event)
    }

    /// Marks the last event as handled without waiting for another.
    pub fn done(&mut self) {
        if let (Some(id), Some(commands)) = (self.taken.take(), self.commands.upgrade()) {
            let _ = commands.send(Command::Taken(id));
        }
    }
}

/// A connected (or connecting) client. Cheap to clone; dropping the last clone stops the
/// connection (without a DISCONNECT: use [`Client::close`] for a clean one).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<State>,
}

impl Client {
    /// Opens the local store and starts connecting in the background. Messages can be sent at
    /// once (they wait in the outbox).
    pub fn start(config: Config) -> Result<(Client, Events), Error> {
        config.validate()?;
        let local = LocalStore::open(&config.data_dir)?;
        let api = config.http.as_deref().map(Api::new).transpose()?;
        let shared = Arc::new(Shared {
            config,
            local,
            waiters: Arc::new(Mutex::new(Default::default())),
            api,
            access: tokio::sync::Mutex::new(None),
        });
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(State::Connecting);
        session::spawn(shared.clone(), command_rx, events_tx, state_tx)?;
        let events = Events {
            rx: events_rx,
            commands: commands.downgrade(),
            taken: None,
        };
        Ok((
            Client {
                shared,
                commands,
                state,
            },
            events,
        ))
    }

    /// This client's user id.
    pub fn user(&self) -> &str {
        &self.shared.config.user
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Waits until connected and caught up (or stopped: then the error).
    pub async fn synced(&self, timeout: Duration) -> Result<(), Error> {
        self.wait_state(timeout, |s| matches!(s, State::Synced))
            .await
    }

    /// Waits until connected (catching up may still run), or stopped: then the error.
    pub async fn connected(&self, timeout: Duration) -> Result<(), Error> {
        self.wait_state(timeout, |s| matches!(s, State::Connected | State::Synced))
            .await
    }

    async fn wait_state(
        &self,
        timeout: Duration,
        reached: impl Fn(&State) -> bool,
    ) -> Result<(), Error> {
        let mut state = self.state.clone();
        let wait = async {
            state
                .wait_for(|s| reached(s) || matches!(s, State::Stopped(_)))
                .await
                .map(|s| s.clone())
        };
        match tokio::time::timeout(timeout, wait).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(_)) => Err(Error::Closed),
            Ok(Ok(State::Stopped(why))) => Err(why),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Sends a message to `conv`: written to the outbox first, then published, resent with
    /// the same `cid` after any failure or restart until the server acknowledges it.
    pub fn send(&self, conv: &str, draft: impl Into<Draft>) -> Result<Sending, Error> {
        let draft = draft.into();
        if draft.text.is_none() && draft.media.is_empty() {
            return Err(Error::Refused {
                code: "invalid_message".into(),
                message: "a message needs text or media".into(),
            });
        }
        self.queue(
            conv,
            Topic::Message,
            Outgoing {
                t: self.seal(conv, draft.text)?,
                re: draft.reply_to,
                th: draft.thread,
                media: draft.media,
                ..Outgoing::default()
            },
        )
    }

    /// Replaces the text of one of this user's messages.
    pub fn edit(&self, conv: &str, target: u64, text: &str) -> Result<Sending, Error> {
        let t = self.seal(conv, Some(text.to_string()))?;
        self.event(conv, "edit", target, t, None)
    }

    /// Deletes a message (the author, or a group's owner or admin).
    pub fn delete(&self, conv: &str, target: u64) -> Result<Sending, Error> {
        self.event(conv, "delete", target, None, None)
    }

    pub fn react(&self, conv: &str, target: u64, emoji: &str) -> Result<Sending, Error> {
        self.event(conv, "react", target, None, Some(emoji.to_string()))
    }

    pub fn unreact(&self, conv: &str, target: u64, emoji: &str) -> Result<Sending, Error> {
        self.event(conv, "unreact", target, None, Some(emoji.to_string()))
    }

    /// Marks `conv` read up to `seq` (kept in the outbox like a message: it reaches the server
    /// even if sent offline).
    pub fn mark_read(&self, conv: &str, seq: u64) -> Result<(), Error> {
        check_conv(conv)?;
        let body = Outgoing {
            read: Some(seq),
            ..Outgoing::default()
        };
        let body = serde_json::to_vec(&body).map_err(|e| Error::Protocol(e.to_string()))?;
        self.shared
            .local
            .push(conv, Topic::Read, &random_id(12), &body)?;
        self.command(Command::Outbox)
    }

    /// Tells the other members this user is typing (QoS 0, dropped when offline).
    pub fn typing(&self, conv: &str) -> Result<(), Error> {
        check_conv(conv)?;
        self.command(Command::Typing(conv.to_string()))
    }

    /// Sets how others see this user: `online` or `away`, or hidden.
    pub async fn set_presence(&self, status: &str, hidden: bool) -> Result<(), Error> {
        self.request("presence", json!({"status": status, "hidden": hidden}))
            .await
            .map(|_| ())
    }

    /// Any request of `topics.md` ("Requests"): the reply, or the server's refusal. The
    /// session bounds the wait: `Timeout` after 10 s without a reply, `Disconnected` when the
    /// connection drops (or is down when asked).
    pub async fn request(&self, op: &str, body: Value) -> Result<Value, Error> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Request {
            op: op.to_string(),
            body,
            reply: tx,
        })?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// The user's conversations, with unread counts and each one's newest entry.
    pub async fn conversations(&self) -> Result<Vec<Conversation>, Error> {
        let reply = self.request("conversations", json!({})).await?;
        parse(&reply["conversations"])
    }

    /// Creates a group this user owns; returns its conversation id (`g.{id}`).
    pub async fn create_group(
        &self,
        id: Option<&str>,
        name: Option<&str>,
        members: &[&str],
    ) -> Result<String, Error> {
        let mut body = json!({"members": members});
        if let Some(id) = id {
            body["id"] = json!(id);
        }
        if let Some(name) = name {
            body["name"] = json!(name);
        }
        let reply = self.request("group.create", body).await?;
        parse(&reply["conv"])
    }

    pub async fn add_member(&self, conv: &str, user: &str) -> Result<(), Error> {
        self.request("group.add", json!({"conv": conv, "user": user}))
            .await
            .map(|_| ())
    }

    pub async fn remove_member(&self, conv: &str, user: &str) -> Result<(), Error> {
        self.request("group.remove", json!({"conv": conv, "user": user}))
            .await
            .map(|_| ())
    }

    pub async fn leave(&self, conv: &str) -> Result<(), Error> {
        self.request("group.leave", json!({"conv": conv}))
            .await
            .map(|_| ())
    }

    /// `[{"user", "role"}]` of a conversation.
    pub async fn members(&self, conv: &str) -> Result<Value, Error> {
        let reply = self.request("members", json!({"conv": conv})).await?;
        Ok(reply["members"].clone())
    }

    /// Entries of `conv` after `after`, oldest first (what `sync` gives).
    pub async fn page_after(&self, conv: &str, after: u64, limit: usize) -> Result<Page, Error> {
        let reply = self
            .request(
                "sync",
                json!({"conv": conv, "after": after, "limit": limit}),
            )
            .await?;
        Ok(Page {
            entries: self.open_all(parse(&reply["messages"])?),
            more: reply["more"].as_bool().unwrap_or(false),
            next: reply["next"].as_u64().unwrap_or(after),
        })
    }

    /// Entries of `conv` before `before` (the newest without it), newest first.
    pub async fn history(
        &self,
        conv: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Entry>, Error> {
        let mut body = json!({"conv": conv, "limit": limit});
        if let Some(b) = before {
            body["before"] = json!(b);
        }
        let reply = self.request("history", body).await?;
        Ok(self.open_all(parse(&reply["messages"])?))
    }

    /// Full-text search over this user's conversations, newest first. (With an end-to-end
    /// codec the server sees only sealed text, so search finds nothing in it.)
    pub async fn search(&self, q: &str, limit: usize) -> Result<Vec<Entry>, Error> {
        let reply = self
            .request("search", json!({"q": q, "limit": limit}))
            .await?;
        Ok(self.open_all(parse(&reply["messages"])?))
    }

    /// Uploads a file over the HTTP API; send its id in a draft's `media`.
    pub async fn upload(&self, bytes: Vec<u8>) -> Result<Media, Error> {
        let token = self.shared.access_token().await?;
        self.api()?.upload(&token, bytes).await
    }

    /// A signed, expiring link to media (this user's upload, or shared in a conversation
    /// with them).
    pub async fn media_link(&self, media: &str) -> Result<Link, Error> {
        let token = self.shared.access_token().await?;
        self.api()?.link(&token, media).await
    }

    /// Downloads media through a fresh signed link.
    pub async fn download(&self, media: &str) -> Result<Vec<u8>, Error> {
        let link = self.media_link(media).await?;
        self.api()?.download(&link.url).await
    }

    /// Messages in the outbox, waiting for the server.
    pub fn outbox_len(&self) -> Result<u64, Error> {
        self.shared.local.outbox_len()
    }

    /// Waits until the outbox is empty (every message acknowledged), up to `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.outbox_len()? == 0 {
                return Ok(());
            }
            if let State::Stopped(why) = self.state() {
                return Err(why);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Disconnects cleanly (MQTT DISCONNECT) and stops. The outbox stays for the next start.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn api(&self) -> Result<&Api, Error> {
        self.shared
            .api
            .as_ref()
            .ok_or_else(|| Error::Config("this needs the HTTP API's URL".into()))
    }

    fn seal(&self, conv: &str, text: Option<String>) -> Result<Option<String>, Error> {
        check_conv(conv)?;
        text.map(|t| self.shared.config.codec.seal(conv, t))
            .transpose()
    }

    /// Entries as the app sees them: each text through the codec.
    fn open_all(&self, entries: Vec<Entry>) -> Vec<Entry> {
        entries
            .into_iter()
            .map(|e| session::open_entry(&*self.shared.config.codec, e))
            .collect()
    }

    fn event(
        &self,
        conv: &str,
        op: &str,
        target: u64,
        t: Option<String>,
        emoji: Option<String>,
    ) -> Result<Sending, Error> {
        self.queue(
            conv,
            Topic::Event,
            Outgoing {
                op: Some(op.to_string()),
                target: Some(target),
                t,
                emoji,
                ..Outgoing::default()
            },
        )
    }

    /// Writes to the outbox, registers the handle, wakes the session.
    fn queue(&self, conv: &str, topic: Topic, mut body: Outgoing) -> Result<Sending, Error> {
        check_conv(conv)?;
        // Not written unless it can go: a stopped client would report a failed send of a
        // message its next start then delivers (and an app retrying would store it twice).
        if self.commands.is_closed() {
            return Err(Error::Closed);
        }
        let cid = random_id(12);
        body.cid = Some(cid.clone());
        let json = serde_json::to_vec(&body).map_err(|e| Error::Protocol(e.to_string()))?;
        // One too large for any server's packet would block the outbox behind it for good.
        if json.len() > MAX_MESSAGE {
            return Err(Error::Refused {
                code: "too_large".into(),
                message: format!("{} bytes; at most {MAX_MESSAGE}", json.len()),
            });
        }
        let (tx, rx) = oneshot::channel();
        session::wait_for(&self.shared.waiters, conv, &cid, tx);
        self.shared.local.push(conv, topic, &cid, &json)?;
        self.command(Command::Outbox)?;
        Ok(Sending {
            conv: conv.to_string(),
            cid,
            stored: rx,
        })
    }

    fn command(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).map_err(|_| Error::Closed)
    }
}

/// The largest message the client queues (natter's default packet limit is 1 MiB, its text
/// limit 16 KiB; a codec may grow the text).
const MAX_MESSAGE: usize = 256 * 1024;

/// The direct conversation of two users: `d.{a}.{b}`, the ids sorted.
pub fn direct(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("d.{x}.{y}")
}

/// A conversation id is one topic level: no `/`, no wildcards.
fn check_conv(conv: &str) -> Result<(), Error> {
    if conv.is_empty() || conv.contains(['/', '+', '#']) {
        return Err(Error::Config(format!(
            "conversation {conv:?}: not a conversation id"
        )));
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, Error> {
    serde_json::from_value(v.clone()).map_err(|e| Error::Protocol(format!("reply: {e}")))
}
