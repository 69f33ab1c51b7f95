//! The etcd v3 gRPC edge: converts protobuf requests to the store's own types (validating them
//! the way etcd does), runs them on a [`KvBackend`], and converts the answers back.
//!
//! Errors carry etcd's own messages (`etcdserver: …`, `mvcc: …`) and gRPC codes, since etcd
//! clients match on them.

use std::future::Future;

use flotilla_proto::etcdserverpb as pb;
use flotilla_proto::mvccpb;
use tonic::{Request, Response, Status};

use crate::keys::KeyRange;
use crate::types::*;
use crate::{Mvcc, StoreError};

mod cluster_service;
mod lease_service;
mod watch_service;
pub use cluster_service::ClusterService;
pub use lease_service::LeaseService;
pub use watch_service::WatchService;

/// Most operations one transaction may hold (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;

/// Largest request the store accepts (1.5 MiB, etcd's default `--max-request-bytes`).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// What the gRPC edge needs from the store. The Raft-replicated store implements it; the bare
/// [`Mvcc`] implements it for single-node use and tests.
pub trait KvBackend: Send + Sync + 'static {
    /// Reads a range; `serializable` allows a member's local, possibly stale, state.
    fn range(
        &self,
        req: RangeRequest,
        serializable: bool,
    ) -> impl Future<Output = Result<(Header, RangeResponse), StoreError>> + Send;
    /// Runs a transaction (puts and deletes are one-operation transactions).
    fn txn(
        &self,
        req: TxnRequest,
    ) -> impl Future<Output = Result<(Header, TxnResponse), StoreError>> + Send;
    /// Compacts history up to `revision`.
    fn compact(&self, revision: u64) -> impl Future<Output = Result<Header, StoreError>> + Send;
}

impl KvBackend for Mvcc {
    async fn range(
        &self,
        req: RangeRequest,
        _serializable: bool,
    ) -> Result<(Header, RangeResponse), StoreError> {
        Mvcc::range(self, &req)
    }

    async fn txn(&self, req: TxnRequest) -> Result<(Header, TxnResponse), StoreError> {
        Mvcc::txn(self, &req).map(|(h, r, _events)| (h, r))
    }

    async fn compact(&self, revision: u64) -> Result<Header, StoreError> {
        Mvcc::compact(self, revision)
    }
}

impl<T: KvBackend> KvBackend for std::sync::Arc<T> {
    fn range(
        &self,
        req: RangeRequest,
        serializable: bool,
    ) -> impl Future<Output = Result<(Header, RangeResponse), StoreError>> + Send {
        T::range(self, req, serializable)
    }

    fn txn(
        &self,
        req: TxnRequest,
    ) -> impl Future<Output = Result<(Header, TxnResponse), StoreError>> + Send {
        T::txn(self, req)
    }

    fn compact(&self, revision: u64) -> impl Future<Output = Result<Header, StoreError>> + Send {
        T::compact(self, revision)
    }
}

/// The gRPC status etcd clients expect for a store error.
pub fn status_of(e: &StoreError) -> Status {
    match e {
        StoreError::EmptyKey => Status::invalid_argument("etcdserver: key is not provided"),
        StoreError::Compacted { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
        }
        StoreError::FutureRevision { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
        }
        StoreError::KeyNotFound => Status::invalid_argument("etcdserver: key not found"),
        StoreError::DuplicateKey => {
            Status::invalid_argument("etcdserver: duplicate key given in txn request")
        }
        StoreError::Storage(_) => Status::unavailable(format!(
            "etcdserver: storage failure, nothing was written: {e}"
        )),
        StoreError::Corrupt(_) => Status::data_loss(e.to_string()),
        StoreError::Transport(_) | StoreError::Unavailable(_) | StoreError::Stopped(_) => {
            Status::unavailable(e.to_string())
        }
        StoreError::Refused(m) => refused_status(m),
        StoreError::Member(r) => {
            use crate::raft::membership::MemberRefusal as R;
            let m = r.to_string();
            match r {
                R::NotFound => Status::not_found(m),
                R::PeerUrlExists | R::NotLearner | R::LearnerNotReady | R::LastVoter => {
                    Status::failed_precondition(m)
                }
                R::Failed(_) => Status::unavailable(m),
            }
        }
    }
}

/// A refusal from the replicated state machine, which carries the store error's message.
fn refused_status(m: &str) -> Status {
    if m.contains("compacted") || m.contains("future revision") {
        Status::out_of_range(format!("etcdserver: mvcc: {m}"))
    } else if m.contains("lease not found") {
        Status::not_found(m.to_string())
    } else if m.starts_with("etcdserver:") {
        Status::invalid_argument(m.to_string())
    } else {
        Status::invalid_argument(format!("etcdserver: {m}"))
    }
}

