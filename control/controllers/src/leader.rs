//! Leader election through the Kubernetes API: the loop around [`election::decide`], with
//! fencing.
//!
//! A candidate reads the Lease, decides, and writes with a compare-and-swap on its
//! `resourceVersion`. The write that makes it the holder returns the Lease's new
//! `resourceVersion`: that is its fencing token, and the work it does as leader runs with a
//! client that sends the token on every request (the API server refuses the request's writes
//! once the Lease has changed hands, see `flotilla_apiserver::storage::Fence`). So a leader that
//! was paused or cut off and wakes up after its successor took over cannot write, even before
//! it notices that it lost the Lease.
//!
//! The leader renews every `renew_every`; if it finds another holder, or cannot renew for two
//! lease durations, it stops its work and becomes a candidate again. Two, not one: when the
//! master that led the store stops, the store's own election (up to 2 s) leaves every renewal
//! failing for about a lease duration, and a leader that gave up then handed its work to
//! nobody. Waiting longer is safe because of the fencing: once another candidate takes the
//! expired Lease, this leader's writes are refused, whether it has noticed or not. On shutdown it
//! releases the Lease (no holder), so a successor takes over at once: candidates watch the
//! Lease and look again as soon as it is released, besides looking every `retry_every`.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use crate::election::{self, Decision, ElectionConfig};

/// How long a leader that released its Lease on shutdown waits for a successor to take it.
const HANDOVER_WAIT: Duration = Duration::from_secs(1);

/// Which Lease, who we are, and the timing.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease (`kube-system`).
    pub namespace: String,
    /// Name of the Lease (`kube-controller-manager`, `kube-scheduler`).
    pub name: String,
    /// This candidate's identity (the master's name).
    pub identity: String,
    /// Lease duration.
    pub election: ElectionConfig,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// How often a candidate looks again at most.
    pub retry_every: Duration,
}

impl LeaderConfig {
    /// Defaults for a failover well under 3 s: a 2 s Lease renewed every 500 ms, candidates
    /// looking every 250 ms.
    pub fn new(name: &str, identity: &str) -> LeaderConfig {
        LeaderConfig {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            election: ElectionConfig {
                lease_duration: Duration::from_secs(2),
            },
            renew_every: Duration::from_millis(500),
            retry_every: Duration::from_millis(250),
        }
    }
}

