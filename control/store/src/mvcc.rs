//! The multi-version key-value store (etcd v3 semantics) on RocksDB.
//!
//! Column families:
//! - `kv`: key → its current [`KeyValue`]. Serves reads at the current revision with one range
//!   scan. Deleted keys are absent.
//! - `index`: `escape(key) ++ revision` → 0 (put) or 1 (tombstone). All versions of a key are
//!   adjacent and in revision order; serves reads at past revisions and compaction.
//! - `history`: revision → the change made at that revision. Serves watch replay in revision
//!   order and the values of past versions.
//! - `meta`: the current and compacted revisions (and, for the Raft state machine, whatever the
//!   caller stores alongside a write).
//!
//! Each transaction is one RocksDB `WriteBatch` (atomic), written with `sync` when the store is
//! opened with [`MvccOptions::sync`]. Reads run on a RocksDB snapshot, so the revision they
//! report and the data they return always agree.
//!
//! Lock order: `write` is the only lock; it serialises writers (as the Raft state machine does
//! anyway) and is never held while waiting for anything but RocksDB.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBRawIteratorWithThreadMode, Options,
    SnapshotWithThreadMode, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::keys::{escape, unescape, KeyRange};
use crate::revision::{Revision, REVISION_LEN};
use crate::types::*;
use crate::StoreError;

const CF_KV: &str = "kv";
const CF_INDEX: &str = "index";
const CF_HISTORY: &str = "history";
const CF_META: &str = "meta";

const META_CURRENT: &[u8] = b"current_revision";
const META_COMPACTED: &[u8] = b"compacted_revision";

/// Prefix of caller-owned keys in `meta`, apart from the store's own.
const META_USER: &[u8] = b"user/";

const ALL_CFS: [&str; 4] = [CF_KV, CF_INDEX, CF_HISTORY, CF_META];

fn meta_key(k: &[u8]) -> Vec<u8> {
    [META_USER, k].concat()
}

/// One row of an exported state: column family index, key, value (byte strings encode as
/// bytes, not as sequences of numbers).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Row(
    pub u8,
    #[serde(with = "serde_bytes")] pub Vec<u8>,
    #[serde(with = "serde_bytes")] pub Vec<u8>,
);

/// A caller-owned metadata entry: (key, value).
pub type MetaEntry = (Vec<u8>, Vec<u8>);

/// A change to caller-owned metadata, applied in the same batch as a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaOp {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key`.
    Delete(Vec<u8>),
}

const TOMBSTONE: u8 = 1;
const LIVE: u8 = 0;

/// How the store is opened.
#[derive(Debug, Clone, Copy)]
pub struct MvccOptions {
    /// Sync the write-ahead log before a write returns. Off only where durability comes from
    /// elsewhere (the Raft log) or in tests.
    pub sync: bool,
}

impl Default for MvccOptions {
    fn default() -> Self {
        MvccOptions { sync: true }
    }
}

/// What the `history` family stores per revision.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    kind: EventKind,
    kv: KeyValue,
}

type Snapshot<'a> = SnapshotWithThreadMode<'a, DB>;

/// The multi-version store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Mvcc {
    db: DB,
    sync: bool,
    write: Mutex<()>,
}

impl std::fmt::Debug for Mvcc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mvcc")
            .field("path", &self.db.path())
            .finish()
    }
}

