//! Property: whatever happens to the messages (lost, duplicated, reordered,
//! a disk write that fails) and to the processes (the coordinator or a
//! participant crashes and restarts at any point), two-phase commit between
//! the coordinator model (`tally_common::coordinator`) and the counters'
//! participant machine (`tally_common::participant`) keeps the
//! guarantees of README.md:
//!
//! * an item is applied only if its transaction's commit decision is
//!   durable, and a client hears "committed" only then (no phantom writes);
//! * no transaction and no commit index is applied twice at a participant,
//!   and its items are exactly those of the indexes it applied (so a count is
//!   the number of distinct items);
//! * decided indexes are gap-free, and a transaction answered "aborted" is
//!   never committed;
//! * a restart loses nothing durable, and the participant's state is all
//!   durable (recovering from its disk gives the state it had);
//! * a commit for a transaction a participant never prepared is refused,
//!   not applied;
//! * once messages flow again, every committed transaction is applied at
//!   every participant that ever prepared it (a counted yes vote or a late
//!   one), and no prepared record is left (no lost writes, and in-doubt
//!   transactions get resolved).
//!
//! The harness plays the carriers: it keeps each process's disk, applies
//! `Persist` records to it, and turns the other actions into messages.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use tally_common::api::Outcome;
use tally_common::applied::AppliedSet;
use tally_common::coordinator::{self as co, Coordinator};
use tally_common::participant::{self as pa, Participant};
use tally_common::{CommitIndex, CounterId, Millis, TxnId};

const PARTICIPANTS: usize = 3;
/// Items are drawn from a small set, so transactions overlap.
const ITEMS: u8 = 6;
/// How far the participants' clock moves per step: a prepare is in doubt
/// after a few steps without its outcome.
const STEP_MS: u64 = 500;

type Item = u8;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Prepare {
        to: usize,
        txn: TxnId,
    },
    Commit {
        to: usize,
        txn: TxnId,
        index: CommitIndex,
    },
    Abort {
        to: usize,
        txn: TxnId,
    },
    Outcome {
        to: usize,
        txn: TxnId,
        outcome: Outcome,
    },
    Vote {
        from: usize,
        txn: TxnId,
        yes: bool,
    },
    CommitAck {
        from: usize,
        index: CommitIndex,
    },
    AskOutcome {
        from: usize,
        txn: TxnId,
    },
}

#[derive(Debug, Clone)]
enum Step {
    /// A client request; bit i of the mask: item i is in it.
    Begin(u8),
    /// Deliver the n-th message in flight (any order: reordering).
    Deliver(usize),
    /// Deliver it and keep it in flight (a duplicate).
    Duplicate(usize),
    /// Lose it.
    Drop(usize),
    /// Deliver it to a participant whose disk write fails.
    FailWrite(usize),
    /// The prepare deadline of the n-th transaction in flight passes.
    PrepareTimeout(usize),
    /// The oldest queued decision becomes durable...
    LogWrite,
    /// ...and the coordinator hears so (a crash can fall in between).
    LogReturn,
    Resend,
    /// The participant's in-doubt timer ticks: it asks about every
    /// transaction it has held prepared for too long.
    InDoubt(usize),
    /// The first participant copies what the second has applied.
    Import(usize, usize),
    /// A commit of the n-th logged decision reaches a participant that may
    /// never have prepared it (a commit carried on a prepare goes to all).
    StrayCommit(usize, usize),
    RestartParticipant(usize),
    RestartCoordinator,
}

fn step() -> impl Strategy<Value = Step> {
    let p = 0..PARTICIPANTS;
    prop_oneof![
        6 => any::<u8>().prop_map(Step::Begin),
        40 => any::<usize>().prop_map(Step::Deliver),
        4 => any::<usize>().prop_map(Step::Duplicate),
        4 => any::<usize>().prop_map(Step::Drop),
        2 => any::<usize>().prop_map(Step::FailWrite),
        5 => any::<usize>().prop_map(Step::PrepareTimeout),
        10 => Just(Step::LogWrite),
        10 => Just(Step::LogReturn),
        3 => Just(Step::Resend),
        3 => p.clone().prop_map(Step::InDoubt),
        3 => (p.clone(), p.clone()).prop_map(|(a, b)| Step::Import(a, b)),
        3 => (p.clone(), any::<usize>()).prop_map(|(a, n)| Step::StrayCommit(a, n)),
        2 => p.prop_map(Step::RestartParticipant),
        1 => Just(Step::RestartCoordinator),
    ]
}

