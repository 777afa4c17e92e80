//! SUBSCRIBE and UNSUBSCRIBE: each filter checked, recorded in the index and in the session,
//! answered with SUBACK/UNSUBACK, then the retained messages a new subscription asked for.

use std::sync::Arc;
use std::time::Instant;

use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode, UnsubAck,
    UnsubAckReason, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;

use super::session::{Session, Subscribed};
use super::subscriptions::SubOptions;
use super::{Outbound, Router, Settings};
use crate::access::Access;
use crate::topics::{self, Subscription};

impl Router {
    /// Handles a SUBSCRIBE from connection `conn_id`: SUBACK with one code per filter, then
    /// the retained messages for the filters that send them.
    pub(super) fn subscribe(
        &mut self,
        client: &Arc<str>,
        conn_id: u64,
        packet: Subscribe,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        let Some(link) = session.link_for(conn_id) else {
            return;
        };
        let mailbox = link.mailbox.clone();
        let id = packet.properties.as_ref().and_then(|p| p.id);
        let mut codes = Vec::with_capacity(packet.filters.len());
        let mut retained_for: Vec<(String, QoS)> = Vec::new();
        let mut added: Vec<(Option<&str>, &str)> = Vec::new();
        for f in &packet.filters {
            let sub = match admit_filter(&self.access, &self.settings, session, client, f) {
                Ok(sub) => sub,
                Err(code) => {
                    codes.push(code);
                    continue;
                }
            };
            let options = SubOptions {
                qos: f.qos,
                no_local: f.nolocal,
                retain_as_published: f.preserve_retain,
                id,
                check_read: self.access.needs_read_check(sub.filter),
            };
            let existed = self
                .subscriptions
                .insert(sub.group, sub.filter, client, options);
            session.remember(&f.path, &sub);
            if !existed {
                added.push((sub.group, sub.filter));
            }
            codes.push(SubscribeReasonCode::Success(f.qos));
            if sends_retained(&sub, &f.retain_forward_rule, existed) {
                retained_for.push((sub.filter.to_string(), f.qos));
            }
        }
        for (group, filter) in added {
            self.interest(group, filter, true);
        }
        mailbox.push(Outbound::Packet(Box::new(Packet::SubAck(SubAck {
            pkid: packet.pkid,
            return_codes: codes,
            properties: None,
        }))));
        for (filter, qos) in retained_for {
            self.send_retained(client, &filter, qos, id, now);
        }
    }

    /// Handles an UNSUBSCRIBE from connection `conn_id`: UNSUBACK with one reason per filter.
    pub(super) fn unsubscribe(&mut self, client: &Arc<str>, conn_id: u64, packet: Unsubscribe) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        let Some(link) = session.link_for(conn_id) else {
            return;
        };
        let mailbox = link.mailbox.clone();
        let limits = self.settings.topics;
        let mut removed = Vec::new();
        let reasons = packet
            .filters
            .iter()
            .map(|raw| {
                if topics::parse_subscription(raw, &limits).is_err() {
                    return UnsubAckReason::TopicFilterInvalid;
                }
                match session.subscriptions.remove(raw.as_str()) {
                    Some(sub) => {
                        if self
                            .subscriptions
                            .remove(sub.group.as_deref(), &sub.filter, client)
                        {
                            removed.push(sub);
                        }
                        UnsubAckReason::Success
                    }
                    None => UnsubAckReason::NoSubscriptionExisted,
                }
            })
            .collect();
        for sub in removed {
            self.interest(sub.group.as_deref(), &sub.filter, false);
        }
        mailbox.push(Outbound::Packet(Box::new(Packet::UnsubAck(UnsubAck {
            pkid: packet.pkid,
            reasons,
            properties: None,
        }))));
    }
}

/// Parses one filter of a SUBSCRIBE, or says why it is refused: invalid (or beyond the topic
/// caps), not authorized, or a new subscription beyond the session's limit (0: none).
fn admit_filter<'f>(
    access: &Access,
    settings: &Settings,
    session: &Session,
    client: &str,
    f: &'f Filter,
) -> Result<Subscription<'f>, SubscribeReasonCode> {
    let sub = match topics::parse_subscription(&f.path, &settings.topics) {
        Ok(sub) => sub,
        Err(e) => {
            tracing::info!(client = %client, error = %e, "invalid topic filter");
            return Err(SubscribeReasonCode::TopicFilterInvalid);
        }
    };
    let limit = settings.max_subscriptions;
    if !access.can_subscribe(&session.identity, sub.filter) {
        tracing::info!(client = %client, filter = ?f.path, "subscription refused");
        return Err(SubscribeReasonCode::NotAuthorized);
    }
    if limit > 0
        && session.subscriptions.len() >= limit
        && !session.subscriptions.contains(f.path.as_str())
    {
        return Err(SubscribeReasonCode::QuotaExceeded);
    }
    Ok(sub)
}

/// Whether a subscription gets the retained messages now: never for a shared one, else as its
/// Retain Handling option says.
fn sends_retained(sub: &Subscription<'_>, rule: &RetainForwardRule, existed: bool) -> bool {
    sub.group.is_none()
        && match rule {
            RetainForwardRule::OnEverySubscribe => true,
            RetainForwardRule::OnNewSubscribe => !existed,
            RetainForwardRule::Never => false,
        }
}

impl Session {
    /// Remembers a subscription under its raw filter, with what the index needs to drop it.
    fn remember(&mut self, raw: &str, sub: &Subscription<'_>) {
        let raw: Arc<str> = raw.into();
        let filter = match sub.group {
            None => raw.clone(),
            Some(_) => sub.filter.into(),
        };
        self.subscriptions.insert(
            raw,
            Subscribed {
                group: sub.group.map(Arc::from),
                filter,
            },
        );
    }
}
