"""memory: how many bytes a fine-tuning step needs per device, how many it has, and the largest
micro-batch that fits.

- `estimate(config, method=..., micro_batch=..., seq_len=...)`: bytes per device by component
  (weights, gradients, optimizer states, activations, runtime) for `steps.finetune`'s methods
  (full / lora / qlora) on a decoder-only transformer of the Llama kind, from the config's sizes.
- `budget(nproc, device)`: the bytes one process may use (free GPU memory, or the cgroup limit /
  MemAvailable on CPU), times a safety fraction.
- `pick_micro_batch(global_batch, world, budget, estimate_fn)`: the largest per-device batch b with
  b x grad_accum x world == global_batch whose estimate fits the budget.

    from steps import memory
    b, accum, est = memory.pick_micro_batch(16, 1, memory.budget(), lambda b: memory.estimate(
        cfg, method="lora", micro_batch=b, seq_len=384))

Calibration (2026-12-03, machine: 2-core CPU, ~24 GB MemAvailable, torch 2.13 CPU, transformers
5.19, peft 0.21, trl 1.16): SmolLM2-135M (bundled `smollm2-135m`), `python -m steps.finetune
--max-steps 2 --grad-accum 1 --save-steps 1000`, r=16 on the 7 default projections, dropout 0.05,
fp32, no gradient checkpointing, every sequence cut at --max-length, one process under `flock
/tmp/kubellm-heavy.lock`. Peak RSS from the manifest (ru_maxrss) against `estimate(...)["total"]`
(measured with tests/test_memory.py's measure_peak_rss; `python -m tests.test_memory lora:4:256`
prints a row):

    method  micro-batch  max_length  lora_layers  measured MiB  estimate MiB  est/measured
    lora         1          256        all          2316          2257          0.97
    lora         4          256        all          5460          5279          0.97
    lora         8          256        all          9673          9309          0.96   (re-run: 9574)
    lora         8          256          8          5100          4766          0.93
    lora         2          512        all          5471          5279          0.96
    full         1          256        all          3123          3440          1.10
    full         2          256        all          3642          4165          1.14
    full         4          256        all          4898          5615          1.15

  The fixed part (weights 513 MiB + adapters, runtime 662 MiB; full: gradients 513 + AdamW 1026
  MiB) is right at batch 1; per sequence of 256 tokens RSS grows ~1050 MiB (lora) / ~590 MiB
  (full) against 672 / 483 MiB of live activations + logits: CPU_RSS_SLACK. Full training's
  gradients and optimizer states do not all coexist with the activations at the peak, hence its
  10-15% over-estimate (kept: erring high is the safe side). With glibc's dynamic mmap threshold
  off (MALLOC_MMAP_THRESHOLD_=131072 in the environment) lora 8 x 256 peaked at 7432 MiB instead of
  ~9600 and full 4 x 256 at 4691 (tokens/s 67 instead of 80 for lora); the constants assume the
  default allocator.

What was counted, and how (same machine):
- runtime: a Python process with torch + transformers + trl + peft + datasets imported and the
  SmolLM2 tokenizer loaded has a peak RSS of 662 MiB (torch alone 219 MiB); loading the fp32 model
  adds ~0 at first (safetensors are mapped, then paged in by the first forward: counted under
  weights).
- activations: the tensors autograd saves (a saved_tensors_hooks count of unique storages, one
  forward of batch 1 x 256 tokens): full 376 MiB, lora (dropout 0.05) 556 MiB, lora (dropout 0)
  344 MiB, lora with lora_layers=8 182 MiB, of which the log-softmax of the logits is 48 MiB
  (256 x 49152 x 4 bytes). The per-layer formula below reproduces these within 2%. LoRA saves
  *more* than full training here: each adapted Linear's dropout keeps its own output and mask
  (2 x in_features per token, CPU dropout's mask is a float tensor), while the frozen base Linear
  saves nothing.
- RSS on CPU holds more than the live tensors: glibc keeps freed blocks (allocator caching), and
  the backward pass's gradient buffers of one layer and of the logits coexist with what is saved;
  CPU_RSS_SLACK and LOGITS_COPIES cover that. (A bare forward+backward of lora 4 x 256, twice:
  peak RSS 3963 MiB after the first, 5144 after the second; with MALLOC_MMAP_THRESHOLD_=131072
  3952 and 3978: the growth is glibc's caching, not live tensors.) On a GPU the comparable number is
  torch.cuda.max_memory_allocated (plus the caching allocator's reserve, CUDA_OVERHEAD_BYTES);
  the GPU side is computed from the same formula but was not measured here.

Approximations, stated: attention is taken to be SDPA / flash-like (no batch x heads x seq^2 score
matrix is kept; `attn_implementation="eager"` would keep one per layer); biases, rotary tables and
the tokenizer's batch are ignored; sequences are taken as seq_len long (padding to the longest in
the batch, every row reaching max_length, is the worst case). Encoder-decoder models (T5,
`is_encoder_decoder`) are approximated: the encoder and the decoder layers are counted as decoder
layers of the same sizes (the decoder's cross-attention adds one attention block), both stacks over
seq_len tokens, and the logits over the decoder's seq_len; with lora_layers the top N of each stack.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

MIB = 1 << 20
GIB = 1 << 30

# -- constants (calibrated / measured; see the module docstring) ------------------------------
CPU_RUNTIME_BYTES = 662 * MIB      # python + torch + transformers/trl/peft/datasets + tokenizer (measured)
CUDA_OVERHEAD_BYTES = 512 * MIB    # per GPU: cuBLAS workspace, allocator reserve/fragmentation (not measured)
LOGITS_COPIES = 3.0                # batch x seq x vocab fp32 buffers alive at once: log-softmax output,
                                   # its gradient and the logits' gradient (plus trl's token-accuracy pass)
CPU_RSS_SLACK = 1.5                # CPU: peak RSS / live bytes of activations + logits (glibc keeps freed
                                   # blocks between steps: step 2's peak is ~1.3-1.5x step 1's)
NF4_BYTES_PER_PARAM = 0.5 + (1 + 4 / 256) / 64  # 4-bit + double-quantized absmax (8-bit per 64, fp32 per 256 blocks)
ADAM_STATES = 2                    # exp_avg, exp_avg_sq: fp32 each
HUGE = 1 << 60                     # cgroup v1 "no limit" is 2^63 rounded to a page

_NOT_GATED = {"gpt2", "gpt_neox", "gptj", "phi", "opt", "falcon", "bloom", "bert", "roberta", "distilbert"}


def _get(cfg: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = cfg.get(n) if isinstance(cfg, dict) else getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def shape(model_config: Any) -> dict:
    """The sizes the estimate works from, out of a transformers PretrainedConfig or a plain dict
    (Llama field names; T5's d_model/d_ff/num_layers/num_heads/d_kv and GPT-2's n_embd/n_layer/
    n_head are understood; a multimodal config's text_config is used when it has the sizes)."""
    cfg = model_config
    text = _get(cfg, "text_config")
    if _get(cfg, "hidden_size", "d_model", "n_embd") is None and text is not None:
        cfg = text
    h = _get(cfg, "hidden_size", "d_model", "n_embd")
    layers = _get(cfg, "num_hidden_layers", "num_layers", "n_layer")
    heads = _get(cfg, "num_attention_heads", "num_heads", "n_head")
    vocab = _get(cfg, "vocab_size")
    if not (h and layers and heads and vocab):
        raise ValueError("model config lacks hidden_size/num_hidden_layers/num_attention_heads/vocab_size "
                         f"(got hidden={h}, layers={layers}, heads={heads}, vocab={vocab})")
    seq2seq = bool(_get(cfg, "is_encoder_decoder", default=False))
    model_type = str(_get(cfg, "model_type", default="") or "")
    ff_proj = str(_get(cfg, "feed_forward_proj", default="") or "")
    gated = ff_proj.startswith("gated") if seq2seq else model_type not in _NOT_GATED
    return {
        "hidden": int(h),
        "intermediate": int(_get(cfg, "intermediate_size", "d_ff", "n_inner", default=4 * h) or 4 * h),
        "layers": int(layers),
        "decoder_layers": int(_get(cfg, "num_decoder_layers", default=layers) or layers) if seq2seq else 0,
        "heads": int(heads),
        "kv_heads": int(_get(cfg, "num_key_value_heads", default=heads) or heads),
        "head_dim": int(_get(cfg, "head_dim", "d_kv", default=0) or h // heads),
        "vocab": int(vocab),
        "tied": bool(_get(cfg, "tie_word_embeddings", default=True)),
        "gated": gated,
        "seq2seq": seq2seq,
        "buckets": int(_get(cfg, "relative_attention_num_buckets", default=0) or 0) if seq2seq else 0,
    }


def _linears(s: dict) -> dict[str, tuple[int, int, str]]:
    """Linear layers of one block by name: (in_features, out_features, role). Roles tell which
    activation a LoRA adapter reads: "attn_in" (the normed hidden state), "attn_out" (the
    attention output), "mlp_in", "mlp_out" (the MLP's inner activation)."""
    h, inter, q, kv = s["hidden"], s["intermediate"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    return {
        # Llama / Mistral / Qwen / Gemma / SmolLM
        "q_proj": (h, q, "attn_in"), "k_proj": (h, kv, "attn_in"), "v_proj": (h, kv, "attn_in"),
        "o_proj": (q, h, "attn_out"), "gate_proj": (h, inter, "mlp_in"), "up_proj": (h, inter, "mlp_in"),
        "down_proj": (inter, h, "mlp_out"),
        # fused / GPT-2 / Phi / Falcon names
        "qkv_proj": (h, q + 2 * kv, "attn_in"), "Wqkv": (h, q + 2 * kv, "attn_in"),
        "query_key_value": (h, q + 2 * kv, "attn_in"), "c_attn": (h, q + 2 * kv, "attn_in"),
        "dense": (q, h, "attn_out"), "out_proj": (q, h, "attn_out"),
        "gate_up_proj": (h, 2 * inter, "mlp_in"), "fc1": (h, inter, "mlp_in"), "fc2": (inter, h, "mlp_out"),
        # T5 (per attention block; the decoder has two)
        "q": (h, q, "attn_in"), "k": (h, q, "attn_in"), "v": (h, q, "attn_in"), "o": (q, h, "attn_out"),
        "wi": (h, inter, "mlp_in"), "wi_0": (h, inter, "mlp_in"), "wi_1": (h, inter, "mlp_in"),
        "wo": (inter, h, "mlp_out"),
    }


def _block_params(s: dict) -> int:
    """Parameters of one transformer block (weights of its Linear layers + norms)."""
    lin = _linears(s)
    attn = sum(lin[n][0] * lin[n][1] for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    mlp = (3 if s["gated"] else 2) * s["hidden"] * s["intermediate"]
    return attn + mlp + 2 * s["hidden"]


def _param_count(s: dict) -> dict:
    block = _block_params(s)
    norms = 2 * s["hidden"]
    n_blocks = s["layers"] + s["decoder_layers"]
    linear = (block - norms) * n_blocks
    other = s["vocab"] * s["hidden"] * (1 if s["tied"] else 2) + norms * n_blocks + s["hidden"]
    if s["seq2seq"]:  # the decoder's cross-attention and its norm, the second final norm, relative position biases
        lin = _linears(s)
        linear += sum(lin[n][0] * lin[n][1] for n in ("q", "k", "v", "o")) * s["decoder_layers"]
        other += s["hidden"] * (s["decoder_layers"] + 1) + 2 * s["buckets"] * s["heads"]
    return {"total": linear + other, "linear": linear, "other": other}


def param_count(model_config: Any) -> dict:
    """{"total", "linear", "other"}: all parameters (tied embeddings counted once), those in the
    blocks' Linear layers (what 4-bit quantization shrinks), and the rest (embeddings, norms, head)."""
    return _param_count(shape(model_config))


def _targets(s: dict, target_modules: list[str] | None) -> list[str]:
    default = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    wanted = list(target_modules) if target_modules else default
    if s["seq2seq"] and wanted == default:  # as steps.finetune does: T5's names for the same layers
        wanted = ["q", "k", "v", "o", *(["wi_0", "wi_1"] if s["gated"] else ["wi"]), "wo"]
    return wanted


def _adapted(s: dict, target_modules: list[str] | None) -> list[tuple[int, int, str]]:
    """(in, out, role) of each adapted Linear in one block (a T5 decoder block: counted by caller).
    A name the table does not know is taken as a hidden x hidden Linear reading the block input."""
    lin = _linears(s)
    return [lin.get(n, (s["hidden"], s["hidden"], "attn_in")) for n in _targets(s, target_modules)]


def lora_trainable(model_config: Any, r: int = 16, target_modules: list[str] | None = None,
                   lora_layers: int = 0) -> int:
    """LoRA parameters: r x (in + out) summed over the adapted Linear layers of the adapted blocks
    (lora_layers=N: the top N blocks; seq2seq: the top N of the encoder and of the decoder)."""
    s = shape(model_config)
    per_block = sum(r * (i + o) for i, o, _ in _adapted(s, target_modules))
    enc = min(lora_layers, s["layers"]) if lora_layers else s["layers"]
    if not s["seq2seq"]:
        return per_block * enc
    dec = min(lora_layers, s["decoder_layers"]) if lora_layers else s["decoder_layers"]
    attn = sum(r * (i + o) for i, o, role in _adapted(s, target_modules) if role.startswith("attn"))
    return per_block * (enc + dec) + attn * dec  # decoder blocks: self- and cross-attention


def _layer_activation_bytes(s: dict, method: str, adapted: list[tuple[int, int, str]], r: int,
                            lora_dropout: float, cb: int, mask_bytes: int) -> float:
    """Bytes autograd keeps per token for one block (no checkpointing).

    full: each RMSNorm keeps its input, the normalized value and the output (3h, twice); the
    attention keeps q, k, v (k/v at the kv heads' width) and its output; the gated MLP keeps gate,
    silu(gate), up and their product (4 x intermediate).
    lora/qlora: the frozen Linear layers keep nothing and the norms only their input (2h); the
    attention and MLP internals are kept as above (3 x intermediate: the product is kept only as an
    adapter's input); each adapter keeps its input - with dropout a private copy plus the dropout
    mask (in_features each), without dropout one shared copy per distinct input - and r values."""
    h, inter = s["hidden"], s["intermediate"]
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    mlp_kept = (3 if s["gated"] else 1) * inter   # gate, act, up  |  non-gated: the activation's input
    attn_kept = (q + 2 * kv) * cb + q * cb + 2 * s["heads"] * 4  # q, k, v, output, logsumexp
    if method == "full":
        return 6 * h * cb + attn_kept + (mlp_kept + inter) * cb
    total = 2 * h * cb + attn_kept + mlp_kept * cb + len(adapted) * r * 4
    if lora_dropout > 0:
        total += sum(i * (cb + mask_bytes) for i, _, _ in adapted)
    else:
        roles = {role: i for i, _, role in adapted}
        total += sum(i * cb for role, i in roles.items() if role != "attn_out")  # attn_out: the kept output
    return total


def estimate(model_config: Any, *, method: str, micro_batch: int, seq_len: int, r: int = 16,
             target_modules: list[str] | None = None, lora_layers: int = 0, grad_ckpt: bool = False,
             param_bytes: int = 4, compute_bytes: int = 4, world: int = 1, strategy: str = "ddp",
             device: str = "cpu", lora_dropout: float = 0.05) -> dict:
    """Bytes per device of one training step of `steps.finetune`, by component, and their `total`.

    model_config: a transformers PretrainedConfig or a dict with its fields (hidden_size,
    intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
    vocab_size, tie_word_embeddings). method: full | lora | qlora. param_bytes: the weights' dtype
    as loaded (steps.finetune loads fp32: 4); compute_bytes: activations (fp32 4, bf16 autocast 2).
    lora_layers=N: only the top N blocks have adapters, and only their activations are kept (the
    backward pass stops below them). grad_ckpt: only each needed block's input is kept, plus one
    block recomputed. strategy "fsdp" shards weights, gradients and optimizer states over `world`
    (plus two gathered blocks); "ddp" keeps full replicas (plus a gradient bucket copy when world > 1).

    Returns a dict of ints: weights, trainable_params (a count, not bytes, and not in the total),
    gradients, optimizer (AdamW: 2 fp32 states per trainable parameter), master_weights (fp32
    copy when full training holds its weights in 16 bits), autocast_copies (16-bit copies of the
    Linear weights that autocast makes and the backward pass keeps), comm (FSDP gather / DDP
    buckets), activations, logits (batch x seq x vocab x 4 bytes x LOGITS_COPIES), runtime (the
    process on CPU, allocator/cuBLAS reserve on CUDA), total.
    """
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method must be full, lora or qlora, not {method!r}")
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy must be ddp or fsdp, not {strategy!r}")
    if micro_batch < 1 or seq_len < 1 or world < 1:
        raise ValueError(f"micro_batch, seq_len and world must be >= 1 (got {micro_batch}, {seq_len}, {world})")
    s = shape(model_config)
    cuda = str(device).startswith("cuda")
    counts = _param_count(s)
    if lora_layers and method != "full" and lora_layers > s["layers"]:
        raise ValueError(f"lora_layers={lora_layers} but the model has {s['layers']} layers")

    # weights, trainable parameters, gradients, optimizer, master weights
    lora = method in ("lora", "qlora")
    trainable = lora_trainable(model_config, r, target_modules, lora_layers) if lora else counts["total"]
    if method == "qlora":
        # the blocks' Linear layers in NF4; prepare_model_for_kbit_training casts the rest to fp32
        weights = counts["linear"] * NF4_BYTES_PER_PARAM + counts["other"] * 4
    else:
        weights = counts["total"] * param_bytes
    weights += trainable * 4 if lora else 0            # peft keeps adapters in fp32
    grad_bytes = 4 if lora else param_bytes
    gradients = trainable * grad_bytes
    optimizer = trainable * 4 * ADAM_STATES
    master = trainable * 4 if (method == "full" and param_bytes < 4) else 0
    autocast = counts["linear"] * compute_bytes if (compute_bytes < param_bytes and method != "qlora") else 0
    shard = world if strategy == "fsdp" else 1
    weights, gradients, optimizer, master = (math.ceil(x / shard) for x in (weights, gradients, optimizer, master))
    comm = 0
    if strategy == "fsdp" and world > 1:
        block_bytes = _block_params(s) * (NF4_BYTES_PER_PARAM if method == "qlora" else param_bytes)
        comm = 2 * block_bytes                            # the gathered block and the prefetched next one
    elif world > 1 and (method == "full" or trainable):
        comm = gradients                                  # DDP's bucket copy of the gradients

    # activations
    tokens = micro_batch * seq_len
    cb = compute_bytes
    mask_bytes = 1 if cuda else cb                        # CPU dropout keeps a mask of the input's dtype
    adapted = _adapted(s, target_modules) if lora else []
    per_layer = _layer_activation_bytes(s, method, adapted, r, lora_dropout, cb, mask_bytes)
    if s["seq2seq"]:
        per_layer_dec = per_layer + (2 * s["heads"] * s["head_dim"] + s["hidden"]) * cb  # cross-attention
    else:
        per_layer_dec = per_layer
    if lora and lora_layers:
        kept = [lora_layers] + ([lora_layers] if s["seq2seq"] else [])
    else:
        kept = [s["layers"]] + ([s["decoder_layers"]] if s["seq2seq"] else [])
    stacks = list(zip(kept, [per_layer, per_layer_dec]))
    if grad_ckpt:
        layer_part = sum(n * s["hidden"] * cb for n, _ in stacks) + max(p for _, p in stacks)
    else:
        layer_part = sum(n * p for n, p in stacks)
    layer_part += max(p for _, p in stacks)              # the backward pass's gradients of one block
    final = (3 if method == "full" else 1) * s["hidden"] * cb
    activations = tokens * (layer_part + final)
    logits = tokens * s["vocab"] * 4 * LOGITS_COPIES      # upcast to fp32 for the loss
    if not cuda:
        activations, logits = activations * CPU_RSS_SLACK, logits * CPU_RSS_SLACK

    runtime = CUDA_OVERHEAD_BYTES if cuda else CPU_RUNTIME_BYTES
    out = {"weights": weights, "gradients": gradients, "optimizer": optimizer, "master_weights": master,
           "autocast_copies": autocast, "comm": comm, "activations": activations, "logits": logits,
           "runtime": runtime}
    out = {k: int(round(v)) for k, v in out.items()}
    out["total"] = sum(out.values())
    out["trainable_params"] = int(trainable)
    return out


def _cgroup_limit(cgroup_root: str | Path) -> int | None:
    root = Path(cgroup_root)
    for f in (root / "memory.max", root / "memory" / "memory.limit_in_bytes", root / "memory.limit_in_bytes"):
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit():
            continue
        value = int(text)
        if 0 < value < HUGE:
            return value
    return None


def _mem_available(meminfo: str | Path) -> int | None:
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def budget(nproc: int = 1, device: str = "cpu", fraction: float = 0.85, *,
           cgroup_root: str | Path = "/sys/fs/cgroup", meminfo: str | Path = "/proc/meminfo") -> int:
    """Bytes one training process may use. CUDA: the free memory of the current device
    (torch.cuda.mem_get_info; each process has its own GPU). CPU: the cgroup memory limit (v2
    memory.max, v1 memory/memory.limit_in_bytes; "max" and the huge v1 no-limit value mean none),
    capped by MemAvailable from /proc/meminfo (a limit above what the node has free does not make
    memory), or MemAvailable alone; shared by `nproc` processes. Times `fraction` either way.
    cgroup_root and meminfo are the files' locations (tests pass fakes)."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, not {nproc}")
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.cuda.current_device())
        return int(free * fraction)
    limit, avail = _cgroup_limit(cgroup_root), _mem_available(meminfo)
    known = [v for v in (limit, avail) if v]
    if not known:
        raise RuntimeError(f"cannot tell the memory available: no cgroup limit under {cgroup_root} "
                           f"and no MemAvailable in {meminfo}")
    return int(min(known) / nproc * fraction)


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def pick_micro_batch(global_batch: int, world: int, budget_bytes: int,
                     estimate_fn: Callable[[int], dict]) -> tuple[int, int, dict]:
    """The largest micro-batch b with b x accum x world == global_batch (an integer accum >= 1, so
    b divides global_batch / world) whose estimate_fn(b)["total"] is within budget_bytes.
    Returns (b, accum, estimate_fn(b)). Raises ValueError when global_batch is not a multiple of
    world, or when even b=1 does not fit (saying by how much and what would help)."""
    if world < 1 or global_batch < 1:
        raise ValueError(f"global batch ({global_batch}) and world size ({world}) must be >= 1")
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by the world size {world}: each of the "
                         f"{world} processes must get the same number of rows per step; use a multiple of {world}")
    per_proc = global_batch // world
    smallest = None
    for b in sorted((d for d in range(1, per_proc + 1) if per_proc % d == 0), reverse=True):
        est = estimate_fn(b)
        if est["total"] <= budget_bytes:
            return b, per_proc // b, est
        smallest = est
    assert smallest is not None
    parts = ", ".join(f"{k} {_gib(v)}" for k, v in sorted(smallest.items(), key=lambda kv: -kv[1])
                      if k not in ("total", "trainable_params") and v)
    raise ValueError(
        f"even a micro-batch of 1 needs an estimated {_gib(smallest['total'])} per process ({parts}), "
        f"more than the budget of {_gib(budget_bytes)}. To fit: use method=lora (or qlora on a GPU), adapt fewer "
        f"layers (lora_layers), shorten max_length, turn on gradient checkpointing, or give the step more memory "
        f"(a larger memory limit / GPU, or fewer processes per node)")
