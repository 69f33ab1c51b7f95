//! Raft RPCs between members over QUIC with mutual TLS.
//!
//! One bidirectional stream per RPC: the caller writes one bincode-encoded [`PeerRequest`] and
//! finishes its side; the callee answers with one [`PeerResponse`]. Both ends present
//! certificates signed by the cluster CA; a peer without one never completes the handshake. A
//! frame that does not decode resets that stream and closes that connection only; the member
//! keeps serving everyone else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Raft;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::{Deserialize, Serialize};

use super::membership::{MemberChange, MemberRefusal};
use super::{Command, CommandResponse, Member, TypeConfig};
use crate::codec::{decode, encode};
use crate::lease::{LeaseStatus, LeaseTable};
use crate::StoreError;

/// Largest RPC frame accepted (a batch of entries or a snapshot chunk).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// A Raft RPC as it travels.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// An election.
    Vote(VoteRequest<u64>),
    /// A snapshot chunk.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower forwards a client's write to the leader.
    Propose(Command),
    /// A follower asks the leader for a read index (etcd's ReadIndex).
    ReadIndex,
    /// A follower forwards a lease keep-alive (only the leader tracks deadlines).
    LeaseKeepAlive(i64),
    /// A follower asks the leader how long a lease has left.
    LeaseTimeToLive(i64),
    /// A follower forwards a membership change.
    ChangeMembership(MemberChange),
    /// The leader tells a member it was removed from the cluster.
    Removed,
    /// A leader about to stop hands over: stand for election at once, once this member's
    /// log reaches the given index (the leader's last entry).
    Elect(u64),
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// To AppendEntries.
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// To Vote.
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// To InstallSnapshot.
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// To Propose: the command's result, or why the leader could not take it.
    Propose(Result<CommandResponse, String>),
    /// To ReadIndex: the log index a linearizable read must wait for, or why not.
    ReadIndex(Result<Option<u64>, String>),
    /// To LeaseKeepAlive: the lease's TTL, or why not.
    LeaseKeepAlive(Result<i64, String>),
    /// To LeaseTimeToLive.
    LeaseTimeToLive(Result<LeaseStatus, String>),
    /// To ChangeMembership: done, or why the leader refused.
    ChangeMembership(Result<(), MemberRefusal>),
    /// To Removed.
    Removed,
    /// To Elect: whether this member stood for election.
    Elect(bool),
}

/// A QUIC endpoint that serves this member's Raft RPCs and dials its peers.
#[derive(Debug, Clone)]
pub struct PeerEndpoint {
    endpoint: quinn::Endpoint,
}

impl PeerEndpoint {
    /// Binds `addr` with `server` (client certificates required) for incoming RPCs and
    /// `client` (presenting this member's certificate) for outgoing ones.
    pub fn bind(
        addr: SocketAddr,
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
    ) -> Result<PeerEndpoint, StoreError> {
        let bad =
            |what: &str, e: &dyn std::fmt::Display| StoreError::Transport(format!("{what}: {e}"));
        let server =
            QuicServerConfig::try_from(server).map_err(|e| bad("peer TLS (server)", &e))?;
        let client =
            QuicClientConfig::try_from(client).map_err(|e| bad("peer TLS (client)", &e))?;
        let mut endpoint =
            quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(server)), addr)
                .map_err(|e| bad(&format!("binding the peer address {addr}"), &e))?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client)));
        Ok(PeerEndpoint { endpoint })
    }

    /// The address actually bound (port 0 picks one).
    pub fn local_addr(&self) -> Result<SocketAddr, StoreError> {
        self.endpoint
            .local_addr()
            .map_err(|e| StoreError::Transport(e.to_string()))
    }

    /// Serves RPCs for `raft` (and lease requests on `leases`, the leader's deadlines) until
    /// the endpoint closes.
    pub async fn serve(
        self,
        raft: Raft<TypeConfig>,
        batcher: super::batcher::Batcher,
        leases: SharedLeases,
        removed: Arc<tokio::sync::watch::Sender<bool>>,
    ) {
        while let Some(incoming) = self.endpoint.accept().await {
            let raft = raft.clone();
            let batcher = batcher.clone();
            let leases = leases.clone();
            let removed = removed.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    // Includes peers without a valid certificate: the handshake fails.
                    Err(e) => {
                        tracing::warn!(error = %e, "peer connection refused");
                        return;
                    }
                };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let raft = raft.clone();
                    let batcher = batcher.clone();
                    let leases = leases.clone();
                    let removed = removed.clone();
                    let conn = conn.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(raft, &batcher, leases, &removed, send, recv).await {
                            tracing::warn!(peer = %conn.remote_address(), error = %e, "bad peer message; closing its connection");
                            conn.close(1u32.into(), b"bad message");
                        }
                    });
                }
            });
        }
    }

    /// Stops serving and dialing.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}

