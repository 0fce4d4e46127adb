"""steps.memory: the per-device memory estimate of a fine-tuning step, the memory budget, and the
choice of micro-batch. The LoRA parameter count is checked against what peft builds on the bundled
SmolLM2; the rest are properties of the formula (qlora < full, fsdp divides by world, activations
linear in the micro-batch) and of the picker. The calibration against a real fine-tune's peak RSS
(`measure_peak_rss`) is heavy (minutes on 2 cores) and runs only with KUBELLM_MEMORY_CALIBRATE=1:

    KUBELLM_MEMORY_CALIBRATE=1 .venv/bin/python -m pytest tests/test_memory.py -k calibration
    .venv/bin/python -m tests.test_memory lora:1:256 lora:4:256 full:2:256   # print a table
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from steps import memory
from steps.finetune import DEFAULT_TARGETS

MIB = 1 << 20
GIB = 1 << 30
ROOT = Path(__file__).resolve().parents[1]
HEAVY_LOCK = "/tmp/kubellm-heavy.lock"  # other heavy jobs on this machine take the same lock


# ---------------------------------------------------------------- measuring (calibration only)

def _rows(n: int, words: int) -> list[dict]:
    """Question/answer rows whose prompt + completion run well past `words` tokens, so every
    sequence is cut at max_length and a batch is batch x max_length tokens."""
    vocab = ("pod node service deployment replica volume claim ingress secret config map label "
             "selector taint toleration affinity scheduler kubelet container image probe restart").split()
    text = lambda i, k: " ".join(vocab[(i * 7 + j * 3) % len(vocab)] for j in range(k))  # noqa: E731
    return [{"question": f"Question {i}: explain " + text(i, words // 3) + "?",
             "answer": f"Answer {i}: " + text(i + 1, words)} for i in range(n)]


def measure_peak_rss(method: str, batch: int, max_length: int, lora_layers: int = 0,
                     workdir: str | Path | None = None, lock: str | None = HEAVY_LOCK, timeout: float = 3600) -> dict:
    """Fine-tune smollm2-135m for 2 optimizer steps (grad_accum 1) in a fresh subprocess, under
    `flock lock` (waiting for it), and return its manifest counts (peak_rss_mb among them)."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix="kubellm-memcal-") as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in _rows(max(16, 2 * batch), max_length)))
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "steps.finetune", "--data", str(data), "--out", str(out),
               "--base-model", "smollm2-135m", "--max-steps", "2", "--batch-size", str(batch), "--grad-accum", "1",
               "--max-length", str(max_length), "--save-steps", "1000", "--method", method,
               "--lora-layers", str(lora_layers)]
        if lock:
            cmd = ["flock", lock, *cmd]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads((out / "manifest.json").read_text())["counts"]


def _smollm2_config():
    from transformers import AutoConfig

    from steps import models

    return AutoConfig.from_pretrained(models.resolve("smollm2-135m"))


def _estimate_cpu(cfg, method: str, batch: int, max_length: int, lora_layers: int = 0) -> dict:
    return memory.estimate(cfg, method=method, micro_batch=batch, seq_len=max_length, r=16,
                           target_modules=list(DEFAULT_TARGETS), lora_layers=lora_layers, device="cpu")


if __name__ == "__main__":
    cfg = _smollm2_config()
    print("| method | batch | max_length | lora_layers | measured peak RSS MiB | estimate MiB | estimate / measured "
          "| tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for point in sys.argv[1:]:  # method:batch:max_length[:lora_layers]
        method, b, length, layers = (point.split(":") + ["0"])[:4]
        counts = measure_peak_rss(method, int(b), int(length), int(layers))
        est = _estimate_cpu(cfg, method, int(b), int(length), int(layers))["total"] / MIB
        print(f"| {method} | {b} | {length} | {layers} | {counts['peak_rss_mb']:.0f} | {est:.0f} | "
              f"{est / counts['peak_rss_mb']:.2f} | {counts['tokens_per_s'] or 0:.0f} |", flush=True)


# ---------------------------------------------------------------- unit tests

SMOLLM2 = {  # the bundled smollm2-135m's config.json sizes, for tests that need no model
    "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
    "tie_word_embeddings": True,
}


def est(method="lora", b=1, **kw) -> dict:
    return memory.estimate(SMOLLM2, method=method, micro_batch=b, seq_len=kw.pop("seq_len", 256), **kw)


@pytest.fixture(scope="module")
def smollm2_model(smollm2):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)


