"""k8s/queueing: the Kueue objects that queue kubellm's GPU work, offline.

- the folder builds alone and inside the gpu overlay (not in cpu/dev, which must apply without Kueue);
- the objects fit together as Kueue needs: the LocalQueue names an existing ClusterQueue that
  admits its namespace, every flavor exists and lists its group's resources in order, cpu, memory
  and nvidia.com/gpu are covered, lower priorities are preempted, BestEffortFIFO;
- each WorkloadPriorityClass mirrors the PriorityClass of the same name in k8s/base;
- the GPU flavor tolerates the taint docs/cluster.md puts on GPU nodes; the namespace quota leaves
  room for pods that wait in the queue, and the queue's GPUs cover the runs the semaphore lets in;
- the demo workflow and docs/cluster.md name what exists;
- scripts/check_k8s.sh rejects planted mistakes in Kueue objects (schemas from Kueue's CRDs).
Each consistency check is also run on planted mistakes, so that it is known to fail.

    pytest tests/test_k8s_queueing.py     # uses the tool venv of scripts/check_k8s.sh
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.test_k8s import fail_lines, find, k8s_venv, kustomize, quantity, run_check  # noqa: F401 (a fixture)
from workflows.lint import lint_cluster

ROOT = Path(__file__).resolve().parents[1]
QUEUEING = ROOT / "k8s" / "queueing"
DOCS = ROOT / "docs" / "cluster.md"
KUEUE_KINDS = ("ClusterQueue", "LocalQueue", "ResourceFlavor", "WorkloadPriorityClass")
# what every kubellm pod requests; a ClusterQueue that does not cover a resource never admits a pod
# that requests it
NEEDED = ("cpu", "memory", "nvidia.com/gpu")


@pytest.fixture(scope="module")
def queueing(k8s_venv) -> list[dict]:
    return kustomize(k8s_venv, QUEUEING)


@pytest.fixture(scope="module")
def overlays(k8s_venv) -> dict[str, list[dict]]:
    return {name: kustomize(k8s_venv, ROOT / "k8s" / "overlays" / name) for name in ("cpu", "gpu", "dev")}


def _named(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o.get("kind") == kind}


def _selects(selector: dict | None, labels: dict) -> bool:
    """A Kubernetes label selector against labels; None selects nothing (Kueue's rule for a
    ClusterQueue's namespaceSelector), {} everything."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        has, value = e["key"] in labels, labels.get(e["key"])
        ok = {"In": has and value in e.get("values", []), "NotIn": not has or value not in e.get("values", []),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


def _tolerates(tolerations: list[dict], key: str, value: str, effect: str) -> bool:
    for t in tolerations:
        if t.get("effect") not in (None, "", effect):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, "", key):
            return True
        if t.get("operator", "Equal") == "Equal" and t.get("key") == key and t.get("value", "") == value:
            return True
    return False


def gpu_taint() -> tuple[str, str, str]:
    """The taint docs/cluster.md tells operators to put on GPU nodes: (key, value, effect)."""
    m = re.search(r"kubectl taint nodes \S+ ([\w./-]+)=([\w.-]*):(NoSchedule|NoExecute)", DOCS.read_text())
    assert m, "docs/cluster.md shows no `kubectl taint nodes` command for GPU nodes"
    return m.group(1), m.group(2), m.group(3)


def queueing_problems(objects: list[dict], base: list[dict], taint: tuple[str, str, str]) -> list[str]:
    """Why Kueue would not admit kubellm's work as intended, one line each.

    `objects` are Kueue's (k8s/queueing), `base` the namespace's (an overlay build), `taint` the GPU
    nodes' taint. Kueue itself rejects some of these (CEL rules the offline schemas cannot run),
    others it accepts and then leaves workloads waiting forever.
    """
    problems = []
    cqs, lqs = _named(objects, "ClusterQueue"), _named(objects, "LocalQueue")
    flavors, wpcs = _named(objects, "ResourceFlavor"), _named(objects, "WorkloadPriorityClass")
    namespaces, pcs = _named(base, "Namespace"), _named(base, "PriorityClass")

    for name, lq in sorted(lqs.items()):
        ns, cq = lq["metadata"].get("namespace"), lq["spec"].get("clusterQueue")
        where = f"LocalQueue {ns}/{name}"
        if ns not in namespaces:
            problems.append(f"{where}: namespace {ns!r} is not the one k8s/base creates ({', '.join(namespaces)})")
        if cq not in cqs:
            problems.append(f"{where}: spec.clusterQueue {cq!r} is not a ClusterQueue here ({', '.join(cqs)})")
        elif ns in namespaces:
            # the API server labels every namespace with its name
            labels = {**(namespaces[ns]["metadata"].get("labels") or {}), "kubernetes.io/metadata.name": ns}
            if not _selects(cqs[cq]["spec"].get("namespaceSelector"), labels):
                problems.append(f"{where}: ClusterQueue {cq}'s namespaceSelector does not select namespace {ns}")

    for name, cq in sorted(cqs.items()):
        where, spec = f"ClusterQueue {name}", cq["spec"]
        group_of_resource: dict[str, int] = {}
        group_of_flavor: dict[str, int] = {}
        for i, group in enumerate(spec.get("resourceGroups") or []):
            covered = group["coveredResources"]
            for r in covered:
                if r in group_of_resource:
                    problems.append(f"{where}: {r} is covered by resourceGroups[{group_of_resource[r]}] and "
                                    f"[{i}]: a resource belongs to one group")
                group_of_resource.setdefault(r, i)
            for j, f in enumerate(group["flavors"]):
                at = f"{where}: resourceGroups[{i}].flavors[{j}]"
                if f["name"] not in flavors:
                    problems.append(f"{at}: ResourceFlavor {f['name']!r} does not exist ({', '.join(flavors)})")
                if f["name"] in group_of_flavor:
                    problems.append(f"{at}: {f['name']} is in resourceGroups[{group_of_flavor[f['name']]}] "
                                    "too: a flavor belongs to one group")
                group_of_flavor.setdefault(f["name"], i)
                listed = [r["name"] for r in f["resources"]]
                if listed != covered:
                    problems.append(f"{at}: resources {listed} must be the group's coveredResources {covered}, "
                                    "in that order")
                for r in f["resources"]:
                    if quantity(r["nominalQuota"]) <= 0:
                        problems.append(f"{at}: {r['name']} has no quota: nothing requesting it is ever admitted")
                if "nvidia.com/gpu" in covered and f["name"] in flavors:
                    tols = (flavors[f["name"]].get("spec") or {}).get("tolerations") or []
                    if not _tolerates(tols, *taint):
                        problems.append(f"{at}: GPU flavor {f['name']} does not tolerate the GPU nodes' taint "
                                        f"{taint[0]}={taint[1]}:{taint[2]}: admitted pods without that toleration "
                                        "(a TrainJob's) would never be scheduled")
        for r in NEEDED:
            if r not in group_of_resource:
                problems.append(f"{where}: does not cover {r}: a pod requesting it is never admitted")
        if (spec.get("preemption") or {}).get("withinClusterQueue") != "LowerPriority":
            problems.append(f"{where}: preemption.withinClusterQueue is not LowerPriority: a waiting kubellm-training "
                            "workload would not evict running kubellm-batch ones")
        if spec.get("queueingStrategy", "BestEffortFIFO") != "BestEffortFIFO":
            problems.append(f"{where}: queueingStrategy {spec['queueingStrategy']}: a GPU workload at the head of the "
                            "queue would hold back the CPU steps that let other runs finish and free their GPUs")

    for name, w in sorted(wpcs.items()):
        if name not in pcs:
            problems.append(f"WorkloadPriorityClass {name}: no PriorityClass of that name in k8s/base "
                            f"({', '.join(sorted(pcs))})")
        elif w["value"] != pcs[name]["value"]:
            problems.append(f"WorkloadPriorityClass {name}: value {w['value']}, but PriorityClass {name} has "
                            f"{pcs[name]['value']}")
    for name in sorted(set(pcs) - set(wpcs)):
        problems.append(f"PriorityClass {name}: no WorkloadPriorityClass of that name: a workload labelled "
                        f"kueue.x-k8s.io/priority-class: {name} would name a class Kueue does not have")
    return problems


# --------------------------------------------------------------------------- builds

def test_queueing_builds_alone_and_comes_with_the_gpu_overlay_only(queueing, overlays):
    assert sorted((o["kind"], o["metadata"]["name"]) for o in queueing) == [
        ("ClusterQueue", "kubellm"), ("LocalQueue", "kubellm"),
        ("ResourceFlavor", "kubellm-default"), ("ResourceFlavor", "kubellm-gpu"),
        ("WorkloadPriorityClass", "kubellm-batch"), ("WorkloadPriorityClass", "kubellm-inference"),
        ("WorkloadPriorityClass", "kubellm-training"),
    ]
    assert all(o["apiVersion"] == "kueue.x-k8s.io/v1beta2" for o in queueing)
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubellm" for o in queueing)
    # only the LocalQueue is namespaced; kustomize must not have put the others in a namespace
    assert {o["kind"]: o["metadata"].get("namespace") for o in queueing} == {
        "ClusterQueue": None, "LocalQueue": "kubellm", "ResourceFlavor": None, "WorkloadPriorityClass": None}
    gpu = [o for o in overlays["gpu"] if o["kind"] in KUEUE_KINDS]
    assert sorted(gpu, key=json.dumps) == sorted(queueing, key=json.dumps)
    for name in ("cpu", "dev"):
        assert not [o for o in overlays[name] if o["apiVersion"].startswith("kueue.x-k8s.io/")], (
            f"the {name} overlay must apply on a cluster without Kueue")


# --------------------------------------------------------------------------- consistency

def test_queue_objects_fit_together_and_mirror_the_base(queueing, overlays):
    assert queueing_problems(queueing, overlays["gpu"], gpu_taint()) == []


def test_queue_consistency_check_catches_planted_mistakes(queueing, overlays):
    objs = copy.deepcopy(queueing)
    cq = find(objs, "ClusterQueue", "kubellm")
    find(objs, "LocalQueue", "kubellm")["spec"]["clusterQueue"] = "kubelm"
    cq["spec"]["preemption"]["withinClusterQueue"] = "Never"
    cq["spec"]["queueingStrategy"] = "StrictFIFO"
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"].reverse()           # memory before cpu
    cq["spec"]["resourceGroups"][1]["flavors"][0]["name"] = "kubellm-gpus"         # no such flavor
    find(objs, "WorkloadPriorityClass", "kubellm-training")["value"] = 9500
    find(objs, "WorkloadPriorityClass", "kubellm-batch")["metadata"]["name"] = "kubellm-bulk"
    assert queueing_problems(objs, overlays["gpu"], gpu_taint()) == [
        "LocalQueue kubellm/kubellm: spec.clusterQueue 'kubelm' is not a ClusterQueue here (kubellm)",
        "ClusterQueue kubellm: resourceGroups[0].flavors[0]: resources ['memory', 'cpu'] must be the group's "
        "coveredResources ['cpu', 'memory'], in that order",
        "ClusterQueue kubellm: resourceGroups[1].flavors[0]: ResourceFlavor 'kubellm-gpus' does not exist "
        "(kubellm-default, kubellm-gpu)",
        "ClusterQueue kubellm: preemption.withinClusterQueue is not LowerPriority: a waiting kubellm-training "
        "workload would not evict running kubellm-batch ones",
        "ClusterQueue kubellm: queueingStrategy StrictFIFO: a GPU workload at the head of the queue would hold back "
        "the CPU steps that let other runs finish and free their GPUs",
        "WorkloadPriorityClass kubellm-bulk: no PriorityClass of that name in k8s/base (kubellm-batch, "
        "kubellm-inference, kubellm-training)",
        "WorkloadPriorityClass kubellm-training: value 9500, but PriorityClass kubellm-training has 9000",
        "PriorityClass kubellm-batch: no WorkloadPriorityClass of that name: a workload labelled "
        "kueue.x-k8s.io/priority-class: kubellm-batch would name a class Kueue does not have",
    ]


def test_consistency_check_catches_uncovered_gpus_untolerated_taints_and_foreign_namespaces(queueing, overlays):
    objs = copy.deepcopy(queueing)
    cq = find(objs, "ClusterQueue", "kubellm")
    cq["spec"]["resourceGroups"].pop()                                           # no GPU group
    cq["spec"]["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": "default"}}
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = "0"
    assert queueing_problems(objs, overlays["gpu"], gpu_taint()) == [
        "LocalQueue kubellm/kubellm: ClusterQueue kubellm's namespaceSelector does not select namespace kubellm",
        "ClusterQueue kubellm: resourceGroups[0].flavors[0]: cpu has no quota: nothing requesting it is ever admitted",
        "ClusterQueue kubellm: does not cover nvidia.com/gpu: a pod requesting it is never admitted",
    ]
    objs = copy.deepcopy(queueing)
    find(objs, "LocalQueue", "kubellm")["metadata"]["namespace"] = "kubellm-dev"
    find(objs, "ResourceFlavor", "kubellm-gpu")["spec"]["tolerations"][0]["key"] = "gpu"
    assert queueing_problems(objs, overlays["gpu"], gpu_taint()) == [
        "LocalQueue kubellm-dev/kubellm: namespace 'kubellm-dev' is not the one k8s/base creates (kubellm)",
        "ClusterQueue kubellm: resourceGroups[1].flavors[0]: GPU flavor kubellm-gpu does not tolerate the GPU nodes' "
        "taint nvidia.com/gpu=present:NoSchedule: admitted pods without that toleration (a TrainJob's) would never "
        "be scheduled",
    ]


