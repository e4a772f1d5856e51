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
//! A third rule keeps a counter from being trusted for data it no longer
//! has. The coordinator remembers each member's *incarnation* (the life of
//! its data directory) and trusts a counter only once it has *registered*
//! with the coordinator running now: a counter that comes back with another
//! incarnation leaves the in-sync set and copies everything, and health
//! answers never promote anyone. Only registered in-sync counters vote in
//! [`Cluster::decide`] and answer reads.
//!
//! `Cluster` changes only through the methods below; each returns the
//! [`Effect`]s the caller must carry out (persist, start a catch-up, log).

use crate::api::{
    Availability, CatchUpRequest, ClusterView, CopyProgress, CounterState, CounterView, JoinPlan,
};
use crate::{CommitIndex, CounterId, Incarnation};
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
    /// The life of its data directory, once the counter has told us.
    pub incarnation: Option<Incarnation>,
    /// Registered with this coordinator since it started. An unregistered
    /// counter does not vote and is not read, even if it is in sync: it may
    /// be a process that has not yet noticed this coordinator, or one that
    /// restarted on an empty disk and has not said so yet.
    pub registered: bool,
    /// Its copy from a peer, while it catches up.
    pub copy: Option<CopyProgress>,
    /// Out of sync, but it has finished a pass and reported: what it lacks
    /// now is what was written while it copied. Transactions wait for its
    /// vote (see [`Participant::converging`]).
    pub converging: bool,
    /// Names its current registration (`JoinPlan::registration`): a
    /// catch-up report must echo it.
    pub registration: u64,
}

impl Member {
    /// May vote as an in-sync counter and answer reads.
    fn serves(&self) -> bool {
        self.in_sync && self.registered && self.state == CounterState::Live
    }
}

/// What the durable part of a member is: enough to restore the in-sync set
/// and to recognise a counter that lost its disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    pub id: CounterId,
    pub url: String,
    pub in_sync: bool,
    pub incarnation: Option<Incarnation>,
}

/// What a counter's answer to a health check says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub incarnation: Incarnation,
    pub applied: CommitIndex,
    pub catching_up: bool,
    /// The counter says it registered with this coordinator (its epoch).
    pub registered_here: bool,
    pub copy: Option<CopyProgress>,
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
    /// A counter came back without the data it had (another incarnation,
    /// or an applied index lower than before): it is a new member now.
    LostData { id: CounterId, reason: String },
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
    /// The life of its data directory: a vote from another one is no vote.
    pub incarnation: Option<Incarnation>,
    /// A joiner that has finished a copy pass: wait for its vote as for an
    /// in-sync counter. Otherwise a joiner busy importing misses the short
    /// grace of every transaction, each commit without its vote raises its
    /// `join_until`, and under steady writes every pass only copies what
    /// was written during the one before: a counter that missed 10 million
    /// items never caught up while 8 clients wrote (docs/benchmarks.md).
    /// With its votes counted, the pass after this one is its last.
    pub converging: bool,
}

/// The whole membership state machine.
#[derive(Debug, Clone)]
pub struct Cluster {
    config: MembershipConfig,
    members: BTreeMap<CounterId, Member>,
    decided: CommitIndex,
    /// Decisions at or below this were trimmed: every in-sync counter had
    /// applied them. An in-sync member that comes back below it lost data
    /// (a disk restored from an old backup keeps its incarnation).
    trimmed: CommitIndex,
    /// The last registration number handed out. Numbers start from the
    /// coordinator's epoch shifted left ([`Cluster::number_registrations_from`]),
    /// so a report of an earlier run can never match one of this run.
    registrations: u64,
}

