//! Presence: how many clients are connected to a key right now. Not
//! durable and not part of two-phase commit; it never touches item counts.
//!
//! Frontends (coordinators) hold the WebSockets and count them per key;
//! each key has one owner among the live counters, picked by rendezvous
//! hashing ([`owner_of`]), which sums the frontends' reports
//! ([`PresenceTable`]) and streams back to each frontend the sum of the
//! *other* frontends, so a frontend shows `others + its own sockets` and a
//! local join is visible at once. docs/presence.md gives the reasons.
//!
//! Plain code: the caller passes the clock in milliseconds.

use crate::api::{ClusterView, CounterState};
use crate::CounterId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One presence key: a tenant and a key within it, both checked with the
/// rules of a tenant (1 to 256 bytes of UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PresenceKey {
    pub tenant: String,
    pub key: String,
}

impl PresenceKey {
    pub fn new(tenant: impl Into<String>, key: impl Into<String>) -> Self {
        PresenceKey {
            tenant: tenant.into(),
            key: key.into(),
        }
    }
}

/// A frontend's identity for one life of its process: a restarted
/// frontend is a new one, and the owners drop the old one's reports when
/// its lease runs out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FrontendId(pub String);

/// A counter that may own presence keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub id: CounterId,
    pub url: String,
}

/// The counters that own presence keys: every member the coordinator has
/// not declared dead. Presence needs no data, so a joining counter owns
/// keys as soon as it is registered. Sorted by id, so every frontend that
/// reads the same view computes the same set.
pub fn owners_from_view(view: &ClusterView) -> Vec<Owner> {
    let mut owners: Vec<Owner> = view
        .counters
        .iter()
        .filter(|c| c.state != CounterState::Dead)
        .map(|c| Owner {
            id: c.id.clone(),
            url: c.url.clone(),
        })
        .collect();
    owners.sort();
    owners
}

/// The weight of `owner` for `key` in rendezvous hashing: XXH3-64 of the
/// length-prefixed fields, a hash fixed by its specification, so every
/// frontend on every platform and build agrees.
fn weight(owner: &CounterId, key: &PresenceKey) -> u64 {
    let mut bytes = Vec::with_capacity(24 + owner.0.len() + key.tenant.len() + key.key.len());
    for field in [owner.0.as_str(), key.tenant.as_str(), key.key.as_str()] {
        bytes.extend_from_slice(&(field.len() as u64).to_le_bytes());
        bytes.extend_from_slice(field.as_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// The owner of `key` among `owners`: the one of highest weight (ties,
/// which need a 64-bit collision, go to the smaller id). When an owner
/// leaves, only its keys move; when one joins, it takes about `1/n` of the
/// keys from the others and nothing else moves.
pub fn owner_of<'a>(key: &PresenceKey, owners: &'a [Owner]) -> Option<&'a Owner> {
    owners.iter().max_by(|a, b| {
        weight(&a.id, key)
            .cmp(&weight(&b.id, key))
            .then_with(|| b.id.cmp(&a.id))
    })
}

/// One key's count in a report or an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCount {
    pub tenant: String,
    pub key: String,
    pub count: u64,
}

/// Frontend → owner: the frontend's own socket counts, absolute (never
/// deltas, so a repeated or lost report cannot make a count drift). A
/// `full` report lists every key of the frontend that this owner owns;
/// keys it leaves out count 0. Every report renews the frontend's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceReport {
    pub frontend: FrontendId,
    /// How long the owner keeps these counts without another report.
    pub lease_ms: u64,
    pub full: bool,
    pub counts: Vec<KeyCount>,
}

/// Owner → frontend, one line of the update stream: for each listed key,
/// the sockets of every *other* frontend (`count`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceUpdate {
    pub others: Vec<KeyCount>,
}

/// What an owner knows of one frontend.
#[derive(Debug, Default)]
struct Frontend {
    lease_until: u64,
    /// Its keys with a count above zero, and the counts.
    counts: BTreeMap<PresenceKey, u64>,
    /// Keys whose `others` changed since the frontend was last told.
    dirty: BTreeSet<PresenceKey>,
}

