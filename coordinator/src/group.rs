//! What this coordinator tells clients about the group of coordinators
//! that replicate the decision log: who leads, and each one's role and
//! place in the log, for `GET /cluster` and `GET /health`. A coordinator
//! alone is its group's leader, and its decision log is the whole log.

use crate::config::ClusterPeers;
use tally_common::api::{CoordinatorRole, CoordinatorStatus};
use tally_common::CommitIndex;

/// The group as this coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// This coordinator's own role.
    pub role: CoordinatorRole,
    /// The leader's URL, when there is one.
    pub leader: Option<String>,
    /// Every coordinator, in `--peers` order.
    pub coordinators: Vec<CoordinatorStatus>,
}

/// The group's status from this coordinator's own state. Alone, it leads
/// and holds the log up to its decided index. In a group, nothing here
/// knows the consensus yet: it names no leader, itself a candidate and
/// the others unreachable, until the consensus reports their roles.
pub fn status(peers: &ClusterPeers, decided: CommitIndex) -> GroupStatus {
    if peers.is_single() {
        return GroupStatus {
            role: CoordinatorRole::Leader,
            leader: Some(peers.my_url().to_string()),
            coordinators: vec![CoordinatorStatus {
                url: peers.my_url().to_string(),
                role: CoordinatorRole::Leader,
                log_index: decided.0,
                lag: 0,
            }],
        };
    }
    let coordinators = peers
        .peers
        .iter()
        .enumerate()
        .map(|(i, url)| CoordinatorStatus {
            url: url.clone(),
            role: if i == peers.me {
                CoordinatorRole::Candidate
            } else {
                CoordinatorRole::Unreachable
            },
            log_index: if i == peers.me { decided.0 } else { 0 },
            lag: 0,
        })
        .collect();
    GroupStatus {
        role: CoordinatorRole::Candidate,
        leader: None,
        coordinators,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinator_alone_leads_with_the_whole_log() {
        let alone = ClusterPeers::single("http://127.0.0.1:8080".into());
        let status = status(&alone, CommitIndex(42));
        assert_eq!(status.role, CoordinatorRole::Leader);
        assert_eq!(status.leader.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(
            status.coordinators,
            [CoordinatorStatus {
                url: "http://127.0.0.1:8080".into(),
                role: CoordinatorRole::Leader,
                log_index: 42,
                lag: 0,
            }]
        );
    }

    #[test]
    fn a_group_lists_every_peer_in_order_and_claims_no_leader_on_its_own() {
        let peers = ClusterPeers {
            peers: vec!["http://a".into(), "http://b".into(), "http://c".into()],
            me: 1,
        };
        let status = status(&peers, CommitIndex(7));
        assert_eq!(status.leader, None);
        let roles: Vec<_> = status
            .coordinators
            .iter()
            .map(|c| (c.url.as_str(), c.role))
            .collect();
        assert_eq!(
            roles,
            [
                ("http://a", CoordinatorRole::Unreachable),
                ("http://b", CoordinatorRole::Candidate),
                ("http://c", CoordinatorRole::Unreachable),
            ]
        );
    }
}
