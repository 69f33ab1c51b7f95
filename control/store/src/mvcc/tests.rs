use super::*;

/// A store in a fresh temporary directory, removed on drop.
struct TempStore {
    store: Option<Mvcc>,
    dir: std::path::PathBuf,
}

impl TempStore {
    fn new(name: &str) -> TempStore {
        let dir = std::env::temp_dir().join(format!(
            "flotilla-mvcc-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Mvcc::open(&dir, MvccOptions { sync: false }).unwrap();
        TempStore {
            store: Some(store),
            dir,
        }
    }

    fn reopen(&mut self) {
        self.store = None;
        self.store = Some(Mvcc::open(&self.dir, MvccOptions { sync: false }).unwrap());
    }
}

impl std::ops::Deref for TempStore {
    type Target = Mvcc;
    fn deref(&self) -> &Mvcc {
        self.store.as_ref().unwrap()
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        self.store = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn put(s: &Mvcc, k: &str, v: &str) -> u64 {
    s.put(PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    })
    .unwrap()
    .0
    .revision
}

fn get(s: &Mvcc, range: KeyRange, revision: u64) -> Result<RangeResponse, StoreError> {
    s.range(&RangeRequest {
        revision,
        ..RangeRequest::new(range)
    })
    .map(|(_, r)| r)
}

fn values(r: &RangeResponse) -> Vec<(String, String)> {
    r.kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

fn single(k: &str) -> KeyRange {
    KeyRange::Single(k.into())
}

#[test]
fn puts_advance_revisions_and_track_versions() {
    let s = TempStore::new("versions");
    assert_eq!(s.revisions().unwrap(), (0, 0));
    assert_eq!(put(&s, "a", "1"), 1);
    assert_eq!(put(&s, "b", "1"), 2);
    assert_eq!(put(&s, "a", "2"), 3);
    let r = get(&s, single("a"), 0).unwrap();
    let kv = &r.kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (1, 3, 2));
    assert_eq!(kv.value, b"2");
    // prev_kv returns the replaced version.
    let (_, resp, events) = s
        .put(PutRequest {
            key: "a".into(),
            value: "3".into(),
            prev_kv: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(resp.prev_kv.unwrap().value, b"2");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kv.mod_revision, 4);
}

#[test]
fn ranges_honour_prefix_limit_count_and_keys_only() {
    let s = TempStore::new("range");
    for k in ["/p/a", "/p/b", "/p/c", "/q/a"] {
        put(&s, k, "v");
    }
    let all = get(&s, KeyRange::prefix(b"/p/"), 0).unwrap();
    assert_eq!(all.count, 3);
    let limited = s
        .range(&RangeRequest {
            limit: 2,
            keys_only: true,
            ..RangeRequest::new(KeyRange::prefix(b"/p/"))
        })
        .unwrap()
        .1;
    assert_eq!(limited.kvs.len(), 2);
    assert!(limited.more);
    assert_eq!(limited.count, 3);
    assert!(limited.kvs.iter().all(|kv| kv.value.is_empty()));
    let counted = s
        .range(&RangeRequest {
            count_only: true,
            ..RangeRequest::new(KeyRange::from_etcd(b"\0", b"\0"))
        })
        .unwrap()
        .1;
    assert_eq!((counted.count, counted.kvs.len()), (4, 0));
}

#[test]
fn deletes_are_tombstones_visible_in_history_and_past_reads() {
    let s = TempStore::new("delete");
    put(&s, "a", "1"); // rev 1
    put(&s, "b", "1"); // rev 2
    let (h, resp, events) = s
        .delete(DeleteRequest {
            range: KeyRange::prefix(b""),
            prev_kv: true,
        })
        .unwrap();
    assert_eq!(h.revision, 3, "one revision for the whole delete");
    assert_eq!(resp.deleted, 2);
    assert_eq!(resp.prev_kvs.len(), 2);
    assert!(events.iter().all(|e| e.kind == EventKind::Delete));
    assert!(get(&s, KeyRange::prefix(b""), 0).unwrap().kvs.is_empty());
    // Reading at revision 2 still sees both keys.
    assert_eq!(get(&s, KeyRange::prefix(b""), 2).unwrap().count, 2);
    // Re-creating a key starts a new life: version 1, new create revision.
    put(&s, "a", "again"); // rev 4
    let kv = &get(&s, single("a"), 0).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.version), (4, 1));
}

#[test]
fn past_reads_return_each_keys_version_at_that_revision() {
    let s = TempStore::new("past");
    put(&s, "k", "v1"); // 1
    put(&s, "k", "v2"); // 2
    put(&s, "j", "x"); // 3
    put(&s, "k", "v3"); // 4
    assert_eq!(
        values(&get(&s, single("k"), 1).unwrap()),
        [("k".into(), "v1".into())]
    );
    assert_eq!(
        values(&get(&s, KeyRange::prefix(b""), 3).unwrap()),
        [("j".into(), "x".into()), ("k".into(), "v2".into())]
    );
    assert!(matches!(
        get(&s, single("k"), 9),
        Err(StoreError::FutureRevision {
            requested: 9,
            current: 4
        })
    ));
}

#[test]
fn txn_compares_choose_the_branch_and_apply_atomically() {
    let s = TempStore::new("txn");
    put(&s, "/registry/pods/a", "v1"); // rev 1
                                       // Create-if-absent: the Kubernetes create pattern.
    let create = |key: &str| TxnRequest {
        compares: vec![Compare {
            range: single(key),
            target: CompareTarget::ModRevision(0),
            op: CompareOp::Equal,
        }],
        success: vec![Op::Put(PutRequest {
            key: key.into(),
            value: "new".into(),
            ..Default::default()
        })],
        failure: vec![Op::Range(RangeRequest::new(single(key)))],
    };
    let (_, resp, _) = s.txn(&create("/registry/pods/a")).unwrap();
    assert!(!resp.succeeded);
    match &resp.responses[0] {
        OpResponse::Range(r) => assert_eq!(r.kvs[0].value, b"v1"),
        other => panic!("unexpected {other:?}"),
    }
    let (h, resp, events) = s.txn(&create("/registry/pods/b")).unwrap();
    assert!(resp.succeeded);
    assert_eq!(h.revision, 2);
    assert_eq!(events.len(), 1);

    // Update guarded by mod_revision: a stale one fails and writes nothing.
    let update = |expected: u64| TxnRequest {
        compares: vec![Compare {
            range: single("/registry/pods/a"),
            target: CompareTarget::ModRevision(expected),
            op: CompareOp::Equal,
        }],
        success: vec![
            Op::Put(PutRequest {
                key: "/registry/pods/a".into(),
                value: "v2".into(),
                ..Default::default()
            }),
            // A read after a write in the same transaction sees the write.
            Op::Range(RangeRequest::new(single("/registry/pods/a"))),
        ],
        failure: vec![],
    };
    let (h, resp, _) = s.txn(&update(7)).unwrap();
    assert!(!resp.succeeded);
    assert_eq!(h.revision, 2, "a failed compare writes nothing");
    let (h, resp, _) = s.txn(&update(1)).unwrap();
    assert!(resp.succeeded);
    assert_eq!(h.revision, 3);
    match &resp.responses[1] {
        OpResponse::Range(r) => assert_eq!(r.kvs[0].value, b"v2"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn value_compare_on_a_missing_key_is_false() {
    let s = TempStore::new("valuecmp");
    let (_, resp, _) = s
        .txn(&TxnRequest {
            compares: vec![Compare {
                range: single("nope"),
                target: CompareTarget::Value(Vec::new()),
                op: CompareOp::Equal,
            }],
            ..Default::default()
        })
        .unwrap();
    assert!(!resp.succeeded);
}

#[test]
fn bad_writes_fail_whole_and_leave_no_trace() {
    let s = TempStore::new("bad");
    put(&s, "a", "1");
    let before = s.revisions().unwrap();
    let dup = TxnRequest {
        success: vec![
            Op::Put(PutRequest {
                key: "x".into(),
                ..Default::default()
            }),
            Op::Put(PutRequest {
                key: "x".into(),
                ..Default::default()
            }),
        ],
        ..Default::default()
    };
    assert!(matches!(s.txn(&dup), Err(StoreError::DuplicateKey)));
    assert!(matches!(
        s.put(PutRequest::default()),
        Err(StoreError::EmptyKey)
    ));
    assert!(matches!(
        s.put(PutRequest {
            key: "missing".into(),
            ignore_value: true,
            ..Default::default()
        }),
        Err(StoreError::KeyNotFound)
    ));
    assert_eq!(s.revisions().unwrap(), before);
    assert!(get(&s, single("x"), 0).unwrap().kvs.is_empty());
}

#[test]
fn ignore_value_and_ignore_lease_keep_the_current_ones() {
    let s = TempStore::new("ignore");
    s.put(PutRequest {
        key: "k".into(),
        value: "v".into(),
        lease: 42,
        ..Default::default()
    })
    .unwrap();
    s.put(PutRequest {
        key: "k".into(),
        ignore_value: true,
        ignore_lease: true,
        ..Default::default()
    })
    .unwrap();
    let kv = &get(&s, single("k"), 0).unwrap().kvs[0];
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (&b"v"[..], 42, 2)
    );
}

#[test]
fn compaction_hides_old_history_but_keeps_the_latest_versions() {
    let s = TempStore::new("compact");
    put(&s, "a", "1"); // 1
    put(&s, "a", "2"); // 2
    put(&s, "b", "1"); // 3
    s.delete(DeleteRequest {
        range: single("b"),
        prev_kv: false,
    })
    .unwrap(); // 4
    put(&s, "a", "3"); // 5
    s.compact(4).unwrap();
    assert_eq!(s.revisions().unwrap(), (5, 4));
    assert!(matches!(
        get(&s, single("a"), 1),
        Err(StoreError::Compacted {
            requested: 1,
            compacted: 4
        })
    ));
    // At the compacted revision itself, reads still work: a=2, b deleted.
    assert_eq!(
        values(&get(&s, KeyRange::prefix(b""), 4).unwrap()),
        [("a".into(), "2".into())]
    );
    assert!(matches!(s.compact(3), Err(StoreError::Compacted { .. })));
    assert!(matches!(
        s.compact(9),
        Err(StoreError::FutureRevision { .. })
    ));
    assert!(matches!(
        s.history(2, &KeyRange::prefix(b""), false, 0),
        Err(StoreError::Compacted { .. })
    ));
    let (_, events) = s.history(5, &KeyRange::prefix(b""), false, 0).unwrap();
    assert_eq!(events.len(), 1);
    // Watching from the compacted revision itself still sees every event of that revision.
    let (_, events) = s.history(4, &KeyRange::prefix(b""), false, 0).unwrap();
    let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.kv.mod_revision)).collect();
    assert_eq!(kinds, [(EventKind::Delete, 4), (EventKind::Put, 5)]);
}

#[test]
fn history_replays_changes_in_order_with_prev_kv() {
    let s = TempStore::new("history");
    put(&s, "/a/1", "x"); // 1
    put(&s, "/b/1", "y"); // 2
    put(&s, "/a/1", "z"); // 3
    s.delete(DeleteRequest {
        range: KeyRange::prefix(b"/a/"),
        prev_kv: false,
    })
    .unwrap(); // 4
    let (h, events) = s.history(1, &KeyRange::prefix(b"/a/"), true, 0).unwrap();
    assert_eq!(h.revision, 4);
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.mod_revision,
                e.prev_kv.as_ref().map(|p| p.value.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (EventKind::Put, 1, None),
            (EventKind::Put, 3, Some(b"x".to_vec())),
            (EventKind::Delete, 4, Some(b"z".to_vec())),
        ]
    );
}

#[test]
fn history_limit_never_splits_a_revision() {
    let s = TempStore::new("historylimit");
    s.txn(&TxnRequest {
        success: vec![
            Op::Put(PutRequest {
                key: "a".into(),
                ..Default::default()
            }),
            Op::Put(PutRequest {
                key: "b".into(),
                ..Default::default()
            }),
        ],
        ..Default::default()
    })
    .unwrap();
    put(&s, "c", "");
    let (_, events) = s.history(1, &KeyRange::prefix(b""), false, 1).unwrap();
    assert_eq!(
        events.len(),
        2,
        "both writes of revision 1, nothing of revision 2"
    );
}

#[test]
fn data_survives_reopening() {
    let mut s = TempStore::new("reopen");
    put(&s, "a", "1");
    put(&s, "a", "2");
    s.compact(1).unwrap();
    s.reopen();
    assert_eq!(s.revisions().unwrap(), (2, 1));
    assert_eq!(
        values(&get(&s, single("a"), 0).unwrap()),
        [("a".into(), "2".into())]
    );
    assert_eq!(put(&s, "a", "3"), 3);
}

fn put_op(k: &str, v: &str) -> Op {
    Op::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    })
}