def test_the_workflows_gpu_toleration_is_the_flavors_too(queueing):
    """GPU templates tolerate the taint themselves (workflows.common.GPU_TOLERATIONS), so that they run
    without Kueue; the GPU flavor gives the same toleration to what Kueue admits (a TrainJob's pods)."""
    from workflows.common import GPU_TOLERATIONS

    flavor = find(queueing, "ResourceFlavor", "kubellm-gpu")["spec"]["tolerations"]
    workflow = [t.model_dump(by_alias=True, exclude_none=True) if hasattr(t, "model_dump") else t
                for t in GPU_TOLERATIONS]
    for tol in (flavor, workflow):
        assert _tolerates(tol, *gpu_taint()), tol


# --------------------------------------------------------------------------- quotas

def _cq_quota(queueing: list[dict]) -> dict[str, float]:
    total: dict[str, float] = {}
    for cq in _named(queueing, "ClusterQueue").values():
        for g in cq["spec"]["resourceGroups"]:
            for f in g["flavors"]:
                for r in f["resources"]:
                    total[r["name"]] = total.get(r["name"], 0.0) + quantity(r["nominalQuota"])
    return total


def test_namespace_quota_leaves_room_for_pods_waiting_in_the_queue(queueing, overlays):
    """A pod waiting in Kueue's queue exists already, and the API server charged it to the namespace's
    ResourceQuota when it was created. If the ResourceQuota were no larger than the ClusterQueue's,
    a pod could not even be created once the queue is full, and Kueue could not order it."""
    hard = find(overlays["gpu"], "ResourceQuota", "kubellm")["spec"]["hard"]
    for r, q in _cq_quota(queueing).items():
        assert quantity(hard[f"requests.{r}"]) > q, (
            f"ResourceQuota requests.{r}={hard[f'requests.{r}']} must exceed the ClusterQueue's {q:g}")


