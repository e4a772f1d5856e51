//! A counter's data directory, as the counter's store keeps it: prepared
//! items per transaction, the commit log (index → the items that commit
//! added here, which is what peers copy), the items per tenant, the applied
//! set, and the directory's incarnation. Writes go to an unsynced buffer
//! first ([`Op`]); only a sync makes them part of the [`Disk`].

use std::collections::{BTreeMap, BTreeSet};
use tally_common::api::ExportEntry;
use tally_common::applied::AppliedSet;
use tally_common::{CommitIndex, Incarnation, Item, TxnId};

/// The durable part of a counter's store.
#[derive(Debug, Clone)]
pub struct Disk {
    pub incarnation: Incarnation,
    pub prepared: BTreeMap<TxnId, Vec<Item>>,
    /// Each item is logged once, under the index that first brought it here.
    pub log: BTreeMap<CommitIndex, Vec<Item>>,
    /// Item ids per tenant: what a count counts.
    pub items: BTreeMap<String, BTreeSet<String>>,
    pub applied: AppliedSet,
}

/// One write to the store, as the participant's records and imports ask.
#[derive(Debug, Clone)]
pub enum Op {
    Prepared {
        txn: TxnId,
        items: Vec<Item>,
    },
    Applied {
        txn: TxnId,
        index: CommitIndex,
    },
    Forgotten {
        txn: TxnId,
    },
    AppliedRange {
        since: CommitIndex,
        through: CommitIndex,
    },
    Import {
        entries: Vec<ExportEntry>,
    },
}

impl Disk {
    pub fn new(incarnation: Incarnation) -> Self {
        Disk {
            incarnation,
            prepared: BTreeMap::new(),
            log: BTreeMap::new(),
            items: BTreeMap::new(),
            applied: AppliedSet::default(),
        }
    }

    pub fn holds(&self, item: &Item) -> bool {
        self.items
            .get(&item.tenant)
            .is_some_and(|ids| ids.contains(&item.id))
    }

    /// Adds the items this one does not hold, logged under `index`.
    fn add(&mut self, index: CommitIndex, items: &[Item]) {
        let new: Vec<Item> = items.iter().filter(|i| !self.holds(i)).cloned().collect();
        if new.is_empty() {
            return;
        }
        for item in &new {
            self.items
                .entry(item.tenant.clone())
                .or_default()
                .insert(item.id.clone());
        }
        self.log.entry(index).or_default().extend(new);
    }

    /// Makes one write durable. An error means the participant asked for
    /// something the store cannot do (applying a transaction it never
    /// prepared).
    pub fn apply(&mut self, op: Op) -> Result<(), String> {
        match op {
            Op::Prepared { txn, items } => {
                self.prepared.insert(txn, items);
            }
            Op::Applied { txn, index } => {
                let items = self.prepared.remove(&txn).ok_or_else(|| {
                    format!("applies {txn} at {index} without holding it prepared")
                })?;
                self.add(index, &items);
                self.applied.insert(index);
            }
            Op::Forgotten { txn } => {
                self.prepared.remove(&txn);
            }
            Op::AppliedRange { since, through } => self.applied.insert_through(since, through),
            Op::Import { entries } => {
                for entry in entries {
                    self.add(entry.index, &entry.items);
                }
            }
        }
        Ok(())
    }

    /// The ids a count of `tenant` counts.
    pub fn tenant_ids(&self, tenant: &str) -> BTreeSet<String> {
        self.items.get(tenant).cloned().unwrap_or_default()
    }

    /// Every log entry above `since`, as the export stream sends them.
    pub fn export(&self, since: CommitIndex) -> Vec<ExportEntry> {
        self.log
            .range(since.next()..)
            .map(|(index, items)| ExportEntry {
                index: *index,
                items: items.clone(),
            })
            .collect()
    }
}
