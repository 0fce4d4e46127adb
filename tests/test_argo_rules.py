"""Argo's own rules in `kubellm lint`: each planted violation is reported at its exact field path.

Each file of tests/fixtures/argo_bad/ is a small Workflow that breaks one rule: its first line
names the rule and the Argo function it comes from, its `# expect:` lines the field paths Argo's
rule must be reported at, and nothing else of the file may be wrong.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflows.argo.parse import (argo_duration_error, go_duration_error, go_float_error, go_float_text,
                                  quantity_error, yaml_scalar)
from workflows.argo.rules import argo_problems, unquoted_scalars
from workflows.lint import lint_file, lint_workflow

ROOT = Path(__file__).resolve().parents[1]
BAD = Path(__file__).parent / "fixtures" / "argo_bad"
GOOD = Path(__file__).parent / "fixtures" / "workflows"


def expected_paths(path: Path) -> list[str]:
    return re.findall(r"^# expect: (\S+)$", path.read_text(), re.M)


def paths(problems: list[str]) -> set[str]:
    return {p.split(": ", 1)[0] for p in problems}


@pytest.mark.parametrize("name", sorted(p.name for p in BAD.glob("*.yaml")))
def test_each_planted_violation_is_reported_at_its_field_path(name):
    path = BAD / name
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Rule: ") and re.search(r"\w+\.go|\b[A-Z]\w+\.\w+", first), first
    expect = expected_paths(path)
    assert expect, "the fixture names no expected field path"
    problems = argo_problems(yaml.safe_load(path.read_text()))
    assert paths(problems) == set(expect), problems
    # the rest of the workflow is valid: the whole lint finds nothing at any other field
    others = [p for p in lint_file(path) if p.split(": ", 2)[1] not in expect]
    assert others == []


@pytest.mark.parametrize("name", sorted(p.name for p in GOOD.glob("*.yaml")))
def test_valid_workflows_have_no_argo_problems(name):
    for doc in yaml.safe_load_all((GOOD / name).read_text()):
        assert argo_problems(doc) == []


def test_pipeline_fixture_lints_clean():
    assert argo_problems(yaml.safe_load((GOOD / "pipeline.yaml").read_text())) == []
    assert lint_file(GOOD / "pipeline.yaml") == []


def test_the_cli_reports_file_and_field():
    fixture = BAD / "quantity-templated.yaml"
    r = subprocess.run([sys.executable, "-m", "workflows.cli", "lint", "--no-cluster", str(fixture)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert [line.split(": ", 2)[:2] for line in lines] == [
        ["quantity-templated.yaml", "spec.templates[0].container.resources.requests.memory"],
        ["quantity-templated.yaml", "spec.templates[0].container.resources.limits.nvidia.com/gpu"]]
    assert "'{{workflow.parameters.gpus}}' is not a Kubernetes quantity" in lines[1]
    assert "podSpecPatch" in lines[1]
    assert "2 problem(s)" in r.stderr


def test_the_cli_reports_an_artifact_path_on_a_dag():
    fixture = BAD / "artifact-path-dag.yaml"
    r = subprocess.run([sys.executable, "-m", "workflows.cli", "lint", "--no-cluster", str(fixture)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stdout.startswith("artifact-path-dag.yaml: spec.templates[1].inputs.artifacts[0].path: only "
                               "container/script templates can put an artifact on a path ('study' is a dag template")


def test_lint_workflow_prefixes_the_source():
    doc = yaml.safe_load((BAD / "parallelism-leaf.yaml").read_text())
    assert lint_workflow(doc, "p.yaml") == [
        "p.yaml: spec.templates[0].parallelism: only valid for steps and dag templates: set it on the template "
        "that calls this one"]


def test_a_variable_lint_already_reports_is_not_repeated():
    doc = yaml.safe_load((GOOD / "pipeline.yaml").read_text())
    doc["spec"]["templates"][0]["container"]["args"][1] = "{{inputs.parameters.greting}}"
    assert argo_problems(doc) == []
    [problem] = lint_workflow(doc, "p.yaml")
    assert "has no input parameter 'greting'" in problem


def test_variables_lint_does_not_read():
    doc = yaml.safe_load((GOOD / "pipeline.yaml").read_text())
    doc["spec"]["templates"][0]["container"]["args"][1] = "{{pod.name}} {{workflow.uid}} {{workflow.labels.app}}"
    assert argo_problems(doc) == []  # all three are defined for a container template
    doc["spec"]["templates"][0]["container"]["args"][1] = "{{workflow.labels.team}} {{tasks.x.outputs.result}}"
    problems = argo_problems(doc)
    field = "spec.templates[0].container.args[1]"
    assert [p.split(": ", 2)[:2] for p in problems] == [
        [field, "'{{workflow.labels.team}}' cannot be resolved in template 'gen' (Argo"],
        [field, "'{{tasks.x.outputs.result}}' cannot be resolved in template 'gen' (Argo"]]


def test_other_kinds_use_their_spec():
    cron = {"apiVersion": "argoproj.io/v1alpha1", "kind": "CronWorkflow", "metadata": {"name": "n" * 53},
            "spec": {"schedule": "0 * * * *", "concurrencyPolicy": "Sometimes", "workflowSpec": {
                "entrypoint": "w", "templates": [{"name": "w", "container": {
                    "image": "alpine:3.20", "resources": {"limits": {"cpu": "1 core"}}}}]}}}
    assert paths(argo_problems(cron)) == {"metadata.name", "spec.concurrencyPolicy",
                                          "spec.workflowSpec.templates[0].container.resources.limits.cpu"}
    assert argo_problems({"kind": "ConfigMap", "data": {"a": "b"}}) == []


def test_workflow_parameter_values_reach_metric_names():
    doc = yaml.safe_load((BAD / "metric-names.yaml").read_text())
    metric = doc["spec"]["templates"][0]["metrics"]["prometheus"][2]
    metric["name"] = "kubellm_{{workflow.parameters.suffix}}"
    doc["spec"]["arguments"] = {"parameters": [{"name": "suffix", "value": "rows_total"}]}
    assert "spec.templates[0].metrics.prometheus[2].name" not in paths(argo_problems(doc))
    doc["spec"]["arguments"]["parameters"][0]["value"] = "rows-total"
    assert "spec.templates[0].metrics.prometheus[2].name" in paths(argo_problems(doc))


# --------------------------------------------------------------------------- unquoted YAML scalars

SNIPPET = """\
spec:
  arguments:
    parameters:
    - {name: learning-rate, value: 2e-4}
    - {name: quoted, value: '2e-4'}
    - {name: flag, value: yes}
    - {name: octal, value: 017}
    - {name: empty, value: }
    - {name: text, value: 2e-4x}
    - name: block
      value: |
        2e-4
  templates:
  - name: t
    inputs:
      parameters:
      - {name: steps, default: 1_000, enum: [1_000, '2000']}
    container: {image: alpine:3.20, args: [2e-4]}
