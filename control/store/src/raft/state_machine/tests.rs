use std::sync::atomic::{AtomicUsize, Ordering};

use openraft::testing::{StoreBuilder, Suite};

use super::*;
use crate::raft::log::RaftLog;
use crate::types::PutRequest;
use crate::MvccOptions;

/// Builds a fresh log and state machine per openraft test case, each in its own directory;
/// the directory guard removes it when the case drops it.
struct Builder {
    root: std::path::PathBuf,
    n: AtomicUsize,
}

struct DirGuard(std::path::PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl StoreBuilder<TypeConfig, RaftLog, StateMachine, DirGuard> for Builder {
    async fn build(&self) -> Result<(DirGuard, RaftLog, StateMachine), StorageError<u64>> {
        let dir = self
            .root
            .join(self.n.fetch_add(1, Ordering::SeqCst).to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let open = || -> Result<(RaftLog, StateMachine), StoreError> {
            let log = RaftLog::open(&dir.join("log"))?;
            let mvcc = Arc::new(Mvcc::open(&dir.join("state"), MvccOptions { sync: false })?);
            let hub = WatchHub::new(mvcc.clone())?;
            Ok((log, StateMachine::open(mvcc, hub)?))
        };
        let (log, sm) = open().map_err(sm_err)?;
        Ok((DirGuard(dir), log, sm))
    }
}

#[test]
fn passes_openrafts_storage_suite() {
    let root = std::env::temp_dir().join(format!("flotilla-raft-suite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let result = Suite::test_all(Builder {
        root: root.clone(),
        n: AtomicUsize::new(0),
    });
    let _ = std::fs::remove_dir_all(&root);
    result.unwrap();
}

fn normal(index: u64, cmd: Command) -> LogEntry {
    LogEntry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn put(key: &str, lease: i64) -> Command {
    Command::Txn(TxnRequest {
        success: vec![Op::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        })],
        ..Default::default()
    })
}

#[tokio::test]
async fn commands_apply_leases_revoke_keys_and_snapshots_restore_everything() {
    let root = std::env::temp_dir().join(format!("flotilla-sm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let _guard = DirGuard(root.clone());
    let open = |name: &str| {
        let mvcc = Arc::new(Mvcc::open(&root.join(name), MvccOptions { sync: false }).unwrap());
        let hub = WatchHub::new(mvcc.clone()).unwrap();
        (mvcc.clone(), StateMachine::open(mvcc, hub).unwrap())
    };
    let (mvcc, mut sm) = open("a");
    let out = sm
        .apply(vec![
            normal(1, Command::LeaseGrant { id: 9, ttl: 30 }),
            normal(2, put("/with-lease", 9)),
            normal(3, put("/plain", 0)),
            normal(4, put("/bad-lease", 77)),
        ])
        .await
        .unwrap();
    assert!(matches!(
        out[0],
        CommandResponse::LeaseGranted { id: 9, ttl: 30, .. }
    ));
    assert!(matches!(out[3], CommandResponse::Failed(ref m) if m.contains("lease not found")));
    assert_eq!(
        mvcc.revisions().unwrap().0,
        2,
        "the refused put wrote nothing"
    );

    // A snapshot carries the data, the leases and the applied log id.
    let snap = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(snap.meta.last_log_id.unwrap().index, 4);
    let (other_mvcc, mut other) = open("b");
    other
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(other_mvcc.revisions().unwrap().0, 2);
    assert_eq!(other.applied_state().await.unwrap().0.unwrap().index, 4);
    let status = other
        .leases()
        .lock()
        .unwrap()
        .time_to_live(9, Instant::now())
        .unwrap();
    assert_eq!(status.keys, [b"/with-lease".to_vec()]);

    // Revoking the lease deletes its key on the member that installed the snapshot.
    let out = other
        .apply(vec![normal(5, Command::LeaseRevoke(9))])
        .await
        .unwrap();
    assert!(matches!(out[0], CommandResponse::LeaseRevoked(_)));
    let (_, r) = other_mvcc
        .range(&crate::types::RangeRequest::new(KeyRange::prefix(b"/")))
        .unwrap();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.kvs[0].key, b"/plain");
}

#[tokio::test]
async fn a_batch_entry_answers_each_transaction_and_notifies_each_revision() {
    let root = std::env::temp_dir().join(format!("flotilla-sm-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let _guard = DirGuard(root.clone());
    let mvcc = Arc::new(Mvcc::open(&root, MvccOptions { sync: false }).unwrap());
    let hub = WatchHub::new(mvcc.clone()).unwrap();
    let mut sm = StateMachine::open(mvcc.clone(), hub.clone()).unwrap();
    let mut watch = hub.watch(
        crate::watch::WatchRequest {
            range: KeyRange::prefix(b"/"),
            start_revision: 1,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress: false,
        },
        16,
    );
    let txn = |cmd: Command| match cmd {
        Command::Txn(t) => t,
        other => panic!("{other:?}"),
    };
    let batch = Command::Batch(vec![
        txn(put("/a", 0)),
        txn(put("/b", 77)), // an unknown lease: refused alone
        txn(put("/c", 0)),
    ]);
    let out = sm.apply(vec![normal(1, batch)]).await.unwrap();
    let CommandResponse::Batch(answers) = &out[0] else {
        panic!("{out:?}")
    };
    assert!(matches!(answers[0], CommandResponse::Txn(h, _) if h.revision == 1));
    assert!(matches!(answers[1], CommandResponse::Failed(ref m) if m.contains("lease not found")));
    assert!(matches!(answers[2], CommandResponse::Txn(h, _) if h.revision == 2));
    assert_eq!(sm.applied_state().await.unwrap().0.unwrap().index, 1);
    // Watchers see two writes at two revisions, as if proposed one by one.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), watch.recv())
            .await
            .expect("events arrive")
            .expect("the watch stays open");
        if let crate::watch::WatchMessage::Events { revision, events } = message {
            seen.extend(events.into_iter().map(|e| (e.kv.key, revision)));
        }
    }
    assert_eq!(seen, [(b"/a".to_vec(), 1), (b"/c".to_vec(), 2)]);
}
