//! Per-conversation order in a cluster: a node delivers each conversation's entries in `seq`
//! order, once, whichever node stored them.
//!
//! Entries reach a node from its own connections (right after their commit) and from the other
//! nodes over NATS, so two nodes writing into one conversation can make `seq` 6 arrive before 5.
//! An entry that comes early is held; the hole is reported once, so the store can be read for
//! what is missing (NATS may have lost it, or it is merely late). Whatever fills the hole first
//! wins; the other copy is a duplicate and dropped. A hole the store cannot fill either (the
//! entries were deleted by retention) is stepped over once the store has answered.
//!
//! A conversation first seen at `seq` n > 1 (after a start, or a long quiet) does not start
//! there at once: entries committed just before it may still be on their way from other nodes.
//! It waits for the store's recent entries before n ([`Gap::first`]) and starts at the lowest
//! of those and of what arrived meanwhile; older entries were stored before this node had a
//! reason to follow the conversation, and clients fetch those with `sync`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How long a conversation with nothing held is remembered after its last entry.
const IDLE: Duration = Duration::from_secs(600);
/// How long a hole waits for the store's answer before it is asked again (an answer lost with a
/// full channel, or a store that failed).
const ASK_AGAIN: Duration = Duration::from_secs(2);

/// A hole in a conversation: entries after `after` and before `before` are missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub conv: String,
    pub after: u64,
    pub before: u64,
    /// The conversation is new here: the store's *recent* entries before `before` are wanted
    /// (`after` is 0), those committed a moment ago that may still be on their way.
    pub first: bool,
}

#[derive(Debug)]
struct Conv<T> {
    /// The next `seq` to deliver.
    next: u64,
    held: BTreeMap<u64, T>,
    /// When the current hole was reported, and the `before` of that report (an answer for an
    /// older hole leaves it alone).
    asked: Option<(Instant, u64)>,
    /// First seen at a `seq` above 1, and waiting for the store's recent entries before it:
    /// everything that arrives is held, whatever its `seq`.
    starting: bool,
    last: Instant,
}

/// Every followed conversation's position; `T` is what is delivered (a message and its copies).
#[derive(Debug)]
pub struct Orders<T> {
    convs: HashMap<String, Conv<T>>,
}

impl<T> Default for Orders<T> {
    fn default() -> Self {
        Orders {
            convs: HashMap::new(),
        }
    }
}

impl<T> Orders<T> {
    /// Takes entry `seq` of `conv`: appends to `ready` what may be delivered now, in order, and
    /// returns a hole to report, if this entry opened one.
    pub fn admit(
        &mut self,
        conv: &str,
        seq: u64,
        item: T,
        now: Instant,
        ready: &mut Vec<T>,
    ) -> Option<Gap> {
        let c = match self.convs.get_mut(conv) {
            Some(c) => c,
            None => {
                let starting = seq > 1;
                let c = self.convs.entry(conv.to_string()).or_insert(Conv {
                    next: seq,
                    held: BTreeMap::new(),
                    asked: starting.then_some((now, seq)),
                    starting,
                    last: now,
                });
                if starting {
                    c.held.insert(seq, item);
                    return Some(Gap {
                        conv: conv.to_string(),
                        after: 0,
                        before: seq,
                        first: true,
                    });
                }
                c
            }
        };
        c.last = now;
        if c.starting {
            c.held.entry(seq).or_insert(item);
            return None;
        }
        if seq < c.next || c.held.contains_key(&seq) {
            return None;
        }
        if seq > c.next {
            c.held.insert(seq, item);
            if c.asked.is_some() {
                return None;
            }
            c.asked = Some((now, seq));
            return Some(Gap {
                conv: conv.to_string(),
                after: c.next - 1,
                before: seq,
                first: false,
            });
        }
        ready.push(item);
        c.next += 1;
        Self::release(c, ready);
        None
    }

