//! Item keys that are durable in the commit log but not yet in the `items`
//! keyspace, and the thread that moves them there.
//!
//! Writing each new key into `items` through a write batch cost a counter
//! more than half its CPU under 1,000-item POSTs: a skiplist insert into the
//! memtable (cache misses at most levels), a second copy in the journal,
//! then a flush (docs/benchmarks.md). The `commits` entry of the same write
//! already holds every new item durably, so the key waits here in a hash
//! table instead, and once a million have gathered, the indexer thread
//! sorts them and writes them into `items` as new tables with fjall's
//! ingestion, off the writer's path.
//!
//! Which `commits` entries hold keys not yet in `items` is written beside
//! them (the store's `unindexed` keyspace) and dropped only after their
//! ingestion finished, so a restart rebuilds these keys from the log.
//! A key may then be ingested twice; `items` holds it once either way, and
//! the counts never depended on it.

use super::item_filter::{prefetch, KeyHash};
use fjall::{Keyspace, UserKey};
use std::collections::BTreeSet;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tally_common::CommitIndex;

/// How long the indexer waits before trying a failed ingestion again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How many batches' worth of keys may wait while one is being ingested
/// before the writer waits for it: bounds the memory when the disk falls
/// behind.
const MAX_BATCHES_WAITING: usize = 4;

/// Positions in a list of keys, found by the keys' hashes: open addressing
/// with linear probing, at most half full. A general hash table cost the
/// writer two cache misses per new key; this one is a single array, so the
/// writer can prefetch the slot of a key a few keys ahead.
///
/// A slot is 0 when empty, or the key's tag (the hash's upper half, which
/// also picks the home slot) above its position plus one.
#[derive(Default)]
struct KeySlots {
    slots: Vec<u64>,
    len: usize,
}

impl KeySlots {
    const MIN_SLOTS: usize = 1024;

    fn with_capacity(keys: usize) -> Self {
        KeySlots {
            slots: vec![0; (keys * 2).next_power_of_two().max(Self::MIN_SLOTS)],
            len: 0,
        }
    }

    fn tag(hash: KeyHash) -> u64 {
        hash.get() >> 32
    }

    fn home(&self, tag: u64) -> usize {
        // No slots at all (a default set) leaves every home out of range.
        tag as usize & self.slots.len().wrapping_sub(1)
    }

    fn prefetch(&self, hash: KeyHash) {
        if let Some(slot) = self.slots.get(self.home(Self::tag(hash))) {
            prefetch(slot);
        }
    }

    /// Positions whose key has `hash`'s tag: the key itself may be among them.
    fn candidates(&self, hash: KeyHash) -> impl Iterator<Item = usize> + '_ {
        let tag = Self::tag(hash);
        let start = self.home(tag);
        let mask = self.slots.len().wrapping_sub(1);
        (0..self.slots.len())
            .map(move |probe| self.slots[(start + probe) & mask])
            .take_while(|&slot| slot != 0)
            .filter(move |&slot| slot >> 32 == tag)
            .map(|slot| (slot as u32 - 1) as usize)
    }

    fn insert(&mut self, hash: KeyHash, position: usize) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        // `IndexBacklog` seals a set long before four billion keys.
        self.place(Self::tag(hash) << 32 | (position as u64 + 1));
        self.len += 1;
    }

    fn place(&mut self, slot: u64) {
        let mask = self.slots.len() - 1;
        let mut at = self.home(slot >> 32);
        while self.slots[at] != 0 {
            at = (at + 1) & mask;
        }
        self.slots[at] = slot;
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(Self::MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![0; size]);
        for slot in old.into_iter().filter(|&slot| slot != 0) {
            self.place(slot);
        }
    }
}

/// A set of item keys and the commits that brought them.
#[derive(Default)]
struct UnindexedKeys {
    /// In insertion order: a run sorted per batch of items, which is what
    /// makes sorting them all for the ingestion cheap.
    keys: Vec<UserKey>,
    slots: KeySlots,
    commits: BTreeSet<CommitIndex>,
}

