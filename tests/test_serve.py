"""steps.serve: the vLLM command line it builds, and the prefix reuse that its CPU block size buys."""

from __future__ import annotations

import re

import httpx
import pytest

from steps.serve import ServeConfig, build_command


def _arg(cmd: list[str], flag: str) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def test_cpu_command_uses_small_blocks_float32_and_eager(tmp_path):
    cmd, env = build_command(ServeConfig(model="m", enable_lora=False), str(tmp_path))
    assert _arg(cmd, "--block-size") == "32"
    assert _arg(cmd, "--dtype") == "float32"
    assert "--enforce-eager" in cmd and "--enable-lora" not in cmd
    assert env["VLLM_CPU_OMP_THREADS_BIND"].startswith("0")


def test_block_size_from_config_or_extra_args_wins(tmp_path):
    cmd, _ = build_command(ServeConfig(model="m", block_size=64), str(tmp_path))
    assert _arg(cmd, "--block-size") == "64"
    cmd, _ = build_command(ServeConfig(model="m", extra_args=["--block-size", "128"]), str(tmp_path))
    assert cmd.count("--block-size") == 1 and _arg(cmd, "--block-size") == "128"
    with pytest.raises(ValueError, match="block_size"):
        ServeConfig(model="m", block_size=0)


def _prefix_hits(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(r"^vllm:prefix_cache_hits(?:_total)?\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def test_rows_sharing_a_system_prompt_reuse_its_cached_blocks(vllm_server):
    """Two rows of a study share the system prompt and the template's opening (about 60 tokens here),
    less than vLLM-CPU's default 128-token block: with 32-token blocks the second row's prefill
    starts from the cache."""
    system = "You are a participant in a short study about conversations. Answer briefly and in one sentence."
    opening = "Read the scenario below, then say what the person would answer, in their own words. Scenario: "
    before = _prefix_hits(vllm_server.base_url)
    for scenario in ["Ana baked a cake for the party.", "Ben read a poem at an open-mic night."]:
        r = httpx.post(f"{vllm_server.base_url}/v1/chat/completions", timeout=120, json={
            "model": vllm_server.model, "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": opening + scenario}]})
        r.raise_for_status()
    assert _prefix_hits(vllm_server.base_url) - before >= 32
