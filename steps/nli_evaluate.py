"""nli_evaluate: zero-shot vs fine-tuned NLI on the same test split, with the numbers that say
whether the fine-tuned model is better and whether its confidence can be trusted.

Both models predict every test pair the same way (steps.nli_model: the three label words scored as
whole continuations; confidence = softmax over the three). Reported for each model: accuracy,
macro-F1, per-class precision/recall/F1, the confusion matrix, and calibration (expected calibration
error over equal-width confidence bins, and a reliability plot). The headline is the paired
difference in accuracy, fine-tuned minus zero-shot, with a paired bootstrap 95% CI over test pairs.

Writes report.json, report.md, report.html, report.png and predictions.jsonl.

    python -m steps.nli_evaluate --data runs/nli/data --zero-shot smollm2-135m \\
        --finetuned runs/nli/finetune/merged --out runs/nli/report
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from pydantic import BaseModel, Field

from steps._io import Progress, atomic_path, package_versions, read_jsonl, write_json, write_jsonl, write_metrics, \
    write_text

LABELS = ("entailment", "neutral", "contradiction")


class NliEvaluateConfig(BaseModel):
    data: str = Field(description="steps.nli_data output folder (or a JSONL file of premise/hypothesis/label)")
    split: str = Field("test", description="which split file of `data` to score (test.jsonl)")
    zero_shot: str = Field(description="the model before fine-tuning: bundled name, folder or hub ID")
    finetuned: str = Field(description="the fine-tuned model: a folder (merged model, or a LoRA adapter)")
    out: str = Field(description="report folder")
    limit: int = Field(0, ge=0, description="score only the first N pairs (0 = all)")
    batch_size: int = Field(16, ge=1, description="pairs per forward pass")
    bins: int = Field(10, ge=2, le=50, description="confidence bins for the calibration error")
    bootstrap: int = Field(10000, ge=100, description="bootstrap resamples for the CI")
    seed: int = Field(0, ge=0, description="bootstrap seed")
    metrics_dir: str | None = Field(None, description="write summary numbers here, one file each (Argo output parameters)")


# ------------------------------------------------------------------------------------------ metrics

def classification(gold: list[str], pred: list[str], labels: tuple[str, ...] = LABELS) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows: gold)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    idx = {lab: i for i, lab in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred):
        if g not in idx:
            raise ValueError(f"gold label {g!r} is not one of {list(labels)}")
        matrix[idx[g]][idx[p]] += 1
    per_class = {}
    for lab, i in idx.items():
        tp = matrix[i][i]
        predicted = sum(row[i] for row in matrix)
        actual = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[lab] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    n = len(gold)
    return {"n": n, "accuracy": sum(matrix[i][i] for i in range(len(labels))) / n if n else None,
            "macro_f1": sum(c["f1"] for c in per_class.values()) / len(labels),
            "per_class": per_class, "confusion": {"labels": list(labels), "matrix": matrix}}


def calibration(confidence: list[float], correct: list[bool], bins: int = 10) -> dict:
    """Expected calibration error over `bins` equal-width confidence bins, and each bin's mean
    confidence and accuracy (the reliability diagram). A bin's weight is its share of the pairs."""
    n = len(confidence)
    rows = []
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence) if (lo < c <= hi) or (b == 0 and c == 0.0)]
        if not members:
            rows.append({"lo": lo, "hi": hi, "n": 0, "confidence": None, "accuracy": None})
            continue
        conf = sum(confidence[i] for i in members) / len(members)
        acc = sum(correct[i] for i in members) / len(members)
        ece += len(members) / n * abs(acc - conf)
        rows.append({"lo": lo, "hi": hi, "n": len(members), "confidence": conf, "accuracy": acc})
    return {"ece": ece if n else None, "bins": rows}


# ------------------------------------------------------------------------------------------ the step

def _pairs(cfg: NliEvaluateConfig) -> list[dict]:
    src = Path(cfg.data)
    path = src / f"{cfg.split}.jsonl" if src.is_dir() else src
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give an nli_data output folder or a JSONL file")
    rows = read_jsonl(path)
    for i, r in enumerate(rows, 1):
        for k in ("premise", "hypothesis", "label"):
            if not isinstance(r.get(k), str) or not r[k].strip():
                raise ValueError(f"{path}: row {i} has no {k!r}; every row needs premise, hypothesis and label")
        if r["label"] not in LABELS:
            raise ValueError(f"{path}: row {i} has label {r['label']!r}; labels are {', '.join(LABELS)}")
    if not rows:
        raise ValueError(f"{path} holds no pairs")
    return rows[: cfg.limit] if cfg.limit else rows


def _predict(model_name: str, rows: list[dict], batch_size: int, what: str) -> tuple[list[dict], dict]:
    from steps.nli_model import load

    model = load(model_name)
    progress = Progress(len(rows), f"nli_evaluate {what}")
    out: list[dict] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        out += model.predict([(r["premise"], r["hypothesis"]) for r in chunk])
        progress.advance(len(chunk))
    return out, model.info()


def _summary(rows: list[dict], preds: list[dict], bins: int) -> dict:
    gold = [r["label"] for r in rows]
    labels = [p["label"] for p in preds]
    summary = classification(gold, labels)
    summary["calibration"] = calibration([p["confidence"] for p in preds], [g == p for g, p in zip(gold, labels)], bins)
    return summary


