//! Three replicated coordinators on an in-memory network that delivers
//! everything at once: elections, a replicated registration, a leader's
//! crash and a wiped follower. The simulator (sim/) runs the same type
//! under faults; these are the plain cases, readable on their own.

use std::collections::{BTreeMap, VecDeque};
use tally_common::coordinator::{Action, CoreConfig, Event, Holdings, Millis, RequestId};
use tally_common::{CommitIndex, CounterId, Incarnation};
use tally_consensus::{
    start, HardState, Input, Message, MessageType, NodeConfig, Output, PeerLog, ReplicatedConfig,
    ReplicatedCoordinator, RestoredRaft, Role, Start,
};

struct Cluster {
    nodes: BTreeMap<u64, ReplicatedCoordinator>,
    disks: BTreeMap<u64, RestoredRaft>,
    down: Vec<u64>,
    net: VecDeque<Message>,
    /// Messages the network will lose, once each: (to, type).
    lost: Vec<(u64, MessageType)>,
    /// Messages to this node are kept in `tapped` instead of delivered.
    tap: Option<u64>,
    /// Nodes whose writes wait in `unsynced` until `sync`.
    slow: Vec<u64>,
    unsynced: BTreeMap<u64, Vec<tally_consensus::PersistWrite>>,
    tapped: Vec<Message>,
    now: u64,
    answers: Vec<(u64, Output)>,
}

fn config(id: u64) -> ReplicatedConfig {
    ReplicatedConfig {
        node: NodeConfig {
            id,
            voters: vec![1, 2, 3],
            heartbeat_ticks: 2,
            election_ticks: (10, 20),
            seed: id * 7919,
        },
        core: CoreConfig::for_tests(0),
        tick_ms: 10,
        snapshot_every: 4,
    }
}

impl Cluster {
    fn new() -> Self {
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            down: Vec::new(),
            net: VecDeque::new(),
            lost: Vec::new(),
            tap: None,
            slow: Vec::new(),
            unsynced: BTreeMap::new(),
            tapped: Vec::new(),
            now: 0,
            answers: Vec::new(),
        };
        for id in 1..=3 {
            c.disks.insert(id, RestoredRaft::default());
            c.boot(id, Start::Fresh { term: 0 });
        }
        c
    }

    fn boot(&mut self, id: u64, start: Start) {
        let restored = self.disks[&id].clone();
        let (node, out) =
            ReplicatedCoordinator::new(config(id), restored, start, Millis(self.now)).unwrap();
        self.nodes.insert(id, node);
        self.down.retain(|d| *d != id);
        self.carry(id, out);
    }

    fn crash(&mut self, id: u64) {
        self.nodes.remove(&id);
        self.down.push(id);
    }

    fn carry(&mut self, id: u64, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send(m) => self.net.push_back(m),
                Output::Persist(w) if self.slow.contains(&id) => {
                    self.unsynced.entry(id).or_default().push(w)
                }
                Output::Persist(w) => {
                    // Disks here are synchronous, but for slow ones: durable
                    // at once.
                    self.disks.get_mut(&id).unwrap().apply(&w);
                    let more = self
                        .nodes
                        .get_mut(&id)
                        .unwrap()
                        .step(Millis(self.now), Input::Persisted(w.number));
                    self.carry(id, more);
                }
                other => self.answers.push((id, other)),
            }
        }
    }

    /// A slow disk's writes become durable now.
    fn sync(&mut self, id: u64) {
        self.slow.retain(|s| *s != id);
        for w in self.unsynced.remove(&id).unwrap_or_default() {
            self.disks.get_mut(&id).unwrap().apply(&w);
            self.step(id, Input::Persisted(w.number));
        }
    }

    fn step(&mut self, id: u64, input: Input) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let out = node.step(Millis(self.now), input);
        self.carry(id, out);
    }

    /// Delivers every message, then lets `ms` pass in ticks.
    fn run(&mut self, ms: u64) {
        self.run_until(ms, |_| false);
    }

    /// As [`Cluster::run`], but stops as soon as `stop` holds after a
    /// message was delivered; says whether it did.
    fn run_until(&mut self, ms: u64, stop: impl Fn(&Cluster) -> bool) -> bool {
        let end = self.now + ms;
        loop {
            while let Some(m) = self.net.pop_front() {
                let kind = (m.to, m.get_msg_type());
                if let Some(i) = self.lost.iter().position(|l| *l == kind) {
                    self.lost.remove(i);
                    continue;
                }
                if self.tap == Some(m.to) {
                    self.tapped.push(m);
                    continue;
                }
                if !self.down.contains(&m.to) {
                    self.step(m.to, Input::Message(m));
                    if stop(self) {
                        return true;
                    }
                }
            }
            if self.now >= end {
                return false;
            }
            self.now += 5;
            for id in 1..=3 {
                self.step(id, Input::Tick);
            }
        }
    }

    fn leader(&self) -> Option<u64> {
        let leaders: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.role() == Role::Leader && n.core().is_some())
            .map(|(id, _)| *id)
            .collect();
        assert!(leaders.len() <= 1, "two leaders with cores: {leaders:?}");
        leaders.first().copied()
    }
}

