//! Property: whatever the order of votes, failures, restarts, health checks
//! and catch-ups, every counter in the in-sync set holds every committed
//! transaction, and commit indexes stay gap-free. The test keeps its own
//! model of what each counter holds and checks the membership state machine
//! against it after every event.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use tally_common::membership::{Cluster, Decision, MembershipConfig};
use tally_common::{CommitIndex, CounterId};

const COUNTERS: usize = 3;

#[derive(Debug, Clone)]
enum Event {
    /// A transaction; bit i of the mask: counter i votes yes (if alive).
    Transaction(u8),
    HealthFail(usize),
    HealthOk(usize),
    /// The counter restarts: it registers with what it holds.
    Restart(usize),
    /// The counter copies what its plan says from an in-sync peer and
    /// reports back.
    CatchUp(usize),
    /// The counter loses its disk and restarts.
    Wipe(usize),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => any::<u8>().prop_map(Event::Transaction),
        1 => (0..COUNTERS).prop_map(Event::HealthFail),
        2 => (0..COUNTERS).prop_map(Event::HealthOk),
        1 => (0..COUNTERS).prop_map(Event::Restart),
        2 => (0..COUNTERS).prop_map(Event::CatchUp),
        1 => (0..COUNTERS).prop_map(Event::Wipe),
    ]
}

fn id(i: usize) -> CounterId {
    CounterId(format!("c{i}"))
}

/// The highest index below which the counter holds everything.
fn prefix(held: &BTreeSet<u64>) -> CommitIndex {
    let mut n = 0;
    while held.contains(&(n + 1)) {
        n += 1;
    }
    CommitIndex(n)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn in_sync_counters_hold_every_commit(
        events in proptest::collection::vec(event(), 1..120),
        min_insync in 1usize..=2,
    ) {
        let config = MembershipConfig { dead_after: 1, remove_after: 1000, min_insync };
        let mut cluster = Cluster::restore(config, [], CommitIndex::ZERO);
        let mut held: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
        let mut plan_until: BTreeMap<usize, CommitIndex> = BTreeMap::new();
        for i in 0..COUNTERS {
            held.insert(i, BTreeSet::new());
            let (plan, _) = cluster.register(id(i), format!("http://c{i}"), CommitIndex::ZERO, 0);
            plan_until.insert(i, plan.until);
        }
        let mut committed = 0u64;
        for event in events {
            match event {
                Event::Transaction(mask) => {
                    let participants: BTreeSet<CounterId> =
                        cluster.participants().into_iter().map(|p| p.id).collect();
                    let yes: BTreeSet<CounterId> = (0..COUNTERS)
                        .filter(|i| mask & (1 << i) != 0 && participants.contains(&id(*i)))
                        .map(id)
                        .collect();
                    if let (Decision::Commit { index, .. }, _) = cluster.decide(&yes) {
                        committed += 1;
                        prop_assert_eq!(index, CommitIndex(committed), "gap-free indexes");
                        for i in 0..COUNTERS {
                            if yes.contains(&id(i)) {
                                held.get_mut(&i).unwrap().insert(index.0);
                            }
                        }
                    }
                }
                Event::HealthFail(i) => {
                    cluster.health_failed(&id(i));
                }
                Event::HealthOk(i) => {
                    let applied = prefix(&held[&i]);
                    cluster.health_ok(&id(i), applied, false, 0);
                }
                Event::Restart(i) => {
                    let applied = prefix(&held[&i]);
                    let (plan, _) = cluster.register(id(i), format!("http://c{i}"), applied, 0);
                    plan_until.insert(i, plan.until);
                }
                Event::Wipe(i) => {
                    held.insert(i, BTreeSet::new());
                    let (plan, _) =
                        cluster.register(id(i), format!("http://c{i}"), CommitIndex::ZERO, 0);
                    plan_until.insert(i, plan.until);
                }
                Event::CatchUp(i) => {
                    // Copy from any in-sync peer: it holds everything up to
                    // the decided index, so the counter gets 1..=until.
                    let has_peer = (0..COUNTERS).any(|p| {
                        p != i && cluster.member(&id(p)).is_some_and(|m| m.in_sync)
                    });
                    let until = cluster.member(&id(i)).map_or(CommitIndex::ZERO, |m| m.join_until);
                    if has_peer {
                        let copied = held.get_mut(&i).unwrap();
                        copied.extend(1..=until.0);
                    }
                    let applied = prefix(&held[&i]);
                    if let Some((plan, _)) = cluster.caught_up(&id(i), applied, 0) {
                        plan_until.insert(i, plan.until);
                    }
                }
            }
            for i in 0..COUNTERS {
                if cluster.member(&id(i)).is_some_and(|m| m.in_sync) {
                    for index in 1..=committed {
                        prop_assert!(
                            held[&i].contains(&index),
                            "c{} is in sync without commit {}", i, index
                        );
                    }
                }
            }
        }
    }
}
