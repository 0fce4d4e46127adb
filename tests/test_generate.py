"""generate against a real HTTP teacher on loopback (the fault server: answers are prompts reversed,
so we script replies by choosing what the teacher sees)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steps import generate
from tests.faultserver import fault_server_module, server  # noqa: F401 - fixtures


def _kb(tmp_path: Path, n: int = 12) -> Path:
    kb = tmp_path / "kb"
    kb.mkdir(exist_ok=True)
    rows = [{"id": f"k8s/core/v1/PodSpec/f{i}", "doc_type": "field", "topic": "pods-containers",
             "title": f"PodSpec.f{i}", "field": f"f{i}", "text": f"Field number {i} of a pod spec. " * 4}
            for i in range(n)]
    (kb / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return kb


def _cfg(tmp_path: Path, url: str, **kw) -> generate.GenerateConfig:
    base = dict(kb=str(_kb(tmp_path)), out=str(tmp_path / "data"), teacher="teacher", url=url,
                num_questions=6, heldout_unseen=2, heldout_paraphrase=2, fact_questions=0, retries=1, timeout_s=5)
    return generate.GenerateConfig(**{**base, **kw})


def test_failing_teacher_ends_step_naming_endpoint_and_status(tmp_path, server):
    server.always_fail = "500"
    with pytest.raises(SystemExit) as e:
        generate.run(_cfg(tmp_path, server.url))
    msg = str(e.value)
    assert server.url in msg and "HTTP 500" in msg and "after 2 attempt(s)" in msg
    out = tmp_path / "data"
    assert not (out / "manifest.json").exists() and not (out / "train.jsonl").exists()


def test_unusable_questions_fall_back_to_templates_and_complete(tmp_path, server):
    # the fault server answers with the prompt reversed: never a question ending in "?", so every
    # teacher question is rejected and the templated question is used, marked as such
    counts = generate.run(_cfg(tmp_path, server.url))
    out = tmp_path / "data"
    train = [json.loads(l) for l in (out / "train.jsonl").read_text().splitlines()]
    held = [json.loads(l) for l in (out / "heldout.jsonl").read_text().splitlines()]
    assert counts["train"] == 6 and counts["questions_from_template"] == 6
    assert all(r["question_source"] == "template" and r["question"].endswith("?") for r in train)
    assert {h["split"] for h in held} == {"unseen_doc"}  # reversed text is never a valid paraphrase
    assert not {h["doc_id"] for h in held} & {r["doc_id"] for r in train}, "held-out docs leaked into training"
    assert all(h["teacher_answer"] for h in held)
    manifest = json.loads((out / "manifest.json").read_text())
    # 8 documents x 2 question attempts, plus 2 paraphrase prompts x 2 attempts
    assert manifest["counts"]["question_rejections"] == 8 * 2 + 2 * 2
    # a re-run reuses every logged teacher reply: no new request
    before = len(server.completions())
    generate.run(_cfg(tmp_path, server.url))
    assert len(server.completions()) == before


def test_not_enough_documents_for_topics(tmp_path, server):
    with pytest.raises(ValueError, match="no documents for topic"):
        generate.run(_cfg(tmp_path, server.url, topics=["ingress"]))


def test_unseen_documents_span_topics_not_whole_topics(tmp_path, server):
    kb = tmp_path / "kb"
    kb.mkdir()
    topics = [f"t{i}" for i in range(15)]
    rows = [{"id": f"{t}/{i}", "doc_type": "field", "topic": t, "title": f"{t}.f{i}", "field": f"f{i}",
             "text": f"Field {i} of topic {t}. " * 6} for t in topics for i in range(8)]
    (kb / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from steps import harvest

    orig = harvest.validate_topics
    harvest.validate_topics = lambda v: ["all"]  # synthetic topic names
    try:
        cfg = generate.GenerateConfig(kb=str(kb), out=str(tmp_path / "d"), teacher="t", url=server.url,
                                      num_questions=60, heldout_unseen=15, heldout_paraphrase=0, fact_questions=0, retries=3,
                                      timeout_s=5)
    finally:
        harvest.validate_topics = orig
    generate.run(cfg)
    train = {json.loads(l)["topic"] for l in (tmp_path / "d" / "train.jsonl").read_text().splitlines()}
    held = {json.loads(l)["topic"] for l in (tmp_path / "d" / "heldout.jsonl").read_text().splitlines()}
    assert train == set(topics), "every topic must be trained on"
    assert len(held) >= 5, "held-out documents should spread over topics"
