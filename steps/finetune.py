"""finetune: supervised fine-tuning of the student on the teacher's answers with TRL + PEFT.

Methods: `lora` (default), `qlora` (4-bit NF4 base via bitsandbytes; CUDA only: bitsandbytes has
no 4-bit autograd kernel on CPU) and `full`. Data are question/answer rows and the loss is on the
answer only. Two kinds of model, told apart by their config (`is_encoder_decoder`), as
`steps.nli_model` tells them apart:
- causal LM: TRL's SFTTrainer on prompt/completion pairs (the chat template when the model has one).
- seq2seq (AutoModelForSeq2SeqLM, e.g. google/flan-t5-small): transformers' Trainer; the question
  is the encoder input (a row's `text2text` when it has one), the answer (+ the EOS the tokenizer
  adds) the decoder target. LoRA targets T5's attention and MLP projections unless
  `target_modules` names others; no qlora.
Writes `adapter/` (LoRA/QLoRA), `merged/` (a plain model folder any engine loads), `loss.jsonl`,
`train_config.json` and manifest.json (tokens/s, peak RSS). Checkpoints every `save_steps` under
`checkpoints/`; a restarted step resumes from the last one.

    python -m steps.finetune --data runs/data --out runs/ft --base-model smollm2-135m --max-steps 100
    python -m steps.finetune --data d --out o --base-model microsoft/phi-2 --method qlora   # on a GPU
    python -m steps.finetune --data d --out o --base-model google/flan-t5-small --lora-layers 4
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from steps._io import Progress, atomic_path, begin_output, read_jsonl, write_json, write_jsonl, write_manifest, write_metrics

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# T5's names for the same layers: attention q/k/v/o, the MLP's input (wi; wi_0/wi_1 in the gated
# T5 v1.1 / Flan-T5) and output (wo). A seq2seq model left at DEFAULT_TARGETS gets those it has.
SEQ2SEQ_TARGETS = ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"]


class FinetuneConfig(BaseModel):
    data: str = Field(description="generate output folder (train.jsonl) or a JSONL file")
    out: str = Field(description="output folder")
    base_model: str = Field(description="student: bundled name, local folder or hub ID")
    method: Literal["lora", "qlora", "full"] = Field("lora", description="lora | qlora (causal models on a CUDA "
                                                     "GPU) | full")
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, description="LoRA alpha")
    dropout: float = Field(0.05, description="LoRA dropout")
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS),
                                      description="modules that get adapters (attention + MLP projections); a "
                                      "seq2seq model left at these causal defaults gets T5's: "
                                      f"{', '.join(SEQ2SEQ_TARGETS)} (those it has)")
    lora_layers: int = Field(0, ge=0, description="adapt only the top N transformer layers (0: all); the "
                             "backward pass then stops below them, which makes a CPU step much cheaper. "
                             "seq2seq: the top N blocks of the encoder and the top N of the decoder (the "
                             "backward pass stops below the encoder's; the decoder only reads the short answer)")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="peak learning rate")
    max_steps: int = Field(100, ge=1, description="optimizer steps")
    batch_size: int = Field(2, ge=1, description="per-device batch size")
    grad_accum: int = Field(2, ge=1, description="gradient accumulation steps (effective batch = batch_size x this)")
    max_length: int = Field(384, description="truncate prompt+completion to this many tokens (seq2seq: the "
                            "question, the encoder input, and the answer each)")
    warmup_ratio: float = Field(0.05, description="linear warm-up fraction")
    save_steps: int = Field(25, description="checkpoint every N steps (resume point)")
    threads: int | None = Field(None, description="torch CPU threads (default: all cores)")
    seed: int = Field(0, ge=0, description="seed for data order, dropout and init")
    metrics_dir: str | None = Field(None, description="write summary numbers here, one file each (Argo output parameters)")
    merge: bool = Field(True, description="also save the adapter merged into the base model")


def _examples(rows: list[dict], chat: bool) -> list[dict]:
    if chat:
        return [{"prompt": [{"role": "user", "content": r["question"]}],
                 "completion": [{"role": "assistant", "content": r["answer"]}]} for r in rows]
    return [{"prompt": f"Question: {r['question']}\nAnswer:", "completion": " " + r["answer"]} for r in rows]


def causal_lora(model, cfg) -> tuple:
    """A causal model wrapped with LoRA adapters as `cfg` asks (target_modules, lora_layers, r,
    alpha, dropout), after checking the modules and layers exist. Returns (model, targets)."""
    from peft import LoraConfig, get_peft_model

    present = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in present]
    if missing:
        raise ValueError(f"target_modules {missing} do not exist in {cfg.base_model}; "
                         f"linear layers include {sorted(p for p in present if 'proj' in p or 'dense' in p)}")
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if cfg.lora_layers > n_layers:
        raise ValueError(f"lora_layers={cfg.lora_layers} but {cfg.base_model} has {n_layers} layers; "
                         f"use 1..{n_layers}, or 0 for all")
    top = list(range(n_layers - cfg.lora_layers, n_layers)) if cfg.lora_layers else None
    targets = list(cfg.target_modules)
    return get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                            target_modules=targets, task_type="CAUSAL_LM",
                                            layers_to_transform=top)), targets


def _seq2seq_targets(model, cfg: FinetuneConfig) -> list[str] | str:
    """LoRA targets of an encoder-decoder model: T5's projections when `target_modules` was left at
    the causal defaults; with `lora_layers`, a regex over the top N blocks of each stack, because
    peft's layers_to_transform takes one index list, which names the same blocks of encoder and
    decoder only when the two are equally deep."""
    import re

    import torch

    present = {n.split(".")[-1] for n, _ in model.named_modules()}
    linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    wanted = list(cfg.target_modules)
    if wanted == DEFAULT_TARGETS:
        wanted = [t for t in SEQ2SEQ_TARGETS if t in present] or wanted
    missing = [t for t in wanted if t not in present]
    if missing:
        raise ValueError(f"target_modules {missing} do not exist in {cfg.base_model}; linear layers include {linear}")
    if not cfg.lora_layers:
        return wanted
    depth: dict[str, int] = {}  # "encoder.block" -> its number of blocks
    for name, _ in model.named_modules():
        m = re.fullmatch(r"((?:.*\.)?(?:encoder|decoder)\.(?:block|layers))\.(\d+)", name)
        if m:
            depth[m[1]] = max(depth.get(m[1], 0), int(m[2]) + 1)
    if not depth:
        raise ValueError(f"lora_layers={cfg.lora_layers}: cannot find the encoder and decoder blocks of "
                         f"{cfg.base_model}; set lora_layers=0 to adapt all layers")
    n_layers = min(depth.values())
    if cfg.lora_layers > n_layers:
        raise ValueError(f"lora_layers={cfg.lora_layers} but {cfg.base_model} has {n_layers} blocks in its encoder "
                         f"and its decoder ({depth}); use 1..{n_layers}, or 0 for all")
    top = "|".join(rf"{re.escape(stack)}\.(?:{'|'.join(str(i) for i in range(d - cfg.lora_layers, d))})"
                   for stack, d in depth.items())
    return rf"(?:{top})\.(?:.*\.)?(?:{'|'.join(map(re.escape, wanted))})"


def _seq2seq_trainer(model, tok, rows: list[dict], cfg: FinetuneConfig, args: dict, callbacks: list):
    """transformers' Trainer on question (encoder input) -> answer (decoder target). TRL's
    SFTTrainer is for causal LMs only. Tokens are counted as SFTTrainer counts them (non-padding
    input and answer tokens of this session, logged as num_tokens), so the manifest's train_tokens
    and tokens_per_s mean the same for both kinds of model."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    feats = []
    for r in rows:
        # a row may word the encoder input apart (`text2text`: NLI's "premise: ... hypothesis: ...",
        # the Flan-T5 formulation), since `question` is worded for a chat model's user turn
        enc = tok(r.get("text2text") or r["question"], truncation=True, max_length=cfg.max_length)
        # text_target: the tokenizer's target side (T5's is its input side; translation models' is not).
        # The EOS it appends is part of the target: the model learns where the answer ends.
        labels = tok(text_target=r["answer"], truncation=True, max_length=cfg.max_length)["input_ids"]
        feats.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})

    class Seq2SeqSFT(Trainer):
        tokens = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                self.tokens += int(inputs["attention_mask"].sum()) + int((inputs["labels"] != -100).sum())
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        def log(self, logs, *a, **kw):
            super().log({**logs, "num_tokens": float(self.tokens)} if "loss" in logs else logs, *a, **kw)

    # labels are padded with -100 (no loss there); the model builds its decoder inputs from the
    # labels itself (shifted right behind decoder_start_token_id), as it does at prediction time
    return Seq2SeqSFT(model=model, args=TrainingArguments(**args, remove_unused_columns=False, label_names=["labels"]),
                      train_dataset=Dataset.from_list(feats), processing_class=tok, callbacks=callbacks,
                      data_collator=DataCollatorForSeq2Seq(tok, label_pad_token_id=-100))


