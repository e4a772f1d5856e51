//! Whether an item is new to this replica: the one question the write path
//! asks of every item it commits, and the only thing that keeps a count
//! exact when an id comes twice.
//!
//! An item is stored if its key is in the `items` keyspace or among the
//! keys not indexed yet ([`unindexed`]). Two things in memory keep the
//! answer cheap, neither of which changes it: the item filter
//! ([`item_filter`]) says "certainly not stored" for most new keys without
//! a lookup, and the backlog holds new keys until they can be ingested into
//! `items` in sorted batches, off the write path. [`SeenItems`] puts the
//! three behind one question, [`SeenWrite::is_new`], and one answer,
//! [`SeenWrite::record`].
//!
//! Durability: a recorded key is durable through the `commits` entry of the
//! same write, and the `unindexed` keyspace marks the entries whose keys
//! may not be in `items` yet ([`SeenWrite::logged`]). Opening reloads
//! exactly those keys, and rebuilds the filter from `items`.

mod item_filter;
mod unindexed;

pub use item_filter::KeyHash;

use super::keys::{decode_u64, item_key, u64_key};
use super::StoreOptions;
use crate::error::{lock, Error};
use fjall::compaction::Leveled;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, Readable, UserKey};
use item_filter::{FilterState, ItemFilter};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;
use tally_common::{CommitIndex, Item};
use unindexed::IndexBacklog;

/// Tables the `items` keyspace lets pile up in level 0 before merging them
/// into level 1 (fjall's default: 4). Each is one ingested batch of keys
/// (`StoreOptions::index_batch_keys`). Item keys are spread over the whole
/// key space, so every such merge rewrites all of level 1: the more is
/// merged at once, the less often that happens, and the item filter spares
/// most lookups the extra tables. With 12, merges took up to half of a
/// counter's CPU after 20 million 1,000-item POSTs; with the default, single-item
/// writes fell to 5-10k/s for seconds after bulk loads (docs/benchmarks.md).
const ITEMS_L0_TABLES: u8 = 32;

/// The items this replica holds, as far as telling a new one goes.
pub struct SeenItems {
    items: Keyspace,
    unindexed: Keyspace,
    /// Keys of `items`, so that a new item needs no lookup. The writer holds
    /// the lock through a write; a metrics scrape takes it briefly.
    filter: Mutex<FilterState>,
    /// Keys stored but not yet in `items`. The writer holds the lock
    /// through a write.
    backlog: Mutex<IndexBacklog>,
}

impl SeenItems {
    /// The `items` keyspace, opened with its level-0 setting.
    pub fn items_keyspace(db: &Database) -> Result<Keyspace, Error> {
        Ok(db.keyspace("items", || {
            KeyspaceCreateOptions::default().compaction_strategy(Arc::new(
                Leveled::default().with_l0_threshold(ITEMS_L0_TABLES),
            ))
        })?)
    }

    /// Starts building the item filter from `items` on a thread of its own
    /// and the indexer, and reloads the keys of the `commits` entries that
    /// `unindexed` marks. Call it before the first write.
    pub fn open(
        db: &Database,
        items: Keyspace,
        unindexed: Keyspace,
        commits: &Keyspace,
        options: StoreOptions,
    ) -> Result<Self, Error> {
        // Taken before any write: the keys written after it reach the filter
        // through the writer (`FilterState::Building`).
        let snapshot = db.snapshot();
        let (send, built) = std::sync::mpsc::channel();
        let scanned = items.clone();
        let max_bytes = options.item_filter_bytes;
        std::thread::Builder::new()
            .name("item-filter".into())
            .spawn(
                move || match Self::load_filter(&snapshot, &scanned, max_bytes) {
                    Ok(filter) => drop(send.send(filter)),
                    Err(e) => tracing::error!(error = %e, "cannot build the item filter"),
                },
            )
            .map_err(|e| Error::Storage(fjall::Error::Io(e)))?;
        let backlog = IndexBacklog::start(items.clone(), options.index_batch_keys)
            .map_err(|e| Error::Storage(fjall::Error::Io(e)))?;
        let seen = SeenItems {
            items,
            unindexed,
            filter: Mutex::new(FilterState::building(built)),
            backlog: Mutex::new(backlog),
        };
        seen.reload_unindexed(commits)?;
        Ok(seen)
    }

