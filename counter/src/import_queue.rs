//! Copied data waiting for the writer, cut into slices that each ride one
//! storage write.
//!
//! Imports and 2PC operations share the replica's single writer and its
//! fsync. A prepare that lands behind a large import waits for all of it,
//! and the coordinator then waits for the joiner's vote (its grace) on every
//! transaction. So the writer takes copied data a slice at a time, and only
//! as often as [`ImportQueue::rides`] allows: a prepare waits for at most one
//! slice.

use std::collections::VecDeque;
use tally_common::api::ExportEntry;
use tally_common::CommitIndex;

/// Items of copied data per storage write: a few milliseconds of the
/// writer's time, so a prepare queued behind a slice still votes within the
/// coordinator's joiner grace.
pub const IMPORT_SLICE_ITEMS: usize = 500;

/// One `Replica::import` call, sliced as the writer goes.
#[derive(Debug)]
pub struct Import<R> {
    entries: VecDeque<ExportEntry>,
    /// Set once the peer's stream ended complete; recorded with the last
    /// slice only, so the range counts as applied when every item is in.
    through: Option<(CommitIndex, CommitIndex)>,
    /// Told when the last slice is durable, or at the first failed one.
    pub reply: R,
}

impl<R> Import<R> {
    pub fn new(
        entries: Vec<ExportEntry>,
        through: Option<(CommitIndex, CommitIndex)>,
        reply: R,
    ) -> Self {
        Import {
            entries: entries.into(),
            through,
            reply,
        }
    }
}

/// One storage write's share of an import.
#[derive(Debug, PartialEq, Eq)]
pub struct Slice {
    pub entries: Vec<ExportEntry>,
    pub through: Option<(CommitIndex, CommitIndex)>,
    /// Whether this slice finishes its import, whose caller is then told.
    pub last: bool,
}

/// The imports waiting for the writer, oldest first.
#[derive(Debug)]
pub struct ImportQueue<R> {
    waiting: VecDeque<Import<R>>,
    /// Whether the previous storage write carried a slice.
    carried_last_write: bool,
}

impl<R> Default for ImportQueue<R> {
    fn default() -> Self {
        ImportQueue {
            waiting: VecDeque::new(),
            carried_last_write: false,
        }
    }
}

impl<R> ImportQueue<R> {
    pub fn push(&mut self, import: Import<R>) {
        self.waiting.push_back(import);
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Whether the next write, carrying `queued_2pc` 2PC operations, also
    /// takes a slice. With no 2PC work waiting, always; otherwise every other
    /// write, so 2PC work goes first yet a busy cluster cannot starve a
    /// catch-up.
    pub fn rides(&self, queued_2pc: usize) -> bool {
        !self.waiting.is_empty() && (queued_2pc == 0 || !self.carried_last_write)
    }

    /// Notes whether the write being made carries a slice.
    pub fn note_write(&mut self, carried: bool) {
        self.carried_last_write = carried;
    }

    /// Takes up to `max_items` items off the oldest import, splitting an
    /// entry that does not fit (its rest keeps the same index, which the
    /// store merges).
    pub fn next_slice(&mut self, max_items: usize) -> Option<Slice> {
        let import = self.waiting.front_mut()?;
        let mut entries = Vec::new();
        let mut items = 0;
        while items < max_items {
            let Some(entry) = import.entries.front_mut() else {
                break;
            };
            let room = max_items - items;
            if entry.items.len() > room {
                let rest = entry.items.split_off(room);
                let head = std::mem::replace(&mut entry.items, rest);
                items += head.len();
                entries.push(ExportEntry {
                    index: entry.index,
                    items: head,
                });
            } else if let Some(entry) = import.entries.pop_front() {
                items += entry.items.len();
                entries.push(entry);
            }
        }
        let last = import.entries.is_empty();
        Some(Slice {
            entries,
            through: if last { import.through } else { None },
            last,
        })
    }

    /// Removes the oldest import, once its last slice is written or one of
    /// its slices failed.
    pub fn finish(&mut self) -> Option<Import<R>> {
        self.waiting.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::Item;

    fn entry(index: u64, items: usize) -> ExportEntry {
        ExportEntry {
            index: CommitIndex(index),
            items: (0..items).map(|i| Item::new(format!("{i}"), "t")).collect(),
        }
    }

    fn sizes(slice: &Slice) -> Vec<(u64, usize)> {
        slice
            .entries
            .iter()
            .map(|e| (e.index.0, e.items.len()))
            .collect()
    }

    #[test]
    fn slices_split_large_entries_and_carry_the_range_last() {
        let range = Some((CommitIndex(0), CommitIndex(9)));
        let mut queue = ImportQueue::default();
        queue.push(Import::new(
            vec![entry(1, 3), entry(2, 6), entry(3, 1)],
            range,
            (),
        ));
        let expected = [
            (vec![(1, 3), (2, 1)], false),
            (vec![(2, 4)], false),
            (vec![(2, 1), (3, 1)], true),
        ];
        for (entries, last) in expected {
            let slice = queue.next_slice(4).unwrap();
            assert_eq!(sizes(&slice), entries);
            assert_eq!(slice.last, last);
            assert_eq!(slice.through, if last { range } else { None });
        }
        assert!(queue.finish().is_some());
        assert!(queue.next_slice(4).is_none());
    }

    #[test]
    fn an_empty_import_is_one_slice_that_records_the_range() {
        let range = Some((CommitIndex(4), CommitIndex(7)));
        let mut queue = ImportQueue::default();
        queue.push(Import::new(Vec::new(), range, ()));
        let slice = queue.next_slice(4).unwrap();
        assert!(slice.entries.is_empty() && slice.last);
        assert_eq!(slice.through, range);
    }

    #[test]
    fn slices_ride_every_other_write_while_2pc_work_waits() {
        let mut queue = ImportQueue::default();
        assert!(!queue.rides(0), "nothing to import");
        queue.push(Import::new(vec![entry(1, 10)], None, ()));
        assert!(queue.rides(0), "an idle writer imports every write");
        queue.note_write(true);
        assert!(queue.rides(0));
        assert!(!queue.rides(3), "2PC work goes first after a slice");
        queue.note_write(false);
        assert!(queue.rides(3), "but the next write takes a slice again");
    }
}