impl Mvcc {
    /// Opens (creating if needed) the store in `path`.
    pub fn open(path: &Path, opts: MvccOptions) -> Result<Mvcc, StoreError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        let cfs = ALL_CFS
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        Ok(Mvcc {
            db,
            sync: opts.sync,
            write: Mutex::new(()),
        })
    }

    /// The directory holding the store.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // The families are created at open; their absence is a programming error.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} opened with the store"))
    }

    fn meta_u64(&self, snap: &Snapshot<'_>, key: &[u8]) -> Result<u64, StoreError> {
        match snap.get_cf(self.cf(CF_META), key)? {
            None => Ok(0),
            Some(b) => b
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt(format!("meta {key:?} is {} bytes", b.len()))),
        }
    }

    /// The current and the compacted revision.
    pub fn revisions(&self) -> Result<(u64, u64), StoreError> {
        let snap = self.db.snapshot();
        Ok((
            self.meta_u64(&snap, META_CURRENT)?,
            self.meta_u64(&snap, META_COMPACTED)?,
        ))
    }

    /// Reads a key range, at the current revision or a past one.
    pub fn range(&self, req: &RangeRequest) -> Result<(Header, RangeResponse), StoreError> {
        let snap = self.db.snapshot();
        let view = View::new(self, &snap)?;
        let resp = view.range(req, &BTreeMap::new())?;
        Ok((
            Header {
                revision: view.current,
            },
            resp,
        ))
    }

    /// Runs a transaction atomically. Returns the response and the events it produced, in
    /// order (all at the response header's revision).
    pub fn txn(&self, req: &TxnRequest) -> Result<(Header, TxnResponse, Vec<Event>), StoreError> {
        self.txn_with_meta(req, &[])
    }

    /// Runs a transaction and applies `meta` (caller-owned metadata, such as the Raft state
    /// machine's last applied log id) in the same atomic batch. `meta` is written even when the
    /// transaction writes nothing; if the transaction fails, nothing is written.
    pub fn txn_with_meta(
        &self,
        req: &TxnRequest,
        meta: &[MetaOp],
    ) -> Result<(Header, TxnResponse, Vec<Event>), StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let snap = self.db.snapshot();
        let mut run = Run::new(View::new(self, &snap)?);
        let result = run.txn(req)?;
        self.commit(run, meta)?;
        Ok(result)
    }

    /// Runs transactions one after the other — each sees the writes of those before it and
    /// writes at its own revision, as if each were its own [`Mvcc::txn`] — and writes all of
    /// them with `meta` in one atomic batch: a crash applies all or none. Each transaction's
    /// result is its own: a refused one (duplicate key, compacted revision…) writes nothing
    /// and does not stop the others. Errors of the storage itself fail the whole call.
    ///
    /// A transaction reading at an explicit revision must run alone: the history it would read
    /// from does not hold the revisions written earlier in the same call.
    pub fn txns_with_meta(
        &self,
        reqs: &[&TxnRequest],
        meta: &[MetaOp],
    ) -> Result<Vec<TxnOutcome>, StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let snap = self.db.snapshot();
        let mut run = Run::new(View::new(self, &snap)?);
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            match run.txn(req) {
                Err(e @ (StoreError::Storage(_) | StoreError::Corrupt(_))) => return Err(e),
                r => out.push(r),
            }
        }
        self.commit(run, meta)?;
        Ok(out)
    }

    /// Writes what `run` recorded, the new current revision and `meta` as one batch.
    fn commit(&self, run: Run<'_>, meta: &[MetaOp]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for op in &run.ops {
            match op {
                BatchOp::Put(cf, k, v) => batch.put_cf(self.cf(cf), k, v),
                BatchOp::Delete(cf, k) => batch.delete_cf(self.cf(cf), k),
            }
        }
        if run.wrote {
            batch.put_cf(
                self.cf(CF_META),
                META_CURRENT,
                run.view.current.to_be_bytes(),
            );
        }
        self.add_meta(&mut batch, meta);
        if !batch.is_empty() {
            let mut wo = WriteOptions::default();
            wo.set_sync(self.sync);
            self.db.write_opt(batch, &wo)?;
        }
        Ok(())
    }

    fn add_meta(&self, batch: &mut WriteBatch, meta: &[MetaOp]) {
        for op in meta {
            match op {
                MetaOp::Put(k, v) => batch.put_cf(self.cf(CF_META), meta_key(k), v),
                MetaOp::Delete(k) => batch.delete_cf(self.cf(CF_META), meta_key(k)),
            }
        }
    }

    /// Makes every write so far durable (syncs the write-ahead log), for a store opened
    /// without [`MvccOptions::sync`].
    pub fn sync(&self) -> Result<(), StoreError> {
        Ok(self.db.flush_wal(true)?)
    }

    /// Applies caller-owned metadata atomically.
    pub fn write_meta(&self, meta: &[MetaOp]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.add_meta(&mut batch, meta);
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        Ok(self.db.write_opt(batch, &wo)?)
    }

    /// Reads caller-owned metadata.
    pub fn read_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_META), meta_key(key))?)
    }

    /// Caller-owned metadata whose keys start with `prefix`, as (key, value) pairs.
    pub fn scan_meta(&self, prefix: &[u8]) -> Result<Vec<MetaEntry>, StoreError> {
        let full = meta_key(prefix);
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_META));
        it.seek(&full);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(&full) {
                break;
            }
            out.push((k[META_USER.len()..].to_vec(), v.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Every current key-value with a lease attached (to rebuild the lease table on start).
    pub fn leased_keys(&self) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_KV));
        it.seek_to_first();
        while let Some(v) = it.value() {
            let kv: KeyValue = decode(v, "key-value")?;
            if kv.lease != 0 {
                out.push((kv.lease, kv.key));
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The whole state (every column family) as one byte string, read from one consistent
    /// RocksDB snapshot: what a Raft snapshot carries.
    pub fn export(&self) -> Result<Vec<u8>, StoreError> {
        let snap = self.db.snapshot();
        let mut rows: Vec<Row> = Vec::new();
        for (i, name) in ALL_CFS.iter().enumerate() {
            let mut it = snap.raw_iterator_cf(self.cf(name));
            it.seek_to_first();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                rows.push(Row(i as u8, k.to_vec(), v.to_vec()));
                it.next();
            }
            it.status()?;
        }
        encode(&rows)
    }

    /// Replaces the whole state with an [`Mvcc::export`]ed one, atomically.
    pub fn import(&self, data: &[u8]) -> Result<(), StoreError> {
        let rows: Vec<Row> = decode(data, "snapshot")?;
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        for name in ALL_CFS {
            let mut it = self.db.raw_iterator_cf(self.cf(name));
            it.seek_to_first();
            while let Some(k) = it.key() {
                batch.delete_cf(self.cf(name), k);
                it.next();
            }
            it.status()?;
        }
        for Row(cf, k, v) in rows {
            let name = ALL_CFS
                .get(usize::from(cf))
                .ok_or_else(|| StoreError::Corrupt(format!("snapshot names column family {cf}")))?;
            batch.put_cf(self.cf(name), k, v);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        Ok(self.db.write_opt(batch, &wo)?)
    }

    /// Writes one key.
    pub fn put(&self, req: PutRequest) -> Result<(Header, PutResponse, Vec<Event>), StoreError> {
        let (h, mut resp, events) = self.txn(&TxnRequest {
            success: vec![Op::Put(req)],
            ..Default::default()
        })?;
        match resp.responses.pop() {
            Some(OpResponse::Put(p)) => Ok((h, p, events)),
            other => Err(StoreError::Corrupt(format!("put answered with {other:?}"))),
        }
    }

    /// Deletes a key range.
    pub fn delete(
        &self,
        req: DeleteRequest,
    ) -> Result<(Header, DeleteResponse, Vec<Event>), StoreError> {
        let (h, mut resp, events) = self.txn(&TxnRequest {
            success: vec![Op::Delete(req)],
            ..Default::default()
        })?;
        match resp.responses.pop() {
            Some(OpResponse::Delete(d)) => Ok((h, d, events)),
            other => Err(StoreError::Corrupt(format!(
                "delete answered with {other:?}"
            ))),
        }
    }

    /// Discards history up to `revision`: reads and watches below it fail with
    /// [`StoreError::Compacted`]. The newest version of each key at `revision` is kept.
    pub fn compact(&self, revision: u64) -> Result<Header, StoreError> {
        let current = {
            let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
            let (current, compacted) = self.revisions()?;
            if revision <= compacted {
                return Err(StoreError::Compacted {
                    requested: revision,
                    compacted,
                });
            }
            if revision > current {
                return Err(StoreError::FutureRevision {
                    requested: revision,
                    current,
                });
            }
            let mut wo = WriteOptions::default();
            wo.set_sync(self.sync);
            let mut batch = WriteBatch::default();
            batch.put_cf(self.cf(CF_META), META_COMPACTED, revision.to_be_bytes());
            self.db.write_opt(batch, &wo)?;
            current
        };
        // Physical removal needs no lock: it only removes versions that the new compacted
        // revision already hides, and writers only add newer ones.
        self.remove_compacted(revision)?;
        Ok(Header { revision: current })
    }

    fn remove_compacted(&self, revision: u64) -> Result<(), StoreError> {
        let snap = self.db.snapshot();
        let mut it = snap.raw_iterator_cf(self.cf(CF_INDEX));
        it.seek_to_first();
        let mut batch = WriteBatch::default();
        // Versions of the current key at or below `revision`: (index key, revision, tombstone).
        let mut group: Vec<(Vec<u8>, Revision, bool)> = Vec::new();
        let mut group_key: Option<Vec<u8>> = None;
        let flush = |group: &mut Vec<(Vec<u8>, Revision, bool)>, batch: &mut WriteBatch| {
            let keep_last =
                matches!(group.last(), Some((_, r, tomb)) if !*tomb || r.main == revision);
            let n = group.len() - usize::from(keep_last);
            for (ik, rev, _) in group.drain(..).take(n) {
                batch.delete_cf(self.cf(CF_INDEX), ik);
                batch.delete_cf(self.cf(CF_HISTORY), rev.to_bytes());
            }
        };
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (key, rest) =
                unescape(k).ok_or_else(|| StoreError::Corrupt("malformed index entry".into()))?;
            let rev = Revision::from_bytes(rest)
                .ok_or_else(|| StoreError::Corrupt("malformed index revision".into()))?;
            if group_key.as_deref() != Some(key.as_slice()) {
                if !group.is_empty() {
                    flush(&mut group, &mut batch);
                }
                group_key = Some(key);
            }
            if rev.main <= revision {
                group.push((k.to_vec(), rev, v.first() == Some(&TOMBSTONE)));
            }
            if batch.len() >= 10_000 {
                self.db.write(std::mem::take(&mut batch))?;
            }
            it.next();
        }
        it.status()?;
        if !group.is_empty() {
            flush(&mut group, &mut batch);
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// The changes to keys in `range` from revision `from` on, in revision order, at most
    /// `limit` of them (0: all). With `prev_kv`, each event carries the version it replaced
    /// (when history still holds it).
    pub fn history(
        &self,
        from: u64,
        range: &KeyRange,
        prev_kv: bool,
        limit: usize,
    ) -> Result<(Header, Vec<Event>), StoreError> {
        let snap = self.db.snapshot();
        let view = View::new(self, &snap)?;
        if from < view.compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted: view.compacted,
            });
        }
        let mut it = snap.raw_iterator_cf(self.cf(CF_HISTORY));
        it.seek(Revision::new(from, 0).to_bytes());
        let mut events = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let rev = Revision::from_bytes(k)
                .ok_or_else(|| StoreError::Corrupt("malformed history key".into()))?;
            let rec: Record = decode(v, "history record")?;
            if range.contains(&rec.kv.key) {
                // Stop only between revisions, so one revision's events stay together.
                if limit > 0 && events.len() >= limit && rev.sub == 0 {
                    break;
                }
                let prev = if prev_kv {
                    view.version_before(&rec.kv.key, rev)?
                } else {
                    None
                };
                events.push(Event {
                    kind: rec.kind,
                    kv: rec.kv,
                    prev_kv: prev,
                });
            }
            it.next();
        }
        it.status()?;
        Ok((
            Header {
                revision: view.current,
            },
            events,
        ))
    }
}