    /// Puts back in memory the keys of the commits that were not indexed
    /// when the process stopped.
    fn reload_unindexed(&self, commits: &Keyspace) -> Result<(), Error> {
        let started = Instant::now();
        let mut backlog = lock(&self.backlog, "the unindexed keys");
        let mut filter = self.lock_filter();
        let mut scratch = Vec::new();
        for guard in self.unindexed.iter() {
            let index = guard.key()?;
            let Some(entry) = commits.get(&index)? else {
                continue;
            };
            let items: Vec<Item> = postcard::from_bytes(&entry)?;
            for item in &items {
                let key = item_key(item, &mut scratch)?;
                let hash = KeyHash::of(&key);
                if !backlog.contains(&key, hash) {
                    backlog.insert(key, hash);
                    filter.insert(hash);
                }
            }
            let index = CommitIndex(decode_u64(&index, "commit index")?);
            backlog.note_commit(index);
        }
        let keys = backlog.len();
        if keys > 0 {
            tracing::info!(
                keys,
                took_ms = started.elapsed().as_millis() as u64,
                "item keys not yet indexed reloaded from the commit log"
            );
        }
        Ok(())
    }

    /// Builds the item filter from every key in `snapshot`, sized for twice
    /// as many.
    fn load_filter(
        snapshot: &fjall::Snapshot,
        items: &Keyspace,
        max_bytes: usize,
    ) -> Result<ItemFilter, Error> {
        let started = Instant::now();
        let mut filter = ItemFilter::new(items.approximate_len() * 2, max_bytes);
        let mut keys = 0u64;
        if max_bytes > 0 {
            for guard in snapshot.iter(items) {
                filter.insert(KeyHash::of(&guard.key()?));
                keys += 1;
            }
        }
        tracing::info!(
            keys,
            bytes = filter.bytes(),
            took_ms = started.elapsed().as_millis() as u64,
            "item filter loaded"
        );
        Ok(filter)
    }

    /// The item filter, taken over from its builder if it has arrived.
    fn lock_filter(&self) -> MutexGuard<'_, FilterState> {
        let mut filter = lock(&self.filter, "the item filter");
        filter.poll();
        filter
    }

    /// Starts one storage write: until [`SeenWrite::commit`] or
    /// [`SeenWrite::roll_back`], the writer alone asks and records. Commits
    /// whose keys have all been ingested since the last write lose their
    /// `unindexed` marker in `batch`.
    pub fn begin(&self, batch: &mut OwnedWriteBatch) -> SeenWrite<'_> {
        let mut backlog = lock(&self.backlog, "the unindexed keys");
        for index in backlog.begin_write() {
            batch.remove(&self.unindexed, u64_key(index.0));
        }
        SeenWrite {
            seen: self,
            filter: self.lock_filter(),
            backlog,
        }
    }

    /// Memory held by the item filter, for `/metrics`.
    pub fn filter_bytes(&self) -> usize {
        self.lock_filter().bytes()
    }

    /// Stored keys not yet in `items`, for `/metrics`.
    pub fn unindexed_keys(&self) -> usize {
        lock(&self.backlog, "the unindexed keys").len()
    }

    /// Stops the indexer, letting an ingestion in progress finish. The store
    /// calls this before it closes the database: an ingestion that finishes
    /// after fjall stopped its workers leaves the database locked until the
    /// process exits (seen with fjall 3.1).
    pub fn stop_indexer(&mut self) {
        // Even a poisoned backlog must stop its thread: dropping is how the
        // process ends.
        self.backlog
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .stop();
    }

    #[cfg(test)]
    pub fn filter_ready(&self) -> bool {
        self.lock_filter().is_ready()
    }

    #[cfg(test)]
    pub fn is_indexed(&self, key: &[u8]) -> bool {
        self.items.contains_key(key).unwrap()
    }
}

/// The writer's hold on [`SeenItems`] for one storage write.
pub struct SeenWrite<'a> {
    seen: &'a SeenItems,
    filter: MutexGuard<'a, FilterState>,
    backlog: MutexGuard<'a, IndexBacklog>,
}

