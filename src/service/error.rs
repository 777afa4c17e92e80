//! Why a chat operation failed, with the stable code that request replies and HTTP errors carry.

use crate::chat::requests::RequestError;
use crate::chat::Denied;
use crate::refusal::Refusal;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("storage task failed")]
    Join,
}

impl ServiceError {
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Denied(d) => Refusal::from(*d).code(),
            ServiceError::BadRequest(_) => "bad_request",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::Store(_) | ServiceError::Join => "internal",
        }
    }
}

/// A request that could not be read is a bad request, with the parser's text.
impl From<RequestError> for ServiceError {
    fn from(e: RequestError) -> ServiceError {
        ServiceError::BadRequest(e.to_string())
    }
}
