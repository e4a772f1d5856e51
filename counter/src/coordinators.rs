//! The coordinators a counter may call (`--coordinator`, comma-separated),
//! and which of them answered last. With several coordinators only the
//! leader decides; the others forward a counter's call to it, or answer
//! 503 while there is none. The counter need not know which one leads:
//! it keeps calling the one that answered last, and when that one cannot
//! be reached, times out or answers 503, it tries the next in turn.

use reqwest::{RequestBuilder, Response, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The coordinator URLs, and the one the next call goes to first.
pub struct Coordinators {
    urls: Vec<String>,
    /// Index in `urls` of the coordinator that answered last, or of the
    /// next one to try after it failed. Tasks call concurrently; a race
    /// costs at most one extra attempt, never a wrong answer.
    current: AtomicUsize,
}

impl Coordinators {
    /// `urls` must not be empty (the flag's parser sees to it).
    pub fn new(urls: Vec<String>) -> Self {
        assert!(!urls.is_empty(), "a counter needs a coordinator to call");
        Coordinators {
            urls,
            current: AtomicUsize::new(0),
        }
    }

    /// The coordinator the next call goes to first.
    pub fn current(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// Sends the request `build` makes for a coordinator's base URL, first
    /// to the coordinator that answered last, then, while the answer is
    /// one another coordinator might not give (no connection, a timeout, a
    /// 503), to the next in turn. Each coordinator is tried at most once
    /// per call, so a call fails after one round and the caller's own
    /// retries and backoff go on as with a single coordinator. Any other
    /// answer, a 404 or a 409 say, is the cluster's answer: it is returned
    /// at once. A success is returned as a response, an error status as
    /// the error.
    pub async fn send(
        &self,
        build: impl Fn(&str) -> RequestBuilder,
    ) -> Result<Response, reqwest::Error> {
        let n = self.urls.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut tried = 0;
        loop {
            let at = (first + tried) % n;
            let url = &self.urls[at];
            tried += 1;
            let answer = match build(url).send().await {
                Ok(response) => response.error_for_status(),
                Err(e) => Err(e),
            };
            match answer {
                Err(e) if another_may_answer(&e) => {
                    // Passed over: the next call starts after it.
                    self.current.store((at + 1) % n, Ordering::Relaxed);
                    if tried == n {
                        return Err(e);
                    }
                    tracing::debug!(coordinator = %url, error = %e, "trying the next coordinator");
                }
                answer => {
                    self.current.store(at, Ordering::Relaxed);
                    return answer;
                }
            }
        }
    }
}

/// Whether another coordinator might answer where this one did not: it
/// could not be reached, did not answer in time, or said it cannot serve
/// now (a follower without a leader, a leader stepping down).
fn another_may_answer(e: &reqwest::Error) -> bool {
    match e.status() {
        Some(status) => status == StatusCode::SERVICE_UNAVAILABLE,
        None => !e.is_decode() && !e.is_builder(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode as Status;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    use std::time::Duration;

    /// A coordinator stand-in on a loopback port that answers every call
    /// with `status` and counts the calls.
    async fn coordinator(status: Status) -> (String, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let app = axum::Router::new().fallback(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                (status, [("retry-after", "1")], "answer")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, calls)
    }

    /// A loopback URL nothing listens on: connections are refused.
    fn nobody() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    fn get(http: &reqwest::Client) -> impl Fn(&str) -> RequestBuilder + '_ {
        move |base| {
            http.get(format!("{base}/internal/outcome/1"))
                .timeout(Duration::from_millis(500))
        }
    }

    #[tokio::test]
    async fn a_dead_coordinator_is_passed_over_and_the_one_that_answered_is_kept() {
        let http = reqwest::Client::new();
        let (leader, calls) = coordinator(Status::OK).await;
        let coordinators = Coordinators::new(vec![nobody(), leader.clone()]);
        let response = coordinators.send(get(&http)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(coordinators.current(), leader);
        // The next calls go straight to it.
        coordinators.send(get(&http)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(coordinators.current(), leader);
    }

    #[tokio::test]
    async fn a_503_moves_on_to_the_next_coordinator_in_turn() {
        let http = reqwest::Client::new();
        let (follower, follower_calls) = coordinator(Status::SERVICE_UNAVAILABLE).await;
        let (leader, leader_calls) = coordinator(Status::OK).await;
        let coordinators = Coordinators::new(vec![follower, nobody(), leader.clone()]);
        coordinators.send(get(&http)).await.unwrap();
        coordinators.send(get(&http)).await.unwrap();
        assert_eq!(follower_calls.load(Ordering::SeqCst), 1);
        assert_eq!(leader_calls.load(Ordering::SeqCst), 2);
        assert_eq!(coordinators.current(), leader);
    }

    #[tokio::test]
    async fn one_round_at_most_then_the_error_goes_to_the_caller() {
        let http = reqwest::Client::new();
        let (a, a_calls) = coordinator(Status::SERVICE_UNAVAILABLE).await;
        let (b, b_calls) = coordinator(Status::SERVICE_UNAVAILABLE).await;
        let coordinators = Coordinators::new(vec![a, nobody(), b]);
        let err = coordinators.send(get(&http)).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(a_calls.load(Ordering::SeqCst), 1);
        assert_eq!(b_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_clusters_own_refusal_is_returned_without_asking_another() {
        let http = reqwest::Client::new();
        let (a, a_calls) = coordinator(Status::NOT_FOUND).await;
        let (b, b_calls) = coordinator(Status::OK).await;
        let coordinators = Coordinators::new(vec![a.clone(), b]);
        let err = coordinators.send(get(&http)).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
        assert_eq!(a_calls.load(Ordering::SeqCst), 1);
        assert_eq!(b_calls.load(Ordering::SeqCst), 0);
        assert_eq!(coordinators.current(), a, "it answered");
    }

    #[tokio::test]
    async fn a_coordinator_that_does_not_answer_in_time_is_passed_over() {
        let http = reqwest::Client::new();
        // Accepts connections and never answers: a frozen process.
        let frozen = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let frozen_url = format!("http://{}", frozen.local_addr().unwrap());
        let (leader, _) = coordinator(Status::OK).await;
        let coordinators = Coordinators::new(vec![frozen_url, leader.clone()]);
        coordinators.send(get(&http)).await.unwrap();
        assert_eq!(coordinators.current(), leader);
        drop(frozen);
    }

    #[tokio::test]
    async fn a_single_coordinator_gets_every_call_and_its_error_as_is() {
        let http = reqwest::Client::new();
        let dead = nobody();
        let coordinators = Coordinators::new(vec![dead.clone()]);
        for _ in 0..2 {
            let err = coordinators.send(get(&http)).await.unwrap_err();
            assert!(err.is_connect(), "{err:?}");
            assert_eq!(coordinators.current(), dead);
        }
    }
}
