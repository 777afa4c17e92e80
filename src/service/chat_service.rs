//! The chat service: the one type behind requests (MQTT and HTTP) and the reload watcher, its
//! shared state, and the helpers every operation uses — directory locks, store calls on a
//! blocking thread, publishing through the router, membership checks.
//!
//! Its operations are spread over the files of this module: [`super::requests`] (the MQTT entry
//! and the dispatch), [`super::queries`] (the read side), [`super::groups`] (group changes),
//! [`super::account`] (a user's own settings) and [`super::watch`] (other processes' changes).

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::{mpsc, Notify};

use super::error::ServiceError;
use super::push::Pusher;
use super::signals::Signal;
use crate::chat::{Denied, Directory};
use crate::router::{Control, Event, Forward, Message};
use crate::store::{Store, StoreError};

pub struct ChatService {
    pub(super) store: Arc<dyn Store>,
    pub(super) directory: Arc<RwLock<Directory>>,
    pub(super) router: mpsc::Sender<Event>,
    pub(super) signals: mpsc::UnboundedSender<Signal>,
    pub(super) pusher: Arc<Pusher>,
    /// Serialises changes, so a reload never races a change made here.
    pub(super) changes: tokio::sync::Mutex<()>,
    /// In a cluster: where a change made here is announced, so the other nodes reload at once.
    peers: Option<mpsc::UnboundedSender<Forward>>,
    /// Wakes the reload watcher before its next tick (another node announced a change).
    pub(super) reload_now: Notify,
}

impl ChatService {
    pub fn new(
        store: Arc<dyn Store>,
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
            peers: None,
            reload_now: Notify::new(),
        }
    }

    /// Announces this node's directory changes to the other nodes of a cluster.
    pub fn with_peers(mut self, peers: mpsc::UnboundedSender<Forward>) -> ChatService {
        self.peers = Some(peers);
        self
    }

    /// Another node changed accounts or memberships: reload the directory now.
    pub fn reload_soon(&self) {
        self.reload_now.notify_one();
    }

    /// The shared directory, for reading (a poisoned lock still holds a usable directory).
    pub(super) fn read(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared directory, for a change made here (already committed to the store): the
    /// other nodes of a cluster are told to reload theirs.
    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Directory> {
        self.announce_change();
        self.installing()
    }

    /// Tells the other nodes of a cluster that accounts or memberships changed here (already
    /// committed to the store), so they reload theirs now.
    pub fn announce_change(&self) {
        if let Some(peers) = &self.peers {
            let _ = peers.send(Forward::Control(Control::Directory));
        }
    }

    /// Makes sure the directory knows these users if the store has them: an account another
    /// node created a moment ago may not have reached this node's directory yet.
    pub(super) async fn know_users(&self, users: &[&str]) -> Result<(), ServiceError> {
        let unknown: Vec<String> = {
            let d = self.read();
            users
                .iter()
                .filter(|u| !d.user_exists(u))
                .map(|u| u.to_string())
                .collect()
        };
        if unknown.is_empty() || self.peers.is_none() {
            return Ok(());
        }
        let found = self
            .blocking(move |s| {
                let mut found = Vec::new();
                for u in unknown {
                    if let Some((_, admin)) = s.login_info(&u)? {
                        found.push((u, admin));
                    }
                }
                Ok(found)
            })
            .await?;
        let mut d = self.installing();
        for (u, admin) in found {
            d.set_user(&u, admin);
        }
        Ok(())
    }

    /// The shared directory, to install what the store holds (announcing nothing).
    pub(super) fn installing(&self) -> RwLockWriteGuard<'_, Directory> {
        self.directory.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a store call on a blocking thread.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|_| ServiceError::Join)?
            .map_err(ServiceError::from)
    }

    /// Publishes a server message through the router.
    pub(super) async fn send(&self, message: Message) {
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

    /// `NotMember` unless `user` belongs to `conv`.
    pub(super) fn require_member(&self, conv: &str, user: &str) -> Result<(), ServiceError> {
        if self.read().is_member(conv, user) {
            Ok(())
        } else {
            Err(Denied::NotMember.into())
        }
    }

    /// Why an actor with no role in `conv` is refused: not a member of a group that exists, or
    /// no such group.
    pub(super) fn missing(&self, d: &Directory, conv: &str) -> ServiceError {
        if d.group(conv).is_some() {
            Denied::NotMember.into()
        } else {
            Denied::NoSuchConversation.into()
        }
    }
}
