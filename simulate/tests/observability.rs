//! What an operator sees: `/metrics` on every process agrees with the
//! writes that were made and parses as Prometheus text, the count stream
//! pushes a growing count to a subscriber while another client writes, and
//! logs come out as JSON lines when asked.

use futures_util::StreamExt;
use simulate::cluster::{ClusterOptions, LocalCluster};
use simulate::wait;
use std::collections::BTreeMap;
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

// ---- a strict Prometheus text parser ------------------------------------

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the text exposition format (version 0.0.4), refusing anything
/// malformed: every sample must belong to a family declared by `# TYPE`
/// (histograms through `_bucket`, `_sum` and `_count`), label values must
/// be quoted and properly escaped, values must be numbers.
fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: &str| Err(format!("line {}: {why}: {line:?}", n + 1));
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
                return fail("bad TYPE");
            };
            if !valid_name(name)
                || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
            {
                return fail("bad TYPE");
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return fail("TYPE declared twice");
            }
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return fail("no value"),
        };
        if !valid_name(name) {
            return fail("bad metric name");
        }
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(inner) = rest.strip_prefix('{') {
            match parse_labels(inner) {
                Ok((parsed, after)) => {
                    labels = parsed;
                    rest = after;
                }
                Err(why) => return fail(&why),
            }
        }
        let mut fields = rest.split_whitespace();
        let value = match fields.next() {
            Some("+Inf") => f64::INFINITY,
            Some("-Inf") => f64::NEG_INFINITY,
            Some("NaN") => f64::NAN,
            Some(v) => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => return fail("value is not a number"),
            },
            None => return fail("no value"),
        };
        if let Some(ts) = fields.next() {
            if ts.parse::<i64>().is_err() {
                return fail("bad timestamp");
            }
        }
        if fields.next().is_some() || !rest.starts_with(' ') {
            return fail("trailing garbage");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|base| {
                types
                    .get(*base)
                    .is_some_and(|t| t == "histogram" || t == "summary")
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return fail("sample without a TYPE");
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// Parses `name="value",...}` and returns the labels and what follows `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without =")?;
        let name = &s[..eq];
        if !valid_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let body = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("unquoted label value")?;
        let mut value = String::new();
        let mut escaped = false;
        let mut close = None;
        for (i, c) in body.char_indices() {
            match (escaped, c) {
                (true, 'n') => value.push('\n'),
                (true, '\\' | '"') => value.push(c),
                (true, _) => return Err("bad escape in label value".into()),
                (false, '\\') => {}
                (false, '"') => {
                    close = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
            escaped = !escaped && c == '\\';
        }
        let close = close.ok_or("unterminated label value")?;
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        s = &body[close + 1..];
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("labels not separated by commas".into());
        }
    }
}

/// The samples of `url/metrics`, checked for content type and syntax.
async fn scrape(url: &str) -> Result<Vec<Sample>, String> {
    let response = reqwest::get(format!("{url}/metrics"))
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("/metrics answered {}", response.status()));
    }
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    if !content_type.starts_with("text/plain") {
        return Err(format!("content type {content_type}"));
    }
    parse_prometheus(&response.text().await.map_err(|e| e.to_string())?)
}

/// The value of the sample `name` whose labels include `labels`, or 0 if
/// there is none (a counter never incremented is absent).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} is ambiguous: {matching:?}"
    );
    matching.first().map_or(0.0, |s| s.value)
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
        let lags: Vec<f64> = cluster
            .counters()
            .iter()
            .map(|c| value(&samples, "tally_counter_lag", &[("counter", &c.id)]))
            .collect();
        let applied_ok = cluster.counters().iter().all(|c| {
            value(
                &samples,
                "tally_counter_applied_index",
                &[("counter", &c.id)],
            ) == value(&samples, "tally_decided_index", &[])
        });
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
    assert_eq!(
        value(
            &coordinator,
            "tally_transactions_total",
            &[("outcome", "aborted")]
        ),
        0.0
    );
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
        value(&coordinator, "tally_counters", &[("state", "live")]),
        3.0
    );
    assert_eq!(
        value(&coordinator, "tally_counters", &[("state", "dead")]),
        0.0
    );
    for c in cluster.counters() {
        let state = [("counter", c.id.as_str()), ("state", "live")];
        assert_eq!(value(&coordinator, "tally_counter_state", &state), 1.0);
        assert_eq!(
            value(&coordinator, "tally_counter_in_sync", &[("counter", &c.id)]),
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
    options.coordinator_env = vec![("LOG_FORMAT".into(), "json".into())];
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