fn register(id: &str) -> Event {
    Event::Register {
        request: RequestId(1),
        id: CounterId::from(id),
        url: format!("http://{id}"),
        incarnation: Incarnation(1),
        applied: CommitIndex(0),
        holds: Holdings::default(),
    }
}

#[test]
fn a_leader_is_elected_and_serves_once_its_term_is_applied() {
    let mut c = Cluster::new();
    c.run(1_000);
    let leader = c.leader().expect("a leader within a second");
    assert!(c
        .answers
        .iter()
        .any(|(id, o)| *id == leader && matches!(o, Output::Leading { .. })));
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    c.step(follower, Input::Core(register("c1")));
    assert!(
        c.answers
            .iter()
            .any(|(id, o)| *id == follower && matches!(o, Output::NotLeader(RequestId(1)))),
        "a follower refuses requests meant for the leader"
    );
}

#[test]
fn a_registration_is_answered_only_once_a_majority_holds_it_and_survives_the_leader() {
    let mut c = Cluster::new();
    c.run(1_000);
    let leader = c.leader().unwrap();
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    // Both followers down: the leader cannot make the membership durable.
    c.crash(others[0]);
    c.crash(others[1]);
    c.answers.clear();
    c.step(leader, Input::Core(register("c1")));
    c.run(100);
    assert!(
        !c.answers
            .iter()
            .any(|(_, o)| matches!(o, Output::Core(Action::Joined { .. }))),
        "answered a registration no majority holds: {:?}",
        c.answers
    );
    // One follower back: the entry commits and the counter is answered.
    c.boot(others[0], Start::Restart);
    c.run(2_000);
    let joined = c
        .answers
        .iter()
        .any(|(_, o)| matches!(o, Output::Core(Action::Joined { result: Ok(_), .. })));
    let deposed = c
        .answers
        .iter()
        .any(|(id, o)| *id == leader && matches!(o, Output::Deposed));
    // The old leader either answered once a majority held the entry, or it
    // stepped down first (it heard from no majority for an election
    // timeout) and its requests were left to "outcome unknown".
    assert!(
        joined || deposed,
        "neither answered nor deposed: {:?}",
        c.answers
    );
    let now_leader = c.leader().expect("a leader with two of three up");
    if joined {
        assert!(c.nodes[&now_leader]
            .state()
            .members
            .iter()
            .any(|m| m.id == CounterId::from("c1")));
    }
}

#[test]
fn a_new_leader_holds_every_decision_the_old_one_made_durable() {
    let mut c = Cluster::new();
    c.run(1_000);
    let leader = c.leader().unwrap();
    c.step(leader, Input::Core(register("c1")));
    c.run(200);
    assert!(c
        .answers
        .iter()
        .any(|(_, o)| matches!(o, Output::Core(Action::Joined { result: Ok(_), .. }))));
    c.crash(leader);
    c.answers.clear();
    c.run(2_000);
    let next = c.leader().expect("a new leader after the old one died");
    assert_ne!(next, leader);
    assert!(c.nodes[&next]
        .state()
        .members
        .iter()
        .any(|m| m.id == CounterId::from("c1")));
    assert!(c.nodes[&next].term() > 1);
}

