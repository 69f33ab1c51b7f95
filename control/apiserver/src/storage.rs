//! API objects in the store: JSON documents under `/registry/...`, with Kubernetes' optimistic
//! concurrency on top of the store's revisions.
//!
//! An object is stored without its `resourceVersion`; reads set it to the key's
//! `mod_revision`. Create is a transaction "key absent → put"; update and delete compare the
//! key's `mod_revision` with the `resourceVersion` the client sent (a stale one is 409
//! Conflict). Everything works on any [`Backend`]: the Raft store member in `flotilla server`,
//! a bare MVCC store in tests.

use std::sync::Arc;

use flotilla_store::etcd::KvBackend;
use flotilla_store::types::{
    Compare, CompareOp, CompareTarget, DeleteRequest, Op, OpResponse, PutRequest, RangeRequest,
    TxnRequest,
};
use flotilla_store::watch::{WatchHub, WatchMessage, WatchRequest};
use flotilla_store::{KeyRange, Mvcc, StoreError};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::registry::{self, Scope};
use crate::resources::Resource;
use crate::status::ApiError;

/// What the API server needs from the store: transactions, ranges and watches.
pub trait Backend: KvBackend + Clone {
    /// Watches `req` from this member's applied state.
    fn watch(&self, req: WatchRequest) -> mpsc::Receiver<WatchMessage>;

    /// Asks this member's watches that want progress to report it.
    fn request_progress(&self);

    /// The revision this member's history is compacted to (0: never compacted).
    fn compacted_revision(&self) -> u64;
}

impl Backend for flotilla_store::raft::node::StoreNode {
    fn watch(&self, req: WatchRequest) -> mpsc::Receiver<WatchMessage> {
        self.watch_hub().watch(req, WATCH_BUFFER)
    }

    fn request_progress(&self) {
        self.watch_hub().request_progress();
    }

    fn compacted_revision(&self) -> u64 {
        self.mvcc()
            .revisions()
            .map_or(0, |(_, compacted)| compacted)
    }
}

const WATCH_BUFFER: usize = 256;

/// A single MVCC store with its watch hub: a [`Backend`] without replication, for tests.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    mvcc: Arc<Mvcc>,
    hub: WatchHub,
}

impl LocalBackend {
    /// Serves `mvcc`.
    pub fn new(mvcc: Arc<Mvcc>) -> Result<LocalBackend, StoreError> {
        Ok(LocalBackend {
            hub: WatchHub::new(mvcc.clone())?,
            mvcc,
        })
    }
}

impl KvBackend for LocalBackend {
    async fn range(
        &self,
        req: RangeRequest,
        _serializable: bool,
    ) -> Result<
        (
            flotilla_store::types::Header,
            flotilla_store::types::RangeResponse,
        ),
        StoreError,
    > {
        Mvcc::range(&self.mvcc, &req)
    }

    async fn txn(
        &self,
        req: TxnRequest,
    ) -> Result<
        (
            flotilla_store::types::Header,
            flotilla_store::types::TxnResponse,
        ),
        StoreError,
    > {
        let (h, r, events) = Mvcc::txn(&self.mvcc, &req)?;
        if !events.is_empty() {
            self.hub.notify(h.revision, events);
        }
        Ok((h, r))
    }

    async fn compact(&self, revision: u64) -> Result<flotilla_store::types::Header, StoreError> {
        Mvcc::compact(&self.mvcc, revision)
    }
}

impl Backend for LocalBackend {
    fn watch(&self, req: WatchRequest) -> mpsc::Receiver<WatchMessage> {
        self.hub.watch(req, WATCH_BUFFER)
    }

    fn request_progress(&self) {
        self.hub.request_progress();
    }

    fn compacted_revision(&self) -> u64 {
        self.mvcc.revisions().map_or(0, |(_, compacted)| compacted)
    }
}

tokio::task_local! {
    /// The fencing token of the request being served, if it carries one: every write of the
    /// request then commits only if the Lease it names has not changed hands.
    pub static FENCE: Fence;
}

/// A fencing token (DESIGN.md invariant 6): "I hold Lease `namespace/name` since revision
/// `token`". The token is the Lease's resourceVersion returned by the write that gave it its
/// holder. Whenever a Lease's holder changes, the same transaction rewrites the Lease's fence
/// key, so the fence key's mod_revision is the current holder's token; a fenced write
/// compares it in its own transaction. A deposed holder's writes therefore fail atomically,
/// however late they arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// The revision at which the holder acquired it.
    pub token: u64,
}

/// The HTTP header that carries a fencing token: `<namespace>/<name>=<token>`.
pub const FENCE_HEADER: &str = "flotilla-fence";

