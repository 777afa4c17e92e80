//! The history writer thread: it takes queued messages a batch at a time, has the backend's
//! [`Log`] commit each batch in one transaction, and retries a commit that failed for a reason
//! that may pass. The same thread, batching and retries serve every backend.
//!
//! Every message gets the next sequence number of its conversation inside the transaction that
//! stores it, so sequences are dense and gap-free; a reply goes back to each waiting connection
//! only after the batch's COMMIT returns, which is what lets the connection PUBACK the sender.
//!
//! A commit that fails for a reason that may pass (the database busy or restarting, the disk
//! full, an I/O error) is retried with backoff while the senders wait, each at most until its
//! deadline (`storage.commit_retry_secs` after it was submitted); only then is it reported as
//! failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::messages::{AppendError, Appended, NewMessage};
use super::StoreError;
use crate::stats::Stats;

/// Most messages committed in one transaction.
const MAX_BATCH: usize = 512;
/// Messages waiting for the writer before publishers wait.
const QUEUE: usize = 8192;
/// The first and the longest pause between attempts at a batch whose commit failed.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Bounds of how long one attempt waits for a lock or for the database. Within them it waits
/// no longer than the batch's earliest deadline, so a busy database cannot stretch the bound a
/// sender waits.
const WAIT_MIN: Duration = Duration::from_millis(100);
pub(super) const WAIT_MAX: Duration = Duration::from_secs(5);

/// A committed batch: each message's result, and how long the COMMIT itself took (the durable
/// write), for the commit histograms, where the backend can tell it apart.
#[derive(Debug)]
pub struct Committed {
    pub results: Vec<Result<Appended, AppendError>>,
    pub sync: Option<Duration>,
}

/// One backend's way of appending to the history: its own connection, one transaction per
/// batch.
pub trait Log: Send {
    /// Appends the messages in order in one transaction and returns each one's result. An
    /// error that concerns one message (a value the database refuses, an edit it may not make)
    /// fails that message alone and the rest commit. The outer error fails the whole batch;
    /// nothing of it is stored.
    fn commit(&mut self, batch: &[&NewMessage]) -> Result<Committed, StoreError>;
    /// Bounds how long the next attempt waits for a lock or for the database.
    fn set_wait(&mut self, wait: Duration);
    /// Whether a commit that failed with `e` may succeed if tried again.
    fn is_transient(&self, e: &StoreError) -> bool;
}

/// One queued message and where its result goes.
struct Job {
    message: NewMessage,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
    submitted: Instant,
    /// Until when a failed commit of this message is retried.
    deadline: Instant,
}

/// The handle of the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    commit_retry: Duration,
}

impl Writer {
    /// Starts the writer thread on `log` (see [`super::Store::log`]). The thread ends when
    /// every handle is dropped. A failed commit is retried for up to `commit_retry` after each
    /// message was submitted; without `group_commit`, each message is a transaction of its own.
    pub fn start(
        log: Box<dyn Log>,
        group_commit: bool,
        commit_retry: Duration,
        stats: Arc<Stats>,
    ) -> Result<Writer, StoreError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("natter-writer".into())
            .spawn(move || run(log, rx, if group_commit { MAX_BATCH } else { 1 }, &stats))
            .map_err(StoreError::Thread)?;
        Ok(Writer { tx, commit_retry })
    }

    /// Queues a message; the receiver resolves once its batch is committed.
    pub async fn submit(
        &self,
        message: NewMessage,
    ) -> oneshot::Receiver<Result<Appended, AppendError>> {
        let (reply, rx) = oneshot::channel();
        let now = Instant::now();
        let job = Job {
            message,
            reply,
            submitted: now,
            deadline: now + self.commit_retry,
        };
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job).await {
            let _ = job.reply.send(Err(AppendError::Stopped));
        }
        rx
    }
}

/// The thread's loop: waits for a message, takes what else is queued up to `max_batch`, and
/// commits them together.
fn run(mut log: Box<dyn Log>, mut rx: mpsc::Receiver<Job>, max_batch: usize, stats: &Stats) {
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
        commit_with_retry(log.as_mut(), &mut batch, stats);
    }
}

/// Commits `batch` and answers every job in it. A failure that may pass is retried with
/// backoff (new messages queue up meanwhile, and publishers wait once the queue is full); a
/// job whose deadline has passed, or any job after a failure that will not pass, is answered
/// with the error: its sender was never told the message is stored, and sends it again.
fn commit_with_retry(log: &mut dyn Log, batch: &mut Vec<Job>, stats: &Stats) {
    let mut backoff = RETRY_FIRST;
    let mut attempts = 0u32;
    loop {
        let Some(earliest) = batch.iter().map(|j| j.deadline).min() else {
            return;
        };
        let budget = earliest.saturating_duration_since(Instant::now());
        log.set_wait(budget.clamp(WAIT_MIN, WAIT_MAX));
        attempts += 1;
        let messages: Vec<&NewMessage> = batch.iter().map(|j| &j.message).collect();
        let started = Instant::now();
        let e = match log.commit(&messages) {
            Ok(Committed { results, sync }) => {
                let took = started.elapsed();
                if let Some(oldest) = batch.iter().map(|j| j.submitted).min() {
                    let waited = started.saturating_duration_since(oldest);
                    stats.commit_wait_ms.observe(millis(waited));
                }
                if let Some(sync) = sync {
                    stats
                        .commit_sql_ms
                        .observe(millis(took.saturating_sub(sync)));
                    stats.commit_sync_ms.observe(millis(sync));
                }
                tracing::debug!(
                    messages = messages.len(),
                    micros = took.as_micros() as u64,
                    "history batch committed"
                );
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
        let now = Instant::now();
        answer_failed(batch, &e, log.is_transient(&e), now, attempts);
        if let Some(earliest) = batch.iter().map(|j| j.deadline).min() {
            std::thread::sleep(backoff.min(earliest.saturating_duration_since(now)));
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

/// After a failed commit: answers with the error every job that is not to be retried (the
/// failure will not pass, or its deadline is over) and keeps the others in `batch`.
fn answer_failed(
    batch: &mut Vec<Job>,
    e: &StoreError,
    transient: bool,
    now: Instant,
    attempts: u32,
) {
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

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
