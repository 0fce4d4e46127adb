"""Run folders as the local runner writes them (workflows/runner/state.py, run.py; docs/runner.md),
built without running anything, for the tests of `kubellm ui`.

    folder = make_run(tmp_path, "d1", "distill", finished={"check-params": "Succeeded", "harvest": "Failed"},
                      running=["serve"], phase="Failed", message="harvest: exit code 1")
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from workflows.runner.state import iso

RENDERED = Path(__file__).resolve().parents[1] / "workflows" / "rendered"


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n" if not isinstance(data, str) else data)
    return path


def status(nid: str, phase: str, started: float, duration: float, outputs: dict | None = None, attempts: int = 1,
           message: str = "", folder: Path | None = None) -> dict:
    """nodes/<id>/status.json as workflows.runner.state.node_status writes it."""
    return {"id": nid, "task": nid.split(".")[0], "template": nid, "phase": phase, "message": message, "item": None,
            "daemon": False, "inputs": {}, "in_artifacts": {},
            "outputs": {"parameters": outputs or {}, "artifacts": {}}, "started": iso(started),
            "finished": iso(started + duration), "duration_s": duration, "busy_s": duration, "attempts": attempts,
            "exit_code": 0 if phase == "Succeeded" else 1, "log": str((folder or Path(".")) / "nodes" / nid / "log.txt")}


def make_run(root: Path, name: str, pipeline: str = "distill", params: dict | None = None,
             finished: dict[str, str] | None = None, running: list[str] = (), progress: dict[str, str] | None = None,
             phase: str | None = None, message: str = "", outputs: dict[str, dict] | None = None,
             started: float | None = None) -> Path:
    """A run folder of `pipeline` (its committed rendered YAML): `finished` nodes have a status.json,
    `running` ones only a log; `phase` writes run.json (None: the runner has not finished)."""
    folder = root / name
    doc = yaml.safe_load((RENDERED / f"{pipeline}.yaml").read_text())
    spec = doc["spec"]
    values = {p["name"]: str(p.get("value", "")) for p in spec["arguments"]["parameters"]} | (params or {})
    t0 = started or time.time() - 600
    write(folder / "workflow.yaml", yaml.safe_dump(doc, sort_keys=False))
    write(folder / "workflow.json", {"name": name, "uid": "00000000-0000-4000-8000-000000000000", "created": iso(t0),
                                     "parameters": values, "spec": spec})
    t = t0
    nodes = {}
    for nid, ph in (finished or {}).items():
        write(folder / "nodes" / nid / "log.txt", f"=== attempt 1 at {iso(t)}: python -m steps.{nid}\nworking\ndone\n")
        st = status(nid, ph, t, 30.0, (outputs or {}).get(nid), folder=folder)
        write(folder / "nodes" / nid / "status.json", st)
        for f in ("log.txt", "status.json"):  # as old as the node (a log newer than status.json is a new attempt)
            os.utime(folder / "nodes" / nid / f, (t + 30, t + 30))
        nodes[nid] = {"phase": ph, "attempts": 1, "duration_s": 30.0, "busy_s": 30.0, "reused": False}
        t += 30
    for nid in running:
        write(folder / "nodes" / nid / "log.txt", f"=== attempt 1 at {iso(time.time() - 5)}: python -m steps.{nid}\n"
                                                  + "".join(f"line {i}\n" for i in range(300)))
    for nid, p in (progress or {}).items():
        write(folder / "nodes" / nid / "progress", p)
    if phase:
        write(folder / "run.json", {"workflow": name, "uid": "00000000-0000-4000-8000-000000000000", "phase": phase,
                                    "message": message, "started": iso(t0), "finished": iso(t + 1),
                                    "wall_s": round(t + 1 - t0, 3), "node_s": 30.0 * len(nodes), "overhead_s": 1.0,
                                    "parallelism": 1, "parameters": values, "failed_node": None, "nodes": nodes})
    return folder


HOLD = """
import sys, time
from pathlib import Path
from workflows.runner.folderlock import folder_lock
with folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    while True:
        time.sleep(0.05)
"""


@contextmanager
def held_elsewhere(folder: Path):
    """Another process holds the folder's runner lock as a `kubellm run` would (the real lock of
    workflows.runner.folderlock) until the block ends (then it is killed); yields that process."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout.readline().strip() == "held", "the holder did not take the lock"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
