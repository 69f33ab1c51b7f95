//! The `etcd-client` crate (the Rust etcd client people use), unmodified, against a 3-master
//! Flotilla store: KV, transactions, watch and leases over TLS with client certificates.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use flotilla_e2e::LocalCluster;

async fn connect(cluster: &LocalCluster, member: usize) -> Client {
    let [ca, cert, key] = cluster.admin_pki().map(|p| std::fs::read(p).unwrap());
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name("127.0.0.1");
    Client::connect(
        [cluster.etcd_endpoint(member)],
        Some(ConnectOptions::new().with_tls(tls)),
    )
    .await
    .expect("etcd-client connects over TLS")
}

/// The next watch response carrying events (skipping the creation acknowledgement).
async fn next_events(stream: &mut etcd_client::WatchStream) -> etcd_client::WatchResponse {
    loop {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a watch response within 10 s")
            .unwrap()
            .expect("the watch stream is open");
        if !resp.events().is_empty() {
            return resp;
        }
    }
}

#[test]
fn etcd_client_crate_works_unmodified() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = LocalCluster::up(
            "etcd-client",
            &["--masters", "3", "--nodes", "0", "--no-demo"],
        );
        let mut a = connect(&cluster, 0).await;
        let mut b = connect(&cluster, 1).await;

        // Watch on member 1 from now, then write through member 0.
        let mut stream = b
            .watch(
                "/ec/",
                Some(WatchOptions::new().with_prefix().with_prev_key()),
            )
            .await
            .unwrap();

        let put = a.put("/ec/k", "v1", None).await.unwrap();
        let rev = put.header().unwrap().revision();
        let got = b.get("/ec/k", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"v1");
        assert_eq!(got.kvs()[0].mod_revision(), rev);

        // Compare-and-swap on mod_revision, the Kubernetes update pattern.
        let cas = |expected: i64, value: &'static str| {
            Txn::new()
                .when([Compare::mod_revision("/ec/k", CompareOp::Equal, expected)])
                .and_then([TxnOp::put("/ec/k", value, None)])
                .or_else([TxnOp::get("/ec/k", None)])
        };
        assert!(a.txn(cas(rev, "v2")).await.unwrap().succeeded());
        assert!(!b.txn(cas(rev, "stale")).await.unwrap().succeeded());

        let ev = next_events(&mut stream).await;
        assert_eq!(ev.events()[0].event_type(), EventType::Put);
        let ev = next_events(&mut stream).await;
        let e = &ev.events()[0];
        assert_eq!(e.kv().unwrap().value(), b"v2");
        assert_eq!(e.prev_kv().unwrap().value(), b"v1");

        // Leases: grant, attach, keep alive, revoke deletes the key.
        let lease = a.lease_grant(30, None).await.unwrap();
        a.put(
            "/ec/leased",
            "x",
            Some(PutOptions::new().with_lease(lease.id())),
        )
        .await
        .unwrap();
        let (mut keeper, mut acks) = b.lease_keep_alive(lease.id()).await.unwrap();
        keeper.keep_alive().await.unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(5), acks.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ack.ttl(), 30);
        b.lease_revoke(lease.id()).await.unwrap();
        let left = a
            .get(
                "/ec/",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .unwrap();
        let keys: Vec<_> = left
            .kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap().to_string())
            .collect();
        assert_eq!(keys, ["/ec/k"]);

        // Errors arrive as etcd's.
        let err = a.put("", "x", None).await.unwrap_err();
        assert!(err.to_string().contains("key is not provided"), "{err}");
        let members = a.member_list().await.unwrap();
        assert_eq!(members.members().len(), 3);
    });
}
