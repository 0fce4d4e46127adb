"""nli_train: fine-tune a causal LM for NLI, each premise computed once for all its hypotheses.

The generated Kubernetes-NLI set states three or six facts about every premise, and a premise is
most of a prompt's tokens (instruction + premise ~130 tokens, " hypothesis: ..." + answer ~25). A
training step therefore packs the pairs of one premise into one row, [prompt up to the premise]
[hypothesis 1 + label 1][hypothesis 2 + label 2]..., with a 4D attention mask: each hypothesis and
its label see the shared prompt and themselves only, and their position ids continue the
prompt's, so every pair is trained exactly as `steps.nli_model` scores it alone (the same packing
that model uses for the three labels at prediction time). The loss is each pair's label tokens'
negative log-likelihood, averaged over pairs, and the output layer runs at those positions only
(a 49k-word vocabulary at every position would cost as much as a quarter of the network). On CPUs
with native bf16 dot products (avx512_bf16 / AMX) matrix products run in bf16 under autocast,
weights stay float32. Together ~9x more pairs per second than TRL's SFTTrainer on the same rows
(2 CPU cores; benchmarks/bench_nli_train.py).

A step takes `batch_size` pairs in an order where a premise's pairs are consecutive (premises
shuffled, then their pairs), one epoch after another; a step's pairs of one premise share a row.
The order is a function of the seed and the step, so a restarted step resumes from its last
checkpoint (trainable weights, optimizer, step, every `save_steps`) on the very same data.

Seq2seq models (Flan-T5: the encoder reads the pair, nothing to share) and qlora are trained by
`steps.finetune` on the rows nli_data writes for it (train_sft.jsonl); so are causal models whose
attention does not honour a custom mask. The outputs are the same either way: `adapter/` (LoRA),
`merged/` (a plain model folder), `loss.jsonl`, `train_config.json`, manifest.json.

    python -m steps.nli_train --data runs/nli-data --out runs/nli-ft --base-model smollm2-135m --max-steps 300
"""

from __future__ import annotations

import math
import os
import random
import resource
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from steps._io import (Progress, atomic_path, begin_output, read_jsonl, write_json, write_jsonl, write_manifest,
                       write_metrics)
from steps.finetune import DEFAULT_TARGETS, FinetuneConfig, causal_lora


class NliTrainConfig(BaseModel):
    data: str = Field(description="nli_data output folder (train.jsonl, train_sft.jsonl)")
    out: str = Field(description="output folder")
    base_model: str = Field(description="bundled name, local folder or hub ID")
    method: Literal["lora", "qlora", "full"] = Field("lora", description="lora | qlora (CUDA; through "
                                                     "steps.finetune) | full")
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS),
                                      description="modules that get adapters")
    lora_layers: int = Field(0, ge=0, description="adapt only the top N layers (0: all)")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="peak learning rate (cosine decay, linear warm-up)")
    max_steps: int = Field(300, ge=1, description="optimizer steps")
    batch_size: int = Field(12, ge=1, description="pairs per optimizer step")
    max_length: int = Field(1024, ge=16, description="longest packed row in tokens (a premise's pairs beyond it "
                            "go to another row); a single pair longer than this is skipped and counted")
    pack: bool = Field(True, description="share a premise's forward pass among its pairs in a step (false: one "
                       "row per pair, for comparison)")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="linear warm-up fraction")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA GPUs that have it and on CPUs with avx512_bf16/AMX, "
        "else float32")
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps (resume point)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores)")
    seed: int = Field(0, ge=0, description="seed for data order and adapter init")
    metrics_dir: str | None = Field(None, description="write summary numbers here, one file each (Argo output "
                                    "parameters)")
    merge: bool = Field(True, description="also save the adapter merged into the base model")


