//! What the HTTP handlers share: the driver (the way into the protocol
//! core), the client for counters, the settings, and the reads in flight.

use crate::client::CounterClient;
use crate::config::Settings;
use crate::driver::Driver;
use crate::reads::ReadsInFlight;

pub struct Shared {
    pub settings: Settings,
    pub driver: Driver,
    pub counters: CounterClient,
    pub reads: ReadsInFlight,
    /// This coordinator's URL as its peers name it.
    pub advertise: Option<String>,
    /// Passes requests to the leader when this coordinator follows
    /// (`replication/forward.rs`).
    pub forwarder: reqwest::Client,
}

impl Shared {
    /// A fenced, fresh count of `tenant` (reads.rs).
    pub async fn count(&self, tenant: &str) -> Result<u64, crate::error::Error> {
        crate::reads::count(
            &self.reads,
            &self.driver,
            &self.counters,
            self.settings.read_timeout,
            tenant,
        )
        .await
    }
}
