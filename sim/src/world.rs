//! One run: the simulated clock, the queue of everything that will happen
//! (ordered by time, then by the order it was scheduled), the processes,
//! and the loop that takes one event at a time. Nothing here reads a clock,
//! spawns a thread or iterates a hash map, so a seed names one run, byte
//! for byte.

use crate::checker::{History, Violation};
use crate::client::Client;
use crate::coordinator::Coordinator;
use crate::counter::{Counter, Timer};
use crate::net::{counter_id, Msg, Network, Node};
use crate::rng::Rng;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use tally_common::api::CounterState;
use tally_common::{CommitIndex, Incarnation, Item};

/// The shape of one run, drawn from its seed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub counters: usize,
    pub min_insync: usize,
    pub clients: usize,
    pub tenants: usize,
    /// Longest pause of a client between two operations: most runs keep
    /// the cluster busy, some leave it quiet for long stretches, when no
    /// commit moves the decided index while membership changes.
    pub think_ms: u64,
    pub max_queued: usize,
    pub prepare_timeout_ms: u64,
    /// Faults happen from the start until this time.
    pub fault_ms: u64,
    /// Mean time between faults.
    pub fault_every_ms: u64,
    /// Chance that a coordinator dies right after forming a commit decision.
    pub crash_after_decision: f64,
    /// Chance that a counter dies right after a yes vote.
    pub crash_after_vote: f64,
    /// Chance that an export stream is cut.
    pub cut_stream: f64,
    /// How long an export stream takes to start (at most) and per entry
    /// it carries: a copy is not instant, and a joiner answers health
    /// checks while it runs.
    pub copy_setup_ms: u64,
    pub copy_ms_per_entry: u64,
    /// Once faults stop, everything must work again within this time.
    pub liveness_ms: u64,
    pub rejoin_after_ms: u64,
}

impl Settings {
    fn draw(rng: &mut Rng) -> Self {
        let counters = match rng.range(0, 9) {
            0 => 2,
            1 => 4,
            2 => 5,
            _ => 3,
        };
        Settings {
            counters,
            min_insync: if counters >= 3 && rng.chance(0.2) {
                2
            } else {
                1
            },
            clients: rng.range(2, 4) as usize,
            tenants: rng.range(1, 3) as usize,
            think_ms: if rng.chance(0.4) {
                rng.range(300, 2500)
            } else {
                40
            },
            max_queued: if rng.chance(0.2) {
                rng.range(1, 4) as usize
            } else {
                1024
            },
            prepare_timeout_ms: 500,
            fault_ms: rng.range(1500, 3000),
            fault_every_ms: rng.range(80, 300),
            crash_after_decision: [0.0, 0.05, 0.2][rng.pick(3)],
            crash_after_vote: [0.0, 0.02, 0.1][rng.pick(3)],
            cut_stream: [0.0, 0.2, 0.5][rng.pick(3)],
            copy_setup_ms: [1, 200, 600][rng.pick(3)],
            copy_ms_per_entry: [0, 5, 20][rng.pick(3)],
            liveness_ms: 15_000,
            rejoin_after_ms: 3000,
        }
    }
}

/// How a counter loses its disk.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DiskLoss {
    /// An empty data directory: a new incarnation.
    Wipe,
    /// An older copy of its own disk: the same incarnation, less data.
    Restore,
}

/// Something that will happen.
#[derive(Debug)]
pub(crate) enum Ev {
    Deliver {
        from: Node,
        to: Node,
        life: u64,
        msg: Msg,
    },
    CoordinatorTick {
        life: u64,
    },
    CoordinatorFsync {
        life: u64,
    },
    CounterSync {
        i: usize,
        life: u64,
    },
    CounterTimer {
        i: usize,
        life: u64,
        timer: Timer,
    },
    Timeout {
        node: Node,
        life: u64,
        call: u64,
    },
    Client {
        c: usize,
    },
    Fault,
    /// Counter `i`, if still in that life, loses its disk.
    LoseDisk {
        i: usize,
        life: u64,
        loss: DiskLoss,
        /// When it restarts, after the loss.
        back: u64,
    },
    Crash {
        node: Node,
        life: u64,
    },
    Restart {
        node: Node,
    },
    Heal {
        generation: u64,
    },
    Calm {
        generation: u64,
    },
    FaultsEnd,
    Probe,
    LivenessDeadline,
    Settled,
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest, then the first scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Where the liveness check stands once faults have stopped.
#[derive(Debug, Default)]
struct Liveness {
    probing: Option<Item>,
    probe_read: Option<u64>,
    done_at: Option<u64>,
    probes: u64,
}

/// What a run found.
#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    pub settings: Settings,
    pub violation: Option<Violation>,
    pub events: u64,
    pub end_ms: u64,
    pub acked: usize,
    pub reads: usize,
    pub decided: CommitIndex,
}