fn id(p: usize) -> CounterId {
    CounterId(format!("c{p}"))
}

fn index_of(id: &CounterId) -> usize {
    id.0[1..].parse().expect("ids are c0, c1, ...")
}

/// What a participant's storage holds: exactly what `Persist` wrote.
#[derive(Debug, Clone, Default)]
struct ParticipantDisk {
    prepared: BTreeMap<TxnId, BTreeSet<Item>>,
    items: BTreeSet<Item>,
    applied: AppliedSet,
}

struct Node {
    machine: Participant,
    disk: ParticipantDisk,
    /// Every (txn, index) applied through a commit, to catch a second one.
    commits: Vec<(TxnId, CommitIndex)>,
    /// Every transaction this node ever durably prepared.
    ever_prepared: BTreeSet<TxnId>,
}

struct World {
    min_yes: usize,
    coordinator: Coordinator,
    /// The coordinator's durable log.
    log: BTreeMap<TxnId, CommitIndex>,
    /// Decisions handed to the disk, not durable yet.
    log_queue: VecDeque<(TxnId, CommitIndex)>,
    /// Durable decisions the coordinator has not heard about yet.
    log_written: VecDeque<TxnId>,
    nodes: Vec<Node>,
    net: Vec<Msg>,
    items: BTreeMap<TxnId, BTreeSet<Item>>,
    replies: BTreeMap<TxnId, Option<CommitIndex>>,
    next_txn: u64,
    /// The participants' clock.
    now: Millis,
}

impl World {
    fn new(min_yes: usize) -> Self {
        World {
            min_yes,
            coordinator: Coordinator::new(min_yes),
            log: BTreeMap::new(),
            log_queue: VecDeque::new(),
            log_written: VecDeque::new(),
            nodes: (0..PARTICIPANTS)
                .map(|_| Node {
                    machine: Participant::default(),
                    disk: ParticipantDisk::default(),
                    commits: Vec::new(),
                    ever_prepared: BTreeSet::new(),
                })
                .collect(),
            net: Vec::new(),
            items: BTreeMap::new(),
            replies: BTreeMap::new(),
            next_txn: 1,
            now: Millis(0),
        }
    }

    fn everyone() -> BTreeSet<CounterId> {
        (0..PARTICIPANTS).map(id).collect()
    }

    fn coordinator_step(&mut self, event: co::Event) -> Result<(), TestCaseError> {
        for action in self.coordinator.step(event) {
            self.carry_out_coordinator(action)?;
        }
        Ok(())
    }

    fn carry_out_coordinator(&mut self, action: co::Action) -> Result<(), TestCaseError> {
        match action {
            co::Action::Persist(co::Record::Decision { txn, index }) => {
                self.log_queue.push_back((txn, index));
            }
            co::Action::SendPrepare { to, txn } => self.net.push(Msg::Prepare {
                to: index_of(&to),
                txn,
            }),
            co::Action::SendCommit { to, txn, index } => {
                prop_assert_eq!(
                    self.log.get(&txn),
                    Some(&index),
                    "commit sent before logged"
                );
                self.net.push(Msg::Commit {
                    to: index_of(&to),
                    txn,
                    index,
                });
            }
            co::Action::SendAbort { to, txn } => self.net.push(Msg::Abort {
                to: index_of(&to),
                txn,
            }),
            co::Action::Reply { txn, committed } => {
                match committed {
                    Some(index) => prop_assert_eq!(
                        self.log.get(&txn),
                        Some(&index),
                        "client told committed before the decision is durable"
                    ),
                    None => prop_assert!(!self.log.contains_key(&txn), "aborted yet logged"),
                }
                prop_assert!(self.replies.insert(txn, committed).is_none(), "two replies");
            }
            co::Action::Answer { to, txn, outcome } => self.net.push(Msg::Outcome {
                to: index_of(&to),
                txn,
                outcome,
            }),
        }
        Ok(())
    }

