"""What the UI knows of local runs, read from the run folders alone (docs/runner.md), so that it
survives a restart of the UI and shows runs started by `kubellm run` in a terminal too.

    <runs>/<name>/workflow.json   spec + parameters of the first run (the runner)
    <runs>/<name>/workflow.yaml   the compiled workflow (`kubellm run`); its label names the pipeline
    <runs>/<name>/run.json        summary of the latest finished or interrupted run (the runner)
    <runs>/<name>/nodes/<id>/     status.json (a finished node), log.txt, progress ("N/M")
    <runs>/<name>/ui.json         a run the UI started: pipeline, parameters, pid (workflows.ui.control)

Every name and path that comes from a browser goes through `run_dir` / `run_file`, which refuse what
would leave the runs folder (`..`, absolute paths, symlinks pointing out).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path
from typing import Any

from workflows.runner.state import iso, read_json

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ATTEMPT = re.compile(rb"^=== attempt \d+ at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[+-]\d\d:\d\d|Z)?):", re.M)


class NotARun(ValueError):
    """A name or path the UI refuses: outside the runs folder, or a folder that holds no run."""


def run_dir(root: Path, name: str, must_exist: bool = True) -> Path:
    """The folder of run `name` directly under `root`, refusing anything that resolves elsewhere."""
    if not NAME.fullmatch(name or "") or name in (".", ".."):
        raise NotARun(f"{name!r} is not a run name: use letters, digits, '.', '_' and '-' (no '/' or '..')")
    base = root.resolve()
    folder = (base / name).resolve()
    if folder.parent != base:
        raise NotARun(f"{name!r} resolves outside the runs folder {base} (a symlink?); refused")
    if must_exist and not is_run(folder):
        raise NotARun(f"{base / name} is not a run folder (no workflow.json, workflow.yaml, run.json or ui.json)")
    return folder


def run_file(root: Path, name: str, rel: str) -> Path:
    """A file inside run `name`, refusing absolute paths, `..` and symlinks that point out of the run."""
    folder = run_dir(root, name)
    if not rel or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise NotARun(f"{rel!r}: give a path relative to the run folder")
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder):
        raise NotARun(f"{rel!r} resolves outside the run folder {folder}; refused")
    if not path.is_file():
        raise NotARun(f"{rel!r}: no such file in run {name}")
    return path


def is_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / f).is_file() for f in ("workflow.json", "workflow.yaml", "run.json", "ui.json"))


def _ts(text: str | None) -> float | None:
    try:
        return dt.datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def pipeline_of(folder: Path) -> str | None:
    ui = read_json(folder / "ui.json") or {}
    if ui.get("pipeline"):
        return ui["pipeline"]
    try:
        head = (folder / "workflow.yaml").read_text()[:4000]  # metadata comes first in a compiled workflow
    except OSError:
        return None
    m = re.search(r"kubellm/pipeline:\s*'?([\w-]+)", head) or re.search(r"generateName:\s*'?([\w-]+?)-?'?\s*$", head, re.M)
    return m.group(1) if m else None


def spec_of(folder: Path) -> dict:
    """The workflow spec of the run (workflow.json, else the compiled workflow.yaml)."""
    spec = (read_json(folder / "workflow.json") or {}).get("spec")
    if spec:
        return spec
    try:
        import yaml

        return (yaml.safe_load((folder / "workflow.yaml").read_text()) or {}).get("spec") or {}
    except (OSError, ValueError):
        return {}


def parameters_of(folder: Path) -> dict[str, str]:
    """The run's workflow parameters as the runner resolved them."""
    for f in ("run.json", "workflow.json"):
        params = (read_json(folder / f) or {}).get("parameters")
        if params:
            return {k: str(v) for k, v in params.items()}
    return dict((read_json(folder / "ui.json") or {}).get("params") or {})


def state(folder: Path, alive: bool | None = None) -> dict:
    """status (Running, Succeeded, Failed, Stopped, Incomplete), message, started, finished, duration_s.

    `alive`: whether the runner the UI started for this folder runs (workflows.ui.control.alive)."""
    from workflows.ui.control import alive as runner_alive, launch_log_tail, outside_runner

    ui = read_json(folder / "ui.json") or {}
    run = read_json(folder / "run.json") or {}
    created = _ts((read_json(folder / "workflow.json") or {}).get("created"))
    ui_start = ui.get("started_ts")
    started = ui_start or _ts(run.get("started")) or created
    if alive is None:
        alive = runner_alive(folder)
    finished_ts = _ts(run.get("finished"))
    out = {"status": "Incomplete", "message": "", "started": iso(started), "finished": None, "duration_s": None,
           "by_ui": bool(ui)}
    if alive:
        out |= {"status": "Running", "duration_s": round(time.time() - started, 1) if started else None}
    elif (who := outside_runner(folder)) is not None:
        since = _ts(who.get("started")) or started
        out |= {"status": "Running", "message": f"started outside the UI: `kubellm run`, pid {who['pid']}",
                "started": iso(since), "duration_s": round(time.time() - since, 1) if since else None}
    elif run and (not ui_start or (finished_ts or 0) + 1 >= ui_start):
        status = run.get("phase") or "Failed"
        if status == "Failed" and run.get("message") == "interrupted":
            status = "Stopped"
        # a resumed run: from its first start, for the time of all its invocations
        invocations = run.get("invocations") or []
        out |= {"status": status, "message": run.get("message") or "",
                "started": (invocations[0].get("started") if invocations else None) or run.get("started"),
                "finished": run.get("finished"), "duration_s": run.get("total_wall_s", run.get("wall_s")),
                "invocations": len(invocations) or 1}
    elif ui:
        code = ui.get("exit_code")
        last = launch_log_tail(folder, 1).strip()
        out |= {"status": "Stopped" if ui.get("stop_requested") else "Failed",
                "message": last or (f"the runner exited with code {code}" if code is not None else
                                    "the runner ended before it wrote run.json")}
    return out


