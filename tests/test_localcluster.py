"""Resource templates on the local runner: Argo's condition language, strategic merge, and the local
cluster that runs Deployments as processes (workflows/runner/localcluster.py, docs/runner.md)."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from tests.conftest import free_port
from workflows.argo import conditions
from workflows.runner import WorkflowError, run_workflow
from workflows.runner.localcluster import LocalCluster, deployments, stop_deployments, strategic_merge


# -- conditions --------------------------------------------------------------------------------

DEPLOYMENT_STATUS = {"status": {"replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
                                "phase": "Running", "conditions": [{"type": "Available", "status": "True"}]},
                     "metadata": {"labels": {"app.kubernetes.io/name": "web"}}}


@pytest.mark.parametrize("text,holds", [
    ("status.updatedReplicas > 0", True),
    ("status.updatedReplicas > 2", False),
    ("status.updatedReplicas < 3", True),
    ("status.updatedReplicas == 2, status.availableReplicas = 2", True),
    ("status.updatedReplicas != 2", False),
    ("!status.unavailableReplicas", True),
    ("status.unavailableReplicas", False),
    ("status.phase in (Running, Succeeded)", True),
    ("status.phase notin (Failed, Error)", True),
    ("status.missing notin (x)", True),  # labels.Requirement.Matches: absent keys match notin
    ("status.missing != x", True),
    ("status.missing > 0", False),  # absent keys never compare
    ("status.phase > 1", False),  # a value that is not an integer never compares
    ("status.conditions.0.type == Available", True),
    ("status.conditions.1.type == Available", False),
    ("metadata.labels.app\\.kubernetes\\.io/name", None),  # escaped dots are not a valid key: refused
])
def test_conditions_match_as_argo_evaluates_them(text, holds):
    if holds is None:
        with pytest.raises(ValueError, match="not a valid key"):
            conditions.parse(text)
        return
    reqs = conditions.parse(text)
    assert all(conditions.holds(r, DEPLOYMENT_STATUS) for r in reqs) is holds


@pytest.mark.parametrize("text,error", [
    ("status.replicas > two", "must be an integer"),
    ("status.replicas >", "expected a value"),
    ("status.phase in Running", "expected '('"),
    ("status.phase in (a b)", "expected ',' or ')'"),
    ("status.a = 1 status.b = 2", "expected ',' between requirements"),
    ("status.a = 1,", "trailing ','"),
    ("= 1", "expected a key"),
    ("status.phase = " + "x" * 64, "not a valid value"),
    ("status.replicas > -1", "not a valid value"),  # k8s validates a number as a label value too
])
def test_conditions_that_argo_cannot_parse_are_refused(text, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        conditions.parse(text)


def test_check_fails_first_then_needs_every_success_requirement():
    success = conditions.parse("status.updatedReplicas > 0, status.availableReplicas > 1")
    failure = conditions.parse("status.phase in (Failed)")
    assert conditions.check(DEPLOYMENT_STATUS, success, failure) == "succeeded"
    half = {"status": {"updatedReplicas": 1, "availableReplicas": 1}}
    assert conditions.check(half, success, failure) is None
    failed = {"status": {"updatedReplicas": 1, "availableReplicas": 2, "phase": "Failed"}}
    assert conditions.check(failed, success, failure).startswith("failed: failure condition 'status.phase in (Failed)'")


# -- strategic merge -----------------------------------------------------------------------------

def test_strategic_merge_merges_containers_env_and_mounts_by_key():
    base = {"spec": {"replicas": 2, "template": {"spec": {"containers": [
        {"name": "a", "args": ["--x"], "env": [{"name": "K", "value": "1"}, {"name": "L", "value": "2"}],
         "volumeMounts": [{"name": "m", "mountPath": "/m"}]},
        {"name": "b", "image": "i"}]}}}}
    patch = {"spec": {"replicas": None, "template": {"spec": {"containers": [
        {"name": "a", "args": ["--y"], "env": [{"name": "L", "value": "3"}, {"name": "M", "value": "4"}],
         "volumeMounts": [{"name": "n", "mountPath": "/m"}]}]}}}}
    out = strategic_merge(base, patch)
    a, b = out["spec"]["template"]["spec"]["containers"]
    assert "replicas" not in out["spec"]
    assert a["args"] == ["--y"]  # a list of scalars is replaced
    assert a["env"] == [{"name": "K", "value": "1"}, {"name": "L", "value": "3"}, {"name": "M", "value": "4"}]
    assert a["volumeMounts"] == [{"name": "n", "mountPath": "/m"}]
    assert b == {"name": "b", "image": "i"}
    # a JSON merge patch replaces lists whole
    assert strategic_merge(base, patch, strategic=False)["spec"]["template"]["spec"]["containers"] == \
        patch["spec"]["template"]["spec"]["containers"]


# -- the local cluster -----------------------------------------------------------------------------

def web_deployment(port: int, version: str, command: list[str] | None = None) -> dict:
    """A Deployment whose container serves its ConfigMap's files over HTTP: the mount is visible."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}, "annotations": {"version": version}},
            "spec": {"containers": [{
                "name": "web", "image": "python:3",
                "command": command or ["python", "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                                       "/etc/web", str(port)],
                "env": [{"name": "VERSION", "value": version}],
                "ports": [{"name": "http", "containerPort": port}],
                "readinessProbe": {"httpGet": {"path": "/page.txt", "port": "http"}},
                "volumeMounts": [{"name": "pages", "mountPath": "/etc/web", "readOnly": True}]}],
                "volumes": [{"name": "pages", "configMap": {"name": "web-pages"}}]}}}}