def _plot(result: dict, path: Path) -> None:
    from steps.report import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key in zip(axes[:2], ("zero_shot", "finetuned")):
        m = result[key]["confusion"]["matrix"]
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(3), LABELS, rotation=20)
        ax.set_yticks(range(3), LABELS)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(f"{key.replace('_', '-')}: accuracy {result[key]['accuracy']:.3f}")
        for i in range(3):
            for j in range(3):
                ax.text(j, i, str(m[i][j]), ha="center", va="center")
    ax = axes[2]
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    for key in ("zero_shot", "finetuned"):
        b = [x for x in result[key]["calibration"]["bins"] if x["n"]]
        ax.plot([x["confidence"] for x in b], [x["accuracy"] for x in b], marker="o",
                label=f"{key.replace('_', '-')} (ECE {result[key]['calibration']['ece']:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _blocks(result: dict) -> list[tuple]:
    d = result["finetuned_minus_zero_shot"]
    fmt = lambda x: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"  # noqa: E731
    rows = []
    for key in ("zero_shot", "finetuned"):
        s = result[key]
        rows.append([key.replace("_", "-"), result["models"][key]["name"], fmt(s["accuracy"]), fmt(s["macro_f1"]),
                     fmt(s["calibration"]["ece"])])
    per_class = [[lab] + [fmt(result[k]["per_class"][lab][m]) for k in ("zero_shot", "finetuned")
                          for m in ("precision", "recall", "f1")] for lab in LABELS]
    return [
        ("h1", "NLI evaluation: zero-shot vs fine-tuned"),
        ("p", result["verdict"]),
        ("p", f"{result['n']} pairs of {result['data']} ({result['split']} split); paired bootstrap over pairs, "
              f"{result['bootstrap']} resamples."),
        ("table", ["model", "name", "accuracy", "macro-F1", "ECE"], rows),
        ("h2", "Per class"),
        ("table", ["label", "zero-shot P", "zero-shot R", "zero-shot F1", "fine-tuned P", "fine-tuned R",
                   "fine-tuned F1"], per_class),
        ("h2", "Confusion matrices and reliability"),
        ("img", "report.png", "confusion matrices and reliability diagram"),
        ("p", f"Accuracy difference {fmt(d['mean'])}, 95% CI [{fmt(d['ci95'][0])}, {fmt(d['ci95'][1])}]."),
    ]


def run(cfg: NliEvaluateConfig) -> dict:
    from steps.evaluate import paired_bootstrap
    from steps.report import render_html, render_md

    t0 = time.monotonic()
    rows = _pairs(cfg)
    preds, infos = {}, {}
    for key, name in (("zero_shot", cfg.zero_shot), ("finetuned", cfg.finetuned)):
        preds[key], infos[key] = _predict(name, rows, cfg.batch_size, key)
    result: dict = {"data": cfg.data, "split": cfg.split, "n": len(rows), "bootstrap": cfg.bootstrap,
                    "labels": list(LABELS), "models": infos}
    for key in preds:
        result[key] = _summary(rows, preds[key], cfg.bins)
    diffs = [float(f["label"] == r["label"]) - float(z["label"] == r["label"])
             for r, z, f in zip(rows, preds["zero_shot"], preds["finetuned"])]
    d = result["finetuned_minus_zero_shot"] = paired_bootstrap(diffs, cfg.bootstrap, cfg.seed)
    better = "beats" if d["excludes_zero"] and d["mean"] > 0 else \
        "is worse than" if d["excludes_zero"] else "is not distinguishable from"
    result["verdict"] = (f"fine-tuned {better} zero-shot: accuracy {result['finetuned']['accuracy']:.3f} vs "
                         f"{result['zero_shot']['accuracy']:.3f}, difference {d['mean']:+.3f}, 95% CI "
                         f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
    result["versions"] = package_versions(["torch", "transformers", "peft"])
    result["timings_s"] = {"wall": time.monotonic() - t0}
    per_pair = [{"id": r.get("id", i), "label": r["label"], "zero_shot": z, "finetuned": f}
                for i, (r, z, f) in enumerate(zip(rows, preds["zero_shot"], preds["finetuned"]))]
    with atomic_path(Path(cfg.out), is_dir=True) as tmp:
        _plot(result, tmp / "report.png")
        blocks = _blocks(result)
        write_text(tmp / "report.md", render_md(blocks))
        write_text(tmp / "report.html", render_html(blocks, tmp))
        write_jsonl(tmp / "predictions.jsonl", per_pair)
        write_json(tmp / "report.json", result)
    write_metrics(cfg.metrics_dir, {"accuracy": result["finetuned"]["accuracy"],
                                    "zero_shot_accuracy": result["zero_shot"]["accuracy"], "accuracy_diff": d["mean"]})
    print(result["verdict"])
    return {"verdict": result["verdict"], "finetuned_accuracy": result["finetuned"]["accuracy"],
            "zero_shot_accuracy": result["zero_shot"]["accuracy"]}


if __name__ == "__main__":
    from steps._cli import main

    main(NliEvaluateConfig, run, __doc__)
