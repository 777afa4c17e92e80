//! Chat history: one writer thread that appends messages in batches (group commit), and the
//! queries that read them back.
//!
//! Every message gets the next sequence number of its conversation inside the transaction that
//! stores it, so sequences are dense and gap-free; a reply goes back to each waiting connection
//! only after the batch's COMMIT returns, which is what lets the connection PUBACK the sender.
//! With `synchronous = FULL` that COMMIT has reached the disk (power loss safe); with `NORMAL`
//! (WAL) it survives a process crash but the last commits may be lost on power loss.
//!
//! A commit that fails for a reason that may pass (the database busy, the disk full, an I/O
//! error) is retried with backoff while the senders wait, each at most until its deadline
//! (`storage.commit_retry_secs` after it was submitted); only then is it reported as failed.
//! The last sequence number of each conversation is kept in `conv_seq`, so sequences never go
//! back, even after retention removed every entry of a conversation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{
    params, Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};
use tokio::sync::{mpsc, oneshot};

use super::{Store, StoreError};
use crate::chat::envelope::{Content, Envelope, Kind};
use crate::config::Synchronous;
use crate::stats::Stats;
use std::sync::Arc;

/// Most messages committed in one transaction.
const MAX_BATCH: usize = 512;
/// Messages waiting for the writer before publishers wait.
const QUEUE: usize = 8192;
/// Prepared statements the writer keeps (it uses about a dozen).
const STATEMENT_CACHE: usize = 32;
/// How far back a DUP resend without a client message id is matched against what was stored.
const DUP_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// The first and the longest pause between attempts at a batch whose commit failed.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Bounds of how long one attempt waits for another connection's write lock. Within them it
/// waits no longer than the batch's earliest deadline, so a busy database cannot stretch the
/// bound a sender waits.
const BUSY_MIN: Duration = Duration::from_millis(100);
const BUSY_MAX: Duration = Duration::from_secs(5);

/// A message to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conv: String,
    pub sender: String,
    pub device: String,
    /// The MQTT packet id and DUP flag, for resends without a client message id.
    pub pkid: Option<u16>,
    pub dup: bool,
    /// Whether the sender may delete others' messages (a group owner or admin).
    pub moderator: bool,
    pub content: Content,
}

/// The stored message; `duplicate` when it was stored before (same sender, conversation and cid, or a DUP
/// resend): it must then not be delivered again.
#[derive(Debug, Clone)]
pub struct Appended {
    pub envelope: Envelope,
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("{0}")]
    Refused(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the history writer has stopped")]
    Stopped,
}

