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
