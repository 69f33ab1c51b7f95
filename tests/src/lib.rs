//! Helpers for end-to-end tests that start real Flotilla processes.
//!
//! [`LocalCluster`] runs `flotilla up` in a fresh directory and always runs `flotilla down
//! --purge` when dropped, so a failing test still stops every process it started.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `flotilla` binary under test: `$FLOTILLA_BIN`, else the one built next to this test
/// (`target/<profile>/flotilla`; the test command builds it first).
pub fn flotilla_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOTILLA_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/flotilla
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .join("flotilla");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --bin flotilla`) or set FLOTILLA_BIN",
        bin.display()
    );
    bin
}

/// Runs `flotilla args…` and returns its output.
pub fn flotilla(args: &[&str]) -> Output {
    Command::new(flotilla_bin())
        .args(args)
        .output()
        .expect("running flotilla")
}

/// Standard output and error of `out`, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fresh, empty directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `flotilla-e2e-<name>-<pid>`.
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("flotilla-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }

    /// Takes charge of an existing directory: it is removed on drop.
    pub fn adopt(dir: &Path) -> TempDir {
        TempDir(dir.to_path_buf())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cluster started with `flotilla up`, stopped and purged when dropped.
#[derive(Debug)]
pub struct LocalCluster {
    dir: TempDir,
}

impl LocalCluster {
    /// Runs `flotilla up --dir <fresh dir> extra…`; panics with the output if it fails.
    pub fn up(name: &str, extra: &[&str]) -> LocalCluster {
        let dir = TempDir::new(name);
        let cluster = LocalCluster { dir };
        let d = cluster.dir_str();
        let mut args = vec!["up", "--dir", d.as_str()];
        args.extend_from_slice(extra);
        let out = flotilla(&args);
        assert!(out.status.success(), "flotilla up failed: {}", show(&out));
        cluster
    }

    /// Takes charge of a cluster started in `dir` by the test itself: it is stopped, and `dir`
    /// removed, on drop.
    pub fn adopt(dir: &Path) -> LocalCluster {
        LocalCluster {
            dir: TempDir::adopt(dir),
        }
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster directory as a string argument.
    pub fn dir_str(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The `https://IP:PORT` of member `member`'s etcd API.
    pub fn etcd_endpoint(&self, member: usize) -> String {
        self.cluster_json()["processes"][member]["endpoints"]["etcd"]
            .as_str()
            .expect("the member publishes its etcd endpoint")
            .to_string()
    }

    /// Paths of the cluster CA and the admin client certificate and key, in that order.
    pub fn admin_pki(&self) -> [PathBuf; 3] {
        let info = self.cluster_json();
        ["ca", "admin_cert", "admin_key"]
            .map(|k| PathBuf::from(info["pki"][k].as_str().expect("cluster.json names the PKI")))
    }

    /// `DIR/cluster.json`, parsed.
    pub fn cluster_json(&self) -> serde_json::Value {
        let bytes = std::fs::read(self.dir().join("cluster.json")).expect("reading cluster.json");
        serde_json::from_slice(&bytes).expect("cluster.json is JSON")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let d = self.dir_str();
        if std::thread::panicking() {
            // What the processes said last, for whoever reads the failed test's output.
            if let Ok(entries) = std::fs::read_dir(self.dir()) {
                for e in entries.flatten() {
                    let log = e.path().join("server.log");
                    if let Ok(text) = std::fs::read_to_string(&log) {
                        let lines: Vec<&str> = text.lines().collect();
                        let tail = &lines[lines.len().saturating_sub(60)..];
                        eprintln!("--- last lines of {}:\n{}", log.display(), tail.join("\n"));
                    }
                }
            }
        }
        if self.dir().join("cluster.json").exists() {
            let out = flotilla(&["down", "--dir", &d, "--purge"]);
            if !out.status.success() {
                eprintln!("cleanup: flotilla down failed: {}", show(&out));
            }
        }
    }
}

/// Waits until `cond` holds, checking every 50 ms, for at most `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` exists and has not exited.
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .is_some_and(|st| st != "Z")
        })
        .unwrap_or(false)
}

/// `GET url` over plain HTTP (`/metrics`, `/healthz`): the status code and the whole response.
pub fn http_get(url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host).expect("connecting");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("reading the response");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("an HTTP status line");
    (code, out)
}

