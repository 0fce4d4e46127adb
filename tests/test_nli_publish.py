"""steps.nli_publish: a trained model becomes a version folder the service reads, with its card."""

from __future__ import annotations

import json
import os

import pytest

from steps.nli_publish import NliPublishConfig, run


def _inputs(tmp_path):
    model = tmp_path / "ft" / "adapter"
    model.mkdir(parents=True)
    (model / "adapter_config.json").write_text('{"base_model_name_or_path": "/models/models/smollm2-135m"}')
    (model / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text(json.dumps({
        "data": "/in/data", "split": "test", "n": 309, "verdict": "fine-tuned beats zero-shot",
        "finetuned": {"accuracy": 0.9, "macro_f1": 0.89, "calibration": {"ece": 0.05}},
        "zero_shot": {"accuracy": 0.36}, "finetuned_minus_zero_shot": {"ci95": [0.5, 0.6]}}))
    return model, report


def test_publish_writes_a_version_with_its_card_and_moves_current(tmp_path):
    model, report = _inputs(tmp_path)
    root = tmp_path / "nli"
    run(NliPublishConfig(model=str(model), report=str(report), root=str(root), version="nli-a1",
                         training_data="k8s-reference"))
    card = json.loads((root / "nli-a1" / "nli_report.json").read_text())
    assert card["version"] == "nli-a1" and card["accuracy"] == 0.9 and card["training_data"] == "k8s-reference"
    assert card["accuracy_diff_ci95"] == [0.5, 0.6] and card["ece"] == 0.05
    assert (root / "nli-a1" / "adapter_model.safetensors").read_bytes() == b"\0" * 64
    manifest = json.loads((root / "nli-a1" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors", "nli_report.json"}
    assert os.readlink(root / "current") == "nli-a1"

    # a second version: current follows it, the first stays as it was
    run(NliPublishConfig(model=str(model), report=str(report), root=str(root), version="nli-b2"))
    assert os.readlink(root / "current") == "nli-b2" and (root / "nli-a1" / "nli_report.json").exists()
    assert json.loads((root / "nli-b2" / "nli_report.json").read_text())["training_data"] == "/in/data"
    assert sorted(p.name for p in root.iterdir()) == ["current", "nli-a1", "nli-b2"]  # no temporary left


@pytest.mark.parametrize("change,error", [
    ({"version": "current"}, "use lowercase letters"),
    ({"version": "Nli_A"}, "use lowercase letters"),
    ({"model": "nowhere"}, "no adapter_config.json or config.json"),
    ({"report": "nowhere"}, "cannot read report.json"),
])
def test_bad_input_is_refused_and_writes_nothing(tmp_path, change, error):
    model, report = _inputs(tmp_path)
    cfg = {"model": str(model), "report": str(report), "root": str(tmp_path / "nli"), "version": "v1"} | {
        k: (str(tmp_path / v) if k in ("model", "report") else v) for k, v in change.items()}
    with pytest.raises(ValueError, match=error):
        run(NliPublishConfig(**cfg))
    assert not (tmp_path / "nli").exists()
