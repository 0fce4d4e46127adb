"""Retrieval quality on the whole v1.28 reference: hybrid, dense and BM25 side by side.

Harvests the reference (every topic), indexes it at the defaults (steps.index), writes fact
questions whose source document is known (steps.facts, sampled with the seed), and runs
steps.retrieval_eval on them; with --questions, also on other question files (e.g. the teacher's
train.jsonl and heldout.jsonl of a distill run). The three retrievers rank the same chunks in the
same run, so the differences are paired; retrieval_eval gives their bootstrap CIs against BM25.

    python -m benchmarks.bench_retrieval --out benchmarks/results
    python -m benchmarks.bench_retrieval --out benchmarks/results \\
        --questions runs/demo/nodes/generate/artifacts/data/heldout.jsonl runs/demo/nodes/generate/artifacts/data/train.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.record import Run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="folder for the result file")
    ap.add_argument("--facts", type=int, default=400, help="fact questions sampled")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--questions", nargs="*", default=[], help="more question files (question + doc_id per line)")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args(argv)

    from steps import facts, harvest, index, retrieval_eval

    with Run("bench_retrieval", args.out, args) as run, tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        t = time.monotonic()
        harvest.run(harvest.HarvestConfig(out=work / "kb"))
        run.results["harvest_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        ix = index.run(index.IndexConfig(kb=work / "kb", out=work / "index"))
        run.results["index"] = {k: ix[k] for k in ("docs", "chunks", "mean_words", "truncated_at_max_seq_length")}
        run.results["index"]["wall_s"] = round(time.monotonic() - t, 1)
        fr = facts.run(facts.FactsConfig(out=work / "facts", kb=work / "kb", max_questions=args.facts, seed=args.seed))
        run.results["facts"] = {k: fr[k] for k in ("questions", "documents", "by_fact", "by_naming")}
        sets = {"facts": [work / "facts" / "questions.jsonl"]}
        if args.questions:
            sets["given"] = [Path(q) for q in args.questions]
        for name, files in sets.items():
            res = retrieval_eval.run(retrieval_eval.RetrievalEvalConfig(
                index=work / "index", questions=files, out=work / f"eval-{name}", seed=args.seed))
            m = json.loads((work / f"eval-{name}" / "metrics.json").read_text())
            run.results[f"retrieval_{name}"] = {"files": [str(f) for f in files],
                                                **{k: v for k, v in m.items() if k != "per_question"}}
            print(name, {k: res[k] for k in ("hybrid", "dense", "bm25")})
            run.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