    /// The store answered for the hole before `before` in `conv` (the entries it had went
    /// through [`Orders::admit`] first): what is still missing before `before` is gone from
    /// the store, and what was held behind it is delivered. Returns a hole still open after
    /// that (one that opened while this one was asked about), to report.
    pub fn answered(
        &mut self,
        conv: &str,
        before: u64,
        now: Instant,
        ready: &mut Vec<T>,
    ) -> Option<Gap> {
        let c = self.convs.get_mut(conv)?;
        if c.starting {
            if c.asked.is_none_or(|(_, asked)| asked != before) {
                return None;
            }
            // Starts at the lowest entry known: recent ones from the store, and what came.
            c.starting = false;
            c.next = *c.held.keys().next()?;
        } else if c.next < before {
            tracing::warn!(
                conv,
                missing_from = c.next,
                up_to = before - 1,
                "entries not found in the store, skipped"
            );
            c.next = before;
            c.held.retain(|seq, _| *seq >= before);
        }
        Self::release(c, ready);
        if c.asked.is_none_or(|(_, asked)| asked != before) {
            // A hole reported since is still waiting for its own answer.
            return None;
        }
        c.asked = None;
        let first = *c.held.keys().next()?;
        c.asked = Some((now, first));
        Some(Gap {
            conv: conv.to_string(),
            after: c.next - 1,
            before: first,
            first: false,
        })
    }

    /// Whether the hole reported with `gap` is still open (a moment after it was reported:
    /// most holes are entries merely late, filled by then). A start always reads the store.
    pub fn still_missing(&self, gap: &Gap) -> bool {
        self.convs
            .get(&gap.conv)
            .is_some_and(|c| c.starting || c.next < gap.before)
    }

    /// Delivers the held entries that now follow on, and ends the hole if none is left.
    fn release(c: &mut Conv<T>, ready: &mut Vec<T>) {
        while let Some(entry) = c.held.first_entry() {
            if *entry.key() != c.next {
                return;
            }
            ready.push(entry.remove());
            c.next += 1;
        }
        c.asked = None;
    }

