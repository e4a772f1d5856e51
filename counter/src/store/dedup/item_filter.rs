//! An in-memory Bloom filter over the stored item keys, so that a new item
//! skips the storage lookup that would only confirm it is new.
//!
//! Most items a counter commits are new, and for each one fjall searched the
//! memtables and asked the filter of every table on disk before the insert:
//! about a third of the writer's time, growing with the data set
//! (docs/benchmarks.md). This filter answers "certainly not stored" for all
//! but about 1% of new keys with one cache line. It never answers "not
//! stored" for a stored key, so counts stay exact: a "maybe" only means the
//! lookup in fjall still runs.
//!
//! The filter is rebuilt from the `items` keyspace on a thread of its own
//! when the store opens ([`FilterState`]), and then grows with it: when the
//! newest layer holds what it was sized for, a layer four times as large
//! takes the next keys. Old layers are never rebuilt, so growth costs no
//! scan; a key is "maybe stored" if any layer says so. Each layer costs a
//! new key one cache miss, hence the steep growth and the large first
//! layer; a restart sizes a single layer for twice the stored keys. Memory
//! is 1.5 bytes per key a layer has room for, so between 1.5 and 8 per
//! stored item, up to `max_bytes`; past that the last layer fills up,
//! answers "maybe" more and more often, and the writer slides back to
//! looking every item up, as it did without a filter.

use std::sync::mpsc::{Receiver, TryRecvError};
use xxhash_rust::xxh3::xxh3_64;

/// Bits per key in each layer: with the split-block layout below this gives
/// about 1-2% false positives at a layer's capacity.
const BITS_PER_KEY: usize = 12;

/// Keys the first layer has room for at least (1.5 MiB).
const MIN_CAPACITY: usize = 1 << 20;

/// How much larger each new layer is than the one before.
const GROWTH: usize = 4;

/// The hash of an item key that the filter works on, and the hash table of
/// keys not yet indexed (`unindexed`), so a key is hashed once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHash(u64);

impl KeyHash {
    pub fn of(key: &[u8]) -> Self {
        KeyHash(xxh3_64(key))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

/// One 512-bit block: a key sets one bit in each of its eight words, so a
/// lookup touches one cache line.
type Block = [u64; 8];

/// Odd constants that spread a hash into the eight words' bit positions
/// (those of the split block Bloom filter of Parquet and Impala).
const SALTS: [u64; 8] = [
    0x47b6_137b_4497_4d91,
    0x8824_ad5b_a2b7_289d,
    0x7054_95c7_2df1_424b,
    0x9efc_4947_5c6b_fb31,
    0x3a7b_c1c5_8d2f_19e7,
    0xd6f1_a8b3_4e6c_20c9,
    0x5b9a_d2e1_f387_6a55,
    0xc48e_6d0f_17b2_3c8b,
];

/// Asks the CPU to start loading the cache line of `value`, so that a
/// lookup a few keys later does not wait for memory.
#[cfg(target_arch = "x86_64")]
pub fn prefetch<T>(value: &T) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch is a hint: it never faults and changes no memory,
    // and the pointer comes from a live reference anyway.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast()) }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn prefetch<T>(_: &T) {}

struct Layer {
    blocks: Vec<Block>,
    capacity: usize,
    keys: usize,
}

impl Layer {
    fn with_capacity(capacity: usize) -> Self {
        let blocks = (capacity * BITS_PER_KEY).div_ceil(512).max(1);
        Layer {
            blocks: vec![[0; 8]; blocks],
            capacity,
            keys: 0,
        }
    }

    fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<Block>()
    }

    /// The block of `hash` (from its high bits) and the bit it sets in each
    /// word (from its low 32 bits, salted per word).
    fn locate(&self, hash: KeyHash) -> (usize, [u64; 8]) {
        let block = ((u128::from(hash.0) * self.blocks.len() as u128) >> 64) as usize;
        let low = hash.0 as u32 as u64;
        let masks = SALTS.map(|salt| 1u64 << (low.wrapping_mul(salt) >> 58));
        (block, masks)
    }

    fn insert(&mut self, hash: KeyHash) {
        let (block, masks) = self.locate(hash);
        for (word, mask) in self.blocks[block].iter_mut().zip(masks) {
            *word |= mask;
        }
        self.keys += 1;
    }

    fn prefetch(&self, hash: KeyHash) {
        let (block, _) = self.locate(hash);
        prefetch(&self.blocks[block]);
    }

    fn may_contain(&self, hash: KeyHash) -> bool {
        let (block, masks) = self.locate(hash);
        self.blocks[block]
            .iter()
            .zip(masks)
            .all(|(word, mask)| word & mask != 0)
    }
}

/// The filter: layers of growing size, the newest taking new keys.
pub struct ItemFilter {
    layers: Vec<Layer>,
    max_bytes: usize,
}

impl ItemFilter {
    /// An empty filter sized for `expected` keys, using at most `max_bytes`
    /// however many keys it is given later (`max_bytes` 0: no filter, every
    /// key is "maybe stored").
    pub fn new(expected: usize, max_bytes: usize) -> Self {
        let mut filter = ItemFilter {
            layers: Vec::new(),
            max_bytes,
        };
        filter.add_layer(expected.max(MIN_CAPACITY));
        filter
    }

