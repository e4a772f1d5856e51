//! What the clients saw and what the cluster logged, and the properties a
//! run must keep:
//!
//! * **no lost items**: every acknowledged item is counted by every read
//!   sent after the acknowledgement arrived, and by every counter at the end;
//! * **no phantom items**: an item is never counted if every attempt of its
//!   request was answered "aborted" or "busy" (a request with an attempt
//!   whose outcome the client never learned, or was told is unknown — "not
//!   the leader", "deposed" — may go either way);
//! * **atomic requests**: a read counts all of a request's items in that
//!   tenant or none;
//! * **fresh and monotonic reads**: a read sent after another was answered
//!   counts everything that one counted;
//! * **gap-free, never reused indexes** in the decision log;
//! * **per-counter sanity**: a counter's items are exactly the union of
//!   its log entries, and at the end exactly the items of the decided
//!   commits up to its applied index.

use crate::net::{ReadResult, WriteError};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use tally_common::{CommitIndex, Item, TxnId};

/// A broken property, with the history that explains it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub time: u64,
    pub property: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: u64,
    pub sent: u64,
    /// Every answer that arrived, with its time (late ones too).
    pub answers: Vec<(u64, Result<(), WriteError>)>,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub client: usize,
    pub items: Vec<Item>,
    pub attempts: Vec<Attempt>,
}

impl Request {
    /// When the client first heard "committed".
    pub fn acked(&self) -> Option<u64> {
        self.attempts
            .iter()
            .flat_map(|a| &a.answers)
            .filter(|(_, r)| r.is_ok())
            .map(|(t, _)| *t)
            .min()
    }

    /// Every attempt was refused for certain: none of it may be counted.
    pub fn refused(&self) -> bool {
        !self.attempts.is_empty()
            && self.attempts.iter().all(|a| {
                !a.answers.is_empty()
                    && a.answers
                        .iter()
                        .all(|(_, r)| matches!(r, Err(WriteError::Refused(_))))
            })
    }
}

#[derive(Debug, Clone)]
pub struct Read {
    pub client: usize,
    pub tenant: String,
    pub sent: u64,
    pub answered: Option<(u64, ReadResult)>,
}

#[derive(Debug, Default)]
pub struct History {
    pub requests: Vec<Request>,
    attempts: BTreeMap<u64, usize>,
    pub reads: BTreeMap<u64, Read>,
    /// The items of every transaction prepared.
    pub txn_items: BTreeMap<TxnId, Vec<Item>>,
    /// Every decision ever made durable: index → (txn, when).
    pub decided: BTreeMap<CommitIndex, (TxnId, u64)>,
    pub violations: Vec<Violation>,
    pub now: u64,
}

/// The request an item id belongs to (ids are `r{request}.{k}`).
pub fn request_of(id: &str) -> Option<usize> {
    id.strip_prefix('r')?.split('.').next()?.parse().ok()
}

impl History {
    pub fn new_request(&mut self, client: usize, items: Vec<Item>) {
        self.requests.push(Request {
            client,
            items,
            attempts: Vec::new(),
        });
    }

    pub fn attempt(&mut self, request: usize, id: u64, now: u64) {
        self.attempts.insert(id, request);
        self.requests[request].attempts.push(Attempt {
            id,
            sent: now,
            answers: Vec::new(),
        });
    }

    pub fn answered(&mut self, attempt: u64, result: Result<(), WriteError>, now: u64) {
        let Some(request) = self.attempts.get(&attempt) else {
            return;
        };
        if let Some(a) = self.requests[*request]
            .attempts
            .iter_mut()
            .find(|a| a.id == attempt)
        {
            a.answers.push((now, result));
        }
    }

    pub fn read_sent(&mut self, read: u64, client: usize, tenant: String, now: u64) {
        self.reads.insert(
            read,
            Read {
                client,
                tenant,
                sent: now,
                answered: None,
            },
        );
    }

    pub fn read_answered(&mut self, read: u64, result: ReadResult, now: u64) {
        if let Some(r) = self.reads.get_mut(&read) {
            r.answered = Some((now, result));
        }
    }

    pub fn prepared(&mut self, txn: TxnId, items: &[Item]) {
        self.txn_items.insert(txn, items.to_vec());
    }

    pub fn logged(&mut self, txn: TxnId, index: CommitIndex, now: u64) {
        if let Some((other, _)) = self.decided.get(&index) {
            if *other != txn {
                let other = *other;
                self.violation(
                    "indexes never reused",
                    format!("index {index} was logged for {other}, now for {txn}: a durable decision was lost"),
                );
            }
            return;
        }
        self.decided.insert(index, (txn, now));
    }

