"""Tests for steps.nli_data on the real Kubernetes v1.28 API reference (kubernetes==28.1.0).

How the generator's labels are checked against hand labels
----------------------------------------------------------
tests/fixtures/nli/k8s_nli_labelled.jsonl holds 72 pairs whose labels were written by reading the
premise and the hypothesis (see its README). Each row also holds `fact`: what the hypothesis claims,
in the generator's vocabulary ({"fact": "default", "subject": <document id>, "value": "1"}). For
generator rows that is the fact the generator rendered; for hand-written rows (a third) it is the
annotator's reading of the sentence. Two checks use it, each against the hand labels:

1. Generator rows are re-derived from the reference: the hypothesis must be exactly what `render`
   makes of the fact, and the fact must be one the generator proposes for that premise, under one
   label (its entailment, contradiction or neutral pool). That pool label is the generator's label;
   it must agree with the hand label on >= 95% of the rows.
2. `label_for(premise document, fact)` recomputes a label from what the premise text states. On all
   rows it decides (it abstains where its rules do not settle a claim, e.g. a conditional default),
   it must agree with the hand label on >= 95%, and it must decide at least 85% of the rows.

The premise of every row must still be the premise the generator builds from the reference, so the
hand labels keep referring to the text the generator reads. A generator that labelled wrongly fails
these checks: `test_the_agreement_check_catches_wrong_labellers` runs the same check with labellers
that ignore the value, or ignore which field a hypothesis is about, and shows they fall below 95%.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from steps._cli import main
from steps.nli_data import (LABELS, SPLITS, NliDataConfig, build_index, candidate_facts, generate_pairs,
                            label_agreement, label_for, premise_text, reference_docs, render, run)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "nli" / "k8s_nli_labelled.jsonl"
THRESHOLD = 0.95


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    return {d["id"]: d for d in reference_docs()}


@pytest.fixture(scope="module")
def labelled() -> list[dict]:
    return read_rows(FIXTURE)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nli") / "data"
    summary = run(NliDataConfig(out=out))
    splits = {s: read_rows(out / f"{s}.jsonl") for s in SPLITS}
    return out, summary, splits


def agreement_of(labeller, rows: list[dict], docs: dict[str, dict]) -> tuple[float, float]:
    """(agreement with the hand labels over the rows the labeller decides, share of rows it decides)."""
    decided = []
    for r in rows:
        label = labeller(docs[r["source"]], r["fact"])
        if label is not None:
            decided.append({"premise": r["premise"], "hypothesis": r["hypothesis"], "label": label})
    return label_agreement(decided, rows), len(decided) / len(rows)


# ------------------------------------------------------------------ the hand-labelled fixture


def test_fixture_is_hand_labelled_reference_text(labelled, docs):
    assert len(labelled) >= 60
    assert Counter(r["label"] for r in labelled) == {"entailment": 24, "neutral": 24, "contradiction": 24}
    origins = Counter(r["origin"] for r in labelled)
    assert origins["hand"] >= len(labelled) // 4 and origins["generator"] >= len(labelled) // 2
    assert len({r["id"] for r in labelled}) == len(labelled)
    for r in labelled:
        # the premise is still what the generator builds from the reference for that document
        assert r["premise"] == premise_text(docs[r["source"]]), r["id"]
        assert r["fact"]["subject"] in docs, r["id"]
    assert (FIXTURE.parent / "README.md").is_file()


def test_generator_labels_agree_with_hand_labels(labelled, docs):
    index = build_index(docs.values())
    rows = [r for r in labelled if r["origin"] == "generator"]
    generated = []
    for r in rows:
        doc, fact = docs[r["source"]], r["fact"]
        subject = docs[fact["subject"]]
        assert render(fact, subject, subject["id"] == doc["id"]) == r["hypothesis"], r["id"]
        # every fact the generator can state about this premise: its own facts and contradicting
        # values, and facts of any field of its topic (the space neutral siblings are drawn from)
        pools = candidate_facts(doc, index["by_topic"][doc["topic"]], index["pools"])
        core = {k: fact[k] for k in ("fact", "subject", "value")}
        found = [lab for lab, cands in pools.items() if core in cands]
        assert len(found) == 1, f"{r['id']}: the generator does not propose {core} (found under {found})"
        generated.append({"premise": r["premise"], "hypothesis": r["hypothesis"], "label": found[0]})
    agreement = label_agreement(generated, rows)
    print(f"generator pool labels vs hand labels: {agreement:.3f} on {len(rows)} generator rows")
    assert agreement >= THRESHOLD


def test_label_for_agrees_with_hand_labels(labelled, docs):
    agreement, coverage = agreement_of(label_for, labelled, docs)
    hand = [r for r in labelled if r["origin"] == "hand"]
    hand_agreement, hand_coverage = agreement_of(label_for, hand, docs)
    print(f"label_for vs hand labels: {agreement:.3f} on {coverage:.0%} of {len(labelled)} rows; "
          f"hand-written rows: {hand_agreement:.3f} on {hand_coverage:.0%} of {len(hand)}")
    assert agreement >= THRESHOLD
    assert coverage >= 0.85
    assert hand_agreement >= THRESHOLD


def test_the_agreement_check_catches_wrong_labellers(labelled, docs):
    def value_blind(doc, fact):  # any claim about the premise's own field counts as entailed
        label = label_for(doc, fact)
        return "entailment" if label == "contradiction" else label

    def subject_blind(doc, fact):  # a claim about a sibling is read as a claim about this field
        return label_for(doc, {**fact, "subject": doc["id"]})

    def never_neutral(doc, fact):
        label = label_for(doc, fact)
        return "contradiction" if label == "neutral" else label

    for wrong in (value_blind, subject_blind, never_neutral):
        agreement, _ = agreement_of(wrong, labelled, docs)
        assert agreement < THRESHOLD, wrong.__name__


def test_label_agreement_needs_common_pairs():
    rows = [{"premise": "p", "hypothesis": "h", "label": "neutral"}]
    assert label_agreement([{"premise": "p", "hypothesis": "h", "label": "neutral"}], rows) == 1.0
    assert label_agreement([{"premise": "p", "hypothesis": "h", "label": "entailment"}], rows) == 0.0
    with pytest.raises(ValueError, match="no hand-labelled pair"):
        label_agreement([{"premise": "q", "hypothesis": "h", "label": "neutral"}], rows)


# ------------------------------------------------------------------ generated pairs


def test_generated_labels_hold_by_the_premise_text(default_run, docs):
    _, _, splits = default_run
    pairs = [p for rows in splits.values() for p in rows]
    for p in pairs:
        doc, spec = docs[p["doc_id"]], p["spec"]
        assert p["premise"] == premise_text(doc)
        assert p["hypothesis"] == render(spec, docs[spec["subject"]], spec["subject"] == p["doc_id"])
        assert label_for(doc, spec) == p["label"], p["id"]
        assert p["genre"] == doc["topic"] and p["fact"] == spec["fact"]
        # independently of label_for: an entailed value is written in the premise itself
        if p["label"] == "entailment":
            shown = {"type": f"Type: {spec['value']}.", "required": f"{spec['value'].capitalize()}.",
                     "kind": f"{spec['value']}."}.get(spec["fact"], re.sub(r"\D.*", "", spec["value"]))
            # numbers may be written as words: "a default value of zero", "must be non-negative"
            assert shown in re.sub(r"\b(?:zero|non-negative)\b", "0", p["premise"]), p["id"]
        if p["label"] == "neutral":
            assert spec["subject"] != p["doc_id"]
            name = spec["subject"].rsplit("/", 1)[-1]
            assert not re.search(rf"\b{re.escape(name)}\b", p["premise"], re.I), p["id"]
        else:
            assert spec["subject"] == p["doc_id"]


def test_default_size_counts_splits_and_labels(default_run):
    out, summary, splits = default_run
    pairs = [p for rows in splits.values() for p in rows]
    assert 2000 <= len(pairs) <= 3000 == NliDataConfig(out=out).max_pairs
    assert len({p["id"] for p in pairs}) == len(pairs)
    labels = Counter(p["label"] for p in pairs)
    assert max(labels.values()) - min(labels.values()) <= len(pairs) * 0.05
    for name, rows in splits.items():
        got = Counter(p["label"] for p in rows)
        assert set(got) == set(LABELS), name
        assert min(got.values()) >= 0.25 * len(rows), name  # roughly balanced in every split
    owners: dict[str, set[str]] = {}
    for name, rows in splits.items():
        for p in rows:
            owners.setdefault(p["doc_id"], set()).add(name)
    assert all(len(s) == 1 for s in owners.values())
    docs_per_split = Counter(next(iter(s)) for s in owners.values())
    assert docs_per_split["train"] / len(owners) == pytest.approx(0.8, abs=0.02)
    assert docs_per_split["test"] / len(owners) == pytest.approx(0.1, abs=0.02)
    facts = Counter(p["fact"] for p in pairs)
    assert {"default", "type", "required", "kind"} <= set(facts) and facts["default"] >= 100
    # one premise per description text: the shared apiVersion/kind/metadata words appear once
    assert sum("APIVersion defines the versioned schema" in p["premise"] for p in pairs) <= 2 * 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["config"]["max_pairs"] == 3000
    assert manifest["counts"]["labels"] == dict(labels)
    for name, rows in splits.items():
        assert manifest["counts"][name]["pairs"] == len(rows) == summary[name]
        assert manifest["counts"][name]["labels"] == {lab: sum(p["label"] == lab for p in rows) for lab in LABELS}
    assert manifest["source"]["kubernetes_client_version"] == "28.1.0"
    print("default size:", {n: manifest["counts"][n]["labels"] for n in SPLITS})


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run(NliDataConfig(out=a, max_pairs=300))
    run(NliDataConfig(out=b, max_pairs=300))
    run(NliDataConfig(out=c, max_pairs=300, seed=1))
    for s in SPLITS:
        assert (a / f"{s}.jsonl").read_bytes() == (b / f"{s}.jsonl").read_bytes()
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()


def test_tiny_sizes(tmp_path):
    summary = run(NliDataConfig(out=tmp_path / "three", max_pairs=3))
    assert summary["pairs"] == 3 and summary["labels"] == {lab: 1 for lab in LABELS}
    assert summary["train"] == 3 and summary["validation"] == summary["test"] == 0
    summary = run(NliDataConfig(out=tmp_path / "ten", max_pairs=30, max_per_doc=3))
    assert summary["pairs"] == 30 and all(summary[s] > 0 for s in SPLITS)


def test_split_by_class_keeps_classes_together(tmp_path):
    run(NliDataConfig(out=tmp_path / "d", max_pairs=600, split_unit="class"))
    owners: dict[str, set[str]] = {}
    for s in SPLITS:
        for p in read_rows(tmp_path / "d" / f"{s}.jsonl"):
            owners.setdefault(p["doc_id"].rsplit("/", 1)[0], set()).add(s)
    assert len(owners) > 20 and all(len(v) == 1 for v in owners.values())


def test_without_metadata_no_type_or_required_facts(docs):
    pairs = generate_pairs(docs.values(), seed=0, max_pairs=300, metadata=False)
    assert pairs and not any(p["fact"] in ("type", "required") for p in pairs)
    assert not any("\n" in p["premise"] for p in pairs)


def test_harvest_folder_as_kb(tmp_path):
    from steps.harvest import HarvestConfig, run as harvest

    harvest(HarvestConfig(out=tmp_path / "kb", topics=["deployments-replicasets", "jobs-cronjobs"]))
    summary = run(NliDataConfig(out=tmp_path / "nli", kb=tmp_path / "kb", max_pairs=150))
    pairs = [p for s in SPLITS for p in read_rows(tmp_path / "nli" / f"{s}.jsonl")]
    assert summary["pairs"] == len(pairs) > 30
    assert {p["genre"] for p in pairs} <= {"deployments-replicasets", "jobs-cronjobs"}
    # docs.jsonl carries no required-ness: no such facts, and no premise claims any
    assert not any(p["fact"] == "required" for p in pairs)
    assert not any(re.search(r"\n.*(Required|Optional)\.$", p["premise"]) for p in pairs)


# ------------------------------------------------------------------ config and CLI


@pytest.mark.parametrize("override, words", [
    ("train_fraction=0.5", ["add up to 1"]),
    ("max_per_doc=2", ["max_per_doc", "greater than or equal to 3"]),
    ("max_pairs=0", ["max_pairs"]),
    ("split_unit=page", ["split_unit"]),
    ("validation_fraction=-0.1", ["validation_fraction"]),
    ("colour=blue", ["unknown", "colour"]),
])
def test_bad_config_values_are_refused(tmp_path, override, words):
    with pytest.raises(SystemExit) as e:
        main(NliDataConfig, run, argv=["--out", str(tmp_path / "x"), override])
    for w in words:
        assert w in str(e.value)
    assert not (tmp_path / "x").exists()


def test_bad_kb_is_one_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(NliDataConfig, run, argv=["--out", str(tmp_path / "x"), "--kb", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "holds no docs.jsonl" in err and "steps.harvest" in err and "Traceback" not in err
    with pytest.raises(ValidationError, match="not both"):
        NliDataConfig(out=tmp_path, kb=tmp_path, k8s_source=tmp_path)


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "tmp"
    proc = subprocess.run([sys.executable, "-m", "steps.nli_data", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["pairs"] == sum(summary[s] for s in SPLITS) > 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.jsonl", "train.jsonl",
                                                     "train_sft.jsonl", "validation.jsonl"]
    train, sft = read_rows(out / "train.jsonl"), read_rows(out / "train_sft.jsonl")
    assert [r["answer"] for r in sft] == [r["label"] for r in train]
    assert all(r["premise"] in s["question"] and r["hypothesis"] in s["question"] for r, s in zip(train, sft))
    row = read_rows(out / "test.jsonl")[0]
    assert set(row) >= {"premise", "hypothesis", "label", "genre", "doc_id", "fact", "id"}
    help_text = subprocess.run([sys.executable, "-m", "steps.nli_data", "--help"], cwd=REPO,
                               capture_output=True, text=True, timeout=60).stdout
    assert "--max-per-doc" in help_text and "--kb" in help_text