def pages(text: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-pages"}, "data": {"page.txt": text}}


def wait(cluster: LocalCluster, obj: dict, timeout: float = 30) -> str:
    success = conditions.parse("status.updatedReplicas > 0, status.availableReplicas > 0, !status.unavailableReplicas")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        outcome, _ = cluster.wait_state(obj, success, [])
        if outcome:
            return outcome
        time.sleep(0.2)
    return "timeout"


def get(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=5).text


def test_deployment_runs_as_a_process_with_its_configmap_and_rolls_on_change(tmp_path):
    port = free_port()
    cluster = LocalCluster(tmp_path / "cluster", {}, {"PATH": os.environ["PATH"]})
    try:
        cluster.act("apply", pages("one"), "strategic", "t")
        obj = cluster.act("apply", web_deployment(port, "v1"), "strategic", "t")
        assert obj["metadata"]["generation"] == 1
        assert wait(cluster, obj) == "succeeded"
        assert get(f"http://127.0.0.1:{port}/page.txt") == "one"
        table = json.loads((tmp_path / "cluster" / "endpoints.json").read_text())
        assert table["web"] == table["web.default.svc.cluster.local"] == f"http://127.0.0.1:{port}"
        pid = deployments(tmp_path / "cluster")[0]["pid"]

        # the same spec again: nothing restarts, the generation stays
        again = cluster.act("apply", web_deployment(port, "v1"), "strategic", "t")
        assert again["metadata"]["generation"] == 1 and deployments(tmp_path / "cluster")[0]["pid"] == pid

        # a new version and new settings: a new process that reads the new ConfigMap
        cluster.act("apply", pages("two"), "strategic", "t")
        new = cluster.act("apply", web_deployment(port, "v2"), "strategic", "t")
        assert new["metadata"]["generation"] == 2
        assert wait(cluster, new) == "succeeded"
        d = deployments(tmp_path / "cluster")[0]
        assert d["pid"] != pid and d["annotations"] == {"version": "v2"} and d["running"]
        assert get(f"http://127.0.0.1:{port}/page.txt") == "two"

        # a patch merges into the stored object (the container by name)
        patched = cluster.act("patch", {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                                        "spec": {"template": {"metadata": {"annotations": {"version": "v3"}}}}},
                              "strategic", "t")
        assert patched["spec"]["template"]["spec"]["containers"][0]["name"] == "web"
        assert patched["metadata"]["generation"] == 3
    finally:
        assert stop_deployments(tmp_path / "cluster") == ["default/web"]
    assert not deployments(tmp_path / "cluster")[0]["running"]
    assert json.loads((tmp_path / "cluster" / "endpoints.json").read_text()) == {}


def test_refusals_name_the_object_and_the_fix(tmp_path):
    from workflows.runner.errors import TaskError

    cluster = LocalCluster(tmp_path / "cluster", {}, {"PATH": os.environ["PATH"]})
    with pytest.raises(TaskError, match="not found in the local cluster: a patch needs the object"):
        cluster.act("patch", web_deployment(1, "v1"), "strategic", "t")
    with pytest.raises(TaskError, match="ConfigMap 'web-pages' is not in the local cluster"):
        cluster.act("apply", web_deployment(free_port(), "v1"), "strategic", "t")
    with pytest.raises(TaskError, match="batch/v1 Job cannot run locally"):
        cluster.act("apply", {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}}, "strategic", "t")
    cluster.act("create", pages("x"), "strategic", "t")
    with pytest.raises(TaskError, match="already exists in the local cluster"):
        cluster.act("create", pages("x"), "strategic", "t")