/// Refuses a request larger than [`MAX_REQUEST_BYTES`] as etcd does, before anything is written.
fn check_size(m: &impl prost::Message) -> Result<(), Status> {
    if m.encoded_len() > MAX_REQUEST_BYTES {
        return Err(Status::invalid_argument("etcdserver: request is too large"));
    }
    Ok(())
}

fn nonneg(v: i64, what: &str) -> Result<u64, Status> {
    u64::try_from(v)
        .map_err(|_| Status::invalid_argument(format!("etcdserver: {what} must not be negative")))
}

fn key_range(key: &[u8], range_end: &[u8]) -> Result<KeyRange, Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("etcdserver: key is not provided"));
    }
    Ok(KeyRange::from_etcd(key, range_end))
}

/// Sorting and revision filters etcd applies after reading; they need the whole range.
#[derive(Debug, Clone, Copy)]
struct PostProcess {
    order: pb::range_request::SortOrder,
    target: pb::range_request::SortTarget,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
    limit: u64,
}

impl PostProcess {
    fn needed(&self) -> bool {
        use pb::range_request::{SortOrder, SortTarget};
        let key_order = self.target == SortTarget::Key && self.order != SortOrder::Descend;
        !key_order
            || self.min_mod > 0
            || self.max_mod > 0
            || self.min_create > 0
            || self.max_create > 0
    }

    fn apply(&self, resp: &mut RangeResponse) {
        use pb::range_request::{SortOrder, SortTarget};
        resp.kvs.retain(|kv| {
            let (m, c) = (kv.mod_revision as i64, kv.create_revision as i64);
            (self.min_mod == 0 || m >= self.min_mod)
                && (self.max_mod == 0 || m <= self.max_mod)
                && (self.min_create == 0 || c >= self.min_create)
                && (self.max_create == 0 || c <= self.max_create)
        });
        match self.target {
            SortTarget::Key => {}
            SortTarget::Version => resp.kvs.sort_by_key(|kv| kv.version),
            SortTarget::Create => resp.kvs.sort_by_key(|kv| kv.create_revision),
            SortTarget::Mod => resp.kvs.sort_by_key(|kv| kv.mod_revision),
            SortTarget::Value => resp.kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if self.order == SortOrder::Descend {
            resp.kvs.reverse();
        }
        if self.limit > 0 && resp.kvs.len() as u64 > self.limit {
            resp.kvs.truncate(self.limit as usize);
            resp.more = true;
        }
    }
}

fn range_request(r: &pb::RangeRequest) -> Result<(RangeRequest, PostProcess), Status> {
    use pb::range_request::{SortOrder, SortTarget};
    let order = SortOrder::try_from(r.sort_order)
        .map_err(|_| Status::invalid_argument("etcdserver: invalid sort option"))?;
    let target = SortTarget::try_from(r.sort_target)
        .map_err(|_| Status::invalid_argument("etcdserver: invalid sort option"))?;
    let post = PostProcess {
        order,
        target,
        min_mod: r.min_mod_revision,
        max_mod: r.max_mod_revision,
        min_create: r.min_create_revision,
        max_create: r.max_create_revision,
        limit: nonneg(r.limit, "limit")?,
    };
    let mut req = RangeRequest {
        range: key_range(&r.key, &r.range_end)?,
        limit: post.limit,
        revision: nonneg(r.revision, "revision")?,
        keys_only: r.keys_only,
        count_only: r.count_only,
    };
    if post.needed() {
        // Sort and filter over the whole range, then apply the limit.
        req.limit = 0;
    }
    Ok((req, post))
}

fn put_request(r: &pb::PutRequest) -> Result<PutRequest, Status> {
    if r.key.is_empty() {
        return Err(Status::invalid_argument("etcdserver: key is not provided"));
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Status::invalid_argument("etcdserver: value is provided"));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Status::invalid_argument("etcdserver: lease is provided"));
    }
    Ok(PutRequest {
        key: r.key.clone(),
        value: r.value.clone(),
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    })
}

fn delete_request(r: &pb::DeleteRangeRequest) -> Result<DeleteRequest, Status> {
    Ok(DeleteRequest {
        range: key_range(&r.key, &r.range_end)?,
        prev_kv: r.prev_kv,
    })
}