def cpu_has_bf16() -> bool:
    """Native bf16 dot products (Intel AMX, AVX512-BF16 on Cooper Lake / Sapphire Rapids / AMD Zen 4+).
    Without them bf16 is emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _precision(cfg: NliTrainConfig, torch: Any, device: str) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_bf16() else "float32"


def _finetune_config(cfg: NliTrainConfig, src: Path) -> FinetuneConfig:
    return FinetuneConfig(data=str(src / "train_sft.jsonl"), out=cfg.out, base_model=cfg.base_model, method=cfg.method,
                          r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, target_modules=cfg.target_modules,
                          lora_layers=cfg.lora_layers, learning_rate=cfg.learning_rate, max_steps=cfg.max_steps,
                          batch_size=cfg.batch_size, grad_accum=1, max_length=min(cfg.max_length, 512),
                          warmup_ratio=cfg.warmup_ratio, save_steps=cfg.save_steps, threads=cfg.threads,
                          seed=cfg.seed, metrics_dir=cfg.metrics_dir, merge=cfg.merge)


def _read_pairs(src: Path) -> list[dict]:
    from steps.nli_model import LABELS

    path = src / "train.jsonl" if src.is_dir() else src
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path}: no training pairs")
    for i, r in enumerate(rows, 1):
        for k in ("premise", "hypothesis"):
            if not isinstance(r.get(k), str) or not r[k].strip():
                raise ValueError(f"{path}: line {i}: {k!r} must be non-empty text")
        if r.get("label") not in LABELS:
            raise ValueError(f"{path}: line {i}: label {r.get('label')!r} is not one of {list(LABELS)}")
    return rows


class Packer:
    """Pairs -> packed rows. `split` cuts a pair's prompt at its hypothesis: the shared part and
    the pair's own part (+ label tokens), checked to tokenize exactly as the whole prompt does; a
    pair whose prompt does not split cleanly gets a row of its own (nothing shared)."""

    def __init__(self, scorer: Any, max_length: int, pack: bool = True):
        self.scorer, self.max_length, self.pack = scorer, max_length, pack
        self.tok = scorer.tokenizer

    def split(self, premise: str, hypothesis: str) -> tuple[list[int], list[int]]:
        full = self.scorer.prompt(premise, hypothesis)
        whole = self.scorer.encode(premise, hypothesis)
        cut = full.rindex(" hypothesis: " + hypothesis)
        special = not self.scorer.chat
        head = self.tok(full[:cut], add_special_tokens=special)["input_ids"]
        tail = self.tok(full[cut:], add_special_tokens=False)["input_ids"]
        if head + tail != whole:  # a tokenizer merging across the cut, or adding an end token
            return [], whole
        return head, tail

    def rows(self, pairs: list[tuple[list[int], list[int], int]]) -> list[tuple[list[int], list[int], list[int], list]]:
        """pairs: (shared ids, own ids, label index) in order; consecutive pairs with the same shared
        ids go into one row while it fits. Row: ids, segment (0 shared, k the k-th pair), positions,
        targets [(column predicting, token id)] per pair."""
        out: list = []
        for head, tail, label in pairs:
            lab = self.scorer.label_ids[label]
            body = tail + lab
            last = out[-1] if out else None
            if (last is None or not self.pack or not head or last[4] != head
                    or len(last[0]) + len(body) > self.max_length):
                last = [list(head), [0] * len(head), list(range(len(head))), [], head]
                out.append(last)
            ids, seg, pos, targets = last[0], last[1], last[2], last[3]
            start, k = len(ids), (max(seg) if seg else 0) + 1
            ids += body
            seg += [k] * len(body)
            pos += list(range(len(head), len(head) + len(body)))
            # the column before each label token predicts it (the first: the pair's last prompt token)
            targets.append([(start + len(tail) - 1 + j, t) for j, t in enumerate(lab)])
        return [(r[0], r[1], r[2], r[3]) for r in out]


def epoch_order(groups: list[list[int]], seed: int, epoch: int) -> list[int]:
    """Pair indices for one epoch: premises shuffled, each premise's pairs together, shuffled."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(groups)))
    rng.shuffle(order)
    flat: list[int] = []
    for g in order:
        members = list(groups[g])
        rng.shuffle(members)
        flat += members
    return flat


def step_pairs(groups: list[list[int]], n_pairs: int, batch: int, seed: int, step: int) -> list[int]:
    """The pairs optimizer step `step` (0-based) trains on: a pure function of the seed and the step."""
    per_epoch = math.ceil(n_pairs / batch)
    epoch, k = divmod(step, per_epoch)
    return epoch_order(groups, seed, epoch)[k * batch:(k + 1) * batch]


