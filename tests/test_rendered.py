"""The committed rendered workflows: each is what `kubellm compile` renders now, lints clean under
the strict lint, and uses only what the local runner supports."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflows import cli
from workflows.lint import lint_workflow
from workflows.runner import check_supported

ROOT = Path(__file__).resolve().parents[1]
CASES = [(p, s) for p in ("distill", "experiment", "nli", "rag") for s in ("s3", "pvc")]
CRON = [("rag", "s3"), ("rag", "pvc")]
# multi-node fine-tuning: 2 GPU nodes, the finetune node a Kubeflow Trainer TrainJob on the claim
MULTINODE = {"nodes": "2", "gpus": "1"}


@pytest.mark.parametrize("pipeline,store", CASES, ids=lambda x: x)
def test_rendered_yaml_is_current_lints_clean_and_runs_locally(pipeline, store):
    path = ROOT / "workflows" / "rendered" / (f"{pipeline}.yaml" if store == "s3" else f"{pipeline}-{store}.yaml")
    doc = cli.compile_doc(pipeline, store, {})
    assert cli.to_yaml(doc) == path.read_text(), f"run `make compile` to update {path}"
    assert lint_workflow(doc, path.name) == []
    assert check_supported(doc, {"models": Path("/tmp")}) == []


def test_rendered_multinode_distill_is_current_and_its_trainjob_validates():
    import yaml

    from workflows.trainjob import validate_trainjob

    path = ROOT / "workflows" / "rendered" / "distill-multinode.yaml"
    doc = cli.compile_doc("distill", "pvc", MULTINODE)
    assert cli.to_yaml(doc) == path.read_text(), f"run `make compile` to update {path}"
    assert lint_workflow(doc, path.name) == []
    assert check_supported(doc, {"models": Path("/tmp"), "data": Path("/tmp")}) == []
    ft = next(t for t in doc["spec"]["templates"] if t["name"] == "finetune")
    assert ft["resource"]["action"] == "create" and ft["resource"]["setOwnerReference"] is True
    job = yaml.safe_load(ft["resource"]["manifest"])
    assert validate_trainjob(job) == []
    assert job["spec"]["trainer"]["numNodes"] == 2 and job["spec"]["trainer"]["command"][:2] == ["torchrun", "-m"]
    assert job["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "{{workflow.parameters.gpus}}"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "kubellm"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "kubellm-training"
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v} == {
        "kubellm-data", "kubellm-models"}
    # every setting the container finetune gets, but nproc (numProcPerNode is the one count), as
    # key=value overrides: torchrun's own parser must hand all of them to the module untouched
    args = job["spec"]["trainer"]["args"]
    assert "data={{inputs.parameters.data-dir}}" in args and "r={{workflow.parameters.lora-r}}" in args
    assert not any(a.startswith("-") or a.startswith("nproc=") for a in args)
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(job["spec"]["trainer"]["command"][1:] + args)
    assert parsed.module and parsed.training_script == "steps.finetune" and parsed.training_script_args == args


VARIANTS = [{"gpus": "1"}, {"nproc": "2"}, {"nproc": "2", "batch-size": "auto", "global-batch": "8"}, {"method": "qlora", "gpus": "1"}, {"method": "full"}, {"method": "full", "gpus": "2"},
            {"models": '[{"name": "smollm2-135m", "cpu": "1", "memory": "4Gi"}, {"name": "m/x", "gpus": 2}]',
             "serve-image": "ghcr.io/kubellm/serve:0.1.0"},
            {"max-servers": "3"}, {"dataset": "nyu-mll/multi_nli", "model": "google/flan-t5-small"},
            {"rag": "false"}, {"sources": "k8s-api,cluster", "judge": "openai:gpt-4o-mini"}]


@pytest.mark.parametrize("store", ("s3", "pvc"))
@pytest.mark.parametrize("pipeline,params", [(p, v) for v in VARIANTS for p in ("distill", "experiment", "nli", "rag")
                                             if set(v) <= set(__import__(f"workflows.{p}", fromlist=["PARAMS"]).PARAMS)],
                         ids=str)
def test_every_variant_passes_argos_rules_and_runs_locally(pipeline, params, store):
    """Argo's own rules (workflows/argo/rules.py, via lint) on each compiled variant, and its YAML
    text read as Argo's YAML 1.2 reader reads it."""
    from workflows.argo.decode import unquoted_scalars

    doc = cli.compile_doc(pipeline, store, params)
    assert lint_workflow(doc, pipeline) == []
    assert unquoted_scalars(cli.to_yaml(doc)) == []
    assert check_supported(doc, {"models": Path("/tmp")}) == []


@pytest.mark.parametrize("pipeline,store", CRON, ids=lambda x: x)
def test_rendered_cron_workflow_is_current_and_lints_clean(pipeline, store):
    path = ROOT / "workflows" / "rendered" / (f"{pipeline}-refresh.yaml" if store == "s3" else f"{pipeline}-refresh-{store}.yaml")
    doc = cli.compile_cron(pipeline, store, {}, "0 */6 * * *")
    assert cli.to_yaml(doc) == path.read_text(), f"run `make compile` to update {path}"
    assert doc["kind"] == "CronWorkflow" and doc["spec"]["concurrencyPolicy"] == "Forbid"
    assert lint_workflow(doc, path.name) == []
    # its workflow spec is what the local runner could run
    wf = {"apiVersion": doc["apiVersion"], "kind": "Workflow", "metadata": {"generateName": "x-"},
          "spec": doc["spec"]["workflowSpec"]}
    assert check_supported(wf, {"models": Path("/tmp")}) == []


def test_cron_lint_catches_a_bad_schedule_and_a_bad_workflow_spec():
    doc = cli.compile_cron("rag", "s3", {}, "0 */6 * * *")
    doc["spec"]["schedules"] = ["0 25 * * *"]
    doc["spec"]["workflowSpec"]["templates"][0]["dag"]["tasks"][1]["template"] = "nope"
    problems = lint_workflow(doc, "c.yaml")
    assert any("spec.schedules[0]" in p and "hour field '25'" in p for p in problems), problems
    assert any(p.startswith("c.yaml: spec.workflowSpec.templates[0]") and "nope" in p for p in problems), problems
    with pytest.raises(SystemExit, match="has 2 fields; a cron schedule has 5"):
        cli.compile_cron("rag", "s3", {}, "every day")


def test_every_rendered_file_is_checked():
    rendered = {p.name for p in (ROOT / "workflows" / "rendered").glob("*.yaml")}
    assert rendered == ({f"{p}.yaml" if s == "s3" else f"{p}-{s}.yaml" for p, s in CASES}
                        | {f"{p}-refresh.yaml" if s == "s3" else f"{p}-refresh-{s}.yaml" for p, s in CRON}
                        | {"distill-multinode.yaml"})