def test_param_count_and_config_forms_match_the_real_model(smollm2_model):
    cfg = smollm2_model.config
    assert memory.param_count(cfg)["total"] == sum(p.numel() for p in smollm2_model.parameters())
    # a PretrainedConfig and a dict of its fields give the same estimate
    assert memory.estimate(cfg, method="lora", micro_batch=2, seq_len=128) == est(b=2, seq_len=128)
    assert memory.estimate(cfg.to_dict(), method="full", micro_batch=1, seq_len=64) == est("full", seq_len=64)


@pytest.mark.parametrize("lora_layers", [0, 15, 4])
def test_lora_trainable_equals_what_peft_builds(smollm2_model, lora_layers):
    import copy

    from peft import LoraConfig, get_peft_model

    n = smollm2_model.config.num_hidden_layers
    top = list(range(n - lora_layers, n)) if lora_layers else None
    peft_model = get_peft_model(copy.deepcopy(smollm2_model),
                                LoraConfig(r=16, target_modules=list(DEFAULT_TARGETS), layers_to_transform=top))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    ours = memory.estimate(smollm2_model.config, method="lora", micro_batch=1, seq_len=16, r=16,
                           target_modules=list(DEFAULT_TARGETS), lora_layers=lora_layers)
    assert ours["trainable_params"] == trainable
    assert memory.lora_trainable(smollm2_model.config, 16, list(DEFAULT_TARGETS), lora_layers) == trainable
    if lora_layers == 0:
        assert trainable == 4_884_480  # 30 x 16 x (2x(576+576) + 2x(576+192) + 3x(576+1536))


def test_lora_trainable_of_a_t5_equals_what_peft_builds():
    """Encoder-decoder: the decoder's blocks have self- and cross-attention; DEFAULT_TARGETS map
    to T5's names as steps.finetune maps them."""
    from peft import LoraConfig, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu")
    model = get_peft_model(T5ForConditionalGeneration(cfg),
                           LoraConfig(r=4, target_modules=["q", "k", "v", "o", "wi_0", "wi_1", "wo"]))
    assert memory.lora_trainable(cfg, r=4) == model.get_nb_trainable_parameters()[0]
    assert memory.lora_trainable(cfg, r=4, target_modules=list(DEFAULT_TARGETS)) == \
        model.get_nb_trainable_parameters()[0]
    assert memory.param_count(cfg)["total"] == sum(p.numel() for p in T5ForConditionalGeneration(cfg).parameters())
    e = memory.estimate(cfg, method="lora", micro_batch=2, seq_len=32, r=4)
    assert e["total"] > e["runtime"] > 0


def test_lora_layers_halves_the_adapters_and_the_activations():
    every, half = est(), est(lora_layers=15)
    assert half["trainable_params"] * 2 == every["trainable_params"]
    assert 0.45 < half["activations"] / every["activations"] < 0.6
    assert half["total"] < every["total"]
    assert est(lora_layers=1)["trainable_params"] * 30 == every["trainable_params"]
    with pytest.raises(ValueError, match="31 .* 30 layers|30 layers"):
        est(lora_layers=31)


def test_qlora_weights_are_below_full_and_lora_weights():
    full, lora, qlora = est("full"), est("lora"), est("qlora")
    assert qlora["weights"] < lora["weights"] and qlora["weights"] < full["weights"]
    counts = memory.param_count(SMOLLM2)
    # the blocks' Linear layers in ~0.52 byte, embeddings and norms in fp32, the adapters in fp32
    expected = counts["linear"] * memory.NF4_BYTES_PER_PARAM + counts["other"] * 4 + lora["trainable_params"] * 4
    assert qlora["weights"] == pytest.approx(expected, rel=1e-6)
    assert 0.5 < memory.NF4_BYTES_PER_PARAM < 0.53
    assert qlora["optimizer"] == lora["optimizer"] == lora["trainable_params"] * 8


