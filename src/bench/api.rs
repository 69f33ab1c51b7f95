//! `flotilla bench api`: the Kubernetes API server of a 3-master cluster, against the bars of
//! the API server issue (there is no kube-apiserver on this machine to run beside it; the bar
//! is the baseline column and the ratio says how far inside or outside of it we are).
//!
//! Every request is a real HTTPS request from the `kube` client with the admin certificate,
//! spread over the three masters:
//!
//! - pod creates at a fixed 500/s from 64 concurrent clients (latency measured from each
//!   request's scheduled start, so a server that falls behind shows it), then as fast as 64
//!   clients go until 10,000 pods exist;
//! - LIST of those 10,000 pods (latency to the last byte, and bytes);
//! - 1,000 watchers of one namespace's ConfigMaps and a burst of 1,000 creates there from 64
//!   clients: the time from each write's start until each watcher has its event (the bar's
//!   figure), and from the write's response until then. Twice: with the watches multiplexed
//!   on one HTTP/2 connection per master, as client-go (kubectl, controllers, informers)
//!   watches — the bar's figure — and with one HTTP/1.1 connection per watch, as kube-rs and
//!   the Python client watch.
//!
//! The fixed-rate creates and each watch burst start once the masters are idle (as in the
//! scheduler benchmark), not while they still digest the cluster's start or the previous step,
//! and the clients' connections are open before the first measured request.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;

use super::common::{connect, get, post, summarize, FlotillaCluster, Http2, ScratchDir};
use super::{Better, Figure, Report};

/// What one run measures.
#[derive(Debug, Clone)]
pub struct ApiWorkload {
    /// Seconds of the fixed-rate create measurement.
    pub seconds: f64,
    /// Concurrent creating clients.
    pub clients: usize,
    /// Target create rate of the fixed-rate measurement.
    pub rate: f64,
    /// Pods that exist for the LIST measurement.
    pub pods: usize,
    /// Concurrent watchers.
    pub watchers: usize,
    /// Changes in the watch burst.
    pub burst: usize,
    /// Concurrent clients making the burst.
    pub burst_clients: usize,
}

/// The issue's bars.
const BAR_CREATE_P99_MS: f64 = 50.0;
const BAR_LIST_MS: f64 = 300.0;
const BAR_WATCH_P99_MS: f64 = 100.0;

const PODS_NS: &str = "bench-pods";
const WATCH_NS: &str = "bench-watch";
const WATCH_NS_H1: &str = "bench-watch-h1";

