//! Simulated nodes, as kwok does: the control plane can be exercised before real agents run
//! containers. `flotilla agent --simulate N` registers N Nodes with capacity, renews their
//! Leases in `kube-node-lease`, marks pods bound to them Running with a pod IP, and finishes
//! the deletion of their pods. A node whose annotation `flotilla.dev/heartbeat` is `stopped`
//! behaves as if its kubelet died (to exercise node failure): no more Lease renewals, and its
//! pods get no status updates and no finished deletions. Removing the annotation resumes it:
//! it reports Ready again and catches up with its pods. Simulated nodes also report resource
//! usage (see [`crate::metrics`]): each running pod's when it starts or its usage changes,
//! and every node's and pod's every 15 s.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::metrics;

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
    /// Where the agent's endpoint (logs, exec) is reached: a host name every master can
    /// resolve (published as the nodes' `InternalDNS` address) and the port (published as
    /// `daemonEndpoints.kubeletEndpoint.Port`). None: no endpoint.
    pub endpoint: Option<(String, u16)>,
    /// Where the simulated containers' logs are written ([`crate::logs`] layout). None: no
    /// logs.
    pub logs: Option<PathBuf>,
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
            endpoint: None,
            logs: None,
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
    let mut addresses = vec![
        json!({"type": "InternalIP", "address": format!("10.89.{}.{}", i / 250, i % 250 + 1)}),
        json!({"type": "Hostname", "address": name}),
    ];
    let mut port = 0;
    if let Some((host, p)) = &cfg.endpoint {
        addresses.push(json!({"type": "InternalDNS", "address": host}));
        port = *p;
    }
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
            "addresses": addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
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