impl Fence {
    /// Parses a [`FENCE_HEADER`] value.
    pub fn parse(v: &str) -> Result<Fence, ApiError> {
        let bad = || {
            ApiError::BadRequest(format!(
                "{FENCE_HEADER} {v:?} is not <namespace>/<lease>=<token> (the resourceVersion \
                 of the write that acquired the Lease)"
            ))
        };
        let (lease, token) = v.trim().split_once('=').ok_or_else(bad)?;
        let (namespace, name) = lease.split_once('/').ok_or_else(bad)?;
        let token = token.parse().map_err(|_| bad())?;
        if namespace.is_empty() || name.is_empty() || token == 0 {
            return Err(bad());
        }
        Ok(Fence {
            namespace: namespace.into(),
            name: name.into(),
            token,
        })
    }

    fn key(&self) -> Vec<u8> {
        fence_key(&self.namespace, &self.name)
    }
}

/// Where the current holder's token of Lease `ns/name` is kept (its mod_revision).
fn fence_key(ns: &str, name: &str) -> Vec<u8> {
    format!("{}/fences/{ns}/{name}", registry::ROOT).into_bytes()
}

fn is_lease(res: &Resource) -> bool {
    res.group == "coordination.k8s.io" && res.plural == "leases"
}

fn holder(obj: &Value) -> &str {
    obj.pointer("/spec/holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Adds the request's fence (if any) to `txn`: one more compare, and a read of the fence key
/// at the end of the failure branch so that a failure can be told apart.
fn add_fence(txn: &mut TxnRequest) -> Option<Fence> {
    let fence = FENCE.try_with(Fence::clone).ok()?;
    txn.compares.push(Compare {
        range: KeyRange::Single(fence.key()),
        target: CompareTarget::ModRevision(fence.token),
        op: CompareOp::Equal,
    });
    txn.failure
        .push(Op::Range(RangeRequest::new(KeyRange::Single(fence.key()))));
    Some(fence)
}

/// `Err(Fenced)` if a failed transaction failed on its fence.
fn check_fence(
    fence: Option<Fence>,
    resp: &flotilla_store::types::TxnResponse,
) -> Result<(), ApiError> {
    let Some(fence) = fence else { return Ok(()) };
    if resp.succeeded {
        return Ok(());
    }
    let current = match resp.responses.last() {
        Some(OpResponse::Range(r)) => r.kvs.first().map(|kv| kv.mod_revision),
        _ => None,
    };
    if current == Some(fence.token) {
        return Ok(());
    }
    Err(ApiError::Fenced {
        lease: format!("{}/{}", fence.namespace, fence.name),
        token: fence.token,
    })
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `ADDED`, `MODIFIED` or `DELETED`, with the object as of the change, and — when it
    /// could be had without encoding the object again — its JSON.
    Object(&'static str, Value, Option<axum::body::Bytes>),
    /// Every change up to this revision has been seen (the store's progress report).
    Progress(u64),
    /// History before the watch's start was compacted.
    Expired(ApiError),
}

/// The objects of one resource in the store.
#[derive(Debug, Clone)]
pub struct Storage<B> {
    backend: B,
}

fn internal(e: StoreError) -> ApiError {
    match e {
        StoreError::Compacted {
            requested,
            compacted,
        } => ApiError::Gone {
            requested,
            compacted,
        },
        StoreError::FutureRevision { requested, current } => {
            ApiError::TooLargeResourceVersion { requested, current }
        }
        other => ApiError::Internal(other.to_string()),
    }
}

fn key_of(res: &Resource, ns: Option<&str>, name: &str) -> Vec<u8> {
    registry::object_key(res.store_plural(), ns.filter(|_| res.namespaced), name).into_bytes()
}

fn not_found(res: &Resource, name: &str) -> ApiError {
    ApiError::NotFound {
        kind: resource_ref(res),
        name: name.into(),
    }
}

/// `pods` or `deployments.apps`, as Kubernetes names a resource in messages.
fn resource_ref(res: &Resource) -> String {
    if res.group.is_empty() {
        res.plural.to_string()
    } else {
        format!("{}.{}", res.plural, res.group)
    }
}

/// Decodes a stored object and stamps its resourceVersion.
fn decode(value: &[u8], mod_revision: u64) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(value)
        .map_err(|e| ApiError::Internal(format!("stored object is not JSON: {e}")))?;
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(mod_revision.to_string()));
    }
    Ok(obj)
}

/// Decodes a stored object for a watch: the object with its resourceVersion, and its JSON —
/// the stored bytes with the resourceVersion spliced in, which spares encoding the object
/// again on every master for every change (a tenth of a busy master's CPU went there).
fn decode_change(
    value: &[u8],
    mod_revision: u64,
) -> Result<(Value, Option<axum::body::Bytes>), ApiError> {
    let mut obj: Value = serde_json::from_slice(value)
        .map_err(|e| ApiError::Internal(format!("stored object is not JSON: {e}")))?;
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Ok((obj, None));
    };
    let had = meta.insert("resourceVersion".into(), json!(mod_revision.to_string()));
    // Stored objects carry no resourceVersion; one that does is encoded whole (a spliced
    // second one would be a duplicate key).
    let json = match had {
        None => with_resource_version(value, mod_revision).map(axum::body::Bytes::from),
        Some(_) => None,
    };
    Ok((obj, json))
}

