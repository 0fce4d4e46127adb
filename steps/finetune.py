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
`batches.jsonl` (which training rows each rank read at each step), `train_config.json` and
manifest.json (tokens/s, peak memory per rank next to the memory estimate). Checkpoints every
`save_steps` under `checkpoints/` (weights or adapter, optimizer, scheduler, each rank's RNG state
and the data position); a restarted step resumes from the last complete one.

Several processes: `--nproc N` (N > 1) re-launches this step under torchrun (gloo on CPU, NCCL on
GPUs), one rank per process, DDP by default or FSDP (`--strategy fsdp`, GPUs). Each rank reads
`batch_size` rows per micro-step, so the global batch is batch_size x grad_accum x ranks. Rank 0
writes the outputs; loss and tokens are reduced across ranks; every rank's own numbers are in the
manifest. Started by torchrun already (a Kubeflow Trainer node, env RANK/WORLD_SIZE set), the step
trains as that rank. `--batch-size auto` picks the largest micro-batch the memory estimate fits
(steps.memory), keeping the global batch.

    python -m steps.finetune --data runs/data --out runs/ft --base-model smollm2-135m --max-steps 100
    python -m steps.finetune --data d --out o --base-model microsoft/phi-2 --method qlora   # on a GPU
    python -m steps.finetune --data d --out o --base-model google/flan-t5-small --lora-layers 4
    python -m steps.finetune --data d --out o --base-model smollm2-135m --nproc 2 --batch-size 1   # 2 ranks
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

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
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(2, description="micro-batch per rank, or auto: the largest that the "
                                              "memory estimate fits, keeping the global batch")
    grad_accum: int = Field(2, ge=1, description="gradient accumulation steps (global batch = batch_size x this x "
                            "ranks); with batch_size auto, derived from global_batch")
    global_batch: int = Field(0, ge=0, description="rows per optimizer step over all ranks with batch_size auto "
                              "(0: 2 x grad_accum x ranks, what the default batch_size 2 gives)")
    nproc: int = Field(1, ge=1, le=64, description="training processes in this pod (torchrun): one per GPU, or "
                       "CPU processes with the gloo backend")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="with several ranks: ddp (a full copy per rank) or "
                                             "fsdp (weights, gradients and optimizer sharded; CUDA GPUs)")
    max_restarts: int = Field(0, ge=0, description="with several ranks: times torchrun restarts all ranks after one "
                              "fails; each restart resumes from the last checkpoint")
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


def _seq2seq_trainer(model, tok, rows: list[dict], cfg: FinetuneConfig, args: dict, callbacks: list,
                     ):
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


def _ranks() -> tuple[int, int, int, int]:
    """(rank, world size, local rank, local world size) as torchrun sets them; one rank otherwise."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return 0, 1, 0, 1
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1))


def _say(rank: int, world: int, msg: str) -> None:
    print(f"finetune [rank {rank}/{world}] {msg}" if world > 1 else f"finetune: {msg}", file=sys.stderr, flush=True)


def _read_rows(cfg: FinetuneConfig) -> list[dict]:
    src = Path(cfg.data)
    rows = read_jsonl(src / "train.jsonl" if src.is_dir() else src)
    for i, r in enumerate(rows, 1):
        for k in ("question", "answer"):
            if not str(r.get(k) or "").strip():
                raise ValueError(f"{src}: training row {i} has an empty {k!r}")
    if not rows:
        raise ValueError(f"{src}: no training rows")
    return rows


def _check_devices(cfg: FinetuneConfig, world: int) -> None:
    """What this machine cannot run is refused before any process starts."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.method == "qlora" and not cuda:
        raise SystemExit("method=qlora needs a CUDA GPU: bitsandbytes has no 4-bit autograd kernel on CPU. "
                         "Use method=lora here, or request a GPU for the finetune node (-p gpus=1).")
    if cfg.strategy == "fsdp" and not cuda:
        raise ValueError("strategy=fsdp: sharding pays off only across GPUs, and this machine has none; use "
                         "strategy=ddp (each rank holds the whole model) on CPU")
    if cfg.strategy == "fsdp" and world < 2:
        raise ValueError("strategy=fsdp shards the model across ranks: set nproc (or nodes) above 1")
    if cuda and cfg.nproc > 1 and cfg.nproc > torch.cuda.device_count():
        raise ValueError(f"nproc={cfg.nproc} but this pod has {torch.cuda.device_count()} GPU(s): one rank per GPU")
    if cfg.batch_size == "auto" and cfg.global_batch and cfg.global_batch % world:
        raise ValueError(f"global_batch={cfg.global_batch} is not a multiple of the {world} ranks")
    if cfg.batch_size != "auto" and cfg.global_batch and cfg.global_batch != cfg.batch_size * cfg.grad_accum * world:
        raise ValueError(f"global_batch={cfg.global_batch} is used with batch_size=auto only; batch_size="
                         f"{cfg.batch_size} x grad_accum={cfg.grad_accum} x {world} rank(s) = "
                         f"{cfg.batch_size * cfg.grad_accum * world}: leave global_batch at 0")