/// The status of a container a simulated node "runs", started at `now`.
fn running_container(name: &str, image: Option<&str>, ready: bool, now: &str) -> serde_json::Value {
    json!({
        "name": name, "image": image.unwrap_or_default(),
        "imageID": "", "containerID": format!("simulated://{name}"),
        "ready": ready, "started": true, "restartCount": 0,
        "state": {"running": {"startedAt": now}},
    })
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
        .map(|c| running_container(&c.name, c.image.as_deref(), true, &now))
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

/// The pod's ephemeral container statuses with every ephemeral container that has none yet
/// running, if there is such a container.
pub fn ephemeral_statuses(pod: &Pod) -> Option<Vec<serde_json::Value>> {
    let wanted = pod.spec.as_ref()?.ephemeral_containers.as_ref()?;
    let known: Vec<serde_json::Value> = pod
        .status
        .as_ref()
        .and_then(|s| s.ephemeral_container_statuses.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| serde_json::to_value(s).ok())
        .collect();
    let now = Timestamp::now().to_string();
    let new: Vec<serde_json::Value> = wanted
        .iter()
        .filter(|c| !known.iter().any(|s| s["name"] == c.name.as_str()))
        .map(|c| running_container(&c.name, c.image.as_deref(), false, &now))
        .collect();
    (!new.is_empty()).then(|| known.into_iter().chain(new).collect())
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
    let silent: Silent = Arc::default();
    let (resumed_tx, resumed) = tokio::sync::mpsc::unbounded_channel();
    let heartbeats = heartbeat_loop(
        client.clone(),
        cfg.clone(),
        names.clone(),
        silent.clone(),
        resumed_tx,
    );
    let reported: Arc<Mutex<metrics::Reported>> = Arc::default();
    let usage = metrics_loop(
        client.clone(),
        names.clone(),
        silent.clone(),
        reported.clone(),
    );
    let logs = SimLogs(cfg.logs.clone());
    let pods = pod_loop(client, host_ips, silent, resumed, reported, logs);
    tokio::select! {
        _ = shutdown => {}
        _ = heartbeats => {}
        _ = pods => {}
        _ = usage => {}
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

async fn heartbeat_loop(
    client: kube::Client,
    cfg: SimConfig,
    names: Vec<String>,
    silent: Silent,
    resumed: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    loop {
        for (i, name) in names.iter().enumerate() {
            let node = nodes.get_opt(name).await.ok().flatten();
            let stopped = node.as_ref().is_some_and(|n| {
                n.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(HEARTBEAT_ANNOTATION))
                    .is_some_and(|v| v == "stopped")
            });
            {
                let mut silent = silent.lock().unwrap_or_else(|e| e.into_inner());
                let was = silent.contains(name);
                if stopped && !was {
                    silent.insert(name.clone());
                    tracing::info!(node = %name, "simulated node: heartbeats stopped");
                } else if !stopped && was {
                    silent.remove(name);
                    let _ = resumed.send(name.clone());
                    tracing::info!(node = %name, "simulated node: heartbeats resumed");
                }
            }
            if stopped {
                continue;
            }
            if let Err(e) = renew(&leases, name).await {
                tracing::warn!(node = %name, error = %e, "simulated node: lease renewal failed");
            }
            // Marked NotReady/Unknown by the node controller while silent: report ready again,
            // as a kubelet does when it comes back.
            let ready = node
                .as_ref()
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if node.is_some() && !ready {
                let fresh = node_object(&cfg, name, i + 1);
                let conditions = fresh.status.and_then(|s| s.conditions);
                let patch = json!({"status": {"conditions": conditions}});
                if let Err(e) = nodes
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(node = %name, error = %e, "simulated node: reporting ready");
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

/// Nodes whose heartbeats are stopped: their "kubelet" is down, so their pods get no
/// status and no finished deletions either.
type Silent = Arc<Mutex<std::collections::HashSet<String>>>;

/// Every 15 s: every node's usage, and every running pod's again (a fresh timestamp).
async fn metrics_loop(
    client: kube::Client,
    names: Vec<String>,
    silent: Silent,
    reported: Arc<Mutex<metrics::Reported>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        let now = Timestamp::now();
        let quiet = silent.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let pods: Vec<metrics::PodUsage> = reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|u| !quiet.contains(&u.node))
            .cloned()
            .collect();
        for name in names.iter().filter(|n| !quiet.contains(*n)) {
            let obj = metrics::node_metrics(name, pods.iter(), now);
            if let Err(e) = metrics::publish(&client, &obj).await {
                tracing::debug!(node = %name, error = %e, "simulated nodes: node metrics");
            }
        }
        for u in &pods {
            // Gone since the snapshot: publishing would bring its metrics back for good.
            let still = reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|r| r.namespace == u.namespace && r.name == u.name);
            if !still {
                continue;
            }
            if let Err(e) = metrics::publish(&client, &metrics::pod_metrics(u, now)).await {
                tracing::debug!(pod = %u.name, error = %e, "simulated nodes: pod metrics");
            }
        }
    }
}

/// Reports `pod`'s usage if it runs on one of our (live) nodes and its usage changed;
/// forgets a pod that finished or is going.
async fn report_usage(
    client: &kube::Client,
    pod: &Pod,
    host_ips: &HashMap<String, String>,
    silent: &Silent,
    reported: &Mutex<metrics::Reported>,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if !host_ips.contains_key(&node)
        || silent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&node)
    {
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if pod.metadata.deletion_timestamp.is_some() || matches!(phase, Some("Succeeded" | "Failed")) {
        let gone = reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
        if let Some(u) = gone {
            metrics::forget(client, &u.namespace, &u.name).await;
        }
        return;
    }
    if phase != Some("Running") {
        return;
    }
    let usage = metrics::simulated_usage(pod, &node);
    let changed = reported.lock().unwrap_or_else(|e| e.into_inner()).get(&uid) != Some(&usage);
    if !changed {
        return;
    }
    match metrics::publish(client, &metrics::pod_metrics(&usage, Timestamp::now())).await {
        Ok(()) => {
            reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid, usage);
        }
        Err(e) => tracing::debug!(pod = %usage.name, error = %e, "simulated nodes: pod metrics"),
    }
}

async fn pod_loop(
    client: kube::Client,
    host_ips: Arc<HashMap<String, String>>,
    silent: Silent,
    mut resumed: tokio::sync::mpsc::UnboundedReceiver<String>,
    reported: Arc<Mutex<metrics::Reported>>,
    logs: SimLogs,
) {
    let all: Api<Pod> = Api::all(client.clone());
    let ips = Arc::new(Mutex::new(Ips::default()));
    let mut events = watcher(all.clone(), watcher::Config::default()).boxed();
    loop {
        let pods = tokio::select! {
            e = events.next() => match e {
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => vec![p],
                Some(Ok(watcher::Event::Delete(p))) => {
                    logs.remove(&p);
                    if let Some(uid) = p.metadata.uid.as_deref() {
                        ips.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .by_pod
                            .remove(uid);
                        let gone = reported.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
                        if let Some(u) = gone {
                            metrics::forget(&client, &u.namespace, &u.name).await;
                        }
                    }
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "simulated nodes: pod watch error");
                    continue;
                }
                None => return,
            },
            // A node came back: catch up with what happened to its pods meanwhile.
            Some(node) = resumed.recv() => {
                let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
                match all.list(&lp).await {
                    Ok(l) => l.items,
                    Err(e) => {
                        tracing::warn!(node = %node, error = %e, "simulated nodes: listing a resumed node's pods");
                        continue;
                    }
                }
            }
        };
        for pod in pods {
            act(&client, &pod, &host_ips, &ips, &silent, &logs).await;
            report_usage(&client, &pod, &host_ips, &silent, &reported).await;
        }
    }
}

/// What a kubelet does for `pod` if it is on one of our nodes: run it (status Running with an
/// IP), or finish its deletion.
async fn act(
    client: &kube::Client,
    pod: &Pod,
    host_ips: &HashMap<String, String>,
    ips: &Mutex<Ips>,
    silent: &Silent,
    logs: &SimLogs,
) {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return;
    };
    let Some(host_ip) = host_ips.get(&node) else {
        return;
    };
    if silent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&node)
    {
        return;
    }
    let (Some(ns), Some(name), Some(uid)) = (
        pod.metadata.namespace.clone(),
        pod.metadata.name.clone(),
        pod.metadata.uid.clone(),
    ) else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if pod.metadata.deletion_timestamp.is_some() {
        // The containers "stopped": finish the deletion, as a kubelet does.
        logs.stopped(pod, "stopped: the pod is being deleted");
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        if let Err(e) = pods.delete(&name, &dp).await {
            tracing::debug!(pod = %name, error = %e, "simulated nodes: finishing a deletion");
        }
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase == Some("Running") && !flotilla_controllers::pod_is_ready(pod) {
        // Marked not ready by the node controller while this node was silent: report it
        // ready again, as a kubelet's status sync does when it is back.
        let now = Timestamp::now().to_string();
        let patch = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now}
        ]}});
        if let Err(e) = pods
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            tracing::debug!(pod = %name, error = %e, "simulated nodes: reporting a pod ready");
        }
        return;
    }
    if phase == Some("Running") {
        // Ephemeral containers (`kubectl debug`) "start" once added.
        if let Some(statuses) = ephemeral_statuses(pod) {
            let patch = json!({"status": {"ephemeralContainerStatuses": statuses}});
            if let Err(e) = pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(pod = %name, error = %e, "simulated nodes: ephemeral containers");
            }
        }
        return;
    }
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return;
    }
    let ip = ips.lock().unwrap_or_else(|e| e.into_inner()).for_pod(&uid);
    let mut updated = pod.clone();
    updated.status = serde_json::from_value(running_status(pod, &ip, host_ip)).ok();
    // What others own in the status stays, as a kubelet keeps it: the scheduler's
    // nomination.
    if let (Some(new), Some(old)) = (updated.status.as_mut(), pod.status.as_ref()) {
        new.nominated_node_name.clone_from(&old.nominated_node_name);
    }
    if let Err(e) = pods
        .replace_status(&name, &PostParams::default(), &updated)
        .await
    {
        tracing::debug!(pod = %name, error = %e, "simulated nodes: status update (will retry on the next event)");
        return;
    }
    logs.started(pod, &node);
    // A pod that asks to exit (to exercise Jobs) does so after its run time.
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if let Some(code) = annotations
        .get(EXIT_CODE_ANNOTATION)
        .and_then(|c| c.parse::<i32>().ok())
    {
        let logs = logs.clone();
        let run_for = annotations
            .get(RUN_SECONDS_ANNOTATION)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(1.0)
            .max(0.0);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(run_for)).await;
            let Ok(Some(mut current)) = pods.get_opt(&name).await else {
                return;
            };
            if current.metadata.uid.as_deref() != Some(uid.as_str()) {
                return;
            }
            current.status = serde_json::from_value(exited_status(&current, code)).ok();
            logs.stopped(&current, &format!("exited with code {code}"));
            if let Err(e) = pods
                .replace_status(&name, &PostParams::default(), &current)
                .await
            {
                tracing::debug!(pod = %name, error = %e, "simulated nodes: reporting an exit");
            }
        });
    }
}

