//! Who may connect, and what a connected client may publish, subscribe to and receive.
//!
//! Every CONNECT, PUBLISH, will and SUBSCRIBE filter is decided here, and every delivery through
//! a filter that can reach chat topics or ACL-governed wildcards is checked again (`can_read`),
//! so a broad filter never carries a topic its subscriber may not read, and a member removed
//! from a conversation stops receiving at once. The chat namespaces follow the membership rules
//! in [`crate::chat`]; other topics follow the ACL file; `$SYS` is for admins (and whoever the
//! ACL file grants it to) and is never writable by clients.

use std::net::IpAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use bytes::Bytes;

use crate::acl::{Acl, Action, Client};
use crate::chat::{Denied, Directory};
use crate::config::AuthConfig;
use crate::limiter::LoginLimiter;
use crate::password;
use crate::store::Store;
use crate::token_cache::TokenCache;
use crate::tokens::{self, Signer};
use crate::topics::{self, ChatTopic, ConvId, ConvKind, FilterScope};

/// A connected client as the access rules see it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The authenticated user; `None` for anonymous clients.
    pub user: Option<Arc<str>>,
    pub client_id: Arc<str>,
}

/// Who a CONNECT's credentials proved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authenticated {
    /// The user; `None` for anonymous clients.
    pub user: Option<Arc<str>>,
    /// The device named by an access token: such a login must use client id `{user}.{device}`,
    /// so revoking the device (which closes that client id) reaches the connection.
    pub device: Option<Arc<str>>,
}

impl Authenticated {
    fn password(user: &str) -> Authenticated {
        Authenticated {
            user: Some(user.into()),
            device: None,
        }
    }
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bad user name or password")]
    BadCredentials,
    #[error("not authorized")]
    NotAuthorized,
    #[error("the account store is unavailable")]
    Unavailable,
    /// Too many failed password logins for the user or from the address (the login limiter).
    #[error("too many failed logins")]
    RateLimited,
}

/// Why a PUBLISH (or will) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Chat(#[from] Denied),
    #[error("the ACL does not allow this topic")]
    Acl,
    #[error("$SYS is written by the server only")]
    Sys,
}

/// Its place in the table of refusals (`crate::refusal`), which gives its code.
impl From<Refused> for crate::refusal::Refusal {
    fn from(r: Refused) -> crate::refusal::Refusal {
        use crate::refusal::Refusal as R;
        match r {
            Refused::Chat(d) => R::Denied(d),
            Refused::Acl => R::Acl,
            Refused::Sys => R::SysTopic,
        }
    }
}

/// Where an authorized PUBLISH goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// An ordinary topic.
    Plain,
    /// A conversation topic: also copied to each member's `u/{user}/c/{conv}/{kind}`.
    /// `moderator`: the publisher owns or administers the group (may delete others' messages).
    Conversation {
        conv: String,
        kind: ConvKind,
        copies: Vec<Bytes>,
        moderator: bool,
    },
    /// A request for the server (`q/{user}/{op}`).
    Request { op: String },
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Acl(#[from] crate::acl::AclError),
}

pub struct Access {
    allow_anonymous: bool,
    acl: Option<Acl>,
    store: Arc<dyn Store>,
    directory: Arc<RwLock<Directory>>,
    /// Access tokens from the HTTP API work as passwords.
    signer: Arc<Signer>,
    /// Failed password logins and the password checks in flight, shared with the HTTP API.
    limiter: Arc<LoginLimiter>,
    /// Tokens the store confirmed a moment ago, shared with the HTTP API.
    tokens: Arc<TokenCache>,
}

impl Access {
    pub fn new(
        auth: &AuthConfig,
        store: Arc<dyn Store>,
        directory: Arc<RwLock<Directory>>,
        signer: Arc<Signer>,
        limiter: Arc<LoginLimiter>,
    ) -> Result<Access, AccessError> {
        let acl = if auth.acl_file.is_empty() {
            None
        } else {
            Some(Acl::load(std::path::Path::new(&auth.acl_file))?)
        };
        Ok(Access {
            allow_anonymous: auth.allow_anonymous,
            acl,
            store,
            directory,
            signer,
            limiter,
            tokens: Arc::default(),
        })
    }

