//! What the store's tests share: a store on a temporary directory and
//! short ways to write to it.

use super::{BatchEffect, FjallStore, Store, WriteOp};
use tally_common::participant::Participant;
use tally_common::{CommitIndex, Item, Millis, TxnId};

pub const NOW: Millis = Millis(0);

pub fn item(id: &str, tenant: &str) -> Item {
    Item::new(id, tenant)
}

pub fn open() -> (tempfile::TempDir, FjallStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FjallStore::open(dir.path()).unwrap();
    (dir, store)
}

/// Prepares and commits `items` as transaction `n` at index `n`.
pub fn commit(
    store: &FjallStore,
    participant: &mut Participant,
    n: u64,
    items: Vec<Item>,
) -> BatchEffect {
    let mut ops = [
        WriteOp::Prepare {
            txn: TxnId(n),
            items,
        },
        WriteOp::Commit {
            txn: TxnId(n),
            index: CommitIndex(n),
        },
    ];
    store.write(&mut ops, participant, NOW).unwrap()
}