    /// Steps participant `p`; with a failing disk, nothing is persisted,
    /// the machine keeps its old state, and the answer is an error.
    fn participant_step(
        &mut self,
        p: usize,
        event: pa::Event,
        disk_fails: bool,
    ) -> Result<Vec<pa::Action>, TestCaseError> {
        let node = &mut self.nodes[p];
        if disk_fails {
            // The counter steps a copy of its state per storage batch and
            // keeps it only if the batch is durable: here it is not.
            return Ok(Vec::new());
        }
        let actions = node.machine.step(event);
        for action in &actions {
            let pa::Action::Persist(record) = action else {
                continue;
            };
            match *record {
                pa::Record::Prepared { txn } => {
                    let items = self.items[&txn].clone();
                    node.disk.prepared.insert(txn, items);
                    node.ever_prepared.insert(txn);
                }
                pa::Record::Applied { txn, index } => {
                    prop_assert_eq!(
                        self.log.get(&txn),
                        Some(&index),
                        "c{} applied a commit that is not durably decided",
                        p
                    );
                    prop_assert!(
                        !node.commits.iter().any(|&(t, i)| t == txn || i == index),
                        "c{} applied txn {} or index {} twice",
                        p,
                        txn,
                        index
                    );
                    prop_assert!(!node.disk.applied.contains(index), "index applied again");
                    let items = node.disk.prepared.remove(&txn);
                    prop_assert!(items.is_some(), "applied without a prepared record");
                    node.disk.items.extend(items.unwrap_or_default());
                    node.disk.applied.insert(index);
                    node.commits.push((txn, index));
                }
                pa::Record::Forgotten { txn } => {
                    node.disk.prepared.remove(&txn);
                }
                pa::Record::AppliedRange { since, through } => {
                    node.disk.applied.insert_through(since, through);
                }
            }
        }
        Ok(actions)
    }

    fn deliver(&mut self, msg: Msg, disk_fails: bool) -> Result<(), TestCaseError> {
        match msg {
            Msg::Prepare { to, txn } => {
                let actions = self.participant_step(
                    to,
                    pa::Event::Prepare { txn, now: self.now },
                    disk_fails,
                )?;
                let yes = actions.contains(&pa::Action::VoteYes { txn });
                self.net.push(Msg::Vote { from: to, txn, yes });
            }
            Msg::Commit { to, txn, index } => {
                let was_prepared = self.nodes[to].machine.is_prepared(txn);
                let had_index = self.nodes[to].machine.applied().contains(index);
                let actions =
                    self.participant_step(to, pa::Event::Commit { txn, index }, disk_fails)?;
                if actions.contains(&(pa::Action::UnknownTxn { txn, index })) {
                    prop_assert!(
                        !was_prepared && !had_index,
                        "refused a commit it could apply"
                    );
                }
                if !was_prepared && !had_index && !disk_fails {
                    prop_assert_eq!(
                        actions,
                        vec![pa::Action::UnknownTxn { txn, index }],
                        "a commit for a txn never prepared must be refused"
                    );
                }
                if !disk_fails {
                    self.net.push(Msg::CommitAck { from: to, index });
                }
            }
            Msg::Abort { to, txn } => {
                self.participant_step(to, pa::Event::Abort { txn }, disk_fails)?;
            }
            Msg::Outcome { to, txn, outcome } => {
                if outcome == Outcome::Aborted {
                    prop_assert!(!self.log.contains_key(&txn), "told aborted, but logged");
                }
                self.participant_step(to, pa::Event::Outcome { txn, outcome }, disk_fails)?;
            }
            Msg::Vote { from, txn, yes } => self.coordinator_step(co::Event::Voted {
                txn,
                from: id(from),
                yes,
            })?,
            Msg::CommitAck { from, index } => self.coordinator_step(co::Event::Acked {
                index,
                from: id(from),
            })?,
            Msg::AskOutcome { from, txn } => self.coordinator_step(co::Event::AskOutcome {
                txn,
                from: id(from),
            })?,
        }
        Ok(())
    }

    fn ask_about_prepared(&mut self, p: usize) -> Result<(), TestCaseError> {
        let tick = pa::Event::Tick { now: self.now };
        for action in self.participant_step(p, tick, false)? {
            if let pa::Action::AskOutcome { txn } = action {
                self.net.push(Msg::AskOutcome { from: p, txn });
            }
        }
        Ok(())
    }

