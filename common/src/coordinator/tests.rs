//! The core's rules one event at a time; the simulator (sim/) runs it
//! under faults, and common/tests/scenarios/ walks through the protocol.

use super::*;
use crate::api::CounterState;

fn id(name: &str) -> CounterId {
    CounterId::from(name)
}

/// A core with `n` registered in-sync counters c1..cn.
fn cluster_of(n: usize) -> (CoordinatorCore, Millis) {
    let mut core =
        CoordinatorCore::recover(CoreConfig::for_tests(1), RestoredLog::default(), Millis(0));
    let mut now = Millis(0);
    for i in 1..=n {
        let name = format!("c{i}");
        let actions = core.step(
            now,
            Event::Register {
                request: RequestId(1000 + i as u64),
                id: id(&name),
                url: format!("http://{name}"),
                incarnation: Incarnation(i as u64),
                applied: CommitIndex::ZERO,
                holds: Holdings::default(),
            },
        );
        now = now.plus(1);
        let mut actions = actions;
        if actions.iter().any(|a| matches!(a, Action::WriteLog(_))) {
            actions.extend(core.step(now, Event::LogWritten));
        }
        let registration = joined_plan(&actions).registration;
        // Nothing was decided yet, so it holds everything: in sync.
        let actions = core.step(
            now,
            Event::CaughtUp {
                request: RequestId(2000 + i as u64),
                id: id(&name),
                incarnation: Incarnation(i as u64),
                registration,
                applied: CommitIndex::ZERO,
            },
        );
        if actions.iter().any(|a| matches!(a, Action::WriteLog(_))) {
            core.step(now, Event::LogWritten);
        }
    }
    assert_eq!(core.cluster().in_sync_count(), n);
    (core, now)
}

/// A client's write of no items; returns the transaction it started.
fn write(core: &mut CoordinatorCore, now: Millis, request: u64) -> TxnId {
    prepared_txn(&core.step(
        now,
        Event::Write {
            request: RequestId(request),
            items: vec![],
        },
    ))
}

/// A yes vote on `txn` from `name`'s disk `incarnation`.
fn voted(txn: TxnId, name: &str, incarnation: u64) -> Event {
    Event::Voted {
        txn,
        counter: id(name),
        vote: vote(incarnation),
    }
}

fn vote(i: u64) -> Result<Vote, String> {
    Ok(Vote {
        incarnation: Incarnation(i),
        applied: CommitIndex::ZERO,
        committed: vec![],
    })
}

fn prepared_txn(actions: &[Action]) -> TxnId {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Prepare { txn, .. } => Some(*txn),
            _ => None,
        })
        .expect("a prepare")
}

fn answered(actions: &[Action], request: u64) -> Option<Result<(), WriteRefused>> {
    actions.iter().find_map(|a| match a {
        Action::WriteDone { request: r, result } if r.0 == request => Some(result.clone()),
        _ => None,
    })
}

#[test]
fn a_write_is_answered_only_once_its_decision_is_durable() {
    let (mut core, now) = cluster_of(2);
    let actions = core.step(
        now,
        Event::Write {
            request: RequestId(1),
            items: vec![],
        },
    );
    let txn = prepared_txn(&actions);
    core.step(now, voted(txn, "c1", 1));
    let actions = core.step(now, voted(txn, "c2", 2));
    assert!(answered(&actions, 1).is_none(), "not before the log write");
    let write = actions.iter().find_map(|a| match a {
        Action::WriteLog(w) => Some(w.clone()),
        _ => None,
    });
    assert_eq!(write.unwrap().commits, vec![(txn, CommitIndex(1))]);
    assert_eq!(core.outcome(txn), Outcome::Pending);
    assert_eq!(core.read_view().fence, CommitIndex::ZERO);
    let actions = core.step(now, Event::LogWritten);
    assert_eq!(answered(&actions, 1), Some(Ok(())));
    assert_eq!(
        core.outcome(txn),
        Outcome::Committed {
            index: CommitIndex(1)
        }
    );
    assert_eq!(core.read_view().fence, CommitIndex(1));
}

