//! `flotilla bench kv`: the replicated store against a 3-member etcd 3.4 on this machine.
//!
//! Both clusters run at once, each as three processes on loopback, with TLS and client
//! certificates from one CA, both syncing their logs to disk (etcd always fsyncs its WAL; the
//! store syncs its Raft log before acknowledging). One client library, `etcd-client`, drives
//! both with the same workload, and the measurements alternate between the two clusters level
//! by level so that machine noise falls on both alike:
//!
//! - puts (256-byte values over a rotating key set) with 1, 16 and 256 concurrent clients:
//!   throughput, p50 and p99 latency;
//! - linearizable gets of existing keys with 16 concurrent clients: throughput.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use flotilla_pki::{CertRequest, ClusterCa, Usage};

use super::common::{summarize, FlotillaCluster, Measured, ScratchDir};
use super::{Better, Figure, Report};

/// What one run measures.
#[derive(Debug, Clone)]
pub struct KvWorkload {
    /// Seconds per measurement.
    pub seconds: f64,
    /// Concurrent clients for the put measurements.
    pub clients: Vec<usize>,
    /// Concurrent clients for the linearizable-read measurement.
    pub read_clients: usize,
    /// Bytes per value.
    pub value_size: usize,
}

/// Distinct keys the puts rotate over (per client).
const KEYS_PER_CLIENT: usize = 100;

pub fn run(work: &KvWorkload) -> anyhow::Result<Report> {
    let scratch = ScratchDir::new("kv")?;
    let root = &scratch.0;

    eprintln!("starting a 3-master Flotilla store…");
    let flotilla = FlotillaCluster::start(&root.join("flotilla"))?;
    eprintln!("starting a 3-member etcd 3.4…");
    let pki = Pki {
        dir: flotilla.pki_dir(),
    };
    let etcd = EtcdCluster::start(&root.join("etcd"), &pki)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let tls = pki.tls()?;
        let f = connect(&flotilla.endpoints("etcd"), tls.clone()).await?;
        let e = connect(&etcd.endpoints, tls).await?;
        let mut figures = Vec::new();
        let dur = Duration::from_secs_f64(work.seconds);
        // A short warm-up on each side (connections, leader, caches).
        puts(&f, 4, work.value_size, Duration::from_millis(500)).await?;
        puts(&e, 4, work.value_size, Duration::from_millis(500)).await?;
        for &n in &work.clients {
            eprintln!("puts with {n} clients…");
            let fr = puts(&f, n, work.value_size, dur).await?;
            let er = puts(&e, n, work.value_size, dur).await?;
            figures.push(Figure::new(
                &format!("puts/s @{n} clients"),
                "ops/s",
                fr.rate,
                er.rate,
                Better::Higher,
            ));
            figures.push(Figure::new(
                &format!("put p50 @{n} clients"),
                "ms",
                fr.p50_ms,
                er.p50_ms,
                Better::Lower,
            ));
            figures.push(Figure::new(
                &format!("put p99 @{n} clients"),
                "ms",
                fr.p99_ms,
                er.p99_ms,
                Better::Lower,
            ));
        }
        eprintln!("linearizable reads with {} clients…", work.read_clients);
        let fr = reads(&f, work.read_clients, dur).await?;
        let er = reads(&e, work.read_clients, dur).await?;
        figures.push(Figure::new(
            &format!("linearizable gets/s @{} clients", work.read_clients),
            "ops/s",
            fr.rate,
            er.rate,
            Better::Higher,
        ));
        figures.push(Figure::new(
            &format!("get p99 @{} clients", work.read_clients),
            "ms",
            fr.p99_ms,
            er.p99_ms,
            Better::Lower,
        ));
        Ok(Report {
            suite: "kv".into(),
            baseline: etcd.version.clone(),
            figures,
        })
    })
}

/// Runs `clients` concurrent loops of `op` for `dur`; every operation must succeed.
async fn drive<F, Fut>(clients: usize, dur: Duration, op: F) -> anyhow::Result<Measured>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), etcd_client::Error>> + Send,
{
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                op(c, i).await?;
                lat.push(t0.elapsed());
                i += 1;
            }
            Ok::<_, etcd_client::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("a client task panicked")??);
    }
    Ok(summarize(all, start.elapsed()))
}

async fn puts(
    client: &Client,
    clients: usize,
    value_size: usize,
    dur: Duration,
) -> anyhow::Result<Measured> {
    let kv = client.kv_client();
    let value = vec![b'v'; value_size];
    drive(clients, dur, move |c, i| {
        let mut kv = kv.clone();
        let value = value.clone();
        async move {
            let key = format!("/bench/{c:03}/{:03}", i % KEYS_PER_CLIENT);
            kv.put(key, value, None).await.map(|_| ())
        }
    })
    .await
}

