//! Membership events: health rounds, registrations, catch-up reports and
//! the operator's promotion, fed to `Cluster`, whose changes are made
//! durable before anyone acts on them.

use super::{
    Action, CoordinatorCore, CoreConfig, Holdings, JoinRefused, Millis, Notice, RequestId, Target,
};
use crate::membership::HealthReport;
use crate::{CommitIndex, CounterId, Incarnation, TxnId};
use std::collections::HashSet;

/// When the next health round is due, and which checks are still out (a
/// counter is not asked again while its last check has not answered, so a
/// hung counter costs one outstanding check, not one per round).
#[derive(Debug)]
pub(super) struct HealthRounds {
    next: Millis,
    outstanding: HashSet<CounterId>,
}

impl HealthRounds {
    /// The first round is due at once: after a restart every counter
    /// re-registers with this epoch at the first check.
    pub(super) fn new(now: Millis, _config: &CoreConfig) -> Self {
        HealthRounds {
            next: now,
            outstanding: HashSet::new(),
        }
    }

    pub(super) fn next_round(&self) -> Millis {
        self.next
    }

    pub(super) fn due(&self, now: Millis) -> bool {
        now >= self.next
    }
}

/// What a registering counter says about itself.
pub(super) struct Hello {
    pub(super) id: CounterId,
    pub(super) url: String,
    pub(super) incarnation: Incarnation,
    pub(super) applied: CommitIndex,
    pub(super) holds: Holdings,
}

impl CoordinatorCore {
    pub(super) fn health_round(&mut self, out: &mut Vec<Action>) {
        self.health.next = self.now.plus(self.config.health_interval_ms);
        let members: Vec<Target> = self
            .cluster
            .members()
            .map(|m| Target {
                id: m.id.clone(),
                url: m.url.clone(),
            })
            .collect();
        for to in members {
            if self.health.outstanding.insert(to.id.clone()) {
                out.push(Action::CheckHealth { to });
            }
        }
    }

    pub(super) fn on_health(
        &mut self,
        counter: CounterId,
        report: Result<HealthReport, String>,
        out: &mut Vec<Action>,
    ) {
        self.health.outstanding.remove(&counter);
        let effects = match report {
            Ok(report) => self.cluster.health_ok(&counter, report, self.wall_ms()),
            Err(error) => {
                out.push(Action::Notice(Notice::HealthFailed {
                    counter: counter.clone(),
                    error,
                }));
                self.cluster.health_failed(&counter)
            }
        };
        self.carry_out(effects, Vec::new(), out);
    }

    pub(super) fn on_register(&mut self, request: RequestId, hello: Hello, out: &mut Vec<Action>) {
        let Hello {
            id,
            url,
            incarnation,
            applied,
            holds,
        } = hello;
        if self.refused_claim(request, applied, out) {
            return;
        }
        let now = self.wall_ms();
        let lacks = self.first_lacked(applied, &holds);
        let (mut plan, effects) =
            self.cluster
                .register(id.clone(), url, incarnation, applied, lacks, now);
        plan.epoch = self.config.epoch;
        let then = vec![
            Action::Notice(Notice::Registered {
                counter: id,
                incarnation,
                applied,
                plan: plan.clone(),
            }),
            Action::Joined {
                request,
                result: Ok(plan),
            },
        ];
        self.carry_out(effects, then, out);
    }

    pub(super) fn on_caught_up(
        &mut self,
        request: RequestId,
        id: CounterId,
        incarnation: Incarnation,
        registration: u64,
        applied: CommitIndex,
        out: &mut Vec<Action>,
    ) {
        if self.refused_claim(request, applied, out) {
            return;
        }
        let now = self.wall_ms();
        match self
            .cluster
            .caught_up(&id, incarnation, registration, applied, now)
        {
            None => out.push(Action::Joined {
                request,
                result: Err(JoinRefused::NotRegistered),
            }),
            Some((mut plan, effects)) => {
                plan.epoch = self.config.epoch;
                let then = vec![Action::Joined {
                    request,
                    result: Ok(plan),
                }];
                self.carry_out(effects, then, out);
            }
        }
    }

    pub(super) fn on_promote(&mut self, request: RequestId, id: CounterId, out: &mut Vec<Action>) {
        match self.cluster.force_promote(&id) {
            Err(reason) => out.push(Action::Promoted {
                request,
                result: Err(reason),
            }),
            Ok((held, effects)) => {
                let then = vec![Action::Promoted {
                    request,
                    result: Ok(held),
                }];
                self.carry_out(effects, then, out);
            }
        }
    }

    /// The lowest logged decision above `applied` that `holds` does not
    /// cover. Every decision above the trim point is logged, so for an
    /// in-sync counter this is exact: one that lacks a decision was not
    /// there for it, whatever its disk says its name is.
    fn first_lacked(&self, applied: CommitIndex, holds: &Holdings) -> Option<CommitIndex> {
        let prepared: HashSet<TxnId> = holds.prepared.iter().copied().collect();
        let applied_above: HashSet<CommitIndex> = holds.applied_above.iter().copied().collect();
        self.decisions
            .iter()
            .filter(|(txn, index)| {
                **index > applied && !prepared.contains(txn) && !applied_above.contains(index)
            })
            .map(|(_, index)| *index)
            .min()
    }

    /// Nobody can have applied what was never decided. A counter claiming
    /// more is lying, or holds another cluster's data (this coordinator's
    /// log was lost): believing it could make it the one everyone copies
    /// from, so such a claim is refused.
    fn refused_claim(
        &self,
        request: RequestId,
        applied: CommitIndex,
        out: &mut Vec<Action>,
    ) -> bool {
        if self.cluster.claim_is_possible(applied) {
            return false;
        }
        out.push(Action::Joined {
            request,
            result: Err(JoinRefused::ImpossibleClaim {
                applied,
                decided: self.cluster.decided(),
            }),
        });
        true
    }

    /// "Last seen" times in the cluster view are shown as ages, so the
    /// core's clock serves.
    fn wall_ms(&self) -> u64 {
        self.now.0
    }
}
