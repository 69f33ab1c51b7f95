//! Proposal batching: transactions proposed while earlier ones are still committing travel
//! together as one log entry ([`Command::Batch`]).
//!
//! openraft appends, syncs and replicates every `client_write` as its own entry; under load
//! (a scheduler binding hundreds of pods at once) the leader spent its time on per-entry
//! work — one WAL sync per entry — while followers received the same entries dozens at a
//! time. The batcher lets at most [`MAX_IN_FLIGHT`] proposals be on their way; whatever
//! arrives meanwhile waits and goes as one entry. A lone proposal goes at once, as itself, so
//! an idle store answers as fast as before. The state machine applies a batch's transactions
//! in order, each at its own revision (so watchers and resourceVersions see them as separate
//! writes), in one atomic write.
//!
//! On a follower the same happens on the way to the leader: proposals that arrive together
//! are forwarded as one batch, in one request, instead of one request each.

use std::sync::Arc;

use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::network::{PeerNetwork, PeerRequest, PeerResponse};
use super::node::{FORWARD_TIMEOUT, REQUEST_TIMEOUT};
use super::{Command, CommandResponse, Member, TypeConfig};
use crate::types::{Op, TxnRequest};

/// Proposals on their way to commit at once; more wait and are batched. (The queue itself is
/// unbounded: every waiting proposal has a caller waiting for its answer, bounded by the
/// callers' own concurrency.)
pub const MAX_IN_FLIGHT: usize = 4;
/// Transactions in one batch at most.
pub const MAX_BATCH: usize = 256;
/// Bytes (keys and values written) in one batch, roughly, at most.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What a proposal answers; an error is worth retrying (no leader, a lost leader…).
pub type Reply = Result<CommandResponse, String>;

struct Waiting {
    req: TxnRequest,
    size: usize,
    /// Whether it may be sent on to the leader (not if it was forwarded here already).
    forward: bool,
    reply: oneshot::Sender<Reply>,
}