/// A consistent read view: one RocksDB snapshot and the revisions it holds.
struct View<'a> {
    store: &'a Mvcc,
    snap: &'a Snapshot<'a>,
    current: u64,
    compacted: u64,
}

type Overlay = BTreeMap<Vec<u8>, Option<KeyValue>>;

impl<'a> View<'a> {
    fn new(store: &'a Mvcc, snap: &'a Snapshot<'a>) -> Result<View<'a>, StoreError> {
        Ok(View {
            current: store.meta_u64(snap, META_CURRENT)?,
            compacted: store.meta_u64(snap, META_COMPACTED)?,
            store,
            snap,
        })
    }

    fn iter(&self, cf: &str) -> DBRawIteratorWithThreadMode<'a, DB> {
        self.snap.raw_iterator_cf(self.store.cf(cf))
    }

    /// The current version of `key`, seen through the transaction's own writes.
    fn get(&self, key: &[u8], overlay: &Overlay) -> Result<Option<KeyValue>, StoreError> {
        if let Some(v) = overlay.get(key) {
            return Ok(v.clone());
        }
        match self.snap.get_cf(self.store.cf(CF_KV), key)? {
            Some(b) => Ok(Some(decode(&b, "key-value")?)),
            None => Ok(None),
        }
    }

    /// Every current key-value in `range`, seen through the transaction's own writes.
    fn current(&self, range: &KeyRange, overlay: &Overlay) -> Result<Vec<KeyValue>, StoreError> {
        if let KeyRange::Single(key) = range {
            // A point lookup: cheaper than an iterator seek (every compare and put of a write
            // comes here).
            return Ok(self.get(key, overlay)?.into_iter().collect());
        }
        let mut out = Vec::new();
        let mut it = self.iter(CF_KV);
        it.seek(range.start());
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if range.is_past_end(k) {
                break;
            }
            if range.contains(k) {
                out.push(decode::<KeyValue>(v, "key-value")?);
            }
            it.next();
        }
        it.status()?;
        let pending: Vec<_> = overlay.range::<[u8], _>(range.bounds()).collect();
        if pending.is_empty() {
            return Ok(out);
        }
        let mut merged: BTreeMap<Vec<u8>, KeyValue> =
            out.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        for (k, v) in pending {
            match v {
                Some(kv) => merged.insert(k.clone(), kv.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_values().collect())
    }

    /// Every key-value in `range` as of `revision` (which must be retained).
    fn at_revision(&self, range: &KeyRange, revision: u64) -> Result<Vec<KeyValue>, StoreError> {
        let mut live: Vec<Revision> = Vec::new();
        let mut it = self.iter(CF_INDEX);
        it.seek(escape(range.start()));
        let mut cur_key: Option<Vec<u8>> = None;
        let mut latest: Option<(Revision, bool)> = None;
        let mut finish = |latest: &mut Option<(Revision, bool)>| {
            if let Some((rev, false)) = latest.take() {
                live.push(rev);
            }
        };
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (key, rest) =
                unescape(k).ok_or_else(|| StoreError::Corrupt("malformed index entry".into()))?;
            if range.is_past_end(&key) {
                break;
            }
            let rev = Revision::from_bytes(rest)
                .ok_or_else(|| StoreError::Corrupt("malformed index revision".into()))?;
            if cur_key.as_deref() != Some(key.as_slice()) {
                finish(&mut latest);
                cur_key = Some(key.clone());
            }
            if range.contains(&key) && rev.main <= revision {
                latest = Some((rev, v.first() == Some(&TOMBSTONE)));
            }
            it.next();
        }
        it.status()?;
        finish(&mut latest);
        live.into_iter()
            .map(|rev| self.record(rev).map(|r| r.kv))
            .collect()
    }

