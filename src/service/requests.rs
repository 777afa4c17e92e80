//! Requests on `q/{user}/{op}`: each is read once into a typed [`ChatRequest`], dispatched to the
//! one [`ChatService`] method that serves it, and answered on the requester's reply topic (or
//! MQTT 5 response topic). HTTP calls [`ChatService::dispatch`] with requests it builds itself.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

pub use super::chat_service::ChatService;
pub use super::error::ServiceError;
use crate::chat::requests::Request as ChatRequest;
use crate::router::Message;
use crate::topics;

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

/// The reply to a request that changes something and returns nothing.
fn done(_: ()) -> Value {
    json!({})
}

/// The reply's JSON: the result with `"ok": true`, or the error's code and message.
fn reply_body(result: Result<Value, ServiceError>, op: &str) -> Value {
    match result {
        Ok(mut v) => {
            v["ok"] = json!(true);
            v
        }
        Err(e) => {
            if let ServiceError::Store(err) = &e {
                tracing::error!(error = %err, op = %op, "request failed in storage");
            }
            json!({"ok": false, "error": e.code(), "message": e.to_string()})
        }
    }
}

/// Where the reply goes: the MQTT 5 response topic when it lies in the requester's own
/// stream, otherwise their reply topic for `op`.
fn reply_topic(req: &Request) -> String {
    let own_stream = |t: &str| matches!(topics::classify(t), Some(topics::ChatTopic::Stream { user }) if user == &*req.user);
    match req.response_topic.as_deref() {
        Some(t) if own_stream(t) => t.to_string(),
        _ => topics::user_reply(&req.user, &req.op),
    }
}

impl ChatService {
    /// Answers one request on the requester's reply topic (or MQTT 5 response topic).
    pub async fn handle(&self, req: Request) {
        let result = match ChatRequest::parse(&req.op, &req.payload) {
            Ok(request) => self.dispatch(&req.user, &request).await,
            Err(e) => Err(e.into()),
        };
        let body = reply_body(result, &req.op);
        let mut message = Message::server(reply_topic(&req), body.to_string());
        if let Some(c) = req.correlation.clone() {
            message
                .properties
                .get_or_insert_with(Default::default)
                .correlation_data = Some(c);
        }
        self.send(message).await;
    }

    /// Serves one request of `me` (over MQTT or HTTP): the reply's JSON, without `ok`.
    pub async fn dispatch(&self, me: &str, request: &ChatRequest) -> Result<Value, ServiceError> {
        match request {
            ChatRequest::CreateGroup { id, name, members } => {
                let conv = self.create_group(me, id.clone(), name, members).await?;
                Ok(json!({ "conv": conv }))
            }
            ChatRequest::AddMember { conv, user, role }
            | ChatRequest::SetRole { conv, user, role } => {
                self.set_member(me, conv, user, *role).await.map(done)
            }
            ChatRequest::RemoveMember { conv, user } => {
                self.remove_member(me, conv, user).await.map(done)
            }
            ChatRequest::TransferOwnership { conv, user } => {
                self.transfer_ownership(me, conv, user).await.map(done)
            }
            ChatRequest::Leave { conv } => self.remove_member(me, conv, me).await.map(done),
            ChatRequest::UpdateGroup { conv, name, topic } => self
                .update_group(me, conv, name.clone(), topic.clone())
                .await
                .map(done),
            ChatRequest::Block { user } => self.set_block(me, user, true).await.map(done),
            ChatRequest::Unblock { user } => self.set_block(me, user, false).await.map(done),
            ChatRequest::Conversations => self.conversations(me).await,
            ChatRequest::Members { conv } => self.members(me, conv),
            ChatRequest::SyncConversation { conv, after, limit } => {
                self.sync_conversation(me, conv, *after, *limit).await
            }
            ChatRequest::SyncAll { since, limit } => self.sync_all(me, *since, *limit).await,
            ChatRequest::Presence { away, hidden } => {
                self.set_presence(me, *away, *hidden);
                Ok(json!({}))
            }
            ChatRequest::PushRegister { url } => self.register_push(me, url).await.map(done),
            ChatRequest::PushUnregister { url } => self.unregister_push(me, url).await.map(done),
            ChatRequest::History {
                conv,
                before,
                limit,
            } => self.history(me, conv, *before, *limit).await,
            ChatRequest::Search { q, limit } => self.search(me, q, *limit).await,
        }
    }
}
