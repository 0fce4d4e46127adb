"""nli_service: an HTTP service that labels premise/hypothesis pairs (FastAPI + uvicorn).

The scoring is `steps.nli_model`: the three label words scored as continuations of
"premise: ... hypothesis: ...", softmax over their summed log-probs. The model is a bundled name,
a model folder, a LoRA adapter folder or a hub ID; it loads in the background after the server
starts, so the process answers its probes at once and turns ready when the model is in memory.

    python -m steps.nli_service --model smollm2-135m --port 8080          # zero-shot, bundled
    python -m steps.nli_service --model out/nli/finetune/adapter --host 0.0.0.0 --port 8080
    curl -s localhost:8080/predict -H 'content-type: application/json' \\
        -d '{"premise": "A man is sleeping.", "hypothesis": "A man is awake."}'

Endpoints (OpenAPI docs at /docs):
    GET  /livez          200 whenever the process serves (the k8s liveness probe)
    GET  /readyz         503 until the model is loaded, then 200 (the k8s readiness probe)
    GET  /health         {"status": "ok"|"loading"|"error", "model_loaded", "device"}; 503 unless ok
    GET  /model/info     name, base model, kind, labels, training data, and the evaluation report
                         (`metrics`) when the model folder holds nli_report.json or report.json
    POST /predict        {"premise", "hypothesis"} -> {"label", "confidence", "scores": {label: p}}
    POST /predict/batch  {"pairs": [{"premise", "hypothesis"}, ...]} -> {"predictions": [...]}
    GET  /metrics        Prometheus: requests by endpoint and status, request latency, pairs per
                         forward pass, forward-pass time, queued pairs, predicted labels, model loaded

Micro-batching: every pair, from /predict or /predict/batch, joins one queue; one worker takes up
to `max_batch_size` pairs, waiting at most `max_wait_ms` after the first for more, and scores them
in forward passes on a worker thread, so the event loop keeps accepting while the model runs. The
pairs of a batch are sorted by length and cut into passes whose longest pair is at most
`max_length_ratio` times the shortest: a pass pads every pair to its longest, and on a 2-core CPU
padding costs more than batching saves (docs/benchmarks.md: one mixed-length pass of 16 pairs
took 0.59x the throughput of 16 single passes, 16 equal-length pairs 1.28x). `max_batch_size=1`
turns batching off (one forward pass per pair). A pass that fails on its input is re-run pair by
pair, so one request's bad pair fails that request only.

Bad input never reaches the model and never gets a 500: 422 names the field (missing, empty or
whitespace-only, over `max_text_chars`, wrong type, unknown field, empty list or over
`max_batch_items` pairs, invalid JSON); 413 for a body over `max_body_bytes`, by its
Content-Length or, for a streamed body, by the bytes read so far. A model that fails to load
makes the process exit with the reason (exit code 2), so a pod shows it in its restarts.
"""

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from steps import nli_model

log = logging.getLogger("uvicorn.error")  # uvicorn's own logger: one format, one level flag

ROUTES = ("/health", "/livez", "/readyz", "/model/info", "/predict", "/predict/batch", "/metrics", "/docs",
          "/openapi.json")


class NliServiceConfig(BaseModel):
    model: str = Field("smollm2-135m", description="bundled name, model folder, LoRA adapter folder or hub ID")
    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 in a pod)")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0: any free port)")
    device: str = Field("cpu", description="torch device for the model (cpu, cuda, cuda:1 ...)")
    max_batch_size: int = Field(16, ge=1, description="pairs scored together in one forward pass (1 turns "
                                "micro-batching off)")
    max_wait_ms: float = Field(10.0, ge=0, description="how long the first queued pair waits for others to join "
                               "its batch")
    max_length_ratio: float = Field(1.3, ge=1.0, description="split a batch into passes whose longest pair is "
                                    "at most this times the shortest (characters): less padding")
    max_text_chars: int = Field(2000, ge=1, description="longest premise or hypothesis accepted, in characters")
    max_body_bytes: int = Field(1_000_000, ge=1, description="largest request body accepted (413 above it)")
    max_batch_items: int = Field(64, ge=1, description="most pairs one /predict/batch request may hold")
    log_level: str = Field("info", description="uvicorn log level (debug, info, warning, error)")
    access_log: bool = Field(False, description="log every request (Prometheus counts them either way)")


# ----------------------------------------------------------------------------- request bodies


