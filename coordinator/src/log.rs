//! The coordinator's durable state in redb: its epoch, the highest decided
//! commit index, the commit decisions not yet trimmed, and the membership
//! with the in-sync set. Presumed abort: a transaction with no decision here
//! was aborted.

use crate::error::Error;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tally_common::coordinator::{LogWrite, RestoredLog};
use tally_common::membership::StoredMember;
use tally_common::{CommitIndex, CounterId, Incarnation, TxnId};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DECISIONS: TableDefinition<u64, u64> = TableDefinition::new("decisions");
const MEMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("members");
const EPOCH: &str = "epoch";
const DECIDED: &str = "decided";

#[derive(Serialize, Deserialize)]
struct MemberRecord {
    url: String,
    in_sync: bool,
    /// Absent in logs written before incarnations existed: the member's
    /// next registration then tells it.
    #[serde(default)]
    incarnation: Option<u64>,
}

pub struct DecisionLog {
    db: Database,
}

impl DecisionLog {
    /// Opens the log and starts a new epoch, so transaction ids of this run
    /// never collide with those of an earlier one.
    pub fn open(dir: &Path) -> Result<(Self, RestoredLog), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Storage(e.into()))?;
        let db = Database::create(dir.join("coordinator.redb"))?;
        let txn = db.begin_write()?;
        let restored = {
            let mut meta = txn.open_table(META)?;
            let epoch = meta.get(EPOCH)?.map_or(0, |v| v.value()) + 1;
            meta.insert(EPOCH, epoch)?;
            let decided = CommitIndex(meta.get(DECIDED)?.map_or(0, |v| v.value()));
            let mut decisions = Vec::new();
            for entry in txn.open_table(DECISIONS)?.iter()? {
                let (txn, index) = entry?;
                decisions.push((TxnId(txn.value()), CommitIndex(index.value())));
            }
            decisions.sort_by_key(|(_, index)| *index);
            let mut members = Vec::new();
            for entry in txn.open_table(MEMBERS)?.iter()? {
                let (id, record) = entry?;
                let record: MemberRecord = serde_json::from_slice(record.value())?;
                members.push(StoredMember {
                    id: CounterId(id.value().to_string()),
                    url: record.url,
                    in_sync: record.in_sync,
                    incarnation: record.incarnation.map(Incarnation),
                });
            }
            RestoredLog {
                epoch,
                decided,
                members,
                decisions,
            }
        };
        txn.commit()?;
        Ok((DecisionLog { db }, restored))
    }

    /// Makes one write of the core durable (one fsync): its commit
    /// decisions, the decided index, the membership and the trim together.
    pub fn write(&self, write: &LogWrite) -> Result<(), Error> {
        let mut batch = self.begin()?;
        for (txn, index) in &write.commits {
            batch.log_commit(*txn, *index)?;
        }
        if let Some(decided) = write.decided {
            batch.raise_decided(decided)?;
        }
        if let Some(members) = &write.members {
            batch.save_members(members)?;
        }
        if let Some(upto) = write.trim {
            batch.trim(upto)?;
        }
        batch.commit()
    }

    /// Starts one durable batch; only one is open at a time.
    pub fn begin(&self) -> Result<Batch, Error> {
        Ok(Batch {
            txn: self.db.begin_write()?,
        })
    }

    #[cfg(test)]
    /// The logged commit index of `txn`, if it committed and is not trimmed.
    pub fn decision(&self, txn: TxnId) -> Result<Option<CommitIndex>, Error> {
        use redb::ReadableDatabase;
        let read = self.db.begin_read()?;
        let decisions = read.open_table(DECISIONS)?;
        Ok(decisions.get(txn.0)?.map(|v| CommitIndex(v.value())))
    }
}

/// One write transaction on the log: decisions, membership and trims made
/// durable together by [`Batch::commit`].
pub struct Batch {
    txn: WriteTransaction,
}

impl Batch {
    /// Logs that `txn` committed at `index`; [`Batch::raise_decided`] must
    /// follow with the batch's highest index.
    pub fn log_commit(&mut self, txn: TxnId, index: CommitIndex) -> Result<(), Error> {
        self.txn.open_table(DECISIONS)?.insert(txn.0, index.0)?;
        Ok(())
    }

    /// Records `index` as the highest decided commit, unless a higher one
    /// already is: trimming may empty the decisions table, and a restart
    /// must still number new commits above every one ever decided.
    pub fn raise_decided(&mut self, index: CommitIndex) -> Result<(), Error> {
        let mut meta = self.txn.open_table(META)?;
        let decided = meta.get(DECIDED)?.map_or(0, |v| v.value());
        if index.0 > decided {
            meta.insert(DECIDED, index.0)?;
        }
        Ok(())
    }

