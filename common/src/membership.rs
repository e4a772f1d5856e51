//! The coordinator's view of its counters: who is live, who is in sync, who
//! must catch up to where, and whether a transaction may commit.
//!
//! The in-sync set works like Kafka's ISR: it holds exactly the counters that
//! hold (applied or durably prepared) every committed transaction. Two rules
//! keep that true, and everything else follows from them:
//!
//! * A transaction commits only with the yes votes of at least `min_insync`
//!   in-sync counters, and every in-sync counter that did not vote yes leaves
//!   the set in the same durable step as the decision.
//! * A counter outside the set has a `join_until` index: the highest committed
//!   transaction it did not vote yes on. It enters the set only once it has
//!   applied everything up to there, because every later commit had its vote.
//!
//! `Cluster` changes only through the methods below; each returns the
//! [`Effect`]s the caller must carry out (persist, start a catch-up, log).

use crate::api::{CatchUpRequest, ClusterView, CounterState, CounterView, JoinPlan};
use crate::{CommitIndex, CounterId};
use std::collections::{BTreeMap, BTreeSet};

/// Tunables of the membership rules (the coordinator's flags set them; their defaults are in coordinator/src/config.rs).
#[derive(Debug, Clone, Copy)]
pub struct MembershipConfig {
    pub dead_after: u32,
    pub remove_after: u32,
    pub min_insync: usize,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            dead_after: 1,
            remove_after: 5,
            min_insync: 1,
        }
    }
}

/// One counter as the coordinator tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: CounterId,
    pub url: String,
    pub state: CounterState,
    pub in_sync: bool,
    /// The counter's last reported gap-free applied index.
    pub applied: CommitIndex,
    /// Outside the in-sync set: what the counter must hold before it re-enters.
    pub join_until: CommitIndex,
    pub failed_checks: u32,
    pub last_seen_ms: Option<u64>,
    pub catching_up: bool,
}

/// What the durable part of a member is: enough to restore the in-sync set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    pub id: CounterId,
    pub url: String,
    pub in_sync: bool,
}

/// Something the caller of `Cluster` must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Membership or the in-sync set changed: write `Cluster::stored()`
    /// durably before acting on the change.
    Persist,
    /// Ask the counter at `url` to fetch what it is missing.
    CatchUp {
        url: String,
        request: CatchUpRequest,
    },
    /// A counter changed state; `to` is `None` when it left the view.
    Transition {
        id: CounterId,
        from: Option<CounterState>,
        to: Option<CounterState>,
        in_sync: bool,
    },
}

/// The outcome of the vote on one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Commit {
        index: CommitIndex,
        /// In-sync counters that did not vote yes and left the set.
        dropped: Vec<CounterId>,
    },
    Abort {
        reason: String,
    },
}

/// A counter asked to prepare a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub id: CounterId,
    pub url: String,
    pub in_sync: bool,
}

/// The whole membership state machine.
#[derive(Debug, Clone)]
pub struct Cluster {
    config: MembershipConfig,
    members: BTreeMap<CounterId, Member>,
    decided: CommitIndex,
}

impl Cluster {
    /// Rebuilds the cluster from what the coordinator persisted. In-sync
    /// members start as live and out-of-sync ones as joining; the first
    /// health checks correct both.
    pub fn restore(
        config: MembershipConfig,
        stored: impl IntoIterator<Item = StoredMember>,
        decided: CommitIndex,
    ) -> Self {
        let members = stored
            .into_iter()
            .map(|s| {
                let member = Member {
                    state: if s.in_sync {
                        CounterState::Live
                    } else {
                        CounterState::Joining
                    },
                    in_sync: s.in_sync,
                    applied: CommitIndex::ZERO,
                    join_until: decided,
                    failed_checks: 0,
                    last_seen_ms: None,
                    catching_up: false,
                    id: s.id,
                    url: s.url,
                };
                (member.id.clone(), member)
            })
            .collect();
        Cluster {
            config,
            members,
            decided,
        }
    }

