"""steps.facts: questions with exact answers from the v1.28 reference, and the answer check."""

from __future__ import annotations

import json

import pytest

from steps import facts
from steps._io import read_jsonl


def test_subject_names_a_field_three_ways():
    t = "CronJob.spec.concurrencyPolicy"
    assert facts.subject(t, "path") == "`CronJob.spec.concurrencyPolicy`"
    assert facts.subject(t, "prose") == "the concurrencyPolicy field in a CronJob's spec"
    assert facts.subject(t, "words") == "the concurrency policy of a CronJob's spec"
    assert facts.subject("Ingress.kind", "prose") == "the kind field of an Ingress"
    assert facts.subject("Pod.spec.securityContext.runAsUser", "prose") == \
        "the runAsUser field in a Pod's spec.securityContext"


def test_questions_carry_the_reference_facts(tmp_path):
    res = facts.run(facts.FactsConfig(out=tmp_path / "f", wordings=2, seed=3))
    rows = read_jsonl(tmp_path / "f" / "questions.jsonl")
    assert res["questions"] == len(rows) > 3000
    by = {(r["doc_id"], r["fact"]): r for r in rows}
    # stated in the reference: "Number of desired pods. ... Defaults to 1." (an int32, optional)
    assert by[("k8s/apps/v1/DeploymentSpec/replicas", "default")]["answer"] == "1"
    assert by[("k8s/apps/v1/DeploymentSpec/replicas", "type")]["answer"] == "integer"
    assert by[("k8s/apps/v1/DeploymentSpec/replicas", "required")]["answer"] == "optional"
    # the client refuses a Container without a name
    assert by[("k8s/core/v1/Container/name", "required")]["answer"] == "required"
    # two wordings of one fact differ, and the same seed asks the same questions
    two = [r for r in rows if r["doc_id"] == "k8s/apps/v1/DeploymentSpec/replicas" and r["fact"] == "default"]
    assert len(two) == 2 and two[0]["question"] != two[1]["question"]
    again = facts.run(facts.FactsConfig(out=tmp_path / "g", wordings=2, seed=3))
    assert again["questions"] == res["questions"]
    assert read_jsonl(tmp_path / "g" / "questions.jsonl") == rows
    man = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert sum(man["counts"]["by_fact"].values()) == len(rows)


def test_kb_and_sampling_limit_the_questions(tmp_path):
    from steps import harvest

    harvest.run(harvest.HarvestConfig(out=tmp_path / "kb", topics=["ingress"]))
    kb = {d["id"] for d in read_jsonl(tmp_path / "kb" / "docs.jsonl")}
    facts.run(facts.FactsConfig(out=tmp_path / "f", kb=tmp_path / "kb", max_questions=20))
    rows = read_jsonl(tmp_path / "f" / "questions.jsonl")
    assert len(rows) == 20 and {r["doc_id"] for r in rows} <= kb


@pytest.mark.parametrize("fact,answer,response,ok", [
    ("default", "1", "It defaults to 1 replica.", True),
    ("default", "1", "The default is 10.", False),
    ("default", "TCP", "Defaults to TCP.", True),
    ("default", "TCP", "Defaults to UDP.", False),
    ("type", "integer", "It is an int32.", True),
    ("type", "integer", "A string or an integer.", False),
    ("type", "date-time", "An RFC3339 timestamp.", True),
    ("required", "required", "Yes, it is required.", True),
    ("required", "required", "No, it is not required.", False),
    ("required", "optional", "It is optional.", True),
    ("required", "optional", "It must be set.", False),
    ("minimum", "0", "The value must be at least 0.", True),
    ("maximum", "100", "At most 1000.", False),
])
def test_fact_correct(fact, answer, response, ok):
    assert facts.fact_correct(fact, answer, response) is ok


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"facts: \['colour'\] unknown; choose among type"):
        facts.run(facts.FactsConfig(out=tmp_path / "f", facts=["colour"]))
    with pytest.raises(ValueError, match=r"nokb/docs.jsonl does not exist"):
        facts.run(facts.FactsConfig(out=tmp_path / "f", kb=tmp_path / "nokb"))
    assert not (tmp_path / "f").exists()


# --------------------------------------------------------------------------- distillation splits and scores

@pytest.fixture(scope="module")
def ref_docs():
    from steps.k8s_reference import load_k8s_files
    from steps.nli_data import reference_docs

    return reference_docs(load_k8s_files())


