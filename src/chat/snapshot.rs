//! What the [`super::Directory`] is built from: the accounts and memberships as the store
//! reads them. The types live with the rules (the store fills them), so the rules never depend
//! on the store.

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: String,
    pub admin: bool,
    pub created_at: i64,
}

/// A conversation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    pub id: String,
    pub name: String,
    pub topic: String,
}

/// Everything the authorization rules need, read in one transaction.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub users: Vec<UserRow>,
    pub conversations: Vec<ConversationRow>,
    /// (conversation, user, role)
    pub members: Vec<(String, String, String)>,
    /// (user, blocked user)
    pub blocks: Vec<(String, String)>,
}
