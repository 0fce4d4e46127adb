"""`kubellm lint`'s cluster checks: what a rendered workflow needs from k8s/ and its images.

The committed workflows pass against every overlay; each planted mistake fails with the file and
the field that holds it. Offline: k8s/ is built with the tool venv's `kubectl kustomize` when it
exists (scripts/check_k8s.sh --setup), else read directly, and both give the same objects.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflows import cli
from workflows.k8s_objects import kubectl_path, load_k8s_objects, load_required_secrets
from workflows.lint import lint_cluster_file
from workflows.lint_cluster import lint_cluster, network_reasons

ROOT = Path(__file__).resolve().parents[1]
RENDERED = sorted((ROOT / "workflows" / "rendered").glob("*.yaml"))
DISTILL = ROOT / "workflows" / "rendered" / "distill.yaml"
OVERLAYS = ("overlays/cpu", "overlays/gpu", "overlays/dev")
CPU = "k8s/overlays/cpu"


@pytest.fixture(scope="module")
def cpu() -> list[dict]:
    return load_k8s_objects("k8s", "overlays/cpu")


@pytest.fixture
def doc() -> dict:
    return yaml.safe_load(DISTILL.read_text())


def lint(doc: dict, objects: list[dict], **kw) -> list[str]:
    return lint_cluster(doc, "distill.yaml", objects, built_from=CPU, **kw)


def tpl(doc: dict, name: str) -> tuple[str, dict]:
    """(field path, template) of the template called name."""
    for i, t in enumerate(doc["spec"]["templates"]):
        if t["name"] == name:
            return f"spec.templates[{i}]", t
    raise AssertionError(f"no template {name}")


def param(doc: dict, name: str) -> tuple[str, dict]:
    for i, p in enumerate(doc["spec"]["arguments"]["parameters"]):
        if p["name"] == name:
            return f"spec.arguments.parameters[{i}]", p
    raise AssertionError(f"no parameter {name}")


def defined(objects: list[dict], kind: str) -> str:
    return ", ".join(sorted(o["metadata"]["name"] for o in objects if o["kind"] == kind))


# --------------------------------------------------------------------------- the repo passes

@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("wf", RENDERED, ids=lambda p: p.name)
def test_committed_workflows_pass_against_every_overlay(wf, overlay):
    # with k8s/rag, the cluster harvest's identity (the rag workflows' harvest and choose-model nodes)
    objects = load_k8s_objects("k8s", overlay) + load_k8s_objects("k8s", "rag")
    assert lint_cluster_file(wf, objects, built_from=f"k8s/{overlay} + k8s/rag") == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fallback_loader_builds_what_kustomize_builds(overlay):
    direct = load_k8s_objects("k8s", overlay, use_kubectl=False)
    rag = load_k8s_objects("k8s", "rag", use_kubectl=False)
    for wf in RENDERED:
        assert lint_cluster_file(wf, direct + rag, built_from=f"k8s/{overlay} + k8s/rag") == []
    if not (ROOT / ".venv-k8s" / "bin" / "kubectl").exists():  # at run time: test_k8s.py sets it up
        pytest.skip("no .venv-k8s/bin/kubectl (scripts/check_k8s.sh --setup) to compare with")
    built = load_k8s_objects("k8s", overlay, use_kubectl=True)

    def ids(objs):
        return sorted((o["kind"], o["metadata"].get("namespace") or "", o["metadata"]["name"],
                       tuple(sorted(o.get("data") or {}))) for o in objs)

    assert ids(direct) == ids(built)
    for o in built:  # patches applied alike (the dev overlay's single-node claims)
        same = next(d for d in direct if (d["kind"], d["metadata"]["name"]) == (o["kind"], o["metadata"]["name"]))
        assert same.get("spec") == o.get("spec"), o["metadata"]["name"]


def test_fallback_loader_follows_generators_patches_prefix_and_namespace(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "kustomization.yaml").write_text(
        "resources: [objects.yaml]\n"
        "configMapGenerator:\n"
        "  - {name: plain, literals: [a=1], options: {disableNameSuffixHash: true}}\n"
        "  - {name: hashed, literals: [b=2]}\n")
    (tmp_path / "base" / "objects.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: sems}\ndata: {gpu: '1'}\n---\n"
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: batch}\nvalue: 1\n")
    (tmp_path / "overlay").mkdir()
    (tmp_path / "overlay" / "kustomization.yaml").write_text(
        "namespace: team\nnamePrefix: x-\nresources: [../base]\npatches:\n  - path: more.yaml\n")
    (tmp_path / "overlay" / "more.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: sems}\ndata: {cpu: '4'}\n")
    objs = load_k8s_objects(tmp_path, "overlay", use_kubectl=False)
    got = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): sorted(o.get("data") or {}) for o in objs}
    hashed = next(n for (_, _, n) in got if n.startswith("x-hashed-"))
    assert got == {("ConfigMap", "team", "x-sems"): ["cpu", "gpu"], ("PriorityClass", None, "x-batch"): [],
                   ("ConfigMap", "team", "x-plain"): ["a"], ("ConfigMap", "team", hashed): ["b"]}
    if kubectl_path().exists():  # the same names as kustomize (its hash differs from ours; both are not the plain name)
        real = load_k8s_objects(tmp_path, "overlay", use_kubectl=True)
        assert sorted(re.sub(r"-[0-9a-z]{10}$", "-#", o["metadata"]["name"]) for o in real) == \
            sorted(re.sub(r"-[0-9a-z]{10}$", "-#", n) for (_, _, n) in got)


def test_loader_names_a_missing_overlay(tmp_path):
    with pytest.raises(FileNotFoundError, match="overlays/cpo: no kustomization.yaml"):
        load_k8s_objects("k8s", "overlays/cpo")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_k8s_objects(tmp_path / "nothing")


# --------------------------------------------------------------------------- names k8s/ must define

def test_missing_configmap_semaphore_and_memo_cache(doc, cpu):
    doc["spec"]["synchronization"] = {"semaphores": [{"configMapKeyRef": {"name": "kubellm-semaphore", "key": "gpu"}},
                                                     {"configMapKeyRef": {"name": "kubellm-semaphores", "key": "gpus"}}]}
    path, t = tpl(doc, "evaluate")
    t["memoize"] = {"key": "k", "maxAge": "1h", "cache": {"configMap": {"name": "kubellm-memos"}}}
    cms = defined(cpu, "ConfigMap")
    assert lint(doc, cpu) == [
        f"distill.yaml: spec.synchronization.semaphores[0].configMapKeyRef.name: ConfigMap 'kubellm-semaphore' is "
        f"not defined by {CPU} (it defines: {cms})",
        "distill.yaml: spec.synchronization.semaphores[1].configMapKeyRef.key: ConfigMap 'kubellm-semaphores' has no "
        "key 'gpus' (keys: gpu)",
        f"distill.yaml: {path}.memoize.cache.configMap.name: ConfigMap 'kubellm-memos' is not defined by {CPU} "
        f"(it defines: {cms})",
    ]


def test_missing_secret_key(doc, cpu):
    path, t = tpl(doc, "generate")
    i, env = next((i, e) for i, e in enumerate(t["container"]["env"]) if e["name"] == "OPENAI_API_KEY")
    env["valueFrom"]["secretKeyRef"]["key"] = "openai-key"
    assert lint(doc, cpu) == [
        f"distill.yaml: {path}.container.env[{i}].valueFrom.secretKeyRef.key: Secret 'kubellm-api-keys' has no key "
        "'openai-key' (keys: openai-api-key)"]
    env["valueFrom"]["secretKeyRef"]["name"] = "openai"
    [problem] = lint(doc, cpu)
    assert problem.startswith(f"distill.yaml: {path}.container.env[{i}].valueFrom.secretKeyRef.name: Secret 'openai' "
                              f"is neither built from {CPU} nor listed in k8s/required-secrets.yaml")
    assert set(load_required_secrets()) == {"kubellm-api-keys", "kubellm-s3-credentials"}


def test_missing_pvc_also_through_a_parameter_default(doc, cpu):
    doc["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "kubellm-model"
    expect = (f"distill.yaml: spec.volumes[0].persistentVolumeClaim.claimName: PersistentVolumeClaim 'kubellm-model' "
              f"is not defined by {CPU} (it defines: kubellm-data, kubellm-models)")
    assert lint(doc, cpu) == [expect]
    # chosen at submit time, checked through its default
    doc["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "{{workflow.parameters.pvc}}"
    doc["spec"]["arguments"]["parameters"].append({"name": "pvc", "value": "kubellm-model"})
    k = len(doc["spec"]["arguments"]["parameters"]) - 1
    assert lint(doc, cpu) == [expect.replace(
        "'kubellm-model' is", f"'kubellm-model' ('{{{{workflow.parameters.pvc}}}}' through spec.arguments.parameters[{k}].value) is")]
    del doc["spec"]["arguments"]["parameters"][k]["value"]  # no default: not checkable here
    assert lint(doc, cpu) == []


def test_missing_priority_classes(doc, cpu):
    path, t = tpl(doc, "finetune")
    t["priorityClassName"] = "kubellm-train"
    doc["spec"]["podPriorityClassName"] = "kubellm-low"
    pcs = defined(cpu, "PriorityClass")
    assert lint(doc, cpu) == [
        f"distill.yaml: spec.podPriorityClassName: PriorityClass 'kubellm-low' is not defined by {CPU} (it defines: {pcs})",
        f"distill.yaml: {path}.priorityClassName: PriorityClass 'kubellm-train' is not defined by {CPU} (it defines: {pcs})",
    ]


def test_unknown_service_account(doc, cpu):
    doc["spec"]["serviceAccountName"] = "kubellm-workflows"
    assert lint(doc, cpu) == [
        f"distill.yaml: spec.serviceAccountName: ServiceAccount 'kubellm-workflows' is not defined by {CPU} "
        "(it defines: kubellm-workflow)"]


def test_other_namespace(doc, cpu):
    doc["metadata"]["namespace"] = "default"
    assert lint(doc, cpu) == [f"distill.yaml: metadata.namespace: 'default', but {CPU} sets up namespace kubellm"]


# --------------------------------------------------------------------------- images

def test_latest_image_default_is_reported_at_the_parameter(doc, cpu):
    ppath, p = param(doc, "steps-image")
    p["value"] = "ghcr.io/kubellm/steps-cpu:latest"
    users = [f"{path}.container.image" for path, t in (tpl(doc, t["name"]) for t in doc["spec"]["templates"])
             if (t.get("container") or {}).get("image") == "{{workflow.parameters.steps-image}}"]
    assert len(users) >= 5
    assert lint(doc, cpu) == [
        f"distill.yaml: {ppath}.value: image 'ghcr.io/kubellm/steps-cpu:latest' (the default image of "
        f"{', '.join(users)}): the moving tag 'latest': pin an exact version (and a digest where you can)"]


def test_untagged_image_and_digest(doc, cpu):
    path, t = tpl(doc, "serve")
    t["container"]["image"] = "registry.local:5000/vllm/vllm-openai"
    assert lint(doc, cpu) == [
        f"distill.yaml: {path}.container.image: 'registry.local:5000/vllm/vllm-openai': no tag (the runtime pulls "
        "':latest'): pin an exact version"]
    t["container"]["image"] = "vllm/vllm-openai@sha256:" + "0" * 64
    assert lint(doc, cpu) == []


# --------------------------------------------------------------------------- pod security and resources

def test_root_container(doc, cpu):
    path, t = tpl(doc, "generate")
    t["container"]["securityContext"]["runAsUser"] = 0
    assert lint(doc, cpu) == [
        f"distill.yaml: {path}.container.securityContext.runAsUser: 0 runs template 'generate' as root: use a "
        "non-root UID such as 1000"]


def test_run_as_non_root_comes_from_the_container_or_the_pod(doc, cpu):
    path, t = tpl(doc, "evaluate")
    del t["container"]["securityContext"]["runAsNonRoot"]
    assert lint(doc, cpu) == []  # spec.securityContext.runAsNonRoot: true covers it
    del doc["spec"]["securityContext"]["runAsNonRoot"]
    assert lint(doc, cpu) == [
        f"distill.yaml: {path}.container.securityContext.runAsNonRoot: not set here nor in {path}.securityContext "
        "or spec.securityContext: template 'evaluate' may run as root; set runAsNonRoot: true"]
    t["container"]["securityContext"]["runAsNonRoot"] = False
    doc["spec"]["securityContext"]["runAsNonRoot"] = True
    assert lint(doc, cpu) == [
        f"distill.yaml: {path}.container.securityContext.runAsNonRoot: False lets template 'evaluate' run as root: "
        "set it to true"]


def test_template_without_limits(doc, cpu):
    path, t = tpl(doc, "evaluate")
    del t["container"]["resources"]["limits"]
    del t["container"]["resources"]["requests"]["memory"]
    assert lint(doc, cpu) == [
        f"distill.yaml: {path}.container.resources.requests: no memory for template 'evaluate': every container "
        "states requests and limits for cpu and memory (scheduling, the namespace quota and neighbours depend on them)",
        f"distill.yaml: {path}.container.resources.limits: no cpu and no memory for template 'evaluate': every "
        "container states requests and limits for cpu and memory (scheduling, the namespace quota and neighbours "
        "depend on them)",
    ]


# --------------------------------------------------------------------------- retries and progress

def test_network_heuristic_finds_exactly_the_model_callers(doc):
    reasons = network_reasons(doc["spec"])
    assert set(reasons) == {"generate", "answer-baseline", "answer-finetuned", "judge"}
    assert "argument --url" in reasons["generate"] and "argument --served-url" in reasons["generate"]
    assert any("passes it the address {{tasks.serve.ip}} of 'serve'" in r for r in reasons["answer-baseline"])


def test_network_template_without_retry(doc, cpu):
    path, t = tpl(doc, "generate")
    del t["retryStrategy"]
    [problem] = lint(doc, cpu)
    assert problem.startswith(f"distill.yaml: {path}.retryStrategy: missing: template 'generate' calls a network "
                              "service (")
    assert "argument --url" in problem and "retry it (limit and backoff)" in problem


def test_daemon_client_without_url_flag_still_needs_retry(doc, cpu):
    path, t = tpl(doc, "answer-baseline")
    args = t["container"]["args"]
    args[args.index("--url")] = "--endpoint"
    t["retryStrategy"]["limit"] = "0"
    [problem] = lint(doc, cpu)
    main = tpl(doc, "main")[0]
    assert problem.startswith(f"distill.yaml: {path}.retryStrategy.limit: 0: template 'answer-baseline' calls a "
                              f"network service ({main}.dag.tasks[")
    assert "passes it the address {{tasks.serve.ip}} of 'serve')" in problem


def _step_modules(doc: dict) -> set[str]:
    return {a.split(".", 1)[1] for t in doc["spec"]["templates"] for a in (t.get("container") or {}).get("command") or []
            if a.startswith("steps.")}


def test_long_steps_must_report_progress(doc, cpu, tmp_path):
    (tmp_path / "steps").mkdir()
    for m in _step_modules(doc):
        (tmp_path / "steps" / f"{m}.py").write_text("progress = Progress(10, 'work')\n")
    assert lint(doc, cpu, repo_root=tmp_path) == []
    (tmp_path / "steps" / "finetune.py").write_text("print('no progress here')\n")
    (tmp_path / "steps" / "harvest.py").unlink()
    fpath, ft = tpl(doc, "finetune")
    hpath, _ = tpl(doc, "harvest")
    i = ft["container"]["command"].index("steps.finetune")
    assert lint(doc, cpu, repo_root=tmp_path) == [
        f"distill.yaml: {hpath}.container.command[2]: template 'harvest' runs steps.harvest, but there is no "
        "steps/harvest.py in the repository",
        f"distill.yaml: {fpath}.container.command[{i}]: template 'finetune' runs steps.finetune for up to "
        f"{ft['activeDeadlineSeconds']} s, but neither steps/finetune.py nor a steps module it imports creates a "
        "Progress(...): the Argo UI would show no progress for it (report it with steps._io.Progress)",
    ]
    ft["activeDeadlineSeconds"] = 60  # a short step need not report progress
    assert len(lint(doc, cpu, repo_root=tmp_path)) == 1


def test_progress_may_come_from_a_steps_module_the_step_imports(doc, cpu, tmp_path):
    (tmp_path / "steps").mkdir()
    for m in _step_modules(doc):
        (tmp_path / "steps" / f"{m}.py").write_text("progress = Progress(10, 'work')\n")
    (tmp_path / "steps" / "_io.py").write_text("class Progress:\n    pass\nExample = 'Progress(1)'\n")
    (tmp_path / "steps" / "finetune.py").write_text("from steps._io import Progress\n")  # the helper itself counts not
    assert len(lint(doc, cpu, repo_root=tmp_path)) == 1
    (tmp_path / "steps" / "trainloop.py").write_text("def fit():\n    return Progress(3, 'epochs')\n")
    for text in ("from steps.trainloop import fit\n", "import steps.trainloop\n", "from steps import _io, trainloop\n"):
        (tmp_path / "steps" / "finetune.py").write_text(text)
        assert lint(doc, cpu, repo_root=tmp_path) == [], text


def test_checks_can_be_chosen(doc, cpu):
    doc["spec"]["serviceAccountName"] = "nobody"
    del tpl(doc, "generate")[1]["retryStrategy"]
    assert len(lint(doc, cpu)) == 2
    assert len(lint(doc, cpu, checks=("objects",))) == 1
    assert lint(doc, cpu, checks=("images", "security")) == []
    with pytest.raises(ValueError, match="unknown cluster checks"):
        lint(doc, cpu, checks=("object",))


# --------------------------------------------------------------------------- the CLI

def test_cli_passes_the_committed_workflow():
    r = subprocess.run([sys.executable, "-m", "workflows.cli", "lint", "workflows/rendered/distill.yaml"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == ""
    assert "1 file(s) ok (workflow and cluster checks against k8s/overlays/cpu + k8s/rag)" in r.stderr


def test_cli_names_file_and_field_of_planted_mistakes(tmp_path, doc):
    doc["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "kubellm-model"
    ppath, p = param(doc, "serve-image")
    p["value"] = "ghcr.io/kubellm/serve-cpu"
    bad = tmp_path / "bad.yaml"
    bad.write_text(cli.to_yaml(doc))  # quoted as kubellm compile writes it (PyYAML leaves 2e-4 bare)
    # from another folder: k8s/ is then the kubellm checkout's
    r = subprocess.run([sys.executable, "-m", "workflows.cli", "lint", str(bad)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert [line.split(": ", 2)[:2] for line in lines] == [
        ["bad.yaml", "spec.volumes[0].persistentVolumeClaim.claimName"], ["bad.yaml", f"{ppath}.value"]]
    assert "PersistentVolumeClaim 'kubellm-model' is not defined by k8s/overlays/cpu + k8s/rag" in lines[0]
    assert "2 problem(s)" in r.stderr


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_cli_options(tmp_path, doc, capsys):
    doc["spec"]["serviceAccountName"] = "kubellm-workflows"
    bad = tmp_path / "bad.yaml"
    bad.write_text(cli.to_yaml(doc))
    assert cli.main(["lint", str(bad), "--no-cluster"]) == 0  # strict lint alone: nothing wrong
    assert "workflow checks only" in capsys.readouterr().err
    assert cli.main(["lint", str(bad), "--overlay", "overlays/gpu"]) == 1
    assert capsys.readouterr().out == ("bad.yaml: spec.serviceAccountName: ServiceAccount 'kubellm-workflows' is not "
                                       "defined by k8s/overlays/gpu (it defines: kubellm-workflow)\n")
    with pytest.raises(SystemExit, match="cannot build the cluster objects of .*nowhere/overlays/cpu"):
        cli.main(["lint", str(bad), "--k8s", str(tmp_path / "nowhere")])
    # strict-lint problems and cluster problems come together, each once
    doc["spec"]["entrypoint"] = "mian"
    bad.write_text(cli.to_yaml(doc))
    assert cli.main(["lint", str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[1] for line in out] == ["spec.entrypoint", "spec.serviceAccountName"]
