//! The Endpoints and EndpointSlice controller: for every Service with a selector, the
//! addresses of the pods it selects, with their readiness and the Service's ports resolved on
//! each pod (a named `targetPort` is looked up among the pod's container ports).
//!
//! - Endpoints (`<service>`): ready pods under `addresses`, the others under
//!   `notReadyAddresses`; terminating pods are left out (unless the Service publishes not-ready
//!   addresses); pods that resolve the ports alike share a subset.
//! - EndpointSlices (`<service>-<hash of the ports>[-<n>]`, at most 100 endpoints each,
//!   labelled `kubernetes.io/service-name`, owned by the Service): every pod with an IP, with
//!   the `ready`, `serving` and `terminating` conditions.
//!
//! The desired objects are pure functions ([`endpoints_for`], [`slices_for`]) of the Service and
//! its pods; the reconciler writes only what differs, so unchanged pods cause no writes.
//! Services without a selector are left to their owners (their Endpoints are written by hand).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::{json, Value};

use crate::pod_is_ready as is_ready;
use crate::replicaset::ignore_gone;

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`] (the name Kubernetes' controller uses, so
/// tools that look for it find the slices).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const MAX_PER_SLICE: usize = 100;

/// A Service port as resolved on a pod: (name, port, protocol).
type Port = (String, i32, String);

/// One pod as an endpoint of a Service.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    ip: String,
    node: Option<String>,
    /// The pod's hostname when its subdomain is this Service (StatefulSet pods).
    hostname: Option<String>,
    target: Value,
    ready: bool,
    serving: bool,
    terminating: bool,
    /// The Service's ports as resolved on this pod: (name, port, protocol).
    ports: Vec<Port>,
}

/// `port`'s target on `pod`: a number as is, a name looked up among the container ports.
fn resolve(port: &ServicePort, pod: &Pod) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse() {
                return Some(n);
            }
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_ref()?.iter().find_map(|p| {
                    let proto = p.protocol.as_deref().unwrap_or("TCP");
                    (p.name.as_deref() == Some(name.as_str()) && proto == protocol)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

/// The pods of `svc` as endpoints (those with an IP, not finished), sorted by IP.
fn members(svc: &Service, pods: &[Pod]) -> Vec<Member> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses.unwrap_or(false);
    let ports = spec.ports.unwrap_or_default();
    let mut out: Vec<Member> = pods
        .iter()
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
            if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
                return None;
            }
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let serving = is_ready(pod) || publish;
            let resolved: Vec<Port> = ports
                .iter()
                .filter_map(|p| {
                    let target = resolve(p, pod)?;
                    Some((
                        p.name.clone().unwrap_or_default(),
                        target,
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    ))
                })
                .collect();
            if !ports.is_empty() && resolved.is_empty() {
                return None;
            }
            Some(Member {
                ip,
                node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                hostname: pod
                    .spec
                    .as_ref()
                    .filter(|s| s.subdomain.is_some() && s.subdomain == svc.metadata.name)
                    .and_then(|s| s.hostname.clone()),
                target: json!({"kind": "Pod", "namespace": pod.metadata.namespace,
                               "name": pod.metadata.name, "uid": pod.metadata.uid}),
                ready: serving && (!terminating || publish),
                serving,
                terminating,
                ports: resolved,
            })
        })
        .collect();
    out.sort_by(|a, b| a.ip.cmp(&b.ip));
    out
}

fn selector_of(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

fn headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn labels_for(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if headless(svc) {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    labels
}

/// The `subsets` of `svc`'s Endpoints.
pub fn endpoints_for(svc: &Service, pods: &[Pod]) -> Value {
    let mut groups: BTreeMap<Vec<Port>, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    for m in members(svc, pods) {
        if m.terminating && !publish {
            continue;
        }
        let mut address = json!({"ip": m.ip, "targetRef": m.target});
        if let Some(n) = &m.node {
            address["nodeName"] = json!(n);
        }
        if let Some(h) = &m.hostname {
            address["hostname"] = json!(h);
        }
        let mut ports = m.ports.clone();
        ports.sort();
        let group = groups.entry(ports).or_default();
        if m.ready {
            group.0.push(address);
        } else {
            group.1.push(address);
        }
    }
    let subsets: Vec<Value> = groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(name, port, protocol)| {
                    let mut p = json!({"port": port, "protocol": protocol});
                    if !name.is_empty() {
                        p["name"] = json!(name);
                    }
                    p
                })
                .collect();
            let mut subset = json!({});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            if !ports.is_empty() {
                subset["ports"] = json!(ports);
            }
            subset
        })
        .collect();
    json!(subsets)
}

/// Eight letters and digits from `text` (FNV-1a), for slice names.
fn short_hash(text: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// The EndpointSlices of `svc` (name → object).
pub fn slices_for(svc: &Service, pods: &[Pod]) -> BTreeMap<String, Value> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let mut groups: BTreeMap<Vec<Port>, Vec<Value>> = BTreeMap::new();
    for m in members(svc, pods) {
        let mut endpoint = json!({
            "addresses": [m.ip],
            "conditions": {"ready": m.ready, "serving": m.serving, "terminating": m.terminating},
            "targetRef": m.target,
        });
        if let Some(n) = &m.node {
            endpoint["nodeName"] = json!(n);
        }
        if let Some(h) = &m.hostname {
            endpoint["hostname"] = json!(h);
        }
        let mut ports = m.ports.clone();
        ports.sort();
        groups.entry(ports).or_default().push(endpoint);
    }
    let mut labels = labels_for(svc);
    labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let owner = json!([{"apiVersion": "v1", "kind": "Service", "name": name,
                        "uid": svc.metadata.uid, "controller": true, "blockOwnerDeletion": true}]);
    let mut out = BTreeMap::new();
    for (ports, endpoints) in groups {
        let key: String = ports
            .iter()
            .map(|(n, p, proto)| format!("{n}/{p}/{proto};"))
            .collect();
        let base = format!("{name}-{}", short_hash(&key));
        let ports: Vec<Value> = ports
            .into_iter()
            .map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto}))
            .collect();
        for (i, chunk) in endpoints.chunks(MAX_PER_SLICE).enumerate() {
            let slice_name = if i == 0 {
                base.clone()
            } else {
                format!("{base}-{i}")
            };
            out.insert(
                slice_name.clone(),
                json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": slice_name, "namespace": svc.metadata.namespace,
                                 "labels": labels, "ownerReferences": owner},
                    "addressType": "IPv4",
                    "endpoints": chunk,
                    "ports": ports,
                }),
            );
        }
    }
    out
}

/// Whether the fields this controller manages differ between `have` and `want`.
fn differs(have: &Value, want: &Value, fields: &[&str]) -> bool {
    fields.iter().any(|f| {
        let empty_list = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v == &json!([]));
        let (a, b) = (have.get(*f), want.get(*f));
        !(a == b || (empty_list(a) && empty_list(b)))
    }) || have.pointer("/metadata/labels") != want.pointer("/metadata/labels")
}

async fn reconcile(
    svc: Arc<Service>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    let (Some(ns), Some(name)) = (
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
    ) else {
        return Ok(Action::await_change());
    };
    let client = (*client).clone();
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let current = services.get_opt(name).await?;
    let svc = match current {
        Some(s) if s.metadata.deletion_timestamp.is_none() => s,
        // Gone: its slices go with it (owned); its Endpoints share its name.
        _ => {
            ignore_gone(
                endpoints
                    .delete(name, &DeleteParams::default())
                    .await
                    .map(|_| ()),
            )?;
            return Ok(Action::await_change());
        }
    };
    let Some(selector) = selector_of(&svc) else {
        return Ok(Action::await_change());
    };
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let selected = pods
        .list(&ListParams::default().labels(&labels.join(",")))
        .await?
        .items;

    // Endpoints.
    let mut want = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": ns, "labels": labels_for(&svc)},
        "subsets": endpoints_for(&svc, &selected),
    });
    match endpoints.get_opt(name).await? {
        None => {
            let obj: Endpoints = serde_json::from_value(want).map_err(kube::Error::SerdeError)?;
            match endpoints.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Ok(Action::requeue(Duration::from_millis(100)))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Some(have) => {
            let have_v = serde_json::to_value(&have).unwrap_or(Value::Null);
            if differs(&have_v, &want, &["subsets"]) {
                want["metadata"]["resourceVersion"] = json!(have.metadata.resource_version);
                let obj: Endpoints =
                    serde_json::from_value(want).map_err(kube::Error::SerdeError)?;
                ignore_gone(endpoints.replace(name, &PostParams::default(), &obj).await)?;
            }
        }
    }

    // EndpointSlices.
    let desired = slices_for(&svc, &selected);
    let existing = slices
        .list(&ListParams::default().labels(&format!(
            "{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"
        )))
        .await?
        .items;
    let mut kept = BTreeSet::new();
    for have in existing {
        let Some(slice_name) = have.metadata.name.clone() else {
            continue;
        };
        match desired.get(&slice_name) {
            Some(want) => {
                kept.insert(slice_name.clone());
                let have_v = serde_json::to_value(&have).unwrap_or(Value::Null);
                if differs(&have_v, want, &["endpoints", "ports"]) {
                    let mut want = want.clone();
                    want["metadata"]["resourceVersion"] = json!(have.metadata.resource_version);
                    let obj: EndpointSlice =
                        serde_json::from_value(want).map_err(kube::Error::SerdeError)?;
                    ignore_gone(
                        slices
                            .replace(&slice_name, &PostParams::default(), &obj)
                            .await,
                    )?;
                }
            }
            None => {
                ignore_gone(
                    slices
                        .delete(&slice_name, &DeleteParams::default())
                        .await
                        .map(|_| ()),
                )?;
            }
        }
    }
    for (slice_name, want) in &desired {
        if kept.contains(slice_name) {
            continue;
        }
        let obj: EndpointSlice =
            serde_json::from_value(want.clone()).map_err(kube::Error::SerdeError)?;
        match slices.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(100)))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Runs the controller until its streams end.
pub async fn run(client: kube::Client) {
    let services: Api<Service> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let endpoints: Api<Endpoints> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    // A deleted Service is no longer in the controller's store, so nothing reconciles it: its
    // Endpoints (same name, no owner) are removed here; its slices go by garbage collection.
    let gone = watcher(services.clone(), watcher::Config::default()).for_each(|e| {
        let client = client.clone();
        async move {
            if let Ok(watcher::Event::Delete(svc)) = e {
                if let (Some(ns), Some(name)) = (svc.metadata.namespace, svc.metadata.name) {
                    let endpoints: Api<Endpoints> = Api::namespaced(client, &ns);
                    if let Err(e) = ignore_gone(
                        endpoints
                            .delete(&name, &DeleteParams::default())
                            .await
                            .map(|_| ()),
                    ) {
                        tracing::warn!(error = %e, service = %name, "endpoints controller: removing the Endpoints of a deleted Service");
                    }
                }
            }
        }
    });
    let controller = Controller::new(services, watcher::Config::default());
    let store = controller.store();
    let reconciling = controller
        // A pod change concerns the Services of its namespace that select it.
        .watches(pods, watcher::Config::default(), move |pod: Pod| {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let ns = pod.metadata.namespace.clone();
            store
                .state()
                .iter()
                .filter(|s| s.metadata.namespace == ns)
                .filter(|s| {
                    selector_of(s)
                        .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
                })
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches(endpoints, watcher::Config::default(), |e: Endpoints| {
            let name = e.metadata.name?;
            Some(ObjectRef::<Service>::new(&name).within(e.metadata.namespace.as_deref()?))
        })
        .owns(slices, watcher::Config::default())
        .run(
            reconcile,
            crate::runner::retry("endpoints"),
            Arc::new(client.clone()),
        )
        .for_each(|_| async {});
    tokio::select! {
        _ = reconciling => {}
        _ = gone => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(target: Value, publish: bool) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "d", "uid": "svc-uid"},
            "spec": {"selector": {"app": "web"}, "publishNotReadyAddresses": publish,
                     "ports": [{"name": "http", "port": 80, "targetPort": target, "protocol": "TCP"}]},
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool, terminating: bool, port_name: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "d", "uid": format!("{name}-uid"),
                         "labels": {"app": "web"},
                         "deletionTimestamp": if terminating { json!("2026-01-01T00:00:00Z") } else { Value::Null }},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                     "ports": [{"name": port_name, "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    #[test]
    fn pods_whose_subdomain_is_the_service_publish_their_hostname() {
        let mut named = pod("web-0", "10.0.0.1", true, false, "web");
        let spec = named.spec.as_mut().unwrap();
        spec.hostname = Some("web-0".into());
        spec.subdomain = Some("web".into());
        let mut elsewhere = pod("x-0", "10.0.0.2", true, false, "web");
        let spec = elsewhere.spec.as_mut().unwrap();
        spec.hostname = Some("x-0".into());
        spec.subdomain = Some("other".into());
        let svc = service(json!(8080), false);
        let subsets = endpoints_for(&svc, &[named.clone(), elsewhere.clone()]);
        assert_eq!(subsets[0]["addresses"][0]["hostname"], "web-0");
        assert!(subsets[0]["addresses"][1].get("hostname").is_none());
        let slices = slices_for(&svc, &[named, elsewhere]);
        let slice = slices.values().next().unwrap();
        assert_eq!(slice["endpoints"][0]["hostname"], "web-0");
        assert!(slice["endpoints"][1].get("hostname").is_none());
    }

    #[test]
    fn endpoints_split_ready_from_not_ready_and_drop_terminating_pods() {
        let pods = [
            pod("b", "10.0.0.2", true, false, "web"),
            pod("a", "10.0.0.1", true, false, "web"),
            pod("c", "10.0.0.3", false, false, "web"),
            pod("d", "10.0.0.4", true, true, "web"),
        ];
        let subsets = endpoints_for(&service(json!(8080), false), &pods);
        let s = &subsets[0];
        let ips: Vec<&str> = s["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["ip"].as_str().unwrap())
            .collect();
        assert_eq!(ips, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(s["notReadyAddresses"][0]["ip"], "10.0.0.3");
        assert_eq!(s["addresses"][0]["targetRef"]["name"], "a");
        assert_eq!(s["addresses"][0]["nodeName"], "n1");
        assert_eq!(
            s["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
        );
        assert_eq!(subsets.as_array().unwrap().len(), 1);
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_unresolvable_pods_are_left_out() {
        let pods = [
            pod("a", "10.0.0.1", true, false, "web"),
            pod("b", "10.0.0.2", true, false, "other"),
        ];
        let subsets = endpoints_for(&service(json!("web"), false), &pods);
        assert_eq!(subsets.as_array().unwrap().len(), 1);
        assert_eq!(subsets[0]["addresses"].as_array().unwrap().len(), 1);
        assert_eq!(subsets[0]["ports"][0]["port"], 8080);
    }

    #[test]
    fn slices_carry_conditions_labels_and_owner() {
        let pods = [
            pod("a", "10.0.0.1", true, false, "web"),
            pod("d", "10.0.0.4", true, true, "web"),
        ];
        let slices = slices_for(&service(json!(8080), false), &pods);
        assert_eq!(slices.len(), 1);
        let (name, s) = slices.iter().next().unwrap();
        assert!(name.starts_with("web-"));
        assert_eq!(s["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "svc-uid");
        assert_eq!(s["addressType"], "IPv4");
        let eps = s["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(
            eps[0]["conditions"],
            json!({"ready": true, "serving": true, "terminating": false})
        );
        assert_eq!(
            eps[1]["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
        let typed: EndpointSlice = serde_json::from_value(s.clone()).unwrap();
        assert_eq!(typed.ports.unwrap()[0].port, Some(8080));
    }

    #[test]
    fn publishing_not_ready_addresses_counts_every_pod_ready() {
        let pods = [pod("c", "10.0.0.3", false, false, "web")];
        let subsets = endpoints_for(&service(json!(8080), true), &pods);
        assert_eq!(subsets[0]["addresses"][0]["ip"], "10.0.0.3");
        let many: Vec<Pod> = (0..150)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.0.{}.{}", i / 200, i % 200),
                    true,
                    false,
                    "web",
                )
            })
            .collect();
        let slices = slices_for(&service(json!(8080), false), &many);
        assert_eq!(slices.len(), 2, "100 endpoints per slice");
    }
}
