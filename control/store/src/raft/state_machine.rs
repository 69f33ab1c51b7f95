//! The Raft state machine: applies committed [`Command`]s to the MVCC store and the lease
//! table, and builds and installs snapshots.
//!
//! Crash safety: a transaction and the state machine's last applied log id are written in one
//! RocksDB batch, so a transaction is never applied twice. Other commands (lease grants and
//! revocations, compaction, membership) record the applied log id in the same batch as their
//! own metadata, or are idempotent in state when replayed.
//!
//! Snapshots are the whole MVCC state read from one RocksDB snapshot ([`Mvcc::export`]) plus
//! the applied log id and membership; installing one replaces the state atomically. openraft
//! sends a snapshot to a lagging follower in chunks (`snapshot_max_chunk_size`), but the
//! snapshot itself is one in-memory buffer on both sides, so memory grows with the store.
// FIXME(perf): build and receive snapshots as streams (a RocksDB checkpoint, say) once stores
// get large; measured so far only with small stores.

use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::log::LogEntry;
use super::{Command, CommandResponse, Member, TypeConfig};
use crate::codec::{decode, encode};
use crate::lease::LeaseTable;
use crate::types::{DeleteRequest, EventKind, Header, Op, TxnRequest};
use crate::watch::WatchHub;
use crate::{KeyRange, MetaOp, Mvcc, StoreError};

const META_APPLIED: &[u8] = b"raft/applied";
const META_MEMBERSHIP: &[u8] = b"raft/membership";
const LEASE_PREFIX: &[u8] = b"lease/";

type Membership = StoredMembership<u64, Member>;

fn sm_err(e: StoreError) -> StorageError<u64> {
    crate::storage_failed(&e);
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn read_sm_err(e: StoreError) -> StorageError<u64> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn lease_key(id: i64) -> Vec<u8> {
    [LEASE_PREFIX, &id.to_be_bytes()].concat()
}

/// A snapshot as it travels: the state and what it covers.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
}

/// The state machine. Clones share everything (openraft's snapshot builder is one).
#[derive(Debug, Clone)]
pub struct StateMachine {
    mvcc: Arc<Mvcc>,
    leases: Arc<Mutex<LeaseTable>>,
    hub: WatchHub,
}

impl StateMachine {
    /// A state machine over `mvcc`, notifying `hub` of every applied change. Rebuilds the lease
    /// table from the store.
    pub fn open(mvcc: Arc<Mvcc>, hub: WatchHub) -> Result<StateMachine, StoreError> {
        let sm = StateMachine {
            mvcc,
            leases: Arc::new(Mutex::new(LeaseTable::new())),
            hub,
        };
        sm.reload_leases()?;
        Ok(sm)
    }

    /// The lease table (shared with the lease service).
    pub fn leases(&self) -> Arc<Mutex<LeaseTable>> {
        self.leases.clone()
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reload_leases(&self) -> Result<(), StoreError> {
        let mut table = LeaseTable::new();
        let now = Instant::now();
        for (key, ttl) in self.mvcc.scan_meta(LEASE_PREFIX)? {
            let id = key[LEASE_PREFIX.len()..]
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("malformed lease record".into()))?;
            let ttl: i64 = decode(&ttl, "lease ttl")?;
            // Records hold granted TTLs, which are valid by construction.
            let _ = table.grant(id, ttl, now);
        }
        for (id, key) in self.mvcc.leased_keys()? {
            let _ = table.attach(id, &key, 0);
        }
        *self.lock_leases() = table;
        Ok(())
    }

    fn applied(&self) -> Result<(Option<LogId<u64>>, Membership), StoreError> {
        let applied = match self.mvcc.read_meta(META_APPLIED)? {
            Some(b) => decode(&b, "applied log id")?,
            None => None,
        };
        let membership = match self.mvcc.read_meta(META_MEMBERSHIP)? {
            Some(b) => decode(&b, "membership")?,
            None => Membership::default(),
        };
        Ok((applied, membership))
    }

    fn applied_op(log_id: &LogId<u64>) -> Result<MetaOp, StoreError> {
        Ok(MetaOp::Put(META_APPLIED.to_vec(), encode(&Some(*log_id))?))
    }

