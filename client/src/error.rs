//! The library's one error type: what an app can tell apart and act on.

/// Why a call or the connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work (an empty user, a bad address, …).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The local store (the outbox and cursors in the data directory) failed.
    #[error("local store {path}: {message}")]
    Local { path: String, message: String },
    /// Another process holds the data directory: two processes of one device would take each
    /// other's connection over in a loop.
    #[error("data directory {0} is in use by another process")]
    DataDirInUse(String),
    /// The server refused the credentials (or the device was revoked): reconnecting cannot help.
    #[error("the server refused the login: {0}")]
    Auth(String),
    /// Another connection with this device's client id took the session over; this client
    /// stopped rather than take it back (two processes of one device would duel forever).
    #[error("another connection of this device took the session over")]
    TakenOver,
    /// The server refused what was sent, for good (not a member, invalid payload, …).
    #[error("refused ({code}): {message}")]
    Refused { code: String, message: String },
    /// Not connected now (requests are not queued; messages are, in the outbox).
    #[error("not connected to the server")]
    Disconnected,
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The HTTP API failed or answered with an error.
    #[error("HTTP API: {0}")]
    Http(String),
    /// The server sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The client was closed (or its task stopped).
    #[error("the client is closed")]
    Closed,
}

impl Error {
    pub(crate) fn local(path: &std::path::Path, e: impl std::fmt::Display) -> Error {
        Error::Local {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}