/// Proposes commands through Raft, batching transactions. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    raft: Raft<TypeConfig>,
    network: PeerNetwork,
    queue: mpsc::UnboundedSender<Waiting>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Batcher {
    /// A batcher proposing to `raft`, forwarding through `network` (its task ends when every
    /// handle is dropped).
    pub fn start(raft: Raft<TypeConfig>, network: PeerNetwork) -> Batcher {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(run(raft.clone(), network.clone(), waiting));
        Batcher {
            raft,
            network,
            queue,
        }
    }

    /// Proposes `cmd` made on this member, through the leader wherever it is. A transaction
    /// may share its log entry with others; its answer is its own.
    pub async fn write(&self, cmd: Command) -> Reply {
        self.propose(cmd, true).await
    }

    /// Proposes `cmd` forwarded here by another member: committed here or refused, never sent
    /// on (the sender retries once it knows the new leader).
    pub async fn write_here(&self, cmd: Command) -> Reply {
        self.propose(cmd, false).await
    }

    async fn propose(&self, cmd: Command, forward: bool) -> Reply {
        let req = match cmd {
            Command::Txn(req) if batchable(&req) => req,
            // A batch forwarded here, or anything else that must not travel on.
            other if !forward => {
                return self
                    .raft
                    .client_write(other)
                    .await
                    .map(|r| r.data)
                    .map_err(|e| e.to_string())
            }
            other => {
                return match self.raft.client_write(other.clone()).await {
                    Ok(r) => Ok(r.data),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) if forward => {
                        send_to_leader(&self.network, &f, other).await
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        let size = written_bytes(&req);
        let waiting = Waiting {
            req,
            size,
            forward,
            reply,
        };
        if self.queue.send(waiting).is_err() {
            return Err("the store is stopping".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the store is stopping".into()))
    }
}

/// Whether a transaction may share an entry: one that reads at an explicit revision must not,
/// since the history it reads does not hold the revisions written before it in its batch.
pub fn batchable(req: &TxnRequest) -> bool {
    req.success.iter().chain(&req.failure).all(|op| match op {
        Op::Range(r) => r.revision == 0,
        Op::Txn(t) => batchable(t),
        Op::Put(_) | Op::Delete(_) => true,
    })
}

fn written_bytes(req: &TxnRequest) -> usize {
    let compared: usize = req
        .compares
        .iter()
        .map(|c| match &c.target {
            crate::types::CompareTarget::Value(v) => v.len(),
            _ => 16,
        })
        .sum();
    compared
        + req
            .success
            .iter()
            .chain(&req.failure)
            .map(|op| match op {
                Op::Put(p) => p.key.len() + p.value.len(),
                Op::Txn(t) => written_bytes(t),
                Op::Range(_) | Op::Delete(_) => 64,
            })
            .sum::<usize>()
}

async fn run(
    raft: Raft<TypeConfig>,
    network: PeerNetwork,
    mut waiting: mpsc::UnboundedReceiver<Waiting>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A proposal that would have made the last batch too large starts the next one.
    let mut carried: Option<Waiting> = None;
    loop {
        let first = match carried.take() {
            Some(w) => w,
            None => match waiting.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        // Waiting for a slot is what lets a batch form.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(w) if bytes + w.size > MAX_BATCH_BYTES => {
                    carried = Some(w);
                    break;
                }
                Ok(w) => {
                    bytes += w.size;
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up (its request timed out) is not proposed for: its write must
        // not commit after it was told that it failed.
        batch.retain(|w| !w.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (raft, network) = (raft.clone(), network.clone());
        tokio::spawn(async move {
            commit(&raft, &network, batch).await;
            drop(slot);
        });
    }
}

/// One command for the transactions: itself alone, or a batch.
fn command(mut reqs: Vec<TxnRequest>) -> Command {
    match reqs.len() {
        1 => Command::Txn(reqs.remove(0)),
        _ => Command::Batch(reqs),
    }
}

/// Commits `batch` here, or — where another member leads — sends the transactions that may
/// be forwarded to the leader together.
async fn commit(raft: &Raft<TypeConfig>, network: &PeerNetwork, batch: Vec<Waiting>) {
    let (reqs, replies): (Vec<TxnRequest>, Vec<(bool, oneshot::Sender<Reply>)>) = batch
        .into_iter()
        .map(|w| (w.req, (w.forward, w.reply)))
        .unzip();
    if let Some(leader) = other_leader(raft) {
        // Those forwarded here already are refused (their sender retries once it knows the
        // leader); the rest go to the leader as one request.
        let mut onward = Vec::new();
        let mut onward_replies = Vec::new();
        for (req, (forward, reply)) in reqs.into_iter().zip(replies) {
            if forward {
                onward.push(req);
                onward_replies.push(reply);
            } else {
                let _ = reply.send(Err(format!("not the leader: {leader}")));
            }
        }
        if !onward.is_empty() {
            let n = onward.len();
            let answer = send_to_leader(network, &leader, command(onward)).await;
            deliver(answer, n, onward_replies);
        }
        return;
    }
    let count = reqs.len();
    // Bounded, so that a leader cut off from its followers frees the slot (the callers have
    // given up by then; an entry that commits later is theirs to find, as before batching).
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, raft.client_write(command(reqs))).await
    {
        Ok(written) => written.map(|w| w.data).map_err(|e| e.to_string()),
        Err(_) => Err(format!("no commit within {REQUEST_TIMEOUT:?}")),
    };
    deliver(answer, count, replies.into_iter().map(|(_, r)| r).collect());
}

/// The leader, when it is known and another member.
fn other_leader(raft: &Raft<TypeConfig>) -> Option<ForwardToLeader<u64, Member>> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let leader = m.current_leader.filter(|l| *l != m.id)?;
    let node = m.membership_config.membership().get_node(&leader)?.clone();
    Some(ForwardToLeader::new(leader, node))
}

/// Hands each waiting proposal its answer: a batch's answers one by one, a lone
/// transaction's answer as it is, an error to all.
fn deliver(answer: Reply, count: usize, replies: Vec<oneshot::Sender<Reply>>) {
    match answer {
        Ok(CommandResponse::Batch(answers)) if answers.len() == count => {
            for (answer, reply) in answers.into_iter().zip(replies) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(answer) if count == 1 && !matches!(answer, CommandResponse::Batch(_)) => {
            for reply in replies {
                let _ = reply.send(Ok(answer.clone()));
            }
        }
        Ok(other) => {
            let why = format!("a batch of {count} was answered with {other:?}");
            for reply in replies {
                let _ = reply.send(Err(why.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Sends `cmd` to the leader a ForwardToLeader answer names.
async fn send_to_leader(
    network: &PeerNetwork,
    leader: &ForwardToLeader<u64, Member>,
    cmd: Command,
) -> Reply {
    let to = leader.leader_id.zip(leader.leader_node.clone());
    match network
        .send_to(to, PeerRequest::Propose(cmd), FORWARD_TIMEOUT)
        .await?
    {
        PeerResponse::Propose(r) => r,
        _ => Err("the leader answered a different request".into()),
    }
}
