//! Three members in one process, talking Raft over real QUIC with mutual TLS on loopback.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_pki::{client_config, server_config, CertRequest, ClientAuth, ClusterCa, Usage};

use super::network::{PeerEndpoint, PeerNetwork};
use super::node::StoreNode;
use super::*;
use crate::etcd::KvBackend;
use crate::types::{Op, PutRequest, RangeRequest};
use crate::{KeyRange, StoreError};

struct Cluster {
    nodes: BTreeMap<u64, StoreNode>,
    dir: std::path::PathBuf,
    ca: ClusterCa,
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

/// Starts a member that is not part of any cluster yet, with id `member_id(its address)`.
async fn start_member(
    ca: &ClusterCa,
    dir: &std::path::Path,
    name: &str,
) -> (u64, Member, StoreNode) {
    let (server, client) = tls(ca);
    let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), server, client).unwrap();
    let member = Member {
        name: name.into(),
        peer_addr: endpoint.local_addr().unwrap().to_string(),
        client_addr: String::new(),
    };
    let id = membership::member_id(&member.peer_addr);
    let node = StoreNode::start(id, &dir.join(name), default_config(), endpoint)
        .await
        .unwrap();
    (id, member, node)
}

async fn start(name: &str, n: u64) -> Cluster {
    flotilla_pki::install_crypto_provider();
    let ca = ClusterCa::generate("test-ca").unwrap();
    let dir = std::env::temp_dir().join(format!("flotilla-raft-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut members = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    for i in 1..=n {
        let (id, member, node) = start_member(&ca, &dir, &format!("m{i}")).await;
        members.insert(id, member);
        nodes.insert(id, node);
    }
    for node in nodes.values() {
        node.bootstrap(members.clone()).await.unwrap();
    }
    Cluster { nodes, dir, ca }
}

impl Cluster {
    fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }
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
    let ids = c.ids();
    let leader = c.leader(&ids).await;
    c.put(leader, "/before").await;
    for id in ids.clone() {
        c.wait_for_key(id, "/before").await;
    }

    // The leader stops: the other two elect a new one and keep accepting writes.
    c.nodes[&leader].shutdown().await;
    let rest: Vec<u64> = ids.into_iter().filter(|id| *id != leader).collect();
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
async fn a_stopping_leader_hands_over_without_an_election_timeout() {
    let c = start("handover", 3).await;
    let ids = c.ids();
    let leader = c.leader(&ids).await;
    // Writes up to the last moment: the successor must hold every one of them.
    for i in 0..20 {
        c.put(leader, &format!("/before/{i}")).await;
    }
    let rest: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    // A leader elected under a second ago first waits for its own lease (see
    // `hand_over_leadership`); one that has led for longer hands over at once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = tokio::time::Instant::now();
    c.nodes[&leader]
        .hand_over_leadership(Duration::from_secs(2))
        .await;
    let new_leader = c.leader(&rest).await;
    let took = started.elapsed();
    // Without the handover a follower waits 1.5–2 s (lease plus election timeout).
    assert!(took < Duration::from_millis(700), "handover took {took:?}");
    c.nodes[&leader].shutdown().await;
    c.put(rest[0], "/after").await;
    for id in &rest {
        for i in 0..20 {
            c.wait_for_key(*id, &format!("/before/{i}")).await;
        }
        c.wait_for_key(*id, "/after").await;
    }
    assert_ne!(new_leader, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_cluster_certificate_is_refused_and_harmless() {
    let c = start("mtls", 3).await;
    let leader = c.leader(&c.ids()).await;
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
    let now_leader = c.leader(&c.ids()).await;
    c.put(now_leader, "/still-fine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_writes_and_serve_linearizable_reads() {
    let c = start("forward", 3).await;
    let ids = c.ids();
    let leader = c.leader(&ids).await;
    let follower = *ids.iter().find(|id| **id != leader).unwrap();
    let other = *ids
        .iter()
        .find(|id| **id != leader && **id != follower)
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_peer_message_drops_only_that_connection() {
    let c = start("malformed", 3).await;
    let ids = c.ids();
    let leader = c.leader(&ids).await;
    let target = c.nodes[&leader].member(leader).unwrap();
    // A member of the cluster (valid certificate) sends garbage.
    let (server, client) = tls(&c.ca);
    let sender = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), server, client).unwrap();
    use openraft::network::RaftNetworkFactory;
    let mut client = PeerNetwork::new(sender.clone())
        .new_client(leader, &target)
        .await;
    let answer = client.send_raw(b"\xff\xff\xffnot a raft message").await;
    assert!(answer.is_err(), "garbage was answered: {answer:?}");
    // The node keeps serving: the same sender gets answers on a new connection, and the
    // cluster keeps its leader and commits writes.
    let again = client.send_raw(b"").await;
    assert!(again.is_err(), "an empty frame is malformed too");
    sender.close();
    // (Under a loaded machine an election may happen meanwhile; what matters is that the
    // cluster still has a leader and commits.)
    let now = c.leader(&ids).await;
    c.put(now, "/after-garbage").await;
    for id in &ids {
        c.wait_for_key(*id, "/after-garbage").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_as_learners_promoted_and_removed() {
    use membership::{MemberChange, MemberRefusal};
    let mut c = start("membership", 3).await;
    let ids = c.ids();
    let leader = c.leader(&ids).await;
    let follower = *ids.iter().find(|id| **id != leader).unwrap();
    c.put(leader, "/early").await;

    // A fourth member starts without a cluster; a follower is asked to add it as a learner.
    let (new_id, new_member, new_node) = start_member(&c.ca, &c.dir, "m4").await;
    c.nodes.insert(new_id, new_node);
    c.nodes[&follower]
        .change_membership(MemberChange::Add {
            member: new_member.clone(),
            learner: true,
        })
        .await
        .unwrap();
    c.wait_for_key(new_id, "/early").await;
    let m = c.nodes[&leader].raft().metrics().borrow().clone();
    assert!(!m
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == new_id));

    // The same address again, promoting a voter, unknown ids: refused with etcd's reasons.
    let refusal = |r: Result<(), StoreError>| match r {
        Err(StoreError::Member(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let again = c.nodes[&leader]
        .change_membership(MemberChange::Add {
            member: new_member,
            learner: true,
        })
        .await;
    assert_eq!(refusal(again), MemberRefusal::PeerUrlExists);
    let voter = c.nodes[&leader]
        .change_membership(MemberChange::Promote(leader))
        .await;
    assert_eq!(refusal(voter), MemberRefusal::NotLearner);
    let unknown = c.nodes[&follower]
        .change_membership(MemberChange::Remove(42))
        .await;
    assert_eq!(refusal(unknown), MemberRefusal::NotFound);

    // Promoted once caught up; it then votes.
    c.nodes[&follower]
        .change_membership(MemberChange::Promote(new_id))
        .await
        .unwrap();
    let m = c.nodes[&leader].raft().metrics().borrow().clone();
    assert!(m
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == new_id));

    // Removing a voter: it is told, and the other three keep committing.
    let gone = *ids.iter().find(|id| **id != leader).unwrap();
    c.nodes[&leader]
        .change_membership(MemberChange::Remove(gone))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), c.nodes[&gone].removed())
        .await
        .expect("the removed member is told");
    c.nodes[&gone].shutdown().await;
    let rest: Vec<u64> = c.ids().into_iter().filter(|id| *id != gone).collect();
    let now = c.leader(&rest).await;
    c.put(now, "/after-removal").await;
    for id in &rest {
        c.wait_for_key(*id, "/after-removal").await;
    }
    let m = c.nodes[&now].raft().metrics().borrow().clone();
    assert!(m.membership_config.membership().get_node(&gone).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_yet_each_gets_its_own_revision() {
    let c = start("batched", 3).await;
    let ids = c.ids();
    let leader = c.leader(&ids).await;
    // 300 writes at once, through every member: more than the batcher lets be in flight,
    // so most travel in shared entries.
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..300u64 {
        let node = c.nodes[&ids[(i % 3) as usize]].clone();
        writes.spawn(async move {
            let cmd = Command::Txn(TxnRequest {
                success: vec![Op::Put(PutRequest {
                    key: format!("/batched/{i:03}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })],
                ..Default::default()
            });
            match node.propose(cmd).await.unwrap() {
                CommandResponse::Txn(h, _) => h.revision,
                other => panic!("{other:?}"),
            }
        });
    }
    let mut revisions = Vec::new();
    while let Some(r) = writes.join_next().await {
        revisions.push(r.unwrap());
    }
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        300,
        "every write has a revision of its own"
    );
    assert_eq!(revisions, (1..=300).collect::<Vec<_>>());
    let log = c.nodes[&leader]
        .raft()
        .metrics()
        .borrow()
        .last_log_index
        .unwrap();
    assert!(
        log < 300,
        "300 writes should have needed fewer log entries, took {log}"
    );
    // Every member applies all of them (a follower may still be applying the last entries).
    for id in &ids {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, r) = c.nodes[id]
                .mvcc()
                .as_ref()
                .range(&RangeRequest::new(KeyRange::prefix(b"/batched/")))
                .unwrap();
            if r.kvs.len() == 300 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "member {id} holds {} of the 300 writes",
                r.kvs.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
