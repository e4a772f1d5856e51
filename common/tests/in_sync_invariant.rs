//! Property: whatever the order of votes, failures, restarts, wiped disks,
//! coordinator restarts, health checks and catch-ups, every counter that
//! serves (the coordinator has it in sync and registered, and the process
//! registered with this coordinator) holds every committed transaction, and commit indexes
//! stay gap-free. The test keeps its own model of what each counter holds
//! and checks the membership state machine against it after every event.

use proptest::prelude::*;
use std::collections::BTreeSet;
use tally_common::membership::{Cluster, Decision, HealthReport, MembershipConfig};
use tally_common::{CommitIndex, CounterId, Incarnation};

const COUNTERS: usize = 3;

#[derive(Debug, Clone)]
enum Event {
    /// A transaction; bit i of the mask: counter i votes yes (if asked).
    Transaction(u8),
    HealthFail(usize),
    /// The counter answers a health check, registered or not.
    HealthOk(usize),
    /// The counter (re)starts or notices a new coordinator: it registers
    /// with what it holds.
    Register(usize),
    /// The counter copies what its plan says from an in-sync peer and
    /// reports back.
    CatchUp(usize),
    /// The counter loses its disk and comes back on an empty one; it answers
    /// health checks before it registers.
    Wipe(usize),
    /// The coordinator restarts from what it persisted.
    CoordinatorRestart,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => any::<u8>().prop_map(Event::Transaction),
        1 => (0..COUNTERS).prop_map(Event::HealthFail),
        2 => (0..COUNTERS).prop_map(Event::HealthOk),
        2 => (0..COUNTERS).prop_map(Event::Register),
        2 => (0..COUNTERS).prop_map(Event::CatchUp),
        1 => (0..COUNTERS).prop_map(Event::Wipe),
        1 => Just(Event::CoordinatorRestart),
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

/// One counter process as the test sees it.
#[derive(Default)]
struct Model {
    held: BTreeSet<u64>,
    incarnation: u64,
    /// Registered with the coordinator running now.
    registered: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn trusted_counters_hold_every_commit(
        events in proptest::collection::vec(event(), 1..150),
        min_insync in 1usize..=2,
    ) {
        let config = MembershipConfig { dead_after: 1, remove_after: 1000, min_insync };
        let mut cluster = Cluster::restore(config, [], CommitIndex::ZERO);
        let mut counters: Vec<Model> = (0..COUNTERS).map(|_| Model::default()).collect();
        let mut next_incarnation = 1;
        let register = |cluster: &mut Cluster, i: usize, c: &mut Model| {
            cluster.register(id(i), format!("http://c{i}"), Incarnation(c.incarnation), prefix(&c.held), None, 0);
            c.registered = true;
        };
        for (i, c) in counters.iter_mut().enumerate() {
            register(&mut cluster, i, c);
        }
        let mut committed = 0u64;
        for event in events {
            match event {
                Event::Transaction(mask) => {
                    let participants: BTreeSet<CounterId> =
                        cluster.participants().into_iter().map(|p| p.id).collect();
                    // Only a counter registered with this coordinator votes:
                    // the counter itself refuses other epochs' prepares.
                    let yes: BTreeSet<CounterId> = (0..COUNTERS)
                        .filter(|i| {
                            mask & (1 << i) != 0
                                && counters[*i].registered
                                && participants.contains(&id(*i))
                        })
                        .map(id)
                        .collect();
                    if let (Decision::Commit { index, .. }, _) = cluster.decide(&yes) {
                        committed += 1;
                        prop_assert_eq!(index, CommitIndex(committed), "gap-free indexes");
                        for (i, c) in counters.iter_mut().enumerate() {
                            if yes.contains(&id(i)) {
                                c.held.insert(index.0);
                            }
                        }
                    }
                }
                Event::HealthFail(i) => {
                    cluster.health_failed(&id(i));
                }
                Event::HealthOk(i) => {
                    let c = &counters[i];
                    let report = HealthReport {
                        incarnation: Incarnation(c.incarnation),
                        applied: prefix(&c.held),
                        catching_up: false,
                        registered_here: c.registered,
                        copy: None,
                    };
                    cluster.health_ok(&id(i), report, 0);
                }
                Event::Register(i) => register(&mut cluster, i, &mut counters[i]),
                Event::Wipe(i) => {
                    next_incarnation += 1;
                    counters[i] = Model { incarnation: next_incarnation, ..Model::default() };
                }
                Event::CoordinatorRestart => {
                    let decided = cluster.decided();
                    cluster = Cluster::restore(config, cluster.stored(), decided);
                    for c in &mut counters {
                        c.registered = false;
                    }
                }
                Event::CatchUp(i) => {
                    // Copy from a peer the coordinator trusts: it holds
                    // everything up to the decided index, so the counter
                    // gets 1..=until.
                    let readable = cluster.readable();
                    let until = cluster.member(&id(i)).map_or(CommitIndex::ZERO, |m| m.join_until);
                    if readable.iter().any(|(p, _)| p != &id(i)) {
                        counters[i].held.extend(1..=until.0);
                    }
                    let c = &counters[i];
                    let registration = cluster.member(&id(i)).map_or(0, |m| m.registration);
                    cluster.caught_up(&id(i), Incarnation(c.incarnation), registration, prefix(&c.held), 0);
                }
            }
            for (i, c) in counters.iter().enumerate() {
                // A counter serves (its vote counts as an in-sync one, it
                // answers fenced reads) only when both sides agree: the
                // coordinator trusts it, and the process registered with
                // this coordinator. A wiped process has not, until it
                // registers, and then the coordinator sees its new disk.
                let trusted = cluster.member(&id(i)).is_some_and(|m| m.in_sync && m.registered);
                if trusted && c.registered {
                    for index in 1..=committed {
                        prop_assert!(
                            c.held.contains(&index),
                            "c{} is trusted without commit {}", i, index
                        );
                    }
                }
            }
        }
    }
}
