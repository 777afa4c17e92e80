//! A run of plain messages (new text to a conversation: no target, no media, not a DUP resend
//! without a client message id) appended in two statements whatever its length: one lookup of
//! the resends among them (when they carry client message ids), and one that takes each
//! conversation's next numbers, stores the entries, queues them for the word index (see
//! `words.rs`) and records direct conversations. Being one statement, it needs no transaction
//! around it: a batch of plain messages is a single round trip and its commit. A
//! statement is a round trip to the database, and one per message is what bounds a writer.

use std::collections::HashMap;

use postgres::GenericClient;

use super::super::{big, Db};
use super::history::{row_to_envelope, SELECT};
use crate::chat::envelope::Envelope;
use crate::store::clock::now_ms;
use crate::store::messages::{has_cjk, AppendError, Appended, NewMessage};
use crate::store::StoreError;

/// Whether `m` can go in a run (see the module's documentation).
pub(super) fn is_plain(m: &NewMessage) -> bool {
    let c = &m.content;
    c.target.is_none() && c.media.is_empty() && (c.cid.is_some() || !m.dup)
}

/// Appends the plain messages of `run` in order, as [`super::append::append`] would one by one.
pub(super) fn append_run<C: GenericClient>(
    db: &mut Db<'_, C>,
    run: &[&NewMessage],
) -> Result<Vec<Result<Appended, AppendError>>, StoreError> {
    let stored = stored_resends(db, run)?;
    // What each message is: a resend of a stored entry, of an earlier message of the run, or
    // new (then how many new ones its conversation has so far).
    enum Is {
        Stored(Box<Envelope>),
        Earlier(usize),
        New,
    }
    let mut first_with: HashMap<(&str, &str, &str), usize> = HashMap::new();
    let mut what = Vec::with_capacity(run.len());
    for (i, m) in run.iter().enumerate() {
        if let Some(cid) = m.content.cid.as_deref() {
            let key = (m.sender.as_str(), m.conv.as_str(), cid);
            if let Some(e) = stored.get(&key) {
                what.push(Is::Stored(Box::new(e.clone())));
                continue;
            }
            if let Some(&first) = first_with.get(&key) {
                what.push(Is::Earlier(first));
                continue;
            }
            first_with.insert(key, i);
        }
        what.push(Is::New);
    }

    let ts = now_ms();
    let mut new = Columns::default();
    for (m, is) in run.iter().zip(&what) {
        if matches!(is, Is::New) {
            new.push(m, ts)?;
        }
    }
    // One statement, so that it is atomic without a transaction around it: each
    // conversation's numbers taken (its row locked until the statement's transaction ends; in
    // name order, so that writers of several processes lock rows in the same order), the
    // entries stored under them in the run's order, queued for the word index, and the direct
    // conversations recorded. It answers with each conversation's last number and each new
    // entry's id.
    let mut next: HashMap<String, i64> = HashMap::new();
    // Per conversation, seq → id (looked up by the message's own conversation, no copy).
    let mut ids: HashMap<String, HashMap<i64, i64>> = HashMap::new();
    if !new.conv.is_empty() {
        let rows = db.query(
            "WITH input AS (
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[],
                                      $5::TEXT[], $6::INT[], $7::TEXT[], $8::TEXT[],
                                      $9::BIGINT[], $10::BIGINT[], $11::TEXT[], $12::BOOL[],
                                      $13::BOOL[])
                     WITH ORDINALITY AS i(conv, sender, device, ts, cid, pkid, kind, body,
                                          reply_to, thread, emoji, cjk, direct, ord)),
             counts AS (SELECT conv, COUNT(*) AS n FROM input GROUP BY conv),
             taken AS (
                 INSERT INTO conv_seq (conv, last) SELECT conv, n FROM counts ORDER BY conv
                 ON CONFLICT (conv) DO UPDATE SET last = conv_seq.last + excluded.last
                 RETURNING conv, last),
             added AS (
                 INSERT INTO messages (conv, seq, sender, device, ts, cid, pkid, kind, body,
                                       reply_to, thread, emoji, cjk)
                 SELECT i.conv,
                        t.last - c.n + ROW_NUMBER() OVER (PARTITION BY i.conv ORDER BY i.ord),
                        i.sender, i.device, i.ts, i.cid, i.pkid, i.kind, i.body, i.reply_to,
                        i.thread, i.emoji, i.cjk
                 FROM input i JOIN counts c ON c.conv = i.conv JOIN taken t ON t.conv = i.conv
                 ORDER BY i.ord
                 RETURNING conv, seq, id),
             queued AS (INSERT INTO words_pending (id) SELECT id FROM added),
             made AS (
                 INSERT INTO conversations (id, kind, created_by, created_at)
                 SELECT DISTINCT ON (conv) conv, 'direct', sender, $14 FROM input
                 WHERE direct ORDER BY conv, ord
                 ON CONFLICT (id) DO NOTHING)
             SELECT TRUE, conv, last, 0::BIGINT FROM taken
             UNION ALL SELECT FALSE, conv, seq, id FROM added",
            &[
                &new.conv,
                &new.sender,
                &new.device,
                &new.ts,
                &new.cid,
                &new.pkid,
                &new.kind,
                &new.body,
                &new.reply_to,
                &new.thread,
                &new.emoji,
                &new.cjk,
                &new.direct,
                &(ts / 1000),
            ],
        )?;
        let mut count_of: HashMap<&str, i64> = HashMap::new();
        for conv in &new.conv {
            *count_of.entry(conv).or_default() += 1;
        }
        for r in &rows {
            let (is_last, conv, number): (bool, String, i64) = (r.get(0), r.get(1), r.get(2));
            if is_last {
                let n = count_of.get(conv.as_str()).copied().unwrap_or(0);
                next.insert(conv, number - n + 1);
            } else {
                ids.entry(conv).or_default().insert(number, r.get(3));
            }
        }
    }
    let mut seqs = vec![0i64; run.len()];
    for (i, m) in run.iter().enumerate() {
        if !matches!(what[i], Is::New) {
            continue;
        }
        let Some(seq) = next.get_mut(&m.conv) else {
            return Err(StoreError::Commit(format!(
                "no sequence taken for {}",
                m.conv
            )));
        };
        seqs[i] = *seq;
        *seq += 1;
    }

    let mut appended: Vec<Appended> = Vec::with_capacity(run.len());
    for (i, (m, is)) in run.iter().zip(what).enumerate() {
        let a = match is {
            Is::Stored(envelope) => Appended {
                envelope: *envelope,
                duplicate: true,
            },
            Is::Earlier(first) => Appended {
                envelope: appended[first].envelope.clone(),
                duplicate: true,
            },
            Is::New => {
                let Some(&id) = ids.get(m.conv.as_str()).and_then(|c| c.get(&seqs[i])) else {
                    return Err(StoreError::Commit(format!(
                        "entry {} of {} not returned by its insert",
                        seqs[i], m.conv
                    )));
                };
                Appended {
                    envelope: m.envelope(id, seqs[i] as u64, ts),
                    duplicate: false,
                }
            }
        };
        appended.push(a);
    }
    Ok(appended.into_iter().map(Ok).collect())
}

