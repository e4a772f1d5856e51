//! A replicated coordinator's Raft log on disk (redb, `raft.redb` in the
//! data directory): the entries, the hard state (term, vote, commit), the
//! newest snapshot and the "rejoining" mark. One [`PersistWrite`] is one
//! redb transaction and one fsync; the writer folds every write waiting
//! into one transaction (see `mod.rs`).

use crate::error::Error;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use tally_consensus::{Entry, HardState, PersistWrite, RestoredRaft, Snapshot};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const HARD_STATE: &str = "hard_state";
const SNAPSHOT: &str = "snapshot";
const REJOINING: &str = "rejoining";

pub struct RaftDisk {
    db: Database,
}

impl RaftDisk {
    pub fn open(dir: &Path) -> Result<(Self, RestoredRaft), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
        let db = Database::create(dir.join("raft.redb"))?;
        {
            // Create the tables, so a read of a new file finds them.
            let txn = db.begin_write()?;
            txn.open_table(ENTRIES)?;
            txn.open_table(META)?;
            txn.commit()?;
        }
        let read = db.begin_read().map_err(redb::Error::from)?;
        let meta = read.open_table(META)?;
        let hard_state = match meta.get(HARD_STATE)? {
            Some(v) => decode::<HardState>(v.value())?,
            None => HardState::default(),
        };
        let snapshot = match meta.get(SNAPSHOT)? {
            Some(v) => Some(decode::<Snapshot>(v.value())?),
            None => None,
        };
        let rejoining = meta.get(REJOINING)?.is_some_and(|v| v.value() == [1]);
        let mut entries = Vec::new();
        for row in read.open_table(ENTRIES)?.iter()? {
            let (_, bytes) = row?;
            entries.push(decode::<Entry>(bytes.value())?);
        }
        drop(meta);
        drop(read);
        Ok((
            RaftDisk { db },
            RestoredRaft {
                hard_state,
                snapshot,
                entries,
                rejoining,
            },
        ))
    }

    /// Makes `writes` durable together, in order: one transaction, one
    /// fsync.
    pub fn write(&self, writes: &[PersistWrite]) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut entries = txn.open_table(ENTRIES)?;
            let mut meta = txn.open_table(META)?;
            for w in writes {
                if let Some(snapshot) = &w.snapshot {
                    let index = snapshot.get_metadata().index;
                    entries.retain(|i, _| i > index)?;
                    meta.insert(SNAPSHOT, encode(snapshot).as_slice())?;
                }
                if let Some(first) = w.entries.first() {
                    entries.retain(|i, _| i < first.index)?;
                    for e in &w.entries {
                        entries.insert(e.index, encode(e).as_slice())?;
                    }
                }
                if let Some(upto) = w.compact_to {
                    entries.retain(|i, _| i > upto)?;
                }
                if let Some(hs) = &w.hard_state {
                    meta.insert(HARD_STATE, encode(hs).as_slice())?;
                }
                if let Some(rejoining) = w.rejoining {
                    meta.insert(REJOINING, [u8::from(rejoining)].as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

fn encode(m: &impl protobuf::Message) -> Vec<u8> {
    m.write_to_bytes().expect("encoding to a Vec cannot fail")
}

fn decode<M: protobuf::Message>(bytes: &[u8]) -> Result<M, Error> {
    M::parse_from_bytes(bytes)
        .map_err(|e| Error::Io(format!("raft.redb holds a corrupt record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    /// The disk and `RestoredRaft::apply` (what the simulator's disks do)
    /// must agree, or the simulator proves something else than what runs.
    #[test]
    fn the_disk_restores_what_the_simulated_disk_would() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, restored) = RaftDisk::open(dir.path()).unwrap();
        assert!(restored.is_empty());
        let mut model = RestoredRaft::default();
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 2;
        snapshot.mut_metadata().term = 1;
        snapshot.set_data(vec![9, 9].into());
        let writes = vec![
            PersistWrite {
                number: 1,
                hard_state: Some(HardState {
                    term: 1,
                    vote: 2,
                    commit: 0,
                    ..Default::default()
                }),
                entries: vec![entry(1, 1), entry(2, 1), entry(3, 1)],
                rejoining: Some(true),
                ..Default::default()
            },
            // A new leader overwrites index 3.
            PersistWrite {
                number: 2,
                entries: vec![entry(3, 2), entry(4, 2)],
                ..Default::default()
            },
            PersistWrite {
                number: 0,
                snapshot: Some(snapshot),
                compact_to: Some(2),
                rejoining: Some(false),
                ..Default::default()
            },
        ];
        disk.write(&writes[..1]).unwrap();
        disk.write(&writes[1..]).unwrap();
        for w in &writes {
            model.apply(w);
        }
        drop(disk);
        let (_, restored) = RaftDisk::open(dir.path()).unwrap();
        assert_eq!(restored, model);
        assert_eq!(
            restored
                .entries
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<Vec<_>>(),
            vec![(3, 2), (4, 2)]
        );
        assert!(!restored.rejoining);
    }
}
