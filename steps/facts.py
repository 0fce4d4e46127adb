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
        return answer in hits and len(hits) == 1 or (answer == "list of strings" and "list of strings" in hits)
    if fact == "required":
        optional = bool(_NEGATED_REQUIRED.search(text))
        required = bool(re.search(r"\brequired\b|\bmust be (?:set|given|specified|present)\b|\bmandatory\b", text, re.I))
        return (answer == "optional" and optional) or (answer == "required" and required and not optional)
    if re.fullmatch(r"-?\d+(?:\.\d+)?", answer.split()[0] if answer.split() else ""):
        n = float(answer.split()[0])
        return any(float(x) == n for x in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]*\d)", text))
    return re.search(rf"(?<![\w-]){re.escape(answer)}(?![\w-])", text, re.I) is not None


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
