//! The history in PostgreSQL: the [`Log`] the writer thread appends through (a connection of
//! its own, a batch per transaction, reconnecting after the database came back), and the
//! queries that read entries back.
//!
//! Sequence numbers are allocated in the batch's transaction from `conv_seq` (insert or
//! increment, which locks the conversation's row until COMMIT): another natter process
//! appending to the same conversation waits for this batch, and a rolled-back append gives
//! its number back. The unique (sender, conversation, cid) index holds across processes: a
//! resend that raced its original through another process finds it once that one commits.
//!
//! The files: `append.rs` (one message in the batch's transaction), `bulk.rs` (a run of plain
//! messages in a few statements), `words.rs` (the word index, kept off the commit path), and
//! the readers `history.rs`, `search.rs`, `receipts.rs`, `retention.rs`.

mod append;
mod bulk;
mod history;
mod receipts;
mod retention;
mod search;
mod words;

pub(super) use words::start_indexer;

use std::collections::HashMap;
use std::time::Duration;

use postgres::{Client, NoTls, Statement};

use super::{Db, CONNECT_TIMEOUT};
use crate::store::messages::{AppendError, Appended, NewMessage};
use crate::store::writer::{Committed, Log, WAIT_MAX};
use crate::store::StoreError;

/// The writer thread's connection (opened again when it broke) and its statements.
pub(in crate::store) struct PgLog {
    config: postgres::Config,
    client: Option<Client>,
    cache: HashMap<String, Statement>,
    /// How long one attempt may wait (`statement_timeout`): asked for, and set on the
    /// connection.
    wait: Duration,
    wait_set: Option<Duration>,
}

impl PgLog {
    /// Connects the writer to the database at `url`.
    pub(in crate::store) fn open(url: &str) -> Result<PgLog, StoreError> {
        let mut log = PgLog {
            config: url.parse()?,
            client: None,
            cache: HashMap::new(),
            wait: WAIT_MAX,
            wait_set: None,
        };
        log.connected()?;
        Ok(log)
    }

    /// The connection, opened again if the last one broke (the database restarted, the
    /// network failed), with the statement timeout the next attempt may wait.
    fn connected(&mut self) -> Result<(&mut Client, &mut HashMap<String, Statement>), StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.cache.clear();
            self.wait_set = None;
            let mut config = self.config.clone();
            config.connect_timeout(self.wait.min(CONNECT_TIMEOUT));
            self.client = Some(config.connect(NoTls)?);
        }
        let Some(client) = self.client.as_mut() else {
            unreachable!("connected just above");
        };
        if self.wait_set != Some(self.wait) {
            client.batch_execute(&format!(
                "SET statement_timeout = {}",
                self.wait.as_millis().max(1)
            ))?;
            self.wait_set = Some(self.wait);
        }
        Ok((client, &mut self.cache))
    }
}

impl Log for PgLog {
    fn commit(&mut self, batch: &[&NewMessage]) -> Result<Committed, StoreError> {
        let (client, cache) = self.connected()?;
        // The common batch, plain messages only, is one statement: no transaction around it,
        // a single round trip and its commit.
        let first = if batch.iter().all(|m| bulk::is_plain(m)) {
            bulk::append_run(&mut Db { client, cache }, batch)
        } else {
            commit_batch(client, cache, batch, false)
        };
        // Savepoints cost two round trips per message, and a message the database refuses is
        // rare: the batch goes without them first, and only if a statement fails for a reason
        // that will not pass is it done again with one per message, so that the failure stays
        // that message's.
        let results = match first {
            Err(e) if !is_transient(&e) => {
                tracing::warn!(error = %e, "a message of the batch failed; isolating each");
                commit_batch(client, cache, batch, true)
            }
            result => result,
        }?;
        // The common batch commits inside its one statement: the commit's own time is not
        // told apart.
        Ok(Committed {
            results,
            sync: None,
        })
    }

    fn set_wait(&mut self, wait: Duration) {
        // Whole tenths of a second: the budget shrinks a little at every attempt, and each
        // change costs a statement.
        self.wait = Duration::from_millis(wait.as_millis().div_ceil(100) as u64 * 100);
    }

    fn is_transient(&self, e: &StoreError) -> bool {
        is_transient(e)
    }
}

/// Appends `batch` in one transaction: each message in a savepoint of its own if `isolated`,
/// else a failure fails the batch.
fn commit_batch(
    client: &mut Client,
    cache: &mut HashMap<String, Statement>,
    batch: &[&NewMessage],
    isolated: bool,
) -> Result<Vec<Result<Appended, AppendError>>, StoreError> {
    let mut tx = client.transaction()?;
    let mut db = Db {
        client: &mut tx,
        cache,
    };
    let mut results = Vec::with_capacity(batch.len());
    // Direct conversations with new entries, and who wrote the first.
    let mut direct: HashMap<&str, &str> = HashMap::new();
    let mut rest = batch;
    while let Some(m) = rest.first() {
        // A run of plain messages in a few statements, anything else one by one.
        let run = if isolated {
            0
        } else {
            rest.iter().take_while(|m| bulk::is_plain(m)).count()
        };
        let (done, appended) = match run {
            0 if isolated => (1, vec![append::append_isolated(&mut db, m)?]),
            0 => (1, vec![append::append(&mut db, m)?]),
            n => (n, bulk::append_run(&mut db, &rest[..n])?),
        };
        // A run records its direct conversations itself.
        let one_by_one = if run == 0 { done } else { 0 };
        for (m, result) in rest[..one_by_one].iter().zip(&appended) {
            if matches!(
                result,
                Ok(Appended {
                    duplicate: false,
                    ..
                })
            ) && crate::topics::is_direct(&m.conv)
            {
                direct.entry(&m.conv).or_insert(&m.sender);
            }
        }
        results.extend(appended);
        rest = &rest[done..];
    }
    // A direct conversation exists once it has an entry. Checked per batch, not cached:
    // removing a user deletes the row from another connection. One statement for all of them
    // (in id order, so that writers of several processes lock rows in the same order).
    if !direct.is_empty() {
        let mut direct: Vec<(&str, &str)> = direct.into_iter().collect();
        direct.sort_unstable();
        let (convs, senders): (Vec<&str>, Vec<&str>) = direct.into_iter().unzip();
        db.exec(
            "INSERT INTO conversations (id, kind, created_by, created_at)
             SELECT id, 'direct', created_by, $3 FROM UNNEST($1::TEXT[], $2::TEXT[])
                 AS d(id, created_by)
             ON CONFLICT (id) DO NOTHING",
            &[&convs, &senders, &crate::store::clock::now()],
        )?;
    }
    tx.commit()?;
    Ok(results)
}

/// Whether a failed statement may succeed later: the connection broke or could not be opened,
/// the database is shutting down, starting or read-only (a failover), out of disk, memory or
/// connections, a lock or the statement timed out, or a serialization failure or deadlock
/// rolled the transaction back.
pub(super) fn is_transient(e: &StoreError) -> bool {
    match e {
        StoreError::Pool(_) => true,
        StoreError::Postgres(e) => match e.code() {
            // No SQLSTATE: the connection failed, or a value did not convert (which will not
            // pass).
            None => {
                e.is_closed()
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
            }
            Some(code) => {
                let code = code.code();
                matches!(&code[..2], "08" | "40" | "53" | "57" | "58")
                    || code == "55P03"
                    || code == "25006"
            }
        },
        _ => false,
    }
}
