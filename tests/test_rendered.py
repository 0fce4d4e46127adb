"""The committed rendered workflows: each is what `kubellm compile` renders now, lints clean under
the strict lint, and uses only what the local runner supports."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflows import cli
from workflows.lint import lint_workflow
from workflows.runner import check_supported

ROOT = Path(__file__).resolve().parents[1]
CASES = [(p, s) for p in ("distill", "experiment", "nli") for s in ("s3", "pvc")]


@pytest.mark.parametrize("pipeline,store", CASES, ids=lambda x: x)
def test_rendered_yaml_is_current_lints_clean_and_runs_locally(pipeline, store):
    path = ROOT / "workflows" / "rendered" / (f"{pipeline}.yaml" if store == "s3" else f"{pipeline}-{store}.yaml")
    doc = cli.compile_doc(pipeline, store, {})
    assert cli.to_yaml(doc) == path.read_text(), f"run `make compile` to update {path}"
    assert lint_workflow(doc, path.name) == []
    assert check_supported(doc, {"models": Path("/tmp")}) == []


VARIANTS = [{"gpus": "1"}, {"method": "qlora", "gpus": "1"}, {"method": "full"}, {"method": "full", "gpus": "2"},
            {"models": '[{"name": "smollm2-135m", "cpu": "1", "memory": "4Gi"}, {"name": "m/x", "gpus": 2}]',
             "serve-image": "ghcr.io/kubellm/serve:0.1.0"},
            {"max-servers": "3"}, {"dataset": "nyu-mll/multi_nli", "model": "google/flan-t5-small"}]


@pytest.mark.parametrize("store", ("s3", "pvc"))
@pytest.mark.parametrize("pipeline,params", [(p, v) for v in VARIANTS for p in ("distill", "experiment", "nli")
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


def test_every_rendered_file_is_checked():
    rendered = {p.name for p in (ROOT / "workflows" / "rendered").glob("*.yaml")}
    assert rendered == {f"{p}.yaml" if s == "s3" else f"{p}-{s}.yaml" for p, s in CASES}
