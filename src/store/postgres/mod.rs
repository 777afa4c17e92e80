//! The PostgreSQL backend, for deployments that outgrow one machine or must survive losing
//! one: several natter processes can share one database.
//!
//! Readers and writes outside the history take a connection from a pool (r2d2, the pool diesel
//! uses; each connection keeps its prepared statements). The history writer appends on a
//! connection of its own (`messages::PgLog`), a batch per transaction, and allocates each
//! conversation's sequence numbers inside that transaction with a row lock on the
//! conversation's `conv_seq` row: several processes appending to one conversation take turns,
//! and a rolled-back append gives its number back (a SEQUENCE would leave a gap).
//!
//! The schema is versioned in `schema.rs`. Each file implements one trait of the interface, as
//! the SQLite backend's do.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row, Statement};

use super::writer::Log;
use super::{Store, StoreError};
use crate::config::Synchronous;

mod accounts;
mod conversations;
mod devices;
mod directory;
mod media;
mod messages;
mod push;
mod retained;
mod roster;
mod schema;

/// Connections the pool holds at most.
const POOL_SIZE: u32 = 16;
/// How long a call waits for a pooled connection (or for a new one to open).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A statement parameter.
pub(super) type Param<'a> = &'a (dyn ToSql + Sync);

/// The database, through a pool of connections.
pub struct Postgres {
    /// Always `Some` but while dropping (see [`Drop`]).
    pool: Option<r2d2::Pool<Manager>>,
    url: String,
    /// Tells the search indexing thread to end.
    stop_indexer: Arc<AtomicBool>,
}

impl Postgres {
    /// Connects to the database at `url` (`postgres://user:pass@host:port/db`) and brings its
    /// schema up to date.
    pub fn open(url: &str) -> Result<Postgres, StoreError> {
        // Checked here so that a malformed URL is named as such, not as a timeout.
        url.parse::<postgres::Config>()?;
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            // An empty query at every checkout (a round trip, ~0.1 ms locally): after the
            // database restarted, every pooled connection is dead, and without the check each
            // would fail one call before the pool noticed. The history writer, where round
            // trips count, has its own connection.
            .test_on_check_out(true)
            .build(Manager { url: url.into() })?;
        let stop_indexer = Arc::new(AtomicBool::new(false));
        let store = Postgres {
            pool: Some(pool.clone()),
            url: url.into(),
            stop_indexer: stop_indexer.clone(),
        };
        store.migrate()?;
        messages::start_indexer(pool, stop_indexer).map_err(StoreError::Thread)?;
        Ok(store)
    }

    fn pool_handle(&self) -> &r2d2::Pool<Manager> {
        match &self.pool {
            Some(pool) => pool,
            None => unreachable!("the pool is taken only when the store is dropped"),
        }
    }

    fn pool(&self) -> Result<r2d2::PooledConnection<Manager>, StoreError> {
        Ok(self.pool_handle().get()?)
    }

    /// Runs `f` on a pooled connection.
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&mut Db<'_, Client>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.pool()?;
        let Conn { client, cache } = &mut *conn;
        f(&mut Db { client, cache })
    }

    /// Runs `f` in a transaction on a pooled connection; commits if it returns `Ok`.
    pub(super) fn tx<T>(
        &self,
        f: impl FnOnce(&mut Db<'_, postgres::Transaction<'_>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(false, f)
    }

    /// Runs `f` in a read-only REPEATABLE READ transaction: all its queries see the database
    /// as of the first one (under the default READ COMMITTED each would see the commits made
    /// since the one before, and a member could be read without their conversation). Nothing
    /// is written, so nothing can fail to serialise.
    pub(super) fn read_consistent<T>(
        &self,
        f: impl FnOnce(&mut Db<'_, postgres::Transaction<'_>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(true, f)
    }

    fn transaction<T>(
        &self,
        consistent_read: bool,
        f: impl FnOnce(&mut Db<'_, postgres::Transaction<'_>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.pool()?;
        let Conn { client, cache } = &mut *conn;
        // A transaction object: if `f` fails it is rolled back when dropped, rather than going
        // back to the pool still open.
        let mut tx = if consistent_read {
            client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?
        } else {
            client.transaction()?
        };
        let result = f(&mut Db {
            client: &mut tx,
            cache,
        })?;
        tx.commit()?;
        Ok(result)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_indexer.store(true, Ordering::Relaxed);
        // A connection closes through the small runtime of its own that the synchronous
        // client drives, and tokio refuses to run (or drop) a runtime inside another one's
        // task: the last handle to the store may well go there, at shutdown. So the pool and
        // its connections go on a thread of their own.
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::Builder::new()
                .name("natter-pg-close".into())
                .spawn(move || drop(pool));
        }
    }
}

impl Store for Postgres {
    fn log(&self, _sync: Synchronous) -> Result<Box<dyn Log>, StoreError> {
        Ok(Box::new(messages::PgLog::open(&self.url)?))
    }
}

/// A pooled connection and the statements prepared on it.
pub(super) struct Conn {
    client: Client,
    cache: HashMap<String, Statement>,
}

struct Manager {
    url: String,
}

/// A connection error as the pool reports it: with its cause, which says why.
#[derive(Debug)]
struct ConnectError(postgres::Error);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&super::with_causes(&self.0))
    }
}

