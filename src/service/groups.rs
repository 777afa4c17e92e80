//! Group changes: creating a group, adding, removing and promoting members, renaming — each
//! committed to the store first, then applied to the shared directory, then announced on the
//! members' `u/{user}/events`.

use serde_json::json;

use super::chat_service::ChatService;
use super::error::ServiceError;
use crate::chat::{Denied, Role};
use crate::router::Message;
use crate::store::StoreError;
use crate::topics;

/// A group id as asked for (checked), or a random one.
fn group_id(id: Option<String>) -> Result<String, ServiceError> {
    match id {
        Some(id) if topics::valid_id(&id) => Ok(id),
        Some(id) => Err(ServiceError::BadRequest(format!(
            "`{id}` is not a valid group id"
        ))),
        None => Ok(crate::ids::random_hex(6)),
    }
}

impl ChatService {
    /// Creates a group owned by `owner` with the given members; returns its conversation id.
    pub async fn create_group(
        &self,
        owner: &str,
        id: Option<String>,
        name: &str,
        members: &[String],
    ) -> Result<String, ServiceError> {
        let _guard = self.changes.lock().await;
        let conv = topics::group_conv(&group_id(id)?);
        let roster = self.roster(owner, members)?;
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

    /// A new group's members: `owner` as owner, then each other member once, if `owner` may add
    /// them.
    fn roster(&self, owner: &str, members: &[String]) -> Result<Vec<(String, Role)>, ServiceError> {
        let mut roster: Vec<(String, Role)> = vec![(owner.to_string(), Role::Owner)];
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
        Ok(roster)
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

    /// Changes a group's name and topic (the absent ones stay) as `actor`, an admin or owner.
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

    /// Tells every member of `conv` (and `user`, who may no longer be one) about a change.
    pub(super) async fn announce_member(
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
}