/// `json` (an object) with `"resourceVersion":"<rv>"` as the first member of its top-level
/// `metadata` object; `None` if it is not laid out so.
fn with_resource_version(json: &[u8], rv: u64) -> Option<Vec<u8>> {
    // Watch events are lines: bytes written by something other than this API server (a raw
    // etcd put of pretty-printed JSON) are encoded again instead. (This server stores
    // compact JSON without duplicate members; a raw put with two top-level "metadata"
    // members would be spliced into the first.)
    if json.iter().any(|&c| c == b'\n' || c == b'\r') {
        return None;
    }
    let at = top_level_value(json, b"metadata")?;
    if json.get(at) != Some(&b'{') {
        return None;
    }
    let empty = json.get(skip_ws(json, at + 1)) == Some(&b'}');
    let member = format!(
        "\"resourceVersion\":\"{rv}\"{}",
        if empty { "" } else { "," }
    );
    let mut out = Vec::with_capacity(json.len() + member.len());
    out.extend_from_slice(&json[..=at]);
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(&json[at + 1..]);
    Some(out)
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while json.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Where the value of the top-level member `key` of the object `json` starts.
fn top_level_value(json: &[u8], key: &[u8]) -> Option<usize> {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(json, i);
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let end = string_end(json, i)?;
        let name = &json[i + 1..end - 1];
        i = skip_ws(json, end);
        if json.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(json, i + 1);
        if name == key {
            return Some(i);
        }
        i = skip_ws(json, value_end(json, i)?);
        match json.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

/// Just past the string that starts (with its quote) at `start`.
fn string_end(json: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while let Some(&c) = json.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Just past the value that starts at `start`.
fn value_end(json: &[u8], start: usize) -> Option<usize> {
    match json.get(start)? {
        b'"' => string_end(json, start),
        b'{' | b'[' => {
            let (mut depth, mut i) = (0usize, start);
            while let Some(&c) = json.get(i) {
                match c {
                    b'"' => {
                        i = string_end(json, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = start;
            while json
                .get(i)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']'))
            {
                i += 1;
            }
            Some(i)
        }
    }
}

/// The object as stored: without resourceVersion (the store's revision is the truth).
fn encode(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut stored = obj.clone();
    if let Some(meta) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&stored).map_err(|e| ApiError::Internal(e.to_string()))
}

/// An object's `metadata.resourceVersion`, parsed (0 when absent).
pub fn resource_version(obj: &Value) -> Result<u64, ApiError> {
    let rv = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    registry::parse_resource_version(rv).map_err(ApiError::BadRequest)
}

impl<B: Backend> Storage<B> {
    /// Objects kept in `backend`.
    pub fn new(backend: B) -> Storage<B> {
        Storage { backend }
    }

    /// The store's current revision (linearizable).
    pub async fn revision(&self) -> Result<u64, ApiError> {
        let mut req = RangeRequest::new(KeyRange::Single(b"/registry".to_vec()));
        req.count_only = true;
        let (h, _) = self.backend.range(req, false).await.map_err(internal)?;
        Ok(h.revision)
    }

    /// The revision this member's history is compacted to: a watch must start after it.
    pub fn compacted_revision(&self) -> u64 {
        self.backend.compacted_revision()
    }

    /// One object.
    pub async fn get(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.read(res, ns, name, false).await
    }

    async fn read(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        serializable: bool,
    ) -> Result<Value, ApiError> {
        let req = RangeRequest::new(KeyRange::Single(key_of(res, ns, name)));
        let (_, resp) = self
            .backend
            .range(req, serializable)
            .await
            .map_err(internal)?;
        let kv = resp.kvs.first().ok_or_else(|| not_found(res, name))?;
        decode(&kv.value, kv.mod_revision)
    }

    /// Like [`Storage::get`] from this member's applied state, without a read barrier: it may
    /// be slightly behind, so it only suits a read-modify-write whose write compares the
    /// resourceVersion (a stale read then fails the compare and is read again).
    pub async fn get_local(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.read(res, ns, name, true).await
    }

    /// Every object of `res` in `ns` (all namespaces if `None`) and the revision read at.
    pub async fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let scope = match ns.filter(|_| res.namespaced) {
            Some(ns) => Scope::Namespace(ns),
            None => Scope::All,
        };
        let req = RangeRequest::new(registry::list_range(res.store_plural(), scope));
        let (h, resp) = self.backend.range(req, false).await.map_err(internal)?;
        let items = resp
            .kvs
            .iter()
            .map(|kv| decode(&kv.value, kv.mod_revision))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((items, h.revision))
    }

    /// One page of a list: at most `limit` objects, after the position `cont` (a token an
    /// earlier page returned) and at that page's revision, so that pages make one consistent
    /// list. Returns the objects, the revision, the token for the next page (if any) and how
    /// many objects remain after this page. A first page is read at revision `at` (0: the
    /// current one).
    pub async fn list_page(
        &self,
        res: &Resource,
        ns: Option<&str>,
        limit: u64,
        cont: Option<&str>,
        at: u64,
    ) -> Result<(Vec<Value>, u64, Option<String>, Option<u64>), ApiError> {
        let scope = match ns.filter(|_| res.namespaced) {
            Some(ns) => Scope::Namespace(ns),
            None => Scope::All,
        };
        let full = registry::list_range(res.store_plural(), scope);
        let (range, revision) = match cont {
            None => (full, at),
            Some(token) => {
                let (rev, after) = decode_continue(token)?;
                let mut start = after;
                start.push(0);
                let range = match full {
                    KeyRange::HalfOpen { end, .. } => KeyRange::HalfOpen { start, end },
                    _ => KeyRange::From(start),
                };
                (range, rev)
            }
        };
        let mut req = RangeRequest::new(range);
        req.limit = limit;
        req.revision = revision;
        let (h, resp) = self.backend.range(req, false).await.map_err(internal)?;
        let revision = if revision == 0 { h.revision } else { revision };
        let items = resp
            .kvs
            .iter()
            .map(|kv| decode(&kv.value, kv.mod_revision))
            .collect::<Result<Vec<_>, _>>()?;
        let next = match (resp.more, resp.kvs.last()) {
            (true, Some(last)) => Some(encode_continue(revision, &last.key)),
            _ => None,
        };
        let remaining = next
            .as_ref()
            .map(|_| resp.count.saturating_sub(resp.kvs.len() as u64));
        Ok((items, revision, next, remaining))
    }

    /// Creates `obj` (named by its `metadata.name`); 409 AlreadyExists if the name is taken.
    pub async fn create(
        &self,
        res: &Resource,
        ns: Option<&str>,
        obj: &Value,
    ) -> Result<Value, ApiError> {
        match self.create_claiming(res, ns, obj, &[]).await? {
            Ok(created) => Ok(created),
            Err(_) => unreachable!("no claims were asked for"),
        }
    }

    /// Creates `obj` together with `claims` (keys that must not exist yet, such as an
    /// allocated ClusterIP), atomically. `Ok(Err(taken))` names the claims that were taken.
    pub async fn create_claiming(
        &self,
        res: &Resource,
        ns: Option<&str>,
        obj: &Value,
        claims: &[Vec<u8>],
    ) -> Result<Result<Value, Vec<Vec<u8>>>, ApiError> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let key = key_of(res, ns, name);
        let owner = String::from_utf8_lossy(&key).into_owned().into_bytes();
        let keys: Vec<&Vec<u8>> = std::iter::once(&key).chain(claims).collect();
        let mut txn = TxnRequest {
            compares: keys
                .iter()
                .map(|k| Compare {
                    range: KeyRange::Single((*k).clone()),
                    target: CompareTarget::CreateRevision(0),
                    op: CompareOp::Equal,
                })
                .collect(),
            success: std::iter::once(Op::Put(PutRequest {
                key: key.clone(),
                value: encode(obj)?,
                ..Default::default()
            }))
            .chain(claims.iter().map(|c| {
                Op::Put(PutRequest {
                    key: c.clone(),
                    value: owner.clone(),
                    ..Default::default()
                })
            }))
            .collect(),
            failure: keys
                .iter()
                .map(|k| Op::Range(RangeRequest::new(KeyRange::Single((*k).clone()))))
                .collect(),
        };
        if is_lease(res) && !holder(obj).is_empty() {
            txn.success.push(fence_put(ns, name, obj));
        }
        let fence = add_fence(&mut txn);
        let (h, resp) = self.backend.txn(txn).await.map_err(internal)?;
        check_fence(fence, &resp)?;
        if !resp.succeeded {
            let taken: Vec<Vec<u8>> = resp
                .responses
                .iter()
                .zip(&keys)
                .filter(|(r, _)| matches!(r, OpResponse::Range(r) if !r.kvs.is_empty()))
                .map(|(_, k)| (*k).clone())
                .collect();
            if taken.contains(&key) {
                // A retried proposal (the store retries when an attempt's outcome is unknown,
                // e.g. across a leader change) may find the object its first attempt wrote:
                // the uid generated for this request says so, and then it is a success.
                let existing = match resp.responses.first() {
                    Some(OpResponse::Range(r)) => r.kvs.first(),
                    _ => None,
                };
                if let Some(kv) = existing {
                    let uid = obj.pointer("/metadata/uid").and_then(Value::as_str);
                    let current = decode(&kv.value, kv.mod_revision)?;
                    if uid.is_some()
                        && current.pointer("/metadata/uid").and_then(Value::as_str) == uid
                    {
                        return Ok(Ok(current));
                    }
                }
                return Err(ApiError::AlreadyExists {
                    kind: resource_ref(res),
                    name: name.into(),
                });
            }
            return Ok(Err(taken));
        }
        let mut created = obj.clone();
        stamp(&mut created, h.revision);
        Ok(Ok(created))
    }

    /// Keys under `prefix` (allocation records).
    pub async fn keys(&self, prefix: &str) -> Result<Vec<Vec<u8>>, ApiError> {
        let mut req = RangeRequest::new(KeyRange::prefix(prefix.as_bytes()));
        req.keys_only = true;
        let (_, resp) = self.backend.range(req, false).await.map_err(internal)?;
        Ok(resp.kvs.into_iter().map(|kv| kv.key).collect())
    }

    /// Removes allocation records.
    pub async fn release(&self, claims: &[Vec<u8>]) -> Result<(), ApiError> {
        if claims.is_empty() {
            return Ok(());
        }
        let txn = TxnRequest {
            compares: vec![],
            success: claims
                .iter()
                .map(|c| {
                    Op::Delete(DeleteRequest {
                        range: KeyRange::Single(c.clone()),
                        prev_kv: false,
                    })
                })
                .collect(),
            failure: vec![],
        };
        self.backend.txn(txn).await.map_err(internal)?;
        Ok(())
    }

    /// Replaces the object named by `obj`. With a `resourceVersion` in `obj`, only if it is
    /// still current (else 409 Conflict); without one, unconditionally. 404 if absent.
    pub async fn update(
        &self,
        res: &Resource,
        ns: Option<&str>,
        obj: &Value,
    ) -> Result<Value, ApiError> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let key = key_of(res, ns, name);
        let mut expected = resource_version(obj)?;
        let mut success = vec![Op::Put(PutRequest {
            key: key.clone(),
            value: encode(obj)?,
            ..Default::default()
        })];
        if is_lease(res) {
            // A change of holder rewrites the fence key in the same transaction; comparing the
            // revision read makes "the holder changed" hold at commit time.
            let current = self.get(res, ns, name).await?;
            let read_at = resource_version(&current)?;
            if expected != 0 && expected != read_at {
                return Err(ApiError::Conflict {
                    kind: resource_ref(res),
                    name: name.into(),
                });
            }
            expected = read_at;
            if holder(&current) != holder(obj) {
                success.push(fence_put(ns, name, obj));
            }
        }
        let mut compares = vec![Compare {
            range: KeyRange::Single(key.clone()),
            target: CompareTarget::CreateRevision(0),
            op: CompareOp::Greater,
        }];
        if expected != 0 {
            compares.push(Compare {
                range: KeyRange::Single(key.clone()),
                target: CompareTarget::ModRevision(expected),
                op: CompareOp::Equal,
            });
        }
        let mut txn = TxnRequest {
            compares,
            success,
            failure: vec![Op::Range(RangeRequest::new(KeyRange::Single(key)))],
        };
        let fence = add_fence(&mut txn);
        let (h, resp) = self.backend.txn(txn).await.map_err(internal)?;
        check_fence(fence, &resp)?;
        if !resp.succeeded {
            // (A retried proposal whose first attempt committed lands here too: a Conflict,
            // as Kubernetes answers any stale update; clients re-read and retry.)
            let current = match resp.responses.first() {
                Some(OpResponse::Range(r)) => r.kvs.first(),
                _ => None,
            };
            let exists = current.is_some();
            return Err(if exists {
                ApiError::Conflict {
                    kind: resource_ref(res),
                    name: name.into(),
                }
            } else {
                not_found(res, name)
            });
        }
        let mut updated = obj.clone();
        stamp(&mut updated, h.revision);
        Ok(updated)
    }

    /// Deletes an object; with `expected` (a resourceVersion precondition), only if current.
    /// Returns the object as it was.
    pub async fn delete(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        expected: Option<u64>,
    ) -> Result<Value, ApiError> {
        let key = key_of(res, ns, name);
        let mut compares = vec![Compare {
            range: KeyRange::Single(key.clone()),
            target: CompareTarget::CreateRevision(0),
            op: CompareOp::Greater,
        }];
        if let Some(rv) = expected {
            compares.push(Compare {
                range: KeyRange::Single(key.clone()),
                target: CompareTarget::ModRevision(rv),
                op: CompareOp::Equal,
            });
        }
        let mut txn = TxnRequest {
            compares,
            success: vec![Op::Delete(DeleteRequest {
                range: KeyRange::Single(key.clone()),
                prev_kv: true,
            })],
            failure: vec![Op::Range(RangeRequest::new(KeyRange::Single(key)))],
        };
        let fence = add_fence(&mut txn);
        let (_, resp) = self.backend.txn(txn).await.map_err(internal)?;
        check_fence(fence, &resp)?;
        match resp.responses.first() {
            Some(OpResponse::Delete(d)) if resp.succeeded => {
                let prev = d.prev_kvs.first().ok_or_else(|| not_found(res, name))?;
                decode(&prev.value, prev.mod_revision)
            }
            Some(OpResponse::Range(r)) if !r.kvs.is_empty() => Err(ApiError::Conflict {
                kind: resource_ref(res),
                name: name.into(),
            }),
            _ => Err(not_found(res, name)),
        }
    }

    /// Asks the store's watches for progress reports ([`Change::Progress`]).
    pub fn request_progress(&self) {
        self.backend.request_progress();
    }

    /// Changes to `res` in `ns` after revision `after` (0: from now), in revision order, with
    /// the store's progress reports between them.
    pub fn watch(&self, res: &Resource, ns: Option<&str>, after: u64) -> mpsc::Receiver<Change> {
        let scope = match ns.filter(|_| res.namespaced) {
            Some(ns) => Scope::Namespace(ns),
            None => Scope::All,
        };
        let mut rx = self.backend.watch(WatchRequest {
            range: registry::list_range(res.store_plural(), scope),
            start_revision: if after == 0 { 0 } else { after + 1 },
            prev_kv: true,
            no_put: false,
            no_delete: false,
            progress: true,
        });
        let (tx, out) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let changes = match msg {
                    // Each revision's changes, then word that the revision is complete.
                    WatchMessage::Events { events, revision } => events
                        .iter()
                        .filter_map(change_of)
                        .chain([Change::Progress(revision)])
                        .collect::<Vec<_>>(),
                    WatchMessage::Compacted { compact_revision } => {
                        vec![Change::Expired(ApiError::Gone {
                            requested: after,
                            compacted: compact_revision,
                        })]
                    }
                    WatchMessage::Progress { revision } => vec![Change::Progress(revision)],
                    WatchMessage::Failed(why) => {
                        vec![Change::Expired(ApiError::Internal(why))]
                    }
                };
                for c in changes {
                    let end = matches!(c, Change::Expired(_));
                    if tx.send(c).await.is_err() || end {
                        return;
                    }
                }
            }
        });
        out
    }
}