struct Job {
    message: NewMessage,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
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
        let transient = is_transient(&e);
        let now = Instant::now();
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
        if let Some(earliest) = batch.iter().map(|j| j.deadline).min() {
            std::thread::sleep(backoff.min(earliest.saturating_duration_since(now)));
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

/// Whether a failed commit may succeed later: another connection holds the lock, the disk is
/// full, or the file system failed for a moment.
fn is_transient(e: &StoreError) -> bool {
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Appends a batch in one transaction; a refused message does not fail the others.
fn commit(
    conn: &mut Connection,
    batch: &[Job],
    last_seq: &mut HashMap<String, u64>,
) -> Result<Vec<Result<Appended, AppendError>>, StoreError> {
    // IMMEDIATE: the write lock is taken (waiting out the busy timeout) before anything is
    // read, so a commit by another connection in between cannot void this one's snapshot.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    // Per conversation with new entries: the last seq, and who wrote the first.
    let mut top: HashMap<&str, (u64, &str)> = HashMap::new();
    let mut unindexed = None;
    for job in batch {
        if job.message.content.target.is_some() {
            // An edit or delete updates its target through the index triggers, which must
            // find the target indexed.
            index_new(&tx, &mut unindexed)?;
        }
        let result = append(&tx, &job.message, last_seq)?;
        if let Ok(Appended {
            envelope,
            duplicate: false,
        }) = &result
        {
            top.entry(&job.message.conv)
                .and_modify(|(seq, _)| *seq = envelope.seq)
                .or_insert((envelope.seq, &job.message.sender));
            unindexed.get_or_insert(envelope.id);
        }
        results.push(result);
    }
    index_new(&tx, &mut unindexed)?;
    for (conv, (seq, first_sender)) in top {
        tx.prepare_cached(
            "INSERT INTO conv_seq (conv, last) VALUES (?1, ?2)
             ON CONFLICT (conv) DO UPDATE SET last = MAX(last, excluded.last)",
        )?
        .execute(params![conv, seq])?;
        // A direct conversation exists once it has an entry. Checked per batch, not cached:
        // removing a user deletes the row from another connection.
        if crate::topics::is_direct(conv) {
            tx.prepare_cached(
                "INSERT INTO conversations (id, kind, created_by, created_at)
                 VALUES (?1, 'direct', ?2, ?3) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![conv, first_sender, now_ms() / 1000])?;
        }
    }
    tx.commit()?;
    Ok(results)
}

/// Adds the entries from id `from` on (all of them this batch's) to the full-text indexes, in
/// one statement each: FTS5 writes what it has gathered at every statement, so one statement
/// per batch means one index segment per batch (see the schema's migrations).
fn index_new(tx: &Transaction<'_>, from: &mut Option<i64>) -> Result<(), StoreError> {
    let Some(first) = from.take() else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT INTO messages_fts (rowid, body) SELECT id, body FROM messages
         WHERE id >= ?1 AND kind = 'msg' AND body IS NOT NULL",
    )?
    .execute([first])?;
    tx.prepare_cached(
        "INSERT INTO messages_tri (rowid, body) SELECT id, body FROM messages
         WHERE id >= ?1 AND kind = 'msg' AND cjk AND body IS NOT NULL",
    )?
    .execute([first])?;
    Ok(())
}

fn append(
    tx: &Transaction<'_>,
    m: &NewMessage,
    last_seq: &mut HashMap<String, u64>,
) -> Result<Result<Appended, AppendError>, StoreError> {
    let c = &m.content;
    // Idempotency: the same (sender, conversation, cid) is the same message. Per conversation,
    // so that a client numbering its messages per conversation loses none.
    if let Some(cid) = &c.cid {
        let found = tx
            .prepare_cached(&format!(
                "{SELECT} WHERE sender = ?1 AND conv = ?2 AND cid = ?3"
            ))?
            .query_row(params![m.sender, m.conv, cid], row_to_envelope)
            .optional()?;
        if let Some(envelope) = found {
            return Ok(Ok(Appended {
                envelope,
                duplicate: true,
            }));
        }
    } else if let (true, Some(pkid)) = (m.dup, m.pkid) {
        // A resend (DUP) without cid: the same device's latest message with this packet id, if
        // it carried the same content to the same conversation.
        let found = tx
            .prepare_cached(&format!(
                "{SELECT} WHERE device = ?1 AND pkid = ?2 AND ts > ?3 ORDER BY id DESC LIMIT 1"
            ))?
            .query_row(
                params![m.device, pkid, now_ms() - DUP_WINDOW_MS],
                row_to_envelope,
            )
            .optional()?;
        if let Some(envelope) = found.filter(|e| e.conv == m.conv && e.t == c.text && e.k == c.kind)
        {
            return Ok(Ok(Appended {
                envelope,
                duplicate: true,
            }));
        }
    }
    for id in &c.media {
        // Media travel only with their uploader's messages, or within a conversation that has
        // seen them already.
        let ok: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM media WHERE id = ?1 AND (owner = ?2 OR EXISTS (
                SELECT 1 FROM media_refs WHERE media = ?1 AND conv = ?3)))",
            )?
            .query_row(params![id, m.sender, m.conv], |r| r.get(0))?;
        if !ok {
            return Ok(Err(AppendError::Refused("unknown media id")));
        }
    }
    if let Some(target) = c.target {
        let author: Option<(String, String)> = tx
            .query_row(
                "SELECT sender, kind FROM messages WHERE conv = ?1 AND seq = ?2",
                params![m.conv, target],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((author, kind)) = author else {
            return Ok(Err(AppendError::Refused("no such message")));
        };
        if kind != Kind::Msg.as_str() {
            return Ok(Err(AppendError::Refused(
                "only messages can be edited or reacted to",
            )));
        }
        let own = author == m.sender;
        match c.kind {
            Kind::Edit if !own => return Ok(Err(AppendError::Refused("only the author may edit"))),
            Kind::Delete if !own && !m.moderator => {
                return Ok(Err(AppendError::Refused(
                    "only the author (or a group admin) may delete",
                )))
            }
            _ => {}
        }
    }
    let seq = match last_seq.get(&m.conv) {
        Some(s) => s + 1,
        None => {
            // The stored last sequence, or the entries themselves for a conversation that
            // predates `conv_seq` without a row there.
            let last: i64 = tx
                .prepare_cached(
                    "SELECT MAX(COALESCE((SELECT last FROM conv_seq WHERE conv = ?1), 0),
                            COALESCE((SELECT MAX(seq) FROM messages WHERE conv = ?1), 0))",
                )?
                .query_row(params![m.conv], |r| r.get(0))?;
            last as u64 + 1
        }
    };
    let ts = now_ms();
    tx.prepare_cached(
        "INSERT INTO messages (conv, seq, sender, device, ts, cid, pkid, kind, body, reply_to,
                               thread, target, emoji, media, cjk)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        m.conv,
        seq,
        m.sender,
        m.device,
        ts,
        c.cid,
        m.pkid,
        c.kind.as_str(),
        c.text,
        c.reply_to,
        c.thread,
        c.target,
        c.emoji,
        (!c.media.is_empty()).then(|| c.media.join(",")),
        has_cjk(c.text.as_deref())
    ])?;
    let id = tx.last_insert_rowid();
    for media in &c.media {
        tx.prepare_cached(
            "INSERT INTO media_refs (media, message, conv) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![media, id, m.conv])?;
    }
    match (c.kind, c.target) {
        (Kind::Edit, Some(target)) => {
            tx.prepare_cached(
                "UPDATE messages SET body = ?3, cjk = ?4, edited = 1 WHERE conv = ?1 AND seq = ?2",
            )?
            .execute(params![m.conv, target, c.text, has_cjk(c.text.as_deref())])?;
        }
        (Kind::Delete, Some(target)) => {
            // A tombstone: the entry stays (sequence numbers stay dense), its text and media
            // go; released references let unreferenced uploads be collected.
            tx.prepare_cached(
                "DELETE FROM media_refs WHERE message =
                   (SELECT id FROM messages WHERE conv = ?1 AND seq = ?2)",
            )?
            .execute(params![m.conv, target])?;
            tx.prepare_cached(
                "UPDATE messages SET body = NULL, media = NULL, deleted = 1
                 WHERE conv = ?1 AND seq = ?2",
            )?
            .execute(params![m.conv, target])?;
        }
        _ => {}
    }
    last_seq.insert(m.conv.clone(), seq);
    Ok(Ok(Appended {
        envelope: Envelope {
            id,
            conv: m.conv.clone(),
            seq,
            from: m.sender.clone(),
            dev: m.device.clone(),
            ts,
            k: c.kind,
            cid: c.cid.clone(),
            t: c.text.clone(),
            re: c.reply_to,
            th: c.thread,
            target: c.target,
            emoji: c.emoji.clone(),
            media: c.media.clone(),
        },
        duplicate: false,
    }))
}

