//! Session lifecycle: a CONNECT attaches a connection to a new, resumed or taken-over session;
//! the connection's end detaches it and starts the session's expiry; an ended session leaves
//! the table, its user's list and the subscription index.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;

use super::session::{Link, Session};
use super::{ClientInfo, ConnectRefused, ConnectRequest, Outbound, Report, Router};
use crate::stats::Stats;

impl Router {
    /// Attaches a connection to its session (new, resumed or taken over); returns whether a
    /// session was present.
    pub(super) fn connect(
        &mut self,
        req: ConnectRequest,
        now: Instant,
    ) -> Result<bool, ConnectRefused> {
        self.admit(&req, now)?;
        self.tell_cluster(super::Control::TakenOver(req.identity.client_id.clone()));
        let resumed = self.take_over(&req, now);
        let present = resumed.is_some();
        let client = req.identity.client_id.clone();
        let session = self.attach(req, resumed, now);
        self.add_session(client, session);
        Ok(present)
    }

    /// Refuses a CONNECT that came too late, was kicked since its check, or is one connection
    /// too many for its user.
    fn admit(&self, req: &ConnectRequest, now: Instant) -> Result<(), ConnectRefused> {
        if now.saturating_duration_since(req.authenticated_at) >= self.settings.handshake_timeout {
            // Its connection has given up, and a kick that came after its check is forgotten.
            return Err(ConnectRefused::TooLate);
        }
        if self.kicked_since_check(req) {
            return Err(ConnectRefused::Revoked);
        }
        let client = &req.identity.client_id;
        if let (Some(user), max) = (&req.identity.user, self.settings.max_connections_per_user) {
            // A takeover replaces a connection rather than adding one.
            let live = self.by_user.get(user).map_or(0, |ids| {
                ids.iter()
                    .filter(|id| *id != client)
                    .filter(|id| self.sessions.get(*id).is_some_and(|s| s.link.is_some()))
                    .count()
            });
            if max > 0 && live + req.elsewhere >= max {
                return Err(ConnectRefused::TooManyConnections);
            }
        }
        Ok(())
    }

    /// Takes the client's present session out of the table, disconnecting its connection
    /// (taken over); returns it if the CONNECT resumes it, else ends it.
    fn take_over(&mut self, req: &ConnectRequest, now: Instant) -> Option<Session> {
        let mut old = self.remove_session(&req.identity.client_id)?;
        if let Some(link) = old.link.take() {
            link.mailbox
                .push(Outbound::Disconnect(DisconnectReasonCode::SessionTakenOver));
            Stats::sub(&self.stats.clients_connected, 1);
        }
        // A session never passes from one user to another.
        let same_owner = old.identity.user == req.identity.user;
        let resume = !req.clean_start && same_owner;
        if let Some(message) = old.will_on_takeover(resume, now) {
            self.publish(message, now);
        }
        if resume {
            Some(old)
        } else {
            self.drop_subscriptions(&old);
            None
        }
    }

    /// Links the connection to its session (`resumed`, or a new one), reports it online, and
    /// resends what a resumed session had in flight and queued.
    fn attach(&mut self, req: ConnectRequest, resumed: Option<Session>, now: Instant) -> Session {
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
                client: session.identity.client_id.clone(),
            });
        }
        if present {
            session.resend_inflight();
            let expired = session.pump(now);
            Stats::add(&self.stats.messages_dropped, expired as u64);
        }
        session
    }

    /// Connection `conn_id` ended: the session is detached, its will published or scheduled,
    /// and it ends now or expires later.
    pub(super) fn closed(
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
        let will_now = session.will_on_close(publish_will, now);
        if expiry_secs == 0 {
            self.end_session(client);
        } else if expiry_secs != u32::MAX {
            session.expires_at = Some(now + Duration::from_secs(u64::from(expiry_secs)));
        }
        if let Some(message) = will_now {
            self.publish(message, now);
        }
    }

    /// Ends a session: out of the table and out of the subscription index.
    pub(super) fn end_session(&mut self, client: &str) {
        if let Some(session) = self.remove_session(client) {
            self.drop_subscriptions(&session);
        }
    }

    /// Puts a session in the table and in its user's list.
    fn add_session(&mut self, client: Arc<str>, session: Session) {
        if let Some(user) = &session.identity.user {
            let clients = self.by_user.entry(user.clone()).or_default();
            // Most users have one or two devices: no room kept for four.
            clients.reserve_exact(1);
            clients.push(client.clone());
        }
        self.sessions.insert(client, Box::new(session));
    }

    /// Takes a session out of the table and out of its user's list.
    pub(super) fn remove_session(&mut self, client: &str) -> Option<Session> {
        let session = *self.sessions.remove(client)?;
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

    /// Removes a session's subscriptions from the index.
    pub(super) fn drop_subscriptions(&mut self, session: &Session) {
        for sub in session.subscriptions.values() {
            let client = &session.identity.client_id;
            if self
                .subscriptions
                .remove(sub.group.as_deref(), &sub.filter, client)
            {
                self.interest(sub.group.as_deref(), &sub.filter, false);
            }
        }
    }

    /// The sessions, sorted, as the admin API lists them.
    pub(super) fn list_clients(&self) -> Vec<ClientInfo> {
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
        list
    }
}
