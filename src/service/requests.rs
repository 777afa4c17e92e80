//! Changes to accounts and conversations made while the server runs: requests on
//! `q/{user}/{op}`, and changes other processes (`natter user …`, `natter conv …`) commit to the
//! store, which [`ChatService::watch`] picks up. Each change is committed to the store first,
//! then applied to the shared [`Directory`], then announced on the members' `u/{user}/events`.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::push::Pusher;
use super::signals::Signal;
use crate::chat::{Denied, Directory, Role};
use crate::router::{Event, Message};
use crate::store::{Store, StoreError};
use crate::topics;

/// How often the store is checked for other processes' changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("storage task failed")]
    Join,
}

impl ServiceError {
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Denied(d) => d.code(),
            ServiceError::BadRequest(_) => "bad_request",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::Store(_) | ServiceError::Join => "internal",
        }
    }
}

/// A request read from `q/{user}/{op}`.
#[derive(Debug)]
pub struct Request {
    pub user: Arc<str>,
    pub op: String,
    pub payload: Bytes,
    /// MQTT 5 response topic (used only when it lies in the user's own stream).
    pub response_topic: Option<String>,
    pub correlation: Option<Bytes>,
}

pub struct ChatService {
    store: Arc<Store>,
    directory: Arc<RwLock<Directory>>,
    router: mpsc::Sender<Event>,
    signals: mpsc::UnboundedSender<Signal>,
    pusher: Arc<Pusher>,
    /// Serialises changes, so a reload never races a change made here.
    changes: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberOp {
    conv: String,
    user: String,
    #[serde(default)]
    role: Option<Role>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConvOp {
    conv: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    topic: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserOp {
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncOp {
    /// One conversation, after this sequence number…
    #[serde(default)]
    conv: Option<String>,
    #[serde(default)]
    after: u64,
    /// …or all of the user's conversations after this stream position (message id).
    #[serde(default)]
    since: i64,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryOp {
    conv: String,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchOp {
    q: String,
    #[serde(default)]
    limit: Option<usize>,
}

/// Page size bounds for history replies.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

fn page_size(limit: Option<usize>) -> usize {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

fn parse<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, ServiceError> {
    let payload = if payload.is_empty() { b"{}" } else { payload };
    serde_json::from_slice(payload).map_err(|e| ServiceError::BadRequest(e.to_string()))
}

impl ChatService {
    pub fn new(
        store: Arc<Store>,
        directory: Arc<RwLock<Directory>>,
        router: mpsc::Sender<Event>,
        signals: mpsc::UnboundedSender<Signal>,
        pusher: Arc<Pusher>,
    ) -> ChatService {
        ChatService {
            store,
            directory,
            router,
            signals,
            pusher,
            changes: tokio::sync::Mutex::new(()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Directory> {
        self.directory.write().unwrap_or_else(|e| e.into_inner())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| ServiceError::Join)?
            .map_err(ServiceError::from)
    }

    /// Answers one request on the requester's reply topic (or MQTT 5 response topic).
    pub async fn handle(&self, req: Request) {
        let result = self.dispatch(&req).await;
        let body = match result {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v
            }
            Err(e) => {
                if let ServiceError::Store(err) = &e {
                    tracing::error!(error = %err, op = %req.op, "request failed in storage");
                }
                json!({"ok": false, "error": e.code(), "message": e.to_string()})
            }
        };
        let own_stream = |t: &str| matches!(topics::classify(t), Some(topics::ChatTopic::Stream { user }) if user == &*req.user);
        let topic = match req.response_topic.as_deref() {
            Some(t) if own_stream(t) => t.to_string(),
            _ => topics::user_reply(&req.user, &req.op),
        };
        let mut message = Message::server(topic, body.to_string());
        if let Some(c) = req.correlation.clone() {
            message
                .properties
                .get_or_insert_with(Default::default)
                .correlation_data = Some(c);
        }
        self.send(message).await;
    }

    /// The same operations for the HTTP API: one implementation, two ways in.
    pub async fn call(&self, user: &str, op: &str, body: &Value) -> Result<Value, ServiceError> {
        let req = Request {
            user: user.into(),
            op: op.to_string(),
            payload: Bytes::from(body.to_string()),
            response_topic: None,
            correlation: None,
        };
        self.dispatch(&req).await
    }

    async fn dispatch(&self, req: &Request) -> Result<Value, ServiceError> {
        let me = &*req.user;
        match req.op.as_str() {
            "group.create" => {
                let r: CreateGroup = parse(&req.payload)?;
                let conv = self.create_group(me, r.id, &r.name, &r.members).await?;
                Ok(json!({ "conv": conv }))
            }
            "group.add" => {
                let r: MemberOp = parse(&req.payload)?;
                self.set_member(me, &r.conv, &r.user, r.role.unwrap_or(Role::Member))
                    .await?;
                Ok(json!({}))
            }
            "group.role" => {
                let r: MemberOp = parse(&req.payload)?;
                let role = r
                    .role
                    .ok_or_else(|| ServiceError::BadRequest("role is required".into()))?;
                self.set_member(me, &r.conv, &r.user, role).await?;
                Ok(json!({}))
            }
            "group.remove" => {
                let r: MemberOp = parse(&req.payload)?;
                self.remove_member(me, &r.conv, &r.user).await?;
                Ok(json!({}))
            }
            "group.leave" => {
                let r: ConvOp = parse(&req.payload)?;
                self.remove_member(me, &r.conv, me).await?;
                Ok(json!({}))
            }
            "group.update" => {
                let r: ConvOp = parse(&req.payload)?;
                self.update_group(me, &r.conv, r.name, r.topic).await?;
                Ok(json!({}))
            }
            "block" | "unblock" => {
                let r: UserOp = parse(&req.payload)?;
                self.set_block(me, &r.user, req.op == "block").await?;
                Ok(json!({}))
            }
            "conversations" => {
                let convs = self.conversations_of(me).await?;
                let u = me.to_string();
                let list = convs.clone();
                let details = self
                    .blocking(move |s| {
                        list.iter()
                            .map(|c| Ok((s.unread(c, &u)?, s.before(c, i64::MAX as u64, 1)?)))
                            .collect::<Result<Vec<_>, StoreError>>()
                    })
                    .await?;
                let d = self.read();
                let list: Vec<Value> = convs
                    .iter()
                    .zip(details)
                    .map(|(conv, (unread, last))| {
                        let g = d.group(conv);
                        json!({
                            "conv": conv,
                            "name": g.map(|g| g.name.as_str()),
                            "topic": g.map(|g| g.topic.as_str()),
                            "role": d.role(conv, me).map(|r| r.as_str()),
                            "unread": unread,
                            "last": last.items.first(),
                        })
                    })
                    .collect();
                Ok(json!({ "conversations": list }))
            }
            "members" => {
                let r: ConvOp = parse(&req.payload)?;
                let d = self.read();
                if !d.is_member(&r.conv, me) {
                    return Err(Denied::NotMember.into());
                }
                let mut members: Vec<Value> = d
                    .members(&r.conv)
                    .into_iter()
                    .map(|u| json!({"user": u, "role": d.role(&r.conv, u).map(|r| r.as_str())}))
                    .collect();
                members.sort_by(|a, b| a["user"].as_str().cmp(&b["user"].as_str()));
                Ok(json!({ "members": members }))
            }
            "sync" => {
                let r: SyncOp = parse(&req.payload)?;
                let limit = page_size(r.limit);
                match r.conv {
                    Some(conv) => {
                        self.require_member(&conv, me)?;
                        let c = conv.clone();
                        let u = me.to_string();
                        let (page, first, receipts, unread) = self
                            .blocking(move |s| {
                                Ok((
                                    s.after(&c, r.after, limit)?,
                                    s.first_seq(&c)?,
                                    s.receipts(&c)?,
                                    s.unread(&c, &u)?,
                                ))
                            })
                            .await?;
                        let next = page.items.last().map_or(r.after, |i| i.envelope.seq);
                        let receipts: Vec<Value> = receipts
                            .into_iter()
                            .map(|(user, delivered, read)| {
                                json!({"user": user, "delivered": delivered, "read": read})
                            })
                            .collect();
                        Ok(json!({
                            "conv": conv,
                            "messages": page.items,
                            "more": page.more,
                            "next": next,
                            "first": first,
                            "receipts": receipts,
                            "unread": unread,
                        }))
                    }
                    None => {
                        let convs = self.conversations_of(me).await?;
                        let page = self
                            .blocking(move |s| s.since(&convs, r.since, limit))
                            .await?;
                        let next = page.items.last().map_or(r.since, |i| i.envelope.id);
                        Ok(json!({"messages": page.items, "more": page.more, "next": next}))
                    }
                }
            }
            "presence" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct PresenceOp {
                    status: String,
                    #[serde(default)]
                    hidden: bool,
                }
                let r: PresenceOp = parse(&req.payload)?;
                let away = match r.status.as_str() {
                    "online" => false,
                    "away" => true,
                    _ => return Err(ServiceError::BadRequest("status is online or away".into())),
                };
                let _ = self.signals.send(Signal::Status {
                    user: req.user.clone(),
                    away,
                    hidden: r.hidden,
                });
                Ok(json!({}))
            }
            "push.register" | "push.unregister" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct PushOp {
                    url: String,
                }
                let r: PushOp = parse(&req.payload)?;
                let (u, url) = (me.to_string(), r.url.clone());
                if req.op == "push.register" {
                    self.pusher
                        .check(&r.url)
                        .await
                        .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
                    self.blocking(move |s| s.add_push_endpoint(&u, &url))
                        .await?;
                } else {
                    self.blocking(move |s| s.remove_push_endpoint(&u, &url))
                        .await?;
                }
                Ok(json!({}))
            }
            "history" => {
                let r: HistoryOp = parse(&req.payload)?;
                self.require_member(&r.conv, me)?;
                let limit = page_size(r.limit);
                let before = r.before.unwrap_or(i64::MAX as u64).min(i64::MAX as u64);
                let c = r.conv.clone();
                let page = self.blocking(move |s| s.before(&c, before, limit)).await?;
                Ok(json!({"conv": r.conv, "messages": page.items, "more": page.more}))
            }
            "search" => {
                let r: SearchOp = parse(&req.payload)?;
                if r.q.trim().is_empty() {
                    return Err(ServiceError::BadRequest("q must not be empty".into()));
                }
                let limit = page_size(r.limit);
                let convs = self.conversations_of(me).await?;
                let items = self
                    .blocking(move |s| s.search(&convs, &r.q, limit))
                    .await?;
                Ok(json!({"messages": items}))
            }
            other => Err(ServiceError::BadRequest(format!(
                "unknown request `{other}`"
            ))),
        }
    }

    /// Creates a group owned by `owner` with the given members; returns its conversation id.
    pub async fn create_group(
        &self,
        owner: &str,
        id: Option<String>,
        name: &str,
        members: &[String],
    ) -> Result<String, ServiceError> {
        let _guard = self.changes.lock().await;
        let id = match id {
            Some(id) if topics::valid_id(&id) => id,
            Some(id) => {
                return Err(ServiceError::BadRequest(format!(
                    "`{id}` is not a valid group id"
                )))
            }
            None => crate::ids::random_hex(6),
        };
        let conv = topics::group_conv(&id);
        let mut roster: Vec<(String, Role)> = vec![(owner.to_string(), Role::Owner)];
        {
            let d = self.read();
            if !d.user_exists(owner) {
                return Err(Denied::NoSuchUser.into());
            }
            for m in members.iter().filter(|m| *m != owner) {
                d.can_add_member(owner, m)?;
                if !roster.iter().any(|(u, _)| u == m) {
                    roster.push((m.clone(), Role::Member));
                }
            }
        }
        let (c, n, o) = (conv.clone(), name.to_string(), owner.to_string());
        let rows = roster.clone();
        self.blocking(move |s| {
            let pairs: Vec<(&str, &str)> =
                rows.iter().map(|(u, r)| (u.as_str(), r.as_str())).collect();
            s.create_conversation(&c, false, &n, &o, &pairs)
        })
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Exists(what)) => {
                ServiceError::Conflict(format!("{what} already exists"))
            }
            other => other,
        })?;
        {
            let mut d = self.write();
            d.set_group_info(&conv, name, "");
            for (u, r) in &roster {
                d.set_member(&conv, u, *r);
            }
        }
        for (u, r) in &roster {
            self.announce_member(&conv, u, "member_added", Some(*r), owner)
                .await;
        }
        Ok(conv)
    }

    /// Adds `user` to a group or changes their role, as `actor`.
    pub async fn set_member(
        &self,
        actor: &str,
        conv: &str,
        user: &str,
        role: Role,
    ) -> Result<(), ServiceError> {
        let _guard = self.changes.lock().await;
        let existing = {
            let d = self.read();
            let actor_role = d.role(conv, actor).ok_or_else(|| self.missing(&d, conv))?;
            let existing = d.role(conv, user);
            if existing.is_none() {
                d.can_add_member(actor, user)?;
            }
            // Owners manage everything; admins add members and nothing above that.
            let allowed = match actor_role {
                Role::Owner => role != Role::Owner,
                Role::Admin => role == Role::Member && existing.is_none(),
                Role::Member => false,
            };
            if !allowed {
                return Err(Denied::Role.into());
            }
            existing
        };
        let (c, u) = (conv.to_string(), user.to_string());
        self.blocking(move |s| s.set_member(&c, &u, role.as_str()))
            .await?;
        self.write().set_member(conv, user, role);
        let what = if existing.is_some() {
            "role_changed"
        } else {
            "member_added"
        };
        self.announce_member(conv, user, what, Some(role), actor)
            .await;
        Ok(())
    }

    /// Removes `user` from a group as `actor` (or `user` leaves when both are the same).
    pub async fn remove_member(
        &self,
        actor: &str,
        conv: &str,
        user: &str,
    ) -> Result<(), ServiceError> {
        let _guard = self.changes.lock().await;
        {
            let d = self.read();
            let actor_role = d.role(conv, actor).ok_or_else(|| self.missing(&d, conv))?;
            let target = d.role(conv, user).ok_or(Denied::NotMember)?;
            let allowed = if actor == user {
                // An owner hands the group over before leaving it.
                target != Role::Owner || d.members(conv).len() == 1
            } else {
                actor_role > target && actor_role >= Role::Admin
            };
            if !allowed {
                return Err(Denied::Role.into());
            }
        }
        // Tell the member before they lose access to their events.
        self.announce_member(conv, user, "member_removed", None, actor)
            .await;
        let (c, u) = (conv.to_string(), user.to_string());
        self.blocking(move |s| s.remove_member(&c, &u)).await?;
        self.write().remove_member(conv, user);
        Ok(())
    }

    pub async fn update_group(
        &self,
        actor: &str,
        conv: &str,
        name: Option<String>,
        topic: Option<String>,
    ) -> Result<(), ServiceError> {
        let _guard = self.changes.lock().await;
        let (name, topic) = {
            let d = self.read();
            let role = d.role(conv, actor).ok_or_else(|| self.missing(&d, conv))?;
            if role < Role::Admin {
                return Err(Denied::Role.into());
            }
            let g = d.group(conv).ok_or(Denied::NoSuchConversation)?;
            (
                name.unwrap_or_else(|| g.name.clone()),
                topic.unwrap_or_else(|| g.topic.clone()),
            )
        };
        let (c, n, t) = (conv.to_string(), name.clone(), topic.clone());
        self.blocking(move |s| s.update_conversation(&c, &n, &t))
            .await?;
        self.write().set_group_info(conv, &name, &topic);
        let members: Vec<String> = self
            .read()
            .members(conv)
            .iter()
            .map(|s| s.to_string())
            .collect();
        for m in members {
            let body = json!({"type": "conversation_updated", "conv": conv, "name": name, "topic": topic, "by": actor});
            self.send(Message::server(topics::user_events(&m), body.to_string()))
                .await;
        }
        Ok(())
    }

    pub async fn set_block(&self, user: &str, other: &str, on: bool) -> Result<(), ServiceError> {
        let _guard = self.changes.lock().await;
        if !self.read().user_exists(other) {
            return Err(Denied::NoSuchUser.into());
        }
        let (u, o) = (user.to_string(), other.to_string());
        self.blocking(move |s| s.set_block(&u, &o, on)).await?;
        self.write().set_block(user, other, on);
        Ok(())
    }

    fn require_member(&self, conv: &str, user: &str) -> Result<(), ServiceError> {
        if self.read().is_member(conv, user) {
            Ok(())
        } else {
            Err(Denied::NotMember.into())
        }
    }

    /// Every conversation `user` belongs to: groups, and direct ones with history.
    async fn conversations_of(&self, user: &str) -> Result<Vec<String>, ServiceError> {
        let u = user.to_string();
        let direct = self.blocking(move |s| s.direct_conversations(&u)).await?;
        let d = self.read();
        let mut convs: Vec<String> = d.groups_of(user).map(str::to_string).collect();
        convs.extend(direct.into_iter().filter(|c| d.is_member(c, user)));
        Ok(convs)
    }

    fn missing(&self, d: &Directory, conv: &str) -> ServiceError {
        if d.group(conv).is_some() {
            Denied::NotMember.into()
        } else {
            Denied::NoSuchConversation.into()
        }
    }

    /// Tells every member of `conv` (and `user`, who may no longer be one) about a change.
    async fn announce_member(
        &self,
        conv: &str,
        user: &str,
        what: &str,
        role: Option<Role>,
        by: &str,
    ) {
        let mut to: Vec<String> = self
            .read()
            .members(conv)
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !to.iter().any(|m| m == user) {
            to.push(user.to_string());
        }
        let body = json!({
            "type": what,
            "conv": conv,
            "user": user,
            "role": role.map(Role::as_str),
            "by": by,
        })
        .to_string();
        for m in to {
            self.send(Message::server(topics::user_events(&m), body.clone()))
                .await;
        }
    }

    async fn send(&self, message: Message) {
        if self
            .router
            .send(Event::ServerPublish(message))
            .await
            .is_err()
        {
            tracing::debug!("router gone; event not published");
        }
    }

    /// Runs `change`, an account change made outside this service (registration over HTTP),
    /// under the lock reloads take: a reload cannot then read the store before the change and
    /// replace the directory after it, dropping what the change added.
    pub async fn serialised<F: std::future::Future>(&self, change: F) -> F::Output {
        let _guard = self.changes.lock().await;
        change.await
    }

    /// Picks up changes other processes commit (accounts and memberships changed with the CLI
    /// while the server runs): reloads the directory, disconnects removed users, and announces
    /// membership changes.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut seen = match self.blocking(|s| s.directory_version()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the store for changes");
                return;
            }
        };
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let _guard = self.changes.lock().await;
            let version = match self.blocking(|s| s.directory_version()).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the directory version");
                    continue;
                }
            };
            // `seen` moves on only once this version is installed: a reload that fails or
            // discards its snapshot is tried again at the next tick.
            if version == seen {
                continue;
            }
            let started = Instant::now();
            let snapshot = match self.blocking(|s| s.snapshot()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reload accounts");
                    continue;
                }
            };
            let newer = Directory::from_snapshot(snapshot);
            let gone: Vec<String> = {
                let d = self.read();
                d.users()
                    .filter(|u| !newer.user_exists(u))
                    .map(str::to_string)
                    .collect()
            };
            // A user created after the snapshot was read (by the CLI, then logged in at once)
            // is in the directory but not in the snapshot: a stale snapshot, which would drop
            // the user and kick them; the next tick reads again.
            let gone = if gone.is_empty() {
                gone
            } else {
                let present = self
                    .blocking(move |s| {
                        let mut present = false;
                        for u in &gone {
                            present |= s.login_info(u)?.is_some();
                        }
                        Ok((gone, present))
                    })
                    .await;
                match present {
                    Ok((_, true)) => {
                        tracing::debug!("accounts changed while reloading; reading them again");
                        continue;
                    }
                    Ok((gone, false)) => gone,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reload accounts");
                        continue;
                    }
                }
            };
            let changes = self.read().membership_changes(&newer);
            for (conv, user) in &changes.removed {
                self.announce_member(conv, user, "member_removed", None, "admin")
                    .await;
            }
            *self.write() = newer;
            seen = version;
            for (conv, user, role) in &changes.added {
                self.announce_member(conv, user, "member_added", Some(*role), "admin")
                    .await;
            }
            for user in gone {
                tracing::info!(%user, "user removed: closing their connections");
                if self
                    .router
                    .send(Event::Kick { user: user.into() })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tracing::debug!(elapsed = ?started.elapsed(), "accounts reloaded");
        }
    }
}
