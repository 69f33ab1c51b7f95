//! Key ranges with etcd's conventions, and the order-preserving key encoding of the history
//! index.

use std::ops::Bound;

/// A set of keys as etcd requests name them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyRange {
    /// Exactly one key.
    Single(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Every key `k` with `start <= k < end`.
    HalfOpen {
        /// First key (inclusive).
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        /// Bound after the last key (exclusive).
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
    },
    /// Every key `k` with `start <= k`.
    From(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl KeyRange {
    /// The range an etcd request means by `key` and `range_end`: an empty `range_end` names the
    /// single key, `"\0"` names every key from `key` on, and anything else the half-open range.
    pub fn from_etcd(key: &[u8], range_end: &[u8]) -> KeyRange {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::From(key.to_vec()),
            end => KeyRange::HalfOpen {
                start: key.to_vec(),
                end: end.to_vec(),
            },
        }
    }

    /// Every key that starts with `prefix` (what `etcdctl get --prefix` asks for).
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        match prefix_end(prefix) {
            Some(end) => KeyRange::HalfOpen {
                start: prefix.to_vec(),
                end,
            },
            None => KeyRange::From(prefix.to_vec()),
        }
    }

    /// The first key of the range.
    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Single(k) | KeyRange::From(k) => k,
            KeyRange::HalfOpen { start, .. } => start,
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_slice() == key,
            KeyRange::HalfOpen { start, end } => start.as_slice() <= key && key < end.as_slice(),
            KeyRange::From(start) => start.as_slice() <= key,
        }
    }

    /// Whether `key` lies beyond the end of the range (iteration in key order may stop).
    pub fn is_past_end(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => key > k.as_slice(),
            KeyRange::HalfOpen { end, .. } => key >= end.as_slice(),
            KeyRange::From(_) => false,
        }
    }

    /// The range as a pair of bounds, for ordered maps.
    pub fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        match self {
            KeyRange::Single(k) => (Bound::Included(k), Bound::Included(k)),
            KeyRange::HalfOpen { start, end } => (Bound::Included(start), Bound::Excluded(end)),
            KeyRange::From(start) => (Bound::Included(start), Bound::Unbounded),
        }
    }
}

/// The smallest key greater than every key with `prefix`, or `None` if there is none
/// (the prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Encodes `key` so that the encodings of distinct keys are never prefixes of each other and
/// sort like the keys: every 0x00 becomes 0x00 0xff, and the key ends with 0x00 0x01. The index
/// appends a revision to this, so all versions of one key are adjacent and in revision order.
pub fn escape(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    escape_into(key, &mut out);
    out
}

fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Splits an index entry (`escape(key) ++ suffix`) into the key and the suffix.
pub fn unescape(encoded: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut key = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        let b = encoded[i];
        if b == 0 {
            match encoded.get(i + 1)? {
                0xff => key.push(0),
                0x01 => return Some((key, &encoded[i + 2..])),
                _ => return None,
            }
            i += 2;
        } else {
            key.push(b);
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_range_conventions() {
        assert_eq!(
            KeyRange::from_etcd(b"a", b""),
            KeyRange::Single(b"a".to_vec())
        );
        assert!(KeyRange::from_etcd(b"a", b"\0").contains(b"zzz"));
        let r = KeyRange::from_etcd(b"a", b"c");
        assert!(r.contains(b"a") && r.contains(b"bzz") && !r.contains(b"c"));
        assert!(r.is_past_end(b"c") && !r.is_past_end(b"b"));
    }

    #[test]
    fn prefixes() {
        let r = KeyRange::prefix(b"/registry/pods/");
        assert!(r.contains(b"/registry/pods/default/a"));
        assert!(!r.contains(b"/registry/pods0"));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(KeyRange::prefix(b""), KeyRange::From(Vec::new()));
    }

    #[test]
    fn escaping_preserves_order_and_separates_versions() {
        let keys: [&[u8]; 6] = [b"", b"\0", b"\0\0", b"a", b"a\0", b"ab"];
        for w in keys.windows(2) {
            assert!(w[0] < w[1]);
            // A key's entries (with any suffix) sort before the next key's.
            let mut a = escape(w[0]);
            a.extend_from_slice(&[0xff; 12]);
            assert!(a < escape(w[1]), "{:?} vs {:?}", w[0], w[1]);
        }
        for k in keys {
            let mut e = escape(k);
            e.extend_from_slice(b"rev");
            let (back, rest) = unescape(&e).unwrap();
            assert_eq!(back, k);
            assert_eq!(rest, b"rev");
        }
        assert_eq!(unescape(b"abc"), None);
    }
}
