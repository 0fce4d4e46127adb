"""steps.rowloop, the request loop shared by query, extract and probabilities: what a logged row is
reused for, the order and the log it keeps, and when a step ends failed. The steps' own tests run it
against the fault server end to end; here are its rules on their own."""

from __future__ import annotations

import asyncio
import hashlib
import json
from types import SimpleNamespace

import pytest
from tests.faultserver import answer_for, fault_server_module, server  # noqa: F401 - fixtures

from steps._io import JsonlLog
from steps.client import Endpoint
from steps.query import ask
from steps.rowloop import Job, check_failed, fingerprint, run_jobs, send_all

MESSAGES = [{"role": "system", "content": "Sé breve."}, {"role": "user", "content": "¿Qué es un Pod?"}]
PARAMS = {"temperature": 0.0, "max_tokens": 8}


def test_fingerprints_match_the_logs_steps_wrote_before_the_loop_was_shared():
    # the formulas query, extract and probabilities used on their own: a folder they wrote is resumed,
    # not redone, by the shared loop
    def old(doc: list, **kw) -> str:
        return hashlib.sha256(json.dumps(doc, ensure_ascii=False, **kw).encode()).hexdigest()[:16]

    query = old(["m", MESSAGES, PARAMS], sort_keys=True, default=str)
    assert fingerprint("m", Job("r1", [MESSAGES, PARAMS])) == query
    extract = old(["m", "auto", MESSAGES, PARAMS], sort_keys=True, default=str)
    assert fingerprint("m", Job("r1", ["auto", MESSAGES, PARAMS])) == extract
    probs = old(["m", "Q: sky?\nA:", [" yes", " no"], [1.0, 0.0], None])
    assert fingerprint("m", Job("r1", ["Q: sky?\nA:", [" yes", " no"], [1.0, 0.0], None])) == probs
    assert fingerprint("other", Job("r1", [MESSAGES, PARAMS])) != query


def test_logged_rows_are_reused_only_when_done_and_for_the_same_request(server, tmp_path):
    endpoint = Endpoint.parse("tiny", server.url)
    jobs = [Job(f"r{i}", [[{"role": "user", "content": f"q{i}"}], PARAMS]) for i in range(4)]
    log_path = tmp_path / "log.jsonl"
    server.always["q1"] = "400"
    first = run_jobs(endpoint, jobs, ask, log_path, None, concurrency=2, max_retries=0)
    assert [first[f"r{i}"]["error"] is None for i in range(4)] == [True, False, True, True]
    assert all(isinstance(r["latency_s"], float) and r["request"] == fingerprint("tiny", j)
               for r, j in zip(first.values(), jobs))

    server.always.clear()
    jobs[2] = Job("r2", [[{"role": "user", "content": "q2 changed"}], PARAMS])  # another request, same row
    before = server.counts.copy()
    again = run_jobs(endpoint, jobs, ask, log_path, None, concurrency=2)
    assert server.counts - before == {"q1": 1, "q2 changed": 1}  # the failed row and the changed one
    assert again["r0"] == first["r0"] and again["r2"]["answer"] == answer_for("q2 changed")
    assert len(log_path.read_text().splitlines()) == 6  # appended, never rewritten

    # another notion of done (extract: only endpoint failures are asked again)
    before = server.counts.copy()
    run_jobs(endpoint, jobs, ask, log_path, None, done=lambda row: True)
    assert server.counts == before


def test_first_alone_sends_one_job_before_the_others(tmp_path):
    events: list[str] = []

    async def send(client, job):
        events.append(f"start {job.key}")
        await asyncio.sleep(0.01)
        events.append(f"end {job.key}")
        return {"error": None}

    jobs = [Job(k, [k]) for k in "abc"]
    client = SimpleNamespace(endpoint=SimpleNamespace(model="m"))  # send above never uses it
    with JsonlLog(tmp_path / "log.jsonl") as log:
        asyncio.run(send_all(client, jobs, log, send, first_alone=True))
    assert events[:2] == ["start a", "end a"] and sorted(events[2:4]) == ["start b", "start c"]


def test_an_exception_from_send_keeps_the_finished_rows(tmp_path):
    async def send(client, job):
        if job.key == "boom":
            await asyncio.sleep(0.05)  # after the others have been logged
            raise RuntimeError("a bug in the step")
        return {"error": None}

    jobs = [Job(k, [k]) for k in ("a", "boom", "b")]
    with pytest.raises(RuntimeError, match="a bug"):
        run_jobs(Endpoint.parse("m", "http://127.0.0.1:9"), jobs, send, tmp_path / "log.jsonl", None)
    assert sorted(json.loads(x)["id"] for x in (tmp_path / "log.jsonl").read_text().splitlines()) == ["a", "b"]


ENDPOINT = Endpoint.parse("m", "http://h:8000")


@pytest.mark.parametrize("n_failed, total, limit, fails", [
    (1, 20, 0.05, False), (2, 20, 0.05, True), (0, 5, 0.0, False), (1, 5, 0.0, True), (5, 5, 1.0, False),
])
def test_check_failed_ends_the_step_only_above_the_limit(tmp_path, n_failed, total, limit, fails):
    failed = [{"id": f"r{i}", "error": "HTTP 500"} for i in range(n_failed)]
    if fails:
        with pytest.raises(SystemExit):
            check_failed("query", failed, total, limit, ENDPOINT, tmp_path)
    else:
        check_failed("query", failed, total, limit, ENDPOINT, tmp_path)


def test_check_failed_message_says_what_failed_where_and_the_fix(tmp_path):
    failed = [{"id": "r3", "error": "HTTP 401: bad key sk" "-proj-0123456789abcdef"}, {"id": "r4", "error": "x"}]
    with pytest.raises(SystemExit) as e:
        check_failed("query", failed, 10, 0.05, ENDPOINT, tmp_path / "out")
    assert str(e.value) == (
        "query: 2 of 10 rows failed against http://h:8000/v1 (model m), more than max_failed_fraction=0.05; "
        "first error (row 'r3'): HTTP 401: bad key [REDACTED]. Every output is written, failed rows included "
        f"(counts in {tmp_path / 'out' / 'manifest.json'}, row log {tmp_path / 'out' / 'log.jsonl'}). "
        "Fix: check that the server is up and serves 'm' (GET http://h:8000/v1/models), then re-run the step "
        "(argo retry): only the failed rows are sent again; or raise max_failed_fraction to accept them.")
