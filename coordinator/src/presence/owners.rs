//! Where a frontend learns which counters own presence keys: from its own
//! driver (the coordinator's membership), or, in a presence-only frontend,
//! from the coordinator's public `GET /cluster`. Both go through
//! `owners_from_view`, so every frontend applies the same rule.

use crate::driver::Driver;
use std::time::Duration;
use tally_common::api::ClusterView;
use tally_common::presence::{owners_from_view, Owner};

/// How a frontend reads the membership.
#[derive(Clone)]
pub enum OwnerSource {
    Driver(Driver),
    Remote {
        cluster_url: String,
        http: reqwest::Client,
    },
}

impl OwnerSource {
    /// How often the membership is read: a death or a join is seen this
    /// long after the coordinator decided it (at most), well inside one
    /// health interval of the tests' clusters.
    pub fn poll_interval(&self) -> Duration {
        match self {
            OwnerSource::Driver(_) => Duration::from_millis(100),
            OwnerSource::Remote { .. } => Duration::from_millis(200),
        }
    }

    /// The owners now, or `None` when the membership cannot be read (the
    /// caller keeps the last set it had).
    pub async fn owners(&self) -> Option<Vec<Owner>> {
        match self {
            OwnerSource::Driver(driver) => driver
                .inspect(|core, now| owners_from_view(&core.cluster().view(now.0)))
                .await
                .ok(),
            OwnerSource::Remote { cluster_url, http } => {
                let answer = http
                    .get(cluster_url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?
                    .error_for_status()
                    .ok()?;
                let view: ClusterView = answer.json().await.ok()?;
                Some(owners_from_view(&view))
            }
        }
    }
}