def _tensors(rows: list, pad_id: int, torch: Any) -> tuple:
    from steps.nli_model import segment_mask

    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    where, tokens, owner = [], [], []
    n = 0
    for i, (r_ids, r_seg, r_pos, targets) in enumerate(rows):
        ids[i, :len(r_ids)] = torch.tensor(r_ids)
        seg[i, :len(r_ids)] = torch.tensor(r_seg)
        pos[i, :len(r_ids)] = torch.tensor(r_pos)
        for pair in targets:
            for col, t in pair:
                where.append((i, col))
                tokens.append(t)
                owner.append(n)
            n += 1
    return ids, segment_mask(seg, torch.float32), pos, where, torch.tensor(tokens), torch.tensor(owner)


def pair_logprobs(net: Any, packed: list, pad_id: int, device: str, keeps_logits: bool) -> Any:
    """One forward pass over packed rows -> each pair's summed label-token log-prob (a 1D tensor
    in the rows' pair order, with gradients): what `NliModel.score` gives that pair's gold label."""
    import torch

    ids, mask, pos, where, tokens, owner = _tensors(packed, pad_id, torch)
    rows_idx = torch.tensor([w[0] for w in where])
    cols = torch.tensor([w[1] for w in where])
    kw: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": pos.to(device)}
    if keeps_logits:  # the output layer at the predicting columns only
        keep = torch.unique(cols)
        kw["logits_to_keep"] = keep.to(device)
        cols = torch.searchsorted(keep, cols)
    logits = net(**kw).logits
    logp = logits[rows_idx.to(device), cols.to(device)].float().log_softmax(-1)
    token_lp = logp.gather(-1, tokens.to(device).unsqueeze(-1)).squeeze(-1)
    return torch.zeros(int(owner.max()) + 1, device=token_lp.device).index_add(0, owner.to(device), token_lp)


def _load(cfg: NliTrainConfig, base: str, torch: Any, device: str) -> tuple[Any, Any, list[str] | None]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(cfg.seed)
    net = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    targets = None
    if cfg.method == "lora":
        net, targets = causal_lora(net, cfg)
    return net, tok, targets


