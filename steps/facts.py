"""Facts: questions with exact answers, from what the v1.28 reference states in structured form.

Each field document of the reference (steps.nli_data.reference_docs: the rows steps.harvest writes,
plus whether the generated client refuses the object without the field) yields the facts a reader
can take from it (steps.nli_data.visible_facts): its type, whether it is required, and the default,
minimum and maximum its description states in one unconditional sentence. Every fact becomes a
question in one of several wordings, with the exact answer and the id of the document that states
it, so retrieval (steps.retrieval_eval) and answers (`fact_correct`) can be scored without a judge.

The field is named as a user would: by its path (`CronJob.spec.concurrencyPolicy`), in prose ("the
concurrencyPolicy field in a CronJob's spec") or in words ("a CronJob's concurrency policy").
Wordings are chosen per question from the seed, so two runs with one seed ask the same questions.

Output folder: questions.jsonl (id, doc_id, fact, answer, question, wording, naming, title, kind,
topic), manifest.json (counts by fact and naming).

Examples:
  python -m steps.facts --out runs/facts                         # every fact, one wording each
  python -m steps.facts --out runs/facts max_questions=300 seed=1
  python -m steps.facts --out runs/facts --kb runs/kb            # only documents of this harvest
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from steps._cli import main
from steps._io import atomic_path, write_jsonl, write_manifest

FACTS = ("type", "required", "default", "minimum", "maximum")

# {s}: how the field is named (see subject()). Each fact has wordings that do not share the
# template's words, so a retriever or a student cannot lean on one phrasing.
TEMPLATES: dict[str, list[str]] = {
    "type": ["What type of value is {s}?", "Which data type does {s} hold?",
             "In a manifest, what kind of value do I write for {s}?"],
    "required": ["Is {s} required?", "Can {s} be left out, or must it be set?",
                 "Does the API server insist on {s} being present?"],
    "default": ["What is the default value of {s}?", "If {s} is not set, what value is used?",
                "What does {s} default to?"],
    "minimum": ["What is the smallest value allowed for {s}?", "What is the minimum of {s}?",
                "How low can {s} go?"],
    "maximum": ["What is the largest value allowed for {s}?", "What is the maximum of {s}?",
                "How high can {s} go?"],
}
NAMINGS = ("path", "prose", "words")


class FactsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path = Field(description="output folder: questions.jsonl, manifest.json")
    kb: Path | None = Field(default=None, description="a steps.harvest folder: only its documents (default: the "
                            "whole v1.28 reference)")
    k8s_source: Path | None = Field(default=None, description="the kubernetes==28.1.0 wheel or unpacked package "
                                    "(default: the installed one)")
    facts: list[str] = Field(default=list(FACTS), description=f"fact types to ask about: {', '.join(FACTS)}")
    max_questions: int = Field(default=0, ge=0, description="sample this many questions (0: all)")
    wordings: int = Field(default=1, ge=1, le=3, description="wordings per fact (different templates and namings)")
    seed: int = Field(default=0, description="seed for sampling and wordings")


def words(name: str) -> str:
    """camelCase to words: concurrencyPolicy -> concurrency policy (acronyms kept: podCIDRs -> pod CIDRs)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).replace("_", " ").lower() if not name.isupper() else name


def subject(title: str, naming: str) -> str:
    """The field of a document titled `Kind.path.to.field` (or `Class.field`), named three ways."""
    parts = title.split(".")
    field, owner = parts[-1], parts[0]
    parent = parts[-2] if len(parts) > 2 else None
    article = "an" if owner[:1].lower() in "aeiou" else "a"
    if naming == "path":
        return f"`{title}`"
    if naming == "prose":
        return (f"the {field} field in {article} {owner}'s {'.'.join(parts[1:-1])}" if parent
                else f"the {field} field of {article} {owner}")
    where = f"{article} {owner}'s {words(parent)}" if parent else f"{article} {owner}"
    return f"the {words(field)} of {where}"


