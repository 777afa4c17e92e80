//! Full-text search over the history with PostgreSQL's own: words through `message_words`
//! (accents stripped, no stemming, as SQLite's unicode61 tokenizer; brought up to date first,
//! see `words.rs`), text in scripts written without spaces as a substring through the trigram
//! index.

use super::super::Postgres;
use super::history::{with_reactions, SELECT};
use super::words::index_pending;
use crate::store::messages::{contains_pattern, is_cjk, Item};
use crate::store::{Search, StoreError};

impl Search for Postgres {
    fn search(&self, convs: &[String], query: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        if convs.is_empty() {
            return Ok(Vec::new());
        }
        let scope = "kind = 'msg' AND conv = ANY($2) AND NOT deleted ORDER BY id DESC LIMIT $3";
        // Spaces do not separate words in Chinese or Japanese text: such queries match as a
        // substring (the trigram index serves those of three characters or more).
        let (sql, pattern) = if query.chars().any(is_cjk) {
            (
                format!("{SELECT} WHERE cjk AND body ILIKE $1 AND {scope}"),
                contains_pattern(query),
            )
        } else {
            // A phrase: user input never becomes tsquery syntax.
            (
                format!(
                    "{SELECT} WHERE id IN (SELECT id FROM message_words
                         WHERE words @@ phraseto_tsquery('simple', natter_unaccent($1)))
                     AND {scope}"
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
