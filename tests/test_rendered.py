"""The committed rendered workflows: each is what `kubellm compile` renders now, lints clean under
the strict lint, and uses only what the local runner supports."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflows import cli
from workflows.lint import lint_workflow
from workflows.runner import check_supported

ROOT = Path(__file__).resolve().parents[1]
CASES = [(p, s) for p in ("distill", "experiment") for s in ("s3", "pvc")]


@pytest.mark.parametrize("pipeline,store", CASES, ids=lambda x: x)
def test_rendered_yaml_is_current_lints_clean_and_runs_locally(pipeline, store):
    path = ROOT / "workflows" / "rendered" / (f"{pipeline}.yaml" if store == "s3" else f"{pipeline}-{store}.yaml")
    doc = cli.compile_doc(pipeline, store, {})
    assert cli.to_yaml(doc) == path.read_text(), f"run `make compile` to update {path}"
    assert lint_workflow(doc, path.name) == []
    assert check_supported(doc, {"models": Path("/tmp")}) == []


def test_every_rendered_file_is_checked():
    rendered = {p.name for p in (ROOT / "workflows" / "rendered").glob("*.yaml")}
    assert rendered == {f"{p}.yaml" if s == "s3" else f"{p}-{s}.yaml" for p, s in CASES}