/// What the leader's work gets.
#[derive(Clone)]
pub struct Leadership {
    /// The fencing token: the Lease's resourceVersion when this holder acquired it.
    pub token: u64,
    /// A client whose requests carry the token.
    pub client: kube::Client,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// The header value that carries a fencing token for Lease `namespace/name`.
pub fn fence_header(cfg: &LeaderConfig, token: u64) -> String {
    format!("{}/{}={token}", cfg.namespace, cfg.name)
}

fn lease_object(cfg: &LeaderConfig, spec: LeaseSpec, rv: Option<String>) -> Lease {
    let mut lease = Lease {
        spec: Some(spec),
        ..Default::default()
    };
    lease.metadata.name = Some(cfg.name.clone());
    lease.metadata.namespace = Some(cfg.namespace.clone());
    lease.metadata.resource_version = rv;
    lease
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn rv_of(lease: &Lease) -> u64 {
    lease
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Writes `spec` over the Lease as read at `rv` (or creates it); the new resourceVersion, or
/// `None` if someone else wrote first.
async fn write(
    leases: &Api<Lease>,
    cfg: &LeaderConfig,
    spec: LeaseSpec,
    rv: Option<String>,
) -> Result<Option<u64>, kube::Error> {
    let pp = PostParams::default();
    let result = match rv {
        Some(rv) => {
            leases
                .replace(&cfg.name, &pp, &lease_object(cfg, spec, Some(rv)))
                .await
        }
        None => leases.create(&pp, &lease_object(cfg, spec, None)).await,
    };
    match result {
        Ok(l) => Ok(Some(rv_of(&l))),
        Err(e) if is_conflict(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One candidate round: `Ok(token)` if this candidate now holds the Lease, else how long to
/// wait before the next look.
async fn try_acquire(leases: &Api<Lease>, cfg: &LeaderConfig) -> Result<u64, Duration> {
    let current = match leases.get_opt(&cfg.name).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(lease = %cfg.name, error = %e, "leader election: reading the Lease failed");
            return Err(cfg.retry_every);
        }
    };
    let rv = current
        .as_ref()
        .and_then(|l| l.metadata.resource_version.clone());
    let spec = current.as_ref().and_then(|l| l.spec.clone());
    match election::decide(
        spec.as_ref(),
        &cfg.identity,
        Timestamp::now(),
        &cfg.election,
    ) {
        Decision::Acquire(spec) => match write(leases, cfg, spec, rv).await {
            Ok(Some(token)) => Ok(token),
            _ => Err(cfg.retry_every),
        },
        Decision::Renew(spec) => {
            // Held under our name by an earlier run of this candidate, whose token we do not
            // know: release it, so the next round acquires with a fresh token.
            if let Some(released) = election::release(&spec, &cfg.identity) {
                let _ = write(leases, cfg, released, rv).await;
            }
            Err(Duration::ZERO)
        }
        Decision::Wait { remaining, .. } => Err(remaining.min(cfg.retry_every)),
    }
}

/// Why a leader stopped leading.
enum Lost {
    Shutdown,
    WorkEnded,
    Taken(String),
    Unrenewed,
}

/// Runs `work` while this candidate holds the Lease, for as long as `shutdown` has not
/// completed: campaigns, starts `work` with a fenced client when elected, renews, stops `work`
/// when the Lease is lost and campaigns again. `fenced` makes the client for a token.
pub async fn run<W, Fut>(
    client: kube::Client,
    fenced: impl Fn(u64) -> Result<kube::Client, kube::Error>,
    cfg: LeaderConfig,
    shutdown: impl Future<Output = ()>,
    mut work: W,
) where
    W: FnMut(Leadership) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let leases: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    tokio::pin!(shutdown);
    // A released Lease wakes a waiting candidate at once, not at its next look.
    let released = std::sync::Arc::new(tokio::sync::Notify::new());
    let _watch = AbortOnDrop(tokio::spawn(watch_releases(
        leases.clone(),
        cfg.name.clone(),
        released.clone(),
    )));
    loop {
        let token = loop {
            let attempt =
                tokio::time::timeout(cfg.election.lease_duration, try_acquire(&leases, &cfg));
            let wait = match attempt.await {
                Ok(Ok(token)) => break token,
                Ok(Err(wait)) => wait,
                Err(_) => cfg.retry_every,
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => {}
                _ = released.notified() => {}
            }
        };
        let client = match fenced(token) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "leader election: cannot build the fenced client");
                return;
            }
        };
        tracing::info!(lease = %cfg.name, identity = %cfg.identity, token, "leader election: acquired the Lease; starting");
        let mut task = tokio::spawn(work(Leadership { token, client }));
        let mut renewed = tokio::time::Instant::now();
        let lost = loop {
            tokio::select! {
                _ = &mut shutdown => break Lost::Shutdown,
                _ = &mut task => {
                    // The work ended on its own: give the Lease to someone else.
                    tracing::warn!(lease = %cfg.name, "leader election: the leader's work ended; stepping down");
                    break Lost::WorkEnded;
                }
                _ = tokio::time::sleep(cfg.renew_every) => {}
            }
            // A renewal that hangs (the API waiting for its store) must not keep a leader
            // leading past its Lease: each attempt is bounded.
            let attempt = tokio::time::timeout(cfg.renew_every * 2, renew(&leases, &cfg));
            let outcome = attempt
                .await
                .unwrap_or_else(|_| Renewal::Failed("no answer in time".into()));
            match outcome {
                Renewal::Renewed => renewed = tokio::time::Instant::now(),
                Renewal::Taken(holder) => break Lost::Taken(holder),
                Renewal::Failed(why) => {
                    tracing::warn!(lease = %cfg.name, %why, "leader election: renewal failed");
                    if renewed.elapsed() >= cfg.election.lease_duration * 2 {
                        break Lost::Unrenewed;
                    }
                }
            }
        };
        task.abort();
        let _ = task.await;
        match lost {
            Lost::Shutdown => {
                release(&leases, &cfg).await;
                tracing::info!(lease = %cfg.name, "leader election: released the Lease");
                // Stay (with this master's store and API) until a successor holds it, for a
                // second at most: if this master also leads the store, the successor's write
                // then needs no store election first.
                let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
                while tokio::time::Instant::now() < deadline {
                    let h = match leases.get_opt(&cfg.name).await {
                        Ok(Some(l)) => l.spec.and_then(|s| s.holder_identity),
                        _ => None,
                    };
                    if h.is_some_and(|h| !h.is_empty() && h != cfg.identity) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                return;
            }
            Lost::WorkEnded => {
                // Let another master try; campaign again after a pause.
                release(&leases, &cfg).await;
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(cfg.election.lease_duration) => {}
                }
            }
            Lost::Taken(holder) => {
                tracing::warn!(lease = %cfg.name, %holder, "leader election: the Lease was taken; stopped")
            }
            Lost::Unrenewed => tracing::warn!(
                lease = %cfg.name,
                "leader election: could not renew for two lease durations; stopped"
            ),
        }
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches Lease `name` and signals `released` whenever it has no holder or is deleted
/// (a leader that stops cleanly releases it; its successor need not wait for its next look).
/// The watcher re-lists and resumes by itself across API errors and master failovers.
async fn watch_releases(
    leases: Api<Lease>,
    name: String,
    released: std::sync::Arc<tokio::sync::Notify>,
) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(leases, config).boxed();
    while let Some(e) = events.next().await {
        let free = match e {
            Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) => l
                .spec
                .and_then(|s| s.holder_identity)
                .is_none_or(|h| h.is_empty()),
            Ok(watcher::Event::Delete(_)) => true,
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(lease = %name, error = %e, "leader election: Lease watch");
                // The watcher retries at once; do not spin against an API that is down.
                tokio::time::sleep(Duration::from_millis(200)).await;
                false
            }
        };
        if free {
            released.notify_one();
        }
    }
}

