//! Clients: each writes small requests of unique items over a few tenants,
//! retries a request that failed or timed out (the same items again), and
//! reads counts through the coordinator. With several coordinators, each
//! attempt and each read goes to one picked at random; one that does not
//! lead proxies it to the leader it knows, or answers "not leader", and the
//! client tries again a little later, at another. Every answer, even one
//! that comes after the client stopped waiting, goes to the history the
//! checker reads.

use crate::net::{Msg, Node, WriteError};
use crate::world::{Ev, World};
use tally_common::Item;

/// How long a client waits for a write's answer before it calls the
/// outcome unknown and retries.
const WRITE_TIMEOUT_MS: u64 = 1500;
const READ_TIMEOUT_MS: u64 = 3000;
/// Attempts per request before the client gives up on it.
const ATTEMPTS: usize = 3;
/// With several coordinators, where an attempt may meet one that does not
/// lead, or an election.
const ATTEMPTS_REPLICATED: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    Idle,
    Writing { request: usize, attempt: u64 },
    Reading { read: u64 },
}

#[derive(Debug)]
pub struct Client {
    busy: Busy,
    /// The liveness probe: writes and reads only when told to.
    pub probe: bool,
    pub stopped: bool,
}

impl Client {
    pub fn new(probe: bool) -> Self {
        Client {
            busy: Busy::Idle,
            probe,
            stopped: false,
        }
    }

    pub fn idle(&self) -> bool {
        self.busy == Busy::Idle
    }
}

impl World {
    /// The client's next operation: a new write or a read.
    pub(crate) fn client_next(&mut self, c: usize) {
        if self.clients[c].stopped || !self.clients[c].idle() {
            return;
        }
        if self.rng.chance(0.6) {
            let n = self.rng.range(1, 3) as usize;
            let request = self.history.requests.len();
            let items: Vec<Item> = (0..n)
                .map(|k| {
                    let tenant = self.rng.pick(self.settings.tenants);
                    Item::new(format!("r{request}.{k}"), format!("t{tenant}"))
                })
                .collect();
            self.history.new_request(c, items);
            self.write_attempt(c, request);
        } else {
            let tenant = format!("t{}", self.rng.pick(self.settings.tenants));
            self.read(c, tenant);
        }
    }

    pub(crate) fn write_attempt(&mut self, c: usize, request: usize) {
        let attempt = self.new_id();
        let items = self.history.requests[request].items.clone();
        self.history.attempt(request, attempt, self.now);
        self.clients[c].busy = Busy::Writing { request, attempt };
        let to = self.pick_coordinator();
        self.send(Node::Client(c), to, Msg::Write { attempt, items });
        self.schedule(
            WRITE_TIMEOUT_MS,
            Ev::Timeout {
                node: Node::Client(c),
                life: 0,
                call: attempt,
            },
        );
    }

    pub(crate) fn read(&mut self, c: usize, tenant: String) {
        let read = self.new_id();
        self.history.read_sent(read, c, tenant.clone(), self.now);
        self.clients[c].busy = Busy::Reading { read };
        let to = self.pick_coordinator();
        self.send(Node::Client(c), to, Msg::Read { read, tenant });
        self.schedule(
            READ_TIMEOUT_MS,
            Ev::Timeout {
                node: Node::Client(c),
                life: 0,
                call: read,
            },
        );
    }

    fn client_done(&mut self, c: usize) {
        self.clients[c].busy = Busy::Idle;
        if !self.clients[c].probe {
            let think = self.rng.range(0, self.settings.think_ms);
            self.schedule(think, Ev::Client { c });
        }
    }

    /// Where a client's next call goes: the one coordinator, or one of
    /// several at random.
    fn pick_coordinator(&mut self) -> Node {
        match self.coordinators.len() {
            1 => Node::Coordinator(0),
            n => Node::Coordinator(self.rng.pick(n)),
        }
    }

    /// A write failed or timed out: retry it, or give up on it.
    fn write_failed(&mut self, c: usize, request: usize) {
        let tried = self.history.requests[request].attempts.len();
        let attempts = if self.coordinators.len() > 1 {
            ATTEMPTS_REPLICATED
        } else {
            ATTEMPTS
        };
        if tried < attempts && !self.clients[c].probe {
            self.write_attempt(c, request);
        } else {
            self.client_done(c);
        }
    }

    /// A retry after "not leader" or "deposed": a moment later, so that an
    /// election can end, then at a coordinator picked again.
    pub(crate) fn client_retry(&mut self, c: usize, request: usize, attempt: u64) {
        if self.clients[c].busy == (Busy::Writing { request, attempt }) {
            self.write_failed(c, request);
        }
    }

    pub(crate) fn client_receive(&mut self, c: usize, msg: Msg) {
        match msg {
            Msg::WriteAnswer { attempt, result } => {
                let now = self.now;
                self.trace(|| format!("client {c}: attempt {attempt} answered {result:?}"));
                self.history.answered(attempt, result.clone(), now);
                let Busy::Writing {
                    request,
                    attempt: current,
                } = self.clients[c].busy
                else {
                    return;
                };
                if current != attempt {
                    return;
                }
                match result {
                    Ok(()) => {
                        if self.clients[c].probe {
                            self.probe_acked(c, request);
                        } else {
                            self.client_done(c);
                        }
                    }
                    Err(WriteError::Refused(_)) => self.write_failed(c, request),
                    Err(WriteError::Unknown(_)) => {
                        let pause = self.rng.range(20, 200);
                        self.schedule(
                            pause,
                            Ev::Retry {
                                c,
                                request,
                                attempt,
                            },
                        );
                    }
                }
            }
            Msg::ReadAnswer { read, result } => {
                let now = self.now;
                self.trace(|| format!("client {c}: read {read} answered {result:?}"));
                if self.clients[c].busy != (Busy::Reading { read }) {
                    return;
                }
                let ok = result.is_ok();
                if let Ok(result) = result {
                    self.history.read_answered(read, result, now);
                }
                if self.clients[c].probe {
                    self.probe_read(c, read, ok);
                }
                self.client_done(c);
            }
            other => panic!("client {c} got {other:?}"),
        }
    }

    pub(crate) fn client_timeout(&mut self, c: usize, call: u64) {
        match self.clients[c].busy {
            Busy::Writing { request, attempt } if attempt == call => {
                self.trace(|| format!("client {c}: attempt {attempt} timed out"));
                self.write_failed(c, request)
            }
            Busy::Reading { read } if read == call => self.client_done(c),
            _ => {}
        }
    }
}
