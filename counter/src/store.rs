//! Durable state of one replica in redb: the items, a count per tenant, the
//! prepared transactions, and a log of what each commit added.
//!
//! Every call of [`Store::write`] is one redb write transaction with one
//! fsync, however many prepares, commits and imports it carries: that is
//! where group commit pays off on the counter side.
//!
//! Tables:
//! * `items`: (tenant, id) -> (). Inserting tells whether the item is new.
//! * `counts`: tenant -> number of distinct ids, so a read is one lookup.
//! * `prepared`: txn id -> the transaction's items, until commit or abort.
//! * `commits`: commit index -> the items first seen here in that commit
//!   (commits that added nothing new have no entry). Catch-up streams this
//!   table to a peer.
//! * `applied_above`: commit indexes applied beyond the gap-free prefix
//!   (commits arrive out of order); emptied as the prefix advances.
//! * `meta`: the gap-free applied index.

use crate::error::Error;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tally_common::api::ExportEntry;
use tally_common::applied::AppliedSet;
use tally_common::{CommitIndex, Item, TxnId};

const ITEMS: TableDefinition<(&str, &str), ()> = TableDefinition::new("items");
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
const PREPARED: TableDefinition<u64, &[u8]> = TableDefinition::new("prepared");
const COMMITS: TableDefinition<u64, &[u8]> = TableDefinition::new("commits");
const APPLIED_ABOVE: TableDefinition<u64, ()> = TableDefinition::new("applied_above");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const APPLIED_KEY: &str = "applied";

/// One change to make durable.
#[derive(Debug)]
pub enum WriteOp {
    Prepare {
        txn: TxnId,
        items: Vec<Item>,
    },
    Commit {
        txn: TxnId,
        index: CommitIndex,
    },
    Abort {
        txn: TxnId,
    },
    /// Items copied from a peer. `through` is set once the peer's stream
    /// ended complete: then every index in `(since, through]` is applied.
    Import {
        entries: Vec<ExportEntry>,
        through: Option<(CommitIndex, CommitIndex)>,
    },
}

/// What became of one [`WriteOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    Done,
    UnknownTxn,
}

/// What a batch changed, for the in-memory view to follow once it is durable.
#[derive(Debug, Default)]
pub struct BatchEffect {
    pub results: Vec<WriteResult>,
    /// New count of every tenant the batch touched.
    pub counts: HashMap<String, u64>,
    pub prepared: Vec<TxnId>,
    pub forgotten: Vec<TxnId>,
}

/// Everything the counter rebuilds its memory from at start-up.
#[derive(Debug)]
pub struct Recovered {
    pub counts: HashMap<String, u64>,
    pub applied: AppliedSet,
    pub prepared: Vec<TxnId>,
}

/// The counter's storage operations.
pub trait Store: Send + Sync + 'static {
    /// Applies the operations in order in one durable transaction. `applied`
    /// is the replica's applied set, updated in place as commits land.
    fn write(&self, ops: &[WriteOp], applied: &mut AppliedSet) -> Result<BatchEffect, Error>;

    /// Reads back everything needed to serve after a restart.
    fn recover(&self) -> Result<Recovered, Error>;

    /// Calls `sink` with the log entries in `(since, until]`, in index order,
    /// until it returns false.
    fn export(
        &self,
        since: CommitIndex,
        until: CommitIndex,
        sink: &mut dyn FnMut(ExportEntry) -> bool,
    ) -> Result<(), Error>;
}

/// The tables a commit writes to, and what it added per tenant so far.
struct CommitTables<'txn> {
    items: redb::Table<'txn, (&'static str, &'static str), ()>,
    commits: redb::Table<'txn, u64, &'static [u8]>,
    added: BTreeMap<String, u64>,
}

/// Inserts items that were committed at `index`, and logs the ones this
/// replica had not seen under that index.
fn add_items(
    tables: &mut CommitTables<'_>,
    index: CommitIndex,
    batch: &[Item],
) -> Result<(), Error> {
    let mut fresh = Vec::new();
    for item in batch {
        let key = (item.tenant.as_str(), item.id.as_str());
        if tables.items.insert(key, ())?.is_none() {
            *tables.added.entry(item.tenant.clone()).or_default() += 1;
            fresh.push(item.clone());
        }
    }
    if fresh.is_empty() {
        return Ok(());
    }
    // A copied entry can land on an index this replica already logged.
    let mut logged: Vec<Item> = match tables.commits.get(index.0)? {
        Some(existing) => postcard::from_bytes(existing.value())?,
        None => Vec::new(),
    };
    logged.extend(fresh);
    tables
        .commits
        .insert(index.0, postcard::to_allocvec(&logged)?.as_slice())?;
    Ok(())
}