impl Cluster {
    /// Rebuilds the cluster from what the coordinator persisted. In-sync
    /// members start as live and out-of-sync ones as joining, and none is
    /// registered: until a counter registers with this coordinator it
    /// neither votes nor answers reads, so one that lost its disk while the
    /// coordinator was down cannot pass for the member it was.
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
                    incarnation: s.incarnation,
                    registered: false,
                    copy: None,
                    converging: false,
                    registration: 0,
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
            trimmed: CommitIndex::ZERO,
            registrations: 0,
        }
    }

    /// Registration numbers of this run start above `base` (the core uses
    /// its epoch shifted left by 32 bits).
    pub fn number_registrations_from(&mut self, base: u64) {
        self.registrations = self.registrations.max(base);
    }

    /// Decisions up to `upto` are trimmed (or, after a restart, were): every
    /// counter in sync then had applied them.
    pub fn note_trimmed(&mut self, upto: CommitIndex) {
        self.trimmed = self.trimmed.max(upto);
    }

    /// A counter answered that it does not hold the committed transaction
    /// at `index` (a re-sent commit it neither prepared nor applied). It
    /// cannot be in sync: one whose disk was restored from an old backup
    /// keeps its incarnation, and is found out this way. It leaves the set
    /// and copies what it lacks.
    pub fn lacks_commit(&mut self, id: &CounterId, index: CommitIndex) -> Vec<Effect> {
        if cfg!(feature = "mutate-ignore-trim-point") {
            return vec![];
        }
        let decided = self.decided;
        let Some(member) = self.members.get_mut(id) else {
            return vec![];
        };
        member.join_until = member.join_until.max(index);
        if !member.in_sync {
            return vec![];
        }
        let from = member.state;
        member.in_sync = false;
        member.join_until = decided;
        member.catching_up = false;
        member.converging = false;
        if member.state != CounterState::Dead {
            member.state = CounterState::Joining;
        }
        vec![
            Effect::Persist,
            Effect::LostData {
                id: id.clone(),
                reason: format!("it does not hold the transaction committed at {index}"),
            },
            Effect::Transition {
                id: id.clone(),
                from: Some(from),
                to: Some(member.state),
                in_sync: false,
            },
        ]
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
                incarnation: m.incarnation,
            })
            .collect()
    }

    pub fn in_sync_count(&self) -> usize {
        self.members.values().filter(|m| m.in_sync).count()
    }

    /// Counters to ask to prepare a new transaction: every registered one
    /// not dead (an unregistered counter refuses to vote anyway).
    pub fn participants(&self) -> Vec<Participant> {
        self.members
            .values()
            .filter(|m| m.state != CounterState::Dead && m.registered)
            .map(|m| Participant {
                id: m.id.clone(),
                url: m.url.clone(),
                in_sync: m.in_sync,
                incarnation: m.incarnation,
                converging: m.converging && !m.in_sync,
            })
            .collect()
    }

    /// Counters that may answer reads: in sync, registered with this
    /// coordinator and answering health checks.
    pub fn readable(&self) -> Vec<(CounterId, String)> {
        self.readable_members()
            .map(|(id, url)| (id.clone(), url.to_string()))
            .collect()
    }

    /// [`readable`](Self::readable) without copying: for comparing with a
    /// view already published.
    pub fn readable_members(&self) -> impl Iterator<Item = (&CounterId, &str)> {
        self.members
            .values()
            .filter(|m| m.serves())
            .map(|m| (&m.id, m.url.as_str()))
    }

    /// Where a joining counter may copy from.
    fn peers_for(&self, id: &CounterId) -> Vec<String> {
        self.readable()
            .into_iter()
            .filter(|(peer, _)| peer != id)
            .map(|(_, url)| url)
            .collect()
    }

    /// A counter started (or noticed a new coordinator, or was forgotten)
    /// and says which disk it has and how far it got. An in-sync counter
    /// with the same disk keeps its place: a commit made without its vote
    /// would have taken it out of the set, durably, so it missed nothing.
    /// One whose incarnation changed, or whose applied index went back, is
    /// a new member that must copy everything, and so is one that `lacks` a
    /// logged decision above what it applied (a disk restored from an
    /// older copy keeps its incarnation), unless no counter is in sync
    /// and it holds everything decided: then it is the one every other
    /// counter must copy from.
    pub fn register(
        &mut self,
        id: CounterId,
        url: String,
        incarnation: Incarnation,
        applied: CommitIndex,
        lacks: Option<CommitIndex>,
        now_ms: u64,
    ) -> (JoinPlan, Vec<Effect>) {
        let mut effects = vec![Effect::Persist];
        let known = self.members.get(&id);
        let from = known.map(|m| m.state);
        let was_in_sync = known.is_some_and(|m| m.in_sync);
        // Mutation: a disk restored from an older copy keeps its place.
        let (trimmed, lacks) = if cfg!(feature = "mutate-ignore-trim-point") {
            (CommitIndex::ZERO, None)
        } else {
            (self.trimmed, lacks)
        };
        let lost = known.and_then(|m| {
            lost_data(m, incarnation, applied).or_else(|| {
                if !m.in_sync {
                    return None;
                }
                if applied < trimmed {
                    return Some(format!(
                        "it holds up to {applied}, less than every in-sync counter had \
                         applied ({trimmed}): a disk restored from an older copy?"
                    ));
                }
                lacks.map(|index| {
                    format!(
                        "it holds neither the commit at {index} nor its prepared \
                         transaction: a disk restored from an older copy?"
                    )
                })
            })
        });
        // Mutation: a counter back on another disk keeps its place.
        let lost = if cfg!(feature = "mutate-register-ignores-incarnation") {
            None
        } else {
            lost
        };
        let nobody_else_in_sync = !self.members.values().any(|m| m.in_sync && m.id != id);
        let decided = self.decided;
        self.registrations += 1;
        let registration = self.registrations;
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
            incarnation: Some(incarnation),
            registered: false,
            copy: None,
            converging: false,
            registration: 0,
        });
        member.registration = registration;
        member.url = url;
        member.incarnation = Some(incarnation);
        member.applied = applied;
        member.failed_checks = 0;
        member.last_seen_ms = Some(now_ms);
        member.catching_up = false;
        member.registered = true;
        member.copy = None;
        member.converging = false;
        if let Some(reason) = lost.clone() {
            effects.push(Effect::LostData {
                id: id.clone(),
                reason,
            });
        }
        let keeps_place = member.in_sync && lost.is_none();
        let complete = nobody_else_in_sync && applied >= decided;
        if keeps_place || complete {
            member.in_sync = true;
            member.state = CounterState::Live;
        } else {
            member.in_sync = false;
            member.state = CounterState::Joining;
            member.join_until = decided;
            member.catching_up = applied < decided;
        }
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
            in_sync,
            until: decided,
            peers: if in_sync { vec![] } else { self.peers_for(&id) },
            epoch: 0,
            registration,
        };
        (plan, effects)
    }

    /// A joining counter says it fetched everything it was told to. It
    /// enters the in-sync set if nothing was committed without it since.
    /// `None` if the counter is unknown, or is not the registered life of
    /// that member: it must register (again) first.
    pub fn caught_up(
        &mut self,
        id: &CounterId,
        incarnation: Incarnation,
        registration: u64,
        applied: CommitIndex,
        now_ms: u64,
    ) -> Option<(JoinPlan, Vec<Effect>)> {
        let member = self.members.get_mut(id)?;
        // A report sent before the counter registered again speaks for a
        // disk that may be gone: restored from an older copy, it keeps its
        // incarnation, and only the registration tells the two apart.
        let stale = member.registration != registration;
        if !member.registered || member.incarnation != Some(incarnation) || stale {
            return None;
        }
        // The report is the registered disk's own word; a higher figure
        // learned elsewhere may be an earlier life's (a commit answer from
        // before a wipe, delayed in the network), and promoting on it would
        // put an empty disk in the set.
        member.applied = applied;
        member.last_seen_ms = Some(now_ms);
        member.catching_up = false;
        member.copy = None;
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
            epoch: 0,
            registration,
        };
        if !plan.in_sync {
            let member = self.members.get_mut(id)?;
            member.catching_up = true;
            member.converging = true;
        }
        Some((plan, effects))
    }

    fn try_promote(&mut self, id: &CounterId, effects: &mut Vec<Effect>) {
        let Some(member) = self.members.get_mut(id) else {
            return;
        };
        if member.in_sync
            || !member.registered
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

    /// A counter answered a health check with its status. This updates
    /// what the coordinator knows and may start a catch-up, but never puts
    /// a counter in the in-sync set: a health answer proves the process is
    /// up, not what it holds. Only [`Cluster::register`] and
    /// [`Cluster::caught_up`] promote, and both check the incarnation.
    pub fn health_ok(&mut self, id: &CounterId, report: HealthReport, now_ms: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let decided = self.decided;
        let Some(member) = self.members.get_mut(id) else {
            return effects;
        };
        let from = member.state;
        member.failed_checks = 0;
        member.last_seen_ms = Some(now_ms);
        if let Some(reason) = lost_data(member, report.incarnation, member.applied) {
            // Another disk under this name: nothing it held may be assumed,
            // and it must register (its own start-up does) before it counts.
            if member.in_sync {
                effects.push(Effect::Persist);
            }
            member.in_sync = false;
            member.registered = false;
            member.incarnation = Some(report.incarnation);
            member.applied = report.applied;
            member.join_until = decided;
            member.catching_up = false;
            member.copy = None;
            member.converging = false;
            member.state = CounterState::Joining;
            effects.push(Effect::LostData {
                id: id.clone(),
                reason,
            });
            effects.push(Effect::Transition {
                id: id.clone(),
                from: Some(from),
                to: Some(CounterState::Joining),
                in_sync: false,
            });
            return effects;
        }
        // Registered with this coordinator, in the counter's own words. One
        // that restarted, or has not heard of this coordinator yet, says
        // no; it registers again by itself, and counts only once it has.
        // An answer sent just before a registration can arrive just after
        // it, so a later "yes" from the same disk restores the mark: only
        // this coordinator's answer to that very disk can have set it.
        member.registered = report.registered_here && member.incarnation.is_some();
        // Within one incarnation applied only grows; a smaller figure is an
        // answer overtaken by a newer one (a commit acknowledgement).
        member.applied = member.applied.max(report.applied);
        member.catching_up = report.catching_up;
        member.copy = report.copy;
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
        // Mutation: a health answer promotes a counter that says it holds
        // enough, whatever disk it answers from.
        #[cfg(feature = "mutate-health-promotes")]
        if !member.in_sync && member.registered && member.applied >= member.join_until {
            member.in_sync = true;
            member.state = CounterState::Live;
            effects.push(Effect::Persist);
            return effects;
        }
        if !member.in_sync && !member.catching_up && member.registered {
            let (until, registration) = (member.join_until, member.registration);
            let request = CatchUpRequest {
                until,
                peers: self.peers_for(id),
                registration,
            };
            let member = self.members.get_mut(id).expect("checked above");
            member.catching_up = true;
            effects.push(Effect::CatchUp {
                url: member.url.clone(),
                request,
            });
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
        member.copy = None;
        member.converging = false;
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
        // Only registered in-sync counters vote as such: an unregistered
        // one may be a process on an empty disk answering for the member.
        let in_sync: Vec<CounterId> = self
            .members
            .values()
            .filter(|m| m.in_sync)
            .map(|m| m.id.clone())
            .collect();
        let kept = self
            .members
            .values()
            .filter(|m| m.in_sync && m.registered && yes.contains(&m.id))
            .count();
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

    /// Whether reads and writes can be served now, and if not, why, naming
    /// counters and indexes, so an operator knows what to bring back.
    pub fn availability(&self) -> Availability {
        let serving: Vec<&Member> = self.members.values().filter(|m| m.serves()).collect();
        let needed = self.config.min_insync.max(1);
        if serving.len() >= needed {
            return Availability::ok();
        }
        let decided = self.decided;
        let describe = |m: &Member| {
            let mut s = format!("{} ({}", m.id, m.state.name());
            if m.in_sync && !m.registered {
                s.push_str(", not registered with this coordinator yet");
            }
            s.push_str(&format!(", holds up to {}", m.applied));
            if !m.in_sync {
                s.push_str(&format!(", needs {}", m.join_until.max(m.applied)));
            }
            if let Some(copy) = &m.copy {
                s.push_str(&format!(
                    ", copying from {}: {} of about {} items",
                    copy.peer, copy.copied, copy.total
                ));
            }
            s.push(')');
            s
        };
        let in_sync: Vec<String> = self
            .members
            .values()
            .filter(|m| m.in_sync)
            .map(describe)
            .collect();
        let others: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.in_sync)
            .map(describe)
            .collect();
        if !serving.is_empty() {
            return Availability::degraded(format!(
                "writes abort: {} in-sync counter(s) serve, --min-insync needs {needed}",
                serving.len()
            ));
        }
        let mut problem = if in_sync.is_empty() {
            format!(
                "no counter can prove it holds every decided transaction (decided index {decided}); \
                 bring back a counter that was in sync, or, if none will come back, promote the \
                 most complete one by hand, giving up what it lacks (docs/operations.md)"
            )
        } else {
            format!(
                "the counters that hold everything decided (index {decided}) are not serving: {}",
                in_sync.join(", ")
            )
        };
        if !others.is_empty() {
            problem.push_str(&format!("; out of sync: {}", others.join(", ")));
        }
        if self.members.is_empty() {
            problem = "no counter has registered".to_string();
        }
        Availability::stalled(problem)
    }

    /// The operator's last resort when no complete copy can come back:
    /// `id` becomes the complete copy, and every commit above what it holds
    /// is given up. Refused while any counter serves. The caller must first
    /// have `id` take `(held, decided]` as held (the counter's accept-loss
    /// call), then persist. Returns what `id` held.
    pub fn force_promote(&mut self, id: &CounterId) -> Result<(CommitIndex, Vec<Effect>), String> {
        if self.members.values().any(Member::serves) {
            return Err("the cluster is serving: promotion is only for a stalled cluster".into());
        }
        let member = self
            .members
            .get_mut(id)
            .ok_or_else(|| format!("unknown counter {id}"))?;
        if !member.registered || member.state == CounterState::Dead {
            return Err(format!(
                "{id} must be up and registered with this coordinator to be promoted"
            ));
        }
        let held = member.applied;
        let from = member.state;
        member.in_sync = true;
        member.state = CounterState::Live;
        member.applied = self.decided;
        member.catching_up = false;
        member.copy = None;
        Ok((
            held,
            vec![
                Effect::Persist,
                Effect::Transition {
                    id: id.clone(),
                    from: Some(from),
                    to: Some(CounterState::Live),
                    in_sync: true,
                },
            ],
        ))
    }

    /// The `GET /cluster` answer, about the counters: the coordinator fills
    /// in `leader` and `coordinators`, which the membership does not know.
    pub fn view(&self, now_ms: u64) -> ClusterView {
        ClusterView {
            leader: None,
            coordinators: Vec::new(),
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
                    incarnation: m.incarnation,
                    registered: m.registered,
                    catch_up: m.copy.clone(),
                })
                .collect(),
            decided_index: self.decided,
            in_sync: self.in_sync_count(),
            min_insync: self.config.min_insync,
            availability: self.availability(),
        }
    }
}

