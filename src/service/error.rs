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
    /// Its place in the table of refusals, which gives its code and HTTP status.
    pub fn refusal(&self) -> Refusal {
        match self {
            ServiceError::Denied(d) => Refusal::Denied(*d),
            ServiceError::BadRequest(_) => Refusal::BadRequest,
            ServiceError::Conflict(_) => Refusal::Conflict,
            ServiceError::Store(_) | ServiceError::Join => Refusal::Internal,
        }
    }

    /// The stable code request replies carry.
    pub fn code(&self) -> &'static str {
        self.refusal().code()
    }
}

/// A request that could not be read is a bad request, with the parser's text.
impl From<RequestError> for ServiceError {
    fn from(e: RequestError) -> ServiceError {
        ServiceError::BadRequest(e.to_string())
    }
}
