//! Calls from the coordinator to counters. One pooled HTTP client with
//! keep-alive connections serves every counter; each call has its own
//! timeout, and any answer that is not a well-formed success is a failure,
//! so a counter that answers garbage is never trusted.

use crate::config::Settings;
use crate::error::lock;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_common::api::{
    AbortRequest, AcceptLossRequest, CatchUpRequest, CommitRequest, CounterStatus, FencedCount,
    EPOCH_PARAM, FENCE_PARAM, PREPARE_CONTENT_TYPE, TOKEN_HEADER,
};
use tally_common::{CommitIndex, CounterId, Incarnation, TxnId};

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("answered {status}: {body}")]
    Status {
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("answered for counter {0}, not the one asked")]
    WrongCounter(CounterId),
    /// The right name, but another data directory than the one registered:
    /// a counter restarted on an empty disk, not yet registered again.
    #[error("answered from another data directory (incarnation {0})")]
    WrongIncarnation(Incarnation),
    /// A well-formed answer to a question that was not asked: a vote for
    /// another transaction, an acknowledgement of another commit.
    #[error("answered for something not asked: {0}")]
    Unasked(String),
}

impl CallError {
    /// A short label for metrics: what kind of failure it was.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Http(e) if e.is_timeout() => "timeout",
            CallError::Http(e) if e.is_decode() => "garbage",
            CallError::Http(_) => "unreachable",
            CallError::Status { .. } => "error_status",
            CallError::WrongCounter(_) => "wrong_counter",
            CallError::WrongIncarnation(_) => "wrong_incarnation",
            CallError::Unasked(_) => "unasked",
        }
    }
}

#[derive(Clone)]
pub struct CounterClient {
    http: reqwest::Client,
    token: Option<String>,
    endpoints: Arc<Mutex<Endpoints>>,
}

