//! The web dashboard in a real (headless) chromium against a real local
//! cluster: the coordinator shows as the leader, the counters appear live, items added through the form show up
//! in the live count without a reload, presence joined from the page
//! follows other clients coming and going, the bounded load button reports its
//! result, a killed counter turns dead on the page, and a cluster with no
//! counter left says it is stalled and why. Leaves a screenshot
//! in `target/dashboard.png` for a person to look at.

mod browser;

use browser::Browser;
use serde_json::Value;
use simulate::cluster::{ClusterOptions, LocalCluster};
use simulate::presence::{socket_url, PresenceSocket};
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// `target/dashboard.png` of the workspace (or of `CARGO_TARGET_DIR`).
fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("dashboard.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_counts_and_a_dead_counter_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ClusterOptions::new(dir.path(), 3);
    // With the harness's 200 ms health checks a dead counter would leave the
    // view after 1 s (5 failed checks), quicker than the page's 1 s poll can
    // be relied on to show it; keep it in the view as dead.
    options.coordinator_args = vec!["--remove-after".into(), "100000".into()];
    let mut cluster = LocalCluster::start(options).await.expect("cluster starts");
    let browser = Browser::launch(1280, 800).await.expect("chromium starts");
    let page = browser.page();
    page.navigate(&format!("{}/", cluster.coordinator_url()))
        .await
        .unwrap();

    page.wait_for(
        "three live, in-sync counters on the page",
        WAIT,
        "document.querySelectorAll('#counters tr[data-state=live][data-in-sync=true]').length",
        |v| v == 3,
    )
    .await
    .unwrap();
    // The coordinator runs alone: one row in the coordinators' card, the
    // leader, highlighted, at its own URL, its log at the decided index
    // (both read from the same /cluster answer).
    let card = page
        .wait_for(
            "the coordinator on the page as the leader",
            WAIT,
            "({ decided: document.getElementById('decided').textContent,
                rows: Array.from(document.querySelectorAll('#coordinators tbody tr'), (tr) => ({
                  url: tr.dataset.coordinator ?? null, role: tr.dataset.role ?? null,
                  highlighted: tr.classList.contains('leader'),
                  cells: Array.from(tr.cells, (td) => td.textContent) })) })",
            |v| v["rows"][0]["role"] == "leader",
        )
        .await
        .unwrap();
    let me = cluster.coordinator_url();
    let decided = card["decided"].as_str().unwrap();
    assert_eq!(
        card["rows"],
        serde_json::json!([{
            "url": me, "role": "leader", "highlighted": true,
            "cells": [me, "leader", decided, "0"],
        }]),
    );
    // Set in the page; a reload would lose it.
    page.eval("window.__sameDocument = true").await.unwrap();

    // Follow tenant "browser" through the count stream.
    page.eval(
        "document.getElementById('watch-tenant').value = 'browser';
         document.getElementById('watch-button').click()",
    )
    .await
    .unwrap();
    page.wait_for(
        "the initial live count",
        WAIT,
        "document.getElementById('live-count').textContent",
        |v| v == "0",
    )
    .await
    .unwrap();

    // Join presence from the page: it counts itself, then sees two more
    // clients come and one go, live.
    page.eval(
        "document.getElementById('presence-tenant').value = 'browser';
         document.getElementById('presence-key').value = 'lobby';
         document.getElementById('presence-button').click()",
    )
    .await
    .unwrap();
    let presence = "document.getElementById('presence-count').textContent";
    page.wait_for("the page counted in presence", WAIT, presence, |v| v == "1")
        .await
        .unwrap();
    let url = socket_url(cluster.coordinator_url(), "browser", "lobby");
    let first = PresenceSocket::connect(&url).await.unwrap().unwrap();
    let second = PresenceSocket::connect(&url).await.unwrap().unwrap();
    page.wait_for("two more present", WAIT, presence, |v| v == "3")
        .await
        .unwrap();
    first.close().await;
    page.wait_for("one left", WAIT, presence, |v| v == "2")
        .await
        .unwrap();
    drop(second);

    // Add items through the form.
    page.eval(
        "document.getElementById('add-tenant').value = 'browser';
         document.getElementById('add-ids').value = 'a, b\\nc';
         document.getElementById('add-button').click()",
    )
    .await
    .unwrap();
    page.wait_for(
        "the form's result",
        WAIT,
        "document.getElementById('add-result').textContent",
        |v| v == "added 3 item(s)",
    )
    .await
    .unwrap();
    page.wait_for(
        "the live count to reach 3 without a reload",
        WAIT,
        "document.getElementById('live-count').textContent",
        |v| v == "3",
    )
    .await
    .unwrap();
    assert_eq!(cluster.api().count("browser").await, Ok(3));

    // A write by another client shows up too.
    let (status, _) = cluster
        .api()
        .add_raw(br#"[{"id":"d","tenant":"browser"}]"#.to_vec())
        .await
        .unwrap();
    assert_eq!(status, 200);
    page.wait_for(
        "the live count to reach 4",
        WAIT,
        "document.getElementById('live-count').textContent",
        |v| v == "4",
    )
    .await
    .unwrap();

    // The bounded load: 200 requests, all acknowledged, all counted.
    page.eval("document.getElementById('load-button').click()")
        .await
        .unwrap();
    let result = page
        .wait_for(
            "the load result",
            Duration::from_secs(60),
            "(() => { const r = document.getElementById('load-result');
                      return r.dataset.ok === undefined ? null
                        : {ok: +r.dataset.ok, failed: +r.dataset.failed, items: +r.dataset.items,
                           text: r.textContent}; })()",
            |v| !v.is_null(),
        )
        .await
        .unwrap();
    assert_eq!(
        (&result["ok"], &result["failed"]),
        (&Value::from(200), &Value::from(0)),
        "{result}"
    );
    let items = result["items"].as_u64().unwrap();
    assert!((200..=2000).contains(&items), "{result}");
    assert_eq!(cluster.api().count("load").await, Ok(items));
    page.wait_for(
        "the load's peak on the writes/s chart",
        WAIT,
        "+document.getElementById('chart').dataset.peak",
        |v| v.as_f64().is_some_and(|peak| peak > 0.0),
    )
    .await
    .unwrap();

    // A killed counter turns dead on the page.
    cluster.kill_counter(1).unwrap();
    page.wait_for(
        "counter-2 dead on the page",
        WAIT,
        "document.querySelector('#counters tr[data-counter=\"counter-2\"]')?.dataset.state",
        |v| v == "dead",
    )
    .await
    .unwrap();
    assert_eq!(
        page.eval("window.__sameDocument === true").await.unwrap(),
        Value::Bool(true),
        "the page reloaded"
    );

    let path = screenshot_path();
    let png = page.screenshot(&path).await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // Width and height are big-endian u32s at bytes 16..24 of the IHDR chunk.
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 800), "screenshot size");
    eprintln!("screenshot: {}", path.display());

    // With every counter gone the page says the cluster is stalled, and why.
    cluster.kill_counter(0).unwrap();
    cluster.kill_counter(2).unwrap();
    let banner = page
        .wait_for(
            "the stall explained on the page",
            WAIT,
            "(() => { const a = document.getElementById('availability');
                      return a.hidden ? null : {status: a.dataset.status, text: a.textContent}; })()",
            |v| v["status"] == "stalled",
        )
        .await
        .unwrap();
    let text = banner["text"].as_str().unwrap();
    assert!(text.contains("no counter can prove"), "{text}");
    assert!(text.contains("counter-1 (dead, holds up to"), "{text}");
}
