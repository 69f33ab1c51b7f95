//! The replicated store under faults, with real `flotilla server` processes: killing the
//! leader under write load loses no acknowledged write, and a full restart keeps everything.

use std::time::Duration;

use flotilla_e2e::{flotilla, metric, pid_alive, show, wait_for, LocalCluster};
use flotilla_proto::etcdserverpb as pb;
use pb::kv_client::KvClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn client(cluster: &LocalCluster, member: usize) -> Channel {
    connect(cluster, member, Duration::from_secs(5))
        .await
        .expect("connecting to a member")
}

/// A channel to `member` whose requests time out after `timeout`.
async fn connect(
    cluster: &LocalCluster,
    member: usize,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
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
        .timeout(timeout)
        .connect()
        .await
}

/// The member every member agrees is the Raft leader (by etcd's Maintenance.Status).
async fn agreed_leader(cluster: &LocalCluster) -> Option<usize> {
    let mut seen = Vec::new();
    let mut ids = Vec::new();
    for member in 0..3 {
        let channel = client(cluster, member).await;
        let mut m = pb::maintenance_client::MaintenanceClient::new(channel);
        let status = m.status(pb::StatusRequest {}).await.ok()?.into_inner();
        seen.push(status.leader);
        ids.push(status.header?.member_id);
    }
    let first = seen[0];
    if first == 0 || seen.iter().any(|l| *l != first) {
        return None;
    }
    ids.iter().position(|id| *id == first)
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
        let leader = wait_for_leader(&cluster).await;
        // Write through a follower, so the client's own connection survives the kill.
        let via = (leader + 1) % 3;
        let survivor = (leader + 2) % 3;
        let agreed_id =
            pb::maintenance_client::MaintenanceClient::new(client(&cluster, leader).await)
                .status(pb::StatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .header
                .unwrap()
                .member_id;
        let mut kv = KvClient::new(client(&cluster, via).await);
        let mut acked = Vec::new();
        let mut failed = 0;
        let leader_pid = cluster.cluster_json()["processes"][leader]["pid"]
            .as_u64()
            .unwrap() as u32;
        let mut killed_at = None;
        let mut first_after_kill = None;
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
                let k = std::time::Instant::now();
                killed_at = Some(k);
                // How long until the survivors agree on a new leader.
                let survivors = [via, survivor];
                let election = loop {
                    let mut leaders = Vec::new();
                    for m in survivors {
                        let mut c = pb::maintenance_client::MaintenanceClient::new(
                            client(&cluster, m).await,
                        );
                        if let Ok(s) = c.status(pb::StatusRequest {}).await {
                            leaders.push(s.into_inner().leader);
                        }
                    }
                    let old = agreed_id;
                    if leaders.len() == 2
                        && leaders[0] == leaders[1]
                        && leaders[0] != old
                        && leaders[0] != 0
                    {
                        break k.elapsed();
                    }
                    assert!(k.elapsed() < Duration::from_secs(30), "no new leader");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                eprintln!("a new leader was agreed {election:?} after the kill");
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
                    if let (Some(k), None) = (killed_at, first_after_kill) {
                        first_after_kill = Some(k.elapsed());
                    }
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
            "killed m{} (the leader); first write acknowledged {:?} after the kill; {} writes \
             acknowledged, {failed} with unknown outcome; all acknowledged writes kept",
            leader + 1,
            first_after_kill,
            acked.len()
        );
    });
}