    /// The login limiter, for the HTTP API to share.
    pub fn limiter(&self) -> Arc<LoginLimiter> {
        self.limiter.clone()
    }

    /// The confirmed tokens, for the HTTP API to share.
    pub fn tokens(&self) -> Arc<TokenCache> {
        self.tokens.clone()
    }

    fn dir(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks CONNECT credentials (user id and password, or an access token) from `addr` and
    /// returns who they prove; no credentials means anonymous, if allowed. Passwords go through
    /// the login limiter (tokens need not: they are cheap to check and cannot be guessed).
    pub async fn authenticate(
        &self,
        login: Option<(&str, &str)>,
        addr: IpAddr,
    ) -> Result<Authenticated, Refusal> {
        let Some((user, password)) = login else {
            return match self.allow_anonymous {
                true => Ok(Authenticated::default()),
                false => Err(Refusal::NotAuthorized),
            };
        };
        // MQTT strings may not carry U+0000; a user id never can.
        if !topics::valid_id(user) || password.contains('\0') {
            return Err(Refusal::BadCredentials);
        }
        if tokens::looks_like_jwt(password) {
            return self.authenticate_token(user, password).await;
        }
        if !self.limiter.allow_login(user, addr) {
            tracing::info!(user = ?user, %addr, "MQTT login refused: too many failures");
            return Err(Refusal::RateLimited);
        }
        let verified = self.verify_password(user, password).await;
        match verified {
            Ok(Some(admin)) => {
                self.limiter.succeeded(user, addr);
                self.remember(user, admin);
                Ok(Authenticated::password(user))
            }
            Ok(None) => {
                self.limiter.failed(user, addr);
                Err(Refusal::BadCredentials)
            }
            Err(refusal) => Err(refusal),
        }
    }

    /// Checks a password against the store on a blocking thread, a bounded number at a time:
    /// `Some(admin)` when it is right.
    async fn verify_password(&self, user: &str, password: &str) -> Result<Option<bool>, Refusal> {
        let _permit = self
            .limiter
            .password_check()
            .await
            .ok_or(Refusal::Unavailable)?;
        let store = self.store.clone();
        let (id, password) = (user.to_string(), password.to_string());
        tokio::task::spawn_blocking(move || {
            store.login_info(&id).map(|info| match info {
                Some((hash, admin)) if password::verify(&password, &hash) => Some(admin),
                _ => None,
            })
        })
        .await
        .map_err(|_| Refusal::Unavailable)?
        .map_err(|e| {
            tracing::error!(error = %e, "cannot read accounts");
            Refusal::Unavailable
        })
    }

    /// An access token as password: valid signature, not expired, issued to this user, for a
    /// device that has not been revoked, of the device's current token generation (no revoke
    /// or password change since). The device comes back so the client id can be tied to it.
    async fn authenticate_token(&self, user: &str, token: &str) -> Result<Authenticated, Refusal> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let claims = self
            .signer
            .verify(token, now)
            .map_err(|_| Refusal::BadCredentials)?;
        if claims.sub != user {
            return Err(Refusal::BadCredentials);
        }
        // Login only issues tokens for valid device ids; one that is not cannot form a client id.
        if !topics::valid_id(&claims.dev) {
            return Err(Refusal::BadCredentials);
        }
        let now = std::time::Instant::now();
        // A user removed by another process leaves the directory at its next reload: only a
        // known user's confirmation is taken from the cache.
        let cached = self.dir().user_exists(user)
            && self.tokens.is_current(user, &claims.dev, &claims.gen, now);
        if !cached {
            let store = self.store.clone();
            let (sub, dev, gen) = (claims.sub.clone(), claims.dev.clone(), claims.gen.clone());
            let current =
                tokio::task::spawn_blocking(move || store.token_current(&sub, &dev, &gen))
                    .await
                    .map_err(|_| Refusal::Unavailable)?
                    .map_err(|_| Refusal::Unavailable)?;
            if !current {
                return Err(Refusal::BadCredentials);
            }
            self.tokens.confirm(user, &claims.dev, &claims.gen, now);
        }
        self.remember(user, false);
        Ok(Authenticated {
            user: Some(user.into()),
            device: Some(claims.dev.into()),
        })
    }