fn compare(c: &pb::Compare) -> Result<Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget as T, TargetUnion as U};
    let op = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => CompareOp::Equal,
        Ok(CompareResult::Greater) => CompareOp::Greater,
        Ok(CompareResult::Less) => CompareOp::Less,
        Ok(CompareResult::NotEqual) => CompareOp::NotEqual,
        Err(_) => {
            return Err(Status::invalid_argument(
                "etcdserver: invalid compare result",
            ))
        }
    };
    let target_kind = T::try_from(c.target)
        .map_err(|_| Status::invalid_argument("etcdserver: invalid compare target"))?;
    let target = match (target_kind, c.target_union.as_ref()) {
        (T::Version, Some(U::Version(v))) => CompareTarget::Version(nonneg(*v, "version")?),
        (T::Create, Some(U::CreateRevision(v))) => {
            CompareTarget::CreateRevision(nonneg(*v, "create_revision")?)
        }
        (T::Mod, Some(U::ModRevision(v))) => {
            CompareTarget::ModRevision(nonneg(*v, "mod_revision")?)
        }
        (T::Value, Some(U::Value(v))) => CompareTarget::Value(v.clone()),
        (T::Lease, Some(U::Lease(v))) => CompareTarget::Lease(*v),
        // proto3 omits zero values: a missing union means comparing with 0 / empty.
        (T::Version, None) => CompareTarget::Version(0),
        (T::Create, None) => CompareTarget::CreateRevision(0),
        (T::Mod, None) => CompareTarget::ModRevision(0),
        (T::Value, None) => CompareTarget::Value(Vec::new()),
        (T::Lease, None) => CompareTarget::Lease(0),
        _ => {
            return Err(Status::invalid_argument(
                "etcdserver: compare target does not match its value",
            ))
        }
    };
    Ok(Compare {
        range: key_range(&c.key, &c.range_end)?,
        target,
        op,
    })
}

fn count_ops(t: &pb::TxnRequest) -> usize {
    t.success.len().max(t.failure.len())
}

fn txn_request(t: &pb::TxnRequest) -> Result<TxnRequest, Status> {
    if t.compare.len() > MAX_TXN_OPS || count_ops(t) > MAX_TXN_OPS {
        return Err(Status::invalid_argument(
            "etcdserver: too many operations in txn request",
        ));
    }
    let ops = |list: &[pb::RequestOp]| -> Result<Vec<Op>, Status> {
        list.iter()
            .map(|op| match &op.request {
                Some(pb::request_op::Request::RequestRange(r)) => {
                    // Sorting inside transactions is rare; apply it the simple way.
                    let (mut req, post) = range_request(r)?;
                    if post.needed() {
                        req.limit = post.limit;
                    }
                    Ok(Op::Range(req))
                }
                Some(pb::request_op::Request::RequestPut(r)) => Ok(Op::Put(put_request(r)?)),
                Some(pb::request_op::Request::RequestDeleteRange(r)) => {
                    Ok(Op::Delete(delete_request(r)?))
                }
                Some(pb::request_op::Request::RequestTxn(r)) => Ok(Op::Txn(txn_request(r)?)),
                None => Err(Status::invalid_argument("etcdserver: empty request op")),
            })
            .collect()
    };
    Ok(TxnRequest {
        compares: t.compare.iter().map(compare).collect::<Result<_, _>>()?,
        success: ops(&t.success)?,
        failure: ops(&t.failure)?,
    })
}

fn kv_pb(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision as i64,
        mod_revision: kv.mod_revision as i64,
        version: kv.version as i64,
        value: kv.value,
        lease: kv.lease,
    }
}

/// Identity of the answering member, stamped on every response header.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemberIdentity {
    /// The cluster's id.
    pub cluster_id: u64,
    /// This member's id.
    pub member_id: u64,
}

impl MemberIdentity {
    /// The header of a response this member sends at store `revision` (Raft `term` where the
    /// answer knows it, else 0).
    pub fn header(&self, revision: u64, term: u64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: revision as i64,
            raft_term: term,
        })
    }
}

/// The etcd `KV` service over a [`KvBackend`].
#[derive(Debug)]
pub struct KvService<B> {
    backend: B,
    identity: MemberIdentity,
}

impl<B: KvBackend> KvService<B> {
    /// Serves `backend` as member `identity`.
    pub fn new(backend: B, identity: MemberIdentity) -> KvService<B> {
        KvService { backend, identity }
    }

    /// The tonic server. Requests up to twice the limit are decoded so that the handlers can
    /// answer etcd's own "request is too large"; larger ones are cut off by the decoder.
    pub fn into_server(self) -> pb::kv_server::KvServer<Self> {
        pb::kv_server::KvServer::new(self).max_decoding_message_size(2 * MAX_REQUEST_BYTES)
    }