def test_full_training_states():
    fp32 = est("full")
    n = memory.param_count(SMOLLM2)["total"]
    assert fp32["trainable_params"] == n
    assert fp32["gradients"] == 4 * n and fp32["optimizer"] == 8 * n and fp32["master_weights"] == 0
    bf16 = est("full", param_bytes=2, compute_bytes=2, device="cuda")
    assert bf16["weights"] == 2 * n and bf16["gradients"] == 2 * n and bf16["master_weights"] == 4 * n
    # fp32 weights under bf16 autocast (steps.finetune on CUDA): 16-bit copies of the Linear weights
    auto = est("full", param_bytes=4, compute_bytes=2, device="cuda")
    assert auto["master_weights"] == 0 and auto["autocast_copies"] == 2 * memory.param_count(SMOLLM2)["linear"]


def test_fsdp_shards_states_over_the_world():
    one = est("full", device="cuda")
    four = est("full", device="cuda", world=4, strategy="fsdp")
    for k in ("weights", "gradients", "optimizer"):
        assert four[k] == pytest.approx(one[k] / 4, abs=1)
    assert four["activations"] == one["activations"] and four["logits"] == one["logits"]
    assert four["comm"] > 0 and four["total"] < one["total"]
    ddp = est("full", device="cuda", world=4, strategy="ddp")
    assert ddp["weights"] == one["weights"] and ddp["comm"] == one["gradients"]  # replicas + bucket copy
    with pytest.raises(ValueError, match="strategy"):
        est(strategy="zero3")


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_activations_grow_linearly_in_the_micro_batch(method):
    e1, e2, e5 = est(method, 1), est(method, 2), est(method, 5)
    assert e2["activations"] == pytest.approx(2 * e1["activations"], abs=2)
    assert e5["activations"] == pytest.approx(5 * e1["activations"], abs=5)
    assert e5["logits"] == pytest.approx(5 * e1["logits"], abs=5)
    assert e5["total"] - e1["total"] == pytest.approx(4 * (e2["total"] - e1["total"]), abs=10)
    for k in ("weights", "gradients", "optimizer", "runtime"):
        assert e1[k] == e5[k]
    # the logits buffer: batch x seq x vocab x 4 bytes, a few times over
    assert e1["logits"] >= 2 * 256 * 49152 * 4


def test_gradient_checkpointing_and_dropout_shrink_activations():
    assert est("full", grad_ckpt=True)["activations"] < est("full")["activations"] / 5
    assert est(lora_dropout=0.0)["activations"] < est()["activations"]
    assert est(seq_len=512)["activations"] == pytest.approx(2 * est()["activations"], abs=2)


def test_estimate_refuses_nonsense():
    with pytest.raises(ValueError, match="method"):
        est("prefix")
    with pytest.raises(ValueError, match="micro_batch"):
        est(b=0)
    with pytest.raises(ValueError, match="hidden_size"):
        memory.estimate({"vocab_size": 10}, method="lora", micro_batch=1, seq_len=8)


# ---------------------------------------------------------------- pick_micro_batch

def fake_estimate(calls: list):
    def fn(b: int) -> dict:
        calls.append(b)
        return {"weights": 100 * GIB, "activations": 10 * GIB * b, "total": 100 * GIB + 10 * GIB * b}
    return fn