def test_queue_gpus_cover_the_runs_the_semaphore_lets_in(queueing, overlays):
    """Kueue admits a run's pods one by one: a run's serve daemon keeps its GPU while its finetune
    waits for another. The workflow-level semaphore lets in only runs whose GPUs (2 each with
    -p gpus=1) fit in the queue together, so two runs can never each hold a serve GPU and wait for
    the other's."""
    runs = int(find(overlays["gpu"], "ConfigMap", "kubellm-semaphores")["data"]["gpu"])
    assert _cq_quota(queueing)["nvidia.com/gpu"] >= 2 * runs


# --------------------------------------------------------------------------- demo and docs

def test_queue_demo_names_the_queue_and_a_priority_class(queueing, overlays):
    demo = yaml.safe_load((QUEUEING / "queue-demo.yaml").read_text())
    # ServiceAccount and PriorityClasses (with each allowed parameter value) exist in the gpu overlay
    for value in ("kubellm-batch", "kubellm-training", "kubellm-inference"):
        doc = copy.deepcopy(demo)
        doc["spec"]["arguments"]["parameters"][0]["value"] = value
        assert lint_cluster(doc, "queue-demo.yaml", overlays["gpu"], built_from="k8s/overlays/gpu",
                            checks=("objects",), required_secrets={}) == [], value
    labels = demo["spec"]["podMetadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] in _named(queueing, "LocalQueue")
    param = next(p for p in demo["spec"]["arguments"]["parameters"] if p["name"] == "priority-class")
    assert labels["kueue.x-k8s.io/priority-class"] == "{{workflow.parameters.priority-class}}"
    assert demo["spec"]["podPriorityClassName"] == "{{workflow.parameters.priority-class}}"
    assert sorted(param["enum"]) == sorted(_named(queueing, "WorkloadPriorityClass")) and param["value"] in param["enum"]
    limits = demo["spec"]["templates"][0]["container"]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


def test_docs_show_the_labels_the_versions_and_how_to_watch(queueing):
    doc = DOCS.read_text()
    schema = json.loads((ROOT / "scripts" / "crd-schemas" / "kueue.x-k8s.io" / "clusterqueue-v1beta2.json").read_text())
    version = re.search(r"kubernetes-sigs/kueue (v[\d.]+)", schema["$comment"]).group(1)
    assert f"export KUEUE_VERSION={version}" in doc, "docs/cluster.md must install the Kueue the schemas come from"
    assert re.search(r"export TRAINER_VERSION=v2\.\d+\.\d+\b", doc)
    lq = next(iter(_named(queueing, "LocalQueue")))
    assert f"kueue.x-k8s.io/queue-name: {lq}" in doc
    for name in _named(queueing, "WorkloadPriorityClass"):
        assert f"kueue.x-k8s.io/priority-class: {name}" in doc, name
    for needed in ('"pod"', '"trainer.kubeflow.org/trainjob"', "managedJobsNamespaceSelector",
                   "kubectl get workloads -n kubellm", "kubectl get clusterqueue kubellm -o wide",
                   "kubectl get clustertrainingruntime torch-distributed",
                   "argo submit -n kubellm k8s/queueing/queue-demo.yaml -p priority-class=kubellm-training"):
        assert needed in doc, needed


# --------------------------------------------------------------------------- the check script

def test_check_script_rejects_planted_kueue_mistakes(k8s_venv):
    r = run_check("tests/fixtures/k8s_bad/kueue-mistakes.yaml")
    assert r.returncode == 1, r.stdout + r.stderr
    f = "tests/fixtures/k8s_bad/kueue-mistakes.yaml"
    lines = fail_lines(r.stdout)
    assert lines[:2] == [
        f"{f}: schema: no schema for kind LocalQueue in kueue.x-k8s.io/v1beta1 in scripts/crd-schemas/kueue.x-k8s.io "
        "(it has: clusterqueue-v1beta2, localqueue-v1beta2, resourceflavor-v1beta2, workloadpriorityclass-v1beta2); "
        "derive it (scripts/crd-schemas/README.md)",
        f"{f}: schema: clusterqueue/typo: spec: Additional properties are not allowed ('preemtion' was unexpected)",
    ]
    assert lines[2].startswith(f"{f}: schema: clusterqueue/typo: spec.resourceGroups.0.flavors.0.resources.0.nominalQuota: "
                               "'lots' does not match '^(\\\\+|-)?"), lines[2]  # the CRD's quantity pattern
    assert lines[3:] == [f"{f}: schema: workloadpriorityclass/wordy: value: 'high' is not of type 'integer'"]
