//! Kicks: ending a user's or a client's sessions (a removed account, a revoked device, an
//! admin's kick) with DISCONNECT 0x98, and remembering each kick for `handshake_timeout`.
//!
//! A CONNECT that checked its credentials before a kick reaches the router only after it, and
//! must not outlive the kick: [`Router::kicked_since_check`] refuses it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;

use super::{ConnectRequest, Outbound, Report, Router};
use crate::stats::Stats;

impl Router {
    /// Ends every session of a user (removed account).
    pub(super) fn kick_user(&mut self, user: Arc<str>, now: Instant) {
        let clients = self.by_user.get(&user).cloned().unwrap_or_default();
        for client in clients {
            self.kick(&client);
        }
        self.kicked_users.insert(user, now);
    }

    /// Ends one client's session (a revoked device, an admin's kick).
    pub(super) fn kick_client(&mut self, client: Arc<str>, now: Instant) {
        self.kick(&client);
        self.kicked_clients.insert(client, now);
    }

    /// The client connected to another node of the cluster: its session here ends, and its
    /// connection is told so (0x8E). What it had queued here is not carried over: a chat
    /// device fetches what it missed from the store (`sync`).
    pub(super) fn taken_over_elsewhere(&mut self, client: &str) {
        self.end_with(client, DisconnectReasonCode::SessionTakenOver);
    }

    /// Ends a client's session, disconnecting it with 0x98 (administrative action).
    fn kick(&mut self, client: &str) {
        self.end_with(client, DisconnectReasonCode::AdministrativeAction);
    }

    /// Ends a client's session, disconnecting its connection with `reason`.
    fn end_with(&mut self, client: &str, reason: DisconnectReasonCode) {
        let Some(mut session) = self.remove_session(client) else {
            return;
        };
        if let Some(link) = session.link.take() {
            link.mailbox.push(Outbound::Disconnect(reason));
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

    /// Whether the client or its user was kicked after the request's credentials were checked.
    pub(super) fn kicked_since_check(&self, req: &ConnectRequest) -> bool {
        let after_check = |kicked: &HashMap<Arc<str>, Instant>, key: &str| {
            kicked
                .get(key)
                .is_some_and(|at| *at >= req.authenticated_at)
        };
        after_check(&self.kicked_clients, &req.identity.client_id)
            || req
                .identity
                .user
                .as_deref()
                .is_some_and(|u| after_check(&self.kicked_users, u))
    }

    /// Forgets kicks once no CONNECT checked before them can still arrive.
    pub(super) fn forget_old_kicks(&mut self, now: Instant) {
        let memory = self.settings.handshake_timeout;
        self.kicked_users
            .retain(|_, at| now.saturating_duration_since(*at) < memory);
        self.kicked_clients
            .retain(|_, at| now.saturating_duration_since(*at) < memory);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use std::time::Duration;

    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::access::{Access, Identity};
    use crate::chat::Directory;
    use crate::config::Config;
    use crate::router::{ConnectRefused, Event, Mailbox, QueueBounds, Settings};
    use crate::tokens::Signer;

    fn router() -> (Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::default_config();
        let access = Access::new(
            &config.auth,
            crate::store::sqlite::Sqlite::open(dir.path())
                .map(Arc::new)
                .unwrap(),
            Arc::new(RwLock::new(Directory::default())),
            Arc::new(Signer::new(b"test")),
            Arc::new(crate::limiter::LoginLimiter::new(10, 1)),
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
            mailbox: Arc::new(Mailbox::new(QueueBounds::from_config(
                &Config::default_config().mqtt,
            ))),
            clean_start: true,
            expiry_secs: 0,
            receive_maximum: 10,
            will: None,
            authenticated_at,
            elsewhere: 0,
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
