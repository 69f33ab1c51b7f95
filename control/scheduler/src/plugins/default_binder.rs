//! DefaultBinder: binds through the `pods/binding` subresource, as Kubernetes' default binder.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::framework::{Bind, Built, Plugin};

/// The plugin's registered name.
pub const NAME: &str = "DefaultBinder";

/// The default binder.
#[derive(Debug, Default)]
pub struct DefaultBinder;

/// Builds the plugin.
pub fn new() -> Built {
    Built {
        bind: Some(Arc::new(DefaultBinder)),
        ..Default::default()
    }
}

impl Plugin for DefaultBinder {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Bind for DefaultBinder {
    fn bind(
        &self,
        client: kube::Client,
        pod: Arc<Pod>,
        node: String,
    ) -> BoxFuture<'static, Result<(), kube::Error>> {
        async move {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            pods.create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
            .map(|_| ())
        }
        .boxed()
    }
}
