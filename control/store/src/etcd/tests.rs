//! The etcd KV service over a real gRPC connection, with the generated etcd client.

use std::sync::Arc;

use flotilla_proto::etcdserverpb as pb;
use pb::kv_client::KvClient;
use tonic::transport::{Channel, Server};
use tonic::Code;

use super::*;
use crate::MvccOptions;

struct Fixture {
    client: KvClient<Channel>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    dir: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn serve(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("flotilla-etcd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(Mvcc::open(&dir, MvccOptions { sync: false }).unwrap());
    let svc = KvService::new(
        store,
        MemberIdentity {
            cluster_id: 7,
            member_id: 1,
        },
    )
    .into_server();
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    let client = KvClient::connect(format!("http://{addr}")).await.unwrap();
    Fixture {
        client,
        shutdown: Some(tx),
        dir,
    }
}

fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn prefix(p: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: p.into(),
        range_end: crate::keys::prefix_end(p.as_bytes()).unwrap(),
        ..Default::default()
    }
}

#[tokio::test]
async fn put_get_prefix_and_headers() {
    let mut f = serve("basic").await;
    let r = f.client.put(put("/a/1", "x")).await.unwrap().into_inner();
    let h = r.header.unwrap();
    assert_eq!((h.cluster_id, h.member_id, h.revision), (7, 1, 1));
    f.client.put(put("/a/2", "y")).await.unwrap();
    f.client.put(put("/b/1", "z")).await.unwrap();
    let r = f.client.range(prefix("/a/")).await.unwrap().into_inner();
    assert_eq!(r.count, 2);
    assert_eq!(r.kvs[1].value, b"y");
    assert_eq!(r.header.unwrap().revision, 3);
    // Sorted descending by key with a limit: etcdctl get --prefix --order=DESCEND --limit=1.
    let r = f
        .client
        .range(pb::RangeRequest {
            sort_order: pb::range_request::SortOrder::Descend as i32,
            limit: 1,
            ..prefix("/a/")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.kvs[0].key, b"/a/2");
    assert!(r.more);
}

#[tokio::test]
async fn txn_create_if_absent_and_delete() {
    let mut f = serve("txn").await;
    let create = |v: &str| pb::TxnRequest {
        compare: vec![pb::Compare {
            key: b"k".to_vec(),
            target: pb::compare::CompareTarget::Mod as i32,
            result: pb::compare::CompareResult::Equal as i32,
            target_union: Some(pb::compare::TargetUnion::ModRevision(0)),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(put("k", v))),
        }],
        failure: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        }],
    };
    let r = f.client.txn(create("first")).await.unwrap().into_inner();
    assert!(r.succeeded);
    let r = f.client.txn(create("second")).await.unwrap().into_inner();
    assert!(!r.succeeded);
    match &r.responses[0].response {
        Some(pb::response_op::Response::ResponseRange(rr)) => assert_eq!(rr.kvs[0].value, b"first"),
        other => panic!("{other:?}"),
    }
    let d = f
        .client
        .delete_range(pb::DeleteRangeRequest {
            key: b"k".to_vec(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted, 1);
    assert_eq!(d.prev_kvs[0].value, b"first");
}

#[tokio::test]
async fn bad_requests_get_etcds_errors_and_write_nothing() {
    let mut f = serve("bad").await;
    f.client.put(put("a", "1")).await.unwrap();

    let e = f.client.put(put("", "v")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "etcdserver: key is not provided");

    let too_many = pb::TxnRequest {
        success: (0..=MAX_TXN_OPS)
            .map(|i| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put(
                    &format!("k{i}"),
                    "v",
                ))),
            })
            .collect(),
        ..Default::default()
    };
    let e = f.client.txn(too_many).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("too many operations"));

    let big = "x".repeat(MAX_REQUEST_BYTES + 1);
    let e = f.client.put(put("big", &big)).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            Code::ResourceExhausted | Code::InvalidArgument | Code::OutOfRange
        ),
        "{e:?}"
    );

    f.client.put(put("a", "2")).await.unwrap();
    f.client
        .compact(pb::CompactionRequest {
            revision: 2,
            physical: true,
        })
        .await
        .unwrap();
    let e = f
        .client
        .range(pb::RangeRequest {
            key: b"a".to_vec(),
            revision: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(e.message().contains("compacted"));

    // Nothing of the refused requests was written: only a's two puts happened.
    let r = f
        .client
        .range(pb::RangeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        r.code(),
        Code::InvalidArgument,
        "an empty key is refused for ranges too"
    );
    let all = f
        .client
        .range(pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.count, 1);
    assert_eq!(all.header.unwrap().revision, 2);
}