def _attempt_start(log: Path) -> float | None:
    """When the latest attempt in a node log began (its `=== attempt N at ISO:` header)."""
    try:
        with open(log, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - 65536))
            hits = ATTEMPT.findall(f.read())
            if not hits:
                f.seek(0)
                hits = ATTEMPT.findall(f.readline())
    except OSError:
        return None
    return _ts(hits[-1].decode()) if hits else None


def _read_progress(node_dir: Path) -> str:
    try:
        return (node_dir / "progress").read_text().strip()[:32]
    except OSError:
        return ""


def dag_tasks(spec: dict) -> list[tuple[str, str]]:
    """(task name, depends) of the entrypoint DAG, in the order the workflow lists them."""
    entry = spec.get("entrypoint")
    for t in spec.get("templates") or []:
        if t.get("name") == entry and "dag" in t:
            return [(x["name"], x.get("depends") or " && ".join(x.get("dependencies") or []))
                    for x in t["dag"].get("tasks") or []]
    return [(entry, "")] if entry else []


def nodes(folder: Path, running: bool) -> list[dict]:
    """A row per node: the entrypoint DAG's tasks in order, fanned-out items after their task."""
    run_nodes = (read_json(folder / "run.json") or {}).get("nodes") or {}
    dirs = {d.name: d for d in sorted((folder / "nodes").glob("*")) if d.is_dir()}
    tasks = dag_tasks(spec_of(folder))
    order = [t for t, _ in tasks]
    depends = dict(tasks)
    ids = [i for t in order for i in ([t] if t in dirs or t in run_nodes or not any(
        d.startswith(t + ".") for d in dirs) else []) + sorted((d for d in dirs if d.startswith(t + ".")), key=_natural)]
    ids += sorted((set(dirs) | set(run_nodes)) - set(ids), key=_natural)
    now = time.time()
    rows = []
    for nid in ids:
        d = folder / "nodes" / nid
        st = read_json(d / "status.json") or {}
        log = d / "log.txt"
        row = {"id": nid, "task": nid.split(".")[0], "depends": depends.get(nid, ""), "phase": "Pending",
               "progress": _read_progress(d), "duration_s": None, "started": None, "attempts": 0,
               "message": "", "reused": False, "has_log": log.is_file()}
        if st:
            row |= {"phase": st.get("phase") or "?", "duration_s": st.get("duration_s"), "started": st.get("started"),
                    "attempts": st.get("attempts", 0), "message": st.get("message") or ""}
        elif nid in run_nodes and not running:
            rn = run_nodes[nid]
            row |= {"phase": rn.get("phase") or "?", "duration_s": rn.get("duration_s"), "attempts": rn.get("attempts", 0),
                    "message": rn.get("message") or ""}
        if row["phase"] == "Failed" and row["message"] == "interrupted":
            row["phase"] = "Stopped"  # ended by a stop (Ctrl-C), not by its own failure
        if running and row["has_log"]:
            try:
                fresh = not st or log.stat().st_mtime > (d / "status.json").stat().st_mtime + 0.5
            except OSError:
                fresh = not st
            if fresh:
                t0 = _attempt_start(log)
                row |= {"phase": "Running", "started": iso(t0), "message": "",
                        "duration_s": round(now - t0, 1) if t0 else None}
        if nid in run_nodes:
            row["reused"] = bool(run_nodes[nid].get("reused")) and not running
        rows.append(row)
    return rows


