//! The backup file format of `Maintenance.Snapshot` (what `etcdctl snapshot save` writes).
//!
//! etcdctl checks that a saved snapshot ends with a SHA-256 checksum after a body whose size is
//! a multiple of 512 bytes (etcd's own files are bbolt pages). Flotilla's file is:
//! `FLOTSNAP` magic, the state's length (u64, little endian), the state ([`Mvcc::export`]),
//! zero padding to a multiple of 512, then the SHA-256 of everything before it. Restoring checks
//! all of it, so a truncated or altered file is refused before anything is written.
//!
//! [`Mvcc::export`]: crate::Mvcc::export

use crate::StoreError;

const MAGIC: &[u8; 8] = b"FLOTSNAP";
const ALIGN: usize = 512;
const SUM: usize = 32;

/// Wraps an exported state into a backup file.
pub fn encode(state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(state.len() + ALIGN + SUM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    out.extend_from_slice(state);
    out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    let sum = ring::digest::digest(&ring::digest::SHA256, &out);
    out.extend_from_slice(sum.as_ref());
    out
}

/// The exported state inside a backup file, after checking its checksum and framing.
pub fn decode(file: &[u8]) -> Result<&[u8], StoreError> {
    let bad = |why: &str| StoreError::Corrupt(format!("not a Flotilla backup: {why}"));
    if file.len() < MAGIC.len() + 8 + SUM || !(file.len() - SUM).is_multiple_of(ALIGN) {
        return Err(bad("wrong size (truncated?)"));
    }
    let (body, sum) = file.split_at(file.len() - SUM);
    if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != sum {
        return Err(bad("SHA-256 checksum mismatch (damaged or truncated)"));
    }
    if &body[..MAGIC.len()] != MAGIC {
        return Err(bad(
            "unknown format (an etcd bbolt snapshot cannot be restored here)",
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&body[MAGIC.len()..MAGIC.len() + 8]);
    let start = MAGIC.len() + 8;
    let len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| bad("length"))?;
    body.get(start..start + len).ok_or_else(|| bad("length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_has_the_shape_etcdctl_checks() {
        for state in [vec![], vec![7u8; 3], vec![1u8; 5000]] {
            let file = encode(&state);
            assert_eq!((file.len() - 32) % 512, 0);
            assert_eq!(decode(&file).unwrap(), &state[..]);
        }
    }

    #[test]
    fn damaged_or_foreign_files_are_refused() {
        let file = encode(b"some state");
        let mut flipped = file.clone();
        flipped[20] ^= 1;
        assert!(decode(&flipped).is_err());
        assert!(decode(&file[..file.len() - 1]).is_err());
        assert!(decode(b"").is_err());
        let mut foreign = vec![0u8; 512];
        foreign.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &foreign).as_ref());
        assert!(decode(&foreign)
            .unwrap_err()
            .to_string()
            .contains("unknown format"));
    }
}
