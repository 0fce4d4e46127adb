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

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from steps._cli import main
from steps.nli_external import external_pair, hub_split_names
from steps.nli_data import (LABELS, SPLITS, NliDataConfig, build_index, candidate_facts,
                            generate_pairs, label_agreement, label_for, premise_text,
                            reference_docs, render, run)

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



# ------------------------------------------------------------------ MultiNLI-format data (dataset=...)


def write_rows(path: Path, rows: list, blank_after: int | None = None) -> Path:
    """One JSON value a line (a str row is written as it is: a broken line)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def premise_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_splits(out: Path) -> dict[str, list[dict]]:
    return {s: read_rows(out / f"{s}.jsonl") for s in SPLITS}


def premise_owners(splits: dict[str, list[dict]]) -> dict[str, set[str]]:
    owners: dict[str, set[str]] = {}
    for name, rows in splits.items():
        for r in rows:
            owners.setdefault(r["premise"], set()).add(name)
    return owners


def test_jsonl_file_with_word_int_and_multinli_labels(tmp_path):
    rows, expected = [], {}
    for i in range(10):
        premise = f"Premise number {i} says something."
        for j, word in enumerate(LABELS):
            hyp = f"Hypothesis {i}.{j}."
            expected[(premise, hyp)] = word
            if i < 4:  # the label word, in any case, with a genre and an id
                rows.append({"premise": premise, "hypothesis": hyp, "label": word.upper() if j else word.title(),
                             "genre": "fiction", "id": f"w{i}{j}"})
            elif i < 7:  # MultiNLI's integers (as on the hub), no genre, no id
                rows.append({"premise": premise, "hypothesis": hyp, "label": j})
            else:  # MultiNLI's own files: sentence1, sentence2, gold_label, pairID
                rows.append({"sentence1": premise, "sentence2": hyp, "gold_label": word, "genre": "telephone",
                             "pairID": f"{i}{j}n"})
    rows += [{"sentence1": "Premise number 7 says something.", "sentence2": "Nobody agreed.", "gold_label": "-"},
             {"premise": "Premise number 0 says something.", "hypothesis": "No gold label.", "label": -1},
             {"premise": "Premise number 5 says something.", "hypothesis": "No gold label.", "label": "-1"}]
    src = write_rows(tmp_path / "pairs.jsonl", rows, blank_after=5)
    out = tmp_path / "out"
    summary = run(NliDataConfig(out=out, dataset=str(src)))
    assert summary == {"out": str(out), "pairs": 30, "labels": {lab: 10 for lab in LABELS},
                       "train": 24, "validation": 3, "test": 3, "skipped_no_label": 3}
    splits = read_splits(out)
    got = {(r["premise"], r["hypothesis"]): r["label"] for rows in splits.values() for r in rows}
    assert got == expected
    for name, split_rows in splits.items():
        for r in split_rows:
            assert list(r) == ["premise", "hypothesis", "label", "genre", "id", "doc_id"]
            assert r["doc_id"] == premise_hash(r["premise"])
            n = int(r["premise"].split()[2])
            if n < 4:
                assert (r["genre"], r["id"]) == ("fiction", f"w{n}{r['hypothesis'][-2]}")
            elif n < 7:
                assert r["genre"] == "" and re.fullmatch(rf"{name}-\d+", r["id"]), r
            else:
                assert (r["genre"], r["id"]) == ("telephone", f"{n}{r['hypothesis'][-2]}n")
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(set(ids)) == 30
    assert all(len(s) == 1 for s in premise_owners(splits).values())
    sft = read_rows(out / "train_sft.jsonl")
    assert [r["answer"] for r in sft] == [r["label"] for r in splits["train"]]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == {"dataset": str(src), "path": str(src.resolve()),
                                  "splits": {"train": "pairs.jsonl", "validation": "carved from pairs.jsonl",
                                             "test": "carved from pairs.jsonl"},
                                  "skipped_no_label": {"pairs.jsonl": 3}}
    counts = manifest["counts"]
    assert counts["skipped_no_label"] == 3 and counts["premises_in_two_splits"] == 0
    assert counts["premise_documents"] == 10 and counts["genres"] == {"": 9, "fiction": 12, "telephone": 9}
    assert [counts[s]["documents"] for s in SPLITS] == [8, 1, 1]
    for name, split_rows in splits.items():
        assert counts[name]["labels"] == {lab: sum(r["label"] == lab for r in split_rows) for lab in LABELS}


def test_folder_with_train_and_test_carves_validation_from_train(tmp_path, capsys):
    folder = tmp_path / "mnli"
    folder.mkdir()
    write_rows(folder / "train.jsonl", [{"premise": f"Train premise {i}.", "hypothesis": f"Claim {i}.{j}.",
                                         "label": (i + j) % 3} for i in range(14) for j in range(2)])
    test = [{"premise": f"Test premise {i}.", "hypothesis": "A claim.", "label": "neutral", "id": f"t{i}"}
            for i in range(3)]
    write_rows(folder / "test.jsonl", test)
    summary = run(NliDataConfig(out=tmp_path / "out", dataset=str(folder)))
    # validation's 0.1 against train's 0.8: 2 of train's 14 premises (round(14 * 0.1 / 0.9)), not 1
    assert (summary["train"], summary["validation"], summary["test"]) == (24, 4, 3)
    splits = read_splits(tmp_path / "out")
    assert sorted(r["id"] for r in splits["test"]) == ["t0", "t1", "t2"]
    assert {r["premise"] for r in splits["validation"]} < {f"Train premise {i}." for i in range(14)}
    assert all(len(s) == 1 for s in premise_owners(splits).values())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["splits"] == {"train": "train.jsonl", "validation": "carved from train.jsonl",
                                            "test": "test.jsonl"}
    assert manifest["counts"]["premises_in_two_splits"] == 0 and "more than one split" not in capsys.readouterr().err

    # given files that share a premise are kept as given, and the overlap is counted and reported
    write_rows(folder / "test.jsonl", test + [{"premise": "Train premise 0.", "hypothesis": "Again.", "label": 2}])
    run(NliDataConfig(out=tmp_path / "out", dataset=str(folder)))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["premises_in_two_splits"] == 1 and manifest["counts"]["test"]["pairs"] == 4
    assert "1 premise(s) of" in capsys.readouterr().err


def test_no_premise_in_two_splits_and_max_pairs_keeps_proportions(tmp_path):
    src = write_rows(tmp_path / "all.jsonl", [
        {"premise": f"The premise of document {i}.", "hypothesis": f"Hypothesis {j} about {i}.", "label": j}
        for i in range(50) for j in range(3)])
    full = run(NliDataConfig(out=tmp_path / "full", dataset=str(src)))
    assert (full["train"], full["validation"], full["test"]) == (120, 15, 15)  # 40, 5 and 5 premises
    full_splits = read_splits(tmp_path / "full")
    assert len(premise_owners(full_splits)) == 50
    assert all(len(s) == 1 for s in premise_owners(full_splits).values())

    capped = run(NliDataConfig(out=tmp_path / "capped", dataset=str(src), max_pairs=60))
    assert (capped["pairs"], capped["train"], capped["validation"], capped["test"]) == (60, 48, 6, 6)
    capped_splits = read_splits(tmp_path / "capped")
    for name in SPLITS:  # a sample of each split, not a new split
        assert {r["id"] for r in capped_splits[name]} <= {r["id"] for r in full_splits[name]}
    assert all(len(s) == 1 for s in premise_owners(capped_splits).values())

    again = run(NliDataConfig(out=tmp_path / "again", dataset=str(src), max_pairs=60))
    other = run(NliDataConfig(out=tmp_path / "other", dataset=str(src), max_pairs=60, seed=1))
    assert again == {**capped, "out": str(tmp_path / "again")} and other["pairs"] == 60
    for s in SPLITS:
        assert (tmp_path / "again" / f"{s}.jsonl").read_bytes() == (tmp_path / "capped" / f"{s}.jsonl").read_bytes()
    assert (tmp_path / "other" / "train.jsonl").read_bytes() != (tmp_path / "capped" / "train.jsonl").read_bytes()


GOOD = {"premise": "A man plays a guitar.", "hypothesis": "A person makes music.", "label": "entailment"}


@pytest.mark.parametrize("bad, message", [
    ({**GOOD, "label": "maybe"}, "line 3: label 'maybe' is not entailment, neutral, contradiction or 0/1/2; "
                                 "fix the row's label (-1 or '-': no gold label, the row is skipped)"),
    ({**GOOD, "label": 7}, "line 3: label 7 is not entailment, neutral, contradiction or 0/1/2"),
    ({**GOOD, "label": True}, "line 3: label True is not entailment, neutral, contradiction or 0/1/2"),
    ({**GOOD, "premise": "  "}, "line 3: premise is empty; give the row its premise text, or drop the row"),
    ({**GOOD, "hypothesis": 5}, "line 3: hypothesis is not text"),
    ({"sentence1": "A man plays.", "gold_label": "neutral"},
     "line 3: no hypothesis (hypothesis or sentence2); every row needs premise, hypothesis and label"),
    ({"premise": "A man plays.", "hypothesis": "Music."}, "line 3: no label (label or gold_label)"),
    ('{"premise": "A man plays.", "hypothesis": ', "line 3: not valid JSON"),
    (["A man plays.", "Music.", 0], "line 3: a JSON list, not an object"),
])
def test_bad_rows_name_the_file_line_and_field(tmp_path, bad, message):
    folder = tmp_path / "data"
    folder.mkdir()
    # line 2 is blank: line numbers count the lines of the file
    write_rows(folder / "train.jsonl", [GOOD, bad], blank_after=1)
    with pytest.raises(ValueError) as e:
        run(NliDataConfig(out=tmp_path / "out", dataset=str(folder)))
    assert str(e.value).startswith(f"{folder / 'train.jsonl'} {message}"), str(e.value)
    assert not (tmp_path / "out").exists()


def test_bad_row_is_one_clear_cli_message(tmp_path, capsys):
    src = write_rows(tmp_path / "train.jsonl", [GOOD, GOOD, GOOD, GOOD, GOOD, GOOD, {**GOOD, "label": "maybe"}])
    with pytest.raises(SystemExit) as e:
        main(NliDataConfig, run, argv=["--out", str(tmp_path / "out"), "--dataset", str(src)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {src} line 7: label 'maybe' is not entailment, neutral, contradiction or 0/1/2" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["no/such/file.jsonl", "multi_nli", "./missing", "a/b/c"])
def test_dataset_that_names_nothing_is_refused_before_any_work(tmp_path, value, capsys):
    with pytest.raises(ValueError) as e:
        run(NliDataConfig(out=tmp_path / "out", dataset=value))
    assert str(e.value) == (
        f"dataset={value!r}: no such file or folder, and not a hub ID; dataset takes 'k8s-reference' (pairs "
        "generated from the Kubernetes reference), the path of a MultiNLI-format .jsonl file or of a folder "
        "holding train.jsonl, or a hub ID owner/name such as nyu-mll/multi_nli")
    with pytest.raises(SystemExit) as e:
        main(NliDataConfig, run, argv=["--out", str(tmp_path / "out"), f"dataset={value}"])
    assert e.value.code == 2 and "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_local_paths_that_are_not_multinli_data(tmp_path):
    (tmp_path / "mnli").mkdir()
    (tmp_path / "mnli" / "multinli_1.0_train.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"holds no train.jsonl \(it holds multinli_1.0_train.jsonl\); name the "
                                         r"files train.jsonl"):
        run(NliDataConfig(out=tmp_path / "out", dataset=str(tmp_path / "mnli")))
    (tmp_path / "pairs.csv").write_text("premise,hypothesis,label\n")
    with pytest.raises(ValueError, match=r"pairs.csv' is not a .jsonl file"):
        run(NliDataConfig(out=tmp_path / "out", dataset=str(tmp_path / "pairs.csv")))
    write_rows(tmp_path / "unlabelled.jsonl", [{**GOOD, "label": "-"}])
    with pytest.raises(ValueError, match="gave no labelled pair for train"):
        run(NliDataConfig(out=tmp_path / "out", dataset=str(tmp_path / "unlabelled.jsonl")))
    with pytest.raises(ValidationError, match="kb and k8s_source only apply to dataset=k8s-reference"):
        NliDataConfig(out=tmp_path, dataset="nyu-mll/multi_nli", kb=tmp_path)
    with pytest.raises(ValidationError, match="dataset"):
        NliDataConfig(out=tmp_path, dataset="")


def test_hub_id_not_in_the_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # effective when datasets is first imported here
    with pytest.raises(ValueError) as e:
        run(NliDataConfig(out=tmp_path / "out", dataset="kubellm-test/no-such-nli"))
    msg = str(e.value)
    assert msg.startswith("dataset='kubellm-test/no-such-nli' is not in the local datasets cache and the hub "
                          "cannot be reached (HF_HUB_OFFLINE=1): "), msg
    assert msg.endswith("download it on a machine with hub access (python -c \"import datasets; datasets."
                        "load_dataset('kubellm-test/no-such-nli')\") and bring its cache (HF_HOME, default "
                        "~/.cache/huggingface) here, or export it to JSONL (premise, hypothesis, label) and give "
                        "that file or folder as dataset"), msg
    assert not (tmp_path / "out").exists()


def test_hub_shaped_rows_normalise():
    # a row of nyu-mll/multi_nli: an integer label (ClassLabel), genre, pairID, extra columns
    row = {"promptID": 31193, "pairID": "31193n", "premise": "Conceptually cream skimming has two basic "
           "dimensions - product and geography.", "hypothesis": "Product and geography are what make cream "
           "skimming work. ", "genre": "government", "label": 1}
    assert external_pair(row, "x", ["entailment", "neutral", "contradiction"]) == {
        "premise": row["premise"], "hypothesis": row["hypothesis"], "label": "neutral", "genre": "government",
        "id": "31193n"}
    assert external_pair({**row, "label": -1}, "x", ["entailment", "neutral", "contradiction"]) is None
    # the dataset's own ClassLabel names decide what an integer means, not MultiNLI's order
    assert external_pair({**row, "label": 0}, "x", ["contradiction", "entailment", "neutral"])["label"] == \
        "contradiction"
    assert external_pair({**row, "label": 2, "promptID": None, "pairID": None}, "x")["label"] == "contradiction"
    with pytest.raises(ValueError, match=r"^glue train row 4: label 1 is 'not_entailment' in the dataset's "
                                         r"label names, not an NLI label"):
        external_pair({**row, "label": 1}, "glue train row 4", ["entailment", "not_entailment"])
    with pytest.raises(ValueError, match=r"label 3 is not entailment, neutral, contradiction or 0..1 \(the "
                                         r"dataset's names: entailment, not_entailment\)"):
        external_pair({**row, "label": 3}, "x", ["entailment", "not_entailment"])
    assert hub_split_names(["train", "validation_matched", "validation_mismatched"]) == {
        "train": "train", "validation": "validation_matched", "test": "validation_mismatched"}
    assert hub_split_names(["test", "train", "validation"]) == {
        "train": "train", "validation": "validation", "test": "test"}
    assert hub_split_names(["train", "test"]) == {"train": "train", "test": "test"}


def test_hub_dataset_splits_and_class_labels(tmp_path, monkeypatch):
    """The hub path end to end on an in-memory DatasetDict standing in for load_dataset's answer."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "genre": datasets.Value("string"), "pairID": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])})

    def split(tag: str, n: int, genre: str) -> "datasets.Dataset":
        rows = [{"premise": f"{tag} premise {i // 3}.", "hypothesis": f"{tag} claim {i}.", "genre": genre,
                 "pairID": f"{tag}{i}", "label": i % 3} for i in range(n)]
        rows[0]["label"] = -1  # MultiNLI's no-gold-label marker
        return datasets.Dataset.from_list(rows, features=features)

    loaded = datasets.DatasetDict({"train": split("tr", 30, "fiction"), "validation_matched": split("vm", 6, "fiction"),
                                   "validation_mismatched": split("mm", 9, "letters")})
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name: asked.append(name) or loaded)
    summary = run(NliDataConfig(out=tmp_path / "out", dataset="nyu-mll/multi_nli"))
    assert asked == ["nyu-mll/multi_nli"]
    assert (summary["train"], summary["validation"], summary["test"], summary["skipped_no_label"]) == (29, 5, 8, 3)
    splits = read_splits(tmp_path / "out")
    assert {r["premise"].split()[0] for r in splits["test"]} == {"mm"}
    assert {r["genre"] for r in splits["test"]} == {"letters"}
    assert all(r["label"] == LABELS[int(r["id"][2:]) % 3] for rows in splits.values() for r in rows)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"] == {"dataset": "nyu-mll/multi_nli", "splits": {
        "train": "train", "validation": "validation_matched", "test": "validation_mismatched"},
        "skipped_no_label": {"train": 1, "validation_matched": 1, "validation_mismatched": 1}}
    assert manifest["versions"]["datasets"] == datasets.__version__


def test_help_is_fast_and_datasets_is_imported_lazily():
    code = ("import sys, steps.nli_data; "
            "heavy = [m for m in ('datasets', 'pyarrow', 'pandas', 'torch') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    help_text = subprocess.run([sys.executable, "-m", "steps.nli_data", "--help"], cwd=REPO,
                               capture_output=True, text=True, timeout=60).stdout
    assert "--dataset" in help_text and "nyu-mll/multi_nli" in help_text and "[default: k8s-reference]" in help_text
