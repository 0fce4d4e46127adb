"""The distill workflow as rendered: shape, planted lint errors, bad parameters (snapshot and lint: test_rendered.py)."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workflows import cli
from workflows.lint import lint_workflow

ROOT = Path(__file__).resolve().parents[1]
RENDERED = {"s3": ROOT / "workflows/rendered/distill.yaml", "pvc": ROOT / "workflows/rendered/distill-pvc.yaml"}


def test_workflow_shape():
    doc = yaml.safe_load(RENDERED["s3"].read_text())
    spec = doc["spec"]
    tasks = {t["name"]: t for t in next(t for t in spec["templates"] if t["name"] == "main")["dag"]["tasks"]}
    assert set(tasks) == {"check-params", "memo-keys", "prepare-student", "harvest", "serve", "generate", "answer-baseline",
                          "finetune", "answer-finetuned", "judge", "evaluate"}
    # the judge scores the fine-tuned answers with the answer metrics; evaluate reads its folder
    assert tasks["judge"]["depends"] == "answer-finetuned"
    jargs = templates_named(spec, "judge")["container"]["args"]
    assert jargs[jargs.index("--metrics") + 1] == "answer_correctness,answer_relevancy"
    assert "--judge" in templates_named(spec, "evaluate")["container"]["args"]
    # retrieval next to fine-tuning (rag=true, compile-time): the index of the same harvest, both students with it
    rag_doc = cli.compile_doc("distill", "s3", {"rag": "true"})
    rag = {t["name"]: t for t in _main_tasks(rag_doc)}
    assert set(rag) == set(tasks) | {"index", "answer-baseline-rag", "answer-finetuned-rag"}
    assert rag["index"]["depends"] == "harvest"
    assert set(rag["answer-finetuned-rag"]["depends"].split(" && ")) == {"index", "answer-finetuned"}
    tpl = templates_named(rag_doc["spec"], "answer-finetuned-rag")["container"]["args"]
    assert tpl[tpl.index("--rag") + 1] == "/in/index" and "--lora-path" in tpl
    assert "--rag" not in templates_named(spec, "answer-finetuned")["container"]["args"]
    ev = templates_named(rag_doc["spec"], "evaluate")["container"]["args"]
    assert "--baseline-rag" in ev and "--finetuned-rag" in ev
    # cycles=3 (compile-time): each later cycle probes the previous adapter, then teaches, trains, answers
    cyc_doc = cli.compile_doc("distill", "s3", {"cycles": "3"})
    cyc = {t["name"]: t for t in _main_tasks(cyc_doc)}
    assert set(cyc) == set(tasks) | {f"{n}-{c}" for c in (2, 3) for n in ("probe", "generate", "finetune",
                                                                           "answer-finetuned")}
    assert cyc["probe-2"]["depends"] == "answer-finetuned" and cyc["probe-3"]["depends"] == "answer-finetuned-2"
    assert cyc["generate-3"]["depends"] == "probe-3" and cyc["finetune-3"]["depends"] == "generate-3"
    p3 = templates_named(cyc_doc["spec"], "probe-3")["container"]["args"]
    assert p3[p3.index("--input-file") + 1] == "probe.jsonl" and "{{inputs.parameters.model}}-ft2" in p3
    a3 = templates_named(cyc_doc["spec"], "answer-finetuned-3")["container"]["args"]
    assert "{{inputs.parameters.model}}-ft3" in a3
    g3 = {a["name"]: a for a in cyc["generate-3"]["arguments"]["artifacts"]}
    assert "generate-2" in str(g3["data"]) and "probe-3" in str(g3["probe"])
    ev3 = templates_named(cyc_doc["spec"], "evaluate")["container"]["args"]
    assert ev3[ev3.index("--cycle-answers") + 1].count(",") == 1 and set(cyc["evaluate"]["depends"].split(" && ")) >= {
        "answer-finetuned-2", "answer-finetuned-3", "judge"}
    assert lint_workflow(cyc_doc) == [] and lint_workflow(rag_doc) == []
    assert templates_named(spec, "generate")["memoize"]["cache"]["configMap"]["name"] == "kubellm-memo"
    assert templates_named(spec, "evaluate")["outputs"]["artifacts"][0]["archive"] == {"none": {}}
    gauges = {g["name"] for g in templates_named(spec, "answer-baseline")["metrics"]["prometheus"]}
    assert gauges == {"kubellm_rows", "kubellm_failed"}
    assert tasks["finetune"]["depends"] == "generate"
    templates = {t["name"]: t for t in spec["templates"]}
    assert templates["serve"]["daemon"] is True
    assert templates["serve"]["container"]["readinessProbe"]["httpGet"]["path"] == "/health"
    for name in ("generate", "answer-baseline", "answer-finetuned"):  # the steps that call models
        assert templates[name]["retryStrategy"]["backoff"]["duration"] == "30s"
    for name, t in templates.items():
        if "container" in t:
            c = t["container"]
            assert c["securityContext"]["runAsNonRoot"] is True, name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
    # compiled for CPU: no GPU request anywhere (compiled with gpus, podSpecPatch carries it: test_params)
    assert "podSpecPatch" not in templates["finetune"] and "nvidia.com/gpu" not in str(templates["serve"])
    params = {p["name"]: p for p in spec["arguments"]["parameters"]}
    assert params["method"]["enum"] == ["lora", "qlora", "full"]


def test_pvc_store_has_no_artifacts_and_mounts_data():
    doc = yaml.safe_load(RENDERED["pvc"].read_text())
    text = RENDERED["pvc"].read_text()
    assert "artifacts" not in text
    assert any(v["name"] == "data" for v in doc["spec"]["volumes"])


def _main_tasks(doc):
    return next(t for t in doc["spec"]["templates"] if t["name"] == "main")["dag"]["tasks"]


def _task(doc, name):
    return next(t for t in _main_tasks(doc) if t["name"] == name)


def templates_named(spec, name):
    return next(t for t in spec["templates"] if t["name"] == name)


@pytest.mark.parametrize("plant,expect", [
    (lambda d: _task(d, "generate").update(depends="harvest && serv"), "serv"),
    (lambda d: _task(d, "answer-baseline").update(template="answer-basline"), "answer-basline"),
    (lambda d: _task(d, "serve")["arguments"]["parameters"][0].update(
        value="{{tasks.prepare-student.outputs.parameters.model-pth}}"), "model-pth"),
    (lambda d: templates_named(d["spec"], "finetune")["container"].update(comand=["x"]), "comand"),
    (lambda d: d["spec"]["volumes"].clear(), "models"),
])
def test_planted_mistakes_fail_lint(plant, expect):
    doc = copy.deepcopy(yaml.safe_load(RENDERED["s3"].read_text()))
    plant(doc)
    problems = lint_workflow(doc, "distill.yaml")
    assert problems, "a planted mistake must be caught"
    assert any(expect in p for p in problems), problems


@pytest.mark.parametrize("param,msg", [
    ("student=no-such-model", "unknown model 'no-such-model'"),
    ("topics=pods-containers,dragons", "unknown topic(s) 'dragons'"),
    ("steps=ten", "steps='ten': Input should be a valid integer"),
    ("method=dora", "must be one of ['lora', 'qlora', 'full']"),
    ("stepz=3", "unknown parameter(s) ['stepz']"),
    ("teacher=gemma3-270m", "is not served by this workflow"),
    ("heldout-paraphrase=500", "cannot exceed num-questions"),
    ("cycles=2 heldout-facts=0", "cycles > 1 needs fact-questions > 0 and heldout-facts > 0"),
    ("cycles=2 method=full", "cycles > 1 needs method lora or qlora"),
    ("cycles=6", "cycles='6': Input should be less than or equal to 5"),
    ("topics=storage-volumes fact-questions=400", "widen the topics"),
    ("judge=big-model", "needs -p judge-url=URL"),
    ("answer-tokens=16", "use 32 or more"),
])
def test_bad_parameters_fail_before_any_work(tmp_path, param, msg):
    out = tmp_path / "run"
    ps = [a for p in param.split() for a in ("-p", p)]
    r = subprocess.run([sys.executable, "-m", "workflows.cli", "run", "distill", *ps, "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode != 0
    assert msg in r.stderr, r.stderr
    assert not out.exists(), "nothing may be started or written for bad input"


def test_compile_offers_only_cluster_stores(tmp_path):
    r = subprocess.run([sys.executable, "-m", "workflows.cli", "compile", "distill", "--store", "local"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "invalid choice: 'local'" in r.stderr


def test_compile_sets_parameter_defaults():
    doc = cli.compile_doc("distill", "s3", {"student": "microsoft/phi-2", "teacher": "openai:gpt-4o-mini",
                                            "method": "qlora", "gpus": "1"})
    params = {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]}
    assert params["student"] == "microsoft/phi-2" and params["method"] == "qlora" and params["gpus"] == "1"
    # compiled for GPUs: whole runs queue on the GPU semaphore that k8s/ defines
    sem = doc["spec"]["synchronization"]["semaphores"][0]["configMapKeyRef"]
    assert sem == {"name": "kubellm-semaphores", "key": "gpu"}
    assert "synchronization" not in cli.compile_doc("distill", "s3", {})["spec"]
    from workflows.lint import lint_cluster, load_k8s_objects

    assert lint_cluster(doc, "gpu.yaml", load_k8s_objects("k8s", "overlays/gpu")) == []


def test_step_help_is_fast_and_light():
    """--help must not import torch/transformers/vllm (DESIGN principle 1)."""
    for mod in ("steps.harvest", "steps.generate", "steps.query", "steps.finetune", "steps.evaluate",
                "steps.serve", "steps.models", "steps.probabilities", "steps.memokey", "steps.nli_data",
                "steps.nli_model", "steps.nli_service", "steps.nli_evaluate"):
        code = (f"import sys, runpy; sys.argv=['x','--help']\n"
                f"try:\n    runpy.run_module('{mod}', run_name='__main__')\nexcept SystemExit: pass\n"
                "heavy = [m for m in ('torch','transformers','vllm','trl','ragas') if m in sys.modules]\n"
                "assert not heavy, heavy")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, (mod, r.stderr[-800:])
