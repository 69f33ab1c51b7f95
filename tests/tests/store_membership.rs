//! Runtime membership changes and backups of the replicated store, with real `flotilla
//! server` processes driven by Debian's etcdctl 3.4: add a learner, promote it, remove a
//! voter; save a snapshot and restore it into a new cluster.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_e2e::{
    etcdctl, etcdctl_at, flotilla_bin, pid_alive, show, wait_for, Child, LocalCluster,
};
use flotilla_pki::{CertRequest, ClusterCa, Usage};

/// Issues a member certificate for `name` from the cluster's CA into `DIR/pki`.
fn issue_member_cert(cluster: &LocalCluster, name: &str) {
    let pki = cluster.dir().join("pki");
    let ca = ClusterCa::load(&pki).expect("the cluster CA");
    ca.issue(&CertRequest::host(
        name,
        &["127.0.0.1".into(), "localhost".into()],
        Usage::Peer,
    ))
    .expect("issuing a member certificate")
    .write(&pki, name)
    .expect("writing the member certificate");
}

fn free_udp_addr() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

/// Starts `flotilla server` for `name` with `extra` flags; it is killed when the guard drops.
fn spawn_server(
    cluster: &LocalCluster,
    name: &str,
    peer: &str,
    extra: &[&str],
) -> (Child, std::path::PathBuf) {
    let data_dir = cluster.dir().join(name);
    std::fs::create_dir_all(&data_dir).unwrap();
    let log = std::fs::File::create(data_dir.join("server.log")).unwrap();
    let child = Command::new(flotilla_bin())
        .arg("server")
        .args(["--name", name])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen-peer", peer, "--listen-client", "127.0.0.1:0"])
        .args(["--listen-api", "127.0.0.1:0"])
        .arg("--pki-dir")
        .arg(cluster.dir().join("pki"))
        .args(extra)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting flotilla server");
    (Child(child), data_dir)
}

/// The etcd endpoint a server publishes in its data dir once it serves.
fn published_endpoint(data_dir: &Path) -> String {
    let file = data_dir.join("endpoints.json");
    wait_for("the new member to serve", Duration::from_secs(30), || {
        file.exists()
    });
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    v["etcd"].as_str().unwrap().to_string()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `etcdctl member list` lines as (hex id, name, is learner).
fn members(cluster: &LocalCluster, via: usize) -> Vec<(String, String, String, bool)> {
    let out = etcdctl(cluster, via, &["member", "list"]);
    assert!(out.status.success(), "{}", show(&out));
    stdout(&out)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(", ").collect();
            (f[0].into(), f[2].into(), f[4].into(), f[5] == "true")
        })
        .collect()
}

