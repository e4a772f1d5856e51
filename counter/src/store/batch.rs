//! One storage write: the operations of a writer batch, as the 2PC
//! participant decides them, with the log entries, counts and applied
//! indexes they change, committed as one fjall write batch.
//!
//! The replica's writer thread is the only writer, so a plain batch does
//! what a write transaction did without its second skiplist of pending
//! writes; the batch's own effects are tracked beside it ([`PendingWrite`]).
//! That made 1,000-item POSTs 10-15% faster in a cluster, and looking up and
//! inserting keys in key order another 3-10% (docs/storage-engine.md).

use super::dedup::{KeyHash, SeenWrite};
use super::keys::{check_storable, decode_u64, item_key, u64_key, APPLIED_KEY};
use super::{BatchEffect, FjallStore, WriteOp, WriteResult};
use crate::error::{lock, Error};
use fjall::{OwnedWriteBatch, PersistMode};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::MutexGuard;
use tally_common::applied::AppliedSet;
use tally_common::participant::{Action, Participant, Record};
use tally_common::{CommitIndex, Item, Millis, TxnId};

/// How many items ahead the writer asks for the memory of the item filter
/// and of the unindexed keys.
const PREFETCH_AHEAD: usize = 8;

impl FjallStore {
    /// [`Store::write`](super::Store::write): the write itself, then the
    /// items of what stays prepared kept for its commit.
    pub(super) fn write_batch(
        &self,
        ops: &mut [WriteOp],
        participant: &mut Participant,
        now: Millis,
    ) -> Result<BatchEffect, Error> {
        let effect = self.durable_write(ops, participant, now)?;
        // Durable now: keep the items of what the participant still holds
        // prepared, for its commit.
        let mut kept = lock(&self.prepared_in_memory, "the prepared items");
        for op in ops {
            if let WriteOp::Prepare { txn, items } = op {
                if participant.is_prepared(*txn) {
                    kept.insert(*txn, std::mem::take(items));
                }
            }
        }
        Ok(effect)
    }

    /// Writes `ops` in one durable fjall batch. [`Store::write`] then keeps
    /// the items of what stays prepared, which this borrows until the
    /// batch is built.
    ///
    /// [`Store::write`]: super::Store::write
    fn durable_write(
        &self,
        ops: &[WriteOp],
        participant: &mut Participant,
        now: Millis,
    ) -> Result<BatchEffect, Error> {
        let mut write = PendingWrite::new(self);
        let mut effect = BatchEffect::default();
        // Step a copy so a failed commit leaves the caller's state intact.
        let mut next = participant.clone();
        if let Err(e) = write.build(ops, participant.applied(), &mut next, now, &mut effect) {
            write.roll_back();
            return Err(e);
        }
        write.commit()?;
        *participant = next;
        Ok(effect)
    }
}

/// Items for one entry of `commits`, encoded as they are found instead of
/// cloned: postcard writes a `Vec<Item>` as its length (a varint) followed
/// by the items, so the entry is the count and then these bytes.
#[derive(Default)]
struct FreshItems {
    count: usize,
    encoded: Vec<u8>,
}

impl FreshItems {
    fn push(&mut self, item: &Item) -> Result<(), Error> {
        self.encoded = postcard::to_extend(item, std::mem::take(&mut self.encoded))?;
        self.count += 1;
        Ok(())
    }

    fn append(&mut self, other: FreshItems) {
        self.count += other.count;
        self.encoded.extend(other.encoded);
    }

    /// The entry's value: `logged` (what the entry already held), then these.
    fn after(self, logged: &[Item]) -> Result<Vec<u8>, Error> {
        let mut value = postcard::to_allocvec(&(logged.len() + self.count))?;
        for item in logged {
            value = postcard::to_extend(item, value)?;
        }
        value.extend(self.encoded);
        Ok(value)
    }
}

