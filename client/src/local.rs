//! The client's own durable state, one SQLite file in its data directory: the outbox (what
//! was sent but not yet acknowledged), the cursor of each conversation (the last `seq` the app
//! took), and small settings (the refresh token). The file is held exclusively, so one
//! process at a time speaks for a device.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::Error;

/// The file's name in the data directory.
pub const FILE: &str = "natter-client.db";

/// What an outbox entry publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// `c/{conv}/m`
    Message,
    /// `c/{conv}/e`
    Event,
    /// `c/{conv}/r`
    Read,
}

impl Topic {
    fn code(self) -> &'static str {
        match self {
            Topic::Message => "m",
            Topic::Event => "e",
            Topic::Read => "r",
        }
    }

    fn parse(code: &str) -> Option<Topic> {
        match code {
            "m" => Some(Topic::Message),
            "e" => Some(Topic::Event),
            "r" => Some(Topic::Read),
            _ => None,
        }
    }
}

/// One message waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its place in the outbox: sends go out in this order.
    pub n: i64,
    pub conv: String,
    pub topic: Topic,
    pub cid: String,
    /// The draft as JSON (see `codec::Outgoing`).
    pub body: Vec<u8>,
}

pub struct LocalStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// The newest outbox entry's `n`: the session reads the outbox only when there is one it
    /// has not published, not on every acknowledgement.
    newest: AtomicI64,
}

impl LocalStore {
    /// Opens (or creates) the store in `data_dir` and takes it for this process.
    pub fn open(data_dir: &Path) -> Result<LocalStore, Error> {
        std::fs::create_dir_all(data_dir).map_err(|e| Error::local(data_dir, e))?;
        let path = data_dir.join(FILE);
        // Busy means another process holds the file (see below); say so, do not wait.
        let err = |e: rusqlite::Error| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                Error::DataDirInUse(data_dir.display().to_string())
            }
            e => Error::local(&path, e),
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::ZERO).map_err(err)?;
        // WAL with synchronous=NORMAL: a commit survives the process being killed (it is in
        // the WAL file); a power cut may lose the last moments, which the outbox then lacks.
        // locking_mode=EXCLUSIVE keeps the lock from the first write until the connection
        // closes: a second process on this directory fails at once instead of taking over
        // this device's MQTT session in a loop.
        conn.execute_batch(
            "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
            BEGIN EXCLUSIVE;
            CREATE TABLE IF NOT EXISTS outbox (
                n INTEGER PRIMARY KEY AUTOINCREMENT,
                conv TEXT NOT NULL,
                topic TEXT NOT NULL,
                cid TEXT NOT NULL,
                body BLOB NOT NULL
            );
            CREATE TABLE IF NOT EXISTS cursors (conv TEXT PRIMARY KEY, seq INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            COMMIT;",
        )
        .map_err(err)?;
        let newest = conn
            .query_row("SELECT coalesce(max(n), 0) FROM outbox", [], |r| r.get(0))
            .map_err(err)?;
        Ok(LocalStore {
            path,
            conn: Mutex::new(conn),
            newest: AtomicI64::new(newest),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, Error> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|e| Error::local(&self.path, e))
    }

    /// Adds a message to the outbox; it stays until acknowledged.
    pub fn push(&self, conv: &str, topic: Topic, cid: &str, body: &[u8]) -> Result<i64, Error> {
        self.with(|c| {
            c.execute(
                "INSERT INTO outbox (conv, topic, cid, body) VALUES (?1, ?2, ?3, ?4)",
                params![conv, topic.code(), cid, body],
            )?;
            Ok(c.last_insert_rowid())
        })
        .inspect(|n| {
            self.newest.fetch_max(*n, Ordering::Relaxed);
        })
    }

    /// The newest outbox entry's `n` (0: none was ever written).
    pub fn newest(&self) -> i64 {
        self.newest.load(Ordering::Relaxed)
    }

    /// Up to `limit` outbox entries after `after` (0: from the start), oldest first.
    pub fn pending(&self, after: i64, limit: usize) -> Result<Vec<Pending>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT n, conv, topic, cid, body FROM outbox WHERE n > ?1 ORDER BY n LIMIT ?2",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![after, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (n, conv, topic, cid, body) = row?;
                // A row this version cannot read is skipped, not fatal: it stays on disk.
                if let Some(topic) = Topic::parse(&topic) {
                    out.push(Pending {
                        n,
                        conv,
                        topic,
                        cid,
                        body,
                    });
                }
            }
            Ok(out)
        })
    }

    /// How many messages wait for their acknowledgement.
    pub fn outbox_len(&self) -> Result<u64, Error> {
        self.with(|c| c.query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
    }

    /// The server acknowledged (or refused for good) outbox entry `n`.
    pub fn remove(&self, n: i64) -> Result<(), Error> {
        self.with(|c| {
            c.execute("DELETE FROM outbox WHERE n = ?1", [n])
                .map(|_| ())
        })
    }

    /// Every conversation's cursor.
    pub fn cursors(&self) -> Result<Vec<(String, u64)>, Error> {
        self.with(|c| {
            let mut stmt = c.prepare_cached("SELECT conv, seq FROM cursors")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
    }

    /// The app has everything of `conv` up to `seq`.
    pub fn set_cursor(&self, conv: &str, seq: u64) -> Result<(), Error> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO cursors (conv, seq) VALUES (?1, ?2)
                 ON CONFLICT (conv) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?
            .execute(params![conv, seq])
            .map(|_| ())
        })
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, Error> {
        self.with(|c| {
            c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    pub fn set_setting(&self, key: &str, value: Option<&str>) -> Result<(), Error> {
        self.with(|c| {
            match value {
                Some(v) => c.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, v],
                )?,
                None => c.execute("DELETE FROM settings WHERE key = ?1", [key])?,
            };
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_and_cursors_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LocalStore::open(dir.path()).unwrap();
            let a = store.push("d.a.b", Topic::Message, "c1", b"{}").unwrap();
            store.push("d.a.b", Topic::Read, "c2", b"{}").unwrap();
            store.remove(a).unwrap();
            store.set_cursor("d.a.b", 5).unwrap();
            store.set_cursor("d.a.b", 3).unwrap();
        }
        let store = LocalStore::open(dir.path()).unwrap();
        let pending = store.pending(0, 10).unwrap();
        assert_eq!(store.outbox_len().unwrap(), 1);
        assert_eq!(store.newest(), 2);
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].cid.as_str(), pending[0].topic),
            ("c2", Topic::Read)
        );
        assert_eq!(store.cursors().unwrap(), vec![("d.a.b".to_string(), 5)]);
    }

    #[test]
    fn a_second_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = LocalStore::open(dir.path()).unwrap();
        assert!(matches!(
            LocalStore::open(dir.path()),
            Err(Error::DataDirInUse(_))
        ));
    }
}
