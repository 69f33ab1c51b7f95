//! The replicated store under faults, with real `flotilla server` processes: killing the
//! leader under write load loses no acknowledged write, and a full restart keeps everything.

use std::time::Duration;

use flotilla_e2e::{flotilla, pid_alive, show, wait_for, LocalCluster};
use flotilla_proto::etcdserverpb as pb;
use pb::kv_client::KvClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn client(cluster: &LocalCluster, member: usize) -> Channel {
    let [ca, cert, key] = cluster.admin_pki().map(|p| std::fs::read(p).unwrap());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name("127.0.0.1");
    let endpoint = cluster.etcd_endpoint(member);
    Channel::from_shared(endpoint)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// The member every member agrees is the Raft leader (by etcd's Maintenance.Status).
async fn agreed_leader(cluster: &LocalCluster) -> Option<usize> {
    let mut seen = Vec::new();
    for member in 0..3 {
        let channel = client(cluster, member).await;
        let mut m = pb::maintenance_client::MaintenanceClient::new(channel);
        let status = m.status(pb::StatusRequest {}).await.ok()?.into_inner();
        seen.push(status.leader);
    }
    let first = seen[0];
    (first != 0 && seen.iter().all(|l| *l == first)).then(|| first as usize - 1)
}

async fn read_all(kv: &mut KvClient<Channel>) -> Vec<String> {
    let resp = kv
        .range(pb::RangeRequest {
            key: b"/load/".to_vec(),
            range_end: b"/load0".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[test]
fn killing_the_leader_under_writes_loses_no_acknowledged_write() {
    flotilla_e2e_runtime().block_on(async {
        let cluster = LocalCluster::up("faults", &["--masters", "3", "--nodes", "0", "--no-demo"]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let leader = loop {
            if let Some(l) = agreed_leader(&cluster).await {
                break l;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "members never agreed on a leader"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Write through a follower, so the client's own connection survives the kill.
        let via = (leader + 1) % 3;
        let survivor = (leader + 2) % 3;
        let mut kv = KvClient::new(client(&cluster, via).await);
        let mut acked = Vec::new();
        let mut failed = 0;
        let leader_pid = cluster.cluster_json()["processes"][leader]["pid"]
            .as_u64()
            .unwrap() as u32;
        for i in 0..120 {
            if i == 40 {
                assert!(std::process::Command::new("kill")
                    .args(["-KILL", &leader_pid.to_string()])
                    .status()
                    .unwrap()
                    .success());
                wait_for("the leader to die", Duration::from_secs(5), || {
                    !pid_alive(leader_pid)
                });
            }
            let key = format!("/load/{i:04}");
            let t0 = std::time::Instant::now();
            let put = kv.put(pb::PutRequest {
                key: key.clone().into_bytes(),
                value: vec![b'x'; 256],
                ..Default::default()
            });
            match tokio::time::timeout(Duration::from_secs(15), put).await {
                Ok(Ok(_)) => {
                    if t0.elapsed() > Duration::from_millis(300) {
                        eprintln!("write {i} took {:?}", t0.elapsed());
                    }
                    acked.push(key)
                }
                // Unknown outcome: it may or may not have been applied.
                _ => failed += 1,
            }
        }
        assert!(
            acked.len() >= 100,
            "only {} of 120 writes acknowledged",
            acked.len()
        );

        // Every acknowledged write is on the surviving members.
        for member in [via, survivor] {
            let mut reader = KvClient::new(client(&cluster, member).await);
            let present = read_all(&mut reader).await;
            for key in &acked {
                assert!(
                    present.contains(key),
                    "acknowledged {key} missing on member {member}"
                );
            }
        }

        // A full restart of every member keeps them too.
        let d = cluster.dir_str();
        let down = flotilla(&["down", "--dir", &d]);
        assert!(down.status.success(), "{}", show(&down));
        let up = flotilla(&["up", "--dir", &d, "--nodes", "0", "--no-demo"]);
        assert!(up.status.success(), "{}", show(&up));
        let mut reader = KvClient::new(client(&cluster, leader).await);
        let present = read_all(&mut reader).await;
        for key in &acked {
            assert!(
                present.contains(key),
                "acknowledged {key} lost across a full restart"
            );
        }
        eprintln!(
            "killed m{} (the leader); {} writes acknowledged, {failed} with unknown outcome; \
             all acknowledged writes kept",
            leader + 1,
            acked.len()
        );
    });
}

fn flotilla_e2e_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
