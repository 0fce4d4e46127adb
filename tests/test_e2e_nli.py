"""End to end: `kubellm run nli` at tiny sizes, the compiled workflow on the local runner.

It trains, evaluates, publishes, rolls the service out on the local cluster (the resource templates)
and smoke-tests it; the service is still serving the trained version when the command returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, port_free

ROOT = Path(__file__).resolve().parents[1]
TINY = ["-p", "max-pairs=45", "-p", "steps=3", "-p", "batch-size=2", "-p", "lora-layers=2", "-p", "eval-limit=12",
        "-p", "max-length=192"]


@pytest.mark.slow
def test_nli_tiny_trains_evaluates_deploys_and_serves(tmp_path, cache_dir):
    out = tmp_path / "run"
    port = free_port()
    env = {**os.environ, "KUBELLM_CACHE": str(cache_dir)}
    cmd = [sys.executable, "-m", "workflows.cli", "run", "nli", "--out", str(out), "--serve-port", str(port), *TINY]
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        assert f"serving: kubellm-nli (model version run) at http://127.0.0.1:{port}" in r.stdout

        report = json.loads((out / "report.json").read_text())
        test_pairs = len((out / "nodes/nli-data/artifacts/data/test.jsonl").read_text().splitlines())
        assert report["n"] == min(12, test_pairs) and report["split"] == "test" and report["n"] > 0
        smoke = json.loads((out / "nodes/smoke/artifacts/smoke/smoke.json").read_text())
        assert smoke["ok"] and smoke["reached_as"] == f"http://127.0.0.1:{port}"

        # the published version, as the service reports it
        published = cache_dir / "nli" / "run"
        assert (published / "adapter_config.json").exists()
        assert os.readlink(cache_dir / "nli" / "current") == "run"
        base = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{base}/health").json()
        assert health == {"status": "ok", "model_loaded": True, "device": "cpu", "error": None}
        info = httpx.get(f"{base}/model/info").json()
        assert info["metrics"]["version"] == "run"
        assert info["metrics"]["accuracy"] == report["finetuned"]["accuracy"]
        assert info["training_data"] == "k8s-reference"
        pair = smoke["predict"]["pair"]
        got = httpx.post(f"{base}/predict", json={"premise": pair["premise"], "hypothesis": pair["hypothesis"]}).json()
        assert got["label"] == pair["expected"]["label"]
        assert abs(sum(got["scores"].values()) - 1) < 1e-6
    finally:
        stop = subprocess.run([sys.executable, "-m", "workflows.cli", "deployments", "--stop", "kubellm-nli"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "stopped: default/kubellm-nli" in stop.stdout, stop.stdout + stop.stderr
    assert port_free(port, wait_s=10)
