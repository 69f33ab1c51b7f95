use std::time::Duration;

use super::*;
use crate::types::{DeleteRequest, PutRequest};
use crate::MvccOptions;

struct Fixture {
    store: Arc<Mvcc>,
    hub: WatchHub,
    dir: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("flotilla-watch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(Mvcc::open(&dir, MvccOptions { sync: false }).unwrap());
    let hub = WatchHub::new(store.clone()).unwrap();
    Fixture { store, hub, dir }
}

impl Fixture {
    /// Writes like the state machine does: commit, then notify.
    fn put(&self, k: &str, v: &str) -> u64 {
        let (h, _, events) = self
            .store
            .put(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })
            .unwrap();
        self.hub.notify(h.revision, events);
        h.revision
    }

    fn delete_prefix(&self, p: &str) -> u64 {
        let (h, _, events) = self
            .store
            .delete(DeleteRequest {
                range: KeyRange::prefix(p.as_bytes()),
                prev_kv: false,
            })
            .unwrap();
        self.hub.notify(h.revision, events);
        h.revision
    }
}

fn watch_prefix(p: &str, start: u64) -> WatchRequest {
    WatchRequest {
        range: KeyRange::prefix(p.as_bytes()),
        start_revision: start,
        prev_kv: false,
        no_put: false,
        no_delete: false,
        progress: false,
    }
}

async fn next(rx: &mut mpsc::Receiver<WatchMessage>) -> WatchMessage {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a watch message within 5 s")
        .expect("the watch is open")
}

/// Waits (at most 5 s) until `n` watchers are live.
async fn wait_live(hub: &WatchHub, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.live_watchers() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} live watchers, have {}",
            hub.live_watchers()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn revisions_of(msgs: &[WatchMessage]) -> Vec<u64> {
    msgs.iter()
        .map(|m| match m {
            WatchMessage::Events { revision, .. } => *revision,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn replays_history_then_continues_live_without_gaps_or_duplicates() {
    let f = fixture("replay");
    f.put("/a/1", "x"); // 1
    f.put("/b/1", "y"); // 2
    f.put("/a/2", "z"); // 3
    let mut rx = f.hub.watch(watch_prefix("/a/", 1), 16);
    let mut got = vec![next(&mut rx).await, next(&mut rx).await];
    f.put("/a/1", "again"); // 4
    f.put("/b/2", "other"); // 5: not ours
    f.put("/a/3", "w"); // 6
    got.push(next(&mut rx).await);
    got.push(next(&mut rx).await);
    assert_eq!(revisions_of(&got), [1, 3, 4, 6]);
}

#[tokio::test]
async fn start_zero_means_from_now_and_one_revision_is_one_message() {
    let f = fixture("now");
    f.put("/a/old", "x");
    let mut rx = f.hub.watch(watch_prefix("/a/", 0), 16);
    // Wait until the watcher is live, so the writes below are live events.
    wait_live(&f.hub, 1).await;
    f.put("/a/x", "1");
    f.put("/a/y", "1");
    let rev = f.delete_prefix("/a/");
    let msgs = [
        next(&mut rx).await,
        next(&mut rx).await,
        next(&mut rx).await,
    ];
    match &msgs[2] {
        WatchMessage::Events { revision, events } => {
            assert_eq!(*revision, rev);
            assert_eq!(events.len(), 3, "all deletes of one revision together");
            assert!(events.iter().all(|e| e.kind == EventKind::Delete));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(revisions_of(&msgs[..2]), [2, 3]);
}

#[tokio::test]
async fn a_slow_watcher_never_blocks_writers_and_loses_nothing() {
    let f = fixture("slow");
    // The client reads nothing while many revisions commit: notify must not block.
    let mut rx = f.hub.watch(watch_prefix("/k/", 1), 1);
    let n = (LIVE_BUFFER as u64) * 3;
    for i in 0..n {
        f.put(&format!("/k/{}", i % 7), &i.to_string());
    }
    let mut revs = Vec::new();
    while revs.len() < n as usize {
        match next(&mut rx).await {
            WatchMessage::Events { revision, events } => {
                assert_eq!(events.len(), 1);
                revs.push(revision);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(revs, (1..=n).collect::<Vec<_>>());
}

#[tokio::test]
async fn filters_and_prev_kv() {
    let f = fixture("filters");
    f.put("/a", "1");
    f.put("/a", "2");
    f.delete_prefix("/a");
    let mut rx = f.hub.watch(
        WatchRequest {
            no_put: true,
            prev_kv: true,
            ..watch_prefix("/a", 1)
        },
        16,
    );
    match next(&mut rx).await {
        WatchMessage::Events { revision, events } => {
            assert_eq!(revision, 3);
            assert_eq!(events[0].kind, EventKind::Delete);
            assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b"2");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn watching_compacted_history_says_so() {
    let f = fixture("compacted");
    f.put("/a", "1");
    f.put("/a", "2");
    f.put("/a", "3");
    f.store.compact(3).unwrap();
    let mut rx = f.hub.watch(watch_prefix("/a", 1), 4);
    assert_eq!(
        next(&mut rx).await,
        WatchMessage::Compacted {
            compact_revision: 3
        }
    );
}

#[tokio::test]
async fn dropping_the_receiver_cancels_the_watch() {
    let f = fixture("cancel");
    let rx = f.hub.watch(watch_prefix("/a", 0), 4);
    wait_live(&f.hub, 1).await;
    drop(rx);
    wait_live(&f.hub, 0).await;
}

#[tokio::test]
async fn progress_reports_revisions_outside_the_range_once_events_before_them_are_delivered() {
    let f = fixture("progress");
    f.put("/a/1", "x"); // 1
    let mut rx = f.hub.watch(
        WatchRequest {
            progress: true,
            ..watch_prefix("/a/", 1)
        },
        16,
    );
    // History first, then the watcher reports where it stands as it turns live.
    assert_eq!(revisions_of(&[next(&mut rx).await]), [1]);
    assert_eq!(next(&mut rx).await, WatchMessage::Progress { revision: 1 });
    wait_live(&f.hub, 1).await;
    f.put("/a/2", "y"); // 2
    f.put("/b/1", "other"); // 3: not in the range, but progress covers it
    f.hub.request_progress();
    assert_eq!(revisions_of(&[next(&mut rx).await]), [2]);
    assert_eq!(next(&mut rx).await, WatchMessage::Progress { revision: 3 });
    // Watchers that did not ask for progress never see a marker.
    let mut plain = f.hub.watch(watch_prefix("/a/", 0), 16);
    wait_live(&f.hub, 2).await;
    f.hub.request_progress();
    f.put("/a/3", "z"); // 4
    assert_eq!(revisions_of(&[next(&mut plain).await]), [4]);
}
