//! The two candidate engines behind one small trait, each doing exactly the
//! same logical work per commit so that the figures compare engines, not
//! code paths.
//!
//! Data model (identical for both engines; all keys are big-endian so that
//! byte order equals numeric order):
//! - `items`:  key = tenant (u32 BE) ++ item id (16 bytes), value = empty.
//! - `counts`: key = tenant (u32 BE), value = distinct-item count (u64 LE).
//! - `log`:    key = commit index (u64 BE), value = the concatenated keys of
//!   the items that this commit newly added.
//!
//! Durability is the strongest each engine offers per commit: redb's default
//! `Durability::Immediate` (fsync before `commit` returns), and fjall's
//! single-writer transaction with `PersistMode::SyncAll` (journal fsync'd
//! before `commit` returns). The single-writer fjall database is used because
//! it matches redb's model (one serialised writer, MVCC snapshot readers) and
//! gives read-your-own-writes inside the transaction, which the
//! check-then-insert step needs.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::Path;

pub type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Length of one item key: tenant (4 bytes) + id (16 bytes).
pub const ITEM_LEN: usize = 20;
pub type Item = [u8; ITEM_LEN];

pub fn tenant_of(item: &Item) -> u32 {
    u32::from_be_bytes([item[0], item[1], item[2], item[3]])
}

/// What a counter replica needs from its storage engine.
pub trait Engine: Sized {
    const NAME: &'static str;
    /// Opens (creating) a fresh store inside the empty directory `dir`.
    fn open(dir: &Path) -> Res<Self>;
    /// One durable write transaction: dedup + insert each item, bump the
    /// per-tenant counts, append the log record. Returns the number of items
    /// that were new.
    fn commit(&mut self, index: u64, batch: &[Item]) -> Res<usize>;
    /// Reads one tenant's count in its own read transaction / snapshot.
    fn count(&self, tenant: u32) -> Res<u64>;
    /// Scans the whole log in one read transaction / snapshot, decoding
    /// every item in every record (as a replay would); returns
    /// (records, items, checksum of the ids).
    fn scan_log(&self) -> Res<(u64, u64, u64)>;
    /// Closes the store cleanly (drop, which both engines treat as a close).
    fn close(self) -> Res<()>;
}

/// Groups the newly added items of a batch by tenant.
/// Walks the items of one log record: (items, checksum of their ids).
fn decode_record(value: &[u8]) -> (u64, u64) {
    let mut sum = 0u64;
    let mut n = 0u64;
    for chunk in value.chunks_exact(ITEM_LEN) {
        let item: &Item = chunk.try_into().expect("chunk length");
        let id = u64::from_le_bytes(item[4..12].try_into().expect("8 bytes"));
        sum = sum.wrapping_add(id ^ u64::from(tenant_of(item)));
        n += 1;
    }
    (n, sum)
}

fn tenant_deltas(added: &[u8]) -> BTreeMap<u32, u64> {
    let mut deltas = BTreeMap::new();
    for chunk in added.chunks_exact(ITEM_LEN) {
        let item: &Item = chunk.try_into().expect("chunk length");
        *deltas.entry(tenant_of(item)).or_insert(0) += 1;
    }
    deltas
}

// ---------------------------------------------------------------------------
// redb
// ---------------------------------------------------------------------------

mod redb_impl {
    use super::*;
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

    const ITEMS: TableDefinition<&[u8], ()> = TableDefinition::new("items");
    const COUNTS: TableDefinition<u32, u64> = TableDefinition::new("counts");
    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

    pub struct Redb {
        db: Database,
    }

    impl Engine for Redb {
        const NAME: &'static str = "redb";

        fn open(dir: &Path) -> Res<Self> {
            // Builder defaults (1 GiB page cache, 4 KiB pages); every write
            // transaction defaults to Durability::Immediate.
            let db = Database::create(dir.join("replica.redb"))?;
            let txn = db.begin_write()?;
            {
                txn.open_table(ITEMS)?;
                txn.open_table(COUNTS)?;
                txn.open_table(LOG)?;
            }
            txn.commit()?;
            Ok(Self { db })
        }