"""


def test_unquoted_scalars_names_what_argo_reads():
    assert unquoted_scalars(SNIPPET) == [
        "spec.arguments.parameters[0].value: 2e-4 is not quoted: Argo's YAML decoder (sigs.k8s.io/yaml, YAML 1.1 "
        "rules) reads it as a number and keeps '0.0002'; quote it: '2e-4'",
        "spec.arguments.parameters[2].value: yes is not quoted: Argo's YAML decoder (sigs.k8s.io/yaml, YAML 1.1 "
        "rules) reads it as a boolean and keeps 'true'; quote it: 'yes'",
        "spec.arguments.parameters[3].value: 017 is not quoted: Argo's YAML decoder (sigs.k8s.io/yaml, YAML 1.1 "
        "rules) reads it as a number and keeps '15'; quote it: '017'",
        "spec.arguments.parameters[4].value: (empty) is not quoted: Argo's YAML decoder (sigs.k8s.io/yaml, YAML 1.1 "
        "rules) reads it as null: the parameter has no value; quote it: ''",
        "spec.templates[0].inputs.parameters[0].default: 1_000 is not quoted: Argo's YAML decoder (sigs.k8s.io/yaml, "
        "YAML 1.1 rules) reads it as a number and keeps '1000'; quote it: '1_000'",
        "spec.templates[0].inputs.parameters[0].enum[0]: 1_000 is not quoted: Argo's YAML decoder (sigs.k8s.io/yaml, "
        "YAML 1.1 rules) reads it as a number and keeps '1000'; quote it: '1_000'",
    ]


def test_unquoted_scalars_in_several_documents_and_in_bad_yaml():
    two = "spec: {arguments: {parameters: [{name: a, value: '1'}]}}\n---\n" \
          "spec: {arguments: {parameters: [{name: a, value: 1.5}]}}\n"
    [problem] = unquoted_scalars(two)
    assert problem.startswith("#1: spec.arguments.parameters[0].value: 1.5 is not quoted")
    assert unquoted_scalars("spec: [unclosed") == []


def test_pyyaml_and_argo_disagree_on_2e_4():
    # the reason unquoted_scalars reads the text: PyYAML keeps 2e-4 a string, so the parsed
    # document looks fine to argo_problems
    doc = yaml.safe_load(SNIPPET)
    assert doc["spec"]["arguments"]["parameters"][0]["value"] == "2e-4"
    assert yaml_scalar("2e-4") == 0.0002


# --------------------------------------------------------------------------- Go parsers

@pytest.mark.parametrize("text", ["1", "500m", "2Gi", "1.5Gi", "0.1n", "1e3", "1E", "+5", "-1", "1.", ".5", "0", "-",
                                  "100Ki", "12345678901234567890", "2e-3", "1E+3"])
def test_valid_quantities(text):
    assert quantity_error(text) is None


@pytest.mark.parametrize("text", ["{{inputs.parameters.cpu}}", "", "1e", "1Ki3", "10GB", "1gb", "two", "0x10",
                                  "1 Gi", "1.5.5", ".e-10"])
def test_invalid_quantities(text):
    assert quantity_error(text) is not None


def test_go_durations():
    assert [go_duration_error(d) is None for d in ("1h", "1h30m", "0", "-1.5s", "300ms", "2\u00b5s")] == [True] * 6
    assert [go_duration_error(d) is None for d in ("1d", "3600", "", "h", "1 h")] == [False] * 5
    assert argo_duration_error("3600") is None and argo_duration_error("1d") is not None


def test_go_floats():
    assert [go_float_error(f) is None for f in ("1", "-2.5", ".5", "5.", "1e3", "Inf", "nan", "0x1p-2")] == [True] * 8
    assert [go_float_error(f) is None for f in ("one", "1_0", "+nan", "1e400", "")] == [False] * 5
    assert [go_float_text(v) for v in (0.0002, 1.0, 1e20, 1e-7, 2.5)] == ["0.0002", "1", "100000000000000000000",
                                                                           "0.0000001", "2.5"]


def test_yaml_scalars_as_go_yaml_v2_reads_them():
    assert [yaml_scalar(s) for s in ("2e-4", "1.0", "on", "No", "~", "0x1F", "0b11", "08", "-.inf")] == [
        0.0002, 1.0, True, False, None, 31, 3, 8.0, float("-inf")]
    assert [yaml_scalar(s) for s in ("2001-12-14", "abc", "+", "1.2.3", "v1", "2e-4x")] == [
        "2001-12-14", "abc", "+", "1.2.3", "v1", "2e-4x"]
