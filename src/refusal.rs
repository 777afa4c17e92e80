//! Every reason the server refuses a client's action, and the three tables that map one to the
//! wire: its JSON `error` code, its MQTT reason codes, its HTTP status.
//!
//! The codes are a public contract (`u/{user}/errors` events, request replies, HTTP bodies), so
//! each is written once, here, and pinned by the tests below. Modules refuse with their own typed
//! errors ([`Denied`], [`EnvelopeError`]); this enum wraps them rather than copying their
//! variants, and adds the refusals that have no type of their own elsewhere. No I/O: callers
//! send what the tables say.

use axum::http::StatusCode;
use rumqttc::v5::mqttbytes::v5::PubAckReason;

use crate::chat::edits::EditRefused;
use crate::chat::envelope::EnvelopeError;
use crate::chat::Denied;

/// Why the server refuses what a client asked for. The `Display` text is the default message
/// for clients; callers with a more precise one replace it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A chat rule refuses the topic (publish, subscribe or request).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// A chat payload is not a valid envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The mosquitto-style ACL file does not allow the topic.
    #[error("the ACL does not allow this topic")]
    Acl,
    /// A client published under `$SYS`.
    #[error("$SYS is written by the server only")]
    SysTopic,
    /// A read marker on `c/{conv}/r` that does not parse; carries the parser's complaint.
    #[error("expected {{\"read\": SEQ}}: {0}")]
    BadPayload(String),
    /// The history refuses an edit, delete or reaction (unknown target, not the author, …).
    #[error(transparent)]
    Refused(#[from] EditRefused),
    /// The message was not stored (the writer gave up); the client should send it again.
    #[error("the message was not stored; send it again")]
    StorageFailed,
    #[error("bad request")]
    BadRequest,
    /// No valid access token.
    #[error("a valid access token is required")]
    Unauthorized,
    /// Login with a wrong user or password.
    #[error("wrong user or password")]
    BadCredentials,
    /// A password change with the wrong old password (the caller is logged in: 403, not 401).
    #[error("the old password is wrong")]
    WrongPassword,
    #[error("unknown, used or expired refresh token")]
    BadRefreshToken,
    #[error("registration is closed; ask an admin")]
    RegistrationClosed,
    #[error("not allowed")]
    Forbidden,
    /// A media link with a bad signature, expired, or for media the user may no longer see.
    #[error("invalid or expired link")]
    BadLink,
    #[error("not found")]
    NotFound,
    #[error("this route does not take that method")]
    MethodNotAllowed,
    #[error("conflict")]
    Conflict,
    #[error("too large")]
    TooLarge,
    #[error("your media quota is used up")]
    QuotaExceeded,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("no thumbnail: not an image this server reads")]
    NotAnImage,
    #[error("range not satisfiable")]
    RangeNotSatisfiable,
    #[error("unprocessable")]
    Unprocessable,
    #[error("the image has too many pixels to decode")]
    ImageTooLarge,
    #[error("too many requests")]
    RateLimited,
    /// Anything that failed inside the server; details go to the log, never to the client.
    #[error("internal error")]
    Internal,
    #[error("the server is stopping")]
    ShuttingDown,
}

/// What a 3.1.1 client gets for a refused PUBLISH. 3.1.1 has no negative acknowledgement: a
/// refused message gets a normal acknowledgement and is dropped, and the client learns why from
/// the error event on `u/{user}/errors` (as mosquitto does, rather than a disconnect it would
/// answer by reconnecting in a loop). A message that was not stored is the exception: the client
/// must not think it was, so it is disconnected and resends it, still unacknowledged, after
/// reconnecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V311 {
    /// A normal acknowledgement, and the error event.
    AckAndReport,
    /// The connection ends (the error event is still sent).
    Disconnect,
}

