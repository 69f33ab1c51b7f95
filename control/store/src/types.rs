//! The store's own request, response and event types (etcd v3 semantics). The gRPC edge converts
//! the protobuf messages to and from these; the core never sees protobuf.

use serde::{Deserialize, Serialize};

use crate::keys::KeyRange;

/// One version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Main revision of the write that created the key (since its last deletion).
    pub create_revision: u64,
    /// Main revision of the write that produced this version.
    pub mod_revision: u64,
    /// Number of writes since creation (1 on create); 0 for a deleted key.
    pub version: u64,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// A change to one key, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// For a put, the new version; for a delete, the key with `mod_revision` = the deletion's
    /// revision and every other field zero.
    pub kv: KeyValue,
    /// The version before this change, when the caller asked for it.
    pub prev_kv: Option<KeyValue>,
}

/// A read of a key range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// Which keys.
    pub range: KeyRange,
    /// At most this many keys (0: no limit).
    pub limit: u64,
    /// Read as of this revision (0: the current one).
    pub revision: u64,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
}

impl RangeRequest {
    /// A read of `range` at the current revision, without limits.
    pub fn new(range: KeyRange) -> RangeRequest {
        RangeRequest {
            range,
            limit: 0,
            revision: 0,
            keys_only: false,
            count_only: false,
        }
    }
}

/// The result of a [`RangeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// Whether the limit cut the result short.
    pub more: bool,
    /// How many keys the range holds (ignoring the limit).
    pub count: u64,
}

/// A write of one key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key (must not be empty).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The lease to attach (0: none).
    pub lease: i64,
    /// Return the previous version.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// The result of a [`PutRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PutResponse {
    /// The previous version, when asked for and present.
    pub prev_kv: Option<KeyValue>,
}

/// A deletion of a key range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// Which keys.
    pub range: KeyRange,
    /// Return the deleted versions.
    pub prev_kv: bool,
}

/// The result of a [`DeleteRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// How many keys were deleted.
    pub deleted: u64,
    /// The deleted versions, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// Which field of a key a [`Compare`] looks at, and the value to compare with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version (0 if absent).
    Version(u64),
    /// The key's create revision (0 if absent).
    CreateRevision(u64),
    /// The key's mod revision (0 if absent).
    ModRevision(u64),
    /// The key's value (a comparison on an absent key is false).
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key's lease (0 if absent or none).
    Lease(i64),
}

/// How a [`Compare`] relates the key's field to the given value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// field == value
    Equal,
    /// field > value
    Greater,
    /// field < value
    Less,
    /// field != value
    NotEqual,
}

/// One condition of a transaction. Over a range, it holds if it holds for every key present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The keys compared.
    pub range: KeyRange,
    /// The field and the value.
    pub target: CompareTarget,
    /// The relation.
    pub op: CompareOp,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A read (sees the transaction's earlier writes).
    Range(RangeRequest),
    /// A write.
    Put(PutRequest),
    /// A deletion.
    Delete(DeleteRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// The result of one [`Op`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResponse {
    /// Of a read.
    Range(RangeResponse),
    /// Of a write.
    Put(PutResponse),
    /// Of a deletion.
    Delete(DeleteResponse),
    /// Of a nested transaction.
    Txn(TxnResponse),
}

/// An atomic transaction: if every compare holds, run `success`, else `failure`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TxnRequest {
    /// The conditions.
    pub compares: Vec<Compare>,
    /// Operations run when every condition holds.
    pub success: Vec<Op>,
    /// Operations run otherwise.
    pub failure: Vec<Op>,
}

/// The result of a [`TxnRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether the conditions held.
    pub succeeded: bool,
    /// One response per operation of the branch that ran.
    pub responses: Vec<OpResponse>,
}

/// The header every response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Header {
    /// The store's revision after the request.
    pub revision: u64,
}