    fn record(&self, rev: Revision) -> Result<Record, StoreError> {
        match self
            .snap
            .get_cf(self.store.cf(CF_HISTORY), rev.to_bytes())?
        {
            Some(b) => decode(&b, "history record"),
            None => Err(StoreError::Corrupt(format!(
                "index names revision {rev:?} but history lacks it"
            ))),
        }
    }

    /// The version of `key` just before revision `rev`, if history still holds it.
    fn version_before(&self, key: &[u8], rev: Revision) -> Result<Option<KeyValue>, StoreError> {
        let mut it = self.iter(CF_INDEX);
        let prefix = escape(key);
        let mut target = prefix.clone();
        target.extend_from_slice(&rev.to_bytes());
        it.seek_for_prev(&target);
        if it.key() == Some(target.as_slice()) {
            it.prev();
        }
        match (it.key(), it.value()) {
            (Some(k), Some(v))
                if k.len() == prefix.len() + REVISION_LEN && k.starts_with(&prefix) =>
            {
                if v.first() == Some(&TOMBSTONE) {
                    return Ok(None);
                }
                let prev = Revision::from_bytes(&k[prefix.len()..])
                    .ok_or_else(|| StoreError::Corrupt("malformed index revision".into()))?;
                Ok(Some(self.record(prev)?.kv))
            }
            _ => Ok(None),
        }
    }

