//! The local cluster launcher: `flotilla up`, `status` and `down`.
//!
//! `up` runs every component as a separate background process (its own process group, so it
//! outlives the command and a terminal's hang-up), records each in `DIR/cluster.json`, and
//! returns once all of them report healthy. `down` stops exactly the processes recorded there,
//! after checking that each pid still runs a Flotilla process of this cluster.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use flotilla_pki::{CertRequest, ClusterCa, Usage};
use serde::{Deserialize, Serialize};

use crate::server::{endpoints_file, write_atomically, MemberEndpoints};
use crate::ClusterDir;

/// Flags of `flotilla up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub dir: ClusterDir,

    /// Number of masters (each runs a member of the replicated store and, as they land, the API
    /// server, controller manager and scheduler). Use an odd number: 3 survives one failure.
    /// Ignored when DIR holds a stopped cluster (DIR/members.json), which restarts with its own
    /// members.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=7))]
    pub masters: u16,

    /// Number of node agents. (Node agents are not available yet; any number is accepted and
    /// reported as not started.)
    #[arg(long, default_value_t = 2)]
    pub nodes: u16,

    /// Also run N simulated nodes (`flotilla agent --simulate N`, as kwok does): they take
    /// pods and report them Running without running containers.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub simulated_nodes: u16,

    /// Do not deploy the demo application.
    #[arg(long)]
    pub no_demo: bool,

    /// Raft snapshot frequency of the masters, in applied entries (see `flotilla server
    /// --snapshot-count`).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub snapshot_count: u64,

    /// Seconds a node may go without a heartbeat before it counts as unreachable (its pods
    /// are then evicted once their tolerations run out). Simulated nodes heartbeat at a
    /// quarter of this (at most every 10 s).
    #[arg(long, value_name = "SECS", default_value_t = 40,
          value_parser = clap::value_parser!(u64).range(2..))]
    pub node_monitor_grace_period: u64,

    /// Seconds between compactions of the store's history (see `flotilla server
    /// --compaction-interval`).
    #[arg(long, value_name = "SECS", default_value_t = flotilla_apiserver::compactor::DEFAULT_INTERVAL.as_secs())]
    pub compaction_interval: u64,

    /// Seconds to wait for every process to become healthy.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// Flags of `flotilla down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub dir: ClusterDir,

    /// Also delete the cluster's data, certificates and logs under DIR.
    #[arg(long)]
    pub purge: bool,
}

/// Flags of `flotilla status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub dir: ClusterDir,

    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `DIR/cluster.json`: what `up` started, for `status`, `down`, tests and people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Format version of this file.
    pub version: u32,
    /// The cluster directory (absolute).
    pub dir: PathBuf,
    /// Certificates a client needs: the CA, and an admin client certificate and key
    /// (user `admin`, group `system:masters`).
    pub pki: PkiFiles,
    /// Every process of the cluster.
    pub processes: Vec<ProcessEntry>,
}

/// Paths of the certificates `up` made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PkiFiles {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// The admin client certificate.
    pub admin_cert: PathBuf,
    /// The admin client key.
    pub admin_key: PathBuf,
}

/// One process of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessEntry {
    /// Unique name (`m1`, `m2`, …).
    pub name: String,
    /// `master` or `agent`.
    pub role: String,
    /// Process id.
    pub pid: u32,
    /// Named endpoints (`metrics`, `health`, and more as components land).
    pub endpoints: BTreeMap<String, String>,
    /// The process's data directory.
    pub data_dir: PathBuf,
    /// The process's log file.
    pub log: PathBuf,
}

