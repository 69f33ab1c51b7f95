//! `flotilla server`: one master process.
//!
//! Today a master opens its store (RocksDB under `--data-dir`) and serves `/metrics` and
//! `/healthz`. Raft replication, the etcd API, the Kubernetes API, the controller manager and the
//! scheduler join it as their issues land; `flotilla up` and the tests already run it as a
//! separate process per master.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use flotilla_runtime::metrics::{self, Gauge, HealthCheck, Registry};
use flotilla_runtime::tasks::termination_signal;
use flotilla_runtime::Tasks;
use flotilla_store::{Mvcc, MvccOptions};
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
    let store_dir = args.data_dir.join("store");
    let store = Arc::new(
        Mvcc::open(&store_dir, MvccOptions::default())
            .with_context(|| format!("opening the store in {}", store_dir.display()))?,
    );
    let (revision, compacted) = store.revisions()?;
    tracing::info!(revision, compacted, dir = %store_dir.display(), "store opened");

    let registry = Registry::new();
    let revision_gauge = Gauge::<i64>::default();
    let compacted_gauge = Gauge::<i64>::default();
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

    let listener = metrics::bind(args.listen_metrics)
        .await
        .with_context(|| format!("binding the metrics address {}", args.listen_metrics))?;
    let addr = listener.local_addr()?;
    let health_store = store.clone();
    let health: HealthCheck = Arc::new(move || {
        health_store
            .revisions()
            .map(|_| ())
            .map_err(|e| format!("store unreadable: {e}"))
    });

    let tasks = Tasks::new();
    tasks.spawn("metrics-endpoint", move |shutdown| {
        metrics::serve(listener, registry, health, shutdown)
    });
    let gauge_store = store.clone();
    tasks.spawn("store-gauges", move |shutdown| async move {
        loop {
            match gauge_store.revisions() {
                Ok((rev, compacted)) => {
                    revision_gauge.set(rev as i64);
                    compacted_gauge.set(compacted as i64);
                }
                Err(e) => tracing::warn!(error = %e, "cannot read store revisions"),
            }
            tokio::select! {
                _ = shutdown.wait() => return Ok::<_, std::io::Error>(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });

    let endpoints = MemberEndpoints {
        pid: std::process::id(),
        metrics: format!("http://{addr}/metrics"),
        health: format!("http://{addr}/healthz"),
    };
    let published = endpoints_file(&args.data_dir);
    write_atomically(&published, &serde_json::to_vec_pretty(&endpoints)?)?;
    tracing::info!(metrics = %endpoints.metrics, "serving");

    tokio::select! {
        sig = termination_signal() => tracing::info!(signal = sig, "shutting down"),
        _ = tasks.any_ended() => tracing::error!("an essential task ended; shutting down"),
    }
    let _ = std::fs::remove_file(&published);
    tasks.shutdown(Duration::from_secs(10)).await;
    tracing::info!("stopped");
    Ok(())
}

/// Writes `path` so that readers see either the old contents or the new, never a torn file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