    fn range(&self, req: &RangeRequest, overlay: &Overlay) -> Result<RangeResponse, StoreError> {
        let kvs = match req.revision {
            0 => self.current(&req.range, overlay)?,
            r if r > self.current => {
                return Err(StoreError::FutureRevision {
                    requested: r,
                    current: self.current,
                })
            }
            r if r < self.compacted => {
                return Err(StoreError::Compacted {
                    requested: r,
                    compacted: self.compacted,
                })
            }
            r if r == self.current && overlay.is_empty() => self.current(&req.range, overlay)?,
            r => self.at_revision(&req.range, r)?,
        };
        let count = kvs.len() as u64;
        if req.count_only {
            return Ok(RangeResponse {
                kvs: Vec::new(),
                more: false,
                count,
            });
        }
        let mut kvs = kvs;
        let more = req.limit > 0 && count > req.limit;
        if more {
            kvs.truncate(req.limit as usize);
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse { kvs, more, count })
    }
}

/// One transaction's result: its header (the revision after it), its answer and its changes.
pub type TxnOutcome = Result<(Header, TxnResponse, Vec<Event>), StoreError>;

/// A write recorded for the batch: column family, key, value.
enum BatchOp {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
}

/// Transactions run one after another on one snapshot: what they wrote so far (the overlay
/// their reads see, the batch operations) and the revision they reached.
struct Run<'a> {
    /// The snapshot; its `current` advances with every transaction that writes.
    view: View<'a>,
    overlay: Overlay,
    ops: Vec<BatchOp>,
    wrote: bool,
}

