//! Uploaded files as stored: who uploaded what, which conversations reference it, and which
//! uploads no message needs any more.

use rusqlite::{params, OptionalExtension};

use super::Sqlite;
use crate::store::clock::now;
use crate::store::{Media, MediaRow, StoreError};

impl Media for Sqlite {
    fn add_media(&self, m: &MediaRow) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO media (id, hash, owner, size, mime, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![m.id, m.hash, m.owner, m.size, m.mime, now()],
        )?;
        Ok(())
    }

    fn media_hash_in_use(&self, hash: &str) -> Result<bool, StoreError> {
        Ok(self.lock().query_row(
            "SELECT EXISTS (SELECT 1 FROM media WHERE hash = ?1)",
            params![hash],
            |r| r.get(0),
        )?)
    }

    fn media(&self, id: &str) -> Result<Option<MediaRow>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, hash, owner, size, mime FROM media WHERE id = ?1",
                params![id],
                |r| {
                    Ok(MediaRow {
                        id: r.get(0)?,
                        hash: r.get(1)?,
                        owner: r.get(2)?,
                        size: r.get(3)?,
                        mime: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    fn media_usage(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(self.lock().query_row(
            "SELECT COALESCE(SUM(size), 0) FROM media WHERE owner = ?1",
            params![owner],
            |r| r.get(0),
        )?)
    }

    fn media_conversations(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT DISTINCT conv FROM media_refs WHERE media = ?1")?;
        let rows = stmt.query_map(params![id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn release_unreferenced_media(&self, min_age_secs: i64) -> Result<Vec<String>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let cutoff = now() - min_age_secs;
        let hashes: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT DISTINCT hash FROM media WHERE created_at < ?1
                 AND id NOT IN (SELECT media FROM media_refs)",
            )?;
            let rows = stmt.query_map(params![cutoff], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        tx.execute(
            "DELETE FROM media WHERE created_at < ?1 AND id NOT IN (SELECT media FROM media_refs)",
            params![cutoff],
        )?;
        let mut orphaned = Vec::new();
        for hash in hashes {
            let still: i64 = tx.query_row(
                "SELECT COUNT(*) FROM media WHERE hash = ?1",
                params![hash],
                |r| r.get(0),
            )?;
            if still == 0 {
                orphaned.push(hash);
            }
        }
        tx.commit()?;
        Ok(orphaned)
    }
}