    fn header(&self, h: Header) -> Option<pb::ResponseHeader> {
        self.identity.header(h.revision, 0)
    }

    fn range_pb(
        &self,
        h: Header,
        mut r: RangeResponse,
        post: Option<PostProcess>,
    ) -> pb::RangeResponse {
        if let Some(p) = post.filter(PostProcess::needed) {
            p.apply(&mut r);
        }
        pb::RangeResponse {
            header: self.header(h),
            count: r.count as i64,
            more: r.more,
            kvs: r.kvs.into_iter().map(kv_pb).collect(),
        }
    }

    fn txn_pb(&self, h: Header, t: TxnResponse) -> pb::TxnResponse {
        use pb::response_op::Response as R;
        let responses = t
            .responses
            .into_iter()
            .map(|r| pb::ResponseOp {
                response: Some(match r {
                    OpResponse::Range(r) => R::ResponseRange(self.range_pb(h, r, None)),
                    OpResponse::Put(p) => R::ResponsePut(pb::PutResponse {
                        header: self.header(h),
                        prev_kv: p.prev_kv.map(kv_pb),
                    }),
                    OpResponse::Delete(d) => R::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: self.header(h),
                        deleted: d.deleted as i64,
                        prev_kvs: d.prev_kvs.into_iter().map(kv_pb).collect(),
                    }),
                    OpResponse::Txn(t) => R::ResponseTxn(self.txn_pb(h, t)),
                }),
            })
            .collect();
        pb::TxnResponse {
            header: self.header(h),
            succeeded: t.succeeded,
            responses,
        }
    }

    async fn single(&self, op: Op) -> Result<(Header, OpResponse), Status> {
        let (h, mut t) = self
            .backend
            .txn(TxnRequest {
                success: vec![op],
                ..Default::default()
            })
            .await
            .map_err(|e| status_of(&e))?;
        let resp = t
            .responses
            .pop()
            .ok_or_else(|| Status::internal("transaction returned no response"))?;
        Ok((h, resp))
    }
}

#[tonic::async_trait]
impl<B: KvBackend> pb::kv_server::Kv for KvService<B> {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let r = request.into_inner();
        let (req, post) = range_request(&r)?;
        let (h, resp) = self
            .backend
            .range(req, r.serializable)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(self.range_pb(h, resp, Some(post))))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        check_size(request.get_ref())?;
        let req = put_request(request.get_ref())?;
        match self.single(Op::Put(req)).await? {
            (h, OpResponse::Put(p)) => Ok(Response::new(pb::PutResponse {
                header: self.header(h),
                prev_kv: p.prev_kv.map(kv_pb),
            })),
            _ => Err(Status::internal("put answered with another operation")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let req = delete_request(request.get_ref())?;
        match self.single(Op::Delete(req)).await? {
            (h, OpResponse::Delete(d)) => Ok(Response::new(pb::DeleteRangeResponse {
                header: self.header(h),
                deleted: d.deleted as i64,
                prev_kvs: d.prev_kvs.into_iter().map(kv_pb).collect(),
            })),
            _ => Err(Status::internal("delete answered with another operation")),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        check_size(request.get_ref())?;
        let req = txn_request(request.get_ref())?;
        let (h, t) = self.backend.txn(req).await.map_err(|e| status_of(&e))?;
        Ok(Response::new(self.txn_pb(h, t)))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let rev = nonneg(request.get_ref().revision, "revision")?;
        let h = self.backend.compact(rev).await.map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::CompactionResponse {
            header: self.header(h),
        }))
    }
}

/// Serves the etcd API (KV, Watch, Lease, Cluster, Maintenance) of store member `node` on `listener` over TLS, requiring client certificates
/// signed by the cluster CA (`ca_pem`), until `shutdown` completes.
pub async fn serve(
    node: crate::raft::node::StoreNode,
    identity: MemberIdentity,
    listener: tokio::net::TcpListener,
    tls: &flotilla_pki::Identity,
    ca_pem: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(ca_pem));
    let cluster = ClusterService::new(node.clone(), identity);
    // Without TCP_NODELAY small responses wait for the client's delayed ACK (~40 ms each).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .tls_config(tls)?
        .add_service(WatchService::new(node.watch_hub().clone(), identity).into_server())
        .add_service(LeaseService::new(node.clone(), identity).into_server())
        .add_service(pb::cluster_server::ClusterServer::new(cluster.clone()))
        .add_service(pb::maintenance_server::MaintenanceServer::new(cluster))
        .add_service(KvService::new(node, identity).into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod tests;