/// The lease table shared by the state machine, the lease service and the peer transport.
pub type SharedLeases = Arc<std::sync::Mutex<LeaseTable>>;

async fn answer(
    raft: Raft<TypeConfig>,
    batcher: &super::batcher::Batcher,
    leases: SharedLeases,
    removed: &tokio::sync::watch::Sender<bool>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), String> {
    let frame = recv
        .read_to_end(MAX_FRAME_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    let request = match decode::<PeerRequest>(&frame, "peer request") {
        Ok(r) => r,
        Err(e) => {
            // Reset rather than let the drop finish the stream: the sender must see a
            // failure, never an empty answer.
            let _ = send.reset(1u32.into());
            return Err(e.to_string());
        }
    };
    let resp = match request {
        PeerRequest::AppendEntries(r) => PeerResponse::AppendEntries(raft.append_entries(r).await),
        PeerRequest::Vote(r) => PeerResponse::Vote(raft.vote(r).await),
        PeerRequest::InstallSnapshot(r) => {
            PeerResponse::InstallSnapshot(raft.install_snapshot(r).await)
        }
        PeerRequest::Propose(cmd) => {
            // A sender that gave up (its forward timed out; it will retry) must not have this
            // copy committed later as well: a proposal still waiting for a batch is dropped.
            tokio::select! {
                answer = batcher.write_here(cmd) => PeerResponse::Propose(answer),
                _ = send.stopped() => return Ok(()),
            }
        }
        PeerRequest::ReadIndex => PeerResponse::ReadIndex(
            raft.ensure_linearizable()
                .await
                .map(|id| id.map(|l| l.index))
                .map_err(|e| e.to_string()),
        ),
        PeerRequest::LeaseKeepAlive(id) => PeerResponse::LeaseKeepAlive(
            lock(&leases)
                .keep_alive(id, std::time::Instant::now())
                .map_err(|e| e.to_string()),
        ),
        PeerRequest::LeaseTimeToLive(id) => PeerResponse::LeaseTimeToLive(
            lock(&leases)
                .time_to_live(id, std::time::Instant::now())
                .map_err(|e| e.to_string()),
        ),
        PeerRequest::ChangeMembership(change) => {
            PeerResponse::ChangeMembership(super::membership::apply_on_leader(&raft, change).await)
        }
        PeerRequest::Removed => {
            removed.send_replace(true);
            PeerResponse::Removed
        }
        PeerRequest::Elect(index) => PeerResponse::Elect(stand_for_election(&raft, index).await),
    };
    send.write_all(&encode(&resp).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

/// Starts an election on this member once its log holds `index` (its leader's last entry,
/// so that the leader, which asked, can vote for it); waits at most half a second for that.
async fn stand_for_election(raft: &Raft<TypeConfig>, index: u64) -> bool {
    let caught_up = raft
        .wait(Some(Duration::from_millis(500)))
        .metrics(
            |m| m.last_log_index.is_some_and(|i| i >= index),
            "the leader's last entry",
        )
        .await;
    caught_up.is_ok() && raft.trigger().elect().await.is_ok()
}

/// Locks the lease table, surviving a poisoned lock (the table stays consistent: every
/// mutation is a single map operation).
pub fn lock(leases: &SharedLeases) -> std::sync::MutexGuard<'_, LeaseTable> {
    leases.lock().unwrap_or_else(|p| p.into_inner())
}

/// Dials peers for openraft.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    endpoint: PeerEndpoint,
    connections: Connections,
}

impl PeerNetwork {
    /// Sends `req` to `leader` (id and address), waiting at most `ttl` for the answer.
    pub async fn send_to(
        &self,
        leader: Option<(u64, Member)>,
        req: PeerRequest,
        ttl: Duration,
    ) -> Result<PeerResponse, String> {
        let Some((id, node)) = leader else {
            return Err("no leader known yet".into());
        };
        let mut client = self.clone().new_client(id, &node).await;
        client.request(req, ttl).await
    }

    /// Dials through `endpoint`.
    pub fn new(endpoint: PeerEndpoint) -> PeerNetwork {
        PeerNetwork {
            endpoint,
            connections: Arc::default(),
        }
    }
}

/// Open connections by peer address, shared by every client of one member: replication
/// streams and forwarded requests reuse one QUIC connection per peer instead of paying a
/// handshake each.
type Connections = Arc<std::sync::Mutex<std::collections::HashMap<String, quinn::Connection>>>;

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient {
        PeerClient {
            endpoint: self.endpoint.endpoint.clone(),
            target,
            node: node.clone(),
            conn: None,
            shared: self.connections.clone(),
        }
    }
}