/// One storage write being built. fjall's write batch cannot be read back,
/// so what the batch has written so far that later operations of the same
/// write must see (items, prepared records) is also kept here. The writer
/// thread is the database's only writer, so everything else is read from
/// the keyspaces directly.
struct PendingWrite<'a> {
    store: &'a FjallStore,
    batch: OwnedWriteBatch,
    seen: SeenWrite<'a>,
    prepared_in_memory: MutexGuard<'a, HashMap<TxnId, Vec<Item>>>,
    /// Prepared records this write creates (`Some`) or removes (`None`).
    prepared: HashMap<TxnId, Option<&'a [Item]>>,
    /// Items first seen by this write, by the commit that brought them.
    fresh: BTreeMap<CommitIndex, FreshItems>,
    /// New items per tenant.
    added: BTreeMap<String, u64>,
}

impl<'a> PendingWrite<'a> {
    fn new(store: &'a FjallStore) -> Self {
        let mut batch = store.db.batch().durability(Some(PersistMode::SyncAll));
        let seen = store.seen.begin(&mut batch);
        PendingWrite {
            store,
            batch,
            seen,
            prepared_in_memory: lock(&store.prepared_in_memory, "the prepared items"),
            prepared: HashMap::new(),
            fresh: BTreeMap::new(),
            added: BTreeMap::new(),
        }
    }

    /// Counts and logs the items committed at `index` that are new to this
    /// replica.
    fn add_items(&mut self, index: CommitIndex, batch: Cow<'_, [Item]>) -> Result<(), Error> {
        // In key order: lookups in `items` then touch neighbouring blocks,
        // and the backlog gets a sorted run, which its ingestion sorts cheaply.
        let mut scratch = Vec::new();
        let mut keyed = batch
            .iter()
            .map(|item| Ok((item_key(item, &mut scratch)?, item)))
            .collect::<Result<Vec<_>, Error>>()?;
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let hashes: Vec<KeyHash> = keyed.iter().map(|(key, _)| KeyHash::of(key)).collect();
        for hash in hashes.iter().take(PREFETCH_AHEAD) {
            self.seen.prefetch(*hash);
        }
        let mut fresh = FreshItems::default();
        for (i, (key, item)) in keyed.into_iter().enumerate() {
            if let Some(ahead) = hashes.get(i + PREFETCH_AHEAD) {
                self.seen.prefetch(*ahead);
            }
            let hash = hashes[i];
            if !self.seen.is_new(&key, hash)? {
                continue;
            }
            self.seen.record(key, hash);
            match self.added.get_mut(item.tenant.as_str()) {
                Some(added) => *added += 1,
                None => drop(self.added.insert(item.tenant.clone(), 1)),
            }
            fresh.push(item)?;
        }
        if fresh.count > 0 {
            self.fresh.entry(index).or_default().append(fresh);
        }
        Ok(())
    }

    fn prepare(&mut self, txn: TxnId, items: &'a [Item]) -> Result<(), Error> {
        // A yes vote must be one the commit can honour.
        items.iter().try_for_each(check_storable)?;
        let record = postcard::to_allocvec(items)?;
        self.batch
            .insert(&self.store.prepared, u64_key(txn.0), record);
        self.prepared.insert(txn, Some(items));
        Ok(())
    }

