//! The watch hub: delivers the store's changes to watchers, from any retained revision on.
//!
//! Every watcher has its own task that moves between two states:
//! - **catching up**: it reads history from the store (`Mvcc::history`) from the next revision
//!   it owes its client, until it has delivered everything the hub has been told about;
//! - **live**: it is registered with the hub and receives each committed revision's events
//!   through a bounded channel.
//!
//! The writer calls [`WatchHub::notify`] after each committed write. `notify` never blocks: if a
//! live watcher's channel is full, the hub drops that watcher's channel, and the watcher's task,
//! once it has drained what it had, goes back to catching up from the store. So a slow watcher
//! never blocks the store, and it never skips or repeats an event: its task remembers the next
//! revision it owes, and ignores live batches below it.
//!
//! Lock order: `HubState` is the only lock; it is held only to register, unregister and send
//! with `try_send`, never across an await or a store read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::keys::KeyRange;
use crate::types::{Event, EventKind};
use crate::{Mvcc, StoreError};

/// Live batches buffered per watcher before the hub considers it slow.
const LIVE_BUFFER: usize = 256;
/// History events read per catch-up step.
const CATCH_UP_CHUNK: usize = 1000;

/// What a client asks to watch.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// Which keys.
    pub range: KeyRange,
    /// First revision to deliver; 0 means "changes after now".
    pub start_revision: u64,
    /// Attach the previous version to each event.
    pub prev_kv: bool,
    /// Leave out puts.
    pub no_put: bool,
    /// Leave out deletes.
    pub no_delete: bool,
    /// Answer [`WatchHub::request_progress`] with [`WatchMessage::Progress`].
    pub progress: bool,
}

/// What a watcher's client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// The events of one revision, all of them, in order.
    Events {
        /// The revision.
        revision: u64,
        /// The events (after filters).
        events: Vec<Event>,
    },
    /// The start revision was compacted away; the watch ends.
    Compacted {
        /// The store's compacted revision.
        compact_revision: u64,
    },
    /// Every event of this watch up to `revision` has been delivered (sent when the watch
    /// turns live after catching up, and in answer to [`WatchHub::request_progress`]).
    Progress {
        /// The revision.
        revision: u64,
    },
    /// The store failed; the watch ends.
    Failed(String),
}

/// One committed revision, as the writer hands it to the hub. A batch without events is a
/// progress marker: every revision up to its own has been handed over before it.
#[derive(Debug, Clone)]
struct Batch {
    revision: u64,
    events: Arc<Vec<Event>>,
}

#[derive(Debug, Default)]
struct HubState {
    /// The newest revision the hub has been notified of.
    notified: u64,
    /// Live watchers: range, channel, and whether they want progress markers.
    live: HashMap<u64, (KeyRange, mpsc::Sender<Batch>, bool)>,
    next_id: u64,
}

/// The hub. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WatchHub {
    store: Arc<Mvcc>,
    state: Arc<Mutex<HubState>>,
}

