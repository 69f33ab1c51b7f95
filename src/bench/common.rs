//! Pieces every suite shares: a scratch directory, a Flotilla cluster started with
//! `flotilla up`, and latency summaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

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

/// A scratch directory for one run (under `$FLOTILLA_BENCH_DIR`, default `/var/tmp`), removed
/// on drop.
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
        let exe = std::env::current_exe()?;
        let out = Command::new(&exe)
            .args(["up", "--nodes", "0", "--no-demo", "--dir"])
            .arg(dir)
            .output()
            .context("running flotilla up")?;
        // From here on, drop stops whatever did start.
        let mut cluster = FlotillaCluster {
            dir: dir.to_path_buf(),
            info: serde_json::Value::Null,
        };
        if !out.status.success() {
            bail!(
                "flotilla up failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.info = serde_json::from_slice(&std::fs::read(dir.join("cluster.json"))?)?;
        Ok(cluster)
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
}

impl Drop for FlotillaCluster {
    fn drop(&mut self) {
        if let Ok(exe) = std::env::current_exe() {
            let _ = Command::new(exe)
                .args(["down", "--purge", "--dir"])
                .arg(&self.dir)
                .stdout(Stdio::null())
                .status();
        }
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