/// The connection to one peer, re-established on failure.
#[derive(Debug)]
pub struct PeerClient {
    endpoint: quinn::Endpoint,
    target: u64,
    node: Member,
    conn: Option<quinn::Connection>,
    shared: Connections,
}

/// Why one call failed, before it is typed for openraft.
enum CallError {
    Unreachable(String),
    Network(String),
}

#[derive(Debug)]
struct Message(String);

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl PeerClient {
    /// Sends arbitrary bytes as a request and returns the answer's bytes (tests of malformed
    /// messages).
    #[cfg(test)]
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let conn = self.connection().await.map_err(|_| "unreachable")?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(bytes).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(MAX_FRAME_BYTES)
            .await
            .map_err(|e| e.to_string())
    }

    async fn connection(&mut self) -> Result<quinn::Connection, CallError> {
        if let Some(c) = &self.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let cached = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.node.peer_addr)
            .filter(|c| c.close_reason().is_none())
            .cloned();
        if let Some(c) = cached {
            self.conn = Some(c.clone());
            return Ok(c);
        }
        let addr: SocketAddr = self.node.peer_addr.parse().map_err(|e| {
            CallError::Unreachable(format!("bad peer address {:?}: {e}", self.node.peer_addr))
        })?;
        // The peer's certificate names its IP address.
        let conn = self
            .endpoint
            .connect(addr, &addr.ip().to_string())
            .map_err(|e| CallError::Unreachable(e.to_string()))?
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        self.conn = Some(conn.clone());
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.node.peer_addr.clone(), conn.clone());
        Ok(conn)
    }

    async fn call(&mut self, req: PeerRequest, ttl: Duration) -> Result<PeerResponse, CallError> {
        let bytes = encode(&req).map_err(|e| CallError::Network(e.to_string()))?;
        let attempt = async {
            let conn = self.connection().await?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            send.write_all(&bytes)
                .await
                .map_err(|e| CallError::Network(e.to_string()))?;
            send.finish()
                .map_err(|e| CallError::Network(e.to_string()))?;
            let frame = recv
                .read_to_end(MAX_FRAME_BYTES)
                .await
                .map_err(|e| CallError::Network(e.to_string()))?;
            decode::<PeerResponse>(&frame, "peer response")
                .map_err(|e| CallError::Network(e.to_string()))
        };
        let result = tokio::time::timeout(ttl, attempt)
            .await
            .unwrap_or_else(|_| Err(CallError::Network(format!("no answer within {ttl:?}"))));
        if result.is_err() {
            // Forget the connection here and in the shared cache: a peer that restarted does
            // not know it, and may stay silent on it until its idle timeout instead of
            // refusing it; a fresh handshake reaches the new process at once.
            if let Some(dead) = self.conn.take() {
                let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                if shared
                    .get(&self.node.peer_addr)
                    .is_some_and(|c| c.stable_id() == dead.stable_id())
                {
                    shared.remove(&self.node.peer_addr);
                }
            }
        }
        result
    }

    /// Sends any request and returns the answer, for forwarding from followers.
    pub async fn request(
        &mut self,
        req: PeerRequest,
        ttl: Duration,
    ) -> Result<PeerResponse, String> {
        self.call(req, ttl).await.map_err(|e| match e {
            CallError::Unreachable(m) | CallError::Network(m) => m,
        })
    }

    fn rpc_error<E: std::error::Error>(&self, e: CallError) -> RPCError<u64, Member, E> {
        match e {
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&Message(m))),
            CallError::Network(m) => RPCError::Network(NetworkError::new(&Message(m))),
        }
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<u64, Member, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<u64, Member, E> {
        RPCError::Network(NetworkError::new(&Message(
            "peer answered a different RPC".into(),
        )))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        match self
            .call(PeerRequest::AppendEntries(rpc), option.hard_ttl())
            .await
        {
            Ok(PeerResponse::AppendEntries(r)) => r.map_err(|e| self.remote(e)),
            Ok(_) => Err(self.unexpected()),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(PeerRequest::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(PeerResponse::InstallSnapshot(r)) => r.map_err(|e| self.remote(e)),
            Ok(_) => Err(self.unexpected()),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        match self.call(PeerRequest::Vote(rpc), option.hard_ttl()).await {
            Ok(PeerResponse::Vote(r)) => r.map_err(|e| self.remote(e)),
            Ok(_) => Err(self.unexpected()),
            Err(e) => Err(self.rpc_error(e)),
        }
    }
}