    /// The items `txn` prepared: from this write, from memory, or from the
    /// store. Taken out of memory: should this write fail, the record is
    /// still in the store.
    fn prepared_items(&mut self, txn: TxnId) -> Result<Cow<'a, [Item]>, Error> {
        let missing = Error::CorruptEncoding("prepared record (missing)");
        match self.prepared.get(&txn) {
            Some(Some(items)) => Ok(Cow::Borrowed(*items)),
            Some(None) => Err(missing),
            None => {
                if let Some(items) = self.prepared_in_memory.remove(&txn) {
                    return Ok(Cow::Owned(items));
                }
                let record = self.store.prepared.get(u64_key(txn.0))?.ok_or(missing)?;
                Ok(Cow::Owned(postcard::from_bytes(&record)?))
            }
        }
    }

    fn apply(&mut self, txn: TxnId, index: CommitIndex) -> Result<(), Error> {
        let items = self.prepared_items(txn)?;
        self.add_items(index, items)?;
        self.forget(txn);
        Ok(())
    }

    fn forget(&mut self, txn: TxnId) {
        self.prepared_in_memory.remove(&txn);
        self.batch.remove(&self.store.prepared, u64_key(txn.0));
        self.prepared.insert(txn, None);
    }

    /// Writes the log entries and counts the batch's new items changed, and
    /// returns the new counts.
    fn finish_items(&mut self) -> Result<HashMap<String, u64>, Error> {
        let store = self.store;
        for (index, fresh) in std::mem::take(&mut self.fresh) {
            // A copied entry can land on an index this replica already logged.
            let key = u64_key(index.0);
            let logged: Vec<Item> = match store.commits.get(key)? {
                Some(existing) => postcard::from_bytes(&existing)?,
                None => Vec::new(),
            };
            self.batch
                .insert(&store.commits, key, fresh.after(&logged)?);
            self.seen.logged(&mut self.batch, index);
        }
        let mut counts = HashMap::new();
        for (tenant, n) in std::mem::take(&mut self.added) {
            let count = match store.counts.get(tenant.as_bytes())? {
                Some(v) => decode_u64(&v, "count")?,
                None => 0,
            } + n;
            self.batch
                .insert(&store.counts, tenant.as_bytes(), u64_key(count));
            counts.insert(tenant, count);
        }
        Ok(counts)
    }

    /// Puts `ops` in the batch, as `next` (the participant, stepped along)
    /// decides them, with the log entries, counts and applied indexes they
    /// change.
    fn build(
        &mut self,
        ops: &'a [WriteOp],
        applied_before: &AppliedSet,
        next: &mut Participant,
        now: Millis,
        effect: &mut BatchEffect,
    ) -> Result<(), Error> {
        for op in ops {
            if let WriteOp::Import { entries, .. } = op {
                for entry in entries {
                    self.add_items(entry.index, Cow::Borrowed(&entry.items))?;
                }
            }
            let mut result = WriteResult::Done;
            for action in next.step(op.event(now)) {
                match action {
                    Action::Persist(Record::Prepared { txn }) => {
                        let WriteOp::Prepare { items, .. } = op else {
                            unreachable!("only a prepare persists a prepared record")
                        };
                        self.prepare(txn, items)?;
                    }
                    Action::Persist(Record::Applied { txn, index }) => self.apply(txn, index)?,
                    Action::Persist(Record::Forgotten { txn }) => self.forget(txn),
                    // Applied indexes are written from `next` below.
                    Action::Persist(Record::AppliedRange { .. }) => {}
                    Action::VoteYes { .. } | Action::Ack { .. } => {}
                    Action::UnknownTxn { .. } => result = WriteResult::UnknownTxn,
                    // Only ticks ask, and no write op is one.
                    Action::AskOutcome { .. } => {}
                }
            }
            effect.results.push(result);
        }
        effect.counts = self.finish_items()?;
        self.record_applied(applied_before, next.applied())
    }

    /// Makes the write durable, or undoes what it recorded as seen.
    fn commit(self) -> Result<(), Error> {
        let PendingWrite { batch, seen, .. } = self;
        seen.commit(batch)
    }

    /// Abandons the write before its commit.
    fn roll_back(self) {
        self.seen.roll_back();
    }

    /// Records which commits are applied: the gap-free prefix, and the
    /// indexes above it that `before` did not have yet.
    fn record_applied(&mut self, before: &AppliedSet, after: &AppliedSet) -> Result<(), Error> {
        let store = self.store;
        let contiguous = after.contiguous();
        for guard in store.applied_above.range(..=u64_key(contiguous.0)) {
            self.batch.remove(&store.applied_above, guard.key()?);
        }
        for index in after.above() {
            if !before.contains(index) {
                self.batch
                    .insert(&store.applied_above, u64_key(index.0), []);
            }
        }
        self.batch
            .insert(&store.meta, APPLIED_KEY, u64_key(contiguous.0));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{item, open, NOW};
    use super::*;
    use crate::store::Store;
    use std::collections::HashSet;

    /// The writer's path as the counter runs it under bulk load: each
    /// storage write applies one commit and prepares the next transaction,
    /// with ids spread like random ones and every tenth one repeated. The
    /// counts must come out exact; the rate is printed for comparing store
    /// changes (`cargo test --release -p tally-counter bulk_commits -- --nocapture`),
    /// never asserted.
    #[test]
    fn bulk_commits_count_each_distinct_item_once() {
        const BATCHES: u64 = 100;
        const ITEMS: u64 = 1000;
        const TENANTS: u64 = 16;
        let (_dir, store) = open();
        let mut participant = Participant::default();
        let batch = |b: u64| -> Vec<Item> {
            (0..ITEMS)
                .map(|k| {
                    let n = b * ITEMS + k;
                    // An id seen earlier, in this batch or a previous one.
                    let n = if n % 10 == 9 { n / 2 } else { n };
                    let id = format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    item(&id, &format!("tenant-{}", n % TENANTS))
                })
                .collect()
        };
        let mut expected: HashMap<String, HashSet<String>> = HashMap::new();
        let mut counts = HashMap::new();
        let started = std::time::Instant::now();
        for b in 1..=BATCHES + 1 {
            let mut ops = Vec::new();
            if b > 1 {
                ops.push(WriteOp::Commit {
                    txn: TxnId(b - 1),
                    index: CommitIndex(b - 1),
                });
            }
            // The last write only commits.
            if b <= BATCHES {
                let items = batch(b);
                for i in &items {
                    expected
                        .entry(i.tenant.clone())
                        .or_default()
                        .insert(i.id.clone());
                }
                ops.push(WriteOp::Prepare {
                    txn: TxnId(b),
                    items,
                });
            }
            counts.extend(store.write(&mut ops, &mut participant, NOW).unwrap().counts);
        }
        let elapsed = started.elapsed();
        println!(
            "{} items in {elapsed:.2?}: {:.0} items/s",
            BATCHES * ITEMS,
            (BATCHES * ITEMS) as f64 / elapsed.as_secs_f64()
        );
        assert_eq!(counts.len(), TENANTS as usize);
        for (tenant, ids) in &expected {
            assert_eq!(counts[tenant], ids.len() as u64, "{tenant}");
        }
        assert_eq!(store.recover().unwrap().counts, counts);
        assert_eq!(participant.applied().contiguous(), CommitIndex(BATCHES));
    }

    #[test]
    fn fresh_items_encode_as_the_vec_export_decodes() {
        let logged = vec![item("a", "t")];
        let mut fresh = FreshItems::default();
        fresh.push(&item("b", "t")).unwrap();
        let mut more = FreshItems::default();
        more.push(&item("c", "ü")).unwrap();
        fresh.append(more);
        let value = fresh.after(&logged).unwrap();
        let decoded: Vec<Item> = postcard::from_bytes(&value).unwrap();
        assert_eq!(
            decoded,
            vec![item("a", "t"), item("b", "t"), item("c", "ü")]
        );

        // A count past one varint byte.
        let many: Vec<Item> = (0..300).map(|i| item(&i.to_string(), "t")).collect();
        let mut fresh = FreshItems::default();
        for item in &many[100..] {
            fresh.push(item).unwrap();
        }
        let value = fresh.after(&many[..100]).unwrap();
        assert_eq!(postcard::from_bytes::<Vec<Item>>(&value).unwrap(), many);
    }

    #[test]
    fn prepared_survives_reopen_and_commit_is_idempotent() {
        let (dir, store) = open();
        let mut applied = Participant::default();
        let prepare = WriteOp::Prepare {
            txn: TxnId(9),
            items: vec![item("x", "t")],
        };
        store.write(&mut [prepare], &mut applied, NOW).unwrap();
        drop(store);
        let store = FjallStore::open(dir.path()).unwrap();
        assert_eq!(store.recover().unwrap().prepared, vec![TxnId(9)]);
        let commit = WriteOp::Commit {
            txn: TxnId(9),
            index: CommitIndex(1),
        };
        let first = store.write(&mut [commit], &mut applied, NOW).unwrap();
        assert_eq!(first.results, vec![WriteResult::Done]);
        let commit = WriteOp::Commit {
            txn: TxnId(9),
            index: CommitIndex(1),
        };
        let again = store.write(&mut [commit], &mut applied, NOW).unwrap();
        assert_eq!(again.results, vec![WriteResult::Done], "already applied");
        assert!(again.counts.is_empty(), "nothing counted twice");
        let unknown = WriteOp::Commit {
            txn: TxnId(10),
            index: CommitIndex(2),
        };
        let effect = store.write(&mut [unknown], &mut applied, NOW).unwrap();
        assert_eq!(effect.results, vec![WriteResult::UnknownTxn]);
    }

    #[test]
    fn prepared_items_stay_in_memory_only_until_commit_or_abort() {
        let (_dir, store) = open();
        let mut participant = Participant::default();
        let kept = |store: &FjallStore| store.prepared_in_memory.lock().unwrap().len();
        let prepare = |txn: u64, id: &str| WriteOp::Prepare {
            txn: TxnId(txn),
            items: vec![item(id, "t")],
        };
        store
            .write(
                &mut [prepare(1, "a"), prepare(2, "b")],
                &mut participant,
                NOW,
            )
            .unwrap();
        assert_eq!(kept(&store), 2);
        let commit = WriteOp::Commit {
            txn: TxnId(1),
            index: CommitIndex(1),
        };
        let effect = store.write(&mut [commit], &mut participant, NOW).unwrap();
        assert_eq!(effect.counts["t"], 1, "committed from memory");
        assert_eq!(kept(&store), 1);
        let abort = WriteOp::Abort { txn: TxnId(2) };
        store.write(&mut [abort], &mut participant, NOW).unwrap();
        assert_eq!(kept(&store), 0);
        // Prepared and committed in one write: never kept.
        let commit = WriteOp::Commit {
            txn: TxnId(3),
            index: CommitIndex(2),
        };
        let effect = store
            .write(&mut [prepare(3, "c"), commit], &mut participant, NOW)
            .unwrap();
        assert_eq!(effect.counts["t"], 2);
        assert_eq!(kept(&store), 0);
    }

    #[test]
    fn item_new_to_two_commits_of_one_batch_counts_once() {
        let (dir, store) = open();
        let mut applied = Participant::default();
        store
            .write(
                &mut [
                    WriteOp::Prepare {
                        txn: TxnId(1),
                        items: vec![item("a", "t"), item("b", "t")],
                    },
                    WriteOp::Prepare {
                        txn: TxnId(2),
                        items: vec![item("a", "t")],
                    },
                ],
                &mut applied,
                NOW,
            )
            .unwrap();
        let effect = store
            .write(
                &mut [
                    WriteOp::Commit {
                        txn: TxnId(1),
                        index: CommitIndex(1),
                    },
                    WriteOp::Commit {
                        txn: TxnId(2),
                        index: CommitIndex(2),
                    },
                ],
                &mut applied,
                NOW,
            )
            .unwrap();
        assert_eq!(effect.results, vec![WriteResult::Done; 2]);
        assert_eq!(effect.counts["t"], 2, "a once, b once");
        let mut entries = Vec::new();
        store
            .export(CommitIndex(0), &mut |e| {
                entries.push(e);
                true
            })
            .unwrap();
        assert_eq!(entries.len(), 1, "commit 2 added nothing new");
        assert_eq!(entries[0].index, CommitIndex(1));
        drop(store);
        let recovered = FjallStore::open(dir.path()).unwrap().recover().unwrap();
        assert_eq!(recovered.counts["t"], 2);
        assert_eq!(recovered.applied.contiguous(), CommitIndex(2));
    }
}
