//! `flotilla bench scheduler`: the scheduler of a 3-master cluster against the controllers
//! issue's bar (≥ 2,000 pods/s; kube-scheduler's own CI floor at 5,000 nodes is 680–810).
//!
//! As in Kubernetes' scheduler_perf: 5,000 Node objects (with capacity, no kubelets — the
//! node controller's grace period is set past the run so they stay schedulable) and 10,000
//! pending pods are created while the scheduler is held back — the benchmark holds the
//! `kube-system/kube-scheduler` Lease itself, which every master's scheduler respects. Then
//! it releases the Lease: one master's scheduler acquires it, lists, and binds. Throughput is
//! counted from the release to the last bind seen on a watch (each bind is a Raft write like
//! any other). The creates/s of the pods are reported too, and then the failover time of the
//! scheduler's and the controller manager's leadership after a SIGKILL of their master.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{AsyncBufReadExt, StreamExt};

use super::common::{connect, get, post, summarize, FlotillaCluster, ScratchDir};
use super::{Better, Figure, Report};

/// What one run measures.
#[derive(Debug, Clone)]
pub struct SchedulerWorkload {
    /// Node objects.
    pub nodes: usize,
    /// Pending pods.
    pub pods: usize,
    /// Concurrent clients creating nodes and pods.
    pub clients: usize,
}

const BAR_PODS_PER_SEC: f64 = 2000.0;
const BAR_FAILOVER_S: f64 = 3.0;
const NS: &str = "bench-sched";
const HOLDER: &str = "flotilla-bench";

/// `flotilla up` flags of the benchmark's cluster: Node objects without kubelets send no
/// heartbeats, so the node controller must not give up on them during the run.
const UP_FLAGS: &[&str] = &["--node-monitor-grace-period", "86400"];

pub fn run(work: &SchedulerWorkload) -> anyhow::Result<Report> {
    let scratch = ScratchDir::new("scheduler")?;
    eprintln!("starting a 3-master Flotilla cluster…");
    let mut cluster = FlotillaCluster::start_with(&scratch.0.join("flotilla"), UP_FLAGS)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(measure(&mut cluster, work))
}

fn lease_path(name: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{name}")
}

/// Writes the scheduler Lease with `holder` (None: released), retrying on conflicts.
async fn set_scheduler_lease(client: &kube::Client, holder: Option<&str>) -> anyhow::Result<()> {
    for _ in 0..50 {
        let mut lease: serde_json::Value =
            serde_json::from_str(&get(client, &lease_path("kube-scheduler")).await?)?;
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let transitions = lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
        lease["spec"] = match holder {
            Some(h) => serde_json::json!({"holderIdentity": h, "leaseDurationSeconds": 86400,
                "acquireTime": now, "renewTime": now, "leaseTransitions": transitions + 1}),
            None => {
                serde_json::json!({"leaseDurationSeconds": 15, "leaseTransitions": transitions})
            }
        };
        let req = http::Request::put(lease_path("kube-scheduler"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&lease)?)?;
        match client.request_text(req).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).context("writing the kube-scheduler Lease"),
        }
    }
    bail!("the kube-scheduler Lease kept changing under the benchmark")
}

async fn lease_holder(client: &kube::Client, name: &str) -> Option<String> {
    let body = get(client, &lease_path(name)).await.ok()?;
    let lease: serde_json::Value = serde_json::from_str(&body).ok()?;
    lease["spec"]["holderIdentity"].as_str().map(String::from)
}

/// Runs `n` requests from `clients` concurrent tasks; `make(i)` gives the path and body of
/// request `i`. Returns the rate and latencies.
async fn post_all(
    clients: &[kube::Client],
    concurrency: usize,
    n: usize,
    make: impl Fn(usize) -> (String, serde_json::Value) + Send + Sync + Clone + 'static,
) -> anyhow::Result<super::common::Measured> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let client = clients[c % clients.len()].clone();
        let (next, make) = (next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (path, body) = make(i);
                let t0 = Instant::now();
                post(&client, &path, &body).await?;
                lat.push(t0.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("a client task panicked")??);
    }
    Ok(summarize(all, start.elapsed()))
}

