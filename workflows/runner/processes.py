"""Node processes: start one attempt, watch it (deadline, readiness probe), stop it, kill everything, stream
logs, and decide when the next attempt may start (retryStrategy)."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from workflows.runner.expressions import as_str, seconds, subst
from workflows.runner.state import Node, iso

DAEMON_STOP_GRACE_S = 30.0  # SIGTERM, then SIGKILL after this long
KILL_GRACE_S = 10.0  # deadline exceeded or Ctrl-C: SIGTERM, then SIGKILL after this long
POLL_S = 0.05


def killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, start: int = 0, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class Processes:
    """The node processes running now, each in its own process group (a step's children die with it)."""

    def __init__(self, display: Any, stream_logs: bool) -> None:
        self.display, self.stream_logs = display, stream_logs
        self.running: list[Node] = []
        # set while a process is being forked: a signal then waits until the node is on the books
        self.starting, self.pending_signal = False, None

    def start(self, node: Node, argv: list[str], shown: list[str], env: dict[str, str], cwd: str | None) -> str | None:
        """Start an attempt with its output going to nodes/<id>/log.txt; a message if it cannot start."""
        with open(node.dir / "log.txt", "ab") as log:
            log.write(f"=== attempt {node.attempts} at {iso(time.time())}: {' '.join(shown)}\n".encode())
            log.flush()
            node.log_start = node.stream_pos = log.tell()
            self.starting = True
            try:
                node.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
                self.running.append(node)
            except OSError as e:
                return f"cannot start {argv[0]!r}: {e}"
            finally:
                self.starting = False
                if self.pending_signal is not None:
                    raise KeyboardInterrupt(signal.Signals(self.pending_signal).name)
        return None

    def poll(self) -> list[tuple[Node, tuple[str, str] | None]]:
        """Attempts that ended since the last call: (node, (phase, message)), or (node, None) for a clean exit
        whose outputs are still to be collected."""
        ended = []
        for node in list(self.running):
            now = time.monotonic()
            rc = node.proc.poll()
            if rc is None:
                if node.kill_at is not None and now >= node.kill_at:
                    killpg(node.proc.pid, signal.SIGKILL)
                elif node.deadline is not None and now >= node.deadline and node.kill_reason is None:
                    self.stop(node, KILL_GRACE_S, f"activeDeadlineSeconds exceeded after {now - node.t_attempt:.1f}s (killed)")
                elif node.daemon and not node.ready and not node.stopping:
                    self._probe(node, now)
                continue
            killpg(node.proc.pid, signal.SIGKILL)  # leftovers of the group die with the main process
            self.stream(node, final=True)
            self.running.remove(node)
            node.proc, node.exit_code = None, rc
            if not (node.daemon and node.ready):
                node.intervals.append((node.t_attempt, now))
            if node.stopping:
                ended.append((node, ("Succeeded", "stopped when its DAG finished")))
            elif node.kill_reason is not None:
                log_tail = tail(node.dir / "log.txt", node.log_start, 20) if node.daemon else ""
                ended.append((node, ("Failed", node.kill_reason + (f"; log tail:\n{log_tail}" if log_tail else ""))))
            elif node.daemon and not node.ready:
                log_tail = tail(node.dir / "log.txt", node.log_start, 20)
                ended.append((node, ("Failed", f"daemon exited (code {rc}) before it was ready; log tail:\n{log_tail}")))
            elif rc != 0:
                ended.append((node, ("Failed", f"exit code {rc}")))
            else:
                ended.append((node, None))
        return ended

    def _probe(self, node: Node, now: float) -> None:
        if now < node.probe_next:
            return
        probe = node.probe
        ok = True
        if probe:
            get = probe["httpGet"]
            try:
                conn = http.client.HTTPConnection("127.0.0.1", int(get["port"]), timeout=float(probe.get("timeoutSeconds") or 1))
                conn.request("GET", get.get("path") or "/")
                ok = 200 <= conn.getresponse().status < 400
                conn.close()
            except (OSError, http.client.HTTPException):
                ok = False
        if ok:
            node.ready = True
            node.intervals.append((node.t_attempt, now))  # start-up counts as work, serving does not
            self.display.event(node.id, "Running", "ready (daemoned)")
            return
        node.probe_fails += 1
        node.probe_next = now + float(probe.get("periodSeconds") or 10)
        threshold = probe.get("failureThreshold")
        if (threshold and node.probe_fails >= int(threshold)) or now >= node.ready_by:
            self.stop(node, KILL_GRACE_S, f"daemon not ready after {now - node.t_attempt:.1f}s "
                                          f"({node.probe_fails} failed readiness probes on port {probe['httpGet']['port']})")

    def stop(self, node: Node, grace: float, reason: str | None = None) -> None:
        """SIGTERM the node's process group; SIGKILL after `grace` seconds. No reason: a normal stop."""
        if node.proc is None:
            return
        if reason:
            node.kill_reason = reason
        else:
            node.stopping = True
        killpg(node.proc.pid, signal.SIGTERM)
        node.kill_at = time.monotonic() + grace

    def kill_all(self) -> None:
        """Ctrl-C, SIGTERM or an error: every process group gets SIGTERM, then SIGKILL after KILL_GRACE_S."""
        for node in self.running:
            killpg(node.proc.pid, signal.SIGTERM)
        end = time.monotonic() + KILL_GRACE_S
        try:
            while any(n.proc.poll() is None for n in self.running) and time.monotonic() < end:
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: no more waiting
        for node in self.running:
            killpg(node.proc.pid, signal.SIGKILL)
            try:
                node.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            node.phase, node.message = "Failed", "interrupted"
        self.running = []

    def stream(self, node: Node | None = None, final: bool = False) -> None:
        """Print new complete log lines of running nodes (all that is left of `node` when final)."""
        if not self.stream_logs:
            return
        for n in [node] if node is not None else self.running:
            try:
                with open(n.dir / "log.txt", "rb") as f:
                    f.seek(n.stream_pos)
                    data = f.read()
            except OSError:
                continue
            end = len(data) if final else data.rfind(b"\n") + 1
            n.stream_pos += end
            for line in data[:end].decode("utf-8", "replace").splitlines():
                self.display.say(f"[{n.id}] {line}")


def retry_wait(node: Node, phase: str, lookup: Callable[[str], str]) -> float | str | None:
    """Seconds to wait before the next attempt; None or a reason string: no more attempts."""
    rs = node.tmpl.get("retryStrategy")
    if not rs:
        return None
    where = f"{node.tpath}.retryStrategy"
    limit = rs.get("limit")
    if limit not in (None, "") and node.attempts - 1 >= int(subst(as_str(limit), lookup, f"{where}.limit")):
        return None
    policy = rs.get("retryPolicy") or "OnFailure"
    if not (policy == "Always" or (policy == "OnFailure" and phase == "Failed") or (policy == "OnError" and phase == "Error")):
        return None
    backoff = rs.get("backoff") or {}
    wait = seconds(subst(as_str(backoff.get("duration", 0)), lookup, where), f"{where}.backoff.duration")
    factor = backoff.get("factor")
    if factor not in (None, "") and float(subst(as_str(factor), lookup, where)) > 0:
        wait *= float(subst(as_str(factor), lookup, where)) ** (node.attempts - 1)
    if backoff.get("cap"):
        wait = min(wait, seconds(backoff["cap"], f"{where}.backoff.cap"))
    if backoff.get("maxDuration"):
        limit_s = seconds(subst(as_str(backoff["maxDuration"]), lookup, where), f"{where}.backoff.maxDuration")
        elapsed = time.monotonic() - node.t_first
        if elapsed >= limit_s:
            return "retry maxDuration exceeded"
        if elapsed + wait > limit_s:
            return "the next backoff would exceed retry maxDuration"
    return float(wait)
