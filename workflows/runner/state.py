"""The state of a run: nodes, tasks and DAGs in memory, and the files of the run folder that record them.

`workflow.json` pins the spec and parameters of the first run (a re-run must match it), each node's
`status.json` is what resume reads, `run.json` summarises the latest run (docs/runner.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workflows.runner.errors import WorkflowError
from workflows.runner.expressions import as_str

TERMINAL = frozenset({"Succeeded", "Failed", "Error", "Skipped", "Omitted"})
FAILED = frozenset({"Failed", "Error"})


@dataclass
class RunResult:
    phase: str  # "Succeeded" or "Failed"
    nodes: dict[str, dict]  # node id -> status (as in nodes/<id>/status.json)
    wall_s: float
    overhead_s: float  # wall time not covered by any node process
    out: Path
    failed_node: str | None = None
    log_tail: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.phase == "Succeeded"


@dataclass(eq=False)
class Node:
    """One container run (one pod on a cluster), including its retries."""

    id: str
    task: "Task"
    tmpl: dict
    tpath: str
    inputs: dict[str, str]
    in_arts: dict[str, Path | None]
    dir: Path
    item: Any = None
    daemon: bool = False
    phase: str = "Pending"
    message: str = ""
    reused: bool = False
    attempts: int = 0
    exit_code: int | None = None
    outputs: dict = field(default_factory=lambda: {"parameters": {}, "artifacts": {}})
    proc: subprocess.Popen | None = None
    started: float | None = None  # wall clock, first attempt
    finished: float | None = None
    t_first: float = 0.0  # monotonic, first attempt
    t_attempt: float = 0.0  # monotonic, current attempt
    intervals: list = field(default_factory=list)  # (start, end) monotonic spans of useful work
    retry_at: float | None = None
    deadline: float | None = None
    kill_at: float | None = None
    kill_reason: str | None = None
    stopping: bool = False
    ready: bool = False
    probe: dict | None = None
    probe_next: float = 0.0
    probe_fails: int = 0
    ready_by: float = 0.0
    locks: list = field(default_factory=list)
    log_start: int = 0
    stream_pos: int = 0
    recorded: dict | None = None  # status.json of the earlier run this node was reused from
    resource: tuple | None = None  # a resource node: (object, success, failure requirements)
    art_paths: dict = field(default_factory=dict)
    param_paths: dict = field(default_factory=dict)


@dataclass(eq=False)
class Task:
    name: str
    id: str
    spec: dict
    path: str
    dag: "Dag"
    daemon: bool = False
    keep_daemon_down: bool = False
    phase: str | None = None
    message: str = ""
    fanout: bool = False
    children: list = field(default_factory=list)  # Node or Dag


@dataclass(eq=False)
class Dag:
    id: str
    tmpl: dict
    tpath: str
    inputs: dict[str, str]
    in_arts: dict[str, Path | None]
    parent: Task | None
    tasks: dict[str, Task] = field(default_factory=dict)
    deps: dict[str, list[str]] = field(default_factory=dict)
    logic: dict[str, tuple | None] = field(default_factory=dict)
    phase: str = "Running"
    message: str = ""
    outputs: dict = field(default_factory=lambda: {"parameters": {}, "artifacts": {}})
    started: bool = False  # a node inside it was launched (reused nodes do not count)


class _NoItem:
    def __repr__(self) -> str:
        return "<no item>"


NO_ITEM = _NoItem()  # a task that is not fanned out: `{{item}}` means nothing in it


def atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def iso(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds") if t else None


def node_status(node: Node) -> dict:
    """What nodes/<id>/status.json records, and what resume compares against."""
    return {
        "id": node.id, "task": node.task.name, "template": node.tmpl.get("name"), "phase": node.phase,
        "message": node.message, "item": node.item, "daemon": node.daemon, "inputs": node.inputs,
        "in_artifacts": {k: str(v) if v else None for k, v in node.in_arts.items()},
        "outputs": node.outputs, "started": iso(node.started), "finished": iso(node.finished),
        "duration_s": round(node.finished - node.started, 3) if node.started and node.finished else 0.0,
        "busy_s": round(sum(b - a for a, b in node.intervals), 3), "attempts": node.attempts,
        "exit_code": node.exit_code, "log": str(node.dir / "log.txt"),
    }


def resolve_parameters(spec: dict, given: dict[str, str], workflow_name: str) -> dict[str, str]:
    """The workflow parameters of this run: declared defaults, overridden by `given`, checked against enums."""
    declared = (spec.get("arguments") or {}).get("parameters") or []
    names = [p["name"] for p in declared]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise WorkflowError(f"unknown parameter(s) {', '.join(unknown)}; this workflow takes: {', '.join(names) or 'no parameters'}")
    values = {}
    for p in declared:
        name = p["name"]
        raw = given[name] if name in given else p.get("value", p.get("default"))
        if raw is None:
            raise WorkflowError(f"parameter '{name}' has no value; pass one (-p {name}=...)")
        value = as_str(raw).replace("{{workflow.name}}", workflow_name)
        enum = [as_str(e) for e in p.get("enum") or []]
        if enum and value not in enum:
            raise WorkflowError(f"parameter '{name}'={value!r} is not allowed; allowed values: {', '.join(enum)}")
        values[name] = value
    return values


def check_resume(out: Path, name: str, params: dict[str, str], spec: dict) -> str:
    """The run's uid: a new one for a new folder, the recorded one when the folder holds this same run."""
    record = out / "workflow.json"
    old = read_json(record)
    if old is None:
        uid = str(uuid.uuid4())
        atomic_json(record, {"name": name, "uid": uid, "created": iso(time.time()),
                             "parameters": params, "spec": spec})
        return uid
    diffs = [f"parameter {k}: {old.get('parameters', {}).get(k)!r} -> {params.get(k)!r}"
             for k in sorted(set(old.get("parameters", {})) | set(params))
             if old.get("parameters", {}).get(k) != params.get(k)]
    diffs += _diff(old.get("spec"), spec, "spec")
    if diffs:
        shown = "\n  ".join(diffs[:8]) + (f"\n  ... and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise WorkflowError(f"{out} holds a run of a different workflow or parameters:\n  {shown}\n"
                            "resuming would mix results; use a new --out (or delete this folder) to start fresh")
    return old.get("uid") or str(uuid.uuid4())


def _diff(a: Any, b: Any, path: str) -> list[str]:
    """Field paths where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _diff(a.get(k), b.get(k), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    if a != b:
        short = lambda v: (s if len(s := json.dumps(v)) <= 60 else s[:57] + "...")  # noqa: E731
        return [f"{path}: {short(a)} -> {short(b)}"]
    return []
