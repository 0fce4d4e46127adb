"""steps.nli_model on real models: the bundled SmolLM2 (loaded once for the module) and tiny
random T5 / Llama models built here, with an offline word-level tokenizer, for the seq2seq and
LoRA-adapter paths. Scores are checked against a plain forward pass computed by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from steps import nli_model
from steps.nli_model import INSTRUCTION, LABELS

ROOT = Path(__file__).resolve().parents[1]

PAIRS = [
    ("A man is sleeping in his bed.", "A man is awake."),
    ("Two dogs run across a snowy field while their owner throws a ball for them.", "Animals are outside."),
    ("The cat sat.", "A cat is sitting on the mat in the kitchen of a small house near the sea."),
    ("Kids play soccer.", "Children are playing a sport."),
]
WORDS = ["premise:", "hypothesis:", "a", "man", "is", "sleeping", "awake", "dogs", "run", "cat", "sat", *LABELS]


def word_tokenizer(folder: Path, eos_after: bool):
    """A word-level tokenizer that works offline; T5's appends </s> to every text, as T5's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if eos_after:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return fast, len(vocab)


def manual_causal(net, ids: list[list[int]], prompt: list[int]) -> list[float]:
    """Each label's summed log-prob from one unpadded forward pass over prompt + label."""
    import torch

    sums = []
    with torch.inference_mode():
        for lab in ids:
            seq = torch.tensor([prompt + lab])
            logp = net(input_ids=seq).logits[0].float().log_softmax(-1)
            sums.append(sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(lab)))
    return sums


@pytest.fixture(scope="module")
def smol(smollm2: str):
    return nli_model.load(smollm2)


def test_batch_scores_equal_one_at_a_time(smol):
    batched = smol.score(PAIRS)
    single = [smol.score([p])[0] for p in PAIRS]
    diff = max(abs(a - b) for row_b, row_s in zip(batched, single) for a, b in zip(row_b, row_s))
    assert diff < 1e-4, diff
    # the pairs differ in length, so the batch really was padded: different rows, different scores
    assert len({tuple(round(v, 3) for v in row) for row in batched}) == len(PAIRS)


def test_packed_rows_score_as_separate_rows(smol):
    """The default layout (one packed row per pair) against one padded row per pair and label."""
    assert smol.packed
    packed = smol.score(PAIRS)
    smol.packed = False
    try:
        rows = smol.score(PAIRS)
    finally:
        smol.packed = True
    assert max(abs(a - b) for rp, rr in zip(packed, rows) for a, b in zip(rp, rr)) < 1e-4


def test_label_scores_match_a_manual_forward_pass(smol):
    premise, hypothesis = PAIRS[1]
    messages = [{"role": "user", "content": f"{INSTRUCTION}\n\npremise: {premise} hypothesis: {hypothesis}"}]
    text = smol.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    prompt = smol.tokenizer(text, add_special_tokens=False)["input_ids"]
    labels = [smol.tokenizer(lab, add_special_tokens=False)["input_ids"] for lab in LABELS]
    assert all(len(ids) >= 1 for ids in labels) and max(len(ids) for ids in labels) > 1  # multi-token sums
    expected = manual_causal(smol.net, labels, prompt)
    got = smol.predict([(premise, hypothesis)])[0]
    assert max(abs(got["logprobs"][lab] - e) for lab, e in zip(LABELS, expected)) < 1e-4
    assert all(e < 0 for e in expected)


def test_prediction_shape_and_softmax(smol):
    preds = smol.predict(PAIRS[:2])
    assert len(preds) == 2
    for p in preds:
        assert set(p) == {"label", "confidence", "scores", "logprobs"}
        assert set(p["scores"]) == set(LABELS)
        assert abs(sum(p["scores"].values()) - 1) < 1e-9
        assert p["label"] == max(p["logprobs"], key=p["logprobs"].get)
        assert p["confidence"] == p["scores"][p["label"]] >= 1 / 3
        # softmax over the sums: probability ratios are exp(log-prob differences)
        lp, sc = p["logprobs"], p["scores"]
        assert abs(sc["neutral"] / sc["entailment"] - 2.718281828 ** (lp["neutral"] - lp["entailment"])) < 1e-6
    assert smol.predict([]) == []


def test_info_and_bad_input(smol, smollm2):
    info = smol.info()
    assert info["kind"] == "causal" and info["labels"] == list(LABELS) and info["device"] == "cpu"
    assert "SmolLM2-135M-Instruct" in info["base_model"] and info["chat_template"] is True
    assert info["path"] == smollm2 and info["adapter"] is None
    with pytest.raises(ValueError, match=r"pairs\[1\]: need a \(premise, hypothesis\) pair"):
        smol.predict([("a", "b"), ("only one",)])
    with pytest.raises(ValueError, match=r"pairs\[0\]"):
        smol.predict([("a", 3)])


def test_unknown_models_and_devices_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        nli_model.load("no-such-model")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/gone/base"}))
    with pytest.raises(ValueError, match=r"base model cannot be found here \(tried \['/gone/base'\]\)"):
        nli_model.check(str(tmp_path))
    with pytest.raises(ValueError, match="kind: 'encoder'"):
        nli_model.load("smollm2-135m", kind="encoder")


