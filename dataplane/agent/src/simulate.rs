//! Simulated nodes, as kwok does: the control plane can be exercised before real agents run
//! containers. `flotilla agent --simulate N` registers N Nodes with capacity, renews their
//! Leases in `kube-node-lease`, marks pods bound to them Running with a pod IP, and finishes
//! the deletion of their pods. A node whose annotation `flotilla.dev/heartbeat` is `stopped`
//! gets no more Lease renewals (to exercise node failure); removing the annotation resumes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

/// The annotation that stops a simulated node's heartbeats.
pub const HEARTBEAT_ANNOTATION: &str = "flotilla.dev/heartbeat";

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many nodes.
    pub nodes: usize,
    /// Node names are `<prefix>-<i>`.
    pub prefix: String,
    /// Capacity of each node: CPU cores, memory, pods.
    pub cpu: String,
    /// Memory capacity.
    pub memory: String,
    /// Pod capacity.
    pub pods: u32,
    /// How often Leases are renewed.
    pub heartbeat: Duration,
}

impl SimConfig {
    /// `nodes` nodes of 8 CPUs, 32 GiB and 110 pods, renewing every 10 s.
    pub fn new(nodes: usize) -> SimConfig {
        SimConfig {
            nodes,
            prefix: "sim".into(),
            cpu: "8".into(),
            memory: "32Gi".into(),
            pods: 110,
            heartbeat: Duration::from_secs(10),
        }
    }

    /// The names of the simulated nodes.
    pub fn names(&self) -> Vec<String> {
        (1..=self.nodes)
            .map(|i| format!("{}-{i}", self.prefix))
            .collect()
    }
}

/// The Node object of simulated node `name` (number `i`), status included.
pub fn node_object(cfg: &SimConfig, name: &str, i: usize) -> Node {
    let now = Timestamp::now().to_string();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.flotilla.dev/simulated": "true",
            },
        },
        "spec": {},
        "status": {
            "capacity": {"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.pods.to_string()},
            "allocatable": {"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.pods.to_string()},
            "addresses": [
                {"type": "InternalIP", "address": format!("10.89.{}.{}", i / 250, i % 250 + 1)},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "simulated node is ready", "lastHeartbeatTime": now,
                 "lastTransitionTime": now},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.33.0-flotilla-sim",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "simulated://1",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "Flotilla simulated node",
                "kernelVersion": "",
                "machineID": "", "systemUUID": "", "bootID": "",
            },
        },
    }))
    .expect("a valid Node")
}

/// The status a simulated node reports for a pod it runs.
pub fn running_status(pod: &Pod, pod_ip: &str, host_ip: &str) -> serde_json::Value {
    let now = Timestamp::now().to_string();
    let containers: Vec<serde_json::Value> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "image": c.image.clone().unwrap_or_default(),
                "imageID": "", "containerID": format!("simulated://{}", c.name),
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    json!({
        "phase": "Running",
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": now,
        "qosClass": "BestEffort",
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"),
                       cond("ContainersReady"), cond("PodScheduled")],
        "containerStatuses": containers,
    })
}

/// Pod IPs handed out per node, so that they are unique while pods live.
#[derive(Debug, Default)]
struct Ips {
    next: u32,
    by_pod: HashMap<String, String>,
}

impl Ips {
    fn for_pod(&mut self, uid: &str) -> String {
        if let Some(ip) = self.by_pod.get(uid) {
            return ip.clone();
        }
        self.next += 1;
        let n = self.next;
        let ip = format!("10.88.{}.{}", (n / 250) % 256, n % 250 + 2);
        self.by_pod.insert(uid.to_string(), ip.clone());
        ip
    }
}

/// Runs the simulated nodes until `shutdown` completes.
pub async fn run(
    client: kube::Client,
    cfg: SimConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let names = cfg.names();
    for (i, name) in names.iter().enumerate() {
        register(&nodes, &cfg, name, i + 1).await?;
    }
    tracing::info!(nodes = names.len(), "simulated nodes registered");
    let host_ips: Arc<HashMap<String, String>> = Arc::new(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let i = i + 1;
                (n.clone(), format!("10.89.{}.{}", i / 250, i % 250 + 1))
            })
            .collect(),
    );
    let heartbeats = heartbeat_loop(client.clone(), cfg.clone(), names.clone());
    let pods = pod_loop(client, host_ips);
    tokio::select! {
        _ = shutdown => {}
        _ = heartbeats => {}
        _ = pods => {}
    }
    Ok(())
}

