//! The durable Raft log on RocksDB (openraft's `RaftLogStorage`, storage-v2).
//!
//! Column families: `log` (index, big-endian → bincode entry) and `meta` (vote, committed log
//! id, last purged log id). Every write that openraft must be able to rely on after a crash —
//! appended entries, the vote — is written with the WAL synced, and `append` reports the flush
//! to openraft only after that write returned (the official RocksDB example signals first and
//! syncs never; see FIELD-NOTES.md).
//!
//! The log has its own RocksDB instance beside the state machine's, as etcd keeps its WAL apart
//! from its database: log writes are sequential and synced, state machine writes are not.
//!
//! The durable operations are inherent methods, tested directly; the openraft traits are thin
//! wrappers over them.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use crate::codec::{decode, encode};
use crate::StoreError;

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const META_VOTE: &[u8] = b"vote";
const META_COMMITTED: &[u8] = b"committed";
const META_PURGED: &[u8] = b"last_purged";

/// A log entry of the store's Raft group.
pub type LogEntry = Entry<TypeConfig>;

/// The Raft log. Cheap to clone: clones share the database (openraft's log reader is one).
#[derive(Clone)]
pub struct RaftLog {
    db: Arc<DB>,
    syncer: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

/// A WAL sync this slow is logged.
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(100);

/// The WAL syncer: appends write without waiting for the disk and queue their flush callback
/// here; one thread syncs the WAL for everything queued so far (group commit) and reports
/// the flushes in append order. The Raft core never waits on an fsync, and concurrent
/// appends share one.
fn spawn_syncer(db: std::sync::Weak<DB>) -> std::sync::mpsc::Sender<LogFlushed<TypeConfig>> {
    let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
    let spawned = std::thread::Builder::new()
        .name("raft-log-sync".into())
        .spawn(move || {
            // Ends when every RaftLog handle (every sender) is gone.
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                // A weak handle, so that the database closes with its last RaftLog.
                let started = std::time::Instant::now();
                let synced = match db.upgrade() {
                    Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
                    None => Err("the Raft log is closed".to_string()),
                };
                // As etcd's "slow fdatasync": every write waits for this one.
                let took = started.elapsed();
                if took >= SLOW_SYNC {
                    tracing::warn!(
                        took_ms = took.as_millis() as u64,
                        appends = batch.len(),
                        "syncing the Raft log took long (a slow disk delays every write)"
                    );
                }
                if let Err(e) = &synced {
                    crate::storage_failed(&StoreError::Corrupt(format!(
                        "syncing the Raft log: {e}"
                    )));
                }
                for callback in batch {
                    let result = match &synced {
                        Ok(()) => Ok(()),
                        Err(e) => Err(std::io::Error::other(format!("syncing the Raft log: {e}"))),
                    };
                    callback.log_io_completed(result);
                }
            }
        });
    if let Err(e) = spawned {
        // Without the thread every flush callback is dropped and Raft stops on it.
        tracing::error!(error = %e, "cannot start the Raft log sync thread");
    }
    tx
}

impl Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog")
            .field("path", &self.db.path())
            .finish()
    }
}

fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

impl RaftLog {
    /// Opens (creating if needed) the log in `path`.
    pub fn open(path: &Path) -> Result<RaftLog, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_LOG, CF_META]
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?);
        Ok(RaftLog {
            syncer: spawn_syncer(Arc::downgrade(&db)),
            db,
        })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} opened with the log"))
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.db.get_cf(self.cf(CF_META), key)? {
            Some(b) => Ok(Some(decode(&b, "log metadata")?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], v: &T) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), key, encode(v)?);
        Ok(self.db.write_opt(batch, &synced())?)
    }

    /// The last purged log id and the last log id present (or, with no entries, the purged one).
    pub fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let purged: Option<LogId<u64>> = self.meta(META_PURGED)?;
        let mut it = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End);
        let last = match it.next() {
            Some(item) => Some(decode::<LogEntry>(&item?.1, "log entry")?.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    /// Appends `entries` and returns once they are on disk (WAL synced).
    pub fn append(&self, entries: impl IntoIterator<Item = LogEntry>) -> Result<(), StoreError> {
        self.write_entries(entries, &synced())
    }

    fn write_entries(
        &self,
        entries: impl IntoIterator<Item = LogEntry>,
        opts: &WriteOptions,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for e in entries {
            batch.put_cf(self.cf(CF_LOG), e.log_id.index.to_be_bytes(), encode(&e)?);
        }
        Ok(self.db.write_opt(batch, opts)?)
    }

    /// Entries with index in `[start, end)`, in order, stopping at the first gap.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<LogEntry>, StoreError> {
        let mut out = Vec::new();
        let from = start.to_be_bytes();
        let it = self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            let index = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("malformed log index".into()))?,
            );
            let contiguous = out
                .last()
                .is_none_or(|prev: &LogEntry| prev.log_id.index + 1 == index);
            if index >= end || !contiguous {
                break;
            }
            out.push(decode(&v, "log entry")?);
        }
        Ok(out)
    }

    /// Removes every entry from index `from` on (a new leader overwrites a conflicting tail).
    pub fn truncate(&self, from: u64) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOG), from.to_be_bytes(), u64::MAX.to_be_bytes());
        // u64::MAX itself is outside the half-open range; no real log reaches it.
        Ok(self.db.write_opt(batch, &synced())?)
    }

    /// Records `upto` as purged and removes every entry up to and including it.
    pub fn purge(&self, upto: LogId<u64>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), META_PURGED, encode(&upto)?);
        batch.delete_range_cf(
            self.cf(CF_LOG),
            0u64.to_be_bytes(),
            (upto.index + 1).to_be_bytes(),
        );
        Ok(self.db.write_opt(batch, &synced())?)
    }

    /// Persists the vote (synced: a member must never vote twice in a term).
    pub fn save_vote(&self, vote: &Vote<u64>) -> Result<(), StoreError> {
        self.put_meta(META_VOTE, vote)
    }

    /// The persisted vote.
    pub fn vote(&self) -> Result<Option<Vote<u64>>, StoreError> {
        self.meta(META_VOTE)
    }

    /// Records the committed log id (lets a restarted member re-apply without waiting).
    ///
    /// Not synced: openraft 0.9 awaits this on its core loop at every commit, and an fsync
    /// there would stall the core at each one. Losing the record (a power failure) only
    /// makes a restarted member wait for the leader to tell it the commit index again; the
    /// WAL is sequential, so a record that survives never names entries that did not.
    pub fn save_committed(&self, committed: &Option<LogId<u64>>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), META_COMMITTED, encode(committed)?);
        Ok(self.db.write(batch)?)
    }

    /// The persisted committed log id.
    pub fn committed(&self) -> Result<Option<LogId<u64>>, StoreError> {
        Ok(self.meta::<Option<LogId<u64>>>(META_COMMITTED)?.flatten())
    }
}