def _launch(cfg: FinetuneConfig) -> dict:
    """Run this step again under torchrun, `nproc` ranks in this pod, and wait. A Kubeflow Trainer
    node sets PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR / PET_MASTER_PORT, which torchrun reads
    for the ranks across nodes; without them the ranks meet on this machine (--standalone)."""
    _read_rows(cfg)
    nodes = int(os.environ.get("PET_NNODES", "1").split(":")[-1] or 1)
    _check_devices(cfg, cfg.nproc * nodes)
    out = begin_output(cfg.out)
    launch = out / "launch.json"
    write_json(launch, cfg.model_dump(mode="json"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(cfg.nproc),
           "--max-restarts", str(cfg.max_restarts)]
    if "PET_MASTER_ADDR" not in os.environ:
        cmd.append("--standalone")
    cmd += ["-m", "steps.finetune", "--config", str(launch)]
    env = dict(os.environ)
    # torchrun would pin each rank to 1 thread; share the pod's cores between the ranks instead
    env.setdefault("OMP_NUM_THREADS", str(cfg.threads or max(1, (os.cpu_count() or 1) // cfg.nproc)))
    _say(0, 1, f"{cfg.nproc} ranks per node x {nodes} node(s) under torchrun ({cfg.strategy})")
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, _frame):  # a stopped pod or Ctrl-C: torchrun stops its ranks
        proc.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if rc != 0:
        raise SystemExit(f"finetune: the ranks failed (torchrun exit code {rc}; the failing rank's log is above). "
                         f"Checkpoints under {out / 'checkpoints'} are kept: run the step again to resume from "
                         "the last one.")
    manifest = json.loads((out / "manifest.json").read_text())
    launch.unlink(missing_ok=True)
    return manifest["counts"]


def run(cfg: FinetuneConfig) -> dict:
    if "RANK" not in os.environ and (cfg.nproc > 1 or "PET_NNODES" in os.environ):
        return _launch(cfg)
    try:
        return _train(cfg)
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """A rank leaves the process group before it exits. One that exits with the group still up can
    abort in the group's teardown ("terminate called without an active exception", SIGABRT), and
    torchrun then stops the other ranks: rank 0 in the middle of saving what they trained."""
    if "RANK" not in os.environ:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _seq_tokens(tok, rows: list[dict], cfg: FinetuneConfig) -> int:
    """The longest training sequence in tokens (question + answer + a chat template's few), capped at
    max_length: what a padded micro-batch costs at most."""
    longest = max(len(tok(r["question"])["input_ids"]) + len(tok(r["answer"])["input_ids"]) for r in rows) + 16
    return min(longest, cfg.max_length)


class BatchLog:
    """Which training rows each rank read at each optimizer step, identified by their tokens. Kept in
    every checkpoint, so a resumed run's log is the one an uninterrupted run would have written: a
    duplicated or skipped row shows up as a difference."""

    def __init__(self, dataset, rank: int, max_length: int):
        self.rank, self.max_length = rank, max_length
        self.ids: dict[tuple, int] = {}
        for i, ex in enumerate(dataset):
            self.ids.setdefault(tuple(ex["input_ids"][:max_length]), i)
        self.steps: list[dict] = []
        self.current: list[int] = []
        self.tokens = 0

    def take(self, inputs: dict) -> None:
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        for j in range(ids.shape[0]):
            seq = ids[j][mask[j].bool()] if mask is not None else ids[j]
            self.current.append(self.ids.get(tuple(seq.tolist()[:self.max_length]), -1))
            self.tokens += int(seq.numel())

    def step_end(self, step: int) -> None:
        self.steps.append({"step": step, "rank": self.rank, "rows": self.current})
        self.current = []

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / f"batches-rank{self.rank}.json", {"steps": self.steps, "tokens": self.tokens})

    def load(self, folder: Path) -> None:
        doc = json.loads((folder / f"batches-rank{self.rank}.json").read_text())
        self.steps, self.tokens = doc["steps"], doc["tokens"]


def _last_checkpoint(ckpt_dir: Path, world: int) -> Path | None:
    """The newest checkpoint every rank finished (a rank killed while saving leaves one incomplete)."""
    if not ckpt_dir.exists():
        return None
    found = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    for c in reversed(found):
        if (c / "trainer_state.json").exists() and all((c / f"batches-rank{r}.json").exists() for r in range(world)):
            return c
    return None


def _save_from_folder(saved: Path, out: Path, cfg: FinetuneConfig, base: str, kind: str, tok) -> None:
    """FSDP: the Trainer wrote the gathered adapter (or full weights) to `saved`; move it into place
    and, for LoRA, merge it into a fresh copy of the base model on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    tok.save_pretrained(saved)
    if cfg.method == "full":
        with atomic_path(out / "merged", is_dir=True) as tmp:
            shutil.copytree(saved, tmp, dirs_exist_ok=True)
        shutil.rmtree(saved, ignore_errors=True)
        return
    with atomic_path(out / "adapter", is_dir=True) as tmp:
        shutil.copytree(saved, tmp, dirs_exist_ok=True)
    shutil.rmtree(saved, ignore_errors=True)
    if cfg.merge and cfg.method == "lora":
        from peft import PeftModel

        auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        merged = PeftModel.from_pretrained(auto.from_pretrained(base, dtype=torch.float32), str(out / "adapter"))
        with atomic_path(out / "merged", is_dir=True) as tmp:
            merged.merge_and_unload().save_pretrained(tmp)
            tok.save_pretrained(tmp)


def _peak_mem_mb(cuda: bool) -> float:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train(cfg: FinetuneConfig) -> dict:
    t0 = time.monotonic()
    rank, world, local_rank, local_world = _ranks()
    rows = _read_rows(cfg)

    import torch

    _check_devices(cfg, world)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local_world))
    if rank != 0:  # one set of progress bars in the log: rank 0's
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, TrainerCallback

    from steps import memory, models

    base = models.resolve(cfg.base_model)
    # the rule steps.nli_model.load decides by, so a model is trained as the kind it is scored as
    mconf = AutoConfig.from_pretrained(base)
    kind = "seq2seq" if getattr(mconf, "is_encoder_decoder", False) else "causal"
    if kind == "seq2seq" and cfg.method == "qlora":
        raise ValueError(f"method=qlora: {cfg.base_model} is an encoder-decoder (seq2seq) model, and qlora here "
                         "is for causal models only; use method=lora (flan-t5-small trains in full precision)")
    chat = kind == "causal" and (models.has_chat_template(base) if Path(base).is_dir() else True)
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cuda = torch.cuda.is_available()
    grad_ckpt = cfg.method != "lora" and cuda

    load_kw: dict = {"dtype": torch.float32}
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        load_kw = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16),
            "device_map": {"": local_rank} if world > 1 else "auto"}
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

    # memory per device, and the micro-batch: given, or the largest the estimate fits (the model is
    # only read so far: its weights are counted, the training memory is not spent yet)
    seq = _seq_tokens(tok, rows, cfg)
    device = "cuda" if cuda else "cpu"

    def est(b: int) -> dict:
        return memory.estimate(mconf, method=cfg.method, micro_batch=b, seq_len=seq, r=cfg.r,
                               target_modules=cfg.target_modules, lora_layers=cfg.lora_layers, grad_ckpt=grad_ckpt,
                               # weights load in float32; on GPUs bf16 autocast computes in 16 bits
                               param_bytes=4, compute_bytes=2 if cuda else 4, world=world, strategy=cfg.strategy,
                               device=device, lora_dropout=cfg.dropout)

    budget = memory.budget(local_world, device)
    if cfg.batch_size == "auto":
        global_batch = cfg.global_batch or 2 * cfg.grad_accum * world
        micro, accum, estimate = memory.pick_micro_batch(global_batch, world, budget, est)
    else:
        micro, accum = cfg.batch_size, cfg.grad_accum
        estimate = est(micro)
    if rank == 0:
        _say(rank, world, f"micro-batch {micro} x {accum} accumulation x {world} rank(s) = global batch "
             f"{micro * accum * world}; memory estimate {estimate['total'] / 2**20:.0f} MiB per rank, budget "
             f"{budget / 2**20:.0f} MiB")

    out = begin_output(cfg.out) if rank == 0 else Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    progress = Progress(cfg.max_steps, "finetune") if rank == 0 else None
    log: list[BatchLog] = []

    class Track(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            log[0].step_end(state.global_step)
            if progress:
                progress.set(state.global_step)

        def on_save(self, args, state, control, **kw):
            log[0].save(ckpt_dir / f"checkpoint-{state.global_step}")

    args = dict(
        output_dir=str(ckpt_dir), max_steps=cfg.max_steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum, learning_rate=cfg.learning_rate,
        warmup_steps=max(1, round(cfg.warmup_ratio * cfg.max_steps)), lr_scheduler_type="cosine", logging_steps=1,
        save_steps=cfg.save_steps, save_total_limit=1, seed=cfg.seed, data_seed=cfg.seed, report_to=[],
        # CPU: float32 and no gradient checkpointing (SFTConfig defaults assume a GPU)
        bf16=cuda and torch.cuda.is_bf16_supported(), fp16=False, use_cpu=not cuda,
        gradient_checkpointing=grad_ckpt, dataloader_num_workers=0,
        disable_tqdm=True,
        # several ranks: gloo on CPU (NCCL on GPUs is accelerate's default); every trainable weight
        # gets a gradient at every step, so DDP need not search for unused ones
        ddp_backend="gloo" if world > 1 and not cuda else None, ddp_find_unused_parameters=False,
    )
    if cfg.strategy == "fsdp":
        args.update(fsdp="full_shard auto_wrap",
                    fsdp_config={"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "use_orig_params": True,
                                 "state_dict_type": "FULL_STATE_DICT"})

    if kind == "seq2seq":
        trainer = _seq2seq_trainer(model, tok, rows, cfg, args, [Track()])
    else:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(
            model=model, args=SFTConfig(**args, max_length=cfg.max_length, completion_only_loss=True),
            train_dataset=Dataset.from_list(_examples(rows, chat)), processing_class=tok, callbacks=[Track()])
    log.append(BatchLog(trainer.train_dataset, rank, cfg.max_length))
    step_once = trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):  # each micro-batch a rank trains on is logged
        log[0].take(inputs)
        return step_once(model, inputs, num_items_in_batch)

    trainer.training_step = training_step
    last = _last_checkpoint(ckpt_dir, world)
    if last is not None:
        saved = json.loads((last / "trainer_state.json").read_text())
        ranks_then = sum(1 for _ in last.glob("batches-rank*.json"))
        if ranks_then != world or saved.get("train_batch_size") not in (None, micro):
            raise ValueError(f"{last}: written by {ranks_then} rank(s) at micro-batch {saved.get('train_batch_size')}, "
                             f"but this run has {world} at {micro}: resume with the same nproc and batch size, "
                             f"or delete {ckpt_dir} to start over")
        log[0].load(last)
        _say(rank, world, f"resuming from {last.name}")
    t_train = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    train_s = time.monotonic() - t_train
    hist = [h for h in trainer.state.log_history if "loss" in h]
    tokens = max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0)

    # this rank's own numbers, gathered by rank 0 (loss and tokens in the log are already reduced)
    mine = {"rank": rank, "tokens": log[0].tokens, "train_s": round(train_s, 2),
            "tokens_per_s": round(log[0].tokens / train_s, 2) if train_s else None,
            "peak_mem_mb": round(_peak_mem_mb(cuda), 1), "host": os.uname().nodename}
    _say(rank, world, f"{trainer.state.global_step} steps, {mine['tokens']} tokens in {train_s:.1f} s, peak "
         f"{'CUDA allocated' if cuda else 'RSS'} {mine['peak_mem_mb']:.0f} MiB")
    per_rank, batches = [mine], log[0].steps
    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, {"stats": mine, "steps": log[0].steps})
        per_rank = [g["stats"] for g in gathered]
        batches = sorted((s for g in gathered for s in g["steps"]), key=lambda s: (s["step"], s["rank"]))
    t_save = time.monotonic()
    if cfg.strategy == "fsdp":
        # the weights are sharded: every rank takes part in gathering the full state dict, which the
        # Trainer writes from rank 0; the merged model is then built on rank 0 from the saved folder
        sharded = out / (".adapter.fsdp" if cfg.method != "full" else ".merged.fsdp")
        trainer.save_model(str(sharded))
    if rank != 0:
        return {"rank": rank, **mine}

    if cfg.strategy == "fsdp":
        _save_from_folder(sharded, out, cfg, base, kind, tok)
    else:
        to_save = trainer.accelerator.unwrap_model(trainer.model)
        if cfg.method in ("lora", "qlora"):
            with atomic_path(out / "adapter", is_dir=True) as tmp:
                to_save.save_pretrained(tmp)
                tok.save_pretrained(tmp)
            if cfg.merge and cfg.method == "lora":
                with atomic_path(out / "merged", is_dir=True) as tmp:
                    to_save.merge_and_unload().save_pretrained(tmp)
                    tok.save_pretrained(tmp)
        else:
            with atomic_path(out / "merged", is_dir=True) as tmp:
                to_save.save_pretrained(tmp)
                tok.save_pretrained(tmp)
    write_jsonl(out / "loss.jsonl", [{"step": h["step"], "loss": h["loss"],
                                      "learning_rate": h.get("learning_rate"),
                                      "num_tokens": h.get("num_tokens")} for h in hist])
    write_jsonl(out / "batches.jsonl", batches)
    write_json(out / "train_config.json", {**cfg.model_dump(), "resolved_base": base, "chat_format": chat,
                                           "model_kind": kind, "lora_targets": targets,
                                           "resumed_from": str(last) if last else None, "ranks": world,
                                           "micro_batch": micro, "grad_accum": accum,
                                           "global_batch": micro * accum * world})
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    peak = max(r["peak_mem_mb"] for r in per_rank)
    counts = {"train_rows": len(rows), "steps": trainer.state.global_step,
              "first_loss": hist[0]["loss"] if hist else None, "last_loss": hist[-1]["loss"] if hist else None,
              "train_tokens": tokens, "tokens_per_s": tokens / train_s if train_s and tokens else None,
              "peak_rss_mb" if not cuda else "peak_cuda_mb": round(peak, 1),
              "train_runtime_s": result.metrics.get("train_runtime"),
              "ranks": world, "micro_batch": micro, "grad_accum": accum, "global_batch": micro * accum * world}
    mem = {"device": device, "seq_len": seq, "budget_mb": round(budget / 2**20, 1),
           "estimate_mb": round(estimate["total"] / 2**20, 1),
           "estimate_components_mb": {k: round(v / 2**20, 1) for k, v in estimate.items()
                                      if isinstance(v, (int, float)) and k not in ("total", "trainable_params")},
           "measured_peak_mb": round(peak, 1),
           "measured": "max CUDA memory allocated" if cuda else "peak RSS of the rank's process",
           "chosen_by": "auto" if cfg.batch_size == "auto" else "batch_size"}
    write_manifest(out, "finetune", cfg, counts=counts,
                   timings={"wall": time.monotonic() - t0, "train": train_s, "save": time.monotonic() - t_save},
                   packages=["torch", "transformers", "trl", "peft", "datasets", "accelerate"],
                   extra={"base_model": models.describe(cfg.base_model), "resolved_base": base, "model_kind": kind,
                          "threads": torch.get_num_threads(), "ranks": per_rank, "memory": mem,
                          "strategy": cfg.strategy if world > 1 else None})
    metrics = {"steps": counts["steps"], "last_loss": counts["last_loss"], "tokens_per_s": counts["tokens_per_s"],
               "mem_estimate_mb": mem["estimate_mb"]}
    for r in per_rank:
        metrics[f"rank{r['rank']}_tokens_per_s"] = r["tokens_per_s"]
        metrics[f"rank{r['rank']}_peak_mem_mb"] = r["peak_mem_mb"]
    write_metrics(cfg.metrics_dir, metrics)
    return counts


if __name__ == "__main__":
    from steps._cli import main

    main(FinetuneConfig, run, __doc__)