/// Most events one run may take: more means something spins.
const MAX_EVENTS: u64 = 3_000_000;

pub struct World {
    pub(crate) now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    pub(crate) rng: Rng,
    pub(crate) net: Network,
    pub(crate) coordinator: Coordinator,
    pub(crate) counters: Vec<Counter>,
    pub(crate) clients: Vec<Client>,
    pub(crate) history: History,
    pub(crate) settings: Settings,
    pub(crate) faults_on: bool,
    next_id: u64,
    trace: bool,
    generation: u64,
    liveness: Liveness,
    finished: bool,
    events: u64,
}

impl World {
    pub fn new(seed: u64, trace: bool) -> Self {
        let mut rng = Rng::new(seed);
        let settings = Settings::draw(&mut rng);
        let counters = (0..settings.counters)
            .map(|_| Counter::new(Incarnation(rng.next_u64() >> 1)))
            .collect();
        let mut clients: Vec<Client> = (0..settings.clients).map(|_| Client::new(false)).collect();
        clients.push(Client::new(true));
        World {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            rng,
            net: Network::default(),
            coordinator: Coordinator::default(),
            counters,
            clients,
            history: History::default(),
            settings,
            faults_on: true,
            next_id: 0,
            trace,
            generation: 0,
            liveness: Liveness::default(),
            finished: false,
            events: 0,
        }
    }