/// [`Store`] on a redb file.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Storage(e.into()))?;
        let db = Database::create(dir.join("counter.redb"))?;
        let txn = db.begin_write()?;
        // Create every table so readers never meet a missing one.
        txn.open_table(ITEMS)?;
        txn.open_table(COUNTS)?;
        txn.open_table(PREPARED)?;
        txn.open_table(COMMITS)?;
        txn.open_table(APPLIED_ABOVE)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(RedbStore { db })
    }
}

impl Store for RedbStore {
    fn write(&self, ops: &[WriteOp], applied: &mut AppliedSet) -> Result<BatchEffect, Error> {
        let txn = self.db.begin_write()?;
        let mut effect = BatchEffect::default();
        // Work on a copy so a failed commit leaves the caller's view intact.
        let mut next_applied = applied.clone();
        {
            let mut tables = CommitTables {
                items: txn.open_table(ITEMS)?,
                commits: txn.open_table(COMMITS)?,
                added: BTreeMap::new(),
            };
            let mut counts = txn.open_table(COUNTS)?;
            let mut prepared = txn.open_table(PREPARED)?;

            for op in ops {
                let result = match op {
                    WriteOp::Prepare { txn, items } => {
                        prepared.insert(txn.0, postcard::to_allocvec(items)?.as_slice())?;
                        effect.prepared.push(*txn);
                        WriteResult::Done
                    }
                    WriteOp::Commit { txn, index } => {
                        let record = prepared.remove(txn.0)?;
                        match record {
                            _ if next_applied.contains(*index) => {
                                effect.forgotten.push(*txn);
                                WriteResult::Done
                            }
                            Some(record) => {
                                let batch: Vec<Item> = postcard::from_bytes(record.value())?;
                                drop(record);
                                add_items(&mut tables, *index, &batch)?;
                                next_applied.insert(*index);
                                effect.forgotten.push(*txn);
                                WriteResult::Done
                            }
                            None => WriteResult::UnknownTxn,
                        }
                    }
                    WriteOp::Abort { txn } => {
                        prepared.remove(txn.0)?;
                        effect.forgotten.push(*txn);
                        WriteResult::Done
                    }
                    WriteOp::Import { entries, through } => {
                        for entry in entries {
                            add_items(&mut tables, entry.index, &entry.items)?;
                        }
                        if let Some((since, through)) = through {
                            next_applied.insert_through(*since, *through);
                        }
                        WriteResult::Done
                    }
                };
                effect.results.push(result);
            }

            for (tenant, n) in tables.added {
                let count = counts.get(tenant.as_str())?.map_or(0, |v| v.value()) + n;
                counts.insert(tenant.as_str(), count)?;
                effect.counts.insert(tenant, count);
            }
            let contiguous = next_applied.contiguous();
            let mut above = txn.open_table(APPLIED_ABOVE)?;
            above.retain_in(..=contiguous.0, |_, _| false)?;
            for index in next_applied.above() {
                if !applied.contains(index) {
                    above.insert(index.0, ())?;
                }
            }
            txn.open_table(META)?.insert(APPLIED_KEY, contiguous.0)?;
        }
        txn.commit()?;
        *applied = next_applied;
        Ok(effect)
    }

    fn recover(&self) -> Result<Recovered, Error> {
        let txn = self.db.begin_read()?;
        let contiguous = CommitIndex(
            txn.open_table(META)?
                .get(APPLIED_KEY)?
                .map_or(0, |v| v.value()),
        );
        let mut above = Vec::new();
        for entry in txn.open_table(APPLIED_ABOVE)?.iter()? {
            above.push(CommitIndex(entry?.0.value()));
        }
        let mut counts = HashMap::new();
        for entry in txn.open_table(COUNTS)?.iter()? {
            let (tenant, count) = entry?;
            counts.insert(tenant.value().to_string(), count.value());
        }
        let mut prepared = Vec::new();
        for entry in txn.open_table(PREPARED)?.iter()? {
            prepared.push(TxnId(entry?.0.value()));
        }
        Ok(Recovered {
            counts,
            applied: AppliedSet::new(contiguous, above),
            prepared,
        })
    }