/// Whether a text goes into the trigram index (see the schema's `cjk` column).
fn has_cjk(text: Option<&str>) -> bool {
    text.is_some_and(|t| t.chars().any(is_cjk))
}

/// Han, kana, hangul: scripts written without spaces between words. The migration that added
/// the `cjk` column lists the same ranges.
fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF)
}

const SELECT: &str = "SELECT id, conv, seq, sender, device, ts, kind, cid, body, reply_to,
    thread, target, emoji, edited, deleted, media FROM messages";

fn row_to_envelope(r: &rusqlite::Row<'_>) -> rusqlite::Result<Envelope> {
    let kind: String = r.get(6)?;
    Ok(Envelope {
        id: r.get(0)?,
        conv: r.get(1)?,
        seq: r.get(2)?,
        from: r.get(3)?,
        dev: r.get(4)?,
        ts: r.get(5)?,
        k: Kind::parse(&kind).unwrap_or(Kind::Msg),
        cid: r.get(7)?,
        t: r.get(8)?,
        re: r.get(9)?,
        th: r.get(10)?,
        target: r.get(11)?,
        emoji: r.get(12)?,
        media: r
            .get::<_, Option<String>>(15)?
            .map(|m| m.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

/// A history entry with what later events did to it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    #[serde(flatten)]
    pub envelope: Envelope,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Emoji → number of reactions with it (messages only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, u64>,
}

/// One page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Item>,
    /// More entries exist beyond this page in the direction read.
    pub more: bool,
}

impl Store {
    /// Entries of `conv` with `seq > after`, oldest first.
    pub fn after(&self, conv: &str, after: u64, limit: usize) -> Result<Page, StoreError> {
        self.page(
            &format!("{SELECT} WHERE conv = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3"),
            params![conv, after, limit as i64 + 1],
            limit,
        )
    }

    /// Entries of `conv` with `seq < before`, newest first (scrolling up).
    pub fn before(&self, conv: &str, before: u64, limit: usize) -> Result<Page, StoreError> {
        self.page(
            &format!("{SELECT} WHERE conv = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"),
            params![conv, before, limit as i64 + 1],
            limit,
        )
    }

    /// Entries of the given conversations with `id > since`, in id order (a user's stream).
    pub fn since(&self, convs: &[String], since: i64, limit: usize) -> Result<Page, StoreError> {
        if convs.is_empty() {
            return Ok(Page {
                items: Vec::new(),
                more: false,
            });
        }
        let list = convs.iter().map(|_| "?").collect::<Vec<_>>().join(",");
        let sql = format!("{SELECT} WHERE id > ? AND conv IN ({list}) ORDER BY id ASC LIMIT ?");
        let mut values: Vec<rusqlite::types::Value> = vec![since.into()];
        values.extend(convs.iter().map(|c| c.clone().into()));
        values.push((limit as i64 + 1).into());
        self.page(&sql, rusqlite::params_from_iter(values), limit)
    }

    /// Full-text search over the messages of the given conversations, newest first.
    pub fn search(
        &self,
        convs: &[String],
        query: &str,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        if convs.is_empty() {
            return Ok(Vec::new());
        }
        let list = convs.iter().map(|_| "?").collect::<Vec<_>>().join(",");
        // unicode61 splits on spaces, which Chinese and Japanese text does not have: such
        // queries go to the trigram index, or (under three characters, too short for trigrams)
        // to a substring scan of the same conversations.
        let cjk = query.chars().any(is_cjk);
        let (from, matcher, pattern) = if cjk && query.chars().count() < 3 {
            let escaped = query
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            (
                "messages m",
                "m.body LIKE ? ESCAPE '\\'",
                format!("%{escaped}%"),
            )
        } else {
            // One quoted FTS5 string: user input never becomes FTS syntax.
            let phrase = format!("\"{}\"", query.replace('"', "\"\""));
            if cjk {
                (
                    "messages_tri f JOIN messages m ON m.id = f.rowid",
                    "messages_tri MATCH ?",
                    phrase,
                )
            } else {
                (
                    "messages_fts f JOIN messages m ON m.id = f.rowid",
                    "messages_fts MATCH ?",
                    phrase,
                )
            }
        };
        let sql = format!(
            "SELECT m.id, m.conv, m.seq, m.sender, m.device, m.ts, m.kind, m.cid, m.body,
                    m.reply_to, m.thread, m.target, m.emoji, m.edited, m.deleted, m.media
             FROM {from}
             WHERE {matcher} AND m.kind = 'msg' AND m.conv IN ({list}) AND m.deleted = 0
             ORDER BY m.id DESC LIMIT ?"
        );
        let mut values: Vec<rusqlite::types::Value> = vec![pattern.into()];
        values.extend(convs.iter().map(|c| c.clone().into()));
        values.push((limit as i64).into());
        Ok(self
            .page(&sql, rusqlite::params_from_iter(values), limit)?
            .items)
    }

    fn page(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(sql)?;
        let mut rows: Vec<(Envelope, bool, bool)> = stmt
            .query_map(params, |r| {
                Ok((
                    row_to_envelope(r)?,
                    r.get::<_, bool>(13)?,
                    r.get::<_, bool>(14)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let mut reactions = conn.prepare_cached(
            "SELECT emoji, SUM(CASE kind WHEN 'react' THEN 1 ELSE -1 END) FROM messages
             WHERE conv = ?1 AND target = ?2 AND kind IN ('react', 'unreact')
             GROUP BY emoji HAVING SUM(CASE kind WHEN 'react' THEN 1 ELSE -1 END) > 0
             ORDER BY emoji",
        )?;
        let mut items = Vec::with_capacity(rows.len());
        for (envelope, edited, deleted) in rows {
            let reactions = if envelope.k == Kind::Msg {
                reactions
                    .query_map(params![envelope.conv, envelope.seq], |r| {
                        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
                    })?
                    .collect::<Result<_, _>>()?
            } else {
                BTreeMap::new()
            };
            items.push(Item {
                envelope,
                edited,
                deleted,
                reactions,
            });
        }
        Ok(Page { items, more })
    }

    /// The conversations a user has direct messages in (groups come from the directory).
    pub fn direct_conversations(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM conversations WHERE kind = 'direct'
             AND (id LIKE 'd.' || ?1 || '.%' OR id LIKE 'd.%.' || ?1)",
        )?;
        let rows = stmt.query_map(params![user], |r| r.get::<_, String>(0))?;
        Ok(rows
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|c| crate::topics::direct_includes(c, user))
            .collect())
    }

    /// The lowest sequence number still stored in `conv` (after retention), if any.
    pub fn first_seq(&self, conv: &str) -> Result<Option<u64>, StoreError> {
        let conn = self.lock();
        Ok(conn.query_row(
            "SELECT MIN(seq) FROM messages WHERE conv = ?1",
            params![conv],
            |r| r.get(0),
        )?)
    }

    /// Deletes entries older than `max_age` and beyond the newest `max_per_conv` of each
    /// conversation (0 disables either rule); returns how many went.
    pub fn enforce_retention(
        &self,
        max_age: Option<Duration>,
        max_per_conv: u64,
    ) -> Result<usize, StoreError> {
        self.retain_at(now_ms(), max_age, max_per_conv)
    }

    /// [`Store::enforce_retention`] as if the time were `now_ms`.
    fn retain_at(
        &self,
        now_ms: i64,
        max_age: Option<Duration>,
        max_per_conv: u64,
    ) -> Result<usize, StoreError> {
        let conn = self.lock();
        let mut removed = 0;
        if let Some(age) = max_age {
            let cutoff = now_ms - age.as_millis() as i64;
            removed += conn.execute("DELETE FROM messages WHERE ts < ?1", params![cutoff])?;
        }
        if max_per_conv > 0 {
            removed += conn.execute(
                "DELETE FROM messages WHERE id IN (
                   SELECT m.id FROM messages m
                   JOIN (SELECT conv, MAX(seq) AS top FROM messages GROUP BY conv) t
                     ON t.conv = m.conv
                   WHERE m.seq <= t.top - ?1)",
                params![max_per_conv as i64],
            )?;
        }
        Ok(removed)
    }

    /// Raises each (conversation, user)'s delivered mark to `seq`; for each row, whether it
    /// went up (marks never go back).
    pub fn mark_delivered(&self, rows: &[(String, String, u64)]) -> Result<Vec<bool>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut advanced = Vec::with_capacity(rows.len());
        for (conv, user, seq) in rows {
            let n = tx.execute(
                "INSERT INTO receipts (conv, user, delivered) VALUES (?1, ?2, ?3)
                 ON CONFLICT (conv, user) DO UPDATE SET delivered = excluded.delivered
                 WHERE excluded.delivered > receipts.delivered",
                params![conv, user, seq],
            )?;
            advanced.push(n > 0);
        }
        tx.commit()?;
        Ok(advanced)
    }

    /// Raises a user's read mark (public, or private: seen only by the user's own devices);
    /// whether it went up.
    pub fn mark_read(
        &self,
        conv: &str,
        user: &str,
        seq: u64,
        private: bool,
    ) -> Result<bool, StoreError> {
        let conn = self.lock();
        let sql = if private {
            "INSERT INTO receipts (conv, user, read_private) VALUES (?1, ?2, ?3)
             ON CONFLICT (conv, user) DO UPDATE SET read_private = excluded.read_private
             WHERE excluded.read_private > MAX(receipts.read_private, receipts.read)"
        } else {
            "INSERT INTO receipts (conv, user, read) VALUES (?1, ?2, ?3)
             ON CONFLICT (conv, user) DO UPDATE SET read = excluded.read
             WHERE excluded.read > receipts.read"
        };
        Ok(conn.execute(sql, params![conv, user, seq])? > 0)
    }

    /// Everyone's public receipts in a conversation: (user, delivered, read).
    pub fn receipts(&self, conv: &str) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT user, delivered, read FROM receipts WHERE conv = ?1 ORDER BY user",
        )?;
        let rows = stmt.query_map(params![conv], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Messages from others after the user's read mark (public or private).
    pub fn unread(&self, conv: &str, user: &str) -> Result<u64, StoreError> {
        let conn = self.lock();
        Ok(conn.query_row(
            "SELECT COUNT(*) FROM messages WHERE conv = ?1 AND kind = 'msg' AND sender != ?2
             AND seq > COALESCE((SELECT MAX(read, read_private) FROM receipts
                                 WHERE conv = ?1 AND user = ?2), 0)",
            params![conv, user],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MediaRow;

    fn start(dir: &Path) -> Writer {
        Writer::start(
            dir,
            Synchronous::Normal,
            true,
            Duration::from_secs(1),
            Arc::new(Stats::default()),
        )
        .unwrap()
    }

    fn content(kind: Kind, text: Option<&str>, target: Option<u64>, media: &[&str]) -> Content {
        Content {
            kind,
            cid: None,
            text: text.map(str::to_string),
            reply_to: None,
            thread: None,
            target,
            emoji: None,
            media: media.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn from_alice(conv: &str, content: Content) -> NewMessage {
        NewMessage {
            conv: conv.into(),
            sender: "alice".into(),
            device: "alice.phone".into(),
            pkid: None,
            dup: false,
            moderator: false,
            content,
        }
    }

    async fn append(writer: &Writer, conv: &str, content: Content) -> Envelope {
        writer
            .submit(from_alice(conv, content))
            .await
            .await
            .unwrap()
            .unwrap()
            .envelope
    }

    async fn text(writer: &Writer, conv: &str, t: &str) -> u64 {
        append(writer, conv, content(Kind::Msg, Some(t), None, &[]))
            .await
            .seq
    }

    fn count(store: &Store, sql: &str) -> i64 {
        store.lock().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn age_retention_removes_only_old_entries_and_seq_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let writer = start(dir.path());
        for t in ["a", "b", "c"] {
            text(&writer, "d.alice.bob", t).await;
        }
        let day = Duration::from_secs(86_400);
        // Not a day old yet: everything stays.
        assert_eq!(store.retain_at(now_ms(), Some(day), 0).unwrap(), 0);
        assert_eq!(store.after("d.alice.bob", 0, 10).unwrap().items.len(), 3);
        // Two days later every entry is over a day old.
        let later = now_ms() + 2 * day.as_millis() as i64;
        assert_eq!(store.retain_at(later, Some(day), 0).unwrap(), 3);
        assert_eq!(store.first_seq("d.alice.bob").unwrap(), None);
        // The writer continues where it was...
        assert_eq!(text(&writer, "d.alice.bob", "d").await, 4);
        store.retain_at(later, Some(day), 0).unwrap();
        // ...and so does a restarted one, whose sequence cache starts empty.
        drop(writer);
        let writer = start(dir.path());
        assert_eq!(text(&writer, "d.alice.bob", "e").await, 5);
        assert_eq!(text(&writer, "g.other", "x").await, 1);
    }

    /// Entries are indexed once per batch; an edit or delete in the same batch as its target
    /// must still find it indexed, and the trigram index holds only CJK text.
    #[tokio::test]
    async fn batched_indexing_keeps_both_indexes_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let writer = start(dir.path());
        let conv = "d.alice.bob";
        // Submitted together, so that they share batches.
        let submit = |c: Content| writer.submit(from_alice(conv, c));
        let replies = [
            submit(content(Kind::Msg, Some("alpha one"), None, &[])).await,
            submit(content(Kind::Edit, Some("beta one"), Some(1), &[])).await,
            submit(content(Kind::Msg, Some("東京で会いましょう"), None, &[])).await,
            submit(content(Kind::Edit, Some("gamma"), Some(3), &[])).await,
            submit(content(Kind::Msg, Some("delta 서울"), None, &[])).await,
            submit(content(Kind::Delete, None, Some(5), &[])).await,
            submit(content(Kind::Msg, Some("epsilon 北京"), None, &[])).await,
        ];
        for r in replies {
            r.await.unwrap().unwrap();
        }
        let convs = [conv.to_string()];
        let found = |q: &str| -> Vec<u64> {
            store
                .search(&convs, q, 10)
                .unwrap()
                .iter()
                .map(|i| i.envelope.seq)
                .collect()
        };
        assert_eq!(found("beta"), [1]);
        assert!(found("alpha").is_empty());
        assert!(found("東京で").is_empty(), "edited away");
        assert_eq!(found("gamma"), [3]);
        assert!(found("delta").is_empty(), "deleted");
        assert_eq!(found("北京"), [7]);
        assert_eq!(found("epsilon"), [7]);
        // Only the one stored text with CJK left is in the trigram index.
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM messages_tri_docsize"),
            1
        );
        for index in ["messages_fts", "messages_tri"] {
            store
                .lock()
                .execute(
                    // Internal consistency only: both indexes hold a subset of the table.
                    &format!("INSERT INTO {index} ({index}) VALUES ('integrity-check')"),
                    [],
                )
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_cid_names_one_message_per_sender_and_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let _store = Store::open(dir.path()).unwrap();
        let writer = start(dir.path());
        let with_cid = |t: &str| Content {
            cid: Some("c-1".into()),
            ..content(Kind::Msg, Some(t), None, &[])
        };
        let first = append(&writer, "d.alice.bob", with_cid("hi bob")).await;
        let again = append(&writer, "d.alice.bob", with_cid("hi bob")).await;
        let elsewhere = append(&writer, "d.alice.carol", with_cid("hi carol")).await;
        assert_eq!((again.id, again.seq), (first.id, first.seq));
        assert_ne!(elsewhere.id, first.id);
        assert_eq!(
            (
                elsewhere.conv.as_str(),
                elsewhere.seq,
                elsewhere.t.as_deref()
            ),
            ("d.alice.carol", 1, Some("hi carol"))
        );
    }

    /// The row that makes a direct conversation exist comes back with its next entry, even
    /// after another connection removed it (as removing a user does) while the writer ran.
    #[tokio::test]
    async fn a_direct_conversation_row_returns_with_its_next_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for user in ["alice", "bob"] {
            store.add_user(user, "x").unwrap();
        }
        let writer = start(dir.path());
        text(&writer, "d.alice.bob", "hi").await;
        assert_eq!(store.direct_conversations("bob").unwrap(), ["d.alice.bob"]);
        assert!(store.remove_user("bob").unwrap());
        store.add_user("bob", "x").unwrap();
        assert!(store.direct_conversations("bob").unwrap().is_empty());
        text(&writer, "d.alice.bob", "hi again").await;
        assert_eq!(store.direct_conversations("bob").unwrap(), ["d.alice.bob"]);
    }

    #[tokio::test]
    async fn a_deleted_message_releases_its_media() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for id in ["m1", "m2"] {
            store
                .add_media(&MediaRow {
                    id: id.into(),
                    hash: format!("h-{id}"),
                    owner: "alice".into(),
                    size: 3,
                    mime: "image/png".into(),
                })
                .unwrap();
        }
        let writer = start(dir.path());
        let conv = "d.alice.bob";
        let kept = append(&writer, conv, content(Kind::Msg, None, None, &["m1"])).await;
        let gone = append(&writer, conv, content(Kind::Msg, Some("x"), None, &["m2"])).await;
        append(
            &writer,
            conv,
            content(Kind::Delete, None, Some(gone.seq), &[]),
        )
        .await;

        let items = store.after(conv, 0, 10).unwrap().items;
        assert_eq!(items[0].envelope.media, ["m1"]);
        assert!(items[1].deleted);
        assert!(items[1].envelope.media.is_empty(), "{:?}", items[1]);
        assert!(items[1].envelope.t.is_none());
        assert!(store.media_conversations("m2").unwrap().is_empty());
        assert_eq!(store.media_conversations("m1").unwrap(), [conv]);
        // With the grace over, the deleted message's upload (and file) can go; the other stays.
        assert_eq!(
            store.release_unreferenced_media(-10).unwrap(),
            ["h-m2".to_string()]
        );
        assert_eq!(count(&store, "SELECT COUNT(*) FROM media"), 1);
        assert_eq!(kept.seq, 1);
    }
}
