"""Smoke-test a deployed NLI service through its Service URL, after a rollout.

1. Wait until every answer of /model/info, `consecutive` times in a row, comes from the expected
   version (the rollout's condition cannot compare the Deployment's status fields with each other,
   so old pods may still answer right after it; behind a Service each request may hit any pod).
2. POST /predict with a known pair: the test pair the fine-tuned model got right with the highest
   confidence in the evaluation. The service must return the same label, with a confidence within
   `tolerance` of the evaluation's (the same weights, batched differently).
3. POST /predict/batch with one pair per gold label and compare each with the evaluation.

Writes smoke.json (what was asked, what came back, timings) to `out`; fails on any mismatch.

    python -m steps.nli_smoke --url http://kubellm-nli --version nli-abc12 \\
        --data runs/nli/data --report runs/nli/report --out /tmp/smoke
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import BaseModel, Field

from steps._io import read_jsonl, write_json

LABELS = ("entailment", "neutral", "contradiction")


class SmokeFailed(ValueError):
    """The service did not answer as the evaluation says it should (a ValueError: the step's CLI
    prints the message alone, and the node fails)."""


class NliSmokeConfig(BaseModel):
    url: str = Field(description="base URL of the service (a cluster Service, e.g. http://kubellm-nli)")
    version: str = Field("", description="the model version the service must report (its folder name); "
                                         "empty: any")
    data: str = Field(description="steps.nli_data output folder (the evaluated split's pairs)")
    report: str = Field(description="steps.nli_evaluate report folder (predictions.jsonl, report.json)")
    out: str = Field(description="folder for smoke.json")
    timeout_s: float = Field(600.0, gt=0, description="give up waiting for the version after this long")
    consecutive: int = Field(10, ge=1, description="answers in a row from the expected version before the checks")
    tolerance: float = Field(0.02, ge=0, le=1, description="largest confidence difference from the evaluation")


def known_pairs(data: Path, report: Path) -> tuple[dict, list[dict]]:
    """(the most confident correct pair, one correct pair per gold label where there is one), with the
    evaluation's predictions, from the report and the split it scored."""
    rep = json.loads((report / "report.json").read_text())
    split = data / f"{rep.get('split', 'test')}.jsonl" if data.is_dir() else data
    rows = {str(r.get("id", i)): r for i, r in enumerate(read_jsonl(split))}
    right = []
    for i, p in enumerate(read_jsonl(report / "predictions.jsonl")):
        row = rows.get(str(p.get("id", i)))
        if row is not None and p["finetuned"]["label"] == p["label"]:
            right.append({"premise": row["premise"], "hypothesis": row["hypothesis"], "label": p["label"],
                          "expected": p["finetuned"]})
    if not right:
        raise ValueError(f"{report}: the fine-tuned model got no pair of {split} right; nothing known to check")
    right.sort(key=lambda r: -r["expected"]["confidence"])
    per_label = [next(r for r in right if r["label"] == lab) for lab in LABELS if any(r["label"] == lab for r in right)]
    return right[0], per_label


def _compare(pair: dict, got: dict, tolerance: float) -> str | None:
    want = pair["expected"]
    if got.get("label") != want["label"]:
        return f"label {got.get('label')!r}, the evaluation predicted {want['label']!r} (gold {pair['label']!r})"
    if abs(float(got.get("confidence", -1)) - want["confidence"]) > tolerance:
        return f"confidence {got.get('confidence')} vs {want['confidence']:.4f} in the evaluation (tolerance {tolerance})"
    return None


def run(cfg: NliSmokeConfig) -> dict:
    import httpx

    from steps.client import local_url

    base = local_url(cfg.url.rstrip("/")).rstrip("/")
    one, per_label = known_pairs(Path(cfg.data), Path(cfg.report))
    t0 = time.monotonic()
    streak, seen, last = 0, set(), ""
    with httpx.Client(timeout=30.0) as http:
        while streak < cfg.consecutive:
            if time.monotonic() - t0 > cfg.timeout_s:
                raise SmokeFailed(f"{base}: no {cfg.consecutive} answers in a row from version {cfg.version!r} "
                                   f"within {cfg.timeout_s:.0f} s (versions seen: {sorted(seen) or 'none'}; last: {last})")
            try:
                r = http.get(f"{base}/model/info")
                info = r.json() if r.status_code == 200 else {}
                last = f"HTTP {r.status_code}"
            except (httpx.HTTPError, ValueError) as e:
                info, last = {}, f"{type(e).__name__}: {e}"
            version = ((info.get("metrics") or {}).get("version")) or Path(str(info.get("path", ""))).name
            if info:
                seen.add(version)
            if info and (not cfg.version or version == cfg.version):
                streak += 1
                continue
            streak = 0
            time.sleep(2.0)
        waited = time.monotonic() - t0
        r = http.post(f"{base}/predict", json={"premise": one["premise"], "hypothesis": one["hypothesis"]})
        problems = [] if r.status_code == 200 else [f"/predict answered HTTP {r.status_code}: {r.text[:300]}"]
        single = r.json() if r.status_code == 200 else {}
        if not problems and (p := _compare(one, single, cfg.tolerance)):
            problems.append(f"/predict: {p}")
        r = http.post(f"{base}/predict/batch", json={"pairs": [{"premise": p["premise"], "hypothesis": p["hypothesis"]}
                                                               for p in per_label]})
        batch = r.json().get("predictions", []) if r.status_code == 200 else []
        if r.status_code != 200:
            problems.append(f"/predict/batch answered HTTP {r.status_code}: {r.text[:300]}")
        for pair, got in zip(per_label, batch):
            if p := _compare(pair, got, cfg.tolerance):
                problems.append(f"/predict/batch, the {pair['label']} pair: {p}")
    result = {"url": cfg.url, "reached_as": base, "version": cfg.version or None, "waited_s": round(waited, 1),
              "predict": {"pair": one, "answer": single},
              "batch": [{"pair": p, "answer": g} for p, g in zip(per_label, batch)], "problems": problems,
              "ok": not problems}
    write_json(Path(cfg.out) / "smoke.json", result)
    if problems:
        raise SmokeFailed("smoke test failed: " + "; ".join(problems))
    print(f"smoke test passed: {base} serves version {cfg.version or '(any)'}; /predict -> {single['label']} "
          f"({single['confidence']:.3f}), /predict/batch {len(batch)} pairs agree with the evaluation")
    return {"ok": True, "waited_s": result["waited_s"]}


if __name__ == "__main__":
    from steps._cli import main

    main(NliSmokeConfig, run, __doc__)
