"""`kubellm ui` starts, stops and resumes local runs: a detached runner with its pid in ui.json, stopped
with SIGINT like Ctrl-C, never two on one folder. The runner here is a stand-in script that behaves
like `kubellm run` towards the folder (a node log while it works; run.json "interrupted" on SIGINT)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.runfolders import held_elsewhere, make_run
from workflows.runner.folderlock import holder
from workflows.runner.state import read_json
from workflows.ui import control
from workflows.ui.app import create_app

FAKE_RUNNER = r"""
import datetime, json, pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
now = lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
started = now()
def stop(signum, frame):
    (out / "run.json").write_text(json.dumps({"phase": "Failed", "message": "interrupted", "started": started,
        "finished": now(), "wall_s": 1.0, "parameters": {}, "nodes": {"harvest": {"phase": "Failed"}}}))
    sys.exit(130)
# before anything the test waits for, as the runner does before its nodes start: a SIGINT that came
# earlier would be lost where the test process ignores SIGINT (a background job) and so this one does
signal.signal(signal.SIGINT, stop)
log = out / "nodes" / "harvest" / "log.txt"
log.parent.mkdir(parents=True, exist_ok=True)
log.write_text(f"=== attempt 1 at {started}: python -m steps.harvest\n")
print("args:", sys.argv[2:], flush=True)
print("secrets seen:", [k for k in ("ARGO_TOKEN", "KUBELLM_UI_TOKEN") if k in __import__("os").environ], flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def fake_runner(monkeypatch, tmp_path):
    script = tmp_path / "fake_runner.py"
    script.write_text(FAKE_RUNNER)
    monkeypatch.setattr(control, "command", lambda pipeline, folder, params, options=None: [
        sys.executable, str(script), str(folder), pipeline, *[f"{k}={v}" for k, v in params.items()],
        *[f"--{k}={v}" for k, v in (options or {}).items()]])
    yield
    for pid, proc in list(control.started_here.items()):  # never leave one running
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_start_stop_resume(tmp_path, fake_runner, monkeypatch):
    monkeypatch.setenv("ARGO_TOKEN", "Bearer argo-secret")
    monkeypatch.setenv("KUBELLM_UI_TOKEN", "ui-secret")
    root = tmp_path / "runs"
    client = TestClient(create_app(root), base_url="http://127.0.0.1:8765")
    folder = root / "d1"
    control.start(folder, "distill", {"steps": "20"})
    ui = read_json(folder / "ui.json")
    assert ui["pipeline"] == "distill" and ui["params"] == {"steps": "20"} and ui["pid"] > 0
    assert wait_for(lambda: (folder / "nodes" / "harvest" / "log.txt").exists())
    run = client.get("/api/runs/d1").json()
    assert run["status"] == "Running" and run["can_stop"] and not run["can_resume"]

    with pytest.raises(control.RunConflict, match="already works on d1"):
        control.start(folder, "distill", {"steps": "20"})  # never two runners on one folder
    assert client.post("/runs/d1/resume").status_code == 409

    r = client.post("/runs/d1/stop", follow_redirects=False)
    assert r.status_code == 303
    assert wait_for(lambda: not control.alive(folder))
    assert read_json(folder / "ui.json")["exit_code"] == 130
    run = client.get("/api/runs/d1").json()
    assert run["status"] == "Stopped" and run["can_resume"] and not run["can_stop"]
    assert client.post("/runs/d1/stop").status_code == 409  # nothing to stop

    time.sleep(1.1)  # run.json's seconds: the resumed start is later than the interrupted run's finish
    assert client.post("/runs/d1/resume", follow_redirects=False).status_code == 303
    def resumed_output() -> str:  # what the resumed runner wrote (the first one's lines are above its header)
        return control.launch_log_tail(folder, 50).rsplit("kubellm ui starts", 1)[-1]

    assert wait_for(lambda: "args: ['distill', 'steps=20']" in resumed_output())
    assert wait_for(lambda: "secrets seen: []" in resumed_output())  # the UI's tokens stay in the UI
    assert client.get("/api/runs/d1").json()["status"] == "Running"
    control.stop(folder)
    assert wait_for(lambda: not control.alive(folder))


def test_a_restarted_ui_sees_and_stops_the_runner_it_started_before(tmp_path, fake_runner):
    root = tmp_path / "runs"
    pid = control.start(root / "d1", "distill", {"steps": "20"})
    assert wait_for(lambda: (root / "d1" / "nodes" / "harvest" / "log.txt").exists())
    proc = control.started_here.pop(pid)  # a new UI process knows nothing but the run folder
    try:
        client = TestClient(create_app(root), base_url="http://127.0.0.1:8765")
        run = client.get("/api/runs/d1").json()
        assert run["status"] == "Running" and run["can_stop"]
        assert client.post("/runs/d1/stop", follow_redirects=False).status_code == 303
        assert proc.wait(timeout=10) == 130
        assert client.get("/api/runs/d1").json()["status"] == "Stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_runner_that_dies_at_once_shows_its_output(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "command", lambda pipeline, folder, params, options=None: [
        sys.executable, "-c", "import sys; sys.exit('distill: parameter steps=0 must be >= 1')"])
    root = tmp_path / "runs"
    control.start(root / "d1", "distill", {})
    assert wait_for(lambda: not control.alive(root / "d1"))
    run = TestClient(create_app(root), base_url="http://127.0.0.1").get("/api/runs/d1").json()
    assert run["status"] == "Failed" and run["message"] == "distill: parameter steps=0 must be >= 1"
    assert "must be >= 1" in run["launch_log"]