/// The owner's sums: per key, each frontend's count. Bounded by what the
/// frontends hold (each frontend bounds its sockets); a key with no
/// sockets anywhere is forgotten.
#[derive(Debug, Default)]
pub struct PresenceTable {
    keys: HashMap<PresenceKey, BTreeMap<FrontendId, u64>>,
    frontends: BTreeMap<FrontendId, Frontend>,
}

impl PresenceTable {
    /// Takes a report in at `now_ms`. Returns the frontends that have
    /// updates waiting (to wake their streams), in id order.
    pub fn report(&mut self, report: PresenceReport, now_ms: u64) -> Vec<FrontendId> {
        let id = report.frontend.clone();
        let lease_until = now_ms.saturating_add(report.lease_ms);
        self.frontends.entry(id.clone()).or_default().lease_until = lease_until;
        let mut changed: Vec<(PresenceKey, u64)> = Vec::new();
        if report.full {
            let listed: BTreeSet<PresenceKey> = report
                .counts
                .iter()
                .map(|c| PresenceKey::new(c.tenant.clone(), c.key.clone()))
                .collect();
            let gone: Vec<PresenceKey> = self.frontends[&id]
                .counts
                .keys()
                .filter(|k| !listed.contains(*k))
                .cloned()
                .collect();
            changed.extend(gone.into_iter().map(|k| (k, 0)));
            // A full report comes after the frontend (re)connected or the
            // owners changed: tell it every key's others again.
            let frontend = self.frontends.get_mut(&id).expect("inserted above");
            frontend.dirty.extend(listed.iter().cloned());
        }
        changed.extend(
            report
                .counts
                .into_iter()
                .map(|c| (PresenceKey::new(c.tenant, c.key), c.count)),
        );
        let mut wake = BTreeSet::new();
        for (key, count) in changed {
            self.set(&id, key, count, &mut wake);
        }
        self.waiting(wake)
    }

