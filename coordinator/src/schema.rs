//! Types that exist only to describe the public API in the OpenAPI
//! document: the handlers name them in their `#[utoipa::path]` attributes,
//! and `openapi.rs` gathers them.

use serde_json::json;
use tally_common::api::Count;
use tally_common::items::ItemLimits;
use tally_common::Item;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::{Ref, RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

/// The body of `POST /items`. Only the document uses this type: the handler
/// reads the bytes itself (`tally_common::items::parse_items`) so that any
/// Content-Type is accepted and each refusal says which item is wrong.
/// Written out by hand because the derive offers no `maxItems` on a
/// newtype of `Vec<Item>`; the limit is `ItemLimits::default()`'s, and
/// `document` puts in the one this coordinator runs with.
pub struct ItemList;

impl PartialSchema for ItemList {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name(Item::name()))
            .max_items(Some(ItemLimits::default().max_items))
            .description(Some(
                "Items to count; all are counted or none. Repeats count once.",
            ))
            .into()
    }
}

impl ToSchema for ItemList {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Item::name().into(), Item::schema()));
        <Item as ToSchema>::schemas(schemas);
    }
}

/// One event of `GET /items/{tenant}/count/stream`. Before OpenAPI 3.2's
/// `itemSchema`, the schema of a `text/event-stream` response describes each
/// event as an object of its fields, with the payload a string; `document`
/// adds the `contentSchema` that says the payload is a `Count`, which utoipa
/// 5 cannot express.
pub struct CountEvent;

impl PartialSchema for CountEvent {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some("One Server-Sent Event: the tenant's count, as JSON."))
            .property(
                "event",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["count"])),
            )
            .property(
                "data",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/json")
                    .examples([json!(r#"{"count":1}"#)]),
            )
            .required("event")
            .required("data")
            .into()
    }
}

impl ToSchema for CountEvent {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Count::name().into(), Count::schema()));
    }
}