impl SeenWrite<'_> {
    /// Starts loading the memory that [`is_new`](Self::is_new) and
    /// [`record`](Self::record) of `hash` will read. A large filter and
    /// backlog cost a cache miss per key; asking a few keys ahead overlaps
    /// those misses instead of waiting them out one by one.
    pub fn prefetch(&self, hash: KeyHash) {
        self.filter.prefetch(hash);
        self.backlog.prefetch(hash);
    }

    /// Whether the item with this key is stored by neither an earlier write
    /// nor this one. Every stored key is in the filter, so "certainly not"
    /// from it settles it.
    pub fn is_new(&self, key: &UserKey, hash: KeyHash) -> Result<bool, Error> {
        if !self.filter.may_contain(hash) {
            return Ok(true);
        }
        let stored = self.backlog.contains(key, hash) || self.seen.items.contains_key(key)?;
        Ok(!stored)
    }

    /// Records a key [`is_new`](Self::is_new) just called new, as stored by
    /// this write. Before the commit: should it fail, a key too many in the
    /// filter only costs a lookup, and the backlog is rolled back.
    pub fn record(&mut self, key: UserKey, hash: KeyHash) {
        self.filter.insert(hash);
        self.backlog.insert(key, hash);
    }

    /// Notes that this write logs keys it recorded in the `commits` entry
    /// at `index`, and marks that entry in `unindexed` in `batch` until the
    /// keys are ingested.
    pub fn logged(&mut self, batch: &mut OwnedWriteBatch, index: CommitIndex) {
        batch.insert(&self.seen.unindexed, u64_key(index.0), []);
        self.backlog.note_commit(index);
    }

    /// Commits `batch`, the write the keys were recorded for. Once it is
    /// durable, a full backlog goes to the indexer; if it failed, what this
    /// write recorded in the backlog is undone.
    pub fn commit(self, batch: OwnedWriteBatch) -> Result<(), Error> {
        let SeenWrite {
            filter,
            mut backlog,
            ..
        } = self;
        // No need to hold the filter through the fsync.
        drop(filter);
        match batch.commit() {
            Ok(()) => {
                backlog.seal_if_full();
                Ok(())
            }
            Err(e) => {
                backlog.roll_back();
                Err(e.into())
            }
        }
    }

    /// Undoes what this write recorded in the backlog: the write was
    /// abandoned before its commit.
    pub fn roll_back(mut self) {
        self.backlog.roll_back();
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{commit, item};
    use super::super::{FjallStore, Store, StoreOptions};
    use super::*;
    use tally_common::participant::Participant;

    #[test]
    fn items_stored_before_a_reopen_are_not_counted_again_with_or_without_a_filter() {
        let batch = |range: std::ops::Range<u32>| -> Vec<Item> {
            range.map(|i| item(&format!("id-{i}"), "t")).collect()
        };
        let default_bytes = StoreOptions::default().item_filter_bytes;
        // With the filter built, while it may still be building, without one.
        for (filter_bytes, wait_for_filter) in
            [(default_bytes, true), (default_bytes, false), (0, false)]
        {
            let options = StoreOptions {
                item_filter_bytes: filter_bytes,
                ..StoreOptions::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let store = FjallStore::open_with(dir.path(), options).unwrap();
            let mut participant = Participant::default();
            commit(&store, &mut participant, 1, batch(0..5000));
            drop(store);

            let store = FjallStore::open_with(dir.path(), options).unwrap();
            let recovered = store.recover().unwrap();
            let (mut participant, _) =
                Participant::recover(Default::default(), [], recovered.applied);
            if wait_for_filter {
                let deadline = Instant::now() + std::time::Duration::from_secs(10);
                while !store.seen.filter_ready() {
                    assert!(Instant::now() < deadline, "the filter was never built");
                    std::thread::yield_now();
                }
                assert!(store.item_filter_bytes() > 0);
            }
            // Half old, half new: only the new half counts.
            let effect = commit(&store, &mut participant, 2, batch(2500..7500));
            let case = format!("filter of {filter_bytes} bytes, waited: {wait_for_filter}");
            assert_eq!(effect.counts["t"], 7500, "{case}");
            let effect = commit(&store, &mut participant, 3, batch(0..7500));
            assert!(effect.counts.is_empty(), "nothing new, {case}");
        }
    }

    /// Keys wait in memory, are ingested into `items` in batches, and are
    /// reloaded from the commit log after a restart: an item is new exactly
    /// once through all of it, with or without the item filter.
    #[test]
    fn items_count_once_before_during_and_after_indexing_and_across_reopens() {
        let batch = |range: std::ops::Range<u32>| -> Vec<Item> {
            range.map(|i| item(&format!("id-{i}"), "t")).collect()
        };
        for filter_bytes in [StoreOptions::default().item_filter_bytes, 0] {
            let options = StoreOptions {
                item_filter_bytes: filter_bytes,
                index_batch_keys: 1000,
            };
            let dir = tempfile::tempdir().unwrap();
            let store = FjallStore::open_with(dir.path(), options).unwrap();
            let mut participant = Participant::default();
            let effect = commit(&store, &mut participant, 1, batch(0..5000));
            assert_eq!(effect.counts["t"], 5000);
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            while store.unindexed_items() > 0 {
                assert!(Instant::now() < deadline, "the keys were never indexed");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(store
                .seen
                .is_indexed(&item_key(&item("id-0", "t"), &mut Vec::new()).unwrap()));

            // Half indexed, half new; the new half is handed to the indexer
            // by this write, which also drops the first commit's marker.
            let effect = commit(&store, &mut participant, 2, batch(2500..7500));
            assert_eq!(effect.counts["t"], 7500, "filter of {filter_bytes} bytes");
            drop(store);
            let store = FjallStore::open_with(dir.path(), options).unwrap();
            // Only the second commit's keys may still be missing from `items`.
            assert_eq!(store.unindexed_items(), 2500);
            let recovered = store.recover().unwrap();
            let (mut participant, _) =
                Participant::recover(Default::default(), [], recovered.applied);
            let effect = commit(&store, &mut participant, 3, batch(0..7500));
            assert!(
                effect.counts.is_empty(),
                "nothing new, filter of {filter_bytes} bytes"
            );
            let effect = commit(&store, &mut participant, 4, batch(7000..8000));
            assert_eq!(effect.counts["t"], 8000, "filter of {filter_bytes} bytes");
        }
    }

    /// The write path's two calls, on their own: a key is new until it is
    /// recorded, a write that fails forgets what it recorded, and a reopen
    /// finds what a durable write recorded without an ingestion.
    #[test]
    fn a_key_is_new_until_recorded_and_a_failed_write_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).open().unwrap();
        let open = |db: &Database| {
            let items = SeenItems::items_keyspace(db).unwrap();
            let unindexed = db
                .keyspace("unindexed", KeyspaceCreateOptions::default)
                .unwrap();
            let commits = db
                .keyspace("commits", KeyspaceCreateOptions::default)
                .unwrap();
            let seen = SeenItems::open(db, items, unindexed, &commits, StoreOptions::default());
            (seen.unwrap(), commits)
        };
        let key = |id: &str| {
            let key = item_key(&item(id, "t"), &mut Vec::new()).unwrap();
            let hash = KeyHash::of(&key);
            (key, hash)
        };
        let (mut seen, commits) = open(&db);
        let (a, a_hash) = key("a");
        let (b, b_hash) = key("b");

        let mut batch = db.batch();
        let mut write = seen.begin(&mut batch);
        assert!(write.is_new(&a, a_hash).unwrap());
        write.record(a.clone(), a_hash);
        assert!(!write.is_new(&a, a_hash).unwrap(), "new once per write too");
        write.roll_back();
        drop(batch);

        let mut batch = db.batch();
        let mut write = seen.begin(&mut batch);
        assert!(
            write.is_new(&a, a_hash).unwrap(),
            "the failed write forgot it"
        );
        write.record(b.clone(), b_hash);
        write.logged(&mut batch, CommitIndex(1));
        let entry = postcard::to_allocvec(&vec![item("b", "t")]).unwrap();
        batch.insert(&commits, u64_key(1), entry);
        write.commit(batch).unwrap();
        assert_eq!(seen.unindexed_keys(), 1);
        seen.stop_indexer();
        drop(seen);

        let (seen, _) = open(&db);
        assert_eq!(seen.unindexed_keys(), 1, "reloaded from the marked entry");
        let mut batch = db.batch();
        let write = seen.begin(&mut batch);
        assert!(!write.is_new(&b, b_hash).unwrap());
        assert!(write.is_new(&a, a_hash).unwrap());
    }
}