    /// Replaces the stored membership with `members`.
    pub fn save_members(&mut self, members: &[StoredMember]) -> Result<(), Error> {
        let mut table = self.txn.open_table(MEMBERS)?;
        table.retain(|_, _| false)?;
        for m in members {
            let record = serde_json::to_vec(&MemberRecord {
                url: m.url.clone(),
                in_sync: m.in_sync,
                incarnation: m.incarnation.map(|i| i.0),
            })?;
            table.insert(m.id.0.as_str(), record.as_slice())?;
        }
        Ok(())
    }

    /// Forgets decisions at or below `upto`: every in-sync counter has them.
    pub fn trim(&mut self, upto: CommitIndex) -> Result<usize, Error> {
        let mut table = self.txn.open_table(DECISIONS)?;
        let before = table.len()?;
        table.retain(|_, index| index > upto.0)?;
        Ok((before - table.len()?) as usize)
    }

    /// Makes the batch durable (one fsync).
    pub fn commit(self) -> Result<(), Error> {
        self.txn.commit()?;
        Ok(())
    }
}

/// Recovery of a lost decision log: an empty log (its first epoch, nothing
/// decided, no members) is started at `decided`, durably, so counters that
/// applied commits up to it may register again. Decisions of transactions
/// still in doubt are gone: presumed abort answers "aborted" for them, and
/// a counter that applied one keeps it, since it copies by commit index
/// from whichever counter is promoted. A log that holds anything is
/// refused: this is for a lost log only.
pub fn recover_decided(
    log: &DecisionLog,
    mut restored: RestoredLog,
    decided: CommitIndex,
) -> Result<RestoredLog, Error> {
    let empty = restored.epoch == 1
        && restored.decided == CommitIndex(0)
        && restored.decisions.is_empty()
        && restored.members.is_empty();
    if !empty {
        return Err(Error::Conflict(format!(
            "--recover-decided-index is for a lost decision log, and this one is not empty \
             (decided {}, {} members, epoch {}): start without it",
            restored.decided,
            restored.members.len(),
            restored.epoch
        )));
    }
    let mut batch = log.begin()?;
    batch.raise_decided(decided)?;
    batch.commit()?;
    tracing::warn!(
        %decided,
        "decision log recovered: commits up to this index count as decided; promote the most \
         complete counter by hand (docs/operations.md)"
    );
    restored.decided = decided;
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_membership_and_epochs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (log, restored) = DecisionLog::open(dir.path()).unwrap();
        assert_eq!(restored.epoch, 1);
        let mut batch = log.begin().unwrap();
        batch.log_commit(TxnId(7), CommitIndex(1)).unwrap();
        batch.log_commit(TxnId(8), CommitIndex(2)).unwrap();
        batch.raise_decided(CommitIndex(2)).unwrap();
        batch
            .save_members(&[StoredMember {
                id: CounterId::from("c1"),
                url: "http://c1".into(),
                in_sync: true,
                incarnation: Some(Incarnation(7)),
            }])
            .unwrap();
        batch.commit().unwrap();
        let mut batch = log.begin().unwrap();
        assert_eq!(batch.trim(CommitIndex(1)).unwrap(), 1);
        batch.commit().unwrap();
        assert_eq!(log.decision(TxnId(8)).unwrap(), Some(CommitIndex(2)));
        assert_eq!(log.decision(TxnId(7)).unwrap(), None, "trimmed");
        drop(log);

        let (_, restored) = DecisionLog::open(dir.path()).unwrap();
        assert_eq!(restored.epoch, 2);
        assert_eq!(restored.decided, CommitIndex(2));
        assert_eq!(restored.decisions, vec![(TxnId(8), CommitIndex(2))]);
        assert_eq!(restored.members.len(), 1);
        assert!(restored.members[0].in_sync);
        assert_eq!(restored.members[0].incarnation, Some(Incarnation(7)));
    }

    #[test]
    fn only_an_empty_log_is_recovered_and_the_recovery_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (log, restored) = DecisionLog::open(dir.path()).unwrap();
        let recovered = recover_decided(&log, restored, CommitIndex(41)).unwrap();
        assert_eq!(recovered.decided, CommitIndex(41));
        drop(log);
        let (log, restored) = DecisionLog::open(dir.path()).unwrap();
        assert_eq!(restored.decided, CommitIndex(41), "durable");
        let refused = recover_decided(&log, restored, CommitIndex(99));
        assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    }
}