    /// Applies one command. Deterministic failures become `CommandResponse::Failed` (every
    /// member answers the same); storage failures are errors.
    fn apply_command(
        &self,
        log_id: &LogId<u64>,
        cmd: Command,
    ) -> Result<CommandResponse, StoreError> {
        let applied = Self::applied_op(log_id)?;
        match cmd {
            Command::Txn(req) => {
                if unknown_lease(&req, &self.lock_leases()).is_some() {
                    self.mvcc.write_meta(&[applied])?;
                    return Ok(CommandResponse::Failed(
                        "etcdserver: requested lease not found".into(),
                    ));
                }
                self.run_txn(&req, vec![applied], CommandResponse::Txn)
            }
            Command::Batch(reqs) => self.run_batch(&reqs, applied),
            Command::Compact(rev) => {
                let result = self.mvcc.compact(rev);
                self.mvcc.write_meta(&[applied])?;
                Ok(match result {
                    Ok(h) => CommandResponse::Compacted(h),
                    Err(e @ (StoreError::Compacted { .. } | StoreError::FutureRevision { .. })) => {
                        CommandResponse::Failed(e.to_string())
                    }
                    Err(e) => return Err(e),
                })
            }
            Command::LeaseGrant { id, ttl } => {
                let granted = self.lock_leases().grant(id, ttl, Instant::now());
                match granted {
                    Ok(ttl) => {
                        self.mvcc
                            .write_meta(&[MetaOp::Put(lease_key(id), encode(&ttl)?), applied])?;
                        let (current, _) = self.mvcc.revisions()?;
                        Ok(CommandResponse::LeaseGranted {
                            header: Header { revision: current },
                            id,
                            ttl,
                        })
                    }
                    Err(e) => {
                        self.mvcc.write_meta(&[applied])?;
                        Ok(CommandResponse::Failed(e.to_string()))
                    }
                }
            }
            Command::LeaseRevoke(id) => {
                let keys = match self.lock_leases().revoke(id) {
                    Ok(keys) => keys,
                    Err(e) => {
                        self.mvcc.write_meta(&[applied])?;
                        return Ok(CommandResponse::Failed(e.to_string()));
                    }
                };
                let req = TxnRequest {
                    success: keys
                        .into_iter()
                        .map(|k| {
                            Op::Delete(DeleteRequest {
                                range: KeyRange::Single(k),
                                prev_kv: false,
                            })
                        })
                        .collect(),
                    ..Default::default()
                };
                self.run_txn(
                    &req,
                    vec![MetaOp::Delete(lease_key(id)), applied],
                    |h, _| CommandResponse::LeaseRevoked(h),
                )
            }
        }
    }

    /// Applies several transactions as one atomic write (a [`Command::Batch`]).
    fn run_batch(
        &self,
        reqs: &[TxnRequest],
        applied: MetaOp,
    ) -> Result<CommandResponse, StoreError> {
        let refused: Vec<Option<i64>> = {
            let leases = self.lock_leases();
            reqs.iter().map(|r| unknown_lease(r, &leases)).collect()
        };
        let runnable: Vec<&TxnRequest> = reqs
            .iter()
            .zip(&refused)
            .filter(|(_, refused)| refused.is_none())
            .map(|(r, _)| r)
            .collect();
        let mut outcomes = self.mvcc.txns_with_meta(&runnable, &[applied])?.into_iter();
        let mut answers = Vec::with_capacity(reqs.len());
        for refused in refused {
            if refused.is_some() {
                answers.push(CommandResponse::Failed(
                    "etcdserver: requested lease not found".into(),
                ));
                continue;
            }
            answers.push(match outcomes.next() {
                Some(Ok((h, resp, events))) => {
                    self.publish(h.revision, events);
                    CommandResponse::Txn(h, resp)
                }
                Some(Err(e)) => CommandResponse::Failed(e.to_string()),
                None => return Err(StoreError::Corrupt("a batch lost a transaction".into())),
            });
        }
        Ok(CommandResponse::Batch(answers))
    }

    /// After a transaction is written: the lease table follows its keys and watchers hear of
    /// its changes.
    fn publish(&self, revision: u64, events: Vec<crate::types::Event>) {
        {
            let mut leases = self.lock_leases();
            for e in &events {
                let prev = e.prev_kv.as_ref().map_or(0, |p| p.lease);
                match e.kind {
                    EventKind::Put => {
                        let _ = leases.attach(e.kv.lease, &e.kv.key, prev);
                    }
                    EventKind::Delete => leases.detach(prev, &e.kv.key),
                }
            }
        }
        if !events.is_empty() {
            self.hub.notify(revision, events);
        }
    }

    fn run_txn(
        &self,
        req: &TxnRequest,
        meta: Vec<MetaOp>,
        answer: impl FnOnce(Header, crate::types::TxnResponse) -> CommandResponse,
    ) -> Result<CommandResponse, StoreError> {
        match self.mvcc.txn_with_meta(req, &meta) {
            Ok((h, resp, events)) => {
                self.publish(h.revision, events);
                Ok(answer(h, resp))
            }
            Err(e @ StoreError::Storage(_)) | Err(e @ StoreError::Corrupt(_)) => Err(e),
            Err(e) => {
                // Deterministic refusal (duplicate key, empty key…): nothing was written but
                // the entry is applied.
                let applied: Vec<MetaOp> = meta
                    .into_iter()
                    .filter(|m| matches!(m, MetaOp::Put(k, _) if k == META_APPLIED))
                    .collect();
                self.mvcc.write_meta(&applied)?;
                Ok(CommandResponse::Failed(e.to_string()))
            }
        }
    }

