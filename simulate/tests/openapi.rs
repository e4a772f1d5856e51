//! The OpenAPI document a running coordinator serves: the contract that
//! `make schemathesis` checks the API against. Here: that it is there, is
//! OpenAPI 3, covers the public API and nothing internal, and carries the
//! limits the coordinator was started with.

use simulate::cluster::{ClusterOptions, LocalCluster};

const PUBLIC: &[(&str, &str)] = &[
    ("/items", "post"),
    ("/items/{tenant}/count", "get"),
    ("/items/{tenant}/count/stream", "get"),
    ("/presence/{tenant}/{key}/count", "get"),
    ("/cluster", "get"),
    ("/health", "get"),
    ("/metrics", "get"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_serves_its_public_api_as_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ClusterOptions::new(dir.path(), 1);
    options.coordinator_args = vec!["--max-items".into(), "500".into()];
    let cluster = LocalCluster::start(options).await.expect("cluster starts");

    let response = reqwest::get(format!("{}/openapi.json", cluster.coordinator_url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: serde_json::Value = response.json().await.expect("the document is JSON");

    let version = doc["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3."), "{version}");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in PUBLIC {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} is not documented; documented: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    let internal: Vec<_> = paths.keys().filter(|p| p.contains("internal")).collect();
    assert!(
        internal.is_empty(),
        "internal paths documented: {internal:?}"
    );

    // The limit is the one this coordinator enforces, not the default.
    assert_eq!(doc["components"]["schemas"]["ItemList"]["maxItems"], 500);
    let body = doc["paths"]["/items"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"]["$ref"]
        .as_str()
        .expect("POST /items documents a JSON body");
    assert_eq!(body, "#/components/schemas/ItemList");
}
