//! The etcd v3 API subset that Flotilla's store serves, as protobuf (`etcd/*.proto`) and the
//! tonic code generated from it. Package names and field numbers match etcd's, so etcd clients
//! (etcdctl, the `etcd-client` crate) talk to Flotilla unmodified.
//!
//! This crate is wire format only: the store converts these messages to its own types at the
//! edge and never passes them further in.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// etcd's key-value types (`mvccpb`).
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's server API (`etcdserverpb`).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn field_numbers_match_etcd_on_the_wire() {
        // Field 1 (key, bytes) then field 4 (version, varint), as etcd encodes a KeyValue.
        let kv = mvccpb::KeyValue {
            key: b"k".to_vec(),
            version: 2,
            ..Default::default()
        };
        assert_eq!(kv.encode_to_vec(), [0x0a, 0x01, b'k', 0x20, 0x02]);
        // Compare.range_end is field 64: tag (64 << 3 | 2) = 514 = varint 0x82 0x04.
        let c = etcdserverpb::Compare {
            range_end: b"z".to_vec(),
            ..Default::default()
        };
        assert_eq!(c.encode_to_vec(), [0x82, 0x04, 0x01, b'z']);
    }
}
