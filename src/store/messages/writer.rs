//! The history writer thread: it takes queued messages a batch at a time, commits each batch
//! in one transaction, and retries a commit that failed for a reason that may pass.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use super::batch::commit;
use super::{AppendError, Appended, NewMessage};
use crate::config::Synchronous;
use crate::stats::Stats;
use crate::store::StoreError;

/// Most messages committed in one transaction.
const MAX_BATCH: usize = 512;
/// Messages waiting for the writer before publishers wait.
const QUEUE: usize = 8192;
/// Prepared statements the writer keeps (it uses about a dozen).
const STATEMENT_CACHE: usize = 32;
/// The first and the longest pause between attempts at a batch whose commit failed.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Bounds of how long one attempt waits for another connection's write lock. Within them it
/// waits no longer than the batch's earliest deadline, so a busy database cannot stretch the
/// bound a sender waits.
const BUSY_MIN: Duration = Duration::from_millis(100);
const BUSY_MAX: Duration = Duration::from_secs(5);

/// One queued message and where its result goes.
pub(super) struct Job {
    pub(super) message: NewMessage,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
    /// Until when a failed commit of this message is retried.
    deadline: Instant,
}

#[cfg(test)]
impl Job {
    /// A job as [`Writer::submit`] makes it, for tests that commit a batch by hand; its
    /// answer goes nowhere.
    pub(super) fn detached(message: NewMessage) -> Job {
        Job {
            message,
            reply: oneshot::channel().0,
            deadline: Instant::now() + RETRY_MAX,
        }
    }
}

/// The handle of the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    commit_retry: Duration,
}

impl Writer {
    /// Opens a second connection to `{data_dir}/natter.db` and starts the writer thread on it.
    /// The thread ends when every handle is dropped. A failed commit is retried for up to
    /// `commit_retry` after each message was submitted.
    pub fn start(
        data_dir: &Path,
        sync: Synchronous,
        group_commit: bool,
        commit_retry: Duration,
        stats: Arc<Stats>,
    ) -> Result<Writer, StoreError> {
        let conn = open(data_dir, sync)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("natter-writer".into())
            .spawn(move || run(conn, rx, if group_commit { MAX_BATCH } else { 1 }, &stats))
            .map_err(|e| StoreError::Dir {
                path: data_dir.to_path_buf(),
                source: e,
            })?;
        Ok(Writer { tx, commit_retry })
    }

    /// Queues a message; the receiver resolves once its batch is committed.
    pub async fn submit(
        &self,
        message: NewMessage,
    ) -> oneshot::Receiver<Result<Appended, AppendError>> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            message,
            reply,
            deadline: Instant::now() + self.commit_retry,
        };
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job).await {
            let _ = job.reply.send(Err(AppendError::Stopped));
        }
        rx
    }
}

/// Opens the writer's own connection to `{data_dir}/natter.db`, durable as `sync` asks.
fn open(data_dir: &Path, sync: Synchronous) -> Result<Connection, StoreError> {
    // Only the writer thread uses this connection: SQLite's per-connection mutex would be
    // pure overhead on every call.
    let conn = Connection::open_with_flags(
        data_dir.join("natter.db"),
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(BUSY_MAX)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    Ok(conn)
}

/// The thread's loop: waits for a message, takes what else is queued up to `max_batch`, and
/// commits them together.
fn run(mut conn: Connection, mut rx: mpsc::Receiver<Job>, max_batch: usize, stats: &Stats) {
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        stats.batch_size.observe(batch.len() as f64);
        commit_with_retry(&mut conn, &mut batch, &mut last_seq);
    }
}

/// Commits `batch` and answers every job in it. A failure that may pass is retried with
/// backoff (new messages queue up meanwhile, and publishers wait once the queue is full); a
/// job whose deadline has passed, or any job after a failure that will not pass, is answered
/// with the error: its sender was never told the message is stored, and sends it again.
fn commit_with_retry(
    conn: &mut Connection,
    batch: &mut Vec<Job>,
    last_seq: &mut HashMap<String, u64>,
) {
    let mut backoff = RETRY_FIRST;
    let mut attempts = 0u32;
    loop {
        let Some(earliest) = batch.iter().map(|j| j.deadline).min() else {
            return;
        };
        let budget = earliest.saturating_duration_since(Instant::now());
        if let Err(e) = conn.busy_timeout(budget.clamp(BUSY_MIN, BUSY_MAX)) {
            tracing::warn!(error = %e, "cannot set the history writer's busy timeout");
        }
        attempts += 1;
        let e = match commit(conn, batch, last_seq) {
            Ok(results) => {
                if attempts > 1 {
                    tracing::info!(attempts, "history commit succeeded after retrying");
                }
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(result);
                }
                return;
            }
            Err(e) => e,
        };
        // Sequence numbers handed out in the rolled-back transaction were not stored.
        last_seq.clear();
        let now = Instant::now();
        answer_failed(batch, &e, now, attempts);
        if let Some(earliest) = batch.iter().map(|j| j.deadline).min() {
            std::thread::sleep(backoff.min(earliest.saturating_duration_since(now)));
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

/// After a failed commit: answers with the error every job that is not to be retried (the
/// failure will not pass, or its deadline is over) and keeps the others in `batch`.
fn answer_failed(batch: &mut Vec<Job>, e: &StoreError, now: Instant, attempts: u32) {
    let transient = is_transient(e);
    let message = e.to_string();
    let mut kept = Vec::with_capacity(batch.len());
    let mut failed = 0;
    // Order matters: the next attempt appends the rest in the order they came.
    for job in batch.drain(..) {
        if transient && job.deadline > now {
            kept.push(job);
        } else {
            failed += 1;
            let _ = job
                .reply
                .send(Err(AppendError::Store(StoreError::Commit(message.clone()))));
        }
    }
    *batch = kept;
    if failed > 0 {
        tracing::error!(error = %e, failed, attempts, "history commit failed; senders told");
    } else {
        tracing::warn!(error = %e, messages = batch.len(), attempts, "history commit failed; retrying");
    }
}

/// Whether a failed commit may succeed later: another connection holds the lock, the disk is
/// full, or the file system failed for a moment.
pub(super) fn is_transient(e: &StoreError) -> bool {
    let StoreError::Sqlite(e) = e else {
        return false;
    };
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
        )
    )
}