def _has_text(value: str) -> str:
    from pydantic_core import PydanticCustomError

    if not value.strip():  # a custom error: a ValueError's message would read "Value error, ..."
        raise PydanticCustomError("blank_text", "must hold text, not be empty or only whitespace")
    return value


def request_models(cfg: NliServiceConfig) -> tuple[type[BaseModel], type[BaseModel]]:
    """The /predict and /predict/batch bodies, with the configured limits (shown in /docs too)."""
    text = Annotated[str, StringConstraints(max_length=cfg.max_text_chars), AfterValidator(_has_text)]

    class Pair(BaseModel):
        # strict: a number is not a premise; forbid: a misspelt field is an error, not ignored
        model_config = ConfigDict(extra="forbid", strict=True)
        premise: text = Field(description="the premise text", examples=["A man is sleeping in his bed."])
        hypothesis: text = Field(description="the hypothesis text", examples=["A man is awake."])

    class Batch(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        pairs: list[Pair] = Field(min_length=1, max_length=cfg.max_batch_items,
                                  description=f"1 to {cfg.max_batch_items} premise/hypothesis pairs")

    return Pair, Batch


class Prediction(BaseModel):
    label: str = Field(description="entailment, neutral or contradiction")
    confidence: float = Field(description="the label's probability")
    scores: dict[str, float] = Field(description="probability of each label (softmax over their log-probs)")


class Predictions(BaseModel):
    predictions: list[Prediction]


class FieldError(BaseModel):
    field: str = Field(description="where the problem is, as the request wrote it: premise, pairs[3].hypothesis")
    message: str


class InvalidRequest(BaseModel):
    detail: list[FieldError]
    error: str = Field(description="all problems in one line")


class Health(BaseModel):
    status: str = Field(description="ok, loading or error")
    model_loaded: bool
    device: str
    error: str | None = None


def field_name(loc: tuple | list) -> str:
    """pydantic's error location as the caller wrote it: ('body', 'pairs', 3, 'premise') ->
    pairs[3].premise."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


# ----------------------------------------------------------------------------- micro-batching


class Batcher:
    """One queue of pairs and one worker that scores them in batches (see the module doc)."""

    def __init__(self, max_batch_size: int, max_wait_s: float, observe: Callable[[int, float], None],
                 max_length_ratio: float = 1.3):
        self.max_batch_size, self.max_wait_s, self.observe = max_batch_size, max_wait_s, observe
        self.max_length_ratio = max_length_ratio
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nli-forward")

    async def submit(self, pairs: list[tuple[str, str]]) -> list[dict]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in pairs]
        for pair, fut in zip(pairs, futures):  # no await in between: a request's pairs stay together
            self.queue.put_nowait((pair, fut))
        return list(await asyncio.gather(*futures))

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self.queue.empty():  # queued while the last pass ran: take them without waiting
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [(pair, fut) for pair, fut in batch if not fut.done()]  # a client that left is not scored

    async def _forward(self, model: nli_model.NliModel, pairs: list) -> list[dict]:
        t0 = time.monotonic()
        out = await asyncio.get_running_loop().run_in_executor(self.executor, model.predict, pairs)
        self.observe(len(pairs), time.monotonic() - t0)
        return out

    def passes(self, batch: list) -> list[list]:
        """The batch sorted by length and cut where the next pair is over max_length_ratio times the
        pass's shortest."""
        size = lambda item: len(item[0][0]) + len(item[0][1])  # noqa: E731
        out: list[list] = []
        for item in sorted(batch, key=size):
            if out and size(item) <= self.max_length_ratio * max(1, size(out[-1][0])):
                out[-1].append(item)
            else:
                out.append([item])
        return out

    async def work(self, get_model: Callable[[], nli_model.NliModel]) -> None:
        while True:
            collected = await self._collect()
            for batch in self.passes(collected):
                await self._run(get_model, batch)

    async def _run(self, get_model: Callable[[], nli_model.NliModel], batch: list) -> None:
        try:
            preds = await self._forward(get_model(), [pair for pair, _ in batch])
            results = list(zip(batch, preds))
        except ValueError as e:
            if len(batch) == 1:
                results = [(batch[0], e)]
            else:  # one pair's input broke the pass: find it, let the others through
                results = []
                for item in batch:
                    try:
                        results.append((item, (await self._forward(get_model(), [item[0]]))[0]))
                    except ValueError as e1:
                        results.append((item, e1))
        except Exception as e:  # noqa: BLE001 - a model failure goes to every waiting request
            log.exception("forward pass failed")
            results = [(item, e) for item in batch]
        for (_, fut), res in results:
            if not fut.done():
                fut.set_exception(res) if isinstance(res, Exception) else fut.set_result(res)


# ----------------------------------------------------------------------------- ASGI middleware


class BodyLimit:
    """413 for a body over `limit` bytes: at once by Content-Length, else while it streams in. The
    body is read here and handed on whole (it is at most `limit` bytes)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def _reject(self, send: Callable) -> None:
        body = json.dumps({"detail": f"request body is over {self.limit} bytes (max_body_bytes); send fewer or "
                                     "shorter pairs"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._reject(send)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._reject(send)
            more = msg.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class RequestMetrics:
    """Counts every response by endpoint and status, and times it (outermost: 413s count too)."""

    def __init__(self, app: Any, requests: Any, latency: Any):
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ROUTES else "other"  # unknown paths must not grow the label set
        status = {"code": 500}
        t0 = time.monotonic()

        async def record(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, record)
        finally:
            self.requests.labels(endpoint, str(status["code"])).inc()
            self.latency.labels(endpoint).observe(time.monotonic() - t0)


# ----------------------------------------------------------------------------- the app


class State:
    def __init__(self, cfg: NliServiceConfig, model: nli_model.NliModel | None):
        self.cfg, self.model = cfg, model
        self.error: str | None = None
        self.load_s: float | None = None
        self.on_fatal: Callable[[], None] = lambda: None


def create_app(cfg: NliServiceConfig, model: nli_model.NliModel | None = None) -> Any:
    """The FastAPI app. `model`: an already loaded model to serve (another app in the same process
    shares it); by default the app loads `cfg.model` itself, in the background, at startup."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client import ProcessCollector

    state = State(cfg, model)
    registry = CollectorRegistry()  # one per app: two apps in a process (tests) keep their own counts
    ProcessCollector(registry=registry)
    requests = Counter("nli_requests", "HTTP responses by endpoint and status", ["endpoint", "status"],
                       registry=registry)
    latency = Histogram("nli_request_seconds", "request latency by endpoint", ["endpoint"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
    batch_size = Histogram("nli_batch_size", "pairs scored per forward pass", registry=registry,
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128))
    forward = Histogram("nli_forward_seconds", "time of one forward pass", registry=registry,
                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
    labels = Counter("nli_predictions", "predicted labels", ["label"], registry=registry)
    loaded = Gauge("nli_model_loaded", "1 once the model is loaded and serving", registry=registry)
    loaded.set(1 if model is not None else 0)

    def observe(n: int, seconds: float) -> None:
        batch_size.observe(n)
        forward.observe(seconds)

    batcher: Batcher | None = None
    Gauge("nli_queue_pairs", "pairs waiting for a forward pass", registry=registry).set_function(
        lambda: batcher.queue.qsize() if batcher else 0)

    def load_in_background(loop: asyncio.AbstractEventLoop) -> None:
        t0 = time.monotonic()
        try:
            m = nli_model.load(cfg.model, cfg.device)
        except Exception as e:  # noqa: BLE001 - reported, then the process ends (see on_fatal)
            msg = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            log.error("cannot load the NLI model %s: %s", cfg.model, msg)
            loop.call_soon_threadsafe(fail, msg)
            return
        loop.call_soon_threadsafe(ready, m, time.monotonic() - t0)

    def ready(m: nli_model.NliModel, seconds: float) -> None:
        state.model, state.load_s = m, seconds
        loaded.set(1)
        log.info("NLI model %s loaded in %.1f s (%s, %s)", cfg.model, seconds, m.kind, m.device)

    def fail(msg: str) -> None:
        state.error = msg
        state.on_fatal()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal batcher
        batcher = Batcher(cfg.max_batch_size, cfg.max_wait_ms / 1000, observe, cfg.max_length_ratio)
        worker = asyncio.create_task(batcher.work(lambda: state.model))
        if state.model is None:
            # a daemon thread, not the executor: Ctrl-C during a long load must not wait for it
            threading.Thread(target=load_in_background, args=(asyncio.get_running_loop(),), daemon=True,
                             name="nli-load").start()
        yield
        worker.cancel()
        batcher.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="kubellm NLI", lifespan=lifespan,
                  description="Natural-language inference: entailment, neutral or contradiction for a "
                              "premise/hypothesis pair. Each label word is scored as a continuation of "
                              "\"premise: ... hypothesis: ...\"; `scores` is the softmax over the three "
                              "summed log-probs and `confidence` the winner's share.")
    app.state.nli = state
    Pair, Batch = request_models(cfg)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            if err["type"] == "json_invalid":
                errors.append({"field": "body", "message": f"invalid JSON: {err.get('ctx', {}).get('error', '')}"})
            elif tuple(err["loc"]) == ("body",) and err["type"] != "missing":
                errors.append({"field": "body", "message": "need a JSON object (content-type: application/json) "
                               f"with the fields of the {request.url.path} example in /docs ({err['msg']})"})
            else:
                errors.append({"field": field_name(err["loc"]), "message": err["msg"]})
        text = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse({"detail": errors, "error": f"invalid request: {text}"}, status_code=422)

    def not_ready() -> JSONResponse:
        if state.error:
            return JSONResponse({"detail": f"the model failed to load: {state.error}"}, status_code=503)
        return JSONResponse({"detail": "the model is loading; retry when /readyz answers 200"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.get("/livez", summary="liveness: 200 whenever the process serves")
    async def livez() -> dict:
        return {"status": "alive"}

    @app.get("/readyz", summary="readiness: 503 until the model is loaded", responses={503: {}})
    async def readyz() -> Any:
        return {"status": "ready"} if state.model is not None else not_ready()

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> Any:
        status = "ok" if state.model is not None else ("error" if state.error else "loading")
        body = Health(status=status, model_loaded=state.model is not None, device=cfg.device, error=state.error)
        return body if status == "ok" else JSONResponse(body.model_dump(), status_code=503)

    @app.get("/model/info", responses={503: {}})
    async def model_info() -> Any:
        if state.model is None:
            return not_ready()
        return {**state.model.info(), **nli_model.model_card(state.model.path), "load_s": state.load_s,
                "limits": {k: getattr(cfg, k) for k in ("max_batch_size", "max_wait_ms", "max_text_chars",
                                                        "max_body_bytes", "max_batch_items")}}

    async def answer(pairs: list[tuple[str, str]]) -> list[dict] | JSONResponse:
        if state.model is None or batcher is None:
            return not_ready()
        try:
            preds = await batcher.submit(pairs)
        except ValueError as e:  # the pair cannot be scored by this model (e.g. longer than its context)
            return JSONResponse({"detail": str(e), "error": f"invalid request: {e}"}, status_code=422)
        for p in preds:
            labels.labels(p["label"]).inc()
        return [{"label": p["label"], "confidence": p["confidence"], "scores": p["scores"]} for p in preds]

    errors = {422: {"model": InvalidRequest, "description": "invalid input; `field` names it"},
              413: {"description": "body over max_body_bytes"}, 503: {"description": "the model is loading"}}

    @app.post("/predict", response_model=Prediction, responses=errors)
    async def predict(body: Pair) -> Any:
        out = await answer([(body.premise, body.hypothesis)])
        return out if isinstance(out, JSONResponse) else out[0]

    @app.post("/predict/batch", response_model=Predictions, responses=errors)
    async def predict_batch(body: Batch) -> Any:
        out = await answer([(p.premise, p.hypothesis) for p in body.pairs])
        return out if isinstance(out, JSONResponse) else {"predictions": out}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(RequestMetrics, requests=requests, latency=latency)  # added last = outermost
    return app


def build_server(cfg: NliServiceConfig, model: nli_model.NliModel | None = None) -> Any:
    """A uvicorn server for the app; a model that fails to load stops it (see `run`)."""
    import uvicorn

    app = create_app(cfg, model)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                                           access_log=cfg.access_log, timeout_graceful_shutdown=10))

    def stop() -> None:
        server.should_exit = True

    app.state.nli.on_fatal = stop
    return server


def run(cfg: NliServiceConfig) -> dict:
    nli_model.check(cfg.model)  # a name that cannot load anywhere fails before the server starts
    t0 = time.monotonic()
    server = build_server(cfg)
    server.run()
    state = server.config.app.state.nli
    if state.error:
        raise ValueError(f"the NLI model {cfg.model!r} failed to load: {state.error}")
    return {"model": cfg.model, "served_s": round(time.monotonic() - t0, 1), "load_s": state.load_s}


if __name__ == "__main__":
    from steps._cli import main

    main(NliServiceConfig, run, __doc__)
