"""Fine-tuning with several ranks on this machine, and the memory estimate against what was measured.

    flock /tmp/kubellm-heavy.lock python -m benchmarks.bench_distributed      # ~8 min on 2 cores

Part 1, throughput: the same LoRA fine-tune (steps.finetune, SmolLM2-135M, r 16 on every layer,
dropout 0, the same rows, the same global batch per optimizer step, --steps steps), one thing
changed at a time, each configuration its own subprocess, one after the other:
  1rank-2threads   one process, batch G, torch on all (2) cores                     (the baseline)
  1rank-1thread    one process, batch G, one thread: what one core does alone
  2ranks-ddp       torchrun, 2 ranks x batch G/2 on the gloo backend, one thread each
Tokens/s = the tokens the forward passes read (reduced over ranks) / training seconds (model
loading and saving excluded), from each run's manifest; ratios are over the baseline's, in this run.

Part 2, memory: one process at micro-batch 1, 4 and 8 (LoRA, the same rows): steps.memory's
estimate per device, as the finetune manifest reports it, next to the measured peak RSS of the
process. The run writes OUT/bench_distributed-<UTC start>.json (benchmarks/record.py), saved after
every configuration, and prints both tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.record import Run


def _finetune(tmp: str, name: str, argv: list[str], env: dict) -> dict:
    out = Path(tmp) / name
    cmd = [sys.executable, "-m", "steps.finetune", *argv, "--out", str(out)]
    print(f"[bench] {name}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    return {"command": " ".join(cmd[1:]).replace(tmp, "$TMP"),
            "env": {k: env[k] for k in ("OMP_NUM_THREADS",) if k in env},
            "train_s": m["timings_s"]["train"], "train_tokens": c.get("train_tokens"),
            "tokens_per_s": c.get("tokens_per_s"), "ranks": m.get("ranks"), "first_loss": c.get("first_loss"),
            "last_loss": c.get("last_loss"), "micro_batch": c.get("micro_batch"), "global_batch": c.get("global_batch"),
            "memory": m.get("memory")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results", help="results folder; each run adds a new file to it")
    ap.add_argument("--model", default="smollm2-135m", help="base model (bundled name or folder)")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per throughput configuration")
    ap.add_argument("--global-batch", type=int, default=8, help="rows per optimizer step (even)")
    ap.add_argument("--max-length", type=int, default=256, help="tokens per row at most")
    ap.add_argument("--memory-batches", default="1,4,8", help="micro-batches of the memory part")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data and the training order")
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    t0 = time.monotonic()
    with Run("bench_distributed", a.out, a) as run, tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "steps.nli_data", "--out", str(data), "--seed", str(a.seed)],
                       check=True, stdout=subprocess.DEVNULL)
        rows = str(data / "train_sft.jsonl")
        common = ["--data", rows, "--base-model", a.model, "--grad-accum", "1", "--learning-rate", "2e-4",
                  "--dropout", "0", "--seed", str(a.seed), "--max-length", str(a.max_length), "--merge", "false",
                  "--save-steps", "100000"]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "OMP_NUM_THREADS")}
        g = a.global_batch
        configs = [
            ("1rank-2threads", ["--max-steps", str(a.steps), "--batch-size", str(g), "--threads", str(cores)], env),
            ("1rank-1thread", ["--max-steps", str(a.steps), "--batch-size", str(g), "--threads", "1"], env),
            ("2ranks-ddp", ["--max-steps", str(a.steps), "--batch-size", str(g // 2), "--nproc", "2"],
             {**env, "OMP_NUM_THREADS": str(max(1, cores // 2))}),
        ]
        run.results["cores"] = cores
        run.results["throughput"] = {}
        for name, argv, e in configs:
            run.results["throughput"][name] = _finetune(tmp, name, [*common, *argv], e)
            run.save()
        base = run.results["throughput"]["1rank-2threads"]["tokens_per_s"]
        run.results["ratio_tokens_per_s_over_1rank_2threads"] = {
            k: v["tokens_per_s"] / base for k, v in run.results["throughput"].items()}
        run.results["memory"] = {}
        for b in [int(x) for x in a.memory_batches.split(",")]:
            r = _finetune(tmp, f"mem-b{b}", [*common, "--max-steps", "2", "--batch-size", str(b)], env)
            mem = r["memory"]
            run.results["memory"][str(b)] = {**mem, "estimate_over_measured": mem["estimate_mb"] / mem["measured_peak_mb"],
                                             "command": r["command"]}
            run.save()
        run.results["wall_s"] = time.monotonic() - t0
        run.save()
    print(f"{'config':<16} {'train s':>8} {'tokens/s':>9} {'x base':>7}")
    for k, v in run.results["throughput"].items():
        print(f"{k:<16} {v['train_s']:>8.1f} {v['tokens_per_s']:>9.1f} "
              f"{run.results['ratio_tokens_per_s_over_1rank_2threads'][k]:>7.2f}")
    print(f"{'micro-batch':<12} {'seq':>5} {'estimate MiB':>13} {'measured MiB':>13} {'ratio':>6}")
    for b, v in run.results["memory"].items():
        print(f"{b:<12} {v['seq_len']:>5} {v['estimate_mb']:>13.0f} {v['measured_peak_mb']:>13.0f} "
              f"{v['estimate_over_measured']:>6.2f}")


if __name__ == "__main__":
    main()
