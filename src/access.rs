//! Who may connect, and what a connected client may publish, subscribe to and receive.
//!
//! Every CONNECT, PUBLISH, will and SUBSCRIBE filter is decided here, and every delivery through a
//! wildcard filter is checked again (`can_read`), so a broad filter never leaks a topic the ACL
//! denies. The broker's own `$SYS` tree is never writable by clients.

use std::sync::Arc;

use crate::acl::{Acl, Action, Client};
use crate::config::AuthConfig;
use crate::topics;

/// A connected client as the access rules see it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The authenticated user; `None` for anonymous clients.
    pub user: Option<Arc<str>>,
    pub client_id: Arc<str>,
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bad user name or password")]
    BadCredentials,
    #[error("not authorized")]
    NotAuthorized,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Acl(#[from] crate::acl::AclError),
}

pub struct Access {
    allow_anonymous: bool,
    acl: Option<Acl>,
}

impl Access {
    pub fn from_config(auth: &AuthConfig) -> Result<Access, AccessError> {
        let acl = if auth.acl_file.is_empty() {
            None
        } else {
            Some(Acl::load(std::path::Path::new(&auth.acl_file))?)
        };
        Ok(Access {
            allow_anonymous: auth.allow_anonymous,
            acl,
        })
    }

    /// Checks CONNECT credentials and returns the user they prove.
    ///
    /// There is no account store yet, so any user name and password is unverifiable and refused:
    /// a server must never trust a name it cannot check. Clients without credentials get in only
    /// when `auth.allow_anonymous` is set.
    pub fn authenticate(&self, username: Option<&str>) -> Result<Option<Arc<str>>, Refusal> {
        match username {
            Some(_) => Err(Refusal::BadCredentials),
            None if self.allow_anonymous => Ok(None),
            None => Err(Refusal::NotAuthorized),
        }
    }

    pub fn can_publish(&self, who: &Identity, topic: &str) -> bool {
        !topics::is_sys(topic) && self.acl_allows(who, Action::Publish(topic))
    }

    pub fn can_subscribe(&self, who: &Identity, filter: &str) -> bool {
        self.acl_allows(who, Action::Subscribe(filter))
    }

    pub fn can_read(&self, who: &Identity, topic: &str) -> bool {
        self.acl_allows(who, Action::Read(topic))
    }

    /// Whether deliveries through `filter` must be checked message by message: a wildcard filter
    /// may match topics the rules treat differently from the filter as a whole.
    pub fn needs_read_check(&self, filter: &str) -> bool {
        self.acl.is_some() && topics::has_wildcard(filter)
    }

    fn acl_allows(&self, who: &Identity, action: Action<'_>) -> bool {
        match &self.acl {
            None => true,
            Some(acl) => acl.allows(
                Client {
                    user: who.user.as_deref(),
                    client_id: &who.client_id,
                },
                action,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(anon: bool) -> Access {
        Access {
            allow_anonymous: anon,
            acl: None,
        }
    }

    #[test]
    fn credentials_are_never_trusted_without_a_store() {
        assert_eq!(open(true).authenticate(None), Ok(None));
        assert_eq!(open(false).authenticate(None), Err(Refusal::NotAuthorized));
        assert_eq!(
            open(true).authenticate(Some("alice")),
            Err(Refusal::BadCredentials)
        );
    }

    #[test]
    fn sys_is_read_only() {
        let a = open(true);
        let who = Identity {
            user: None,
            client_id: "c".into(),
        };
        assert!(!a.can_publish(&who, "$SYS/broker/uptime"));
        assert!(a.can_publish(&who, "a/b"));
        assert!(a.can_subscribe(&who, "$SYS/#"));
        assert!(!a.needs_read_check("#"));
    }
}
