"""The resumable request loop every model-calling step shares (steps.query, steps.extract,
steps.probabilities, and steps.generate through steps.query).

A step turns its rows into `Job`s and gives one coroutine, `send(client, job) -> fields`, that makes
the row's request(s) and returns what to log for it (with an `error` when it failed). The loop

- fingerprints every request together with the model, so a row logged by an earlier run is reused
  only for the very same request: a re-run into the same folder with another model, prompt or
  setting asks again instead of returning stale results;
- skips the rows the log already holds as done for that fingerprint (`done`, by default: no error),
  so a restarted step, or `argo retry`, sends only what is missing or failed;
- sends the rest at once and lets the client bound how many are in flight;
- appends each result to the write-ahead log the moment it is back (a kill loses only the rows in
  flight), with credentials redacted from its error text; and advances the step's progress.

`run_jobs` is one such pass for a step: the log and the client are opened and the log is closed
whatever happens. `check_failed` is the step's last act: after every output and the manifest are
written, it ends the step non-zero when more rows failed than the step accepts.

    jobs = [Job(str(row["id"]), [messages, params]) for ...]
    progress = Progress(len(jobs), "query m")  # $ARGO_PROGRESS_FILE and stderr
    results = run_jobs(endpoint, jobs, ask, out / "log.jsonl", progress, concurrency=16)
    ... write the outputs and the manifest ...
    check_failed("query", failed, len(rows), cfg.max_failed_fraction, endpoint, out)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from steps._io import JsonlLog, Progress


@dataclass
class Job:
    key: str  # the row's id, its key in the log
    request: list  # what makes two requests the same (the model aside): messages and params, ...
    payload: Any = None  # anything else `send` needs, e.g. the step's own item


Send = Callable[[Any, Job], Awaitable[dict]]


def fingerprint(model: str | None, job: Job) -> str:
    doc = json.dumps([model, *job.request], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def answered(row: dict) -> bool:
    return row.get("error") is None


async def send_all(client: Any, jobs: list[Job], log: JsonlLog, send: Send, *,
                   done: Callable[[dict], bool] = answered, progress: Progress | None = None,
                   first_alone: bool = False) -> dict[str, dict]:
    """Send the jobs the log does not hold as done; log each result; return every job's logged row.

    `first_alone` sends one job before the others: a step that may learn from the first answer how
    to ask the rest (steps.extract's response_format probe) does not get a burst of refusals."""
    from steps.client import redact

    model = getattr(getattr(client, "endpoint", None), "model", None)
    prints = {job.key: fingerprint(model, job) for job in jobs}

    async def one(job: Job) -> None:
        t0 = time.monotonic()
        row = {"id": job.key, "request": prints[job.key], **await send(client, job)}
        row["latency_s"] = round(time.monotonic() - t0, 3)
        if isinstance(row.get("error"), str):
            row["error"] = redact(row["error"])
        log.append(row)
        if progress:
            progress.advance()

    todo = [job for job in jobs if not (job.key in log and log.rows[job.key].get("request") == prints[job.key]
                                        and done(log.rows[job.key]))]
    if progress:
        progress.advance(len(jobs) - len(todo))
    if todo and first_alone:
        await one(todo[0])
        todo = todo[1:]
    await asyncio.gather(*(one(job) for job in todo))
    return {job.key: log.rows[job.key] for job in jobs}


def run_jobs(endpoint: Any, jobs: list[Job], send: Send, log_path: str | Path, progress: Progress | None, *,
             done: Callable[[dict], bool] = answered, first_alone: bool = False,
             **client_options: Any) -> dict[str, dict]:
    """One pass of `send_all` for a step: open the row log at `log_path` and a `Client` on `endpoint`
    (`client_options`: concurrency, timeout_s, max_retries, ...), and close the log in any case.
    No jobs: no client and no request."""
    from steps.client import Client

    log = JsonlLog(log_path)
    try:
        if not jobs:
            return {}

        async def go() -> dict[str, dict]:
            async with Client(endpoint, **client_options) as client:
                return await send_all(client, jobs, log, send, done=done, progress=progress,
                                      first_alone=first_alone)

        return asyncio.run(go())
    finally:
        log.close()


def check_failed(step: str, failed: list[dict], total: int, max_fraction: float, endpoint: Any,
                 out: str | Path, *, what: str = "rows", fix: str | None = None) -> None:
    """End the step (SystemExit: a non-zero exit, the message on stderr, no traceback) when more
    than `max_fraction` of its `total` rows failed; `failed` are the failed rows with `id` and `error`.

    Call it last, once the outputs and the manifest are written: the folder then holds everything a
    successful run writes, failed rows marked, and a re-run (`argo retry`) sends only those rows.
    `fix` replaces the default advice (check the server, or raise max_failed_fraction)."""
    from steps.client import redact

    if not failed or len(failed) / max(total, 1) <= max_fraction:
        return
    first = failed[0]
    where = f" (row {first['id']!r})" if "id" in first else ""
    out = Path(out)
    fix = fix or (f"check that the server is up and serves {endpoint.model!r} (GET {endpoint.base_url}/models), "
                  "then re-run the step (argo retry): only the failed rows are sent again; or raise "
                  "max_failed_fraction to accept them")
    raise SystemExit(
        f"{step}: {len(failed)} of {total} {what} failed against {endpoint.base_url} (model {endpoint.model}), "
        f"more than max_failed_fraction={max_fraction:g}; first error{where}: {redact(str(first.get('error')))}. "
        f"Every output is written, failed rows included (counts in {out / 'manifest.json'}, row log "
        f"{out / 'log.jsonl'}). Fix: {fix}.")
