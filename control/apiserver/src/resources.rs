//! The built-in resources the API server serves: group, version, kind, plural and scope, as
//! discovery announces them and as requests name them.

/// One resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural name, used in URLs and store keys.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names kubectl accepts (`po`, `svc`, …).
    pub short_names: &'static [&'static str],
}

impl Resource {
    /// `v1` or `group/version`, as objects carry it in `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The name of the resource in store keys: the plural, except where another group has
    /// the same plural (the metrics API's `nodes` and `pods`).
    pub fn store_plural(&self) -> &'static str {
        match (self.group, self.plural) {
            ("metrics.k8s.io", "nodes") => "nodes.metrics.k8s.io",
            ("metrics.k8s.io", "pods") => "pods.metrics.k8s.io",
            _ => self.plural,
        }
    }

    /// Whether the resource has a `scale` subresource.
    pub fn has_scale(&self) -> bool {
        matches!(
            self.kind,
            "Deployment" | "ReplicaSet" | "StatefulSet" | "ReplicationController"
        )
    }

    /// Whether `kubectl get all` lists the resource (Kubernetes' `all` category).
    pub fn in_all_category(&self) -> bool {
        matches!(
            self.kind,
            "Pod"
                | "Service"
                | "Deployment"
                | "ReplicaSet"
                | "ReplicationController"
                | "StatefulSet"
                | "DaemonSet"
                | "Job"
                | "CronJob"
                | "HorizontalPodAutoscaler"
        )
    }

    /// The URL prefix of the resource's group version (`/api/v1`, `/apis/apps/v1`).
    pub fn group_version_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

const fn r(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> Resource {
    Resource {
        group,
        version,
        kind,
        plural,
        singular,
        namespaced,
        short_names,
    }
}

/// Every resource served, grouped by group version in discovery order.
pub const RESOURCES: &[Resource] = &[
    r(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
    ),
    r("", "v1", "Pod", "pods", "pod", true, &["po"]),
    r("", "v1", "Node", "nodes", "node", false, &["no"]),
    r("", "v1", "Service", "services", "service", true, &["svc"]),
    r(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
    ),
    r(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
    ),
    r("", "v1", "Secret", "secrets", "secret", true, &[]),
    r("", "v1", "Event", "events", "event", true, &["ev"]),
    r(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
    ),
    r(
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        "resourcequota",
        true,
        &["quota"],
    ),
    r(
        "",
        "v1",
        "LimitRange",
        "limitranges",
        "limitrange",
        true,
        &["limits"],
    ),
    r(
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        "replicationcontroller",
        true,
        &["rc"],
    ),
    r(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        true,
        &["pvc"],
    ),
    r(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        false,
        &["pv"],
    ),
    r(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
    ),
    r(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
    ),
    r(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
    ),
    r(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        &["sts"],
    ),
    r(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        true,
        &[],
    ),
    r("batch", "v1", "Job", "jobs", "job", true, &[]),
    r(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        true,
        &["cj"],
    ),
    r(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        true,
        &[],
    ),
    r(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        &[],
    ),
    r(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        "ingress",
        true,
        &["ing"],
    ),
    r(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        true,
        &["netpol"],
    ),
    r(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        true,
        &["pdb"],
    ),
    r(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        "storageclass",
        false,
        &["sc"],
    ),
    r(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        "ingressclass",
        false,
        &[],
    ),
    r(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        "priorityclass",
        false,
        &["pc"],
    ),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        "role",
        true,
        &[],
    ),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
        &[],
    ),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
        &[],
    ),
    r(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        &[],
    ),
    r(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        &["hpa"],
    ),
    // Also served as autoscaling/v1, converted (stored as v2; see crate::versions).
    r(
        "autoscaling",
        "v1",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        &["hpa"],
    ),
    // The resource metrics API (what `kubectl top` and the autoscaler read). Node agents
    // write the objects; the usage of each pod's containers and each node.
    r(
        "metrics.k8s.io",
        "v1beta1",
        "NodeMetrics",
        "nodes",
        "",
        false,
        &[],
    ),
    r(
        "metrics.k8s.io",
        "v1beta1",
        "PodMetrics",
        "pods",
        "",
        true,
        &[],
    ),
];

/// The resource `plural` in `group`/`version`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Every group version served, in discovery order: `("", "v1")`, `("apps", "v1")`, ….
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    distinct(RESOURCES.iter().map(|r| (r.group, r.version)))
}

/// `pairs` without repeats, in first-seen order.
pub fn distinct(
    pairs: impl Iterator<Item = (&'static str, &'static str)>,
) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for p in pairs {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The resources of one group version.
pub fn in_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static Resource> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_group_versions() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!((pods.kind, pods.namespaced), ("Pod", true));
        assert_eq!(pods.api_version(), "v1");
        let deploy = find("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.group_version_path(), "/apis/apps/v1");
        assert!(find("apps", "v1", "pods").is_none());
        let gvs = group_versions();
        assert_eq!(gvs[0], ("", "v1"));
        assert!(gvs.contains(&("rbac.authorization.k8s.io", "v1")));
        assert_eq!(gvs.len(), 13);
        assert!(gvs.contains(&("policy", "v1")) && gvs.contains(&("storage.k8s.io", "v1")));
        assert!(gvs.contains(&("networking.k8s.io", "v1")));
        let metrics = find("metrics.k8s.io", "v1beta1", "pods").unwrap();
        assert_eq!(metrics.store_plural(), "pods.metrics.k8s.io");
        assert_eq!(pods.store_plural(), "pods");
        assert!(gvs.contains(&("scheduling.k8s.io", "v1")));
        // Plurals are unique within a group version (URLs and store keys rely on it).
        for (g, v) in gvs {
            let mut plurals: Vec<_> = in_group_version(g, v).map(|r| r.plural).collect();
            let n = plurals.len();
            plurals.sort();
            plurals.dedup();
            assert_eq!(plurals.len(), n);
        }
    }
}