    fn apply(&mut self, step: Step) -> Result<(), TestCaseError> {
        self.now = Millis(self.now.0 + STEP_MS);
        match step {
            Step::Begin(mask) => {
                let txn = TxnId(self.next_txn);
                self.next_txn += 1;
                let items: BTreeSet<Item> = (0..ITEMS).filter(|i| mask & (1 << i) != 0).collect();
                let items = if items.is_empty() {
                    [mask % ITEMS].into()
                } else {
                    items
                };
                self.items.insert(txn, items);
                self.coordinator_step(co::Event::Begin {
                    txn,
                    participants: Self::everyone(),
                })?;
            }
            Step::Deliver(_) | Step::Duplicate(_) | Step::Drop(_) | Step::FailWrite(_)
                if self.net.is_empty() => {}
            Step::Deliver(n) => {
                let msg = self.net.remove(n % self.net.len());
                self.deliver(msg, false)?;
            }
            Step::Duplicate(n) => {
                let msg = self.net[n % self.net.len()].clone();
                self.deliver(msg, false)?;
            }
            Step::Drop(n) => {
                self.net.remove(n % self.net.len());
            }
            Step::FailWrite(n) => {
                let msg = self.net.remove(n % self.net.len());
                self.deliver(msg, true)?;
            }
            Step::PrepareTimeout(n) => {
                let in_flight: Vec<TxnId> = self.coordinator.in_flight().collect();
                if !in_flight.is_empty() {
                    let txn = in_flight[n % in_flight.len()];
                    self.coordinator_step(co::Event::PrepareTimeout { txn })?;
                }
            }
            Step::LogWrite => {
                if let Some((txn, index)) = self.log_queue.pop_front() {
                    self.log.insert(txn, index);
                    self.log_written.push_back(txn);
                }
            }
            Step::LogReturn => {
                if let Some(txn) = self.log_written.pop_front() {
                    self.coordinator_step(co::Event::Logged { txn })?;
                }
            }
            Step::Resend => self.coordinator_step(co::Event::Resend)?,
            Step::InDoubt(p) => self.ask_about_prepared(p)?,
            Step::Import(p, q) => {
                let since = self.nodes[p].machine.applied().contiguous();
                let through = self.nodes[q].disk.applied.contiguous();
                if p != q && through > since {
                    // The peer's entries: the items of every index it holds.
                    let by_index: BTreeMap<CommitIndex, TxnId> =
                        self.log.iter().map(|(&t, &i)| (i, t)).collect();
                    for i in since.0 + 1..=through.0 {
                        let txn = by_index[&CommitIndex(i)];
                        let items = self.items[&txn].clone();
                        self.nodes[p].disk.items.extend(items);
                    }
                    self.participant_step(
                        p,
                        pa::Event::Imported {
                            range: Some((since, through)),
                        },
                        false,
                    )?;
                }
            }
            Step::StrayCommit(p, n) => {
                if !self.log.is_empty() {
                    let (&txn, &index) = self.log.iter().nth(n % self.log.len()).unwrap();
                    self.deliver(Msg::Commit { to: p, txn, index }, false)?;
                }
            }
            Step::RestartParticipant(p) => {
                let node = &mut self.nodes[p];
                let (machine, ask) = Participant::recover(
                    pa::Config::default(),
                    node.disk.prepared.keys().copied(),
                    node.disk.applied.clone(),
                );
                // When each transaction was prepared is not durable, and
                // need not be: a restart asks about every one.
                prop_assert_eq!(
                    (machine.prepared().collect::<Vec<_>>(), machine.applied()),
                    (
                        node.machine.prepared().collect::<Vec<_>>(),
                        node.machine.applied()
                    ),
                    "c{} lost or kept the wrong state",
                    p
                );
                node.machine = machine;
                for action in ask {
                    if let pa::Action::AskOutcome { txn } = action {
                        self.net.push(Msg::AskOutcome { from: p, txn });
                    }
                }
            }
            Step::RestartCoordinator => {
                // What was not durable is gone, and so are the answers in
                // flight to it (their connections died with it).
                self.log_queue.clear();
                self.log_written.clear();
                let (coordinator, actions) =
                    Coordinator::recover(self.min_yes, self.log.clone(), &Self::everyone());
                prop_assert_eq!(
                    coordinator.log().collect::<BTreeMap<_, _>>(),
                    self.log.clone()
                );
                self.coordinator = coordinator;
                for action in actions {
                    self.carry_out_coordinator(action)?;
                }
            }
        }
        Ok(())
    }

