"""One runner per run folder: a runner holds an exclusive flock on `<out>/.runner.lock` while it works,
with its pid, start time and command written inside.

A second runner on the same folder (another terminal, or `kubellm ui`) is refused before it touches
anything, with the first one's pid and how to stop it. `holder()` answers "who runs this folder?"
for the UI, which can then stop a run started in a terminal. The kernel drops the lock when the
runner exits, however it exits, so a killed runner never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from workflows.runner.errors import WorkflowError
from workflows.runner.state import iso

LOCK = ".runner.lock"
_held: dict[Path, int] = {}  # the folders this process holds -> nesting depth (the lock is re-entrant here)
# a holder() probe takes a shared lock for microseconds: a starting runner retries this long before refusing
ACQUIRE_RETRY_S = 1.0


class FolderBusy(WorkflowError):
    """Another runner works on the run folder."""

    def __init__(self, folder: Path, who: dict):
        self.folder, self.who = folder, who
        pid = who.get("pid")
        by = f"pid {pid}, started {who.get('started', '?')}" if pid else "a process that is just starting"
        cmd = " ".join(who.get("argv") or [])
        stop = f"Ctrl-C in its terminal, `kill -INT {pid}`, or Stop in `kubellm ui`" if pid else "Ctrl-C in its terminal"
        super().__init__(f"{folder} is in use by another runner ({by}{': ' + cmd if cmd else ''}); "
                         f"let it finish or stop it ({stop}), then run this again")


def holder(folder: Path) -> dict | None:
    """The runner working on `folder`: {"pid", "started", "argv"} ({} while it is just starting);
    None when no runner holds the folder."""
    try:
        f = open(Path(folder) / LOCK, "rb")
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                who = json.loads(f.read() or b"{}")
            except ValueError:
                who = {}
            return who if isinstance(who, dict) else {}
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold `folder` for this process (creating it); FolderBusy when another runner holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    f = open(folder / LOCK, "a+b")  # never truncated before the lock is ours: it names the holder
    try:
        end = time.monotonic() + ACQUIRE_RETRY_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= end:
                    raise FolderBusy(folder, holder(folder) or {}) from None
                time.sleep(0.05)
        f.truncate(0)
        f.write(json.dumps({"pid": os.getpid(), "started": iso(time.time()), "argv": sys.argv}).encode())
        f.flush()
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
    finally:
        f.close()  # closing the only descriptor releases the lock
