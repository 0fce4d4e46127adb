"""generate: the teacher writes questions about knowledge-base documents and grounded reference
answers, and a held-out set that training never sees.

For each selected document (round-robin over the chosen topics, seeded):
  1. the teacher writes one question the document answers; it is validated (non-empty, one line,
     ends with "?", 12-300 characters, not a duplicate) and retried with new seeds; a document
     whose question still fails gets a templated question, marked `question_source: template`;
  2. the teacher answers it with the document in its prompt (context distillation: the student
     will learn to answer without the document).
Held-out, never trained on:
  - `unseen_doc`: questions about documents kept out of training entirely;
  - `paraphrase`: a teacher rephrasing of a training question, whose reference is the training
    answer (tests whether the student learnt the fact rather than the wording).
The teacher also answers every held-out question again, with the document in its prompt but a second,
plainer instruction: its score is the ceiling reported next to the students'.

Every teacher call is checkpointed row by row in log.jsonl: a restarted step resumes.

    python -m steps.generate --kb runs/kb --out runs/data --url http://127.0.0.1:8000 \\
        --teacher smollm2-135m --num-questions 160 --heldout-unseen 40 --heldout-paraphrase 40
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from steps._io import (JsonlLog, Progress, begin_output, read_jsonl, write_jsonl, write_manifest, write_metrics,
                       write_text)

QUESTION_SYSTEM = "You write short exam questions about Kubernetes from the documentation you are given."
QUESTION_USER = ("Documentation of {title}:\n{text}\n\n"
                 "Write one question that this documentation answers. Reply with the question only.")
ANSWER_SYSTEM = ("You are a Kubernetes expert. Answer the question using the documentation given, "
                 "in one to three sentences.")
ANSWER_USER = "Documentation of {title}:\n{text}\n\nQuestion: {question}"
CEILING_USER = "Read this Kubernetes documentation of {title}:\n{text}\n\nNow answer briefly: {question}"
# two worked examples keep a small teacher rewriting rather than answering
PARAPHRASE_SHOTS = [
    {"role": "system", "content": "You rewrite questions in other words. You never answer them."},
    {"role": "user", "content": "Rewrite: How many pods does a ReplicaSet keep running?"},
    {"role": "assistant", "content": "What number of pods does a ReplicaSet maintain?"},
    {"role": "user", "content": "Rewrite: What does the image field of a container specify?"},
    {"role": "assistant", "content": "Which value does a container's image field hold?"},
]


class GenerateConfig(BaseModel):
    kb: str = Field(description="harvest output folder (docs.jsonl)")
    out: str = Field(description="output folder: train.jsonl, heldout.jsonl, manifest.json")
    teacher: str = Field(description="teacher model as the endpoint knows it, or openai:MODEL")
    url: str | None = Field(None, description="teacher endpoint base URL (not needed for openai:); empty = served_url")
    served_url: str | None = Field(None, description="the workflow's own server, used when url is empty")
    api_key_env: str | None = Field(None, description="environment variable with the teacher API key")
    topics: list[str] = Field(default_factory=lambda: ["all"], description="topics to draw documents from")
    num_questions: int = Field(160, ge=1, description="training questions (one per document)")
    heldout_unseen: int = Field(40, ge=0, description="held-out questions on documents never trained on")
    heldout_paraphrase: int = Field(40, ge=0, description="held-out rephrasings of training questions")
    doc_types: list[str] = Field(default_factory=lambda: ["field"],
                                 description="harvest doc types to ask about (field, kind, section)")
    min_doc_chars: int = Field(80, description="skip documents shorter than this")
    max_doc_chars: int = Field(800, description="truncate documents in prompts to this length")
    question_attempts: int = Field(2, ge=1, description="teacher attempts per question before the template")
    max_tokens: int = Field(128, ge=1, description="answer length cap")
    concurrency: int = Field(16, ge=1, description="teacher requests in flight")
    timeout_s: float = Field(120.0, description="per-request timeout")
    retries: int = Field(4, description="retries per request")
    seed: int = Field(0, description="seed for document selection and sampling")
    metrics_dir: str | None = Field(None, description="write summary numbers here, one file each (Argo output parameters)")

    @field_validator("topics", mode="before")
    @classmethod
    def _split(cls, v):
        from steps.harvest import validate_topics

        names = validate_topics(v)  # an unknown topic fails here, before any teacher call
        return ["all"] if v in ("all", ["all"]) else names


def _norm(q: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", q.lower()).strip()


def clean_question(text: str | None) -> str:
    if not text:
        return ""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^\s*(question|q)\s*[:.)-]\s*", "", line, flags=re.I)
    line = re.sub(r"^\s*\d+[.)]\s*", "", line)
    return line.strip().strip('"').strip("'").strip("*").strip()


def question_problem(q: str, seen: set[str]) -> str | None:
    if not q:
        return "empty"
    if not q.endswith("?"):
        return "not a question (no '?')"
    if not 12 <= len(q) <= 300:
        return f"length {len(q)} outside 12-300"
    if _norm(q) in seen:
        return "duplicate"
    return None


def template_question(doc: dict) -> str:
    if doc.get("field"):
        return f"What does the {doc['field']} field of {doc.get('title', doc['id']).split('.')[0]} specify?"
    return f"What is {doc.get('title') or doc.get('kind') or doc['id']} in Kubernetes?"


def select_docs(docs: list[dict], topics: list[str], n: int, cfg: GenerateConfig) -> list[dict]:
    """Round-robin over topics so every topic is represented; seeded and stable."""
    want = None if topics in ([], ["all"]) else set(topics)
    by_topic: dict[str, list[dict]] = {}
    for d in docs:
        if len(d.get("text", "")) < cfg.min_doc_chars or d.get("doc_type", "section") not in cfg.doc_types:
            continue
        if want is not None and d.get("topic") not in want:
            continue
        by_topic.setdefault(d.get("topic", "other"), []).append(d)
    if want:
        missing = sorted(want - set(by_topic))
        if missing:
            raise ValueError(f"no documents for topic(s) {missing} in the knowledge base; "
                             f"topics present: {sorted(by_topic)}")
    rng = random.Random(cfg.seed)
    pools = []
    for t in sorted(by_topic):
        pool = sorted(by_topic[t], key=lambda d: d["id"])
        rng.shuffle(pool)
        pools.append(pool)
    picked: list[dict] = []
    i = 0
    while len(picked) < n and any(i < len(p) for p in pools):
        for p in pools:
            if i < len(p) and len(picked) < n:
                picked.append(p[i])
        i += 1
    if len(picked) < n:
        raise ValueError(f"only {len(picked)} documents match topics {topics} (need {n}); "
                         "lower num_questions/heldout_unseen or add topics")
    return picked


def run(cfg: GenerateConfig) -> dict:
    from steps.client import Client, Endpoint

    t0 = time.monotonic()
    kb_file = Path(cfg.kb) / "docs.jsonl" if Path(cfg.kb).is_dir() else Path(cfg.kb)
    docs = read_jsonl(kb_file)
    total = cfg.num_questions + cfg.heldout_unseen
    if cfg.heldout_paraphrase > cfg.num_questions:
        raise ValueError("heldout_paraphrase cannot exceed num_questions (it rephrases training questions)")
    picked = select_docs(docs, cfg.topics, total, cfg)
    # held-out documents are a seeded random sample of the picked ones (a fixed stride would line up
    # with the round-robin over topics and hold out whole topics: 15 topics, stride 5 -> 3 topics)
    held_idx = set(random.Random(cfg.seed + 1).sample(range(len(picked)), min(cfg.heldout_unseen, len(picked))))
    unseen = [d for i, d in enumerate(picked) if i in held_idx]
    unseen_ids = {d["id"] for d in unseen}
    train_docs = [d for d in picked if d["id"] not in unseen_ids][: cfg.num_questions]

    endpoint = Endpoint.parse(cfg.teacher, cfg.url or cfg.served_url, cfg.api_key_env)
    out = begin_output(cfg.out)
    log = JsonlLog(out / "log.jsonl")
    from steps.query import answer_all

    def ctx(d: dict) -> dict:
        return {"title": d.get("title") or d["id"], "text": d["text"][: cfg.max_doc_chars]}

    phase_t: dict[str, float] = {}

    async def validated(client, prompts: dict[str, list[dict]], check, label: str) -> tuple[dict, dict]:
        """Ask until each prompt's reply passes `check` (first try greedy, then sampled with new
        seeds); checked in insertion order so deduplication is deterministic."""
        accepted: dict[str, str] = {}
        pending = list(prompts)
        for attempt in range(cfg.question_attempts):
            ts = time.monotonic()
            # greedy first; then sampled with a per-attempt seed (greedy requests carry no seed: it
            # changes nothing there, and seeded requests take vLLM's slower per-request sampler)
            params = ({"temperature": 0.0, "max_tokens": 60} if attempt == 0 else
                      {"temperature": 0.8, "max_tokens": 60, "seed": cfg.seed + attempt})
            items = [(f"{k}:{attempt}", prompts[k], params) for k in pending]
            res = await answer_all(client, items, log, Progress(len(items), f"{label} #{attempt + 1}"))
            _fail_on_errors(res, endpoint)
            still = []
            for k in pending:
                q = clean_question(res[f"{k}:{attempt}"]["answer"])
                why = check(k, q)
                if why:
                    rejected.setdefault(k, []).append(f"{q!r}: {why}")
                    still.append(k)
                else:
                    accepted[k] = q
            pending = still
            phase_t[f"{label}_{attempt + 1}"] = time.monotonic() - ts
            if not pending:
                break
        return accepted, {k: rejected[k] for k in pending}

    rejected: dict[str, list[str]] = {}
    seen: set[str] = set()

    def new_question(_k: str, q: str) -> str | None:
        why = question_problem(q, seen)
        if not why:
            seen.add(_norm(q))
        return why

    async def go() -> tuple[dict, dict]:
        async with Client(endpoint, concurrency=cfg.concurrency, timeout_s=cfg.timeout_s,
                          max_retries=cfg.retries) as client:
            all_docs = train_docs + unseen
            prompts = {f"q:{d['id']}": [{"role": "system", "content": QUESTION_SYSTEM},
                                        {"role": "user", "content": QUESTION_USER.format(**ctx(d))}]
                       for d in all_docs}
            got, failed = await validated(client, prompts, new_question, "questions")
            questions: dict[str, tuple[str, str]] = {k[2:]: (q, "teacher") for k, q in got.items()}
            for d in all_docs:
                if f"q:{d['id']}" in failed:
                    q = template_question(d)
                    if _norm(q) not in seen:
                        seen.add(_norm(q))
                        questions[d["id"]] = (q, "template")

            ts = time.monotonic()
            items = []
            for d in all_docs:
                if d["id"] in questions:
                    msgs = [{"role": "system", "content": ANSWER_SYSTEM},
                            {"role": "user", "content": ANSWER_USER.format(question=questions[d["id"]][0], **ctx(d))}]
                    items.append((f"a:{d['id']}", msgs, {"temperature": 0.0, "max_tokens": cfg.max_tokens}))
            answers = await answer_all(client, items, log, Progress(len(items), "answers"))
            _fail_on_errors(answers, endpoint)
            phase_t["answers"] = time.monotonic() - ts

            para_prompts = {f"p:{d['id']}": PARAPHRASE_SHOTS + [
                {"role": "user", "content": f"Rewrite: {questions[d['id']][0]}"}]
                for d in train_docs[: cfg.heldout_paraphrase] if d["id"] in questions}

            def new_paraphrase(k: str, p: str) -> str | None:
                why = question_problem(p, seen)
                if why:
                    return why
                if _norm(p) == _norm(questions[k[2:]][0]):
                    return "same as the original"
                seen.add(_norm(p))
                return None

            paraphrases, _ = await validated(client, para_prompts, new_paraphrase, "paraphrases")
            return questions, {**answers, **{k: {"answer": v} for k, v in paraphrases.items()}}

    questions, answers = asyncio.run(go())

    train, heldout = [], []
    dropped: dict[str, str] = {}
    for d in train_docs:
        if d["id"] not in questions:
            dropped[d["id"]] = "no valid question"
            continue
        a = (answers[f"a:{d['id']}"]["answer"] or "").strip()
        if not a:
            dropped[d["id"]] = "empty teacher answer"
            continue
        q, src = questions[d["id"]]
        train.append({"id": f"train:{d['id']}", "doc_id": d["id"], "topic": d.get("topic"), "title": d.get("title"),
                      "question": q, "answer": a, "question_source": src})
    train_by_doc = {r["doc_id"]: r for r in train}
    for d in train_docs[: cfg.heldout_paraphrase]:
        key = f"p:{d['id']}"
        if key not in answers or d["id"] not in train_by_doc:
            dropped[f"paraphrase:{d['id']}"] = "no valid paraphrase"
            continue
        t = train_by_doc[d["id"]]
        heldout.append({"id": f"paraphrase:{d['id']}", "split": "paraphrase", "doc_id": d["id"], "topic": t["topic"],
                        "title": t["title"], "question": answers[key]["answer"], "reference": t["answer"],
                        "original_question": t["question"], "context": ctx(d)["text"]})
    for d in unseen:
        if d["id"] not in questions:
            continue
        a = (answers[f"a:{d['id']}"]["answer"] or "").strip()
        if not a:
            dropped[d["id"]] = "empty teacher answer"
            continue
        heldout.append({"id": f"unseen:{d['id']}", "split": "unseen_doc", "doc_id": d["id"], "topic": d.get("topic"),
                        "title": d.get("title"), "question": questions[d["id"]][0], "reference": a,
                        "question_source": questions[d["id"]][1], "context": ctx(d)["text"]})

    # the teacher's own score on the held-out questions: its answer with the document in view, asked
    # with a second, plainer instruction (the first instruction would reproduce the reference exactly)
    async def ceiling() -> dict:
        async with Client(endpoint, concurrency=cfg.concurrency, timeout_s=cfg.timeout_s,
                          max_retries=cfg.retries) as client:
            items = [(f"c:{h['id']}", [{"role": "user", "content": CEILING_USER.format(
                                          title=h["title"] or h["doc_id"], text=h["context"], question=h["question"])}],
                      {"temperature": 0.0, "max_tokens": cfg.max_tokens})
                     for h in heldout]
            res = await answer_all(client, items, log, Progress(len(items), "teacher ceiling"))
            _fail_on_errors(res, endpoint)
            return res

    ts = time.monotonic()
    ceil = asyncio.run(ceiling())
    phase_t["ceiling"] = time.monotonic() - ts
    for h in heldout:
        h["teacher_answer"] = (ceil[f"c:{h['id']}"]["answer"] or "").strip()
    log.close()
    if not train:
        raise SystemExit(f"generate: the teacher produced no usable training rows; see {out / 'log.jsonl'}")

    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)
    write_jsonl(out / "rejected.jsonl", [{"doc_id": k, "reasons": v} for k, v in sorted(rejected.items())])
    counts = {
        "train": len(train), "heldout": len(heldout),
        "heldout_paraphrase": sum(h["split"] == "paraphrase" for h in heldout),
        "heldout_unseen_doc": sum(h["split"] == "unseen_doc" for h in heldout),
        "questions_by_teacher": sum(r["question_source"] == "teacher" for r in train),
        "questions_from_template": sum(r["question_source"] == "template" for r in train),
        "question_rejections": sum(len(v) for v in rejected.values()), "dropped": len(dropped),
        "topics": sorted({r["topic"] for r in train if r["topic"]}),
    }
    write_text(out / "counts.txt", f"{len(train)}\n")
    write_manifest(out, "generate", cfg, counts=counts, timings={"wall": time.monotonic() - t0, **phase_t},
                   packages=["httpx"], extra={"teacher": {"model": endpoint.model, "endpoint": endpoint.base_url},
                                               "dropped": dropped})
    write_metrics(cfg.metrics_dir, {"rows": counts["train"] + counts["heldout"], "failed": counts["dropped"]})
    return counts


def _fail_on_errors(res: dict[str, dict], endpoint) -> None:
    bad = [r for r in res.values() if r.get("error")]
    if bad:
        raise SystemExit(f"generate: {len(bad)} teacher request(s) failed after retries against "
                         f"{endpoint.base_url} (model {endpoint.model}): {bad[0]['error']}. "
                         "Finished rows are kept in log.jsonl; re-run to resume.")


if __name__ == "__main__":
    from steps._cli import main

    main(GenerateConfig, run, __doc__)