impl UnindexedKeys {
    /// Room for `keys` keys without growing: growing rehashes every key.
    fn with_capacity(keys: usize) -> Self {
        UnindexedKeys {
            keys: Vec::with_capacity(keys),
            slots: KeySlots::with_capacity(keys),
            commits: BTreeSet::new(),
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn contains(&self, key: &[u8], hash: KeyHash) -> bool {
        self.slots.candidates(hash).any(|at| *self.keys[at] == *key)
    }

    /// Adds a key that [`contains`](Self::contains) just said is not here.
    fn insert(&mut self, key: UserKey, hash: KeyHash) {
        self.slots.insert(hash, self.keys.len());
        self.keys.push(key);
    }

    /// Forgets the keys after the first `len` and the given commits: the
    /// write that added them failed. Rare enough (the database refuses all
    /// writes after a failed one) to rebuild the slots.
    fn truncate(&mut self, len: usize, commits: &[CommitIndex]) {
        self.keys.truncate(len);
        self.slots = KeySlots::with_capacity(self.keys.capacity());
        for (at, key) in self.keys.iter().enumerate() {
            self.slots.insert(KeyHash::of(key), at);
        }
        for index in commits {
            self.commits.remove(index);
        }
    }

    /// The keys in order, each once, as an ingestion takes them.
    fn sorted(&self) -> Vec<&UserKey> {
        let mut keys: Vec<&UserKey> = self.keys.iter().collect();
        // Stable sort: it finds the sorted runs and merges them.
        keys.sort();
        keys.dedup();
        keys
    }
}

/// A set sealed and handed to the indexer.
struct Ingesting {
    keys: Arc<UnindexedKeys>,
    started: Instant,
}

/// Everything not yet in `items`: the keys the writer is adding to, and at
/// most one sealed set that the indexer is ingesting. Only the writer
/// thread changes it.
pub struct IndexBacklog {
    pending: UnindexedKeys,
    ingesting: Option<Ingesting>,
    /// Commits whose keys are all in `items` now, for the writer to unmark.
    indexed: BTreeSet<CommitIndex>,
    /// Where the write in progress started, to undo it should it fail.
    write_start: WriteMark,
    batch_keys: usize,
    jobs: Option<Sender<Arc<UnindexedKeys>>>,
    done: Receiver<()>,
    indexer: Option<JoinHandle<()>>,
}

/// Where a write started, to undo its additions if it fails.
#[derive(Debug, Default)]
struct WriteMark {
    keys: usize,
    commits: Vec<CommitIndex>,
}

impl IndexBacklog {
    /// Starts the indexer thread, which ingests into `items` sets of
    /// `batch_keys` keys.
    pub fn start(items: Keyspace, batch_keys: usize) -> std::io::Result<Self> {
        let (jobs, received) = mpsc::channel::<Arc<UnindexedKeys>>();
        let (finished, done) = mpsc::channel();
        let indexer = std::thread::Builder::new()
            .name("item-indexer".into())
            .spawn(move || {
                for keys in received {
                    while let Err(e) = ingest(&items, &keys) {
                        tracing::error!(error = %e, keys = keys.len(), "cannot index item keys; retrying");
                        std::thread::sleep(RETRY_AFTER);
                    }
                    drop(keys);
                    if finished.send(()).is_err() {
                        return;
                    }
                }
            })?;
        Ok(IndexBacklog {
            pending: UnindexedKeys::with_capacity(batch_keys),
            ingesting: None,
            indexed: BTreeSet::new(),
            write_start: WriteMark::default(),
            batch_keys: batch_keys.max(1),
            jobs: Some(jobs),
            done,
            indexer: Some(indexer),
        })
    }

    /// Keys not in `items` yet, for `/metrics`.
    pub fn len(&mut self) -> usize {
        self.poll(false);
        self.pending.len() + self.ingesting.as_ref().map_or(0, |i| i.keys.len())
    }

    pub fn contains(&self, key: &[u8], hash: KeyHash) -> bool {
        self.pending.contains(key, hash)
            || self
                .ingesting
                .as_ref()
                .is_some_and(|i| i.keys.contains(key, hash))
    }

    /// Starts loading what [`insert`](Self::insert) or
    /// [`contains`](Self::contains) of `hash` will read.
    pub fn prefetch(&self, hash: KeyHash) {
        self.pending.slots.prefetch(hash);
    }

    /// Adds a key that is not stored and not here.
    pub fn insert(&mut self, key: UserKey, hash: KeyHash) {
        self.pending.insert(key, hash);
    }

    /// Records that `index`'s `commits` entry holds keys added here.
    pub fn note_commit(&mut self, index: CommitIndex) {
        if self.pending.commits.insert(index) {
            self.write_start.commits.push(index);
        }
    }

    /// Undoes what the write in progress added since
    /// [`begin_write`](Self::begin_write).
    pub fn roll_back(&mut self) {
        let start = std::mem::take(&mut self.write_start);
        self.pending.truncate(start.keys, &start.commits);
    }

    /// Notes where a write starts, and returns the commits that no longer
    /// hold unindexed keys for it to unmark: those of finished ingestions
    /// that no pending key came back to.
    pub fn begin_write(&mut self) -> Vec<CommitIndex> {
        self.write_start = WriteMark {
            keys: self.pending.len(),
            commits: Vec::new(),
        };
        self.poll(false);
        let indexed = std::mem::take(&mut self.indexed);
        indexed
            .into_iter()
            .filter(|index| !self.pending.commits.contains(index))
            .collect()
    }

    /// After a durable write: hands the pending keys to the indexer once
    /// there are enough, and waits for it if it has fallen far behind.
    pub fn seal_if_full(&mut self) {
        if self.pending.len() < self.batch_keys {
            return;
        }
        let behind = self.pending.len() >= self.batch_keys * MAX_BATCHES_WAITING;
        self.poll(behind);
        if self.ingesting.is_some() {
            return;
        }
        let Some(jobs) = &self.jobs else { return };
        let full = UnindexedKeys::with_capacity(self.batch_keys);
        let keys = Arc::new(std::mem::replace(&mut self.pending, full));
        if jobs.send(Arc::clone(&keys)).is_ok() {
            self.ingesting = Some(Ingesting {
                keys,
                started: Instant::now(),
            });
        } else {
            tracing::error!("the item indexer has stopped; keys stay in memory");
            self.pending = Arc::into_inner(keys).unwrap_or_default();
            self.jobs = None;
        }
    }

    /// Notes a finished ingestion, waiting for it if `wait`.
    fn poll(&mut self, wait: bool) {
        let Some(ingesting) = &self.ingesting else {
            return;
        };
        let since = Instant::now();
        let received = if wait {
            self.done.recv().map_err(|_| TryRecvError::Disconnected)
        } else {
            self.done.try_recv()
        };
        match received {
            Ok(()) => {}
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => {
                // The sealed keys stay here, so lookups still find them.
                if self.jobs.take().is_some() {
                    tracing::error!("the item indexer has stopped; new keys stay in memory");
                }
                return;
            }
        }
        if wait {
            tracing::warn!(
                waited_ms = since.elapsed().as_millis() as u64,
                "writes waited for the item indexer"
            );
        }
        tracing::debug!(
            keys = ingesting.keys.len(),
            took_ms = ingesting.started.elapsed().as_millis() as u64,
            "item keys indexed"
        );
        if let Some(done) = self.ingesting.take() {
            self.indexed.extend(done.keys.commits.iter().copied());
        }
    }

    /// Stops the indexer once an ingestion in progress has finished. The
    /// store does this before it closes the database: an ingestion that
    /// finishes after fjall stopped its workers leaves the database locked
    /// until the process exits (seen with fjall 3.1).
    pub fn stop(&mut self) {
        self.jobs = None;
        if let Some(indexer) = self.indexer.take() {
            drop(indexer.join());
        }
    }
}

impl Drop for IndexBacklog {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ingest(items: &Keyspace, keys: &UnindexedKeys) -> fjall::Result<()> {
    let mut ingestion = items.start_ingestion()?;
    for key in keys.sorted() {
        ingestion.write(key.clone(), [])?;
    }
    ingestion.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> (UserKey, KeyHash) {
        let key = UserKey::from(format!("tenant/item-{n}").as_bytes());
        let hash = KeyHash::of(&key);
        (key, hash)
    }

    #[test]
    fn a_failed_write_leaves_no_key_behind() {
        let mut keys = UnindexedKeys::default();
        for n in 0..100 {
            let (key, hash) = key(n);
            keys.insert(key, hash);
        }
        keys.commits.insert(CommitIndex(1));
        keys.commits.insert(CommitIndex(2));
        keys.truncate(40, &[CommitIndex(2)]);
        assert_eq!(keys.len(), 40);
        for n in 0..100 {
            let (key, hash) = key(n);
            assert_eq!(keys.contains(&key, hash), n < 40, "key {n}");
        }
        assert_eq!(keys.commits, BTreeSet::from([CommitIndex(1)]));
        // The table still finds what is added after.
        let (again, hash) = key(70);
        keys.insert(again.clone(), hash);
        assert!(keys.contains(&again, hash));
    }

    #[test]
    fn keys_come_out_sorted_once() {
        let mut keys = UnindexedKeys::default();
        for n in [5, 7, 9, 1, 2, 8, 3] {
            let (key, hash) = key(n);
            keys.insert(key, hash);
        }
        let sorted: Vec<String> = keys
            .sorted()
            .into_iter()
            .map(|k| String::from_utf8(k.to_vec()).unwrap())
            .collect();
        let mut expected = sorted.clone();
        expected.sort();
        expected.dedup();
        assert_eq!(sorted, expected);
        assert_eq!(sorted.len(), 7);
    }
}
