//! A store member: the Raft node with its log, state machine and peer transport, serving
//! reads and writes from any member.
//!
//! Writes are proposed to the leader (forwarded over the peer transport when this member is a
//! follower) and answered once committed and applied. Reads are linearizable by default: the
//! leader confirms its leadership with a heartbeat round (ReadIndex) and the member answers
//! once its own state machine has applied up to that index. Serializable reads answer from the
//! local state at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::Raft;

use super::log::RaftLog;
use super::network::{PeerEndpoint, PeerNetwork, PeerRequest, PeerResponse};
use super::state_machine::StateMachine;
use super::{Command, CommandResponse, Member, TypeConfig};
use crate::etcd::KvBackend;
use crate::types::{Header, Op, RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use crate::watch::WatchHub;
use crate::{Mvcc, MvccOptions, StoreError};

/// How long a client request may wait for a leader, a commit or a read index.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one forwarded attempt may take: a leader that just died must not hold a request
/// for long; the next attempt goes to whoever leads by then.
const FORWARD_TIMEOUT: Duration = Duration::from_millis(1500);

/// One member of the replicated store.
#[derive(Clone)]
pub struct StoreNode {
    id: u64,
    raft: Raft<TypeConfig>,
    mvcc: Arc<Mvcc>,
    hub: WatchHub,
    network: PeerNetwork,
    endpoint: PeerEndpoint,
}

impl std::fmt::Debug for StoreNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreNode").field("id", &self.id).finish()
    }
}

impl StoreNode {
    /// Opens member `id`'s data under `data_dir` (`raft-log/`, `state/`), starts Raft with
    /// `config`, and serves peers on `endpoint`.
    pub async fn start(
        id: u64,
        data_dir: &Path,
        config: openraft::Config,
        endpoint: PeerEndpoint,
    ) -> Result<StoreNode, StoreError> {
        let log = RaftLog::open(&data_dir.join("raft-log"))?;
        // The Raft log is synced; the state machine need not be (it is rebuilt from the log).
        let mvcc = Arc::new(Mvcc::open(
            &data_dir.join("state"),
            MvccOptions { sync: false },
        )?);
        let hub = WatchHub::new(mvcc.clone())?;
        let sm = StateMachine::open(mvcc.clone(), hub.clone())?;
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| StoreError::Transport(format!("invalid Raft config: {e}")))?,
        );
        let network = PeerNetwork::new(endpoint.clone());
        let raft = Raft::new(id, config, network.clone(), log, sm)
            .await
            .map_err(|e| StoreError::Transport(format!("starting Raft: {e}")))?;
        tokio::spawn(endpoint.clone().serve(raft.clone()));
        Ok(StoreNode {
            id,
            raft,
            mvcc,
            hub,
            network,
            endpoint,
        })
    }

    /// Forms the cluster from `members` (the same map on every member; repeated calls and
    /// calls on an already formed cluster are harmless).
    pub async fn bootstrap(&self, members: BTreeMap<u64, Member>) -> Result<(), StoreError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(_)) => Ok(()), // already initialized
            Err(e) => Err(StoreError::Transport(format!("forming the cluster: {e}"))),
        }
    }

    /// The Raft handle (metrics, membership changes).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The watch hub of this member's applied state.
    pub fn watch_hub(&self) -> &WatchHub {
        &self.hub
    }

    /// The local MVCC store (for serializable reads and status).
    pub fn mvcc(&self) -> &Arc<Mvcc> {
        &self.mvcc
    }

    /// Stops Raft and the peer transport.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        self.endpoint.close();
    }

    async fn forward(
        &self,
        leader: &ForwardToLeader<u64, Member>,
        req: PeerRequest,
    ) -> Result<PeerResponse, String> {
        let (Some(id), Some(node)) = (leader.leader_id, leader.leader_node.as_ref()) else {
            return Err("no leader yet".into());
        };
        use openraft::network::RaftNetworkFactory;
        let mut client = self.network.clone().new_client(id, node).await;
        client.request(req, FORWARD_TIMEOUT).await
    }

    async fn wait_for_leader(&self) {
        let _ = self
            .raft
            .wait(Some(Duration::from_secs(2)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await;
    }

    /// Proposes `cmd` and returns its result once applied.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, StoreError> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let why = match self.raft.client_write(cmd.clone()).await {
                Ok(r) => return Ok(r.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    match self.forward(&f, PeerRequest::Propose(cmd.clone())).await {
                        Ok(PeerResponse::Propose(Ok(r))) => return Ok(r),
                        Ok(PeerResponse::Propose(Err(e))) => e,
                        Ok(_) => "the leader answered a different request".into(),
                        Err(e) => e,
                    }
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(why));
            }
            self.wait_for_leader().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this member's state reflects every write committed before the call.
    pub async fn read_barrier(&self) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let why = match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    match self.forward(&f, PeerRequest::ReadIndex).await {
                        Ok(PeerResponse::ReadIndex(Ok(index))) => {
                            let waited = self
                                .raft
                                .wait(Some(REQUEST_TIMEOUT))
                                .applied_index_at_least(index, "read index applied")
                                .await;
                            match waited {
                                Ok(_) => return Ok(()),
                                Err(e) => e.to_string(),
                            }
                        }
                        Ok(PeerResponse::ReadIndex(Err(e))) => e,
                        Ok(_) => "the leader answered a different request".into(),
                        Err(e) => e,
                    }
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(why));
            }
            self.wait_for_leader().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn is_read_only(req: &TxnRequest) -> bool {
    req.success.iter().chain(&req.failure).all(|op| match op {
        Op::Range(_) => true,
        Op::Txn(t) => is_read_only(t),
        Op::Put(_) | Op::Delete(_) => false,
    })
}

fn refused(msg: String) -> StoreError {
    StoreError::Refused(msg)
}

impl KvBackend for StoreNode {
    async fn range(
        &self,
        req: RangeRequest,
        serializable: bool,
    ) -> Result<(Header, RangeResponse), StoreError> {
        if !serializable {
            self.read_barrier().await?;
        }
        Mvcc::range(&self.mvcc, &req)
    }

    async fn txn(&self, req: TxnRequest) -> Result<(Header, TxnResponse), StoreError> {
        if is_read_only(&req) {
            self.read_barrier().await?;
            return Mvcc::txn(&self.mvcc, &req).map(|(h, r, _)| (h, r));
        }
        match self.propose(Command::Txn(req)).await? {
            CommandResponse::Txn(h, r) => Ok((h, r)),
            CommandResponse::Failed(m) => Err(refused(m)),
            other => Err(StoreError::Corrupt(format!("txn answered with {other:?}"))),
        }
    }

    async fn compact(&self, revision: u64) -> Result<Header, StoreError> {
        match self.propose(Command::Compact(revision)).await? {
            CommandResponse::Compacted(h) => Ok(h),
            CommandResponse::Failed(m) => Err(refused(m)),
            other => Err(StoreError::Corrupt(format!(
                "compact answered with {other:?}"
            ))),
        }
    }
}