def fact_rows(docs: list[dict], cfg: FactsConfig) -> list[dict]:
    from steps.nli_data import visible_facts

    rng = random.Random(cfg.seed)
    rows = []
    for d in sorted(docs, key=lambda d: d["id"]):
        if d.get("doc_type", "field") != "field" or not d.get("text"):
            continue
        facts = visible_facts(d)
        for fact in cfg.facts:
            if fact not in facts:
                continue
            combos = [(t, n) for t in range(len(TEMPLATES[fact])) for n in NAMINGS]
            for w, (t, naming) in enumerate(rng.sample(combos, cfg.wordings)):
                q = TEMPLATES[fact][t].format(s=subject(d["title"], naming))
                rows.append({"id": f"{d['id']}:{fact}:{w}", "doc_id": d["id"], "fact": fact, "answer": facts[fact],
                             "question": q[:1].upper() + q[1:], "wording": t, "naming": naming,
                             "title": d["title"], "kind": d.get("kind"), "topic": d.get("topic")})
    if cfg.max_questions and len(rows) > cfg.max_questions:
        rows = sorted(rng.sample(rows, cfg.max_questions), key=lambda r: r["id"])
    return rows


# --------------------------------------------------------------------------- scoring answers

_TYPE_SYNONYMS = {
    "string": r"\bstrings?\b|\bstr\b|\btext\b",
    "integer": r"\bintegers?\b|\bint(?:32|64)?\b|\bwhole number\b",
    "boolean": r"\bbool(?:ean)?\b|\btrue or false\b",
    "date-time": r"\bdate[- ]?time\b|\btimestamp\b|\bRFC ?3339\b",
    "list of strings": r"\b(?:list|array) of strings\b|\blist\[str\]",
    "map of strings to strings": r"\bmap of strings?\b|\bdict(?:ionary)?\b|\bkey[- ]value\b",
}
_NEGATED_REQUIRED = re.compile(r"\b(?:not|n't|never)\s+(?:\w+\s+){0,2}required\b|\boptional\b|\bcan be (?:left out|omitted)\b"
                               r"|\bmay be (?:left out|omitted|empty)\b", re.I)


def fact_correct(fact: str, answer: str, response: str) -> bool:
    """Whether a free-text response states the exact answer: the type's name (or a synonym), the
    required-ness, or the value (numbers compare as numbers, other values as whole words)."""
    text = response or ""
    if fact == "type":
        hits = [t for t, pat in _TYPE_SYNONYMS.items() if re.search(pat, text, re.I)]
        # "list of strings" and "map of strings to strings" also name "string": the longer name decides
        compound = [t for t in ("list of strings", "map of strings to strings") if t in hits]
        if compound:
            return answer in compound and len(compound) == 1
        return answer in hits and len(hits) == 1
    if fact == "required":
        optional = bool(_NEGATED_REQUIRED.search(text))
        required = bool(re.search(r"\brequired\b|\bmust be (?:set|given|specified|present)\b|\bmandatory\b", text, re.I))
        return (answer == "optional" and optional) or (answer == "required" and required and not optional)
    if re.fullmatch(r"-?\d+(?:\.\d+)?", answer.split()[0] if answer.split() else ""):
        n = float(answer.split()[0])
        return any(float(x) == n for x in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]*\d)", text))
    return re.search(rf"(?<![\w-]){re.escape(answer)}(?![\w-])", text, re.I) is not None



def answer_sentence(row: dict) -> str:
    """The exact answer of a fact question as one plain sentence (a reference for similarity)."""
    s, a = f"`{row['title']}`", row["answer"]
    return {"type": f"{s} is a {a}.", "required": f"{s} is {a}."}.get(row["fact"], f"The {row['fact']} of {s} is {a}.")


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", (text or "").lower())


