//! Full-text search over the history: words through the word index, text in scripts written
//! without spaces through the trigram index, or a substring scan when too short for trigrams.

use crate::store::messages::Item;
use crate::store::messages::{contains_pattern, is_cjk};
use crate::store::sqlite::Sqlite;
use crate::store::{Search, StoreError};

impl Search for Sqlite {
    fn search(&self, convs: &[String], query: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        if convs.is_empty() {
            return Ok(Vec::new());
        }
        // The index follows the history: what it has not reached yet is indexed now, so a
        // search finds every stored message.
        self.index_all()?;
        let list = convs.iter().map(|_| "?").collect::<Vec<_>>().join(",");
        let (from, matcher, pattern) = matcher(query);
        let sql = format!(
            "SELECT m.id, m.conv, m.seq, m.sender, m.device, m.ts, m.kind, m.cid, m.body,
                    m.reply_to, m.thread, m.target, m.emoji, m.edited, m.deleted, m.media
             FROM {from}
             WHERE {matcher} AND m.kind = 'msg' AND m.conv IN ({list}) AND m.deleted = 0
             ORDER BY m.id DESC LIMIT ?"
        );
        let mut values: Vec<rusqlite::types::Value> = vec![pattern.into()];
        values.extend(convs.iter().map(|c| c.clone().into()));
        values.push((limit as i64).into());
        Ok(self
            .page(&sql, rusqlite::params_from_iter(values), limit)?
            .items)
    }
}

/// Where a query looks and how it matches: (tables, condition, its one parameter).
fn matcher(query: &str) -> (&'static str, &'static str, String) {
    // unicode61 splits on spaces, which Chinese and Japanese text does not have: such
    // queries go to the trigram index, or (under three characters, too short for trigrams)
    // to a substring scan of the same conversations.
    let cjk = query.chars().any(is_cjk);
    if cjk && query.chars().count() < 3 {
        return (
            "messages m",
            "m.body LIKE ? ESCAPE '\\'",
            contains_pattern(query),
        );
    }
    // One quoted FTS5 string: user input never becomes FTS syntax.
    let phrase = format!("\"{}\"", query.replace('"', "\"\""));
    if cjk {
        (
            "messages_tri f JOIN messages m ON m.id = f.rowid",
            "messages_tri MATCH ?",
            phrase,
        )
    } else {
        (
            "messages_fts f JOIN messages m ON m.id = f.rowid",
            "messages_fts MATCH ?",
            phrase,
        )
    }
}