#[test]
fn a_wiped_coordinator_rejoins_from_a_snapshot_and_may_lead_again() {
    let mut c = Cluster::new();
    c.run(1_000);
    let leader = c.leader().unwrap();
    for i in 0..10 {
        c.step(leader, Input::Core(register(&format!("c{i}"))));
        c.run(50);
    }
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    c.crash(victim);
    c.disks.insert(victim, RestoredRaft::default());
    let answers: Vec<PeerLog> = (1..=3)
        .filter(|id| *id != victim)
        .map(|id| c.nodes[&id].peer_log())
        .collect();
    match start(&c.disks[&victim], &answers, 2) {
        start @ Start::Rejoin { .. } => c.boot(victim, start),
        other => panic!("an empty node beside a live cluster must rejoin, not {other:?}"),
    }
    assert_eq!(c.nodes[&victim].role(), Role::Rejoining);
    c.run(1_000);
    assert_ne!(c.nodes[&victim].role(), Role::Rejoining, "caught up");
    assert_eq!(c.nodes[&victim].state(), c.nodes[&leader].state());
    // Now the old leader dies; the rejoined node can be elected.
    c.crash(leader);
    c.run(3_000);
    let next = c.leader().expect("a leader of the two left");
    assert_eq!(c.nodes[&next].state().members.len(), 10);
}

#[test]
fn an_empty_coordinator_waits_for_every_peer_before_calling_the_cluster_new() {
    let empty = RestoredRaft::default();
    let new = |term| PeerLog {
        term,
        has_log: false,
    };
    let holding = |term| PeerLog {
        term,
        has_log: true,
    };
    assert_eq!(start(&empty, &[new(0)], 2), Start::Wait);
    assert_eq!(
        start(&empty, &[new(0), new(0)], 2),
        Start::Fresh { term: 0 }
    );
    assert_eq!(
        start(&empty, &[new(0), holding(4)], 2),
        Start::Rejoin { term: 4 }
    );
    assert_eq!(start(&empty, &[holding(3)], 2), Start::Rejoin { term: 3 });
    // A term without a log is a campaign, not a lost disk.
    assert_eq!(start(&empty, &[new(2)], 2), Start::Wait);
    assert_eq!(
        start(&empty, &[new(2), new(0)], 2),
        Start::Fresh { term: 2 }
    );
}

/// A leader, a follower that crashed (`behind`) and the other one; the
/// leader's log reached index 8 meanwhile. Snapshots are taken every 4
/// applied entries, so the newest snapshot holds all of it and `behind`
/// can catch up only from a snapshot.
fn one_down_behind_a_snapshot() -> (Cluster, u64, u64, u64) {
    let mut c = Cluster::new();
    c.run(1_000);
    let leader = c.leader().unwrap();
    let behind = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != behind).unwrap();
    c.crash(behind);
    let mut i = 0;
    while c.nodes[&leader].last_index() < 8 {
        c.step(leader, Input::Core(register(&format!("c{i}"))));
        c.run(50);
        i += 1;
    }
    (c, leader, behind, other)
}

#[test]
fn a_follower_that_caught_up_from_a_snapshot_can_still_campaign() {
    let (mut c, leader, behind, other) = one_down_behind_a_snapshot();
    assert_eq!(c.nodes[&leader].last_index(), 8);
    // Back on its own disk, behind a log the leader has compacted: it
    // catches up from a snapshot, with no entry after it.
    c.boot(behind, Start::Restart);
    c.run(200);
    assert_eq!(c.nodes[&behind].state(), c.nodes[&leader].state());
    // Alone now, it must campaign when its election timeout passes (raft-rs
    // looks at the entries it has not applied first: none may be missing).
    c.crash(leader);
    c.crash(other);
    c.run(1_000);
    assert_eq!(c.nodes[&behind].role(), Role::Candidate);
}

#[test]
fn a_follower_whose_snapshot_was_lost_gets_another() {
    let mut c = Cluster::new();
    c.run(1_000);
    let leader = c.leader().unwrap();
    let behind = (1..=3).find(|id| *id != leader).unwrap();
    c.crash(behind);
    for i in 0..10 {
        c.step(leader, Input::Core(register(&format!("c{i}"))));
        c.run(50);
    }
    // Back behind a compacted log, it needs a snapshot; the first one sent
    // is lost on the way.
    c.lost.push((behind, MessageType::MsgSnapshot));
    c.boot(behind, Start::Restart);
    c.run(2_000);
    assert!(c.lost.is_empty(), "no snapshot was sent");
    assert_eq!(
        c.nodes[&behind].state(),
        c.nodes[&leader].state(),
        "still behind after its snapshot was lost"
    );
}