fn cluster_file(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

fn read_cluster(dir: &Path) -> anyhow::Result<ClusterFile> {
    let path = cluster_file(dir);
    let bytes = fs::read(&path).with_context(|| {
        format!(
            "no cluster in {} (cannot read {}); start one with `flotilla up --dir {}`",
            dir.display(),
            path.display(),
            dir.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid", path.display()))
}

pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    fs::create_dir_all(&args.dir.dir)
        .with_context(|| format!("creating {}", args.dir.dir.display()))?;
    let dir = fs::canonicalize(&args.dir.dir)?;

    // Processes of this cluster that still run are kept; the others are (re)started, on the
    // addresses they had when those are still free.
    let mut running: BTreeMap<String, ProcessEntry> = BTreeMap::new();
    let mut previous: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    if let Ok(existing) = read_cluster(&dir) {
        let total = existing.processes.len();
        previous = existing
            .processes
            .iter()
            .map(|p| (p.name.clone(), p.endpoints.clone()))
            .collect();
        running = existing
            .processes
            .into_iter()
            .filter(|p| is_ours(p.pid, &p.data_dir))
            .map(|p| (p.name.clone(), p))
            .collect();
        if !running.is_empty() && running.len() == total {
            println!(
                "A cluster is already running in {} (all {total} processes up); nothing to do.",
                dir.display(),
            );
            println!("See it with `flotilla status --dir {}`.", dir.display());
            return Ok(ExitCode::SUCCESS);
        }
        if !running.is_empty() {
            println!(
                "{} of {total} processes of the cluster in {} are up; starting the others.",
                running.len(),
                dir.display()
            );
        }
    }

    let pki_dir = dir.join("pki");
    let ca = ClusterCa::load_or_create(&pki_dir, "flotilla-cluster-ca")
        .context("creating the cluster CA")?;
    let admin = ca
        .issue(&CertRequest::client("admin", &["system:masters"]))
        .context("issuing the admin certificate")?;
    let (admin_cert, admin_key) = admin.write(&pki_dir, "admin")?;
    // Node agents (and the node simulator) act as this user (all nodes share it). The
    // controller manager and the scheduler need none: they call their master's API in-process.
    let (file, user) = (
        flotilla_pki::NODE_CLIENT_CERT,
        flotilla_pki::NODE_CLIENT_USER,
    );
    if !pki_dir.join(format!("{file}.crt")).exists() {
        ca.issue(&CertRequest::client(user, &["system:masters"]))
            .with_context(|| format!("issuing the certificate of {user}"))?
            .write(&pki_dir, file)?;
    }
    let sa_key = pki_dir.join(flotilla_apiserver::tokens::KEY_FILE);
    if !sa_key.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&sa_key)
            .with_context(|| format!("creating {}", sa_key.display()))?;
        f.write_all(&flotilla_apiserver::tokens::generate_key())?;
    }

    // Members keep their peer addresses across restarts (the Raft membership names them), so
    // they are recorded once in DIR/members.json and reused from then on.
    let members_file = dir.join("members.json");
    let peers: Vec<(String, String)> = match fs::read(&members_file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid", members_file.display()))?,
        Err(_) => {
            let fresh = (1..=args.masters)
                .map(|i| format!("m{i}"))
                .zip(free_udp_addrs(usize::from(args.masters))?)
                .collect::<Vec<_>>();
            write_atomically(&members_file, &serde_json::to_vec_pretty(&fresh)?)?;
            fresh
        }
    };
    let initial_cluster = peers
        .iter()
        .map(|(name, addr)| format!("{name}={addr}"))
        .collect::<Vec<_>>()
        .join(",");

    let exe = std::env::current_exe().context("locating the flotilla binary")?;
    let mut processes = Vec::new();
    for (name, peer_addr) in &peers {
        if let Some(p) = running.remove(name) {
            processes.push(p);
            continue;
        }
        if !pki_dir.join(format!("{name}.crt")).exists() {
            ca.issue(&CertRequest::host(
                name,
                &["127.0.0.1".into(), "localhost".into(), name.clone()],
                Usage::Peer,
            ))
            .with_context(|| format!("issuing {name}'s certificate"))?
            .write(&pki_dir, name)?;
        }
        let data_dir = dir.join(name);
        fs::create_dir_all(&data_dir)?;
        let _ = fs::remove_file(endpoints_file(&data_dir));
        let log = data_dir.join("server.log");
        // A restarted master keeps its addresses, so that clients holding the kubeconfig or
        // the etcd endpoints of before reach it again; a fresh one (or one whose address was
        // taken meanwhile) gets free ports.
        let had = previous.get(name);
        let listen = |endpoint: &str| reusable_addr(had.and_then(|e| e.get(endpoint)));
        let pid = spawn_detached(
            Command::new(&exe)
                .arg("server")
                .args(["--name", name])
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--listen-metrics", &listen("metrics")])
                .args(["--listen-peer", peer_addr])
                .args(["--listen-client", &listen("etcd")])
                .args(["--listen-api", &listen("api")])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--snapshot-count", &args.snapshot_count.to_string()])
                .args([
                    "--node-monitor-grace-period",
                    &args.node_monitor_grace_period.to_string(),
                ])
                .args([
                    "--compaction-interval",
                    &args.compaction_interval.to_string(),
                ])
                .arg("--pki-dir")
                .arg(&pki_dir),
            &log,
        )?;
        processes.push(ProcessEntry {
            name: name.clone(),
            role: "master".into(),
            pid,
            endpoints: BTreeMap::new(),
            data_dir,
            log,
        });
    }

    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    for p in &mut processes {
        let published = wait_healthy(p, deadline)?;
        p.endpoints.insert("metrics".into(), published.metrics);
        p.endpoints.insert("health".into(), published.health);
        p.endpoints.insert("etcd".into(), published.etcd);
        p.endpoints.insert("peer".into(), published.peer);
        p.endpoints.insert("api".into(), published.api);
    }

    let cluster = ClusterFile {
        version: 1,
        dir: dir.clone(),
        pki: PkiFiles {
            ca: pki_dir.join(flotilla_pki::CA_CERT_FILE),
            admin_cert,
            admin_key,
        },
        processes,
    };
    write_atomically(&cluster_file(&dir), &serde_json::to_vec_pretty(&cluster)?)?;
    let kubeconfig = dir.join("admin.kubeconfig");
    write_atomically(&kubeconfig, admin_kubeconfig(&cluster).as_bytes())?;
    let mut cluster = cluster;
    if args.simulated_nodes > 0 {
        let sim = match running.remove(SIMULATOR) {
            Some(p) => p,
            None => start_simulator(
                &exe,
                &dir,
                args.simulated_nodes,
                (args.node_monitor_grace_period / 4).clamp(1, 10),
                deadline,
            )?,
        };
        cluster.processes.push(sim);
        write_atomically(&cluster_file(&dir), &serde_json::to_vec_pretty(&cluster)?)?;
    }

    println!("Flotilla cluster up in {}", dir.display());
    print_table(&cluster, &health_of(&cluster));
    if args.nodes > 0 {
        println!(
            "Note: node agents are not available yet ({} requested, none started).",
            args.nodes
        );
    }
    if !args.no_demo {
        println!("Note: the demo application needs node agents; it was not deployed.");
    }
    println!(
        "Next: `flotilla status --dir {0}`; stop with `flotilla down --dir {0}`.",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The name of the simulated-nodes process in `cluster.json`.
const SIMULATOR: &str = "simulated-nodes";

/// Starts `flotilla agent --simulate N` against the cluster in `dir` and waits until it has
/// registered its nodes.
fn start_simulator(
    exe: &Path,
    dir: &Path,
    nodes: u16,
    heartbeat_secs: u64,
    deadline: Instant,
) -> anyhow::Result<ProcessEntry> {
    let data_dir = dir.join(SIMULATOR);
    fs::create_dir_all(&data_dir)?;
    // The agent's endpoint (logs, exec) serves the masters on localhost with a certificate
    // from the cluster CA.
    let pki_dir = dir.join("pki");
    if !pki_dir.join(format!("{SIMULATOR}.crt")).exists() {
        let ca = ClusterCa::load(&pki_dir).context("loading the cluster CA")?;
        ca.issue(&CertRequest::host(
            SIMULATOR,
            &["localhost".into(), "127.0.0.1".into()],
            Usage::Server,
        ))
        .context("issuing the simulated nodes' endpoint certificate")?
        .write(&pki_dir, SIMULATOR)?;
    }
    let log = data_dir.join("agent.log");
    let _ = fs::remove_file(&log);
    let pid = spawn_detached(
        Command::new(exe)
            .arg("agent")
            .args(["--simulate", &nodes.to_string()])
            .args(["--heartbeat-interval", &heartbeat_secs.to_string()])
            .arg("--kubeconfig")
            .arg(dir.join("admin.kubeconfig"))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--tls-cert-file")
            .arg(pki_dir.join(format!("{SIMULATOR}.crt")))
            .arg("--tls-private-key-file")
            .arg(pki_dir.join(format!("{SIMULATOR}.key")))
            .arg("--client-ca-file")
            .arg(pki_dir.join(flotilla_pki::CA_CERT_FILE)),
        &log,
    )?;
    while !fs::read_to_string(&log).is_ok_and(|l| l.contains("simulated nodes registered")) {
        if !pid_alive(pid) || Instant::now() > deadline {
            bail!(
                "the simulated nodes did not start; the end of {}:\n{}",
                log.display(),
                tail(&log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(ProcessEntry {
        name: SIMULATOR.into(),
        role: "agent".into(),
        pid,
        endpoints: BTreeMap::new(),
        data_dir,
        log,
    })
}

fn admin_kubeconfig(cluster: &ClusterFile) -> String {
    let masters: Vec<&ProcessEntry> = cluster
        .processes
        .iter()
        .filter(|p| p.role == "master" && p.endpoints.contains_key("api"))
        .collect();
    let mut clusters = String::new();
    let mut contexts = String::new();
    for p in &masters {
        clusters.push_str(&format!(
            "- name: flotilla-{name}\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n",
            name = p.name,
            server = p.endpoints["api"],
            ca = cluster.pki.ca.display()
        ));
        contexts.push_str(&format!(
            "- name: {name}\n  context:\n    cluster: flotilla-{name}\n    user: admin\n",
            name = p.name
        ));
    }
    let current = masters.first().map_or("m1", |p| p.name.as_str());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n{clusters}contexts:\n{contexts}\
         current-context: {current}\nusers:\n- name: admin\n  user:\n    \
         client-certificate: {cert}\n    client-key: {key}\n",
        cert = cluster.pki.admin_cert.display(),
        key = cluster.pki.admin_key.display()
    )
}

/// `n` distinct free UDP ports on loopback for the members' Raft traffic. Every socket is held
/// until all are chosen: a port released at once can be handed out again by the next bind,
/// which gave two members the same address. The ports are released before the members bind
/// them; another process could take one in between, which `up` then reports as that member
/// failing to start.
fn free_udp_addrs(n: usize) -> anyhow::Result<Vec<String>> {
    let socks = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    socks
        .iter()
        .map(|s| Ok(s.local_addr()?.to_string()))
        .collect()
}

/// Starts `cmd` in its own process group with output appended to `log`; returns its pid.
fn spawn_detached(cmd: &mut Command, log: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    Ok(child.id())
}

/// The `127.0.0.1:PORT` of an endpoint URL a process had before (`https://127.0.0.1:PORT` or
/// `http://127.0.0.1:PORT/metrics`) if that port can be bound now, else `127.0.0.1:0`.
fn reusable_addr(url: Option<&String>) -> String {
    let addr = url
        .and_then(|u| u.split("://").nth(1))
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .filter(|a| a.ip().is_loopback() && a.port() != 0);
    match addr {
        Some(a) if std::net::TcpListener::bind(a).is_ok() => a.to_string(),
        _ => "127.0.0.1:0".into(),
    }
}

/// Waits until `p` has published its endpoints and answers `/healthz` with 200.
fn wait_healthy(p: &ProcessEntry, deadline: Instant) -> anyhow::Result<MemberEndpoints> {
    let file = endpoints_file(&p.data_dir);
    let mut last = String::from("not started yet");
    loop {
        if !pid_alive(p.pid) {
            bail!(
                "{} (pid {}) exited during start-up; last lines of {}:\n{}",
                p.name,
                p.pid,
                p.log.display(),
                tail(&p.log, 20)
            );
        }
        if let Ok(bytes) = fs::read(&file) {
            if let Ok(published) = serde_json::from_slice::<MemberEndpoints>(&bytes) {
                match http_get(&published.health) {
                    Ok((200, _)) => return Ok(published),
                    Ok((code, body)) => last = format!("health {code}: {}", body.trim()),
                    Err(e) => last = format!("health check failed: {e}"),
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not become healthy in time ({last}); see {}",
                p.name,
                p.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal HTTP/1.1 GET for the loopback health and metrics endpoints.
fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("unsupported URL {url}"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = host
        .parse()
        .with_context(|| format!("bad address in {url}"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("malformed response from {url}"))?;
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn pid_alive(pid: u32) -> bool {
    // A zombie has exited; its /proc entry lingers until it is reaped.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// Whether `pid` is alive and is the Flotilla process that owns `data_dir` (pids get reused).
fn is_ours(pid: u32, data_dir: &Path) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let dir = data_dir.as_os_str().as_encoded_bytes();
    args.first().is_some_and(|a| is_flotilla_program(a)) && args.contains(&dir)
}

/// Whether a command line's program is a Flotilla binary: named `flotilla`, or a copy named
/// `flotilla-<something>` (an A/B benchmark runs two builds side by side). A copy that was not
/// recognised would be neither stopped by `down` nor seen as running by `up`, which would
/// start a second process on the same data dir.
fn is_flotilla_program(arg0: &[u8]) -> bool {
    let name = arg0.rsplit(|b| *b == b'/').next().unwrap_or(arg0);
    name == b"flotilla" || name.starts_with(b"flotilla-")
}

fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Health of each process: `Some(Ok)` healthy, `Some(Err(why))` unhealthy, `None` not running.
fn health_of(cluster: &ClusterFile) -> Vec<Option<Result<(), String>>> {
    cluster
        .processes
        .iter()
        .map(|p| {
            if !is_ours(p.pid, &p.data_dir) {
                return None;
            }
            // The simulated nodes have no health endpoint: running is healthy.
            if p.role == "agent" && !p.endpoints.contains_key("health") {
                return Some(Ok(()));
            }
            Some(match p.endpoints.get("health").map(|u| http_get(u)) {
                Some(Ok((200, _))) => Ok(()),
                Some(Ok((code, body))) => Err(format!("{code} {}", body.trim())),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("no health endpoint".into()),
            })
        })
        .collect()
}

fn state_word(h: &Option<Result<(), String>>) -> String {
    match h {
        None => "stopped".into(),
        Some(Ok(())) => "healthy".into(),
        Some(Err(why)) => format!("unhealthy: {why}"),
    }
}

fn print_table(cluster: &ClusterFile, health: &[Option<Result<(), String>>]) {
    println!(
        "{:<6} {:<7} {:>8}  {:<10} {:<24} METRICS",
        "NAME", "ROLE", "PID", "STATE", "ETCD API"
    );
    for (p, h) in cluster.processes.iter().zip(health) {
        let endpoint = |k: &str| p.endpoints.get(k).map_or("-", String::as_str).to_string();
        println!(
            "{:<6} {:<7} {:>8}  {:<10} {:<24} {}",
            p.name,
            p.role,
            p.pid,
            state_word(h),
            endpoint("etcd"),
            endpoint("metrics")
        );
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let cluster = read_cluster(&args.dir.dir)?;
    let health = health_of(&cluster);
    if args.json {
        let processes: Vec<_> = cluster
            .processes
            .iter()
            .zip(&health)
            .map(|(p, h)| {
                serde_json::json!({
                    "name": p.name,
                    "role": p.role,
                    "pid": p.pid,
                    "running": h.is_some(),
                    "healthy": matches!(h, Some(Ok(()))),
                    "state": state_word(h),
                    "endpoints": p.endpoints,
                    "data_dir": p.data_dir,
                })
            })
            .collect();
        let doc = serde_json::json!({ "dir": cluster.dir, "processes": processes });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_table(&cluster, &health);
    }
    Ok(if health.iter().all(|h| matches!(h, Some(Ok(())))) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir.dir;
    if !cluster_file(dir).exists() {
        // Stopping a stopped cluster is not an error: scripts and tests may call down twice.
        println!(
            "no cluster is running in {}; nothing to stop",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let cluster = read_cluster(dir)?;
    let mut stopping = Vec::new();
    for p in &cluster.processes {
        if is_ours(p.pid, &p.data_dir) {
            signal(p.pid, "-TERM");
            stopping.push(p);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for p in &stopping {
        while is_ours(p.pid, &p.data_dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_ours(p.pid, &p.data_dir) {
            eprintln!("{} (pid {}) ignored SIGTERM; killing it", p.name, p.pid);
            signal(p.pid, "-KILL");
        }
        println!("stopped {} (pid {})", p.name, p.pid);
    }
    fs::remove_file(cluster_file(dir))?;
    if args.purge {
        for p in &cluster.processes {
            let _ = fs::remove_dir_all(&p.data_dir);
        }
        let _ = fs::remove_dir_all(dir.join("pki"));
        let _ = fs::remove_file(dir.join("members.json"));
        println!("removed the cluster's data, certificates and logs");
    }
    println!(
        "cluster in {} is down ({} process(es) stopped)",
        dir.display(),
        stopping.len()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::is_flotilla_program;

    #[test]
    fn renamed_copies_of_the_binary_are_recognised() {
        assert!(is_flotilla_program(
            b"/var/tmp/flotilla-target/debug/flotilla"
        ));
        assert!(is_flotilla_program(b"flotilla"));
        assert!(is_flotilla_program(b"/tmp/flotilla-old"));
        assert!(!is_flotilla_program(b"/usr/bin/etcd"));
        assert!(!is_flotilla_program(b"/usr/bin/notflotilla"));
    }
}
