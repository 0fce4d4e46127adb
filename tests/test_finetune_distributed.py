"""steps.finetune with several ranks on this CPU: torchrun, the gloo backend, the bundled SmolLM2-135M.

- Equivalence: 2 ranks at micro-batch b train on exactly the rows 1 rank at batch 2b trains on, step
  by step, and the loss curves agree within LOSS_TOL (LoRA and full; dropout off, since each rank
  draws its own dropout masks).
- Preemption: one rank is killed (SIGKILL) after a checkpoint; the step fails with a message saying
  how to resume; run again, it resumes from the last complete checkpoint and ends with the loss of the
  uninterrupted run, and its batch log shows no row read twice or skipped.
- Refusals before anything starts: fsdp on CPU, qlora on CPU, a checkpoint written by another number of
  ranks.

Each run is a real `python -m steps.finetune` process, as the workflow's finetune node runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The loss a rank logs is reduced over ranks in float32 (gloo all-reduce, then a mean), and the
# padded micro-batches differ (each pads to its own longest row), so the curves agree to float32
# rounding, not bit for bit. Measured here: at most 2.4e-7 apart over 4 LoRA steps.
LOSS_TOL = 1e-3
BASE = ["--base-model", "smollm2-135m", "--grad-accum", "1", "--dropout", "0", "--max-length", "96",
        "--learning-rate", "2e-4", "--seed", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """16 question/answer rows of different lengths, so micro-batches pad differently."""
    import random

    rng = random.Random(0)
    kinds = ["Pod", "Service", "Job", "CronJob", "Deployment"]
    words = ["replicas", "selector", "template", "schedule", "ports", "labels", "image", "command"]
    rows = [{"question": f"What does the field {rng.choice(words)} of a {rng.choice(kinds)} hold? ({i})",
             "answer": f"It holds the {' '.join(rng.choice(words) for _ in range(rng.randint(2, 14)))} "
                       f"of the object, entry {i}."} for i in range(16)]
    path = tmp_path_factory.mktemp("ddp") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def finetune(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """`python -m steps.finetune ARGS` as the finetune node runs it (not as a torchrun rank)."""
    p = subprocess.run([sys.executable, "-m", "steps.finetune", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=1800, env=_env())
    if check:
        assert p.returncode == 0, p.stderr[-4000:]
    return p


def _env() -> dict:
    """This environment without torchrun's rank variables (the test may itself run under one)."""
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]


def batches(out: Path) -> dict[int, list[int]]:
    """step -> the rows all ranks read at that step, in rank order."""
    steps: dict[int, list[int]] = {}
    for line in (out / "batches.jsonl").read_text().splitlines():
        b = json.loads(line)
        steps.setdefault(b["step"], []).extend(b["rows"])
    return steps


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def lora_runs(data, tmp_path_factory) -> dict[str, Path]:
    """LoRA, 6 steps, global batch 4: one rank at batch 4, two ranks at batch 2 (checkpoint every 2)."""
    root = tmp_path_factory.mktemp("lora")
    one, two = root / "one", root / "two"
    finetune(["--data", str(data), "--out", str(one), "--max-steps", "6", "--batch-size", "4", "--save-steps", "2",
              *BASE])
    p = finetune(["--data", str(data), "--out", str(two), "--max-steps", "6", "--batch-size", "2", "--save-steps",
                  "2", "--nproc", "2", *BASE])
    return {"one": one, "two": two, "log": p.stderr}


def test_two_ranks_at_b_match_one_rank_at_2b_lora(lora_runs):
    one, two = lora_runs["one"], lora_runs["two"]
    assert batches(one) == batches(two), "each step must read the same rows, split over the ranks"
    assert len(batches(two)) == 6 and all(len(rows) == 4 and -1 not in rows for rows in batches(two).values())
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b)) < LOSS_TOL, (a, b)
    assert a[0] != a[-1], "the loss must move, or agreement proves nothing"
    m = manifest(two)
    assert m["counts"]["ranks"] == 2 and m["counts"]["global_batch"] == 4 and m["counts"]["micro_batch"] == 2
    assert [r["rank"] for r in m["ranks"]] == [0, 1] and all(r["tokens"] > 0 and r["peak_mem_mb"] > 100
                                                            for r in m["ranks"])
    # tokens reduced across ranks: the sum of the ranks' own counts is what one rank read alone
    assert sum(r["tokens"] for r in m["ranks"]) == manifest(one)["ranks"][0]["tokens"]
    assert m["memory"]["estimate_mb"] > 0 and m["memory"]["measured_peak_mb"] > 0
    assert (two / "adapter" / "adapter_model.safetensors").exists() and (two / "merged" / "config.json").exists()
    assert not (two / "checkpoints").exists()
    # logs say which rank
    assert "finetune [rank 0/2]" in lora_runs["log"] and "finetune [rank 1/2]" in lora_runs["log"]


