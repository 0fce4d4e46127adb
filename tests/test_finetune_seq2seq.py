"""steps.finetune on an encoder-decoder model: a tiny random T5 (gated MLP, as Flan-T5) built here
with an offline word-level tokenizer. LoRA training writes adapter/ and merged/, which load in
steps.nli_model as seq2seq models and predict the labels they were trained on; full training,
lora_layers, resuming from a checkpoint, and the refusals (unknown target modules, qlora). The
causal path is checked to hand TRL the same prompt/completion rows as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steps import finetune, nli_model
from steps.finetune import DEFAULT_TARGETS, FinetuneConfig, run
from steps.nli_model import LABELS, pair_text

WORDS = ["premise:", "hypothesis:", "a", "man", "is", "sleeping", "awake", "dogs", "run", "cat", "sat", *LABELS]
# every premise/hypothesis combination gets its own label, so predicting them all right means the
# model learnt the rows (the random base does not)
ROWS = [
    ("a man is sleeping", "a man is sleeping", "entailment"),
    ("a man is sleeping", "a man is awake", "contradiction"),
    ("dogs run", "a cat sat", "neutral"),
    ("a cat sat", "a cat sat", "entailment"),
    ("a man is awake", "a man is sleeping", "contradiction"),
    ("a cat sat", "dogs run", "neutral"),
]
STEPS = 30


def word_tokenizer(folder: Path, eos_after: bool) -> int:
    """A word-level tokenizer that works offline (as tests/test_nli_model.py builds it); T5's
    appends </s> to every text, as T5's own does. Returns the vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if eos_after:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    return len(vocab)


@pytest.fixture(scope="module")
def t5(tmp_path_factory) -> Path:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("t5")
    vocab = word_tokenizer(folder, eos_after=True)
    torch.manual_seed(0)
    # no dropout: the loss then falls steadily, and the first-vs-last comparison is not noise
    cfg = T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
                   feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    # the question is the seq2seq prediction prompt (nli_model's pair_text), the answer the label
    path.write_text("".join(json.dumps({"question": pair_text(p, h), "answer": lab}) + "\n" for p, h, lab in ROWS))
    return path


def cfg(t5: Path, data: Path, out: Path, **kw) -> FinetuneConfig:
    base = dict(data=str(data), out=str(out), base_model=str(t5), r=8, alpha=16, dropout=0.0, learning_rate=2e-2,
                max_steps=STEPS, batch_size=len(ROWS), grad_accum=1, warmup_ratio=0.0, save_steps=1000, seed=0)
    return FinetuneConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def lora(t5, data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lora") / "ft"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARGO_PROGRESS_FILE", str(out.parent / "progress"))
        counts = run(cfg(t5, data, out, metrics_dir=str(out.parent / "metrics")))
    return out, counts


def test_lora_trains_and_its_folders_load_as_seq2seq(lora, t5):
    out, counts = lora
    assert counts["train_rows"] == len(ROWS) and counts["steps"] == STEPS
    assert counts["last_loss"] < 0.25 * counts["first_loss"], counts
    # one batch is all six rows: each step reads every question (+ </s>) and every answer (+ </s>)
    per_step = sum(len(pair_text(p, h).split()) + 1 + 2 for p, h, _ in ROWS)
    assert counts["train_tokens"] == STEPS * per_step and counts["tokens_per_s"] > 0
    assert counts["peak_rss_mb"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "batches.jsonl", "loss.jsonl", "manifest.json", "merged",
                                                     "train_config.json"]  # checkpoints/ removed
    losses = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == list(range(1, STEPS + 1))
    assert losses[-1]["num_tokens"] == STEPS * per_step
    train_config = json.loads((out / "train_config.json").read_text())
    assert train_config["model_kind"] == "seq2seq" and train_config["chat_format"] is False
    # the causal default targets were left: T5's own (gated MLP: wi_0/wi_1, no wi) stand in
    assert train_config["lora_targets"] == ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["steps"] == STEPS and manifest["model_kind"] == "seq2seq"
    assert (out.parent / "progress").read_text().strip() == f"{STEPS}/{STEPS}"
    assert float((out.parent / "metrics" / "steps").read_text()) == STEPS
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_2_SEQ_LM"
    assert set(adapter_config["target_modules"]) == set(train_config["lora_targets"])

    pairs = [(p, h) for p, h, _ in ROWS]
    tuned = nli_model.load(str(out / "adapter"))
    assert tuned.kind == "seq2seq" and tuned.adapter == str(out / "adapter")
    assert tuned.info()["base_model"] == str(t5)
    assert [r["label"] for r in tuned.predict(pairs)] == [lab for _, _, lab in ROWS]
    merged = nli_model.load(str(out / "merged"))
    assert merged.kind == "seq2seq" and merged.adapter is None
    a, m = tuned.score(pairs), merged.score(pairs)
    assert max(abs(x - y) for ra, rm in zip(a, m) for x, y in zip(ra, rm)) < 1e-4
    untrained = [r["label"] for r in nli_model.load(str(t5)).predict(pairs)]
    assert untrained != [lab for _, _, lab in ROWS]