/// The driver publishes a new read view only when `read_view_is` says the
/// published one is stale: a raised fence or a counter leaving the readable
/// set must both say so.
#[test]
fn a_published_read_view_is_stale_once_the_fence_or_the_readable_set_changes() {
    let (mut core, now) = cluster_of(2);
    let published = core.read_view();
    assert!(core.read_view_is(&published));
    let txn = write(&mut core, now, 1);
    core.step(now, voted(txn, "c1", 1));
    core.step(now, voted(txn, "c2", 2));
    assert!(core.read_view_is(&published), "nothing is durable yet");
    core.step(now, Event::LogWritten);
    assert!(!core.read_view_is(&published), "the fence was raised");
    let published = core.read_view();
    assert!(core.read_view_is(&published));

    let txn = write(&mut core, now, 2);
    core.step(now, voted(txn, "c1", 1));
    let later = now.plus(core.config().prepare_timeout_ms);
    core.step(later, Event::Tick);
    core.step(later, Event::LogWritten);
    assert_eq!(core.read_view().readable.len(), 1);
    assert!(!core.read_view_is(&published), "c2 left the set");
    let mut fewer = core.read_view();
    assert!(core.read_view_is(&fewer));
    fewer.readable.clear();
    assert!(!core.read_view_is(&fewer), "a view missing a counter");
}

#[test]
fn an_in_sync_counter_that_does_not_vote_leaves_the_set_with_the_decision() {
    let (mut core, now) = cluster_of(2);
    let actions = core.step(
        now,
        Event::Write {
            request: RequestId(1),
            items: vec![],
        },
    );
    let txn = prepared_txn(&actions);
    core.step(now, voted(txn, "c1", 1));
    let later = now.plus(core.config().prepare_timeout_ms);
    let actions = core.step(later, Event::Tick);
    let Some(Action::WriteLog(write)) = actions.iter().find(|a| matches!(a, Action::WriteLog(_)))
    else {
        panic!("a log write: {actions:?}");
    };
    let members = write.members.clone().expect("the in-sync set changed");
    assert!(!members.iter().find(|m| m.id == id("c2")).unwrap().in_sync);
    let actions = core.step(later, Event::LogWritten);
    assert_eq!(answered(&actions, 1), Some(Ok(())));
    assert_eq!(core.read_view().readable.len(), 1);
}

#[test]
fn a_commit_rides_on_the_next_prepare_when_one_follows_within_the_linger() {
    let (mut core, now) = cluster_of(1);
    let txn = write(&mut core, now, 1);
    core.step(now, voted(txn, "c1", 1));
    core.step(now, Event::LogWritten);
    let actions = core.step(
        now,
        Event::Write {
            request: RequestId(2),
            items: vec![],
        },
    );
    let carried = actions.iter().find_map(|a| match a {
        Action::Prepare { commits, .. } => Some(commits.clone()),
        _ => None,
    });
    assert_eq!(
        carried,
        Some(vec![CommitRequest {
            txn,
            index: CommitIndex(1)
        }])
    );
    let later = now.plus(core.config().commit_linger_ms);
    let actions = core.step(later, Event::Tick);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Commit { .. })),
        "carried, not sent alone"
    );
}

/// Under load the next prepare starts only when the one preparing has its
/// votes, often later than the linger: while writes wait for it, the
/// commit waits too, and rides on it.
#[test]
fn a_commit_waits_past_the_linger_for_the_prepare_that_waiting_writes_will_start() {
    let (mut core, now) = cluster_of(1);
    let first = write(&mut core, now, 1);
    core.step(now, voted(first, "c1", 1));
    let second = write(&mut core, now, 2);
    core.step(now, Event::LogWritten);
    let queued = core.step(
        now,
        Event::Write {
            request: RequestId(3),
            items: vec![],
        },
    );
    assert!(
        !queued.iter().any(|a| matches!(a, Action::Prepare { .. })),
        "waits while the second transaction prepares"
    );
    let after_linger = now.plus(core.config().commit_linger_ms);
    let actions = core.step(after_linger, Event::Tick);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Commit { .. })),
        "a prepare is about to start: {actions:?}"
    );
    let actions = core.step(after_linger, voted(second, "c1", 1));
    let carried = actions.iter().find_map(|a| match a {
        Action::Prepare { commits, .. } => Some(commits.clone()),
        _ => None,
    });
    assert_eq!(
        carried,
        Some(vec![CommitRequest {
            txn: first,
            index: CommitIndex(1)
        }])
    );
}

/// A prepare that takes long (a slow counter) holds the commit back no
/// longer than `BUSY_LINGER_MS`: fenced reads wait for the counters to
/// apply it.
#[test]
fn a_commit_waits_for_a_prepare_no_longer_than_the_busy_linger() {
    let (mut core, now) = cluster_of(1);
    let first = write(&mut core, now, 1);
    core.step(now, voted(first, "c1", 1));
    write(&mut core, now, 2);
    core.step(now, Event::LogWritten);
    core.step(
        now,
        Event::Write {
            request: RequestId(3),
            items: vec![],
        },
    );
    let busy_limit = now.plus(delivery::BUSY_LINGER_MS);
    assert_eq!(
        core.deliveries.next_linger(core.writes_waiting()),
        Some(busy_limit),
        "the driver sleeps until then, not in a loop from the linger on"
    );
    let early = core.step(Millis(busy_limit.0 - 1), Event::Tick);
    assert!(!early.iter().any(|a| matches!(a, Action::Commit { .. })));
    let actions = core.step(busy_limit, Event::Tick);
    assert!(actions.iter().any(|a| matches!(a,
        Action::Commit { to, commit } if to.id == id("c1") && commit.index == CommitIndex(1))));
}

