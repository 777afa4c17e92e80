//! Full-text search over the history with PostgreSQL's own: words through `message_words`
//! (accents stripped, no stemming, as SQLite's unicode61 tokenizer; brought up to date first,
//! see `words.rs`), text in scripts written without spaces as a substring through the trigram
//! index.

use super::super::Postgres;
use super::history::with_reactions;
use super::words::index_pending;
use crate::store::messages::{is_cjk, Item};
use crate::store::{Search, StoreError};

impl Search for Postgres {
    fn search(&self, convs: &[String], query: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        if convs.is_empty() {
            return Ok(Vec::new());
        }
        let columns = "SELECT m.id, m.conv, m.seq, m.sender, m.device, m.ts, m.kind, m.cid,
                m.body, m.reply_to, m.thread, m.target, m.emoji, m.edited, m.deleted, m.media
             FROM messages m";
        let scope = "m.kind = 'msg' AND m.conv = ANY($2) AND NOT m.deleted
             ORDER BY m.id DESC LIMIT $3";
        // Spaces do not separate words in Chinese or Japanese text: such queries match as a
        // substring (the trigram index serves those of three characters or more).
        let (sql, pattern) = if query.chars().any(is_cjk) {
            let escaped = query
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            (
                format!("{columns} WHERE m.cjk AND m.body ILIKE $1 AND {scope}"),
                format!("%{escaped}%"),
            )
        } else {
            // A phrase: user input never becomes tsquery syntax.
            (
                format!(
                    "{columns} JOIN message_words w ON w.id = m.id
                     WHERE w.words @@ phraseto_tsquery('simple', natter_unaccent($1)) AND {scope}"
                ),
                query.to_string(),
            )
        };
        // Every message committed before this search is found: what is queued is indexed now.
        index_pending(self.pool_handle())?;
        self.with(|db| {
            let rows = db.query(&sql, &[&pattern, &convs, &(limit as i64)])?;
            with_reactions(db, &rows)
        })
    }
}
