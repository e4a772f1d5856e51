//! Time as the protocol machines see it: a value the carrier passes in with
//! an event, never a clock they read. A driver takes it from its own clock
//! (milliseconds since the process started will do); a test or a simulator
//! makes it up, which is what lets them replay a timeout exactly.

use std::fmt;

/// A moment or a span on the carrier's clock, in milliseconds. Only
/// differences between moments of one clock mean anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// How long after `earlier` this moment is; zero if it is not after it.
    pub fn since(self, earlier: Millis) -> Millis {
        Millis(self.0.saturating_sub(earlier.0))
    }

    /// The moment `ms` milliseconds after this one.
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// The span as a [`std::time::Duration`], for a driver's timers.
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }

    /// A span from a [`std::time::Duration`], saturating at `u64::MAX` ms.
    pub fn from_duration(span: std::time::Duration) -> Millis {
        Millis(u64::try_from(span.as_millis()).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
