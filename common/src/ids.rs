//! Newtypes for the numbers and names that must never be mixed up.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifies one two-phase-commit transaction. The coordinator builds it
/// from its start-up epoch and a sequence number, so ids never repeat across
/// coordinator restarts even though the sequence starts again at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TxnId(pub u64);

impl TxnId {
    const SEQ_BITS: u32 = 40;

    /// The id of the `seq`-th transaction started in coordinator epoch `epoch`.
    pub fn new(epoch: u64, seq: u64) -> Self {
        TxnId((epoch << Self::SEQ_BITS) | (seq & ((1 << Self::SEQ_BITS) - 1)))
    }

    /// The coordinator epoch that created this transaction.
    pub fn epoch(self) -> u64 {
        self.0 >> Self::SEQ_BITS
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            self.epoch(),
            self.0 & ((1 << Self::SEQ_BITS) - 1)
        )
    }
}

/// Position of a committed transaction in the single, gap-free order the
/// coordinator assigns when it logs the decision. A replica whose applied
/// index is N holds every item of every transaction committed at 1..=N.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct CommitIndex(pub u64);

impl CommitIndex {
    pub const ZERO: CommitIndex = CommitIndex(0);

    pub fn next(self) -> Self {
        CommitIndex(self.0 + 1)
    }
}

impl fmt::Display for CommitIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The stable name of a counter replica. A counter restarted with the same id
/// and data directory is the same member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct CounterId(pub String);

impl fmt::Display for CounterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<&str> for CounterId {
    fn from(s: &str) -> Self {
        CounterId(s.to_string())
    }
}

/// Which life of a counter's data directory this is: a random number made
/// when the directory is created and kept in it. A counter that comes back
/// with another incarnation lost its disk (or is another disk under the same
/// name), so nothing it held before may be assumed: the coordinator treats
/// it as a new member that must copy everything.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Incarnation(pub u64);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_ids_of_different_epochs_never_collide() {
        assert_ne!(TxnId::new(1, 5), TxnId::new(2, 5));
        assert_eq!(TxnId::new(7, 3).epoch(), 7);
        assert_eq!(TxnId::new(7, 3).to_string(), "7.3");
    }
}