/// The refusals a bare HTTP status stands for, one per status, for responses (axum's own
/// rejections) that carry no code of their own. 5xx statuses not listed are [`Refusal::Internal`].
const BY_STATUS: [Refusal; 11] = [
    Refusal::BadRequest,
    Refusal::Unauthorized,
    Refusal::Forbidden,
    Refusal::NotFound,
    Refusal::MethodNotAllowed,
    Refusal::TooLarge,
    Refusal::UnsupportedMediaType,
    Refusal::RangeNotSatisfiable,
    Refusal::Unprocessable,
    Refusal::RateLimited,
    Refusal::Internal,
];

impl Refusal {
    /// The stable JSON `error` code: on `u/{user}/errors`, in request replies and HTTP bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Denied(Denied::NotMember) => "not_member",
            Refusal::Denied(Denied::Blocked) => "blocked",
            Refusal::Denied(Denied::ServerOnly) => "server_only",
            Refusal::Denied(Denied::NotYours) => "not_yours",
            Refusal::Denied(Denied::Malformed) => "malformed_topic",
            Refusal::Denied(Denied::Anonymous) => "anonymous",
            Refusal::Denied(Denied::Role) => "forbidden_by_role",
            Refusal::Denied(Denied::LastOwner) => "last_owner",
            Refusal::Denied(Denied::NoSuchUser) => "no_such_user",
            Refusal::Denied(Denied::NoSuchConversation) => "no_such_conversation",
            Refusal::Envelope(
                EnvelopeError::Json(_) | EnvelopeError::MsgPack(_) | EnvelopeError::Unreadable,
            ) => "bad_payload",
            Refusal::Envelope(EnvelopeError::Empty | EnvelopeError::Invalid(_)) => {
                "invalid_message"
            }
            Refusal::Acl => "acl",
            Refusal::SysTopic => "server_only",
            Refusal::BadPayload(_) => "bad_payload",
            Refusal::Refused(_) => "refused",
            Refusal::StorageFailed => "storage_failed",
            Refusal::BadRequest => "bad_request",
            Refusal::Unauthorized => "unauthorized",
            Refusal::BadCredentials | Refusal::WrongPassword => "bad_credentials",
            Refusal::BadRefreshToken => "bad_refresh_token",
            Refusal::RegistrationClosed => "registration_closed",
            Refusal::Forbidden => "forbidden",
            Refusal::BadLink => "bad_link",
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::Conflict => "conflict",
            Refusal::TooLarge => "too_large",
            Refusal::QuotaExceeded => "quota_exceeded",
            Refusal::UnsupportedMediaType => "unsupported_media_type",
            Refusal::NotAnImage => "not_an_image",
            Refusal::RangeNotSatisfiable => "range_not_satisfiable",
            Refusal::Unprocessable => "unprocessable",
            Refusal::ImageTooLarge => "image_too_large",
            Refusal::RateLimited => "rate_limited",
            Refusal::Internal => "internal",
            Refusal::ShuttingDown => "shutting_down",
        }
    }

    /// How a refused PUBLISH is answered: the 5.0 PUBACK (or PUBREC) reason code, and what a
    /// 3.1.1 client gets instead (see [`V311`]). Refusals that only HTTP makes today map to the
    /// nearest reason, so the table stays total.
    pub fn mqtt(&self) -> (PubAckReason, V311) {
        use V311::{AckAndReport as Ack, Disconnect};
        match self {
            Refusal::Denied(_) | Refusal::Acl | Refusal::SysTopic => {
                (PubAckReason::NotAuthorized, Ack)
            }
            Refusal::Envelope(_) | Refusal::BadPayload(_) => {
                (PubAckReason::PayloadFormatInvalid, Ack)
            }
            Refusal::Refused(_) => (PubAckReason::ImplementationSpecificError, Ack),
            Refusal::StorageFailed | Refusal::Internal => {
                (PubAckReason::UnspecifiedError, Disconnect)
            }
            Refusal::BadRequest
            | Refusal::UnsupportedMediaType
            | Refusal::NotAnImage
            | Refusal::Unprocessable
            | Refusal::ImageTooLarge => (PubAckReason::PayloadFormatInvalid, Ack),
            Refusal::Unauthorized
            | Refusal::BadCredentials
            | Refusal::WrongPassword
            | Refusal::BadRefreshToken
            | Refusal::RegistrationClosed
            | Refusal::Forbidden
            | Refusal::BadLink => (PubAckReason::NotAuthorized, Ack),
            Refusal::TooLarge | Refusal::QuotaExceeded | Refusal::RateLimited => {
                (PubAckReason::QuotaExceeded, Ack)
            }
            Refusal::NotFound
            | Refusal::MethodNotAllowed
            | Refusal::Conflict
            | Refusal::RangeNotSatisfiable
            | Refusal::ShuttingDown => (PubAckReason::ImplementationSpecificError, Ack),
        }
    }

    /// The HTTP status of the refusal. MQTT-only refusals get the nearest status, so the table
    /// stays total.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Refusal::Denied(Denied::NoSuchUser | Denied::NoSuchConversation) => {
                StatusCode::NOT_FOUND
            }
            Refusal::Denied(_) | Refusal::Acl | Refusal::SysTopic => StatusCode::FORBIDDEN,
            Refusal::Envelope(_) | Refusal::BadPayload(_) => StatusCode::BAD_REQUEST,
            Refusal::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::StorageFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            Refusal::Unauthorized | Refusal::BadCredentials | Refusal::BadRefreshToken => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::WrongPassword
            | Refusal::RegistrationClosed
            | Refusal::Forbidden
            | Refusal::BadLink => StatusCode::FORBIDDEN,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::Conflict => StatusCode::CONFLICT,
            Refusal::TooLarge | Refusal::QuotaExceeded => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UnsupportedMediaType | Refusal::NotAnImage => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Refusal::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            Refusal::Unprocessable | Refusal::ImageTooLarge => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The refusal a bare HTTP status stands for, if any: the [`http_status`](Self::http_status)
    /// table read backwards over the generic refusals, and [`Refusal::Internal`] for any 5xx.
    pub fn for_status(status: StatusCode) -> Option<Refusal> {
        BY_STATUS
            .into_iter()
            .find(|r| r.http_status() == status)
            .or_else(|| status.is_server_error().then_some(Refusal::Internal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::envelope::Invalid;
    use PubAckReason::{
        ImplementationSpecificError as Impl, NotAuthorized as NotAuth,
        PayloadFormatInvalid as Format, QuotaExceeded as Quota, UnspecifiedError as Unspec,
    };
    use V311::{AckAndReport as Ack, Disconnect};

    /// Every refusal with its code, MQTT answer and HTTP status as they are on the wire today.
    /// A change here is a change of the public contract.
    #[rustfmt::skip]
    fn table() -> Vec<(Refusal, &'static str, PubAckReason, V311, u16)> {
        use Refusal as R;
        vec![
            (R::Denied(Denied::NotMember), "not_member", NotAuth, Ack, 403),
            (R::Denied(Denied::Blocked), "blocked", NotAuth, Ack, 403),
            (R::Denied(Denied::ServerOnly), "server_only", NotAuth, Ack, 403),
            (R::Denied(Denied::NotYours), "not_yours", NotAuth, Ack, 403),
            (R::Denied(Denied::Malformed), "malformed_topic", NotAuth, Ack, 403),
            (R::Denied(Denied::Anonymous), "anonymous", NotAuth, Ack, 403),
            (R::Denied(Denied::Role), "forbidden_by_role", NotAuth, Ack, 403),
            (R::Denied(Denied::LastOwner), "last_owner", NotAuth, Ack, 403),
            (R::Denied(Denied::NoSuchUser), "no_such_user", NotAuth, Ack, 404),
            (R::Denied(Denied::NoSuchConversation), "no_such_conversation", NotAuth, Ack, 404),
            (R::Envelope(EnvelopeError::Empty), "invalid_message", Format, Ack, 400),
            (R::Envelope(EnvelopeError::Json("x".into())), "bad_payload", Format, Ack, 400),
            (R::Envelope(EnvelopeError::MsgPack("x".into())), "bad_payload", Format, Ack, 400),
            (R::Envelope(EnvelopeError::Unreadable), "bad_payload", Format, Ack, 400),
            (R::Envelope(Invalid::NoTarget.into()), "invalid_message", Format, Ack, 400),
            (R::Acl, "acl", NotAuth, Ack, 403),
            (R::SysTopic, "server_only", NotAuth, Ack, 403),
            (R::BadPayload("x".into()), "bad_payload", Format, Ack, 400),
            (R::Refused(EditRefused::NoSuchMessage), "refused", Impl, Ack, 422),
            (R::StorageFailed, "storage_failed", Unspec, Disconnect, 500),
            (R::BadRequest, "bad_request", Format, Ack, 400),
            (R::Unauthorized, "unauthorized", NotAuth, Ack, 401),
            (R::BadCredentials, "bad_credentials", NotAuth, Ack, 401),
            (R::WrongPassword, "bad_credentials", NotAuth, Ack, 403),
            (R::BadRefreshToken, "bad_refresh_token", NotAuth, Ack, 401),
            (R::RegistrationClosed, "registration_closed", NotAuth, Ack, 403),
            (R::Forbidden, "forbidden", NotAuth, Ack, 403),
            (R::BadLink, "bad_link", NotAuth, Ack, 403),
            (R::NotFound, "not_found", Impl, Ack, 404),
            (R::MethodNotAllowed, "method_not_allowed", Impl, Ack, 405),
            (R::Conflict, "conflict", Impl, Ack, 409),
            (R::TooLarge, "too_large", Quota, Ack, 413),
            (R::QuotaExceeded, "quota_exceeded", Quota, Ack, 413),
            (R::UnsupportedMediaType, "unsupported_media_type", Format, Ack, 415),
            (R::NotAnImage, "not_an_image", Format, Ack, 415),
            (R::RangeNotSatisfiable, "range_not_satisfiable", Impl, Ack, 416),
            (R::Unprocessable, "unprocessable", Format, Ack, 422),
            (R::ImageTooLarge, "image_too_large", Format, Ack, 422),
            (R::RateLimited, "rate_limited", Quota, Ack, 429),
            (R::Internal, "internal", Unspec, Disconnect, 500),
            (R::ShuttingDown, "shutting_down", Impl, Ack, 503),
        ]
    }

    #[test]
    fn the_tables_say_what_the_wire_says() {
        for (refusal, code, reason, v311, status) in table() {
            assert_eq!(refusal.code(), code, "{refusal:?}");
            assert_eq!(refusal.mqtt(), (reason, v311), "{refusal:?}");
            assert_eq!(refusal.http_status().as_u16(), status, "{refusal:?}");
        }
    }

    #[test]
    fn bare_statuses_map_to_their_generic_refusal() {
        let cases: &[(u16, Option<&str>)] = &[
            (400, Some("bad_request")),
            (401, Some("unauthorized")),
            (403, Some("forbidden")),
            (404, Some("not_found")),
            (405, Some("method_not_allowed")),
            (413, Some("too_large")),
            (415, Some("unsupported_media_type")),
            (416, Some("range_not_satisfiable")),
            (422, Some("unprocessable")),
            (429, Some("rate_limited")),
            (500, Some("internal")),
            (502, Some("internal")),
            (503, Some("internal")),
            // Statuses without a generic refusal keep the catch-all code "error".
            (408, None),
            (409, None),
            (411, None),
        ];
        for &(status, code) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            let found = Refusal::for_status(status);
            assert_eq!(found.as_ref().map(Refusal::code), code, "{status}");
        }
    }

    #[test]
    fn wrapped_errors_keep_their_messages() {
        assert_eq!(
            Refusal::from(Denied::NotMember).to_string(),
            "you are not a member of this conversation"
        );
        assert_eq!(
            Refusal::from(EnvelopeError::Invalid(Invalid::TextTooLong)).to_string(),
            "text too long"
        );
        assert_eq!(
            Refusal::BadPayload("eof".into()).to_string(),
            "expected {\"read\": SEQ}: eof"
        );
    }
}