enum Renewal {
    Renewed,
    /// Someone else holds the Lease.
    Taken(String),
    /// Not renewed this time (API unavailable, a concurrent write).
    Failed(String),
}

async fn renew(leases: &Api<Lease>, cfg: &LeaderConfig) -> Renewal {
    let current = match leases.get(&cfg.name).await {
        Ok(c) => c,
        Err(e) => return Renewal::Failed(e.to_string()),
    };
    let spec = current.spec.clone();
    let holder = spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    if holder != cfg.identity {
        return Renewal::Taken(holder);
    }
    match election::decide(
        spec.as_ref(),
        &cfg.identity,
        Timestamp::now(),
        &cfg.election,
    ) {
        Decision::Renew(spec) => {
            match write(leases, cfg, spec, current.metadata.resource_version).await {
                Ok(Some(_)) => Renewal::Renewed,
                Ok(None) => Renewal::Failed("the Lease changed while renewing".into()),
                Err(e) => Renewal::Failed(e.to_string()),
            }
        }
        _ => Renewal::Taken(holder),
    }
}

/// Gives the Lease up (no holder), if this candidate still holds it.
async fn release(leases: &Api<Lease>, cfg: &LeaderConfig) {
    let Ok(current) = leases.get(&cfg.name).await else {
        return;
    };
    let Some(released) = current
        .spec
        .as_ref()
        .and_then(|s| election::release(s, &cfg.identity))
    else {
        return;
    };
    let _ = write(leases, cfg, released, current.metadata.resource_version).await;
}

/// Campaigns for Lease `kube-system/<lease>` as `identity` and runs `work` with a fenced
/// client while holding it, until `shutdown` completes. `connect(fence)` makes an API client;
/// with `Some(header)`, one whose requests carry that fencing header.
pub async fn run_elected<W, Fut>(
    lease: &str,
    connect: impl Fn(Option<&str>) -> Result<kube::Client, kube::Error>,
    identity: &str,
    shutdown: impl Future<Output = ()>,
    work: W,
) -> Result<(), kube::Error>
where
    W: FnMut(Leadership) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cfg = LeaderConfig::new(lease, identity);
    let client = connect(None)?;
    let for_header = cfg.clone();
    run(
        client,
        |token| connect(Some(&fence_header(&for_header, token))),
        cfg,
        shutdown,
        work,
    )
    .await;
    Ok(())
}
