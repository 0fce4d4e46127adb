"""The pieces of fact-checked distillation that need no model: the teacher-answer filter, the
cycle probe, and evaluate's fact, stopping and cycle tables on hand-made answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steps import evaluate, generate
from steps._io import write_jsonl


def test_fact_answers_that_echo_the_prompt_are_not_training_targets():
    assert generate.fact_answer_problem("`Pod.spec.hostname` is a string.") is None
    echo = "Documentation:\nEvent.action: What action was taken\nType: string. Optional.\n\nQuestion: Is it?"
    assert generate.fact_answer_problem(echo) == "echoes the prompt"
    assert generate.fact_answer_problem("word " * 61) == "longer than 60 words"


def test_probe_asks_each_trained_fact_once_in_an_unused_wording_and_new_facts():
    train = [{"doc_id": "a", "fact": "type"}, {"doc_id": "b", "fact": "required"}, {"question": "free text"}]
    pool = [{"id": "p1", "doc_id": "a", "fact": "type", "origin": "trained"},
            {"id": "p2", "doc_id": "a", "fact": "type", "origin": "trained"},
            {"id": "p3", "doc_id": "b", "fact": "required", "origin": "trained"},
            {"id": "n1", "doc_id": "c", "fact": "type", "origin": "new"},
            {"id": "n2", "doc_id": "d", "fact": "type", "origin": "new"},
            {"id": "n3", "doc_id": "e", "fact": "type", "origin": "new"}]
    assert [p["id"] for p in generate.make_probe(train, pool, 2)] == ["p1", "p3", "n1", "n2"]


def _answers(folder: Path, rows: list[dict]) -> str:
    folder.mkdir(parents=True)
    write_jsonl(folder / "answers.jsonl", rows)
    (folder / "manifest.json").write_text(json.dumps({"step": "query", "timings_s": {"wall": 1.0}}))
    return str(folder)


def test_evaluate_leads_with_factual_accuracy_and_counts_stopping(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    held = []
    for i in range(10):
        fact, ans = ("type", "string") if i < 6 else ("required", "optional")
        held.append({"id": f"h{i}", "split": "fact_paraphrase" if i < 8 else "fact_unseen", "doc_id": f"d{i}",
                     "fact": fact, "fact_answer": ans, "question": f"q{i}?", "reference": f"It is {ans}.",
                     "teacher_answer": f"It is {ans}."})
    write_jsonl(data / "heldout.jsonl", held)
    write_jsonl(data / "train.jsonl", [{"fact": "type", "fact_answer": "string"}, {"fact": "type", "fact_answer": "integer"},
                                       {"fact": "type", "fact_answer": "string"}, {"question": "free"}])
    (data / "manifest.json").write_text(json.dumps({"counts": {"train": 4, "teacher_fact_accuracy": 0.7,
                                                               "teacher_fact_questions": 20, "dropped_by_limit": 3}}))
    loop = "and to accept a container " * 8
    # baseline: right on 2 of 10, every answer a loop cut at the limit; fine-tuned: right on 8, stops
    base = [{"id": h["id"], "answer": (f"It is {h['fact_answer']}. " if i < 2 else "") + loop, "finish_reason": "length"}
            for i, h in enumerate(held)]
    ft = [{"id": h["id"], "answer": f"It is {h['fact_answer']}." if i not in (3, 9) else "It is an integer.",
           "finish_reason": "stop"} for i, h in enumerate(held)]
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "summary.json").write_text(json.dumps({
        "judge": {"model": "smollm2-135m", "url": "http://127.0.0.1:8000", "path": "ragas + json_schema"},
        "judge_strength": {"cases": 10, "scored": 8, "agreed": 5, "agreement": 0.625, "threshold": 0.8, "weak": True,
                           "warning": "The judge smollm2-135m is weak: it agreed with 5 of 8"},
        "metrics": {"answer_correctness": {"mean": 0.4, "n_scored": 1, "n_failed": 0, "ci95": [0.4, 0.4]}}}))
    out = tmp_path / "report"
    evaluate.run(evaluate.EvaluateConfig(data=str(data), baseline=_answers(tmp_path / "b", base),
                                         finetuned=_answers(tmp_path / "f", ft), out=str(out), bootstrap=500,
                                         judge=str(judge)))
    r = json.loads((out / "report.json").read_text())
    para = r["facts"]["by_split"]["fact_paraphrase"]
    assert para["n"] == 8 and para["accuracy"]["baseline"] == 2 / 8 and para["accuracy"]["finetuned"] == 7 / 8
    assert para["accuracy"]["teacher"] == 1.0 and para["ratio"] == pytest.approx(3.5)
    assert para["prior"] == 6 / 8  # "string" is the commonest trained type; no trained required-ness: no guess
    assert r["facts"]["by_split"]["fact_unseen"]["accuracy"]["finetuned"] == 0.5
    assert r["facts"]["teacher_accuracy"] == 0.7
    assert r["verdict"].startswith("fine-tuned states the trained facts more often")
    assert r["stopping"]["baseline"]["by_limit_share"] == 1.0 and r["stopping"]["finetuned"]["by_limit_share"] == 0.0
    assert r["stopping"]["baseline"]["distinct2_mean"] < 0.3 < 0.9 < r["stopping"]["finetuned"]["distinct2_mean"]
    md = (out / "report.md").read_text()
    assert md.index("## Factual accuracy") < md.index("## Do the students stop?") < md.index("## Similarity")
    assert "left out of training: 3" in md
    assert r["judge"]["judge"] == "smollm2-135m" and r["judge"]["strength"] == "weak"
    assert "**Weak judge:** The judge smollm2-135m is weak" in md and "answer_correctness of the fine-tuned answers: 0.400" in md


def test_cycles_table_without_fact_questions_says_n_a():
    md = evaluate._cycles_md({"cycles": [{"cycle": 1, "train": 3, "new_train": 3, "probe": None, "by_split": {}},
                                         {"cycle": 2, "train": 5, "new_train": 2, "probe": 4, "probe_correct": 1,
                                          "by_split": {}}]})
    assert "| 2 | 5 | 2 | 1/4 | n/a | n/a | n/a | n/a | n/a |" in md


def test_probe_falls_back_to_the_training_wording_when_nothing_unused_is_left():
    train = [{"id": "train:a:type:0path", "doc_id": "a", "fact": "type", "fact_answer": "string", "question": "q?",
              "wording": 0, "naming": "path", "title": "A.x", "kind": "A", "topic": "t", "context": "A.x: ..."}]
    probe = generate.make_probe(train, [], 4)
    assert [p["id"] for p in probe] == ["probe:train:a:type:0path"] and probe[0]["answer"] == "string"