#[test]
fn a_commit_with_no_prepare_to_ride_on_goes_out_alone() {
    let (mut core, now) = cluster_of(1);
    let txn = write(&mut core, now, 1);
    core.step(now, voted(txn, "c1", 1));
    core.step(now, Event::LogWritten);
    let actions = core.step(now.plus(core.config().commit_linger_ms), Event::Tick);
    assert!(actions.iter().any(|a| matches!(a,
        Action::Commit { to, commit } if to.id == id("c1") && commit.index == CommitIndex(1))));
    assert_eq!(core.unacknowledged(), 1);
    core.step(
        now,
        Event::CommitAnswered {
            index: CommitIndex(1),
            counter: id("c1"),
            answer: CommitAnswer::Applied {
                applied: CommitIndex(1),
                incarnation: Incarnation(1),
            },
        },
    );
    assert_eq!(core.unacknowledged(), 0);
}

#[test]
fn a_vote_from_another_data_directory_is_no_vote() {
    let (mut core, now) = cluster_of(1);
    let txn = write(&mut core, now, 1);
    // An abort needs nothing durable: it is answered at once.
    let actions = core.step(now, voted(txn, "c1", 99));
    assert!(
        matches!(answered(&actions, 1), Some(Err(WriteRefused::Aborted(_)))),
        "{actions:?}"
    );
}

#[test]
fn a_restart_resends_logged_commits_and_checks_every_counter_at_once() {
    let restored = RestoredLog {
        epoch: 2,
        decided: CommitIndex(3),
        decisions: vec![(TxnId::new(1, 3), CommitIndex(3))],
        members: vec![StoredMember {
            id: id("c1"),
            url: "http://c1".into(),
            in_sync: true,
            incarnation: Some(Incarnation(1)),
        }],
    };
    let mut core = CoordinatorCore::recover(CoreConfig::for_tests(2), restored, Millis(10_000));
    let actions = core.step(Millis(10_000), Event::Tick);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::CheckHealth { .. })));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Commit { commit, .. } if commit.index == CommitIndex(3))));
    assert_eq!(
        core.outcome(TxnId::new(1, 3)),
        Outcome::Committed {
            index: CommitIndex(3)
        }
    );
    assert!(
        core.read_view().readable.is_empty(),
        "nobody serves before registering"
    );
    assert_eq!(
        core.cluster().member(&id("c1")).unwrap().state,
        CounterState::Live
    );
}

#[test]
fn a_full_queue_answers_busy_at_once() {
    let (mut core, now) = cluster_of(1);
    let mut config = core.config().clone();
    config.max_queued = 1;
    core.config = config;
    core.step(
        now,
        Event::Write {
            request: RequestId(1),
            items: vec![],
        },
    );
    core.step(
        now,
        Event::Write {
            request: RequestId(2),
            items: vec![],
        },
    );
    let actions = core.step(
        now,
        Event::Write {
            request: RequestId(3),
            items: vec![],
        },
    );
    assert_eq!(answered(&actions, 3), Some(Err(WriteRefused::Busy)));
}

#[test]
fn a_late_vote_from_another_data_directory_acknowledges_nothing() {
    let (mut core, now) = cluster_of(2);
    let first = write(&mut core, now, 1);
    core.step(now, voted(first, "c1", 1));
    core.step(now, voted(first, "c2", 2));
    core.step(now, Event::LogWritten);
    // The next prepare carries commit 1; c1 votes, so its vote is over
    // only once c2's arrives, and c2's comes from another disk.
    let second = write(&mut core, now, 2);
    let applied = |i: u64| Vote {
        incarnation: Incarnation(i),
        applied: CommitIndex(1),
        committed: vec![CommitIndex(1)],
    };
    core.step(
        now,
        Event::Voted {
            txn: second,
            counter: id("c1"),
            vote: Ok(applied(1)),
        },
    );
    core.step(now.plus(core.config().prepare_timeout_ms), Event::Tick);
    core.step(
        now,
        Event::Voted {
            txn: second,
            counter: id("c2"),
            vote: Ok(applied(99)),
        },
    );
    assert_eq!(
        core.unacknowledged(),
        1,
        "c2's acknowledgement from another disk is not believed"
    );
}

