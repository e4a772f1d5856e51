//! How the store's values become fjall keys and values, and back.
//!
//! fjall orders keys bytewise. u64 keys and values are big-endian so that
//! byte order is numeric order: export scans `commits` by index range and
//! pruning `applied_above` drops a prefix. An item key is the tenant's
//! length (u16, big-endian), the tenant, then the id; without the length,
//! ("ab", "c") and ("a", "bc") would share a key.

use crate::error::Error;
use fjall::UserKey;
use tally_common::Item;

/// The gap-free applied index, in `meta`.
pub const APPLIED_KEY: &str = "applied";
/// The data directory's incarnation, in `meta`.
pub const INCARNATION_KEY: &str = "incarnation";

/// A commit index, transaction id or count as a key or value.
pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// The u64 of [`u64_key`]; anything but eight bytes is a corrupt `what`.
pub fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, Error> {
    let bytes: [u8; 8] = bytes.try_into().map_err(|_| Error::CorruptEncoding(what))?;
    Ok(u64::from_be_bytes(bytes))
}

/// fjall panics on a key longer than u16::MAX bytes. The coordinator caps
/// each field at 256 bytes, so this only guards against a peer's import or a
/// future limit change, and fails the batch rather than the process.
pub fn check_storable(item: &Item) -> Result<(), Error> {
    if 2 + item.tenant.len() + item.id.len() > usize::from(u16::MAX) {
        return Err(Error::Unstorable {
            tenant: item.tenant.len(),
            id: item.id.len(),
        });
    }
    Ok(())
}

/// The item's key, built in `scratch` so that only the key itself is
/// allocated.
pub fn item_key(item: &Item, scratch: &mut Vec<u8>) -> Result<UserKey, Error> {
    check_storable(item)?;
    // Cannot truncate: the whole key fits in u16::MAX bytes.
    let tenant_len = item.tenant.len() as u16;
    scratch.clear();
    scratch.extend_from_slice(&tenant_len.to_be_bytes());
    scratch.extend_from_slice(item.tenant.as_bytes());
    scratch.extend_from_slice(item.id.as_bytes());
    Ok(UserKey::from(scratch.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{item, open, NOW};
    use super::*;
    use crate::store::{Store, WriteOp};
    use tally_common::participant::Participant;
    use tally_common::{CommitIndex, TxnId};

    #[test]
    fn item_keys_keep_tenant_and_id_apart_and_indexes_sort_numerically() {
        let mut scratch = Vec::new();
        let a_bc = item_key(&item("bc", "a"), &mut scratch).unwrap();
        let ab_c = item_key(&item("c", "ab"), &mut scratch).unwrap();
        assert_ne!(a_bc, ab_c);
        assert_eq!(&*a_bc, b"\x00\x01abc");
        assert!(u64_key(1) < u64_key(256));
        assert_eq!(decode_u64(&u64_key(256), "index").unwrap(), 256);
        assert!(decode_u64(b"short", "index").is_err());
    }

    #[test]
    fn an_item_too_long_for_a_key_fails_the_write_not_the_process() {
        let long = "x".repeat(usize::from(u16::MAX));
        assert!(matches!(
            item_key(&item(&long, "t"), &mut Vec::new()),
            Err(Error::Unstorable { .. })
        ));
        let (_dir, store) = open();
        let prepare = WriteOp::Prepare {
            txn: TxnId(1),
            items: vec![item(&long, "t")],
        };
        let mut participant = Participant::default();
        assert!(store.write(&mut [prepare], &mut participant, NOW).is_err());
        assert!(
            !participant.is_prepared(TxnId(1)),
            "no vote it cannot honour"
        );
    }

    #[test]
    fn keys_sort_numerically_and_items_never_collide() {
        let (_dir, store) = open();
        let mut applied = Participant::default();
        // Tenant "a" with id "bc" and tenant "ab" with id "c" concatenate to
        // the same bytes; 256 would sort before 1 if keys were little-endian.
        for (txn, index, tenant, id) in [(1, 256, "a", "bc"), (2, 1, "ab", "c")] {
            store
                .write(
                    &mut [
                        WriteOp::Prepare {
                            txn: TxnId(txn),
                            items: vec![item(id, tenant)],
                        },
                        WriteOp::Commit {
                            txn: TxnId(txn),
                            index: CommitIndex(index),
                        },
                    ],
                    &mut applied,
                    NOW,
                )
                .unwrap();
        }
        let mut indexes = Vec::new();
        store
            .export(CommitIndex(0), &mut |e| {
                indexes.push(e.index);
                true
            })
            .unwrap();
        assert_eq!(indexes, vec![CommitIndex(1), CommitIndex(256)]);
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.counts["a"], 1);
        assert_eq!(recovered.counts["ab"], 1);
        let mut above: Vec<_> = recovered.applied.above().collect();
        above.sort();
        assert_eq!(above, vec![CommitIndex(256)]);
        assert_eq!(recovered.applied.contiguous(), CommitIndex(1));
    }
}