#[test]
fn a_batch_runs_each_transaction_at_its_own_revision_in_one_atomic_write() {
    let mut s = TempStore::new("batch");
    assert_eq!(put(&s, "z", "0"), 1);
    let create_a = TxnRequest {
        compares: vec![Compare {
            range: single("a"),
            target: CompareTarget::Version(0),
            op: CompareOp::Equal,
        }],
        success: vec![put_op("a", "again")],
        failure: vec![Op::Range(RangeRequest::new(single("a")))],
    };
    let twice = TxnRequest {
        success: vec![put_op("b", "1"), put_op("b", "2")],
        ..Default::default()
    };
    let delete_a = TxnRequest {
        success: vec![Op::Delete(DeleteRequest {
            range: single("a"),
            prev_kv: true,
        })],
        ..Default::default()
    };
    let first = TxnRequest {
        success: vec![put_op("a", "1")],
        ..Default::default()
    };
    let meta = [MetaOp::Put(b"applied".to_vec(), b"7".to_vec())];
    let out = s
        .txns_with_meta(&[&first, &create_a, &twice, &delete_a], &meta)
        .unwrap();
    // The first writes at 2; the second sees that write (its compare fails, its read finds
    // "a") and, writing nothing, answers revision 2; the third is refused and leaves no
    // trace; the fourth deletes "a" at 3.
    let (h, _, events) = out[0].as_ref().unwrap();
    assert_eq!((h.revision, events.len()), (2, 1));
    let (h, r, events) = out[1].as_ref().unwrap();
    assert!(!r.succeeded);
    assert!(events.is_empty());
    assert_eq!(h.revision, 2);
    match &r.responses[0] {
        OpResponse::Range(rr) => assert_eq!(values(rr), [("a".into(), "1".into())]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(out[2], Err(StoreError::DuplicateKey)));
    let (h, r, events) = out[3].as_ref().unwrap();
    assert_eq!(h.revision, 3);
    assert_eq!(events[0].kv.mod_revision, 3);
    assert!(matches!(&r.responses[0], OpResponse::Delete(d) if d.deleted == 1));

    // All of it is on disk, history included, with the caller's metadata.
    s.reopen();
    assert_eq!(s.revisions().unwrap().0, 3);
    assert!(get(&s, single("a"), 0).unwrap().kvs.is_empty());
    assert_eq!(
        values(&get(&s, single("a"), 2).unwrap()),
        [("a".into(), "1".into())]
    );
    assert!(get(&s, single("b"), 0).unwrap().kvs.is_empty());
    assert_eq!(s.read_meta(b"applied").unwrap(), Some(b"7".to_vec()));
    assert_eq!(put(&s, "c", "1"), 4);
}

#[test]
fn byte_strings_encode_as_before_they_were_marked_as_bytes() {
    // Keys and values are now encoded as byte strings rather than sequences of numbers; the
    // encoding must not change, or stored data and older members would no longer decode.
    let kv = KeyValue {
        key: b"/registry/pods/default/a".to_vec(),
        create_revision: 3,
        mod_revision: 4,
        version: 2,
        value: vec![0, 1, 2, 255],
        lease: 7,
    };
    let as_sequences = (
        kv.key.clone(),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.value.clone(),
        kv.lease,
    );
    assert_eq!(encode(&kv).unwrap(), encode(&as_sequences).unwrap());
    let row = Row(2, b"k".to_vec(), b"v".to_vec());
    assert_eq!(
        encode(&row).unwrap(),
        encode(&(2u8, b"k".to_vec(), b"v".to_vec())).unwrap()
    );
}
