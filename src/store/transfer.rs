//! Moving a deployment from SQLite to PostgreSQL (`natter migrate-to-postgres`): every table
//! of `{data_dir}/natter.db` is copied, ids and sequence numbers unchanged, into a PostgreSQL
//! database that holds no data yet, in one PostgreSQL transaction: the target ends up with all
//! of it or, on any error, with nothing.
//!
//! Each table goes over in one `COPY … FROM STDIN (FORMAT binary)`, streamed row by row from a
//! SQLite cursor (the client sends a message to the server every ~4 KiB): one statement per
//! table instead of one per row or per chunk of rows, no text escaping, and PostgreSQL checks
//! each value's type in the binary format itself. Memory stays flat whatever the history's
//! size.
//!
//! The SQLite file is read in one read transaction, a consistent snapshot even if a server
//! still writes to it; what it writes after that snapshot is not copied, so the server should
//! be stopped first.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::postgres::binary_copy::BinaryCopyInWriter;
use ::postgres::types::{ToSql, Type};
use ::postgres::{NoTls, Transaction};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};

use super::postgres::Postgres;
use super::sqlite::Sqlite;
use super::StoreError;

/// How long the copy waits for a lock on the target's tables (a server or another migration
/// using them) before it gives up.
const LOCK_TIMEOUT: &str = "10s";

/// Rows copied, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub users: u64,
    pub devices: u64,
    pub refresh_tokens: u64,
    pub conversations: u64,
    pub members: u64,
    pub blocks: u64,
    pub push_endpoints: u64,
    pub media: u64,
    pub messages: u64,
    pub media_refs: u64,
    pub conv_seq: u64,
    pub receipts: u64,
}

impl Copied {
    /// Every table's count, in copy order.
    pub fn tables(&self) -> [(&'static str, u64); 12] {
        [
            ("users", self.users),
            ("devices", self.devices),
            ("refresh_tokens", self.refresh_tokens),
            ("conversations", self.conversations),
            ("members", self.members),
            ("blocks", self.blocks),
            ("push_endpoints", self.push_endpoints),
            ("media", self.media),
            ("messages", self.messages),
            ("media_refs", self.media_refs),
            ("conv_seq", self.conv_seq),
            ("receipts", self.receipts),
        ]
    }

    /// Rows copied in all.
    pub fn total(&self) -> u64 {
        self.tables().iter().map(|(_, n)| n).sum()
    }
}

impl fmt::Display for Copied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (table, n)) in self.tables().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{table} {n}")?;
        }
        Ok(())
    }
}

/// Why a copy failed; nothing of it is in the target then.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("no SQLite database at {0}")]
    NoDatabase(PathBuf),
    #[error("cannot open the SQLite database: {0}")]
    OpenSqlite(StoreError),
    #[error("cannot open the PostgreSQL database: {0}")]
    OpenPostgres(StoreError),
    #[error("the PostgreSQL database already holds data (table {0} is not empty): nothing was copied; migrate into an empty database")]
    NotEmpty(&'static str),
    #[error("cannot read {table} from SQLite: {source}")]
    Read {
        table: &'static str,
        source: rusqlite::Error,
    },
    #[error("cannot copy {table} into PostgreSQL: {source}")]
    Write {
        table: &'static str,
        source: ::postgres::Error,
    },
    #[error("{table}.{column} holds {value}, which does not fit PostgreSQL's column")]
    OutOfRange {
        table: &'static str,
        column: &'static str,
        value: i64,
    },
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
}

/// A column's PostgreSQL type, which decides how its SQLite value is read.
#[derive(Clone, Copy)]
enum Col {
    Text,
    Big,
    /// `integer` (the MQTT packet id).
    Int,
    /// SQLite's 0/1.
    Bool,
}

impl Col {
    fn pg(self) -> Type {
        match self {
            Col::Text => Type::TEXT,
            Col::Big => Type::INT8,
            Col::Int => Type::INT4,
            Col::Bool => Type::BOOL,
        }
    }
}

/// One table to copy: the SQLite query that reads it, its columns in the same order under
/// their PostgreSQL names, and where its count goes.
struct Table {
    name: &'static str,
    select: &'static str,
    columns: &'static [(&'static str, Col)],
    count: fn(&mut Copied) -> &mut u64,
}

