//! What the fuzz targets share: the round-trip check every JSON message
//! decoder gets on top of "does not panic".

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// Decodes `data` as a `T` the way axum's `Json` extractor and reqwest's
/// `.json()` do (serde_json over the whole body). Whatever decodes must
/// encode, decode again to the same value, and encode to the same bytes
/// again: a message the receiver accepted means one thing, whoever forwards
/// or logs it.
pub fn json_round_trip<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let value: T = serde_json::from_slice(data).ok()?;
    let encoded = serde_json::to_vec(&value).expect("a decoded message encodes");
    let again: T = serde_json::from_slice(&encoded).expect("an encoded message decodes");
    assert_eq!(value, again, "decode, encode, decode changed the message");
    let re_encoded = serde_json::to_vec(&again).expect("a decoded message encodes");
    assert_eq!(encoded, re_encoded, "encoding is not stable");
    Some(value)
}
