"""steps.study and steps.plan: study YAML + CSV checked and expanded; every bad input named, nothing
half-written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from steps import study as st
from steps.plan import PlanConfig, parse_models
from steps.plan import run as plan

STUDIES = Path(__file__).resolve().parents[1] / "workflows" / "studies"


def write_study(tmp: Path, csv_text: str | bytes, **over) -> Path:
    doc = {"name": "s", "data": "s.csv", "prompt": "{a} and {b}", "sampling": {"temperature": 0.7, "max_tokens": 9, "seed": 5},
           "probabilities": [{"name": "q", "prompt": "{a}? state {state}", "states": [0, 1], "candidates": ["yes", "no"]}],
           "extract": {"instructions": "x", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}}
    doc.update(over)
    (tmp / "s.csv").write_bytes(csv_text if isinstance(csv_text, bytes) else csv_text.encode())
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("name", ["study1", "study2"])
def test_shipped_studies_load_and_expand(name, tmp_path):
    counts = st.run(st.StudyConfig(study=str(STUDIES / f"{name}.yaml"), out=str(tmp_path / name)))
    prompts = [json.loads(x) for x in (tmp_path / name / "prompts.jsonl").read_text().splitlines()]
    items = [json.loads(x) for x in (tmp_path / name / "items.jsonl").read_text().splitlines()]
    with open(STUDIES / f"{name}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert counts["csv_rows"] == len(rows) == len(prompts)
    assert [p["row"] for p in prompts] == [r["id"] for r in rows]
    for col in rows[0]:
        if col != "id":
            assert prompts[0][col] == rows[0][col]  # every input column is carried
    assert (tmp_path / name / "manifest.json").exists() and (tmp_path / name / "schema.json").exists()
    if name == "study1":
        assert len(items) == len(rows) * 5  # 4 belief states + knowledge
        belief = [i for i in items if i["question"] == "belief"]
        assert belief[0]["candidates"] == [f"{n}%" for n in range(0, 101, 10)]
        assert {i["label"] for i in belief} == {"belief_s0", "belief_s1", "belief_s2", "belief_s3"}
        assert "exactly 2?" in next(i for i in belief if i["state"] == 2)["messages"][-1]["content"]
    else:
        assert len(items) == len(rows) and items[0]["answer_prefix"] == "It" and len(items[0]["candidates"]) == 8


def test_quotes_commas_newlines_and_bom_are_read_exactly(tmp_path):
    text = '\ufeffa,b\n"x, ""quoted""\nsecond line",plain\n'
    path = write_study(tmp_path, text)
    study, columns, rows = st.load_study(path)
    assert columns == ["a", "b"]
    assert rows == [{"a": 'x, "quoted"\nsecond line', "b": "plain"}]
    prompts, _ = st.expand(study, columns, rows)
    assert prompts[0]["prompt"] == 'x, "quoted"\nsecond line and plain'
    # and written back out, a CSV round-trips the same field
    out = tmp_path / "o.csv"
    st.write_csv(out, prompts)
    with open(out, newline="", encoding="utf-8") as f:
        assert next(csv.DictReader(f))["a"] == 'x, "quoted"\nsecond line'


def test_sampled_requests_get_distinct_reproducible_seeds(tmp_path):
    path = write_study(tmp_path, "a,b\n1,2\n3,4\n", repeats=2)
    study, columns, rows = st.load_study(path)
    prompts, _ = st.expand(study, columns, rows)
    assert [p["params"]["seed"] for p in prompts] == [5, 6, 7, 8]
    assert [p["id"] for p in prompts] == ["1-r0", "1-r1", "2-r0", "2-r1"]


@pytest.mark.parametrize("csv_text, over, expected", [
    ("a,c\n1,2\n", {}, "template names column 'b', which s.csv does not have"),
    ("a,b\n1,2\n", {"prompt": "{a} {nope}"}, "its columns are a, b"),
    ("", {}, "is empty"),
    ("a,b\n", {}, "has a header (a, b) but no data rows"),
    ("a,b\n1,2,3\n", {}, "line 2 has 3 fields, the header has 2"),
    ("a,a\n1,2\n", {}, "header repeats column(s) ['a']"),
    (b"a,b\n1,caf\xe9\n", {}, "byte 9 (line 2) is not UTF-8"),
    ("a,b\n1,2\n", {"probabilities": [{"name": "q", "prompt": "{a}", "candidates": []}]}, "the candidate set is empty"),
    ("a,b\n1,2\n", {"probabilities": [{"name": "q", "prompt": "{a} {state}", "candidates": ["x"]}]},
     "add `states:` to fill {state}"),
    ("a,b\n1,2\n", {"extract": {"instructions": "x", "schema": {"type": "array"}}}, "top-level `type` must be 'object'"),
    ("a,b\n1,2\n", {"extract": {"instructions": "x", "schema": {"type": "object", "properties": {"n": {"type": "integer",
                                                                                                    "oneOf": []}}}}},
     "extract.schema.properties.n: unsupported keyword(s) ['oneOf']"),
    ("a,b\n1,2\n", {"prompt": "{a.__class__}"}, "is not a plain column name"),
    ("a,b\n1,2\n", {"prompt": "{a"}, "cannot parse the template"),
    ("a,prompt\n1,2\n", {"prompt": "{a}"}, "clash with fields kubellm adds"),
    ("a,b\n1,2\n", {"temperature": 1}, "temperature: Extra inputs are not permitted"),
])
def test_bad_input_is_named_and_nothing_is_written(tmp_path, csv_text, over, expected):
    path = write_study(tmp_path, csv_text, **over)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        st.run(st.StudyConfig(study=str(path), out=str(out)))
    assert expected in str(e.value)
    assert "s.csv" in str(e.value) or "s.yaml" in str(e.value)
    assert not out.exists()


def test_a_study_yaml_that_does_not_parse_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml is not valid YAML"):
        st.load_study(path)


def test_schema_validator_enforces_types_ranges_and_enums():
    model = st.schema_model({"type": "object", "properties": {
        "Prior_A": {"type": "integer", "minimum": 0, "maximum": 3}, "Knowledge_A": {"enum": ["yes", "no"]}},
        "additionalProperties": False})
    assert st.validate_record(model, {"Prior_A": 2, "Knowledge_A": "no"}) == {"Prior_A": 2, "Knowledge_A": "no"}
    for bad, field in (({"Prior_A": 4, "Knowledge_A": "no"}, "Prior_A"), ({"Prior_A": 2.5, "Knowledge_A": "no"}, "Prior_A"),
                       ({"Prior_A": 1, "Knowledge_A": "maybe"}, "Knowledge_A"),
                       ({"Prior_A": 1, "Knowledge_A": "no", "x": 1}, "x"), ({"Knowledge_A": "no"}, "Prior_A")):
        with pytest.raises(ValueError, match=field):
            st.validate_record(model, bad)


def test_plan_checks_every_study_before_writing_and_fixes_the_timestamp(tmp_path):
    bad = write_study(tmp_path, "a,c\n1,2\n")
    out = tmp_path / "plan"
    with pytest.raises(ValueError, match="does not have"):
        plan(PlanConfig(experiment="e", models="m", studies=f"study1,{bad}", out=str(out)))
    assert not out.exists()  # study1 was fine, but nothing is written until all are
    res = plan(PlanConfig(experiment="e", models="smollm2-135m,google/gemma-2-2b-it", studies="study1,study2",
                          out=str(out), params_dir=str(tmp_path / "p"), limit=2, timestamp="20260101T000000Z"))
    assert res["models"] == ["smollm2-135m", "google--gemma-2-2b-it"]
    models = json.loads((tmp_path / "p" / "models").read_text())
    assert models[1] == {"name": "google/gemma-2-2b-it", "slug": "google--gemma-2-2b-it", "gpus": 0, "tp": 1,
                         "cpu": "2", "memory": "12Gi"}
    assert json.loads((tmp_path / "p" / "studies").read_text()) == ["study1", "study2"]
    assert (tmp_path / "p" / "timestamp").read_text() == "20260101T000000Z"
    assert len((out / "study2" / "prompts.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("raw, expected", [
    ("", "the list is empty"), ("[{\"gpus\": 1}]", "need a name"), ("a,a", "named more than once"),
    ("[{\"name\": \"m\", \"gpu\": 1}]", "unknown key(s) ['gpu']"), ("[oops", "not valid JSON"), ("report", "cannot be used"),
])
def test_bad_model_lists_are_named(raw, expected):
    with pytest.raises(ValueError) as e:
        parse_models(raw, 0, "2", "8Gi")
    assert expected in str(e.value)