def _natural(s: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


def log_tail(path: Path, lines: int = 200) -> str:
    """The last `lines` lines of a log (at most 5000), reading at most its last 1 MiB."""
    from workflows.runner.processes import tail

    try:
        size = path.stat().st_size
    except OSError:
        return ""
    return tail(path, max(0, size - (1 << 20)), max(1, min(lines, 5000)))


# ---------------------------------------------------------------------------------------------
# Results: metrics, report, files


def metrics(folder: Path, only_final: bool = False) -> dict[str, float]:
    """Numbers the steps reported as output parameters (the names of workflows.common.METRIC_HELP);
    `only_final`: the run's headline, those of the evaluate node(s), else (a pipeline without one,
    experiment) the rows all its steps completed and gave up on."""
    from workflows.common import METRIC_HELP

    out: dict[str, float] = {}
    final: dict[str, float] = {}
    totals: dict[str, float] = {}
    for st_file in sorted((folder / "nodes").glob("*/status.json")):
        st = read_json(st_file) or {}
        is_final = str(st.get("task") or st_file.parent.name).endswith("evaluate")
        for k, v in ((st.get("outputs") or {}).get("parameters") or {}).items():
            if k not in METRIC_HELP:
                continue
            try:
                x = float(v)
            except (TypeError, ValueError):
                continue
            out[f"{st_file.parent.name}.{k}"] = x
            if is_final:
                final[k] = x
            elif k in ("rows", "failed") and st.get("task") != "collect":  # collect's `failed` is their sum
                totals[k] = totals.get(k, 0.0) + x
    return (final or totals) if only_final else out


def inside(folder: Path, path: Path) -> bool:
    """Whether `path` is a file that resolves inside `folder` (a symlink pointing out is not)."""
    return path.is_file() and path.resolve().is_relative_to(folder.resolve())


def report_dir(folder: Path) -> Path | None:
    """Where the run's report lives: the run folder (distill, nli, rag copy it there), else the newest
    folder holding a report.md (experiment: {root}/report/{timestamp}/)."""
    if inside(folder, folder / "report.md") or inside(folder, folder / "report.json"):
        return folder
    hits = sorted((p for p in folder.glob("**/report.md") if inside(folder, p)), key=lambda p: p.stat().st_mtime)
    return hits[-1].parent if hits else None


def report_json(folder: Path) -> dict:
    where = report_dir(folder)
    return (read_json(where / "report.json") or {}) if where and inside(folder, where / "report.json") else {}


def report_md(folder: Path) -> tuple[str, str] | None:
    """(text of the run's report.md, its folder relative to the run folder), when there is one."""
    where = report_dir(folder)
    if where is None or not inside(folder, where / "report.md"):
        return None
    return (where / "report.md").read_text(errors="replace"), where.relative_to(folder).as_posix()


def cis(report: dict, limit: int = 200) -> dict[str, dict]:
    """Every estimate with a 95% CI in a report.json: dotted path -> {mean, lo, hi, n}. Lists (the
    per-question rows) are not walked."""
    out: dict[str, dict] = {}

    def walk(obj: Any, path: str) -> None:
        if len(out) >= limit or not isinstance(obj, dict):
            return
        ci = obj.get("ci95")
        if isinstance(obj.get("mean"), (int, float)) and isinstance(ci, list) and len(ci) == 2:
            out[path] = {"mean": obj["mean"], "lo": ci[0], "hi": ci[1], "n": obj.get("n")}
        for k, v in obj.items():
            if isinstance(v, dict):
                walk(v, f"{path}.{k}" if path else str(k))

    walk(report, "")
    return out


def files(folder: Path, suffixes: tuple[str, ...], limit: int = 50) -> list[str]:
    """Paths (relative to the run folder) of the run's files with these suffixes, node logs aside."""
    found = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in suffixes and not p.is_symlink() and inside(folder, p):
            found.append(p.relative_to(folder).as_posix())
            if len(found) >= limit:
                break
    return found


def summary(root: Path, name: str, alive: bool | None = None) -> dict:
    """One line of the runs list."""
    folder = run_dir(root, name)
    st = state(folder, alive)
    report = report_json(folder)
    return {"name": name, "pipeline": pipeline_of(folder) or "?", **st, "metrics": metrics(folder, only_final=True),
            "verdict": report.get("verdict") if isinstance(report.get("verdict"), str) else None}


def list_runs(root: Path) -> list[dict]:
    """Every run folder directly under `root`, newest first; a folder that cannot be read is listed
    with its problem rather than hiding the rest."""
    rows = []
    if not root.is_dir():
        return rows
    for d in root.iterdir():
        if not NAME.fullmatch(d.name) or not is_run(d):
            continue
        try:
            rows.append(summary(root, d.name))
        except NotARun:
            continue  # a symlink out of the runs folder: refused, so not offered
        except (OSError, ValueError) as e:
            rows.append({"name": d.name, "pipeline": "?", "status": "Unreadable", "message": str(e), "started": None,
                         "finished": None, "duration_s": None, "metrics": {}, "verdict": None, "by_ui": False})
    return sorted(rows, key=lambda r: r.get("started") or "", reverse=True)


def compare(root: Path, a: str, b: str) -> dict:
    """Two runs side by side: parameters that differ, headline metrics, and estimates with CIs."""
    fa, fb = run_dir(root, a), run_dir(root, b)
    pa, pb = parameters_of(fa), parameters_of(fb)
    params = [(k, pa.get(k), pb.get(k)) for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    ma, mb = metrics(fa), metrics(fb)
    mets = [(k, ma.get(k), mb.get(k)) for k in sorted(set(ma) | set(mb))]
    ca, cb = cis(report_json(fa)), cis(report_json(fb))
    estimates = [(k, ca.get(k), cb.get(k)) for k in list(ca) + [k for k in cb if k not in ca]]
    return {"a": summary(root, a), "b": summary(root, b), "params": params, "metrics": mets, "estimates": estimates,
            "same_pipeline": pipeline_of(fa) == pipeline_of(fb)}