    pub fn violation(&mut self, property: &'static str, detail: String) {
        self.violations.push(Violation {
            time: self.now,
            property,
            detail,
        });
    }

    /// Checks every read against the requests; the first violation by time.
    pub fn check_reads(&self) -> Option<Violation> {
        let mut answered: Vec<(u64, &Read, &ReadResult)> = self
            .reads
            .values()
            .filter_map(|r| r.answered.as_ref().map(|(t, res)| (*t, r, res)))
            .collect();
        answered.sort_by_key(|(t, r, _)| (*t, r.sent));
        let mut shares: BTreeMap<&str, BTreeMap<usize, BTreeSet<String>>> = BTreeMap::new();
        for (n, request) in self.requests.iter().enumerate() {
            for item in &request.items {
                shares
                    .entry(item.tenant.as_str())
                    .or_default()
                    .entry(n)
                    .or_default()
                    .insert(item.id.clone());
            }
        }
        let none = BTreeMap::new();
        for (time, read, result) in &answered {
            let fail = |property, what: String| {
                Violation {
                time: *time,
                property,
                detail: format!(
                    "{what}\nthe read: client {} sent it at {} for {}, {} answered at {time} (fence {}, epoch {}) with {} ids: {:?}",
                    read.client, read.sent, read.tenant, result.counter, result.fence, result.epoch,
                    result.ids.len(), result.ids
                ),
            }
            };
            // Lost, and atomic, per request of this tenant.
            for (&n, share) in shares.get(read.tenant.as_str()).unwrap_or(&none) {
                let request = &self.requests[n];
                let present = share.iter().filter(|id| result.ids.contains(*id)).count();
                if let Some(acked) = request.acked() {
                    if acked < read.sent && present < share.len() {
                        return Some(fail(
                            "no lost items",
                            format!(
                                "request {n} was acknowledged at {acked}, before the read was sent, yet the read counts {present} of its {} items in {}\n{}",
                                share.len(), read.tenant, self.explain(n)
                            ),
                        ));
                    }
                }
                if present != 0 && present != share.len() {
                    return Some(fail(
                        "atomic requests",
                        format!(
                            "the read counts {present} of the {} items of request {n} in {}\n{}",
                            share.len(),
                            read.tenant,
                            self.explain(n)
                        ),
                    ));
                }
                if present > 0 && request.refused() {
                    return Some(fail(
                        "no phantom items",
                        format!(
                            "the read counts request {n}, every attempt of which was refused\n{}",
                            self.explain(n)
                        ),
                    ));
                }
            }
            // Monotonic: everything an earlier answered read counted.
            for (earlier_time, earlier, earlier_result) in &answered {
                if *earlier_time >= read.sent || earlier.tenant != read.tenant {
                    continue;
                }
                if let Some(missing) = earlier_result.ids.difference(&result.ids).next() {
                    return Some(fail(
                        "monotonic reads",
                        format!(
                            "a read of {} answered at {earlier_time} by {} (fence {}) counted {missing}, which this later read does not\n{}",
                            earlier.tenant,
                            earlier_result.counter,
                            earlier_result.fence,
                            request_of(missing).map_or(String::new(), |n| self.explain(n))
                        ),
                    ));
                }
            }
        }
        None
    }

    /// A request's history: its attempts and answers, the transactions that
    /// carried its items and how they were decided.
    pub fn explain(&self, n: usize) -> String {
        let request = &self.requests[n];
        let mut s = format!(
            "request {n} of client {}: items {:?}",
            request.client,
            ids(&request.items)
        );
        for a in &request.attempts {
            let _ = write!(s, "\n  attempt {} sent at {}: ", a.id, a.sent);
            if a.answers.is_empty() {
                s.push_str("no answer");
            }
            for (t, r) in &a.answers {
                let _ = write!(s, "{r:?} at {t}; ");
            }
        }
        let first = request.items.first().map(|i| i.id.clone());
        for (txn, items) in &self.txn_items {
            if items.iter().any(|i| Some(&i.id) == first.as_ref()) {
                let decision = self.decided.iter().find(|(_, (t, _))| t == txn).map_or(
                    "never logged as committed (aborted)".to_string(),
                    |(i, (_, at))| format!("logged committed at index {i} at {at}"),
                );
                let _ = write!(s, "\n  carried by {txn}: {decision}");
            }
        }
        s
    }
}

pub fn ids(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| format!("{}/{}", i.tenant, i.id))
        .collect()
}