impl<'a> Run<'a> {
    fn new(view: View<'a>) -> Run<'a> {
        Run {
            view,
            overlay: BTreeMap::new(),
            ops: Vec::new(),
            wrote: false,
        }
    }

    /// Runs one transaction at the next revision; a refused one leaves no trace.
    fn txn(&mut self, req: &TxnRequest) -> TxnOutcome {
        let (ops_before, main) = (self.ops.len(), self.view.current + 1);
        let mut w = WriteCtx {
            main,
            sub: 0,
            run: self,
            undo: Vec::new(),
            events: Vec::new(),
            put_keys: HashSet::new(),
            deleted: Vec::new(),
        };
        match w.txn(req) {
            Ok(resp) => {
                let (wrote, events) = (w.sub > 0, std::mem::take(&mut w.events));
                drop(w);
                if wrote {
                    self.view.current = main;
                    self.wrote = true;
                }
                Ok((
                    Header {
                        revision: self.view.current,
                    },
                    resp,
                    events,
                ))
            }
            Err(e) => {
                let undo = std::mem::take(&mut w.undo);
                drop(w);
                for (key, prev) in undo.into_iter().rev() {
                    match prev {
                        Some(v) => self.overlay.insert(key, v),
                        None => self.overlay.remove(&key),
                    };
                }
                self.ops.truncate(ops_before);
                Err(e)
            }
        }
    }
}

/// The state of one write transaction while it runs.
struct WriteCtx<'r, 'a> {
    run: &'r mut Run<'a>,
    /// The revision this transaction writes at.
    main: u64,
    /// The next sub-revision; also the number of writes so far.
    sub: u32,
    /// What the overlay held before each of this transaction's writes (to take them back).
    undo: Vec<(Vec<u8>, Option<Option<KeyValue>>)>,
    events: Vec<Event>,
    /// Keys put so far, and ranges deleted so far: etcd refuses a transaction that writes a key
    /// twice, since the outcome would depend on operation order in a surprising way.
    put_keys: HashSet<Vec<u8>>,
    deleted: Vec<KeyRange>,
}

impl WriteCtx<'_, '_> {
    fn next_revision(&mut self) -> Revision {
        let rev = Revision::new(self.main, self.sub);
        self.sub += 1;
        rev
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, StoreError> {
        let mut succeeded = true;
        for c in &req.compares {
            if !self.compare(c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                Op::Range(r) => OpResponse::Range(self.run.view.range(r, &self.run.overlay)?),
                Op::Put(p) => OpResponse::Put(self.put(p)?),
                Op::Delete(d) => OpResponse::Delete(self.delete(d)?),
                Op::Txn(t) => OpResponse::Txn(self.txn(t)?),
            });
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }

    fn compare(&self, c: &Compare) -> Result<bool, StoreError> {
        let kvs = self.run.view.current(&c.range, &self.run.overlay)?;
        if kvs.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            return Ok(compare_kv(c, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, StoreError> {
        if req.key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        if !self.put_keys.insert(req.key.clone())
            || self.deleted.iter().any(|r| r.contains(&req.key))
        {
            return Err(StoreError::DuplicateKey);
        }
        let prev = self.run.view.get(&req.key, &self.run.overlay)?;
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(StoreError::KeyNotFound);
        }
        let (value, lease) = match &prev {
            Some(p) => (
                if req.ignore_value {
                    p.value.clone()
                } else {
                    req.value.clone()
                },
                if req.ignore_lease { p.lease } else { req.lease },
            ),
            None => (req.value.clone(), req.lease),
        };
        let rev = self.next_revision();
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(rev.main, |p| p.create_revision),
            mod_revision: rev.main,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        self.record(rev, EventKind::Put, kv.clone(), prev.clone())?;
        Ok(PutResponse {
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    fn delete(&mut self, req: &DeleteRequest) -> Result<DeleteResponse, StoreError> {
        if req.range.start().is_empty() && matches!(req.range, KeyRange::Single(_)) {
            return Err(StoreError::EmptyKey);
        }
        if self.put_keys.iter().any(|k| req.range.contains(k)) {
            return Err(StoreError::DuplicateKey);
        }
        self.deleted.push(req.range.clone());
        let victims = self.run.view.current(&req.range, &self.run.overlay)?;
        for prev in &victims {
            let rev = self.next_revision();
            let tomb = KeyValue {
                key: prev.key.clone(),
                mod_revision: rev.main,
                ..Default::default()
            };
            self.record(rev, EventKind::Delete, tomb, Some(prev.clone()))?;
        }
        Ok(DeleteResponse {
            deleted: victims.len() as u64,
            prev_kvs: if req.prev_kv { victims } else { Vec::new() },
        })
    }

    /// Adds one change to the batch, the overlay and the events.
    fn record(
        &mut self,
        rev: Revision,
        kind: EventKind,
        kv: KeyValue,
        prev: Option<KeyValue>,
    ) -> Result<(), StoreError> {
        let mut index_key = escape(&kv.key);
        index_key.extend_from_slice(&rev.to_bytes());
        let (ops, now) = match kind {
            EventKind::Put => (
                [
                    BatchOp::Put(CF_KV, kv.key.clone(), encode(&kv)?),
                    BatchOp::Put(CF_INDEX, index_key, vec![LIVE]),
                ],
                Some(kv.clone()),
            ),
            EventKind::Delete => (
                [
                    BatchOp::Delete(CF_KV, kv.key.clone()),
                    BatchOp::Put(CF_INDEX, index_key, vec![TOMBSTONE]),
                ],
                None,
            ),
        };
        self.run.ops.extend(ops);
        let before = self.run.overlay.insert(kv.key.clone(), now);
        self.undo.push((kv.key.clone(), before));
        let rec = Record { kind, kv };
        self.run.ops.push(BatchOp::Put(
            CF_HISTORY,
            rev.to_bytes().to_vec(),
            encode(&rec)?,
        ));
        self.events.push(Event {
            kind,
            kv: rec.kv,
            prev_kv: prev,
        });
        Ok(())
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
        CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.op {
        CompareOp::Equal => ord == Ordering::Equal,
        CompareOp::NotEqual => ord != Ordering::Equal,
        CompareOp::Greater => ord == Ordering::Greater,
        CompareOp::Less => ord == Ordering::Less,
    }
}

#[cfg(test)]
mod tests;
