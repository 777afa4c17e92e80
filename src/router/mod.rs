//! The router: sessions, the subscription index, retained messages, wills and `$SYS` statistics.
//!
//! It is plain data behind one task. Connections send it [`Event`]s over one channel (so events
//! from one connection keep their order) and it answers through each connection's [`Mailbox`]
//! without ever waiting on a client. All decisions are made by [`Router`]'s methods, which take
//! the current time as an argument so tests drive them directly.
//!
//! Delivery is at min(publication QoS, subscription QoS); a session receiving through several
//! overlapping filters gets the message once, at the highest of those QoS, with every matching
//! subscription identifier. Each QoS 1/2 message sent towards a client is remembered with its
//! packet id until the client acknowledges it, which is where delivery receipts attach.

mod event;
mod mailbox;
mod message;
mod report;
mod session;
mod settings;
mod subscriptions;
mod task;
mod wills;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Packet, PubComp, PubCompReason, RetainForwardRule, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc;

pub use event::{Ack, ClientInfo, ConnectRefused, ConnectRequest, Event};
pub use mailbox::{Mailbox, Outbound};
pub use message::{ChatRef, Delivery, Message};
pub use report::Report;
use session::{Link, Outcome, Session, Subscribed};
pub use settings::Settings;
use subscriptions::{SubOptions, Subscriptions};
pub use task::spawn;
pub use wills::Will;

use crate::access::Access;
use crate::codec::{max_qos, min_qos};
use crate::stats::Stats;
use crate::topics::{self, SysTopic};

pub struct Router {
    settings: Settings,
    access: Arc<Access>,
    stats: Arc<Stats>,
    sessions: HashMap<Arc<str>, Session>,
    /// The client ids of each user's sessions, so a CONNECT counts the user's connections
    /// without a scan of every session.
    by_user: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// When a full retained store may next be swept for expired messages.
    next_retained_sweep: Instant,
    subscriptions: Subscriptions,
    /// Ordered, so that a subscription reads only the topics under its filter's literal prefix
    /// (a scan of every retained topic per SUBSCRIBE made connecting quadratic: each connected
    /// user has a retained presence topic).
    retained: BTreeMap<String, Arc<Message>>,
    started: Instant,
    next_sys: Option<Instant>,
    /// Recent kicks (revoked devices, removed users), for `handshake_timeout`: a CONNECT that
    /// checked its credentials before a kick reaches the router only after it, and must not
    /// outlive the kick.
    kicked_users: HashMap<Arc<str>, Instant>,
    kicked_clients: HashMap<Arc<str>, Instant>,
    /// Deliveries and connections, for receipts and presence (see [`Report`]).
    reports: mpsc::UnboundedSender<Report>,
}

