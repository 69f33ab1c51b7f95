"""The official Kubernetes Python client against a Flotilla cluster.

Usage: python client_smoke.py KUBECONFIG
Exits non-zero (with a traceback) on the first expectation that does not hold.
"""
import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()

names = [n.metadata.name for n in core.list_namespace().items]
assert "kube-system" in names, names

cm = client.V1ConfigMap(
    metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}), data={"a": "1"}
)
created = core.create_namespaced_config_map("default", cm)
assert created.metadata.uid, created

# A dict body is sent as a strategic merge patch, a list as a JSON patch.
core.patch_namespaced_config_map("py", "default", {"data": {"b": "2"}})
core.patch_namespaced_config_map(
    "py", "default", [{"op": "add", "path": "/data/c", "value": "3"}]
)
got = core.read_namespaced_config_map("py", "default")
assert got.data == {"a": "1", "b": "2", "c": "3"}, got.data

listed = core.list_namespaced_config_map("default", label_selector="from=python")
assert [c.metadata.name for c in listed.items] == ["py"], listed.items

# A watch from the list's resourceVersion sees a later change.
w = watch.Watch()
rv = listed.metadata.resource_version
core.patch_namespaced_config_map("py", "default", {"data": {"d": "4"}})
for event in w.stream(
    core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=10
):
    if event["type"] == "MODIFIED" and event["object"].metadata.name == "py":
        assert event["object"].data["d"] == "4"
        w.stop()
        break
else:
    raise AssertionError("the watch saw no change")

# Replace (PUT) with the current resourceVersion succeeds; a second one with the now stale
# resourceVersion is 409 Conflict and changes nothing.
stale = core.read_namespaced_config_map("py", "default")
stale.data["e"] = "5"
replaced = core.replace_namespaced_config_map("py", "default", stale)
assert replaced.data["e"] == "5", replaced.data
assert replaced.metadata.resource_version != stale.metadata.resource_version
stale.data["e"] = "lost"
try:
    core.replace_namespaced_config_map("py", "default", stale)
    raise AssertionError("a replace with a stale resourceVersion was accepted")
except ApiException as e:
    assert e.status == 409, e
    assert "the object has been modified" in e.body, e.body
assert core.read_namespaced_config_map("py", "default").data["e"] == "5"

# Set-based label selectors and field selectors.
core.create_namespaced_config_map(
    "default",
    client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-other", labels={"from": "go"})),
)


def names_of(**selectors):
    return sorted(
        c.metadata.name for c in core.list_namespaced_config_map("default", **selectors).items
    )


assert names_of(label_selector="from in (python,go)") == ["py", "py-other"]
assert names_of(label_selector="from notin (go)") == ["py"]
assert names_of(label_selector="from,from!=python") == ["py-other"]
assert names_of(label_selector="!from") == [
    c.metadata.name
    for c in core.list_namespaced_config_map("default").items
    if not (c.metadata.labels or {}).get("from")
]
assert names_of(field_selector="metadata.name=py-other") == ["py-other"]
assert names_of(field_selector="metadata.name!=py-other", label_selector="from") == ["py"]
all_ns = core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=default")
assert {c.metadata.namespace for c in all_ns.items} == {"default"}, all_ns.items
core.delete_namespaced_config_map("py-other", "default")

deploy = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="py-web"),
    spec=client.V1DeploymentSpec(
        replicas=2,
        selector=client.V1LabelSelector(match_labels={"app": "py-web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "py-web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx")]),
        ),
    ),
)
apps.create_namespaced_deployment("default", deploy)
apps.patch_namespaced_deployment_scale("py-web", "default", {"spec": {"replicas": 4}})
assert apps.read_namespaced_deployment("py-web", "default").spec.replicas == 4

core.delete_namespaced_config_map("py", "default")
try:
    core.read_namespaced_config_map("py", "default")
    raise AssertionError("deleted object still readable")
except ApiException as e:
    assert e.status == 404, e

try:
    core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name"))
    )
    raise AssertionError("an invalid name was accepted")
except ApiException as e:
    assert e.status == 422, e

print("python client: ok")