fn node(i: usize) -> serde_json::Value {
    let name = format!("bench-node-{i:05}");
    serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                     "kubernetes.io/os": "linux", "node.flotilla.dev/bench": "true"}},
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": k8s_openapi::jiff::Timestamp::now().to_string()}],
        },
    })
}

fn pod(i: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": "bench-sched"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/bench:1",
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
    })
}

async fn measure(
    cluster: &mut FlotillaCluster,
    work: &SchedulerWorkload,
) -> anyhow::Result<Report> {
    let clients = connect(cluster).await?;
    let mut figures = Vec::new();

    // Hold the scheduler back: the benchmark takes the Lease (the holder change fences
    // whichever master's scheduler had it).
    let wait = Instant::now();
    while lease_holder(&clients[0], "kube-scheduler").await.is_none() {
        if wait.elapsed() > Duration::from_secs(30) {
            bail!("no scheduler took the kube-scheduler Lease within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    set_scheduler_lease(&clients[0], Some(HOLDER)).await?;
    eprintln!("scheduler held back; creating {} nodes…", work.nodes);
    let nodes = post_all(&clients, work.clients, work.nodes, |i| {
        ("/api/v1/nodes".to_string(), node(i))
    })
    .await?;
    // A create keeps no status: set it through the status subresource.
    let status_start = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..work.clients {
        let client = clients[c % clients.len()].clone();
        let (next, n) = (next.clone(), work.nodes);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let body = node(i);
                let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
                let patch = serde_json::json!({"status": body["status"]});
                let req = http::Request::patch(format!("/api/v1/nodes/{name}/status"))
                    .header("content-type", "application/merge-patch+json")
                    .body(serde_json::to_vec(&patch)?)?;
                client
                    .request_text(req)
                    .await
                    .with_context(|| format!("status of {name}"))?;
            }
        }));
    }
    for t in tasks {
        t.await.context("a client task panicked")??;
    }
    eprintln!(
        "{} nodes created ({:.0}/s), their status set in {:.1} s",
        work.nodes,
        nodes.rate,
        status_start.elapsed().as_secs_f64()
    );

    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}});
    post(&clients[0], "/api/v1/namespaces", &ns).await?;
    eprintln!("creating {} pending pods…", work.pods);
    let created = post_all(&clients, work.clients, work.pods, |i| {
        (format!("/api/v1/namespaces/{NS}/pods"), pod(i))
    })
    .await?;
    figures.push(Figure::new(
        &format!("pod creates/s @{} clients", work.clients),
        "pods/s",
        created.rate,
        f64::NAN,
        Better::Higher,
    ));

    // Release the scheduler onto a quiet cluster, as scheduler_perf starts its scheduler
    // after the setup: the masters' caches and controllers finish with the creates first.
    cluster.settle().await;

    // Watch the pods from now on; count each pod's first bind.
    let list: serde_json::Value = serde_json::from_str(
        &get(
            &clients[1 % clients.len()],
            &format!("/api/v1/namespaces/{NS}/pods?limit=1"),
        )
        .await?,
    )?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let watcher = {
        let client = clients[1 % clients.len()].clone();
        let total = work.pods;
        tokio::spawn(async move {
            let path = format!(
                "/api/v1/namespaces/{NS}/pods?watch=true&resourceVersion={rv}&timeoutSeconds=900"
            );
            let req = http::Request::get(&path).body(Vec::new())?;
            let mut lines = Box::pin(client.request_stream(req).await?).lines();
            let mut bound = HashSet::new();
            let mut first = None;
            while let Some(line) = lines.next().await {
                let line = line?;
                let event: serde_json::Value = match serde_json::from_str(&line) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let obj = &event["object"];
                if obj["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
                {
                    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
                    if bound.insert(name) {
                        first.get_or_insert_with(Instant::now);
                        if bound.len() == total {
                            return Ok::<_, anyhow::Error>((first, Instant::now()));
                        }
                    }
                }
            }
            bail!("the watch ended after {} of {total} binds", bound.len())
        })
    };
    // Let the watch start before the release.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("releasing the scheduler…");
    let released = Instant::now();
    set_scheduler_lease(&clients[0], None).await?;
    let (first, last) = tokio::time::timeout(Duration::from_secs(900), watcher)
        .await
        .context("the pods were not all bound within 900 s")?
        .context("the watch task panicked")??;
    let took = last.duration_since(released).as_secs_f64();
    let throughput = work.pods as f64 / took;
    eprintln!(
        "{} pods bound in {took:.2} s ({throughput:.0} pods/s); first bind after {:.2} s",
        work.pods,
        first.map_or(0.0, |f| f.duration_since(released).as_secs_f64())
    );
    figures.push(Figure::new(
        &format!(
            "scheduling throughput, {} pods on {} nodes",
            work.pods, work.nodes
        ),
        "pods/s",
        throughput,
        BAR_PODS_PER_SEC,
        Better::Higher,
    ));
    figures.push(Figure::new(
        "release to first bind",
        "s",
        first.map_or(f64::NAN, |f| f.duration_since(released).as_secs_f64()),
        f64::NAN,
        Better::Lower,
    ));

    // Failover: SIGKILL the master leading each, time until another master holds the Lease.
    // Each measurement starts from a whole cluster: every master answers, the one killed
    // before included (restarted on its former address).
    for lease in ["kube-scheduler", "kube-controller-manager"] {
        wait_all_answer(&clients, lease).await?;
        let holder = wait_for_holder(&clients, lease, None).await?;
        let Some(pid) = cluster.master_pid(&holder) else {
            bail!("the {lease} Lease is held by {holder:?}, which is not a master");
        };
        let killed = Instant::now();
        let killed_at = k8s_openapi::jiff::Timestamp::now();
        let out = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .output()?;
        if !out.status.success() {
            bail!("kill -KILL {pid} failed");
        }
        let successor = wait_for_holder(&clients, lease, Some(&holder)).await?;
        let took = killed.elapsed().as_secs_f64();
        eprintln!("{lease}: {holder} killed at {killed_at}; {successor} leads after {took:.2} s");
        figures.push(Figure::new(
            &format!("{lease} failover after SIGKILL"),
            "s",
            took,
            BAR_FAILOVER_S,
            Better::Lower,
        ));
        cluster.restart_stopped(UP_FLAGS)?;
    }

    Ok(Report {
        suite: "scheduler".into(),
        baseline: "the controllers issue's bars".into(),
        figures,
    })
}

/// Waits (at most 60 s) until every master answers a read of `lease` within 500 ms: a
/// restarted master serves again and its store has caught up with the leader's.
async fn wait_all_answer(clients: &[kube::Client], lease: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    let path = lease_path(lease);
    for (i, c) in clients.iter().enumerate() {
        loop {
            let read = tokio::time::timeout(Duration::from_millis(500), get(c, &path));
            if let Ok(Ok(_)) = read.await {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "master {} did not answer for the {lease} Lease within 60 s",
                    i + 1
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The holder of `lease`, once it is a master other than `not` (polling every master that
/// answers, every 20 ms, for up to 60 s).
async fn wait_for_holder(
    clients: &[kube::Client],
    lease: &str,
    not: Option<&str>,
) -> anyhow::Result<String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        for c in clients {
            if let Ok(Some(h)) =
                tokio::time::timeout(Duration::from_millis(500), lease_holder(c, lease)).await
            {
                if h != HOLDER && Some(h.as_str()) != not {
                    return Ok(h);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no master took the {lease} Lease within 60 s")
}