def test_fact_splits_are_disjoint_by_fact_wording_and_kind(ref_docs):
    text_docs = [d for d in ref_docs if d["kind"] == "Deployment"][:3]
    s = facts.fact_splits(ref_docs, 40, 12, seed=5, exclude_docs={d["id"] for d in text_docs},
                          trained_kinds={"Deployment"})
    assert len(s["train"]) == 40 and len(s["fact_unseen"]) == 12 and len(s["fact_unseen_kind"]) == 12
    key = lambda r: (r["doc_id"], r["fact"])  # noqa: E731
    train = {key(r): r for r in s["train"]}
    train_docs, train_kinds = {r["doc_id"] for r in s["train"]}, {r["kind"] for r in s["train"]}
    for p in s["fact_paraphrase"]:  # the same fact, another template and another naming
        t = train[key(p)]
        assert p["wording"] != t["wording"] and p["naming"] != t["naming"] and p["answer"] == t["answer"]
        assert p["question"] != t["question"]
    for u in s["fact_unseen"]:
        assert u["doc_id"] not in train_docs and u["kind"] in train_kinds
    for u in s["fact_unseen_kind"]:
        assert u["kind"] not in train_kinds and u["kind"] != "Deployment"
    assert not {r["doc_id"] for k in s for r in s[k]} & {d["id"] for d in text_docs}
    # the pool (later cycles' probes) never holds a held-out fact or a held-out wording
    held_facts = {key(r) for r in s["fact_unseen"] + s["fact_unseen_kind"]}
    held_q = {r["question"] for r in s["fact_paraphrase"]}
    assert not {key(r) for r in s["pool"]} & held_facts and not {r["question"] for r in s["pool"]} & held_q
    assert {r["origin"] for r in s["pool"]} == {"trained", "new"}
    # every question's fact is stated in the context the teacher is shown
    for r in s["train"] + s["fact_unseen"]:
        assert r["answer"].lower() in r["context"].lower() or r["fact"] == "required"
    # seeded: the same split twice
    assert facts.fact_splits(ref_docs, 40, 12, seed=5)["train"] == facts.fact_splits(ref_docs, 40, 12, seed=5)["train"]


def test_fact_splits_refuse_a_knowledge_base_too_small(ref_docs):
    few = [d for d in ref_docs if d["kind"] in ("CronJob", "Job")]
    with pytest.raises(ValueError, match="lower fact-questions/heldout-facts or widen the topics"):
        facts.fact_splits(few, 500, 10, seed=0)


def test_token_f1_and_distinct_n():
    assert facts.token_f1("string", "string") == 1.0
    assert facts.token_f1("It is a string.", "string") == pytest.approx(2 * 0.25 * 1 / 1.25)
    assert facts.token_f1("an integer", "string") == 0.0 and facts.token_f1("", "string") == 0.0
    assert facts.token_f1("A list of strings", "list of strings") == pytest.approx(2 * 0.75 / 1.75)
    assert facts.distinct_n("the field is a string") == 1.0
    loop = "and to accept a container " * 6
    assert facts.distinct_n(loop) == pytest.approx(5 / 29)
    assert facts.distinct_n("string") is None
    assert facts.answer_sentence({"title": "CronJob.spec.schedule", "fact": "type", "answer": "string"}) == \
        "`CronJob.spec.schedule` is a string."


def test_compound_types_and_empty_defaults():
    assert facts.fact_correct("type", "map of strings to strings", "`Pod.metadata.labels` is a map of strings to strings.")
    assert not facts.fact_correct("type", "string", "It is a map of strings to strings.")
    assert facts.fact_correct("type", "list of strings", "It is a list of strings.")
    assert not facts.fact_correct("type", "map of strings to strings", "It is a list of strings.")


def test_no_empty_answer_ids_unique_and_pool_clear_of_held_out_documents_and_wordings(ref_docs):
    s = facts.fact_splits(ref_docs, 64, 24, seed=0)
    rows = [r for k in s for r in s[k]]
    assert all(r["answer"].strip() for r in rows)
    for k in s:
        assert len({r["id"] for r in s[k]}) == len(s[k]), k
    unseen_docs = {r["doc_id"] for r in s["fact_unseen"]}
    assert not {r["doc_id"] for r in s["pool"]} & unseen_docs
    para = {(r["doc_id"], r["fact"]): r for r in s["fact_paraphrase"]}
    for r in s["pool"]:
        p = para.get((r["doc_id"], r["fact"]))
        assert p is None or (r["wording"] != p["wording"] and r["naming"] != p["naming"])