pub fn run(work: &ApiWorkload) -> anyhow::Result<Report> {
    let scratch = ScratchDir::new("api")?;
    eprintln!("starting a 3-master Flotilla cluster…");
    let cluster = FlotillaCluster::start(&scratch.0.join("flotilla"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(measure(&cluster, work))
}

async fn measure(cluster: &FlotillaCluster, work: &ApiWorkload) -> anyhow::Result<Report> {
    let clients = connect(cluster).await?;
    for ns in [PODS_NS, WATCH_NS, WATCH_NS_H1] {
        let body =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        post(&clients[0], "/api/v1/namespaces", &body).await?;
    }
    let mut figures = Vec::new();
    warm_up(&clients, work.clients).await?;
    // A fresh cluster is still settling (members publishing themselves, controllers taking
    // their Leases and listing); measured from there, its first second counted as the load's.
    cluster.settle().await;

    eprintln!(
        "pod creates at {}/s from {} clients for {} s…",
        work.rate, work.clients, work.seconds
    );
    let created = Arc::new(AtomicUsize::new(0));
    let paced = creates(&clients, work, Some(work.rate), work.seconds, &created).await?;
    figures.push(Figure::new(
        &format!("pod creates/s (target {}/s)", work.rate),
        "ops/s",
        paced.rate,
        work.rate,
        Better::Higher,
    ));
    figures.push(Figure::new(
        &format!("pod create p50 @{}/s", work.rate),
        "ms",
        paced.p50_ms,
        BAR_CREATE_P99_MS,
        Better::Lower,
    ));
    figures.push(Figure::new(
        &format!("pod create p99 @{}/s", work.rate),
        "ms",
        paced.p99_ms,
        BAR_CREATE_P99_MS,
        Better::Lower,
    ));

    let remaining = work.pods.saturating_sub(created.load(Ordering::Relaxed));
    eprintln!(
        "{remaining} more pods as fast as {} clients go…",
        work.clients
    );
    let open = creates(&clients, work, None, f64::INFINITY, &created).await?;
    figures.push(Figure::new(
        &format!("pod creates/s unpaced @{} clients", work.clients),
        "ops/s",
        open.rate,
        work.rate,
        Better::Higher,
    ));
    figures.push(Figure::new(
        &format!("pod create p99 unpaced @{} clients", work.clients),
        "ms",
        open.p99_ms,
        BAR_CREATE_P99_MS,
        Better::Lower,
    ));

    eprintln!("LIST of {} pods…", work.pods);
    let mut list_lat = Vec::new();
    let mut bytes = 0;
    let path = format!("/api/v1/namespaces/{PODS_NS}/pods");
    for i in 0..9 {
        let t0 = Instant::now();
        let body = get(&clients[i % clients.len()], &path).await?;
        list_lat.push(t0.elapsed());
        let items = serde_json::from_str::<serde_json::Value>(&body)?["items"]
            .as_array()
            .map_or(0, Vec::len);
        if items < work.pods {
            bail!("LIST returned {items} pods, expected {}", work.pods);
        }
        bytes = body.len();
    }
    let list = summarize(list_lat.clone(), Duration::from_secs(1));
    let worst = list_lat.iter().max().copied().unwrap_or_default();
    figures.push(Figure::new(
        &format!("LIST {} pods p50", work.pods),
        "ms",
        list.p50_ms,
        BAR_LIST_MS,
        Better::Lower,
    ));
    figures.push(Figure::new(
        &format!("LIST {} pods max of 9", work.pods),
        "ms",
        worst.as_secs_f64() * 1000.0,
        BAR_LIST_MS,
        Better::Lower,
    ));
    figures.push(Figure::new(
        &format!("LIST {} pods size", work.pods),
        "MiB",
        bytes as f64 / (1024.0 * 1024.0),
        f64::NAN,
        Better::Lower,
    ));

    // As client-go watches (all of a program's watches on one HTTP/2 connection per master):
    // the bar's figure. Then one HTTP/1.1 connection per watch, as kube-rs and the Python
    // client watch.
    let h2 = Via::Http2(Http2::connect_all(cluster).await?);
    let h1 = Via::Http1(clients.clone());
    for (via, ns, label) in [
        (&h2, WATCH_NS, "HTTP/2 as client-go"),
        (&h1, WATCH_NS_H1, "HTTP/1.1 connection each"),
    ] {
        eprintln!(
            "{} watchers ({label}), burst of {} changes from {} clients…",
            work.watchers, work.burst, work.burst_clients
        );
        cluster.settle().await;
        let (w, after_ack, writes) = watch_burst(&clients, via, ns, work).await?;
        let what = format!("{} watchers, {label}", work.watchers);
        figures.push(Figure::new(
            &format!("watch delivery p50 ({what})"),
            "ms",
            w.p50_ms,
            BAR_WATCH_P99_MS,
            Better::Lower,
        ));
        figures.push(Figure::new(
            &format!("watch delivery p99 ({what})"),
            "ms",
            w.p99_ms,
            BAR_WATCH_P99_MS,
            Better::Lower,
        ));
        figures.push(Figure::new(
            &format!("watch delivery p99 after the write returned ({what})"),
            "ms",
            after_ack.p99_ms,
            BAR_WATCH_P99_MS,
            Better::Lower,
        ));
        figures.push(Figure::new(
            &format!("burst create p99, write start to response ({what})"),
            "ms",
            writes.p99_ms,
            f64::NAN,
            Better::Lower,
        ));
        figures.push(Figure::new(
            &format!("watch events delivered/s ({label})"),
            "events/s",
            w.rate,
            f64::NAN,
            Better::Higher,
        ));
    }
    Ok(Report {
        suite: "api".into(),
        baseline: "the API server issue's bars".into(),
        figures,
    })
}

/// Opens the connections `n` concurrent clients use, as a long-running client has them: the
/// first measured requests otherwise paid for dozens of TLS handshakes at once (up to 150 ms).
async fn warm_up(clients: &[kube::Client], n: usize) -> anyhow::Result<()> {
    for _ in 0..2 {
        let tasks: Vec<_> = (0..n)
            .map(|c| {
                let client = clients[c % clients.len()].clone();
                tokio::spawn(
                    async move { get(&client, &format!("/api/v1/namespaces/{PODS_NS}")).await },
                )
            })
            .collect();
        for t in tasks {
            t.await.context("a warm-up request panicked")??;
        }
    }
    Ok(())
}

fn pod(i: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": "bench", "shard": (i % 16).to_string()}},
        // No scheduler takes these: the suite measures the API server alone.
        "spec": {"schedulerName": "flotilla-bench-unscheduled", "containers": [{
            "name": "app",
            "image": "registry.local/bench:1",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        }]},
    })
}

