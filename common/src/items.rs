//! The item a client counts, and the parser that turns a `POST /items` body
//! into validated items. The parser is the first thing untrusted bytes reach,
//! so it is strict about shape and generous about everything else (unknown
//! fields are ignored, any Content-Type is accepted by the caller).

use crate::Error;
use serde::{Deserialize, Serialize};

/// One thing to count: `id` is counted at most once per `tenant`.
///
/// The schema's lengths are `ItemLimits::default()`'s, in characters, while
/// the parser counts bytes: a field of at most 256 ASCII characters always
/// passes, one of more than 256 characters never does (the coordinator's
/// tests tie these numbers to the defaults).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Item {
    /// What is counted, at most once per tenant: 1 to 256 bytes of UTF-8.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, example = "item1")
    )]
    pub id: String,
    /// Whose count it adds to: 1 to 256 bytes of UTF-8.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, example = "test")
    )]
    pub tenant: String,
}

impl Item {
    pub fn new(id: impl Into<String>, tenant: impl Into<String>) -> Self {
        Item {
            id: id.into(),
            tenant: tenant.into(),
        }
    }
}

/// How much one request may carry. Defaults match the API's documented limits (README.md).
#[derive(Debug, Clone, Copy)]
pub struct ItemLimits {
    pub max_items: usize,
    pub max_field_bytes: usize,
}

impl Default for ItemLimits {
    fn default() -> Self {
        ItemLimits {
            max_items: 100_000,
            max_field_bytes: 256,
        }
    }
}

/// Both fields optional so that a missing one gets its own clear message
/// instead of serde's generic "missing field".
#[derive(Deserialize)]
struct RawItem {
    id: Option<String>,
    tenant: Option<String>,
}

/// Parses and validates a whole body; either every item is valid or the
/// request is refused, so a bad item never lets its neighbours through.
pub fn parse_items(body: &[u8], limits: ItemLimits) -> Result<Vec<Item>, Error> {
    let raw: Vec<RawItem> = serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        Error::Malformed(if std::str::from_utf8(body).is_err() {
            format!("body is not valid UTF-8 ({msg})")
        } else {
            msg
        })
    })?;
    if raw.len() > limits.max_items {
        return Err(Error::TooManyItems {
            count: raw.len(),
            limit: limits.max_items,
        });
    }
    raw.into_iter()
        .enumerate()
        .map(|(index, r)| {
            let id = check_field(index, "id", r.id, limits)?;
            let tenant = check_field(index, "tenant", r.tenant, limits)?;
            Ok(Item { id, tenant })
        })
        .collect()
}

/// Checks one tenant name taken from a URL path, with the same rules as a
/// body field.
pub fn check_tenant(tenant: &str, limits: ItemLimits) -> Result<(), Error> {
    match field_problem(tenant, limits) {
        Some(problem) => Err(Error::InvalidTenant(problem)),
        None => Ok(()),
    }
}

fn check_field(
    index: usize,
    name: &str,
    value: Option<String>,
    limits: ItemLimits,
) -> Result<String, Error> {
    let problem = match value {
        None => "is missing".to_string(),
        Some(v) => match field_problem(&v, limits) {
            None => return Ok(v),
            Some(problem) => problem,
        },
    };
    Err(Error::InvalidItem {
        index,
        problem: format!("{name} {problem}"),
    })
}

/// What is wrong with an id or a tenant, if anything.
fn field_problem(value: &str, limits: ItemLimits) -> Option<String> {
    if value.is_empty() {
        Some("is empty".into())
    } else if value.len() > limits.max_field_bytes {
        Some(format!(
            "is {} bytes long, the limit is {}",
            value.len(),
            limits.max_field_bytes
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Vec<Item>, Error> {
        parse_items(body.as_bytes(), ItemLimits::default())
    }

    #[test]
    fn accepts_curl_style_client_bodies() {
        let items = parse(r#"[{"id":"item1","tenant":"test"}]"#).unwrap();
        assert_eq!(items, vec![Item::new("item1", "test")]);
        assert_eq!(parse("[]").unwrap(), vec![]);
        let spaced = parse(r#"[{"id":"a b","tenant":"ünï cödé","extra":1}]"#).unwrap();
        assert_eq!(spaced, vec![Item::new("a b", "ünï cödé")]);
    }

    #[test]
    fn refuses_bad_bodies_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "EOF"),
            ("{}", "expected a sequence"),
            ("[1]", "expected struct"),
            (r#"[{"id":"a"}]"#, "item 0: tenant is missing"),
            (r#"[{"tenant":"t"}]"#, "item 0: id is missing"),
            (r#"[{"id":"","tenant":"t"}]"#, "item 0: id is empty"),
            (r#"[{"id":null,"tenant":"t"}]"#, "item 0: id is missing"),
            (r#"[{"id":5,"tenant":"t"}]"#, "invalid type"),
            (
                r#"[{"id":"a","tenant":"t"},{"id":"b","tenant":""}]"#,
                "item 1: tenant is empty",
            ),
            (r#"[{"id":"a","tenant":"t"}"#, "EOF"),
        ];
        for (body, want) in cases {
            let err = parse(body).unwrap_err().to_string();
            assert!(err.contains(want), "{body:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn enforces_limits() {
        let long = "x".repeat(257);
        let err = parse(&format!(r#"[{{"id":"{long}","tenant":"t"}}]"#)).unwrap_err();
        assert!(err.to_string().contains("257 bytes long"));
        let exact = "x".repeat(256);
        assert!(parse(&format!(r#"[{{"id":"{exact}","tenant":"t"}}]"#)).is_ok());

        let limits = ItemLimits {
            max_items: 2,
            ..ItemLimits::default()
        };
        let body = br#"[{"id":"a","tenant":"t"},{"id":"b","tenant":"t"},{"id":"c","tenant":"t"}]"#;
        assert_eq!(
            parse_items(body, limits),
            Err(Error::TooManyItems { count: 3, limit: 2 })
        );
    }

    #[test]
    fn path_tenants_follow_the_field_rules() {
        let limits = ItemLimits::default();
        assert_eq!(check_tenant("test", limits), Ok(()));
        assert_eq!(check_tenant(&"x".repeat(256), limits), Ok(()));
        let empty = check_tenant("", limits).unwrap_err().to_string();
        assert_eq!(empty, "tenant in the path is empty");
        let long = check_tenant(&"x".repeat(257), limits)
            .unwrap_err()
            .to_string();
        assert_eq!(
            long,
            "tenant in the path is 257 bytes long, the limit is 256"
        );
    }

    #[test]
    fn refuses_invalid_utf8() {
        let body = b"[{\"id\":\"\xff\xfe\",\"tenant\":\"t\"}]";
        let err = parse_items(body, ItemLimits::default()).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }
}