/// The tables in an order that satisfies the target's foreign keys (checked row by row as
/// each COPY inserts). `meta` is not copied: only its directory version means anything, and
/// that is set afterwards. The word index (`message_words`) is built from the copied messages at
/// the end, in one statement.
const TABLES: &[Table] = &[
    Table {
        name: "users",
        select: "SELECT id, password, admin, created_at FROM users ORDER BY id",
        columns: &[
            ("id", Col::Text),
            ("password", Col::Text),
            ("admin", Col::Bool),
            ("created_at", Col::Big),
        ],
        count: |c| &mut c.users,
    },
    Table {
        name: "devices",
        select: "SELECT user, device, created_at, revoked, gen FROM devices",
        columns: &[
            ("user_id", Col::Text),
            ("device", Col::Text),
            ("created_at", Col::Big),
            ("revoked", Col::Bool),
            ("gen", Col::Text),
        ],
        count: |c| &mut c.devices,
    },
    Table {
        name: "refresh_tokens",
        select: "SELECT hash, user, device, expires_at, gen FROM refresh_tokens",
        columns: &[
            ("hash", Col::Text),
            ("user_id", Col::Text),
            ("device", Col::Text),
            ("expires_at", Col::Big),
            ("gen", Col::Text),
        ],
        count: |c| &mut c.refresh_tokens,
    },
    Table {
        name: "conversations",
        select: "SELECT id, kind, name, topic, created_by, created_at FROM conversations",
        columns: &[
            ("id", Col::Text),
            ("kind", Col::Text),
            ("name", Col::Text),
            ("topic", Col::Text),
            ("created_by", Col::Text),
            ("created_at", Col::Big),
        ],
        count: |c| &mut c.conversations,
    },
    Table {
        name: "members",
        select: "SELECT conv, user, role, joined_at FROM members",
        columns: &[
            ("conv", Col::Text),
            ("user_id", Col::Text),
            ("role", Col::Text),
            ("joined_at", Col::Big),
        ],
        count: |c| &mut c.members,
    },
    Table {
        name: "blocks",
        select: "SELECT user, blocked FROM blocks",
        columns: &[("user_id", Col::Text), ("blocked", Col::Text)],
        count: |c| &mut c.blocks,
    },
    Table {
        name: "push_endpoints",
        select: "SELECT user, url, created_at FROM push_endpoints",
        columns: &[
            ("user_id", Col::Text),
            ("url", Col::Text),
            ("created_at", Col::Big),
        ],
        count: |c| &mut c.push_endpoints,
    },
    Table {
        name: "media",
        select: "SELECT id, hash, owner, size, mime, created_at FROM media",
        columns: &[
            ("id", Col::Text),
            ("hash", Col::Text),
            ("owner", Col::Text),
            ("size", Col::Big),
            ("mime", Col::Text),
            ("created_at", Col::Big),
        ],
        count: |c| &mut c.media,
    },
    Table {
        name: "messages",
        // In id order: the target's primary key index is then filled left to right.
        select: "SELECT id, conv, seq, sender, device, ts, cid, pkid, kind, body, reply_to,
                        thread, target, emoji, edited, deleted, media, cjk
                 FROM messages ORDER BY id",
        columns: &[
            ("id", Col::Big),
            ("conv", Col::Text),
            ("seq", Col::Big),
            ("sender", Col::Text),
            ("device", Col::Text),
            ("ts", Col::Big),
            ("cid", Col::Text),
            ("pkid", Col::Int),
            ("kind", Col::Text),
            ("body", Col::Text),
            ("reply_to", Col::Big),
            ("thread", Col::Big),
            ("target", Col::Big),
            ("emoji", Col::Text),
            ("edited", Col::Bool),
            ("deleted", Col::Bool),
            ("media", Col::Text),
            ("cjk", Col::Bool),
        ],
        count: |c| &mut c.messages,
    },
    Table {
        name: "media_refs",
        select: "SELECT media, message, conv FROM media_refs",
        columns: &[
            ("media", Col::Text),
            ("message", Col::Big),
            ("conv", Col::Text),
        ],
        count: |c| &mut c.media_refs,
    },
    Table {
        name: "conv_seq",
        // SQLite's appends also look at the entries themselves, for conversations that
        // predate `conv_seq` without a row there; PostgreSQL's look only at `conv_seq`, so
        // each conversation's row carries the larger of the two or its next message would
        // reuse a sequence number.
        select: "SELECT conv, MAX(last) FROM (
                     SELECT conv, last FROM conv_seq
                     UNION ALL SELECT conv, MAX(seq) FROM messages GROUP BY conv
                 ) GROUP BY conv",
        columns: &[("conv", Col::Text), ("last", Col::Big)],
        count: |c| &mut c.conv_seq,
    },
    Table {
        name: "receipts",
        select: "SELECT conv, user, delivered, read, read_private FROM receipts",
        columns: &[
            ("conv", Col::Text),
            ("user_id", Col::Text),
            ("delivered", Col::Big),
            ("read", Col::Big),
            ("read_private", Col::Big),
        ],
        count: |c| &mut c.receipts,
    },
];