/// Creates pods from `work.clients` clients until `seconds` pass or `work.pods` exist; with a
/// `rate`, each client starts its requests on a fixed schedule and latency counts from the
/// scheduled start.
async fn creates(
    clients: &[kube::Client],
    work: &ApiWorkload,
    rate: Option<f64>,
    seconds: f64,
    created: &Arc<AtomicUsize>,
) -> anyhow::Result<super::common::Measured> {
    let start = Instant::now();
    let deadline = (seconds.is_finite()).then(|| start + Duration::from_secs_f64(seconds));
    let next = Arc::new(AtomicUsize::new(created.load(Ordering::Relaxed)));
    let mut tasks = Vec::new();
    for c in 0..work.clients {
        let client = clients[c % clients.len()].clone();
        let (next, created, total, n) = (next.clone(), created.clone(), work.pods, work.clients);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let path = format!("/api/v1/namespaces/{PODS_NS}/pods");
            for k in 0.. {
                let scheduled = match rate {
                    Some(r) => start + Duration::from_secs_f64((k * n + c) as f64 / r),
                    None => Instant::now(),
                };
                if deadline.is_some_and(|d| scheduled >= d) {
                    break;
                }
                tokio::time::sleep_until(scheduled.into()).await;
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                post(&client, &path, &pod(i)).await?;
                created.fetch_add(1, Ordering::Relaxed);
                lat.push(scheduled.elapsed());
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

/// The index in `burst-<i>` of the object named in a watch event line, if any.
fn burst_index(line: &[u8]) -> Option<usize> {
    const MARK: &[u8] = b"\"name\":\"burst-";
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(MARK));
    let at = FINDER.find(line)? + MARK.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// How watchers reach the masters.
enum Via {
    /// One HTTP/1.1 connection per watch (kube-rs, the Python client).
    Http1(Vec<kube::Client>),
    /// Every watch multiplexed on one HTTP/2 connection per master (client-go).
    Http2(Vec<Http2>),
}

type Chunks = futures::stream::BoxStream<'static, anyhow::Result<bytes::Bytes>>;

impl Via {
    /// Starts watcher `w`'s request for `path`, spread over the masters.
    async fn watch(&self, w: usize, path: &str) -> anyhow::Result<Chunks> {
        use http_body_util::BodyExt;
        Ok(match self {
            Via::Http1(clients) => {
                let req = http::Request::get(path).body(kube::client::Body::from(Vec::new()))?;
                let resp = clients[w % clients.len()].send(req).await?;
                if !resp.status().is_success() {
                    bail!("GET {path}: {}", resp.status());
                }
                resp.into_body()
                    .into_data_stream()
                    .map(|c| c.map_err(anyhow::Error::from))
                    .boxed()
            }
            Via::Http2(conns) => conns[w % conns.len()]
                .get_stream(path)
                .await?
                .into_data_stream()
                .map(|c| c.map_err(anyhow::Error::from))
                .boxed(),
        })
    }
}

/// Starts the watchers, waits until all are live, creates the burst, and measures every
/// delivery from the start of its write.
async fn watch_burst(
    clients: &[kube::Client],
    via: &Via,
    ns: &str,
    work: &ApiWorkload,
) -> anyhow::Result<(
    super::common::Measured,
    super::common::Measured,
    super::common::Measured,
)> {
    let list = get(&clients[0], &format!("/api/v1/namespaces/{ns}/configmaps")).await?;
    let rv = serde_json::from_str::<serde_json::Value>(&list)?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let base = Instant::now();
    // Nanoseconds after `base` at which each burst write started (0: not yet).
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..work.burst).map(|_| AtomicU64::new(0)).collect());
    // … and at which its response arrived (u64::MAX: not yet).
    let acked: Arc<Vec<AtomicU64>> =
        Arc::new((0..work.burst).map(|_| AtomicU64::new(u64::MAX)).collect());
    let live = Arc::new(AtomicUsize::new(0));
    let mut watchers = Vec::new();
    for w in 0..work.watchers {
        let path = format!(
            "/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=600"
        );
        let mut stream = via.watch(w, &path).await?;
        let (sent, acked, live, burst) = (sent.clone(), acked.clone(), live.clone(), work.burst);
        watchers.push(tokio::spawn(async move {
            let ready = memchr::memmem::Finder::new(b"\"name\":\"ready\"");
            let mut lat = Vec::with_capacity(burst);
            let mut after_ack = Vec::with_capacity(burst);
            let mut seen = vec![false; burst];
            let mut got = 0;
            let mut counted_live = false;
            // Bytes of an event line that has not ended yet.
            let mut partial: Vec<u8> = Vec::new();
            while got < burst {
                let Some(chunk) = stream.next().await else {
                    break;
                };
                let at = base.elapsed().as_nanos() as u64;
                let chunk = chunk?;
                // The servers send whole lines, so a chunk is usually used as it came; only
                // a line split across chunks is put together in `partial`.
                let joined;
                let data: &[u8] = if partial.is_empty() {
                    &chunk
                } else {
                    partial.extend_from_slice(&chunk);
                    joined = std::mem::take(&mut partial);
                    &joined
                };
                let Some(end) = memchr::memrchr(b'\n', data) else {
                    partial.extend_from_slice(data);
                    continue;
                };
                let mut start = 0;
                for nl in memchr::memchr_iter(b'\n', &data[..=end]) {
                    let line = &data[start..nl];
                    start = nl + 1;
                    if !counted_live && ready.find(line).is_some() {
                        counted_live = true;
                        live.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let Some(i) = burst_index(line) else { continue };
                    if i >= burst || seen[i] {
                        bail!("watch event for burst-{i} twice or out of range");
                    }
                    seen[i] = true;
                    lat.push(Duration::from_nanos(
                        at.saturating_sub(sent[i].load(Ordering::Relaxed)),
                    ));
                    // Delivered before the writer heard back counts as zero.
                    after_ack.push(Duration::from_nanos(
                        at.saturating_sub(acked[i].load(Ordering::Relaxed)),
                    ));
                    got += 1;
                }
                partial.extend_from_slice(&data[end + 1..]);
            }
            Ok::<_, anyhow::Error>((lat, after_ack, got))
        }));
    }
    // The watchers are live once each has seen this object.
    let ready =
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ready"}});
    post(
        &clients[0],
        &format!("/api/v1/namespaces/{ns}/configmaps"),
        &ready,
    )
    .await?;
    let wait = Instant::now();
    while live.load(Ordering::Relaxed) < work.watchers {
        if wait.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {} of {} watchers saw the first event within 120 s",
                live.load(Ordering::Relaxed),
                work.watchers
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("all watchers live; {} creates…", work.burst);
    let burst_start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for c in 0..work.burst_clients {
        let client = clients[c % clients.len()].clone();
        let (next, sent, acked, burst) = (next.clone(), sent.clone(), acked.clone(), work.burst);
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= burst {
                    return Ok::<_, anyhow::Error>(());
                }
                let cm = serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("burst-{i}")},
                    "data": {"i": i.to_string()},
                });
                sent[i].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                post(&client, &path, &cm).await?;
                acked[i].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }));
    }
    for w in writers {
        w.await.context("a writer panicked")??;
    }
    let (mut all, mut all_after_ack) = (Vec::new(), Vec::new());
    for w in watchers {
        let result = tokio::time::timeout(Duration::from_secs(300), w)
            .await
            .context("a watcher did not get the whole burst within 300 s")?;
        let (lat, after_ack, got) = result.context("a watcher panicked")??;
        if got < work.burst {
            bail!("a watch ended after {got} of {} burst events", work.burst);
        }
        all.extend(lat);
        all_after_ack.extend(after_ack);
    }
    let elapsed = burst_start.elapsed();
    let writes = (0..work.burst)
        .map(|i| {
            let (s, a) = (
                sent[i].load(Ordering::Relaxed),
                acked[i].load(Ordering::Relaxed),
            );
            Duration::from_nanos(a.saturating_sub(s))
        })
        .collect();
    Ok((
        summarize(all, elapsed),
        summarize(all_after_ack, elapsed),
        summarize(writes, elapsed),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_names_are_found_in_event_lines() {
        let line = r#"{"type":"ADDED","object":{"metadata":{"name":"burst-42","namespace":"x"}}}"#;
        assert_eq!(burst_index(line.as_bytes()), Some(42));
        assert_eq!(burst_index(br#"{"metadata":{"name":"ready"}}"#), None);
    }
}