impl Router {
    pub fn new(
        settings: Settings,
        access: Arc<Access>,
        stats: Arc<Stats>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Router {
        let now = Instant::now();
        Router {
            reports,
            next_sys: settings.sys_interval.map(|_| now),
            settings,
            access,
            stats,
            sessions: HashMap::new(),
            by_user: HashMap::new(),
            next_retained_sweep: Instant::now(),
            subscriptions: Subscriptions::default(),
            retained: BTreeMap::new(),
            started: now,
            kicked_users: HashMap::new(),
            kicked_clients: HashMap::new(),
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Connect(req, reply) => {
                // A connection that gave up waiting sends Closed (`edge::connect::Attached`).
                let _ = reply.send(self.connect(req, now));
            }
            Event::Publish {
                client,
                message,
                qos2_pkid,
                copies,
            } => {
                if let (Some(pkid), Some(s)) = (qos2_pkid, self.sessions.get_mut(&client)) {
                    if !s.incoming_qos2.insert(pkid) {
                        return;
                    }
                }
                for topic in copies {
                    let mut copy = message.clone();
                    copy.topic = topic;
                    self.publish(copy, now);
                }
                self.publish(message, now);
            }
            Event::ServerPublish(message) => self.publish(message, now),
            Event::ServerPublishTo { message, copies } => {
                for topic in copies {
                    let mut copy = message.clone();
                    copy.topic = topic;
                    self.publish(copy, now);
                }
                self.publish(message, now);
            }
            Event::Kick { user } => {
                let clients = self.by_user.get(&user).cloned().unwrap_or_default();
                for client in clients {
                    self.kick(&client);
                }
                self.kicked_users.insert(user, now);
            }
            Event::KickClient { client } => {
                self.kick(&client);
                self.kicked_clients.insert(client, now);
            }
            Event::ListClients(reply) => {
                let mut list: Vec<_> = self
                    .sessions
                    .iter()
                    .map(|(c, s)| ClientInfo {
                        client: c.clone(),
                        user: s.identity.user.clone(),
                        connected: s.is_connected(),
                    })
                    .collect();
                list.sort();
                let _ = reply.send(list);
            }
            Event::Release {
                client,
                conn_id,
                pkid,
                answer,
            } => self.release(&client, conn_id, pkid, answer),
            Event::Subscribe {
                client,
                conn_id,
                packet,
            } => self.subscribe(&client, conn_id, packet, now),
            Event::Unsubscribe {
                client,
                conn_id,
                packet,
            } => self.unsubscribe(&client, conn_id, packet),
            Event::Acks {
                client,
                conn_id,
                acks,
            } => self.acks(&client, conn_id, &acks, now),
            Event::Closed {
                client,
                conn_id,
                publish_will,
                expiry_secs,
            } => self.closed(&client, conn_id, publish_will, expiry_secs, now),
        }
    }

    /// Attaches a connection to its session (new, resumed or taken over); returns whether a
    /// session was present.
    fn connect(&mut self, req: ConnectRequest, now: Instant) -> Result<bool, ConnectRefused> {
        let client = req.identity.client_id.clone();
        if now.saturating_duration_since(req.authenticated_at) >= self.settings.handshake_timeout {
            // Its connection has given up, and a kick that came after its check is forgotten.
            return Err(ConnectRefused::TooLate);
        }
        let after_check = |kicked: &HashMap<Arc<str>, Instant>, key: &str| {
            kicked
                .get(key)
                .is_some_and(|at| *at >= req.authenticated_at)
        };
        if after_check(&self.kicked_clients, &client)
            || req
                .identity
                .user
                .as_deref()
                .is_some_and(|u| after_check(&self.kicked_users, u))
        {
            return Err(ConnectRefused::Revoked);
        }
        if let (Some(user), max) = (&req.identity.user, self.settings.max_connections_per_user) {
            // A takeover replaces a connection rather than adding one.
            let live = self.by_user.get(user).map_or(0, |ids| {
                ids.iter()
                    .filter(|id| **id != client)
                    .filter(|id| self.sessions.get(*id).is_some_and(|s| s.link.is_some()))
                    .count()
            });
            if max > 0 && live >= max {
                return Err(ConnectRefused::TooManyConnections);
            }
        }
        let mut resumed = None;
        if let Some(mut old) = self.remove_session(&client) {
            if let Some(link) = old.link.take() {
                link.mailbox
                    .push(Outbound::Disconnect(DisconnectReasonCode::SessionTakenOver));
                Stats::sub(&self.stats.clients_connected, 1);
            }
            // A session never passes from one user to another.
            let same_owner = old.identity.user == req.identity.user;
            let resume = !req.clean_start && same_owner;
            // The old connection's will: a resumed session cancels a delayed will (the client is
            // back in time); otherwise the old session ends and its will goes out now.
            if let Some(will) = old.will.take() {
                if !resume || (will.delay_secs == 0 && old.will_at.is_none()) {
                    self.publish((*will).into_message(now), now);
                }
            }
            if resume {
                resumed = Some(old);
            } else {
                self.drop_subscriptions(&old);
            }
        }
        let present = resumed.is_some();
        let mut session = resumed.unwrap_or_else(|| Session::new(req.identity.clone(), 0));
        session.identity = req.identity;
        session.expiry_secs = req.expiry_secs.min(self.settings.max_session_expiry);
        session.expires_at = None;
        session.will = req.will;
        session.will_at = None;
        session.link = Some(Link {
            conn_id: req.conn_id,
            mailbox: req.mailbox,
            window: usize::from(req.receive_maximum.min(self.settings.max_inflight)),
        });
        Stats::add(&self.stats.clients_connected, 1);
        if let Some(user) = &session.identity.user {
            let _ = self.reports.send(Report::Online {
                user: user.clone(),
                client: client.clone(),
            });
        }
        if present {
            session.resend_inflight();
            let expired = session.pump(now);
            Stats::add(&self.stats.messages_dropped, expired as u64);
        }
        if let Some(user) = &session.identity.user {
            self.by_user
                .entry(user.clone())
                .or_default()
                .push(client.clone());
        }
        self.sessions.insert(client, session);
        Ok(present)
    }

    /// Ends a client's session, disconnecting it with 0x98 (administrative action).
    fn kick(&mut self, client: &str) {
        let Some(mut session) = self.remove_session(client) else {
            return;
        };
        if let Some(link) = session.link.take() {
            link.mailbox.push(Outbound::Disconnect(
                DisconnectReasonCode::AdministrativeAction,
            ));
            Stats::sub(&self.stats.clients_connected, 1);
            if let Some(user) = &session.identity.user {
                let _ = self.reports.send(Report::Offline {
                    user: user.clone(),
                    client: session.identity.client_id.clone(),
                });
            }
        }
        self.drop_subscriptions(&session);
    }

    /// Routes a message to every matching session, and keeps it if retained.
    pub fn publish(&mut self, message: Message, now: Instant) {
        let message = Arc::new(message);
        let topic = message.topic_str();
        if message.retain {
            if message.payload.is_empty() {
                self.retained.remove(topic);
            } else {
                if self.retained.len() >= self.settings.max_retained
                    && now >= self.next_retained_sweep
                {
                    // Expired messages are never delivered again: they give up their slots.
                    // At most once a second: with none expired, a sweep frees nothing and each
                    // new topic would scan the whole store again.
                    self.drop_expired_retained(now);
                    self.next_retained_sweep = now + Duration::from_secs(1);
                }
                if self.retained.len() < self.settings.max_retained
                    || self.retained.contains_key(topic)
                {
                    self.retained.insert(topic.to_string(), message.clone());
                }
            }
        }

        // Collect (client, QoS, retain-as-published, subscription id) per matching filter, then
        // merge per client.
        let mut hits: Vec<(Arc<str>, QoS, bool, Option<usize>)> = Vec::new();
        {
            let sessions = &self.sessions;
            let access = &self.access;
            let origin = message.origin.as_deref();
            self.subscriptions.for_each_match(
                topic,
                &|client| sessions.get(client).is_some_and(Session::is_connected),
                &mut |hit| {
                    let o = hit.options;
                    if o.no_local && origin == Some(&**hit.client) {
                        return;
                    }
                    if o.check_read {
                        let Some(s) = sessions.get(hit.client) else {
                            return;
                        };
                        if !access.can_read(&s.identity, topic) {
                            return;
                        }
                    }
                    hits.push((hit.client.clone(), o.qos, o.retain_as_published, o.id));
                },
            );
        }
        if hits.len() > 1 {
            // Unstable: no buffer to allocate, and the order among one client's hits does not
            // matter (they merge).
            hits.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        let mut i = 0;
        while i < hits.len() {
            let client = hits[i].0.clone();
            let (mut qos, mut rap) = (hits[i].1, hits[i].2);
            let mut ids: Vec<usize> = hits[i].3.into_iter().collect();
            let mut j = i + 1;
            while j < hits.len() && hits[j].0 == client {
                qos = max_qos(qos, hits[j].1);
                rap |= hits[j].2;
                ids.extend(hits[j].3);
                j += 1;
            }
            i = j;
            let delivery = Delivery {
                message: message.clone(),
                qos: min_qos(message.qos, qos),
                retain: rap && message.retain,
                dup: false,
                pkid: 0,
                subscription_ids: ids,
            };
            self.deliver(&client, delivery, now);
        }
    }

    fn deliver(&mut self, client: &str, delivery: Delivery, now: Instant) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        if delivery.message.is_expired(now) {
            Stats::add(&self.stats.messages_dropped, 1);
            return;
        }
        let outcome = session.deliver(delivery, self.settings.max_queued, self.settings.overflow);
        if outcome == Outcome::Dropped {
            Stats::add(&self.stats.messages_dropped, 1);
        }
    }

    fn subscribe(&mut self, client: &Arc<str>, conn_id: u64, packet: Subscribe, now: Instant) {
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
        for f in &packet.filters {
            let Ok(sub) = topics::parse_subscription(&f.path) else {
                codes.push(SubscribeReasonCode::TopicFilterInvalid);
                continue;
            };
            if !self.access.can_subscribe(&session.identity, sub.filter) {
                tracing::info!(client = %client, filter = %f.path, "subscription refused");
                codes.push(SubscribeReasonCode::NotAuthorized);
                continue;
            }
            let limit = self.settings.max_subscriptions;
            if limit > 0
                && session.subscriptions.len() >= limit
                && !session.subscriptions.contains_key(f.path.as_str())
            {
                codes.push(SubscribeReasonCode::QuotaExceeded);
                continue;
            }
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
            let raw: Arc<str> = f.path.as_str().into();
            let filter = match sub.group {
                None => raw.clone(),
                Some(_) => sub.filter.into(),
            };
            session.subscriptions.insert(
                raw,
                Subscribed {
                    group: sub.group.map(Arc::from),
                    filter,
                },
            );
            codes.push(SubscribeReasonCode::Success(f.qos));
            let send_retained = sub.group.is_none()
                && match f.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => true,
                    RetainForwardRule::OnNewSubscribe => !existed,
                    RetainForwardRule::Never => false,
                };
            if send_retained {
                retained_for.push((sub.filter.to_string(), f.qos));
            }
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

    /// Sends the retained messages matching a new subscription (always with RETAIN set).
    fn send_retained(
        &mut self,
        client: &str,
        filter: &str,
        qos: QoS,
        id: Option<usize>,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get(client) else {
            return;
        };
        let check = self.access.needs_read_check(filter);
        // Expired messages are never delivered: the matched ones give up their slots here.
        let mut expired = Vec::new();
        let mut live = |t: &String, m: &Arc<Message>| {
            if m.is_expired(now) {
                expired.push(t.clone());
                None
            } else {
                Some(m.clone())
            }
        };
        // In topic order: one range of the ordered store, or a single topic.
        let matching: Vec<Arc<Message>> = if topics::has_wildcard(filter) {
            let prefix = topics::literal_prefix(filter);
            self.retained
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(t, _)| t.starts_with(prefix))
                .filter(|(t, _)| topics::matches(filter, t))
                .filter(|(t, _)| !check || self.access.can_read(&session.identity, t))
                .filter_map(|(t, m)| live(t, m))
                .collect()
        } else {
            self.retained
                .get_key_value(filter)
                .and_then(|(t, m)| live(t, m))
                .into_iter()
                .collect()
        };
        for topic in expired {
            self.retained.remove(&topic);
        }
        for message in matching {
            let delivery = Delivery {
                qos: min_qos(message.qos, qos),
                message,
                retain: true,
                dup: false,
                pkid: 0,
                subscription_ids: id.into_iter().collect(),
            };
            self.deliver(client, delivery, now);
        }
    }

    fn unsubscribe(&mut self, client: &Arc<str>, conn_id: u64, packet: Unsubscribe) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        let Some(link) = session.link_for(conn_id) else {
            return;
        };
        let mailbox = link.mailbox.clone();
        let reasons = packet
            .filters
            .iter()
            .map(|raw| {
                if topics::parse_subscription(raw).is_err() {
                    return UnsubAckReason::TopicFilterInvalid;
                }
                match session.subscriptions.remove(raw.as_str()) {
                    Some(sub) => {
                        self.subscriptions
                            .remove(sub.group.as_deref(), &sub.filter, client);
                        UnsubAckReason::Success
                    }
                    None => UnsubAckReason::NoSubscriptionExisted,
                }
            })
            .collect();
        mailbox.push(Outbound::Packet(Box::new(Packet::UnsubAck(UnsubAck {
            pkid: packet.pkid,
            reasons,
            properties: None,
        }))));
    }

