//! Compaction of the store's history, as kube-apiserver compacts etcd.
//!
//! Every change the store commits stays in its history until it is compacted, so without
//! compaction the history (and the disk under it) grows for as long as the cluster runs.
//! Every master runs this loop; once per interval one of them compacts the store to the
//! revision it saw one interval earlier, so watches can always resume from a
//! `resourceVersion` up to one interval old, and an older one gets 410 Expired (clients
//! relist).
//!
//! The masters agree on who compacts through one key, [`KEY`], as kube-apiserver's
//! compactors do: each remembers the key's version as it last saw it and, when its interval
//! passes, writes the revision it is about to compact to in a transaction that holds only if
//! the version is still that. The one whose transaction holds compacts; the others learn the
//! new version and try again an interval later. So the store is compacted once per interval
//! whichever masters are up, and never to a revision younger than an interval.

use std::time::Duration;

use flotilla_store::etcd::KvBackend;
use flotilla_store::types::{
    Compare, CompareOp, CompareTarget, Op, OpResponse, PutRequest, RangeRequest, TxnRequest,
};
use flotilla_store::{KeyRange, StoreError};

/// kube-apiserver's default `--etcd-compaction-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// The key whose version counts compactions (kube-apiserver's key in etcd).
pub const KEY: &[u8] = b"compact_rev_key";

/// Where a compactor stands between rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// The version of [`KEY`] this compactor last saw (0: none yet).
    pub version: u64,
    /// The store's revision when it last looked: the next compaction's target.
    pub revision: u64,
}

/// One round: claims this interval's compaction if no other master did since `last`, and then
/// compacts to `last.revision` (not in the first round, which only records where the store
/// stands). Returns where the next round starts from.
pub async fn compact_once<B: KvBackend>(backend: &B, last: Round) -> Result<Round, StoreError> {
    let claim = TxnRequest {
        compares: vec![Compare {
            range: KeyRange::Single(KEY.to_vec()),
            target: CompareTarget::Version(last.version),
            op: CompareOp::Equal,
        }],
        success: vec![Op::Put(PutRequest {
            key: KEY.to_vec(),
            value: last.revision.to_string().into_bytes(),
            ..Default::default()
        })],
        failure: vec![Op::Range(RangeRequest::new(KeyRange::Single(KEY.to_vec())))],
    };
    let (header, resp) = backend.txn(claim).await?;
    if !resp.succeeded {
        // Another master compacted in this interval: start counting from its round.
        let version = match resp.responses.first() {
            Some(OpResponse::Range(r)) => r.kvs.first().map_or(0, |kv| kv.version),
            _ => 0,
        };
        return Ok(Round {
            version,
            revision: header.revision,
        });
    }
    let next = Round {
        version: last.version + 1,
        revision: header.revision,
    };
    if last.revision > 0 {
        match backend.compact(last.revision).await {
            // Compacted that far already (a restored backup, an etcdctl compaction): fine.
            Ok(_) | Err(StoreError::Compacted { .. }) => {
                tracing::info!(revision = last.revision, "compacted the store's history");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(next)
}

/// Compacts every `interval` until `stop` completes. Errors (no leader during an election,
/// say) are logged and the round is tried again at the next interval.
pub async fn run<B: KvBackend>(
    backend: B,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut round = Round::default();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match compact_once(&backend, round).await {
            Ok(next) => round = next,
            Err(e) => {
                tracing::warn!(error = %e, "compacting the store's history failed; trying again next interval")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalBackend;
    use flotilla_store::Mvcc;
    use std::sync::Arc;

    async fn put(b: &LocalBackend, key: &str) -> u64 {
        let (h, _) = b
            .txn(TxnRequest {
                compares: vec![],
                success: vec![Op::Put(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })],
                failure: vec![],
            })
            .await
            .unwrap();
        h.revision
    }

    fn compacted(b: &Mvcc) -> u64 {
        b.revisions().unwrap().1
    }

    #[tokio::test]
    async fn compacts_to_the_revision_of_the_round_before_once_per_round_across_masters() {
        let dir = std::env::temp_dir().join(format!("flotilla-compactor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mvcc = Arc::new(Mvcc::open(&dir, Default::default()).unwrap());
        let b = LocalBackend::new(mvcc.clone()).unwrap();
        put(&b, "a").await;
        // The first round only records where the store stands.
        let m1 = compact_once(&b, Round::default()).await.unwrap();
        assert_eq!(compacted(&mvcc), 0);
        let seen = m1.revision;
        // A second master's first round finds the key moved: it does nothing but learn that.
        let m2 = compact_once(&b, Round::default()).await.unwrap();
        assert_eq!(m2.version, m1.version);
        assert_eq!(compacted(&mvcc), 0);
        put(&b, "b").await;
        // The next round compacts to what the previous one saw, not to now.
        let m1 = compact_once(&b, m1).await.unwrap();
        assert_eq!(compacted(&mvcc), seen);
        // The other master, in the same interval, loses the race and compacts nothing.
        let before = compacted(&mvcc);
        let m2 = compact_once(&b, m2).await.unwrap();
        assert_eq!(compacted(&mvcc), before);
        assert_eq!(m2.version, m1.version);
        // From then on either may win a round.
        put(&b, "c").await;
        let target = m2.revision;
        compact_once(&b, m2).await.unwrap();
        assert_eq!(compacted(&mvcc), target);
        drop((b, mvcc));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
