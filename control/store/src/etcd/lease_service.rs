//! The etcd `Lease` service over a store member.

use std::pin::Pin;

use flotilla_proto::etcdserverpb as pb;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::{status_of, MemberIdentity};
use crate::raft::node::StoreNode;
use crate::StoreError;

/// The etcd Lease service.
#[derive(Debug, Clone)]
pub struct LeaseService {
    node: StoreNode,
    identity: MemberIdentity,
}

impl LeaseService {
    /// Serves leases of `node` as member `identity`.
    pub fn new(node: StoreNode, identity: MemberIdentity) -> LeaseService {
        LeaseService { node, identity }
    }

    /// The tonic server.
    pub fn into_server(self) -> pb::lease_server::LeaseServer<Self> {
        pb::lease_server::LeaseServer::new(self)
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        let revision = self.node.mvcc().revisions().map_or(0, |(r, _)| r);
        self.identity.header(revision, 0)
    }
}

fn err(e: StoreError) -> Status {
    status_of(&e)
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let r = request.into_inner();
        if r.ttl <= 0 {
            return Err(Status::invalid_argument(
                "etcdserver: lease TTL must be a positive number of seconds",
            ));
        }
        let (_, id, ttl) = self.node.lease_grant(r.id, r.ttl).await.map_err(err)?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: self.header(),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        self.node
            .lease_revoke(request.get_ref().id)
            .await
            .map_err(err)?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: self.header(),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut input = request.into_inner();
        let (out, rx) = mpsc::channel(16);
        let svc = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = input.message().await {
                // As etcd: an unknown lease answers TTL 0 rather than failing the stream.
                let ttl = match svc.node.lease_keep_alive(req.id).await {
                    Ok(ttl) => ttl,
                    Err(StoreError::Refused(_)) => 0,
                    Err(e) => {
                        let _ = out.send(Err(err(e))).await;
                        return;
                    }
                };
                let resp = pb::LeaseKeepAliveResponse {
                    header: svc.header(),
                    id: req.id,
                    ttl,
                };
                if out.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        let resp = match self.node.lease_time_to_live(r.id).await {
            Ok(s) => pb::LeaseTimeToLiveResponse {
                header: self.header(),
                id: s.id,
                ttl: s.remaining,
                granted_ttl: s.granted_ttl,
                keys: if r.keys { s.keys } else { Vec::new() },
            },
            // As etcd: an unknown lease reports TTL -1.
            Err(StoreError::Refused(_)) => pb::LeaseTimeToLiveResponse {
                header: self.header(),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Err(e) => return Err(err(e)),
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let ids = self.node.lease_ids().await.map_err(err)?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.header(),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}
