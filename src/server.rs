//! `flotilla server`: one master process.
//!
//! A master runs its member of the replicated store (Raft over QUIC with mutual TLS, RocksDB
//! under `--data-dir`), serves the etcd v3 KV API over TLS with client certificates, and serves
//! `/metrics` and `/healthz`. The Kubernetes API, the controller manager and the scheduler join
//! it as their issues land.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use clap::Args;
use flotilla_pki::ClientAuth;
use flotilla_runtime::metrics::{self, Gauge, HealthCheck, Registry};
use flotilla_runtime::tasks::{termination_signal, Shutdown};
use flotilla_runtime::Tasks;
use flotilla_store::etcd::{self, MemberIdentity};
use flotilla_store::raft::membership::{member_id, MemberChange};
use flotilla_store::raft::network::PeerEndpoint;
use flotilla_store::raft::node::StoreNode;
use flotilla_store::raft::state_machine::StateMachine;
use flotilla_store::raft::Member;
use openraft::SnapshotPolicy;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

/// Flags of `flotilla server`, named like etcd's where they mean the same thing.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// This member's name, unique in the cluster (etcd's --name).
    #[arg(long)]
    pub name: String,

    /// Directory for this member's data: the store's RocksDB lives in DIR/store (etcd's
    /// --data-dir). Created if missing; reused on restart.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Address for Prometheus `/metrics` and `/healthz` (plain HTTP; keep it on loopback or a
    /// monitoring network). Port 0 picks a free port. The bound address is written to
    /// DIR/endpoints.json.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen_metrics: SocketAddr,

    /// UDP address for Raft traffic with the other members (QUIC, mutual TLS); must be this
    /// member's address in --initial-cluster (etcd's --listen-peer-urls).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2380")]
    pub listen_peer: SocketAddr,

    /// TCP address for the etcd v3 API (gRPC over TLS, client certificates required)
    /// (etcd's --listen-client-urls).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2379")]
    pub listen_client: SocketAddr,

    /// TCP address for the Kubernetes API (HTTPS; client certificates from the cluster CA
    /// authenticate users: CN = user, O = groups).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6443")]
    pub listen_api: SocketAddr,

    /// Every member as NAME=PEER_ADDR, comma-separated, identical on every member
    /// (etcd's --initial-cluster), e.g. m1=10.0.0.1:2380,m2=10.0.0.2:2380,m3=10.0.0.3:2380.
    /// PEER_ADDR may be written https://IP:PORT as etcd does. A member's id is derived from
    /// its peer address (and kept in DIR/member-id from the first start on).
    #[arg(long, value_name = "LIST")]
    pub initial_cluster: String,

    /// `new` forms a cluster of the --initial-cluster members; `existing` joins a running
    /// cluster that has added this member (`etcdctl member add NAME --peer-urls=https://ADDR
    /// [--learner]`) and waits to be contacted by its leader (etcd's --initial-cluster-state).
    #[arg(long, value_name = "STATE", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,

    /// Take a Raft snapshot (and drop older log entries) every N applied entries (etcd's
    /// --snapshot-count). A member that falls behind the dropped entries catches up from a
    /// snapshot.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub snapshot_count: u64,

    /// Milliseconds between the leader's heartbeats (etcd's --heartbeat-interval).
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub heartbeat_interval: u64,

    /// Election timeout in milliseconds (etcd's --election-timeout): a follower that hears no
    /// heartbeat for 1.5–2 times this campaigns to become leader. At least 5 heartbeats.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..))]
    pub election_timeout: u64,

    /// Seed this member from a backup made with `etcdctl snapshot save` (Maintenance.Snapshot)
    /// before starting. The data dir must be empty; restore every member of the new cluster
    /// from the same file.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,

    /// Seconds a node may go without a heartbeat before the controller manager counts it as
    /// unreachable (Kubernetes' --node-monitor-grace-period).
    #[arg(long, value_name = "SECS", default_value_t = 40,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub node_monitor_grace_period: u64,

    /// Seconds between compactions of the store's history (kube-apiserver's
    /// --etcd-compaction-interval): watches resume from a resourceVersion up to this old;
    /// older ones get 410 Expired and relist. 0 never compacts.
    #[arg(long, value_name = "SECS", default_value_t = flotilla_apiserver::compactor::DEFAULT_INTERVAL.as_secs())]
    pub compaction_interval: u64,

    /// Directory with the cluster CA (ca.crt) and this member's certificate and key
    /// (NAME.crt, NAME.key), valid for its peer and client addresses. `flotilla up` makes them.
    #[arg(long, value_name = "DIR")]
    pub pki_dir: PathBuf,
}

