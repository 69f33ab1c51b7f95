//! The etcd `Cluster` (MemberList) and `Maintenance` (Status) services over a store member.

use flotilla_proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use super::MemberIdentity;
use crate::raft::node::StoreNode;

/// The version reported to etcd clients: the etcd API level Flotilla's store implements.
pub const API_VERSION: &str = "3.4.0";

/// Membership and status of the store, as etcd reports them.
#[derive(Debug, Clone)]
pub struct ClusterService {
    node: StoreNode,
    identity: MemberIdentity,
    client_url: String,
}

impl ClusterService {
    /// Serves `node`'s membership and status; `client_url` is where this member serves clients.
    pub fn new(node: StoreNode, identity: MemberIdentity, client_url: String) -> ClusterService {
        ClusterService {
            node,
            identity,
            client_url,
        }
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        let term = self.node.raft().metrics().borrow().current_term;
        let revision = self.node.mvcc().revisions().map_or(0, |(r, _)| r);
        self.identity.header(revision, term)
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let metrics = self.node.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, m)| pb::Member {
                id: *id,
                name: m.name.clone(),
                peer_ur_ls: vec![format!("quic://{}", m.peer_addr)],
                // Other members' client addresses are not part of the Raft membership yet.
                client_ur_ls: if *id == self.identity.member_id {
                    vec![self.client_url.clone()]
                } else {
                    Vec::new()
                },
                is_learner: !voters.contains(id),
            })
            .collect();
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(),
            members,
        }))
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for ClusterService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.node.raft().metrics().borrow().clone();
        let db_size = dir_size(self.node.mvcc().path()) as i64;
        Ok(Response::new(pb::StatusResponse {
            header: self.header(),
            version: API_VERSION.into(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: false,
        }))
    }
}

/// Bytes used by the files under `path`.
fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(md) if md.is_dir() => dir_size(&e.path()),
                    Ok(md) => md.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
