//! The frontend's local state: sockets per key on this coordinator, the
//! others' sum last heard from each key's owner, what each owner still
//! has to be told, and the number every socket of a key shows
//! (`others + local`, published on a `watch` per key).
//!
//! One `std::sync::Mutex`, held for a few lines and never across an
//! `.await`: joins, leaves and owner updates are each a handful of map
//! operations.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tally_common::presence::{
    owner_of, FrontendId, KeyCount, Owner, PresenceKey, PresenceReport, PresenceUpdate,
};
use tally_common::CounterId;
use tokio::sync::{watch, Notify};

/// Why a socket was refused a seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    CoordinatorFull,
    KeyFull,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::CoordinatorFull => "too many presence sockets on this coordinator",
            Refused::KeyFull => "too many presence sockets for this key",
        }
    }
}

/// One key's sockets here.
struct Local {
    sockets: u64,
    /// Sockets on the other frontends, as the owner last said.
    others: u64,
    /// What every socket of the key shows: `others + sockets`.
    shown: watch::Sender<u64>,
}

impl Local {
    fn publish(&self) {
        let total = self.others + self.sockets;
        self.shown
            .send_if_modified(|v| std::mem::replace(v, total) != total);
    }
}

/// What one owner still has to be told.
#[derive(Default)]
pub struct LinkState {
    /// Keys whose local count changed since the last report.
    dirty: BTreeSet<PresenceKey>,
    /// The next report must list every key this owner owns.
    full: bool,
    pub wake: Arc<Notify>,
}

struct Inner {
    keys: HashMap<PresenceKey, Local>,
    sockets: usize,
    owners: Vec<Owner>,
    links: HashMap<CounterId, LinkState>,
}

/// The frontend's state; see the module doc.
pub struct Hub {
    inner: Mutex<Inner>,
    pub id: FrontendId,
    pub lease: Duration,
    max_sockets: usize,
    max_per_key: usize,
}

/// A socket's place in its key: holding it counts the socket, dropping it
/// (however the socket ends) uncounts it.
pub struct Seat {
    hub: Arc<Hub>,
    key: PresenceKey,
    shown: watch::Receiver<u64>,
}

impl Seat {
    /// The number this socket shows, changing as it changes.
    pub fn shown(&mut self) -> &mut watch::Receiver<u64> {
        &mut self.shown
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.hub.leave(&self.key);
    }
}

