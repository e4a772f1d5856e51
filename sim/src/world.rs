//! One run: the simulated clock, the queue of everything that will happen
//! (ordered by time, then by the order it was scheduled), the processes,
//! and the loop that takes one event at a time. Nothing here reads a clock,
//! spawns a thread or iterates a hash map, so a seed names one run, byte
//! for byte.

use crate::agreement::Agreement;
use crate::checker::{History, Violation};
use crate::client::Client;
use crate::coordinator::Coordinator;
use crate::counter::{Counter, Timer};
use crate::net::{counter_id, Msg, Network, Node};
use crate::replica::RaftSettings;
use crate::rng::Rng;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use tally_common::api::CounterState;
use tally_common::{CommitIndex, Incarnation, Item};

/// The shape of one run, drawn from its seed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// One coordinator, or three replicating their decisions with Raft.
    pub coordinators: usize,
    /// The Raft timing, with several coordinators.
    pub raft: Option<RaftSettings>,
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

/// What a run may be told instead of drawing it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The number of coordinators (1 or 3); drawn from the seed if `None`.
    pub coordinators: Option<usize>,
}

/// The share of seeds whose world has three coordinators.
const REPLICATED_SHARE: f64 = 0.4;

impl Settings {
    /// The number of coordinators comes from a generator of its own, so a
    /// seed whose world has one coordinator plays exactly the run it
    /// played before worlds could have three.
    fn draw(seed: u64, rng: &mut Rng, options: Options) -> Self {
        let coordinators = options.coordinators.unwrap_or_else(|| {
            if Rng::new(seed ^ 0x3C00_4D1A).chance(REPLICATED_SHARE) {
                3
            } else {
                1
            }
        });
        let mut settings = Settings::draw_one(rng);
        settings.coordinators = coordinators;
        if coordinators > 1 {
            settings.raft = Some(RaftSettings {
                tick_ms: [10, 20][rng.pick(2)],
                heartbeat_ticks: 2,
                election_ticks: (10, 20),
                snapshot_every: [3, 10, 50][rng.pick(3)],
            });
        }
        settings
    }