def run(cfg: NliTrainConfig) -> dict:
    t0 = time.monotonic()
    src = Path(cfg.data)
    import torch
    from transformers import AutoConfig

    from steps import finetune, models, nli_model

    base = models.resolve(cfg.base_model)
    kind = "seq2seq" if getattr(AutoConfig.from_pretrained(base), "is_encoder_decoder", False) else "causal"
    if kind == "seq2seq" or cfg.method == "qlora":
        return finetune.run(_finetune_config(cfg, src))
    rows = _read_pairs(src)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net, tok, targets = _load(cfg, base, torch, device)
    inner = net.get_base_model() if hasattr(net, "get_base_model") else net
    scorer = nli_model.NliModel(net, tok, "causal", device, cfg.base_model, cfg.base_model, base, None)
    if not scorer.packed:  # this architecture ignores a custom mask: one row per pair, through TRL
        return finetune.run(_finetune_config(cfg, src))
    precision = _precision(cfg, torch, device)
    packer = Packer(scorer, cfg.max_length, cfg.pack)
    split, skipped = {}, 0
    label_of = {lab: i for i, lab in enumerate(nli_model.LABELS)}
    by_premise: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        head, tail = packer.split(r["premise"], r["hypothesis"])
        if len(head) + len(tail) + max(len(x) for x in scorer.label_ids) > cfg.max_length:
            skipped += 1
            continue
        split[i] = (head, tail, label_of[r["label"]])
        by_premise.setdefault(r["premise"], []).append(i)
    if not split:
        raise ValueError(f"{src}: every pair is longer than max_length={cfg.max_length} tokens; raise max_length")
    groups = list(by_premise.values())
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=0.0)
    warm = max(1, round(cfg.warmup_ratio * cfg.max_steps))

    def lr_at(step: int) -> float:
        return cfg.learning_rate * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / cfg.max_steps))

    out = begin_output(cfg.out)
    ckpt = out / "checkpoints" / "last.pt"
    start, losses, resumed = 0, [], None
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state.get("config") == cfg.model_dump(exclude={"metrics_dir", "threads"}):
            for p, v in zip(trainable, state["weights"]):
                p.data.copy_(v)
            opt.load_state_dict(state["optimizer"])
            start, losses, resumed = state["step"], state["losses"], str(ckpt)
    progress = Progress(cfg.max_steps, "nli-train")
    progress.set(start)
    net.train()
    keeps = scorer.keeps_logits
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    tokens_seen, t_train = 0, time.monotonic()
    for step in range(start, cfg.max_steps):
        picked = step_pairs(groups, len(split), cfg.batch_size, cfg.seed, step)
        packed = packer.rows([split[i] for i in picked])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with autocast:
            pair_lp = pair_logprobs(inner, packed, scorer.pad_id, device, keeps)
        loss = -pair_lp.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, 1.0).item()
        opt.step()
        tokens_seen += sum(len(r[0]) for r in packed)
        losses.append({"step": step + 1, "loss": round(loss.item(), 5), "learning_rate": lr_at(step),
                       "grad_norm": round(grad_norm, 4), "pairs": len(pair_lp), "rows": len(packed),
                       "tokens": sum(len(r[0]) for r in packed)})
        progress.set(step + 1)
        if (step + 1) % 10 == 0:
            recent = losses[-10:]
            print(f"[nli-train] step {step + 1}/{cfg.max_steps} loss {sum(x['loss'] for x in recent) / len(recent):.4f} "
                  f"lr {lr_at(step):.2e}", flush=True)
        if (step + 1) % cfg.save_steps == 0 and step + 1 < cfg.max_steps:
            with atomic_path(ckpt) as tmp:
                torch.save({"config": cfg.model_dump(exclude={"metrics_dir", "threads"}), "step": step + 1,
                            "weights": [p.detach().cpu() for p in trainable], "optimizer": opt.state_dict(),
                            "losses": losses}, tmp)
    train_s = time.monotonic() - t_train
    net.eval()
    t_save = time.monotonic()
    if cfg.method == "lora":
        with atomic_path(out / "adapter", is_dir=True) as tmp:
            net.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        if cfg.merge:
            with atomic_path(out / "merged", is_dir=True) as tmp:
                net.merge_and_unload().save_pretrained(tmp)
                tok.save_pretrained(tmp)
    else:
        with atomic_path(out / "merged", is_dir=True) as tmp:
            net.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    write_jsonl(out / "loss.jsonl", losses)
    write_json(out / "train_config.json", {**cfg.model_dump(), "resolved_base": base, "chat_format": scorer.chat,
                                           "model_kind": kind, "lora_targets": targets, "resumed_from": resumed,
                                           "trainer": "steps.nli_train (packed by premise)", "precision": precision})
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    n_pairs_total = len(split)
    recent = losses[-10:]
    pairs_done = sum(x["pairs"] for x in losses[start:])
    counts = {"train_rows": len(rows), "trained_pairs": n_pairs_total, "skipped_long": skipped,
              "premises": len(groups), "steps": cfg.max_steps,
              "epochs": round(cfg.max_steps * cfg.batch_size / n_pairs_total, 2),
              "first_loss": losses[0]["loss"] if losses else None,
              "last_loss": sum(x["loss"] for x in recent) / len(recent) if recent else None,
              "train_tokens": tokens_seen, "tokens_per_s": tokens_seen / train_s if train_s and tokens_seen else None,
              "pairs_per_s": pairs_done / train_s if train_s else None,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    write_manifest(out, "nli_train", cfg, counts=counts,
                   timings={"wall": time.monotonic() - t0, "train": train_s, "save": time.monotonic() - t_save},
                   packages=["torch", "transformers", "peft"],
                   extra={"base_model": models.describe(cfg.base_model), "resolved_base": base, "model_kind": kind,
                          "precision": precision, "threads": torch.get_num_threads()})
    write_metrics(cfg.metrics_dir, {"steps": counts["steps"], "last_loss": counts["last_loss"],
                                    "tokens_per_s": counts["tokens_per_s"]})
    return counts


if __name__ == "__main__":
    from steps._cli import main

    main(NliTrainConfig, run, __doc__)
