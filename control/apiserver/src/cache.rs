//! The watch cache: on every master, one cache per resource, fed by the store's watch.
//!
//! A cache starts on the first list or watch of its resource: it lists every object of the
//! resource at one revision, then follows the store's watch from the next revision. It keeps
//! each object both decoded (for selectors and tables) and encoded once (so a list of 10,000
//! pods is a concatenation, and an event sent to 1,000 watchers is serialised once), plus the
//! last [`HISTORY`] changes, so that a watch from a recent `resourceVersion` replays from memory.
//!
//! **Consistency.** The cache knows the revision up to which it has seen every change of its
//! resource: the store's watch reports progress after each committed revision and on request
//! ([`Change::Progress`]), including revisions that did not touch the resource. A consistent
//! list first reads the store's current revision through Raft (linearizable), then waits until
//! the cache has reached it, so a list served by any master never goes back in time behind a
//! write that was acknowledged anywhere. A watch from a `resourceVersion` newer than the cache
//! waits the same way. If the cache cannot catch up within [`FRESH_WAIT`], the request is served
//! from the store instead.
//!
//! **Fan-out.** Changes go to watchers through one broadcast channel per resource, sent while
//! the cache's write lock is held; a new watcher snapshots and subscribes under the read lock,
//! so it sees every change exactly once. A watcher that falls more than [`FANOUT`] changes
//! behind is ended, as Kubernetes ends slow watchers; clients resume from their last
//! `resourceVersion`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::resources::Resource;
use crate::storage::{Backend, Change, Storage};

/// Changes kept per resource for watches that start from a `resourceVersion`.
const HISTORY: usize = 10_000;
/// Batches of changes buffered per watcher before it counts as too slow and is ended.
pub const FANOUT: usize = 4096;
/// How long the cache collects the store watch's changes before handing them to watchers as
/// one batch: a little latency for far fewer wake-ups and writes when changes come fast.
const LINGER: Duration = Duration::from_millis(2);
/// How long a read waits for the cache to reach the revision it must reflect.
const FRESH_WAIT: Duration = Duration::from_secs(3);
/// How long the snapshot behind a paginated list is kept for its next pages, and how many
/// are kept per resource; later pages of an older list are read from the store.
const PAGED_FOR: Duration = Duration::from_secs(60);
const PAGED_KEPT: usize = 8;
/// How often an idle cache asks the store for progress (which becomes watch bookmarks).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// One object as the cache holds it.
#[derive(Debug)]
pub struct Entry {
    /// The object, with its `resourceVersion`.
    pub value: Value,
    /// The object as JSON.
    pub json: Bytes,
    /// Its namespace, if namespaced.
    pub namespace: Option<String>,
}

impl Entry {
    fn new(value: Value) -> Entry {
        let json = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        Entry::with_json(value, json)
    }

    /// An entry whose JSON is already at hand.
    fn with_json(value: Value, json: Bytes) -> Entry {
        let namespace = value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(String::from);
        Entry {
            value,
            json,
            namespace,
        }
    }

    /// The cache's key: `namespace/name`, or `name`. The store's key is its resource's prefix
    /// followed by this, so both sort alike.
    pub fn key(&self) -> String {
        let name = self
            .value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        match &self.namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        }
    }

    /// Whether the object is in `ns` (every object is in `None`).
    pub fn in_namespace(&self, ns: Option<&str>) -> bool {
        ns.is_none_or(|ns| self.namespace.as_deref() == Some(ns))
    }
}

/// One change of a resource, as watchers receive it.
#[derive(Debug)]
pub struct Event {
    /// `ADDED`, `MODIFIED`, `DELETED`, or `BOOKMARK` (no object).
    pub kind: &'static str,
    /// The revision of the change.
    pub revision: u64,
    /// The object as of the change (`None` for a bookmark).
    pub entry: Option<Arc<Entry>>,
    /// The watch event as one JSON line, encoded once for every watcher.
    pub line: Bytes,
}

impl Event {
    fn change(kind: &'static str, revision: u64, entry: Arc<Entry>) -> Event {
        let line = event_line(kind, &entry.json);
        Event {
            kind,
            revision,
            entry: Some(entry),
            line,
        }
    }
}

/// `{"type":KIND,"object":OBJECT}` and a newline.
pub fn event_line(kind: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + kind.len() + 24);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

#[derive(Debug)]
struct State {
    /// Every change up to this revision is reflected (0: not loaded yet).
    revision: u64,
    /// Objects by `namespace/name` (or `name`).
    objects: BTreeMap<String, Arc<Entry>>,
    /// The latest changes, oldest first.
    history: VecDeque<Arc<Event>>,
    /// Every change after this revision is in `history`.
    since: u64,
    tx: broadcast::Sender<Batch>,
}