def token_f1(response: str, answer: str) -> float:
    """Token F1 of a response against the exact answer (SQuAD style: lower-cased alphanumeric words;
    a long response that contains the answer scores low on precision)."""
    from collections import Counter

    r, a = _tokens(response), _tokens(answer)
    common = sum((Counter(r) & Counter(a)).values())
    if not r or not a or not common:
        return 0.0
    p, rec = common / len(r), common / len(a)
    return 2 * p * rec / (p + rec)


def distinct_n(text: str, n: int = 2) -> float | None:
    """Distinct n-grams / n-grams within one answer: 1.0 never repeats, a loop tends to 0. None when
    the answer has fewer than n words."""
    w = _tokens(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def fact_context(doc: dict, max_chars: int) -> tuple[str, dict[str, str]]:
    """The text a teacher is shown for a field document (title, description cut to max_chars, the
    'Type: ... Required.' line) and the facts that text states: only those are asked."""
    from steps.nli_data import premise_text, visible_facts

    cut = {**doc, "text": doc["text"][:max_chars]}
    return premise_text(cut), {k: v for k, v in visible_facts(cut).items() if k in FACTS}


def fact_splits(docs: list[dict], n_train: int, n_held: int, seed: int, max_chars: int = 800,
                exclude_docs: set[str] = frozenset(), trained_kinds: set[str] = frozenset(),
                facts: tuple[str, ...] = FACTS, max_new: int = 10**9) -> dict[str, list[dict]]:
    """Fact questions split for distillation, disjoint by fact:

    - train: n_train facts in one wording each;
    - fact_paraphrase: each trained fact asked in another template AND another naming (the caller
      keeps n_held of those whose training answer it kept);
    - fact_unseen: n_held facts of documents never trained on, of kinds that have trained facts;
    - fact_unseen_kind: n_held facts of kinds with no trained document (`trained_kinds`, e.g. of
      free-text training rows, count as trained);
    - pool: every other wording of the trained facts and every other fact of trained kinds, for
      later cycles (never a held-out fact).

    Each row: id, doc_id, fact, answer, question, wording, naming, title, kind, topic, context."""
    rng = random.Random(seed)
    items = []  # one per (doc, fact): its wordings in a seeded order
    for d in sorted(docs, key=lambda d: d["id"]):
        if d.get("doc_type", "field") != "field" or not d.get("text") or d["id"] in exclude_docs or not d.get("kind"):
            continue
        ctx, stated = fact_context(d, max_chars)
        for fact in facts:
            if not (stated.get(fact) or "").strip():
                continue  # not stated, or stated as an empty default (an empty answer matches any reply)
            combos = [(t, n) for t in range(len(TEMPLATES[fact])) for n in NAMINGS]
            rng.shuffle(combos)
            items.append({"doc": d, "fact": fact, "answer": stated[fact], "context": ctx, "combos": combos})

    def row(it: dict, combo: tuple[int, str], split: str) -> dict:
        d, (t, naming) = it["doc"], combo
        q = TEMPLATES[it["fact"]][t].format(s=subject(d["title"], naming))
        return {"id": f"{split}:{d['id']}:{it['fact']}:{t}{naming}", "split": split, "doc_id": d["id"],
                "fact": it["fact"], "answer": it["answer"], "question": q[:1].upper() + q[1:], "wording": t,
                "naming": naming, "title": d["title"], "kind": d["kind"], "topic": d.get("topic"),
                "context": it["context"]}

    kinds = sorted({it["doc"]["kind"] for it in items})
    rng.shuffle(kinds)
    by_kind: dict[str, list[dict]] = {}
    for it in items:
        by_kind.setdefault(it["doc"]["kind"], []).append(it)
    # held-out kinds first, from kinds nothing else trains on, until they hold n_held facts
    unseen_kind: list[dict] = []
    held_kinds: set[str] = set()
    for k in kinds:
        if len(unseen_kind) >= n_held:
            break
        if k in trained_kinds:
            continue
        held_kinds.add(k)
        unseen_kind += by_kind[k]
    rest = [it for it in items if it["doc"]["kind"] not in held_kinds]
    rng.shuffle(rest)
    train = rest[:n_train]
    if len(train) < n_train or len(unseen_kind) < n_held:
        raise ValueError(f"the knowledge base states too few facts for {n_train} training and {n_held} held-out "
                         f"fact questions per split ({len(items)} facts in {len(kinds)} kinds); lower "
                         "fact-questions/heldout-facts or widen the topics")
    train_docs = {it["doc"]["id"] for it in train}
    kinds_trained = {it["doc"]["kind"] for it in train}
    others = [it for it in rest[n_train:] if it["doc"]["id"] not in train_docs and it["doc"]["kind"] in kinds_trained]
    unseen = others[:n_held]
    if len(unseen) < n_held:
        raise ValueError(f"only {len(unseen)} facts of trained kinds are left for the unseen-fact split (need "
                         f"{n_held}); lower heldout-facts or fact-questions, or widen the topics")
    out: dict[str, list[dict]] = {"train": [], "fact_paraphrase": [], "fact_unseen": [], "fact_unseen_kind": [],
                                  "pool": []}
    for it in train:
        first = it["combos"][0]
        out["train"].append(row(it, first, "train"))
        para = next((c for c in it["combos"][1:] if c[0] != first[0] and c[1] != first[1]), None)
        if para is not None:
            out["fact_paraphrase"].append(row(it, para, "fact_paraphrase"))
        # later cycles may train on these: none shares the held-out paraphrase's template or naming
        out["pool"] += [{**row(it, c, "pool"), "origin": "trained"} for c in it["combos"][1:]
                        if para is None or (c[0] != para[0] and c[1] != para[1])]
    out["fact_unseen"] = [row(it, it["combos"][0], "fact_unseen") for it in unseen]
    out["fact_unseen_kind"] = [row(it, it["combos"][0], "fact_unseen_kind")
                               for it in rng.sample(unseen_kind, n_held)]
    # new facts for later cycles: never of a document that a held-out unseen fact comes from
    unseen_docs = {it["doc"]["id"] for it in unseen}
    new = [it for it in others[n_held:] if it["doc"]["id"] not in unseen_docs]
    out["pool"] += [{**row(it, it["combos"][0], "pool"), "origin": "new"} for it in new[:max_new]]
    return out


def run(cfg: FactsConfig) -> dict:
    import time

    from steps.k8s_reference import load_k8s_files
    from steps.nli_data import reference_docs

    unknown = sorted(set(cfg.facts) - set(FACTS))
    if unknown:
        raise ValueError(f"facts: {unknown} unknown; choose among {', '.join(FACTS)}")
    t0 = time.monotonic()
    docs = reference_docs(load_k8s_files(cfg.k8s_source))
    if cfg.kb is not None:
        from steps.harvest import read_kb

        keep = {d["id"] for d in read_kb(cfg.kb, ("id",))}
        docs = [d for d in docs if d["id"] in keep]
    rows = fact_rows(docs, cfg)
    if not rows:
        raise ValueError("no field document states any of the facts asked for; widen facts or the kb's topics")
    counts = {"questions": len(rows), "documents": len({r["doc_id"] for r in rows}),
              "by_fact": {f: sum(r["fact"] == f for r in rows) for f in cfg.facts},
              "by_naming": {n: sum(r["naming"] == n for r in rows) for n in NAMINGS}}
    with atomic_path(cfg.out, is_dir=True) as tmp:
        write_jsonl(tmp / "questions.jsonl", rows)
        write_manifest(tmp, "facts", cfg, counts=counts, timings={"total": round(time.monotonic() - t0, 3)},
                       packages=["kubernetes"])
    return {"out": str(cfg.out), **counts}


if __name__ == "__main__":
    main(FactsConfig, run, __doc__)
