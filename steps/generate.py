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
import functools
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
FACT_SYSTEM = ("You are a Kubernetes expert. Answer the question from the documentation given, "
               "in one short sentence.")
FACT_USER = "Documentation:\n{context}\n\nQuestion: {question}"
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
    kb: str | None = Field(None, description="harvest output folder (docs.jsonl); not used in cycle mode")
    out: str = Field(description="output folder: train.jsonl, heldout.jsonl, manifest.json")
    teacher: str = Field(description="teacher model as the endpoint knows it, or openai:MODEL")
    url: str | None = Field(None, description="teacher endpoint base URL (not needed for openai:); empty = served_url")
    served_url: str | None = Field(None, description="the workflow's own server, used when url is empty")
    api_key_env: str | None = Field(None, description="environment variable with the teacher API key")
    topics: list[str] = Field(default_factory=lambda: ["all"], description="topics to draw documents from")
    num_questions: int = Field(160, ge=1, description="training questions (one per document)")
    heldout_unseen: int = Field(40, ge=0, description="held-out questions on documents never trained on")
    heldout_paraphrase: int = Field(40, ge=0, description="held-out rephrasings of training questions")
    fact_questions: int = Field(64, ge=0, description="training questions on facts the reference states exactly "
                                "(type, required, default, minimum, maximum; steps.facts); 0: none")
    heldout_facts: int = Field(24, ge=0, description="held-out fact questions per split: paraphrase of a trained "
                               "fact, unseen fact of a trained kind, fact of an unseen kind")
    fact_attempts: int = Field(3, ge=1, description="teacher attempts per training fact (greedy, then sampled) "
                               "before the fact is dropped: an answer is kept only when it states the fact")
    previous: str | None = Field(None, description="cycle mode: the previous cycle's generate folder; its student's "
                                 "answers to probe.jsonl are in `probe`")
    probe: str | None = Field(None, description="cycle mode: query folder with the student's answers to the "
                              "previous folder's probe.jsonl")
    cycle: int = Field(1, ge=1, description="cycle number (cycle mode writes cycle >= 2)")
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


# worked examples on invented fields (no real field, so no held-out fact leaks into the teacher's
# prompt): they show a small teacher the one-sentence answer that names the field and states the fact
FACT_SHOTS = [
    ("Widget.spec.mode: mode selects how the widget reacts to a change.\nType: string. Optional.",
     "Is the mode field of a Widget's spec required?", "No, `Widget.spec.mode` is optional."),
    ("Gadget.spec.replicas: replicas is the number of gadgets to run. Defaults to 3.\nType: integer. Required.",
     "What kind of value does a Gadget's replicas hold?", "`Gadget.spec.replicas` is an integer."),
    ("Gadget.spec.replicas: replicas is the number of gadgets to run. Defaults to 3.\nType: integer. Required.",
     "What does the replicas of a Gadget's spec default to?", "`Gadget.spec.replicas` defaults to 3."),
]


