//! Group changes: creating a group, adding, removing and promoting members, handing ownership
//! over, renaming — each
//! committed to the store first, then applied to the shared directory, then announced on the
//! members' `u/{user}/events`.

use serde_json::json;

use super::chat_service::ChatService;
use super::error::ServiceError;
use crate::chat::{Denied, Directory, Role};
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

/// How many owners `conv` has.
fn owners(d: &Directory, conv: &str) -> usize {
    d.group(conv).map_or(0, |g| {
        g.members.values().filter(|r| **r == Role::Owner).count()
    })
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
        let mut named: Vec<&str> = members.iter().map(String::as_str).collect();
        named.push(owner);
        self.know_users(&named).await?;
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
        self.know_users(&[user]).await?;
        let existing = self.check_set_member(actor, conv, user, role)?;
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

    /// May `actor` give `user` `role` in `conv`? Returns `user`'s role before. Owners manage
    /// everything but ownership itself ([`ChatService::transfer_ownership`]), and never demote
    /// the last owner; admins add members and nothing above that.
    fn check_set_member(
        &self,
        actor: &str,
        conv: &str,
        user: &str,
        role: Role,
    ) -> Result<Option<Role>, ServiceError> {
        let d = self.read();
        let actor_role = d.role(conv, actor).ok_or_else(|| self.missing(&d, conv))?;
        let existing = d.role(conv, user);
        if existing.is_none() {
            d.can_add_member(actor, user)?;
        }
        let allowed = match actor_role {
            Role::Owner => role != Role::Owner,
            Role::Admin => role == Role::Member && existing.is_none(),
            Role::Member => false,
        };
        if !allowed {
            return Err(Denied::Role.into());
        }
        if existing == Some(Role::Owner) && owners(&d, conv) == 1 {
            return Err(Denied::LastOwner.into());
        }
        Ok(existing)
    }

    /// Hands `conv` from its owner `actor` to `user`, another member; `actor` stays on as an
    /// admin. One store transaction makes both changes, so the group is never without an owner.
    pub async fn transfer_ownership(
        &self,
        actor: &str,
        conv: &str,
        user: &str,
    ) -> Result<(), ServiceError> {
        let _guard = self.changes.lock().await;
        {
            let d = self.read();
            let actor_role = d.role(conv, actor).ok_or_else(|| self.missing(&d, conv))?;
            if actor_role != Role::Owner {
                return Err(Denied::Role.into());
            }
            match d.role(conv, user) {
                None => return Err(Denied::NotMember.into()),
                Some(Role::Owner) => {
                    return Err(ServiceError::BadRequest(format!(
                        "{user} already owns {conv}"
                    )))
                }
                Some(_) => {}
            }
        }
        let (c, from, to) = (conv.to_string(), actor.to_string(), user.to_string());
        self.blocking(move |s| s.transfer_ownership(&c, &from, &to))
            .await?;
        {
            let mut d = self.write();
            d.set_member(conv, user, Role::Owner);
            d.set_member(conv, actor, Role::Admin);
        }
        self.announce_member(conv, user, "role_changed", Some(Role::Owner), actor)
            .await;
        self.announce_member(conv, actor, "role_changed", Some(Role::Admin), actor)
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
            // The last owner hands the group over before leaving it, unless alone in it: an
            // ownerless group could never again be managed.
            if actor == user
                && target == Role::Owner
                && owners(&d, conv) == 1
                && d.members(conv).len() > 1
            {
                return Err(Denied::LastOwner.into());
            }
            let allowed = if actor == user {
                true
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
