"""steps.extract run for real against the fault-injecting OpenAI-compatible server, which plays the
extractor: its reply texts are scripted per row (tests/faultserver.py `replies`, `responder`)."""

from __future__ import annotations

import csv
import json
import re
from collections import deque
from pathlib import Path

import pytest
from tests.conftest import free_port
from tests.faultserver import FaultServer, fault_server_module, request_text, server  # noqa: F401 - fixtures

from steps.extract import ExtractConfig, parse_json_object, run

# the two real studies' extraction schemas (workflows/studies/study1.yaml, study2.yaml)
STUDY1 = {
    "instructions": "Read the participant's response and fill in the record. Prior_A is the number (0-3) "
                    "given for Question 1; fields 0-3 are the percentages; Knowledge_A is yes or no.",
    "schema": {"type": "object",
               "properties": {"Prior_A": {"type": "integer", "minimum": 0, "maximum": 3},
                              **{k: {"type": "integer", "minimum": 0, "maximum": 100} for k in "0123"},
                              "Knowledge_A": {"type": "string", "enum": ["yes", "no"]}},
               "required": ["Prior_A", "0", "1", "2", "3", "Knowledge_A"],
               "additionalProperties": False},
}
STUDY2 = {
    "instructions": "Was/Wasn't is was or wasn't; Assessment is the word used; response_text is the sentence.",
    "schema": {"type": "object",
               "properties": {"Was/Wasn't": {"type": "string", "enum": ["was", "wasn't"]},
                              "Assessment": {"type": "string", "enum": ["terrible", "bad", "good", "amazing"]},
                              "response_text": {"type": "string", "maxLength": 300}},
               "required": ["Was/Wasn't", "Assessment", "response_text"],
               "additionalProperties": False},
}
FIELDS1 = ["Prior_A", "0", "1", "2", "3", "Knowledge_A"]


def response(i: int) -> str:
    knows = "yes" if i % 2 else "no"
    return f"[r{i}] Question 1: {i % 4}. I'd say {10 * i}% for 0 — ¿sí? The speaker knows: {knows}."


def record(i: int) -> dict:
    return {"Prior_A": i % 4, "0": 10 * i, "1": 5, "2": 0, "3": 100 - 10 * i - 5,
            "Knowledge_A": "yes" if i % 2 else "no"}


def responder(body: dict) -> str:
    """The extractor's reply: the record of the row whose response the request carries."""
    i = int(re.search(r"\[r(\d+)\]", body["messages"][1]["content"]).group(1))
    return json.dumps(record(i))


def query_rows(n: int, prompt: bool = True) -> list[dict]:
    """Rows as steps.query writes them for a steps.study prompts.jsonl."""
    rows = []
    for i in range(n):
        q = f"story {i}. Question 1: how many? Question 2: how likely?"
        rows.append({"id": f"s1-{i}", "row": f"s1-{i}", "story_setup": f"story {i}",
                     **({"prompt": q} if prompt else {}),
                     "messages": [{"role": "user", "content": q}], "params": {"temperature": 0.0, "max_tokens": 160},
                     "model": "smollm2-135m", "answer": response(i), "finish_reason": "stop", "attempts": 1,
                     "error": None})
    return rows


