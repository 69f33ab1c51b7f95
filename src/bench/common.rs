//! Pieces every suite shares: a scratch directory, a Flotilla cluster started with
//! `flotilla up`, API clients for it, and latency summaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Throughput and latency of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The rate of `latencies.len()` operations over `elapsed`, and their p50 and p99.
pub fn summarize(mut latencies: Vec<Duration>, elapsed: Duration) -> Measured {
    latencies.sort_unstable();
    let pick = |q: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    Measured {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
    }
}

/// Set to keep a run's data and logs (its processes are stopped all the same).
pub const KEEP_ENV: &str = "FLOTILLA_BENCH_KEEP";

fn keep() -> bool {
    std::env::var_os(KEEP_ENV).is_some()
}

/// A scratch directory for one run (under `$FLOTILLA_BENCH_DIR`, default `/var/tmp`), removed
/// on drop unless `$FLOTILLA_BENCH_KEEP` is set.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(suite: &str) -> anyhow::Result<ScratchDir> {
        let root = std::env::var_os("FLOTILLA_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"))
            .join(format!("flotilla-bench-{suite}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        Ok(ScratchDir(root))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if keep() {
            eprintln!("kept {} ({KEEP_ENV} is set)", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Flotilla cluster started with `flotilla up` (three masters, no nodes), stopped with
/// `flotilla down --purge` on drop.
pub struct FlotillaCluster {
    pub dir: PathBuf,
    info: serde_json::Value,
}

impl FlotillaCluster {
    pub fn start(dir: &Path) -> anyhow::Result<FlotillaCluster> {
        FlotillaCluster::start_with(dir, &[])
    }

    /// Like [`FlotillaCluster::start`], with more `flotilla up` flags.
    pub fn start_with(dir: &Path, extra: &[&str]) -> anyhow::Result<FlotillaCluster> {
        // From here on, drop stops whatever did start.
        let mut cluster = FlotillaCluster {
            dir: dir.to_path_buf(),
            info: serde_json::Value::Null,
        };
        cluster.restart_stopped(extra)?;
        Ok(cluster)
    }

    /// `flotilla up` with the `extra` flags the cluster was started with: it starts the
    /// masters that are not running (a restarted one on its former addresses) and leaves the
    /// others alone. The pids are read again afterwards.
    pub fn restart_stopped(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        let out = Command::new(std::env::current_exe()?)
            .args(["up", "--nodes", "0", "--no-demo", "--dir"])
            .arg(&self.dir)
            .args(extra)
            .output()
            .context("running flotilla up")?;
        if !out.status.success() {
            bail!(
                "flotilla up failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.info = serde_json::from_slice(&std::fs::read(self.dir.join("cluster.json"))?)?;
        Ok(())
    }

    /// The masters' endpoints of one kind (`etcd`, `api`, …), in master order.
    pub fn endpoints(&self, kind: &str) -> Vec<String> {
        self.info["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["endpoints"][kind].as_str().map(String::from))
            .collect()
    }

    /// The certificates directory (CA, admin client certificate).
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// The pid of master `name` as `flotilla up` recorded it.
    pub fn master_pid(&self, name: &str) -> Option<u32> {
        self.info["processes"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name && p["role"] == "master")?["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
    }

    /// Waits (at most 30 s) until the masters are idle, and says how long that took.
    pub async fn settle(&self) {
        let waited = self.wait_until_idle(Duration::from_secs(30)).await;
        eprintln!("masters idle after {:.1} s", waited.as_secs_f64());
    }

    /// Waits (at most `max`) until the masters are idle — together under a tenth of a core
    /// over half a second — so that a measurement does not pay for the work its setup left
    /// behind (watch caches and controllers still digesting a burst of creates). Returns how
    /// long it waited.
    pub async fn wait_until_idle(&self, max: Duration) -> Duration {
        let start = Instant::now();
        let pids: Vec<u32> = ["m1", "m2", "m3"]
            .iter()
            .filter_map(|m| self.master_pid(m))
            .collect();
        // utime + stime in clock ticks (100 per second on Linux).
        let ticks = || -> u64 {
            pids.iter()
                .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
                .filter_map(|stat| {
                    // Fields after the command name, which is in parentheses.
                    let rest = stat.rsplit_once(')')?.1;
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
                })
                .sum()
        };
        let mut last = ticks();
        while start.elapsed() < max {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = ticks();
            if now.saturating_sub(last) < 5 {
                break;
            }
            last = now;
        }
        start.elapsed()
    }
}

impl Drop for FlotillaCluster {
    fn drop(&mut self) {
        if let Ok(exe) = std::env::current_exe() {
            let purge = if keep() { None } else { Some("--purge") };
            let _ = Command::new(exe)
                .arg("down")
                .args(purge)
                .arg("--dir")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// One `kube` client per master, with the admin identity of `DIR/admin.kubeconfig`.
pub async fn connect(cluster: &FlotillaCluster) -> anyhow::Result<Vec<kube::Client>> {
    let path = cluster.dir.join("admin.kubeconfig");
    let kc = Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut clients = Vec::new();
    for ctx in kc.contexts.iter().map(|c| c.name.clone()) {
        let opts = KubeConfigOptions {
            context: Some(ctx.clone()),
            ..Default::default()
        };
        let cfg = kube::Config::from_custom_kubeconfig(kc.clone(), &opts)
            .await
            .with_context(|| format!("kubeconfig context {ctx}"))?;
        clients.push(kube::Client::try_from(cfg)?);
    }
    if clients.is_empty() {
        bail!("{} names no master", path.display());
    }
    Ok(clients)
}

pub async fn post(
    client: &kube::Client,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let req = http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body)?)?;
    client
        .request_text(req)
        .await
        .with_context(|| format!("POST {path}"))?;
    Ok(())
}

pub async fn get(client: &kube::Client, path: &str) -> anyhow::Result<String> {
    let req = http::Request::get(path).body(Vec::new())?;
    client
        .request_text(req)
        .await
        .with_context(|| format!("GET {path}"))
}

/// An HTTP/2 connection to one master with the admin certificate. Requests share it as
/// client-go's do: one connection per master carries all of a program's watches.
#[derive(Clone)]
pub struct Http2(hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>);

impl Http2 {
    /// One connection per master, negotiated as `h2` by ALPN.
    pub async fn connect_all(cluster: &FlotillaCluster) -> anyhow::Result<Vec<Http2>> {
        let pki = cluster.pki_dir();
        let ca = std::fs::read_to_string(pki.join(flotilla_pki::CA_CERT_FILE))?;
        let admin = flotilla_pki::Identity::read(&pki, "admin")?;
        let mut tls = flotilla_pki::client_config(&ca, Some(&admin))?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let mut out = Vec::new();
        for endpoint in cluster.endpoints("api") {
            let addr = endpoint.trim_start_matches("https://").to_string();
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .with_context(|| format!("server name of {endpoint}"))?;
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .with_context(|| format!("connecting to {endpoint}"))?;
            tcp.set_nodelay(true)?;
            let stream = connector.connect(name, tcp).await?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                bail!("{endpoint} did not offer HTTP/2");
            }
            // Go's HTTP/2 transport, which client-go uses, grants the server a 1 GiB
            // connection window and 4 MiB per stream (hyper's defaults are 5 and 2 MiB): a
            // thousand watches on one connection then never wait for a window update.
            let (send, conn) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .initial_connection_window_size(1 << 30)
                    .initial_stream_window_size(4 << 20)
                    .handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .with_context(|| format!("HTTP/2 handshake with {endpoint}"))?;
            tokio::spawn(conn);
            out.push(Http2(send));
        }
        if out.is_empty() {
            bail!("the cluster lists no API endpoint");
        }
        Ok(out)
    }

    /// GETs `path` and returns its body as a stream of chunks (fails on a non-2xx answer).
    pub async fn get_stream(&self, path: &str) -> anyhow::Result<hyper::body::Incoming> {
        let req = http::Request::get(path)
            .header("accept", "application/json")
            .body(http_body_util::Empty::new())?;
        let mut send = self.0.clone();
        send.ready().await?;
        let resp = send
            .send_request(req)
            .await
            .with_context(|| format!("GET {path}"))?;
        if !resp.status().is_success() {
            bail!("GET {path}: {}", resp.status());
        }
        Ok(resp.into_body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates_come_from_the_samples() {
        let lat: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let m = summarize(lat, Duration::from_secs(2));
        assert_eq!(m.rate, 50.0);
        assert_eq!(m.p50_ms, 50.0);
        assert_eq!(m.p99_ms, 99.0);
        let empty = summarize(Vec::new(), Duration::from_secs(1));
        assert_eq!((empty.rate, empty.p99_ms), (0.0, 0.0));
    }
}