    fn export(
        &self,
        since: CommitIndex,
        until: CommitIndex,
        sink: &mut dyn FnMut(ExportEntry) -> bool,
    ) -> Result<(), Error> {
        if until <= since {
            return Ok(());
        }
        let txn = self.db.begin_read()?;
        let commits = txn.open_table(COMMITS)?;
        for entry in commits.range(since.0 + 1..=until.0)? {
            let (index, items) = entry?;
            let entry = ExportEntry {
                index: CommitIndex(index.value()),
                items: postcard::from_bytes(items.value())?,
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
    use super::*;

    fn item(id: &str, tenant: &str) -> Item {
        Item::new(id, tenant)
    }

    fn open() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn commit_counts_distinct_ids_and_survives_reopen() {
        let (dir, store) = open();
        let mut applied = AppliedSet::default();
        let items = vec![
            item("a", "t"),
            item("a", "t"),
            item("b", "t"),
            item("a", "u"),
        ];
        store
            .write(
                &[WriteOp::Prepare {
                    txn: TxnId(1),
                    items,
                }],
                &mut applied,
            )
            .unwrap();
        let effect = store
            .write(
                &[WriteOp::Commit {
                    txn: TxnId(1),
                    index: CommitIndex(1),
                }],
                &mut applied,
            )
            .unwrap();
        assert_eq!(effect.counts["t"], 2);
        assert_eq!(effect.counts["u"], 1);
        assert_eq!(applied.contiguous(), CommitIndex(1));
        drop(store);

        let store = RedbStore::open(dir.path()).unwrap();
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.counts["t"], 2);
        assert_eq!(recovered.applied.contiguous(), CommitIndex(1));
        assert!(recovered.prepared.is_empty());
    }

    #[test]
    fn prepared_survives_reopen_and_commit_is_idempotent() {
        let (dir, store) = open();
        let mut applied = AppliedSet::default();
        let prepare = WriteOp::Prepare {
            txn: TxnId(9),
            items: vec![item("x", "t")],
        };
        store.write(&[prepare], &mut applied).unwrap();
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.recover().unwrap().prepared, vec![TxnId(9)]);
        let commit = WriteOp::Commit {
            txn: TxnId(9),
            index: CommitIndex(1),
        };
        let first = store.write(&[commit], &mut applied).unwrap();
        assert_eq!(first.results, vec![WriteResult::Done]);
        let commit = WriteOp::Commit {
            txn: TxnId(9),
            index: CommitIndex(1),
        };
        let again = store.write(&[commit], &mut applied).unwrap();
        assert_eq!(again.results, vec![WriteResult::Done], "already applied");
        assert!(again.counts.is_empty(), "nothing counted twice");
        let unknown = WriteOp::Commit {
            txn: TxnId(10),
            index: CommitIndex(2),
        };
        let effect = store.write(&[unknown], &mut applied).unwrap();
        assert_eq!(effect.results, vec![WriteResult::UnknownTxn]);
    }

    #[test]
    fn out_of_order_commits_and_import_fill_the_gap() {
        let (_dir, source) = open();
        let mut applied = AppliedSet::default();
        for (txn, index, id) in [(1, 1, "a"), (2, 2, "b"), (3, 3, "a")] {
            source
                .write(
                    &[
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
                )
                .unwrap();
        }

        // A replica that only saw commit 3 imports 1..=2 from the source.
        let (dir, replica) = open();
        let mut replica_applied = AppliedSet::default();
        replica
            .write(
                &[
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
            )
            .unwrap();
        assert_eq!(replica_applied.contiguous(), CommitIndex(0));
        let mut entries = Vec::new();
        source
            .export(CommitIndex(0), CommitIndex(2), &mut |e| {
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
        let effect = replica.write(&[partial], &mut replica_applied).unwrap();
        assert_eq!(effect.counts["t"], 2, "a once, b once");
        assert_eq!(
            replica_applied.contiguous(),
            CommitIndex(0),
            "not proven yet"
        );
        let complete = WriteOp::Import {
            entries,
            through: Some((CommitIndex(0), CommitIndex(2))),
        };
        let effect = replica.write(&[complete], &mut replica_applied).unwrap();
        assert!(
            effect.counts.is_empty(),
            "copying again counts nothing twice"
        );
        assert_eq!(replica_applied.contiguous(), CommitIndex(3));
        drop(replica);
        let replica = RedbStore::open(dir.path()).unwrap();
        let recovered = replica.recover().unwrap();
        assert_eq!(recovered.applied.contiguous(), CommitIndex(3));
        assert_eq!(recovered.counts["t"], 2);
    }
}