def setup(tmp: Path, rows: list[dict], schema: dict = STUDY1) -> None:
    (tmp / "query").mkdir(exist_ok=True)
    (tmp / "query" / "answers.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                 encoding="utf-8")
    (tmp / "prepared").mkdir(exist_ok=True)
    (tmp / "prepared" / "schema.json").write_text(json.dumps(schema), encoding="utf-8")


def config(srv: FaultServer, tmp: Path, **kw) -> ExtractConfig:
    base = {"input": str(tmp / "query"), "schema": str(tmp / "prepared"), "out": str(tmp / "out"),
            "model": "extractor", "url": srv.url, "concurrency": 4, "timeout_s": 2.0, "retries": 2, "backoff_s": 0.01}
    return ExtractConfig(**{**base, **kw})


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def manifest(tmp: Path) -> dict:
    return json.loads((tmp / "out" / "manifest.json").read_text())


def sent_for(srv: FaultServer, i: int) -> list[dict]:
    """Bodies of the chat requests about row i (its response is in the conversation)."""
    return [r.body for r in srv.completions() if f"[r{i}]" in request_text(r.body)]


def test_structured_extraction_merges_fields_onto_rows_and_writes_csv(server, tmp_path):
    rows = query_rows(6)
    setup(tmp_path, rows)
    server.responder = responder
    counts = run(config(server, tmp_path, csv_name="smollm2-135m_study1_structured.csv"))
    assert counts == {"rows": 6, "valid": 6, "failed": 0,
                      "failed_by_reason": {"validation": 0, "endpoint": 0, "no-response": 0},
                      "attempts": {"1": 6}, "mode_used": "structured"}
    out = read(tmp_path / "out" / "extracted.jsonl")
    assert [r["id"] for r in out] == [r["id"] for r in rows]  # input order, whatever finished first
    for i, (row, ext) in enumerate(zip(rows, out)):
        assert {k: ext[k] for k in row} == row  # every input field kept as it was
        assert {f: ext[f] for f in FIELDS1} == record(i)
        assert ext["extract_ok"] is True and ext["extract_error"] is None and ext["extract_failure"] is None
        assert ext["extract_attempts"] == 1 and ext["extract_mode"] == "structured"
        assert json.loads(ext["extract_raw"]) == record(i) and ext["extract_model"] == "extractor"

    # the requests: schema as response_format, instructions + schema as system, question + response as user
    assert len(server.completions()) == 6
    for i in range(6):
        (body,) = sent_for(server, i)
        assert body["model"] == "extractor" and body["temperature"] == 0.0 and body["max_tokens"] == 256
        assert "seed" not in body  # greedy
        assert body["response_format"] == {"type": "json_schema", "json_schema": {
            "name": "record", "schema": STUDY1["schema"], "strict": True}}
        system, user = body["messages"]
        assert system == {"role": "system", "content": STUDY1["instructions"] + "\n\nReply with one JSON object that "
                          "follows this JSON Schema: " + json.dumps(STUDY1["schema"], ensure_ascii=False)}
        assert user == {"role": "user", "content": f"The question that was asked:\n{rows[i]['prompt']}\n\n"
                        f"The response to extract from:\n{response(i)}"}

    with open(tmp_path / "out" / "smollm2-135m_study1_structured.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["id", "row", "story_setup", "prompt", "model", "answer", "finish_reason", "attempts",
                              "error", *FIELDS1, "extract_ok", "extract_error"]
    assert [r["id"] for r in table] == [r["id"] for r in rows]
    assert [r["answer"] for r in table] == [response(i) for i in range(6)]
    assert [{f: r[f] for f in FIELDS1} for r in table] == [{k: str(v) for k, v in record(i).items()} for i in range(6)]
    assert {r["extract_ok"] for r in table} == {"True"}
    m = manifest(tmp_path)
    assert m["step"] == "extract" and m["mode_used"] == "structured" and m["mode_fallback"] is None
    assert m["counts"] == {k: v for k, v in counts.items() if k != "mode_used"}
    assert set(m["files"]) == {"extracted.jsonl", "log.jsonl", "smollm2-135m_study1_structured.csv"}
    assert m["schema_file"] == str(tmp_path / "prepared" / "schema.json")


def test_invalid_json_is_sent_back_with_the_error_and_retried(server, tmp_path):
    setup(tmp_path, query_rows(3))
    server.responder = responder
    bad = '{"Prior_A": 1, "0": 10, "1": 5'  # cut off
    server.replies["[r1]"] = deque([bad, json.dumps(record(1))])
    run(config(server, tmp_path))
    out = read(tmp_path / "out" / "extracted.jsonl")
    assert [r["extract_attempts"] for r in out] == [1, 2, 1]
    assert out[1]["extract_ok"] is True and {f: out[1][f] for f in FIELDS1} == record(1)
    first, second = sent_for(server, 1)
    assert second["messages"][:2] == first["messages"]
    assert second["messages"][2] == {"role": "assistant", "content": bad}
    retry = second["messages"][3]
    assert retry["role"] == "user" and len(second["messages"]) == 4
    assert re.fullmatch(r"That was invalid: the reply is not valid JSON \(.+ at character \d+\)\. "
                        r"Reply with corrected JSON only\.", retry["content"]), retry["content"]
    assert manifest(tmp_path)["counts"]["attempts"] == {"1": 2, "2": 1}


def test_out_of_range_value_on_every_attempt_is_a_failed_row_not_a_dropped_one(server, tmp_path):
    rows = query_rows(4)
    setup(tmp_path, rows)
    server.responder = responder
    wrong = json.dumps({**record(2), "Prior_A": 7})
    server.replies["[r2]"] = deque([wrong] * 3)
    counts = run(config(server, tmp_path, csv_name="s.csv", max_failed_fraction=0.25))
    assert counts["valid"] == 3 and counts["failed"] == 1
    assert counts["failed_by_reason"] == {"validation": 1, "endpoint": 0, "no-response": 0}
    assert counts["attempts"] == {"1": 3, "3": 1}
    out = read(tmp_path / "out" / "extracted.jsonl")
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    bad = out[2]
    assert bad["extract_ok"] is False and bad["extract_failure"] == "validation" and bad["extract_attempts"] == 3
    assert bad["extract_error"] == "Prior_A: Input should be less than or equal to 3 (got 7)"
    assert bad["extract_raw"] == wrong and all(bad[f] is None for f in FIELDS1)
    assert all(r["extract_ok"] and r["Prior_A"] == i % 4 for i, r in enumerate(out) if i != 2)
    third = sent_for(server, 2)[2]["messages"]  # both invalid replies and both complaints, in order
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert third[3]["content"] == ("That was invalid: Prior_A: Input should be less than or equal to 3 (got 7). "
                                   "Reply with corrected JSON only.")
    with open(tmp_path / "out" / "s.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert table[2]["extract_ok"] == "False" and table[2]["Prior_A"] == "" and "Prior_A" in table[2]["extract_error"]


def test_http_faults_are_retried_by_the_client_and_rows_end_valid(server, tmp_path):
    setup(tmp_path, query_rows(6, prompt=False))  # no question: the user message is the response itself
    server.responder = responder
    server.fail(response(0), "500")
    server.fail(response(1), "429")
    server.fail(response(2), "malformed", "truncated")
    server.fail(response(3), "503", "nochoices")
    counts = run(config(server, tmp_path))
    assert counts["valid"] == 6 and counts["attempts"] == {"1": 6}  # HTTP retries are not extraction attempts
    out = read(tmp_path / "out" / "extracted.jsonl")
    assert [{f: r[f] for f in FIELDS1} for r in out] == [record(i) for i in range(6)]
    assert [server.counts[response(i)] for i in range(6)] == [2, 2, 3, 3, 1, 1]
    assert all(b["messages"][1]["content"] == response(i) for i in range(6) for b in sent_for(server, i))


def test_auto_mode_falls_back_to_prompt_when_response_format_is_rejected(server, tmp_path):
    texts = ["It was amazing!", "It wasn't bad.", "It was terrible, honestly."]
    rows = [{"id": f"s2-{i}", "answer": f"[r{i}] {t}", "error": None} for i, t in enumerate(texts)]
    setup(tmp_path, rows, STUDY2)
    server.reject_response_format = True

    def fenced(body: dict) -> str:
        i = int(re.search(r"\[r(\d+)\]", body["messages"][1]["content"]).group(1))
        was, word = re.match(r"It (was|wasn't) (\w+)", texts[i]).groups()
        rec = {"Was/Wasn't": was, "Assessment": word, "response_text": texts[i]}
        return f"Sure! Here is the record {{as asked}}:\n```json\n{json.dumps(rec, indent=2)}\n```\nAnything else?"

    server.responder = fenced
    counts = run(config(server, tmp_path, csv_name="s2.csv"))
    assert counts["valid"] == 3 and counts["mode_used"] == "prompt"
    out = read(tmp_path / "out" / "extracted.jsonl")
    assert [(r["Was/Wasn't"], r["Assessment"], r["response_text"]) for r in out] == [
        ("was", "amazing", texts[0]), ("wasn't", "bad", texts[1]), ("was", "terrible", texts[2])]
    assert {r["extract_mode"] for r in out} == {"prompt"} and {r["extract_attempts"] for r in out} == {1}
    # one structured probe was refused; every other request went without response_format
    refused = [r for r in server.completions() if r.fault == "response_format"]
    assert len(refused) == 1 and "response_format" in refused[0].body
    assert len(server.completions()) == 4
    assert not any("response_format" in r.body for r in server.completions() if r.fault is None)
    m = manifest(tmp_path)
    assert m["mode_used"] == "prompt" and "response_format" in m["mode_fallback"]
    with open(tmp_path / "out" / "s2.csv", newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == ["id", "answer", "error", "Was/Wasn't", "Assessment", "response_text",
                                       "extract_ok", "extract_error"]


def test_structured_mode_on_a_server_without_response_format_fails_with_the_fix(server, tmp_path):
    setup(tmp_path, query_rows(2))
    server.reject_response_format = True
    with pytest.raises(SystemExit, match=r"extract: 2 of 2 rows sent to the extractor failed .* HTTP 400 .* does not "
                                         r"accept response_format; use mode=auto or prompt"):
        run(config(server, tmp_path, mode="structured"))
    assert len(server.completions()) == 2  # a 400 is not retried
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["extracted.jsonl", "log.jsonl", "manifest.json"]
    assert manifest(tmp_path)["counts"]["failed_by_reason"] == {"validation": 0, "endpoint": 2, "no-response": 0}


def test_query_rows_without_a_response_fail_without_a_request(server, tmp_path):
    rows = query_rows(3)
    rows[1].update(answer=None, error="http://q/v1/chat/completions: HTTP 500 after 5 attempt(s): boom", status=500)
    rows[2]["answer"] = "  \n"
    setup(tmp_path, rows)
    server.responder = responder
    counts = run(config(server, tmp_path))
    assert counts["failed_by_reason"] == {"validation": 0, "endpoint": 0, "no-response": 2}
    assert counts["attempts"] == {"0": 2, "1": 1}
    out = read(tmp_path / "out" / "extracted.jsonl")
    assert out[1]["extract_error"] == ("no response to extract (query error: http://q/v1/chat/completions: "
                                       "HTTP 500 after 5 attempt(s): boom)")
    assert out[2]["extract_error"] == "no response to extract (the response is empty)"
    assert all(not r["extract_ok"] and r["extract_failure"] == "no-response" and r["extract_attempts"] == 0
               and r["extract_raw"] is None and r["Prior_A"] is None for r in out[1:])
    assert out[0]["extract_ok"] and len(server.completions()) == 1
    assert set(out[1]) - set(rows[1]) == set(out[0]) - set(rows[0])  # the same fields added to every row


def test_restart_asks_only_for_rows_whose_endpoint_failed(server, tmp_path):
    rows = query_rows(5, prompt=False)
    setup(tmp_path, rows)
    server.responder = responder
    server.always[response(3)] = "500"  # this row's endpoint fails on every try
    server.replies["[r1]"] = deque(["not json"] * 2)  # this row's replies stay invalid
    cfg = config(server, tmp_path, retries=1, attempts=2, max_failed_fraction=0.25, csv_name="s.csv")
    with pytest.raises(SystemExit) as e:  # 2 of 5 failed: more than 25%
        run(cfg)
    msg = str(e.value)
    assert msg.startswith("extract: 2 of 5 rows sent to the extractor failed against ")
    assert "the endpoint failed for 1 row(s): check that the server is up" in msg
    assert "the replies stayed invalid for 1 row(s), which is final" in msg
    # the outputs are written all the same, every row in them
    m = manifest(tmp_path)
    assert m["counts"]["failed_by_reason"] == {"validation": 1, "endpoint": 1, "no-response": 0}
    assert set(m["files"]) == {"extracted.jsonl", "log.jsonl", "s.csv"}
    first = read(tmp_path / "out" / "extracted.jsonl")
    assert first[3]["extract_failure"] == "endpoint" and "HTTP 500 after 2 attempt(s)" in first[3]["extract_error"]
    assert first[1]["extract_error"] == "the reply holds no JSON object (no `{` in it)"
    assert server.counts[response(3)] == 2

    server.always.clear()  # the endpoint is fixed
    before = len(server.completions())
    counts = run(cfg)  # 1 of 5 invalid: within 25%
    again = server.completions()[before:]
    assert [request_text(r.body).count("[r3]") for r in again] == [1]  # that row, once; the invalid one is final
    assert counts["valid"] == 4 and counts["failed_by_reason"]["endpoint"] == 0
    out = read(tmp_path / "out" / "extracted.jsonl")
    assert [r["id"] for r in out] == [r["id"] for r in rows]  # none duplicated
    assert out[3]["extract_ok"] and {f: out[3][f] for f in FIELDS1} == record(3)
    assert out[:3] + out[4:] == first[:3] + first[4:]
    assert manifest(tmp_path)["counts"]["failed"] == 1

    before = len(server.completions())
    run(cfg)  # a finished folder re-run: nothing to ask
    assert len(server.completions()) == before
    assert read(tmp_path / "out" / "extracted.jsonl") == out


def test_unreachable_endpoint_fails_the_step_after_writing_every_output(server, tmp_path):
    rows = query_rows(3)
    rows[2].update(answer=None, error="HTTP 503", status=503)  # the query step's failure, not this step's
    setup(tmp_path, rows)
    cfg = config(server, tmp_path, url=f"http://127.0.0.1:{free_port()}", retries=1, csv_name="s.csv")
    with pytest.raises(SystemExit, match=r"extract: 2 of 2 rows sent to the extractor failed against "
                                         r"http://127\.0\.0\.1:\d+/v1 \(model extractor\), more than "
                                         r"max_failed_fraction=0\.05; first error \(row 's1-0'\): .*ConnectError.*"
                                         r"GET .*/models.*1 row\(s\) without a query response are not counted"):
        run(cfg)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["extracted.jsonl", "log.jsonl", "manifest.json", "s.csv"]
    assert manifest(tmp_path)["counts"]["failed_by_reason"] == {"validation": 0, "endpoint": 2, "no-response": 1}
    assert {r["id"]: r["failure"] for r in read(out / "log.jsonl")} == {"s1-0": "endpoint", "s1-1": "endpoint"}

    server.responder = responder  # a working extractor: only the rows whose endpoint failed are asked
    counts = run(cfg.model_copy(update={"url": server.url}))
    assert counts["valid"] == 2 and counts["failed_by_reason"] == {"validation": 0, "endpoint": 0, "no-response": 1}
    assert sorted(int(re.search(r"\[r(\d)\]", request_text(r.body)).group(1)) for r in server.completions()) == [0, 1]


@pytest.mark.parametrize("change, match", [
    ({"type": "array"}, r"top-level `type` must be 'object'"),
    ({"properties": {**STUDY1["schema"]["properties"], "Knowledge_A": {"type": "string", "format": "email"}}},
     r"properties\.Knowledge_A: unsupported keyword\(s\) \['format'\]"),
    ({"required": ["Prior_A", "Prior_B"]}, r"`required` must list property names \(unknown: \['Prior_B'\]\)"),
], ids=["array", "unknown-keyword", "required-missing"])
def test_bad_schema_is_an_error_naming_the_file_before_anything(server, tmp_path, change, match):
    setup(tmp_path, query_rows(2), {**STUDY1, "schema": {**STUDY1["schema"], **change}})
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "prepared" / "schema.json")) + ".*" + match):
        run(config(server, tmp_path))
    assert not (tmp_path / "out").exists() and server.requests == []