#[test]
fn a_campaign_that_wrote_no_entry_leaves_the_cluster_new() {
    let mut c = Cluster::new();
    // The first candidate wrote its term and its vote for itself; its vote
    // requests were lost and nobody else wrote anything. Then a power cut.
    for id in 1..=3 {
        c.crash(id);
    }
    c.disks.get_mut(&1).unwrap().hard_state = HardState {
        term: 1,
        vote: 1,
        ..Default::default()
    };
    let answers = |c: &Cluster, asking: u64| -> Vec<PeerLog> {
        (1..=3)
            .filter(|id| *id != asking)
            .map(|id| PeerLog::of(&c.disks[&id]))
            .collect()
    };
    for id in 1..=3 {
        let how = start(&c.disks[&id], &answers(&c, id), 2);
        if id != 1 {
            assert_eq!(how, Start::Fresh { term: 1 });
        }
        c.boot(id, how);
    }
    // An empty one starts in the highest term reported, as having voted in
    // it: had it lost its disk after voting there, it cannot vote again.
    assert_eq!(c.disks[&2].hard_state.term, 1);
    assert_eq!(c.disks[&2].hard_state.vote, 2);
    c.run(3_000);
    assert!(
        c.leader().is_some(),
        "no leader: nothing but a term was ever written, yet two coordinators wait to rejoin"
    );
}

#[test]
fn a_heartbeat_sent_to_a_wiped_coordinators_earlier_life_is_ignored() {
    let mut c = Cluster::new();
    c.run(1_000);
    let leader = c.leader().unwrap();
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    // Ten entries, all held by the victim; snapshots every 4 leave two
    // entries after the newest snapshot.
    let mut i = 0;
    while c.nodes[&leader].last_index() < 10 {
        c.step(leader, Input::Core(register(&format!("c{i}"))));
        c.run(50);
        i += 1;
    }
    assert_eq!(c.nodes[&leader].last_index(), 10);
    // The victim loses its disk. The leader, which still takes it to hold
    // all ten, sends it a heartbeat committing 10, which the network holds
    // back.
    c.crash(victim);
    c.disks.insert(victim, RestoredRaft::default());
    c.tap = Some(victim);
    c.run(50);
    c.tap = None;
    let stale = c
        .tapped
        .iter()
        .find(|m| m.get_msg_type() == MessageType::MsgHeartbeat && m.commit == 10)
        .cloned()
        .expect("a heartbeat committing 10");
    let answers: Vec<PeerLog> = (1..=3)
        .filter(|id| *id != victim)
        .map(|id| c.nodes[&id].peer_log())
        .collect();
    let how = start(&c.disks[&victim], &answers, 2);
    assert!(matches!(how, Start::Rejoin { .. }));
    c.boot(victim, how);
    // It rejoins from the snapshot at 8...
    assert!(c.run_until(1_000, |c| c.nodes[&victim].role() != Role::Rejoining));
    assert_eq!(c.nodes[&victim].last_index(), 8);
    // ...and only then does the stale heartbeat arrive: it commits an
    // index the new disk does not hold.
    c.net.push_front(stale);
    c.run(1_000);
    assert_eq!(c.nodes[&victim].state(), c.nodes[&leader].state());
}

#[test]
fn a_follower_whose_snapshot_is_not_yet_durable_waits_to_campaign() {
    let (mut c, leader, behind, other) = one_down_behind_a_snapshot();
    // It catches up from a snapshot, on a disk slow to make it durable.
    c.slow.push(behind);
    c.boot(behind, Start::Restart);
    assert!(c.run_until(1_000, |c| c.nodes[&behind].state()
        == c.nodes[&leader].state()));
    // Alone, its election timeout passes before the snapshot is durable:
    // raft-rs must not campaign from a log the snapshot replaced.
    c.crash(leader);
    c.crash(other);
    c.run(1_000);
    c.sync(behind);
    c.run(1_000);
    assert_eq!(c.nodes[&behind].role(), Role::Candidate);
}
