//! The ResourceQuota controller: keeps every quota's `status` — its hard limits and what the
//! objects of its namespace use of them — current.
//!
//! The API server charges each new object to the quota as it admits it
//! (`flotilla_apiserver::http`); this controller recounts from the objects themselves, which
//! gives back what deleted and finished objects used and corrects a charge whose object was
//! never created. It recounts a namespace's quotas when a quota changes, when a pod, service,
//! config map or secret in the namespace changes, and every 30 s (for `count/<resource>` of
//! other kinds). Counting is [`flotilla_quota::usage`], the same arithmetic as admission.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ResourceQuota, Secret, Service};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::{json, Value};

use flotilla_quota::usage;

const RESYNC: Duration = Duration::from_secs(30);

/// The client and the API resources found so far, by `(plural, group)`.
struct Context {
    client: kube::Client,
    kinds: Mutex<HashMap<(String, String), Option<ApiResource>>>,
}

impl Context {
    /// The API resource `plural` of `group` in its preferred version, if the server has it.
    async fn resource(
        &self,
        plural: &str,
        group: &str,
    ) -> Result<Option<ApiResource>, kube::Error> {
        let key = (plural.to_string(), group.to_string());
        if let Some(found) = self
            .kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(found.clone());
        }
        let found = match kube::discovery::group(&self.client, group).await {
            Ok(g) => g
                .recommended_resources()
                .into_iter()
                .map(|(ar, _)| ar)
                .find(|ar| ar.plural == plural),
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(e) => return Err(e),
        };
        self.kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, found.clone());
        Ok(found)
    }
}

async fn reconcile(
    quota: Arc<ResourceQuota>,
    ctx: Arc<Context>,
) -> Result<Action, crate::runner::Error> {
    let Some(ns) = quota.namespace() else {
        return Ok(Action::await_change());
    };
    let name = quota.name_any();
    let value = serde_json::to_value(quota.as_ref()).map_err(kube::Error::SerdeError)?;
    let hard = usage::hard(&value);
    let mut counted: Vec<(String, String, Vec<Value>)> = Vec::new();
    for (plural, group) in usage::counted_kinds(hard.keys()) {
        let Some(ar) = ctx.resource(&plural, &group).await? else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
        let items = api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(kube::Error::SerdeError)?;
        counted.push((plural, group, items));
    }
    let used = usage::used(
        &value,
        counted
            .iter()
            .flat_map(|(p, g, items)| items.iter().map(move |o| (p.as_str(), g.as_str(), o))),
    );
    let status = json!({
        "hard": value.pointer("/spec/hard").cloned().unwrap_or(json!({})),
        "used": usage::to_json(&used),
    });
    if value.get("status") != Some(&status) {
        let mut next = value.clone();
        next["status"] = status;
        let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
        let next: ResourceQuota = serde_json::from_value(next).map_err(kube::Error::SerdeError)?;
        match api
            .replace_status(&name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => {}
            // Admission charged the quota meanwhile: count again.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(50)))
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Runs the controller until its streams end.
pub async fn run(client: kube::Client) {
    let quotas: Api<ResourceQuota> = Api::all(client.clone());
    let controller = Controller::new(quotas, watcher::Config::default());
    let store = controller.store();
    // A change of an object in a namespace concerns every quota there.
    let in_namespace = move |ns: Option<String>| {
        store
            .state()
            .iter()
            .filter(|q| q.metadata.namespace == ns)
            .map(|q| ObjectRef::from_obj(q.as_ref()))
            .collect::<Vec<_>>()
    };
    let (a, b, c) = (
        in_namespace.clone(),
        in_namespace.clone(),
        in_namespace.clone(),
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        kinds: Mutex::new(HashMap::new()),
    });
    controller
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |o: Pod| in_namespace(o.metadata.namespace),
        )
        .watches(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            move |o: Service| a(o.metadata.namespace),
        )
        .watches(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default(),
            move |o: ConfigMap| b(o.metadata.namespace),
        )
        .watches(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default(),
            move |o: Secret| c(o.metadata.namespace),
        )
        .run(reconcile, crate::runner::retry("resourcequota"), ctx)
        .for_each(|_| async {})
        .await;
}
