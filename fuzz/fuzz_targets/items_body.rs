//! The public body parser, `POST /items` (`tally_common::items::parse_items`
//! with the coordinator's default limits), and the tenant check of the
//! count paths (`check_tenant`). The first bytes a client sends reach
//! these. Checks: every accepted item respects the limits; "too many items"
//! is said only of a body over the limit; what was accepted, encoded again,
//! parses to the same items; tighter limits accept a subset of what looser
//! ones do; the tenant check accepts exactly 1 to 256 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_common::items::{check_tenant, parse_items, ItemLimits};
use tally_common::{Error, Item};

fn parse_checked(data: &[u8], limits: ItemLimits) -> Option<Vec<Item>> {
    match parse_items(data, limits) {
        Ok(items) => {
            assert!(items.len() <= limits.max_items);
            for item in &items {
                for field in [&item.id, &item.tenant] {
                    assert!(!field.is_empty(), "{item:?}");
                    assert!(field.len() <= limits.max_field_bytes, "{item:?}");
                }
                check_tenant(&item.tenant, limits)
                    .expect("an accepted tenant passes the path check");
            }
            let body = serde_json::to_vec(&items).expect("items encode");
            assert_eq!(
                parse_items(&body, limits).as_ref(),
                Ok(&items),
                "round trip"
            );
            Some(items)
        }
        Err(Error::TooManyItems { count, limit }) => {
            assert!(
                count > limit,
                "{count} items refused with a limit of {limit}"
            );
            None
        }
        Err(_) => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let defaults = ItemLimits::default();
    let accepted = parse_checked(data, defaults);
    // Small limits reach the limit paths with short inputs.
    let small = ItemLimits {
        max_items: 3,
        max_field_bytes: 4,
    };
    if let Some(items) = parse_checked(data, small) {
        assert_eq!(
            accepted.as_ref(),
            Some(&items),
            "tighter limits accepted more"
        );
    }
    if let Ok(tenant) = std::str::from_utf8(data) {
        let ok = !tenant.is_empty() && tenant.len() <= defaults.max_field_bytes;
        assert_eq!(check_tenant(tenant, defaults).is_ok(), ok, "{tenant:?}");
    }
});
