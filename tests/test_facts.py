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
