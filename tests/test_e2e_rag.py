"""End to end: the compiled rag workflow on the local runner, bundled models, tiny sizes:
harvest -> index + facts -> retrieval-eval; serve -> answer closed-book and with retrieval -> judge
-> evaluate, and the report that says whether retrieval made the answers right."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, node_status as _status, port_free

ROOT = Path(__file__).resolve().parents[1]
TINY = ["-p", "topics=jobs-cronjobs", "-p", "questions=12", "-p", "answer-tokens=24", "-p", "judge-rows=3",
        "-p", "top-k=3"]


@pytest.mark.slow
def test_rag_tiny_runs_and_reports(tmp_path, cache_dir):
    out = tmp_path / "run"
    port = free_port()
    env = {**os.environ, "KUBELLM_CACHE": str(cache_dir)}
    cmd = [sys.executable, "-m", "workflows.cli", "run", "rag", "--out", str(out), "--serve-port", str(port), *TINY]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert port_free(port), "the model server outlived the run"
    for node in ("harvest", "index", "facts", "retrieval-eval", "answer-closed", "answer-rag", "judge", "evaluate"):
        assert _status(out, node).get("phase") == "Succeeded", node

    report = json.loads((out / "report.json").read_text())
    qs = [json.loads(line) for line in (out / "nodes/facts/artifacts/facts/questions.jsonl").read_text().splitlines()]
    kb = {json.loads(line)["id"] for line in (out / "nodes/harvest/artifacts/kb/docs.jsonl").read_text().splitlines()}
    assert len(qs) == 12 and {q["doc_id"] for q in qs} <= kb
    rows = report["per_question"]
    assert [r["id"] for r in rows] == [q["id"] for q in qs]
    from steps.facts import fact_correct

    for row in rows:  # the report's scores are the exact check applied to the answers it shows
        assert row["closed"] == float(fact_correct(row["fact"], row["answer"], row["closed_answer"] or ""))
        assert row["rag"] == float(fact_correct(row["fact"], row["answer"], row["rag_answer"] or ""))
        assert len(row["context_ids"]) == 3
    o = report["overall"]
    assert o["n"] == 12 and o["rag_accuracy"] == sum(r["rag"] for r in rows) / 12
    ci = o["rag_minus_closed"]
    assert ci["ci95"][0] <= ci["mean"] <= ci["ci95"][1]
    assert o["source_retrieved_share"] == sum(r["source_retrieved"] for r in rows) / 12
    ret = report["retrieval"]
    assert set(ret) >= {"hybrid", "dense", "bm25", "recall@5_hybrid_minus_bm25"} and ret["questions"] == 12
    j = report["judge"]
    assert j["judge"] and j["strength"] is not None
    assert "Judge" in (out / "report.md").read_text() and "Verdict" in (out / "report.md").read_text()
    assert float(_status(out, "evaluate")["outputs"]["parameters"]["rag_accuracy"]) == pytest.approx(o["rag_accuracy"])
