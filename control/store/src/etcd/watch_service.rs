//! The etcd `Watch` service: one bidirectional stream carries any number of watches, created
//! and cancelled by the client, each fed by the member's [`WatchHub`] from its own applied
//! state.

use std::collections::HashMap;
use std::pin::Pin;

use flotilla_proto::etcdserverpb as pb;
use flotilla_proto::mvccpb;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

use super::{key_range, kv_pb, MemberIdentity};
use crate::types::{Event, EventKind};
use crate::watch::{WatchHub, WatchMessage, WatchRequest};

/// Messages buffered per watch between the hub and the stream.
const WATCH_BUFFER: usize = 128;
/// Responses buffered per stream towards the client.
const STREAM_BUFFER: usize = 256;

/// The etcd Watch service over a member's watch hub.
#[derive(Debug, Clone)]
pub struct WatchService {
    hub: WatchHub,
    identity: MemberIdentity,
}

impl WatchService {
    /// Serves watches from `hub` as member `identity`.
    pub fn new(hub: WatchHub, identity: MemberIdentity) -> WatchService {
        WatchService { hub, identity }
    }

    /// The tonic server.
    pub fn into_server(self) -> pb::watch_server::WatchServer<Self> {
        pb::watch_server::WatchServer::new(self)
    }
}

fn event_pb(e: Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            EventKind::Put => mvccpb::event::EventType::Put as i32,
            EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv_pb(e.kv)),
        prev_kv: e.prev_kv.map(kv_pb),
    }
}

/// One client stream's state: its watches and where responses go.
struct Session {
    hub: WatchHub,
    identity: MemberIdentity,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watches: HashMap<i64, JoinHandle<()>>,
    next_id: i64,
}

impl Session {
    fn header(&self, revision: u64) -> Option<pb::ResponseHeader> {
        self.identity.header(revision, 0)
    }

    fn current(&self) -> u64 {
        self.hub.current_revision()
    }

    async fn send(&self, resp: pb::WatchResponse) -> bool {
        self.out.send(Ok(resp)).await.is_ok()
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> bool {
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            self.next_id
        };
        self.next_id = self.next_id.max(id) + 1;
        let rejected = |reason: String| pb::WatchResponse {
            watch_id: id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        if self.watches.contains_key(&id) {
            return self
                .send(rejected(format!("etcdserver: duplicate watch ID {id}")))
                .await;
        }
        let range = match key_range(&c.key, &c.range_end) {
            Ok(r) => r,
            Err(s) => return self.send(rejected(s.message().to_string())).await,
        };
        let Ok(start) = u64::try_from(c.start_revision) else {
            return self
                .send(rejected(
                    "etcdserver: start revision must not be negative".into(),
                ))
                .await;
        };
        use pb::watch_create_request::FilterType;
        let req = WatchRequest {
            range,
            start_revision: start,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress: false,
        };
        let created = pb::WatchResponse {
            header: self.header(self.current()),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        if !self.send(created).await {
            return false;
        }
        let mut rx = self.hub.watch(req, WATCH_BUFFER);
        let out = self.out.clone();
        let identity = self.identity;
        let header = move |revision: u64| identity.header(revision, 0);
        let task = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let resp = match msg {
                    WatchMessage::Events { revision, events } => pb::WatchResponse {
                        header: header(revision),
                        watch_id: id,
                        events: events.into_iter().map(event_pb).collect(),
                        ..Default::default()
                    },
                    WatchMessage::Compacted { compact_revision } => pb::WatchResponse {
                        header: header(compact_revision),
                        watch_id: id,
                        canceled: true,
                        compact_revision: compact_revision as i64,
                        cancel_reason: "etcdserver: mvcc: required revision has been compacted"
                            .into(),
                        ..Default::default()
                    },
                    WatchMessage::Progress { revision } => pb::WatchResponse {
                        header: header(revision),
                        watch_id: id,
                        ..Default::default()
                    },
                    WatchMessage::Failed(why) => pb::WatchResponse {
                        watch_id: id,
                        canceled: true,
                        cancel_reason: why,
                        ..Default::default()
                    },
                };
                if out.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        self.watches.insert(id, task);
        true
    }

    async fn cancel(&mut self, id: i64) -> bool {
        if let Some(task) = self.watches.remove(&id) {
            // Aborting drops the hub's receiver, which ends the hub-side watcher.
            task.abort();
        }
        let resp = pb::WatchResponse {
            header: self.header(self.current()),
            watch_id: id,
            canceled: true,
            ..Default::default()
        };
        self.send(resp).await
    }

    async fn progress(&self) -> bool {
        // As etcd 3.4 does: a response with only a header to every watch of the stream.
        let revision = self.current();
        for id in self.watches.keys() {
            let resp = pb::WatchResponse {
                header: self.header(revision),
                watch_id: *id,
                ..Default::default()
            };
            if !self.send(resp).await {
                return false;
            }
        }
        true
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in self.watches.values() {
            task.abort();
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut input = request.into_inner();
        let (out, rx) = mpsc::channel(STREAM_BUFFER);
        let mut session = Session {
            hub: self.hub.clone(),
            identity: self.identity,
            out,
            watches: HashMap::new(),
            next_id: 1,
        };
        tokio::spawn(async move {
            use pb::watch_request::RequestUnion;
            while let Ok(Some(req)) = input.message().await {
                let alive = match req.request_union {
                    Some(RequestUnion::CreateRequest(c)) => session.create(c).await,
                    Some(RequestUnion::CancelRequest(c)) => session.cancel(c.watch_id).await,
                    Some(RequestUnion::ProgressRequest(_)) => session.progress().await,
                    None => true,
                };
                if !alive {
                    break;
                }
            }
            // The client closed its side or went away: the session's watches end with it.
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
