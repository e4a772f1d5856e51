//! The operator's toolkit behind the `simulate` binary, and the harness the
//! integration tests share: start a cluster of real processes, talk to it,
//! break it, wait for it, measure it.

pub mod api;
pub mod chaos;
pub mod checker;
pub mod cluster;
pub mod cpu;
pub mod docker;
pub mod fake;
pub mod load;
pub mod presence;
pub mod prometheus;
pub mod readers;
pub mod scenario;
pub mod table;
pub mod wait;
