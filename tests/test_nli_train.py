"""steps.nli_train: packed rows score every pair exactly as steps.nli_model scores it alone (the
bundled SmolLM2 and its chat template); the epoch order; training a tiny random Llama (offline
word-level tokenizer) until its adapter predicts the rows it learnt; resuming from a checkpoint;
seq2seq models handed to steps.finetune; bad rows refused by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steps import nli_model, nli_train
from steps.nli_train import NliTrainConfig, Packer, epoch_order, pair_logprobs, run, step_pairs
from tests.test_finetune_seq2seq import t5, word_tokenizer  # noqa: F401  (t5: the tiny T5 fixture)

# every premise has three hypotheses, one per label, so a premise's pairs share a row
ROWS = [
    ("a man is sleeping", "a man is sleeping", "entailment"),
    ("a man is sleeping", "a man is awake", "contradiction"),
    ("a man is sleeping", "dogs run", "neutral"),
    ("a cat sat", "a cat sat", "entailment"),
    ("a cat sat", "a man is awake", "neutral"),
    ("a cat sat", "dogs run", "contradiction"),
]


def write_data(folder: Path, rows=ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps({"premise": p, "hypothesis": h, "label": lab}) + "\n"
                                                for p, h, lab in rows))
    (folder / "train_sft.jsonl").write_text("".join(json.dumps(nli_model.sft_example(p, h, lab)) + "\n"
                                                    for p, h, lab in rows))
    return folder


@pytest.fixture(scope="module")
def smol(smollm2: str):
    return nli_model.load(smollm2)


@pytest.mark.parametrize("room", ["wide", "tight"])
def test_packed_rows_score_each_pair_as_the_scorer_does(smol, room):
    import torch

    pairs = [("A Pod runs one or more containers on a node. Type: string. Required.", "This field is optional."),
             ("A Pod runs one or more containers on a node. Type: string. Required.", "This field holds a string."),
             ("A Pod runs one or more containers on a node. Type: string. Required.", "Service.spec.ports is a list."),
             ("Replicas is the desired number of pods.", "The replicas field takes an integer."),
             ("Replicas is the desired number of pods.", "Replicas can be left unset.")]
    gold = [0, 2, 1, 0, 2]
    split = [Packer(smol, 4096).split(p, h) for p, h in pairs]
    assert all(head for head, _ in split)  # the chat template splits cleanly at the hypothesis
    longest = max(len(head) + len(tail) for head, tail in split) + max(len(x) for x in smol.label_ids)
    packer = Packer(smol, 4096 if room == "wide" else longest + 2)
    rows = packer.rows([(head, tail, g) for (head, tail), g in zip(split, gold)])
    # wide: one row per premise; tight: one row per pair, since no row has room for two
    assert len(rows) == (2 if room == "wide" else 5)
    with torch.inference_mode():
        got = pair_logprobs(smol.net, rows, smol.pad_id, "cpu", smol.keeps_logits).tolist()
    want = [row[g] for row, g in zip(smol.score(pairs), gold)]
    assert got == pytest.approx(want, abs=2e-3)


def test_an_epoch_holds_every_pair_once_with_a_premises_pairs_together():
    groups = [[0, 1, 2], [3, 4, 5, 6, 7, 8], [9, 10, 11]]
    order = epoch_order(groups, seed=3, epoch=0)
    assert sorted(order) == list(range(12))
    for g in groups:  # each premise's pairs are one consecutive run
        where = sorted(order.index(x) for x in g)
        assert where == list(range(where[0], where[0] + len(g)))
    assert epoch_order(groups, 3, 1) != order  # a new shuffle every epoch, the same one for the same seed
    assert epoch_order(groups, 3, 0) == order
    # steps walk through the epoch in batches, then into the next epoch
    steps = [step_pairs(groups, 12, 5, 3, s) for s in range(3)]
    assert sum(steps, []) == order and [len(s) for s in steps] == [5, 5, 2]
    assert step_pairs(groups, 12, 5, 3, 3) == epoch_order(groups, 3, 1)[:5]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    vocab = word_tokenizer(folder, eos_after=False)
    torch.manual_seed(0)
    # weights 10x the usual init scale: a random network whose output depends on its input enough
    # for a rank-8 adapter to learn six rows in 40 steps
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      pad_token_id=0, eos_token_id=1, bos_token_id=1, initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def cfg(model: Path, data: Path, out: Path, **kw) -> NliTrainConfig:
    base = dict(data=str(data), out=str(out), base_model=str(model), r=8, alpha=16, learning_rate=3e-2,
                max_steps=40, batch_size=len(ROWS), warmup_ratio=0.0, save_steps=1000, seed=0, precision="float32")
    return NliTrainConfig(**{**base, **kw})


def test_lora_learns_the_rows_and_its_adapter_predicts_them(llama, tmp_path, monkeypatch):
    data = write_data(tmp_path / "data")
    out = tmp_path / "ft"
    monkeypatch.setenv("ARGO_PROGRESS_FILE", str(tmp_path / "progress"))
    counts = run(cfg(llama, data, out, metrics_dir=str(tmp_path / "metrics")))
    assert counts["steps"] == 40 and counts["trained_pairs"] == 6 and counts["premises"] == 2
    assert counts["last_loss"] < counts["first_loss"] / 4
    losses = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [x["step"] for x in losses] == list(range(1, 41)) and {x["rows"] for x in losses} == {2}
    config = json.loads((out / "train_config.json").read_text())
    assert config["trainer"].startswith("steps.nli_train") and config["precision"] == "float32"
    assert (tmp_path / "progress").read_text().startswith("40/40")
    model = nli_model.load(str(out / "adapter"))
    assert model.adapter and [p["label"] for p in model.predict([(p, h) for p, h, _ in ROWS])] == [r[2] for r in ROWS]
    merged = nli_model.load(str(out / "merged"))
    assert [p["label"] for p in merged.predict([(p, h) for p, h, _ in ROWS])] == [r[2] for r in ROWS]


def test_a_restarted_step_resumes_on_the_same_data(llama, tmp_path, monkeypatch):
    data = write_data(tmp_path / "data")
    straight = run(cfg(llama, data, tmp_path / "straight", max_steps=6, batch_size=4))

    class Lost(Exception):
        pass

    class Killed(nli_train.Progress):  # the node is lost after step 4, its checkpoint at step 3 kept
        def set(self, done):
            if done == 4:
                raise Lost("killed at step 4")
            super().set(done)

    out = tmp_path / "ft"
    monkeypatch.setattr(nli_train, "Progress", Killed)
    with pytest.raises(Lost):
        run(cfg(llama, data, out, max_steps=6, batch_size=4, save_steps=3))
    assert (out / "checkpoints" / "last.pt").exists() and not (out / "manifest.json").exists()
    monkeypatch.undo()
    resumed = run(cfg(llama, data, out, max_steps=6, batch_size=4, save_steps=3))
    assert json.loads((out / "train_config.json").read_text())["resumed_from"].endswith("last.pt")
    assert not (out / "checkpoints").exists()
    a = [json.loads(x) for x in (tmp_path / "straight" / "loss.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]
    assert [x["step"] for x in b] == [1, 2, 3, 4, 5, 6]
    # the same pairs in the same steps, so the same losses as the uninterrupted run
    assert [x["loss"] for x in b] == pytest.approx([x["loss"] for x in a], abs=1e-4)
    assert resumed["last_loss"] == pytest.approx(straight["last_loss"], abs=1e-4)


def test_a_seq2seq_model_is_trained_by_finetune(t5, tmp_path):  # noqa: F811
    data = write_data(tmp_path / "data")
    counts = run(cfg(t5, data, tmp_path / "ft", max_steps=3, learning_rate=1e-2))
    assert counts["steps"] == 3
    config = json.loads((tmp_path / "ft" / "train_config.json").read_text())
    assert config["model_kind"] == "seq2seq" and "trainer" not in config
    assert nli_model.load(str(tmp_path / "ft" / "adapter")).kind == "seq2seq"


@pytest.mark.parametrize("row, message", [
    ({"premise": "a cat sat", "hypothesis": "dogs run", "label": "maybe"}, r"line 2: label 'maybe' is not one of"),
    ({"premise": "a cat sat", "hypothesis": " ", "label": "neutral"}, r"line 2: 'hypothesis' must be non-empty"),
])
def test_bad_rows_are_refused_by_line_before_anything_is_written(llama, tmp_path, row, message):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": "neutral"}) + "\n"
                                      + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message):
        run(cfg(llama, data, tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()
