//! `/readyz`, `/livez` and `/healthz` on the API port, as kube-apiserver answers them: public,
//! `ok` or one line per check with `?verbose`, and not ready (500, `[-]etcd failed`) on a
//! master that has lost the store's quorum, so that a load balancer stops sending it requests.

use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_e2e::{kubectl_ok, LocalCluster};

/// Sends SIGCONT to paused processes when dropped (also when the test fails).
struct Resume(Vec<u64>);

impl Drop for Resume {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

/// GET `url` without credentials: status and body.
fn anonymous_get(ca: &std::path::Path, url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}

#[test]
fn health_checks_are_public_and_report_a_lost_quorum() {
    let cluster = LocalCluster::up("health", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    let [ca, _, _] = cluster.admin_pki();
    let masters: Vec<(u64, String)> = cluster.cluster_json()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] == "master")
        .map(|p| {
            (
                p["pid"].as_u64().unwrap(),
                p["endpoints"]["api"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(masters.len(), 3);
    let api = &masters[0].1;

    for version in ["1.27", "1.33"] {
        assert_eq!(
            kubectl_ok(&cluster, version, &["get", "--raw", "/readyz"]),
            "ok"
        );
        assert_eq!(
            kubectl_ok(&cluster, version, &["get", "--raw", "/readyz?verbose"]),
            "[+]ping ok\n[+]etcd ok\nreadyz check passed\n"
        );
    }
    // No credentials needed for health and version; anything else stays 401.
    assert_eq!(
        anonymous_get(&ca, &format!("{api}/livez")),
        ("200".into(), "ok".into())
    );
    assert_eq!(
        anonymous_get(&ca, &format!("{api}/readyz/etcd")),
        ("200".into(), "ok".into())
    );
    assert_eq!(anonymous_get(&ca, &format!("{api}/version")).0, "200");
    assert_eq!(anonymous_get(&ca, &format!("{api}/readyz/nope")).0, "404");
    assert_eq!(
        anonymous_get(&ca, &format!("{api}/api/v1/namespaces")).0,
        "401"
    );
    assert_eq!(
        anonymous_get(&ca, &format!("{api}/healthz?verbose&exclude=etcd")),
        ("200".into(), "[+]ping ok\nhealthz check passed\n".into())
    );

    // Two of three masters paused: the third has no quorum, so it is alive but not ready.
    let _resume = Resume(masters[1..].iter().map(|(pid, _)| *pid).collect());
    for (pid, _) in &masters[1..] {
        assert!(Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let lost = loop {
        let (code, body) = anonymous_get(&ca, &format!("{api}/readyz"));
        if code == "500" {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "still ready without quorum: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        lost,
        "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed\n"
    );
    assert_eq!(
        anonymous_get(&ca, &format!("{api}/livez")),
        ("200".into(), "ok".into())
    );

    drop(_resume);
    let deadline = Instant::now() + Duration::from_secs(30);
    while anonymous_get(&ca, &format!("{api}/readyz")) != ("200".into(), "ok".into()) {
        assert!(
            Instant::now() < deadline,
            "not ready again after the quorum came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