fn read_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: StoreError) -> StorageError<u64> {
    crate::storage_failed(&e);
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl RaftLogReader<TypeConfig> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError<u64>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e + 1,
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        self.entries(start, end).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = RaftLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        self.log_state().map_err(read_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        RaftLog::save_vote(self, vote)
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.vote()
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        RaftLog::save_committed(self, &committed).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.committed().map_err(read_err)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = LogEntry> + Send,
        I::IntoIter: Send,
    {
        // The entries are readable at once; the flush is reported only once the WAL is synced
        // (openraft counts an entry towards the quorum as soon as it is reported).
        match self.write_entries(entries, &WriteOptions::default()) {
            Ok(()) => {
                if let Err(unsent) = self.syncer.send(callback) {
                    let failed = std::io::Error::other("the Raft log sync thread is gone");
                    unsent.0.log_io_completed(Err(failed));
                }
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        RaftLog::truncate(self, log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        RaftLog::purge(self, log_id).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::super::Command;
    use super::*;

    fn entry(term: u64, index: u64) -> LogEntry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::Compact(index)),
        }
    }

    struct TempLog {
        dir: std::path::PathBuf,
    }

    impl TempLog {
        fn new(name: &str) -> TempLog {
            let dir = std::env::temp_dir()
                .join(format!("flotilla-raftlog-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            TempLog { dir }
        }
        fn open(&self) -> RaftLog {
            RaftLog::open(&self.dir).unwrap()
        }
    }

    impl Drop for TempLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn appended_entries_survive_reopening() {
        let t = TempLog::new("reopen");
        {
            let log = t.open();
            let state = log.log_state().unwrap();
            assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));
            log.append((1..=5).map(|i| entry(1, i))).unwrap();
            log.save_vote(&Vote::new(3, 2)).unwrap();
            log.save_committed(&Some(LogId::new(CommittedLeaderId::new(1, 1), 4)))
                .unwrap();
        }
        let log = t.open();
        let state = log.log_state().unwrap();
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(state.last_log_id.unwrap().index, 5);
        let got = log.entries(2, 4).unwrap();
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(got[0].payload, EntryPayload::Normal(Command::Compact(2)));
        assert_eq!(log.vote().unwrap(), Some(Vote::new(3, 2)));
        assert_eq!(log.committed().unwrap().unwrap().index, 4);
    }

    #[test]
    fn truncate_drops_the_tail_and_purge_the_head() {
        let t = TempLog::new("trim");
        let log = t.open();
        log.append((1..=10).map(|i| entry(1, i))).unwrap();
        log.truncate(8).unwrap();
        assert_eq!(log.log_state().unwrap().last_log_id.unwrap().index, 7);
        // A new leader's entries replace the truncated tail.
        log.append((8..=9).map(|i| entry(2, i))).unwrap();
        assert_eq!(log.entries(8, 100).unwrap()[0].log_id.leader_id.term, 2);
        let upto = LogId::new(CommittedLeaderId::new(1, 1), 5);
        log.purge(upto).unwrap();
        let state = log.log_state().unwrap();
        assert_eq!(state.last_purged_log_id, Some(upto));
        assert_eq!(state.last_log_id.unwrap().index, 9);
        assert!(log.entries(1, 6).unwrap().is_empty());
        assert_eq!(log.entries(6, 100).unwrap().len(), 4);
        // Purging everything leaves the purged id as the last one.
        log.purge(LogId::new(CommittedLeaderId::new(2, 1), 9))
            .unwrap();
        let state = log.log_state().unwrap();
        assert_eq!(state.last_purged_log_id, state.last_log_id);
    }

    #[tokio::test]
    async fn the_openraft_reader_honours_range_bounds() {
        let t = TempLog::new("reader");
        let mut log = t.open();
        log.append((1..=6).map(|i| entry(1, i))).unwrap();
        let idx = |v: Vec<LogEntry>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
        assert_eq!(idx(log.try_get_log_entries(2..4).await.unwrap()), [2, 3]);
        assert_eq!(idx(log.try_get_log_entries(5..).await.unwrap()), [5, 6]);
        assert_eq!(idx(log.try_get_log_entries(..=2).await.unwrap()), [1, 2]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.unwrap().index, 6);
    }
}