/// The tables whose per-row triggers bump `meta.directory_version`.
const BUMPING: &[(&str, &str)] = &[
    ("users", "users_bump"),
    ("conversations", "conversations_bump"),
    ("members", "members_bump"),
    ("blocks", "blocks_bump"),
];

/// Tables whose indexes (other than those of their primary key and unique constraints) are
/// dropped before their COPY and built again after it: one sorted build instead of an insert
/// per row into each (measured with INSERT … SELECT of 300 000 messages: 13.6 s into the
/// indexed table, 5.4 s into a bare one plus 3.6 s to build the indexes; most of the rest is
/// the search column's `to_tsvector`, paid either way).
const INDEXED_AFTER: &[&str] = &["messages"];

/// Copies the SQLite database of `data_dir` into the PostgreSQL database at `url` (whose
/// schema it first brings up to date), in one transaction; refuses a target that holds any
/// data.
pub fn sqlite_to_postgres(data_dir: &Path, url: &str) -> Result<Copied, TransferError> {
    let path = data_dir.join("natter.db");
    // Opening would create an empty database: a mistyped directory must not look like an
    // empty deployment that migrated fine.
    if !path.is_file() {
        return Err(TransferError::NoDatabase(path));
    }
    // Brings an older file's schema up to date, so that every column read below exists.
    drop(Sqlite::open(data_dir).map_err(TransferError::OpenSqlite)?);
    let src = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| TransferError::OpenSqlite(e.into()))?;
    src.busy_timeout(Duration::from_secs(5))
        .map_err(|e| TransferError::OpenSqlite(e.into()))?;
    // One read transaction: every table from the same snapshot.
    let snapshot = src
        .unchecked_transaction()
        .map_err(|e| TransferError::OpenSqlite(e.into()))?;

    drop(Postgres::open(url).map_err(TransferError::OpenPostgres)?);
    let config: ::postgres::Config = url
        .parse()
        .map_err(|e: ::postgres::Error| TransferError::OpenPostgres(e.into()))?;
    let mut client = config
        .connect(NoTls)
        .map_err(|e| TransferError::OpenPostgres(e.into()))?;

    let mut tx = client.transaction()?;
    lock_and_check_empty(&mut tx)?;
    // The bump triggers would update the one `meta` row once per copied user, member…: each
    // update in one transaction walks the row's versions the transaction made before, so the
    // copy grew quadratically (measured: 20 000 rows 6 s, with the triggers disabled 0.09 s).
    // Disabling is transactional: an error rolls it back with everything else.
    for (table, trigger) in BUMPING {
        tx.batch_execute(&format!("ALTER TABLE {table} DISABLE TRIGGER {trigger}"))?;
    }
    let mut copied = Copied::default();
    for table in TABLES {
        let rebuild = if INDEXED_AFTER.contains(&table.name) {
            drop_indexes(&mut tx, table.name)?
        } else {
            Vec::new()
        };
        *(table.count)(&mut copied) = copy_table(&mut tx, &snapshot, table)?;
        for definition in rebuild {
            tx.batch_execute(&definition)?;
        }
    }
    for (table, trigger) in BUMPING {
        tx.batch_execute(&format!("ALTER TABLE {table} ENABLE TRIGGER {trigger}"))?;
    }
    tx.batch_execute(
        "INSERT INTO message_words (id, words)
         SELECT id, to_tsvector('simple', natter_unaccent(body)) FROM messages
         WHERE kind = 'msg' AND body IS NOT NULL",
    )?;

    let version: i64 = snapshot
        .query_row(
            "SELECT value FROM meta WHERE key = 'directory_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|source| TransferError::Read {
            table: "meta",
            source,
        })?
        .unwrap_or(0);
    // SQLite's version, but one past the target's own at least: a server already watching
    // the target sees a change and reloads.
    tx.execute(
        "UPDATE meta SET value = GREATEST(value + 1, $1) WHERE key = 'directory_version'",
        &[&version],
    )?;

    // New ids go past every id SQLite handed out, including those of entries deleted since
    // (AUTOINCREMENT's `sqlite_sequence` remembers them): ids are clients' stream positions,
    // and one reused would be skipped by a client that had seen the deleted entry.
    let last_id: i64 = snapshot
        .query_row(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM messages), 0),
                        COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0))",
            [],
            |r| r.get(0),
        )
        .map_err(|source| TransferError::Read {
            table: "messages",
            source,
        })?;
    if last_id > 0 {
        // setval is not undone by a rollback; last, so that only a failing COMMIT can leave
        // it advanced in an empty database, where a gap in ids harms nothing.
        tx.execute(
            "SELECT setval(pg_get_serial_sequence('messages', 'id'), $1, true)",
            &[&last_id],
        )?;
    }
    tx.commit()?;
    Ok(copied)
}

