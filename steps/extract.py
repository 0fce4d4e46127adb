"""extract: structured records from free-text responses, checked against a study's JSON schema.

Each input row (steps.query output: an `id` and the raw response in `response_field`) is read by an
extractor model over the OpenAI-compatible chat API, which replies with one JSON object. The reply
is validated against the schema (steps.study.schema_model); an invalid reply is sent back with the
errors and asked for again, up to `attempts` times. Every row ends valid (the schema's fields merged
onto the row) or failed with its reason; none is dropped. Finished rows go to a write-ahead log, so
a restarted step only asks for the missing ones (and rows whose endpoint failed). When more than
`max_failed_fraction` of the rows sent failed, the step still writes every output, then exits non-zero.

    python -m steps.extract --input runs/exp/query/study1 --schema runs/exp/prepared/study1 \\
        --out runs/exp/extract/study1 --url http://127.0.0.1:8000 --model smollm2-135m \\
        --csv-name smollm2-135m_study1_structured.csv
    python -m steps.extract --input answers.jsonl --schema schema.json --out x/ \\
        --model openai:gpt-4o-mini mode=structured                      # OPENAI_API_KEY

Modes: `structured` sends the schema as `response_format` (vLLM constrains decoding to it; hosted
OpenAI accepts it too); `prompt` only asks for JSON and parses the first JSON object out of the
reply; `auto` (default) starts structured and switches to prompt for the rest of the run when the
server answers 400 about response_format (recorded as `mode_used` in the manifest).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from steps._io import Progress, begin_output, sha256_file, write_jsonl, write_manifest, write_metrics
from steps.rowloop import Job, Send, check_failed, run_jobs

# what this step adds to every row besides the schema's fields; a schema field or input column of
# the same name would be overwritten, so both are refused up front
META = ("extract_ok", "extract_failure", "extract_error", "extract_attempts", "extract_raw", "extract_mode",
        "extract_model")
# request fields that are not data: left out of the CSV (they are still in extracted.jsonl)
CSV_SKIP = ("messages", "params")
# a 400 that names one of these means "this server cannot do structured outputs", not "bad row"
_REJECTS_FORMAT = re.compile(r"response_format|json_schema|json schema|structured[ _-]?outputs?|guided|grammar",
                             re.IGNORECASE)


# `schema` names pydantic's deprecated BaseModel.schema() too; the flag is still `--schema`, as the file is
# the study's schema.json, and nothing here calls that classmethod
warnings.filterwarnings("ignore", message='Field name "schema" in "ExtractConfig" shadows', category=UserWarning)


class ExtractConfig(BaseModel):
    input: str = Field(description="steps.query output: a folder holding `input_file`, or a JSONL file of rows "
                       "with an `id`")
    input_file: str = Field("answers.jsonl", description="file name inside `input` when it is a folder")
    response_field: str = Field("answer", description="row field holding the raw response to extract from")
    prompt_field: str | None = Field("prompt", description="row field holding the question that was asked; shown "
                                     "to the extractor when a row has it (set empty to never show it)")
    schema: str = Field(description="schema.json as written by steps.study ({instructions, schema}), or the "
                        "folder holding it")
    out: str = Field(description="output folder: extracted.jsonl, the optional CSV, log.jsonl, manifest.json")
    csv_name: str | None = Field(None, description="also write the rows as CSV under this file name in `out` "
                                 "(e.g. smollm2-135m_study1_structured.csv); messages and params are left out")
    model: str | None = Field(None, description="extractor model name as the server knows it, or openai:MODEL "
                              "(empty: `own_model`, the model that wrote the responses)")
    url: str | None = Field(None, description="extractor endpoint base URL, e.g. http://127.0.0.1:8000 "
                            "(not needed for openai:)")
    own_model: str | None = Field(None, description="the model that wrote the responses; extracts them when "
                                  "`model` is empty (a workflow passes both and the user picks by parameter)")
    own_url: str | None = Field(None, description="endpoint of `own_model`")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    mode: Literal["auto", "structured", "prompt"] = Field(
        "auto", description="structured: send the schema as response_format; prompt: ask for JSON and parse it "
        "out of the reply; auto: structured, falling back to prompt if the server rejects response_format")
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature of the extractor")
    max_tokens: int = Field(256, ge=1, description="reply length cap in tokens (one JSON record)")
    seed: int = Field(0, description="sampling seed (per row: seed + row index), sent only when temperature > 0")
    attempts: int = Field(3, ge=1, description="requests per row while the reply is not valid JSON for the schema")
    backoff_s: float = Field(0.5, ge=0.0, description="base delay before a repeated request (doubled each time, "
                             "with full jitter); also the HTTP retry backoff")
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout_s: float = Field(120.0, gt=0.0, description="per-request timeout")
    retries: int = Field(4, ge=0, description="HTTP retries per request (5xx, 429, timeouts) after the first try")
    metrics_dir: str | None = Field(None, description="write summary numbers here, one file each (Argo output "
                                    "parameters)")
    max_failed_fraction: float = Field(0.05, ge=0.0, le=1.0, description="fail the step (after writing every "
                                       "output) when more than this fraction of the rows sent to the extractor "
                                       "failed (rows without a query response are the query step's to count)")


# ----------------------------------------------------------------------------- schema and prompts


def load_schema(path: str | Path) -> tuple[Path, str, dict, type[BaseModel]]:
    """(file, instructions, schema, validator) from a steps.study schema.json, or ValueError naming the file."""
    from steps.study import schema_model

    path = Path(path)
    if path.is_dir():
        path = path / "schema.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"schema file {path} does not exist; point `schema` at the schema.json that "
                                "steps.study wrote (or its folder)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"schema file {path} is not valid JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("instructions"), str) or "schema" not in doc:
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"schema file {path} must hold {{\"instructions\": str, \"schema\": {{...}}}} as steps.study "
                         f"writes it (got {keys})")
    validator = schema_model(doc["schema"], str(path))  # ValueError naming the file and the property
    return path, doc["instructions"], doc["schema"], validator


def system_message(instructions: str, schema: dict) -> str:
    # the schema is in the prompt in every mode: a prompt-mode extractor needs it, and a structured one
    # extracts better when it is told what the fields mean, not only constrained to their shape
    return (f"{instructions.strip()}\n\nReply with one JSON object that follows this JSON Schema: "
            f"{json.dumps(schema, ensure_ascii=False)}")


def user_message(response: str, prompt: str | None) -> str:
    if not prompt:
        return response
    return f"The question that was asked:\n{prompt}\n\nThe response to extract from:\n{response}"


def response_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "record", "schema": schema, "strict": True}}


def parse_json_object(text: str) -> dict:
    """The first JSON object in a reply: bare JSON, a ```json fenced block, or JSON amid prose."""
    s = text.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", s, re.DOTALL | re.IGNORECASE)
    if fenced and "{" in fenced.group(1):
        s = fenced.group(1).strip()
    decoder = json.JSONDecoder()
    first_error = None
    # raw_decode from each `{` finds where the object really ends (braces inside strings included),
    # which a regex for {...} cannot; the first position that decodes to an object wins
    for m in re.finditer(r"\{", s):
        try:
            obj, _ = decoder.raw_decode(s, m.start())
        except json.JSONDecodeError as e:
            first_error = first_error or e
            continue
        if isinstance(obj, dict):
            return obj
    if first_error:
        raise ValueError(f"the reply is not valid JSON ({first_error.msg} at character {first_error.pos})")
    raise ValueError("the reply holds no JSON object (no `{` in it)")


def rejects_response_format(err: Any) -> bool:
    return getattr(err, "status", None) in (400, 422) and bool(_REJECTS_FORMAT.search(getattr(err, "detail", "")))


# ----------------------------------------------------------------------------- the requests


class _Mode:
    """The run's current mode; `auto` turns into `prompt` once, for every row, when the server says no."""

    def __init__(self, mode: str):
        self.auto = mode == "auto"
        self.current = "prompt" if mode == "prompt" else "structured"
        self.fallback: str | None = None


def asked_again(row: dict) -> bool:
    """Whether a logged row is final: rows whose endpoint failed are asked again by the next run; rows
    whose replies stayed invalid are not: with the same extractor and schema a re-run would only
    repeat them."""
    return row.get("failure") != "endpoint"


def extractor(validator: type[BaseModel], schema: dict, cfg: ExtractConfig, mode: _Mode) -> Send:
    """The coroutine that extracts one row (Job.request: [mode, messages, params]): ask, validate,
    send an invalid reply back with its errors, up to `cfg.attempts` requests."""
    from steps.client import EndpointError, message_text
    from steps.study import validate_record

    async def extract(client: Any, job: Job) -> dict:
        _, first, params = job.request
        messages = list(first)
        row: dict[str, Any] = {"ok": False, "record": None, "failure": None, "error": None, "status": None,
                               "raw": None, "mode": None}
        n = 0
        while n < cfg.attempts:
            n += 1
            used = mode.current
            body = {**params, **({"response_format": response_format(schema)} if used == "structured" else {})}
            try:
                res = await client.chat(messages, **body)
            except EndpointError as e:
                if used == "structured" and rejects_response_format(e):
                    if mode.auto:
                        if mode.current == "structured":
                            mode.current, mode.fallback = "prompt", e.detail[:500]
                            print(f"[extract] {e.url} does not accept response_format ({e.detail[:200]}); "
                                  "extracting in prompt mode for the rest of the run", file=sys.stderr, flush=True)
                        n -= 1  # the server refused the request shape; the row has not been tried yet
                        continue
                    row.update(failure="endpoint", status=e.status, mode=used,
                               error=f"{e} (this server does not accept response_format; use mode=auto or prompt)")
                    break
                row.update(failure="endpoint", error=str(e), status=e.status, mode=used)
                break
            text, finish = message_text(res.data)
            row.update(raw=text, mode=used, status=None)
            try:
                record = validate_record(validator, parse_json_object(text))
            except ValueError as e:
                problem = str(e)
                if finish == "length":
                    problem += f" (the reply was cut at max_tokens={cfg.max_tokens}; raise max_tokens)"
                row.update(failure="validation", error=problem)
                if n < cfg.attempts:
                    # show the extractor its own reply and what is wrong with it: a fresh identical
                    # request would, at temperature 0, get the identical reply
                    messages += [{"role": "assistant", "content": text},
                                 {"role": "user", "content": f"That was invalid: {problem}. "
                                                             "Reply with corrected JSON only."}]
                    await asyncio.sleep(random.uniform(0, cfg.backoff_s * 2 ** (n - 1)))
                continue
            row.update(ok=True, record=record, failure=None, error=None)
            break
        row["attempts"] = n
        return row

    return extract


# ----------------------------------------------------------------------------- the step


def run(cfg: ExtractConfig) -> dict:
    from steps.client import Endpoint, redact
    from steps.query import input_rows
    from steps.study import write_csv

    t0 = time.monotonic()
    schema_path, instructions, schema, validator = load_schema(cfg.schema)
    fields = list(schema["properties"])
    src, rows = input_rows(cfg.input, cfg.input_file)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    for name in fields:
        if name in columns:
            raise ValueError(f"schema field {name!r} in {schema_path} has the same name as column {name!r} of {src}; "
                             "the extracted value would overwrite it: rename the schema property")
        if name in META:
            raise ValueError(f"schema field {name!r} in {schema_path} is a name this step adds to every row "
                             f"({', '.join(META)}); rename the schema property")
    clash = [c for c in columns if c in META]
    if clash:
        raise ValueError(f"{src} already has column(s) {clash}, which this step writes; extract from the "
                         "steps.query output, not from an extracted file")
    if cfg.csv_name is not None and (Path(cfg.csv_name).name != cfg.csv_name or not cfg.csv_name):
        raise ValueError(f"csv_name {cfg.csv_name!r} must be a plain file name (it is written inside `out`)")

    system = system_message(instructions, schema)
    jobs: list[Job] = []
    no_response: dict[str, dict] = {}
    for i, row in enumerate(rows):
        key = str(row["id"])
        if cfg.response_field not in row:
            raise ValueError(f"{src}: row {row['id']!r} has no field {cfg.response_field!r}; fields are "
                             f"{sorted(row)}; set response_field to the one holding the response")
        response = row[cfg.response_field]
        if response is None or not str(response).strip():
            # the query already failed for this row: there is nothing to read, and asking an
            # extractor about an empty text would only invent a record
            why = f"query error: {row['error']}" if row.get("error") else "the response is empty"
            no_response[key] = {"ok": False, "record": None, "failure": "no-response", "attempts": 0,
                                "error": redact(f"no response to extract ({why})"), "raw": None, "mode": None}
            continue
        prompt = row.get(cfg.prompt_field) if cfg.prompt_field else None
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": user_message(str(response), None if prompt is None else str(prompt))}]
        params: dict[str, Any] = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
        if cfg.temperature > 0:  # a seed only matters when sampling; seeded requests are sampled one by one
            params["seed"] = cfg.seed + i
        jobs.append(Job(key, [cfg.mode, messages, params]))

    endpoint = Endpoint.parse(cfg.model, cfg.url, cfg.api_key_env) if cfg.model else \
        Endpoint.parse(cfg.own_model or "", cfg.own_url, None)
    endpoint.headers()  # a missing API key fails here, before the output folder exists
    out = begin_output(cfg.out)
    progress = Progress(len(rows), f"extract {endpoint.model}")
    progress.advance(len(no_response))
    mode = _Mode(cfg.mode)
    # in auto mode one row goes first: if the server refuses response_format, the rest are sent in
    # prompt mode at once instead of a whole burst of requests coming back 400
    results = run_jobs(endpoint, jobs, extractor(validator, schema, cfg, mode), out / "log.jsonl", progress,
                       done=asked_again, first_alone=mode.auto,
                       concurrency=cfg.concurrency, timeout_s=cfg.timeout_s, max_retries=cfg.retries,
                       backoff_base_s=cfg.backoff_s)
    results.update(no_response)

    merged = []
    for row in rows:
        r = results[str(row["id"])]
        record = r.get("record") or {}
        merged.append({**row, **{f: record.get(f) for f in fields},
                       "extract_ok": r["ok"], "extract_failure": r["failure"], "extract_error": r["error"],
                       "extract_attempts": r["attempts"], "extract_raw": r["raw"], "extract_mode": r["mode"],
                       "extract_model": endpoint.model})
    failed = [r for r in merged if not r["extract_ok"]]
    by_reason = Counter(r["extract_failure"] for r in failed)
    sent = [r for r in merged if r["extract_failure"] != "no-response"]
    modes = Counter(r["extract_mode"] for r in sent if r["extract_mode"])
    mode_used = (next(iter(modes)) if len(modes) == 1 else "mixed") if modes else None
    counts = {"rows": len(merged), "valid": len(merged) - len(failed), "failed": len(failed),
              "failed_by_reason": {k: by_reason.get(k, 0) for k in ("validation", "endpoint", "no-response")},
              "attempts": {str(k): v for k, v in sorted(Counter(r["extract_attempts"] for r in merged).items())}}
    write_metrics(cfg.metrics_dir, {"rows": counts["valid"], "failed": counts["failed"]})
    write_jsonl(out / "extracted.jsonl", merged)
    if cfg.csv_name:
        kept = [c for c in columns if c not in CSV_SKIP]
        write_csv(out / cfg.csv_name, merged, kept + fields + ["extract_ok", "extract_error"])
    write_manifest(out, "extract", cfg, counts=counts, timings={"wall": time.monotonic() - t0},
                   packages=["httpx", "pydantic"],
                   extra={"endpoint": endpoint.base_url, "extractor_model": endpoint.model, "mode_used": mode_used,
                          "rows_by_mode": dict(modes), "mode_fallback": mode.fallback,
                          "schema_file": str(schema_path), "schema_sha256": sha256_file(schema_path)})
    check_extracted(sent, counts["failed_by_reason"], cfg.max_failed_fraction, endpoint, out)
    return {**counts, "mode_used": mode_used}


def check_extracted(sent: list[dict], by_reason: dict[str, int], max_fraction: float, endpoint: Any,
                    out: Path) -> None:
    """check_failed over the rows this step sent: a row without a response is the query step's failure,
    counted and limited there, so it does not count here a second time."""
    fixes = []
    if by_reason["endpoint"]:
        fixes.append(f"the endpoint failed for {by_reason['endpoint']} row(s): check that the server is up and "
                     f"serves {endpoint.model!r} (GET {endpoint.base_url}/models), then re-run the step (argo retry): "
                     "only those rows are sent again")
    if by_reason["validation"]:
        fixes.append(f"the replies stayed invalid for {by_reason['validation']} row(s), which is final for the same "
                     "request: improve the schema's instructions or use a stronger extractor")
    fixes.append("or raise max_failed_fraction to accept them")
    if by_reason["no-response"]:
        fixes.append(f"({by_reason['no-response']} row(s) without a query response are not counted here)")
    bad = [{"id": r["id"], "error": r["extract_error"]} for r in sent if not r["extract_ok"]]
    check_failed("extract", bad, len(sent), max_fraction, endpoint, out, what="rows sent to the extractor",
                 fix="; ".join(fixes))


if __name__ == "__main__":
    from steps._cli import main

    main(ExtractConfig, run, __doc__)