def test_resume_parameters_of_a_run_started_in_a_terminal(tmp_path):
    from workflows.distill import PARAMS

    folder = make_run(tmp_path, "cli", params={"steps": "20", "student": "smollm2-135m"}, phase="Failed")
    assert control.resume_params(folder, PARAMS) == {"steps": "20"}


def test_a_run_another_process_works_on_is_not_started(tmp_path, fake_runner):
    folder = make_run(tmp_path, "busy", running=["harvest"])
    with held_elsewhere(folder) as proc:
        with pytest.raises(control.RunConflict, match=rf"outside the UI \(pid {proc.pid}\); stop it first"):
            control.start(folder, "distill", {})
    assert not (folder / "ui.json").exists()


def test_a_reused_pid_is_not_our_runner(tmp_path):
    import os

    assert control.pid_alive(os.getpid())
    assert not control.pid_alive(os.getpid(), start="1")  # same pid, another start time
    assert not control.pid_alive(None)


def test_a_kubellm_run_in_a_terminal_is_held_shown_and_stopped_from_the_ui(tmp_path):
    """A real `kubellm run nli` in its own process group (as in a terminal): a second one on the same
    folder is refused before it writes anything; the UI shows the run and stops it like Ctrl-C."""
    folder = tmp_path / "runs" / "term"
    cmd = [sys.executable, "-m", "workflows.cli", "run", "nli", "--out", str(folder),
           "-p", "max-pairs=45", "-p", "steps=3", "-p", "eval-limit=12"]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        assert wait_for(lambda: any((folder / "nodes").glob("*/log.txt")), timeout=120), "no node started"
        who = holder(folder)
        assert who["pid"] == proc.pid and who["argv"][1:3] == ["run", "nli"]

        before = (folder / "workflow.yaml").stat().st_mtime_ns
        second = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert f"is in use by another runner (pid {proc.pid}," in second.stderr
        assert f"kill -INT {proc.pid}" in second.stderr
        assert (folder / "workflow.yaml").stat().st_mtime_ns == before  # nothing rewritten

        client = TestClient(create_app(tmp_path / "runs"), base_url="http://127.0.0.1:8765")
        run = client.get("/api/runs/term").json()
        assert run["status"] == "Running" and run["can_stop"] and not run["can_resume"]
        assert run["message"] == f"started outside the UI: `kubellm run`, pid {proc.pid}"
        assert client.post("/runs/term/resume").status_code == 409
        assert client.post("/runs/term/stop", follow_redirects=False).status_code == 303
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, out
        assert "nli: interrupted (SIGINT)" in out and "Traceback" not in out
        assert read_json(folder / "run.json")["message"] == "interrupted"
        assert holder(folder) is None  # the lock went with the runner
        run = client.get("/api/runs/term").json()
        assert run["status"] == "Stopped" and run["can_resume"] and not run["can_stop"]
        assert not (folder / "ui.json").exists()  # the UI recorded nothing of a run it did not start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
