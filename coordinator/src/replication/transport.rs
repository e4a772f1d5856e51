//! Raft messages between coordinators, over the same port as everything
//! else: `POST /internal/raft` carries a batch of messages, each a u32
//! length (big-endian) and the message's protobuf bytes.
//!
//! One sender task per peer sends one batch at a time, and everything
//! queued meanwhile goes in the next: messages keep their order (raft-rs
//! copes with reordering, but it costs rejections and probes), and under
//! load one HTTP request carries many appends and heartbeats. A batch that
//! fails is dropped and the peer reported unreachable; Raft re-sends what
//! matters.

use std::time::Duration;
use tally_common::api::TOKEN_HEADER;
use tally_consensus::{decode_message, encode_message, Message};
use tokio::sync::mpsc;

/// Longest a batch may take: a peer slower than this is as good as down
/// for a heartbeat, and holding the next batch behind it would delay every
/// message after it.
const SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// The sending side: one queue per peer.
pub struct Outbox {
    queues: Vec<Option<mpsc::UnboundedSender<Message>>>,
}

impl Outbox {
    /// Starts a sender for every peer but `me` (ids are 1-based positions
    /// in `peers`). `unreachable` hears of every batch that failed.
    pub fn start(
        peers: &[String],
        me: u64,
        token: Option<String>,
        unreachable: impl Fn(u64) + Send + Sync + Clone + 'static,
    ) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(300))
            .pool_max_idle_per_host(2)
            .build()
            .expect("the HTTP client builds with static settings");
        let queues = peers
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let id = i as u64 + 1;
                if id == me {
                    return None;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                let url = format!("{}/internal/raft", url.trim_end_matches('/'));
                let (http, token, unreachable) = (http.clone(), token.clone(), unreachable.clone());
                tokio::spawn(async move {
                    send_loop(rx, url, http, token, move || unreachable(id)).await
                });
                Some(tx)
            })
            .collect();
        Outbox { queues }
    }

    pub fn send(&self, message: Message) {
        let to = message.to as usize;
        if let Some(Some(queue)) = self.queues.get(to.wrapping_sub(1)) {
            let _ = queue.send(message);
        }
    }
}

async fn send_loop(
    mut rx: mpsc::UnboundedReceiver<Message>,
    url: String,
    http: reqwest::Client,
    token: Option<String>,
    unreachable: impl Fn(),
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut request = http
            .post(&url)
            .timeout(SEND_TIMEOUT)
            .body(encode_batch(&batch));
        if let Some(token) = &token {
            request = request.header(TOKEN_HEADER, token);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                tracing::debug!(%url, status = %response.status(), "raft batch refused");
                unreachable();
            }
            Err(e) => {
                tracing::debug!(%url, error = %e, "raft batch not delivered");
                unreachable();
            }
        }
    }
}

pub fn encode_batch(messages: &[Message]) -> Vec<u8> {
    let mut body = Vec::new();
    for m in messages {
        let bytes = encode_message(m);
        body.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        body.extend_from_slice(&bytes);
    }
    body
}

/// Parses a batch; any malformed part refuses the whole batch.
pub fn decode_batch(mut body: &[u8]) -> Result<Vec<Message>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let Some((len, rest)) = body.split_first_chunk::<4>() else {
            return Err("a raft batch ends inside a length".into());
        };
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err("a raft batch ends inside a message".into());
        }
        let message = decode_message(&rest[..len]).map_err(|e| e.to_string())?;
        out.push(message);
        body = &rest[len..];
    }
    Ok(out)
}

/// `GET /internal/raft/status`: what a starting coordinator asks its
/// peers (see `mod.rs`).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct RaftStatus {
    /// The peer's current term; 0 if it never campaigned.
    pub term: u64,
    /// It holds log entries or a snapshot: something was replicated.
    pub has_log: bool,
    /// It lost its data and is catching up; it votes again once it has.
    #[serde(default)]
    pub rejoining: bool,
}

pub async fn peer_log(
    http: &reqwest::Client,
    url: &str,
    token: Option<String>,
) -> Result<tally_consensus::PeerLog, reqwest::Error> {
    let mut request = http
        .get(format!(
            "{}/internal/raft/status",
            url.trim_end_matches('/')
        ))
        .timeout(SEND_TIMEOUT);
    if let Some(token) = token {
        request = request.header(TOKEN_HEADER, token);
    }
    let status: RaftStatus = request.send().await?.error_for_status()?.json().await?;
    Ok(tally_consensus::PeerLog {
        term: status.term,
        has_log: status.has_log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_survives_the_wire_and_garbage_is_refused() {
        let a = Message {
            to: 2,
            term: 7,
            ..Default::default()
        };
        let b = Message {
            to: 3,
            commit: 9,
            ..Default::default()
        };
        let decoded = decode_batch(&encode_batch(&[a.clone(), b.clone()])).unwrap();
        assert_eq!(decoded, vec![a, b]);
        assert!(decode_batch(&[0, 0, 0, 9, 1]).is_err());
        assert!(decode_batch(&[0, 0]).is_err());
        assert!(decode_batch(&[0, 0, 0, 2, 0xff, 0xff]).is_err());
    }
}
