//! Runtime membership changes, as etcd's `member add|promote|remove|update` ask for them.
//!
//! Only the leader changes the membership. A member that is asked forwards the change over
//! the peer transport; the leader checks it against the current configuration (so refusals
//! are the same whoever was asked) and commits it through Raft (joint consensus).
//!
//! Member ids are derived from the peer address ([`member_id`]) so that `member add`, which
//! knows only the new member's peer URL, and the new member itself, which knows its
//! `--initial-cluster` entry, agree on the id without talking to each other first.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{ChangeMembers, Raft};
use serde::{Deserialize, Serialize};

use super::{Member, TypeConfig};

/// A change to the cluster's membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add a member, as a learner (it replicates but does not vote) or as a voter.
    Add {
        /// The new member's address (its name and client address are published by the member
        /// itself once it runs).
        member: Member,
        /// Add as a learner.
        learner: bool,
    },
    /// Make a learner a voter, once it has caught up.
    Promote(u64),
    /// Remove a member (voter or learner).
    Remove(u64),
    /// Replace what the cluster knows of a member (its peer address, or the name and client
    /// address it publishes).
    Update(u64, Member),
}

/// Why the leader refused a membership change. The messages are etcd's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MemberRefusal {
    /// No member has the id.
    #[error("etcdserver: member not found")]
    NotFound,
    /// Another member already uses the peer address.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// Promote asked for a member that already votes.
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    /// Promote asked for a learner that has not caught up with the leader.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// Removing the member would leave no voter.
    #[error("etcdserver: re-configuration failed: the last voting member cannot be removed")]
    LastVoter,
    /// Raft could not commit the change (no quorum, a change already in progress, shutdown).
    #[error("etcdserver: membership change failed: {0}")]
    Failed(String),
}

/// The Raft id of the member reached at `peer_addr`: the same on every member and in
/// `member add`, nonzero (etcd shows 0 as "no member"). FNV-1a over the address.
pub fn member_id(peer_addr: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in peer_addr.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// How far behind the leader's commit index a learner may be and still be promoted: etcd's
/// rule, 90% of the leader's progress.
fn in_sync(matched: u64, committed: u64) -> bool {
    matched.saturating_mul(10) >= committed.saturating_mul(9)
}

/// Applies `change` on the leader `raft`: checks it against the current configuration, then
/// commits it.
pub async fn apply_on_leader(
    raft: &Raft<TypeConfig>,
    change: MemberChange,
) -> Result<(), MemberRefusal> {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let nodes: BTreeMap<u64, Member> = membership.nodes().map(|(id, m)| (*id, m.clone())).collect();
    let changes = match change {
        MemberChange::Add { member, learner } => {
            if nodes.values().any(|m| m.peer_addr == member.peer_addr) {
                return Err(MemberRefusal::PeerUrlExists);
            }
            let added = BTreeMap::from([(member_id(&member.peer_addr), member)]);
            if learner {
                ChangeMembers::AddNodes(added)
            } else {
                ChangeMembers::AddVoters(added)
            }
        }
        MemberChange::Promote(id) => {
            if !nodes.contains_key(&id) {
                return Err(MemberRefusal::NotFound);
            }
            if voters.contains(&id) {
                return Err(MemberRefusal::NotLearner);
            }
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map_or(0, |l| l.index);
            let committed = metrics.last_applied.map_or(0, |l| l.index);
            if !in_sync(matched, committed) {
                return Err(MemberRefusal::LearnerNotReady);
            }
            ChangeMembers::AddVoterIds(BTreeSet::from([id]))
        }
        MemberChange::Remove(id) => {
            if !nodes.contains_key(&id) {
                return Err(MemberRefusal::NotFound);
            }
            if voters.contains(&id) {
                if voters.len() == 1 {
                    return Err(MemberRefusal::LastVoter);
                }
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            }
        }
        MemberChange::Update(id, member) => {
            if !nodes.contains_key(&id) {
                return Err(MemberRefusal::NotFound);
            }
            if nodes
                .iter()
                .any(|(other, m)| *other != id && m.peer_addr == member.peer_addr)
            {
                return Err(MemberRefusal::PeerUrlExists);
            }
            ChangeMembers::SetNodes(BTreeMap::from([(id, member)]))
        }
    };
    // A leader elected a moment ago has not committed the configuration it inherited yet
    // (its first entry does that): the change waits for it rather than fail.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match raft.change_membership(changes.clone(), false).await {
            Ok(_) => return Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                ),
            )) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(MemberRefusal::Failed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_nonzero_and_differ_by_address() {
        assert_eq!(member_id("127.0.0.1:2380"), member_id("127.0.0.1:2380"));
        assert_ne!(member_id("127.0.0.1:2380"), member_id("127.0.0.1:2381"));
        assert_ne!(member_id(""), 0);
    }

    #[test]
    fn a_learner_is_in_sync_within_ten_percent_of_the_leader() {
        assert!(in_sync(90, 100));
        assert!(!in_sync(89, 100));
        assert!(in_sync(0, 0));
        assert!(!in_sync(0, 5));
    }
}
