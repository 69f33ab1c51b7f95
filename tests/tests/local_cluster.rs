//! `flotilla up` / `status` / `down` with real processes.

use std::time::Duration;

use flotilla_e2e::{
    etcdctl, etcdctl_at, etcdctl_command, flotilla, http_get, pid_alive, show, wait_for, Child,
    LocalCluster,
};

#[test]
fn up_starts_three_masters_that_status_sees_and_down_stops() {
    let cluster = LocalCluster::up("updown", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    let info = cluster.cluster_json();
    let procs = info["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 3);
    let mut pids = Vec::new();
    for p in procs {
        assert_eq!(p["role"], "master");
        let pid = p["pid"].as_u64().unwrap() as u32;
        assert!(pid_alive(pid), "{p}");
        pids.push(pid);
        assert!(std::path::Path::new(p["data_dir"].as_str().unwrap())
            .join("store/raft-log")
            .exists());
        // Every long-running component serves Prometheus metrics and health.
        let (code, body) = http_get(p["endpoints"]["metrics"].as_str().unwrap());
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("flotilla_store_revision"), "{body}");
        assert!(body.contains("flotilla_raft_term"), "{body}");
        let (code, _) = http_get(p["endpoints"]["health"].as_str().unwrap());
        assert_eq!(code, 200);
        assert!(p["endpoints"]["etcd"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:"));
    }
    // The CA and an admin client certificate are there for tools.
    for f in ["ca", "admin_cert", "admin_key"] {
        let path = info["pki"][f].as_str().unwrap();
        assert!(std::path::Path::new(path).exists(), "{f}: {path}");
    }

    let d = cluster.dir_str();
    let status = flotilla(&["status", "--dir", &d, "--json"]);
    assert!(status.status.success(), "{}", show(&status));
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(doc["processes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["healthy"] == true));

    // Running `up` again on a running cluster changes nothing.
    let again = flotilla(&["up", "--dir", &d, "--nodes", "0", "--no-demo"]);
    assert!(again.status.success(), "{}", show(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already running"));
    assert_eq!(
        cluster.cluster_json()["processes"][0]["pid"],
        procs[0]["pid"]
    );

    let down = flotilla(&["down", "--dir", &d]);
    assert!(down.status.success(), "{}", show(&down));
    for pid in pids {
        wait_for("master to exit", Duration::from_secs(5), || !pid_alive(pid));
    }
    // After down, status says there is no cluster, and a second down is a harmless no-op.
    assert!(!flotilla(&["status", "--dir", &d]).status.success());
    let again = flotilla(&["down", "--dir", &d]);
    assert!(again.status.success(), "{}", show(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to stop"));
}

#[test]
fn a_killed_master_shows_as_stopped_and_a_restart_keeps_its_data() {
    let cluster = LocalCluster::up("restart", &["--masters", "1", "--nodes", "0", "--no-demo"]);
    let d = cluster.dir_str();
    let pid = cluster.cluster_json()["processes"][0]["pid"]
        .as_u64()
        .unwrap() as u32;
    let endpoints = cluster.cluster_json()["processes"][0]["endpoints"].clone();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_for("master to die", Duration::from_secs(5), || !pid_alive(pid));
    let status = flotilla(&["status", "--dir", &d]);
    assert!(
        !status.status.success(),
        "status must fail when a process is down"
    );
    assert!(String::from_utf8_lossy(&status.stdout).contains("stopped"));
    // `up` again restarts it on the same data dir.
    let up = flotilla(&[
        "up",
        "--dir",
        &d,
        "--masters",
        "1",
        "--nodes",
        "0",
        "--no-demo",
    ]);
    assert!(up.status.success(), "{}", show(&up));
    let new_pid = cluster.cluster_json()["processes"][0]["pid"]
        .as_u64()
        .unwrap() as u32;
    assert_ne!(new_pid, pid);
    assert!(pid_alive(new_pid));
    // On the addresses it had: a kubeconfig or etcd endpoint taken before still reaches it.
    let now = cluster.cluster_json()["processes"][0]["endpoints"].clone();
    for endpoint in ["api", "etcd", "metrics", "peer"] {
        assert_eq!(
            now[endpoint], endpoints[endpoint],
            "{endpoint} moved on restart"
        );
    }
    let put = etcdctl_at(&cluster, endpoints["etcd"].as_str().unwrap())
        .args(["put", "/after-restart", "1"])
        .output()
        .unwrap();
    assert!(put.status.success(), "{}", show(&put));
}

/// `etcdctl` (etcd 3.4's, from Debian) aimed at one member with the admin certificate.
#[test]
fn etcdctl_watch_replays_history_and_sees_writes_made_on_other_masters() {
    use std::io::{BufRead, BufReader};
    let cluster = LocalCluster::up("watch", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    assert!(etcdctl(&cluster, 0, &["put", "/w/old", "0"])
        .status
        .success());
    // Watch on member 2 from revision 1: history first, then live writes made on member 0.
    let child = etcdctl_command(&cluster, 2)
        .args(["watch", "--prefix", "/w/", "--rev=1", "--prev-kv"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut watcher = Child(child);
    let stdout = watcher.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let mut expect = |want: &[&str]| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lines.len() < want.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(_) => panic!("watch printed {lines:?}, expected {want:?}"),
            }
        }
        assert_eq!(lines, want);
        lines.clear();
    };
    expect(&["PUT", "/w/old", "0"]);
    assert!(etcdctl(&cluster, 0, &["put", "/w/a", "1"]).status.success());
    expect(&["PUT", "/w/a", "1"]);
    assert!(etcdctl(&cluster, 1, &["del", "/w/a"]).status.success());
    // With --prev-kv etcdctl prints the previous key-value, then the deleted key (no value).
    expect(&["DELETE", "/w/a", "1", "/w/a", ""]);
}

#[test]
fn etcdctl_writes_on_one_master_and_reads_on_another() {
    let cluster = LocalCluster::up("etcdctl", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    let out = etcdctl(&cluster, 0, &["put", "/demo/a", "1"]);
    assert!(out.status.success(), "{}", show(&out));
    let out = etcdctl(&cluster, 1, &["put", "/demo/b", "2"]);
    assert!(out.status.success(), "{}", show(&out));
    // A linearizable read on a third member sees both writes at once.
    let out = etcdctl(&cluster, 2, &["get", "--prefix", "/demo/"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/demo/a\n1\n/demo/b\n2\n"
    );
    // A range [key, range_end).
    let out = etcdctl(&cluster, 1, &["get", "/demo/a", "/demo/c", "--keys-only"]);
    let keys = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        keys.split_whitespace().collect::<Vec<_>>(),
        ["/demo/a", "/demo/b"],
        "{}",
        show(&out)
    );
    // Transactions as etcdctl writes them (compares, success ops, failure ops on stdin): the
    // first one's compare holds, the second one's fails.
    let txn = |compare: &str| {
        use std::io::Write;
        let mut child = etcdctl_command(&cluster, 0)
            .args(["txn"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let script = format!("{compare}\n\nput /demo/txn yes\n\nput /demo/txn no\n\n");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
        let got = etcdctl(&cluster, 2, &["get", "/demo/txn", "--print-value-only"]);
        (
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            String::from_utf8_lossy(&got.stdout).trim().to_string(),
        )
    };
    assert_eq!(
        txn("value(\"/demo/a\") = \"1\""),
        ("SUCCESS".into(), "yes".into())
    );
    assert_eq!(
        txn("mod(\"/demo/b\") < \"2\""),
        ("FAILURE".into(), "no".into())
    );
    assert!(etcdctl(&cluster, 0, &["del", "/demo/txn"]).status.success());

    let out = etcdctl(&cluster, 2, &["del", "/demo/a"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "{}",
        show(&out)
    );
    // Bad input gets etcd's error and changes nothing.
    let out = etcdctl(&cluster, 0, &["put", "", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("key is not provided"));
    let out = etcdctl(&cluster, 1, &["get", "--prefix", "/demo/", "--keys-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "/demo/b");

    // Membership and status, as etcd tools read them.
    let out = etcdctl(&cluster, 1, &["member", "list"]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(list.lines().count(), 3, "{}", show(&out));
    for name in ["m1", "m2", "m3"] {
        assert!(
            list.contains(&format!(", started, {name}, https://127.0.0.1:")),
            "{list}"
        );
    }
    let out = etcdctl(&cluster, 2, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    // Member ids are derived from peer addresses; member list and status agree on them.
    let id = status[0]["Status"]["header"]["member_id"].as_u64().unwrap();
    assert!(
        list.contains(&format!("{id:x}, started, m3, ")),
        "{id:x} in {list}"
    );
    let leader = status[0]["Status"]["leader"].as_u64().unwrap();
    assert!(
        list.contains(&format!("{leader:x}, started, ")),
        "{leader:x} in {list}"
    );
    assert!(etcdctl(&cluster, 0, &["endpoint", "health"])
        .status
        .success());

    // Restarting every member keeps the data.
    let d = cluster.dir_str();
    let down = flotilla(&["down", "--dir", &d]);
    assert!(down.status.success(), "{}", show(&down));
    let up = flotilla(&["up", "--dir", &d, "--nodes", "0", "--no-demo"]);
    assert!(up.status.success(), "{}", show(&up));
    let out = etcdctl(&cluster, 0, &["get", "/demo/b", "--print-value-only"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2",
        "{}",
        show(&out)
    );
}

#[test]
fn etcdctl_leases_attach_keys_expire_and_revoke() {
    let cluster = LocalCluster::up("lease", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    let grant = |ttl: &str| {
        let out = etcdctl(&cluster, 0, &["lease", "grant", ttl]);
        assert!(out.status.success(), "{}", show(&out));
        // "lease 0ea4… granted with TTL(5s)"
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    let short = grant("5");
    let long = grant("600");
    assert!(
        etcdctl(&cluster, 1, &["put", "--lease", &short, "/l/short", "1"])
            .status
            .success()
    );
    assert!(
        etcdctl(&cluster, 2, &["put", "--lease", &long, "/l/long", "1"])
            .status
            .success()
    );
    let ttl = etcdctl(&cluster, 2, &["lease", "timetolive", &long, "--keys"]);
    assert!(
        String::from_utf8_lossy(&ttl.stdout).contains("attached keys([/l/long])"),
        "{}",
        show(&ttl)
    );
    // A put naming a lease that does not exist is refused with etcd's error.
    let out = etcdctl(&cluster, 0, &["put", "--lease", "1234", "/l/x", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("requested lease not found"));

    // Revoking deletes the attached key at once.
    assert!(etcdctl(&cluster, 1, &["lease", "revoke", &long])
        .status
        .success());
    let keys = |c: &LocalCluster| {
        let out = etcdctl(c, 0, &["get", "--prefix", "/l/", "--keys-only"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(keys(&cluster), "/l/short");
    // Without keep-alives the short lease expires (5 s TTL) and takes its key with it.
    wait_for("the short lease to expire", Duration::from_secs(15), || {
        keys(&cluster).is_empty()
    });
}