impl Hub {
    pub fn new(id: FrontendId, lease: Duration, max_sockets: usize, max_per_key: usize) -> Self {
        Hub {
            inner: Mutex::new(Inner {
                keys: HashMap::new(),
                sockets: 0,
                owners: Vec::new(),
                links: HashMap::new(),
            }),
            id,
            lease,
            max_sockets,
            max_per_key,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves counts that may be off by
        // one; they are not durable and the next full report fixes the
        // owners' view, so going on is better than failing every socket.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more socket of `key`, within the bounds.
    pub fn join(self: &Arc<Self>, key: PresenceKey) -> Result<Seat, Refused> {
        let mut inner = self.lock();
        if inner.sockets >= self.max_sockets {
            return Err(Refused::CoordinatorFull);
        }
        let local = inner.keys.entry(key.clone()).or_insert_with(|| Local {
            sockets: 0,
            others: 0,
            shown: watch::channel(0).0,
        });
        if local.sockets >= self.max_per_key as u64 {
            return Err(Refused::KeyFull);
        }
        local.sockets += 1;
        local.publish();
        let shown = local.shown.subscribe();
        inner.sockets += 1;
        metrics::gauge!("tally_presence_sockets").set(inner.sockets as f64);
        inner.mark(&key);
        Ok(Seat {
            hub: self.clone(),
            key,
            shown,
        })
    }

    fn leave(&self, key: &PresenceKey) {
        let mut inner = self.lock();
        inner.sockets -= 1;
        metrics::gauge!("tally_presence_sockets").set(inner.sockets as f64);
        let emptied = inner.keys.get_mut(key).is_some_and(|local| {
            local.sockets -= 1;
            local.publish();
            local.sockets == 0
        });
        if emptied {
            inner.keys.remove(key);
        }
        inner.mark(key);
    }

    /// Sockets open here.
    #[cfg(test)]
    pub fn sockets(&self) -> usize {
        self.lock().sockets
    }

    /// What the sockets of `key` show, if this coordinator has any.
    pub fn shown(&self, key: &PresenceKey) -> Option<u64> {
        self.lock()
            .keys
            .get(key)
            .map(|local| local.others + local.sockets)
    }

    /// The owner of `key` among the owners known now.
    pub fn owner_of(&self, key: &PresenceKey) -> Option<Owner> {
        owner_of(key, &self.lock().owners).cloned()
    }

    /// Takes a new owner set. If it changed, every owner gets a full
    /// report next: the keys that moved reach their new owners, and a
    /// former owner that is still alive no longer counts them (a full
    /// report replaces what it had). Returns whether it changed.
    pub fn set_owners(&self, owners: Vec<Owner>) -> bool {
        let mut inner = self.lock();
        if inner.owners == owners {
            return false;
        }
        inner
            .links
            .retain(|id, _| owners.iter().any(|o| &o.id == id));
        for owner in &owners {
            inner.links.entry(owner.id.clone()).or_default();
        }
        if owners.is_empty() {
            // Nobody sums: show what this coordinator knows.
            for local in inner.keys.values_mut() {
                local.others = 0;
                local.publish();
            }
        }
        inner.owners = owners;
        for link in inner.links.values_mut() {
            link.full = true;
            link.wake.notify_one();
        }
        true
    }

    /// The wake-up of `owner`'s link (created if new).
    pub fn link_wake(&self, owner: &CounterId) -> Arc<Notify> {
        self.lock()
            .links
            .entry(owner.clone())
            .or_default()
            .wake
            .clone()
    }

    /// The next report to `owner` must be full (its stream reopened, a
    /// report failed, or the lease is due for renewal).
    pub fn want_full(&self, owner: &CounterId) {
        if let Some(link) = self.lock().links.get_mut(owner) {
            link.full = true;
        }
    }

    /// The report `owner` should get now, if any: a full one when asked
    /// for, else the changed keys it owns.
    pub fn take_report(&self, owner: &CounterId) -> Option<PresenceReport> {
        let mut inner = self.lock();
        let Inner {
            keys,
            owners,
            links,
            ..
        } = &mut *inner;
        let link = links.get_mut(owner)?;
        let owns = |key: &PresenceKey| owner_of(key, owners).is_some_and(|o| &o.id == owner);
        let count = |key: &PresenceKey| KeyCount {
            tenant: key.tenant.clone(),
            key: key.key.clone(),
            count: keys.get(key).map_or(0, |l| l.sockets),
        };
        let dirty = std::mem::take(&mut link.dirty);
        let (full, counts) = if std::mem::take(&mut link.full) {
            let mut owned: Vec<&PresenceKey> = keys.keys().filter(|k| owns(k)).collect();
            owned.sort();
            (true, owned.into_iter().map(count).collect())
        } else if dirty.is_empty() {
            return None;
        } else {
            (false, dirty.iter().filter(|k| owns(k)).map(count).collect())
        };
        Some(PresenceReport {
            frontend: self.id.clone(),
            lease_ms: self.lease.as_millis() as u64,
            full,
            counts,
        })
    }

    /// Takes an update from `owner`: the others' sums of keys it owns.
    /// Sums from a counter that no longer owns the key are stale, and
    /// ignored.
    pub fn apply(&self, owner: &CounterId, update: PresenceUpdate) {
        let mut inner = self.lock();
        let Inner { keys, owners, .. } = &mut *inner;
        for others in update.others {
            let key = PresenceKey::new(others.tenant, others.key);
            if owner_of(&key, owners).is_none_or(|o| &o.id != owner) {
                continue;
            }
            if let Some(local) = keys.get_mut(&key) {
                local.others = others.count;
                local.publish();
            }
        }
    }
}

impl Inner {
    /// `key`'s owner must hear its new local count.
    fn mark(&mut self, key: &PresenceKey) {
        let Some(owner) = owner_of(key, &self.owners) else {
            return;
        };
        if let Some(link) = self.links.get_mut(&owner.id) {
            link.dirty.insert(key.clone());
            link.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(max_sockets: usize, max_per_key: usize) -> Arc<Hub> {
        Arc::new(Hub::new(
            FrontendId("f".into()),
            Duration::from_secs(6),
            max_sockets,
            max_per_key,
        ))
    }

    fn owner(id: &str) -> Owner {
        Owner {
            id: CounterId(id.into()),
            url: format!("http://{id}"),
        }
    }

    #[test]
    fn seats_count_while_held_and_bounds_hold() {
        let hub = hub(3, 2);
        let a = PresenceKey::new("t", "a");
        let s1 = hub.join(a.clone()).unwrap();
        let s2 = hub.join(a.clone()).unwrap();
        assert_eq!(hub.join(a.clone()).err(), Some(Refused::KeyFull));
        let s3 = hub.join(PresenceKey::new("t", "b")).unwrap();
        assert_eq!(
            hub.join(PresenceKey::new("t", "c")).err(),
            Some(Refused::CoordinatorFull)
        );
        assert_eq!(*s1.shown.borrow(), 2);
        drop(s2);
        assert_eq!(*s1.shown.borrow(), 1);
        assert_eq!(hub.sockets(), 2);
        drop((s1, s3));
        assert_eq!(hub.sockets(), 0);
        assert_eq!(hub.shown(&a), None);
    }

    #[test]
    fn owners_get_deltas_then_full_reports_when_owners_change() {
        let hub = hub(100, 100);
        let c1 = CounterId("c1".into());
        hub.set_owners(vec![owner("c1")]);
        assert!(hub.take_report(&c1).unwrap().full, "a new owner gets all");
        let a = PresenceKey::new("t", "a");
        let seat = hub.join(a.clone()).unwrap();
        let report = hub.take_report(&c1).unwrap();
        assert!(!report.full);
        assert_eq!(report.counts[0].count, 1);
        assert!(hub.take_report(&c1).is_none());
        hub.apply(
            &c1,
            PresenceUpdate {
                others: vec![KeyCount {
                    tenant: "t".into(),
                    key: "a".into(),
                    count: 4,
                }],
            },
        );
        assert_eq!(hub.shown(&a), Some(5));
        // A stale owner's word is ignored.
        hub.apply(
            &CounterId("c9".into()),
            PresenceUpdate {
                others: vec![KeyCount {
                    tenant: "t".into(),
                    key: "a".into(),
                    count: 40,
                }],
            },
        );
        assert_eq!(hub.shown(&a), Some(5));
        drop(seat);
        assert_eq!(hub.take_report(&c1).unwrap().counts[0].count, 0);
        assert!(hub.set_owners(vec![owner("c1"), owner("c2")]));
        assert!(hub.take_report(&c1).unwrap().full);
        assert!(!hub.set_owners(vec![owner("c1"), owner("c2")]));
    }
}
