//! Checkpoints of `natter.db`'s write-ahead log, kept off the history writer's commits.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold: that
//! commit, and every message queued behind it, waits for the pages to be copied into the
//! database file and for its fsync (measured: the tail of the writer's COMMIT times at
//! 10,000 msg/s). Here a thread of its own copies what the writer committed, every
//! [`EVERY`], while the writer goes on appending.
//!
//! A checkpoint from another connection cannot start the log over: SQLite rewinds the WAL
//! only when a write transaction begins with every frame already copied, and a writer that
//! commits back to back never gives it that moment, so the file grows without bound. So once
//! the log holds [`RESTART_AT`] frames, the thread asks the writer, and the writer itself runs
//! a RESTART checkpoint between two transactions ([`Checkpoints::restart_if_wanted`]). By then
//! this thread has copied nearly everything; what is left is the last few commits' pages.
//! When the history writer is idle (the log grew by other writes: retained messages, receipts,
//! accounts), the thread starts the log over itself.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use crate::store::StoreError;

/// How often the thread copies newly committed pages into the database file (a pass with
/// nothing new costs a few microseconds).
const EVERY: Duration = Duration::from_millis(20);
/// Frames (pages) in the log at which the writer starts it over: 16 MiB of 4 KiB pages.
const RESTART_AT: i64 = 4096;
/// How long a RESTART waits for readers still using the log before giving up until the next
/// time (it holds the writer meanwhile).
const RESTART_WAIT: Duration = Duration::from_millis(5);

/// The writer's side: whether the thread wants the log started over. Dropping it stops the
/// thread.
pub(super) struct Checkpoints {
    restart: Arc<AtomicBool>,
    _stop: mpsc::Sender<()>,
}

impl Checkpoints {
    /// Starts the checkpoint thread on its own connection to `path`.
    pub(super) fn start(path: &Path) -> Result<Checkpoints, StoreError> {
        let conn = Connection::open(path)?;
        // Only a restart waits (a passive checkpoint never does).
        conn.busy_timeout(RESTART_WAIT)?;
        let restart = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel();
        let wanted = restart.clone();
        std::thread::Builder::new()
            .name("natter-checkpoint".into())
            .spawn(move || run(&conn, &wanted, &stopped))
            .map_err(StoreError::Thread)?;
        Ok(Checkpoints {
            restart,
            _stop: stop,
        })
    }

    /// Before a history transaction: starts the log over if the thread asked for it. `wait` is
    /// the writer's busy timeout, put back afterwards.
    pub(super) fn restart_if_wanted(&self, conn: &Connection, wait: Duration) {
        if !self.restart.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Err(e) = conn.busy_timeout(RESTART_WAIT) {
            tracing::warn!(error = %e, "cannot set the history writer's busy timeout");
        }
        restart(conn);
        if let Err(e) = conn.busy_timeout(wait) {
            tracing::warn!(error = %e, "cannot set the history writer's busy timeout");
        }
    }
}

/// The thread's loop, until the writer's side is dropped.
fn run(conn: &Connection, restart_wanted: &AtomicBool, stop: &mpsc::Receiver<()>) {
    loop {
        match stop.recv_timeout(EVERY) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        // Still wanted since the last pass: the history writer has been idle, so do it here.
        if restart_wanted.swap(false, Ordering::Relaxed) {
            restart(conn);
        }
        let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match pass {
            // Ask for a restart only once everything it could see is copied: frames a reader
            // still needs would make the writer wait for nothing.
            Ok((log, copied)) if log >= RESTART_AT && copied == log => {
                restart_wanted.store(true, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot checkpoint the history log"),
        }
    }
}

/// Copies what is left of the log and starts it over, unless a reader still uses it after
/// the connection's busy timeout (then the next restart will).
fn restart(conn: &Connection) {
    match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0)) {
        Ok(0) => tracing::debug!("history log started over"),
        Ok(_) => tracing::debug!("history log not started over: a reader still uses it"),
        Err(e) => tracing::warn!(error = %e, "cannot start the history log over"),
    }
}
