//! Flotilla's replicated key-value store: etcd v3 semantics (MVCC, transactions, compaction,
//! watch, leases) on RocksDB, replicated with openraft.
//!
//! Layering, from the disk up:
//! - [`revision`] and [`keys`]: the logical clock and the byte encodings;
//! - [`mvcc`]: the multi-version store on RocksDB (one atomic, fsynced batch per transaction);
//! - [`lease`]: the lease table (grants, attached keys; deadlines on the leader only);
//! - [`watch`]: the watch hub (history replay, then live; slow watchers never block writers);
//! - [`etcd`]: the etcd v3 gRPC edge (KV over any [`etcd::KvBackend`], Watch, Lease,
//!   Cluster.MemberList, Maintenance.Status);
//! - [`raft`]: the openraft type configuration, the replicated [`raft::Command`]s, the durable
//!   Raft log on its own RocksDB (synced before openraft hears of a flush), and the state
//!   machine on the MVCC store and lease table (applied log id in the same batch as each
//!   transaction; snapshots from one RocksDB view; passes openraft's storage test suite), and
//!   the peer transport (Raft RPCs over QUIC with mutual TLS, one stream per RPC), and the
//!   member `flotilla server` runs (`raft::node::StoreNode`: proposals and linearizable reads
//!   from any member);
//! - (next) membership changes and Maintenance.Snapshot.
//!
//! Only this crate touches RocksDB (DESIGN.md, invariant 1).

#![forbid(unsafe_code)]

pub mod backup;
mod codec;
pub mod etcd;
pub mod keys;
pub mod lease;
pub mod mvcc;
pub mod raft;
pub mod revision;
pub mod types;
pub mod watch;

pub use keys::KeyRange;
pub use mvcc::{MetaOp, Mvcc, MvccOptions};
pub use revision::Revision;

/// The first storage write failure in this process (a full disk, say): when Raft stops on it,
/// later errors only say that a channel closed, so requests are told this root cause.
static FIRST_STORAGE_FAILURE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records a storage write failure (only the first is kept).
pub(crate) fn storage_failed(e: &StoreError) {
    let _ = FIRST_STORAGE_FAILURE.set(e.to_string());
}

/// The first storage write failure in this process, if any.
pub fn first_storage_failure() -> Option<&'static str> {
    FIRST_STORAGE_FAILURE.get().map(String::as_str)
}

/// What can go wrong in the store. Each message says what failed; the gRPC edge maps these to
/// the status codes etcd uses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key must not be empty.
    #[error("key is not provided")]
    EmptyKey,
    /// A read or watch asked for history that compaction removed.
    #[error(
        "required revision {requested} has been compacted (compacted revision is {compacted})"
    )]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The store's compacted revision.
        compacted: u64,
    },
    /// A read asked for a revision the store has not reached.
    #[error("required revision {requested} is a future revision (current revision is {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store's current revision.
        current: u64,
    },
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("key not found: ignore_value and ignore_lease need an existing key")]
    KeyNotFound,
    /// A transaction wrote the same key twice.
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// RocksDB failed (disk full, I/O error). Nothing of the failed write was applied.
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    /// The cluster could not serve the request in time (no leader, no quorum).
    #[error("etcdserver: request timed out, no leader or quorum: {0}")]
    Unavailable(String),
    /// The replicated state machine refused the request (the same on every member).
    #[error("{0}")]
    Refused(String),
    /// The peer transport failed to start (bad certificates, address in use).
    #[error("peer transport: {0}")]
    Transport(String),
    /// This member's Raft stopped on a fatal error (a storage failure such as a full disk); it
    /// serves nothing until restarted.
    #[error("etcdserver: this member stopped on a fatal error and must be restarted: {0}")]
    Stopped(String),
    /// The leader refused a membership change.
    #[error(transparent)]
    Member(#[from] raft::membership::MemberRefusal),
    /// Stored bytes could not be decoded: a bug or a damaged disk.
    #[error("corrupt store: {0}")]
    Corrupt(String),
}
