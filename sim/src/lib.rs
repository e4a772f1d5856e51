//! A deterministic simulation of a whole tally cluster. The real
//! coordinator core (`tally_common::coordinator::CoordinatorCore`) and the
//! real counter participant (`tally_common::participant::Participant`) run
//! over a simulated network, simulated disks and a simulated clock, with
//! crashes, wiped and restored disks, power cuts and partitions; clients
//! write and read, and a checker judges every run (docs/testing.md,
//! "Deterministic simulation"). Some worlds have three coordinators, each
//! the real `tally_consensus::ReplicatedCoordinator`, replicating their
//! decisions with Raft over the same simulated network.
//!
//! Single-threaded, no I/O, no wall clock: `run(seed)` is a pure function
//! of the seed.

mod agreement;
mod checker;
mod client;
mod coordinator;
mod counter;
mod disk;
mod net;
mod replica;
pub mod rng;
mod world;

pub use checker::Violation;
pub use replica::RaftSettings;
pub use world::{run, run_with, Options, RunReport, Settings};

/// The mutations of tally-common compiled into this build (features
/// `mutate-*`), for the replay command a failure prints.
pub fn mutations() -> Vec<&'static str> {
    let mut m = Vec::new();
    if cfg!(feature = "mutate-ack-before-durable") {
        m.push("mutate-ack-before-durable");
    }
    if cfg!(feature = "mutate-fence-at-delivered") {
        m.push("mutate-fence-at-delivered");
    }
    if cfg!(feature = "mutate-register-ignores-incarnation") {
        m.push("mutate-register-ignores-incarnation");
    }
    if cfg!(feature = "mutate-health-promotes") {
        m.push("mutate-health-promotes");
    }
    if cfg!(feature = "mutate-ignore-trim-point") {
        m.push("mutate-ignore-trim-point");
    }
    if cfg!(feature = "mutate-vote-before-durable") {
        m.push("mutate-vote-before-durable");
    }
    m
}

/// The command that replays `seed` with a step-by-step trace, with the
/// shape `options` forced.
pub fn replay_command(seed: u64, options: Options) -> String {
    let features = mutations();
    let features = if features.is_empty() {
        String::new()
    } else {
        format!(" --features {}", features.join(","))
    };
    let forced = options
        .coordinators
        .map_or(String::new(), |n| format!(" --coordinators {n}"));
    format!("cargo run --release -p tally-sim{features} -- --seed {seed}{forced} --trace")
}
