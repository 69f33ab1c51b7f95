//! Events (`kubectl get events`, the Events section of `kubectl describe`) for what the
//! controllers and the scheduler do.

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use serde_json::json;

/// `Normal` or `Warning`, as Kubernetes types events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Something expected happened.
    Normal,
    /// Something went wrong or needs attention.
    Warning,
}

/// The reference an event names for an object with this metadata.
pub fn reference(
    api_version: &str,
    kind: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

/// Records an event about `about` from `component`. Failing to record is logged, never an
/// error: events are best-effort, as in Kubernetes.
pub async fn record(
    client: &kube::Client,
    component: &str,
    about: &ObjectReference,
    kind: Kind,
    reason: &str,
    message: &str,
) {
    let ns = about.namespace.clone().unwrap_or_else(|| "default".into());
    let name = about.name.clone().unwrap_or_default();
    let now = Timestamp::now().to_string();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": about,
        "reason": reason, "message": message,
        "type": match kind { Kind::Normal => "Normal", Kind::Warning => "Warning" },
        "source": {"component": component},
        "reportingComponent": component, "reportingInstance": component,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let event: Event = match serde_json::from_value(event) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, "events: building an event");
            return;
        }
    };
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    if let Err(e) = events.create(&PostParams::default(), &event).await {
        tracing::debug!(reason, error = %e, "events: recording");
    }
}
