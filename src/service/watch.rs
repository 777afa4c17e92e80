//! The reload watcher: picks up changes other processes (`natter user …`, `natter conv …`)
//! commit to the store while the server runs — reloads the directory, announces membership
//! changes, and disconnects removed users.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::chat_service::ChatService;
use crate::chat::Directory;
use crate::router::Event;

/// How often the store is checked for other processes' changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// How one check of the store ended.
enum Reload {
    /// Nothing new, or a reload to try again at the next tick.
    Retry,
    /// The directory at this version is installed.
    Installed(i64),
    /// The router is gone: nothing left to watch for.
    RouterGone,
}

impl ChatService {
    /// Picks up changes other processes commit (accounts and memberships changed with the CLI
    /// while the server runs): reloads the directory, disconnects removed users, and announces
    /// membership changes.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        // No version yet: the directory was loaded before this task started, and a change
        // committed in between (another node's, the CLI's) would otherwise never be installed.
        // The first tick reloads once.
        let mut seen = i64::MIN;
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            // A change another node of the cluster made: that node has announced it to every
            // node already.
            let announced = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => false,
                _ = self.reload_now.notified() => true,
            };
            let _guard = self.changes.lock().await;
            match self.reload(seen, !announced).await {
                Reload::Retry => {}
                Reload::Installed(version) => seen = version,
                Reload::RouterGone => return,
            }
        }
    }

    /// Installs the store's directory if its version is not `seen` (announcing membership
    /// changes if `announce`), then kicks removed users.
    async fn reload(&self, seen: i64, announce: bool) -> Reload {
        let version = match self.blocking(|s| s.directory_version()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the directory version");
                return Reload::Retry;
            }
        };
        // `seen` moves on only once this version is installed: a reload that fails or
        // discards its snapshot is tried again at the next tick.
        if version == seen {
            return Reload::Retry;
        }
        let started = Instant::now();
        let newer = match self.blocking(|s| s.snapshot()).await {
            Ok(s) => Directory::from_snapshot(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload accounts");
                return Reload::Retry;
            }
        };
        let Some(gone) = self.users_gone(&newer).await else {
            return Reload::Retry;
        };
        self.install(newer, announce).await;
        if !self.kick(gone).await {
            return Reload::RouterGone;
        }
        tracing::debug!(elapsed = ?started.elapsed(), "accounts reloaded");
        Reload::Installed(version)
    }

    /// The users in the directory that `newer` lacks, or `None` when the snapshot is stale.
    async fn users_gone(&self, newer: &Directory) -> Option<Vec<String>> {
        let gone: Vec<String> = {
            let d = self.read();
            d.users()
                .filter(|u| !newer.user_exists(u))
                .map(str::to_string)
                .collect()
        };
        if gone.is_empty() {
            return Some(gone);
        }
        // A user created after the snapshot was read (by the CLI, then logged in at once)
        // is in the directory but not in the snapshot: a stale snapshot, which would drop
        // the user and kick them; the next tick reads again.
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
                None
            }
            Ok((gone, false)) => Some(gone),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload accounts");
                None
            }
        }
    }

    /// Replaces the directory with `newer`, announcing removals before (while the removed can
    /// still read their events) and additions after.
    async fn install(&self, newer: Directory, announce: bool) {
        if !announce {
            *self.installing() = newer;
            return;
        }
        let changes = self.read().membership_changes(&newer);
        for (conv, user) in &changes.removed {
            self.announce_member(conv, user, "member_removed", None, "admin")
                .await;
        }
        *self.installing() = newer;
        for (conv, user, role) in &changes.added {
            self.announce_member(conv, user, "member_added", Some(*role), "admin")
                .await;
        }
    }

    /// Closes the connections of removed users; `false` once the router is gone.
    async fn kick(&self, gone: Vec<String>) -> bool {
        for user in gone {
            tracing::info!(%user, "user removed: closing their connections");
            if self
                .router
                .send(Event::Kick { user: user.into() })
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }
}