/// Endpoint URLs already parsed, by counter base URL, then path.
type Endpoints = HashMap<String, Vec<(&'static str, reqwest::Url)>>;

/// More distinct counter URLs than any cluster has: past it the cache
/// starts over, so addresses that come and go cannot grow it for ever.
const MAX_CACHED_BASES: usize = 1024;

impl CounterClient {
    /// A client with the connect and idle timeouts of `settings`; each
    /// call sets its own total timeout.
    pub fn new(token: Option<String>, settings: &Settings) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(settings.client_idle_timeout)
            .tcp_nodelay(true)
            .connect_timeout(settings.connect_timeout)
            .build()
            .expect("the HTTP client builds with static settings");
        CounterClient {
            http,
            token,
            endpoints: Arc::default(),
        }
    }

    /// `{base}{path}`, parsed once per counter and path: parsed for every
    /// call (IDNA host processing included), it was about 7% of the
    /// coordinator's instructions per count read. A URL that does not
    /// parse is handed to reqwest as text, which fails the call as before.
    fn endpoint(&self, base: &str, path: &'static str) -> Result<reqwest::Url, String> {
        let mut endpoints = lock(&self.endpoints, "the counters' endpoint URLs");
        if let Some(url) = endpoints
            .get(base)
            .and_then(|paths| paths.iter().find(|(p, _)| *p == path))
            .map(|(_, url)| url.clone())
        {
            return Ok(url);
        }
        let text = format!("{base}{path}");
        let url = reqwest::Url::parse(&text).map_err(|_| text)?;
        if endpoints.len() >= MAX_CACHED_BASES && !endpoints.contains_key(base) {
            endpoints.clear();
        }
        endpoints
            .entry(base.to_string())
            .or_default()
            .push((path, url.clone()));
        Ok(url)
    }

    fn post(&self, base: &str, path: &'static str) -> reqwest::RequestBuilder {
        match self.endpoint(base, path) {
            Ok(url) => self.http.post(url),
            Err(text) => self.http.post(text),
        }
    }

    fn get(&self, base: &str, path: &'static str) -> reqwest::RequestBuilder {
        match self.endpoint(base, path) {
            Ok(url) => self.http.get(url),
            Err(text) => self.http.get(text),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        mut request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, CallError> {
        if let Some(token) = &self.token {
            request = request.header(TOKEN_HEADER, token);
        }
        let response = request.timeout(timeout).send().await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(CallError::Status { status, body });
        }
        Ok(response.json().await?)
    }

    /// Sends an already serialised prepare body (postcard), shared by all
    /// participants. A yes counts only from the registered life of the
    /// counter (`incarnation`, when known).
    pub async fn prepare(
        &self,
        url: &str,
        id: &CounterId,
        incarnation: Option<Incarnation>,
        txn: TxnId,
        body: Bytes,
        timeout: Duration,
    ) -> Result<CounterStatus, CallError> {
        let request = self
            .post(url, "/internal/prepare")
            .header("content-type", PREPARE_CONTENT_TYPE)
            .body(body);
        let status = check_identity(id, self.send(request, timeout).await?)?;
        if let Some(expected) = incarnation {
            if status.incarnation != expected {
                return Err(CallError::WrongIncarnation(status.incarnation));
            }
        }
        if status.voted != Some(txn) {
            return Err(CallError::Unasked(format!(
                "a vote for {:?} in answer to prepare {txn}",
                status.voted
            )));
        }
        Ok(status)
    }

    pub async fn commit(
        &self,
        url: &str,
        id: &CounterId,
        request: CommitRequest,
        timeout: Duration,
    ) -> Result<CounterStatus, CallError> {
        let index = request.index;
        let request = self.post(url, "/internal/commit").json(&request);
        let status = check_identity(id, self.send(request, timeout).await?)?;
        if !status.committed.contains(&index) {
            return Err(CallError::Unasked(format!(
                "commit {index} not among those acknowledged ({:?})",
                status.committed
            )));
        }
        Ok(status)
    }

    pub async fn abort(
        &self,
        url: &str,
        request: AbortRequest,
        timeout: Duration,
    ) -> Result<CounterStatus, CallError> {
        let request = self.post(url, "/internal/abort").json(&request);
        self.send(request, timeout).await
    }

    /// The health check. It names this coordinator's epoch, so a counter
    /// registered with an earlier coordinator registers again at once.
    pub async fn status(
        &self,
        url: &str,
        id: &CounterId,
        epoch: u64,
        timeout: Duration,
    ) -> Result<CounterStatus, CallError> {
        let request = self
            .get(url, "/internal/status")
            .query(&[(EPOCH_PARAM, epoch)]);
        check_identity(id, self.send(request, timeout).await?)
    }

    /// Tells a counter promoted by force to take every index up to
    /// `through` as held (the operator gave up what it lacks).
    pub async fn accept_loss(
        &self,
        url: &str,
        id: &CounterId,
        through: CommitIndex,
        timeout: Duration,
    ) -> Result<CounterStatus, CallError> {
        let request = self
            .post(url, "/internal/accept-loss")
            .json(&AcceptLossRequest { through });
        check_identity(id, self.send(request, timeout).await?)
    }

    pub async fn catch_up(
        &self,
        url: &str,
        request: &CatchUpRequest,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let mut request = self
            .post(url, "/internal/catchup")
            .json(request)
            .timeout(timeout);
        if let Some(token) = &self.token {
            request = request.header(TOKEN_HEADER, token);
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(CallError::Status { status, body });
        }
        Ok(())
    }

    /// A fenced read. The counter answers only for the coordinator it
    /// registered with (`epoch`), and says who it is, like every other
    /// answer: a read from another process at the same address is no read.
    pub async fn count(
        &self,
        url: &str,
        id: &CounterId,
        tenant: &str,
        fence: CommitIndex,
        epoch: u64,
        timeout: Duration,
    ) -> Result<u64, CallError> {
        let (fence, epoch) = (fence.0.to_string(), epoch.to_string());
        let request = self.get(url, "/internal/count").query(&[
            ("tenant", tenant),
            (FENCE_PARAM, &fence),
            (EPOCH_PARAM, &epoch),
        ]);
        let answer: FencedCount = self.send(request, timeout).await?;
        if &answer.id != id {
            return Err(CallError::WrongCounter(answer.id));
        }
        Ok(answer.count)
    }
}

/// A counter at a reused address (a restarted container, say) may be a
/// different member: its votes and progress must not count for the old one.
fn check_identity(id: &CounterId, status: CounterStatus) -> Result<CounterStatus, CallError> {
    if &status.id == id {
        Ok(status)
    } else {
        Err(CallError::WrongCounter(status.id))
    }
}