        fn commit(&mut self, index: u64, batch: &[Item]) -> Res<usize> {
            let txn = self.db.begin_write()?; // Durability::Immediate
            let mut added = Vec::with_capacity(batch.len() * ITEM_LEN);
            {
                let mut items = txn.open_table(ITEMS)?;
                for item in batch {
                    if items.get(&item[..])?.is_none() {
                        items.insert(&item[..], ())?;
                        added.extend_from_slice(item);
                    }
                }
                let mut counts = txn.open_table(COUNTS)?;
                for (tenant, delta) in tenant_deltas(&added) {
                    let cur = counts.get(tenant)?.map(|g| g.value()).unwrap_or(0);
                    counts.insert(tenant, cur + delta)?;
                }
                let mut log = txn.open_table(LOG)?;
                log.insert(index, added.as_slice())?;
            }
            txn.commit()?;
            Ok(added.len() / ITEM_LEN)
        }

        fn count(&self, tenant: u32) -> Res<u64> {
            let txn = self.db.begin_read()?;
            let counts = txn.open_table(COUNTS)?;
            Ok(counts.get(tenant)?.map(|g| g.value()).unwrap_or(0))
        }

        fn scan_log(&self) -> Res<(u64, u64, u64)> {
            let txn = self.db.begin_read()?;
            let log = txn.open_table(LOG)?;
            let (mut records, mut items, mut sum) = (0u64, 0u64, 0u64);
            for entry in log.iter()? {
                let (_k, v) = entry?;
                let (n, s) = decode_record(v.value());
                records += 1;
                items += n;
                sum = sum.wrapping_add(s);
            }
            Ok((records, items, sum))
        }

        fn close(self) -> Res<()> {
            drop(self.db);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// fjall
// ---------------------------------------------------------------------------

mod fjall_impl {
    use super::*;
    use fjall::{
        KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase,
        SingleWriterTxKeyspace,
    };

    pub struct Fjall {
        db: SingleWriterTxDatabase,
        items: SingleWriterTxKeyspace,
        counts: SingleWriterTxKeyspace,
        log: SingleWriterTxKeyspace,
    }

    impl Engine for Fjall {
        const NAME: &'static str = "fjall";

        fn open(dir: &Path) -> Res<Self> {
            // Builder defaults (32 MiB block cache, LZ4, background flush
            // and compaction workers).
            let db = SingleWriterTxDatabase::builder(dir.join("replica.fjall")).open()?;
            let items = db.keyspace("items", KeyspaceCreateOptions::default)?;
            let counts = db.keyspace("counts", KeyspaceCreateOptions::default)?;
            let log = db.keyspace("log", KeyspaceCreateOptions::default)?;
            Ok(Self {
                db,
                items,
                counts,
                log,
            })
        }

        fn commit(&mut self, index: u64, batch: &[Item]) -> Res<usize> {
            // The default for a write transaction is PersistMode::Buffer (OS
            // buffers only); SyncAll makes commit fsync the journal.
            let mut tx = self.db.write_tx().durability(Some(PersistMode::SyncAll));
            let mut added = Vec::with_capacity(batch.len() * ITEM_LEN);
            for item in batch {
                if !tx.contains_key(&self.items, item)? {
                    tx.insert(&self.items, item.to_vec(), []);
                    added.extend_from_slice(item);
                }
            }
            for (tenant, delta) in tenant_deltas(&added) {
                let key = tenant.to_be_bytes();
                let cur = match tx.get(&self.counts, key)? {
                    Some(v) => u64::from_le_bytes(v.as_ref().try_into()?),
                    None => 0,
                };
                tx.insert(
                    &self.counts,
                    key.to_vec(),
                    (cur + delta).to_le_bytes().to_vec(),
                );
            }
            let n = added.len() / ITEM_LEN;
            tx.insert(&self.log, index.to_be_bytes().to_vec(), added);
            tx.commit()?;
            Ok(n)
        }

        fn count(&self, tenant: u32) -> Res<u64> {
            let snap = self.db.read_tx();
            Ok(match snap.get(&self.counts, tenant.to_be_bytes())? {
                Some(v) => u64::from_le_bytes(v.as_ref().try_into()?),
                None => 0,
            })
        }

        fn scan_log(&self) -> Res<(u64, u64, u64)> {
            let snap = self.db.read_tx();
            let (mut records, mut items, mut sum) = (0u64, 0u64, 0u64);
            for guard in snap.iter(&self.log) {
                let (_k, v) = guard.into_inner()?;
                let (n, s) = decode_record(&v);
                records += 1;
                items += n;
                sum = sum.wrapping_add(s);
            }
            Ok((records, items, sum))
        }

        fn close(self) -> Res<()> {
            // Dropping the last handle persists the journal and stops the
            // background workers.
            drop((self.items, self.counts, self.log));
            drop(self.db);
            Ok(())
        }
    }
}

pub use fjall_impl::Fjall;
pub use redb_impl::Redb;
