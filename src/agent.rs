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

    /// Where the agent's HTTPS endpoint (logs and exec, for the API servers) listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub endpoint_listen: std::net::SocketAddr,

    /// The host name (or IP) under which every master reaches the endpoint; published as the
    /// nodes' InternalDNS address. It must be in the endpoint's certificate.
    #[arg(long, default_value = "localhost")]
    pub endpoint_host: String,

    /// The endpoint's certificate (PEM, signed by the cluster CA). Without the three TLS
    /// files the agent has no endpoint, and logs and exec are unavailable.
    #[arg(long, requires_all = ["tls_private_key_file", "client_ca_file"])]
    pub tls_cert_file: Option<PathBuf>,

    /// The endpoint certificate's private key (PEM).
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,

    /// The cluster CA (PEM): the API servers' client certificate must chain to it.
    #[arg(long, requires = "tls_cert_file")]
    pub client_ca_file: Option<PathBuf>,

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
        cfg.logs = args.data_dir.as_ref().map(|d| d.join("pods"));
        let endpoint = match start_endpoint(&args, cfg.logs.clone()).await? {
            Some((port, task)) => {
                cfg.endpoint = Some((args.endpoint_host.clone(), port));
                Some(task)
            }
            None => {
                tracing::warn!(
                    "no --tls-cert-file: the agent has no endpoint, so `kubectl logs` and \
                     `kubectl exec` are unavailable for its pods"
                );
                None
            }
        };
        Box::pin(flotilla_agent::simulate::run(client, cfg, async {
            let sig = flotilla_runtime::tasks::termination_signal().await;
            tracing::info!(signal = sig, "stopping the simulated nodes");
        }))
        .await
        .context("running the simulated nodes")?;
        if let Some(task) = endpoint {
            task.abort();
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Starts the agent's HTTPS endpoint if its TLS files were given; returns its port.
async fn start_endpoint(
    args: &AgentArgs,
    logs: Option<PathBuf>,
) -> anyhow::Result<Option<(u16, tokio::task::JoinHandle<()>)>> {
    let (Some(cert), Some(key), Some(ca)) = (
        &args.tls_cert_file,
        &args.tls_private_key_file,
        &args.client_ca_file,
    ) else {
        return Ok(None);
    };
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let identity = flotilla_pki::Identity {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
    };
    let tls =
        flotilla_pki::server_config(&read(ca)?, &identity, flotilla_pki::ClientAuth::Required)
            .context("the endpoint's TLS files")?;
    let listener = tokio::net::TcpListener::bind(args.endpoint_listen)
        .await
        .with_context(|| format!("binding the agent endpoint {}", args.endpoint_listen))?;
    let port = listener.local_addr()?.port();
    tracing::info!(address = %listener.local_addr()?, host = %args.endpoint_host, "agent endpoint (logs, exec) listening");
    let endpoint = flotilla_agent::endpoint::Endpoint {
        logs: logs.unwrap_or_else(|| PathBuf::from("/nonexistent")),
        no_exec: Some("it runs on a simulated node, which runs no processes".into()),
    };
    let task = tokio::spawn(flotilla_agent::endpoint::serve(
        listener,
        std::sync::Arc::new(tls),
        endpoint,
        std::future::pending(),
    ));
    Ok(Some((port, task)))
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
    let mut cfg = cfg;
    // Kubernetes names a change's field manager after the client's User-Agent.
    cfg.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&format!("flotilla-agent/v{}", env!("CARGO_PKG_VERSION")))?,
    ));
    Ok(kube::Client::try_from(cfg)?)
}