def test_full_finetune_writes_the_merged_model_only(t5, data, tmp_path):
    out = tmp_path / "ft"
    counts = run(cfg(t5, data, out, method="full", learning_rate=3e-3, max_steps=8))
    assert counts["steps"] == 8 and counts["last_loss"] < counts["first_loss"]
    assert not (out / "adapter").exists()
    model = nli_model.load(str(out / "merged"))
    assert model.kind == "seq2seq" and model.adapter is None
    assert model.predict([("dogs run", "a cat sat")])[0]["label"] in LABELS
    assert json.loads((out / "train_config.json").read_text())["lora_targets"] is None


def test_lora_layers_adapts_the_top_blocks_of_encoder_and_decoder(t5, data, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "ft"
    run(cfg(t5, data, out, lora_layers=1, max_steps=2, merge=False))
    assert not (out / "merged").exists()
    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = [k for k in f.keys() if "lora_A" in k]
    # 2 blocks per stack: only block 1 of each; the encoder's 7 projections, the decoder's 11
    # (self-attention, cross-attention, MLP)
    assert all(".block.1." in k for k in keys), keys
    assert sum(".encoder." in k for k in keys) == 7 and sum(".decoder." in k for k in keys) == 11
    assert nli_model.load(str(out / "adapter")).predict([("a", "a")])[0]["label"] in LABELS
    with pytest.raises(ValueError, match=r"lora_layers=3 but .* has 2 blocks in its encoder and its decoder"):
        run(cfg(t5, data, tmp_path / "ft3", lora_layers=3))


def test_unknown_target_modules_and_qlora_are_refused(t5, data, tmp_path, monkeypatch):
    out = tmp_path / "ft"
    with pytest.raises(ValueError, match=r"target_modules \['q_proj'\] do not exist in .*; linear layers include "
                                         r"\['k', 'lm_head', 'o', 'q', 'v', 'wi_0', 'wi_1', 'wo'\]"):
        run(cfg(t5, data, out, target_modules=["q", "q_proj"]))
    assert not out.exists()
    import torch

    # on a GPU the CUDA check passes and the model kind refuses it; here the GPU is pretended
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match=r"method=qlora: .* is an encoder-decoder \(seq2seq\) model.*method=lora"):
        run(cfg(t5, data, out, method="qlora"))
    assert not out.exists()


def test_a_restarted_step_resumes_from_its_checkpoint(t5, data, tmp_path, monkeypatch):
    out = tmp_path / "ft"

    class Lost(Exception):
        pass

    class Killed(finetune.Progress):  # the node is lost after step 4, its checkpoint at step 3 kept
        def set(self, done):
            if done == 4:
                raise Lost("killed at step 4")
            super().set(done)

    monkeypatch.setattr(finetune, "Progress", Killed)
    with pytest.raises(Lost):
        run(cfg(t5, data, out, max_steps=6, save_steps=3))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-3"]
    assert not (out / "manifest.json").exists()
    monkeypatch.undo()
    counts = run(cfg(t5, data, out, max_steps=6, save_steps=3))
    assert counts["steps"] == 6 and not (out / "checkpoints").exists()
    assert json.loads((out / "train_config.json").read_text())["resumed_from"].endswith("checkpoint-3")
    # the first three losses come back from the checkpoint's log, the rest were trained now
    assert [json.loads(line)["step"] for line in (out / "loss.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert nli_model.load(str(out / "adapter")).kind == "seq2seq"


def test_causal_models_keep_their_prompt_format(tmp_path, monkeypatch):
    """A causal model still goes to TRL's SFTTrainer with the prompt/completion rows it always got
    (plain "Question: ...\\nAnswer:" without a chat template, chat messages with one), with the
    causal LoRA targets and completion-only loss. The trainer is stopped before it trains."""
    import torch
    import trl
    from transformers import LlamaConfig, LlamaForCausalLM

    base = tmp_path / "llama"
    vocab = word_tokenizer(base, eos_after=False)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                 pad_token_id=0, eos_token_id=1, bos_token_id=1)).save_pretrained(base)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"question": "a cat sat?", "answer": "neutral"}) + "\n")
    seen: dict = {}

    class Stop(Exception):
        pass

    def capture(**kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(trl, "SFTTrainer", capture)
    ft = FinetuneConfig(data=str(data), out=str(tmp_path / "ft"), base_model=str(base), max_steps=1, max_length=64)
    with pytest.raises(Stop):
        run(ft)
    assert seen["train_dataset"].to_list() == [{"prompt": "Question: a cat sat?\nAnswer:", "completion": " neutral"}]
    assert seen["args"].completion_only_loss is True and seen["args"].max_length == 64
    peft_config = seen["model"].peft_config["default"]
    assert peft_config.task_type == "CAUSAL_LM" and set(peft_config.target_modules) == set(DEFAULT_TARGETS)

    (base / "chat_template.jinja").write_text(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}")
    with pytest.raises(Stop):
        run(ft)
    assert seen["train_dataset"].to_list() == [{"prompt": [{"role": "user", "content": "a cat sat?"}],
                                                "completion": [{"role": "assistant", "content": "neutral"}]}]
