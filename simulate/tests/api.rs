//! The public API against a real cluster: clients that use
//! curl's defaults work, and every bad input gets its status and a clear message while
//! changing no count.

use simulate::api::Api;
use simulate::cluster::{ClusterOptions, LocalCluster};
use std::time::Duration;
use tally_common::api::{CounterState, CounterStatus, PrepareRequest, PREPARE_CONTENT_TYPE};
use tally_common::{Item, TxnId};

async fn cluster(dir: &tempfile::TempDir) -> LocalCluster {
    LocalCluster::start(ClusterOptions::new(dir.path(), 3))
        .await
        .expect("cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_style_clients_work_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir).await;
    let api = cluster.api();

    // curl -d sends application/x-www-form-urlencoded; Api::add_raw does too.
    let (status, body) = api
        .add_raw(br#"[{"id":"item1","tenant":"test"}]"#.to_vec())
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"message":"Success"}"#));
    cluster.check_counts(&[("test", 1)]).await.unwrap();

    let response = reqwest::get(format!("{}/items/test/count", cluster.coordinator_url()))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.unwrap(), r#"{"count":1}"#);

    // Same id twice (in one request and across requests), spaces, unicode.
    let body = r#"[{"id":"item 2","tenant":"tënant ü"},{"id":"item 2","tenant":"tënant ü"},
                   {"id":"日本","tenant":"tënant ü"}]"#;
    assert_eq!(api.add_raw(body.as_bytes().to_vec()).await.unwrap().0, 200);
    assert_eq!(api.add_raw(body.as_bytes().to_vec()).await.unwrap().0, 200);
    cluster.check_counts(&[("tënant ü", 2)]).await.unwrap();

    // The same id in two tenants counts once in each.
    let body = br#"[{"id":"shared","tenant":"a"},{"id":"shared","tenant":"b"}]"#;
    assert_eq!(api.add_raw(body.to_vec()).await.unwrap().0, 200);
    cluster.check_counts(&[("a", 1)]).await.unwrap();
    cluster.check_counts(&[("b", 1)]).await.unwrap();

    // An empty array is a successful no-op; an unknown tenant counts 0.
    let (status, body) = api.add_raw(b"[]".to_vec()).await.unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"message":"Success"}"#));
    cluster.check_counts(&[("never-written", 0)]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir).await;
    let api = cluster.api();
    assert_eq!(
        api.add_raw(br#"[{"id":"keep","tenant":"t"}]"#.to_vec())
            .await
            .unwrap()
            .0,
        200
    );

    let long = "x".repeat(257);
    let many: String = format!(
        "[{}]",
        (0..100_001)
            .map(|i| format!(r#"{{"id":"{i}","tenant":"t"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"not json".to_vec(), 400, "JSON array"),
        (b"".to_vec(), 400, "JSON array"),
        (
            br#"{"id":"a","tenant":"t"}"#.to_vec(),
            400,
            "expected a sequence",
        ),
        (br#"[{"id":"a","tenant":"t"}"#.to_vec(), 400, "EOF"),
        (
            br#"[{"tenant":"t"}]"#.to_vec(),
            400,
            "item 0: id is missing",
        ),
        (
            br#"[{"id":"a"}]"#.to_vec(),
            400,
            "item 0: tenant is missing",
        ),
        (br#"[{"id":"","tenant":"t"}]"#.to_vec(), 400, "id is empty"),
        (br#"[{"id":7,"tenant":"t"}]"#.to_vec(), 400, "invalid type"),
        (
            br#"[[{"id":"a","tenant":"t"}]]"#.to_vec(),
            400,
            "invalid type",
        ),
        (
            format!(r#"[{{"id":"ok","tenant":"t"}},{{"id":"{long}","tenant":"t"}}]"#).into_bytes(),
            400,
            "item 1: id is 257 bytes long",
        ),
        (
            b"[{\"id\":\"\xff\xfe\",\"tenant\":\"t\"}]".to_vec(),
            400,
            "UTF-8",
        ),
        (vec![b' '; 5 * 1024 * 1024], 413, "larger than"),
        (many.into_bytes(), 413, "too many items"),
    ];
    for (body, status, message) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).to_string();
        let (got, text) = api.add_raw(body).await.unwrap();
        assert_eq!(got, status, "{shown}: {text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("errors are JSON");
        let msg = parsed["message"].as_str().expect("a message field");
        assert!(msg.contains(message), "{shown}: {msg:?} lacks {message:?}");
    }

    // Paths and methods.
    let (status, text) = api.get("/nope").await.unwrap();
    assert_eq!(status, 404);
    assert!(text.contains("message"));
    // A bad tenant in the path is a JSON 400 too, whichever way it is bad.
    for (path, message) in [
        (format!("/items/{long}/count"), "257 bytes long"),
        ("/items//count".to_string(), "tenant in the path is empty"),
        ("/items/%FF/count".to_string(), "UTF-8"),
        ("/items/%FF/count/stream".to_string(), "UTF-8"),
    ] {
        let (status, text) = api.get(&path).await.unwrap();
        assert_eq!(status, 400, "{path}: {text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("errors are JSON");
        let msg = parsed["message"].as_str().expect("a message field");
        assert!(msg.contains(message), "{path}: {msg:?} lacks {message:?}");
    }
    // So is a bad path or fence at a counter's own count endpoint.
    let client = reqwest::Client::new();
    let counter = &cluster.counters()[0].url;
    for (path, message) in [
        ("/items/%FF/count", "UTF-8"),
        ("/items/t/count?fence=soon", "fence"),
    ] {
        let response = client.get(format!("{counter}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let parsed: serde_json::Value = response.json().await.expect("errors are JSON");
        let msg = parsed["message"].as_str().expect("a message field");
        assert!(msg.contains(message), "{path}: {msg:?} lacks {message:?}");
    }
    let response = client
        .get(format!("{}/items", cluster.coordinator_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    assert!(response.text().await.unwrap().contains("message"));
    let response = client
        .delete(format!("{}/items/t/count", cluster.coordinator_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);

    // A counter refuses a prepare it cannot read, in either encoding.
    for (content_type, body) in [
        (PREPARE_CONTENT_TYPE, vec![0xff; 16]),
        ("application/json", br#"{"txn":7,"items":"#.to_vec()),
    ] {
        let response = send_prepare(&client, counter, content_type, body).await;
        assert_eq!(response.status(), 400, "{content_type}");
        let parsed: serde_json::Value = response.json().await.expect("errors are JSON");
        let msg = parsed["message"].as_str().expect("a message field");
        assert!(msg.contains("malformed prepare"), "{content_type}: {msg:?}");
    }

    // Nothing of any refused request was counted.
    cluster.check_counts(&[("t", 1)]).await.unwrap();
}

/// A prepare straight to a counter, as the coordinator sends one.
async fn send_prepare(
    client: &reqwest::Client,
    counter: &str,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    client
        .post(format!("{counter}/internal/prepare"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("the counter answers")
}

/// The coordinator sends prepares in postcard; a counter still takes JSON
/// from a person with curl or a coordinator of the previous version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_takes_a_prepare_in_json_or_postcard() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir).await;
    let counter = &cluster.counters()[0].url;
    let client = reqwest::Client::new();
    let prepare = |txn: u64| PrepareRequest {
        txn: TxnId(txn),
        items: vec![Item::new("x", "t")],
        commits: Vec::new(),
    };
    let bodies = [
        (
            "application/json",
            1 << 40,
            serde_json::to_vec(&prepare(1 << 40)).unwrap(),
        ),
        (
            PREPARE_CONTENT_TYPE,
            (1 << 40) + 1,
            prepare((1 << 40) + 1).to_postcard(),
        ),
    ];
    for (content_type, txn, body) in bodies {
        let response = send_prepare(&client, counter, content_type, body).await;
        assert_eq!(response.status(), 200, "{content_type}");
        let status: CounterStatus = response.json().await.unwrap();
        assert_eq!(
            status.voted,
            Some(TxnId(txn)),
            "{content_type}: a vote for this transaction"
        );
    }
    // Both are held prepared, awaiting an outcome.
    let health: CounterStatus = reqwest::get(format!("{counter}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health.prepared, 2, "{health:?}");
}

/// The largest request the default limits allow (4 MiB, about 79,000
/// items) is one transaction that every counter must take. Counters used to
/// refuse prepare bodies over 2 MB, which aborted every such request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_request_the_limits_allow_is_counted_by_every_counter() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir).await;
    let max_body_bytes = 4 << 20;
    let mut body = String::from("[");
    let mut items = 0u64;
    loop {
        let item = format!(r#"{{"id":"item-number-{items:012}","tenant":"big"}}"#);
        if body.len() + item.len() + 2 > max_body_bytes {
            break;
        }
        if items > 0 {
            body.push(',');
        }
        body.push_str(&item);
        items += 1;
    }
    body.push(']');
    assert!(items > 70_000, "{items} items");
    let (status, answer) = cluster.api().add_raw(body.into_bytes()).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    cluster.check_counts(&[("big", items)]).await.unwrap();
}

/// A process that registers as a counter and answers every request with a
/// 200 whose body is not what the protocol expects.
async fn garbage_counter() -> String {
    simulate::fake::fake_counter(move |_| "{\"vote\": \"yes, definitely\"".to_string()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_that_answers_garbage_is_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir).await;
    let api = cluster.api();
    let url = garbage_counter().await;
    // It first claims to hold far more than anything decided: refused,
    // or it would be the one every other counter copies from.
    let register = |applied: u64| {
        let body = serde_json::json!({"id": "liar", "url": url, "applied_index": applied});
        let endpoint = format!("{}/internal/register", cluster.coordinator_url());
        async move {
            reqwest::Client::new()
                .post(endpoint)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let response = register(1_000_000).await;
    assert_eq!(response.status(), 409);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("beyond the last decided index"));
    assert!(
        !api.cluster()
            .await
            .unwrap()
            .counters
            .iter()
            .any(|c| c.id.0 == "liar"),
        "a refused registration leaves no member behind"
    );
    // With a modest claim it is let in as joining, then answers garbage.
    assert_eq!(register(0).await.status(), 200);

    for i in 0..20 {
        let items = vec![tally_common::Item::new(format!("g{i}"), "garbage")];
        assert_eq!(api.add(&items).await, simulate::api::WriteOutcome::Ok);
    }
    for _ in 0..20 {
        assert_eq!(
            api.count("garbage").await,
            Ok(20),
            "reads never reach the liar"
        );
    }
    let view = api.cluster().await.unwrap();
    let liar = view.counters.iter().find(|c| c.id.0 == "liar").unwrap();
    assert!(!liar.in_sync, "{liar:?}");
    // Its health checks fail to parse, so it is declared dead.
    simulate::wait::until("liar dead", Duration::from_secs(10), || async {
        let view = api.cluster().await?;
        match view.counters.iter().find(|c| c.id.0 == "liar") {
            Some(c) if c.state == CounterState::Dead && !c.in_sync => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    cluster.check_counts(&[("garbage", 20)]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_that_answers_for_another_transaction_is_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir).await;
    let api = cluster.api();
    assert_eq!(
        api.add(&[tally_common::Item::new("first", "other")]).await,
        simulate::api::WriteOutcome::Ok
    );
    // Well-formed answers with the right id, so its health checks pass, but
    // every vote names transaction 1 and it claims commits it never got.
    let status = serde_json::json!({
        "id": "impostor", "applied_index": 0, "catching_up": false, "prepared": 0,
        "voted": 1, "committed": (1..100).collect::<Vec<u64>>(),
    });
    let url = simulate::fake::fake_counter(move |_| status.to_string()).await;
    let register = serde_json::json!({"id": "impostor", "url": url, "applied_index": 0});
    let response = reqwest::Client::new()
        .post(format!("{}/internal/register", cluster.coordinator_url()))
        .json(&register)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    for i in 0..20 {
        let items = vec![tally_common::Item::new(format!("w{i}"), "other")];
        assert_eq!(api.add(&items).await, simulate::api::WriteOutcome::Ok);
        assert_eq!(api.count("other").await, Ok(i + 2), "reads never reach it");
    }
    let view = api.cluster().await.unwrap();
    let impostor = view.counters.iter().find(|c| c.id.0 == "impostor").unwrap();
    assert!(!impostor.in_sync, "{impostor:?}");
    assert_eq!(
        impostor.applied_index,
        tally_common::CommitIndex(0),
        "{impostor:?}"
    );
    cluster.check_counts(&[("other", 21)]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_over_and_health_reports_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir).await;
    let api: Api = cluster.api().clone();
    assert_eq!(
        api.add(&[tally_common::Item::new("x", "fo")]).await,
        simulate::api::WriteOutcome::Ok
    );
    let health = |api: Api| async move {
        let (status, body) = api.get("/health").await.unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<tally_common::api::Health>(&body).unwrap()
    };
    assert_eq!(health(api.clone()).await.in_sync, 3);
    cluster.kill_counter(0).unwrap();
    // Before the health check notices, reads that hit the dead counter must
    // move on to another one within the same request.
    for _ in 0..10 {
        assert_eq!(api.count("fo").await, Ok(1));
    }
    // Health reports the state it finds: two counters in sync, then three
    // again once the dead one is back.
    cluster
        .wait_out_of_sync(0, Duration::from_secs(30))
        .await
        .unwrap();
    let state = health(api.clone()).await;
    assert_eq!((state.status.as_str(), state.in_sync), ("ok", 2));
    cluster.start_counter(0).unwrap();
    cluster
        .wait_all_in_sync(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(health(api.clone()).await.in_sync, 3);
}