async fn register(
    nodes: &Api<Node>,
    cfg: &SimConfig,
    name: &str,
    i: usize,
) -> Result<(), kube::Error> {
    let want = node_object(cfg, name, i);
    match nodes.create(&PostParams::default(), &want).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    // Status goes through the status subresource (a create may drop it).
    let mut current = nodes.get(name).await?;
    current.status = want.status;
    nodes
        .replace_status(name, &PostParams::default(), &current)
        .await?;
    Ok(())
}

async fn heartbeat_loop(client: kube::Client, cfg: SimConfig, names: Vec<String>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    loop {
        for name in &names {
            let stopped = match nodes.get_opt(name).await {
                Ok(Some(n)) => n
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(HEARTBEAT_ANNOTATION))
                    .is_some_and(|v| v == "stopped"),
                _ => false,
            };
            if !stopped {
                if let Err(e) = renew(&leases, name).await {
                    tracing::warn!(node = %name, error = %e, "simulated node: lease renewal failed");
                }
            }
        }
        tokio::time::sleep(cfg.heartbeat).await;
    }
}

async fn renew(leases: &Api<Lease>, node: &str) -> Result<(), kube::Error> {
    let spec = LeaseSpec {
        holder_identity: Some(node.to_string()),
        lease_duration_seconds: Some(40),
        renew_time: Some(MicroTime(Timestamp::now())),
        ..Default::default()
    };
    match leases.get_opt(node).await? {
        Some(mut l) => {
            l.spec = Some(spec);
            leases.replace(node, &PostParams::default(), &l).await?;
        }
        None => {
            let mut l = Lease {
                spec: Some(spec),
                ..Default::default()
            };
            l.metadata.name = Some(node.to_string());
            leases.create(&PostParams::default(), &l).await?;
        }
    }
    Ok(())
}

async fn pod_loop(client: kube::Client, host_ips: Arc<HashMap<String, String>>) {
    let all: Api<Pod> = Api::all(client.clone());
    let ips = Arc::new(Mutex::new(Ips::default()));
    let mut events = watcher(all, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    ips.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .by_pod
                        .remove(uid);
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "simulated nodes: pod watch error");
                continue;
            }
        };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let Some(host_ip) = host_ips.get(&node) else {
            continue;
        };
        let (Some(ns), Some(name), Some(uid)) = (
            pod.metadata.namespace.clone(),
            pod.metadata.name.clone(),
            pod.metadata.uid.clone(),
        ) else {
            continue;
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            // The containers "stopped": finish the deletion, as a kubelet does.
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            if let Err(e) = pods.delete(&name, &dp).await {
                tracing::debug!(pod = %name, error = %e, "simulated nodes: finishing a deletion");
            }
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase == Some("Running") {
            continue;
        }
        let ip = ips.lock().unwrap_or_else(|e| e.into_inner()).for_pod(&uid);
        let mut updated = pod.clone();
        updated.status = serde_json::from_value(running_status(&pod, &ip, host_ip)).ok();
        if let Err(e) = pods
            .replace_status(&name, &PostParams::default(), &updated)
            .await
        {
            tracing::debug!(pod = %name, error = %e, "simulated nodes: status update (will retry on the next event)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_have_capacity_addresses_and_a_ready_condition() {
        let cfg = SimConfig::new(3);
        assert_eq!(cfg.names(), ["sim-1", "sim-2", "sim-3"]);
        let n = node_object(&cfg, "sim-2", 2);
        let status = n.status.unwrap();
        assert_eq!(status.allocatable.unwrap()["pods"].0, "110");
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(status.addresses.unwrap()[0].address, "10.89.0.3");
    }

    #[test]
    fn running_pods_get_unique_ips_and_ready_containers() {
        let mut ips = Ips::default();
        let a = ips.for_pod("a");
        assert_eq!(ips.for_pod("a"), a, "stable per pod");
        assert_ne!(ips.for_pod("b"), a);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        }))
        .unwrap();
        let s = running_status(&pod, &a, "10.89.0.2");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        let parsed: k8s_openapi::api::core::v1::PodStatus = serde_json::from_value(s).unwrap();
        assert_eq!(parsed.pod_ip.as_deref(), Some(a.as_str()));
    }
}
