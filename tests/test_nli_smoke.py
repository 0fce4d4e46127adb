"""steps.nli_smoke against a real service on loopback, serving a published tiny T5 (fast to load):
it passes when the service answers as the evaluation did, and fails with a clear message when the
version never arrives or an answer differs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steps import nli_model
from steps.nli_publish import NliPublishConfig, run as publish
from steps.nli_service import NliServiceConfig, build_server
from steps.nli_smoke import NliSmokeConfig, SmokeFailed, run as smoke
from tests.conftest import free_port
from tests.test_nli_model import WORDS, word_tokenizer
from tests.test_nli_service import serve_in_thread, stop

PAIRS = [("a man is sleeping", "a man is awake"), ("dogs run", "a cat sat"), ("a", "a"),
         ("a cat sat", "dogs run"), ("a man is awake", "a man is sleeping"), ("dogs", "a cat")]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny T5 published as version v1, with test data and a report of its own predictions."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tmp = tmp_path_factory.mktemp("smoke")
    model = tmp / "ft"
    _, vocab = word_tokenizer(model, eos_after=True)
    torch.manual_seed(0)
    T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).save_pretrained(model)
    preds = nli_model.load(str(model)).predict(PAIRS)
    data = tmp / "data"
    data.mkdir()
    # gold = what the model predicts, so every pair is one it "got right"
    (data / "test.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "premise": p, "hypothesis": h,
                                                         "label": pr["label"]}) + "\n"
                                             for i, ((p, h), pr) in enumerate(zip(PAIRS, preds))))
    report = tmp / "report"
    report.mkdir()
    (report / "report.json").write_text(json.dumps({"split": "test", "data": str(data),
                                                    "finetuned": {"accuracy": 1.0}, "zero_shot": {"accuracy": 0.3}}))
    (report / "predictions.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "label": pr["label"], "finetuned": pr,
                                                                  "zero_shot": pr}) + "\n" for i, pr in enumerate(preds)))
    publish(NliPublishConfig(model=str(model), report=str(report), root=str(tmp / "nli"), version="v1"))
    cfg = NliServiceConfig(model=str(tmp / "nli" / "v1"), port=free_port(), log_level="warning")
    server = build_server(cfg)
    thread = serve_in_thread(server)
    try:
        yield {"base": f"http://127.0.0.1:{cfg.port}", "data": data, "report": report, "tmp": tmp, "preds": preds}
    finally:
        stop(server, thread)


def test_smoke_passes_when_the_service_answers_as_the_evaluation(published, tmp_path):
    out = smoke(NliSmokeConfig(url=published["base"], version="v1", data=str(published["data"]),
                               report=str(published["report"]), out=str(tmp_path), consecutive=3, timeout_s=60))
    assert out["ok"]
    result = json.loads((tmp_path / "smoke.json").read_text())
    top = max(published["preds"], key=lambda p: p["confidence"])
    assert result["predict"]["answer"]["label"] == top["label"]
    assert abs(result["predict"]["answer"]["confidence"] - top["confidence"]) < 0.02
    assert len(result["batch"]) == len({p["label"] for p in published["preds"]}) and result["problems"] == []


def test_smoke_fails_clearly_when_the_new_version_never_serves(published, tmp_path):
    with pytest.raises(SmokeFailed, match=r"no 3 answers in a row from version 'v2' within 2 s \(versions seen: \['v1'\]"):
        smoke(NliSmokeConfig(url=published["base"], version="v2", data=str(published["data"]),
                             report=str(published["report"]), out=str(tmp_path), consecutive=3, timeout_s=2))


def test_smoke_fails_when_an_answer_differs_from_the_evaluation(published, tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text((published["report"] / "report.json").read_text())
    rows = [json.loads(x) for x in (published["report"] / "predictions.jsonl").read_text().splitlines()]
    for r in rows:  # the evaluation "saw" other confidences than the service gives
        r["finetuned"] = dict(r["finetuned"], confidence=min(1.0, r["finetuned"]["confidence"] + 0.2))
    (report / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SmokeFailed, match=r"smoke test failed: /predict: confidence .* in the evaluation \(tolerance 0.02\)"):
        smoke(NliSmokeConfig(url=published["base"], version="v1", data=str(published["data"]), report=str(report),
                             out=str(tmp_path / "o"), consecutive=1, timeout_s=30))
    assert json.loads((tmp_path / "o" / "smoke.json").read_text())["ok"] is False