    /// Drops every frontend whose lease ran out by `now_ms`, with its
    /// counts. Returns the frontends that have updates waiting.
    pub fn expire(&mut self, now_ms: u64) -> Vec<FrontendId> {
        let expired: Vec<FrontendId> = self
            .frontends
            .iter()
            .filter(|(_, f)| f.lease_until <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        let mut wake = BTreeSet::new();
        for id in expired {
            let keys: Vec<PresenceKey> = self.frontends[&id].counts.keys().cloned().collect();
            for key in keys {
                self.set(&id, key, 0, &mut wake);
            }
            self.frontends.remove(&id);
            wake.remove(&id);
        }
        self.waiting(wake)
    }

    /// Marks every key of `frontend` to be sent again (its stream was
    /// just opened, so what it was told before may be lost).
    pub fn resend_all(&mut self, frontend: &FrontendId) {
        if let Some(f) = self.frontends.get_mut(frontend) {
            let keys: Vec<PresenceKey> = f.counts.keys().cloned().collect();
            f.dirty.extend(keys);
        }
    }

    /// The updates waiting for `frontend`, and clears them.
    pub fn take_updates(&mut self, frontend: &FrontendId) -> PresenceUpdate {
        let Some(f) = self.frontends.get_mut(frontend) else {
            return PresenceUpdate::default();
        };
        let dirty = std::mem::take(&mut f.dirty);
        let others = dirty
            .into_iter()
            .map(|key| {
                let count = self.others(&key, frontend);
                KeyCount {
                    tenant: key.tenant,
                    key: key.key,
                    count,
                }
            })
            .collect();
        PresenceUpdate { others }
    }

    /// Sockets of `key` on every frontend.
    pub fn total(&self, key: &PresenceKey) -> u64 {
        self.keys.get(key).map_or(0, |by| by.values().sum())
    }

    /// Sockets of `key` on every frontend but `frontend`.
    pub fn others(&self, key: &PresenceKey, frontend: &FrontendId) -> u64 {
        self.keys.get(key).map_or(0, |by| {
            by.iter()
                .filter(|(id, _)| *id != frontend)
                .map(|(_, n)| n)
                .sum()
        })
    }

    /// Frontends known (with a lease running).
    pub fn frontends(&self) -> usize {
        self.frontends.len()
    }

    /// Whether `frontend` has a lease running.
    pub fn has_frontend(&self, frontend: &FrontendId) -> bool {
        self.frontends.contains_key(frontend)
    }

    /// (frontend, key) counts held: what the table's memory grows with.
    pub fn entries(&self) -> usize {
        self.frontends.values().map(|f| f.counts.len()).sum()
    }

    /// Keys with at least one socket somewhere.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Sets `id`'s count of `key`; if it changed, every other frontend
    /// with sockets on the key must hear the new `others`.
    fn set(
        &mut self,
        id: &FrontendId,
        key: PresenceKey,
        count: u64,
        wake: &mut BTreeSet<FrontendId>,
    ) {
        let by = self.keys.entry(key.clone()).or_default();
        let before = by.get(id).copied().unwrap_or(0);
        if count == 0 {
            by.remove(id);
        } else {
            by.insert(id.clone(), count);
        }
        let others: Vec<FrontendId> = by.keys().filter(|f| *f != id).cloned().collect();
        if by.is_empty() {
            self.keys.remove(&key);
        }
        if let Some(f) = self.frontends.get_mut(id) {
            if count == 0 {
                f.counts.remove(&key);
                f.dirty.remove(&key);
            } else {
                if before == 0 {
                    // Newly interested: it needs the others' sum once.
                    f.dirty.insert(key.clone());
                }
                f.counts.insert(key.clone(), count);
            }
        }
        if before == count {
            return;
        }
        for other in others {
            if let Some(f) = self.frontends.get_mut(&other) {
                f.dirty.insert(key.clone());
                wake.insert(other);
            }
        }
    }

    fn waiting(&self, mut wake: BTreeSet<FrontendId>) -> Vec<FrontendId> {
        wake.extend(
            self.frontends
                .iter()
                .filter(|(_, f)| !f.dirty.is_empty())
                .map(|(id, _)| id.clone()),
        );
        wake.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(ids: &[&str]) -> Vec<Owner> {
        ids.iter()
            .map(|id| Owner {
                id: CounterId(id.to_string()),
                url: format!("http://{id}"),
            })
            .collect()
    }

    fn keys(n: usize) -> Vec<PresenceKey> {
        (0..n)
            .map(|i| PresenceKey::new("t", format!("room-{i}")))
            .collect()
    }

    /// XXH3-64 of (counter-1, t, k) as encoded by `weight`.
    const PINNED: u64 = 0x751b_b85a_075d_a527;

    #[test]
    fn the_hash_is_fixed_across_builds() {
        // Frontends of different builds must agree on owners: the weight is
        // a specified hash of specified bytes, checked against a constant.
        let w = weight(&CounterId("counter-1".into()), &PresenceKey::new("t", "k"));
        assert_eq!(w, PINNED, "the weight of (counter-1, t, k) changed: {w:#x}");
        // Field boundaries matter: ("ab","c") and ("a","bc") differ.
        assert_ne!(
            weight(&CounterId("c".into()), &PresenceKey::new("ab", "c")),
            weight(&CounterId("c".into()), &PresenceKey::new("a", "bc"))
        );
    }

    #[test]
    fn keys_spread_over_owners_and_only_a_leavers_keys_move() {
        let three = owners(&["counter-1", "counter-2", "counter-3"]);
        let two = owners(&["counter-1", "counter-3"]);
        let keys = keys(3000);
        let mut per = BTreeMap::new();
        for key in &keys {
            let before = owner_of(key, &three).unwrap();
            *per.entry(before.id.clone()).or_insert(0) += 1;
            let after = owner_of(key, &two).unwrap();
            if before.id.0 != "counter-2" {
                assert_eq!(before, after, "{key:?} moved though its owner stayed");
            }
        }
        for (id, n) in per {
            assert!((800..1200).contains(&n), "{id} owns {n} of 3000 keys");
        }
    }

    #[test]
    fn a_joiner_takes_keys_only_for_itself() {
        let two = owners(&["counter-1", "counter-2"]);
        let three = owners(&["counter-1", "counter-2", "counter-3"]);
        let mut taken = 0;
        for key in keys(3000) {
            let before = owner_of(&key, &two).unwrap();
            let after = owner_of(&key, &three).unwrap();
            if after.id.0 == "counter-3" {
                taken += 1;
            } else {
                assert_eq!(before, after);
            }
        }
        assert!((800..1200).contains(&taken), "the joiner took {taken}");
        assert!(owner_of(&PresenceKey::new("t", "k"), &[]).is_none());
    }

    fn report(frontend: &str, full: bool, counts: &[(&str, u64)]) -> PresenceReport {
        PresenceReport {
            frontend: FrontendId(frontend.into()),
            lease_ms: 1000,
            full,
            counts: counts
                .iter()
                .map(|(k, n)| KeyCount {
                    tenant: "t".into(),
                    key: k.to_string(),
                    count: *n,
                })
                .collect(),
        }
    }

    fn fe(id: &str) -> FrontendId {
        FrontendId(id.into())
    }

    fn update(table: &mut PresenceTable, id: &str) -> Vec<(String, u64)> {
        table
            .take_updates(&fe(id))
            .others
            .into_iter()
            .map(|c| (c.key, c.count))
            .collect()
    }

    #[test]
    fn totals_add_up_and_each_frontend_hears_the_others() {
        let mut table = PresenceTable::default();
        let key = PresenceKey::new("t", "a");
        assert_eq!(
            table.report(report("f1", false, &[("a", 3)]), 0),
            vec![fe("f1")]
        );
        assert_eq!(update(&mut table, "f1"), vec![("a".into(), 0)]);
        // A second frontend joins the key: both need news.
        assert_eq!(
            table.report(report("f2", false, &[("a", 2)]), 0),
            vec![fe("f1"), fe("f2")]
        );
        assert_eq!(update(&mut table, "f1"), vec![("a".into(), 2)]);
        assert_eq!(update(&mut table, "f2"), vec![("a".into(), 3)]);
        assert_eq!(table.total(&key), 5);
        // f1's own change does not wake f1, only f2.
        assert_eq!(
            table.report(report("f1", false, &[("a", 4)]), 1),
            vec![fe("f2")]
        );
        assert_eq!(update(&mut table, "f2"), vec![("a".into(), 4)]);
        assert!(update(&mut table, "f1").is_empty());
        // The same report again changes nothing and wakes nobody.
        assert!(table.report(report("f1", false, &[("a", 4)]), 2).is_empty());
        assert_eq!(table.total(&key), 6);
    }

    #[test]
    fn a_full_report_replaces_what_the_frontend_had() {
        let mut table = PresenceTable::default();
        table.report(report("f1", false, &[("a", 1), ("b", 2)]), 0);
        table.report(report("f2", false, &[("b", 5)]), 0);
        update(&mut table, "f1");
        update(&mut table, "f2");
        // f1 no longer has b here (it moved to another owner, or closed).
        assert_eq!(
            table.report(report("f1", true, &[("a", 1)]), 1),
            vec![fe("f1"), fe("f2")]
        );
        assert_eq!(table.total(&PresenceKey::new("t", "b")), 5);
        assert_eq!(update(&mut table, "f2"), vec![("b".into(), 0)]);
        assert_eq!(update(&mut table, "f1"), vec![("a".into(), 0)]);
    }

    #[test]
    fn an_expired_lease_drops_the_frontends_counts() {
        let mut table = PresenceTable::default();
        table.report(report("f1", false, &[("a", 3)]), 0);
        table.report(report("f2", false, &[("a", 2)]), 500);
        update(&mut table, "f1");
        update(&mut table, "f2");
        assert!(table.expire(999).is_empty());
        // f1 stopped renewing: its 3 sockets go, and f2 hears of it.
        assert_eq!(table.expire(1000), vec![fe("f2")]);
        assert_eq!(table.total(&PresenceKey::new("t", "a")), 2);
        assert_eq!(update(&mut table, "f2"), vec![("a".into(), 0)]);
        assert_eq!(table.frontends(), 1);
        // f2 renews in time and stays, then stops and goes.
        table.report(report("f2", true, &[]), 1400);
        assert!(table.expire(2399).is_empty());
        assert_eq!(table.frontends(), 1);
        table.expire(2400);
        assert_eq!(table.frontends(), 0);
        assert_eq!(table.keys(), 0, "a key with no sockets is forgotten");
    }

    #[test]
    fn a_reopened_stream_is_told_everything_again() {
        let mut table = PresenceTable::default();
        table.report(report("f1", false, &[("a", 1), ("b", 1)]), 0);
        update(&mut table, "f1");
        table.resend_all(&fe("f1"));
        assert_eq!(
            update(&mut table, "f1"),
            vec![("a".into(), 0), ("b".into(), 0)]
        );
    }
}
