"""steps.query run for real against the fault-injecting OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import free_port, kill_when
from tests.faultserver import FaultServer, answer_for, fault_server_module, server  # noqa: F401 - fixtures

from steps.query import QueryConfig, run

REPO = Path(__file__).resolve().parents[1]
KEY = "sk" "-kubellm-test-5f3a9c"  # a value that must never reach an artifact


def question(i: int) -> str:
    return f"question {i}: ¿qué es {i}?"  # non-ASCII, so the log holds multi-byte characters


def write_rows(path: Path, n: int, **extra) -> list[dict]:
    rows = [{"id": f"r{i}", "question": question(i), "topic": f"t{i % 3}", "n": i, **extra} for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def config(srv: FaultServer, tmp: Path, **kw) -> QueryConfig:
    base = {"input": str(tmp / "in.jsonl"), "out": str(tmp / "out"), "model": "tiny", "url": srv.url,
            "concurrency": 4, "timeout_s": 2.0, "retries": 2}
    return QueryConfig(**{**base, **kw})


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_sampled_rows_carry_seed_plus_row_index(server, tmp_path):
    write_rows(tmp_path / "in.jsonl", 4)
    run(config(server, tmp_path, temperature=0.7, seed=10))
    sent = {r.prompt: r.body for r in server.completions()}
    assert [sent[question(i)]["seed"] for i in range(4)] == [10, 11, 12, 13]


def log_ids(out: Path) -> list[str]:
    return [r["id"] for r in read(out / "log.jsonl")]


def test_all_rows_answered_with_every_input_field(server, tmp_path):
    rows = write_rows(tmp_path / "in.jsonl", 6)
    server.fail(question(1), "500")
    server.fail(question(2), "truncated", "503")
    counts = run(config(server, tmp_path, system_prompt="Be brief."))
    assert counts == {"rows": 6, "answered": 6, "failed": 0, "completion_tokens": 6 * 5}
    out = read(tmp_path / "out" / "answers.jsonl")
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    for row, ans in zip(rows, out):
        assert {k: ans[k] for k in row} == row  # every input field kept as it was
        assert ans["answer"] == answer_for(row["question"])
        assert ans["finish_reason"] == "stop" and ans["error"] is None and ans["model"] == "tiny"
        assert ans["prompt_tokens"] == 5 and ans["completion_tokens"] == 5
        assert isinstance(ans["latency_s"], float) and ans["latency_s"] >= 0
    assert [r["attempts"] for r in out] == [1, 2, 3, 1, 1, 1]
    sent = {r.prompt: r.body for r in server.completions()}
    assert sent[question(0)]["messages"] == [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": question(0)}]
    assert all("seed" not in sent[question(i)] for i in range(6))  # greedy: a seed would change nothing
    assert sent[question(0)]["max_tokens"] == 128 and sent[question(0)]["temperature"] == 0.0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["step"] == "query" and manifest["counts"] == counts
    assert manifest["config"]["url"] == server.url and manifest["endpoint"] == server.url + "/v1"
    assert set(manifest["files"]) == {"answers.jsonl", "log.jsonl"}


def test_rows_with_messages_instead_of_a_prompt_field(server, tmp_path):
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": 7, "messages": msgs}) + "\n")
    run(config(server, tmp_path))
    assert server.completions()[0].body["messages"] == msgs
    (ans,) = read(tmp_path / "out" / "answers.jsonl")
    assert ans["id"] == 7 and ans["answer"] == answer_for("hi")


def test_failures_fail_the_step_after_writing_everything_then_rerun_sends_only_them(server, tmp_path):
    rows = write_rows(tmp_path / "in.jsonl", 8)
    out = tmp_path / "out"
    server.always[question(2)] = "500"
    server.always[question(5)] = "500"
    cfg = config(server, tmp_path, retries=1, csv_name="raw.csv", metrics_dir=str(tmp_path / "metrics"))
    with pytest.raises(SystemExit) as e:
        run(cfg)
    msg = str(e.value)
    assert msg.startswith(f"query: 2 of 8 rows failed against {server.url}/v1 (model tiny), more than "
                          "max_failed_fraction=0.05; first error (row 'r2'): ")
    assert "HTTP 500" in msg and str(out / "manifest.json") in msg and str(out / "log.jsonl") in msg
    assert "GET " + server.url + "/v1/models" in msg and "raise max_failed_fraction" in msg
    # everything a successful run writes, the failed rows marked: nothing is lost
    assert sorted(p.name for p in out.iterdir()) == ["answers.jsonl", "log.jsonl", "manifest.json", "raw.csv"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"rows": 8, "answered": 6, "failed": 2, "completion_tokens": 6 * 5}
    assert set(manifest["files"]) == {"answers.jsonl", "log.jsonl", "raw.csv"}
    assert [(tmp_path / "metrics" / k).read_text() for k in ("rows", "failed")] == ["6", "2"]
    written = read(out / "answers.jsonl")
    assert [r["id"] for r in written if r["error"]] == ["r2", "r5"]
    assert written[2]["status"] == 500 and written[2]["attempts"] == 2 and written[2]["answer"] is None
    logged = {r["id"]: r for r in read(out / "log.jsonl")}
    assert set(logged) == {r["id"] for r in rows}
    assert all(server.counts[question(i)] == (2 if i in (2, 5) else 1) for i in range(8))

    server.always.clear()  # the endpoint is fixed
    before = server.counts.copy()
    counts = run(cfg)
    assert counts["answered"] == 8 and counts["failed"] == 0
    assert server.counts - before == {question(2): 1, question(5): 1}  # only the failed rows again
    out_rows = read(out / "answers.jsonl")
    assert [r["id"] for r in out_rows] == [r["id"] for r in rows]
    assert all(r["answer"] == answer_for(r["question"]) and r["error"] is None for r in out_rows)
    assert json.loads((out / "manifest.json").read_text())["counts"]["failed"] == 0

    before = server.counts.copy()
    run(cfg)  # a finished folder re-run (argo retry of a done node): no request at all
    assert server.counts == before
    assert read(out / "answers.jsonl") == out_rows


@pytest.mark.parametrize("failing, fails", [(1, False), (2, True)], ids=["1-of-20", "2-of-20"])
def test_default_max_failed_fraction_is_five_percent(server, tmp_path, failing, fails):
    write_rows(tmp_path / "in.jsonl", 20)
    for i in range(failing):
        server.always[question(i)] = "400"
    if fails:
        with pytest.raises(SystemExit, match=f"{failing} of 20 rows failed"):
            run(config(server, tmp_path))
    else:
        assert run(config(server, tmp_path))["failed"] == failing  # exactly 5%: not above it
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["failed"] == failing


def step_cli(srv: FaultServer, tmp: Path, *extra: str, url: str | None = None) -> list[str]:
    return [sys.executable, "-m", "steps.query", "--input", str(tmp / "in.jsonl"), "--out", str(tmp / "out"),
            "--url", url or srv.url, "--model", "tiny", "--retries", "1", "--timeout-s", "5",
            "--csv-name", "raw.csv", *extra]


def test_every_row_failing_exits_non_zero_with_one_message_and_outputs_written(server, tmp_path):
    rows = write_rows(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "ARGO_PROGRESS_FILE"}
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    res = subprocess.run(step_cli(server, tmp_path, url=dead), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0 and res.stdout == ""
    assert "Traceback" not in res.stderr
    (msg,) = [line for line in res.stderr.splitlines() if not line.startswith("[query")]  # progress lines aside
    assert msg.startswith(f"query: 5 of 5 rows failed against {dead}/v1 (model tiny), more than "
                          "max_failed_fraction=0.05; first error (row 'r0'): ")
    assert "ConnectError" in msg and "Fix: check that the server is up" in msg
    assert sorted(p.name for p in out.iterdir()) == ["answers.jsonl", "log.jsonl", "manifest.json", "raw.csv"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"rows": 5, "answered": 0, "failed": 5, "completion_tokens": 0}
    assert all(r["answer"] is None and "ConnectError" in r["error"] for r in read(out / "answers.jsonl"))

    # the server is up now: the same command sends every failed row once and succeeds
    res = subprocess.run(step_cli(server, tmp_path), cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["answered"] == 5
    assert server.counts == {r["question"]: 1 for r in rows}
    assert json.loads((out / "manifest.json").read_text())["counts"]["failed"] == 0


@pytest.mark.parametrize("change", [{"system_prompt": "Answer in French."}, {"model": "tiny-2"},
                                    {"max_tokens": 16}, {"prompt_field": "topic"}],
                         ids=["system-prompt", "model", "max-tokens", "prompt-field"])
def test_rerun_with_a_changed_request_does_not_reuse_stale_answers(server, tmp_path, change):
    rows = write_rows(tmp_path / "in.jsonl", 3)
    run(config(server, tmp_path))
    before = len(server.completions())
    run(config(server, tmp_path, **change))  # same out folder, different requests
    assert len(server.completions()) - before == 3  # every row asked again, none answered from the log
    out_rows = read(tmp_path / "out" / "answers.jsonl")
    field = change.get("prompt_field", "question")
    assert [r["answer"] for r in out_rows] == [answer_for(r[field]) for r in rows]
    assert {r["model"] for r in out_rows} == {change.get("model", "tiny")}
    assert all(set(r) == set(out_rows[0]) for r in out_rows)


def test_failures_within_max_failed_fraction_are_written_and_counted(server, tmp_path):
    write_rows(tmp_path / "in.jsonl", 10)
    server.always[question(3)] = "400"
    counts = run(config(server, tmp_path, max_failed_fraction=0.1))
    assert counts["failed"] == 1 and counts["answered"] == 9
    bad = read(tmp_path / "out" / "answers.jsonl")[3]
    assert bad["answer"] is None and bad["status"] == 400 and "HTTP 400" in bad["error"]
    assert server.counts[question(3)] == 1  # a 400 is not retried


def test_torn_last_log_line_is_redone_without_duplicates(server, tmp_path):
    rows = write_rows(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out"
    cfg = config(server, tmp_path, concurrency=1)
    run(cfg)
    # simulate a kill mid-write of the last row: its line is cut inside a multi-byte character
    # and the step never got as far as answers.jsonl / manifest.json
    data = (out / "log.jsonl").read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    torn_id = json.loads(data[last:])["id"]
    cut = data.index("¿".encode(), data.index(b'"answer"', last)) + 1
    (out / "log.jsonl").write_bytes(data[:cut])
    (out / "answers.jsonl").unlink()
    (out / "manifest.json").unlink()

    before = server.counts.copy()
    run(cfg)
    torn_q = next(r["question"] for r in rows if r["id"] == torn_id)
    assert server.counts - before == {torn_q: 1}
    assert [r["id"] for r in read(out / "answers.jsonl")] == [r["id"] for r in rows]
    assert sorted(log_ids(out)) == sorted(r["id"] for r in rows)  # every line valid, no id twice


def test_killed_subprocess_resumes_without_losing_or_duplicating_rows(server, tmp_path):
    n = 40
    rows = write_rows(tmp_path / "in.jsonl", n)
    out = tmp_path / "out"
    server.delay_s = 0.15  # 40 rows, 2 at a time: about 3 s, so the kill lands mid-run
    cmd = [sys.executable, "-m", "steps.query", "--input", str(tmp_path / "in.jsonl"), "--out", str(out),
           "--url", server.url, "--model", "tiny", "--concurrency", "2", "--timeout-s", "10"]
    env = {k: v for k, v in os.environ.items() if k != "ARGO_PROGRESS_FILE"}
    log = out / "log.jsonl"
    kill_when(cmd, REPO, env, lambda: log.exists() and log.read_bytes().count(b"\n") >= 8, timeout=30)
    assert not (out / "manifest.json").exists() and not (out / "answers.jsonl").exists()
    done = {r["id"] for r in read(out / "log.jsonl")}
    assert 8 <= len(done) < n

    server.delay_s = 0.0
    before = server.counts.copy()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert json.loads(res.stdout)["answered"] == n
    resent = server.counts - before
    assert not {r["question"] for r in rows if r["id"] in done} & set(resent)  # finished rows not redone
    assert set(resent) == {r["question"] for r in rows if r["id"] not in done}
    final = read(out / "answers.jsonl")
    assert [r["id"] for r in final] == [r["id"] for r in rows]
    assert all(r["answer"] == answer_for(r["question"]) for r in final)
    assert sorted(log_ids(out)) == sorted(r["id"] for r in rows)


@pytest.mark.parametrize("content, match", [
    (None, r"input .*in\.jsonl does not exist"),
    ("", r"in\.jsonl has no rows"),
    ("\n\n", r"in\.jsonl has no rows"),
    ('{"id": 1, "question": "a"}\n{"question": "b"}\n', r"in\.jsonl: row 2 has no `id` field"),
    ('{"id": 1, "question": "a"}\n{"id": "1", "question": "b"}\n', r"in\.jsonl: row 2 repeats id '1'"),
    ('{"id": 1, "question": "a"}\n{"id": "b", "prompt": "b"}\n',
     r"in\.jsonl: row 'b' has no field 'question'; fields are \['id', 'prompt'\]; set prompt_field"),
    ('{"id": 1, "question": "a"}\n{"id": 2, "quest\n', r"in\.jsonl: line 2 is not valid JSON"),
    ('{"id": 1, "question": "a"}\n"valid"\n', r"in\.jsonl: row 2 is not a JSON object"),
], ids=["missing", "empty", "blank", "no-id", "duplicate-id", "no-prompt-field", "bad-json", "not-object"])
def test_bad_input_is_a_clear_error_and_writes_nothing(server, tmp_path, content, match):
    if content is not None:
        (tmp_path / "in.jsonl").write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        run(config(server, tmp_path))
    assert not (tmp_path / "out").exists()
    assert server.requests == []


def test_progress_file_counts_rows(server, tmp_path, monkeypatch):
    progress = tmp_path / "progress"
    monkeypatch.setenv("ARGO_PROGRESS_FILE", str(progress))
    write_rows(tmp_path / "in.jsonl", 5)
    seen = []
    server.delay_s = 0.05
    orig = server._pick_fault

    def spy(*args):  # what Argo would read while the step runs
        seen.append(progress.read_text().strip())
        return orig(*args)

    server._pick_fault = spy
    try:
        run(config(server, tmp_path, concurrency=1))
    finally:
        del server._pick_fault
    assert progress.read_text() == "5/5\n"
    assert seen == ["0/5", "1/5", "2/5", "3/5", "4/5"]


def test_api_key_never_reaches_an_artifact(server, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBELLM_TEST_KEY", KEY)
    write_rows(tmp_path / "in.jsonl", 4)
    server.always[question(1)] = "500"
    cfg = config(server, tmp_path, api_key_env="KUBELLM_TEST_KEY", retries=0, max_failed_fraction=0.5)
    run(cfg)
    assert {r.headers["authorization"] for r in server.completions()} == {f"Bearer {KEY}"}
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["answers.jsonl", "log.jsonl", "manifest.json"]
    for p in out.iterdir():
        assert KEY not in p.read_text(encoding="utf-8"), p.name
    assert json.loads((out / "manifest.json").read_text())["config"]["api_key_env"] == "KUBELLM_TEST_KEY"


def test_credentials_echoed_in_error_bodies_reach_no_log_artifact_or_stderr(server, tmp_path):
    token = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.dG9rZW4"  # a bearer token the server echoes
    other = "sk" "-proj-Q2x7Lm0pA9zR4tY8uW1v"  # someone else's key, OpenAI project style
    server.error_message = (f"Incorrect API key provided: {KEY}. Request headers: {{'Authorization': 'Bearer "
                            f"{token}'}}; also tried {other}")
    server.always_fail = "500"
    write_rows(tmp_path / "in.jsonl", 3)
    env = {**{k: v for k, v in os.environ.items() if k != "ARGO_PROGRESS_FILE"}, "KUBELLM_TEST_KEY": KEY}
    res = subprocess.run(step_cli(server, tmp_path, "--api-key-env", "KUBELLM_TEST_KEY"), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "3 of 3 rows failed" in res.stderr
    assert {r.headers["authorization"] for r in server.completions()} == {f"Bearer {KEY}"}  # the key was sent
    assert "Incorrect API key provided: [REDACTED]" in res.stderr  # the rest of the body is kept
    assert "'Authorization': 'Bearer [REDACTED]'" in res.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["answers.jsonl", "log.jsonl", "manifest.json", "raw.csv"]
    texts = {"stderr": res.stderr, **{p.name: p.read_text(encoding="utf-8") for p in out.iterdir()}}
    for name, text in texts.items():
        for secret in (KEY, token, other, "sk" "-proj-"):
            assert secret not in text, (name, secret)
    assert all("[REDACTED]" in r["error"] for r in read(out / "log.jsonl"))


def test_missing_api_key_fails_before_any_request(server, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBELLM_TEST_KEY", raising=False)
    write_rows(tmp_path / "in.jsonl", 2)
    with pytest.raises(Exception, match="environment variable KUBELLM_TEST_KEY is not set"):
        run(config(server, tmp_path, api_key_env="KUBELLM_TEST_KEY"))
    assert server.requests == []
    assert not (tmp_path / "out" / "answers.jsonl").exists()


def test_lora_adapter_is_staged_loaded_and_queried(server, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    write_rows(tmp_path / "in.jsonl", 3)
    cfg = config(server, tmp_path, lora_name="student-ft", lora_path=str(adapter),
                 lora_stage_dir=str(tmp_path / "models"))
    run(cfg)
    staged = tmp_path / "models" / "student-ft"
    assert server.adapters == {"student-ft": str(staged.resolve())}
    assert (staged / "adapter_model.safetensors").read_bytes() == b"\0" * 16
    assert {r.model for r in server.completions()} == {"student-ft"}
    assert {r["model"] for r in read(tmp_path / "out" / "answers.jsonl")} == {"student-ft"}
    run(cfg)  # a retried step: the adapter is already loaded, which is fine
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter folder"):
        run(config(server, tmp_path, lora_name="x", lora_path=str(tmp_path)))


def test_study_rows_keep_every_column_and_write_a_csv(server, tmp_path):
    """Rows as steps.study writes them: own messages and sampling settings; the CSV keeps every
    input column (commas, quotes and newlines intact) and adds the response and its metadata."""
    import csv

    rows = [{"id": f"t{i}", "row": f"t{i}", "story": f'line one, "quoted"\nline {i}', "prompt": question(i),
             "messages": [{"role": "user", "content": question(i)}],
             "params": {"temperature": 0.5, "max_tokens": 7, "seed": 40 + i}} for i in range(3)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    server.fail(question(1), "429")
    run(config(server, tmp_path, csv_name="m_s_raw_responses.csv"))
    sent = {r.prompt: r.body for r in server.completions() if r.fault is None}
    assert [(sent[question(i)]["seed"], sent[question(i)]["max_tokens"]) for i in range(3)] == [(40, 7), (41, 7), (42, 7)]
    with open(tmp_path / "out" / "m_s_raw_responses.csv", newline="", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["id", "row", "story", "prompt", "response", "model", "finish_reason", "prompt_tokens",
                            "completion_tokens", "latency_s", "attempts", "status", "error"]
    assert [g["story"] for g in got] == [r["story"] for r in rows]
    assert [g["response"] for g in got] == [answer_for(question(i)) for i in range(3)]
    assert got[1]["attempts"] == "2" and got[0]["attempts"] == "1" and all(g["error"] == "" for g in got)


def test_rag_puts_the_retrieved_chunks_in_the_prompt_and_records_them(server, tmp_path):
    pytest.importorskip("faiss")
    from steps import harvest, index

    harvest.run(harvest.HarvestConfig(out=tmp_path / "kb", topics=["ingress"]))
    index.run(index.IndexConfig(kb=tmp_path / "kb", out=tmp_path / "idx", chunk_words=40, overlap_words=8))
    rows = [{"id": "tls", "question": "Which secret holds the TLS certificate of an ingress?"},
            {"id": "class", "question": "How does an ingress name the controller that serves it?"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(config(server, tmp_path, rag=str(tmp_path / "idx"), top_k=3))
    out = {r["id"]: r for r in read(tmp_path / "out" / "answers.jsonl")}
    chunks = {c["id"]: c for c in read(tmp_path / "idx" / "chunks.jsonl")}
    sent = {r.prompt: r.body for r in server.completions()}
    for row in rows:
        a = out[row["id"]]
        assert len(a["context_ids"]) == 3 and a["contexts"] == [chunks[c]["text"] for c in a["context_ids"]]
        assert a["context_doc_ids"] == [chunks[c]["doc_id"] for c in a["context_ids"]]
        user = next(p for p in sent if row["question"] in p)
        for n, cid in enumerate(a["context_ids"], 1):  # numbered, titled, in rank order
            assert f"[{n}] {chunks[cid]['heading']}\n{chunks[cid]['text']}" in user
    assert "k8s/networking.k8s.io/v1/IngressTLS/secretName" in out["tls"]["context_doc_ids"]
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["rag"]["top_k"] == 3 and man["rag"]["method"] == "hybrid"

    # an index folder that is not one: refused before anything is written
    with pytest.raises(ValueError, match=r"holds no config.json"):
        run(config(server, tmp_path, out=str(tmp_path / "out2"), rag=str(tmp_path / "kb")))
    assert not (tmp_path / "out2").exists()
