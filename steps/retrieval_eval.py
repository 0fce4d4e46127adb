"""Retrieval evaluation: hybrid, dense (FAISS + MiniLM) and BM25 over the same chunks, side by side.

Questions are JSONL rows with `question` and the id of the document they were written from
(`doc_id_field`, default `doc_id` as steps.generate writes it in train.jsonl and heldout.jsonl).
Three retrievers rank the chunks of one steps.index folder (steps.index.LoadedIndex.rank): dense
(MiniLM cosine), BM25 (bm25s, Lucene variant, k1=1.5, b=0.75, over the same `title + newline +
chunk` text; chunks with score 0 share no term with the question and are not retrieved) and hybrid,
the reciprocal rank fusion of the two (the default of steps.index.search and of the query step).
Each ranking becomes a ranking of documents (a document takes the rank of its best chunk). At
document level, per question:

  hit@k   1 if the source document is among the first k distinct documents, else 0
  RR      1 / (rank of the source document) within the first max(ks) documents, else 0

recall@k is the mean of hit@k over questions, MRR the mean of RR (so MRR@10 with the default ks).
The differences of recall@5, hybrid minus BM25 and dense minus BM25, get paired bootstrap 95% CIs
over questions (resampled with `seed`).

Output folder: metrics.json (per-method numbers, the CI, per-question ranks), report.md, manifest.json.

Examples:
  python -m steps.retrieval_eval --index runs/index --questions runs/data/heldout.jsonl --out runs/retrieval
  python -m steps.retrieval_eval --index runs/index --questions q.jsonl --doc-id-field source --out runs/r
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from steps._cli import main
from steps._io import atomic_path, read_jsonl, write_json, write_manifest, write_text
from steps.index import METHODS, load_index


class RetrievalEvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: Path = Field(description="steps.index output folder")
    questions: list[Path] = Field(description="JSONL file(s) with a question and its source document id per line")
    out: Path = Field(description="output folder: metrics.json, report.md, manifest.json")
    doc_id_field: str = Field(default="doc_id", description="field of a question row naming its source document")
    question_field: str = Field(default="question", description="field of a question row holding the question")
    ks: list[int] = Field(default=[1, 3, 5, 10], description="cut-offs for recall@k (documents)")
    bootstrap: int = Field(default=10000, ge=100, description="bootstrap resamples for the recall@5 difference CI")
    seed: int = Field(default=0, description="bootstrap seed")

    @field_validator("questions", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, (str, Path)) else v

    @field_validator("ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("ks must be positive integers, e.g. [1, 3, 5, 10]")
        return sorted(set(v))


def read_questions(paths: list[Path], question_field: str, id_field: str) -> list[dict]:
    rows = []
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"questions file {path} does not exist; give steps.generate's heldout.jsonl or a "
                             f"JSONL file with {question_field!r} and {id_field!r} per line")
        for i, r in enumerate(read_jsonl(path), 1):
            for f in (question_field, id_field):
                if not isinstance(r.get(f), str) or not r[f].strip():
                    raise ValueError(f"{path}: line {i} has no {f!r} field (keys: {sorted(r)}); set "
                                     f"{'question_field' if f == question_field else 'doc_id_field'} to the "
                                     "field that holds it")
            rows.append({"question": r[question_field], "doc_id": r[id_field], "file": str(path), "line": i})
    if not rows:
        raise ValueError(f"no questions in {', '.join(map(str, paths))}")
    return rows


def doc_ranking(ranked: list[tuple[int, float]], chunks: list[dict], depth: int) -> list[str]:
    """Distinct document ids in order of their best chunk, at most depth."""
    seen: list[str] = []
    for i, _ in ranked:
        d = chunks[i]["doc_id"]
        if d not in seen:
            seen.append(d)
            if len(seen) == depth:
                break
    return seen


def score(ranked_docs: list[list[str]], gold: list[str], ks: list[int]) -> tuple[dict, list[int | None]]:
    ranks = [r.index(g) + 1 if g in r else None for r, g in zip(ranked_docs, gold)]
    n = len(gold)
    m = {f"recall@{k}": sum(1 for x in ranks if x is not None and x <= k) / n for k in ks}
    m[f"mrr@{max(ks)}"] = sum(1.0 / x for x in ranks if x is not None) / n
    return m, ranks


def paired_bootstrap(diffs: list[float], n: int, seed: int) -> dict:
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(d.mean()), "ci95": [float(lo), float(hi)], "resamples": n, "seed": seed}


LABELS = {"hybrid": "hybrid (reciprocal rank fusion of the two below)",
          "dense": "dense (MiniLM, FAISS exact cosine)", "bm25": "BM25 (bm25s, same chunks)"}


def run(cfg: RetrievalEvalConfig) -> dict:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    qs = read_questions(cfg.questions, cfg.question_field, cfg.doc_id_field)
    idx = load_index(cfg.index)
    chunks = idx.chunks
    known = {c["doc_id"] for c in chunks}
    missing = sorted({q["doc_id"] for q in qs} - known)
    if missing:
        raise ValueError(f"{len(missing)} question(s) name documents that are not in {cfg.index} (e.g. "
                         f"{missing[:3]}); index the harvest the questions were generated from")
    depth = max(cfg.ks)
    gold = [q["doc_id"] for q in qs]
    # deep enough in chunks that `depth` distinct documents almost always appear
    n_chunks = min(len(chunks), depth * 8)
    texts = [q["question"] for q in qs]

    metrics_by: dict[str, dict] = {}
    ranks_by: dict[str, list] = {}
    for method in METHODS:
        t = time.monotonic()
        ranked = idx.rank(texts, n_chunks, method)
        timings[method] = round(time.monotonic() - t, 3)
        metrics_by[method], ranks_by[method] = score([doc_ranking(r, chunks, depth) for r in ranked], gold, cfg.ks)

    k5 = 5 if 5 in cfg.ks else depth

    def hit(r):
        return float(r is not None and r <= k5)

    cis = {f"recall@{k5}_{a}_minus_bm25": paired_bootstrap(
        [hit(x) - hit(y) for x, y in zip(ranks_by[a], ranks_by["bm25"])], cfg.bootstrap, cfg.seed)
        for a in ("hybrid", "dense")}
    metrics = {
        "questions": len(qs),
        "docs_indexed": len(known),
        "chunks": len(chunks),
        "level": "document (a hit is any retrieved chunk of the source document)",
        **metrics_by,
        **cis,
        "per_question": [{"doc_id": g, "question": q["question"], **{f"{m}_rank": ranks_by[m][j] for m in METHODS}}
                         for j, (q, g) in enumerate(zip(qs, gold))],
    }
    names = list(metrics_by["dense"])
    lines = [
        "# Retrieval: hybrid, dense and BM25",
        "",
        f"Index `{cfg.index}` ({len(chunks)} chunks of {len(known)} documents, {idx.config.get('model')}); "
        f"{len(qs)} questions from {', '.join(f'`{p}`' for p in cfg.questions)} (source document field "
        f"`{cfg.doc_id_field}`). Document level: a hit is any retrieved chunk of the source document.",
        "",
        "| method | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *("| " + LABELS[m] + " | " + " | ".join(f"{metrics_by[m][k]:.3f}" for k in names) + " |" for m in METHODS),
        "",
        *(f"recall@{k5} {a} minus BM25: {ci['mean']:+.3f}, paired bootstrap 95% CI [{ci['ci95'][0]:+.3f}, "
          f"{ci['ci95'][1]:+.3f}] ({ci['resamples']} resamples over questions, seed {ci['seed']})."
          for a, ci in zip(("hybrid", "dense"), cis.values())),
        "",
    ]
    with atomic_path(cfg.out, is_dir=True) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_text(tmp / "report.md", "\n".join(lines))
        timings["total"] = round(time.monotonic() - t0, 3)
        write_manifest(tmp, "retrieval_eval", cfg, counts={"questions": len(qs), "chunks": len(chunks)},
                       timings=timings, packages=["bm25s", "faiss-cpu", "sentence-transformers", "numpy"],
                       extra={"index_config": idx.config})
    return {"out": str(cfg.out), "questions": len(qs), **{m: metrics_by[m] for m in METHODS}, **cis}


if __name__ == "__main__":
    main(RetrievalEvalConfig, run, __doc__)
