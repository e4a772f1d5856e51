//! The Raft log as raft-rs reads it: entries, the hard state (term, vote,
//! commit) and the newest snapshot, all in memory. Durability is the
//! caller's: every change here also goes out in a [`PersistWrite`], and a
//! restart rebuilds the store from what was persisted ([`RestoredRaft`]).
//!
//! raft-rs ships a `MemStorage`, but its snapshots carry no data (it takes
//! "commit index" as the snapshot point, which is wrong once applying runs
//! behind persisting); ours carry the decision state at the applied index.

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// What must be durable before the node may go on: the caller writes it
/// (in order, one at a time) and then steps `Input::Persisted(number)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersistWrite {
    pub number: u64,
    pub hard_state: Option<HardState>,
    /// Replace every entry at or above the first one's index by these.
    pub entries: Vec<Entry>,
    /// A snapshot replaces the whole log below and at its index.
    pub snapshot: Option<Snapshot>,
    /// Forget entries at or below this index (a snapshot covers them).
    pub compact_to: Option<u64>,
    /// Set or clear the "rejoining after losing my data" mark.
    pub rejoining: Option<bool>,
}

/// What a coordinator's disk held at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestoredRaft {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// In index order, contiguous, above the snapshot's index.
    pub entries: Vec<Entry>,
    /// It lost its data and has not caught up since (see `node.rs`).
    pub rejoining: bool,
}

impl RestoredRaft {
    /// Nothing was ever persisted here.
    pub fn is_empty(&self) -> bool {
        self.hard_state == HardState::default()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && !self.rejoining
    }

    /// Applies one persisted write, as a disk would: the same rules the
    /// driver's redb store follows, in plain code for the simulator and the
    /// tests.
    pub fn apply(&mut self, write: &PersistWrite) {
        if let Some(snapshot) = &write.snapshot {
            let index = snapshot.get_metadata().index;
            self.entries.retain(|e| e.index > index);
            self.snapshot = Some(snapshot.clone());
        }
        if let Some(first) = write.entries.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend(write.entries.iter().cloned());
        }
        if let Some(upto) = write.compact_to {
            self.entries.retain(|e| e.index > upto);
        }
        if let Some(hs) = &write.hard_state {
            self.hard_state = hs.clone();
        }
        if let Some(rejoining) = write.rejoining {
            self.rejoining = rejoining;
        }
    }
}

/// The in-memory log raft-rs reads through [`Storage`].
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// Covers every index at or below its metadata's index.
    snapshot: Snapshot,
    /// Contiguous, starting right after the snapshot's index.
    entries: Vec<Entry>,
}

impl LogStore {
    pub fn new(voters: Vec<u64>, restored: &RestoredRaft) -> Self {
        let conf_state = ConfState {
            voters,
            ..Default::default()
        };
        let mut snapshot = restored.snapshot.clone().unwrap_or_default();
        snapshot.mut_metadata().set_conf_state(conf_state.clone());
        LogStore {
            hard_state: restored.hard_state.clone(),
            conf_state,
            snapshot,
            entries: restored.entries.clone(),
        }
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    pub fn last_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Appends `entries`, replacing any at or above the first one's index.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let keep = first.index.saturating_sub(self.snapshot_index() + 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    /// Installs a snapshot received from the leader: the log below and at
    /// its index is replaced.
    pub fn apply_snapshot(&mut self, mut snapshot: Snapshot) {
        let meta = snapshot.get_metadata().clone();
        self.entries.retain(|e| e.index > meta.index);
        if self
            .entries
            .first()
            .is_some_and(|e| e.index != meta.index + 1)
        {
            self.entries.clear();
        }
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        snapshot
            .mut_metadata()
            .set_conf_state(self.conf_state.clone());
        self.snapshot = snapshot;
    }

    /// Takes a snapshot at `index` (applied, so in the log) holding `data`,
    /// and forgets the entries it covers.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Snapshot {
        let term = self.term(index).unwrap_or(0);
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_state.clone());
        snapshot.set_metadata(meta);
        self.entries.retain(|e| e.index > index);
        self.snapshot = snapshot.clone();
        snapshot
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > Storage::last_index(self)? + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = self.snapshot_index() + 1;
        let mut out: Vec<Entry> =
            self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        if let Some(max) = max_size.into() {
            // Always at least one entry, as raft-rs's own storage does.
            let mut size = 0u64;
            let mut keep = 0;
            for e in &out {
                size += protobuf::Message::compute_size(e) as u64;
                if keep > 0 && size > max {
                    break;
                }
                keep += 1;
            }
            out.truncate(keep);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snap = self.snapshot.get_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < snap.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entries
            .get((idx - snap.index - 1) as usize)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + self.entries.len() as u64)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        Ok(self.snapshot.clone())
    }
}