    pub fn config(&self) -> MembershipConfig {
        self.config
    }

    /// The highest commit index assigned so far.
    pub fn decided(&self) -> CommitIndex {
        self.decided
    }

    /// Nobody can have applied what was never decided. A counter claiming
    /// more is lying, or holds another cluster's data (this coordinator's
    /// log was lost): believing it could make it the one everyone copies
    /// from, so such a claim is refused.
    pub fn claim_is_possible(&self, applied: CommitIndex) -> bool {
        applied <= self.decided
    }

    pub fn member(&self, id: &CounterId) -> Option<&Member> {
        self.members.get(id)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The durable part, to persist after an [`Effect::Persist`].
    pub fn stored(&self) -> Vec<StoredMember> {
        self.members
            .values()
            .map(|m| StoredMember {
                id: m.id.clone(),
                url: m.url.clone(),
                in_sync: m.in_sync,
            })
            .collect()
    }

    pub fn in_sync_count(&self) -> usize {
        self.members.values().filter(|m| m.in_sync).count()
    }

    /// Counters to ask to prepare a new transaction: every one not dead.
    pub fn participants(&self) -> Vec<Participant> {
        self.members
            .values()
            .filter(|m| m.state != CounterState::Dead)
            .map(|m| Participant {
                id: m.id.clone(),
                url: m.url.clone(),
                in_sync: m.in_sync,
            })
            .collect()
    }

    /// Counters that may answer reads: in sync and answering health checks.
    pub fn readable(&self) -> Vec<(CounterId, String)> {
        self.members
            .values()
            .filter(|m| m.in_sync && m.state == CounterState::Live)
            .map(|m| (m.id.clone(), m.url.clone()))
            .collect()
    }

    /// Where a joining counter may copy from.
    fn peers_for(&self, id: &CounterId) -> Vec<String> {
        self.readable()
            .into_iter()
            .filter(|(peer, _)| peer != id)
            .map(|(_, url)| url)
            .collect()
    }

    /// A counter started (or was forgotten and came back) and says how far it
    /// got. It leaves the in-sync set, since it may have missed commits while
    /// it was away, unless no counter is in sync and it holds everything
    /// decided: then it is the one every other counter must copy from.
    pub fn register(
        &mut self,
        id: CounterId,
        url: String,
        applied: CommitIndex,
        now_ms: u64,
    ) -> (JoinPlan, Vec<Effect>) {
        let mut effects = vec![Effect::Persist];
        let from = self.members.get(&id).map(|m| m.state);
        let was_in_sync = self.members.get(&id).is_some_and(|m| m.in_sync);
        let nobody_else_in_sync = !self.members.values().any(|m| m.in_sync && m.id != id);
        let member = self.members.entry(id.clone()).or_insert_with(|| Member {
            id: id.clone(),
            url: url.clone(),
            state: CounterState::Joining,
            in_sync: false,
            applied,
            join_until: CommitIndex::ZERO,
            failed_checks: 0,
            last_seen_ms: None,
            catching_up: false,
        });
        member.url = url;
        member.applied = applied;
        member.failed_checks = 0;
        member.last_seen_ms = Some(now_ms);
        member.catching_up = false;
        let plan = if nobody_else_in_sync && applied >= self.decided {
            member.in_sync = true;
            member.state = CounterState::Live;
            JoinPlan {
                in_sync: true,
                until: self.decided,
                peers: vec![],
            }
        } else {
            member.in_sync = false;
            member.state = CounterState::Joining;
            member.join_until = self.decided;
            member.catching_up = applied < self.decided;
            JoinPlan {
                in_sync: false,
                until: self.decided,
                peers: Vec::new(),
            }
        };
        let in_sync = member.in_sync;
        let to = member.state;
        if from != Some(to) || was_in_sync != in_sync {
            effects.push(Effect::Transition {
                id: id.clone(),
                from,
                to: Some(to),
                in_sync,
            });
        }
        let plan = JoinPlan {
            peers: if plan.in_sync {
                vec![]
            } else {
                self.peers_for(&id)
            },
            ..plan
        };
        (plan, effects)
    }

    /// A joining counter says it fetched everything it was told to. It
    /// enters the in-sync set if nothing was committed without it since.
    pub fn caught_up(
        &mut self,
        id: &CounterId,
        applied: CommitIndex,
        now_ms: u64,
    ) -> Option<(JoinPlan, Vec<Effect>)> {
        let member = self.members.get_mut(id)?;
        member.applied = member.applied.max(applied);
        member.last_seen_ms = Some(now_ms);
        member.catching_up = false;
        let mut effects = Vec::new();
        self.try_promote(id, &mut effects);
        let member = &self.members[id];
        let plan = JoinPlan {
            in_sync: member.in_sync,
            until: member.join_until,
            peers: if member.in_sync {
                vec![]
            } else {
                self.peers_for(id)
            },
        };
        if !plan.in_sync {
            self.members.get_mut(id)?.catching_up = true;
        }
        Some((plan, effects))
    }

    fn try_promote(&mut self, id: &CounterId, effects: &mut Vec<Effect>) {
        let Some(member) = self.members.get_mut(id) else {
            return;
        };
        if member.in_sync
            || member.state == CounterState::Dead
            || member.applied < member.join_until
        {
            return;
        }
        let from = member.state;
        member.in_sync = true;
        member.state = CounterState::Live;
        effects.push(Effect::Persist);
        effects.push(Effect::Transition {
            id: id.clone(),
            from: Some(from),
            to: Some(CounterState::Live),
            in_sync: true,
        });
    }

    /// A counter answered a health check (or any other call) with its status.
    pub fn health_ok(
        &mut self,
        id: &CounterId,
        applied: CommitIndex,
        catching_up: bool,
        now_ms: u64,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let decided = self.decided;
        let Some(member) = self.members.get_mut(id) else {
            return effects;
        };
        let from = member.state;
        member.failed_checks = 0;
        member.last_seen_ms = Some(now_ms);
        member.applied = member.applied.max(applied);
        member.catching_up = catching_up;
        member.state = match (from, member.in_sync) {
            (CounterState::Dead, _) => {
                // It may have missed anything while dead: start over.
                member.join_until = decided;
                CounterState::Joining
            }
            (_, true) => CounterState::Live,
            (_, false) => CounterState::Joining,
        };
        if member.state != from {
            effects.push(Effect::Transition {
                id: id.clone(),
                from: Some(from),
                to: Some(member.state),
                in_sync: member.in_sync,
            });
        }
        if !member.in_sync {
            self.try_promote(id, &mut effects);
        }
        let member = &self.members[id];
        if !member.in_sync && !member.catching_up {
            let request = CatchUpRequest {
                until: member.join_until,
                peers: self.peers_for(id),
            };
            let url = member.url.clone();
            self.members.get_mut(id).expect("checked above").catching_up = true;
            effects.push(Effect::CatchUp { url, request });
        }
        effects
    }

    /// A counter failed a health check.
    pub fn health_failed(&mut self, id: &CounterId) -> Vec<Effect> {
        let config = self.config;
        let Some(member) = self.members.get_mut(id) else {
            return vec![];
        };
        member.failed_checks += 1;
        let from = member.state;
        if member.failed_checks >= config.remove_after {
            let in_sync = member.in_sync;
            self.members.remove(id);
            return vec![
                Effect::Persist,
                Effect::Transition {
                    id: id.clone(),
                    from: Some(from),
                    to: None,
                    in_sync,
                },
            ];
        }
        let mut effects = Vec::new();
        let to = if member.failed_checks >= config.dead_after {
            CounterState::Dead
        } else {
            CounterState::Suspect
        };
        member.catching_up = false;
        if to == CounterState::Dead && member.in_sync {
            member.in_sync = false;
            effects.push(Effect::Persist);
        }
        member.state = to;
        if from != to {
            effects.push(Effect::Transition {
                id: id.clone(),
                from: Some(from),
                to: Some(to),
                in_sync: member.in_sync,
            });
        }
        effects
    }

    /// A counter reported progress (in a commit acknowledgement, say).
    pub fn record_applied(&mut self, id: &CounterId, applied: CommitIndex) {
        let applied = applied.min(self.decided);
        if let Some(member) = self.members.get_mut(id) {
            member.applied = member.applied.max(applied);
        }
    }

    /// Decides one transaction from the set of counters that voted yes, and
    /// assigns it the next commit index if it commits. The caller must make
    /// the decision and any [`Effect::Persist`] durable before telling anyone.
    pub fn decide(&mut self, yes: &BTreeSet<CounterId>) -> (Decision, Vec<Effect>) {
        let in_sync: Vec<CounterId> = self
            .members
            .values()
            .filter(|m| m.in_sync)
            .map(|m| m.id.clone())
            .collect();
        let kept = in_sync.iter().filter(|id| yes.contains(*id)).count();
        let needed = self.config.min_insync.max(1);
        if kept < needed {
            let reason = format!(
                "{kept} in-sync counter(s) voted yes out of {} in sync, {needed} needed",
                in_sync.len()
            );
            return (Decision::Abort { reason }, vec![]);
        }
        let index = self.decided.next();
        self.decided = index;
        let mut effects = Vec::new();
        let mut dropped = Vec::new();
        for member in self.members.values_mut() {
            if yes.contains(&member.id) {
                continue;
            }
            member.join_until = member.join_until.max(index);
            if member.in_sync {
                member.in_sync = false;
                member.catching_up = false;
                dropped.push(member.id.clone());
                let from = member.state;
                if member.state != CounterState::Dead {
                    member.state = CounterState::Joining;
                }
                effects.push(Effect::Transition {
                    id: member.id.clone(),
                    from: Some(from),
                    to: Some(member.state),
                    in_sync: false,
                });
            }
        }
        if !dropped.is_empty() {
            effects.insert(0, Effect::Persist);
        }
        (Decision::Commit { index, dropped }, effects)
    }

    /// The coordinator is about to forget the commit at `index`, which `id`
    /// voted for but never acknowledged. Once forgotten, `id` would be told
    /// the transaction aborted, so it must copy that commit from a peer
    /// before it may (re-)enter the in-sync set.
    pub fn must_copy(&mut self, id: &CounterId, index: CommitIndex) {
        if let Some(member) = self.members.get_mut(id) {
            if !member.in_sync {
                member.join_until = member.join_until.max(index);
            }
        }
    }

    /// Decisions at or below this index are applied by every in-sync counter
    /// and may be forgotten. Zero when no counter is in sync.
    pub fn trim_point(&self) -> CommitIndex {
        self.members
            .values()
            .filter(|m| m.in_sync)
            .map(|m| m.applied)
            .min()
            .unwrap_or(CommitIndex::ZERO)
    }

    /// The `GET /cluster` answer.
    pub fn view(&self, now_ms: u64) -> ClusterView {
        ClusterView {
            counters: self
                .members
                .values()
                .map(|m| CounterView {
                    id: m.id.clone(),
                    url: m.url.clone(),
                    state: m.state,
                    in_sync: m.in_sync,
                    applied_index: m.applied,
                    lag: self.decided.0.saturating_sub(m.applied.0),
                    last_seen_ms_ago: m.last_seen_ms.map(|t| now_ms.saturating_sub(t)),
                    failed_checks: m.failed_checks,
                })
                .collect(),
            decided_index: self.decided,
            in_sync: self.in_sync_count(),
            min_insync: self.config.min_insync,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> CounterId {
        CounterId::from(s)
    }

    fn yes(ids: &[&str]) -> BTreeSet<CounterId> {
        ids.iter().map(|s| id(s)).collect()
    }

    /// Three counters registered from empty and all in sync.
    fn three_in_sync() -> Cluster {
        let mut c = Cluster::restore(MembershipConfig::default(), [], CommitIndex::ZERO);
        for name in ["c1", "c2", "c3"] {
            let (plan, _) = c.register(id(name), format!("http://{name}"), CommitIndex::ZERO, 0);
            if !plan.in_sync {
                let (plan, _) = c.caught_up(&id(name), CommitIndex::ZERO, 0).unwrap();
                assert!(plan.in_sync, "{name} holds everything decided");
            }
        }
        assert_eq!(c.in_sync_count(), 3);
        c
    }

    fn commit_index(d: &Decision) -> CommitIndex {
        match d {
            Decision::Commit { index, .. } => *index,
            Decision::Abort { reason } => panic!("aborted: {reason}"),
        }
    }

    #[test]
    fn commit_indexes_are_gap_free_and_aborts_take_none() {
        let mut c = three_in_sync();
        let (d1, _) = c.decide(&yes(&["c1", "c2", "c3"]));
        let (d2, _) = c.decide(&yes(&[]));
        let (d3, _) = c.decide(&yes(&["c1", "c2", "c3"]));
        assert_eq!(commit_index(&d1), CommitIndex(1));
        assert!(matches!(d2, Decision::Abort { .. }));
        assert_eq!(commit_index(&d3), CommitIndex(2));
    }

    #[test]
    fn a_silent_in_sync_counter_leaves_the_set_with_the_decision() {
        let mut c = three_in_sync();
        let (d, effects) = c.decide(&yes(&["c1", "c2"]));
        assert_eq!(
            d,
            Decision::Commit {
                index: CommitIndex(1),
                dropped: vec![id("c3")]
            }
        );
        assert_eq!(effects[0], Effect::Persist, "the drop is persisted first");
        let c3 = c.member(&id("c3")).unwrap();
        assert!(!c3.in_sync);
        assert_eq!(c3.join_until, CommitIndex(1));
        assert!(!c.readable().iter().any(|(i, _)| i == &id("c3")));
    }

    #[test]
    fn min_insync_aborts_when_too_few_in_sync_counters_vote_yes() {
        let mut c = three_in_sync();
        c.config.min_insync = 2;
        let (d, effects) = c.decide(&yes(&["c1"]));
        assert!(matches!(d, Decision::Abort { .. }));
        assert!(effects.is_empty(), "an abort changes no membership");
        assert_eq!(c.in_sync_count(), 3);
        assert_eq!(c.decided(), CommitIndex::ZERO);
    }

    #[test]
    fn a_joining_counter_enters_only_after_holding_what_it_missed() {
        let mut c = three_in_sync();
        // c3 misses index 1 and 2, votes on 3.
        c.decide(&yes(&["c1", "c2"]));
        c.decide(&yes(&["c1", "c2"]));
        c.decide(&yes(&["c1", "c2", "c3"]));
        let (plan, _) = c.caught_up(&id("c3"), CommitIndex(1), 0).unwrap();
        assert!(!plan.in_sync);
        assert_eq!(plan.until, CommitIndex(2));
        assert_eq!(plan.peers, vec!["http://c1", "http://c2"]);
        let (plan, effects) = c.caught_up(&id("c3"), CommitIndex(2), 0).unwrap();
        assert!(plan.in_sync);
        assert!(effects.contains(&Effect::Persist));
    }

    #[test]
    fn a_restarted_counter_rejoins_unless_it_is_the_only_complete_one() {
        let mut c = three_in_sync();
        c.decide(&yes(&["c1", "c2", "c3"]));
        let (plan, _) = c.register(id("c1"), "http://c1".into(), CommitIndex(1), 0);
        assert!(!plan.in_sync, "others are in sync: copy from them first");
        assert_eq!(plan.until, CommitIndex(1));

        // Everyone dies; the stale counter must not be promoted.
        let mut c = three_in_sync();
        c.decide(&yes(&["c1", "c2", "c3"]));
        c.decide(&yes(&["c2", "c3"]));
        for name in ["c1", "c2", "c3"] {
            c.health_failed(&id(name));
        }
        assert_eq!(c.in_sync_count(), 0);
        let (plan, _) = c.register(id("c1"), "http://c1".into(), CommitIndex(1), 0);
        assert!(!plan.in_sync, "c1 misses index 2");
        assert!(plan.peers.is_empty());
        let (plan, _) = c.register(id("c2"), "http://c2".into(), CommitIndex(2), 0);
        assert!(plan.in_sync, "c2 holds everything decided");
        let (plan, _) = c.caught_up(&id("c1"), CommitIndex(1), 0).unwrap();
        assert_eq!(plan.peers, vec!["http://c2"]);
    }

    #[test]
    fn health_failures_walk_suspect_dead_removed() {
        let mut c = three_in_sync();
        c.config.dead_after = 2;
        c.config.remove_after = 3;
        c.health_failed(&id("c1"));
        assert_eq!(c.member(&id("c1")).unwrap().state, CounterState::Suspect);
        assert!(c.member(&id("c1")).unwrap().in_sync);
        let effects = c.health_failed(&id("c1"));
        assert!(effects.contains(&Effect::Persist));
        assert_eq!(c.member(&id("c1")).unwrap().state, CounterState::Dead);
        assert!(!c.participants().iter().any(|p| p.id == id("c1")));
        c.health_failed(&id("c1"));
        assert!(c.member(&id("c1")).is_none());
    }

    #[test]
    fn a_dead_counter_that_answers_rejoins_and_is_told_to_catch_up() {
        let mut c = three_in_sync();
        c.health_failed(&id("c2"));
        c.decide(&yes(&["c1", "c3"]));
        let effects = c.health_ok(&id("c2"), CommitIndex::ZERO, false, 5);
        assert!(effects.iter().any(|e| matches!(
            e,
            Effect::CatchUp { request, .. } if request.until == CommitIndex(1)
        )));
        assert_eq!(c.member(&id("c2")).unwrap().state, CounterState::Joining);
        // A second check while it is fetching does not start another fetch.
        let effects = c.health_ok(&id("c2"), CommitIndex::ZERO, true, 6);
        assert!(!effects.iter().any(|e| matches!(e, Effect::CatchUp { .. })));
        let effects = c.health_ok(&id("c2"), CommitIndex(1), false, 7);
        assert!(effects.contains(&Effect::Persist));
        assert!(c.member(&id("c2")).unwrap().in_sync);
    }

    #[test]
    fn a_forgotten_commit_must_be_copied_before_joining() {
        let mut c = three_in_sync();
        // c3 misses index 1, then votes yes on index 2 while joining but
        // never hears the commit.
        c.decide(&yes(&["c1", "c2"]));
        c.decide(&yes(&["c1", "c2", "c3"]));
        c.must_copy(&id("c3"), CommitIndex(2));
        let (plan, _) = c.caught_up(&id("c3"), CommitIndex(1), 0).unwrap();
        assert!(!plan.in_sync, "holding index 1 is not enough any more");
        assert_eq!(plan.until, CommitIndex(2));
    }

    #[test]
    fn trim_point_is_the_slowest_in_sync_counter() {
        let mut c = three_in_sync();
        c.decide(&yes(&["c1", "c2", "c3"]));
        c.decide(&yes(&["c1", "c2", "c3"]));
        c.record_applied(&id("c1"), CommitIndex(2));
        c.record_applied(&id("c2"), CommitIndex(2));
        c.record_applied(&id("c3"), CommitIndex(1));
        assert_eq!(c.trim_point(), CommitIndex(1));
    }
}
