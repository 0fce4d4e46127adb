"""Starting, stopping and resuming local runs from the UI, recorded in the run folder (`ui.json`).

A run is `python -m workflows.cli run PIPELINE --out RUNS/NAME -p k=v ...`, the very command a
person types, started in a session of its own so that it outlives the UI; its output goes to
`ui-log.txt`. Stop sends SIGINT to that process group, as Ctrl-C in a terminal would: the runner
stops its nodes, writes run.json ("interrupted") and exits. Resume starts the same command on the
same folder, and the runner reuses the finished nodes. Two runners never share a folder: each holds
the folder's runner lock (workflows.runner.folderlock), and a start holds an flock on `.ui.lock`
while it checks that none runs and records the new pid. A run started by `kubellm run` in a terminal
is found through that lock too, and Stop sends its runner the same SIGINT.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workflows.runner.folderlock import holder
from workflows.runner.state import atomic_json, read_json

LAUNCH_LOG = "ui-log.txt"
UI_SECRETS = ("ARGO_TOKEN", "KUBELLM_UI_TOKEN")
# the runners this UI process started: it reaps them (an ended one would stay a zombie that still "exists")
started_here: dict[int, subprocess.Popen] = {}


class RunConflict(RuntimeError):
    """A start or stop that cannot be done now (a runner already on the folder, nothing to stop)."""


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of a process (/proc/PID/stat field 22), to tell a reused pid apart;
    None where /proc is not there or the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def pid_alive(pid: int | None, start: str | None = None) -> bool:
    if not pid:
        return False
    proc = started_here.get(pid)
    if proc is not None and proc.poll() is not None:
        return False
    if Path("/proc").is_dir():
        now = _proc_start(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(folder: Path) -> bool:
    """Whether the runner the UI started for this folder still runs; its exit code is recorded once it ended."""
    ui = read_json(folder / "ui.json") or {}
    pid = ui.get("pid")
    if pid_alive(pid, ui.get("pid_start")):
        return True
    proc = started_here.pop(pid, None) if pid else None
    if proc is not None and proc.returncode is not None and ui.get("exit_code") is None:
        atomic_json(folder / "ui.json", ui | {"exit_code": proc.returncode, "ended": time.time()})
    return False


def launch_log_tail(folder: Path, lines: int = 20) -> str:
    from workflows.ui.runs import log_tail

    return log_tail(folder / LAUNCH_LOG, lines)


# `kubellm run` options the form offers beside the parameters: option -> its flag
OPTIONS = {"store": "--store", "jobs": "--jobs", "serve_port": "--serve-port"}


def command(pipeline: str, folder: Path, params: dict[str, str], options: dict[str, str] | None = None) -> list[str]:
    argv = [sys.executable, "-m", "workflows.cli", "run", pipeline, "--out", str(folder)]
    for k, v in (options or {}).items():
        if v not in (None, ""):
            argv += [OPTIONS[k], str(v)]
    for k, v in params.items():
        argv += ["-p", f"{k}={v}"]
    return argv


def start(folder: Path, pipeline: str, params: dict[str, str], cwd: Path | None = None,
          options: dict[str, str] | None = None) -> int:
    """Start the runner on `folder` (new or to resume), detached; its pid. RunConflict when one runs.
    `options`: store, jobs, serve_port, as `kubellm run` takes them."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".ui.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if alive(folder):
            raise RunConflict(f"a runner started here already works on {folder.name}; stop it first")
        who = holder(folder)
        if who is not None:
            raise RunConflict(f"{folder.name} is being run by `kubellm run` outside the UI"
                              f"{' (pid ' + str(who['pid']) + ')' if who.get('pid') else ''}; stop it first")
        with open(folder / LAUNCH_LOG, "ab") as log:
            argv = command(pipeline, folder, params, options)
            log.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} kubellm ui starts: kubellm "
                      f"{' '.join(argv[3:])}\n".encode())
            log.flush()
            # the UI's own secrets stay with the UI: a local run needs neither
            env = {k: v for k, v in os.environ.items() if k not in UI_SECRETS} | {"PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started_here[proc.pid] = proc
        atomic_json(folder / "ui.json", {"pipeline": pipeline, "params": params, "options": options or {}, "pid": proc.pid,
                                         "pid_start": _proc_start(proc.pid), "started_ts": time.time(),
                                         "exit_code": None, "stop_requested": None})
    return proc.pid


def outside_runner(folder: Path) -> dict | None:
    """A runner the UI did not start (a `kubellm run` in a terminal) working on `folder`:
    {"pid", "started", "argv"} from its lock (workflows.runner.folderlock)."""
    who = holder(folder) or {}
    pid = who.get("pid")
    ui_pid = (read_json(folder / "ui.json") or {}).get("pid")
    return who if isinstance(pid, int) and pid != ui_pid and pid_alive(pid) else None


def stop(folder: Path) -> None:
    """SIGINT, as Ctrl-C: the runner stops its nodes and records the run as interrupted. A runner the
    UI started gets it on its process group; one started in a terminal on its own pid (its terminal
    may hold other processes in the same group)."""
    ui = read_json(folder / "ui.json") or {}
    if alive(folder):
        atomic_json(folder / "ui.json", ui | {"stop_requested": time.time()})
        try:
            os.killpg(ui["pid"], signal.SIGINT)
        except ProcessLookupError:
            pass
        return
    who = outside_runner(folder)
    if who is None:
        raise RunConflict(f"no runner is working on {folder.name}")
    pid = who["pid"]
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise RunConflict(f"{folder.name} is run by pid {pid}, which this UI may not signal (another user); "
                          "stop it where it was started") from None


def resume_params(folder: Path, spec: dict) -> dict[str, str]:
    """The parameters to start the same run again: what the UI was given, else the recorded values
    that differ from the pipeline's defaults (a default is left to the compile, so the spec matches)."""
    from workflows.ui.runs import parameters_of

    ui = read_json(folder / "ui.json") or {}
    if ui.get("params") is not None:
        return dict(ui["params"])
    name = (read_json(folder / "workflow.json") or {}).get("name", "")
    return {k: v for k, v in parameters_of(folder).items()
            if k in spec and v not in (spec[k].default, spec[k].default.replace("{{workflow.name}}", name))}


def resume_options(folder: Path) -> dict[str, str]:
    """The `kubellm run` options to start the same run again: those the UI was given, else the store
    the compiled workflow was made for (a pvc-store workflow mounts the kubellm-data claim)."""
    from workflows.ui.runs import spec_of

    ui = read_json(folder / "ui.json") or {}
    if ui.get("options") is not None:
        return dict(ui["options"])
    volumes = spec_of(folder).get("volumes") or []
    pvc = any((v.get("persistentVolumeClaim") or {}).get("claimName") == "kubellm-data" for v in volumes)
    return {"store": "pvc" if pvc else "s3"}