def fact_messages(row: dict) -> list[dict]:
    msgs = [{"role": "system", "content": FACT_SYSTEM}]
    for ctx, q, a in FACT_SHOTS:
        msgs += [{"role": "user", "content": FACT_USER.format(context=ctx, question=q)},
                 {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": FACT_USER.format(context=row["context"], question=row["question"])}]


def teach_facts(endpoint, cfg: GenerateConfig, log, rows: list[dict], attempts: int, label: str) -> dict[str, dict]:
    """The teacher answers each fact question with its document in view: greedy first, then sampled
    with new seeds until an answer states the fact (steps.facts.fact_correct) and ends before the
    token limit. Per row id: first (the greedy answer), first_ok, kept (the first agreeing answer or
    None), finish_reason of the first."""
    from steps.client import Client
    from steps.facts import fact_correct
    from steps.query import answer_all

    out = {r["id"]: {"first": None, "first_ok": False, "kept": None, "finish_reason": None} for r in rows}

    async def go() -> None:
        async with Client(endpoint, concurrency=cfg.concurrency, timeout_s=cfg.timeout_s,
                          max_retries=cfg.retries) as client:
            pending = list(rows)
            for attempt in range(attempts):
                params = ({"temperature": 0.0, "max_tokens": cfg.max_tokens} if attempt == 0 else
                          {"temperature": 0.8, "max_tokens": cfg.max_tokens, "seed": cfg.seed + attempt})
                items = [(f"f:{r['id']}:{attempt}", fact_messages(r), params) for r in pending]
                res = await answer_all(client, items, log, Progress(len(items), f"{label} #{attempt + 1}"))
                _fail_on_errors(res, endpoint)
                still = []
                for r in pending:
                    got = res[f"f:{r['id']}:{attempt}"]
                    text = (got["answer"] or "").strip()
                    ok = (fact_correct(r["fact"], r["answer"], text) and got.get("finish_reason") != "length"
                          and not fact_answer_problem(text))
                    o = out[r["id"]]
                    if attempt == 0:
                        o.update(first=text, first_ok=ok, finish_reason=got.get("finish_reason"))
                    if ok:
                        o["kept"] = text
                    else:
                        still.append(r)
                pending = still
                if not pending:
                    break

    asyncio.run(go())
    return out


def fact_answer_problem(text: str) -> str | None:
    """Why a teacher's fact answer would make a bad training target, or None: one that echoes the
    prompt ("Documentation: ... Type: string. Optional.") states the fact without answering."""
    if re.search(r"Documentation:|Question:|\bType: [a-z]", text):
        return "echoes the prompt"
    if len(text.split()) > 60:
        return "longer than 60 words"
    return None


def fact_train_row(r: dict, answer: str, cycle: int) -> dict:
    keep = ("doc_id", "topic", "title", "kind", "fact", "question", "wording", "naming")
    return {"id": f"train{'' if cycle == 1 else f'-c{cycle}'}:{r['doc_id']}:{r['fact']}:{r['wording']}{r['naming']}",
            **{k: r[k] for k in keep}, "fact_answer": r["answer"], "answer": answer, "question_source": "fact",
            "cycle": cycle, "context": r["context"]}


def make_probe(train: list[dict], pool: list[dict], n_new: int) -> list[dict]:
    """What the student is asked after a cycle: each trained fact in a wording not yet used, and
    n_new facts of trained kinds never trained on (all from the pool: never a held-out fact)."""
    trained = {(r["doc_id"], r["fact"]) for r in train if r.get("fact")}
    probe, seen = [], set()
    for p in pool:
        key = (p["doc_id"], p["fact"])
        if p["origin"] == "trained" and key in trained and key not in seen:
            seen.add(key)
            probe.append(p)
    new = [p for p in pool if p["origin"] == "new" and (p["doc_id"], p["fact"]) not in trained][:n_new]
    if probe or new:
        return probe + new
    # nothing unused left: ask the trained facts in their training wording
    return [{**{k: r[k] for k in ("doc_id", "fact", "question", "wording", "naming", "title", "kind", "topic",
                                  "context")}, "id": "probe:" + r["id"], "answer": r["fact_answer"], "origin": "trained",
             "split": "pool"} for r in train if r.get("fact")]


def run_cycle(cfg: GenerateConfig) -> dict:
    """Cycle mode: the facts the student still gets wrong become new training rows (teacher-answered
    and checked like the first cycle's), added to the previous training set."""
    from steps.client import Endpoint
    from steps.facts import fact_correct

    t0 = time.monotonic()
    prev = Path(cfg.previous)
    for f in ("train.jsonl", "heldout.jsonl", "pool.jsonl", "probe.jsonl", "manifest.json"):
        if not (prev / f).exists():
            raise FileNotFoundError(f"previous {prev} is not a finished generate folder (no {f}); run generate first")
    train, heldout, pool, probe = (read_jsonl(prev / f) for f in ("train.jsonl", "heldout.jsonl", "pool.jsonl",
                                                                     "probe.jsonl"))
    ans_file = Path(cfg.probe) / "answers.jsonl" if Path(cfg.probe).is_dir() else Path(cfg.probe)
    if not ans_file.exists():
        raise FileNotFoundError(f"probe answers {ans_file} do not exist; answer {prev / 'probe.jsonl'} with steps.query")
    answers = {r["id"]: r for r in read_jsonl(ans_file)}
    missing = [p["id"] for p in probe if p["id"] not in answers]
    if missing:
        raise ValueError(f"{ans_file} has no answer for {len(missing)} probe questions (e.g. {missing[0]}); "
                         f"it must answer {prev / 'probe.jsonl'}")
    graded = [(p, fact_correct(p["fact"], p["answer"], answers[p["id"]].get("answer") or "")) for p in probe]
    wrong = [p for p, ok in graded if not ok]
    wrong.sort(key=lambda p: p["origin"] != "trained")  # relearn trained facts first, then new ones
    ask = wrong[: cfg.fact_questions]
    endpoint = Endpoint.parse(cfg.teacher, cfg.url or cfg.served_url, cfg.api_key_env)
    out = begin_output(cfg.out)
    log = JsonlLog(out / "log.jsonl")
    taught = teach_facts(endpoint, cfg, log, ask, cfg.fact_attempts, f"cycle {cfg.cycle} facts") if ask else {}
    log.close()
    new_rows = [fact_train_row(p, taught[p["id"]]["kept"], cfg.cycle) for p in ask if taught[p["id"]]["kept"]]
    used = {p["id"] for p in ask}
    rest = [p for p in pool if p["id"] not in used]
    train = train + new_rows
    next_probe = make_probe(train, [p for p in rest if p["id"] not in {q["id"] for q in probe}] or rest,
                            cfg.fact_questions)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)
    write_jsonl(out / "pool.jsonl", rest)
    write_jsonl(out / "probe.jsonl", next_probe)
    by_origin = {o: {"asked": sum(p["origin"] == o for p in probe),
                     "correct": sum(ok for p, ok in graded if p["origin"] == o)} for o in ("trained", "new")}
    counts = {"cycle": cfg.cycle, "train": len(train), "new_train": len(new_rows), "heldout": len(heldout),
              "probe": len(probe), "probe_correct": sum(ok for _, ok in graded), "probe_by_origin": by_origin,
              "still_wrong": len(wrong), "asked_teacher": len(ask),
              "teacher_fact_accuracy": (sum(t["first_ok"] for t in taught.values()) / len(taught)) if taught else None,
              "dropped": len(ask) - len(new_rows)}
    write_text(out / "counts.txt", f"{len(train)}\n")
    write_manifest(out, "generate", cfg, counts=counts, timings={"wall": time.monotonic() - t0},
                   packages=["httpx"], extra={"teacher": {"model": endpoint.model, "endpoint": endpoint.base_url},
                                               "previous": str(prev)})
    write_metrics(cfg.metrics_dir, {"rows": len(train) + len(heldout), "failed": counts["dropped"]})
    return counts


def run(cfg: GenerateConfig) -> dict:
    from steps.client import Client, Endpoint

    if (cfg.previous is None) != (cfg.probe is None):
        raise ValueError("previous and probe go together (cycle mode): the previous generate folder and the "
                         "student's answers to its probe.jsonl")
    if cfg.previous:
        return run_cycle(cfg)
    if not cfg.kb:
        raise ValueError("kb is required: a steps.harvest output folder (or its docs.jsonl)")
    t0 = time.monotonic()
    kb_file = Path(cfg.kb) / "docs.jsonl" if Path(cfg.kb).is_dir() else Path(cfg.kb)
    docs = read_jsonl(kb_file)
    train_docs, unseen, splits = plan(docs, cfg)

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
        res = answers[f"a:{d['id']}"]
        a = (res["answer"] or "").strip()
        if not a:
            dropped[d["id"]] = "empty teacher answer"
            continue
        if res.get("finish_reason") == "length":
            # an answer cut at the token limit would teach the student to run on to the limit
            dropped[d["id"]] = "teacher answer cut at the token limit"
            continue
        q, src = questions[d["id"]]
        train.append({"id": f"train:{d['id']}", "doc_id": d["id"], "topic": d.get("topic"), "title": d.get("title"),
                      "question": q, "answer": a, "question_source": src, "finish_reason": res.get("finish_reason")})
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
    facts = fact_part(cfg, splits, endpoint, log, phase_t) if splits else None
    log.close()
    if facts:
        train += facts["train"]
        heldout += facts["heldout"]
    if not train:
        raise SystemExit(f"generate: the teacher produced no usable training rows; see {out / 'log.jsonl'}")

    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)
    if facts:
        write_jsonl(out / "pool.jsonl", facts["pool"])
        write_jsonl(out / "probe.jsonl", make_probe(train, facts["pool"], cfg.fact_questions))
    write_jsonl(out / "rejected.jsonl", [{"doc_id": k, "reasons": v} for k, v in sorted(rejected.items())])
    counts = {
        "train": len(train), "heldout": len(heldout),
        "heldout_paraphrase": sum(h["split"] == "paraphrase" for h in heldout),
        "heldout_unseen_doc": sum(h["split"] == "unseen_doc" for h in heldout),
        "questions_by_teacher": sum(r["question_source"] == "teacher" for r in train),
        "questions_from_template": sum(r["question_source"] == "template" for r in train),
        "question_rejections": sum(len(v) for v in rejected.values()), "dropped": len(dropped),
        "topics": sorted({r["topic"] for r in train if r["topic"]}),
        "dropped_by_limit": sum(v == "teacher answer cut at the token limit" for v in dropped.values()),
        **(facts["counts"] if facts else {}),
    }
    write_text(out / "counts.txt", f"{len(train)}\n")
    write_manifest(out, "generate", cfg, counts=counts, timings={"wall": time.monotonic() - t0, **phase_t},
                   packages=["httpx"], extra={"teacher": {"model": endpoint.model, "endpoint": endpoint.base_url},
                                               "dropped": dropped})
    write_metrics(cfg.metrics_dir, {"rows": counts["train"] + counts["heldout"], "failed": counts["dropped"]})
    return counts


