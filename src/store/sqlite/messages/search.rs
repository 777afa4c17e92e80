//! Full-text search over the history: words through the word index, text in scripts written
//! without spaces through the trigram index (both in `index.rs`), or a substring scan when too
//! short for trigrams.

use super::history::SELECT;
use super::index::Index;
use crate::store::messages::Item;
use crate::store::messages::{contains_pattern, is_cjk};
use crate::store::sqlite::Sqlite;
use crate::store::{Search, StoreError};

impl Search for Sqlite {
    fn search(&self, convs: &[String], query: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        if convs.is_empty() {
            return Ok(Vec::new());
        }
        let list = convs.iter().map(|_| "?").collect::<Vec<_>>().join(",");
        // Columns of `messages` alone (the index tables have only `body`).
        let filter = format!("kind = 'msg' AND conv IN ({list}) AND deleted = 0");
        let mut values: Vec<rusqlite::types::Value> = Vec::with_capacity(convs.len() + 2);
        let (index, pattern) = matcher(query);
        values.push(pattern.into());
        values.extend(convs.iter().map(|c| c.clone().into()));
        values.push((limit as i64).into());
        let Some(index) = index else {
            let sql = format!(
                "{SELECT} WHERE body LIKE ? ESCAPE '\\' AND {filter} ORDER BY id DESC LIMIT ?"
            );
            return Ok(self
                .page(&sql, rusqlite::params_from_iter(values), limit)?
                .items);
        };
        // The index, caught up first: what the indexer has not reached yet is indexed now.
        let ids: Vec<i64> = {
            let mut conn = self.index.lock();
            Index::catch_up(&mut conn)?;
            let sql = format!(
                "SELECT messages.id FROM search.{index} JOIN messages ON messages.id = {index}.rowid
                 WHERE {index} MATCH ? AND {filter} ORDER BY messages.id DESC LIMIT ?"
            );
            let mut stmt = conn.prepare(&sql)?;
            let ids = stmt
                .query_map(rusqlite::params_from_iter(values), |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            ids
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = ids.iter().map(|_| "?").collect::<Vec<_>>().join(",");
        let sql = format!("{SELECT} WHERE id IN ({list}) ORDER BY id DESC");
        Ok(self
            .page(&sql, rusqlite::params_from_iter(&ids), limit)?
            .items)
    }
}

/// Which index a query goes to (`None`: a substring scan), and its one parameter.
fn matcher(query: &str) -> (Option<&'static str>, String) {
    // unicode61 splits on spaces, which Chinese and Japanese text does not have: such
    // queries go to the trigram index, or (under three characters, too short for trigrams)
    // to a substring scan of the same conversations.
    let cjk = query.chars().any(is_cjk);
    if cjk && query.chars().count() < 3 {
        return (None, contains_pattern(query));
    }
    // One quoted FTS5 string: user input never becomes FTS syntax.
    let phrase = format!("\"{}\"", query.replace('"', "\"\""));
    (Some(if cjk { "tri" } else { "words" }), phrase)
}
