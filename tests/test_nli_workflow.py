"""The nli workflow as rendered: its shape, the deploy nodes' objects against k8s/nli, bad parameters
(snapshot and lint: test_rendered.py; the run itself: test_ui_browser.py, started from the UI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workflows import cli, nli
from workflows.argo import conditions

ROOT = Path(__file__).resolve().parents[1]


def templates(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in doc["spec"]["templates"]}


def k8s_objects() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s" / "nli" / "nli-service.yaml").read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_the_deployment_the_workflow_applies_is_the_one_in_k8s_nli():
    """One object, two places: `kubectl apply -k k8s/nli` installs version `current`, the deploy node
    the trained version; a change to one without the other fails here."""
    image = nli.PARAMS["steps-image"].default
    assert k8s_objects()["Deployment/kubellm-nli"] == nli.deployment("current", image)


def test_network_policies_let_the_smoke_node_reach_the_service():
    """The namespace denies all traffic (k8s/base); the smoke pod needs egress to the service's port
    and the service's pods ingress from it."""
    objs = k8s_objects()
    pod = nli.deployment("current", "img")["spec"]["template"]
    smoke_labels = {"workflows.argoproj.io/workflow": "nli-x"}
    egress = objs["NetworkPolicy/allow-workflow-egress-to-nli"]["spec"]
    assert all(smoke_labels.get(e["key"]) for e in egress["podSelector"]["matchExpressions"])
    (rule,) = egress["egress"]
    assert rule["to"][0]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    port_names = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert {p["port"] for p in rule["ports"]} <= port_names
    ingress = objs["NetworkPolicy/allow-clients-to-nli"]["spec"]
    assert ingress["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert {"podSelector": {}} in ingress["ingress"][0]["from"]  # every pod of the namespace


def test_the_settings_the_workflow_applies_are_the_ones_in_k8s_nli():
    shipped = yaml.safe_load((ROOT / "k8s" / "nli" / "nli-config.yaml").read_text())
    rendered = yaml.safe_load(nli.service_config(nli.PARAMS["max-batch-size"].default, nli.PARAMS["max-wait-ms"].default))
    assert rendered == shipped
    from steps.nli_service import NliServiceConfig

    NliServiceConfig(**rendered)  # every key is a service setting


def test_deploy_applies_the_trained_version_and_waits_for_the_rollout():
    doc = cli.compile_doc("nli", "s3", {})
    t = templates(doc)
    deploy = t["deploy"]["resource"]
    assert deploy["action"] == "apply"
    manifest = yaml.safe_load(deploy["manifest"])
    assert manifest == nli.deployment("{{workflow.name}}", "{{workflow.parameters.steps-image}}")
    args = manifest["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model") + 1] == "/models/nli/{{workflow.name}}"
    reqs = conditions.parse(deploy["successCondition"])
    rolled = {"status": {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}}
    midway = {"status": {"replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2,
                         "unavailableReplicas": 1}}
    assert conditions.check(rolled, reqs, []) == "succeeded"
    assert conditions.check(midway, reqs, []) is None
    cfg = yaml.safe_load(t["deploy-config"]["resource"]["manifest"])
    assert cfg["metadata"]["name"] == "kubellm-nli-config"
    # publish writes the version the Deployment reads; smoke checks that version through the Service
    pub = t["publish"]["container"]["args"]
    assert pub[pub.index("--root") + 1] == "/models/nli" and pub[pub.index("--version") + 1] == "{{workflow.name}}"
    smoke = t["smoke"]["container"]["args"]
    assert smoke[smoke.index("--url") + 1] == "{{workflow.parameters.service-url}}"
    tasks = {x["name"]: x for x in t["main"]["dag"]["tasks"]}
    assert tasks["deploy"]["depends"] == "deploy-config"
    assert tasks["smoke"]["depends"] == "deploy"
    assert tasks["deploy-config"]["depends"] == "publish"


def test_method_full_publishes_the_merged_model():
    t = templates(cli.compile_doc("nli", "s3", {"method": "full"}))
    assert t["publish"]["container"]["args"][1].endswith("/merged")
    assert t["evaluate"]["container"]["args"][5].endswith("/merged")
    t = templates(cli.compile_doc("nli", "s3", {}))
    assert t["publish"]["container"]["args"][1].endswith("/adapter")


@pytest.mark.parametrize("params,error", [
    ({"max-batch-size": "0"}, "parameter max-batch-size='0': Input should be greater than or equal to 1 (it sets "
                              "NliServiceConfig.max_batch_size)"),
    ({"service-url": "kubellm-nli"}, "parameter service-url='kubellm-nli': String should match pattern"),
    ({"method": "dora"}, "parameter method='dora' must be one of ['lora', 'qlora', 'full']"),
    ({"method": "qlora"}, "method=qlora quantizes the model to 4 bits"),
    ({"lora-layers": "-1"}, "parameter lora-layers='-1'"),
    ({"gpus": "1", "steps-image": "ghcr.io/kubellm/steps-cpu:0.1.0"}, "is the CPU image"),
    ({"model": "no-such-model"}, "parameter model:"),
    ({"replicas": "3"}, "unknown parameter(s) ['replicas']"),
])
def test_bad_parameters_are_refused_before_anything_runs(params, error, capsys):
    with pytest.raises(SystemExit) as e:
        cli.compile_doc("nli", "s3", params)
    assert error in str(e.value)
