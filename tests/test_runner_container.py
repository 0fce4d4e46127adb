"""What a container template becomes on this machine (workflows/runner/container.py): its environment,
its paths, and the podSpecPatch it may carry. Real processes, as in test_runner.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_runner import FIXTURES, one_task, quiet
from workflows.runner import check_supported, run_file, run_workflow


def test_env_secret_and_path_rewriting(tmp_path, monkeypatch):
    monkeypatch.setenv("API_KEY", "s3cret")
    monkeypatch.setenv("UNSET_TOKEN", "")
    monkeypatch.delenv("UNSET_TOKEN")
    program = ("import os, sys; open(sys.argv[1], 'w').write("
               "os.environ['API_KEY'] + '|' + str('UNSET_TOKEN' in os.environ) + '|' + os.environ['OUT'] + '|'"
               " + os.environ['KUBELLM_LOCAL_RUN'] + '|' + os.environ['ARGO_PROGRESS_FILE'] + '|' + sys.argv[2])")
    doc = one_task({"command": ["python", "-c", program], "args": ["/out/x.txt", "$(API_KEY)"],
                    "env": [{"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "api"}}},
                            {"name": "UNSET_TOKEN", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "t"}}},
                            {"name": "OUT", "value": "/out/x.txt"}]},
                   outputs={"artifacts": [{"name": "x", "path": "/out/x.txt"}]})
    result = run_workflow(doc, tmp_path, console=quiet())
    assert result.ok, result.message
    local = tmp_path / "nodes" / "step" / "artifacts" / "x"
    assert local.read_text() == f"s3cret|False|{local}|1|{tmp_path / 'nodes' / 'step' / 'progress'}|s3cret"
    assert "s3cret" not in (tmp_path / "nodes" / "step" / "log.txt").read_text()


def placed(patch: str, **params: str) -> dict:
    doc = one_task({"command": ["python", "-c", "print('ran')"]}, podSpecPatch=patch)
    doc["spec"]["arguments"] = {"parameters": [{"name": k, "value": v} for k, v in params.items()]}
    return doc


def test_pod_spec_patch_that_only_places_the_pod_is_ignored(tmp_path):
    patch = '{"nodeSelector": {{workflow.parameters.node-selector}}, "tolerations": {{workflow.parameters.tolerations}}}'
    doc = placed(patch, **{"node-selector": '{"gpu": "a100"}',
                           "tolerations": '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]'})
    assert check_supported(doc) == []
    result = run_workflow(doc, tmp_path / "json", console=quiet())
    assert result.ok, result.message
    assert "ran" in (tmp_path / "json" / "nodes" / "step" / "log.txt").read_text()
    # Argo also takes YAML
    assert run_workflow(placed("priorityClassName: batch\naffinity: {}"), tmp_path / "yaml", console=quiet()).ok


def test_pod_spec_patch_that_changes_what_runs_fails_the_node(tmp_path):
    doc = placed('{"nodeSelector": {}, "containers": [{"name": "main", "image": "other"}], "hostNetwork": true}')
    result = run_workflow(doc, tmp_path / "containers", console=quiet())
    assert result.phase == "Failed" and result.nodes["step"]["phase"] == "Error"
    assert result.nodes["step"]["message"].startswith("spec.templates[0].podSpecPatch: sets containers[0].image, "
                                                      "hostNetwork, which changes what runs")
    assert not (tmp_path / "containers" / "nodes" / "step" / "log.txt").exists()  # nothing ran

    doc = placed('{"nodeSelector": {{workflow.parameters.node-selector}}}', **{"node-selector": "{gpu"})
    result = run_workflow(doc, tmp_path / "garbled", console=quiet())
    assert result.nodes["step"]["phase"] == "Error"
    assert "spec.templates[0].podSpecPatch: does not parse" in result.nodes["step"]["message"]


def test_pod_spec_patch_may_size_argo_containers(tmp_path):
    # how a workflow gives a templated GPU count: Argo decodes `resources` before substituting {{...}}
    patch = ('{"nodeSelector": {"gpu": "a100"}, "containers": [{"name": "main", "resources": {"limits": '
             '{"nvidia.com/gpu": "{{workflow.parameters.gpus}}"}}}, {"name": "wait", "resources": {}}]}')
    doc = placed(patch, gpus="2")
    assert check_supported(doc) == []
    result = run_workflow(doc, tmp_path, console=quiet())
    assert result.ok, result.message
    assert "ran" in (tmp_path / "nodes" / "step" / "log.txt").read_text()


@pytest.mark.parametrize("container, refused", [
    ({"name": "main", "command": ["sh"], "resources": {}}, "containers[0].command"),
    ({"name": "main", "env": [{"name": "X", "value": "1"}]}, "containers[0].env"),
    ({"name": "helper", "resources": {"limits": {"cpu": "1"}}}, "containers[0]"),  # a sidecar, however small
])
def test_pod_spec_patch_container_fields_beyond_resources_fail_the_node(tmp_path, container, refused):
    result = run_workflow(placed(json.dumps({"containers": [container]})), tmp_path, console=quiet())
    assert result.phase == "Failed" and result.nodes["step"]["phase"] == "Error"
    assert result.nodes["step"]["message"].startswith(
        f"spec.templates[0].podSpecPatch: sets {refused}, which changes what runs; the local runner only ignores")
    assert not (tmp_path / "nodes" / "step" / "log.txt").exists()


def test_a_node_sees_only_its_declared_env_the_allow_list_and_the_runners_own(tmp_path, monkeypatch):
    import hashlib
    import secrets

    planted = "sk" f"-planted-{secrets.token_hex(16)}"
    monkeypatch.setenv("OPENAI_API_KEY", planted)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-aws")  # not declared by any node
    monkeypatch.setenv("VLLM_API_KEY", "planted-vllm")  # a credential is not let through by the VLLM_ prefix
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    console = quiet()
    result = run_file(FIXTURES / "secrets.yaml", tmp_path, console=console,
                      parameters={"key-sha256": hashlib.sha256(planted.encode()).hexdigest()})

    assert result.ok, result.message
    assert result.nodes["use-key"]["outputs"]["parameters"] == {"checked": "match"}
    names = set(json.loads(Path(result.nodes["list-env"]["outputs"]["artifacts"]["env"]).read_text()))
    assert not names & {"OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "VLLM_API_KEY"}
    assert {"PATH", "HOME", "VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE", "LC_ALL", "ARGO_PROGRESS_FILE",
            "KUBELLM_LOCAL_RUN"} <= names
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and planted.encode() in p.read_bytes()]
    assert leaks == [] and planted not in console.file.getvalue()
