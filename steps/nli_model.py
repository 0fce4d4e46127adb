"""nli_model: natural-language inference as text-to-text, scored over the three label words.

The Flan-T5 formulation: the model reads "premise: {premise} hypothesis: {hypothesis}" and the
answer is one of the words entailment, neutral, contradiction. Nothing is generated. Each label
word is scored as a whole continuation of the prompt, the sum of its tokens' log-probs (as
lm-evaluation-harness scores multiple choice, and as `steps.probabilities` does over HTTP); the
label is the argmax and `scores` is the softmax over the three sums, so the three always add up
to 1 and `confidence` is the winner's share. A model that would rather say something else still
gets a distribution over the three labels: the question is which of them it prefers.

Two kinds of model, told apart by their config (`is_encoder_decoder`):
- causal LM (the local default, the bundled SmolLM2-135M-Instruct, optionally with a PEFT LoRA
  adapter folder on top). A chat model gets the pair inside its chat template, in one user turn
  that asks for one word (INSTRUCTION); the label then begins the assistant turn. A model without
  a chat template reads INSTRUCTION, the pair and "Answer:", and the label follows after a space.
- seq2seq (AutoModelForSeq2SeqLM, e.g. google/flan-t5-small): the encoder reads the pair text, the
  decoder is scored on the label word.

A label's tokens are its own tokenization, appended to the prompt's token ids: every prompt is
scored on the same ids for a label, and no tokenizer can merge the prompt's last characters into
the label (the boundary problem `steps.probabilities` has to solve for free-form candidates).

One call to `predict` is one batched forward pass, every pair and all three labels in it. A causal
model gets one row per pair, packed as [padding][prompt][label 1][label 2][label 3]: a 4D
attention mask lets each label's tokens see the prompt and their own label only, and their
position ids continue the prompt's, so each label is scored exactly as if it alone followed the
prompt, while the prompt is computed once instead of three times (16 SmolLM2 pairs: 2.5 s packed,
7.7 s as 48 separate rows, 2 CPU cores). Rows are left-padded so they all end at the same column,
and only the last columns' logits are computed (`logits_to_keep`): a 49k-word vocabulary at every
prompt position would be ~1 GB of logits for 16 pairs. An architecture whose attention does not
honour a custom mask (found by scoring a probe pair both ways at load) falls back to one
left-padded row per pair and label. A seq2seq model runs its encoder once per pair and its
decoder on three rows per pair. A batch scores the same as its pairs one at a time, to float32
rounding (tests/test_nli_model.py checks both against a plain forward pass computed by hand).

    python -m steps.nli_model --model smollm2-135m --premise "A man is sleeping." \\
        --hypothesis "A man is awake."
    python -m steps.nli_model --model out/finetune/adapter --premise ... --hypothesis ...
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from steps import models

LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
INSTRUCTION = ("Does the premise entail the hypothesis, contradict it, or neither? "
               "Answer with one word: entailment, neutral or contradiction.")
KINDS = ("causal", "seq2seq")


def pair_text(premise: str, hypothesis: str) -> str:
    """The text-to-text input every model kind sees (inside a chat turn for chat models)."""
    return f"premise: {premise} hypothesis: {hypothesis}"


def sft_example(premise: str, hypothesis: str, label: str) -> dict:
    """A training row for steps.finetune (question -> answer), worded exactly as a model is asked at
    prediction time (`NliModel.prompt`): `question` is a chat model's user turn, `text2text` a seq2seq
    model's encoder input; so training teaches the very continuation that prediction scores."""
    return {"question": f"{INSTRUCTION}\n\n{pair_text(premise, hypothesis)}", "answer": label,
            "text2text": pair_text(premise, hypothesis)}  # what a seq2seq model's encoder reads