def run(cfg: FinetuneConfig) -> dict:
    t0 = time.monotonic()
    src = Path(cfg.data)
    rows = read_jsonl(src / "train.jsonl" if src.is_dir() else src)
    for i, r in enumerate(rows, 1):
        for k in ("question", "answer"):
            if not str(r.get(k) or "").strip():
                raise ValueError(f"{src}: training row {i} has an empty {k!r}")
    if not rows:
        raise ValueError(f"{src}: no training rows")

    import torch

    if cfg.method == "qlora" and not torch.cuda.is_available():
        raise SystemExit("method=qlora needs a CUDA GPU: bitsandbytes has no 4-bit autograd kernel on CPU. "
                         "Use method=lora here, or request a GPU for the finetune node (-p gpus=1).")
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, TrainerCallback

    from steps import models

    base = models.resolve(cfg.base_model)
    # the rule steps.nli_model.load decides by, so a model is trained as the kind it is scored as
    kind = "seq2seq" if getattr(AutoConfig.from_pretrained(base), "is_encoder_decoder", False) else "causal"
    if kind == "seq2seq" and cfg.method == "qlora":
        raise ValueError(f"method=qlora: {cfg.base_model} is an encoder-decoder (seq2seq) model, and qlora here "
                         "is for causal models only; use method=lora (flan-t5-small trains in full precision)")
    chat = kind == "causal" and (models.has_chat_template(base) if Path(base).is_dir() else True)
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    load_kw: dict = {"dtype": torch.float32}
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        load_kw = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16), "device_map": "auto"}
    torch.manual_seed(cfg.seed)
    model = (AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM).from_pretrained(base, **load_kw)
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model)
    targets: list[str] | str | None = None
    if cfg.method in ("lora", "qlora") and kind == "seq2seq":
        targets = _seq2seq_targets(model, cfg)
        model = get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                 target_modules=targets, task_type="SEQ_2_SEQ_LM"))
    elif cfg.method in ("lora", "qlora"):
        model, targets = causal_lora(model, cfg)

    out = begin_output(cfg.out)
    ckpt_dir = out / "checkpoints"
    progress = Progress(cfg.max_steps, "finetune")
    losses: list[dict] = []

    class Track(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            progress.set(state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append({"step": state.global_step, **{k: v for k, v in logs.items()
                                                            if isinstance(v, (int, float))}})

    cuda = torch.cuda.is_available()
    args = dict(
        output_dir=str(ckpt_dir), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        warmup_steps=max(1, round(cfg.warmup_ratio * cfg.max_steps)), lr_scheduler_type="cosine", logging_steps=1,
        save_steps=cfg.save_steps, save_total_limit=1, seed=cfg.seed, data_seed=cfg.seed, report_to=[],
        # CPU: float32 and no gradient checkpointing (SFTConfig defaults assume a GPU)
        bf16=cuda and torch.cuda.is_bf16_supported(), fp16=False, use_cpu=not cuda,
        gradient_checkpointing=cfg.method != "lora" and cuda, dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if kind == "seq2seq":
        trainer = _seq2seq_trainer(model, tok, rows, cfg, args, [Track()])
    else:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(**args, max_length=cfg.max_length, completion_only_loss=True),
                             train_dataset=Dataset.from_list(_examples(rows, chat)), processing_class=tok,
                             callbacks=[Track()])
    last = None
    if ckpt_dir.exists():
        found = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        last = str(found[-1]) if found else None
    t_train = time.monotonic()
    result = trainer.train(resume_from_checkpoint=last)
    train_s = time.monotonic() - t_train
    hist = [h for h in trainer.state.log_history if "loss" in h]
    tokens = max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0)

    t_save = time.monotonic()
    if cfg.method in ("lora", "qlora"):
        with atomic_path(out / "adapter", is_dir=True) as tmp:
            trainer.model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        if cfg.merge and cfg.method == "lora":
            with atomic_path(out / "merged", is_dir=True) as tmp:
                trainer.model.merge_and_unload().save_pretrained(tmp)
                tok.save_pretrained(tmp)
    else:
        with atomic_path(out / "merged", is_dir=True) as tmp:
            trainer.model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    write_jsonl(out / "loss.jsonl", [{"step": h["step"], "loss": h["loss"],
                                      "learning_rate": h.get("learning_rate"),
                                      "num_tokens": h.get("num_tokens")} for h in hist])
    write_json(out / "train_config.json", {**cfg.model_dump(), "resolved_base": base, "chat_format": chat,
                                           "model_kind": kind, "lora_targets": targets, "resumed_from": last})
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    counts = {"train_rows": len(rows), "steps": trainer.state.global_step,
              "first_loss": hist[0]["loss"] if hist else None, "last_loss": hist[-1]["loss"] if hist else None,
              "train_tokens": tokens, "tokens_per_s": tokens / train_s if train_s and tokens else None,
              "peak_rss_mb": round(peak_rss_mb, 1), "train_runtime_s": result.metrics.get("train_runtime")}
    write_manifest(out, "finetune", cfg, counts=counts,
                   timings={"wall": time.monotonic() - t0, "train": train_s, "save": time.monotonic() - t_save},
                   packages=["torch", "transformers", "trl", "peft", "datasets"],
                   extra={"base_model": models.describe(cfg.base_model), "resolved_base": base, "model_kind": kind,
                          "threads": torch.get_num_threads()})
    write_metrics(cfg.metrics_dir, {"steps": counts["steps"], "last_loss": counts["last_loss"],
                                    "tokens_per_s": counts["tokens_per_s"]})
    return counts


if __name__ == "__main__":
    from steps._cli import main

    main(FinetuneConfig, run, __doc__)
