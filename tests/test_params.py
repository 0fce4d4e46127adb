"""Workflow parameters: checked by the step configs they feed, compile-time ones refused at submit
time by the workflow's first node, JSON values passed through as text, images that can do the work,
and bad studies refused before any node runs with one clear message."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from workflows import cli, distill, experiment
from workflows.common import Param, check_params

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = {"distill": distill, "experiment": experiment}


def _check_args(doc: dict, submitted: dict[str, str]) -> list[str]:
    """The check-params node's command line with `{{workflow.parameters.X}}` resolved as Argo would:
    the submitted value, else the compiled default."""
    values = {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]} | submitted
    tmpl = next(t for t in doc["spec"]["templates"] if t["name"] == "check-params")
    sub = lambda s: re.sub(r"\{\{workflow\.parameters\.([\w-]+)\}\}", lambda m: values[m.group(1)], s)
    return tmpl["container"]["command"] + [sub(a) for a in tmpl["container"]["args"]]


def _run_check(doc: dict, submitted: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = _check_args(doc, submitted)
    assert cmd[:3] == ["python", "-m", "workflows.check"]
    return subprocess.run([sys.executable] + cmd[1:], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_every_workflow_starts_with_the_check_node_and_it_accepts_the_defaults(pipeline):
    doc = cli.compile_doc(pipeline, "s3", {"rag": "true"} if pipeline == "distill" else {})  # top-k needs rag
    main = next(t for t in doc["spec"]["templates"] if t["name"] == "main")
    roots = [t["name"] for t in main["dag"]["tasks"] if not t.get("depends")]
    assert roots == ["check-params"]
    r = _run_check(doc, {})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("pipeline,param,value", [("distill", "gpus", "1"), ("distill", "method", "full"),
                                                  ("experiment", "max-servers", "4")])
def test_a_compile_time_parameter_given_at_submit_time_is_refused_first(pipeline, param, value):
    doc = cli.compile_doc(pipeline, "s3", {"rag": "true"} if pipeline == "distill" else {})  # top-k needs rag
    r = _run_check(doc, {param: value})
    assert r.returncode == 1
    assert f"parameter {param}={value!r} was given at submit time" in r.stderr
    assert f"kubellm compile {pipeline} -p {param}={value}" in r.stderr
    # the same value compiled in is accepted (images follow gpus at compile time)
    compiled = cli.compile_doc(pipeline, "s3", {param: value})
    assert _run_check(compiled, {param: value}).returncode == 0, _run_check(compiled, {param: value}).stderr


def test_the_check_node_refuses_submit_time_values_the_steps_would_refuse():
    doc = cli.compile_doc("distill", "s3", {})
    r = _run_check(doc, {"steps": "0"})
    assert r.returncode == 1 and "parameter steps='0': Input should be greater than or equal to 1" in r.stderr
    r = _run_check(cli.compile_doc("experiment", "s3", {}), {"models": '[{"name": "m", "gpus": 2}]'})
    assert r.returncode == 1 and "serve-image" in r.stderr and "is the CPU image" in r.stderr


def test_the_local_runner_stops_at_the_check_node(tmp_path):
    from workflows.runner import run_workflow

    doc = cli.compile_doc("distill", "s3", {})
    result = run_workflow(doc, tmp_path / "run", parameters={"gpus": "2"}, volumes={"models": tmp_path / "m"})
    assert result.phase == "Failed"
    ran = {p.name for p in (tmp_path / "run" / "nodes").iterdir() if (p / "status.json").exists()}
    assert ran == {"check-params"}
    assert "was given at submit time" in (tmp_path / "run" / "nodes" / "check-params" / "log.txt").read_text()


def test_params_marks_compile_time_parameters():
    r = subprocess.run([sys.executable, "-m", "workflows.cli", "params", "experiment"], capture_output=True,
                       text=True, cwd=ROOT)
    marked = [ln.split()[0] for ln in r.stdout.splitlines() if "[compile-time" in ln]
    assert marked == ["max-servers"]
    assert {k for k, p in distill.PARAMS.items() if p.compile_time} == {"gpus", "method", "rag", "cycles", "nproc", "nodes"}


def test_bounds_live_in_the_step_configs():
    """A workflow parameter that feeds a step field is checked by that field: changing the field's
    bound changes what the workflow accepts."""
    from steps.finetune import FinetuneConfig

    assert FinetuneConfig.model_fields["max_steps"].metadata  # ge=1 lives there
    with pytest.raises(ValueError, match="it sets FinetuneConfig.max_steps"):
        check_params("distill", distill.PARAMS, {"steps": "0"})
    assert check_params("distill", distill.PARAMS, {"learning-rate": "3e-5"})["learning-rate"] == "3e-5"
    with pytest.raises(ValueError, match="learning-rate='-1'"):
        check_params("distill", distill.PARAMS, {"learning-rate": "-1"})
    assert Param("x", "h", "steps.finetune:FinetuneConfig.method").choices() == ("lora", "qlora", "full")


def test_every_parameter_value_is_quoted_for_yaml_1_2():
    text = cli.to_yaml(cli.compile_doc("distill", "s3", {}))
    assert "value: '2e-4'" in text and "value: '60'" in text
    yaml12_numbers = re.findall(r"^\s*(?:value|default): ([-+.\d][^'\n]*)$", text, flags=re.M)
    assert yaml12_numbers == []


def test_qlora_needs_gpus_and_gets_cuda_images():
    with pytest.raises(SystemExit, match="method=qlora .* needs a CUDA GPU: compile with -p gpus=1"):
        cli.compile_doc("distill", "s3", {"method": "qlora"})
    doc = cli.compile_doc("distill", "s3", {"method": "qlora", "gpus": "1"})
    values = {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]}
    assert values["steps-image"].startswith("ghcr.io/kubellm/steps-cuda:")
    assert values["serve-image"].startswith("ghcr.io/kubellm/serve:")
    ft = next(t for t in doc["spec"]["templates"] if t["name"] == "finetune")
    assert json.loads(ft["podSpecPatch"]) == {"containers": [{"name": "main", "resources": {
        "limits": {"nvidia.com/gpu": "{{workflow.parameters.gpus}}"}}}]}
    with pytest.raises(SystemExit, match="is the CPU image"):
        cli.compile_doc("distill", "s3", {"gpus": "1", "steps-image": "ghcr.io/kubellm/steps-cpu:0.1.0"})


def test_run_refuses_gpus_this_machine_does_not_have(tmp_path):
    r = subprocess.run([sys.executable, "-m", "workflows.cli", "run", "distill", "-p", "method=qlora", "-p",
                        "gpus=1", "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "has no NVIDIA GPU" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_models_as_json_reach_plan_as_text(tmp_path):
    """`-p models=[...]` in the rendered workflow is passed to plan's `--models` as text; plan must
    not turn it into a list."""
    models = '[{"name": "smollm2-135m", "cpu": "1", "memory": "4Gi"}]'
    doc = cli.compile_doc("experiment", "s3", {"models": models, "limit": "1"})
    assert {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]}["models"] == models
    r = subprocess.run([sys.executable, "-m", "steps.plan", "--experiment", "t", "--models", models, "--studies",
                        "study1", "--limit", "1", "--out", str(tmp_path / "p"), "--params-dir", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "o" / "models").read_text())[0]["memory"] == "4Gi"


@pytest.mark.parametrize("value", ["/nonexistent.yaml", "nope"])
def test_a_study_that_does_not_exist_is_refused_at_compile_time(value):
    with pytest.raises(SystemExit) as e:
        cli.compile_doc("experiment", "s3", {"studies": value})
    assert "study" in str(e.value) and value in str(e.value)


@pytest.fixture
def bad_studies(tmp_path) -> dict[str, Path]:
    src = ROOT / "workflows" / "studies"
    (tmp_path / "study1.csv").write_text((src / "study1.csv").read_text())
    (tmp_path / "broken.yaml").write_text('name: x\ndata: study1.csv\nprompt: "{speech\n  : [\n')
    (tmp_path / "column.yaml").write_text((src / "study1.yaml").read_text().replace("{speechQ}", "{speechQQ}"))
    return {"broken": tmp_path / "broken.yaml", "column": tmp_path / "column.yaml"}


@pytest.mark.parametrize("which,expected", [("broken", "is not valid YAML at line"),
                                            ("column", "template names column 'speechQQ'")])
def test_a_bad_study_gets_one_clear_message(bad_studies, which, expected, tmp_path):
    path = str(bad_studies[which])
    r = subprocess.run([sys.executable, "-m", "workflows.cli", "compile", "experiment", "-p", f"studies={path}"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and expected in r.stderr and path in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "steps.plan", "--experiment", "t", "--models", "m", "--studies", path,
                        "--out", str(tmp_path / "p")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "p").exists()
    r = subprocess.run([sys.executable, "-m", "steps.plan", "--debug", "--experiment", "t", "--models", "m",
                        "--studies", path, "--out", str(tmp_path / "p")], capture_output=True, text=True, cwd=ROOT)
    assert "Traceback" in r.stderr


@pytest.mark.parametrize("pipeline,param", [("distill", "teacher-url"), ("experiment", "extractor-url")])
def test_an_endpoint_url_must_be_http_or_empty(pipeline, param):
    with pytest.raises(SystemExit, match=f"parameter {param}='vllm:8000'.*e.g. -p {param}=http://"):
        cli.compile_doc(pipeline, "s3", {param: "vllm:8000"})


@pytest.mark.parametrize("pipeline", cli.PIPELINES)
def test_every_parameter_that_feeds_a_step_reaches_a_step(pipeline):
    """A parameter checked against a step's config field must be on some step's command line (or
    in a value a step reads), not only in the check and memo-key nodes: else the step silently runs
    on its own default."""
    import importlib

    mod = importlib.import_module(f"workflows.{pipeline}")
    doc = cli.compile_doc(pipeline, "s3", {"rag": "true"} if pipeline == "distill" else {})  # top-k needs rag
    used = json.dumps([t for t in doc["spec"]["templates"] if t["name"] not in ("check-params", "memo-keys")])
    for name, p in mod.PARAMS.items():
        if isinstance(p.feeds, str) and ":" in p.feeds and not p.compile_time:
            assert "{{workflow.parameters.%s}}" % name in used, f"{pipeline}: -p {name} reaches no step"