def test_two_ranks_at_b_match_one_rank_at_2b_full(data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--data", str(data), "--method", "full", "--max-steps", "3", "--learning-rate", "2e-5",
            "--save-steps", "100", *BASE[:-4], "--seed", "0"]
    finetune(["--out", str(one), "--batch-size", "4", *args])
    finetune(["--out", str(two), "--batch-size", "2", "--nproc", "2", *args])
    assert batches(one) == batches(two)
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 3 and max(abs(x - y) for x, y in zip(a, b)) < LOSS_TOL, (a, b)
    assert a[0] != a[-1]
    assert (two / "merged" / "model.safetensors").exists() and not (two / "adapter").exists()


def _worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the torchrun workers under the launcher process."""
    import psutil

    found = {}
    for p in psutil.Process(launcher).children(recursive=True):
        try:
            env = p.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RANK" in env and "steps.finetune" in " ".join(p.cmdline()):
            found[int(env["RANK"])] = p.pid
    return found


def test_a_killed_rank_resumes_from_the_checkpoint_with_the_same_result(data, lora_runs, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "steps.finetune", "--data", str(data), "--out", str(out), "--max-steps", "6",
           "--batch-size", "2", "--save-steps", "2", "--nproc", "2", *BASE]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = out / "checkpoints" / "checkpoint-2"
    deadline = time.monotonic() + 900
    killed = None
    while proc.poll() is None and time.monotonic() < deadline:
        if (ckpt / "batches-rank0.json").exists() and (ckpt / "batches-rank1.json").exists():
            ranks = _worker_pids(proc.pid)
            if 1 in ranks:
                os.kill(ranks[1], signal.SIGKILL)
                killed = ranks[1]
                break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert killed, "rank 1 was never seen after the first checkpoint"
    assert proc.returncode != 0, "killing a rank must fail the step"
    assert "run the step again to resume" in err.strip().splitlines()[-1]
    assert not (out / "manifest.json").exists()
    saved = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert saved, "the checkpoint written before the kill must be kept"

    again = finetune(cmd[3:])
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["resumed_from"] and int(cfg["resumed_from"].rsplit("-", 1)[-1]) in (2, 4)
    assert "resuming from checkpoint-" in again.stderr
    # the same rows at every step as the uninterrupted run: none read twice, none skipped
    assert batches(out) == batches(lora_runs["two"])
    rows = [r for step in sorted(batches(out)) for r in batches(out)[step]]
    # 24 rows = one epoch of the 16 in some order, then 8 distinct rows of the next epoch
    assert len(rows) == 24 and sorted(rows[:16]) == list(range(16)) and len(set(rows[16:])) == 8
    a, b = losses(out), losses(lora_runs["two"])
    assert len(a) == 6 and abs(a[-1] - b[-1]) < LOSS_TOL, (a, b)


def test_what_this_machine_cannot_run_is_refused_before_it_starts(data, tmp_path):
    p = finetune(["--data", str(data), "--out", str(tmp_path / "f"), "--nproc", "2", "--strategy", "fsdp", *BASE],
                 check=False)
    assert p.returncode == 2 and "strategy=fsdp" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "f").exists(), "nothing is started or written for a refused run"
    p = finetune(["--data", str(data), "--out", str(tmp_path / "q"), "--nproc", "2", "--method", "qlora", *BASE],
                 check=False)
    assert p.returncode != 0 and "qlora needs a CUDA GPU" in p.stderr and not (tmp_path / "q").exists()
    p = finetune(["--data", str(data), "--out", str(tmp_path / "a"), "--batch-size", "auto", "--global-batch", "3",
                  "--nproc", "2", *BASE], check=False)
    assert p.returncode == 2 and "global_batch=3" in p.stderr and not (tmp_path / "a").exists()


def test_a_checkpoint_from_another_number_of_ranks_is_refused(data, tmp_path):
    out = tmp_path / "o"
    ck = out / "checkpoints" / "checkpoint-2"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text(json.dumps({"train_batch_size": 2}))
    for r in (0, 1):
        (ck / f"batches-rank{r}.json").write_text(json.dumps({"steps": [], "tokens": 0}))
    p = finetune(["--data", str(data), "--out", str(out), "--max-steps", "4", "--batch-size", "2", *BASE], check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "written by 2 rank(s)" in p.stderr and "resume with the same nproc" in p.stderr
    assert ck.exists(), "the checkpoint is kept"
