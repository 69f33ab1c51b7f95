//! The etcd `Cluster` (member add/remove/update/promote/list) and `Maintenance` (Status,
//! Snapshot) services over a store member.

use flotilla_proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use super::MemberIdentity;
use crate::raft::membership::{member_id, MemberChange, MemberRefusal};
use crate::raft::node::StoreNode;
use crate::raft::Member;

/// The version reported to etcd clients: the etcd API level Flotilla's store implements.
pub const API_VERSION: &str = "3.4.0";

/// Membership and status of the store, as etcd reports them.
#[derive(Debug, Clone)]
pub struct ClusterService {
    node: StoreNode,
    identity: MemberIdentity,
}

impl ClusterService {
    /// Serves `node`'s membership and status.
    pub fn new(node: StoreNode, identity: MemberIdentity) -> ClusterService {
        ClusterService { node, identity }
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        let term = self.node.raft().metrics().borrow().current_term;
        let revision = self.node.mvcc().revisions().map_or(0, |(r, _)| r);
        self.identity.header(revision, term)
    }
}

impl ClusterService {
    /// Every member as etcd shows it: peer URLs as `https://ADDR` (the QUIC port; etcdctl only
    /// accepts http(s) URLs), client URLs as each member published them, learners marked.
    fn members(&self) -> Vec<pb::Member> {
        let metrics = self.node.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, m)| pb::Member {
                id: *id,
                name: m.name.clone(),
                peer_ur_ls: vec![format!("https://{}", m.peer_addr)],
                client_ur_ls: if m.client_addr.is_empty() {
                    Vec::new()
                } else {
                    vec![m.client_addr.clone()]
                },
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// Applies a membership change and answers with the header and the new member list.
    async fn change(
        &self,
        change: MemberChange,
    ) -> Result<(Option<pb::ResponseHeader>, Vec<pb::Member>), Status> {
        self.node
            .change_membership(change)
            .await
            .map_err(|e| super::status_of(&e))?;
        Ok((self.header(), self.members()))
    }
}

/// The one peer address in etcd-style `peerURLs` (`https://IP:PORT`, `http://…`, or `IP:PORT`).
fn peer_addr(urls: &[String]) -> Result<String, Status> {
    let invalid = || Status::invalid_argument("etcdserver: given member URLs are invalid");
    let [url] = urls else {
        return Err(Status::invalid_argument(
            "etcdserver: give exactly one peer URL (https://IP:PORT of the member's QUIC port)",
        ));
    };
    let addr = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    let addr: std::net::SocketAddr = addr.parse().map_err(|_| invalid())?;
    Ok(addr.to_string())
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let req = request.into_inner();
        let addr = peer_addr(&req.peer_ur_ls)?;
        let id = member_id(&addr);
        let member = Member {
            name: String::new(),
            peer_addr: addr.clone(),
            client_addr: String::new(),
        };
        let (mut header, mut members) = self
            .change(MemberChange::Add {
                member,
                learner: req.is_learner,
            })
            .await?;
        // The change committed through the leader; this member may apply it a moment later,
        // and etcdctl needs the new member in the answer.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while !members.iter().any(|m| m.id == id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            (header, members) = (self.header(), self.members());
        }
        let Some(added) = members.iter().find(|m| m.id == id).cloned() else {
            return Err(Status::unavailable(
                "etcdserver: the member was added but this member has not seen it yet; run                  `etcdctl member list` to check",
            ));
        };
        Ok(Response::new(pb::MemberAddResponse {
            header,
            member: Some(added),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        let (header, members) = self.change(MemberChange::Remove(id)).await?;
        Ok(Response::new(pb::MemberRemoveResponse { header, members }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        let addr = peer_addr(&req.peer_ur_ls)?;
        let mut member = self
            .node
            .member(req.id)
            .ok_or_else(|| super::status_of(&MemberRefusal::NotFound.into()))?;
        member.peer_addr = addr;
        let (header, members) = self.change(MemberChange::Update(req.id, member)).await?;
        Ok(Response::new(pb::MemberUpdateResponse { header, members }))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        let (header, members) = self.change(MemberChange::Promote(id)).await?;
        Ok(Response::new(pb::MemberPromoteResponse { header, members }))
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

    type SnapshotStream = SnapshotStream;

    /// This member's whole state, read from one consistent RocksDB view, in chunks; restore it
    /// with `flotilla server --restore FILE`.
    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let header = self.header();
        let mvcc = self.node.mvcc().clone();
        let data = tokio::task::spawn_blocking(move || mvcc.export())
            .await
            .map_err(|e| Status::internal(format!("snapshot task failed: {e}")))?
            .map_err(|e| super::status_of(&e))?;
        let data = crate::backup::encode(&data);
        let total = data.len();
        let chunks: Vec<Result<pb::SnapshotResponse, Status>> = data
            .chunks(SNAPSHOT_CHUNK)
            .scan(0usize, |sent, chunk| {
                *sent += chunk.len();
                Some(Ok(pb::SnapshotResponse {
                    header,
                    remaining_bytes: (total - *sent) as u64,
                    blob: chunk.to_vec(),
                }))
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

/// Size of one `SnapshotResponse` chunk.
const SNAPSHOT_CHUNK: usize = 64 * 1024;

/// `Maintenance.Snapshot`'s stream of chunks.
type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

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
