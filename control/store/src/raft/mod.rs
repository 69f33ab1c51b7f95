//! Replication with openraft: the type configuration, the commands the log carries, and the
//! durable Raft log on RocksDB ([`log`]).
//!
//! [`state_machine`] applies committed [`Command`]s to the MVCC store and the lease table and
//! builds snapshots from one consistent RocksDB view. [`network`] carries Raft RPCs over QUIC
//! with mutual TLS. [`node`] serves reads and proposals from any member; [`membership`] changes
//! the member set at runtime.

pub mod batcher;
pub mod log;
pub mod membership;
pub mod network;
pub mod node;
pub mod state_machine;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::types::{Header, TxnRequest, TxnResponse};

/// What the replicated log carries: every change to the store's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A transaction (puts and deletes are one-operation transactions).
    Txn(TxnRequest),
    /// Compact history up to a revision.
    Compact(u64),
    /// Grant a lease (the id is chosen before replication, so every member applies the same).
    LeaseGrant {
        /// The lease id.
        id: i64,
        /// The TTL asked for, in seconds.
        ttl: i64,
    },
    /// Revoke a lease and delete its keys.
    LeaseRevoke(i64),
    /// Several transactions in one log entry (proposals that arrived together, see
    /// [`batcher`]): applied in order, each at its own revision, all in one atomic write.
    Batch(Vec<TxnRequest>),
}

/// What applying a [`Command`] answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// A transaction's result and the store revision after it.
    Txn(Header, TxnResponse),
    /// A compaction's header.
    Compacted(Header),
    /// A granted lease: the id and the TTL granted.
    LeaseGranted {
        /// The header.
        header: Header,
        /// The lease id.
        id: i64,
        /// The TTL granted.
        ttl: i64,
    },
    /// A revoked lease.
    LeaseRevoked(Header),
    /// A log entry without a command (a leader's blank entry, a membership change) applied.
    Applied,
    /// The command failed deterministically (e.g. a duplicate key); every member answers the
    /// same, nothing was written.
    Failed(String),
    /// A [`Command::Batch`]'s answers, one per transaction, in order (each a `Txn` or a
    /// `Failed`).
    Batch(Vec<CommandResponse>),
}

/// A member's address, as other members and clients reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's name (`--name`).
    pub name: String,
    /// Where peers reach it (QUIC).
    pub peer_addr: String,
    /// Where clients reach its etcd API (gRPC).
    pub client_addr: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

/// Raft timing: heartbeat 100 ms; a follower that hears no heartbeat for 1.5–2 s campaigns
/// (etcd's default 1 s election timeout, randomized).
pub fn default_config() -> openraft::Config {
    config(100, 1000)
}

/// Raft timing from etcd-style settings: `heartbeat_ms` between heartbeats, and
/// `election_ms` as etcd's election timeout. openraft 0.9 makes a follower wait for the
/// leader's lease (its `election_timeout_max`) *plus* a random election timeout before it
/// campaigns; with the maximum set to `election_ms` and the minimum to half of it, a follower
/// campaigns 1.5–2 × `election_ms` after the last heartbeat.
pub fn config(heartbeat_ms: u64, election_ms: u64) -> openraft::Config {
    openraft::Config {
        cluster_name: "flotilla".into(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: election_ms / 2,
        election_timeout_max: election_ms,
        // Snapshots are sent whole; the default 200 ms chunk timeout is too short for them.
        install_snapshot_timeout: 10_000,
        // Entries can be batches of up to 256 KiB (see `batcher`): 64 of them keep one
        // AppendEntries well under the peer transport's frame limit.
        max_payload_entries: 64,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;

openraft::declare_raft_types!(
    /// The store's Raft types.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);
