//! Opening the database, the data directory's incarnation, and reading back
//! what the counter rebuilds its memory from after a restart.

use super::dedup::SeenItems;
use super::keys::{decode_u64, u64_key, APPLIED_KEY, INCARNATION_KEY};
use super::{FjallStore, Recovered, StoreOptions};
use crate::error::Error;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use tally_common::applied::AppliedSet;
use tally_common::{CommitIndex, Incarnation, TxnId};

impl FjallStore {
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<Self, Error> {
        Self::open_with(dir, StoreOptions::default())
    }

    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self, Error> {
        if dir.join("counter.redb").exists() {
            // Nothing converts the old file: the replica starts empty and
            // catch-up copies the items back from its peers.
            tracing::warn!(
                dir = %dir.display(),
                "ignoring counter.redb left by an earlier version"
            );
        }
        // Builder defaults, as benchmarked: 32 MiB block cache, LZ4, and
        // min(cores, 4) flush and compaction workers.
        let db = Database::builder(dir.join("fjall")).open()?;
        let keyspace = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let items = SeenItems::items_keyspace(&db)?;
        let meta = keyspace("meta")?;
        let incarnation = Self::incarnation_of(&db, &meta)?;
        let counts = keyspace("counts")?;
        let prepared = keyspace("prepared")?;
        let commits = keyspace("commits")?;
        let unindexed = keyspace("unindexed")?;
        let applied_above = keyspace("applied_above")?;
        let seen = SeenItems::open(&db, items, unindexed, &commits, options)?;
        Ok(FjallStore {
            incarnation,
            seen,
            prepared_in_memory: Mutex::default(),
            counts,
            prepared,
            commits,
            applied_above,
            meta,
            db,
        })
    }

    /// The directory's incarnation, made and made durable on first open. A
    /// directory from before incarnations existed gets one now: it is still
    /// the same disk.
    fn incarnation_of(db: &Database, meta: &Keyspace) -> Result<Incarnation, Error> {
        if let Some(v) = meta.get(INCARNATION_KEY)? {
            return Ok(Incarnation(decode_u64(&v, "incarnation")?));
        }
        let incarnation = Incarnation(random_u64());
        let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(meta, INCARNATION_KEY, u64_key(incarnation.0));
        batch.commit()?;
        tracing::info!(%incarnation, "new data directory");
        Ok(incarnation)
    }

    /// What [`Store::recover`](super::Store::recover) reads: the counts, the
    /// applied set, the prepared transactions and the top of the log, from
    /// one snapshot.
    pub(super) fn read_back(&self) -> Result<Recovered, Error> {
        let snapshot = self.db.snapshot();
        let contiguous = match snapshot.get(&self.meta, APPLIED_KEY)? {
            Some(v) => decode_u64(&v, "applied index")?,
            None => 0,
        };
        let mut above = Vec::new();
        for guard in snapshot.iter(&self.applied_above) {
            above.push(CommitIndex(decode_u64(&guard.key()?, "applied index")?));
        }
        let mut counts = HashMap::new();
        for guard in snapshot.iter(&self.counts) {
            let (tenant, count) = guard.into_inner()?;
            let tenant =
                String::from_utf8(tenant.to_vec()).map_err(|_| Error::CorruptEncoding("tenant"))?;
            counts.insert(tenant, decode_u64(&count, "count")?);
        }
        let mut prepared = Vec::new();
        for guard in snapshot.iter(&self.prepared) {
            prepared.push(TxnId(decode_u64(&guard.key()?, "txn id")?));
        }
        let logged_high = match self.commits.last_key_value() {
            Some(guard) => decode_u64(&guard.key()?, "commit index")?,
            None => 0,
        };
        Ok(Recovered {
            counts,
            applied: AppliedSet::new(CommitIndex(contiguous), above),
            prepared,
            logged_high: CommitIndex(logged_high),
        })
    }
}

/// 64 random bits from the standard library's per-process hash keys, the
/// clock and the process id: enough that two data directories never share
/// an incarnation, with no extra dependency.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{item, open, NOW};
    use super::*;
    use crate::store::{Store, WriteOp};
    use tally_common::participant::Participant;

    #[test]
    fn commit_counts_distinct_ids_and_survives_reopen() {
        let (dir, store) = open();
        let mut applied = Participant::default();
        let items = vec![
            item("a", "t"),
            item("a", "t"),
            item("b", "t"),
            item("a", "u"),
        ];
        store
            .write(
                &mut [WriteOp::Prepare {
                    txn: TxnId(1),
                    items,
                }],
                &mut applied,
                NOW,
            )
            .unwrap();
        let effect = store
            .write(
                &mut [WriteOp::Commit {
                    txn: TxnId(1),
                    index: CommitIndex(1),
                }],
                &mut applied,
                NOW,
            )
            .unwrap();
        assert_eq!(effect.counts["t"], 2);
        assert_eq!(effect.counts["u"], 1);
        assert_eq!(applied.applied().contiguous(), CommitIndex(1));
        drop(store);

        let store = FjallStore::open(dir.path()).unwrap();
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.counts["t"], 2);
        assert_eq!(recovered.applied.contiguous(), CommitIndex(1));
        assert!(recovered.prepared.is_empty());
    }

    #[test]
    fn a_data_directory_keeps_its_incarnation_and_a_new_one_gets_another() {
        let (dir, store) = open();
        let first = store.incarnation();
        drop(store);
        let reopened = FjallStore::open(dir.path()).unwrap();
        assert_eq!(reopened.incarnation(), first);
        let (_other_dir, other) = open();
        assert_ne!(other.incarnation(), first);
    }
}
