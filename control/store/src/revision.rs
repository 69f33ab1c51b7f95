//! Revisions: the store's logical clock.
//!
//! As in etcd, every transaction that writes gets one new *main* revision; each write inside it
//! gets a *sub* revision (0, 1, 2, …). A key's `mod_revision` is the main revision of its last
//! write. Revisions are encoded big-endian so that RocksDB's byte order is revision order.

use serde::{Deserialize, Serialize};

/// A point in the store's history: (main, sub).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Revision {
    /// The transaction's revision (what clients see as `mod_revision`, `resourceVersion`).
    pub main: u64,
    /// The write's position within its transaction.
    pub sub: u32,
}

/// Bytes in an encoded [`Revision`].
pub const REVISION_LEN: usize = 12;

impl Revision {
    /// The revision (main, sub).
    pub const fn new(main: u64, sub: u32) -> Revision {
        Revision { main, sub }
    }

    /// Big-endian encoding, ordered like the revisions themselves.
    pub fn to_bytes(self) -> [u8; REVISION_LEN] {
        let mut out = [0u8; REVISION_LEN];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    /// Decodes [`Revision::to_bytes`]; `None` if `b` has the wrong length.
    pub fn from_bytes(b: &[u8]) -> Option<Revision> {
        if b.len() != REVISION_LEN {
            return None;
        }
        let main = u64::from_be_bytes(b[..8].try_into().ok()?);
        let sub = u32::from_be_bytes(b[8..].try_into().ok()?);
        Some(Revision { main, sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_revision_order() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 0),
            Revision::new(u64::MAX, u32::MAX),
        ];
        for w in revs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_bytes() < w[1].to_bytes());
        }
        for r in revs {
            assert_eq!(Revision::from_bytes(&r.to_bytes()), Some(r));
        }
        assert_eq!(Revision::from_bytes(&[1, 2, 3]), None);
    }
}
