//! Which coordinator a counter serves, as plain code: the counter's side of
//! registration (docs/protocol.md, "Registration").
//!
//! A counter serves only the coordinator it registered with. Until it has
//! registered, and then only for transactions of that coordinator's epoch,
//! it refuses to vote; it answers that coordinator's fenced reads only once
//! told it is in sync. Why: a coordinator restores the in-sync set it
//! persisted, and a counter that lost its disk while everything was down
//! and voted before registering would vote as the member it used to be,
//! with nothing on its disk. Registering lets the coordinator compare the
//! disk's incarnation and applied index first.
//!
//! A coordinator that restarted has a new epoch and knows nobody as
//! registered; its first health check names that epoch, and a counter that
//! hears an epoch other than its own registers again at once.
//!
//! [`Registration`] holds the state and makes these decisions with no I/O;
//! the counter keeps one behind a lock, and a simulated counter can keep
//! one as a plain field.

use std::fmt;

/// A counter's registration: with which coordinator epoch, and whether that
/// coordinator said this counter is in sync. Starts unregistered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registration {
    /// The epoch of the coordinator this counter registered with; `None`
    /// before it has.
    epoch: Option<u64>,
    /// The coordinator said so in its last answer to a registration or a
    /// caught-up report (or promoted this counter by force).
    told_in_sync: bool,
    /// The coordinator's name for this registration: catch-up reports echo
    /// it, so one sent before the counter registered again is not believed.
    number: u64,
}

/// Why a vote or a fenced read was refused: it came from a coordinator
/// this counter has not registered with, or before it registered at all, or
/// (a read) before that coordinator said this counter is in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRegistered {
    /// The epoch of the coordinator that asked.
    pub asked: u64,
    /// The epoch this counter registered with; 0 if none.
    pub registered: u64,
}

impl fmt::Display for NotRegistered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not registered with the coordinator of epoch {} (registered: {})",
            self.asked, self.registered
        )
    }
}

impl std::error::Error for NotRegistered {}

impl Registration {
    /// Records the coordinator's answer to a registration or a caught-up
    /// report (its join plan): from now on this counter votes for `epoch`
    /// only, and serves its fenced reads if `in_sync`.
    /// Epoch 0 is no coordinator's: it leaves the counter unregistered.
    pub fn registered(&mut self, epoch: u64, in_sync: bool) {
        self.epoch = (epoch != 0).then_some(epoch);
        self.told_in_sync = in_sync;
    }

    /// Notes the name the coordinator gave this registration
    /// (`JoinPlan::registration`).
    pub fn named(&mut self, number: u64) {
        self.number = number;
    }

    /// The name of the current registration, for catch-up reports; 0
    /// before the first.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The operator promoted this counter by force, and the coordinator
    /// makes it a member next: it serves that coordinator's reads from now.
    /// Changes nothing before the counter has registered.
    pub fn promoted(&mut self) {
        if self.epoch.is_some() {
            self.told_in_sync = true;
        }
    }

    /// The epoch this counter registered with, if it has.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Whether the coordinator registered with said this counter is in sync.
    pub fn told_in_sync(&self) -> bool {
        self.epoch.is_some() && self.told_in_sync
    }

    /// May this counter vote yes on a transaction of `txn_epoch` (the high
    /// bits of its id)? Only if registered with that very coordinator.
    pub fn check_vote(&self, txn_epoch: u64) -> Result<(), NotRegistered> {
        self.check(txn_epoch, false)
    }

    /// May this counter answer a fenced read of the coordinator of `epoch`?
    /// Only if registered with it and told it is in sync: a process on an
    /// empty disk must never answer for the member.
    pub fn check_fenced_read(&self, epoch: u64) -> Result<(), NotRegistered> {
        self.check(epoch, true)
    }

    /// Must this counter register again, now that a health check named
    /// `caller_epoch`? Yes when the caller is another coordinator run than
    /// the one registered with (it restarted), or the counter has not
    /// registered at all. A check that names no epoch proves nothing.
    pub fn must_register_for(&self, caller_epoch: Option<u64>) -> bool {
        caller_epoch.is_some_and(|epoch| Some(epoch) != self.epoch)
    }

    fn check(&self, asked: u64, need_in_sync: bool) -> Result<(), NotRegistered> {
        let refuse = NotRegistered {
            asked,
            registered: self.epoch.unwrap_or(0),
        };
        match self.epoch {
            Some(epoch) if epoch == asked && (!need_in_sync || self.told_in_sync) => Ok(()),
            _ => Err(refuse),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(asked: u64, registered: u64) -> Result<(), NotRegistered> {
        Err(NotRegistered { asked, registered })
    }

    #[test]
    fn an_unregistered_counter_neither_votes_nor_serves_reads() {
        let r = Registration::default();
        assert_eq!(r.epoch(), None);
        assert!(!r.told_in_sync());
        assert_eq!(r.check_vote(1), refused(1, 0));
        assert_eq!(r.check_fenced_read(1), refused(1, 0));
        // An epoch-0 caller is no exception: 0 means "none".
        assert_eq!(r.check_vote(0), refused(0, 0));
        // Forcing a promotion before registering proves nothing.
        let mut r = r;
        r.promoted();
        assert!(!r.told_in_sync());
    }

    #[test]
    fn votes_only_for_the_epoch_registered_with() {
        let mut r = Registration::default();
        r.registered(7, false);
        assert_eq!(r.check_vote(7), Ok(()));
        assert_eq!(r.check_vote(6), refused(6, 7), "an older coordinator");
        assert_eq!(r.check_vote(8), refused(8, 7), "a newer one, not yet met");
    }

    #[test]
    fn serves_fenced_reads_only_once_told_in_sync() {
        let mut r = Registration::default();
        r.registered(3, false);
        assert_eq!(r.check_fenced_read(3), refused(3, 3), "joining");
        r.registered(3, true);
        assert_eq!(r.check_fenced_read(3), Ok(()));
        assert_eq!(r.check_fenced_read(4), refused(4, 3));
        // Registering again with a new coordinator starts over.
        r.registered(4, false);
        assert_eq!(r.check_fenced_read(4), refused(4, 4));
        r.promoted();
        assert_eq!(r.check_fenced_read(4), Ok(()), "promoted by force");
    }

    #[test]
    fn a_health_check_from_another_epoch_calls_for_registering_again() {
        let unregistered = Registration::default();
        assert!(unregistered.must_register_for(Some(1)));
        assert!(!unregistered.must_register_for(None));
        let mut r = Registration::default();
        r.registered(5, true);
        for (caller, again) in [
            (None, false),
            (Some(5), false),
            (Some(6), true),
            (Some(4), true),
        ] {
            assert_eq!(r.must_register_for(caller), again, "caller {caller:?}");
        }
    }

    #[test]
    fn the_refusal_says_who_asked_and_with_whom_the_counter_registered() {
        assert_eq!(
            NotRegistered {
                asked: 9,
                registered: 0
            }
            .to_string(),
            "not registered with the coordinator of epoch 9 (registered: 0)"
        );
    }
}
