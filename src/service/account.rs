//! A user's own settings: whom they block, their presence status, and their push endpoints.

use super::chat_service::ChatService;
use super::error::ServiceError;
use super::signals::Signal;
use crate::chat::Denied;

impl ChatService {
    /// Blocks (`on`) or unblocks `other` for `user`.
    pub async fn set_block(&self, user: &str, other: &str, on: bool) -> Result<(), ServiceError> {
        let _guard = self.changes.lock().await;
        self.know_users(&[other]).await?;
        if !self.read().user_exists(other) {
            return Err(Denied::NoSuchUser.into());
        }
        let (u, o) = (user.to_string(), other.to_string());
        self.blocking(move |s| s.set_block(&u, &o, on)).await?;
        self.write().set_block(user, other, on);
        Ok(())
    }

    /// Hands `user`'s chosen status to the signals task, which publishes their presence.
    pub(super) fn set_presence(&self, user: &str, away: bool, hidden: bool) {
        let _ = self.signals.send(Signal::Status {
            user: user.into(),
            away,
            hidden,
        });
    }

    /// Adds a push endpoint for `user`, once its URL passes the pusher's checks.
    pub(super) async fn register_push(&self, user: &str, url: &str) -> Result<(), ServiceError> {
        self.pusher
            .check(url)
            .await
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let (u, url) = (user.to_string(), url.to_string());
        self.blocking(move |s| s.add_push_endpoint(&u, &url)).await
    }

    /// Removes a push endpoint of `user`.
    pub(super) async fn unregister_push(&self, user: &str, url: &str) -> Result<(), ServiceError> {
        let (u, url) = (user.to_string(), url.to_string());
        self.blocking(move |s| s.remove_push_endpoint(&u, &url))
            .await?;
        Ok(())
    }
}
