//! The read side of requests: a user's conversations, a group's members, sync, history and
//! search — each checked against the directory, read from the store, and shaped as the reply's
//! JSON.

use serde_json::{json, Value};

use super::chat_service::ChatService;
use super::error::ServiceError;
use crate::chat::Denied;
use crate::store::StoreError;

impl ChatService {
    /// `conversations`: each of `me`'s conversations with its name, topic, role, unread count
    /// and last message.
    pub(super) async fn conversations(&self, me: &str) -> Result<Value, ServiceError> {
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

    /// `members`: the members of `conv` with their roles, sorted by user, for a member.
    pub(super) fn members(&self, me: &str, conv: &str) -> Result<Value, ServiceError> {
        let d = self.read();
        if !d.is_member(conv, me) {
            return Err(Denied::NotMember.into());
        }
        let mut members: Vec<Value> = d
            .members(conv)
            .into_iter()
            .map(|u| json!({"user": u, "role": d.role(conv, u).map(|r| r.as_str())}))
            .collect();
        members.sort_by(|a, b| a["user"].as_str().cmp(&b["user"].as_str()));
        Ok(json!({ "members": members }))
    }

    /// `sync` of one conversation: a page after `after`, with its receipts and unread count.
    pub(super) async fn sync_conversation(
        &self,
        me: &str,
        conv: &str,
        after: u64,
        limit: usize,
    ) -> Result<Value, ServiceError> {
        self.require_member(conv, me)?;
        let c = conv.to_string();
        let u = me.to_string();
        let (page, first, receipts, unread) = self
            .blocking(move |s| {
                Ok((
                    s.after(&c, after, limit)?,
                    s.first_seq(&c)?,
                    s.receipts(&c)?,
                    s.unread(&c, &u)?,
                ))
            })
            .await?;
        let next = page.items.last().map_or(after, |i| i.envelope.seq);
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

    /// `sync` of all of `me`'s conversations: a page after stream position `since`.
    pub(super) async fn sync_all(
        &self,
        me: &str,
        since: i64,
        limit: usize,
    ) -> Result<Value, ServiceError> {
        let convs = self.conversations_of(me).await?;
        let page = self
            .blocking(move |s| s.since(&convs, since, limit))
            .await?;
        let next = page.items.last().map_or(since, |i| i.envelope.id);
        Ok(json!({"messages": page.items, "more": page.more, "next": next}))
    }

    /// `history`: a page of `conv` before sequence number `before`, for a member.
    pub(super) async fn history(
        &self,
        me: &str,
        conv: &str,
        before: u64,
        limit: usize,
    ) -> Result<Value, ServiceError> {
        self.require_member(conv, me)?;
        let c = conv.to_string();
        let page = self.blocking(move |s| s.before(&c, before, limit)).await?;
        Ok(json!({"conv": conv, "messages": page.items, "more": page.more}))
    }

    /// `search`: messages matching `q` in `me`'s conversations.
    pub(super) async fn search(
        &self,
        me: &str,
        q: &str,
        limit: usize,
    ) -> Result<Value, ServiceError> {
        let convs = self.conversations_of(me).await?;
        let q = q.to_string();
        let items = self.blocking(move |s| s.search(&convs, &q, limit)).await?;
        Ok(json!({"messages": items}))
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
}
