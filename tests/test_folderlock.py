"""One runner per run folder (workflows/runner/folderlock.py): the real flock, held by real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.runfolders import held_elsewhere

from workflows.runner import run_file
from workflows.runner.folderlock import LOCK, FolderBusy, folder_lock, holder

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"


def test_a_second_runner_is_refused_before_it_writes_anything(tmp_path):
    out = tmp_path / "run"
    with held_elsewhere(out) as proc:
        who = holder(out)
        assert who["pid"] == proc.pid and who["started"]
        with pytest.raises(FolderBusy) as e:
            run_file(FIXTURES / "pipeline.yaml", out)
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # no workflow.json, no node folder
        assert f"in use by another runner (pid {proc.pid}, started {who['started']}" in str(e.value)
        assert f"kill -INT {proc.pid}" in str(e.value)
    assert holder(out) is None
    assert run_file(FIXTURES / "pipeline.yaml", out).phase == "Succeeded"  # free again: it runs
    assert holder(out) is None


def test_a_killed_runner_leaves_no_stale_lock(tmp_path):
    with held_elsewhere(tmp_path) as proc:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert holder(tmp_path) is None
        with folder_lock(tmp_path):
            assert holder(tmp_path)["pid"] == os.getpid()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with folder_lock(tmp_path):
        with folder_lock(tmp_path / "." / ""):  # the same folder, spelled differently
            assert holder(tmp_path)["pid"] == os.getpid()
        assert holder(tmp_path)["pid"] == os.getpid()  # the inner block did not release it
        probe = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                "from workflows.runner.folderlock import holder; print(holder(Path(sys.argv[1])))",
                                str(tmp_path)], capture_output=True, text=True, cwd=Path(__file__).parents[1])
        assert f"'pid': {os.getpid()}" in probe.stdout  # another process sees this one hold it
    assert holder(tmp_path) is None
