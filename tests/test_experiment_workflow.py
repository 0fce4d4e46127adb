"""The experiment workflow as rendered: shape, bad parameters (snapshot and lint: test_rendered.py)."""

from __future__ import annotations

import json

from pathlib import Path

import pytest
import yaml

from workflows import experiment

ROOT = Path(__file__).resolve().parents[1]
RENDERED = {"s3": ROOT / "workflows/rendered/experiment.yaml", "pvc": ROOT / "workflows/rendered/experiment-pvc.yaml"}


def test_shape_one_server_at_a_time_and_keyed_outputs():
    spec = yaml.safe_load(RENDERED["s3"].read_text())["spec"]
    t = {x["name"]: x for x in spec["templates"]}
    assert t["main"]["parallelism"] == 1  # each model's nested DAG, server included, is one running task
    main = {x["name"]: x for x in t["main"]["dag"]["tasks"]}
    assert main["model"]["withParam"] == "{{tasks.plan.outputs.parameters.models}}" and main["model"]["template"] == "model"
    assert main["collect"]["depends"] == "model"
    model = {x["name"]: x for x in t["model"]["dag"]["tasks"]}
    assert model["study"]["depends"] == "serve" and model["study"]["template"] == "study"
    assert "--enable-lora" in t["serve"]["container"]["args"] and t["serve"]["daemon"] is True
    # per-model quantities are parameters: Argo takes them in podSpecPatch, never in `resources`
    patch = t["serve"]["podSpecPatch"]
    assert '"nvidia.com/gpu": "{{inputs.parameters.gpus}}"' in patch and '"memory": "{{inputs.parameters.memory}}"' in patch
    assert "{{" not in json.dumps(t["serve"]["container"]["resources"])
    assert "nodeSelector" in patch
    study = {x["name"]: x for x in t["study"]["dag"]["tasks"]}
    assert study["extract"]["depends"] == "query" and "depends" not in study["probabilities"]
    key = "{{workflow.parameters.experiment}}/{{inputs.parameters.slug}}/{{inputs.parameters.ts}}/{{inputs.parameters.study}}"
    assert t["query"]["outputs"]["artifacts"][0]["s3"] == {"key": f"{key}/raw"}
    assert t["extract"]["inputs"]["artifacts"][1]["s3"] == {"key": f"{key}/raw"}
    assert "{{inputs.parameters.slug}}_{{inputs.parameters.study}}_raw_responses.csv" in t["query"]["container"]["args"]
    for name in ("query", "extract", "probabilities"):
        assert t[name]["retryStrategy"]["limit"] == "3", name
    assert experiment.build(params={"max-servers": "3"}).to_dict()["spec"]["templates"][-1]["name"]  # builds
    par = {x["name"]: x for x in experiment.build(params={"max-servers": "3"}).to_dict()["spec"]["templates"]}
    assert par["main"]["parallelism"] == 3


@pytest.mark.parametrize("params, expected", [
    ({"models": ""}, "the list is empty"), ({"studies": "nope"}, "neither a YAML file nor a bundled study"),
    ({"max-servers": "0"}, "max-servers='0': Input should be greater than or equal to 1"),
        ({"node-selector": "[1]"}, "node-selector='[1]': Input should be a valid dictionary"),
    ({"extractor-url": "http://x"}, "extractor is empty"), ({"bogus": "1"}, "unknown parameter"),
    ({"extract-mode": "magic"}, "must be one of"),
    ({"models": "smollm2-135m,nope"}, "parameter models: unknown model 'nope'"),
])
def test_bad_parameters_fail_before_any_work(params, expected):
    with pytest.raises(ValueError) as e:
        experiment.validate_params(params)
    assert expected in str(e.value)
