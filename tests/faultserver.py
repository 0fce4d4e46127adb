"""A real OpenAI-compatible HTTP server on 127.0.0.1 that injects faults, so the model-call layer
(steps/client.py, steps/query.py) is tested over real sockets without any model.

The answer to a prompt is deterministic: `answer_for(prompt)` (the prompt reversed), unless a test
scripts the reply text (used by steps that parse what a model says, e.g. steps.extract):

    srv.replies["the cat"] = deque(['{"a": 1', '{"a": 1}'])  # requests whose text contains "the cat"
                                           # get these contents in turn, then the default answer
    srv.responder = lambda body: "..."     # content for any other request, computed from its body
    srv.reject_response_format = True      # a request with `response_format` gets vLLM's 400

A completions request with `echo` and `logprobs` (steps.probabilities' scoring request) gets, per
prompt in its `prompt` list, the prompt's tokens (words with their leading space, spaces,
punctuation) and their log-probs: None for the first token, then -len(token)/10; nothing is
generated when `max_tokens` is 0.

A reply script matches on the request's whole text (every message's content, or the prompt), so it
keeps matching a conversation that grows (a retry that appends the previous reply and an error).
Faults are scripted three ways, checked in this order for every completion request:

    srv.fail("question 3", "500", "429")   # this prompt's next calls get these faults, then succeed
    srv.always["question 4"] = "500"       # this prompt fails every time until the entry is removed
    srv.always_containing["FAIL"] = "400"  # every request whose text (request_text) contains it fails
    srv.always_fail = "500"                # every completion request fails
    srv.fail_next("503", "503")            # the next calls, whatever their prompt

Fault kinds (FAULTS): HTTP 500 / 503 / 400, 429 with `Retry-After: 1`, "sleep" (answer after
`sleep_s`, longer than a client timeout), "malformed" (`{"choices": [`), "truncated" (the body stops
half-way and the connection closes) and "nochoices" (200 without choices). `delay_s` slows every
request down. Every request is recorded (`requests`, `counts` per prompt, `max_in_flight`). `error_message` replaces
the message of the injected HTTP errors, e.g. with one that echoes credentials back.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest

FAULTS = ("500", "503", "400", "429", "sleep", "malformed", "truncated", "nochoices")

# vLLM's answer to a request whose structured-output constraint it cannot serve (its own wording)
RESPONSE_FORMAT_REJECTED = ("Structured outputs are not yet supported for this model. Remove the structured "
                            "output constraint (e.g. `response_format`, `structured_outputs`) from the request.")


def answer_for(prompt: str) -> str:
    return prompt[::-1]


def request_text(body: dict) -> str:
    """Everything a request says, for matching reply scripts: message contents, or the prompt."""
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body.get("messages") or [])
    return str(body.get("prompt", ""))


def echo_tokens(text: str) -> list[str]:
    return re.findall(r" ?\w+|\s+|[^\w\s]", text)


def echo_choices(body: dict) -> list[dict]:
    """A scoring reply: every prompt echoed with a log-prob per token (none for the first one), and
    one generated token after it when `max_tokens` asks for one."""
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    choices = []
    for i, p in enumerate(prompts):
        tokens = echo_tokens(str(p))
        lps: list[float | None] = [None] + [-len(t) / 10 for t in tokens[1:]]
        if body.get("max_tokens"):
            tokens, lps = tokens + [" gen"], lps + [-1.0]
        choices.append({"index": i, "text": "".join(tokens), "finish_reason": "length",
                        "logprobs": {"tokens": tokens, "token_logprobs": lps}})
    return choices


@dataclass
class Request:
    path: str
    prompt: str | None
    model: str | None
    headers: dict[str, str]
    body: Any
    fault: str | None = None


class FaultServer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._wake = threading.Event()
        self.reset()

    # ---- test-facing controls -------------------------------------------------------------
    def reset(self) -> None:
        """Forget scripts, records and loaded adapters; release requests still sleeping."""
        with self._lock:
            self._wake.set()  # a "sleep" left over from the previous test answers now
            self._wake = threading.Event()
            self._generation += 1
            self.scripts: dict[str, deque[str]] = defaultdict(deque)
            self.next_faults: deque[str] = deque()
            self.always: dict[str, str] = {}
            self.always_containing: dict[str, str] = {}
            self.error_message: str | None = None
            self.always_fail: str | None = None
            self.delay_s = 0.0
            self.sleep_s = 2.0
            self.requests: list[Request] = []
            self.counts: Counter[str] = Counter()
            self.in_flight = 0
            self.max_in_flight = 0
            self.adapters: dict[str, str] = {}
            self.replies: dict[str, deque[str]] = defaultdict(deque)
            self.responder: Callable[[dict], str] | None = None
            self.reject_response_format = False

    def fail(self, prompt: str, *faults: str) -> None:
        assert all(f in FAULTS for f in faults), faults
        with self._lock:
            self.scripts[prompt].extend(faults)

    def fail_next(self, *faults: str) -> None:
        assert all(f in FAULTS for f in faults), faults
        with self._lock:
            self.next_faults.extend(faults)

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def completions(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith("completions")]

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "FaultServer":
        handler = type("Handler", (_Handler,), {"fault_server": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="faultserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._wake.set()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- request handling (called from handler threads) --------------------------------------
    def _enter(self, req: Request) -> tuple[int, threading.Event]:
        with self._lock:
            self.requests.append(req)
            if req.prompt is not None:
                self.counts[req.prompt] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self._generation, self._wake

    def _leave(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:  # not a straggler from a test already reset
                self.in_flight -= 1

    def _reply_text(self, prompt: str, body: dict, consume: bool = True) -> str:
        with self._lock:
            text = request_text(body)
            for key, queue in self.replies.items():
                if queue and key in text:
                    # a reply the client never receives whole (truncated) is not used up
                    return queue.popleft() if consume else queue[0]
            responder = self.responder
        return responder(body) if responder else answer_for(prompt)

    def _pick_fault(self, prompt: str, text: str = "") -> str | None:
        with self._lock:
            if self.scripts.get(prompt):
                return self.scripts[prompt].popleft()
            if prompt in self.always:
                return self.always[prompt]
            for part, fault in self.always_containing.items():
                if part in text:
                    return fault
            if self.always_fail:
                return self.always_fail
            if self.next_faults:
                return self.next_faults.popleft()
            return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like vLLM and hosted APIs
    fault_server: FaultServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(self, status: int, body: bytes | dict, headers: dict[str, str] | None = None,
              cut: int | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if cut is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data if cut is None else data[:cut])
        self.wfile.flush()

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        srv = self.fault_server
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._send(400, {"error": {"message": "request body is not JSON"}})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = self.path.rstrip("/")
        if path == "/v1/load_lora_adapter":
            self._load_adapter(body, headers)
            return
        if path == "/v1/chat/completions":
            users = [m.get("content") for m in body.get("messages", []) if m.get("role") == "user"]
            prompt = str(users[-1]) if users else ""
        elif path == "/v1/completions":
            prompt = str(body.get("prompt", ""))
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        req = Request(path, prompt, body.get("model"), headers, body)
        generation, wake = srv._enter(req)
        try:
            if srv.delay_s:
                wake.wait(srv.delay_s)
            if srv.reject_response_format and "response_format" in body:
                req.fault = fault = "response_format"  # refused up front, as vLLM validates requests
            else:
                req.fault = fault = srv._pick_fault(prompt, request_text(body))
            if fault == "sleep":
                wake.wait(srv.sleep_s)
        finally:
            srv._leave(generation)  # before answering: the client may send its next request at once
        try:
            self._answer(path, prompt, body, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) and closed the socket

    def _answer(self, path: str, prompt: str, body: dict, fault: str | None) -> None:
        if fault == "response_format":
            self._send(400, {"error": {"message": RESPONSE_FORMAT_REJECTED, "type": "BadRequestError",
                                       "param": "response_format", "code": 400}})
            return
        message = self.fault_server.error_message
        if fault in ("500", "503", "400"):
            self._send(int(fault), {"error": {"message": message or f"injected fault {fault}", "code": int(fault)}})
            return
        if fault == "429":
            self._send(429, {"error": {"message": message or "rate limited"}}, headers={"Retry-After": "1"})
            return
        if fault == "malformed":
            self._send(200, b'{"choices": [')
            return
        if fault == "nochoices":
            self._send(200, {"id": "cmpl-x", "object": "chat.completion", "model": body.get("model")})
            return
        if path == "/v1/completions" and body.get("echo") and body.get("logprobs") is not None:
            choices = echo_choices(body)
            text = "".join(c["text"] for c in choices)
            kind = "text_completion"
        else:
            text = self.fault_server._reply_text(prompt, body, consume=fault != "truncated")
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
            if path == "/v1/chat/completions":
                choice["message"] = {"role": "assistant", "content": text}
                kind = "chat.completion"
            else:
                choice["text"] = text
                kind = "text_completion"
            choices = [choice]
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        doc = {"id": f"cmpl-{time.monotonic_ns()}", "object": kind, "created": int(time.time()),
               "model": body.get("model"), "choices": choices, "usage": usage}
        if fault == "truncated":
            data = json.dumps(doc).encode()
            self._send(200, data, cut=len(data) // 2)
            return
        self._send(200, doc)

    def _load_adapter(self, body: dict, headers: dict[str, str]) -> None:
        srv = self.fault_server
        name, path = body.get("lora_name"), body.get("lora_path")
        generation, _ = srv._enter(Request("/v1/load_lora_adapter", None, None, headers, body))
        srv._leave(generation)
        # the messages are vLLM's own, which the client matches on
        if not name or not path:
            self._send(400, {"error": {"message": "lora_name and lora_path are required"}})
        elif name in srv.adapters:
            self._send(400, {"error": {"message": f"The lora adapter '{name}' has already been loaded."}})
        elif not (Path(path) / "adapter_config.json").exists():
            self._send(400, {"error": {"message": f"No adapter found for {path}"}})
        else:
            with srv._lock:
                srv.adapters[name] = path
            self._send(200, b"Success: LoRA adapter added successfully.")


@pytest.fixture(scope="module")
def fault_server_module():
    with FaultServer() as srv:
        yield srv


@pytest.fixture
def server(fault_server_module: FaultServer) -> FaultServer:
    """The module's fault server, with no faults scripted and empty records."""
    fault_server_module.reset()
    return fault_server_module
