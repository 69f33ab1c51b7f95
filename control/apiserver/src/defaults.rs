//! The defaults Kubernetes fills in on create and update, so that objects read back as they
//! do from a Kubernetes API server (and controllers can rely on the fields being set).

use serde_json::{json, Value};

fn set(obj: &mut Value, key: &str, value: Value) {
    if let Some(m) = obj.as_object_mut() {
        m.entry(key).or_insert(value);
    }
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent`.
fn pull_policy(image: &str) -> &'static str {
    let name = image.rsplit('/').next().unwrap_or(image);
    let tagged = name.contains(':') || image.contains('@');
    if !tagged || name.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    }
}

pub(crate) fn containers(list: Option<&mut Value>) {
    for c in list.and_then(Value::as_array_mut).into_iter().flatten() {
        let image = c
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        set(c, "imagePullPolicy", json!(pull_policy(&image)));
        set(c, "terminationMessagePath", json!("/dev/termination-log"));
        set(c, "terminationMessagePolicy", json!("File"));
        set(c, "resources", json!({}));
        // A limit without a request: the request is the limit.
        if let Some(limits) = c.pointer("/resources/limits").cloned() {
            if let Some(limits) = limits.as_object().filter(|l| !l.is_empty()) {
                if !c["resources"].get("requests").is_some_and(Value::is_object) {
                    c["resources"]["requests"] = json!({});
                }
                for (k, v) in limits {
                    set(&mut c["resources"]["requests"], k, v.clone());
                }
            }
        }
        for p in c
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            set(p, "protocol", json!("TCP"));
        }
    }
}

/// A PodSpec's defaults.
pub fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "securityContext", json!({}));
    set(spec, "enableServiceLinks", json!(true));
    if spec.get("serviceAccountName").is_none() {
        let sa = spec
            .get("serviceAccount")
            .cloned()
            .unwrap_or(json!("default"));
        spec["serviceAccountName"] = sa.clone();
        spec["serviceAccount"] = sa;
    }
    containers(spec.get_mut("containers"));
    containers(spec.get_mut("initContainers"));
    containers(spec.get_mut("ephemeralContainers"));
}

/// The DefaultTolerationSeconds admission of Kubernetes: a pod tolerates its node being
/// not-ready or unreachable for 300 s (then it is evicted), unless it says otherwise.
fn default_toleration_seconds(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let list = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
            (effect.is_empty() || effect == "NoExecute") && (k == key || (k.is_empty() && exists))
        });
        if !covered {
            list.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 300}),
            );
        }
    }
}

fn template(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        pod_spec(spec);
    }
}

/// Fills in the defaults of `obj`, a `kind` object.
pub fn apply(kind: &str, obj: &mut Value) {
    match kind {
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec(spec);
                default_toleration_seconds(spec);
            }
            if obj.pointer("/status/phase").is_none() {
                let qos = flotilla_quota::qos_class(obj);
                obj["status"] = json!({"phase": "Pending", "qosClass": qos});
            }
        }
        "LimitRange" => flotilla_quota::limits::default_range(obj),
        "Deployment" => {
            if let Some(spec) = obj.get_mut("spec") {
                set(spec, "replicas", json!(1));
                set(spec, "revisionHistoryLimit", json!(10));
                set(spec, "progressDeadlineSeconds", json!(600));
                set(
                    spec,
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                );
            }
            template(obj);
        }
        "ReplicaSet" | "StatefulSet" => {
            if let Some(spec) = obj.get_mut("spec") {
                set(spec, "replicas", json!(1));
            }
            if kind == "StatefulSet" {
                if let Some(spec) = obj.get_mut("spec") {
                    set(spec, "podManagementPolicy", json!("OrderedReady"));
                    set(spec, "revisionHistoryLimit", json!(10));
                    set(
                        spec,
                        "updateStrategy",
                        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                    );
                }
            }
            template(obj);
        }
        "ReplicationController" => {
            // As Kubernetes: the selector and the controller's labels default to the
            // template's labels.
            if let Some(labels) = obj.pointer("/spec/template/metadata/labels").cloned() {
                for (parent, field) in [("/spec", "selector"), ("/metadata", "labels")] {
                    if let Some(m) = obj.pointer_mut(parent).and_then(Value::as_object_mut) {
                        if m.get(field)
                            .and_then(Value::as_object)
                            .is_none_or(|l| l.is_empty())
                        {
                            m.insert(field.into(), labels.clone());
                        }
                    }
                }
            }
            if let Some(spec) = obj.get_mut("spec") {
                set(spec, "replicas", json!(1));
            }
            template(obj);
        }
        "PersistentVolumeClaim" | "PersistentVolume" => {
            if let Some(spec) = obj.get_mut("spec") {
                set(spec, "volumeMode", json!("Filesystem"));
                if kind == "PersistentVolume" {
                    set(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                }
            }
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({"phase": "Pending"});
            }
        }
        "StorageClass" => {
            set(obj, "reclaimPolicy", json!("Delete"));
            set(obj, "volumeBindingMode", json!("Immediate"));
        }
        // Ingress always, Egress when the policy has egress rules.
        "NetworkPolicy" => {
            if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
                if spec.get("policyTypes").is_none() {
                    let mut types = vec![json!("Ingress")];
                    if spec.get("egress").is_some() {
                        types.push(json!("Egress"));
                    }
                    spec["policyTypes"] = json!(types);
                }
            }
        }
        "DaemonSet" => {
            if let Some(spec) = obj.get_mut("spec") {
                set(spec, "revisionHistoryLimit", json!(10));
                set(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
                );
            }
            template(obj);
        }
        "Job" => {
            if let Some(spec) = obj.get_mut("spec") {
                set(spec, "backoffLimit", json!(6));
                set(spec, "completions", json!(1));
                set(spec, "parallelism", json!(1));
                set(spec, "completionMode", json!("NonIndexed"));
                set(spec, "suspend", json!(false));
            }
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                if spec.get("restartPolicy").is_none() {
                    spec["restartPolicy"] = json!("Never");
                }
                pod_spec(spec);
            }
        }
        "HorizontalPodAutoscaler" => {
            // As Kubernetes: without metrics, 80% CPU utilization.
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                let none = spec
                    .get("metrics")
                    .is_none_or(|m| m.as_array().is_none_or(Vec::is_empty));
                if none {
                    spec.insert(
                        "metrics".into(),
                        json!([{"type": "Resource", "resource": {"name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                    );
                }
            }
        }
        "CronJob" => {
            if let Some(spec) = obj.get_mut("spec") {
                set(spec, "concurrencyPolicy", json!("Allow"));
                set(spec, "suspend", json!(false));
                set(spec, "successfulJobsHistoryLimit", json!(3));
                set(spec, "failedJobsHistoryLimit", json!(1));
            }
            if let Some(spec) = obj.pointer_mut("/spec/jobTemplate/spec/template/spec") {
                pod_spec(spec);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_controllers_and_volumes_get_kubernetes_defaults() {
        let mut rc = json!({"metadata": {"name": "rc"}, "spec": {"template": {
            "metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        apply("ReplicationController", &mut rc);
        assert_eq!(rc["spec"]["selector"], json!({"app": "x"}));
        assert_eq!(rc["metadata"]["labels"], json!({"app": "x"}));
        assert_eq!(rc["spec"]["replicas"], json!(1));
        let mut kept = json!({"metadata": {"labels": {"own": "1"}}, "spec": {"selector": {"app": "x"},
            "template": {"metadata": {"labels": {"app": "x", "tier": "t"}}}}});
        apply("ReplicationController", &mut kept);
        assert_eq!(kept["spec"]["selector"], json!({"app": "x"}));
        assert_eq!(kept["metadata"]["labels"], json!({"own": "1"}));
        let mut pv = json!({"spec": {"capacity": {"storage": "1Gi"}}});
        apply("PersistentVolume", &mut pv);
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(pv["spec"]["volumeMode"], "Filesystem");
        assert_eq!(pv["status"]["phase"], "Pending");
    }

    #[test]
    fn storage_classes_and_network_policies_get_kubernetes_defaults() {
        let mut sc = json!({"metadata": {"name": "fast"}, "provisioner": "x"});
        apply("StorageClass", &mut sc);
        assert_eq!(
            (&sc["reclaimPolicy"], &sc["volumeBindingMode"]),
            (&json!("Delete"), &json!("Immediate"))
        );
        let mut ingress_only = json!({"spec": {"podSelector": {}}});
        apply("NetworkPolicy", &mut ingress_only);
        assert_eq!(ingress_only["spec"]["policyTypes"], json!(["Ingress"]));
        let mut both = json!({"spec": {"podSelector": {}, "egress": []}});
        apply("NetworkPolicy", &mut both);
        assert_eq!(both["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        let mut chosen = json!({"spec": {"policyTypes": ["Egress"]}});
        apply("NetworkPolicy", &mut chosen);
        assert_eq!(chosen["spec"]["policyTypes"], json!(["Egress"]));
    }

    #[test]
    fn pods_and_templates_get_kubernetes_defaults() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "nginx"}, {"name": "b", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}
        ]}});
        apply("Pod", &mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            pod["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod["spec"]["containers"][1]["ports"][0]["protocol"], "TCP");
        assert_eq!(pod["status"]["phase"], "Pending");
        let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(tolerations.len(), 2);
        assert_eq!(tolerations[1]["key"], "node.kubernetes.io/unreachable");
        assert_eq!(tolerations[1]["tolerationSeconds"], 300);
        // A pod's own toleration for a key is kept, and defaulting twice adds nothing.
        let mut own = json!({"spec": {"containers": [], "tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}});
        apply("Pod", &mut own);
        apply("Pod", &mut own);
        assert_eq!(own["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(own["spec"]["tolerations"][0]["tolerationSeconds"], 5);

        let mut deploy = json!({"spec": {"replicas": 0, "template": {"spec": {"containers": [{"name": "a", "image": "x:latest"}]}}}});
        apply("Deployment", &mut deploy);
        assert_eq!(deploy["spec"]["replicas"], 0, "a given value is kept");
        assert_eq!(
            deploy["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
            "25%"
        );
        assert_eq!(
            deploy["spec"]["template"]["spec"]["dnsPolicy"],
            "ClusterFirst"
        );
        let mut job = json!({"spec": {"template": {"spec": {"containers": []}}}});
        apply("Job", &mut job);
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
        assert_eq!(pull_policy("registry:5000/app"), "Always");
        assert_eq!(pull_policy("registry:5000/app:v1"), "IfNotPresent");
    }
}
