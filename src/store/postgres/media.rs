//! Uploaded files as stored: who uploaded what, which conversations reference it, and which
//! uploads no message needs any more.

use super::{big, Postgres};
use crate::store::clock::now;
use crate::store::{Media, MediaRow, StoreError};

impl Media for Postgres {
    fn add_media(&self, m: &MediaRow) -> Result<(), StoreError> {
        let size = big(m.size)?;
        self.with(|db| {
            db.exec(
                "INSERT INTO media (id, hash, owner, size, mime, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&m.id, &m.hash, &m.owner, &size, &m.mime, &now()],
            )
        })?;
        Ok(())
    }

    fn media_hash_in_use(&self, hash: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            Ok(db
                .one(
                    "SELECT EXISTS (SELECT 1 FROM media WHERE hash = $1)",
                    &[&hash],
                )?
                .try_get(0)?)
        })
    }

    fn media(&self, id: &str) -> Result<Option<MediaRow>, StoreError> {
        self.with(|db| {
            db.opt(
                "SELECT id, hash, owner, size, mime FROM media WHERE id = $1",
                &[&id],
            )?
            .map(|r| {
                Ok(MediaRow {
                    id: r.try_get(0)?,
                    hash: r.try_get(1)?,
                    owner: r.try_get(2)?,
                    // Never negative: stored from a u64 through `big`.
                    size: r.try_get::<_, i64>(3)? as u64,
                    mime: r.try_get(4)?,
                })
            })
            .transpose()
        })
    }

    fn media_usage(&self, owner: &str) -> Result<u64, StoreError> {
        // SUM of a bigint is a numeric: cast back (a total past i64 fails, as SQLite's does).
        let total: i64 = self.with(|db| {
            Ok(db
                .one(
                    "SELECT COALESCE(SUM(size), 0)::BIGINT FROM media WHERE owner = $1",
                    &[&owner],
                )?
                .try_get(0)?)
        })?;
        // Never negative: a sum of sizes stored from u64s.
        Ok(total as u64)
    }

    fn media_conversations(&self, id: &str) -> Result<Vec<String>, StoreError> {
        self.with(|db| {
            db.query(
                "SELECT DISTINCT conv FROM media_refs WHERE media = $1 ORDER BY conv",
                &[&id],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }

    fn release_unreferenced_media(&self, min_age_secs: i64) -> Result<Vec<String>, StoreError> {
        let cutoff = now() - min_age_secs;
        self.tx(|db| {
            // Another process's history writer may be adding a reference right now. Locking
            // the candidates first makes a writer that has not yet checked its reference's
            // media row wait for this transaction (and then find the row gone, as it would
            // after SQLite's); the DELETE, a statement later, sees the references of every
            // writer that got there first, and spares their uploads. A single DELETE would
            // wait for such a writer and then delete its upload anyway, with the new
            // reference (ON DELETE CASCADE).
            let candidates: Vec<String> = db
                .query(
                    "SELECT id FROM media WHERE created_at < $1
                     AND NOT EXISTS (SELECT 1 FROM media_refs WHERE media_refs.media = media.id)
                     FOR UPDATE",
                    &[&cutoff],
                )?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            if candidates.is_empty() {
                return Ok(Vec::new());
            }
            let hashes: Vec<String> = db
                .query(
                    "DELETE FROM media WHERE id = ANY($1)
                     AND NOT EXISTS (SELECT 1 FROM media_refs WHERE media_refs.media = media.id)
                     RETURNING hash",
                    &[&candidates],
                )?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            db.query(
                "SELECT DISTINCT h.hash FROM UNNEST($1::TEXT[]) AS h(hash)
                 WHERE NOT EXISTS (SELECT 1 FROM media WHERE media.hash = h.hash)
                 ORDER BY h.hash",
                &[&hashes],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }
}
