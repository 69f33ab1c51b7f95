//! The `k8s-openapi` type of each built-in kind, for code that needs the type itself: field
//! validation decodes into it ([`crate::validation`]), the OpenAPI documents publish its
//! schema ([`crate::openapi`]).

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Something done with a kind's type.
pub trait Visitor {
    /// What it gives.
    type Out;
    /// Does it with type `T`.
    fn visit<T: DeserializeOwned + Serialize + JsonSchema>(self) -> Self::Out;
}

/// Runs `v` with the type of `kind` in `version` (only HorizontalPodAutoscalers differ by
/// version: `v1`, else `v2`, the stored form); `None` for kinds without a type
/// (`metrics.k8s.io`'s).
pub fn visit<V: Visitor>(kind: &str, version: &str, v: V) -> Option<V::Out> {
    use k8s_openapi::api::{apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch};
    use k8s_openapi::api::{coordination::v1 as coordination, core::v1 as core};
    use k8s_openapi::api::{discovery::v1 as discovery, rbac::v1 as rbac};
    Some(match kind {
        "Namespace" => v.visit::<core::Namespace>(),
        "Pod" => v.visit::<core::Pod>(),
        "Node" => v.visit::<core::Node>(),
        "Service" => v.visit::<core::Service>(),
        "Endpoints" => v.visit::<core::Endpoints>(),
        "ConfigMap" => v.visit::<core::ConfigMap>(),
        "Secret" => v.visit::<core::Secret>(),
        "Event" => v.visit::<core::Event>(),
        "ServiceAccount" => v.visit::<core::ServiceAccount>(),
        "ResourceQuota" => v.visit::<core::ResourceQuota>(),
        "LimitRange" => v.visit::<core::LimitRange>(),
        "ReplicationController" => v.visit::<core::ReplicationController>(),
        "PersistentVolumeClaim" => v.visit::<core::PersistentVolumeClaim>(),
        "PersistentVolume" => v.visit::<core::PersistentVolume>(),
        "Ingress" => v.visit::<k8s_openapi::api::networking::v1::Ingress>(),
        "IngressClass" => v.visit::<k8s_openapi::api::networking::v1::IngressClass>(),
        "NetworkPolicy" => v.visit::<k8s_openapi::api::networking::v1::NetworkPolicy>(),
        "PodDisruptionBudget" => v.visit::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(),
        "StorageClass" => v.visit::<k8s_openapi::api::storage::v1::StorageClass>(),
        "Deployment" => v.visit::<apps::Deployment>(),
        "ReplicaSet" => v.visit::<apps::ReplicaSet>(),
        "DaemonSet" => v.visit::<apps::DaemonSet>(),
        "StatefulSet" => v.visit::<apps::StatefulSet>(),
        "ControllerRevision" => v.visit::<apps::ControllerRevision>(),
        "PriorityClass" => v.visit::<k8s_openapi::api::scheduling::v1::PriorityClass>(),
        "Job" => v.visit::<batch::Job>(),
        "CronJob" => v.visit::<batch::CronJob>(),
        "Lease" => v.visit::<coordination::Lease>(),
        "EndpointSlice" => v.visit::<discovery::EndpointSlice>(),
        "Role" => v.visit::<rbac::Role>(),
        "ClusterRole" => v.visit::<rbac::ClusterRole>(),
        "RoleBinding" => v.visit::<rbac::RoleBinding>(),
        "ClusterRoleBinding" => v.visit::<rbac::ClusterRoleBinding>(),
        "HorizontalPodAutoscaler" if version == "v1" => {
            v.visit::<k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler>()
        }
        "HorizontalPodAutoscaler" => v.visit::<autoscaling::HorizontalPodAutoscaler>(),
        _ => return None,
    })
}
