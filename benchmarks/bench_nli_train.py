"""Training speed of the NLI fine-tune: TRL's SFTTrainer against steps.nli_train, one change at a time.

    flock /tmp/kubellm-heavy.lock python -m benchmarks.bench_nli_train              # ~8 min, 2 cores
    python -m benchmarks.bench_nli_train --steps 4                                  # a quick look

Each configuration trains the same model (LoRA r 16 on every layer, dropout 0) on the same train
split (steps.nli_data's Kubernetes-NLI pairs, --seed) with the same number of pairs per optimizer
step (--batch-size), for --steps steps, as its own subprocess, one after the other:
  trl          steps.finetune: TRL's SFTTrainer on train_sft.jsonl (one row per pair, the loss on the
               completion = label + end of turn, logits at every position), float32
  rows         steps.nli_train --pack false --precision float32: one row per pair, the loss on the
               label tokens, logits at those positions only
  packed       + --pack true: a premise's pairs in one row, the premise computed once
  packed-bf16  + --precision bfloat16 (only where the CPU has native bf16: avx512_bf16 / AMX)
Measured from each step's own manifest: training seconds (model loading and saving excluded),
pairs/s = steps x batch / training seconds, and tokens/s of what the forward passes read. Ratios
are pairs/s over the `trl` configuration's, in this run.

Speed only: the learning curves differ (loss on the label alone vs on the whole completion).
The run writes OUT/bench_nli_train-<UTC start>.json (benchmarks/record.py), saved after every
configuration, and prints a table.
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


def configs(bf16: bool) -> list[tuple[str, list[str]]]:
    out = [("trl", ["-m", "steps.finetune", "--grad-accum", "1", "--max-length", "512"]),
           ("rows", ["-m", "steps.nli_train", "--pack", "false", "--precision", "float32"]),
           ("packed", ["-m", "steps.nli_train", "--pack", "true", "--precision", "float32"])]
    if bf16:
        out.append(("packed-bf16", ["-m", "steps.nli_train", "--pack", "true", "--precision", "bfloat16"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results", help="results folder; each run adds a new file to it")
    ap.add_argument("--model", default="smollm2-135m", help="base model (bundled name or folder)")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per configuration")
    ap.add_argument("--batch-size", type=int, default=12, help="pairs per optimizer step")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data and the training order")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch CPU threads")
    a = ap.parse_args()
    from steps.nli_train import cpu_has_bf16

    t0 = time.monotonic()
    with Run("bench_nli_train", a.out, a) as run, tempfile.TemporaryDirectory(prefix="bench-nli-train-") as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "steps.nli_data", "--out", str(data), "--seed", str(a.seed)],
                       check=True, stdout=subprocess.DEVNULL)
        run.results["data"] = json.loads((data / "manifest.json").read_text()).get("counts")
        run.results["configs"] = {}
        common = ["--base-model", a.model, "--max-steps", str(a.steps), "--batch-size", str(a.batch_size),
                  "--learning-rate", "1e-3", "--dropout", "0", "--seed", str(a.seed), "--threads", str(a.threads),
                  "--merge", "false", "--save-steps", "100000"]
        for name, argv in configs(cpu_has_bf16()):
            out = Path(tmp) / name
            src = str(data / "train_sft.jsonl") if "steps.finetune" in argv else str(data)
            cmd = [sys.executable, *argv, "--data", src, "--out", str(out), *common]
            print(f"[bench] {name}: {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            manifest = json.loads((out / "manifest.json").read_text())
            counts, train_s = manifest["counts"], manifest["timings_s"]["train"]
            run.results["configs"][name] = {
                "command": " ".join(cmd[1:]).replace(tmp, "$TMP"), "train_s": train_s,
                "pairs_per_s": a.steps * a.batch_size / train_s, "tokens_per_s": counts.get("tokens_per_s"),
                "train_tokens": counts.get("train_tokens"), "first_loss": counts.get("first_loss"),
                "last_loss": counts.get("last_loss"), "peak_rss_mb": counts.get("peak_rss_mb")}
            run.save()
        base = run.results["configs"]["trl"]["pairs_per_s"]
        run.results["ratio_pairs_per_s_over_trl"] = {k: v["pairs_per_s"] / base
                                                     for k, v in run.results["configs"].items()}
        run.results["wall_s"] = time.monotonic() - t0
        run.save()
    print(f"{'config':<12} {'train s':>8} {'pairs/s':>8} {'x trl':>6}")
    for k, v in run.results["configs"].items():
        print(f"{k:<12} {v['train_s']:>8.1f} {v['pairs_per_s']:>8.2f} {run.results['ratio_pairs_per_s_over_trl'][k]:>6.2f}")


if __name__ == "__main__":
    main()
