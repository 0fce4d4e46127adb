"""nli_evaluate's metrics, checked against numbers worked out by hand, and its input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from steps.nli_evaluate import LABELS, NliEvaluateConfig, calibration, classification, run

ROOT = Path(__file__).resolve().parents[1]


def test_classification_by_hand():
    gold = ["entailment", "entailment", "neutral", "contradiction", "contradiction", "neutral"]
    pred = ["entailment", "neutral", "neutral", "contradiction", "entailment", "contradiction"]
    c = classification(gold, pred)
    assert c["accuracy"] == pytest.approx(3 / 6)
    # rows gold, columns predicted, in LABELS order
    assert c["confusion"]["matrix"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    e = c["per_class"]["entailment"]
    assert (e["precision"], e["recall"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2))
    n = c["per_class"]["neutral"]
    assert (n["precision"], n["recall"], n["f1"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2), pytest.approx(1 / 2))
    assert c["macro_f1"] == pytest.approx(0.5)


def test_a_class_never_predicted_has_zero_precision_not_an_error():
    c = classification(["neutral", "neutral"], ["entailment", "entailment"])
    assert c["per_class"]["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert c["accuracy"] == 0.0


def test_calibration_by_hand():
    # two bins: (0, .5] holds conf .3 (wrong) and .5 (right): conf .4, acc .5
    #           (.5, 1] holds .9 (right), .7 (wrong): conf .8, acc .5
    cal = calibration([0.3, 0.5, 0.9, 0.7], [False, True, True, False], bins=2)
    assert cal["ece"] == pytest.approx(0.5 * abs(0.5 - 0.4) + 0.5 * abs(0.5 - 0.8))
    assert [b["n"] for b in cal["bins"]] == [2, 2]
    perfect = calibration([1.0, 1.0], [True, True], bins=10)
    assert perfect["ece"] == pytest.approx(0.0)


def test_labels_are_the_three_nli_labels():
    assert LABELS == ("entailment", "neutral", "contradiction")
    with pytest.raises(ValueError, match="gold label 'maybe'"):
        classification(["maybe"], ["neutral"])


@pytest.mark.parametrize("row,msg", [({"premise": "p", "hypothesis": "h"}, "row 1 has no 'label'"),
                                      ({"premise": "p", "hypothesis": "h", "label": "yes"}, "row 1 has label 'yes'"),
                                      ({"premise": " ", "hypothesis": "h", "label": "neutral"}, "row 1 has no 'premise'")])
def test_bad_pairs_are_refused_before_any_model_loads(tmp_path, row, msg):
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=msg):
        run(NliEvaluateConfig(data=str(data), zero_shot="x", finetuned="y", out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    r = subprocess.run([sys.executable, "-m", "steps.nli_evaluate", "--data", str(data), "--zero-shot", "x",
                        "--finetuned", "y", "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


def test_the_same_model_twice_is_not_distinguishable(tmp_path, smollm2):
    """A real run on generated Kubernetes-NLI pairs: with the same model as zero-shot and fine-tuned
    every paired difference is 0, so the CI is [0, 0] and the verdict says so; the report is complete."""
    from steps.nli_data import NliDataConfig, run as make_data

    make_data(NliDataConfig(out=tmp_path / "data", max_pairs=60))
    result = run(NliEvaluateConfig(data=str(tmp_path / "data"), zero_shot=smollm2, finetuned=smollm2,
                                   out=str(tmp_path / "report"), limit=6, bootstrap=200))
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["n"] == 6 and report["finetuned_minus_zero_shot"]["ci95"] == [0.0, 0.0]
    assert "is not distinguishable from" in result["verdict"]
    assert report["zero_shot"]["confusion"] == report["finetuned"]["confusion"]
    assert sum(map(sum, report["zero_shot"]["confusion"]["matrix"])) == 6
    for f in ("report.md", "report.html", "report.png", "predictions.jsonl"):
        assert (tmp_path / "report" / f).stat().st_size > 0