    /// Holes asked about long ago, to ask again; forgets idle conversations.
    pub fn tick(&mut self, now: Instant) -> Vec<Gap> {
        self.convs
            .retain(|_, c| !c.held.is_empty() || now.duration_since(c.last) < IDLE);
        let mut again = Vec::new();
        for (conv, c) in &mut self.convs {
            if let (Some((asked, before)), Some(first)) = (c.asked, c.held.keys().next()) {
                if now.duration_since(asked) >= ASK_AGAIN {
                    // A start asks for the same again; a hole, for what is missing now.
                    let (after, before) = match c.starting {
                        true => (0, before),
                        false => (c.next - 1, *first),
                    };
                    c.asked = Some((now, before));
                    again.push(Gap {
                        conv: conv.clone(),
                        after,
                        before,
                        first: c.starting,
                    });
                }
            }
        }
        again
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(o: &mut Orders<u64>, seq: u64, now: Instant) -> (Vec<u64>, Option<Gap>) {
        let mut ready = Vec::new();
        let gap = o.admit("g.x", seq, seq, now, &mut ready);
        (ready, gap)
    }

    #[test]
    fn in_order_once_with_holes_reported_once() {
        let now = Instant::now();
        let mut o = Orders::default();
        assert_eq!(admit(&mut o, 1, now), (vec![1], None), "a new conversation");
        assert_eq!(admit(&mut o, 1, now), (vec![], None), "a duplicate");
        let gap = Gap {
            conv: "g.x".into(),
            after: 1,
            before: 4,
            first: false,
        };
        assert_eq!(admit(&mut o, 4, now), (vec![], Some(gap)));
        assert_eq!(admit(&mut o, 5, now), (vec![], None), "one report per hole");
        assert_eq!(admit(&mut o, 3, now), (vec![], None));
        assert_eq!(admit(&mut o, 2, now), (vec![2, 3, 4, 5], None));
        assert_eq!(admit(&mut o, 6, now), (vec![6], None));
    }

    #[test]
    fn a_conversation_first_seen_midway_starts_at_the_lowest_recent_entry() {
        let now = Instant::now();
        let mut o = Orders::default();
        let gap = admit(&mut o, 7, now).1.expect("the store is asked first");
        assert_eq!((gap.after, gap.before, gap.first), (0, 7, true));
        // 6 was still on its way; the store's recent entries before 7 are 5 and 6.
        assert_eq!(admit(&mut o, 6, now), (vec![], None));
        assert_eq!(admit(&mut o, 8, now), (vec![], None));
        assert_eq!(admit(&mut o, 5, now), (vec![], None));
        assert_eq!(admit(&mut o, 6, now), (vec![], None), "a duplicate");
        let mut ready = Vec::new();
        assert_eq!(o.answered("g.x", 7, now, &mut ready), None);
        assert_eq!(ready, [5, 6, 7, 8]);
        assert_eq!(admit(&mut o, 4, now), (vec![], None), "before the start");
        assert_eq!(admit(&mut o, 9, now), (vec![9], None));
    }

    #[test]
    fn an_answer_steps_over_what_the_store_lacks() {
        let now = Instant::now();
        let mut o = Orders::default();
        admit(&mut o, 1, now);
        assert!(admit(&mut o, 4, now).1.is_some());
        // The store had 2 but not 3 (retention deleted it).
        assert_eq!(admit(&mut o, 2, now), (vec![2], None));
        let mut ready = Vec::new();
        assert_eq!(o.answered("g.x", 4, now, &mut ready), None);
        assert_eq!(ready, [4]);
        assert_eq!(admit(&mut o, 5, now), (vec![5], None));
    }

    #[test]
    fn a_late_answer_leaves_a_newer_hole_open_and_reports_it() {
        let now = Instant::now();
        let mut o = Orders::default();
        admit(&mut o, 1, now);
        assert!(admit(&mut o, 3, now).1.is_some(), "the hole at 2");
        // 2 comes live, then a new hole opens at 4 while the first answer is on its way.
        assert_eq!(admit(&mut o, 2, now), (vec![2, 3], None));
        let gap = admit(&mut o, 5, now).1.expect("the hole at 4");
        assert_eq!((gap.after, gap.before), (3, 5));
        let mut ready = Vec::new();
        assert_eq!(o.answered("g.x", 3, now, &mut ready), None, "asked already");
        assert!(ready.is_empty(), "4 is not stepped over: {ready:?}");
        assert_eq!(admit(&mut o, 4, now), (vec![4, 5], None));
        // An answer that finds a newer hole behind it reports that one.
        assert!(admit(&mut o, 8, now).1.is_some());
        assert_eq!(admit(&mut o, 6, now), (vec![6], None));
        assert_eq!(admit(&mut o, 10, now), (vec![], None));
        let mut ready = Vec::new();
        let next = o
            .answered("g.x", 8, now, &mut ready)
            .expect("the hole at 9");
        assert_eq!(ready, [8], "7 is gone from the store");
        assert_eq!((next.after, next.before), (8, 10));
    }

    #[test]
    fn a_hole_filled_meanwhile_needs_no_read() {
        let now = Instant::now();
        let mut o = Orders::default();
        admit(&mut o, 1, now);
        let gap = admit(&mut o, 3, now).1.unwrap();
        assert!(o.still_missing(&gap));
        admit(&mut o, 2, now);
        assert!(!o.still_missing(&gap));
        let first = admit(&mut Orders::default(), 9, now).1.unwrap();
        assert!(first.first);
    }

    #[test]
    fn unanswered_holes_are_asked_again_and_idle_ones_forgotten() {
        let now = Instant::now();
        let mut o = Orders::default();
        admit(&mut o, 1, now);
        admit(&mut o, 3, now);
        assert!(o.tick(now + Duration::from_millis(100)).is_empty());
        let again = o.tick(now + ASK_AGAIN);
        assert_eq!(again.len(), 1);
        assert_eq!(
            (again[0].after, again[0].before, again[0].first),
            (1, 3, false)
        );
        let mut ready = Vec::new();
        o.answered("g.x", 3, now, &mut ready);
        assert_eq!(ready, [3]);
        o.tick(now + IDLE + ASK_AGAIN);
        assert!(o.convs.is_empty());
    }
}