def test_seq2seq_t5(tmp_path):
    """A tiny random T5 saved to a folder: kind detection, batching and the decoder-side scoring."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tok, vocab = word_tokenizer(tmp_path, eos_after=True)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5ForConditionalGeneration(cfg).save_pretrained(tmp_path)
    m = nli_model.load(str(tmp_path))
    assert m.info()["kind"] == "seq2seq" and m.prompt("a", "b") == "premise: a hypothesis: b"
    pairs = [("a man is sleeping", "a man is awake"), ("dogs run", "a cat sat"), ("a", "a")]
    batched = m.score(pairs)
    single = [m.score([p])[0] for p in pairs]
    assert max(abs(a - b) for rb, rs in zip(batched, single) for a, b in zip(rb, rs)) < 1e-4
    # by hand: encoder on the pair (+ </s>), decoder fed <pad> then the label, which is one word here
    enc = tok("premise: dogs run hypothesis: a cat sat")["input_ids"]
    assert enc[-1] == 1
    with torch.inference_mode():
        for k, lab in enumerate(LABELS):
            target = tok(lab, add_special_tokens=False)["input_ids"]
            logits = m.net(input_ids=torch.tensor([enc]), decoder_input_ids=torch.tensor([[0]])).logits
            assert abs(logits[0, 0].log_softmax(-1)[target[0]].item() - batched[1][k]) < 1e-4


def test_causal_lora_adapter(tmp_path):
    """A LoRA adapter folder on a tiny causal model without a chat template: the base is found
    through adapter_config.json, and the adapter really changes the scores."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tok, vocab = word_tokenizer(base_dir, eos_after=False)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, eos_token_id=1, bos_token_id=1)
    LlamaForCausalLM(cfg).save_pretrained(base_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    get_peft_model(LlamaForCausalLM.from_pretrained(base_dir), lora).save_pretrained(adapter_dir)

    base = nli_model.load(str(base_dir))
    tuned = nli_model.load(str(adapter_dir))
    info = tuned.info()
    assert info["adapter"] == str(adapter_dir) and info["base_model"] == str(base_dir)
    assert not tuned.chat and tuned.continuation("neutral") == " neutral"
    pairs = [("a man is sleeping", "a man is awake"), ("dogs run", "a cat sat")]
    assert base.packed and tuned.packed
    b, t = base.score(pairs), tuned.score(pairs)
    assert max(abs(x - y) for rb, rt in zip(b, t) for x, y in zip(rb, rt)) > 1e-3
    single = [tuned.score([p])[0] for p in pairs]
    assert max(abs(x - y) for rb, rs in zip(t, single) for x, y in zip(rb, rs)) < 1e-4
    prompt = tok(tuned.prompt(*pairs[0]))["input_ids"]
    labels = [tok(" " + lab, add_special_tokens=False)["input_ids"] for lab in LABELS]
    expected = manual_causal(tuned.net, labels, prompt)
    assert max(abs(x - y) for x, y in zip(expected, t[0])) < 1e-4
    # the prompt is over the model's 128 positions: refused with the pair named
    with pytest.raises(ValueError, match=r"pairs\[1\]: the prompt is \d+ tokens and .* reads at most 128"):
        tuned.score([("a", "b"), ("a " * 200, "b")])


def test_cli_help_is_light_and_bad_input_is_a_message():
    code = ("import sys, runpy; sys.argv=['x','--help']\n"
            "try:\n    runpy.run_module('steps.nli_model', run_name='__main__')\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('torch','transformers','peft') if m in sys.modules]\n"
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-800:]
    r = subprocess.run([sys.executable, "-m", "steps.nli_model", "--model", "/no/such/folder", "--premise", "a",
                        "--hypothesis", "b"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "unknown model '/no/such/folder'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "steps.nli_model", "--premise", " ", "--hypothesis", "b"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "premise: need non-empty text" in r.stderr


def test_training_rows_are_the_prediction_prompt(smollm2):
    """steps.finetune turns a row into a user turn + assistant answer with the chat template; that
    user turn must be the one NliModel.prompt asks, or training would teach another question."""
    from transformers import AutoTokenizer

    row = nli_model.sft_example("A cat sleeps.", "An animal rests.", "entailment")
    tok = AutoTokenizer.from_pretrained(smollm2)
    trained = tok.apply_chat_template([{"role": "user", "content": row["question"]}], add_generation_prompt=True,
                                      tokenize=False)
    asked = nli_model.NliModel.prompt(SimpleNamespace(kind="causal", chat=True, tokenizer=tok),
                                      "A cat sleeps.", "An animal rests.")
    assert trained == asked and row["answer"] == "entailment"
    # a seq2seq model's encoder reads the row's text2text (steps.finetune), which is its prompt
    assert row["text2text"] == nli_model.NliModel.prompt(SimpleNamespace(kind="seq2seq"), "A cat sleeps.",
                                                         "An animal rests.")