@pytest.mark.parametrize("text, match", [
    ("{not json", r"schema\.json is not valid JSON"),
    ('{"type": "object", "properties": {"a": {"type": "string"}}}', r"schema\.json must hold \{\"instructions\""),
], ids=["not-json", "bare-schema"])
def test_unreadable_schema_file_is_an_error_naming_it(server, tmp_path, text, match):
    setup(tmp_path, query_rows(1))
    (tmp_path / "prepared" / "schema.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        run(config(server, tmp_path))
    assert not (tmp_path / "out").exists() and server.requests == []


def test_schema_field_named_like_an_input_column_is_refused(server, tmp_path):
    rows = [{**r, "Prior_A": "from the csv"} for r in query_rows(2)]
    setup(tmp_path, rows)
    with pytest.raises(ValueError, match=r"schema field 'Prior_A' in .*schema\.json has the same name as column "
                                         r"'Prior_A' of .*answers\.jsonl"):
        run(config(server, tmp_path))
    assert not (tmp_path / "out").exists() and server.requests == []


@pytest.mark.parametrize("text, expected", [
    ('{"a": 1}', {"a": 1}),
    ('```json\n{"a": "}"}\n```', {"a": "}"}),
    ('Here: {"a": {"b": 2}} and {"c": 3}', {"a": {"b": 2}}),
    ('Sure {as asked}: {"a": 1}', {"a": 1}),
    ('[1, 2]', ValueError("no `{`")),
    ('{"a": 1', ValueError("not valid JSON")),
])
def test_parse_json_object(text, expected):
    if isinstance(expected, Exception):
        with pytest.raises(ValueError, match=str(expected)):
            parse_json_object(text)
    else:
        assert parse_json_object(text) == expected
