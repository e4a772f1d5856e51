//! The OpenAPI document of the public API, served at `GET /openapi.json`.
//!
//! Each operation comes from the `#[utoipa::path]` attribute on its handler
//! in `http.rs`, each body from the `ToSchema` derive on its type in
//! `tally_common` (the same types the handlers serialise). Written here are
//! only the list of operations and two schemas the derive cannot produce.
//! The internal endpoints are left out on purpose: only counters call them.
//! `make schemathesis` checks the running coordinator against this document
//! (docs/api.md).

use crate::http;
use crate::schema::{CountEvent, ItemList};
use serde_json::{json, Value};
use tally_common::api::{
    ClusterView, CoordinatorRole, CoordinatorStatus, Count, CounterState, CounterView, Health,
    Message,
};
use tally_common::items::ItemLimits;
use tally_common::{CommitIndex, CounterId, Item};
use utoipa::{OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tally",
        description = "Counts distinct items per tenant. Errors are `{\"message\": \"...\"}`; \
            a 4xx or 503 answer means nothing of the request was counted, and retrying any \
            write is safe because an item added twice counts once. Unknown paths answer 404, \
            a known path with another method 405 with an `Allow` header."
    ),
    paths(
        http::add_items,
        http::count,
        http::count_stream,
        http::cluster,
        http::health,
        http::metrics,
        http::stats,
        http::openapi_json,
        crate::presence::http::count,
    ),
    components(schemas(
        Item,
        ItemList,
        Message,
        Count,
        CountEvent,
        ClusterView,
        CounterView,
        CounterState,
        CoordinatorStatus,
        CoordinatorRole,
        CounterId,
        CommitIndex,
        Health,
        crate::metrics::StatsView,
    )),
    tags(
        (name = "items", description = "Adding items and reading counts."),
        (name = "operations", description = "What an operator and the dashboard look at."),
        (name = "presence", description = "Clients connected to a key right now. Joining is a \
            WebSocket at `GET /presence/{tenant}/{key}`, which OpenAPI cannot describe \
            (docs/api.md)."),
    )
)]
pub struct ApiDoc;

/// The document as served: what the derive builds, plus the item limit
/// this coordinator enforces and what utoipa cannot say.
pub fn document(limits: ItemLimits) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    let schemas = &mut doc["components"]["schemas"];
    schemas["ItemList"]["maxItems"] = limits.max_items.into();
    schemas["CountEvent"]["properties"]["data"]["contentSchema"] =
        json!({ "$ref": format!("#/components/schemas/{}", Count::name()) });
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_limits_are_the_parsers_defaults() {
        let defaults = ItemLimits::default();
        let doc = document(defaults);
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["ItemList"]["maxItems"], defaults.max_items);
        for field in ["id", "tenant"] {
            let property = &schemas["Item"]["properties"][field];
            assert_eq!(property["maxLength"], defaults.max_field_bytes, "{field}");
            assert_eq!(property["minLength"], 1, "{field}");
        }
        for path in ["/items/{tenant}/count", "/items/{tenant}/count/stream"] {
            let tenant = &doc["paths"][path]["get"]["parameters"][0];
            assert_eq!(tenant["name"], "tenant");
            assert_eq!(tenant["schema"]["maxLength"], defaults.max_field_bytes);
            assert_eq!(tenant["schema"]["minLength"], 1);
        }
        let presence = &doc["paths"]["/presence/{tenant}/{key}/count"]["get"]["parameters"];
        for (i, name) in ["tenant", "key"].into_iter().enumerate() {
            assert_eq!(presence[i]["name"], name);
            assert_eq!(presence[i]["schema"]["maxLength"], defaults.max_field_bytes);
            assert_eq!(presence[i]["schema"]["minLength"], 1);
        }
    }

    #[test]
    fn document_carries_the_configured_item_limit() {
        let limits = ItemLimits {
            max_items: 7,
            ..ItemLimits::default()
        };
        assert_eq!(
            document(limits)["components"]["schemas"]["ItemList"]["maxItems"],
            7
        );
    }

    /// The patches in `document` land on schemas that exist: a renamed type
    /// would otherwise leave them dangling without a word.
    #[test]
    fn patched_schemas_exist() {
        let doc = document(ItemLimits::default());
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["ItemList"]["type"], "array");
        assert_eq!(
            schemas["CountEvent"]["properties"]["data"]["type"],
            "string"
        );
        let stream = &doc["paths"]["/items/{tenant}/count/stream"]["get"]["responses"]["200"];
        assert_eq!(
            stream["content"]["text/event-stream"]["schema"]["$ref"],
            "#/components/schemas/CountEvent"
        );
        let target = schemas["CountEvent"]["properties"]["data"]["contentSchema"]["$ref"]
            .as_str()
            .unwrap();
        let name = target.strip_prefix("#/components/schemas/").unwrap();
        assert!(schemas[name].is_object(), "{target}");
    }

    /// `GET /cluster` names the leader and every coordinator's role, and
    /// `GET /health` this one's role, with the four roles spelled out.
    #[test]
    fn cluster_and_health_document_the_coordinators_roles() {
        let doc = document(ItemLimits::default());
        let schemas = &doc["components"]["schemas"];
        let cluster = &schemas["ClusterView"]["properties"];
        assert!(cluster["leader"].is_object(), "{cluster}");
        assert_eq!(
            cluster["coordinators"]["items"]["$ref"],
            "#/components/schemas/CoordinatorStatus"
        );
        let status = &schemas["CoordinatorStatus"];
        for field in ["url", "role", "log_index", "lag"] {
            assert!(
                status["required"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f == field),
                "{field}: {status}"
            );
        }
        assert_eq!(
            schemas["CoordinatorRole"]["enum"],
            json!(["leader", "follower", "candidate", "unreachable"])
        );
        let health = &schemas["Health"];
        assert_eq!(
            health["properties"]["role"]["$ref"],
            "#/components/schemas/CoordinatorRole"
        );
        assert!(
            health["required"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "role"),
            "{health}"
        );
    }

    #[test]
    fn only_public_paths_are_documented() {
        let doc = document(ItemLimits::default());
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(
            paths.iter().all(|p| !p.starts_with("/internal")),
            "{paths:?}"
        );
        assert!(paths.contains(&"/items"), "{paths:?}");
    }

    /// Every error answer comes from `Error`, whose body is `Message`, and a
    /// 503 always carries Retry-After (`error.rs`).
    #[test]
    fn every_error_is_a_message_and_503_says_when_to_retry() {
        let doc = document(ItemLimits::default());
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('2') {
                        continue;
                    }
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/Message",
                        "{method} {path} {status}"
                    );
                    if status == "503" {
                        assert!(
                            response["headers"]["retry-after"].is_object(),
                            "{method} {path}"
                        );
                    }
                }
            }
        }
    }
}