/// Why `member` cannot be trusted with what it held: its disk is another
/// one, or it reports less than it had already applied.
fn lost_data(member: &Member, incarnation: Incarnation, applied: CommitIndex) -> Option<String> {
    match member.incarnation {
        Some(known) if known != incarnation => Some(format!(
            "its data directory is another one (incarnation {incarnation}, was {known})"
        )),
        _ if applied < member.applied => Some(format!(
            "its applied index went back from {} to {applied}",
            member.applied
        )),
        _ => None,
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

    /// Every test counter's first disk.
    const DISK: Incarnation = Incarnation(1);
    /// A new, empty disk.
    const NEW_DISK: Incarnation = Incarnation(2);

    fn register(c: &mut Cluster, name: &str, applied: u64) -> (JoinPlan, Vec<Effect>) {
        register_disk(c, name, DISK, applied)
    }

    fn register_disk(
        c: &mut Cluster,
        name: &str,
        disk: Incarnation,
        applied: u64,
    ) -> (JoinPlan, Vec<Effect>) {
        c.register(
            id(name),
            format!("http://{name}"),
            disk,
            CommitIndex(applied),
            None,
            0,
        )
    }

    fn caught_up(c: &mut Cluster, name: &str, applied: u64) -> Option<(JoinPlan, Vec<Effect>)> {
        let registration = c.member(&id(name)).map_or(0, |m| m.registration);
        c.caught_up(&id(name), DISK, registration, CommitIndex(applied), 0)
    }

    fn health(disk: Incarnation, applied: u64, catching_up: bool) -> HealthReport {
        HealthReport {
            incarnation: disk,
            applied: CommitIndex(applied),
            catching_up,
            registered_here: true,
            copy: None,
        }
    }

    /// Three counters registered from empty and all in sync.
    fn three_in_sync() -> Cluster {
        let mut c = Cluster::restore(MembershipConfig::default(), [], CommitIndex::ZERO);
        for name in ["c1", "c2", "c3"] {
            let (plan, _) = register(&mut c, name, 0);
            if !plan.in_sync {
                let (plan, _) = caught_up(&mut c, name, 0).unwrap();
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
        let converging = |c: &Cluster| {
            c.participants()
                .iter()
                .any(|p| p.id == CounterId::from("c3") && p.converging)
        };
        assert!(!converging(&c), "not before it finished a pass");
        let (plan, _) = caught_up(&mut c, "c3", 1).unwrap();
        assert!(!plan.in_sync);
        assert_eq!(plan.until, CommitIndex(2));
        assert_eq!(plan.peers, vec!["http://c1", "http://c2"]);
        assert!(converging(&c), "its votes are waited for now");
        let (plan, effects) = caught_up(&mut c, "c3", 2).unwrap();
        assert!(plan.in_sync);
        assert!(effects.contains(&Effect::Persist));
    }

    #[test]
    fn a_restarted_counter_with_its_disk_keeps_its_place_and_a_wiped_one_joins_as_new() {
        let mut c = three_in_sync();
        c.decide(&yes(&["c1", "c2", "c3"]));
        // A commit without c1's vote takes it out durably, so an in-sync
        // counter that restarts on the same disk missed nothing.
        let (plan, _) = register(&mut c, "c1", 1);
        assert!(plan.in_sync, "same disk, still in sync");

        let (plan, effects) = register_disk(&mut c, "c2", NEW_DISK, 0);
        assert!(!plan.in_sync, "a new disk holds nothing");
        assert_eq!(plan.until, CommitIndex(1));
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::LostData { id, .. } if id == &CounterId::from("c2"))));
        assert_eq!(plan.peers, vec!["http://c1", "http://c3"]);

        // Same disk but less than it had reported: it lost data too.
        c.record_applied(&id("c3"), CommitIndex(1));
        let (plan, _) = register(&mut c, "c3", 0);
        assert!(!plan.in_sync, "applied went back");
    }

    #[test]
    fn only_a_counter_holding_everything_decided_restarts_the_cluster() {
        // Everyone dies; the stale counter must not be promoted.
        let mut c = three_in_sync();
        c.decide(&yes(&["c1", "c2", "c3"]));
        c.decide(&yes(&["c2", "c3"]));
        for name in ["c1", "c2", "c3"] {
            c.health_failed(&id(name));
        }
        assert_eq!(c.in_sync_count(), 0);
        assert_eq!(c.availability().status, "stalled");
        let (plan, _) = register(&mut c, "c1", 1);
        assert!(!plan.in_sync, "c1 misses index 2");
        assert!(plan.peers.is_empty());
        let problem = c.availability().problem.unwrap();
        assert!(
            problem.contains("c1 (joining, holds up to 1, needs 2)"),
            "{problem}"
        );
        let (plan, _) = register(&mut c, "c2", 2);
        assert!(plan.in_sync, "c2 holds everything decided");
        assert!(c.availability().is_ok());
        let (plan, _) = caught_up(&mut c, "c1", 1).unwrap();
        assert_eq!(plan.peers, vec!["http://c2"]);
    }

    #[test]
    fn after_a_coordinator_restart_nobody_votes_or_is_read_until_it_registers() {
        let mut c = three_in_sync();
        c.decide(&yes(&["c1", "c2", "c3"]));
        let mut c = Cluster::restore(c.config(), c.stored(), c.decided());
        assert!(c.readable().is_empty());
        assert!(c.participants().is_empty());
        let (d, _) = c.decide(&yes(&["c1", "c2", "c3"]));
        assert!(
            matches!(d, Decision::Abort { .. }),
            "votes of unregistered counters do not count"
        );
        let problem = c.availability().problem.unwrap();
        assert!(problem.contains("not registered"), "{problem}");

        // c1 lost its disk while everything was down: it comes back new.
        let (plan, _) = register_disk(&mut c, "c1", NEW_DISK, 0);
        assert!(!plan.in_sync);
        assert!(c.readable().is_empty(), "c1 cannot be read");
        let (d, _) = c.decide(&yes(&["c1"]));
        assert!(
            matches!(d, Decision::Abort { .. }),
            "c1's vote is no in-sync vote"
        );

        // c2 and c3 come back with their disks and serve again.
        assert!(register(&mut c, "c2", 1).0.in_sync);
        assert!(register(&mut c, "c3", 1).0.in_sync);
        assert_eq!(c.readable().len(), 2);
    }

    #[test]
    fn a_health_answer_never_promotes_and_a_new_disk_leaves_the_set() {
        let mut c = three_in_sync();
        c.decide(&yes(&["c1", "c2", "c3"]));
        c.health_failed(&id("c1"));
        // c1 restarts on an empty disk and answers a health check before it
        // registers: it stays out, whatever it reports.
        let effects = c.health_ok(&id("c1"), health(NEW_DISK, 1, false), 1);
        assert!(effects.iter().any(|e| matches!(e, Effect::LostData { .. })));
        let m = c.member(&id("c1")).unwrap();
        assert!(!m.in_sync && !m.registered);
        assert_eq!(
            m.applied,
            CommitIndex(1),
            "what it says now, not the old figure"
        );

        // An in-sync member whose disk changed under it leaves at once.
        let effects = c.health_ok(&id("c2"), health(NEW_DISK, 0, false), 2);
        assert_eq!(effects[0], Effect::Persist);
        assert!(!c.member(&id("c2")).unwrap().in_sync);

        // Holding everything and saying so in a health answer is not enough:
        // only a caught-up report (after registering) promotes.
        register(&mut c, "c1", 0);
        c.health_ok(&id("c1"), health(DISK, 1, false), 3);
        assert!(!c.member(&id("c1")).unwrap().in_sync);
        assert!(caught_up(&mut c, "c1", 1).unwrap().0.in_sync);
    }

    #[test]
    fn a_disk_restored_from_an_old_copy_is_found_out() {
        // It keeps its incarnation, so only what it holds can tell. Below
        // the trim point (every in-sync counter had applied that much):
        let mut c = three_in_sync();
        for _ in 0..5 {
            c.decide(&yes(&["c1", "c2", "c3"]));
        }
        let mut c = Cluster::restore(c.config(), c.stored(), c.decided());
        c.note_trimmed(CommitIndex(3));
        assert!(
            !register(&mut c, "c1", 2).0.in_sync,
            "older than the trim point"
        );
        assert!(register(&mut c, "c2", 4).0.in_sync);
        // Above it: the coordinator re-sends the logged commits, and a
        // counter that lacks one leaves the set.
        let effects = c.lacks_commit(&id("c2"), CommitIndex(5));
        assert_eq!(effects[0], Effect::Persist);
        let c2 = c.member(&id("c2")).unwrap();
        assert!(!c2.in_sync);
        assert_eq!(c2.join_until, CommitIndex(5));
        assert!(
            c.lacks_commit(&id("c1"), CommitIndex(5)).is_empty(),
            "already out"
        );
    }

    #[test]
    fn a_forced_promotion_is_refused_while_anyone_serves() {
        let mut c = three_in_sync();
        c.decide(&yes(&["c1"]));
        assert!(c.force_promote(&id("c2")).is_err(), "c1 serves");
        c.health_failed(&id("c1"));
        assert_eq!(c.availability().status, "stalled");
        let (held, effects) = c.force_promote(&id("c2")).unwrap();
        assert_eq!(held, CommitIndex::ZERO, "c2 missed index 1");
        assert_eq!(effects[0], Effect::Persist);
        assert!(c.availability().is_ok());
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
        let effects = c.health_ok(&id("c2"), health(DISK, 0, false), 5);
        assert!(effects.iter().any(|e| matches!(
            e,
            Effect::CatchUp { request, .. } if request.until == CommitIndex(1)
        )));
        assert_eq!(c.member(&id("c2")).unwrap().state, CounterState::Joining);
        // A second check while it is fetching does not start another fetch.
        let effects = c.health_ok(&id("c2"), health(DISK, 0, true), 6);
        assert!(!effects.iter().any(|e| matches!(e, Effect::CatchUp { .. })));
        // Done copying: its report, not a health answer, puts it back.
        let (plan, effects) = caught_up(&mut c, "c2", 1).unwrap();
        assert!(plan.in_sync);
        assert!(effects.contains(&Effect::Persist));
    }

    #[test]
    fn a_forgotten_commit_must_be_copied_before_joining() {
        let mut c = three_in_sync();
        // c3 misses index 1, then votes yes on index 2 while joining but
        // never hears the commit.
        c.decide(&yes(&["c1", "c2"]));
        c.decide(&yes(&["c1", "c2", "c3"]));
        c.must_copy(&id("c3"), CommitIndex(2));
        let (plan, _) = caught_up(&mut c, "c3", 1).unwrap();
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