/// The value of the unlabelled metric `name` at a `/metrics` URL.
pub fn metric(url: &str, name: &str) -> Option<f64> {
    let (_, body) = http_get(url);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `etcdctl` (v3 API, the cluster's admin certificate) against `endpoint` (`https://IP:PORT`).
pub fn etcdctl_at(cluster: &LocalCluster, endpoint: &str) -> Command {
    let [ca, cert, key] = cluster.admin_pki();
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!(
            "--endpoints={}",
            endpoint.trim_start_matches("https://")
        ))
        .arg(format!("--cacert={}", ca.display()))
        .arg(format!("--cert={}", cert.display()))
        .arg(format!("--key={}", key.display()));
    cmd
}

/// `etcdctl` against master `member` (0-based).
pub fn etcdctl_command(cluster: &LocalCluster, member: usize) -> Command {
    etcdctl_at(cluster, &cluster.etcd_endpoint(member))
}

/// Runs `etcdctl args…` against master `member` (0-based).
pub fn etcdctl(cluster: &LocalCluster, member: usize, args: &[&str]) -> Output {
    etcdctl_command(cluster, member)
        .args(args)
        .output()
        .expect("etcdctl is installed by scripts/setup")
}

/// A child process killed (by its pid) and reaped when dropped.
#[derive(Debug)]
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kubectl.<version>`, installed next to the real kubectl.
pub fn kubectl_bin(version: &str) -> PathBuf {
    let real = std::fs::canonicalize(
        String::from_utf8(
            std::process::Command::new("sh")
                .args(["-c", "command -v kubectl"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim(),
    )
    .expect("kubectl is installed");
    real.parent().unwrap().join(format!("kubectl.{version}"))
}

/// Runs `kubectl.<version> --kubeconfig DIR/admin.kubeconfig args…`; panics with the output
/// unless it succeeds; returns stdout.
pub fn kubectl_ok(cluster: &LocalCluster, version: &str, args: &[&str]) -> String {
    let out = Command::new(kubectl_bin(version))
        .arg("--kubeconfig")
        .arg(cluster.dir().join("admin.kubeconfig"))
        .args(args)
        .output()
        .expect("running kubectl");
    assert!(out.status.success(), "kubectl {args:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs kubectl like [`kubectl_ok`] but expects it to fail; returns stderr.
pub fn kubectl_fails(cluster: &LocalCluster, version: &str, args: &[&str]) -> String {
    let out = Command::new(kubectl_bin(version))
        .arg("--kubeconfig")
        .arg(cluster.dir().join("admin.kubeconfig"))
        .args(args)
        .output()
        .expect("running kubectl");
    assert!(
        !out.status.success(),
        "kubectl {args:?} should fail: {}",
        show(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Panics if any running process's command line contains `marker` (a benchmark's scratch
/// directory, say): what a run started must be gone when it ends.
pub fn assert_nothing_running(marker: &str) {
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let leftovers: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(marker))
        .map(String::from)
        .collect();
    assert!(leftovers.is_empty(), "left running: {leftovers:?}");
}

/// The figure of a `flotilla bench --json` report whose metric starts with `prefix`.
pub fn bench_figure<'a>(report: &'a serde_json::Value, prefix: &str) -> &'a serde_json::Value {
    report["figures"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["metric"].as_str().unwrap_or("").starts_with(prefix))
        .unwrap_or_else(|| panic!("no figure {prefix:?} in {report}"))
}

/// The Python interpreter of the venv `scripts/setup` makes for the official client
/// (`$FLOTILLA_PYENV`, default `/var/tmp/flotilla-pyenv`); panics if it is missing.
pub fn python() -> PathBuf {
    let python = PathBuf::from(
        std::env::var("FLOTILLA_PYENV").unwrap_or_else(|_| "/var/tmp/flotilla-pyenv".into()),
    )
    .join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup (it installs the Python client)",
        python.display()
    );
    python
}

/// A kube-rs client for each master of `cluster` (contexts m1, m2, m3 of its admin
/// kubeconfig), in that order.
pub async fn kube_clients(cluster: &LocalCluster) -> Vec<kube::Client> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let kc = Kubeconfig::read_from(cluster.dir().join("admin.kubeconfig")).unwrap();
    let mut out = Vec::new();
    for m in ["m1", "m2", "m3"] {
        let opts = KubeConfigOptions {
            context: Some(m.into()),
            ..Default::default()
        };
        let cfg = kube::Config::from_custom_kubeconfig(kc.clone(), &opts)
            .await
            .unwrap();
        out.push(kube::Client::try_from(cfg).unwrap());
    }
    out
}
