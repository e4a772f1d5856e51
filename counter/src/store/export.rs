//! The commit log as a peer copies it during catch-up.

use super::keys::{decode_u64, u64_key};
use super::FjallStore;
use crate::error::Error;
use fjall::Readable;
use tally_common::api::ExportEntry;
use tally_common::CommitIndex;

impl FjallStore {
    /// [`Store::export`](super::Store::export), from one snapshot: the
    /// entries of `commits` above `since`, in index order (the keys are
    /// big-endian), until `sink` returns false.
    pub(super) fn export_since(
        &self,
        since: CommitIndex,
        sink: &mut dyn FnMut(ExportEntry) -> bool,
    ) -> Result<(), Error> {
        let snapshot = self.db.snapshot();
        let range = u64_key(since.0.saturating_add(1))..;
        for guard in snapshot.range(&self.commits, range) {
            let (index, items) = guard.into_inner()?;
            let entry = ExportEntry {
                index: CommitIndex(decode_u64(&index, "commit index")?),
                items: postcard::from_bytes(&items)?,
            };
            if !sink(entry) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{item, open, NOW};
    use super::*;
    use crate::store::{Store, WriteOp};
    use tally_common::participant::Participant;
    use tally_common::TxnId;

    #[test]
    fn out_of_order_commits_and_import_fill_the_gap() {
        let (_dir, source) = open();
        let mut applied = Participant::default();
        for (txn, index, id) in [(1, 1, "a"), (2, 2, "b"), (3, 3, "a")] {
            source
                .write(
                    &mut [
                        WriteOp::Prepare {
                            txn: TxnId(txn),
                            items: vec![item(id, "t")],
                        },
                        WriteOp::Commit {
                            txn: TxnId(txn),
                            index: CommitIndex(index),
                        },
                    ],
                    &mut applied,
                    NOW,
                )
                .unwrap();
        }

        // A replica that only saw commit 3 imports 1..=2 from the source.
        let (dir, replica) = open();
        let mut replica_applied = Participant::default();
        replica
            .write(
                &mut [
                    WriteOp::Prepare {
                        txn: TxnId(3),
                        items: vec![item("a", "t")],
                    },
                    WriteOp::Commit {
                        txn: TxnId(3),
                        index: CommitIndex(3),
                    },
                ],
                &mut replica_applied,
                NOW,
            )
            .unwrap();
        assert_eq!(replica_applied.applied().contiguous(), CommitIndex(0));
        let mut entries = Vec::new();
        source
            .export(CommitIndex(0), &mut |e| {
                entries.push(e);
                true
            })
            .unwrap();
        // Index 3 added nothing new at the source, so it has no entry: the
        // range is only known complete from `through`.
        assert_eq!(entries.len(), 2);
        let partial = WriteOp::Import {
            entries: entries.clone(),
            through: None,
        };
        let effect = replica
            .write(&mut [partial], &mut replica_applied, NOW)
            .unwrap();
        assert_eq!(effect.counts["t"], 2, "a once, b once");
        assert_eq!(
            replica_applied.applied().contiguous(),
            CommitIndex(0),
            "not proven yet"
        );
        let complete = WriteOp::Import {
            entries,
            through: Some((CommitIndex(0), CommitIndex(2))),
        };
        let effect = replica
            .write(&mut [complete], &mut replica_applied, NOW)
            .unwrap();
        assert!(
            effect.counts.is_empty(),
            "copying again counts nothing twice"
        );
        assert_eq!(replica_applied.applied().contiguous(), CommitIndex(3));
        drop(replica);
        let replica = FjallStore::open(dir.path()).unwrap();
        let recovered = replica.recover().unwrap();
        assert_eq!(recovered.applied.contiguous(), CommitIndex(3));
        assert_eq!(recovered.counts["t"], 2);
    }

    /// What a catch-up pass does: everything `from` exports above `since`,
    /// imported into `to` as proof of `(since, until]`.
    fn copy_pass(
        from: &FjallStore,
        to: &FjallStore,
        to_state: &mut Participant,
        since: u64,
        until: u64,
    ) {
        let mut entries = Vec::new();
        from.export(CommitIndex(since), &mut |e| {
            entries.push(e);
            true
        })
        .unwrap();
        let through = Some((CommitIndex(since), CommitIndex(until)));
        to.write(&mut [WriteOp::Import { entries, through }], to_state, NOW)
            .unwrap();
    }

    /// Two replicas that applied the same two commits in different orders
    /// log their shared item at different indexes: b at 2 (it applied 2
    /// first), c at 1. A joiner that copies `(0, 1]` from b and `(1, 2]`
    /// from c must still end up with the item. When each pass sent only
    /// the entries inside its range, it did not: b's entry 2 fell outside
    /// the first pass and c's entry 1 outside the second.
    #[test]
    fn passes_from_peers_that_applied_in_different_orders_miss_nothing() {
        let shared = item("x", "t");
        let first = vec![shared.clone(), item("only-1", "t")];
        let second = vec![shared.clone(), item("only-2", "t")];
        let build = |order: [(u64, u64); 2]| {
            let (dir, store) = open();
            let mut state = Participant::default();
            let mut ops = vec![
                WriteOp::Prepare {
                    txn: TxnId(1),
                    items: first.clone(),
                },
                WriteOp::Prepare {
                    txn: TxnId(2),
                    items: second.clone(),
                },
            ];
            for (txn, index) in order {
                ops.push(WriteOp::Commit {
                    txn: TxnId(txn),
                    index: CommitIndex(index),
                });
            }
            store.write(&mut ops, &mut state, NOW).unwrap();
            (dir, store)
        };
        let (_b_dir, b) = build([(2, 2), (1, 1)]);
        let (_c_dir, c) = build([(1, 1), (2, 2)]);
        let (_j_dir, joiner) = open();
        let mut joiner_state = Participant::default();
        copy_pass(&b, &joiner, &mut joiner_state, 0, 1);
        copy_pass(&c, &joiner, &mut joiner_state, 1, 2);
        assert_eq!(joiner_state.applied().contiguous(), CommitIndex(2));
        let recovered = joiner.recover().unwrap();
        assert_eq!(
            recovered.counts["t"], 3,
            "x, only-1 and only-2, whatever order the peers applied in"
        );
    }
}