/// Parses `--initial-cluster` into Raft ids and members.
pub fn parse_initial_cluster(list: &str) -> anyhow::Result<BTreeMap<u64, Member>> {
    let mut members = BTreeMap::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (name, addr) = part
            .split_once('=')
            .with_context(|| format!("--initial-cluster entry {part:?} is not NAME=PEER_ADDR"))?;
        let bare = addr
            .strip_prefix("https://")
            .or_else(|| addr.strip_prefix("http://"))
            .unwrap_or(addr);
        let addr: SocketAddr = bare.parse().with_context(|| {
            format!("--initial-cluster entry {part:?}: {addr:?} is not an IP:PORT address")
        })?;
        if members.values().any(|m: &Member| m.name == name) {
            bail!("--initial-cluster names {name:?} twice");
        }
        let id = member_id(&addr.to_string());
        if members.contains_key(&id) {
            bail!("--initial-cluster lists the address {addr} twice");
        }
        members.insert(
            id,
            Member {
                name: name.to_string(),
                peer_addr: addr.to_string(),
                client_addr: String::new(),
            },
        );
    }
    if members.is_empty() {
        bail!("--initial-cluster is empty; list every member as NAME=PEER_ADDR");
    }
    Ok(members)
}

/// The endpoints a running member publishes in `<data dir>/endpoints.json` once it serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberEndpoints {
    /// The process id of the member.
    pub pid: u32,
    /// `http://ADDR/metrics`.
    pub metrics: String,
    /// `http://ADDR/healthz`.
    pub health: String,
    /// `https://ADDR` of the etcd v3 API.
    pub etcd: String,
    /// `ADDR` of the Raft peer transport (UDP).
    pub peer: String,
    /// `https://ADDR` of the Kubernetes API.
    #[serde(default)]
    pub api: String,
}

/// Where a member publishes its endpoints.
pub fn endpoints_file(data_dir: &Path) -> PathBuf {
    data_dir.join("endpoints.json")
}

pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("flotilla-server")
        .build()
        .context("starting the async runtime")?;
    let span = tracing::info_span!("server", member = %args.name);
    rt.block_on(serve(args).instrument(span))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let members = parse_initial_cluster(&args.initial_cluster)?;
    let (listed_id, me) = members
        .iter()
        .find(|(_, m)| m.name == args.name)
        .map(|(id, m)| (*id, m.clone()))
        .with_context(|| {
            format!(
                "--name {:?} is not in --initial-cluster {:?}",
                args.name, args.initial_cluster
            )
        })?;
    if me.peer_addr != args.listen_peer.to_string() {
        bail!(
            "--listen-peer {} differs from this member's address {} in --initial-cluster",
            args.listen_peer,
            me.peer_addr
        );
    }
    let ca_pem = std::fs::read_to_string(args.pki_dir.join(flotilla_pki::CA_CERT_FILE))
        .with_context(|| format!("reading the cluster CA in {}", args.pki_dir.display()))?;
    let tls = flotilla_pki::Identity::read(&args.pki_dir, &args.name).with_context(|| {
        format!(
            "reading this member's certificate ({0}.crt, {0}.key) in {1}",
            args.name,
            args.pki_dir.display()
        )
    })?;
    let mut api_tls = flotilla_pki::server_config(&ca_pem, &tls, ClientAuth::Optional)?;
    // Logs and exec go to node agents as the shared kubelet-client user.
    let node_client =
        match flotilla_pki::Identity::read(&args.pki_dir, flotilla_pki::NODE_CLIENT_CERT) {
            Ok(id) => Some(flotilla_apiserver::node_proxy::NodeClient::new(
                flotilla_pki::client_config(&ca_pem, Some(&id))?,
            )),
            Err(_) => {
                tracing::warn!(
                "no kubelet-client certificate in the PKI dir; pod logs and exec are unavailable"
            );
                None
            }
        };
    // HTTP/2 first, as kube-apiserver offers it: client-go then multiplexes its requests and
    // watches over one connection per master.
    api_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let api_tls = Arc::new(api_tls);
    let endpoint = PeerEndpoint::bind(
        args.listen_peer,
        flotilla_pki::server_config(&ca_pem, &tls, ClientAuth::Required)?,
        flotilla_pki::client_config(&ca_pem, Some(&tls))?,
    )?;
    let id = member_id_of(&args.data_dir, listed_id)?;
    let store_dir = args.data_dir.join("store");
    if let Some(backup) = &args.restore {
        let bytes = std::fs::read(backup)
            .with_context(|| format!("reading the backup {}", backup.display()))?;
        StateMachine::restore_backup(&store_dir.join("state"), &bytes)
            .with_context(|| format!("restoring {}", backup.display()))?;
        tracing::info!(backup = %backup.display(), "restored the store from a backup");
    }
    if args.election_timeout < 5 * args.heartbeat_interval {
        bail!(
            "--election-timeout {} ms must be at least 5 heartbeats (--heartbeat-interval {} ms)",
            args.election_timeout,
            args.heartbeat_interval
        );
    }
    let mut config = flotilla_store::raft::config(args.heartbeat_interval, args.election_timeout);
    config.snapshot_policy = SnapshotPolicy::LogsSinceLast(args.snapshot_count);
    config.max_in_snapshot_log_to_keep = args.snapshot_count.min(5_000);
    let node = StoreNode::start(id, &store_dir, config, endpoint)
        .await
        .with_context(|| format!("starting the store in {}", store_dir.display()))?;
    if args.initial_cluster_state == "new" {
        node.bootstrap(members).await?;
    } else {
        tracing::info!(id, "joining an existing cluster; waiting for its leader");
    }
    let store = node.mvcc().clone();
    let (revision, compacted) = store.revisions()?;
    tracing::info!(id, revision, compacted, dir = %store_dir.display(), "store member started");

    let registry = Registry::new();
    let revision_gauge = Gauge::<i64>::default();
    let compacted_gauge = Gauge::<i64>::default();
    let term_gauge = Gauge::<i64>::default();
    let leader_gauge = Gauge::<i64>::default();
    let applied_gauge = Gauge::<i64>::default();
    let snapshot_gauge = Gauge::<i64>::default();
    let purged_gauge = Gauge::<i64>::default();
    registry.register(
        "store_revision",
        "The store's current revision",
        revision_gauge.clone(),
    );
    registry.register(
        "store_compacted_revision",
        "The store's compacted revision",
        compacted_gauge.clone(),
    );
    registry.register("raft_term", "This member's Raft term", term_gauge.clone());
    registry.register(
        "raft_is_leader",
        "1 if this member is the Raft leader",
        leader_gauge.clone(),
    );
    registry.register(
        "raft_applied_index",
        "The last log index applied to this member's state machine",
        applied_gauge.clone(),
    );

    registry.register(
        "raft_snapshot_index",
        "The last log index covered by this member's latest snapshot (built or received)",
        snapshot_gauge.clone(),
    );
    registry.register(
        "raft_purged_index",
        "The last log index this member has dropped from its log (covered by a snapshot)",
        purged_gauge.clone(),
    );

    let listener = metrics::bind(args.listen_metrics)
        .await
        .with_context(|| format!("binding the metrics address {}", args.listen_metrics))?;
    let addr = listener.local_addr()?;
    let health_store = store.clone();
    let health_raft = node.raft().metrics();
    // Set once the initial namespaces and the kubernetes Service exist: clients that start
    // when the member is healthy find them.
    let bootstrapped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let health_bootstrapped = bootstrapped.clone();
    let health: HealthCheck = Arc::new(move || {
        health_store
            .revisions()
            .map_err(|e| format!("store unreadable: {e}"))?;
        if health_raft.borrow().current_leader.is_none() {
            return Err("no Raft leader known (is a quorum of members up?)".into());
        }
        if !health_bootstrapped.load(std::sync::atomic::Ordering::Acquire) {
            return Err("the API's initial objects are not created yet".into());
        }
        Ok(())
    });

    let tasks = Tasks::new();
    let api_metrics = registry.clone();
    tasks.spawn("metrics-endpoint", move |shutdown| {
        metrics::serve(listener, registry, health, shutdown)
    });
    let gauge_store = store.clone();
    let gauge_raft = node.raft().metrics();
    tasks.spawn("store-gauges", move |shutdown| async move {
        loop {
            match gauge_store.revisions() {
                Ok((rev, compacted)) => {
                    revision_gauge.set(rev as i64);
                    compacted_gauge.set(compacted as i64);
                }
                Err(e) => tracing::warn!(error = %e, "cannot read store revisions"),
            }
            {
                let m = gauge_raft.borrow();
                term_gauge.set(m.current_term as i64);
                leader_gauge.set(i64::from(m.current_leader == Some(m.id)));
                applied_gauge.set(m.last_applied.map_or(0, |l| l.index) as i64);
                snapshot_gauge.set(m.snapshot.map_or(0, |l| l.index) as i64);
                purged_gauge.set(m.purged.map_or(0, |l| l.index) as i64);
            }
            tokio::select! {
                _ = shutdown.wait() => return Ok::<_, std::io::Error>(()),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    });

    let client_listener = tokio::net::TcpListener::bind(args.listen_client)
        .await
        .with_context(|| format!("binding the client address {}", args.listen_client))?;
    let client_addr = client_listener.local_addr()?;
    let etcd_node = node.clone();
    let identity = MemberIdentity {
        cluster_id: 0x666c_6f74_696c_6c61, // "flotilla"
        member_id: id,
    };
    tasks.spawn("etcd-api", move |shutdown| async move {
        etcd::serve(
            etcd_node,
            identity,
            client_listener,
            &tls,
            &ca_pem,
            async move { shutdown.wait().await },
        )
        .await
    });

    let api_listener = tokio::net::TcpListener::bind(args.listen_api)
        .await
        .with_context(|| format!("binding the API address {}", args.listen_api))?;
    let api_addr = api_listener.local_addr()?;
    let tokens = match std::fs::read(args.pki_dir.join(flotilla_apiserver::tokens::KEY_FILE)) {
        Ok(key) => Some(
            flotilla_apiserver::tokens::TokenSigner::new(&key)
                .map_err(anyhow::Error::msg)
                .context("reading the service-account key")?,
        ),
        Err(_) => {
            tracing::warn!(
                "no service-account key in the PKI dir; service-account tokens are disabled"
            );
            None
        }
    };
    let api = flotilla_apiserver::http::Api::serving(node.clone(), tokens, node_client);
    api.start_caches();
    api.serve_metrics(flotilla_apiserver::http::MetricsText(std::sync::Arc::new(
        move || api_metrics.encode(),
    )));
    tasks.spawn("kubernetes-api", {
        let api = api.clone();
        move |shutdown| async move {
            flotilla_apiserver::tls::serve(
                api_listener,
                api_tls,
                flotilla_apiserver::http::router(api),
                async move { shutdown.wait().await },
            )
            .await
        }
    });
    if args.compaction_interval > 0 {
        let interval = Duration::from_secs(args.compaction_interval);
        let node = node.clone();
        tasks.spawn("compactor", move |shutdown| async move {
            flotilla_apiserver::compactor::run(
                node,
                interval,
                async move { shutdown.wait().await },
            )
            .await;
            Ok::<_, std::io::Error>(())
        });
    }
    tasks.spawn("initial-namespaces", {
        let api = api.clone();
        move |shutdown| async move {
            tokio::select! {
                _ = shutdown.wait() => return Ok::<_, std::io::Error>(()),
                _ = async {
                    flotilla_apiserver::bootstrap::initial_namespaces(&api).await;
                    flotilla_apiserver::bootstrap::kubernetes_service(&api).await;
                    flotilla_apiserver::bootstrap::priority_classes(&api).await;
                    bootstrapped.store(true, std::sync::atomic::Ordering::Release);
                } => {}
            }
            shutdown.wait().await;
            Ok(())
        }
    });

    // The controller manager and the scheduler campaign on every master. They talk to this
    // master's API in this process — the API's own router, called as a service with their
    // identities, no TLS or sockets between them — and stop (releasing their Leases) before
    // the API does.
    let controllers = Shutdown::new();
    let app = flotilla_apiserver::http::router(api.clone());
    let mut elected = Vec::new();
    // Every master (elected or not) advertises itself in default/kubernetes.
    elected.push(tokio::spawn({
        let stop = controllers.clone();
        let name = args.name.clone();
        let client = in_process_client(&app, CONTROLLER_MANAGER_USER, None);
        async move {
            match client {
                Ok(client) => {
                    flotilla_controllers::apiservers::run(client, &name, api_addr, async move {
                        stop.wait().await
                    })
                    .await
                }
                Err(e) => tracing::error!(error = %e, "the apiserver endpoints are off"),
            }
        }
    }));
    elected.push(tokio::spawn({
        let stop = controllers.clone();
        let name = args.name.clone();
        let args_grace = args.node_monitor_grace_period;
        let app = app.clone();
        async move {
            let connect =
                move |fence: Option<&str>| in_process_client(&app, CONTROLLER_MANAGER_USER, fence);
            let settings = flotilla_controllers::Settings {
                node_lifecycle: flotilla_controllers::nodelifecycle::Settings {
                    grace: Duration::from_secs(args_grace),
                },
            };
            if let Err(e) =
                flotilla_controllers::run(
                    connect,
                    &name,
                    settings,
                    async move { stop.wait().await },
                )
                .await
            {
                tracing::error!(error = %e, "the controller manager could not start");
            }
        }
    }));
    elected.push(tokio::spawn({
        let stop = controllers.clone();
        let name = args.name.clone();
        async move {
            let connect = move |fence: Option<&str>| in_process_client(&app, SCHEDULER_USER, fence);
            let stopped = async move { stop.wait().await };
            if let Err(e) =
                flotilla_scheduler::scheduler::run_elected(connect, &name, stopped).await
            {
                tracing::error!(error = %e, "the scheduler could not start");
            }
        }
    }));

    let published_as = Member {
        name: args.name.clone(),
        peer_addr: args.listen_peer.to_string(),
        client_addr: format!("https://{client_addr}"),
    };
    tasks.spawn("publish-member", {
        let node = node.clone();
        move |shutdown| async move {
            // Publishing ends once done; the task stays until shutdown (tasks that end are
            // taken as failures).
            tokio::select! {
                _ = shutdown.wait() => return Ok::<_, std::io::Error>(()),
                _ = publish(&node, id, published_as) => {}
            }
            shutdown.wait().await;
            Ok(())
        }
    });

    let endpoints = MemberEndpoints {
        pid: std::process::id(),
        metrics: format!("http://{addr}/metrics"),
        health: format!("http://{addr}/healthz"),
        etcd: format!("https://{client_addr}"),
        peer: args.listen_peer.to_string(),
        api: format!("https://{api_addr}"),
    };
    let published = endpoints_file(&args.data_dir);
    write_atomically(&published, &serde_json::to_vec_pretty(&endpoints)?)?;
    tracing::info!(metrics = %endpoints.metrics, "serving");

    let mut failure = None;
    tokio::select! {
        // A store failure often ends other tasks too (the API's watches of the store): when
        // both are ready, the failure is what this member reports and waits on.
        biased;
        why = node.failed() => {
            tracing::error!(error = %why, "the Raft core stopped; exiting so that this member can be restarted");
            failure = Some(format!("the Raft core stopped: {why}"));
        }
        sig = termination_signal() => tracing::info!(signal = sig, "shutting down"),
        _ = tasks.any_ended() => tracing::error!("an essential task ended; shutting down"),
        _ = node.removed() => {
            tracing::warn!(
                data_dir = %args.data_dir.display(),
                "this member was removed from the cluster; stopping (its data dir may be deleted)"
            );
            failure = Some("this member was removed from the cluster".to_string());
        }
    }
    let _ = std::fs::remove_file(&published);
    // A task that ended may have been the first to see the store fail (it was ready before
    // the Raft core's report): the requests in flight still get the time to hear why.
    if failure.is_none() {
        if let Some(why) = flotilla_store::first_storage_failure() {
            tracing::error!(error = %why, "the store failed; exiting so that this member can be restarted");
            failure = Some(format!("the store failed: {why}"));
        }
    }
    if failure.is_some() {
        // Requests in flight have been told why (the store ends them on a fatal error): give
        // their answers time to reach the clients before the listeners close (0.5 s was not
        // always enough on a loaded 2-core machine: a client saw the connection close instead).
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if failure.is_none() {
        // A clean stop: the store is not left without a leader (the controllers' Lease
        // releases below then go through the new one).
        node.hand_over_leadership(Duration::from_secs(2)).await;
    }
    controllers.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(3), futures::future::join_all(elected)).await;
    tasks.shutdown(Duration::from_secs(10)).await;
    node.shutdown().await;
    tracing::info!("stopped");
    if let Some(why) = failure {
        bail!(why);
    }
    Ok(())
}

/// The user the controller manager acts as (RBAC sees it in `system:masters`).
const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";

/// The user the scheduler acts as.
const SCHEDULER_USER: &str = "system:kube-scheduler";

/// A client of this master's API served in this process: requests go straight to `app` (the
/// API's router) as `user` in `system:masters`, as if that user's client certificate had
/// come over TLS, and carry `fence` (a fencing token) if given. Its User-Agent names the
/// component (`kube-controller-manager/v…`), which names its field manager.
fn in_process_client(
    app: &axum::Router,
    user: &str,
    fence: Option<&str>,
) -> Result<kube::Client, kube::Error> {
    let fence = fence
        .map(http::HeaderValue::from_str)
        .transpose()
        .map_err(|e| kube::Error::Service(Box::new(e)))?;
    let app = app
        .clone()
        .layer(axum::Extension(flotilla_apiserver::http::User {
            name: user.to_string(),
            groups: vec!["system:masters".to_string()],
        }));
    // Kubernetes names a change's field manager after the client's User-Agent.
    let agent = http::HeaderValue::from_str(&format!(
        "{}/v{}",
        user.trim_start_matches("system:"),
        env!("CARGO_PKG_VERSION")
    ))
    .map_err(|e| kube::Error::Service(Box::new(e)))?;
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut req: http::Request<kube::client::Body>| {
            req.headers_mut()
                .entry(http::header::USER_AGENT)
                .or_insert_with(|| agent.clone());
            if let Some(fence) = &fence {
                req.headers_mut().insert(
                    http::HeaderName::from_static(flotilla_apiserver::storage::FENCE_HEADER),
                    fence.clone(),
                );
            }
            req
        })
        .service(app);
    Ok(kube::Client::new(service, "default"))
}

/// This member's Raft id: the one recorded in DIR/member-id by an earlier start, else the id
/// of its --initial-cluster entry (recorded now, so that it survives address changes).
fn member_id_of(data_dir: &Path, listed: u64) -> anyhow::Result<u64> {
    let file = data_dir.join("member-id");
    match std::fs::read_to_string(&file) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a member id", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(&file, listed.to_string().as_bytes())?;
            Ok(listed)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Publishes this member's name and client URL in the cluster membership (etcd members
/// publish their attributes the same way), once it is a member and a leader is known. A
/// member added with `member add` is known only by its peer URL until then.
async fn publish(node: &StoreNode, id: u64, me: Member) {
    loop {
        let known = node.member(id);
        let leader = node.raft().metrics().borrow().current_leader;
        match known {
            Some(m) if m == me => return,
            Some(_) if leader.is_some() => {
                match node
                    .change_membership(MemberChange::Update(id, me.clone()))
                    .await
                {
                    Ok(()) => tracing::info!(client = %me.client_addr, "published this member"),
                    Err(e) => tracing::warn!(error = %e, "publishing this member failed; retrying"),
                }
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes `path` so that readers see either the old contents or the new, never a torn file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
