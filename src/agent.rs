//! `flotilla agent`: a node agent. Today only simulated nodes (`--simulate N`); the agent that
//! runs containers through containerd arrives with the node-agent issue.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Flags of `flotilla agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Register N simulated nodes (as kwok does): they report capacity, renew their Leases,
    /// and mark pods bound to them Running, without running containers.
    #[arg(long, value_name = "N")]
    pub simulate: Option<usize>,

    /// Kubeconfig for the API (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Context of the kubeconfig to use (default: its current context).
    #[arg(long)]
    pub context: Option<String>,

    /// The agent's state directory (`flotilla up` passes one per agent).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// Simulated nodes are named `<prefix>-1` … `<prefix>-N`.
    #[arg(long, default_value = "sim")]
    pub prefix: String,

    /// Seconds between a simulated node's heartbeats (Lease renewals).
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_interval: u64,
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let Some(n) = args.simulate else {
        eprintln!(
            "flotilla agent: the node agent that runs containers is not available yet; it \
             arrives with the node-agent issue. `flotilla agent --simulate N` runs N simulated \
             nodes."
        );
        return Ok(ExitCode::from(2));
    };
    if n == 0 {
        anyhow::bail!("--simulate needs at least one node");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = client(&args).await?;
        let mut cfg = flotilla_agent::simulate::SimConfig::new(n);
        cfg.prefix = args.prefix.clone();
        cfg.heartbeat = std::time::Duration::from_secs(args.heartbeat_interval);
        Box::pin(flotilla_agent::simulate::run(client, cfg, async {
            let sig = flotilla_runtime::tasks::termination_signal().await;
            tracing::info!(signal = sig, "stopping the simulated nodes");
        }))
        .await
        .context("running the simulated nodes")?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn client(args: &AgentArgs) -> anyhow::Result<kube::Client> {
    let opts = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let cfg = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &opts).await?
        }
        None => kube::Config::from_kubeconfig(&opts).await.context(
            "no kubeconfig: pass --kubeconfig FILE (flotilla up writes DIR/admin.kubeconfig)",
        )?,
    };
    Ok(kube::Client::try_from(cfg)?)
}
