//! Size limits both sides of an internal call must agree on, written once.
//!
//! The coordinator puts at most [`MAX_TXN_ITEMS`] items in a transaction
//! (its `--max-txn-items` default; one request larger than that gets a
//! transaction of its own), and a counter must accept every prepare the
//! coordinator can send: its body limit, [`MAX_PREPARE_BODY_BYTES`], is
//! derived from the same number so the two cannot drift apart.

/// Items one transaction carries at most, unless a single request is larger
/// (it then gets a transaction of its own): the default of the coordinator's
/// `--max-txn-items`.
pub const MAX_TXN_ITEMS: usize = 20_000;

/// Room a prepare's body has per item of [`MAX_TXN_ITEMS`]. An item of two
/// 256-byte fields takes about 530 bytes in JSON and less in postcard, so a
/// full transaction stays near 11 MB; the rest leaves room for one request
/// larger than a transaction (up to the coordinator's `--max-body-bytes`,
/// 4 MiB by default) and for escaped characters. axum's default of 2 MB
/// refused every prepare over about 40,000 items.
const PREPARE_BODY_BYTES_PER_ITEM: usize = 3_356;

/// Largest body a counter accepts on an internal call (about 64 MiB): a
/// prepare holds a whole transaction.
pub const MAX_PREPARE_BODY_BYTES: usize = MAX_TXN_ITEMS * PREPARE_BODY_BYTES_PER_ITEM;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_transaction_of_the_longest_items_fits_a_prepare_with_room_to_spare() {
        let longest = crate::Item::new("i".repeat(256), "t".repeat(256));
        let one = serde_json::to_vec(&longest).unwrap().len() + 1;
        assert!(MAX_TXN_ITEMS * one * 5 < MAX_PREPARE_BODY_BYTES);
        assert_eq!(MAX_PREPARE_BODY_BYTES >> 20, 64);
    }
}