def segment_mask(seg: Any, dtype: Any) -> Any:
    """The 4D attention mask of packed rows. seg[b, t]: -1 padding, 0 the shared prompt, k >= 1 the
    k-th continuation; a token sees the earlier tokens of the shared prompt and of its own
    continuation only. Additive float: the form both the eager and the SDPA attention take as it is."""
    import torch

    width = seg.shape[-1]
    q, k = seg.unsqueeze(2), seg.unsqueeze(1)
    allowed = torch.ones(width, width, dtype=torch.bool, device=seg.device).tril() & (k >= 0) & ((k == 0) | (k == q))
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_adapter(model: str) -> bool:
    p = Path(model).expanduser()
    return p.is_dir() and (p / "adapter_config.json").exists() and not (p / "config.json").exists()


def _recorded_base(folder: Path) -> list[str]:
    """Base-model names the training step recorded beside an adapter (its folder or the parent:
    finetune writes `out/adapter` plus `out/train_config.json` and `out/manifest.json`)."""
    found = []
    for d in (folder, folder.parent):
        for name in ("train_config.json", "manifest.json"):
            data = _read_json(d / name)
            value = data.get("base_model") or (data.get("config") or {}).get("base_model")
            if isinstance(value, str) and value:
                found.append(value)
    return found


def adapter_base(folder: str | Path) -> str:
    """The base model an adapter folder needs, as a name `models.resolve` takes. The adapter
    records the absolute folder it was trained on, which need not exist here (trained in a pod
    under /models, served on a laptop, or the other way round): then the training step's own
    record, or a bundled model of the same folder name, stands in."""
    folder = Path(folder).expanduser()
    declared = _read_json(folder / "adapter_config.json").get("base_model_name_or_path")
    candidates = [c for c in [declared, *_recorded_base(folder)] if isinstance(c, str) and c]
    if declared and Path(declared).name in models.BUNDLED:
        candidates.append(Path(declared).name)
    for c in candidates:
        try:
            models.check_name(c)
        except models.UnknownModel:
            continue
        return c
    raise ValueError(f"adapter {folder}: its base model cannot be found here (tried {candidates or 'nothing'}); "
                     "adapter_config.json names it in base_model_name_or_path: point that at a local model "
                     "folder, a bundled name or a hub ID")