def test_a_container_that_exits_fails_the_wait_with_its_log(tmp_path):
    cluster = LocalCluster(tmp_path / "cluster", {}, {"PATH": os.environ["PATH"]})
    cluster.act("apply", pages("x"), "strategic", "t")
    obj = cluster.act("apply", web_deployment(free_port(), "v1", ["python", "-c", "print('no model here'); raise SystemExit(3)"]),
                      "strategic", "t")
    outcome = wait(cluster, obj)
    assert outcome.startswith("failed: its container exited") and "no model here" in outcome


# -- through the runner ----------------------------------------------------------------------------

def workflow(port: int) -> dict:
    check = ("import os, sys, urllib.request; from steps.client import local_url; "
             "url = local_url('http://web/page.txt'); print(url); "
             "body = urllib.request.urlopen(url).read().decode(); print(body); "
             "sys.exit(0 if body == '{{workflow.parameters.text}}' else 1)")
    return {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"generateName": "web-"},
        "spec": {"entrypoint": "main", "arguments": {"parameters": [{"name": "text", "value": "hello"}]},
                 "templates": [
                     {"name": "main", "dag": {"tasks": [
                         {"name": "config", "template": "config"},
                         {"name": "deploy", "template": "deploy", "depends": "config"},
                         {"name": "smoke", "template": "smoke", "depends": "deploy"}]}},
                     {"name": "config", "resource": {"action": "apply", "manifest": yaml.safe_dump(
                         pages("{{workflow.parameters.text}}"))}},
                     {"name": "deploy", "activeDeadlineSeconds": 60, "resource": {
                         "action": "apply", "manifest": yaml.safe_dump(web_deployment(port, "{{workflow.name}}")),
                         "successCondition": "status.updatedReplicas > 0, status.availableReplicas > 0"}},
                     {"name": "smoke", "container": {"image": "steps", "command": [sys.executable, "-c", check]}},
                 ]}}


def test_a_workflow_deploys_waits_for_the_rollout_and_reaches_the_service_by_name(tmp_path):
    port = free_port()
    console = Console(file=io.StringIO(), width=120)
    try:
        result = run_workflow(workflow(port), tmp_path / "run", cluster=tmp_path / "cluster", console=console)
        assert result.phase == "Succeeded", (result.message, result.log_tail)
        assert "deployment/web" in (tmp_path / "run" / "nodes" / "deploy" / "log.txt").read_text()
        assert (tmp_path / "run" / "nodes" / "smoke" / "log.txt").read_text().count(f"http://127.0.0.1:{port}/page.txt")
        # the service outlives the run, serving this run's version
        d = deployments(tmp_path / "cluster")[0]
        assert d["running"] and d["annotations"] == {"version": "run"}

        # a re-run with another text: the resource nodes act again, the container serves the new page
        result = run_workflow(workflow(port), tmp_path / "run2", cluster=tmp_path / "cluster", console=console,
                              parameters={"text": "again"})
        assert result.phase == "Succeeded", (result.message, result.log_tail)
        assert get(f"http://127.0.0.1:{port}/page.txt") == "again"
    finally:
        stop_deployments(tmp_path / "cluster")


def test_resource_templates_the_local_cluster_cannot_run_are_refused_before_anything_starts(tmp_path):
    doc = workflow(free_port())
    doc["spec"]["templates"][1]["resource"]["action"] = "delete"
    doc["spec"]["templates"][2]["resource"]["successCondition"] = "status.replicas > many"
    doc["spec"]["templates"][2]["resource"]["setOwnerReference"] = True
    with pytest.raises(WorkflowError) as e:
        run_workflow(doc, tmp_path / "run", cluster=tmp_path / "cluster")
    text = str(e.value)
    assert "spec.templates[1].resource.action: 'delete' is not supported by the local runner" in text
    assert "spec.templates[2].resource.successCondition: status.replicas > many: the value of > must be an integer" in text
    assert "spec.templates[2].resource.setOwnerReference: not supported by the local runner" in text
    assert not (tmp_path / "run" / "nodes").exists() and not (tmp_path / "cluster").exists()


def test_lint_reports_a_condition_argo_would_fail_to_parse_at_run_time():
    from workflows.lint import lint_workflow

    doc = workflow(8080)
    assert lint_workflow(doc, "web") == []
    doc["spec"]["templates"][2]["resource"]["failureCondition"] = "status.phase in Failed"
    assert lint_workflow(doc, "web") == [
        "web: spec.templates[2].resource.failureCondition: status.phase in: expected '(' and a list of values"]
