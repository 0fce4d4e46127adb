"""End to end: the compiled experiment workflow on the local runner with the bundled model, both
shipped studies cut to 2 rows each. The first run is interrupted (Ctrl-C) once a study's query has
finished; the same command resumes it without redoing finished nodes; a third run redoes nothing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, interrupt_when, port_free

ROOT = Path(__file__).resolve().parents[1]


def _cmd(out: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "workflows.cli", "run", "experiment", "--out", str(out),
            "--serve-port", str(port), "-p", "limit=2", "-p", "experiment=e2e",
            # the JSON form of models (per-model resources) runs locally as the comma form does
            "-p", 'models=[{"name": "smollm2-135m", "cpu": "1", "memory": "4Gi"}]',
            # the bundled 135M model's extractions of 2 rows may include an invalid one
            "-p", "max-failed-fraction=0.5"]


def _run(out: Path, port: int, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(out, port), cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)


def _finished(out: Path) -> dict[str, str]:
    """Finish time of every node that has succeeded."""
    done = {}
    for p in (out / "nodes").iterdir():
        st = json.loads((p / "status.json").read_text()) if (p / "status.json").exists() else {}
        if st.get("phase") == "Succeeded":
            done[p.name] = st.get("finished")
    return done


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_experiment_tiny_layout_files_and_rerun(tmp_path, cache_dir):
    out = tmp_path / "run"
    env = {**os.environ, "KUBELLM_CACHE": str(cache_dir)}
    port = free_port()

    # 1. interrupt once the first study's query has finished (the rest of the model's DAG is running)
    query0 = out / "nodes" / "model.0.study.0.query" / "status.json"
    interrupt_when(_cmd(out, port), ROOT, env, lambda: query0.exists() and json.loads(query0.read_text()).get(
        "phase") == "Succeeded", "the first study's query finished")
    done = _finished(out)
    assert "model.0.study.0.query" in done and "collect" not in done and "model" not in done
    assert port_free(port), "the model server outlived the interrupted run"

    # 2. the same command resumes: finished nodes keep their results, the rest runs (server included)
    first = _run(out, port, env)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    after = _finished(out)
    assert {k: after.get(k) for k in done} == done, "a finished node was redone on resume"
    assert {"collect", "model.0.serve", "model.0.study.1.query"} <= set(after)

    ts = json.loads((out / "nodes" / "plan" / "status.json").read_text())["outputs"]["parameters"]["timestamp"]
    folder = out / "s3" / "e2e" / "smollm2-135m" / ts  # {experiment}/{model}/{timestamp}/
    for study, n_items in (("study1", 2 * 5), ("study2", 2)):
        raw = _csv(folder / f"smollm2-135m_{study}_raw_responses.csv")
        structured = _csv(folder / f"smollm2-135m_{study}_structured.csv")
        probs = _csv(folder / f"smollm2-135m_{study}_probabilities.csv")
        assert len(raw) == len(structured) == len(probs) == 2
        assert all(r["response"] and r["model"] == "smollm2-135m" and r["error"] == "" for r in raw)
        # every row is accounted for: valid, or failed with a reason
        assert all(r["extract_ok"] == "True" or r["extract_error"] for r in structured)
        assert all(r["errors"] == "" for r in probs)
        long = [json.loads(x) for x in (folder / study / "probabilities" / "probabilities.jsonl").read_text().splitlines()]
        assert len(long) == n_items
        for it in long:
            assert abs(sum(it["probs"]) - 1) < 1e-6 and 0 < it["coverage"] <= 1
    s1 = _csv(folder / "smollm2-135m_study1_probabilities.csv")[0]
    assert {f"p_belief_s{s}_{v}pct" for s in range(4) for v in range(0, 101, 10)} <= set(s1)
    assert {"p_knowledge_yes", "p_knowledge_no", "belief_s2_expected"} <= set(s1)
    s2 = _csv(folder / "smollm2-135m_study2_structured.csv")
    assert {"Was/Wasn't", "Assessment", "response_text", "Scenario", "Goal", "State"} <= set(s2[0])

    report = out / "s3" / "e2e" / "report" / ts
    manifest = json.loads((report / "manifest.json").read_text())
    assert manifest["experiment"] == "e2e" and manifest["timestamp"] == ts
    assert (report / "report.html").exists() and any(report.glob("*heatmap*.png"))
    assert f"report: {report / 'report.md'}" in first.stdout

    # the server ran without LoRA and is gone; a re-run redoes nothing and starts no server
    before = _finished(out)
    second = _run(out, port, env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert _finished(out) == before