/// The write that records a Lease's new holder: its fence key, rewritten.
fn fence_put(ns: Option<&str>, name: &str, lease: &Value) -> Op {
    Op::Put(PutRequest {
        key: fence_key(ns.unwrap_or(""), name),
        value: holder(lease).as_bytes().to_vec(),
        ..Default::default()
    })
}

/// A continue token: the revision of the list and the last key returned, hex-encoded.
pub(crate) fn encode_continue(revision: u64, last: &[u8]) -> String {
    let hex: String = last.iter().map(|b| format!("{b:02x}")).collect();
    format!("{revision}-{hex}")
}

pub(crate) fn decode_continue(token: &str) -> Result<(u64, Vec<u8>), ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "invalid continue token {token:?}: pass the one the previous page returned"
        ))
    };
    let (rev, hex) = token.split_once('-').ok_or_else(bad)?;
    let rev = rev.parse().map_err(|_| bad())?;
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    let key = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    if !key.starts_with(registry::ROOT.as_bytes()) {
        return Err(bad());
    }
    Ok((rev, key))
}

/// Sets `metadata.resourceVersion` to `revision`.
fn stamp(obj: &mut Value, revision: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

fn change_of(e: &flotilla_store::types::Event) -> Option<Change> {
    use flotilla_store::types::EventKind;
    match e.kind {
        EventKind::Put => {
            let kind = if e.kv.create_revision == e.kv.mod_revision {
                "ADDED"
            } else {
                "MODIFIED"
            };
            decode_change(&e.kv.value, e.kv.mod_revision)
                .ok()
                .map(|(o, json)| Change::Object(kind, o, json))
        }
        EventKind::Delete => {
            let prev = e.prev_kv.as_ref()?;
            // A deleted object carries the deletion's revision.
            decode_change(&prev.value, e.kv.mod_revision)
                .ok()
                .map(|(o, json)| Change::Object("DELETED", o, json))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_change_gets_its_resource_version_spliced_into_the_stored_json() {
        let objects = [
            // A nested "metadata" before the top-level one (keys are stored sorted).
            json!({"apiVersion": "apps/v1", "data": {"spec": {"template": {"metadata":
                {"labels": {"a": "b"}}}}}, "kind": "ControllerRevision",
                "metadata": {"name": "r", "namespace": "d"}, "revision": 1}),
            // Strings that look like JSON, escapes, and an empty metadata.
            json!({"apiVersion": "v1", "data": {"metadata": "{\"metadata\":{}}", "q": "\\\""},
                "kind": "ConfigMap", "metadata": {}}),
            json!({"kind": "Pod", "metadata": {"name": "p", "labels": {"x": "[]{}"}},
                "spec": {"containers": [{"name": "c", "args": ["}", "]"]}]}}),
        ];
        for obj in objects {
            let stored = encode(&obj).unwrap();
            let (value, json) = decode_change(&stored, 42).unwrap();
            let json = json.expect("spliced");
            let reparsed: Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(reparsed, value, "{}", String::from_utf8_lossy(&json));
            assert_eq!(value["metadata"]["resourceVersion"], "42");
        }
        // Not laid out as expected: no splice, and the caller encodes the object itself.
        assert_eq!(with_resource_version(br#"{"metadata": 5}"#, 1), None);
        assert_eq!(with_resource_version(br#"[{"metadata": {}}]"#, 1), None);
        assert_eq!(with_resource_version(br#"{"kind": "X"}"#, 1), None);
        assert_eq!(
            with_resource_version(b"{\n  \"metadata\": {}\n}", 1),
            None,
            "pretty-printed bytes would break the watch's lines"
        );
        let (_, json) = decode_change(br#"{"metadata": {"resourceVersion": "7"}}"#, 9).unwrap();
        assert!(
            json.is_none(),
            "a stored resourceVersion is replaced, not duplicated"
        );
    }
    use crate::resources;

    fn storage(name: &str) -> (Storage<LocalBackend>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "flotilla-api-storage-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mvcc = Arc::new(Mvcc::open(&dir, Default::default()).unwrap());
        (Storage::new(LocalBackend::new(mvcc).unwrap()), dir)
    }

    fn cm(name: &str, data: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "default"}, "data": {"k": data}})
    }

    #[tokio::test]
    async fn create_get_update_delete_with_optimistic_concurrency() {
        let (s, dir) = storage("crud");
        let res = resources::find("", "v1", "configmaps").unwrap();
        let ns = Some("default");
        let created = s.create(res, ns, &cm("a", "1")).await.unwrap();
        let rv = resource_version(&created).unwrap();
        assert!(rv > 0);
        assert!(matches!(
            s.create(res, ns, &cm("a", "1")).await,
            Err(ApiError::AlreadyExists { .. })
        ));
        // The same request again (a proposal retried after an unknown outcome): its uid
        // finds its own object, a success; another uid is a conflict.
        let mut mine = cm("b", "1");
        mine["metadata"]["uid"] = json!("uid-b");
        let first = s.create(res, ns, &mine).await.unwrap();
        let again = s.create(res, ns, &mine).await.unwrap();
        assert_eq!(first, again);
        mine["metadata"]["uid"] = json!("uid-other");
        assert!(matches!(
            s.create(res, ns, &mine).await,
            Err(ApiError::AlreadyExists { .. })
        ));
        s.delete(res, ns, "b", None).await.unwrap();
        let got = s.get(res, ns, "a").await.unwrap();
        assert_eq!(got["data"]["k"], "1");
        assert_eq!(resource_version(&got).unwrap(), rv);

        // An update with the current resourceVersion wins; the same one again is stale.
        let mut next = got.clone();
        next["data"]["k"] = json!("2");
        let updated = s.update(res, ns, &next).await.unwrap();
        assert!(resource_version(&updated).unwrap() > rv);
        assert!(matches!(
            s.update(res, ns, &next).await,
            Err(ApiError::Conflict { .. })
        ));
        assert!(matches!(
            s.update(res, ns, &cm("missing", "x")).await,
            Err(ApiError::NotFound { .. })
        ));

        let (items, list_rv) = s.list(res, ns).await.unwrap();
        assert_eq!(items.len(), 1);
        assert!(list_rv >= resource_version(&updated).unwrap());
        assert!(s.list(res, Some("other")).await.unwrap().0.is_empty());

        assert!(matches!(
            s.delete(res, ns, "a", Some(rv)).await,
            Err(ApiError::Conflict { .. })
        ));
        let gone = s.delete(res, ns, "a", None).await.unwrap();
        assert_eq!(gone["data"]["k"], "2");
        assert!(matches!(
            s.get(res, ns, "a").await,
            Err(ApiError::NotFound { .. })
        ));
        assert!(matches!(
            s.delete(res, ns, "a", None).await,
            Err(ApiError::NotFound { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn lists_page_consistently_with_continue_tokens() {
        let (s, dir) = storage("pages");
        let res = resources::find("", "v1", "configmaps").unwrap();
        for i in 0..5 {
            s.create(res, Some("default"), &cm(&format!("c{i}"), "x"))
                .await
                .unwrap();
        }
        let (page, rev, next, remaining) =
            s.list_page(res, Some("default"), 2, None, 0).await.unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(remaining, Some(3));
        // A write after the first page does not show in the later pages of this list.
        s.create(res, Some("default"), &cm("c9", "x"))
            .await
            .unwrap();
        let mut names: Vec<String> = page
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().into())
            .collect();
        let mut token = next;
        while let Some(t) = token {
            let (page, r, next, _) = s
                .list_page(res, Some("default"), 2, Some(&t), 0)
                .await
                .unwrap();
            assert_eq!(r, rev);
            names.extend(
                page.iter()
                    .map(|o| o["metadata"]["name"].as_str().unwrap().to_string()),
            );
            token = next;
        }
        assert_eq!(names, ["c0", "c1", "c2", "c3", "c4"]);
        assert!(s
            .list_page(res, Some("default"), 2, Some("garbage"), 0)
            .await
            .is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn watches_replay_from_a_resource_version_then_follow() {
        let (s, dir) = storage("watch");
        let res = resources::find("", "v1", "configmaps").unwrap();
        let ns = Some("default");
        let first = s.create(res, ns, &cm("a", "1")).await.unwrap();
        let rv = resource_version(&first).unwrap();
        let mut w = s.watch(res, ns, rv);
        let mut b = cm("a", "2");
        b["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.update(res, ns, &b).await.unwrap();
        s.create(res, Some("other"), &cm("elsewhere", "x"))
            .await
            .unwrap();
        s.delete(res, ns, "a", None).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match w.recv().await.unwrap() {
                Change::Object(t, o, _) => seen.push((t, o["data"]["k"].clone())),
                Change::Progress(_) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            seen,
            vec![("MODIFIED", json!("2")), ("DELETED", json!("2"))]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn lease(holder: &str, rv: Option<u64>) -> Value {
        let mut l = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                           "metadata": {"name": "leader", "namespace": "kube-system"},
                           "spec": {"holderIdentity": holder}});
        if let Some(rv) = rv {
            l["metadata"]["resourceVersion"] = json!(rv.to_string());
        }
        l
    }

    #[tokio::test]
    async fn fenced_writes_commit_only_while_the_lease_keeps_its_holder() {
        let (s, dir) = storage("fence");
        let leases = resources::find("coordination.k8s.io", "v1", "leases").unwrap();
        let cms = resources::find("", "v1", "configmaps").unwrap();
        let ks = Some("kube-system");
        let fence = |token| Fence {
            namespace: "kube-system".into(),
            name: "leader".into(),
            token,
        };
        // m1 acquires: its token is the resourceVersion of that write.
        let acquired = s.create(leases, ks, &lease("m1", None)).await.unwrap();
        let m1 = resource_version(&acquired).unwrap();
        FENCE
            .scope(fence(m1), s.create(cms, ks, &cm("a", "1")))
            .await
            .unwrap();
        // Renewals (same holder) keep the token valid.
        let renewed = s.update(leases, ks, &lease("m1", Some(m1))).await.unwrap();
        FENCE
            .scope(fence(m1), s.create(cms, ks, &cm("b", "1")))
            .await
            .unwrap();
        // m2 takes over; m1's token is dead for creates, updates and deletes alike.
        let rv = resource_version(&renewed).unwrap();
        let taken = s.update(leases, ks, &lease("m2", Some(rv))).await.unwrap();
        let m2 = resource_version(&taken).unwrap();
        let refused = FENCE
            .scope(fence(m1), s.create(cms, ks, &cm("c", "1")))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, ApiError::Fenced { token, .. } if token == m1),
            "{refused:?}"
        );
        assert_eq!(refused.code_and_reason().0.as_u16(), 409);
        let err = FENCE
            .scope(fence(m1), s.delete(cms, ks, "a", None))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Fenced { .. }), "{err:?}");
        let err = FENCE
            .scope(fence(m1), s.update(cms, ks, &cm("a", "2")))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Fenced { .. }), "{err:?}");
        assert!(
            s.get(cms, ks, "c").await.is_err(),
            "nothing of m1's was written"
        );
        assert_eq!(s.get(cms, ks, "a").await.unwrap()["data"]["k"], "1");
        // m2's token works; ordinary errors still come through a valid fence.
        FENCE
            .scope(fence(m2), s.create(cms, ks, &cm("c", "2")))
            .await
            .unwrap();
        let exists = FENCE
            .scope(fence(m2), s.create(cms, ks, &cm("c", "2")))
            .await
            .unwrap_err();
        assert!(
            matches!(exists, ApiError::AlreadyExists { .. }),
            "{exists:?}"
        );
        // A clean release (no holder) also ends m2's token.
        s.update(leases, ks, &lease("", Some(m2))).await.unwrap();
        let err = FENCE
            .scope(fence(m2), s.create(cms, ks, &cm("d", "1")))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Fenced { .. }), "{err:?}");
        assert!(Fence::parse("kube-system/leader=12").is_ok());
        for bad in ["", "leader=1", "kube-system/leader", "a/b=x", "a/b=0"] {
            assert!(Fence::parse(bad).is_err(), "{bad:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