#[test]
fn etcdctl_adds_a_learner_promotes_it_and_removes_a_voter() {
    let cluster = LocalCluster::up("members", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    assert!(etcdctl(&cluster, 0, &["put", "/m/before", "1"])
        .status
        .success());

    // Add m4 as a learner, as an etcd operator would, and start it with what etcdctl printed.
    let peer = free_udp_addr();
    let out = etcdctl(
        &cluster,
        1,
        &[
            "member",
            "add",
            "m4",
            "--learner",
            &format!("--peer-urls=https://{peer}"),
        ],
    );
    assert!(out.status.success(), "{}", show(&out));
    let printed = stdout(&out);
    let initial = printed
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {printed}"))
        .to_string();
    assert!(initial.contains(&format!("m4=https://{peer}")), "{initial}");
    issue_member_cert(&cluster, "m4");
    let (_m4, m4_dir) = spawn_server(
        &cluster,
        "m4",
        &peer,
        &[
            "--initial-cluster",
            &initial,
            "--initial-cluster-state",
            "existing",
        ],
    );
    let m4 = published_endpoint(&m4_dir);

    // The learner replicates (a local read on it sees earlier and later writes) and publishes
    // its name and client URL.
    assert!(etcdctl(&cluster, 2, &["put", "/m/after-add", "2"])
        .status
        .success());
    wait_for("the learner to replicate", Duration::from_secs(20), || {
        let out = etcdctl_at(&cluster, &m4)
            .args(["get", "/m/", "--prefix", "--consistency=s", "--keys-only"])
            .output()
            .unwrap();
        stdout(&out).contains("/m/after-add") && stdout(&out).contains("/m/before")
    });
    wait_for("m4 to publish itself", Duration::from_secs(20), || {
        members(&cluster, 0)
            .iter()
            .any(|(_, name, client, learner)| name == "m4" && *learner && *client == m4)
    });
    let m4_id = members(&cluster, 0)
        .into_iter()
        .find(|m| m.1 == "m4")
        .unwrap()
        .0;

    // Bad requests are refused with etcd's reasons and change nothing.
    let out = etcdctl(
        &cluster,
        0,
        &[
            "member",
            "add",
            "again",
            &format!("--peer-urls=https://{peer}"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        show(&out).contains("Peer URLs already exists"),
        "{}",
        show(&out)
    );
    let out = etcdctl(&cluster, 0, &["member", "remove", "abcdef"]);
    assert!(show(&out).contains("member not found"), "{}", show(&out));
    let m1_id = members(&cluster, 0)
        .into_iter()
        .find(|m| m.1 == "m1")
        .unwrap()
        .0;
    let out = etcdctl(&cluster, 0, &["member", "promote", &m1_id]);
    assert!(
        show(&out).contains("can only promote a learner member"),
        "{}",
        show(&out)
    );
    assert_eq!(members(&cluster, 0).len(), 4);

    // Promote the learner; it now votes.
    let out = etcdctl(&cluster, 2, &["member", "promote", &m4_id]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        members(&cluster, 0).iter().all(|m| !m.3),
        "no learner is left"
    );

    // Remove m2: its process stops by itself and the remaining three keep serving.
    let m2_id = members(&cluster, 0)
        .into_iter()
        .find(|m| m.1 == "m2")
        .unwrap()
        .0;
    let m2_pid = cluster.cluster_json()["processes"][1]["pid"]
        .as_u64()
        .unwrap() as u32;
    let out = etcdctl(&cluster, 0, &["member", "remove", &m2_id]);
    assert!(out.status.success(), "{}", show(&out));
    wait_for(
        "the removed member to stop",
        Duration::from_secs(20),
        || !pid_alive(m2_pid),
    );
    let names: Vec<String> = members(&cluster, 2).into_iter().map(|m| m.1).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(!names.contains(&"m2".to_string()), "{names:?}");
    assert!(etcdctl_at(&cluster, &m4)
        .args(["put", "/m/after-remove", "3"])
        .status()
        .unwrap()
        .success());
    let out = etcdctl(&cluster, 0, &["get", "/m/", "--prefix", "--keys-only"]);
    let keys = stdout(&out);
    for key in ["/m/before", "/m/after-add", "/m/after-remove"] {
        assert!(keys.contains(key), "{key} missing: {keys}");
    }
}

#[test]
fn a_snapshot_saved_with_etcdctl_restores_into_a_new_cluster() {
    let cluster = LocalCluster::up("backup", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    for i in 0..20 {
        assert!(etcdctl(
            &cluster,
            i % 3,
            &["put", &format!("/b/{i:02}"), &format!("v{i}")]
        )
        .status
        .success());
    }
    assert!(etcdctl(&cluster, 0, &["del", "/b/00"]).status.success());
    let file = cluster.dir().join("backup.db");
    let out = etcdctl(&cluster, 1, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("Snapshot saved"), "{}", show(&out));

    // A new single-member cluster restored from the file has the same keys and revision.
    issue_member_cert(&cluster, "r1");
    let peer = free_udp_addr();
    let (_r1, r1_dir) = spawn_server(
        &cluster,
        "r1",
        &peer,
        &[
            "--initial-cluster",
            &format!("r1={peer}"),
            "--restore",
            file.to_str().unwrap(),
        ],
    );
    let r1 = published_endpoint(&r1_dir);
    let out = etcdctl_at(&cluster, &r1)
        .args(["get", "/b/", "--prefix", "--keys-only"])
        .output()
        .unwrap();
    let keys: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    assert_eq!(keys.len(), 19, "{}", show(&out));
    assert!(!keys.contains(&"/b/00".to_string()));
    let original = etcdctl(&cluster, 0, &["get", "/b/07", "-w", "json"]);
    let restored = etcdctl_at(&cluster, &r1)
        .args(["get", "/b/07", "-w", "json"])
        .output()
        .unwrap();
    let rev = |o: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["kvs"][0]["mod_revision"].clone()
    };
    assert_eq!(rev(&original), rev(&restored));
    // The restored member takes writes.
    assert!(etcdctl_at(&cluster, &r1)
        .args(["put", "/b/new", "x"])
        .status()
        .unwrap()
        .success());

    // A restore into a data dir that holds data is refused, clearly.
    drop(_r1);
    let out = Command::new(flotilla_bin())
        .arg("server")
        .args(["--name", "r1", "--data-dir"])
        .arg(&r1_dir)
        .args(["--listen-peer", &peer, "--listen-client", "127.0.0.1:0"])
        .args(["--listen-api", "127.0.0.1:0"])
        .args(["--initial-cluster", &format!("r1={peer}")])
        .arg("--pki-dir")
        .arg(cluster.dir().join("pki"))
        .args(["--restore", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(show(&out).contains("already holds data"), "{}", show(&out));
}