/// Changes that reach watchers together (one store-watch batch).
pub type Batch = Arc<Vec<Arc<Event>>>;

/// The cache of one resource.
#[derive(Debug)]
pub struct ResourceCache {
    res: &'static Resource,
    state: RwLock<State>,
    reached: watch::Sender<u64>,
    /// Snapshots of paginated lists (revision, namespace, objects), newest last.
    paged: Mutex<VecDeque<Paged>>,
}

/// The objects a paginated list started from, kept for its next pages.
#[derive(Debug)]
struct Paged {
    revision: u64,
    ns: Option<String>,
    entries: Arc<Vec<Arc<Entry>>>,
    at: std::time::Instant,
}

/// What a new watcher starts with.
#[derive(Debug)]
pub struct Subscription {
    /// Current objects, to send as `ADDED` first (watches without a `resourceVersion`).
    pub snapshot: Vec<Arc<Entry>>,
    /// Changes after the watch's `resourceVersion`, to send first.
    pub replay: Vec<Arc<Event>>,
    /// Every later change, in batches.
    pub rx: broadcast::Receiver<Batch>,
    /// The revision the watch starts after.
    pub revision: u64,
}

impl ResourceCache {
    fn new(res: &'static Resource) -> ResourceCache {
        ResourceCache {
            res,
            state: RwLock::new(State {
                revision: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                since: 0,
                tx: broadcast::channel(FANOUT).0,
            }),
            reached: watch::channel(0).0,
            paged: Mutex::new(VecDeque::new()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces everything with a fresh list at `revision`. Watchers of the old contents are
    /// ended (their channel closes); they resume from their last `resourceVersion`.
    fn load(&self, items: Vec<Value>, revision: u64) {
        let objects = items
            .into_iter()
            .map(|v| {
                let e = Entry::new(v);
                (e.key(), Arc::new(e))
            })
            .collect();
        let mut st = self.write();
        *st = State {
            revision,
            objects,
            history: VecDeque::new(),
            since: revision,
            tx: broadcast::channel(FANOUT).0,
        };
        drop(st);
        self.reached.send_modify(|r| *r = (*r).max(revision));
    }

    /// Applies a batch of the store watch's changes at once, and sends watchers the batch's
    /// events as one message. With `bookmark`, watchers that asked for bookmarks hear of the
    /// revision reached (if it moved).
    fn commit(&self, changes: Vec<Change>, bookmark: bool) {
        // Encoding happens before the lock is taken.
        let mut decoded = Vec::with_capacity(changes.len());
        let mut progress = 0;
        for c in changes {
            match c {
                Change::Object(kind, value, json) => {
                    let revision = crate::storage::resource_version(&value).unwrap_or(0);
                    let entry = Arc::new(match json {
                        Some(json) => Entry::with_json(value, json),
                        None => Entry::new(value),
                    });
                    decoded.push(Arc::new(Event::change(kind, revision, entry)));
                }
                Change::Progress(r) => progress = progress.max(r),
                Change::Expired(_) => {}
            }
        }
        let mut st = self.write();
        for event in &decoded {
            let Some(entry) = &event.entry else { continue };
            let key = entry.key();
            if event.kind == "DELETED" {
                st.objects.remove(&key);
            } else {
                st.objects.insert(key, entry.clone());
            }
            st.history.push_back(event.clone());
        }
        while st.history.len() > HISTORY {
            if let Some(old) = st.history.pop_front() {
                st.since = old.revision;
            }
        }
        let moved = progress > st.revision;
        if moved {
            st.revision = progress;
        }
        // A bookmark tells where the watch stands even when nothing changed.
        if bookmark && progress > 0 {
            let meta = serde_json::json!({
                "kind": self.res.kind,
                "apiVersion": self.res.api_version(),
                "metadata": {"resourceVersion": st.revision.to_string()},
            });
            decoded.push(Arc::new(Event {
                kind: "BOOKMARK",
                revision: st.revision,
                entry: None,
                line: event_line("BOOKMARK", &serde_json::to_vec(&meta).unwrap_or_default()),
            }));
        }
        if !decoded.is_empty() {
            // No receivers is fine.
            let _ = st.tx.send(Arc::new(decoded));
        }
        drop(st);
        if moved {
            self.reached.send_modify(|r| *r = (*r).max(progress));
        }
    }

    /// One object, if the cache has it.
    pub fn get(&self, ns: Option<&str>, name: &str) -> Option<Arc<Entry>> {
        let key = match ns.filter(|_| self.res.namespaced) {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        self.read().objects.get(&key).cloned()
    }

    /// The objects in `ns` (all if `None`) and the revision they reflect.
    pub fn list(&self, ns: Option<&str>) -> (Vec<Arc<Entry>>, u64) {
        let st = self.read();
        (self.entries(&st, ns), st.revision)
    }

    /// Keeps `entries` (the objects in `ns` at `revision`) for the next pages of a list.
    pub fn keep_for_pages(&self, revision: u64, ns: Option<&str>, entries: Arc<Vec<Arc<Entry>>>) {
        let mut paged = self.paged.lock().unwrap_or_else(|e| e.into_inner());
        paged.retain(|p| {
            p.at.elapsed() < PAGED_FOR && !(p.revision == revision && p.ns.as_deref() == ns)
        });
        if paged.len() >= PAGED_KEPT {
            paged.pop_front();
        }
        paged.push_back(Paged {
            revision,
            ns: ns.map(String::from),
            entries,
            at: std::time::Instant::now(),
        });
    }

    /// The objects in `ns` at `revision`, if a paginated list kept them.
    pub fn pages_at(&self, revision: u64, ns: Option<&str>) -> Option<Arc<Vec<Arc<Entry>>>> {
        let paged = self.paged.lock().unwrap_or_else(|e| e.into_inner());
        paged
            .iter()
            .find(|p| p.revision == revision && p.ns.as_deref() == ns && p.at.elapsed() < PAGED_FOR)
            .map(|p| p.entries.clone())
    }

    fn entries(&self, st: &State, ns: Option<&str>) -> Vec<Arc<Entry>> {
        match ns.filter(|_| self.res.namespaced) {
            // `/` sorts just before `0`: the range holds exactly the keys `ns/…`.
            Some(ns) => st
                .objects
                .range(format!("{ns}/")..format!("{ns}0"))
                .map(|(_, e)| e.clone())
                .collect(),
            None => st.objects.values().cloned().collect(),
        }
    }

    /// Starts a watch: after `from` (replaying what the cache still holds), or with `None` from
    /// now with the current objects as a snapshot. `None` when `from` is older than the
    /// cache's history (the store must serve that watch).
    pub fn subscribe(&self, ns: Option<&str>, from: Option<u64>) -> Option<Subscription> {
        let st = self.read();
        match from {
            None => Some(Subscription {
                snapshot: self.entries(&st, ns),
                replay: Vec::new(),
                rx: st.tx.subscribe(),
                revision: st.revision,
            }),
            Some(from) if from < st.since => None,
            Some(from) => {
                let replay = st
                    .history
                    .iter()
                    .filter(|e| e.revision > from)
                    .cloned()
                    .collect();
                Some(Subscription {
                    snapshot: Vec::new(),
                    replay,
                    rx: st.tx.subscribe(),
                    revision: from,
                })
            }
        }
    }
}

/// The caches of one master, started on first use.
#[derive(Debug)]
pub struct Caches<B> {
    storage: Storage<B>,
    caches: Mutex<HashMap<(&'static str, &'static str), Arc<ResourceCache>>>,
}

impl<B: Backend + Send + Sync + 'static> Caches<B> {
    /// Caches over `storage`.
    pub fn new(storage: Storage<B>) -> Caches<B> {
        Caches {
            storage,
            caches: Mutex::new(HashMap::new()),
        }
    }

    fn cache(&self, res: &'static Resource) -> Arc<ResourceCache> {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches
            .entry((res.group, res.plural))
            .or_insert_with(|| {
                let cache = Arc::new(ResourceCache::new(res));
                tokio::spawn(follow(cache.clone(), self.storage.clone()));
                cache
            })
            .clone()
    }

    /// Starts the cache of every served resource, so that first lists are fast too.
    pub fn start_all(&self) {
        for res in crate::resources::RESOURCES {
            self.cache(res);
        }
    }

    /// The cache of `res` as it is now, if it has loaded (it may lag the store).
    pub fn current(&self, res: &'static Resource) -> Option<Arc<ResourceCache>> {
        let cache = self.cache(res);
        let loaded = *cache.reached.borrow() > 0;
        loaded.then_some(cache)
    }

    /// The cache of `res` once it reflects every change up to `min` (at least its first
    /// list); `None` if that does not happen within [`FRESH_WAIT`].
    pub async fn fresh(&self, res: &'static Resource, min: u64) -> Option<Arc<ResourceCache>> {
        let cache = self.cache(res);
        let mut reached = cache.reached.subscribe();
        let deadline = tokio::time::Instant::now() + FRESH_WAIT;
        loop {
            if *reached.borrow_and_update() >= min.max(1) {
                return Some(cache);
            }
            self.storage.request_progress();
            let step = (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline);
            if let Ok(Err(_)) = tokio::time::timeout_at(step, reached.changed()).await {
                return None;
            }
            if tokio::time::Instant::now() >= deadline {
                return (*reached.borrow() >= min.max(1)).then_some(cache);
            }
        }
    }
}

/// Keeps `cache` in step with the store: list, then follow the watch; start over (list again)
/// if the watch ends.
async fn follow<B: Backend + Send + Sync + 'static>(
    cache: Arc<ResourceCache>,
    storage: Storage<B>,
) {
    loop {
        let (items, revision) = match storage.list(cache.res, None).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(resource = cache.res.plural, error = %e, "watch cache: list failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        cache.load(items, revision);
        let mut changes = storage.watch(cache.res, None, revision);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        let mut bookmark_due = false;
        let mut pending: Vec<Change> = Vec::new();
        // When the pending batch goes out (set by its first change).
        let mut flush_at: Option<tokio::time::Instant> = None;
        let ended = loop {
            let flush = async {
                match flush_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                change = changes.recv() => match change {
                    Some(Change::Expired(e)) => break Some(e),
                    Some(c) => {
                        pending.push(c);
                        flush_at.get_or_insert_with(|| tokio::time::Instant::now() + LINGER);
                    }
                    None => break None,
                },
                _ = flush => {
                    cache.commit(std::mem::take(&mut pending), bookmark_due);
                    bookmark_due = false;
                    flush_at = None;
                }
                _ = tick.tick() => {
                    bookmark_due = true;
                    storage.request_progress();
                }
            }
        };
        if let Some(e) = ended {
            tracing::warn!(resource = cache.res.plural, error = %e, "watch cache: store watch ended; reloading");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;
    use serde_json::json;

    fn cm(ns: &str, name: &str, rv: u64) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string()}})
    }

    fn cache() -> ResourceCache {
        ResourceCache::new(resources::find("", "v1", "configmaps").unwrap())
    }

    #[test]
    fn lists_by_namespace_and_encodes_each_object_once() {
        let c = cache();
        c.load(vec![cm("a", "x", 2), cm("ab", "y", 3), cm("b", "z", 4)], 5);
        let (items, rv) = c.list(Some("a"));
        assert_eq!(rv, 5);
        assert_eq!(items.len(), 1, "namespace a must not include ab");
        let parsed: Value = serde_json::from_slice(&items[0].json).unwrap();
        assert_eq!(parsed["metadata"]["name"], "x");
        assert_eq!(c.list(None).0.len(), 3);
    }

    #[test]
    fn watchers_replay_from_history_and_see_each_later_change_once() {
        let c = cache();
        c.load(vec![], 1);
        c.commit(
            vec![
                Change::Object("ADDED", cm("a", "x", 2), None),
                Change::Progress(2),
            ],
            false,
        );
        c.commit(
            vec![
                Change::Object("MODIFIED", cm("a", "x", 3), None),
                Change::Progress(3),
            ],
            false,
        );
        let mut sub = c.subscribe(None, Some(2)).unwrap();
        assert_eq!(
            sub.replay.iter().map(|e| e.revision).collect::<Vec<_>>(),
            [3]
        );
        c.commit(
            vec![
                Change::Object("DELETED", cm("a", "x", 4), None),
                Change::Progress(4),
                Change::Object("ADDED", cm("b", "y", 5), None),
                Change::Progress(5),
            ],
            false,
        );
        let batch = sub.rx.try_recv().unwrap();
        let next = &batch[0];
        assert_eq!((next.kind, next.revision), ("DELETED", 4));
        assert_eq!((batch[1].kind, batch.len()), ("ADDED", 2));
        assert!(sub.rx.try_recv().is_err());
        assert_eq!(c.list(None).0.len(), 1);
        assert_eq!(c.list(None).1, 5);
        let line: Value = serde_json::from_slice(&next.line).unwrap();
        assert_eq!(line["type"], "DELETED");
        assert_eq!(line["object"]["metadata"]["resourceVersion"], "4");
    }

    #[test]
    fn watches_older_than_the_history_go_to_the_store_and_bookmarks_carry_the_revision() {
        let c = cache();
        c.load(vec![], 10);
        assert!(c.subscribe(None, Some(9)).is_none());
        let mut sub = c.subscribe(None, Some(10)).unwrap();
        c.commit(vec![Change::Progress(12)], true);
        let batch = sub.rx.try_recv().unwrap();
        let b = &batch[0];
        assert_eq!(b.kind, "BOOKMARK");
        let line: Value = serde_json::from_slice(&b.line).unwrap();
        assert_eq!(line["object"]["metadata"]["resourceVersion"], "12");
        assert_eq!(line["object"]["kind"], "ConfigMap");
        // Progress never goes backwards; a bookmark still says where the cache stands.
        c.commit(vec![Change::Progress(11)], true);
        let again = sub.rx.try_recv().unwrap();
        assert_eq!((again[0].kind, again[0].revision), ("BOOKMARK", 12));
        c.commit(vec![Change::Progress(13)], false);
        assert!(sub.rx.try_recv().is_err());
        assert_eq!(*c.reached.borrow(), 13);
    }
}
