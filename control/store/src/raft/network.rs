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
        let contact = Arc::new(LeaderContact::new());
        while let Some(incoming) = self.endpoint.accept().await {
            let contact = contact.clone();
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
                    let contact = contact.clone();
                    let conn = conn.clone();
                    tokio::spawn(async move {
                        let peer = Served {
                            batcher: &batcher,
                            leases,
                            removed: &removed,
                            contact: &contact,
                        };
                        if let Err(e) = answer(raft, peer, send, recv).await {
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

/// When this member last heard a leader (an AppendEntries, heartbeats included, that it
/// accepted).
struct LeaderContact(std::sync::Mutex<std::time::Instant>);

impl LeaderContact {
    fn new() -> LeaderContact {
        LeaderContact(std::sync::Mutex::new(std::time::Instant::now()))
    }

    fn heard(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }

    fn since(&self) -> Duration {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }
}

/// What a member's transport serves peers with, besides its Raft.
struct Served<'a> {
    batcher: &'a super::batcher::Batcher,
    leases: SharedLeases,
    removed: &'a tokio::sync::watch::Sender<bool>,
    contact: &'a LeaderContact,
}

/// Whether this member, having refused `request` with `answer`, should stand for election at
/// once: the candidate's log is behind this member's, so it cannot get this vote; no leader
/// has been heard for a leader lease (`election_timeout_max`), so there is none to disrupt;
/// and this member backs no other candidate (as when a stopping leader hands over). Without
/// this, the election waits for this member's own timeout (0.5–1 s more) whenever a member
/// with a shorter log happens to campaign first after a leader died.
fn should_campaign(
    raft: &Raft<TypeConfig>,
    request: Option<openraft::LogId<u64>>,
    answer: &VoteResponse<u64>,
    unheard_for: Duration,
) -> bool {
    let lease = Duration::from_millis(raft.config().election_timeout_max);
    let (follower, me) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.state == openraft::ServerState::Follower, m.id)
    };
    follower && campaign_after_refusal(me, request, answer, unheard_for > lease)
}

/// [`should_campaign`] for a follower `me` (`leaderless`: no leader heard for a lease).
fn campaign_after_refusal(
    me: u64,
    request: Option<openraft::LogId<u64>>,
    answer: &VoteResponse<u64>,
    leaderless: bool,
) -> bool {
    let backing_another = !answer.vote.is_committed()
        && answer
            .vote
            .leader_id()
            .voted_for()
            .is_some_and(|id| id != me);
    !answer.vote_granted && answer.last_log_id > request && leaderless && !backing_another
}

/// Stands for election in a term above `term`, the term of a candidate that cannot win: it
/// voted for itself in `term`, so a campaign in `term` itself would not get its vote. Each
/// `elect` goes one term up; at most three.
async fn campaign_past(raft: Raft<TypeConfig>, term: u64) {
    for _ in 0..3 {
        let (now, leading) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.current_term, m.state == openraft::ServerState::Leader)
        };
        if leading || now > term {
            return;
        }
        if raft.trigger().elect().await.is_err() {
            return;
        }
        let _ = raft
            .wait(Some(Duration::from_millis(200)))
            .metrics(|m| m.current_term > now, "a term past the last one")
            .await;
    }
}

async fn answer(
    raft: Raft<TypeConfig>,
    peer: Served<'_>,
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
    let Served {
        batcher,
        leases,
        removed,
        contact,
    } = peer;
    let resp = match request {
        PeerRequest::AppendEntries(r) => {
            let answer = raft.append_entries(r).await;
            // Anything but a higher vote: the sender is this member's leader.
            if answer
                .as_ref()
                .is_ok_and(|a| !matches!(a, AppendEntriesResponse::HigherVote(_)))
            {
                contact.heard();
            }
            PeerResponse::AppendEntries(answer)
        }
        PeerRequest::Vote(r) => {
            let (candidate_log, candidate_term) = (r.last_log_id, r.vote.leader_id().term);
            let answer = raft.vote(r).await;
            if let Ok(refused) = &answer {
                if should_campaign(&raft, candidate_log, refused, contact.since()) {
                    tracing::info!(
                        candidate_term,
                        "refused a vote to a candidate whose log is behind, and no leader heard from; campaigning now"
                    );
                    tokio::spawn(campaign_past(raft.clone(), candidate_term));
                }
            }
            PeerResponse::Vote(answer)
        }
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Vote};

    use super::*;

    fn log(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, 0), index))
    }

    /// Member 1 refused a candidate; its answer carries its vote and its last log id.
    fn refusal(vote: Vote<u64>, last: Option<LogId<u64>>) -> VoteResponse<u64> {
        VoteResponse {
            vote,
            vote_granted: false,
            last_log_id: last,
        }
    }

    #[test]
    fn a_follower_campaigns_past_a_candidate_that_cannot_win_only_without_a_leader() {
        // Its leader (2) died; the candidate (3) lacks entry 41.
        let committed_to_dead_leader = Vote::new_committed(1, 2);
        let answer = refusal(committed_to_dead_leader, log(1, 41));
        assert!(campaign_after_refusal(1, log(1, 40), &answer, true));
        // Its leader was heard within the lease: nothing to take over.
        assert!(!campaign_after_refusal(1, log(1, 40), &answer, false));
        // The candidate's log is as long: the refusal had another reason.
        assert!(!campaign_after_refusal(1, log(1, 41), &answer, true));
        // It already voted for a better candidate (4) in this term, as a stopping leader does
        // for its chosen successor: that one is left to win.
        let backing = refusal(Vote::new(2, 4), log(1, 41));
        assert!(!campaign_after_refusal(1, log(1, 40), &backing, true));
        // A granted vote is no refusal.
        let granted = VoteResponse {
            vote_granted: true,
            ..refusal(Vote::new(2, 3), log(1, 41))
        };
        assert!(!campaign_after_refusal(1, log(1, 40), &granted, true));
    }
}