async fn put(kv: &mut KvClient<Channel>, key: &str) {
    kv.put(pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: vec![b'x'; 128],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

/// Waits until every member agrees on a leader; its index.
async fn wait_for_leader(cluster: &LocalCluster) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = agreed_leader(cluster).await {
            return l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "members never agreed on a leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metrics_url(cluster: &LocalCluster, member: usize) -> String {
    cluster.cluster_json()["processes"][member]["endpoints"]["metrics"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_wiped_follower_catches_up_from_a_snapshot() {
    flotilla_e2e_runtime().block_on(async {
        let cluster = LocalCluster::up(
            "wiped",
            &["--nodes", "0", "--no-demo", "--snapshot-count", "50"],
        );
        let leader = wait_for_leader(&cluster).await;
        let follower = (leader + 1) % 3;
        let mut kv = KvClient::new(client(&cluster, leader).await);
        for i in 0..300 {
            put(&mut kv, &format!("/load/{i:04}")).await;
        }
        // The leader has dropped the start of its log: a member with no data cannot catch up
        // from the log alone.
        let leader_metrics = metrics_url(&cluster, leader);
        wait_for(
            "the leader to purge its log",
            Duration::from_secs(20),
            || metric(&leader_metrics, "flotilla_raft_purged_index").unwrap_or(0.0) > 100.0,
        );

        // Kill a follower, wipe its store, start it again with `flotilla up`.
        let info = cluster.cluster_json();
        let pid = info["processes"][follower]["pid"].as_u64().unwrap() as u32;
        let data_dir =
            std::path::PathBuf::from(info["processes"][follower]["data_dir"].as_str().unwrap());
        assert!(std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        wait_for("the follower to die", Duration::from_secs(5), || {
            !pid_alive(pid)
        });
        std::fs::remove_dir_all(data_dir.join("store")).unwrap();
        let d = cluster.dir_str();
        let up = flotilla(&["up", "--dir", &d, "--nodes", "0", "--no-demo"]);
        assert!(up.status.success(), "{}", show(&up));
        assert!(show(&up).contains("starting the others"), "{}", show(&up));

        // It gets everything back, through a snapshot (its snapshot index jumps past the
        // leader's purged entries).
        let mut reader = KvClient::new(client(&cluster, follower).await);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let local = reader
                .range(pb::RangeRequest {
                    key: b"/load/".to_vec(),
                    range_end: b"/load0".to_vec(),
                    count_only: true,
                    serializable: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if local.count == 300 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the wiped follower has {} of 300 keys",
                local.count
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let follower_metrics = metrics_url(&cluster, follower);
        wait_for(
            "the follower's snapshot metric",
            Duration::from_secs(5),
            || metric(&follower_metrics, "flotilla_raft_snapshot_index").unwrap_or(0.0) > 100.0,
        );
        // And it keeps replicating new writes.
        put(&mut kv, "/load/after").await;
        let mut found = false;
        for _ in 0..100 {
            let r = reader
                .range(pb::RangeRequest {
                    key: b"/load/after".to_vec(),
                    serializable: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if r.count == 1 {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            found,
            "a write after the catch-up never reached the follower"
        );
    });
}

/// A small tmpfs mounted for one test, unmounted (lazily, after the cluster is down) on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("flotilla-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            show(&out)
        );
        Tmpfs(dir)
    }

    fn resize(&self, size: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `member` answered with `e`, or `None` when it answered nothing: the connection broke
/// (a transport or HTTP/2 error, not one of the server's own messages, which name the disk or
/// the quorum) and the member's process then exited — it was stopping on its failed disk as
/// we asked, which its log must say (checked by the caller).
async fn server_answer(cluster: &LocalCluster, member: usize, e: tonic::Status) -> Option<String> {
    let message = e.message().to_string();
    let closed =
        !message.contains("No space left on device") && !message.contains("no leader or quorum");
    if !closed {
        return Some(message);
    }
    let pid = cluster.cluster_json()["processes"][member]["pid"]
        .as_u64()
        .unwrap_or(0) as u32;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pid_alive(pid) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if pid_alive(pid) {
        Some(message)
    } else {
        None
    }
}

#[test]
fn a_full_disk_fails_writes_clearly_and_loses_nothing_once_space_returns() {
    flotilla_e2e_runtime().block_on(async {
        let disk = Tmpfs::mount("full", "48m");
        let dir = disk.0.join("cluster");
        let d = dir.display().to_string();
        let up = flotilla(&["up", "--dir", &d, "--nodes", "0", "--no-demo"]);
        assert!(up.status.success(), "{}", show(&up));
        let cluster = LocalCluster::adopt(&dir);
        let leader = wait_for_leader(&cluster).await;
        // Deadlines longer than the server's own (10 s), so that the server's answer arrives.
        let mut kv = KvClient::new(
            connect(&cluster, leader, Duration::from_secs(15))
                .await
                .unwrap(),
        );
        let value = vec![b'v'; 1024 * 1024];
        let mut acked = Vec::new();
        let mut refusal = None;
        for i in 0..100 {
            let key = format!("/full/{i:03}");
            let put = kv.put(pb::PutRequest {
                key: key.clone().into_bytes(),
                value: value.clone(),
                ..Default::default()
            });
            match put.await {
                Ok(_) => acked.push(key),
                Err(e) => {
                    refusal = Some(e);
                    break;
                }
            }
        }
        let refusal = refusal.expect("a 48 MiB disk never filled up");
        eprintln!("{} writes acknowledged; then: {refusal}", acked.len());
        // Which member's disk fails first is a race: a member whose store failed says so; a
        // leader whose followers stopped can only say it has no quorum; a member that stops
        // while our request is on its way closes the connection. Every member still up is
        // asked once more: each answer must be one of these, never a hang.
        let mut answers: Vec<String> = server_answer(&cluster, leader, refusal)
            .await
            .into_iter()
            .collect();
        for member in 0..3 {
            let Ok(channel) = connect(&cluster, member, Duration::from_secs(15)).await else {
                continue;
            };
            let put = KvClient::new(channel)
                .put(pb::PutRequest {
                    key: b"/full/again".to_vec(),
                    value: value.clone(),
                    ..Default::default()
                })
                .await;
            if let Err(e) = put {
                answers.extend(server_answer(&cluster, member, e).await);
            }
        }
        for a in &answers {
            assert!(
                a.contains("No space left on device") || a.contains("no leader or quorum"),
                "unclear answer while the disk is full: {a:?}"
            );
        }
        // The members that stopped say why in their logs.
        let logs: String = ["m1", "m2", "m3"]
            .iter()
            .map(|m| std::fs::read_to_string(dir.join(m).join("server.log")).unwrap_or_default())
            .collect();
        assert!(
            logs.contains("No space left on device"),
            "no member logged the full disk"
        );

        // Space returns; the members start again with every acknowledged write intact.
        disk.resize("512m");
        // Members whose disk failed have stopped (or are stopping); `up` restarts them.
        let pids: Vec<u32> = cluster.cluster_json()["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap() as u32)
            .collect();
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while pids.iter().any(|p| pid_alive(*p)) && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let up = flotilla(&["up", "--dir", &d, "--nodes", "0", "--no-demo"]);
        assert!(up.status.success(), "{}", show(&up));
        let mut reader = KvClient::new(client(&cluster, (leader + 1) % 3).await);
        for key in &acked {
            let resp = reader
                .range(pb::RangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(resp.kvs.len(), 1, "acknowledged {key} lost");
            assert!(resp.kvs[0].value == value, "{key} came back damaged");
        }
        put(&mut reader, "/full/after").await;
    });
}

fn flotilla_e2e_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
