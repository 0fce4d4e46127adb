"""query: answers for a list of prompts from any OpenAI-compatible endpoint.

Each input row (JSONL, with an `id`) becomes one chat request built from `prompt_field` (or the
row's own `messages`). Requests run concurrently (bounded), with timeouts and retries; every
finished row is appended to a write-ahead log, so a restarted step only sends the missing rows.
The output folder is complete only when its manifest.json exists. A row that failed after retries
is written with its error; when more than `max_failed_fraction` of the rows failed, the step still
writes every output, then exits non-zero (a re-run sends only the failed rows).

    python -m steps.query --input heldout.jsonl --out answers/ --url http://127.0.0.1:8000 \\
        --model smollm2-135m --prompt-field question
    python -m steps.query --input q.jsonl --out a/ --model openai:gpt-4o-mini   # OPENAI_API_KEY
    # a fine-tuned adapter, added to the running server first:
    python -m steps.query ... --lora-name student-ft --lora-path runs/x/adapter
    # retrieval-augmented: the top-k chunks of a steps.index folder go into each prompt
    python -m steps.query ... --rag runs/index --top-k 4

With `rag`, each row's question (`prompt_field`) is searched in the index (steps.index.search: the
fusion of MiniLM cosine and BM25 by default), and the best `top_k` chunks, each headed by its
title, are put before the question in one user message under RAG_SYSTEM. Every answer row records
what the model was shown: `context_ids` (chunk ids, `doc_id#k`), `context_doc_ids` and `contexts`
(the chunk texts, in rank order), so the evaluation and a judge see the same passages.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from steps._io import JsonlLog, Progress, begin_output, read_jsonl, write_csv, write_jsonl, write_manifest, write_metrics
from steps.rowloop import Job, check_failed, run_jobs, send_all


class QueryConfig(BaseModel):
    input: str = Field(description="JSONL file of rows with an `id` (or a folder holding `input_file`)")
    input_file: str = Field("heldout.jsonl", description="file name inside `input` when it is a folder")
    out: str = Field(description="output folder: answers.jsonl + manifest.json")
    model: str = Field(description="model name as the server knows it, or openai:MODEL")
    url: str | None = Field(None, description="endpoint base URL, e.g. http://127.0.0.1:8000 (not needed for openai:)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    prompt_field: str = Field("question", description="row field used as the user message")
    system_prompt: str | None = Field(None, description="system message for every row")
    lora_name: str | None = Field(None, description="query this LoRA adapter (loaded into the server first)")
    lora_path: str | None = Field(None, description="adapter folder to load as `lora_name`")
    lora_stage_dir: str | None = Field(None, description="copy the adapter here first (a folder the server also "
                                       "mounts, e.g. the shared models volume on a cluster)")
    temperature: float = Field(0.0, description="sampling temperature")
    max_tokens: int = Field(128, ge=1, description="answer length cap in tokens")
    seed: int = Field(0, description="sampling seed (per row: seed + row index)")
    concurrency: int = Field(16, ge=1, description="requests in flight at once")
    timeout_s: float = Field(120.0, description="per-request timeout")
    retries: int = Field(4, description="retries per request after the first attempt")
    metrics_dir: str | None = Field(None, description="write summary numbers here, one file each (Argo output parameters)")
    max_failed_fraction: float = Field(0.05, ge=0.0, le=1.0, description="fail the step (after writing every "
                                       "output) when more than this fraction of the rows failed")
    csv_name: str | None = Field(None, description="also write the rows as this CSV in `out` (every input column, "
                                 "then response, model, finish_reason, token counts, latency_s, attempts, error)")
    rag: str | None = Field(None, description="a steps.index folder: put the top_k retrieved chunks in each prompt "
                            "and record their ids (empty: no retrieval)")
    top_k: int = Field(4, ge=1, le=50, description="chunks retrieved per question with rag")
    rag_method: Literal["hybrid", "dense", "bm25"] = Field("hybrid", description="retriever with rag: hybrid "
                                                         "(rank fusion of dense and BM25), dense or bm25")


def build_messages(row: dict, prompt_field: str, system_prompt: str | None, where: str) -> list[dict]:
    if "messages" in row and prompt_field not in row:
        return row["messages"]
    if prompt_field not in row:
        raise ValueError(f"{where}: row {row.get('id')!r} has no field {prompt_field!r}; "
                         f"fields are {sorted(row)}; set prompt_field to one of them")
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": str(row[prompt_field])}]


RAG_SYSTEM = ("You are a Kubernetes expert. Answer the question from the numbered passages of the "
              "Kubernetes documentation given, in one to three sentences. If they do not answer it, say so.")


def rag_messages(question: str, chunks: list[dict], system_prompt: str | None = None) -> list[dict]:
    """The prompt of a retrieval-augmented answer: the passages, numbered and titled, then the question."""
    passages = "\n\n".join(f"[{i}] {c.get('heading') or c['title']}\n{c['text']}" for i, c in enumerate(chunks, 1))
    return [{"role": "system", "content": system_prompt or RAG_SYSTEM},
            {"role": "user", "content": f"Documentation:\n{passages}\n\nQuestion: {question}"}]


def retrieve(index_dir: str, questions: list[str], top_k: int, method: str) -> list[list[dict]]:
    from steps.index import load_index

    return load_index(index_dir).search_many(questions, top_k, method)


def chat_job(key: str, messages: list[dict], params: dict) -> Job:
    return Job(key, [messages, params])


async def ask(client: Any, job: Job) -> dict:
    """One chat request; the row's answer and usage, or its error (logged, counted and asked again by
    the next run, which skips only the rows that have an answer)."""
    from steps.client import EndpointError, message_text

    messages, params = job.request
    try:
        res = await client.chat(messages, **params)
    except EndpointError as e:
        return {"answer": None, "error": str(e), "status": e.status, "attempts": e.attempts}
    text, finish = message_text(res.data)
    usage = res.data.get("usage") or {}
    return {"answer": text, "finish_reason": finish, "attempts": res.attempts,
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
            "error": None}


async def answer_all(client: Any, items: list[tuple[str, list[dict], dict]], log: JsonlLog,
                     progress: Progress | None = None) -> dict[str, dict]:
    """Answer (key, messages, params) items not yet answered in `log` over an open client (steps.generate
    asks in several rounds on one client and one log)."""
    return await send_all(client, [chat_job(*it) for it in items], log, ask, progress=progress)


def input_rows(input: str, input_file: str) -> tuple[Path, list[dict]]:
    """A step's `--input`: a JSONL file, or a folder holding `input_file`; its path and checked rows."""
    src = Path(input)
    if src.is_dir():
        src = src / input_file
    return src, load_rows(src)


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"input {path} has no rows")
    seen: set[str] = set()
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: row {i} is not a JSON object (got {type(r).__name__}); "
                             "each line must be an object with an `id`")
        if "id" not in r:
            raise ValueError(f"{path}: row {i} has no `id` field")
        if str(r["id"]) in seen:
            raise ValueError(f"{path}: row {i} repeats id {r['id']!r}; ids must be unique")
        seen.add(str(r["id"]))
    return rows


