"""Benchmark the distill pipeline's parts on this machine, each against a baseline in the same run.

    python -m benchmarks.bench_distill --out benchmarks/results          # everything (~10 min)
    python -m benchmarks.bench_distill --only runner,evaluate            # a subset
    python -m benchmarks.bench_distill --demo-run runs/demo              # add a finished demo run's timings

Measures: model preparation (GGUF -> HF folder, fresh cache), vLLM server start, query tokens/s at
concurrency 1 and 16 (ratio = the concurrency speed-up), fine-tune tokens/s and peak RSS, evaluate
pairs/s (RAGAS vs batched sentence-transformers on the same pairs), local-runner overhead per node
(runner vs spawning the same processes directly). With --demo-run, also the node timings of a
finished `kubellm run distill` folder, with that run's own start time and parameters (it is a
separate run: its figures are copied, not measured here). Each run writes a new file
OUT/bench_distill-<UTC start>.json (benchmarks/record.py: command, date, commit, machine) and
prints the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.record import Run

QUESTIONS = [
    "What does the replicas field of a Deployment spec control?",
    "What is a Kubernetes Service used for?",
    "How does a liveness probe differ from a readiness probe?",
    "What does a PersistentVolumeClaim request?",
    "What is the purpose of a ConfigMap?",
    "What does the restartPolicy of a Pod decide?",
    "What is a StatefulSet used for?",
    "How does a HorizontalPodAutoscaler decide the number of replicas?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_prepare(results: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "KUBELLM_CACHE": d}
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "steps.models", "--name", "smollm2-135m"], env=env, check=True,
                       capture_output=True)
        cold = time.monotonic() - t0
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "steps.models", "--name", "smollm2-135m"], env=env, check=True,
                       capture_output=True)
        warm = time.monotonic() - t0
    results["prepare"] = {"convert_cold_s": cold, "resolve_cached_s": warm, "ratio_cold_over_cached": cold / warm}


async def _tokens(client, n: int, max_tokens: int) -> tuple[int, float]:
    t0 = time.monotonic()
    res = await asyncio.gather(*(client.chat([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + f" ({i})"}],
                                             max_tokens=max_tokens, temperature=0.0, seed=i, ignore_eos=True)
                                 for i in range(n)))
    return sum(r.data["usage"]["completion_tokens"] for r in res), time.monotonic() - t0


def bench_server_and_query(results: dict, n: int = 32, max_tokens: int = 64) -> None:
    from steps.client import Client, Endpoint
    from steps.serve import ServeConfig, serving

    cfg = ServeConfig(model="smollm2-135m", port=free_port(), log_file=str(Path(tempfile.gettempdir()) / "bench-vllm.log"))
    t0 = time.monotonic()
    with serving(cfg) as server:
        start_s = time.monotonic() - t0
        ep = Endpoint(base_url=server.base_url + "/v1", model=server.model)

        async def go(conc: int, count: int) -> tuple[int, float]:
            async with Client(ep, concurrency=conc) as c:
                await _tokens(c, 2, 8)  # warm-up
                return await _tokens(c, count, max_tokens)

        t1, s1 = asyncio.run(go(1, max(4, n // 4)))
        t16, s16 = asyncio.run(go(16, n))
    results["serve"] = {"ready_s": server.ready_s, "start_to_ready_s": start_s}
    results["query"] = {"c1_tokens_per_s": t1 / s1, "c16_tokens_per_s": t16 / s16,
                        "ratio_c16_over_c1": (t16 / s16) / (t1 / s1), "max_tokens": max_tokens,
                        "requests_c16": n}


def bench_finetune(results: dict, steps: int = 20) -> None:
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "train.jsonl"
        with data.open("w") as f:
            for i in range(64):
                q = QUESTIONS[i % len(QUESTIONS)]
                f.write(json.dumps({"question": q, "answer": f"In Kubernetes, this is answer number {i} to: {q}"}) + "\n")
        subprocess.run([sys.executable, "-m", "steps.finetune", "--data", d, "--out", f"{d}/ft", "--base-model",
                        "smollm2-135m", "--max-steps", str(steps), "--merge", "false"], check=True, capture_output=True)
        m = json.loads(Path(f"{d}/ft/manifest.json").read_text())
    c = m["counts"]
    results["finetune"] = {"steps": c["steps"], "tokens_per_s": c["tokens_per_s"], "peak_rss_mb": c["peak_rss_mb"],
                           "s_per_step": m["timings_s"]["train"] / c["steps"], "batch": "2 x accum 2", "method": "lora r=16"}


def bench_evaluate(results: dict, n: int = 200) -> None:
    from sentence_transformers import SentenceTransformer

    from steps.evaluate import EvaluateConfig, embedding_path, semantic_similarity

    path = embedding_path(EvaluateConfig(data="d", baseline="b", finetuned="f", out="o"))
    pairs = [(f"{QUESTIONS[i % 8]} answer {i} about pods and replicas", f"reference {i}: {QUESTIONS[(i + 3) % 8]}")
             for i in range(n)]
    semantic_similarity(pairs[:4], path)  # load once before timing
    t0 = time.monotonic()
    ragas = semantic_similarity(pairs, path)
    ragas_s = time.monotonic() - t0
    model = SentenceTransformer(path, device="cpu")
    t0 = time.monotonic()
    a = model.encode([p[0] for p in pairs], batch_size=64, normalize_embeddings=True)
    b = model.encode([p[1] for p in pairs], batch_size=64, normalize_embeddings=True)
    st = (a * b).sum(axis=1)
    st_s = time.monotonic() - t0
    diff = max(abs(x - float(y)) for x, y in zip(ragas, st))
    results["evaluate"] = {"pairs": n, "ragas_pairs_per_s": n / ragas_s, "batched_st_pairs_per_s": n / st_s,
                           "ratio_ragas_over_batched": st_s / ragas_s, "max_score_difference": diff}


def bench_runner(results: dict, n: int = 12) -> None:
    import yaml

    from workflows.runner import run_workflow

    cmd = ["python", "-c", "pass"]
    tasks = [{"name": f"n{i}", "template": "noop", **({"depends": f"n{i - 1}"} if i else {})} for i in range(n)]
    doc = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"generateName": "bench-"},
           "spec": {"entrypoint": "main", "templates": [
               {"name": "main", "dag": {"tasks": tasks}},
               {"name": "noop", "container": {"image": "python:3.11", "command": cmd}}]}}
    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        from rich.console import Console

        res = run_workflow(yaml.safe_load(yaml.safe_dump(doc)), Path(d) / "run", console=Console(file=open(os.devnull, "w")))
        runner_s = time.monotonic() - t0
        assert res.phase == "Succeeded"
    t0 = time.monotonic()
    for _ in range(n):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    direct_s = time.monotonic() - t0
    results["runner"] = {"nodes": n, "runner_s": runner_s, "direct_spawn_s": direct_s,
                         "overhead_per_node_s": (runner_s - direct_s) / n, "ratio_runner_over_direct": runner_s / direct_s}


def bench_demo(results: dict, run_dir: Path) -> None:
    # the demo ran before this benchmark, as its own command: keep what identifies that run (when,
    # with which parameters, whether nodes were reused from an earlier attempt) beside its timings
    run = json.loads((run_dir / "run.json").read_text())
    rep = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").exists() else {}
    nodes = {k: v for k, v in (run.get("nodes") or {}).items() if isinstance(v, dict)}
    results["demo"] = {"run_dir": str(run_dir), "started": run.get("started"), "finished": run.get("finished"),
                       "phase": run.get("phase"), "parameters": run.get("parameters"),
                       "wall_s": run.get("wall_s"), "runner_overhead_s": run.get("overhead_s"),
                       "nodes": {k: v.get("duration_s") for k, v in nodes.items()},
                       "reused_nodes": sorted(k for k, v in nodes.items() if v.get("reused")),
                       "verdict": rep.get("verdict"), "overall": rep.get("overall"), "by_split": rep.get("by_split"),
                       "finetune_counts": (rep.get("finetune") or {}).get("counts"), "versions": rep.get("versions")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="results folder; each run adds a new file to it")
    ap.add_argument("--only", default="prepare,serve,finetune,evaluate,runner",
                    help="comma-separated: prepare, serve (server start + query), finetune, evaluate, runner")
    ap.add_argument("--demo-run", help="a finished `kubellm run distill` folder whose timings and verdict to copy in")
    a = ap.parse_args()
    if a.demo_run and not (Path(a.demo_run) / "run.json").exists():
        ap.error(f"--demo-run {a.demo_run}: no run.json there; give the --out folder of a finished `kubellm run distill`")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    todo = [x.strip() for x in a.only.split(",") if x.strip()]
    with Run("bench_distill", a.out, a) as run:
        results = run.results
        if a.demo_run:
            bench_demo(results, Path(a.demo_run))
            run.save()
        for name, fn in (("prepare", bench_prepare), ("serve", bench_server_and_query), ("finetune", bench_finetune),
                         ("evaluate", bench_evaluate), ("runner", bench_runner)):
            if name in todo:
                t0 = time.monotonic()
                fn(results)
                run.save()  # after every section: a stopped run keeps what it measured
                print(f"{name}: done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
