//! Three members in one process, talking Raft over real QUIC with mutual TLS on loopback.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_pki::{client_config, server_config, CertRequest, ClientAuth, ClusterCa, Usage};

use super::network::{PeerEndpoint, PeerNetwork};
use super::node::StoreNode;
use super::*;
use crate::etcd::KvBackend;
use crate::types::{Op, PutRequest, RangeRequest};
use crate::KeyRange;

struct Cluster {
    nodes: BTreeMap<u64, StoreNode>,
    dir: std::path::PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls(ca: &ClusterCa) -> (rustls::ServerConfig, rustls::ClientConfig) {
    let id = ca
        .issue(&CertRequest::host(
            "member",
            &["127.0.0.1".into(), "localhost".into()],
            Usage::Peer,
        ))
        .unwrap();
    (
        server_config(ca.cert_pem(), &id, ClientAuth::Required).unwrap(),
        client_config(ca.cert_pem(), Some(&id)).unwrap(),
    )
}

async fn start(name: &str, n: u64) -> Cluster {
    flotilla_pki::install_crypto_provider();
    let dir = std::env::temp_dir().join(format!("flotilla-raft-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = ClusterCa::generate("test-ca").unwrap();
    let mut members = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    for id in 1..=n {
        let (server, client) = tls(&ca);
        let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), server, client).unwrap();
        members.insert(
            id,
            Member {
                name: format!("m{id}"),
                peer_addr: endpoint.local_addr().unwrap().to_string(),
                client_addr: String::new(),
            },
        );
        let node = StoreNode::start(id, &dir.join(id.to_string()), default_config(), endpoint)
            .await
            .unwrap();
        nodes.insert(id, node);
    }
    for node in nodes.values() {
        node.bootstrap(members.clone()).await.unwrap();
    }
    Cluster { nodes, dir }
}

impl Cluster {
    async fn leader(&self, among: &[u64]) -> u64 {
        let raft = self.nodes[&among[0]].raft();
        let m = raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| m.current_leader.is_some_and(|l| among.contains(&l)),
                "a leader among the live members",
            )
            .await
            .unwrap();
        m.current_leader.unwrap()
    }

    async fn put(&self, via: u64, key: &str) {
        let cmd = Command::Txn(TxnRequest {
            success: vec![Op::Put(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })],
            ..Default::default()
        });
        let resp = self.nodes[&via].propose(cmd).await.unwrap();
        assert!(matches!(resp, CommandResponse::Txn(..)), "{resp:?}");
    }

    async fn wait_for_key(&self, on: u64, key: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, r) = self.nodes[&on]
                .mvcc()
                .as_ref()
                .range(&RangeRequest::new(KeyRange::Single(key.into())))
                .unwrap();
            if !r.kvs.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key} never reached member {on}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_and_survive_losing_the_leader() {
    let c = start("failover", 3).await;
    let leader = c.leader(&[1, 2, 3]).await;
    c.put(leader, "/before").await;
    for id in 1..=3 {
        c.wait_for_key(id, "/before").await;
    }

    // The leader stops: the other two elect a new one and keep accepting writes.
    c.nodes[&leader].shutdown().await;
    let rest: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let started = tokio::time::Instant::now();
    let new_leader = c.leader(&rest).await;
    assert_ne!(new_leader, leader);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    c.put(new_leader, "/after").await;
    for id in &rest {
        c.wait_for_key(*id, "/before").await;
        c.wait_for_key(*id, "/after").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_cluster_certificate_is_refused_and_harmless() {
    let c = start("mtls", 3).await;
    let leader = c.leader(&[1, 2, 3]).await;
    // An intruder with a certificate from another CA.
    let other = ClusterCa::generate("intruder-ca").unwrap();
    let (server, client) = tls(&other);
    let intruder = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), server, client).unwrap();
    let mut net = PeerNetwork::new(intruder.clone());
    let target = c.nodes[&leader]
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .nodes()
        .find(|(id, _)| **id == leader)
        .map(|(_, m)| m.clone())
        .unwrap();
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    let mut client = net.new_client(leader, &target).await;
    let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(99, 9), None);
    let refused = client
        .vote(vote, RPCOption::new(Duration::from_secs(2)))
        .await;
    assert!(
        refused.is_err(),
        "an unauthenticated vote must not be answered"
    );
    intruder.close();
    // The intruder's vote for term 99 never reached Raft: no member moved to its term, and the
    // cluster still commits writes.
    for node in c.nodes.values() {
        let term = node.raft().metrics().borrow().current_term;
        assert!(term < 99, "a member adopted the intruder's term ({term})");
    }
    let now_leader = c.leader(&[1, 2, 3]).await;
    c.put(now_leader, "/still-fine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_writes_and_serve_linearizable_reads() {
    let c = start("forward", 3).await;
    let leader = c.leader(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    // A write sent to a follower is forwarded to the leader and committed.
    c.put(follower, "/via-follower").await;
    // A linearizable read on the other follower sees it at once, without waiting by hand.
    let (h, r) = KvBackend::range(
        &c.nodes[&other],
        RangeRequest::new(KeyRange::Single(b"/via-follower".to_vec())),
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(h.revision, 1);
}