def plan(docs: list[dict], cfg: GenerateConfig, ref: list[dict] | None = None) -> tuple[list[dict], list[dict], dict | None]:
    """What will be asked, before any teacher call: the teacher-question documents (training and
    unseen) and the fact splits (steps.facts.fact_splits) on the knowledge base's other field
    documents. Raises ValueError, naming the parameter to change, when the topics hold too few."""
    if cfg.heldout_paraphrase > cfg.num_questions:
        raise ValueError("heldout_paraphrase cannot exceed num_questions (it rephrases training questions)")
    picked = select_docs(docs, cfg.topics, cfg.num_questions + cfg.heldout_unseen, cfg)
    # held-out documents are a seeded random sample of the picked ones (a fixed stride would line up
    # with the round-robin over topics and hold out whole topics: 15 topics, stride 5 -> 3 topics)
    held_idx = set(random.Random(cfg.seed + 1).sample(range(len(picked)), min(cfg.heldout_unseen, len(picked))))
    unseen = [d for i, d in enumerate(picked) if i in held_idx]
    unseen_ids = {d["id"] for d in unseen}
    train_docs = [d for d in picked if d["id"] not in unseen_ids][: cfg.num_questions]
    if not cfg.fact_questions:
        return train_docs, unseen, None
    from steps.facts import fact_splits
    from steps.k8s_reference import load_k8s_files
    from steps.nli_data import reference_docs

    want = None if cfg.topics in ([], ["all"]) else set(cfg.topics)
    kb_ids = {d["id"] for d in docs if want is None or d.get("topic") in want}
    ref = [d for d in (ref if ref is not None else reference_docs(load_k8s_files())) if d["id"] in kb_ids]
    text_docs = train_docs + unseen
    splits = fact_splits(ref, cfg.fact_questions, cfg.heldout_facts, cfg.seed, cfg.max_doc_chars,
                         exclude_docs={d["id"] for d in text_docs}, trained_kinds={d.get("kind") for d in text_docs},
                         max_new=4 * cfg.fact_questions)
    return train_docs, unseen, splits


