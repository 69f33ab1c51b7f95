//! Objects every cluster has from the start.

use std::time::Duration;

use serde_json::json;

use crate::http::Api;
use crate::objects::prepare_create;
use crate::resources;
use crate::status::ApiError;
use crate::storage::Backend;

/// The namespaces Kubernetes starts with (node Leases live in `kube-node-lease`).
pub const INITIAL_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates the `default/kubernetes` Service (ClusterIP 10.96.0.1, port 443) if it does not
/// exist yet.
/// Its Endpoints, every live API server, are kept by `flotilla_controllers::apiservers`.
pub async fn kubernetes_service<B: Backend>(api: &Api<B>) {
    let res = resources::find("", "v1", "services").expect("services are served");
    loop {
        let svc = prepare_create(
            res,
            Some("default"),
            json!({
                "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {
                    "clusterIP": crate::allocate::KUBERNETES_SERVICE_IP.to_string(),
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
                },
            }),
        )
        .expect("the kubernetes Service is valid");
        match crate::allocate::create_service(api.storage(), res, Some("default"), svc).await {
            Ok(_) => {
                tracing::info!("created the kubernetes Service");
                return;
            }
            Err(ApiError::AlreadyExists { .. }) | Err(ApiError::Invalid { .. }) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot create the kubernetes Service yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Creates the initial namespaces that do not exist yet, retrying until the store takes
/// writes. Every master runs it; creating is idempotent (an existing one is left alone).
pub async fn initial_namespaces<B: Backend>(api: &Api<B>) {
    let res = resources::find("", "v1", "namespaces").expect("namespaces are served");
    for name in INITIAL_NAMESPACES {
        loop {
            let ns = prepare_create(res, None, json!({"metadata": {"name": name}}))
                .expect("the initial namespaces are valid");
            match api.storage().create(res, None, &ns).await {
                Ok(_) => {
                    tracing::info!(namespace = name, "created");
                    break;
                }
                Err(ApiError::AlreadyExists { .. }) => break,
                Err(e) => {
                    tracing::debug!(namespace = name, error = %e, "cannot create yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// The PriorityClasses every cluster has: (name, value), as in Kubernetes.
pub const SYSTEM_PRIORITY_CLASSES: &[(&str, i64)] = &[
    ("system-cluster-critical", 2_000_000_000),
    ("system-node-critical", 2_000_001_000),
];

/// Creates the system PriorityClasses that do not exist yet (idempotent, like the
/// namespaces).
pub async fn priority_classes<B: Backend>(api: &Api<B>) {
    let res = resources::find("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priorityclasses are served");
    for (name, value) in SYSTEM_PRIORITY_CLASSES {
        loop {
            let pc = prepare_create(
                res,
                None,
                json!({"metadata": {"name": name}, "value": value,
                       "description": "Used for system critical pods that must run in the cluster."}),
            )
            .expect("the system PriorityClasses are valid");
            match api.storage().create(res, None, &pc).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => break,
                Err(e) => {
                    tracing::debug!(class = name, error = %e, "cannot create yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