/// The entries the messages of `run` with a client message id repeat, by (sender,
/// conversation, cid).
fn stored_resends<'r, C: GenericClient>(
    db: &mut Db<'_, C>,
    run: &[&'r NewMessage],
) -> Result<HashMap<(&'r str, &'r str, &'r str), Envelope>, StoreError> {
    let keyed: Vec<(&str, &str, &str)> = run
        .iter()
        .filter_map(|m| {
            Some((
                m.sender.as_str(),
                m.conv.as_str(),
                m.content.cid.as_deref()?,
            ))
        })
        .collect();
    let mut found = HashMap::new();
    if keyed.is_empty() {
        return Ok(found);
    }
    let senders: Vec<&str> = keyed.iter().map(|k| k.0).collect();
    let convs: Vec<&str> = keyed.iter().map(|k| k.1).collect();
    let cids: Vec<&str> = keyed.iter().map(|k| k.2).collect();
    let sql = format!(
        "{SELECT} WHERE (sender, conv, cid) IN (
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]))"
    );
    let rows = db.query(&sql, &[&senders, &convs, &cids])?;
    for r in &rows {
        let e = row_to_envelope(r);
        if let Some(&key) = keyed
            .iter()
            .find(|k| k.0 == e.from && k.1 == e.conv && Some(k.2) == e.cid.as_deref())
        {
            found.insert(key, e);
        }
    }
    Ok(found)
}

/// The new entries of a run, column by column (what `UNNEST` takes).
#[derive(Default)]
struct Columns<'a> {
    conv: Vec<&'a str>,
    sender: Vec<&'a str>,
    device: Vec<&'a str>,
    ts: Vec<i64>,
    cid: Vec<Option<&'a str>>,
    pkid: Vec<Option<i32>>,
    kind: Vec<&'static str>,
    body: Vec<Option<&'a str>>,
    reply_to: Vec<Option<i64>>,
    thread: Vec<Option<i64>>,
    emoji: Vec<Option<&'a str>>,
    cjk: Vec<bool>,
    direct: Vec<bool>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, m: &'a NewMessage, ts: i64) -> Result<(), StoreError> {
        let c = &m.content;
        self.conv.push(&m.conv);
        self.sender.push(&m.sender);
        self.device.push(&m.device);
        self.ts.push(ts);
        self.cid.push(c.cid.as_deref());
        self.pkid.push(m.pkid.map(i32::from));
        self.kind.push(c.kind.as_str());
        self.body.push(c.text.as_deref());
        self.reply_to.push(c.reply_to.map(big).transpose()?);
        self.thread.push(c.thread.map(big).transpose()?);
        self.emoji.push(c.emoji.as_deref());
        self.cjk.push(has_cjk(c.text.as_deref()));
        self.direct.push(crate::topics::is_direct(&m.conv));
        Ok(())
    }
}