/// The simulated containers' log files ([`crate::logs`] layout, one start per container):
/// what the simulation did with each container, since no process writes anything.
#[derive(Debug, Clone)]
struct SimLogs(Option<PathBuf>);

impl SimLogs {
    fn dir(&self, pod: &Pod) -> Option<PathBuf> {
        let root = self.0.as_deref()?;
        let m = &pod.metadata;
        Some(crate::logs::pod_dir(
            root,
            m.namespace.as_deref()?,
            m.name.as_deref()?,
            m.uid.as_deref()?,
        ))
    }

    /// Writes `line(container)` to every container's log; `exited` closes the logs.
    fn write(
        &self,
        pod: &Pod,
        line: impl Fn(&k8s_openapi::api::core::v1::Container) -> String,
        exited: bool,
    ) {
        let Some(dir) = self.dir(pod) else { return };
        for c in pod.spec.iter().flat_map(|s| &s.containers) {
            let log = crate::logs::container_log(&dir, &c.name, 0);
            if exited && (!log.exists() || log.with_extension("exited").exists()) {
                continue;
            }
            let written = crate::logs::append(&log, "stdout", &line(c)).and_then(|()| {
                if exited {
                    crate::logs::mark_exited(&log)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = written {
                tracing::debug!(log = %log.display(), error = %e, "simulated nodes: writing a log");
            }
        }
    }

    fn started(&self, pod: &Pod, node: &str) {
        self.write(
            pod,
            |c| {
                format!(
                    "simulated container \"{}\" (image {}) started on node {node}; a simulated \
                     node runs no processes, so this log holds only what the simulation did",
                    c.name,
                    c.image.as_deref().unwrap_or("none"),
                )
            },
            false,
        );
    }

    fn stopped(&self, pod: &Pod, what: &str) {
        self.write(
            pod,
            |c| format!("simulated container \"{}\" {what}", c.name),
            true,
        );
    }

    fn remove(&self, pod: &Pod) {
        if let Some(dir) = self.dir(pod) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// The pod annotation that makes a simulated pod's containers exit with this code.
pub const EXIT_CODE_ANNOTATION: &str = "flotilla.dev/simulate-exit-code";
/// The pod annotation with the seconds a simulated pod runs before it exits (default 1).
pub const RUN_SECONDS_ANNOTATION: &str = "flotilla.dev/simulate-run-seconds";

/// The status of a pod whose containers exited with `code`: Succeeded for 0, else Failed.
pub fn exited_status(pod: &Pod, code: i32) -> serde_json::Value {
    let now = Timestamp::now().to_string();
    let mut status =
        serde_json::to_value(pod.status.clone().unwrap_or_default()).unwrap_or_else(|_| json!({}));
    status["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
    let reason = if code == 0 { "Completed" } else { "Error" };
    if let Some(cs) = status
        .get_mut("containerStatuses")
        .and_then(serde_json::Value::as_array_mut)
    {
        for c in cs {
            c["ready"] = json!(false);
            c["started"] = json!(false);
            c["state"] = json!({"terminated": {"exitCode": code, "reason": reason,
                                               "finishedAt": now}});
        }
    }
    if let Some(conds) = status
        .get_mut("conditions")
        .and_then(serde_json::Value::as_array_mut)
    {
        for c in conds {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                c["status"] = json!("False");
                c["reason"] = json!("PodCompleted");
                c["lastTransitionTime"] = json!(now);
            }
        }
    }
    status
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
