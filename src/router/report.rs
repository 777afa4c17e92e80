//! What the router reports about deliveries and connections, for receipts and presence.
//!
//! The router owns this type and only sends it: whoever derives receipts and presence from it
//! (`service::signals`) sits above the router and is never called by it.

use std::sync::Arc;

#[derive(Debug)]
pub enum Report {
    /// A recipient device acknowledged stored message `seq` of `conv`.
    Delivered {
        user: Arc<str>,
        conv: String,
        seq: u64,
    },
    /// A user's device connected.
    Online { user: Arc<str>, client: Arc<str> },
    /// A user's device left (cleanly or not).
    Offline { user: Arc<str>, client: Arc<str> },
}