impl WatchHub {
    /// A hub over `store`, whose writer will call [`WatchHub::notify`].
    pub fn new(store: Arc<Mvcc>) -> Result<WatchHub, StoreError> {
        let (current, _) = store.revisions()?;
        Ok(WatchHub {
            store,
            state: Arc::new(Mutex::new(HubState {
                notified: current,
                ..Default::default()
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the hub that `revision` committed with `events`. Never blocks.
    pub fn notify(&self, revision: u64, events: Vec<Event>) {
        let batch = Batch {
            revision,
            events: Arc::new(events),
        };
        let mut st = self.lock();
        st.notified = st.notified.max(revision);
        st.live.retain(|_, (range, tx, _)| {
            if !batch.events.iter().any(|e| range.contains(&e.kv.key)) {
                return !tx.is_closed();
            }
            // A full or closed channel drops the watcher from the live set: its task catches up
            // from history instead.
            tx.try_send(batch.clone()).is_ok()
        });
    }

    /// Asks every live watcher that wants progress to report it: each sends
    /// [`WatchMessage::Progress`] once it has delivered everything the hub has been told so
    /// far. A watcher that is catching up reports when it turns live instead. Never blocks.
    pub fn request_progress(&self) {
        let mut st = self.lock();
        let marker = Batch {
            revision: st.notified,
            events: Arc::new(Vec::new()),
        };
        st.live
            .retain(|_, (_, tx, progress)| !*progress || tx.try_send(marker.clone()).is_ok());
    }

    /// The newest revision the hub has been told about (the member's applied revision).
    pub fn current_revision(&self) -> u64 {
        self.lock().notified
    }

    /// Number of watchers currently live (not catching up).
    pub fn live_watchers(&self) -> usize {
        self.lock().live.len()
    }

    /// Starts a watch. Messages arrive on the returned receiver, which holds at most `buffer`
    /// of them; dropping it cancels the watch.
    pub fn watch(&self, req: WatchRequest, buffer: usize) -> mpsc::Receiver<WatchMessage> {
        let (out, rx) = mpsc::channel(buffer.max(1));
        let start = match req.start_revision {
            0 => self.lock().notified + 1,
            r => r,
        };
        let hub = self.clone();
        tokio::spawn(async move { hub.run_watcher(req, start, out).await });
        rx
    }

    async fn run_watcher(self, req: WatchRequest, mut next: u64, out: mpsc::Sender<WatchMessage>) {
        let id = {
            let mut st = self.lock();
            st.next_id += 1;
            st.next_id
        };
        loop {
            // Catching up: deliver history until it covers every notified revision.
            let live = loop {
                let store = self.store.clone();
                let range = req.range.clone();
                let read = tokio::task::spawn_blocking(move || {
                    store.history(next, &range, true, CATCH_UP_CHUNK)
                })
                .await;
                let (header, events) = match read {
                    Ok(Ok(r)) => r,
                    Ok(Err(StoreError::Compacted { compacted, .. })) => {
                        let _ = out
                            .send(WatchMessage::Compacted {
                                compact_revision: compacted,
                            })
                            .await;
                        return;
                    }
                    Ok(Err(e)) => {
                        let _ = out.send(WatchMessage::Failed(e.to_string())).await;
                        return;
                    }
                    Err(e) => {
                        let _ = out.send(WatchMessage::Failed(e.to_string())).await;
                        return;
                    }
                };
                let complete = events.len() < CATCH_UP_CHUNK;
                let last = events.last().map(|e| e.kv.mod_revision);
                for (revision, group) in group_by_revision(events) {
                    if !deliver(&out, &req, revision, &group).await {
                        return;
                    }
                }
                next = match (complete, last) {
                    (true, _) => next.max(header.revision + 1),
                    (false, Some(rev)) => rev + 1,
                    (false, None) => next.max(header.revision + 1),
                };
                let mut st = self.lock();
                if st.notified < next {
                    let (tx, rx) = mpsc::channel(LIVE_BUFFER);
                    st.live.insert(id, (req.range.clone(), tx, req.progress));
                    break rx;
                }
            };
            if req.progress
                && out
                    .send(WatchMessage::Progress { revision: next - 1 })
                    .await
                    .is_err()
            {
                self.lock().live.remove(&id);
                return;
            }
            // Live: deliver batches until the hub drops us (too slow) or the client goes away.
            let mut live = live;
            loop {
                tokio::select! {
                    batch = live.recv() => match batch {
                        Some(b) if b.events.is_empty() => {
                            next = next.max(b.revision + 1);
                            let progress = WatchMessage::Progress { revision: next - 1 };
                            if out.send(progress).await.is_err() {
                                self.lock().live.remove(&id);
                                return;
                            }
                        }
                        Some(b) if b.revision < next => {}
                        Some(b) => {
                            let mine: Vec<Event> = b
                                .events
                                .iter()
                                .filter(|e| req.range.contains(&e.kv.key))
                                .cloned()
                                .collect();
                            if !deliver(&out, &req, b.revision, &mine).await {
                                self.lock().live.remove(&id);
                                return;
                            }
                            next = b.revision + 1;
                        }
                        None => break,
                    },
                    _ = out.closed() => {
                        self.lock().live.remove(&id);
                        return;
                    }
                }
            }
        }
    }
}

fn group_by_revision(events: Vec<Event>) -> Vec<(u64, Vec<Event>)> {
    let mut out: Vec<(u64, Vec<Event>)> = Vec::new();
    for e in events {
        let rev = e.kv.mod_revision;
        match out.last_mut() {
            Some((r, group)) if *r == rev => group.push(e),
            _ => out.push((rev, vec![e])),
        }
    }
    out
}

/// Sends one revision's events after the request's filters; false if the client is gone.
async fn deliver(
    out: &mpsc::Sender<WatchMessage>,
    req: &WatchRequest,
    revision: u64,
    events: &[Event],
) -> bool {
    let events: Vec<Event> = events
        .iter()
        .filter(|e| match e.kind {
            EventKind::Put => !req.no_put,
            EventKind::Delete => !req.no_delete,
        })
        .map(|e| {
            let mut e = e.clone();
            if !req.prev_kv {
                e.prev_kv = None;
            }
            e
        })
        .collect();
    if events.is_empty() {
        return !out.is_closed();
    }
    out.send(WatchMessage::Events { revision, events })
        .await
        .is_ok()
}

#[cfg(test)]
mod tests;
