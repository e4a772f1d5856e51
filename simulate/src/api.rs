//! A small client of tally's public API, used by every subcommand and test.

use std::time::Duration;
use tally_common::api::{ClusterView, Count, CounterStatus, Message, ReplicaCount};
use tally_common::Item;

/// How a write ended, as the set checker needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// 200: every item must be counted.
    Ok,
    /// 4xx or 503: no item may be counted.
    Failed(u16, String),
    /// No connection could be made (refused, or none within the connect
    /// timeout): the request never left the client, so no item may be
    /// counted.
    NotSent(String),
    /// 5xx other than 503, or no answer: may or may not be counted.
    Unknown(String),
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            // Inside tally's default idle close (30 s, --header-read-timeout).
            .pool_idle_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("static client settings");
        Api {
            http,
            base: base.into().trim_end_matches('/').to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Posts `items` and classifies the answer.
    pub async fn add(&self, items: &[Item]) -> WriteOutcome {
        match self
            .post_items(serde_json::to_vec(items).expect("items serialise"))
            .await
        {
            Ok((200, _)) => WriteOutcome::Ok,
            Ok((status, body)) if (400..500).contains(&status) || status == 503 => {
                WriteOutcome::Failed(status, body)
            }
            Ok((status, body)) => WriteOutcome::Unknown(format!("{status}: {body}")),
            Err(e) if e.is_connect() => WriteOutcome::NotSent(error_chain(&e)),
            Err(e) => WriteOutcome::Unknown(error_chain(&e)),
        }
    }

    /// Adds `n` distinct items (`{prefix}-{k}`) to `tenant` in requests of
    /// 1,000; the first request not acknowledged ends it with its outcome.
    pub async fn add_bulk(&self, tenant: &str, prefix: &str, n: usize) -> Result<(), WriteOutcome> {
        for chunk in 0..n.div_ceil(1000) {
            let items: Vec<Item> = (chunk * 1000..((chunk + 1) * 1000).min(n))
                .map(|k| Item::new(format!("{prefix}-{k}"), tenant))
                .collect();
            match self.add(&items).await {
                WriteOutcome::Ok => {}
                other => return Err(other),
            }
        }
        Ok(())
    }

    /// Posts raw bytes (with curl's default form Content-Type, as
    /// `curl -d` does) and returns the status and body.
    pub async fn add_raw(&self, body: Vec<u8>) -> Result<(u16, String), String> {
        self.post_items(body).await.map_err(|e| error_chain(&e))
    }

    async fn post_items(&self, body: Vec<u8>) -> Result<(u16, String), reqwest::Error> {
        let response = self
            .http
            .post(format!("{}/items", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// The tenant's count as the coordinator answers it.
    pub async fn count(&self, tenant: &str) -> Result<u64, String> {
        count_at(&self.http, &self.base, tenant).await
    }

    /// The tenant's count read directly from one counter.
    pub async fn counter_count(&self, counter_url: &str, tenant: &str) -> Result<u64, String> {
        count_at(&self.http, counter_url, tenant).await
    }

    /// A counter's own `GET /health`: its id, disk, applied index and copy.
    pub async fn counter_health(&self, counter_url: &str) -> Result<CounterStatus, String> {
        let response = self
            .http
            .get(format!("{counter_url}/health"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!(
                "{counter_url}/health answered {}",
                response.status()
            ));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// A counter's own answer, with whether it says it may be partial.
    pub async fn counter_count_detail(
        &self,
        counter_url: &str,
        tenant: &str,
    ) -> Result<ReplicaCount, String> {
        let response = count_response(&self.http, counter_url, tenant).await?;
        response.json().await.map_err(|e| e.to_string())
    }

    pub async fn cluster(&self) -> Result<ClusterView, String> {
        let response = self
            .http
            .get(format!("{}/cluster", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("/cluster answered {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// Waits until every counter at `counters` has applied everything the
    /// coordinator had decided when the call began. Clients hear of a
    /// commit before the counters apply it, so reading a counter directly
    /// right after a write needs this; reads through the coordinator do not.
    pub async fn wait_applied(&self, counters: &[String], timeout: Duration) -> Result<(), String> {
        let decided = self.cluster().await?.decided_index;
        let deadline = std::time::Instant::now() + timeout;
        for url in counters {
            loop {
                let status: Result<CounterStatus, String> = async {
                    let response = self
                        .http
                        .get(format!("{url}/health"))
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    response.json().await.map_err(|e| e.to_string())
                }
                .await;
                let last = match status {
                    Ok(s) if s.applied_index >= decided => break,
                    Ok(s) => format!("applied {} of {decided}", s.applied_index),
                    Err(e) => e,
                };
                if std::time::Instant::now() > deadline {
                    return Err(format!("{url} did not apply up to {decided}: {last}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// A GET of any path, for status and body checks.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.map_err(|e| e.to_string())?))
    }
}

async fn count_at(http: &reqwest::Client, base: &str, tenant: &str) -> Result<u64, String> {
    let response = count_response(http, base, tenant).await?;
    let count: Count = response.json().await.map_err(|e| e.to_string())?;
    Ok(count.count)
}

/// A successful answer of `GET {base}/items/{tenant}/count`, or the error.
async fn count_response(
    http: &reqwest::Client,
    base: &str,
    tenant: &str,
) -> Result<reqwest::Response, String> {
    let mut url = reqwest::Url::parse(base).map_err(|e| e.to_string())?;
    url.path_segments_mut()
        .map_err(|_| "bad base url".to_string())?
        .extend(["items", tenant, "count"]);
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        let body: Result<Message, _> = response.json().await;
        return Err(format!(
            "{status}: {}",
            body.map(|m| m.message).unwrap_or_default()
        ));
    }
    Ok(response)
}

/// The error with its causes: reqwest's own message alone says only
/// "error sending request".
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
