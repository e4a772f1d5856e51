//! What an operator sees: `/metrics` on every process agrees with the
//! writes that were made and parses as Prometheus text, the count stream
//! pushes a growing count to a subscriber while another client writes, and
//! logs come out as JSON lines when asked.

use futures_util::StreamExt;
use simulate::cluster::{ClusterOptions, LocalCluster};
use simulate::prometheus::{parse_prometheus, scrape, try_value, value};
use simulate::wait;
use std::time::{Duration, Instant};
use tally_common::Item;

const WAIT: Duration = Duration::from_secs(30);

fn items(tenant: &str, prefix: &str, n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| Item {
            id: format!("{prefix}-{i}"),
            tenant: tenant.to_string(),
        })
        .collect()
}

#[test]
fn the_parser_refuses_malformed_text() {
    let good = "# TYPE a counter\na{x=\"1\",y=\"q\\\"\"} 3\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.5\nh_count 2\n";
    let samples = parse_prometheus(good).unwrap();
    assert_eq!(samples.len(), 4);
    assert_eq!(samples[0].labels["y"], "q\"");
    for bad in [
        "a 1\n",                              // no TYPE
        "# TYPE a counter\na{x=1} 1\n",       // unquoted
        "# TYPE a counter\na{x=\"1\"} one\n", // not a number
        "# TYPE a counter\na{x=\"1\" 1\n",    // unterminated
        "# TYPE a counter\na 1 2 3\n",        // garbage
        "# TYPE a counter\n# TYPE a gauge\n", // declared twice
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_writes_made_and_parse_as_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(ClusterOptions::new(dir.path(), 3))
        .await
        .expect("cluster starts");
    let api = cluster.api();
    const REQUESTS: usize = 25;
    const PER_REQUEST: usize = 4;
    // Concurrent, so group commit folds several requests into a transaction.
    let writes = (0..REQUESTS).map(|r| {
        let api = api.clone();
        async move {
            api.add(&items("metered", &format!("r{r}"), PER_REQUEST))
                .await
        }
    });
    for outcome in futures_util::future::join_all(writes).await {
        assert_eq!(outcome, simulate::api::WriteOutcome::Ok);
    }
    for _ in 0..5 {
        assert_eq!(
            api.count("metered").await,
            Ok((REQUESTS * PER_REQUEST) as u64)
        );
    }
    let (status, _) = api.get("/no-such-path").await.unwrap();
    assert_eq!(status, 404);

    // Lag and applied indexes follow health checks and commit acks: poll.
    let coordinator = wait::until("every counter applied everything", WAIT, || async {
        let samples = scrape(cluster.coordinator_url()).await?;
        let decided = try_value(&samples, "tally_decided_index", &[])?;
        let mut lags = Vec::new();
        let mut applied_ok = true;
        for c in cluster.counters() {
            let counter = [("counter", c.id.as_str())];
            lags.push(try_value(
                &samples,
                "tally_replica_lag_transactions",
                &counter,
            )?);
            applied_ok &= try_value(&samples, "tally_replica_applied_index", &counter)? == decided;
        }
        if lags.iter().all(|l| *l == 0.0) && applied_ok {
            Ok(samples)
        } else {
            Err(format!("lags {lags:?}"))
        }
    })
    .await
    .unwrap();

    let items_route = [("route", "/items"), ("method", "POST"), ("status", "200")];
    assert_eq!(
        value(&coordinator, "tally_http_requests_total", &items_route),
        REQUESTS as f64
    );
    let count_route = [("route", "/items/{tenant}/count"), ("status", "200")];
    assert_eq!(
        value(&coordinator, "tally_http_requests_total", &count_route),
        5.0
    );
    let unmatched = [("route", "unmatched"), ("status", "404")];
    assert_eq!(
        value(&coordinator, "tally_http_requests_total", &unmatched),
        1.0
    );
    assert_eq!(
        value(
            &coordinator,
            "tally_http_request_duration_seconds_count",
            &[("route", "/items"), ("method", "POST")]
        ),
        REQUESTS as f64
    );
    let total_items = (REQUESTS * PER_REQUEST) as f64;
    assert_eq!(
        value(&coordinator, "tally_items_acknowledged_total", &[]),
        total_items
    );
    assert_eq!(
        value(&coordinator, "tally_writes_acknowledged_total", &[]),
        REQUESTS as f64
    );
    let committed = value(
        &coordinator,
        "tally_transactions_total",
        &[("outcome", "committed")],
    );
    assert!(
        (1.0..=REQUESTS as f64).contains(&committed),
        "{committed} transactions"
    );
    // No transaction aborted. The family exists (the committed sample
    // above), and an outcome that never happened has no sample at all.
    let aborted = try_value(
        &coordinator,
        "tally_transactions_total",
        &[("outcome", "aborted")],
    );
    assert!(aborted.is_err() || aborted == Ok(0.0), "{aborted:?}");
    // Items per transaction: every item of every request, in `committed` transactions.
    let txn_items = [("outcome", "committed")];
    assert_eq!(
        value(&coordinator, "tally_txn_items_sum", &txn_items),
        total_items
    );
    assert_eq!(
        value(&coordinator, "tally_txn_items_count", &txn_items),
        committed
    );
    assert_eq!(
        value(&coordinator, "tally_txn_requests_sum", &txn_items),
        REQUESTS as f64
    );
    assert_eq!(
        value(&coordinator, "tally_prepare_phase_seconds_count", &[]),
        committed
    );
    assert!(value(&coordinator, "tally_decision_log_write_seconds_count", &[]) >= 1.0);
    assert_eq!(value(&coordinator, "tally_decided_index", &[]), committed);
    assert_eq!(value(&coordinator, "tally_in_sync_counters", &[]), 3.0);
    assert_eq!(
        value(&coordinator, "tally_replicas", &[("state", "live")]),
        3.0
    );
    assert_eq!(
        value(&coordinator, "tally_replicas", &[("state", "dead")]),
        0.0
    );
    for c in cluster.counters() {
        let state = [("counter", c.id.as_str()), ("state", "live")];
        assert_eq!(value(&coordinator, "tally_replica_state", &state), 1.0);
        assert_eq!(
            value(&coordinator, "tally_replica_in_sync", &[("counter", &c.id)]),
            1.0
        );
    }
    let stats: serde_json::Value =
        serde_json::from_str(&api.get("/stats").await.unwrap().1).unwrap();
    assert_eq!(stats["items_acknowledged"], REQUESTS * PER_REQUEST);

    // Every counter prepared each committed transaction once, durably.
    for c in cluster.counters() {
        let samples = scrape(&c.url).await.unwrap();
        let prepare = [("route", "/internal/prepare"), ("status", "200")];
        assert_eq!(
            value(&samples, "tally_http_requests_total", &prepare),
            committed,
            "{}",
            c.id
        );
        assert_eq!(
            value(&samples, "tally_applied_index", &[]),
            committed,
            "{}",
            c.id
        );
        assert!(
            value(&samples, "tally_store_write_seconds_count", &[]) >= committed,
            "{}",
            c.id
        );
        assert!(
            value(&samples, "tally_store_batch_ops_sum", &[]) >= 2.0 * committed,
            "{}",
            c.id
        );
        assert_eq!(value(&samples, "tally_catching_up", &[]), 0.0, "{}", c.id);
        // The first layer of the filter is 1,048,576 keys of 12 bits.
        assert_eq!(
            value(&samples, "tally_item_filter_bytes", &[]),
            1_572_864.0,
            "{}",
            c.id
        );
        // Far fewer than a batch of keys to index: all wait in memory.
        assert_eq!(
            value(&samples, "tally_unindexed_items", &[]),
            total_items,
            "{}",
            c.id
        );
    }
}

/// Reads the next chunk of an SSE body and returns the counts of the
/// `event: count` events it completed.
async fn next_counts<B, E>(
    body: &mut (impl futures_util::Stream<Item = Result<B, E>> + Unpin),
    buffer: &mut String,
) -> Result<Vec<u64>, String>
where
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    let chunk = body
        .next()
        .await
        .ok_or("stream ended")?
        .map_err(|e| e.to_string())?;
    buffer.push_str(std::str::from_utf8(chunk.as_ref()).map_err(|e| e.to_string())?);
    let mut counts = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let event: String = buffer.drain(..end + 2).collect();
        let mut kind = "message";
        let mut data = None;
        for line in event.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                kind = v.trim();
            } else if let Some(v) = line.strip_prefix("data:") {
                data = Some(v.trim().to_string());
            }
        }
        if kind == "count" {
            let count: tally_common::api::Count =
                serde_json::from_str(&data.ok_or("count event without data")?)
                    .map_err(|e| e.to_string())?;
            counts.push(count.count);
        }
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_stream_pushes_growing_counts_while_another_client_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(ClusterOptions::new(dir.path(), 3))
        .await
        .expect("cluster starts");
    let api = cluster.api().clone();
    // Something before subscribing: the first event is the current value.
    assert_eq!(
        api.add(&items("streamed", "before", 2)).await,
        simulate::api::WriteOutcome::Ok
    );

    let response = reqwest::get(format!(
        "{}/items/streamed/count/stream",
        cluster.coordinator_url()
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut received: Vec<u64> = Vec::new();
    let first = tokio::time::timeout(WAIT, async {
        while received.is_empty() {
            received.extend(next_counts(&mut body, &mut buffer).await?);
        }
        Ok::<_, String>(())
    })
    .await;
    assert!(matches!(first, Ok(Ok(()))), "{first:?}");
    assert_eq!(received[0], 2, "the first event is the current count");

    // Another client writes 40 requests of 5 new items, paced over ~1 s so
    // the stream has changes to report along the way.
    const REQUESTS: usize = 40;
    const PER_REQUEST: usize = 5;
    let writer = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(25));
        for r in 0..REQUESTS {
            pace.tick().await;
            let outcome = api
                .add(&items("streamed", &format!("w{r}"), PER_REQUEST))
                .await;
            assert_eq!(outcome, simulate::api::WriteOutcome::Ok);
        }
    });
    let last = (2 + REQUESTS * PER_REQUEST) as u64;
    let started = Instant::now();
    let done = tokio::time::timeout(WAIT, async {
        while received.last() != Some(&last) {
            received.extend(next_counts(&mut body, &mut buffer).await?);
        }
        Ok::<_, String>(())
    })
    .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(done, Ok(Ok(()))),
        "{done:?}; received {received:?}"
    );
    writer.await.unwrap();

    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "counts must only grow: {received:?}"
    );
    assert!(
        received.len() >= 3,
        "expected counts along the way, not just the first and last: {received:?}"
    );
    // Coalesced to at most 10 events a second (plus the first and one in flight).
    let allowed = 2 + (elapsed.as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        received.len() <= allowed,
        "{} events in {elapsed:?}",
        received.len()
    );
    assert_eq!(cluster.api().count("streamed").await, Ok(last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_with_log_format_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ClusterOptions::new(dir.path(), 1);
    options.coordinator_env = vec![("TALLY_LOG_FORMAT".into(), "json".into())];
    let cluster = LocalCluster::start(options).await.expect("cluster starts");
    let log = dir.path().join("coordinator.log");
    let change = wait::until("a logged state change", WAIT, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
            let mut found = None;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let entry: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| format!("not JSON: {line:?}: {e}"))?;
                if entry["fields"]["message"] == "counter state changed" {
                    found = Some(entry);
                }
            }
            found.ok_or_else(|| text.clone())
        }
    })
    .await
    .unwrap();
    assert_eq!(change["fields"]["counter"], "counter-1", "{change}");
    assert_eq!(change["level"], "INFO", "{change}");
    drop(cluster);
}