    /// Adds a layer for `capacity` keys, or a smaller one if the budget
    /// allows no more; none once the budget is spent.
    fn add_layer(&mut self, capacity: usize) {
        let left = self.max_bytes.saturating_sub(self.bytes());
        let affordable = left * 8 / BITS_PER_KEY;
        if affordable >= 1 << 12 {
            self.layers
                .push(Layer::with_capacity(capacity.min(affordable)));
        }
    }

    /// Memory held by the filter.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(Layer::bytes).sum()
    }

    /// Records a key that is (or is about to be) stored.
    pub fn insert(&mut self, hash: KeyHash) {
        let Some(last) = self.layers.last() else {
            return;
        };
        if last.keys >= last.capacity {
            self.add_layer(last.capacity * GROWTH);
        }
        if let Some(last) = self.layers.last_mut() {
            last.insert(hash);
        }
    }

    /// Starts loading what [`ItemFilter::may_contain`] will read for `hash`.
    /// A large filter costs a cache and TLB miss per layer and key; asking a
    /// few keys ahead overlaps those misses instead of waiting them out one
    /// by one.
    pub fn prefetch(&self, hash: KeyHash) {
        for layer in &self.layers {
            layer.prefetch(hash);
        }
    }

    /// False only if no key with this hash was ever inserted.
    pub fn may_contain(&self, hash: KeyHash) -> bool {
        self.layers.is_empty() || self.layers.iter().any(|layer| layer.may_contain(hash))
    }
}

/// The writer's view of the filter: ready, or being built from the stored
/// keys on another thread while the writer records the keys it inserts
/// meanwhile. A counter with millions of items thus starts serving at once
/// (building took 3.8 s for 9.1 million keys); until the filter arrives,
/// every key is "maybe" and the writer looks items up as it did before it
/// had one.
pub enum FilterState {
    Building {
        inserted_meanwhile: Vec<KeyHash>,
        built: Receiver<ItemFilter>,
    },
    Ready(ItemFilter),
}

impl FilterState {
    /// A state waiting for the filter sent on the other end of `built`.
    pub fn building(built: Receiver<ItemFilter>) -> Self {
        FilterState::Building {
            inserted_meanwhile: Vec::new(),
            built,
        }
    }

    /// Takes the built filter if it has arrived. A build that died leaves
    /// the writer without a filter, as with `TALLY_ITEM_FILTER_MB=0`.
    pub fn poll(&mut self) {
        let FilterState::Building {
            inserted_meanwhile,
            built,
        } = self
        else {
            return;
        };
        let filter = match built.try_recv() {
            Ok(mut filter) => {
                for hash in inserted_meanwhile.drain(..) {
                    filter.insert(hash);
                }
                filter
            }
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => {
                tracing::error!("the item filter was not built; looking every item up");
                ItemFilter::new(0, 0)
            }
        };
        *self = FilterState::Ready(filter);
    }

    #[cfg(test)]
    pub fn is_ready(&self) -> bool {
        matches!(self, FilterState::Ready(_))
    }