impl std::error::Error for ConnectError {}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = ConnectError;

    fn connect(&self) -> Result<Conn, ConnectError> {
        let mut config: postgres::Config = self.url.parse().map_err(ConnectError)?;
        config.connect_timeout(CONNECT_TIMEOUT);
        Ok(Conn {
            client: config.connect(NoTls).map_err(ConnectError)?,
            cache: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), ConnectError> {
        conn.client
            .simple_query("")
            .map(|_| ())
            .map_err(ConnectError)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.client.is_closed()
    }
}

/// A connection or transaction with its connection's prepared statements: every statement
/// is prepared once per connection.
pub(super) struct Db<'a, C> {
    client: &'a mut C,
    cache: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient> Db<'_, C> {
    fn prepared(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.cache.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    pub(super) fn query(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, StoreError> {
        let s = self.prepared(sql)?;
        Ok(self.client.query(&s, params)?)
    }

    pub(super) fn opt(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, StoreError> {
        let s = self.prepared(sql)?;
        Ok(self.client.query_opt(&s, params)?)
    }

    pub(super) fn one(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Row, StoreError> {
        let s = self.prepared(sql)?;
        Ok(self.client.query_one(&s, params)?)
    }

    /// Runs a statement; the number of rows it changed.
    pub(super) fn exec(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let s = self.prepared(sql)?;
        Ok(self.client.execute(&s, params)?)
    }

    /// Runs `f` in a savepoint: what it did is kept if it returns `Ok`, undone otherwise.
    pub(super) fn savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut Db<'_, postgres::Transaction<'_>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut sp = self.client.transaction()?;
        let result = f(&mut Db {
            client: &mut sp,
            cache: self.cache,
        })?;
        sp.commit()?;
        Ok(result)
    }
}

/// A stored number (`seq`, ids) as PostgreSQL's signed `bigint`. Numbers above `i64::MAX` are
/// refused where they are read (`chat::seq`); one that got this far fails its statement.
pub(super) fn big(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::OutOfRange(n))
}

/// Whether an error is PostgreSQL's unique violation (the row exists).
pub(super) fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres(e) if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION))
}

/// The variable that names a PostgreSQL server for tests (its `postgres` database, as a
/// superuser): `.ci/postgres start DIR` prints one.
pub const TEST_URL_VAR: &str = "NATTER_TEST_POSTGRES_URL";

/// A fresh, empty database on the test server named by [`TEST_URL_VAR`], for one test: its
/// URL, or `None` when the variable is unset (the caller says so, loudly). Databases are
/// named at random and left behind: the test server is a throwaway cluster.
pub fn test_database() -> Option<String> {
    let admin = std::env::var(TEST_URL_VAR).ok().filter(|u| !u.is_empty())?;
    Some(test_database_on(&admin))
}

/// A fresh, empty database on the server `admin` names (as a superuser): its URL.
pub fn test_database_on(admin: &str) -> String {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("randomness");
    let name = format!(
        "natter_test_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    // On a thread of its own: tests call this from async code, where the synchronous client
    // cannot run.
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut client = Client::connect(admin, NoTls)
                .unwrap_or_else(|e| panic!("{TEST_URL_VAR}: cannot connect: {e}"));
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap_or_else(|e| panic!("{TEST_URL_VAR}: cannot create a database: {e}"));
        })
        .join()
        .expect("creating the test database");
    });
    database_url(admin, &name)
}

/// `url` with its database replaced by `name`.
fn database_url(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match base.rfind('/') {
        Some(i) if base[..i].ends_with('/') => base.to_string(),
        Some(i) => base[..i].to_string(),
        None => base.to_string(),
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
