"""How a DAG moves on, as Argo decides it: when a task's dependencies are met, what `depends` sees, and
the phase of a finished DAG. The dependencies themselves are read by workflows.refs."""

from __future__ import annotations

import json
from typing import Callable

from workflows.runner.state import FAILED, TERMINAL, Dag, Task


def daemoned(task: Task) -> bool:
    """A running daemon task that passed its readiness probe: dependents may start."""
    if task.phase is not None or not task.daemon or not task.children:
        return False
    return all(c.phase in TERMINAL or (c.ready and c.phase == "Running") for c in task.children) and any(
        c.ready for c in task.children
    )


def fulfilled(task: Task) -> bool:
    """Whether the tasks that depend on `task` may be decided."""
    return task.phase is not None or daemoned(task)


def results_of(dag: Dag) -> Callable[[str], bool]:
    """The value of a bare word of a `depends` expression: `task` or `task.Result`."""

    def word(w: str) -> bool:
        name, _, result = w.partition(".")
        task = dag.tasks[name]
        phase, kids = task.phase, task.children
        values = {
            "Succeeded": phase == "Succeeded", "Failed": phase == "Failed", "Errored": phase == "Error",
            "Skipped": phase == "Skipped",
            "Daemoned": task.daemon and any(getattr(c, "ready", False) or getattr(c, "reused", False) for c in kids),
            "AnySucceeded": task.fanout and any(c.phase == "Succeeded" for c in kids),
            "AllFailed": task.fanout and bool(kids) and all(c.phase == "Failed" for c in kids),
        }
        if not result:
            return values["Succeeded"] or values["Skipped"] or values["Daemoned"]
        return values[result]

    return word


def task_phase(task: Task) -> str | None:
    """A started task's phase once all its children are done (None while any still runs)."""
    phases = [c.phase for c in task.children]
    if not phases or not all(p in TERMINAL for p in phases):
        return None
    if task.fanout:
        return "Failed" if "Failed" in phases else "Error" if "Error" in phases else "Succeeded"
    return phases[0]


def dag_phase(dag: Dag) -> tuple[str, str]:
    """(phase, message) of a DAG whose tasks are all decided: its leaves' branches, failures first."""
    memo: dict[str, str] = {}

    def branch(name: str) -> str:
        # Argo: an omitted task inherits the phase of the branch above it, failures first
        if name not in memo:
            t = dag.tasks[name]
            phase = t.phase or "Succeeded"  # a daemoned task counts as succeeded
            if phase == "Omitted":
                above = [branch(d) for d in dag.deps[name]]
                phase = next((p for p in above if p in FAILED), "Succeeded")
            memo[name] = phase
        return memo[name]

    needed = {d for ds in dag.deps.values() for d in ds}
    leaves = [n for n in dag.tasks if n not in needed]
    failed = [n for n in leaves if branch(n) in FAILED]
    if failed:
        return branch(failed[0]), f"task '{failed[0]}' {branch(failed[0]).lower()}"
    return "Succeeded", ""


def aggregate(values: list[str]) -> str:
    """Argo's aggregated output of a fanned-out task: a JSON list, elements parsed if all are JSON."""
    try:
        parsed = [json.loads(v) for v in values]
    except ValueError:
        parsed = list(values)
    return json.dumps(parsed, separators=(",", ":"))