    fn snapshot_now(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        // The applied id and membership are read from the exported state itself, so they
        // describe exactly the data the snapshot holds even while entries keep applying.
        let state = self.mvcc.export()?;
        // The state machine's writes are not synced one by one (the Raft log is); once a
        // snapshot exists openraft may purge the log entries it covers, so everything the
        // export saw is made durable (synced after it, so nothing it holds is left out) —
        // else a power failure could lose applied writes whose log entries are gone.
        self.mvcc.sync()?;
        let (last_applied, membership) = StateMachine::probe(&state)?;
        let snapshot_id = match &last_applied {
            Some(l) => format!("{}-{}", l.leader_id.term, l.index),
            None => "empty".to_string(),
        };
        let body = encode(&SnapshotBody { state })?;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id,
            },
            snapshot: Box::new(Cursor::new(body)),
        })
    }

    /// Seeds a new member's state from a backup file ([`crate::backup`]: an etcd
    /// `Maintenance.Snapshot` stream saved to a file): the keys, their history and the leases, without the Raft position and
    /// membership of the cluster it came from, so the member forms a new cluster around it.
    /// Every member of the new cluster must be restored from the same file.
    pub fn restore_backup(state_dir: &std::path::Path, backup: &[u8]) -> Result<(), StoreError> {
        let mvcc = Mvcc::open(state_dir, crate::MvccOptions { sync: true })?;
        if mvcc.revisions()?.0 > 0 {
            return Err(StoreError::Refused(format!(
                "{} already holds data; restore into an empty data dir",
                state_dir.display()
            )));
        }
        let state = crate::backup::decode(backup)?;
        StateMachine::probe(state)?;
        mvcc.import(state)?;
        mvcc.write_meta(&[
            MetaOp::Delete(META_APPLIED.to_vec()),
            MetaOp::Delete(META_MEMBERSHIP.to_vec()),
        ])
    }

    /// The applied log id and membership recorded inside an exported state.
    fn probe(state: &[u8]) -> Result<(Option<LogId<u64>>, Membership), StoreError> {
        let rows: Vec<crate::mvcc::Row> = decode(state, "snapshot")?;
        let key = |k: &[u8]| [b"user/".as_slice(), k].concat();
        let (applied_key, membership_key) = (key(META_APPLIED), key(META_MEMBERSHIP));
        let mut applied = None;
        let mut membership = Membership::default();
        for crate::mvcc::Row(_, k, v) in &rows {
            if *k == applied_key {
                applied = decode(v, "applied log id")?;
            } else if *k == membership_key {
                membership = decode(v, "membership")?;
            }
        }
        Ok((applied, membership))
    }
}

/// The first lease a transaction's puts name that does not exist.
fn unknown_lease(req: &TxnRequest, leases: &LeaseTable) -> Option<i64> {
    req.success
        .iter()
        .chain(&req.failure)
        .find_map(|op| match op {
            Op::Put(p) if p.lease != 0 && !p.ignore_lease && !leases.contains(p.lease) => {
                Some(p.lease)
            }
            Op::Txn(t) => unknown_lease(t, leases),
            _ => None,
        })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        self.snapshot_now().map_err(read_sm_err)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        self.applied().map_err(read_sm_err)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<u64>>
    where
        I: IntoIterator<Item = LogEntry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let resp = match entry.payload {
                EntryPayload::Blank => {
                    self.mvcc
                        .write_meta(&[Self::applied_op(&log_id).map_err(sm_err)?])
                        .map_err(sm_err)?;
                    CommandResponse::Applied
                }
                EntryPayload::Membership(m) => {
                    let stored = Membership::new(Some(log_id), m);
                    self.mvcc
                        .write_meta(&[
                            MetaOp::Put(META_MEMBERSHIP.to_vec(), encode(&stored).map_err(sm_err)?),
                            Self::applied_op(&log_id).map_err(sm_err)?,
                        ])
                        .map_err(sm_err)?;
                    CommandResponse::Applied
                }
                EntryPayload::Normal(cmd) => self.apply_command(&log_id, cmd).map_err(sm_err)?,
            };
            out.push(resp);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let install = || -> Result<(), StoreError> {
            let body: SnapshotBody = decode(snapshot.get_ref(), "snapshot")?;
            self.mvcc.import(&body.state)?;
            // The snapshot's own metadata is authoritative for what it covers.
            self.mvcc.write_meta(&[
                MetaOp::Put(META_APPLIED.to_vec(), encode(&meta.last_log_id)?),
                MetaOp::Put(META_MEMBERSHIP.to_vec(), encode(&meta.last_membership)?),
            ])?;
            self.reload_leases()
        };
        install().map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)).into()
        })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        // A snapshot built now is consistent and covers everything applied.
        let (applied, _) = self.applied().map_err(read_sm_err)?;
        if applied.is_none() {
            return Ok(None);
        }
        self.snapshot_now().map(Some).map_err(read_sm_err)
    }
}

#[cfg(test)]
mod tests;