    /// A PUBREL: the session forgets the packet id; answered here when the connection could not
    /// (see [`Event::Release`]).
    fn release(&mut self, client: &str, conn_id: u64, pkid: u16, answer: bool) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        let known = session.incoming_qos2.remove(&pkid);
        if !answer {
            return;
        }
        let Some(link) = session.link_for(conn_id) else {
            return;
        };
        let mut comp = PubComp::new(pkid, None);
        if !known {
            comp.reason = PubCompReason::PacketIdentifierNotFound;
        }
        link.mailbox
            .push(Outbound::Packet(Box::new(Packet::PubComp(comp))));
    }

    fn acks(&mut self, client: &str, conn_id: u64, acks: &[Ack], now: Instant) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        if session.link_for(conn_id).is_none() {
            return;
        }
        let mut freed = false;
        for &ack in acks {
            let done = match ack {
                Ack::PubAck(pkid) => session.on_puback(pkid),
                Ack::PubRec(pkid, accepted) => session.on_pubrec(pkid, accepted),
                Ack::PubComp(pkid) => session.on_pubcomp(pkid),
                Ack::Discarded(pkid) => {
                    session.discard(pkid);
                    None
                }
            };
            if let Some(delivery) = &done {
                // A recipient device has the message: a delivered receipt (not for the sender's own
                // devices, and not when it arrived as a rejected PUBREC).
                if let (true, Some(chat), Some(user), Ack::PubAck(_) | Ack::PubComp(_)) = (
                    self.settings.delivery_receipts,
                    &delivery.message.chat,
                    &session.identity.user,
                    ack,
                ) {
                    if **user != *chat.from {
                        let _ = self.reports.send(Report::Delivered {
                            user: user.clone(),
                            conv: chat.conv.clone(),
                            seq: chat.seq,
                        });
                    }
                }
            }
            freed |= done.is_some() || matches!(ack, Ack::Discarded(_));
        }
        // The window has room again: what waited in the queue goes out, once for the batch.
        if freed {
            let expired = session.pump(now);
            Stats::add(&self.stats.messages_dropped, expired as u64);
        }
    }

    fn closed(
        &mut self,
        client: &str,
        conn_id: u64,
        publish_will: bool,
        expiry: Option<u32>,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        if session.link_for(conn_id).is_none() {
            return;
        }
        session.link = None;
        Stats::sub(&self.stats.clients_connected, 1);
        if let Some(user) = &session.identity.user {
            let _ = self.reports.send(Report::Offline {
                user: user.clone(),
                client: session.identity.client_id.clone(),
            });
        }
        if let Some(secs) = expiry {
            session.expiry_secs = secs.min(self.settings.max_session_expiry);
        }
        let expiry_secs = session.expiry_secs;
        let mut will_now = None;
        match session.will.take() {
            Some(will) if publish_will => {
                if will.delay_secs == 0 || expiry_secs == 0 {
                    will_now = Some((*will).into_message(now));
                } else {
                    let delay = will.delay_secs.min(expiry_secs);
                    session.will_at = Some(now + Duration::from_secs(u64::from(delay)));
                    session.will = Some(will);
                }
            }
            _ => {}
        }
        if expiry_secs == 0 {
            self.end_session(client);
        } else if expiry_secs != u32::MAX {
            session.expires_at = Some(now + Duration::from_secs(u64::from(expiry_secs)));
        }
        if let Some(message) = will_now {
            self.publish(message, now);
        }
    }

    fn end_session(&mut self, client: &str) {
        if let Some(session) = self.remove_session(client) {
            self.drop_subscriptions(&session);
        }
    }

    /// Takes a session out of the table and out of its user's list.
    fn remove_session(&mut self, client: &str) -> Option<Session> {
        let session = self.sessions.remove(client)?;
        if let Some(user) = &session.identity.user {
            if let Some(ids) = self.by_user.get_mut(user) {
                ids.retain(|id| **id != *client);
                if ids.is_empty() {
                    self.by_user.remove(user);
                }
            }
        }
        Some(session)
    }

    fn drop_subscriptions(&mut self, session: &Session) {
        for sub in session.subscriptions.values() {
            self.subscriptions.remove(
                sub.group.as_deref(),
                &sub.filter,
                &session.identity.client_id,
            );
        }
    }

    /// Time-driven work: delayed wills, expired sessions, `$SYS` statistics.
    pub fn tick(&mut self, now: Instant) {
        let memory = self.settings.handshake_timeout;
        self.kicked_users
            .retain(|_, at| now.saturating_duration_since(*at) < memory);
        self.kicked_clients
            .retain(|_, at| now.saturating_duration_since(*at) < memory);
        let mut wills = Vec::new();
        let mut ended = Vec::new();
        for (client, s) in &mut self.sessions {
            if s.link.is_some() {
                continue;
            }
            let session_over = s.expires_at.is_some_and(|at| now >= at);
            if s.will_at.is_some_and(|at| now >= at) || session_over {
                if let Some(will) = s.will.take() {
                    wills.push((*will).into_message(now));
                }
                s.will_at = None;
            }
            if session_over {
                ended.push(client.clone());
            }
        }
        for client in ended {
            self.end_session(&client);
        }
        for message in wills {
            self.publish(message, now);
        }
        if let (Some(interval), Some(due)) = (self.settings.sys_interval, self.next_sys) {
            if now >= due {
                self.next_sys = Some(now + interval);
                self.publish_sys(now);
            }
        }
    }

    /// Forgets retained messages whose Message Expiry Interval has passed.
    fn drop_expired_retained(&mut self, now: Instant) {
        self.retained.retain(|_, m| !m.is_expired(now));
    }

    fn publish_sys(&mut self, now: Instant) {
        // The retained count must not include messages nobody will receive again.
        self.drop_expired_retained(now);
        let s = self.stats.snapshot();
        for topic in SysTopic::ALL {
            let value = match topic {
                SysTopic::Version => concat!("natter ", env!("CARGO_PKG_VERSION")).to_string(),
                SysTopic::Uptime => {
                    format!("{} seconds", now.duration_since(self.started).as_secs())
                }
                SysTopic::ClientsConnected => s.clients_connected.to_string(),
                SysTopic::ClientsTotal => self.sessions.len().to_string(),
                SysTopic::MessagesReceived => s.messages_received.to_string(),
                SysTopic::MessagesSent => s.messages_sent.to_string(),
                SysTopic::MessagesDropped => s.messages_dropped.to_string(),
                SysTopic::BytesReceived => s.bytes_received.to_string(),
                SysTopic::BytesSent => s.bytes_sent.to_string(),
                SysTopic::RetainedCount => self.retained.len().to_string(),
                SysTopic::SubscriptionsCount => self.subscriptions.len().to_string(),
            };
            self.publish(
                Message {
                    topic: Bytes::from_static(topic.as_str().as_bytes()),
                    payload: Bytes::from(value),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    properties: None,
                    expires_at: None,
                    origin: None,
                    msgpack: None,
                    chat: None,
                },
                now,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use tokio::sync::oneshot;

    use super::*;
    use crate::access::Identity;
    use crate::chat::Directory;
    use crate::config::Config;
    use crate::store::Store;
    use crate::tokens::Signer;

    fn router() -> (Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::default_config();
        let access = Access::new(
            &config.auth,
            Arc::new(Store::open(dir.path()).unwrap()),
            Arc::new(RwLock::new(Directory::default())),
            Arc::new(Signer::new(b"test")),
        )
        .unwrap();
        let settings = Settings::from_config(&config.mqtt, &config.limits, &config.chat);
        let (reports, _) = mpsc::unbounded_channel();
        let router = Router::new(settings, Arc::new(access), Arc::default(), reports);
        (router, dir)
    }

    fn request(client: &str, authenticated_at: Instant) -> ConnectRequest {
        ConnectRequest {
            identity: Identity {
                user: client.split('.').next().map(Arc::from),
                client_id: client.into(),
            },
            conn_id: 1,
            mailbox: Arc::new(Mailbox::new(16)),
            clean_start: true,
            expiry_secs: 0,
            receive_maximum: 10,
            will: None,
            authenticated_at,
        }
    }

    /// Registers `client` (of the user its id starts with), its credentials checked at
    /// `authenticated_at`.
    fn connect(
        r: &mut Router,
        client: &str,
        authenticated_at: Instant,
        now: Instant,
    ) -> Result<bool, ConnectRefused> {
        let (tx, mut rx) = oneshot::channel();
        r.handle(Event::Connect(request(client, authenticated_at), tx), now);
        rx.try_recv().unwrap()
    }

    #[test]
    fn a_connect_checked_before_a_kick_is_refused_after_it() {
        let (mut r, _dir) = router();
        let checked = Instant::now();
        let kick = checked + Duration::from_millis(5);
        r.handle(
            Event::KickClient {
                client: "carol.phone".into(),
            },
            kick,
        );
        r.handle(
            Event::Kick {
                user: "dave".into(),
            },
            kick,
        );
        let later = kick + Duration::from_millis(5);
        // Checked before the revocation, registered after it.
        assert_eq!(
            connect(&mut r, "carol.phone", checked, later),
            Err(ConnectRefused::Revoked)
        );
        assert_eq!(
            connect(&mut r, "dave.laptop", checked, later),
            Err(ConnectRefused::Revoked)
        );
        // Other clients, and checks made after the kick, are unaffected.
        assert_eq!(connect(&mut r, "carol.tablet", checked, later), Ok(false));
        assert_eq!(connect(&mut r, "carol.phone", later, later), Ok(false));
        // A check older than the handshake timeout has outlived its connection.
        let timeout = r.settings.handshake_timeout;
        assert_eq!(
            connect(&mut r, "erin", checked, checked + timeout),
            Err(ConnectRefused::TooLate)
        );
        // Kicks are forgotten once no CONNECT checked before them can still arrive.
        r.tick(kick + timeout);
        assert!(r.kicked_users.is_empty());
        assert!(r.kicked_clients.is_empty());
    }
}
