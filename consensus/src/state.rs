//! The replicated state machine: what every coordinator's Raft log, applied
//! in order, adds up to. It is exactly what a single coordinator's decision
//! log holds ([`RestoredLog`]): the highest decided commit index, the
//! commit decisions not trimmed and the membership with its in-sync set.
//! Each log entry is one [`LogWrite`] of the leader's core, so group commit
//! stays one replicated append per decision batch.

use crate::Error;
use serde::{Deserialize, Serialize};
use tally_common::coordinator::{LogWrite, RestoredLog};
use tally_common::membership::StoredMember;
use tally_common::{CommitIndex, CounterId, Incarnation, TxnId};

/// The decision state at some applied index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionState {
    pub decided: CommitIndex,
    /// In index order.
    pub decisions: Vec<(TxnId, CommitIndex)>,
    pub members: Vec<StoredMember>,
}

impl DecisionState {
    /// Applies one committed entry, as `coordinator/src/log.rs` applies a
    /// write to its redb tables.
    pub fn apply(&mut self, write: &LogWrite) {
        self.decisions.extend(write.commits.iter().copied());
        if let Some(decided) = write.decided {
            self.decided = self.decided.max(decided);
        }
        if let Some(members) = &write.members {
            self.members = members.clone();
        }
        if let Some(upto) = write.trim {
            self.decisions.retain(|(_, index)| *index > upto);
        }
    }

    /// What a leader's core starts from: this state, in the leader's epoch.
    pub fn restored(&self, epoch: u64) -> RestoredLog {
        RestoredLog {
            epoch,
            decided: self.decided,
            decisions: self.decisions.clone(),
            members: self.members.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let wire = StateWire {
            decided: self.decided.0,
            decisions: self.decisions.iter().map(|(t, i)| (t.0, i.0)).collect(),
            members: self.members.iter().map(MemberWire::from).collect(),
        };
        postcard::to_stdvec(&wire).expect("encoding to a Vec cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.is_empty() {
            return Ok(DecisionState::default());
        }
        let wire: StateWire = postcard::from_bytes(bytes).map_err(Error::Corrupt)?;
        Ok(DecisionState {
            decided: CommitIndex(wire.decided),
            decisions: wire
                .decisions
                .into_iter()
                .map(|(t, i)| (TxnId(t), CommitIndex(i)))
                .collect(),
            members: wire.members.into_iter().map(StoredMember::from).collect(),
        })
    }
}

/// One log entry's payload.
pub fn encode_write(write: &LogWrite) -> Vec<u8> {
    let wire = WriteWire {
        commits: write.commits.iter().map(|(t, i)| (t.0, i.0)).collect(),
        decided: write.decided.map(|d| d.0),
        members: write
            .members
            .as_ref()
            .map(|m| m.iter().map(MemberWire::from).collect()),
        trim: write.trim.map(|t| t.0),
    };
    postcard::to_stdvec(&wire).expect("encoding to a Vec cannot fail")
}

pub fn decode_write(bytes: &[u8]) -> Result<LogWrite, Error> {
    let wire: WriteWire = postcard::from_bytes(bytes).map_err(Error::Corrupt)?;
    Ok(LogWrite {
        commits: wire
            .commits
            .into_iter()
            .map(|(t, i)| (TxnId(t), CommitIndex(i)))
            .collect(),
        decided: wire.decided.map(CommitIndex),
        members: wire
            .members
            .map(|m| m.into_iter().map(StoredMember::from).collect()),
        trim: wire.trim.map(CommitIndex),
    })
}

// The wire forms are separate from the core's types so that the core's
// types can change without changing what is on disk and on the network.

#[derive(Serialize, Deserialize)]
struct StateWire {
    decided: u64,
    decisions: Vec<(u64, u64)>,
    members: Vec<MemberWire>,
}

#[derive(Serialize, Deserialize)]
struct WriteWire {
    commits: Vec<(u64, u64)>,
    decided: Option<u64>,
    members: Option<Vec<MemberWire>>,
    trim: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct MemberWire {
    id: String,
    url: String,
    in_sync: bool,
    incarnation: Option<u64>,
}

impl From<&StoredMember> for MemberWire {
    fn from(m: &StoredMember) -> Self {
        MemberWire {
            id: m.id.0.clone(),
            url: m.url.clone(),
            in_sync: m.in_sync,
            incarnation: m.incarnation.map(|i| i.0),
        }
    }
}

impl From<MemberWire> for StoredMember {
    fn from(m: MemberWire) -> Self {
        StoredMember {
            id: CounterId(m.id),
            url: m.url,
            in_sync: m.in_sync,
            incarnation: m.incarnation.map(Incarnation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_and_a_state_survive_encoding() {
        let write = LogWrite {
            commits: vec![(TxnId(5), CommitIndex(3))],
            decided: Some(CommitIndex(3)),
            members: Some(vec![StoredMember {
                id: CounterId::from("c1"),
                url: "http://c1".into(),
                in_sync: true,
                incarnation: Some(Incarnation(9)),
            }]),
            trim: Some(CommitIndex(1)),
        };
        assert_eq!(decode_write(&encode_write(&write)).unwrap(), write);
        let mut state = DecisionState::default();
        state.apply(&write);
        assert_eq!(DecisionState::decode(&state.encode()).unwrap(), state);
        assert!(DecisionState::decode(b"\xff\xff").is_err());
    }

    #[test]
    fn applying_trims_and_raises_like_the_single_log() {
        let mut state = DecisionState::default();
        state.apply(&LogWrite {
            commits: vec![(TxnId(1), CommitIndex(1)), (TxnId(2), CommitIndex(2))],
            decided: Some(CommitIndex(2)),
            ..Default::default()
        });
        state.apply(&LogWrite {
            trim: Some(CommitIndex(2)),
            ..Default::default()
        });
        assert!(state.decisions.is_empty());
        assert_eq!(state.decided, CommitIndex(2), "a trim never lowers decided");
    }
}
