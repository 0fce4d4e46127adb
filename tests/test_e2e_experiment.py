"""End to end: the compiled experiment workflow on the local runner with the bundled model, both
shipped studies cut to 2 rows each. Then the same command again: nothing is redone."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, port: int, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workflows.cli", "run", "experiment", "--out", str(out),
                           "--serve-port", str(port), "-p", "limit=2", "-p", "experiment=e2e"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_experiment_tiny_layout_files_and_rerun(tmp_path, cache_dir):
    out = tmp_path / "run"
    env = {**os.environ, "KUBELLM_CACHE": str(cache_dir)}
    port = free_port()
    first = _run(out, port, env)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

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
    before = {p.name: json.loads((p / "status.json").read_text()).get("finished") for p in (out / "nodes").iterdir()
              if (p / "status.json").exists()}
    second = _run(out, port, env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = {p.name: json.loads((p / "status.json").read_text()).get("finished") for p in (out / "nodes").iterdir()
             if (p / "status.json").exists()}
    assert {k: v for k, v in after.items() if k in before} == before
