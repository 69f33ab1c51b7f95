//! The one binary encoding the store uses, on disk and between peers: bincode 2 (standard
//! configuration) over serde. Our types avoid `#[serde(flatten)]` and untagged enums, which
//! bincode cannot decode.

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Encodes `v`.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
        .map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

/// Decodes a `what` (named in the error) from `b`.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(b: &[u8], what: &str) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| StoreError::Corrupt(format!("undecodable {what}: {e}")))
}