/// After a coordinator restart nothing says what an in-sync counter held:
/// its registration must show it holds every logged decision above its
/// applied index (applied or prepared), or it is a disk restored from an
/// older copy and must copy what it lacks.
#[test]
fn an_in_sync_counter_back_on_an_older_copy_of_its_disk_loses_its_place_after_a_restart() {
    let stored = |name: &str, i: u64| StoredMember {
        id: id(name),
        url: format!("http://{name}"),
        in_sync: true,
        incarnation: Some(Incarnation(i)),
    };
    let restored = RestoredLog {
        epoch: 2,
        decided: CommitIndex(2),
        decisions: vec![
            (TxnId::new(1, 1), CommitIndex(1)),
            (TxnId::new(1, 2), CommitIndex(2)),
        ],
        members: vec![stored("c1", 1), stored("c2", 2)],
    };
    let mut core = CoordinatorCore::recover(CoreConfig::for_tests(2), restored, Millis(0));
    let register = |name: &str, i: u64, holds: Holdings| Event::Register {
        request: RequestId(i),
        id: id(name),
        url: format!("http://{name}"),
        incarnation: Incarnation(i),
        applied: CommitIndex::ZERO,
        holds,
    };
    // c1 holds both decisions prepared (their commits never reached it).
    let holds = Holdings {
        prepared: vec![TxnId::new(1, 1), TxnId::new(1, 2)],
        applied_above: vec![],
    };
    core.step(Millis(0), register("c1", 1, holds));
    core.step(Millis(0), Event::LogWritten);
    assert!(core.cluster().member(&id("c1")).unwrap().in_sync);
    // c2 is back on an old copy of its disk: same incarnation, nothing held.
    core.step(Millis(0), register("c2", 2, Holdings::default()));
    core.step(Millis(0), Event::LogWritten);
    let c2 = core.cluster().member(&id("c2")).unwrap();
    assert!(!c2.in_sync, "it lacks commits 1 and 2");
    assert_eq!(core.read_view().readable.len(), 1);
}

/// A commit answer can arrive late, from a life of the counter's disk that
/// is gone: what it says was applied is not what the counter holds now.
#[test]
fn a_commit_answer_from_another_data_directory_acknowledges_nothing() {
    let (mut core, now) = cluster_of(1);
    let txn = write(&mut core, now, 1);
    core.step(now, voted(txn, "c1", 1));
    core.step(now, Event::LogWritten);
    core.step(now.plus(core.config().commit_linger_ms), Event::Tick);
    core.step(
        now,
        Event::CommitAnswered {
            index: CommitIndex(1),
            counter: id("c1"),
            answer: CommitAnswer::Applied {
                applied: CommitIndex(1),
                incarnation: Incarnation(99),
            },
        },
    );
    assert_eq!(core.unacknowledged(), 1);
    assert_eq!(
        core.cluster().member(&id("c1")).unwrap().applied,
        CommitIndex::ZERO
    );
}

fn joined_plan(actions: &[Action]) -> JoinPlan {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Joined {
                result: Ok(plan), ..
            } => Some(plan.clone()),
            _ => None,
        })
        .expect("a join plan")
}

/// A catch-up report speaks for the registration it followed. One sent
/// before the counter registered again (its disk was restored from an
/// older copy meanwhile, same incarnation) says nothing about the disk it
/// has now, however late it arrives.
#[test]
fn a_catch_up_report_from_an_earlier_registration_promotes_nobody() {
    let (mut core, now) = cluster_of(1);
    let txn = write(&mut core, now, 1);
    core.step(now, voted(txn, "c1", 1));
    core.step(now, Event::LogWritten);
    let register = |request: u64| Event::Register {
        request: RequestId(request),
        id: id("c2"),
        url: "http://c2".into(),
        incarnation: Incarnation(2),
        applied: CommitIndex::ZERO,
        holds: Holdings::default(),
    };
    let mut first = core.step(now, register(10));
    first.extend(core.step(now, Event::LogWritten));
    let first = joined_plan(&first);
    let mut again = core.step(now, register(11));
    again.extend(core.step(now, Event::LogWritten));
    let again = joined_plan(&again);
    assert_ne!(first.registration, again.registration);
    let stale = Event::CaughtUp {
        request: RequestId(12),
        id: id("c2"),
        incarnation: Incarnation(2),
        registration: first.registration,
        applied: CommitIndex(1),
    };
    let mut actions = core.step(now, stale);
    actions.extend(core.step(now, Event::LogWritten));
    assert!(
        !core.cluster().member(&id("c2")).unwrap().in_sync,
        "{actions:?}"
    );
}