    /// An account created a moment ago (by another process, or over HTTP) is usable at once,
    /// before the periodic reload brings the rest of its data.
    fn remember(&self, user: &str, admin: bool) {
        if !self.dir().user_exists(user) {
            self.directory
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .set_user(user, admin);
        }
    }

    /// A user's devices use `{user}` or `{user}.{device}`, and a token login exactly
    /// `{user}.{device}` for the token's device; anonymous clients may use neither form for any
    /// existing user, so a session takeover never crosses users.
    pub fn client_id_allowed(&self, who: &Authenticated, client_id: &str) -> bool {
        match (who.user.as_deref(), who.device.as_deref()) {
            (Some(u), Some(d)) => client_id == topics::device_client_id(u, d),
            (Some(u), None) => {
                client_id == u
                    || client_id
                        .strip_prefix(u)
                        .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1)
            }
            (None, _) => {
                let owner = client_id.split('.').next().unwrap_or(client_id);
                !self.dir().user_exists(owner)
            }
        }
    }

    /// The id for a CONNECT with an empty client id: `{user}.{device}` for a token login (the
    /// only id it may use), otherwise a random one in the user's namespace. An anonymous
    /// client's starts with `anon:`, which no user id can (`:` is not in their alphabet), so it
    /// never lands in a user's namespace.
    pub fn assign_client_id(&self, who: &Authenticated) -> String {
        let Some(owner) = who.user.as_deref() else {
            return format!("anon:{}", crate::ids::random_hex(8));
        };
        match who.device.as_deref() {
            Some(device) => topics::device_client_id(owner, device),
            None => format!("{owner}.{}", crate::ids::random_hex(8)),
        }
    }

    /// Decides a PUBLISH (or will) and where it goes.
    pub fn authorize_publish(&self, who: &Identity, topic: &str) -> Result<Route, Refused> {
        if topics::is_sys(topic) {
            return Err(Refused::Sys);
        }
        let Some(chat) = topics::classify(topic) else {
            return match self.acl_allows(who, Action::Publish(topic)) {
                true => Ok(Route::Plain),
                false => Err(Refused::Acl),
            };
        };
        let dir = self.dir();
        dir.can_publish(who.user.as_deref(), chat)?;
        Ok(match chat {
            ChatTopic::Conv { conv, kind } => Route::Conversation {
                conv: conv.to_string(),
                kind,
                copies: stream_copies(&dir, conv, kind),
                moderator: who
                    .user
                    .as_deref()
                    .and_then(|u| dir.role(conv, u))
                    .is_some_and(|r| r >= crate::chat::Role::Admin),
            },
            ChatTopic::Request { op, .. } => Route::Request { op: op.to_string() },
            // can_publish refuses everything else.
            _ => return Err(Refused::Chat(Denied::ServerOnly)),
        })
    }

    pub fn can_subscribe(&self, who: &Identity, filter: &str) -> bool {
        match topics::filter_scope(filter) {
            scope @ FilterScope::Chat { .. } => {
                self.dir().can_subscribe(who.user.as_deref(), scope).is_ok()
            }
            FilterScope::Wide if filter.starts_with(['+', '#']) => {
                // Spans plain topics too: the ACL decides those.
                self.acl_allows(who, Action::Subscribe(filter))
            }
            // `q/#`, `q/+/…`: requests are for the server alone (topics.md), whatever the
            // wildcard; narrowing would deliver nothing, so the filter is refused outright.
            FilterScope::Wide if topics::is_request_filter(filter) => false,
            FilterScope::Wide => true,
            FilterScope::Plain if filter.starts_with("$SYS") => {
                self.is_admin(who) || self.acl_grants(who, Action::Subscribe(filter))
            }
            FilterScope::Plain => self.acl_allows(who, Action::Subscribe(filter)),
        }
    }

    pub fn can_read(&self, who: &Identity, topic: &str) -> bool {
        match topics::classify(topic) {
            Some(chat) => self.dir().can_read(who.user.as_deref(), chat),
            None if topics::is_sys(topic) => {
                self.is_admin(who) || self.acl_grants(who, Action::Read(topic))
            }
            None => self.acl_allows(who, Action::Read(topic)),
        }
    }

    /// An entry of conversation `conv` was committed. The first one in a direct conversation
    /// makes its two users share a conversation (presence, `p/{user}` subscriptions) from this
    /// moment, not from the directory's next reload: the permission follows the data.
    pub fn entry_committed(&self, conv: &str) {
        let Some(ConvId::Direct(a, b)) = topics::parse_conv(conv) else {
            return;
        };
        // Read first: every later message of the conversation finds the pair already there.
        if self.dir().has_direct_history(a, b) {
            return;
        }
        self.directory
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .note_direct_history(a, b);
    }

    /// Whether deliveries through `filter` must be checked message by message: anything that
    /// can reach chat topics (membership changes at any time), and wildcards under an ACL.
    pub fn needs_read_check(&self, filter: &str) -> bool {
        match topics::filter_scope(filter) {
            FilterScope::Chat { .. } | FilterScope::Wide => true,
            FilterScope::Plain => self.acl.is_some() && topics::has_wildcard(filter),
        }
    }

    fn is_admin(&self, who: &Identity) -> bool {
        who.user.as_deref().is_some_and(|u| self.dir().is_admin(u))
    }

    /// The ACL's decision; everything is allowed without an ACL file.
    fn acl_allows(&self, who: &Identity, action: Action<'_>) -> bool {
        self.acl.is_none() || self.acl_grants(who, action)
    }

    /// Whether an ACL file exists and grants the action.
    fn acl_grants(&self, who: &Identity, action: Action<'_>) -> bool {
        self.acl.as_ref().is_some_and(|acl| {
            acl.allows(
                Client {
                    user: who.user.as_deref(),
                    client_id: &who.client_id,
                },
                action,
            )
        })
    }

    /// Each member's copy of a conversation topic (`c/{conv}/{kind}`), as this node's directory
    /// has them now; none for any other topic.
    pub fn stream_copies_of(&self, topic: &str) -> Vec<Bytes> {
        match topics::classify(topic) {
            Some(ChatTopic::Conv { conv, kind }) => stream_copies(&self.dir(), conv, kind),
            _ => Vec::new(),
        }
    }
}

