//! The `default/kubernetes` Service's endpoints are the live API servers, with kubectl 1.27
//! and 1.33: all three masters' API addresses appear in the Endpoints and the EndpointSlice;
//! a master that stops cleanly (SIGTERM) takes itself out at once, and its Lease goes.

use std::time::Duration;

use flotilla_e2e::{kubectl_ok, pid_alive, wait_for, LocalCluster};

fn endpoints(cluster: &LocalCluster) -> Vec<String> {
    let out = kubectl_ok(
        cluster,
        "1.27",
        &[
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath={range .subsets[*]}{range .addresses[*]}{.ip}{\"\\n\"}{end}{end}",
        ],
    );
    let ports = kubectl_ok(
        cluster,
        "1.27",
        &[
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath={.subsets[*].ports[0].port}",
        ],
    );
    let mut v: Vec<String> = out
        .lines()
        .zip(ports.split_whitespace())
        .map(|(ip, port)| format!("{ip}:{port}"))
        .collect();
    v.sort();
    v
}

#[test]
fn the_kubernetes_service_lists_every_live_api_server() {
    let cluster = LocalCluster::up("apiserver-endpoints", &["--nodes", "0", "--no-demo"]);
    let processes = cluster.cluster_json()["processes"].clone();
    let mut apis: Vec<String> = processes
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] == "master")
        .map(|p| {
            p["endpoints"]["api"]
                .as_str()
                .unwrap()
                .trim_start_matches("https://")
                .to_string()
        })
        .collect();
    apis.sort();
    assert_eq!(apis.len(), 3);
    wait_for(
        "all three API servers listed",
        Duration::from_secs(30),
        || endpoints(&cluster) == apis,
    );
    // One slice per port (here every master has its own port): the three addresses in all.
    let slices = || {
        let out = kubectl_ok(
            &cluster,
            "1.33",
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=kubernetes",
                "-o",
                "jsonpath={range .items[*]}{.endpoints[0].addresses[0]}:{.ports[0].port} {end}",
            ],
        );
        let mut listed: Vec<String> = out.split_whitespace().map(String::from).collect();
        listed.sort();
        listed
    };
    wait_for(
        "all three API servers in the EndpointSlices",
        Duration::from_secs(15),
        || slices() == apis,
    );

    // A clean stop of m3: it deletes its Lease and leaves the endpoints.
    let m3 = &processes[2];
    let pid = m3["pid"].as_u64().unwrap() as u32;
    let gone = m3["endpoints"]["api"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://");
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_for("m3 to exit", Duration::from_secs(20), || !pid_alive(pid));
    let rest: Vec<String> = apis.iter().filter(|a| *a != gone).cloned().collect();
    wait_for("m3 out of the endpoints", Duration::from_secs(15), || {
        endpoints(&cluster) == rest
    });
    let leases = kubectl_ok(
        &cluster,
        "1.33",
        &["get", "leases", "-n", "kube-system", "-o", "name"],
    );
    assert!(!leases.contains("apiserver-m3"), "{leases}");
}
