//! Each conversation's entries, once and in `seq` order, from two sources that overlap: live
//! copies and `sync` pages. An entry at or below what was already handed on is a duplicate; one
//! past a hole is dropped and the hole synced — the sync brings it again, in order. Never a
//! silent gap.
//!
//! Entries past a hole are not held: their acknowledgements would be held too, and once the
//! server's in-flight window towards this client is full of them, the reply to the sync that
//! would fill the hole cannot come.

use std::collections::HashMap;

use crate::model::Entry;

/// What to do with an offered entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Next in order: hand it on.
    Ready,
    /// Already handed on (or about to be): drop it.
    Duplicate,
    /// Past a hole: drop it, and sync the conversation (from `last`) if `true` (`false`: a
    /// sync is already running).
    Ahead(bool),
}

#[derive(Default)]
struct Conv {
    /// The last `seq` handed on.
    last: u64,
    /// The highest `seq` seen at all (a live entry dropped past a hole).
    seen: u64,
    syncing: bool,
}

pub struct Orders {
    convs: HashMap<String, Conv>,
}

impl Orders {
    /// Starts from the cursors of the local store.
    pub fn new(cursors: impl IntoIterator<Item = (String, u64)>) -> Orders {
        Orders {
            convs: cursors
                .into_iter()
                .map(|(conv, last)| {
                    (
                        conv,
                        Conv {
                            last,
                            seen: last,
                            syncing: false,
                        },
                    )
                })
                .collect(),
        }
    }

    /// The last `seq` handed on for `conv` (0: nothing yet).
    pub fn last(&self, conv: &str) -> u64 {
        self.convs.get(conv).map_or(0, |c| c.last)
    }

    /// Marks `conv` as being synced (live entries past a hole then start no other sync).
    pub fn syncing(&mut self, conv: &str) {
        self.convs.entry(conv.to_string()).or_default().syncing = true;
    }

    /// Whether a sync of `conv` is running.
    pub fn is_syncing(&self, conv: &str) -> bool {
        self.convs.get(conv).is_some_and(|c| c.syncing)
    }

    /// Whether any sync is running (catching up is over when none is).
    pub fn any_syncing(&self) -> bool {
        self.convs.values().any(|c| c.syncing)
    }

    /// A sync of `conv` reached the end of what the store had when it read. Whether to sync
    /// again: an entry dropped past the hole meanwhile was committed after that read.
    pub fn synced(&mut self, conv: &str) -> bool {
        let Some(c) = self.convs.get_mut(conv) else {
            return false;
        };
        c.syncing = c.seen > c.last;
        c.syncing
    }

    /// A sync of `conv` failed for good (the user left it): stop waiting for it.
    pub fn abandon(&mut self, conv: &str) {
        if let Some(c) = self.convs.get_mut(conv) {
            c.syncing = false;
            c.seen = c.last;
        }
    }

    /// An entry, live or from a sync page.
    pub fn offer(&mut self, entry: &Entry) -> Offer {
        let conv = self.convs.entry(entry.conv.clone()).or_default();
        conv.seen = conv.seen.max(entry.seq);
        if entry.seq <= conv.last {
            Offer::Duplicate
        } else if entry.seq == conv.last + 1 {
            conv.last = entry.seq;
            Offer::Ready
        } else {
            let start = !conv.syncing;
            conv.syncing = true;
            Offer::Ahead(start)
        }
    }

    /// The store's history of `conv` starts at `first` (retention removed what came before):
    /// the conversation continues from there. Whether that skipped anything.
    pub fn starts_at(&mut self, conv: &str, first: u64) -> bool {
        let c = self.convs.entry(conv.to_string()).or_default();
        let skipped = first > c.last + 1;
        if skipped {
            c.last = first - 1;
        }
        skipped
    }

    /// A new link: its syncs start afresh.
    pub fn reset_syncs(&mut self) {
        for c in self.convs.values_mut() {
            c.syncing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    fn entry(conv: &str, seq: u64) -> Entry {
        Entry {
            id: seq as i64,
            conv: conv.into(),
            seq,
            from: "a".into(),
            dev: "a.x".into(),
            ts: 0,
            kind: Kind::Msg,
            cid: None,
            text: None,
            reply_to: None,
            thread: None,
            target: None,
            emoji: None,
            media: vec![],
            edited: false,
            deleted: false,
            reactions: Default::default(),
        }
    }

    #[test]
    fn in_order_passes_duplicates_drop_a_hole_starts_one_sync() {
        let mut o = Orders::new([("c".to_string(), 2)]);
        assert_eq!(o.offer(&entry("c", 2)), Offer::Duplicate);
        assert_eq!(o.offer(&entry("c", 3)), Offer::Ready);
        assert_eq!(o.offer(&entry("c", 5)), Offer::Ahead(true));
        assert_eq!(o.offer(&entry("c", 6)), Offer::Ahead(false));
        assert_eq!(o.last("c"), 3);
        // A sync that read before 4 was stored ends short: the dropped 5 and 6 need another.
        assert!(o.synced("c"));
        // The sync page: 4, 5, 6 in order; then the live 6 again is a duplicate.
        for seq in 4..=6 {
            assert_eq!(o.offer(&entry("c", seq)), Offer::Ready);
        }
        assert_eq!(o.offer(&entry("c", 6)), Offer::Duplicate);
        assert!(!o.synced("c"));
        assert_eq!(o.offer(&entry("c", 8)), Offer::Ahead(true));
    }

    #[test]
    fn a_new_conversation_starts_at_one_and_retention_moves_the_start() {
        let mut o = Orders::new([]);
        assert_eq!(o.offer(&entry("n", 3)), Offer::Ahead(true));
        assert!(o.starts_at("n", 3));
        assert!(!o.starts_at("n", 3));
        assert_eq!(o.offer(&entry("n", 3)), Offer::Ready);
        o.abandon("n");
        assert!(!o.synced("n"));
    }
}
