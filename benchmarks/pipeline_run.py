"""A whole pipeline run on this machine, recorded: `kubellm run PIPELINE` as a user runs it, then
its wall time, node timings and report summary in a result file of its own.

    python -m benchmarks.pipeline_run rag --run-dir runs/rag-default
    python -m benchmarks.pipeline_run distill --run-dir runs/demo -p steps=60

The result file (`<pipeline>_run-<UTC start>.json`) holds the command, the machine, the commit,
the wall time, each node's duration and phase, and the report's headline numbers (its `overall`,
`verdict`, and per pipeline the tables docs/benchmarks.md cites). The run folder keeps everything.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.record import REPO, Run

KEEP = {"distill": ("verdict", "similarity_verdict", "facts", "stopping", "cycles", "judge", "overall", "by_split",
                    "sizes", "timings_s", "node_timings_s"),
        "rag": ("verdict", "overall", "by_fact", "retrieval", "judge", "model", "rag"),
        "nli": ("verdict", "overall", "sizes", "node_timings_s"),
        "experiment": ()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pipeline", choices=sorted(KEEP))
    ap.add_argument("--run-dir", required=True, help="the run folder (kubellm run --out)")
    ap.add_argument("-p", "--param", action="append", default=[], help="key=value, passed to kubellm run")
    ap.add_argument("--out", default="benchmarks/results", help="folder for the result file")
    args = ap.parse_args(argv)

    with Run(f"{args.pipeline}_run", args.out, args) as run:
        cmd = [sys.executable, "-m", "workflows.cli", "run", args.pipeline, "--out", args.run_dir]
        for p in args.param:
            cmd += ["-p", p]
        t = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO)
        run.results["wall_s"] = round(time.monotonic() - t, 1)
        run.results["exit_code"] = proc.returncode
        nodes = Path(args.run_dir) / "nodes"
        run.results["nodes"] = {}
        for st in sorted(nodes.glob("*/status.json")):
            s = json.loads(st.read_text())
            run.results["nodes"][st.parent.name] = {"phase": s.get("phase"), "duration_s": s.get("duration_s")}
        rep = Path(args.run_dir) / "report.json"
        if rep.is_file():
            r = json.loads(rep.read_text())
            run.results["report"] = {k: r[k] for k in KEEP[args.pipeline] if k in r}
        run.save()
        if proc.returncode:
            raise SystemExit(f"kubellm run {args.pipeline} exited with {proc.returncode}; the result file says so")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