async fn reads(client: &Client, clients: usize, dur: Duration) -> anyhow::Result<Measured> {
    let kv = client.kv_client();
    drive(clients, dur, move |c, i| {
        let mut kv = kv.clone();
        async move {
            // Keys written by the put measurements; the default get is linearizable.
            let key = format!("/bench/{:03}/{:03}", c % 4, i % KEYS_PER_CLIENT);
            kv.get(key, None).await.map(|_| ())
        }
    })
    .await
}

async fn connect(endpoints: &[String], tls: TlsOptions) -> anyhow::Result<Client> {
    Client::connect(endpoints, Some(ConnectOptions::new().with_tls(tls)))
        .await
        .with_context(|| format!("connecting to {endpoints:?}"))
}

/// The CA both clusters use, and the admin client identity the benchmark connects with.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn tls(&self) -> anyhow::Result<TlsOptions> {
        let read = |f: &str| {
            std::fs::read(self.dir.join(f))
                .with_context(|| format!("reading {}", self.dir.join(f).display()))
        };
        Ok(TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(flotilla_pki::CA_CERT_FILE)?))
            .identity(Identity::from_pem(read("admin.crt")?, read("admin.key")?))
            .domain_name("127.0.0.1"))
    }
}

/// Three `etcd` processes (Debian's etcd-server), killed by pid on drop.
struct EtcdCluster {
    children: Vec<Child>,
    endpoints: Vec<String>,
    version: String,
}

fn free_port() -> anyhow::Result<u16> {
    // A port free for both TCP and UDP is not needed; etcd uses TCP only.
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let _ = UdpSocket::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl EtcdCluster {
    fn start(dir: &Path, pki: &Pki) -> anyhow::Result<EtcdCluster> {
        let etcd = "etcd";
        let version = Command::new(etcd)
            .arg("--version")
            .output()
            .context("running etcd --version (scripts/setup installs Debian's etcd-server)")?;
        let version = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("etcd Version: "))
            .map(|v| format!("etcd {v}"))
            .unwrap_or_else(|| "etcd".into());
        let ca = ClusterCa::load(&pki.dir).context("loading the cluster CA")?;
        std::fs::create_dir_all(dir)?;
        let names = ["e1", "e2", "e3"];
        let ports: Vec<(u16, u16)> = names
            .iter()
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let initial = names
            .iter()
            .zip(&ports)
            .map(|(n, (_, peer))| format!("{n}=https://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            children: Vec::new(),
            endpoints: Vec::new(),
            version,
        };
        for (name, (client, peer)) in names.iter().zip(&ports) {
            ca.issue(&CertRequest::host(
                name,
                &["127.0.0.1".into(), "localhost".into()],
                Usage::Peer,
            ))?
            .write(dir, name)?;
            let cert = dir.join(format!("{name}.crt"));
            let key = dir.join(format!("{name}.key"));
            let ca_file = pki.dir.join(flotilla_pki::CA_CERT_FILE);
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            let client_url = format!("https://127.0.0.1:{client}");
            let peer_url = format!("https://127.0.0.1:{peer}");
            let child = Command::new(etcd)
                .args(["--name", name])
                .arg("--data-dir")
                .arg(dir.join(format!("{name}.etcd")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "flotilla-bench"])
                // The same Raft timing as the Flotilla store.
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                .arg("--client-cert-auth")
                .arg(format!("--trusted-ca-file={}", ca_file.display()))
                .arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg("--peer-client-cert-auth")
                .arg(format!("--peer-trusted-ca-file={}", ca_file.display()))
                .arg(format!("--peer-cert-file={}", cert.display()))
                .arg(format!("--peer-key-file={}", key.display()))
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting etcd")?;
            cluster.children.push(child);
            cluster.endpoints.push(client_url);
        }
        cluster.wait_ready(dir, pki)?;
        Ok(cluster)
    }

    /// Waits until a write through the cluster succeeds.
    fn wait_ready(&mut self, dir: &Path, pki: &Pki) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for c in &mut self.children {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "etcd exited during start-up ({status}); see the logs in {}",
                        dir.display()
                    );
                }
            }
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!(
                    "--endpoints={}",
                    self.endpoints[0].trim_start_matches("https://")
                ))
                .arg(format!(
                    "--cacert={}",
                    pki.dir.join(flotilla_pki::CA_CERT_FILE).display()
                ))
                .arg(format!("--cert={}", pki.dir.join("admin.crt").display()))
                .arg(format!("--key={}", pki.dir.join("admin.key").display()))
                .args(["put", "/bench/ready", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not become ready in 30 s; see the logs in {}",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
