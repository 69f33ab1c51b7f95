//! The official Kubernetes Python client (installed by `scripts/setup` in its own venv)
//! against a 3-master cluster: CRUD, strategic and JSON patches, replace (409 when stale),
//! set-based label selectors and field selectors, a watch,
//! the scale subresource and error statuses. The script is `tests/python/client_smoke.py`.

use std::path::PathBuf;
use std::process::Command;

use flotilla_e2e::{show, LocalCluster};

#[test]
fn the_official_python_client_works() {
    let python = flotilla_e2e::python();
    let cluster = LocalCluster::up("python", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/client_smoke.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(cluster.dir().join("admin.kubeconfig"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"));
}