def test_pick_micro_batch_takes_the_largest_divisor_that_fits():
    calls: list = []
    # 24 rows over 2 processes: 12 each; 100 + 10b <= 165 GiB holds up to b=6 (7 would, but 7 does not divide 12)
    b, accum, e = memory.pick_micro_batch(24, 2, 175 * GIB, fake_estimate(calls))
    assert (b, accum) == (6, 2) and e["total"] == 160 * GIB
    assert calls == [12, 6]  # largest first, only divisors of 12
    assert memory.pick_micro_batch(24, 2, 10_000 * GIB, fake_estimate([]))[:2] == (12, 1)
    assert memory.pick_micro_batch(7, 1, 145 * GIB, fake_estimate([]))[:2] == (1, 7)  # 7 is prime
    b, accum, _ = memory.pick_micro_batch(16, 1, 8 * GIB, lambda b: est(b=b))  # the real estimate
    assert b * accum == 16 and est(b=b)["total"] <= 8 * GIB and (b == 16 or est(b=2 * b)["total"] > 8 * GIB)


def test_pick_micro_batch_refuses_clearly():
    with pytest.raises(ValueError, match="not divisible by the world size 4"):
        memory.pick_micro_batch(10, 4, 1000 * GIB, fake_estimate([]))
    with pytest.raises(ValueError) as err:
        memory.pick_micro_batch(8, 1, 50 * GIB, fake_estimate([]))
    msg = str(err.value)
    assert "110.00 GiB" in msg and "50.00 GiB" in msg  # the estimate at b=1 vs the budget
    for hint in ("lora", "qlora", "lora_layers", "max_length", "gradient checkpointing", "memory"):
        assert hint in msg


# ---------------------------------------------------------------- budget

def fake_machine(tmp_path: Path, limit: str | None, available_kb: int, v1: bool = False) -> dict:
    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    if limit is not None:
        (root / "memory" / "memory.limit_in_bytes" if v1 else root / "memory.max").write_text(limit + "\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       99999999 kB\nMemFree:         1000 kB\nMemAvailable:   {available_kb} kB\n")
    return {"cgroup_root": root, "meminfo": meminfo}


def test_budget_reads_the_cgroup_limit(tmp_path):
    m = fake_machine(tmp_path, str(8 * GIB), available_kb=64 * GIB // 1024)
    assert memory.budget(**m) == int(8 * GIB * 0.85)
    assert memory.budget(nproc=2, fraction=0.5, **m) == 2 * GIB
    v1 = fake_machine(tmp_path / "v1", str(6 * GIB), available_kb=64 * GIB // 1024, v1=True)
    assert memory.budget(fraction=1.0, **v1) == 6 * GIB


def test_budget_ignores_no_limit_and_uses_mem_available(tmp_path):
    for limit in ("max", "9223372036854771712", None):
        m = fake_machine(tmp_path / str(limit), limit, available_kb=3 * GIB // 1024)
        assert memory.budget(fraction=1.0, **m) == 3 * GIB
    # a limit above what the node has free does not make memory
    m = fake_machine(tmp_path / "big", str(16 * GIB), available_kb=4 * GIB // 1024)
    assert memory.budget(fraction=1.0, **m) == 4 * GIB
    with pytest.raises(RuntimeError, match="MemAvailable"):
        memory.budget(cgroup_root=tmp_path / "none", meminfo=tmp_path / "none")


def test_budget_of_this_machine_is_positive():
    assert memory.budget() > 0


# ---------------------------------------------------------------- calibration (heavy, opt-in)

CALIBRATION = [("lora", 1, 256, 0), ("lora", 4, 256, 0), ("lora", 8, 256, 0), ("full", 2, 256, 0)]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("KUBELLM_MEMORY_CALIBRATE"),
                    reason="set KUBELLM_MEMORY_CALIBRATE=1: fine-tunes smollm2-135m per point (minutes)")
@pytest.mark.parametrize("method, batch, max_length, lora_layers", CALIBRATION)
def test_calibration_estimate_within_25_percent_of_peak_rss(method, batch, max_length, lora_layers, smollm2):
    counts = measure_peak_rss(method, batch, max_length, lora_layers)
    estimated = _estimate_cpu(_smollm2_config(), method, batch, max_length, lora_layers)["total"] / MIB
    assert estimated == pytest.approx(counts["peak_rss_mb"], rel=0.25), (estimated, counts["peak_rss_mb"])