    fn draw_one(rng: &mut Rng) -> Self {
        let counters = match rng.range(0, 9) {
            0 => 2,
            1 => 4,
            2 => 5,
            _ => 3,
        };
        Settings {
            coordinators: 1,
            raft: None,
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
        /// Boxed: the queue moves events around, and messages are large.
        msg: Box<Msg>,
    },
    CoordinatorTick {
        k: usize,
        life: u64,
    },
    CoordinatorFsync {
        k: usize,
        life: u64,
    },
    /// An empty coordinator asks the others' terms again.
    AskTerms {
        k: usize,
        life: u64,
    },
    /// Coordinator `k`'s Raft message to `peer` (a Raft id) found no one.
    Unreachable {
        k: usize,
        life: u64,
        peer: u64,
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
    /// A client tries a write again after "not leader" or "deposed".
    Retry {
        c: usize,
        request: usize,
        attempt: u64,
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
    pub(crate) coordinators: Vec<Coordinator>,
    pub(crate) agreement: Agreement,
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
    pub fn new(seed: u64, trace: bool, options: Options) -> Self {
        let mut rng = Rng::new(seed);
        let settings = Settings::draw(seed, &mut rng, options);
        let counters = (0..settings.counters)
            .map(|_| Counter::new(Incarnation(rng.next_u64() >> 1)))
            .collect();
        let mut clients: Vec<Client> = (0..settings.clients).map(|_| Client::new(false)).collect();
        clients.push(Client::new(true));
        let coordinators = (0..settings.coordinators)
            .map(|_| Coordinator::new(settings.coordinators > 1))
            .collect();
        World {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            rng,
            net: Network::default(),
            coordinators,
            agreement: Agreement::default(),
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

    pub(crate) fn life_of(&self, node: Node) -> Option<u64> {
        match node {
            Node::Coordinator(k) => self.coordinator_life(k),
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
        // request); a client's write never does, not even one a coordinator
        // passes on to the leader: two copies of one POST could be answered
        // differently, and the client would hear only one.
        let internal = !matches!(from, Node::Client(_))
            && !matches!(to, Node::Client(_))
            && !matches!(msg, Msg::Write { .. } | Msg::WriteAnswer { .. });
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
                    msg: Box::new(msg.clone()),
                },
            );
        }
    }

    fn start(&mut self) {
        if self.replicated() {
            for k in 0..self.coordinators.len() {
                let at = self.rng.range(0, 50);
                self.schedule(
                    at,
                    Ev::Restart {
                        node: Node::Coordinator(k),
                    },
                );
            }
        } else {
            self.coordinator_start(0);
        }
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
                    Node::Coordinator(k) => self.coordinator_receive(k, from, *msg),
                    Node::Counter(i) => self.counter_receive(i, from, *msg),
                    Node::Client(c) => self.client_receive(c, *msg),
                }
            }
            Ev::CoordinatorTick { k, life } => self.coordinator_tick(k, life),
            Ev::CoordinatorFsync { k, life } => self.coordinator_fsync(k, life),
            Ev::AskTerms { k, life } => self.replica_ask_again(k, life),
            Ev::Unreachable { k, life, peer } => self.replica_unreachable(k, life, peer),
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
                    Node::Coordinator(k) => self.coordinator_timeout(k, call),
                    Node::Counter(i) => self.counter_timeout(i, call),
                    Node::Client(c) => self.client_timeout(c, call),
                }
            }
            Ev::Client { c } => self.client_next(c),
            Ev::Retry {
                c,
                request,
                attempt,
            } => self.client_retry(c, request, attempt),
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
                        Node::Coordinator(k) => self.coordinator_start(k),
                        Node::Counter(i) => self.counter_start(i),
                        Node::Client(_) => {}
                    }
                }
            }
            Ev::Heal { generation } => {
                if generation == self.generation {
                    self.net.cut.clear();
                    self.net.blocked.clear();
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
            Node::Coordinator(k) => self.coordinator_crash(k),
            Node::Counter(i) => self.counter_crash(i),
            Node::Client(_) => {}
        }
    }

    /// The highest commit index decided durably: in the lone coordinator's
    /// log, or applied by any of several.
    pub(crate) fn decided(&self) -> CommitIndex {
        if self.replicated() {
            self.history
                .decided
                .keys()
                .next_back()
                .copied()
                .unwrap_or(CommitIndex::ZERO)
        } else {
            self.coordinators[0].log.decided
        }
    }

    // ---- faults ----

    /// Losing this counter's disk cannot lose data the cluster needs: it
    /// holds no prepared transaction (so no yes vote of it can be counted
    /// from now on), and another counter holds every decided commit
    /// durably. Only an operator may give commits up, which the simulation
    /// never does, so a disk is lost only when this holds.
    fn disk_may_be_lost(&self, i: usize) -> bool {
        let decided = self.decided();
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
        if self.replicated() {
            self.fault_replicated();
            return;
        }
        let n = self.counters.len();
        let i = self.rng.pick(n);
        match self.rng.range(0, 99) {
            0..=21 => self.crash_counter_fault(i),
            22..=33 => {
                self.trace(|| "FAULT: crash the coordinator".to_string());
                self.coordinator_crash(0);
                let back = self.rng.range(10, 700);
                self.schedule(
                    back,
                    Ev::Restart {
                        node: Node::Coordinator(0),
                    },
                );
            }
            34..=49 => self.lose_disk_fault(i),
            50..=53 => self.power_cut(),
            54..=67 => self.partition_fault(0.3),
            68..=77 => self.weather_fault(),
            78..=89 => {
                let disk = self.counters[i].disk.clone();
                self.counters[i].snapshots.push(disk);
            }
            _ => {}
        }
    }

    /// The faults of a world with several coordinators: those of a lone
    /// one's world, and a coordinator crashed (any, or the leader), two of
    /// three down at once (writes must stall, not be lost), a coordinator's
    /// disk wiped, and a coordinator cut off from the other coordinators
    /// only, or from the counters only. Never more than one coordinator
    /// down or wiped at a time, but for the deliberate two down and power
    /// cuts, which lose no disk.
    fn fault_replicated(&mut self) {
        let n = self.counters.len();
        let i = self.rng.pick(n);
        let m = self.coordinators.len();
        let k = self.rng.pick(m);
        let all_up = self.coordinators_down() == 0;
        match self.rng.range(0, 99) {
            0..=17 => self.crash_counter_fault(i),
            18..=25 if all_up => {
                self.trace(|| format!("FAULT: crash coordinator {k}"));
                self.crash_coordinator_for(k, 10, 700);
            }
            26..=31 if all_up => {
                if let Some(leader) = self.leader() {
                    self.trace(|| format!("FAULT: kill the leader, coordinator {leader}"));
                    self.crash_coordinator_for(leader, 10, 700);
                }
            }
            32..=33 if all_up => {
                let other = (k + 1 + self.rng.pick(m - 1)) % m;
                self.trace(|| format!("FAULT: coordinators {k} and {other} down together"));
                self.crash_coordinator_for(k, 200, 1500);
                self.crash_coordinator_for(other, 200, 1500);
            }
            34..=39 if self.coordinator_may_be_wiped(k) => {
                self.trace(|| format!("FAULT: wipe coordinator {k}'s disk"));
                self.coordinator_crash(k);
                if let Some(r) = self.coordinators[k].replica.as_mut() {
                    r.disk = Default::default();
                }
                let back = self.rng.range(10, 600);
                self.schedule(
                    back,
                    Ev::Restart {
                        node: Node::Coordinator(k),
                    },
                );
            }
            40..=51 => self.lose_disk_fault(i),
            52..=54 => self.power_cut(),
            55..=62 => self.partition_fault(0.3),
            63..=67 => {
                self.generation += 1;
                self.net.cut.clear();
                self.net.blocked.clear();
                for j in (0..m).filter(|j| *j != k) {
                    self.net.block(Node::Coordinator(k), Node::Coordinator(j));
                }
                self.trace(|| format!("FAULT: coordinator {k} cut from the other coordinators"));
                self.heal_later();
            }
            68..=71 => {
                self.generation += 1;
                self.net.cut.clear();
                self.net.blocked.clear();
                for j in 0..n {
                    self.net.block(Node::Coordinator(k), Node::Counter(j));
                }
                self.trace(|| format!("FAULT: coordinator {k} cut from the counters"));
                self.heal_later();
            }
            72..=81 => self.weather_fault(),
            82..=91 => {
                let disk = self.counters[i].disk.clone();
                self.counters[i].snapshots.push(disk);
            }
            _ => {}
        }
    }

    /// Wiping coordinator `k`'s disk cannot lose a decision, nor leave
    /// the others unable to elect a leader: both others are up, whole (not
    /// rejoining after a loss of their own) and have applied every entry
    /// any coordinator applied, so they hold all that a majority held.
    /// One disk lost is what three coordinators survive; the simulation
    /// never loses a second before the first has rejoined.
    fn coordinator_may_be_wiped(&self, k: usize) -> bool {
        let applied = |j: usize| {
            self.coordinators[j]
                .replica
                .as_ref()
                .and_then(|r| r.node.as_ref())
                .map(|n| n.applied())
        };
        let highest = (0..self.coordinators.len())
            .filter_map(applied)
            .max()
            .unwrap_or(0);
        // Before anything was replicated, the others' empty disks could
        // not be told from lost ones.
        highest > 0
            && self.coordinator_life(k).is_some()
            && (0..self.coordinators.len()).all(|j| {
                j == k
                    || (self.coordinators[j]
                        .replica
                        .as_ref()
                        .is_some_and(|r| r.up && !r.impaired())
                        && applied(j).is_some_and(|a| a >= highest))
            })
    }

    /// Crashes coordinator `k` and restarts it after `lo..=hi` ms.
    fn crash_coordinator_for(&mut self, k: usize, lo: u64, hi: u64) {
        self.coordinator_crash(k);
        let back = self.rng.range(lo, hi);
        self.schedule(
            back,
            Ev::Restart {
                node: Node::Coordinator(k),
            },
        );
    }

    fn crash_counter_fault(&mut self, i: usize) {
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

    fn lose_disk_fault(&mut self, i: usize) {
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
            self.trace(|| format!("FAULT: c{i}'s connection stalls; its disk goes in {after} ms"));
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

    /// Every process at once.
    fn power_cut(&mut self) {
        self.trace(|| "FAULT: power cut".to_string());
        for k in 0..self.coordinators.len() {
            self.coordinator_crash(k);
            let back = self.rng.range(10, 500);
            self.schedule(
                back,
                Ev::Restart {
                    node: Node::Coordinator(k),
                },
            );
        }
        for j in 0..self.counters.len() {
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

    /// Some processes cut off from the rest: each coordinator with chance
    /// `coordinator`, each counter with 0.4.
    fn partition_fault(&mut self, coordinator: f64) {
        self.generation += 1;
        self.net.cut.clear();
        self.net.blocked.clear();
        for k in 0..self.coordinators.len() {
            if self.rng.chance(coordinator) {
                self.net.cut.insert(Node::Coordinator(k));
            }
        }
        for j in 0..self.counters.len() {
            if self.rng.chance(0.4) {
                self.net.cut.insert(Node::Counter(j));
            }
        }
        self.trace(|| format!("FAULT: partition {:?}", self.net.cut));
        self.heal_later();
    }

    fn heal_later(&mut self) {
        let heal = self.rng.range(50, 1200);
        let generation = self.generation;
        self.schedule(heal, Ev::Heal { generation });
    }

    fn weather_fault(&mut self) {
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
        for k in 0..self.coordinators.len() {
            if self.coordinator_life(k).is_none() {
                let back = self.rng.range(0, 50);
                self.schedule(
                    back,
                    Ev::Restart {
                        node: Node::Coordinator(k),
                    },
                );
            }
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
    /// coordinator's view (the leader's, with several), and knows it.
    fn all_in_sync(&self) -> bool {
        let Some(core) = self.leader().and_then(|k| self.core_of(k)) else {
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
        if self.replicated() {
            s.push_str(&self.describe_replicas());
        }
        match self.leader().and_then(|k| self.core_of(k)) {
            None => s.push_str("no coordinator runs a core\n"),
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
        let decided = self.decided();
        if self.replicated() {
            // Every coordinator is back, whole, and has applied every
            // decision: a wiped one has rejoined, a lagging one caught up.
            let behind = (0..self.coordinators.len()).find(|k| {
                self.coordinators[*k].replica.as_ref().is_none_or(|r| {
                    r.impaired() || r.node.as_ref().is_none_or(|n| n.state().decided < decided)
                })
            });
            if let Some(k) = behind {
                let detail = format!(
                    "3 s after the cluster served again, coordinator {k} has not rejoined or not \
                     applied every decision (decided {decided})\n{}",
                    self.describe_cluster()
                );
                self.history.violation("liveness", detail);
                return;
            }
        }
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
    /// the queue empties. A panic in the code under test ends the run as a
    /// violation of its own, with the seed that replays it.
    pub fn run(mut self, seed: u64) -> RunReport {
        let played = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.play()));
        if let Err(payload) = played {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            self.history
                .violation("no panic", format!("the run panicked: {message}"));
        }
        self.report(seed)
    }

    fn play(&mut self) {
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
    }

    fn report(self, seed: u64) -> RunReport {
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
            decided: self.decided(),
            settings: self.settings,
        }
    }
}

/// Runs one seed.
pub fn run(seed: u64, trace: bool) -> RunReport {
    run_with(seed, trace, Options::default())
}

/// Runs one seed with some of its shape forced.
pub fn run_with(seed: u64, trace: bool, options: Options) -> RunReport {
    World::new(seed, trace, options).run(seed)
}