/// Takes the target's tables for the transaction (a second migration, or a server, waits
/// until it ends) and refuses a target that holds data.
fn lock_and_check_empty(tx: &mut Transaction<'_>) -> Result<(), TransferError> {
    let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    // EXCLUSIVE conflicts with itself and with every write, not with plain reads.
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';
         LOCK TABLE {}, meta IN EXCLUSIVE MODE",
        names.join(", ")
    ))?;
    // Users and messages first: the usual reason, named as such.
    let first = ["users", "messages"];
    let rest = names.iter().copied().filter(|n| !first.contains(n));
    for table in first.into_iter().chain(rest) {
        let found: bool = tx
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])?
            .get(0);
        if found {
            return Err(TransferError::NotEmpty(table));
        }
    }
    Ok(())
}

/// Drops the indexes of `table` that no constraint owns (the constraints' own indexes check
/// each row as it arrives, and foreign keys need them); returns the statements that create
/// them again, as the database defines them, so that they match the schema whatever its
/// version.
fn drop_indexes(tx: &mut Transaction<'_>, table: &str) -> Result<Vec<String>, TransferError> {
    let rows = tx.query(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
         FROM pg_index i
         WHERE i.indrelid = $1::text::regclass
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        &[&table],
    )?;
    let mut definitions = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.get(0);
        tx.batch_execute(&format!("DROP INDEX {name}"))?;
        definitions.push(row.get(1));
    }
    Ok(definitions)
}

/// Streams one table from SQLite into one binary COPY; the number of rows copied.
fn copy_table(
    tx: &mut Transaction<'_>,
    src: &Connection,
    table: &Table,
) -> Result<u64, TransferError> {
    let read = |source| TransferError::Read {
        table: table.name,
        source,
    };
    let write = |source| TransferError::Write {
        table: table.name,
        source,
    };
    let mut stmt = src.prepare(table.select).map_err(read)?;
    let columns: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let types: Vec<Type> = table.columns.iter().map(|(_, col)| col.pg()).collect();
    let sink = tx
        .copy_in(&format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            table.name,
            columns.join(", ")
        ))
        .map_err(write)?;
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    let mut rows = stmt.query([]).map_err(read)?;
    while let Some(row) = rows.next().map_err(read)? {
        let values = table
            .columns
            .iter()
            .enumerate()
            .map(|(i, (name, col))| value(table.name, name, *col, row, i))
            .collect::<Result<Vec<_>, _>>()?;
        writer.write_raw(values).map_err(write)?;
    }
    writer.finish().map_err(write)
}

/// Column `i` of a SQLite row as the PostgreSQL value of its column.
fn value(
    table: &'static str,
    column: &'static str,
    col: Col,
    row: &Row<'_>,
    i: usize,
) -> Result<Box<dyn ToSql + Sync>, TransferError> {
    let read = |source| TransferError::Read { table, source };
    Ok(match col {
        Col::Text => Box::new(row.get::<_, Option<String>>(i).map_err(read)?),
        Col::Big => Box::new(row.get::<_, Option<i64>>(i).map_err(read)?),
        Col::Bool => Box::new(row.get::<_, Option<bool>>(i).map_err(read)?),
        Col::Int => {
            let v = row.get::<_, Option<i64>>(i).map_err(read)?;
            let narrowed =
                v.map(i32::try_from)
                    .transpose()
                    .map_err(|_| TransferError::OutOfRange {
                        table,
                        column,
                        value: v.unwrap_or_default(),
                    })?;
            Box::new(narrowed)
        }
    })
}