/// Each member's copy of a conversation topic.
fn stream_copies(dir: &Directory, conv: &str, kind: ConvKind) -> Vec<Bytes> {
    dir.members(conv)
        .into_iter()
        .map(|m| Bytes::from(topics::stream_copy(m, conv, kind)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ConversationRow, Snapshot, UserRow};

    fn access(acl: Option<&str>) -> (Access, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = crate::store::sqlite::Sqlite::open(dir.path())
            .map(Arc::new)
            .unwrap();
        let user = |id: &str, admin| UserRow {
            id: id.into(),
            admin,
            created_at: 0,
        };
        let s = |x: &str| x.to_string();
        let directory = Directory::from_snapshot(Snapshot {
            users: vec![user("alice", false), user("bob", false), user("root", true)],
            conversations: vec![ConversationRow {
                id: s("g.team"),
                name: s(""),
                topic: s(""),
            }],
            members: vec![
                (s("g.team"), s("alice"), s("owner")),
                (s("g.team"), s("bob"), s("member")),
            ],
            blocks: vec![],
        });
        let a = Access {
            allow_anonymous: true,
            acl: acl.map(|t| Acl::parse(t).unwrap()),
            store,
            directory: Arc::new(RwLock::new(directory)),
            signer: Arc::new(Signer::new(b"test")),
            limiter: Arc::new(LoginLimiter::new(3, 1)),
            tokens: Arc::default(),
        };
        (a, dir)
    }

    fn who(user: Option<&str>, client: &str) -> Identity {
        Identity {
            user: user.map(Arc::from),
            client_id: client.into(),
        }
    }

    #[test]
    fn client_ids_stay_in_their_owners_namespace() {
        let (a, _d) = access(None);
        // (user, token device, client id, allowed)
        let cases: &[(Option<&str>, Option<&str>, &str, bool)] = &[
            (Some("alice"), None, "alice", true),
            (Some("alice"), None, "alice.phone", true),
            (Some("alice"), None, "alice.", false),
            (Some("alice"), None, "alicex", false),
            (Some("alice"), None, "bob.phone", false),
            (Some("alice"), Some("phone"), "alice.phone", true),
            (Some("alice"), Some("phone"), "alice", false),
            (Some("alice"), Some("phone"), "alice.x", false),
            (Some("alice"), Some("phone"), "alice.phone.x", false),
            (Some("alice"), Some("phone"), "alicephone", false),
            (Some("alice"), Some("phone"), "bob.phone", false),
            (None, None, "alice", false),
            (None, None, "alice.laptop", false),
            (None, None, "sensor-7", true),
            (None, None, "nobody.x", true),
        ];
        for (user, device, id, want) in cases {
            let who = Authenticated {
                user: user.map(Arc::from),
                device: device.map(Arc::from),
            };
            assert_eq!(a.client_id_allowed(&who, id), *want, "{who:?} as {id}");
        }
        let token = Authenticated {
            user: Some("alice".into()),
            device: Some("phone".into()),
        };
        assert_eq!(a.assign_client_id(&token), "alice.phone");
        assert!(a
            .assign_client_id(&Authenticated::password("alice"))
            .starts_with("alice."));
        // An anonymous client's id is outside every possible user's namespace, and usable.
        let anonymous = Authenticated::default();
        let id = a.assign_client_id(&anonymous);
        assert!(id.starts_with("anon:"), "{id}");
        assert!(
            !topics::valid_id(id.split('.').next().unwrap_or(&id)),
            "{id}"
        );
        assert!(a.client_id_allowed(&anonymous, &id), "{id}");
        assert_ne!(id, a.assign_client_id(&anonymous));
    }

    #[test]
    fn publish_routes_and_refusals() {
        let (a, _d) = access(None);
        let alice = who(Some("alice"), "alice");
        match a.authorize_publish(&alice, "c/g.team/m").unwrap() {
            Route::Conversation { mut copies, .. } => {
                copies.sort();
                assert_eq!(copies, ["u/alice/c/g.team/m", "u/bob/c/g.team/m"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            a.authorize_publish(&alice, "q/alice/group.create"),
            Ok(Route::Request {
                op: "group.create".into()
            })
        );
        assert_eq!(a.authorize_publish(&alice, "sensors/1"), Ok(Route::Plain));
        assert_eq!(a.authorize_publish(&alice, "$SYS/x"), Err(Refused::Sys));
        assert_eq!(
            a.authorize_publish(&alice, "p/alice"),
            Err(Refused::Chat(Denied::ServerOnly))
        );
        assert_eq!(
            a.authorize_publish(&who(None, "x"), "c/g.team/m"),
            Err(Refused::Chat(Denied::Anonymous))
        );
    }

    #[test]
    fn subscriptions_and_reads_across_namespaces() {
        let (a, _d) = access(Some("topic read public/#\nuser alice\ntopic readwrite #\n"));
        let alice = who(Some("alice"), "alice");
        let bob = who(Some("bob"), "bob");
        let root = who(Some("root"), "root");
        let anon = who(None, "x");
        let cases: &[(&Identity, &str, bool)] = &[
            (&alice, "#", true),
            (&bob, "#", false),
            (&bob, "c/+/m", true),
            (&bob, "u/bob/#", true),
            (&bob, "u/alice/#", false),
            (&bob, "c/g.team/m", true),
            (&anon, "c/g.team/m", false),
            (&anon, "public/#", true),
            (&bob, "$SYS/#", false),
            (&root, "$SYS/#", true),
            // Requests are the server's alone, whatever the wildcard (topics.md).
            (&bob, "q/#", false),
            (&bob, "q/+/sync", false),
            (&bob, "q/bob/sync", false),
        ];
        for (w, filter, want) in cases {
            assert_eq!(
                a.can_subscribe(w, filter),
                *want,
                "{w:?} subscribes {filter}"
            );
        }
        assert!(a.can_read(&alice, "c/g.team/m"));
        assert!(!a.can_read(&root, "c/g.team/m"));
        assert!(!a.can_read(&alice, "u/bob/c/g.team/m"));
        assert!(a.can_read(&root, "$SYS/broker/uptime"));
        assert!(!a.can_read(&bob, "$SYS/broker/uptime"));
        assert!(a.needs_read_check("#"));
        assert!(a.needs_read_check("c/g.team/m"));
        assert!(!a.needs_read_check("public/x"));
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const AWAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[tokio::test]
    async fn credentials_are_checked_against_the_store() {
        let (a, _d) = access(None);
        a.store
            .add_user("carol", &password::hash("pw", 1000).unwrap())
            .unwrap();
        let auth = |login| a.authenticate(login, HOME);
        assert_eq!(
            auth(Some(("carol", "pw"))).await,
            Ok(Authenticated::password("carol"))
        );
        assert_eq!(
            auth(Some(("carol", "no"))).await,
            Err(Refusal::BadCredentials)
        );
        assert_eq!(
            auth(Some(("nobody", "pw"))).await,
            Err(Refusal::BadCredentials)
        );
        assert_eq!(
            auth(Some(("Bad Id", "pw"))).await,
            Err(Refusal::BadCredentials)
        );
        assert_eq!(
            auth(Some(("carol", "pw\0"))).await,
            Err(Refusal::BadCredentials)
        );
        assert_eq!(auth(None).await, Ok(Authenticated::default()));
    }

    /// A token for carol's phone at the device's current generation.
    fn phone_token(a: &Access) -> String {
        a.store.upsert_device("carol", "phone").unwrap();
        let gen = a
            .store
            .add_refresh_token("r", "carol", "phone", i64::MAX)
            .unwrap()
            .expect("an active device");
        a.signer.issue(&tokens::Claims {
            sub: "carol".into(),
            dev: "phone".into(),
            gen,
            iat: 0,
            exp: i64::MAX / 2,
        })
    }

    #[tokio::test]
    async fn tokens_die_with_a_revoke_or_a_password_change() {
        let (a, _d) = access(None);
        a.store.add_user("carol", "h").unwrap();
        let token = phone_token(&a);
        let phone = Ok(Authenticated {
            user: Some("carol".into()),
            device: Some("phone".into()),
        });
        assert_eq!(a.authenticate(Some(("carol", &token)), HOME).await, phone);
        a.store.revoke_device("carol", "phone").unwrap();
        // Revoked by another process: the confirmation of a moment ago holds until its TTL
        // (`token_cache`); revoked here, the HTTP API forgets the confirmations at once.
        assert_eq!(a.authenticate(Some(("carol", &token)), HOME).await, phone);
        a.tokens.forget_all();
        let dead = Err(Refusal::BadCredentials);
        assert_eq!(a.authenticate(Some(("carol", &token)), HOME).await, dead);
        a.store.upsert_device("carol", "phone").unwrap();
        assert_eq!(
            a.authenticate(Some(("carol", &token)), HOME).await,
            dead,
            "logging in again under the revoked name does not revive its tokens"
        );
        let token = phone_token(&a);
        assert_eq!(a.authenticate(Some(("carol", &token)), HOME).await, phone);
        a.store.set_password("carol", "h2").unwrap();
        a.tokens.forget_all();
        assert_eq!(a.authenticate(Some(("carol", &token)), HOME).await, dead);
    }

    #[tokio::test]
    async fn failed_passwords_are_limited_before_hashing() {
        let (a, _d) = access(None);
        for user in ["carol", "dave"] {
            a.store
                .add_user(user, &password::hash("pw", 1000).unwrap())
                .unwrap();
        }
        a.authenticate(Some(("carol", "pw")), HOME).await.unwrap();
        for _ in 0..3 {
            let r = a.authenticate(Some(("carol", "guess")), AWAY).await;
            assert_eq!(r, Err(Refusal::BadCredentials));
        }
        let limited = Err(Refusal::RateLimited);
        assert_eq!(a.authenticate(Some(("carol", "pw")), AWAY).await, limited);
        assert_eq!(a.authenticate(Some(("dave", "pw")), AWAY).await, limited);
        assert!(
            a.authenticate(Some(("carol", "pw")), HOME).await.is_ok(),
            "carol's known address is not locked out by failures elsewhere"
        );
        assert!(a.authenticate(Some(("dave", "pw")), HOME).await.is_ok());
        assert!(
            a.authenticate(Some(("carol", &phone_token(&a))), AWAY)
                .await
                .is_ok(),
            "tokens skip the limiter"
        );
    }
}
