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

use openraft::error::{CheckIsLeaderError, ForwardToLeader, RaftError};
use openraft::Raft;

use super::batcher::Batcher;
use super::log::RaftLog;
use super::membership::{self, MemberChange, MemberRefusal};
use super::network::{lock, PeerEndpoint, PeerNetwork, PeerRequest, PeerResponse, SharedLeases};
use super::state_machine::StateMachine;
use super::{Command, CommandResponse, Member, TypeConfig};
use crate::etcd::KvBackend;
use crate::lease::LeaseStatus;
use crate::types::{Header, Op, RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use crate::watch::WatchHub;
use crate::{Mvcc, MvccOptions, StoreError};

/// How long a client request may wait for a leader, a commit or a read index.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one forwarded attempt may take: a leader that just died must not hold a request
/// for long; the next attempt goes to whoever leads by then.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_millis(1500);

/// One member of the replicated store.
#[derive(Clone)]
pub struct StoreNode {
    id: u64,
    raft: Raft<TypeConfig>,
    batcher: Batcher,
    mvcc: Arc<Mvcc>,
    hub: WatchHub,
    leases: SharedLeases,
    network: PeerNetwork,
    endpoint: PeerEndpoint,
    removed: Arc<tokio::sync::watch::Sender<bool>>,
    /// Since when this member leads (None: it does not), as the lease clock saw it.
    leading_since: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
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
        let leases = sm.leases();
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| StoreError::Transport(format!("invalid Raft config: {e}")))?,
        );
        let network = PeerNetwork::new(endpoint.clone());
        let raft = Raft::new(id, config, network.clone(), log, sm)
            .await
            .map_err(|e| StoreError::Transport(format!("starting Raft: {e}")))?;
        let batcher = Batcher::start(raft.clone(), network.clone());
        let removed = Arc::new(tokio::sync::watch::Sender::new(false));
        tokio::spawn(endpoint.clone().serve(
            raft.clone(),
            batcher.clone(),
            leases.clone(),
            removed.clone(),
        ));
        let node = StoreNode {
            leading_since: Arc::default(),
            removed,
            id,
            raft,
            batcher,
            mvcc,
            hub,
            leases,
            network,
            endpoint,
        };
        tokio::spawn(node.clone().expire_leases());
        Ok(node)
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

    /// Hands Raft leadership to another voter before this member stops, so that the
    /// cluster need not wait out the leader lease and an election timeout (1.5–2 s) without
    /// a leader. openraft 0.9 has no leadership transfer; this is one: the most caught-up
    /// voter is asked to stand for election at once, and this member — whose own lease does
    /// not hold it back — votes for it, which with its own vote is a majority of three.
    /// From the first attempt on, this member stands for no election itself. Returns once
    /// another member leads, or after `within` (the cluster then elects as after a crash).
    pub async fn hand_over_leadership(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        // A leader refuses to vote for another while its own lease runs, which starts when
        // it is elected: a leader elected just now waits for it to pass.
        let lease = Duration::from_millis(self.raft.config().election_timeout_max);
        let since = *self.leading_since.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(since) = since {
            let ready = since + lease + Duration::from_millis(20);
            tokio::time::sleep_until(ready.min(deadline)).await;
        }
        let mut asked = false;
        while tokio::time::Instant::now() < deadline {
            let (target, last) = {
                let metrics = self.raft.metrics();
                let m = metrics.borrow();
                if m.current_leader != Some(self.id) {
                    break;
                }
                let membership = m.membership_config.membership();
                let matched = |id: &u64| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                };
                let best = membership
                    .voter_ids()
                    .filter(|id| *id != self.id)
                    .max_by_key(|id| matched(id));
                let Some(best) = best else {
                    return; // the only voter
                };
                let Some(member) = membership.get_node(&best).cloned() else {
                    return;
                };
                ((best, member), m.last_log_index.unwrap_or(0))
            };
            if !asked {
                self.raft.runtime_config().elect(false);
                asked = true;
            }
            tracing::info!(
                to = target.0,
                "handing Raft leadership over before stopping"
            );
            let ask = self.send_to(Some(target), PeerRequest::Elect(last));
            match tokio::time::timeout_at(deadline, ask).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "asking a member to stand for election"),
                Err(_) => break,
            }
            let id = self.id;
            let _ = self
                .raft
                .wait(Some(Duration::from_millis(300)))
                .metrics(|m| m.current_leader != Some(id), "another leader")
                .await;
        }
        if asked {
            let leader = self.raft.metrics().borrow().current_leader;
            tracing::info!(?leader, "Raft leadership after the handover");
        }
    }

    /// Stops Raft and the peer transport.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        self.endpoint.close();
    }

    /// Sends `req` to the leader named by a ForwardToLeader answer.
    async fn forward(
        &self,
        leader: &ForwardToLeader<u64, Member>,
        req: PeerRequest,
    ) -> Result<PeerResponse, String> {
        self.send_to(leader.leader_id.zip(leader.leader_node.clone()), req)
            .await
    }

    /// Sends `req` to `leader` (id and address) over the peer transport.
    async fn send_to(
        &self,
        leader: Option<(u64, Member)>,
        req: PeerRequest,
    ) -> Result<PeerResponse, String> {
        self.network.send_to(leader, req, FORWARD_TIMEOUT).await
    }

    /// The leader and term this member currently believes in.
    fn leadership(&self) -> (Option<u64>, u64) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader, m.current_term)
    }

    /// After an attempt under `tried` failed: waits for a leader other than the one tried (an
    /// election after its death, a new term), so that a dead leader is not asked again and
    /// again, for at most an election timeout.
    async fn wait_for_leader_change(&self, tried: (Option<u64>, u64)) {
        let _ = self
            .raft
            .wait(Some(Duration::from_millis(
                self.raft.config().election_timeout_max,
            )))
            .metrics(
                |m| m.current_leader.is_some() && (m.current_leader, m.current_term) != tried,
                "a leader other than the one that failed",
            )
            .await;
    }

    /// Proposes `cmd` and returns its result once applied.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, StoreError> {
        self.until_served(|| async { self.batcher.write(cmd.clone()).await })
            .await
    }

    /// Waits until this member's state reflects every write committed before the call.
    pub async fn read_barrier(&self) -> Result<(), StoreError> {
        self.until_served(|| async {
            match self.raft.ensure_linearizable().await {
                Ok(_) => Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    let index = match self.forward(&f, PeerRequest::ReadIndex).await? {
                        PeerResponse::ReadIndex(r) => r?,
                        _ => return Err("the leader answered a different request".into()),
                    };
                    self.raft
                        .wait(Some(REQUEST_TIMEOUT))
                        .applied_index_at_least(index, "read index applied")
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    /// Runs `attempt` until it succeeds or [`REQUEST_TIMEOUT`] passes, waiting for a leader
    /// between attempts (elections and leader changes make single attempts fail).
    async fn until_served<T, F, Fut>(&self, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        // However long the attempts wait, a Raft core that stops on a fatal error (disk full)
        // ends them at once with that reason: the member exits soon after, and its clients
        // must hear why rather than see the connection drop.
        let attempts = async {
            loop {
                let tried = self.leadership();
                // An attempt may wait for a commit that never comes (a leader that lost its
                // followers does not know it yet): it is bounded by the request's deadline.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let why = match tokio::time::timeout(left, attempt()).await {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(why)) => why,
                    Err(_) => format!("no commit within {REQUEST_TIMEOUT:?}"),
                };
                if let Err(fatal) = &self.raft.metrics().borrow().running_state {
                    // A storage failure (disk full) stopped Raft here: say so at once.
                    let why = crate::first_storage_failure()
                        .map_or_else(|| fatal.to_string(), String::from);
                    return Err(StoreError::Stopped(why));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(StoreError::Unavailable(why));
                }
                tracing::debug!(reason = %why, "a store request attempt failed; retrying once a leader is known");
                self.wait_for_leader_change(tried).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::pin!(attempts);
        tokio::select! {
            r = &mut attempts => r,
            why = self.failed() => {
                // The attempt usually fails too, naming the storage error itself (the core's
                // own report may only say that it stopped): prefer its answer if it comes.
                match tokio::time::timeout(Duration::from_millis(200), attempts).await {
                    Ok(Err(e @ StoreError::Stopped(_))) => Err(e),
                    _ => Err(StoreError::Stopped(why)),
                }
            }
        }
    }
}

/// How often the leader looks for expired leases.
const LEASE_TICK: Duration = Duration::from_millis(250);

impl StoreNode {
    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// The leader's lease clock: on becoming leader, give every lease a fresh TTL plus an
    /// election timeout; while leader, revoke expired leases through Raft; on losing
    /// leadership, stop tracking deadlines. Ends when Raft stops.
    async fn expire_leases(self) {
        let extend = Duration::from_millis(self.raft.config().election_timeout_max);
        let mut was_leader = false;
        loop {
            if self.raft.metrics().borrow().running_state.is_err() {
                return;
            }
            let leader = self.is_leader();
            let now = std::time::Instant::now();
            if leader != was_leader {
                // Seen up to a tick late: the handover's wait for this leader's lease errs
                // on the long side.
                *self.leading_since.lock().unwrap_or_else(|e| e.into_inner()) =
                    leader.then(tokio::time::Instant::now);
            }
            if leader && !was_leader {
                lock(&self.leases).promote(now, extend);
            } else if !leader && was_leader {
                lock(&self.leases).demote();
            }
            was_leader = leader;
            if leader {
                let expired = lock(&self.leases).expired(now);
                for id in expired {
                    tracing::info!(lease = id, "lease expired; revoking");
                    if let Err(e) = self.propose(Command::LeaseRevoke(id)).await {
                        tracing::warn!(lease = id, error = %e, "revoking an expired lease failed");
                    }
                }
            }
            tokio::time::sleep(LEASE_TICK).await;
        }
    }

    /// Grants a lease (`id` 0: this member picks one).
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(Header, i64, i64), StoreError> {
        let id = if id != 0 {
            id
        } else {
            // Unique enough across members: the clock in nanoseconds with this member's id in
            // the low bits; a collision is refused by the state machine and the client retries.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as i64;
            lock(&self.leases).free_id(((nanos << 4) | (self.id as i64 & 0xf)) & i64::MAX)
        };
        match self.propose(Command::LeaseGrant { id, ttl }).await? {
            CommandResponse::LeaseGranted { header, id, ttl } => Ok((header, id, ttl)),
            CommandResponse::Failed(m) => Err(refused(m)),
            other => Err(StoreError::Corrupt(format!(
                "grant answered with {other:?}"
            ))),
        }
    }

    /// Revokes a lease and deletes its keys.
    pub async fn lease_revoke(&self, id: i64) -> Result<Header, StoreError> {
        match self.propose(Command::LeaseRevoke(id)).await? {
            CommandResponse::LeaseRevoked(h) => Ok(h),
            CommandResponse::Failed(m) => Err(refused(m)),
            other => Err(StoreError::Corrupt(format!(
                "revoke answered with {other:?}"
            ))),
        }
    }

    /// What this member knows of member `id` from the membership configuration.
    pub fn member(&self, id: u64) -> Option<Member> {
        let m = self.raft.metrics().borrow().clone();
        let node = m.membership_config.membership().get_node(&id).cloned();
        node
    }

    /// Resolves with the reason once this member's Raft core has stopped on a fatal error (a
    /// storage failure, say — then that failure is the reason); the member cannot serve any
    /// more and should be restarted.
    pub async fn failed(&self) -> String {
        let why = self.core_stopped().await;
        match crate::first_storage_failure() {
            Some(root) => root.to_string(),
            None => why,
        }
    }

    async fn core_stopped(&self) -> String {
        let mut rx = self.raft.metrics();
        loop {
            if let Err(e) = &rx.borrow().running_state {
                return e.to_string();
            }
            if rx.changed().await.is_err() {
                // The last report may still name the error.
                if let Err(e) = &rx.borrow().running_state {
                    return e.to_string();
                }
                return "the Raft core stopped".into();
            }
        }
    }

    /// Resolves once this member has been told it was removed from the cluster.
    pub async fn removed(&self) {
        let mut rx = self.removed.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Sends `req` to the leader this member currently knows.
    async fn ask_leader(&self, req: PeerRequest) -> Result<PeerResponse, StoreError> {
        let leader = self.raft.metrics().borrow().current_leader;
        let leader = leader.and_then(|l| Some((l, self.member(l)?)));
        self.send_to(leader, req)
            .await
            .map_err(StoreError::Unavailable)
    }

    /// Renews a lease on the leader; returns its TTL.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        if self.is_leader() {
            let renewed = lock(&self.leases).keep_alive(id, std::time::Instant::now());
            return renewed.map_err(|e| refused(e.to_string()));
        }
        match self.ask_leader(PeerRequest::LeaseKeepAlive(id)).await? {
            PeerResponse::LeaseKeepAlive(r) => r.map_err(refused),
            _ => Err(StoreError::Unavailable(
                "the leader answered a different request".into(),
            )),
        }
    }

    /// A lease's TTL, time left (from the leader's clock) and keys.
    pub async fn lease_time_to_live(&self, id: i64) -> Result<LeaseStatus, StoreError> {
        if self.is_leader() {
            let status = lock(&self.leases).time_to_live(id, std::time::Instant::now());
            return status.map_err(|e| refused(e.to_string()));
        }
        match self.ask_leader(PeerRequest::LeaseTimeToLive(id)).await? {
            PeerResponse::LeaseTimeToLive(r) => r.map_err(refused),
            _ => Err(StoreError::Unavailable(
                "the leader answered a different request".into(),
            )),
        }
    }

    /// Changes the cluster's membership through the leader. A refusal (unknown member, address
    /// in use, learner not caught up) is final; an unreachable leader is retried until
    /// [`REQUEST_TIMEOUT`].
    pub async fn change_membership(&self, change: MemberChange) -> Result<(), StoreError> {
        let removed = match &change {
            MemberChange::Remove(id) => self.member(*id).map(|m| (*id, m)),
            _ => None,
        };
        let outcome = self
            .until_served(|| async {
                if self.is_leader() {
                    return match membership::apply_on_leader(&self.raft, change.clone()).await {
                        // Lost leadership in between: try again through the new leader.
                        Err(MemberRefusal::Failed(why)) if why.contains("forward") => Err(why),
                        other => Ok(other),
                    };
                }
                match self
                    .ask_leader(PeerRequest::ChangeMembership(change.clone()))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    PeerResponse::ChangeMembership(r) => Ok(r),
                    _ => Err("the leader answered a different request".into()),
                }
            })
            .await?;
        outcome.map_err(StoreError::Member)?;
        if let Some(removed) = removed {
            // Tell the removed member, so that it stops instead of campaigning on its own; it
            // may be down already, which is fine.
            let _ = self.send_to(Some(removed), PeerRequest::Removed).await;
        }
        Ok(())
    }

    /// Every lease id, as of a linearizable read.
    pub async fn lease_ids(&self) -> Result<Vec<i64>, StoreError> {
        self.read_barrier().await?;
        Ok(lock(&self.leases).ids())
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