    pub(crate) fn trace(&self, line: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>7} {}", self.now, line());
        }
    }

    pub(crate) fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn schedule(&mut self, after: u64, ev: Ev) {
        self.schedule_at(self.now + after, ev);
    }

    pub(crate) fn schedule_at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    fn life_of(&self, node: Node) -> Option<u64> {
        match node {
            Node::Coordinator => self.coordinator_life(),
            Node::Counter(i) => self.counter_life(i),
            Node::Client(_) => Some(0),
        }
    }

    /// Puts a message on the wire: lost if its receiver is down, cut off or
    /// unlucky; otherwise delivered after a delay (which reorders), maybe
    /// twice.
    pub(crate) fn send(&mut self, from: Node, to: Node, msg: Msg) {
        self.send_after(from, to, msg, 0);
    }

    /// As [`World::send`], for a message that takes `extra` ms more to
    /// arrive (a long stream).
    pub(crate) fn send_after(&mut self, from: Node, to: Node, msg: Msg, extra: u64) {
        let Some(life) = self.life_of(to) else {
            return;
        };
        if self.net.partitioned(from, to) || self.rng.chance(self.net.loss) {
            return;
        }
        // Internal calls may arrive twice (a retrying proxy, a re-sent
        // request); a client's write never does: two copies of one POST
        // could be answered differently, and the client would hear only one.
        let internal = !matches!(from, Node::Client(_)) && !matches!(to, Node::Client(_));
        let copies = if internal && self.rng.chance(self.net.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.rng.range(1, 6) + self.net.slow + extra;
            if self.rng.chance(0.05) {
                delay += self.rng.range(10, 60);
            }
            // Now and then a message sits in a stalled connection: an
            // answer that arrives after its sender restarted.
            if self.faults_on && self.rng.chance(0.01) {
                delay += self.rng.range(100, 450);
            } else if let (Node::Counter(i), Msg::Reply { .. }) = (from, &msg) {
                let (until, release) = self.counters[i].stalled;
                if self.now < until {
                    delay = delay.max(release - self.now) + self.rng.range(0, 20);
                }
            }
            self.schedule(
                delay,
                Ev::Deliver {
                    from,
                    to,
                    life,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn start(&mut self) {
        self.coordinator_start();
        for i in 0..self.counters.len() {
            let at = self.rng.range(0, 50);
            self.schedule(
                at,
                Ev::Restart {
                    node: Node::Counter(i),
                },
            );
        }
        for c in 0..self.settings.clients {
            let at = self.rng.range(100, 300);
            self.schedule(at, Ev::Client { c });
        }
        let first = self.rng.range(50, 2 * self.settings.fault_every_ms);
        self.schedule(first, Ev::Fault);
        self.schedule(self.settings.fault_ms, Ev::FaultsEnd);
        self.schedule(
            self.settings.fault_ms + self.settings.liveness_ms,
            Ev::LivenessDeadline,
        );
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                from,
                to,
                life,
                msg,
            } => {
                if self.life_of(to) != Some(life) || self.net.partitioned(from, to) {
                    return;
                }
                match to {
                    Node::Coordinator => self.coordinator_receive(from, msg),
                    Node::Counter(i) => self.counter_receive(i, from, msg),
                    Node::Client(c) => self.client_receive(c, msg),
                }
            }
            Ev::CoordinatorTick { life } => self.coordinator_tick(life),
            Ev::CoordinatorFsync { life } => self.coordinator_fsync(life),
            Ev::CounterSync { i, life } => self.counter_sync(i, life),
            Ev::CounterTimer { i, life, timer } => {
                if self.counter_life(i) == Some(life) {
                    self.counter_timer(i, timer);
                }
            }
            Ev::Timeout { node, life, call } => {
                if self.life_of(node) != Some(life) {
                    return;
                }
                match node {
                    Node::Coordinator => self.coordinator_timeout(call),
                    Node::Counter(i) => self.counter_timeout(i, call),
                    Node::Client(c) => self.client_timeout(c, call),
                }
            }
            Ev::Client { c } => self.client_next(c),
            Ev::Fault => self.fault(),
            Ev::LoseDisk {
                i,
                life,
                loss,
                back,
            } => {
                if self.counter_life(i) == Some(life) && self.faults_on {
                    self.lose_disk(i, loss, back);
                }
            }
            Ev::Crash { node, life } => {
                if self.life_of(node) == Some(life) {
                    self.crash(node);
                    let back = self.rng.range(5, 400);
                    self.schedule(back, Ev::Restart { node });
                }
            }
            Ev::Restart { node } => {
                if self.life_of(node).is_none() {
                    match node {
                        Node::Coordinator => self.coordinator_start(),
                        Node::Counter(i) => self.counter_start(i),
                        Node::Client(_) => {}
                    }
                }
            }
            Ev::Heal { generation } => {
                if generation == self.generation {
                    self.net.cut.clear();
                }
            }
            Ev::Calm { generation } => {
                if generation == self.generation {
                    self.net.loss = 0.0;
                    self.net.dup = 0.0;
                    self.net.slow = 0;
                }
            }
            Ev::FaultsEnd => self.faults_end(),
            Ev::Probe => self.probe(),
            Ev::LivenessDeadline => {
                if self.liveness.done_at.is_none() {
                    let state = self.describe_cluster();
                    self.history.violation(
                        "liveness",
                        format!(
                            "{} ms after the faults stopped, the cluster does not serve \
                             ({} probes tried)\n{state}",
                            self.settings.liveness_ms, self.liveness.probes
                        ),
                    );
                    self.finished = true;
                }
            }
            Ev::Settled => {
                self.final_check();
                self.finished = true;
            }
        }
    }

    fn crash(&mut self, node: Node) {
        match node {
            Node::Coordinator => self.coordinator_crash(),
            Node::Counter(i) => self.counter_crash(i),
            Node::Client(_) => {}
        }
    }

    // ---- faults ----

    /// Losing this counter's disk cannot lose data the cluster needs: it
    /// holds no prepared transaction (so no yes vote of it can be counted
    /// from now on), and another counter holds every decided commit
    /// durably. Only an operator may give commits up, which the simulation
    /// never does, so a disk is lost only when this holds.
    fn disk_may_be_lost(&self, i: usize) -> bool {
        let decided = self.coordinator.log.decided;
        self.counters[i].disk.prepared.is_empty()
            && !self.counters[i].has_unsynced()
            && (0..self.counters.len()).any(|j| j != i && self.counters[j].applied() >= decided)
    }

    fn fault(&mut self) {
        if !self.faults_on {
            return;
        }
        let next = self.rng.range(10, 2 * self.settings.fault_every_ms);
        self.schedule(next, Ev::Fault);
        let n = self.counters.len();
        let i = self.rng.pick(n);
        match self.rng.range(0, 99) {
            0..=21 => {
                self.trace(|| format!("FAULT: crash c{i}"));
                self.counter_crash(i);
                let back = self.rng.range(20, 1200);
                self.schedule(
                    back,
                    Ev::Restart {
                        node: Node::Counter(i),
                    },
                );
            }
            22..=33 => {
                self.trace(|| "FAULT: crash the coordinator".to_string());
                self.coordinator_crash();
                let back = self.rng.range(10, 700);
                self.schedule(
                    back,
                    Ev::Restart {
                        node: Node::Coordinator,
                    },
                );
            }
            34..=49 => {
                let loss = if self.rng.chance(0.4) {
                    DiskLoss::Wipe
                } else {
                    DiskLoss::Restore
                };
                let back = self.rng.range(10, 600);
                if self.rng.chance(0.7) {
                    // Its connection to the coordinator stalls first, for
                    // about a health round: what it answers in its last
                    // moments (a health check, a commit) arrives after it
                    // came back on the other disk and registered.
                    let after = self.rng.range(100, 300);
                    let back = self.rng.range(5, 100);
                    let release = self.now + after + back + self.rng.range(10, 100);
                    self.counters[i].stalled = (self.now + after, release);
                    let life = self.counters[i].life;
                    self.trace(|| {
                        format!("FAULT: c{i}'s connection stalls; its disk goes in {after} ms")
                    });
                    self.schedule(
                        after,
                        Ev::LoseDisk {
                            i,
                            life,
                            loss,
                            back,
                        },
                    );
                } else {
                    self.lose_disk(i, loss, back);
                }
            }
            50..=53 => {
                self.trace(|| "FAULT: power cut".to_string());
                self.coordinator_crash();
                let back = self.rng.range(10, 500);
                self.schedule(
                    back,
                    Ev::Restart {
                        node: Node::Coordinator,
                    },
                );
                for j in 0..n {
                    self.counter_crash(j);
                    let back = self.rng.range(10, 500);
                    self.schedule(
                        back,
                        Ev::Restart {
                            node: Node::Counter(j),
                        },
                    );
                }
            }
            54..=67 => {
                self.generation += 1;
                self.net.cut.clear();
                if self.rng.chance(0.3) {
                    self.net.cut.insert(Node::Coordinator);
                }
                for j in 0..n {
                    if self.rng.chance(0.4) {
                        self.net.cut.insert(Node::Counter(j));
                    }
                }
                self.trace(|| format!("FAULT: partition {:?}", self.net.cut));
                let heal = self.rng.range(50, 1200);
                let generation = self.generation;
                self.schedule(heal, Ev::Heal { generation });
            }
            68..=77 => {
                self.generation += 1;
                self.net.loss = self.rng.range(0, 30) as f64 / 100.0;
                self.net.dup = self.rng.range(0, 10) as f64 / 100.0;
                self.net.slow = if self.rng.chance(0.3) {
                    self.rng.range(5, 40)
                } else {
                    0
                };
                self.trace(|| {
                    format!(
                        "FAULT: network loss {} dup {} slow {}",
                        self.net.loss, self.net.dup, self.net.slow
                    )
                });
                let calm = self.rng.range(100, 1200);
                let generation = self.generation;
                self.schedule(calm, Ev::Calm { generation });
            }
            78..=89 => {
                let disk = self.counters[i].disk.clone();
                self.counters[i].snapshots.push(disk);
            }
            _ => {}
        }
    }

    /// Counter `i` dies and comes back on another disk: an empty one (a
    /// new incarnation) or an older copy of its own (the same one). Only
    /// when losing its disk cannot lose data the cluster needs.
    fn lose_disk(&mut self, i: usize, loss: DiskLoss, back: u64) {
        if !self.disk_may_be_lost(i) {
            return;
        }
        let disk = match loss {
            DiskLoss::Wipe => {
                self.trace(|| format!("FAULT: wipe c{i}"));
                let incarnation = Incarnation(self.rng.next_u64() >> 1);
                self.counters[i].snapshots.clear();
                crate::disk::Disk::new(incarnation)
            }
            DiskLoss::Restore => {
                let incarnation = self.counters[i].disk.incarnation;
                // A copy that lacks something, if there is one: restoring
                // the disk as it is now tests nothing.
                let c = &self.counters[i];
                let same: Vec<&crate::disk::Disk> = c
                    .snapshots
                    .iter()
                    .filter(|d| d.incarnation == incarnation)
                    .collect();
                let older: Vec<&crate::disk::Disk> = same
                    .iter()
                    .copied()
                    .filter(|d| d.applied.contiguous() < c.applied())
                    .collect();
                let copies = if older.is_empty() { same } else { older };
                if copies.is_empty() {
                    return;
                }
                let old = copies[self.rng.pick(copies.len())].clone();
                self.trace(|| {
                    format!(
                        "FAULT: c{i} restarts on an older copy of its disk (applied {})",
                        old.applied.contiguous()
                    )
                });
                old
            }
        };
        self.counter_crash(i);
        self.counters[i].disk = disk;
        self.schedule(
            back,
            Ev::Restart {
                node: Node::Counter(i),
            },
        );
    }

    fn faults_end(&mut self) {
        self.trace(|| "faults stop; the network heals".to_string());
        self.faults_on = false;
        self.generation += 1;
        self.net = Network::default();
        if self.coordinator_life().is_none() {
            let back = self.rng.range(0, 50);
            self.schedule(
                back,
                Ev::Restart {
                    node: Node::Coordinator,
                },
            );
        }
        for i in 0..self.counters.len() {
            if self.counter_life(i).is_none() {
                let back = self.rng.range(0, 50);
                self.schedule(
                    back,
                    Ev::Restart {
                        node: Node::Counter(i),
                    },
                );
            }
        }
        self.schedule(1000, Ev::Probe);
    }

    // ---- liveness ----

    /// Every counter is up, in sync, registered and live in the
    /// coordinator's view, and knows it.
    fn all_in_sync(&self) -> bool {
        let Some(core) = self.coordinator.core.as_ref() else {
            return false;
        };
        let epoch = core.config().epoch;
        (0..self.counters.len()).all(|i| {
            let c = &self.counters[i];
            c.up && c.registration.epoch() == Some(epoch)
                && c.registration.told_in_sync()
                && core
                    .cluster()
                    .member(&counter_id(i))
                    .is_some_and(|m| m.in_sync && m.registered && m.state == CounterState::Live)
        })
    }

    fn probe(&mut self) {
        if self.liveness.done_at.is_some() || self.finished {
            return;
        }
        // The other clients stop a second after the faults.
        for c in &mut self.clients {
            c.stopped = !c.probe;
        }
        self.schedule(100, Ev::Probe);
        let probe = self.clients.len() - 1;
        if !self.clients[probe].idle() || !self.all_in_sync() {
            return;
        }
        self.liveness.probes += 1;
        let request = self.history.requests.len();
        let item = Item::new(format!("r{request}.0"), "t0");
        self.history.new_request(probe, vec![item.clone()]);
        self.liveness.probing = Some(item);
        self.write_attempt(probe, request);
    }

    pub(crate) fn probe_acked(&mut self, c: usize, _request: usize) {
        self.read(c, "t0".to_string());
        self.liveness.probe_read = self.history.reads.keys().next_back().copied();
    }

    pub(crate) fn probe_read(&mut self, _c: usize, read: u64, ok: bool) {
        if !ok || self.liveness.probe_read != Some(read) {
            return;
        }
        let counted = self.history.reads[&read]
            .answered
            .as_ref()
            .is_some_and(|(_, r)| {
                self.liveness
                    .probing
                    .as_ref()
                    .is_some_and(|item| r.ids.contains(&item.id))
            });
        if counted {
            self.trace(|| {
                "liveness: a write and a read succeed with every counter in sync".to_string()
            });
            self.liveness.done_at = Some(self.now);
            // Let the last commits reach everyone, then check the end state.
            self.schedule(3000, Ev::Settled);
        }
    }

    pub(crate) fn describe_cluster(&self) -> String {
        let mut s = String::new();
        match self.coordinator.core.as_ref() {
            None => s.push_str("coordinator down\n"),
            Some(core) => {
                let _ = writeln!(
                    s,
                    "coordinator epoch {}, decided {}, in-flight {:?}, availability {:?}",
                    core.config().epoch,
                    core.fence(),
                    core.load(),
                    core.cluster().availability()
                );
                for m in core.cluster().members() {
                    let _ = writeln!(
                        s,
                        "  member {}: {:?} in_sync {} registered {} applied {} join_until {} catching_up {} incarnation {:?}",
                        m.id, m.state, m.in_sync, m.registered, m.applied, m.join_until, m.catching_up, m.incarnation
                    );
                }
            }
        }
        for (i, c) in self.counters.iter().enumerate() {
            let _ = writeln!(
                s,
                "  c{i}: up {} incarnation {} applied {} prepared {} registered epoch {} in_sync {} catching up {}",
                c.up,
                c.disk.incarnation,
                c.applied(),
                c.disk.prepared.len(),
                c.registration.epoch().unwrap_or(0),
                c.registration.told_in_sync(),
                c.catching_up()
            );
        }
        s
    }

    /// The end state, once everything settled: every counter holds exactly
    /// the decided commits, every acknowledged item and no refused one.
    fn final_check(&mut self) {
        let decided = self.coordinator.log.decided;
        let mut expected: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
            Default::default();
        for (index, (txn, _)) in &self.history.decided {
            if *index > decided {
                continue;
            }
            for item in self.history.txn_items.get(txn).into_iter().flatten() {
                expected
                    .entry(item.tenant.clone())
                    .or_default()
                    .insert(item.id.clone());
            }
        }
        for (i, c) in self.counters.iter().enumerate() {
            let disk = &c.disk;
            let mut logged: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
                Default::default();
            for items in disk.log.values() {
                for item in items {
                    logged
                        .entry(item.tenant.clone())
                        .or_default()
                        .insert(item.id.clone());
                }
            }
            if logged != disk.items {
                let detail = format!("c{i}'s items differ from the union of its log entries");
                self.history.violation("per-counter sanity", detail);
                return;
            }
            if c.applied() < decided {
                let detail = format!(
                    "3 s after the cluster served again, c{i} has applied {} of {decided} decided commits\n{}",
                    c.applied(),
                    self.describe_cluster()
                );
                self.history.violation("liveness", detail);
                return;
            }
            if disk.items != expected {
                let mut diff = String::new();
                for (tenant, ids) in &expected {
                    let held = disk.items.get(tenant).cloned().unwrap_or_default();
                    for id in ids.difference(&held) {
                        let _ = write!(diff, " missing {tenant}/{id};");
                    }
                    for id in held.difference(ids) {
                        let _ = write!(diff, " extra {tenant}/{id};");
                    }
                }
                let n = diff
                    .split_whitespace()
                    .nth(1)
                    .and_then(|x| x.split('/').nth(1))
                    .and_then(|id| crate::checker::request_of(id.trim_end_matches(';')));
                let detail = format!(
                    "at the end c{i} (applied {}) does not hold exactly the items of the decided commits:{diff}\n{}",
                    c.applied(),
                    n.map_or(String::new(), |n| self.history.explain(n))
                );
                self.history.violation("no lost items (at the end)", detail);
                return;
            }
        }
        for (n, request) in self.history.requests.iter().enumerate() {
            let held = request.items.iter().all(|item| {
                expected
                    .get(&item.tenant)
                    .is_some_and(|ids| ids.contains(&item.id))
            });
            if request.acked().is_some() && !held {
                let detail = format!(
                    "request {n} was acknowledged and is not held at the end\n{}",
                    self.history.explain(n)
                );
                self.history.violation("no lost items (at the end)", detail);
                return;
            }
            if request.refused()
                && request.items.iter().any(|item| {
                    expected
                        .get(&item.tenant)
                        .is_some_and(|ids| ids.contains(&item.id))
                })
            {
                let detail = format!(
                    "request {n} was refused and is counted at the end\n{}",
                    self.history.explain(n)
                );
                self.history.violation("no phantom items", detail);
                return;
            }
        }
    }

    /// Runs until the end state is checked, a liveness deadline passes, or
    /// the queue empties.
    pub fn run(mut self, seed: u64) -> RunReport {
        self.start();
        while let Some(next) = self.queue.pop() {
            self.now = next.at;
            self.history.now = next.at;
            self.events += 1;
            if self.events > MAX_EVENTS {
                self.history.violation(
                    "liveness",
                    format!("more than {MAX_EVENTS} events: something spins"),
                );
                break;
            }
            self.handle(next.ev);
            if self.finished {
                break;
            }
        }
        let mut violation = self
            .history
            .violations
            .iter()
            .min_by_key(|v| v.time)
            .cloned();
        if let Some(read) = self.history.check_reads() {
            if violation.as_ref().is_none_or(|v| read.time < v.time) {
                violation = Some(read);
            }
        }
        RunReport {
            seed,
            violation,
            events: self.events,
            end_ms: self.now,
            acked: self
                .history
                .requests
                .iter()
                .filter(|r| r.acked().is_some())
                .count(),
            reads: self
                .history
                .reads
                .values()
                .filter(|r| r.answered.is_some())
                .count(),
            decided: self.coordinator.log.decided,
            settings: self.settings,
        }
    }
}

/// Runs one seed.
pub fn run(seed: u64, trace: bool) -> RunReport {
    World::new(seed, trace).run(seed)
}