    /// Checks that hold at every moment.
    fn check_safety(&self) -> Result<(), TestCaseError> {
        let indexes: BTreeSet<u64> = self.log.values().map(|i| i.0).collect();
        prop_assert_eq!(indexes.len(), self.log.len(), "an index decided twice");
        prop_assert_eq!(
            indexes.iter().copied().collect::<Vec<_>>(),
            (1..=indexes.len() as u64).collect::<Vec<_>>(),
            "decided indexes have a gap"
        );
        let by_index: BTreeMap<CommitIndex, TxnId> =
            self.log.iter().map(|(&t, &i)| (i, t)).collect();
        for (txn, reply) in &self.replies {
            if reply.is_none() {
                prop_assert!(
                    !self.log.contains_key(txn),
                    "{} answered aborted, then logged",
                    txn
                );
            }
        }
        for (p, node) in self.nodes.iter().enumerate() {
            prop_assert_eq!(node.machine.applied(), &node.disk.applied);
            prop_assert_eq!(
                node.machine.prepared().collect::<BTreeSet<_>>(),
                node.disk.prepared.keys().copied().collect::<BTreeSet<_>>()
            );
            // Items are exactly those of the applied indexes.
            let applied = &node.disk.applied;
            let mut want = BTreeSet::new();
            let top = by_index.keys().last().map_or(0, |i| i.0);
            for i in 1..=top.max(applied.contiguous().0) {
                if applied.contains(CommitIndex(i)) {
                    let txn = by_index.get(&CommitIndex(i));
                    prop_assert!(txn.is_some(), "c{} holds index {} nobody decided", p, i);
                    want.extend(self.items[txn.unwrap()].iter().copied());
                }
            }
            prop_assert_eq!(
                &node.disk.items,
                &want,
                "c{} holds other items than it applied",
                p
            );
        }
        Ok(())
    }

    /// Lets every message through and every timer fire until nothing moves.
    fn quiesce(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..20 {
            while !self.net.is_empty() {
                let msg = self.net.remove(0);
                self.deliver(msg, false)?;
            }
            let in_flight: Vec<TxnId> = self.coordinator.in_flight().collect();
            for txn in in_flight {
                self.coordinator_step(co::Event::PrepareTimeout { txn })?;
            }
            while !self.log_queue.is_empty() || !self.log_written.is_empty() {
                self.apply(Step::LogWrite)?;
                self.apply(Step::LogReturn)?;
            }
            let settled = self.net.is_empty()
                && self.coordinator.in_flight().next().is_none()
                && self.coordinator.unacknowledged() == 0
                && self
                    .nodes
                    .iter()
                    .all(|n| n.machine.prepared().next().is_none());
            if settled {
                return Ok(());
            }
            self.coordinator_step(co::Event::Resend)?;
            // Long enough that every prepared transaction is in doubt.
            self.now = Millis(self.now.0 + pa::DEFAULT_IN_DOUBT_AFTER.0);
            for p in 0..PARTICIPANTS {
                self.ask_about_prepared(p)?;
            }
        }
        Err(TestCaseError::fail("did not settle"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]
    #[test]
    fn two_phase_commit_keeps_its_guarantees(
        steps in proptest::collection::vec(step(), 1..200),
        min_yes in 1usize..=PARTICIPANTS,
    ) {
        let mut world = World::new(min_yes);
        for step in steps {
            world.apply(step)?;
            world.check_safety()?;
        }
        world.quiesce()?;
        world.check_safety()?;
        for (&txn, &index) in &world.log {
            for (p, node) in world.nodes.iter().enumerate() {
                if node.ever_prepared.contains(&txn) {
                    prop_assert!(
                        node.machine.applied().contains(index),
                        "c{} prepared {} (committed at {}) but never applied it", p, txn, index
                    );
                }
            }
        }
        for (txn, reply) in &world.replies {
            if let Some(index) = reply {
                prop_assert_eq!(world.log.get(txn), Some(index));
            }
        }
    }
}