    pub fn bytes(&self) -> usize {
        match self {
            FilterState::Ready(filter) => filter.bytes(),
            FilterState::Building { .. } => 0,
        }
    }

    pub fn insert(&mut self, hash: KeyHash) {
        match self {
            FilterState::Ready(filter) => filter.insert(hash),
            FilterState::Building {
                inserted_meanwhile, ..
            } => inserted_meanwhile.push(hash),
        }
    }

    pub fn prefetch(&self, hash: KeyHash) {
        if let FilterState::Ready(filter) = self {
            filter.prefetch(hash);
        }
    }

    pub fn may_contain(&self, hash: KeyHash) -> bool {
        match self {
            FilterState::Ready(filter) => filter.may_contain(hash),
            FilterState::Building { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> KeyHash {
        KeyHash::of(format!("tenant/item-{n}").as_bytes())
    }

    /// The fraction of `n` keys never inserted that the filter says "maybe" to.
    fn false_positive_rate(filter: &ItemFilter, n: usize) -> f64 {
        let hits = (0..n)
            .filter(|i| filter.may_contain(key(usize::MAX - i)))
            .count();
        hits as f64 / n as f64
    }

    #[test]
    fn every_inserted_key_is_maybe_and_few_others_are() {
        let mut filter = ItemFilter::new(100_000, usize::MAX);
        for i in 0..100_000 {
            filter.insert(key(i));
        }
        assert!((0..100_000).all(|i| filter.may_contain(key(i))));
        let rate = false_positive_rate(&filter, 100_000);
        assert!(rate < 0.03, "false positive rate {rate}");
        assert!(filter.bytes() <= MIN_CAPACITY * BITS_PER_KEY / 8 + 64);
    }

    #[test]
    fn growing_past_its_size_adds_layers_and_keeps_every_key() {
        let mut filter = ItemFilter::new(0, usize::MAX);
        let n = MIN_CAPACITY * 2;
        for i in 0..n {
            filter.insert(key(i));
        }
        assert_eq!(filter.layers.len(), 2, "grew by adding a layer");
        assert!((0..n).all(|i| filter.may_contain(key(i))));
        let rate = false_positive_rate(&filter, 100_000);
        assert!(rate < 0.1, "false positive rate {rate}");
    }

    #[test]
    fn at_its_memory_bound_it_stops_growing_and_still_keeps_every_key() {
        let max_bytes = 64 * 1024;
        let mut filter = ItemFilter::new(0, max_bytes);
        let n = 500_000;
        for i in 0..n {
            filter.insert(key(i));
        }
        assert!(filter.bytes() <= max_bytes);
        assert!((0..n).all(|i| filter.may_contain(key(i))));
        // Overfull: most new keys are "maybe", which costs lookups, not counts.
        assert!(false_positive_rate(&filter, 10_000) > 0.5);
    }

    #[test]
    fn keys_inserted_while_the_filter_is_built_are_in_it_once_it_arrives() {
        let (send, built) = std::sync::mpsc::channel();
        let mut state = FilterState::building(built);
        state.insert(key(1));
        state.poll();
        assert!(!state.is_ready());
        assert!(state.may_contain(key(2)), "everything is maybe meanwhile");
        let mut filter = ItemFilter::new(0, usize::MAX);
        filter.insert(key(0));
        send.send(filter).unwrap();
        state.poll();
        assert!(state.is_ready());
        assert!(state.may_contain(key(0)) && state.may_contain(key(1)));
        assert!(!state.may_contain(key(2)));
    }

    #[test]
    fn a_build_that_died_leaves_no_filter() {
        let (send, built) = std::sync::mpsc::channel::<ItemFilter>();
        let mut state = FilterState::building(built);
        drop(send);
        state.poll();
        assert!(state.is_ready());
        assert!(state.may_contain(key(2)));
    }

    #[test]
    fn a_filter_without_memory_says_maybe_to_everything() {
        let mut filter = ItemFilter::new(1000, 0);
        filter.insert(key(1));
        assert_eq!(filter.bytes(), 0);
        assert!(filter.may_contain(key(2)));
    }
}
