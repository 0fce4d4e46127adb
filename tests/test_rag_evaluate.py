"""steps.rag_evaluate on hand-made answer folders: exact numbers, the report, and bad input."""

from __future__ import annotations

import json

import pytest

from steps import rag_evaluate
from steps._io import write_json, write_jsonl

QS = [
    {"id": "q1", "fact": "default", "answer": "1", "doc_id": "d/replicas", "question": "Default of replicas?"},
    {"id": "q2", "fact": "type", "answer": "integer", "doc_id": "d/port", "question": "Type of port?"},
    {"id": "q3", "fact": "required", "answer": "required", "doc_id": "d/name", "question": "Is name required?"},
    {"id": "q4", "fact": "default", "answer": "TCP", "doc_id": "d/protocol", "question": "Default protocol?"},
]
CLOSED = {"q1": "It defaults to 3.", "q2": "It is an integer.", "q3": "It is optional.", "q4": "UDP."}
RAG = {"q1": "Defaults to 1.", "q2": "An int32 integer.", "q3": "Yes, name is required.", "q4": "UDP, I think."}
RETRIEVED = {"q1": ["d/replicas", "d/x"], "q2": ["d/x"], "q3": ["d/name"], "q4": ["d/protocol"]}


def folders(tmp_path, rag_rows=None):
    write_jsonl(tmp_path / "facts" / "questions.jsonl", QS)
    write_jsonl(tmp_path / "closed" / "answers.jsonl",
                [{**q, "answer": CLOSED[q["id"]], "finish_reason": "stop"} for q in QS])
    write_json(tmp_path / "closed" / "manifest.json", {"step": "query"})
    rows = rag_rows or [{**q, "answer": RAG[q["id"]], "finish_reason": "length" if q["id"] == "q4" else "stop",
                         "context_ids": [f"{d}#0" for d in RETRIEVED[q["id"]]], "context_doc_ids": RETRIEVED[q["id"]],
                         "contexts": ["..."] * len(RETRIEVED[q["id"]])} for q in QS]
    write_jsonl(tmp_path / "rag" / "answers.jsonl", rows)
    write_json(tmp_path / "rag" / "manifest.json", {"served_model": "m", "rag": {"index": "i", "top_k": 2,
                                                                                 "method": "hybrid"}})
    return rag_evaluate.RagEvaluateConfig(questions=tmp_path / "facts", closed=tmp_path / "closed",
                                          rag=tmp_path / "rag", out=tmp_path / "rep", bootstrap=500)


def test_scores_are_the_exact_fact_checks(tmp_path):
    res = rag_evaluate.run(folders(tmp_path))
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = {r["id"]: r for r in rep["per_question"]}
    assert [rows[q]["closed"] for q in ("q1", "q2", "q3", "q4")] == [0.0, 1.0, 0.0, 0.0]
    assert [rows[q]["rag"] for q in ("q1", "q2", "q3", "q4")] == [1.0, 1.0, 1.0, 0.0]
    o = rep["overall"]
    assert o["closed_accuracy"] == 0.25 and o["rag_accuracy"] == 0.75 and o["rag_minus_closed"]["mean"] == 0.5
    assert o["source_retrieved_share"] == 0.75  # q2's source was not retrieved
    assert o["rag_accuracy_when_retrieved"] == pytest.approx(2 / 3) and o["rag_accuracy_when_not"] == 1.0
    assert o["by_limit_share"] == {"closed": 0.0, "rag": 0.25}
    assert rep["by_fact"]["default"]["n"] == 2 and rep["by_fact"]["default"]["rag_accuracy"] == 0.5
    assert res["rag_minus_closed"]["ci95"][0] <= 0.5 <= res["rag_minus_closed"]["ci95"][1]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "**Verdict:**" in md and "| default | 2 |" in md


def test_bad_input_names_the_folder_and_the_fix(tmp_path):
    cfg = folders(tmp_path, rag_rows=[{**q, "answer": "x"} for q in QS])
    with pytest.raises(ValueError, match=r"answers without retrieved chunks .*steps.query --rag INDEX"):
        rag_evaluate.run(cfg)
    (tmp_path / "closed" / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"closed-book answers in .*closed are incomplete"):
        rag_evaluate.run(cfg)
    with pytest.raises(ValueError, match=r"questions must be a steps.facts output folder"):
        rag_evaluate.run(cfg.model_copy(update={"questions": tmp_path / "nope"}))
    assert not (tmp_path / "rep").exists()
