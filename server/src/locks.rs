//! What both binaries do with a poisoned lock: log which one and exit.
//!
//! A lock is poisoned when a thread panicked while it held it, in the
//! middle of changing what the lock guards; every later answer built on
//! that state could be wrong. Neither binary keeps anything under a lock
//! that a restart cannot rebuild (from the counter's store, from the
//! coordinator's decision log, or nothing at all for caches of work in
//! flight), so neither tries to repair it: the process exits with
//! `EX_SOFTWARE` (70) and the restart recovers. That is the same as a
//! `kill -9`, which loses nothing acknowledged. Each crate's `error.rs`
//! says what its locks guard.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, or exits the process if it is poisoned. `what` names the
/// state it guards, for the log.
pub fn lock<'a, T>(mutex: &'a Mutex<T>, what: &str) -> MutexGuard<'a, T> {
    mutex.lock().unwrap_or_else(|_| poisoned(what))
}

/// Read-locks `lock`, or exits the process if it is poisoned.
pub fn read<'a, T>(lock: &'a RwLock<T>, what: &str) -> RwLockReadGuard<'a, T> {
    lock.read().unwrap_or_else(|_| poisoned(what))
}

/// Write-locks `lock`, or exits the process if it is poisoned.
pub fn write<'a, T>(lock: &'a RwLock<T>, what: &str) -> RwLockWriteGuard<'a, T> {
    lock.write().unwrap_or_else(|_| poisoned(what))
}

fn poisoned(what: &str) -> ! {
    tracing::error!(
        lock = what,
        "a thread panicked while changing this state: exiting, a restart rebuilds it"
    );
    std::process::exit(70)
}
