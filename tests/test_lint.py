"""Strict lint of rendered Workflows: each planted mistake is reported with its file and field path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workflows import cli
from workflows.lint import forbid_extra_fields, lint_file, lint_workflow

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
MAIN = 4  # index of the DAG template in pipeline.yaml
TASKS = f"spec.templates[{MAIN}].dag.tasks"


@pytest.fixture
def doc() -> dict:
    return yaml.safe_load((FIXTURES / "pipeline.yaml").read_text())


def tasks(doc: dict) -> list[dict]:
    return doc["spec"]["templates"][MAIN]["dag"]["tasks"]


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.yaml")))
def test_fixtures_lint_clean(name):
    assert lint_file(FIXTURES / name) == []


def test_unknown_field_is_caught_with_its_path(doc):
    doc["spec"]["templates"][0]["container"]["comand"] = ["python"]
    doc["spec"]["templates"][MAIN]["dag"]["tasks"][1]["withParms"] = "[]"
    assert lint_workflow(doc, "pipeline.yaml") == [
        "pipeline.yaml: spec.templates[0].container.comand: unknown field (not part of the Argo Workflow schema)",
        f"pipeline.yaml: {TASKS}[1].withParms: unknown field (not part of the Argo Workflow schema)",
    ]


def test_type_errors_are_reported(doc):
    doc["spec"]["parallelism"] = "lots"
    assert any(p.startswith("pipeline.yaml: spec.parallelism: ") for p in lint_workflow(doc, "pipeline.yaml"))


def test_dangling_template_reference(doc):
    tasks(doc)[0]["template"] = "gne"
    problems = lint_workflow(doc, "pipeline.yaml")
    assert f"pipeline.yaml: {TASKS}[0].template: unknown template 'gne' (templates are gen, shout, collect, say, main)" in problems


def test_dangling_entrypoint(doc):
    doc["spec"]["entrypoint"] = "mian"
    assert lint_workflow(doc, "p.yaml") == ["p.yaml: spec.entrypoint: unknown template 'mian' (templates are gen, shout, collect, say, main)"]


def test_dangling_depends(doc):
    tasks(doc)[2]["depends"] = "shout && shoot"
    assert lint_workflow(doc, "pipeline.yaml") == [
        f"pipeline.yaml: {TASKS}[2].depends: unknown task 'shoot' (tasks are gen, shout, collect, when-yes, when-no, pairs)"]


def test_dependency_cycle(doc):
    tasks(doc)[0]["depends"] = "collect"
    problems = lint_workflow(doc, "pipeline.yaml")
    assert any("dependency cycle" in p and "collect" in p and "gen" in p for p in problems), problems


def test_output_parameter_the_producer_does_not_declare(doc):
    tasks(doc)[2]["arguments"]["parameters"][0]["value"] = "{{tasks.shout.outputs.parameters.lower}}"
    assert lint_workflow(doc, "pipeline.yaml") == [
        f"pipeline.yaml: {TASKS}[2].arguments.parameters[0].value: '{{{{tasks.shout.outputs.parameters.lower}}}}': "
        "template 'shout' of task 'shout' declares no output parameter 'lower' (it has upper)"]


def test_output_artifact_the_producer_does_not_declare(doc):
    tasks(doc)[1]["arguments"]["artifacts"][0]["from"] = "{{tasks.gen.outputs.artifacts.dat}}"
    [problem] = lint_workflow(doc, "pipeline.yaml")
    assert problem.startswith(f"pipeline.yaml: {TASKS}[1].arguments.artifacts[0].from: ") and "no output artifact 'dat'" in problem


def test_reference_to_a_task_that_is_not_a_dependency(doc):
    tasks(doc)[5]["arguments"]["parameters"][0]["value"] = "{{tasks.gen.outputs.parameters.count}}"
    [problem] = lint_workflow(doc, "pipeline.yaml")
    assert f"{TASKS}[5].arguments.parameters[0].value" in problem and "not a dependency" in problem


def test_ip_of_a_task_that_is_not_a_daemon(doc):
    tasks(doc)[2]["arguments"]["parameters"][0]["value"] = "{{tasks.shout.ip}}"
    [problem] = lint_workflow(doc, "pipeline.yaml")
    assert "is not a daemon" in problem


def test_missing_volume(doc):
    doc["spec"]["templates"][1]["container"]["volumeMounts"][0]["name"] = "sharde"
    assert lint_workflow(doc, "pipeline.yaml") == [
        "pipeline.yaml: spec.templates[1].container.volumeMounts[0].name: no volume 'sharde' in spec.volumes, "
        "spec.volumeClaimTemplates or the template's volumes (have shared)"]


def test_undefined_workflow_parameter(doc):
    tasks(doc)[0]["arguments"]["parameters"][0]["value"] = "{{workflow.parameters.greting}}"
    assert lint_workflow(doc, "pipeline.yaml") == [
        f"pipeline.yaml: {TASKS}[0].arguments.parameters[0].value: '{{{{workflow.parameters.greting}}}}': "
        "no workflow parameter 'greting' (spec.arguments has greeting, mode)"]


def test_undefined_input_in_a_container_template(doc):
    doc["spec"]["templates"][0]["container"]["args"][1] = "{{inputs.parameters.greting}}"
    assert lint_workflow(doc, "pipeline.yaml") == [
        "pipeline.yaml: spec.templates[0].container.args[1]: '{{inputs.parameters.greting}}': template 'gen' "
        "has no input parameter 'greting' (inputs: greeting)"]


def test_missing_required_input_and_unknown_argument(doc):
    tasks(doc)[0]["arguments"]["parameters"][0]["name"] = "greetings"
    assert lint_workflow(doc, "pipeline.yaml") == [
        f"pipeline.yaml: {TASKS}[0]: template 'gen' needs input parameter 'greeting', which is not passed",
        f"pipeline.yaml: {TASKS}[0].arguments.parameters[0]: template 'gen' has no input parameter 'greetings' (inputs: greeting)",
    ]


def test_missing_required_input_artifact(doc):
    del tasks(doc)[1]["arguments"]["artifacts"]
    assert lint_workflow(doc, "pipeline.yaml") == [
        f"pipeline.yaml: {TASKS}[1]: template 'shout' needs input artifact 'data', which is not passed"]


def test_output_parameter_without_value_from(doc):
    del doc["spec"]["templates"][0]["outputs"]["parameters"][1]["valueFrom"]
    assert lint_workflow(doc, "pipeline.yaml") == [
        "pipeline.yaml: spec.templates[0].outputs.parameters[1]: output parameter 'count' has no valueFrom"]


def test_enum_must_contain_the_default(doc):
    doc["spec"]["arguments"]["parameters"][1]["value"] = "fastest"
    assert lint_workflow(doc, "pipeline.yaml") == [
        "pipeline.yaml: spec.arguments.parameters[1]: value 'fastest' of 'mode' is not in its enum (fast, slow)"]


def test_item_outside_a_loop(doc):
    tasks(doc)[3]["arguments"]["parameters"][0]["value"] = "{{item}}"
    assert lint_workflow(doc, "pipeline.yaml") == [
        f"pipeline.yaml: {TASKS}[3].arguments.parameters[0].value: '{{{{item}}}}' outside withItems/withParam"]


def test_strict_models_are_restored_afterwards(doc):
    from hera.workflows import Container, Workflow
    from hera.workflows.models import Workflow as WorkflowModel

    with forbid_extra_fields() as strict:
        with pytest.raises(Exception, match="comand"):
            strict.model_validate({"metadata": {"name": "w"}, "spec": {"templates": [{"name": "a", "container": {"image": "x", "comand": []}}]}})
    # lenient again: Argo's decoder and Hera's serialisation both ignore unknown keys
    WorkflowModel.model_validate({"metadata": {"name": "w"}, "spec": {"templates": [{"name": "a", "container": {"image": "x", "comand": []}}]}})
    with Workflow(name="w", entrypoint="c") as w:
        Container(name="c", image="python:3.11", command=["python", "-c", "pass"])
    assert w.to_dict()["spec"]["templates"][0]["container"]["command"][0] == "python"


def test_kubellm_lint_exit_codes(tmp_path, capsys, doc):
    # `kubellm lint` is the one command line; --no-cluster: these fixtures are not cluster workflows
    assert cli.main(["lint", "--no-cluster", str(FIXTURES / "pipeline.yaml")]) == 0
    doc["spec"]["entrypoint"] = "nope"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert cli.main(["lint", "--no-cluster", str(bad)]) == 1
    assert "bad.yaml: spec.entrypoint: unknown template 'nope'" in capsys.readouterr().out

