//! Which committed transactions a replica holds. Commits reach a counter out
//! of order (several transactions are in flight, and catch-up fills the past
//! while new commits arrive), but what the rest of the protocol needs is one
//! number: the index below which nothing is missing.

use crate::CommitIndex;
use std::collections::BTreeSet;

/// The gap-free prefix of applied commit indexes plus the applied indexes
/// above it, so the prefix can advance when a gap is filled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedSet {
    contiguous: CommitIndex,
    above: BTreeSet<u64>,
}

impl AppliedSet {
    /// Rebuilds the set from what storage holds: the persisted prefix and the
    /// indexes applied beyond it.
    pub fn new(contiguous: CommitIndex, above: impl IntoIterator<Item = CommitIndex>) -> Self {
        let mut set = AppliedSet {
            contiguous,
            above: BTreeSet::new(),
        };
        for index in above {
            set.insert(index);
        }
        set
    }

    /// Every transaction committed at or below this index is held.
    pub fn contiguous(&self) -> CommitIndex {
        self.contiguous
    }

    pub fn contains(&self, index: CommitIndex) -> bool {
        index <= self.contiguous || self.above.contains(&index.0)
    }

    /// Records `index` as applied; returns false if it already was.
    pub fn insert(&mut self, index: CommitIndex) -> bool {
        if self.contains(index) {
            return false;
        }
        self.above.insert(index.0);
        while self.above.remove(&(self.contiguous.0 + 1)) {
            self.contiguous = self.contiguous.next();
        }
        true
    }

    /// Records every index in `(since, through]` as applied: a whole range
    /// copied from a peer. `since` is normally within the prefix.
    pub fn insert_through(&mut self, since: CommitIndex, through: CommitIndex) {
        if since <= self.contiguous {
            self.contiguous = self.contiguous.max(through);
            let contiguous = self.contiguous.0;
            self.above.retain(|&i| i > contiguous);
            while self.above.remove(&(self.contiguous.0 + 1)) {
                self.contiguous = self.contiguous.next();
            }
        } else {
            for i in since.0 + 1..=through.0 {
                self.insert(CommitIndex(i));
            }
        }
    }

    /// Applied indexes beyond the gap-free prefix.
    pub fn above(&self) -> impl Iterator<Item = CommitIndex> + '_ {
        self.above.iter().map(|&i| CommitIndex(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_advances_only_when_gaps_fill() {
        let mut set = AppliedSet::default();
        assert!(set.insert(CommitIndex(2)));
        assert!(set.insert(CommitIndex(3)));
        assert_eq!(set.contiguous(), CommitIndex(0));
        assert!(set.insert(CommitIndex(1)));
        assert_eq!(set.contiguous(), CommitIndex(3));
        assert!(!set.insert(CommitIndex(2)), "re-applying is a no-op");
        assert_eq!(set.above().count(), 0);
    }

    #[test]
    fn a_copied_range_joins_the_prefix() {
        let mut set = AppliedSet::new(CommitIndex(2), [CommitIndex(9), CommitIndex(7)]);
        set.insert_through(CommitIndex(2), CommitIndex(8));
        assert_eq!(set.contiguous(), CommitIndex(9));
        assert_eq!(set.above().count(), 0);
        set.insert_through(CommitIndex(11), CommitIndex(12));
        assert_eq!(set.contiguous(), CommitIndex(9));
        assert!(set.contains(CommitIndex(12)));
    }

    #[test]
    fn rebuilds_from_storage() {
        let set = AppliedSet::new(CommitIndex(5), [CommitIndex(7), CommitIndex(6)]);
        assert_eq!(set.contiguous(), CommitIndex(7));
        assert!(set.contains(CommitIndex(4)));
        assert!(!set.contains(CommitIndex(8)));
    }
}