def check_plan(topics: list[str], **fields) -> None:
    """`plan` on the installed v1.28 reference as steps.harvest would write it for these topics: a
    workflow's parameter check refuses sizes the topics cannot fill before anything starts."""
    docs, ref = _installed_reference()
    plan(docs, GenerateConfig(kb="-", out="-", teacher="-", topics=topics, **fields), ref)


@functools.lru_cache(maxsize=1)
def _installed_reference() -> tuple[list[dict], list[dict]]:
    """(harvest documents, field documents with required-ness) of the installed reference, read once."""
    from steps.harvest import k8s_documents
    from steps.k8s_reference import load_k8s_files
    from steps.nli_data import reference_docs

    src = load_k8s_files()
    return k8s_documents(src, kind_docs=True)[0], reference_docs(src)


def fact_part(cfg: GenerateConfig, splits: dict, endpoint, log, phase_t: dict) -> dict:
    """Fact questions (steps.facts) on the knowledge base's field documents that the free-text
    questions do not use: training rows whose teacher answer states the fact, and three held-out
    splits. The teacher's greedy answers give its factual accuracy (the ceiling)."""
    from steps.facts import answer_sentence

    ts = time.monotonic()
    taught = teach_facts(endpoint, cfg, log, splits["train"], cfg.fact_attempts, "fact answers")
    train = [fact_train_row(r, taught[r["id"]]["kept"], 1) for r in splits["train"] if taught[r["id"]]["kept"]]
    kept = {(r["doc_id"], r["fact"]): r for r in train}
    # each trained fact has a paraphrase; the first heldout_facts of those whose training answer was kept are held out
    paras = [p for p in splits["fact_paraphrase"] if (p["doc_id"], p["fact"]) in kept][: cfg.heldout_facts]
    held = paras + splits["fact_unseen"] + splits["fact_unseen_kind"]
    held_t = teach_facts(endpoint, cfg, log, held, 1, "held-out fact answers")
    heldout = []
    for h in held:
        t = held_t[h["id"]]
        row = {**_held(h), "teacher_answer": t["first"], "teacher_correct": t["first_ok"]}
        if h["split"] == "fact_paraphrase":
            tr = kept[(h["doc_id"], h["fact"])]
            row.update(reference=tr["answer"], reference_source="training answer", original_question=tr["question"])
        else:
            row.update(reference=t["kept"] or answer_sentence(h), reference_source="teacher" if t["kept"] else "fact")
        heldout.append(row)
    first = [t["first_ok"] for t in taught.values()] + [t["first_ok"] for t in held_t.values()]
    phase_t["facts"] = time.monotonic() - ts
    counts = {"fact_train": len(train), "fact_train_dropped": len(splits["train"]) - len(train),
              "fact_heldout": {s: sum(h["split"] == s for h in heldout)
                               for s in ("fact_paraphrase", "fact_unseen", "fact_unseen_kind")},
              "teacher_fact_accuracy": sum(first) / len(first) if first else None,
              "teacher_fact_questions": len(first),
              "teacher_fact_by_limit": sum(t["finish_reason"] == "length" for t in [*taught.values(), *held_t.values()])}
    return {"train": train, "heldout": heldout, "pool": splits["pool"], "counts": counts}


def _held(r: dict) -> dict:
    keep = ("doc_id", "topic", "title", "kind", "fact", "question", "wording", "naming", "context")
    return {"id": r["id"], "split": r["split"], **{k: r[k] for k in keep}, "fact_answer": r["answer"]}


def _fail_on_errors(res: dict[str, dict], endpoint) -> None:
    bad = [r for r in res.values() if r.get("error")]
    if bad:
        raise SystemExit(f"generate: {len(bad)} teacher request(s) failed after retries against "
                         f"{endpoint.base_url} (model {endpoint.model}): {bad[0]['error']}. "
                         "Finished rows are kept in log.jsonl; re-run to resume.")


if __name__ == "__main__":
    from steps._cli import main

    main(GenerateConfig, run, __doc__)