def check(model: str) -> None:
    """Fail fast, without importing torch, on a model argument that cannot load anywhere."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError("model: give a bundled name (smollm2-135m), a model or adapter folder, or a hub ID")
    if is_adapter(model):
        adapter_base(model)
        return
    models.check_name(model)


class NliModel:
    """A loaded model and tokenizer that score premise/hypothesis pairs over LABELS."""

    def __init__(self, net: Any, tokenizer: Any, kind: str, device: str, name: str, base_model: str | None,
                 path: str, adapter: str | None):
        import inspect

        self.net, self.tokenizer, self.kind, self.device = net, tokenizer, kind, device
        self.name, self.base_model, self.path, self.adapter = name, base_model, path, adapter
        self.chat = kind == "causal" and bool(getattr(tokenizer, "chat_template", None))
        inner = net.get_base_model() if hasattr(net, "get_base_model") else net  # through a PEFT wrapper
        params = inspect.signature(inner.forward).parameters
        self.keeps_logits = "logits_to_keep" in params
        self._takes_positions = "position_ids" in params
        self.label_ids = [tokenizer(self.continuation(lab), add_special_tokens=False)["input_ids"] for lab in LABELS]
        empty = [lab for lab, ids in zip(LABELS, self.label_ids) if not ids]
        if empty:
            raise ValueError(f"{name}: the tokenizer turns the label(s) {empty} into no tokens")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)  # masked out: any id will do
        positions = getattr(getattr(inner, "config", None), "max_position_embeddings", None)
        self.max_tokens = positions if kind == "causal" and isinstance(positions, int) else None
        attention = getattr(getattr(inner, "config", None), "_attn_implementation", None)
        self.packed = kind == "causal" and self._takes_positions and attention in ("sdpa", "eager")
        if self.packed:
            # a custom 4D mask is honoured by the attention code transformers routes through its
            # mask helpers, not by every architecture: keep the packed layout only where it scores
            # a probe pair exactly as separate rows do
            probe = [self.encode("A dog runs.", "An animal moves.")]
            import torch

            with torch.inference_mode():
                diff = (self._score_packed(probe) - self._score_rows(probe)).abs().max().item()
            self.packed = diff < 1e-3

    def continuation(self, label: str) -> str:
        return " " + label if self.kind == "causal" and not self.chat else label

    def prompt(self, premise: str, hypothesis: str) -> str:
        text = pair_text(premise, hypothesis)
        if self.kind == "seq2seq":
            return text
        if self.chat:
            messages = [{"role": "user", "content": f"{INSTRUCTION}\n\n{text}"}]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"{INSTRUCTION}\n\n{text}\nAnswer:"

    def encode(self, premise: str, hypothesis: str) -> list[int]:
        # a chat template already holds the special tokens; a plain prompt gets the tokenizer's own
        # (BOS for most causal models, the closing </s> for T5's encoder)
        return self.tokenizer(self.prompt(premise, hypothesis), add_special_tokens=not self.chat)["input_ids"]

    def info(self) -> dict:
        return {"name": self.name, "base_model": self.base_model, "kind": self.kind, "labels": list(LABELS),
                "device": self.device, "path": self.path, "adapter": self.adapter, "chat_template": self.chat,
                "prompt_format": "premise: {premise} hypothesis: {hypothesis}",
                "scoring": "sum of each label's token log-probs given the prompt; softmax over the three sums"}

    def score(self, pairs: list[tuple[str, str]]) -> list[list[float]]:
        """Summed log-probs, one row per pair, one column per label, from one batched pass."""
        import torch

        for i, pair in enumerate(pairs):
            if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                    or not all(isinstance(t, str) for t in pair)):
                raise ValueError(f"pairs[{i}]: need a (premise, hypothesis) pair of strings (got {pair!r})")
        if not pairs:
            return []
        prompts = [self.encode(p, h) for p, h in pairs]
        if self.max_tokens:
            longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
            labels = [len(ids) for ids in self.label_ids]
            need = len(prompts[longest]) + (sum(labels) if self.packed else max(labels))
            if need > self.max_tokens:
                raise ValueError(f"pairs[{longest}]: the prompt is {len(prompts[longest])} tokens and {self.name} "
                                 f"reads at most {self.max_tokens}; shorten its premise or hypothesis")
        with torch.inference_mode():
            sums = self._score_causal(prompts) if self.kind == "causal" else self._score_seq2seq(prompts)
        return sums.view(len(pairs), len(LABELS)).tolist()

    def _score_causal(self, prompts: list[list[int]]) -> Any:
        return self._score_packed(prompts) if self.packed else self._score_rows(prompts)

    def _score_packed(self, prompts: list[list[int]]) -> Any:
        """One row per pair: [pad..][prompt][label 1][label 2][label 3], where a label's tokens see
        the prompt and their own label only, and each label's positions continue the prompt's."""
        import torch

        sizes = [len(lab) for lab in self.label_ids]
        tail = sum(sizes)
        width = max(len(p) for p in prompts) + tail
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        seg = torch.full((len(prompts), width), -1, dtype=torch.long)  # -1 pad, 0 prompt, 1.. label
        pos = torch.zeros((len(prompts), width), dtype=torch.long)
        labels = [t for lab in self.label_ids for t in lab]
        lab_seg = torch.tensor([j + 1 for j, n in enumerate(sizes) for _ in range(n)])
        lab_pos = torch.tensor([k for n in sizes for k in range(n)])
        for i, p in enumerate(prompts):
            start = width - tail - len(p)
            ids[i, start:] = torch.tensor(p + labels)
            seg[i, start:width - tail] = 0
            seg[i, width - tail:] = lab_seg
            pos[i, start:width - tail] = torch.arange(len(p))
            pos[i, width - tail:] = lab_pos + len(p)
        mask = segment_mask(seg, next(self.net.parameters()).dtype)
        kwargs: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                                  "position_ids": pos.to(self.device)}
        if self.keeps_logits:
            kwargs["logits_to_keep"] = tail + 1
        logp = self.net(**kwargs).logits[:, -(tail + 1):, :].float().log_softmax(-1)
        # kept column 0 is the prompt's last token, which predicts every label's first token; a
        # label's later tokens are predicted by its own previous token
        cols, offset = [], 0
        for n in sizes:
            cols += [0] + [offset + kk for kk in range(1, n)]
            offset += n
        token_lp = logp[:, cols, :].gather(-1, torch.tensor(labels, device=logp.device).expand(len(prompts), -1)
                                           .unsqueeze(-1)).squeeze(-1).double().cpu()
        owner = torch.zeros((tail, len(sizes)), dtype=torch.float64)
        owner[torch.arange(tail), lab_seg - 1] = 1
        return token_lp @ owner

    def _score_rows(self, prompts: list[list[int]]) -> Any:
        """One row per pair and label: the prompt is computed three times, but any causal model
        that takes a padding mask scores this way."""
        import torch

        rows = [p + lab for p in prompts for lab in self.label_ids]  # row = pair * 3 + label
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, seq in enumerate(rows):
            ids[r, width - len(seq):] = torch.tensor(seq)
            mask[r, width - len(seq):] = 1
        # the logits at column t predict token t+1: the label's n tokens (the last n columns) are
        # predicted by the n columns before them, so the last max(n)+1 columns hold all we need
        keep = max(len(lab) for lab in self.label_ids) + 1
        kwargs: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if self._takes_positions:  # left padding: positions count real tokens, as in one-at-a-time
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(self.device)
        if self.keeps_logits:
            kwargs["logits_to_keep"] = keep
        logits = self.net(**kwargs).logits[:, -keep:, :]
        targets = torch.zeros((len(rows), keep - 1), dtype=torch.long)
        tmask = torch.zeros((len(rows), keep - 1), dtype=torch.float64)
        for r in range(len(rows)):
            lab = self.label_ids[r % len(LABELS)]
            targets[r, keep - 1 - len(lab):] = torch.tensor(lab)
            tmask[r, keep - 1 - len(lab):] = 1
        logp = logits[:, :-1, :].float().log_softmax(-1)
        token_lp = logp.gather(-1, targets.to(logp.device).unsqueeze(-1)).squeeze(-1).double().cpu()
        return (token_lp * tmask).sum(-1)

    def _score_seq2seq(self, prompts: list[list[int]]) -> Any:
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        n_lab = len(LABELS)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = torch.tensor(p)
            mask[i, :len(p)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        # the encoder reads each pair once; its states are shared by that pair's three label rows
        encoded = self.net.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        start = self.net.config.decoder_start_token_id
        start = self.pad_id if start is None else start
        longest = max(len(lab) for lab in self.label_ids)
        dec = torch.full((len(prompts) * n_lab, longest), self.pad_id, dtype=torch.long)
        dmask = torch.zeros_like(dec)
        targets = torch.zeros_like(dec)
        tmask = torch.zeros(dec.shape, dtype=torch.float64)
        for r in range(dec.shape[0]):
            lab = self.label_ids[r % n_lab]
            dec[r, :len(lab)] = torch.tensor([start] + lab[:-1])  # teacher forcing: shifted right
            dmask[r, :len(lab)] = 1
            targets[r, :len(lab)] = torch.tensor(lab)
            tmask[r, :len(lab)] = 1
        out = self.net(encoder_outputs=BaseModelOutput(last_hidden_state=encoded.repeat_interleave(n_lab, 0)),
                       attention_mask=mask.repeat_interleave(n_lab, 0), decoder_input_ids=dec.to(self.device),
                       decoder_attention_mask=dmask.to(self.device))
        logp = out.logits.float().log_softmax(-1)
        token_lp = logp.gather(-1, targets.to(logp.device).unsqueeze(-1)).squeeze(-1).double().cpu()
        return (token_lp * tmask).sum(-1)

    def predict(self, pairs: list[tuple[str, str]]) -> list[dict]:
        """label, confidence, scores (softmax over the three summed log-probs) and those sums."""
        out = []
        for row in self.score(pairs):
            top = max(row)
            exp = [math.exp(v - top) for v in row]
            total = sum(exp)
            probs = [e / total for e in exp]
            best = max(range(len(LABELS)), key=lambda k: row[k])
            out.append({"label": LABELS[best], "confidence": probs[best],
                        "scores": dict(zip(LABELS, probs)), "logprobs": dict(zip(LABELS, row))})
        return out


def model_card(folder: str | Path) -> dict:
    """What a model folder says about itself beyond its weights: the evaluation report it holds
    (`nli_report.json` or `report.json`, passed through as it is) and the training data its
    training step recorded (in the folder, or its parent for a `.../adapter` folder). Absent: None."""
    folder = Path(folder)
    report_file, report = None, None
    for name in ("nli_report.json", "report.json"):
        if (folder / name).is_file():
            report_file, report = name, _read_json(folder / name) or None
            break
    data = (report or {}).get("training_data")
    for d in (folder, folder.parent):
        if data is None:
            recorded = _read_json(d / "train_config.json").get("data")
            recorded = recorded or (_read_json(d / "manifest.json").get("config") or {}).get("data")
            data = recorded if isinstance(recorded, str) and recorded else None
    return {"training_data": data, "metrics": report, "report_file": report_file}


def _describe_base(model: str, folder: Path) -> str | None:
    if model in models.BUNDLED:
        return models.describe(model)
    if folder.is_dir():
        recorded = _recorded_base(folder)
        if recorded:
            return models.describe(recorded[0])
        source = _read_json(folder / "manifest.json").get("source")  # a converted bundled model
        if isinstance(source, str):
            return source
    return model


def load(model: str, device: str = "cpu", kind: str | None = None) -> NliModel:
    """A bundled name, a model folder, a LoRA adapter folder or a hub ID, ready to `predict`."""
    check(model)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {list(KINDS)}")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device: {device!r} is not a torch device (cpu, cuda, cuda:1, mps ...)") from e
    adapter = str(Path(model).expanduser().resolve()) if is_adapter(model) else None
    base_name = adapter_base(model) if adapter else model
    base_path = models.resolve(base_name)
    try:
        config = AutoConfig.from_pretrained(base_path)
        kind = kind or ("seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal")
        cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        # float32 on CPU: bf16 is emulated (slow) on CPUs without it, and the scores stay exact
        net = cls.from_pretrained(base_path, dtype=torch.float32 if device == "cpu" else "auto")
        if adapter:
            from peft import PeftModel

            net = PeftModel.from_pretrained(net, adapter)
        has_tokenizer = adapter and any((Path(adapter) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(adapter if has_tokenizer else base_path)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load {model!r} as an NLI model ({type(e).__name__}: {e}); give a Hugging Face "
                         "model folder (config.json + weights + tokenizer), a LoRA adapter folder, a bundled name "
                         "or a hub ID") from e
    try:
        net.to(device)
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"device: cannot move the model to {device!r} ({e})") from e
    net.eval()
    folder = Path(adapter or base_path)
    name = model if model in models.BUNDLED or not folder.is_dir() else folder.name
    base = base_name if adapter else _describe_base(model, folder)
    return NliModel(net, tokenizer, kind, device, name, base, str(folder), adapter)


class NliModelConfig(BaseModel):
    model: str = Field("smollm2-135m", description="bundled name, model folder, LoRA adapter folder or hub ID")
    premise: str = Field(description="the premise text")
    hypothesis: str = Field(description="the hypothesis text")
    device: str = Field("cpu", description="torch device")


def run(cfg: NliModelConfig) -> dict:
    for field in ("premise", "hypothesis"):
        if not getattr(cfg, field).strip():
            raise ValueError(f"{field}: need non-empty text")
    t0 = time.monotonic()
    model = load(cfg.model, cfg.device)
    t1 = time.monotonic()
    pred = model.predict([(cfg.premise, cfg.hypothesis)])[0]
    return {**pred, "model": model.info(), "load_s": round(t1 - t0, 2), "predict_s": round(time.monotonic() - t1, 3)}


if __name__ == "__main__":
    from steps._cli import main

    main(NliModelConfig, run, __doc__)
