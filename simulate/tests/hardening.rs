//! Hostile clients against a live cluster: wrong or missing tokens, bodies
//! built to hurt, slow and idle connections, floods. After each, the
//! cluster still answers and every count is exactly what the valid writes
//! made it.

use futures_util::future::join_all;
use simulate::api::Api;
use simulate::cluster::{bin_dir, free_port, ClusterOptions, LocalCluster};
use simulate::prometheus::{scrape, try_value, value};
use std::process::{Command, Stdio};
use std::time::Duration;
use tally_common::api::TOKEN_HEADER;
use tally_common::Item;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "s3cret-token-for-tests";

async fn start(
    counters: usize,
    coordinator_args: &[&str],
    token: Option<&str>,
) -> (tempfile::TempDir, LocalCluster) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ClusterOptions::new(dir.path(), counters);
    options.coordinator_args = coordinator_args.iter().map(|s| s.to_string()).collect();
    options.cluster_token = token.map(str::to_string);
    let cluster = LocalCluster::start(options).await.expect("cluster starts");
    (dir, cluster)
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Sends `request` as is on a fresh connection and returns everything the
/// server sends back until it closes (the request should say
/// `Connection: close`).
async fn raw_exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the server closes `stream` (EOF or reset) within `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An error answer (408, say) before the close is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_endpoints_need_the_cluster_token() {
    let (dir, cluster) = start(2, &[], Some(TOKEN)).await;
    let api = cluster.api();
    // The cluster came up and writes go through: every internal call
    // between the processes carried the token.
    let items: Vec<Item> = (0..3).map(|i| Item::new(format!("i{i}"), "t")).collect();
    assert_eq!(api.add(&items).await, simulate::api::WriteOutcome::Ok);

    let http = reqwest::Client::new();
    let coordinator = cluster.coordinator_url().to_string();
    let counter = cluster.counters()[0].url.clone();
    let prepare = serde_json::json!({"txn": 999, "items": [{"id": "forged", "tenant": "t"}]});
    let calls: Vec<(reqwest::Method, String, Option<serde_json::Value>)> = vec![
        (
            reqwest::Method::POST,
            format!("{coordinator}/internal/register"),
            Some(
                serde_json::json!({"id": "intruder", "url": "http://127.0.0.1:9", "applied_index": 0}),
            ),
        ),
        (
            reqwest::Method::POST,
            format!("{coordinator}/internal/caught-up"),
            Some(serde_json::json!({"id": "counter-1", "applied_index": 1})),
        ),
        (
            reqwest::Method::GET,
            format!("{coordinator}/internal/outcome/1"),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("{counter}/internal/prepare"),
            Some(prepare),
        ),
        (
            reqwest::Method::POST,
            format!("{counter}/internal/commit"),
            Some(serde_json::json!({"txn": 999, "index": 2})),
        ),
        (
            reqwest::Method::POST,
            format!("{counter}/internal/abort"),
            Some(serde_json::json!({"txn": 1})),
        ),
        (
            reqwest::Method::GET,
            format!("{counter}/internal/status"),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("{counter}/internal/catchup"),
            Some(serde_json::json!({"until": 5, "peers": []})),
        ),
        (
            reqwest::Method::GET,
            format!("{counter}/internal/export?since=0&until=1"),
            None,
        ),
    ];
    for (method, url, body) in &calls {
        for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
            let mut request = http.request(method.clone(), url);
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(token) = token {
                request = request.header(TOKEN_HEADER, token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                401,
                "{method} {url} with token {token:?}"
            );
            let text = response.text().await.unwrap();
            assert!(text.contains("cluster token"), "{text}");
        }
    }
    // The right token opens the door (status is harmless to ask).
    let response = http
        .get(format!("{counter}/internal/status"))
        .header(TOKEN_HEADER, TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // A counter with the wrong token is refused, and says why in its log.
    let port = free_port().unwrap();
    let log_path = dir.path().join("impostor.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut impostor = Command::new(bin_dir().unwrap().join("counter"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--data-dir", dir.path().join("impostor").to_str().unwrap()])
        .args(["--coordinator", &coordinator, "--id", "impostor"])
        .args(["--advertise", &format!("http://127.0.0.1:{port}")])
        .env("TALLY_CLUSTER_TOKEN", "not-the-token")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let refused = simulate::wait::until("impostor refused", Duration::from_secs(20), || async {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("registration failed") && text.contains("401") {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
    let _ = impostor.kill();
    let _ = impostor.wait();
    refused.unwrap();
    let view = api.cluster().await.unwrap();
    assert!(
        !view
            .counters
            .iter()
            .any(|c| c.id.0 == "impostor" || c.id.0 == "intruder"),
        "{view:?}"
    );
    let coordinator_log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap();
    assert!(coordinator_log.contains("wrong or missing token"));

    // No forged prepare or commit counted anything (and the counters'
    // public count reads need no token).
    cluster.check_counts(&[("t", 3)]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_change_no_count() {
    let (_dir, cluster) = start(3, &[], None).await;
    let api = cluster.api();
    let addr = host_port(cluster.coordinator_url());
    assert_eq!(
        api.add(&[Item::new("keep", "t")]).await,
        simulate::api::WriteOutcome::Ok
    );

    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let big_id = "x".repeat(64 * 1024);
    let ten_mb = {
        let item = r#"{"id":"0123456789abcdef","tenant":"t"},"#;
        let mut body = String::from("[");
        while body.len() < 10 * 1024 * 1024 {
            body.push_str(item);
        }
        body.push_str(r#"{"id":"last","tenant":"t"}]"#);
        body
    };
    let million_tiny = {
        let mut body = String::with_capacity(20_000_000);
        body.push('[');
        for i in 0..1_000_000 {
            if i > 0 {
                body.push(',');
            }
            body.push_str(r#"{"id":"a","tenant":"t"}"#);
        }
        body.push(']');
        body
    };
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (br#"[{"id":"a","tenant":"t"},{"id":"b","ten"#.to_vec(), 400),
        (br#"[{"id":"a","tenant":"t"},"#.to_vec(), 400),
        (b"[".to_vec(), 400),
        (br#"[{"id":["a"],"tenant":"t"}]"#.to_vec(), 400),
        (br#"[{"id":null,"tenant":"t"}]"#.to_vec(), 400),
        (br#"[{"id":"a","tenant":{"x":1}}]"#.to_vec(), 400),
        (br#"[1,2,3]"#.to_vec(), 400),
        (br#""just a string""#.to_vec(), 400),
        (b"null".to_vec(), 400),
        (b"{}".to_vec(), 400),
        (br#"[[{"id":"a","tenant":"t"}]]"#.to_vec(), 400),
        // Nesting far beyond the parser's recursion limit: an error, not a
        // stack overflow.
        (deep.into_bytes(), 400),
        (ten_mb.into_bytes(), 413),
        (million_tiny.into_bytes(), 413),
        (
            format!(r#"[{{"id":"{big_id}","tenant":"t"}}]"#).into_bytes(),
            400,
        ),
        (
            format!(r#"[{{"id":"a","tenant":"{big_id}"}}]"#).into_bytes(),
            400,
        ),
        (b"[{\"id\":\"\xc3\x28\",\"tenant\":\"t\"}]".to_vec(), 400),
        (b"\xff\xfe[]".to_vec(), 400),
        // A raw NUL inside a string is not JSON (control characters must
        // be escaped); one outside is garbage.
        (b"[{\"id\":\"a\x00b\",\"tenant\":\"t\"}]".to_vec(), 400),
        (b"[{\"id\":\"a\",\"tenant\":\"t\"}]\x00".to_vec(), 400),
    ];
    for (body, status) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(50)]).to_string();
        let (got, text) = api.add_raw(body).await.unwrap();
        assert_eq!(got, status, "{shown}: {text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("errors are JSON");
        assert!(
            parsed["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{text}"
        );
    }

    // Escaped NULs and path-like names are data: stored, counted, read back.
    let odd = [
        Item::new("nul\u{0}inside", "t"),
        Item::new("x", "../../../etc/passwd"),
        Item::new("y", "a/b"),
    ];
    assert_eq!(api.add(&odd).await, simulate::api::WriteOutcome::Ok);
    // Encoded slashes name the tenant; raw dot segments name no route.
    for (path, status) in [
        ("/items/..%2F..%2F..%2Fetc%2Fpasswd/count", "200"),
        ("/items/../../etc/passwd/count", "404"),
        ("/items/%2e%2e/count", "200"),
        ("/../../../../etc/passwd", "404"),
    ] {
        let answer = raw_exchange(
            &addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {answer}"
        );
    }
    // Methods no route knows, and requests HTTP itself refuses.
    for (request, status) in [
        ("PATCH /items HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]", "405"),
        ("FROB /items HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "405"),
        ("TRACE /items/t/count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "405"),
        ("GET /items/t/count HTTP/9.9\r\nHost: x\r\n\r\n", "400"),
        ("POST /items HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\nConnection: close\r\n\r\n[]", "400"),
        ("POST /items HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n[]\r\n0\r\n\r\n", "400"),
        ("GET /items/t/count HTTP/1.1\r\nHost: x\r\nX-Bad\0Header: 1\r\nConnection: close\r\n\r\n", "400"),
    ] {
        let answer = raw_exchange(&addr, request.as_bytes()).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{request:?}: {answer}");
    }
    // Headers too large or too many: 431, never a buffer grown without end.
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "y".repeat(64 * 1024)
    );
    assert!(raw_exchange(&addr, huge.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    assert!(raw_exchange(&addr, many.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));

    cluster
        .check_counts(&[("t", 2), ("../../../etc/passwd", 1), ("a/b", 1)])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_cannot_hold_the_server() {
    let (_dir, cluster) = start(
        2,
        &[
            "--header-read-timeout",
            "2s",
            "--body-read-timeout",
            "2s",
            "--max-connections",
            "2100",
        ],
        None,
    )
    .await;
    let api = cluster.api();
    let addr = host_port(cluster.coordinator_url());
    assert_eq!(
        api.add(&[Item::new("before", "t")]).await,
        simulate::api::WriteOutcome::Ok
    );

    // Slowloris: headers dripped a byte at a time never finish in time,
    // and a connection that sends nothing is closed too.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /items HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The client's pace, not a wait for the server: a byte every 100 ms.
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let drip = async {
        for byte in b"X-Slow: ".iter().cycle().take(1000) {
            pace.tick().await;
            if slow.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    };
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let (dripped, silent_closed) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(15), drip),
        closed_by_server(&mut silent, Duration::from_secs(15)),
    );
    assert!(dripped.is_ok(), "a dripping client kept its connection");
    assert!(silent_closed, "a connection that sends nothing is closed");

    // A body that stops arriving gets 408 and the connection back.
    let mut stalled = TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(
            b"POST /items HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[{\"id\":\"stalled\",",
        )
        .await
        .unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(15), stalled.read(&mut answer))
        .await
        .expect("an answer before the deadline")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // 2,000 idle connections: the server keeps answering while they are
    // open, then closes every one of them.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    assert_eq!(
        api.add(&[Item::new("during", "t")]).await,
        simulate::api::WriteOutcome::Ok
    );
    assert_eq!(api.count("t").await, Ok(2));
    let closed = join_all(
        idle.iter_mut()
            .map(|s| closed_by_server(s, Duration::from_secs(30))),
    )
    .await;
    assert!(
        closed.iter().all(|c| *c),
        "every idle connection is closed by the server"
    );
    // A new client: the server closed the old one's idle pooled connections.
    let api = &Api::new(cluster.coordinator_url());
    assert_eq!(
        api.add(&[Item::new("after", "t")]).await,
        simulate::api::WriteOutcome::Ok
    );
    cluster.check_counts(&[("t", 3)]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_limit_get_a_quick_503() {
    let (_dir, cluster) = start(
        1,
        &[
            "--max-inflight-requests",
            "1",
            "--max-connections",
            "20",
            "--body-read-timeout",
            "30s",
        ],
        None,
    )
    .await;
    let api = cluster.api();
    let addr = host_port(cluster.coordinator_url());
    // A request whose body is still coming holds the only slot.
    let body = br#"[{"id":"held","tenant":"t"}]"#;
    let (first, rest) = body.split_at(10);
    let mut holder = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /items HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    holder.write_all(head.as_bytes()).await.unwrap();
    holder.write_all(first).await.unwrap();
    let shed = simulate::wait::until("requests shed", Duration::from_secs(10), || async {
        let response = reqwest::get(format!("{}/health", cluster.coordinator_url()))
            .await
            .map_err(|e| e.to_string())?;
        if response.status() == 503 {
            Ok(response)
        } else {
            Err(response.status().to_string())
        }
    })
    .await
    .unwrap();
    assert_eq!(shed.headers()["retry-after"], "1");
    assert!(shed.text().await.unwrap().contains("in flight"));

    // The held request finishes normally and frees its slot.
    holder.write_all(rest).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = holder.read(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
    simulate::wait::until("slot free", Duration::from_secs(10), || async {
        match api.count("t").await {
            Ok(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    let samples = scrape(cluster.coordinator_url()).await.unwrap();
    assert!(value(&samples, "tally_http_requests_shed_total", &[]) >= 1.0);

    // Beyond --max-connections a connection is closed at once; the ones
    // within it stay open (until their header deadline, 30 s by default).
    let mut opened = Vec::new();
    for _ in 0..40 {
        opened.push(TcpStream::connect(&addr).await.unwrap());
    }
    let closed = join_all(
        opened
            .iter_mut()
            .map(|s| closed_by_server(s, Duration::from_secs(2))),
    )
    .await;
    let refused = closed.iter().filter(|c| **c).count();
    assert!(
        (20..40).contains(&refused),
        "{refused} of 40 refused at a limit of 20"
    );
    drop(opened);
    // Once those close, the server answers again and has counted them.
    simulate::wait::until("refusals counted", Duration::from_secs(10), || async {
        let samples = scrape(cluster.coordinator_url()).await?;
        match try_value(&samples, "tally_http_connections_refused_total", &[])? {
            refused if refused >= 20.0 => Ok(()),
            refused => Err(format!("{refused} refused")),
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counter_answers_a_wrong_method_with_json_405_and_allow() {
    let (_dir, cluster) = start(1, &[], None).await;
    let counter = &cluster.counters()[0].url;
    let http = reqwest::Client::new();
    for (method, path, allow) in [
        (reqwest::Method::POST, "/health", "GET"),
        (reqwest::Method::DELETE, "/items/t/count", "GET"),
        (reqwest::Method::PUT, "/metrics", "GET"),
    ] {
        let response = http
            .request(method.clone(), format!("{counter}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        let allowed = response.headers()["allow"].to_str().unwrap().to_string();
        assert!(
            allowed.split(',').any(|m| m.trim() == allow) && !allowed.contains(method.as_str()),
            "{method} {path}: Allow: {allowed}"
        );
        let body: serde_json::Value = response.json().await.expect("a JSON body");
        assert!(body["message"].is_string(), "{method} {path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_oversized_body_gets_413_before_it_is_sent() {
    let (_dir, cluster) = start(1, &["--max-body-bytes", "1000"], None).await;
    let addr = host_port(cluster.coordinator_url());
    for length in [1001u64, 10 << 30] {
        // Headers only: a server that waited for the body would never answer.
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
                other => panic!(
                    "no answer within 3 s of the headers ({other:?}): {:?}",
                    String::from_utf8_lossy(&answer)
                ),
            }
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 413"), "{length}: {answer}");
        assert!(started.elapsed() < Duration::from_secs(2), "{length}: slow");
    }
    // A body within the limit is still counted.
    let items = vec![Item {
        id: "small".into(),
        tenant: "t".into(),
    }];
    assert_eq!(
        cluster.api().add(&items).await,
        simulate::api::WriteOutcome::Ok
    );
    cluster.check_counts(&[("t", 1)]).await.unwrap();
}