_META = ("model", "finish_reason", "prompt_tokens", "completion_tokens", "latency_s", "attempts", "status", "error")


def csv_row(row: dict) -> dict:
    """A result row as a CSV row: the input columns (not the request plumbing), then the response
    and its metadata, in a fixed order."""
    head = {k: v for k, v in row.items() if k not in ("messages", "params", "answer", *_META)}
    return {**head, "response": row.get("answer"), **{k: row.get(k) for k in _META}}


def rag_info(cfg: QueryConfig) -> dict | None:
    if not cfg.rag:
        return None
    import json

    config = json.loads((Path(cfg.rag) / "config.json").read_text(encoding="utf-8"))
    return {"index": str(cfg.rag), "top_k": cfg.top_k, "method": cfg.rag_method,
            "index_model": config.get("model"), "chunk_words": config.get("chunk_words")}


def run(cfg: QueryConfig) -> dict:
    from steps.client import Endpoint, load_lora_adapter

    t0 = time.monotonic()
    src, rows = input_rows(cfg.input, cfg.input_file)
    contexts: dict[str, list[dict]] = {}
    if cfg.rag:
        for row in rows:
            build_messages(row, cfg.prompt_field, None, str(src))  # the field check, before any retrieval
            if "messages" in row and cfg.prompt_field not in row:
                raise ValueError(f"{src}: row {row['id']!r} has `messages` but no {cfg.prompt_field!r}: rag "
                                 "needs the question as text; set prompt_field to the field that holds it")
        found = retrieve(cfg.rag, [str(r[cfg.prompt_field]) for r in rows], cfg.top_k, cfg.rag_method)
        contexts = {str(r["id"]): hits for r, hits in zip(rows, found)}
    jobs = []
    for i, row in enumerate(rows):
        if cfg.rag:
            msgs = rag_messages(str(row[cfg.prompt_field]), contexts[str(row["id"])], cfg.system_prompt)
        else:
            msgs = build_messages(row, cfg.prompt_field, cfg.system_prompt, str(src))
        params: dict[str, Any] = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
        if cfg.temperature > 0:  # a seed only matters when sampling; seeded requests are sampled one by one
            params["seed"] = cfg.seed + i
        if "params" in row:  # per-row sampling (steps.study writes it): the row's settings win
            if not isinstance(row["params"], dict):
                raise ValueError(f"{src}: row {row['id']!r}: field 'params' must be a mapping of request settings")
            params = {k: v for k, v in row["params"].items() if v is not None}
        jobs.append(chat_job(str(row["id"]), msgs, params))
    endpoint = Endpoint.parse(cfg.model, cfg.url, cfg.api_key_env)
    if cfg.lora_path:
        if not cfg.lora_name:
            raise ValueError("lora_path needs lora_name (the name requests will use)")
        adapter = Path(cfg.lora_path)
        if not (adapter / "adapter_config.json").exists():
            raise FileNotFoundError(f"lora_path {adapter} is not a PEFT adapter folder (no adapter_config.json)")
        if cfg.lora_stage_dir:
            import shutil

            from steps._io import atomic_path

            staged = Path(cfg.lora_stage_dir) / cfg.lora_name
            with atomic_path(staged, is_dir=True) as tmp:
                shutil.copytree(adapter, tmp, dirs_exist_ok=True)
            adapter = staged
        load_lora_adapter(endpoint.base_url, cfg.lora_name, str(adapter.resolve()))
    if cfg.lora_name:
        endpoint.model = cfg.lora_name
    out = begin_output(cfg.out)
    results = run_jobs(endpoint, jobs, ask, out / "log.jsonl", Progress(len(jobs), f"query {endpoint.model}"),
                       concurrency=cfg.concurrency, timeout_s=cfg.timeout_s, max_retries=cfg.retries)
    merged = []
    for row in rows:
        r = results[str(row["id"])]
        hits = contexts.get(str(row["id"]))
        rag = {} if hits is None else {"context_ids": [h["id"] for h in hits],
                                       "context_doc_ids": [h["doc_id"] for h in hits],
                                       "contexts": [h["text"] for h in hits]}
        merged.append({**row, "model": endpoint.model, **rag,
                       **{k: v for k, v in r.items() if k not in ("id", "request")}})
    failed = [r for r in merged if r.get("error")]
    wall = time.monotonic() - t0
    tokens = sum(r.get("completion_tokens") or 0 for r in merged)
    counts = {"rows": len(merged), "answered": len(merged) - len(failed), "failed": len(failed),
              "completion_tokens": tokens}
    write_metrics(cfg.metrics_dir, {"rows": counts["answered"], "failed": counts["failed"]})
    write_jsonl(out / "answers.jsonl", merged)
    if cfg.csv_name:
        write_csv(out / cfg.csv_name, [csv_row(r) for r in merged])
    write_manifest(out, "query", cfg, counts=counts, timings={"wall": wall},
                   packages=["httpx"], extra={"endpoint": endpoint.base_url, "served_model": endpoint.model,
                                               "tokens_per_s": tokens / wall if wall else None,
                                               "rag": rag_info(cfg)})
    check_failed("query", failed, len(merged), cfg.max_failed_fraction, endpoint, out)
    return counts


if __name__ == "__main__":
    from steps._cli import main

    main(QueryConfig, run, __doc__)
