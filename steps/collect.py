"""collect: gather one experiment's step outputs into the published layout, a manifest and a report.

For every model and study the pipeline leaves three step folders under the experiment root:

    <root>/<slug>/<timestamp>/<study>/raw/             steps.query          answers.jsonl + <slug>_<study>_raw_responses.csv
    <root>/<slug>/<timestamp>/<study>/structured/      steps.extract        extracted.jsonl + <slug>_<study>_structured.csv
    <root>/<slug>/<timestamp>/<study>/probabilities/   steps.probabilities  probabilities.jsonl + <slug>_<study>_probabilities.csv

A step folder counts only when its manifest.json exists (the step finished) and the CSV it lists is
unchanged. This step then

1. refuses to go on while any of them is missing or incomplete, naming every one
   (`allow_missing=true` reports without them and records them as missing);
2. publishes each CSV next to the study folders, `<root>/<slug>/<timestamp>/<slug>_<study>_<kind>.csv`
   (copied under a temp name and renamed), so `{experiment}/{model}/{timestamp}/` holds the results
   (`publish_root` puts them in another tree: on Argo the root is a read-only input artifact and the
   published files an output artifact with the same key);
3. writes `<out>/manifest.json`: models (endpoints, served names, server versions), studies (prompt
   templates, system prompt, sampling, candidates, schema, input hashes), per model x study counts,
   failures, timings, the union of the steps' package versions and the sha256 of every published CSV;
4. writes `<out>/report.md`, a self-contained `<out>/report.html` (images inline), `<out>/report.json`
   (the report's tables as records, among them the failed rows per model, study and step as each
   step's manifest counts them), the PNG figures and `<out>/matrices.json`, the exact numbers behind
   the figures.

Model slugs: a model name becomes a folder name with `slug()`: `/` -> `--`, `:` -> `-`
(`google/gemma-2-2b-it` -> `google--gemma-2-2b-it`); the same rule as steps.plan, which names the folders.

    python -m steps.collect --root runs/exp1 --prepared runs/exp1/prepared --experiment exp1 \\
        --timestamp 20261123T101500Z --models '["smollm2-135m", "google/gemma-2-2b-it"]' \\
        --studies study1,study2 --out runs/exp1/report
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steps.plan import slug  # one naming rule for plan and collect
from steps.report import plot_expected, plot_grouped_bars, plot_heatmaps, render_html, render_md
from steps._io import (MANIFEST, Progress, atomic_path, package_versions, read_jsonl, sha256_file, write_json,
                       write_metrics, write_text)

# step folder -> (step name in the manifest, kind in the published CSV name, the step's row file)
STEPS = {
    "raw": ("query", "raw_responses", "answers.jsonl"),
    "structured": ("extract", "structured", "extracted.jsonl"),
    "probabilities": ("probabilities", "probabilities", "probabilities.jsonl"),
}
_LIST_CAP = 100  # failed rows listed by id in the manifest per model x study and step




def _name_list(raw: Any, what: str) -> Any:
    # a JSON list (what Argo parameters carry) or comma-separated names (what people type)
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{what} {raw!r} starts like a JSON list but is not valid JSON ({e.msg})") from e
        return [p.strip() for p in text.split(",") if p.strip()]
    return raw


def _plain_slug(name: str) -> bool:
    try:
        return slug(name) == name  # slug() leaves a plain name as it is and refuses a bad one
    except ValueError:
        return False


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="allow")  # endpoint, url, ... are kept in the manifest as given
    name: str = Field(description="model name (bundled name, hub ID, openai:MODEL)")
    slug: str | None = Field(None, description="folder name of the model's outputs (default: slug(name))")


class CollectConfig(BaseModel):
    root: str = Field(description="experiment root folder: <root>/<slug>/<timestamp>/<study>/{raw,structured,probabilities}")
    publish_root: str | None = Field(None, description="where the CSVs are published, as <publish_root>/<slug>/<timestamp>/"
                                     "<slug>_<study>_<kind>.csv (default: root)")
    prepared: str = Field(description="prepared studies folder (steps.study output per study: <prepared>/<study>/)")
    experiment: str = Field(description="experiment name, for the manifest and the report")
    timestamp: str = Field(description="the run's timestamp folder name, e.g. 20261123T101500Z")
    models: list[ModelSpec] = Field(description="models: a JSON list (or comma-separated names); items are names or "
                                    "objects {name, slug, ...}; a missing slug is slug(name), '/' -> '--'")
    studies: list[str] = Field(description="study names: a JSON list or comma-separated, e.g. study1,study2")
    out: str = Field(description="report folder: manifest.json, report.md, report.html, report.json, *.png, "
                     "matrices.json")
    allow_missing: bool = Field(False, description="report without missing or incomplete step folders (recorded as "
                                "missing) instead of failing")
    metrics_dir: str | None = Field(None, description="write summary numbers here, one file each (Argo output parameters)")

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        v = _name_list(v, "models")
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("studies", mode="before")
    @classmethod
    def _studies(cls, v: Any) -> Any:
        return _name_list(v, "studies")

    @model_validator(mode="after")
    def _check(self) -> "CollectConfig":
        if not self.models:
            raise ValueError("models is empty; name at least one model")
        if not self.studies:
            raise ValueError("studies is empty; name at least one study")
        for m in self.models:
            m.slug = m.slug or slug(m.name)
            if not _plain_slug(m.slug):
                raise ValueError(f"model {m.name!r}: slug {m.slug!r} is not a plain folder name (try {slug(m.name)!r})")
        for what, names in (("model slugs", [m.slug for m in self.models]), ("studies", self.studies)):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} repeat: {dup}; each must appear once")
        for what, name in [("timestamp", self.timestamp)] + [("study", s) for s in self.studies]:
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"{what} {name!r} must be a single folder name")
        return self


# ----------------------------------------------------------------------------- finding the step folders


def _read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def check_step(folder: Path, expected_csv: str) -> tuple[dict | None, Path | None, str | None]:
    """(manifest, CSV path, None) for a finished step folder, or (None, None, what is wrong)."""
    if not folder.is_dir():
        return None, None, "folder missing (the step never ran or wrote elsewhere)"
    if not (folder / MANIFEST).exists():
        return None, None, "incomplete: no manifest.json (the step did not finish; re-run it)"
    try:
        man = _read_manifest(folder)
    except (OSError, ValueError) as e:
        return None, None, f"manifest.json is unreadable ({e})"
    name = (man.get("config") or {}).get("csv_name") or expected_csv
    csv_path = folder / name
    if not csv_path.exists():
        return None, None, f"no CSV {name} (run the step with csv_name={expected_csv})"
    recorded = ((man.get("files") or {}).get(name) or {}).get("sha256")
    if recorded and recorded != sha256_file(csv_path):
        return None, None, f"{name} changed after the step wrote it (sha256 differs from its manifest); re-run the step"
    return man, csv_path, None


def load_prepared(prepared: Path, study: str) -> tuple[dict, dict]:
    """(study.json, manifest) of a prepared study; an error says how to make it."""
    folder = prepared / study
    if not (folder / MANIFEST).exists() or not (folder / "study.json").exists():
        raise FileNotFoundError(f"prepared study {folder} is missing or incomplete (no manifest.json/study.json); "
                                f"run `python -m steps.study --study <{study}.yaml> --out {folder}` first")
    return json.loads((folder / "study.json").read_text(encoding="utf-8")), _read_manifest(folder)


def publish(src: Path, dest: Path) -> dict:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return {"bytes": dest.stat().st_size, "sha256": sha256_file(dest)}


# ----------------------------------------------------------------------------- per model x study numbers


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _step_common(man: dict, folder: Path, root: Path) -> dict:
    out = {"folder": str(folder.relative_to(root)), "wall_s": (man.get("timings_s") or {}).get("wall"),
           "endpoint": man.get("endpoint"), "served_model": man.get("served_model"),
           "server_version": man.get("server_version"), "manifest_counts": man.get("counts") or {}}
    if man.get("extractor_model") is not None:
        out["extractor_model"] = man["extractor_model"]
    return out


def _error(text: Any) -> str:
    from steps.client import redact  # a row file from elsewhere may still hold a credential

    return redact(str(text))[:300]


def failed_counts(man: dict) -> dict:
    """A step's failed rows as its own manifest counts them: the numbers the step judged itself by
    against its max_failed_fraction (a row file can be edited; the manifest records the run)."""
    counts = man.get("counts") or {}
    out = {"rows": counts.get("rows"), "failed": counts.get("failed"),
           "max_failed_fraction": (man.get("config") or {}).get("max_failed_fraction")}
    if isinstance(counts.get("failed_by_reason"), dict):
        out["failed_by_reason"] = counts["failed_by_reason"]
    return out


def query_summary(rows: list[dict]) -> dict:
    failed = [r for r in rows if r.get("error")]
    return {"rows": len(rows), "answered": len(rows) - len(failed), "failed": len(failed),
            "failed_rows": [{"id": r.get("id"), "error": _error(r["error"])} for r in failed[:_LIST_CAP]]}


def extract_summary(rows: list[dict], man_counts: dict) -> dict:
    failed = [r for r in rows if not r.get("extract_ok")]
    by_reason = man_counts.get("failed_by_reason")
    if not isinstance(by_reason, dict):  # the step did not count them: group the error texts
        by_reason = dict(Counter(str(r.get("extract_failure") or r.get("extract_error") or "unknown")[:80]
                                 for r in failed))
    return {"rows": len(rows), "valid": len(rows) - len(failed), "failed": len(failed), "failed_by_reason": by_reason,
            "mode_used": man_counts.get("mode_used"),
            "failed_rows": [{"id": r.get("id"), "error": _error(r.get("extract_error"))} for r in failed[:_LIST_CAP]]}


def probabilities_summary(rows: list[dict]) -> dict:
    failed = [r for r in rows if r.get("error")]
    ok = [r for r in rows if not r.get("error")]
    by_q: dict[str, list[float]] = {}
    for r in ok:
        if r.get("coverage") is not None:
            by_q.setdefault(str(r.get("question") or r.get("label") or "items"), []).append(float(r["coverage"]))
    return {"items": len(rows), "scored": len(ok), "failed": len(failed),
            "mean_coverage": _mean([c for cs in by_q.values() for c in cs]),
            "mean_coverage_by_question": {q: _mean(cs) for q, cs in by_q.items()},
            "failed_items": [{"id": r.get("id"), "error": _error(r["error"])} for r in failed[:_LIST_CAP]]}


def union_versions(manifests: list[dict]) -> dict[str, Any]:
    """Package -> version over several manifests; a package seen at different versions lists them all."""
    seen: dict[str, set] = {}
    for man in manifests:
        for k, v in (man.get("versions") or {}).items():
            seen.setdefault(k, set()).add(v)
    out: dict[str, Any] = {}
    for k in sorted(seen):
        vals = sorted((v for v in seen[k] if v is not None), key=str)
        out[k] = None if not vals else vals[0] if len(vals) == 1 else vals
    return out


# ----------------------------------------------------------------------------- the matrices behind the figures


def question_specs(study: dict) -> list[dict]:
    """Each probabilities question of a prepared study: name, candidates (parsed), states, numeric values."""
    from steps.probabilities import candidate_value, parse_candidates

    out = []
    for q in study.get("probabilities") or []:
        cands = parse_candidates(q["candidates"], f"study {study.get('name')}: question {q['name']}")
        values = q.get("values")
        if values is None:
            parsed = [candidate_value(c) for c in cands]
            values = None if any(v is None for v in parsed) else parsed
        out.append({"name": q["name"], "candidates": cands, "states": q.get("states"), "values": values})
    return out


def candidate_grid(candidates: list[str]) -> dict | None:
    """Candidates "<first word> <rest>" that fill a full grid (>= 2 first words x >= 2 rests, each pair
    exactly once): {"rows": first words, "columns": rests, "index": [[candidate index]]}; else None."""
    parts = []
    for c in candidates:
        words = c.strip().split(None, 1)
        if len(words) != 2:
            return None
        parts.append((words[0], words[1]))
    rows = list(dict.fromkeys(p[0] for p in parts))
    cols = list(dict.fromkeys(p[1] for p in parts))
    if len(rows) < 2 or len(cols) < 2 or len(set(parts)) != len(parts) or len(parts) != len(rows) * len(cols):
        return None
    where = {p: i for i, p in enumerate(parts)}
    return {"rows": rows, "columns": cols, "index": [[where[(r, c)] for c in cols] for r in rows]}


def _mean_vector(rows: list[dict]) -> list[float] | None:
    if not rows:
        return None
    return [sum(r["probs"][j] for r in rows) / len(rows) for j in range(len(rows[0]["probs"]))]


def question_matrices(q: dict, rows_by_model: dict[str, list[dict]], warnings: list[str], study: str) -> dict:
    """Mean probabilities of one question per model: a states x candidates matrix (questions with states)
    or a vector over the candidates (plus the grid view when the candidates form one). Failed items and
    items scored over another candidate set are left out; `n` says how many items each mean holds."""
    doc: dict[str, Any] = {"candidates": q["candidates"], "values": q["values"], "models": {}}
    for model, rows in rows_by_model.items():
        mine = []
        for r in rows:
            if r.get("question") != q["name"] or r.get("error"):
                continue
            if list(r.get("candidates") or []) != q["candidates"]:
                warnings.append(f"{model} {study}: item {r.get('id')!r} was scored over other candidates than the "
                                f"study's {q['name']!r} question; left out of the figures")
                continue
            mine.append(r)
        if q["states"]:
            per_state = [[r for r in mine if str(r.get("state")) == str(s)] for s in q["states"]]
            doc["models"][model] = {
                "matrix": [_mean_vector(rs) for rs in per_state], "n": [len(rs) for rs in per_state],
                "expected": [[r["expected"] for r in rs if r.get("expected") is not None] for rs in per_state]}
        else:
            doc["models"][model] = {"mean": _mean_vector(mine), "n": len(mine)}
    if q["states"]:
        doc["kind"], doc["states"] = "states", q["states"]
    else:
        doc["kind"] = "candidates"
        grid = candidate_grid(q["candidates"])
        if grid:
            doc["grid"] = {"rows": grid["rows"], "columns": grid["columns"], "models": {
                m: None if d["mean"] is None else [[d["mean"][i] for i in line] for line in grid["index"]]
                for m, d in doc["models"].items()}}
    return doc


# ----------------------------------------------------------------------------- figures


def make_figures(matrices: dict, results: dict, models: list[ModelSpec], studies: list[str], out: Path) -> list[dict]:
    """Every figure of the report into `out`; returns [{file, title, caption}] in report order."""
    names = {m.slug: m.name for m in models}
    figs: list[dict] = []
    for study in studies:
        for qname, doc in (matrices.get(study) or {}).items():
            base = f"{study}_{qname}"
            if doc["kind"] == "states":
                panels = [(names[m], d["matrix"]) for m, d in doc["models"].items()
                          if any(r is not None for r in d["matrix"])]
                if not panels:
                    continue
                file = f"{base}_heatmap.png"
                title = f"{study} / {qname}: mean probability per state (rows) and candidate (columns)"
                plot_heatmaps(panels, [str(s) for s in doc["states"]], doc["candidates"], title, "state", out / file)
                figs.append({"file": file, "title": title})
                if doc["values"] is not None:
                    series = [(names[m], d["expected"]) for m, d in doc["models"].items()
                              if any(d["expected"])]
                    if series:
                        file = f"{base}_expected.png"
                        title = f"{study} / {qname}: expected value per item, by state"
                        plot_expected(series, [str(s) for s in doc["states"]], title, out / file)
                        figs.append({"file": file, "title": title})
            else:
                series = [(names[m], d["mean"]) for m, d in doc["models"].items() if d["mean"] is not None]
                if not series:
                    continue
                file = f"{base}_bars.png"
                title = f"{study} / {qname}: mean probability per candidate"
                plot_grouped_bars([c.strip() for c in doc["candidates"]], series, title, "mean probability",
                                  out / file)
                figs.append({"file": file, "title": title})
                grid = doc.get("grid")
                if grid:
                    panels = [(names[m], g) for m, g in grid["models"].items() if g is not None]
                    file = f"{base}_grid.png"
                    title = f"{study} / {qname}: mean probability, {' / '.join(grid['rows'])} x {', '.join(grid['columns'])}"
                    plot_heatmaps(panels, grid["rows"], grid["columns"], title, "", out / file)
                    figs.append({"file": file, "title": title})
    series, notes = [], []
    for m in models:
        ys, ns = [], []
        for study in studies:
            ex = ((results[m.slug][study]["steps"]).get("extract") or {})
            n, ok = ex.get("rows"), ex.get("valid")
            ys.append(ok / n if n else None)
            ns.append(f"{ok}/{n}" if n is not None else "missing")
        series.append((m.name, ys))
        notes.append(ns)
    if any(y is not None for _, ys in series for y in ys):
        file = "extraction.png"
        title = "extraction success rate (valid / rows)"
        plot_grouped_bars(studies, series, title, "valid fraction", out / file, notes=notes, ylim=1.15)
        figs.append({"file": file, "title": title})
    return figs


# ----------------------------------------------------------------------------- the report (one source, md + html)


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def report_tables(doc: dict) -> dict[str, list[dict]]:
    """The report's per model x study tables as records: report.md shows them, report.json holds them.
    A missing step folder is None."""
    results, failed = [], []
    for m in doc["models"]:
        for s in doc["studies"]:
            entry = doc["results"][m["slug"]][s]
            q, e, p = (entry["steps"].get(k) for k in ("query", "extract", "probabilities"))
            results.append({"model": m["name"], "slug": m["slug"], "study": s, "queried": q and q["rows"],
                            "extracted_valid": e and e["valid"], "items_scored": p and p["scored"],
                            "mean_coverage": p and p["mean_coverage"]})
            failed.append({"model": m["name"], "slug": m["slug"], "study": s,
                           **{k: entry["failed"].get(k) for k in ("query", "extract", "probabilities")}})
    return {"results": results, "failed": failed}


def report_blocks(doc: dict, tables: dict[str, list[dict]], figs: list[dict]) -> list[tuple]:
    b: list[tuple] = [("h1", f"Experiment {doc['experiment']} ({doc['timestamp']})")]
    b.append(("table", ["model", "slug", "served as", "endpoint", "server version"],
              [[m["name"], m["slug"], ", ".join(m["served_models"]) or "n/a", ", ".join(m["endpoints"]) or "n/a",
                ", ".join(map(str, m["server_versions"])) or "n/a"] for m in doc["models"]]))
    b.append(("table", ["study", "prompts", "items", "study sha256", "source CSV sha256"],
              [[s, _f((st.get("prepared_counts") or {}).get("prompts")), _f((st.get("prepared_counts") or {}).get("items")),
                (st["input_hashes"].get("study_sha256") or "n/a")[:12], (st["input_hashes"].get("source_csv_sha256") or "n/a")[:12]]
               for s, st in doc["studies"].items()]))
    if doc["missing"]:
        b.append(("h2", "Missing step outputs"))
        b.append(("p", "These step folders were missing or incomplete and are left out of every number and figure "
                       "below (collected with allow_missing=true):"))
        b.append(("ul", [f"{m['folder']}: {m['problem']}" for m in doc["missing"]]))
    if doc["warnings"]:
        b.append(("h2", "Warnings"))
        b.append(("ul", doc["warnings"]))
    b.append(("h2", "Results per model and study"))
    b.append(("p", "Mean coverage: the share of the model's probability mass that the candidate answers cover "
                   "(low means the model wanted to say something else)."))
    b.append(("table", ["model", "study", "queried", "extracted valid", "items scored", "mean coverage"],
              [[r["model"], r["study"], *("missing" if r[k] is None else _f(r[k]) for k in
                                          ("queried", "extracted_valid", "items_scored", "mean_coverage"))]
               for r in tables["results"]]))
    b.append(("h2", "Failed rows per model and study"))
    b.append(("p", "As each step's manifest counts them, failed of all rows; a step ends failed when the share is "
                   "above its max_failed_fraction. Extract's reasons: validation (the replies stayed invalid), "
                   "endpoint (no answer), no-response (the query step had failed for the row)."))
    cell = lambda fc: "missing" if fc is None else f"{_f(fc['failed'])} of {_f(fc['rows'])}"  # noqa: E731
    b.append(("table", ["model", "study", "query", "extract", "extract failed by reason", "probabilities"],
              [[r["model"], r["study"], cell(r["query"]), cell(r["extract"]),
                ", ".join(f"{k} {v}" for k, v in ((r["extract"] or {}).get("failed_by_reason") or {}).items() if v)
                or ("missing" if r["extract"] is None else "none"), cell(r["probabilities"])]
               for r in tables["failed"]]))
    b.append(("h2", "Figures"))
    for fig in figs:
        b.append(("h3", fig["title"]))
        b.append(("img", fig["file"], fig["title"]))
    b.append(("h2", "Published CSVs"))
    b.append(("table", ["file", "sha256"], [[k, v["sha256"]] for k, v in doc["published"].items()]))
    return b


# ----------------------------------------------------------------------------- the step


def run(cfg: CollectConfig) -> dict:
    t0 = time.monotonic()
    root, prepared = Path(cfg.root), Path(cfg.prepared)
    pub_root = Path(cfg.publish_root) if cfg.publish_root else root
    studies = {s: load_prepared(prepared, s) for s in cfg.studies}

    # 1. every step folder, before anything is written
    found: dict[tuple[str, str, str], tuple[dict, Path]] = {}
    missing: list[dict] = []
    for m in cfg.models:
        for s in cfg.studies:
            for step, (_, kind, _) in STEPS.items():
                folder = root / m.slug / cfg.timestamp / s / step
                man, csv_path, problem = check_step(folder, f"{m.slug}_{s}_{kind}.csv")
                if problem:
                    missing.append({"model": m.slug, "study": s, "step": step, "folder": str(folder), "problem": problem})
                else:
                    found[(m.slug, s, step)] = (man, csv_path)
    if missing and not cfg.allow_missing:
        lines = "\n".join(f"  {x['folder']}: {x['problem']}" for x in missing)
        raise FileNotFoundError(f"collect: {len(missing)} step output(s) of experiment {cfg.experiment!r} are missing "
                                f"or incomplete:\n{lines}\nRe-run those steps (argo retry re-runs failed nodes), or "
                                "set allow_missing=true to report without them.")

    # 2. publish the CSVs and read each step's rows
    progress = Progress(len(found), "collect")
    published: dict[str, dict] = {}
    results: dict[str, dict] = {}
    warnings: list[str] = []
    step_manifests: list[dict] = [man for _, man in studies.values()]
    prob_rows: dict[str, dict[str, list[dict]]] = {s: {} for s in cfg.studies}
    for m in cfg.models:
        results[m.slug] = {}
        for s in cfg.studies:
            entry: dict[str, Any] = {"steps": {}, "failed": {}, "published": {}, "timings_s": {},
                                     "missing": [x["step"] for x in missing if x["model"] == m.slug and x["study"] == s]}
            for step, (name, kind, data_file) in STEPS.items():
                if (m.slug, s, step) not in found:
                    entry["timings_s"][name] = None
                    continue
                man, csv_path = found[(m.slug, s, step)]
                folder = csv_path.parent
                step_manifests.append(man)
                dest = pub_root / m.slug / cfg.timestamp / f"{m.slug}_{s}_{kind}.csv"
                rel = str(dest.relative_to(pub_root))
                published[rel] = {**publish(csv_path, dest), "source": str(csv_path.relative_to(root))}
                entry["published"][kind] = {"path": rel, **published[rel]}
                rows = read_jsonl(folder / data_file) if (folder / data_file).exists() else []
                if not rows:
                    warnings.append(f"{m.slug} {s}: {step}/{data_file} is missing or empty; its counts are the "
                                    "step manifest's only")
                mc = man.get("counts") or {}
                if name == "query":
                    summary = query_summary(rows) if rows else {k: mc.get(k) for k in ("rows", "answered", "failed")}
                elif name == "extract":
                    summary = extract_summary(rows, mc) if rows else {
                        k: mc.get(k) for k in ("rows", "valid", "failed", "failed_by_reason", "mode_used")}
                else:
                    summary = probabilities_summary(rows) if rows else {
                        "items": mc.get("rows"), "scored": mc.get("scored"), "failed": mc.get("failed"),
                        "mean_coverage": None}
                    prob_rows[s][m.slug] = rows
                entry["steps"][name] = {**summary, **_step_common(man, folder, root)}
                entry["failed"][name] = fc = failed_counts(man)
                if fc["failed"] is None:
                    warnings.append(f"{m.slug} {s}: {step}/manifest.json has no failed count; re-run the step")
                elif rows and fc["failed"] != summary["failed"]:
                    warnings.append(f"{m.slug} {s}: {step}/manifest.json counts {fc['failed']} failed rows but "
                                    f"{data_file} holds {summary['failed']}; the failed table shows the manifest's")
                entry["timings_s"][name] = entry["steps"][name]["wall_s"]
                progress.advance()
            pc = studies[s][1].get("counts") or {}
            st = entry["steps"]
            for step_name, got, want, what in (("query", "rows", "prompts", "prompts"),
                                               ("probabilities", "items", "items", "items")):
                if step_name in st and pc.get(want) is not None and st[step_name].get(got) != pc[want]:
                    warnings.append(f"{m.slug} {s}: {step_name} has {st[step_name].get(got)} rows but the prepared "
                                    f"study has {pc[want]} {what}; were they run on another preparation?")
            if "query" in st and "extract" in st and st["query"].get("rows") != st["extract"].get("rows"):
                warnings.append(f"{m.slug} {s}: extract has {st['extract'].get('rows')} rows for "
                                f"{st['query'].get('rows')} queried rows")
            results[m.slug][s] = entry

    # 3. the studies as run, the models as served
    study_docs = {}
    for s, (sj, sm) in studies.items():
        study_docs[s] = {
            "name": sj.get("name"), "prompt": sj.get("prompt"), "system_prompt": sj.get("system_prompt"),
            "states": sj.get("states"), "repeats": sj.get("repeats"), "sampling": sj.get("sampling"),
            "columns": sj.get("columns"), "questions": question_specs(sj),
            "question_prompts": {q["name"]: {"prompt": q.get("prompt"), "answer_prefix": q.get("answer_prefix")}
                                 for q in sj.get("probabilities") or []},
            "extract": sj.get("extract"),
            "input_hashes": {"study_sha256": sm.get("study_sha256"), "source_csv_sha256": sm.get("source_csv_sha256"),
                             "source_csv": sm.get("source_csv"), "prepared_files": sm.get("files")},
            "prepared_counts": sm.get("counts"), "prepared_config": sm.get("config")}
    model_docs = []
    for m in cfg.models:
        # the extract step talks to the extractor, which need not be the model under study
        steps = [st for e in results[m.slug].values() for k, st in e["steps"].items() if k != "extract"]
        distinct = lambda k: sorted({str(st[k]) for st in steps if st.get(k) is not None})  # noqa: E731
        model_docs.append({**m.model_dump(mode="json"), "endpoints": distinct("endpoint"),
                           "served_models": distinct("served_model"), "server_versions": distinct("server_version")})

    matrices = {s: {q["name"]: question_matrices(q, prob_rows[s], warnings, s) for q in study_docs[s]["questions"]}
                for s in cfg.studies}
    failed = {name: sum((e["failed"].get(name) or {}).get("failed") or 0 for r in results.values() for e in r.values())
              for name in ("query", "extract", "probabilities")}
    counts = {"models": len(cfg.models), "studies": len(cfg.studies), "pairs": len(cfg.models) * len(cfg.studies),
              "step_folders": len(found), "missing": len(missing), "published_csvs": len(published),
              "query_failed": failed["query"], "extract_failed": failed["extract"],
              "probabilities_failed": failed["probabilities"], "failed_rows": sum(failed.values())}
    doc = {"step": "collect", "created_unix": time.time(), "config": cfg.model_dump(mode="json"), "counts": counts,
           "experiment": cfg.experiment, "timestamp": cfg.timestamp, "models": model_docs, "studies": study_docs,
           "results": results, "missing": missing, "warnings": warnings, "published": published,
           "versions": union_versions(step_manifests), "collect_versions": package_versions(["matplotlib", "pydantic"])}

    # 4. the report folder, complete or not at all
    with atomic_path(cfg.out, is_dir=True) as tmp:
        write_json(tmp / "matrices.json", matrices)
        figs = make_figures(matrices, results, cfg.models, cfg.studies, tmp)
        tables = report_tables(doc)
        blocks = report_blocks(doc, tables, figs)
        write_text(tmp / "report.md", render_md(blocks))
        write_json(tmp / "report.json", {"experiment": cfg.experiment, "timestamp": cfg.timestamp, "counts": counts,
                                         **tables, "missing": missing, "warnings": warnings})
        write_text(tmp / "report.html", render_html(blocks, tmp))
        doc["figures"] = figs
        doc["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                        for p in sorted(tmp.iterdir()) if p.is_file()}
        doc["timings_s"] = {"wall": time.monotonic() - t0,
                            "steps": {f"{mm}/{s}": e["timings_s"] for mm, r in results.items() for s, e in r.items()}}
        write_json(tmp / MANIFEST, doc)
    write_metrics(cfg.metrics_dir, {"models": counts["models"], "studies": counts["studies"],
                                    "failed": counts["failed_rows"], "missing": counts["missing"]})
    return counts


if __name__ == "__main__":
    from steps._cli import main

    main(CollectConfig, run, __doc__)
