//! The controller manager: level-triggered reconcilers, active on one master at a time.
//!
//! Every master runs [`run`]: it campaigns for the `kube-system/kube-controller-manager`
//! Lease ([`leader`], around the pure decision in [`election`]) and, while it holds it, runs
//! every controller with a client whose writes carry the Lease's fencing token, so a deposed
//! leader cannot write. Controllers today: [`serviceaccounts`], [`replicaset`],
//! [`deployment`], [`daemonset`], [`statefulset`], [`job`], [`cronjob`] (schedules parsed by
//! [`cron`]), [`endpoints`] (Endpoints and EndpointSlices), [`nodelifecycle`] (taints nodes
//! that stop heartbeating, evicts their pods), [`namespace`] (empties namespaces being
//! deleted), [`resourcequota`] (ResourceQuota status), [`disruption`]
//! (PodDisruptionBudget status, which evictions check), [`volumes`] (binds claims to
//! volumes), the HorizontalPodAutoscaler ([`autoscaler`], on the `metrics.k8s.io` PodMetrics
//! the node agents report) and the garbage collector ([`gc`]).
//! [`nodematch`] (node selectors and affinity) is shared with the scheduler. [`apiservers`]
//! runs on every master, elected or not: the `default/kubernetes` endpoints. [`events`]
//! records what the controllers do.

#![forbid(unsafe_code)]

use std::future::Future;

pub mod apiservers;
pub mod autoscaler;
pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod election;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod job;
pub mod leader;
pub mod namespace;
pub mod nodelifecycle;
pub mod nodematch;
pub mod quantity;
pub mod replicaset;
pub mod resourcequota;
pub mod revisions;
pub mod runner;
pub mod serviceaccounts;
pub mod statefulset;
pub mod volumes;

/// Settings of the controllers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    /// Node lifecycle (the grace period of node heartbeats).
    pub node_lifecycle: nodelifecycle::Settings,
}

/// The Lease the controller managers campaign for.
pub const LEASE: &str = "kube-controller-manager";

/// Whether `pod`'s `Ready` condition is `True`.
pub fn pod_is_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Runs the controller manager of master `identity` until `shutdown` completes (then releases
/// the Lease if held); see [`leader::run_elected`] for `connect`.
pub async fn run(
    connect: impl Fn(Option<&str>) -> Result<kube::Client, kube::Error>,
    identity: &str,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), kube::Error> {
    leader::run_elected(
        LEASE,
        connect,
        identity,
        shutdown,
        |lead: leader::Leadership| async move {
            // Every controller runs for the whole term; if one ends, the term ends.
            tokio::select! {
                _ = serviceaccounts::run(lead.client.clone()) => {}
                _ = replicaset::run(lead.client.clone()) => {}
                _ = replicaset::run_replication_controllers(lead.client.clone()) => {}
                _ = deployment::run(lead.client.clone()) => {}
                _ = daemonset::run(lead.client.clone()) => {}
                _ = job::run(lead.client.clone()) => {}
                _ = statefulset::run(lead.client.clone()) => {}
                _ = cronjob::run(lead.client.clone()) => {}
                _ = namespace::run(lead.client.clone()) => {}
                _ = autoscaler::run(lead.client.clone()) => {}
                _ = endpoints::run(lead.client.clone()) => {}
                _ = resourcequota::run(lead.client.clone()) => {}
                _ = disruption::run(lead.client.clone()) => {}
                _ = volumes::run(lead.client.clone()) => {}
                _ = nodelifecycle::run(lead.client.clone(), settings.node_lifecycle) => {}
                _ = gc::run(lead.client) => {}
            }
        },
    )
    .await
}
