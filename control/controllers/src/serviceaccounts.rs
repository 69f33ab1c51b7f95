//! The ServiceAccount controller: every namespace has a `default` ServiceAccount.
//!
//! Level-triggered: a namespace is reconciled when it appears or changes, when its `default`
//! ServiceAccount changes or goes, and every few minutes regardless. Reconciling is "if the
//! namespace is not terminating and has no `default` ServiceAccount, create it".

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

/// What the reconciler decides for one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Create the `default` ServiceAccount.
    Create,
    /// Nothing to do.
    Nothing,
}

/// The pure decision: `ns` as observed, and whether its `default` ServiceAccount exists.
pub fn plan(ns: &Namespace, has_default: bool) -> Plan {
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating || has_default {
        Plan::Nothing
    } else {
        Plan::Create
    }
}

async fn reconcile(
    ns: Arc<Namespace>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    let Some(name) = ns.metadata.name.as_deref() else {
        return Ok(Action::await_change());
    };
    let sas: Api<ServiceAccount> = Api::namespaced((*client).clone(), name);
    let has_default = sas.get_opt("default").await?.is_some();
    if plan(&ns, has_default) == Plan::Create {
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some("default".into());
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::info!(namespace = name, "created the default ServiceAccount"),
            // Created meanwhile, or the namespace is going away: the next event decides.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Runs the controller until the stream of namespaces ends.
pub async fn run(client: kube::Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let sas: Api<ServiceAccount> = Api::all(client.clone());
    Controller::new(namespaces, watcher::Config::default())
        .watches(
            sas,
            watcher::Config::default().fields("metadata.name=default"),
            |sa: ServiceAccount| {
                sa.metadata
                    .namespace
                    .map(|ns| ObjectRef::<Namespace>::new(&ns))
            },
        )
        .run(
            reconcile,
            crate::runner::retry("serviceaccount"),
            Arc::new(client),
        )
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(phase: Option<&str>) -> Namespace {
        let mut n = Namespace::default();
        n.metadata.name = Some("x".into());
        if let Some(p) = phase {
            n.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
                phase: Some(p.into()),
                ..Default::default()
            });
        }
        n
    }

    #[test]
    fn creates_the_default_account_only_where_missing_and_never_in_a_terminating_namespace() {
        assert_eq!(plan(&ns(Some("Active")), false), Plan::Create);
        assert_eq!(plan(&ns(None), false), Plan::Create);
        assert_eq!(plan(&ns(Some("Active")), true), Plan::Nothing);
        assert_eq!(plan(&ns(Some("Terminating")), false), Plan::Nothing);
    }
}
